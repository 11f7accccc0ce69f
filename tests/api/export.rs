//! Bulk export: the asynchronous pattern, NDJSON files, levels, `_type`, `_since`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{json_of, outcome_of, TestServer};

async fn seed(s: &TestServer) {
    for resource in [
        json!({"resourceType": "Organization", "id": "chu", "name": "CHU de Nantes"}),
        json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Martin"}]}),
        json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Durand"}]}),
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "IMP"},
               "subject": {"reference": "Patient/p1"}, "serviceProvider": {"reference": "Organization/chu"}}),
        json!({"resourceType": "Encounter", "id": "e2", "status": "in-progress", "class": {"code": "IMP"},
               "subject": {"reference": "Patient/p2"}}),
        json!({"resourceType": "Group", "id": "dac", "type": "person", "actual": true,
               "member": [{"entity": {"reference": "Patient/p1"}}]}),
    ] {
        let path = format!(
            "{}/{}",
            resource["resourceType"].as_str().expect("type"),
            resource["id"].as_str().expect("id")
        );
        assert!(
            s.put_json(&path, &resource).await.status().is_success(),
            "{path}"
        );
    }
}

/// Kicks off an export and polls its status until the manifest.
async fn export(s: &TestServer, path: &str) -> Value {
    let resp = s
        .http
        .get(s.url(path))
        .header("prefer", "respond-async")
        .header("accept", "application/fhir+json")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(resp.status(), 202, "{path}");
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("url")
        .to_owned();
    for _ in 0..100 {
        let status = s.http.get(&status_url).send().await.expect("status");
        match status.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(50)).await,
            200 => {
                assert_eq!(status.headers()["content-type"], "application/json");
                let manifest: Value = status.json().await.expect("manifest");
                assert_eq!(manifest["requiresAccessToken"], false);
                assert!(manifest["transactionTime"].is_string());
                assert!(manifest["request"]
                    .as_str()
                    .is_some_and(|r| r.contains("$export")));
                return manifest;
            }
            other => panic!(
                "export status {other}: {}",
                status.text().await.unwrap_or_default()
            ),
        }
    }
    panic!("the export did not complete")
}

/// The ids in each output file, by type.
async fn contents(s: &TestServer, manifest: &Value) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for file in manifest["output"].as_array().expect("output") {
        let resp = s
            .http
            .get(file["url"].as_str().expect("url"))
            .send()
            .await
            .expect("file");
        assert_eq!(resp.headers()["content-type"], "application/fhir+ndjson");
        let text = resp.text().await.expect("ndjson");
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                let r: Value = serde_json::from_str(l).expect("one resource per line");
                assert_eq!(r["resourceType"], file["type"]);
                r["id"].as_str().expect("id").to_owned()
            })
            .collect();
        assert_eq!(ids.len() as u64, file["count"].as_u64().expect("count"));
        out.push((file["type"].as_str().expect("type").to_owned(), ids));
    }
    out
}

fn ids(pairs: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    pairs
        .iter()
        .map(|(t, ids)| (t.to_string(), ids.iter().map(|i| i.to_string()).collect()))
        .collect()
}

#[tokio::test]
async fn system_patient_and_group_exports() {
    let s = TestServer::start().await;
    seed(&s).await;
    let all = export(&s, "$export?_type=Patient,Encounter,Organization").await;
    assert_eq!(
        contents(&s, &all).await,
        ids(&[
            ("Encounter", &["e1", "e2"]),
            ("Organization", &["chu"]),
            ("Patient", &["p1", "p2"])
        ])
    );
    // Patient level: the patients' compartments (a Group is in its members'), not
    // the organisation.
    // What the server derived is in the patients' compartments too: the admission
    // of e2 (in progress) declared, and the CareTeam of that stay.
    let patients = export(&s, "Patient/$export").await;
    let mut by_type = contents(&s, &patients).await;
    let derived: Vec<(String, usize)> = by_type.drain(..2).map(|(t, ids)| (t, ids.len())).collect();
    assert_eq!(
        derived,
        [
            ("CareTeam".to_owned(), 1),
            ("CommunicationRequest".to_owned(), 1)
        ]
    );
    assert_eq!(
        by_type,
        ids(&[
            ("Encounter", &["e1", "e2"]),
            ("Group", &["dac"]),
            ("Patient", &["p1", "p2"])
        ])
    );
    let group = export(&s, "Group/dac/$export?_type=Patient,Encounter").await;
    assert_eq!(
        contents(&s, &group).await,
        ids(&[("Encounter", &["e1"]), ("Patient", &["p1"])])
    );
    // _since the first export: only what changed after it.
    let since = all["transactionTime"]
        .as_str()
        .expect("time")
        .replace('+', "%2B");
    s.put_json(
        "Patient/p2",
        &json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Durand-Leroy"}]}),
    )
    .await;
    let changed = export(&s, &format!("$export?_since={since}")).await;
    assert_eq!(contents(&s, &changed).await, ids(&[("Patient", &["p2"])]));
}

