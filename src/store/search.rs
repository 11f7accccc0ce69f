//! Search, `$everything`, include and count queries, rendered by `search_sql`.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;

use crate::error::FhirResult;
use crate::search::{Cursor, Include, SearchPlan};

use super::{search_sql, version_from_row, StoredVersion, VERSION_COLUMNS};

/// Runs a search statement, prepared once per connection (`store::pool` bounds
/// how many a connection keeps) when one plan suits every value it binds.
/// Planning a search costs several times running it (0.43 ms against 0.06 ms for
/// one by identifier), and PostgreSQL keeps a generic plan after five runs when
/// it looks as good as the custom ones.
async fn prepared(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> FhirResult<Vec<tokio_postgres::Row>> {
    if !one_plan_fits(sql) {
        return Ok(client.query(sql, params).await?);
    }
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query(&statement, params).await?)
}

/// Whether a generic plan suits a search whatever its values: not when it has
/// a range of dates, numbers or quantities, whose selectivity only its bounds
/// tell (a week's discharges planned generically took 360 ms instead of 17).
fn one_plan_fits(sql: &str) -> bool {
    !["search_date", "search_number", "search_quantity"]
        .iter()
        .any(|table| sql.contains(table))
}

/// Current, non-deleted resources matching a search, in the plan's order, at most
/// `limit`, from the plan's cursor; with each, the values of its sort keys (as text,
/// for the next page's cursor).
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.search",
    level = "debug",
    skip_all
)]
pub async fn search(
    client: &impl GenericClient,
    plan: &SearchPlan,
    limit: usize,
) -> FhirResult<Vec<(StoredVersion, Vec<Option<String>>)>> {
    let mut query = search_sql::matching(plan);
    let keys = search_sql::sort_keys(&mut query, &plan.sort);
    let key_columns: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!(", {} AS k{i}", k.expr))
        .collect();
    let inner = format!(
        "SELECT r.res_type, r.res_id, r.version_id{key_columns} FROM resource r WHERE {}",
        query.clauses.join(" AND ")
    );
    let mut outer = Vec::new();
    let mut offset = 0;
    match &plan.cursor {
        Cursor::After { res_id, res_type } => {
            let (id, t) = (
                query.bind(Box::new(res_id.clone())),
                query.bind(Box::new(res_type.clone())),
            );
            outer.push(format!("(s.res_id, s.res_type) > ({id}, {t})"));
        }
        Cursor::AfterSorted {
            values,
            res_id,
            res_type,
        } => {
            outer.push(search_sql::after_sorted(
                &mut query, &keys, values, res_id, res_type,
            ));
        }
        Cursor::Offset(n) => offset = *n,
        Cursor::Start => {}
    }
    let mut order: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            format!(
                "s.k{i} {} NULLS LAST",
                if k.descending { "DESC" } else { "ASC" }
            )
        })
        .collect();
    order.push("s.res_id".to_owned());
    order.push("s.res_type".to_owned());
    let key_texts: String = (0..keys.len()).map(|i| format!(", s.k{i}::text")).collect();
    let limit = query.bind(Box::new(limit as i64));
    let offset = query.bind(Box::new(offset as i64));
    let where_sql = if outer.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", outer.join(" AND "))
    };
    // The page is cut from the keys before any version is read: only its
    // resources' bodies are fetched, not those of every match (measured at
    // 200,000 patients: 1,062 matches of a name search read for a page of 50).
    // A subquery with LIMIT is never flattened into the join.
    let order = order.join(", ");
    let sql = format!(
        "SELECT {VERSION_COLUMNS}{key_texts}
         FROM (SELECT * FROM ({inner}) s {where_sql} ORDER BY {order} LIMIT {limit} OFFSET {offset}) s
         JOIN resource_version v ON v.res_type = s.res_type AND v.res_id = s.res_id
                                AND v.version_id = s.version_id
         ORDER BY {order}"
    );
    let rows = prepared(client, &sql, &query.param_refs()).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let keys = (0..keys.len()).map(|i| row.get(7 + i)).collect();
            (version_from_row(row), keys)
        })
        .collect())
}

/// What `$everything` collects around a resource.
pub struct EverythingQuery<'a> {
    pub res_type: &'a str,
    pub res_id: &'a str,
    /// `Type.param` pairs through which a resource belongs (`None`: any reference).
    pub through: Option<Vec<String>>,
    /// `_type`
    pub types: Option<Vec<String>>,
    /// `_since`
    pub since: Option<DateTime<Utc>>,
    /// Keyset: after this (type, id).
    pub after: Option<(String, String)>,
    pub limit: usize,
}

