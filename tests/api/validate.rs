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
    // Modes: an update names its resource; a delete needs no body.
    let named = json!({"resourceType": "Patient", "id": "p-2"});
    let outcome = json_of(
        validate(&s, "Patient/p-1/$validate?mode=update", &named.to_string()).await,
        200,
    )
    .await;
    assert_eq!(severities(&outcome), ["error"], "{outcome}");
    let deleted = s
        .http
        .post(s.url("Patient/p-1/$validate?mode=delete"))
        .send()
        .await
        .expect("POST");
    assert_eq!(
        json_of(deleted, 200).await["issue"][0]["severity"],
        "information"
    );
    assert_eq!(
        validate(&s, "Patient/$validate?mode=replace", &named.to_string())
            .await
            .status(),
        400
    );
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

/// A server that knows FR Core (from `../shared`), with `configure` applied.
async fn fr_core_server(
    configure: impl FnOnce(&mut passerelle::profile::ProfileRules),
) -> Option<(TestServer, std::path::PathBuf)> {
    let dir = crate::support::shared_dir()?.join("ig/fr-core-2.1.0");
    let loaded = passerelle::profile::package::read(&dir).expect("FR Core package");
    let mut profiles = passerelle::profile::ProfileRules::new(loaded);
    configure(&mut profiles);
    let mut options = crate::support::test_options();
    options.rules.profiles = std::sync::Arc::new(profiles);
    let s = TestServer::start_on(crate::support::fresh_database().await, options).await;
    Some((s, dir))
}

fn example(dir: &std::path::Path, name: &str) -> Value {
    let text = std::fs::read(dir.join("example").join(name)).expect("example");
    serde_json::from_slice(&text).expect("json")
}

fn errors_at(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["severity"] == "error")
        .map(|i| i["expression"][0].as_str().unwrap_or("-").to_owned())
        .collect()
}

#[tokio::test]
async fn fr_core_profiles_are_checked_by_validate_and_refuse_writes() {
    let Some((s, dir)) = fr_core_server(|_| {}).await else {
        return;
    };
    let encounter = example(&dir, "Encounter-FRCoreEncounterExample.json");
    let outcome = json_of(
        validate(&s, "Encounter/$validate", &encounter.to_string()).await,
        200,
    )
    .await;
    assert!(errors_at(&outcome).is_empty(), "{outcome}");

    // The published Patient example's INS-NIR key is wrong (44; its number gives 12).
    let mut patient = example(&dir, "Patient-ExampleFRCorePatient001.json");
    let outcome = json_of(
        validate(&s, "Patient/$validate", &patient.to_string()).await,
        200,
    )
    .await;
    assert_eq!(
        errors_at(&outcome),
        ["Patient.identifier[0].value"],
        "{outcome}"
    );
    let before = s.version_count().await;
    let refused = crate::support::outcome_of(s.post_json("Patient", &patient).await, 422).await;
    assert!(refused.to_string().contains("fr-nir-key"), "{refused}");
    assert_eq!(s.version_count().await, before, "nothing written");

    patient["identifier"][0]["value"] = json!("123456789012212");
    assert_eq!(s.post_json("Patient", &patient).await.status(), 201);
    // Without its official name, the INS profile's required elements are named.
    let mut nameless = patient.clone();
    nameless["name"][0]
        .as_object_mut()
        .expect("name")
        .remove("family");
    let refused = crate::support::outcome_of(s.post_json("Patient", &nameless).await, 422).await;
    assert_eq!(errors_at(&refused), ["Patient.name[0].family"], "{refused}");

    // A profile named by the caller, for a resource that claims none.
    let plain = json!({"resourceType": "Patient", "gender": "female"});
    let outcome = json_of(
        validate(
            &s,
            "Patient/$validate?profile=https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-ins",
            &plain.to_string(),
        )
        .await,
        200,
    )
    .await;
    let paths = errors_at(&outcome);
    assert!(
        paths.contains(&"Patient.identifier".to_owned()),
        "{outcome}"
    );
    assert!(paths.contains(&"Patient.name".to_owned()), "{outcome}");
    // A resource claiming no profile is written with only the base checks, even
    // with an RPPS number whose check digit is wrong; $validate still says so.
    let practitioner = json!({"resourceType": "Practitioner", "identifier": [
        {"system": "https://rpps.esante.gouv.fr", "value": "10000000007"}]});
    assert_eq!(
        s.post_json("Practitioner", &practitioner).await.status(),
        201
    );
    let outcome = json_of(
        validate(&s, "Practitioner/$validate", &practitioner.to_string()).await,
        200,
    )
    .await;
    assert_eq!(errors_at(&outcome), ["Practitioner.identifier[0].value"]);
}

