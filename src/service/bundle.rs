//! `POST [base]` with a `transaction` or `batch` Bundle (R4 http.html#transaction).
//!
//! A transaction runs every entry in one database transaction, in the spec's order
//! (DELETE, POST, PUT, GET), after giving each created resource its id so that
//! references to the entries' `fullUrl`s (`urn:uuid:…`) and conditional references
//! (`Patient?identifier=…`) can be rewritten first; any failure rolls everything
//! back and names the entry. Entries are read from the body one at a time
//! (`fhir::bundle`), and their changes go to the write path 500 at a time, until an
//! entry must read what they wrote (a conditional, a PATCH, a GET). A batch runs
//! each entry on its own.

use std::collections::{HashMap, HashSet};

use deadpool_postgres::{GenericClient, Pool, Transaction};
use serde_json::{json, Value};

use super::{
    conditional_match, definitions_changed, held, notify, plan, write, Change, Fact, Matches,
    PatchTarget, Planned, Rules, Scope, WriteRequest, Written,
};
use crate::auth::scopes::Interaction;
use crate::auth::{Access, Holder};
use crate::error::{FhirError, FhirResult};
use crate::fhir::bundle::{
    at_entry, parse_target, patch_document, rank, rewrite_references, Head, Kind, RawBundle, Target,
};
use crate::fhir::{self, datetime};
use crate::search::params::ParamTable;
use crate::search::{self, Handling};
use crate::store;
use crate::store::audit::AuditRow;

/// How a Bundle's entries are answered, from the request that carries it.
pub struct Answering<'a> {
    /// The FHIR base URL, for the links and fullUrls of search entries' Bundles.
    pub base: &'a str,
    /// `Prefer: handling`, for search entries.
    pub handling: Handling,
    /// `Prefer: return=representation`: each written resource in its entry.
    pub representation: bool,
    /// Who asks: each entry is held against its scopes.
    pub access: &'a Access,
    /// A transaction's audit record, stored in its transaction (a batch's
    /// entries commit one by one: it is recorded once answered).
    pub record: Option<&'a (dyn Fn() -> AuditRow + Sync)>,
}

/// Holds an entry against the client's scopes: what its method and target ask,
/// and, for a search, the types it reaches (403 otherwise). Returns whose records
/// the entry may touch, held at its turn as the REST API holds a request
/// (`held`): a read or a search to what the client sees, a write to the records
/// it reaches, its conditions matched among the records it sees. A held client's
/// Subscriptions are refused here.
fn check_entry(access: &Access, params: &ParamTable, head: &Head) -> FhirResult<Holder> {
    use Interaction::*;
    if let Access::Open = access {
        return Ok(Holder::Free);
    }
    let res_type = head.target.res_type();
    let needs = match (head.method.as_str(), &head.target) {
        ("GET", Target::Instance(..) | Target::Version(..)) => vec![(res_type.to_owned(), Read)],
        ("GET", Target::Criteria(t, criteria)) => {
            let mut needs = vec![(t.clone(), Search)];
            needs.extend(crate::auth::search_reaches(t, criteria, params));
            needs
        }
        ("GET", _) => vec![(res_type.to_owned(), Search)],
        ("POST", _) if head.if_none_exist.is_some() => {
            vec![(res_type.to_owned(), Create), (res_type.to_owned(), Search)]
        }
        ("POST", _) => vec![(res_type.to_owned(), Create)],
        ("PUT" | "PATCH", Target::Criteria(..)) => {
            vec![(res_type.to_owned(), Update), (res_type.to_owned(), Search)]
        }
        ("DELETE", Target::Criteria(..)) => {
            vec![(res_type.to_owned(), Delete), (res_type.to_owned(), Search)]
        }
        ("DELETE", _) => vec![(res_type.to_owned(), Delete)],
        _ => vec![(res_type.to_owned(), Update)],
    };
    // A held client's Subscriptions are checked one by one (`http::handlers`).
    if res_type == "Subscription" && !crate::auth::sees_every_subscription(access) {
        return Err(FhirError::Forbidden(
            "Bundle entries on Subscriptions are not available yet to a client held to records"
                .to_owned(),
        ));
    }
    crate::auth::may_change(access, &head.method, res_type)?;
    // The entry's holder: that of the first of its needs that is held (a
    // directory search reaching records is held for them).
    let mut holder = Holder::Free;
    for (t, interaction) in needs {
        access.require(&t, interaction)?;
        let held = crate::auth::holder(access, &t, interaction, false)?;
        if holder == Holder::Free {
            holder = held;
        }
    }
    Ok(holder)
}

