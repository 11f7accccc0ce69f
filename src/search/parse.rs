//! A query string read into a `SearchPlan` against the parameter table in force:
//! parameters, modifiers, chains and `_has` (bounded, see `limits`), includes,
//! sort, paging and totals.

use crate::error::{FhirError, FhirResult, Issue};
use crate::fhir::definitions::R4;
use crate::limits::{
    MAX_CHAIN_HOPS, MAX_CRITERION_BRANCHES, MAX_HAS_DEPTH, MAX_SEARCH_PARAMS, MAX_SEARCH_VALUES,
    MAX_SORT_KEYS,
};

use super::params::{ParamTable, ParamType, COLUMN_PARAMS};
use super::plan::{
    Condition, Cursor, Handling, Include, Modifier, SearchPlan, SearchValue, SortKey, SortParam,
    Token, TotalMode,
};
use super::values::{
    indexed, parse_composite, parse_cursor, parse_date_value, parse_modifier, parse_value,
    split_escaped, unescape,
};
use super::{params, DEFAULT_COUNT, MAX_COUNT};

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
