//! Renders a search plan as SQL conditions on `resource r` with bound parameters:
//! each parameter condition is an `EXISTS` over its index table, which PostgreSQL
//! answers from the table's b-tree index. The plan is built above (in `search`);
//! this module only reads it.

use chrono::Duration;
use tokio_postgres::types::ToSql;

use crate::fhir::datetime::Range;
use crate::search::index::normalize;
use crate::search::params::ParamType;
use crate::search::{
    Condition, Modifier, Prefix, SearchPlan, SearchValue, SortKey, SortParam, Token,
};

/// SQL conditions (AND-ed) with the values they bind.
pub struct SqlCondition {
    pub clauses: Vec<String>,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl SqlCondition {
    pub fn new() -> Self {
        SqlCondition {
            clauses: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Binds a value and returns its placeholder (`$n`).
    pub fn bind(&mut self, value: Box<dyn ToSql + Sync + Send>) -> String {
        self.params.push(value);
        format!("${}", self.params.len())
    }

    fn text(&mut self, value: &str) -> String {
        self.bind(Box::new(value.to_owned()))
    }

    pub fn param_refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params.iter().map(|p| p.as_ref() as _).collect()
    }
}

fn table_of(kind: ParamType) -> &'static str {
    match kind {
        ParamType::String => "search_string",
        ParamType::Token => "search_token",
        ParamType::Reference => "search_reference",
        ParamType::Date => "search_date",
        ParamType::Number => "search_number",
        ParamType::Quantity => "search_quantity",
        ParamType::Special => "search_number",
        ParamType::Uri | ParamType::Composite => "search_uri",
    }
}

/// `r` rows of the plan's type, not deleted, matching every condition.
pub fn matching(plan: &SearchPlan) -> SqlCondition {
    let mut sql = SqlCondition::new();
    if plan.other_types.is_empty() {
        let t = sql.text(&plan.resource_type);
        sql.clauses.push(format!("r.res_type = {t}"));
    } else {
        let mut types = plan.other_types.clone();
        types.push(plan.resource_type.clone());
        let t = sql.bind(Box::new(types));
        sql.clauses.push(format!("r.res_type = ANY({t})"));
    }
    sql.clauses.push("NOT r.deleted".to_owned());
    for condition in &plan.conditions {
        let clause = render(&mut sql, "r", 0, condition);
        sql.clauses.push(clause);
    }
    sql
}

/// One condition on the resource row aliased `a`; `depth` names the aliases of
/// chained and reverse-chained resources (`r1`, `r2` …). Inside each subquery the
/// index table is `x`, which shadows an outer `x`.
fn render(sql: &mut SqlCondition, a: &str, depth: usize, condition: &Condition) -> String {
    let owner = format!("x.res_type = {a}.res_type AND x.res_id = {a}.res_id");
    match condition {
        Condition::Id(ids) => {
            let p = sql.bind(Box::new(ids.clone()));
            format!("{a}.res_id = ANY({p})")
        }
        Condition::LastUpdated(values) => {
            let (low, high) = (
                format!("{a}.last_updated"),
                format!("{a}.last_updated + interval '1 microsecond'"),
            );
            let alternatives: Vec<String> = values
                .iter()
                .map(|(prefix, range)| date_clause(sql, &low, &high, *prefix, range))
                .collect();
            format!("({})", alternatives.join(" OR "))
        }
        Condition::Missing {
            param,
            kind,
            missing,
        } => {
            let p = sql.text(param);
            let exists = format!(
                "EXISTS (SELECT 1 FROM {} x WHERE {owner} AND x.param = {p})",
                table_of(*kind)
            );
            if *missing {
                format!("NOT {exists}")
            } else {
                exists
            }
        }
        Condition::Param {
            param,
            kind: ParamType::Special,
            values,
            ..
        } => {
            let alternatives: Vec<String> = values
                .iter()
                .map(|v| near_clause(sql, &owner, param, v))
                .collect();
            format!("({})", alternatives.join(" OR "))
        }
        Condition::Param {
            param,
            kind: ParamType::Composite,
            values,
            ..
        } => {
            let alternatives: Vec<String> = values
                .iter()
                .map(|v| composite_clause(sql, &owner, param, v))
                .collect();
            format!("({})", alternatives.join(" OR "))
        }
        Condition::Param {
            param,
            kind,
            modifier,
            values,
        } => {
            let p = sql.text(param);
            let alternatives: Vec<String> = values
                .iter()
                .map(|v| value_clause(sql, modifier, v))
                .collect();
            let exists = format!(
                "EXISTS (SELECT 1 FROM {} x WHERE {owner} AND x.param = {p} AND ({}))",
                table_of(*kind),
                alternatives.join(" OR ")
            );
            // :not matches resources with no matching value, those without any included.
            if *modifier == Modifier::Not {
                format!("NOT {exists}")
            } else {
                exists
            }
        }
        Condition::InCircle { members, res_type } => circle_clause(sql, a, members, res_type),
        Condition::OwnedBy(fields) => {
            let mut same = vec![format!("s.sub_id = {a}.res_id")];
            for (field, value) in fields {
                let (f, v) = (sql.text(field), sql.bind(Box::new(value.clone())));
                same.push(format!(
                    "s.owner ->> {f}::text IS NOT DISTINCT FROM {v}::text"
                ));
            }
            format!(
                "EXISTS (SELECT 1 FROM subscription s WHERE {})",
                same.join(" AND ")
            )
        }
        Condition::AnyOf(conditions) | Condition::AllOf(conditions) => {
            // An empty disjunction holds for nothing, an empty conjunction for all.
            let (joiner, empty) = match condition {
                Condition::AnyOf(_) => (" OR ", "false"),
                _ => (" AND ", "true"),
            };
            let parts: Vec<String> = conditions
                .iter()
                .map(|c| render(sql, a, depth, c))
                .collect();
            if parts.is_empty() {
                empty.to_owned()
            } else {
                format!("({})", parts.join(joiner))
            }
        }
        Condition::SameRow {
            param,
            kind,
            values,
        } => {
            let p = sql.text(param);
            let all: Vec<String> = values
                .iter()
                .map(|v| value_clause(sql, &Modifier::None, v))
                .collect();
            format!(
                "EXISTS (SELECT 1 FROM {} x WHERE {owner} AND x.param = {p} AND {})",
                table_of(*kind),
                all.join(" AND ")
            )
        }
        Condition::Chain { param, targets } => {
            let p = sql.text(param);
            let b = format!("r{}", depth + 1);
            let alternatives: Vec<String> = targets
                .iter()
                .map(|(target_type, inner)| {
                    let t = sql.text(target_type);
                    let inner = render(sql, &b, depth + 1, inner);
                    format!(
                        "(x.target_type = {t} AND EXISTS (SELECT 1 FROM resource {b} WHERE {b}.res_type = {t} \
                         AND {b}.res_id = x.target_id AND NOT {b}.deleted AND {inner}))"
                    )
                })
                .collect();
            format!(
                "EXISTS (SELECT 1 FROM search_reference x WHERE {owner} AND x.param = {p} AND ({}))",
                alternatives.join(" OR ")
            )
        }
        Condition::Has {
            source_type,
            param,
            inner,
        } => {
            let (s, p) = (sql.text(source_type), sql.text(param));
            let b = format!("r{}", depth + 1);
            let inner = render(sql, &b, depth + 1, inner);
            format!(
                "EXISTS (SELECT 1 FROM search_reference x JOIN resource {b} \
                   ON {b}.res_type = x.res_type AND {b}.res_id = x.res_id AND NOT {b}.deleted \
                 WHERE x.target_type = {a}.res_type AND x.target_id = {a}.res_id \
                   AND x.res_type = {s} AND x.param = {p} AND {inner})"
            )
        }
    }
}

/// `near`: a position within the distance (haversine on a 6,371 km sphere), the
/// latitude first narrowed by its index to the band the distance allows.
fn near_clause(sql: &mut SqlCondition, owner: &str, param: &str, value: &SearchValue) -> String {
    let SearchValue::Near {
        latitude,
        longitude,
        km,
    } = value
    else {
        return "false".to_owned();
    };
    let (p_lat, p_long) = (
        sql.text(&format!("{param}$lat")),
        sql.text(&format!("{param}$long")),
    );
    let band = km / 111.0 + 1e-9;
    let (low, high) = (
        sql.bind(Box::new(latitude - band)),
        sql.bind(Box::new(latitude + band)),
    );
    let (lat, long, dist) = (
        sql.bind(Box::new(*latitude)),
        sql.bind(Box::new(*longitude)),
        sql.bind(Box::new(*km)),
    );
    format!(
        "EXISTS (SELECT 1 FROM search_number x CROSS JOIN LATERAL (SELECT x.value::float8 AS lat) c \
          WHERE {owner} AND x.param = {p_lat} AND x.value BETWEEN {low}::float8::numeric AND {high}::float8::numeric \
            AND EXISTS (SELECT 1 FROM search_number x WHERE {owner} AND x.param = {p_long} \
              AND 2 * 6371 * asin(sqrt(power(sin(radians(c.lat - {lat}::float8) / 2), 2) \
                  + cos(radians({lat}::float8)) * cos(radians(c.lat)) \
                  * power(sin(radians(x.value::float8 - {long}::float8) / 2), 2))) <= {dist}::float8))"
    )
}

/// A composite value: its first component's row, then each other component in a
/// row of the same element (`grp`), the group carried down by the lateral `c`.
fn composite_clause(
    sql: &mut SqlCondition,
    owner: &str,
    param: &str,
    value: &SearchValue,
) -> String {
    let SearchValue::Composite(parts) = value else {
        return "false".to_owned();
    };
    let mut clauses = Vec::new();
    for (i, (kind, part)) in parts.iter().enumerate() {
        let p = sql.text(&format!("{param}${i}"));
        let matches = value_clause(sql, &Modifier::None, part);
        let table = table_of(*kind);
        clauses.push(if i == 0 {
            format!("FROM {table} x CROSS JOIN LATERAL (SELECT x.grp AS g) c WHERE {owner} AND x.param = {p} AND {matches}")
        } else {
            format!("EXISTS (SELECT 1 FROM {table} x WHERE {owner} AND x.param = {p} AND x.grp = c.g AND {matches})")
        });
    }
    let first = clauses.remove(0);
    let mut sql_text = format!("EXISTS (SELECT 1 {first}");
    for rest in clauses {
        sql_text.push_str(" AND ");
        sql_text.push_str(&rest);
    }
    sql_text.push(')');
    sql_text
}

/// A circle row (`circle_member m`) in force now: its member's participation
/// has not ended.
pub const CIRCLE_ROW_NOW: &str = "(m.until IS NULL OR m.until > now())";

/// The (type, id) of a user given as the arrays `mt` and `mi` (bound
/// parameters), with her PractitionerRoles (of a Practitioner) and her
/// Practitioner (of a PractitionerRole): a query of two text columns.
pub fn members_sql(mt: &str, mi: &str) -> String {
    let me = format!("SELECT * FROM unnest({mt}::text[], {mi}::text[])");
    format!(
        "{me} \
         UNION ALL SELECT 'PractitionerRole', x.res_id FROM search_reference x \
           WHERE x.res_type = 'PractitionerRole' AND x.param = 'practitioner' \
             AND (x.target_type, x.target_id) IN ({me}) \
         UNION ALL SELECT x.target_type, x.target_id FROM search_reference x \
           WHERE x.res_type = 'PractitionerRole' AND x.param = 'practitioner' \
             AND x.target_type IS NOT NULL AND (x.res_type, x.res_id) IN ({me})"
    )
}

/// The care-circle policy on the resource row `a` of `res_type`: a Patient
/// whose circle (`circle_member`) names one of `members` now, or a resource that
/// references such a patient through one of its type's compartment parameters;
/// any resource of a type that is no part of a patient's record. A
/// Practitioner's PractitionerRoles are hers, and a PractitionerRole's
/// Practitioner. Each form is one index probe per row.
fn circle_clause(
    sql: &mut SqlCondition,
    a: &str,
    members: &[(String, String)],
    res_type: &str,
) -> String {
    let params = crate::search::compartment::record_params(res_type);
    if res_type != "Patient" && params.is_empty() {
        return "true".to_owned();
    }
    let (types, ids): (Vec<String>, Vec<String>) = members.iter().cloned().unzip();
    let (mt, mi) = (sql.bind(Box::new(types)), sql.bind(Box::new(ids)));
    let mine = members_sql(&mt, &mi);
    let now = CIRCLE_ROW_NOW;
    if res_type == "Patient" {
        return format!(
            "EXISTS (SELECT 1 FROM circle_member m WHERE m.patient_id = {a}.res_id \
               AND (m.member_type, m.member_id) IN ({mine}) AND {now})"
        );
    }
    let p = sql.bind(Box::new(params));
    format!(
        "EXISTS (SELECT 1 FROM search_reference x JOIN circle_member m ON m.patient_id = x.target_id \
           WHERE x.res_type = {a}.res_type AND x.res_id = {a}.res_id AND x.param = ANY({p}::text[]) \
             AND x.target_type = 'Patient' AND (m.member_type, m.member_id) IN ({mine}) AND {now})"
    )
}

/// One `_sort` key as SQL: its expression on the resource row `r` and the SQL type
/// its values have (cursor values travel as text and are cast back).
pub struct SortSql {
    pub expr: String,
    pub sql_type: &'static str,
    pub descending: bool,
}

/// The `_sort` keys as SQL. A repeating element sorts by its lowest value
/// ascending and its highest descending; resources without one come last.
pub fn sort_keys(sql: &mut SqlCondition, keys: &[SortKey]) -> Vec<SortSql> {
    keys.iter()
        .map(|key| {
            let (expr, sql_type) = match &key.param {
                SortParam::Id => ("r.res_id".to_owned(), "text"),
                SortParam::LastUpdated => ("r.last_updated".to_owned(), "timestamptz"),
                SortParam::Indexed { code, kind } => {
                    let (column, sql_type) = match (kind, key.descending) {
                        (ParamType::String, _) => ("normalized", "text"),
                        (ParamType::Token, _) => ("code", "text"),
                        (ParamType::Reference, _) => ("target_id", "text"),
                        (ParamType::Date, false) => ("low", "timestamptz"),
                        (ParamType::Date, true) => ("high", "timestamptz"),
                        (ParamType::Uri, _) => ("uri", "text"),
                        _ => ("value", "numeric"),
                    };
                    let aggregate = if key.descending { "max" } else { "min" };
                    let p = sql.text(code);
                    let expr = format!(
                        "(SELECT {aggregate}(x.{column}) FROM {} x \
                          WHERE x.res_type = r.res_type AND x.res_id = r.res_id AND x.param = {p})",
                        table_of(*kind)
                    );
                    (expr, sql_type)
                }
            };
            SortSql {
                expr,
                sql_type,
                descending: key.descending,
            }
        })
        .collect()
}

/// "Comes after the cursor" in the order `k0, k1, … NULLS LAST, res_id, res_type`,
/// on the columns `s.k0 …` of the sorted subquery: the keyset of sorted pages.
pub fn after_sorted(
    sql: &mut SqlCondition,
    keys: &[SortSql],
    values: &[Option<String>],
    res_id: &str,
    res_type: &str,
) -> String {
    let mut equal_so_far: Vec<String> = Vec::new();
    let mut alternatives = Vec::new();
    for (i, (key, value)) in keys.iter().zip(values).enumerate() {
        let col = format!("s.k{i}");
        match value {
            Some(v) => {
                let v = format!("{}::text::{}", sql.text(v), key.sql_type);
                let beyond = if key.descending { "<" } else { ">" };
                let mut step = equal_so_far.clone();
                step.push(format!("({col} {beyond} {v} OR {col} IS NULL)"));
                alternatives.push(format!("({})", step.join(" AND ")));
                equal_so_far.push(format!("{col} = {v}"));
            }
            // Nothing sorts after NULL but other NULLs, by the tie-breakers below.
            None => equal_so_far.push(format!("{col} IS NULL")),
        }
    }
    let (id, t) = (sql.text(res_id), sql.text(res_type));
    equal_so_far.push(format!("(s.res_id, s.res_type) > ({id}, {t})"));
    alternatives.push(format!("({})", equal_so_far.join(" AND ")));
    format!("({})", alternatives.join(" OR "))
}

/// A LIKE pattern that matches `text` literally.
fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn value_clause(sql: &mut SqlCondition, modifier: &Modifier, value: &SearchValue) -> String {
    match value {
        SearchValue::String(s) => match modifier {
            Modifier::Exact => format!("x.exact = {}", sql.text(s)),
            Modifier::Contains => format!("x.normalized LIKE {}", sql.text(&format!("%{}%", like_escape(&normalize(s))))),
            _ => format!("x.normalized LIKE {}", sql.text(&format!("{}%", like_escape(&normalize(s))))),
        },
        SearchValue::Token(token) if *modifier == Modifier::Identifier => {
            token_match(sql, token, "x.identifier_system", "x.identifier_value")
        }
        SearchValue::Token(token) if *modifier == Modifier::Text => {
            let text = token.code.as_deref().unwrap_or_default();
            format!("x.text LIKE {}", sql.text(&format!("{}%", like_escape(&normalize(text)))))
        }
        SearchValue::Token(token) => token_match(sql, token, "x.system", "x.code"),
        SearchValue::Reference { target_type, id, url } => {
            let mut alternatives = Vec::new();
            if !id.is_empty() {
                let mut parts = vec![format!("x.target_id = {}", sql.text(id))];
                if let Some(t) = target_type {
                    parts.push(format!("x.target_type = {}", sql.text(t)));
                }
                alternatives.push(format!("({})", parts.join(" AND ")));
            }
            if let Some(url) = url {
                alternatives.push(format!("x.url = {}", sql.text(url)));
            }
            format!("({})", alternatives.join(" OR "))
        }
        SearchValue::Date(prefix, range) => date_clause(sql, "x.low", "x.high", *prefix, range),
        SearchValue::Number(prefix, number) => number_clause(sql, "x.value", *prefix, number),
        SearchValue::Quantity { prefix, value, system, code } => {
            let mut parts = vec![number_clause(sql, "x.value", *prefix, value)];
            if let Some(system) = system {
                parts.push(format!("x.system = {}", sql.text(system)));
            }
            if let Some(code) = code {
                let c = sql.text(code);
                // Without a system, the unit as written counts too.
                if system.is_some() {
                    parts.push(format!("x.code = {c}"));
                } else {
                    parts.push(format!("(x.code = {c} OR x.unit = {c})"));
                }
            }
            format!("({})", parts.join(" AND "))
        }
        SearchValue::Composite(_) | SearchValue::Near { .. } => "false".to_owned(),
        SearchValue::Uri(uri) => match modifier {
            Modifier::Below => format!("x.uri LIKE {}", sql.text(&format!("{}%", like_escape(uri)))),
            Modifier::Above => format!("{} LIKE (replace(replace(replace(x.uri, '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%')", sql.text(uri)),
            _ => format!("x.uri = {}", sql.text(uri)),
        },
    }
}

fn token_match(sql: &mut SqlCondition, token: &Token, system_col: &str, code_col: &str) -> String {
    let mut parts = Vec::new();
    match token.system.as_deref() {
        None => {}
        Some("") => parts.push(format!("{system_col} IS NULL")),
        Some(system) => parts.push(format!("{system_col} = {}", sql.text(system))),
    }
    if let Some(code) = &token.code {
        parts.push(format!("{code_col} = {}", sql.text(code)));
    }
    if parts.is_empty() {
        "true".to_owned()
    } else {
        format!("({})", parts.join(" AND "))
    }
}

/// A target range `[low, high)` (columns) against the search range `[sl, sh)`, with
/// R4's range semantics for date prefixes (eq: the search range contains the
/// target; gt/lt: the target reaches beyond it; sa/eb: starts after / ends before).
fn date_clause(
    sql: &mut SqlCondition,
    low: &str,
    high: &str,
    prefix: Prefix,
    range: &Range,
) -> String {
    let range = if prefix == Prefix::Ap {
        // "Approximately": the server decides; here, 10% of the distance to now.
        let now = chrono::Utc::now();
        let distance = (now - range.low).abs().max(Duration::days(1));
        let margin = distance / 10;
        Range {
            low: range.low - margin,
            high: range.high + margin,
        }
    } else {
        *range
    };
    let mut bind = |t| sql.bind(Box::new(t));
    // Only the bounds a prefix uses are bound: PostgreSQL refuses unused parameters.
    let mut contained = || {
        let (sl, sh) = (bind(range.low), bind(range.high));
        format!("({low} >= {sl} AND {high} <= {sh})")
    };
    match prefix {
        Prefix::Eq => contained(),
        Prefix::Ne => format!("NOT {}", contained()),
        Prefix::Ap => {
            let (sl, sh) = (bind(range.low), bind(range.high));
            format!("({low} < {sh} AND {high} > {sl})")
        }
        // ge and le include every target that reaches into the search range or past
        // it in their direction (as HAPI does): "discharged since the 20th" finds a
        // stay that ended on the 20th.
        Prefix::Ge => format!("{high} > {}", bind(range.low)),
        Prefix::Le => format!("{low} < {}", bind(range.high)),
        Prefix::Gt => format!("{high} > {}", bind(range.high)),
        Prefix::Lt => format!("{low} < {}", bind(range.low)),
        Prefix::Sa => format!("{low} >= {}", bind(range.high)),
        Prefix::Eb => format!("{high} <= {}", bind(range.low)),
    }
}

/// Decimal places of a decimal as written (`1.50` → 2; exponents move them).
fn precision(number: &str) -> i32 {
    let lower = number.to_ascii_lowercase();
    let (mantissa, exponent) = lower.split_once('e').unwrap_or((&lower, "0"));
    let places = mantissa.split_once('.').map_or(0, |(_, f)| f.len() as i32);
    places - exponent.parse::<i32>().unwrap_or(0)
}

/// A stored number against a search number: `eq` means within the precision of the
/// search value (`100` matches [99.5, 100.5)), as R4 says.
fn number_clause(sql: &mut SqlCondition, col: &str, prefix: Prefix, number: &str) -> String {
    let v = format!("{}::text::numeric", sql.text(number));
    let half_unit = format!("(0.5 * power(10::numeric, {}))", -precision(number));
    match prefix {
        Prefix::Eq => format!("({col} >= {v} - {half_unit} AND {col} < {v} + {half_unit})"),
        Prefix::Ne => format!("({col} < {v} - {half_unit} OR {col} >= {v} + {half_unit})"),
        Prefix::Gt | Prefix::Sa => format!("{col} > {v}"),
        Prefix::Lt | Prefix::Eb => format!("{col} < {v}"),
        Prefix::Ge => format!("{col} >= {v}"),
        Prefix::Le => format!("{col} <= {v}"),
        Prefix::Ap => format!("({col} >= {v} * 0.9 AND {col} <= {v} * 1.1)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_of_decimals() {
        assert_eq!(precision("100"), 0);
        assert_eq!(precision("1.50"), 2);
        assert_eq!(precision("1.5e2"), -1);
        assert_eq!(precision("-0.001"), 3);
    }
}
