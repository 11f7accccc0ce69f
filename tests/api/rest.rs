use serde_json::{json, Value};

use crate::support::{json_of, next_link, outcome_of, TestServer};

fn patient() -> serde_json::Value {
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "2740512345678"}],
        "name": [{"family": "Lefèvre", "given": ["Jeanne"]}],
        "birthDate": "1974-05-12"
    })
}

#[tokio::test]
async fn create_read_vread_with_headers() {
    let s = TestServer::start().await;
    let resp = s.post_json("Patient", &patient()).await;
    assert_eq!(resp.status(), 201);
    let h = resp.headers().clone();
    let location = h["location"].to_str().expect("location").to_owned();
    assert!(location.starts_with(&s.url("Patient/")), "{location}");
    assert!(location.ends_with("/_history/1"), "{location}");
    assert_eq!(h["etag"], "W/\"1\"");
    assert!(h.contains_key("last-modified"));
    assert!(h["content-type"]
        .to_str()
        .expect("ct")
        .starts_with("application/fhir+json"));
    let created = json_of(resp, 201).await;
    let id = created["id"].as_str().expect("id");
    assert_eq!(created["meta"]["versionId"], "1");
    assert!(created["meta"]["lastUpdated"].is_string());

    let resp = s.get(&format!("Patient/{id}")).await;
    assert_eq!(resp.headers()["etag"], "W/\"1\"");
    assert_eq!(
        resp.headers()["content-location"].to_str().expect("cl"),
        location
    );
    let read = json_of(resp, 200).await;
    assert_eq!(read, created);

    let v1 = json_of(s.get(&format!("Patient/{id}/_history/1")).await, 200).await;
    assert_eq!(v1, created);
    outcome_of(s.get(&format!("Patient/{id}/_history/2")).await, 404).await;
    outcome_of(s.get(&format!("Patient/{id}/_history/x")).await, 404).await;
}

#[tokio::test]
async fn server_ignores_client_id_on_create() {
    let s = TestServer::start().await;
    let mut body = patient();
    body["id"] = json!("chosen-by-client");
    let created = json_of(s.post_json("Patient", &body).await, 201).await;
    assert_ne!(created["id"], "chosen-by-client");
}

