//! The edge of authorisation: each request's bearer token verified (401 when it
//! is missing or does not verify), and what its route asks for held against the
//! token's scopes (403). Transaction and batch entries are held entry by entry
//! by the Bundle processing; a `patient/` context narrows searches and reads to
//! the patient's compartment in the handlers.

use std::sync::Arc;

use axum::http::{header, HeaderMap, Method};

use crate::auth::scopes::Interaction;
use crate::auth::{Access, Guard, Principal, EVERY_TYPE};
use crate::error::{Challenge, FhirError, FhirResult};
use crate::search::params::ParamTable;

use super::route::Route;

/// The client of a request: `Open` when authentication is off.
pub async fn authenticate(guard: &Guard, headers: &HeaderMap) -> FhirResult<Access> {
    let Guard::Smart(verifier) = guard else {
        return Ok(Access::Open);
    };
    let unauthorized = |message: String, challenge| FhirError::Unauthorized { message, challenge };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "this server needs a bearer token (Authorization: Bearer …) from its authorisation server".to_owned(),
            Challenge::Missing,
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            unauthorized(
                "the Authorization header is not 'Bearer <token>'".to_owned(),
                Challenge::Invalid,
            )
        })?;
    match verifier.verify(token).await {
        Ok(claims) => Ok(Access::Token(Arc::new(Principal::from_claims(claims)))),
        Err(e) => {
            let challenge = match e.is_server_side() {
                true => Challenge::Unavailable,
                false => Challenge::Invalid,
            };
            Err(unauthorized(e.to_string(), challenge))
        }
    }
}

/// Whether a route is served without a token: what a client reads to learn how
/// to get one.
pub fn is_public(route: &Route) -> bool {
    matches!(route, Route::Metadata | Route::SmartConfiguration)
}

/// What a request asks to do, as (type, interaction) pairs: each must be allowed.
/// Transaction and batch Bundles ask nothing here (their entries are held one by
/// one). Pure.
pub fn needs(
    method: &Method,
    route: &Route,
    params: &[(String, String)],
    table: &ParamTable,
) -> Vec<(String, Interaction)> {
    use Interaction::*;
    let on = |t: &str, i: Interaction| (t.to_owned(), i);
    let searched = |t: &str| {
        let mut needs = vec![on(t, Search)];
        needs.extend(crate::auth::search_reaches(t, params, table));
        needs
    };
    let get = *method == Method::GET || *method == Method::HEAD;
    match route {
        Route::Metadata | Route::SmartConfiguration | Route::System if !get => Vec::new(),
        Route::Metadata | Route::SmartConfiguration => Vec::new(),
        Route::System => {
            let types: Vec<String> = params
                .iter()
                .filter(|(k, _)| k == "_type")
                .flat_map(|(_, v)| v.split(','))
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect();
            match types.is_empty() {
                true => vec![on(EVERY_TYPE, Search)],
                false => types.iter().flat_map(|t| searched(t)).collect(),
            }
        }
        Route::Type(t) if get => searched(t),
        Route::TypeSearch(t) => searched(t),
        Route::Type(t) => match method.as_str() {
            "POST" => vec![on(t, Create)],
            "PUT" | "PATCH" => vec![on(t, Update), on(t, Search)],
            _ => vec![on(t, Delete), on(t, Search)],
        },
        Route::Instance(t, _) => match method.as_str() {
            "GET" | "HEAD" => vec![on(t, Read)],
            "DELETE" => vec![on(t, Delete)],
            _ => vec![on(t, Update)],
        },
        Route::Version(t, ..) | Route::InstanceHistory(t, _) => vec![on(t, Read)],
        Route::TypeHistory(t) => vec![on(t, Search)],
        Route::SystemHistory => vec![on(EVERY_TYPE, Search)],
        Route::Compartment(c, _, t) => {
            let mut needs = vec![on(c, Read)];
            needs.extend(searched(t));
            needs
        }
        // Everything about the resource: every type.
        Route::Everything(t, _) => vec![on(t, Read), on(EVERY_TYPE, Search)],
        Route::CareCircle(_) => vec![
            on("Patient", Read),
            on("CareTeam", Search),
            on("Practitioner", Read),
            on("PractitionerRole", Read),
            on("Organization", Read),
            on("Endpoint", Read),
        ],
        Route::Turnaround => vec![on("ServiceRequest", Search), on("Task", Search)],
        Route::Export(..) | Route::ExportStatus(_) | Route::ExportFile(..) => {
            vec![on(EVERY_TYPE, Read), on(EVERY_TYPE, Search)]
        }
        Route::SubscriptionOperation(..) => vec![on("Subscription", Read)],
    }
}

