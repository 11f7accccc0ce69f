//! The subscription tables: subscriptions in force and their candidate keys
//! (written with the Subscription resource), the outbox of events (written with the
//! resource that caused them), and the delivery worker's leases and outcomes.

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use serde_json::Value;

use crate::error::FhirResult;

/// A subscription as the write path files it.
pub struct Registration<'a> {
    pub sub_id: &'a str,
    pub active: bool,
    pub topic: Option<&'a str>,
    pub criteria: &'a [String],
    /// What an NdE subscriber selects (`subscription::Spec::selects`).
    pub selects: &'a [String],
    pub channel: &'a Value,
    pub ends_at: Option<DateTime<Utc>>,
    pub handshake: bool,
    pub heartbeat_secs: Option<i32>,
    /// `(resource type, key)`; only filed while active.
    pub keys: &'a [(String, String)],
    /// The subscription keeps the signing secret it has (written again without
    /// one); otherwise the channel's is in force.
    pub keeps_secret: bool,
    /// Who wrote it (`Candidate::owner`); a write by no client (the server's
    /// own, or with authentication off) keeps the owner it has.
    pub owner: Option<&'a serde_json::Value>,
}

/// Files (or refiles) a subscription in the write's transaction. Reactivation
/// clears the failure count, so that a subscription put back to `active` after an
/// `error` is tried again at once.
pub async fn register(tx: &Transaction<'_>, r: &Registration<'_>) -> FhirResult<()> {
    let upsert = tx
        .prepare_cached(
            "INSERT INTO subscription (sub_id, active, topic, criteria, channel, ends_at, handshake_due, heartbeat_secs, selects, owner)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $11)
             ON CONFLICT (sub_id) DO UPDATE SET owner = coalesce(EXCLUDED.owner, subscription.owner),
               active = EXCLUDED.active, topic = EXCLUDED.topic, criteria = EXCLUDED.criteria, selects = EXCLUDED.selects,
               channel = CASE WHEN $10 AND subscription.channel ? 'secret'
                              THEN jsonb_set(EXCLUDED.channel, '{secret}', subscription.channel -> 'secret')
                              ELSE EXCLUDED.channel END,
               ends_at = EXCLUDED.ends_at, heartbeat_secs = EXCLUDED.heartbeat_secs,
               handshake_due = subscription.handshake_due OR EXCLUDED.handshake_due,
               attempts = CASE WHEN EXCLUDED.active AND NOT subscription.active THEN 0 ELSE subscription.attempts END,
               last_error = CASE WHEN EXCLUDED.active AND NOT subscription.active THEN NULL ELSE subscription.last_error END,
               next_attempt_at = CASE WHEN EXCLUDED.active AND NOT subscription.active THEN now() ELSE subscription.next_attempt_at END",
        )
        .await?;
    tx.execute(
        &upsert,
        &[
            &r.sub_id,
            &r.active,
            &r.topic,
            &r.criteria,
            r.channel,
            &r.ends_at,
            &(r.active && r.handshake),
            &r.heartbeat_secs,
            &r.selects,
            &r.keeps_secret,
            &r.owner,
        ],
    )
    .await?;
    let clear = tx
        .prepare_cached("DELETE FROM subscription_key WHERE sub_id = $1")
        .await?;
    tx.execute(&clear, &[&r.sub_id]).await?;
    if r.active {
        let (types, keys): (Vec<&str>, Vec<&str>) =
            r.keys.iter().map(|(t, k)| (t.as_str(), k.as_str())).unzip();
        let file = tx
            .prepare_cached(
                "INSERT INTO subscription_key (res_type, match_key, sub_id)
                 SELECT t, k, $3 FROM unnest($1::text[], $2::text[]) AS u(t, k)",
            )
            .await?;
        tx.execute(&file, &[&types, &keys, &r.sub_id]).await?;
    }
    Ok(())
}

