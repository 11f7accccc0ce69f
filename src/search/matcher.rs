//! Does one resource match a search? Evaluated in memory over the index rows that
//! the write path has just extracted, with the semantics of `store::search_sql`, so
//! that subscriptions are matched without a query per subscription. Conditions that
//! need other resources (chains, `_has`) or numeric comparison are `Unknown`: the
//! caller asks the database for those. Candidate keys narrow the subscriptions to
//! evaluate: a subscription is looked up by one value it requires. Pure.

use chrono::{DateTime, Duration, Utc};

use super::index::{normalize, DateRow, IndexRows};
use super::params::ParamType;
use super::{Condition, Modifier, Prefix, SearchValue, Token};
use crate::fhir::datetime::Range;

/// A three-valued answer: `Unknown` when the rows alone cannot tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truth {
    Yes,
    No,
    Unknown,
}

impl Truth {
    pub fn from_bool(b: bool) -> Truth {
        if b {
            Truth::Yes
        } else {
            Truth::No
        }
    }

    pub fn and(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::No, _) | (_, Truth::No) => Truth::No,
            (Truth::Yes, Truth::Yes) => Truth::Yes,
            _ => Truth::Unknown,
        }
    }

    pub fn or(self, other: Truth) -> Truth {
        match (self, other) {
            (Truth::Yes, _) | (_, Truth::Yes) => Truth::Yes,
            (Truth::No, Truth::No) => Truth::No,
            _ => Truth::Unknown,
        }
    }

    fn not(self) -> Truth {
        match self {
            Truth::Yes => Truth::No,
            Truth::No => Truth::Yes,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

/// A resource version as the matcher sees it.
pub struct Subject<'a> {
    pub res_id: &'a str,
    pub last_updated: DateTime<Utc>,
    pub rows: &'a IndexRows,
}

/// All conditions (AND-ed) against one resource.
pub fn evaluate(conditions: &[Condition], subject: &Subject<'_>) -> Truth {
    conditions
        .iter()
        .fold(Truth::Yes, |acc, c| acc.and(condition(c, subject)))
}

fn condition(tested: &Condition, s: &Subject<'_>) -> Truth {
    match tested {
        Condition::Id(ids) => Truth::from_bool(ids.iter().any(|id| id == s.res_id)),
        Condition::LastUpdated(values) => {
            let row = DateRow {
                param: String::new(),
                low: s.last_updated,
                high: s.last_updated + Duration::microseconds(1),
                grp: 0,
            };
            Truth::from_bool(values.iter().any(|(p, r)| date_matches(&row, *p, r)))
        }
        Condition::Missing {
            param,
            kind,
            missing,
        } => match has_rows(s.rows, *kind, param) {
            Some(present) => Truth::from_bool(present != *missing),
            None => Truth::Unknown,
        },
        Condition::Param {
            param,
            kind,
            modifier,
            values,
        } => {
            let found = values.iter().fold(Truth::No, |acc, v| {
                acc.or(any_row(s.rows, *kind, param, modifier, v))
            });
            if *modifier == Modifier::Not {
                found.not()
            } else {
                found
            }
        }
        Condition::SameRow {
            param,
            kind: ParamType::Date,
            values,
        } => Truth::from_bool(s.rows.dates.iter().any(|row| {
            row.param == *param
                && values.iter().all(|v| match v {
                    SearchValue::Date(p, r) => date_matches(row, *p, r),
                    _ => false,
                })
        })),
        Condition::AnyOf(conditions) => conditions
            .iter()
            .fold(Truth::No, |acc, c| acc.or(condition(c, s))),
        Condition::AllOf(conditions) => evaluate(conditions, s),
        // Who is in a circle is the database's to say.
        Condition::SameRow { .. }
        | Condition::Chain { .. }
        | Condition::Has { .. }
        | Condition::InCircle { .. }
        | Condition::OwnedBy(_) => Truth::Unknown,
    }
}

/// Whether the resource has any row of a parameter; `None` for the kinds the
/// matcher leaves to the database.
fn has_rows(rows: &IndexRows, kind: ParamType, param: &str) -> Option<bool> {
    Some(match kind {
        ParamType::String => rows.strings.iter().any(|r| r.param == param),
        ParamType::Token => rows.tokens.iter().any(|r| r.param == param),
        ParamType::Reference => rows.references.iter().any(|r| r.param == param),
        ParamType::Date => rows.dates.iter().any(|r| r.param == param),
        ParamType::Uri => rows.uris.iter().any(|r| r.param == param),
        _ => return None,
    })
}

/// Does any row of `param` meet one value?
fn any_row(
    rows: &IndexRows,
    kind: ParamType,
    param: &str,
    modifier: &Modifier,
    value: &SearchValue,
) -> Truth {
    match (kind, value) {
        (ParamType::String, SearchValue::String(text)) => {
            let wanted = normalize(text);
            Truth::from_bool(rows.strings.iter().any(|r| {
                r.param == param
                    && match modifier {
                        Modifier::Exact => r.exact == *text,
                        Modifier::Contains => r.normalized.contains(&wanted),
                        _ => r.normalized.starts_with(&wanted),
                    }
            }))
        }
        (ParamType::Token, SearchValue::Token(token)) => match modifier {
            Modifier::None | Modifier::Not => Truth::from_bool(rows.tokens.iter().any(|r| {
                r.param == param && token_matches(token, r.system.as_deref(), r.code.as_deref())
            })),
            Modifier::Text => {
                let wanted = normalize(token.code.as_deref().unwrap_or_default());
                Truth::from_bool(rows.tokens.iter().any(|r| {
                    r.param == param && r.text.as_deref().is_some_and(|t| t.starts_with(&wanted))
                }))
            }
            _ => Truth::Unknown,
        },
        (ParamType::Reference, SearchValue::Token(token)) if *modifier == Modifier::Identifier => {
            Truth::from_bool(rows.references.iter().any(|r| {
                r.param == param
                    && token_matches(
                        token,
                        r.identifier_system.as_deref(),
                        r.identifier_value.as_deref(),
                    )
            }))
        }
        (
            ParamType::Reference,
            SearchValue::Reference {
                target_type,
                id,
                url,
            },
        ) => Truth::from_bool(rows.references.iter().any(|r| {
            r.param == param
                && ((!id.is_empty()
                    && r.target_id.as_deref() == Some(id.as_str())
                    && target_type
                        .as_ref()
                        .is_none_or(|t| r.target_type.as_deref() == Some(t.as_str())))
                    || url.as_ref().is_some_and(|u| r.url.as_deref() == Some(u)))
        })),
        (ParamType::Date, SearchValue::Date(prefix, range)) if *prefix != Prefix::Ap => {
            Truth::from_bool(
                rows.dates
                    .iter()
                    .any(|r| r.param == param && date_matches(r, *prefix, range)),
            )
        }
        (ParamType::Uri, SearchValue::Uri(uri)) => Truth::from_bool(rows.uris.iter().any(|r| {
            r.param == param
                && match modifier {
                    Modifier::Below => r.uri.starts_with(uri.as_str()),
                    Modifier::Above => uri.starts_with(r.uri.as_str()),
                    _ => r.uri == *uri,
                }
        })),
        _ => Truth::Unknown,
    }
}

fn token_matches(token: &Token, system: Option<&str>, code: Option<&str>) -> bool {
    let system_ok = match token.system.as_deref() {
        None => true,
        Some("") => system.is_none(),
        Some(s) => system == Some(s),
    };
    system_ok && token.code.as_deref().is_none_or(|c| code == Some(c))
}

/// R4's range semantics, as `search_sql::date_clause` renders them.
fn date_matches(row: &DateRow, prefix: Prefix, range: &Range) -> bool {
    match prefix {
        Prefix::Eq => row.low >= range.low && row.high <= range.high,
        Prefix::Ne => !(row.low >= range.low && row.high <= range.high),
        Prefix::Ap => row.low < range.high && row.high > range.low,
        Prefix::Ge => row.high > range.low,
        Prefix::Le => row.low < range.high,
        Prefix::Gt => row.high > range.high,
        Prefix::Lt => row.low < range.low,
        Prefix::Sa => row.low >= range.high,
        Prefix::Eb => row.high <= range.low,
    }
}

/// The keys under which a subscription with these conditions is filed: one
/// condition that every match must meet, as the values that satisfy it (any one of
/// them). `None`: no such condition; the subscription is a candidate for every
/// resource of its type. References are preferred (a patient, a practitioner: the
/// most selective), then tokens, then ids.
pub fn keys_of_conditions(conditions: &[Condition]) -> Option<Vec<String>> {
    let mut best: Option<(u8, Vec<String>)> = None;
    for condition in conditions {
        let candidate = match condition {
            Condition::Param {
                param,
                kind: ParamType::Reference,
                modifier: Modifier::None | Modifier::Type(_),
                values,
            } => values
                .iter()
                .map(|v| match v {
                    SearchValue::Reference { id, .. } if !id.is_empty() => {
                        Some(reference_key(param, id))
                    }
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(|keys| (3, keys)),
            Condition::Param {
                param,
                kind: ParamType::Token,
                modifier: Modifier::None,
                values,
            } => values
                .iter()
                .map(|v| match v {
                    SearchValue::Token(Token { code: Some(c), .. }) => Some(token_key(param, c)),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(|keys| (2, keys)),
            Condition::Id(ids) => Some((1, ids.iter().map(|id| token_key("_id", id)).collect())),
            _ => None,
        };
        if let Some((rank, keys)) = candidate {
            if !keys.is_empty() && best.as_ref().is_none_or(|(r, _)| rank > *r) {
                best = Some((rank, keys));
            }
        }
    }
    best.map(|(_, keys)| keys)
}

/// Every key a resource version offers: one per token and reference row, and its
/// id. A subscription filed under any of them is a candidate.
pub fn keys_of_rows(res_id: &str, rows: &IndexRows) -> Vec<String> {
    let mut keys = vec![token_key("_id", res_id)];
    keys.extend(
        rows.tokens
            .iter()
            .filter_map(|r| r.code.as_ref().map(|c| token_key(&r.param, c))),
    );
    keys.extend(
        rows.references
            .iter()
            .filter_map(|r| r.target_id.as_ref().map(|id| reference_key(&r.param, id))),
    );
    keys.sort();
    keys.dedup();
    keys
}

fn token_key(param: &str, code: &str) -> String {
    format!("{param}={code}")
}

fn reference_key(param: &str, id: &str) -> String {
    format!("{param}>{id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::{index, parse, Handling};
    use serde_json::json;

    fn check(res_type: &str, resource: &serde_json::Value, query: &str) -> Truth {
        let plan = parse(
            crate::search::params::test_table(),
            res_type,
            &crate::search::parse_form(query),
            Handling::Strict,
        )
        .expect("query parses");
        let rows = index::extract(crate::search::params::test_table(), res_type, resource);
        evaluate(
            &plan.conditions,
            &Subject {
                res_id: "e1",
                last_updated: Utc::now(),
                rows: &rows,
            },
        )
    }

    fn discharge() -> serde_json::Value {
        json!({
            "resourceType": "Encounter", "id": "e1", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": "Patient/p1"},
            "period": {"start": "2026-11-20T08:00:00Z", "end": "2026-11-27T18:30:00Z"},
            "serviceProvider": {"reference": "Organization/chu", "display": "CHU de Nantes"}
        })
    }

    #[test]
    fn tokens_references_and_dates_match_as_the_sql_does() {
        let e = discharge();
        assert_eq!(
            check("Encounter", &e, "status=finished&class=IMP"),
            Truth::Yes
        );
        assert_eq!(check("Encounter", &e, "status=in-progress"), Truth::No);
        assert_eq!(
            check("Encounter", &e, "status=planned,finished"),
            Truth::Yes
        );
        assert_eq!(check("Encounter", &e, "status:not=finished"), Truth::No);
        assert_eq!(
            check(
                "Encounter",
                &e,
                "class=http://terminology.hl7.org/CodeSystem/v3-ActCode|IMP"
            ),
            Truth::Yes
        );
        assert_eq!(check("Encounter", &e, "class=other|IMP"), Truth::No);
        assert_eq!(check("Encounter", &e, "patient=Patient/p1"), Truth::Yes);
        assert_eq!(check("Encounter", &e, "subject=p1"), Truth::Yes);
        assert_eq!(check("Encounter", &e, "patient=p2"), Truth::No);
        assert_eq!(check("Encounter", &e, "date=ge2026-11-27"), Truth::Yes);
        assert_eq!(check("Encounter", &e, "date=lt2026-11-01"), Truth::No);
        assert_eq!(check("Encounter", &e, "_id=e1"), Truth::Yes);
        assert_eq!(check("Encounter", &e, "_id=e2"), Truth::No);
        assert_eq!(
            check("Encounter", &e, "reason-code:missing=true"),
            Truth::Yes
        );
        assert_eq!(
            check("Encounter", &e, "length:missing=true"),
            Truth::Unknown
        );
    }

    #[test]
    fn what_needs_other_resources_is_unknown_unless_another_condition_decides() {
        let e = discharge();
        assert_eq!(
            check(
                "Encounter",
                &e,
                "patient.identifier=urn:oid:1.2.250.1.213.1.4.10|1"
            ),
            Truth::Unknown
        );
        assert_eq!(
            check("Encounter", &e, "status=cancelled&patient.name=x"),
            Truth::No
        );
    }

    #[test]
    fn strings_compare_without_case_or_accents() {
        let p = json!({"resourceType": "Patient", "id": "e1",
            "name": [{"family": "Lefèvre", "given": ["Hélène"]}]});
        assert_eq!(check("Patient", &p, "family=lefe"), Truth::Yes);
        assert_eq!(check("Patient", &p, "name:contains=ELEN"), Truth::Yes);
        assert_eq!(check("Patient", &p, "family:exact=Lefevre"), Truth::No);
        assert_eq!(check("Patient", &p, "family:exact=Lefèvre"), Truth::Yes);
    }

    #[test]
    fn keys_prefer_the_most_selective_condition_and_meet_the_rows() {
        let plan = parse(
            crate::search::params::test_table(),
            "Encounter",
            &crate::search::parse_form("status=finished&patient=Patient/p1,Patient/p2"),
            Handling::Strict,
        )
        .expect("parses");
        let keys = keys_of_conditions(&plan.conditions).expect("keyed");
        assert_eq!(keys, vec!["patient>p1", "patient>p2"]);
        let rows = index::extract(
            crate::search::params::test_table(),
            "Encounter",
            &discharge(),
        );
        let offered = keys_of_rows("e1", &rows);
        assert!(offered.contains(&"patient>p1".to_owned()));
        assert!(offered.contains(&"status=finished".to_owned()));
        let unkeyed = parse(
            crate::search::params::test_table(),
            "Encounter",
            &crate::search::parse_form("date=ge2026"),
            Handling::Strict,
        )
        .expect("parses");
        assert_eq!(keys_of_conditions(&unkeyed.conditions), None);
    }
}
