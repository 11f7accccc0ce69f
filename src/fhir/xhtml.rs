//! A narrative's XHTML (`Narrative.div`) held to what R4 allows: `txt-1` (the
//! basic HTML formatting elements and attributes only, no scripts, forms,
//! frames or event handlers) and `txt-2` (some non-whitespace content), on a
//! well-formed `div` in the XHTML namespace. The lists are those the HL7
//! validator applies. Pure.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

const XHTML: &[u8] = b"http://www.w3.org/1999/xhtml";

/// The elements a narrative may hold.
const ELEMENTS: &[&str] = &[
    "p",
    "br",
    "div",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "a",
    "span",
    "b",
    "em",
    "i",
    "strong",
    "small",
    "big",
    "tt",
    "dfn",
    "q",
    "var",
    "abbr",
    "acronym",
    "cite",
    "blockquote",
    "hr",
    "address",
    "bdo",
    "kbd",
    "sub",
    "sup",
    "ul",
    "ol",
    "li",
    "dl",
    "dt",
    "dd",
    "pre",
    "table",
    "caption",
    "colgroup",
    "col",
    "thead",
    "tr",
    "tfoot",
    "tbody",
    "th",
    "td",
    "code",
    "samp",
    "img",
    "map",
    "area",
];

/// The attributes any of them may carry.
const ATTRIBUTES: &[&str] = &[
    "title",
    "style",
    "class",
    "id",
    "lang",
    "xml:lang",
    "dir",
    "accesskey",
    "tabindex",
    "span",
    "width",
    "align",
    "valign",
    "char",
    "charoff",
    "abbr",
    "axis",
    "headers",
    "scope",
    "rowspan",
    "colspan",
];

/// The attributes some of them may carry besides (`element.attribute`).
const ELEMENT_ATTRIBUTES: &[&str] = &[
    "a.href",
    "a.name",
    "a.title",
    "a.type",
    "a.rel",
    "a.rev",
    "a.hreflang",
    "a.charset",
    "a.coords",
    "a.shape",
    "img.src",
    "img.border",
    "img.alt",
    "img.height",
    "img.usemap",
    "img.ismap",
    "img.width",
    "img.longdesc",
    "div.xmlns",
    "blockquote.cite",
    "q.cite",
    "map.name",
    "area.href",
    "area.alt",
    "area.shape",
    "area.coords",
    "area.nohref",
    "table.summary",
    "table.frame",
    "table.rules",
    "table.border",
    "table.cellspacing",
    "table.cellpadding",
    "pre.space",
    "td.nowrap",
];

/// What is wrong with a narrative's XHTML, each with the invariant it breaks;
/// none when nothing is.
pub fn problems(div: &str) -> Vec<String> {
    let mut reader = Reader::from_str(div);
    reader.check_end_names(true);
    let mut problems = Vec::new();
    let (mut depth, mut roots, mut content) = (0usize, 0usize, false);
    loop {
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) => {
                problems.push(format!(
                    "txt-1: the narrative is not well-formed XHTML ({e})"
                ));
                return problems;
            }
        };
        let (element, opens) = match &event {
            Event::Start(e) => (Some(e), true),
            Event::Empty(e) => (Some(e), false),
            _ => (None, false),
        };
        if let Some(e) = element {
            if depth == 0 {
                roots += 1;
                match roots {
                    1 => root_problems(e, &mut problems),
                    2 => problems
                        .push("txt-1: the narrative has more than one root element".to_owned()),
                    _ => {}
                }
            }
            element_problems(e, &mut problems);
            content |= e.name().as_ref() == b"img";
            depth += usize::from(opens);
            continue;
        }
        match event {
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(text) if text.iter().any(|b| !b.is_ascii_whitespace()) => {
                if depth == 0 {
                    problems.push("txt-1: the narrative has text outside its div".to_owned());
                }
                content = true;
            }
            Event::CData(_) => content = true,
            Event::Eof => break,
            _ => {}
        }
    }
    if roots == 0 {
        problems.push("txt-1: the narrative has no div".to_owned());
    } else if !content {
        problems.push("txt-2: the narrative has no content but white space".to_owned());
    }
    problems
}

