//! `cargo bench --bench passerelle -- ceiling`: Passerelle's reads, searches and
//! creates as shares of what the database and the HTTP stack can do, measured in
//! one run on the same machine (issue #18): the database's ceiling is pgbench
//! running the server's own read statement, prepared, on the same Patients; the
//! HTTP floor is `GET /health/live`, a route that asks nothing of the database.

use std::sync::Arc;
use std::time::Instant;

use crate::common::{run_phase, Connection, Phase};
use crate::rest::patient;
use passerelle::server::{self, DatabaseChoice, StartError};

pub struct CeilingOptions {
    pub database: DatabaseChoice,
    /// Patients read and searched (written first with known ids).
    pub patients: usize,
    /// Requests timed per read-like phase.
    pub requests: usize,
    /// Patients created (POST) in the create phase.
    pub creates: usize,
    pub concurrency: usize,
    /// Every request recorded in the audit trail (the server's default).
    pub audit: bool,
}

/// The id of the `i`-th Patient.
fn id(i: usize) -> String {
    format!("bench-{i}")
}

/// The `i`-th Patient's INS, as `patient(i)` writes it.
fn identifier(i: usize) -> String {
    let p = patient(i);
    format!(
        "{}%7C{}",
        p["identifier"][0]["system"].as_str().unwrap_or_default(),
        p["identifier"][0]["value"].as_str().unwrap_or_default()
    )
}

/// GETs `path(i)` `total` times over `concurrency` connections.
async fn gets(
    name: &'static str,
    addr: std::net::SocketAddr,
    total: usize,
    concurrency: usize,
    path: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> Result<Phase, String> {
    run_phase(name, total, concurrency, |counter| {
        let path = path.clone();
        async move {
            let mut conn = Connection::open(addr).await?;
            let mut latencies = Vec::new();
            while let Some(i) = counter.next() {
                latencies.push(conn.timed_get(&path(i)).await?);
            }
            Ok(latencies)
        }
    })
    .await
}

/// The server's read by id (`store::read_latest`) as a pgbench script over the
/// same Patients.
fn pgbench_script(patients: usize) -> String {
    format!(
        "\\set n random(0, {})\n\
         SELECT v.res_type, v.res_id, v.version_id, v.last_updated, v.method, v.seq, (v.resource - 'resourceType')::text \
         FROM resource_version v WHERE v.res_type = 'Patient' AND v.res_id = 'bench-' || :n \
         ORDER BY v.version_id DESC LIMIT 1;\n",
        patients - 1
    )
}

/// Runs pgbench with `script`, `total` transactions over `concurrency` clients
/// and two threads, prepared; returns its transactions per second and the
/// latency average it reports.
fn pgbench(
    config: &tokio_postgres::Config,
    script: &str,
    total: usize,
    concurrency: usize,
) -> Result<(f64, f64), String> {
    let file = std::env::temp_dir().join(format!("passerelle-ceiling-{}.sql", std::process::id()));
    std::fs::write(&file, script).map_err(|e| e.to_string())?;
    let mut command = std::process::Command::new("pgbench");
    command.args(["-n", "-M", "prepared", "-j", "2"]);
    command.arg("-c").arg(concurrency.to_string());
    command
        .arg("-t")
        .arg((total / concurrency).max(1).to_string());
    command.arg("-f").arg(&file);
    match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => {
            command.arg("-h").arg(host);
        }
        Some(tokio_postgres::config::Host::Unix(path)) => {
            command.arg("-h").arg(path);
        }
        None => {}
    }
    if let Some(port) = config.get_ports().first() {
        command.arg("-p").arg(port.to_string());
    }
    command
        .arg("-U")
        .arg(config.get_user().unwrap_or("postgres"));
    command.arg(config.get_dbname().unwrap_or("passerelle_bench"));
    let output = command
        .output()
        .map_err(|e| format!("pgbench could not run ({e}): install postgresql-client"))?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let figure = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    match (figure("tps = "), figure("latency average = ")) {
        (Some(tps), Some(latency)) => Ok((tps, latency)),
        _ => Err(format!("pgbench said nothing readable: {text}")),
    }
}

/// This process's resident set in MiB (Linux; the server runs in it, beside
/// the bench's client).
fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// The largest resident set seen while it runs, sampled every 50 ms.
struct PeakResident {
    peak_kib: Arc<std::sync::atomic::AtomicU64>,
    sampler: tokio::task::JoinHandle<()>,
}

