//! Referrals and orientations: a ServiceRequest fulfilled by a Task whose status
//! changes follow one table on every write path; the request follows its Task,
//! and the requester hears of every change.

use serde_json::{json, Value};

use crate::receiver::Receiver;
use crate::stays::{put, reachable_gp, stay};
use crate::support::{json_of, outcome_of, TestServer};

fn request(id: &str) -> Value {
    json!({"resourceType": "ServiceRequest", "id": id, "status": "active", "intent": "order",
        "category": [{"text": "Demande d'admission en SMR"}],
        "code": {"text": "Admission en soins médicaux et de réadaptation"},
        "subject": {"reference": "Patient/stay-patient"},
        "requester": {"reference": "Practitioner/stay-gp"},
        "performer": [{"reference": "Organization/smr-tulle"}],
        "reasonCode": [{"text": "Rééducation après prothèse de hanche"}]})
}

fn task(id: &str, request: &str, status: &str) -> Value {
    json!({"resourceType": "Task", "id": id, "status": status, "intent": "order",
        "basedOn": [{"reference": format!("ServiceRequest/{request}")}],
        "focus": {"reference": format!("ServiceRequest/{request}")},
        "for": {"reference": "Patient/stay-patient"},
        "requester": {"reference": "Practitioner/stay-gp"},
        "owner": {"reference": "Organization/smr-tulle"}})
}

async fn status_of(s: &TestServer, path: &str) -> String {
    json_of(s.get(path).await, 200).await["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The SMR receives, accepts, starts and completes the referral; the GP who asked
/// is called back at each step; steps out of order are refused and write
/// nothing; the request completes with its Task.
#[tokio::test]
async fn a_referral_goes_its_way_and_the_requester_hears_of_each_step() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    reachable_gp(&s, &gp.url()).await;
    put(&s, &request("ref1"), 201).await;
    put(&s, &task("ref1-task", "ref1", "requested"), 201).await;
    let heard = gp.expect().await.json();
    assert_eq!(
        (heard["resourceType"].as_str(), heard["status"].as_str()),
        (Some("Task"), Some("requested"))
    );

    put(&s, &task("ref1-task", "ref1", "received"), 200).await;
    assert_eq!(gp.expect().await.json()["status"], "received");
    // Completed before being accepted: 409 naming the transition, nothing written.
    let refused = outcome_of(
        s.put_json("Task/ref1-task", &task("ref1-task", "ref1", "completed"))
            .await,
        409,
    )
    .await;
    let text = refused["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or_default();
    assert!(text.contains("referral-transition"), "{text}");
    assert!(text.contains("from received to completed"), "{text}");
    assert_eq!(status_of(&s, "Task/ref1-task").await, "received");
    // Rejected without saying why: 422.
    let refused = outcome_of(
        s.put_json("Task/ref1-task", &task("ref1-task", "ref1", "rejected"))
            .await,
        422,
    )
    .await;
    assert_eq!(refused["issue"][0]["expression"][0], "Task.statusReason");

    for step in ["accepted", "in-progress", "completed"] {
        put(&s, &task("ref1-task", "ref1", step), 200).await;
        assert_eq!(gp.expect().await.json()["status"], step);
    }
    assert_eq!(status_of(&s, "ServiceRequest/ref1").await, "completed");
    // The requester's Subscription ends a day after the request.
    let sub_id = passerelle::coordination::referral::requester_subscription_id("ref1");
    let sub = json_of(s.get(&format!("Subscription/{sub_id}")).await, 200).await;
    assert!(sub["end"].is_string(), "{sub}");
    // Over: nothing more, and no way back.
    outcome_of(
        s.put_json("Task/ref1-task", &task("ref1-task", "ref1", "in-progress"))
            .await,
        409,
    )
    .await;
}

/// A PATCH and a transaction entry obey the same table; a transaction with one
/// refused step writes nothing.
#[tokio::test]
async fn every_write_path_obeys_the_table() {
    let s = TestServer::start().await;
    put(&s, &request("ref2"), 201).await;
    // Created straight as accepted: refused.
    let refused = outcome_of(
        s.put_json("Task/ref2-task", &task("ref2-task", "ref2", "accepted"))
            .await,
        409,
    )
    .await;
    assert!(refused.to_string().contains("referral-starts-requested"));
    put(&s, &task("ref2-task", "ref2", "requested"), 201).await;
    let patch = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Task.status"},
        {"name": "value", "valueCode": "in-progress"}]}]});
    let response = s
        .http
        .patch(s.url("Task/ref2-task"))
        .header("content-type", "application/fhir+json")
        .body(patch.to_string())
        .send()
        .await
        .expect("patch");
    outcome_of(response, 409).await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": request("ref2-other"), "request": {"method": "PUT", "url": "ServiceRequest/ref2-other"}},
        {"resource": task("ref2-task", "ref2", "completed"), "request": {"method": "PUT", "url": "Task/ref2-task"}}]});
    outcome_of(s.post_json("", &bundle).await, 409).await;
    assert_eq!(s.get("ServiceRequest/ref2-other").await.status(), 404);
    // Cancelled by the requester: the request is revoked.
    put(&s, &task("ref2-task", "ref2", "cancelled"), 200).await;
    assert_eq!(status_of(&s, "ServiceRequest/ref2").await, "revoked");
}

