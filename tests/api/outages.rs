//! Database outages: a PostgreSQL cluster of the test's own, stopped and started
//! under a running server. Requests fail fast with 503 and `Retry-After`, the
//! server is not ready, and it recovers by itself when the database is back:
//! what was acknowledged is still there and notifications resume.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::receiver::Receiver;
use crate::subscriptions::r4_subscription;
use crate::support::{json_of, outcome_of, test_options, TestServer};
use passerelle::server::{self, DatabaseChoice};
use passerelle::store::embedded::Cluster;

/// The embedded cluster of a test of its own, migrated, under the target folder.
async fn own_database(name: &str) -> server::Database {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
    let choice = DatabaseChoice::Embedded(dir);
    server::open_database(&choice, passerelle::store::pool::PoolSettings::sized(1))
        .await
        .expect("an embedded cluster of the test's own")
}

async fn blocking(cluster: std::sync::Arc<Cluster>, work: fn(&Cluster)) {
    tokio::task::spawn_blocking(move || work(&cluster))
        .await
        .expect("cluster command");
}

/// The status of `/health/{probe}`.
async fn health(s: &TestServer, probe: &str) -> u16 {
    let root = s.base.trim_end_matches("/fhir");
    let resp = s.http.get(format!("{root}/health/{probe}")).send().await;
    resp.expect("health probe").status().as_u16()
}

/// The next callback whose body mentions `id`, within 20 s.
async fn notified_of(receiver: &Receiver, id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match receiver.next(left).await {
            Some(callback) if String::from_utf8_lossy(&callback.body).contains(id) => return true,
            Some(_) => continue,
            None => return false,
        }
    }
    false
}