/// Holds the request's needs against the client's scopes: the first that is
/// not allowed refuses the request (403).
pub fn check(
    access: &Access,
    method: &Method,
    route: &Route,
    params: &[(String, String)],
    table: &ParamTable,
) -> FhirResult<()> {
    if let Access::Open = access {
        return Ok(());
    }
    for (res_type, interaction) in needs(method, route, params, table) {
        // A restricted scope serves the search it restricts (the handler adds
        // its query); anything else needs a scope without restriction.
        let restricted_search = interaction == Interaction::Search
            && matches!(route, Route::Type(t) | Route::TypeSearch(t) if *t == res_type)
            && matches!(
                access.decide(&res_type, interaction),
                crate::auth::scopes::Decision::Restricted(_)
            );
        if !restricted_search {
            access.require(&res_type, interaction)?;
        }
    }
    Ok(())
}

/// How the client's context narrows a request its scopes allow.
#[derive(Debug, PartialEq, Eq)]
pub enum Narrowing {
    /// Served as asked.
    None,
    /// A search of a type narrowed to the patient's compartment (`patient/`
    /// scopes) and to the query of a restricted scope (`?category=…`).
    Search {
        compartment: Option<String>,
        query: Vec<(String, String)>,
    },
    /// A read of a resource of the patient's record: served only if it is in the
    /// patient's compartment (404 otherwise, as if it did not exist).
    Member { patient: String },
}