/// Runs a transaction or batch Bundle (JSON text); the response Bundle.
pub async fn process(
    pool: &Pool,
    rules: &Rules,
    answering: &Answering<'_>,
    body: &[u8],
) -> FhirResult<String> {
    let bundle = fhir::bundle::open(body)?.served_at(answering.base);
    match bundle.kind {
        Kind::Transaction => transaction(pool, rules, answering, &bundle).await,
        Kind::Batch => batch(pool, rules, answering, &bundle).await,
    }
}

/// The entry answering a write (JSON text), with the resource written when
/// `representation` is asked for.
fn write_response(written: Option<&Written>, representation: bool) -> String {
    let Some(w) = written else {
        return json!({"response": {"status": "204 No Content"}}).to_string();
    };
    let status = match (&w.json, w.created) {
        (None, _) => "204 No Content",
        (Some(_), true) => "201 Created",
        (Some(_), false) => "200 OK",
    };
    let mut response = json!({"status": status});
    if w.version_id > 0 {
        response["etag"] = json!(format!("W/\"{}\"", w.version_id));
        response["lastModified"] = json!(datetime::format_instant(w.last_updated));
        if w.json.is_some() {
            response["location"] = json!(format!(
                "{}/{}/_history/{}",
                w.res_type, w.res_id, w.version_id
            ));
        }
    }
    let entry = json!({ "response": response }).to_string();
    match w.json.as_deref().filter(|_| representation) {
        Some(resource) => fhir::render::with_raw_member(&entry, "resource", resource),
        None => entry,
    }
}

/// Runs a GET entry (in a transaction, inside it): a read or vread (honouring
/// `ifNoneMatch` and `ifModifiedSince`), or a search answered with a searchset
/// Bundle, held to what the client sees. The entry as JSON text.
async fn get_entry(
    client: &impl GenericClient,
    params_in_force: &ParamTable,
    answering: &Answering<'_>,
    head: &Head,
    holder: &Holder,
) -> FhirResult<String> {
    let (t, params) = match &head.target {
        Target::Instance(t, id) => {
            held::visible(client, params_in_force, holder, t, id).await?;
            return Ok(read_entry(head, super::read(client, t, id).await?));
        }
        Target::Version(t, id, vid) => {
            held::visible(client, params_in_force, holder, t, id).await?;
            let version = super::vread(client, t, id, vid).await?;
            if !held::version_reached(client, params_in_force, holder, &version).await? {
                return Err(FhirError::NotFound(format!(
                    "{t}/{id}/_history/{vid} is not known"
                )));
            }
            return Ok(read_entry(head, version));
        }
        Target::Type(t) => (t, Vec::new()),
        Target::Criteria(t, criteria) => (t, criteria.clone()),
    };
    if head.if_none_match.is_some() || head.if_modified_since.is_some() {
        return Err(FhirError::bad_request(
            "ifNoneMatch and ifModifiedSince make a read conditional, not a search",
        ));
    }
    let mut page = super::search(
        client,
        params_in_force,
        t,
        &params,
        answering.handling,
        Scope::Type,
        holder.reach(),
    )
    .await?;
    held::seen_only(client, params_in_force, holder, &mut page.included).await?;
    let searchset = super::searchset(answering.base, &format!("/{t}"), &params, &page)?;
    Ok(fhir::render::with_raw_member(
        r#"{"response":{"status":"200 OK"}}"#,
        "resource",
        &searchset,
    ))
}

