//! `passerelle bench`: create and read throughput over real HTTP against a real
//! database, beside the ceiling measured in the same run (the same reads as a
//! prepared SQL `SELECT` through the same pool).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use serde_json::json;

use crate::server::{self, DatabaseChoice, ServeOptions, StartError};
use crate::store;

pub struct BenchOptions {
    pub database: DatabaseChoice,
    pub resources: usize,
    /// How many times each resource is read (longer read phases, steadier figures).
    pub read_passes: usize,
    pub concurrency: usize,
}

/// Latencies of one phase.
struct Phase {
    name: &'static str,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((self.latencies.len() as f64) * p).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn line(&self) -> String {
        format!(
            "{:<28} {:>10.0}/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ops in {:.2} s)",
            self.name,
            self.per_second(),
            self.percentile(0.50).as_secs_f64() * 1000.0,
            self.percentile(0.99).as_secs_f64() * 1000.0,
            self.latencies.len(),
            self.wall.as_secs_f64()
        )
    }
}

/// Hands out operation numbers to workers until `total` is reached.
#[derive(Clone)]
struct Counter {
    next: Arc<AtomicUsize>,
    total: usize,
}

impl Counter {
    fn next(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.total).then_some(i)
    }
}

/// Runs `workers` tasks that share `total` operations; each returns the latencies
/// of the operations it did.
async fn run_phase<W, Fut>(
    name: &'static str,
    total: usize,
    workers: usize,
    worker: W,
) -> Result<Phase, String>
where
    W: Fn(Counter) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Duration>, String>> + Send + 'static,
{
    let counter = Counter {
        next: Arc::new(AtomicUsize::new(0)),
        total,
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| tokio::spawn(worker(counter.clone())))
        .collect();
    let mut latencies = Vec::with_capacity(total);
    for task in tasks {
        latencies.extend(task.await.map_err(|e| e.to_string())??);
    }
    latencies.sort_unstable();
    Ok(Phase {
        name,
        wall: started.elapsed(),
        latencies,
    })
}

/// A minimal HTTP/1.1 keep-alive client: one connection per worker, as a load tool
/// such as wrk does, so that the client costs little of the CPU it shares with the
/// server.
struct Connection {
    stream: BufReader<TcpStream>,
    host: String,
}

