//! A mutation fuzzer, bounded in time so that it runs in every CI build: valid
//! inputs (the fixtures' resources and Bundles, query strings, FHIRPath, patches)
//! are mutated (bytes flipped, ranges cut or repeated, deep nesting, long and odd
//! strings, huge numbers, splices) and fed to the parsers in process, then sent to
//! the real server as requests. Nothing may panic, abort, or answer 5xx.
//!
//! `PASSERELLE_FUZZ_INPUTS` sets the number of inputs per target (default 4,000
//! for the parsers, a quarter of it over HTTP), `PASSERELLE_FUZZ_SEED` the seed
//! (default: a fixed one, so that CI is repeatable). A failing input is written to
//! `target/fuzz-failures/`; every input that ever failed is kept in
//! `tests/fuzz-regressions/` and replayed first.

use std::path::PathBuf;

use passerelle::fhir::{self, Format};
use passerelle::search::{self, Handling};
use serde_json::Value;

use crate::support::TestServer;

/// xorshift64*: small, seedable, good enough to pick mutations.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn inputs() -> usize {
    std::env::var("PASSERELLE_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000)
}

fn seed() -> u64 {
    std::env::var("PASSERELLE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED_F41B_2026_1128)
        | 1
}

const INTERESTING: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "<",
    ">",
    "\"",
    "'",
    "\\",
    ":",
    ",",
    "/",
    ".",
    "$",
    "|",
    "%",
    "&",
    "=",
    "?",
    "#",
    "(",
    ")",
    "0",
    "-1",
    "1e999999",
    "é",
    "漢",
    "🩺",
    "\u{0}",
    "\u{FFFF}",
    "%00",
    "%",
    "&amp;",
    "<![CDATA[",
    "<!--",
    "]]>",
    "null",
    "true",
    "",
    " ",
    "\t",
    "\\u0000",
    "\\ud800",
    "_has:Patient:link:",
    "subject.",
    ":missing",
    ":exact",
    "Patient/",
    "urn:uuid:",
    "http://",
    "-",
    "ge",
    "T",
    "Z",
    "+01:00",
];

const NESTERS: &[&str] = &[
    "[",
    "{\"a\":",
    "{\"extension\":[",
    "<extension url=\"x\">",
    "(",
    "_has:Patient:link:",
    "link:Patient.",
    "<div>",
];

/// One to four mutations of `input`; `others` are spliced from.
fn mutate(rng: &mut Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(9) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out.splice(i..=i, rng.pick(INTERESTING).bytes());
            }
            1 if !out.is_empty() => {
                let len = rng.below(64.min(out.len() - at.min(out.len())) + 1);
                let end = (at + len).min(out.len());
                out.drain(at.min(end)..end);
            }
            2 if !out.is_empty() => {
                let start = rng.below(out.len());
                let end = (start + rng.below(256) + 1).min(out.len());
                let copy = out[start..end].to_vec();
                out.splice(at..at, copy);
            }
            3 => {
                let nester = rng.pick(NESTERS);
                let times = [2, 10, 50, 70, 130, 1_000][rng.below(6)];
                out.splice(at..at, nester.repeat(times).into_bytes());
            }
            4 => {
                let unit = rng.pick(&["a", "é", "漢", "🩺", "x,", "\\\\"]);
                let times = rng.below(3_000) + 1;
                out.splice(at..at, unit.repeat(times).into_bytes());
            }
            5 => {
                // A number made enormous, tiny or negative.
                if let Some(i) = out.iter().skip(at).position(u8::is_ascii_digit) {
                    let i = at + i;
                    let huge = rng.pick(&[
                        "1e400",
                        "-0.00000000000000000000000000001",
                        "99999999999999999999999",
                        "-1",
                    ]);
                    out.splice(i..=i, huge.bytes());
                }
            }
            6 if !others.is_empty() => {
                let other = rng.pick(others);
                let start = rng.below(other.len());
                let end = (start + rng.below(512) + 1).min(other.len());
                out.splice(at..at, other[start..end].iter().copied());
            }
            7 => out.truncate(at),
            _ => {
                let i = rng.below(out.len().max(1));
                if let Some(b) = out.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
        }
    }
    out
}

