//! How deeply a body nests, found by one flat scan before any recursive parser
//! (serde_json, fhirbolt, the validator) sees it: a recursive parser given a
//! thousand levels would overflow the stack and abort the process.

use crate::error::{FhirError, Issue};
use crate::limits::{MAX_JSON_DEPTH, MAX_XML_DEPTH};

fn too_deep(what: &str, limit: usize) -> FhirError {
    FhirError::BadRequest(vec![Issue::new(
        "too-costly",
        format!("the body nests {what} more than {limit} levels deep"),
    )])
}

/// The deepest nesting of objects and arrays in JSON text (strings skipped);
/// stops counting once past `limit`. Malformed text is left to the parser.
pub fn json_depth(text: &[u8], limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for &b in text {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    break;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The deepest nesting of elements in XML text. Comments, CDATA sections,
/// processing instructions and declarations are skipped; quoted attribute values
/// may hold `>`. Malformed text is left to the parser.
pub fn xml_depth(text: &[u8], limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    let skip_to = |from: usize, end: &[u8]| {
        text[from..]
            .windows(end.len())
            .position(|w| w == end)
            .map_or(text.len(), |p| from + p + end.len())
    };
    while let Some(offset) = text[i..].iter().position(|&b| b == b'<') {
        let start = i + offset;
        let rest = &text[start..];
        if rest.starts_with(b"<!--") {
            i = skip_to(start + 4, b"-->");
        } else if rest.starts_with(b"<![CDATA[") {
            i = skip_to(start + 9, b"]]>");
        } else if rest.starts_with(b"<?") {
            i = skip_to(start + 2, b"?>");
        } else if rest.starts_with(b"<!") {
            i = skip_to(start + 2, b">");
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            i = skip_to(start + 2, b">");
        } else {
            // A start tag: find its end outside quoted attribute values.
            let mut quote = None;
            let mut end = text.len();
            for (k, &b) in text[start + 1..].iter().enumerate() {
                match (quote, b) {
                    (Some(q), _) if b == q => quote = None,
                    (Some(_), _) => {}
                    (None, b'"' | b'\'') => quote = Some(b),
                    (None, b'>') => {
                        end = start + 1 + k;
                        break;
                    }
                    _ => {}
                }
            }
            if end < text.len() && text[end - 1] != b'/' {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    break;
                }
            }
            i = (end + 1).min(text.len());
        }
        if i >= text.len() {
            break;
        }
    }
    deepest
}

/// Refuses a JSON body nested beyond [`MAX_JSON_DEPTH`].
pub fn check_json(text: &[u8]) -> Result<(), FhirError> {
    if json_depth(text, MAX_JSON_DEPTH) > MAX_JSON_DEPTH {
        return Err(too_deep("objects and arrays", MAX_JSON_DEPTH));
    }
    Ok(())
}

/// Refuses an XML body nested beyond [`MAX_XML_DEPTH`].
pub fn check_xml(text: &[u8]) -> Result<(), FhirError> {
    if xml_depth(text, MAX_XML_DEPTH) > MAX_XML_DEPTH {
        return Err(too_deep("elements", MAX_XML_DEPTH));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_containers_not_strings() {
        assert_eq!(json_depth(br#"{"a":[{"b":"[[[{{{"}]}"#, 100), 3);
        assert_eq!(json_depth(br#"{"a":"\"[[","b":{}}"#, 100), 2);
        assert_eq!(json_depth(b"5", 100), 0);
        let deep = "[".repeat(10_000);
        assert_eq!(json_depth(deep.as_bytes(), 64), 65, "stops past the limit");
        assert!(check_json(deep.as_bytes()).is_err());
        assert!(check_json(br#"{"resourceType":"Patient"}"#).is_ok());
    }

    #[test]
    fn xml_depth_counts_elements() {
        let xml = br#"<?xml version="1.0"?><!-- <a><a> --><Patient xmlns="x"><name><family value="a>b"/></name><text><div><![CDATA[<p><p>]]><br/></div></text></Patient>"#;
        assert_eq!(xml_depth(xml, 100), 3);
        let deep = "<extension url='u'>".repeat(5_000);
        assert_eq!(xml_depth(deep.as_bytes(), 40), 41);
        assert!(check_xml(deep.as_bytes()).is_err());
        assert_eq!(xml_depth(b"<a", 40), 0, "malformed text is the parser's");
    }
}
