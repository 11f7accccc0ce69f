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

/// A practitioner reachable at `address`: the Practitioner, its Endpoint and its
/// PractitionerRole.
async fn reachable(s: &TestServer, id: &str, address: &str) {
    let resources = [
        json!({"resourceType": "Practitioner", "id": id, "name": [{"family": id}]}),
        json!({"resourceType": "Endpoint", "id": format!("{id}-ep"), "status": "active",
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
            "payloadType": [{"text": "FHIR"}], "address": address}),
        json!({"resourceType": "PractitionerRole", "id": format!("{id}-role"), "active": true,
            "practitioner": {"reference": format!("Practitioner/{id}")},
            "endpoint": [{"reference": format!("Endpoint/{id}-ep")}]}),
    ];
    for r in &resources {
        put(s, r, 201).await;
    }
}

fn team(members: &[(&str, Option<&str>)]) -> Value {
    let participant: Vec<Value> = members
        .iter()
        .map(|(who, end)| {
            let mut p = json!({"member": {"reference": format!("Practitioner/{who}")},
                "period": {"start": "2026-01-01"}});
            if let Some(end) = end {
                p["period"]["end"] = json!(end);
            }
            p
        })
        .collect();
    json!({"resourceType": "CareTeam", "id": "home-team", "status": "active",
        "subject": {"reference": "Patient/stay-patient"}, "participant": participant})
}

/// Who follows a plan changes with its care team: a nurse who joins hears of the
/// plan's next change; once she has left, her Subscription is off and she hears
/// nothing more, while the GP still does.
#[tokio::test]
async fn the_plan_is_followed_by_its_care_team_as_it_is_now() {
    let s = TestServer::start().await;
    let (gp, nurse) = (Receiver::start().await, Receiver::start().await);
    reachable_gp(&s, &gp.url()).await;
    reachable(&s, "home-nurse", &nurse.url()).await;
    put(&s, &team(&[("stay-gp", None)]), 201).await;
    put(&s, &plan("draft", "home-team"), 201).await;
    assert_eq!(gp.expect().await.json()["status"], "draft");

    put(&s, &team(&[("stay-gp", None), ("home-nurse", None)]), 200).await;
    put(&s, &plan("active", "home-team"), 200).await;
    assert_eq!(gp.expect().await.json()["status"], "active");
    assert_eq!(nurse.expect().await.json()["status"], "active");

    let left = team(&[("stay-gp", None), ("home-nurse", Some("2026-02-01"))]);
    put(&s, &left, 200).await;
    let sub_id = passerelle::coordination::careplan::follower_subscription_id(
        "ppcs1",
        "Practitioner/home-nurse",
    );
    let sub = json_of(s.get(&format!("Subscription/{sub_id}")).await, 200).await;
    assert_eq!(sub["status"], "off");
    put(&s, &plan("on-hold", "home-team"), 200).await;
    assert_eq!(gp.expect().await.json()["status"], "on-hold");
    assert!(nurse
        .next(std::time::Duration::from_secs(2))
        .await
        .is_none());
}

fn population(status: &str) -> Value {
    json!({"resourceType": "CarePlan", "id": "hf-followup", "status": status, "intent": "plan",
        "title": "Suivi des patients insuffisants cardiaques du cabinet",
        "subject": {"reference": "Group/hf-patients"},
        "activity": [{"detail": {"status": "scheduled", "description": "Pesée quotidienne, alerte si +2 kg en 3 jours"}}]})
}

fn group(members: &[&str]) -> Value {
    let member: Vec<Value> = members
        .iter()
        .map(|p| json!({"entity": {"reference": format!("Patient/{p}")}}))
        .collect();
    json!({"resourceType": "Group", "id": "hf-patients", "type": "person", "actual": true,
        "name": "Insuffisants cardiaques du Dr Lenoir",
        "managingEntity": {"reference": "Practitioner/stay-gp"}, "member": member})
}

