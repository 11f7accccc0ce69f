//! The lifecycle of the definitions written to the server: SearchParameters
//! (the table in force loaded from the database, changes put in force here and
//! noticed from other instances, subscriptions their change breaks put in
//! `error`, resources reindexed) and the StructureDefinitions, ValueSets and
//! CodeSystems the profile validator uses (put in force the same way).

use std::sync::Arc;

use deadpool_postgres::Pool;
use serde_json::Value;

use crate::error::FhirResult;
use crate::search;
use crate::search::params::ParamTable;
use crate::store;

use super::{subscription_status, Catalog, Rules, Written};
use crate::profile::ProfileRules;

/// Rewrites the index rows of every current resource (of `types`, or all) from
/// the parameter table in force, in batches of `batch` per transaction; returns how
/// many were indexed. Run after the definitions change (`passerelle reindex`, or
/// as a job after a SearchParameter is written).
pub async fn reindex(
    pool: &Pool,
    params: &ParamTable,
    types: Option<&[String]>,
    batch: usize,
) -> FhirResult<usize> {
    let mut done = 0;
    let mut after = None;
    while let Some(last) = reindex_batch(pool, params, types, after.as_ref(), batch).await? {
        done += last.1;
        after = Some(last.0);
        tracing::info!(done, "reindexed");
    }
    Ok(done)
}

/// Reindexes the batch after `after`, in one transaction: the last resource
/// reindexed and how many were, or `None` when none was left.
async fn reindex_batch(
    pool: &Pool,
    params: &ParamTable,
    types: Option<&[String]>,
    after: Option<&(String, String)>,
    batch: usize,
) -> FhirResult<Option<((String, String), usize)>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let resources = store::current_batch(&tx, types, after, batch).await?;
    let Some((t, id, _)) = resources.last() else {
        return Ok(None);
    };
    let last = (t.clone(), id.clone());
    for (res_type, res_id, resource) in &resources {
        let mut rows = search::index::extract(params, res_type, resource);
        rows.circle = crate::coordination::access::circle_rows(res_type, resource);
        store::reindex_resource(&tx, res_type, res_id, &rows).await?;
    }
    store::commit(tx).await?;
    Ok(Some((last, resources.len())))
}

/// Resources reindexed per transaction by a reindex job.
const REINDEX_BATCH: usize = 500;

/// Runs a leased reindex job (`{"types": [...]}`) from its checkpoint (the last
/// resource reindexed, `{"after": [type, id]}`), recorded with every batch, with
/// the SearchParameters of the database (this instance may not have seen the
/// change yet).
pub(super) async fn reindex_job(
    pool: &Pool,
    rules: &Rules,
    lease: &super::jobs::Lease<'_>,
    job: &crate::store::jobs::LeasedJob,
) -> FhirResult<super::jobs::Ended> {
    load_search_parameters(pool, &rules.catalog).await?;
    let params = rules.catalog.params.current();
    let types: Option<Vec<String>> = job.spec["types"].as_array().map(|a| {
        a.iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect()
    });
    let mut after = job.checkpoint.as_ref().and_then(|c| {
        Some((
            c["after"][0].as_str()?.to_owned(),
            c["after"][1].as_str()?.to_owned(),
        ))
    });
    let mut done = 0;
    while let Some((last, n)) = reindex_batch(
        pool,
        &params,
        types.as_deref(),
        after.as_ref(),
        REINDEX_BATCH,
    )
    .await?
    {
        done += n;
        let checkpoint = serde_json::json!({"after": [last.0, last.1]});
        if !lease.renew(&pool.get().await?, Some(&checkpoint)).await? {
            return Ok(super::jobs::Ended::Stopped);
        }
        after = Some(last);
    }
    tracing::info!(done, "reindexed after a SearchParameter change");
    Ok(super::jobs::Ended::Done)
}

