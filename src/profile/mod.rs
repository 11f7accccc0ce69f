//! Profile validation: resources checked against StructureDefinitions (FR Core,
//! Cercle de Soins, NdE, the project's own, those of loaded packages and those
//! written to the server), with the ValueSets and CodeSystems known, and the
//! French identifiers whose system says what the value must be. Pure but for
//! `package`, which reads packages from disk.

pub mod identifiers;
pub mod invariant;
pub mod package;
pub mod structure;
pub mod terminology;
pub mod validator;
pub mod verdict;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use serde_json::Value;

use structure::StructureDef;
use terminology::{unversioned, Terminology};

/// R4's own extensions (generated from the specification's
/// `extension-definitions.json` by `scripts/gen_r4_extensions.py`), the
/// project's own profiles, and the NdE extensions it writes (generated from the
/// guide's FSH by `scripts/gen_nde_extensions.py`), always known.
const OWN_PROFILES: &[&str] = &[
    include_str!("../../profiles/r4-extensions.json"),
    include_str!("../../profiles/coordination-profiles.json"),
    include_str!("../../profiles/nde-extensions.json"),
];

/// The definitions a validator works with. Building one only files the
/// resources by URL: a StructureDefinition is read (its snapshot made) on first
/// use, a ValueSet expanded on first use, so that putting a new set in force
/// after a definition is written costs little however many there are.
#[derive(Default)]
pub struct Conformance {
    structures: HashMap<String, Structure>,
    pub terminology: Terminology,
}

/// A StructureDefinition as given, and as read on first use (`None`: unusable).
struct Structure {
    raw: Arc<Value>,
    read: OnceLock<Option<StructureDef>>,
}

/// Longest chain of differentials over differentials followed to a snapshot.
const MAX_BASE_CHAIN: usize = 16;

/// Every resource of `value`: itself, or each entry of a Bundle.
fn resources(value: Value, out: &mut Vec<Arc<Value>>) {
    if value["resourceType"] == "Bundle" {
        if let Value::Array(entries) = value["entry"].clone() {
            for mut entry in entries {
                resources(entry["resource"].take(), out);
            }
        }
    } else if value.is_object() {
        out.push(Arc::new(value));
    }
}

/// The resources of `loaded` (resources or Bundles of them), one by one.
pub fn flatten(loaded: Vec<Value>) -> Vec<Arc<Value>> {
    let mut out = Vec::new();
    for value in loaded {
        resources(value, &mut out);
    }
    out
}

/// The project's own profiles, read once.
static OWN: LazyLock<Vec<Arc<Value>>> = LazyLock::new(|| {
    let parsed = OWN_PROFILES
        .iter()
        .filter_map(|text| serde_json::from_str(text).ok())
        .collect();
    flatten(parsed)
});

impl Conformance {
    /// The project's own profiles and `loaded` (StructureDefinitions, ValueSets,
    /// CodeSystems, or Bundles of them; anything else is ignored).
    pub fn new(loaded: Vec<Value>) -> Conformance {
        Conformance::of(&flatten(loaded))
    }

    /// The project's own profiles and `resources` (already flattened); a later
    /// one replaces an earlier one of the same URL.
    pub fn of(resources: &[Arc<Value>]) -> Conformance {
        let mut conformance = Conformance::default();
        for r in OWN.iter().chain(resources) {
            match r["resourceType"].as_str() {
                Some("StructureDefinition") => {
                    if let Some(url) = r["url"].as_str() {
                        conformance.structures.insert(
                            unversioned(url).to_owned(),
                            Structure {
                                raw: r.clone(),
                                read: OnceLock::new(),
                            },
                        );
                    }
                }
                Some("ValueSet" | "CodeSystem") => conformance.terminology.add(r.clone()),
                _ => {}
            }
        }
        conformance
    }

    pub fn structure(&self, url: &str) -> Option<&StructureDef> {
        let url = unversioned(url);
        let entry = self.structures.get(url)?;
        if entry.read.get().is_none() && !self.base_chain_ends(url) {
            return None;
        }
        entry
            .read
            .get_or_init(|| StructureDef::parse(&entry.raw, |base| self.structure(base)))
            .as_ref()
    }

    /// Whether the chain of bases of a differential ends (at a snapshot, an R4
    /// type or an unknown base) within the bound, without a cycle: only then is
    /// it read, each base before it.
    fn base_chain_ends(&self, url: &str) -> bool {
        let mut at = url;
        for _ in 0..MAX_BASE_CHAIN {
            let Some(entry) = self.structures.get(at) else {
                return true;
            };
            if entry.read.get().is_some() || entry.raw["snapshot"]["element"].is_array() {
                return true;
            }
            match entry.raw["baseDefinition"].as_str() {
                Some(base) => at = unversioned(base),
                None => return true,
            }
        }
        false
    }
}

/// What a deployment asks of profiles: the definitions known, whether a
/// claimed profile the server does not know refuses a write, and the profiles
/// every resource of a type must meet.
pub struct ProfileRules {
    /// The definitions in force: the project's, the packages', those written to
    /// the server; replaced whole when those change, each validation keeping the
    /// set it started with.
    conformance: arc_swap::ArcSwap<Conformance>,
    /// What the packages gave, kept to put in force again with what is stored.
    packages: Vec<Arc<Value>>,
    /// The definitions written to the server, by type and id.
    stored: Mutex<HashMap<(String, String), Arc<Value>>>,
    /// A claimed profile the server does not know is an error (else a warning).
    pub unknown_is_error: bool,
    /// Profiles each resource of a type is checked against, claimed or not.
    pub required: HashMap<String, Vec<String>>,
}

