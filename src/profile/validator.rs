//! The profile validator: a resource walked against the snapshot of each
//! profile it is checked against, element by element — cardinality (stricter
//! than R4's: R4's own is the structural check's), allowed types of choices,
//! `fixed[x]` and `pattern[x]`, slicing (`value`, `pattern`, `exists`, `type`
//! and `profile` discriminators; closed slicing), the profiles of data types,
//! extensions against their definitions (their context included), required and
//! extensible bindings, the target types of references, invariants (FHIRPath,
//! `profile::invariant`) — then every extension the server knows, wherever it
//! is, and the French identifiers. What it cannot check (a ValueSet it lacks,
//! an extension it does not know, an invariant it cannot evaluate) is a
//! warning saying so, never a silent pass. Messages name the element path, the
//! rule and the profile. Pure.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value};

use super::identifiers;
use super::invariant::BASE;
use super::structure::{r4_base, DiscriminatorKind, Element, Slicing, Strength, StructureDef};
use super::Conformance;
use crate::error::Issue;
use crate::fhir::definitions::{TypeKind, R4};
use crate::fhir::fhirpath::{children, Node};

/// Deeper than this is not walked (stack safety; the structural check bounds it first).
const MAX_DEPTH: usize = 64;
/// Enough issues to fix a resource, bounded for hostile input.
const MAX_ISSUES: usize = 100;

/// What the validator found.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<Issue>,
    pub warnings: Vec<Issue>,
}

struct Run<'c> {
    conf: &'c Conformance,
    /// The resource whose elements are walked (a contained or entry resource in
    /// a nested run) and the one validated (a Bundle's entries resolve there).
    resource: &'c Value,
    root: &'c Value,
    /// `%rootResource`: the container of a contained resource, else itself.
    container: &'c Value,
    findings: Findings,
    warned: HashSet<String>,
    /// Paths of the extensions already checked against their definition.
    extensions_checked: HashSet<String>,
    /// The invariants met on the way that could not be evaluated, and why.
    invariants: BTreeSet<String>,
    /// The invariants evaluated, by path and key.
    evaluated: HashSet<String>,
    depth: usize,
}

/// A value met in the instance: where, and of which type when known.
struct Found<'v> {
    value: &'v Value,
    path: String,
    type_code: Option<String>,
    /// Its type is not one the element allows (already said).
    refused: bool,
}

/// Checks `resource` against each of `profiles`, then its extensions and
/// French identifiers.
pub fn validate(conf: &Conformance, resource: &Value, profiles: &[&StructureDef]) -> Findings {
    let mut run = Run::new(conf, resource);
    let res_type = resource["resourceType"].as_str().unwrap_or_default();
    for sd in profiles {
        if sd.type_name != res_type {
            run.error(
                "invalid",
                format!(
                    "the profile {} constrains {} resources, this is a {res_type}",
                    sd.url, sd.type_name
                ),
                res_type,
            );
            continue;
        }
        run.element(sd, sd.root(), resource, res_type, Some(res_type));
    }
    run.nested(resource, res_type, 0, resource);
    if let Some(root) = crate::fhir::fhirpath::root(resource) {
        run.base_invariants(&root, res_type, 0, (resource, resource));
    }
    run.extensions(resource, res_type, res_type, 0);
    // A nested resource checked both as an element and as itself says it once.
    let mut said = HashSet::new();
    run.findings
        .errors
        .retain(|i| said.insert((i.expression.clone(), i.message.clone())));
    if !run.invariants.is_empty() {
        let keys: Vec<&str> = run.invariants.iter().map(String::as_str).collect();
        run.findings.warnings.push(Issue::new(
            "not-supported",
            format!(
                "these invariants could not be evaluated here: {}",
                keys.join("; ")
            ),
        ));
    }
    run.findings
}

/// `value` holds at least what `pattern` holds (FHIR `pattern[x]` semantics).
pub fn matches_pattern(value: &Value, pattern: &Value) -> bool {
    match (value, pattern) {
        (Value::Object(v), Value::Object(p)) => p
            .iter()
            .all(|(k, pv)| v.get(k).is_some_and(|vv| matches_pattern(vv, pv))),
        (Value::Array(v), Value::Array(p)) => p
            .iter()
            .all(|pv| v.iter().any(|vv| matches_pattern(vv, pv))),
        (Value::Array(v), p) => v.iter().any(|vv| matches_pattern(vv, p)),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (v, p) => v == p,
    }
}

