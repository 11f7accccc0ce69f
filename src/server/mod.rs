//! Starting and stopping: the database (given by URL, or the embedded cluster),
//! migrations, the HTTP listener and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::delivery;
use crate::fhir::datetime;
use crate::state::{AppState, Settings};
use crate::store::embedded::EmbeddedError;

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
    #[error("{0}")]
    Config(String),
}

mod accept;
mod database;

use accept::{raise_open_file_limit, serve_on};
pub use database::{
    ensure_database, open_bench_database, open_database, parse_duration, pool_for, Database,
    DatabaseArgs, DatabaseChoice,
};

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub base_url: Option<String>,
    pub max_body_bytes: usize,
    pub rules: crate::service::Rules,
    pub delivery: delivery::Tuning,
    pub limits: RequestLimits,
    pub auth: crate::auth::AuthSetting,
    /// Every request recorded in the audit trail before it is answered.
    pub audit: bool,
    /// The origins browser apps may call from.
    pub cors: crate::http::cors::CorsOrigins,
    /// The proxies whose `Forwarded` and `X-Forwarded-*` headers are believed.
    pub trusted_proxies: crate::http::forwarded::TrustedProxies,
    /// How background jobs (exports, reindexing) are leased.
    pub jobs: crate::service::jobs::JobTuning,
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
    /// Longest wait for a database connection, free or new (503 beyond).
    pub pool_timeout: Duration,
    /// On SIGTERM, the longest wait for the requests in flight to finish.
    pub shutdown_timeout: Duration,
    /// Bytes of large request bodies (64 KiB and more) served at once; more wait.
    /// A body costs about ten times its size while it is parsed, checked, indexed
    /// and written: this bounds the server's memory whatever the concurrency.
    pub large_bodies_in_flight: usize,
}

impl RequestLimits {
    /// The pool these limits ask for, with `size` connections.
    pub fn pool(&self, size: usize) -> crate::store::pool::PoolSettings {
        crate::store::pool::PoolSettings {
            size,
            statement_timeout: Some(self.statement_timeout),
            wait_timeout: self.pool_timeout,
        }
    }
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            max_connections: 512,
            statement_timeout: Duration::from_secs(30),
            pool_timeout: crate::store::pool::DEFAULT_WAIT,
            shutdown_timeout: Duration::from_secs(30),
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
    metrics: Arc<crate::metrics::Metrics>,
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
    delivery::start(pool.clone(), config.clone(), settings, sink, hub, metrics)
        .map_err(|e| StartError::Database(format!("delivery client: {e}")))
}

fn app_state(
    pool: Pool,
    options: &ServeOptions,
    hub: Arc<delivery::websocket::Hub>,
    metrics: Arc<crate::metrics::Metrics>,
    auditor: Option<Arc<crate::audit::Auditor>>,
) -> AppState {
    // Never below the body limit, so that any one body fits.
    let budget = options
        .limits
        .large_bodies_in_flight
        .max(options.max_body_bytes);
    let budget_kib = budget
        .div_ceil(1024)
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    AppState::new(crate::state::Shared {
        hub,
        metrics,
        auditor,
        reads: crate::store::LatestReads::start(pool.clone()),
        pool,
        guard: crate::auth::Guard::new(&options.auth),
        body_budget: Arc::new(tokio::sync::Semaphore::new(budget_kib)),
        settings: Arc::new(Settings {
            base_url: options.base_url.clone(),
            max_body_bytes: options.max_body_bytes,
            body_read_timeout: options.limits.body_read_timeout,
            started: datetime::format_instant(chrono::Utc::now()),
            cors: options.cors.clone(),
            trusted_proxies: options.trusted_proxies.clone(),
        }),
        rules: Arc::new(options.rules.clone()),
    })
}

/// A server started by [`start`]: its address, the accept loop, the delivery
/// workers and the watcher of SearchParameter changes.
pub struct Running {
    pub local: SocketAddr,
    pub rules: Arc<crate::service::Rules>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    watcher: tokio::task::JoinHandle<()>,
    escalations: tokio::task::JoinHandle<()>,
    delivery: Option<delivery::Delivery>,
    jobs: Vec<tokio::task::JoinHandle<()>>,
    /// What this instance's job leases are named after.
    job_instance: String,
    pool: Pool,
}

