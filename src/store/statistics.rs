//! The planner's statistics of Passerelle's own tables, kept current by the
//! server itself: a search plan chosen on statistics from before a bulk load
//! scans whole tables (seconds instead of milliseconds), and a PostgreSQL whose
//! autovacuum is off or behind never refreshes them.

use deadpool_postgres::GenericClient;

use crate::error::FhirResult;

/// Rows changed since a table's last analyze, its live and dead rows and the
/// rows inserted since its last vacuum, as `pg_stat_user_tables` counts them;
/// its size in pages as the planner last learnt it (`pg_class.relpages`) and as
/// it is now.
#[derive(Debug, Clone, PartialEq)]
pub struct TableChanges {
    pub table: String,
    pub live_rows: i64,
    pub changed_since_analyze: i64,
    pub pages_analyzed: i64,
    pub pages_now: i64,
    pub dead_rows: i64,
    pub inserted_since_vacuum: i64,
}

/// Whether a table's statistics are stale: autovacuum's default rule (50 rows
/// plus a tenth of the table changed), so that with autovacuum on and keeping up
/// this finds nothing to do; or the table holds data while the planner believes
/// it empty, or has grown by ten pages and a fifth since the planner learnt its
/// size. The counters come from the sessions, which may hold them back a minute
/// under load (PostgreSQL 15 reports them when it can take its locks without
/// waiting); the size is read from the table itself, at once.
pub fn is_stale(t: &TableChanges) -> bool {
    t.changed_since_analyze > 50 + t.live_rows / 10
        || (t.pages_analyzed == 0 && t.pages_now > 0)
        || t.pages_now > t.pages_analyzed + t.pages_analyzed / 5 + 10
}

/// Whether a table needs a vacuum, by autovacuum's default rules: dead rows past
/// 50 and a fifth of the table, or rows inserted since the last vacuum past
/// 1,000 and a fifth (PostgreSQL 13's rule for tables that are mostly appended
/// to, as the version and index tables are: only a vacuum sets their visibility
/// map, without which the covering indexes cannot be read alone; measured at
/// 200,000 patients, a name search 549 ms before, 262 ms after).
pub fn needs_vacuum(t: &TableChanges) -> bool {
    t.dead_rows > 50 + t.live_rows / 5 || t.inserted_since_vacuum > 1_000 + t.live_rows / 5
}

/// Arbitrary constant naming the advisory lock of the analyzing instance.
const STATISTICS_LOCK: i64 = 0x5041_5353_5354_4154; // "PASSSTAT"

/// The changes of every table of the schema Passerelle lives in.
pub async fn table_changes(client: &impl GenericClient) -> FhirResult<Vec<TableChanges>> {
    let stmt = client
        .prepare_cached(
            // n_ins_since_vacuum is PostgreSQL 13's: read by name, 0 before.
            "SELECT s.relname::text, s.n_live_tup, s.n_mod_since_analyze, c.relpages::int8,
                    pg_relation_size(c.oid) / current_setting('block_size')::int8,
                    s.n_dead_tup, coalesce((to_jsonb(s) ->> 'n_ins_since_vacuum')::int8, 0)
               FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
              WHERE s.schemaname = current_schema() ORDER BY s.relname",
        )
        .await?;
    Ok(client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| TableChanges {
            table: r.get(0),
            live_rows: r.get(1),
            changed_since_analyze: r.get(2),
            pages_analyzed: r.get(3),
            pages_now: r.get(4),
            dead_rows: r.get(5),
            inserted_since_vacuum: r.get(6),
        })
        .collect())
}

/// Vacuums (and analyzes) the tables that need it, for a database whose
/// autovacuum is off, and returns their names. `VACUUM` cannot run in a
/// transaction, so no transaction's advisory lock keeps two instances apart:
/// `SKIP_LOCKED` leaves a table another instance is vacuuming to it.
pub async fn vacuum_stale(client: &impl GenericClient) -> FhirResult<Vec<String>> {
    let tables: Vec<String> = table_changes(client)
        .await?
        .into_iter()
        .filter(needs_vacuum)
        .map(|t| t.table)
        .collect();
    if tables.is_empty() {
        return Ok(tables);
    }
    // A large table takes longer than a request's statement bound; the
    // connection's own bound is restored after, whatever happened.
    client.batch_execute("SET statement_timeout = 0").await?;
    let mut vacuumed = Vec::new();
    let mut outcome = Ok(());
    for table in tables {
        let vacuum = format!("VACUUM (ANALYZE, SKIP_LOCKED) {}", quoted(&table));
        if let Err(e) = client.batch_execute(&vacuum).await {
            outcome = Err(e);
            break;
        }
        vacuumed.push(table);
    }
    let restored = client.batch_execute("RESET statement_timeout").await;
    outcome?;
    restored?;
    Ok(vacuumed)
}

