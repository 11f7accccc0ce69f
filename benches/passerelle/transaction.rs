//! `cargo bench --bench passerelle -- transaction`: ingest rate of transaction Bundles of 1, 100 and
//! 1,000 POST entries over HTTP (validation, one database transaction each, every
//! search parameter indexed), then of 1,000 PUT entries at new ids, of 1,000 PUT
//! updates of them and of 1,000 POSTs with `ifNoneExist`, beside the ceiling measured in the same run: the same rows
//! (versions, current rows, index rows) written by a plain SQL `COPY`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use futures_util::SinkExt;
use serde_json::{json, Value};

use crate::common::{run_phase, start_server, Connection};
use crate::rest::patient;
use passerelle::fhir;
use passerelle::search::index::{self, IndexRows};
use passerelle::server::{self, DatabaseChoice, StartError};

pub struct TransactionBenchOptions {
    pub database: DatabaseChoice,
    /// Resources written per Bundle size.
    pub resources: usize,
    pub concurrency: usize,
}

/// How the entries of a measured Bundle write their Patients.
#[derive(Clone, Copy)]
enum Entries {
    /// POST, server-assigned ids.
    Post,
    /// PUT at ids no resource has yet.
    PutNew,
    /// PUT again at the same ids, with a change.
    PutChanged,
    /// POST with `ifNoneExist` on the INS (a record pushed by a shared-record
    /// system): new records.
    PostIfNoneExist,
}

impl Entries {
    fn label(self) -> &'static str {
        match self {
            Entries::Post => "POST",
            Entries::PutNew => "PUT new",
            Entries::PutChanged => "PUT update",
            Entries::PostIfNoneExist => "POST if-none-exist",
        }
    }
}

