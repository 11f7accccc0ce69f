//! Coordination rules: what the writes of stays, care circles and notices mean
//! beyond themselves. Pure: given the previous and the new version of a resource
//! and the clock, the write path learns what to refuse and what to write with it,
//! in the same transaction.

pub mod acknowledgement;
pub mod appointment;
pub mod careplan;
pub mod circle;
pub mod nde;
pub mod recipients;
pub mod referral;
pub mod stay;

use chrono::{DateTime, Utc};
use serde_json::Value;

pub use stay::StayRules;

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
