//! What a client writes is what it reads back, element for element (decimals and
//! extensions included), on real R4 content: the FR Core and Cercle de Soins
//! packages and the official R4 StructureDefinitions. Reads them from ../shared.

use std::path::Path;

use serde_json::Value;

use crate::support::{body_json, json_files, shared_dir, TestServer};

/// The resource without the server-owned `meta.versionId` and `meta.lastUpdated`.
fn comparable(mut v: Value) -> Value {
    if let Some(meta) = v.get_mut("meta").and_then(Value::as_object_mut) {
        meta.shift_remove("versionId");
        meta.shift_remove("lastUpdated");
        if meta.is_empty() {
            v.as_object_mut().map(|o| o.shift_remove("meta"));
        }
    }
    v
}

/// fhirbolt's XML writer indents narrative XHTML and trims white space in it, which
/// changes no rendered text beyond spacing: compare narratives without white space.
/// Every other element must be identical.
fn without_narrative_spacing(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    match child {
                        Value::String(div) if key == "div" => {
                            div.retain(|c| !c.is_whitespace());
                        }
                        other => walk(other),
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// Where two JSON values first differ, for failure messages.
fn first_difference(a: &Value, b: &Value) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                match (x.get(key), y.get(key)) {
                    (Some(p), Some(q)) if p == q => {}
                    (Some(p), Some(q)) => return format!("{key}.{}", first_difference(p, q)),
                    (p, q) => return format!("{key}: {p:?} vs {q:?}"),
                }
            }
            String::new()
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find(|(_, (p, q))| p != q)
            .map(|(i, (p, q))| format!("[{i}]{}", first_difference(p, q)))
            .unwrap_or_default(),
        _ => format!(" {} vs {}", truncate(a), truncate(b)),
    }
}

fn truncate(v: &Value) -> String {
    v.to_string().chars().take(200).collect()
}

/// PUTs every resource of the folders at its own id, reads it back and compares.
/// With `via_xml`, also writes the XML the server gives back under another id and
/// checks that it reads back as the same JSON.
async fn round_trip(dirs: &[&Path], via_xml: bool) -> usize {
    let s = TestServer::start().await;
    let mut failures = Vec::new();
    let mut count = 0;
    for dir in dirs {
        for file in json_files(dir) {
            let text = std::fs::read_to_string(&file).expect("read");
            let original: Value = match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(_) => continue,
            };
            let (Some(rt), Some(id)) = (original["resourceType"].as_str(), original["id"].as_str())
            else {
                continue;
            };
            count += 1;
            let name = file
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let resp = s
                .http
                .put(s.url(&format!("{rt}/{id}")))
                .header("content-type", "application/fhir+json")
                .body(text.clone())
                .send()
                .await
                .expect("put");
            let status = resp.status().as_u16();
            if status != 201 {
                failures.push(format!(
                    "{name}: PUT answered {status}: {}",
                    resp.text().await.unwrap_or_default()
                ));
                continue;
            }
            let back = body_json(s.get(&format!("{rt}/{id}")).await).await;
            if comparable(back.clone()) != comparable(original.clone()) {
                failures.push(format!("{name}: read back differs"));
                continue;
            }
            if via_xml {
                let resp = s.get(&format!("{rt}/{id}?_format=xml")).await;
                if resp.status() == 406 && rt == "StructureDefinition" {
                    // A differential that fhirbolt's typed model cannot hold: the
                    // server says so rather than writing wrong XML.
                    continue;
                }
                let xml = resp.text().await.expect("xml");
                let copy_id = format!("x{}", &id[..id.len().min(60)]);
                let xml = xml.replacen(
                    &format!("<id value=\"{id}\"/>"),
                    &format!("<id value=\"{copy_id}\"/>"),
                    1,
                );
                let resp = s
                    .http
                    .put(s.url(&format!("{rt}/{copy_id}")))
                    .header("content-type", "application/fhir+xml")
                    .body(xml)
                    .send()
                    .await
                    .expect("put xml");
                if resp.status() != 201 {
                    failures.push(format!(
                        "{name}: XML PUT answered {}: {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    ));
                    continue;
                }
                let mut copy = body_json(s.get(&format!("{rt}/{copy_id}")).await).await;
                copy["id"] = Value::String(id.to_owned());
                let (copy, original) = (
                    without_narrative_spacing(comparable(copy)),
                    without_narrative_spacing(comparable(original)),
                );
                if copy != original {
                    failures.push(format!(
                        "{name}: XML round trip differs: {}",
                        first_difference(&original, &copy)
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    count
}

#[tokio::test]
async fn french_guides_round_trip_in_json_and_xml() {
    let Some(shared) = shared_dir() else { return };
    let fr_core = shared.join("ig/fr-core-2.1.0");
    let cds = shared.join("ig/cds-2.0.1");
    let n = round_trip(&[&fr_core, &cds], true).await;
    assert!(n > 100, "only {n} resources found");
}

#[tokio::test]
async fn official_structure_definitions_round_trip() {
    let Some(shared) = shared_dir() else { return };
    let n = round_trip(&[&shared.join("fhir-r4/base-profiles")], false).await;
    assert!(n > 200, "only {n} resources found");
}
