//! `cargo bench --bench passerelle -- rest`: create and read throughput over real HTTP against a real
//! database, beside the ceiling measured in the same run (the same reads as a
//! prepared SQL `SELECT` through the same pool).

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::json;

use crate::common::{run_phase, start_server, Connection};
use passerelle::server::{self, DatabaseChoice, StartError};
use passerelle::store;

pub struct BenchOptions {
    pub database: DatabaseChoice,
    pub resources: usize,
    /// How many times each resource is read (longer read phases, steadier figures).
    pub read_passes: usize,
    pub concurrency: usize,
}

/// A plausible French patient, deterministic in `i`.
pub fn patient(i: usize) -> serde_json::Value {
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
    let server = start_server(&database).await?;
    let addr = server.addr;
    let n = options.resources;
    let ids: Arc<Vec<OnceLock<String>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());

    let ids_w = ids.clone();
    let create = run_phase("create (HTTP POST)", n, options.concurrency, |counter| {
        let ids = ids_w.clone();
        async move {
            let mut conn = Connection::open(addr).await?;
            let mut latencies = Vec::new();
            while let Some(i) = counter.next() {
                let body = patient(i).to_string();
                let t = Instant::now();
                let id = conn.create("/fhir/Patient", body.as_bytes()).await?;
                latencies.push(t.elapsed());
                let _ = ids[i].set(id);
            }
            Ok(latencies)
        }
    })
    .await
    .map_err(db_err)?;

    // Reads in a scrambled order so that they do not follow insertion order (7919 is
    // prime: a permutation of 0..n unless n is a multiple of it).
    let order = move |i: usize| (i * 7919) % n;
    let ids_r = ids.clone();
    let reads = n * options.read_passes;
    let read = run_phase(
        "read (HTTP GET by id)",
        reads,
        options.concurrency,
        |counter| {
            let ids = ids_r.clone();
            async move {
                let mut conn = Connection::open(addr).await?;
                let mut latencies = Vec::new();
                while let Some(i) = counter.next() {
                    let path =
                        format!("/fhir/Patient/{}", ids[order(i)].get().ok_or("missing id")?);
                    latencies.push(conn.timed_get(&path).await?);
                }
                Ok(latencies)
            }
        },
    )
    .await
    .map_err(db_err)?;

    let ids_s = ids.clone();
    let pool = database.pool.clone();
    let ceiling = run_phase(
        "ceiling (prepared SELECT)",
        reads,
        options.concurrency,
        |counter| {
            let (ids, pool) = (ids_s.clone(), pool.clone());
            async move {
                let mut latencies = Vec::new();
                while let Some(i) = counter.next() {
                    let id = ids[order(i)].get().ok_or("missing id")?;
                    let t = Instant::now();
                    let client = pool.get().await.map_err(|e| e.to_string())?;
                    store::read_latest(&client, "Patient", id)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or("not found")?;
                    latencies.push(t.elapsed());
                }
                Ok(latencies)
            }
        },
    )
    .await
    .map_err(db_err)?;

    server.stop();
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
