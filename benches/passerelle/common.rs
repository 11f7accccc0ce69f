//! What the benchmarks share: phases of timed operations, an HTTP client per worker,
//! and the server they measure, started in this process over a fresh database.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use passerelle::server::{self, Database, ServeOptions, StartError};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Latencies of one phase.
pub struct Phase {
    pub name: &'static str,
    pub wall: Duration,
    pub latencies: Vec<Duration>,
}

impl Phase {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = ((self.latencies.len() as f64) * p).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    pub fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    pub fn line(&self) -> String {
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
pub struct Counter {
    next: Arc<AtomicUsize>,
    total: usize,
}

impl Counter {
    pub fn next(&self) -> Option<usize> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.total).then_some(i)
    }
}

/// Runs `workers` tasks that share `total` operations; each returns the latencies
/// of the operations it did.
pub async fn run_phase<W, Fut>(
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

/// One worker's HTTP client: hyper's HTTP/1.1 client on one keep-alive
/// connection, as a load tool such as wrk keeps one per worker.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    /// `Authorization: Bearer …` of every request, when set.
    bearer: Option<String>,
}

pub struct HttpReply {
    pub status: u16,
    pub location: Option<String>,
    pub body: Bytes,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Result<Self, String> {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok(Connection {
            sender,
            host: addr.to_string(),
            bearer: None,
        })
    }

    /// POSTs a resource, expecting 201: its id (from `Location`).
    pub async fn create(&mut self, path: &str, body: &[u8]) -> Result<String, String> {
        let reply = self.send("POST", path, Some(body)).await?;
        if reply.status != 201 {
            return Err(format!("create answered {}", reply.status));
        }
        reply
            .location
            .as_deref()
            .and_then(|l| l.split('/').rev().nth(2))
            .map(str::to_owned)
            .ok_or_else(|| "no Location".to_owned())
    }

    /// GETs `path`, expecting 200: how long the answer took.
    pub async fn timed_get(&mut self, path: &str) -> Result<Duration, String> {
        let started = Instant::now();
        let reply = self.send("GET", path, None).await?;
        let took = started.elapsed();
        match reply.status {
            200 => Ok(took),
            status => Err(format!("GET {path} answered {status}")),
        }
    }

    /// A connection whose requests carry `token`.
    pub async fn with_token(addr: SocketAddr, token: &str) -> Result<Self, String> {
        let mut connection = Connection::open(addr).await?;
        connection.bearer = Some(format!("Bearer {token}"));
        Ok(connection)
    }

    /// Sends a request (a body as FHIR JSON, answered `return=minimal`) and reads
    /// the whole answer.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpReply, String> {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if let Some(bearer) = &self.bearer {
            request = request.header("authorization", bearer);
        }
        if body.is_some() {
            request = request
                .header("content-type", "application/fhir+json")
                .header("prefer", "return=minimal");
        }
        let request = request
            .body(Full::new(Bytes::copy_from_slice(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(HttpReply {
            status,
            location,
            body,
        })
    }
}

/// When the callback about each key (what `key` reads of its body) arrived at a
/// [`Listener`].
pub struct Arrivals {
    at: Mutex<HashMap<String, Instant>>,
    changed: Notify,
    key: fn(&serde_json::Value) -> Option<String>,
}

/// A listener in the bench process standing for the subscribers' endpoints;
/// stops when dropped.
pub struct Listener {
    pub arrivals: Arc<Arrivals>,
    /// Its base URL: any path under it is received.
    pub base: String,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(arrivals): State<Arc<Arrivals>>, body: Bytes) -> &'static str {
    let now = Instant::now();
    let key = serde_json::from_slice(&body)
        .ok()
        .and_then(|v| (arrivals.key)(&v));
    if let (Some(key), Ok(mut at)) = (key, arrivals.at.lock()) {
        at.insert(key, now);
    }
    arrivals.changed.notify_waiters();
    "ok"
}

impl Listener {
    /// Listens on a loopback port, noting callbacks by `key`.
    pub async fn start(key: fn(&serde_json::Value) -> Option<String>) -> std::io::Result<Listener> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let arrivals = Arc::new(Arrivals {
            at: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            key,
        });
        let app = axum::Router::new()
            .fallback(axum::routing::post(receive))
            .with_state(arrivals.clone());
        let task = tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Listener {
            arrivals,
            base,
            task,
        })
    }
}