struct HttpReply {
    status: u16,
    location: Option<String>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Connection {
            stream: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpReply, String> {
        let io = |e: std::io::Error| e.to_string();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/fhir+json\r\nPrefer: return=minimal\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut request = head.into_bytes();
        request.extend_from_slice(body.unwrap_or_default());
        self.stream
            .get_mut()
            .write_all(&request)
            .await
            .map_err(io)?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await.map_err(io)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line '{line}'"))?;
        let (mut length, mut location) = (0usize, None);
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.map_err(io)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.trim().parse().unwrap_or(0),
                    "location" => location = Some(value.trim().to_owned()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await.map_err(io)?;
        Ok(HttpReply { status, location })
    }
}

/// A plausible French patient, deterministic in `i`.
fn patient(i: usize) -> serde_json::Value {
    const FAMILY: &[&str] = &[
        "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand",
    ];
    const GIVEN: &[&str] = &[
        "Léa", "Louis", "Chloé", "Gabriel", "Manon", "Jules", "Camille", "Hugo",
    ];
    const CITY: &[(&str, &str)] = &[
        ("Lyon", "69003"),
        ("Rennes", "35000"),
        ("Albi", "81000"),
        ("Tulle", "19000"),
    ];
    let (city, postcode) = CITY[i % CITY.len()];
    json!({
        "resourceType": "Patient",
        "identifier": [{
            "system": "urn:oid:1.2.250.1.213.1.4.10",
            "value": format!("{:013}", 1_700_000_000_000u64 + i as u64),
        }],
        "active": true,
        "name": [{"family": FAMILY[i % FAMILY.len()], "given": [GIVEN[(i / 8) % GIVEN.len()]]}],
        "gender": if i.is_multiple_of(2) { "female" } else { "male" },
        "birthDate": format!("{}-{:02}-{:02}", 1930 + i % 80, 1 + i % 12, 1 + i % 28),
        "address": [{"line": [format!("{} rue de la République", 1 + i % 120)], "city": city, "postalCode": postcode, "country": "FR"}],
        "telecom": [{"system": "phone", "value": format!("06{:08}", i % 100_000_000)}],
    })
}

pub async fn run(options: BenchOptions) -> Result<String, StartError> {
    let db_err = |e: String| StartError::Database(e);
    let database = server::open_bench_database(&options.database, options.concurrency).await?;
    let serve = ServeOptions {
        listen: "127.0.0.1:0"
            .parse()
            .map_err(|_| db_err("bad address".into()))?,
        base_url: None,
        max_body_bytes: 16 << 20,
    };
    let listener = tokio::net::TcpListener::bind(serve.listen).await?;
    let addr = listener.local_addr()?;
    let state = server::app_state(database.pool.clone(), &serve);
    let server_task = tokio::spawn(server::serve_on(listener, state, std::future::pending()));
    let n = options.resources;
    let ids: Arc<Vec<OnceLock<String>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());

    let ids_w = ids.clone();
    let create = run_phase("create (HTTP POST)", n, options.concurrency, |counter| {
        let ids = ids_w.clone();
        async move {
            let mut conn = Connection::open(addr).await?;
            let mut latencies = Vec::new();
            while let Some(i) = counter.next() {
                let body = patient(i).to_string();
                let t = Instant::now();
                let reply = conn
                    .send("POST", "/fhir/Patient", Some(body.as_bytes()))
                    .await?;
                latencies.push(t.elapsed());
                if reply.status != 201 {
                    return Err(format!("create answered {}", reply.status));
                }
                let id = reply
                    .location
                    .as_deref()
                    .and_then(|l| l.split('/').rev().nth(2))
                    .ok_or("no Location")?;
                let _ = ids[i].set(id.to_owned());
            }
            Ok(latencies)
        }
    })
    .await
    .map_err(db_err)?;

    // Reads in a scrambled order so that they do not follow insertion order (7919 is
    // prime: a permutation of 0..n unless n is a multiple of it).
    let order = move |i: usize| (i * 7919) % n;
    let ids_r = ids.clone();
    let reads = n * options.read_passes;
    let read = run_phase(
        "read (HTTP GET by id)",
        reads,
        options.concurrency,
        |counter| {
            let ids = ids_r.clone();
            async move {
                let mut conn = Connection::open(addr).await?;
                let mut latencies = Vec::new();
                while let Some(i) = counter.next() {
                    let path =
                        format!("/fhir/Patient/{}", ids[order(i)].get().ok_or("missing id")?);
                    let t = Instant::now();
                    let reply = conn.send("GET", &path, None).await?;
                    latencies.push(t.elapsed());
                    if reply.status != 200 {
                        return Err(format!("read answered {}", reply.status));
                    }
                }
                Ok(latencies)
            }
        },
    )
    .await
    .map_err(db_err)?;

    let ids_s = ids.clone();
    let pool = database.pool.clone();
    let ceiling = run_phase(
        "ceiling (prepared SELECT)",
        reads,
        options.concurrency,
        |counter| {
            let (ids, pool) = (ids_s.clone(), pool.clone());
            async move {
                let mut latencies = Vec::new();
                while let Some(i) = counter.next() {
                    let id = ids[order(i)].get().ok_or("missing id")?;
                    let t = Instant::now();
                    let client = pool.get().await.map_err(|e| e.to_string())?;
                    store::read_latest(&client, "Patient", id)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or("not found")?;
                    latencies.push(t.elapsed());
                }
                Ok(latencies)
            }
        },
    )
    .await
    .map_err(db_err)?;

    server_task.abort();
    database.close().await;
    let ratio = read.per_second() / ceiling.per_second();
    Ok(format!(
        "Passerelle bench: {n} Patients, {} concurrent clients, {} cores\n{}\n{}\n{}\nHTTP reads / ceiling: {ratio:.2}",
        options.concurrency,
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        create.line(),
        read.line(),
        ceiling.line(),
    ))
}
