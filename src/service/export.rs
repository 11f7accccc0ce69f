//! Bulk export (`$export`, FHIR Bulk Data Access): at system, Patient and Group
//! level, asynchronous (`Prefer: respond-async`), NDJSON files, `_type`, `_since`.
//! The kick-off queues a leased job (`service::jobs`): whichever instance takes
//! it runs it in one read-only snapshot, a page of 1,000 resources at a time, and
//! stores each file in the database, so that any instance answers the status and
//! file requests, and another finishes the job if its instance dies.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::{json, Value};

use crate::error::{FhirError, FhirResult};
use crate::fhir::datetime::{self, format_instant};
use crate::fhir::definitions::R4;
use crate::search::compartment;
use crate::store::export::{self, Selection};

/// Resources per page read and per file written.
const PAGE: i64 = 1000;

/// The level of a kick-off request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    System,
    Patient,
    Group(String),
}

/// What a kick-off asks for, checked (pure).
#[derive(Debug, Clone, PartialEq)]
pub struct KickOff {
    pub level: Level,
    pub types: Option<Vec<String>>,
    pub since: Option<DateTime<Utc>>,
}

const NDJSON: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];

/// Reads the kick-off parameters (`_outputFormat`, `_type`, `_since`); others that
/// the server does not support (`_elements`, `_typeFilter`, `includeAssociatedData`)
/// are refused rather than ignored, as the Bulk Data specification asks.
pub fn kick_off(level: Level, params: &[(String, String)]) -> FhirResult<KickOff> {
    let mut kick = KickOff {
        level,
        types: None,
        since: None,
    };
    for (name, value) in params {
        match name.as_str() {
            "_outputFormat" if NDJSON.contains(&value.as_str()) => {}
            "_outputFormat" => {
                return Err(FhirError::bad_request(format!(
                    "_outputFormat '{value}' is not supported; use application/fhir+ndjson"
                )))
            }
            "_type" => {
                let types: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned)
                    .collect();
                if let Some(bad) = types.iter().find(|t| !R4.is_resource_type(t)) {
                    return Err(FhirError::bad_request(format!(
                        "_type: '{bad}' is not a resource type"
                    )));
                }
                kick.types.get_or_insert_with(Vec::new).extend(types);
            }
            "_since" => {
                kick.since = Some(
                    datetime::parse_range(value)
                        .filter(|_| value.contains('T'))
                        .ok_or_else(|| {
                            FhirError::bad_request(format!("_since '{value}' is not an instant"))
                        })?
                        .low,
                )
            }
            "_format" | "_pretty" => {}
            other => {
                return Err(FhirError::bad_request(format!(
                    "the export parameter '{other}' is not supported"
                )))
            }
        }
    }
    Ok(kick)
}

/// The patients a Group names as members.
fn group_patients(group: &Value) -> Vec<String> {
    group["member"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["entity"]["reference"].as_str()?.strip_prefix("Patient/"))
        .map(str::to_owned)
        .collect()
}

/// The selection of a job as stored with it (`background_job.spec`).
fn selection_spec(selection: &Selection) -> Value {
    json!({
        "types": selection.types,
        "since": selection.since.map(format_instant),
        "compartment": selection.compartment,
        "patients": selection.patients,
    })
}

fn selection_of(spec: &Value) -> FhirResult<Selection> {
    let strings = |v: &Value| -> Option<Vec<String>> {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
    };
    let since = match spec["since"].as_str() {
        Some(text) => Some(
            datetime::parse_range(text)
                .ok_or_else(|| FhirError::Internal(format!("a stored export's _since '{text}'")))?
                .low,
        ),
        None => None,
    };
    Ok(Selection {
        types: strings(&spec["types"]),
        since,
        compartment: strings(&spec["compartment"]),
        patients: strings(&spec["patients"]),
    })
}

/// Who asks for an export, and which patients' records it may hold.
pub struct Requester {
    /// The token's client and user (`auth::Access::owner`): only they read the
    /// job's status and files.
    pub owner: Option<Value>,
    /// A client held to records: the patients it reaches, whose compartments
    /// alone are exported, whatever the level.
    pub patients: Option<Vec<String>>,
}

