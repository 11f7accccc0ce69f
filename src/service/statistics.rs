//! The planner's statistics kept current by the server (`store::statistics`):
//! every instance looks at how much its tables changed since their last analyze
//! and one at a time analyzes the stale ones, so that searches keep their plans
//! after bulk loads and large Bundles on a database whose autovacuum is off or
//! behind.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::error::FhirError;
use crate::store::statistics;

/// Says at start-up what the database does by itself: without autovacuum, dead
/// rows are never reclaimed (the server analyzes, it does not vacuum); without
/// `track_counts`, the server cannot see what changed either.
pub async fn report_database_settings(pool: &Pool, every: Option<Duration>) {
    let settings = match pool.get().await {
        Ok(client) => statistics::database_settings(&client).await,
        Err(e) => Err(e.into()),
    };
    match (settings, every) {
        (Ok((_, false)), _) => tracing::warn!(
            "the database's track_counts is off: neither autovacuum nor Passerelle can see which tables changed; search plans will go stale after bulk loads"
        ),
        (Ok((false, true)), Some(every)) => tracing::warn!(
            every = ?every,
            "the database's autovacuum is off: Passerelle analyzes its own tables when a tenth of them changed, but dead rows are not reclaimed: schedule VACUUM (docs/operations.md)"
        ),
        (Ok((false, true)), None) => tracing::warn!(
            "the database's autovacuum is off and PASSERELLE_ANALYZE_INTERVAL=0: nothing keeps the planner's statistics current; searches slow down after bulk loads"
        ),
        (Ok((true, true)), _) => {}
        (Err(e), _) => tracing::warn!(error = %e, "cannot read the database's autovacuum settings"),
    }
}

/// Analyzes the stale tables every `every`, on every instance (one at a time).
pub async fn watch_statistics(pool: Pool, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let analyzed = match pool.get().await {
            Ok(mut client) => statistics::analyze_stale(&mut client).await,
            Err(e) => Err(e.into()),
        };
        match analyzed {
            Ok(tables) if !tables.is_empty() => {
                tracing::info!(tables = ?tables, "statistics refreshed")
            }
            Ok(_) | Err(FhirError::Unavailable(_)) => {}
            Err(e) => tracing::warn!(error = %e, "refreshing the planner's statistics"),
        }
    }
}
