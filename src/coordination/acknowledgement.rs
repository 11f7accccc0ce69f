//! Acknowledgement and escalation of notification requests: which writes
//! acknowledge one (a Task whose `focus` it is, received or completed; a
//! Communication based on it), what the acknowledged request becomes, and the
//! escalation Task written when nobody acknowledged it in time. Pure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::nde;
use crate::fhir::datetime::format_instant;

/// The project's CodeSystem of coordination tasks.
pub const CODE_SYSTEM: &str = "https://passerelle.example.fr/fhir/CodeSystem/coordination";
pub const ACKNOWLEDGEMENT: &str = "acknowledgement";
pub const ESCALATION: &str = "escalation";

/// How long a notification request may wait for its acknowledgement, and how
/// often each instance looks for those that waited too long.
#[derive(Clone, Copy, Debug)]
pub struct AckRules {
    pub escalate_after: Duration,
    pub poll: Duration,
}

impl Default for AckRules {
    fn default() -> Self {
        AckRules {
            escalate_after: Duration::from_secs(48 * 3600),
            poll: Duration::from_secs(5),
        }
    }
}

/// A write that claims to acknowledge `CommunicationRequest/{request_id}`.
#[derive(Debug, PartialEq, Eq)]
pub struct Claim {
    pub request_id: String,
    /// A Task coded `acknowledgement`: its focus must be a notification request.
    /// Otherwise the claim holds only if it is one.
    pub explicit: bool,
}

