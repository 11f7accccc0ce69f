//! Reads: read, vread and history, with their conditional headers.

use axum::http::{header, StatusCode};

use crate::error::{FhirError, FhirResult};

use crate::fhir::{self, datetime, subset};
use crate::http::authorize::Narrowing;
use crate::http::respond::Reply;
use crate::search;
use crate::service;
use crate::state::AppState;
use crate::store::StoredVersion;

use super::{route_path, self_url, version_ref, FhirRequest};

/// `GET [type]/[id]`.
pub(super) async fn read(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
    id: &str,
) -> FhirResult<Reply> {
    let version = service::read_joined(&state.reads, res_type, id).await?;
    read_reply(req, version)
}

/// `GET [type]/[id]/_history/[vid]`.
pub(super) async fn vread(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
    id: &str,
    vid: &str,
) -> FhirResult<Reply> {
    let client = state.pool.get().await?;
    let version = service::vread(&client, res_type, id, vid).await?;
    if let Narrowing::Member { holder, .. } = &req.narrowing {
        let params_in_force = state.rules.catalog.params.current();
        if !service::held::version_reached(&client, &params_in_force, holder, &version).await? {
            return Err(FhirError::NotFound(format!(
                "{res_type}/{id}/_history/{vid} is not known"
            )));
        }
    }
    read_reply(req, version)
}

/// A read or vread, honouring `If-None-Match` and `If-Modified-Since` (304).
pub(super) fn read_reply(req: &FhirRequest, v: StoredVersion) -> FhirResult<Reply> {
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
    let reply = Reply::new(status, None).versioned(&req.base, &version_ref(&v));
    let body = match (not_modified, v.json, subset::from_params(&req.params)?) {
        (true, _, _) | (_, None, _) => None,
        (false, Some(json), Some(subset)) => Some(subset::apply(&json, &subset)?),
        (false, Some(json), None) => Some(json),
    };
    Ok(Reply { body, ..reply })
}

pub(super) async fn history(
    state: &AppState,
    req: &FhirRequest,
    res_type: Option<&str>,
    res_id: Option<&str>,
) -> FhirResult<Reply> {
    let mut page = service::history(&state.pool, res_type, res_id, &req.params).await?;
    // Held to records: the versions of what the client sees now, and of one
    // resource those whose content is of its records; a page may come out
    // shorter than asked, its `next` link stands.
    let params_in_force = state.rules.catalog.params.current();
    match &req.narrowing {
        Narrowing::Search { holder, .. } => {
            let client = state.pool.get().await?;
            service::held::seen_only(&client, &params_in_force, holder, &mut page.versions).await?;
        }
        Narrowing::Member { holder, .. } => {
            let client = state.pool.get().await?;
            let mut kept = Vec::with_capacity(page.versions.len());
            for v in std::mem::take(&mut page.versions) {
                if service::held::version_reached(&client, &params_in_force, holder, &v).await? {
                    kept.push(v);
                }
            }
            page.versions = kept;
        }
        Narrowing::None => {}
    }
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
    Ok(Reply::new(
        StatusCode::OK,
        Some(service::history_bundle(&req.base, &links, &page.versions)),
    ))
}