/// The NdE subscriptions in force and the declarations each selects.
pub async fn selecting(client: &impl GenericClient) -> FhirResult<Vec<(String, Vec<String>)>> {
    let select = client
        .prepare_cached(
            "SELECT sub_id, selects FROM subscription
             WHERE active AND cardinality(selects) > 0 ORDER BY sub_id",
        )
        .await?;
    Ok(client
        .query(&select, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// A deleted Subscription stops matching; its events stay for the delivery log.
pub async fn unregister(tx: &Transaction<'_>, sub_id: &str) -> FhirResult<()> {
    let stmt = tx
        .prepare_cached(
            "WITH gone AS (DELETE FROM subscription_key WHERE sub_id = $1)
             UPDATE subscription SET active = false WHERE sub_id = $1",
        )
        .await?;
    tx.execute(&stmt, &[&sub_id]).await?;
    Ok(())
}

/// A subscription that may match a write, with the type and key it was found
/// under.
pub struct Candidate {
    pub res_type: String,
    pub match_key: String,
    pub sub_id: String,
    pub topic: Option<String>,
    pub criteria: Vec<String>,
    /// The client that wrote the subscription (`auth::Principal`): it is told only
    /// what it may see. None: written with authentication off, or by the server.
    pub owner: Option<serde_json::Value>,
}

const CANDIDATE_COLUMNS: &str = "k.res_type, k.match_key, s.sub_id, s.topic, s.criteria, s.owner
           FROM subscription_key k JOIN subscription s ON s.sub_id = k.sub_id
          WHERE s.active AND (s.ends_at IS NULL OR s.ends_at > now())";

fn candidate_from_row(r: &tokio_postgres::Row) -> Candidate {
    Candidate {
        res_type: r.get(0),
        match_key: r.get(1),
        sub_id: r.get(2),
        topic: r.get(3),
        criteria: r.get(4),
        owner: r.get(5),
    }
}

/// The active subscriptions filed under one of `wanted` (type, key) pairs, in one
/// query for every type a write touches. (A separate statement from
/// [`candidates_of_type`]: a generic plan of `$x IS NULL OR …` would scan every
/// key of the type, whatever the keys given.)
pub async fn candidates_under(
    tx: &Transaction<'_>,
    wanted: &[(&str, &str)],
) -> FhirResult<Vec<Candidate>> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let (types, keys): (Vec<&str>, Vec<&str>) = wanted.iter().copied().unzip();
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {CANDIDATE_COLUMNS}
               AND (k.res_type, k.match_key) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
        ))
        .await?;
    let rows = tx.query(&stmt, &[&types, &keys]).await?;
    Ok(rows.iter().map(candidate_from_row).collect())
}

/// Every active subscription filed for `res_type`, whatever its key.
pub async fn candidates_of_type(
    tx: &Transaction<'_>,
    res_type: &str,
) -> FhirResult<Vec<Candidate>> {
    let stmt = tx
        .prepare_cached(&format!("SELECT {CANDIDATE_COLUMNS} AND k.res_type = $1"))
        .await?;
    let rows = tx.query(&stmt, &[&res_type]).await?;
    Ok(rows.iter().map(candidate_from_row).collect())
}

/// An active subscription's topic and criteria.
pub struct Active {
    pub sub_id: String,
    pub topic: Option<String>,
    pub criteria: Vec<String>,
}

/// Every active subscription: to check that their criteria still compile after
/// the search parameters change.
pub async fn active(client: &impl GenericClient) -> FhirResult<Vec<Active>> {
    let rows = client
        .query(
            "SELECT sub_id, topic, criteria FROM subscription WHERE active ORDER BY sub_id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Active {
            sub_id: r.get(0),
            topic: r.get(1),
            criteria: r.get(2),
        })
        .collect())
}

/// An event: the subscription and the write that caused it.
pub struct Focus<'a> {
    pub sub_id: &'a str,
    pub res_type: &'a str,
    pub res_id: &'a str,
    pub version_id: i64,
    pub interaction: &'a str,
}

/// Records events in the writes' transaction, in one statement.
pub async fn record(tx: &Transaction<'_>, events: &[Focus<'_>]) -> FhirResult<()> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO subscription_event (sub_id, focus_type, focus_id, focus_version, interaction)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[])",
        )
        .await?;
    let subs: Vec<&str> = events.iter().map(|e| e.sub_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.res_type).collect();
    let ids: Vec<&str> = events.iter().map(|e| e.res_id).collect();
    let versions: Vec<i64> = events.iter().map(|e| e.version_id).collect();
    let interactions: Vec<&str> = events.iter().map(|e| e.interaction).collect();
    tx.execute(&stmt, &[&subs, &types, &ids, &versions, &interactions])
        .await?;
    Ok(())
}