/// Queues a job (run by whichever instance leases it first); its id. `request`
/// is the kick-off URL, for the manifest.
pub async fn start(
    pool: &Pool,
    kick: KickOff,
    request: &str,
    requester: Requester,
) -> FhirResult<String> {
    let mut selection = Selection {
        types: kick.types,
        since: kick.since,
        ..Selection::default()
    };
    match &kick.level {
        Level::System => {}
        Level::Patient => selection.compartment = Some(compartment::patient_membership_params()),
        Level::Group(id) => {
            let group = super::read(&pool.get().await?, "Group", id).await?;
            let group: Value = serde_json::from_str(group.json.as_deref().unwrap_or("{}"))
                .map_err(|e| FhirError::Internal(e.to_string()))?;
            selection.compartment = Some(compartment::patient_membership_params());
            selection.patients = Some(group_patients(&group));
        }
    }
    if let Some(reached) = requester.patients {
        selection.compartment = Some(compartment::patient_membership_params());
        selection.patients = Some(match selection.patients {
            Some(members) => members
                .into_iter()
                .filter(|p| reached.contains(p))
                .collect(),
            None => reached,
        });
    }
    let job_id = uuid::Uuid::new_v4().to_string();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    export::create_job(&tx, &job_id, request, requester.owner.as_ref()).await?;
    crate::store::jobs::create(&tx, &job_id, "export", &selection_spec(&selection)).await?;
    crate::store::commit(tx).await?;
    Ok(job_id)
}

/// Runs a leased export job: from the start, in a new snapshot, when an earlier
/// holder stopped before the end (its files are dropped first).
pub(super) async fn run_job(
    pool: &Pool,
    lease: &super::jobs::Lease<'_>,
    job: &crate::store::jobs::LeasedJob,
) -> FhirResult<super::jobs::Ended> {
    let selection = selection_of(&job.spec)?;
    let client = pool.get().await?;
    // Finished, failed or cancelled already (its end recorded, the job's not):
    // nothing to do, nothing to undo.
    match export::job(&client, &job.job_id).await? {
        Some(export) if export.status == "in-progress" => {}
        _ => return Ok(super::jobs::Ended::Done),
    }
    // The files of an earlier holder that stopped before the end (killed, or
    // given its lease back at a stop, which does not count as an attempt).
    export::clear_files(&client, &job.job_id).await?;
    drop(client);
    let ended = run(pool, lease, &selection).await?;
    if let super::jobs::Ended::Done = ended {
        export::finish(&pool.get().await?, &job.job_id, None).await?;
    }
    Ok(ended)
}

/// Records that a job failed, for its status requests.
pub(super) async fn failed(pool: &Pool, job_id: &str, reason: &str) -> FhirResult<()> {
    export::finish(&pool.get().await?, job_id, Some(reason)).await
}

/// Pages through one snapshot, writing a file per type and per 1,000 resources,
/// renewing the lease at each page. Done too when the job was cancelled (nothing
/// left to do); stopped when the lease was lost.
async fn run(
    pool: &Pool,
    lease: &super::jobs::Lease<'_>,
    selection: &Selection,
) -> FhirResult<super::jobs::Ended> {
    use super::jobs::Ended;
    let job_id = lease.job_id;
    let mut reader = pool.get().await?;
    // The horizon first, then the snapshot: every transaction not in flight at the
    // horizon has committed into the snapshot (one committing in between may be in
    // it too, and exported again by the next `_since`: repeated, never missed).
    let transaction_time = export::horizon(&reader).await?;
    let snapshot = reader
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let writer = pool.get().await?;
    if !export::progress(&writer, job_id, "started", Some(transaction_time)).await? {
        return Ok(Ended::Done); // cancelled
    }
    let (mut after, mut file_no, mut exported) = (None, 0, 0usize);
    loop {
        let page = export::page(&snapshot, selection, after.as_ref(), PAGE).await?;
        let Some(last) = page.last() else {
            break;
        };
        after = Some((last.res_type.clone(), last.res_id.clone()));
        // A page may hold several types: one file per run of one type.
        for run in page.chunk_by(|a, b| a.res_type == b.res_type) {
            file_no += 1;
            let ndjson: String = run
                .iter()
                .filter_map(|v| v.json.as_deref())
                .flat_map(|j| [j, "\n"])
                .collect();
            let written = export::add_file(
                &writer,
                (job_id, lease.worker),
                file_no,
                &run[0].res_type,
                run.len() as i32,
                &ndjson,
            )
            .await?;
            if !written {
                // Still holding the job: it was cancelled, nothing is left to do.
                return Ok(match lease.renew(&writer, None).await? {
                    true => Ended::Done,
                    false => Ended::Stopped,
                });
            }
            exported += run.len();
        }
        if !export::progress(&writer, job_id, &format!("{exported} resources"), None).await? {
            return Ok(Ended::Done); // cancelled
        }
        if !lease.renew(&writer, None).await? {
            return Ok(Ended::Stopped);
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    snapshot.commit().await?;
    Ok(Ended::Done)
}

/// Where a job stands.
pub enum Status {
    InProgress(String),
    /// The manifest.
    Completed(Value),
    Failed(String),
}

/// Where a job stands; `tokens` when the server requires them (the manifest
/// says its files do).
pub async fn status(pool: &Pool, base: &str, job_id: &str, tokens: bool) -> FhirResult<Status> {
    let client = pool.get().await?;
    let job = export::job(&client, job_id)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("no export job '{job_id}'")))?;
    Ok(match job.status.as_str() {
        "completed" => {
            let output: Vec<Value> = job
                .files
                .iter()
                .map(|(n, t, count)| json!({"type": t, "url": format!("{base}/$export-file/{job_id}/{n}"), "count": count}))
                .collect();
            Status::Completed(json!({
                "transactionTime": job.transaction_time.map(format_instant),
                "request": job.request,
                "requiresAccessToken": tokens,
                "output": output,
                "error": [],
            }))
        }
        "failed" => Status::Failed(job.error.unwrap_or_else(|| "the export failed".to_owned())),
        _ => Status::InProgress(job.progress.unwrap_or_else(|| "queued".to_owned())),
    })
}

