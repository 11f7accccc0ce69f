//! The verdict of `$validate` and of `passerelle validate`: a resource (or the
//! `resource` of a `Parameters`) checked against the base R4 definitions, as
//! every write is, then against the profiles it claims or the caller names,
//! its known extensions and its French identifiers (`ProfileRules::check`),
//! told as an OperationOutcome with a severity per issue. Pure.

use serde_json::{json, Value};

use super::ProfileRules;
use crate::error::{FhirError, FhirResult, Issue};
use crate::fhir::{parse_resource, Format};

/// What was asked: the body, its format, the type of the URL (if any) and a
/// profile named by the caller (`?profile=`).
pub struct Asked<'a> {
    pub body: &'a [u8],
    pub format: Format,
    pub res_type: Option<&'a str>,
    pub profile: Option<&'a str>,
    /// The id of `[type]/[id]/$validate`.
    pub id: Option<&'a str>,
    /// `?mode=` (`create`, `update`, `delete`, `profile`); a `Parameters` may say it too.
    pub mode: Option<&'a str>,
}

const MODES: &[&str] = &["create", "update", "delete", "profile"];

fn check_mode(mode: Option<&str>) -> FhirResult<()> {
    match mode {
        Some(m) if !MODES.contains(&m) => Err(FhirError::bad_request(format!(
            "the mode of $validate is create, update, delete or profile, not '{m}'"
        ))),
        _ => Ok(()),
    }
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
                "diagnostics": "no issues"}));
        }
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

/// Checks what was asked. A body that is no JSON or XML at all is a bad request
/// (400); anything wrong with the resource is in the verdict.
pub fn validate(asked: &Asked<'_>, rules: &ProfileRules) -> FhirResult<Verdict> {
    check_mode(asked.mode)?;
    // Whether a resource may be deleted: nothing of its content is checked
    // (there may be none), and this server refuses no delete by profile.
    if asked.mode == Some("delete") {
        return Ok(Verdict::default());
    }
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
    let (resource, named, mode) = match parsed["resourceType"].as_str() {
        Some("Parameters") if asked.res_type != Some("Parameters") => parameters(&parsed)?,
        _ => (parsed, None, None),
    };
    check_mode(mode.as_deref())?;
    let mode = mode.as_deref().or(asked.mode);
    if mode == Some("delete") {
        return Ok(Verdict::default());
    }
    // An update names the resource it replaces.
    if mode == Some("update") {
        let id = resource["id"].as_str();
        let wrong = match (id, asked.id) {
            (None, _) => Some("a resource validated for an update has an id".to_owned()),
            (Some(id), Some(url)) if id != url => {
                Some(format!("the resource's id is {id}, the URL's {url}"))
            }
            _ => None,
        };
        if let Some(message) = wrong {
            let at = format!(
                "{}.id",
                resource["resourceType"].as_str().unwrap_or_default()
            );
            verdict.errors.push(Issue::new("invalid", message).at(at));
        }
    }
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
    let named: Vec<&str> = named.as_deref().or(asked.profile).into_iter().collect();
    let findings = rules.check(&resource, &named);
    verdict.errors.extend(findings.errors);
    verdict.warnings.extend(findings.warnings);
    Ok(verdict)
}

