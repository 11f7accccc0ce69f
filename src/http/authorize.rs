//! The edge of authorisation: each request's bearer token verified (401 when it
//! is missing or does not verify), and what its route asks for held against the
//! token's scopes (403). Transaction and batch entries are held entry by entry
//! by the Bundle processing; a `patient/` context narrows searches and reads to
//! the patient's compartment in the handlers.

use std::sync::Arc;

use axum::http::{header, HeaderMap, Method};

use crate::auth::scopes::Interaction;
pub use crate::auth::Holder;
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
        Ok(claims) => Ok(Access::Token(Arc::new(Principal::from_claims(
            claims,
            verifier.settings(),
        )))),
        // The issuer's keys out of reach: the token may be fine (503, retry).
        Err(e) if e.is_server_side() => Err(FhirError::Transient(e.to_string())),
        Err(e) => Err(unauthorized(e.to_string(), Challenge::Invalid)),
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
            let types = crate::search::listed_types(params);
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
        // Checks what the client sends; reads nothing stored.
        Route::Validate(t, _) => vec![on(t, Read)],
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
    /// A search narrowed to whose records the client may see, and to the query
    /// of a restricted scope (`?category=…`).
    Search {
        holder: Holder,
        query: Vec<(String, String)>,
    },
    /// A request about one resource, served only if the client may see it (404
    /// otherwise, as if it did not exist): a read, or the resource a write
    /// replaces or an operation is about.
    Member {
        holder: Holder,
        res_type: String,
        id: String,
    },
}

fn get_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD
}

