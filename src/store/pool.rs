//! The connection pool, and what protects the database from a request: every
//! statement ends by `statement_timeout`, and the queries of a request whose
//! client went away are cancelled rather than left running.
//!
//! Dropping a request's future (hyper does when the client disconnects) drops
//! tokio-postgres futures, but the server keeps executing their statements, and the
//! connection, back in the pool, would make its next user wait for them. So each
//! request remembers the connections it took ([`track`]); if it is dropped before
//! finishing, those connections are taken out of the pool, their queries cancelled
//! and the connections closed.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use deadpool_postgres::{ClientWrapper, Hook, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

tokio::task_local! {
    /// The connections taken by the request being polled.
    static TAKEN: Taken;
}

/// A connection's identity while it lives: its statement cache is one `Arc` per
/// connection, never moved out of it.
fn identity(client: &ClientWrapper) -> usize {
    Arc::as_ptr(&client.statement_cache) as usize
}

fn note_taken(client: &mut ClientWrapper) {
    let id = identity(client);
    // Outside a tracked request (background jobs) there is nothing to note.
    let _ = TAKEN.try_with(|taken| taken.lock().unwrap_or_else(|e| e.into_inner()).push(id));
}

/// The size of a pool and the bounds on what a request waits for from it.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub size: usize,
    /// With one, every statement is cancelled by PostgreSQL after that long.
    pub statement_timeout: Option<Duration>,
    /// The longest wait for a free connection, or for a new one to be made: a
    /// request never hangs on an exhausted pool or an unreachable database.
    pub wait_timeout: Duration,
}

impl PoolSettings {
    /// `size` connections, no statement timeout, the default wait.
    pub fn sized(size: usize) -> Self {
        PoolSettings {
            size,
            statement_timeout: None,
            wait_timeout: DEFAULT_WAIT,
        }
    }
}

/// The default of `PASSERELLE_POOL_TIMEOUT`.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// Statements one connection keeps prepared (a few dozen in steady use: the
/// write path's and the search shapes clients use).
const MAX_PREPARED_STATEMENTS: usize = 500;

/// A pool as `settings` say.
pub fn build(mut config: tokio_postgres::Config, settings: PoolSettings) -> Result<Pool, String> {
    if let Some(timeout) = settings.statement_timeout {
        let options = config.get_options().unwrap_or_default();
        let options = format!("{options} -c statement_timeout={}", timeout.as_millis());
        config.options(options.trim());
    }
    // A database host that does not answer (a network cut, a frozen server)
    // fails a connection attempt instead of holding it.
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(settings.wait_timeout);
    }
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(settings.wait_timeout))
        .create_timeout(Some(settings.wait_timeout))
        .recycle_timeout(Some(settings.wait_timeout))
        .post_create(Hook::async_fn(|client, _| {
            note_taken(client);
            Box::pin(async move {
                // PostgreSQL 14 and later stop the statement of a backend whose
                // client is gone (this server killed, say) within a second, instead of
                // running it to the end; older servers refuse the setting, harmlessly.
                if let Err(e) = client
                    .batch_execute("SET client_connection_check_interval = 1000")
                    .await
                {
                    tracing::debug!(error = %e, "client_connection_check_interval not set");
                }
                Ok(())
            })
        }))
        .post_recycle(Hook::sync_fn(|client, _| {
            note_taken(client);
            // Searches are prepared once per connection, and a client can ask
            // for ever new shapes of them: past this many, the connection starts
            // afresh (the statements closed on the server too).
            if client.statement_cache.size() > MAX_PREPARED_STATEMENTS {
                client.statement_cache.clear();
            }
            Ok(())
        }))
        .build()
        .map_err(|e| e.to_string())
}

/// Runs `request`; if it is dropped before it finishes, cancels the statements of
/// the connections it took from `pool`. With `close_after`, its connections are
/// closed when it finishes: a connection keeps the buffers of the largest message
/// it carried, and a request with a large body would leave megabytes in each.
pub fn track<F: Future>(pool: Pool, request: F, close_after: bool) -> Tracked<F> {
    let taken = Arc::new(Mutex::new(Vec::new()));
    Tracked {
        inner: Some(Box::pin(TAKEN.scope(taken.clone(), request))),
        taken,
        pool,
        close_after,
    }
}

/// Identities of the connections a request took.
type Taken = Arc<Mutex<Vec<usize>>>;

pub struct Tracked<F: Future> {
    inner: Option<Pin<Box<tokio::task::futures::TaskLocalFuture<Taken, F>>>>,
    taken: Taken,
    pool: Pool,
    close_after: bool,
}

/// Takes out of `pool` those of the `taken` connections that are idle in it.
fn remove_idle(pool: &Pool, taken: &Mutex<Vec<usize>>) -> Vec<ClientWrapper> {
    let taken = std::mem::take(&mut *taken.lock().unwrap_or_else(|e| e.into_inner()));
    if taken.is_empty() {
        return Vec::new();
    }
    pool.retain(|client, _| !taken.contains(&identity(client)))
        .removed
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Pending;
        };
        let out = std::task::ready!(inner.as_mut().poll(cx));
        self.inner = None;
        if self.close_after {
            drop(remove_idle(&self.pool, &self.taken));
        }
        Poll::Ready(out)
    }
}

impl<F: Future> Drop for Tracked<F> {
    fn drop(&mut self) {
        // Finished: its connections went back to the pool idle.
        let Some(inner) = self.inner.take() else {
            return;
        };
        // Dropping the request returns its connections to the pool, busy or not;
        // take them straight back out, before another request can use them.
        drop(inner);
        let removed = remove_idle(&self.pool, &self.taken);
        if removed.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            for client in removed {
                let token = client.cancel_token();
                if let Err(e) = token.cancel_query(NoTls).await {
                    tracing::debug!(error = %e, "cancelling the query of a dropped request");
                }
                tracing::debug!("cancelled the statements of a request whose client went away");
                drop(client);
            }
        });
    }
}
