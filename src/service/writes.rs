//! The write interactions (create, update, patch, delete, their conditional
//! forms): each request checked and planned into a change (its criteria resolved
//! in the transaction), then written by the one write path (`write`).

use deadpool_postgres::Pool;
use serde_json::Value;

use crate::auth::Holder;
use crate::error::{FhirError, FhirResult};
use crate::fhir;
use crate::search::compartment::Reach;
use crate::search::params::ParamTable;
use crate::search::{self, Handling};
use crate::store::audit::AuditRow;
use crate::store::{self, StoredVersion};

use super::{definitions_changed, notify, read, Change, ChangeKind, Rules, Written};

/// What a conditional interaction found for its criteria.
pub(super) enum Matches {
    None,
    One(String),
}

/// Runs the search of a conditional interaction inside `tx`; more than one match is
/// a 412, as the spec says. The criteria are locked for the transaction so that two
/// requests with the same criteria cannot both see "no match" and both create.
/// `reach`: a client held to records matches among those alone (what it does
/// not see does not exist for it).
pub(super) async fn conditional_match(
    tx: &deadpool_postgres::Transaction<'_>,
    params: &ParamTable,
    res_type: &str,
    criteria: &[(String, String)],
    reach: Option<Reach<'_>>,
) -> FhirResult<Matches> {
    if criteria.is_empty() {
        return Err(FhirError::bad_request(
            "a conditional interaction needs search criteria",
        ));
    }
    let mut plan = search::parse(params, res_type, criteria, Handling::Strict)?;
    if let Some(reach) = reach {
        search::compartment::hold(params, reach, &mut plan);
    }
    let mut key: Vec<String> = criteria.iter().map(|(k, v)| format!("{k}={v}")).collect();
    key.sort();
    store::lock_key(tx, &format!("{res_type}?{}", key.join("&"))).await?;
    let mut ids = store::matching_ids(tx, &plan, 2).await?;
    match ids.len() {
        0 => Ok(Matches::None),
        1 => Ok(Matches::One(ids.remove(0))),
        _ => Err(FhirError::PreconditionFailed(format!(
            "the criteria match more than one {res_type}"
        ))),
    }
}

fn check_type(res_type: &str, resource: &Value) -> FhirResult<()> {
    let body_type = fhir::resource_type(resource);
    if body_type != res_type {
        return Err(FhirError::bad_request(format!(
            "the body is a {body_type} but the URL is for {res_type}"
        )));
    }
    Ok(())
}

/// A write interaction, as the REST API and transaction entries ask for it.
#[derive(Debug)]
pub enum WriteRequest {
    /// `POST [type]`, with `If-None-Exist` criteria; `id` is set by a transaction
    /// that had to know it before (references to the entry's `fullUrl`).
    Create {
        res_type: String,
        resource: Value,
        if_none_exist: Option<Vec<(String, String)>>,
        id: Option<String>,
    },
    /// `PUT [type]/[id]`: update, or create with the client's id.
    Update {
        res_type: String,
        res_id: String,
        resource: Value,
        if_match: Option<i64>,
    },
    /// `PUT [type]?criteria`: update the one match, or create when none matches.
    ConditionalUpdate {
        res_type: String,
        criteria: Vec<(String, String)>,
        resource: Value,
        if_match: Option<i64>,
        /// The id the server chose for it (a Bundle entry's `fullUrl` stands
        /// for it): its match's, or the one it creates under.
        assigned_id: Option<String>,
    },
    /// `PATCH [type]/[id]` or `PATCH [type]?criteria` with a JSON Patch document.
    Patch {
        res_type: String,
        target: PatchTarget,
        document: Value,
        if_match: Option<i64>,
    },
    /// `DELETE [type]/[id]`.
    Delete {
        res_type: String,
        res_id: String,
        if_match: Option<i64>,
    },
    /// `DELETE [type]?criteria`: deletes the one match; none is not an error.
    ConditionalDelete {
        res_type: String,
        criteria: Vec<(String, String)>,
    },
}

