//! PostgreSQL storage: the versioned resource tables, their index rows, and the SQL
//! of searches and history. Every write happens inside a transaction handed in by
//! the caller, so that one request's changes commit or roll back together.

pub mod embedded;
pub mod export;
mod index_rows;
pub mod migrate;
pub mod outbox;
pub mod pool;
mod search_sql;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Pool, Transaction};
use serde_json::Value;
use tokio_postgres::Row;

use crate::error::{FhirError, FhirResult};
use crate::fhir::datetime::Range;
use crate::search::index::IndexRows;
use crate::search::{Cursor, Include, SearchPlan};

/// How a version came to be: the HTTP verb of the interaction that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn parse(text: &str) -> Method {
        match text {
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            _ => Method::Put,
        }
    }
}

/// One stored version, as read back.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub res_type: String,
    pub res_id: String,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    pub method: Method,
    /// Position in the global change order (history paging cursor).
    pub seq: i64,
    /// The resource's JSON text, `resourceType` first; `None` for a delete.
    pub json: Option<String>,
}

impl StoredVersion {
    pub fn is_deleted(&self) -> bool {
        self.json.is_none()
    }
}

/// The current state of a resource, locked for update.
#[derive(Debug, Clone, Copy)]
pub struct Current {
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    pub deleted: bool,
}

/// A version about to be written.
pub struct NewVersion<'a> {
    pub res_type: &'a str,
    pub res_id: &'a str,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    pub method: Method,
    /// The resource's JSON text; `None` writes a delete tombstone.
    pub json: Option<&'a str>,
    pub index: &'a IndexRows,
}

/// The columns every version query selects, in the order [`version_from_row`] reads.
const VERSION_COLUMNS: &str =
    "v.res_type, v.res_id, v.version_id, v.last_updated, v.method, v.seq, \
     (v.resource - 'resourceType')::text";

/// JSONB sorts keys; FHIR readers expect `resourceType` first, so it is put back
/// in front of the stored text (which the query returns without it).
fn with_type_first(res_type: &str, rest: &str) -> String {
    let inner = rest.trim_start().strip_prefix('{').unwrap_or(rest);
    if inner.trim_start().starts_with('}') {
        format!("{{\"resourceType\": \"{res_type}\"}}")
    } else {
        format!("{{\"resourceType\": \"{res_type}\", {}", inner.trim_start())
    }
}

fn version_from_row(row: &Row) -> StoredVersion {
    let res_type: String = row.get(0);
    let rest: Option<String> = row.get(6);
    let json = rest.map(|rest| with_type_first(&res_type, &rest));
    StoredVersion {
        res_id: row.get(1),
        version_id: row.get(2),
        last_updated: row.get(3),
        method: Method::parse(row.get(4)),
        seq: row.get(5),
        json,
        res_type,
    }
}

/// The newest version of a resource (deleted or not), `None` if it never existed.
#[tracing::instrument(skip(client))]
pub async fn read_latest(
    client: &impl GenericClient,
    res_type: &str,
    res_id: &str,
) -> FhirResult<Option<StoredVersion>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v
         WHERE v.res_type = $1 AND v.res_id = $2 ORDER BY v.version_id DESC LIMIT 1"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let row = client.query_opt(&stmt, &[&res_type, &res_id]).await?;
    Ok(row.as_ref().map(version_from_row))
}

#[tracing::instrument(skip(client))]
pub async fn read_version(
    client: &impl GenericClient,
    res_type: &str,
    res_id: &str,
    version_id: i64,
) -> FhirResult<Option<StoredVersion>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v
         WHERE v.res_type = $1 AND v.res_id = $2 AND v.version_id = $3"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let row = client
        .query_opt(&stmt, &[&res_type, &res_id, &version_id])
        .await?;
    Ok(row.as_ref().map(version_from_row))
}

/// A resource to lock: its type, its id, and whether a resource that does not
/// exist yet gets a placeholder row (an update may create it; a PATCH or a delete
/// may not), so that two racing creates of the same id serialise on it instead
/// of failing on the primary key.
pub struct LockKey<'a> {
    pub res_type: &'a str,
    pub res_id: &'a str,
    pub claim: bool,
}

