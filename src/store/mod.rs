//! PostgreSQL storage: the versioned resource tables, their index rows, and the SQL
//! of searches and history. Every write happens inside a transaction handed in by
//! the caller, so that one request's changes commit or roll back together.

pub mod acknowledgements;
pub mod audit;
pub mod embedded;
pub mod export;
mod history;
mod index_rows;
pub mod jobs;
pub mod migrate;
pub mod ops;
pub mod pool;
mod read_batches;
mod search;
mod search_parameters;
mod search_sql;
pub mod statistics;
pub mod subscriptions;
mod versions;
mod writes;

use deadpool_postgres::Pool;

pub(crate) use history::HORIZON;
pub use history::{history, HistoryFilter};
pub use read_batches::LatestReads;
pub use search::{
    circle_covers, circle_patients, circle_sees, count, everything, included, matching_ids, search,
    EverythingQuery, MAX_INCLUDED,
};
use search::{current_filters, current_versions};
pub use search_parameters::{
    current_batch, definitions, definitions_fingerprint, reindex_resource,
};
pub use versions::{
    created_here_referring, documents_of_stay, endpoints_of, read_current, read_latest,
    read_version, read_versions, request_timeline, Current, Method, StoredVersion,
};
use versions::{version_from_row, VERSION_COLUMNS};
pub use writes::{clock, commit, lock_all, lock_key, write_versions, LockKey, NewVersion};

/// True when the database answers and has this binary's schema.
pub async fn is_ready(pool: &Pool) -> bool {
    let Ok(client) = pool.get().await else {
        return false;
    };
    matches!(migrate::current_version(&client).await, Ok(v) if v >= migrate::latest_version())
}
