//! The searchset's framing: what wrapping stored resources (their text as
//! stored) in a `searchset` Bundle costs per entry, in one thread, without the
//! database or HTTP (issue #18: "the searchset framing cost per entry halved"),
//! and the same versions as a history page.
//! `cargo bench --bench passerelle -- framing [--entries 50] [--pages 20000]`.

use std::time::Instant;

use chrono::Utc;
use serde_json::json;

use passerelle::search::{self, params::ParamTable, Handling};
use passerelle::server::StartError;
use passerelle::service::{self, SearchPage};
use passerelle::store::{Method, StoredVersion};

pub struct FramingBenchOptions {
    /// Entries per page.
    pub entries: usize,
    /// Pages rendered.
    pub pages: usize,
}

/// A stored Patient of about a kilobyte, as the store hands it over.
fn stored(n: usize) -> StoredVersion {
    let resource = json!({"resourceType": "Patient", "id": format!("p-{n}"),
        "meta": {"versionId": "1", "lastUpdated": "2026-11-29T10:00:00.000000+00:00"},
        "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": format!("2{n:012}")}],
        "name": [{"family": "Durand", "given": ["Marie", "Louise"]}],
        "gender": "female", "birthDate": "1948-03-12",
        "address": [{"line": ["12 rue des Lilas"], "city": "Lyon", "postalCode": "69003", "country": "FR"}],
        "telecom": [{"system": "phone", "value": "+33 4 72 00 00 00"}],
        "generalPractitioner": [{"reference": "Practitioner/gp-1"}],
        "managingOrganization": {"reference": "Organization/ch-1"}});
    StoredVersion {
        res_type: "Patient".to_owned(),
        res_id: format!("p-{n}"),
        version_id: 1,
        last_updated: Utc::now(),
        method: Method::Put,
        seq: n as i64,
        json: Some(resource.to_string()),
    }
}

pub async fn run(options: FramingBenchOptions) -> Result<String, StartError> {
    let table = ParamTable::standard();
    let params = vec![("family".to_owned(), "Durand".to_owned())];
    let failed =
        |what: &str, e: passerelle::error::FhirError| StartError::Config(format!("{what}: {e}"));
    let plan = search::parse(&table, "Patient", &params, Handling::Strict)
        .map_err(|e| failed("plan", e))?;
    let page = SearchPage {
        plan,
        matches: (0..options.entries).map(stored).collect(),
        included: Vec::new(),
        total: Some(options.entries as i64),
        next: None,
    };
    let resource_bytes: usize = page
        .matches
        .iter()
        .filter_map(|v| v.json.as_deref().map(str::len))
        .sum();
    let base = "https://passerelle.example.fr/fhir";
    let mut bytes = 0usize;
    let started = Instant::now();
    for _ in 0..options.pages {
        let body = service::searchset(base, "/Patient", &params, &page)
            .map_err(|e| failed("searchset", e))?;
        bytes += body.len();
    }
    let searchset = figures(&options, started.elapsed(), bytes, resource_bytes);
    // The same versions as a history page (`_history`, what shared records pull).
    let links = [("self", format!("{base}/_history"))];
    let mut bytes = 0usize;
    let started = Instant::now();
    for _ in 0..options.pages {
        bytes += service::history_bundle(base, &links, &page.matches).len();
    }
    let history = figures(&options, started.elapsed(), bytes, resource_bytes);
    Ok(format!(
        "Framing bench: {} pages of {} stored Patients ({} bytes of resources per page), one thread\n\
         searchset: {searchset}\nhistory:   {history}",
        options.pages, options.entries, resource_bytes,
    ))
}

/// Time and bytes of framing per page and per entry.
fn figures(
    options: &FramingBenchOptions,
    elapsed: std::time::Duration,
    bytes: usize,
    resource_bytes: usize,
) -> String {
    let per_page = elapsed.as_nanos() as f64 / options.pages as f64;
    let per_entry = per_page / options.entries.max(1) as f64;
    let framing = (bytes / options.pages).saturating_sub(resource_bytes);
    format!(
        "{:.1} µs per page, {:.0} ns per entry, {} bytes of framing per page ({:.0} per entry)",
        per_page / 1000.0,
        per_entry,
        framing,
        framing as f64 / options.entries.max(1) as f64
    )
}
