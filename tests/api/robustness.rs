//! Hostile requests: each must get a clear 4xx OperationOutcome, quickly, and leave
//! the server serving (an overflowed stack would abort this whole test process).

use serde_json::json;

use crate::support::{json_of, outcome_of, TestServer};

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
    // At the limits (64 JSON levels, 32 XML elements): stored, and read back in
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
    let xml_ok = nested_extension_xml(30);
    let resp = post_body(&s, "Patient", "application/fhir+xml", xml_ok).await;
    assert_eq!(resp.status(), 201);

    for (content_type, body) in [
        ("application/fhir+xml", nested_extension_xml(1_000)),
        ("application/fhir+json", nested_extension_json(1_000)),
        ("application/fhir+json", nested_extension_json(40)),
        ("application/fhir+xml", nested_extension_xml(31)),
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
    let id = location.split('/').nth_back(2).expect("id").to_owned();
    let resp = s
        .http
        .patch(s.url(&format!("Patient/{id}")))
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
    // A search form is not a resource: 1 MiB at most.
    let resp = s
        .http
        .post(s.url("Patient/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("name={}", "a".repeat(2 << 20)))
        .send()
        .await
        .expect("POST _search");
    outcome_of(resp, 413).await;
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
    // Values bound once per target type of an untyped chain count as many.
    let tags = (0..10)
        .map(|i| format!("s|c{i}"))
        .collect::<Vec<_>>()
        .join(",");
    outcome_of(s.get(&format!("Basic?subject._tag={tags}")).await, 400).await;
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

/// A plain connection to the test's database, outside the server's pool.
async fn direct(s: &TestServer) -> tokio_postgres::Client {
    let (client, connection) = s
        .config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
}

/// Holds the row lock of `Patient/{id}` (what every write of it takes first) until
/// the returned client is dropped.
async fn lock_patient(s: &TestServer, id: &str) -> tokio_postgres::Client {
    let holder = direct(s).await;
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM resource WHERE res_type = 'Patient' AND res_id = '{id}' FOR UPDATE"
        ))
        .await
        .expect("lock");
    holder
}

/// Backends of this database waiting for a lock: the server's blocked statements.
pub async fn waiting_backends(observer: &tokio_postgres::Client) -> Vec<i32> {
    observer
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            &[],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn wait_for_waiting(observer: &tokio_postgres::Client) -> Vec<i32> {
    for _ in 0..100 {
        let pids = waiting_backends(observer).await;
        if !pids.is_empty() {
            return pids;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the server's statement never waited for the lock");
}

fn with_limits(limits: passerelle::server::RequestLimits) -> passerelle::server::ServeOptions {
    passerelle::server::ServeOptions {
        limits,
        ..crate::support::test_options()
    }
}

#[tokio::test]
async fn a_statement_past_the_timeout_is_cancelled_with_503() {
    let options = with_limits(passerelle::server::RequestLimits {
        statement_timeout: std::time::Duration::from_millis(800),
        ..Default::default()
    });
    let s = TestServer::start_on(crate::support::fresh_database().await, options).await;
    let id = s
        .create(&json!({"resourceType":"Patient","active":true}))
        .await;
    let holder = lock_patient(&s, &id).await;
    let started = std::time::Instant::now();
    let resp = s
        .put_json(
            &format!("Patient/{id}"),
            &json!({"resourceType":"Patient","id":id,"active":false}),
        )
        .await;
    assert_eq!(resp.headers()["retry-after"], "5");
    let oo = outcome_of(resp, 503).await;
    assert_eq!(oo["issue"][0]["code"], "timeout", "{oo}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    drop(holder);
    let resp = s.get(&format!("Patient/{id}")).await;
    let patient = crate::support::json_of(resp, 200).await;
    assert_eq!(patient["active"], true, "nothing was written");
}

#[tokio::test]
async fn a_request_whose_client_went_away_stops_its_statements() {
    let s = TestServer::start().await;
    let id = s
        .create(&json!({"resourceType":"Patient","active":true}))
        .await;
    let holder = lock_patient(&s, &id).await;
    let observer = direct(&s).await;
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(700))
        .build()
        .expect("client");
    let sent = impatient
        .put(s.url(&format!("Patient/{id}")))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType":"Patient","id":id,"active":false}).to_string())
        .send();
    let (gave_up, waiting) = tokio::join!(sent, wait_for_waiting(&observer));
    assert!(gave_up.is_err(), "the client timed out");
    assert_eq!(waiting.len(), 1);
    // Within a few seconds the blocked statement is cancelled, not left waiting for
    // the 30 s statement timeout.
    let mut left = waiting;
    for _ in 0..60 {
        left = waiting_backends(&observer).await;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "still waiting: {left:?}");
    drop(holder);
    let patient = crate::support::json_of(s.get(&format!("Patient/{id}")).await, 200).await;
    assert_eq!(
        patient["active"], true,
        "the abandoned write was rolled back"
    );
    still_serving(&s).await;
}

#[tokio::test]
async fn a_lost_database_connection_is_503_and_the_server_recovers() {
    let s = TestServer::start().await;
    let id = s
        .create(&json!({"resourceType":"Patient","active":true}))
        .await;
    let holder = lock_patient(&s, &id).await;
    let observer = direct(&s).await;
    let (path, body) = (
        format!("Patient/{id}"),
        json!({"resourceType":"Patient","id":id,"active":false}),
    );
    let put = s.put_json(&path, &body);
    let kill = async {
        for pid in wait_for_waiting(&observer).await {
            observer
                .execute("SELECT pg_terminate_backend($1)", &[&pid])
                .await
                .expect("terminate");
        }
    };
    let (resp, ()) = tokio::join!(put, kill);
    assert_eq!(resp.headers()["retry-after"], "5");
    let oo = outcome_of(resp, 503).await;
    assert_eq!(oo["issue"][0]["code"], "transient", "{oo}");
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or("")
            .contains("nothing was changed"),
        "{oo}"
    );
    drop(holder);
    still_serving(&s).await;
}

/// Sends part of a request and reads until the server closes the connection (at
/// most 5 s): what it answered, or `None` if it kept the connection open.
async fn half_sent(addr: &str, bytes: &[u8]) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tokio::net::TcpStream::connect(addr).await.expect("connect");
    slow.write_all(bytes).await.expect("write");
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut buf),
    )
    .await;
    closed
        .is_ok()
        .then(|| String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn slow_clients_are_timed_out_and_connections_are_capped() {
    let options = with_limits(passerelle::server::RequestLimits {
        header_read_timeout: std::time::Duration::from_millis(600),
        body_read_timeout: std::time::Duration::from_millis(600),
        max_connections: 3,
        ..Default::default()
    });
    let s = TestServer::start_on(crate::support::fresh_database().await, options).await;
    let addr = s.authority();

    // A head that never ends: the server closes the connection.
    let answer = half_sent(&addr, b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n").await;
    assert!(answer.is_some(), "the server closed the half-sent request");

    // A body that never ends: 408.
    let answer = half_sent(&addr, b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{\"resourceType\"").await;
    let text = answer.unwrap_or_default();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // Three idle connections fill the server; a fourth client is served once the
    // header timeout has closed them, not locked out.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let resp = s.get("metadata").await;
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "served while the cap was reached: {:?}",
        started.elapsed()
    );
    drop(idle);
}

#[tokio::test]
async fn chunked_bodies_take_the_memory_they_use() {
    use tokio::io::AsyncWriteExt;
    let (_server, addr) = with_one_mib_of_bodies(std::time::Duration::from_secs(3)).await;
    // A client sending its body in chunks, slowly: it holds what it has sent,
    // not the whole budget of large bodies (here the body limit).
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(b"POST /fhir/Patient HTTP/1.1\r\nhost: x\r\ncontent-type: application/fhir+json\r\ntransfer-encoding: chunked\r\n\r\n1\r\n{\r\n")
        .await
        .expect("first chunk");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Morceaux"}]}).to_string();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        crate::support::chunked_post(&addr, "/fhir/Patient", patient.as_bytes(), 16),
    )
    .await
    .expect("answered while the slow client sends");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // A large one in chunks, its share grown as it arrives.
    let data = "QUJD".repeat(100_000);
    let binary =
        json!({"resourceType": "Binary", "contentType": "text/plain", "data": data}).to_string();
    let answer =
        crate::support::chunked_post(&addr, "/fhir/Binary", binary.as_bytes(), 64 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // Two large ones side by side, each growing past half the budget: neither
    // holds a part the other waits for; both are created.
    let data = "QUJD".repeat(170_000);
    let binary =
        json!({"resourceType": "Binary", "contentType": "text/plain", "data": data}).to_string();
    let (first, second) = tokio::join!(
        crate::support::chunked_post(&addr, "/fhir/Binary", binary.as_bytes(), 16 * 1024),
        crate::support::chunked_post(&addr, "/fhir/Binary", binary.as_bytes(), 16 * 1024)
    );
    assert!(first.starts_with("HTTP/1.1 201"), "{first}");
    assert!(second.starts_with("HTTP/1.1 201"), "{second}");
    // Over the limit: 413.
    let data = "QUJD".repeat(300_000);
    let binary =
        json!({"resourceType": "Binary", "contentType": "text/plain", "data": data}).to_string();
    let answer =
        crate::support::chunked_post(&addr, "/fhir/Binary", binary.as_bytes(), 64 * 1024).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    drop(slow);
}

#[tokio::test]
async fn websockets_count_among_the_connections_served() {
    let options = with_limits(passerelle::server::RequestLimits {
        max_connections: 2,
        ..Default::default()
    });
    let s = TestServer::start_on(crate::support::fresh_database().await, options).await;
    let url = format!("{}/$websocket", s.base.replacen("http://", "ws://", 1));
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect");
        sockets.push(socket);
    }
    // Both slots are the websockets': a third client waits in the backlog…
    let waiting = tokio::spawn({
        let (http, url) = (reqwest::Client::new(), s.url("metadata"));
        async move { http.get(url).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "served past the cap");
    // … and is served once one of them closes.
    let mut first = sockets.remove(0);
    first.close(None).await.expect("close");
    drop(first);
    let served = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("served once a websocket closed")
        .expect("task")
        .expect("GET");
    assert_eq!(served, 200);
}

/// `POST [type]/_search` with a form body (long values do not fit a URL well).
async fn search_form(s: &TestServer, resource_type: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    let body: String = pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                k,
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    let resp = s
        .http
        .post(s.url(&format!("{resource_type}/_search")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("POST _search");
    let bundle = crate::support::json_of(resp, 200).await;
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"]["id"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn long_indexed_text_is_stored_whole_and_found() {
    let s = TestServer::start().await;
    let prose =
        "Patiente de 84 ans, insuffisance cardiaque décompensée, retour à domicile avec IDE. "
            .repeat(150);
    assert!(prose.len() > 12_000);
    let obs = s
        .create(
            &json!({"resourceType":"Observation","status":"final","code":{"text":"synthèse"},
            "valueString": prose}),
        )
        .await;
    let stored = crate::support::json_of(s.get(&format!("Observation/{obs}")).await, 200).await;
    assert_eq!(stored["valueString"], prose.as_str(), "stored whole");
    assert_eq!(
        search_form(&s, "Observation", &[("value-string", "patiente de 84")]).await,
        [obs.as_str()]
    );
    // Commas separate values in a search: escaped, the prose is one value.
    let escaped = prose.replace(',', "\\,");
    assert_eq!(
        search_form(&s, "Observation", &[("value-string:exact", &escaped)]).await,
        [obs.as_str()]
    );
    let almost = format!("{}.", escaped.trim_end());
    assert!(
        search_form(&s, "Observation", &[("value-string:exact", &almost)])
            .await
            .is_empty()
    );

    // 2,700 characters of every width (ASCII, accented, CJK, emoji), indexed string and token.
    let noise: String = (0..2_700u32)
        .map(|i| ['a', 'é', '漢', '🩺', 'Z', '9'][(i * 7 % 6) as usize])
        .collect();
    let patient = s
        .create(&json!({"resourceType":"Patient","name":[{"family":noise}],
            "identifier":[{"system":"urn:example:long","value":noise}]}))
        .await;
    assert_eq!(
        search_form(&s, "Patient", &[("family:exact", &noise)]).await,
        [patient.as_str()]
    );
    let token = format!("urn:example:long|{noise}");
    assert_eq!(
        search_form(&s, "Patient", &[("identifier", &token)]).await,
        [patient.as_str()]
    );
}

#[tokio::test]
async fn wide_arrays_are_refused_before_parsing_but_large_bundles_are_not() {
    let s = TestServer::start().await;
    let identifiers = |n: usize| {
        let items = vec![r#"{"value":"1"}"#; n].join(",");
        format!(r#"{{"resourceType":"Patient","identifier":[{items}]}}"#)
    };
    let oo = outcome_of(
        post_body(&s, "Patient", "application/fhir+json", identifiers(400_000)).await,
        400,
    )
    .await;
    assert_eq!(oo["issue"][0]["code"], "too-costly", "{oo}");
    assert_eq!(
        post_body(&s, "Patient", "application/fhir+json", identifiers(10_000))
            .await
            .status(),
        201
    );
    // A transaction of 12,000 entries is read one entry at a time.
    let entries: Vec<String> = (0..12_000)
        .map(|i| {
            format!(
                r#"{{"resource":{{"resourceType":"Basic","code":{{"text":"b{i}"}}}},"request":{{"method":"POST","url":"Basic"}}}}"#
            )
        })
        .collect();
    let bundle = format!(
        r#"{{"resourceType":"Bundle","type":"transaction","entry":[{}]}}"#,
        entries.join(",")
    );
    assert_eq!(
        post_body(&s, "", "application/fhir+json", bundle)
            .await
            .status(),
        200
    );
}

/// A server whose body limit and budget of large bodies in flight are both
/// 1 MiB, and its address.
async fn with_one_mib_of_bodies(body_read_timeout: std::time::Duration) -> (TestServer, String) {
    let options = passerelle::server::ServeOptions {
        max_body_bytes: 1 << 20,
        ..with_limits(passerelle::server::RequestLimits {
            large_bodies_in_flight: 1 << 20,
            body_read_timeout,
            ..Default::default()
        })
    };
    let s = TestServer::start_on(crate::support::fresh_database().await, options).await;
    let addr = s.authority();
    (s, addr)
}

/// Large bodies share a budget: while one holds it (here a body that never
/// ends, counted at its declared length), the next large one waits; small ones
/// do not.
#[tokio::test]
async fn large_bodies_wait_for_their_share_of_memory() {
    use tokio::io::AsyncWriteExt;
    let (s, addr) = with_one_mib_of_bodies(std::time::Duration::from_secs(5)).await;
    let mut stalled = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    stalled
        .write_all(b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 1000000\r\n\r\n{\"res")
        .await
        .expect("write");
    // It holds the share its length declares; it gives up after a second,
    // freeing the budget.
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
        drop(stalled);
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let started = std::time::Instant::now();
    s.create(&json!({"resourceType":"Patient","active":true}))
        .await;
    let small = started.elapsed();

    let identifiers: Vec<serde_json::Value> = (0..2_000)
        .map(|i| json!({"system":"urn:example:wide","value":format!("{i:040}")}))
        .collect();
    let large = json!({"resourceType":"Patient","identifier":identifiers});
    assert!(large.to_string().len() > 64 * 1024);
    let started = std::time::Instant::now();
    s.create(&large).await;
    let waited = started.elapsed();
    assert!(
        small < std::time::Duration::from_millis(700),
        "small body: {small:?}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(500),
        "the large body did not wait for the stalled one: {waited:?}"
    );
}

/// A client that stops reading its response loses its connection after the write
/// timeout, and its slot goes to the next client.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() {
    use tokio::io::AsyncWriteExt;
    let options = with_limits(passerelle::server::RequestLimits {
        write_timeout: std::time::Duration::from_secs(1),
        max_connections: 1,
        ..Default::default()
    });
    let s = TestServer::start_on(crate::support::fresh_database().await, options).await;
    // No idle keep-alive connection may hold the one slot.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let identifiers: Vec<serde_json::Value> = (0..5_000)
        .map(
            |i| json!({"system":"urn:example:wide","value":format!("{i:06}{}", "x".repeat(1_400))}),
        )
        .collect();
    let resp = http
        .put(s.url("Patient/wide"))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType":"Patient","id":"wide","identifier":identifiers}).to_string())
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 201);
    drop(resp);
    let addr = s.authority();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(4_096)
        .expect("small receive buffer");
    let mut stuck = socket
        .connect(addr.parse().expect("address"))
        .await
        .expect("connect");
    stuck
        .write_all(b"GET /fhir/Patient/wide HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let next = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        http.get(s.url("metadata")).send(),
    )
    .await;
    assert!(
        next.is_ok_and(|r| r.is_ok_and(|r| r.status() == 200)),
        "the next client was served once the stuck one was dropped"
    );
    drop(stuck);
}

#[tokio::test]
async fn a_write_is_not_saved_without_its_audit_record() {
    let s = TestServer::start().await;
    // PostgreSQL refuses the audit records of updates and transactions.
    s.pool
        .get()
        .await
        .expect("connection")
        .batch_execute(
            "CREATE FUNCTION refuse_record() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN RAISE EXCEPTION 'audit record refused by the test'; END $$;
             CREATE TRIGGER refuse_records BEFORE INSERT ON audit_event
               FOR EACH ROW WHEN (NEW.subtype IN ('update', 'transaction', 'batch'))
               EXECUTE FUNCTION refuse_record();",
        )
        .await
        .expect("trigger");
    // A REST write stores its record in its own transaction: refused, nothing
    // written.
    let answer = s
        .put_json(
            "Patient/unrecorded",
            &json!({"resourceType": "Patient", "id": "unrecorded"}),
        )
        .await;
    let outcome = outcome_of(answer, 503).await;
    let text = outcome["issue"][0]["diagnostics"].to_string();
    assert!(
        text.contains("could not be recorded in the audit trail: nothing was changed"),
        "{text}"
    );
    outcome_of(s.get("Patient/unrecorded").await, 404).await;
    // A transaction too.
    let bundle = |kind: &str, id: &str| {
        json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": {"resourceType": "Patient", "id": id},
             "request": {"method": "PUT", "url": format!("Patient/{id}")}}]})
    };
    let outcome = outcome_of(
        s.post_json("", &bundle("transaction", "unrecorded")).await,
        503,
    )
    .await;
    let text = outcome["issue"][0]["diagnostics"].to_string();
    assert!(
        text.contains("could not be recorded in the audit trail: nothing was changed"),
        "{text}"
    );
    outcome_of(s.get("Patient/unrecorded").await, 404).await;
    // A batch's entries commit one by one, and the batch is recorded once
    // answered: saved, and said so, lest a client send it again.
    let outcome = outcome_of(s.post_json("", &bundle("batch", "saved")).await, 503).await;
    let text = outcome["issue"][0]["diagnostics"].to_string();
    assert!(text.contains("the change was saved"), "{text}");
    json_of(s.get("Patient/saved").await, 200).await;
}

/// Searches are prepared once per connection; a client asking for ever new
/// shapes of them does not grow a connection's prepared statements (here and in
/// its PostgreSQL backend) without bound.
#[tokio::test]
async fn a_connection_keeps_a_bounded_number_of_prepared_statements() {
    let config = crate::support::fresh_database().await;
    let pool =
        passerelle::store::pool::build(config, passerelle::store::pool::PoolSettings::sized(1))
            .expect("pool");
    let mut most = 0;
    for shape in 0..1200 {
        let client = pool.get().await.expect("connection");
        client
            .prepare_cached(&format!("SELECT {shape}"))
            .await
            .expect("prepare");
        let backend: i64 = client
            .query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .await
            .expect("count")
            .get(0);
        most = most.max(backend);
    }
    assert!(most > 100, "statements are kept prepared: {most}");
    assert!(most <= 502, "at most 500 (and this count's own): {most}");
}