/// The entry answering a read or vread of `version`, honouring `ifNoneMatch` and
/// `ifModifiedSince` (304, without the resource).
fn read_entry(head: &Head, version: store::StoredVersion) -> String {
    let not_modified = fhir::not_modified(
        head.if_none_match.as_deref(),
        head.if_modified_since,
        version.version_id,
        version.last_updated,
    );
    let entry = json!({"response": {
        "status": if not_modified { "304 Not Modified" } else { "200 OK" },
        "etag": format!("W/\"{}\"", version.version_id),
        "lastModified": datetime::format_instant(version.last_updated),
    }})
    .to_string();
    match (not_modified, version.json.as_deref()) {
        (false, Some(resource)) => fhir::render::with_raw_member(&entry, "resource", resource),
        _ => entry,
    }
}

/// The write an entry asks for; `id` is the one given beforehand to a POST (or to
/// a conditional PUT other entries refer to by its fullUrl), and
/// `search` whether its `ifNoneExist` is searched (again) at its turn.
fn write_request(
    head: &Head,
    resource: Option<Value>,
    id: Option<String>,
    search: bool,
) -> FhirResult<WriteRequest> {
    let method = head.method.as_str();
    let mut taken = resource;
    let mut resource = || {
        taken
            .take()
            .ok_or_else(|| FhirError::bad_request(format!("a {method} entry needs a resource")))
    };
    Ok(match (method, &head.target) {
        ("POST", Target::Type(t)) => WriteRequest::Create {
            res_type: t.clone(),
            resource: resource()?,
            if_none_exist: head.if_none_exist.clone().filter(|_| search),
            id,
        },
        ("PUT", Target::Instance(t, id)) => WriteRequest::Update {
            res_type: t.clone(),
            res_id: id.clone(),
            resource: resource()?,
            if_match: head.if_match,
        },
        ("PUT", Target::Criteria(t, criteria)) => WriteRequest::ConditionalUpdate {
            res_type: t.clone(),
            criteria: criteria.clone(),
            resource: resource()?,
            if_match: head.if_match,
            // The id its fullUrl stands for (its match, or the one it creates).
            assigned_id: id,
        },
        ("PATCH", Target::Instance(t, id)) => WriteRequest::Patch {
            res_type: t.clone(),
            target: PatchTarget::Id(id.clone()),
            document: patch_document(resource()?)?,
            if_match: head.if_match,
        },
        ("PATCH", Target::Criteria(t, criteria)) => WriteRequest::Patch {
            res_type: t.clone(),
            target: PatchTarget::Criteria(criteria.clone()),
            document: patch_document(resource()?)?,
            if_match: head.if_match,
        },
        ("DELETE", Target::Instance(t, id)) => WriteRequest::Delete {
            res_type: t.clone(),
            res_id: id.clone(),
            if_match: head.if_match,
        },
        ("DELETE", Target::Criteria(t, criteria)) => WriteRequest::ConditionalDelete {
            res_type: t.clone(),
            criteria: criteria.clone(),
        },
        (method, _) => {
            return Err(FhirError::MethodNotAllowed(format!(
                "{method} on this url is not supported in a Bundle entry"
            )))
        }
    })
}

