//! One answer to "does it match": subscriptions are matched in memory
//! (`search::matcher`, over a resource's index rows) and searches in SQL
//! (`store::search_sql`). Generated resources and generated searches over every
//! parameter kind and modifier the matcher decides are answered both ways; where
//! the matcher says yes or no, the database must say the same, or a notification
//! would be missed or sent wrongly.

use chrono::{DateTime, Utc};
use passerelle::search::matcher::{self, Subject, Truth};
use passerelle::search::{self, Handling};
use serde_json::{json, Value};

use crate::fuzz::Rng;
use crate::support::{json_of, TestServer};

const FAMILIES: &[&str] = &[
    "Martin",
    "Lefèvre",
    "Lefe\u{300}vre",
    "Moreau",
    "MARTINEZ",
    "Ølund",
    "Dupont-Martin",
];
const GIVENS: &[&str] = &["Léa", "Lea", "Anaïs", "Jean", "Jean-Pierre", "Zoë"];
const CITIES: &[&str] = &["Lyon", "Saint-Étienne", "Paris", "lyon"];
const SYSTEMS: &[&str] = &[
    "urn:oid:1.2.250.1.213.1.4.8",
    "https://rpps.esante.gouv.fr",
    "urn:example:x",
];
const CODES: &[&str] = &["8867-4", "29463-7", "IMP", "AMB", "a|b", "x,y"];
const DATES: &[&str] = &[
    "2026",
    "2026-03",
    "2026-03-01",
    "2026-03-01T08:30:00+01:00",
    "2026-03-01T23:59:59Z",
    "2025-12-31",
    "2026-03-07T12:00:00.123Z",
    "1950-06-15",
];

fn patient(rng: &mut Rng, i: usize) -> Value {
    let mut p = json!({"resourceType":"Patient","id":format!("pt-{i}"),
        "name":[{"family":rng.pick(FAMILIES),"given":[rng.pick(GIVENS)]}],
        "gender":rng.pick(&["male","female","unknown"]),
        "active": rng.below(2) == 0});
    if rng.below(3) > 0 {
        p["identifier"] = json!([{"system":rng.pick(SYSTEMS),"value":format!("{}", rng.below(5))}]);
    }
    if rng.below(3) > 0 {
        // A date: the day, the month or the year of one of the instants.
        let day = rng.pick(DATES).split('T').next().unwrap_or("2026");
        let cut = [4usize, 7, 10][rng.below(3)].min(day.len());
        p["birthDate"] = json!(&day[..cut]);
    }
    if rng.below(2) == 0 {
        p["address"] = json!([{"city":rng.pick(CITIES)}]);
    }
    p
}

fn observation(rng: &mut Rng, i: usize, patients: usize) -> Value {
    let mut o = json!({"resourceType":"Observation","id":format!("ob-{i}"),
        "status":rng.pick(&["final","preliminary","amended"]),
        "code":{"coding":[{"system":rng.pick(SYSTEMS),"code":rng.pick(CODES),"display":rng.pick(GIVENS)}]},
        "subject":{"reference":format!("Patient/pt-{}", rng.below(patients))}});
    match rng.below(3) {
        0 => o["effectiveDateTime"] = json!(rng.pick(DATES)),
        1 => o["effectivePeriod"] = json!({"start":rng.pick(DATES)}),
        _ => {}
    }
    if rng.below(2) == 0 {
        o["valueString"] = json!(format!("{} {}", rng.pick(GIVENS), rng.pick(CITIES)));
    }
    o
}

/// A search value written literally (`\\`, `,` and `|` escaped).
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace(',', "\\,")
        .replace('|', "\\|")
}

/// A value for a parameter of this kind, usually one the resources carry.
fn value(rng: &mut Rng, kind: &str) -> String {
    match kind {
        "string" => {
            let word = rng.pick(&[FAMILIES, GIVENS, CITIES]).to_owned();
            let word = rng.pick(word);
            let cut = rng.below(word.chars().count()) + 1;
            escape(&word.chars().take(cut).collect::<String>())
        }
        "token" => match rng.below(4) {
            0 => escape(rng.pick::<&str>(CODES)),
            1 => format!("{}|{}", rng.pick(SYSTEMS), escape(rng.pick::<&str>(CODES))),
            2 => format!("{}|{}", rng.pick(SYSTEMS), rng.below(5)),
            _ => rng
                .pick(&["male", "female", "true", "false", "final", "|8867-4"])
                .to_string(),
        },
        "date" => format!(
            "{}{}",
            rng.pick(&["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"]),
            rng.pick(DATES).replace('+', "%2B")
        ),
        _ => format!("Patient/pt-{}", rng.below(12)),
    }
}

