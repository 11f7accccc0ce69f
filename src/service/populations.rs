//! What plans bring with them beyond their own care team, inside the write's
//! transaction: the member plans of a population's follow-up (a Group and the
//! CarePlan about it), and the followers of the plans whose care team changed.
//! What to write is decided by `coordination::population`; this reads what it
//! needs.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde_json::Value;

use super::notices::{current_all, found_by, Population, TeamChange};
use super::{Change, Rules};
use crate::coordination::{circle, population};
use crate::error::{FhirError, FhirResult};
use crate::limits::MAX_POPULATION_MEMBERS;

/// The statuses of a plan still followed.
const OPEN: &str = "draft,active,on-hold";

/// Population plans of one Group looked at when it changes.
const MAX_GROUP_PLANS: usize = 20;

/// Plans that follow one CareTeam looked at when its members change.
const MAX_TEAM_PLANS: usize = 100;

/// The member plans that the population plans and Groups written bring: made,
/// moved to the population's status, or revoked (see `coordination::population`).
pub(super) async fn member_plans(
    tx: &Transaction<'_>,
    rules: &Rules,
    now: DateTime<Utc>,
    populations: &[Population],
) -> FhirResult<Vec<(usize, Change)>> {
    let mut plans: Vec<(usize, String, Value)> = Vec::new();
    for written in populations {
        match written {
            Population::Plan {
                position,
                plan_id,
                plan,
            } => plans.push((*position, plan_id.clone(), plan.clone())),
            Population::Group { position, group_id } => {
                let criteria = [
                    ("subject", format!("Group/{group_id}")),
                    ("status", OPEN.to_owned()),
                ];
                for plan in found_by(tx, rules, "CarePlan", &criteria, MAX_GROUP_PLANS).await? {
                    if let Some(id) = plan["id"].as_str().map(str::to_owned) {
                        plans.push((*position, id, plan));
                    }
                }
            }
        }
    }
    let mut done = HashSet::new();
    let mut changes = Vec::new();
    for (position, plan_id, plan) in plans {
        let Some(group_id) = population::group_of(&plan).filter(|_| done.insert(plan_id.clone()))
        else {
            continue;
        };
        let group = current_all(tx, &[("Group", group_id)]).await?;
        let members = group
            .first()
            .map(|g| population::current_members(g, now))
            .unwrap_or_default();
        if members.len() > MAX_POPULATION_MEMBERS {
            return Err(FhirError::Unprocessable(vec![crate::error::Issue::new(
                "too-costly",
                format!(
                    "Group/{group_id} has {} current members: a population's follow-up (CarePlan/{plan_id}) is made for at most {MAX_POPULATION_MEMBERS}",
                    members.len()
                ),
            )]));
        }
        let part_of = [("part-of", format!("CarePlan/{plan_id}"))];
        // The plans of those who left are among them: room for as many again.
        let existing =
            found_by(tx, rules, "CarePlan", &part_of, 2 * MAX_POPULATION_MEMBERS).await?;
        let circle_ids: Vec<String> = members.iter().map(|m| circle::circle_id(m)).collect();
        let keys: Vec<(&str, &str)> = circle_ids
            .iter()
            .map(|id| ("CareTeam", id.as_str()))
            .collect();
        let circles: HashSet<String> = current_all(tx, &keys)
            .await?
            .iter()
            .filter_map(|team| team["id"].as_str().map(str::to_owned))
            .collect();
        let with_circle: HashSet<String> = members
            .iter()
            .zip(&circle_ids)
            .filter(|(_, id)| circles.contains(*id))
            .map(|(member, _)| member.clone())
            .collect();
        changes.extend(
            population::member_plans(&plan_id, &plan, &members, &existing, &with_circle)
                .into_iter()
                .map(|(id, member_plan)| {
                    (position, Change::update("CarePlan", id, member_plan, None))
                }),
        );
    }
    Ok(changes)
}

/// The open plans that follow each CareTeam whose members changed, with the
/// change (by its index in `teams`).
pub(super) async fn plans_of_teams(
    tx: &Transaction<'_>,
    rules: &Rules,
    teams: &[TeamChange],
) -> FhirResult<Vec<(usize, String, Value)>> {
    let mut plans = Vec::new();
    for (n, team) in teams.iter().enumerate() {
        let criteria = [
            ("care-team", format!("CareTeam/{}", team.team_id)),
            ("status", OPEN.to_owned()),
        ];
        for plan in found_by(tx, rules, "CarePlan", &criteria, MAX_TEAM_PLANS).await? {
            if let Some(id) = plan["id"].as_str().map(str::to_owned) {
                plans.push((n, id, plan));
            }
        }
    }
    Ok(plans)
}