/// The resource a PATCH applies to.
#[derive(Debug)]
pub enum PatchTarget {
    Id(String),
    /// Conditional patch: exactly one match, else 404 or 412.
    Criteria(Vec<(String, String)>),
}

/// The resource after a JSON Patch, checked like any incoming resource.
async fn patched(
    tx: &deadpool_postgres::Transaction<'_>,
    params: &ParamTable,
    res_type: &str,
    target: PatchTarget,
    document: &Value,
    reach: Option<Reach<'_>>,
) -> FhirResult<(String, Value)> {
    let res_id = match target {
        PatchTarget::Id(id) => id,
        PatchTarget::Criteria(criteria) => {
            match conditional_match(tx, params, res_type, &criteria, reach).await? {
                Matches::One(id) => id,
                Matches::None => {
                    return Err(FhirError::NotFound(format!(
                        "no {res_type} matches the criteria"
                    )))
                }
            }
        }
    };
    // Lock first: the version patched is the version replaced.
    store::lock_all(
        tx,
        &[store::LockKey {
            res_type,
            res_id: &res_id,
            claim: false,
        }],
    )
    .await?;
    let result = patched_current(tx, res_type, &res_id, document).await?;
    if fhir::resource_type(&result) != res_type
        || fhir::resource_id(&result) != Some(res_id.as_str())
    {
        return Err(FhirError::Unprocessable(vec![crate::error::Issue::new(
            "processing",
            "a patch may not change the resource's type or id",
        )]));
    }
    // The request was well formed; its result is not a valid resource: 422.
    fhir::check_resource(&result).map_err(|e| match e {
        FhirError::BadRequest(issues) => FhirError::Unprocessable(issues),
        other => other,
    })?;
    Ok((res_id, result))
}

/// The result of `document` (a JSON Patch or a FHIRPath Patch `Parameters`)
/// applied to the current version of `res_type/res_id`, unchecked.
async fn patched_current(
    client: &impl deadpool_postgres::GenericClient,
    res_type: &str,
    res_id: &str,
    document: &Value,
) -> FhirResult<Value> {
    let current = store::read_latest(client, res_type, res_id)
        .await?
        .ok_or_else(|| FhirError::NotFound(format!("{res_type}/{res_id} is not known")))?;
    let json = current
        .json
        .ok_or_else(|| FhirError::Gone(format!("{res_type}/{res_id} was deleted")))?;
    let resource: Value =
        serde_json::from_str(&json).map_err(|e| FhirError::Internal(e.to_string()))?;
    let result = if fhir::fhirpath_patch::is_fhirpath_patch(document) {
        fhir::fhirpath_patch::apply(&resource, document)?
    } else {
        fhir::patch::apply(&resource, document)?
    };
    Ok(result)
}

/// Runs one write interaction in its own transaction: its conditions resolved
/// (`plan`), then the single write path, then the subscriptions' events, all before
/// the commit. `None`: a conditional delete that matched nothing. `access`: who
/// writes (a Subscription's owner); `holder`: whose records it may write, checked
/// in the transaction before the write is planned and once it is
/// (`held::before_write`, `held::check_change`).
pub async fn write(
    pool: &Pool,
    rules: &Rules,
    request: WriteRequest,
    access: &crate::auth::Access,
    holder: &Holder,
    record: Option<WriteRecord<'_>>,
) -> FhirResult<Option<Written>> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let now = store::clock(&tx).await?;
    let mut facts = Vec::new();
    let params = rules.catalog.params.current();
    let held = *holder != Holder::Free;
    if held {
        super::held::before_write(&tx, &params, holder, &request).await?;
    }
    let written = match plan(&tx, &params, request, holder.reach()).await? {
        Planned::Change(change) => {
            if held {
                super::held::check_change(&tx, &params, holder, &change).await?;
            }
            let change = change.written_by(access);
            Some(super::write::apply(&tx, rules, now, change, &mut facts).await?)
        }
        Planned::Answered(written) => written,
    };
    notify::record_events(&tx, &rules.catalog, &facts).await?;
    if let Some(record) = record {
        store_record(&tx, record(written.as_ref())).await?;
    }
    store::commit(tx).await?;
    if let Some(w) = &written {
        definitions_changed(pool, rules, w).await;
    }
    Ok(written)
}

