//! Care circles (*Cercle de Soins*): the one CareTeam per patient that the server
//! keeps current with the patient's GP (role *médecin traitant*), and the CareTeam
//! of each stay, whose members are the stay's practitioners from admission to
//! discharge. Members leave by getting a `period.end`, so the history of who was
//! in the circle stays readable. Pure: the write path hands in the versions.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::nde;
use super::stay::Status;
use crate::fhir::datetime::format_instant;

/// TRE_R259 HL7ParticipationFunction: the *médecin traitant* role of the guide's
/// care team roles.
pub const ROLE_SYSTEM: &str =
    "https://mos.esante.gouv.fr/NOS/TRE_R259-HL7ParticipationFunction/FHIR/TRE-R259-HL7ParticipationFunction";
pub const GP_ROLE: &str = "PCP";
pub const PROFILE: &str =
    "https://interop.esante.gouv.fr/ig/fhir/cds/StructureDefinition/cds-ihe-careteam";

/// The id of `Patient/{patient_id}`'s care circle.
pub fn circle_id(patient_id: &str) -> String {
    super::derived_id("circle", &format!("Patient/{patient_id}"))
}

/// The id of the CareTeam of the stay `Encounter/{encounter_id}`.
pub fn stay_team_id(encounter_id: &str) -> String {
    super::derived_id("stay-team", &format!("Encounter/{encounter_id}"))
}

fn is_open(participant: &Value) -> bool {
    participant["period"]["end"].is_null()
}

fn member(participant: &Value) -> Option<&str> {
    participant["member"]["reference"].as_str()
}

fn is_gp(participant: &Value) -> bool {
    participant["role"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["coding"].as_array().into_iter().flatten())
        .any(|c| c["system"] == ROLE_SYSTEM && c["code"] == GP_ROLE)
}

/// Opens a participation for each of `members` not open yet (with `role`), and
/// ends at `at` the open ones `owned` says are the server's that are no longer
/// in `members`. Returns whether anything changed.
fn reconcile(
    participants: &mut Vec<Value>,
    members: &[(String, Option<Value>)],
    owned: impl Fn(&Value) -> bool,
    at: &str,
) -> bool {
    let mut changed = false;
    for p in participants.iter_mut() {
        let gone = member(p).is_some_and(|m| !members.iter().any(|(r, _)| r == m));
        if is_open(p) && owned(p) && gone {
            p["period"]["end"] = json!(at);
            changed = true;
        }
    }
    for (reference, role) in members {
        let open = participants
            .iter()
            .any(|p| is_open(p) && owned(p) && member(p) == Some(reference));
        if !open {
            let mut p = json!({"member": {"reference": reference}, "period": {"start": at}});
            if let Some(role) = role {
                p["role"] = json!([role]);
            }
            participants.push(p);
            changed = true;
        }
    }
    changed
}

fn participants_of(team: &Value) -> Vec<Value> {
    team["participant"].as_array().cloned().unwrap_or_default()
}

fn patient_name(patient: &Value) -> Option<String> {
    let name = &patient["name"][0];
    let given = name["given"][0].as_str().unwrap_or_default();
    let family = name["family"].as_str()?;
    Some(format!("{given} {family}").trim().to_owned())
}

/// A CareTeam the server starts: the CDS profile, its derived identifier, active
/// from `start`.
fn new_team(identifier: String, name: String, start: &str) -> Value {
    json!({
        "resourceType": "CareTeam",
        "meta": {"profile": [PROFILE]},
        "identifier": [{"system": nde::DERIVED_IDENTIFIER_SYSTEM, "value": identifier}],
        "status": "active",
        "name": name,
        "period": {"start": start},
    })
}

/// The care circle of `Patient/{patient_id}` once its GPs are `gps`, from the
/// current one (`previous`); `None` when nothing changes (or when there is no
/// circle and no GP to start one with). Members the server did not add (other
/// roles, added by users) are kept as they are.
pub fn care_circle(
    patient_id: &str,
    patient: Option<&Value>,
    previous: Option<&Value>,
    gps: &[String],
    now: DateTime<Utc>,
) -> Option<Value> {
    if previous.is_none() && gps.is_empty() {
        return None;
    }
    let at = format_instant(now);
    let role = json!({"coding": [{"system": ROLE_SYSTEM, "code": GP_ROLE, "display": "Médecin traitant"}]});
    let members: Vec<(String, Option<Value>)> = gps
        .iter()
        .map(|g| (g.clone(), Some(role.clone())))
        .collect();
    let mut circle = previous.cloned().unwrap_or_else(|| {
        let name = patient
            .and_then(patient_name)
            .unwrap_or_else(|| format!("Patient/{patient_id}"));
        let mut circle = new_team(
            format!("urn:passerelle:care-circle:Patient/{patient_id}"),
            format!("Cercle de soins de {name}"),
            &at,
        );
        circle["subject"] = json!({"reference": format!("Patient/{patient_id}")});
        circle
    });
    let mut participants = participants_of(&circle);
    let changed = reconcile(&mut participants, &members, is_gp, &at);
    if previous.is_some() && !changed {
        return None;
    }
    circle["participant"] = json!(participants);
    Some(circle)
}

