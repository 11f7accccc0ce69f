//! JSON Patch (RFC 6902) on a resource, for `PATCH` with
//! `application/json-patch+json`: the `json-patch` crate, with its errors mapped to
//! the answers of the spec (400 for a document that is not a patch, 422 for a
//! patch that cannot apply to this resource). Pure.

use serde_json::Value;

use crate::error::{FhirError, FhirResult, Issue};

/// Applies a JSON Patch document to `resource`.
pub fn apply(resource: &Value, document: &Value) -> FhirResult<Value> {
    if !document.is_array() {
        return Err(FhirError::bad_request(
            "a JSON Patch document is an array of operations",
        ));
    }
    let patch: json_patch::Patch = serde_json::from_value(document.clone())
        .map_err(|e| FhirError::bad_request(format!("not a JSON Patch document: {e}")))?;
    let mut result = resource.clone();
    json_patch::patch(&mut result, &patch).map_err(|e| {
        // A failed test, a missing path: the patch does not fit this resource.
        let i = e.operation;
        FhirError::Unprocessable(vec![Issue::new(
            "processing",
            format!("operation {i}: {}", e.kind),
        )
        .at(format!("[{i}]"))])
    })?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations() {
        let p =
            json!({"resourceType":"Patient","id":"p","name":[{"family":"Martin"}],"active":false});
        let patched = apply(
            &p,
            &json!([
                {"op":"test","path":"/active","value":false},
                {"op":"replace","path":"/active","value":true},
                {"op":"add","path":"/name/0/given","value":["Léa"]},
                {"op":"add","path":"/name/-","value":{"family":"Dupont","use":"maiden"}},
                {"op":"copy","from":"/name/0/family","path":"/name/1/text"},
                {"op":"remove","path":"/name/1/use"},
                {"op":"move","from":"/name/1/text","path":"/name/1/suffix"}
            ]),
        )
        .expect("applies");
        assert_eq!(patched["active"], true);
        assert_eq!(patched["name"][0]["given"][0], "Léa");
        assert_eq!(
            patched["name"][1],
            json!({"family":"Dupont","suffix":"Martin"})
        );
    }

    #[test]
    fn failures() {
        let p = json!({"resourceType":"Patient","active":false});
        assert_eq!(
            apply(&p, &json!([{"op":"test","path":"/active","value":true}]))
                .expect_err("test")
                .status(),
            422
        );
        assert_eq!(
            apply(&p, &json!([{"op":"remove","path":"/name"}]))
                .expect_err("missing")
                .status(),
            422
        );
        assert_eq!(
            apply(&p, &json!([{"op":"jump","path":"/x"}]))
                .expect_err("op")
                .status(),
            400
        );
        assert_eq!(
            apply(&p, &json!({"op":"add"}))
                .expect_err("not an array")
                .status(),
            400
        );
        assert_eq!(
            apply(&p, &json!([{"op":"add","path":"/x"}]))
                .expect_err("value")
                .status(),
            400
        );
    }
}