/// The audit record of a write once its result is known, stored in the write's
/// transaction: no change is committed without it, and none waits for a
/// commit of its own.
pub type WriteRecord<'a> = &'a (dyn Fn(Option<&Written>) -> AuditRow + Sync);

/// Stores a write's audit record in its transaction (503 if it cannot be: the
/// transaction is then rolled back).
pub(super) async fn store_record(
    tx: &deadpool_postgres::Transaction<'_>,
    row: AuditRow,
) -> FhirResult<()> {
    let append = tx.prepare_cached(store::audit::APPEND).await?;
    store::audit::append(&**tx, &append, &[row])
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "a write's audit record not stored");
            FhirError::Transient(
                "the access could not be recorded in the audit trail: nothing was changed".into(),
            )
        })
}

/// What a write interaction comes to once its conditions are resolved.
pub enum Planned {
    /// A change for the write path.
    Change(Change),
    /// Nothing to write: the match of a conditional create, or `None` for a
    /// conditional delete that matched nothing.
    Answered(Option<Written>),
}

impl WriteRequest {
    /// Whether planning the write reads the database (conditional matching, the
    /// version a PATCH applies to), and so must see every earlier write.
    pub fn reads_first(&self) -> bool {
        match self {
            WriteRequest::Create { if_none_exist, .. } => if_none_exist.is_some(),
            WriteRequest::Update { .. } | WriteRequest::Delete { .. } => false,
            WriteRequest::ConditionalUpdate { .. }
            | WriteRequest::Patch { .. }
            | WriteRequest::ConditionalDelete { .. } => true,
        }
    }
}