/// The id a POST entry will have, decided before anything is written so that the
/// other entries can refer to it, and how its `ifNoneExist` is settled at its turn.
struct Assigned {
    id: String,
    search: Search,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Search {
    /// No `ifNoneExist`.
    Never,
    /// Matched nothing before the transaction: searched again at its turn only if
    /// an earlier create of the transaction may match it (see [`Created`]).
    IfCreatedMayMatch,
    /// Matched a resource before the transaction: searched again at its turn.
    Again,
    /// The criteria of an earlier entry, which creates what this one then matches:
    /// searched again at its turn, and given a new id if that finds nothing.
    AgainAsShared,
}

/// The ids of the POST entries: new ones, or the matches of their `ifNoneExist`
/// (against the state before the transaction, under the criteria's lock). The
/// searches of distinct criteria are sent together: the connection pipelines
/// them, in entry order, instead of waiting for each answer.
async fn assign_ids(
    tx: &Transaction<'_>,
    params: &ParamTable,
    heads: &[Head],
    holders: &[Holder],
) -> FhirResult<HashMap<usize, Assigned>> {
    let new = || uuid::Uuid::new_v4().to_string();
    let mut assigned = HashMap::new();
    // The first entry of each `ifNoneExist` (type and criteria, sorted), and the
    // later entries that repeat it.
    type Criteria<'h> = (&'h str, Vec<(String, String)>);
    let mut first_of: HashMap<Criteria<'_>, usize> = HashMap::new();
    // The entries whose criteria are searched: the first of each.
    let mut searched: Vec<(usize, Criteria<'_>)> = Vec::new();
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    for head in heads {
        // A conditional update that other entries may refer to by its fullUrl:
        // its match (or the id it will create) is decided now, like a POST's.
        if let (Target::Criteria(t, criteria), "PUT", Some(_)) =
            (&head.target, head.method.as_str(), &head.full_url)
        {
            searched.push((head.index, (t.as_str(), criteria.clone())));
            continue;
        }
        let (Target::Type(t), "POST") = (&head.target, head.method.as_str()) else {
            continue;
        };
        let Some(criteria) = &head.if_none_exist else {
            let (id, search) = (new(), Search::Never);
            assigned.insert(head.index, Assigned { id, search });
            continue;
        };
        let mut key = criteria.clone();
        key.sort();
        match first_of.get(&(t.as_str(), key.clone())) {
            Some(&first) => repeats.push((head.index, first)),
            None => {
                first_of.insert((t, key), head.index);
                searched.push((head.index, (t, criteria.clone())));
            }
        }
    }
    let outcomes =
        futures_util::future::try_join_all(searched.iter().map(|(i, (t, c))| async move {
            conditional_match(tx, params, t, c, holders[*i].reach())
                .await
                .map_err(|e| at_entry(*i, e))
        }))
        .await?;
    for (&(index, _), outcome) in searched.iter().zip(outcomes) {
        let assignment = match outcome {
            Matches::One(id) => Assigned {
                id,
                search: Search::Again,
            },
            Matches::None => Assigned {
                id: new(),
                search: Search::IfCreatedMayMatch,
            },
        };
        assigned.insert(index, assignment);
    }
    for (index, first) in repeats {
        let id = assigned
            .get(&first)
            .map(|a| a.id.clone())
            .unwrap_or_else(new);
        let search = Search::AgainAsShared;
        assigned.insert(index, Assigned { id, search });
    }
    Ok(assigned)
}

/// The search keys (tokens, references, ids: `search::matcher`) that the resources
/// created so far by the transaction offer, by type, for the types that have
/// conditional creates. A conditional create none of whose criteria keys is
/// offered cannot match anything the transaction created: it is not searched
/// again, and joins the batched writes.
struct Created<'p> {
    params: &'p ParamTable,
    offered: HashMap<String, HashSet<String>>,
}