impl PeakResident {
    fn start() -> Self {
        let peak_kib = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let peak = peak_kib.clone();
        let sampler = tokio::spawn(async move {
            loop {
                if let Some(mib) = resident_mib() {
                    peak.fetch_max((mib * 1024.0) as u64, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        });
        PeakResident { peak_kib, sampler }
    }

    fn stop(self) -> f64 {
        self.sampler.abort();
        self.peak_kib.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
    }
}

pub async fn run(options: CeilingOptions) -> Result<String, StartError> {
    let err = |e: String| StartError::Database(e);
    let (n, c) = (options.patients.max(1), options.concurrency.max(1));
    let database = server::open_bench_database(&options.database, c).await?;
    let server = crate::common::start_guarded(
        &database,
        passerelle::delivery::Tuning::default(),
        passerelle::auth::AuthSetting::Unset,
        options.audit,
    )
    .await?;
    let addr = server.addr;

    let load = run_phase("Patients written (HTTP PUT)", n, c, |counter| async move {
        let mut conn = Connection::open(addr).await?;
        let mut latencies = Vec::new();
        while let Some(i) = counter.next() {
            let mut body = patient(i);
            body["id"] = id(i).into();
            let t = Instant::now();
            let reply = conn
                .send(
                    "PUT",
                    &format!("/fhir/Patient/{}", id(i)),
                    Some(body.to_string().as_bytes()),
                )
                .await?;
            latencies.push(t.elapsed());
            if reply.status != 201 && reply.status != 200 {
                return Err(format!("PUT answered {}", reply.status));
            }
        }
        Ok(latencies)
    })
    .await
    .map_err(err)?;
    crate::common::vacuum_analyze(&database).await?;
    let idle_before = resident_mib().unwrap_or(0.0);
    let peak = PeakResident::start();

    // Reads in a scrambled order (7919 is prime).
    let floor = gets(
        "HTTP floor (GET /health/live)",
        addr,
        options.requests,
        c,
        Arc::new(|_| "/health/live".to_owned()),
    )
    .await
    .map_err(err)?;
    let (ceiling_tps, ceiling_ms) =
        pgbench(&database.config, &pgbench_script(n), options.requests, c).map_err(err)?;
    let reads = gets(
        "reads by id (GET /fhir/Patient/{id})",
        addr,
        options.requests,
        c,
        Arc::new(move |i| format!("/fhir/Patient/{}", id((i * 7919) % n))),
    )
    .await
    .map_err(err)?;
    let searches = gets(
        "search by identifier (INS)",
        addr,
        options.requests / 2,
        c,
        {
            // Written before the phase: the client's work is not the server's.
            let paths: Vec<String> = (0..n)
                .map(|k| format!("/fhir/Patient?identifier={}", identifier(k)))
                .collect();
            Arc::new(move |i| paths[(i * 7919) % n].clone())
        },
    )
    .await
    .map_err(err)?;
    let creates = run_phase(
        "creates (HTTP POST)",
        options.creates,
        c,
        |counter| async move {
            let mut conn = Connection::open(addr).await?;
            let mut latencies = Vec::new();
            while let Some(i) = counter.next() {
                let body = patient(n + i).to_string();
                let t = Instant::now();
                conn.create("/fhir/Patient", body.as_bytes()).await?;
                latencies.push(t.elapsed());
            }
            Ok(latencies)
        },
    )
    .await
    .map_err(err)?;
    let peak = peak.stop();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let idle_after = resident_mib().unwrap_or(0.0);
    server.stop();
    database.close().await;

    let share = |p: &Phase| p.per_second() / ceiling_tps;
    Ok(format!(
        "Passerelle ceiling bench: {n} Patients, {c} concurrent clients, {} cores, audit {}\n{}\n\
         database ceiling (pgbench, the read statement prepared) {ceiling_tps:>9.0}/s   latency average {ceiling_ms:.2} ms\n\
         {}   share {:.2}\n{}   share {:.3}\n{}   share {:.3}\n{}   share {:.2}\n\
         resident set of the bench process (server and client): {idle_before:.0} MiB before the phases, {peak:.0} MiB at most during them, {idle_after:.0} MiB 2 s after",
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        if options.audit { "on" } else { "off" },
        load.line(),
        reads.line(),
        share(&reads),
        searches.line(),
        share(&searches),
        creates.line(),
        share(&creates),
        floor.line(),
        share(&floor),
    ))
}
