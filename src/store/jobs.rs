//! Background jobs in the database, leased by the instance that runs them: a
//! lease that is not renewed expires and another instance takes the job up.

use deadpool_postgres::GenericClient;
use serde_json::Value;

use crate::error::FhirResult;

/// A job a worker holds.
#[derive(Debug, Clone)]
pub struct LeasedJob {
    pub job_id: String,
    pub kind: String,
    pub spec: Value,
    pub checkpoint: Option<Value>,
    /// Leases taken and not given back, this one included: above one, an
    /// earlier holder failed or was killed before the end.
    pub attempts: i32,
}

pub async fn create(
    client: &impl GenericClient,
    job_id: &str,
    kind: &str,
    spec: &Value,
) -> FhirResult<()> {
    client
        .execute(
            "INSERT INTO background_job (job_id, kind, spec) VALUES ($1, $2, $3)",
            &[&job_id, &kind, &tokio_postgres::types::Json(spec)],
        )
        .await?;
    Ok(())
}

/// Leases the oldest pending job no live worker holds, for `lease_secs`.
pub async fn lease(
    client: &impl GenericClient,
    worker: &str,
    lease_secs: f64,
) -> FhirResult<Option<LeasedJob>> {
    let row = client
        .query_opt(
            "UPDATE background_job j
                SET leased_by = $1, leased_until = now() + make_interval(secs => $2),
                    attempts = attempts + 1, updated_at = now()
              WHERE job_id = (SELECT job_id FROM background_job
                               WHERE status = 'pending'
                                 AND (leased_until IS NULL OR leased_until < now())
                               ORDER BY created_at
                               LIMIT 1 FOR UPDATE SKIP LOCKED)
          RETURNING job_id, kind, spec, checkpoint, attempts",
            &[&worker, &lease_secs],
        )
        .await?;
    Ok(row.map(|r| {
        let spec: tokio_postgres::types::Json<Value> = r.get(2);
        let checkpoint: Option<tokio_postgres::types::Json<Value>> = r.get(3);
        LeasedJob {
            job_id: r.get(0),
            kind: r.get(1),
            spec: spec.0,
            checkpoint: checkpoint.map(|c| c.0),
            attempts: r.get(4),
        }
    }))
}

/// Extends a lease the worker still holds, recording `checkpoint` when given;
/// false when it lost the lease (expired and taken by another worker).
pub async fn renew(
    client: &impl GenericClient,
    job_id: &str,
    worker: &str,
    lease_secs: f64,
    checkpoint: Option<&Value>,
) -> FhirResult<bool> {
    let checkpoint = checkpoint.map(tokio_postgres::types::Json);
    Ok(client
        .execute(
            "UPDATE background_job
                SET leased_until = now() + make_interval(secs => $3),
                    checkpoint = coalesce($4, checkpoint), updated_at = now()
              WHERE job_id = $1 AND leased_by = $2 AND status = 'pending'",
            &[&job_id, &worker, &lease_secs, &checkpoint],
        )
        .await?
        == 1)
}

/// Ends a job the worker holds: done, or failed with the reason; false when it
/// no longer held it.
pub async fn finish(
    client: &impl GenericClient,
    job_id: &str,
    worker: &str,
    error: Option<&str>,
) -> FhirResult<bool> {
    let status = if error.is_some() { "failed" } else { "done" };
    Ok(client
        .execute(
            "UPDATE background_job
                SET status = $3, error = $4, leased_by = NULL, leased_until = NULL,
                    updated_at = now()
              WHERE job_id = $1 AND leased_by = $2",
            &[&job_id, &worker, &status, &error],
        )
        .await?
        == 1)
}

/// Gives one job back, pending, to be taken up again (after a passing trouble).
pub async fn give_back(client: &impl GenericClient, job_id: &str, worker: &str) -> FhirResult<()> {
    client
        .execute(
            "UPDATE background_job SET leased_by = NULL, leased_until = NULL, updated_at = now()
              WHERE job_id = $1 AND leased_by = $2",
            &[&job_id, &worker],
        )
        .await?;
    Ok(())
}

/// Gives back every lease of the runners of `instance` (ids `{instance}-{n}`),
/// when it stops: another instance takes its jobs up at once. A stop is no
/// failure: the attempt each lease counted is given back too (restarts and
/// deployments do not use up a job's attempts).
pub async fn release(client: &impl GenericClient, instance: &str) -> FhirResult<u64> {
    let runners = format!("{instance}-%");
    Ok(client
        .execute(
            "UPDATE background_job
                SET leased_by = NULL, leased_until = NULL, attempts = greatest(attempts - 1, 0)
              WHERE leased_by LIKE $1 AND status = 'pending'",
            &[&runners],
        )
        .await?)
}
