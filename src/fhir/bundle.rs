//! Transaction and batch Bundles read one entry at a time (R4 http.html#transaction).
//!
//! A 10,000-entry Bundle parsed into one JSON tree takes about twenty times its size
//! in memory. Here the body is scanned once for the byte range of each entry; an
//! entry's request is read on its own ([`RawBundle::head`]), and its resource is
//! parsed and validated only when it is about to be written ([`RawBundle::resource`]),
//! then dropped. Memory is the body, one small head per entry, and the entries being
//! written. Pure: no I/O.

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{definitions::R4, is_valid_id, parse_version_etag, resource_type};
use crate::error::{FhirError, FhirResult, Issue};

/// What `POST [base]` processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Transaction,
    Batch,
}

impl Kind {
    fn code(self) -> &'static str {
        match self {
            Kind::Transaction => "transaction",
            Kind::Batch => "batch",
        }
    }
}

/// A Bundle whose members are checked and whose entries are still text.
pub struct RawBundle<'a> {
    pub kind: Kind,
    entries: Vec<&'a RawValue>,
    /// The server's base URL, which an absolute `request.url` may start with.
    base: String,
}

/// What an entry asks for, from `request.method` and `request.url`.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// `Type`
    Type(String),
    /// `Type/id`
    Instance(String, String),
    /// `Type?criteria`
    Criteria(String, Vec<(String, String)>),
    /// `Type/id/_history/vid` (a vread)
    Version(String, String, String),
}

impl Target {
    pub fn res_type(&self) -> &str {
        match self {
            Target::Type(t)
            | Target::Instance(t, _)
            | Target::Criteria(t, _)
            | Target::Version(t, _, _) => t,
        }
    }
}

/// An entry without its resource: enough to give ids, order the entries and
/// resolve references before any resource is parsed.
#[derive(Debug)]
pub struct Head {
    pub index: usize,
    pub method: String,
    pub target: Target,
    pub full_url: Option<String>,
    /// The conditional references (`Type?criteria`) inside the resource.
    pub conditional_references: Vec<String>,
    pub if_none_exist: Option<Vec<(String, String)>>,
    pub if_match: Option<i64>,
    /// `ifNoneMatch` and `ifModifiedSince` of a GET entry (a conditional read).
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct HeadJson {
    #[serde(rename = "fullUrl")]
    full_url: Option<String>,
    request: Option<RequestJson>,
    resource: Option<ResourceScan>,
}

#[derive(Deserialize)]
struct RequestJson {
    method: Option<String>,
    url: Option<String>,
    #[serde(rename = "ifNoneExist")]
    if_none_exist: Option<String>,
    #[serde(rename = "ifMatch")]
    if_match: Option<String>,
    #[serde(rename = "ifNoneMatch")]
    if_none_match: Option<String>,
    #[serde(rename = "ifModifiedSince")]
    if_modified_since: Option<String>,
}

/// An entry's resource scanned, not built: its conditional references.
#[derive(Default)]
struct ResourceScan {
    conditional_references: Vec<String>,
}

impl<'de> Deserialize<'de> for ResourceScan {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut scan = ResourceScan::default();
        deserializer.deserialize_any(ReferenceScan {
            found: &mut scan.conditional_references,
            in_reference: false,
        })?;
        Ok(scan)
    }
}

/// Walks JSON without building it, keeping each string value of a `reference`
/// member that holds a `?` (a conditional reference), at any depth (a
/// `reference` may itself be a Reference, as in ImplementationGuide).
struct ReferenceScan<'s> {
    found: &'s mut Vec<String>,
    /// The value being visited is a `reference` member's.
    in_reference: bool,
}