impl<'p> Created<'p> {
    fn new(params: &'p ParamTable, heads: &[Head]) -> Created<'p> {
        let offered = heads
            .iter()
            .filter(|h| h.method == "POST" && h.if_none_exist.is_some())
            .map(|h| (h.target.res_type().to_owned(), HashSet::new()))
            .collect();
        Created { params, offered }
    }

    /// Whether a create with these criteria may match a resource created earlier.
    fn may_match(&self, res_type: &str, criteria: &[(String, String)]) -> bool {
        let Some(offered) = self.offered.get(res_type) else {
            return false;
        };
        let keys = search::parse(self.params, res_type, criteria, Handling::Lenient)
            .ok()
            .and_then(|plan| search::matcher::keys_of_conditions(&plan.conditions));
        match keys {
            Some(keys) => keys.iter().any(|k| offered.contains(k)),
            // Criteria without a key (a name, a date) may match anything.
            None => !offered.is_empty(),
        }
    }

    /// Records what a created resource offers.
    fn add(&mut self, res_type: &str, res_id: &str, resource: &Value) {
        if let Some(offered) = self.offered.get_mut(res_type) {
            let rows = search::index::extract(self.params, res_type, resource);
            offered.extend(search::matcher::keys_of_rows(res_id, &rows));
        }
    }
}

/// Changes written by one statement at most (arrays of their rows).
const CHANGES_PER_STATEMENT: usize = 500;

/// Changes of a transaction waiting to be written together, with their entries.
#[derive(Default)]
struct Pending {
    entries: Vec<usize>,
    changes: Vec<Change>,
}

impl Pending {
    /// Writes the waiting changes and answers their entries.
    async fn flush(
        &mut self,
        tx: &Transaction<'_>,
        rules: &Rules,
        now: chrono::DateTime<chrono::Utc>,
        out: &mut Answers,
    ) -> FhirResult<()> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.changes);
        let mut facts = Vec::new();
        let written = write::apply_all(tx, rules, now, changes, &mut facts)
            .await
            .map_err(|f| match f.position {
                Some(p) => at_entry(self.entries[p], f.error),
                None => f.error,
            })?;
        // Facts hold their versions' index rows: only those a subscription may want
        // are kept for the matching at the end (against the transaction's final
        // state, whatever the batch). A transaction that writes Subscriptions
        // changes the candidates themselves: it keeps them all.
        if out.writes_subscriptions {
            out.facts.extend(facts);
        } else {
            out.facts.extend(notify::interested(tx, facts).await?);
        }
        for (i, w) in self.entries.drain(..).zip(written) {
            out.answer(i, Some(w));
        }
        Ok(())
    }
}

/// What a transaction has done so far: the response of each entry (as JSON text,
/// a few hundred bytes where a tree would take kilobytes), the facts to match
/// against subscriptions before the commit, the SearchParameters to put in force
/// after it.
struct Answers {
    responses: Vec<Box<str>>,
    representation: bool,
    facts: Vec<Fact>,
    writes_subscriptions: bool,
    definitions: Vec<Written>,
}

impl Answers {
    fn answer(&mut self, entry: usize, written: Option<Written>) {
        self.responses[entry] = write_response(written.as_ref(), self.representation).into();
        // Only definitions (SearchParameters, profiles) are looked at after the commit.
        self.definitions.extend(written.filter(|w| {
            w.res_type == "SearchParameter"
                || super::search_parameters::PROFILE_TYPES.contains(&w.res_type.as_str())
        }));
    }
}

/// The requests of every entry, before anything is done (one bad entry refuses
/// the whole transaction).
fn heads(bundle: &RawBundle<'_>) -> FhirResult<Vec<Head>> {
    (0..bundle.len()).map(|i| bundle.head(i)).collect()
}

/// Search criteria in a canonical order, to compare two conditional URLs.
fn sorted(criteria: &[(String, String)]) -> Vec<(String, String)> {
    let mut sorted = criteria.to_vec();
    sorted.sort();
    sorted
}