/// The root: a `div` in the XHTML namespace.
fn root_problems(root: &BytesStart<'_>, problems: &mut Vec<String>) {
    if root.name().as_ref() != b"div" {
        problems.push(format!(
            "txt-1: the narrative's root is <{}>, not a div",
            String::from_utf8_lossy(root.name().as_ref())
        ));
    }
    let namespace = root
        .attributes()
        .flatten()
        .find(|a| a.key.as_ref() == b"xmlns")
        .map(|a| a.value.into_owned());
    if namespace.as_deref() != Some(XHTML) {
        problems.push(
            "txt-1: the narrative's div is not in the XHTML namespace (xmlns=\"http://www.w3.org/1999/xhtml\")"
                .to_owned(),
        );
    }
}

/// An element, and its attributes, among those a narrative may hold.
fn element_problems(element: &BytesStart<'_>, problems: &mut Vec<String>) {
    let name = String::from_utf8_lossy(element.name().as_ref()).into_owned();
    if !ELEMENTS.contains(&name.as_str()) {
        problems.push(format!(
            "txt-1: the element <{name}> is not allowed in a narrative"
        ));
    }
    for attribute in element.attributes().with_checks(false) {
        let Ok(attribute) = attribute else {
            problems.push(format!(
                "txt-1: an attribute of <{name}> is not well-formed"
            ));
            continue;
        };
        let key = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
        if !ATTRIBUTES.contains(&key.as_str())
            && !ELEMENT_ATTRIBUTES.contains(&format!("{name}.{key}").as_str())
        {
            problems.push(format!(
                "txt-1: the attribute {key} is not allowed on <{name}> in a narrative"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: &str = r#"<div xmlns="http://www.w3.org/1999/xhtml">"#;

    fn of(inner: &str) -> Vec<String> {
        problems(&format!("{OPEN}{inner}</div>"))
    }

    #[test]
    fn basic_formatting_passes() {
        assert_eq!(of("<p><b>Mme</b> Durand</p>"), Vec::<String>::new());
        assert!(of(r#"<table border="1"><tr><td colspan="2">x</td></tr></table>"#).is_empty());
        assert!(
            of(r#"<a href="https://ans.fr">ANS</a> &amp; <img src="x.png" alt="x"/>"#).is_empty()
        );
        assert!(of("Texte &nbsp; libre<br/>suite").is_empty());
    }

    #[test]
    fn scripts_handlers_and_malformed_markup_fail() {
        let one = |inner: &str, wanted: &str| {
            let found = of(inner);
            assert_eq!(found.len(), 1, "{inner}: {found:?}");
            assert!(found[0].contains(wanted), "{inner}: {found:?}");
        };
        one("<script>alert(1)</script>", "<script>");
        one(r#"<p onclick="x()">a</p>"#, "onclick");
        one(r#"<img src="x" onerror="x()"/>"#, "onerror");
        one("<iframe>a</iframe>", "<iframe>");
        one("<p>a", "not well-formed");
        one("<p>a</b>", "not well-formed");
        assert_eq!(
            problems("<div>a</div>"),
            ["txt-1: the narrative's div is not in the XHTML namespace (xmlns=\"http://www.w3.org/1999/xhtml\")"]
        );
        assert!(
            problems(r#"<p xmlns="http://www.w3.org/1999/xhtml">a</p>"#)[0].contains("not a div")
        );
        assert!(problems(&format!("{OPEN}a</div><div>b</div>"))
            .iter()
            .any(|p| p.contains("more than one root")));
        assert!(problems("").iter().any(|p| p.contains("no div")));
    }

    #[test]
    fn a_narrative_has_content() {
        assert_eq!(
            of("  <p> </p> "),
            ["txt-2: the narrative has no content but white space"]
        );
        assert!(of(r#"<img src="x.png"/>"#).is_empty());
    }
}
