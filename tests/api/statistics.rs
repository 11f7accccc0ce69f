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