impl Arrivals {
    /// Waits until `n` callbacks have arrived (or two minutes have passed).
    pub async fn drained(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.at.lock().map(|a| a.len()).unwrap_or(0) < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `write`, then waits for the callback keyed `key`: the time from the
    /// end of the write to the callback's arrival.
    pub async fn time(
        &self,
        key: &str,
        write: impl std::future::Future<Output = Result<(), String>>,
    ) -> Result<Duration, String> {
        let waiting = self.changed.notified();
        tokio::pin!(waiting);
        waiting.as_mut().enable();
        write.await?;
        let answered = Instant::now();
        let deadline = answered + Duration::from_secs(10);
        loop {
            if let Some(at) = self.at.lock().ok().and_then(|a| a.get(key).copied()) {
                return Ok(at.saturating_duration_since(answered));
            }
            if Instant::now() > deadline {
                return Err(format!("no callback for {key} within 10 s"));
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), waiting.as_mut()).await;
            waiting.set(self.changed.notified());
            waiting.as_mut().enable();
        }
    }
}

/// The API served in the bench process, with its delivery workers.
pub struct BenchServer {
    pub addr: SocketAddr,
    running: server::Running,
}

impl BenchServer {
    pub fn stop(self) {
        drop(self.running);
    }
}

/// Serves the API over `database` on an ephemeral local port; callbacks may go to
/// loopback (the subscription bench's listener lives in this process).
pub async fn start_server(database: &Database) -> Result<BenchServer, StartError> {
    start_server_with(database, passerelle::delivery::Tuning::default()).await
}

/// An instance that writes events and leaves their delivery to others: the
/// write path with its outbox alone.
pub async fn start_writer(database: &Database) -> Result<BenchServer, StartError> {
    let delivery = passerelle::delivery::Tuning {
        workers: 0,
        ..Default::default()
    };
    start_server_with(database, delivery).await
}

pub async fn start_server_with(
    database: &Database,
    delivery: passerelle::delivery::Tuning,
) -> Result<BenchServer, StartError> {
    start_guarded(
        database,
        delivery,
        passerelle::auth::AuthSetting::Unset,
        true,
    )
    .await
}

/// A server with this authentication and auditing.
pub async fn start_guarded(
    database: &Database,
    delivery: passerelle::delivery::Tuning,
    auth: passerelle::auth::AuthSetting,
    audit: bool,
) -> Result<BenchServer, StartError> {
    start_options(database, &bench_options(delivery, auth, audit)).await
}

/// The options of a bench server: loopback callbacks allowed, default limits.
pub fn bench_options(
    delivery: passerelle::delivery::Tuning,
    auth: passerelle::auth::AuthSetting,
    audit: bool,
) -> ServeOptions {
    ServeOptions {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        base_url: None,
        max_body_bytes: 16 << 20,
        rules: passerelle::service::Rules {
            endpoints: passerelle::subscription::EndpointPolicy {
                allow_insecure: true,
                email: false,
            },
            ..Default::default()
        },
        delivery,
        limits: server::RequestLimits::default(),
        auth,
        audit,
        cors: Default::default(),
        trusted_proxies: Default::default(),
        jobs: Default::default(),
    }
}

/// A server started with `serve` on an ephemeral port.
pub async fn start_options(
    database: &Database,
    serve: &ServeOptions,
) -> Result<BenchServer, StartError> {
    let listener = tokio::net::TcpListener::bind(serve.listen).await?;
    let running = server::start(
        database.pool.clone(),
        &database.config,
        serve,
        listener,
        std::future::pending(),
    )
    .await?;
    Ok(BenchServer {
        addr: running.local,
        running,
    })
}

/// Fresh statistics after a load, as autovacuum would give them later: the
/// phases that follow are timed on the plans a settled database gets.
pub async fn vacuum_analyze(database: &Database) -> Result<(), StartError> {
    let err = |e: String| StartError::Database(e);
    let client = database.pool.get().await.map_err(|e| err(e.to_string()))?;
    client
        .batch_execute("VACUUM ANALYZE")
        .await
        .map_err(|e| err(e.to_string()))
}
