//! The search parameter table: the generated R4 table (`r4_search_params.tsv`, see
//! `scripts/gen_r4_search_params.py`) with each expression compiled once. Pure.

use std::collections::HashMap;
use std::sync::LazyLock;

use super::fhirpath::{self, Expr};

const TABLE: &str = include_str!("r4_search_params.tsv");

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
}

pub static PARAMS: LazyLock<ParamTable> = LazyLock::new(|| ParamTable::parse(TABLE));

/// Kinds that the index and the query renderer handle.
fn is_indexed(kind: ParamType) -> bool {
    !matches!(kind, ParamType::Composite | ParamType::Special)
}

impl ParamTable {
    fn parse(table: &str) -> ParamTable {
        let mut t = ParamTable::default();
        for line in table.lines().filter(|l| !l.starts_with('#')) {
            let cols: Vec<&str> = line.split('\t').collect();
            let [base, code, kind, expression, targets, _components] = cols.as_slice() else {
                continue;
            };
            let Some(kind) = ParamType::parse(kind) else {
                continue;
            };
            let name = format!("{base}.{code}");
            if !is_indexed(kind) {
                t.unsupported.push((
                    name,
                    format!("{} parameters are not indexed yet", kind.as_str()),
                ));
                continue;
            }
            match fhirpath::compile(expression) {
                Ok(expression) => {
                    t.by_type
                        .entry((*base).to_owned())
                        .or_default()
                        .push(SearchParam {
                            code: (*code).to_owned(),
                            kind,
                            expression,
                            targets: targets
                                .split(',')
                                .filter(|s| !s.is_empty())
                                .map(str::to_owned)
                                .collect(),
                        })
                }
                Err(e) => t.unsupported.push((name, e.0)),
            }
        }
        t
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_compiles_almost_everything() {
        let supported: usize = PARAMS.by_type.values().map(Vec::len).sum();
        let unsupported = PARAMS.unsupported();
        assert!(supported > 1500, "{supported} supported");
        // Composite and special parameters, and the one expression outside the subset.
        let outside: Vec<_> = unsupported
            .iter()
            .filter(|(_, why)| !why.contains("not indexed yet"))
            .collect();
        assert!(outside.len() <= 2, "{outside:?}");
        let participant = PARAMS
            .get("CareTeam", "participant")
            .expect("CareTeam.participant");
        assert_eq!(participant.kind, ParamType::Reference);
        assert!(participant.targets.contains(&"Practitioner".to_owned()));
        assert!(
            PARAMS.get("Patient", "_tag").is_some(),
            "common parameters apply to every type"
        );
        assert!(PARAMS.get("Patient", "participant").is_none());
    }
}
