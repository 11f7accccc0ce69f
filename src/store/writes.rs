//! The write statements: row locks in (type, id) order, every version, current
//! row and index row of a batch in one statement, the database clock, advisory
//! locks on criteria, and the commit that says when its outcome is unknown.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::Row;

use crate::error::{FhirError, FhirResult};
use crate::search::index::IndexRows;

use super::{index_rows, search_sql, Current, Method};

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
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.lock_all",
    level = "debug",
    skip_all
)]
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
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.write_versions",
    level = "debug",
    skip_all
)]
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

/// Commits a write. A connection lost during the commit leaves its outcome
/// unknown, and the client is told so (a loss before it means nothing was saved).
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.commit",
    level = "debug",
    skip_all
)]
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
///
/// It also puts the writing transaction on generic plans without sequential scans
/// (`SET LOCAL`, in the same statement). The write path's statements have fixed
/// shapes over arrays of keys: PostgreSQL kept choosing custom plans for them and
/// planned every execution again, its largest single cost; a generic plan made
/// while a table was small (a fresh database being loaded) scanned it whole until
/// autovacuum next analysed it, and every statement here is a lookup by key, so
/// sequential scans are never the plan wanted. Measured (README, the discharge
/// workflow): Encounter updates 759 → 1,418/s, discharges 291 → 515/s, patients
/// loaded with their GP 302 → 401/s. Searches outside writes keep custom plans,
/// which skewed values need.
pub async fn clock(tx: &Transaction<'_>) -> FhirResult<DateTime<Utc>> {
    let stmt = tx
        .prepare_cached(
            "SELECT pg_current_xact_id()::text, clock_timestamp(),
                    set_config('plan_cache_mode', 'force_generic_plan', true),
                    set_config('enable_seqscan', 'off', true)",
        )
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
