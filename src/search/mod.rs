//! Search requests as data: parsing of the query string into a plan that the store
//! renders as SQL. Pure: no I/O. The parameters known today are `_id`,
//! `_lastUpdated` and `identifier`; the full R4 parameter table plugs in here.

pub mod index;

use crate::error::{FhirError, FhirResult, Issue};
use crate::fhir::datetime::{self, Range};
use crate::fhir::definitions::R4;

/// Default and largest page sizes.
pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatePrefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
}

/// A token value: `code`, `system|code`, `|code` (no system) or `system|`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// `None`: any system; `Some("")`: no system; `Some(s)`: that system.
    pub system: Option<String>,
    pub code: Option<String>,
}

/// One search condition; the values of a condition are OR-ed, conditions are AND-ed.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Id(Vec<String>),
    LastUpdated(Vec<(DatePrefix, Range)>),
    Token { param: String, values: Vec<Token> },
}

/// A parsed search over one resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    pub resource_type: String,
    pub conditions: Vec<Condition>,
    pub count: usize,
    /// Parameters that were not understood (lenient handling reports them).
    pub ignored: Vec<Issue>,
}

/// The search parameters a resource type supports today, with their FHIR types.
pub fn supported_params(resource_type: &str) -> Vec<(&'static str, &'static str)> {
    let mut params = vec![("_id", "token"), ("_lastUpdated", "date")];
    if index::has_identifier(resource_type) {
        params.push(("identifier", "token"));
    }
    params
}

/// How to treat a parameter the server does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    Strict,
    Lenient,
}

/// Splits on unescaped `sep`; escapes are kept for [`unescape`] to undo at the leaf.
fn split_escaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            current.push(c);
            if let Some(next) = chars.next() {
                current.push(next);
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

/// Undoes FHIR's `\,` `\|` `\$` `\\` escapes.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(chars.next().unwrap_or(c));
        } else {
            out.push(c);
        }
    }
    out
}

pub fn parse_token(text: &str) -> Token {
    let parts = split_escaped(text, '|');
    let non_empty = |s: &str| (!s.is_empty()).then(|| unescape(s));
    match parts.as_slice() {
        [code] => Token {
            system: None,
            code: non_empty(code),
        },
        [system, code, ..] => Token {
            system: Some(unescape(system)),
            code: non_empty(code),
        },
        [] => Token {
            system: None,
            code: None,
        },
    }
}

fn parse_date_value(text: &str) -> Option<(DatePrefix, Range)> {
    let prefixes = [
        ("eq", DatePrefix::Eq),
        ("ne", DatePrefix::Ne),
        ("gt", DatePrefix::Gt),
        ("lt", DatePrefix::Lt),
        ("ge", DatePrefix::Ge),
        ("le", DatePrefix::Le),
        ("sa", DatePrefix::Sa),
        ("eb", DatePrefix::Eb),
    ];
    let (prefix, rest) = prefixes
        .iter()
        .find_map(|(p, d)| text.strip_prefix(p).map(|rest| (*d, rest)))
        .unwrap_or((DatePrefix::Eq, text));
    datetime::parse_range(rest).map(|range| (prefix, range))
}

/// Parameters that shape the result rather than filter it; handled elsewhere.
const RESULT_PARAMS: &[&str] = &["_format", "_pretty", "_summary", "_elements", "_total"];

