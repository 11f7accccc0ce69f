//! The FHIR interactions, independent of HTTP: each takes parsed input, runs in one
//! database transaction, and returns what happened. The HTTP layer maps requests to
//! these calls and their results to responses.

pub mod bundle;
pub mod capability;
pub mod export;
mod notify;
pub mod subscriptions;
pub mod write;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::Value;

use crate::error::{FhirError, FhirResult};
use crate::fhir::{self, datetime};
use crate::search::params::ParamTable;
use crate::search::{self, Cursor, Handling, SearchPlan, TotalMode};
use crate::store::{self, HistoryFilter, StoredVersion};
pub use notify::Fact;
pub use write::{Change, ChangeKind, Written};

/// The server's policies that every write obeys, whoever asks for it, and the
/// definitions in force that every interaction reads.
#[derive(Clone, Default)]
pub struct Rules {
    /// Which subscription endpoints may be called.
    pub endpoints: crate::subscription::EndpointPolicy,
    pub catalog: Arc<Catalog>,
}

/// The definitions in force on one server: the search parameters (replaced whole
/// when a SearchParameter changes), the subscription topics, and the
/// subscriptions compiled against both. Each server has its own.
pub struct Catalog {
    pub params: search::params::Registry,
    pub topics: Vec<crate::subscription::Topic>,
    pub compiled: crate::subscription::CompiledCache,
}

impl Catalog {
    /// The standard search parameters and the server's topics, plus `extra_topics`
    /// (a Bundle or one SubscriptionTopic, JSON) when given.
    pub fn new(extra_topics: Option<&str>) -> FhirResult<Catalog> {
        let params = search::params::Registry::default();
        let topics = crate::subscription::topic::load(&params.current(), extra_topics)?;
        Ok(Catalog {
            params,
            topics,
            compiled: Default::default(),
        })
    }
}

impl Catalog {
    /// What subscriptions are checked and compiled against, with `params` the
    /// table a caller took from [`Catalog::params`].
    pub fn definitions<'a>(
        &'a self,
        params: &'a ParamTable,
    ) -> crate::subscription::Definitions<'a> {
        crate::subscription::Definitions {
            params,
            topics: &self.topics,
        }
    }
}

impl Default for Catalog {
    fn default() -> Self {
        // The server's own topics are data of this build, checked by a unit test.
        Catalog::new(None).expect("the server's subscription topics are valid")
    }
}

/// What a conditional interaction found for its criteria.
enum Matches {
    None,
    One(String),
}

/// Runs the search of a conditional interaction inside `tx`; more than one match is
/// a 412, as the spec says. The criteria are locked for the transaction so that two
/// requests with the same criteria cannot both see "no match" and both create.
async fn conditional_match(
    tx: &deadpool_postgres::Transaction<'_>,
    params: &ParamTable,
    res_type: &str,
    criteria: &[(String, String)],
) -> FhirResult<Matches> {
    if criteria.is_empty() {
        return Err(FhirError::bad_request(
            "a conditional interaction needs search criteria",
        ));
    }
    let plan = search::parse(params, res_type, criteria, Handling::Strict)?;
    let mut key: Vec<String> = criteria.iter().map(|(k, v)| format!("{k}={v}")).collect();
    key.sort();
    store::lock_key(tx, &format!("{res_type}?{}", key.join("&"))).await?;
    let mut ids = store::matching_ids(tx, &plan, 2).await?;
    match ids.len() {
        0 => Ok(Matches::None),
        1 => Ok(Matches::One(ids.remove(0))),
        _ => Err(FhirError::PreconditionFailed(format!(
            "the criteria match more than one {res_type}"
        ))),
    }
}

fn check_type(res_type: &str, resource: &Value) -> FhirResult<()> {
    let body_type = fhir::resource_type(resource);
    if body_type != res_type {
        return Err(FhirError::bad_request(format!(
            "the body is a {body_type} but the URL is for {res_type}"
        )));
    }
    Ok(())
}

