//! Outgoing Bundles written as text around entries already serialised: stored
//! resources are never parsed to be sent. Pure.

use chrono::Utc;
use serde_json::Value;

/// `{"key": raw, ...rest}`: puts already-serialised JSON into a serialised object
/// without parsing it again (resources are stored as text).
pub fn with_raw_member(object: &str, key: &str, raw: &str) -> String {
    let rest = object.strip_prefix('{').unwrap_or(object);
    if rest.trim_start().starts_with('}') {
        format!("{{\"{key}\":{raw}}}")
    } else {
        format!("{{\"{key}\":{raw},{rest}")
    }
}

/// A Bundle of the given type (history, searchset, transaction-response…) around
/// its entries, each already serialised JSON.
pub fn bundle(
    kind: &str,
    total: Option<i64>,
    links: &[(&str, String)],
    entries: &[impl AsRef<str>],
) -> String {
    let links: Vec<Value> = links
        .iter()
        .map(|(relation, url)| serde_json::json!({"relation": relation, "url": url}))
        .collect();
    let mut head = serde_json::json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": super::datetime::format_instant(Utc::now())},
        "type": kind,
    });
    if let Some(total) = total {
        head["total"] = serde_json::json!(total);
    }
    if !links.is_empty() {
        head["link"] = Value::Array(links);
    }
    let head = head.to_string();
    if entries.is_empty() {
        return head;
    }
    let length: usize = entries.iter().map(|e| e.as_ref().len() + 1).sum();
    let mut text = String::with_capacity(head.len() + length + 16);
    text.push_str(head.strip_suffix('}').unwrap_or(&head));
    text.push_str(",\"entry\":[");
    for (n, entry) in entries.iter().enumerate() {
        if n > 0 {
            text.push(',');
        }
        text.push_str(entry.as_ref());
    }
    text.push_str("]}");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_members_and_bundles_are_valid_json() {
        let entry = with_raw_member(
            r#"{"fullUrl":"x"}"#,
            "resource",
            r#"{"resourceType":"Basic","code":{"text":"note"}}"#,
        );
        let v: Value = serde_json::from_str(&entry).expect("json");
        assert_eq!(v["resource"]["resourceType"], "Basic");
        let b = bundle("history", Some(1), &[("self", "http://x".into())], &[entry]);
        let v: Value = serde_json::from_str(&b).expect("bundle json");
        assert_eq!(v["entry"][0]["fullUrl"], "x");
        assert_eq!(v["total"], 1);
        crate::fhir::validate::validate_resource(&v).expect("valid Bundle");
    }
}