/// Puts the SearchParameter resources of the database in force (at start, and when
/// they change); returns the fingerprint of what was loaded.
pub async fn load_search_parameters(pool: &Pool, catalog: &Catalog) -> FhirResult<String> {
    let client = pool.get().await?;
    let (resources, fingerprint) = store::definitions(&client, &["SearchParameter"]).await?;
    for (name, why) in catalog.params.install(&resources) {
        tracing::warn!(parameter = %name, reason = %why, "SearchParameter not used");
    }
    Ok(fingerprint)
}

/// The resources the profile validator takes from the database.
pub const PROFILE_TYPES: &[&str] = &["StructureDefinition", "ValueSet", "CodeSystem"];

/// Puts the packages' definitions and the StructureDefinitions, ValueSets and
/// CodeSystems of the database in force for the profile validator (at start,
/// and when they change); returns the fingerprint of what was loaded.
pub async fn load_profiles(pool: &Pool, profiles: &ProfileRules) -> FhirResult<String> {
    let client = pool.get().await?;
    let (resources, fingerprint) = store::definitions(&client, PROFILE_TYPES).await?;
    drop(client);
    profiles.install(resources);
    Ok(fingerprint)
}

/// After a definition was written here (a commit): a SearchParameter is put in
/// force, the subscriptions whose criteria it broke put in `error`, and the
/// indexing of the existing resources of its base types queued (a job any
/// instance runs); a StructureDefinition, ValueSet or CodeSystem is put in
/// force for the profile validator.
pub(super) async fn definitions_changed(pool: &Pool, rules: &Rules, written: &Written) {
    if PROFILE_TYPES.contains(&written.res_type.as_str()) {
        // The version written, put in force alone (reading every stored
        // definition again at each write would make loading a package's worth of
        // them quadratic); a delete, or a write without its text, reads them all.
        match written.json.as_deref().map(serde_json::from_str::<Value>) {
            Some(Ok(resource)) => {
                rules
                    .profiles
                    .apply(&written.res_type, &written.res_id, Some(resource));
            }
            _ => {
                if let Err(e) = load_profiles(pool, &rules.profiles).await {
                    tracing::error!(error = %e, "reloading profiles");
                }
            }
        }
        return;
    }
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
    let spec = serde_json::json!({"types": (!bases.is_empty()).then_some(bases)});
    let job_id = uuid::Uuid::new_v4().to_string();
    if let Err(e) = super::jobs::queue(pool, &job_id, "reindex", &spec).await {
        tracing::error!(error = %e, "queueing the reindex after a SearchParameter change");
    }
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

/// What a watcher compares to notice definitions written through other
/// instances: the fingerprints of the SearchParameters and of the profiles'
/// resources last loaded.
pub struct Fingerprints {
    pub search_parameters: String,
    pub profiles: String,
}

/// Watches for SearchParameter and profile changes made by other instances
/// and puts them in force; runs until the process ends.
pub async fn watch_definitions(
    pool: Pool,
    rules: Arc<Rules>,
    mut seen: Fingerprints,
    every: std::time::Duration,
) {
    loop {
        tokio::time::sleep(every).await;
        let Ok(client) = pool.get().await else {
            continue;
        };
        let search_parameters = store::definitions_fingerprint(&client, &["SearchParameter"]).await;
        let profiles = store::definitions_fingerprint(&client, PROFILE_TYPES).await;
        drop(client);
        if search_parameters
            .as_ref()
            .is_ok_and(|f| *f != seen.search_parameters)
        {
            match load_search_parameters(&pool, &rules.catalog).await {
                Ok(f) => seen.search_parameters = f,
                Err(e) => tracing::error!(error = %e, "reloading search parameters"),
            }
        }
        if profiles.as_ref().is_ok_and(|f| *f != seen.profiles) {
            match load_profiles(&pool, &rules.profiles).await {
                Ok(f) => seen.profiles = f,
                Err(e) => tracing::error!(error = %e, "reloading profiles"),
            }
        }
    }
}
