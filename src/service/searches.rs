//! Search (type, system and compartment), `$everything`, `_include` and
//! `_revinclude`, and the rendering of searchset Bundles.

use deadpool_postgres::Pool;

use crate::error::{FhirError, FhirResult};
use crate::fhir;
use crate::search::compartment::Reach;
use crate::search::params::ParamTable;
use crate::search::{self, Cursor, Handling, SearchPlan, TotalMode};
use crate::store::{self, StoredVersion};

use super::history::{count_param, since_param};

/// A page of search results.
pub struct SearchPage {
    pub plan: SearchPlan,
    pub matches: Vec<StoredVersion>,
    /// Resources added by `_include` and `_revinclude`.
    pub included: Vec<StoredVersion>,
    /// `None` with `_total=none`.
    pub total: Option<i64>,
    /// Where the next page starts, if there is one.
    pub next: Option<Cursor>,
}

/// What a search covers besides its (first) resource type.
pub enum Scope<'a> {
    /// `GET [type]?…`
    Type,
    /// `GET [compartment type]/[id]/[type]?…`
    Compartment(&'a str, &'a str),
    /// `GET [base]?_type=…`: these types (the first is `res_type`).
    System(Vec<String>),
    /// `GET Subscription?…` by a client that sees the Subscriptions it wrote
    /// only: those filed with this owner (`search::Condition::OwnedBy`).
    Owned(Vec<(String, Option<String>)>),
}

/// A page of results as a searchset Bundle (JSON text), with its self and next
/// links under `base` + `path`; `_elements`/`_summary` applied to each resource.
pub fn searchset(
    base: &str,
    path: &str,
    params: &[(String, String)],
    page: &SearchPage,
) -> FhirResult<String> {
    let subset = fhir::subset::from_params(params)?;
    let keep: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "_after" && k != "_offset")
        .cloned()
        .collect();
    let mut links = vec![("self", search::page_url(base, path, params, &[]))];
    let after = match &page.next {
        Some(Cursor::After { res_id, res_type }) => Some(format!("{res_type}/{res_id}")),
        Some(Cursor::AfterSorted {
            values,
            res_id,
            res_type,
        }) => Some(search::encode_sorted_cursor(values, res_type, res_id)),
        Some(Cursor::Offset(_) | Cursor::Start) | None => None,
    };
    if let Some(after) = after {
        links.push((
            "next",
            search::page_url(base, path, &keep, &[("_after", after)]),
        ));
    }
    // Each entry written straight into one buffer, the stored text as it is
    // (the framing's cost per entry: `cargo bench --bench passerelle -- framing`).
    let stored: usize = page
        .matches
        .iter()
        .chain(&page.included)
        .filter_map(|v| v.json.as_deref().map(str::len))
        .sum();
    let count = page.matches.len() + page.included.len();
    let mut entries = String::with_capacity(stored + count * (base.len() + 96));
    let mut push_entry = |v: &StoredVersion, mode: &str| -> FhirResult<()> {
        let Some(resource) = v.json.as_deref() else {
            return Ok(());
        };
        fhir::render::open_entry(&mut entries, base, &v.res_type, &v.res_id);
        entries.push_str(",\"resource\":");
        match &subset {
            Some(subset) => entries.push_str(&fhir::subset::apply(resource, subset)?),
            None => entries.push_str(resource),
        }
        entries.push_str(",\"search\":{\"mode\":\"");
        entries.push_str(mode);
        entries.push_str("\"}}");
        Ok(())
    };
    for v in &page.matches {
        push_entry(v, "match")?;
    }
    for v in &page.included {
        push_entry(v, "include")?;
    }
    if !page.plan.ignored.is_empty() {
        let outcome = crate::error::operation_outcome("warning", &page.plan.ignored).to_string();
        if !entries.is_empty() {
            entries.push(',');
        }
        entries.push_str("{\"resource\":");
        entries.push_str(&outcome);
        entries.push_str(",\"search\":{\"mode\":\"outcome\"}}");
    }
    Ok(fhir::render::bundle_around(
        "searchset",
        page.total,
        &links,
        &entries,
    ))
}

/// Runs a search; `reach`: the client is held to those records.
pub async fn search(
    client: &impl deadpool_postgres::GenericClient,
    params_in_force: &ParamTable,
    res_type: &str,
    params: &[(String, String)],
    handling: Handling,
    scope: Scope<'_>,
    reach: Option<Reach<'_>>,
) -> FhirResult<SearchPage> {
    let mut plan = search::parse(params_in_force, res_type, params, handling)?;
    if let Some(reach) = reach {
        search::compartment::hold(params_in_force, reach, &mut plan);
    }
    if let Scope::System(types) = &scope {
        // Every type must understand every parameter: parse for each, strictly.
        for other in types.iter().filter(|t| *t != res_type) {
            search::parse(params_in_force, other, params, Handling::Strict)?;
            plan.other_types.push(other.clone());
        }
    }
    if let Scope::Owned(owner) = &scope {
        plan.conditions
            .push(search::Condition::OwnedBy(owner.clone()));
    }
    if let Scope::Compartment(compartment_type, id) = scope {
        let membership =
            search::compartment::membership(params_in_force, compartment_type, id, res_type)
                .ok_or_else(|| {
                    FhirError::bad_request(format!(
                        "{res_type} is not in the {compartment_type} compartment"
                    ))
                })?;
        plan.conditions.push(membership);
    }
    // `_count=0` and `_summary=count` ask for the total alone.
    let mut rows = if plan.count == 0 {
        Vec::new()
    } else {
        store::search(client, &plan, plan.count + 1).await?
    };
    // One more than the page tells whether there is a next one; the page's last
    // row is where it starts (a keyset: stable while resources change).
    let next = if rows.len() > plan.count {
        rows.truncate(plan.count);
        rows.last().map(|(v, keys)| {
            if plan.sort.is_empty() {
                Cursor::After {
                    res_id: v.res_id.clone(),
                    res_type: v.res_type.clone(),
                }
            } else {
                Cursor::AfterSorted {
                    values: keys.clone(),
                    res_id: v.res_id.clone(),
                    res_type: v.res_type.clone(),
                }
            }
        })
    } else {
        None
    };
    let matches: Vec<StoredVersion> = rows.into_iter().map(|(v, _)| v).collect();
    let total = match plan.total {
        TotalMode::Accurate => Some(store::count(client, &plan).await?),
        TotalMode::WhenFree if next.is_none() && plan.cursor == Cursor::Start && plan.count > 0 => {
            Some(matches.len() as i64)
        }
        TotalMode::WhenFree | TotalMode::None => None,
    };
    let included = includes(client, &plan, &matches).await?;
    Ok(SearchPage {
        plan,
        matches,
        included,
        total,
        next,
    })
}

