use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use passerelle::server::{self, DatabaseArgs, ServeOptions};
use passerelle::store::pool::PoolSettings;
use passerelle::telemetry;

// glibc malloc took about a tenth of the server's CPU in the read path (perf).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "passerelle",
    version,
    about = "FHIR R4 server for care coordination"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The coordination rules.
#[derive(Args, Clone)]
struct CoordinationArgs {
    /// Encounter class codes that are hospital stays besides the v3 ActCode
    /// IMP, ACUTE, NONAC and SS (comma-separated, any code system), e.g. HH.
    #[arg(long, env = "PASSERELLE_INPATIENT_CLASSES", value_delimiter = ',')]
    inpatient_classes: Vec<String>,
    /// How long a notification request may wait for its acknowledgement before
    /// it is escalated to the stay's service provider (e.g. 48h, 30m, 3s).
    #[arg(long, env = "PASSERELLE_ACK_ESCALATION_AFTER", default_value = "48h", value_parser = server::parse_duration)]
    ack_escalation_after: Duration,
    #[command(flatten)]
    profiles: ProfileArgs,
}

impl CoordinationArgs {
    /// Puts these settings in force in `rules`.
    fn apply(&self, rules: &mut passerelle::service::Rules) -> Result<(), server::StartError> {
        rules.stays = self.stays();
        rules.acks.escalate_after = self.ack_escalation_after;
        rules.profiles = std::sync::Arc::new(self.profiles.rules()?);
        Ok(())
    }

    fn stays(&self) -> passerelle::coordination::StayRules {
        passerelle::coordination::StayRules {
            extra_classes: self
                .inpatient_classes
                .iter()
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect(),
        }
    }
}

/// Profile validation: the definitions known and what writes must meet.
#[derive(Args, Clone)]
struct ProfileArgs {
    /// FHIR packages (.tgz), package folders or JSON files (resources or
    /// Bundles) whose StructureDefinitions, ValueSets and CodeSystems the
    /// validator knows, besides the project's own profiles (comma-separated).
    #[arg(long = "package", env = "PASSERELLE_PACKAGES", value_delimiter = ',')]
    packages: Vec<PathBuf>,
    /// Profiles every resource of a type is checked against on write, claimed
    /// or not: `Patient=url1 url2;Encounter=url3`.
    #[arg(long, env = "PASSERELLE_REQUIRED_PROFILES")]
    required_profiles: Option<String>,
    /// A claimed profile the server does not know: `warning` (the default) or
    /// `error` (the write is refused with 422).
    #[arg(long, env = "PASSERELLE_UNKNOWN_PROFILES", default_value = "warning")]
    unknown_profiles: String,
}

impl ProfileArgs {
    fn rules(&self) -> Result<passerelle::profile::ProfileRules, server::StartError> {
        let mut loaded = Vec::new();
        for path in &self.packages {
            loaded.extend(
                passerelle::profile::package::read(path).map_err(server::StartError::Config)?,
            );
        }
        let unknown_is_error = match self.unknown_profiles.as_str() {
            "warning" => false,
            "error" => true,
            other => {
                return Err(server::StartError::Config(format!(
                    "PASSERELLE_UNKNOWN_PROFILES is 'warning' or 'error', not '{other}'"
                )))
            }
        };
        let required =
            passerelle::profile::parse_required(self.required_profiles.as_deref().unwrap_or(""))
                .map_err(server::StartError::Config)?;
        let mut rules = passerelle::profile::ProfileRules::new(loaded);
        rules.unknown_is_error = unknown_is_error;
        rules.required = required;
        let known = rules.conformance();
        for urls in rules.required.values() {
            if let Some(url) = urls.iter().find(|u| known.structure(u).is_none()) {
                return Err(server::StartError::Config(format!(
                    "PASSERELLE_REQUIRED_PROFILES names {url}, which no package given defines"
                )));
            }
        }
        Ok(rules)
    }
}

