//! `cargo bench --bench passerelle -- search`: loads a synthetic coordination population over HTTP
//! (Organizations, Practitioners, Patients, Encounters, CareTeams, CarePlans,
//! ServiceRequests, Observations; every parameter indexed) and times a fixed list
//! of realistic searches against it.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use crate::common::{run_phase, Connection, Phase};
use passerelle::server::{self, DatabaseChoice, StartError};

pub struct SearchBenchOptions {
    pub database: DatabaseChoice,
    /// Patients; the other types are sized from it (about 5 resources per patient).
    pub patients: usize,
    pub concurrency: usize,
    /// Searches timed per query kind.
    pub queries: usize,
    /// Who gives the planner its statistics after the load.
    pub statistics: Statistics,
}

/// Who gives the planner its statistics after the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Statistics {
    /// `VACUUM ANALYZE` by the bench, as a settled database with autovacuum has
    /// them.
    Vacuum,
    /// The server's own analyzing (`PASSERELLE_ANALYZE_INTERVAL`), waited for:
    /// a database whose autovacuum is off.
    Server,
    /// Nobody: the statistics of the empty database (autovacuum off, and the
    /// server's analyzing turned off).
    None,
}

/// A deterministic pseudo-random number for `(i, salt)` (splitmix64).
fn mix(i: usize, salt: u64) -> u64 {
    let mut z = (i as u64).wrapping_add(salt.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn pick(i: usize, salt: u64, n: usize) -> usize {
    (mix(i, salt) % n.max(1) as u64) as usize
}

const FAMILY: &[&str] = &[
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
    "Moreau", "Simon", "Laurent", "Lefèvre", "Michel", "Garcia", "Fournier",
];
const GIVEN: &[&str] = &[
    "Léa", "Louis", "Chloé", "Gabriel", "Manon", "Jules", "Camille", "Hugo", "Jeanne", "Paul",
    "Inès", "Arthur",
];
const CITIES: &[&str] = &["Tulle", "Brive-la-Gaillarde", "Ussel", "Limoges"];
const INS: &str = "urn:oid:1.2.250.1.213.1.4.10";
const RPPS: &str = "https://rpps.esante.gouv.fr";

/// The sizes of the population for `patients` patients.
struct Sizes {
    organizations: usize,
    practitioners: usize,
    patients: usize,
    encounters: usize,
    care_teams: usize,
    care_plans: usize,
    service_requests: usize,
    observations: usize,
}

impl Sizes {
    fn for_patients(patients: usize) -> Sizes {
        Sizes {
            organizations: (patients / 400).max(5),
            practitioners: (patients / 10).max(10),
            patients,
            encounters: patients * 3 / 2,
            care_teams: patients / 2,
            care_plans: patients / 2,
            service_requests: patients * 3 / 4,
            observations: patients * 3 / 4,
        }
    }

    fn total(&self) -> usize {
        self.organizations
            + self.practitioners
            + self.patients
            + self.encounters
            + self.care_teams
            + self.care_plans
            + self.service_requests
            + self.observations
    }
}

fn nir(i: usize) -> String {
    format!("{}", 1_700_000_000_000u64 + i as u64)
}

/// The `n`-th resource of the population, in load order (referenced ones first).
fn resource(sizes: &Sizes, n: usize) -> Value {
    let mut i = n;
    let org = |k: usize| format!("Organization/org{k}");
    let pract = |k: usize| format!("Practitioner/pr{k}");
    let patient = |k: usize| format!("Patient/p{k}");
    let day = |k: usize, salt: u64| {
        format!(
            "2026-{:02}-{:02}",
            1 + pick(k, salt, 12),
            1 + pick(k, salt + 1, 28)
        )
    };
    if i < sizes.organizations {
        return json!({"resourceType":"Organization","id":format!("org{i}"),"active":true,
            "identifier":[{"system":"https://finess.esante.gouv.fr","value":format!("{:09}", 190_000_000 + i)}],
            "name":format!("Centre hospitalier {i}")});
    }
    i -= sizes.organizations;
    if i < sizes.practitioners {
        return json!({"resourceType":"Practitioner","id":format!("pr{i}"),"active":true,
            "identifier":[{"system":RPPS,"value":format!("{}", 10_000_000_000u64 + i as u64)}],
            "name":[{"family":FAMILY[pick(i, 1, FAMILY.len())],"given":[GIVEN[pick(i, 2, GIVEN.len())]]}]});
    }
    i -= sizes.practitioners;
    if i < sizes.patients {
        return json!({"resourceType":"Patient","id":format!("p{i}"),"active":true,
            "identifier":[{"system":INS,"value":nir(i)}],
            "name":[{"family":FAMILY[pick(i, 3, FAMILY.len())],"given":[GIVEN[pick(i, 4, GIVEN.len())]]}],
            "gender": if i.is_multiple_of(2) { "female" } else { "male" },
            "birthDate":format!("{}-{:02}-{:02}", 1930 + pick(i, 5, 80), 1 + pick(i, 6, 12), 1 + pick(i, 7, 28)),
            "generalPractitioner":[{"reference":pract(pick(i, 8, sizes.practitioners))}],
            "address":[{"city":CITIES[pick(i, 9, CITIES.len())],"country":"FR"}]});
    }
    i -= sizes.patients;
    if i < sizes.encounters {
        let start = day(i, 10);
        let finished = pick(i, 12, 10) < 8;
        let mut period = json!({"start": format!("{start}T09:00:00+01:00")});
        if finished {
            period["end"] = json!(format!("{start}T18:00:00+01:00"));
        }
        return json!({"resourceType":"Encounter","id":format!("e{i}"),
            "status": if finished { "finished" } else { "in-progress" },
            "class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code": if pick(i, 13, 3) == 0 { "AMB" } else { "IMP" }},
            "subject":{"reference":patient(pick(i, 14, sizes.patients))},
            "participant":[{"individual":{"reference":pract(pick(i, 15, sizes.practitioners))}}],
            "serviceProvider":{"reference":org(pick(i, 16, sizes.organizations))},
            "period":period});
    }
    i -= sizes.encounters;
    if i < sizes.care_teams {
        let members: Vec<Value> = (0..3 + pick(i, 17, 6))
            .map(
                |k| json!({"member":{"reference":pract(pick(i * 8 + k, 18, sizes.practitioners))}}),
            )
            .collect();
        return json!({"resourceType":"CareTeam","id":format!("ct{i}"),"status":"active",
            "subject":{"reference":patient(pick(i, 19, sizes.patients))},
            "period":{"start":day(i, 20)},"participant":members});
    }
    i -= sizes.care_teams;
    if i < sizes.care_plans {
        // A plan is created draft or active (`careplan-starts-draft-or-active`).
        return json!({"resourceType":"CarePlan","id":format!("cp{i}"),
            "status": if pick(i, 21, 4) == 0 { "draft" } else { "active" },"intent":"plan",
            "subject":{"reference":patient(pick(i, 22, sizes.patients))},
            "period":{"start":day(i, 23)},
            "careTeam":[{"reference":format!("CareTeam/ct{}", pick(i, 24, sizes.care_teams))}]});
    }
    i -= sizes.care_plans;
    if i < sizes.service_requests {
        return json!({"resourceType":"ServiceRequest","id":format!("sr{i}"),
            "status": if pick(i, 25, 3) == 0 { "completed" } else { "active" },"intent":"order",
            "code":{"coding":[{"system":"http://snomed.info/sct","code":"306206005","display":"Referral to service"}]},
            "subject":{"reference":patient(pick(i, 26, sizes.patients))},
            "requester":{"reference":pract(pick(i, 27, sizes.practitioners))},
            "performer":[{"reference":org(pick(i, 28, sizes.organizations))}],
            "authoredOn":day(i, 29)});
    }
    i -= sizes.service_requests;
    json!({"resourceType":"Observation","id":format!("o{i}"),"status":"final",
        "code":{"coding":[{"system":"http://loinc.org","code":"29463-7","display":"Body weight"}]},
        "subject":{"reference":patient(pick(i, 30, sizes.patients))},
        "effectiveDateTime":format!("{}T08:00:00+01:00", day(i, 31)),
        "valueQuantity":{"value": 50 + pick(i, 32, 50),"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}})
}

/// A search of the list: the URL of its i-th run.
type Query = Box<dyn Fn(usize) -> String + Send + Sync>;

/// The searches timed, each a function of the iteration number.
fn queries(sizes: &Sizes) -> Vec<(&'static str, Query)> {
    let (patients, practitioners, organizations) =
        (sizes.patients, sizes.practitioners, sizes.organizations);
    vec![
        (
            "Patient by INS identifier",
            Box::new(move |i| {
                format!(
                    "/fhir/Patient?identifier={INS}%7C{}",
                    nir(pick(i, 40, patients))
                )
            }),
        ),
        (
            "CareTeam by participant",
            Box::new(move |i| {
                format!(
                    "/fhir/CareTeam?participant=Practitioner/pr{}",
                    pick(i, 41, practitioners)
                )
            }),
        ),
        (
            "Encounters finished in a week, _include subject",
            Box::new(move |i| {
                let month = 1 + pick(i, 42, 12);
                format!("/fhir/Encounter?status=finished&date=ge2026-{month:02}-01&date=lt2026-{month:02}-08&_include=Encounter:subject&_count=50")
            }),
        ),
        (
            "open ServiceRequests by performer",
            Box::new(move |i| {
                format!(
                    "/fhir/ServiceRequest?status=active&performer=Organization/org{}&_count=50",
                    pick(i, 43, organizations)
                )
            }),
        ),
        (
            "chained: Encounter by patient INS",
            Box::new(move |i| {
                format!(
                    "/fhir/Encounter?subject:Patient.identifier={INS}%7C{}",
                    nir(pick(i, 44, patients))
                )
            }),
        ),
        (
            "_has: patients in a practitioner's care teams",
            Box::new(move |i| {
                format!(
                    "/fhir/Patient?_has:CareTeam:patient:participant=Practitioner/pr{}",
                    pick(i, 45, practitioners)
                )
            }),
        ),
        (
            "Patient by family and given name",
            Box::new(move |i| {
                let prefix = |name: &str, n: usize| -> String {
                    let text: String = name.chars().take(n).collect();
                    percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC)
                        .to_string()
                };
                format!(
                    "/fhir/Patient?family={}&given={}&_count=50",
                    prefix(FAMILY[pick(i, 46, FAMILY.len())], 3),
                    prefix(GIVEN[pick(i, 47, GIVEN.len())], 2)
                )
            }),
        ),
        (
            "Observations of a patient by code",
            Box::new(move |i| {
                format!(
                    "/fhir/Observation?subject=Patient/p{}&code=http://loinc.org%7C29463-7",
                    pick(i, 48, patients)
                )
            }),
        ),
    ]
}

/// Waits until the server has analyzed every table the load made stale.
async fn server_analyzed(database: &server::Database) -> Result<(), StartError> {
    let err = |e: String| StartError::Database(e);
    let client = database.pool.get().await.map_err(|e| err(e.to_string()))?;
    let deadline = Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let tables = passerelle::store::statistics::table_changes(&client)
            .await
            .map_err(|e| err(e.to_string()))?;
        if !tables.iter().any(passerelle::store::statistics::is_stale) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(err("the server did not analyze its tables".to_owned()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

pub async fn run(options: SearchBenchOptions) -> Result<String, StartError> {
    let db_err = |e: String| StartError::Database(e);
    let database = server::open_bench_database(&options.database, options.concurrency).await?;
    let mut serve = crate::common::bench_options(
        passerelle::delivery::Tuning::default(),
        passerelle::auth::AuthSetting::Unset,
        true,
    );
    if options.statistics == Statistics::None {
        serve.jobs.analyze_every = None;
    }
    let server = crate::common::start_options(&database, &serve).await?;
    let addr = server.addr;
    let sizes = Arc::new(Sizes::for_patients(options.patients));
    let total = sizes.total();

    let load_sizes = sizes.clone();
    let ingest = run_phase(
        "ingest (HTTP PUT, indexed)",
        total,
        options.concurrency,
        |counter| {
            let sizes = load_sizes.clone();
            async move {
                let mut conn = Connection::open(addr).await?;
                let mut latencies = Vec::new();
                while let Some(n) = counter.next() {
                    let body = resource(&sizes, n);
                    let path = format!(
                        "/fhir/{}/{}",
                        body["resourceType"].as_str().unwrap_or(""),
                        body["id"].as_str().unwrap_or("")
                    );
                    let body = body.to_string();
                    let t = Instant::now();
                    let reply = conn.send("PUT", &path, Some(body.as_bytes())).await?;
                    latencies.push(t.elapsed());
                    if reply.status != 201 && reply.status != 200 {
                        return Err(format!(
                            "PUT {path} answered {}: {}",
                            reply.status,
                            String::from_utf8_lossy(&reply.body)
                        ));
                    }
                }
                Ok(latencies)
            }
        },
    )
    .await
    .map_err(db_err)?;
    let settled = Instant::now();
    match options.statistics {
        // Statistics and visibility maps, as a production database has them once
        // its autovacuum has run after a bulk load.
        Statistics::Vacuum => crate::common::vacuum_analyze(&database).await?,
        Statistics::Server => server_analyzed(&database).await?,
        Statistics::None => {}
    }
    let settled = settled.elapsed();

    let mut phases: Vec<Phase> = Vec::new();
    for (name, query) in queries(&sizes) {
        let query = Arc::new(query);
        let phase = run_phase(
            name,
            options.queries,
            options.concurrency.min(4),
            |counter| {
                let query = query.clone();
                async move {
                    let mut conn = Connection::open(addr).await?;
                    let mut latencies = Vec::new();
                    while let Some(i) = counter.next() {
                        let path = query(i);
                        latencies.push(conn.timed_get(&path).await?);
                    }
                    Ok(latencies)
                }
            },
        )
        .await
        .map_err(db_err)?;
        phases.push(phase);
    }
    server.stop();
    database.close().await;
    let mut report = format!(
        "Passerelle search bench: {total} resources ({} patients), {} cores\n{}\nstatistics: {:?} ({:.1} s after the load)\nsearches, {} each, {} concurrent clients:",
        sizes.patients,
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        ingest.line(),
        options.statistics,
        settled.as_secs_f64(),
        options.queries,
        options.concurrency.min(4),
    );
    for phase in &phases {
        report.push('\n');
        report.push_str(&phase.line());
    }
    Ok(report)
}
