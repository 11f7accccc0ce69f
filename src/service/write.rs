//! The one place every change to a resource goes through, whatever the interaction
//! (create, update, delete, and later PATCH and transaction entries): precondition
//! checks, the server's `meta`, index rows and the stored version all happen here,
//! inside the caller's database transaction. Authorisation and outbox events for
//! subscriptions join here too.

use chrono::{DateTime, Duration, DurationRound, Utc};
use deadpool_postgres::Transaction;
use serde_json::Value;

use super::notify;
use crate::error::{FhirError, FhirResult};
use crate::fhir;
use crate::search::index::{self, IndexRows};
use crate::store::{self, Method, NewVersion};
use crate::subscription::Interaction;

/// What a change does to one resource.
#[derive(Debug)]
pub enum ChangeKind {
    /// A new resource with a server-assigned id.
    Create,
    /// Write a version at a known id; creates the resource if it does not exist.
    Update,
    /// Write a version computed from the current one (PATCH).
    Patch,
    Delete,
}

#[derive(Debug)]
pub struct Change {
    pub res_type: String,
    pub res_id: String,
    pub kind: ChangeKind,
    /// The validated resource for create and update.
    pub resource: Option<Value>,
    /// `If-Match`: the version the client expects to replace.
    pub if_match: Option<i64>,
}

/// The result of a change.
#[derive(Debug, Clone)]
pub struct Written {
    pub res_type: String,
    pub res_id: String,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    /// True when the change brought the resource into existence (201).
    pub created: bool,
    /// The stored resource as JSON text; `None` after a delete.
    pub json: Option<String>,
}

/// The instant of a new version: the database's clock (one clock for every
/// instance, and never earlier than the transaction's start, which the history
/// horizon relies on), but always after the previous version of the resource.
fn next_instant(now: DateTime<Utc>, previous: Option<DateTime<Utc>>) -> DateTime<Utc> {
    let now = now.duration_trunc(Duration::microseconds(1)).unwrap_or(now);
    match previous {
        Some(p) if p >= now => p + Duration::microseconds(1),
        _ => now,
    }
}

/// The stored form of a version: the resource with the server's `id` and `meta`,
/// as JSON text, and its index rows.
fn stamped(
    res_type: &str,
    res_id: &str,
    version_id: i64,
    last_updated: DateTime<Utc>,
    mut resource: Value,
) -> FhirResult<(String, IndexRows)> {
    fhir::stamp(&mut resource, res_id, version_id, last_updated);
    let index = index::extract(res_type, &resource);
    let json = serde_json::to_string(&resource)
        .map_err(|e| FhirError::Internal(format!("serialising a resource: {e}")))?;
    Ok((json, index))
}

/// Whether a create can go through [`apply_creates`]: the types whose writes do
/// more than store a version (a Subscription is filed, a SearchParameter reloads
/// the table after commit) go through [`apply`] one by one.
pub fn creates_in_bulk(res_type: &str) -> bool {
    !matches!(res_type, "Subscription" | "SearchParameter")
}

/// Creates resources at ids that no resource has yet (server-assigned, as a
/// transaction's POST entries get them): version 1 of each, written by one
/// statement for all, their facts added for subscriptions. The same stamping and
/// indexing as [`apply`]; nothing to lock, no previous version.
pub async fn apply_creates(
    tx: &Transaction<'_>,
    now: DateTime<Utc>,
    creates: Vec<(String, String, Value)>,
    facts: &mut Vec<notify::Fact>,
) -> FhirResult<Vec<Written>> {
    let last_updated = next_instant(now, None);
    let mut stored = Vec::with_capacity(creates.len());
    for (res_type, res_id, resource) in creates {
        debug_assert!(creates_in_bulk(&res_type));
        let (json, index) = stamped(&res_type, &res_id, 1, last_updated, resource)?;
        stored.push((res_type, res_id, json, index));
    }
    let news: Vec<NewVersion<'_>> = stored
        .iter()
        .map(|(res_type, res_id, json, index)| NewVersion {
            res_type,
            res_id,
            version_id: 1,
            last_updated,
            method: Method::Post,
            json: Some(json),
            index,
        })
        .collect();
    store::write_versions(tx, &news).await?;
    drop(news);
    Ok(stored
        .into_iter()
        .map(|(res_type, res_id, json, index)| {
            facts.push(notify::Fact {
                res_type: res_type.clone(),
                res_id: res_id.clone(),
                version_id: 1,
                last_updated,
                interaction: Interaction::Create,
                rows: Some(index),
            });
            Written {
                res_type,
                res_id,
                version_id: 1,
                last_updated,
                created: true,
                json: Some(json),
            }
        })
        .collect())
}

