//! `cargo bench --bench passerelle -- workflow`: the discharge workflow at scale.
//! A population of patients, each with a GP reachable through a PractitionerRole's
//! Endpoint (the server keeps a standing Subscription for each pair), then: the
//! write throughput of Encounter updates to `finished` for stays (each one a
//! discharge: declaration, notification request, delivery) beside the same
//! updates of outpatient Encounters (no workflow); and the latency from the HTTP
//! response of a discharge to the arrival of the GP's callback at a listener in
//! this process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{run_phase, start_server, start_writer, Arrivals, Connection, Listener, Phase};
use passerelle::server::{self, DatabaseChoice, StartError};

pub struct WorkflowBenchOptions {
    pub database: DatabaseChoice,
    pub patients: usize,
    /// Encounter updates per throughput phase.
    pub writes: usize,
    /// Discharges timed one at a time for the latency.
    pub events: usize,
    pub concurrency: usize,
    /// Members of the Group followed as a population (none: no such phase).
    pub population: usize,
}

/// The event and the stay of a notification request: `SOR Encounter/l-3`.
fn event_of(request: &Value) -> Option<String> {
    let code = request["extension"][0]["valueCodeableConcept"]["coding"][0]["code"].as_str()?;
    let stay = request["encounter"]["reference"].as_str()?;
    Some(format!("{code} {stay}"))
}

/// GPs: one for ten patients.
fn gps(patients: usize) -> usize {
    (patients / 10).max(1)
}

/// The population, in load order: each GP's Endpoint, Practitioner and
/// PractitionerRole, then the patients.
fn population(patients: usize, hook: &str) -> Vec<Value> {
    let mut resources = Vec::with_capacity(3 * gps(patients) + patients);
    for g in 0..gps(patients) {
        resources.push(json!({"resourceType": "Endpoint", "id": format!("ep{g}"), "status": "active",
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
            "payloadType": [{"text": "FHIR"}], "address": format!("{hook}/gp{g}")}));
        resources.push(json!({"resourceType": "Practitioner", "id": format!("gp{g}"),
            "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": format!("{}", 10_000_000_000u64 + g as u64)}]}));
        resources.push(
            json!({"resourceType": "PractitionerRole", "id": format!("role{g}"), "active": true,
            "practitioner": {"reference": format!("Practitioner/gp{g}")},
            "endpoint": [{"reference": format!("Endpoint/ep{g}")}]}),
        );
    }
    for p in 0..patients {
        resources.push(json!({"resourceType": "Patient", "id": format!("p{p}"),
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": format!("{}", 1_700_000_000_000u64 + p as u64)}],
            "generalPractitioner": [{"reference": format!("Practitioner/gp{}", p % gps(patients))}]}));
    }
    resources
}

fn encounter(id: &str, patient: usize, class: &str, status: &str) -> String {
    let mut e = json!({
        "resourceType": "Encounter", "id": id, "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class},
        "subject": {"reference": format!("Patient/p{patient}")},
        "serviceProvider": {"reference": "Organization/chu"},
        "period": {"start": "2026-11-20T08:00:00+01:00"}
    });
    if status == "finished" {
        e["period"]["end"] = json!("2026-11-27T18:00:00+01:00");
        e["hospitalization"] = json!({"dischargeDisposition": {"text": "Retour à domicile"}});
    }
    e.to_string()
}

async fn put(conn: &mut Connection, path: &str, body: &str) -> Result<(), String> {
    let reply = conn.send("PUT", path, Some(body.as_bytes())).await?;
    match reply.status {
        200 | 201 => Ok(()),
        other => Err(format!("PUT {path} answered {other}")),
    }
}

/// PUTs `total` Encounters `{tag}-{i}` of `class` in `status`, patients round
/// robin, with `concurrency` clients.
async fn encounters(
    name: &'static str,
    addr: SocketAddr,
    options: &WorkflowBenchOptions,
    tag: &'static str,
    class: &'static str,
    status: &'static str,
) -> Result<Phase, String> {
    let patients = options.patients;
    run_phase(
        name,
        options.writes,
        options.concurrency,
        move |counter| async move {
            let mut conn = Connection::open(addr).await?;
            let mut latencies = Vec::new();
            while let Some(i) = counter.next() {
                let id = format!("{tag}-{i}");
                let body = encounter(&id, i % patients, class, status);
                let t = Instant::now();
                put(&mut conn, &format!("/fhir/Encounter/{id}"), &body).await?;
                latencies.push(t.elapsed());
            }
            Ok(latencies)
        },
    )
    .await
}

