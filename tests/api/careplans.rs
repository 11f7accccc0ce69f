//! Shared care plans: status changes follow one table on every write path, and
//! each change reaches the reachable members of the plan's care team.

use serde_json::{json, Value};

use crate::receiver::Receiver;
use crate::stays::{put, reachable_gp};
use crate::support::{json_of, outcome_of, TestServer};

fn plan(status: &str, team: &str) -> Value {
    json!({"resourceType": "CarePlan", "id": "ppcs1", "status": status, "intent": "plan",
        "title": "PPCS — insuffisance cardiaque",
        "subject": {"reference": "Patient/stay-patient"},
        "careTeam": [{"reference": format!("CareTeam/{team}")}],
        "activity": [{"detail": {"status": "scheduled", "description": "Pesée quotidienne"}}]})
}

#[tokio::test]
async fn the_care_team_follows_the_plan_and_its_status_follows_the_table() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    reachable_gp(&s, &gp.url()).await;
    let circle = passerelle::coordination::circle::circle_id("stay-patient");

    put(&s, &plan("draft", &circle), 201).await;
    assert_eq!(gp.expect().await.json()["status"], "draft");
    put(&s, &plan("active", &circle), 200).await;
    assert_eq!(gp.expect().await.json()["status"], "active");
    // Back to draft: 409 naming the rule, nothing written.
    let refused = outcome_of(
        s.put_json("CarePlan/ppcs1", &plan("draft", &circle)).await,
        409,
    )
    .await;
    assert!(
        refused.to_string().contains("careplan-transition"),
        "{refused}"
    );
    let current = json_of(s.get("CarePlan/ppcs1").await, 200).await;
    assert_eq!(current["meta"]["versionId"], "2");

    put(&s, &plan("completed", &circle), 200).await;
    assert_eq!(gp.expect().await.json()["status"], "completed");
    outcome_of(
        s.put_json("CarePlan/ppcs1", &plan("active", &circle)).await,
        409,
    )
    .await;
    // The GP's Subscription to the plan ends a day after it closed.
    let sub_id = passerelle::coordination::careplan::follower_subscription_id(
        "ppcs1",
        "Practitioner/stay-gp",
    );
    let sub = json_of(s.get(&format!("Subscription/{sub_id}")).await, 200).await;
    assert!(sub["end"].is_string(), "{sub}");
    assert!(gp
        .next(std::time::Duration::from_millis(500))
        .await
        .is_none());
}
