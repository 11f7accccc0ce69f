//! Operations: the CapabilityStatement, bulk `$export` and the subscription
//! operations.

use axum::http::{header, HeaderName, StatusCode};

use crate::error::{operation_outcome, FhirError, FhirResult, Issue};
use crate::http::respond::Reply;
use crate::service::{self, capability};
use crate::state::AppState;

use super::{FhirRequest, Holder, Narrowing};

/// `GET [base]/metadata`.
pub(super) fn metadata(state: &AppState, req: &FhirRequest) -> FhirResult<Reply> {
    let cs = capability::capability_statement(
        &state.rules.catalog,
        &req.base,
        env!("CARGO_PKG_VERSION"),
        &state.settings.started,
        state.guard.smart(),
    );
    Ok(Reply::new(StatusCode::OK, Some(cs.to_string())))
}

/// `GET [base]/.well-known/smart-configuration`: 404 when the server takes no
/// tokens (there is nothing to configure).
pub(super) fn smart_configuration(state: &AppState) -> FhirResult<Reply> {
    let smart = state.guard.smart().ok_or_else(|| {
        FhirError::NotFound(
            "this server is not configured for SMART on FHIR (PASSERELLE_AUTH)".into(),
        )
    })?;
    Ok(Reply::raw(
        StatusCode::OK,
        "application/json",
        capability::smart_configuration(smart).to_string(),
    ))
}

/// `$export-status`: 202 with `X-Progress` while running, then the manifest.
/// A job's status, files and cancellation are for the client that kicked it off
/// (any client when tokens are not required): another's is 404.
async fn export_owned(state: &AppState, req: &FhirRequest, job: &str) -> FhirResult<()> {
    let owner = crate::store::export::owner_of(&state.pool.get().await?, job).await?;
    let mine = match (&req.access, &owner) {
        (_, None) => false,
        (crate::auth::Access::Open, Some(_)) => true,
        (access, Some(owner)) => crate::auth::owns(access, owner.as_ref()),
    };
    match mine {
        true => Ok(()),
        false => Err(FhirError::NotFound(format!("no export job '{job}'"))),
    }
}

pub(super) async fn export_status(
    state: &AppState,
    req: &FhirRequest,
    job: &str,
) -> FhirResult<Reply> {
    export_owned(state, req, job).await?;
    let tokens = state.guard.smart().is_some();
    match service::export::status(&state.pool, &req.base, job, tokens).await? {
        service::export::Status::InProgress(progress) => Ok(Reply::new(StatusCode::ACCEPTED, None)
            .header(HeaderName::from_static("x-progress"), &progress)
            .header(header::RETRY_AFTER, "1")),
        service::export::Status::Completed(manifest) => Ok(Reply::raw(
            StatusCode::OK,
            "application/json",
            manifest.to_string(),
        )),
        service::export::Status::Failed(reason) => Ok(Reply::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(operation_outcome("error", &[Issue::new("exception", reason)]).to_string()),
        )),
    }
}

/// `DELETE` of an export's status URL: the job cancelled, its files removed.
pub(super) async fn export_delete(
    state: &AppState,
    req: &FhirRequest,
    job: &str,
) -> FhirResult<Reply> {
    export_owned(state, req, job).await?;
    service::export::delete(&state.pool, job).await?;
    Ok(Reply::new(StatusCode::ACCEPTED, None))
}

/// One NDJSON file of an export.
pub(super) async fn export_file(
    state: &AppState,
    req: &FhirRequest,
    job: &str,
    n: &str,
) -> FhirResult<Reply> {
    export_owned(state, req, job).await?;
    let ndjson = service::export::file(&state.pool, job, n).await?;
    Ok(Reply::raw(
        StatusCode::OK,
        "application/fhir+ndjson",
        ndjson,
    ))
}

/// `Subscription/[id]/$get-ws-binding-token`.
pub(super) async fn ws_binding_token(
    state: &AppState,
    req: &FhirRequest,
    id: &str,
) -> FhirResult<Reply> {
    let body = service::subscriptions::ws_binding_token(&state.pool, &req.base, id).await?;
    Ok(Reply::new(StatusCode::OK, Some(body.to_string())))
}