impl Running {
    /// Waits for the accept loop to end (after `shutdown`), then stops the rest,
    /// giving the delivery leases back.
    pub async fn wait(mut self) -> std::io::Result<()> {
        let serving = (&mut self.serving).await;
        let delivery = self.delivery.take();
        self.stop_background();
        if let Some(d) = delivery {
            d.stop_and_release().await;
        }
        crate::service::jobs::release(&self.pool, &self.job_instance).await;
        serving.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    fn stop_background(&mut self) {
        self.watcher.abort();
        self.escalations.abort();
        for runner in &self.jobs {
            runner.abort();
        }
        if let Some(d) = self.delivery.as_mut() {
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
/// the watcher of changes made by other instances, the delivery workers, the
/// escalation of unacknowledged notifications, and the accept loop until
/// `shutdown` completes.
pub async fn start(
    pool: Pool,
    config: &tokio_postgres::Config,
    options: &ServeOptions,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let local = listener.local_addr()?;
    let to_err = |e: crate::error::FhirError| StartError::Database(e.to_string());
    let seen = crate::service::Fingerprints {
        search_parameters: crate::service::load_search_parameters(&pool, &options.rules.catalog)
            .await
            .map_err(to_err)?,
        profiles: crate::service::load_profiles(&pool, &options.rules.profiles)
            .await
            .map_err(to_err)?,
    };
    let watcher = tokio::spawn(crate::service::watch_definitions(
        pool.clone(),
        Arc::new(options.rules.clone()),
        seen,
        DEFINITIONS_POLL,
    ));
    let hub = delivery::websocket::Hub::new();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let delivery = start_delivery(&pool, config, options, local, hub.clone(), metrics.clone())?;
    let auditor = match options.audit {
        true => Some(crate::audit::Auditor::start(config.clone())?),
        false => None,
    };
    let state = app_state(pool.clone(), options, hub, metrics, auditor);
    let rules = state.rules.clone();
    // A short delay (tests, drills) is looked at more often than the poll.
    let acks = options.rules.acks;
    let every = acks
        .poll
        .min(acks.escalate_after / 4)
        .max(Duration::from_millis(100));
    let escalations = tokio::spawn(crate::service::watch_escalations(
        pool.clone(),
        rules.clone(),
        every,
    ));
    let job_instance = format!("{}-jobs", uuid::Uuid::new_v4().simple());
    let mut jobs = crate::service::jobs::start_runners(&pool, &rules, options.jobs, &job_instance);
    let autovacuum =
        crate::service::report_database_settings(&pool, options.jobs.analyze_every).await;
    if let Some(every) = options.jobs.analyze_every {
        jobs.push(tokio::spawn(crate::service::watch_statistics(
            pool.clone(),
            every,
            !autovacuum,
        )));
    }
    let serving = tokio::spawn(serve_on(listener, state, options.limits.clone(), shutdown));
    Ok(Running {
        local,
        rules,
        serving,
        watcher,
        escalations,
        delivery: Some(delivery),
        jobs,
        job_instance,
        pool,
    })
}

/// How often an instance looks for SearchParameters written through another.
const DEFINITIONS_POLL: Duration = Duration::from_secs(5);

/// Whether the server may listen on `listen` with `auth` (without
/// authentication, only on loopback), said in the log, loudly when it is off:
/// checked before anything else starts.
pub fn check_auth(auth: &crate::auth::AuthSetting, listen: SocketAddr) -> Result<(), StartError> {
    auth.check_listen(listen).map_err(StartError::Config)?;
    match auth {
        crate::auth::AuthSetting::None => tracing::warn!(
            "PASSERELLE_AUTH=none: AUTHENTICATION IS OFF, anyone who reaches {listen} reads and writes every patient's data (development only)"
        ),
        crate::auth::AuthSetting::Unset => {
            tracing::warn!("no PASSERELLE_AUTH: serving without authentication, on loopback only")
        }
        crate::auth::AuthSetting::Smart(smart) => tracing::info!(
            issuer = %smart.issuer, audience = %smart.audience,
            "SMART on FHIR bearer tokens required"
        ),
    }
    Ok(())
}

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
    let watchdog = database.keep_cluster_running();
    let result = running.wait().await;
    tracing::info!("shutting down");
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
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
