//! Subscriptions' part of the write path, inside the write's transaction: filing a
//! Subscription resource as it is written, and recording an outbox event for every
//! subscription a write matches. Rolled back with the write, or committed with it.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde_json::Value;

use super::Catalog;
use crate::auth::{self, Access, Holder};
use crate::error::{FhirError, FhirResult};
use crate::search::index::{self, IndexRows};
use crate::search::matcher::{self, Subject};
use crate::search::params::ParamTable;
use crate::search::{Condition, Cursor, SearchPlan, TotalMode};
use crate::store::{self, subscriptions};
use crate::subscription::{Definitions, Interaction, Spec, Verdict};

/// One written version, as matching sees it.
#[derive(Debug)]
pub struct Fact {
    pub res_type: String,
    pub res_id: String,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    pub interaction: Interaction,
    /// The new version's index rows; `None` after a delete.
    pub rows: Option<IndexRows>,
}

/// A Subscription resource just written, as filed.
#[derive(Clone, Copy)]
pub struct Filing<'a> {
    pub sub_id: &'a str,
    /// `subscription::prepare`'s; none for a delete.
    pub spec: Option<&'a Spec>,
    /// Written again without a secret: it keeps the one it has.
    pub keeps_secret: bool,
    /// The client that wrote it (`write::Change::owner`).
    pub owner: Option<&'a Value>,
}

/// Files a Subscription resource that has just been written, or unfiles a
/// deleted one.
pub async fn file_subscription(
    tx: &Transaction<'_>,
    catalog: &Catalog,
    filing: &Filing<'_>,
) -> FhirResult<()> {
    let Filing {
        sub_id,
        spec,
        keeps_secret,
        owner,
    } = *filing;
    let Some(spec) = spec else {
        return subscriptions::unregister(tx, sub_id).await;
    };
    // Keys only for a subscription in force: one in `error` or `off` may hold
    // criteria that no longer compile, and is a candidate for nothing.
    let keys = match spec.active {
        true => {
            let params = catalog.params.current();
            let definitions = catalog.definitions(&params);
            catalog
                .compiled
                .compile(&definitions, spec.topic.as_deref(), &spec.criteria)?
                .keys()
        }
        false => Vec::new(),
    };
    let channel = serde_json::to_value(&spec.channel)
        .map_err(|e| FhirError::Internal(format!("serialising a channel: {e}")))?;
    subscriptions::register(
        tx,
        &subscriptions::Registration {
            sub_id,
            active: spec.active,
            topic: spec.topic.as_deref(),
            criteria: &spec.criteria,
            selects: &spec.selects,
            channel: &channel,
            ends_at: spec.ends_at,
            handshake: spec.handshake,
            heartbeat_secs: spec
                .channel
                .heartbeat_secs
                .filter(|s| *s > 0)
                .map(|s| i32::try_from(s).unwrap_or(i32::MAX)),
            keys: &keys,
            keeps_secret,
            owner,
        },
    )
    .await
}

/// The facts of one resource type, with their candidate keys (`None` for a
/// delete, which offers none: every subscription of the type is a candidate),
/// and the active subscriptions filed under the type and any of those keys.
struct OfType<'f> {
    res_type: &'f str,
    facts: Vec<(usize, &'f Fact, Option<Vec<String>>)>,
    candidates: Vec<subscriptions::Candidate>,
}

impl OfType<'_> {
    /// The candidates a fact's keys select.
    fn of<'c>(
        &'c self,
        keys: Option<&'c Vec<String>>,
    ) -> impl Iterator<Item = &'c subscriptions::Candidate> + 'c {
        self.candidates.iter().filter(move |c| {
            c.match_key.is_empty() || keys.is_none_or(|k| k.contains(&c.match_key))
        })
    }
}