#[tokio::test]
async fn kick_off_errors_and_cancellation() {
    let s = TestServer::start().await;
    seed(&s).await;
    outcome_of(s.get("$export").await, 400).await;
    let bad = s
        .http
        .get(s.url("$export?_type=Nope"))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("kick-off");
    outcome_of(bad, 400).await;
    let missing_group = s
        .http
        .get(s.url("Group/none/$export"))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("kick-off");
    outcome_of(missing_group, 404).await;
    let manifest = export(&s, "$export").await;
    let status_url = manifest["output"][0]["url"]
        .as_str()
        .and_then(|u| u.split("/$export-file/").nth(1))
        .and_then(|rest| rest.split('/').next())
        .map(|job| s.url(&format!("$export-status/{job}")))
        .expect("job");
    let deleted = s.http.delete(&status_url).send().await.expect("delete");
    assert_eq!(deleted.status(), 202);
    assert_eq!(
        s.http
            .get(&status_url)
            .send()
            .await
            .expect("status")
            .status(),
        404
    );
    let file = manifest["output"][0]["url"].as_str().expect("url");
    assert_eq!(s.http.get(file).send().await.expect("file").status(), 404);
    json_of(s.get("metadata").await, 200).await;
}

#[tokio::test]
async fn large_exports_are_split_into_files_of_a_thousand() {
    let s = TestServer::start().await;
    let entries: Vec<Value> = (0..1005)
        .map(|i| {
            json!({"resource": {"resourceType": "Patient", "id": format!("p{i:04}")},
                   "request": {"method": "PUT", "url": format!("Patient/p{i:04}")}})
        })
        .collect();
    json_of(
        s.post_json(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .await,
        200,
    )
    .await;
    let manifest = export(&s, "$export?_type=Patient").await;
    let files = contents(&s, &manifest).await;
    let sizes: Vec<usize> = files.iter().map(|(_, ids)| ids.len()).collect();
    assert_eq!(sizes, vec![1000, 5]);
    let mut all: Vec<String> = files.into_iter().flat_map(|(_, ids)| ids).collect();
    all.dedup();
    assert_eq!(all.len(), 1005, "each resource once, in id order");
}

/// An instance that stops gives its jobs back without using up their attempts:
/// restarts and deployments are no failures (a job interrupted three times
/// fails). A lease lost otherwise (a kill) still counts.
#[tokio::test]
async fn a_job_given_back_at_a_stop_keeps_its_attempts() {
    use passerelle::store::jobs;
    let pool = passerelle::store::pool::build(
        crate::support::fresh_database().await,
        passerelle::store::pool::PoolSettings::sized(1),
    )
    .expect("pool");
    let client = pool.get().await.expect("connection");
    jobs::create(&client, "job-1", "export", &json!({}))
        .await
        .expect("job");
    for _ in 0..5 {
        let job = jobs::lease(&client, "instance-a-0", 60.0)
            .await
            .expect("lease")
            .expect("the job");
        assert_eq!(job.attempts, 1, "a stop used up an attempt");
        assert_eq!(
            jobs::release(&client, "instance-a").await.expect("release"),
            1
        );
    }
    // Killed: its lease expires, and the next holder's attempt is the second.
    jobs::lease(&client, "instance-a-0", 0.0)
        .await
        .expect("lease")
        .expect("the job");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let job = jobs::lease(&client, "instance-b-0", 60.0)
        .await
        .expect("lease")
        .expect("the job");
    assert_eq!(job.attempts, 2);
}
