//! R4 XML in and out, through fhirbolt's typed model (`fhir_codec`), keeping what
//! fhirbolt would change: it refuses an XML declaration that names UTF-8 in any
//! case but upper (XML names encodings case-insensitively), trims the white space
//! of narrative XHTML on the way in and out, and always indents. What is stored and
//! returned is what came in.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use fhir_codec::CodecError;

const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// Parses R4 XML into its JSON form, narratives as written.
pub fn to_json(xml: &[u8]) -> Result<Value, CodecError> {
    // fhirbolt unwraps its UTF-8 decoding: a stray byte would panic in it.
    std::str::from_utf8(xml).map_err(|e| CodecError(format!("the XML is not UTF-8: {e}")))?;
    let xml = without_utf8_declaration(xml)?;
    let raw_divs = xhtml_divs(xml);
    let mut json = unpanicked(|| fhir_codec::xml_to_json(xml))?;
    restore_divs(&mut json, &mut Originals::new(raw_divs));
    Ok(json)
}

/// Writes an R4 JSON resource (text) as XML, indented when `pretty`, narratives
/// as stored.
pub fn from_json(json: &str, pretty: bool) -> Result<Vec<u8>, CodecError> {
    let written = unpanicked(|| fhir_codec::json_to_xml(json.as_bytes()))?;
    let mut text = String::from_utf8(written).map_err(|e| CodecError(e.to_string()))?;
    if !pretty {
        text = compact(&text);
    }
    if !json.contains("\"div\"") {
        return Ok(text.into_bytes());
    }
    let value: Value = serde_json::from_str(json).map_err(|e| CodecError(e.to_string()))?;
    let mut stored = Vec::new();
    collect_divs(&value, &mut stored);
    let mut stored = Originals::new(stored);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    for written_div in xhtml_divs(text.as_bytes()) {
        // The slices come from `text`: find where this one starts in `rest`.
        let start = written_div.as_ptr() as usize - rest.as_ptr() as usize;
        out.push_str(&rest[..start]);
        out.push_str(stored.take(written_div).unwrap_or(written_div));
        rest = &rest[start + written_div.len()..];
    }
    out.push_str(rest);
    Ok(out.into_bytes())
}

/// fhirbolt is unmaintained and unwraps in places (the fuzzer found one): a panic
/// there is the input's fault, answered as a codec error, never a dropped
/// connection.
fn unpanicked<T>(
    codec: impl FnOnce() -> Result<T, CodecError> + std::panic::UnwindSafe,
) -> Result<T, CodecError> {
    std::panic::catch_unwind(codec).unwrap_or_else(|_| {
        Err(CodecError(
            "the XML codec could not read this input".to_owned(),
        ))
    })
}

/// Drops a leading `<?xml …?>` declaration whose encoding is UTF-8 in any case
/// (or absent); any other encoding is refused.
fn without_utf8_declaration(xml: &[u8]) -> Result<&[u8], CodecError> {
    let start = xml
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    let body = &xml[start..];
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    if !body.starts_with(b"<?xml") {
        return Ok(xml);
    }
    let Some(end) = body.windows(2).position(|w| w == b"?>") else {
        return Ok(xml);
    };
    let declaration = String::from_utf8_lossy(&body[..end]).to_ascii_lowercase();
    if let Some((_, after)) = declaration.split_once("encoding") {
        let name: String = after
            .trim_start()
            .trim_start_matches('=')
            .trim_start()
            .chars()
            .skip(1)
            .take_while(|c| *c != '"' && *c != '\'')
            .collect();
        if name != "utf-8" && name != "utf8" {
            return Err(CodecError(format!(
                "invalid XML encoding '{name}' (only UTF-8 is accepted)"
            )));
        }
    }
    Ok(&body[end + 2..])
}

/// The XHTML `div` elements of a document, outermost ones, in document order, as
/// written (comments and CDATA skipped when matching tags).
fn xhtml_divs(xml: &[u8]) -> Vec<&str> {
    let Ok(text) = std::str::from_utf8(xml) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(offset) = text[from..].find("<div") {
        let start = from + offset;
        let Some(head_end) = tag_end(text, start) else {
            break;
        };
        let head = &text[start..=head_end];
        let is_div =
            head[4..].starts_with(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/');
        if !is_div || !head.contains(XHTML_NS) {
            // Past this tag, not just past `<div`: scanning to its end again from
            // each `<div` inside it would be quadratic.
            from = head_end + 1;
            continue;
        }
        let end = if head.ends_with("/>") {
            Some(head_end + 1)
        } else {
            matching_close(text, head_end + 1)
        };
        let Some(end) = end else {
            break;
        };
        found.push(&text[start..end]);
        from = end;
    }
    found
}

/// Where the tag opened at `start` ends (its `>`), outside quoted values.
fn tag_end(text: &str, start: usize) -> Option<usize> {
    let mut quote = None;
    for (i, c) in text[start..].char_indices() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '>') => return Some(start + i),
            _ => {}
        }
    }
    None
}

