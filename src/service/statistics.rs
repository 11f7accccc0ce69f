//! The planner's statistics kept current by the server (`store::statistics`):
//! every instance looks at how much its tables changed since their last analyze
//! and one at a time analyzes the stale ones, so that searches keep their plans
//! after bulk loads and large Bundles on a database whose autovacuum is off or
//! behind; where it is off, the server vacuums its tables too.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::error::FhirError;
use crate::store::statistics;

/// Says at start-up what the database does by itself (without `track_counts`,
/// the server cannot see what changed), and whether its autovacuum is on
/// (assumed so when it cannot be asked).
pub async fn report_database_settings(pool: &Pool, every: Option<Duration>) -> bool {
    let settings = match pool.get().await {
        Ok(client) => statistics::database_settings(&client).await,
        Err(e) => Err(e.into()),
    };
    let autovacuum = settings.as_ref().map_or(true, |(on, _)| *on);
    match (settings, every) {
        (Ok((_, false)), _) => tracing::warn!(
            "the database's track_counts is off: neither autovacuum nor Passerelle can see which tables changed; search plans will go stale after bulk loads"
        ),
        (Ok((false, true)), Some(every)) => tracing::warn!(
            every = ?every,
            "the database's autovacuum is off: Passerelle vacuums and analyzes its own tables by autovacuum's rules (docs/operations.md)"
        ),
        (Ok((false, true)), None) => tracing::warn!(
            "the database's autovacuum is off and PASSERELLE_ANALYZE_INTERVAL=0: nothing keeps the planner's statistics current; searches slow down after bulk loads"
        ),
        (Ok((true, true)), _) => {}
        (Err(e), _) => tracing::warn!(error = %e, "cannot read the database's autovacuum settings"),
    }
    autovacuum
}

/// Analyzes the stale tables every `every`, on every instance (one at a time);
/// with `vacuum` (the database's autovacuum is off), vacuums those that need it
/// first.
pub async fn watch_statistics(pool: Pool, every: Duration, vacuum: bool) {
    loop {
        tokio::time::sleep(every).await;
        let round = async {
            let mut client = pool.get().await?;
            let mut tables = match vacuum {
                true => statistics::vacuum_stale(&client).await?,
                false => Vec::new(),
            };
            tables.extend(statistics::analyze_stale(&mut client).await?);
            Ok::<_, FhirError>(tables)
        };
        match round.await {
            Ok(tables) if !tables.is_empty() => {
                tracing::info!(tables = ?tables, "statistics refreshed")
            }
            Ok(_) | Err(FhirError::Unavailable(_)) => {}
            Err(e) => tracing::warn!(error = %e, "refreshing the planner's statistics"),
        }
    }
}
