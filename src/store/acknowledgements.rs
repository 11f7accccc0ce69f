//! The escalation timers of notification requests (`ack_deadline`).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use crate::error::FhirResult;

/// Starts the timers of new notification requests: `(id, due)`.
pub async fn schedule(
    client: &impl GenericClient,
    due: &[(String, DateTime<Utc>)],
) -> FhirResult<()> {
    if due.is_empty() {
        return Ok(());
    }
    let (ids, at): (Vec<&str>, Vec<DateTime<Utc>>) =
        due.iter().map(|(id, at)| (id.as_str(), *at)).unzip();
    let stmt = client
        .prepare_cached(
            "INSERT INTO ack_deadline (request_id, due_at)
             SELECT * FROM unnest($1::text[], $2::timestamptz[])
             ON CONFLICT (request_id) DO NOTHING",
        )
        .await?;
    client.execute(&stmt, &[&ids, &at]).await?;
    Ok(())
}

/// Stops the timer of an acknowledged request.
pub async fn acknowledged(client: &impl GenericClient, request_id: &str) -> FhirResult<()> {
    let stmt = client
        .prepare_cached("DELETE FROM ack_deadline WHERE request_id = $1")
        .await?;
    client.execute(&stmt, &[&request_id]).await?;
    Ok(())
}

/// Takes up to `limit` requests due and not escalated, marking them escalated,
/// in one statement of the caller's transaction: rows another instance holds are
/// skipped, and a rollback leaves them due.
pub async fn take_due(client: &impl GenericClient, limit: i64) -> FhirResult<Vec<String>> {
    let stmt = client
        .prepare_cached(
            "UPDATE ack_deadline SET escalated_at = now()
             WHERE request_id IN (
                 SELECT request_id FROM ack_deadline
                 WHERE escalated_at IS NULL AND due_at <= now()
                 ORDER BY due_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING request_id",
        )
        .await?;
    let rows = client.query(&stmt, &[&limit]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