pub async fn file(pool: &Pool, job_id: &str, file_no: &str) -> FhirResult<String> {
    let n: i32 = file_no
        .parse()
        .map_err(|_| FhirError::NotFound(format!("no export file '{file_no}'")))?;
    let client = pool.get().await?;
    export::file(&client, job_id, n)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("no file {n} in export '{job_id}'")))
}

/// Cancels a job (or deletes a finished one) and its files.
pub async fn delete(pool: &Pool, job_id: &str) -> FhirResult<()> {
    let client = pool.get().await?;
    if export::delete_job(&client, job_id).await? {
        Ok(())
    } else {
        Err(FhirError::NotFound(format!("no export job '{job_id}'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_selection_survives_being_stored_with_its_job() {
        let selection = Selection {
            types: Some(vec!["Patient".into(), "Encounter".into()]),
            since: datetime::parse_range("2026-11-28T10:00:00.123Z").map(|r| r.low),
            compartment: Some(vec!["Encounter.subject".into()]),
            patients: Some(vec!["p1".into()]),
        };
        let back = selection_of(&selection_spec(&selection)).expect("stored selection");
        assert_eq!(back.types, selection.types);
        assert_eq!(back.since, selection.since);
        assert_eq!(back.compartment, selection.compartment);
        assert_eq!(back.patients, selection.patients);
        let everything = selection_of(&selection_spec(&Selection::default())).expect("empty");
        assert!(everything.types.is_none() && everything.since.is_none());
        assert!(everything.compartment.is_none() && everything.patients.is_none());
    }

    #[test]
    fn kick_off_parameters() {
        let k = kick_off(
            Level::Patient,
            &params(&[
                ("_type", "Patient,Encounter"),
                ("_since", "2026-11-01T00:00:00Z"),
                ("_outputFormat", "application/fhir+ndjson"),
            ]),
        )
        .expect("valid");
        assert_eq!(
            k.types,
            Some(vec!["Patient".to_owned(), "Encounter".to_owned()])
        );
        assert!(k.since.is_some());
        for bad in [
            ("_type", "Nope"),
            ("_since", "yesterday"),
            ("_outputFormat", "text/csv"),
            ("_typeFilter", "Encounter?status=finished"),
        ] {
            assert_eq!(
                kick_off(Level::System, &params(&[bad]))
                    .expect_err("refused")
                    .status(),
                400,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn group_members_are_patients() {
        let g = json!({"resourceType": "Group", "member": [
            {"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Practitioner/x"}},
            {"entity": {"reference": "Patient/p2"}}]});
        assert_eq!(group_patients(&g), vec!["p1", "p2"]);
    }
}
