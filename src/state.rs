//! What every request handler shares. Kept free of HTTP types so that lower layers
//! never import the HTTP layer.

use std::sync::Arc;

use deadpool_postgres::Pool;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Public base URL of the FHIR endpoint (e.g. `https://host/fhir`); when `None`
    /// it is derived from each request's `Host` header.
    pub base_url: Option<String>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long the whole body may take to arrive.
    pub body_read_timeout: std::time::Duration,
    /// When the server started (CapabilityStatement `date`).
    pub started: String,
    /// The origins browser apps may call from (`http::cors`).
    pub cors: crate::http::cors::CorsOrigins,
    /// The proxies whose forwarding headers say the public address
    /// (`http::forwarded`).
    pub trusted_proxies: crate::http::forwarded::TrustedProxies,
}

/// What every request handler shares, behind one `Arc`: axum clones the state
/// for each request, and one shared count is cheaper to clone and drop than one
/// per field (measured: the fields' counts were 2.5% of a read's CPU).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub pool: Pool,
    /// Reads by id, answered together when they arrive together.
    pub reads: crate::store::LatestReads,
    pub settings: Arc<Settings>,
    pub rules: Arc<crate::service::Rules>,
    /// Large request bodies in flight, in KiB permits (`http::reserve_body_memory`).
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// Websockets bound on this instance (subscriptions with a websocket channel).
    pub hub: Arc<crate::delivery::websocket::Hub>,
    /// How requests are authenticated.
    pub guard: Arc<crate::auth::Guard>,
    /// The server's metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The audit trail's writer (`None`: auditing off, development only).
    pub auditor: Option<Arc<crate::audit::Auditor>>,
}

/// The address a request came from (set per connection by the accept loop).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// The connection a request came on, as the accept loop counts it: a websocket
/// keeps its slot (one of `PASSERELLE_MAX_CONNECTIONS`) while it is open, and
/// closes when the server stops.
#[derive(Debug, Clone)]
pub struct ConnectionSlot {
    pub slot: Arc<tokio::sync::OwnedSemaphorePermit>,
    pub stopping: tokio::sync::watch::Receiver<bool>,
}
