//! The `passerelle` binary as a user runs it: `serve` on its embedded default
//! (initdb on first start, reuse afterwards, clean stop), and `migrate`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{fresh_database_url, run_passerelle};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn_serve(data_dir: &std::path::Path, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn passerelle serve")
}

/// `passerelle serve` on the database at `url`, with `extra` settings.
fn spawn_on_database(url: &str, port: u16, extra: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_passerelle"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in extra {
        command.env(name, value);
    }
    command.spawn().expect("spawn passerelle serve")
}

async fn wait_ready(http: &reqwest::Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "server not ready in time");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn terminate(mut child: Child) {
    // SAFETY: sending SIGTERM to a child process we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "serve exited with {status}");
}

#[tokio::test]
async fn serve_on_the_embedded_default_keeps_data_across_restarts() {
    let data_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("serve-{}", uuid::Uuid::new_v4().simple()));
    let http = reqwest::Client::new();
    let port = free_port();
    let child = spawn_serve(&data_dir, port);
    wait_ready(&http, port).await;
    let base = format!("http://127.0.0.1:{port}/fhir");
    let resp = http
        .put(format!("{base}/Organization/ch-tulle"))
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Organization", "id": "ch-tulle", "name": "CH de Tulle"})
                .to_string(),
        )
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 201);
    terminate(child);
    // Stopped cleanly: the cluster's postmaster is gone with it.
    let pid_file = data_dir.join("postgres/data/postmaster.pid");
    assert!(
        !pid_file.exists(),
        "the embedded PostgreSQL is still running"
    );

    let port = free_port();
    let child = spawn_serve(&data_dir, port);
    wait_ready(&http, port).await;
    let resp = http
        .get(format!(
            "http://127.0.0.1:{port}/fhir/Organization/ch-tulle"
        ))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200, "data kept across restarts");
    terminate(child);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn migrate_against_a_database_url_is_idempotent() {
    let url = fresh_database_url().await;
    for _ in 0..2 {
        let out = run_passerelle(&["migrate".as_ref()], &url);
        assert!(out.contains("schema is up to date"));
    }
}

/// An OTLP/HTTP receiver: its endpoint, and every export received (head and
/// body, as text: span names are plain strings in the protobuf).
async fn otlp_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", receiver.local_addr().expect("addr"));
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = receiver.accept().await {
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                // Until the head and the whole body (content-length) are in.
                loop {
                    let n = socket.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    let Some(head_end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length = text[..head_end]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= head_end + 4 + length {
                        break;
                    }
                }
                let _ = seen.send(String::from_utf8_lossy(&request).into_owned());
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (endpoint, seen_rx)
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, request spans reach an OTLP/HTTP receiver.
#[tokio::test]
async fn spans_are_exported_over_otlp_when_configured() {
    let (endpoint, mut seen_rx) = otlp_receiver().await;
    let port = free_port();
    let child = spawn_on_database(
        &fresh_database_url().await,
        port,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let http = reqwest::Client::new();
    wait_ready(&http, port).await;
    for path in ["metadata", "Patient?name=Traces"] {
        let resp = http
            .get(format!("http://127.0.0.1:{port}/fhir/{path}"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
    }
    terminate(child);
    // The request spans, and the database call of the search nested in them.
    let mut exported = String::new();
    while !(exported.contains("request") && exported.contains("db.search")) {
        let export = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
            .await
            .expect("the spans exported within 10 s")
            .expect("an export");
        assert!(export.starts_with("POST /v1/traces"), "{export}");
        exported.push_str(&export);
    }
}

/// `passerelle reindex` rebuilds index rows that were lost (or defined anew).
#[tokio::test]
async fn reindex_rebuilds_the_search_index() {
    let url = fresh_database_url().await;
    let config: tokio_postgres::Config = url.parse().expect("config");
    let pool =
        passerelle::server::pool_for(config, passerelle::store::pool::PoolSettings::sized(2))
            .expect("pool");
    let port = free_port();
    let child = spawn_on_database(&url, port, &[]);
    let http = reqwest::Client::new();
    wait_ready(&http, port).await;
    let base = format!("http://127.0.0.1:{port}/fhir");
    for (id, family) in [("a", "Martin"), ("b", "Bernard")] {
        let body = json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]});
        let resp = http
            .put(format!("{base}/Patient/{id}"))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), 201);
    }
    let total = |http: reqwest::Client, base: String| async move {
        let text = http
            .get(format!("{base}/Patient?family=martin"))
            .send()
            .await
            .expect("search")
            .text()
            .await
            .expect("body");
        serde_json::from_str::<serde_json::Value>(&text).expect("json")["total"].as_i64()
    };
    assert_eq!(total(http.clone(), base.clone()).await, Some(1));
    let client = pool.get().await.expect("connection");
    client
        .batch_execute("DELETE FROM search_string")
        .await
        .expect("lose the index");
    drop(client);
    assert_eq!(total(http.clone(), base.clone()).await, Some(0));
    let out = run_passerelle(&["reindex".as_ref()], &url);
    assert!(out.contains("reindexed 2 resources"));
    assert_eq!(total(http.clone(), base.clone()).await, Some(1));
    terminate(child);
}