impl ReferenceScan<'_> {
    fn child(&mut self, in_reference: bool) -> ReferenceScan<'_> {
        ReferenceScan {
            found: self.found,
            in_reference,
        }
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for ReferenceScan<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ReferenceScan<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            map.next_value_seed(self.child(key == "reference"))?;
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self.child(false))?.is_some() {}
        Ok(())
    }

    fn visit_str<E>(self, value: &str) -> Result<(), E> {
        if self.in_reference && value.contains('?') {
            self.found.push(value.to_owned());
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

fn not_json(e: serde_json::Error) -> FhirError {
    FhirError::BadRequest(vec![Issue::new(
        "structure",
        format!("the body is not a JSON object: {e}"),
    )])
}

/// Checks a Bundle's members other than its entries, and finds where each entry is.
pub fn open(body: &[u8]) -> FhirResult<RawBundle<'_>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(FhirError::bad_request(
            "the request has no resource in its body",
        ));
    }
    super::nesting::check_json(body)?;
    let members: BTreeMap<String, &RawValue> = serde_json::from_slice(body).map_err(not_json)?;
    let mut shell = Map::new();
    let mut entries = Vec::new();
    for (name, raw) in members {
        if name == "entry" {
            if let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
                entries = items;
                continue;
            }
        }
        // Anything else, an `entry` that is not an array included, is checked by
        // the validator below.
        shell.insert(name, serde_json::from_str(raw.get()).map_err(not_json)?);
    }
    let shell = Value::Object(shell);
    if resource_type(&shell) != "Bundle" {
        return Err(FhirError::bad_request(
            "POST to the base takes a transaction or batch Bundle",
        ));
    }
    let kind = match shell["type"].as_str() {
        Some("transaction") => Kind::Transaction,
        Some("batch") => Kind::Batch,
        other => {
            return Err(FhirError::bad_request(format!(
                "a Bundle of type {} cannot be processed; use transaction or batch",
                other.unwrap_or("(none)")
            )))
        }
    };
    super::check_resource(&shell)?;
    Ok(RawBundle {
        kind,
        entries,
        base: String::new(),
    })
}

