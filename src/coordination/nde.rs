//! The resources of the *Notification d'Événements* guide (ANS, NdE 3.0.0) that the
//! server writes itself: the event declaration of an admission or a discharge.
//! Pure: the write path hands in the stay and the clock.
//!
//! One departure from the guide, on purpose: the subject and the requester are
//! references to the server's own Patient and Organization rather than contained
//! copies (the guide's `aggregation = contained` is written for messages between
//! systems), so that `CommunicationRequest?subject=` and `?encounter=` find the
//! declarations. The notification sent to a recipient carries the resources whole.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::stay::StayEvent;
use crate::fhir::datetime::format_instant;

pub const STRUCTURE_DEFINITION: &str =
    "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/";
pub const EVENT_TYPE_URL: &str =
    "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/event-type";
pub const EVENT_TIME_URL: &str =
    "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/event-time";
/// TRE_R254 TypeEvenement, the codes of the event-type extension.
pub const EVENT_TYPE_SYSTEM: &str =
    "https://mos.esante.gouv.fr/NOS/TRE_R254-TypeEvenement/FHIR/TRE-R254-TypeEvenement";
/// The identifier system of what the server derives: a declaration's identifier
/// says which write it declares, so that it can be found again.
pub const DERIVED_IDENTIFIER_SYSTEM: &str = "urn:ietf:rfc:3986";

/// An NdE event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// ADM: admission.
    Admission,
    /// SOR: discharge.
    Discharge,
    /// DOC: a document about the stay (the discharge letter) filed with or
    /// after the discharge.
    Document,
}

impl EventType {
    pub fn of(event: StayEvent) -> Option<EventType> {
        match event {
            StayEvent::Admission => Some(EventType::Admission),
            StayEvent::Discharge => Some(EventType::Discharge),
            // NdE has no transfer event; care-team changes carry it.
            StayEvent::Transfer => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            EventType::Admission => "ADM",
            EventType::Discharge => "SOR",
            EventType::Document => "DOC",
        }
    }

    fn display(self) -> &'static str {
        match self {
            EventType::Admission => "Admission d'un patient dans l'établissement de santé",
            EventType::Discharge => "Sortie d'un patient de l'établissement de santé",
            EventType::Document => "Dépôt d'un document",
        }
    }

    /// The event a declaration or a notification request carries.
    pub fn of_request(request: &Value) -> Option<EventType> {
        let coding = request["extension"]
            .as_array()?
            .iter()
            .find(|e| e["url"] == EVENT_TYPE_URL)?["valueCodeableConcept"]["coding"]
            .as_array()?
            .iter()
            .find(|c| c["system"] == EVENT_TYPE_SYSTEM)?
            .clone();
        [
            EventType::Admission,
            EventType::Discharge,
            EventType::Document,
        ]
        .into_iter()
        .find(|e| coding["code"] == e.code())
    }

    pub fn coding(self) -> Value {
        json!({"system": EVENT_TYPE_SYSTEM, "code": self.code(), "display": self.display()})
    }
}

/// The text of a codeable concept: its text, else its first coding's display or code.
fn concept_text(concept: &Value) -> Option<&str> {
    concept["text"].as_str().or_else(|| {
        let coding = &concept["coding"][0];
        coding["display"]
            .as_str()
            .or_else(|| coding["code"].as_str())
    })
}

/// The short human-readable summary of the event (the payload), in French as the
/// guide's users read it.
fn summary(event: EventType, encounter_ref: &str, encounter: &Value, time: &str) -> String {
    let mut text = match event {
        EventType::Admission => format!("Admission le {time} (séjour {encounter_ref})"),
        EventType::Discharge => format!("Sortie le {time} (séjour {encounter_ref})"),
        EventType::Document => format!("Document déposé le {time} (séjour {encounter_ref})"),
    };
    if let Some(provider) = encounter["serviceProvider"]["display"].as_str() {
        text.push_str(&format!(", {provider}"));
    }
    if event == EventType::Discharge {
        let hospitalization = &encounter["hospitalization"];
        if let Some(mode) = concept_text(&hospitalization["dischargeDisposition"]) {
            text.push_str(&format!(" ; mode de sortie : {mode}"));
        }
        if let Some(to) = hospitalization["destination"]["display"]
            .as_str()
            .or_else(|| hospitalization["destination"]["reference"].as_str())
        {
            text.push_str(&format!(" ; destination : {to}"));
        }
    }
    text.push('.');
    text
}

