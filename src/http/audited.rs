//! What the audit record of a request says: the interaction, the resource and
//! patient it was about, who asked and from where, and the outcome. Pure.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::auth::Access;
use crate::store::audit::AuditRow;

use super::route::Route;

/// The request as the audit trail sees it.
pub struct Asked<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// `None`: the path is no FHIR endpoint.
    pub route: Option<&'a Route>,
    pub params: &'a [(String, String)],
    /// `None`: refused before the client was known.
    pub access: Option<&'a Access>,
    pub source: Option<String>,
    pub break_glass: Option<String>,
}

/// What a write needs to store its request's audit record in its own
/// transaction (the request's start, path, peer and break-the-glass reason; the
/// rest is in the request); `stored` says it did, and the request is not
/// recorded again.
#[derive(Debug, Clone)]
pub struct Recording {
    pub recorded: DateTime<Utc>,
    pub path: String,
    pub source: Option<String>,
    pub break_glass: Option<String>,
    pub stored: Arc<AtomicBool>,
}

/// AuditEvent.action and the interaction (or operation) of a request.
pub(super) fn action(method: &str, route: Option<&Route>) -> (&'static str, String) {
    let Some(route) = route else {
        return ("E", "unknown".to_owned());
    };
    let (action, subtype) = match (method, route) {
        ("GET" | "HEAD", Route::Instance(..)) => ("R", "read"),
        ("GET" | "HEAD", Route::Version(..)) => ("R", "vread"),
        ("GET" | "HEAD", Route::InstanceHistory(..)) => ("R", "history-instance"),
        ("GET" | "HEAD", Route::TypeHistory(_)) => ("R", "history-type"),
        ("GET" | "HEAD", Route::SystemHistory) => ("R", "history-system"),
        ("GET" | "HEAD", Route::Type(_) | Route::Compartment(..))
        | ("POST", Route::TypeSearch(_)) => ("E", "search-type"),
        ("GET" | "HEAD", Route::System) => ("E", "search-system"),
        ("POST", Route::System) => ("E", "transaction"),
        ("POST", Route::Type(_)) => ("C", "create"),
        ("PUT", _) => ("U", "update"),
        ("PATCH", _) => ("U", "patch"),
        ("DELETE", Route::ExportStatus(_)) => ("D", "$export-status"),
        ("DELETE", _) => ("D", "delete"),
        (_, Route::Everything(..)) => ("E", "$everything"),
        (_, Route::CareCircle(_)) => ("E", "$care-circle"),
        (_, Route::Turnaround) => ("E", "$turnaround"),
        (_, Route::Export(..)) => ("E", "$export"),
        (_, Route::ExportStatus(_)) => ("R", "$export-status"),
        (_, Route::ExportFile(..)) => ("R", "$export-file"),
        (_, Route::SubscriptionOperation(_, op)) => return ("E", op.clone()),
        (_, Route::Validate(..)) => ("E", "$validate"),
        _ => ("E", "unknown"),
    };
    (action, subtype.to_owned())
}

/// The resource a request was about: its route's, or the one it created (from
/// the answer's `Location`).
fn entity(route: Option<&Route>, location: Option<&str>) -> Option<(String, String)> {
    match route? {
        Route::Instance(t, id)
        | Route::Version(t, id, _)
        | Route::InstanceHistory(t, id)
        | Route::Everything(t, id)
        | Route::Compartment(t, id, _) => Some((t.clone(), id.clone())),
        Route::CareCircle(id) => Some(("Patient".to_owned(), id.clone())),
        Route::SubscriptionOperation(Some(id), _) => Some(("Subscription".to_owned(), id.clone())),
        Route::Type(_) => {
            // `…/fhir/Type/id/_history/1`
            let path = location?.split("/_history").next()?;
            let mut segments = path.rsplit('/');
            let id = segments.next()?;
            let t = segments.next()?;
            Some((t.to_owned(), id.to_owned()))
        }
        _ => None,
    }
}

/// The patient a request named: the resource itself, or a `patient` or
/// `subject` parameter.
fn patient(entity: Option<&(String, String)>, params: &[(String, String)]) -> Option<String> {
    if let Some((_, id)) = entity.filter(|(t, _)| t == "Patient") {
        return Some(id.clone());
    }
    params.iter().find_map(|(name, value)| {
        let base = name.split(':').next()?;
        match base {
            "patient" => Some(value.strip_prefix("Patient/").unwrap_or(value).to_owned()),
            "subject" => value.strip_prefix("Patient/").map(str::to_owned),
            _ => None,
        }
        .filter(|id| !id.is_empty() && !id.contains([',', '/']))
    })
}

