//! `cargo bench --bench passerelle -- validation`: the profile validator's cost.
//! In this process, one thread: validations per second of the FR Core Patient
//! (INS) and Encounter examples, by the structural check alone and with their
//! profiles; then over HTTP, creates of the same Patients claiming the FR Core
//! INS profile beside the same Patients claiming none, on a server that knows
//! FR Core (the package of `--package`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::common::{bench_options, run_phase, start_options, Connection, Phase};
use passerelle::profile::ProfileRules;
use passerelle::server::{self, DatabaseChoice, StartError};

pub struct ValidationBenchOptions {
    pub database: DatabaseChoice,
    /// An FR Core package (folder or .tgz).
    pub package: PathBuf,
    /// Validations timed per resource and kind.
    pub validations: usize,
    /// Patients created per phase.
    pub writes: usize,
    pub concurrency: usize,
}

fn example(package: &Path, name: &str) -> Result<Value, String> {
    let path = package.join("example").join(name);
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| e.to_string())
}

/// An INS-NIR of the test authority with its key, distinct for each `i`.
fn ins(i: usize) -> String {
    let number = 1_800_175_000_000u64 + i as u64;
    format!("{number}{:02}", 97 - number % 97)
}

/// The FR Core Patient example as patient `i`, claiming its profile or not.
fn patient(template: &Value, i: usize, claimed: bool) -> String {
    let mut p = template.clone();
    if let Some(object) = p.as_object_mut() {
        object.remove("id");
        object.remove("text");
        if !claimed {
            object.remove("meta");
        }
    }
    p["identifier"][0]["value"] = json!(ins(i));
    p.to_string()
}

/// Validations per second of `check` on `resource`, timed over `n` runs.
fn rate(n: usize, mut check: impl FnMut() -> bool) -> Result<f64, String> {
    let started = Instant::now();
    for _ in 0..n {
        if !check() {
            return Err("a validation found errors".to_owned());
        }
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn creates(
    name: &'static str,
    addr: std::net::SocketAddr,
    options: &ValidationBenchOptions,
    template: Arc<Value>,
    offset: usize,
    claimed: bool,
) -> Result<Phase, String> {
    run_phase(name, options.writes, options.concurrency, move |counter| {
        let template = template.clone();
        async move {
            let mut conn = Connection::open(addr).await?;
            let mut latencies = Vec::new();
            while let Some(i) = counter.next() {
                let body = patient(&template, offset + i, claimed);
                let t = Instant::now();
                conn.create("/fhir/Patient", body.as_bytes()).await?;
                latencies.push(t.elapsed());
            }
            Ok(latencies)
        }
    })
    .await
}

pub async fn run(options: ValidationBenchOptions) -> Result<String, StartError> {
    let err = |e: String| StartError::Database(e);
    let loaded = passerelle::profile::package::read(&options.package).map_err(err)?;
    let profiles = ProfileRules::new(loaded);
    let mut patient_example =
        example(&options.package, "Patient-ExampleFRCorePatient001.json").map_err(err)?;
    // The published example's INS key is wrong (docs/validation.md).
    patient_example["identifier"][0]["value"] = json!("123456789012212");
    let encounter =
        example(&options.package, "Encounter-FRCoreEncounterExample.json").map_err(err)?;
    let n = options.validations;
    let mut lines = Vec::new();
    for (name, resource) in [
        ("FR Core Patient (INS)", &patient_example),
        ("FR Core Encounter", &encounter),
    ] {
        let base = rate(n, || passerelle::fhir::check_resource(resource).is_ok()).map_err(err)?;
        let full = rate(n, || profiles.check(resource, &[]).errors.is_empty()).map_err(err)?;
        lines.push(format!(
            "{name}: structure only {base:.0}/s, with its profile, extensions, invariants and identifiers {full:.0}/s"
        ));
    }

    let database = server::open_bench_database(&options.database, options.concurrency).await?;
    let mut serve = bench_options(
        passerelle::delivery::Tuning::default(),
        passerelle::auth::AuthSetting::Unset,
        true,
    );
    serve.rules.profiles = Arc::new(profiles);
    let server = start_options(&database, &serve).await?;
    let template = Arc::new(patient_example);
    let plain = creates(
        "create, no profile claimed",
        server.addr,
        &options,
        template.clone(),
        0,
        false,
    )
    .await
    .map_err(err)?;
    let profiled = creates(
        "create, claiming fr-core-patient-ins",
        server.addr,
        &options,
        template,
        options.writes,
        true,
    )
    .await
    .map_err(err)?;
    server.stop();
    database.close().await;
    Ok(format!(
        "Validation bench: {} validations per resource in one thread, {} creates per phase with {} clients, {} cores\n{}\n{}\n{}\nprofile-validated creates / plain creates: {:.2}",
        n,
        options.writes,
        options.concurrency,
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        lines.join("\n"),
        plain.line(),
        profiled.line(),
        profiled.per_second() / plain.per_second()
    ))
}