/// A write interaction, as the REST API and transaction entries ask for it.
#[derive(Debug)]
pub enum WriteRequest {
    /// `POST [type]`, with `If-None-Exist` criteria; `id` is set by a transaction
    /// that had to know it before (references to the entry's `fullUrl`).
    Create {
        res_type: String,
        resource: Value,
        if_none_exist: Option<Vec<(String, String)>>,
        id: Option<String>,
    },
    /// `PUT [type]/[id]`: update, or create with the client's id.
    Update {
        res_type: String,
        res_id: String,
        resource: Value,
        if_match: Option<i64>,
    },
    /// `PUT [type]?criteria`: update the one match, or create when none matches.
    ConditionalUpdate {
        res_type: String,
        criteria: Vec<(String, String)>,
        resource: Value,
        if_match: Option<i64>,
    },
    /// `PATCH [type]/[id]` or `PATCH [type]?criteria` with a JSON Patch document.
    Patch {
        res_type: String,
        target: PatchTarget,
        document: Value,
        if_match: Option<i64>,
    },
    /// `DELETE [type]/[id]`.
    Delete {
        res_type: String,
        res_id: String,
        if_match: Option<i64>,
    },
    /// `DELETE [type]?criteria`: deletes the one match; none is not an error.
    ConditionalDelete {
        res_type: String,
        criteria: Vec<(String, String)>,
    },
}

/// The resource a PATCH applies to.
#[derive(Debug)]
pub enum PatchTarget {
    Id(String),
    /// Conditional patch: exactly one match, else 404 or 412.
    Criteria(Vec<(String, String)>),
}

/// The resource after a JSON Patch, checked like any incoming resource.
async fn patched(
    tx: &deadpool_postgres::Transaction<'_>,
    params: &ParamTable,
    res_type: &str,
    target: PatchTarget,
    document: &Value,
) -> FhirResult<(String, Value)> {
    let res_id = match target {
        PatchTarget::Id(id) => id,
        PatchTarget::Criteria(criteria) => {
            match conditional_match(tx, params, res_type, &criteria).await? {
                Matches::One(id) => id,
                Matches::None => {
                    return Err(FhirError::NotFound(format!(
                        "no {res_type} matches the criteria"
                    )))
                }
            }
        }
    };
    // Lock first: the version patched is the version replaced.
    store::lock_all(
        tx,
        &[store::LockKey {
            res_type,
            res_id: &res_id,
            claim: false,
        }],
    )
    .await?;
    let current = store::read_latest(tx, res_type, &res_id)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("{res_type}/{res_id} is not known")))?;
    let json = current
        .json
        .ok_or_else(|| FhirError::Gone(format!("{res_type}/{res_id} was deleted")))?;
    let resource: Value =
        serde_json::from_str(&json).map_err(|e| FhirError::Internal(e.to_string()))?;
    let result = if fhir::fhirpath_patch::is_fhirpath_patch(document) {
        fhir::fhirpath_patch::apply(&resource, document)?
    } else {
        fhir::patch::apply(&resource, document)?
    };
    if fhir::resource_type(&result) != res_type
        || fhir::resource_id(&result) != Some(res_id.as_str())
    {
        return Err(FhirError::Unprocessable(vec![crate::error::Issue::new(
            "processing",
            "a patch may not change the resource's type or id",
        )]));
    }
    // The request was well formed; its result is not a valid resource: 422.
    fhir::check_resource(&result).map_err(|e| match e {
        FhirError::BadRequest(issues) => FhirError::Unprocessable(issues),
        other => other,
    })?;
    Ok((res_id, result))
}

/// Runs one write interaction in its own transaction: its conditions resolved
/// (`plan`), then the single write path, then the subscriptions' events, all before
/// the commit. `None`: a conditional delete that matched nothing.
pub async fn write(
    pool: &Pool,
    rules: &Rules,
    request: WriteRequest,
) -> FhirResult<Option<Written>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let now = store::clock(&tx).await?;
    let mut facts = Vec::new();
    let params = rules.catalog.params.current();
    let written = match plan(&tx, &params, request).await? {
        Planned::Change(change) => Some(write::apply(&tx, rules, now, change, &mut facts).await?),
        Planned::Answered(written) => written,
    };
    notify::record_events(&tx, &rules.catalog, &facts).await?;
    store::commit(tx).await?;
    if let Some(w) = &written {
        search_parameter_changed(pool, rules, w).await;
    }
    Ok(written)
}

