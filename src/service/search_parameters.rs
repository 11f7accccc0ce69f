//! The SearchParameter lifecycle: the table in force loaded from the database,
//! changes put in force here and noticed from other instances, subscriptions
//! their change breaks put in `error`, resources reindexed.

use std::sync::Arc;

use deadpool_postgres::Pool;
use serde_json::Value;

use crate::error::FhirResult;
use crate::search;
use crate::search::params::ParamTable;
use crate::store;

use super::{subscription_status, Catalog, Rules, Written};

/// Rewrites the index rows of every current resource (of `types`, or all) from
/// the parameter table in force, in batches of `batch` per transaction; returns how
/// many were indexed. Run after the definitions change (`passerelle reindex`, or
/// by itself after a SearchParameter is written).
pub async fn reindex(
    pool: &Pool,
    params: &ParamTable,
    types: Option<&[String]>,
    batch: usize,
) -> FhirResult<usize> {
    let mut client = pool.get().await?;
    let mut after: Option<(String, String)> = None;
    let mut done = 0;
    loop {
        let tx = client.transaction().await?;
        let resources = store::current_batch(&tx, types, after.as_ref(), batch).await?;
        let Some((t, id, _)) = resources.last() else {
            return Ok(done);
        };
        after = Some((t.clone(), id.clone()));
        for (res_type, res_id, resource) in &resources {
            let mut rows = search::index::extract(params, res_type, resource);
            rows.circle = crate::coordination::access::circle_rows(res_type, resource);
            store::reindex_resource(&tx, res_type, res_id, &rows).await?;
        }
        store::commit(tx).await?;
        done += resources.len();
        tracing::info!(done, "reindexed");
    }
}

/// Puts the SearchParameter resources of the database in force (at start, and when
/// they change); returns the fingerprint of what was loaded.
pub async fn load_search_parameters(pool: &Pool, catalog: &Catalog) -> FhirResult<String> {
    let client = pool.get().await?;
    let (resources, fingerprint) = store::search_parameters(&client).await?;
    for (name, why) in catalog.params.install(&resources) {
        tracing::warn!(parameter = %name, reason = %why, "SearchParameter not used");
    }
    Ok(fingerprint)
}

/// After a SearchParameter was written here: put it in force, put in `error` the
/// subscriptions whose criteria it broke, then index the existing resources of
/// its base types in the background.
pub(super) async fn search_parameter_changed(pool: &Pool, rules: &Rules, written: &Written) {
    if written.res_type != "SearchParameter" {
        return;
    }
    if let Err(e) = load_search_parameters(pool, &rules.catalog).await {
        tracing::error!(error = %e, "reloading search parameters");
        return;
    }
    // Boxed: it writes Subscriptions, through the write path that calls this one.
    if let Err(e) = Box::pin(stop_subscriptions_out_of_force(pool, rules)).await {
        tracing::error!(error = %e, "checking subscriptions after a SearchParameter change");
    }
    let bases: Vec<String> = written
        .json
        .as_deref()
        .and_then(|j| serde_json::from_str::<Value>(j).ok())
        .and_then(|sp| sp["base"].as_array().cloned())
        .into_iter()
        .flatten()
        .filter_map(|b| b.as_str().map(str::to_owned))
        .collect();
    let (pool, catalog) = (pool.clone(), rules.catalog.clone());
    tokio::spawn(async move {
        let types = (!bases.is_empty()).then_some(bases);
        let params = catalog.params.current();
        match reindex(&pool, &params, types.as_deref(), 500).await {
            Ok(n) => tracing::info!(n, "reindexed after a SearchParameter change"),
            Err(e) => tracing::error!(error = %e, "reindexing after a SearchParameter change"),
        }
    });
}

/// Puts in `error` the active subscriptions whose criteria no longer compile (a
/// SearchParameter they use was deleted or changed): visibly failed, rather than
/// silently matching nothing.
async fn stop_subscriptions_out_of_force(pool: &Pool, rules: &Rules) -> FhirResult<()> {
    let active = store::subscriptions::active(&pool.get().await?).await?;
    let params = rules.catalog.params.current();
    let definitions = rules.catalog.definitions(&params);
    for s in active {
        let compiled =
            rules
                .catalog
                .compiled
                .compile(&definitions, s.topic.as_deref(), &s.criteria);
        if let Err(e) = compiled {
            let reason = format!("the subscription's criteria no longer apply: {e}");
            tracing::warn!(sub_id = %s.sub_id, %reason, "subscription put in error");
            subscription_status(pool, rules, &s.sub_id, "error", Some(&reason)).await?;
        }
    }
    Ok(())
}

/// Watches for SearchParameter changes made by other instances and puts them in
/// force; runs until the process ends.
pub async fn watch_search_parameters(
    pool: Pool,
    catalog: Arc<Catalog>,
    mut fingerprint: String,
    every: std::time::Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let Ok(client) = pool.get().await else {
            continue;
        };
        let Ok(now) = store::search_parameters_fingerprint(&client).await else {
            continue;
        };
        drop(client);
        if now != fingerprint {
            match load_search_parameters(&pool, &catalog).await {
                Ok(f) => fingerprint = f,
                Err(e) => tracing::error!(error = %e, "reloading search parameters"),
            }
        }
    }
}
