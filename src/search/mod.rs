//! Search requests as data: parsing of the query string into a plan that the store
//! renders as SQL, against the R4 search parameter table. Pure: no I/O.

pub mod compartment;
pub mod index;
pub mod matcher;
pub mod params;

/// Query strings are the wire format of search requests (`fhir::query`).
pub use crate::fhir::query::{page_url, parse_criteria, parse_form};

use crate::error::{FhirError, FhirResult, Issue};
use crate::fhir::datetime::{self, Range};
use crate::fhir::definitions::R4;
use crate::limits::{
    MAX_CHAIN_HOPS, MAX_CRITERION_BRANCHES, MAX_HAS_DEPTH, MAX_SEARCH_PARAMS, MAX_SEARCH_VALUES,
    MAX_SORT_KEYS,
};
use params::{ParamTable, ParamType, COLUMN_PARAMS};

/// Default and largest page sizes.
pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;

/// The comparison prefixes of number, date and quantity values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A token value: `code`, `system|code`, `|code` (no system) or `system|`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// `None`: any system; `Some("")`: no system; `Some(s)`: that system.
    pub system: Option<String>,
    pub code: Option<String>,
}

/// How a parameter's values are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    None,
    Exact,
    Contains,
    Text,
    Not,
    Below,
    Above,
    Identifier,
    /// `subject:Patient=…`
    Type(String),
}

/// One value of a parameter (values of a parameter are OR-ed).
#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    String(String),
    Token(Token),
    /// Reference: the type when known, the id, or a full URL.
    Reference {
        target_type: Option<String>,
        id: String,
        url: Option<String>,
    },
    Date(Prefix, Range),
    /// Decimal as written, for number parameters.
    Number(Prefix, String),
    Quantity {
        prefix: Prefix,
        value: String,
        system: Option<String>,
        code: Option<String>,
    },
    Uri(String),
    /// `a$b`: one value per component of a composite parameter, with its kind.
    Composite(Vec<(ParamType, SearchValue)>),
    /// `near=latitude|longitude|distance|units`, the distance in km.
    Near {
        latitude: f64,
        longitude: f64,
        km: f64,
    },
}

/// One search condition; conditions are AND-ed.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Id(Vec<String>),
    LastUpdated(Vec<(Prefix, Range)>),
    Param {
        param: String,
        kind: ParamType,
        modifier: Modifier,
        values: Vec<SearchValue>,
    },
    /// Several values that one index row must all meet: AND-ed conditions on a
    /// single-valued parameter (`date=ge2026-03-01&date=lt2026-03-08` on
    /// `Encounter.period`), merged so that the index finds the rows at once.
    SameRow {
        param: String,
        kind: ParamType,
        values: Vec<SearchValue>,
    },
    /// Any of these conditions (compartment membership).
    AnyOf(Vec<Condition>),
    /// `param:missing=true|false`
    Missing {
        param: String,
        kind: ParamType,
        missing: bool,
    },
    /// `subject:Patient.identifier=…`: a reference whose target, of one of the
    /// listed types, meets that type's condition.
    Chain {
        param: String,
        targets: Vec<(String, Condition)>,
    },
    /// `_has:Observation:patient:code=…`: referenced through `param` by a resource
    /// of `source_type` that meets `inner`.
    Has {
        source_type: String,
        param: String,
        inner: Box<Condition>,
    },
}

/// A parsed search over one resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    pub resource_type: String,
    /// More types searched with the same conditions (system search `_type`).
    pub other_types: Vec<String>,
    pub conditions: Vec<Condition>,
    pub count: usize,
    /// `_include` and `_revinclude`.
    pub includes: Vec<Include>,
    /// `_sort` keys, in order; empty: by id.
    pub sort: Vec<SortKey>,
    /// Where the page starts.
    pub cursor: Cursor,
    /// `_total`: when to count the matches.
    pub total: TotalMode,
    /// Parameters that were not understood (lenient handling reports them).
    pub ignored: Vec<Issue>,
}

