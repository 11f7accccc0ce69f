//! `POST [base]` with a `transaction` or `batch` Bundle (R4 http.html#transaction).
//!
//! A transaction runs every entry in one database transaction, in the spec's order
//! (DELETE, POST, PUT, GET), after giving each created resource its id so that
//! references to the entries' `fullUrl`s (`urn:uuid:…`) and conditional references
//! (`Patient?identifier=…`) can be rewritten first; any failure rolls everything
//! back and names the entry. A batch runs each entry on its own.

use std::collections::HashMap;

use deadpool_postgres::{Pool, Transaction};
use serde_json::{json, Value};

use base64::Engine as _;

use super::{
    conditional_match, execute, search_parameter_changed, write, Matches, PatchTarget, Rules,
    WriteRequest, Written,
};
use crate::error::{operation_outcome, FhirError, FhirResult, Issue};
use crate::fhir::{self, datetime, definitions::R4};
use crate::search;
use crate::store;

/// What an entry asks for, from `request.method` and `request.url`.
#[derive(Debug)]
enum Target {
    /// `Type`
    Type(String),
    /// `Type/id`
    Instance(String, String),
    /// `Type?criteria`
    Criteria(String, Vec<(String, String)>),
}

#[derive(Debug)]
struct Entry {
    index: usize,
    method: String,
    target: Target,
    full_url: Option<String>,
    resource: Option<Value>,
    if_none_exist: Option<Vec<(String, String)>>,
    if_match: Option<i64>,
}

fn parse_target(url: &str) -> Option<Target> {
    let url = url.trim_start_matches('/');
    if let Some((path, query)) = url.split_once('?') {
        let t = path.trim_end_matches('/');
        return R4
            .is_resource_type(t)
            .then(|| Target::Criteria(t.to_owned(), search::parse_form(query)));
    }
    match url.split('/').collect::<Vec<_>>().as_slice() {
        [t] if R4.is_resource_type(t) => Some(Target::Type((*t).to_owned())),
        [t, id] if R4.is_resource_type(t) && fhir::is_valid_id(id) => {
            Some(Target::Instance((*t).to_owned(), (*id).to_owned()))
        }
        _ => None,
    }
}

/// Reads the entries of a validated Bundle, moving its resources out (a Bundle of
/// 10,000 entries is not held twice).
fn entries(mut bundle: Value) -> FhirResult<Vec<Entry>> {
    let items = match bundle.get_mut("entry").map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, mut e)| {
            let bad = |m: &str| at_entry(index, FhirError::bad_request(m.to_owned()));
            let request = e
                .get("request")
                .ok_or_else(|| bad("an entry needs a request"))?;
            let method = request["method"].as_str().unwrap_or_default().to_owned();
            let url = request["url"].as_str().unwrap_or_default();
            let target = parse_target(url).ok_or_else(|| {
                bad(&format!(
                    "request.url '{url}' is not Type, Type/id or Type?criteria"
                ))
            })?;
            let if_match = match request["ifMatch"].as_str() {
                Some(v) => Some(
                    fhir::parse_version_etag(v)
                        .ok_or_else(|| bad(&format!("ifMatch '{v}' is not a version ETag")))?,
                ),
                None => None,
            };
            let if_none_exist = request["ifNoneExist"].as_str().map(search::parse_criteria);
            Ok(Entry {
                index,
                method,
                target,
                full_url: e["fullUrl"].as_str().map(str::to_owned),
                resource: e.get_mut("resource").map(Value::take),
                if_none_exist,
                if_match,
            })
        })
        .collect()
}