/// The repository's own valid inputs: every fixture Bundle, each of its
/// resources, their XML form, and hand-written queries, FHIRPath and patches.
struct Seeds {
    json: Vec<Vec<u8>>,
    xml: Vec<Vec<u8>>,
    bundles: Vec<Vec<u8>>,
    queries: Vec<Vec<u8>>,
    fhirpath: Vec<Vec<u8>>,
    patches: Vec<Vec<u8>>,
}

fn seeds() -> Seeds {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut seeds = Seeds {
        json: Vec::new(),
        xml: Vec::new(),
        bundles: Vec::new(),
        queries: [
            "name=Martin&birthdate=ge1950-01-01&_count=10",
            "identifier=urn:oid:1.2.250.1.213.1.4.8|1850312345678",
            "subject:Patient.name=moreau&_include=Encounter:subject",
            "_has:Observation:patient:code=http://loinc.org|8867-4&_sort=-_lastUpdated",
            "participant:Practitioner.identifier=https://rpps.esante.gouv.fr|10001234567&status=active",
            "date=ge2026-03-01&date=lt2026-03-08&class=IMP&_revinclude=Task:focus",
            "code-value-quantity=http://loinc.org|8867-4$gt100|http://unitsofmeasure.org|/min",
            "_id=a,b,c&_lastUpdated=gt2026-01-01T00:00:00Z&_total=accurate&_summary=count",
            "name:contains=é&address-city:exact=Lyon&_elements=name,birthDate&_pretty=true",
            "event-type=SOR&encounter=Encounter/x&_after=Patient/abc",
        ]
        .iter()
        .map(|q| q.as_bytes().to_vec())
        .collect(),
        fhirpath: [
            "Patient.name.where(use = 'official').family",
            "(Observation.value as Quantity) | (Observation.component.value as Quantity)",
            "Encounter.participant.individual.where(resolve() is Practitioner)",
            "CareTeam.participant.member",
            "Patient.telecom[0].value",
        ]
        .iter()
        .map(|q| q.as_bytes().to_vec())
        .collect(),
        patches: vec![
            br#"[{"op":"replace","path":"/active","value":false},{"op":"add","path":"/name/0/given/-","value":"L\u00e9a"}]"#.to_vec(),
            br#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.active"},{"name":"value","valueBoolean":false}]}]}"#.to_vec(),
        ],
    };
    for file in crate::support::json_files(&dir) {
        let text = std::fs::read(&file).expect("fixture");
        let bundle: Value = serde_json::from_slice(&text).expect("fixture JSON");
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            let resource = entry["resource"].to_string();
            if let Ok(xml) = fhir::xml::from_json(&resource, false) {
                seeds.xml.push(xml);
            }
            seeds.json.push(resource.into_bytes());
        }
        seeds.bundles.push(text);
    }
    seeds
}

/// Replays the inputs kept in `tests/fuzz-regressions/` (`NAME.TARGET`).
fn regressions() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-regressions");
    let mut found: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e != "md"))
        .map(|p| {
            let target = p
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_owned();
            (target, std::fs::read(&p).expect("regression input"))
        })
        .collect();
    found.sort();
    found
}

/// Keeps a failing input where a developer will find it.
fn keep_failure(target: &str, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{:016x}.{target}", seed() ^ input.len() as u64));
    let _ = std::fs::write(&path, input);
    path
}

/// The standard search parameters, built once.
fn params() -> &'static passerelle::search::params::ParamTable {
    static TABLE: std::sync::LazyLock<passerelle::search::params::ParamTable> =
        std::sync::LazyLock::new(passerelle::search::params::ParamTable::standard);
    &TABLE
}

/// One input through one parser: it may fail, but only as the client's error; a
/// panic keeps the input.
fn parse_one(target: &str, input: &[u8], patient: &Value) {
    let run = std::panic::AssertUnwindSafe(|| parse_unguarded(target, input, patient));
    if std::panic::catch_unwind(run).is_err() {
        let kept = keep_failure(target, input);
        panic!("{target} panicked; input kept in {}", kept.display());
    }
}

