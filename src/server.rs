//! Starting and stopping: the database (given by URL, or the embedded cluster),
//! migrations, the HTTP listener and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::NoTls;

use crate::delivery;
use crate::fhir::datetime;
use crate::http;
use crate::state::{AppState, Settings};
use crate::store::embedded::{Cluster, EmbeddedError};
use crate::store::migrate;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("DATABASE_URL is not a valid PostgreSQL connection string: {0}")]
    BadUrl(String),
    #[error("cannot use the database: {0}")]
    Database(String),
    #[error("cannot listen on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum DatabaseChoice {
    /// An existing PostgreSQL server (libpq URL or key=value string).
    Url(String),
    /// The embedded cluster under this folder.
    Embedded(PathBuf),
}

/// The command-line choice of database, shared by the server's commands and the
/// benchmarks.
#[derive(clap::Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// PostgreSQL connection string (libpq URL). Without it, an embedded cluster is
    /// started under --data-dir.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Folder of the embedded PostgreSQL cluster (used when no database URL is given).
    #[arg(long, env = "PASSERELLE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

impl DatabaseArgs {
    pub fn choice(&self) -> DatabaseChoice {
        match self.database_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => DatabaseChoice::Url(url.to_owned()),
            None => DatabaseChoice::Embedded(self.data_dir.clone()),
        }
    }
}

/// A connected, migrated database; owns the embedded cluster when there is one.
pub struct Database {
    pub pool: Pool,
    /// Where the pool connects: the delivery listener opens its own connection.
    pub config: tokio_postgres::Config,
    pub cluster: Option<Arc<Cluster>>,
}

/// The name of the database the embedded cluster serves.
const EMBEDDED_DB: &str = "passerelle";

/// A pool of `size` connections (see [`crate::store::pool`]); with a statement
/// timeout, PostgreSQL ends any statement that runs longer.
pub fn pool_for(
    config: tokio_postgres::Config,
    size: usize,
    statement_timeout: Option<Duration>,
) -> Result<Pool, StartError> {
    crate::store::pool::build(config, size, statement_timeout).map_err(StartError::Database)
}

/// Reads a duration written `30s`, `500ms`, `2m` or `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration such as 30s or 500ms"))?;
    let millis = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => None,
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("'{text}' is not a duration such as 30s or 500ms"))
}

/// Creates `name` on the server of `admin` if it does not exist.
pub async fn ensure_database(admin: &tokio_postgres::Config, name: &str) -> Result<(), StartError> {
    let db_err = |e: tokio_postgres::Error| StartError::Database(e.to_string());
    let (client, connection) = admin.connect(NoTls).await.map_err(db_err)?;
    let task = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .map_err(db_err)?
        .is_some();
    if !exists {
        let quoted = name.replace('"', "\"\"");
        if let Err(e) = client
            .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
            .await
        {
            // Another instance may have created it at the same moment.
            if e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) {
                return Err(db_err(e));
            }
        }
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

/// The connection settings of the chosen server; starts the embedded cluster (and
/// creates its database) when that is the choice.
async fn locate(
    choice: &DatabaseChoice,
) -> Result<(tokio_postgres::Config, Option<Arc<Cluster>>), StartError> {
    match choice {
        DatabaseChoice::Url(url) => {
            let config: tokio_postgres::Config = url
                .parse()
                .map_err(|e: tokio_postgres::Error| StartError::BadUrl(e.to_string()))?;
            Ok((config, None))
        }
        DatabaseChoice::Embedded(dir) => {
            let dir = dir.clone();
            let cluster = tokio::task::spawn_blocking(move || Cluster::start(&dir))
                .await
                .map_err(|e| StartError::Database(e.to_string()))??;
            ensure_database(&cluster.config("postgres"), EMBEDDED_DB).await?;
            Ok((cluster.config(EMBEDDED_DB), Some(Arc::new(cluster))))
        }
    }
}

/// Applies the migrations on a connection of their own (they may run longer than
/// any request may), then opens the pool.
async fn migrated_pool(
    config: tokio_postgres::Config,
    size: usize,
    statement_timeout: Option<Duration>,
) -> Result<Pool, StartError> {
    let db_err = |e: tokio_postgres::Error| StartError::Database(e.to_string());
    let (mut client, connection) = config.connect(NoTls).await.map_err(db_err)?;
    let task = tokio::spawn(connection);
    let applied = migrate::migrate(&mut client)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    if !applied.is_empty() {
        tracing::info!(?applied, "schema migrated");
    }
    drop(client);
    let _ = task.await;
    pool_for(config, size, statement_timeout)
}

/// Connects (starting the embedded cluster if chosen) and applies migrations.
pub async fn open_database(
    choice: &DatabaseChoice,
    pool_size: usize,
    statement_timeout: Option<Duration>,
) -> Result<Database, StartError> {
    let (config, cluster) = locate(choice).await?;
    let pool = migrated_pool(config.clone(), pool_size, statement_timeout).await?;
    Ok(Database {
        pool,
        config,
        cluster,
    })
}

/// A fresh, migrated `passerelle_bench` database on the chosen server, so that a
/// benchmark never touches real data.
pub async fn open_bench_database(
    choice: &DatabaseChoice,
    pool_size: usize,
) -> Result<Database, StartError> {
    let (config, cluster) = locate(choice).await?;
    let db_err = |e: tokio_postgres::Error| StartError::Database(e.to_string());
    let (client, connection) = config.connect(NoTls).await.map_err(db_err)?;
    let task = tokio::spawn(connection);
    // Two statements: PostgreSQL refuses either inside one implicit transaction.
    for sql in [
        "DROP DATABASE IF EXISTS passerelle_bench WITH (FORCE)",
        "CREATE DATABASE passerelle_bench",
    ] {
        client.batch_execute(sql).await.map_err(db_err)?;
    }
    drop(client);
    let _ = task.await;
    let mut bench_config = config;
    bench_config.dbname("passerelle_bench");
    let pool = migrated_pool(bench_config.clone(), pool_size, None).await?;
    Ok(Database {
        pool,
        config: bench_config,
        cluster,
    })
}

impl Database {
    /// Stops the embedded cluster, if this process started one.
    pub async fn close(self) {
        self.pool.close();
        if let Some(cluster) = self.cluster {
            let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
        }
    }
}

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub base_url: Option<String>,
    pub max_body_bytes: usize,
    pub rules: crate::service::Rules,
    pub delivery: delivery::Tuning,
    pub limits: RequestLimits,
}