fn transaction(kind: Entries, first: usize, size: usize) -> String {
    let entries: Vec<Value> = (first..first + size)
        .map(|i| {
            let mut resource = patient(i);
            let id = format!("put-{i}");
            let request = match kind {
                Entries::Post => return json!({"resource": resource, "request": {"method": "POST", "url": "Patient"}}),
                Entries::PostIfNoneExist => {
                    let ins = &resource["identifier"][0];
                    let criteria = format!("identifier={}|{}", ins["system"].as_str().unwrap_or_default(), ins["value"].as_str().unwrap_or_default());
                    return json!({"resource": resource, "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria}});
                }
                Entries::PutNew => json!({"method": "PUT", "url": format!("Patient/{id}")}),
                Entries::PutChanged => {
                    resource["active"] = json!(false);
                    json!({"method": "PUT", "url": format!("Patient/{id}")})
                }
            };
            resource["id"] = json!(id);
            json!({"resource": resource, "request": request})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
}

/// A value for PostgreSQL's COPY text format.
fn copy_text(value: Option<&str>) -> String {
    match value {
        None => "\\N".to_owned(),
        Some(v) => v
            .replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r"),
    }
}

/// The rows of `n` patients, as COPY text per table (prepared before the clock runs).
fn copy_rows(n: usize) -> Vec<(&'static str, String)> {
    let now = chrono::Utc::now();
    let stamp = fhir::datetime::format_instant(now);
    let mut tables: Vec<(&'static str, String)> = vec![
        ("resource_version (res_type, res_id, version_id, last_updated, method, deleted, resource)", String::new()),
        ("resource (res_type, res_id, version_id, last_updated, deleted)", String::new()),
        ("search_string (res_type, res_id, param, normalized, exact, grp)", String::new()),
        ("search_token (res_type, res_id, param, system, code, text, grp)", String::new()),
        ("search_reference (res_type, res_id, param, target_type, target_id, url, identifier_system, identifier_value, grp)", String::new()),
        ("search_date (res_type, res_id, param, low, high, grp)", String::new()),
        ("search_uri (res_type, res_id, param, uri, grp)", String::new()),
    ];
    let t = |s: &str| copy_text(Some(s));
    let o = |s: &Option<String>| copy_text(s.as_deref());
    let params = passerelle::search::params::ParamTable::standard();
    for i in 0..n {
        let id = format!("copy-{i}");
        let mut resource = patient(i);
        fhir::stamp(&mut resource, &id, 1, now);
        let rows: IndexRows = index::extract(&params, "Patient", &resource);
        let _ = writeln!(
            tables[0].1,
            "Patient\t{id}\t1\t{stamp}\tPOST\tf\t{}",
            t(&resource.to_string())
        );
        let _ = writeln!(tables[1].1, "Patient\t{id}\t1\t{stamp}\tf");
        for r in &rows.strings {
            let _ = writeln!(
                tables[2].1,
                "Patient\t{id}\t{}\t{}\t{}\t{}",
                t(&r.param),
                t(&r.normalized),
                t(&r.exact),
                r.grp
            );
        }
        for r in &rows.tokens {
            let _ = writeln!(
                tables[3].1,
                "Patient\t{id}\t{}\t{}\t{}\t{}\t{}",
                t(&r.param),
                o(&r.system),
                o(&r.code),
                o(&r.text),
                r.grp
            );
        }
        for r in &rows.references {
            let _ = writeln!(
                tables[4].1,
                "Patient\t{id}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                t(&r.param),
                o(&r.target_type),
                o(&r.target_id),
                o(&r.url),
                o(&r.identifier_system),
                o(&r.identifier_value),
                r.grp
            );
        }
        for r in &rows.dates {
            let (low, high) = (
                fhir::datetime::format_instant(r.low),
                fhir::datetime::format_instant(r.high),
            );
            let _ = writeln!(
                tables[5].1,
                "Patient\t{id}\t{}\t{low}\t{high}\t{}",
                t(&r.param),
                r.grp
            );
        }
        for r in &rows.uris {
            let _ = writeln!(
                tables[6].1,
                "Patient\t{id}\t{}\t{}\t{}",
                t(&r.param),
                t(&r.uri),
                r.grp
            );
        }
    }
    tables
}

pub async fn run(options: TransactionBenchOptions) -> Result<String, StartError> {
    let db_err = |e: String| StartError::Database(e);
    let database = server::open_bench_database(&options.database, options.concurrency).await?;
    let server = start_server(&database).await?;
    let addr = server.addr;
    let n = options.resources;
    let mut lines = Vec::new();
    let mut first = 0;
    let phases = [
        (Entries::Post, 1usize),
        (Entries::Post, 100),
        (Entries::Post, 1000),
        (Entries::PutNew, 1000),
        (Entries::PutChanged, 1000),
        (Entries::PostIfNoneExist, 1000),
    ];
    for (entries, size) in phases {
        let bundles = n.div_ceil(size);
        // The updates rewrite what the PUT creates wrote.
        let start = match entries {
            Entries::PutChanged => first - bundles * size,
            _ => first,
        };
        let phase = run_phase(
            "transaction",
            bundles,
            options.concurrency,
            move |counter| async move {
                let mut conn = Connection::open(addr).await?;
                let mut latencies = Vec::new();
                while let Some(b) = counter.next() {
                    let body = transaction(entries, start + b * size, size);
                    let t = Instant::now();
                    let reply = conn.send("POST", "/fhir", Some(body.as_bytes())).await?;
                    latencies.push(t.elapsed());
                    if reply.status != 200 {
                        return Err(format!("transaction answered {}", reply.status));
                    }
                }
                Ok(latencies)
            },
        )
        .await
        .map_err(db_err)?;
        if !matches!(entries, Entries::PutChanged) {
            first += bundles * size;
        }
        let rate = (bundles * size) as f64 / phase.wall.as_secs_f64();
        lines.push((entries.label(), size, rate, phase.line()));
    }
    // The ceiling: the same kind of rows, prepared beforehand, by COPY.
    let tables = Arc::new(copy_rows(n));
    let mut client = database
        .pool
        .get()
        .await
        .map_err(|e| db_err(e.to_string()))?;
    let started = Instant::now();
    let tx = client
        .transaction()
        .await
        .map_err(|e| db_err(e.to_string()))?;
    for (table, rows) in tables.iter() {
        let sink = tx
            .copy_in::<_, bytes::Bytes>(&format!("COPY {table} FROM STDIN"))
            .await
            .map_err(|e| db_err(e.to_string()))?;
        let mut sink = Box::pin(sink);
        sink.send(bytes::Bytes::from(rows.clone()))
            .await
            .map_err(|e| db_err(e.to_string()))?;
        sink.as_mut()
            .finish()
            .await
            .map_err(|e| db_err(e.to_string()))?;
    }
    tx.commit().await.map_err(|e| db_err(e.to_string()))?;
    let copy_rate = n as f64 / started.elapsed().as_secs_f64();
    drop(client);
    server.stop();
    database.close().await;
    let mut report = format!(
        "Passerelle transaction bench: {n} Patients per Bundle size, {} concurrent clients, {} cores\n",
        options.concurrency,
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    for (label, size, rate, line) in lines {
        let _ = writeln!(
            report,
            "{label:<17} Bundles of {size:>4}: {rate:>8.0} resources/s ({:.2} of COPY)   {line}",
            rate / copy_rate
        );
    }
    let _ = write!(
        report,
        "ceiling, COPY of the same rows: {copy_rate:.0} resources/s"
    );
    Ok(report)
}