/// Names the failing entry in the error, keeping its status.
fn at_entry(index: usize, err: FhirError) -> FhirError {
    let prefix = |m: &str| format!("Bundle.entry[{index}]: {m}");
    match err {
        FhirError::BadRequest(issues) | FhirError::Unprocessable(issues) => FhirError::BadRequest(
            issues
                .into_iter()
                .map(|i| {
                    let expression = i
                        .expression
                        .map(|e| {
                            format!(
                                "Bundle.entry[{index}].resource{}",
                                e.find('.').map_or("", |p| &e[p..])
                            )
                        })
                        .unwrap_or_else(|| format!("Bundle.entry[{index}]"));
                    Issue::new(i.code, prefix(&i.message)).at(expression)
                })
                .collect(),
        ),
        FhirError::NotFound(m) => FhirError::NotFound(prefix(&m)),
        FhirError::Gone(m) => FhirError::Gone(prefix(&m)),
        FhirError::MethodNotAllowed(m) => FhirError::MethodNotAllowed(prefix(&m)),
        FhirError::Conflict(m) => FhirError::Conflict(prefix(&m)),
        FhirError::PreconditionFailed(m) => FhirError::PreconditionFailed(prefix(&m)),
        other => other,
    }
}

/// The order of the spec: DELETE, POST, PUT (and PATCH), GET.
fn rank(method: &str) -> u8 {
    match method {
        "DELETE" => 0,
        "POST" => 1,
        "PUT" | "PATCH" => 2,
        _ => 3,
    }
}

/// Replaces every `Reference.reference` found in `ids` (fullUrl -> `Type/id`).
fn rewrite_references(value: &mut Value, ids: &HashMap<String, String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(reference) if key == "reference" => {
                        if let Some(local) = ids.get(reference.as_str()) {
                            *reference = local.clone();
                        }
                    }
                    other => rewrite_references(other, ids),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_references(v, ids)),
        _ => {}
    }
}

/// Every conditional reference (`Type?criteria`) in a resource.
fn conditional_references(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match child {
                    Value::String(r) if key == "reference" && r.contains('?') => {
                        out.push(r.clone())
                    }
                    other => conditional_references(other, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| conditional_references(v, out)),
        _ => {}
    }
}

/// The response entry of a write.
fn write_response(written: Option<&Written>, created_status: &str) -> Value {
    let Some(w) = written else {
        return json!({"response": {"status": "204 No Content"}});
    };
    let status = match (&w.json, w.created) {
        (None, _) => "204 No Content",
        (Some(_), true) => created_status,
        (Some(_), false) => "200 OK",
    };
    let mut response = json!({"status": status});
    if w.version_id > 0 {
        response["etag"] = json!(format!("W/\"{}\"", w.version_id));
        response["lastModified"] = json!(datetime::format_instant(w.last_updated));
        if w.json.is_some() {
            response["location"] = json!(format!(
                "{}/{}/_history/{}",
                w.res_type, w.res_id, w.version_id
            ));
        }
    }
    json!({"response": response})
}

/// Runs a GET entry (read or search) inside the transaction.
async fn get_entry(tx: &Transaction<'_>, entry: &Entry) -> FhirResult<Value> {
    match &entry.target {
        Target::Instance(t, id) => {
            let version = store::read_latest(tx, t, id)
                .await?
                .filter(|v| !v.is_deleted())
                .ok_or_else(|| FhirError::NotFound(format!("{t}/{id} is not known")))?;
            let resource: Value = serde_json::from_str(version.json.as_deref().unwrap_or("{}"))
                .map_err(|e| FhirError::Internal(e.to_string()))?;
            Ok(json!({"resource": resource, "response": {
                "status": "200 OK",
                "etag": format!("W/\"{}\"", version.version_id),
                "lastModified": datetime::format_instant(version.last_updated),
            }}))
        }
        _ => Err(FhirError::MethodNotAllowed(
            "only reads (GET Type/id) are supported inside a transaction".to_owned(),
        )),
    }
}