/// `serve` against a database URL, calling back to loopback, retrying quickly.
fn spawn_serve_url(database_url: &str, port: u16) -> Child {
    spawn_serve_url_with(database_url, port, &[])
}

fn spawn_serve_url_with(database_url: &str, port: u16, env: &[(&str, &str)]) -> Child {
    let quick = [
        ("PASSERELLE_ALLOW_INSECURE_ENDPOINTS", "true"),
        ("PASSERELLE_DELIVERY_BACKOFF_MS", "100"),
        ("PASSERELLE_DELIVERY_BACKOFF_MAX_MS", "300"),
        ("PASSERELLE_DELIVERY_TIMEOUT_MS", "1000"),
        ("PASSERELLE_DELIVERY_MAX_ATTEMPTS", "1000"),
    ];
    let settings: Vec<(&str, &str)> = quick.iter().chain(env).copied().collect();
    spawn_on_database(database_url, port, &settings)
}

#[tokio::test]
async fn notifications_committed_before_a_sigkill_are_delivered_after_restart() {
    use crate::receiver::Receiver;
    use crate::subscriptions::{encounter, r4_subscription};

    let database_url = fresh_database_url().await;
    let http = reqwest::Client::new();
    let gp = Receiver::start().await;
    let port = free_port();
    let mut child = spawn_serve_url(&database_url, port);
    wait_ready(&http, port).await;
    let base = format!("http://127.0.0.1:{port}/fhir");
    let put = |id: &str| {
        let (http, base, body) = (http.clone(), base.clone(), encounter(id, "finished", "p1"));
        let id = id.to_owned();
        async move {
            let resp = http
                .put(format!("{base}/Encounter/{id}"))
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await
                .expect("PUT");
            assert_eq!(resp.status(), 201);
        }
    };
    let resp = http
        .post(format!("{base}/Subscription"))
        .header("content-type", "application/fhir+json")
        .body(r4_subscription("Encounter?status=finished", &gp.url()).to_string())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 201);
    put("stay-1").await;
    assert_eq!(gp.expect().await.json()["id"], "stay-1");

    // The GP's endpoint fails; three discharges commit; the server dies at once.
    gp.answer_with(503);
    for id in ["stay-2", "stay-3", "stay-4"] {
        put(id).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    gp.answer_with(200);
    let port = free_port();
    let child = spawn_serve_url(&database_url, port);
    wait_ready(&http, port).await;
    let mut delivered = Vec::new();
    while delivered.len() < 3 {
        let n = gp
            .next(Duration::from_secs(30))
            .await
            .expect("the missed events after restart");
        delivered.push(n.json()["id"].as_str().expect("id").to_owned());
    }
    assert_eq!(delivered, vec!["stay-2", "stay-3", "stay-4"]);
    assert!(
        gp.next(Duration::from_millis(800)).await.is_none(),
        "exactly the missed events"
    );
    terminate(child);
}

