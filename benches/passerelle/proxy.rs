//! `cargo bench --bench passerelle -- proxy`: reads by id, searches by identifier
//! and creates, straight to one instance, then through nginx (running
//! `deploy/nginx.conf`) in front of one and of two instances on the same
//! database. The instances run in this process with a pool each; the machine's
//! two cores are shared by nginx, the instances, PostgreSQL and the load.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::common::{run_phase, start_server, BenchServer, Connection, Phase};
use crate::rest::patient;
use passerelle::server::{self, Database, DatabaseChoice, StartError};
use passerelle::store::pool::PoolSettings;

#[path = "../../tests/api/nginx.rs"]
mod nginx;

pub struct ProxyBenchOptions {
    pub database: DatabaseChoice,
    pub patients: usize,
    /// Operations of each kind per topology.
    pub operations: usize,
    pub concurrency: usize,
}

/// Reads, searches and creates against `addr`: the three phases.
async fn measure(
    addr: SocketAddr,
    ids: &Arc<Vec<String>>,
    options: &ProxyBenchOptions,
) -> Result<[Phase; 3], String> {
    let n = ids.len();
    let ids_r = ids.clone();
    let read = run_phase(
        "read by id",
        options.operations,
        options.concurrency,
        |counter| {
            let ids = ids_r.clone();
            async move {
                let mut conn = Connection::open(addr).await?;
                let mut latencies = Vec::new();
                while let Some(i) = counter.next() {
                    let path = format!("/fhir/Patient/{}", ids[(i * 7919) % n]);
                    latencies.push(conn.timed_get(&path).await?);
                }
                Ok(latencies)
            }
        },
    )
    .await?;
    let search = run_phase(
        "search by identifier",
        options.operations,
        options.concurrency,
        |counter| async move {
            let mut conn = Connection::open(addr).await?;
            let mut latencies = Vec::new();
            while let Some(i) = counter.next() {
                let value = 1_700_000_000_000u64 + ((i * 7919) % n) as u64;
                let path =
                    format!("/fhir/Patient?identifier=urn:oid:1.2.250.1.213.1.4.10%7C{value:013}");
                latencies.push(conn.timed_get(&path).await?);
            }
            Ok(latencies)
        },
    )
    .await?;
    let writes = (options.operations / 4).max(1);
    let create = run_phase(
        "create",
        writes,
        options.concurrency,
        |counter| async move {
            let mut conn = Connection::open(addr).await?;
            let mut latencies = Vec::new();
            while let Some(i) = counter.next() {
                let body = patient(1_000_000 + i).to_string();
                let t = Instant::now();
                conn.create("/fhir/Patient", body.as_bytes()).await?;
                latencies.push(t.elapsed());
            }
            Ok(latencies)
        },
    )
    .await?;
    Ok([read, search, create])
}

/// The ids of the patients loaded.
async fn patient_ids(database: &Database) -> Result<Vec<String>, String> {
    let client = database.pool.get().await.map_err(|e| e.to_string())?;
    let rows = client
        .query(
            "SELECT res_id FROM resource WHERE res_type = 'Patient' ORDER BY res_id",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Another instance on the same database, with a pool of its own.
async fn second_instance(database: &Database, size: usize) -> Result<BenchServer, StartError> {
    let pool = server::pool_for(database.config.clone(), PoolSettings::sized(size))?;
    let other = Database {
        pool,
        config: database.config.clone(),
        cluster: None,
    };
    start_server(&other).await
}

pub async fn run(options: ProxyBenchOptions) -> Result<String, StartError> {
    let err = |e: String| StartError::Database(e);
    let Some(binary) = nginx::nginx() else {
        return Err(StartError::Config(
            "nginx is needed (apt-get install nginx)".into(),
        ));
    };
    let database = server::open_bench_database(&options.database, options.concurrency).await?;
    let one = start_server(&database).await?;
    let two = second_instance(&database, options.concurrency).await?;
    let n = options.patients;
    run_phase("load", n, options.concurrency, |counter| {
        let addr = one.addr;
        async move {
            let mut conn = Connection::open(addr).await?;
            let mut latencies = Vec::new();
            while let Some(i) = counter.next() {
                let t = Instant::now();
                conn.create("/fhir/Patient", patient(i).to_string().as_bytes())
                    .await?;
                latencies.push(t.elapsed());
            }
            Ok(latencies)
        }
    })
    .await
    .map_err(err)?;
    let ids = Arc::new(patient_ids(&database).await.map_err(err)?);
    crate::common::vacuum_analyze(&database).await?;

    let mut report = format!(
        "proxy: {n} patients, {} reads and searches and {} creates per topology, {} clients\n",
        options.operations,
        (options.operations / 4).max(1),
        options.concurrency
    );
    let upstream = |s: &BenchServer| s.addr.to_string();
    let topologies: [(&str, Vec<String>); 3] = [
        ("one instance, direct", vec![]),
        ("nginx, one instance", vec![upstream(&one)]),
        ("nginx, two instances", vec![upstream(&one), upstream(&two)]),
    ];
    let mut firsts = Vec::new();
    for (name, upstreams) in topologies {
        let proxy = match upstreams.is_empty() {
            true => None,
            false => Some(nginx::start_nginx(&binary, &upstreams).await),
        };
        let addr = proxy
            .as_ref()
            .map_or(one.addr, |p| SocketAddr::from(([127, 0, 0, 1], p.port)));
        let phases = measure(addr, &ids, &options).await.map_err(err)?;
        report.push_str(&format!("{name}\n"));
        for phase in &phases {
            report.push_str(&format!("  {}\n", phase.line()));
        }
        firsts.push(phases.map(|p| p.per_second()));
    }
    let ratio = |k: usize, t: usize| firsts[t][k] / firsts[0][k];
    report.push_str(&format!(
        "through nginx, one instance / direct: reads {:.2}, searches {:.2}, creates {:.2}\n\
         through nginx, two instances / direct: reads {:.2}, searches {:.2}, creates {:.2}\n",
        ratio(0, 1),
        ratio(1, 1),
        ratio(2, 1),
        ratio(0, 2),
        ratio(1, 2),
        ratio(2, 2),
    ));
    one.stop();
    two.stop();
    database.close().await;
    Ok(report)
}