/// What a write interaction comes to once its conditions are resolved.
pub enum Planned {
    /// A change for the write path.
    Change(Change),
    /// Nothing to write: the match of a conditional create, or `None` for a
    /// conditional delete that matched nothing.
    Answered(Option<Written>),
}

impl WriteRequest {
    /// Whether planning the write reads the database (conditional matching, the
    /// version a PATCH applies to), and so must see every earlier write.
    pub fn reads_first(&self) -> bool {
        match self {
            WriteRequest::Create { if_none_exist, .. } => if_none_exist.is_some(),
            WriteRequest::Update { .. } | WriteRequest::Delete { .. } => false,
            WriteRequest::ConditionalUpdate { .. }
            | WriteRequest::Patch { .. }
            | WriteRequest::ConditionalDelete { .. } => true,
        }
    }
}

/// The change a write interaction asks for: its checks, its conditions resolved.
pub async fn plan(
    tx: &deadpool_postgres::Transaction<'_>,
    params: &ParamTable,
    request: WriteRequest,
) -> FhirResult<Planned> {
    let change = match request {
        WriteRequest::Create {
            res_type,
            resource,
            if_none_exist,
            id,
        } => {
            check_type(&res_type, &resource)?;
            if let Some(criteria) = if_none_exist {
                if let Matches::One(id) =
                    conditional_match(tx, params, &res_type, &criteria).await?
                {
                    let existing = store::read_latest(tx, &res_type, &id)
                        .await?
                        .ok_or_else(|| FhirError::Internal("matched resource vanished".into()))?;
                    return Ok(Planned::Answered(Some(written_from_stored(existing))));
                }
            }
            Change {
                res_id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                res_type,
                kind: ChangeKind::Create,
                resource: Some(resource),
                if_match: None,
            }
        }
        WriteRequest::Update {
            res_type,
            res_id,
            resource,
            if_match,
        } => {
            check_type(&res_type, &resource)?;
            match fhir::resource_id(&resource) {
                Some(body_id) if body_id == res_id => {}
                Some(body_id) => {
                    return Err(FhirError::bad_request(format!(
                        "the body's id '{body_id}' differs from the id '{res_id}' in the URL"
                    )))
                }
                None => {
                    return Err(FhirError::bad_request(
                        "an update needs the resource's id in the body, equal to the id in the URL",
                    ))
                }
            }
            update_change(res_type, res_id, resource, if_match)
        }
        WriteRequest::ConditionalUpdate {
            res_type,
            criteria,
            resource,
            if_match,
        } => {
            check_type(&res_type, &resource)?;
            let body_id = fhir::resource_id(&resource).map(str::to_owned);
            let res_id = match conditional_match(tx, params, &res_type, &criteria).await? {
                Matches::One(id) => {
                    if body_id.as_ref().is_some_and(|b| *b != id) {
                        return Err(FhirError::bad_request(format!(
                            "the body's id differs from the id '{id}' of the matching resource"
                        )));
                    }
                    id
                }
                Matches::None => body_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            };
            update_change(res_type, res_id, resource, if_match)
        }
        WriteRequest::Patch {
            res_type,
            target,
            document,
            if_match,
        } => {
            let (res_id, resource) = patched(tx, params, &res_type, target, &document).await?;
            Change {
                res_type,
                res_id,
                kind: ChangeKind::Patch,
                resource: Some(resource),
                if_match,
            }
        }
        WriteRequest::Delete {
            res_type,
            res_id,
            if_match,
        } => Change {
            res_type,
            res_id,
            kind: ChangeKind::Delete,
            resource: None,
            if_match,
        },
        WriteRequest::ConditionalDelete { res_type, criteria } => {
            let Matches::One(res_id) = conditional_match(tx, params, &res_type, &criteria).await?
            else {
                return Ok(Planned::Answered(None));
            };
            Change {
                res_type,
                res_id,
                kind: ChangeKind::Delete,
                resource: None,
                if_match: None,
            }
        }
    };
    Ok(Planned::Change(change))
}