/// Who a record names: the token's client, subject and `fhirUser` (none
/// without a token).
fn who(access: Option<&Access>) -> (Option<String>, Option<String>, Option<String>) {
    match access {
        Some(Access::Token(p)) => (p.client.clone(), p.subject.clone(), p.fhir_user.clone()),
        _ => (None, None, None),
    }
}

/// The audit record of a request answered with `status` (and `location`).
pub fn row(
    recorded: DateTime<Utc>,
    asked: &Asked<'_>,
    status: u16,
    location: Option<&str>,
) -> AuditRow {
    let (action, subtype) = action(asked.method, asked.route);
    let entity = entity(asked.route, location);
    let patient_id = patient(entity.as_ref(), asked.params);
    let (client_id, subject, fhir_user) = who(asked.access);
    AuditRow {
        seq: 0,
        recorded,
        action: action.to_owned(),
        subtype,
        status: i32::from(status),
        client_id,
        subject,
        fhir_user,
        source: asked.source.clone(),
        method: asked.method.to_owned(),
        path: asked.path.to_owned(),
        query: asked.query.map(str::to_owned),
        entity_type: entity.as_ref().map(|e| e.0.clone()),
        entity_id: entity.map(|e| e.1),
        patient_id,
        break_glass: asked.break_glass.clone(),
    }
}

/// The audit record of what a websocket carried (`subtype`: its binding to a
/// Subscription, or a notification sent), for the Subscription's owner (`None`:
/// filed without one, authentication off).
pub fn websocket_row(
    subtype: &str,
    status: u16,
    sub_id: Option<&str>,
    owner: Option<&Access>,
    source: Option<String>,
) -> AuditRow {
    let (client_id, subject, fhir_user) = who(owner);
    AuditRow {
        seq: 0,
        recorded: chrono::Utc::now(),
        action: "E".to_owned(),
        subtype: subtype.to_owned(),
        status: i32::from(status),
        client_id,
        subject,
        fhir_user,
        source,
        method: "WEBSOCKET".to_owned(),
        path: "/fhir/$websocket".to_owned(),
        query: None,
        entity_type: sub_id.map(|_| "Subscription".to_owned()),
        entity_id: sub_id.map(str::to_owned),
        patient_id: None,
        break_glass: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked<'a>(
        method: &'a str,
        route: Option<&'a Route>,
        params: &'a [(String, String)],
    ) -> Asked<'a> {
        Asked {
            method,
            path: "/fhir/x",
            query: None,
            route,
            params,
            access: None,
            source: Some("127.0.0.1".to_owned()),
            break_glass: None,
        }
    }

    #[test]
    fn each_request_says_what_it_did_and_to_whom() {
        let read = Route::Instance("Encounter".into(), "e1".into());
        let r = row(Utc::now(), &asked("GET", Some(&read), &[]), 200, None);
        assert_eq!((r.action.as_str(), r.subtype.as_str()), ("R", "read"));
        assert_eq!(r.entity_id.as_deref(), Some("e1"));
        assert_eq!(r.patient_id, None);

        let search = Route::Type("Observation".into());
        let params = crate::search::parse_form("subject=Patient/p9&code=x");
        let r = row(Utc::now(), &asked("GET", Some(&search), &params), 200, None);
        assert_eq!(
            (r.action.as_str(), r.subtype.as_str()),
            ("E", "search-type")
        );
        assert_eq!(r.patient_id.as_deref(), Some("p9"));

        let create = Route::Type("Patient".into());
        let r = row(
            Utc::now(),
            &asked("POST", Some(&create), &[]),
            201,
            Some("http://h/fhir/Patient/p2/_history/1"),
        );
        assert_eq!((r.action.as_str(), r.subtype.as_str()), ("C", "create"));
        assert_eq!(r.entity_type.as_deref(), Some("Patient"));
        assert_eq!(r.patient_id.as_deref(), Some("p2"));

        let everything = Route::Everything("Patient".into(), "p3".into());
        let r = row(Utc::now(), &asked("GET", Some(&everything), &[]), 404, None);
        assert_eq!(r.subtype, "$everything");
        assert_eq!(r.patient_id.as_deref(), Some("p3"));
        assert_eq!(r.status, 404);
        let r = row(Utc::now(), &asked("GET", None, &[]), 404, None);
        assert_eq!(r.subtype, "unknown");
    }
}
