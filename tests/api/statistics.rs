//! The planner's statistics of the server's tables kept current by the server
//! itself (the shared PostgreSQL here runs without autovacuum).

use std::time::Duration;

use serde_json::json;

use crate::support::{fresh_database, json_of, test_options, TestServer};

/// When each table was last analyzed by a manual `ANALYZE` (the server's own),
/// by name; `None` for never.
pub async fn analyzed(
    client: &impl tokio_postgres::GenericClient,
) -> std::collections::HashMap<String, Option<std::time::SystemTime>> {
    client
        .query(
            "SELECT relname::text, last_analyze FROM pg_stat_user_tables WHERE schemaname = current_schema()",
            &[],
        )
        .await
        .expect("pg_stat_user_tables")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn tables_a_large_bundle_changed_are_analyzed_and_the_others_left_alone() {
    let mut options = test_options();
    options.jobs.analyze_every = Some(Duration::from_millis(200));
    let s = TestServer::start_on(fresh_database().await, options).await;
    let entries: Vec<_> = (0..400)
        .map(|n| {
            json!({"resource": {"resourceType": "Patient",
                "identifier": [{"system": "urn:example:mrn", "value": format!("mrn-{n}")}],
                "name": [{"family": format!("Martin{n}")}]},
             "request": {"method": "POST", "url": "Patient"}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    json_of(s.post_json("", &bundle).await, 200).await;

    let client = s.pool.get().await.expect("connection");
    // The sessions report their counts within seconds (ten at most once idle),
    // the watcher looks five times a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let written = [
        "resource",
        "resource_version",
        "search_token",
        "search_string",
    ];
    // The planner knows the rows once an analyze ran after the Bundle committed
    // (one that ran while it was being written saw none of them, and the next
    // follows when the sessions report its changes).
    let estimated = || async {
        let rows: f32 = client
            .query_one(
                "SELECT reltuples FROM pg_class WHERE relname = 'resource' AND relnamespace = current_schema()::regnamespace",
                &[],
            )
            .await
            .expect("reltuples")
            .get(0);
        rows
    };
    let tables = loop {
        let tables = analyzed(&**client).await;
        if written
            .iter()
            .all(|t| tables.get(*t).is_some_and(|a| a.is_some()))
            && estimated().await >= 400.0
        {
            break tables;
        }
        if std::time::Instant::now() > deadline {
            let changes = passerelle::store::statistics::table_changes(&client)
                .await
                .expect("changes");
            panic!(
                "not analyzed: {tables:?}; rows estimated: {}; changes seen: {changes:?}",
                estimated().await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Nothing was written there: nothing to analyze.
    for untouched in ["export_job", "ack_deadline", "search_quantity"] {
        assert_eq!(tables.get(untouched), Some(&None), "{untouched}");
    }
}

/// Where autovacuum is off, the server vacuums what a bulk load appended: the
/// visibility map set (the covering indexes read alone), the connection's
/// statement bound restored after.
#[tokio::test]
async fn tables_a_bulk_load_appended_to_are_vacuumed() {
    let s = TestServer::start_on(fresh_database().await, test_options()).await;
    let client = s.pool.get().await.expect("connection");
    // As on a database whose autovacuum is off (the test cluster's is on).
    client
        .batch_execute("ALTER TABLE resource SET (autovacuum_enabled = false)")
        .await
        .expect("autovacuum off for the table");
    let entries: Vec<_> = (0..1_500)
        .map(|n| {
            json!({"resource": {"resourceType": "Patient", "name": [{"family": format!("Vidal{n}")}]},
             "request": {"method": "POST", "url": "Patient"}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    json_of(s.post_json("", &bundle).await, 200).await;

    let before = statement_bound(&**client).await;
    // The sessions report their inserts within seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let vacuumed = passerelle::store::statistics::vacuum_stale(&client)
            .await
            .expect("vacuum");
        if vacuumed.iter().any(|t| t == "resource") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "resource never vacuumed: {:?}",
            passerelle::store::statistics::table_changes(&client).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        statement_bound(&**client).await,
        before,
        "the statement bound restored"
    );
    let row = client
        .query_one(
            "SELECT c.relallvisible, s.last_vacuum IS NOT NULL FROM pg_class c
               JOIN pg_stat_user_tables s ON s.relid = c.oid
              WHERE c.relname = 'resource' AND s.schemaname = current_schema()",
            &[],
        )
        .await
        .expect("pg_class");
    let (visible, vacuumed): (i32, bool) = (row.get(0), row.get(1));
    assert!(vacuumed, "last_vacuum set");
    assert!(
        visible > 0,
        "visibility map set: {visible} pages all visible"
    );
}

/// The connection's `statement_timeout`, as PostgreSQL shows it.
async fn statement_bound(client: &impl tokio_postgres::GenericClient) -> String {
    client
        .query_one("SHOW statement_timeout", &[])
        .await
        .expect("statement_timeout")
        .get(0)
}
