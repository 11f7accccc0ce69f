//! Maps each FHIR REST request to a service call and its result to a reply: status
//! codes, conditional headers, `Prefer`, Bundles and links, as R4's http page says.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, Method};

use crate::error::{FhirError, FhirResult};
use crate::fhir;
use crate::search::Handling;
use crate::service::{held, PatchTarget};
use crate::state::AppState;
use crate::store::StoredVersion;

use super::authorize::{self, Holder, Narrowing};
use super::negotiate;
use super::respond::{Reply, VersionRef};
use super::route::Route;

mod operations;
mod reads;
mod searches;
mod writes;

use operations::{
    export_delete, export_file, export_kick_off, export_status, metadata, smart_configuration,
    subscription_operation, turnaround, validate, ws_binding_token,
};
use reads::{history, read, vread};
use searches::{care_circle, compartment_search, everything, form_search, search, system_search};
use writes::{conditional_delete, conditional_update, create, delete, patch, transaction, update};

/// A FHIR request, parsed at the edge.
pub struct FhirRequest {
    pub method: Method,
    pub route: Route,
    pub params: Vec<(String, String)>,
    pub raw_query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub base: String,
    /// Who asks (checked at the edge).
    pub access: crate::auth::Access,
    /// How the client's context narrows the request (set by `handle`).
    pub narrowing: Narrowing,
    /// Set when the request is audited: a write stores its record itself.
    pub recording: Option<super::audited::Recording>,
}

