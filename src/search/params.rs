//! The search parameter table: the generated R4 table (`r4_search_params.tsv`, see
//! `scripts/gen_r4_search_params.py`) with each expression compiled once. Pure.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::fhir::fhirpath::{self, Expr};

const TABLE: &str = include_str!("r4_search_params.tsv");
/// The project's own definitions (French guides), a Bundle of SearchParameters.
const PROFILE_PARAMS: &str = include_str!("../../profiles/search-parameters.json");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    String,
    Token,
    Reference,
    Date,
    Number,
    Quantity,
    Uri,
    Composite,
    Special,
}

impl ParamType {
    fn parse(text: &str) -> Option<ParamType> {
        Some(match text {
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "date" => ParamType::Date,
            "number" => ParamType::Number,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "composite" => ParamType::Composite,
            "special" => ParamType::Special,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Date => "date",
            ParamType::Number => "number",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Composite => "composite",
            ParamType::Special => "special",
        }
    }
}

#[derive(Debug)]
pub struct SearchParam {
    pub code: String,
    pub kind: ParamType,
    pub expression: Expr,
    /// Resource types a reference parameter may point to.
    pub targets: Vec<String>,
    /// At most one value per resource (see `fhirpath::is_single_valued`).
    pub single_valued: bool,
    /// The components of a composite parameter, in order.
    pub components: Vec<Component>,
    /// The expression was `X.exists() and X != false`: `expression` is `X`, and the
    /// parameter is the token `true` or `false` (Patient.deceased).
    pub truthy: bool,
}

/// One component of a composite parameter: a parameter of its own kind whose
/// expression is relative to the composite's element.
#[derive(Debug)]
pub struct Component {
    pub code: String,
    pub kind: ParamType,
    pub expression: Expr,
}

/// Parses `code:type=expression ;; …` (the generated table's components column).
fn parse_components(text: &str) -> Result<Vec<Component>, String> {
    text.split(" ;; ")
        .filter(|c| !c.is_empty())
        .map(|c| {
            let (head, expression) = c
                .split_once('=')
                .ok_or_else(|| format!("bad component '{c}'"))?;
            let (code, kind) = head
                .split_once(':')
                .ok_or_else(|| format!("bad component '{c}'"))?;
            let kind =
                ParamType::parse(kind).filter(|k| is_indexed(*k) && *k != ParamType::Composite);
            let kind = kind.ok_or_else(|| format!("component '{code}' has an unsupported type"))?;
            let expression = fhirpath::compile(expression).map_err(|e| e.0)?;
            Ok(Component {
                code: code.to_owned(),
                kind,
                expression,
            })
        })
        .collect()
}

/// Parameters whose value lives in a column of `resource`, not in index rows.
pub const COLUMN_PARAMS: &[&str] = &["_id", "_lastUpdated"];

#[derive(Debug, Default)]
pub struct ParamTable {
    /// By resource type (`Resource` holds the parameters of every type).
    by_type: HashMap<String, Vec<SearchParam>>,
    /// `type.code` of the parameters whose expression is outside the subset or whose
    /// kind is not indexed yet, with the reason.
    unsupported: Vec<(String, String)>,
    /// Which table this is, counting from the standard one (0): what was compiled
    /// against a table (a subscription's criteria) is stale under another.
    generation: u64,
}

/// The parameter tables of one server over time. The one in force is replaced
/// whole when a SearchParameter changes; a search keeps the table it started with,
/// and an old table is freed when the last search using it ends.
pub struct Registry {
    current: ArcSwap<ParamTable>,
    installs: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            current: ArcSwap::from_pointee(ParamTable::standard()),
            installs: AtomicU64::new(0),
        }
    }
}

impl Registry {
    /// The table in force: R4, the project's profiles, and the SearchParameter
    /// resources last installed.
    pub fn current(&self) -> Arc<ParamTable> {
        self.current.load_full()
    }

