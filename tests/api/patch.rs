//! PATCH with JSON Patch and FHIRPath Patch, alone and in transactions.

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
        422,
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
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .expect("patch");
    outcome_of(resp, 415).await;
}

fn operation(kind: &str, path: &str, more: Value) -> Value {
    let mut parts = vec![
        json!({"name": "type", "valueCode": kind}),
        json!({"name": "path", "valueString": path}),
    ];
    parts.extend(more.as_array().cloned().unwrap_or_default());
    json!({"name": "operation", "part": parts})
}

#[tokio::test]
async fn fhirpath_patch_discharges_a_stay_and_is_validated() {
    let s = TestServer::start().await;
    s.put_json(
        "Encounter/e1",
        &json!({"resourceType": "Encounter", "id": "e1", "status": "in-progress",
                "class": {"code": "IMP"}, "subject": {"reference": "Patient/p1"},
                "period": {"start": "2026-11-20T08:00:00+01:00"}}),
    )
    .await;
    let discharge = json!({"resourceType": "Parameters", "parameter": [
        operation("replace", "Encounter.status", json!([{"name": "value", "valueCode": "finished"}])),
        operation("add", "Encounter.period", json!([{"name": "name", "valueString": "end"},
                                                    {"name": "value", "valueDateTime": "2026-11-27T18:30:00+01:00"}])),
        operation("add", "Encounter", json!([{"name": "name", "valueString": "hospitalization"},
            {"name": "value", "part": [{"name": "dischargeDisposition", "valueCodeableConcept": {"text": "retour à domicile"}}]}])),
    ]});
    let send = |body: &Value, etag: &str| {
        s.http
            .patch(s.url("Encounter/e1"))
            .header("content-type", "application/fhir+json")
            .header("if-match", etag)
            .body(body.to_string())
            .send()
    };
    let stale = send(&discharge, "W/\"9\"").await.expect("patch");
    outcome_of(stale, 412).await;
    let resp = send(&discharge, "W/\"1\"").await.expect("patch");
    let e = json_of(resp, 200).await;
    assert_eq!(e["status"], "finished");
    assert_eq!(e["period"]["end"], "2026-11-27T18:30:00+01:00");
    assert_eq!(
        e["hospitalization"]["dischargeDisposition"]["text"],
        "retour à domicile"
    );
    assert_eq!(e["meta"]["versionId"], "2");
    // A patch whose result is not a valid Encounter writes nothing.
    let broken = json!({"resourceType": "Parameters", "parameter": [
        operation("replace", "Encounter.status", json!([{"name": "value", "valueInteger": 3}]))]});
    outcome_of(send(&broken, "W/\"2\"").await.expect("patch"), 422).await;
    // Deleting what is not there changes nothing: no new version.
    let nothing = json!({"resourceType": "Parameters", "parameter": [
        operation("delete", "Encounter.reasonCode", json!([]))]});
    let resp = send(&nothing, "W/\"2\"").await.expect("patch");
    assert_eq!(json_of(resp, 200).await["meta"]["versionId"], "2");
    let ambiguous = json!({"resourceType": "Parameters", "parameter": [
        operation("replace", "Encounter.period.start | Encounter.period.end", json!([{"name": "value", "valueDateTime": "2026-11-21"}]))]});
    outcome_of(send(&ambiguous, "W/\"2\"").await.expect("patch"), 422).await;
    let current = json_of(s.get("Encounter/e1").await, 200).await;
    assert_eq!(current["meta"]["versionId"], "2");
}

#[tokio::test]
async fn patch_entries_in_a_transaction() {
    use base64::Engine as _;
    let s = TestServer::start().await;
    s.put_json(
        "Patient/p",
        &json!({"resourceType": "Patient", "id": "p", "active": false}),
    )
    .await;
    s.put_json(
        "CareTeam/t",
        &json!({"resourceType": "CareTeam", "id": "t", "status": "proposed",
                "subject": {"reference": "Patient/p"}}),
    )
    .await;
    let json_patch = json!([{"op": "replace", "path": "/active", "value": true}]).to_string();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                      "data": base64::engine::general_purpose::STANDARD.encode(json_patch)},
         "request": {"method": "PATCH", "url": "Patient/p", "ifMatch": "W/\"1\""}},
        {"resource": {"resourceType": "Parameters", "parameter": [
            operation("replace", "CareTeam.status", json!([{"name": "value", "valueCode": "active"}]))]},
         "request": {"method": "PATCH", "url": "CareTeam?subject=Patient/p"}}
    ]});
    let response = json_of(s.post_json("", &bundle).await, 200).await;
    assert_eq!(response["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(response["entry"][1]["response"]["etag"], "W/\"2\"");
    assert_eq!(json_of(s.get("Patient/p").await, 200).await["active"], true);
    assert_eq!(
        json_of(s.get("CareTeam/t").await, 200).await["status"],
        "active"
    );
}