fn parse_unguarded(target: &str, input: &[u8], patient: &Value) {
    let client_error = |what: &str, e: passerelle::error::FhirError| {
        if e.status() >= 500 {
            let kept = keep_failure(target, input);
            panic!(
                "{what} answered {} ({e}); input kept in {}",
                e.status(),
                kept.display()
            );
        }
    };
    match target {
        "json" | "xml" => {
            let format = if target == "json" {
                Format::Json
            } else {
                Format::Xml
            };
            match fhir::parse_resource(input, format) {
                Ok(resource) => {
                    let text = resource.to_string();
                    let _ = fhir::xml::from_json(&text, false);
                    let _ =
                        search::index::extract(params(), fhir::resource_type(&resource), &resource);
                }
                Err(e) => client_error("parse_resource", e),
            }
        }
        "bundle" => match fhir::bundle::open(input) {
            Ok(bundle) => {
                for i in 0..bundle.len() {
                    if let Err(e) = bundle.head(i) {
                        client_error("bundle head", e);
                    }
                    if let Err(e) = bundle.resource(i) {
                        client_error("bundle resource", e);
                    }
                }
            }
            Err(e) => client_error("bundle::open", e),
        },
        "query" => {
            let pairs = search::parse_form(&String::from_utf8_lossy(input));
            for handling in [Handling::Lenient, Handling::Strict] {
                for resource_type in ["Patient", "Encounter", "Observation", "Basic"] {
                    if let Err(e) = search::parse(params(), resource_type, &pairs, handling) {
                        client_error("search::parse", e);
                    }
                }
            }
        }
        "fhirpath" => {
            let text = String::from_utf8_lossy(input);
            if let Ok(expr) = fhir::fhirpath::compile(&text) {
                let _ = fhir::fhirpath::evaluate(&expr, patient);
            }
        }
        "patch" => {
            if fhir::nesting::check_json(input).is_err() {
                return;
            }
            if let Ok(document) = serde_json::from_slice::<Value>(input) {
                let result = if fhir::fhirpath_patch::is_fhirpath_patch(&document) {
                    fhir::fhirpath_patch::apply(patient, &document)
                } else {
                    fhir::patch::apply(patient, &document)
                };
                if let Err(e) = result {
                    client_error("patch", e);
                }
            }
        }
        other => panic!("unknown fuzz target '{other}'"),
    }
}

#[test]
fn parsers_survive_mutated_inputs() {
    let seeds = seeds();
    let patient: Value = serde_json::json!({"resourceType":"Patient","id":"p","active":true,
        "name":[{"use":"official","family":"Martin","given":["Léa"]}],"telecom":[{"system":"phone","value":"06"}]});
    for (target, input) in regressions() {
        parse_one(&target, &input, &patient);
    }
    let mut rng = Rng(seed());
    let all: Vec<Vec<u8>> = seeds.json.iter().chain(&seeds.xml).cloned().collect();
    let targets: [(&str, &Vec<Vec<u8>>); 6] = [
        ("json", &seeds.json),
        ("xml", &seeds.xml),
        ("bundle", &seeds.bundles),
        ("query", &seeds.queries),
        ("fhirpath", &seeds.fhirpath),
        ("patch", &seeds.patches),
    ];
    let n = inputs();
    for (target, corpus) in targets {
        for _ in 0..n {
            let original = rng_pick(&mut rng, corpus);
            let input = mutate(&mut rng, original, &all);
            parse_one(target, &input, &patient);
        }
    }
    eprintln!(
        "fuzz: {} parser inputs from seed {}, no failure",
        6 * n,
        seed()
    );
}