    /// Puts in force the standard table plus these SearchParameter resources
    /// (JSON). Returns what could not be used, with the reason.
    pub fn install(&self, search_parameters: &[serde_json::Value]) -> Vec<(String, String)> {
        let mut table = ParamTable::standard();
        table.generation = self.installs.fetch_add(1, Ordering::SeqCst) + 1;
        let before = table.unsupported.len();
        for sp in search_parameters {
            table.add_search_parameter(sp);
        }
        let rejected = table.unsupported[before..].to_vec();
        self.current.store(Arc::new(table));
        rejected
    }
}

/// Kinds that the index and the query renderer handle.
fn is_indexed(kind: ParamType) -> bool {
    // Special parameters are indexed by code: only `near` (Location.position) is.
    kind != ParamType::Special
}

/// The special parameters the index and the query renderer know.
const SPECIAL: &[&str] = &["near"];

impl ParamTable {
    /// R4 and the project's own definitions.
    pub fn standard() -> ParamTable {
        let mut table = ParamTable::parse(TABLE);
        table.add_search_parameters(PROFILE_PARAMS);
        table
    }

    fn parse(table: &str) -> ParamTable {
        let mut t = ParamTable::default();
        for line in table.lines().filter(|l| !l.starts_with('#')) {
            let cols: Vec<&str> = line.split('\t').collect();
            let [base, code, kind, expression, targets, components] = cols.as_slice() else {
                continue;
            };
            let targets: Vec<&str> = targets.split(',').filter(|s| !s.is_empty()).collect();
            t.add(base, code, kind, expression, &targets, components);
        }
        t
    }

    /// Adds one parameter for one base type; what cannot be evaluated is recorded
    /// as unsupported with the reason.
    fn add(
        &mut self,
        base: &str,
        code: &str,
        kind: &str,
        expression: &str,
        targets: &[&str],
        components: &str,
    ) {
        let name = format!("{base}.{code}");
        let Some(kind) = ParamType::parse(kind) else {
            self.unsupported
                .push((name, format!("unknown type '{kind}'")));
            return;
        };
        if !is_indexed(kind) && !SPECIAL.contains(&code) {
            self.unsupported.push((
                name,
                format!("{} parameters are not indexed yet", kind.as_str()),
            ));
            return;
        }
        let components = match parse_components(components) {
            Ok(c) if kind == ParamType::Composite && c.len() < 2 => {
                return self
                    .unsupported
                    .push((name, "a composite needs components".to_owned()));
            }
            Ok(c) => c,
            Err(e) => return self.unsupported.push((name, e)),
        };
        // `X.exists() and X != false`, the one boolean expression of R4 search.
        let truthy_path = expression
            .split_once(".exists() and ")
            .filter(|(path, rest)| *rest == format!("{path} != false"))
            .map(|(path, _)| path.to_owned());
        let truthy = truthy_path.is_some();
        let expression = truthy_path.as_deref().unwrap_or(expression);
        match fhirpath::compile(expression) {
            Ok(expression) => {
                let params = self.by_type.entry(base.to_owned()).or_default();
                // A later definition of the same code replaces the earlier one.
                params.retain(|p| p.code != code);
                params.push(SearchParam {
                    code: code.to_owned(),
                    kind,
                    single_valued: fhirpath::is_single_valued(&expression),
                    components,
                    truthy,
                    expression,
                    targets: targets.iter().map(|t| (*t).to_owned()).collect(),
                });
            }
            Err(e) => self.unsupported.push((name, e.0)),
        }
    }

    /// Adds the SearchParameter resources of a Bundle (JSON text). Expressions are
    /// kept whole for every base: branches about another type select nothing.
    fn add_search_parameters(&mut self, bundle: &str) {
        let Ok(bundle) = serde_json::from_str::<serde_json::Value>(bundle) else {
            self.unsupported
                .push(("profiles".to_owned(), "not a JSON Bundle".to_owned()));
            return;
        };
        let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
        for entry in &entries {
            self.add_search_parameter(&entry["resource"]);
        }
    }

