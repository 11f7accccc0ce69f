//! The shapes of notifications: the R4 Backport's `history` Bundle that opens with
//! a `subscription-status` Parameters (for callbacks, `$status` and `$events`).
//! Pure: the caller supplies the events and, for `full-resource`, the resources.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::Content;
use crate::fhir::datetime::format_instant;

/// `subscription-status.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Handshake,
    Heartbeat,
    EventNotification,
    QueryStatus,
    QueryEvent,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Handshake => "handshake",
            Kind::Heartbeat => "heartbeat",
            Kind::EventNotification => "event-notification",
            Kind::QueryStatus => "query-status",
            Kind::QueryEvent => "query-event",
        }
    }
}

/// The subscription a notification is about.
pub struct About<'a> {
    /// The FHIR base, absolute, without a trailing slash.
    pub base: &'a str,
    pub sub_id: &'a str,
    pub topic: Option<&'a str>,
    pub status: &'a str,
    pub events_since_start: i64,
    pub error: Option<&'a str>,
}

/// One event in a notification.
pub struct Event {
    pub number: i64,
    pub recorded_at: DateTime<Utc>,
    pub focus_type: String,
    pub focus_id: String,
    pub focus_version: i64,
    pub interaction: String,
    /// The focus at that version, for `full-resource` (None when deleted).
    pub resource: Option<Value>,
}

/// The `subscription-status` Parameters.
pub fn status(about: &About<'_>, kind: Kind, events: &[Event], content: Content) -> Value {
    let mut parameters = vec![
        json!({"name": "subscription", "valueReference": {"reference": format!("{}/Subscription/{}", about.base, about.sub_id)}}),
    ];
    if let Some(topic) = about.topic {
        parameters.push(json!({"name": "topic", "valueCanonical": topic}));
    }
    parameters.push(json!({"name": "status", "valueCode": about.status}));
    parameters.push(json!({"name": "type", "valueCode": kind.as_str()}));
    // R4 has no integer64: the Backport carries event numbers as strings.
    parameters.push(json!({"name": "events-since-subscription-start", "valueString": about.events_since_start.to_string()}));
    for event in events {
        let mut parts = vec![
            json!({"name": "event-number", "valueString": event.number.to_string()}),
            json!({"name": "timestamp", "valueInstant": format_instant(event.recorded_at)}),
        ];
        if content != Content::Empty {
            parts.push(
                json!({"name": "focus", "valueReference": {"reference": format!(
                    "{}/{}/{}/_history/{}",
                    about.base, event.focus_type, event.focus_id, event.focus_version
                )}}),
            );
        }
        parameters.push(json!({"name": "notification-event", "part": parts}));
    }
    if let Some(error) = about.error {
        parameters.push(json!({"name": "error", "valueCodeableConcept": {"text": error}}));
    }
    json!({
        "resourceType": "Parameters",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"]},
        "parameter": parameters,
    })
}

/// A notification Bundle: the status first, then (unless `empty`) one entry per
/// event's focus, with the resource itself for `full-resource`.
pub fn bundle(
    about: &About<'_>,
    kind: Kind,
    events: &[Event],
    content: Content,
    now: DateTime<Utc>,
) -> Value {
    let status = status(about, kind, events, content);
    let mut entries = vec![json!({
        "fullUrl": format!("urn:uuid:{}", status["id"].as_str().unwrap_or_default()),
        "resource": status,
        "request": {"method": "GET", "url": format!("{}/Subscription/{}/$status", about.base, about.sub_id)},
        "response": {"status": "200"},
    })];
    if content != Content::Empty {
        for event in events {
            let (method, code) = match event.interaction.as_str() {
                "create" => ("POST", "201"),
                "delete" => ("DELETE", "204"),
                _ => ("PUT", "200"),
            };
            let url = format!("{}/{}/{}", about.base, event.focus_type, event.focus_id);
            let mut entry = json!({
                "fullUrl": url,
                "request": {"method": method, "url": format!("{}/{}", event.focus_type, event.focus_id)},
                "response": {"status": code},
            });
            if content == Content::FullResource {
                if let Some(resource) = &event.resource {
                    entry["resource"] = resource.clone();
                }
            }
            entries.push(entry);
        }
    }
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"profile": ["http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-notification-r4"]},
        "type": "history",
        "timestamp": format_instant(now),
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn about() -> About<'static> {
        About {
            base: "https://passerelle.example.fr/fhir",
            sub_id: "s1",
            topic: Some("https://passerelle.example.fr/fhir/SubscriptionTopic/encounter-discharge"),
            status: "active",
            events_since_start: 7,
            error: None,
        }
    }

    fn event(number: i64) -> Event {
        Event {
            number,
            recorded_at: Utc::now(),
            focus_type: "Encounter".into(),
            focus_id: "e1".into(),
            focus_version: 3,
            interaction: "update".into(),
            resource: Some(json!({"resourceType": "Encounter", "id": "e1"})),
        }
    }

    #[test]
    fn an_event_notification_has_the_status_first_then_the_focus() {
        let b = bundle(
            &about(),
            Kind::EventNotification,
            &[event(6), event(7)],
            Content::FullResource,
            Utc::now(),
        );
        assert_eq!(b["type"], "history");
        let entries = b["entry"].as_array().expect("entries");
        assert_eq!(entries.len(), 3);
        let status = &entries[0]["resource"];
        assert_eq!(status["resourceType"], "Parameters");
        let params = status["parameter"].as_array().expect("parameters");
        let named = |n: &str| params.iter().filter(|p| p["name"] == n).collect::<Vec<_>>();
        assert_eq!(named("type")[0]["valueCode"], "event-notification");
        assert_eq!(
            named("events-since-subscription-start")[0]["valueString"],
            "7"
        );
        let events = named("notification-event");
        assert_eq!(events.len(), 2);
        assert_eq!(events[1]["part"][0]["valueString"], "7");
        assert_eq!(
            events[0]["part"][2]["valueReference"]["reference"],
            "https://passerelle.example.fr/fhir/Encounter/e1/_history/3"
        );
        assert_eq!(entries[1]["resource"]["id"], "e1");
        assert_eq!(entries[1]["request"]["method"], "PUT");
    }

    #[test]
    fn id_only_and_empty_carry_less() {
        let ids = bundle(
            &about(),
            Kind::EventNotification,
            &[event(1)],
            Content::IdOnly,
            Utc::now(),
        );
        assert_eq!(ids["entry"].as_array().map(Vec::len), Some(2));
        assert!(ids["entry"][1].get("resource").is_none());
        let empty = bundle(
            &about(),
            Kind::EventNotification,
            &[event(1)],
            Content::Empty,
            Utc::now(),
        );
        assert_eq!(empty["entry"].as_array().map(Vec::len), Some(1));
        let parts = &empty["entry"][0]["resource"]["parameter"];
        assert!(!parts.to_string().contains("focus"));
        let hs = bundle(&about(), Kind::Handshake, &[], Content::IdOnly, Utc::now());
        assert_eq!(
            hs["entry"][0]["resource"]["parameter"][3]["valueCode"],
            "handshake"
        );
    }
}