/// Updates to `finished` of outpatient Encounters (no workflow) and of stays
/// (discharges), each Encounter first written in progress; `tags` name the ids.
async fn phases(
    addr: SocketAddr,
    o: &WorkflowBenchOptions,
    [outpatient, stays]: [&'static str; 2],
) -> Result<(Phase, Phase), String> {
    encounters(
        "outpatient, in progress",
        addr,
        o,
        outpatient,
        "AMB",
        "in-progress",
    )
    .await?;
    let without = encounters(
        "outpatient -> finished (no workflow)",
        addr,
        o,
        outpatient,
        "AMB",
        "finished",
    )
    .await?;
    encounters(
        "stays admitted (ADM to the GP)",
        addr,
        o,
        stays,
        "IMP",
        "in-progress",
    )
    .await?;
    let with = encounters(
        "stays -> finished (SOR to the GP)",
        addr,
        o,
        stays,
        "IMP",
        "finished",
    )
    .await?;
    Ok((without, with))
}

/// Discharges one at a time (each stay admitted first), each timed from the
/// discharge's HTTP response to the arrival of its SOR at the GP.
async fn latency(
    addr: SocketAddr,
    arrivals: &Arrivals,
    options: &WorkflowBenchOptions,
) -> Result<Phase, String> {
    let mut conn = Connection::open(addr).await?;
    let mut latencies = Vec::with_capacity(options.events);
    let started = Instant::now();
    for i in 0..options.events {
        let id = format!("l-{i}");
        let patient = (i * 7919) % options.patients;
        let path = format!("/fhir/Encounter/{id}");
        put(
            &mut conn,
            &path,
            &encounter(&id, patient, "IMP", "in-progress"),
        )
        .await?;
        let discharge = encounter(&id, patient, "IMP", "finished");
        let write = put(&mut conn, &path, &discharge);
        latencies.push(arrivals.time(&format!("SOR Encounter/{id}"), write).await?);
    }
    latencies.sort_unstable();
    Ok(Phase {
        name: "discharge response -> GP callback received",
        wall: started.elapsed(),
        latencies,
    })
}

/// A population follow-up of the first `members` patients: the Group, then the
/// population's plan written active (a plan made for each member, her GP
/// following it), then put on hold (every member plan following). Each write
/// timed whole.
async fn population_follow_up(addr: SocketAddr, members: usize) -> Result<String, String> {
    let mut conn = Connection::open(addr).await?;
    let member: Vec<Value> = (0..members)
        .map(|p| json!({"entity": {"reference": format!("Patient/p{p}")}}))
        .collect();
    let group = json!({"resourceType": "Group", "id": "followed", "type": "person",
        "actual": true, "member": member});
    put(&mut conn, "/fhir/Group/followed", &group.to_string()).await?;
    let plan = |status: &str| {
        json!({"resourceType": "CarePlan", "id": "followed-plan", "status": status,
            "intent": "plan", "subject": {"reference": "Group/followed"},
            "activity": [{"detail": {"status": "scheduled", "description": "Pesée quotidienne"}}]})
        .to_string()
    };
    let mut timed = Vec::new();
    for status in ["active", "on-hold"] {
        let t = Instant::now();
        put(&mut conn, "/fhir/CarePlan/followed-plan", &plan(status)).await?;
        timed.push(t.elapsed().as_secs_f64());
    }
    Ok(format!(
        "population follow-up of {members}: plans made {:.2} s ({:.0} plans/s), put on hold {:.2} s ({:.0} plans/s)",
        timed[0],
        members as f64 / timed[0],
        timed[1],
        members as f64 / timed[1],
    ))
}

pub async fn run(options: WorkflowBenchOptions) -> Result<String, StartError> {
    let err = StartError::Database;
    let database = server::open_bench_database(&options.database, options.concurrency + 8).await?;
    let listener = Listener::start(event_of).await?;
    let (arrivals, hook) = (listener.arrivals.clone(), listener.base.clone());
    let bench = start_server(&database).await?;
    let addr = bench.addr;

    let resources = Arc::new(population(options.patients, &hook));
    let gp_records = 3 * gps(options.patients);
    // The GPs first (the patients' standing Subscriptions need their endpoints).
    for (name, range) in [
        ("GPs with endpoints (HTTP PUT)", 0..gp_records),
        (
            "patients, standing subscriptions (HTTP PUT)",
            gp_records..resources.len(),
        ),
    ] {
        let resources = resources.clone();
        let first = range.start;
        let phase = run_phase(name, range.len(), options.concurrency, move |counter| {
            let resources = resources.clone();
            async move {
                let mut conn = Connection::open(addr).await?;
                let mut latencies = Vec::new();
                while let Some(i) = counter.next() {
                    let r = &resources[first + i];
                    let path = format!(
                        "/fhir/{}/{}",
                        r["resourceType"].as_str().unwrap_or_default(),
                        r["id"].as_str().unwrap_or_default()
                    );
                    let t = Instant::now();
                    put(&mut conn, &path, &r.to_string()).await?;
                    latencies.push(t.elapsed());
                }
                Ok(latencies)
            }
        })
        .await
        .map_err(err)?;
        eprintln!("{}", phase.line());
    }
    crate::common::vacuum_analyze(&database).await?;

    // First on an instance that writes events and leaves their delivery to
    // others (the write path with its outbox), then with deliveries running on
    // the same two cores.
    bench.stop();
    let writer = start_writer(&database).await?;
    let outbox = phases(writer.addr, &options, ["a1", "s1"])
        .await
        .map_err(err)?;
    writer.stop();
    let bench = start_server(&database).await?;
    let addr = bench.addr;
    arrivals.drained(2 * options.writes).await;
    let delivering = phases(addr, &options, ["a2", "s2"]).await.map_err(err)?;
    arrivals.drained(4 * options.writes).await;
    let latency = latency(addr, &arrivals, &options).await.map_err(err)?;
    let population = match options.population.min(options.patients) {
        0 => String::new(),
        members => population_follow_up(addr, members).await.map_err(err)?,
    };
    drop(listener);
    bench.stop();
    database.close().await;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ratio = |(without, with): &(Phase, Phase)| with.per_second() / without.per_second();
    Ok(format!(
        "Passerelle bench-workflow: {} patients, {} GPs with endpoints, {} updates per phase, {} clients, {} cores\n\
         outbox only (deliveries on another instance):\n{}\n{}\nwith / without: {:.2}\n\
         deliveries running on the same cores:\n{}\n{}\nwith / without: {:.2}\n{}\nlatency p50 {:.1} ms, p99 {:.1} ms\n{}",
        options.patients,
        gps(options.patients),
        options.writes,
        options.concurrency,
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        outbox.0.line(),
        outbox.1.line(),
        ratio(&outbox),
        delivering.0.line(),
        delivering.1.line(),
        ratio(&delivering),
        latency.line(),
        ms(latency.percentile(0.5)),
        ms(latency.percentile(0.99)),
        population,
    ))
}
