//! `Patient/[id]/$care-circle`: who is in the patient's care circle now (the
//! active CareTeams about the patient: the care circle and the teams of the stays
//! in progress) and how to reach them (their PractitionerRoles, Organizations and
//! Endpoints), so that an EHR can show "who to call".

use std::collections::HashSet;

use chrono::Utc;
use deadpool_postgres::{GenericClient, Pool};

use super::SearchPage;
use crate::coordination::circle;
use crate::error::{FhirError, FhirResult};
use crate::search::params::ParamTable;
use crate::search::{self, Handling};
use crate::store::{self, StoredVersion};

/// CareTeams, and members with their contacts, shown at most.
const MAX_TEAMS: usize = 50;
const MAX_RELATED: usize = 500;
/// Rounds from the members to what reaches them (a practitioner, their roles,
/// a role's organisation, its endpoints).
const MAX_HOPS: usize = 4;

fn json_of(version: &StoredVersion) -> Option<serde_json::Value> {
    serde_json::from_str(version.json.as_deref()?).ok()
}

async fn ids_matching(
    client: &impl GenericClient,
    params: &ParamTable,
    res_type: &str,
    criteria: &[(&str, String)],
    limit: usize,
) -> FhirResult<Vec<String>> {
    let pairs: Vec<(String, String)> = criteria
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let plan = search::parse(params, res_type, &pairs, Handling::Strict)?;
    store::matching_ids(client, &plan, limit).await
}

/// The current versions of `references` (`Type/id`), in one query.
async fn current(
    client: &impl GenericClient,
    references: &[String],
) -> FhirResult<Vec<StoredVersion>> {
    let keys: Vec<(&str, &str)> = references
        .iter()
        .filter_map(|r| r.split_once('/'))
        .collect();
    store::read_current(client, &keys).await
}

/// The patient's care circle now, as a searchset: the CareTeams match, their
/// current members and the contacts of those are included. A query per round
/// of references, not per reference.
pub async fn care_circle(
    pool: &Pool,
    params: &ParamTable,
    patient_id: &str,
) -> FhirResult<SearchPage> {
    let client = pool.get().await?;
    let patient = store::read_latest(&client, "Patient", patient_id)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("Patient/{patient_id} is not known")))?;
    if patient.is_deleted() {
        return Err(FhirError::Gone(format!("Patient/{patient_id} was deleted")));
    }
    let subject = format!("Patient/{patient_id}");
    let team_ids = ids_matching(
        &client,
        params,
        "CareTeam",
        &[("subject", subject), ("status", "active".to_owned())],
        MAX_TEAMS,
    )
    .await?;
    let team_refs: Vec<String> = team_ids.iter().map(|id| format!("CareTeam/{id}")).collect();
    let mut matches = current(&client, &team_refs).await?;
    matches.sort_by(|a, b| a.res_id.cmp(&b.res_id));
    let now = Utc::now();
    let mut seen: HashSet<String> = HashSet::new();
    let mut layer: Vec<String> = matches
        .iter()
        .filter_map(json_of)
        .flat_map(|team| circle::current_members(&team, now))
        .collect();
    let mut included = Vec::new();
    for _ in 0..MAX_HOPS {
        layer.retain(|r| seen.insert(r.clone()));
        layer.truncate(MAX_RELATED.saturating_sub(included.len()));
        if layer.is_empty() {
            break;
        }
        let found = current(&client, &layer).await?;
        let mut next: Vec<String> = found
            .iter()
            .filter_map(json_of)
            .flat_map(|r| circle::contacts_of(&r))
            .collect();
        // A practitioner's roles are found by search, all of them at once.
        let practitioners: Vec<&String> = layer
            .iter()
            .filter(|r| r.starts_with("Practitioner/"))
            .collect();
        if !practitioners.is_empty() {
            let any = practitioners
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(",");
            let roles = ids_matching(
                &client,
                params,
                "PractitionerRole",
                &[("practitioner", any)],
                MAX_RELATED,
            )
            .await?;
            next.extend(roles.into_iter().map(|r| format!("PractitionerRole/{r}")));
        }
        included.extend(found);
        layer = next;
    }
    let plan = search::parse(params, "CareTeam", &[], Handling::Lenient)?;
    Ok(SearchPage {
        plan,
        total: Some(matches.len() as i64),
        matches,
        included,
        next: None,
    })
}