fn update_change(
    res_type: String,
    res_id: String,
    resource: Value,
    if_match: Option<i64>,
) -> Change {
    Change {
        res_type,
        res_id,
        kind: ChangeKind::Update,
        resource: Some(resource),
        if_match,
    }
}

fn written_from_stored(v: StoredVersion) -> Written {
    Written {
        created: false,
        res_type: v.res_type,
        res_id: v.res_id,
        version_id: v.version_id,
        last_updated: v.last_updated,
        json: v.json,
    }
}

/// Moves an active subscription to `status` (`error` with the reason when delivery
/// gave up or its criteria no longer apply, `off` when it has ended): a new version through the write path, which
/// stops its matching. A concurrent change by the client, or by another
/// instance, wins (the `If-Match` fails and nothing is written).
pub async fn subscription_status(
    pool: &Pool,
    rules: &Rules,
    sub_id: &str,
    status: &str,
    error: Option<&str>,
) -> FhirResult<()> {
    let current = read(&pool.get().await?, "Subscription", sub_id).await?;
    let json = current.json.as_deref().unwrap_or("{}");
    let mut resource: Value =
        serde_json::from_str(json).map_err(|e| FhirError::Internal(e.to_string()))?;
    if resource["status"] != "active" {
        return Ok(());
    }
    resource["status"] = Value::from(status);
    if let Some(error) = error {
        resource["error"] = Value::from(error);
    }
    let request = WriteRequest::Update {
        res_type: "Subscription".to_owned(),
        res_id: sub_id.to_owned(),
        resource,
        if_match: Some(current.version_id),
    };
    match write(pool, rules, request).await {
        Ok(_) | Err(FhirError::PreconditionFailed(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// `GET [type]/[id]`: 404 when it never existed, 410 when its latest version is a delete.
pub async fn read(
    client: &impl deadpool_postgres::GenericClient,
    res_type: &str,
    res_id: &str,
) -> FhirResult<StoredVersion> {
    let version = store::read_latest(client, res_type, res_id)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("{res_type}/{res_id} is not known")))?;
    if version.is_deleted() {
        return Err(FhirError::Gone(format!(
            "{res_type}/{res_id} was deleted (version {})",
            version.version_id
        )));
    }
    Ok(version)
}

/// `GET [type]/[id]/_history/[vid]`.
pub async fn vread(
    client: &impl deadpool_postgres::GenericClient,
    res_type: &str,
    res_id: &str,
    version_id: &str,
) -> FhirResult<StoredVersion> {
    let vid: i64 = version_id.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
        FhirError::NotFound(format!("no version '{version_id}' of {res_type}/{res_id}"))
    })?;
    let version = store::read_version(client, res_type, res_id, vid)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("{res_type}/{res_id} has no version {vid}")))?;
    if version.is_deleted() {
        return Err(FhirError::Gone(format!(
            "version {vid} of {res_type}/{res_id} is a deletion"
        )));
    }
    Ok(version)
}

/// A page of history, newest first, and the cursor of the next page if any.
pub struct HistoryPage {
    pub versions: Vec<StoredVersion>,
    pub next: Option<String>,
}

/// The opaque cursor of history paging: the (last_updated, seq) of the last entry.
fn encode_cursor(v: &StoredVersion) -> String {
    format!("{}.{}", v.last_updated.timestamp_micros(), v.seq)
}

fn decode_cursor(text: &str) -> FhirResult<(DateTime<Utc>, i64)> {
    let bad = || FhirError::bad_request(format!("'{text}' is not a valid page cursor"));
    let (micros, seq) = text.split_once('.').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let seq: i64 = seq.parse().map_err(|_| bad())?;
    let t = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok((t, seq))
}

/// `_since` of `_history` and `$everything`: an instant (R4), the changes from it on.
fn since_param(value: &str) -> FhirResult<DateTime<Utc>> {
    datetime::parse_range(value)
        .filter(|_| value.contains('T'))
        .map(|range| range.low)
        .ok_or_else(|| FhirError::bad_request(format!("'{value}' is not a valid _since instant")))
}

/// `_count` of `_history` and `$everything`, within the server's page sizes.
fn count_param(value: &str) -> FhirResult<usize> {
    let n: usize = value
        .parse()
        .map_err(|_| FhirError::bad_request(format!("'{value}' is not a valid _count")))?;
    Ok(n.clamp(1, search::MAX_COUNT))
}