/// Conditions on current resources `r` (`$everything`, `$export`): not deleted, of
/// these types, changed at or after `since`, after `(type, id)` in that order.
pub(super) fn current_filters(
    sql: &mut search_sql::SqlCondition,
    types: Option<&Vec<String>>,
    since: Option<DateTime<Utc>>,
    after: Option<&(String, String)>,
) -> Vec<String> {
    let mut filters = vec!["NOT r.deleted".to_owned()];
    if let Some(types) = types {
        filters.push(format!(
            "r.res_type = ANY({})",
            sql.bind(Box::new(types.clone()))
        ));
    }
    if let Some(since) = since {
        filters.push(format!("r.last_updated >= {}", sql.bind(Box::new(since))));
    }
    if let Some((t, id)) = after {
        let (t, id) = (
            sql.bind(Box::new(t.clone())),
            sql.bind(Box::new(id.clone())),
        );
        filters.push(format!("(r.res_type, r.res_id) > ({t}, {id})"));
    }
    filters
}

/// The resource itself and the current resources that point to it (through the
/// given parameters), in (type, id) order.
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.everything",
    level = "debug",
    skip_all
)]
pub async fn everything(
    client: &impl GenericClient,
    q: &EverythingQuery<'_>,
) -> FhirResult<Vec<StoredVersion>> {
    let mut sql = search_sql::SqlCondition::new();
    let (t, id) = (
        sql.bind(Box::new(q.res_type.to_owned())),
        sql.bind(Box::new(q.res_id.to_owned())),
    );
    let through = match &q.through {
        Some(pairs) => format!(
            "AND (x.res_type || '.' || x.param) = ANY({})",
            sql.bind(Box::new(pairs.clone()))
        ),
        None => String::new(),
    };
    let filters = current_filters(&mut sql, q.types.as_ref(), q.since, q.after.as_ref());
    let limit = sql.bind(Box::new(q.limit as i64));
    let from = format!(
        "(SELECT x.res_type, x.res_id FROM search_reference x
           WHERE x.target_type = {t} AND x.target_id = {id} {through}
          UNION SELECT {t}, {id}) m
         JOIN resource r ON r.res_type = m.res_type AND r.res_id = m.res_id"
    );
    current_versions(client, &from, &sql, &filters, &limit).await
}

/// The current versions of the resources `r` of `from`, meeting `filters`, in
/// (type, id) order, `limit` at most (a bound parameter).
pub(super) async fn current_versions(
    client: &impl GenericClient,
    from: &str,
    sql: &search_sql::SqlCondition,
    filters: &[String],
    limit: &str,
) -> FhirResult<Vec<StoredVersion>> {
    let text = format!(
        "SELECT {VERSION_COLUMNS} FROM {from}
           JOIN resource_version v ON v.res_type = r.res_type AND v.res_id = r.res_id
                                  AND v.version_id = r.version_id
          WHERE {}
          ORDER BY r.res_type, r.res_id LIMIT {limit}",
        filters.join(" AND ")
    );
    let rows = prepared(client, &text, &sql.param_refs()).await?;
    Ok(rows.iter().map(version_from_row).collect())
}

/// Current resources reached by one `_include`/`_revinclude` from `sources` (all of
/// `include.source_type` for `_include`, of one target type for `_revinclude`).
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.included",
    level = "debug",
    skip_all
)]
pub async fn included(
    client: &impl GenericClient,
    include: &Include,
    sources_type: &str,
    sources: &[String],
) -> FhirResult<Vec<StoredVersion>> {
    let mut q = search_sql::SqlCondition::new();
    let (source_col, found_col) = if include.reverse {
        ("target", "res")
    } else {
        ("res", "target")
    };
    let t = q.bind(Box::new(sources_type.to_owned()));
    let ids = q.bind(Box::new(sources.to_vec()));
    q.clauses.push(format!(
        "x.{source_col}_type = {t} AND x.{source_col}_id = ANY({ids})"
    ));
    if include.reverse {
        let s = q.bind(Box::new(include.source_type.clone()));
        q.clauses.push(format!("x.res_type = {s}"));
    }
    if let Some(param) = &include.param {
        let p = q.bind(Box::new(param.clone()));
        q.clauses.push(format!("x.param = {p}"));
    }
    if let (Some(target), false) = (&include.target_type, include.reverse) {
        let p = q.bind(Box::new(target.clone()));
        q.clauses.push(format!("x.target_type = {p}"));
    }
    let sql = format!(
        "SELECT DISTINCT {VERSION_COLUMNS} FROM search_reference x
         JOIN resource r ON r.res_type = x.{found_col}_type AND r.res_id = x.{found_col}_id AND NOT r.deleted
         JOIN resource_version v ON v.res_type = r.res_type AND v.res_id = r.res_id AND v.version_id = r.version_id
         WHERE {} LIMIT {}",
        q.clauses.join(" AND "),
        MAX_INCLUDED
    );
    let rows = prepared(client, &sql, &q.param_refs()).await?;
    Ok(rows.iter().map(version_from_row).collect())
}

/// At most this many resources are included in one page (memory bound).
pub const MAX_INCLUDED: usize = 1000;

