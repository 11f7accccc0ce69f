//! Profile validation: resources checked against StructureDefinitions (FR Core,
//! Cercle de Soins, NdE, the project's own, those of loaded packages and those
//! written to the server), with the ValueSets and CodeSystems known, and the
//! French identifiers whose system says what the value must be. Pure but for
//! `package`, which reads packages from disk.

pub mod identifiers;
pub mod package;
pub mod structure;
pub mod terminology;
pub mod validator;
pub mod verdict;

use std::collections::HashMap;

use serde_json::Value;

use structure::StructureDef;
use terminology::{unversioned, Terminology};

/// The project's own profiles, always known.
const OWN_PROFILES: &str = include_str!("../../profiles/coordination-profiles.json");

/// The definitions a validator works with.
#[derive(Default)]
pub struct Conformance {
    structures: HashMap<String, StructureDef>,
    pub terminology: Terminology,
}

/// Every resource of `value`: itself, or each entry of a Bundle.
fn resources(value: Value, out: &mut Vec<Value>) {
    if value["resourceType"] == "Bundle" {
        if let Value::Array(entries) = value["entry"].clone() {
            for mut entry in entries {
                resources(entry["resource"].take(), out);
            }
        }
    } else if value.is_object() {
        out.push(value);
    }
}

impl Conformance {
    /// The project's own profiles and `loaded` (StructureDefinitions, ValueSets,
    /// CodeSystems, or Bundles of them; anything else is ignored).
    pub fn new(loaded: Vec<Value>) -> Conformance {
        let mut all = Vec::new();
        if let Ok(own) = serde_json::from_str(OWN_PROFILES) {
            resources(own, &mut all);
        }
        for value in loaded {
            resources(value, &mut all);
        }
        let mut conformance = Conformance::default();
        let mut pending = Vec::new();
        for r in all {
            match r["resourceType"].as_str() {
                Some("StructureDefinition") => pending.push(r),
                Some("ValueSet" | "CodeSystem") => conformance.terminology.add(&r),
                _ => {}
            }
        }
        // Snapshots first, then differentials whose base is known, round after round.
        loop {
            let before = pending.len();
            pending.retain(|sd| !conformance.try_add(sd, false));
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        for sd in pending {
            conformance.try_add(&sd, true);
        }
        conformance
    }

    /// Adds a StructureDefinition if its snapshot is given or can be made now
    /// (`force`: over R4 when its base is still unknown).
    fn try_add(&mut self, sd: &Value, force: bool) -> bool {
        let has_snapshot = sd["snapshot"]["element"].is_array();
        let base = sd["baseDefinition"].as_str().map(unversioned);
        let base_known = base.is_some_and(|b| self.structures.contains_key(b));
        let over_r4 =
            base.is_none_or(|b| b.starts_with("http://hl7.org/fhir/StructureDefinition/"));
        if !(has_snapshot || base_known || over_r4 || force) {
            return false;
        }
        let parsed = StructureDef::parse(sd, |url| self.structures.get(unversioned(url)));
        match parsed {
            Some(parsed) => {
                self.structures.insert(parsed.url.clone(), parsed);
                true
            }
            None => force,
        }
    }

    pub fn structure(&self, url: &str) -> Option<&StructureDef> {
        self.structures.get(unversioned(url))
    }

    /// The codes of an R4 ValueSet bound to `code` elements, known without loading R4.
    pub fn r4_codes(&self, url: &str) -> Option<&std::collections::BTreeSet<String>> {
        crate::fhir::definitions::R4.value_set_codes(url)
    }

    pub fn structure_count(&self) -> usize {
        self.structures.len()
    }
}

/// What a deployment asks of profiles: the definitions known, whether a
/// claimed profile the server does not know refuses a write, and the profiles
/// every resource of a type must meet.
pub struct ProfileRules {
    pub conformance: Conformance,
    /// A claimed profile the server does not know is an error (else a warning).
    pub unknown_is_error: bool,
    /// Profiles each resource of a type is checked against, claimed or not.
    pub required: HashMap<String, Vec<String>>,
}

impl Default for ProfileRules {
    /// The project's own profiles, unknown ones a warning, none required.
    fn default() -> Self {
        ProfileRules {
            conformance: Conformance::new(Vec::new()),
            unknown_is_error: false,
            required: HashMap::new(),
        }
    }
}

/// `Patient=url1 url2;Encounter=url3` (`PASSERELLE_REQUIRED_PROFILES`).
pub fn parse_required(text: &str) -> Result<HashMap<String, Vec<String>>, String> {
    let mut required: HashMap<String, Vec<String>> = HashMap::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (res_type, urls) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not Type=profile-url …"))?;
        let res_type = res_type.trim();
        if !crate::fhir::definitions::R4.is_resource_type(res_type) {
            return Err(format!("'{res_type}' is not an R4 resource type"));
        }
        let urls: Vec<String> = urls.split_whitespace().map(str::to_owned).collect();
        if urls.is_empty() {
            return Err(format!("no profile given for {res_type}"));
        }
        required
            .entry(res_type.to_owned())
            .or_default()
            .extend(urls);
    }
    Ok(required)
}

