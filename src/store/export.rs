//! Bulk export: the resources of an export in (type, id) pages from one snapshot,
//! and the job and file rows.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use super::{current_filters, current_versions, search_sql::SqlCondition, StoredVersion, HORIZON};
use crate::error::FhirResult;

/// What an export selects.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `_type`; `None`: every type.
    pub types: Option<Vec<String>>,
    /// `_since`: changed at or after.
    pub since: Option<DateTime<Utc>>,
    /// Patient and Group level: only the patients' compartments, through these
    /// `Type.param` references (the Patient CompartmentDefinition).
    pub compartment: Option<Vec<String>>,
    /// Group level: only these patients.
    pub patients: Option<Vec<String>>,
}

/// The next page of current resources after `(type, id)`.
pub async fn page(
    client: &impl GenericClient,
    selection: &Selection,
    after: Option<&(String, String)>,
    limit: i64,
) -> FhirResult<Vec<StoredVersion>> {
    let mut sql = SqlCondition::new();
    let mut filters = current_filters(&mut sql, selection.types.as_ref(), selection.since, after);
    if let Some(through) = &selection.compartment {
        let through = sql.bind(Box::new(through.clone()));
        let (own, target) = match &selection.patients {
            Some(ids) => {
                let ids = sql.bind(Box::new(ids.clone()));
                (
                    format!("r.res_id = ANY({ids})"),
                    format!("AND x.target_id = ANY({ids})"),
                )
            }
            None => ("true".to_owned(), String::new()),
        };
        filters.push(format!(
            "((r.res_type = 'Patient' AND {own}) OR EXISTS (
                SELECT 1 FROM search_reference x
                 WHERE x.res_type = r.res_type AND x.res_id = r.res_id AND x.target_type = 'Patient'
                   AND (x.res_type || '.' || x.param) = ANY({through}) {target}))"
        ));
    }
    let limit = sql.bind(Box::new(limit));
    current_versions(client, "resource r", &sql, &filters, &limit).await
}

/// The horizon (see `HORIZON`): read before the snapshot it bounds is taken.
pub async fn horizon(client: &impl GenericClient) -> FhirResult<DateTime<Utc>> {
    Ok(client.query_one(HORIZON, &[]).await?.get(0))
}

pub async fn create_job(
    client: &impl GenericClient,
    job_id: &str,
    request: &str,
    owner: Option<&serde_json::Value>,
) -> FhirResult<()> {
    let owner = owner.map(tokio_postgres::types::Json);
    client
        .execute(
            "INSERT INTO export_job (job_id, request, status, owner)
             VALUES ($1, $2, 'in-progress', $3)",
            &[&job_id, &request, &owner],
        )
        .await?;
    Ok(())
}

/// Who kicked a job off: `None` when there is no such job, `Some(None)` when
/// no token did.
pub async fn owner_of(
    client: &impl GenericClient,
    job_id: &str,
) -> FhirResult<Option<Option<serde_json::Value>>> {
    let row = client
        .query_opt("SELECT owner FROM export_job WHERE job_id = $1", &[&job_id])
        .await?;
    Ok(row.map(|r| {
        r.get::<_, Option<tokio_postgres::types::Json<serde_json::Value>>>(0)
            .map(|o| o.0)
    }))
}

/// Records progress; false when the job is gone (cancelled).
pub async fn progress(
    client: &impl GenericClient,
    job_id: &str,
    progress: &str,
    transaction_time: Option<DateTime<Utc>>,
) -> FhirResult<bool> {
    let n = client
        .execute(
            "UPDATE export_job SET progress = $2, updated_at = now(),
                    transaction_time = coalesce($3, transaction_time)
              WHERE job_id = $1 AND status = 'in-progress'",
            &[&job_id, &progress, &transaction_time],
        )
        .await?;
    Ok(n == 1)
}

/// Drops the files of a job taken up again (it starts over in a new snapshot).
pub async fn clear_files(client: &impl GenericClient, job_id: &str) -> FhirResult<()> {
    client
        .execute("DELETE FROM export_file WHERE job_id = $1", &[&job_id])
        .await?;
    Ok(())
}

/// The next file of export `job_id`, written only while `worker` holds the
/// job (a worker that lost it, or a cancelled job, writes nothing); false then.
/// The job's row is share-locked meanwhile, so a lease cannot change hands
/// between the check and the write.
pub async fn add_file(
    client: &impl GenericClient,
    (job_id, worker): (&str, &str),
    file_no: i32,
    res_type: &str,
    count: i32,
    ndjson: &str,
) -> FhirResult<bool> {
    Ok(client
        .execute(
            "INSERT INTO export_file (job_id, file_no, res_type, count, ndjson)
             SELECT $1, $2, $3, $4, $5
              WHERE EXISTS (SELECT 1 FROM export_job WHERE job_id = $1)
                AND EXISTS (SELECT 1 FROM background_job
                             WHERE job_id = $1 AND leased_by = $6 FOR SHARE)",
            &[&job_id, &file_no, &res_type, &count, &ndjson, &worker],
        )
        .await?
        == 1)
}

pub async fn finish(
    client: &impl GenericClient,
    job_id: &str,
    error: Option<&str>,
) -> FhirResult<()> {
    let status = if error.is_some() {
        "failed"
    } else {
        "completed"
    };
    client
        .execute(
            "UPDATE export_job SET status = $2, error = $3, updated_at = now()
              WHERE job_id = $1 AND status = 'in-progress'",
            &[&job_id, &status, &error],
        )
        .await?;
    Ok(())
}

/// A job as its status request sees it.
pub struct Job {
    pub request: String,
    pub status: String,
    pub transaction_time: Option<DateTime<Utc>>,
    pub progress: Option<String>,
    pub error: Option<String>,
    /// `(file number, type, count)`, in order.
    pub files: Vec<(i32, String, i32)>,
}

pub async fn job(client: &impl GenericClient, job_id: &str) -> FhirResult<Option<Job>> {
    let Some(row) = client
        .query_opt(
            "SELECT request, status, transaction_time, progress, error
               FROM export_job WHERE job_id = $1",
            &[&job_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let files = client
        .query(
            "SELECT file_no, res_type, count FROM export_file WHERE job_id = $1 ORDER BY file_no",
            &[&job_id],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    Ok(Some(Job {
        request: row.get(0),
        status: row.get(1),
        transaction_time: row.get(2),
        progress: row.get(3),
        error: row.get(4),
        files,
    }))
}

pub async fn file(
    client: &impl GenericClient,
    job_id: &str,
    file_no: i32,
) -> FhirResult<Option<String>> {
    Ok(client
        .query_opt(
            "SELECT ndjson FROM export_file WHERE job_id = $1 AND file_no = $2",
            &[&job_id, &file_no],
        )
        .await?
        .map(|r| r.get(0)))
}

/// Deletes a job and its files; false when there was none.
pub async fn delete_job(client: &impl GenericClient, job_id: &str) -> FhirResult<bool> {
    Ok(client
        .execute("DELETE FROM export_job WHERE job_id = $1", &[&job_id])
        .await?
        == 1)
}