/// Runs a transaction Bundle; the response Bundle, or the first entry's error.
/// Resources are parsed one entry at a time, in the order they are written.
async fn transaction(
    pool: &Pool,
    rules: &Rules,
    answering: &Answering<'_>,
    bundle: &RawBundle<'_>,
) -> FhirResult<String> {
    let mut heads = heads(bundle)?;
    fhir::bundle::check_full_urls(&heads)?;
    let params = rules.catalog.params.current();
    let holders = heads
        .iter()
        .map(|head| {
            check_entry(answering.access, &params, head).map_err(|e| at_entry(head.index, e))
        })
        .collect::<FhirResult<Vec<Holder>>>()?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // 1. Ids of what will be created, and the map from fullUrls to local references.
    let assigned = assign_ids(&tx, &params, &heads, &holders).await?;
    let mut ids: HashMap<String, String> = HashMap::new();
    // The conditional creates and updates of the Bundle by their criteria: a
    // conditional reference with the same criteria means that entry's resource.
    let mut by_criteria: HashMap<(String, Vec<(String, String)>), String> = HashMap::new();
    for head in &heads {
        let local = match (&head.target, assigned.get(&head.index)) {
            (Target::Type(t) | Target::Criteria(t, _), Some(a)) => Some(format!("{t}/{}", a.id)),
            (Target::Instance(t, id), _) => Some(format!("{t}/{id}")),
            _ => None,
        };
        let criteria = match (&head.target, &head.if_none_exist) {
            (Target::Type(t), Some(criteria)) | (Target::Criteria(t, criteria), _) => {
                Some((t.clone(), sorted(criteria)))
            }
            _ => None,
        };
        if let (Some(criteria), Some(local)) = (criteria, &local) {
            by_criteria.entry(criteria).or_insert_with(|| local.clone());
        }
        if let (Some(full_url), Some(local)) = (&head.full_url, local) {
            ids.insert(full_url.clone(), local);
        }
    }
    // 2. Conditional references: to an entry's conditional create or update with
    // the same criteria, else resolved once each against the state before the
    // transaction.
    for head in &mut heads {
        for reference in std::mem::take(&mut head.conditional_references) {
            if ids.contains_key(&reference) {
                continue;
            }
            // An absolute URL with a query is a literal reference elsewhere (the
            // criteria of a relative one may hold URLs: `identifier=https://…|v`).
            let (path, _) = reference.split_once('?').unwrap_or((&reference, ""));
            if path.contains("://") || reference.starts_with("urn:") {
                continue;
            }
            let Some(Target::Criteria(t, criteria)) = parse_target(&reference) else {
                return Err(at_entry(
                    head.index,
                    FhirError::bad_request(format!(
                        "the reference '{reference}' is neither a fullUrl of the Bundle nor a conditional reference (Type?criteria)"
                    )),
                ));
            };
            if let Some(local) = by_criteria.get(&(t.clone(), sorted(&criteria))) {
                ids.insert(reference, local.clone());
                continue;
            }
            // A search of `t`: allowed by the scopes, and for a client held to
            // records among those it sees (what it does not see does not exist
            // for it).
            let searcher = answering
                .access
                .require(&t, Interaction::Search)
                .and_then(|_| crate::auth::holder(answering.access, &t, Interaction::Search, false))
                .map_err(|e| at_entry(head.index, e))?;
            match conditional_match(&tx, &params, &t, &criteria, searcher.reach())
                .await
                .map_err(|e| at_entry(head.index, e))?
            {
                Matches::One(id) => {
                    ids.insert(reference, format!("{t}/{id}"));
                }
                Matches::None => {
                    return Err(at_entry(
                        head.index,
                        FhirError::PreconditionFailed(format!(
                            "conditional reference '{reference}' matches nothing"
                        )),
                    ))
                }
            }
        }
    }
    // 3. The entries, in the spec's order; responses in the Bundle's order. Each
    // resource is parsed, checked and rewritten as its turn comes; the changes are
    // written together until an entry needs to read what they wrote.
    let mut order: Vec<usize> = (0..heads.len()).collect();
    order.sort_by_key(|i| rank(&heads[*i].method));
    let now = store::clock(&tx).await?;
    let mut out = Answers {
        responses: vec![Box::from(""); heads.len()],
        representation: answering.representation,
        facts: Vec::new(),
        writes_subscriptions: heads.iter().any(|h| h.target.res_type() == "Subscription"),
        definitions: Vec::new(),
    };
    let mut pending = Pending::default();
    let mut created = Created::new(&params, &heads);
    // What each entry changes, known once its conditions are resolved: R4 says a
    // transaction whose entries change one resource twice SHALL fail.
    let mut changed: HashMap<(String, String), usize> = HashMap::new();
    for i in order {
        let head = &heads[i];
        let mut resource = bundle.resource(i)?;
        if let Some(resource) = &mut resource {
            rewrite_references(resource, &ids);
            // A created resource's id is the server's, whatever the body says.
            if head.method == "POST" {
                if let Some(obj) = resource.as_object_mut() {
                    obj.shift_remove("id");
                }
            }
        }
        let holder = &holders[i];
        if head.method == "GET" {
            pending.flush(&tx, rules, now, &mut out).await?;
            let read = get_entry(&tx, &params, answering, head, holder)
                .await
                .map_err(|e| at_entry(i, e))?;
            out.responses[i] = read.into();
            continue;
        }
        let (id, search) = match assigned.get(&i) {
            None => (None, true),
            Some(a) => {
                let search = match a.search {
                    Search::Never => false,
                    Search::Again | Search::AgainAsShared => true,
                    Search::IfCreatedMayMatch => created.may_match(
                        head.target.res_type(),
                        head.if_none_exist.as_deref().unwrap_or_default(),
                    ),
                };
                if let Some(resource) = &resource {
                    created.add(head.target.res_type(), &a.id, resource);
                }
                let id = Some(a.id.clone()).filter(|_| a.search != Search::AgainAsShared);
                (id, search)
            }
        };
        let request = write_request(head, resource, id, search).map_err(|e| at_entry(i, e))?;
        // A held client's entry is checked against what the entries before it
        // wrote, as its REST request would be after theirs.
        let held = *holder != Holder::Free;
        if request.reads_first() || held {
            pending.flush(&tx, rules, now, &mut out).await?;
        }
        if held {
            held::before_write(&tx, &params, holder, &request)
                .await
                .map_err(|e| at_entry(i, e))?;
        }
        match plan(&tx, &params, request, holder.reach())
            .await
            .map_err(|e| at_entry(i, e))?
        {
            Planned::Change(change) => {
                if held {
                    held::check_change(&tx, &params, holder, &change)
                        .await
                        .map_err(|e| at_entry(i, e))?;
                }
                let target = (change.res_type.clone(), change.res_id.clone());
                if let Some(first) = changed.insert(target, i) {
                    return Err(at_entry(
                        i,
                        FhirError::bad_request(format!(
                            "{}/{} is also changed by entry {first}: a transaction changes a resource once",
                            change.res_type, change.res_id
                        )),
                    ));
                }
                pending.entries.push(i);
                pending.changes.push(change.written_by(answering.access));
                if pending.changes.len() == CHANGES_PER_STATEMENT {
                    pending.flush(&tx, rules, now, &mut out).await?;
                }
            }
            Planned::Answered(written) => out.answer(i, written),
        }
    }
    pending.flush(&tx, rules, now, &mut out).await?;
    notify::record_events(&tx, &rules.catalog, &out.facts).await?;
    if let Some(record) = answering.record {
        super::writes::store_record(&tx, record()).await?;
    }
    store::commit(tx).await?;
    for w in &out.definitions {
        definitions_changed(pool, rules, w).await;
    }
    Ok(fhir::render::bundle(
        "transaction-response",
        None,
        &[],
        &out.responses,
    ))
}