impl<'a> RawBundle<'a> {
    /// Accepts the entries' absolute URLs under `base` (`http://host/fhir/Patient/1`).
    pub fn served_at(self, base: &str) -> RawBundle<'a> {
        RawBundle {
            base: base.trim_end_matches('/').to_owned(),
            ..self
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The request of entry `index`, its resource skipped.
    pub fn head(&self, index: usize) -> FhirResult<Head> {
        let bad = |m: String| at_entry(index, FhirError::bad_request(m));
        let json: HeadJson = match serde_json::from_str(self.entries[index].get()) {
            Ok(json) => json,
            // The validator says precisely what is wrong; serde's word is the fallback.
            Err(e) => {
                self.resource(index)?;
                return Err(bad(format!("the entry cannot be read: {e}")));
            }
        };
        let request = json
            .request
            .ok_or_else(|| bad("an entry needs a request".to_owned()))?;
        let resource = json.resource.unwrap_or_default();
        let url = request.url.unwrap_or_default();
        let relative = match url.strip_prefix(&self.base) {
            Some(rest) if !self.base.is_empty() && rest.starts_with('/') => rest,
            _ => &url,
        };
        let target = parse_target(relative).ok_or_else(|| {
            bad(format!(
                "request.url '{url}' is not Type, Type/id, Type/id/_history/vid or Type?criteria"
            ))
        })?;
        let if_match = match request.if_match {
            Some(v) => Some(
                parse_version_etag(&v)
                    .ok_or_else(|| bad(format!("ifMatch '{v}' is not a version ETag")))?,
            ),
            None => None,
        };
        let method = request.method.unwrap_or_default();
        if !matches!(
            method.as_str(),
            "GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "PATCH"
        ) {
            return Err(bad(format!(
                "request.method '{method}' is not one of GET, HEAD, POST, PUT, DELETE, PATCH"
            )));
        }
        let conditional_read =
            request.if_none_match.is_some() || request.if_modified_since.is_some();
        if conditional_read && method != "GET" {
            return Err(bad(format!(
                "ifNoneMatch and ifModifiedSince make a GET entry conditional; a {method} entry takes ifMatch or ifNoneExist"
            )));
        }
        let if_modified_since = match request.if_modified_since {
            Some(v) => Some(
                DateTime::parse_from_rfc3339(&v)
                    .map_err(|_| bad(format!("ifModifiedSince '{v}' is not an instant")))?
                    .with_timezone(&Utc),
            ),
            None => None,
        };
        Ok(Head {
            index,
            method,
            target,
            full_url: json.full_url,
            conditional_references: resource.conditional_references,
            if_none_exist: request
                .if_none_exist
                .as_deref()
                .map(super::query::parse_criteria),
            if_match,
            if_none_match: request.if_none_match,
            if_modified_since,
        })
    }

    /// The resource of entry `index`, parsed and checked as part of this Bundle
    /// (problems are named `Bundle.entry[index]…`, as a whole-Bundle check would).
    pub fn resource(&self, index: usize) -> FhirResult<Option<Value>> {
        let entry: Value = serde_json::from_str(self.entries[index].get())
            .map_err(|e| at_entry(index, not_json(e)))?;
        let mut alone = serde_json::json!({
            "resourceType": "Bundle",
            "type": self.kind.code(),
            "entry": [entry],
        });
        super::check_resource(&alone).map_err(|e| match e {
            FhirError::BadRequest(issues) => {
                FhirError::BadRequest(issues.into_iter().map(|i| renumber(i, index)).collect())
            }
            other => at_entry(index, other),
        })?;
        Ok(alone["entry"][0].get_mut("resource").map(Value::take))
    }
}

/// An issue found in a one-entry Bundle, named at the entry's place in the real
/// one (the first `entry[0]` of a message or an expression is that entry; an issue
/// without an expression is placed at the entry).
fn renumber(issue: Issue, index: usize) -> Issue {
    let at = |s: String| s.replacen("entry[0]", &format!("entry[{index}]"), 1);
    Issue {
        code: issue.code,
        message: at(issue.message),
        expression: Some(
            issue
                .expression
                .map_or_else(|| format!("Bundle.entry[{index}]"), at),
        ),
    }
}

pub fn parse_target(url: &str) -> Option<Target> {
    let url = url.trim_start_matches('/');
    if let Some((path, query)) = url.split_once('?') {
        let t = path.trim_end_matches('/');
        return R4
            .is_resource_type(t)
            .then(|| Target::Criteria(t.to_owned(), super::query::parse_form(query)));
    }
    match url.split('/').collect::<Vec<_>>().as_slice() {
        [t] if R4.is_resource_type(t) => Some(Target::Type((*t).to_owned())),
        [t, id] if R4.is_resource_type(t) && is_valid_id(id) => {
            Some(Target::Instance((*t).to_owned(), (*id).to_owned()))
        }
        [t, id, "_history", vid] if R4.is_resource_type(t) && is_valid_id(id) => Some(
            Target::Version((*t).to_owned(), (*id).to_owned(), (*vid).to_owned()),
        ),
        _ => None,
    }
}

/// Names the failing entry in the error, keeping its status; `expression`s of
/// issues about the entry's resource are placed under `Bundle.entry[index].resource`.
pub fn at_entry(index: usize, err: FhirError) -> FhirError {
    let prefix = |m: &str| format!("Bundle.entry[{index}]: {m}");
    let located = |issues: Vec<Issue>| -> Vec<Issue> {
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
            .collect()
    };
    match err {
        FhirError::BadRequest(issues) => FhirError::BadRequest(located(issues)),
        FhirError::Unprocessable(issues) => FhirError::Unprocessable(located(issues)),
        FhirError::Forbidden(m) => FhirError::Forbidden(prefix(&m)),
        FhirError::NotFound(m) => FhirError::NotFound(prefix(&m)),
        FhirError::Gone(m) => FhirError::Gone(prefix(&m)),
        FhirError::MethodNotAllowed(m) => FhirError::MethodNotAllowed(prefix(&m)),
        FhirError::Conflict(m) => FhirError::Conflict(prefix(&m)),
        FhirError::PreconditionFailed(m) => FhirError::PreconditionFailed(prefix(&m)),
        other => other,
    }
}

/// Refuses two entries with one `fullUrl` (R4 bdl-7; the references to it could
/// not tell them apart).
pub fn check_full_urls(heads: &[Head]) -> FhirResult<()> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for head in heads {
        let Some(full_url) = head.full_url.as_deref() else {
            continue;
        };
        if let Some(first) = seen.insert(full_url, head.index) {
            return Err(at_entry(
                head.index,
                FhirError::bad_request(format!(
                    "fullUrl '{full_url}' is also entry {first}'s: a fullUrl names one entry"
                )),
            ));
        }
    }
    Ok(())
}