/// When a searchset carries `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalMode {
    /// `_total=none`.
    None,
    /// `_total=accurate` or `estimate`, `_summary=count`: a count query.
    Accurate,
    /// Default: only when it costs nothing, i.e. the first page holds every match
    /// (as HAPI does, counting a large result would cost more than the page).
    WhenFree,
}

/// `_after`: `Type/id` (or a bare id of the searched type), or for sorted pages the
/// JSON array `[key values…, "Type", "id"]` that [`encode_sorted_cursor`] writes.
fn parse_cursor(resource_type: &str, value: &str) -> Option<Cursor> {
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

/// What a `_sort` key orders by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortParam {
    Id,
    LastUpdated,
    Indexed { code: String, kind: ParamType },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub param: SortParam,
    pub descending: bool,
}

/// The start of a page. Pages are keysets, stable while data changes: unsorted
/// ones by (id, type), sorted ones by the sort keys then (id, type). `_offset` is
/// also accepted, for clients that count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    Start,
    /// After this resource, in (id, type) order.
    After {
        res_id: String,
        res_type: String,
    },
    /// After the resource with these sort key values (as text; `None`: no value)
    /// and this (id, type), in `_sort` order.
    AfterSorted {
        values: Vec<Option<String>>,
        res_id: String,
        res_type: String,
    },
    Offset(usize),
}

fn parse_sort(
    table: &ParamTable,
    resource_type: &str,
    value: &str,
) -> Result<Vec<SortKey>, ParamError> {
    let keys: Vec<&str> = value.split(',').filter(|k| !k.is_empty()).collect();
    if keys.len() > MAX_SORT_KEYS {
        return Err(ParamError::Invalid(format!(
            "_sort takes at most {MAX_SORT_KEYS} keys"
        )));
    }
    keys.into_iter()
        .map(|key| {
            let (descending, code) = match key.strip_prefix('-') {
                Some(code) => (true, code),
                None => (false, key),
            };
            let param = match code {
                "_id" => SortParam::Id,
                "_lastUpdated" => SortParam::LastUpdated,
                _ => {
                    let p = table.get(resource_type, code).ok_or_else(|| {
                        ParamError::Unknown(format!("cannot sort {resource_type} by '{code}'"))
                    })?;
                    if matches!(p.kind, ParamType::Composite | ParamType::Special) {
                        return Err(ParamError::Invalid(format!(
                            "cannot sort by '{code}': a {} parameter has no order",
                            p.kind.as_str()
                        )));
                    }
                    SortParam::Indexed {
                        code: p.code.clone(),
                        kind: p.kind,
                    }
                }
            };
            Ok(SortKey { param, descending })
        })
        .collect()
}

/// `_include=Source:param[:Target]` (`reverse` for `_revinclude`); `param` is
/// `None` for `Source:*`, every reference of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub reverse: bool,
    pub iterate: bool,
    pub source_type: String,
    pub param: Option<String>,
    pub target_type: Option<String>,
}

fn parse_include(table: &ParamTable, name: &str, value: &str) -> Result<Include, ParamError> {
    let reverse = name.starts_with("_revinclude");
    let iterate = name.ends_with(":iterate") || name.ends_with(":recurse");
    let mut parts = value.split(':');
    let (Some(source_type), Some(code)) = (parts.next(), parts.next()) else {
        return Err(ParamError::Invalid(format!(
            "{name}={value}: expected Type:parameter[:TargetType]"
        )));
    };
    let target_type = parts.next().map(str::to_owned);
    if !R4.is_resource_type(source_type)
        || target_type
            .as_deref()
            .is_some_and(|t| !R4.is_resource_type(t))
    {
        return Err(ParamError::Unknown(format!(
            "{name}={value}: unknown resource type"
        )));
    }
    let param = if code == "*" {
        None
    } else {
        Some(reference_param(table, source_type, code)?.code.clone())
    };
    Ok(Include {
        reverse,
        iterate,
        source_type: source_type.to_owned(),
        param,
        target_type,
    })
}