/// `Patient/[id]/$everything` and `Encounter/[id]/$everything`: the resource, what
/// belongs to it (the Patient compartment; for an Encounter, whatever refers to
/// it), and what those refer to, paged by (type, id). Parameters: `_since`,
/// `_type`, `_count`, and the `_after` of the next link.
pub async fn everything(
    pool: &Pool,
    params_in_force: &ParamTable,
    res_type: &str,
    res_id: &str,
    params: &[(String, String)],
) -> FhirResult<SearchPage> {
    let client = pool.get().await?;
    let root = store::read_latest(&client, res_type, res_id)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("{res_type}/{res_id} is not known")))?;
    if root.is_deleted() {
        return Err(FhirError::Gone(format!("{res_type}/{res_id} was deleted")));
    }
    let mut plan = search::parse(params_in_force, res_type, &[], Handling::Lenient)?;
    let mut query = store::EverythingQuery {
        res_type,
        res_id,
        through: (res_type == "Patient").then(search::compartment::patient_membership_params),
        types: None,
        since: None,
        after: None,
        limit: search::DEFAULT_COUNT,
    };
    for (name, value) in params {
        match name.as_str() {
            "_since" => query.since = Some(since_param(value)?),
            "_type" => query.types = Some(value.split(',').map(str::to_owned).collect()),
            "_count" => query.limit = count_param(value)?,
            "_after" => {
                let (t, id) = value.split_once('/').ok_or_else(|| {
                    FhirError::bad_request(format!("'{value}' is not a valid _after cursor"))
                })?;
                query.after = Some((t.to_owned(), id.to_owned()));
            }
            _ => {}
        }
    }
    let count = query.limit;
    query.limit += 1;
    let mut matches = store::everything(&client, &query).await?;
    let next = if matches.len() > count {
        matches.truncate(count);
        matches.last().map(|v| Cursor::After {
            res_id: v.res_id.clone(),
            res_type: v.res_type.clone(),
        })
    } else {
        None
    };
    // What the page refers to (practitioners, organisations …), once each.
    let mut types: Vec<String> = matches.iter().map(|v| v.res_type.clone()).collect();
    types.dedup();
    plan.includes = types
        .into_iter()
        .map(|source_type| search::Include {
            reverse: false,
            iterate: false,
            source_type,
            param: None,
            target_type: None,
        })
        .collect();
    plan.count = count;
    let included = includes(&client, &plan, &matches).await?;
    let total = (next.is_none() && query.after.is_none()).then_some(matches.len() as i64);
    Ok(SearchPage {
        plan,
        matches,
        included,
        total,
        next,
    })
}

/// Rounds of `:iterate` includes, after the first.
const MAX_INCLUDE_ROUNDS: usize = 4;

/// Follows `_include` and `_revinclude` from the matches (and, with `:iterate`, from
/// what they included), each resource once, at most `store::MAX_INCLUDED`.
async fn includes(
    client: &impl deadpool_postgres::GenericClient,
    plan: &SearchPlan,
    matches: &[StoredVersion],
) -> FhirResult<Vec<StoredVersion>> {
    let key = |v: &StoredVersion| (v.res_type.clone(), v.res_id.clone());
    let mut seen: std::collections::HashSet<(String, String)> = matches.iter().map(key).collect();
    let mut frontier: Vec<(String, String)> = seen.iter().cloned().collect();
    let mut included = Vec::new();
    for round in 0..=MAX_INCLUDE_ROUNDS {
        let mut found = Vec::new();
        for include in plan.includes.iter().filter(|i| round == 0 || i.iterate) {
            let mut by_type: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
            for (t, id) in &frontier {
                if include.reverse || *t == include.source_type {
                    by_type.entry(t.as_str()).or_default().push(id.clone());
                }
            }
            for (t, ids) in by_type {
                for v in store::included(client, include, t, &ids).await? {
                    if seen.insert(key(&v)) && included.len() + found.len() < store::MAX_INCLUDED {
                        found.push(v);
                    }
                }
            }
        }
        if found.is_empty() {
            break;
        }
        frontier = found.iter().map(key).collect();
        included.extend(found);
    }
    Ok(included)
}
