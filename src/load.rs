//! `passerelle load PATH…`: loads resources, Bundles (transaction, batch, collection
//! and other kinds) and NDJSON files, or folders of them, into a running server over
//! HTTP (`--url`) or straight into the database through the same write path. Loading
//! twice changes nothing: resources with an id are PUT (an unchanged one writes no
//! version), transaction Bundles should use ids or conditional creates. A story told
//! in steps (a folder of transactions, each moving a resource on from the version
//! the previous step left, with `ifMatch`) loads again as a no-op: a step whose
//! `ifMatch` names a version older than the current one was already taken, and is
//! counted so rather than as a failure.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use deadpool_postgres::Pool;
use serde_json::Value;

use crate::error::{FhirError, FhirResult};
use crate::fhir;
use crate::service::{self, bundle, WriteRequest};

/// Where loaded content goes.
pub enum Target {
    /// A running server: its FHIR base URL.
    Http {
        client: reqwest::Client,
        base: String,
    },
    /// The database, through the server's own write path, with the definitions in
    /// force there.
    Database(Pool, service::Rules),
}

/// One unit of work read from a file.
enum Item {
    /// A transaction or batch Bundle, sent whole.
    Bundle(Value),
    Resource(Value),
}

/// What a load did.
#[derive(Debug, Default)]
pub struct Summary {
    pub files: usize,
    pub created: usize,
    /// Written as a new version, or found unchanged.
    pub updated_or_unchanged: usize,
    /// Steps written against a version that a later one replaced.
    pub already_taken: usize,
    pub failed: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} files: {} created, {} updated or unchanged, {} steps already taken, {} failed",
            self.files,
            self.created,
            self.updated_or_unchanged,
            self.already_taken,
            self.failed.len()
        )?;
        for failure in &self.failed {
            writeln!(f, "  failed: {failure}")?;
        }
        Ok(())
    }
}

/// Every `.json` and `.ndjson` file under the paths, in name order.
fn files(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(path)?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            children.sort();
            found.extend(files(&children)?);
        } else if path
            .extension()
            .is_some_and(|e| e == "json" || e == "ndjson")
        {
            found.push(path.clone());
        }
    }
    Ok(found)
}

fn items(path: &Path) -> Result<Vec<Item>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    if path.extension().is_some_and(|e| e == "ndjson") {
        return text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .map(Item::Resource)
                    .map_err(|e| format!("line {}: {e}", i + 1))
            })
            .collect();
    }
    let value: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if fhir::resource_type(&value) != "Bundle" {
        return Ok(vec![Item::Resource(value)]);
    }
    match value["type"].as_str() {
        Some("transaction" | "batch") => Ok(vec![Item::Bundle(value)]),
        // A collection (or searchset, document…): its resources one by one.
        _ => Ok(value["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("resource").cloned())
            .map(Item::Resource)
            .collect()),
    }
}