/// How long a client may take and how many may be connected at once, and how long
/// a statement may run: what keeps slow or hostile clients from holding the
/// server or the database.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// A request's head must arrive within this, counted from when the server
    /// starts waiting for it: also how long an idle keep-alive connection stays.
    pub header_read_timeout: Duration,
    /// The whole body must arrive within this (408 otherwise).
    pub body_read_timeout: Duration,
    /// A response the client takes nothing of for this long is abandoned and the
    /// connection closed.
    pub write_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Longest statement (PostgreSQL's `statement_timeout`; 503 when reached).
    pub statement_timeout: Duration,
    /// Bytes of large request bodies (64 KiB and more) served at once; more wait.
    /// A body costs about ten times its size while it is parsed, checked, indexed
    /// and written: this bounds the server's memory whatever the concurrency.
    pub large_bodies_in_flight: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 512,
            statement_timeout: Duration::from_secs(30),
            large_bodies_in_flight: 32 << 20,
        }
    }
}

/// Puts a subscription whose deliveries keep failing in `error`, or whose end has
/// passed `off`, through the write path (delivery sits below it and is handed this).
struct SubscriptionStatus {
    pool: Pool,
    rules: crate::service::Rules,
}

impl delivery::StatusSink for SubscriptionStatus {
    fn set_status(
        &self,
        sub_id: String,
        outcome: delivery::Outcome,
        reason: String,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let (pool, rules) = (self.pool.clone(), self.rules.clone());
        let (status, error) = match outcome {
            delivery::Outcome::Error => ("error", Some(reason)),
            delivery::Outcome::Ended => ("off", None),
        };
        Box::pin(async move {
            let result = crate::service::subscription_status(
                &pool,
                &rules,
                &sub_id,
                status,
                error.as_deref(),
            )
            .await;
            if let Err(e) = result {
                tracing::warn!(%sub_id, status, error = %e, "could not change the subscription's status");
            }
        })
    }
}

