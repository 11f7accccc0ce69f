//! The Subscription operations of the R4 Backport (`$status`, `$events`) and the
//! delivery log (`$deliveries`): what a subscriber can see of its notifications,
//! and the replay of events it missed, by number.

use chrono::Utc;
use deadpool_postgres::Pool;
use serde_json::{json, Value};

use super::read;
use crate::delivery;
use crate::error::{FhirError, FhirResult};
use crate::fhir::datetime::format_instant;
use crate::store::subscriptions;
use crate::subscription::notification::{self, About, Kind};
use crate::subscription::{Channel, Content};

/// Events returned by one `$events` or `$deliveries` call at most.
const MAX_EVENTS: i64 = 1000;

struct Current {
    resource: Value,
    channel: Option<Channel>,
    state: Option<subscriptions::Status>,
}

async fn current(pool: &Pool, sub_id: &str) -> FhirResult<Current> {
    let stored = read(&pool.get().await?, "Subscription", sub_id).await?;
    let resource: Value = serde_json::from_str(stored.json.as_deref().unwrap_or("{}"))
        .map_err(|e| FhirError::Internal(e.to_string()))?;
    let client = pool.get().await?;
    let state = subscriptions::status(&client, sub_id).await?;
    let channel = state
        .as_ref()
        .and_then(|s| serde_json::from_value(s.channel.clone()).ok());
    Ok(Current {
        resource,
        channel,
        state,
    })
}

fn about<'a>(base: &'a str, sub_id: &'a str, c: &'a Current) -> About<'a> {
    About {
        base,
        sub_id,
        topic: c.channel.as_ref().and_then(|ch| ch.topic.as_deref()),
        status: c.resource["status"].as_str().unwrap_or("off"),
        events_since_start: c.state.as_ref().map_or(0, |s| s.events_since_start),
        error: c.resource["error"].as_str(),
    }
}

/// `$status`: a searchset of `subscription-status` Parameters, one per id.
pub async fn status(pool: &Pool, base: &str, ids: &[String]) -> FhirResult<Value> {
    let mut entries = Vec::new();
    for id in ids {
        let c = current(pool, id).await?;
        let parameters =
            notification::status(&about(base, id, &c), Kind::QueryStatus, &[], Content::Empty);
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{}", parameters["id"].as_str().unwrap_or_default()),
            "resource": parameters,
            "search": {"mode": "match"},
        }));
    }
    Ok(json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "entry": entries,
    }))
}

fn number_param(params: &[(String, String)], name: &str) -> FhirResult<Option<i64>> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| {
            v.parse::<i64>().map_err(|_| {
                FhirError::bad_request(format!("{name} must be an integer, got '{v}'"))
            })
        })
        .transpose()
}

/// The subscription and its recorded events in the range asked for
/// (`eventsSinceNumber`, `eventsUntilNumber`, both inclusive, bounded by what
/// exists), at most `MAX_EVENTS`.
async fn events_in_range(
    pool: &Pool,
    sub_id: &str,
    params: &[(String, String)],
) -> FhirResult<(Current, Vec<subscriptions::Event>)> {
    let c = current(pool, sub_id).await?;
    let last = c.state.as_ref().map_or(0, |s| s.events_since_start);
    let since = number_param(params, "eventsSinceNumber")?
        .unwrap_or(1)
        .max(1);
    let until = number_param(params, "eventsUntilNumber")?
        .unwrap_or(last)
        .min(last);
    let client = pool.get().await?;
    let events = subscriptions::events(&client, sub_id, since, until, MAX_EVENTS).await?;
    Ok((c, events))
}

/// `$events`: the events numbered in the range, as a `query-event` notification,
/// in the content asked for (`content`), by default the subscription's own.
pub async fn events(
    pool: &Pool,
    base: &str,
    sub_id: &str,
    params: &[(String, String)],
) -> FhirResult<Value> {
    let (c, recorded) = events_in_range(pool, sub_id, params).await?;
    let content = match params.iter().find(|(k, _)| k == "content") {
        Some((_, v)) => Content::parse(v).ok_or_else(|| {
            FhirError::bad_request(format!(
                "content must be empty, id-only or full-resource, got '{v}'"
            ))
        })?,
        None => c.channel.as_ref().map_or(Content::IdOnly, |ch| ch.content),
    };
    let client = pool.get().await?;
    let events = delivery::notification_events(&client, recorded, content).await?;
    Ok(notification::bundle(
        &about(base, sub_id, &c),
        Kind::QueryEvent,
        &events,
        content,
        Utc::now(),
    ))
}

