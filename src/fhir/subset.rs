//! `_summary` and `_elements`: the subsets of a resource a client may ask for,
//! marked with the `SUBSETTED` tag as R4 requires. Pure.

use serde_json::{json, Map, Value};

use super::definitions::R4;
use crate::error::{FhirError, FhirResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subset {
    /// `_summary=true`: the elements marked as summary in the definitions.
    Summary,
    /// `_summary=text`: text, id, meta and the mandatory elements.
    Text,
    /// `_summary=data`: everything but the narrative.
    Data,
    /// `_elements=a,b`: those elements (and the mandatory ones).
    Elements(Vec<String>),
}

/// `_summary=count` is not a subset of resources but of the Bundle: see `count_only`.
pub fn from_params(params: &[(String, String)]) -> FhirResult<Option<Subset>> {
    let mut subset = None;
    for (name, value) in params {
        match (name.as_str(), value.as_str()) {
            ("_summary", "true") => subset = Some(Subset::Summary),
            ("_summary", "text") => subset = Some(Subset::Text),
            ("_summary", "data") => subset = Some(Subset::Data),
            ("_summary", "false" | "count") => {}
            ("_summary", other) => {
                return Err(FhirError::bad_request(format!(
                    "_summary takes true, false, text, data or count, not '{other}'"
                )))
            }
            ("_elements", list) => {
                subset = Some(Subset::Elements(
                    list.split(',')
                        .map(|e| e.trim().to_owned())
                        .filter(|e| !e.is_empty())
                        .collect(),
                ))
            }
            _ => {}
        }
    }
    Ok(subset)
}

/// `_summary=count`: the Bundle carries the total and no entries.
pub fn count_only(params: &[(String, String)]) -> bool {
    params.iter().any(|(k, v)| k == "_summary" && v == "count")
}

const ALWAYS: &[&str] = &["resourceType", "id", "meta"];

/// Applies a subset to a resource's JSON text.
pub fn apply(json: &str, subset: &Subset) -> FhirResult<String> {
    let mut resource: Value =
        serde_json::from_str(json).map_err(|e| FhirError::Internal(format!("stored JSON: {e}")))?;
    let Some(obj) = resource.as_object_mut() else {
        return Ok(json.to_owned());
    };
    let rt = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let mandatory = |key: &str| {
        R4.element(&format!("{rt}.{key}"))
            .is_some_and(|e| e.min > 0)
    };
    let keep = |key: &str| -> bool {
        if ALWAYS.contains(&key) {
            return true;
        }
        let bare = key.strip_prefix('_').unwrap_or(key);
        match subset {
            Subset::Summary => mandatory(bare) || element_is_summary(&rt, bare),
            Subset::Text => bare == "text" || mandatory(bare),
            Subset::Data => bare != "text",
            Subset::Elements(list) => mandatory(bare) || list.iter().any(|e| e == bare),
        }
    };
    let kept: Map<String, Value> = std::mem::take(obj)
        .into_iter()
        .filter(|(k, _)| keep(k))
        .collect();
    *obj = kept;
    if *subset != Subset::Data {
        mark_subsetted(obj);
    }
    serde_json::to_string(&resource).map_err(|e| FhirError::Internal(e.to_string()))
}

/// Summary flag of a top-level element, choice elements (`deceasedBoolean`) included.
fn element_is_summary(rt: &str, key: &str) -> bool {
    R4.element(&format!("{rt}.{key}"))
        .is_some_and(|e| e.summary)
}

fn mark_subsetted(obj: &mut Map<String, Value>) {
    let tag = json!({
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "SUBSETTED",
    });
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENT: &str = r#"{"resourceType":"Patient","id":"p","meta":{"versionId":"1"},
        "text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
        "name":[{"family":"Martin"}],"photo":[{"url":"http://x"}],"birthDate":"1974","deceasedBoolean":false}"#;

    fn keys(json: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(json).expect("json");
        v.as_object().expect("object").keys().cloned().collect()
    }

    #[test]
    fn summaries_and_elements() {
        let summary = apply(PATIENT, &Subset::Summary).expect("summary");
        assert_eq!(
            keys(&summary),
            [
                "resourceType",
                "id",
                "meta",
                "name",
                "birthDate",
                "deceasedBoolean"
            ]
        );
        assert!(summary.contains("SUBSETTED"));
        let text = apply(PATIENT, &Subset::Text).expect("text");
        assert_eq!(keys(&text), ["resourceType", "id", "meta", "text"]);
        let data = apply(PATIENT, &Subset::Data).expect("data");
        assert!(!keys(&data).contains(&"text".to_owned()) && !data.contains("SUBSETTED"));
        let elements = apply(PATIENT, &Subset::Elements(vec!["photo".into()])).expect("elements");
        assert_eq!(keys(&elements), ["resourceType", "id", "meta", "photo"]);
        let obs = r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueString":"y"}"#;
        let e = apply(obs, &Subset::Elements(vec!["valueString".into()])).expect("obs");
        assert_eq!(
            keys(&e),
            ["resourceType", "status", "code", "valueString", "meta"],
            "mandatory kept"
        );
    }

    #[test]
    fn parameters() {
        let p = |k: &str, v: &str| vec![(k.to_owned(), v.to_owned())];
        assert_eq!(
            from_params(&p("_summary", "true")).expect("ok"),
            Some(Subset::Summary)
        );
        assert!(from_params(&p("_summary", "maybe")).is_err());
        assert!(count_only(&p("_summary", "count")));
        assert_eq!(
            from_params(&p("_elements", "a, b")).expect("ok"),
            Some(Subset::Elements(vec!["a".into(), "b".into()]))
        );
    }
}