/// Applies one change inside `tx`. `now` is the database clock read once for the
/// transaction (`store::clock`). What was written is added to `facts`, which the
/// caller hands to `notify::record_events` before it commits (one subscription
/// lookup per resource type for the whole transaction).
#[tracing::instrument(skip_all, fields(res_type = %change.res_type, res_id = %change.res_id, kind = ?change.kind))]
pub async fn apply(
    tx: &Transaction<'_>,
    rules: &super::Rules,
    now: DateTime<Utc>,
    change: Change,
    facts: &mut Vec<notify::Fact>,
) -> FhirResult<Written> {
    let Change {
        res_type,
        res_id,
        kind,
        resource,
        if_match,
    } = change;
    let current = match kind {
        // A fresh server-assigned id has no row to lock; the version table's primary
        // key still refuses a duplicate.
        ChangeKind::Create => None,
        ChangeKind::Update | ChangeKind::Patch => {
            store::lock_current(tx, &res_type, &res_id, true).await?
        }
        ChangeKind::Delete => store::lock_current(tx, &res_type, &res_id, false).await?,
    };
    if let Some(expected) = if_match {
        let actual = current.filter(|c| !c.deleted).map(|c| c.version_id);
        if actual != Some(expected) {
            return Err(FhirError::PreconditionFailed(format!(
                "If-Match expected version {expected} of {res_type}/{res_id}, but the current version is {}",
                actual.map_or_else(|| "absent".to_owned(), |v| v.to_string())
            )));
        }
    }
    let method = match kind {
        ChangeKind::Create => Method::Post,
        ChangeKind::Update => Method::Put,
        ChangeKind::Patch => Method::Patch,
        ChangeKind::Delete => Method::Delete,
    };
    let live = current.filter(|c| !c.deleted);
    let version_id = current.map_or(1, |c| c.version_id + 1);
    let last_updated = next_instant(now, current.map(|c| c.last_updated));
    let mut subscription = None;
    let (json, index) = match resource {
        None if method != Method::Delete => {
            return Err(FhirError::Internal("a write without a resource".to_owned()))
        }
        // Deleting what is absent or already deleted changes nothing.
        None if live.is_none() => {
            return Ok(Written {
                version_id: current.map_or(0, |c| c.version_id),
                last_updated: current.map_or_else(Utc::now, |c| c.last_updated),
                res_type,
                res_id,
                created: false,
                json: None,
            })
        }
        None => (None, IndexRows::default()),
        Some(mut resource) => {
            // The server's part of a Subscription (status, secret) is set before the
            // no-op check, so that writing the same subscription again is a no-op.
            if res_type == "Subscription" {
                subscription = Some(crate::subscription::prepare(
                    &mut resource,
                    &rules.endpoints,
                )?);
            }
            // An update that changes nothing writes no version (as HAPI does): a
            // record pushed twice, or a fixture loaded twice, stays at its version.
            if let Some(cur) = live {
                if let Some(same) =
                    store::unchanged(tx, &res_type, &res_id, cur.version_id, &resource).await?
                {
                    return Ok(Written {
                        res_type,
                        res_id,
                        version_id: same.version_id,
                        last_updated: same.last_updated,
                        created: false,
                        json: same.json,
                    });
                }
            }
            let (json, index) = stamped(&res_type, &res_id, version_id, last_updated, resource)?;
            (Some(json), index)
        }
    };
    store::write_version(
        tx,
        &NewVersion {
            res_type: &res_type,
            res_id: &res_id,
            version_id,
            last_updated,
            method,
            json: json.as_deref(),
            index: &index,
        },
    )
    .await?;
    if res_type == "Subscription" {
        notify::file_subscription(tx, &res_id, subscription.as_ref()).await?;
    }
    let interaction = match (&json, live) {
        (None, _) => Interaction::Delete,
        (Some(_), None) => Interaction::Create,
        (Some(_), Some(_)) => Interaction::Update,
    };
    facts.push(notify::Fact {
        res_type: res_type.clone(),
        res_id: res_id.clone(),
        version_id,
        last_updated,
        interaction,
        rows: json.is_some().then_some(index),
    });
    Ok(Written {
        created: json.is_some() && live.is_none(),
        res_type,
        res_id,
        version_id,
        last_updated,
        json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_move_forward_in_time() {
        let future = Utc::now() + Duration::hours(1);
        assert_eq!(
            next_instant(Utc::now(), Some(future)),
            future + Duration::microseconds(1)
        );
        let past = Utc::now() - Duration::hours(1);
        assert!(next_instant(Utc::now(), Some(past)) > past + Duration::minutes(59));
    }
}
