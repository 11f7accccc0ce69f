//! Compartments: `Patient/[id]/[type]?…` searches the resources of `type` that belong
//! to the patient's record, through the parameters of the project's own
//! CompartmentDefinition (`profiles/compartment-patient.json`). Pure.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

use super::params::{ParamTable, ParamType};
use super::{Condition, Modifier, SearchValue};

const PATIENT: &str = include_str!("../../profiles/compartment-patient.json");

/// Parameters of each resource type that put it in a Patient's compartment.
static PATIENT_COMPARTMENT: LazyLock<HashMap<String, Vec<String>>> = LazyLock::new(|| {
    let definition: Value = serde_json::from_str(PATIENT).unwrap_or_default();
    definition["resource"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let code = r["code"].as_str()?.to_owned();
            let params = r["param"]
                .as_array()?
                .iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect();
            Some((code, params))
        })
        .collect()
});

/// The condition "belongs to the compartment of `compartment_type/id`" for
/// `resource_type`, or `None` when that type is not in such a compartment.
pub fn membership(
    table: &ParamTable,
    compartment_type: &str,
    id: &str,
    resource_type: &str,
) -> Option<Condition> {
    if compartment_type != "Patient" {
        return None;
    }
    let members = PATIENT_COMPARTMENT.get(resource_type)?;
    let reference = SearchValue::Reference {
        target_type: Some(compartment_type.to_owned()),
        id: id.to_owned(),
        url: None,
    };
    let mut alternatives: Vec<Condition> = members
        .iter()
        .filter(|p| {
            table
                .get(resource_type, p)
                .is_some_and(|d| d.kind == ParamType::Reference)
        })
        .map(|p| Condition::Param {
            param: p.clone(),
            kind: ParamType::Reference,
            modifier: Modifier::None,
            values: vec![reference.clone()],
        })
        .collect();
    if resource_type == compartment_type {
        // The patient belongs to its own compartment.
        alternatives.push(Condition::Id(vec![id.to_owned()]));
    }
    Some(Condition::AnyOf(alternatives))
}

/// `Type.param` for every parameter that puts a resource in a Patient's record.
pub fn patient_membership_params() -> Vec<String> {
    PATIENT_COMPARTMENT
        .iter()
        .flat_map(|(t, params)| params.iter().map(move |p| format!("{t}.{p}")))
        .collect()
}

/// The parameters that put a resource of `resource_type` in a Patient's
/// compartment (none for a type outside it).
pub fn record_params(resource_type: &str) -> Vec<String> {
    PATIENT_COMPARTMENT
        .get(resource_type)
        .cloned()
        .unwrap_or_default()
}

/// The types of a patient's record, and the (type, parameter) pairs that put a
/// resource in a Patient's compartment.
pub fn patient_record() -> (Vec<String>, Vec<(String, String)>) {
    let mut types: Vec<String> = PATIENT_COMPARTMENT.keys().cloned().collect();
    if !types.iter().any(|t| t == "Patient") {
        types.push("Patient".to_owned());
    }
    types.sort();
    let mut pairs: Vec<(String, String)> = PATIENT_COMPARTMENT
        .iter()
        .flat_map(|(t, params)| params.iter().map(move |p| (t.clone(), p.clone())))
        .collect();
    pairs.sort();
    (types, pairs)
}

/// The patients whose compartment a resource of `resource_type` with these
/// index rows belongs to (not the Patient itself).
pub fn patients_of(resource_type: &str, rows: &super::index::IndexRows) -> Vec<String> {
    let Some(params) = PATIENT_COMPARTMENT.get(resource_type) else {
        return Vec::new();
    };
    let mut patients: Vec<String> = rows
        .references
        .iter()
        .filter(|r| params.contains(&r.param) && r.target_type.as_deref() == Some("Patient"))
        .filter_map(|r| r.target_id.clone())
        .collect();
    patients.sort();
    patients.dedup();
    patients
}

/// Whether resources of `resource_type` can be in a Patient's compartment (part
/// of a patient's record; the others are directory data).
pub fn in_patient_compartment(resource_type: &str) -> bool {
    resource_type == "Patient" || PATIENT_COMPARTMENT.contains_key(resource_type)
}

/// Whether a compartment of this type can be searched.
pub fn is_supported(compartment_type: &str) -> bool {
    compartment_type == "Patient"
}

/// The records a client held to a patient's record or to care circles reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach<'a> {
    /// The record of one patient (`patient/` scopes, a patient's own app).
    Patient(&'a str),
    /// The records of the patients whose care circle names one of these members
    /// (type, id), or a role of theirs, now.
    Circle(&'a [(String, String)]),
}

impl Reach<'_> {
    /// The condition that keeps resources of `res_type` to the records reached;
    /// `None` for a type that is no part of a patient's record (directory data).
    pub fn condition(&self, table: &ParamTable, res_type: &str) -> Option<Condition> {
        if !in_patient_compartment(res_type) {
            return None;
        }
        match self {
            Reach::Patient(patient) => membership(table, "Patient", patient, res_type),
            Reach::Circle(members) => Some(Condition::InCircle {
                members: members.to_vec(),
                res_type: res_type.to_owned(),
            }),
        }
    }
}