/// Locks the rows of `keys` for this transaction: the existing rows in (type, id)
/// order, then the claims in that order, so that two calls over overlapping sets
/// mostly wait for each other rather than lock in opposite orders (a transaction
/// that locks in several calls can still deadlock with another: PostgreSQL
/// detects it and the loser answers 409). The current state of each one that has
/// a version, by key.
#[tracing::instrument(skip_all, fields(keys = keys.len()))]
pub async fn lock_all(
    tx: &Transaction<'_>,
    keys: &[LockKey<'_>],
) -> FhirResult<HashMap<(String, String), Current>> {
    let mut found = HashMap::new();
    if keys.is_empty() {
        return Ok(found);
    }
    let read = |rows: Vec<Row>, found: &mut HashMap<(String, String), Current>| {
        for row in rows {
            let current = Current {
                version_id: row.get(2),
                last_updated: row.get(3),
                deleted: row.get(4),
            };
            // A placeholder (version 0) is locked but has no version.
            found.insert((row.get(0), row.get(1)), current);
        }
    };
    let types: Vec<&str> = keys.iter().map(|k| k.res_type).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.res_id).collect();
    let select = tx
        .prepare_cached(
            "SELECT r.res_type, r.res_id, r.version_id, r.last_updated, r.deleted
               FROM resource r JOIN unnest($1::text[], $2::text[]) AS k(t, id)
                 ON r.res_type = k.t AND r.res_id = k.id
              ORDER BY r.res_type, r.res_id FOR UPDATE OF r",
        )
        .await?;
    read(tx.query(&select, &[&types, &ids]).await?, &mut found);
    let (types, ids): (Vec<&str>, Vec<&str>) = keys
        .iter()
        .filter(|k| k.claim && !found.contains_key(&(k.res_type.to_owned(), k.res_id.to_owned())))
        .map(|k| (k.res_type, k.res_id))
        .unzip();
    if !types.is_empty() {
        // The placeholders, or the rows racing creates inserted meanwhile: either way
        // the statement returns them locked (ON CONFLICT DO UPDATE waits and locks).
        let claim = tx
            .prepare_cached(
                "INSERT INTO resource (res_type, res_id, version_id, last_updated, deleted)
                 SELECT t, id, 0, now(), true FROM unnest($1::text[], $2::text[]) AS k(t, id)
                  ORDER BY t, id
                 ON CONFLICT (res_type, res_id) DO UPDATE SET res_type = EXCLUDED.res_type
                 RETURNING res_type, res_id, version_id, last_updated, deleted",
            )
            .await?;
        read(tx.query(&claim, &[&types, &ids]).await?, &mut found);
    }
    found.retain(|_, c| c.version_id > 0);
    Ok(found)
}

