//! Escalation of the notification requests nobody acknowledged in time: the
//! timers are rows of `ack_deadline`, so any instance escalates each request
//! once, after restarts and crashes too. The escalation Task goes through the one
//! write path, in the transaction that marks the timer done.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::{notices, notify, write, Change, Rules};
use crate::coordination::{acknowledgement, recipients};
use crate::error::{FhirError, FhirResult};
use crate::store;

/// Requests escalated per transaction.
const BATCH: i64 = 50;

/// Escalates the requests that are due, in one transaction; returns how many
/// timers it ended (escalated, or found acknowledged, ended or deleted meanwhile).
pub async fn escalate_due(pool: &Pool, rules: &Rules) -> FhirResult<usize> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let due = store::acknowledgements::take_due(&tx, BATCH).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let now = store::clock(&tx).await?;
    let mut changes = Vec::new();
    let mut owners: Vec<String> = Vec::new();
    let keys: Vec<(&str, &str)> = due
        .iter()
        .map(|id| ("CommunicationRequest", id.as_str()))
        .collect();
    for version in store::read_current(&tx, &keys).await? {
        let request_id = &version.res_id;
        let Some(request) = version
            .json
            .as_deref()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        else {
            continue;
        };
        let Some(task) = (request["status"] == "active")
            .then(|| {
                acknowledgement::escalation_task(
                    &request,
                    request_id,
                    rules.acks.escalate_after,
                    now,
                )
            })
            .flatten()
        else {
            continue;
        };
        let owner = task["owner"]["reference"].as_str().unwrap_or_default();
        if !owners.iter().any(|o| o == owner) {
            owners.push(owner.to_owned());
        }
        changes.push(Change::create("Task", task));
    }
    // Each owner told through the Subscription kept for its escalations.
    let reached = notices::reachable(&tx, rules, &owners).await?;
    for owner in &owners {
        if let Some(recipient) = reached.get(owner) {
            changes.push(Change::update(
                "Subscription",
                recipients::escalation_subscription_id(owner),
                recipients::escalation_subscription(recipient),
                None,
            ));
        }
    }
    let mut facts = Vec::new();
    write::apply_all(&tx, rules, now, changes, &mut facts)
        .await
        .map_err(|f| f.error)?;
    notify::record_events(&tx, &rules.catalog, &facts).await?;
    store::commit(tx).await?;
    Ok(due.len())
}

/// Escalates what is due every `every`, until the task is aborted.
pub async fn watch_escalations(pool: Pool, rules: std::sync::Arc<Rules>, every: Duration) {
    loop {
        match escalate_due(&pool, &rules).await {
            // More may be due: go on at once.
            Ok(n) if n as i64 == BATCH => continue,
            Ok(_) => {}
            Err(FhirError::Unavailable(_)) => {}
            Err(e) => tracing::error!(error = %e, "escalating unacknowledged notifications"),
        }
        tokio::time::sleep(every).await;
    }
}