#[tokio::test]
async fn required_and_unknown_profiles_follow_the_configuration() {
    let ins = "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient-ins";
    let Some((s, _)) = fr_core_server(|p| {
        p.required.insert("Patient".into(), vec![ins.to_owned()]);
        p.unknown_is_error = true;
    })
    .await
    else {
        return;
    };
    let plain = json!({"resourceType": "Patient", "gender": "female"});
    let refused = crate::support::outcome_of(s.post_json("Patient", &plain).await, 422).await;
    assert!(
        refused.to_string().contains("fr-core-patient-ins"),
        "{refused}"
    );
    // Other types are free; a claimed profile nobody knows is refused.
    let org = json!({"resourceType": "Organization", "name": "CH"});
    assert_eq!(s.post_json("Organization", &org).await.status(), 201);
    let mut claimed = org.clone();
    claimed["meta"] = json!({"profile": ["https://example.org/unknown"]});
    let refused =
        crate::support::outcome_of(s.post_json("Organization", &claimed).await, 422).await;
    assert!(
        refused.to_string().contains("example.org/unknown"),
        "{refused}"
    );
}

#[test]
fn the_validate_command_reads_packages() {
    let Some(shared) = crate::support::shared_dir() else {
        return;
    };
    let dir = shared.join("ig/fr-core-2.1.0");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .arg("validate")
        .arg("--package")
        .arg(&dir)
        .arg(dir.join("example/Encounter-FRCoreEncounterExample.json"))
        .arg(dir.join("example/Patient-ExampleFRCorePatient001.json"))
        .output()
        .expect("passerelle validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("Encounter-FRCoreEncounterExample.json: valid"),
        "{stdout}"
    );
    assert!(
        stdout.contains("Patient-ExampleFRCorePatient001.json: INVALID (1 errors"),
        "{stdout}"
    );
    assert!(stdout.contains("fr-nir-key"), "{stdout}");
}

#[tokio::test]
async fn profiles_written_to_the_server_are_used_at_once_and_by_other_instances() {
    let s = TestServer::start().await;
    // Started before the profile exists: it must notice the write through `s`.
    let other = TestServer::start_on(s.config.clone(), crate::support::test_options()).await;
    let url = "https://example.org/fhir/StructureDefinition/born-patient";
    let profile = json!({"resourceType": "StructureDefinition", "id": "born-patient", "url": url,
        "name": "BornPatient", "status": "active", "kind": "resource", "abstract": false,
        "type": "Patient", "derivation": "constraint",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "differential": {"element": [
            {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 1}]}});
    assert_eq!(
        s.put_json("StructureDefinition/born-patient", &profile)
            .await
            .status(),
        201
    );
    let unborn = json!({"resourceType": "Patient", "meta": {"profile": [url]}, "gender": "female"});
    let refused = crate::support::outcome_of(s.post_json("Patient", &unborn).await, 422).await;
    assert_eq!(errors_at(&refused), ["Patient.birthDate"], "{refused}");
    let mut born = unborn.clone();
    born["birthDate"] = json!("1950-02-03");
    assert_eq!(s.post_json("Patient", &born).await.status(), 201);

    // The other instance notices it within its poll.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let status = other.post_json("Patient", &unborn).await.status();
        if status == 422 {
            break;
        }
        assert_eq!(status, 201, "before the other instance notices");
        assert!(std::time::Instant::now() < deadline, "never noticed");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    // Deleted, it is unknown again: a warning, and the write goes through.
    assert_eq!(
        s.http
            .delete(s.url("StructureDefinition/born-patient"))
            .send()
            .await
            .expect("DELETE")
            .status(),
        204
    );
    assert_eq!(s.post_json("Patient", &unborn).await.status(), 201);
}

/// The project's fixtures validate against the project's profiles: no errors
/// (their French identifiers carry valid keys), whatever warnings.
#[test]
fn the_fixtures_validate_against_the_projects_profiles() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let rules = passerelle::profile::ProfileRules::default();
    let mut files = crate::support::json_files(&dir);
    for entry in std::fs::read_dir(&dir).expect("fixtures").flatten() {
        if entry.path().is_dir() {
            files.extend(crate::support::json_files(&entry.path()));
        }
    }
    assert!(files.len() > 20, "{files:?}");
    for path in files {
        let body = std::fs::read(&path).expect("fixture");
        let verdict = passerelle::profile::verdict::validate(
            &passerelle::profile::verdict::Asked {
                body: &body,
                format: passerelle::fhir::Format::Json,
                res_type: None,
                profile: None,
                id: None,
                mode: None,
            },
            &rules,
        )
        .expect("a resource");
        assert!(
            verdict.errors.is_empty(),
            "{}: {:#?}",
            path.display(),
            verdict.errors
        );
    }
}
