use serde_json::json;

use crate::support::{json_of, outcome_of, TestServer};

const INS: &str = "urn:oid:1.2.250.1.213.1.4.10";

fn patient(nir: &str) -> serde_json::Value {
    json!({"resourceType": "Patient", "identifier": [{"system": INS, "value": nir}], "active": true})
}

async fn post_if_none_exist(
    s: &TestServer,
    body: &serde_json::Value,
    criteria: &str,
) -> reqwest::Response {
    s.http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", criteria)
        .body(body.to_string())
        .send()
        .await
        .expect("post")
}

#[tokio::test]
async fn conditional_create_stores_once() {
    let s = TestServer::start().await;
    let criteria = format!("identifier={INS}|1111111111111");
    let first = json_of(
        post_if_none_exist(&s, &patient("1111111111111"), &criteria).await,
        201,
    )
    .await;
    let second = json_of(
        post_if_none_exist(&s, &patient("1111111111111"), &criteria).await,
        200,
    )
    .await;
    assert_eq!(first["id"], second["id"]);
    // The `Patient?` prefix form is accepted too.
    let third = json_of(
        post_if_none_exist(
            &s,
            &patient("1111111111111"),
            &format!("Patient?{criteria}"),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(first["id"], third["id"]);
    // Two matches: 412.
    s.create(&patient("2222222222222")).await;
    s.create(&patient("2222222222222")).await;
    let resp = post_if_none_exist(
        &s,
        &patient("2222222222222"),
        &format!("identifier={INS}|2222222222222"),
    )
    .await;
    outcome_of(resp, 412).await;
    // Unknown criteria are refused rather than ignored.
    outcome_of(
        post_if_none_exist(&s, &patient("3"), "nickname=x").await,
        400,
    )
    .await;
}

#[tokio::test]
async fn racing_conditional_creates_make_one_resource() {
    let s = TestServer::start().await;
    let criteria = format!("identifier={INS}|3333333333333");
    let mut racers = Vec::new();
    for _ in 0..6 {
        let req = s
            .http
            .post(s.url("Patient"))
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", criteria.clone())
            .body(patient("3333333333333").to_string());
        racers.push(tokio::spawn(async move {
            req.send().await.expect("post").status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for r in racers {
        statuses.push(r.await.expect("join"));
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    let found = json_of(s.get(&format!("Patient?{criteria}")).await, 200).await;
    assert_eq!(found["total"], 1);
}

#[tokio::test]
async fn conditional_update_and_delete() {
    let s = TestServer::start().await;
    let criteria = format!("identifier={INS}|4444444444444");
    // No match: created.
    let created = json_of(
        s.put_json(&format!("Patient?{criteria}"), &patient("4444444444444"))
            .await,
        201,
    )
    .await;
    let id = created["id"].as_str().expect("id").to_owned();
    // One match: updated in place.
    let mut body = patient("4444444444444");
    body["active"] = json!(false);
    let updated = json_of(s.put_json(&format!("Patient?{criteria}"), &body).await, 200).await;
    assert_eq!(updated["id"], id.as_str());
    assert_eq!(updated["meta"]["versionId"], "2");
    // A body id that is not the match's: 400.
    body["id"] = json!("someone-else");
    outcome_of(s.put_json(&format!("Patient?{criteria}"), &body).await, 400).await;
    // Conditional delete by _id and by identifier.
    let resp = s
        .http
        .delete(s.url(&format!("Patient?{criteria}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    outcome_of(s.get(&format!("Patient/{id}")).await, 410).await;
    let resp = s
        .http
        .delete(s.url(&format!("Patient?{criteria}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204, "no match is not an error");
    let other = s.create(&patient("5555555555555")).await;
    let resp = s
        .http
        .delete(s.url(&format!("Patient?_id={other}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    outcome_of(s.get(&format!("Patient/{other}")).await, 410).await;
    // Several matches: 412, nothing deleted.
    s.create(&patient("6666666666666")).await;
    s.create(&patient("6666666666666")).await;
    let resp = s
        .http
        .delete(s.url(&format!("Patient?identifier={INS}|6666666666666")))
        .send()
        .await
        .expect("delete");
    outcome_of(resp, 412).await;
    // Conditional operations need criteria.
    let resp = s
        .http
        .delete(s.url("Patient"))
        .send()
        .await
        .expect("delete");
    outcome_of(resp, 400).await;
}