/// A subscription leased by a worker, with what it needs to deliver.
#[derive(Debug)]
pub struct Leased {
    pub sub_id: String,
    pub channel: Value,
    pub attempts: i32,
    pub handshake_due: bool,
    pub events_since_start: i64,
}

const LEASED_COLUMNS: &str =
    "s.sub_id, s.channel, s.attempts, s.handshake_due, s.events_since_start";

fn leased(row: &tokio_postgres::Row) -> Leased {
    Leased {
        sub_id: row.get(0),
        channel: row.get(1),
        attempts: row.get(2),
        handshake_due: row.get(3),
        events_since_start: row.get(4),
    }
}

/// Leases up to `limit` active subscriptions with something due (events, a
/// handshake, or with `heartbeats`, a heartbeat), none leased by a live worker.
/// A lease expires by itself: a worker that dies gives its subscriptions back.
/// With them, how many subscriptions had something due when it looked.
pub async fn lease(
    client: &impl GenericClient,
    worker: &str,
    lease_secs: f64,
    limit: i64,
    heartbeats: bool,
    bound_websockets: &[String],
) -> FhirResult<(Vec<Leased>, usize)> {
    // The few subscriptions with work, from the partial indexes (pending events,
    // handshakes, heartbeats), then each by its key: whatever the statistics say,
    // a lease never scans every subscription.
    let with_work = if heartbeats {
        "SELECT sub_id FROM subscription
          WHERE heartbeat_secs IS NOT NULL
            AND coalesce(last_sent_at, '-infinity') + make_interval(secs => heartbeat_secs) <= now()
          LIMIT 1000"
    } else {
        "(SELECT DISTINCT sub_id FROM subscription_event WHERE status = 'pending' LIMIT 1000)
         UNION SELECT sub_id FROM subscription WHERE handshake_due"
    };
    let find = client.prepare_cached(with_work).await?;
    let ids: Vec<String> = client
        .query(&find, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if ids.is_empty() {
        return Ok((Vec::new(), 0));
    }
    let stmt = client
        .prepare_cached(&format!(
            "WITH due AS (
               SELECT s.sub_id FROM subscription s
                WHERE s.sub_id = ANY($4) AND s.active AND s.next_attempt_at <= now()
                  -- A websocket subscription is delivered where its socket is bound.
                  AND (NOT coalesce((s.channel ->> 'websocket')::boolean, false) OR s.sub_id = ANY($5))
                  AND (s.leased_until IS NULL OR s.leased_until < now())
                ORDER BY s.next_attempt_at LIMIT $3 FOR UPDATE OF s SKIP LOCKED)
             UPDATE subscription s SET leased_by = $1, leased_until = now() + make_interval(secs => $2)
               FROM due WHERE s.sub_id = due.sub_id
             RETURNING {LEASED_COLUMNS}"
        ))
        .await?;
    let rows = client
        .query(
            &stmt,
            &[&worker, &lease_secs, &limit, &ids, &bound_websockets],
        )
        .await?;
    Ok((rows.iter().map(leased).collect(), ids.len()))
}

/// Who wrote a subscription (`Candidate::owner`): `None` when it is not filed,
/// `Some(None)` when no client did (the server, or authentication off).
pub async fn owner_of(
    client: &impl GenericClient,
    sub_id: &str,
) -> FhirResult<Option<Option<serde_json::Value>>> {
    let stmt = client
        .prepare_cached("SELECT owner FROM subscription WHERE sub_id = $1")
        .await?;
    Ok(client
        .query_opt(&stmt, &[&sub_id])
        .await?
        .map(|row| row.get(0)))
}

