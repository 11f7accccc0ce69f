//! Searches: type, system, compartment and form searches, `$everything`, and
//! the searchset Bundle with its links.

use axum::http::StatusCode;

use crate::error::{FhirError, FhirResult};
use crate::fhir;
use crate::http::respond::Reply;
use crate::search;
use crate::service::{self, Scope};
use crate::state::AppState;

use super::FhirRequest;
use crate::http::authorize::Narrowing;

/// `GET [base]?_type=…`: one search over several types.
pub(super) async fn system_search(state: &AppState, req: &FhirRequest) -> FhirResult<Reply> {
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
    search(state, req, &first, criteria, Scope::System(types)).await
}

/// `POST [type]/_search`: the form's parameters with the URL's.
pub(super) async fn form_search(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
) -> FhirResult<Reply> {
    let mut params = req.criteria();
    params.extend(search::parse_form(&String::from_utf8_lossy(&req.body)));
    search(state, req, res_type, params, Scope::Type).await
}

/// `GET [compartment]/[id]/[type]`.
pub(super) async fn compartment_search(
    state: &AppState,
    req: &FhirRequest,
    compartment: &str,
    id: &str,
    res_type: &str,
) -> FhirResult<Reply> {
    if !search::compartment::is_supported(compartment) {
        return Err(FhirError::NotFound(format!(
            "the {compartment} compartment is not supported (Patient is)"
        )));
    }
    let scope = Scope::Compartment(compartment, id);
    search(state, req, res_type, req.criteria(), scope).await
}

/// `[type]/[id]/$everything`.
pub(super) async fn everything(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
    id: &str,
) -> FhirResult<Reply> {
    let params = req.criteria();
    let params_in_force = state.rules.catalog.params.current();
    let mut page =
        service::everything(&state.pool, &params_in_force, res_type, id, &params).await?;
    // Held to records, the client gets the record's own resources and what is
    // nobody's record (practitioners, organisations …), not another patient's
    // resources the record refers to (a Group's members, a linked Patient).
    if let Narrowing::Member { .. } = req.narrowing {
        page.included
            .retain(|v| !crate::search::compartment::in_patient_compartment(&v.res_type));
    }
    searchset_reply(
        req,
        &format!("/{res_type}/{id}/$everything"),
        &params,
        &page,
    )
}

/// `Patient/[id]/$care-circle`.
pub(super) async fn care_circle(
    state: &AppState,
    req: &FhirRequest,
    id: &str,
) -> FhirResult<Reply> {
    let params_in_force = state.rules.catalog.params.current();
    let page = service::care_circle(&state.pool, &params_in_force, id).await?;
    searchset_reply(req, &format!("/Patient/{id}/$care-circle"), &[], &page)
}

/// The types of a system search: `_type`, or every type.
pub(super) fn system_search_types(params: &[(String, String)]) -> FhirResult<Vec<String>> {
    let listed = search::listed_types(params);
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

pub(super) async fn search(
    state: &AppState,
    req: &FhirRequest,
    res_type: &str,
    params: Vec<(String, String)>,
    scope: Scope<'_>,
) -> FhirResult<Reply> {
    let path = match &scope {
        Scope::Compartment(c, id) => format!("/{c}/{id}/{res_type}"),
        Scope::Type | Scope::Owned(_) => format!("/{res_type}"),
        Scope::System(_) => String::new(),
    };
    // A client that sees only the Subscriptions it wrote searches those.
    let scope = match scope {
        Scope::Type
            if res_type == "Subscription" && !crate::auth::sees_every_subscription(&req.access) =>
        {
            Scope::Owned(crate::auth::owner_key(&req.access).unwrap_or_default())
        }
        scope => scope,
    };
    // Narrowed to what the client may see: the path stays the one asked, the
    // query gains the scope's restriction.
    let mut params = params;
    let params_in_force = state.rules.catalog.params.current();
    if let Narrowing::Search { query, .. } = &req.narrowing {
        // A restriction the server cannot apply whole would widen the scope.
        if !query.is_empty() {
            crate::search::parse(&params_in_force, res_type, query, crate::search::Handling::Strict).map_err(
                |e| {
                    FhirError::Forbidden(format!(
                        "the token's scope restricts {res_type} to a search this server cannot apply: {e}"
                    ))
                },
            )?;
        }
        params.extend(query.iter().cloned());
    }
    // A compartment search of a record seen (`Member`) is held too: its chains and
    // `_has` reach other records.
    let reach = match &req.narrowing {
        Narrowing::Search { holder, .. } | Narrowing::Member { holder, .. } => holder.reach(),
        Narrowing::None => None,
    };
    let client = state.pool.get().await?;
    let mut page = service::search(
        &client,
        &params_in_force,
        res_type,
        &params,
        req.handling(),
        scope,
        reach,
    )
    .await?;
    // A search narrowed, or a compartment search of a record seen: what its
    // includes bring is held the same way.
    if let Narrowing::Search { holder, .. } | Narrowing::Member { holder, .. } = &req.narrowing {
        service::held::seen_only(&client, &params_in_force, holder, &mut page.included).await?;
    }
    searchset_reply(req, &path, &params, &page)
}

/// A page of results as a searchset Bundle, with its self and next links.
pub(super) fn searchset_reply(
    req: &FhirRequest,
    path: &str,
    params: &[(String, String)],
    page: &service::SearchPage,
) -> FhirResult<Reply> {
    let body = service::searchset(&req.base, path, params, page)?;
    Ok(Reply::new(StatusCode::OK, Some(body)))
}
