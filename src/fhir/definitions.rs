//! The R4 type and element definitions, from the generated table `r4_elements.tsv`
//! (see `scripts/gen_r4_elements.py`). Loaded once, on first use.

use std::collections::HashMap;
use std::sync::LazyLock;

use regex::Regex;

const TABLE: &str = include_str!("r4_elements.tsv");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    Primitive,
    Complex,
    Resource,
}

#[derive(Debug)]
pub struct TypeDef {
    pub kind: TypeKind,
    pub is_abstract: bool,
    /// The value's regex, anchored, for primitive types that have one.
    pub regex: Option<Regex>,
}

#[derive(Debug, Clone)]
pub struct ElementDef {
    pub min: u32,
    pub many: bool,
    /// The element's type codes; one for a choice element expanded to its typed name.
    pub types: Vec<String>,
    /// For a `contentReference`, the path whose definition this element reuses.
    pub content_ref: Option<String>,
    /// Part of the summary view (`_summary=true`).
    pub summary: bool,
}

/// An element that must be present: its name, or the stem of a choice (`value` for `value[x]`).
#[derive(Debug, Clone)]
pub struct Required {
    pub name: String,
    pub is_choice: bool,
}

#[derive(Debug, Default)]
pub struct Definitions {
    types: HashMap<String, TypeDef>,
    /// Keyed by definition path, e.g. `Patient.name` or `Observation.valueQuantity`.
    elements: HashMap<String, ElementDef>,
    /// Required child elements by parent definition path.
    required: HashMap<String, Vec<Required>>,
    /// The codes a `code` element may take, by definition path, where R4 binds
    /// it with strength `required` to a ValueSet that expands completely.
    bindings: HashMap<String, Binding>,
    /// The invariants of severity error declared on a resource, a backbone
    /// element or a data type (`Patient`, `Patient.contact`, `Period`).
    invariants: HashMap<String, Vec<BaseInvariant>>,
    /// A path bound to each of those ValueSets, by URL (for `value_set_codes`).
    value_set_paths: HashMap<String, String>,
}

/// An invariant of the base specification: key, what it says, its FHIRPath.
#[derive(Debug)]
pub struct BaseInvariant {
    pub key: String,
    pub human: String,
    pub expression: String,
}

/// A required binding of a `code` element.
#[derive(Debug)]
pub struct Binding {
    pub value_set: String,
    pub codes: std::collections::BTreeSet<String>,
}

pub static R4: LazyLock<Definitions> = LazyLock::new(|| Definitions::parse(TABLE));

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// The FHIR regexes follow XML Schema, where `\s` is only space, tab, CR and LF;
/// in Rust's regex it is any Unicode white space, so a no-break space would not be
/// `\S`. Spell the XML Schema classes out.
fn xsd_classes(regex: &str) -> String {
    regex
        .replace(r"\S", r"[^ \t\n\r]")
        .replace(r"\s", r"[ \t\n\r]")
}

impl Definitions {
    /// The required binding of the `code` element at `path`, if R4 has one.
    pub fn binding(&self, path: &str) -> Option<&Binding> {
        self.bindings.get(path)
    }

    /// The codes of an R4 ValueSet that binds some `code` element with strength
    /// `required` (by its URL, without version).
    pub fn value_set_codes(&self, url: &str) -> Option<&std::collections::BTreeSet<String>> {
        let path = self.value_set_paths.get(url)?;
        self.bindings.get(path).map(|b| &b.codes)
    }

    fn parse(table: &str) -> Self {
        let mut defs = Definitions::default();
        for line in table.lines().filter(|l| !l.starts_with('#')) {
            let cols: Vec<&str> = line.split('\t').collect();
            match cols.as_slice() {
                ["T", name, kind, abstract_flag, regex] => {
                    let kind = match *kind {
                        "primitive-type" => TypeKind::Primitive,
                        "resource" => TypeKind::Resource,
                        _ => TypeKind::Complex,
                    };
                    let regex = (!regex.is_empty())
                        .then(|| Regex::new(&format!("^(?:{})$", xsd_classes(regex))).ok())
                        .flatten();
                    defs.types.insert(
                        (*name).to_owned(),
                        TypeDef {
                            kind,
                            is_abstract: *abstract_flag == "1",
                            regex,
                        },
                    );
                }
                ["E", path, min, max, types, content_ref, summary] => {
                    defs.add_element(path, min, max, types, content_ref, *summary == "1");
                }
                ["C", path, key, human, expression] => {
                    defs.invariants
                        .entry((*path).to_owned())
                        .or_default()
                        .push(BaseInvariant {
                            key: (*key).to_owned(),
                            human: (*human).to_owned(),
                            expression: (*expression).to_owned(),
                        });
                }
                ["B", path, value_set, codes] => {
                    let binding = Binding {
                        value_set: (*value_set).to_owned(),
                        codes: codes.split(' ').map(str::to_owned).collect(),
                    };
                    defs.value_set_paths
                        .entry(
                            binding
                                .value_set
                                .split('|')
                                .next()
                                .unwrap_or_default()
                                .to_owned(),
                        )
                        .or_insert_with(|| (*path).to_owned());
                    defs.bindings.insert((*path).to_owned(), binding);
                }
                _ => {}
            }
        }
        defs
    }