/// The end (exclusive) of the `</div>` that closes a div whose content starts at
/// `from`.
fn matching_close(text: &str, from: usize) -> Option<usize> {
    let mut depth = 1usize;
    let mut i = from;
    while let Some(offset) = text[i..].find('<') {
        let at = i + offset;
        let rest = &text[at..];
        if rest.starts_with("<!--") {
            i = at + rest.find("-->")? + 3;
        } else if rest.starts_with("<![CDATA[") {
            i = at + rest.find("]]>")? + 3;
        } else if rest.starts_with("</div") {
            let end = tag_end(text, at)?;
            depth -= 1;
            if depth == 0 {
                return Some(end + 1);
            }
            i = end + 1;
        } else {
            let end = tag_end(text, at)?;
            let tag = &text[at..=end];
            let opens_div = tag[1..].starts_with("div")
                && tag[4..].starts_with(|c: char| c.is_ascii_whitespace() || c == '>' || c == '/');
            if opens_div && !tag.ends_with("/>") {
                depth += 1;
            }
            i = end + 1;
        }
    }
    None
}

/// Divs as written, found by their markup: how fhirbolt's rewriting of a div is
/// recognised (the same text once white space is removed and quotes made alike).
/// Each is handed out once, first written first.
struct Originals<'a>(HashMap<String, VecDeque<&'a str>>);

impl<'a> Originals<'a> {
    fn new(divs: impl IntoIterator<Item = &'a str>) -> Self {
        let mut by_markup: HashMap<String, VecDeque<&'a str>> = HashMap::new();
        for div in divs {
            by_markup.entry(markup(div)).or_default().push_back(div);
        }
        Originals(by_markup)
    }

    /// The first unused original with the same markup as `div`.
    fn take(&mut self, div: &str) -> Option<&'a str> {
        self.0.get_mut(&markup(div))?.pop_front()
    }
}

fn markup(div: &str) -> String {
    div.chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| if c == '\'' { '"' } else { c })
        .collect()
}

/// Puts back, in every Narrative of `json`, the div as written in the XML.
fn restore_divs(json: &mut Value, raw: &mut Originals<'_>) {
    match json {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(div) if key == "div" => {
                        if let Some(original) = raw.take(div) {
                            *div = original.to_owned();
                        }
                    }
                    other => restore_divs(other, raw),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| restore_divs(v, raw)),
        _ => {}
    }
}

/// The Narrative divs of a JSON resource.
fn collect_divs<'a>(json: &'a Value, out: &mut Vec<&'a str>) {
    match json {
        Value::Object(map) => {
            for (key, value) in map {
                match value {
                    Value::String(div) if key == "div" => out.push(div),
                    other => collect_divs(other, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_divs(v, out)),
        _ => {}
    }
}

/// fhirbolt's indented XML without the indentation: white space between tags is
/// never content in FHIR XML outside narratives, which are put back afterwards.
fn compact(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut pending = String::new();
    let mut after_tag = false;
    for c in xml.chars() {
        if after_tag && c.is_whitespace() {
            pending.push(c);
            continue;
        }
        if c != '<' {
            out.push_str(&pending);
        }
        pending.clear();
        out.push(c);
        after_tag = c == '>';
    }
    out.push_str(&pending);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NARRATIVE: &str = r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>40 mg <b>le matin</b>, <i>puis</i>  20 mg</p>
  <div>au coucher</div></div>"#;

    fn patient_xml(declaration: &str) -> String {
        format!(
            r#"{declaration}<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>{NARRATIVE}</text><active value="true"/></Patient>"#
        )
    }

    #[test]
    fn declarations_name_utf8_in_any_case() {
        for declaration in [
            "",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
            "<?xml version='1.0' encoding='utf-8'?>\n",
            "<?xml version=\"1.0\"?>",
        ] {
            let json = to_json(patient_xml(declaration).as_bytes()).expect(declaration);
            assert_eq!(json["active"], true);
        }
        let latin1 = patient_xml("<?xml version='1.0' encoding='ISO-8859-1'?>");
        assert!(to_json(latin1.as_bytes()).is_err());
    }

    #[test]
    fn narrative_white_space_is_kept_both_ways() {
        let json = to_json(patient_xml("").as_bytes()).expect("parse");
        assert_eq!(json["text"]["div"], NARRATIVE);
        for pretty in [false, true] {
            let written = from_json(&json.to_string(), pretty).expect("write");
            let xml = String::from_utf8(written).expect("utf8");
            assert!(xml.contains(NARRATIVE), "{xml}");
            assert_eq!(xml.contains("\n  <active"), pretty, "{xml}");
            assert_eq!(to_json(xml.as_bytes()).expect("again"), json);
        }
    }

    #[test]
    fn many_div_lookalikes_are_scanned_once() {
        // Each `<div` not an XHTML div must not restart a scan to the one `>`.
        let text = format!("{}>", "<div".repeat(250_000));
        assert!(xhtml_divs(text.as_bytes()).is_empty());
    }

    #[test]
    fn divs_are_found_outermost_and_in_order() {
        let xml = r#"<a><div xmlns="http://www.w3.org/1999/xhtml"><div>x</div><!-- </div> --></div><b/><div xmlns='http://www.w3.org/1999/xhtml'/></a>"#;
        let divs = xhtml_divs(xml.as_bytes());
        assert_eq!(divs.len(), 2);
        assert!(divs[0].ends_with("--></div>"));
        assert_eq!(divs[1], "<div xmlns='http://www.w3.org/1999/xhtml'/>");
    }
}
