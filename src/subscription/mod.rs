//! Subscription rules: what a `Subscription` resource asks for (R4 criteria, or a
//! topic of the R4 Backport with filters), how the server accepts it (status,
//! endpoint policy, signing secret), and whether a write is an event for it. Pure:
//! the write path (`service::notify`) feeds it index rows and stores what it says.

mod compiled;
pub mod endpoint;
pub mod notification;
pub mod topic;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{FhirError, FhirResult, Issue};
use crate::fhir::datetime;
use crate::search::params::ParamTable;
use crate::search::{self, Condition, Handling};
pub use compiled::{Compiled, CompiledCache, Verdict};
pub use endpoint::EndpointPolicy;
pub use topic::{Interaction, Topic};

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
/// Our extension on `Subscription`: the HMAC-SHA256 key callbacks are signed with.
pub const SECRET_EXTENSION: &str =
    "https://passerelle.example.fr/fhir/StructureDefinition/subscription-secret";

fn backport(name: &str) -> String {
    format!("{BACKPORT}{name}")
}

/// What a notification body carries (Backport `backport-payload-content`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Content {
    Empty,
    IdOnly,
    FullResource,
}

impl Content {
    pub fn as_str(self) -> &'static str {
        match self {
            Content::Empty => "empty",
            Content::IdOnly => "id-only",
            Content::FullResource => "full-resource",
        }
    }

    pub fn parse(text: &str) -> Option<Content> {
        match text {
            "empty" => Some(Content::Empty),
            "id-only" => Some(Content::IdOnly),
            "full-resource" => Some(Content::FullResource),
            _ => None,
        }
    }
}

/// How and where notifications go: what the delivery worker needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    /// Empty for a websocket channel.
    pub endpoint: String,
    /// Notifications go through sockets bound with `$get-ws-binding-token`.
    #[serde(default)]
    pub websocket: bool,
    /// Notifications go by mail (SMTP) to the `mailto:` endpoint.
    #[serde(default)]
    pub email: bool,
    /// `channel.header`, each `Name: value`.
    pub headers: Vec<String>,
    /// `channel.payload`: the MIME type of the body; `None`: a POST without a body.
    pub mime: Option<String>,
    pub content: Content,
    /// Topic-based (notification Bundles) rather than R4 criteria (the resource).
    pub backport: bool,
    pub topic: Option<String>,
    pub secret: String,
    pub heartbeat_secs: Option<i64>,
    pub timeout_secs: Option<i64>,
    /// Events per notification (Backport `max-count`); 1 for R4.
    pub max_count: i64,
}

/// A Subscription as the server holds it in force.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub active: bool,
    /// A Backport subscription being activated owes a handshake.
    pub handshake: bool,
    pub topic: Option<String>,
    /// R4 criteria, or the Backport filters (`Type?param=value`).
    pub criteria: Vec<String>,
    /// An NdE subscriber's own criteria, which select event declarations (see
    /// [`selects_declarations`]); empty for any other subscription.
    pub selects: Vec<String>,
    pub channel: Channel,
    pub ends_at: Option<DateTime<Utc>>,
    /// The signing secret was generated here, the resource naming none.
    pub secret_generated: bool,
}

fn invalid(path: &str, message: impl Into<String>) -> FhirError {
    FhirError::Unprocessable(vec![Issue::new("invalid", message).at(path)])
}

fn extensions<'a>(element: &'a Value, url: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    element["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(move |e| e["url"] == url)
}

fn extension_int(element: &Value, name: &str) -> Option<i64> {
    extensions(element, &backport(name)).find_map(|e| {
        ["valueUnsignedInt", "valuePositiveInt", "valueInteger"]
            .iter()
            .find_map(|k| e[*k].as_i64())
    })
}

