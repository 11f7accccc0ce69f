//! Maps each FHIR REST request to a service call and its result to a reply: status
//! codes, conditional headers, `Prefer`, Bundles and links, as R4's http page says.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderName, Method, StatusCode};
use serde_json::json;

use super::negotiate;
use super::respond::{Reply, VersionRef};
use super::route::Route;
use crate::error::{operation_outcome, FhirError, FhirResult, Issue};
use crate::fhir::render::with_raw_member;
use crate::fhir::{self, datetime, subset};
use crate::search::{self, Handling};
use crate::service::{self, capability, PatchTarget, Scope, WriteRequest, Written};
use crate::state::AppState;
use crate::store::{Method as StoreMethod, StoredVersion};

/// A FHIR request, parsed at the edge.
pub struct FhirRequest {
    pub method: Method,
    pub route: Route,
    pub params: Vec<(String, String)>,
    pub raw_query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub base: String,
}

impl FhirRequest {
    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The directives of the `Prefer` headers, trimmed.
    fn prefer_directives(&self) -> impl Iterator<Item = &str> {
        self.headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split([',', ';']))
            .map(str::trim)
    }

    /// `Prefer` directives with a value (`return=…`, `handling=…`).
    fn prefer(&self, key: &str) -> Option<String> {
        self.prefer_directives().find_map(|d| {
            let (k, v) = d.trim().split_once('=')?;
            (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().trim_matches('"').to_owned())
        })
    }

    fn handling(&self) -> Handling {
        match self.prefer("handling").as_deref() {
            Some("strict") => Handling::Strict,
            _ => Handling::Lenient,
        }
    }

    /// The version a client names in `If-Match` (`W/"3"` or `"3"`).
    fn if_match(&self) -> FhirResult<Option<i64>> {
        self.header(header::IF_MATCH)
            .map(|value| {
                fhir::parse_version_etag(value).ok_or_else(|| {
                    FhirError::bad_request(format!(
                        "If-Match '{value}' is not a version ETag like W/\"1\""
                    ))
                })
            })
            .transpose()
    }

    /// The resource in the body, in the format its `Content-Type` names.
    fn resource(&self) -> FhirResult<serde_json::Value> {
        let format = negotiate::request_format(self.header(header::CONTENT_TYPE), &self.body)?;
        fhir::parse_resource(&self.body, format)
    }

    /// The query parameters that are search criteria (not result-shaping ones).
    fn criteria(&self) -> Vec<(String, String)> {
        self.params
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
            .cloned()
            .collect()
    }
}

fn not_allowed(method: &Method, route: &Route) -> FhirError {
    FhirError::MethodNotAllowed(format!("{method} is not supported on {}", route.template()))
}