/// The write an entry asks for; `assigned` is the id given to a POST beforehand.
fn write_request(entry: &mut Entry, assigned: Option<String>) -> FhirResult<WriteRequest> {
    let method = entry.method.clone();
    let mut taken = entry.resource.take();
    let mut resource = || {
        taken
            .take()
            .ok_or_else(|| FhirError::bad_request(format!("a {method} entry needs a resource")))
    };
    Ok(match (entry.method.as_str(), &entry.target) {
        ("POST", Target::Type(t)) => WriteRequest::Create {
            res_type: t.clone(),
            resource: resource()?,
            if_none_exist: entry.if_none_exist.clone(),
            id: assigned,
        },
        ("PUT", Target::Instance(t, id)) => WriteRequest::Update {
            res_type: t.clone(),
            res_id: id.clone(),
            resource: resource()?,
            if_match: entry.if_match,
        },
        ("PUT", Target::Criteria(t, criteria)) => WriteRequest::ConditionalUpdate {
            res_type: t.clone(),
            criteria: criteria.clone(),
            resource: resource()?,
            if_match: entry.if_match,
        },
        ("PATCH", Target::Instance(t, id)) => WriteRequest::Patch {
            res_type: t.clone(),
            target: PatchTarget::Id(id.clone()),
            document: patch_document(resource()?)?,
            if_match: entry.if_match,
        },
        ("PATCH", Target::Criteria(t, criteria)) => WriteRequest::Patch {
            res_type: t.clone(),
            target: PatchTarget::Criteria(criteria.clone()),
            document: patch_document(resource()?)?,
            if_match: entry.if_match,
        },
        ("DELETE", Target::Instance(t, id)) => WriteRequest::Delete {
            res_type: t.clone(),
            res_id: id.clone(),
            if_match: entry.if_match,
        },
        ("DELETE", Target::Criteria(t, criteria)) => WriteRequest::ConditionalDelete {
            res_type: t.clone(),
            criteria: criteria.clone(),
        },
        (method, _) => {
            return Err(FhirError::MethodNotAllowed(format!(
                "{method} on this url is not supported in a Bundle entry"
            )))
        }
    })
}