/// Active subscriptions whose `end` has passed (they already match nothing).
pub async fn ended(client: &impl GenericClient) -> FhirResult<Vec<String>> {
    let stmt = client
        .prepare_cached(
            "SELECT sub_id FROM subscription WHERE active AND ends_at <= now() LIMIT 100",
        )
        .await?;
    Ok(client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Extends a lease the worker still holds; false when it lost it.
pub async fn renew(
    client: &impl GenericClient,
    worker: &str,
    sub_id: &str,
    lease_secs: f64,
) -> FhirResult<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE subscription SET leased_until = now() + make_interval(secs => $3)
              WHERE sub_id = $2 AND leased_by = $1",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&worker, &sub_id, &lease_secs])
        .await?
        == 1)
}

pub async fn release(client: &impl GenericClient, worker: &str, sub_id: &str) -> FhirResult<()> {
    let stmt = client
        .prepare_cached(
            "UPDATE subscription SET leased_by = NULL, leased_until = NULL
              WHERE sub_id = $2 AND leased_by = $1",
        )
        .await?;
    client.execute(&stmt, &[&worker, &sub_id]).await?;
    Ok(())
}

/// Gives back every lease of the workers of `instance` (ids `{instance}-{n}`),
/// when it stops: another instance takes them at once instead of when they expire.
pub async fn release_instance(client: &impl GenericClient, instance: &str) -> FhirResult<u64> {
    let prefix = format!("{instance}-%");
    Ok(client
        .execute(
            "UPDATE subscription SET leased_by = NULL, leased_until = NULL
              WHERE leased_by LIKE $1",
            &[&prefix],
        )
        .await?)
}

/// Numbers the subscription's committed, unnumbered events in the order they are
/// seen (commit order, as far as one worker can tell), after the last number
/// given. Only the lease holder numbers, so numbers are gap-free and unique.
/// Returns the new `events_since_start`.
pub async fn number_events(client: &impl GenericClient, sub_id: &str) -> FhirResult<i64> {
    let stmt = client
        .prepare_cached(
            "WITH todo AS (
               SELECT seq, row_number() OVER (ORDER BY seq) AS n FROM subscription_event
                WHERE sub_id = $1 AND event_number IS NULL),
             base AS (
               UPDATE subscription SET events_since_start = events_since_start + (SELECT count(*) FROM todo)
                WHERE sub_id = $1
               RETURNING events_since_start - (SELECT count(*) FROM todo) AS first, events_since_start),
             numbered AS (
               UPDATE subscription_event e SET event_number = base.first + todo.n
                 FROM todo, base WHERE e.seq = todo.seq)
             SELECT events_since_start FROM base",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&sub_id]).await?;
    Ok(row.map_or(0, |r| r.get(0)))
}

/// One recorded event.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: i64,
    pub event_number: i64,
    pub focus_type: String,
    pub focus_id: String,
    pub focus_version: i64,
    pub interaction: String,
    pub recorded_at: DateTime<Utc>,
    pub status: String,
    pub attempts: i32,
    pub delivered_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

const EVENT_COLUMNS: &str = "seq, event_number, focus_type, focus_id, focus_version, interaction, \
     recorded_at, status, attempts, delivered_at, last_error";

fn event(row: &tokio_postgres::Row) -> Event {
    Event {
        seq: row.get(0),
        event_number: row.get(1),
        focus_type: row.get(2),
        focus_id: row.get(3),
        focus_version: row.get(4),
        interaction: row.get(5),
        recorded_at: row.get(6),
        status: row.get(7),
        attempts: row.get(8),
        delivered_at: row.get(9),
        last_error: row.get(10),
    }
}

/// The oldest undelivered numbered events of a subscription, in number order.
pub async fn pending(
    client: &impl GenericClient,
    sub_id: &str,
    limit: i64,
) -> FhirResult<Vec<Event>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM subscription_event
              WHERE sub_id = $1 AND status = 'pending' AND event_number IS NOT NULL
              ORDER BY event_number LIMIT $2"
        ))
        .await?;
    let rows = client.query(&stmt, &[&sub_id, &limit]).await?;
    Ok(rows.iter().map(event).collect())
}

/// Numbered events of a subscription between two numbers (inclusive), for
/// `$events` and the delivery log.
pub async fn events(
    client: &impl GenericClient,
    sub_id: &str,
    from: i64,
    to: i64,
    limit: i64,
) -> FhirResult<Vec<Event>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM subscription_event
              WHERE sub_id = $1 AND event_number BETWEEN $2 AND $3
              ORDER BY event_number LIMIT $4"
        ))
        .await?;
    let rows = client.query(&stmt, &[&sub_id, &from, &to, &limit]).await?;
    Ok(rows.iter().map(event).collect())
}