/// The order of the spec: DELETE, POST, PUT (and PATCH), GET.
pub fn rank(method: &str) -> u8 {
    match method {
        "DELETE" => 0,
        "POST" => 1,
        "PUT" | "PATCH" => 2,
        _ => 3,
    }
}

/// Replaces every `Reference.reference` found in `ids` (fullUrl -> `Type/id`).
pub fn rewrite_references(value: &mut Value, ids: &HashMap<String, String>) {
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

/// The patch a PATCH entry carries: a FHIRPath Patch `Parameters`, or a JSON Patch
/// document as a `Binary` (`contentType` `application/json-patch+json`, base64 `data`).
pub fn patch_document(resource: Value) -> FhirResult<Value> {
    if super::fhirpath_patch::is_fhirpath_patch(&resource) {
        return Ok(resource);
    }
    let is_json_patch = resource_type(&resource) == "Binary"
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_and_references() {
        assert!(matches!(parse_target("Patient"), Some(Target::Type(t)) if t == "Patient"));
        assert!(matches!(parse_target("Patient/p1"), Some(Target::Instance(_, id)) if id == "p1"));
        assert!(
            matches!(parse_target("Patient?identifier=a%7Cb"), Some(Target::Criteria(_, c)) if c[0].1 == "a|b")
        );
        assert!(parse_target("Nope/1").is_none());
        assert_eq!(
            parse_target("Patient/p1/_history/2"),
            Some(Target::Version("Patient".into(), "p1".into(), "2".into()))
        );
        let mut r = json!({"subject":{"reference":"urn:uuid:1"},"x":[{"reference":"urn:uuid:2"}],"y":{"reference":"Patient/3"}});
        let ids = HashMap::from([
            ("urn:uuid:1".to_owned(), "Patient/a".to_owned()),
            ("urn:uuid:2".to_owned(), "Practitioner/b".to_owned()),
        ]);
        rewrite_references(&mut r, &ids);
        assert_eq!(r["subject"]["reference"], "Patient/a");
        assert_eq!(r["x"][0]["reference"], "Practitioner/b");
        assert_eq!(r["y"]["reference"], "Patient/3");
        assert!(
            rank("DELETE") < rank("POST")
                && rank("POST") < rank("PUT")
                && rank("PUT") < rank("GET")
        );
    }

    fn body(v: Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap_or_default()
    }

    #[test]
    fn entries_are_read_one_at_a_time() {
        let b = body(
            json!({"resourceType":"Bundle","type":"transaction","entry":[
            {"fullUrl":"urn:uuid:1","resource":{"resourceType":"Patient","gender":"female",
              "generalPractitioner":[{"reference":"Practitioner?identifier=r|1"},
                                     {"reference":"Practitioner/p"}],
              "contained":[{"resourceType":"Organization","partOf":{"reference":"Organization?name=x"}},
                {"resourceType":"ImplementationGuide","url":"http://x","name":"X","status":"draft",
                 "packageId":"x","fhirVersion":["4.0.1"],
                 "definition":{"resource":[{"reference":{"reference":"StructureDefinition?url=y"}}]}}]},
             "request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=a|b"}},
            {"request":{"method":"DELETE","url":"Patient/x","ifMatch":"W/\"3\""}},
            {"request":{"method":"GET","url":"http://h/fhir/Patient/y"}}]}),
        );
        let bundle = open(&b).expect("a transaction").served_at("http://h/fhir/");
        assert_eq!((bundle.kind, bundle.len()), (Kind::Transaction, 3));
        let head = bundle.head(0).expect("a head");
        assert_eq!(head.full_url.as_deref(), Some("urn:uuid:1"));
        assert_eq!(
            head.conditional_references,
            [
                "Practitioner?identifier=r|1",
                "Organization?name=x",
                "StructureDefinition?url=y"
            ]
        );
        assert_eq!(head.target, Target::Type("Patient".to_owned()));
        assert_eq!(
            head.if_none_exist.as_ref().map(|c| c[0].1.as_str()),
            Some("a|b")
        );
        let resource = bundle.resource(0).expect("valid").expect("a resource");
        assert_eq!(resource["gender"], "female");
        let delete = bundle.head(1).expect("a head");
        assert_eq!(
            (delete.method.as_str(), delete.if_match),
            ("DELETE", Some(3))
        );
        assert_eq!(bundle.resource(1).expect("valid"), None);
        let absolute = bundle.head(2).expect("a head under the base");
        assert_eq!(
            absolute.target,
            Target::Instance("Patient".to_owned(), "y".to_owned())
        );
    }

    #[test]
    fn full_urls_name_one_entry() {
        let b = body(
            json!({"resourceType":"Bundle","type":"transaction","entry":[
            {"fullUrl":"urn:uuid:1","request":{"method":"GET","url":"Patient/a"}},
            {"fullUrl":"urn:uuid:2","request":{"method":"GET","url":"Patient/b"}},
            {"fullUrl":"urn:uuid:1","request":{"method":"GET","url":"Patient/c"}}]}),
        );
        let bundle = open(&b).expect("a transaction");
        let heads: Vec<Head> = (0..3).filter_map(|i| bundle.head(i).ok()).collect();
        assert!(check_full_urls(&heads[..2]).is_ok());
        let refused = check_full_urls(&heads).map_err(|e| e.to_string());
        assert!(
            refused
                .as_ref()
                .is_err_and(|m| m.contains("entry[2]") && m.contains("entry 0")),
            "{refused:?}"
        );
    }

    #[test]
    fn problems_are_named_at_their_entry() {
        let b = body(json!({"resourceType":"Bundle","type":"batch","entry":[
            {"request":{"method":"GET","url":"Patient/a"}},
            {"request":{"method":"GET","url":"Patient/a"}},
            {"resource":{"resourceType":"Patient","birthDate":"2024-02-30"},
             "request":{"method":"POST","url":"Patient"}},
            {"fullUrl":7,"request":{"method":"GET","url":"Patient/a"}},
            {"request":{"method":"GET","url":"Nope/a"}},
            {"request":{"method":"get","url":"Patient/a"}}]}));
        let bundle = open(&b).expect("a batch");
        // Where the first issue is, then what it says.
        let message = |e: FhirError| match e {
            FhirError::BadRequest(issues) => issues
                .first()
                .map(|i| format!("{} {}", i.expression.as_deref().unwrap_or("-"), i.message))
                .unwrap_or_default(),
            other => other.to_string(),
        };
        let refusals = [
            (
                bundle.resource(2).map(|_| ()),
                "Bundle.entry[2].resource.birthDate",
            ),
            (bundle.head(3).map(|_| ()), "Bundle.entry[3].fullUrl"),
            (bundle.head(4).map(|_| ()), "entry[4]"),
            (bundle.head(5).map(|_| ()), "not one of GET"),
        ];
        for (refused, says) in refusals {
            let refused = refused.map_err(message);
            assert!(
                refused.as_ref().is_err_and(|m| m.contains(says)),
                "{refused:?}"
            );
        }
        for (text, says) in [
            (json!({"resourceType":"Patient"}), "transaction or batch"),
            (
                json!({"resourceType":"Bundle","type":"collection"}),
                "collection",
            ),
            (
                json!({"resourceType":"Bundle","type":"batch","entry":{}}),
                "entry",
            ),
            (json!([1]), "JSON object"),
        ] {
            let refused = open(&body(text)).map(|_| ()).map_err(message);
            assert!(
                refused.as_ref().is_err_and(|m| m.contains(says)),
                "{refused:?}"
            );
        }
    }
}
