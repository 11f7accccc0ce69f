//! `read` and `vread`.

use crate::error::{FhirError, FhirResult};
use crate::store::{self, StoredVersion};

/// `GET [type]/[id]`: 404 when it never existed, 410 when its latest version is a delete.
pub async fn read(
    client: &impl deadpool_postgres::GenericClient,
    res_type: &str,
    res_id: &str,
) -> FhirResult<StoredVersion> {
    let latest = store::read_latest(client, res_type, res_id).await?;
    readable(res_type, res_id, latest)
}

/// [`read`] outside any transaction, with the reads that arrive with it
/// (`store::LatestReads`): the REST read.
pub async fn read_joined(
    reads: &store::LatestReads,
    res_type: &str,
    res_id: &str,
) -> FhirResult<StoredVersion> {
    let latest = reads.read(res_type, res_id).await?;
    readable(res_type, res_id, latest)
}

fn readable(
    res_type: &str,
    res_id: &str,
    latest: Option<StoredVersion>,
) -> FhirResult<StoredVersion> {
    let version =
        latest.ok_or_else(|| FhirError::NotFound(format!("{res_type}/{res_id} is not known")))?;
    if version.is_deleted() {
        return Err(FhirError::Gone(format!(
            "{res_type}/{res_id} was deleted (version {})",
            version.version_id
        )));
    }
    Ok(version)
}

/// `GET [type]/[id]/_history/[vid]`.
pub async fn vread(
    client: &impl deadpool_postgres::GenericClient,
    res_type: &str,
    res_id: &str,
    version_id: &str,
) -> FhirResult<StoredVersion> {
    let vid: i64 = version_id.parse().ok().filter(|v| *v > 0).ok_or_else(|| {
        FhirError::NotFound(format!("no version '{version_id}' of {res_type}/{res_id}"))
    })?;
    let version = store::read_version(client, res_type, res_id, vid)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("{res_type}/{res_id} has no version {vid}")))?;
    if version.is_deleted() {
        return Err(FhirError::Gone(format!(
            "version {vid} of {res_type}/{res_id} is a deletion"
        )));
    }
    Ok(version)
}