/// Writes new versions of several resources (each at most once) in one statement,
/// one round trip: the version rows, the current pointers and every index row
/// (data-modifying CTEs over arrays all run, in one snapshot).
#[tracing::instrument(skip_all, fields(versions = news.len()))]
pub async fn write_versions(tx: &Transaction<'_>, news: &[NewVersion<'_>]) -> FhirResult<()> {
    if news.is_empty() {
        return Ok(());
    }
    let mut q = search_sql::SqlCondition::new();
    let column = |f: fn(&NewVersion<'_>) -> String| news.iter().map(f).collect::<Vec<String>>();
    let t = q.bind(Box::new(column(|n| n.res_type.to_owned())));
    let id = q.bind(Box::new(column(|n| n.res_id.to_owned())));
    let version = q.bind(Box::new(
        news.iter().map(|n| n.version_id).collect::<Vec<i64>>(),
    ));
    let at = q.bind(Box::new(
        news.iter().map(|n| n.last_updated).collect::<Vec<_>>(),
    ));
    let method = q.bind(Box::new(column(|n| n.method.as_str().to_owned())));
    let deleted = q.bind(Box::new(
        news.iter().map(|n| n.json.is_none()).collect::<Vec<bool>>(),
    ));
    let body = q.bind(Box::new(
        news.iter()
            .map(|n| n.json.map(str::to_owned))
            .collect::<Vec<Option<String>>>(),
    ));
    let rows = format!(
        "unnest({t}::text[], {id}::text[], {version}::int8[], {at}::timestamptz[], \
         {method}::text[], {deleted}::bool[], {body}::text[]) AS n(t, id, v, at, m, d, b)"
    );
    let mut ctes = vec![
        format!(
            "v AS (INSERT INTO resource_version
                   (res_type, res_id, version_id, last_updated, method, deleted, resource)
                 SELECT t, id, v, at, m, d, b::jsonb FROM {rows})"
        ),
        format!(
            "c AS (INSERT INTO resource (res_type, res_id, version_id, last_updated, deleted)
                 SELECT t, id, v, at, d FROM {rows}
                 ON CONFLICT (res_type, res_id) DO UPDATE
                 SET version_id = EXCLUDED.version_id, last_updated = EXCLUDED.last_updated,
                     deleted = EXCLUDED.deleted)"
        ),
    ];
    let owners: Vec<index_rows::Owned<'_>> = news
        .iter()
        .map(|n| (n.res_type, n.res_id, n.index))
        .collect();
    ctes.extend(index_rows::ctes(
        &mut q,
        &owners,
        news.iter().any(|n| n.version_id > 1),
    ));
    let sql = format!("WITH {} SELECT 1", ctes.join(", "));
    let stmt = tx.prepare_cached(&sql).await?;
    tx.execute(&stmt, &q.param_refs())
        .await
        .map_err(|e| match e.code() {
            // A create racing another at the same id (the only key a version
            // written here can collide on); the database names it.
            Some(code) if *code == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
                FhirError::Conflict(format!(
                    "a version written here already exists: {}",
                    e.as_db_error()
                        .and_then(|d| d.detail())
                        .unwrap_or("a concurrent write created it")
                ))
            }
            _ => FhirError::from(e),
        })?;
    Ok(())
}

/// A batch of current (not deleted) resources in (type, id) order after `after`,
/// of the given types (all when `None`), locked for the caller's transaction so
/// that no write slips between reading a version and rewriting its index rows.
pub async fn current_batch(
    tx: &Transaction<'_>,
    types: Option<&[String]>,
    after: Option<&(String, String)>,
    limit: usize,
) -> FhirResult<Vec<(String, String, Value)>> {
    let (t, id) = after.cloned().unwrap_or_default();
    let stmt = tx
        .prepare_cached(
            "SELECT r.res_type, r.res_id, v.resource FROM resource r
             JOIN resource_version v USING (res_type, res_id, version_id)
             WHERE NOT r.deleted AND (r.res_type, r.res_id) > ($1, $2)
               AND ($4::text[] IS NULL OR r.res_type = ANY($4))
             ORDER BY r.res_type, r.res_id LIMIT $3 FOR UPDATE OF r",
        )
        .await?;
    let types: Option<Vec<String>> = types.map(<[String]>::to_vec);
    let rows = tx.query(&stmt, &[&t, &id, &(limit as i64), &types]).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let body: tokio_postgres::types::Json<Value> = row.get(2);
            (row.get(0), row.get(1), body.0)
        })
        .collect())
}

/// The current SearchParameter resources, and a fingerprint of their state that
/// changes with any write of one (to notice changes made by another instance).
pub async fn search_parameters(client: &impl GenericClient) -> FhirResult<(Vec<Value>, String)> {
    let stmt = client
        .prepare_cached(
            "SELECT v.resource FROM resource r
             JOIN resource_version v USING (res_type, res_id, version_id)
             WHERE r.res_type = 'SearchParameter' AND NOT r.deleted ORDER BY r.res_id",
        )
        .await?;
    let rows = client.query(&stmt, &[]).await?;
    let resources = rows
        .iter()
        .map(|row| row.get::<_, tokio_postgres::types::Json<Value>>(0).0)
        .collect();
    Ok((resources, search_parameters_fingerprint(client).await?))
}

