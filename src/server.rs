//! Starting and stopping: the database (given by URL, or the embedded cluster),
//! migrations, the HTTP listener and graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use axum::serve::ListenerExt;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
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

/// A connected, migrated database; owns the embedded cluster when there is one.
pub struct Database {
    pub pool: Pool,
    /// Where the pool connects: the delivery listener opens its own connection.
    pub config: tokio_postgres::Config,
    pub cluster: Option<Arc<Cluster>>,
}

/// The name of the database the embedded cluster serves.
const EMBEDDED_DB: &str = "passerelle";

pub fn pool_for(config: tokio_postgres::Config, size: usize) -> Result<Pool, StartError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| StartError::Database(e.to_string()))
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

async fn migrated_pool(config: tokio_postgres::Config, size: usize) -> Result<Pool, StartError> {
    let pool = pool_for(config, size)?;
    let mut client = pool
        .get()
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    let applied = migrate::migrate(&mut client)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    if !applied.is_empty() {
        tracing::info!(?applied, "schema migrated");
    }
    drop(client);
    Ok(pool)
}

/// Connects (starting the embedded cluster if chosen) and applies migrations.
pub async fn open_database(
    choice: &DatabaseChoice,
    pool_size: usize,
) -> Result<Database, StartError> {
    let (config, cluster) = locate(choice).await?;
    let pool = migrated_pool(config.clone(), pool_size).await?;
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
    let pool = migrated_pool(bench_config.clone(), pool_size).await?;
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
pub fn start_delivery(
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

pub fn app_state(
    pool: Pool,
    options: &ServeOptions,
    hub: Arc<delivery::websocket::Hub>,
) -> AppState {
    AppState {
        hub,
        pool,
        settings: Arc::new(Settings {
            base_url: options.base_url.clone(),
            max_body_bytes: options.max_body_bytes,
            started: datetime::format_instant(chrono::Utc::now()),
        }),
        rules: Arc::new(options.rules.clone()),
    }
}

/// Serves the FHIR API on `listener` until `shutdown` completes.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Responses are written whole; do not let Nagle hold back the last segment.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, http::router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves until SIGINT or SIGTERM, then shuts down gracefully.
pub async fn serve(database: Database, options: ServeOptions) -> Result<(), StartError> {
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| StartError::Listen(options.listen, e))?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "Passerelle listening; FHIR base is http://{local}/fhir");
    let fingerprint = crate::service::load_search_parameters(&database.pool)
        .await
        .map_err(|e| StartError::Database(e.to_string()))?;
    let watcher = tokio::spawn(crate::service::watch_search_parameters(
        database.pool.clone(),
        fingerprint,
        std::time::Duration::from_secs(5),
    ));
    let hub = delivery::websocket::Hub::new();
    let delivery = start_delivery(
        &database.pool,
        &database.config,
        &options,
        local,
        hub.clone(),
    )?;
    let state = app_state(database.pool.clone(), &options, hub);
    let result = serve_on(listener, state, shutdown_signal()).await;
    watcher.abort();
    delivery.stop();
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
