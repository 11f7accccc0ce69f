//! Index rows extracted from a resource at write time, for every search parameter
//! of its type, and stored in the same transaction as the resource. Pure.

use serde_json::Value;

use super::params::{ParamTable, ParamType, SearchParam, COLUMN_PARAMS};
use crate::fhir::datetime;
use crate::fhir::fhirpath::{self, Node};
use crate::limits::MAX_INDEXED_BYTES;

/// Open ends of periods and ranges: inside PostgreSQL's timestamptz range.
pub fn far_past() -> chrono::DateTime<chrono::Utc> {
    datetime::parse_range("0001")
        .map(|r| r.low)
        .unwrap_or_default()
}

pub fn far_future() -> chrono::DateTime<chrono::Utc> {
    datetime::parse_range("9999")
        .map(|r| r.high)
        .unwrap_or_default()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringRow {
    pub param: String,
    /// Lower case without accents: what the default (prefix) search compares.
    pub normalized: String,
    pub exact: String,
    /// Which element of a composite parameter the row comes from (0: none).
    pub grp: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub param: String,
    pub system: Option<String>,
    pub code: Option<String>,
    /// Normalised display or text, for `:text`.
    pub text: Option<String>,
    /// Which element of a composite parameter the row comes from (0: none).
    pub grp: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceRow {
    pub param: String,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    /// Absolute or canonical URL, as written.
    pub url: Option<String>,
    /// `Reference.identifier`, for `:identifier`.
    pub identifier_system: Option<String>,
    pub identifier_value: Option<String>,
    /// Which element of a composite parameter the row comes from (0: none).
    pub grp: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateRow {
    pub param: String,
    pub low: chrono::DateTime<chrono::Utc>,
    pub high: chrono::DateTime<chrono::Utc>,
    /// Which element of a composite parameter the row comes from (0: none).
    pub grp: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberRow {
    pub param: String,
    /// The decimal as written (PostgreSQL casts it to numeric).
    pub value: String,
    /// Which element of a composite parameter the row comes from (0: none).
    pub grp: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityRow {
    pub param: String,
    pub value: String,
    pub system: Option<String>,
    pub code: Option<String>,
    pub unit: Option<String>,
    /// Which element of a composite parameter the row comes from (0: none).
    pub grp: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriRow {
    pub param: String,
    pub uri: String,
    /// Which element of a composite parameter the row comes from (0: none).
    pub grp: i32,
}

/// A member of a patient's care circle that a resource names (filled by the
/// write path from `coordination::access`, not by the search parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CircleRow {
    pub patient_id: String,
    pub member_type: String,
    pub member_id: String,
    /// `None`: while the resource says so.
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every index row of one resource.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IndexRows {
    pub circle: Vec<CircleRow>,
    pub strings: Vec<StringRow>,
    pub tokens: Vec<TokenRow>,
    pub references: Vec<ReferenceRow>,
    pub dates: Vec<DateRow>,
    pub numbers: Vec<NumberRow>,
    pub quantities: Vec<QuantityRow>,
    pub uris: Vec<UriRow>,
}

/// The part of a value that the search index keeps: its first
/// [`MAX_INDEXED_BYTES`] bytes (cut at a character boundary). A b-tree entry
/// holds at most about 2.7 kB, and a search value is cut the same way, so that a
/// longer value is still stored whole in the resource and found by its beginning.
pub fn bounded(text: &str) -> &str {
    if text.len() <= MAX_INDEXED_BYTES {
        return text;
    }
    let mut end = MAX_INDEXED_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn bound(text: &mut String) {
    let len = bounded(text).len();
    text.truncate(len);
}

fn bound_opt(text: &mut Option<String>) {
    if let Some(text) = text {
        bound(text);
    }
}

/// Lower case, accents removed (`Lefèvre` → `lefevre`, `Œuvre` → `oeuvre`, and
/// `e` followed by a combining accent → `e`): how string parameters are compared
/// by default. Letters are decomposed (Unicode NFD) and their marks dropped; the
/// few letters that do not decompose are spelt out. Bounded like every indexed
/// value ([`bounded`]).
pub fn normalize(text: &str) -> String {
    use unicode_normalization::char::is_combining_mark;
    use unicode_normalization::UnicodeNormalization;
    let mut out = String::with_capacity(text.len());
    for c in text.nfd().flat_map(char::to_lowercase) {
        match c {
            _ if is_combining_mark(c) => {}
            'œ' => out.push_str("oe"),
            'æ' => out.push_str("ae"),
            'ß' => out.push_str("ss"),
            'ø' => out.push('o'),
            'đ' => out.push('d'),
            'ł' => out.push('l'),
            'ı' => out.push('i'),
            _ => out.push(c),
        }
    }
    bound(&mut out);
    out
}

fn text_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn owned(v: &Value, key: &str) -> Option<String> {
    text_of(v, key).map(str::to_owned)
}

/// Strings of a node, for string parameters.
fn strings_of(node: &Node<'_>) -> Vec<String> {
    let v = node.value;
    let pick = |keys: &[&str]| -> Vec<String> {
        keys.iter()
            .filter_map(|k| v.get(*k))
            .flat_map(|x| match x {
                Value::Array(items) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                other => other
                    .as_str()
                    .map(str::to_owned)
                    .into_iter()
                    .collect::<Vec<_>>(),
            })
            .collect()
    };
    match node.type_code.as_str() {
        "HumanName" => pick(&["family", "given", "prefix", "suffix", "text"]),
        "Address" => pick(&[
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
            "text",
        ]),
        _ => v.as_str().map(str::to_owned).into_iter().collect(),
    }
}

fn tokens_of(param: &str, node: &Node<'_>, out: &mut Vec<TokenRow>) {
    let mut token = |system: Option<String>, code: Option<String>, text: Option<&str>| {
        if system.is_some() || code.is_some() || text.is_some() {
            out.push(TokenRow {
                param: param.to_owned(),
                grp: 0,
                system,
                code,
                text: text.map(normalize),
            });
        }
    };
    let v = node.value;
    match node.type_code.as_str() {
        "Coding" => token(owned(v, "system"), owned(v, "code"), text_of(v, "display")),
        "CodeableConcept" => {
            for coding in v
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                token(
                    owned(coding, "system"),
                    owned(coding, "code"),
                    text_of(coding, "display"),
                );
            }
            token(None, None, text_of(v, "text"));
        }
        "Identifier" => {
            let type_text = v.get("type").and_then(|t| text_of(t, "text"));
            token(owned(v, "system"), owned(v, "value"), type_text);
            // `:of-type`: one row per type coding, `type-code|value` under `param:of-type`.
            let codings = v
                .get("type")
                .and_then(|t| t.get("coding"))
                .and_then(Value::as_array);
            if let Some(value) = text_of(v, "value") {
                for coding in codings.into_iter().flatten() {
                    out.push(TokenRow {
                        param: format!("{param}:of-type"),
                        grp: 0,
                        system: owned(coding, "system"),
                        code: text_of(coding, "code").map(|c| format!("{c}|{value}")),
                        text: None,
                    });
                }
            }
        }
        "ContactPoint" => token(owned(v, "system"), owned(v, "value"), None),
        "boolean" => token(None, v.as_bool().map(|b| b.to_string()), None),
        _ => token(None, v.as_str().map(str::to_owned), None),
    }
}

/// Splits `Type/id` or `[base]/Type/id[/_history/v]` into its type and id.
pub fn split_reference(reference: &str) -> Option<(&str, &str)> {
    let reference = reference.split("/_history/").next().unwrap_or(reference);
    let mut parts = reference.rsplit('/');
    let id = parts.next().filter(|id| crate::fhir::is_valid_id(id))?;
    let target = parts
        .next()
        .filter(|t| crate::fhir::definitions::R4.is_resource_type(t))?;
    Some((target, id))
}

fn references_of(param: &str, node: &Node<'_>, out: &mut Vec<ReferenceRow>) {
    let v = node.value;
    let mut row = ReferenceRow {
        param: param.to_owned(),
        grp: 0,
        target_type: None,
        target_id: None,
        url: None,
        identifier_system: None,
        identifier_value: None,
    };
    match node.type_code.as_str() {
        "Reference" => {
            if let Some(reference) = text_of(v, "reference").filter(|r| !r.starts_with('#')) {
                if let Some((t, id)) = split_reference(reference) {
                    row.target_type = Some(t.to_owned());
                    row.target_id = Some(id.to_owned());
                }
                if reference.contains(':') {
                    row.url = Some(reference.to_owned());
                }
            }
            if row.target_type.is_none() {
                row.target_type = fhirpath::reference_type(v).map(str::to_owned);
            }
            if let Some(identifier) = v.get("identifier") {
                row.identifier_system = owned(identifier, "system");
                row.identifier_value = owned(identifier, "value");
            }
        }
        _ => row.url = v.as_str().map(str::to_owned),
    }
    if row.target_id.is_some() || row.url.is_some() || row.identifier_value.is_some() {
        out.push(row);
    }
}

fn dates_of(param: &str, node: &Node<'_>, out: &mut Vec<DateRow>) {
    let v = node.value;
    let range_of = |text: Option<&str>| text.and_then(datetime::parse_range);
    let (low, high) = match node.type_code.as_str() {
        "Period" => {
            let start = range_of(text_of(v, "start"));
            let end = range_of(text_of(v, "end"));
            if start.is_none() && end.is_none() {
                return;
            }
            (
                start.map_or_else(far_past, |r| r.low),
                end.map_or_else(far_future, |r| r.high),
            )
        }
        "Timing" => {
            let events: Vec<_> = v
                .get("event")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| range_of(e.as_str()))
                .collect();
            match (
                events.iter().map(|r| r.low).min(),
                events.iter().map(|r| r.high).max(),
            ) {
                (Some(low), Some(high)) => (low, high),
                _ => return,
            }
        }
        _ => match range_of(v.as_str()) {
            Some(r) => (r.low, r.high),
            None => return,
        },
    };
    out.push(DateRow {
        param: param.to_owned(),
        grp: 0,
        low,
        high,
    });
}

fn number_text(v: &Value) -> Option<String> {
    v.as_number().map(|n| n.to_string())
}

fn quantities_of(param: &str, node: &Node<'_>, out: &mut Vec<QuantityRow>) {
    let v = node.value;
    let Some(value) = v.get("value").and_then(number_text) else {
        return;
    };
    let row = if node.type_code == "Money" {
        QuantityRow {
            param: param.to_owned(),
            grp: 0,
            value,
            system: Some("urn:iso:std:iso:4217".to_owned()),
            code: owned(v, "currency"),
            unit: None,
        }
    } else {
        QuantityRow {
            param: param.to_owned(),
            grp: 0,
            value,
            system: owned(v, "system"),
            code: owned(v, "code"),
            unit: owned(v, "unit"),
        }
    };
    out.push(row);
}

impl IndexRows {
    /// Renames every row's parameter and sets its composite group.
    fn regroup(&mut self, param: &str, grp: i32) {
        macro_rules! each {
            ($($field:ident),*) => {$(
                for row in &mut self.$field {
                    row.param = param.to_owned();
                    row.grp = grp;
                }
            )*};
        }
        each!(strings, tokens, references, dates, numbers, quantities, uris);
    }

    fn append(&mut self, mut other: IndexRows) {
        self.strings.append(&mut other.strings);
        self.tokens.append(&mut other.tokens);
        self.references.append(&mut other.references);
        self.dates.append(&mut other.dates);
        self.numbers.append(&mut other.numbers);
        self.quantities.append(&mut other.quantities);
        self.uris.append(&mut other.uris);
    }
}

/// A composite parameter: for the k-th element its expression selects, each
/// component's rows under `code$i`, all with group k (from 1), so that a search can
/// require the components to match in the same element.
fn extract_composite(param: &SearchParam, resource: &Value, rows: &mut IndexRows) {
    let Some(root) = fhirpath::root(resource) else {
        return;
    };
    for (k, element) in fhirpath::evaluate(&param.expression, resource)
        .iter()
        .enumerate()
    {
        for (i, component) in param.components.iter().enumerate() {
            let mut part = IndexRows::default();
            for node in fhirpath::evaluate_from(&component.expression, element, &root) {
                rows_of_node(&component.code, component.kind, &node, &mut part);
            }
            part.regroup(&format!("{}${i}", param.code), k as i32 + 1);
            rows.append(part);
        }
    }
}

fn extract_param(param: &SearchParam, resource: &Value, rows: &mut IndexRows) {
    if param.kind == ParamType::Composite {
        return extract_composite(param, resource, rows);
    }
    if param.truthy {
        // `X.exists() and X != false` (Patient.deceased): one token, true or false.
        let nodes = fhirpath::evaluate(&param.expression, resource);
        let truth = nodes.iter().any(|n| n.value.as_bool() != Some(false));
        rows.tokens.push(TokenRow {
            param: param.code.clone(),
            grp: 0,
            system: None,
            code: Some(truth.to_string()),
            text: None,
        });
        return;
    }
    for node in fhirpath::evaluate(&param.expression, resource) {
        rows_of_node(&param.code, param.kind, &node, rows);
    }
}

/// The rows of one node for a parameter of the given kind.
fn rows_of_node(code: &str, kind: ParamType, node: &Node<'_>, rows: &mut IndexRows) {
    match kind {
        ParamType::String => rows
            .strings
            .extend(strings_of(node).into_iter().map(|s| StringRow {
                param: code.to_owned(),
                grp: 0,
                normalized: normalize(&s),
                exact: s,
            })),
        ParamType::Token => tokens_of(code, node, &mut rows.tokens),
        ParamType::Reference => references_of(code, node, &mut rows.references),
        ParamType::Date => dates_of(code, node, &mut rows.dates),
        ParamType::Number => rows
            .numbers
            .extend(number_text(node.value).map(|value| NumberRow {
                param: code.to_owned(),
                grp: 0,
                value,
            })),
        ParamType::Quantity => quantities_of(code, node, &mut rows.quantities),
        ParamType::Uri => rows.uris.extend(node.value.as_str().map(|u| UriRow {
            param: code.to_owned(),
            grp: 0,
            uri: u.to_owned(),
        })),
        // `near`: the position's latitude and longitude, as numbers of one group.
        ParamType::Special => {
            for (part, key) in [("lat", "latitude"), ("long", "longitude")] {
                rows.numbers
                    .extend(
                        node.value
                            .get(key)
                            .and_then(number_text)
                            .map(|value| NumberRow {
                                param: format!("{code}${part}"),
                                grp: 1,
                                value,
                            }),
                    );
            }
        }
        ParamType::Composite => {}
    }
}

/// The index rows of a resource for every parameter of its type.
pub fn extract(table: &ParamTable, resource_type: &str, resource: &Value) -> IndexRows {
    let mut rows = IndexRows::default();
    for param in table.for_type(resource_type) {
        if !COLUMN_PARAMS.contains(&param.code.as_str()) {
            extract_param(param, resource, &mut rows);
        }
    }
    rows.bound();
    rows
}

impl IndexRows {
    /// Cuts every value that goes into a b-tree to [`bounded`] (`normalized` and
    /// token `text` already are; a string's `exact` is not indexed and stays whole).
    fn bound(&mut self) {
        for t in &mut self.tokens {
            bound_opt(&mut t.system);
            bound_opt(&mut t.code);
        }
        for r in &mut self.references {
            bound_opt(&mut r.target_type);
            bound_opt(&mut r.url);
            bound_opt(&mut r.identifier_system);
            bound_opt(&mut r.identifier_value);
        }
        for q in &mut self.quantities {
            bound_opt(&mut q.system);
            bound_opt(&mut q.code);
            bound_opt(&mut q.unit);
        }
        for u in &mut self.uris {
            bound(&mut u.uri);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_values_are_indexed_by_their_beginning() {
        let prose = "Patiente de 84 ans, insuffisance cardiaque. ".repeat(300);
        let obs = json!({"resourceType":"Observation","status":"final","code":{"text":"note"},
            "valueString": prose,
            "identifier":[{"system":"urn:x","value":"é".repeat(3_000)}]});
        let rows = extract(super::super::params::test_table(), "Observation", &obs);
        let value = rows
            .strings
            .iter()
            .find(|r| r.param == "value-string")
            .expect("row");
        assert_eq!(value.exact, prose, "kept whole");
        assert!(value.normalized.len() <= MAX_INDEXED_BYTES);
        assert!(prose.to_lowercase().starts_with(&value.normalized));
        let id = rows
            .tokens
            .iter()
            .find(|t| t.param == "identifier")
            .expect("row");
        let code = id.code.as_deref().expect("code");
        assert!(code.len() <= MAX_INDEXED_BYTES && code.len() > MAX_INDEXED_BYTES - 4);
        assert!(
            code.chars().all(|c| c == 'é'),
            "cut at a character boundary"
        );
    }

    #[test]
    fn composite_components_may_name_the_resource() {
        let seq = json!({"resourceType":"MolecularSequence","coordinateSystem":0,
            "referenceSeq":{"chromosome":{"coding":[{"code":"1"}]}},
            "variant":[{"start":100,"end":101},{"start":200,"end":201}]});
        let rows = extract(
            super::super::params::test_table(),
            "MolecularSequence",
            &seq,
        );
        let chromosome: Vec<i32> = rows
            .tokens
            .iter()
            .filter(|t| t.param == "chromosome-variant-coordinate$0")
            .map(|t| t.grp)
            .collect();
        assert_eq!(
            chromosome,
            [1, 2],
            "%resource.referenceSeq.chromosome for each variant"
        );
        assert!(rows
            .numbers
            .iter()
            .any(|n| n.param == "chromosome-variant-coordinate$1"
                && n.grp == 2
                && n.value == "200"));
    }

    #[test]
    fn accents_and_case() {
        assert_eq!(normalize("Lefèvre"), "lefevre");
        assert_eq!(normalize("ŒUVRE Ça"), "oeuvre ca");
        assert_eq!(
            normalize("Lefe\u{300}vre Zo\u{308}e"),
            "lefevre zoe",
            "decomposed accents"
        );
        assert_eq!(
            normalize("Łódź Ørsted İzmir Straße"),
            "lodz orsted izmir strasse"
        );
    }

    #[test]
    fn patient_rows() {
        let p = json!({"resourceType":"Patient","active":true,
            "identifier":[{"system":"urn:oid:1.2.250.1.213.1.4.10","value":"1"},{"use":"old"}],
            "name":[{"family":"Lefèvre","given":["Jeanne","Marie"]}],
            "birthDate":"1974-05",
            "telecom":[{"system":"email","value":"j@x.fr"}],
            "generalPractitioner":[{"reference":"Practitioner/dr-martin"}],
            "meta":{"tag":[{"system":"http://t","code":"demo"}],"profile":["http://p"]}});
        let rows = extract(super::super::params::test_table(), "Patient", &p);
        assert!(rows
            .strings
            .iter()
            .any(|s| s.param == "family" && s.normalized == "lefevre"));
        assert!(rows
            .strings
            .iter()
            .any(|s| s.param == "name" && s.exact == "Marie"));
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "identifier" && t.code.as_deref() == Some("1")));
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "active" && t.code.as_deref() == Some("true")));
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "email" && t.code.as_deref() == Some("j@x.fr")));
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "_tag" && t.code.as_deref() == Some("demo")));
        assert!(rows
            .uris
            .iter()
            .any(|u| u.param == "_profile" && u.uri == "http://p"));
        let gp = rows
            .references
            .iter()
            .find(|r| r.param == "general-practitioner")
            .expect("gp");
        assert_eq!(
            (gp.target_type.as_deref(), gp.target_id.as_deref()),
            (Some("Practitioner"), Some("dr-martin"))
        );
        let birth = rows
            .dates
            .iter()
            .find(|d| d.param == "birthdate")
            .expect("birthdate");
        assert_eq!(
            datetime::format_instant(birth.high),
            "1974-06-01T00:00:00.000000+00:00"
        );
    }

    #[test]
    fn periods_quantities_and_absolute_references() {
        let e = json!({"resourceType":"Encounter","status":"finished","class":{"system":"http://terminology.hl7.org/CodeSystem/v3-ActCode","code":"IMP"},
            "period":{"start":"2026-11-20T08:00:00+01:00"},
            "length":{"value":3.5,"unit":"d","system":"http://unitsofmeasure.org","code":"d"},
            "subject":{"reference":"https://autre.fr/fhir/Patient/p9"},
            "serviceProvider":{"identifier":{"system":"https://finess.esante.gouv.fr","value":"190000042"}}});
        let rows = extract(super::super::params::test_table(), "Encounter", &e);
        let date = rows.dates.iter().find(|d| d.param == "date").expect("date");
        assert_eq!(date.high, far_future());
        assert!(rows
            .quantities
            .iter()
            .any(|q| q.param == "length" && q.value == "3.5"));
        let subject = rows
            .references
            .iter()
            .find(|r| r.param == "subject")
            .expect("subject");
        assert_eq!(
            subject.url.as_deref(),
            Some("https://autre.fr/fhir/Patient/p9")
        );
        assert_eq!(subject.target_id.as_deref(), Some("p9"));
        let provider = rows
            .references
            .iter()
            .find(|r| r.param == "service-provider")
            .expect("provider");
        assert_eq!(provider.identifier_value.as_deref(), Some("190000042"));
        assert!(rows
            .tokens
            .iter()
            .any(|t| t.param == "class" && t.code.as_deref() == Some("IMP")));
    }
}
