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
    let length: usize = entries.iter().map(|e| e.as_ref().len() + 1).sum();
    let mut joined = String::with_capacity(length);
    for (n, entry) in entries.iter().enumerate() {
        if n > 0 {
            joined.push(',');
        }
        joined.push_str(entry.as_ref());
    }
    bundle_around(kind, total, links, &joined)
}

/// A Bundle of the given type around `entries`, its entries already serialised
/// and joined with commas (empty: none).
pub fn bundle_around(
    kind: &str,
    total: Option<i64>,
    links: &[(&str, String)],
    entries: &str,
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
    let mut text = String::with_capacity(head.len() + entries.len() + 16);
    text.push_str(head.strip_suffix('}').unwrap_or(&head));
    text.push_str(",\"entry\":[");
    text.push_str(entries);
    text.push_str("]}");
    text
}

/// Whether `text` goes into JSON as it is, between quotes.
fn plain(text: &str) -> bool {
    !text.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

/// Appends `text` as a JSON string (quoted, escaped when it must be).
pub fn push_json_string(out: &mut String, text: &str) {
    if plain(text) {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&Value::from(text).to_string());
    }
}

/// Opens a Bundle entry in `out`, after a comma when entries precede it: `{`
/// and its `fullUrl`, `{base}/{res_type}/{res_id}` (written in place unless it
/// must be escaped).
pub fn open_entry(out: &mut String, base: &str, res_type: &str, res_id: &str) {
    if !out.is_empty() {
        out.push(',');
    }
    out.push_str("{\"fullUrl\":");
    if plain(base) && plain(res_type) && plain(res_id) {
        for part in ["\"", base, "/", res_type, "/", res_id, "\""] {
            out.push_str(part);
        }
    } else {
        push_json_string(out, &format!("{base}/{res_type}/{res_id}"));
    }
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

    #[test]
    fn json_strings_are_escaped_when_they_must_be() {
        for text in ["https://h/fhir/Patient/p1", "a\"b", "a\\b\n", ""] {
            let mut out = String::new();
            push_json_string(&mut out, text);
            assert_eq!(serde_json::from_str::<String>(&out).expect("json"), text);
        }
    }
}