#[tokio::test]
async fn update_versions_and_update_as_create() {
    let s = TestServer::start().await;
    let mut body = patient();
    body["id"] = json!("jeanne");
    let resp = s.put_json("Patient/jeanne", &body).await;
    assert_eq!(resp.status(), 201, "update as create");
    body["active"] = json!(true);
    let resp = s.put_json("Patient/jeanne", &body).await;
    assert_eq!(resp.headers()["etag"], "W/\"2\"");
    let updated = json_of(resp, 200).await;
    assert_eq!(updated["meta"]["versionId"], "2");
    assert_eq!(updated["active"], true);
    let v1 = json_of(s.get("Patient/jeanne/_history/1").await, 200).await;
    assert!(v1.get("active").is_none());
    // The same content again writes no version.
    let again = json_of(s.put_json("Patient/jeanne", &body).await, 200).await;
    assert_eq!(again["meta"]["versionId"], "2");
    let history = json_of(s.get("Patient/jeanne/_history").await, 200).await;
    assert_eq!(history["entry"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn delete_is_a_versioned_tombstone() {
    let s = TestServer::start().await;
    let id = s.create(&patient()).await;
    let resp = s
        .http
        .delete(s.url(&format!("Patient/{id}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["etag"], "W/\"2\"");
    outcome_of(s.get(&format!("Patient/{id}")).await, 410).await;
    outcome_of(s.get(&format!("Patient/{id}/_history/2")).await, 410).await;
    json_of(s.get(&format!("Patient/{id}/_history/1")).await, 200).await;
    // Deleting again, or deleting what never existed, changes nothing.
    let again = s
        .http
        .delete(s.url(&format!("Patient/{id}")))
        .send()
        .await
        .expect("delete");
    assert_eq!(again.status(), 204);
    let none = s
        .http
        .delete(s.url("Patient/never"))
        .send()
        .await
        .expect("delete");
    assert_eq!(none.status(), 204);
    outcome_of(s.get("Patient/never").await, 404).await;
    // An update brings it back as a new version.
    let mut body = patient();
    body["id"] = json!(id);
    let back = json_of(s.put_json(&format!("Patient/{id}"), &body).await, 201).await;
    assert_eq!(back["meta"]["versionId"], "3");
}

#[tokio::test]
async fn if_match_has_exactly_one_winner() {
    let s = TestServer::start().await;
    let id = s.create(&patient()).await;
    let mut body = patient();
    body["id"] = json!(id);
    let mut racers = Vec::new();
    for i in 0..8 {
        let mut b = body.clone();
        b["name"][0]["given"][0] = json!(format!("Racer{i}"));
        let req = s
            .http
            .put(s.url(&format!("Patient/{id}")))
            .header("content-type", "application/fhir+json")
            .header("if-match", "W/\"1\"")
            .body(b.to_string());
        racers.push(tokio::spawn(async move {
            req.send().await.expect("PUT").status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for r in racers {
        statuses.push(r.await.expect("join"));
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 412).count(),
        7,
        "{statuses:?}"
    );
    let current = json_of(s.get(&format!("Patient/{id}")).await, 200).await;
    assert_eq!(current["meta"]["versionId"], "2");
}

#[tokio::test]
async fn if_match_on_delete_and_bad_etag() {
    let s = TestServer::start().await;
    let id = s.create(&patient()).await;
    let resp = s
        .http
        .delete(s.url(&format!("Patient/{id}")))
        .header("if-match", "W/\"7\"")
        .send()
        .await
        .expect("delete");
    outcome_of(resp, 412).await;
    let resp = s
        .http
        .put(s.url(&format!("Patient/{id}")))
        .header("content-type", "application/fhir+json")
        .header("if-match", "seven")
        .body(json!({"resourceType":"Patient","id":id}).to_string())
        .send()
        .await
        .expect("put");
    outcome_of(resp, 400).await;
}

#[tokio::test]
async fn conditional_read_304() {
    let s = TestServer::start().await;
    let id = s.create(&patient()).await;
    let url = s.url(&format!("Patient/{id}"));
    let resp = s
        .http
        .get(&url)
        .header("if-none-match", "W/\"1\"")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 304);
    assert_eq!(resp.headers()["etag"], "W/\"1\"");
    assert!(resp.text().await.expect("body").is_empty());
    let resp = s
        .http
        .get(&url)
        .header("if-none-match", "W/\"0\"")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    let last_modified = resp.headers()["last-modified"]
        .to_str()
        .expect("lm")
        .to_owned();
    let resp = s
        .http
        .get(&url)
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 304);
    let resp = s
        .http
        .get(&url)
        .header("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn prefer_return() {
    let s = TestServer::start().await;
    let minimal = s
        .http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=minimal")
        .body(patient().to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(minimal.status(), 201);
    assert!(minimal.headers().contains_key("location"));
    assert!(minimal.text().await.expect("body").is_empty());
    let oo = s
        .http
        .post(s.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("prefer", "return=OperationOutcome")
        .body(patient().to_string())
        .send()
        .await
        .expect("post");
    let oo = json_of(oo, 201).await;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(oo["issue"][0]["severity"], "information");
}

#[tokio::test]
async fn search_by_identifier_id_and_last_updated() {
    let s = TestServer::start().await;
    let a = s.create(&patient()).await;
    let mut other = patient();
    other["identifier"][0]["value"] = json!("1850799999999");
    let b = s.create(&other).await;
    let bundle = json_of(
        s.get("Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|2740512345678")
            .await,
        200,
    )
    .await;
    assert_eq!(bundle["type"], "searchset");
    assert_eq!(bundle["total"], 1);
    assert_eq!(bundle["entry"][0]["resource"]["id"], a.as_str());
    assert_eq!(bundle["entry"][0]["search"]["mode"], "match");
    let both = json_of(
        s.get(&format!("Patient?_id={a},{b}&_lastUpdated=ge2020"))
            .await,
        200,
    )
    .await;
    assert_eq!(both["total"], 2);
    let none = json_of(s.get("Patient?_lastUpdated=lt2020-01-01").await, 200).await;
    assert_eq!(none["total"], 0);
    // Paging: one per page, the next link leads to the other one.
    let page1 = json_of(s.get("Patient?_count=1").await, 200).await;
    assert_eq!(page1["entry"].as_array().expect("entries").len(), 1);
    let next = next_link(&page1).expect("next link");
    let page2: serde_json::Value =
        json_of(s.http.get(&next).send().await.expect("next"), 200).await;
    assert_ne!(
        page1["entry"][0]["resource"]["id"],
        page2["entry"][0]["resource"]["id"]
    );
    // Lenient: an unknown parameter is reported, not fatal; strict: 400.
    let lenient = json_of(s.get("Patient?nickname=x").await, 200).await;
    let last = lenient["entry"]
        .as_array()
        .expect("entries")
        .last()
        .expect("outcome")
        .clone();
    assert_eq!(last["search"]["mode"], "outcome");
    let strict = s
        .http
        .get(s.url("Patient?nickname=x"))
        .header("prefer", "handling=strict")
        .send()
        .await
        .expect("get");
    outcome_of(strict, 400).await;
}

#[tokio::test]
async fn metadata_and_health() {
    let s = TestServer::start().await;
    let cs = json_of(s.get("metadata").await, 200).await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().expect("resources");
    assert!(resources.len() > 140);
    let health_base = s.base.trim_end_matches("/fhir");
    let live = s
        .http
        .get(format!("{health_base}/health/live"))
        .send()
        .await
        .expect("live");
    assert_eq!(live.status(), 200);
    let ready = s
        .http
        .get(format!("{health_base}/health/ready"))
        .send()
        .await
        .expect("ready");
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn browser_apps_of_the_allowed_origins_get_cors_answers() {
    use passerelle::http::cors::CorsOrigins;
    let options = passerelle::server::ServeOptions {
        cors: CorsOrigins::parse("https://app.example.fr").expect("origins"),
        ..crate::support::test_options()
    };
    let s = TestServer::start_on(crate::support::fresh_database().await, options).await;
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // The preflight of a write with a token: answered before any token.
    let preflight = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("Patient/p1"))
        .header("origin", "https://app.example.fr")
        .header("access-control-request-method", "PUT")
        .header(
            "access-control-request-headers",
            "authorization, content-type, if-match",
        )
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        header(&preflight, "access-control-allow-origin").as_deref(),
        Some("https://app.example.fr")
    );
    assert!(header(&preflight, "access-control-allow-methods")
        .is_some_and(|m| m.contains("PUT") && m.contains("PATCH")));
    assert_eq!(
        header(&preflight, "access-control-allow-headers").as_deref(),
        Some("authorization, content-type, if-match")
    );
    // The write itself: allowed, with the headers a FHIR client reads exposed.
    let written = s
        .http
        .put(s.url("Patient/p1"))
        .header("origin", "https://app.example.fr")
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "id": "p1"}).to_string())
        .send()
        .await
        .expect("PUT");
    assert_eq!(written.status(), 201);
    assert_eq!(
        header(&written, "access-control-allow-origin").as_deref(),
        Some("https://app.example.fr")
    );
    let exposed = header(&written, "access-control-expose-headers").unwrap_or_default();
    for name in ["ETag", "Location", "Content-Location"] {
        assert!(exposed.contains(name), "{exposed}");
    }
    assert_eq!(header(&written, "vary").as_deref(), Some("Origin"));
    // Another origin gets no CORS header; its preflight is no CORS answer.
    let stranger = s
        .http
        .get(s.url("Patient/p1"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("GET");
    assert_eq!(stranger.status(), 200);
    assert!(header(&stranger, "access-control-allow-origin").is_none());
    let refused = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("Patient/p1"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .expect("OPTIONS");
    assert!(header(&refused, "access-control-allow-origin").is_none());
}

/// Shared records read on one instance right after writing on another: every
/// read sees the version committed before it was sent (no cache to go stale),
/// by id, by version, in a search and in history, 1,000 times over.
#[tokio::test]
async fn a_read_on_one_instance_sees_the_write_just_made_on_another() {
    let a = TestServer::start_on(
        crate::support::fresh_database().await,
        crate::support::test_options(),
    )
    .await;
    let b = TestServer::start_on(a.config.clone(), crate::support::test_options()).await;
    let instances = [&a, &b];
    for n in 0..1000usize {
        let (writer, reader) = (instances[n % 2], instances[(n + 1) % 2]);
        let id = format!("shared-{}", n % 7);
        let family = format!("Family{n}");
        let patient = json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]});
        let written = writer.put_json(&format!("Patient/{id}"), &patient).await;
        assert!(written.status().is_success(), "PUT {n}");
        let version = written
            .headers()
            .get("etag")
            .and_then(|e| e.to_str().ok())
            .map(str::to_owned)
            .expect("ETag");
        // Each round asks the other instance one of four ways.
        let seen = match n % 4 {
            0 | 1 => {
                let read = reader.get(&format!("Patient/{id}")).await;
                let etag = read.headers().get("etag").and_then(|e| e.to_str().ok());
                assert_eq!(etag, Some(version.as_str()), "read {n}");
                read.json::<Value>().await.expect("JSON")
            }
            2 => first_entry(reader, &format!("Patient?_id={id}")).await,
            _ => first_entry(reader, &format!("Patient/{id}/_history?_count=1")).await,
        };
        assert_eq!(seen["name"][0]["family"], family.as_str(), "round {n}");
        assert_eq!(
            format!("W/\"{}\"", seen["meta"]["versionId"].as_str().unwrap_or("")),
            version,
            "round {n}"
        );
    }
}

/// Reads by id that arrive together are read together (one statement for many,
/// `passerelle_db_reads_by_id_total` says how many), and each still gets its own
/// answer: its resource and version, 404 for an id never written, 410 for a
/// deleted one.
#[tokio::test]
async fn reads_that_arrive_together_each_get_their_own_answer() {
    let s = TestServer::start().await;
    for i in 0..30 {
        let patient = json!({"resourceType": "Patient", "id": format!("r{i}"), "name": [{"family": format!("Family{i}")}]});
        assert!(s
            .put_json(&format!("Patient/r{i}"), &patient)
            .await
            .status()
            .is_success());
        if i % 3 == 0 {
            // A second version for some.
            let mut changed = patient.clone();
            changed["active"] = json!(true);
            let put = s.put_json(&format!("Patient/r{i}"), &changed).await;
            assert!(put.status().is_success());
        }
    }
    let deleted = s
        .http
        .delete(s.url("Patient/r29"))
        .send()
        .await
        .expect("DELETE");
    assert!(deleted.status().is_success());

    let reads = (0..600).map(|n| {
        let s = &s;
        async move {
            let i = (n * 7) % 31;
            let read = s.get(&format!("Patient/r{i}")).await;
            let etag = read
                .headers()
                .get("etag")
                .and_then(|e| e.to_str().ok())
                .map(str::to_owned);
            (
                i,
                read.status().as_u16(),
                etag,
                read.text().await.expect("body"),
            )
        }
    });
    use futures_util::StreamExt;
    let answers: Vec<_> = futures_util::stream::iter(reads)
        .buffer_unordered(48)
        .collect()
        .await;
    for (i, status, etag, body) in answers {
        match i {
            30 => assert_eq!(status, 404, "never written: {body}"),
            29 => assert_eq!(status, 410, "deleted: {body}"),
            _ => {
                assert_eq!(status, 200, "r{i}: {body}");
                let resource: Value = serde_json::from_str(&body).expect("JSON");
                assert_eq!(resource["id"], format!("r{i}").as_str());
                assert_eq!(resource["name"][0]["family"], format!("Family{i}").as_str());
                let version = if i % 3 == 0 { "2" } else { "1" };
                assert_eq!(resource["meta"]["versionId"], version, "r{i}");
                assert_eq!(etag.as_deref(), Some(format!("W/\"{version}\"").as_str()));
            }
        }
    }

    let metrics = reqwest::get(format!("http://{}/metrics", s.authority()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let sent = |what: &str| -> u64 {
        let name = format!("passerelle_db_reads_by_id_total{{sent=\"{what}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    assert!(sent("reads") >= 600, "{metrics}");
    assert!(
        sent("statements") < sent("reads"),
        "reads that came together were read together: {metrics}"
    );
}

/// The resource of the first entry of the Bundle at `path`.
async fn first_entry(server: &TestServer, path: &str) -> Value {
    let bundle: Value = server.get(path).await.json().await.expect("JSON");
    bundle["entry"][0]["resource"].clone()
}
