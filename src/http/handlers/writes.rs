//! Writes: create, update, patch, delete and their conditional forms, and
//! transaction and batch Bundles; `Location`, `ETag`, `Prefer` on the answer.

use axum::http::{header, HeaderName, StatusCode};

use crate::error::{operation_outcome, FhirError, FhirResult, Issue};
use crate::fhir;
use crate::http::negotiate;
use crate::http::respond::{Reply, VersionRef};
use crate::search;
use crate::service::{self, PatchTarget, WriteRequest, Written};
use crate::state::AppState;

use super::FhirRequest;

/// `POST [base]` with a transaction or batch Bundle.
pub(super) async fn transaction(state: &AppState, req: &FhirRequest) -> FhirResult<Reply> {
    let answering = service::bundle::Answering {
        base: &req.base,
        handling: req.handling(),
        representation: req.prefer("return").as_deref() == Some("representation"),
        access: &req.access,
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
    Ok(Reply::new(StatusCode::OK, Some(response)))
}

/// The request's write, by the one write path, held to what the client reaches.
async fn write(
    state: &AppState,
    req: &FhirRequest,
    request: WriteRequest,
) -> FhirResult<Option<service::Written>> {
    let holder = req.write_holder();
    service::write(&state.pool, &state.rules, request, &req.access, &holder).await
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
    written_reply(req, &written, true)
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
    };
    let written = written_of(write(state, req, request).await?)?;
    written_reply(req, &written, true)
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
        Some(written) => written_reply(req, &written, false),
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
    written_reply(req, &written, true)
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
    written_reply(req, &written, false)
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
    written_reply(req, &written, true)
}

/// The result of a write that always yields one (all but conditional delete).
pub(super) fn written_of(written: Option<Written>) -> FhirResult<Written> {
    written.ok_or_else(|| FhirError::Internal("a write returned nothing".to_owned()))
}

/// The reply to a write, shaped by `Prefer: return=`.
pub(super) fn written_reply(req: &FhirRequest, w: &Written, has_body: bool) -> FhirResult<Reply> {
    let status = match (&w.json, w.created) {
        (None, _) => StatusCode::NO_CONTENT,
        (Some(_), true) => StatusCode::CREATED,
        (Some(_), false) => StatusCode::OK,
    };
    let reference = VersionRef {
        res_type: &w.res_type,
        res_id: &w.res_id,
        version_id: w.version_id,
        last_updated: w.last_updated,
    };
    let body = match req.prefer("return").as_deref() {
        Some("minimal") => None,
        Some("OperationOutcome") => {
            let message = match (status, has_body) {
                (StatusCode::NO_CONTENT, _) => format!("{}/{} deleted", w.res_type, w.res_id),
                (StatusCode::CREATED, _) => format!("{}/{} created", w.res_type, w.res_id),
                _ => format!("{}/{} is at version {}", w.res_type, w.res_id, w.version_id),
            };
            Some(
                operation_outcome("information", &[Issue::new("informational", message)])
                    .to_string(),
            )
        }
        _ => w.json.clone(),
    };
    let status = if status == StatusCode::NO_CONTENT && body.is_some() {
        StatusCode::OK
    } else {
        status
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
