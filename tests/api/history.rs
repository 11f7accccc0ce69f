use std::collections::HashSet;

use serde_json::{json, Value};

use crate::support::{json_of, next_link, outcome_of, TestServer};

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn instance_type_and_system_history() {
    let s = TestServer::start().await;
    let body = json!({"resourceType": "Patient", "id": "h1", "active": true});
    s.put_json("Patient/h1", &body).await;
    s.put_json(
        "Patient/h1",
        &json!({"resourceType": "Patient", "id": "h1", "active": false}),
    )
    .await;
    s.http
        .delete(s.url("Patient/h1"))
        .send()
        .await
        .expect("delete");
    s.create(&json!({"resourceType": "Organization", "name": "CH de Tulle"}))
        .await;

    let instance = json_of(s.get("Patient/h1/_history").await, 200).await;
    assert_eq!(instance["type"], "history");
    let e = entries(&instance);
    assert_eq!(e.len(), 3);
    // Newest first: the delete, then version 2, then version 1.
    assert_eq!(e[0]["request"]["method"], "DELETE");
    assert!(e[0].get("resource").is_none());
    assert_eq!(e[1]["resource"]["meta"]["versionId"], "2");
    assert_eq!(e[1]["request"]["method"], "PUT");
    assert_eq!(e[2]["response"]["etag"], "W/\"1\"");
    assert_eq!(e[2]["fullUrl"], s.url("Patient/h1"));

    let by_type = json_of(s.get("Patient/_history").await, 200).await;
    assert_eq!(entries(&by_type).len(), 3);
    let system = json_of(s.get("_history").await, 200).await;
    assert_eq!(entries(&system).len(), 4);
    assert_eq!(
        entries(&system)[0]["resource"]["resourceType"],
        "Organization"
    );
    assert_eq!(entries(&system)[0]["request"]["method"], "POST");
}

#[tokio::test]
async fn since_and_at() {
    let s = TestServer::start().await;
    let v1 = json_of(
        s.put_json(
            "Patient/t1",
            &json!({"resourceType": "Patient", "id": "t1", "active": true}),
        )
        .await,
        201,
    )
    .await;
    let t1 = v1["meta"]["lastUpdated"].as_str().expect("t1").to_owned();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let v2 = json_of(
        s.put_json(
            "Patient/t1",
            &json!({"resourceType": "Patient", "id": "t1", "active": false}),
        )
        .await,
        200,
    )
    .await;
    let t2 = v2["meta"]["lastUpdated"].as_str().expect("t2").to_owned();
    let enc = |t: &str| t.replace('+', "%2B");
    // _since is inclusive.
    let since = json_of(
        s.get(&format!("Patient/t1/_history?_since={}", enc(&t2)))
            .await,
        200,
    )
    .await;
    assert_eq!(entries(&since).len(), 1);
    let since_all = json_of(s.get(&format!("_history?_since={}", enc(&t1))).await, 200).await;
    assert_eq!(entries(&since_all).len(), 2);
    // _at: the version current at t1 is version 1; at t2, version 2.
    let at1 = json_of(
        s.get(&format!("Patient/t1/_history?_at={}", enc(&t1)))
            .await,
        200,
    )
    .await;
    assert_eq!(entries(&at1).len(), 1);
    assert_eq!(entries(&at1)[0]["resource"]["meta"]["versionId"], "1");
    let at2 = json_of(
        s.get(&format!("Patient/t1/_history?_at={}", enc(&t2)))
            .await,
        200,
    )
    .await;
    assert_eq!(entries(&at2)[0]["resource"]["meta"]["versionId"], "2");
    // A whole year covers both.
    let year = &t1[..4];
    let at_year = json_of(s.get(&format!("Patient/t1/_history?_at={year}")).await, 200).await;
    assert_eq!(entries(&at_year).len(), 2);
    outcome_of(s.get("_history?_since=yesterday").await, 400).await;
    outcome_of(s.get("_history?_since=2026-01-01").await, 400).await;
    outcome_of(s.get("_history?_count=abc").await, 400).await;
}