/// The `resource`, `profile` and `mode` of a `$validate` Parameters (already
/// checked as a resource, its `resource` with it).
fn parameters(parameters: &Value) -> FhirResult<(Value, Option<String>, Option<String>)> {
    let mut resource = None;
    let mut profile = None;
    let mut mode = None;
    for p in parameters["parameter"].as_array().into_iter().flatten() {
        match p["name"].as_str() {
            Some("resource") => resource = p.get("resource").cloned(),
            Some("mode") => mode = p["valueCode"].as_str().map(str::to_owned),
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
    Ok((resource, profile, mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, res_type: Option<&str>) -> FhirResult<Verdict> {
        validate(&asked(body, res_type), &ProfileRules::default())
    }

    fn asked<'a>(body: &'a str, res_type: Option<&'a str>) -> Asked<'a> {
        Asked {
            body: body.as_bytes(),
            format: Format::Json,
            res_type,
            profile: None,
            id: None,
            mode: None,
        }
    }

    #[test]
    fn a_valid_resource_has_no_issues() {
        let verdict = check(
            r#"{"resourceType":"Patient","birthDate":"1950-02-03"}"#,
            Some("Patient"),
        )
        .expect("verdict");
        assert!(verdict.errors.is_empty() && verdict.warnings.is_empty());
        assert_eq!(verdict.outcome()["issue"][0]["severity"], "information");
    }

    #[test]
    fn errors_name_their_path() {
        let verdict = check(
            r#"{"resourceType":"Patient","birthDate":"1950-02-30","colour":"blue"}"#,
            Some("Patient"),
        )
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
        let verdict = check(body, Some("Patient")).expect("verdict");
        assert!(verdict.errors.is_empty());
        assert_eq!(verdict.warnings.len(), 2);
        let said = |url: &str| verdict.warnings.iter().any(|w| w.message.contains(url));
        assert!(said("fr-core-patient") && said("example.org/other"));
    }

    #[test]
    fn modes_are_read_and_held() {
        let rules = ProfileRules::default();
        let with = |body: &'static str, id, mode| Asked {
            id,
            mode,
            ..asked(body, Some("Patient"))
        };
        let patient = r#"{"resourceType":"Patient","id":"a"}"#;
        assert!(validate(&with(patient, Some("a"), Some("update")), &rules)
            .expect("verdict")
            .errors
            .is_empty());
        let other = validate(&with(patient, Some("b"), Some("update")), &rules).expect("verdict");
        assert_eq!(other.errors[0].expression.as_deref(), Some("Patient.id"));
        // Delete: nothing of the body is looked at, not even its presence.
        assert!(validate(&with("", Some("a"), Some("delete")), &rules)
            .expect("verdict")
            .errors
            .is_empty());
        assert!(matches!(
            validate(&with(patient, None, Some("replace")), &rules),
            Err(FhirError::BadRequest(_))
        ));
        let in_parameters = r#"{"resourceType":"Parameters","parameter":[
            {"name":"mode","valueCode":"update"},
            {"name":"resource","resource":{"resourceType":"Patient"}}]}"#;
        let verdict = validate(&with(in_parameters, None, None), &rules).expect("verdict");
        assert_eq!(verdict.errors.len(), 1, "{:?}", verdict.errors);
    }

    #[test]
    fn french_identifiers_are_checked_without_a_profile() {
        let verdict = check(
            r#"{"resourceType":"Practitioner","identifier":[
                {"system":"https://rpps.esante.gouv.fr","value":"10000000009"},
                {"system":"https://rpps.esante.gouv.fr","value":"10000000007"}]}"#,
            Some("Practitioner"),
        )
        .expect("verdict");
        assert_eq!(verdict.errors.len(), 1);
        assert_eq!(
            verdict.errors[0].expression.as_deref(),
            Some("Practitioner.identifier[1].value")
        );
        assert!(verdict.errors[0].message.contains("fr-rpps-key"));
    }

    #[test]
    fn the_type_must_be_the_urls_and_the_body_json() {
        let verdict = check(
            r#"{"resourceType":"Encounter","status":"planned","class":{"code":"IMP"}}"#,
            Some("Patient"),
        )
        .expect("verdict");
        assert_eq!(verdict.errors.len(), 1);
        assert!(matches!(
            check("not json", None),
            Err(FhirError::BadRequest(_))
        ));
        assert!(matches!(
            check(r#"{"resourceType":"Parameters"}"#, Some("Patient")),
            Err(FhirError::BadRequest(_))
        ));
    }
}