/// The patient admitted on the request (`Encounter.basedOn`): the accepted Task
/// completes, and the request with it, in the admission's transaction.
#[tokio::test]
async fn an_admission_on_the_request_completes_it() {
    let s = TestServer::start().await;
    put(&s, &request("ref3"), 201).await;
    for step in ["requested", "received", "accepted"] {
        put(
            &s,
            &task("ref3-task", "ref3", step),
            if step == "requested" { 201 } else { 200 },
        )
        .await;
    }
    let mut admitted = stay("ref3-stay", "in-progress");
    admitted["basedOn"] = json!([{"reference": "ServiceRequest/ref3"}]);
    put(&s, &admitted, 201).await;
    assert_eq!(status_of(&s, "Task/ref3-task").await, "completed");
    assert_eq!(status_of(&s, "ServiceRequest/ref3").await, "completed");
}

/// Tele-expertise: the GP's question waits in the specialty's queue; the
/// specialist's answer (a Communication based on the request) completes the
/// Task, whatever its step, and the request; the GP is told; `$turnaround` gives
/// the specialty its figures.
#[tokio::test]
async fn an_answer_completes_a_tele_expertise_and_counts_in_the_turnaround() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    reachable_gp(&s, &gp.url()).await;
    let question = |id: &str| {
        let mut sr = request(id);
        sr["category"] = json!([{"coding": [{"system": passerelle::coordination::acknowledgement::CODE_SYSTEM, "code": "tele-expertise"}]}]);
        sr["performer"] = json!([{"reference": "Organization/cardio-ch"}]);
        sr["note"] = json!([{"text": "FEVG à 35 % : faut-il introduire un ISGLT2 ?"}]);
        sr
    };
    for id in ["te1", "te2"] {
        put(&s, &question(id), 201).await;
        let mut t = task(&format!("{id}-task"), id, "requested");
        t["owner"] = json!({"reference": "Organization/cardio-ch"});
        put(&s, &t, 201).await;
        gp.expect().await;
    }
    let queue = json_of(
        s.get("Task?owner=Organization/cardio-ch&status=requested,received,accepted")
            .await,
        200,
    )
    .await;
    assert_eq!(queue["total"], 2);

    let answer = json!({"resourceType": "Communication", "status": "completed",
        "basedOn": [{"reference": "ServiceRequest/te1"}],
        "subject": {"reference": "Patient/stay-patient"},
        "sender": {"reference": "Organization/cardio-ch"},
        "recipient": [{"reference": "Practitioner/stay-gp"}],
        "payload": [{"contentString": "Oui, dapagliflozine 10 mg ; contrôle de la créatinine à 15 jours."}]});
    let answer = json_of(s.post_json("Communication", &answer).await, 201).await;
    let done = gp.expect().await.json();
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["output"][0]["valueReference"]["reference"],
        format!("Communication/{}", answer["id"].as_str().unwrap())
    );
    assert_eq!(status_of(&s, "ServiceRequest/te1").await, "completed");
    assert_eq!(status_of(&s, "ServiceRequest/te2").await, "active");

    let figures = json_of(
        s.get("ServiceRequest/$turnaround?performer=Organization/cardio-ch")
            .await,
        200,
    )
    .await;
    let value = |name: &str| {
        figures["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(value("answered")["valueInteger"], 1, "{figures}");
    assert_eq!(value("open")["valueInteger"], 1, "{figures}");
    assert_eq!(value("median-delay")["valueQuantity"]["code"], "h");
    let later = json_of(
        s.get("ServiceRequest/$turnaround?performer=Organization/cardio-ch&_since=2999-01-01")
            .await,
        200,
    )
    .await;
    assert_eq!(later["parameter"][0]["valueInteger"], 0, "{later}");
    outcome_of(s.get("ServiceRequest/$turnaround").await, 400).await;
    outcome_of(
        s.get("ServiceRequest/$turnaround?performer=Organization/x&_since=soon")
            .await,
        400,
    )
    .await;
}
