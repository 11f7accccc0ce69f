//! What operators watch, read from the database at each metrics scrape: the
//! outbox backlog and the background jobs by state.

use deadpool_postgres::GenericClient;

use crate::error::FhirResult;
use crate::metrics::Backlog;

/// The outbox backlog (pending events, served by their partial index) and the
/// jobs: background jobs (exports, reindexing) by kind and state (`pending`,
/// `running` under a live lease, `done`, `failed`), notification requests waiting
/// for their acknowledgement deadline.
pub async fn backlog(client: &impl GenericClient) -> FhirResult<Backlog> {
    let outbox = client
        .query_one(
            "SELECT count(*),
                    COALESCE(extract(epoch FROM now() - min(recorded_at))::float8, 0)
               FROM subscription_event WHERE status = 'pending'",
            &[],
        )
        .await?;
    let jobs = client
        .query(
            "SELECT kind,
                    CASE WHEN status = 'pending' AND leased_until > now() THEN 'running'
                         ELSE status END,
                    count(*)
               FROM background_job GROUP BY 1, 2
             UNION ALL
             SELECT 'escalation', 'waiting', count(*) FROM ack_deadline WHERE escalated_at IS NULL",
            &[],
        )
        .await?;
    Ok(Backlog {
        outbox_pending: outbox.get(0),
        outbox_oldest_secs: outbox.get(1),
        jobs: jobs
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect(),
    })
}
