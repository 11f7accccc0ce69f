//! Query strings: `application/x-www-form-urlencoded` requests read into
//! parameter pairs (search requests, `_search` bodies, conditional criteria), and
//! the links of result pages written back. Pure: no I/O.

/// The types a system search names in `_type` (comma-separated, repeatable),
/// as written; none when it names none.
pub fn listed_types(params: &[(String, String)]) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| k == "_type")
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Parses an `application/x-www-form-urlencoded` string (a query string, a
/// `_search` form body, the criteria of a conditional request).
pub fn parse_form(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Conditional criteria, written `identifier=x` or `Patient?identifier=x`.
pub fn parse_criteria(text: &str) -> Vec<(String, String)> {
    parse_form(text.split_once('?').map_or(text, |(_, q)| q))
}

/// What to escape in a query component: all but the unreserved characters of RFC 3986.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// The URL of a page of results: `path` under `base` with the parameters `keep`,
/// then `extra` (a cursor), percent-encoded.
pub fn page_url(
    base: &str,
    path: &str,
    keep: &[(String, String)],
    extra: &[(&str, String)],
) -> String {
    let encode = |s: &str| percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string();
    let mut pairs: Vec<String> = keep
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    pairs.extend(extra.iter().map(|(k, v)| format!("{k}={}", encode(v))));
    if pairs.is_empty() {
        format!("{base}{path}")
    } else {
        format!("{base}{path}?{}", pairs.join("&"))
    }
}