/// Checks a Subscription about to be written (its criteria only when it will be in
/// force: one put in `error` or `off` may keep criteria that no longer apply) and
/// puts the server's part in it: a requested subscription becomes `active` (and
/// loses a stale `error`), and one without a signing secret gets a generated one
/// (a subscription written again without one keeps the one it has: see
/// `store::subscriptions::register`). The secret is taken out of the resource.
/// Returns what is then in force. `id` is the Subscription's.
pub fn prepare(
    resource: &mut Value,
    id: &str,
    policy: &EndpointPolicy,
    definitions: &Definitions<'_>,
) -> FhirResult<Spec> {
    let status = resource["status"]
        .as_str()
        .unwrap_or("requested")
        .to_owned();
    let active = matches!(status.as_str(), "requested" | "active");
    let criteria_text = resource["criteria"]
        .as_str()
        .ok_or_else(|| invalid("Subscription.criteria", "a Subscription needs criteria"))?
        .to_owned();
    let topic = topic::find(definitions.topics, &criteria_text);
    let is_backport = topic.is_some()
        || resource["meta"]["profile"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p.as_str().is_some_and(|p| p.starts_with(BACKPORT)))
        });
    let criteria = match topic {
        Some(topic) => {
            let filters: Vec<String> = extensions(
                &resource["_criteria"],
                &backport("backport-filter-criteria"),
            )
            .filter_map(|e| e["valueString"].as_str().map(str::to_owned))
            .collect();
            if active {
                check_filters(definitions.params, topic, &filters)?;
            }
            filters
        }
        // Criteria are checked for a subscription that will be in force; one put in
        // `error` or `off` may keep criteria that no longer apply (see
        // `service::stop_subscriptions_out_of_force`).
        None if !active => vec![criteria_text.clone()],
        // A canonical URL that names no topic here; R4 criteria (`Type?…`) may hold
        // URLs in their values (`code=http://loinc.org|…`).
        None if is_backport || is_url(&criteria_text) => {
            return Err(invalid(
                "Subscription.criteria",
                format!(
                    "'{criteria_text}' is not a topic of this server (see the CapabilityStatement)"
                ),
            ))
        }
        None => {
            check_criteria(definitions.params, &criteria_text)?;
            vec![criteria_text.clone()]
        }
    };
    // An NdE subscriber is sent the notification requests written for it.
    let (criteria, selects) = match topic {
        None if selects_declarations(resource, &criteria_text) => (
            vec![format!(
                "CommunicationRequest?based-on=Subscription/{id}&status=active"
            )],
            criteria,
        ),
        _ => (criteria, Vec::new()),
    };
    let channel = resource["channel"].clone();
    let (websocket, email) = match channel["type"].as_str() {
        Some("rest-hook") => (false, false),
        Some("websocket") => (true, false),
        Some("email") => (false, true),
        Some(other) => {
            return Err(invalid(
                "Subscription.channel.type",
                format!(
                    "channel type '{other}' is not supported; use rest-hook, websocket or email"
                ),
            ))
        }
        None => {
            return Err(invalid(
                "Subscription.channel.type",
                "a channel needs a type",
            ))
        }
    };
    let endpoint = match channel["endpoint"].as_str() {
        Some(endpoint) if email => {
            if let Some(reason) = policy.mail_refusal(endpoint) {
                return Err(invalid("Subscription.channel.endpoint", reason));
            }
            endpoint.to_owned()
        }
        Some(endpoint) if !websocket => {
            if let Some(reason) = policy.refusal(endpoint) {
                return Err(invalid("Subscription.channel.endpoint", reason));
            }
            endpoint.to_owned()
        }
        None if !websocket => {
            return Err(invalid(
                "Subscription.channel.endpoint",
                "a rest-hook needs an endpoint",
            ))
        }
        // A websocket's endpoint is the server's own: what the client wrote is kept
        // in the resource but never called.
        _ => String::new(),
    };
    let headers: Vec<String> = channel["header"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h.as_str().map(str::to_owned))
        .collect();
    if let Some(bad) = headers.iter().find(|h| !valid_header(h)) {
        return Err(invalid(
            "Subscription.channel.header",
            format!("'{bad}' is not a 'Name: value' HTTP header"),
        ));
    }
    let mime = channel["payload"].as_str().map(str::to_owned);
    if let Some(m) = &mime {
        if ![
            "application/fhir+json",
            "application/json",
            "application/fhir+xml",
            "application/xml",
        ]
        .contains(&m.as_str())
        {
            return Err(invalid(
                "Subscription.channel.payload",
                format!("payload '{m}' is not supported; use application/fhir+json or application/fhir+xml"),
            ));
        }
    }
    let content = match extensions(&channel["_payload"], &backport("backport-payload-content"))
        .find_map(|e| e["valueCode"].as_str())
    {
        Some(code) => Content::parse(code).ok_or_else(|| {
            invalid(
                "Subscription.channel.payload",
                format!("'{code}' is not a payload content"),
            )
        })?,
        None if !is_backport && mime.is_some() => Content::FullResource,
        None if is_backport => Content::IdOnly,
        None => Content::Empty,
    };
    let max_count = extension_int(&channel, "backport-max-count")
        .unwrap_or(1)
        .max(1);
    let ends_at =
        match resource["end"].as_str() {
            Some(end) => Some(datetime::parse_range(end).map(|r| r.low).ok_or_else(|| {
                invalid("Subscription.end", format!("'{end}' is not an instant"))
            })?),
            None => None,
        };
    let given = take_secret(resource);
    let secret_generated = given.is_none();
    let secret = match given {
        Some(s) if s.len() >= 16 => s,
        Some(_) => {
            return Err(invalid(
                "Subscription.extension",
                "the signing secret must be at least 16 characters",
            ))
        }
        None => format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ),
    };
    if active {
        resource["status"] = json!("active");
        if let Some(obj) = resource.as_object_mut() {
            obj.remove("error");
        }
    }
    Ok(Spec {
        active,
        // A socket gets its handshake when it binds.
        handshake: is_backport && status == "requested" && !websocket,
        topic: topic.map(|t| t.url.clone()),
        criteria,
        selects,
        channel: Channel {
            endpoint,
            websocket,
            email,
            headers,
            mime,
            content,
            backport: is_backport,
            topic: topic.map(|t| t.url.clone()),
            secret,
            heartbeat_secs: extension_int(&channel, "backport-heartbeat-period"),
            timeout_secs: extension_int(&channel, "backport-timeout"),
            max_count: if is_backport { max_count } else { 1 },
        },
        ends_at,
        secret_generated,
    })
}

