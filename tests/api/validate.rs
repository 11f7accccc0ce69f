//! `$validate` over HTTP and `passerelle validate` on files: the verdict of a
//! write's checks, without writing; profiles named as not checked yet.

use serde_json::{json, Value};

use crate::support::{json_of, TestServer};

async fn validate(s: &TestServer, path: &str, body: &str) -> reqwest::Response {
    s.http
        .post(s.url(path))
        .header("content-type", "application/fhir+json")
        .body(body.to_owned())
        .send()
        .await
        .expect("POST $validate")
}

fn severities(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["severity"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn validate_tells_what_a_write_would_refuse_and_writes_nothing() {
    let s = TestServer::start().await;
    let before = s.version_count().await;
    let clean = json!({"resourceType": "Patient", "name": [{"family": "Valide"}]});
    let outcome = json_of(
        validate(&s, "Patient/$validate", &clean.to_string()).await,
        200,
    )
    .await;
    assert_eq!(severities(&outcome), ["information"]);

    let broken = json!({"resourceType": "Patient", "birthDate": "1950-02-30",
        "gender": "femme"});
    let outcome = json_of(
        validate(&s, "Patient/p-1/$validate", &broken.to_string()).await,
        200,
    )
    .await;
    assert_eq!(severities(&outcome), ["error", "error"], "{outcome}");
    let paths: Vec<&str> = outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["expression"][0].as_str())
        .collect();
    assert!(paths.contains(&"Patient.birthDate"), "{paths:?}");
    assert!(paths.contains(&"Patient.gender"), "{paths:?}");
    // The same resource as a create: refused for the same reason.
    let refused = s.post_json("Patient", &broken).await;
    assert_eq!(refused.status(), 400);

    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient",
            "meta": {"profile": ["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"]}}},
        {"name": "mode", "valueCode": "create"}]});
    let outcome = json_of(
        validate(&s, "Patient/$validate", &parameters.to_string()).await,
        200,
    )
    .await;
    assert_eq!(severities(&outcome), ["warning"]);
    assert!(outcome["issue"][0]["diagnostics"]
        .as_str()
        .is_some_and(|d| d.contains("fr-core-patient") && d.contains("not checked")));
    let outcome = json_of(
        validate(
            &s,
            "Patient/$validate?profile=https://example.org/p",
            &clean.to_string(),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(severities(&outcome), ["warning"]);

    let wrong_type = json!({"resourceType": "Organization", "name": "CH"});
    let outcome = json_of(
        validate(&s, "Patient/$validate", &wrong_type.to_string()).await,
        200,
    )
    .await;
    assert_eq!(severities(&outcome), ["error"]);
    assert_eq!(
        validate(&s, "Patient/$validate", "{not json")
            .await
            .status(),
        400
    );
    assert_eq!(s.get("Patient/$validate").await.status(), 405);
    assert_eq!(s.version_count().await, before, "nothing written");

    let capability = json_of(s.get("metadata").await, 200).await;
    let patient = capability["rest"][0]["resource"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["type"] == "Patient"))
        .cloned()
        .expect("Patient");
    assert!(patient["operation"]
        .as_array()
        .is_some_and(|ops| ops.iter().any(|o| o["name"] == "validate")));
}

#[test]
fn the_validate_command_fails_on_a_file_with_errors() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("validate-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let good = dir.join("good.json");
    let bad = dir.join("bad.json");
    std::fs::write(&good, r#"{"resourceType":"Patient","gender":"female"}"#).expect("write");
    std::fs::write(
        &bad,
        r#"{"resourceType":"Patient","birthDate":"1950-13-01"}"#,
    )
    .expect("write");
    let run = |paths: &[&std::path::Path]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_passerelle"))
            .arg("validate")
            .args(paths)
            .output()
            .expect("passerelle validate")
    };
    let out = run(&[&good]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("good.json: valid"));
    let out = run(&[&good, &bad]);
    assert!(!out.status.success(), "a file with errors fails the run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("bad.json: INVALID"), "{stdout}");
    assert!(stdout.contains("Patient.birthDate"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