/// `_history` at system, type or instance level.
pub async fn history(
    pool: &Pool,
    res_type: Option<&str>,
    res_id: Option<&str>,
    params: &[(String, String)],
) -> FhirResult<HistoryPage> {
    let mut filter = HistoryFilter {
        res_type: res_type.map(str::to_owned),
        res_id: res_id.map(str::to_owned),
        count: search::DEFAULT_COUNT,
        ..HistoryFilter::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "_since" => filter.since = Some(since_param(value)?),
            "_at" => {
                filter.at = Some(datetime::parse_range(value).ok_or_else(|| {
                    FhirError::bad_request(format!("'{value}' is not a valid _at date"))
                })?)
            }
            "_count" => filter.count = count_param(value)?,
            "_page" => filter.before = Some(decode_cursor(value)?),
            _ => {}
        }
    }
    let client = pool.get().await?;
    // One more than asked tells whether a next page exists.
    let wanted = filter.count;
    filter.count += 1;
    let mut versions = store::history(&client, &filter).await?;
    let next = if versions.len() > wanted {
        versions.truncate(wanted);
        versions.last().map(encode_cursor)
    } else {
        None
    };
    Ok(HistoryPage { versions, next })
}

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

/// `GET [type]?params`, or `GET [compartment]/[id]/[type]?params` with `compartment`.
/// What a search covers besides its (first) resource type.
pub enum Scope<'a> {
    /// `GET [type]?…`
    Type,
    /// `GET [compartment type]/[id]/[type]?…`
    Compartment(&'a str, &'a str),
    /// `GET [base]?_type=…`: these types (the first is `res_type`).
    System(Vec<String>),
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
    let entry_of = |v: &StoredVersion, mode: &str| -> FhirResult<Option<String>> {
        let entry = serde_json::json!({
            "fullUrl": format!("{base}/{}/{}", v.res_type, v.res_id),
            "search": {"mode": mode},
        })
        .to_string();
        let Some(resource) = v.json.as_deref() else {
            return Ok(None);
        };
        let resource = match &subset {
            Some(subset) => fhir::subset::apply(resource, subset)?,
            None => resource.to_owned(),
        };
        Ok(Some(fhir::bundle::with_raw_member(
            &entry, "resource", &resource,
        )))
    };
    let mut entries = Vec::with_capacity(page.matches.len() + page.included.len() + 1);
    for v in &page.matches {
        entries.extend(entry_of(v, "match")?);
    }
    for v in &page.included {
        entries.extend(entry_of(v, "include")?);
    }
    if !page.plan.ignored.is_empty() {
        let outcome = crate::error::operation_outcome("warning", &page.plan.ignored).to_string();
        let entry = serde_json::json!({"search": {"mode": "outcome"}}).to_string();
        entries.push(fhir::bundle::with_raw_member(&entry, "resource", &outcome));
    }
    Ok(fhir::bundle::render(
        "searchset",
        page.total,
        &links,
        &entries,
    ))
}