/// The status of each write a Bundle's response reports.
fn bundle_statuses(response: &Value) -> Vec<String> {
    response["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["response"]["status"].as_str().map(str::to_owned))
        .collect()
}

impl Target {
    async fn bundle(&self, bundle: Value) -> Result<Vec<String>, String> {
        match self {
            Target::Http { client, base } => {
                let resp = client
                    .post(base.clone())
                    .header("content-type", "application/fhir+json")
                    .body(bundle.to_string())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = resp.status();
                let body: Value = resp.json().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("{status}: {}", body["issue"][0]["diagnostics"]));
                }
                Ok(bundle_statuses(&body))
            }
            Target::Database(pool, rules) => {
                let body = serde_json::to_vec(&bundle).map_err(|e| e.to_string())?;
                drop(bundle);
                // No base URL: the loader reads the statuses alone.
                let answering = bundle::Answering {
                    base: "",
                    handling: crate::search::Handling::Lenient,
                    representation: false,
                    // The loader writes straight into the database: it is the
                    // deployer's own tool.
                    access: &crate::auth::Access::Open,
                    record: None,
                };
                bundle::process(pool, rules, &answering, &body)
                    .await
                    .and_then(|text| {
                        serde_json::from_str::<Value>(&text)
                            .map_err(|e| crate::error::FhirError::Internal(e.to_string()))
                    })
                    .map(|r| bundle_statuses(&r))
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn resource(&self, resource: Value) -> Result<String, String> {
        let res_type = fhir::resource_type(&resource).to_owned();
        let id = fhir::resource_id(&resource).map(str::to_owned);
        match self {
            Target::Http { client, base } => {
                let request = match &id {
                    Some(id) => client.put(format!("{base}/{res_type}/{id}")),
                    None => client.post(format!("{base}/{res_type}")),
                };
                let resp = request
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(resource.to_string())
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = resp.status();
                if status.is_success() {
                    return Ok(status.as_u16().to_string());
                }
                let body: Value = resp.json().await.unwrap_or_default();
                Err(format!("{status}: {}", body["issue"][0]["diagnostics"]))
            }
            Target::Database(pool, rules) => {
                let written = async {
                    fhir::check_resource(&resource)?;
                    let request = match id {
                        Some(res_id) => WriteRequest::Update {
                            res_type,
                            res_id,
                            resource,
                            if_match: None,
                        },
                        None => WriteRequest::Create {
                            res_type,
                            resource,
                            if_none_exist: None,
                            id: None,
                        },
                    };
                    service::write(
                        pool,
                        rules,
                        request,
                        &crate::auth::Access::Open,
                        &crate::auth::Holder::Free,
                        None,
                    )
                    .await
                }
                .await
                .map_err(|e: FhirError| e.to_string())?;
                Ok(if written.is_some_and(|w| w.created) {
                    "201"
                } else {
                    "200"
                }
                .to_owned())
            }
        }
    }
}

/// Whether a refusal says the write was made against a version that a later one
/// replaced (the step was taken before). Pure.
fn already_taken(refusal: &str) -> bool {
    let Some((_, rest)) = refusal.split_once(service::write::STALE_VERSION) else {
        return false;
    };
    let number = |s: &str| -> Option<u64> {
        s.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let current = rest.split_once("the current version is").map(|(_, v)| v);
    matches!((number(rest), current.and_then(number)), (Some(expected), Some(current)) if current > expected)
}

/// The progress line: a bar of the files done, the resources written, failures
/// and the rate. Pure.
fn progress_line(done: usize, total: usize, summary: &Summary, secs: f64, current: &str) -> String {
    const WIDTH: usize = 24;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let written = summary.created + summary.updated_or_unchanged;
    let rate = if secs > 0.0 {
        written as f64 / secs
    } else {
        0.0
    };
    format!(
        "[{}{}] {done}/{total} files  {written} resources  {} failed  {rate:.0}/s  {current}",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        summary.failed.len(),
    )
}

/// Loads the paths into the target, with a progress bar on stderr (one line,
/// redrawn; a line per file when stderr is not a terminal).
pub async fn load(target: &Target, paths: &[PathBuf]) -> FhirResult<Summary> {
    use std::io::IsTerminal as _;
    let files =
        files(paths).map_err(|e| FhirError::bad_request(format!("reading the paths: {e}")))?;
    let mut summary = Summary {
        files: files.len(),
        ..Summary::default()
    };
    let started = std::time::Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let show = |done: usize, summary: &Summary, current: &str| {
        let line = progress_line(
            done,
            files.len(),
            summary,
            started.elapsed().as_secs_f64(),
            current,
        );
        if terminal {
            eprint!("\r{line}\x1b[K");
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
    };
    for (n, file) in files.iter().enumerate() {
        let name = file.display().to_string();
        show(n, &summary, &name);
        let items = match items(file) {
            Ok(items) => items,
            Err(e) => {
                summary.failed.push(format!("{name}: {e}"));
                continue;
            }
        };
        for item in items {
            let statuses = match item {
                Item::Bundle(b) => target.bundle(b).await,
                Item::Resource(r) => target.resource(r).await.map(|s| vec![s]),
            };
            match statuses {
                Ok(statuses) => {
                    for status in statuses {
                        if status.starts_with("201") {
                            summary.created += 1;
                        } else {
                            summary.updated_or_unchanged += 1;
                        }
                    }
                }
                Err(e) if already_taken(&e) => summary.already_taken += 1,
                Err(e) => summary.failed.push(format!("{name}: {e}")),
            }
        }
    }
    show(files.len(), &summary, "done");
    if terminal {
        eprintln!();
    }
    if let Target::Database(pool, _) = target {
        // Searches planned on the statistics of an empty database scan whole
        // tables once it is full: analyze now rather than wait for autovacuum.
        crate::store::statistics::analyze_all(&mut pool.get().await?).await?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_against_an_older_version_was_already_taken() {
        let taken = "412 Precondition Failed: \"Bundle.entry[0]: If-Match expected version 2 of Task/a, but the current version is 5\"";
        assert!(already_taken(taken));
        // Behind, absent or another refusal: a failure.
        for failed in [
            "If-Match expected version 5 of Task/a, but the current version is 2",
            "If-Match expected version 2 of Task/a, but the current version is 2",
            "If-Match expected version 1 of Task/a, but the current version is absent",
            "the criteria match more than one Task",
        ] {
            assert!(!already_taken(failed), "{failed}");
        }
    }

    #[test]
    fn the_progress_line_shows_files_resources_failures_and_rate() {
        let summary = Summary {
            files: 4,
            created: 30,
            updated_or_unchanged: 10,
            already_taken: 0,
            failed: vec!["x.json: bad".into()],
        };
        let line = progress_line(1, 4, &summary, 2.0, "fixtures/a.json");
        assert_eq!(
            line,
            "[######------------------] 1/4 files  40 resources  1 failed  20/s  fixtures/a.json"
        );
        assert!(progress_line(0, 0, &Summary::default(), 0.0, "")
            .starts_with("[########################] 0/0"));
    }
}
