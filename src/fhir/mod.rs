//! The FHIR model: R4 definitions, structural validation, wire formats, and the
//! server-owned parts of a resource (`id`, `meta`). Pure: no I/O.

pub mod bundle;
pub mod datetime;
pub mod definitions;
pub mod fhirpath;
pub mod fhirpath_patch;
pub mod nesting;
pub mod patch;
pub mod query;
pub mod render;
pub mod subset;
pub mod validate;
pub mod xhtml;
pub mod xml;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::{FhirError, FhirResult, Issue};

/// The FHIR version this server speaks, for `fhirVersion` and the content type.
pub const FHIR_VERSION: &str = "4.0.1";

/// The two wire formats of R4 that the server reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    pub fn mime(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json",
            Format::Xml => "application/fhir+xml",
        }
    }
}

/// `[A-Za-z0-9\-\.]{1,64}`: the R4 `id` type.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The version a weak or strong ETag names (`W/"3"`, `"3"`), as in `If-Match`.
pub fn parse_version_etag(value: &str) -> Option<i64> {
    let v = value.trim();
    v.strip_prefix("W/")
        .unwrap_or(v)
        .trim_matches('"')
        .parse()
        .ok()
}

/// Whether a conditional read answers 304 Not Modified: an `If-None-Match` list
/// naming the current version (or `*`), else an `If-Modified-Since` instant not
/// before the version's `lastUpdated` (compared to the second, as HTTP dates are).
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<DateTime<Utc>>,
    version_id: i64,
    last_updated: DateTime<Utc>,
) -> bool {
    match (if_none_match, if_modified_since) {
        (Some(etags), _) => etags
            .split(',')
            .any(|e| e.trim() == "*" || parse_version_etag(e) == Some(version_id)),
        (None, Some(since)) => last_updated.timestamp() <= since.timestamp(),
        (None, None) => false,
    }
}

/// Parses a request body into a resource and checks its structure against R4
/// (fhirbolt's typed model plus the path-precise checks of [`validate`]).
pub fn parse_resource(body: &[u8], format: Format) -> FhirResult<Value> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(FhirError::bad_request(
            "the request has no resource in its body",
        ));
    }
    // The HTTP edge checks every body; the loader's files come here directly.
    match format {
        Format::Json => nesting::check_json(body)?,
        Format::Xml => nesting::check_xml(body)?,
    }
    let value = match format {
        Format::Json => serde_json::from_slice::<Value>(body).map_err(|e| {
            FhirError::BadRequest(vec![Issue::new(
                "structure",
                format!("the body is not valid JSON: {e}"),
            )])
        })?,
        Format::Xml => xml::to_json(body).map_err(|e| {
            FhirError::BadRequest(vec![Issue::new(
                "structure",
                format!("the body is not a valid R4 XML resource: {e}"),
            )])
        })?,
    };
    match format {
        Format::Json => check_structure(&value, Some(body))?,
        // The XML went through the typed model already.
        Format::Xml => {
            validate::validate_resource(&value).map_err(FhirError::BadRequest)?;
        }
    }
    Ok(value)
}

/// Checks a resource built by the server (a patched one, a Bundle entry read on
/// its own) like an incoming one.
pub fn check_resource(value: &Value) -> FhirResult<()> {
    check_structure(value, None)
}

/// The walker of [`validate`], then fhirbolt's typed model on the same JSON (the
/// request's text when there is one; serialised only when the model needs it).
fn check_structure(value: &Value, json: Option<&[u8]>) -> FhirResult<()> {
    validate::validate_resource(value).map_err(FhirError::BadRequest)?;
    second_opinion(value, json).map_err(|e| {
        FhirError::BadRequest(vec![Issue::new(
            "structure",
            format!("not a valid R4 resource: {e}"),
        )])
    })
}

