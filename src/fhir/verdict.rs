//! The verdict of `$validate` and of `passerelle validate`: a resource (or the
//! `resource` of a `Parameters`) checked against the base R4 definitions, as
//! every write is, and told as an OperationOutcome with a severity per issue.
//! Profiles are not checked yet: each profile the resource claims or the caller
//! names is a warning saying so, never a silent pass. Pure.

use serde_json::{json, Value};

use super::{parse_resource, Format};
use crate::error::{FhirError, FhirResult, Issue};

/// What was asked: the body, its format, the type of the URL (if any) and a
/// profile named by the caller (`?profile=`).
pub struct Asked<'a> {
    pub body: &'a [u8],
    pub format: Format,
    pub res_type: Option<&'a str>,
    pub profile: Option<&'a str>,
}

/// Issues found, by severity.
#[derive(Debug, Default)]
pub struct Verdict {
    pub errors: Vec<Issue>,
    pub warnings: Vec<Issue>,
}

impl Verdict {
    /// The OperationOutcome: errors and warnings, or one `information` issue
    /// saying there were none.
    pub fn outcome(&self) -> Value {
        let issue = |severity: &str, i: &Issue| {
            let mut v = json!({"severity": severity, "code": i.code, "diagnostics": i.message});
            if let Some(expression) = &i.expression {
                v["expression"] = json!([expression]);
            }
            v
        };
        let mut issues: Vec<Value> = self.errors.iter().map(|i| issue("error", i)).collect();
        issues.extend(self.warnings.iter().map(|i| issue("warning", i)));
        if issues.is_empty() {
            issues.push(json!({"severity": "information", "code": "informational",
                "diagnostics": "no issues: the resource is valid against the base R4 definitions"}));
        }
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

/// Checks what was asked. A body that is no JSON or XML at all is a bad request
/// (400); anything wrong with the resource is in the verdict.
pub fn validate(asked: &Asked<'_>) -> FhirResult<Verdict> {
    if asked.format == Format::Json {
        serde_json::from_slice::<serde::de::IgnoredAny>(asked.body)
            .map_err(|e| FhirError::bad_request(format!("the body is not JSON: {e}")))?;
    }
    let mut verdict = Verdict::default();
    let parsed = match parse_resource(asked.body, asked.format) {
        Ok(value) => value,
        Err(FhirError::BadRequest(issues) | FhirError::Unprocessable(issues)) => {
            verdict.errors = issues;
            return Ok(verdict);
        }
        Err(e) => return Err(e),
    };
    let (resource, named) = match parsed["resourceType"].as_str() {
        Some("Parameters") if asked.res_type != Some("Parameters") => parameters(&parsed)?,
        _ => (parsed, None),
    };
    let res_type = resource["resourceType"].as_str().unwrap_or_default();
    if let Some(expected) = asked.res_type.filter(|t| *t != res_type) {
        verdict.errors.push(
            Issue::new(
                "invalid",
                format!("a {res_type} was sent to {expected}/$validate"),
            )
            .at(res_type),
        );
    }
    let claimed = resource["meta"]["profile"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    let mut profiles: Vec<&str> = claimed.collect();
    profiles.extend(named.as_deref().or(asked.profile));
    profiles.dedup();
    for profile in profiles {
        verdict.warnings.push(Issue::new(
            "not-supported",
            format!(
                "the profile {profile} was not checked: this server validates against the base R4 definitions only"
            ),
        ));
    }
    Ok(verdict)
}

/// The `resource` and `profile` of a `$validate` Parameters (already checked as
/// a resource, its `resource` with it).
fn parameters(parameters: &Value) -> FhirResult<(Value, Option<String>)> {
    let mut resource = None;
    let mut profile = None;
    for p in parameters["parameter"].as_array().into_iter().flatten() {
        match p["name"].as_str() {
            Some("resource") => resource = p.get("resource").cloned(),
            Some("profile") => {
                profile = p["valueUri"]
                    .as_str()
                    .or(p["valueCanonical"].as_str())
                    .map(str::to_owned)
            }
            _ => {}
        }
    }
    let resource = resource.ok_or_else(|| {
        FhirError::bad_request("the Parameters of $validate have no 'resource' parameter")
    })?;
    Ok((resource, profile))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked<'a>(body: &'a str, res_type: Option<&'a str>) -> Asked<'a> {
        Asked {
            body: body.as_bytes(),
            format: Format::Json,
            res_type,
            profile: None,
        }
    }

    #[test]
    fn a_valid_resource_has_no_issues() {
        let verdict = validate(&asked(
            r#"{"resourceType":"Patient","birthDate":"1950-02-03"}"#,
            Some("Patient"),
        ))
        .expect("verdict");
        assert!(verdict.errors.is_empty() && verdict.warnings.is_empty());
        assert_eq!(verdict.outcome()["issue"][0]["severity"], "information");
    }

    #[test]
    fn errors_name_their_path() {
        let verdict = validate(&asked(
            r#"{"resourceType":"Patient","birthDate":"1950-02-30","colour":"blue"}"#,
            Some("Patient"),
        ))
        .expect("verdict");
        let paths: Vec<_> = verdict
            .errors
            .iter()
            .filter_map(|i| i.expression.clone())
            .collect();
        assert!(paths.iter().any(|p| p == "Patient.birthDate"), "{paths:?}");
        assert!(paths.iter().any(|p| p == "Patient.colour"), "{paths:?}");
        assert_eq!(verdict.outcome()["issue"][0]["severity"], "error");
    }

    #[test]
    fn a_claimed_profile_is_a_warning_never_a_silent_pass() {
        let body = r#"{"resourceType":"Parameters","parameter":[
            {"name":"resource","resource":{"resourceType":"Patient",
              "meta":{"profile":["https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-patient"]}}},
            {"name":"profile","valueUri":"https://example.org/other"}]}"#;
        let verdict = validate(&asked(body, Some("Patient"))).expect("verdict");
        assert!(verdict.errors.is_empty());
        assert_eq!(verdict.warnings.len(), 2);
        assert!(verdict.warnings[0].message.contains("fr-core-patient"));
        assert!(verdict.warnings[1].message.contains("example.org/other"));
    }

    #[test]
    fn the_type_must_be_the_urls_and_the_body_json() {
        let verdict = validate(&asked(
            r#"{"resourceType":"Encounter","status":"planned","class":{"code":"IMP"}}"#,
            Some("Patient"),
        ))
        .expect("verdict");
        assert_eq!(verdict.errors.len(), 1);
        assert!(matches!(
            validate(&asked("not json", None)),
            Err(FhirError::BadRequest(_))
        ));
        assert!(matches!(
            validate(&asked(r#"{"resourceType":"Parameters"}"#, Some("Patient"))),
            Err(FhirError::BadRequest(_))
        ));
    }
}