pub async fn search_parameters_fingerprint(client: &impl GenericClient) -> FhirResult<String> {
    let stmt = client
        .prepare_cached(
            "SELECT count(*)::text || '/' || coalesce(max(last_updated)::text, '') FROM resource
             WHERE res_type = 'SearchParameter'",
        )
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

/// Replaces the index rows of a current resource (reindexing).
pub async fn reindex_resource(
    tx: &Transaction<'_>,
    res_type: &str,
    res_id: &str,
    rows: &IndexRows,
) -> FhirResult<()> {
    index_rows::replace(tx, res_type, res_id, rows).await
}

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
#[tracing::instrument(skip(client))]
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
        // even when transactions commit out of order.
        q.clauses.push(format!("v.last_updated < ({HORIZON})"));
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

/// Current, non-deleted resources matching a search, in the plan's order, at most
/// `limit`, from the plan's cursor; with each, the values of its sort keys (as text,
/// for the next page's cursor).
#[tracing::instrument(skip(client, plan), fields(res_type = %plan.resource_type))]
pub async fn search(
    client: &impl GenericClient,
    plan: &SearchPlan,
    limit: usize,
) -> FhirResult<Vec<(StoredVersion, Vec<Option<String>>)>> {
    let mut query = search_sql::matching(plan);
    let keys = search_sql::sort_keys(&mut query, &plan.sort);
    let key_columns: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!(", {} AS k{i}", k.expr))
        .collect();
    let inner = format!(
        "SELECT r.res_type, r.res_id, r.version_id{key_columns} FROM resource r WHERE {}",
        query.clauses.join(" AND ")
    );
    let mut outer = Vec::new();
    let mut offset = 0;
    match &plan.cursor {
        Cursor::After { res_id, res_type } => {
            let (id, t) = (
                query.bind(Box::new(res_id.clone())),
                query.bind(Box::new(res_type.clone())),
            );
            outer.push(format!("(s.res_id, s.res_type) > ({id}, {t})"));
        }
        Cursor::AfterSorted {
            values,
            res_id,
            res_type,
        } => {
            outer.push(search_sql::after_sorted(
                &mut query, &keys, values, res_id, res_type,
            ));
        }
        Cursor::Offset(n) => offset = *n,
        Cursor::Start => {}
    }
    let mut order: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "s.k{i} {} NULLS LAST",
                if k.descending { "DESC" } else { "ASC" }
            )
        })
        .collect();
    order.push("s.res_id".to_owned());
    order.push("s.res_type".to_owned());
    let key_texts: String = (0..keys.len()).map(|i| format!(", s.k{i}::text")).collect();
    let limit = query.bind(Box::new(limit as i64));
    let offset = query.bind(Box::new(offset as i64));
    let where_sql = if outer.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", outer.join(" AND "))
    };
    let sql = format!(
        "SELECT {VERSION_COLUMNS}{key_texts} FROM ({inner}) s
         JOIN resource_version v ON v.res_type = s.res_type AND v.res_id = s.res_id
                                AND v.version_id = s.version_id
         {where_sql} ORDER BY {} LIMIT {limit} OFFSET {offset}",
        order.join(", ")
    );
    let rows = client.query(&sql, &query.param_refs()).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let keys = (0..keys.len()).map(|i| row.get(7 + i)).collect();
            (version_from_row(row), keys)
        })
        .collect())
}

/// What `$everything` collects around a resource.
pub struct EverythingQuery<'a> {
    pub res_type: &'a str,
    pub res_id: &'a str,
    /// `Type.param` pairs through which a resource belongs (`None`: any reference).
    pub through: Option<Vec<String>>,
    /// `_type`
    pub types: Option<Vec<String>>,
    /// `_since`
    pub since: Option<DateTime<Utc>>,
    /// Keyset: after this (type, id).
    pub after: Option<(String, String)>,
    pub limit: usize,
}

/// Conditions on current resources `r` (`$everything`, `$export`): not deleted, of
/// these types, changed at or after `since`, after `(type, id)` in that order.
fn current_filters(
    sql: &mut search_sql::SqlCondition,
    types: Option<&Vec<String>>,
    since: Option<DateTime<Utc>>,
    after: Option<&(String, String)>,
) -> Vec<String> {
    let mut filters = vec!["NOT r.deleted".to_owned()];
    if let Some(types) = types {
        filters.push(format!(
            "r.res_type = ANY({})",
            sql.bind(Box::new(types.clone()))
        ));
    }
    if let Some(since) = since {
        filters.push(format!("r.last_updated >= {}", sql.bind(Box::new(since))));
    }
    if let Some((t, id)) = after {
        let (t, id) = (
            sql.bind(Box::new(t.clone())),
            sql.bind(Box::new(id.clone())),
        );
        filters.push(format!("(r.res_type, r.res_id) > ({t}, {id})"));
    }
    filters
}