pub async fn handle(state: &AppState, req: FhirRequest) -> FhirResult<Reply> {
    let pool = &state.pool;
    let method = if req.method == Method::HEAD {
        Method::GET
    } else {
        req.method.clone()
    };
    match (&method, &req.route) {
        (&Method::GET, Route::Metadata) => {
            let cs = capability::capability_statement(
                &state.rules.catalog,
                &req.base,
                env!("CARGO_PKG_VERSION"),
                &state.settings.started,
            );
            Ok(Reply::new(StatusCode::OK, Some(cs.to_string())))
        }
        (&Method::GET, Route::Type(t)) => search(state, &req, t, req.criteria(), Scope::Type).await,
        (&Method::POST, Route::System) => {
            let answering = service::bundle::Answering {
                base: &req.base,
                handling: req.handling(),
                representation: req.prefer("return").as_deref() == Some("representation"),
            };
            // JSON is read one entry at a time; XML goes through the typed model whole.
            let response =
                match negotiate::request_format(req.header(header::CONTENT_TYPE), &req.body)? {
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
        (&Method::GET, Route::System) => {
            let types = system_search_types(&req.params)?;
            let criteria: Vec<(String, String)> = req
                .criteria()
                .into_iter()
                .filter(|(k, _)| k != "_type")
                .collect();
            let first = types
                .first()
                .cloned()
                .ok_or_else(|| FhirError::bad_request("_type names no resource type"))?;
            search(state, &req, &first, criteria, Scope::System(types)).await
        }
        (&Method::POST, Route::TypeSearch(t)) => {
            let mut params = req.criteria();
            params.extend(search::parse_form(&String::from_utf8_lossy(&req.body)));
            search(state, &req, t, params, Scope::Type).await
        }
        (&Method::GET, Route::Compartment(compartment, id, t)) => {
            if !search::compartment::is_supported(compartment) {
                return Err(FhirError::NotFound(format!(
                    "the {compartment} compartment is not supported (Patient is)"
                )));
            }
            search(
                state,
                &req,
                t,
                req.criteria(),
                Scope::Compartment(compartment, id),
            )
            .await
        }
        (&Method::POST, Route::Type(t)) => {
            let resource = req.resource()?;
            let if_none_exist = req
                .header(HeaderName::from_static("if-none-exist"))
                .map(search::parse_criteria);
            let written = written_of(
                service::write(
                    pool,
                    &state.rules,
                    WriteRequest::Create {
                        res_type: t.clone(),
                        resource,
                        if_none_exist,
                        id: None,
                    },
                )
                .await?,
            )?;
            written_reply(&req, &written, true)
        }
        (&Method::PUT, Route::Type(t)) => {
            let resource = req.resource()?;
            let request = WriteRequest::ConditionalUpdate {
                res_type: t.clone(),
                criteria: req.criteria(),
                resource,
                if_match: req.if_match()?,
            };
            let written = written_of(service::write(pool, &state.rules, request).await?)?;
            written_reply(&req, &written, true)
        }
        (&Method::DELETE, Route::Type(t)) => {
            let request = WriteRequest::ConditionalDelete {
                res_type: t.clone(),
                criteria: req.criteria(),
            };
            match service::write(pool, &state.rules, request).await? {
                Some(written) => written_reply(&req, &written, false),
                None => Ok(Reply::new(StatusCode::NO_CONTENT, None)),
            }
        }
        (&Method::GET, Route::Instance(t, id)) => {
            let version = service::read(&pool.get().await?, t, id).await?;
            read_reply(&req, &version)
        }
        (&Method::PUT, Route::Instance(t, id)) => {
            let resource = req.resource()?;
            let request = WriteRequest::Update {
                res_type: t.clone(),
                res_id: id.clone(),
                resource,
                if_match: req.if_match()?,
            };
            let written = written_of(service::write(pool, &state.rules, request).await?)?;
            written_reply(&req, &written, true)
        }
        (&Method::DELETE, Route::Instance(t, id)) => {
            let request = WriteRequest::Delete {
                res_type: t.clone(),
                res_id: id.clone(),
                if_match: req.if_match()?,
            };
            let written = written_of(service::write(pool, &state.rules, request).await?)?;
            written_reply(&req, &written, false)
        }
        (&Method::PATCH, Route::Instance(t, id)) => {
            patch(state, &req, t, PatchTarget::Id(id.clone())).await
        }
        (&Method::PATCH, Route::Type(t)) => {
            patch(state, &req, t, PatchTarget::Criteria(req.criteria())).await
        }
        (&Method::GET, Route::Export(t, id)) => export_kick_off(state, &req, t, id).await,
        (&Method::GET, Route::ExportStatus(job)) => {
            match service::export::status(pool, &req.base, job).await? {
                service::export::Status::InProgress(progress) => {
                    Ok(Reply::new(StatusCode::ACCEPTED, None)
                        .header(HeaderName::from_static("x-progress"), &progress)
                        .header(header::RETRY_AFTER, "1"))
                }
                service::export::Status::Completed(manifest) => Ok(Reply::raw(
                    StatusCode::OK,
                    "application/json",
                    manifest.to_string(),
                )),
                service::export::Status::Failed(reason) => Ok(Reply::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Some(
                        operation_outcome("error", &[Issue::new("exception", reason)]).to_string(),
                    ),
                )),
            }
        }
        (&Method::DELETE, Route::ExportStatus(job)) => {
            service::export::delete(pool, job).await?;
            Ok(Reply::new(StatusCode::ACCEPTED, None))
        }
        (&Method::GET, Route::ExportFile(job, n)) => {
            let ndjson = service::export::file(pool, job, n).await?;
            Ok(Reply::raw(
                StatusCode::OK,
                "application/fhir+ndjson",
                ndjson,
            ))
        }
        (&Method::GET, Route::Everything(t, id)) => {
            let params = req.criteria();
            let params_in_force = state.rules.catalog.params.current();
            let page = service::everything(pool, &params_in_force, t, id, &params).await?;
            searchset_reply(&req, &format!("/{t}/{id}/$everything"), &params, &page)
        }
        (&Method::GET | &Method::POST, Route::SubscriptionOperation(Some(id), op))
            if op == "$get-ws-binding-token" =>
        {
            let body = service::subscriptions::ws_binding_token(pool, &req.base, id).await?;
            Ok(Reply::new(StatusCode::OK, Some(body.to_string())))
        }
        (&Method::GET, Route::SubscriptionOperation(id, op)) => {
            let params = req.criteria();
            let body = match (id, op.as_str()) {
                (Some(id), "$status") => {
                    service::subscriptions::status(pool, &req.base, std::slice::from_ref(id))
                        .await?
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
        (&Method::GET, Route::Version(t, id, vid)) => {
            let version = service::vread(&pool.get().await?, t, id, vid).await?;
            read_reply(&req, &version)
        }
        (&Method::GET, Route::SystemHistory) => history(state, &req, None, None).await,
        (&Method::GET, Route::TypeHistory(t)) => history(state, &req, Some(t), None).await,
        (&Method::GET, Route::InstanceHistory(t, id)) => {
            history(state, &req, Some(t), Some(id)).await
        }
        (m, route) => Err(not_allowed(m, route)),
    }
}

/// `$export` kick-off: 202 and the status URL in `Content-Location`.
async fn export_kick_off(
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
    let job = service::export::start(&state.pool, kick, &request).await?;
    Ok(Reply::new(StatusCode::ACCEPTED, None).header(
        header::CONTENT_LOCATION,
        &format!("{}/$export-status/{job}", req.base),
    ))
}

/// `PATCH` with a JSON Patch document (`application/json-patch+json`).
async fn patch(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
    target: PatchTarget,
) -> FhirResult<Reply> {
    let content_type = req.header(header::CONTENT_TYPE).unwrap_or_default();
    // JSON Patch, or FHIRPath Patch: a Parameters resource in JSON or XML.
    let document = if content_type.starts_with("application/json-patch+json") {
        serde_json::from_slice(&req.body).map_err(|e| {
            FhirError::bad_request(format!("the JSON Patch document is not JSON: {e}"))
        })?
    } else {
        let parameters = req.resource()?;
        if !fhir::fhirpath_patch::is_fhirpath_patch(&parameters) {
            return Err(FhirError::bad_request(
                "PATCH takes a JSON Patch document (application/json-patch+json) or a FHIRPath Patch Parameters",
            ));
        }
        parameters
    };
    let request = WriteRequest::Patch {
        res_type: res_type.to_owned(),
        target,
        document,
        if_match: req.if_match()?,
    };
    let written = written_of(service::write(&state.pool, &state.rules, request).await?)?;
    written_reply(req, &written, true)
}

/// The result of a write that always yields one (all but conditional delete).
fn written_of(written: Option<Written>) -> FhirResult<Written> {
    written.ok_or_else(|| FhirError::Internal("a write returned nothing".to_owned()))
}

fn version_ref(v: &StoredVersion) -> VersionRef<'_> {
    VersionRef {
        res_type: &v.res_type,
        res_id: &v.res_id,
        version_id: v.version_id,
        last_updated: v.last_updated,
    }
}

/// The types of a system search: `_type`, or every type.
fn system_search_types(params: &[(String, String)]) -> FhirResult<Vec<String>> {
    let listed: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "_type")
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(unknown) = listed
        .iter()
        .find(|t| !fhir::definitions::R4.is_resource_type(t))
    {
        return Err(FhirError::bad_request(format!(
            "_type: '{unknown}' is not a resource type"
        )));
    }
    if listed.is_empty() {
        return Ok(fhir::definitions::R4
            .resource_types()
            .into_iter()
            .map(str::to_owned)
            .collect());
    }
    Ok(listed)
}

/// A read or vread, honouring `If-None-Match` and `If-Modified-Since` (304).
fn read_reply(req: &FhirRequest, v: &StoredVersion) -> FhirResult<Reply> {
    let not_modified = fhir::not_modified(
        req.header(header::IF_NONE_MATCH),
        req.header(header::IF_MODIFIED_SINCE)
            .and_then(datetime::parse_http_date),
        v.version_id,
        v.last_updated,
    );
    let status = if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    };
    let body = match (not_modified, &v.json, subset::from_params(&req.params)?) {
        (true, _, _) | (_, None, _) => None,
        (false, Some(json), Some(subset)) => Some(subset::apply(json, &subset)?),
        (false, Some(json), None) => Some(json.clone()),
    };
    Ok(Reply::new(status, body).versioned(&req.base, &version_ref(v)))
}

/// The reply to a write, shaped by `Prefer: return=`.
fn written_reply(req: &FhirRequest, w: &Written, has_body: bool) -> FhirResult<Reply> {
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

fn self_url(req: &FhirRequest, path: &str) -> String {
    match &req.raw_query {
        Some(q) if !q.is_empty() => format!("{}{path}?{q}", req.base),
        _ => format!("{}{path}", req.base),
    }
}

fn route_path(route: &Route) -> String {
    match route {
        Route::SystemHistory => "/_history".to_owned(),
        Route::TypeHistory(t) => format!("/{t}/_history"),
        Route::InstanceHistory(t, id) => format!("/{t}/{id}/_history"),
        Route::Type(t) | Route::TypeSearch(t) => format!("/{t}"),
        _ => String::new(),
    }
}

async fn history(
    state: &AppState,
    req: &FhirRequest,
    res_type: Option<&str>,
    res_id: Option<&str>,
) -> FhirResult<Reply> {
    let page = service::history(&state.pool, res_type, res_id, &req.params).await?;
    let path = route_path(&req.route);
    let mut links = vec![("self", self_url(req, &path))];
    if let Some(cursor) = &page.next {
        let keep: Vec<(String, String)> = req
            .params
            .iter()
            .filter(|(k, _)| k != "_page")
            .cloned()
            .collect();
        links.push((
            "next",
            search::page_url(&req.base, &path, &keep, &[("_page", cursor.clone())]),
        ));
    }
    let entries: Vec<String> = page
        .versions
        .iter()
        .map(|v| history_entry(&req.base, v))
        .collect();
    Ok(Reply::new(
        StatusCode::OK,
        Some(crate::fhir::render::bundle(
            "history", None, &links, &entries,
        )),
    ))
}

fn history_entry(base: &str, v: &StoredVersion) -> String {
    let (request_url, status) = match v.method {
        StoreMethod::Post => (v.res_type.clone(), "201 Created"),
        StoreMethod::Put | StoreMethod::Patch => (format!("{}/{}", v.res_type, v.res_id), "200 OK"),
        StoreMethod::Delete => (format!("{}/{}", v.res_type, v.res_id), "204 No Content"),
    };
    let entry = json!({
        "fullUrl": format!("{base}/{}/{}", v.res_type, v.res_id),
        "request": {"method": v.method.as_str(), "url": request_url},
        "response": {
            "status": status,
            "etag": format!("W/\"{}\"", v.version_id),
            "lastModified": datetime::format_instant(v.last_updated),
        },
    })
    .to_string();
    match &v.json {
        Some(resource) => with_raw_member(&entry, "resource", resource),
        None => entry,
    }
}

async fn search(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
    params: Vec<(String, String)>,
    scope: Scope<'_>,
) -> FhirResult<Reply> {
    let path = match &scope {
        Scope::Compartment(c, id) => format!("/{c}/{id}/{res_type}"),
        Scope::Type => format!("/{res_type}"),
        Scope::System(_) => String::new(),
    };
    let params_in_force = state.rules.catalog.params.current();
    let client = state.pool.get().await?;
    let page = service::search(
        &client,
        &params_in_force,
        res_type,
        &params,
        req.handling(),
        scope,
    )
    .await?;
    searchset_reply(req, &path, &params, &page)
}

/// A page of results as a searchset Bundle, with its self and next links.
fn searchset_reply(
    req: &FhirRequest,
    path: &str,
    params: &[(String, String)],
    page: &service::SearchPage,
) -> FhirResult<Reply> {
    let body = service::searchset(&req.base, path, params, page)?;
    Ok(Reply::new(StatusCode::OK, Some(body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_queries() {
        assert_eq!(fhir::parse_version_etag("W/\"3\""), Some(3));
        assert_eq!(fhir::parse_version_etag("\"12\""), Some(12));
        assert_eq!(fhir::parse_version_etag("abc"), None);
        let q = search::parse_form("identifier=urn%3Aoid%3A1.2%7Cabc&name=a+b&flag");
        assert_eq!(q[0], ("identifier".into(), "urn:oid:1.2|abc".into()));
        assert_eq!(q[1].1, "a b");
        assert_eq!(q[2], ("flag".into(), String::new()));
    }
}
