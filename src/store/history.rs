//! History queries, bounded by the horizon of transactions still in flight (see
//! docs/sync.md).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use crate::error::FhirResult;
use crate::fhir::datetime::Range;

use super::{search_sql, version_from_row, StoredVersion, VERSION_COLUMNS};

/// Which versions a history request wants; `None` fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub res_type: Option<String>,
    pub res_id: Option<String>,
    /// Versions written at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Versions that were current at some point in this range.
    pub at: Option<Range>,
    /// Paging cursor: versions strictly older than this (last_updated, seq).
    pub before: Option<(DateTime<Utc>, i64)>,
    pub count: usize,
}

/// The start of the oldest write transaction in flight (other than the caller's),
/// or now: no version stamped before it can still appear.
pub(crate) const HORIZON: &str = "SELECT coalesce(min(a.xact_start), clock_timestamp())
      FROM pg_stat_activity a
     WHERE a.backend_xid IS NOT NULL AND a.datname = current_database()
       AND a.pid <> pg_backend_pid()";

/// Versions newest first, at most `count`.
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.history",
    level = "debug",
    skip_all
)]
pub async fn history(
    client: &impl GenericClient,
    filter: &HistoryFilter,
) -> FhirResult<Vec<StoredVersion>> {
    let mut q = search_sql::SqlCondition::new();
    if let Some(t) = &filter.res_type {
        let p = q.bind(Box::new(t.clone()));
        q.clauses.push(format!("v.res_type = {p}"));
    }
    if let Some(id) = &filter.res_id {
        let p = q.bind(Box::new(id.clone()));
        q.clauses.push(format!("v.res_id = {p}"));
    }
    if let Some(since) = filter.since {
        let p = q.bind(Box::new(since));
        q.clauses.push(format!("v.last_updated >= {p}"));
    }
    if let Some(at) = filter.at {
        let high = q.bind(Box::new(at.high));
        let low = q.bind(Box::new(at.low));
        q.clauses.push(format!(
            "v.last_updated < {high} AND NOT EXISTS (SELECT 1 FROM resource_version n
               WHERE n.res_type = v.res_type AND n.res_id = v.res_id
                 AND n.version_id = v.version_id + 1 AND n.last_updated <= {low})"
        ));
    }
    if let Some((t, seq)) = filter.before {
        let t = q.bind(Box::new(t));
        let seq = q.bind(Box::new(seq));
        q.clauses
            .push(format!("(v.last_updated, v.seq) < ({t}, {seq})"));
    }
    if filter.res_id.is_none() {
        // The horizon of type and system history: a write transaction still in
        // flight may yet commit versions stamped from its start on, so nothing at or
        // after the start of the oldest one is shown. Every version shown is then
        // final: a client that asks again `_since` the last one it saw misses none,
        // even when transactions commit out of order. The horizon is read by a
        // statement of its own, before the versions: as a subquery it was read after
        // the query's snapshot was taken, and a transaction committing in between
        // was neither in flight nor visible (a version could be skipped).
        let horizon: DateTime<Utc> = client.query_one(HORIZON, &[]).await?.get(0);
        let p = q.bind(Box::new(horizon));
        q.clauses.push(format!("v.last_updated < {p}"));
    }
    let limit = q.bind(Box::new(filter.count as i64));
    let where_sql = if q.clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", q.clauses.join(" AND "))
    };
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v {where_sql}
         ORDER BY v.last_updated DESC, v.seq DESC LIMIT {limit}"
    );
    let rows = client.query(&sql, &q.param_refs()).await?;
    Ok(rows.iter().map(version_from_row).collect())
}
