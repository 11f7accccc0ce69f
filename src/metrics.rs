//! The server's metrics in the Prometheus text format (`GET /metrics`): requests
//! by interaction and status with their latency, the connection pool, the outbox
//! backlog, deliveries by outcome and background jobs by state. One registry per
//! running server, held by the application state and handed to delivery; the
//! figures read from the database at each scrape come from `store::ops`.

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// Latency buckets in seconds: a read takes a millisecond, an export a minute.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    deliveries: IntCounterVec,
    delivery_latency: Histogram,
    pool: IntGaugeVec,
    pool_waiting: IntGauge,
    database_up: IntGauge,
    outbox_pending: IntGauge,
    outbox_oldest: Gauge,
    jobs: IntGaugeVec,
    reads_by_id: IntCounterVec,
}

/// What a delivery attempt came to.
#[derive(Debug, Clone, Copy)]
pub enum Delivered {
    /// The endpoint took it.
    Delivered,
    /// It failed and will be tried again.
    Failed,
    /// It failed for the last time: the subscription goes to `error`.
    GaveUp,
}

impl Delivered {
    fn label(self) -> &'static str {
        match self {
            Delivered::Delivered => "delivered",
            Delivered::Failed => "failed",
            Delivered::GaveUp => "gave-up",
        }
    }
}

/// What the database says at a scrape (`None`: it could not be asked).
#[derive(Debug, Clone, Default)]
pub struct Backlog {
    /// Notification events not delivered yet.
    pub outbox_pending: i64,
    /// Age of the oldest of them, in seconds (0 when there is none).
    pub outbox_oldest_secs: f64,
    /// Background jobs: (kind, state, count).
    pub jobs: Vec<(String, String, i64)>,
}

/// The connection pool at a scrape.
#[derive(Debug, Clone, Copy)]
pub struct PoolState {
    pub in_use: i64,
    pub idle: i64,
    pub waiting: i64,
    /// Reads by id sent to the database so far, and the statements that
    /// carried them (`store::LatestReads`).
    pub reads_by_id: (u64, u64),
}

fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> M {
    // Names are fixed and distinct: registering cannot fail but by a bug here.
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric registration: {e}"));
    metric
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        let gauge = |name: &str, help: &str| {
            IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        let gauges = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels)
                .unwrap_or_else(|e| panic!("metric {name}: {e}"))
        };
        Metrics {
            requests: registered(
                &registry,
                counter(
                    "passerelle_http_requests_total",
                    "HTTP requests answered, by FHIR interaction and status",
                    &["interaction", "status"],
                ),
            ),
            latency: registered(
                &registry,
                histogram(
                    "passerelle_http_request_duration_seconds",
                    "Time to answer a request, by FHIR interaction",
                    &["interaction"],
                ),
            ),
            deliveries: registered(
                &registry,
                counter(
                    "passerelle_deliveries_total",
                    "Notifications sent by this instance's workers, by outcome",
                    &["outcome"],
                ),
            ),
            delivery_latency: registered(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "passerelle_delivery_duration_seconds",
                        "Time a notification's endpoint took to take or refuse it",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )
                .unwrap_or_else(|e| panic!("metric delivery time: {e}")),
            ),
            pool: registered(
                &registry,
                gauges(
                    "passerelle_db_pool_connections",
                    "Database connections of the pool, by state",
                    &["state"],
                ),
            ),
            pool_waiting: registered(
                &registry,
                gauge(
                    "passerelle_db_pool_waiting",
                    "Requests waiting for a database connection",
                ),
            ),
            database_up: registered(
                &registry,
                gauge(
                    "passerelle_database_up",
                    "1 when the last scrape could ask the database, 0 otherwise",
                ),
            ),
            outbox_pending: registered(
                &registry,
                gauge(
                    "passerelle_outbox_pending_events",
                    "Notification events recorded and not delivered yet (all instances)",
                ),
            ),
            outbox_oldest: registered(
                &registry,
                Gauge::new(
                    "passerelle_outbox_oldest_pending_age_seconds",
                    "Age of the oldest notification event not delivered yet",
                )
                .unwrap_or_else(|e| panic!("metric outbox age: {e}")),
            ),
            jobs: registered(
                &registry,
                gauges(
                    "passerelle_jobs",
                    "Background jobs in the database, by kind and state",
                    &["kind", "state"],
                ),
            ),
            reads_by_id: registered(
                &registry,
                counter(
                    "passerelle_db_reads_by_id_total",
                    "Reads by id sent to the database (sent=\"reads\"), and the statements that carried them together (sent=\"statements\")",
                    &["sent"],
                ),
            ),
            registry,
        }
    }

    /// One request answered.
    pub fn request(&self, interaction: &str, status: u16, took: Duration) {
        self.requests
            .with_label_values(&[interaction, status_label(status)])
            .inc();
        self.latency
            .with_label_values(&[interaction])
            .observe(took.as_secs_f64());
    }

    /// What one notification came to.
    pub fn delivery(&self, outcome: Delivered) {
        self.deliveries.with_label_values(&[outcome.label()]).inc();
    }

    /// How long one notification took to be taken or refused by its endpoint.
    pub fn delivery_time(&self, took: Duration) {
        self.delivery_latency.observe(took.as_secs_f64());
    }

    /// The text exposition of every metric, with the pool and the database as
    /// they are now.
    pub fn render(&self, pool: PoolState, backlog: Option<&Backlog>) -> String {
        self.pool.with_label_values(&["in-use"]).set(pool.in_use);
        self.pool.with_label_values(&["idle"]).set(pool.idle);
        self.pool_waiting.set(pool.waiting);
        let (reads, statements) = pool.reads_by_id;
        for (label, total) in [("reads", reads), ("statements", statements)] {
            let counter = self.reads_by_id.with_label_values(&[label]);
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        self.database_up.set(i64::from(backlog.is_some()));
        if let Some(backlog) = backlog {
            self.outbox_pending.set(backlog.outbox_pending);
            self.outbox_oldest.set(backlog.outbox_oldest_secs);
            self.jobs.reset();
            for (kind, state, count) in &backlog.jobs {
                self.jobs.with_label_values(&[kind, state]).set(*count);
            }
        }
        let mut text = Vec::new();
        // Encoding into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut text);
        String::from_utf8(text).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The status as a label, from a fixed set (no allocation, bounded cardinality).
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        406 => "406",
        408 => "408",
        409 => "409",
        410 => "410",
        412 => "412",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_deliveries_and_backlog_are_exposed() {
        let metrics = Metrics::new();
        metrics.request("read", 200, Duration::from_millis(2));
        metrics.request("read", 200, Duration::from_millis(3));
        metrics.request("create", 422, Duration::from_millis(5));
        metrics.delivery(Delivered::GaveUp);
        metrics.delivery_time(Duration::from_millis(40));
        let backlog = Backlog {
            outbox_pending: 7,
            outbox_oldest_secs: 12.5,
            jobs: vec![("export".into(), "in-progress".into(), 2)],
        };
        let pool = PoolState {
            in_use: 3,
            idle: 5,
            waiting: 1,
            reads_by_id: (40, 3),
        };
        let text = metrics.render(pool, Some(&backlog));
        for line in [
            "passerelle_http_requests_total{interaction=\"read\",status=\"200\"} 2",
            "passerelle_http_requests_total{interaction=\"create\",status=\"422\"} 1",
            "passerelle_http_request_duration_seconds_count{interaction=\"read\"} 2",
            "passerelle_http_request_duration_seconds_bucket{interaction=\"read\",le=\"0.0025\"} 1",
            "passerelle_deliveries_total{outcome=\"gave-up\"} 1",
            "passerelle_db_reads_by_id_total{sent=\"reads\"} 40",
            "passerelle_db_reads_by_id_total{sent=\"statements\"} 3",
            "passerelle_delivery_duration_seconds_bucket{le=\"0.05\"} 1",
            "passerelle_db_pool_connections{state=\"in-use\"} 3",
            "passerelle_db_pool_waiting 1",
            "passerelle_database_up 1",
            "passerelle_outbox_pending_events 7",
            "passerelle_outbox_oldest_pending_age_seconds 12.5",
            "passerelle_jobs{kind=\"export\",state=\"in-progress\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        let down = metrics.render(pool, None);
        assert!(down.lines().any(|l| l == "passerelle_database_up 0"));
    }

    #[test]
    fn unusual_statuses_fall_into_classes() {
        assert_eq!(status_label(418), "4xx");
        assert_eq!(status_label(207), "2xx");
        assert_eq!(status_label(502), "5xx");
    }
}