/// The notification request (`nde-notificationrequest`) that tells `recipient` of
/// the event of `declaration` through the Subscription `subscription_id` (a GP's
/// standing one, or an NdE subscriber's): the stay and the patient (with INS), when
/// known, are contained, so the body the recipient receives holds what it needs;
/// `subject` and `encounter` reference the server's own resources, so searches by
/// patient and by stay find the requests.
pub fn notification_request(
    declaration: &Value,
    subscription_id: &str,
    recipient: &super::recipients::Recipient,
    encounter: Option<&Value>,
    patient: Option<&Value>,
) -> Value {
    // Copies named for their place in this request, without the server's meta.
    let copy = |resource: &Value, id: &str| {
        let mut copy = resource.clone();
        copy["id"] = json!(id);
        if let Some(obj) = copy.as_object_mut() {
            obj.remove("meta");
        }
        copy
    };
    let mut contained: Vec<Value> = patient.map(|p| copy(p, "patient")).into_iter().collect();
    if let Some(encounter) = encounter {
        let mut stay = copy(encounter, "stay");
        if patient.is_some() {
            stay["subject"] = json!({"reference": "#patient"});
        }
        contained.push(stay);
    }
    let payload = match encounter {
        Some(_) => json!([{"contentReference": {"reference": "#stay"}}]),
        None => declaration["payload"].clone(),
    };
    let extension: Vec<Value> = declaration["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["url"] == EVENT_TYPE_URL || e["url"] == EVENT_TIME_URL)
        .cloned()
        .chain(declaration["authoredOn"].as_str().map(|at| {
            json!({"url": format!("{STRUCTURE_DEFINITION}event-emission-time"), "valueDateTime": at})
        }))
        .collect();
    let mut addressee = json!({
        "extension": [{"url": format!("{STRUCTURE_DEFINITION}recipient-endpoint"), "valueUrl": recipient.address}],
    });
    match &recipient.reference {
        Some(reference) => addressee["reference"] = json!(reference),
        None => addressee["display"] = json!(format!("Abonné de Subscription/{subscription_id}")),
    }
    let mut request = json!({
        "resourceType": "CommunicationRequest",
        "meta": {"profile": [format!("{STRUCTURE_DEFINITION}nde-notificationrequest")]},
        "extension": extension,
        "basedOn": [{"reference": format!("Subscription/{subscription_id}")}],
        "status": "active",
        "medium": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode",
            "code": "ELECTRONIC", "display": "electronic data"
        }], "text": "Rappel FHIR REST"}],
        "subject": declaration["subject"],
        "payload": payload,
        "recipient": [addressee],
    });
    for (field, value) in [
        ("contained", json!(contained)),
        ("encounter", declaration["encounter"].clone()),
        ("authoredOn", declaration["authoredOn"].clone()),
        ("requester", declaration["requester"].clone()),
    ] {
        if value.as_array().map_or(!value.is_null(), |a| !a.is_empty()) {
            request[field] = value;
        }
    }
    request
}

/// Whether a CommunicationRequest declares an event (the extension `event-type`)
/// rather than asks for its notification (based on a Subscription).
pub fn is_declaration(request: &Value) -> bool {
    let has_event_type = request["extension"]
        .as_array()
        .is_some_and(|list| list.iter().any(|e| e["url"] == EVENT_TYPE_URL));
    let based_on_subscription = request["basedOn"].as_array().is_some_and(|list| {
        list.iter().any(|r| {
            r["reference"]
                .as_str()
                .is_some_and(|r| r.starts_with("Subscription/"))
        })
    });
    has_event_type && !based_on_subscription
}

/// The identifier of the declaration of `event` for `{res_type}/{id}`: a stay is
/// admitted and discharged at most once (see `stay::REFUSED`), a document filed
/// once.
pub fn declaration_identifier(event: EventType, res_type: &str, id: &str) -> String {
    format!("urn:passerelle:event:{}:{res_type}/{id}", event.code())
}

/// What a declaration says beyond the stay it is about.
struct Declaration {
    event: EventType,
    time: String,
    identifier: String,
    summary: String,
}

/// The `nde-eventdeclaration` CommunicationRequest about `Encounter/{encounter_id}`;
/// none when the stay names no patient, as there is no one to tell about.
fn declaration(
    d: Declaration,
    encounter_id: &str,
    encounter: &Value,
    authored: &str,
) -> Option<Value> {
    let subject = encounter["subject"].as_object()?;
    let mut declaration = json!({
        "resourceType": "CommunicationRequest",
        "meta": {"profile": [format!("{STRUCTURE_DEFINITION}nde-eventdeclaration")]},
        "extension": [
            {"url": EVENT_TYPE_URL, "valueCodeableConcept": {"coding": [d.event.coding()]}},
            {"url": EVENT_TIME_URL, "valueDateTime": d.time},
        ],
        "identifier": [{"system": DERIVED_IDENTIFIER_SYSTEM, "value": d.identifier}],
        "status": "active",
        "subject": subject,
        "encounter": {"reference": format!("Encounter/{encounter_id}")},
        "authoredOn": authored,
        "payload": [{"contentString": d.summary}],
    });
    if let Some(provider) = encounter["serviceProvider"].as_object() {
        declaration["requester"] = json!(provider);
    }
    Some(declaration)
}