/// A statement of a server that dies does not outlive it: PostgreSQL notices the
/// closed connection (client_connection_check_interval) and stops it.
#[tokio::test]
async fn statements_of_a_killed_server_do_not_outlive_it() {
    let database_url = fresh_database_url().await;
    let (observer, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let http = reqwest::Client::new();
    let port = free_port();
    let mut child = spawn_serve_url(&database_url, port);
    wait_ready(&http, port).await;
    let base = format!("http://127.0.0.1:{port}/fhir");
    let resp = http
        .put(format!("{base}/Patient/locked"))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType":"Patient","id":"locked"}).to_string())
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status(), 201);
    observer
        .batch_execute(
            "BEGIN; SELECT 1 FROM resource WHERE res_type = 'Patient' AND res_id = 'locked' FOR UPDATE",
        )
        .await
        .expect("lock");
    let blocked = {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            let _ = http
                .put(format!("{base}/Patient/locked"))
                .header("content-type", "application/fhir+json")
                .body(json!({"resourceType":"Patient","id":"locked","active":true}).to_string())
                .send()
                .await;
        })
    };
    let waiting = || async { crate::robustness::waiting_backends(&observer).await.len() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting().await == 0 {
        assert!(
            Instant::now() < deadline,
            "the PUT never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiting().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the dead server's statement still waits for the lock"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    blocked.abort();
}

/// The escalation timer lives in the database: a server killed before a notice
/// is due leaves it to the next one, which escalates it once.
#[tokio::test]
async fn an_escalation_due_after_a_sigkill_happens_once_after_restart() {
    use crate::receiver::Receiver;
    use crate::stays::stay;

    let database_url = fresh_database_url().await;
    let http = reqwest::Client::new();
    let (gp, desk) = (Receiver::start().await, Receiver::start().await);
    let settings = [("PASSERELLE_ACK_ESCALATION_AFTER", "3s")];
    let port = free_port();
    let mut child = spawn_serve_url_with(&database_url, port, &settings);
    wait_ready(&http, port).await;
    let base = format!("http://127.0.0.1:{port}/fhir");
    let endpoint = |id: &str, address: String| {
        json!({"resourceType": "Endpoint", "id": id, "status": "active",
            "connectionType": {"code": "hl7-fhir-rest"}, "payloadType": [{"text": "FHIR"}],
            "address": address})
    };
    let resources = [
        endpoint("gp-ep", gp.url()),
        json!({"resourceType": "PractitionerRole", "id": "gp-role",
            "practitioner": {"reference": "Practitioner/stay-gp"},
            "endpoint": [{"reference": "Endpoint/gp-ep"}]}),
        json!({"resourceType": "Patient", "id": "stay-patient",
            "generalPractitioner": [{"reference": "Practitioner/stay-gp"}]}),
        endpoint("desk-ep", desk.url()),
        json!({"resourceType": "Organization", "id": "stay-ch", "name": "CH",
            "endpoint": [{"reference": "Endpoint/desk-ep"}]}),
        stay("kill-1", "in-progress"),
    ];
    for r in &resources {
        let url = format!(
            "{base}/{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        let resp = http
            .put(url)
            .header("content-type", "application/fhir+json")
            .body(r.to_string())
            .send()
            .await
            .expect("PUT");
        assert_eq!(resp.status(), 201);
    }
    gp.expect().await;
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    let port = free_port();
    let child = spawn_serve_url_with(&database_url, port, &settings);
    wait_ready(&http, port).await;
    let task = desk
        .next(Duration::from_secs(30))
        .await
        .expect("the escalation after restart")
        .json();
    assert_eq!(task["code"]["coding"][0]["code"], "escalation");
    assert!(
        desk.next(Duration::from_secs(2)).await.is_none(),
        "escalated once"
    );
    terminate(child);
}

/// SIGTERM: the listener closes at once, the request in flight is finished and
/// answered, open websockets are closed, and the process exits 0 (well before
/// the shutdown timeout).
#[tokio::test]
async fn sigterm_finishes_the_request_in_flight_then_exits_cleanly() {
    use futures_util::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = free_port();
    let child = spawn_on_database(
        &fresh_database_url().await,
        port,
        &[("PASSERELLE_SHUTDOWN_TIMEOUT", "20s")],
    );
    let http = reqwest::Client::new();
    wait_ready(&http, port).await;
    let body = json!({"resourceType": "Patient", "name": [{"family": "EnVol"}]}).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!(
        "POST /fhir/Patient HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/fhir+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    socket
        .write_all(format!("{head}{first}").as_bytes())
        .await
        .expect("half a request");
    let (mut websocket, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/fhir/$websocket"))
            .await
            .expect("websocket");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // SAFETY: sending SIGTERM to a child process we spawned.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let terminated = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
    {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    socket.write_all(rest.as_bytes()).await.expect("the rest");
    let mut answer = String::new();
    socket
        .read_to_string(&mut answer)
        .await
        .expect("the answer");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // The websocket is closed by the server (not left to the shutdown timeout).
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = websocket.next().await {
            if message.is_close() {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "the websocket was not closed by the server"
    );
    let mut child = child;
    let status = child.wait().expect("wait");
    assert!(status.success(), "serve exited with {status}");
    assert!(
        terminated.elapsed() < Duration::from_secs(15),
        "exit waited for the shutdown timeout: {:?}",
        terminated.elapsed()
    );
}

/// With traces exported, a subscription's callback carries the W3C trace context
/// of its delivery, so that the receiver's trace joins Passerelle's.
#[tokio::test]
async fn callbacks_carry_the_trace_context_when_traces_are_exported() {
    let (endpoint, _exports) = otlp_receiver().await;
    let gp = crate::receiver::Receiver::start().await;
    let port = free_port();
    let child = spawn_on_database(
        &fresh_database_url().await,
        port,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("PASSERELLE_ALLOW_INSECURE_ENDPOINTS", "true"),
        ],
    );
    let http = reqwest::Client::new();
    wait_ready(&http, port).await;
    let base = format!("http://127.0.0.1:{port}/fhir");
    for body in [
        crate::subscriptions::r4_subscription("Patient?", &gp.url()),
        json!({"resourceType": "Patient", "name": [{"family": "Tracee"}]}),
    ] {
        let resp = http
            .post(format!(
                "{base}/{}",
                body["resourceType"].as_str().expect("type")
            ))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("create");
        assert_eq!(resp.status(), 201);
    }
    let callback = gp.expect().await;
    terminate(child);
    let traceparent = callback
        .header("traceparent")
        .expect("a traceparent header");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[0], "00");
    assert!(parts[1].len() == 32 && parts[1].chars().all(|c| c.is_ascii_hexdigit()));
    assert!(parts[2].len() == 16 && parts[2].chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(parts[1], "0".repeat(32), "a real trace id");
}

/// (kind, status, attempts, leased) of every background job.
async fn background_jobs(db: &tokio_postgres::Client) -> Vec<(String, String, i32, bool)> {
    db.query(
        "SELECT kind, status, attempts, leased_by IS NOT NULL FROM background_job ORDER BY kind",
        &[],
    )
    .await
    .expect("jobs")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

/// An export and a reindex run as leased jobs: SIGKILL the instance running
/// both, and the other instance finishes them (the export from the start, in a
/// new snapshot).
#[tokio::test]
async fn jobs_of_an_instance_killed_mid_run_are_finished_by_another() {
    let url = fresh_database_url().await;
    let lease = [("PASSERELLE_JOB_LEASE", "2s")];
    let http = reqwest::Client::new();
    let port_a = free_port();
    let mut a = spawn_on_database(&url, port_a, &lease);
    wait_ready(&http, port_a).await;
    let base_a = format!("http://127.0.0.1:{port_a}/fhir");
    let post = |base: &str, body: serde_json::Value| {
        let request = http
            .post(format!(
                "{base}/{}",
                body["resourceType"].as_str().expect("type")
            ))
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
        async move { request.send().await.expect("POST").status().as_u16() }
    };
    for n in 0..30 {
        let patient = json!({"resourceType": "Patient",
            "address": [{"district": format!("Canton-{}", n % 3)}]});
        assert_eq!(post(&base_a, patient).await, 201);
    }

    // The test holds what both jobs need next: the export's files, and the
    // patients the reindex locks batch by batch.
    let (mut db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let (watcher, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let hold = db.transaction().await.expect("begin");
    hold.batch_execute(
        "SELECT 1 FROM resource WHERE res_type = 'Patient' FOR UPDATE;
         LOCK TABLE export_file IN EXCLUSIVE MODE",
    )
    .await
    .expect("hold");

    let kick = http
        .get(format!("{base_a}/$export"))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(kick.status(), 202);
    let status_path = kick.headers()["content-location"]
        .to_str()
        .expect("url")
        .trim_start_matches(&base_a)
        .to_owned();
    let district = json!({"resourceType": "SearchParameter", "url":
        "https://passerelle.example.fr/fhir/SearchParameter/test-canton",
        "name": "Canton", "status": "active", "description": "The canton of the address",
        "code": "test-canton", "base": ["Patient"], "type": "string",
        "expression": "Patient.address.district"});
    assert_eq!(post(&base_a, district).await, 201);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let jobs = background_jobs(&watcher).await;
        if jobs.len() == 2 && jobs.iter().all(|j| j.3) {
            break;
        }
        assert!(Instant::now() < deadline, "both jobs leased by A: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The other instance is up while A holds both jobs: it takes them once A's
    // leases expire.
    let port_b = free_port();
    let b = spawn_on_database(&url, port_b, &lease);
    wait_ready(&http, port_b).await;
    a.kill().expect("SIGKILL");
    a.wait().expect("reaped");
    hold.commit().await.expect("release");
    let base_b = format!("http://127.0.0.1:{port_b}/fhir");
    let deadline = Instant::now() + Duration::from_secs(30);
    let manifest = loop {
        let status = http
            .get(format!("{base_b}{status_path}"))
            .send()
            .await
            .expect("status");
        match status.status().as_u16() {
            200 => break status.json::<serde_json::Value>().await.expect("manifest"),
            202 => {}
            other => panic!(
                "export status {other}: {}",
                status.text().await.unwrap_or_default()
            ),
        }
        assert!(Instant::now() < deadline, "the export finished by B");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let patients: i64 = manifest["output"]
        .as_array()
        .expect("output")
        .iter()
        .filter(|o| o["type"] == "Patient")
        .filter_map(|o| o["count"].as_i64())
        .sum();
    assert_eq!(patients, 30, "{manifest}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let jobs = background_jobs(&watcher).await;
        if jobs.iter().all(|j| j.1 == "done") {
            assert_eq!(
                jobs.iter().map(|j| (j.0.as_str(), j.2)).collect::<Vec<_>>(),
                [("export", 2), ("reindex", 2)],
                "each taken up again once"
            );
            break;
        }
        assert!(Instant::now() < deadline, "both jobs done: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let found: serde_json::Value = http
        .get(format!(
            "{base_b}/Patient?test-canton=Canton-1&_summary=count"
        ))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("bundle");
    assert_eq!(
        found["total"], 10,
        "the patients written before the parameter are indexed"
    );
    terminate(b);
}