/// Analyzes the tables whose statistics are stale and returns their names; none
/// when another instance is at it (one instance analyzes at a time, under a
/// transaction's advisory lock).
pub async fn analyze_stale(client: &mut deadpool_postgres::Object) -> FhirResult<Vec<String>> {
    analyze_where(client, is_stale, false).await
}

/// Analyzes every table of the schema: after a bulk load, whatever the counters
/// (which the loading sessions may not have reported yet) say, after any
/// instance analyzing now.
pub async fn analyze_all(client: &mut deadpool_postgres::Object) -> FhirResult<Vec<String>> {
    analyze_where(client, |_| true, true).await
}

/// Analyzes the tables `wanted` picks under the lock, waiting for it or (without
/// `wait`) giving up when another session holds it.
async fn analyze_where(
    client: &mut deadpool_postgres::Object,
    wanted: fn(&TableChanges) -> bool,
    wait: bool,
) -> FhirResult<Vec<String>> {
    let tx = client.transaction().await?;
    let lock = if wait {
        "SELECT pg_advisory_xact_lock($1) IS NOT NULL"
    } else {
        "SELECT pg_try_advisory_xact_lock($1)"
    };
    let held: bool = tx.query_one(lock, &[&STATISTICS_LOCK]).await?.get(0);
    if !held {
        return Ok(Vec::new());
    }
    let tables: Vec<String> = table_changes(&tx)
        .await?
        .into_iter()
        .filter(wanted)
        .map(|t| t.table)
        .collect();
    // A large table's sample may take longer than a request's statement bound.
    tx.batch_execute("SET LOCAL statement_timeout = 0").await?;
    for table in &tables {
        tx.batch_execute(&format!("ANALYZE {}", quoted(table)))
            .await?;
    }
    tx.commit().await?;
    Ok(tables)
}

/// Whether the database analyzes by itself (`autovacuum`), and counts the
/// changes the server's own analyzing relies on (`track_counts`).
pub async fn database_settings(client: &impl GenericClient) -> FhirResult<(bool, bool)> {
    let row = client
        .query_one(
            "SELECT current_setting('autovacuum') = 'on', current_setting('track_counts') = 'on'",
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

/// A table name as an SQL identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(live_rows: i64, changed_since_analyze: i64) -> TableChanges {
        TableChanges {
            table: "resource".to_owned(),
            live_rows,
            changed_since_analyze,
            pages_analyzed: 100,
            pages_now: 100,
            dead_rows: 0,
            inserted_since_vacuum: 0,
        }
    }

    #[test]
    fn a_table_needs_a_vacuum_past_its_dead_rows_or_its_inserts() {
        let with = |live_rows, dead_rows, inserted_since_vacuum| TableChanges {
            dead_rows,
            inserted_since_vacuum,
            ..table(live_rows, 0)
        };
        assert!(!needs_vacuum(&with(0, 0, 0)));
        // Dead rows: 50 and a fifth.
        assert!(!needs_vacuum(&with(1_000, 250, 0)));
        assert!(needs_vacuum(&with(1_000, 251, 0)));
        // Inserts since the last vacuum: 1,000 and a fifth (a bulk load).
        assert!(!needs_vacuum(&with(10_000, 0, 3_000)));
        assert!(needs_vacuum(&with(10_000, 0, 3_001)));
        assert!(needs_vacuum(&with(0, 0, 100_000)));
    }

    #[test]
    fn a_table_is_stale_past_fifty_rows_and_a_tenth_changed() {
        assert!(!is_stale(&table(0, 50)));
        assert!(is_stale(&table(0, 51)));
        assert!(!is_stale(&table(10_000, 1_050)));
        assert!(is_stale(&table(10_000, 1_051)));
        // A bulk load into an empty table: every row is a change.
        assert!(is_stale(&table(0, 100_000)));
    }

    #[test]
    fn a_table_that_grew_is_stale_before_its_counters_say_so() {
        let grown = |pages_analyzed, pages_now| TableChanges {
            pages_analyzed,
            pages_now,
            ..table(0, 0)
        };
        // Believed empty (created so, or analyzed so), written since: stale at once.
        assert!(is_stale(&grown(0, 1)));
        // Ten pages and a fifth more than the planner knows.
        assert!(!is_stale(&grown(1_000, 1_210)));
        assert!(is_stale(&grown(1_000, 1_211)));
        // Empty and untouched: nothing to do.
        assert!(!is_stale(&grown(0, 0)));
    }

    #[test]
    fn table_names_are_quoted_as_identifiers() {
        assert_eq!(quoted("search_token"), "\"search_token\"");
        assert_eq!(quoted("odd\"name"), "\"odd\"\"name\"");
    }
}