/// Who may call: SMART on FHIR bearer tokens of an authorisation server.
#[derive(Args, Clone)]
struct AuthArgs {
    /// `smart` (bearer tokens of the issuer below, required on every request) or
    /// `none` (anyone, development only). Unset: anyone, and only on loopback.
    #[arg(long = "auth", env = "PASSERELLE_AUTH")]
    mode: Option<String>,
    /// The tokens' `iss`: the authorisation server (e.g. Pro Santé Connect's realm).
    #[arg(long = "auth-issuer", env = "PASSERELLE_AUTH_ISSUER")]
    issuer: Option<String>,
    /// The `aud` tokens carry for this server.
    #[arg(long = "auth-audience", env = "PASSERELLE_AUTH_AUDIENCE")]
    audience: Option<String>,
    /// Where the issuer publishes its signing keys (JWKS).
    #[arg(long = "auth-jwks-url", env = "PASSERELLE_AUTH_JWKS_URL")]
    jwks_url: Option<String>,
    /// The issuer's authorisation endpoint, for the SMART configuration.
    #[arg(long = "auth-authorize-url", env = "PASSERELLE_AUTH_AUTHORIZE_URL")]
    authorize_url: Option<String>,
    /// The issuer's token endpoint, for the SMART configuration.
    #[arg(long = "auth-token-url", env = "PASSERELLE_AUTH_TOKEN_URL")]
    token_url: Option<String>,
    /// `system/` clients held to organisations: `client=Organization/a,Organization/b;other=c`.
    /// Such a client sees the records of the patients in whose care circle one of
    /// its organisations is.
    #[arg(
        long = "auth-client-organizations",
        env = "PASSERELLE_AUTH_CLIENT_ORGANIZATIONS"
    )]
    client_organizations: Option<String>,
}

impl AuthArgs {
    fn setting(&self) -> Result<passerelle::auth::AuthSetting, server::StartError> {
        passerelle::auth::AuthSetting::from_parts(passerelle::auth::AuthParts {
            mode: self.mode.clone(),
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
            jwks_url: self.jwks_url.clone(),
            authorize_url: self.authorize_url.clone(),
            token_url: self.token_url.clone(),
            client_organizations: self.client_organizations.clone(),
        })
        .map_err(server::StartError::Config)
    }
}

/// Subscription endpoints and delivery.
#[derive(Args, Clone)]
struct SubscriptionArgs {
    /// Allow http:// and loopback, private or link-local callback endpoints
    /// (development and tests only; off by default).
    #[arg(long, env = "PASSERELLE_ALLOW_INSECURE_ENDPOINTS", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    allow_insecure_endpoints: bool,
    /// Concurrent delivery workers; 0: this instance writes events but leaves
    /// their delivery to other instances.
    #[arg(long, env = "PASSERELLE_DELIVERY_WORKERS", default_value_t = 4)]
    delivery_workers: usize,
    /// Attempts of a notification before its subscription goes to `error`.
    #[arg(long, env = "PASSERELLE_DELIVERY_MAX_ATTEMPTS", default_value_t = 8)]
    delivery_max_attempts: i32,
    /// First retry delay in milliseconds (doubles on each failure, with jitter).
    #[arg(long, env = "PASSERELLE_DELIVERY_BACKOFF_MS", default_value_t = 1000)]
    delivery_backoff_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(
        long,
        env = "PASSERELLE_DELIVERY_BACKOFF_MAX_MS",
        default_value_t = 300_000
    )]
    delivery_backoff_max_ms: u64,
    /// Timeout of one callback in milliseconds.
    #[arg(long, env = "PASSERELLE_DELIVERY_TIMEOUT_MS", default_value_t = 10_000)]
    delivery_timeout_ms: u64,
    /// The SMTP server that sends notices by secure mail (email channels,
    /// secure-email Endpoints): `smtp://[user:pass@]host[:port]` (STARTTLS when
    /// offered) or `smtps://…`. Without it, email channels are refused.
    #[arg(long, env = "PASSERELLE_SMTP_URL")]
    smtp_url: Option<String>,
    /// The sender of those mails.
    #[arg(
        long,
        env = "PASSERELLE_SMTP_FROM",
        default_value = "Passerelle <passerelle@localhost>"
    )]
    smtp_from: String,
    /// A JSON file of extra SubscriptionTopics (a Bundle or one resource).
    #[arg(long, env = "PASSERELLE_SUBSCRIPTION_TOPICS")]
    subscription_topics: Option<PathBuf>,
}