/// Starts the delivery workers for the server at `local` (its FHIR base names
/// the resources in notifications unless a public base URL is set).
fn start_delivery(
    pool: &Pool,
    config: &tokio_postgres::Config,
    options: &ServeOptions,
    local: SocketAddr,
    hub: Arc<delivery::websocket::Hub>,
) -> Result<delivery::Delivery, StartError> {
    let settings = delivery::Settings {
        tuning: options.delivery.clone(),
        policy: options.rules.endpoints,
        base_url: options
            .base_url
            .clone()
            .map(|b| b.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{local}/fhir")),
    };
    let sink = Arc::new(SubscriptionStatus {
        pool: pool.clone(),
        rules: options.rules.clone(),
    });
    delivery::start(pool.clone(), config.clone(), settings, sink, hub)
        .map_err(|e| StartError::Database(format!("delivery client: {e}")))
}

fn app_state(pool: Pool, options: &ServeOptions, hub: Arc<delivery::websocket::Hub>) -> AppState {
    // Never below the body limit, so that any one body fits.
    let budget = options
        .limits
        .large_bodies_in_flight
        .max(options.max_body_bytes);
    let budget_kib = budget
        .div_ceil(1024)
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    AppState {
        hub,
        pool,
        body_budget: Arc::new(tokio::sync::Semaphore::new(budget_kib)),
        settings: Arc::new(Settings {
            base_url: options.base_url.clone(),
            max_body_bytes: options.max_body_bytes,
            body_read_timeout: options.limits.body_read_timeout,
            started: datetime::format_instant(chrono::Utc::now()),
        }),
        rules: Arc::new(options.rules.clone()),
    }
}

/// Serves the FHIR API on `listener` until `shutdown` completes: at most
/// `max_connections` at once, each with hyper's header (and idle) timeout; on
/// shutdown, requests in flight finish.
async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: RequestLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = http::router(state);
    let max_connections = limits.max_connections.clamp(1, u32::MAX as usize);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, most often: wait for some to close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Responses are written whole; do not let Nagle hold back the last segment.
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = builder
            .serve_connection(
                hyper_util::rt::TokioIo::new(WriteTimeout::new(tcp, limits.write_timeout)),
                service,
            )
            .with_upgrades();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = async { stop.wait_for(|stopping| *stopping).await.is_ok() } => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    let _ = stopping.send(true);
    // Every connection holds a slot until it ends: all slots back means all ended.
    // Every connection holds a slot until it ends: all slots back means all ended.
    // A connection that does not end within the grace period is dropped.
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all)).await;
    Ok(())
}

/// How long a shutdown waits for the requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A socket whose writes fail once the peer has taken nothing for `timeout`: a
/// client that stops reading its response cannot hold a connection slot.
struct WriteTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Armed while a write waits for the peer.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> WriteTimeout<T> {
    fn new(inner: T, timeout: Duration) -> Self {
        WriteTimeout {
            inner,
            timeout,
            stalled: None,
        }
    }

    /// After a write that could not proceed: pending until the timeout, then an
    /// error.
    fn wait<R>(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<R>> {
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading its response",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn progress<R>(
        &mut self,
        poll: std::task::Poll<std::io::Result<R>>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<R>> {
        match poll {
            std::task::Poll::Pending => self.wait(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progress(poll, cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progress(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        self.progress(poll, cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Lets this process hold as many sockets as the system allows it (the soft
/// limit is often 1,024, below what `max_connections` plus the pool may need).
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// A server started by [`start`]: its address, the accept loop, the delivery
/// workers and the watcher of SearchParameter changes.
pub struct Running {
    pub local: SocketAddr,
    pub rules: Arc<crate::service::Rules>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    watcher: tokio::task::JoinHandle<()>,
    delivery: Option<delivery::Delivery>,
}

impl Running {
    /// Waits for the accept loop to end (after `shutdown`), then stops the rest.
    pub async fn wait(mut self) -> std::io::Result<()> {
        let serving = (&mut self.serving).await;
        self.stop_background();
        serving.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    fn stop_background(&mut self) {
        self.watcher.abort();
        if let Some(d) = self.delivery.take() {
            d.stop();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_background();
        self.serving.abort();
    }
}

/// Starts a server over `pool` on `listener`, the one way `serve`, the tests and
/// the benchmarks start one: the SearchParameters of the database put in force,
/// the watcher of changes made by other instances, the delivery workers, and the
/// accept loop until `shutdown` completes.
pub async fn start(
    pool: Pool,
    config: &tokio_postgres::Config,
    options: &ServeOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let local = listener.local_addr()?;
    let fingerprint = crate::service::load_search_parameters(&pool, &options.rules.catalog)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    let watcher = tokio::spawn(crate::service::watch_search_parameters(
        pool.clone(),
        options.rules.catalog.clone(),
        fingerprint,
        SEARCH_PARAMETER_POLL,
    ));
    let hub = delivery::websocket::Hub::new();
    let delivery = start_delivery(&pool, config, options, local, hub.clone())?;
    let state = app_state(pool, options, hub);
    let rules = state.rules.clone();
    let serving = tokio::spawn(serve_on(listener, state, options.limits.clone(), shutdown));
    Ok(Running {
        local,
        rules,
        serving,
        watcher,
        delivery: Some(delivery),
    })
}

/// How often an instance looks for SearchParameters written through another.
const SEARCH_PARAMETER_POLL: Duration = Duration::from_secs(5);

/// Serves until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn serve(database: Database, options: ServeOptions) -> Result<(), StartError> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| StartError::Listen(options.listen, e))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "Passerelle listening; FHIR base is http://{local}/fhir");
    raise_open_file_limit();
    let running = start(
        database.pool.clone(),
        &database.config,
        &options,
        listener,
        shutdown_signal(),
    )
    .await?;
    let result = running.wait().await;
    tracing::info!("shutting down");
    database.close().await;
    result.map_err(StartError::Io)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("thirty").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
