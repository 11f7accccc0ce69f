//! The planner's statistics of Passerelle's own tables, kept current by the
//! server itself: a search plan chosen on statistics from before a bulk load
//! scans whole tables (seconds instead of milliseconds), and a PostgreSQL whose
//! autovacuum is off or behind never refreshes them.

use deadpool_postgres::GenericClient;

use crate::error::FhirResult;

/// Rows changed since a table's last analyze, and its live rows, as
/// `pg_stat_user_tables` counts them; its size in pages as the planner last
/// learnt it (`pg_class.relpages`) and as it is now.
#[derive(Debug, Clone, PartialEq)]
pub struct TableChanges {
    pub table: String,
    pub live_rows: i64,
    pub changed_since_analyze: i64,
    pub pages_analyzed: i64,
    pub pages_now: i64,
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

/// Arbitrary constant naming the advisory lock of the analyzing instance.
const STATISTICS_LOCK: i64 = 0x5041_5353_5354_4154; // "PASSSTAT"

/// The changes of every table of the schema Passerelle lives in.
pub async fn table_changes(client: &impl GenericClient) -> FhirResult<Vec<TableChanges>> {
    let stmt = client
        .prepare_cached(
            "SELECT s.relname::text, s.n_live_tup, s.n_mod_since_analyze, c.relpages::int8,
                    pg_relation_size(c.oid) / current_setting('block_size')::int8
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
        })
        .collect())
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
        }
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