impl SubscriptionArgs {
    /// The write path's rules: the endpoint policy, and the server's topics plus
    /// the deployer's file when given.
    fn rules(&self) -> Result<passerelle::service::Rules, server::StartError> {
        let extra = match &self.subscription_topics {
            Some(path) => Some(std::fs::read_to_string(path)?),
            None => None,
        };
        let catalog = passerelle::service::Catalog::new(extra.as_deref())
            .map_err(|e| server::StartError::Database(format!("subscription topics: {e}")))?;
        Ok(passerelle::service::Rules {
            endpoints: passerelle::subscription::EndpointPolicy {
                allow_insecure: self.allow_insecure_endpoints,
                email: self.smtp_url.is_some(),
            },
            catalog: std::sync::Arc::new(catalog),
            ..Default::default()
        })
    }

    fn delivery(&self) -> passerelle::delivery::Tuning {
        passerelle::delivery::Tuning {
            workers: self.delivery_workers,
            max_attempts: self.delivery_max_attempts,
            backoff_base: Duration::from_millis(self.delivery_backoff_ms),
            backoff_max: Duration::from_millis(self.delivery_backoff_max_ms),
            timeout: Duration::from_millis(self.delivery_timeout_ms),
            smtp: self
                .smtp_url
                .clone()
                .map(|url| passerelle::delivery::mail::Smtp {
                    url,
                    from: self.smtp_from.clone(),
                }),
            ..passerelle::delivery::Tuning::default()
        }
    }
}