#[tokio::test]
async fn paging_neither_skips_nor_repeats_while_writes_continue() {
    let s = TestServer::start().await;
    for i in 0..25 {
        s.create(&json!({"resourceType": "Patient", "id": format!("x{i}"), "active": true}))
            .await;
    }
    let mut seen = HashSet::new();
    let mut url = s.url("Patient/_history?_count=10");
    let mut pages = 0;
    loop {
        let page = json_of(s.http.get(&url).send().await.expect("page"), 200).await;
        pages += 1;
        // Writes between pages must not disturb the pages already being read.
        s.create(&json!({"resourceType": "Patient", "active": false}))
            .await;
        for e in entries(&page) {
            let key = format!("{}#{}", e["fullUrl"], e["response"]["etag"]);
            assert!(seen.insert(key.clone()), "repeated {key}");
        }
        match next_link(&page) {
            Some(next) => url = next,
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
}

/// A transaction that stamps its version first but commits last must not be
/// skipped by a client that syncs `_since` the last version it saw.
#[tokio::test]
async fn sync_never_skips_a_version_that_commits_late() {
    use passerelle::service::{write, Change};
    let s = TestServer::start().await;
    let start = json_of(
        s.put_json(
            "Patient/first",
            &json!({"resourceType": "Patient", "id": "first"}),
        )
        .await,
        201,
    )
    .await["meta"]["lastUpdated"]
        .as_str()
        .expect("lastUpdated")
        .replace('+', "%2B");
    // A slow writer: stamps its version, then waits before committing.
    let mut client = s.pool.get().await.expect("connection");
    let tx = client.transaction().await.expect("begin");
    let now = passerelle::store::clock(&tx).await.expect("clock");
    write::apply(
        &tx,
        &Default::default(),
        now,
        Change::update(
            "Patient",
            "slow".into(),
            json!({"resourceType": "Patient", "id": "slow"}),
            None,
        ),
        &mut Vec::new(),
    )
    .await
    .expect("slow write");
    // A fast writer commits meanwhile, with a later stamp.
    s.put_json(
        "Patient/fast",
        &json!({"resourceType": "Patient", "id": "fast"}),
    )
    .await;
    let ids = |bundle: &Value| -> Vec<String> {
        entries(bundle)
            .iter()
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
            .collect()
    };
    let during = json_of(
        s.get(&format!("Patient/_history?_since={start}")).await,
        200,
    )
    .await;
    assert_eq!(
        ids(&during),
        ["first"],
        "nothing after the slow writer's start is final yet"
    );
    tx.commit().await.expect("commit");
    let after = json_of(
        s.get(&format!("Patient/_history?_since={start}")).await,
        200,
    )
    .await;
    let mut seen = ids(&after);
    seen.sort();
    assert_eq!(seen, ["fast", "first", "slow"]);
}

/// The "since last visit" loop of docs/sync.md, while writers keep writing: at the
/// end the reader holds every version exactly once (the version of the `_since`
/// instant, seen again on the next visit, is recognised by its etag).
#[tokio::test]
async fn a_syncing_reader_sees_every_version_while_writers_write() {
    use std::collections::HashSet;
    let s = TestServer::start().await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (http, base) = (s.http.clone(), s.base.clone());
            tokio::spawn(async move {
                for i in 0..40 {
                    let id = format!("w{w}-{}", i % 10);
                    let body = json!({"resourceType": "Patient", "id": id, "birthDate": format!("19{:02}", i)});
                    let resp = http
                        .put(format!("{base}/Patient/{id}"))
                        .header("content-type", "application/fhir+json")
                        .body(body.to_string())
                        .send()
                        .await
                        .expect("put");
                    assert!(resp.status().is_success());
                }
            })
        })
        .collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut since = "2000-01-01T00:00:00Z".to_owned();
    let visit = |s: &TestServer, since: String| {
        let (http, url) = (
            s.http.clone(),
            s.url(&format!(
                "_history?_since={}&_count=7",
                since.replace('+', "%2B")
            )),
        );
        async move {
            let mut versions = Vec::new();
            let mut next = Some(url);
            while let Some(url) = next {
                let page = json_of(http.get(&url).send().await.expect("page"), 200).await;
                for e in entries(&page) {
                    versions.push((
                        format!("{}#{}", e["fullUrl"], e["response"]["etag"]),
                        e["response"]["lastModified"]
                            .as_str()
                            .unwrap_or("")
                            .to_owned(),
                    ));
                }
                next = next_link(&page);
            }
            versions
        }
    };
    let mut done = false;
    while !done {
        done = writers.iter().all(|w| w.is_finished());
        let versions = visit(&s, since.clone()).await;
        for (key, last_modified) in versions {
            if last_modified > since {
                since = last_modified;
            }
            seen.insert(key);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for w in writers {
        w.await.expect("writer");
    }
    // One last visit after every writer is done.
    for (key, _) in visit(&s, since.clone()).await {
        seen.insert(key);
    }
    let all = json_of(s.get("_history?_count=1000").await, 200).await;
    let expected: HashSet<String> = entries(&all)
        .iter()
        .map(|e| format!("{}#{}", e["fullUrl"], e["response"]["etag"]))
        .collect();
    assert_eq!(expected.len(), 160, "4 writers x 40 distinct versions");
    assert_eq!(seen, expected);
}
