//! The HTTP layer: the router, the request span, body limits and content
//! negotiation at the edge. Everything below it is transport-independent.

mod audited;
mod authorize;
pub mod cors;
pub mod forwarded;
mod handlers;
mod negotiate;
mod respond;
mod route;
mod websocket;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use tracing::Instrument;

use crate::error::FhirError;
use crate::state::AppState;
use crate::store;
use handlers::FhirRequest;
use respond::Rendering;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/fhir/$websocket", get(websocket::upgrade))
        .route("/fhir", any(fhir))
        .route("/fhir/", any(fhir))
        .route("/fhir/{*rest}", any(fhir))
        .layer(middleware::from_fn_with_state(state.clone(), cors::cors))
        .with_state(state)
        .layer(middleware::from_fn(trace_request))
}

async fn ready(State(state): State<AppState>) -> Response {
    if store::is_ready(&state.pool).await {
        (StatusCode::OK, "ready").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "database not reachable or not migrated",
        )
            .into_response()
    }
}

/// The metrics in the Prometheus text format, with the pool and the database's
/// backlog as they are now (the database asked for at most a second).
async fn metrics(State(state): State<AppState>) -> Response {
    let status = state.pool.status();
    let pool = crate::metrics::PoolState {
        in_use: (status.size - status.available) as i64,
        idle: status.available as i64,
        waiting: status.waiting as i64,
        reads_by_id: state.reads.sent(),
    };
    let asked = async {
        let client = state.pool.get().await?;
        store::ops::backlog(&client).await
    };
    let backlog = match tokio::time::timeout(METRICS_DATABASE_WAIT, asked).await {
        Ok(Ok(backlog)) => Some(backlog),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "metrics: the database could not be asked");
            None
        }
        Err(_) => None,
    };
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render(pool, backlog.as_ref()),
    )
        .into_response()
}