    /// Adds one SearchParameter resource, for each of its base types.
    fn add_search_parameter(&mut self, sp: &serde_json::Value) {
        let text = |key: &str| sp[key].as_str().unwrap_or_default();
        let list = |key: &str| -> Vec<&str> {
            sp[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect()
        };
        for base in list("base") {
            self.add(
                base,
                text("code"),
                text("type"),
                text("expression"),
                &list("target"),
                // Composite SearchParameter resources (components that point to
                // other definitions) are not read yet.
                "",
            );
        }
    }

    /// The parameters of a resource type, common ones (`_tag`, `_profile` …) included.
    pub fn for_type<'a>(&'a self, resource_type: &str) -> impl Iterator<Item = &'a SearchParam> {
        let own = self.by_type.get(resource_type).into_iter().flatten();
        let common = ["Resource", "DomainResource"]
            .into_iter()
            .filter_map(|b| self.by_type.get(b))
            .flatten();
        own.chain(common)
    }

    pub fn get(&self, resource_type: &str, code: &str) -> Option<&SearchParam> {
        self.for_type(resource_type).find(|p| p.code == code)
    }

    pub fn unsupported(&self) -> &[(String, String)] {
        &self.unsupported
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The standard table, built once for the unit tests of every module.
#[cfg(test)]
pub(crate) fn test_table() -> &'static ParamTable {
    static TABLE: std::sync::LazyLock<ParamTable> = std::sync::LazyLock::new(ParamTable::standard);
    &TABLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_compiles_almost_everything() {
        let supported: usize = test_table().by_type.values().map(Vec::len).sum();
        let unsupported = test_table().unsupported();
        assert!(supported > 1500, "{supported} supported");
        let outside: Vec<_> = unsupported
            .iter()
            .filter(|(_, why)| !why.contains("not indexed yet"))
            .collect();
        assert!(outside.is_empty(), "{outside:?}");
        let participant = test_table()
            .get("CareTeam", "participant")
            .expect("CareTeam.participant");
        assert_eq!(participant.kind, ParamType::Reference);
        assert!(participant.targets.contains(&"Practitioner".to_owned()));
        assert!(
            test_table().get("Patient", "_tag").is_some(),
            "common parameters apply to every type"
        );
        assert!(test_table().get("Patient", "participant").is_none());
        // The project's own definitions (profiles/search-parameters.json).
        assert_eq!(
            test_table()
                .get("CommunicationRequest", "event-type")
                .map(|p| p.kind),
            Some(ParamType::Token)
        );
        assert_eq!(
            test_table()
                .get("CareTeam", "participant-end")
                .map(|p| p.kind),
            Some(ParamType::Date)
        );
        assert!(test_table().get("Patient", "birthplace").is_some());
    }
}

#[cfg(test)]
mod profile_tests {
    #[test]
    fn a_definition_beyond_the_limits_is_reported_not_fatal() {
        // As stored before the limits existed: the start must go on without it.
        let expression = format!("{}Patient.name{}", "(".repeat(20_000), ")".repeat(20_000));
        let mut table = super::ParamTable::default();
        table.add_search_parameter(&serde_json::json!({
            "resourceType": "SearchParameter", "code": "deep", "base": ["Patient"],
            "type": "string", "expression": expression
        }));
        assert!(table.get("Patient", "deep").is_none());
        assert!(
            table.unsupported()[0].1.contains("longer than"),
            "{:?}",
            table.unsupported()
        );
    }

    #[test]
    fn profile_definitions_are_valid_r4() {
        let bundle: serde_json::Value = serde_json::from_str(super::PROFILE_PARAMS).expect("json");
        crate::fhir::validate::validate_resource(&bundle).expect("a valid R4 Bundle");
    }
}