/// How the client's context narrows what the request asks for: searches run
/// within whose records it may see (and so do their chains and `_has`), a
/// request about one resource answers only if it may see it, a write holds to
/// the records it reaches (by criteria: matched among them). Pure.
pub fn narrowing(
    access: &Access,
    method: &Method,
    route: &Route,
    params: &[(String, String)],
    table: &ParamTable,
    break_glass: bool,
) -> FhirResult<Narrowing> {
    use crate::auth::scopes::Decision;
    use Interaction::*;
    if let Access::Open = access {
        return Ok(Narrowing::None);
    }
    // Break-the-glass opens one record at a time: a request about one resource or
    // one patient, never a search, a history across resources or the audit trail.
    let holder = |t: &str, i: Interaction| crate::auth::holder(access, t, i, false);
    let glass = |t: &str, i: Interaction| {
        crate::auth::holder(access, t, i, break_glass && t != "AuditEvent")
    };
    if let Route::Type(t) | Route::Instance(t, _) = route {
        crate::auth::may_change(access, method.as_str(), t)?;
    }
    let not_yet = |what: &str| {
        FhirError::Forbidden(format!(
            "{what} is not available yet to a token held to a patient's record or a care circle"
        ))
    };
    let member = |holder: Holder, res_type: &str, id: &str| match holder {
        Holder::Free => Narrowing::None,
        holder => Narrowing::Member {
            holder,
            res_type: res_type.to_owned(),
            id: id.to_owned(),
        },
    };
    let get = get_method(method);
    let search = matches!(route, Route::TypeSearch(_)) || (matches!(route, Route::Type(_)) && get);
    match route {
        Route::Type(t) | Route::TypeSearch(t) if search => {
            // What `_include` and `_revinclude` bring is filtered to what the
            // client sees, and what chains and `_has` search through is held to
            // it (`search::compartment::hold_reached`).
            let mut reaches_records = false;
            for (reached, interaction) in crate::auth::search_reaches(t, params, table) {
                reaches_records |= holder(&reached, interaction)? != Holder::Free;
            }
            let query = match access.decide(t, Search) {
                Decision::Restricted(list) if list.len() > 1 => {
                    return Err(FhirError::Forbidden(format!(
                        "several restricted scopes allow searching {t}: searching with several restrictions is not supported yet"
                    )))
                }
                Decision::Restricted(list) => list[0].1.to_vec(),
                _ => Vec::new(),
            };
            let holder = match holder(t, Search)? {
                // A directory search reaching records: held for what it reaches.
                Holder::Free if reaches_records => holder("Patient", Read)?,
                held => held,
            };
            match (&holder, query.is_empty()) {
                (Holder::Free, true) => Ok(Narrowing::None),
                _ => Ok(Narrowing::Search { holder, query }),
            }
        }
        Route::Instance(t, id) | Route::Version(t, id, _) | Route::InstanceHistory(t, id)
            if get =>
        {
            Ok(member(glass(t, Read)?, t, id))
        }
        // A write replaces a resource the client must see; what it writes is
        // held by the write path (`service::held`).
        Route::Instance(t, id) => {
            let interaction = if *method == Method::DELETE {
                Delete
            } else {
                Update
            };
            Ok(member(glass(t, interaction)?, t, id))
        }
        Route::Type(t) if *method == Method::POST => Ok(member(glass(t, Create)?, t, "")),
        // A write by criteria matches among the records the client sees (the
        // glass opens a record named, not a search).
        Route::Type(t) => {
            let interaction = if *method == Method::DELETE {
                Delete
            } else {
                Update
            };
            Ok(member(holder(t, interaction)?, t, ""))
        }
        // The patient's record, or a stay's: the patient, or the stay, must be seen.
        // What includes bring is filtered by the handler, what chains and `_has`
        // search through held by the search, as for any search.
        Route::Compartment(c, id, _) => Ok(member(glass(c, Read)?, c, id)),
        Route::Everything(c, id) => Ok(member(glass(c, Read)?, c, id)),
        // Histories across resources: each page kept to what the client sees.
        Route::SystemHistory | Route::TypeHistory(_) => {
            let t = match route {
                Route::TypeHistory(t) => t.as_str(),
                _ => EVERY_TYPE,
            };
            match holder(t, Search)? {
                Holder::Free => Ok(Narrowing::None),
                _ if matches!(access.decide(t, Search), Decision::Restricted(_)) => Err(not_yet(
                    "the history of resources a scope restricts to a search",
                )),
                holder => Ok(Narrowing::Search {
                    holder,
                    query: Vec::new(),
                }),
            }
        }
        Route::CareCircle(id) => Ok(member(glass("Patient", Read)?, "Patient", id)),
        // An export holds the records of the patients the client reaches (the
        // handler lists them); its status and files, the client's own exports.
        Route::Export(..) => match holder(EVERY_TYPE, Search)? {
            Holder::Free => Ok(Narrowing::None),
            _ if matches!(access.decide(EVERY_TYPE, Search), Decision::Restricted(_)) => {
                Err(not_yet("an export under scopes restricted to a search"))
            }
            holder => Ok(Narrowing::Search {
                holder,
                query: Vec::new(),
            }),
        },
        Route::ExportStatus(_) | Route::ExportFile(..) | Route::Validate(..) => Ok(Narrowing::None),
        _ => {
            for (t, interaction) in needs(method, route, params, table) {
                if holder(&t, interaction)? != Holder::Free {
                    return Err(not_yet(route.template()));
                }
            }
            Ok(Narrowing::None)
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

    fn token(scope: &str, fhir_user: Option<&str>, patient: Option<&str>) -> Access {
        let grants = crate::auth::scopes::parse_scopes(scope);
        Access::Token(Arc::new(Principal {
            client: None,
            subject: None,
            fhir_user: fhir_user.map(str::to_owned),
            patient: patient.map(str::to_owned),
            grants,
            organizations: None,
        }))
    }

    fn narrowed(access: &Access, method: Method, path: &str, glass: bool) -> FhirResult<Narrowing> {
        let route = super::super::route::parse(path).expect("route");
        narrowing(access, &method, &route, &[], table(), glass)
    }

    #[test]
    fn whose_records_a_client_sees() {
        let backend = token("system/*.*", None, None);
        assert_eq!(
            narrowed(&backend, Method::GET, "Encounter", false).ok(),
            Some(Narrowing::None)
        );
        let app = token("patient/*.rs", None, Some("p1"));
        assert_eq!(
            narrowed(&app, Method::GET, "Encounter", false).ok(),
            Some(Narrowing::Search {
                holder: Holder::Patient("p1".into()),
                query: vec![]
            })
        );
        assert_eq!(
            narrowed(&app, Method::GET, "Encounter/e1", false).ok(),
            Some(Narrowing::Member {
                holder: Holder::Patient("p1".into()),
                res_type: "Encounter".into(),
                id: "e1".into()
            })
        );
        // Directory data is nobody's record.
        assert_eq!(
            narrowed(&app, Method::GET, "Practitioner", false).ok(),
            Some(Narrowing::None)
        );
        // Histories across resources are kept to her record.
        for path in ["_history", "Encounter/_history"] {
            assert_eq!(
                narrowed(&app, Method::GET, path, false).ok(),
                Some(Narrowing::Search {
                    holder: Holder::Patient("p1".into()),
                    query: vec![]
                }),
                "{path}"
            );
        }
        let gp = token("user/*.cruds", Some("Practitioner/gp"), None);
        let circle = Holder::Circle(vec![("Practitioner".into(), "gp".into())]);
        assert_eq!(
            narrowed(&gp, Method::GET, "Observation", false).ok(),
            Some(Narrowing::Search {
                holder: circle.clone(),
                query: vec![]
            })
        );
        assert_eq!(
            narrowed(&gp, Method::POST, "Observation", false).ok(),
            Some(Narrowing::Member {
                holder: circle,
                res_type: "Observation".into(),
                id: String::new()
            })
        );
        // Breaking the glass lifts the circle for one record, not for a search
        // nor the audit trail, and not a patient's context.
        assert_eq!(
            narrowed(&gp, Method::GET, "Observation/o1", true).ok(),
            Some(Narrowing::None)
        );
        assert_ne!(
            narrowed(&gp, Method::GET, "Observation", true).ok(),
            Some(Narrowing::None)
        );
        assert_ne!(
            narrowed(&gp, Method::GET, "AuditEvent/1", true).ok(),
            Some(Narrowing::None)
        );
        assert_ne!(
            narrowed(&app, Method::GET, "Observation/o1", true).ok(),
            Some(Narrowing::None)
        );
        // Roles decide circles: a practitioner's token does not write them.
        let role = narrowed(&gp, Method::PUT, "PractitionerRole/r1", false);
        assert_eq!(role.expect_err("roles").status(), 403);
        // A user with no one named reaches no record; fhirUser a Patient is hers.
        let nobody = token("user/*.rs", None, None);
        assert_eq!(
            narrowed(&nobody, Method::GET, "Patient/p1", false)
                .expect_err("nobody")
                .status(),
            403
        );
        let herself = token("user/*.rs", Some("https://h/fhir/Patient/p7"), None);
        assert_eq!(
            narrowed(&herself, Method::GET, "Patient", false).ok(),
            Some(Narrowing::Search {
                holder: Holder::Patient("p7".into()),
                query: vec![]
            })
        );
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
        // Every hop, as the search runs it.
        let deep = needs_of(
            Method::GET,
            "Encounter",
            "subject:Patient._has:Observation:patient:code=x",
        );
        assert!(deep.contains(&("Observation".to_owned(), 's')), "{deep:?}");
        assert!(deep.contains(&("Patient".to_owned(), 's')), "{deep:?}");
    }
}