    fn add_element(
        &mut self,
        path: &str,
        min: &str,
        max: &str,
        types: &str,
        content_ref: &str,
        summary: bool,
    ) {
        let min: u32 = min.parse().unwrap_or(0);
        let many = max != "0" && max != "1";
        let types: Vec<String> = types
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        let content_ref = (!content_ref.is_empty()).then(|| content_ref.to_owned());
        let (parent, name) = path.rsplit_once('.').unwrap_or(("", path));
        if let Some(stem) = name.strip_suffix("[x]") {
            for t in &types {
                self.elements.insert(
                    format!("{parent}.{stem}{}", capitalise(t)),
                    ElementDef {
                        min,
                        many,
                        types: vec![t.clone()],
                        content_ref: None,
                        summary,
                    },
                );
            }
            if min > 0 {
                self.required
                    .entry(parent.to_owned())
                    .or_default()
                    .push(Required {
                        name: stem.to_owned(),
                        is_choice: true,
                    });
            }
            return;
        }
        if min > 0 {
            self.required
                .entry(parent.to_owned())
                .or_default()
                .push(Required {
                    name: name.to_owned(),
                    is_choice: false,
                });
        }
        self.elements.insert(
            path.to_owned(),
            ElementDef {
                min,
                many,
                types,
                content_ref,
                summary,
            },
        );
    }

    /// Every path with invariants, and its invariants.
    pub fn invariants(&self) -> impl Iterator<Item = (&str, &[BaseInvariant])> {
        self.invariants
            .iter()
            .map(|(p, v)| (p.as_str(), v.as_slice()))
    }

    pub fn element(&self, path: &str) -> Option<&ElementDef> {
        self.elements.get(path)
    }

    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.types.get(name)
    }

    pub fn required(&self, parent: &str) -> &[Required] {
        self.required.get(parent).map(Vec::as_slice).unwrap_or(&[])
    }

    /// True for a concrete R4 resource type (`Patient`, not `DomainResource`).
    pub fn is_resource_type(&self, name: &str) -> bool {
        self.types
            .get(name)
            .is_some_and(|t| t.kind == TypeKind::Resource && !t.is_abstract)
    }

    /// Every concrete resource type, sorted.
    pub fn resource_types(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .types
            .iter()
            .filter(|(_, t)| t.kind == TypeKind::Resource && !t.is_abstract)
            .map(|(n, _)| n.as_str())
            .collect();
        names.sort_unstable();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_knows_resources_and_choices() {
        assert!(R4.is_resource_type("Patient"));
        assert!(R4.is_resource_type("CareTeam"));
        assert!(!R4.is_resource_type("DomainResource"));
        assert!(!R4.is_resource_type("HumanName"));
        assert_eq!(R4.resource_types().len(), 146);
        let value = R4
            .element("Observation.valueQuantity")
            .expect("choice expanded");
        assert_eq!(value.types, vec!["Quantity".to_owned()]);
        assert!(R4.element("Patient.name").expect("name").many);
        assert!(R4
            .required("Observation")
            .iter()
            .any(|r| r.name == "status"));
        let date = R4.type_def("date").expect("date");
        let re = date.regex.as_ref().expect("regex");
        assert!(re.is_match("2024-02"));
        assert!(!re.is_match("25.12.1974"));
        let string = R4
            .type_def("string")
            .and_then(|t| t.regex.as_ref())
            .expect("string");
        assert!(
            string.is_match("a\u{a0}b"),
            "a no-break space is not XML Schema white space"
        );
        let code = R4
            .type_def("code")
            .and_then(|t| t.regex.as_ref())
            .expect("code");
        assert!(code.is_match("VALI") && !code.is_match("a  b"));
    }
}