/// `facts` by resource type, each type with its candidates: one lookup for the
/// types whose facts all offer keys, one per type for the others (deletes).
async fn by_type<'f>(tx: &Transaction<'_>, facts: &'f [Fact]) -> FhirResult<Vec<OfType<'f>>> {
    let mut types: Vec<&str> = facts.iter().map(|f| f.res_type.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    let mut groups = Vec::with_capacity(types.len());
    let mut wanted: Vec<(&str, String)> = Vec::new();
    for res_type in types {
        let of_type: Vec<(usize, &Fact, Option<Vec<String>>)> = facts
            .iter()
            .enumerate()
            .filter(|(_, f)| f.res_type == res_type)
            .map(|(n, f)| {
                let keys = f.rows.as_ref().map(|r| matcher::keys_of_rows(&f.res_id, r));
                (n, f, keys)
            })
            .collect();
        let keyed = of_type.iter().all(|(_, _, k)| k.is_some());
        let candidates = if keyed {
            // Subscriptions filed under no key are candidates of every write.
            wanted.push((res_type, String::new()));
            for (_, _, keys) in &of_type {
                wanted.extend(keys.iter().flatten().map(|k| (res_type, k.clone())));
            }
            Vec::new()
        } else {
            subscriptions::candidates_of_type(tx, res_type).await?
        };
        groups.push(OfType {
            res_type,
            facts: of_type,
            candidates,
        });
    }
    wanted.sort_unstable();
    wanted.dedup();
    let pairs: Vec<(&str, &str)> = wanted.iter().map(|(t, k)| (*t, k.as_str())).collect();
    for candidate in subscriptions::candidates_under(tx, &pairs).await? {
        if let Some(group) = groups.iter_mut().find(|g| g.res_type == candidate.res_type) {
            group.candidates.push(candidate);
        }
    }
    Ok(groups)
}

/// The facts some active subscription may be interested in (a candidate by type
/// and key); the others cannot become events. A long transaction keeps these
/// alone until [`record_events`] at its end, instead of every version's rows.
pub async fn interested(tx: &Transaction<'_>, facts: Vec<Fact>) -> FhirResult<Vec<Fact>> {
    let keep: HashSet<usize> = by_type(tx, &facts)
        .await?
        .iter()
        .flat_map(|group| {
            group
                .facts
                .iter()
                .filter(|(_, _, keys)| group.of(keys.as_ref()).next().is_some())
                .map(|(n, _, _)| *n)
        })
        .collect();
    Ok(facts
        .into_iter()
        .enumerate()
        .filter(|(n, _)| keep.contains(n))
        .map(|(_, f)| f)
        .collect())
}

/// Records an event for each active subscription each written version matches,
/// in the writes' transaction: one lookup of candidates per resource type (by the
/// keys the versions offer), then each version against its own candidates.
pub async fn record_events(
    tx: &Transaction<'_>,
    catalog: &Catalog,
    facts: &[Fact],
) -> FhirResult<()> {
    let params = catalog.params.current();
    let definitions = catalog.definitions(&params);
    let mut events: Vec<(String, &Fact)> = Vec::new();
    // (fact, subscription) pairs already decided: a subscription may be filed
    // under several keys one version offers.
    let mut decided: HashSet<(usize, String)> = HashSet::new();
    for group in by_type(tx, facts).await? {
        for (n, fact, keys) in &group.facts {
            // The previous version is read once per write, when a candidate needs it.
            let mut previous: Option<Option<(IndexRows, DateTime<Utc>)>> = None;
            for candidate in group.of(keys.as_ref()) {
                if !decided.insert((*n, candidate.sub_id.clone())) {
                    continue;
                }
                if matches(tx, catalog, &definitions, fact, candidate, &mut previous).await? {
                    events.push((candidate.sub_id.clone(), fact));
                }
            }
        }
    }
    if events.is_empty() {
        return Ok(());
    }
    let focus: Vec<subscriptions::Focus<'_>> = events
        .iter()
        .map(|(sub_id, f)| subscriptions::Focus {
            sub_id,
            res_type: &f.res_type,
            res_id: &f.res_id,
            version_id: f.version_id,
            interaction: f.interaction.as_str(),
        })
        .collect();
    subscriptions::record(tx, &focus).await
}

/// Is this version an event for the candidate subscription?
/// `previous` caches the previous version's rows across the write's candidates.
async fn matches(
    tx: &Transaction<'_>,
    catalog: &Catalog,
    definitions: &Definitions<'_>,
    w: &Fact,
    candidate: &subscriptions::Candidate,
    previous: &mut Option<Option<(IndexRows, DateTime<Utc>)>>,
) -> FhirResult<bool> {
    // A subscription tells its owner only what the owner may see now.
    let held = match &candidate.owner {
        None => Vec::new(),
        Some(owner) => match held_to_owner(definitions.params, owner, w) {
            None => return Ok(false),
            Some(conditions) => conditions,
        },
    };
    // A subscription whose topic or parameters have since gone (a deployer's topic
    // file, a SearchParameter deleted) matches nothing; it must not fail the write.
    let compiled =
        catalog
            .compiled
            .compile(definitions, candidate.topic.as_deref(), &candidate.criteria);
    let compiled = match compiled {
        Ok(compiled) => compiled,
        Err(e) => {
            tracing::warn!(sub_id = %candidate.sub_id, error = %e, "subscription criteria no longer compile");
            return Ok(false);
        }
    };
    let current = w.rows.as_ref().map(|rows| Subject {
        res_id: &w.res_id,
        last_updated: w.last_updated,
        rows,
    });
    if previous.is_none() && compiled.needs_previous(&w.res_type, w.interaction) {
        *previous = Some(previous_version(tx, definitions.params, w).await?);
    }
    let previous = previous
        .as_ref()
        .and_then(Option::as_ref)
        .map(|(rows, at)| Subject {
            res_id: &w.res_id,
            last_updated: *at,
            rows,
        });
    let verdict = compiled.evaluate(
        &w.res_type,
        w.interaction,
        current.as_ref(),
        previous.as_ref(),
    );
    Ok(match verdict {
        Verdict::No => false,
        Verdict::Yes if held.is_empty() => true,
        Verdict::Yes => matches_in_database(tx, w, held).await?,
        Verdict::AskDatabase(mut conditions) => {
            conditions.extend(held);
            matches_in_database(tx, w, conditions).await?
        }
    })
}

/// What a subscription's owner (`auth::Principal`, as stored) may be told of a
/// written version: `None`, nothing (its scopes do not let it read the type, or
/// by a search the server cannot apply; the owner no longer reads); otherwise
/// the version as it matches and meets these conditions too (the owner's
/// patient's record, or the records of her circles; her scope's search), asked
/// of the database. A delete is not told to an owner so held: whose record it
/// was, and what it said, are gone with its index rows.
fn held_to_owner(params: &ParamTable, owner: &Value, w: &Fact) -> Option<Vec<Condition>> {
    let access = Access::of_owner(owner.clone())?;
    let (holder, query) = auth::told_of(&access, &w.res_type)?;
    let mut conditions = match query.is_empty() {
        true => Vec::new(),
        false => {
            crate::search::parse(params, &w.res_type, &query, crate::search::Handling::Strict)
                .ok()?
                .conditions
        }
    };
    if w.rows.is_none() && (holder != Holder::Free || !conditions.is_empty()) {
        return None;
    }
    if let Some(reach) = holder.reach() {
        conditions.extend(reach.condition(params, &w.res_type));
    }
    Some(conditions)
}

/// The index rows of the version before this one, if it was live.
async fn previous_version(
    tx: &Transaction<'_>,
    params: &ParamTable,
    w: &Fact,
) -> FhirResult<Option<(IndexRows, DateTime<Utc>)>> {
    if w.interaction == Interaction::Create || w.version_id <= 1 {
        return Ok(None);
    }
    let Some(stored) = store::read_version(tx, &w.res_type, &w.res_id, w.version_id - 1).await?
    else {
        return Ok(None);
    };
    let Some(json) = stored.json.as_deref() else {
        return Ok(None);
    };
    let resource: Value =
        serde_json::from_str(json).map_err(|e| FhirError::Internal(e.to_string()))?;
    Ok(Some((
        index::extract(params, &w.res_type, &resource),
        stored.last_updated,
    )))
}

/// Conditions the in-memory matcher could not decide, asked of the database,
/// whose index rows already hold this version (same transaction).
async fn matches_in_database(
    tx: &Transaction<'_>,
    w: &Fact,
    mut conditions: Vec<Condition>,
) -> FhirResult<bool> {
    conditions.push(Condition::Id(vec![w.res_id.clone()]));
    let plan = SearchPlan {
        resource_type: w.res_type.clone(),
        other_types: Vec::new(),
        conditions,
        count: 1,
        includes: Vec::new(),
        sort: Vec::new(),
        cursor: Cursor::Start,
        total: TotalMode::None,
        ignored: Vec::new(),
    };
    Ok(!store::matching_ids(tx, &plan, 1).await?.is_empty())
}
