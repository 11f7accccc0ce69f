//! Population follow-up: a `Group` of patients (a GP's heart-failure patients)
//! followed by one `CarePlan` about the Group (its `subject`), the population's
//! plan. Each current member gets a plan of her own, `partOf` the population's,
//! written by the server from it: the hospital and the GP find the same list with
//! `CarePlan?part-of=CarePlan/{id}`. A member's plan is hers once made (her own
//! activities are never written over): only its status follows the population's,
//! and a member who leaves the Group has hers revoked. Pure.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{careplan, circle};

/// The Group a population plan is about (`subject` `Group/{id}`).
pub fn group_of(plan: &Value) -> Option<&str> {
    let id = plan["subject"]["reference"]
        .as_str()?
        .strip_prefix("Group/")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The id of the plan the server keeps for `Patient/{patient_id}` within
/// `CarePlan/{population_id}`.
pub fn member_plan_id(population_id: &str, patient_id: &str) -> String {
    super::derived_id(
        "member-plan",
        &format!("CarePlan/{population_id}\nPatient/{patient_id}"),
    )
}

/// The patients in a Group at `now`: members not `inactive`, whose period has
/// not ended.
pub fn current_members(group: &Value, now: DateTime<Utc>) -> Vec<String> {
    let mut members: Vec<String> = group["member"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["inactive"] != true)
        .filter(|m| {
            m["period"]["end"]
                .as_str()
                .is_none_or(|end| !circle::ended(end, now))
        })
        .filter_map(|m| {
            let reference = m["entity"]["reference"].as_str()?;
            let id = reference.strip_prefix("Patient/")?;
            (!id.is_empty() && !id.contains('/')).then(|| id.to_owned())
        })
        .collect();
    members.sort();
    members.dedup();
    members
}

/// The patient a member plan is about.
fn patient_of(plan: &Value) -> Option<&str> {
    plan["subject"]["reference"]
        .as_str()?
        .strip_prefix("Patient/")
}

/// A new member's plan: the population's, about her, `partOf` it, followed by
/// the population plan's care teams and her care circle (when she has one).
fn new_member_plan(
    population_id: &str,
    population: &Value,
    patient_id: &str,
    has_circle: bool,
) -> Value {
    let mut plan = population.clone();
    if let Some(fields) = plan.as_object_mut() {
        for field in ["id", "meta", "identifier", "text"] {
            fields.remove(field);
        }
    }
    plan["subject"] = json!({"reference": format!("Patient/{patient_id}")});
    plan["partOf"] = json!([{"reference": format!("CarePlan/{population_id}")}]);
    let mut teams: Vec<Value> = population["careTeam"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if has_circle {
        teams.push(json!({"reference": format!("CareTeam/{}", circle::circle_id(patient_id))}));
    }
    if teams.is_empty() {
        plan.as_object_mut().map(|p| p.remove("careTeam"));
    } else {
        plan["careTeam"] = Value::Array(teams);
    }
    plan
}

/// `plan` moved to `status`, when that is a step the plan may take.
fn moved(plan: &Value, status: &str) -> Option<Value> {
    if plan["status"] == status {
        return None;
    }
    let mut next = plan.clone();
    next["status"] = json!(status);
    careplan::check(Some(plan), Some(&next)).ok().map(|()| next)
}

/// The member plans to write for a population plan: one made for each current
/// member without one while the population's plan is `draft` or `active`; the
/// open ones moved to the population's status; those of patients no longer
/// members revoked. `existing` are the plans `partOf` it now; `with_circle` the
/// members who have a care circle.
pub fn member_plans(
    population_id: &str,
    population: &Value,
    members: &[String],
    existing: &[Value],
    with_circle: &HashSet<String>,
) -> Vec<(String, Value)> {
    let mut changes = Vec::new();
    let status = population["status"].as_str().unwrap_or_default();
    let mut covered = HashSet::new();
    for plan in existing {
        let (Some(id), Some(patient)) = (plan["id"].as_str(), patient_of(plan)) else {
            continue;
        };
        covered.insert(patient.to_owned());
        let target = match members.iter().any(|m| m == patient) {
            true if careplan::is_open(plan) => status,
            true => continue,
            false => "revoked",
        };
        if let Some(next) = moved(plan, target) {
            changes.push((id.to_owned(), next));
        }
    }
    if matches!(status, "draft" | "active") {
        for patient in members.iter().filter(|m| !covered.contains(*m)) {
            changes.push((
                member_plan_id(population_id, patient),
                new_member_plan(
                    population_id,
                    population,
                    patient,
                    with_circle.contains(patient),
                ),
            ));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn population(status: &str) -> Value {
        json!({"resourceType": "CarePlan", "id": "hf", "status": status, "intent": "plan",
            "meta": {"versionId": "3"}, "identifier": [{"value": "POP-1"}],
            "title": "Suivi de l'insuffisance cardiaque",
            "subject": {"reference": "Group/hf-patients"},
            "careTeam": [{"reference": "CareTeam/hf-team"}],
            "activity": [{"detail": {"status": "scheduled", "description": "Pesée quotidienne"}}]})
    }

    fn member(id: &str, patient: &str, status: &str) -> Value {
        json!({"resourceType": "CarePlan", "id": id, "status": status, "intent": "plan",
            "subject": {"reference": format!("Patient/{patient}")},
            "partOf": [{"reference": "CarePlan/hf"}],
            "activity": [{"detail": {"status": "scheduled", "description": "Her own"}}]})
    }

    #[test]
    fn the_members_of_a_group_now() {
        let now = Utc::now();
        let group = json!({"resourceType": "Group", "type": "person", "actual": true, "member": [
            {"entity": {"reference": "Patient/a"}},
            {"entity": {"reference": "Patient/b"}, "inactive": true},
            {"entity": {"reference": "Patient/c"}, "period": {"end": "2020-01-01"}},
            {"entity": {"reference": "Practitioner/x"}},
            {"entity": {"reference": "Patient/d"}, "period": {"start": "2024-01-01"}},
            {"entity": {"reference": "Patient/a"}}]});
        assert_eq!(current_members(&group, now), ["a", "d"]);
        assert_eq!(group_of(&population("active")), Some("hf-patients"));
        assert_eq!(group_of(&member("m", "a", "active")), None);
    }

    #[test]
    fn each_new_member_gets_a_plan_of_the_population() {
        let members = ["a".to_owned(), "b".to_owned()];
        let circles: HashSet<String> = ["a".to_owned()].into();
        let made = member_plans("hf", &population("active"), &members, &[], &circles);
        assert_eq!(made.len(), 2);
        let (id, plan) = &made[0];
        assert_eq!(id, &member_plan_id("hf", "a"));
        assert_ne!(member_plan_id("hf", "a"), member_plan_id("hf", "b"));
        assert_eq!(plan["subject"]["reference"], "Patient/a");
        assert_eq!(plan["partOf"][0]["reference"], "CarePlan/hf");
        assert_eq!(plan["status"], "active");
        assert_eq!(
            plan["activity"][0]["detail"]["description"],
            "Pesée quotidienne"
        );
        assert!(plan.get("id").is_none() && plan.get("meta").is_none());
        assert!(plan.get("identifier").is_none());
        let teams: Vec<&str> = plan["careTeam"]
            .as_array()
            .expect("teams")
            .iter()
            .filter_map(|t| t["reference"].as_str())
            .collect();
        assert_eq!(
            teams,
            [
                "CareTeam/hf-team".to_owned(),
                format!("CareTeam/{}", circle::circle_id("a"))
            ]
        );
        assert_eq!(made[1].1["careTeam"].as_array().map(Vec::len), Some(1));
        // Not while the population's plan is on hold or over.
        for status in ["on-hold", "completed", "revoked"] {
            assert!(member_plans("hf", &population(status), &members, &[], &circles).is_empty());
        }
    }

    #[test]
    fn member_plans_follow_the_status_and_leavers_are_revoked() {
        let existing = [
            member("ma", "a", "active"),
            member("mb", "b", "active"),
            member("mc", "c", "completed"),
        ];
        let members = ["a".to_owned(), "c".to_owned()];
        let none = HashSet::new();
        // Unchanged population, b left: only b's plan changes, revoked; a's own
        // activities are kept.
        let changes = member_plans("hf", &population("active"), &members, &existing, &none);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].0, "mb");
        assert_eq!(changes[0].1["status"], "revoked");
        // The population on hold: the open plans of members follow; c's completed
        // plan stays so.
        let changes = member_plans("hf", &population("on-hold"), &members, &existing, &none);
        let statuses: Vec<(&str, &str)> = changes
            .iter()
            .map(|(id, p)| (id.as_str(), p["status"].as_str().unwrap_or_default()))
            .collect();
        assert_eq!(statuses, [("ma", "on-hold"), ("mb", "revoked")]);
        assert_eq!(
            changes[0].1["activity"][0]["detail"]["description"],
            "Her own"
        );
        // A step a member's plan may not take is not taken (draft → on-hold).
        let draft = [member("ma", "a", "draft")];
        assert!(
            member_plans("hf", &population("on-hold"), &members[..1], &draft, &none).is_empty()
        );
    }
}