/// A notification reached the endpoint: its events are delivered, the failure
/// count is reset.
pub async fn delivered(
    client: &impl GenericClient,
    sub_id: &str,
    seqs: &[i64],
    handshake: bool,
) -> FhirResult<()> {
    let stmt = client
        .prepare_cached(
            "WITH done AS (
               UPDATE subscription_event SET status = 'delivered', delivered_at = clock_timestamp(),
                      attempts = attempts + 1, last_error = NULL
                WHERE seq = ANY($2))
             UPDATE subscription SET attempts = 0, last_error = NULL, last_sent_at = clock_timestamp(),
                    handshake_due = handshake_due AND NOT $3
              WHERE sub_id = $1",
        )
        .await?;
    client.execute(&stmt, &[&sub_id, &seqs, &handshake]).await?;
    Ok(())
}

/// A notification failed: the subscription waits `retry_secs` before the next
/// attempt. With `give_up`, its pending events are marked failed.
pub async fn failed(
    client: &impl GenericClient,
    sub_id: &str,
    seqs: &[i64],
    error: &str,
    retry_secs: f64,
    give_up: bool,
) -> FhirResult<()> {
    let stmt = client
        .prepare_cached(
            "WITH tried AS (
               UPDATE subscription_event SET attempts = attempts + 1, last_error = $3,
                      status = CASE WHEN $5 THEN 'failed' ELSE status END
                WHERE seq = ANY($2) OR ($5 AND sub_id = $1 AND status = 'pending'))
             UPDATE subscription SET attempts = attempts + 1, last_error = $3,
                    next_attempt_at = now() + make_interval(secs => $4),
                    leased_by = NULL, leased_until = NULL
              WHERE sub_id = $1",
        )
        .await?;
    client
        .execute(&stmt, &[&sub_id, &seqs, &error, &retry_secs, &give_up])
        .await?;
    Ok(())
}

/// A token that binds a websocket to a subscription until `expires_at`.
pub async fn insert_ws_token(
    client: &impl GenericClient,
    token: &str,
    sub_id: &str,
    expires_at: DateTime<Utc>,
) -> FhirResult<()> {
    let stmt = client
        .prepare_cached(
            "WITH old AS (DELETE FROM subscription_ws_token WHERE expires_at < now())
             INSERT INTO subscription_ws_token (token, sub_id, expires_at) VALUES ($1, $2, $3)",
        )
        .await?;
    client
        .execute(&stmt, &[&token, &sub_id, &expires_at])
        .await?;
    Ok(())
}

/// The subscription a token binds, while it is valid.
pub async fn ws_token_subscription(
    client: &impl GenericClient,
    token: &str,
) -> FhirResult<Option<String>> {
    let stmt = client
        .prepare_cached(
            "SELECT sub_id FROM subscription_ws_token WHERE token = $1 AND expires_at > now()",
        )
        .await?;
    Ok(client.query_opt(&stmt, &[&token]).await?.map(|r| r.get(0)))
}

/// Delivery state of one subscription, for `$status`.
pub struct Status {
    pub active: bool,
    pub channel: Value,
    pub events_since_start: i64,
    pub last_error: Option<String>,
    /// Recorded events not yet numbered (committed after the worker last looked).
    pub unnumbered: i64,
}

pub async fn status(client: &impl GenericClient, sub_id: &str) -> FhirResult<Option<Status>> {
    let stmt = client
        .prepare_cached(
            "SELECT s.active, s.events_since_start, s.last_error, s.channel,
                    (SELECT count(*) FROM subscription_event e WHERE e.sub_id = s.sub_id AND e.event_number IS NULL)
               FROM subscription s WHERE s.sub_id = $1",
        )
        .await?;
    let row = client.query_opt(&stmt, &[&sub_id]).await?;
    Ok(row.map(|r| Status {
        active: r.get(0),
        events_since_start: r.get(1),
        last_error: r.get(2),
        channel: r.get(3),
        unnumbered: r.get(4),
    }))
}
