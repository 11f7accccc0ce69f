//! Content negotiation: which format a request body is in (`Content-Type`) and which
//! one the client wants back (`_format`, then `Accept`). Pure.

use crate::error::{FhirError, FhirResult};
use crate::fhir::Format;

/// The chosen response format and the media type to label it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub format: Format,
    pub mime: &'static str,
}

impl Default for Negotiated {
    fn default() -> Self {
        Negotiated {
            format: Format::Json,
            mime: "application/fhir+json",
        }
    }
}

/// Maps a media type or `_format` value (parameters stripped) to a format.
fn lookup(media: &str) -> Option<Negotiated> {
    let media = media
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let (format, mime) = match media.as_str() {
        "json" | "application/fhir+json" | "application/json+fhir" => {
            (Format::Json, "application/fhir+json")
        }
        "application/json" => (Format::Json, "application/json"),
        "*/*" | "application/*" => (Format::Json, "application/fhir+json"),
        "xml" | "application/fhir+xml" | "application/xml+fhir" => {
            (Format::Xml, "application/fhir+xml")
        }
        "application/xml" => (Format::Xml, "application/xml"),
        "text/xml" => (Format::Xml, "text/xml"),
        _ => return None,
    };
    Some(Negotiated { format, mime })
}

/// The response format from `_format` (which wins) or `Accept`.
pub fn response_format(format_param: Option<&str>, accept: Option<&str>) -> FhirResult<Negotiated> {
    if let Some(value) = format_param {
        return lookup(value).ok_or_else(|| {
            FhirError::NotAcceptable(format!("_format '{value}' is not supported (json or xml)"))
        });
    }
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(Negotiated::default());
    };
    let mut ranges: Vec<(f32, usize, &str)> = accept
        .split(',')
        .enumerate()
        .map(|(i, range)| {
            let q = range
                .split(';')
                .skip(1)
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (q, i, range)
        })
        .filter(|(q, _, _)| *q > 0.0)
        .collect();
    // Highest quality first; the client's order breaks ties.
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranges
        .iter()
        .find_map(|(_, _, range)| lookup(range))
        .ok_or_else(|| {
            FhirError::NotAcceptable(format!(
                "none of the accepted media types ({accept}) is supported: use application/fhir+json or application/fhir+xml"
            ))
        })
}

/// The format of a request body from its `Content-Type`; without one, the body's
/// first character decides.
pub fn request_format(content_type: Option<&str>, body: &[u8]) -> FhirResult<Format> {
    let Some(content_type) = content_type.filter(|c| !c.trim().is_empty()) else {
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        return Ok(if first == Some(&b'<') {
            Format::Xml
        } else {
            Format::Json
        });
    };
    let charset_ok = content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.trim().strip_prefix("charset="))
        .all(|c| c.trim_matches('"').eq_ignore_ascii_case("utf-8"));
    match lookup(content_type) {
        Some(n) if charset_ok && !content_type.trim_start().starts_with('*') => Ok(n.format),
        _ => Err(FhirError::UnsupportedMediaType(format!(
            "Content-Type '{content_type}' is not supported: use application/fhir+json or application/fhir+xml (UTF-8)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_param_wins_over_accept() {
        let n = response_format(Some("xml"), Some("application/fhir+json")).expect("xml");
        assert_eq!(n.format, Format::Xml);
        assert!(response_format(Some("html"), None).is_err());
    }

    #[test]
    fn accept_with_quality() {
        let n = response_format(
            None,
            Some("application/fhir+json;q=0.5, application/fhir+xml"),
        )
        .expect("q");
        assert_eq!(n.format, Format::Xml);
        let browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert_eq!(
            response_format(None, Some(browser)).expect("browser").mime,
            "application/xml"
        );
        assert_eq!(
            response_format(None, Some("text/html"))
                .expect_err("406")
                .status(),
            406
        );
        assert_eq!(
            response_format(None, None).expect("default").format,
            Format::Json
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(
            request_format(Some("application/fhir+json; charset=UTF-8"), b"{}").expect("json"),
            Format::Json
        );
        assert_eq!(
            request_format(Some("application/xml"), b"<x/>").expect("xml"),
            Format::Xml
        );
        assert_eq!(
            request_format(None, b"  <Patient/>").expect("sniff"),
            Format::Xml
        );
        assert_eq!(
            request_format(Some("text/plain"), b"{}")
                .expect_err("415")
                .status(),
            415
        );
        assert_eq!(
            request_format(Some("application/fhir+json; charset=latin1"), b"{}")
                .expect_err("415")
                .status(),
            415
        );
    }
}