fn has_code(concept: &Value, code: &str) -> bool {
    concept["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["system"] == CODE_SYSTEM && c["code"] == code)
}

fn request_id(reference: &Value) -> Option<String> {
    reference["reference"]
        .as_str()?
        .strip_prefix("CommunicationRequest/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(str::to_owned)
}

/// What a written Task or Communication acknowledges, if anything.
pub fn claims(res_type: &str, resource: &Value) -> Vec<Claim> {
    match res_type {
        "Task" => {
            let explicit = has_code(&resource["code"], ACKNOWLEDGEMENT);
            let done = matches!(resource["status"].as_str(), Some("received" | "completed"));
            if !done && !explicit {
                return Vec::new();
            }
            match request_id(&resource["focus"]) {
                Some(request_id) => vec![Claim {
                    request_id,
                    explicit,
                }],
                // An acknowledgement of no request: named so that the write path
                // refuses it.
                None if explicit => vec![Claim {
                    request_id: String::new(),
                    explicit,
                }],
                None => Vec::new(),
            }
        }
        "Communication" if resource["status"] != "entered-in-error" => resource["basedOn"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(request_id)
            .map(|request_id| Claim {
                request_id,
                explicit: false,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Is this CommunicationRequest a notification request the server sent?
pub fn is_notification_request(resource: &Value) -> bool {
    let profile = format!("{}nde-notificationrequest", nde::STRUCTURE_DEFINITION);
    resource["meta"]["profile"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p.as_str() == Some(profile.as_str()))
}

/// The request acknowledged by `by` (`Task/…` or `Communication/…`) at `now`:
/// `completed`, with a note that links it to the acknowledgement. `None` when it
/// is no longer active (acknowledged already, or ended).
pub fn acknowledged(mut request: Value, by: &str, now: DateTime<Utc>) -> Option<Value> {
    if request["status"] != "active" {
        return None;
    }
    request["status"] = json!("completed");
    let note = json!({"time": format_instant(now), "text": format!("Acquittée par {by}")});
    match request["note"].as_array_mut() {
        Some(notes) => notes.push(note),
        None => request["note"] = json!([note]),
    }
    Some(request)
}

/// The escalation of `CommunicationRequest/{request_id}`, still unacknowledged
/// `after` its emission: a Task for the stay's service provider (the request's
/// requester), focused on the request. `None` when the request has no requester
/// (there is no one to escalate to).
pub fn escalation_task(
    request: &Value,
    request_id: &str,
    after: Duration,
    now: DateTime<Utc>,
) -> Option<Value> {
    let owner = request["requester"].as_object()?;
    let recipient = request["recipient"][0]["reference"]
        .as_str()
        .unwrap_or("le destinataire");
    let hours = after.as_secs() / 3600;
    let delay = if hours > 0 {
        format!("{hours} h")
    } else {
        format!("{} s", after.as_secs())
    };
    let mut task = json!({
        "resourceType": "Task",
        "identifier": [{
            "system": nde::DERIVED_IDENTIFIER_SYSTEM,
            "value": format!("urn:passerelle:escalation:CommunicationRequest/{request_id}"),
        }],
        "status": "requested",
        "intent": "order",
        "priority": "urgent",
        "code": {"coding": [{"system": CODE_SYSTEM, "code": ESCALATION,
            "display": "Notification non acquittée"}]},
        "description": format!("La notification CommunicationRequest/{request_id} adressée à {recipient} n'a pas été acquittée après {delay}."),
        "focus": {"reference": format!("CommunicationRequest/{request_id}")},
        "authoredOn": format_instant(now),
        "owner": owner,
    });
    if request["subject"].is_object() {
        task["for"] = request["subject"].clone();
    }
    if request["encounter"].is_object() {
        task["encounter"] = request["encounter"].clone();
    }
    Some(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Value {
        json!({"resourceType": "CommunicationRequest", "status": "active",
            "meta": {"profile": [format!("{}nde-notificationrequest", nde::STRUCTURE_DEFINITION)]},
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "Encounter/s1"},
            "requester": {"reference": "Organization/ch"},
            "recipient": [{"reference": "Practitioner/gp"}]})
    }

    #[test]
    fn tasks_and_communications_claim_acknowledgements() {
        let task = |status: &str| {
            json!({"resourceType": "Task", "status": status, "intent": "order",
                "focus": {"reference": "CommunicationRequest/n1"}})
        };
        let claim = Claim {
            request_id: "n1".into(),
            explicit: false,
        };
        assert_eq!(claims("Task", &task("received")), [claim]);
        assert_eq!(claims("Task", &task("completed")).len(), 1);
        assert!(claims("Task", &task("requested")).is_empty());
        let mut explicit = task("requested");
        explicit["code"] = json!({"coding": [{"system": CODE_SYSTEM, "code": ACKNOWLEDGEMENT}]});
        assert!(claims("Task", &explicit)[0].explicit);
        explicit.as_object_mut().unwrap().remove("focus");
        assert_eq!(claims("Task", &explicit)[0].request_id, "");
        let communication = json!({"resourceType": "Communication", "status": "completed",
            "basedOn": [{"reference": "CommunicationRequest/n1"}, {"reference": "ServiceRequest/x"}]});
        assert_eq!(claims("Communication", &communication).len(), 1);
        assert!(claims("Observation", &communication).is_empty());
    }

    #[test]
    fn an_acknowledged_request_is_completed_once() {
        assert!(is_notification_request(&request()));
        let done = acknowledged(request(), "Task/t1", Utc::now()).unwrap();
        assert_eq!(done["status"], "completed");
        assert_eq!(done["note"][0]["text"], "Acquittée par Task/t1");
        assert!(acknowledged(done, "Task/t2", Utc::now()).is_none());
    }

    #[test]
    fn the_escalation_goes_to_the_service_provider() {
        let after = Duration::from_secs(48 * 3600);
        let task = escalation_task(&request(), "n1", after, Utc::now()).unwrap();
        crate::fhir::validate::validate_resource(&task).unwrap();
        assert_eq!(task["owner"]["reference"], "Organization/ch");
        assert_eq!(task["focus"]["reference"], "CommunicationRequest/n1");
        assert_eq!(task["code"]["coding"][0]["code"], ESCALATION);
        assert_eq!(task["for"]["reference"], "Patient/p1");
        assert!(task["description"].as_str().unwrap().contains("48 h"));
        let mut orphan = request();
        orphan.as_object_mut().unwrap().remove("requester");
        assert!(escalation_task(&orphan, "n1", after, Utc::now()).is_none());
    }
}