/// How many current resources match a search.
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.count",
    level = "debug",
    skip_all
)]
pub async fn count(client: &impl GenericClient, plan: &SearchPlan) -> FhirResult<i64> {
    let query = search_sql::matching(plan);
    let sql = format!(
        "SELECT count(*) FROM resource r WHERE {}",
        query.clauses.join(" AND ")
    );
    let rows = prepared(client, &sql, &query.param_refs()).await?;
    Ok(rows.first().map_or(0, |row| row.get(0)))
}

/// The ids of current resources matching a search (for conditional interactions),
/// at most `limit`.
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.matching_ids",
    level = "debug",
    skip_all
)]
pub async fn matching_ids(
    client: &impl GenericClient,
    plan: &SearchPlan,
    limit: usize,
) -> FhirResult<Vec<String>> {
    let mut query = search_sql::matching(plan);
    let limit = query.bind(Box::new(limit as i64));
    let sql = format!(
        "SELECT r.res_id FROM resource r WHERE {} ORDER BY r.res_id LIMIT {limit}",
        query.clauses.join(" AND ")
    );
    let rows = prepared(client, &sql, &query.param_refs()).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether the care circle of each of `patients` names one of `members` (or a
/// role of theirs) now.
pub async fn circle_covers(
    client: &impl GenericClient,
    members: &[(String, String)],
    patients: &[String],
) -> FhirResult<bool> {
    if patients.is_empty() {
        return Ok(true);
    }
    let (types, ids): (Vec<String>, Vec<String>) = members.iter().cloned().unzip();
    let mine = search_sql::members_sql("$1", "$2");
    let sql = format!(
        "SELECT count(DISTINCT m.patient_id) FROM circle_member m \
         WHERE m.patient_id = ANY($3::text[]) AND (m.member_type, m.member_id) IN ({mine}) \
           AND {now}",
        now = search_sql::CIRCLE_ROW_NOW
    );
    let mut wanted = patients.to_vec();
    wanted.sort();
    wanted.dedup();
    let row = client.query_one(&sql, &[&types, &ids, &wanted]).await?;
    let covered: i64 = row.get(0);
    Ok(covered == wanted.len() as i64)
}

/// Whether `res_type/id` is the record of a patient whose care circle names one
/// of `members` (or a role of theirs) now: a Patient in such a circle, or a
/// resource referencing one through `params` (its compartment parameters). One
/// prepared statement per form.
/// The patients in whose care circle one of `members` is now.
pub async fn circle_patients(
    client: &impl GenericClient,
    members: &[(String, String)],
) -> FhirResult<Vec<String>> {
    let (types, ids): (Vec<String>, Vec<String>) = members.iter().cloned().unzip();
    let sql = format!(
        "SELECT DISTINCT m.patient_id FROM circle_member m
          WHERE (m.member_type, m.member_id) IN ({}) AND {} ORDER BY 1",
        search_sql::members_sql("$1", "$2"),
        search_sql::CIRCLE_ROW_NOW
    );
    let rows = client.query(&sql, &[&types, &ids]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub async fn circle_sees(
    client: &impl GenericClient,
    members: &[(String, String)],
    res_type: &str,
    id: &str,
    params: &[String],
) -> FhirResult<bool> {
    let (types, ids): (Vec<String>, Vec<String>) = members.iter().cloned().unzip();
    let mine = search_sql::members_sql("$1", "$2");
    let now = search_sql::CIRCLE_ROW_NOW;
    let row = if res_type == "Patient" {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM circle_member m WHERE m.patient_id = $3 \
               AND (m.member_type, m.member_id) IN ({mine}) AND {now})"
        );
        let stmt = client.prepare_cached(&sql).await?;
        client.query_one(&stmt, &[&types, &ids, &id]).await?
    } else {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM search_reference x JOIN circle_member m ON m.patient_id = x.target_id \
               WHERE x.res_type = $3 AND x.res_id = $4 AND x.param = ANY($5::text[]) \
                 AND x.target_type = 'Patient' AND (m.member_type, m.member_id) IN ({mine}) AND {now})"
        );
        let stmt = client.prepare_cached(&sql).await?;
        client
            .query_one(&stmt, &[&types, &ids, &res_type, &id, &params])
            .await?
    };
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::one_plan_fits;

    #[test]
    fn searches_on_ranges_are_planned_with_their_values() {
        assert!(one_plan_fits(
            "SELECT r.res_id FROM resource r WHERE EXISTS (SELECT 1 FROM search_token x WHERE x.code = $1)"
        ));
        for table in ["search_date", "search_number", "search_quantity"] {
            let sql = format!("SELECT r.res_id FROM resource r WHERE EXISTS (SELECT 1 FROM {table} x WHERE x.low >= $1)");
            assert!(!one_plan_fits(&sql), "{table}");
        }
    }
}