/// The event declaration of an admission or a discharge of the stay `encounter`
/// at `Encounter/{encounter_id}`, authored at `now`.
pub fn event_declaration(
    event: EventType,
    encounter_id: &str,
    encounter: &Value,
    now: DateTime<Utc>,
) -> Option<Value> {
    let period = &encounter["period"];
    let authored = format_instant(now);
    let time = match event {
        EventType::Admission => period["start"].as_str(),
        EventType::Discharge => period["end"].as_str(),
        EventType::Document => None,
    }
    .unwrap_or(&authored)
    .to_owned();
    let encounter_ref = format!("Encounter/{encounter_id}");
    let d = Declaration {
        event,
        identifier: declaration_identifier(event, "Encounter", encounter_id),
        summary: summary(event, &encounter_ref, encounter, &time),
        time,
    };
    declaration(d, encounter_id, encounter, &authored)
}

/// The DOC declaration of `DocumentReference/{document_id}`, filed about the stay
/// `encounter` with or after its discharge.
pub fn document_declaration(
    document_id: &str,
    document: &Value,
    encounter_id: &str,
    encounter: &Value,
    now: DateTime<Utc>,
) -> Option<Value> {
    let authored = format_instant(now);
    let time = document["date"].as_str().unwrap_or(&authored).to_owned();
    let encounter_ref = format!("Encounter/{encounter_id}");
    let mut summary = summary(EventType::Document, &encounter_ref, encounter, &time);
    summary.pop();
    let kind = concept_text(&document["type"]).unwrap_or("document");
    summary.push_str(&format!(" : {kind} (DocumentReference/{document_id})."));
    let d = Declaration {
        event: EventType::Document,
        identifier: declaration_identifier(EventType::Document, "DocumentReference", document_id),
        summary,
        time,
    };
    declaration(d, encounter_id, encounter, &authored)
}

