//! Writes: create, update, patch, delete and their conditional forms, and
//! transaction and batch Bundles; `Location`, `ETag`, `Prefer` on the answer.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::{header, HeaderName, StatusCode};

use crate::error::{operation_outcome, FhirError, FhirResult, Issue};
use crate::fhir;
use crate::http::respond::{Reply, VersionRef};
use crate::http::{audited, negotiate};
use crate::search;
use crate::service::{self, PatchTarget, WriteRequest, Written};
use crate::state::AppState;

use super::FhirRequest;

/// `POST [base]` with a transaction or batch Bundle.
pub(super) async fn transaction(state: &AppState, req: &FhirRequest) -> FhirResult<Reply> {
    // A transaction stores its record with its changes (a batch is recorded
    // once answered).
    let stored = AtomicBool::new(false);
    let record = req.recording.as_ref().map(|recording| {
        let stored = &stored;
        move || {
            stored.store(true, Ordering::Relaxed);
            audit_row(req, recording, StatusCode::OK, None)
        }
    });
    let answering = service::bundle::Answering {
        base: &req.base,
        handling: req.handling(),
        representation: req.prefer("return").as_deref() == Some("representation"),
        access: &req.access,
        record: record.as_ref().map(|r| r as &(dyn Fn() -> _ + Sync)),
    };
    let pool = &state.pool;
    // JSON is read one entry at a time; XML goes through the typed model whole.
    let response = match negotiate::request_format(req.header(header::CONTENT_TYPE), &req.body)? {
        fhir::Format::Json => {
            service::bundle::process(pool, &state.rules, &answering, &req.body).await?
        }
        fhir::Format::Xml => {
            let json = serde_json::to_vec(&req.resource()?)
                .map_err(|e| FhirError::Internal(e.to_string()))?;
            service::bundle::process(pool, &state.rules, &answering, &json).await?
        }
    };
    if let Some(recording) = req
        .recording
        .as_ref()
        .filter(|_| stored.load(Ordering::Relaxed))
    {
        recording.stored.store(true, Ordering::Release);
    }
    Ok(Reply::new(StatusCode::OK, Some(response)))
}

/// The audit record of this write request, answered with `status` (and
/// `location`), as the request's own record would say.
fn audit_row(
    req: &FhirRequest,
    recording: &audited::Recording,
    status: StatusCode,
    location: Option<&str>,
) -> crate::store::audit::AuditRow {
    let asked = audited::Asked {
        method: req.method.as_str(),
        path: &recording.path,
        query: req.raw_query.as_deref(),
        route: Some(&req.route),
        params: &req.params,
        access: Some(&req.access),
        source: recording.source.clone(),
        break_glass: recording.break_glass.clone(),
    };
    audited::row(recording.recorded, &asked, status.as_u16(), location)
}

