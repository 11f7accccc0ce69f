//! `ServiceRequest/$turnaround?performer=…&_since=…`: the requests a performer
//! (a hospital specialty, an SMR) received, how many it answered and how many are
//! open, and the median and 90th percentile delay from request to answer: the
//! receiving team's own quality figure.

use deadpool_postgres::Pool;
use serde_json::Value;

use crate::coordination::referral::{self, Asked};
use crate::error::{FhirError, FhirResult};
use crate::fhir::datetime;
use crate::search::params::ParamTable;
use crate::search::{self, Handling};
use crate::store;

/// Requests counted at most.
const MAX_REQUESTS: usize = 10_000;

pub async fn turnaround(
    pool: &Pool,
    params: &ParamTable,
    query: &[(String, String)],
) -> FhirResult<Value> {
    let mut performer = None;
    let mut since = None;
    for (name, value) in query {
        match name.as_str() {
            "performer" => performer = Some(value.clone()),
            "_since" => {
                since = Some(
                    datetime::parse_range(value)
                        .ok_or_else(|| {
                            FhirError::bad_request(format!(
                                "_since '{value}' is not a date or an instant"
                            ))
                        })?
                        .low,
                )
            }
            "_format" | "_pretty" => {}
            other => {
                return Err(FhirError::bad_request(format!(
                    "$turnaround takes performer and _since, not '{other}'"
                )))
            }
        }
    }
    let performer = performer.ok_or_else(|| {
        FhirError::bad_request("$turnaround needs a performer (performer=Organization/{id})")
    })?;
    let plan = search::parse(
        params,
        "ServiceRequest",
        &[("performer".to_owned(), performer)],
        Handling::Strict,
    )?;
    let client = pool.get().await?;
    let ids = store::matching_ids(&client, &plan, MAX_REQUESTS).await?;
    let requests: Vec<Asked> = store::request_timeline(&client, &ids)
        .await?
        .into_iter()
        .filter(|(asked, _, _)| since.is_none_or(|since| *asked >= since))
        .map(|(asked, answered, status)| Asked {
            asked,
            answered,
            status,
        })
        .collect();
    Ok(referral::turnaround(&requests))
}
