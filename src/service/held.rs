//! What a client held to a patient's record or to care circles
//! (`auth::Holder`) may see and write, asked of the database on the connection
//! the interaction runs on: the request's, or the transaction's for writes and
//! Bundle entries, so that a check sees the entries written before it and holds
//! until the commit of what it allowed.

use deadpool_postgres::GenericClient;
use serde_json::Value;

use crate::auth::Holder;
use crate::error::{FhirError, FhirResult};
use crate::search::compartment::{in_patient_compartment, patients_of, record_params};
use crate::search::params::ParamTable;
use crate::search::Handling;
use crate::store::StoredVersion;

use super::searches::{search, Scope};
use super::writes::{PatchTarget, WriteRequest};
use super::{Change, ChangeKind};

/// 404 unless the client may see `res_type/id`, as if it did not exist. A held
/// client's update never creates: were an id it does not see free to take, the
/// answer (201 or 404) would tell whether another's record holds it; it creates
/// with POST.
pub async fn visible(
    client: &impl GenericClient,
    params: &ParamTable,
    holder: &Holder,
    res_type: &str,
    id: &str,
) -> FhirResult<()> {
    match holder {
        Holder::Free => return Ok(()),
        // A record of a circle: one prepared probe of the circle's rows.
        Holder::Circle(members) => {
            let record = record_params(res_type);
            if crate::store::circle_sees(client, members, res_type, id, &record).await? {
                return Ok(());
            }
        }
        Holder::Patient(_) => {
            if !by_ids(client, params, res_type, &[id], holder.reach())
                .await?
                .is_empty()
            {
                return Ok(());
            }
        }
    }
    Err(FhirError::NotFound(format!(
        "{res_type}/{id} is not known to this token"
    )))
}

/// The resources of `res_type` with these ids (at most `search::MAX_COUNT`)
/// that `reach` reaches (all: `None`), found as a search by `_id` would.
async fn by_ids(
    client: &impl GenericClient,
    params: &ParamTable,
    res_type: &str,
    ids: &[&str],
    reach: Option<crate::search::compartment::Reach<'_>>,
) -> FhirResult<Vec<StoredVersion>> {
    let criteria = [
        ("_id".to_owned(), ids.join(",")),
        ("_count".to_owned(), ids.len().to_string()),
        ("_total".to_owned(), "none".to_owned()),
    ];
    let page = search(
        client,
        params,
        res_type,
        &criteria,
        Handling::Strict,
        Scope::Type,
        reach,
    )
    .await?;
    Ok(page.matches)
}

/// Whether what `resource` says (of `res_type/id`) is of the records the holder
/// reaches: about its patient, or about patients of its circles (a resource about
/// no patient is no one's record; a Patient, seen already, is her own).
pub async fn content_reached(
    client: &impl GenericClient,
    params: &ParamTable,
    holder: &Holder,
    res_type: &str,
    id: &str,
    resource: &Value,
) -> FhirResult<bool> {
    let rows = crate::search::index::extract(params, res_type, resource);
    let patients = patients_of(res_type, &rows);
    Ok(match holder {
        Holder::Free => true,
        Holder::Patient(patient) => match res_type {
            "Patient" => id == patient,
            _ => !patients.is_empty() && patients.iter().all(|p| p == patient),
        },
        // A new patient is no one's record yet; an existing one was seen before.
        Holder::Circle(_) if res_type == "Patient" => true,
        Holder::Circle(members) => crate::store::circle_covers(client, members, &patients).await?,
    })
}

/// Whether an older version (a vread, an instance's history) is of the records
/// the holder reaches, as its own content says: the current version was seen,
/// but a resource may have been about another patient before.
pub async fn version_reached(
    client: &impl GenericClient,
    params: &ParamTable,
    holder: &Holder,
    v: &StoredVersion,
) -> FhirResult<bool> {
    let Some(json) = v.json.as_deref() else {
        // A deletion shows nothing of the record.
        return Ok(true);
    };
    let resource: Value =
        serde_json::from_str(json).map_err(|e| FhirError::Internal(e.to_string()))?;
    content_reached(client, params, holder, &v.res_type, &v.res_id, &resource).await
}

/// Keeps, of `versions` (what `_include` and `_revinclude` brought, a history's
/// page), those of resources the client may see now: what is nobody's record,
/// and the records of the patient or the circles it is held to (asked as a
/// search would be, by `_id`, one search per type; a deleted resource is seen by
/// no one held).
pub async fn seen_only(
    client: &impl GenericClient,
    params: &ParamTable,
    holder: &Holder,
    versions: &mut Vec<StoredVersion>,
) -> FhirResult<()> {
    let Some(reach) = holder.reach() else {
        return Ok(());
    };
    let mut by_type: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for v in versions
        .iter()
        .filter(|v| in_patient_compartment(&v.res_type))
    {
        by_type.entry(&v.res_type).or_default().push(&v.res_id);
    }
    let mut seen: std::collections::HashSet<(String, String)> = Default::default();
    for (res_type, ids) in by_type {
        for chunk in ids.chunks(crate::search::MAX_COUNT) {
            let found = by_ids(client, params, res_type, chunk, Some(reach)).await?;
            seen.extend(found.into_iter().map(|v| (v.res_type, v.res_id)));
        }
    }
    versions.retain(|v| {
        !in_patient_compartment(&v.res_type)
            || seen.contains(&(v.res_type.clone(), v.res_id.clone()))
    });
    Ok(())
}

/// Before a held client's PATCH by id is planned: the resource it applies to
/// must be one the client sees (404, as if it did not exist, before anything of
/// it is read and patched). Other writes are held once planned
/// ([`check_change`]); conditional ones match among what the client sees.
pub async fn before_write(
    client: &impl GenericClient,
    params: &ParamTable,
    holder: &Holder,
    request: &WriteRequest,
) -> FhirResult<()> {
    match request {
        WriteRequest::Patch {
            res_type,
            target: PatchTarget::Id(res_id),
            ..
        } => visible(client, params, holder, res_type, res_id).await,
        _ => Ok(()),
    }
}

/// Once a held client's write is planned: the resource it replaces or deletes
/// must be one the client sees (404 as if absent, also for an update that would
/// create it), and what it writes must be of the records the
/// client reaches (403): a create, an update, a patch's result.
pub async fn check_change(
    client: &impl GenericClient,
    params: &ParamTable,
    holder: &Holder,
    change: &Change,
) -> FhirResult<()> {
    let (res_type, res_id) = (change.res_type.as_str(), change.res_id.as_str());
    match change.kind {
        // A patch's target was seen already: by id in `before_write`, by
        // criteria matched among what the client sees.
        ChangeKind::Create | ChangeKind::Patch => {}
        ChangeKind::Update | ChangeKind::Delete => {
            visible(client, params, holder, res_type, res_id).await?
        }
    }
    let Some(resource) = &change.resource else {
        return Ok(());
    };
    match content_reached(client, params, holder, res_type, res_id, resource).await? {
        true => Ok(()),
        false => Err(FhirError::Forbidden(format!(
            "{res_type}/{res_id}: this resource is about a patient whose record the token does not reach"
        ))),
    }
}
