//! Reading conformance resources from disk: a FHIR package (`.tgz`, as
//! published, its files under `package/`), a folder of JSON files (an unpacked
//! package), or one JSON file (a resource or a Bundle of them). Only
//! StructureDefinitions, ValueSets and CodeSystems are kept.

use std::io::Read;
use std::path::Path;

use serde_json::Value;

/// Packages larger than this (uncompressed, per file) are refused rather than read.
const MAX_FILE: u64 = 64 * 1024 * 1024;

fn wanted(value: &Value) -> bool {
    matches!(
        value["resourceType"].as_str(),
        Some("StructureDefinition" | "ValueSet" | "CodeSystem" | "Bundle")
    )
}

fn parse(bytes: &[u8], out: &mut Vec<Value>) {
    if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        if wanted(&value) {
            out.push(value);
        }
    }
}

/// The conformance resources at `path`.
pub fn read(path: &Path) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let name = path.to_string_lossy();
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| format!("{name}: {e}"))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .collect();
        entries.sort();
        for entry in entries {
            if entry.is_dir() && entry.file_name().is_some_and(|n| n == "package") {
                out.extend(read(&entry)?);
            } else if entry.extension().is_some_and(|e| e == "json") {
                let bytes =
                    std::fs::read(&entry).map_err(|e| format!("{}: {e}", entry.display()))?;
                parse(&bytes, &mut out);
            }
        }
    } else if name.ends_with(".tgz") || name.ends_with(".tar.gz") {
        let file = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        for entry in archive.entries().map_err(|e| format!("{name}: {e}"))? {
            let mut entry = entry.map_err(|e| format!("{name}: {e}"))?;
            let file_name = entry
                .path()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !file_name.ends_with(".json") || entry.size() > MAX_FILE {
                continue;
            }
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| format!("{name}: {file_name}: {e}"))?;
            parse(&bytes, &mut out);
        }
    } else {
        let bytes = std::fs::read(path).map_err(|e| format!("{name}: {e}"))?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("{name}: not JSON: {e}"))?;
        if wanted(&value) {
            out.push(value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tgz_package_is_read_from_its_package_folder() {
        let dir = std::env::temp_dir().join(format!("passerelle-pkg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let tgz = dir.join("p.tgz");
        let file = std::fs::File::create(&tgz).expect("file");
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        for (path, body) in [
            ("package/package.json", r#"{"name":"p"}"#),
            (
                "package/ValueSet-v.json",
                r#"{"resourceType":"ValueSet","url":"v"}"#,
            ),
            (
                "package/example/Patient-x.json",
                r#"{"resourceType":"Patient"}"#,
            ),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, path, body.as_bytes())
                .expect("append");
        }
        builder.into_inner().expect("gz").finish().expect("finish");
        let read = read(&tgz).expect("read");
        assert_eq!(read.len(), 1);
        assert_eq!(read[0]["url"], "v");
        std::fs::remove_dir_all(&dir).ok();
    }
}
