//! `_history` at instance, type and system level: versions in the order a copy
//! can follow without missing one (see docs/sync.md), paged by a stable cursor.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

use crate::error::{FhirError, FhirResult};
use crate::fhir::datetime;
use crate::search;
use crate::store::{self, HistoryFilter, StoredVersion};

/// A page of history, newest first, and the cursor of the next page if any.
pub struct HistoryPage {
    pub versions: Vec<StoredVersion>,
    pub next: Option<String>,
}

/// The opaque cursor of history paging: the (last_updated, seq) of the last entry.
fn encode_cursor(v: &StoredVersion) -> String {
    format!("{}.{}", v.last_updated.timestamp_micros(), v.seq)
}

fn decode_cursor(text: &str) -> FhirResult<(DateTime<Utc>, i64)> {
    let bad = || FhirError::bad_request(format!("'{text}' is not a valid page cursor"));
    let (micros, seq) = text.split_once('.').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let seq: i64 = seq.parse().map_err(|_| bad())?;
    let t = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok((t, seq))
}

/// `_since` of `_history` and `$everything`: an instant (R4), the changes from it on.
pub(super) fn since_param(value: &str) -> FhirResult<DateTime<Utc>> {
    datetime::parse_range(value)
        .filter(|_| value.contains('T'))
        .map(|range| range.low)
        .ok_or_else(|| FhirError::bad_request(format!("'{value}' is not a valid _since instant")))
}

/// `_count` of `_history` and `$everything`, within the server's page sizes.
pub(super) fn count_param(value: &str) -> FhirResult<usize> {
    let n: usize = value
        .parse()
        .map_err(|_| FhirError::bad_request(format!("'{value}' is not a valid _count")))?;
    Ok(n.clamp(1, search::MAX_COUNT))
}

/// `_history` at system, type or instance level.
pub async fn history(
    pool: &Pool,
    res_type: Option<&str>,
    res_id: Option<&str>,
    params: &[(String, String)],
) -> FhirResult<HistoryPage> {
    let mut filter = HistoryFilter {
        res_type: res_type.map(str::to_owned),
        res_id: res_id.map(str::to_owned),
        count: search::DEFAULT_COUNT,
        ..HistoryFilter::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "_since" => filter.since = Some(since_param(value)?),
            "_at" => {
                filter.at = Some(datetime::parse_range(value).ok_or_else(|| {
                    FhirError::bad_request(format!("'{value}' is not a valid _at date"))
                })?)
            }
            "_count" => filter.count = count_param(value)?,
            "_page" => filter.before = Some(decode_cursor(value)?),
            _ => {}
        }
    }
    let client = pool.get().await?;
    // One more than asked tells whether a next page exists.
    let wanted = filter.count;
    filter.count += 1;
    let mut versions = store::history(&client, &filter).await?;
    let next = if versions.len() > wanted {
        versions.truncate(wanted);
        versions.last().map(encode_cursor)
    } else {
        None
    };
    Ok(HistoryPage { versions, next })
}