/// One batch entry, on its own.
async fn batch_entry(
    pool: &Pool,
    rules: &Rules,
    answering: &Answering<'_>,
    bundle: &RawBundle<'_>,
    index: usize,
) -> FhirResult<String> {
    let head = bundle.head(index)?;
    let params = rules.catalog.params.current();
    let holder = check_entry(answering.access, &params, &head)?;
    let resource = bundle.resource(index)?;
    if head.method == "GET" {
        return get_entry(&pool.get().await?, &params, answering, &head, &holder).await;
    }
    let request = write_request(&head, resource, None, true)?;
    // A batch's entries are recorded with the batch.
    let written = super::write(pool, rules, request, answering.access, &holder, None).await?;
    Ok(write_response(written.as_ref(), answering.representation))
}

/// Runs a batch Bundle: each entry on its own; failures, an entry that does not
/// validate included, are answered per entry.
async fn batch(
    pool: &Pool,
    rules: &Rules,
    answering: &Answering<'_>,
    bundle: &RawBundle<'_>,
) -> FhirResult<String> {
    let mut responses: Vec<String> = Vec::with_capacity(bundle.len());
    for index in 0..bundle.len() {
        let outcome = batch_entry(pool, rules, answering, bundle, index).await;
        responses.push(outcome.unwrap_or_else(|e| {
            json!({"response": {
                "status": e.status().to_string(),
                "outcome": e.operation_outcome(),
            }})
            .to_string()
        }));
    }
    Ok(fhir::render::bundle(
        "batch-response",
        None,
        &[],
        &responses,
    ))
}
