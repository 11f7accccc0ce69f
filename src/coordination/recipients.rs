//! Who must know of a patient's events, and how to reach them: the patient's GP
//! (`Patient.generalPractitioner`) through the `Endpoint` of one of their
//! PractitionerRoles (or of the Organization), and the standing NdE Subscription
//! the server keeps for each reachable GP of each patient, so that a GP is
//! notified without writing a Subscription. Pure: the write path reads the
//! resources and hands them in.

use serde_json::{json, Value};

use super::nde;
use crate::subscription::EndpointPolicy;

/// The connection type of an Endpoint that takes FHIR REST callbacks.
pub const FHIR_REST: &str = "hl7-fhir-rest";

/// The connection types of an Endpoint that takes mail (MSSanté-style secure
/// mail), at a `mailto:` address.
pub const MAIL: &[&str] = &["secure-email", "direct-project"];

/// Marks what the server keeps on a GP's behalf (`meta.tag`), so that a reader
/// tells it from a Subscription someone wrote.
pub const STANDING_TAG_SYSTEM: &str = "https://passerelle.example.fr/fhir/CodeSystem/derived";
pub const STANDING_TAG_CODE: &str = "standing-nde-subscription";

/// Someone to notify and the callback URL that reaches them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// `Practitioner/…`, `PractitionerRole/…` or `Organization/…`; none for a
    /// subscriber that did not say who it is.
    pub reference: Option<String>,
    pub address: String,
}

/// The references of the patient's GPs that can be reached through endpoints.
pub fn general_practitioners(patient: &Value) -> Vec<String> {
    patient["generalPractitioner"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["reference"].as_str())
        .filter(|r| {
            ["Practitioner/", "PractitionerRole/", "Organization/"]
                .iter()
                .any(|p| r.strip_prefix(p).is_some_and(|id| !id.contains('/')))
        })
        .map(str::to_owned)
        .collect()
}

/// The GPs a write of a Patient adds and removes: `previous` is the live version
/// it replaces (none for a creation), `next` the new one (none for a delete).
pub fn general_practitioner_changes(
    previous: Option<&Value>,
    next: Option<&Value>,
) -> (Vec<String>, Vec<String>) {
    let before = previous.map(general_practitioners).unwrap_or_default();
    let after = next.map(general_practitioners).unwrap_or_default();
    let added = after
        .iter()
        .filter(|g| !before.contains(g))
        .cloned()
        .collect();
    let removed = before.into_iter().filter(|g| !after.contains(g)).collect();
    (added, removed)
}

