//! The only place that calls fhirbolt.
//!
//! fhirbolt's (de)serialisers are generic, so every crate that calls them compiles the
//! whole R4 model again. Keeping the calls behind these non-generic functions means the
//! model is compiled once, here, and the application crate rebuilds in seconds. It also
//! keeps fhirbolt (unmaintained since 2023) replaceable.

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};

/// A resource that fhirbolt's typed R4 model could not accept, with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

fn strict() -> Option<DeserializationConfig> {
    // Lax and Compatibility modes are broken in 0.4 (see stack notes): strict only.
    Some(DeserializationConfig {
        mode: DeserializationMode::Strict,
    })
}

/// Parses R4 JSON into the typed model: unknown elements, wrong JSON types, arrays for
/// 0..1 elements and missing required elements are errors.
pub fn check_json(json: &[u8]) -> Result<(), CodecError> {
    fhirbolt::json::from_slice::<Resource>(json, strict())
        .map(|_| ())
        .map_err(|e| CodecError(e.to_string()))
}

/// Parses R4 XML into the typed model and returns its JSON form.
pub fn xml_to_json(xml: &[u8]) -> Result<serde_json::Value, CodecError> {
    let resource: Resource =
        fhirbolt::xml::from_slice(xml, strict()).map_err(|e| CodecError(e.to_string()))?;
    fhirbolt::json::to_json_value(resource, None).map_err(|e| CodecError(e.to_string()))
}

/// Writes an R4 JSON resource as XML (indented, FHIR element order).
pub fn json_to_xml(json: &[u8]) -> Result<Vec<u8>, CodecError> {
    let resource: Resource = fhirbolt::json::from_slice(json, strict())
        .map_err(|e| CodecError(format!("stored resource is not valid R4: {e}")))?;
    fhirbolt::xml::to_vec(&resource, None).map_err(|e| CodecError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_xml_round_trip_keeps_decimal_scale() {
        let json = br#"{"resourceType":"Observation","status":"final","code":{"text":"w"},"valueQuantity":{"value":70.10,"unit":"kg"}}"#;
        check_json(json).expect("valid");
        let xml = json_to_xml(json).expect("to xml");
        let text = String::from_utf8(xml.clone()).expect("utf8");
        assert!(text.contains("70.10"), "{text}");
        let back = xml_to_json(&xml).expect("from xml");
        assert_eq!(back["valueQuantity"]["value"].to_string(), "70.10");
    }

    #[test]
    fn unknown_element_is_rejected() {
        let json = br#"{"resourceType":"Patient","nickname":"x"}"#;
        assert!(check_json(json).is_err());
    }
}
