//! `cargo bench --bench passerelle -- subscriptions`: with 0, 1, 100 and 10,000 active R4
//! subscriptions (one per patient, `Encounter?patient=…&status=finished`, as GP
//! software would file them), the write throughput of Encounters that match none
//! and that each match one subscription, and the latency from the HTTP response of
//! a matching write to the callback's arrival at a listener in this process.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{run_phase, start_server, start_writer, Arrivals, Connection, Listener, Phase};
use passerelle::server::{self, DatabaseChoice, StartError};

pub struct SubscriptionBenchOptions {
    pub database: DatabaseChoice,
    /// Subscription counts to measure (0 is the baseline).
    pub counts: Vec<usize>,
    /// Writes per throughput phase.
    pub writes: usize,
    /// Matching writes timed one at a time for the latency.
    pub events: usize,
    pub concurrency: usize,
}

/// An outpatient Encounter: what is measured here is subscription matching
/// alone; the stays' workflow has its own bench (`workflow`).
fn encounter(id: &str, patient: usize, status: &str) -> String {
    json!({
        "resourceType": "Encounter", "id": id, "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/p{patient}")},
        "serviceProvider": {"reference": "Organization/chu"},
        "period": {"start": "2026-11-20T08:00:00+01:00"}
    })
    .to_string()
}

/// Creates one Encounter with a PUT.
async fn put_encounter(
    conn: &mut Connection,
    id: &str,
    patient: usize,
    status: &str,
) -> Result<(), String> {
    let body = encounter(id, patient, status);
    let reply = conn
        .send(
            "PUT",
            &format!("/fhir/Encounter/{id}"),
            Some(body.as_bytes()),
        )
        .await?;
    if reply.status == 201 {
        Ok(())
    } else {
        Err(format!("PUT answered {}", reply.status))
    }
}

/// PUTs `total` Encounters (`tag`-prefixed ids, patients round-robin over
/// `patients`) with `concurrency` clients.
async fn writes(
    name: &'static str,
    addr: std::net::SocketAddr,
    total: usize,
    concurrency: usize,
    patients: usize,
    tag: &'static str,
    status: &'static str,
) -> Result<Phase, String> {
    run_phase(name, total, concurrency, move |counter| async move {
        let mut conn = Connection::open(addr).await?;
        let mut latencies = Vec::new();
        while let Some(i) = counter.next() {
            let id = format!("{tag}-{i}");
            let t = Instant::now();
            put_encounter(&mut conn, &id, i % patients.max(1), status).await?;
            latencies.push(t.elapsed());
        }
        Ok(latencies)
    })
    .await
}

/// Matching writes one at a time, each timed from its HTTP response to the
/// arrival of its callback.
async fn latency(
    addr: std::net::SocketAddr,
    arrivals: &Arrivals,
    events: usize,
    patients: usize,
) -> Result<Phase, String> {
    let mut conn = Connection::open(addr).await?;
    let mut latencies = Vec::with_capacity(events);
    let started = Instant::now();
    for i in 0..events {
        let id = format!("l-{i}");
        let write = put_encounter(&mut conn, &id, i % patients, "finished");
        latencies.push(arrivals.time(&id, write).await?);
    }
    latencies.sort_unstable();
    Ok(Phase {
        name: "write response -> callback received",
        wall: started.elapsed(),
        latencies,
    })
}

struct Row {
    subscriptions: usize,
    unmatched: Phase,
    /// Matching writes while no worker delivers: the write path with its outbox.
    matched_outbox: Phase,
    /// Matching writes while the workers deliver on the same cores.
    matched_live: Phase,
    latency: Option<Phase>,
}

