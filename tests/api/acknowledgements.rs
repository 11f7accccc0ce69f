//! Acknowledgement of the GP's notices and escalation of those nobody
//! acknowledged: once, with the timer in the database, across instances.

use std::time::Duration;

use serde_json::{json, Value};

use crate::receiver::Receiver;
use crate::stays::{discharged, put, reachable_gp, stay};
use crate::support::{found, fresh_database, json_of, outcome_of, test_options, TestServer};

const CODES: &str = "https://passerelle.example.fr/fhir/CodeSystem/coordination";

/// A server whose notices escalate after `after`.
async fn escalating_server(config: tokio_postgres::Config, after: Duration) -> TestServer {
    let mut options = test_options();
    options.rules.acks.escalate_after = after;
    TestServer::start_on(config, options).await
}

/// The hospital (the stays' service provider) with its coordination desk's
/// endpoint at `address`.
async fn hospital_desk(s: &TestServer, address: &str) {
    put(
        s,
        &json!({"resourceType": "Endpoint", "id": "stay-ch-ep", "status": "active",
            "connectionType": {"code": "hl7-fhir-rest"}, "payloadType": [{"text": "FHIR"}],
            "address": address}),
        201,
    )
    .await;
    put(
        s,
        &json!({"resourceType": "Organization", "id": "stay-ch", "name": "CH de Tulle",
            "endpoint": [{"reference": "Endpoint/stay-ch-ep"}]}),
        201,
    )
    .await;
}

async fn escalations(s: &TestServer) -> Vec<Value> {
    found(s, &format!("Task?code={CODES}%7Cescalation&_count=100")).await
}

#[tokio::test]
async fn a_task_or_a_communication_acknowledges_and_nothing_escalates() {
    let s = escalating_server(fresh_database().await, Duration::from_secs(2)).await;
    let gp = Receiver::start().await;
    reachable_gp(&s, &gp.url()).await;
    put(&s, &stay("ack1", "in-progress"), 201).await;
    let adm = gp.expect().await.json();
    let adm_id = adm["id"].as_str().unwrap().to_owned();

    // The GP's software acknowledges with a Task.
    let task = json!({"resourceType": "Task", "status": "completed", "intent": "order",
        "focus": {"reference": format!("CommunicationRequest/{adm_id}")},
        "owner": {"reference": "Practitioner/stay-gp"}});
    let task = json_of(s.post_json("Task", &task).await, 201).await;
    let request = json_of(s.get(&format!("CommunicationRequest/{adm_id}")).await, 200).await;
    assert_eq!(request["status"], "completed");
    assert_eq!(
        request["note"][0]["text"],
        format!("Acquittée par Task/{}", task["id"].as_str().unwrap())
    );

    // The discharge is acknowledged by a Communication.
    put(&s, &discharged("ack1"), 200).await;
    let sor = gp.expect().await.json();
    let sor_id = sor["id"].as_str().unwrap().to_owned();
    let communication = json!({"resourceType": "Communication", "status": "completed",
        "basedOn": [{"reference": format!("CommunicationRequest/{sor_id}")}],
        "payload": [{"contentString": "Bien reçu, je passe voir M. Chabrol lundi."}]});
    json_of(s.post_json("Communication", &communication).await, 201).await;
    let request = json_of(s.get(&format!("CommunicationRequest/{sor_id}")).await, 200).await;
    assert_eq!(request["status"], "completed");

    // Past the delay, nothing was escalated.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let escalated = escalations(&s).await;
    assert!(escalated.is_empty(), "{escalated:?}");
}

#[tokio::test]
async fn acknowledging_what_is_not_a_notice_is_refused() {
    let s = TestServer::start().await;
    put(&s, &stay("ack2", "in-progress"), 201).await;
    let declared = json_of(
        s.get("CommunicationRequest?encounter=Encounter/ack2&event-type=ADM")
            .await,
        200,
    )
    .await;
    let declaration = declared["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = s.version_count().await;
    for focus in [
        json!({"reference": format!("CommunicationRequest/{declaration}")}),
        json!({"reference": "CommunicationRequest/nowhere"}),
        json!({"reference": "Encounter/ack2"}),
    ] {
        let task = json!({"resourceType": "Task", "status": "completed", "intent": "order",
            "code": {"coding": [{"system": CODES, "code": "acknowledgement"}]},
            "focus": focus});
        let oo = outcome_of(s.post_json("Task", &task).await, 422).await;
        assert_eq!(oo["issue"][0]["expression"][0], "Task.focus", "{oo}");
    }
    assert_eq!(s.version_count().await, before);
}

#[tokio::test]
async fn an_unacknowledged_notice_is_escalated_once_to_the_hospital() {
    let s = escalating_server(fresh_database().await, Duration::from_secs(1)).await;
    let gp = Receiver::start().await;
    let desk = Receiver::start().await;
    reachable_gp(&s, &gp.url()).await;
    hospital_desk(&s, &desk.url()).await;
    put(&s, &stay("esc1", "in-progress"), 201).await;
    let adm = gp.expect().await.json();

    let Some(task) = desk.next(Duration::from_secs(10)).await else {
        let subs = json_of(s.get("Subscription").await, 200).await;
        panic!(
            "no escalation at the desk: {:?}\n{subs}",
            escalations(&s).await
        );
    };
    let task = task.json();
    assert_eq!(task["resourceType"], "Task");
    assert_eq!(task["status"], "requested");
    assert_eq!(task["intent"], "order");
    assert_eq!(task["owner"]["reference"], "Organization/stay-ch");
    assert_eq!(task["code"]["coding"][0]["code"], "escalation");
    assert_eq!(
        task["focus"]["reference"],
        format!("CommunicationRequest/{}", adm["id"].as_str().unwrap())
    );
    // Once: later polls find nothing more to escalate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(escalations(&s).await.len(), 1);
    assert!(desk.next(Duration::from_millis(300)).await.is_none());
    // The desk taking the Task in hand is no news to the desk.
    let mut taken = task.clone();
    taken["status"] = json!("in-progress");
    let id = task["id"].as_str().unwrap();
    put(&s, &taken, 200).await;
    assert!(
        desk.next(Duration::from_millis(700)).await.is_none(),
        "{id}"
    );
}

#[tokio::test]
async fn two_instances_escalate_each_notice_once() {
    let config = fresh_database().await;
    let after = Duration::from_secs(1);
    let a = escalating_server(config.clone(), after).await;
    let b = escalating_server(config, after).await;
    let gp = Receiver::start().await;
    reachable_gp(&a, &gp.url()).await;
    for i in 0..6 {
        let server = if i % 2 == 0 { &a } else { &b };
        put(server, &stay(&format!("esc2-{i}"), "in-progress"), 201).await;
    }
    for _ in 0..6 {
        gp.expect().await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tasks = escalations(&a).await;
    assert_eq!(tasks.len(), 6, "{tasks:?}");
    let mut focus: Vec<&str> = tasks
        .iter()
        .map(|t| t["focus"]["reference"].as_str().unwrap())
        .collect();
    focus.sort();
    focus.dedup();
    assert_eq!(focus.len(), 6);
}
