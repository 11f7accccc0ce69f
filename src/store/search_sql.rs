//! Renders a search plan as a SQL condition on `resource r` with bound parameters.
//! The plan is built above (in `search`); this module only reads it.

use tokio_postgres::types::ToSql;

use crate::fhir::datetime::Range;
use crate::search::{Condition, DatePrefix, SearchPlan, Token};

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

    pub fn param_refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params.iter().map(|p| p.as_ref() as _).collect()
    }
}

/// `r` rows of the plan's type, not deleted, matching every condition.
pub fn matching(plan: &SearchPlan) -> SqlCondition {
    let mut sql = SqlCondition::new();
    let t = sql.bind(Box::new(plan.resource_type.clone()));
    sql.clauses.push(format!("r.res_type = {t}"));
    sql.clauses.push("NOT r.deleted".to_owned());
    for condition in &plan.conditions {
        let clause = match condition {
            Condition::Id(ids) => {
                let p = sql.bind(Box::new(ids.clone()));
                format!("r.res_id = ANY({p})")
            }
            Condition::LastUpdated(values) => {
                let alternatives: Vec<String> = values
                    .iter()
                    .map(|(prefix, range)| date_clause(&mut sql, "r.last_updated", *prefix, range))
                    .collect();
                format!("({})", alternatives.join(" OR "))
            }
            Condition::Token { param, values } => {
                let p = sql.bind(Box::new(param.clone()));
                let alternatives: Vec<String> =
                    values.iter().map(|v| token_clause(&mut sql, v)).collect();
                format!(
                    "EXISTS (SELECT 1 FROM search_token t WHERE t.res_type = r.res_type
                       AND t.res_id = r.res_id AND t.param = {p} AND ({}))",
                    alternatives.join(" OR ")
                )
            }
        };
        sql.clauses.push(clause);
    }
    sql
}

/// A point in time `col` against the search range `[low, high)`; binds only the
/// bounds the prefix uses.
fn date_clause(sql: &mut SqlCondition, col: &str, prefix: DatePrefix, range: &Range) -> String {
    let mut bound = |t| sql.bind(Box::new(t));
    match prefix {
        DatePrefix::Eq | DatePrefix::Ne => {
            let (low, high) = (bound(range.low), bound(range.high));
            if prefix == DatePrefix::Eq {
                format!("({col} >= {low} AND {col} < {high})")
            } else {
                format!("({col} < {low} OR {col} >= {high})")
            }
        }
        DatePrefix::Gt | DatePrefix::Sa => format!("{col} >= {}", bound(range.high)),
        DatePrefix::Lt | DatePrefix::Eb => format!("{col} < {}", bound(range.low)),
        DatePrefix::Ge => format!("{col} >= {}", bound(range.low)),
        DatePrefix::Le => format!("{col} < {}", bound(range.high)),
    }
}

fn token_clause(sql: &mut SqlCondition, token: &Token) -> String {
    let mut parts = Vec::new();
    match token.system.as_deref() {
        None => {}
        Some("") => parts.push("t.system IS NULL".to_owned()),
        Some(system) => {
            let p = sql.bind(Box::new(system.to_owned()));
            parts.push(format!("t.system = {p}"));
        }
    }
    if let Some(code) = &token.code {
        let p = sql.bind(Box::new(code.clone()));
        parts.push(format!("t.code = {p}"));
    }
    if parts.is_empty() {
        "true".to_owned()
    } else {
        format!("({})", parts.join(" AND "))
    }
}