fn rng_pick<'a>(rng: &mut Rng, corpus: &'a [Vec<u8>]) -> &'a [u8] {
    rng.pick(corpus).as_slice()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_survives_mutated_requests() {
    let s = TestServer::start().await;
    let seeds = seeds();
    let all: Vec<Vec<u8>> = seeds.json.iter().chain(&seeds.xml).cloned().collect();
    let mut rng = Rng(seed() ^ 0xA5A5);
    let content_types = [
        "application/fhir+json",
        "application/fhir+xml",
        "application/json-patch+json",
        "application/x-www-form-urlencoded",
        "application/fhir+json; charset=latin1",
        "text/plain",
        "",
    ];
    let n = inputs() / 4;
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..n {
        let kind = rng.below(6);
        let (method, path, content_type, body): (reqwest::Method, String, &str, Vec<u8>) =
            match kind {
                0 => {
                    let query = {
                        let original = rng_pick(&mut rng, &seeds.queries);
                        mutate(&mut rng, original, &seeds.queries)
                    };
                    let ty = rng.pick(&["Patient", "Encounter", "Observation", "CareTeam", ""]);
                    let q = String::from_utf8_lossy(&query).replace(['#', ' '], "%20");
                    (reqwest::Method::GET, format!("{ty}?{q}"), "", Vec::new())
                }
                1 => {
                    let form = {
                        let original = rng_pick(&mut rng, &seeds.queries);
                        mutate(&mut rng, original, &seeds.queries)
                    };
                    (
                        reqwest::Method::POST,
                        "Patient/_search".to_owned(),
                        "application/x-www-form-urlencoded",
                        form,
                    )
                }
                2 => (
                    reqwest::Method::POST,
                    String::new(),
                    "application/fhir+json",
                    {
                        let original = rng_pick(&mut rng, &seeds.bundles);
                        mutate(&mut rng, original, &all)
                    },
                ),
                3 => {
                    let body = {
                        let original = rng_pick(&mut rng, &seeds.patches);
                        mutate(&mut rng, original, &all)
                    };
                    (
                        reqwest::Method::PATCH,
                        "Patient/fuzz-target".to_owned(),
                        *rng.pick(&content_types),
                        body,
                    )
                }
                _ => {
                    let corpus = if rng.below(2) == 0 {
                        &seeds.json
                    } else {
                        &seeds.xml
                    };
                    let body = {
                        let original = rng_pick(&mut rng, corpus);
                        mutate(&mut rng, original, &all)
                    };
                    let method = if rng.below(2) == 0 {
                        reqwest::Method::POST
                    } else {
                        reqwest::Method::PUT
                    };
                    let ty = rng.pick(&[
                        "Patient",
                        "Encounter",
                        "Observation",
                        "Subscription",
                        "SearchParameter",
                    ]);
                    let path = if method == reqwest::Method::PUT {
                        format!("{ty}/fuzz-{}", rng.below(20))
                    } else {
                        (*ty).to_owned()
                    };
                    (method, path, *rng.pick(&content_types), body)
                }
            };
        let mut request = s
            .http
            .request(method.clone(), s.url(&path))
            .body(body.clone());
        if !content_type.is_empty() {
            request = request.header("content-type", content_type);
        }
        if rng.below(4) == 0 {
            request = request.header(
                "prefer",
                *rng.pick(&[
                    "return=representation",
                    "handling=strict",
                    "return=OperationOutcome",
                ]),
            );
        }
        if rng.below(6) == 0 {
            request = request.header(
                "if-match",
                *rng.pick(&["W/\"1\"", "\"x\"", "*", "W/\"99999999999999999999\""]),
            );
        }
        let resp = request.send().await.expect("the server answers");
        let status = resp.status().as_u16();
        *statuses.entry(status).or_insert(0usize) += 1;
        if status >= 500 {
            let text = resp.text().await.unwrap_or_default();
            let kept = keep_failure("http", &body);
            panic!(
                "{method} {path} ({content_type}) answered {status}: {text}; body kept in {}",
                kept.display()
            );
        }
    }
    eprintln!(
        "fuzz: {n} requests from seed {}, statuses {statuses:?}",
        seed()
    );
    assert_eq!(s.get("metadata").await.status(), 200);
}