/// The resource itself and the current resources that point to it (through the
/// given parameters), in (type, id) order.
#[tracing::instrument(skip_all, fields(res_type = q.res_type))]
pub async fn everything(
    client: &impl GenericClient,
    q: &EverythingQuery<'_>,
) -> FhirResult<Vec<StoredVersion>> {
    let mut sql = search_sql::SqlCondition::new();
    let (t, id) = (
        sql.bind(Box::new(q.res_type.to_owned())),
        sql.bind(Box::new(q.res_id.to_owned())),
    );
    let through = match &q.through {
        Some(pairs) => format!(
            "AND (x.res_type || '.' || x.param) = ANY({})",
            sql.bind(Box::new(pairs.clone()))
        ),
        None => String::new(),
    };
    let filters = current_filters(&mut sql, q.types.as_ref(), q.since, q.after.as_ref());
    let limit = sql.bind(Box::new(q.limit as i64));
    let from = format!(
        "(SELECT x.res_type, x.res_id FROM search_reference x
           WHERE x.target_type = {t} AND x.target_id = {id} {through}
          UNION SELECT {t}, {id}) m
         JOIN resource r ON r.res_type = m.res_type AND r.res_id = m.res_id"
    );
    current_versions(client, &from, &sql, &filters, &limit).await
}

/// The current versions of the resources `r` of `from`, meeting `filters`, in
/// (type, id) order, `limit` at most (a bound parameter).
async fn current_versions(
    client: &impl GenericClient,
    from: &str,
    sql: &search_sql::SqlCondition,
    filters: &[String],
    limit: &str,
) -> FhirResult<Vec<StoredVersion>> {
    let text = format!(
        "SELECT {VERSION_COLUMNS} FROM {from}
           JOIN resource_version v ON v.res_type = r.res_type AND v.res_id = r.res_id
                                  AND v.version_id = r.version_id
          WHERE {}
          ORDER BY r.res_type, r.res_id LIMIT {limit}",
        filters.join(" AND ")
    );
    let rows = client.query(&text, &sql.param_refs()).await?;
    Ok(rows.iter().map(version_from_row).collect())
}

/// Current resources reached by one `_include`/`_revinclude` from `sources` (all of
/// `include.source_type` for `_include`, of one target type for `_revinclude`).
#[tracing::instrument(skip(client, sources), fields(sources = sources.len()))]
pub async fn included(
    client: &impl GenericClient,
    include: &Include,
    sources_type: &str,
    sources: &[String],
) -> FhirResult<Vec<StoredVersion>> {
    let mut q = search_sql::SqlCondition::new();
    let (source_col, found_col) = if include.reverse {
        ("target", "res")
    } else {
        ("res", "target")
    };
    let t = q.bind(Box::new(sources_type.to_owned()));
    let ids = q.bind(Box::new(sources.to_vec()));
    q.clauses.push(format!(
        "x.{source_col}_type = {t} AND x.{source_col}_id = ANY({ids})"
    ));
    if include.reverse {
        let s = q.bind(Box::new(include.source_type.clone()));
        q.clauses.push(format!("x.res_type = {s}"));
    }
    if let Some(param) = &include.param {
        let p = q.bind(Box::new(param.clone()));
        q.clauses.push(format!("x.param = {p}"));
    }
    if let (Some(target), false) = (&include.target_type, include.reverse) {
        let p = q.bind(Box::new(target.clone()));
        q.clauses.push(format!("x.target_type = {p}"));
    }
    let sql = format!(
        "SELECT DISTINCT {VERSION_COLUMNS} FROM search_reference x
         JOIN resource r ON r.res_type = x.{found_col}_type AND r.res_id = x.{found_col}_id AND NOT r.deleted
         JOIN resource_version v ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version_id = r.version_id
         WHERE {} LIMIT {}",
        q.clauses.join(" AND "),
        MAX_INCLUDED
    );
    let rows = client.query(&sql, &q.param_refs()).await?;
    Ok(rows.iter().map(version_from_row).collect())
}