pub async fn search(
    client: &impl deadpool_postgres::GenericClient,
    params_in_force: &ParamTable,
    res_type: &str,
    params: &[(String, String)],
    handling: Handling,
    scope: Scope<'_>,
) -> FhirResult<SearchPage> {
    let mut plan = search::parse(params_in_force, res_type, params, handling)?;
    if let Scope::System(types) = &scope {
        // Every type must understand every parameter: parse for each, strictly.
        for other in types.iter().filter(|t| *t != res_type) {
            search::parse(params_in_force, other, params, Handling::Strict)?;
            plan.other_types.push(other.clone());
        }
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

/// Rewrites the index rows of every current resource (of `types`, or all) from
/// the parameter table in force, in batches of `batch` per transaction; returns how
/// many were indexed. Run after the definitions change (`passerelle reindex`, or
/// by itself after a SearchParameter is written).
pub async fn reindex(
    pool: &Pool,
    params: &ParamTable,
    types: Option<&[String]>,
    batch: usize,
) -> FhirResult<usize> {
    let mut client = pool.get().await?;
    let mut after: Option<(String, String)> = None;
    let mut done = 0;
    loop {
        let tx = client.transaction().await?;
        let resources = store::current_batch(&tx, types, after.as_ref(), batch).await?;
        let Some((t, id, _)) = resources.last() else {
            return Ok(done);
        };
        after = Some((t.clone(), id.clone()));
        for (res_type, res_id, resource) in &resources {
            let rows = search::index::extract(params, res_type, resource);
            store::reindex_resource(&tx, res_type, res_id, &rows).await?;
        }
        store::commit(tx).await?;
        done += resources.len();
        tracing::info!(done, "reindexed");
    }
}

/// Puts the SearchParameter resources of the database in force (at start, and when
/// they change); returns the fingerprint of what was loaded.
pub async fn load_search_parameters(pool: &Pool, catalog: &Catalog) -> FhirResult<String> {
    let client = pool.get().await?;
    let (resources, fingerprint) = store::search_parameters(&client).await?;
    for (name, why) in catalog.params.install(&resources) {
        tracing::warn!(parameter = %name, reason = %why, "SearchParameter not used");
    }
    Ok(fingerprint)
}

/// After a SearchParameter was written here: put it in force, put in `error` the
/// subscriptions whose criteria it broke, then index the existing resources of
/// its base types in the background.
async fn search_parameter_changed(pool: &Pool, rules: &Rules, written: &Written) {
    if written.res_type != "SearchParameter" {
        return;
    }
    if let Err(e) = load_search_parameters(pool, &rules.catalog).await {
        tracing::error!(error = %e, "reloading search parameters");
        return;
    }
    // Boxed: it writes Subscriptions, through the write path that calls this one.
    if let Err(e) = Box::pin(stop_subscriptions_out_of_force(pool, rules)).await {
        tracing::error!(error = %e, "checking subscriptions after a SearchParameter change");
    }
    let bases: Vec<String> = written
        .json
        .as_deref()
        .and_then(|j| serde_json::from_str::<Value>(j).ok())
        .and_then(|sp| sp["base"].as_array().cloned())
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_str().map(str::to_owned))
        .collect();
    let (pool, catalog) = (pool.clone(), rules.catalog.clone());
    tokio::spawn(async move {
        let types = (!bases.is_empty()).then_some(bases);
        let params = catalog.params.current();
        match reindex(&pool, &params, types.as_deref(), 500).await {
            Ok(n) => tracing::info!(n, "reindexed after a SearchParameter change"),
            Err(e) => tracing::error!(error = %e, "reindexing after a SearchParameter change"),
        }
    });
}

/// Puts in `error` the active subscriptions whose criteria no longer compile (a
/// SearchParameter they use was deleted or changed): visibly failed, rather than
/// silently matching nothing.
async fn stop_subscriptions_out_of_force(pool: &Pool, rules: &Rules) -> FhirResult<()> {
    let active = store::outbox::active(&pool.get().await?).await?;
    let params = rules.catalog.params.current();
    let definitions = rules.catalog.definitions(&params);
    for s in active {
        let compiled =
            rules
                .catalog
                .compiled
                .compile(&definitions, s.topic.as_deref(), &s.criteria);
        if let Err(e) = compiled {
            let reason = format!("the subscription's criteria no longer apply: {e}");
            tracing::warn!(sub_id = %s.sub_id, %reason, "subscription put in error");
            subscription_status(pool, rules, &s.sub_id, "error", Some(&reason)).await?;
        }
    }
    Ok(())
}

/// Watches for SearchParameter changes made by other instances and puts them in
/// force; runs until the process ends.
pub async fn watch_search_parameters(
    pool: Pool,
    catalog: Arc<Catalog>,
    mut fingerprint: String,
    every: std::time::Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let Ok(client) = pool.get().await else {
            continue;
        };
        let Ok(now) = store::search_parameters_fingerprint(&client).await else {
            continue;
        };
        drop(client);
        if now != fingerprint {
            match load_search_parameters(&pool, &catalog).await {
                Ok(f) => fingerprint = f,
                Err(e) => tracing::error!(error = %e, "reloading search parameters"),
            }
        }
    }
}
