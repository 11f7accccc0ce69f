//! The values of a search parameter as written in a query: escapes, tokens,
//! prefixes, dates, numbers, quantities, references, composites, `near`, and the
//! cursors of result pages.

use crate::fhir::datetime::{self, Range};
use crate::fhir::definitions::R4;

use super::params::ParamType;
use super::plan::{Cursor, Modifier, Prefix, SearchValue, Token};
use super::{index, params};

/// `_after`: `Type/id` (or a bare id of the searched type), or for sorted pages the
/// JSON array `[key values…, "Type", "id"]` that [`encode_sorted_cursor`] writes.
pub(super) fn parse_cursor(resource_type: &str, value: &str) -> Option<Cursor> {
    if value.starts_with('[') {
        let mut items: Vec<Option<String>> = serde_json::from_str(value).ok()?;
        let res_id = items.pop()??;
        let res_type = items.pop()??;
        return Some(Cursor::AfterSorted {
            values: items,
            res_id,
            res_type,
        });
    }
    Some(match value.split_once('/') {
        Some((t, id)) => Cursor::After {
            res_id: id.to_owned(),
            res_type: t.to_owned(),
        },
        None => Cursor::After {
            res_id: value.to_owned(),
            res_type: resource_type.to_owned(),
        },
    })
}

/// The `_after` value of a sorted page's last resource.
pub fn encode_sorted_cursor(values: &[Option<String>], res_type: &str, res_id: &str) -> String {
    let mut items: Vec<Option<&str>> = values.iter().map(Option::as_deref).collect();
    items.push(Some(res_type));
    items.push(Some(res_id));
    serde_json::to_string(&items).unwrap_or_default()
}

