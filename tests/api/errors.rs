//! Bad input gets an OperationOutcome with the right 4xx status and writes nothing.

use serde_json::json;

use crate::support::{outcome_of, TestServer};

async fn post_raw(s: &TestServer, path: &str, content_type: &str, body: &str) -> reqwest::Response {
    s.http
        .post(s.url(path))
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("post")
}

#[tokio::test]
async fn invalid_resources_are_400_with_the_path_and_write_nothing() {
    let s = TestServer::start().await;
    let json = "application/fhir+json";
    let cases = [
        ("not json", "{", None),
        (
            "wrong type in URL",
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#,
            None,
        ),
        (
            "unknown element",
            r#"{"resourceType":"Patient","nickname":"Jo"}"#,
            Some("Patient.nickname"),
        ),
        (
            "bad date",
            r#"{"resourceType":"Patient","birthDate":"25.12.1974"}"#,
            Some("Patient.birthDate"),
        ),
        (
            "impossible date",
            r#"{"resourceType":"Patient","birthDate":"2023-02-29"}"#,
            Some("Patient.birthDate"),
        ),
        (
            "array for 0..1",
            r#"{"resourceType":"Patient","gender":["male"]}"#,
            Some("Patient.gender"),
        ),
        (
            "object for array",
            r#"{"resourceType":"Patient","name":{"family":"X"}}"#,
            Some("Patient.name"),
        ),
        (
            "wrong JSON kind",
            r#"{"resourceType":"Patient","active":"yes"}"#,
            Some("Patient.active"),
        ),
        (
            "empty array",
            r#"{"resourceType":"Patient","name":[]}"#,
            Some("Patient.name"),
        ),
        (
            "empty string",
            r#"{"resourceType":"Patient","gender":""}"#,
            Some("Patient.gender"),
        ),
        (
            "NUL in string",
            r#"{"resourceType":"Patient","name":[{"family":"a\u0000b"}]}"#,
            Some("Patient.name[0].family"),
        ),
        (
            "missing required",
            r#"{"resourceType":"Patient","link":[{"type":"seealso"}]}"#,
            Some("Patient.link[0]"),
        ),
        ("unknown resource type", r#"{"resourceType":"Nope"}"#, None),
        (
            "nested in extension",
            r#"{"resourceType":"Patient","extension":[{"url":"http://x","valueDate":"2020-13"}]}"#,
            Some("Patient.extension[0].valueDate"),
        ),
        (
            "integer overflow",
            r#"{"resourceType":"Patient","multipleBirthInteger":2147483648}"#,
            Some("Patient.multipleBirthInteger"),
        ),
    ];
    for (what, body, path) in cases {
        let oo = outcome_of(post_raw(&s, "Patient", json, body).await, 400).await;
        if let Some(path) = path {
            let expressions: Vec<&str> = oo["issue"]
                .as_array()
                .expect("issues")
                .iter()
                .filter_map(|i| i["expression"][0].as_str())
                .collect();
            assert!(expressions.contains(&path), "{what}: {oo}");
        }
    }
    assert_eq!(
        s.version_count().await,
        0,
        "a rejected write must leave nothing behind"
    );
}

#[tokio::test]
async fn update_rules() {
    let s = TestServer::start().await;
    // No id in the body, or a different one.
    outcome_of(
        s.put_json("Patient/p1", &json!({"resourceType":"Patient"}))
            .await,
        400,
    )
    .await;
    outcome_of(
        s.put_json("Patient/p1", &json!({"resourceType":"Patient","id":"p2"}))
            .await,
        400,
    )
    .await;
    // Malformed id in the URL.
    outcome_of(
        s.put_json("Patient/a_b", &json!({"resourceType":"Patient","id":"a_b"}))
            .await,
        400,
    )
    .await;
    outcome_of(s.get("Patient/a%20b").await, 400).await;
    outcome_of(s.get(&format!("Patient/{}", "x".repeat(65))).await, 400).await;
    assert_eq!(s.version_count().await, 0);
}

#[tokio::test]
async fn statuses_of_the_http_layer() {
    let s = TestServer::start().await;
    outcome_of(s.get("Unknown/1").await, 404).await;
    outcome_of(s.get("Patient/nope").await, 404).await;
    outcome_of(s.get("Patient/1/$everything").await, 404).await;
    let put_history = s
        .http
        .put(s.url("Patient/1/_history"))
        .header("content-type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .expect("put");
    assert!(put_history.headers().get("allow").is_some());
    outcome_of(put_history, 405).await;
    outcome_of(
        s.http.post(s.url("metadata")).send().await.expect("post"),
        405,
    )
    .await;
    let html = s
        .http
        .get(s.url("metadata"))
        .header("accept", "text/html")
        .send()
        .await
        .expect("get");
    outcome_of(html, 406).await;
    outcome_of(s.get("metadata?_format=csv").await, 406).await;
    let text = post_raw(&s, "Patient", "text/plain", r#"{"resourceType":"Patient"}"#).await;
    outcome_of(text, 415).await;
    let empty = post_raw(&s, "Patient", "application/fhir+json", "").await;
    outcome_of(empty, 400).await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let s = TestServer::start_with_limit(1024).await;
    let big = json!({"resourceType":"Patient","name":[{"family": "x".repeat(2000)}]});
    outcome_of(s.post_json("Patient", &big).await, 413).await;
    // Without a Content-Length (chunked), the limit holds too.
    let response = crate::support::chunked_post(
        &s.authority(),
        "/fhir/Patient",
        big.to_string().as_bytes(),
        256,
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("OperationOutcome"), "{response}");
    assert_eq!(s.version_count().await, 0);
}

/// Values that PostgreSQL cannot take (NUL, a cursor of the wrong type, a number
/// beyond numeric) are the client's to correct: 400, never 500.
#[tokio::test]
async fn values_the_database_refuses_are_400() {
    let s = TestServer::start().await;
    for query in [
        "Patient?family=%00",
        "Patient?identifier=a%00b",
        "Patient?_sort=birthdate&_after=%5B%22zzz%22%2C%22Patient%22%2C%22x%22%5D",
        "Encounter?length=1e200000",
    ] {
        outcome_of(s.get(query).await, 400).await;
    }
}
