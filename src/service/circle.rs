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

/// The patient's care circle now, as a searchset: the CareTeams match, their
/// current members and the contacts of those are included.
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
    let mut matches = Vec::new();
    for id in team_ids {
        matches.extend(store::read_latest(&client, "CareTeam", &id).await?);
    }
    let now = Utc::now();
    let mut seen: HashSet<String> = HashSet::new();
    let mut frontier: Vec<String> = matches
        .iter()
        .filter_map(json_of)
        .flat_map(|team| circle::current_members(&team, now))
        .collect();
    let mut included = Vec::new();
    // Members, then what reaches them: a practitioner's roles are found by search.
    while let Some(reference) = frontier.pop() {
        if included.len() >= MAX_RELATED || !seen.insert(reference.clone()) {
            continue;
        }
        let Some((res_type, id)) = reference.split_once('/') else {
            continue;
        };
        let Some(version) = store::read_latest(&client, res_type, id)
            .await?
            .filter(|v| !v.is_deleted())
        else {
            continue;
        };
        if let Some(resource) = json_of(&version) {
            frontier.extend(circle::contacts_of(&resource));
        }
        if res_type == "Practitioner" {
            let roles = ids_matching(
                &client,
                params,
                "PractitionerRole",
                &[("practitioner", reference.clone())],
                MAX_TEAMS,
            )
            .await?;
            frontier.extend(roles.into_iter().map(|r| format!("PractitionerRole/{r}")));
        }
        included.push(version);
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