/// `value` is exactly `fixed` (FHIR `fixed[x]`), numbers by value (`1.0` is `1`).
pub fn matches_fixed(value: &Value, fixed: &Value) -> bool {
    match (value, fixed) {
        (Value::Object(v), Value::Object(f)) => {
            v.len() == f.len()
                && f.iter()
                    .all(|(k, fv)| v.get(k).is_some_and(|vv| matches_fixed(vv, fv)))
        }
        (Value::Array(v), Value::Array(f)) => {
            v.len() == f.len() && v.iter().zip(f).all(|(a, b)| matches_fixed(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (v, f) => v == f,
    }
}

/// The type a choice element's key names: `valueString` → `string`,
/// `valueCodeableConcept` → `CodeableConcept`.
fn choice_type(suffix: &str) -> String {
    let mut chars = suffix.chars();
    let lowered: String = chars
        .next()
        .map(|c| c.to_ascii_lowercase().to_string() + chars.as_str())
        .unwrap_or_default();
    match R4.type_def(&lowered) {
        Some(t) if t.kind == TypeKind::Primitive => lowered,
        _ => suffix.to_owned(),
    }
}

/// The steps of a discriminator's path, split on the dots outside quotes and
/// parentheses (`extension('http://a.b/c').value`).
fn path_steps(path: &str) -> Vec<&str> {
    let mut steps = Vec::new();
    let (mut start, mut depth, mut quoted) = (0, 0usize, false);
    for (i, c) in path.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth = depth.saturating_sub(1),
            '.' if !quoted && depth == 0 => {
                steps.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    steps.push(&path[start..]);
    steps
}

/// The nodes a discriminator's path selects from `value` (`coding.system`,
/// `$this`, `extension('url')`, a choice element and `ofType(T)`); `None` for
/// paths this validator does not follow (`resolve()` …).
fn navigate<'v>(value: &'v Value, path: &str) -> Option<Vec<&'v Value>> {
    // Each node with the type its choice key named (`valueCoding` → Coding).
    let mut nodes: Vec<(&'v Value, Option<String>)> = vec![(value, None)];
    if path == "$this" {
        return Some(vec![value]);
    }
    for step in path_steps(path) {
        let mut next = Vec::new();
        if let Some(url) = step
            .strip_prefix("extension('")
            .and_then(|r| r.strip_suffix("')"))
        {
            for (n, _) in &nodes {
                let items = n
                    .get("extension")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten();
                next.extend(
                    items
                        .filter(|e| e["url"].as_str() == Some(url))
                        .map(|e| (e, None)),
                );
            }
        } else if let Some(t) = step
            .strip_prefix("ofType(")
            .and_then(|r| r.strip_suffix(')'))
        {
            next = nodes
                .into_iter()
                .filter(|(_, typed)| typed.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(t)))
                .collect();
        } else if step.contains('(') {
            return None;
        } else {
            for (n, _) in &nodes {
                let Some(obj) = n.as_object() else { continue };
                let mut push = |v: &'v Value, typed: Option<String>| match v {
                    Value::Array(items) => next.extend(items.iter().map(|i| (i, typed.clone()))),
                    v => next.push((v, typed)),
                };
                match obj.get(step) {
                    Some(v) => push(v, None),
                    // A choice element: `value` is `valueCoding`, `valueString` …
                    None => {
                        for (key, v) in obj {
                            if let Some(suffix) = key
                                .strip_prefix(step)
                                .filter(|r| r.starts_with(|c: char| c.is_ascii_uppercase()))
                            {
                                push(v, Some(choice_type(suffix)));
                            }
                        }
                    }
                }
            }
        }
        nodes = next;
    }
    Some(nodes.into_iter().map(|(v, _)| v).collect())
}

fn max_text(max: Option<u32>) -> String {
    max.map_or_else(|| "*".to_owned(), |m| m.to_string())
}

fn element_label(sd: &StructureDef, e: &Element) -> String {
    format!("{} (profile {})", e.id, sd.url)
}

impl<'c> Run<'c> {
    fn new(conf: &'c Conformance, resource: &'c Value) -> Run<'c> {
        Run {
            conf,
            resource,
            root: resource,
            container: resource,
            findings: Findings::default(),
            warned: HashSet::new(),
            extensions_checked: HashSet::new(),
            invariants: BTreeSet::new(),
            evaluated: HashSet::new(),
            depth: 0,
        }
    }

    fn error(&mut self, code: &'static str, message: String, path: &str) {
        if self.findings.errors.len() < MAX_ISSUES {
            self.findings
                .errors
                .push(Issue::new(code, message).at(path));
        }
    }

    fn warn(&mut self, key: String, message: String, path: &str) {
        if self.warned.insert(key) && self.findings.warnings.len() < MAX_ISSUES {
            self.findings
                .warnings
                .push(Issue::new("not-supported", message).at(path));
        }
    }

    /// Checks `value` against element `idx` of `sd`, then its children.
    fn element(
        &mut self,
        sd: &'c StructureDef,
        idx: usize,
        value: &'c Value,
        path: &str,
        type_code: Option<&str>,
    ) {
        if self.depth > MAX_DEPTH {
            return;
        }
        self.depth += 1;
        let e = &sd.elements[idx];
        if let Some(fixed) = &e.fixed {
            if !matches_fixed(value, fixed) {
                self.error(
                    "value",
                    format!(
                        "the value must be exactly {fixed} ({})",
                        element_label(sd, e)
                    ),
                    path,
                );
            }
        }
        if let Some(pattern) = &e.pattern {
            if !matches_pattern(value, pattern) {
                self.error(
                    "value",
                    format!(
                        "the value must match the pattern {pattern} ({})",
                        element_label(sd, e)
                    ),
                    path,
                );
            }
        }
        self.bounds(sd, e, value, path);
        let type_code =
            type_code.or_else(|| (e.types.len() == 1).then(|| e.types[0].code.as_str()));
        if let Some(t) = type_code {
            self.binding(sd, e, value, t, path);
            if t == "Reference" {
                self.reference(e, value, path);
                self.aggregation(e, value, path);
            }
        }
        self.invariants_of(sd, e, value, path, type_code);
        let children = sd.children(idx);
        if type_code == Some("Extension") && !children.is_empty() {
            // Checked here, by the profile's own view of it.
            self.extensions_checked.insert(path.to_owned());
        }
        self.type_profiles(sd, e, value, path, type_code, children.is_empty());
        if let Some(obj) = value.as_object() {
            for &kid in children {
                self.child(sd, kid, obj, path);
            }
        }
        self.depth -= 1;
    }

    /// `maxLength`, `minValue[x]` and `maxValue[x]` of a primitive value:
    /// numbers by value, dates and times by the instants they start at, the
    /// rest as text.
    fn bounds(&mut self, sd: &StructureDef, e: &Element, value: &Value, path: &str) {
        if let (Some(max), Some(text)) = (e.max_length, value.as_str()) {
            let length = text.chars().count();
            if length > max {
                self.error(
                    "value",
                    format!(
                        "{length} characters, more than the {max} of {}",
                        element_label(sd, e)
                    ),
                    path,
                );
            }
        }
        let order = |a: &Value, b: &Value| -> Option<std::cmp::Ordering> {
            match (a, b) {
                (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
                (Value::String(x), Value::String(y)) => {
                    match (
                        crate::fhir::datetime::parse_range(x),
                        crate::fhir::datetime::parse_range(y),
                    ) {
                        (Some(rx), Some(ry)) => Some(rx.low.cmp(&ry.low)),
                        _ => Some(x.cmp(y)),
                    }
                }
                _ => None,
            }
        };
        let below = e
            .min_value
            .as_ref()
            .filter(|min| order(value, min) == Some(std::cmp::Ordering::Less));
        let above = e
            .max_value
            .as_ref()
            .filter(|max| order(value, max) == Some(std::cmp::Ordering::Greater));
        for (bound, word) in [(below, "below the minimum"), (above, "above the maximum")] {
            if let Some(bound) = bound {
                self.error(
                    "value",
                    format!("{value} is {word} {bound} of {}", element_label(sd, e)),
                    path,
                );
            }
        }
    }

    /// The element's invariants of severity error, each evaluated once per
    /// path (a data type's profile repeats its element's).
    fn invariants_of(
        &mut self,
        sd: &StructureDef,
        e: &Element,
        value: &Value,
        path: &str,
        type_code: Option<&str>,
    ) {
        // An element defined elsewhere (`contentReference`) is a backbone
        // element whose children are defined at the path it names.
        let type_code = match (type_code, &e.content_ref) {
            (Some(t), _) => t,
            (None, Some(_)) => "BackboneElement",
            (None, None) => &sd.type_name,
        };
        let def_path = match type_code {
            "BackboneElement" | "Element" => e.content_ref.as_deref().unwrap_or(&e.path),
            t => t,
        };
        for c in e.constraints.iter().filter(|c| c.error) {
            let Some(compiled) = &c.compiled else {
                continue;
            };
            if !self.evaluated.insert(format!("{path}|{}", c.key)) {
                continue;
            }
            let outcome = compiled
                .as_ref()
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|i| i.holds(self.resource, self.container, value, type_code, def_path));
            let whose = element_label(sd, e);
            self.judge(outcome, &c.key, &c.human, &whose, path);
        }
    }

    /// The resources within the resource (contained ones, Bundle entries,
    /// Parameters' resources) against the known profiles they claim, each as
    /// the resource of its own checks; a claimed profile not known is a warning.
    fn nested(&mut self, value: &'c Value, path: &str, depth: usize, enclosing: &'c Value) {
        if depth > MAX_DEPTH {
            return;
        }
        match value {
            Value::Object(obj) => {
                let mut enclosing = enclosing;
                if let Some(res_type) = obj.get("resourceType").and_then(Value::as_str) {
                    if depth > 0 {
                        self.nested_resource(value, res_type, path, enclosing);
                    }
                    enclosing = value;
                }
                for (key, child) in obj {
                    if !key.starts_with('_') {
                        self.nested(child, &format!("{path}.{key}"), depth + 1, enclosing);
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.nested(item, &format!("{path}[{i}]"), depth + 1, enclosing);
                }
            }
            _ => {}
        }
    }

    fn nested_resource(
        &mut self,
        resource: &'c Value,
        res_type: &str,
        path: &str,
        container: &'c Value,
    ) {
        let claimed = resource["meta"]["profile"].as_array().into_iter().flatten();
        for url in claimed.filter_map(Value::as_str) {
            match self.conf.structure(url) {
                Some(sd) if sd.type_name == res_type => {
                    let contained = path
                        .rsplit('.')
                        .next()
                        .is_some_and(|l| l.starts_with("contained["));
                    let mut inner = Run {
                        depth: self.depth,
                        root: self.root,
                        container: if contained { container } else { resource },
                        ..Run::new(self.conf, resource)
                    };
                    inner.element(sd, sd.root(), resource, path, Some(res_type));
                    self.findings.errors.extend(inner.findings.errors);
                    for w in inner.findings.warnings {
                        let key = w.message.clone();
                        if self.warned.insert(key) {
                            self.findings.warnings.push(w);
                        }
                    }
                    self.extensions_checked.extend(inner.extensions_checked);
                    self.evaluated.extend(inner.evaluated);
                    self.invariants.extend(inner.invariants);
                }
                Some(sd) => self.error(
                    "invalid",
                    format!(
                        "the profile {} constrains {} resources, this is a {res_type}",
                        sd.url, sd.type_name
                    ),
                    path,
                ),
                None if url
                    .strip_prefix("http://hl7.org/fhir/StructureDefinition/")
                    .is_some_and(|t| t == res_type) => {}
                None => self.warn(
                    format!("profile {url}"),
                    format!(
                        "the profile {url} is not known here: {path} was not checked against it"
                    ),
                    path,
                ),
            }
        }
    }

    /// What an invariant evaluated to: nothing said when it holds, an error
    /// naming it (`whose`: the element and profile) when it fails, the reason
    /// kept for the warning when it could not be evaluated.
    fn judge(
        &mut self,
        outcome: Result<bool, super::invariant::NotEvaluated>,
        key: &str,
        human: &str,
        whose: &str,
        path: &str,
    ) {
        match outcome {
            Ok(true) => {}
            Ok(false) => self.error(
                "invariant",
                format!(
                    "constraint {key} failed: {} ({whose})",
                    human.trim_end_matches('.')
                ),
                path,
            ),
            Err(why) => {
                self.invariants.insert(format!("{key} ({})", why.0));
            }
        }
    }

    /// The R4 invariants of every resource, backbone element and data type of
    /// the resource (`per-1` of each Period …), typed by the R4 definitions;
    /// those a profile's snapshot holds too are evaluated once.
    fn base_invariants(
        &mut self,
        node: &Node<'c>,
        path: &str,
        depth: usize,
        (resource, container): (&'c Value, &'c Value),
    ) {
        if depth > MAX_DEPTH {
            return;
        }
        for rule in BASE.get(node.def_path.as_str()).into_iter().flatten() {
            if !self.evaluated.insert(format!("{path}|{}", rule.key)) {
                continue;
            }
            let outcome = rule.invariant.as_ref().map_err(Clone::clone).and_then(|i| {
                i.holds(
                    resource,
                    container,
                    node.value,
                    &node.type_code,
                    &node.def_path,
                )
            });
            let whose = format!("R4 {}", node.def_path);
            self.judge(outcome, &rule.key, &rule.human, &whose, path);
        }
        let Some(obj) = node.value.as_object() else {
            return;
        };
        for (key, value) in obj {
            if key == "resourceType" || key.starts_with('_') {
                continue;
            }
            let mut found = Vec::new();
            children(node, key, &mut found);
            let many = value.is_array();
            for (i, child) in found.iter().enumerate() {
                let at = if many {
                    format!("{path}.{key}[{i}]")
                } else {
                    format!("{path}.{key}")
                };
                // A resource within is the resource of its own invariants; a
                // contained one keeps its container as `%rootResource`.
                let scope = if child.value.get("resourceType").is_some() {
                    let root = if key == "contained" {
                        resource
                    } else {
                        child.value
                    };
                    (child.value, root)
                } else {
                    (resource, container)
                };
                self.base_invariants(child, &at, depth + 1, scope);
            }
        }
    }

    /// The profiles an element's type carries: a data type's profile, an
    /// extension's definition.
    fn type_profiles(
        &mut self,
        sd: &StructureDef,
        e: &Element,
        value: &'c Value,
        path: &str,
        type_code: Option<&str>,
        no_children: bool,
    ) {
        let Some(t) = e
            .types
            .iter()
            .find(|t| Some(t.code.as_str()) == type_code && !t.profiles.is_empty())
        else {
            return;
        };
        // A resource (contained, a Bundle entry) is checked against the
        // profiles of its own type; of several, the first it meets.
        let resource_type = value["resourceType"].as_str();
        let known: Vec<&'c StructureDef> = t
            .profiles
            .iter()
            .filter_map(|p| self.conf.structure(p))
            .collect();
        if known.is_empty() {
            if no_children {
                let wanted = t.profiles.join(", ");
                self.warn(
                    wanted.clone(),
                    format!(
                        "the profile {wanted} ({}) is not known here: {path} was not checked against it",
                        element_label(sd, e)
                    ),
                    path,
                );
            }
            return;
        }
        let candidates: Vec<&'c StructureDef> = known
            .into_iter()
            .filter(|p| p.url != sd.url && resource_type.is_none_or(|rt| p.type_name == rt))
            .collect();
        let type_code = resource_type.or(type_code);
        let chosen = match candidates.as_slice() {
            [] => {
                if let Some(rt) = resource_type {
                    self.error(
                        "structure",
                        format!(
                            "a {rt} is not allowed here: {} allows {}",
                            element_label(sd, e),
                            t.profiles.join(", ")
                        ),
                        path,
                    );
                }
                return;
            }
            [one] => *one,
            several => several
                .iter()
                .copied()
                .find(|p| self.passes(p, value, type_code))
                .unwrap_or(several[0]),
        };
        if chosen.type_name == "Extension" && !self.extensions_checked.insert(path.to_owned()) {
            return;
        }
        self.element(chosen, chosen.root(), value, path, type_code);
    }

    /// Whether `value` meets `profile` (no errors), checked on the side.
    fn passes(&self, profile: &'c StructureDef, value: &'c Value, type_code: Option<&str>) -> bool {
        let mut probe = Run {
            depth: self.depth,
            root: self.root,
            ..Run::new(self.conf, self.resource)
        };
        probe.element(profile, profile.root(), value, "", type_code);
        probe.findings.errors.is_empty()
    }

    /// The values of child element `kid` in `obj`, checked for cardinality,
    /// types and slicing, then each walked.
    fn child(
        &mut self,
        sd: &'c StructureDef,
        kid: usize,
        obj: &'c Map<String, Value>,
        parent: &str,
    ) {
        let e = &sd.elements[kid];
        let name = e.name();
        let mut found: Vec<Found<'c>> = Vec::new();
        let mut count = 0;
        let push = |key: &str,
                    value: &'c Value,
                    type_code: Option<String>,
                    refused: bool,
                    found: &mut Vec<Found<'c>>| {
            match value {
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if !item.is_null() {
                            found.push(Found {
                                value: item,
                                path: format!("{parent}.{key}[{i}]"),
                                type_code: type_code.clone(),
                                refused,
                            });
                        }
                    }
                }
                v => found.push(Found {
                    value: v,
                    path: format!("{parent}.{key}"),
                    type_code,
                    refused,
                }),
            }
        };
        if let Some(stem) = name.strip_suffix("[x]") {
            // A choice present only by its extensions (`_effectiveDateTime`) counts.
            count += obj
                .keys()
                .filter_map(|k| k.strip_prefix('_'))
                .filter(|k| {
                    k.strip_prefix(stem)
                        .is_some_and(|s| s.starts_with(|c: char| c.is_ascii_uppercase()))
                        && !obj.contains_key(*k)
                })
                .count();
            for (key, value) in obj {
                let Some(suffix) = key
                    .strip_prefix(stem)
                    .filter(|s| s.starts_with(|c: char| c.is_ascii_uppercase()))
                else {
                    continue;
                };
                let type_code = choice_type(suffix);
                let refused = !e.types.is_empty() && !e.types.iter().any(|t| t.code == type_code);
                if refused {
                    let allowed: Vec<&str> = e.types.iter().map(|t| t.code.as_str()).collect();
                    self.error(
                        "structure",
                        format!(
                            "the type {type_code} is not allowed here: {} allows {}",
                            element_label(sd, e),
                            allowed.join(", ")
                        ),
                        &format!("{parent}.{key}"),
                    );
                }
                count += value.as_array().map_or(1, Vec::len);
                push(key, value, Some(type_code), refused, &mut found);
            }
        } else {
            let main = obj.get(name);
            let shadow = obj.get(&format!("_{name}"));
            let len = |v: Option<&Value>| v.map_or(0, |v| v.as_array().map_or(1, Vec::len));
            count = len(main).max(len(shadow));
            let type_code = (e.types.len() == 1).then(|| e.types[0].code.clone());
            if let Some(value) = main {
                push(name, value, type_code, false, &mut found);
            }
        }
        self.cardinality(sd, e, count, &format!("{parent}.{name}"));
        let slices = sd.slices(kid);
        match &e.slicing {
            Some(slicing) if !slices.is_empty() => self.sliced(sd, kid, slicing, slices, found),
            _ => {
                for f in &found {
                    self.element(sd, kid, f.value, &f.path, f.type_code.as_deref());
                }
            }
        }
    }

    /// Cardinality, where the profile says more than R4 (R4's own is checked by
    /// the structural validation of every resource).
    fn cardinality(&mut self, sd: &StructureDef, e: &Element, count: usize, path: &str) {
        let base = if e.slice_name.is_some() {
            None
        } else {
            r4_base(&e.path)
        };
        let (base_min, base_many) = base.map_or((0, true), |b| (b.min, b.many));
        if (count as u64) < u64::from(e.min) && e.min > base_min {
            self.error(
                "required",
                format!(
                    "{}: minimum required = {}, but only found {count}",
                    element_label(sd, e),
                    e.min
                ),
                path,
            );
        }
        if let Some(max) = e.max {
            let stricter = base_many || max == 0;
            if count as u64 > u64::from(max) && stricter {
                self.error(
                    "structure",
                    format!(
                        "{}: maximum allowed = {}, but found {count}",
                        element_label(sd, e),
                        max_text(e.max)
                    ),
                    path,
                );
            }
        }
    }

    fn sliced(
        &mut self,
        sd: &'c StructureDef,
        kid: usize,
        slicing: &Slicing,
        slices: &[usize],
        found: Vec<Found<'c>>,
    ) {
        let unfollowed = slicing.discriminators.iter().find(|(_, p)| {
            path_steps(p).iter().any(|step| {
                step.contains('(')
                    && !step.starts_with("extension('")
                    && !step.starts_with("ofType(")
            })
        });
        if let Some((_, p)) = unfollowed {
            let e = &sd.elements[kid];
            self.warn(
                format!("slicing {}", e.id),
                format!(
                    "the slices of {} were not told apart: the discriminator path {p} is not followed here",
                    element_label(sd, e)
                ),
                &e.path,
            );
            for f in &found {
                self.element(sd, kid, f.value, &f.path, f.type_code.as_deref());
            }
            return;
        }
        let mut counts = vec![0usize; slices.len()];
        // Where the elements met so far were: the last slice, and whether one
        // matched none (for `ordered` and `openAtEnd`).
        let (mut last_slice, mut unsliced_before) = (None, false);
        for f in &found {
            let slice = slices
                .iter()
                .position(|&s| self.in_slice(sd, s, slicing, f.value, f.type_code.as_deref()));
            if let Some(i) = slice {
                let e = &sd.elements[kid];
                if slicing.ordered && last_slice.is_some_and(|last| i < last) {
                    self.error(
                        "structure",
                        format!(
                            "the slices of {} are ordered: this element of slice '{}' comes after one of a later slice",
                            element_label(sd, e),
                            sd.elements[slices[i]].slice_name.as_deref().unwrap_or_default()
                        ),
                        &f.path,
                    );
                }
                if slicing.open_at_end && unsliced_before {
                    self.error(
                        "structure",
                        format!(
                            "the slicing of {} is open at the end: this element of a slice comes after one that matches no slice",
                            element_label(sd, e)
                        ),
                        &f.path,
                    );
                }
                last_slice = Some(i);
            } else {
                unsliced_before = true;
            }
            match slice {
                Some(i) => {
                    counts[i] += 1;
                    self.element(sd, slices[i], f.value, &f.path, f.type_code.as_deref());
                }
                None => {
                    if slicing.closed && !f.refused {
                        let e = &sd.elements[kid];
                        self.error(
                            "structure",
                            format!(
                                "this element matches none of the slices of {}, whose slicing is closed",
                                element_label(sd, e)
                            ),
                            &f.path,
                        );
                    }
                    self.element(sd, kid, f.value, &f.path, f.type_code.as_deref());
                }
            }
        }
        let parent_path = found
            .first()
            .map(|f| f.path.split('[').next().unwrap_or(&f.path).to_owned());
        for (i, &s) in slices.iter().enumerate() {
            let slice = &sd.elements[s];
            let path = parent_path.clone().unwrap_or_else(|| slice.path.clone());
            if (counts[i] as u64) < u64::from(slice.min) {
                self.error(
                    "required",
                    format!(
                        "slice '{}' of {}: minimum required = {}, but only found {}",
                        slice.slice_name.as_deref().unwrap_or_default(),
                        element_label(sd, slice),
                        slice.min,
                        counts[i]
                    ),
                    &path,
                );
            }
            if slice.max.is_some_and(|m| counts[i] as u64 > u64::from(m)) {
                self.error(
                    "structure",
                    format!(
                        "slice '{}' of {}: maximum allowed = {}, but found {}",
                        slice.slice_name.as_deref().unwrap_or_default(),
                        element_label(sd, slice),
                        max_text(slice.max),
                        counts[i]
                    ),
                    &path,
                );
            }
        }
    }

    /// The values the slice `s` gives its discriminator's path, and whether
    /// they are fixed (exact) rather than patterns: from the deepest element on
    /// the path with a fixed or pattern value (`code` with a pattern
    /// CodeableConcept, for `code.coding.code`), the rest of the path followed
    /// inside that value; else from the slice's type profile.
    fn discriminator_values(
        &self,
        sd: &'c StructureDef,
        s: usize,
        path: &str,
    ) -> Option<(Vec<&'c Value>, bool)> {
        let slice = &sd.elements[s];
        let steps: Vec<&str> = if path == "$this" {
            Vec::new()
        } else {
            path.split('.').collect()
        };
        // The elements the path reaches, through the slices on the way
        // (`code.coding.code` reaches `code.coding:SBPCode.code`).
        let within = |owner: &'c StructureDef, root: usize| -> Option<(Vec<&'c Value>, bool)> {
            let mut values = Vec::new();
            let mut exact = true;
            let mut current = vec![root];
            for k in 0..=steps.len() {
                for &c in &current {
                    let e = &owner.elements[c];
                    let (value, fixed) = match (&e.fixed, &e.pattern) {
                        (Some(f), _) => (f, true),
                        (None, Some(p)) => (p, false),
                        _ => continue,
                    };
                    exact &= fixed;
                    let rest = steps[k..].join(".");
                    if rest.is_empty() {
                        values.push(value);
                    } else {
                        values.extend(navigate(value, &rest)?);
                    }
                }
                if !values.is_empty() || k == steps.len() {
                    break;
                }
                let mut next = Vec::new();
                for &c in &current {
                    if let Some(i) =
                        owner.element_id(&format!("{}.{}", owner.elements[c].id, steps[k]))
                    {
                        next.push(i);
                        next.extend_from_slice(owner.slices(i));
                    }
                }
                current = next;
            }
            (!values.is_empty()).then_some((values, exact))
        };
        within(sd, s).or_else(|| {
            let profile = slice
                .types
                .iter()
                .flat_map(|t| &t.profiles)
                .find_map(|p| self.conf.structure(p))?;
            within(profile, profile.root())
        })
    }

    fn in_slice(
        &self,
        sd: &'c StructureDef,
        s: usize,
        slicing: &Slicing,
        value: &Value,
        type_code: Option<&str>,
    ) -> bool {
        let slice = &sd.elements[s];
        slicing
            .discriminators
            .iter()
            .all(|(kind, path)| match kind {
                DiscriminatorKind::Value | DiscriminatorKind::Pattern => {
                    // An extension's slice by url: the url of its definition.
                    if path == "url" && slice.types.iter().any(|t| t.code == "Extension") {
                        if let Some(url) = slice.types.iter().flat_map(|t| &t.profiles).next() {
                            if sd.element_id(&format!("{}.url", slice.id)).is_none() {
                                return value["url"].as_str()
                                    == Some(url.split('|').next().unwrap_or(url));
                            }
                        }
                    }
                    let Some((expected, exact)) = self.discriminator_values(sd, s, path) else {
                        return false;
                    };
                    let Some(nodes) = navigate(value, path) else {
                        return false;
                    };
                    nodes.iter().any(|n| {
                        expected
                            .iter()
                            .any(|x| if exact { n == x } else { matches_pattern(n, x) })
                    })
                }
                DiscriminatorKind::Exists => {
                    let Some(i) = sd.element_id(&format!("{}.{path}", slice.id)) else {
                        return false;
                    };
                    let present = navigate(value, path).is_some_and(|n| !n.is_empty());
                    let e = &sd.elements[i];
                    if e.max == Some(0) {
                        !present
                    } else {
                        present || e.min == 0
                    }
                }
                DiscriminatorKind::Type => {
                    let (nodes, element) = match self.discriminated(sd, s, value, path) {
                        Some(found) => found,
                        None => return false,
                    };
                    nodes.iter().any(|n| {
                        let actual = if path == "$this" {
                            type_code.or_else(|| n["resourceType"].as_str())
                        } else {
                            n["resourceType"].as_str()
                        };
                        actual.is_some_and(|a| element.types.iter().any(|t| t.code == a))
                    })
                }
                DiscriminatorKind::Profile => {
                    let (nodes, element) = match self.discriminated(sd, s, value, path) {
                        Some(found) => found,
                        None => return false,
                    };
                    let profiles: Vec<&'c StructureDef> = element
                        .types
                        .iter()
                        .flat_map(|t| &t.profiles)
                        .filter_map(|p| self.conf.structure(p))
                        .collect();
                    !profiles.is_empty()
                        && nodes.iter().any(|n| {
                            let t = n["resourceType"].as_str().or(type_code);
                            profiles
                                .iter()
                                .filter(|p| {
                                    n["resourceType"]
                                        .as_str()
                                        .is_none_or(|rt| p.type_name == rt)
                                })
                                .any(|p| self.passes(p, n, t))
                        })
                }
            })
    }

    /// The nodes a `type` or `profile` discriminator's path selects in `value`,
    /// and the slice's element at that path (the slice itself for `$this`,
    /// `{slice}.resource` for `resource`), whose types and profiles say.
    fn discriminated(
        &self,
        sd: &'c StructureDef,
        s: usize,
        value: &'c Value,
        path: &str,
    ) -> Option<(Vec<&'c Value>, &'c Element)> {
        let slice = &sd.elements[s];
        let element = if path == "$this" {
            slice
        } else {
            &sd.elements[sd.element_id(&format!("{}.{path}", slice.id))?]
        };
        Some((navigate(value, path)?, element))
    }

    /// Required bindings (errors) and extensible ones (warnings) of codes,
    /// Codings and CodeableConcepts.
    fn binding(
        &mut self,
        sd: &StructureDef,
        e: &Element,
        value: &Value,
        type_code: &str,
        path: &str,
    ) {
        let Some((strength, value_set)) = &e.binding else {
            return;
        };
        if *strength == Strength::Other {
            return;
        }
        let codes: Vec<(Option<&str>, &str)> = match type_code {
            "code" => value.as_str().map(|c| (None, c)).into_iter().collect(),
            "Coding" => value["code"]
                .as_str()
                .map(|c| (value["system"].as_str(), c))
                .into_iter()
                .collect(),
            "CodeableConcept" => value["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| Some((c["system"].as_str(), c["code"].as_str()?)))
                .collect(),
            _ => return,
        };
        if codes.is_empty() {
            return;
        }
        let vs = super::terminology::unversioned(value_set);
        let known = match self.conf.terminology.expansion(vs) {
            Some(expansion) => Some(codes.iter().any(|(s, c)| expansion.has(*s, c))),
            None if type_code == "code" => R4
                .value_set_codes(vs)
                .map(|set| codes.iter().any(|(_, c)| set.contains(*c))),
            None => None,
        };
        let shown: Vec<String> = codes
            .iter()
            .map(|(s, c)| s.map_or_else(|| (*c).to_owned(), |s| format!("{s}|{c}")))
            .collect();
        match (known, strength) {
            (Some(true), _) => {}
            (Some(false), Strength::Required) => self.error(
                "code-invalid",
                format!(
                    "{} is not in the ValueSet {vs}, which {} binds with strength required",
                    shown.join(", "),
                    element_label(sd, e)
                ),
                path,
            ),
            (Some(false), _) => {
                let key = format!("{path} {vs}");
                self.warn(
                    key,
                    format!(
                        "{} is not in the ValueSet {vs}, which {} binds with strength extensible",
                        shown.join(", "),
                        element_label(sd, e)
                    ),
                    path,
                );
            }
            (None, Strength::Required) => self.warn(
                vs.to_owned(),
                format!(
                    "the ValueSet {vs} (required by {}) is not known here or does not expand completely: {path} was not checked against it",
                    element_label(sd, e)
                ),
                path,
            ),
            (None, _) => {}
        }
    }

    /// How a reference is held, among the aggregation modes the element
    /// allows: `contained` (`#id`), `bundled` (an entry of the Bundle being
    /// validated), `referenced` (anything else).
    fn aggregation(&mut self, e: &Element, value: &Value, path: &str) {
        let modes: Vec<&str> = e
            .types
            .iter()
            .filter(|t| t.code == "Reference")
            .flat_map(|t| t.aggregation.iter().map(String::as_str))
            .collect();
        let Some(reference) = value["reference"].as_str() else {
            return;
        };
        if modes.is_empty() {
            return;
        }
        let bundled = self.root["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|entry| entry["fullUrl"].as_str() == Some(reference));
        let held = if reference.starts_with('#') {
            "contained"
        } else if bundled {
            "bundled"
        } else {
            "referenced"
        };
        if !modes.contains(&held) {
            self.error(
                "structure",
                format!(
                    "the reference {reference} is {held}; {} must be {} (aggregation)",
                    e.id,
                    modes.join(" or ")
                ),
                path,
            );
        }
    }

    /// The type a reference points to, among those the element allows.
    fn reference(&mut self, e: &Element, value: &Value, path: &str) {
        let mut allowed: Vec<String> = Vec::new();
        for t in e.types.iter().filter(|t| t.code == "Reference") {
            for target in &t.target_profiles {
                let name = match self.conf.structure(target) {
                    Some(sd) => sd.type_name.clone(),
                    // A core type by its URL; a profile not loaded (`vitalsigns`):
                    // its type is not known here, so nothing is checked.
                    None => match target.strip_prefix("http://hl7.org/fhir/StructureDefinition/") {
                        Some(core) if R4.is_resource_type(core) || core == "Resource" => {
                            core.to_owned()
                        }
                        _ => return,
                    },
                };
                allowed.push(name);
            }
        }
        if allowed.is_empty() || allowed.iter().any(|a| a == "Resource") {
            return;
        }
        let actual = match value["reference"].as_str() {
            Some(local) if local.starts_with('#') => self.resource["contained"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["id"].as_str() == Some(&local[1..]))
                .and_then(|c| c["resourceType"].as_str()),
            // An entry of the Bundle being validated, by its fullUrl.
            Some(url) if url.starts_with("urn:") => self.root["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["fullUrl"].as_str() == Some(url))
                .and_then(|e| e["resource"]["resourceType"].as_str()),
            _ => crate::fhir::fhirpath::reference_type(value),
        };
        if let Some(actual) = actual {
            if !allowed.iter().any(|a| a == actual) {
                self.error(
                    "structure",
                    format!(
                        "a reference to a {actual} is not allowed at {} (allowed: {})",
                        e.id,
                        allowed.join(", ")
                    ),
                    path,
                );
            }
        }
    }

    /// Every extension of the resource the server knows that was not checked
    /// on the way: against its definition, in its context. Unknown ones are a
    /// warning each.
    /// `element` is the element path from the nearest resource (a contained
    /// or entry resource starts its own), for the extensions' contexts.
    fn extensions(&mut self, value: &'c Value, path: &str, element: &str, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        match value {
            Value::Object(obj) => {
                // A French identifier, in the same walk.
                if let (Some(system), Some(v)) = (
                    obj.get("system").and_then(Value::as_str),
                    obj.get("value").and_then(Value::as_str),
                ) {
                    if let Some(broken) = identifiers::check(system, v) {
                        self.error(
                            "value",
                            format!("{} ({})", broken.message, broken.rule),
                            &format!("{path}.value"),
                        );
                    }
                }
                // A resource's narrative: txt-1 and txt-2 (`fhir::xhtml`).
                if let (Some(_), Some(div)) = (
                    obj.get("resourceType"),
                    obj.get("text")
                        .and_then(|t| t.get("div"))
                        .and_then(Value::as_str),
                ) {
                    for problem in crate::fhir::xhtml::problems(div) {
                        self.error("invariant", problem, &format!("{path}.text.div"));
                    }
                }
                let element = match obj.get("resourceType").and_then(Value::as_str) {
                    Some(rt) if depth > 0 => rt,
                    _ => element,
                };
                for (key, child) in obj {
                    let name = key.strip_prefix('_').unwrap_or(key);
                    // ele-1: an element has a value or children; an `id` alone
                    // is neither (a primitive's `_x` with its value beside it is).
                    let valued = key.starts_with('_') && obj.contains_key(name);
                    let items = match child {
                        Value::Array(items) if !key.starts_with('_') => items.iter().collect(),
                        Value::Object(_) if !valued => vec![child],
                        _ => Vec::new(),
                    };
                    for (i, item) in items.into_iter().enumerate() {
                        if item
                            .as_object()
                            .is_some_and(|o| !o.is_empty() && o.keys().all(|k| k == "id"))
                        {
                            let at = match child {
                                Value::Array(_) => format!("{path}.{name}[{i}]"),
                                _ => format!("{path}.{name}"),
                            };
                            self.error(
                                "invariant",
                                "ele-1: All FHIR elements must have a @value or children (an id alone is neither)".to_owned(),
                                &at,
                            );
                        }
                    }
                    if matches!(name, "extension" | "modifierExtension") {
                        if let Value::Array(items) = child {
                            for (i, ext) in items.iter().enumerate() {
                                let at = format!("{path}.{name}[{i}]");
                                self.extension(ext, element, &at);
                            }
                        }
                    }
                    self.extensions(
                        child,
                        &format!("{path}.{name}"),
                        &format!("{element}.{name}"),
                        depth + 1,
                    );
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.extensions(item, &format!("{path}[{i}]"), element, depth + 1);
                }
            }
            _ => {}
        }
    }

    /// An extension at `at`, on the element at element path `element_path`.
    fn extension(&mut self, ext: &'c Value, element_path: &str, at: &str) {
        let Some(url) = ext["url"].as_str() else {
            return;
        };
        if !url.contains(':') || self.extensions_checked.contains(at) {
            return;
        }
        let Some(definition) = self
            .conf
            .structure(url)
            .filter(|sd| sd.type_name == "Extension")
        else {
            match unknown_extension_allowed(url) {
                true => self.warn(
                    format!("extension {url}"),
                    format!("the extension {url} is not known here: it was not checked"),
                    at,
                ),
                // As the HL7 validator (Extension_EXT_Unknown_NotHere): an
                // extension nobody defines is no extension.
                false => self.error(
                    "structure",
                    format!(
                        "the extension {url} could not be found so is not allowed here (R4's, FR Core's with its package, the NdE guide's and the loaded packages' are known)"
                    ),
                    at,
                ),
            }
            return;
        };
        self.extensions_checked.insert(at.to_owned());
        let element_path = element_path.to_owned();
        if let Some(parent_type) = type_at(&element_path) {
            let resource_root = !element_path.contains('.');
            let names = context_names(&element_path);
            let allowed = definition.contexts.is_empty()
                || definition.contexts.iter().any(|c| {
                    c == "Element"
                        || c == "Base"
                        || *c == parent_type
                        || names.contains(c)
                        || (resource_root && (c == "Resource" || c == "DomainResource"))
                });
            if !allowed {
                self.error(
                    "structure",
                    format!(
                        "the extension {url} may be used on {}, not on {element_path} ({parent_type})",
                        definition.contexts.join(", ")
                    ),
                    at,
                );
            }
        }
        // As the HL7 validator (Extension_EXT_Modifier_MismatchY/N): a modifier
        // extension only in `modifierExtension`, and nothing else there.
        let in_modifiers = at
            .rsplit('.')
            .next()
            .is_some_and(|last| last.starts_with("modifierExtension"));
        match (in_modifiers, definition.is_modifier) {
            (true, false) => self.error(
                "structure",
                format!("the extension {url} is not a modifier extension: it may not be in modifierExtension"),
                at,
            ),
            (false, true) => self.error(
                "structure",
                format!("the extension {url} is a modifier extension: it must be in modifierExtension"),
                at,
            ),
            _ => {}
        }
        self.element(definition, definition.root(), ext, at, Some("Extension"));
    }
}

/// The names a context may give the element at `path`: the path itself and,
/// from each data type on the way, the path from that type
/// (`Patient.name.given` is also `HumanName.given`).
fn context_names(path: &str) -> Vec<String> {
    let segments: Vec<&str> = path.split('.').collect();
    let mut names = vec![path.to_owned()];
    for k in 2..segments.len() {
        let prefix = segments[..k].join(".");
        if let Some(t) = type_at(&prefix).filter(|t| t != "BackboneElement" && t != "Element") {
            names.push(format!("{t}.{}", segments[k..].join(".")));
        }
    }
    names
}

/// The type of the element at an element path (`Patient.address` → `Address`),
/// when R4 says it.
fn type_at(path: &str) -> Option<String> {
    if !path.contains('.') {
        return R4.is_resource_type(path).then(|| path.to_owned());
    }
    let base = r4_base(path)?;
    match base.types.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// Extensions let through unknown, said not checked: those the HL7 validator
/// lets through (DICOM's, the FHIR tools', the cross-version ones of other FHIR
/// releases, which it reads from the element they stand for), and the Subscriptions
/// Backport guide's, which the server reads itself (`subscription`) without
/// shipping their definitions. Any other unknown extension is an error.
fn unknown_extension_allowed(url: &str) -> bool {
    url.contains("nema.org")
        || url.starts_with("http://hl7.org/fhir/tools/StructureDefinition/")
        || url.starts_with("http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/")
        || ["1.0", "3.0", "4.3", "5.0"].iter().any(|release| {
            url.starts_with(&format!(
                "http://hl7.org/fhir/{release}/StructureDefinition/extension-"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// FR Core 2.1.0 from `../shared` (absent from a user's clone: those tests say so and pass).
    fn fr_core() -> Option<PathBuf> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/ig/fr-core-2.1.0");
        if dir.is_dir() {
            Some(dir)
        } else {
            eprintln!("skipped: {} is not here", dir.display());
            None
        }
    }

    fn check(conf: &Conformance, resource: &Value) -> Findings {
        let profiles: Vec<&StructureDef> = resource["meta"]["profile"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| conf.structure(p.as_str()?))
            .collect();
        validate(conf, resource, &profiles)
    }

    fn load(dir: &std::path::Path) -> Conformance {
        Conformance::new(super::super::package::read(dir).expect("package"))
    }

    fn example(dir: &std::path::Path, name: &str) -> Value {
        let path = dir.join("example").join(name);
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json")
    }

    fn error_paths(findings: &Findings) -> Vec<String> {
        findings
            .errors
            .iter()
            .map(|i| i.expression.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn fr_core_examples_validate_against_their_profiles() {
        let Some(dir) = fr_core() else { return };
        let conf = load(&dir);
        let mut names: Vec<String> = std::fs::read_dir(dir.join("example"))
            .expect("examples")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 12);
        for name in names {
            let resource = example(&dir, &name);
            let findings = check(&conf, &resource);
            if name == "Patient-ExampleFRCorePatient001.json" {
                // The published example's INS-NIR key is 44; its number gives 12.
                assert_eq!(
                    error_paths(&findings),
                    ["Patient.identifier[0].value"],
                    "{name}"
                );
                assert!(findings.errors[0].message.contains("fr-nir-key"));
            } else {
                assert!(findings.errors.is_empty(), "{name}: {:#?}", findings.errors);
            }
        }
    }

    /// The FR Core Patient example, its INS key corrected, then changed by `mutate`.
    fn patient_errors(mutate: impl FnOnce(&mut Value)) -> Option<Findings> {
        let dir = fr_core()?;
        let conf = load(&dir);
        let mut patient = example(&dir, "Patient-ExampleFRCorePatient001.json");
        patient["identifier"][0]["value"] = Value::from("123456789012212");
        mutate(&mut patient);
        Some(check(&conf, &patient))
    }

    #[test]
    fn the_corrected_patient_is_clean() {
        let Some(findings) = patient_errors(|_| {}) else {
            return;
        };
        assert!(findings.errors.is_empty(), "{:#?}", findings.errors);
    }

    /// The corrected Patient changed by `mutate` has one error, at `path`,
    /// whose message names `named`.
    fn one_error(mutate: impl FnOnce(&mut Value), path: &str, named: &str) {
        let Some(findings) = patient_errors(mutate) else {
            return;
        };
        assert_eq!(error_paths(&findings), [path]);
        assert!(
            findings.errors[0].message.contains(named),
            "{:?}",
            findings.errors
        );
    }

    #[test]
    fn a_required_element_removed_is_named() {
        one_error(
            |p| {
                p["name"][0].as_object_mut().expect("name").remove("family");
            },
            "Patient.name[0].family",
            "Patient.name:officialName.family",
        );
    }

    #[test]
    fn a_slice_with_the_wrong_system_is_named() {
        let Some(findings) = patient_errors(|p| {
            p["identifier"][0]["system"] = Value::from("urn:oid:1.2.250.1.213.1.4.2");
        }) else {
            return;
        };
        // And with no INS-NIR left, fr-core-1 (a validated identity has one) fails.
        assert_eq!(
            error_paths(&findings),
            ["Patient", "Patient.identifier[0].system"]
        );
        assert!(findings.errors[0].message.contains("fr-core-1"));
        assert!(findings.errors[1]
            .message
            .contains("Patient.identifier:INS-NIR.system"));
    }

    #[test]
    fn a_broken_invariant_is_named() {
        one_error(
            |p| {
                p["address"][0]["period"] =
                    serde_json::json!({"start": "2018-06-01", "end": "2017-01-01"});
            },
            "Patient.address[0].period",
            "per-1",
        );
    }

    #[test]
    fn a_code_outside_a_required_binding_is_named() {
        one_error(
            |p| {
                p["extension"][0]["extension"]
                    .as_array_mut()
                    .expect("sub-extensions")
                    .push(serde_json::json!({"url": "validationMode", "valueCoding": {
                        "system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-mode-validation-identity",
                        "code": "NOT-A-MODE"}}));
            },
            "Patient.extension[0].extension[1].valueCoding",
            "strength required",
        );
    }

    #[test]
    fn an_extension_nobody_defines_is_an_error_and_r4_ones_are_checked() {
        let conf = Conformance::new(Vec::new());
        let with = |url: &str, value: Value| {
            let mut extension = serde_json::json!({"url": url});
            if let (Some(ext), Some(value)) = (extension.as_object_mut(), value.as_object()) {
                ext.extend(value.clone());
            }
            serde_json::json!({"resourceType": "Patient", "extension": [extension]})
        };
        let unknown = check(
            &conf,
            &with(
                "https://editeur.example/fhir/ext/x",
                serde_json::json!({"valueString": "a"}),
            ),
        );
        assert_eq!(error_paths(&unknown), ["Patient.extension[0]"]);
        assert!(unknown.errors[0].message.contains("could not be found"));
        // R4's own are known, and checked: a birth place is an Address.
        let birth_place = "http://hl7.org/fhir/StructureDefinition/patient-birthPlace";
        let wrong = check(
            &conf,
            &with(birth_place, serde_json::json!({"valueString": "Lyon"})),
        );
        assert_eq!(wrong.errors.len(), 1, "{:?}", wrong.errors);
        let right = check(
            &conf,
            &with(
                birth_place,
                serde_json::json!({"valueAddress": {"city": "Lyon"}}),
            ),
        );
        assert!(right.errors.is_empty(), "{:?}", right.errors);
        // A modifier extension goes in modifierExtension, and nothing else does.
        let do_not_perform = |key: &str| {
            serde_json::json!({"resourceType": "NutritionOrder", "status": "active", "intent": "order",
                "patient": {"reference": "Patient/p"}, "dateTime": "2026-11-29",
                key: [{"url": "http://hl7.org/fhir/StructureDefinition/request-doNotPerform", "valueBoolean": true}]})
        };
        let misplaced = check(&conf, &do_not_perform("extension"));
        assert_eq!(error_paths(&misplaced), ["NutritionOrder.extension[0]"]);
        assert!(check(&conf, &do_not_perform("modifierExtension"))
            .errors
            .is_empty());
        let not_a_modifier = check(
            &conf,
            &serde_json::json!({"resourceType": "Patient", "modifierExtension": [
                {"url": birth_place, "valueAddress": {"city": "Lyon"}}]}),
        );
        assert_eq!(
            error_paths(&not_a_modifier),
            ["Patient.modifierExtension[0]"]
        );
        // A narrative holds basic HTML only (txt-1), and something (txt-2).
        let narrated = |div: &str| {
            serde_json::json!({"resourceType": "Patient",
                "text": {"status": "generated", "div": div}})
        };
        let script = check(
            &conf,
            &narrated(
                r#"<div xmlns="http://www.w3.org/1999/xhtml"><script>x()</script>Mme D</div>"#,
            ),
        );
        assert_eq!(error_paths(&script), ["Patient.text.div"]);
        let plain = check(
            &conf,
            &narrated(r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>Mme D</p></div>"#),
        );
        assert!(plain.errors.is_empty(), "{:?}", plain.errors);
        // ele-1: an element with only an id is no element.
        let ids_only = serde_json::json!({"resourceType": "Patient",
            "name": [{"family": "A"}, {"id": "n2"}],
            "maritalStatus": {"id": "m"},
            "birthDate": "1970-01-01", "_birthDate": {"id": "b"},
            "_gender": {"id": "g"}});
        assert_eq!(
            error_paths(&check(&conf, &ids_only)),
            ["Patient.name[1]", "Patient.maritalStatus", "Patient.gender"]
        );
        // DICOM's and other releases' pass unknown, said not checked.
        for url in [
            "http://nema.org/fhir/ext/x",
            "http://hl7.org/fhir/5.0/StructureDefinition/extension-Patient.x",
        ] {
            let let_through = check(&conf, &with(url, serde_json::json!({"valueString": "a"})));
            assert!(
                let_through.errors.is_empty(),
                "{url}: {:?}",
                let_through.errors
            );
            assert_eq!(let_through.warnings.len(), 1, "{url}");
        }
    }

    #[test]
    fn an_extension_out_of_its_context_is_named() {
        one_error(
            |p| {
                let ext = p["extension"][0].clone();
                p["address"][0]["extension"] = Value::Array(vec![ext]);
            },
            "Patient.address[0].extension[0]",
            "fr-core-identity-reliability",
        );
    }

    #[test]
    fn contexts_name_elements_from_their_data_type() {
        assert_eq!(
            context_names("Patient.name.given"),
            ["Patient.name.given", "HumanName.given"]
        );
        assert_eq!(
            context_names("Patient.contact.name.family"),
            ["Patient.contact.name.family", "HumanName.family"]
        );
        assert_eq!(context_names("Patient"), ["Patient"]);
        assert_eq!(
            type_at("Patient.extension.valueAddress").as_deref(),
            Some("Address")
        );
    }

    #[test]
    fn resources_within_a_bundle_are_checked_against_their_profiles() {
        let Some(dir) = fr_core() else { return };
        let conf = load(&dir);
        let mut patient = example(&dir, "Patient-ExampleFRCorePatient001.json");
        patient["identifier"][0]["value"] = Value::from("123456789012212");
        patient["name"][0]
            .as_object_mut()
            .expect("name")
            .remove("family");
        let bundle = serde_json::json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": "urn:uuid:1", "resource": patient}]});
        let findings = check(&conf, &bundle);
        assert_eq!(
            error_paths(&findings),
            ["Bundle.entry[0].resource.name[0].family"]
        );
    }

    #[test]
    fn discriminator_paths_follow_extensions_and_choices() {
        let v = serde_json::json!({"extension": [
            {"url": "http://a.b/c", "valueCoding": {"code": "x"}},
            {"url": "other", "valueString": "y"}]});
        assert_eq!(
            path_steps("extension('http://a.b/c').value"),
            ["extension('http://a.b/c')", "value"]
        );
        let found = navigate(&v, "extension('http://a.b/c').value.code").expect("followed");
        assert_eq!(found, [&serde_json::json!("x")]);
        let typed = navigate(&v["extension"][1], "value.ofType(string)").expect("followed");
        assert_eq!(typed, [&serde_json::json!("y")]);
        assert!(navigate(&v, "extension.resolve()").is_none());
    }

    /// Valid variations of FR Core examples a naive walk would refuse.
    #[test]
    fn valid_variations_stay_valid() {
        let Some(dir) = fr_core() else { return };
        let conf = load(&dir);
        let mut bp = example(&dir, "Observation-FRCoreObservationBPExample.json");
        // A target profile not loaded (vitalsigns): its type is not known here.
        bp["hasMember"] = serde_json::json!([{"reference": "Observation/1"}]);
        // An element defined by contentReference.
        bp["component"][0]["referenceRange"] = serde_json::json!([{"low": {"value": 90}}]);
        let findings = check(&conf, &bp);
        assert!(findings.errors.is_empty(), "{:#?}", findings.errors);

        let mut height = example(&dir, "Observation-FRCoreObservationBodyHeightExample.json");
        let effective = height
            .as_object_mut()
            .expect("object")
            .remove("effectiveDateTime");
        assert!(effective.is_some());
        height["_effectiveDateTime"] = serde_json::json!({"extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]});
        let findings = check(&conf, &height);
        assert!(findings.errors.is_empty(), "{:#?}", findings.errors);

        // In a Bundle: a Patient entry with a contained Organization it refers
        // to (ref-1 looks in the entry), and an extension in its context.
        let mut patient = example(&dir, "Patient-ExampleFRCorePatient001.json");
        patient["identifier"][0]["value"] = Value::from("123456789012212");
        patient["contained"] =
            serde_json::json!([{"resourceType": "Organization", "id": "org", "name": "CH"}]);
        patient["managingOrganization"] = serde_json::json!({"reference": "#org"});
        let bundle = serde_json::json!({"resourceType": "Bundle", "type": "collection",
            "entry": [{"fullUrl": "urn:uuid:1", "resource": patient}]});
        let findings = check(&conf, &bundle);
        assert!(findings.errors.is_empty(), "{:#?}", findings.errors);
    }

    #[test]
    fn aggregation_says_how_a_reference_is_held() {
        let sd = serde_json::json!({"resourceType": "StructureDefinition", "url": "agg", "type": "CommunicationRequest",
            "snapshot": {"element": [
                {"id": "CommunicationRequest", "path": "CommunicationRequest", "min": 0, "max": "*"},
                {"id": "CommunicationRequest.subject", "path": "CommunicationRequest.subject",
                 "min": 1, "max": "1", "type": [{"code": "Reference",
                   "targetProfile": ["http://hl7.org/fhir/StructureDefinition/Patient"],
                   "aggregation": ["contained"]}]}]}});
        let conf = Conformance::new(vec![sd]);
        let profile = conf.structure("agg").expect("profile");
        let mut request = serde_json::json!({"resourceType": "CommunicationRequest", "status": "active",
            "contained": [{"resourceType": "Patient", "id": "p"}],
            "subject": {"reference": "#p"}});
        assert!(validate(&conf, &request, &[profile]).errors.is_empty());
        request["subject"]["reference"] = serde_json::json!("Patient/p");
        let findings = validate(&conf, &request, &[profile]);
        // Not contained; and the contained Patient is no longer referred to (dom-3).
        assert_eq!(
            error_paths(&findings),
            ["CommunicationRequest.subject", "CommunicationRequest"]
        );
        assert!(findings.errors[0].message.contains("aggregation"));
    }

    #[test]
    fn lengths_and_bounds_are_held() {
        let sd = serde_json::json!({"resourceType": "StructureDefinition", "url": "bounded",
            "type": "Patient", "snapshot": {"element": [
                {"id": "Patient", "path": "Patient", "min": 0, "max": "*"},
                {"id": "Patient.birthDate", "path": "Patient.birthDate", "min": 0, "max": "1",
                 "type": [{"code": "date"}], "minValueDate": "1900-01-01"},
                {"id": "Patient.multipleBirth[x]", "path": "Patient.multipleBirth[x]", "min": 0,
                 "max": "1", "type": [{"code": "integer"}], "maxValueInteger": 9},
                {"id": "Patient.name", "path": "Patient.name", "min": 0, "max": "*",
                 "type": [{"code": "HumanName"}]},
                {"id": "Patient.name.family", "path": "Patient.name.family", "min": 0, "max": "1",
                 "type": [{"code": "string"}], "maxLength": 5}]}});
        let conf = Conformance::new(vec![sd]);
        let profile = conf.structure("bounded").expect("profile");
        let good = serde_json::json!({"resourceType": "Patient", "birthDate": "1950-02-03",
            "multipleBirthInteger": 2, "name": [{"family": "Léa"}]});
        assert!(validate(&conf, &good, &[profile]).errors.is_empty());
        let bad = serde_json::json!({"resourceType": "Patient", "birthDate": "1850",
            "multipleBirthInteger": 12, "name": [{"family": "Durandal"}]});
        let findings = validate(&conf, &bad, &[profile]);
        let mut paths = error_paths(&findings);
        paths.sort();
        assert_eq!(
            paths,
            [
                "Patient.birthDate",
                "Patient.multipleBirthInteger",
                "Patient.name[0].family"
            ]
        );
    }

    #[test]
    fn fixed_numbers_compare_by_value() {
        assert!(matches_fixed(
            &serde_json::json!(1),
            &serde_json::json!(1.0)
        ));
        assert!(!matches_fixed(
            &serde_json::json!({"a": 1, "b": 2}),
            &serde_json::json!({"a": 1})
        ));
        assert!(matches_pattern(
            &serde_json::json!({"a": 1, "b": 2}),
            &serde_json::json!({"a": 1.0})
        ));
    }

    #[test]
    fn ordered_slices_and_open_at_end_hold_their_order() {
        let profile = |url: &str, rules: &str, ordered: bool| {
            let slice = |name: &str| {
                [
                    serde_json::json!({"id": format!("Patient.identifier:{name}"),
                        "path": "Patient.identifier", "sliceName": name}),
                    serde_json::json!({"id": format!("Patient.identifier:{name}.system"),
                        "path": "Patient.identifier.system", "fixedUri": format!("urn:{name}")}),
                ]
            };
            let mut elements = vec![serde_json::json!({"id": "Patient.identifier",
                "path": "Patient.identifier", "slicing": {
                    "discriminator": [{"type": "value", "path": "system"}],
                    "rules": rules, "ordered": ordered}})];
            elements.extend(slice("a"));
            elements.extend(slice("b"));
            serde_json::json!({"resourceType": "StructureDefinition", "url": url,
                "name": "Ordered", "status": "active", "kind": "resource", "abstract": false,
                "type": "Patient", "derivation": "constraint",
                "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
                "differential": {"element": elements}})
        };
        let conf = Conformance::new(vec![
            profile("urn:test:ordered", "open", true),
            profile("urn:test:open-at-end", "openAtEnd", false),
        ]);
        let patient = |url: &str, systems: &[&str]| {
            let identifiers: Vec<Value> = systems
                .iter()
                .map(|s| serde_json::json!({"system": format!("urn:{s}"), "value": "1"}))
                .collect();
            serde_json::json!({"resourceType": "Patient", "meta": {"profile": [url]},
                "identifier": identifiers})
        };
        let errors =
            |url: &str, systems: &[&str]| error_paths(&check(&conf, &patient(url, systems)));
        assert!(errors("urn:test:ordered", &["a", "b", "x"]).is_empty());
        assert_eq!(
            errors("urn:test:ordered", &["b", "a"]),
            ["Patient.identifier[1]"]
        );
        assert!(errors("urn:test:open-at-end", &["b", "a", "x"]).is_empty());
        assert_eq!(
            errors("urn:test:open-at-end", &["a", "x", "b"]),
            ["Patient.identifier[2]"]
        );
    }

    #[test]
    fn a_closed_slicing_refuses_what_matches_no_slice() {
        let Some(dir) = fr_core() else { return };
        let conf = load(&dir);
        let mut height = example(&dir, "Observation-FRCoreObservationBodyHeightExample.json");
        let object = height.as_object_mut().expect("object");
        object.remove("valueQuantity");
        object.insert("valueString".into(), Value::from("1 m 80"));
        let findings = check(&conf, &height);
        assert_eq!(error_paths(&findings), ["Observation.valueString"]);
    }
}
