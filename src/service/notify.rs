//! Subscriptions' part of the write path, inside the write's transaction: filing a
//! Subscription resource as it is written, and recording an outbox event for every
//! subscription a write matches. Rolled back with the write, or committed with it.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde_json::Value;

use crate::error::{FhirError, FhirResult};
use crate::search::index::{self, IndexRows};
use crate::search::matcher::{self, Subject};
use crate::search::{Condition, Cursor, SearchPlan, TotalMode};
use crate::store::{self, outbox};
use crate::subscription::{self, Interaction, Spec, Verdict};

/// One written version, as matching sees it.
pub struct Written<'a> {
    pub res_type: &'a str,
    pub res_id: &'a str,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    pub interaction: Interaction,
    /// The new version's index rows; `None` after a delete.
    pub rows: Option<&'a IndexRows>,
}

/// Files a Subscription resource that has just been written (`spec` from
/// `subscription::prepare`), or unfiles a deleted one.
pub async fn file_subscription(
    tx: &Transaction<'_>,
    sub_id: &str,
    spec: Option<&Spec>,
) -> FhirResult<()> {
    let Some(spec) = spec else {
        return outbox::unregister(tx, sub_id).await;
    };
    let compiled = subscription::compile(spec.topic.as_deref(), &spec.criteria)?;
    let channel = serde_json::to_value(&spec.channel)
        .map_err(|e| FhirError::Internal(format!("serialising a channel: {e}")))?;
    outbox::register(
        tx,
        &outbox::Registration {
            sub_id,
            active: spec.active,
            topic: spec.topic.as_deref(),
            criteria: &spec.criteria,
            channel: &channel,
            ends_at: spec.ends_at,
            handshake: spec.handshake,
            heartbeat_secs: spec
                .channel
                .heartbeat_secs
                .filter(|s| *s > 0)
                .map(|s| i32::try_from(s).unwrap_or(i32::MAX)),
            keys: &compiled.keys(),
        },
    )
    .await
}

/// Records an event for each active subscription this write matches.
pub async fn record_events(tx: &Transaction<'_>, w: &Written<'_>) -> FhirResult<()> {
    let keys = w.rows.map(|rows| matcher::keys_of_rows(w.res_id, rows));
    let candidates = outbox::candidates(tx, w.res_type, keys.as_deref()).await?;
    if candidates.is_empty() {
        return Ok(());
    }
    let current = w.rows.map(|rows| Subject {
        res_id: w.res_id,
        last_updated: w.last_updated,
        rows,
    });
    let mut previous_rows: Option<Option<(IndexRows, DateTime<Utc>)>> = None;
    let mut matched = Vec::new();
    for candidate in candidates {
        let compiled = subscription::compile(candidate.topic.as_deref(), &candidate.criteria)?;
        if previous_rows.is_none() && compiled.needs_previous(w.res_type, w.interaction) {
            previous_rows = Some(previous_version(tx, w).await?);
        }
        let previous = previous_rows
            .as_ref()
            .and_then(|p| p.as_ref())
            .map(|(rows, at)| Subject {
                res_id: w.res_id,
                last_updated: *at,
                rows,
            });
        let verdict = compiled.evaluate(
            w.res_type,
            w.interaction,
            current.as_ref(),
            previous.as_ref(),
        );
        let yes = match verdict {
            Verdict::Yes => true,
            Verdict::No => false,
            Verdict::AskDatabase(conditions) => matches_in_database(tx, w, conditions).await?,
        };
        if yes {
            matched.push(candidate.sub_id);
        }
    }
    if matched.is_empty() {
        return Ok(());
    }
    outbox::record(
        tx,
        &matched,
        &outbox::Focus {
            res_type: w.res_type,
            res_id: w.res_id,
            version_id: w.version_id,
            interaction: w.interaction.as_str(),
        },
    )
    .await
}

/// The index rows of the version before this one, if it was live.
async fn previous_version(
    tx: &Transaction<'_>,
    w: &Written<'_>,
) -> FhirResult<Option<(IndexRows, DateTime<Utc>)>> {
    if w.interaction == Interaction::Create || w.version_id <= 1 {
        return Ok(None);
    }
    let Some(stored) = store::read_version(tx, w.res_type, w.res_id, w.version_id - 1).await?
    else {
        return Ok(None);
    };
    let Some(json) = stored.json.as_deref() else {
        return Ok(None);
    };
    let resource: Value =
        serde_json::from_str(json).map_err(|e| FhirError::Internal(e.to_string()))?;
    Ok(Some((
        index::extract(w.res_type, &resource),
        stored.last_updated,
    )))
}

/// Conditions the in-memory matcher could not decide, asked of the database,
/// whose index rows already hold this version (same transaction).
async fn matches_in_database(
    tx: &Transaction<'_>,
    w: &Written<'_>,
    mut conditions: Vec<Condition>,
) -> FhirResult<bool> {
    conditions.push(Condition::Id(vec![w.res_id.to_owned()]));
    let plan = SearchPlan {
        resource_type: w.res_type.to_owned(),
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