/// Holds a search to the records reached: the resources it finds, and what its
/// chains and `_has` search through. Pure.
pub fn hold(table: &ParamTable, reach: Reach<'_>, plan: &mut super::SearchPlan) {
    for condition in &mut plan.conditions {
        hold_reached(table, reach, condition);
    }
    plan.conditions
        .extend(reach.condition(table, &plan.resource_type));
}

/// Holds what a condition searches through to the records reached: a chained
/// target or a `_has` source of a record type must be reached as well, at every
/// depth. Otherwise a search of what the client sees would tell of records it
/// does not (`Practitioner?_has:Encounter:participant:subject=…` names who cared
/// for another patient). Pure.
fn hold_reached(table: &ParamTable, reach: Reach<'_>, condition: &mut Condition) {
    let hold = |res_type: &str, inner: &mut Condition| {
        hold_reached(table, reach, inner);
        if let Some(held) = reach.condition(table, res_type) {
            let searched = std::mem::replace(inner, Condition::AllOf(Vec::new()));
            *inner = Condition::AllOf(vec![searched, held]);
        }
    };
    match condition {
        Condition::Chain { targets, .. } => {
            for (target_type, inner) in targets {
                hold(target_type, inner);
            }
        }
        Condition::Has {
            source_type, inner, ..
        } => hold(source_type, inner),
        Condition::AnyOf(conditions) | Condition::AllOf(conditions) => {
            for c in conditions {
                hold_reached(table, reach, c);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_compartment_parameter_is_a_reference_parameter() {
        assert!(PATIENT_COMPARTMENT.len() > 60);
        for (resource_type, members) in PATIENT_COMPARTMENT.iter() {
            for p in members {
                let def = super::super::params::test_table().get(resource_type, p);
                assert_eq!(
                    def.map(|d| d.kind),
                    Some(ParamType::Reference),
                    "{resource_type}.{p}"
                );
            }
        }
        let definition: Value = serde_json::from_str(PATIENT).expect("json");
        crate::fhir::validate::validate_resource(&definition)
            .expect("a valid CompartmentDefinition");
    }

    #[test]
    fn membership_conditions() {
        let Some(Condition::AnyOf(of_care_team)) = membership(
            super::super::params::test_table(),
            "Patient",
            "p1",
            "CareTeam",
        ) else {
            panic!("CareTeam is in the Patient compartment")
        };
        assert_eq!(of_care_team.len(), 2, "patient and participant");
        assert!(membership(
            super::super::params::test_table(),
            "Patient",
            "p1",
            "Organization"
        )
        .is_none());
        assert!(membership(
            super::super::params::test_table(),
            "Practitioner",
            "x",
            "Encounter"
        )
        .is_none());
    }

    #[test]
    fn chains_and_has_are_held_to_the_records_reached() {
        let table = super::super::params::test_table();
        let members = [("Practitioner".to_owned(), "gp".to_owned())];
        let plan = |query: &str, res_type: &str| {
            super::super::parse(
                table,
                res_type,
                &super::super::parse_form(query),
                super::super::Handling::Strict,
            )
            .expect("plan")
            .conditions
        };
        let held = |conditions: &mut Vec<Condition>, reach| {
            for c in conditions.iter_mut() {
                hold_reached(table, reach, c);
            }
        };
        // Who cared for another patient: the Encounters searched through must be
        // of her circles' records.
        let mut has = plan(
            "_has:Encounter:participant:subject=Patient/b",
            "Practitioner",
        );
        held(&mut has, Reach::Circle(&members));
        let Condition::Has { inner, .. } = &has[0] else {
            panic!("{has:?}")
        };
        let Condition::AllOf(all) = inner.as_ref() else {
            panic!("{inner:?}")
        };
        assert!(
            matches!(&all[1], Condition::InCircle { res_type, .. } if res_type == "Encounter"),
            "{all:?}"
        );
        // A chain to the patient, two hops deep: each record type held, the
        // directory (Organization) left alone.
        let mut chain = plan(
            "subject:Patient.organization.name=CH&encounter.subject:Patient.name=x",
            "Observation",
        );
        held(&mut chain, Reach::Patient("p1"));
        let text = format!("{chain:?}");
        assert_eq!(text.matches("AllOf").count(), 3, "{text}");
        assert_eq!(text.matches("Id([\"p1\"])").count(), 2, "{text}");
        // Nothing reached through: unchanged.
        let mut plain = plan("type=x&_has:Group:member:_id=g", "Device");
        let before = plain.clone();
        held(&mut plain, Reach::Circle(&members));
        assert_ne!(plain, before, "Group is a record type");
        let mut directory = plan("organization.name=CH", "PractitionerRole");
        let before = directory.clone();
        held(&mut directory, Reach::Circle(&members));
        assert_eq!(directory, before);
    }
}