/// The practitioners of a stay (`Encounter.participant.individual`), with their
/// participation type as role.
fn stay_members(encounter: &Value) -> Vec<(String, Option<Value>)> {
    encounter["participant"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let reference = p["individual"]["reference"].as_str()?;
            Some((
                reference.to_owned(),
                p["type"][0].as_object().map(|t| json!(t)),
            ))
        })
        .collect()
}

/// The CareTeam of the stay `Encounter/{encounter_id}` after this version of it,
/// from the current one (`previous`): from admission its practitioners are
/// members; at discharge every membership ends with the stay and the team
/// becomes inactive. `None` when nothing changes, or before admission.
pub fn stay_team(
    encounter_id: &str,
    encounter: &Value,
    previous: Option<&Value>,
    now: DateTime<Utc>,
) -> Option<Value> {
    let status = Status::of(encounter)?;
    let admitted = matches!(status, Status::InProgress | Status::OnLeave);
    let over = matches!(
        status,
        Status::Finished | Status::Cancelled | Status::EnteredInError
    );
    // Before admission there is no team; after the stay, only one to close.
    let follows = admitted || (over && previous.is_some());
    if !follows {
        return None;
    }
    let now = format_instant(now);
    let mut team = previous.cloned().unwrap_or_else(|| {
        let start = encounter["period"]["start"].as_str().unwrap_or(&now);
        let mut team = new_team(
            format!("urn:passerelle:stay-team:Encounter/{encounter_id}"),
            format!("Équipe du séjour Encounter/{encounter_id}"),
            start,
        );
        team["encounter"] = json!({"reference": format!("Encounter/{encounter_id}")});
        if encounter["subject"].is_object() {
            team["subject"] = encounter["subject"].clone();
        }
        if encounter["serviceProvider"].is_object() {
            team["managingOrganization"] = json!([encounter["serviceProvider"]]);
        }
        team
    });
    let mut participants = participants_of(&team);
    let changed = if over {
        let end = encounter["period"]["end"]
            .as_str()
            .unwrap_or(&now)
            .to_owned();
        let ended = reconcile(&mut participants, &[], |_| true, &end);
        let closing = team["status"] != "inactive";
        if closing {
            team["status"] = json!("inactive");
            team["period"]["end"] = json!(end);
        }
        ended || closing
    } else {
        reconcile(&mut participants, &stay_members(encounter), |_| true, &now)
    };
    if previous.is_some() && !changed {
        return None;
    }
    team["participant"] = json!(participants);
    Some(team)
}

/// Whether a participation that ends at `end` (a dateTime or a date) is over at
/// `now`.
pub(super) fn ended(end: &str, now: DateTime<Utc>) -> bool {
    match DateTime::parse_from_rfc3339(end) {
        Ok(end) => end <= now,
        // A date (or a partial one): over once that day has passed.
        Err(_) => end < now.format("%Y-%m-%d").to_string().as_str(),
    }
}

/// The members of a CareTeam at `now`: participations not ended.
pub fn current_members(team: &Value, now: DateTime<Utc>) -> Vec<String> {
    team["participant"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["period"]["end"]
                .as_str()
                .is_none_or(|end| !ended(end, now))
        })
        .filter_map(|p| member(p).map(str::to_owned))
        .collect()
}

