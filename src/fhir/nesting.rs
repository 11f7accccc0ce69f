//! How deeply a body nests, found by one flat scan before any recursive parser
//! (serde_json, fhirbolt, the validator) sees it: a recursive parser given a
//! thousand levels would overflow the stack and abort the process.

use crate::error::{FhirError, Issue};
use crate::limits::{MAX_ARRAY_ITEMS, MAX_JSON_DEPTH, MAX_XML_DEPTH};

fn too_costly(message: String) -> FhirError {
    FhirError::BadRequest(vec![Issue::new("too-costly", message)])
}

/// What a flat scan tells of a body before it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Deepest nesting (JSON objects and arrays, or XML elements).
    pub depth: usize,
    /// Most items in one array (JSON) or children of one element (XML), a
    /// Bundle's (or List's) top-level `entry` aside: a Bundle is read one entry at
    /// a time.
    pub widest: usize,
}

/// The [`Shape`] of JSON text (strings skipped); stops once the depth passes
/// `limit`. Malformed text is left to the parser.
pub fn json_shape(text: &[u8], limit: usize) -> Shape {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut widest = 0usize;
    // Items so far of each open container (`None`: an object, or an exempt array).
    let mut items: Vec<Option<usize>> = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    let mut string_start = 0;
    let mut last_string = (0, 0);
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    last_string = (string_start, i);
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    break;
                }
                let exempt = depth == 2 && &text[last_string.0..last_string.1] == b"entry";
                items.push((b == b'[' && !exempt).then_some(1));
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                items.pop();
            }
            b',' => {
                if let Some(Some(n)) = items.last_mut() {
                    *n += 1;
                    widest = widest.max(*n);
                }
            }
            _ => {}
        }
    }
    Shape {
        depth: deepest,
        widest,
    }
}

/// The [`Shape`] of XML text; stops once the depth passes `limit`. Comments,
/// CDATA sections, processing instructions and declarations are skipped; quoted
/// attribute values may hold `>`. Malformed text is left to the parser.
pub fn xml_shape(text: &[u8], limit: usize) -> Shape {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut widest = 0usize;
    // Children so far of each open element.
    let mut children: Vec<usize> = Vec::new();
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
            children.pop();
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
            if end >= text.len() {
                break;
            }
            let name_end = text[start + 1..end]
                .iter()
                .position(|b| b.is_ascii_whitespace() || *b == b'/')
                .map_or(end, |p| start + 1 + p);
            let exempt = depth == 1 && &text[start + 1..name_end] == b"entry";
            if let Some(n) = children.last_mut().filter(|_| !exempt) {
                *n += 1;
                widest = widest.max(*n);
            }
            if text[end - 1] != b'/' {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    break;
                }
                children.push(0);
            }
            i = end + 1;
        }
        if i >= text.len() {
            break;
        }
    }
    Shape {
        depth: deepest,
        widest,
    }
}

/// Refuses a JSON body nested beyond [`MAX_JSON_DEPTH`] or with an array of more
/// than [`MAX_ARRAY_ITEMS`].
pub fn check_json(text: &[u8]) -> Result<(), FhirError> {
    check(
        json_shape(text, MAX_JSON_DEPTH),
        "objects and arrays",
        MAX_JSON_DEPTH,
    )
}

/// Refuses an XML body nested beyond [`MAX_XML_DEPTH`] or with an element of more
/// than [`MAX_ARRAY_ITEMS`] children.
pub fn check_xml(text: &[u8]) -> Result<(), FhirError> {
    check(xml_shape(text, MAX_XML_DEPTH), "elements", MAX_XML_DEPTH)
}

fn check(shape: Shape, what: &str, limit: usize) -> Result<(), FhirError> {
    if shape.depth > limit {
        return Err(too_costly(format!(
            "the body nests {what} more than {limit} levels deep"
        )));
    }
    if shape.widest > MAX_ARRAY_ITEMS {
        return Err(too_costly(format!(
            "the body repeats an element more than {MAX_ARRAY_ITEMS} times"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_counts_containers_not_strings() {
        assert_eq!(json_shape(br#"{"a":[{"b":"[[[{{{"}]}"#, 100).depth, 3);
        assert_eq!(json_shape(br#"{"a":"\"[[","b":{}}"#, 100).depth, 2);
        assert_eq!(json_shape(b"5", 100).depth, 0);
        let deep = "[".repeat(10_000);
        assert_eq!(
            json_shape(deep.as_bytes(), 64).depth,
            65,
            "stops past the limit"
        );
        assert!(check_json(deep.as_bytes()).is_err());
        assert!(check_json(br#"{"resourceType":"Patient"}"#).is_ok());
    }

    #[test]
    fn xml_depth_counts_elements() {
        let xml = br#"<?xml version="1.0"?><!-- <a><a> --><Patient xmlns="x"><name><family value="a>b"/></name><text><div><![CDATA[<p><p>]]><br/></div></text></Patient>"#;
        assert_eq!(xml_shape(xml, 100).depth, 3);
        let deep = "<extension url='u'>".repeat(5_000);
        assert_eq!(xml_shape(deep.as_bytes(), 40).depth, 41);
        assert!(check_xml(deep.as_bytes()).is_err());
        assert_eq!(
            xml_shape(b"<a", 40).depth,
            0,
            "malformed text is the parser's"
        );
    }

    #[test]
    fn arrays_are_bounded_but_a_bundles_entries_are_not() {
        let wide = |key: &str, n: usize| {
            let items = vec![r#"{"value":"1"}"#; n].join(",");
            format!(r#"{{"resourceType":"X","{key}":[{items}]}}"#)
        };
        assert_eq!(json_shape(wide("identifier", 5).as_bytes(), 64).widest, 5);
        assert!(check_json(wide("identifier", 10_000).as_bytes()).is_ok());
        assert!(check_json(wide("identifier", 10_001).as_bytes()).is_err());
        assert!(check_json(wide("entry", 40_000).as_bytes()).is_ok());
        let nested = format!(r#"{{"a":{{"entry":[{}]}}}}"#, vec!["1"; 10_001].join(","));
        assert!(
            check_json(nested.as_bytes()).is_err(),
            "only the top-level entry"
        );
        let xml = |name: &str, n: usize| {
            format!(
                "<Bundle xmlns='x'>{}</Bundle>",
                format!("<{name}><a/></{name}>").repeat(n)
            )
        };
        assert_eq!(xml_shape(xml("identifier", 3).as_bytes(), 40).widest, 3);
        assert!(check_xml(xml("identifier", 10_001).as_bytes()).is_err());
        assert!(check_xml(xml("entry", 10_001).as_bytes()).is_ok());
    }
}