/// Takes the signing secret out of a Subscription: it is kept with the
/// subscription's channel (`subscription.channel`), never in the stored resource,
/// so that no read, search, history or export returns it.
fn take_secret(resource: &mut Value) -> Option<String> {
    let given = extensions(resource, SECRET_EXTENSION)
        .find_map(|e| e["valueString"].as_str())
        .map(str::to_owned);
    if let Some(obj) = resource.as_object_mut() {
        let others: Vec<Value> = obj
            .get("extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| e["url"] != SECRET_EXTENSION)
            .cloned()
            .collect();
        match others.is_empty() {
            true => obj.remove("extension"),
            false => obj.insert("extension".to_owned(), Value::Array(others)),
        };
    }
    given
}

/// The answer to the write that set a subscription's secret (its creation, or a
/// write naming one): the stored resource with the secret, returned this once.
pub fn with_secret(mut resource: Value, secret: &str) -> Value {
    let ext = json!({"url": SECRET_EXTENSION, "valueString": secret});
    match resource["extension"].as_array_mut() {
        Some(list) => list.push(ext),
        None => resource["extension"] = json!([ext]),
    }
    resource
}

/// Whether a Subscription is an NdE subscriber's (the guide's `nde-subscription`
/// profile, or criteria on the event type of CommunicationRequests), whose
/// criteria select event declarations: for each, the server writes a notification
/// request based on the subscription, and that is what it is sent (one callback
/// per event, holding the patient and the stay). Criteria that already select by
/// `based-on` are the server's own standing subscriptions.
pub fn selects_declarations(resource: &Value, criteria: &str) -> bool {
    let Some(query) = criteria.strip_prefix("CommunicationRequest?") else {
        return false;
    };
    let names: Vec<&str> = query
        .split('&')
        .filter_map(|pair| pair.split(['=', ':', '.']).next())
        .collect();
    let nde_profile = resource["meta"]["profile"].as_array().is_some_and(|p| {
        p.iter()
            .any(|p| p.as_str().is_some_and(|p| p.ends_with("/nde-subscription")))
    });
    !names.contains(&"based-on") && (nde_profile || names.contains(&"event-type"))
}

/// A URL rather than R4 criteria: the scheme comes before any query.
fn is_url(criteria: &str) -> bool {
    criteria
        .find("://")
        .is_some_and(|at| !criteria[..at].contains('?'))
}

fn valid_header(header: &str) -> bool {
    header.split_once(':').is_some_and(|(name, value)| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            && !value.contains(['\r', '\n'])
    })
}

fn parse_query(params: &ParamTable, criteria: &str) -> FhirResult<(String, Vec<Condition>)> {
    let (res_type, _) = criteria.split_once('?').unwrap_or((criteria, ""));
    if !crate::fhir::definitions::R4.is_resource_type(res_type) {
        return Err(invalid(
            "Subscription.criteria",
            format!("'{criteria}' does not start with a resource type"),
        ));
    }
    let plan = search::parse(
        params,
        res_type,
        &search::parse_criteria(criteria),
        Handling::Strict,
    )
    .map_err(|e| invalid("Subscription.criteria", format!("'{criteria}': {e}")))?;
    Ok((res_type.to_owned(), plan.conditions))
}

fn check_criteria(params: &ParamTable, criteria: &str) -> FhirResult<()> {
    parse_query(params, criteria).map(|_| ())
}

/// Backport filters: each on a type the topic triggers on, with parameters the
/// topic's `canFilterBy` allows.
fn check_filters(params: &ParamTable, topic: &Topic, filters: &[String]) -> FhirResult<()> {
    for filter in filters {
        let (res_type, _) = parse_query(params, filter)?;
        if !topic.triggers.iter().any(|t| t.resource_type == res_type) {
            return Err(invalid(
                "Subscription.criteria",
                format!(
                    "filter '{filter}': topic {} has no {res_type} trigger",
                    topic.url
                ),
            ));
        }
        for (name, _) in search::parse_criteria(filter) {
            let base = name.split([':', '.']).next().unwrap_or(&name);
            if !topic
                .filters
                .iter()
                .any(|(t, p)| *t == res_type && p == base)
            {
                return Err(invalid(
                    "Subscription.criteria",
                    format!(
                        "filter '{filter}': topic {} cannot be filtered by '{base}'",
                        topic.url
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// What subscriptions are checked and compiled against: the search parameters
/// in force and the topics.
#[derive(Clone, Copy)]
pub struct Definitions<'a> {
    pub params: &'a ParamTable,
    pub topics: &'a [Topic],
}

#[cfg(test)]
mod tests;