/// What to show beside a member so that someone can call them: a
/// PractitionerRole's practitioner, organisation and endpoints; an
/// Organization's or a Practitioner's endpoints (R4 Practitioners have none).
pub fn contacts_of(member: &Value) -> Vec<String> {
    let mut refs: Vec<String> = ["practitioner", "organization"]
        .iter()
        .filter(|_| member["resourceType"] == "PractitionerRole")
        .filter_map(|field| member[*field]["reference"].as_str().map(str::to_owned))
        .collect();
    refs.extend(
        member["endpoint"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["reference"].as_str().map(str::to_owned)),
    );
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gp_refs(team: &Value) -> Vec<(String, bool)> {
        team["participant"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (member(p).unwrap().to_owned(), is_open(p)))
            .collect()
    }

    #[test]
    fn the_circle_follows_the_gp() {
        let patient = json!({"name": [{"family": "Chabrol", "given": ["Henri"]}]});
        let t0 = Utc::now();
        let circle =
            care_circle("p1", Some(&patient), None, &["Practitioner/a".into()], t0).unwrap();
        crate::fhir::validate::validate_resource(&circle).unwrap();
        assert_eq!(circle["name"], "Cercle de soins de Henri Chabrol");
        assert_eq!(
            circle["participant"][0]["role"][0]["coding"][0]["code"],
            "PCP"
        );
        assert_eq!(gp_refs(&circle), [("Practitioner/a".to_owned(), true)]);
        // The same GP: nothing to write.
        assert!(care_circle("p1", None, Some(&circle), &["Practitioner/a".into()], t0).is_none());
        // Another GP: the first one's participation ends, the new one's starts.
        let changed =
            care_circle("p1", None, Some(&circle), &["Practitioner/b".into()], t0).unwrap();
        assert_eq!(
            gp_refs(&changed),
            [
                ("Practitioner/a".to_owned(), false),
                ("Practitioner/b".to_owned(), true)
            ]
        );
        // A member someone else added is kept.
        let mut shared = changed.clone();
        shared["participant"]
            .as_array_mut()
            .unwrap()
            .push(json!({"member": {"reference": "Practitioner/nurse"}, "period": {"start": "2026-01-01"}}));
        let later = care_circle("p1", None, Some(&shared), &[], t0).unwrap();
        assert_eq!(current_members(&later, t0), ["Practitioner/nurse"]);
        // No GP and no circle yet: none is started.
        assert!(care_circle("p2", None, None, &[], t0).is_none());
    }

    #[test]
    fn contacts_are_what_reaches_a_member() {
        let role = json!({"resourceType": "PractitionerRole",
            "practitioner": {"reference": "Practitioner/gp"},
            "organization": {"reference": "Organization/msp"},
            "endpoint": [{"reference": "Endpoint/e1"}]});
        assert_eq!(
            contacts_of(&role),
            ["Practitioner/gp", "Organization/msp", "Endpoint/e1"]
        );
        let org =
            json!({"resourceType": "Organization", "endpoint": [{"reference": "Endpoint/e2"}]});
        assert_eq!(contacts_of(&org), ["Endpoint/e2"]);
        assert!(contacts_of(&json!({"resourceType": "Practitioner"})).is_empty());
    }

    #[test]
    fn the_stay_team_lives_from_admission_to_discharge() {
        let mut stay = json!({"resourceType": "Encounter", "status": "planned",
            "subject": {"reference": "Patient/p1"},
            "serviceProvider": {"reference": "Organization/ch"},
            "period": {"start": "2026-11-16T10:15:00+01:00"},
            "participant": [{"individual": {"reference": "Practitioner/surgeon"}}]});
        let now = Utc::now();
        assert!(stay_team("s1", &stay, None, now).is_none());
        stay["status"] = json!("in-progress");
        let team = stay_team("s1", &stay, None, now).unwrap();
        crate::fhir::validate::validate_resource(&team).unwrap();
        assert_eq!(team["encounter"]["reference"], "Encounter/s1");
        assert_eq!(
            team["managingOrganization"][0]["reference"],
            "Organization/ch"
        );
        assert_eq!(gp_refs(&team), [("Practitioner/surgeon".to_owned(), true)]);
        assert!(stay_team("s1", &stay, Some(&team), now).is_none());
        stay["participant"]
            .as_array_mut()
            .unwrap()
            .push(json!({"individual": {"reference": "Practitioner/physio"}}));
        let team = stay_team("s1", &stay, Some(&team), now).unwrap();
        assert_eq!(gp_refs(&team).len(), 2);
        stay["status"] = json!("finished");
        stay["period"]["end"] = json!("2026-11-20T19:40:00+01:00");
        let team = stay_team("s1", &stay, Some(&team), now).unwrap();
        assert_eq!(team["status"], "inactive");
        assert_eq!(team["period"]["end"], "2026-11-20T19:40:00+01:00");
        assert!(gp_refs(&team).iter().all(|(_, open)| !open));
        assert_eq!(
            team["participant"][0]["period"]["end"],
            "2026-11-20T19:40:00+01:00"
        );
        assert!(stay_team("s1", &stay, Some(&team), now).is_none());
    }
}
