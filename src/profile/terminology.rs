//! ValueSets and CodeSystems as far as the validator needs them: the codes a
//! ValueSet holds, expanded on first use from its `expansion`, or its `compose`
//! over the CodeSystems known (concept lists, whole complete systems, `is-a`
//! and `descendent-of` filters, other ValueSets, exclusions). A ValueSet that
//! cannot be expanded completely has no expansion: its codes are not checked,
//! and the validator says so. Pure.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use serde_json::Value;

/// The codes of a ValueSet, with their systems.
#[derive(Debug, Default)]
pub struct Expansion {
    pub coded: HashSet<(String, String)>,
    pub codes: HashSet<String>,
}

impl Expansion {
    pub fn has(&self, system: Option<&str>, code: &str) -> bool {
        match system {
            Some(system) => self.coded.contains(&(system.to_owned(), code.to_owned())),
            None => self.codes.contains(code),
        }
    }

    fn add(&mut self, system: &str, code: &str) {
        self.coded.insert((system.to_owned(), code.to_owned()));
        self.codes.insert(code.to_owned());
    }
}

struct CodeSystem {
    complete: bool,
    /// Each code with its parent, in the hierarchy of nested concepts.
    concepts: Vec<(String, Option<String>)>,
}

/// ValueSets and CodeSystems as given, read on first use.
#[derive(Default)]
pub struct Terminology {
    code_systems: HashMap<String, (Arc<Value>, OnceLock<CodeSystem>)>,
    value_sets: HashMap<String, (Arc<Value>, OnceLock<Option<Expansion>>)>,
}

/// A canonical without its `|version`.
pub fn unversioned(url: &str) -> &str {
    url.split('|').next().unwrap_or(url)
}

fn flatten(concepts: &Value, parent: Option<&str>, out: &mut Vec<(String, Option<String>)>) {
    for c in concepts.as_array().into_iter().flatten() {
        if let Some(code) = c["code"].as_str() {
            out.push((code.to_owned(), parent.map(str::to_owned)));
            flatten(&c["concept"], Some(code), out);
        }
    }
}

const MAX_NESTING: usize = 8;

impl Terminology {
    pub fn add(&mut self, resource: Arc<Value>) {
        let Some(url) = resource["url"].as_str().map(str::to_owned) else {
            return;
        };
        match resource["resourceType"].as_str() {
            Some("CodeSystem") => {
                self.code_systems.insert(url, (resource, OnceLock::new()));
            }
            Some("ValueSet") => {
                self.value_sets.insert(url, (resource, OnceLock::new()));
            }
            _ => {}
        }
    }

    fn code_system(&self, url: &str) -> Option<&CodeSystem> {
        let (raw, read) = self.code_systems.get(url)?;
        Some(read.get_or_init(|| {
            let mut concepts = Vec::new();
            flatten(&raw["concept"], None, &mut concepts);
            CodeSystem {
                complete: raw["content"].as_str() == Some("complete"),
                concepts,
            }
        }))
    }

    pub fn knows_value_set(&self, url: &str) -> bool {
        self.value_sets.contains_key(unversioned(url))
    }

    /// The codes of the ValueSet at `url`, if it is known and expands completely.
    pub fn expansion(&self, url: &str) -> Option<&Expansion> {
        self.expand(unversioned(url), 0)
    }

    fn expand(&self, url: &str, depth: usize) -> Option<&Expansion> {
        let (vs, cell) = self.value_sets.get(url)?;
        cell.get_or_init(|| self.compute(vs, depth)).as_ref()
    }

    fn compute(&self, vs: &Value, depth: usize) -> Option<Expansion> {
        if depth > MAX_NESTING {
            return None;
        }
        let mut expansion = Expansion::default();
        if let Some(contains) = vs["expansion"]["contains"].as_array() {
            if vs["expansion"]["total"]
                .as_u64()
                .is_some_and(|t| t as usize > contains.len())
            {
                return None;
            }
            let mut stack: Vec<&Value> = contains.iter().collect();
            while let Some(c) = stack.pop() {
                if let (Some(system), Some(code)) = (c["system"].as_str(), c["code"].as_str()) {
                    expansion.add(system, code);
                }
                stack.extend(c["contains"].as_array().into_iter().flatten());
            }
            return Some(expansion);
        }
        let compose = vs.get("compose")?;
        for include in compose["include"].as_array().into_iter().flatten() {
            for (system, code) in self.include(include, depth)? {
                expansion.add(&system, &code);
            }
        }
        for exclude in compose["exclude"].as_array().into_iter().flatten() {
            for (system, code) in self.include(exclude, depth)? {
                expansion.coded.remove(&(system, code.clone()));
                if !expansion.coded.iter().any(|(_, c)| *c == code) {
                    expansion.codes.remove(&code);
                }
            }
        }
        Some(expansion)
    }

