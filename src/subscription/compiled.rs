//! Subscriptions compiled for matching: the conditions by resource type, kept in
//! a cache shared by the write path, and the verdict for one write over its index
//! rows (and the previous version's, for topics).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{parse_query, topic, Definitions, Interaction, Topic};
use crate::error::{FhirError, FhirResult};
use crate::search::index::IndexRows;
use crate::search::matcher::{self, Subject, Truth};
use crate::search::Condition;

/// A subscription's matching rules, compiled once and shared.
#[derive(Debug)]
pub struct Compiled {
    topic: Option<Topic>,
    /// R4 criteria or Backport filters, by resource type (AND-ed).
    filters: HashMap<String, Vec<Condition>>,
}

/// The answer for one write.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    No,
    Yes,
    /// Decided by these conditions on the current version, which the database
    /// must evaluate (chains, numbers).
    AskDatabase(Vec<Condition>),
}

type CacheKey = (Option<String>, Vec<String>);
/// Compiled criteria by their text, for one generation of the parameter table.
struct Cache {
    generation: u64,
    compiled: HashMap<CacheKey, Arc<Compiled>>,
}
const CACHE_LIMIT: usize = 50_000;

/// The subscriptions in force, compiled once each and shared (by their text,
/// until the search parameters change: a parameter deleted makes criteria fail).
#[derive(Default)]
pub struct CompiledCache(Mutex<Option<Cache>>);

impl CompiledCache {
    /// The compiled form of a subscription in force.
    pub fn compile(
        &self,
        definitions: &Definitions<'_>,
        topic_url: Option<&str>,
        criteria: &[String],
    ) -> FhirResult<Arc<Compiled>> {
        let key = (topic_url.map(str::to_owned), criteria.to_vec());
        let generation = definitions.params.generation();
        if let Some(found) = self.0.lock().ok().and_then(|cache| {
            cache
                .as_ref()
                .filter(|c| c.generation == generation)
                .and_then(|c| c.compiled.get(&key).cloned())
        }) {
            return Ok(found);
        }
        let topic = match topic_url {
            Some(url) => Some(
                topic::find(definitions.topics, url)
                    .ok_or_else(|| {
                        FhirError::Internal(format!(
                            "subscription topic {url} is no longer defined"
                        ))
                    })?
                    .clone(),
            ),
            None => None,
        };
        let mut filters: HashMap<String, Vec<Condition>> = HashMap::new();
        for criterion in criteria {
            let (res_type, conditions) = parse_query(definitions.params, criterion)?;
            filters.entry(res_type).or_default().extend(conditions);
        }
        let compiled = Arc::new(Compiled { topic, filters });
        if let Ok(mut cache) = self.0.lock() {
            let cache = cache.get_or_insert_with(|| Cache {
                generation,
                compiled: HashMap::new(),
            });
            if cache.generation != generation || cache.compiled.len() >= CACHE_LIMIT {
                cache.generation = generation;
                cache.compiled.clear();
            }
            cache.compiled.insert(key, compiled.clone());
        }
        Ok(compiled)
    }
}

/// The values of one search parameter in a version's rows, comparable as a set.
fn values_of(rows: Option<&IndexRows>, param: &str) -> Vec<String> {
    let Some(rows) = rows else {
        return Vec::new();
    };
    let mut values: Vec<String> = rows
        .tokens
        .iter()
        .filter(|r| r.param == param)
        .map(|r| format!("{:?}|{:?}", r.system, r.code))
        .chain(
            rows.references
                .iter()
                .filter(|r| r.param == param)
                .map(|r| format!("{:?}/{:?}|{:?}", r.target_type, r.target_id, r.url)),
        )
        .chain(
            rows.strings
                .iter()
                .filter(|r| r.param == param)
                .map(|r| r.exact.clone()),
        )
        .chain(
            rows.dates
                .iter()
                .filter(|r| r.param == param)
                .map(|r| format!("{}/{}", r.low, r.high)),
        )
        .chain(
            rows.uris
                .iter()
                .filter(|r| r.param == param)
                .map(|r| r.uri.clone()),
        )
        .collect();
    values.sort();
    values.dedup();
    values
}

