//! Coordination rules: what the writes of stays, care circles and notices mean
//! beyond themselves. Pure: given the previous and the new version of a resource
//! and the clock, the write path learns what to refuse and what to write with it,
//! in the same transaction.

pub mod access;
pub mod acknowledgement;
pub mod appointment;
pub mod careplan;
pub mod circle;
pub mod nde;
pub mod population;
pub mod recipients;
pub mod referral;
pub mod stay;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use stay::StayRules;

/// The id of a resource the server keeps for `key` (a patient, a pair of
/// resources): `{prefix}-` and 32 hex digits of its SHA-256, so that the same key
/// always names the same resource, which is written again rather than searched.
pub fn derived_id(prefix: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{hex}")
}

/// The ids of the resources of `res_type` among a list of references (relative
/// references only).
pub fn ids_referenced<'a>(references: &'a Value, res_type: &str) -> Vec<&'a str> {
    let prefix = format!("{res_type}/");
    references
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["reference"].as_str()?.strip_prefix(prefix.as_str()))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .collect()
}

/// A status by its code in a table of (status, code).
fn status_of<S: Copy>(codes: &[(S, &str)], resource: &Value) -> Option<S> {
    let code = resource["status"].as_str()?;
    codes.iter().find(|(_, c)| *c == code).map(|(s, _)| *s)
}

/// The code of a status in a table of (status, code).
fn code_of<S: Copy + PartialEq>(codes: &[(S, &'static str)], status: S) -> &'static str {
    codes
        .iter()
        .find(|(s, _)| *s == status)
        .map_or("unknown", |(_, c)| c)
}

/// The event declarations the write of `Encounter/{id}` brings with it, or the
/// rule it breaks: `previous` is the live version it replaces, `next` the new one
/// (none for a delete).
pub fn encounter_declarations(
    rules: &StayRules,
    id: &str,
    previous: Option<&Value>,
    next: Option<&Value>,
    now: DateTime<Utc>,
) -> Result<Vec<Value>, stay::Refusal> {
    let events = stay::transition(rules, previous, next)?;
    let Some(next) = next else {
        return Ok(Vec::new());
    };
    Ok(events
        .into_iter()
        .filter_map(nde::EventType::of)
        .filter_map(|event| nde::event_declaration(event, id, next, now))
        .collect())
}