#[tokio::test]
async fn a_stopped_database_gives_quick_503s_and_the_server_recovers_when_it_returns() {
    let database = own_database("outage").await;
    let cluster = database.cluster.clone().expect("embedded cluster");
    let mut options = test_options();
    options.limits.pool_timeout = Duration::from_secs(2);
    let s = TestServer::start_on(database.config.clone(), options).await;
    let gp = Receiver::start().await;
    json_of(
        s.post_json("Subscription", &r4_subscription("Patient?", &gp.url()))
            .await,
        201,
    )
    .await;
    let before = s
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Avant"}]}))
        .await;
    assert!(
        notified_of(&gp, &before).await,
        "notified before the outage"
    );

    blocking(cluster.clone(), Cluster::stop).await;

    let asked = Instant::now();
    let read = s.get(&format!("Patient/{before}")).await;
    assert_eq!(read.status(), 503);
    assert!(
        read.headers().get("retry-after").is_some(),
        "Retry-After on 503"
    );
    let outcome = outcome_of(read, 503).await;
    assert_eq!(outcome["issue"][0]["code"], "transient");
    let write = s
        .post_json(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Pendant"}]}),
        )
        .await;
    assert_eq!(write.status(), 503);
    assert!(write.headers().get("retry-after").is_some());
    let search = s.get("Patient?family=Avant").await;
    assert_eq!(search.status(), 503);
    assert_eq!(
        health(&s, "ready").await,
        503,
        "not ready while the database is down"
    );
    assert_eq!(health(&s, "live").await, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "five requests answered within a bound, not hung: {:?}",
        asked.elapsed()
    );

    blocking(cluster.clone(), |c| {
        c.ensure_running().expect("start the cluster again");
    })
    .await;

    let back = Instant::now();
    loop {
        let read = s.get(&format!("Patient/{before}")).await;
        if read.status() == 200 {
            break;
        }
        assert_eq!(read.status(), 503, "only 503 while recovering");
        assert!(
            back.elapsed() < Duration::from_secs(15),
            "recovered within 15 s of the database's return"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(health(&s, "ready").await, 200);
    let found = json_of(s.get("Patient?family=Pendant").await, 200).await;
    assert_eq!(found["total"], 0, "the write refused with 503 left nothing");
    let after = s
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Apres"}]}))
        .await;
    assert!(
        notified_of(&gp, &after).await,
        "notifications resume after the outage"
    );
    drop(s);
    database.close().await;
}

#[tokio::test]
async fn an_exhausted_pool_answers_503_after_a_bounded_wait() {
    let database = own_database("exhausted").await;
    let mut options = test_options();
    options.limits.pool_timeout = Duration::from_millis(500);
    let s = TestServer::start_on(database.config.clone(), options).await;
    // The server's pool has 8 connections: take them all.
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(s.pool.get().await.expect("a connection"));
    }
    let asked = Instant::now();
    let read = s.get("Patient?family=Plein").await;
    assert_eq!(read.status(), 503);
    assert_eq!(
        read.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let outcome = outcome_of(read, 503).await;
    assert!(
        outcome["issue"][0]["diagnostics"]
            .as_str()
            .is_some_and(|d| d.contains("in use")),
        "{outcome}"
    );
    assert!(asked.elapsed() < Duration::from_secs(5), "bounded wait");
    drop(held);
    json_of(s.get("Patient?family=Plein").await, 200).await;
    drop(s);
    database.close().await;
}

/// The postmaster of the server a connection of `pool` talks to (its backend's
/// parent process), if one answers.
async fn postmaster_of(pool: &deadpool_postgres::Pool) -> Option<i32> {
    let client = pool.get().await.ok()?;
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .ok()?
        .get(0);
    let status = std::fs::read_to_string(format!("/proc/{backend}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|p| p.trim().parse().ok())
}

#[tokio::test]
async fn the_embedded_cluster_is_started_again_when_its_postmaster_dies() {
    let database = own_database("postmaster").await;
    let watchdog = database.keep_cluster_running().expect("embedded cluster");
    let s = TestServer::start_on(database.config.clone(), test_options()).await;
    let id = s
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Survit"}]}))
        .await;
    let postmaster = postmaster_of(&s.pool).await.expect("the postmaster");
    // SAFETY: killing a process this test's cluster started.
    unsafe {
        libc::kill(postmaster, libc::SIGKILL);
    }
    let killed = Instant::now();
    loop {
        // A pooled backend may answer once more before it sees its postmaster
        // gone: back means a new postmaster, then the data read through it.
        let restarted = postmaster_of(&s.pool)
            .await
            .is_some_and(|p| p != postmaster);
        if restarted && s.get(&format!("Patient/{id}")).await.status() == 200 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the cluster is back within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    watchdog.abort();
    drop(s);
    database.close().await;
}

/// The topology of a hospital: two instances behind nginx (`deploy/nginx.conf`)
/// on one PostgreSQL, which stops and comes back: through the proxy, 503 with
/// `Retry-After` while it is down, then both instances serve again by themselves.
#[tokio::test]
async fn two_instances_behind_nginx_ride_out_a_database_restart() {
    use crate::nginx::{nginx, start_nginx};
    use crate::proxy::server_trusting;
    let Some(binary) = nginx() else {
        return;
    };
    let database = own_database("topology").await;
    let cluster = database.cluster.clone().expect("embedded cluster");
    let one = server_trusting(database.config.clone(), "127.0.0.1").await;
    let two = server_trusting(database.config.clone(), "127.0.0.1").await;
    let proxy = start_nginx(&binary, &[one.authority(), two.authority()]).await;
    let public = format!("http://127.0.0.1:{}/fhir", proxy.port);
    let http = reqwest::Client::new();
    let create = |family: &str| {
        http.post(format!("{public}/Patient"))
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Patient", "name": [{"family": family}]}).to_string())
            .send()
    };
    let before = create("Avant").await.expect("create");
    assert_eq!(before.status(), 201);
    let before: serde_json::Value = before.json().await.expect("created");
    let read_path = format!("{public}/Patient/{}", before["id"].as_str().expect("id"));

    blocking(cluster.clone(), Cluster::stop).await;
    let asked = Instant::now();
    let read = http.get(&read_path).send().await.expect("read");
    assert_eq!(read.status(), 503);
    assert!(read.headers().get("retry-after").is_some());
    assert_eq!(create("Pendant").await.expect("create").status(), 503);
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );

    blocking(cluster.clone(), |c| {
        c.ensure_running().expect("start the cluster again");
    })
    .await;
    let back = Instant::now();
    // Both instances (nginx alternates between them) serve again.
    let mut served = 0;
    while served < 4 {
        let status = http.get(&read_path).send().await.expect("read").status();
        served = if status == 200 { served + 1 } else { 0 };
        assert!(
            back.elapsed() < Duration::from_secs(20),
            "recovered within 20 s"
        );
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(create("Apres").await.expect("create").status(), 201);
    for s in [&one, &two] {
        let found = json_of(s.get("Patient?family=Apres,Pendant,Avant").await, 200).await;
        assert_eq!(
            found["total"], 2,
            "each instance sees both writes, not the refused one"
        );
    }
    drop(proxy);
    drop((one, two));
    database.close().await;
}
