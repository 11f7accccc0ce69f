//! Schema migrations, embedded in the binary and applied in order. Safe to run from
//! several instances at once: one transaction under an advisory lock.

use tokio_postgres::Client;

use crate::error::FhirResult;

const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "resources",
        include_str!("migrations/0001_resources.sql"),
    ),
    (
        2,
        "search indexes",
        include_str!("migrations/0002_search_indexes.sql"),
    ),
    (
        3,
        "search statistics",
        include_str!("migrations/0003_search_statistics.sql"),
    ),
    (
        4,
        "composite groups",
        include_str!("migrations/0004_composite_groups.sql"),
    ),
    (
        5,
        "covering indexes",
        include_str!("migrations/0005_covering_indexes.sql"),
    ),
    (
        6,
        "subscriptions",
        include_str!("migrations/0006_subscriptions.sql"),
    ),
    (
        7,
        "bulk export",
        include_str!("migrations/0007_bulk_export.sql"),
    ),
    (
        8,
        "acknowledgements",
        include_str!("migrations/0008_acknowledgements.sql"),
    ),
    (
        9,
        "NdE subscribers",
        include_str!("migrations/0009_nde_subscribers.sql"),
    ),
    (
        10,
        "care circle members",
        include_str!("migrations/0010_care_circle_members.sql"),
    ),
    (11, "audit trail", include_str!("migrations/0011_audit.sql")),
    (
        12,
        "subscription owners, secrets out of stored resources",
        include_str!("migrations/0012_subscription_secrets_and_owners.sql"),
    ),
    (
        13,
        "background jobs, leased",
        include_str!("migrations/0013_background_jobs.sql"),
    ),
    (
        14,
        "delivery workers woken only by subscriptions gaining work",
        include_str!("migrations/0014_wake_on_work_only.sql"),
    ),
];

/// Arbitrary constant naming the migration lock.
const MIGRATION_LOCK: i64 = 0x5041_5353_4552_454c; // "PASSEREL"

/// The newest schema version this binary knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

#[tracing::instrument(skip_all)]
pub async fn migrate(client: &mut Client) -> FhirResult<Vec<i32>> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migration (
            version    integer PRIMARY KEY,
            name       text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migration", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut newly = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(version, name, "applying migration");
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migration (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        newly.push(*version);
    }
    tx.commit().await?;
    Ok(newly)
}

/// The schema version of the database, 0 when none is applied.
pub async fn current_version(client: &Client) -> FhirResult<i32> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migration') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migration",
            &[],
        )
        .await?;
    Ok(row.get(0))
}