/// How a `patient/` context, or a scope restricted to a query, narrows what the
/// request asks for; 403 for what cannot be narrowed yet (writes, histories
/// across resources, exports, Bundles and includes of the patient's record
/// under a `patient/` context), 404 for another patient's compartment. Pure.
pub fn narrowing(
    access: &Access,
    method: &Method,
    route: &Route,
    params: &[(String, String)],
    table: &ParamTable,
) -> FhirResult<Narrowing> {
    use crate::auth::scopes::{Context, Decision};
    use crate::search::compartment::in_patient_compartment;
    let Access::Token(principal) = access else {
        return Ok(Narrowing::None);
    };
    let patient = principal.patient.clone().unwrap_or_default();
    // Served in the patient's context, for a type of the patient's record.
    let narrowed = |t: &str, i: Interaction| {
        in_patient_compartment(t)
            && match access.decide(t, i) {
                Decision::Allowed(context) => context == Context::Patient,
                Decision::Restricted(list) => list.iter().any(|(c, _)| *c == Context::Patient),
                Decision::Denied => false,
            }
    };
    let not_yet = |what: &str| {
        FhirError::Forbidden(format!(
            "{what} is not available to a token of patient/ scopes yet: search and read the patient's record"
        ))
    };
    let elsewhere = || FhirError::NotFound("not found in the patient's record".to_owned());
    let search = matches!(route, Route::TypeSearch(_))
        || (matches!(route, Route::Type(_)) && (*method == Method::GET || *method == Method::HEAD));
    match route {
        Route::Type(t) | Route::TypeSearch(t) if search => {
            for (reached, interaction) in crate::auth::search_reaches(t, params, table) {
                if narrowed(&reached, interaction) {
                    return Err(not_yet("reaching the patient's record through _include, _revinclude, chains or _has"));
                }
            }
            let query = match access.decide(t, Interaction::Search) {
                Decision::Restricted(list) if list.len() > 1 => {
                    return Err(FhirError::Forbidden(format!(
                        "several restricted scopes allow searching {t}: search with one of their queries at a time is not supported yet"
                    )))
                }
                Decision::Restricted(list) => list[0].1.to_vec(),
                _ => Vec::new(),
            };
            let compartment = narrowed(t, Interaction::Search).then_some(patient);
            match (compartment.is_none(), query.is_empty()) {
                (true, true) => Ok(Narrowing::None),
                _ => Ok(Narrowing::Search { compartment, query }),
            }
        }
        Route::Instance(t, _) | Route::Version(t, ..) | Route::InstanceHistory(t, _)
            if *method == Method::GET || *method == Method::HEAD =>
        {
            Ok(match narrowed(t, Interaction::Read) {
                true => Narrowing::Member { patient },
                false => Narrowing::None,
            })
        }
        Route::Compartment(c, id, t)
            if narrowed(c, Interaction::Read) || narrowed(t, Interaction::Search) =>
        {
            match *id == patient {
                true => Ok(Narrowing::None),
                false => Err(elsewhere()),
            }
        }
        Route::Everything(t, id) if narrowed(t, Interaction::Read) => {
            match (t.as_str(), *id == patient) {
                ("Patient", true) => Ok(Narrowing::None),
                ("Patient", false) => Err(elsewhere()),
                _ => Ok(Narrowing::Member { patient }),
            }
        }
        Route::CareCircle(id) if narrowed("Patient", Interaction::Read) => match *id == patient {
            true => Ok(Narrowing::None),
            false => Err(elsewhere()),
        },
        _ => {
            let touches = needs(method, route, params, table).iter().any(|(t, i)| {
                narrowed(t, *i)
                    || (t == EVERY_TYPE
                        && matches!(access.decide(t, *i), Decision::Allowed(Context::Patient)))
            });
            match touches {
                true => Err(not_yet(route.template())),
                false => Ok(Narrowing::None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> &'static ParamTable {
        crate::search::params::test_table()
    }

    fn needs_of(method: Method, path: &str, query: &str) -> Vec<(String, char)> {
        let route = super::super::route::parse(path).expect("route");
        let params = crate::search::parse_form(query);
        needs(&method, &route, &params, table())
            .into_iter()
            .map(|(t, i)| (t, i.letter()))
            .collect()
    }

    fn pairs(list: &[(&str, char)]) -> Vec<(String, char)> {
        list.iter().map(|(t, c)| ((*t).to_owned(), *c)).collect()
    }

    #[test]
    fn each_route_asks_for_its_interactions() {
        assert_eq!(
            needs_of(Method::GET, "Encounter/e1", ""),
            pairs(&[("Encounter", 'r')])
        );
        assert_eq!(
            needs_of(Method::PUT, "Encounter/e1", ""),
            pairs(&[("Encounter", 'u')])
        );
        assert_eq!(
            needs_of(Method::PATCH, "Encounter/e1", ""),
            pairs(&[("Encounter", 'u')])
        );
        assert_eq!(
            needs_of(Method::DELETE, "Encounter/e1", ""),
            pairs(&[("Encounter", 'd')])
        );
        assert_eq!(
            needs_of(Method::POST, "Encounter", ""),
            pairs(&[("Encounter", 'c')])
        );
        assert_eq!(
            needs_of(Method::PUT, "Encounter", "identifier=x"),
            pairs(&[("Encounter", 'u'), ("Encounter", 's')])
        );
        assert_eq!(needs_of(Method::GET, "_history", ""), pairs(&[("*", 's')]));
        assert_eq!(
            needs_of(Method::GET, "", "_type=Patient,Encounter"),
            pairs(&[("Patient", 's'), ("Encounter", 's')])
        );
        assert_eq!(
            needs_of(Method::GET, "Patient/p/Encounter", ""),
            pairs(&[("Patient", 'r'), ("Encounter", 's')])
        );
        assert!(needs_of(Method::POST, "", "").is_empty());
        assert!(needs_of(Method::GET, "metadata", "").is_empty());
        assert!(needs_of(Method::GET, ".well-known/smart-configuration", "").is_empty());
        assert!(is_public(&Route::Metadata) && !is_public(&Route::System));
    }

    #[test]
    fn a_search_asks_for_what_it_reaches() {
        assert_eq!(
            needs_of(
                Method::GET,
                "Encounter",
                "_include=Encounter:subject:Patient&_revinclude=Task:focus"
            ),
            pairs(&[("Encounter", 's'), ("Patient", 'r'), ("Task", 'r')])
        );
        let include = needs_of(Method::GET, "Encounter", "_include=Encounter:participant");
        assert!(
            include.contains(&("Practitioner".to_owned(), 'r')),
            "{include:?}"
        );
        assert_eq!(
            needs_of(Method::GET, "Patient", "_has:Group:member:_id=g"),
            pairs(&[("Patient", 's'), ("Group", 's')])
        );
        assert_eq!(
            needs_of(Method::GET, "Encounter", "subject:Patient.name=Dupont"),
            pairs(&[("Encounter", 's'), ("Patient", 's')])
        );
        let chained = needs_of(Method::GET, "Encounter", "service-provider.name=CH");
        assert_eq!(chained, pairs(&[("Encounter", 's'), ("Organization", 's')]));
    }
}