async fn measure(options: &SubscriptionBenchOptions, count: usize) -> Result<Row, StartError> {
    let err = StartError::Database;
    let database = server::open_bench_database(&options.database, options.concurrency + 8).await?;
    // Callbacks carry the Encounter (full-resource R4 payload): noted by its id.
    let listener = Listener::start(|v| v["id"].as_str().map(str::to_owned)).await?;
    let arrivals = listener.arrivals.clone();
    let hook = format!("{}/hook", listener.base);

    // An instance that writes events but does not deliver them.
    let writer = start_writer(&database).await?;
    let addr = writer.addr;
    run_phase("subscriptions (HTTP POST)", count, options.concurrency, |counter| {
        let hook = hook.clone();
        async move {
            let mut conn = Connection::open(addr).await?;
            while let Some(k) = counter.next() {
                let body = json!({
                    "resourceType": "Subscription", "status": "requested", "reason": "bench",
                    "criteria": format!("Encounter?patient=Patient/p{k}&status=finished"),
                    "channel": {"type": "rest-hook", "endpoint": hook, "payload": "application/fhir+json"}
                })
                .to_string();
                let reply = conn.send("POST", "/fhir/Subscription", Some(body.as_bytes())).await?;
                if reply.status != 201 {
                    return Err(format!("Subscription POST answered {}", reply.status));
                }
            }
            Ok(Vec::new())
        }
    })
    .await
    .map_err(err)?;
    // What autovacuum does within a minute of such a change (the tables' analyse
    // thresholds are low): without it, the writes below would be timed against
    // plans made for an empty subscription table.
    let client = database.pool.get().await.map_err(|e| err(e.to_string()))?;
    client
        .batch_execute("ANALYZE subscription, subscription_key")
        .await
        .map_err(|e| err(e.to_string()))?;
    drop(client);
    let (n, clients, patients) = (options.writes, options.concurrency, count.max(1));
    let unmatched = writes("no match", addr, n, clients, patients, "u", "in-progress")
        .await
        .map_err(err)?;
    let matched_outbox = writes(
        "matching, outbox only",
        addr,
        n,
        clients,
        patients,
        "m",
        "finished",
    )
    .await
    .map_err(err)?;
    writer.stop();

    // The same database with delivering workers: the backlog first.
    let bench = start_server(&database).await?;
    let addr = bench.addr;
    let expected = if count == 0 { 0 } else { n };
    arrivals.drained(expected).await;
    let matched_live = writes(
        "matching, delivering",
        addr,
        n,
        clients,
        patients,
        "d",
        "finished",
    )
    .await
    .map_err(err)?;
    let latency = if count == 0 {
        None
    } else {
        arrivals.drained(2 * n).await;
        Some(
            latency(addr, &arrivals, options.events, patients)
                .await
                .map_err(err)?,
        )
    };
    drop(listener);
    bench.stop();
    database.close().await;
    Ok(Row {
        subscriptions: count,
        unmatched,
        matched_outbox,
        matched_live,
        latency,
    })
}

pub async fn run(options: SubscriptionBenchOptions) -> Result<String, StartError> {
    let mut rows = Vec::new();
    for &count in &options.counts {
        eprintln!("measuring with {count} subscriptions…");
        rows.push(measure(&options, count).await?);
    }
    let baseline = rows.iter().find(|r| r.subscriptions == 0);
    let mut report = format!(
        "Passerelle bench-subscriptions: {} writes per phase, {} clients, {} latency samples, {} cores\n",
        options.writes,
        options.concurrency,
        options.events,
        std::thread::available_parallelism().map_or(0, |p| p.get()),
    );
    report.push_str(
        "| subscriptions | writes/s matching none (p50 / p99 ms) | writes/s each matching one, outbox only | same, deliveries running | callback latency p50 / p99 ms |\n|---|---|---|---|---|\n",
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for r in &rows {
        let cell = |p: &Phase, base: Option<&Phase>| {
            let ratio = base.map_or(String::new(), |b| {
                format!(", {:.2}×", p.per_second() / b.per_second())
            });
            format!(
                "{:.0} ({:.1} / {:.1}{ratio})",
                p.per_second(),
                ms(p.percentile(0.5)),
                ms(p.percentile(0.99))
            )
        };
        let latency = r.latency.as_ref().map_or(String::from("-"), |l| {
            format!(
                "{:.1} / {:.1}",
                ms(l.percentile(0.5)),
                ms(l.percentile(0.99))
            )
        });
        report.push_str(&format!(
            "| {} | {} | {} | {} | {latency} |\n",
            r.subscriptions,
            cell(&r.unmatched, baseline.map(|b| &b.unmatched)),
            cell(&r.matched_outbox, baseline.map(|b| &b.matched_outbox)),
            cell(&r.matched_live, baseline.map(|b| &b.matched_live)),
        ));
    }
    Ok(report)
}