/// At most this many resources are included in one page (memory bound).
pub const MAX_INCLUDED: usize = 1000;

/// How many current resources match a search.
#[tracing::instrument(skip(client, plan), fields(res_type = %plan.resource_type))]
pub async fn count(client: &impl GenericClient, plan: &SearchPlan) -> FhirResult<i64> {
    let query = search_sql::matching(plan);
    let sql = format!(
        "SELECT count(*) FROM resource r WHERE {}",
        query.clauses.join(" AND ")
    );
    let row = client.query_one(&sql, &query.param_refs()).await?;
    Ok(row.get(0))
}

/// The ids of current resources matching a search (for conditional interactions),
/// at most `limit`.
#[tracing::instrument(skip(client, plan), fields(res_type = %plan.resource_type))]
pub async fn matching_ids(
    client: &impl GenericClient,
    plan: &SearchPlan,
    limit: usize,
) -> FhirResult<Vec<String>> {
    let mut query = search_sql::matching(plan);
    let limit = query.bind(Box::new(limit as i64));
    let sql = format!(
        "SELECT r.res_id FROM resource r WHERE {} ORDER BY r.res_id LIMIT {limit}",
        query.clauses.join(" AND ")
    );
    let rows = client.query(&sql, &query.param_refs()).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Versions by (type, id, version), in one query; those that exist.
pub async fn read_versions(
    client: &impl GenericClient,
    keys: &[(&str, &str, i64)],
) -> FhirResult<Vec<StoredVersion>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v
           JOIN unnest($1::text[], $2::text[], $3::int8[]) AS k(t, id, n)
             ON v.res_type = k.t AND v.res_id = k.id AND v.version_id = k.n"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let types: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let versions: Vec<i64> = keys.iter().map(|k| k.2).collect();
    let rows = client.query(&stmt, &[&types, &ids, &versions]).await?;
    Ok(rows.iter().map(version_from_row).collect())
}

/// Commits a write. A connection lost during the commit leaves its outcome
/// unknown, and the client is told so (a loss before it means nothing was saved).
pub async fn commit(tx: Transaction<'_>) -> FhirResult<()> {
    tx.commit().await.map_err(|e| {
        if crate::error::is_connection_lost(&e) {
            FhirError::CommitUnknown(e.to_string())
        } else {
            e.into()
        }
    })
}

/// The database's clock, for the instants of new versions. The transaction gets its
/// id first, so that from this instant on it counts as in flight for the history
/// horizon (see `history`) and none of its versions can be stamped before it.
pub async fn clock(tx: &Transaction<'_>) -> FhirResult<DateTime<Utc>> {
    let stmt = tx
        .prepare_cached("SELECT pg_current_xact_id()::text, clock_timestamp()")
        .await?;
    Ok(tx.query_one(&stmt, &[]).await?.get(1))
}

/// Takes a transaction-scoped lock on a key (e.g. the criteria of a conditional
/// create), so that two requests with the same criteria run one after the other.
pub async fn lock_key(tx: &Transaction<'_>, key: &str) -> FhirResult<()> {
    let stmt = tx
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .await?;
    tx.execute(&stmt, &[&key]).await?;
    Ok(())
}

/// True when the database answers and has this binary's schema.
pub async fn is_ready(pool: &Pool) -> bool {
    let Ok(client) = pool.get().await else {
        return false;
    };
    matches!(migrate::current_version(&client).await, Ok(v) if v >= migrate::latest_version())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_type_goes_first() {
        assert_eq!(
            with_type_first("Patient", r#"{"id": "1", "active": true}"#),
            r#"{"resourceType": "Patient", "id": "1", "active": true}"#
        );
        assert_eq!(
            with_type_first("Basic", "{}"),
            r#"{"resourceType": "Basic"}"#
        );
    }
}
