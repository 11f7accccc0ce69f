//! `_history` at instance, type and system level: versions in the order a copy
//! can follow without missing one (see docs/sync.md), paged by a stable cursor.

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

use crate::error::{FhirError, FhirResult};
use crate::fhir::datetime;
use crate::search;
use crate::store::{self, HistoryFilter, StoredVersion};

/// A page of history, newest first, and the cursor of the next page if any.
pub struct HistoryPage {
    pub versions: Vec<StoredVersion>,
    pub next: Option<String>,
}

/// A page of history as a `history` Bundle (JSON text) with its `links`: each
/// entry written straight into one buffer around the stored text, as a
/// searchset's (`searches::searchset`).
pub fn history_bundle(base: &str, links: &[(&str, String)], versions: &[StoredVersion]) -> String {
    use crate::fhir::render::{open_entry, push_json_string};
    let stored: usize = versions
        .iter()
        .filter_map(|v| v.json.as_deref().map(str::len))
        .sum();
    let mut entries = String::with_capacity(stored + versions.len() * (base.len() + 200));
    for v in versions {
        let (request_url, status) = match v.method {
            store::Method::Post => (v.res_type.clone(), "201 Created"),
            store::Method::Put | store::Method::Patch => {
                (format!("{}/{}", v.res_type, v.res_id), "200 OK")
            }
            store::Method::Delete => (format!("{}/{}", v.res_type, v.res_id), "204 No Content"),
        };
        open_entry(&mut entries, base, &v.res_type, &v.res_id);
        if let Some(resource) = &v.json {
            entries.push_str(",\"resource\":");
            entries.push_str(resource);
        }
        entries.push_str(",\"request\":{\"method\":\"");
        entries.push_str(v.method.as_str());
        entries.push_str("\",\"url\":");
        push_json_string(&mut entries, &request_url);
        entries.push_str("},\"response\":{\"status\":\"");
        entries.push_str(status);
        entries.push_str("\",\"etag\":\"W/\\\"");
        entries.push_str(&v.version_id.to_string());
        entries.push_str("\\\"\",\"lastModified\":\"");
        entries.push_str(&datetime::format_instant(v.last_updated));
        entries.push_str("\"}}");
    }
    crate::fhir::render::bundle_around("history", None, links, &entries)
}

/// The opaque cursor of history paging: the (last_updated, seq) of the last entry.
fn encode_cursor(v: &StoredVersion) -> String {
    format!("{}.{}", v.last_updated.timestamp_micros(), v.seq)
}

fn decode_cursor(text: &str) -> FhirResult<(DateTime<Utc>, i64)> {
    let bad = || FhirError::bad_request(format!("'{text}' is not a valid page cursor"));
    let (micros, seq) = text.split_once('.').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let seq: i64 = seq.parse().map_err(|_| bad())?;
    let t = DateTime::<Utc>::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok((t, seq))
}

/// `_since` of `_history` and `$everything`: an instant (R4), the changes from it on.
pub(super) fn since_param(value: &str) -> FhirResult<DateTime<Utc>> {
    datetime::parse_range(value)
        .filter(|_| value.contains('T'))
        .map(|range| range.low)
        .ok_or_else(|| FhirError::bad_request(format!("'{value}' is not a valid _since instant")))
}

/// `_count` of `_history` and `$everything`, within the server's page sizes.
pub(super) fn count_param(value: &str) -> FhirResult<usize> {
    let n: usize = value
        .parse()
        .map_err(|_| FhirError::bad_request(format!("'{value}' is not a valid _count")))?;
    Ok(n.clamp(1, search::MAX_COUNT))
}

/// `_history` at system, type or instance level.
pub async fn history(
    pool: &Pool,
    res_type: Option<&str>,
    res_id: Option<&str>,
    params: &[(String, String)],
) -> FhirResult<HistoryPage> {
    let mut filter = HistoryFilter {
        res_type: res_type.map(str::to_owned),
        res_id: res_id.map(str::to_owned),
        count: search::DEFAULT_COUNT,
        ..HistoryFilter::default()
    };
    for (name, value) in params {
        match name.as_str() {
            "_since" => filter.since = Some(since_param(value)?),
            "_at" => {
                filter.at = Some(datetime::parse_range(value).ok_or_else(|| {
                    FhirError::bad_request(format!("'{value}' is not a valid _at date"))
                })?)
            }
            "_count" => filter.count = count_param(value)?,
            "_page" => filter.before = Some(decode_cursor(value)?),
            _ => {}
        }
    }
    let client = pool.get().await?;
    // One more than asked tells whether a next page exists.
    let wanted = filter.count;
    filter.count += 1;
    let mut versions = store::history(&client, &filter).await?;
    let next = if versions.len() > wanted {
        versions.truncate(wanted);
        versions.last().map(encode_cursor)
    } else {
        None
    };
    Ok(HistoryPage { versions, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_page_is_a_valid_bundle_around_the_stored_text() {
        let version = |method, id: &str, vid, json: Option<&str>| StoredVersion {
            res_type: "Patient".to_owned(),
            res_id: id.to_owned(),
            version_id: vid,
            last_updated: DateTime::<Utc>::from_timestamp_micros(1_764_000_000_000_000)
                .unwrap_or_default(),
            method,
            seq: vid,
            json: json.map(str::to_owned),
        };
        let p1 = r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"2"}}"#;
        let versions = [
            version(store::Method::Delete, "p2", 3, None),
            version(store::Method::Put, "p1", 2, Some(p1)),
            version(store::Method::Post, "p1", 1, Some(p1)),
        ];
        let links = [("self", "https://h/fhir/_history".to_owned())];
        let text = history_bundle("https://h/fhir", &links, &versions);
        let bundle: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        crate::fhir::validate::validate_resource(&bundle).expect("a valid R4 Bundle");
        let entry = &bundle["entry"];
        assert_eq!(
            entry[0]["request"],
            serde_json::json!({"method": "DELETE", "url": "Patient/p2"})
        );
        assert_eq!(entry[0]["response"]["status"], "204 No Content");
        assert!(entry[0].get("resource").is_none());
        assert_eq!(entry[1]["response"]["etag"], "W/\"2\"");
        assert_eq!(entry[1]["resource"]["id"], "p1");
        assert_eq!(entry[2]["request"]["url"], "Patient");
        assert_eq!(entry[2]["fullUrl"], "https://h/fhir/Patient/p1");
        assert_eq!(
            entry[2]["response"]["lastModified"],
            datetime::format_instant(versions[2].last_updated)
        );
        // A base that must be escaped still makes JSON.
        let odd = history_bundle("https://h/\"fhir", &links, &versions);
        let odd: serde_json::Value = serde_json::from_str(&odd).expect("JSON");
        assert_eq!(odd["entry"][1]["fullUrl"], "https://h/\"fhir/Patient/p1");
    }
}
