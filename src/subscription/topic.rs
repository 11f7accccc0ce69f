//! Subscription topics (R5 `SubscriptionTopic`, used through the R4 Backport): the
//! server's own in `profiles/subscription-topics.json`, plus a deployer's file
//! (`PASSERELLE_SUBSCRIPTION_TOPICS`) read at start. A topic names what counts as
//! an event: for each resource type, the interactions, query criteria on the
//! previous and current versions, and (our extension) a search parameter whose
//! values must change. Pure, apart from the one-time installation.

use serde_json::Value;

use crate::error::{FhirError, FhirResult, Issue};
use crate::search::params::ParamTable;
use crate::search::{self, Condition, Handling};

const SERVER_TOPICS: &str = include_str!("../../profiles/subscription-topics.json");
/// Our extension on `resourceTrigger`: the trigger fires only when the values of
/// this search parameter differ between the previous and the current version.
pub const CHANGED_PARAMETER: &str =
    "https://passerelle.example.fr/fhir/StructureDefinition/topic-changed-parameter";

/// What a write did to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Update,
    Delete,
}

impl Interaction {
    pub fn as_str(self) -> &'static str {
        match self {
            Interaction::Create => "create",
            Interaction::Update => "update",
            Interaction::Delete => "delete",
        }
    }
}

/// One `resourceTrigger` of a topic, compiled.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub resource_type: String,
    pub interactions: Vec<Interaction>,
    pub previous: Option<Vec<Condition>>,
    pub current: Option<Vec<Condition>>,
    pub result_for_create: bool,
    pub result_for_delete: bool,
    pub require_both: bool,
    pub changed_param: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Topic {
    pub url: String,
    pub title: String,
    pub triggers: Vec<Trigger>,
    /// `(resource type, parameter)` pairs a subscriber may filter on.
    pub filters: Vec<(String, String)>,
    /// The definition as written, for the CapabilityStatement and `$status`.
    pub definition: Value,
}

/// The server's topics, and those of `extra` (a Bundle or a single
/// SubscriptionTopic, JSON) when given; their criteria are read against `params`.
pub fn load(params: &ParamTable, extra: Option<&str>) -> FhirResult<Vec<Topic>> {
    let mut topics = parse_topics(params, SERVER_TOPICS)?;
    if let Some(text) = extra {
        topics.extend(parse_topics(params, text)?);
    }
    Ok(topics)
}

/// The topic of `url` (a canonical, `|version` ignored) among `topics`.
pub fn find<'t>(topics: &'t [Topic], url: &str) -> Option<&'t Topic> {
    let url = url.split('|').next().unwrap_or(url);
    topics.iter().find(|t| t.url == url)
}

fn invalid(message: String) -> FhirError {
    FhirError::Unprocessable(vec![Issue::new("invalid", message)])
}

fn parse_topics(params: &ParamTable, text: &str) -> FhirResult<Vec<Topic>> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("subscription topics are not JSON: {e}")))?;
    let resources: Vec<&Value> = match value["resourceType"].as_str() {
        Some("Bundle") => value["entry"]
            .as_array()
            .map(|entries| entries.iter().map(|e| &e["resource"]).collect())
            .unwrap_or_default(),
        _ => vec![&value],
    };
    resources
        .into_iter()
        .map(|t| parse_topic(params, t))
        .collect()
}

fn parse_topic(params: &ParamTable, topic: &Value) -> FhirResult<Topic> {
    let url = topic["url"]
        .as_str()
        .ok_or_else(|| invalid("a SubscriptionTopic needs a url".to_owned()))?;
    let triggers = topic["resourceTrigger"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| parse_trigger(params, url, t))
        .collect::<FhirResult<Vec<_>>>()?;
    if triggers.is_empty() {
        return Err(invalid(format!("topic {url} has no resourceTrigger")));
    }
    let filters = topic["canFilterBy"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            Some((
                f["resource"].as_str()?.rsplit('/').next()?.to_owned(),
                f["filterParameter"].as_str()?.to_owned(),
            ))
        })
        .collect();
    Ok(Topic {
        url: url.to_owned(),
        title: topic["title"].as_str().unwrap_or(url).to_owned(),
        triggers,
        filters,
        definition: topic.clone(),
    })
}

fn parse_trigger(params: &ParamTable, url: &str, trigger: &Value) -> FhirResult<Trigger> {
    let resource_type = trigger["resource"]
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .ok_or_else(|| invalid(format!("a trigger of topic {url} names no resource")))?
        .to_owned();
    let interactions = trigger["supportedInteraction"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| match i.as_str()? {
            "create" => Some(Interaction::Create),
            "update" => Some(Interaction::Update),
            "delete" => Some(Interaction::Delete),
            _ => None,
        })
        .collect();
    let criteria = &trigger["queryCriteria"];
    let conditions = |key: &str| -> FhirResult<Option<Vec<Condition>>> {
        criteria[key]
            .as_str()
            .map(|q| {
                search::parse(
                    params,
                    &resource_type,
                    &search::parse_form(q),
                    Handling::Strict,
                )
                .map(|plan| plan.conditions)
                .map_err(|e| invalid(format!("topic {url}, {key} criteria '{q}': {e}")))
            })
            .transpose()
    };
    let changed_param = trigger["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == CHANGED_PARAMETER)
        .and_then(|e| e["valueString"].as_str())
        .map(str::to_owned);
    Ok(Trigger {
        previous: conditions("previous")?,
        current: conditions("current")?,
        result_for_create: criteria["resultForCreate"] == "test-passes",
        result_for_delete: criteria["resultForDelete"] == "test-passes",
        require_both: criteria["requireBoth"].as_bool().unwrap_or(false),
        resource_type,
        interactions,
        changed_param,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_topics_compile() {
        let topics = parse_topics(&ParamTable::standard(), SERVER_TOPICS).expect("topics parse");
        assert_eq!(topics.len(), 5);
        let discharge = topics
            .iter()
            .find(|t| t.url.ends_with("/encounter-discharge"))
            .expect("discharge topic");
        let trigger = &discharge.triggers[0];
        assert_eq!(trigger.resource_type, "Encounter");
        assert!(trigger.require_both && trigger.result_for_create && !trigger.result_for_delete);
        assert!(trigger.previous.is_some() && trigger.current.is_some());
        let team = topics
            .iter()
            .find(|t| t.url.ends_with("/careteam-membership"))
            .expect("care team topic");
        assert_eq!(
            team.triggers[0].changed_param.as_deref(),
            Some("participant")
        );
        assert!(team.triggers[0].interactions.contains(&Interaction::Delete));
    }

    #[test]
    fn a_bad_topic_is_refused_with_its_reason() {
        let bad = r#"{"resourceType": "SubscriptionTopic", "url": "urn:t",
            "resourceTrigger": [{"resource": "Encounter", "queryCriteria": {"current": "nope=1"}}]}"#;
        let err = parse_topics(&ParamTable::standard(), bad).expect_err("unknown parameter");
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