/// The patch a PATCH entry carries: a FHIRPath Patch `Parameters`, or a JSON Patch
/// document as a `Binary` (`contentType` `application/json-patch+json`, base64 `data`).
fn patch_document(resource: Value) -> FhirResult<Value> {
    if fhir::fhirpath_patch::is_fhirpath_patch(&resource) {
        return Ok(resource);
    }
    let is_json_patch = fhir::resource_type(&resource) == "Binary"
        && resource["contentType"]
            .as_str()
            .is_some_and(|c| c.starts_with("application/json-patch+json"));
    if !is_json_patch {
        return Err(FhirError::bad_request(
            "a PATCH entry holds a FHIRPath Patch Parameters, or a Binary of contentType application/json-patch+json",
        ));
    }
    let data = resource["data"].as_str().unwrap_or_default();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| FhirError::bad_request(format!("the Binary's data is not base64: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| FhirError::bad_request(format!("the JSON Patch document is not JSON: {e}")))
}

/// The id a POST entry will have, decided before anything is written so that the
/// other entries can refer to it: the existing match of `ifNoneExist`, or new.
async fn assign_id(tx: &Transaction<'_>, entry: &Entry) -> FhirResult<Option<String>> {
    let Target::Type(t) = &entry.target else {
        return Ok(None);
    };
    if entry.method != "POST" {
        return Ok(None);
    }
    if let Some(criteria) = &entry.if_none_exist {
        if let Matches::One(id) = conditional_match(tx, t, criteria).await? {
            return Ok(Some(id));
        }
    }
    Ok(Some(uuid::Uuid::new_v4().to_string()))
}

/// Plain creates written by one statement at most (arrays of their rows).
const CREATES_PER_STATEMENT: usize = 500;

/// A POST entry that can be written with others: a server-assigned id, no
/// `ifNoneExist`, a resource of the URL's type, a type whose writes store a
/// version and nothing more. Takes its resource.
fn bulk_create(entry: &mut Entry, assigned: Option<&String>) -> Option<(String, String, Value)> {
    let Target::Type(t) = &entry.target else {
        return None;
    };
    let fits = entry.method == "POST"
        && entry.if_none_exist.is_none()
        && write::creates_in_bulk(t)
        && entry
            .resource
            .as_ref()
            .is_some_and(|r| fhir::resource_type(r) == t);
    let id = assigned.filter(|_| fits)?;
    Some((t.clone(), id.clone(), entry.resource.take()?))
}

/// Writes the waiting creates, one statement, and answers their entries.
async fn write_creates(
    tx: &Transaction<'_>,
    now: chrono::DateTime<chrono::Utc>,
    creates: &mut Vec<(usize, String, String, Value)>,
    responses: &mut [Value],
    facts: &mut Vec<super::Fact>,
) -> FhirResult<()> {
    let Some(first) = creates.first().map(|c| c.0) else {
        return Ok(());
    };
    let indexes: Vec<usize> = creates.iter().map(|c| c.0).collect();
    let batch = creates.drain(..).map(|(_, t, id, r)| (t, id, r)).collect();
    let written = write::apply_creates(tx, now, batch, facts)
        .await
        .map_err(|e| at_entry(first, e))?;
    for (i, w) in indexes.into_iter().zip(&written) {
        responses[i] = write_response(Some(w), "201 Created");
    }
    Ok(())
}

/// Runs a transaction Bundle; the response Bundle, or the first entry's error.
pub async fn transaction(pool: &Pool, rules: &Rules, bundle: Value) -> FhirResult<Value> {
    let mut entries = entries(bundle)?;
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // 1. Ids of what will be created, and the map from fullUrls to local references.
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut assigned: HashMap<usize, String> = HashMap::new();
    for entry in &entries {
        let id = assign_id(&tx, entry)
            .await
            .map_err(|e| at_entry(entry.index, e))?;
        let local = match (&entry.target, &id) {
            (Target::Type(t), Some(id)) => Some(format!("{t}/{id}")),
            (Target::Instance(t, id), _) => Some(format!("{t}/{id}")),
            _ => None,
        };
        if let Some(id) = id {
            assigned.insert(entry.index, id);
        }
        if let (Some(full_url), Some(local)) = (&entry.full_url, local) {
            ids.insert(full_url.clone(), local);
        }
    }
    // 2. Conditional references, resolved once each, then every reference rewritten.
    for entry in &entries {
        let mut found = Vec::new();
        if let Some(resource) = &entry.resource {
            conditional_references(resource, &mut found);
        }
        for reference in found {
            if ids.contains_key(&reference) {
                continue;
            }
            let Some(Target::Criteria(t, criteria)) = parse_target(&reference) else {
                continue;
            };
            match conditional_match(&tx, &t, &criteria)
                .await
                .map_err(|e| at_entry(entry.index, e))?
            {
                Matches::One(id) => {
                    ids.insert(reference, format!("{t}/{id}"));
                }
                Matches::None => {
                    return Err(at_entry(
                        entry.index,
                        FhirError::PreconditionFailed(format!(
                            "conditional reference '{reference}' matches nothing"
                        )),
                    ))
                }
            }
        }
    }
    for entry in &mut entries {
        if let Some(resource) = &mut entry.resource {
            rewrite_references(resource, &ids);
            // A created resource's id is the server's, whatever the body says.
            if entry.method == "POST" {
                if let Some(obj) = resource.as_object_mut() {
                    obj.shift_remove("id");
                }
            }
        }
    }
    // 3. The entries, in the spec's order; responses in the Bundle's order.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|i| rank(&entries[*i].method));
    let mut responses: Vec<Value> = vec![Value::Null; entries.len()];
    let now = store::clock(&tx).await?;
    let mut changed = Vec::new();
    let mut facts = Vec::new();
    // Plain creates waiting to be written together (entry index, type, id, resource).
    let mut creates: Vec<(usize, String, String, Value)> = Vec::new();
    for i in order {
        let entry = &mut entries[i];
        if let Some(create) = bulk_create(entry, assigned.get(&i)) {
            creates.push((i, create.0, create.1, create.2));
            if creates.len() == CREATES_PER_STATEMENT {
                write_creates(&tx, now, &mut creates, &mut responses, &mut facts).await?;
            }
            continue;
        }
        // Anything else may read what the creates wrote: they go first.
        write_creates(&tx, now, &mut creates, &mut responses, &mut facts).await?;
        let response = if entry.method == "GET" {
            get_entry(&tx, entry).await.map_err(|e| at_entry(i, e))?
        } else {
            let request =
                write_request(entry, assigned.get(&i).cloned()).map_err(|e| at_entry(i, e))?;
            let written = execute(&tx, rules, now, request, &mut facts)
                .await
                .map_err(|e| at_entry(i, e))?;
            let response = write_response(written.as_ref(), "201 Created");
            // Only SearchParameters need their version after the commit.
            changed.extend(written.filter(|w| w.res_type == "SearchParameter"));
            response
        };
        responses[i] = response;
    }
    write_creates(&tx, now, &mut creates, &mut responses, &mut facts).await?;
    super::record_events(&tx, &facts).await?;
    tx.commit().await?;
    for w in &changed {
        search_parameter_changed(pool, w).await;
    }
    Ok(response_bundle("transaction-response", responses))
}

/// Runs a batch Bundle: each entry on its own; failures are answered per entry.
pub async fn batch(pool: &Pool, rules: &Rules, bundle: Value) -> FhirResult<Value> {
    let mut entries = entries(bundle)?;
    let mut responses = Vec::with_capacity(entries.len());
    for entry in &mut entries {
        let outcome = match entry.method.as_str() {
            "GET" => {
                let mut client = pool.get().await?;
                let tx = client.transaction().await?;
                get_entry(&tx, entry).await
            }
            _ => match write_request(entry, None) {
                Ok(request) => super::write(pool, rules, request)
                    .await
                    .map(|w| write_response(w.as_ref(), "201 Created")),
                Err(e) => Err(e),
            },
        };
        responses.push(outcome.unwrap_or_else(|e| {
            json!({"response": {
                "status": e.status().to_string(),
                "outcome": operation_outcome("error", &[Issue::new("processing", e.to_string())]),
            }})
        }));
    }
    Ok(response_bundle("batch-response", responses))
}

fn response_bundle(kind: &str, entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": kind,
        "entry": entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_references() {
        assert!(matches!(parse_target("Patient"), Some(Target::Type(t)) if t == "Patient"));
        assert!(matches!(parse_target("Patient/p1"), Some(Target::Instance(_, id)) if id == "p1"));
        assert!(
            matches!(parse_target("Patient?identifier=a%7Cb"), Some(Target::Criteria(_, c)) if c[0].1 == "a|b")
        );
        assert!(parse_target("Nope/1").is_none());
        let mut r = json!({"subject":{"reference":"urn:uuid:1"},"x":[{"reference":"urn:uuid:2"}],"y":{"reference":"Patient/3"}});
        let ids = HashMap::from([
            ("urn:uuid:1".to_owned(), "Patient/a".to_owned()),
            ("urn:uuid:2".to_owned(), "Practitioner/b".to_owned()),
        ]);
        rewrite_references(&mut r, &ids);
        assert_eq!(r["subject"]["reference"], "Patient/a");
        assert_eq!(r["x"][0]["reference"], "Practitioner/b");
        assert_eq!(r["y"]["reference"], "Patient/3");
        let mut found = Vec::new();
        conditional_references(
            &json!({"a":{"reference":"Patient?identifier=x"}}),
            &mut found,
        );
        assert_eq!(found, ["Patient?identifier=x"]);
        assert!(
            rank("DELETE") < rank("POST")
                && rank("POST") < rank("PUT")
                && rank("PUT") < rank("GET")
        );
    }
}