/// Splits on unescaped `sep`; escapes are kept for [`unescape`] to undo at the leaf.
pub(super) fn split_escaped(text: &str, sep: char) -> Vec<String> {
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
pub(super) fn unescape(text: &str) -> String {
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
    let non_empty = |s: &str| (!s.is_empty()).then(|| indexed(&unescape(s)));
    match parts.as_slice() {
        [code] => Token {
            system: None,
            code: non_empty(code),
        },
        [system, code, ..] => Token {
            system: Some(indexed(&unescape(system))),
            code: non_empty(code),
        },
        [] => Token {
            system: None,
            code: None,
        },
    }
}

/// A search value compared with an index column: cut as the index cuts it.
pub(super) fn indexed(text: &str) -> String {
    index::bounded(text).to_owned()
}

/// Splits a leading comparison prefix off a value.
pub(super) fn split_prefix(text: &str) -> (Prefix, &str) {
    const PREFIXES: [(&str, Prefix); 9] = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    PREFIXES
        .iter()
        .find_map(|(p, d)| text.strip_prefix(p).map(|rest| (*d, rest)))
        .unwrap_or((Prefix::Eq, text))
}

/// A decimal a search can compare: the R4 lexical form, within what PostgreSQL's
/// numeric and the precision arithmetic accept (a value such as `1e200000` would
/// otherwise fail in the database, a 500 for a client's typo).
pub(super) fn is_decimal(text: &str) -> bool {
    let exponent_ok = text
        .split_once(['e', 'E'])
        .is_none_or(|(_, e)| e.parse::<i32>().is_ok_and(|e| e.abs() <= 300));
    exponent_ok
        && text.parse::<f64>().is_ok_and(f64::is_finite)
        && crate::fhir::validate::primitive_problem(&R4, "decimal", text).is_none()
}

pub(super) fn parse_date_value(text: &str) -> Option<(Prefix, Range)> {
    let (prefix, rest) = split_prefix(text);
    datetime::parse_range(rest).map(|range| (prefix, range))
}

/// Parses one value of a parameter of the given kind.
pub(super) fn parse_value(
    kind: ParamType,
    modifier: &Modifier,
    raw: &str,
) -> Result<SearchValue, String> {
    let bad = |what: &str| format!("'{raw}' is not a valid {what} search value");
    match kind {
        ParamType::String => Ok(SearchValue::String(unescape(raw))),
        ParamType::Uri => Ok(SearchValue::Uri(indexed(&unescape(raw)))),
        ParamType::Token => Ok(SearchValue::Token(parse_token(raw))),
        ParamType::Date => parse_date_value(raw)
            .map(|(p, r)| SearchValue::Date(p, r))
            .ok_or_else(|| bad("date")),
        ParamType::Number => {
            let (prefix, rest) = split_prefix(raw);
            is_decimal(rest)
                .then(|| SearchValue::Number(prefix, rest.to_owned()))
                .ok_or_else(|| bad("number"))
        }
        ParamType::Quantity => {
            let (prefix, rest) = split_prefix(raw);
            let parts = split_escaped(rest, '|');
            let value = parts.first().cloned().unwrap_or_default();
            if !is_decimal(&value) {
                return Err(bad("quantity"));
            }
            let non_empty =
                |s: Option<&String>| s.filter(|s| !s.is_empty()).map(|s| indexed(&unescape(s)));
            Ok(SearchValue::Quantity {
                prefix,
                value,
                system: non_empty(parts.get(1)),
                code: non_empty(parts.get(2)),
            })
        }
        ParamType::Reference => {
            let text = unescape(raw);
            if *modifier == Modifier::Identifier {
                return Ok(SearchValue::Token(parse_token(raw)));
            }
            let url = text.contains(':').then(|| indexed(&text));
            let (target_type, id) = match index::split_reference(&text) {
                Some((t, id)) => (Some(t.to_owned()), id.to_owned()),
                None if crate::fhir::is_valid_id(&text) => (None, text.clone()),
                None if url.is_some() => (None, String::new()),
                None => return Err(bad("reference")),
            };
            let target_type = match modifier {
                Modifier::Type(t) => Some(t.clone()),
                _ => target_type,
            };
            Ok(SearchValue::Reference {
                target_type,
                id,
                url,
            })
        }
        ParamType::Special => {
            parse_near(raw).ok_or_else(|| bad("near (latitude|longitude|distance|units)"))
        }
        ParamType::Composite => Err(format!("a {} value cannot stand alone", kind.as_str())),
    }
}

/// `latitude|longitude|distance|units` (distance 1 km by default; km, m or
/// [mi_i]).
pub(super) fn parse_near(raw: &str) -> Option<SearchValue> {
    let parts: Vec<&str> = raw.split('|').collect();
    let latitude: f64 = parts
        .first()?
        .parse()
        .ok()
        .filter(|l: &f64| l.abs() <= 90.0)?;
    let longitude: f64 = parts
        .get(1)?
        .parse()
        .ok()
        .filter(|l: &f64| l.abs() <= 180.0)?;
    let distance: f64 = match parts.get(2).filter(|d| !d.is_empty()) {
        Some(d) => d.parse().ok().filter(|d: &f64| *d >= 0.0)?,
        None => 1.0,
    };
    let km = match parts.get(3).copied().unwrap_or("km") {
        "" | "km" => distance,
        "m" => distance / 1000.0,
        "mi_i" | "[mi_i]" => distance * 1.609_344,
        _ => return None,
    };
    Some(SearchValue::Near {
        latitude,
        longitude,
        km,
    })
}

/// The modifiers each kind accepts.
pub(super) fn parse_modifier(kind: ParamType, text: Option<&str>) -> Option<Modifier> {
    Some(match (kind, text) {
        (_, None) => Modifier::None,
        (ParamType::String, Some("exact")) => Modifier::Exact,
        (ParamType::String, Some("contains")) => Modifier::Contains,
        (ParamType::Token, Some("text")) => Modifier::Text,
        (ParamType::Token, Some("not")) => Modifier::Not,
        (ParamType::Uri, Some("below")) => Modifier::Below,
        (ParamType::Uri, Some("above")) => Modifier::Above,
        (ParamType::Reference, Some("identifier")) => Modifier::Identifier,
        (ParamType::Reference, Some(t)) if R4.is_resource_type(t) => Modifier::Type(t.to_owned()),
        _ => return None,
    })
}

/// `a$b`: each part is a value of the matching component.
pub(super) fn parse_composite(
    param: &params::SearchParam,
    raw: &str,
) -> Result<SearchValue, String> {
    let parts = split_escaped(raw, '$');
    if parts.len() != param.components.len() {
        return Err(format!(
            "'{raw}' needs {} parts separated by $ for {}",
            param.components.len(),
            param.code
        ));
    }
    param
        .components
        .iter()
        .zip(&parts)
        .map(|(component, part)| {
            parse_value(component.kind, &Modifier::None, part).map(|v| (component.kind, v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(SearchValue::Composite)
}