const PARAMS: &[(&str, &str, &str)] = &[
    ("Patient", "family", "string"),
    ("Patient", "given", "string"),
    ("Patient", "name", "string"),
    ("Patient", "address-city", "string"),
    ("Patient", "identifier", "token"),
    ("Patient", "gender", "token"),
    ("Patient", "active", "token"),
    ("Patient", "birthdate", "date"),
    ("Observation", "code", "token"),
    ("Observation", "status", "token"),
    ("Observation", "value-string", "string"),
    ("Observation", "date", "date"),
    ("Observation", "subject", "reference"),
    ("Observation", "patient", "reference"),
];

/// Modifiers by kind; no modifier weighs more.
const STRING_MODIFIERS: &[&str] = &["", "", ":exact", ":contains", ":missing"];
const TOKEN_MODIFIERS: &[&str] = &["", "", ":not", ":text", ":missing"];
const OTHER_MODIFIERS: &[&str] = &["", "", "", ":missing"];

fn modifier(rng: &mut Rng, kind: &str) -> &'static str {
    match kind {
        "string" => rng.pick::<&str>(STRING_MODIFIERS),
        "token" => rng.pick::<&str>(TOKEN_MODIFIERS),
        "date" | "reference" => rng.pick::<&str>(OTHER_MODIFIERS),
        _ => "",
    }
}

/// One generated search: one or two parameters of one type, sometimes with OR
/// values.
fn query(rng: &mut Rng) -> (&'static str, Vec<(String, String)>) {
    let (resource_type, _, _) = *rng.pick(PARAMS);
    let candidates: Vec<&(&str, &str, &str)> =
        PARAMS.iter().filter(|p| p.0 == resource_type).collect();
    let mut pairs = Vec::new();
    for _ in 0..=rng.below(2) {
        let (_, code, kind) = **rng.pick(&candidates);
        let modifier = modifier(rng, kind);
        let value = if modifier == ":missing" {
            rng.pick(&["true", "false"]).to_string()
        } else if modifier == ":text" {
            value(rng, "string")
        } else {
            let n = 1 + usize::from(rng.below(4) == 0);
            (0..n)
                .map(|_| value(rng, kind))
                .collect::<Vec<_>>()
                .join(",")
        };
        pairs.push((format!("{code}{modifier}"), value));
    }
    (resource_type, pairs)
}

#[tokio::test]
async fn the_matcher_and_the_database_agree() {
    let s = TestServer::start().await;
    let mut rng = Rng(0xA9EE_2026_0000_0001);
    let mut resources = Vec::new();
    for i in 0..12 {
        resources.push(patient(&mut rng, i));
    }
    for i in 0..30 {
        resources.push(observation(&mut rng, i, 12));
    }
    let params = s.params();
    // As stored: with the server's meta, indexed by the server's own extraction.
    let mut stored = Vec::new();
    for r in &resources {
        let path = format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap_or(""),
            r["id"].as_str().unwrap_or("")
        );
        let resp = s.put_json(&path, r).await;
        stored.push(json_of(resp, 201).await);
    }
    let subjects: Vec<(
        String,
        String,
        DateTime<Utc>,
        passerelle::search::index::IndexRows,
    )> = stored
        .iter()
        .map(|r| {
            let rt = r["resourceType"].as_str().unwrap_or("").to_owned();
            let updated = r["meta"]["lastUpdated"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc))
                .expect("lastUpdated");
            let rows = passerelle::search::index::extract(&params, &rt, r);
            (rt, r["id"].as_str().unwrap_or("").to_owned(), updated, rows)
        })
        .collect();

    let (mut decided, mut disagreements) = (0, Vec::new());
    for _ in 0..400 {
        let (resource_type, pairs) = query(&mut rng);
        let Ok(plan) = search::parse(&params, resource_type, &pairs, Handling::Strict) else {
            continue;
        };
        let query_string = pairs
            .iter()
            .map(|(k, v)| {
                format!(
                    "{k}={}",
                    percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        let bundle = json_of(
            s.get(&format!("{resource_type}?{query_string}&_count=1000"))
                .await,
            200,
        )
        .await;
        let found: std::collections::HashSet<String> = bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
            .collect();
        for (rt, id, updated, rows) in subjects.iter().filter(|x| x.0 == resource_type) {
            let subject = Subject {
                res_id: id,
                last_updated: *updated,
                rows,
            };
            let answer = match matcher::evaluate(&plan.conditions, &subject) {
                Truth::Yes => true,
                Truth::No => false,
                Truth::Unknown => continue,
            };
            decided += 1;
            if answer != found.contains(id) {
                disagreements.push(format!(
                    "{rt}/{id} with {pairs:?}: matcher {answer}, database {}",
                    found.contains(id)
                ));
            }
        }
    }
    eprintln!("agreement: {decided} answers decided by the matcher, all checked against SQL");
    assert!(decided > 2_000, "too few decided answers: {decided}");
    assert!(
        disagreements.is_empty(),
        "{} disagreements out of {decided}, e.g.:\n{}",
        disagreements.len(),
        disagreements
            .iter()
            .take(12)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