/// The base definition of a type (`http://hl7.org/fhir/StructureDefinition/Patient`),
/// which the structural validation of every resource already checks.
fn is_base_definition(url: &str, res_type: &str) -> bool {
    unversioned(url)
        .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
        .is_some_and(|t| t == res_type)
}

impl ProfileRules {
    /// The profiles `resource` is checked against: those it claims, `named`
    /// (`$validate`'s `profile`), those its type requires.
    fn profiles<'r>(&'r self, resource: &'r Value, named: &'r [&'r str]) -> Vec<&'r str> {
        let res_type = resource["resourceType"].as_str().unwrap_or_default();
        let mut urls: Vec<&str> = resource["meta"]["profile"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .chain(named.iter().copied())
            .chain(
                self.required
                    .get(res_type)
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            )
            .filter(|u| !is_base_definition(u, res_type))
            .collect();
        urls.sort_unstable();
        urls.dedup();
        urls
    }

    /// Validates `resource` against its profiles (see `profiles`), its known
    /// extensions and its French identifiers.
    pub fn check(&self, resource: &Value, named: &[&str]) -> validator::Findings {
        let urls = self.profiles(resource, named);
        let known: Vec<&StructureDef> = urls
            .iter()
            .filter_map(|u| self.conformance.structure(u))
            .collect();
        let mut findings = validator::validate(&self.conformance, resource, &known);
        for url in urls
            .iter()
            .filter(|u| self.conformance.structure(u).is_none())
        {
            let issue = crate::error::Issue::new(
                "not-supported",
                format!(
                    "the profile {url} is not known here: the resource was not checked against it"
                ),
            );
            if self.unknown_is_error {
                findings.errors.push(issue);
            } else {
                findings.warnings.push(issue);
            }
        }
        findings
    }

    /// The check of a write: only for resources that claim a profile other than
    /// their base definition or whose type requires one (the rest had the
    /// structural validation of every write). Errors refuse the write (422).
    /// What the server derives itself (`derived`) is not checked: it is the
    /// server's own making, and `docs/validation.md` says where it departs
    /// from the guides.
    pub fn check_write(
        &self,
        resource: &Value,
        derived: bool,
    ) -> Result<(), Vec<crate::error::Issue>> {
        if derived || self.profiles(resource, &[]).is_empty() {
            return Ok(());
        }
        let findings = self.check(resource, &[]);
        if findings.errors.is_empty() {
            Ok(())
        } else {
            Err(findings.errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn required_profiles_are_read_per_type() {
        let required = parse_required("Patient=a b; Encounter=c").expect("parsed");
        assert_eq!(required["Patient"], ["a", "b"]);
        assert_eq!(required["Encounter"], ["c"]);
        assert!(parse_required("Patientt=a").is_err());
        assert!(parse_required("Patient=").is_err());
        assert!(parse_required("").expect("empty").is_empty());
    }

    #[test]
    fn writes_are_checked_only_when_a_profile_applies() {
        let mut rules = ProfileRules::default();
        let bad_rpps = json!({"resourceType": "Practitioner",
            "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": "10000000007"}]});
        assert!(rules.check_write(&bad_rpps, false).is_ok());
        let mut claimed = bad_rpps.clone();
        claimed["meta"] = json!({"profile": ["https://example.org/unknown"]});
        let errors = rules.check_write(&claimed, false).expect_err("refused");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].message.contains("fr-rpps-key"));
        let mut good = claimed.clone();
        good["identifier"][0]["value"] = json!("10000000009");
        assert!(rules.check_write(&good, false).is_ok());
        assert!(
            rules.check_write(&claimed, true).is_ok(),
            "the server's own"
        );
        rules.unknown_is_error = true;
        assert!(rules.check_write(&good, false).is_err());
    }
}
