//! Writes a resource's index rows: one statement that deletes the previous version's
//! rows and inserts the new ones in every index table (data-modifying CTEs), so a
//! write costs one round trip for its index whatever the number of parameters.

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::search_sql::SqlCondition;
use crate::error::FhirResult;
use crate::search::index::IndexRows;

/// The index tables, for deleting a resource's rows.
const TABLES: &[&str] = &[
    "search_string",
    "search_token",
    "search_reference",
    "search_date",
    "search_number",
    "search_quantity",
    "search_uri",
];

type Column = (Box<dyn ToSql + Sync + Send>, &'static str);

/// A text column of the rows, for `unnest`.
fn text<R>(rows: &[R], f: impl Fn(&R) -> Option<&str>) -> Column {
    let values: Vec<Option<String>> = rows.iter().map(|r| f(r).map(str::to_owned)).collect();
    (Box::new(values), "text")
}

fn groups<R>(rows: &[R], f: impl Fn(&R) -> i32) -> Column {
    let values: Vec<i32> = rows.iter().map(f).collect();
    (Box::new(values), "int4")
}

fn instants<R>(rows: &[R], f: impl Fn(&R) -> DateTime<Utc>) -> Column {
    let values: Vec<DateTime<Utc>> = rows.iter().map(f).collect();
    (Box::new(values), "timestamptz")
}

/// Replaces the index rows of `(res_type, res_id)` with `rows` (reindexing).
pub async fn replace(
    tx: &Transaction<'_>,
    res_type: &str,
    res_id: &str,
    rows: &IndexRows,
) -> FhirResult<()> {
    let mut q = SqlCondition::new();
    let t = q.bind(Box::new(res_type.to_owned()));
    let id = q.bind(Box::new(res_id.to_owned()));
    let ctes = ctes(&mut q, &t, &id, rows, true);
    if ctes.is_empty() {
        return Ok(());
    }
    let sql = format!("WITH {} SELECT 1", ctes.join(", "));
    let stmt = tx.prepare_cached(&sql).await?;
    tx.execute(&stmt, &q.param_refs()).await?;
    Ok(())
}

/// The data-modifying CTEs that replace the index rows of the resource whose type
/// and id are bound as `t` and `id`; `replace` is false for a first version
/// (nothing to delete). Part of the one statement that writes a version.
pub fn ctes(
    q: &mut SqlCondition,
    t: &str,
    id: &str,
    rows: &IndexRows,
    replace: bool,
) -> Vec<String> {
    let mut ctes: Vec<String> = Vec::new();
    if replace {
        for (i, table) in TABLES.iter().enumerate() {
            ctes.push(format!(
                "d{i} AS (DELETE FROM {table} WHERE res_type = {t} AND res_id = {id})"
            ));
        }
    }
    let mut insert = |table: &str, columns: &str, select: &str, arrays: Vec<Column>| {
        if arrays.is_empty() {
            return;
        }
        let binds: Vec<String> = arrays
            .into_iter()
            .map(|(value, sql_type)| format!("{}::{sql_type}[]", q.bind(value)))
            .collect();
        let aliases: Vec<String> = (0..binds.len()).map(|i| format!("c{i}")).collect();
        // The last array is always the composite group (see `groups`).
        let columns = format!("{columns}, grp");
        let select = format!("{select}, c{}", binds.len() - 1);
        ctes.push(format!(
            "i_{table} AS (INSERT INTO {table} (res_type, res_id, {columns}) SELECT {t}, {id}, {select} \
             FROM unnest({}) AS u({}))",
            binds.join(", "),
            aliases.join(", ")
        ));
    };
    let (s, tk, rf) = (&rows.strings, &rows.tokens, &rows.references);
    let (d, n, qt, u) = (&rows.dates, &rows.numbers, &rows.quantities, &rows.uris);
    let nonempty = |len: usize, columns: Vec<Column>| if len == 0 { Vec::new() } else { columns };
    insert(
        "search_string",
        "param, normalized, exact",
        "c0, c1, c2",
        nonempty(
            s.len(),
            vec![
                text(s, |r| Some(&r.param)),
                text(s, |r| Some(&r.normalized)),
                text(s, |r| Some(&r.exact)),
                groups(s, |r| r.grp),
            ],
        ),
    );
    insert(
        "search_token",
        "param, system, code, text",
        "c0, c1, c2, c3",
        nonempty(
            tk.len(),
            vec![
                text(tk, |r| Some(&r.param)),
                text(tk, |r| r.system.as_deref()),
                text(tk, |r| r.code.as_deref()),
                text(tk, |r| r.text.as_deref()),
                groups(tk, |r| r.grp),
            ],
        ),
    );
    insert(
        "search_reference",
        "param, target_type, target_id, url, identifier_system, identifier_value",
        "c0, c1, c2, c3, c4, c5",
        nonempty(
            rf.len(),
            vec![
                text(rf, |r| Some(&r.param)),
                text(rf, |r| r.target_type.as_deref()),
                text(rf, |r| r.target_id.as_deref()),
                text(rf, |r| r.url.as_deref()),
                text(rf, |r| r.identifier_system.as_deref()),
                text(rf, |r| r.identifier_value.as_deref()),
                groups(rf, |r| r.grp),
            ],
        ),
    );
    insert(
        "search_date",
        "param, low, high",
        "c0, c1, c2",
        nonempty(
            d.len(),
            vec![
                text(d, |r| Some(&r.param)),
                instants(d, |r| r.low),
                instants(d, |r| r.high),
                groups(d, |r| r.grp),
            ],
        ),
    );
    insert(
        "search_number",
        "param, value",
        "c0, c1::numeric",
        nonempty(
            n.len(),
            vec![
                text(n, |r| Some(&r.param)),
                text(n, |r| Some(&r.value)),
                groups(n, |r| r.grp),
            ],
        ),
    );
    insert(
        "search_quantity",
        "param, value, system, code, unit",
        "c0, c1::numeric, c2, c3, c4",
        nonempty(
            qt.len(),
            vec![
                text(qt, |r| Some(&r.param)),
                text(qt, |r| Some(&r.value)),
                text(qt, |r| r.system.as_deref()),
                text(qt, |r| r.code.as_deref()),
                text(qt, |r| r.unit.as_deref()),
                groups(qt, |r| r.grp),
            ],
        ),
    );
    insert(
        "search_uri",
        "param, uri",
        "c0, c1",
        nonempty(
            u.len(),
            vec![
                text(u, |r| Some(&r.param)),
                text(u, |r| Some(&r.uri)),
                groups(u, |r| r.grp),
            ],
        ),
    );
    ctes
}