/// The longest a scrape waits for the database's figures.
const METRICS_DATABASE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// One span per request with method, route template, status and latency; the
/// database work of the request nests under it.
async fn trace_request(req: Request, next: Next) -> Response {
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        route = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(
        &span,
        req.headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    let started = Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    let latency = started.elapsed().as_secs_f64() * 1000.0;
    span.record("status", response.status().as_u16());
    span.record("latency_ms", latency);
    span.in_scope(|| tracing::debug!("done"));
    response
}

/// The public base URL of the FHIR endpoint for this request: the configured
/// one, or what the client used (through a trusted proxy, what it says).
fn base_url(state: &AppState, parts: &axum::http::request::Parts) -> String {
    if let Some(base) = &state.settings.base_url {
        return base.trim_end_matches('/').to_owned();
    }
    let peer = parts
        .extensions
        .get::<crate::state::Peer>()
        .map(|p| p.0.ip());
    forwarded::public_base(&parts.headers, peer, &state.settings.trusted_proxies)
}

/// The header a practitioner sends, with her reason, to see a record outside her
/// care circles (break-the-glass): always audited.
pub const BREAK_GLASS: &str = "x-break-glass";

/// What answering a request learnt of it, for its audit record.
#[derive(Default)]
struct Seen {
    route: Option<route::Route>,
    params: Vec<(String, String)>,
    access: Option<crate::auth::Access>,
}

/// A FHIR request answered (and audited), counted in the metrics by interaction
/// and status.
async fn fhir(State(state): State<AppState>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let mut seen = Seen::default();
    let response = match state.auditor.clone() {
        Some(auditor) => answer_audited(&state, &auditor, req, &mut seen).await,
        None => answer(&state, req, &mut seen).await,
    };
    let (_, interaction) = audited::action(method.as_str(), seen.route.as_ref());
    state
        .metrics
        .request(&interaction, response.status().as_u16(), started.elapsed());
    response
}

/// A FHIR request answered, and recorded in the audit trail before the answer
/// leaves (but what a client reads to learn how to get a token).
async fn answer_audited(
    state: &AppState,
    auditor: &crate::audit::Auditor,
    mut req: Request,
    seen: &mut Seen,
) -> Response {
    let recorded = chrono::Utc::now();
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let source = req
        .extensions()
        .get::<crate::state::Peer>()
        .map(|p| p.0.ip().to_string());
    let break_glass = req
        .headers()
        .get(BREAK_GLASS)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let stored = Arc::new(AtomicBool::new(false));
    req.extensions_mut().insert(audited::Recording {
        recorded,
        path: path.clone(),
        source: source.clone(),
        break_glass: break_glass.clone(),
        stored: stored.clone(),
    });
    let response = answer(state, req, seen).await;
    // A write stored its record with its change.
    if stored.load(Ordering::Acquire) || seen.route.as_ref().is_some_and(authorize::is_public) {
        return response;
    }
    let location = response
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok());
    let asked = audited::Asked {
        method: &method,
        path: &path,
        query: query.as_deref(),
        route: seen.route.as_ref(),
        params: &seen.params,
        access: seen.access.as_ref(),
        source,
        break_glass,
    };
    let row = audited::row(recorded, &asked, response.status().as_u16(), location);
    let changed = response.status().is_success()
        && matches!(method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
        && !matches!(seen.route, Some(route::Route::TypeSearch(_)));
    match auditor.record(row).await {
        true => response,
        // A server failure showed nothing: its own reason is the better answer.
        false if response.status().is_server_error() => response,
        // Not answered as a success without its record; but a change already
        // committed is said to be, lest a client send a create again.
        false if changed => respond::error_response(
            &FhirError::Transient(
                "the change was saved, but its access could not be recorded in the audit trail: read it before sending it again".into(),
            ),
            Rendering::default(),
        ),
        false => respond::error_response(
            &FhirError::Unavailable("the access could not be recorded in the audit trail".into()),
            Rendering::default(),
        ),
    }
}

async fn answer(state: &AppState, req: Request, seen: &mut Seen) -> Response {
    let (mut parts, body) = req.into_parts();
    let raw_query = parts.uri.query().map(str::to_owned);
    let params = crate::search::parse_form(raw_query.as_deref().unwrap_or(""));
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let mut rendering = Rendering {
        pretty: param("_pretty") == Some("true"),
        ..Rendering::default()
    };
    let path = parts.uri.path();
    let below_base = path.strip_prefix("/fhir").unwrap_or(path);
    let route = route::parse(below_base);
    // Export manifests and files are JSON and NDJSON whatever a client accepts.
    let raw = matches!(
        route,
        Ok(route::Route::ExportStatus(_) | route::Route::ExportFile(..))
    );
    match negotiate::response_format(param("_format"), accept) {
        Ok(negotiated) => rendering.negotiated = negotiated,
        Err(_) if raw => {}
        Err(err) => return respond::error_response(&err, rendering),
    }
    let route = match route {
        Ok(route) => route,
        Err(err) => return respond::error_response(&err, rendering),
    };
    seen.route = Some(route.clone());
    seen.params = params.clone();
    tracing::Span::current().record("route", route.template());
    // Who asks, before anything of the body is read.
    let access = match authorize::is_public(&route) {
        true => crate::auth::Access::Open,
        false => match authorize::authenticate(&state.guard, &parts.headers).await {
            Ok(access) => access,
            Err(err) => return respond::error_response(&err, rendering),
        },
    };
    seen.access = Some(access.clone());
    let mut memory = match reserve_body_memory(state, &parts.headers).await {
        Ok(memory) => memory,
        Err(err) => return respond::error_response(&err, rendering),
    };
    let body = match read_body(body, &parts.headers, state, &mut memory).await {
        Ok(body) => body,
        Err(err) => return respond::error_response(&err, rendering),
    };
    if let Err(err) = check_nesting(&parts.headers, &body) {
        return respond::error_response(&err, rendering);
    }
    let base = base_url(state, &parts);
    let request = FhirRequest {
        method: parts.method,
        base,
        route,
        params,
        raw_query,
        headers: parts.headers,
        body,
        access,
        narrowing: authorize::Narrowing::None,
        recording: parts.extensions.remove::<audited::Recording>(),
    };
    // The database work is cancelled if the client goes away before the answer;
    // the connections that carried a large body are closed after it.
    let pool = state.pool.clone();
    let large = memory.is_large();
    let handled = crate::store::pool::track(pool, handlers::handle(state, request), large).await;
    let response = match handled {
        Ok(reply) => respond::render(reply, rendering),
        Err(err) => respond::error_response(&err, rendering),
    };
    drop(memory);
    response
}

/// Largest `_search` form body (100 parameters of 1,000 values fit many times).
const MAX_FORM_BYTES: usize = 1 << 20;

/// Bodies from this size on draw on the state's budget of large bodies in flight.
const LARGE_BODY: usize = 64 * 1024;

/// What a request's body holds, from before it is read until its answer is
/// rendered, of the budget of large bodies in flight: its size as declared, or,
/// for a body that comes in chunks, what has arrived (grown by doubling as it
/// does). A burst of large requests waits rather than multiplying the server's
/// memory; small bodies take nothing. A body over the limit is refused at once
/// (413), and one that cannot get its share within the body read timeout is
/// answered 503.
struct BodyMemory {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Bytes the permit covers.
    covered: usize,
}

impl BodyMemory {
    fn is_large(&self) -> bool {
        self.permit.is_some()
    }

    /// Covers `size` bytes (at least), if large, waiting until `deadline` at
    /// most. More is taken at once when free; otherwise what is held is given
    /// back and the whole share waited for, so that bodies growing side by side
    /// never hold parts each other waits for.
    async fn cover(
        &mut self,
        state: &AppState,
        size: usize,
        deadline: tokio::time::Instant,
    ) -> Result<(), FhirError> {
        if size < LARGE_BODY || size <= self.covered {
            return Ok(());
        }
        let kib = |bytes: usize| u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        let budget = &state.body_budget;
        let more = kib(size).saturating_sub(kib(self.covered));
        match (
            self.permit.as_mut(),
            budget.clone().try_acquire_many_owned(more),
        ) {
            (Some(held), Ok(permit)) => held.merge(permit),
            (None, Ok(permit)) => self.permit = Some(permit),
            (_, Err(_)) => {
                self.permit = None;
                let whole = budget.clone().acquire_many_owned(kib(size));
                let Ok(Ok(permit)) = tokio::time::timeout_at(deadline, whole).await else {
                    return Err(FhirError::Busy(
                        "the server is busy with other large requests; retry later".to_owned(),
                    ));
                };
                self.permit = Some(permit);
            }
        }
        self.covered = size;
        Ok(())
    }
}

/// The body's length as its `Content-Length` declares it (none: chunks).
fn declared_length(headers: &axum::http::HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// The body's share of the budget before it is read: its declared size (the
/// budget is never below the body limit: the permits always exist).
async fn reserve_body_memory(
    state: &AppState,
    headers: &axum::http::HeaderMap,
) -> Result<BodyMemory, FhirError> {
    let limit = state.settings.max_body_bytes;
    let declared = declared_length(headers);
    let mut memory = BodyMemory {
        permit: None,
        covered: 0,
    };
    let deadline = tokio::time::Instant::now() + state.settings.body_read_timeout;
    match declared {
        Some(n) if n > limit => return Err(FhirError::PayloadTooLarge(limit)),
        Some(n) => memory.cover(state, n, deadline).await?,
        // Chunks: covered as they arrive (`read_body`).
        None => {}
    }
    Ok(memory)
}

/// Refuses a JSON or XML body nested too deeply for the recursive parsers below,
/// whatever the route does with it; the format is read as the body will be (JSON
/// Patch is JSON; a body whose Content-Type is neither is left to its route).
fn check_nesting(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<(), FhirError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let json_patch = content_type.is_some_and(|c| c.to_ascii_lowercase().contains("json-patch"));
    let format = match json_patch {
        true => Ok(crate::fhir::Format::Json),
        false => negotiate::request_format(content_type, body),
    };
    match format {
        Ok(crate::fhir::Format::Xml) => crate::fhir::nesting::check_xml(body),
        Ok(crate::fhir::Format::Json) => crate::fhir::nesting::check_json(body),
        Err(_) => Ok(()),
    }
}

/// Reads the whole body, its memory covered as it arrives: more than the limit
/// is refused with 413, a body that does not arrive in time with 408.
async fn read_body(
    body: Body,
    headers: &axum::http::HeaderMap,
    state: &AppState,
    memory: &mut BodyMemory,
) -> Result<axum::body::Bytes, FhirError> {
    use http_body_util::BodyExt;
    let settings = &state.settings;
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| {
            c.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    // A search form holds parameters, not resources: it has a bound of its own.
    let limit = match is_form {
        true => settings.max_body_bytes.min(MAX_FORM_BYTES),
        false => settings.max_body_bytes,
    };
    let declared = declared_length(headers);
    if declared.is_some_and(|n| n > limit) {
        return Err(FhirError::PayloadTooLarge(limit));
    }
    let timeout = settings.body_read_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let late = || {
        FhirError::RequestTimeout(format!(
            "the request body did not arrive within {} s",
            timeout.as_secs_f64()
        ))
    };
    let mut body = body;
    let mut read = axum::body::Bytes::new();
    let mut buffer: Option<Vec<u8>> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(late()),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(FhirError::bad_request(format!(
                    "could not read the request body: {e}"
                )))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let size = buffer.as_ref().map_or(read.len(), Vec::len) + data.len();
        if size > limit {
            return Err(FhirError::PayloadTooLarge(limit));
        }
        if size > memory.covered {
            memory
                .cover(state, size.max(memory.covered * 2).min(limit), deadline)
                .await?;
        }
        // One chunk (a body with a length, most often) is kept as it came.
        match &mut buffer {
            None if read.is_empty() => read = data,
            None => {
                let mut joined = Vec::with_capacity(declared.unwrap_or(size).max(size));
                joined.extend_from_slice(&read);
                joined.extend_from_slice(&data);
                buffer = Some(joined);
            }
            Some(joined) => joined.extend_from_slice(&data),
        }
    }
    Ok(buffer.map_or(read, axum::body::Bytes::from))
}