/// The typed model's opinion; our walker already named the path of anything it
/// knows to be wrong, so this only fires on what it missed. A Bundle's resources
/// are checked one at a time (the typed model of a 10,000-entry Bundle would hold
/// all of it at once). The model requires elements that R4 lets a
/// StructureDefinition's differential leave out (e.g. binding.strength): there the
/// walker, which knows, decides.
fn second_opinion(value: &Value, json: Option<&[u8]>) -> Result<(), String> {
    if let Some(entries) = value["entry"]
        .as_array()
        .filter(|_| resource_type(value) == "Bundle")
    {
        for (i, entry) in entries.iter().enumerate() {
            if let Some(resource) = entry.get("resource") {
                second_opinion(resource, None).map_err(|e| format!("entry[{i}]: {e}"))?;
            }
        }
        return Ok(());
    }
    let serialised;
    let json = match json {
        Some(json) => json,
        None => {
            serialised = serde_json::to_vec(value).map_err(|e| e.to_string())?;
            &serialised
        }
    };
    match fhir_codec::check_json(json) {
        Ok(()) => Ok(()),
        Err(e)
            if resource_type(value) == "StructureDefinition"
                && value.get("differential").is_some() =>
        {
            tracing::debug!(error = %e, "accepted a differential the typed model cannot hold");
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The resource type of a parsed resource (validated to exist by [`parse_resource`]).
pub fn resource_type(resource: &Value) -> &str {
    resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

pub fn resource_id(resource: &Value) -> Option<&str> {
    resource.get("id").and_then(Value::as_str)
}

/// The resource without what the server sets (`id`, `meta.versionId`,
/// `meta.lastUpdated`, and `meta` when nothing else is in it): what a client wrote.
/// The resource a resource contains under `id` (what `#id` references).
pub fn contained<'a>(resource: &'a Value, id: &str) -> Option<&'a Value> {
    resource["contained"]
        .as_array()?
        .iter()
        .find(|c| c["id"] == id)
}

pub fn without_server_meta(mut resource: Value) -> Value {
    if let Some(obj) = resource.as_object_mut() {
        obj.shift_remove("id");
        let empty = match obj.get_mut("meta").and_then(Value::as_object_mut) {
            Some(meta) => {
                meta.shift_remove("versionId");
                meta.shift_remove("lastUpdated");
                meta.is_empty()
            }
            None => false,
        };
        if empty {
            obj.shift_remove("meta");
        }
    }
    resource
}

/// Sets the server-owned elements: `id`, `meta.versionId`, `meta.lastUpdated`. Other
/// `meta` content the client sent (profile, tag, security, source) is kept. `id` and
/// `meta` are placed right after `resourceType`, where readers look for them.
pub fn stamp(resource: &mut Value, id: &str, version: i64, last_updated: DateTime<Utc>) {
    let Some(obj) = resource.as_object_mut() else {
        return;
    };
    let mut meta = match obj.shift_remove("meta") {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    };
    meta.insert("versionId".to_owned(), Value::String(version.to_string()));
    meta.insert(
        "lastUpdated".to_owned(),
        Value::String(datetime::format_instant(last_updated)),
    );
    obj.shift_remove("id");
    let resource_type = obj.shift_remove("resourceType");
    let rest = std::mem::take(obj);
    let mut ordered = Map::new();
    if let Some(rt) = resource_type {
        ordered.insert("resourceType".to_owned(), rt);
    }
    ordered.insert("id".to_owned(), Value::String(id.to_owned()));
    ordered.insert("meta".to_owned(), Value::Object(meta));
    ordered.extend(rest);
    *obj = ordered;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids() {
        assert!(is_valid_id("abc-1.2"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id(&"x".repeat(65)));
    }

    #[test]
    fn stamp_keeps_client_meta() {
        let mut r = json!({"active":true,"resourceType":"Patient","meta":{"profile":["http://x"],"versionId":"9"}});
        stamp(&mut r, "p1", 2, DateTime::<Utc>::UNIX_EPOCH);
        assert_eq!(r["id"], "p1");
        assert_eq!(r["meta"]["versionId"], "2");
        assert_eq!(r["meta"]["profile"][0], "http://x");
        assert_eq!(r["meta"]["lastUpdated"], "1970-01-01T00:00:00.000000+00:00");
        let keys: Vec<&String> = r.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "active"]);
    }

    #[test]
    fn server_meta_aside() {
        let stored = json!({"resourceType":"Patient","id":"p","meta":{"versionId":"3","lastUpdated":"x"},"active":true});
        let sent = json!({"resourceType":"Patient","active":true});
        assert_eq!(without_server_meta(stored), without_server_meta(sent));
        let tagged = json!({"resourceType":"Patient","meta":{"tag":[{"code":"a"}]}});
        assert!(without_server_meta(tagged).get("meta").is_some());
    }

    #[test]
    fn parse_rejects_bad_bodies_with_400() {
        for body in [&b""[..], b"{", b"[]", br#"{"resourceType":"Nope"}"#] {
            let err = parse_resource(body, Format::Json).expect_err("must fail");
            assert_eq!(err.status(), 400, "{}", String::from_utf8_lossy(body));
        }
        let ok = parse_resource(br#"{"resourceType":"Patient","active":true}"#, Format::Json);
        assert!(ok.is_ok());
    }
}
