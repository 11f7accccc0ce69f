//! Index rows extracted from a resource at write time, stored in the same
//! transaction. Pure: no I/O.

use serde_json::Value;

use crate::fhir::definitions::R4;

/// A token index row: `param` matched by `system|code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub param: &'static str,
    pub system: Option<String>,
    pub code: Option<String>,
}

/// True when the type's `identifier` element is an `Identifier` (not every type has one).
pub fn has_identifier(resource_type: &str) -> bool {
    R4.element(&format!("{resource_type}.identifier"))
        .is_some_and(|e| e.types.iter().any(|t| t == "Identifier"))
}

/// The token rows of a resource.
pub fn token_rows(resource_type: &str, resource: &Value) -> Vec<TokenRow> {
    if !has_identifier(resource_type) {
        return Vec::new();
    }
    let identifiers: Vec<&Value> = match resource.get("identifier") {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(single @ Value::Object(_)) => vec![single],
        _ => Vec::new(),
    };
    identifiers
        .into_iter()
        .map(|ident| TokenRow {
            param: "identifier",
            system: ident
                .get("system")
                .and_then(Value::as_str)
                .map(str::to_owned),
            code: ident
                .get("value")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
        .filter(|row| row.system.is_some() || row.code.is_some())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identifiers_become_token_rows() {
        let p = json!({"resourceType":"Patient","identifier":[
            {"system":"urn:oid:1.2.250.1.213.1.4.10","value":"1"},{"value":"2"},{"use":"old"}]});
        let rows = token_rows("Patient", &p);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].system, None);
        // Bundle.identifier is a single Identifier, not an array.
        let b = json!({"resourceType":"Bundle","type":"collection","identifier":{"system":"s","value":"v"}});
        assert_eq!(token_rows("Bundle", &b).len(), 1);
        assert!(token_rows("Parameters", &json!({"resourceType":"Parameters"})).is_empty());
    }
}
