//! Hostile requests: each must get a clear 4xx OperationOutcome, quickly, and leave
//! the server serving (an overflowed stack would abort this whole test process).

use serde_json::json;

use crate::support::{outcome_of, TestServer};

/// The server still answers, and reads what it stored.
async fn still_serving(s: &TestServer) {
    let id = s
        .create(&json!({"resourceType":"Patient","active":true}))
        .await;
    assert_eq!(s.get(&format!("Patient/{id}")).await.status(), 200);
}

/// Built as text: a `serde_json::Value` this deep would overflow the test's own stack.
fn nested_extension_json(levels: usize) -> String {
    let open = r#"{"url":"http://example.org/e","extension":["#.repeat(levels);
    let close = "]}".repeat(levels);
    format!(
        r#"{{"resourceType":"Patient","extension":[{open}{{"url":"http://example.org/e","valueString":"v"}}{close}]}}"#
    )
}

fn nested_extension_xml(levels: usize) -> String {
    let open = r#"<extension url="http://example.org/e">"#.repeat(levels);
    let close = "</extension>".repeat(levels);
    format!(
        r#"<Patient xmlns="http://hl7.org/fhir">{open}<extension url="http://example.org/e"><valueString value="v"/></extension>{close}</Patient>"#
    )
}

async fn post_body(
    s: &TestServer,
    path: &str,
    content_type: &str,
    body: String,
) -> reqwest::Response {
    s.http
        .post(s.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST")
}

#[tokio::test]
async fn deeply_nested_bodies_are_refused_and_the_limit_is_served() {
    let s = TestServer::start().await;
    // At the limits (64 JSON levels, 40 XML elements): stored, and read back in
    // either format.
    let json_ok = nested_extension_json(30);
    let resp = post_body(&s, "Patient", "application/fhir+json", json_ok).await;
    assert_eq!(resp.status(), 201);
    let location = resp.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let as_xml = s
        .http
        .get(&location)
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .expect("GET");
    assert_eq!(as_xml.status(), 200);
    let xml_ok = nested_extension_xml(37);
    let resp = post_body(&s, "Patient", "application/fhir+xml", xml_ok).await;
    assert_eq!(resp.status(), 201);

    for (content_type, body) in [
        ("application/fhir+xml", nested_extension_xml(1_000)),
        ("application/fhir+json", nested_extension_json(1_000)),
        ("application/fhir+json", nested_extension_json(40)),
        ("application/fhir+xml", nested_extension_xml(45)),
        // No Content-Type: sniffed as XML.
        ("", nested_extension_xml(1_000)),
    ] {
        let mut req = s.http.post(s.url("Patient")).body(body);
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        let oo = outcome_of(req.send().await.expect("POST"), 400).await;
        assert_eq!(oo["issue"][0]["code"], "too-costly", "{oo}");
    }
    // A JSON Patch and a transaction Bundle go through the same gate.
    let deep_patch = format!(
        "[{{\"op\":\"add\",\"path\":\"/x\",\"value\":{}1{}}}]",
        "[".repeat(500),
        "]".repeat(500)
    );
    let resp = s
        .http
        .patch(&location)
        .header("content-type", "application/json-patch+json")
        .body(deep_patch)
        .send()
        .await
        .expect("PATCH");
    outcome_of(resp, 400).await;
    still_serving(&s).await;
}

#[tokio::test]
async fn chains_and_has_are_bounded_before_any_sql() {
    let s = TestServer::start().await;
    let started = std::time::Instant::now();
    let deep_chain = format!("Patient?{}_id=x", "link:Patient.".repeat(5_000));
    outcome_of(s.get(&deep_chain).await, 400).await;
    // Three hops are allowed, four are not.
    assert_eq!(
        s.get("Patient?link:Patient.link:Patient.link:Patient._id=x")
            .await
            .status(),
        200
    );
    outcome_of(
        s.get("Patient?link:Patient.link:Patient.link:Patient.link:Patient._id=x")
            .await,
        400,
    )
    .await;
    // Untyped chains through Reference(Any) multiply by 146 at each hop.
    assert_eq!(s.get("Basic?subject._id=x").await.status(), 200);
    let oo = outcome_of(s.get("Basic?subject.subject.subject._id=x").await, 400).await;
    let message = oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(message.contains("name the target type"), "{oo}");
    outcome_of(
        s.get("Basic?subject.subject.subject.subject.subject.subject._id=x")
            .await,
        400,
    )
    .await;
    // _has nested 5,000 times in a POST _search form, and 60 times in a GET.
    let form = format!("{}name=x", "_has:Patient:link:".repeat(5_000));
    let resp = s
        .http
        .post(s.url("Patient/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("POST _search");
    outcome_of(resp, 400).await;
    outcome_of(
        s.get(&format!(
            "Patient?{}name=x",
            "_has:Patient:link:".repeat(60)
        ))
        .await,
        400,
    )
    .await;
    assert_eq!(
        s.get(&format!("Patient?{}name=x", "_has:Patient:link:".repeat(3)))
            .await
            .status(),
        200
    );
    // Too many parameters or values.
    let many = (0..101)
        .map(|i| format!("name=n{i}"))
        .collect::<Vec<_>>()
        .join("&");
    outcome_of(s.get(&format!("Patient?{many}")).await, 400).await;
    let values = (0..1_001)
        .map(|i| format!("n{i}"))
        .collect::<Vec<_>>()
        .join(",");
    outcome_of(s.get(&format!("Patient?name={values}")).await, 400).await;
    // Sorting by a composite parameter has no meaning.
    outcome_of(s.get("Observation?_sort=code-value-quantity").await, 400).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    still_serving(&s).await;
}

#[tokio::test]
async fn a_subscription_on_an_exploding_chain_is_refused() {
    let s = TestServer::start().await;
    let resp = s
        .post_json(
            "Subscription",
            &json!({"resourceType":"Subscription","status":"requested","reason":"r",
                "criteria":"Basic?subject.subject.subject.subject.subject.subject._id=x",
                "channel":{"type":"rest-hook","endpoint":"http://127.0.0.1:9/hook","payload":"application/fhir+json"}}),
        )
        .await;
    let status = resp.status().as_u16();
    assert!(status == 400 || status == 422, "status {status}");
    // Writes of that type are not slowed by it.
    let started = std::time::Instant::now();
    s.create(&json!({"resourceType":"Basic","code":{"text":"x"}}))
        .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn fhirpath_nesting_is_bounded_in_patches_and_search_parameters() {
    let s = TestServer::start().await;
    let id = s
        .create(&json!({"resourceType":"Patient","active":true}))
        .await;
    let path = format!("{}Patient.active{}", "(".repeat(5_000), ")".repeat(5_000));
    let patch = json!({"resourceType":"Parameters","parameter":[{"name":"operation","part":[
        {"name":"type","valueCode":"delete"},{"name":"path","valueString":path}]}]});
    let resp = s
        .http
        .patch(s.url(&format!("Patient/{id}")))
        .header("content-type", "application/fhir+json")
        .body(patch.to_string())
        .send()
        .await
        .expect("PATCH");
    let status = resp.status().as_u16();
    assert!(status == 400 || status == 422, "status {status}");

    let expression = format!("{}Patient.name{}", "(".repeat(20_000), ")".repeat(20_000));
    let resp = s
        .put_json(
            "SearchParameter/too-deep",
            &json!({"resourceType":"SearchParameter","id":"too-deep","url":"http://example.org/sp/too-deep",
                "name":"TooDeep","status":"active","description":"d","code":"too-deep","base":["Patient"],
                "type":"string","expression":expression}),
        )
        .await;
    let oo = outcome_of(resp, 422).await;
    assert_eq!(oo["issue"][0]["code"], "too-costly", "{oo}");
    still_serving(&s).await;
}
