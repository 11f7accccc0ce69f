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
    "circle_member",
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
    let ctes = ctes(&mut q, &[(res_type, res_id, rows)], true);
    if ctes.is_empty() {
        return Ok(());
    }
    let sql = format!("WITH {} SELECT 1", ctes.join(", "));
    let stmt = tx.prepare_cached(&sql).await?;
    tx.execute(&stmt, &q.param_refs()).await?;
    Ok(())
}

/// One resource's index rows: its type, its id and the rows.
pub type Owned<'a> = (&'a str, &'a str, &'a IndexRows);

/// Each row of one index table with its owner, across resources.
fn flat<'a, R>(
    owners: &[Owned<'a>],
    rows: impl Fn(&'a IndexRows) -> &'a [R],
) -> Vec<(&'a str, &'a str, &'a R)> {
    owners
        .iter()
        .flat_map(|(t, id, index)| rows(index).iter().map(move |r| (*t, *id, r)))
        .collect()
}

/// The data-modifying CTEs that replace the index rows of the `owners` (several
/// resources in one statement: a transaction's creates); `replace` is false for
/// first versions (nothing to delete). Part of the one statement that writes
/// versions.
pub fn ctes(q: &mut SqlCondition, owners: &[Owned<'_>], replace: bool) -> Vec<String> {
    let mut ctes: Vec<String> = Vec::new();
    if replace {
        let types: Vec<String> = owners.iter().map(|o| o.0.to_owned()).collect();
        let ids: Vec<String> = owners.iter().map(|o| o.1.to_owned()).collect();
        let (t, id) = (q.bind(Box::new(types)), q.bind(Box::new(ids)));
        for (i, table) in TABLES.iter().enumerate() {
            ctes.push(format!(
                "d{i} AS (DELETE FROM {table} WHERE (res_type, res_id) IN \
                 (SELECT * FROM unnest({t}::text[], {id}::text[])))"
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
        // The first two arrays are the owners; the last is the composite group.
        let columns = format!("{columns}, grp");
        let select = format!("{select}, c{}", binds.len() - 1);
        ctes.push(format!(
            "i_{table} AS (INSERT INTO {table} (res_type, res_id, {columns}) SELECT c0, c1, {select} \
             FROM unnest({}) AS u({}))",
            binds.join(", "),
            aliases.join(", ")
        ));
    };
    // Owner columns first, then the table's own, then the group.
    fn with_owner<R>(
        rows: &[(&str, &str, &R)],
        own: impl FnOnce(&[(&str, &str, &R)]) -> Vec<Column>,
    ) -> Vec<Column> {
        if rows.is_empty() {
            return Vec::new();
        }
        let mut columns = vec![text(rows, |r| Some(r.0)), text(rows, |r| Some(r.1))];
        columns.extend(own(rows));
        columns
    }
    let s = flat(owners, |r| &r.strings);
    insert(
        "search_string",
        "param, normalized, exact",
        "c2, c3, c4",
        with_owner(&s, |s| {
            vec![
                text(s, |r| Some(&r.2.param)),
                text(s, |r| Some(&r.2.normalized)),
                text(s, |r| Some(&r.2.exact)),
                groups(s, |r| r.2.grp),
            ]
        }),
    );
    let tk = flat(owners, |r| &r.tokens);
    insert(
        "search_token",
        "param, system, code, text",
        "c2, c3, c4, c5",
        with_owner(&tk, |tk| {
            vec![
                text(tk, |r| Some(&r.2.param)),
                text(tk, |r| r.2.system.as_deref()),
                text(tk, |r| r.2.code.as_deref()),
                text(tk, |r| r.2.text.as_deref()),
                groups(tk, |r| r.2.grp),
            ]
        }),
    );
    let rf = flat(owners, |r| &r.references);
    insert(
        "search_reference",
        "param, target_type, target_id, url, identifier_system, identifier_value",
        "c2, c3, c4, c5, c6, c7",
        with_owner(&rf, |rf| {
            vec![
                text(rf, |r| Some(&r.2.param)),
                text(rf, |r| r.2.target_type.as_deref()),
                text(rf, |r| r.2.target_id.as_deref()),
                text(rf, |r| r.2.url.as_deref()),
                text(rf, |r| r.2.identifier_system.as_deref()),
                text(rf, |r| r.2.identifier_value.as_deref()),
                groups(rf, |r| r.2.grp),
            ]
        }),
    );
    let d = flat(owners, |r| &r.dates);
    insert(
        "search_date",
        "param, low, high",
        "c2, c3, c4",
        with_owner(&d, |d| {
            vec![
                text(d, |r| Some(&r.2.param)),
                instants(d, |r| r.2.low),
                instants(d, |r| r.2.high),
                groups(d, |r| r.2.grp),
            ]
        }),
    );
    let cm = flat(owners, |r| &r.circle);
    insert(
        "circle_member",
        "patient_id, member_type, member_id, until",
        "c2, c3, c4, c5",
        with_owner(&cm, |cm| {
            let until: Vec<Option<DateTime<Utc>>> = cm.iter().map(|r| r.2.until).collect();
            vec![
                text(cm, |r| Some(&r.2.patient_id)),
                text(cm, |r| Some(&r.2.member_type)),
                text(cm, |r| Some(&r.2.member_id)),
                (Box::new(until), "timestamptz"),
                groups(cm, |_| 0),
            ]
        }),
    );
    let n = flat(owners, |r| &r.numbers);
    insert(
        "search_number",
        "param, value",
        "c2, c3::numeric",
        with_owner(&n, |n| {
            vec![
                text(n, |r| Some(&r.2.param)),
                text(n, |r| Some(&r.2.value)),
                groups(n, |r| r.2.grp),
            ]
        }),
    );
    let qt = flat(owners, |r| &r.quantities);
    insert(
        "search_quantity",
        "param, value, system, code, unit",
        "c2, c3::numeric, c4, c5, c6",
        with_owner(&qt, |qt| {
            vec![
                text(qt, |r| Some(&r.2.param)),
                text(qt, |r| Some(&r.2.value)),
                text(qt, |r| r.2.system.as_deref()),
                text(qt, |r| r.2.code.as_deref()),
                text(qt, |r| r.2.unit.as_deref()),
                groups(qt, |r| r.2.grp),
            ]
        }),
    );
    let u = flat(owners, |r| &r.uris);
    insert(
        "search_uri",
        "param, uri",
        "c2, c3",
        with_owner(&u, |u| {
            vec![
                text(u, |r| Some(&r.2.param)),
                text(u, |r| Some(&r.2.uri)),
                groups(u, |r| r.2.grp),
            ]
        }),
    );
    ctes
}