/// The change a write interaction asks for: its checks, its conditions resolved
/// (among the records `reach`es, for a client held to them).
pub async fn plan(
    tx: &deadpool_postgres::Transaction<'_>,
    params: &ParamTable,
    request: WriteRequest,
    reach: Option<Reach<'_>>,
) -> FhirResult<Planned> {
    let change = match request {
        WriteRequest::Create {
            res_type,
            resource,
            if_none_exist,
            id,
        } => {
            check_type(&res_type, &resource)?;
            if let Some(criteria) = if_none_exist {
                if let Matches::One(id) =
                    conditional_match(tx, params, &res_type, &criteria, reach).await?
                {
                    let existing = store::read_latest(tx, &res_type, &id)
                        .await?
                        .ok_or_else(|| FhirError::Internal("matched resource vanished".into()))?;
                    return Ok(Planned::Answered(Some(written_from_stored(existing))));
                }
            }
            Change {
                res_id: id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
                res_type,
                kind: ChangeKind::Create,
                resource: Some(resource),
                if_match: None,
                owner: None,
            }
        }
        WriteRequest::Update {
            res_type,
            res_id,
            resource,
            if_match,
        } => {
            check_type(&res_type, &resource)?;
            match fhir::resource_id(&resource) {
                Some(body_id) if body_id == res_id => {}
                Some(body_id) => {
                    return Err(FhirError::bad_request(format!(
                        "the body's id '{body_id}' differs from the id '{res_id}' in the URL"
                    )))
                }
                None => {
                    return Err(FhirError::bad_request(
                        "an update needs the resource's id in the body, equal to the id in the URL",
                    ))
                }
            }
            Change::update(&res_type, res_id, resource, if_match)
        }
        WriteRequest::ConditionalUpdate {
            res_type,
            criteria,
            resource,
            if_match,
            assigned_id,
        } => {
            check_type(&res_type, &resource)?;
            let body_id = fhir::resource_id(&resource).map(str::to_owned);
            let named = body_id.clone().or_else(|| assigned_id.clone());
            // The body names the id its fullUrl stands for, as the entries that
            // refer to it do (but it is not the client's id: see below).
            let mut resource = resource;
            if let (Some(id), None) = (&assigned_id, &body_id) {
                resource["id"] = Value::from(id.as_str());
            }
            match (
                conditional_match(tx, params, &res_type, &criteria, reach).await?,
                body_id,
            ) {
                (Matches::One(id), _) if named.as_ref().is_some_and(|n| *n != id) => {
                    return Err(FhirError::bad_request(format!(
                        "the body's id differs from the id '{id}' of the matching resource"
                    )))
                }
                (Matches::One(id), _) | (Matches::None, Some(id)) => {
                    Change::update(&res_type, id, resource, if_match)
                }
                // No match and no id: a create under a new id, as R4 has it.
                (Matches::None, None) => {
                    let mut created = Change::create(&res_type, resource);
                    if let Some(id) = assigned_id {
                        created.res_id = id;
                    }
                    created.if_match = if_match;
                    created
                }
            }
        }
        WriteRequest::Patch {
            res_type,
            target,
            document,
            if_match,
        } => {
            let (res_id, resource) =
                patched(tx, params, &res_type, target, &document, reach).await?;
            Change {
                res_type,
                res_id,
                kind: ChangeKind::Patch,
                resource: Some(resource),
                if_match,
                owner: None,
            }
        }
        WriteRequest::Delete {
            res_type,
            res_id,
            if_match,
        } => Change {
            res_type,
            res_id,
            kind: ChangeKind::Delete,
            resource: None,
            if_match,
            owner: None,
        },
        WriteRequest::ConditionalDelete { res_type, criteria } => {
            let Matches::One(res_id) =
                conditional_match(tx, params, &res_type, &criteria, reach).await?
            else {
                return Ok(Planned::Answered(None));
            };
            Change {
                res_type,
                res_id,
                kind: ChangeKind::Delete,
                resource: None,
                if_match: None,
                owner: None,
            }
        }
    };
    Ok(Planned::Change(change))
}

fn written_from_stored(v: StoredVersion) -> Written {
    Written {
        created: false,
        res_type: v.res_type,
        res_id: v.res_id,
        version_id: v.version_id,
        last_updated: v.last_updated,
        json: v.json,
    }
}

/// Moves an active subscription to `status` (`error` with the reason when delivery
/// gave up or its criteria no longer apply, `off` when it has ended): a new version through the write path, which
/// stops its matching. A concurrent change by the client, or by another
/// instance, wins (the `If-Match` fails and nothing is written).
pub async fn subscription_status(
    pool: &Pool,
    rules: &Rules,
    sub_id: &str,
    status: &str,
    error: Option<&str>,
) -> FhirResult<()> {
    let current = read(&pool.get().await?, "Subscription", sub_id).await?;
    let json = current.json.as_deref().unwrap_or("{}");
    let mut resource: Value =
        serde_json::from_str(json).map_err(|e| FhirError::Internal(e.to_string()))?;
    if resource["status"] != "active" {
        return Ok(());
    }
    resource["status"] = Value::from(status);
    if let Some(error) = error {
        resource["error"] = Value::from(error);
    }
    let request = WriteRequest::Update {
        res_type: "Subscription".to_owned(),
        res_id: sub_id.to_owned(),
        resource,
        if_match: Some(current.version_id),
    };
    // The server's own write: the subscription keeps its owner.
    match write(
        pool,
        rules,
        request,
        &crate::auth::Access::Open,
        &Holder::Free,
        None,
    )
    .await
    {
        Ok(_) | Err(FhirError::PreconditionFailed(_)) => Ok(()),
        Err(e) => Err(e),
    }
}
