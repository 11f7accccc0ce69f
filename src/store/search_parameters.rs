//! What the lifecycle of definitions (SearchParameters, profiles) reads and
//! rewrites: the stored definitions and their fingerprint, and the current
//! resources reindexed in batches.

use deadpool_postgres::{GenericClient, Transaction};
use serde_json::Value;

use crate::error::FhirResult;
use crate::search::index::IndexRows;

use super::index_rows;

/// A batch of current (not deleted) resources in (type, id) order after `after`,
/// of the given types (all when `None`), locked for the caller's transaction so
/// that no write slips between reading a version and rewriting its index rows.
pub async fn current_batch(
    tx: &Transaction<'_>,
    types: Option<&[String]>,
    after: Option<&(String, String)>,
    limit: usize,
) -> FhirResult<Vec<(String, String, Value)>> {
    let (t, id) = after.cloned().unwrap_or_default();
    let stmt = tx
        .prepare_cached(
            "SELECT r.res_type, r.res_id, v.resource FROM resource r
             JOIN resource_version v USING (res_type, res_id, version_id)
             WHERE NOT r.deleted AND (r.res_type, r.res_id) > ($1, $2)
               AND ($4::text[] IS NULL OR r.res_type = ANY($4))
             ORDER BY r.res_type, r.res_id LIMIT $3 FOR UPDATE OF r",
        )
        .await?;
    let types: Option<Vec<String>> = types.map(<[String]>::to_vec);
    let rows = tx.query(&stmt, &[&t, &id, &(limit as i64), &types]).await?;
    Ok(rows
        .iter()
        .map(|row| {
            let body: tokio_postgres::types::Json<Value> = row.get(2);
            (row.get(0), row.get(1), body.0)
        })
        .collect())
}

/// The current resources of `types` (definitions the server puts in force:
/// SearchParameters, or StructureDefinitions, ValueSets and CodeSystems), and a
/// fingerprint of their state that changes with any write of one (to notice
/// changes made by another instance).
pub async fn definitions(
    client: &impl GenericClient,
    types: &[&str],
) -> FhirResult<(Vec<Value>, String)> {
    let stmt = client
        .prepare_cached(
            "SELECT v.resource FROM resource r
             JOIN resource_version v USING (res_type, res_id, version_id)
             WHERE r.res_type = ANY($1) AND NOT r.deleted ORDER BY r.res_type, r.res_id",
        )
        .await?;
    let rows = client.query(&stmt, &[&types]).await?;
    let resources = rows
        .iter()
        .map(|row| row.get::<_, tokio_postgres::types::Json<Value>>(0).0)
        .collect();
    Ok((resources, definitions_fingerprint(client, types).await?))
}

pub async fn definitions_fingerprint(
    client: &impl GenericClient,
    types: &[&str],
) -> FhirResult<String> {
    let stmt = client
        .prepare_cached(
            "SELECT count(*)::text || '/' || coalesce(max(last_updated)::text, '') FROM resource
             WHERE res_type = ANY($1)",
        )
        .await?;
    Ok(client.query_one(&stmt, &[&types]).await?.get(0))
}

/// Replaces the index rows of a current resource (reindexing).
pub async fn reindex_resource(
    tx: &Transaction<'_>,
    res_type: &str,
    res_id: &str,
    rows: &IndexRows,
) -> FhirResult<()> {
    index_rows::replace(tx, res_type, res_id, rows).await
}
