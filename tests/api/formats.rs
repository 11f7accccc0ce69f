use serde_json::Value;

use crate::support::{json_of, outcome_of, TestServer};

const PATIENT_XML: &str = r#"<Patient xmlns="http://hl7.org/fhir">
  <identifier><system value="urn:oid:1.2.250.1.213.1.4.10"/><value value="2850312345678"/></identifier>
  <name><family value="Moreau"/><given value="Anaïs"/></name>
  <birthDate value="1985-03-12"/>
</Patient>"#;

async fn post_xml(s: &TestServer, body: &str) -> reqwest::Response {
    s.http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+xml")
        .header("accept", "application/fhir+json")
        .body(body.to_owned())
        .send()
        .await
        .expect("post")
}

#[tokio::test]
async fn xml_in_and_out() {
    let s = TestServer::start().await;
    let created = json_of(post_xml(&s, PATIENT_XML).await, 201).await;
    assert_eq!(created["name"][0]["given"][0], "Anaïs");
    assert_eq!(created["birthDate"], "1985-03-12");
    let id = created["id"].as_str().expect("id");

    for how in [
        s.http
            .get(s.url(&format!("Patient/{id}")))
            .header("accept", "application/fhir+xml"),
        s.http.get(s.url(&format!("Patient/{id}?_format=xml"))),
        s.http
            .get(s.url(&format!("Patient/{id}")))
            .header("accept", "application/xml"),
    ] {
        let resp = how.send().await.expect("get");
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"]
            .to_str()
            .expect("ct")
            .to_owned();
        assert!(ct.contains("xml"), "{ct}");
        let xml = resp.text().await.expect("xml");
        assert!(
            xml.contains(r#"<Patient xmlns="http://hl7.org/fhir">"#),
            "{xml}"
        );
        assert!(xml.contains(r#"<given value="Anaïs"/>"#), "{xml}");
        assert!(xml.contains(r#"<versionId value="1"/>"#), "{xml}");
    }
    // Errors follow the negotiated format too.
    let resp = s.get("Patient/missing?_format=xml").await;
    assert_eq!(resp.status(), 404);
    let xml = resp.text().await.expect("xml");
    assert!(xml.contains("<OperationOutcome"), "{xml}");
    // Bundles and the CapabilityStatement as XML.
    let history = s
        .get(&format!("Patient/{id}/_history?_format=xml"))
        .await
        .text()
        .await
        .expect("xml");
    assert!(
        history.contains("<Bundle") && history.contains("<type value=\"history\"/>"),
        "{history}"
    );
    let md = s.get("metadata?_format=application/fhir%2Bxml").await;
    assert_eq!(md.status(), 200);
    assert!(md
        .text()
        .await
        .expect("xml")
        .contains("<CapabilityStatement"));
}

/// XML as Python's fhir.resources writes it (a lower-case encoding name), with a
/// narrative whose white space is content: stored and returned as written.
#[tokio::test]
async fn xml_declarations_and_narratives_as_written() {
    let s = TestServer::start().await;
    let div = r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>40 mg <b>le matin</b>, <i>puis</i> 20 mg</p></div>"#;
    let body = format!(
        r#"<?xml version='1.0' encoding='utf-8'?>
<MedicationStatement xmlns="http://hl7.org/fhir"><text><status value="generated"/>{div}</text><status value="active"/><medicationCodeableConcept><text value="furosémide"/></medicationCodeableConcept><subject><reference value="Patient/p1"/></subject></MedicationStatement>"#
    );
    let resp = s
        .http
        .post(s.url("MedicationStatement"))
        .header("content-type", "application/fhir+xml")
        .header("accept", "application/fhir+json")
        .body(body)
        .send()
        .await
        .expect("post");
    let created = json_of(resp, 201).await;
    assert_eq!(created["text"]["div"], div);
    let id = created["id"].as_str().expect("id");
    for (pretty, indented) in [
        ("", false),
        ("&_pretty=false", false),
        ("&_pretty=true", true),
    ] {
        let xml = s
            .get(&format!("MedicationStatement/{id}?_format=xml{pretty}"))
            .await
            .text()
            .await
            .expect("xml");
        assert!(xml.contains(div), "{xml}");
        assert_eq!(xml.contains("\n  <status"), indented, "{pretty}: {xml}");
    }
}

#[tokio::test]
async fn bad_xml_is_400() {
    let s = TestServer::start().await;
    outcome_of(
        post_xml(
            &s,
            "<Patient xmlns=\"http://hl7.org/fhir\"><nickname value=\"x\"/></Patient>",
        )
        .await,
        400,
    )
    .await;
    outcome_of(post_xml(&s, "<Patient").await, 400).await;
    outcome_of(
        post_xml(
            &s,
            "<Patient xmlns=\"http://hl7.org/fhir\"><birthDate value=\"12/03/1985\"/></Patient>",
        )
        .await,
        400,
    )
    .await;
    assert_eq!(s.version_count().await, 0);
}

#[tokio::test]
async fn pretty_and_json_media_types() {
    let s = TestServer::start().await;
    let plain = s.get("metadata").await.text().await.expect("text");
    assert!(!plain.contains('\n'));
    let pretty = s
        .get("metadata?_pretty=true")
        .await
        .text()
        .await
        .expect("text");
    assert!(pretty.contains("\n  "), "pretty output is indented");
    let a: Value = serde_json::from_str(&plain).expect("json");
    let b: Value = serde_json::from_str(&pretty).expect("json");
    assert_eq!(a["rest"], b["rest"]);
    let resp = s
        .http
        .get(s.url("metadata"))
        .header("accept", "application/json")
        .send()
        .await
        .expect("get");
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("application/json"));
    // application/json bodies are accepted as FHIR JSON.
    let resp = s
        .http
        .post(s.url("Patient"))
        .header("content-type", "application/json")
        .body(r#"{"resourceType":"Patient","active":true}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 201);
}
