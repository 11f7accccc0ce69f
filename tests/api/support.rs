//! Test harness: a real PostgreSQL (the embedded cluster under the target folder,
//! or `DATABASE_URL` when set), one fresh database per test cloned from a migrated
//! template, and the real HTTP server on an ephemeral port.

use std::path::PathBuf;
use std::sync::OnceLock;

use passerelle::server::{self, ServeOptions};
use passerelle::store::embedded::Cluster;
use passerelle::store::pool::PoolSettings;
use serde_json::Value;
use tokio_postgres::NoTls;

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static TEMPLATE: tokio::sync::OnceCell<tokio_postgres::Config> = tokio::sync::OnceCell::const_new();

const TEMPLATE_DB: &str = "passerelle_test_template";

extern "C" fn stop_cluster() {
    if let Some(cluster) = CLUSTER.get() {
        cluster.stop();
    }
}

/// The databases this test process created, dropped when it exits.
static CREATED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
static DROP_AT_EXIT: std::sync::Once = std::sync::Once::new();

/// Drops the test databases and the template (registered after the cluster's own
/// exit hook, so it runs before the cluster stops).
extern "C" fn drop_test_databases() {
    let names = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let Ok((client, connection)) = admin_config().connect(NoTls).await else {
            return;
        };
        tokio::spawn(connection);
        for name in names.iter().map(String::as_str).chain([TEMPLATE_DB]) {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    });
}

/// The server every test database lives on, with a database to connect to.
fn admin_config() -> tokio_postgres::Config {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.is_empty() {
            return url
                .parse()
                .expect("DATABASE_URL must be a valid connection string");
        }
    }
    let cluster = CLUSTER.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-pg");
        let cluster = Cluster::start(&dir).expect("start the embedded PostgreSQL for tests");
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe {
            libc::atexit(stop_cluster);
        }
        cluster
    });
    cluster.config("postgres")
}

async fn connect(config: &tokio_postgres::Config) -> tokio_postgres::Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    client
}

/// Creates the migrated template once per test process.
async fn template() -> &'static tokio_postgres::Config {
    TEMPLATE
        .get_or_init(|| async {
            let admin = admin_config();
            let client = connect(&admin).await;
            client
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {TEMPLATE_DB} WITH (FORCE)"
                ))
                .await
                .expect("drop old template");
            client
                .batch_execute(&format!("CREATE DATABASE {TEMPLATE_DB}"))
                .await
                .expect("create template");
            let mut config = admin.clone();
            config.dbname(TEMPLATE_DB);
            let pool = server::pool_for(config, PoolSettings::sized(1)).expect("pool");
            let mut c = pool.get().await.expect("template connection");
            passerelle::store::migrate::migrate(&mut c)
                .await
                .expect("migrate template");
            drop(c);
            pool.close();
            admin
        })
        .await
}

/// A fresh, migrated database for one test.
pub async fn fresh_database() -> tokio_postgres::Config {
    let admin = template().await;
    let name = format!("passerelle_test_{}", uuid::Uuid::new_v4().simple());
    let client = connect(admin).await;
    // CREATE DATABASE … TEMPLATE fails while another clone of it is starting: retry.
    let mut attempts = 0;
    loop {
        match client
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
            .await
        {
            Ok(()) => break,
            Err(_) if attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create test database: {e}"),
        }
    }
    CREATED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(name.clone());
    DROP_AT_EXIT.call_once(|| {
        // SAFETY: registering a plain extern "C" function with no captured state.
        unsafe {
            libc::atexit(drop_test_databases);
        }
    });
    let mut config = admin.clone();
    config.dbname(&name);
    config
}

/// The real server on an ephemeral port, over a fresh database.
pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub pool: deadpool_postgres::Pool,
    pub config: tokio_postgres::Config,
    /// Stops the accept loop, the watcher and the delivery workers when dropped.
    running: server::Running,
}

