//! The care circle as access: who each resource puts in a patient's circle, and
//! until when. A practitioner with `user/` scopes sees a patient's record only
//! while one of these rows names her (or one of her roles): the patient's GP, a
//! participant of one of the patient's active CareTeams (the care circle, a stay's
//! team, a plan's team) until her participation ends, a participant of a stay in
//! progress, the requester or performer of an open referral or tele-expertise
//! request, the owner or requester of its open Task. Organisations are members the
//! same way, and also as the patient's `managingOrganization` and the
//! `serviceProvider` of a stay in progress: a `system/` client held to
//! organisations sees the records of their circles. The write path keeps the rows
//! with their resource (`circle_member`); this says what they are. Pure.

use serde_json::Value;

use crate::fhir::datetime;
use crate::search::index::CircleRow;

/// The kinds of resources that can be a member: people and their roles, and the
/// organisations they work for.
const MEMBER_TYPES: &[&str] = &["Practitioner", "PractitionerRole", "Organization"];

/// A stay in these statuses has its participants in the circle.
const STAY_OPEN: &[&str] = &["arrived", "triaged", "in-progress", "onleave"];

/// A referral's request in these statuses keeps its requester and performers in.
const REQUEST_OPEN: &[&str] = &["active", "on-hold"];

/// A Task in these statuses keeps its owner and requester in.
const TASK_OPEN: &[&str] = &["requested", "received", "accepted", "ready", "in-progress"];

/// `Patient/{id}` of a reference, as an id.
fn patient(reference: &Value) -> Option<&str> {
    let id = reference["reference"].as_str()?.strip_prefix("Patient/")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// `(type, id)` of a reference to a possible member.
fn member(reference: &Value) -> Option<(&str, &str)> {
    let (t, id) = reference["reference"].as_str()?.split_once('/')?;
    (MEMBER_TYPES.contains(&t) && !id.is_empty() && !id.contains('/')).then_some((t, id))
}

fn status_in(resource: &Value, open: &[&str]) -> bool {
    resource["status"]
        .as_str()
        .is_some_and(|s| open.contains(&s))
}

fn row(patient_id: &str, (t, id): (&str, &str), until: Option<&str>) -> CircleRow {
    CircleRow {
        patient_id: patient_id.to_owned(),
        member_type: t.to_owned(),
        member_id: id.to_owned(),
        // A period's end is inclusive: the member stays until its last instant.
        until: until.and_then(datetime::parse_range).map(|r| r.high),
    }
}

/// The circle rows a resource of `res_type` makes (none for other types, or
/// once it no longer says so).
pub fn circle_rows(res_type: &str, resource: &Value) -> Vec<CircleRow> {
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    match res_type {
        "Patient" => {
            let Some(id) = resource["id"].as_str() else {
                return Vec::new();
            };
            // Her GPs, and the organisation that keeps her record.
            list(&resource["generalPractitioner"])
                .iter()
                .chain(Some(&resource["managingOrganization"]))
                .filter_map(member)
                .map(|m| row(id, m, None))
                .collect()
        }
        "CareTeam" if resource["status"] == "active" => {
            let Some(p) = patient(&resource["subject"]) else {
                return Vec::new();
            };
            list(&resource["participant"])
                .iter()
                .filter_map(|participant| {
                    let until = participant["period"]["end"].as_str();
                    member(&participant["member"]).map(|m| row(p, m, until))
                })
                .collect()
        }
        "Encounter" if status_in(resource, STAY_OPEN) => {
            let Some(p) = patient(&resource["subject"]) else {
                return Vec::new();
            };
            // Its participants, and the hospital that holds the stay.
            list(&resource["participant"])
                .iter()
                .map(|participant| &participant["individual"])
                .chain(Some(&resource["serviceProvider"]))
                .filter_map(member)
                .map(|m| row(p, m, None))
                .collect()
        }
        "ServiceRequest" if status_in(resource, REQUEST_OPEN) => {
            let Some(p) = patient(&resource["subject"]) else {
                return Vec::new();
            };
            std::iter::once(&resource["requester"])
                .chain(resource["performer"].as_array().into_iter().flatten())
                .filter_map(member)
                .map(|m| row(p, m, None))
                .collect()
        }
        "Task" if status_in(resource, TASK_OPEN) => {
            let Some(p) = patient(&resource["for"]) else {
                return Vec::new();
            };
            [&resource["owner"], &resource["requester"]]
                .into_iter()
                .filter_map(member)
                .map(|m| row(p, m, None))
                .collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn members(rows: &[CircleRow]) -> Vec<String> {
        rows.iter()
            .map(|r| format!("{} {}/{}", r.patient_id, r.member_type, r.member_id))
            .collect()
    }

    #[test]
    fn who_each_resource_puts_in_the_circle() {
        let patient = json!({"resourceType": "Patient", "id": "p1",
            "generalPractitioner": [{"reference": "Practitioner/gp"}, {"reference": "Patient/x"}],
            "managingOrganization": {"reference": "Organization/ehpad"}});
        assert_eq!(
            members(&circle_rows("Patient", &patient)),
            ["p1 Practitioner/gp", "p1 Organization/ehpad"]
        );

        let team = json!({"resourceType": "CareTeam", "status": "active",
            "subject": {"reference": "Patient/p1"}, "participant": [
                {"member": {"reference": "PractitionerRole/nurse"}},
                {"member": {"reference": "Practitioner/left"}, "period": {"end": "2026-02-01"}}]});
        let rows = circle_rows("CareTeam", &team);
        assert_eq!(
            members(&rows),
            ["p1 PractitionerRole/nurse", "p1 Practitioner/left"]
        );
        assert_eq!(rows[0].until, None);
        assert_eq!(
            rows[1].until.map(datetime::format_instant).as_deref(),
            Some("2026-02-02T00:00:00.000000+00:00")
        );
        let mut inactive = team.clone();
        inactive["status"] = json!("inactive");
        assert!(circle_rows("CareTeam", &inactive).is_empty());

        let stay = json!({"resourceType": "Encounter", "status": "in-progress",
            "subject": {"reference": "Patient/p1"},
            "participant": [{"individual": {"reference": "Practitioner/surgeon"}}],
            "serviceProvider": {"reference": "Organization/chu"}});
        assert_eq!(
            members(&circle_rows("Encounter", &stay)),
            ["p1 Practitioner/surgeon", "p1 Organization/chu"]
        );
        let mut over = stay.clone();
        over["status"] = json!("finished");
        assert!(circle_rows("Encounter", &over).is_empty());

        let request = json!({"resourceType": "ServiceRequest", "status": "active",
            "subject": {"reference": "Patient/p1"}, "requester": {"reference": "Practitioner/gp"},
            "performer": [{"reference": "Organization/smr"}, {"reference": "PractitionerRole/cardio"}]});
        assert_eq!(
            members(&circle_rows("ServiceRequest", &request)),
            [
                "p1 Practitioner/gp",
                "p1 Organization/smr",
                "p1 PractitionerRole/cardio"
            ]
        );
        let task = json!({"resourceType": "Task", "status": "accepted", "intent": "order",
            "for": {"reference": "Patient/p1"}, "owner": {"reference": "Organization/smr"}});
        assert_eq!(
            members(&circle_rows("Task", &task)),
            ["p1 Organization/smr"]
        );
        let mut done = task.clone();
        done["status"] = json!("completed");
        assert!(circle_rows("Task", &done).is_empty());
        assert!(circle_rows("Observation", &stay).is_empty());
    }
}