impl Compiled {
    /// `(resource type, key)` rows under which the subscription is filed; the key
    /// is empty when no single value is required (see `search::matcher`).
    pub fn keys(&self) -> Vec<(String, String)> {
        let mut required: Vec<(String, Vec<Condition>)> = Vec::new();
        match &self.topic {
            None => required.extend(self.filters.iter().map(|(t, c)| (t.clone(), c.clone()))),
            Some(topic) => {
                for trigger in &topic.triggers {
                    let mut conditions = self
                        .filters
                        .get(&trigger.resource_type)
                        .cloned()
                        .unwrap_or_default();
                    if trigger.require_both || trigger.previous.is_none() {
                        conditions.extend(trigger.current.iter().flatten().cloned());
                    }
                    required.push((trigger.resource_type.clone(), conditions));
                }
            }
        }
        let mut keys = Vec::new();
        for (res_type, conditions) in required {
            match matcher::keys_of_conditions(&conditions) {
                Some(found) => keys.extend(found.into_iter().map(|k| (res_type.clone(), k))),
                None => keys.push((res_type, String::new())),
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// Whether evaluating a write needs the previous version's rows.
    pub fn needs_previous(&self, res_type: &str, interaction: Interaction) -> bool {
        interaction == Interaction::Delete
            || self.topic.as_ref().is_some_and(|t| {
                t.triggers.iter().any(|tr| {
                    tr.resource_type == res_type
                        && (tr.previous.is_some() || tr.changed_param.is_some())
                })
            })
    }

    /// Is this write an event for the subscription? `current` is `None` after a
    /// delete, `previous` is `None` for a create.
    pub fn evaluate(
        &self,
        res_type: &str,
        interaction: Interaction,
        current: Option<&Subject<'_>>,
        previous: Option<&Subject<'_>>,
    ) -> Verdict {
        let filters = self.filters.get(res_type);
        let Some(topic) = &self.topic else {
            // R4 criteria: creates and updates whose result matches.
            return match (interaction, filters, current) {
                (Interaction::Delete, ..) | (_, None, _) | (_, _, None) => Verdict::No,
                (_, Some(conditions), Some(s)) => {
                    decide(matcher::evaluate(conditions, s), conditions, true)
                }
            };
        };
        let mut verdict = Verdict::No;
        for trigger in topic
            .triggers
            .iter()
            .filter(|t| t.resource_type == res_type)
        {
            if !trigger.interactions.contains(&interaction) {
                continue;
            }
            if let Some(param) = &trigger.changed_param {
                if values_of(previous.map(|p| p.rows), param)
                    == values_of(current.map(|c| c.rows), param)
                {
                    continue;
                }
            }
            // Previous-version criteria are evaluated in memory only (its index rows
            // are gone from the database): what cannot be told there does not pass.
            let prev =
                match previous {
                    None => Truth::from_bool(trigger.result_for_create),
                    Some(p) => trigger.previous.as_ref().map_or(Truth::Yes, |c| {
                        match matcher::evaluate(c, p) {
                            Truth::Unknown => Truth::No,
                            t => t,
                        }
                    }),
                };
            let cur = match current {
                None => Truth::from_bool(trigger.result_for_delete),
                Some(c) => trigger
                    .current
                    .as_ref()
                    .map_or(Truth::Yes, |conditions| matcher::evaluate(conditions, c)),
            };
            let criteria = match (&trigger.previous, &trigger.current) {
                (None, None) => Truth::Yes,
                (None, Some(_)) => cur,
                (Some(_), None) => prev,
                (Some(_), Some(_)) if trigger.require_both => prev.and(cur),
                (Some(_), Some(_)) => prev.or(cur),
            };
            let subject = current.or(previous);
            let filtered = match (filters, subject) {
                (Some(f), Some(s)) => matcher::evaluate(f, s),
                _ => Truth::Yes,
            };
            let mut asked: Vec<Condition> = filters.cloned().unwrap_or_default();
            asked.extend(trigger.current.iter().flatten().cloned());
            match decide(criteria.and(filtered), &asked, current.is_some()) {
                Verdict::No => {}
                decided => verdict = decided,
            }
            if verdict == Verdict::Yes {
                break;
            }
        }
        verdict
    }
}

fn decide(truth: Truth, conditions: &[Condition], database_can_tell: bool) -> Verdict {
    match truth {
        Truth::Yes => Verdict::Yes,
        Truth::No => Verdict::No,
        Truth::Unknown if database_can_tell => Verdict::AskDatabase(conditions.to_vec()),
        Truth::Unknown => Verdict::No,
    }
}
