//! `passerelle bench`: create and read throughput over real HTTP against a real
//! database, beside the ceiling measured in the same run (the same reads as a
//! prepared SQL `SELECT` through the same pool).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::server::{self, DatabaseChoice, ServeOptions, StartError};
use crate::store;

pub struct BenchOptions {
    pub database: DatabaseChoice,
    pub resources: usize,
    pub concurrency: usize,
}

/// Latencies of one phase.
struct Phase {
    name: &'static str,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((self.latencies.len() as f64) * p).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn line(&self) -> String {
        format!(
            "{:<28} {:>10.0}/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ops in {:.2} s)",
            self.name,
            self.per_second(),
            self.percentile(0.50).as_secs_f64() * 1000.0,
            self.percentile(0.99).as_secs_f64() * 1000.0,
            self.latencies.len(),
            self.wall.as_secs_f64()
        )
    }
}

/// Runs `total` operations on `workers` tasks; `op(i)` performs operation i.
async fn run_phase<F, Fut>(
    name: &'static str,
    total: usize,
    workers: usize,
    op: F,
) -> Result<Phase, String>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let op = op.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, String>(latencies);
                }
                let t = Instant::now();
                op(i).await?;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    latencies.sort_unstable();
    Ok(Phase {
        name,
        wall: started.elapsed(),
        latencies,
    })
}

/// A plausible French patient, deterministic in `i`.
fn patient(i: usize) -> serde_json::Value {
    const FAMILY: &[&str] = &[
        "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand",
    ];
    const GIVEN: &[&str] = &[
        "Léa", "Louis", "Chloé", "Gabriel", "Manon", "Jules", "Camille", "Hugo",
    ];
    const CITY: &[(&str, &str)] = &[
        ("Lyon", "69003"),
        ("Rennes", "35000"),
        ("Albi", "81000"),
        ("Tulle", "19000"),
    ];
    let (city, postcode) = CITY[i % CITY.len()];
    json!({
        "resourceType": "Patient",
        "identifier": [{
            "system": "urn:oid:1.2.250.1.213.1.4.10",
            "value": format!("{:013}", 1_700_000_000_000u64 + i as u64),
        }],
        "active": true,
        "name": [{"family": FAMILY[i % FAMILY.len()], "given": [GIVEN[(i / 8) % GIVEN.len()]]}],
        "gender": if i.is_multiple_of(2) { "female" } else { "male" },
        "birthDate": format!("{}-{:02}-{:02}", 1930 + i % 80, 1 + i % 12, 1 + i % 28),
        "address": [{"line": [format!("{} rue de la République", 1 + i % 120)], "city": city, "postalCode": postcode, "country": "FR"}],
        "telecom": [{"system": "phone", "value": format!("06{:08}", i % 100_000_000)}],
    })
}

pub async fn run(options: BenchOptions) -> Result<String, StartError> {
    let db_err = |e: String| StartError::Database(e);
    let database = server::open_bench_database(&options.database, options.concurrency).await?;
    let serve = ServeOptions {
        listen: "127.0.0.1:0"
            .parse()
            .map_err(|_| db_err("bad address".into()))?,
        base_url: None,
        max_body_bytes: 16 << 20,
    };
    let listener = tokio::net::TcpListener::bind(serve.listen).await?;
    let addr = listener.local_addr()?;
    let app = crate::http::router(server::app_state(database.pool.clone(), &serve));
    let server_task = tokio::spawn(async move { axum::serve(listener, app).await });
    let base = format!("http://{addr}/fhir");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency)
        .build()
        .map_err(|e| db_err(e.to_string()))?;
    let n = options.resources;
    let ids: Arc<Vec<std::sync::OnceLock<String>>> =
        Arc::new((0..n).map(|_| std::sync::OnceLock::new()).collect());

    let (c, b, ids_w) = (client.clone(), base.clone(), ids.clone());
    let create = run_phase("create (HTTP POST)", n, options.concurrency, move |i| {
        let (c, b, ids) = (c.clone(), b.clone(), ids_w.clone());
        async move {
            let resp = c
                .post(format!("{b}/Patient"))
                .header("content-type", "application/fhir+json")
                .header("prefer", "return=minimal")
                .body(patient(i).to_string())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if resp.status() != 201 {
                return Err(format!("create answered {}", resp.status()));
            }
            let location = resp
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.split('/').rev().nth(2))
                .ok_or("no Location")?
                .to_owned();
            let _ = ids[i].set(location);
            Ok(())
        }
    })
    .await
    .map_err(db_err)?;

    // Reads in a scrambled order so that they do not follow insertion order.
    let order = move |i: usize| (i * 7919) % n;
    let (c, b, ids_r) = (client.clone(), base.clone(), ids.clone());
    let read = run_phase("read (HTTP GET by id)", n, options.concurrency, move |i| {
        let (c, b, ids) = (c.clone(), b.clone(), ids_r.clone());
        async move {
            let id = ids[order(i)].get().ok_or("missing id")?;
            let resp = c
                .get(format!("{b}/Patient/{id}"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if resp.status() != 200 {
                return Err(format!("read answered {}", resp.status()));
            }
            resp.bytes().await.map_err(|e| e.to_string())?;
            Ok(())
        }
    })
    .await
    .map_err(db_err)?;

    let (pool, ids_s) = (database.pool.clone(), ids.clone());
    let ceiling = run_phase(
        "ceiling (prepared SELECT)",
        n,
        options.concurrency,
        move |i| {
            let (pool, ids) = (pool.clone(), ids_s.clone());
            async move {
                let id = ids[order(i)].get().ok_or("missing id")?;
                let client = pool.get().await.map_err(|e| e.to_string())?;
                store::read_latest(&client, "Patient", id)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("not found")?;
                Ok(())
            }
        },
    )
    .await
    .map_err(db_err)?;

    server_task.abort();
    database.close().await;
    let ratio = read.per_second() / ceiling.per_second();
    Ok(format!(
        "Passerelle bench: {n} Patients, {} concurrent clients, {} cores\n{}\n{}\n{}\nHTTP reads / ceiling: {ratio:.2}",
        options.concurrency,
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        create.line(),
        read.line(),
        ceiling.line(),
    ))
}