/// Test servers call back to loopback listeners and retry quickly.
pub fn test_options() -> ServeOptions {
    ServeOptions {
        listen: "127.0.0.1:0".parse().expect("address"),
        base_url: None,
        max_body_bytes: 16 * 1024 * 1024,
        rules: passerelle::service::Rules {
            endpoints: passerelle::subscription::EndpointPolicy {
                allow_insecure: true,
                email: false,
            },
            ..Default::default()
        },
        delivery: passerelle::delivery::Tuning {
            workers: 2,
            max_attempts: 4,
            backoff_base: std::time::Duration::from_millis(100),
            backoff_max: std::time::Duration::from_millis(400),
            timeout: std::time::Duration::from_secs(2),
            poll: std::time::Duration::from_millis(250),
            smtp: None,
        },
        limits: passerelle::server::RequestLimits::default(),
        auth: passerelle::auth::AuthSetting::Unset,
        audit: true,
        cors: Default::default(),
        trusted_proxies: Default::default(),
        jobs: Default::default(),
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with_limit(16 * 1024 * 1024).await
    }

    pub async fn start_with_limit(max_body_bytes: usize) -> TestServer {
        let options = ServeOptions {
            max_body_bytes,
            ..test_options()
        };
        Self::start_on(fresh_database().await, options).await
    }

    /// A server over an existing database (a second instance, or other options),
    /// started as `passerelle serve` starts one.
    pub async fn start_on(config: tokio_postgres::Config, options: ServeOptions) -> TestServer {
        let pool = server::pool_for(config.clone(), options.limits.pool(8)).expect("pool");
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .expect("bind");
        let running = server::start(
            pool.clone(),
            &config,
            &options,
            listener,
            std::future::pending(),
        )
        .await
        .expect("start the server");
        TestServer {
            base: format!("http://{}/fhir", running.local),
            http: reqwest::Client::new(),
            pool,
            config,
            running,
        }
    }

    /// The search parameter table in force on this server.
    pub fn params(&self) -> std::sync::Arc<passerelle::search::params::ParamTable> {
        self.running.rules.catalog.params.current()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path.trim_start_matches('/'))
    }

    /// The server's `host:port`, for raw sockets.
    pub fn authority(&self) -> String {
        self.base
            .trim_start_matches("http://")
            .trim_end_matches("/fhir")
            .to_owned()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST")
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .put(self.url(path))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("PUT")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.expect("GET")
    }

    /// Creates a resource and returns its id.
    pub async fn create(&self, body: &Value) -> String {
        let rt = body["resourceType"].as_str().expect("resourceType");
        let resp = self.post_json(rt, body).await;
        assert_eq!(resp.status(), 201, "create {rt}");
        let json = body_json(resp).await;
        json["id"].as_str().expect("id").to_owned()
    }

    /// Rows in the version table: to prove that a failed request wrote nothing.
    pub async fn version_count(&self) -> i64 {
        let client = self.pool.get().await.expect("connection");
        client
            .query_one("SELECT count(*) FROM resource_version", &[])
            .await
            .expect("count")
            .get(0)
    }
}

/// The resources a search answers, in order.
pub async fn found(s: &TestServer, query: &str) -> Vec<Value> {
    let bundle = json_of(s.get(query).await, 200).await;
    bundle["entry"]
        .as_array()
        .map(|e| e.iter().map(|e| e["resource"].clone()).collect())
        .unwrap_or_default()
}

/// Reads a response body as JSON.
pub async fn body_json(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Reads a response as JSON, asserting its status.
pub async fn json_of(resp: reqwest::Response, status: u16) -> Value {
    let actual = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    serde_json::from_str(&text).expect("JSON body")
}

/// Asserts an OperationOutcome with the given status and returns it.
pub async fn outcome_of(resp: reqwest::Response, status: u16) -> Value {
    let oo = json_of(resp, status).await;
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    assert!(oo["issue"][0]["diagnostics"].is_string(), "{oo}");
    oo
}

/// The shared reference folder (`../shared` beside the repository), if present.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "../shared is not present: skipping the tests that read the reference definitions"
        );
        None
    }
}

/// The `next` link of a Bundle, if any.
pub fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(str::to_owned)
}

/// The entries of a Bundle with this `search.mode`, as `Type/id`, sorted.
pub fn refs_by_mode(bundle: &Value, mode: &str) -> Vec<String> {
    let mut found: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| {
            format!(
                "{}/{}",
                e["resource"]["resourceType"].as_str().unwrap_or(""),
                e["resource"]["id"].as_str().unwrap_or("")
            )
        })
        .collect();
    found.sort();
    found
}

/// A fresh test database as a `DATABASE_URL` value (libpq key=value form), for the
/// tests that run the binary.
pub async fn fresh_database_url() -> String {
    let config = fresh_database().await;
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "host={host} port={port} user={} dbname={}",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("postgres")
    )
}

/// The `.json` files of a folder, in name order.
pub fn json_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

/// Runs `passerelle <args>` against a database and returns its standard output,
/// asserting success.
pub fn run_passerelle(args: &[&std::ffi::OsStr], database_url: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .output()
        .expect("run passerelle");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every resource id of a Bundle (matches and includes), sorted.
pub fn ids_in(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// Sends `body` as a chunked body (`Transfer-Encoding: chunked`, no length), in
/// chunks of `chunk` bytes, on a raw connection of its own to `authority`; the
/// whole answer (the server may answer before reading the whole body).
pub async fn chunked_post(authority: &str, path: &str, body: &[u8], chunk: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(authority)
        .await
        .expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/fhir+json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    for part in body.chunks(chunk) {
        let mut framed = format!("{:x}\r\n", part.len()).into_bytes();
        framed.extend_from_slice(part);
        framed.extend_from_slice(b"\r\n");
        // Refused (413) before the rest is sent: the answer says so.
        if socket.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = socket.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}