// Parsed once at start: the size of the serve variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Serve the FHIR API (migrates the schema first).
    Serve {
        #[arg(long, env = "PASSERELLE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Public base URL of the FHIR endpoint, when behind a proxy.
        #[arg(long, env = "PASSERELLE_BASE_URL")]
        base_url: Option<String>,
        /// Largest accepted request body in bytes.
        #[arg(long, env = "PASSERELLE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
        max_body_bytes: usize,
        /// Origins browser apps may call from (`https://app.example.fr,…`, or `*`
        /// in development); none by default.
        #[arg(long, env = "PASSERELLE_CORS_ORIGINS", default_value = "", value_parser = passerelle::http::cors::CorsOrigins::parse)]
        cors_origins: passerelle::http::cors::CorsOrigins,
        /// Proxies whose `Forwarded` and `X-Forwarded-Proto`/`-Host`/`-Prefix`
        /// headers say the public address (`10.0.0.5,10.1.0.0/16`); none by default.
        #[arg(long, env = "PASSERELLE_TRUSTED_PROXIES", default_value = "", value_parser = passerelle::http::forwarded::TrustedProxies::parse)]
        trusted_proxies: passerelle::http::forwarded::TrustedProxies,
        /// How long a background job (an export, a reindex) stays with an
        /// instance that stopped renewing it before another takes it up.
        #[arg(long, env = "PASSERELLE_JOB_LEASE", default_value = "60s", value_parser = server::parse_duration)]
        job_lease: Duration,
        /// How often the server looks at how much its tables changed and
        /// analyzes those a tenth changed (the planner's statistics, kept
        /// current without autovacuum); 0 turns it off.
        #[arg(long, env = "PASSERELLE_ANALYZE_INTERVAL", default_value = "10s", value_parser = server::parse_duration)]
        analyze_interval: Duration,
        /// Database connections in the pool.
        #[arg(long, env = "PASSERELLE_POOL_SIZE", default_value_t = 16)]
        pool_size: usize,
        /// Longest a request waits for a database connection, free or new (e.g.
        /// 5s); 503 beyond.
        #[arg(long, env = "PASSERELLE_POOL_TIMEOUT", default_value = "5s", value_parser = server::parse_duration)]
        pool_timeout: Duration,
        /// Longest a database statement may run (e.g. 30s, 500ms); 503 beyond.
        #[arg(long, env = "PASSERELLE_STATEMENT_TIMEOUT", default_value = "30s", value_parser = server::parse_duration)]
        statement_timeout: Duration,
        /// Longest wait for a request's head, and for the next request on an idle
        /// keep-alive connection.
        #[arg(long, env = "PASSERELLE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = server::parse_duration)]
        header_read_timeout: Duration,
        /// Longest a request body may take to arrive; 408 beyond.
        #[arg(long, env = "PASSERELLE_BODY_READ_TIMEOUT", default_value = "30s", value_parser = server::parse_duration)]
        body_read_timeout: Duration,
        /// Longest a client may take nothing of its response before the connection
        /// is closed.
        #[arg(long, env = "PASSERELLE_WRITE_TIMEOUT", default_value = "30s", value_parser = server::parse_duration)]
        write_timeout: Duration,
        /// On SIGTERM, the longest wait for requests in flight to finish.
        #[arg(long, env = "PASSERELLE_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = server::parse_duration)]
        shutdown_timeout: Duration,
        /// Client connections served at once.
        #[arg(long, env = "PASSERELLE_MAX_CONNECTIONS", default_value_t = 512)]
        max_connections: usize,
        /// Bytes of large request bodies (64 KiB and more) served at once; others wait.
        #[arg(long, env = "PASSERELLE_LARGE_BODIES_IN_FLIGHT", default_value_t = 32 << 20)]
        large_bodies_in_flight: usize,
        #[command(flatten)]
        db: DatabaseArgs,
        #[command(flatten)]
        subscriptions: SubscriptionArgs,
        #[command(flatten)]
        coordination: CoordinationArgs,
        #[command(flatten)]
        auth: AuthArgs,
        /// Record every request in the audit trail before answering it (off:
        /// development and benchmarks only).
        #[arg(long, env = "PASSERELLE_AUDIT", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        audit: bool,
    },
    /// Apply the schema migrations and exit.
    Migrate {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Load resources, Bundles and NDJSON files (or folders) into a running server
    /// (--url) or straight into the database.
    Load {
        /// FHIR base URL of a running server, e.g. http://127.0.0.1:8080/fhir.
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        db: DatabaseArgs,
        /// The coordination rules of writes made straight into the database.
        #[command(flatten)]
        coordination: CoordinationArgs,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Rewrite the search index rows of every resource (after definitions change).
    Reindex {
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Validate resource files (JSON, or XML by their `.xml` extension) offline,
    /// as `$validate` does; exits non-zero when one has errors.
    Validate {
        /// A profile to check them against, besides those they claim.
        #[arg(long)]
        profile: Option<String>,
        #[command(flatten)]
        profiles: ProfileArgs,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

/// `passerelle validate`: each file's verdict on stdout, errors first.
fn validate_files(
    paths: &[PathBuf],
    profile: Option<&str>,
    profiles: &ProfileArgs,
) -> Result<(), server::StartError> {
    use passerelle::fhir::Format;
    use passerelle::profile::verdict;
    let rules = profiles.rules()?;
    let mut failed = 0;
    for path in paths {
        let body = std::fs::read(path)
            .map_err(|e| server::StartError::Config(format!("{}: {e}", path.display())))?;
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some("xml") => Format::Xml,
            _ => Format::Json,
        };
        let asked = verdict::Asked {
            body: &body,
            format,
            res_type: None,
            profile,
            id: None,
            mode: None,
        };
        let verdict = match verdict::validate(&asked, &rules) {
            Ok(verdict) => verdict,
            Err(e) => {
                failed += 1;
                println!("{}: not a resource: {e}", path.display());
                continue;
            }
        };
        let word = if verdict.errors.is_empty() {
            "valid"
        } else {
            "INVALID"
        };
        println!(
            "{}: {word} ({} errors, {} warnings)",
            path.display(),
            verdict.errors.len(),
            verdict.warnings.len()
        );
        for (severity, issues) in [("error", &verdict.errors), ("warning", &verdict.warnings)] {
            for issue in issues {
                let at = issue.expression.as_deref().unwrap_or("-");
                println!("  {severity} {at}: {}", issue.message);
            }
        }
        failed += usize::from(!verdict.errors.is_empty());
    }
    match failed {
        0 => Ok(()),
        n => Err(server::StartError::Config(format!(
            "{n} of {} files have errors",
            paths.len()
        ))),
    }
}

async fn load(
    url: Option<String>,
    db: DatabaseArgs,
    coordination: &CoordinationArgs,
    paths: Vec<PathBuf>,
) -> Result<(), server::StartError> {
    let to_err = |e: passerelle::error::FhirError| server::StartError::Database(e.to_string());
    let (target, database) = match url {
        Some(base) => (
            passerelle::load::Target::Http {
                client: reqwest::Client::new(),
                base: base.trim_end_matches('/').to_owned(),
            },
            None,
        ),
        None => {
            let database = server::open_database(&db.choice(), PoolSettings::sized(4)).await?;
            let mut rules = passerelle::service::Rules::default();
            coordination.apply(&mut rules)?;
            passerelle::service::load_search_parameters(&database.pool, &rules.catalog)
                .await
                .map_err(to_err)?;
            passerelle::service::load_profiles(&database.pool, &rules.profiles)
                .await
                .map_err(to_err)?;
            (
                passerelle::load::Target::Database(database.pool.clone(), rules),
                Some(database),
            )
        }
    };
    let summary = passerelle::load::load(&target, &paths)
        .await
        .map_err(to_err);
    if let Some(database) = database {
        database.close().await;
    }
    let summary = summary?;
    print!("{summary}");
    if summary.failed.is_empty() {
        Ok(())
    } else {
        Err(server::StartError::Database(format!(
            "{} items failed",
            summary.failed.len()
        )))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let _telemetry = telemetry::init();
    let result = match cli.command {
        Command::Serve {
            listen,
            base_url,
            max_body_bytes,
            cors_origins,
            trusted_proxies,
            job_lease,
            analyze_interval,
            pool_size,
            pool_timeout,
            statement_timeout,
            header_read_timeout,
            body_read_timeout,
            write_timeout,
            shutdown_timeout,
            max_connections,
            large_bodies_in_flight,
            db,
            subscriptions,
            coordination,
            auth,
            audit,
        } => match subscriptions.rules().and_then(|mut r| {
            coordination.apply(&mut r)?;
            let auth = auth.setting()?;
            server::check_auth(&auth, listen)?;
            if !audit {
                tracing::warn!(
                    "PASSERELLE_AUDIT=false: ACCESSES ARE NOT AUDITED (development only)"
                );
            }
            Ok((r, auth))
        }) {
            Ok((rules, auth)) => {
                let limits = server::RequestLimits {
                    header_read_timeout,
                    body_read_timeout,
                    write_timeout,
                    max_connections,
                    statement_timeout,
                    pool_timeout,
                    shutdown_timeout,
                    large_bodies_in_flight,
                };
                match server::open_database(&db.choice(), limits.pool(pool_size)).await {
                    Ok(database) => {
                        let options = ServeOptions {
                            listen,
                            base_url,
                            max_body_bytes,
                            rules,
                            delivery: subscriptions.delivery(),
                            limits,
                            auth,
                            audit,
                            cors: cors_origins,
                            trusted_proxies,
                            jobs: passerelle::service::jobs::JobTuning {
                                lease: job_lease,
                                analyze_every: (!analyze_interval.is_zero())
                                    .then_some(analyze_interval),
                                ..Default::default()
                            },
                        };
                        server::serve(database, options).await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        },
        Command::Migrate { db } => {
            match server::open_database(&db.choice(), PoolSettings::sized(1)).await {
                Ok(database) => {
                    database.close().await;
                    println!("schema is up to date");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Command::Load {
            url,
            db,
            coordination,
            paths,
        } => load(url, db, &coordination, paths).await,
        Command::Validate {
            profile,
            profiles,
            paths,
        } => validate_files(&paths, profile.as_deref(), &profiles),
        Command::Reindex { db } => {
            match server::open_database(&db.choice(), PoolSettings::sized(2)).await {
                Ok(database) => {
                    let started = std::time::Instant::now();
                    let catalog = passerelle::service::Catalog::default();
                    let result =
                        match passerelle::service::load_search_parameters(&database.pool, &catalog)
                            .await
                        {
                            Ok(_) => {
                                let params = catalog.params.current();
                                passerelle::service::reindex(&database.pool, &params, None, 500)
                                    .await
                            }
                            Err(e) => Err(e),
                        };
                    database.close().await;
                    match result {
                        Ok(n) => {
                            println!(
                                "reindexed {n} resources in {:.1} s",
                                started.elapsed().as_secs_f64()
                            );
                            Ok(())
                        }
                        Err(e) => Err(server::StartError::Database(e.to_string())),
                    }
                }
                Err(e) => Err(e),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("passerelle: {e}");
            ExitCode::FAILURE
        }
    }
}
