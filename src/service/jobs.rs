//! The runner of background jobs (`store::jobs`): each instance leases one
//! pending job at a time, renews its lease as the job advances, and gives it
//! back when it stops. A job whose instance died is taken up by another once the
//! lease expires: an export starts again in a new snapshot, a reindex goes on
//! from its last checkpoint.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::Value;

use super::Rules;
use crate::error::{FhirError, FhirResult};
use crate::store::jobs::{self, LeasedJob};

/// How jobs are leased.
#[derive(Debug, Clone, Copy)]
pub struct JobTuning {
    /// A lease lasts this long unless renewed (each page of an export, each
    /// batch of a reindex renews it): how long a dead instance's job waits.
    pub lease: Duration,
    /// How often an idle runner looks for a job.
    pub poll: Duration,
    /// Jobs one instance runs at once (a long export does not hold up a
    /// reindex).
    pub runners: usize,
    /// How often the tables' changes are looked at and the stale ones analyzed
    /// (`service::watch_statistics`); `None`: never.
    pub analyze_every: Option<Duration>,
}

impl Default for JobTuning {
    fn default() -> Self {
        JobTuning {
            lease: Duration::from_secs(60),
            poll: Duration::from_secs(1),
            runners: 2,
            analyze_every: Some(Duration::from_secs(10)),
        }
    }
}

/// A job taken up this many times without finishing is failed: something in it,
/// not its instance, stops it.
const MAX_ATTEMPTS: i32 = 3;

/// The lease a running job holds, renewed as it advances.
pub struct Lease<'a> {
    pub job_id: &'a str,
    /// The runner holding it.
    pub worker: &'a str,
    secs: f64,
}

impl Lease<'_> {
    /// Renews the lease through `client`, a connection the job already holds
    /// (recording where the job stands); false when it was lost, and the job
    /// must stop.
    pub async fn renew(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        checkpoint: Option<&Value>,
    ) -> FhirResult<bool> {
        jobs::renew(client, self.job_id, self.worker, self.secs, checkpoint).await
    }
}

/// How a job run ended.
pub enum Ended {
    /// It did all it had to.
    Done,
    /// It stopped without finishing: cancelled, or its lease lost to another
    /// worker.
    Stopped,
}

/// Queues a job; any instance's runner takes it up within a poll.
pub async fn queue(pool: &Pool, job_id: &str, kind: &str, spec: &Value) -> FhirResult<()> {
    jobs::create(&pool.get().await?, job_id, kind, spec).await
}

/// Starts this instance's runners, whose leases are named `{instance}-{n}`.
pub fn start_runners(
    pool: &Pool,
    rules: &Arc<Rules>,
    tuning: JobTuning,
    instance: &str,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tuning.runners.max(1))
        .map(|n| {
            let worker = format!("{instance}-{n}");
            tokio::spawn(run_jobs(pool.clone(), rules.clone(), tuning, worker))
        })
        .collect()
}

/// Runs jobs one at a time until aborted; `worker` names its leases.
async fn run_jobs(pool: Pool, rules: Arc<Rules>, tuning: JobTuning, worker: String) {
    loop {
        match run_next(&pool, &rules, &tuning, &worker).await {
            // More may be waiting: look again at once.
            Ok(true) => continue,
            Ok(false) | Err(FhirError::Unavailable(_) | FhirError::Busy(_)) => {}
            Err(e) => tracing::error!(error = %e, "running background jobs"),
        }
        tokio::time::sleep(tuning.poll).await;
    }
}

/// Gives back the leases of the runners of `instance` (stopping).
pub async fn release(pool: &Pool, instance: &str) {
    let released = match pool.get().await {
        Ok(client) => jobs::release(&client, instance).await,
        Err(e) => Err(e.into()),
    };
    match released {
        Ok(0) => {}
        Ok(n) => tracing::info!(jobs = n, "background jobs given back"),
        Err(e) => {
            tracing::warn!(error = %e, "background jobs not given back; their leases will expire")
        }
    }
}

/// Leases and runs one job; false when none was waiting.
async fn run_next(
    pool: &Pool,
    rules: &Rules,
    tuning: &JobTuning,
    worker: &str,
) -> FhirResult<bool> {
    let secs = tuning.lease.as_secs_f64();
    let Some(job) = jobs::lease(&pool.get().await?, worker, secs).await? else {
        return Ok(false);
    };
    let lease = Lease {
        job_id: &job.job_id,
        worker,
        secs,
    };
    tracing::info!(job = %job.job_id, kind = %job.kind, attempt = job.attempts, "background job taken up");
    let ended = match job.attempts > MAX_ATTEMPTS {
        true => Err(FhirError::Transient(format!(
            "the job was interrupted {MAX_ATTEMPTS} times"
        ))),
        false => run(pool, rules, &lease, &job).await,
    };
    let error = match ended {
        Ok(Ended::Done) => None,
        Ok(Ended::Stopped) => return Ok(true),
        // A passing trouble: the job waits for its next taker (attempts bound it).
        Err(
            e @ (FhirError::Unavailable(_)
            | FhirError::Busy(_)
            | FhirError::CommitUnknown(_)
            | FhirError::StatementTimeout(_)),
        ) if job.attempts < MAX_ATTEMPTS => {
            tracing::warn!(job = %job.job_id, kind = %job.kind, error = %e, "background job interrupted; given back");
            jobs::give_back(&pool.get().await?, &job.job_id, worker).await?;
            return Ok(true);
        }
        Err(e) => Some(e.to_string()),
    };
    let client = pool.get().await?;
    let held = jobs::finish(&client, &job.job_id, worker, error.as_deref()).await?;
    if let (true, Some(e)) = (held, &error) {
        tracing::warn!(job = %job.job_id, kind = %job.kind, error = %e, "background job failed");
        if job.kind == "export" {
            super::export::failed(pool, &job.job_id, e).await?;
        }
    }
    Ok(true)
}

async fn run(pool: &Pool, rules: &Rules, lease: &Lease<'_>, job: &LeasedJob) -> FhirResult<Ended> {
    match job.kind.as_str() {
        "export" => super::export::run_job(pool, lease, job).await,
        "reindex" => super::search_parameters::reindex_job(pool, rules, lease, job).await,
        other => Err(FhirError::Internal(format!("unknown job kind '{other}'"))),
    }
}