/// `$deliveries`: each event in the range with its delivery outcome (status,
/// attempts, when delivered, the last error), as Parameters.
pub async fn deliveries(
    pool: &Pool,
    sub_id: &str,
    params: &[(String, String)],
) -> FhirResult<Value> {
    let (c, recorded) = events_in_range(pool, sub_id, params).await?;
    let last = c.state.as_ref().map_or(0, |s| s.events_since_start);
    let mut parameters = vec![
        json!({"name": "status", "valueCode": c.resource["status"].as_str().unwrap_or("off")}),
        json!({"name": "events-since-subscription-start", "valueString": last.to_string()}),
    ];
    if let Some(state) = &c.state {
        if state.unnumbered > 0 {
            parameters.push(json!({"name": "events-awaiting-number", "valueString": state.unnumbered.to_string()}));
        }
        if let Some(error) = &state.last_error {
            parameters.push(json!({"name": "last-error", "valueString": error}));
        }
    }
    for e in recorded {
        let mut parts = vec![
            json!({"name": "event-number", "valueString": e.event_number.to_string()}),
            json!({"name": "focus", "valueReference": {"reference": format!("{}/{}/_history/{}", e.focus_type, e.focus_id, e.focus_version)}}),
            json!({"name": "interaction", "valueCode": e.interaction}),
            json!({"name": "recorded", "valueInstant": format_instant(e.recorded_at)}),
            json!({"name": "status", "valueCode": e.status}),
            json!({"name": "attempts", "valueInteger": e.attempts}),
        ];
        if let Some(at) = e.delivered_at {
            parts.push(json!({"name": "delivered", "valueInstant": format_instant(at)}));
        }
        if let Some(error) = e.last_error {
            parts.push(json!({"name": "error", "valueString": error}));
        }
        parameters.push(json!({"name": "event", "part": parts}));
    }
    Ok(json!({"resourceType": "Parameters", "parameter": parameters}))
}

/// How long a websocket binding token stays valid.
const WS_TOKEN_MINUTES: i64 = 10;

/// `$get-ws-binding-token`: a token that binds a websocket to the subscription,
/// and the socket's URL.
pub async fn ws_binding_token(pool: &Pool, base: &str, sub_id: &str) -> FhirResult<Value> {
    let c = current(pool, sub_id).await?;
    if !c.channel.as_ref().is_some_and(|ch| ch.websocket) {
        return Err(FhirError::bad_request(format!(
            "Subscription/{sub_id} does not have a websocket channel"
        )));
    }
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let expires = Utc::now() + chrono::Duration::minutes(WS_TOKEN_MINUTES);
    let client = pool.get().await?;
    subscriptions::insert_ws_token(&client, &token, sub_id, expires).await?;
    let socket = match base.split_once("://") {
        Some(("https", rest)) => format!("wss://{rest}/$websocket"),
        Some((_, rest)) => format!("ws://{rest}/$websocket"),
        None => format!("{base}/$websocket"),
    };
    Ok(json!({"resourceType": "Parameters", "parameter": [
        {"name": "token", "valueString": token},
        {"name": "expiration", "valueDateTime": format_instant(expires)},
        {"name": "subscription", "valueString": sub_id},
        {"name": "websocket-url", "valueUrl": socket},
    ]}))
}

/// The subscription a websocket binds with `token`, and the handshake to send it:
/// a Backport handshake Bundle, or R4's `bound <id>`.
pub async fn ws_bind(pool: &Pool, base: &str, token: &str) -> FhirResult<(String, String)> {
    let client = pool.get().await?;
    let sub_id = subscriptions::ws_token_subscription(&client, token)
        .await?
        .ok_or_else(|| FhirError::bad_request("the binding token is unknown or has expired"))?;
    drop(client);
    let c = current(pool, &sub_id).await?;
    let handshake = match &c.channel {
        Some(channel) if channel.backport => notification::bundle(
            &about(base, &sub_id, &c),
            Kind::Handshake,
            &[],
            channel.content,
            Utc::now(),
        )
        .to_string(),
        _ => format!("bound {sub_id}"),
    };
    Ok((sub_id, handshake))
}