/// The request's write, by the one write path, held to what the client reaches;
/// when audited, its record stored in the write's transaction.
async fn write(
    state: &AppState,
    req: &FhirRequest,
    request: WriteRequest,
) -> FhirResult<Option<service::Written>> {
    let holder = req.write_holder();
    let record = req.recording.as_ref().map(|recording| {
        move |written: Option<&Written>| {
            let location = written
                .filter(|w| w.json.is_some())
                .map(|w| version_ref(w).url(&req.base));
            audit_row(
                req,
                recording,
                write_status(req, written),
                location.as_deref(),
            )
        }
    });
    let recorded = record.as_ref().map(|r| r as service::WriteRecord<'_>);
    let written = service::write(
        &state.pool,
        &state.rules,
        request,
        &req.access,
        &holder,
        recorded,
    )
    .await?;
    if let Some(recording) = &req.recording {
        recording.stored.store(true, Ordering::Release);
    }
    Ok(written)
}

/// `POST [type]`, conditional with `If-None-Exist`.
pub(super) async fn create(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
) -> FhirResult<Reply> {
    let resource = req.resource()?;
    let if_none_exist = req
        .header(HeaderName::from_static("if-none-exist"))
        .map(search::parse_criteria);
    let request = WriteRequest::Create {
        res_type: res_type.to_owned(),
        resource,
        if_none_exist,
        id: None,
    };
    let written = written_of(write(state, req, request).await?)?;
    written_reply(req, &written)
}

/// `PUT [type]?criteria`.
pub(super) async fn conditional_update(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
) -> FhirResult<Reply> {
    let request = WriteRequest::ConditionalUpdate {
        res_type: res_type.to_owned(),
        criteria: req.criteria(),
        resource: req.resource()?,
        if_match: req.if_match()?,
        assigned_id: None,
    };
    let written = written_of(write(state, req, request).await?)?;
    written_reply(req, &written)
}

/// `DELETE [type]?criteria`: 204 when nothing matched.
pub(super) async fn conditional_delete(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
) -> FhirResult<Reply> {
    let request = WriteRequest::ConditionalDelete {
        res_type: res_type.to_owned(),
        criteria: req.criteria(),
    };
    match write(state, req, request).await? {
        Some(written) => written_reply(req, &written),
        None => Ok(Reply::new(StatusCode::NO_CONTENT, None)),
    }
}

/// `PUT [type]/[id]` (update, or create with the client's id).
pub(super) async fn update(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
    id: &str,
) -> FhirResult<Reply> {
    let request = WriteRequest::Update {
        res_type: res_type.to_owned(),
        res_id: id.to_owned(),
        resource: req.resource()?,
        if_match: req.if_match()?,
    };
    let written = written_of(write(state, req, request).await?)?;
    written_reply(req, &written)
}

/// `DELETE [type]/[id]`.
pub(super) async fn delete(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
    id: &str,
) -> FhirResult<Reply> {
    let request = WriteRequest::Delete {
        res_type: res_type.to_owned(),
        res_id: id.to_owned(),
        if_match: req.if_match()?,
    };
    let written = written_of(write(state, req, request).await?)?;
    written_reply(req, &written)
}

/// A PATCH's document: JSON Patch, or FHIRPath Patch (a Parameters resource in
/// JSON or XML).
pub(super) fn patch_document(req: &FhirRequest) -> FhirResult<serde_json::Value> {
    let content_type = req.header(header::CONTENT_TYPE).unwrap_or_default();
    if content_type.starts_with("application/json-patch+json") {
        return serde_json::from_slice(&req.body).map_err(|e| {
            FhirError::bad_request(format!("the JSON Patch document is not JSON: {e}"))
        });
    }
    let parameters = req.resource()?;
    if !fhir::fhirpath_patch::is_fhirpath_patch(&parameters) {
        return Err(FhirError::bad_request(
            "PATCH takes a JSON Patch document (application/json-patch+json) or a FHIRPath Patch Parameters",
        ));
    }
    Ok(parameters)
}

/// `PATCH` with a JSON Patch document (`application/json-patch+json`).
pub(super) async fn patch(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
    target: PatchTarget,
) -> FhirResult<Reply> {
    let document = patch_document(req)?;
    let request = WriteRequest::Patch {
        res_type: res_type.to_owned(),
        target,
        document,
        if_match: req.if_match()?,
    };
    let written = written_of(write(state, req, request).await?)?;
    written_reply(req, &written)
}

/// The result of a write that always yields one (all but conditional delete).
pub(super) fn written_of(written: Option<Written>) -> FhirResult<Written> {
    written.ok_or_else(|| FhirError::Internal("a write returned nothing".to_owned()))
}

/// The status of the answer to a write (`None`: a conditional delete that
/// matched nothing): 201 for a creation, 204 for a deletion without a body
/// (`Prefer: return=OperationOutcome` gives it one, and 200), else 200. Also the
/// status its audit record states, stored before the answer is shaped.
fn write_status(req: &FhirRequest, written: Option<&Written>) -> StatusCode {
    match written.map(|w| (&w.json, w.created)) {
        None => StatusCode::NO_CONTENT,
        Some((None, _)) if req.prefer("return").as_deref() == Some("OperationOutcome") => {
            StatusCode::OK
        }
        Some((None, _)) => StatusCode::NO_CONTENT,
        Some((Some(_), true)) => StatusCode::CREATED,
        Some((Some(_), false)) => StatusCode::OK,
    }
}

fn version_ref(w: &Written) -> VersionRef<'_> {
    VersionRef {
        res_type: &w.res_type,
        res_id: &w.res_id,
        version_id: w.version_id,
        last_updated: w.last_updated,
    }
}

/// The reply to a write, shaped by `Prefer: return=`.
pub(super) fn written_reply(req: &FhirRequest, w: &Written) -> FhirResult<Reply> {
    let status = write_status(req, Some(w));
    let reference = version_ref(w);
    let body = match req.prefer("return").as_deref() {
        Some("minimal") => None,
        Some("OperationOutcome") => {
            let message = match (&w.json, w.created) {
                (None, _) => format!("{}/{} deleted", w.res_type, w.res_id),
                (Some(_), true) => format!("{}/{} created", w.res_type, w.res_id),
                _ => format!("{}/{} is at version {}", w.res_type, w.res_id, w.version_id),
            };
            Some(
                operation_outcome("information", &[Issue::new("informational", message)])
                    .to_string(),
            )
        }
        _ => w.json.clone(),
    };
    if w.version_id == 0 {
        // Nothing existed to delete: no version to name.
        return Ok(Reply::new(status, body));
    }
    let mut reply = Reply::new(status, body).versioned(&req.base, &reference);
    if w.json.is_some() {
        reply = reply.header(header::LOCATION, &reference.url(&req.base));
    }
    Ok(reply)
}
