//! PATCH with JSON Patch.

use serde_json::{json, Value};

use crate::support::{json_of, outcome_of, TestServer};

async fn patch(
    s: &TestServer,
    path: &str,
    document: Value,
    if_match: Option<&str>,
) -> reqwest::Response {
    let mut req = s
        .http
        .patch(s.url(path))
        .header("content-type", "application/json-patch+json")
        .body(document.to_string());
    if let Some(etag) = if_match {
        req = req.header("if-match", etag);
    }
    req.send().await.expect("patch")
}

#[tokio::test]
async fn json_patch_writes_a_validated_version() {
    let s = TestServer::start().await;
    s.put_json(
        "Patient/p",
        &json!({"resourceType":"Patient","id":"p","active":false,
        "identifier":[{"system":"urn:oid:1.2.250.1.213.1.4.10","value":"2740512345678"}],
        "name":[{"family":"Martin"}]}),
    )
    .await;
    let doc = json!([
        {"op":"test","path":"/active","value":false},
        {"op":"replace","path":"/active","value":true},
        {"op":"add","path":"/name/0/given","value":["Léa"]}]);
    let resp = patch(&s, "Patient/p", doc, Some("W/\"1\"")).await;
    assert_eq!(resp.headers()["etag"], "W/\"2\"");
    let patched = json_of(resp, 200).await;
    assert_eq!(patched["active"], true);
    assert_eq!(patched["name"][0]["given"][0], "Léa");
    assert_eq!(patched["meta"]["versionId"], "2");
    let history = json_of(s.get("Patient/p/_history").await, 200).await;
    assert_eq!(history["entry"][0]["request"]["method"], "PATCH");
    // Stale If-Match, failed test, invalid result, changed id: nothing written.
    outcome_of(
        patch(
            &s,
            "Patient/p",
            json!([{"op":"replace","path":"/active","value":false}]),
            Some("W/\"1\""),
        )
        .await,
        412,
    )
    .await;
    outcome_of(
        patch(
            &s,
            "Patient/p",
            json!([{"op":"test","path":"/active","value":false}]),
            None,
        )
        .await,
        422,
    )
    .await;
    let invalid = outcome_of(
        patch(
            &s,
            "Patient/p",
            json!([{"op":"add","path":"/birthDate","value":"12/05/1974"}]),
            None,
        )
        .await,
        400,
    )
    .await;
    assert!(
        invalid.to_string().contains("Patient.birthDate"),
        "{invalid}"
    );
    outcome_of(
        patch(
            &s,
            "Patient/p",
            json!([{"op":"replace","path":"/id","value":"q"}]),
            None,
        )
        .await,
        422,
    )
    .await;
    let current = json_of(s.get("Patient/p").await, 200).await;
    assert_eq!(current["meta"]["versionId"], "2");
    // Conditional patch, unknown and deleted targets, wrong media type.
    let resp = patch(
        &s,
        "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|2740512345678",
        json!([{"op":"add","path":"/gender","value":"female"}]),
        None,
    )
    .await;
    assert_eq!(json_of(resp, 200).await["gender"], "female");
    outcome_of(patch(&s, "Patient/nobody", json!([]), None).await, 404).await;
    s.http
        .delete(s.url("Patient/p"))
        .send()
        .await
        .expect("delete");
    outcome_of(patch(&s, "Patient/p", json!([]), None).await, 410).await;
    let resp = s
        .http
        .patch(s.url("Patient/p"))
        .header("content-type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .expect("patch");
    outcome_of(resp, 415).await;
}