    /// The (system, code) pairs one `include` (or `exclude`) selects.
    fn include(&self, include: &Value, depth: usize) -> Option<Vec<(String, String)>> {
        let mut selected: Option<Vec<(String, String)>> = None;
        if let Some(system) = include["system"].as_str() {
            let listed = include["concept"].as_array();
            let filters = include["filter"].as_array();
            let codes: Vec<String> = match (listed, filters) {
                (Some(concepts), _) => concepts
                    .iter()
                    .filter_map(|c| c["code"].as_str().map(str::to_owned))
                    .collect(),
                (None, Some(filters)) => self.filtered(system, filters)?,
                (None, None) => {
                    let cs = self.code_system(system).filter(|cs| cs.complete)?;
                    cs.concepts.iter().map(|(c, _)| c.clone()).collect()
                }
            };
            selected = Some(codes.into_iter().map(|c| (system.to_owned(), c)).collect());
        }
        for vs in include["valueSet"].as_array().into_iter().flatten() {
            let other = self.expand(unversioned(vs.as_str()?), depth + 1)?;
            let pairs: Vec<(String, String)> = other.coded.iter().cloned().collect();
            selected = Some(match selected {
                // Both a system and ValueSets: the codes in all of them.
                Some(s) => s.into_iter().filter(|p| pairs.contains(p)).collect(),
                None => pairs,
            });
        }
        selected
    }

    /// The codes `is-a` / `descendent-of` filters select in a known system.
    fn filtered(&self, system: &str, filters: &[Value]) -> Option<Vec<String>> {
        let cs = self.code_system(system).filter(|cs| cs.complete)?;
        let mut codes: Option<Vec<String>> = None;
        for f in filters {
            let root = f["value"].as_str()?;
            if f["property"].as_str() != Some("concept") {
                return None;
            }
            let inclusive = match f["op"].as_str()? {
                "is-a" => true,
                "descendent-of" => false,
                _ => return None,
            };
            let mut found: Vec<String> = if inclusive {
                vec![root.to_owned()]
            } else {
                Vec::new()
            };
            let mut frontier = vec![root.to_owned()];
            while let Some(parent) = frontier.pop() {
                for (code, p) in &cs.concepts {
                    if p.as_deref() == Some(parent.as_str()) {
                        found.push(code.clone());
                        frontier.push(code.clone());
                    }
                }
            }
            codes = Some(match codes {
                Some(c) => c.into_iter().filter(|x| found.contains(x)).collect(),
                None => found,
            });
        }
        codes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn add(t: &mut Terminology, v: Value) {
        t.add(Arc::new(v));
    }

    fn terminology() -> Terminology {
        let mut t = Terminology::default();
        add(
            &mut t,
            json!({"resourceType": "CodeSystem", "url": "cs", "content": "complete",
            "concept": [{"code": "a", "concept": [{"code": "a1"}, {"code": "a2"}]}, {"code": "b"}]}),
        );
        add(
            &mut t,
            json!({"resourceType": "CodeSystem", "url": "partial", "content": "fragment",
            "concept": [{"code": "x"}]}),
        );
        add(
            &mut t,
            json!({"resourceType": "ValueSet", "url": "all", "compose": {"include": [{"system": "cs"}]}}),
        );
        add(
            &mut t,
            json!({"resourceType": "ValueSet", "url": "listed", "compose": {"include": [
            {"system": "other", "concept": [{"code": "z"}]}]}}),
        );
        add(
            &mut t,
            json!({"resourceType": "ValueSet", "url": "under-a", "compose": {"include": [
            {"system": "cs", "filter": [{"property": "concept", "op": "descendent-of", "value": "a"}]}]}}),
        );
        add(
            &mut t,
            json!({"resourceType": "ValueSet", "url": "nested", "compose": {
            "include": [{"valueSet": ["all"]}, {"valueSet": ["listed"]}],
            "exclude": [{"system": "cs", "concept": [{"code": "b"}]}]}}),
        );
        add(
            &mut t,
            json!({"resourceType": "ValueSet", "url": "fragment", "compose": {"include": [{"system": "partial"}]}}),
        );
        add(
            &mut t,
            json!({"resourceType": "ValueSet", "url": "unknown-system", "compose": {"include": [{"system": "nowhere"}]}}),
        );
        t
    }

    #[test]
    fn compose_expands_systems_lists_filters_and_other_value_sets() {
        let t = terminology();
        let all = t.expansion("all|1.0").expect("all");
        assert!(all.has(Some("cs"), "a2") && all.has(None, "b") && !all.has(Some("other"), "a"));
        assert!(t
            .expansion("listed")
            .expect("listed")
            .has(Some("other"), "z"));
        let under = t.expansion("under-a").expect("under-a");
        assert!(under.has(Some("cs"), "a1") && !under.has(Some("cs"), "a"));
        let nested = t.expansion("nested").expect("nested");
        assert!(nested.has(Some("cs"), "a") && nested.has(Some("other"), "z"));
        assert!(!nested.has(Some("cs"), "b") && !nested.has(None, "b"));
    }

    #[test]
    fn what_cannot_be_expanded_completely_has_no_expansion() {
        let t = terminology();
        assert!(t.expansion("fragment").is_none());
        assert!(t.expansion("unknown-system").is_none());
        assert!(t.expansion("never-heard-of").is_none());
        assert!(t.knows_value_set("fragment") && !t.knows_value_set("never-heard-of"));
    }
}