impl Default for ProfileRules {
    /// The project's own profiles, unknown ones a warning, none required.
    fn default() -> Self {
        ProfileRules::new(Vec::new())
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
    /// The project's profiles and those of `packages` (see `Conformance::new`),
    /// unknown profiles a warning, none required.
    pub fn new(packages: Vec<Value>) -> ProfileRules {
        let packages = flatten(packages);
        ProfileRules {
            conformance: arc_swap::ArcSwap::from_pointee(Conformance::of(&packages)),
            packages,
            stored: Mutex::new(HashMap::new()),
            unknown_is_error: false,
            required: HashMap::new(),
        }
    }

    /// The definitions in force.
    pub fn conformance(&self) -> Arc<Conformance> {
        self.conformance.load_full()
    }

    /// Puts in force the packages' definitions and `stored`, all the
    /// StructureDefinitions, ValueSets and CodeSystems written to the server (a
    /// stored one replaces a package's of the same URL).
    pub fn install(&self, stored: Vec<Value>) {
        let mut held = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        *held = stored
            .into_iter()
            .filter_map(|v| {
                let key = (
                    v["resourceType"].as_str()?.to_owned(),
                    v["id"].as_str()?.to_owned(),
                );
                Some((key, Arc::new(v)))
            })
            .collect();
        self.put_in_force(&held);
    }

    /// Puts in force one definition written to the server (`None`: deleted).
    pub fn apply(&self, res_type: &str, res_id: &str, resource: Option<Value>) {
        let mut held = self.stored.lock().unwrap_or_else(|e| e.into_inner());
        let key = (res_type.to_owned(), res_id.to_owned());
        match resource {
            Some(v) => held.insert(key, Arc::new(v)),
            None => held.remove(&key),
        };
        self.put_in_force(&held);
    }

    fn put_in_force(&self, stored: &HashMap<(String, String), Arc<Value>>) {
        let mut mine: Vec<(&(String, String), &Arc<Value>)> = stored.iter().collect();
        mine.sort_by(|a, b| a.0.cmp(b.0));
        let mut all = self.packages.clone();
        all.extend(mine.into_iter().map(|(_, v)| v.clone()));
        self.conformance.store(Arc::new(Conformance::of(&all)));
    }

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
        self.check_against(resource, &self.profiles(resource, named))
    }

    fn check_against(&self, resource: &Value, urls: &[&str]) -> validator::Findings {
        let conformance = self.conformance.load();
        let known: Vec<&StructureDef> = urls
            .iter()
            .filter_map(|u| conformance.structure(u))
            .collect();
        let mut findings = validator::validate(&conformance, resource, &known);
        for url in urls.iter().filter(|u| conformance.structure(u).is_none()) {
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
        if derived {
            return Ok(());
        }
        let urls = self.profiles(resource, &[]);
        if urls.is_empty() {
            return Ok(());
        }
        let findings = self.check_against(resource, &urls);
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
    fn the_own_definitions_are_valid_r4_and_known() {
        for text in OWN_PROFILES {
            let bundle: Value = serde_json::from_str(text).expect("JSON");
            crate::fhir::validate::validate_resource(&bundle).expect("a valid R4 Bundle");
        }
        let conformance = Conformance::new(Vec::new());
        let event_type = conformance
            .structure("https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/event-type")
            .expect("the NdE event-type extension");
        assert_eq!(
            event_type.contexts,
            ["Subscription", "CommunicationRequest"]
        );
        // A declaration's event time as a string is refused.
        let request = serde_json::json!({"resourceType": "CommunicationRequest", "status": "active",
            "extension": [{"url": "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/event-time",
                "valueString": "hier"}]});
        let findings = validator::validate(&conformance, &request, &[]);
        assert_eq!(findings.errors.len(), 1, "{:?}", findings.errors);
        assert_eq!(
            findings.errors[0].expression.as_deref(),
            Some("CommunicationRequest.extension[0].valueString")
        );
    }

    #[test]
    fn a_definition_without_its_root_is_unusable_not_a_panic() {
        let empty = serde_json::json!({"resourceType": "StructureDefinition", "url": "empty",
            "type": "Patient", "snapshot": {"element": []}});
        let headless = serde_json::json!({"resourceType": "StructureDefinition", "url": "headless",
            "type": "Patient", "snapshot": {"element": [
                {"id": "Patient.name", "path": "Patient.name", "min": 1, "max": "*"}]}});
        let rules = ProfileRules::new(vec![empty, headless]);
        assert!(rules.conformance().structure("empty").is_none());
        assert!(rules.conformance().structure("headless").is_none());
        let patient = serde_json::json!({"resourceType": "Patient",
            "meta": {"profile": ["empty", "headless"]}});
        let findings = rules.check(&patient, &[]);
        assert!(findings.errors.is_empty());
        assert_eq!(findings.warnings.len(), 2, "{:?}", findings.warnings);
    }

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
