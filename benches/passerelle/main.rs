//! Passerelle's benchmarks, over real HTTP against a real database, each on a fresh
//! `passerelle_bench` database with the server started in this process:
//! `cargo bench --bench passerelle -- <rest|ceiling|search|transaction|subscriptions|workflow|security|proxy|validation|framing> [options]`.
//! The figures are in the README.

mod ceiling;
mod common;
mod framing;
mod proxy;
mod rest;
mod search;
mod security;
mod subscriptions;
mod transaction;
mod validation;
mod workflow;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use passerelle::server::DatabaseArgs;

// As the server binary: the allocator is part of what is measured.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "passerelle-bench", about = "Passerelle's benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reads, searches and creates straight to one instance, then through nginx
    /// (deploy/nginx.conf) in front of one and of two instances.
    Proxy {
        #[arg(long, default_value_t = 2_000)]
        patients: usize,
        /// Reads and searches per topology (creates: a quarter of it).
        #[arg(long, default_value_t = 40_000)]
        operations: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// The searchset's framing per entry, in one thread (no database, no HTTP).
    Framing {
        #[arg(long, default_value_t = 50)]
        entries: usize,
        #[arg(long, default_value_t = 20_000)]
        pages: usize,
    },
    /// The profile validator: validations per second of FR Core examples, and
    /// creates claiming an FR Core profile beside creates claiming none.
    Validation {
        /// An FR Core package (folder or .tgz).
        #[arg(long, default_value = "../shared/ig/fr-core-2.1.0")]
        package: std::path::PathBuf,
        #[arg(long, default_value_t = 20_000)]
        validations: usize,
        #[arg(long, default_value_t = 5_000)]
        writes: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Create and read throughput beside the same reads in SQL.
    Rest {
        #[arg(long, default_value_t = 10_000)]
        resources: usize,
        /// Times each resource is read.
        #[arg(long, default_value_t = 3)]
        read_passes: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Reads by id, searches by identifier and creates as shares of the
    /// database's ceiling (pgbench, the server's read statement prepared) and
    /// beside the HTTP floor (`GET /health/live`), in one run.
    Ceiling {
        /// Patients written first, then read and searched.
        #[arg(long, default_value_t = 2_000)]
        patients: usize,
        /// Requests per read phase (half as many searches).
        #[arg(long, default_value_t = 40_000)]
        requests: usize,
        /// Patients created in the create phase.
        #[arg(long, default_value_t = 10_000)]
        creates: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Audit every request (`--audit false`: the trail off, as other
        /// servers are measured).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        audit: bool,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Load a synthetic population and time realistic searches.
    Search {
        /// Patients (the population is about five resources per patient).
        #[arg(long, default_value_t = 20_000)]
        patients: usize,
        /// Searches timed per query.
        #[arg(long, default_value_t = 300)]
        queries: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Who gives the planner its statistics after the load.
        #[arg(long, value_enum, default_value = "vacuum")]
        statistics: search::Statistics,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Ingest rate of transaction Bundles (1, 100, 1,000 entries) beside SQL COPY.
    Transaction {
        /// Resources written per Bundle size.
        #[arg(long, default_value_t = 10_000)]
        resources: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Discharges of stays told to the patients' GPs: throughput beside updates
    /// without the workflow, and discharge-to-callback latency.
    Workflow {
        /// Patients, each with a GP reachable through an Endpoint (one GP per ten).
        #[arg(long, default_value_t = 10_000)]
        patients: usize,
        /// Encounter updates per throughput phase.
        #[arg(long, default_value_t = 1000)]
        writes: usize,
        /// Discharges timed one at a time for the latency.
        #[arg(long, default_value_t = 300)]
        events: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Patients of a Group followed as a population (0: none).
        #[arg(long, default_value_t = 2000)]
        population: usize,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Reads and searches without authentication and audit, then with SMART
    /// tokens (a backend's, a GP's held to her care circle) and every request
    /// audited.
    Security {
        #[arg(long, default_value_t = 2000)]
        patients: usize,
        /// Times each patient is read.
        #[arg(long, default_value_t = 3)]
        read_passes: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[command(flatten)]
        db: DatabaseArgs,
    },
    /// Write throughput and callback latency with 0, 1, 100 and 10,000 subscriptions.
    Subscriptions {
        /// Subscription counts, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,1,100,10000")]
        counts: Vec<usize>,
        /// Writes per throughput phase.
        #[arg(long, default_value_t = 2000)]
        writes: usize,
        /// Matching writes timed one at a time for the latency.
        #[arg(long, default_value_t = 300)]
        events: usize,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[command(flatten)]
        db: DatabaseArgs,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    // `cargo bench` appends `--bench` to the arguments of a harness-less target.
    let cli = Cli::parse_from(std::env::args().filter(|a| a != "--bench"));
    let report = match cli.command {
        Command::Proxy {
            patients,
            operations,
            concurrency,
            db,
        } => {
            proxy::run(proxy::ProxyBenchOptions {
                database: db.choice(),
                patients: patients.max(1),
                operations: operations.max(1),
                concurrency: concurrency.max(1),
            })
            .await
        }
        Command::Rest {
            resources,
            read_passes,
            concurrency,
            db,
        } => {
            rest::run(rest::BenchOptions {
                database: db.choice(),
                resources: resources.max(1),
                read_passes: read_passes.max(1),
                concurrency: concurrency.max(1),
            })
            .await
        }
        Command::Ceiling {
            patients,
            requests,
            creates,
            concurrency,
            audit,
            db,
        } => {
            ceiling::run(ceiling::CeilingOptions {
                database: db.choice(),
                patients,
                requests: requests.max(1),
                creates: creates.max(1),
                concurrency,
                audit,
            })
            .await
        }
        Command::Search {
            patients,
            queries,
            concurrency,
            statistics,
            db,
        } => {
            search::run(search::SearchBenchOptions {
                database: db.choice(),
                patients: patients.max(1),
                queries: queries.max(1),
                concurrency: concurrency.max(1),
                statistics,
            })
            .await
        }
        Command::Transaction {
            resources,
            concurrency,
            db,
        } => {
            transaction::run(transaction::TransactionBenchOptions {
                database: db.choice(),
                resources: resources.max(1),
                concurrency: concurrency.max(1),
            })
            .await
        }
        Command::Subscriptions {
            counts,
            writes,
            events,
            concurrency,
            db,
        } => {
            subscriptions::run(subscriptions::SubscriptionBenchOptions {
                database: db.choice(),
                counts,
                writes: writes.max(1),
                events: events.max(1),
                concurrency: concurrency.max(1),
            })
            .await
        }
        Command::Security {
            patients,
            read_passes,
            concurrency,
            db,
        } => {
            security::run(security::SecurityBenchOptions {
                database: db.choice(),
                patients: patients.max(1),
                read_passes: read_passes.max(1),
                concurrency: concurrency.max(1),
            })
            .await
        }
        Command::Framing { entries, pages } => {
            framing::run(framing::FramingBenchOptions {
                entries: entries.max(1),
                pages: pages.max(1),
            })
            .await
        }
        Command::Validation {
            package,
            validations,
            writes,
            concurrency,
            db,
        } => {
            validation::run(validation::ValidationBenchOptions {
                database: db.choice(),
                package,
                validations: validations.max(1),
                writes: writes.max(1),
                concurrency: concurrency.max(1),
            })
            .await
        }
        Command::Workflow {
            patients,
            writes,
            events,
            concurrency,
            population,
            db,
        } => {
            workflow::run(workflow::WorkflowBenchOptions {
                database: db.choice(),
                patients: patients.max(1),
                writes: writes.max(1),
                events: events.max(1),
                concurrency: concurrency.max(1),
                population,
            })
            .await
        }
    };
    match report {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("passerelle-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