/// Parses `(name, value)` pairs of a query string into a plan for `resource_type`.
pub fn parse(
    resource_type: &str,
    pairs: &[(String, String)],
    handling: Handling,
) -> FhirResult<SearchPlan> {
    let mut plan = SearchPlan {
        resource_type: resource_type.to_owned(),
        conditions: Vec::new(),
        count: DEFAULT_COUNT,
        ignored: Vec::new(),
    };
    let has_identifier = index::has_identifier(resource_type);
    for (name, value) in pairs {
        let bad = |message: String| FhirError::BadRequest(vec![Issue::new("invalid", message)]);
        match name.as_str() {
            "_count" => {
                let n: usize = value.parse().map_err(|_| {
                    bad(format!(
                        "_count must be a non-negative integer, got '{value}'"
                    ))
                })?;
                plan.count = n.min(MAX_COUNT);
            }
            "_id" => plan.conditions.push(Condition::Id(
                split_escaped(value, ',')
                    .iter()
                    .map(|v| unescape(v))
                    .collect(),
            )),
            "_lastUpdated" => {
                let values = split_escaped(value, ',')
                    .iter()
                    .map(|v| {
                        parse_date_value(v)
                            .ok_or_else(|| bad(format!("'{v}' is not a valid _lastUpdated value")))
                    })
                    .collect::<FhirResult<Vec<_>>>()?;
                plan.conditions.push(Condition::LastUpdated(values));
            }
            "identifier" if has_identifier => plan.conditions.push(Condition::Token {
                param: "identifier".to_owned(),
                values: split_escaped(value, ',')
                    .iter()
                    .map(|v| parse_token(v))
                    .collect(),
            }),
            n if RESULT_PARAMS.contains(&n) => {}
            other => {
                let message = format!(
                    "unknown or unsupported search parameter '{other}' for {resource_type}"
                );
                if handling == Handling::Strict {
                    return Err(bad(message));
                }
                plan.ignored.push(Issue::new("not-supported", message));
            }
        }
    }
    Ok(plan)
}

/// True when `resource_type` is a concrete R4 resource.
pub fn is_searchable(resource_type: &str) -> bool {
    R4.is_resource_type(resource_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn tokens() {
        assert_eq!(
            parse_token("abc"),
            Token {
                system: None,
                code: Some("abc".into())
            }
        );
        assert_eq!(
            parse_token("s|c"),
            Token {
                system: Some("s".into()),
                code: Some("c".into())
            }
        );
        assert_eq!(
            parse_token("|c"),
            Token {
                system: Some(String::new()),
                code: Some("c".into())
            }
        );
        assert_eq!(
            parse_token("s|"),
            Token {
                system: Some("s".into()),
                code: None
            }
        );
        assert_eq!(
            parse_token(r"a\|b"),
            Token {
                system: None,
                code: Some("a|b".into())
            }
        );
    }

    #[test]
    fn or_values_and_escapes() {
        let plan = parse(
            "Patient",
            &pairs(&[("identifier", r"s|a\,b,s|c")]),
            Handling::Strict,
        )
        .expect("plan");
        let Condition::Token { values, .. } = &plan.conditions[0] else {
            panic!("token")
        };
        assert_eq!(values.len(), 2);
        assert_eq!(values[0].code.as_deref(), Some("a,b"));
    }

    #[test]
    fn strict_rejects_unknown_lenient_reports() {
        let q = pairs(&[("nickname", "x")]);
        assert_eq!(
            parse("Patient", &q, Handling::Strict)
                .expect_err("strict")
                .status(),
            400
        );
        let plan = parse("Patient", &q, Handling::Lenient).expect("lenient");
        assert_eq!(plan.ignored.len(), 1);
        assert!(plan.conditions.is_empty());
    }

    #[test]
    fn dates_and_count() {
        let plan = parse(
            "Patient",
            &pairs(&[("_lastUpdated", "ge2026-01"), ("_count", "5000")]),
            Handling::Strict,
        )
        .expect("plan");
        assert_eq!(plan.count, MAX_COUNT);
        let Condition::LastUpdated(v) = &plan.conditions[0] else {
            panic!("date")
        };
        assert_eq!(v[0].0, DatePrefix::Ge);
        assert!(parse(
            "Patient",
            &pairs(&[("_lastUpdated", "soon")]),
            Handling::Strict
        )
        .is_err());
        assert!(parse("Patient", &pairs(&[("_count", "-1")]), Handling::Strict).is_err());
    }

    #[test]
    fn identifier_only_where_the_type_has_one() {
        assert!(supported_params("Patient")
            .iter()
            .any(|p| p.0 == "identifier"));
        assert!(!supported_params("Parameters")
            .iter()
            .any(|p| p.0 == "identifier"));
    }
}