impl FhirRequest {
    /// Whose records a write may touch: the narrowing's holder, checked by the
    /// write path.
    fn write_holder(&self) -> Holder {
        match &self.narrowing {
            Narrowing::Member { holder, .. } => holder.clone(),
            _ => Holder::Free,
        }
    }

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

pub async fn handle(state: &AppState, mut req: FhirRequest) -> FhirResult<Reply> {
    let method = if req.method == Method::HEAD {
        Method::GET
    } else {
        req.method.clone()
    };
    let route = req.route.clone();
    // A search form's parameters are the URL's and the body's.
    let mut asked = req.params.clone();
    if let Route::TypeSearch(_) = route {
        asked.extend(crate::search::parse_form(&String::from_utf8_lossy(
            &req.body,
        )));
    }
    let params_in_force = state.rules.catalog.params.current();
    authorize::check(&req.access, &method, &route, &asked, &params_in_force)?;
    let break_glass = req
        .header(header::HeaderName::from_static(super::BREAK_GLASS))
        .is_some_and(|reason| !reason.trim().is_empty());
    if break_glass && state.auditor.is_none() {
        return Err(FhirError::Forbidden(
            "break-the-glass needs the audit trail, which is off on this server".to_owned(),
        ));
    }
    req.narrowing = authorize::narrowing(
        &req.access,
        &method,
        &route,
        &asked,
        &params_in_force,
        break_glass,
    )?;
    subscriptions_held(state, &req, &route).await?;
    if let Some(reply) = audit_trail(state, &req, &method, &route, &asked).await {
        return reply;
    }
    // A read or an operation about one resource; a write's target and content
    // are held by the write path, in its transaction (`service::held`).
    let writes = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if let (
        Narrowing::Member {
            holder,
            res_type,
            id,
        },
        false,
    ) = (&req.narrowing, writes)
    {
        if !id.is_empty() {
            let client = state.pool.get().await?;
            held::visible(&client, &params_in_force, holder, res_type, id).await?;
        }
    }
    match (&method, &route) {
        (&Method::GET, Route::Metadata) => metadata(state, &req),
        (&Method::GET, Route::SmartConfiguration) => smart_configuration(state),
        (&Method::POST, Route::System) => transaction(state, &req).await,
        (&Method::GET, Route::System) => system_search(state, &req).await,
        (&Method::GET, Route::Type(t)) => {
            search(state, &req, t, req.criteria(), crate::service::Scope::Type).await
        }
        (&Method::POST, Route::TypeSearch(t)) => form_search(state, &req, t).await,
        (&Method::GET, Route::Compartment(compartment, id, t)) => {
            compartment_search(state, &req, compartment, id, t).await
        }
        (&Method::GET, Route::Everything(t, id)) => everything(state, &req, t, id).await,
        (&Method::GET, Route::CareCircle(id)) => care_circle(state, &req, id).await,
        (&Method::GET, Route::Turnaround) => turnaround(state, &req).await,
        (&Method::POST, Route::Type(t)) => create(state, &req, t).await,
        (&Method::PUT, Route::Type(t)) => conditional_update(state, &req, t).await,
        (&Method::DELETE, Route::Type(t)) => conditional_delete(state, &req, t).await,
        (&Method::PUT, Route::Instance(t, id)) => update(state, &req, t, id).await,
        (&Method::DELETE, Route::Instance(t, id)) => delete(state, &req, t, id).await,
        (&Method::PATCH, Route::Instance(t, id)) => {
            patch(state, &req, t, PatchTarget::Id(id.clone())).await
        }
        (&Method::PATCH, Route::Type(t)) => {
            patch(state, &req, t, PatchTarget::Criteria(req.criteria())).await
        }
        (&Method::GET, Route::Instance(t, id)) => read(state, &req, t, id).await,
        (&Method::GET, Route::Version(t, id, vid)) => vread(state, &req, t, id, vid).await,
        (&Method::GET, Route::SystemHistory) => history(state, &req, None, None).await,
        (&Method::GET, Route::TypeHistory(t)) => history(state, &req, Some(t), None).await,
        (&Method::GET, Route::InstanceHistory(t, id)) => {
            history(state, &req, Some(t), Some(id)).await
        }
        (&Method::POST, Route::Validate(t, id)) => {
            validate(&req, t, id.as_deref(), &state.rules.profiles)
        }
        (&Method::GET, Route::Export(t, id)) => export_kick_off(state, &req, t, id).await,
        (&Method::GET, Route::ExportStatus(job)) => export_status(state, &req, job).await,
        (&Method::DELETE, Route::ExportStatus(job)) => export_delete(state, &req, job).await,
        (&Method::GET, Route::ExportFile(job, n)) => export_file(state, &req, job, n).await,
        (&Method::GET | &Method::POST, Route::SubscriptionOperation(Some(id), op))
            if op == "$get-ws-binding-token" =>
        {
            ws_binding_token(state, &req, id).await
        }
        (&Method::GET, Route::SubscriptionOperation(id, op)) => {
            subscription_operation(state, &req, id.as_deref(), op).await
        }
        (m, route) => Err(not_allowed(m, route)),
    }
}

/// The audit trail, read as AuditEvents (`None`: not about it). Append-only
/// through the API; read by clients not held to a record or a circle.
async fn audit_trail(
    state: &AppState,
    req: &FhirRequest,
    method: &Method,
    route: &Route,
    asked: &[(String, String)],
) -> Option<FhirResult<Reply>> {
    let about = match route {
        Route::Type(t)
        | Route::TypeSearch(t)
        | Route::Instance(t, _)
        | Route::Version(t, ..)
        | Route::InstanceHistory(t, _)
        | Route::TypeHistory(t) => t == "AuditEvent",
        _ => false,
    };
    if !about {
        return None;
    }
    let reply = async {
        if req.narrowing != Narrowing::None {
            return Err(FhirError::Forbidden(
                "the audit trail is read by system/ clients".to_owned(),
            ));
        }
        let body = match (method, route) {
            (&Method::GET, Route::Type(_)) | (&Method::POST, Route::TypeSearch(_)) => {
                crate::audit::search(&state.pool, &req.base, asked).await?
            }
            (&Method::GET, Route::Instance(_, id)) => crate::audit::read(&state.pool, id).await?,
            _ => {
                return Err(FhirError::MethodNotAllowed(
                    "the audit trail is written by the server alone and never changed: it is read and searched".to_owned(),
                ))
            }
        };
        Ok(Reply::new(
            axum::http::StatusCode::OK,
            Some(body.to_string()),
        ))
    };
    Some(reply.await)
}

/// A client that does not see every Subscription (`auth::sees_every_subscription`)
/// reads, changes and asks about only those it wrote: another's is 404, as if it
/// did not exist; its searches find its own (the search handler's `Scope::Owned`).
/// Histories of Subscriptions and the operations on several are not narrowed to
/// its own yet: 403.
async fn subscriptions_held(state: &AppState, req: &FhirRequest, route: &Route) -> FhirResult<()> {
    let id = match route {
        Route::Instance(t, id) | Route::InstanceHistory(t, id) | Route::Version(t, id, _)
            if t == "Subscription" =>
        {
            Some(id)
        }
        Route::SubscriptionOperation(Some(id), _) => Some(id),
        Route::Type(t) | Route::TypeSearch(t) | Route::TypeHistory(t) if t == "Subscription" => {
            None
        }
        Route::SubscriptionOperation(None, _) => None,
        _ => return Ok(()),
    };
    if crate::auth::sees_every_subscription(&req.access) {
        return Ok(());
    }
    let Some(id) = id else {
        return match route {
            // A create, or a search of its own (`Scope::Owned`).
            Route::Type(_) | Route::TypeSearch(_) => Ok(()),
            _ => Err(FhirError::Forbidden(
                "the history of Subscriptions, and operations on several, are not available yet to a client that sees only its own: read and search yours".to_owned(),
            )),
        };
    };
    let owner = crate::store::subscriptions::owner_of(&state.pool.get().await?, id).await?;
    match owner {
        // Not filed: absent (the handler says so), or created by this PUT.
        None => Ok(()),
        Some(owner) if crate::auth::owns(&req.access, owner.as_ref()) => Ok(()),
        Some(_) => Err(FhirError::NotFound(format!(
            "Subscription/{id} is not known"
        ))),
    }
}

fn version_ref(v: &StoredVersion) -> VersionRef<'_> {
    VersionRef {
        res_type: &v.res_type,
        res_id: &v.res_id,
        version_id: v.version_id,
        last_updated: v.last_updated,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_queries() {
        assert_eq!(fhir::parse_version_etag("W/\"3\""), Some(3));
        assert_eq!(fhir::parse_version_etag("\"12\""), Some(12));
        assert_eq!(fhir::parse_version_etag("abc"), None);
        let q = crate::search::parse_form("identifier=urn%3Aoid%3A1.2%7Cabc&name=a+b&flag");
        assert_eq!(q[0], ("identifier".into(), "urn:oid:1.2|abc".into()));
        assert_eq!(q[1].1, "a b");
        assert_eq!(q[2], ("flag".into(), String::new()));
    }
}
