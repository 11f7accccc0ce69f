//! Benchmarks over real HTTP against a real database: `passerelle bench` (create and
//! read, beside their SQL ceiling) and `passerelle bench-search` (a synthetic
//! population and a fixed list of realistic searches). What both share: phases of
//! timed operations, and a light HTTP/1.1 client.

pub mod rest;
pub mod search;
pub mod subscriptions;
pub mod transaction;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::server::{self, Database, ServeOptions, StartError};

/// Latencies of one phase.
pub(crate) struct Phase {
    name: &'static str,
    wall: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((self.latencies.len() as f64) * p).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    pub(crate) fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "{:<48} {:>10.0}/s   p50 {:>7.2} ms   p99 {:>7.2} ms   ({} ops in {:.2} s)",
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
pub(crate) struct Counter {
    next: Arc<AtomicUsize>,
    total: usize,
}

impl Counter {
    pub(crate) fn next(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.total).then_some(i)
    }
}

/// Runs `workers` tasks that share `total` operations; each returns the latencies
/// of the operations it did.
pub(crate) async fn run_phase<W, Fut>(
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
pub(crate) struct Connection {
    stream: BufReader<TcpStream>,
    host: String,
}

pub(crate) struct HttpReply {
    pub status: u16,
    pub location: Option<String>,
}

impl Connection {
    pub(crate) async fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Connection {
            stream: BufReader::new(stream),
            host: addr.to_string(),
        })
    }

    pub(crate) async fn send(
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

/// The API served in the bench process, with its delivery workers.
pub(crate) struct BenchServer {
    pub addr: SocketAddr,
    running: server::Running,
}

impl BenchServer {
    pub(crate) fn stop(self) {
        drop(self.running);
    }
}

/// Serves the API over `database` on an ephemeral local port; callbacks may go to
/// loopback (the subscription bench's listener lives in this process).
pub(crate) async fn start_server(database: &Database) -> Result<BenchServer, StartError> {
    start_server_with(database, crate::delivery::Tuning::default()).await
}

pub(crate) async fn start_server_with(
    database: &Database,
    delivery: crate::delivery::Tuning,
) -> Result<BenchServer, StartError> {
    let serve = ServeOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        base_url: None,
        max_body_bytes: 16 << 20,
        rules: crate::service::Rules {
            endpoints: crate::subscription::EndpointPolicy {
                allow_insecure: true,
            },
            ..Default::default()
        },
        delivery,
        limits: server::RequestLimits::default(),
    };
    let listener = tokio::net::TcpListener::bind(serve.listen).await?;
    let running = server::start(
        database.pool.clone(),
        &database.config,
        &serve,
        listener,
        std::future::pending(),
    )
    .await?;
    Ok(BenchServer {
        addr: running.local,
        running,
    })
}
