//! The database a server runs on: given by URL or the embedded cluster, migrated
//! before the pool is handed out; the command-line choice of it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::NoTls;

use super::StartError;
use crate::store::embedded::Cluster;
use crate::store::migrate;
use crate::store::pool::PoolSettings;

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

/// A pool as `settings` say (see [`crate::store::pool`]).
pub fn pool_for(
    config: tokio_postgres::Config,
    settings: PoolSettings,
) -> Result<Pool, StartError> {
    crate::store::pool::build(config, settings).map_err(StartError::Database)
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
    settings: PoolSettings,
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
    pool_for(config, settings)
}

/// Connects (starting the embedded cluster if chosen) and applies migrations.
pub async fn open_database(
    choice: &DatabaseChoice,
    settings: PoolSettings,
) -> Result<Database, StartError> {
    let (config, cluster) = locate(choice).await?;
    let pool = migrated_pool(config.clone(), settings).await?;
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
    let pool = migrated_pool(bench_config.clone(), PoolSettings::sized(pool_size)).await?;
    Ok(Database {
        pool,
        config: bench_config,
        cluster,
    })
}

/// How often the embedded cluster's postmaster is looked for.
const CLUSTER_WATCH: Duration = Duration::from_secs(1);

impl Database {
    /// With the embedded cluster, a task that starts its postmaster again when it
    /// dies (killed, out of memory): the pool reconnects and the server recovers
    /// by itself. Abort it before [`Database::close`].
    pub fn keep_cluster_running(&self) -> Option<tokio::task::JoinHandle<()>> {
        let cluster = self.cluster.clone()?;
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(CLUSTER_WATCH).await;
                let cluster = cluster.clone();
                match tokio::task::spawn_blocking(move || cluster.ensure_running()).await {
                    Ok(Ok(true)) => {
                        tracing::warn!("the embedded PostgreSQL had stopped: restarted")
                    }
                    Ok(Ok(false)) | Err(_) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "the embedded PostgreSQL is down and does not start yet")
                    }
                }
            }
        }))
    }

    /// Stops the embedded cluster, if this process started one.
    pub async fn close(self) {
        self.pool.close();
        if let Some(cluster) = self.cluster {
            let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
        }
    }
}