/// The recipient of what is written for an NdE subscriber: who its `subscriber`
/// extension names (a relative reference), at its channel's endpoint. `None` for a
/// channel without an endpoint (a websocket: it is sent what it selects as any
/// subscription is).
pub fn subscriber(subscription: &Value) -> Option<Recipient> {
    let address = subscription["channel"]["endpoint"]
        .as_str()
        .filter(|a| !a.is_empty() && subscription["channel"]["type"] == "rest-hook")?;
    let url = format!("{}subscriber", nde::STRUCTURE_DEFINITION);
    let reference = subscription["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["url"] == url.as_str())
        .find_map(|e| e["valueReference"]["reference"].as_str())
        .filter(|r| r.split_once('/').is_some_and(|(_, id)| !id.contains('/')))
        .map(str::to_owned);
    Some(Recipient {
        reference,
        address: address.to_owned(),
    })
}

/// The references to Endpoints a PractitionerRole or an Organization lists.
pub fn endpoint_references(resource: &Value) -> Vec<String> {
    resource["endpoint"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["reference"].as_str())
        .filter(|r| r.starts_with("Endpoint/"))
        .map(str::to_owned)
        .collect()
}

/// The address of an Endpoint that can take a notification now: active, FHIR
/// REST with its callback URL, or secure mail with a `mailto:` address.
pub fn callback_address(endpoint: &Value) -> Option<&str> {
    let kind = endpoint["connectionType"]["code"]
        .as_str()
        .unwrap_or_default();
    let active = endpoint["status"].as_str() == Some("active");
    endpoint["address"].as_str().filter(|a| {
        active
            && !a.is_empty()
            && (kind == FHIR_REST || (MAIL.contains(&kind) && a.starts_with("mailto:")))
    })
}

/// Refuses an FHIR REST Endpoint the server could not call back (`policy`: the
/// rules every subscription endpoint obeys): a GP's notices would be lost.
pub fn check_endpoint(endpoint: &Value, policy: &EndpointPolicy) -> Result<(), String> {
    if endpoint["connectionType"]["code"].as_str() != Some(FHIR_REST) {
        return Ok(());
    }
    match endpoint["address"].as_str() {
        Some(address) => policy.refusal(address).map_or(Ok(()), Err),
        None => Err("an hl7-fhir-rest Endpoint needs an address".to_owned()),
    }
}

/// The id of the standing Subscription of one GP for one patient: the same
/// pair always gives the same id, so it is written again rather than searched.
pub fn standing_subscription_id(patient_id: &str, recipient: &str) -> String {
    super::derived_id("nde", &format!("{patient_id}\n{recipient}"))
}

/// A Subscription the server keeps on `recipient`'s behalf: `criteria` delivered
/// as the resource itself to their endpoint, tagged as the server's.
/// Its extensions name the subscriber (the NdE `subscriber`) and, for what is
/// about one patient, the NdE `subject`.
pub(super) fn kept_for(
    recipient: &Recipient,
    criteria: String,
    reason: String,
    patient_id: Option<&str>,
) -> Value {
    let mut extension: Vec<Value> = patient_id
        .map(|id| {
            json!({"url": format!("{}subject", nde::STRUCTURE_DEFINITION),
                   "valueReference": {"reference": format!("Patient/{id}")}})
        })
        .into_iter()
        .collect();
    extension.push(
        json!({"url": format!("{}subscriber", nde::STRUCTURE_DEFINITION),
                          "valueReference": {"reference": recipient.reference}}),
    );
    json!({
        "resourceType": "Subscription",
        "meta": {
            "profile": [format!("{}nde-subscription", nde::STRUCTURE_DEFINITION)],
            "tag": [{"system": STANDING_TAG_SYSTEM, "code": STANDING_TAG_CODE}],
        },
        "extension": extension,
        "status": "requested",
        "reason": reason,
        "criteria": criteria,
        "channel": {
            // Secure mail for a recipient without an API.
            "type": if recipient.address.starts_with("mailto:") { "email" } else { "rest-hook" },
            "endpoint": recipient.address,
            "payload": "application/fhir+json",
        },
    })
}

/// The standing NdE Subscription through which `recipient` hears of the events of
/// `Patient/{patient_id}`: its criteria are the notification requests based on
/// it, its channel the recipient's endpoint, its payload the request itself.
pub fn standing_subscription(patient_id: &str, recipient: &Recipient, id: &str) -> Value {
    kept_for(
        recipient,
        format!("CommunicationRequest?based-on=Subscription/{id}&status=active"),
        format!(
            "Notification d'événements du patient Patient/{patient_id} à {} (cercle de soins)",
            recipient.reference.as_deref().unwrap_or_default()
        ),
        Some(patient_id),
    )
}

/// The Subscription through which the requester of `ServiceRequest/{request_id}`
/// hears of every change of its fulfilment Task.
pub fn referral_subscription(request_id: &str, requester: &Recipient) -> Value {
    let who = requester.reference.as_deref().unwrap_or_default();
    kept_for(
        requester,
        format!("Task?based-on=ServiceRequest/{request_id}"),
        format!("Suivi de la demande ServiceRequest/{request_id}, pour {who}"),
        None,
    )
}

/// The id of the Subscription through which an owner hears of escalations.
pub fn escalation_subscription_id(owner: &str) -> String {
    standing_subscription_id("escalation", owner)
}

/// The Subscription through which `owner` (a stay's service provider) hears of
/// the escalation Tasks it owns.
pub fn escalation_subscription(owner: &Recipient) -> Value {
    let who = owner.reference.as_deref().unwrap_or_default();
    kept_for(
        owner,
        // New escalations only: the owner's own updates of the Task are not news.
        format!(
            "Task?owner={}&status=requested&code={}|{}",
            who,
            super::acknowledgement::CODE_SYSTEM,
            super::acknowledgement::ESCALATION
        ),
        format!("Notifications non acquittées, pour {who}"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gps_are_practitioners_roles_or_organisations() {
        let patient = json!({"generalPractitioner": [
            {"reference": "Practitioner/gp"},
            {"reference": "PractitionerRole/gp-role"},
            {"reference": "Organization/msp"},
            {"reference": "Patient/other"},
            {"reference": "https://elsewhere.example/Practitioner/x"},
            {"display": "Dr Sans Référence"}
        ]});
        assert_eq!(
            general_practitioners(&patient),
            [
                "Practitioner/gp",
                "PractitionerRole/gp-role",
                "Organization/msp"
            ]
        );
        assert!(general_practitioners(&json!({})).is_empty());
    }

    #[test]
    fn gp_changes_are_what_was_added_and_removed() {
        let with = |gps: &[&str]| {
            json!({"resourceType": "Patient", "generalPractitioner":
                gps.iter().map(|g| json!({"reference": g})).collect::<Vec<_>>()})
        };
        let (a, b) = (with(&["Practitioner/a"]), with(&["Practitioner/b"]));
        assert_eq!(
            general_practitioner_changes(Some(&a), Some(&b)),
            (
                vec!["Practitioner/b".to_owned()],
                vec!["Practitioner/a".to_owned()]
            )
        );
        assert_eq!(
            general_practitioner_changes(None, Some(&a)),
            (vec!["Practitioner/a".to_owned()], vec![])
        );
        assert_eq!(
            general_practitioner_changes(Some(&a), None),
            (vec![], vec!["Practitioner/a".to_owned()])
        );
        assert_eq!(
            general_practitioner_changes(Some(&a), Some(&a)),
            (vec![], vec![])
        );
    }

    #[test]
    fn only_active_fhir_rest_endpoints_take_callbacks() {
        let endpoint = |status: &str, kind: &str| {
            json!({"resourceType": "Endpoint", "status": status,
                "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": kind},
                "address": "https://cabinet.example/fhir/notify"})
        };
        assert_eq!(
            callback_address(&endpoint("active", "hl7-fhir-rest")),
            Some("https://cabinet.example/fhir/notify")
        );
        assert_eq!(callback_address(&endpoint("off", "hl7-fhir-rest")), None);
        assert_eq!(
            callback_address(&endpoint("active", "direct-project")),
            None
        );
        let mut mail = endpoint("active", "secure-email");
        mail["address"] = json!("mailto:dr.lenoir@medecin.mssante.fr");
        assert_eq!(
            callback_address(&mail),
            Some("mailto:dr.lenoir@medecin.mssante.fr")
        );
        let recipient = Recipient {
            reference: Some("Practitioner/gp".into()),
            address: "mailto:dr.lenoir@medecin.mssante.fr".into(),
        };
        assert_eq!(
            standing_subscription("p1", &recipient, "nde-1")["channel"]["type"],
            "email"
        );
    }

    #[test]
    fn unusable_callback_endpoints_are_refused() {
        let rest = |address: &str| {
            json!({"resourceType": "Endpoint", "status": "active",
                "connectionType": {"code": "hl7-fhir-rest"}, "address": address})
        };
        let strict = EndpointPolicy::default();
        assert!(check_endpoint(&rest("https://cabinet.example/hook"), &strict).is_ok());
        assert!(check_endpoint(&rest("not a url"), &strict).is_err());
        assert!(check_endpoint(&rest("http://10.0.0.1/hook"), &strict).is_err());
        assert!(check_endpoint(&rest("ftp://cabinet.example/"), &strict).is_err());
        // Other kinds of Endpoint (secure mail, DICOM) are not called back.
        let mail =
            json!({"connectionType": {"code": "direct-project"}, "address": "mailto:dr@msante.fr"});
        assert!(check_endpoint(&mail, &strict).is_ok());
    }

    #[test]
    fn one_standing_subscription_per_patient_and_gp() {
        let a = standing_subscription_id("p1", "Practitioner/gp");
        assert_eq!(a, standing_subscription_id("p1", "Practitioner/gp"));
        assert_ne!(a, standing_subscription_id("p2", "Practitioner/gp"));
        assert_ne!(a, standing_subscription_id("p1", "Practitioner/other"));
        assert!(a.len() <= 64 && a.starts_with("nde-"));
        let recipient = Recipient {
            reference: Some("Practitioner/gp".into()),
            address: "https://cabinet.example/hook".into(),
        };
        let sub = standing_subscription("p1", &recipient, &a);
        assert_eq!(
            sub["criteria"],
            format!("CommunicationRequest?based-on=Subscription/{a}&status=active")
        );
        assert_eq!(sub["channel"]["endpoint"], "https://cabinet.example/hook");
        crate::fhir::validate::validate_resource(&sub).unwrap();
    }
}