/// The stay a DocumentReference is about (`context.encounter`), if one.
pub fn document_stay(document: &Value) -> Option<&str> {
    document["context"]["encounter"]
        .as_array()?
        .iter()
        .filter_map(|r| r["reference"].as_str()?.strip_prefix("Encounter/"))
        .find(|id| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn discharged() -> Value {
        json!({
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": "Patient/p1"},
            "serviceProvider": {"reference": "Organization/ch", "display": "CH de Tulle"},
            "period": {"start": "2026-11-16T10:15:00+01:00", "end": "2026-11-20T19:40:00+01:00"},
            "hospitalization": {
                "dischargeDisposition": {"text": "Retour à domicile"},
                "destination": {"reference": "Location/home"}
            }
        })
    }

    #[test]
    fn a_discharge_declares_sor_with_the_stay() {
        let now = Utc::now();
        let d = event_declaration(EventType::Discharge, "s1", &discharged(), now).unwrap();
        assert_eq!(d["extension"][0]["url"], EVENT_TYPE_URL);
        assert_eq!(
            d["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
            "SOR"
        );
        assert_eq!(
            d["extension"][1]["valueDateTime"],
            "2026-11-20T19:40:00+01:00"
        );
        assert_eq!(d["encounter"]["reference"], "Encounter/s1");
        assert_eq!(d["subject"]["reference"], "Patient/p1");
        assert_eq!(d["requester"]["reference"], "Organization/ch");
        assert_eq!(d["status"], "active");
        let text = d["payload"][0]["contentString"].as_str().unwrap();
        assert!(
            text.contains("Sortie le 2026-11-20T19:40:00+01:00"),
            "{text}"
        );
        assert!(text.contains("CH de Tulle"), "{text}");
        assert!(
            text.contains("mode de sortie : Retour à domicile"),
            "{text}"
        );
        assert!(text.contains("destination : Location/home"), "{text}");
        assert_eq!(
            d["identifier"][0]["value"],
            "urn:passerelle:event:SOR:Encounter/s1"
        );
        assert_eq!(EventType::of_request(&d), Some(EventType::Discharge));
    }

    #[test]
    fn declarations_are_valid_r4() {
        let now = Utc::now();
        for event in [EventType::Admission, EventType::Discharge] {
            let d = event_declaration(event, "s1", &discharged(), now).unwrap();
            crate::fhir::validate::validate_resource(&d).unwrap();
        }
    }

    #[test]
    fn an_admission_without_its_start_takes_the_clock() {
        let now = Utc::now();
        let mut stay = discharged();
        stay["period"] = json!({});
        let d = event_declaration(EventType::Admission, "s1", &stay, now).unwrap();
        assert_eq!(d["extension"][1]["valueDateTime"], format_instant(now));
        assert_eq!(
            d["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
            "ADM"
        );
    }

    #[test]
    fn a_notification_request_holds_the_stay_and_the_patient() {
        let now = Utc::now();
        let stay = discharged();
        let d = event_declaration(EventType::Discharge, "s1", &stay, now).unwrap();
        let patient = json!({"resourceType": "Patient", "id": "p1",
            "meta": {"versionId": "3"},
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "280017512345610"}]});
        let recipient = super::super::recipients::Recipient {
            reference: Some("Practitioner/gp".into()),
            address: "https://cabinet.example/hook".into(),
        };
        let n = notification_request(&d, "nde-1", &recipient, Some(&stay), Some(&patient));
        crate::fhir::validate::validate_resource(&n).unwrap();
        assert_eq!(n["basedOn"][0]["reference"], "Subscription/nde-1");
        assert_eq!(n["encounter"]["reference"], "Encounter/s1");
        assert_eq!(n["subject"]["reference"], "Patient/p1");
        assert_eq!(n["recipient"][0]["reference"], "Practitioner/gp");
        assert_eq!(
            n["recipient"][0]["extension"][0]["valueUrl"],
            "https://cabinet.example/hook"
        );
        assert_eq!(
            n["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
            "SOR"
        );
        let contained = n["contained"].as_array().unwrap();
        assert_eq!(contained[0]["identifier"][0]["value"], "280017512345610");
        assert_eq!(contained[0]["id"], "patient");
        assert!(contained[0].get("meta").is_none());
        assert_eq!(contained[1]["subject"]["reference"], "#patient");
        assert_eq!(contained[1]["period"]["end"], "2026-11-20T19:40:00+01:00");
        assert_eq!(
            contained[1]["hospitalization"]["dischargeDisposition"]["text"],
            "Retour à domicile"
        );
    }

    #[test]
    fn a_subscriber_of_an_emitters_declaration_gets_what_is_known() {
        // An emitter's declaration (the guide's example): the patient contained,
        // no stay on this server.
        let declaration = json!({"resourceType": "CommunicationRequest", "status": "active",
            "extension": [{"url": EVENT_TYPE_URL, "valueCodeableConcept": {"coding": [EventType::Discharge.coding()]}}],
            "subject": {"reference": "Patient/p1"},
            "payload": [{"contentString": "Sortie de M. Langdon"}]});
        assert!(is_declaration(&declaration));
        let recipient = super::super::recipients::Recipient {
            reference: None,
            address: "https://dac.example/hook".into(),
        };
        let n = notification_request(&declaration, "dac", &recipient, None, None);
        crate::fhir::validate::validate_resource(&n).unwrap();
        assert!(n.get("contained").is_none() && n.get("encounter").is_none());
        assert_eq!(n["payload"][0]["contentString"], "Sortie de M. Langdon");
        assert_eq!(n["recipient"][0]["display"], "Abonné de Subscription/dac");
        assert!(
            !is_declaration(&n),
            "a notification request declares nothing"
        );
        assert!(!is_declaration(
            &json!({"resourceType": "CommunicationRequest"})
        ));
    }

    #[test]
    fn a_letter_about_the_stay_declares_doc() {
        let letter = json!({"resourceType": "DocumentReference", "status": "current",
            "date": "2026-11-20T19:45:00+01:00",
            "type": {"coding": [{"system": "http://loinc.org", "code": "11490-0",
                "display": "Lettre de sortie"}]},
            "context": {"encounter": [{"reference": "Encounter/s1"}]}});
        assert_eq!(document_stay(&letter), Some("s1"));
        let d = document_declaration("doc1", &letter, "s1", &discharged(), Utc::now()).unwrap();
        crate::fhir::validate::validate_resource(&d).unwrap();
        assert_eq!(
            d["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
            "DOC"
        );
        assert_eq!(
            d["extension"][1]["valueDateTime"],
            "2026-11-20T19:45:00+01:00"
        );
        assert_eq!(d["encounter"]["reference"], "Encounter/s1");
        assert_eq!(
            d["identifier"][0]["value"],
            "urn:passerelle:event:DOC:DocumentReference/doc1"
        );
        let text = d["payload"][0]["contentString"].as_str().unwrap();
        assert!(
            text.contains("Lettre de sortie (DocumentReference/doc1)"),
            "{text}"
        );
        assert_eq!(document_stay(&json!({"context": {}})), None);
    }

    #[test]
    fn no_patient_no_declaration() {
        let mut stay = discharged();
        stay.as_object_mut().unwrap().remove("subject");
        assert!(event_declaration(EventType::Discharge, "s1", &stay, Utc::now()).is_none());
    }
}