/// `$status` (of one subscription, or of those listed by `id`), `$events` and
/// `$deliveries`.
pub(super) async fn subscription_operation(
    state: &AppState,
    req: &FhirRequest,
    id: Option<&str>,
    op: &str,
) -> FhirResult<Reply> {
    let (pool, params) = (&state.pool, req.criteria());
    let body = match (id, op) {
        (Some(id), "$status") => {
            service::subscriptions::status(pool, &req.base, &[id.to_owned()]).await?
        }
        (None, _) => {
            let ids: Vec<String> = params
                .iter()
                .filter(|(k, _)| k == "id")
                .flat_map(|(_, v)| v.split(',').map(str::to_owned))
                .collect();
            service::subscriptions::status(pool, &req.base, &ids).await?
        }
        (Some(id), "$events") => {
            service::subscriptions::events(pool, &req.base, id, &params).await?
        }
        (Some(id), _) => service::subscriptions::deliveries(pool, id, &params).await?,
    };
    Ok(Reply::new(StatusCode::OK, Some(body.to_string())))
}

/// `ServiceRequest/$turnaround`: a Parameters with the performer's figures.
pub(super) async fn turnaround(state: &AppState, req: &FhirRequest) -> FhirResult<Reply> {
    let params_in_force = state.rules.catalog.params.current();
    let body = service::turnaround(&state.pool, &params_in_force, &req.criteria()).await?;
    Ok(Reply::new(StatusCode::OK, Some(body.to_string())))
}

/// `$export` kick-off: 202 and the status URL in `Content-Location`.
pub(super) async fn export_kick_off(
    state: &AppState,
    req: &FhirRequest,
    res_type: &Option<String>,
    group: &Option<String>,
) -> FhirResult<Reply> {
    if !req.prefer_directives().any(|d| d == "respond-async") {
        return Err(FhirError::bad_request(
            "$export runs asynchronously: send 'Prefer: respond-async'",
        ));
    }
    let level = match (res_type.as_deref(), group) {
        (Some("Group"), Some(id)) => service::export::Level::Group(id.clone()),
        (Some(_), _) => service::export::Level::Patient,
        (None, _) => service::export::Level::System,
    };
    let kick = service::export::kick_off(level, &req.criteria())?;
    let path = match (res_type, group) {
        (Some(t), Some(id)) => format!("/{t}/{id}/$export"),
        (Some(t), None) => format!("/{t}/$export"),
        _ => "/$export".to_owned(),
    };
    let request = match &req.raw_query {
        Some(q) => format!("{}{path}?{q}", req.base),
        None => format!("{}{path}", req.base),
    };
    let patients = match &req.narrowing {
        Narrowing::Search { holder, .. } => Some(match holder {
            Holder::Patient(patient) => vec![patient.clone()],
            Holder::Circle(members) => {
                crate::store::circle_patients(&state.pool.get().await?, members).await?
            }
            Holder::Free => return Err(FhirError::Internal("a free holder narrowed".into())),
        }),
        _ => None,
    };
    let requester = service::export::Requester {
        owner: req.access.owner(),
        patients,
    };
    let job = service::export::start(&state.pool, kick, &request, requester).await?;
    Ok(Reply::new(StatusCode::ACCEPTED, None).header(
        header::CONTENT_LOCATION,
        &format!("{}/$export-status/{job}", req.base),
    ))
}

/// `$validate`: the resource in the body (or a `Parameters` with `resource` and
/// `profile`), checked as a write would be: 200 and an OperationOutcome.
pub(super) fn validate(
    req: &FhirRequest,
    res_type: &str,
    id: Option<&str>,
    profiles: &crate::profile::ProfileRules,
) -> FhirResult<Reply> {
    let param = |name: &str| {
        req.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mode = param("mode");
    // A delete's validation may come without a body.
    let format = if mode == Some("delete") && req.body.is_empty() {
        crate::fhir::Format::Json
    } else {
        super::negotiate::request_format(req.header(header::CONTENT_TYPE), &req.body)?
    };
    let verdict = crate::profile::verdict::validate(
        &crate::profile::verdict::Asked {
            body: &req.body,
            format,
            res_type: Some(res_type),
            profile: param("profile"),
            id,
            mode,
        },
        profiles,
    )?;
    Ok(Reply::new(
        StatusCode::OK,
        Some(verdict.outcome().to_string()),
    ))
}