/// The search parameters a resource type supports, with their FHIR types.
pub fn supported_params(table: &ParamTable, resource_type: &str) -> Vec<(String, &'static str)> {
    let mut supported: Vec<(String, &'static str)> = vec![
        ("_id".to_owned(), "token"),
        ("_lastUpdated".to_owned(), "date"),
    ];
    supported.extend(
        table
            .for_type(resource_type)
            .filter(|p| !COLUMN_PARAMS.contains(&p.code.as_str()))
            .map(|p| (p.code.clone(), p.kind.as_str())),
    );
    supported
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
fn indexed(text: &str) -> String {
    index::bounded(text).to_owned()
}

/// Splits a leading comparison prefix off a value.
fn split_prefix(text: &str) -> (Prefix, &str) {
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
fn is_decimal(text: &str) -> bool {
    let exponent_ok = text
        .split_once(['e', 'E'])
        .is_none_or(|(_, e)| e.parse::<i32>().is_ok_and(|e| e.abs() <= 300));
    exponent_ok
        && text.parse::<f64>().is_ok_and(f64::is_finite)
        && crate::fhir::validate::primitive_problem(&R4, "decimal", text).is_none()
}

fn parse_date_value(text: &str) -> Option<(Prefix, Range)> {
    let (prefix, rest) = split_prefix(text);
    datetime::parse_range(rest).map(|range| (prefix, range))
}

/// Parses one value of a parameter of the given kind.
fn parse_value(kind: ParamType, modifier: &Modifier, raw: &str) -> Result<SearchValue, String> {
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
fn parse_near(raw: &str) -> Option<SearchValue> {
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
fn parse_modifier(kind: ParamType, text: Option<&str>) -> Option<Modifier> {
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

/// Parameters that shape the result rather than filter it; handled elsewhere.
const RESULT_PARAMS: &[&str] = &["_format", "_pretty", "_summary", "_elements"];

/// Parses `(name, value)` pairs of a query string into a plan for `resource_type`.
pub fn parse(
    table: &ParamTable,
    resource_type: &str,
    pairs: &[(String, String)],
    handling: Handling,
) -> FhirResult<SearchPlan> {
    let mut plan = SearchPlan {
        resource_type: resource_type.to_owned(),
        other_types: Vec::new(),
        conditions: Vec::new(),
        count: DEFAULT_COUNT,
        includes: Vec::new(),
        sort: Vec::new(),
        cursor: Cursor::Start,
        total: TotalMode::WhenFree,
        ignored: Vec::new(),
    };
    let bad = |message: String| FhirError::BadRequest(vec![Issue::new("invalid", message)]);
    check_size(pairs)?;
    for (name, value) in pairs {
        match name.as_str() {
            "_count" => {
                let n: usize = value.parse().map_err(|_| {
                    bad(format!(
                        "_count must be a non-negative integer, got '{value}'"
                    ))
                })?;
                plan.count = n.min(MAX_COUNT);
                if n == 0 {
                    // `_count=0` asks for the total alone.
                    plan.total = TotalMode::Accurate;
                }
                continue;
            }
            "_summary" if value == "count" => {
                plan.count = 0;
                plan.total = TotalMode::Accurate;
                continue;
            }
            n if RESULT_PARAMS.contains(&n) => continue,
            "_total" => {
                plan.total = match value.as_str() {
                    "none" => TotalMode::None,
                    "estimate" | "accurate" => TotalMode::Accurate,
                    other => {
                        return Err(bad(format!(
                            "_total takes none, estimate or accurate, not '{other}'"
                        )))
                    }
                };
                continue;
            }
            "_after" => {
                plan.cursor = parse_cursor(resource_type, value)
                    .ok_or_else(|| bad(format!("'{value}' is not a valid _after cursor")))?;
                continue;
            }
            "_offset" => {
                let n: usize = value.parse().map_err(|_| {
                    bad(format!(
                        "_offset must be a non-negative integer, got '{value}'"
                    ))
                })?;
                // PostgreSQL's OFFSET is a bigint.
                plan.cursor = Cursor::Offset(n.min(i64::MAX as usize));
                continue;
            }
            "_sort" => {
                match parse_sort(table, resource_type, value) {
                    Ok(keys) => plan.sort = keys,
                    Err(ParamError::Unknown(message)) if handling == Handling::Lenient => {
                        plan.ignored.push(Issue::new("not-supported", message))
                    }
                    Err(ParamError::Unknown(message) | ParamError::Invalid(message)) => {
                        return Err(bad(message))
                    }
                }
                continue;
            }
            n if n.starts_with("_include") || n.starts_with("_revinclude") => {
                match parse_include(table, n, value) {
                    Ok(include) => plan.includes.push(include),
                    Err(ParamError::Unknown(message)) if handling == Handling::Lenient => {
                        plan.ignored.push(Issue::new("not-supported", message))
                    }
                    Err(ParamError::Unknown(message) | ParamError::Invalid(message)) => {
                        return Err(bad(message))
                    }
                }
                continue;
            }
            _ => {}
        }
        match parse_param(table, resource_type, name, value) {
            Ok(condition) => plan.conditions.push(condition),
            Err(ParamError::Unknown(message)) if handling == Handling::Lenient => {
                plan.ignored.push(Issue::new("not-supported", message))
            }
            Err(ParamError::Unknown(message) | ParamError::Invalid(message)) => {
                return Err(bad(message))
            }
        }
    }
    plan.conditions = merge_same_row(table, resource_type, std::mem::take(&mut plan.conditions));
    Ok(plan)
}

/// Refuses a query with more parameters or values than [`MAX_SEARCH_PARAMS`] and
/// [`MAX_SEARCH_VALUES`], before any of it is parsed.
fn check_size(pairs: &[(String, String)]) -> FhirResult<()> {
    let too_costly =
        |message: String| FhirError::BadRequest(vec![Issue::new("too-costly", message)]);
    if pairs.len() > MAX_SEARCH_PARAMS {
        return Err(too_costly(format!(
            "a search takes at most {MAX_SEARCH_PARAMS} parameters, this one has {}",
            pairs.len()
        )));
    }
    let values: usize = pairs.iter().map(|(_, v)| 1 + v.matches(',').count()).sum();
    if values > MAX_SEARCH_VALUES {
        return Err(too_costly(format!(
            "a search takes at most {MAX_SEARCH_VALUES} values (counting each comma-separated one), this one has {values}"
        )));
    }
    Ok(())
}

/// How far a parameter has gone into chains and `_has`, and how many target types
/// it has expanded to: bounded so that neither the parse nor the SQL grows with
/// the input's length ([`MAX_CHAIN_HOPS`], [`MAX_HAS_DEPTH`],
/// [`MAX_CRITERION_BRANCHES`]).
struct Reach<'t> {
    table: &'t ParamTable,
    /// Values bound so far: a value under an untyped chain is bound once per
    /// target type.
    values: usize,
    hops: usize,
    has: usize,
    branches: usize,
}

impl<'t> Reach<'t> {
    fn new(table: &'t ParamTable) -> Self {
        Reach {
            table,
            values: 0,
            hops: 0,
            has: 0,
            branches: 0,
        }
    }

    fn branch(&mut self, name: &str) -> Result<(), ParamError> {
        self.branches += 1;
        if self.branches > MAX_CRITERION_BRANCHES {
            return Err(ParamError::Invalid(format!(
                "'{name}' reaches more than {MAX_CRITERION_BRANCHES} resource types through its chains; name the target type (e.g. subject:Patient.name)"
            )));
        }
        Ok(())
    }
}

/// Why a parameter was not used: unknown ones may be ignored (lenient handling),
/// invalid values of a known parameter are always an error.
enum ParamError {
    Unknown(String),
    Invalid(String),
}

/// The reference parameter `code` of `resource_type`, or why it cannot be used.
fn reference_param<'t>(
    table: &'t ParamTable,
    resource_type: &str,
    code: &str,
) -> Result<&'t params::SearchParam, ParamError> {
    table
        .get(resource_type, code)
        .filter(|p| p.kind == ParamType::Reference)
        .ok_or_else(|| {
            ParamError::Unknown(format!(
                "'{code}' is not a reference parameter of {resource_type}"
            ))
        })
}

/// `head.rest`: `head` is `reference[:Type]`, `rest` a parameter of the target type.
fn parse_chain(
    resource_type: &str,
    head: &str,
    rest: &str,
    value: &str,
    reach: &mut Reach<'_>,
) -> Result<Condition, ParamError> {
    if reach.hops >= MAX_CHAIN_HOPS {
        return Err(ParamError::Invalid(format!(
            "a chain may follow at most {MAX_CHAIN_HOPS} references ('{head}.{}…')",
            rest.chars().take(40).collect::<String>()
        )));
    }
    let (code, type_modifier) = match head.split_once(':') {
        Some((c, t)) => (c, Some(t)),
        None => (head, None),
    };
    let param = reference_param(reach.table, resource_type, code)?;
    let candidates: Vec<String> = match type_modifier {
        Some(t) if param.targets.iter().any(|x| x == t) => vec![t.to_owned()],
        Some(t) => return Err(ParamError::Unknown(format!("{code} cannot point to a {t}"))),
        None => param.targets.clone(),
    };
    let mut targets = Vec::new();
    let mut unknown = None;
    reach.hops += 1;
    for target in candidates {
        reach.branch(head)?;
        match parse_param_within(&target, rest, value, reach) {
            Ok(inner) => targets.push((target, inner)),
            Err(ParamError::Invalid(m)) => return Err(ParamError::Invalid(m)),
            Err(e) => unknown = Some(e),
        }
    }
    reach.hops -= 1;
    if targets.is_empty() {
        return Err(unknown.unwrap_or_else(|| {
            ParamError::Unknown(format!("'{rest}' applies to no target of {code}"))
        }));
    }
    Ok(Condition::Chain {
        param: param.code.clone(),
        targets,
    })
}

/// `_has:Type:param:criterion`: resources of `Type` pointing here through `param`.
fn parse_has(
    resource_type: &str,
    name: &str,
    rest: &str,
    value: &str,
    reach: &mut Reach<'_>,
) -> Result<Condition, ParamError> {
    if reach.has >= MAX_HAS_DEPTH {
        return Err(ParamError::Invalid(format!(
            "_has may nest at most {MAX_HAS_DEPTH} deep"
        )));
    }
    reach.branch("_has")?;
    let mut parts = rest.splitn(3, ':');
    let (Some(source_type), Some(code), Some(inner_name)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(ParamError::Invalid(format!(
            "'{name}' is not of the form _has:Type:parameter:criterion"
        )));
    };
    if !R4.is_resource_type(source_type) {
        return Err(ParamError::Unknown(format!(
            "'{source_type}' in '{name}' is not a resource type"
        )));
    }
    let param = reference_param(reach.table, source_type, code)?;
    if !param.targets.iter().any(|t| t == resource_type) {
        return Err(ParamError::Unknown(format!(
            "{source_type}.{code} does not point to {resource_type}"
        )));
    }
    reach.has += 1;
    let inner = parse_param_within(source_type, inner_name, value, reach)?;
    reach.has -= 1;
    Ok(Condition::Has {
        source_type: source_type.to_owned(),
        param: param.code.clone(),
        inner: Box::new(inner),
    })
}

/// One `name[:modifier]=value[,value]` of the query.
fn parse_param(
    table: &ParamTable,
    resource_type: &str,
    name: &str,
    value: &str,
) -> Result<Condition, ParamError> {
    parse_param_within(resource_type, name, value, &mut Reach::new(table))
}

/// [`parse_param`] at some depth of a chain or `_has`.
fn parse_param_within(
    resource_type: &str,
    name: &str,
    value: &str,
    reach: &mut Reach<'_>,
) -> Result<Condition, ParamError> {
    if let Some(rest) = name.strip_prefix("_has:") {
        return parse_has(resource_type, name, rest, value, reach);
    }
    if let Some((head, rest)) = name.split_once('.') {
        return parse_chain(resource_type, head, rest, value, reach);
    }
    match name {
        "_id" => {
            let ids = split_escaped(value, ',')
                .iter()
                .map(|v| unescape(v))
                .collect();
            return Ok(Condition::Id(ids));
        }
        "_lastUpdated" => {
            let values = split_escaped(value, ',')
                .iter()
                .map(|v| {
                    parse_date_value(v).ok_or_else(|| {
                        ParamError::Invalid(format!("'{v}' is not a valid _lastUpdated value"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Condition::LastUpdated(values));
        }
        _ => {}
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    let param = reach.table.get(resource_type, code).ok_or_else(|| {
        ParamError::Unknown(format!(
            "unknown or unsupported search parameter '{code}' for {resource_type}"
        ))
    })?;
    if modifier == Some("missing") && param.kind == ParamType::Composite {
        return Err(ParamError::Unknown(format!(
            "{name} is not supported on a composite parameter"
        )));
    }
    if modifier == Some("missing") {
        let missing = match value {
            "true" => true,
            "false" => false,
            _ => {
                return Err(ParamError::Invalid(format!(
                    "{name} takes true or false, not '{value}'"
                )))
            }
        };
        return Ok(Condition::Missing {
            param: param.code.clone(),
            kind: param.kind,
            missing,
        });
    }
    if modifier == Some("of-type") && param.kind == ParamType::Token {
        return parse_of_type(name, &param.code, value);
    }
    let modifier = parse_modifier(param.kind, modifier).ok_or_else(|| {
        ParamError::Unknown(format!(
            "modifier in '{name}' is not supported for a {} parameter",
            param.kind.as_str()
        ))
    })?;
    let values = split_escaped(value, ',')
        .iter()
        .map(|v| match param.kind {
            ParamType::Composite => parse_composite(param, v),
            kind => parse_value(kind, &modifier, v),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(ParamError::Invalid)?;
    reach.values += values.len();
    if reach.values > MAX_SEARCH_VALUES {
        return Err(ParamError::Invalid(format!(
            "'{name}' expands to more than {MAX_SEARCH_VALUES} values across the target types of its chain; name the target type or send fewer values"
        )));
    }
    Ok(Condition::Param {
        param: param.code.clone(),
        kind: param.kind,
        modifier,
        values,
    })
}

/// `identifier:of-type=type-system|type-code|value`, searched in the rows that
/// `index` writes under `identifier:of-type`.
fn parse_of_type(name: &str, code: &str, value: &str) -> Result<Condition, ParamError> {
    let values = split_escaped(value, ',')
        .iter()
        .map(|v| match split_escaped(v, '|').as_slice() {
            [system, type_code, id] if !type_code.is_empty() && !id.is_empty() => {
                Ok(SearchValue::Token(Token {
                    system: Some(indexed(&unescape(system))).filter(|s| !s.is_empty()),
                    code: Some(indexed(&format!(
                        "{}|{}",
                        unescape(type_code),
                        unescape(id)
                    ))),
                }))
            }
            _ => Err(ParamError::Invalid(format!(
                "{name}={v}: expected type-system|type-code|value"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Condition::Param {
        param: format!("{code}:of-type"),
        kind: ParamType::Token,
        modifier: Modifier::None,
        values,
    })
}

/// `a$b`: each part is a value of the matching component.
fn parse_composite(param: &params::SearchParam, raw: &str) -> Result<SearchValue, String> {
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

/// Merges AND-ed single-value date conditions on the same single-valued parameter
/// into one `SameRow` condition: the same result, found from one index range.
fn merge_same_row(
    table: &ParamTable,
    resource_type: &str,
    conditions: Vec<Condition>,
) -> Vec<Condition> {
    let mut merged: Vec<Condition> = Vec::with_capacity(conditions.len());
    for condition in conditions {
        let mergeable = match &condition {
            Condition::Param {
                param,
                kind: ParamType::Date,
                modifier: Modifier::None,
                values,
            } => {
                values.len() == 1
                    && table
                        .get(resource_type, param)
                        .is_some_and(|p| p.single_valued)
            }
            _ => false,
        };
        let Condition::Param {
            param,
            kind,
            values,
            ..
        } = &condition
        else {
            merged.push(condition);
            continue;
        };
        if !mergeable {
            merged.push(condition);
            continue;
        }
        let existing = merged.iter_mut().find_map(|c| match c {
            Condition::SameRow {
                param: p,
                values: v,
                ..
            } if p == param => Some(v),
            _ => None,
        });
        match existing {
            Some(row_values) => row_values.extend(values.iter().cloned()),
            None => merged.push(Condition::SameRow {
                param: param.clone(),
                kind: *kind,
                values: values.clone(),
            }),
        }
    }
    merged
}

/// True when `resource_type` is a concrete R4 resource.
pub fn is_searchable(resource_type: &str) -> bool {
    R4.is_resource_type(resource_type)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::params::test_table;

    #[test]
    fn decimals_beyond_the_database_are_refused() {
        let q = |v: &str| vec![("length".to_owned(), v.to_owned())];
        assert!(parse(test_table(), "Encounter", &q("1e200000"), Handling::Lenient).is_err());
        assert!(parse(
            test_table(),
            "Encounter",
            &q("1e-200000"),
            Handling::Lenient
        )
        .is_err());
        assert!(parse(test_table(), "Encounter", &q("4.5e2"), Handling::Lenient).is_ok());
    }

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
            test_table(),
            "Patient",
            &pairs(&[("identifier", r"s|a\,b,s|c")]),
            Handling::Strict,
        )
        .expect("plan");
        let Condition::Param { values, .. } = &plan.conditions[0] else {
            panic!("token")
        };
        assert_eq!(values.len(), 2);
        let SearchValue::Token(first) = &values[0] else {
            panic!("token value")
        };
        assert_eq!(first.code.as_deref(), Some("a,b"));
    }

    #[test]
    fn strict_rejects_unknown_lenient_reports() {
        let q = pairs(&[("nickname", "x")]);
        assert_eq!(
            parse(test_table(), "Patient", &q, Handling::Strict)
                .expect_err("strict")
                .status(),
            400
        );
        let plan = parse(test_table(), "Patient", &q, Handling::Lenient).expect("lenient");
        assert_eq!(plan.ignored.len(), 1);
        assert!(plan.conditions.is_empty());
    }

    #[test]
    fn dates_and_count() {
        let plan = parse(
            test_table(),
            "Patient",
            &pairs(&[("_lastUpdated", "ge2026-01"), ("_count", "5000")]),
            Handling::Strict,
        )
        .expect("plan");
        assert_eq!(plan.count, MAX_COUNT);
        let Condition::LastUpdated(v) = &plan.conditions[0] else {
            panic!("date")
        };
        assert_eq!(v[0].0, Prefix::Ge);
        assert!(parse(
            test_table(),
            "Patient",
            &pairs(&[("_lastUpdated", "soon")]),
            Handling::Strict
        )
        .is_err());
        assert!(parse(
            test_table(),
            "Patient",
            &pairs(&[("_count", "-1")]),
            Handling::Strict
        )
        .is_err());
    }

    #[test]
    fn identifier_only_where_the_type_has_one() {
        assert!(supported_params(test_table(), "Patient")
            .iter()
            .any(|p| p.0 == "identifier"));
        assert!(!supported_params(test_table(), "Parameters")
            .iter()
            .any(|p| p.0 == "identifier"));
    }
}