/// The members' plans of a population follow-up, as `CarePlan?part-of=` lists
/// them for the hospital and the GP alike.
async fn member_plans(s: &TestServer) -> Vec<(String, String)> {
    let found = json_of(s.get("CarePlan?part-of=CarePlan/hf-followup").await, 200).await;
    let mut plans: Vec<(String, String)> = found["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let plan = &e["resource"];
            let patient = plan["subject"]["reference"].as_str().unwrap_or_default();
            let status = plan["status"].as_str().unwrap_or_default();
            (patient.to_owned(), status.to_owned())
        })
        .collect();
    plans.sort();
    plans
}

/// A GP's heart-failure patients followed as a population: each member gets a
/// plan of her own from the population's, followed by her care circle (the GP
/// hears of it); one who leaves the Group has hers revoked, one who joins gets
/// one; the population on hold puts the open ones on hold; a member's own plan
/// is not written over.
#[tokio::test]
async fn a_population_follow_up_gives_each_member_a_plan() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    reachable_gp(&s, &gp.url()).await;
    for id in ["hf-2", "hf-3"] {
        put(&s, &json!({"resourceType": "Patient", "id": id}), 201).await;
    }
    put(&s, &group(&["stay-patient", "hf-2"]), 201).await;
    put(&s, &population("active"), 201).await;
    assert_eq!(
        member_plans(&s).await,
        [
            ("Patient/hf-2".to_owned(), "active".to_owned()),
            ("Patient/stay-patient".to_owned(), "active".to_owned())
        ]
    );
    let heard = gp.expect().await.json();
    assert_eq!(
        (
            heard["subject"]["reference"].as_str(),
            heard["partOf"][0]["reference"].as_str()
        ),
        (Some("Patient/stay-patient"), Some("CarePlan/hf-followup"))
    );
    // The GP adds her own activity to her patient's plan: kept from now on.
    let own_id =
        passerelle::coordination::population::member_plan_id("hf-followup", "stay-patient");
    let mut own = json_of(s.get(&format!("CarePlan/{own_id}")).await, 200).await;
    own["activity"]
        .as_array_mut()
        .expect("activities")
        .push(json!({"detail": {"status": "scheduled", "description": "Bilan kaliémie mensuel"}}));
    json_of(s.put_json(&format!("CarePlan/{own_id}"), &own).await, 200).await;
    assert_eq!(
        gp.expect().await.json()["activity"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    put(&s, &group(&["stay-patient", "hf-3"]), 200).await;
    assert_eq!(
        member_plans(&s).await,
        [
            ("Patient/hf-2".to_owned(), "revoked".to_owned()),
            ("Patient/hf-3".to_owned(), "active".to_owned()),
            ("Patient/stay-patient".to_owned(), "active".to_owned())
        ]
    );
    put(&s, &population("on-hold"), 200).await;
    assert_eq!(
        member_plans(&s).await,
        [
            ("Patient/hf-2".to_owned(), "revoked".to_owned()),
            ("Patient/hf-3".to_owned(), "on-hold".to_owned()),
            ("Patient/stay-patient".to_owned(), "on-hold".to_owned())
        ]
    );
    let held = gp.expect().await.json();
    assert_eq!(held["status"], "on-hold");
    assert_eq!(held["activity"].as_array().map(Vec::len), Some(2));
    // The same list, with the patients, in one search.
    let listed = json_of(
        s.get("CarePlan?part-of=CarePlan/hf-followup&status=on-hold&_include=CarePlan:subject")
            .await,
        200,
    )
    .await;
    assert_eq!(listed["total"], 2);
    assert_eq!(listed["entry"].as_array().map(Vec::len), Some(4));
    let members = json_of(
        s.get("Patient?_has:Group:member:_id=hf-patients&_sort=_id")
            .await,
        200,
    )
    .await;
    let ids: Vec<&str> = members["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert_eq!(ids, ["hf-3", "stay-patient"]);
}
