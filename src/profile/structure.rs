//! StructureDefinitions as the validator walks them: each element with its
//! cardinality, types, fixed and pattern values, binding, slicing and
//! invariants, indexed by element id so that an element's children and slices
//! are found at once. A profile given only as a differential gets its snapshot
//! here: over a known profile, the differential's elements merged into the
//! base's snapshot; over an R4 type, each element completed from the R4
//! definitions. Pure.

use std::collections::HashMap;

use serde_json::Value;

use crate::fhir::definitions::R4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strength {
    Required,
    Extensible,
    Other,
}

#[derive(Debug, Clone)]
pub struct TypeRef {
    pub code: String,
    pub profiles: Vec<String>,
    pub target_profiles: Vec<String>,
    /// How a reference may be held: `contained`, `referenced`, `bundled` (any when empty).
    pub aggregation: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscriminatorKind {
    Value,
    Pattern,
    Exists,
    Type,
    Profile,
}

#[derive(Debug, Clone)]
pub struct Slicing {
    pub discriminators: Vec<(DiscriminatorKind, String)>,
    pub closed: bool,
    /// `rules` `openAtEnd`: what matches no slice comes after the slices.
    pub open_at_end: bool,
    /// The slices appear in the order they are defined.
    pub ordered: bool,
}

#[derive(Debug, Clone)]
pub struct Constraint {
    pub key: String,
    pub error: bool,
    pub human: String,
    pub expression: Option<String>,
    /// The expression parsed (shared by the elements it is copied to).
    pub compiled:
        Option<std::sync::Arc<Result<super::invariant::Invariant, super::invariant::NotEvaluated>>>,
    /// Defined by the base specification (`ele-1`, `dom-2` …) rather than by the profile.
    pub from_base: bool,
}

#[derive(Debug, Clone)]
pub struct Element {
    pub id: String,
    pub path: String,
    pub slice_name: Option<String>,
    pub min: u32,
    /// `None`: unbounded.
    pub max: Option<u32>,
    pub types: Vec<TypeRef>,
    pub fixed: Option<Value>,
    pub pattern: Option<Value>,
    pub binding: Option<(Strength, String)>,
    pub slicing: Option<Slicing>,
    pub constraints: Vec<Constraint>,
    /// For an element defined elsewhere (`#Observation.referenceRange`): that path.
    pub content_ref: Option<String>,
    /// The longest a string value may be, in characters.
    pub max_length: Option<usize>,
    /// The bounds of a value (`minValueInteger`, `maxValueDate` …).
    pub min_value: Option<Value>,
    pub max_value: Option<Value>,
}

impl Element {
    /// An element that says nothing yet but where it is (completed from R4
    /// by the caller).
    fn bare(id: String, path: String, slice_name: Option<String>) -> Element {
        Element {
            id,
            path,
            slice_name,
            min: 0,
            max: None,
            types: Vec::new(),
            fixed: None,
            pattern: None,
            binding: None,
            slicing: None,
            constraints: Vec::new(),
            content_ref: None,
            max_length: None,
            min_value: None,
            max_value: None,
        }
    }

    /// The last segment of the path: `value[x]`, `identifier`.
    pub fn name(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }
}

#[derive(Debug)]
pub struct StructureDef {
    pub url: String,
    pub name: String,
    /// The type it constrains: `Patient`, `Extension`, `Address`.
    pub type_name: String,
    /// Where an extension may be used: the expressions of its `element` contexts.
    pub contexts: Vec<String>,
    /// An extension that changes the meaning of what holds it: used in
    /// `modifierExtension`, and only there (its root's `isModifier`).
    pub is_modifier: bool,
    pub elements: Vec<Element>,
    by_id: HashMap<String, usize>,
    children: HashMap<usize, Vec<usize>>,
    slices: HashMap<usize, Vec<usize>>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

/// The value of the first key of `element` beginning with `prefix` and a
/// type's name (`fixedUri`, `patternCodeableConcept`).
fn choice_value(element: &Value, prefix: &str) -> Option<Value> {
    element.as_object()?.iter().find_map(|(k, v)| {
        k.strip_prefix(prefix)
            .filter(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase()))
            .map(|_| v.clone())
    })
}

fn parse_element(e: &Value) -> Option<Element> {
    let path = text(e, "path")?;
    let slice_name = text(e, "sliceName");
    let id = text(e, "id").unwrap_or_else(|| match &slice_name {
        Some(s) => format!("{path}:{s}"),
        None => path.clone(),
    });
    let max = match e.get("max").and_then(Value::as_str) {
        Some("*") | None => None,
        Some(n) => n.parse().ok(),
    };
    let types = e["type"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some(TypeRef {
                code: text(t, "code")?,
                profiles: strings(&t["profile"]),
                target_profiles: strings(&t["targetProfile"]),
                aggregation: strings(&t["aggregation"]),
            })
        })
        .collect();
    let binding = e.get("binding").and_then(|b| {
        let strength = match b["strength"].as_str()? {
            "required" => Strength::Required,
            "extensible" => Strength::Extensible,
            _ => Strength::Other,
        };
        Some((strength, text(b, "valueSet")?))
    });
    let slicing = e.get("slicing").map(|s| Slicing {
        discriminators: s["discriminator"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                let kind = match d["type"].as_str()? {
                    "value" => DiscriminatorKind::Value,
                    "pattern" => DiscriminatorKind::Pattern,
                    "exists" => DiscriminatorKind::Exists,
                    "type" => DiscriminatorKind::Type,
                    "profile" => DiscriminatorKind::Profile,
                    _ => return None,
                };
                Some((kind, text(d, "path")?))
            })
            .collect(),
        closed: s["rules"].as_str() == Some("closed"),
        open_at_end: s["rules"].as_str() == Some("openAtEnd"),
        ordered: s["ordered"].as_bool() == Some(true),
    });
    let constraints = e["constraint"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some(Constraint {
                key: text(c, "key")?,
                error: c["severity"].as_str() == Some("error"),
                human: text(c, "human").unwrap_or_default(),
                expression: text(c, "expression"),
                compiled: c["expression"]
                    .as_str()
                    .map(|x| std::sync::Arc::new(super::invariant::Invariant::parse(x))),
                from_base: c["source"]
                    .as_str()
                    .is_none_or(|s| s.starts_with("http://hl7.org/fhir/StructureDefinition/")),
            })
        })
        .collect();
    Some(Element {
        max_length: e["maxLength"].as_u64().map(|n| n as usize),
        min_value: choice_value(e, "minValue"),
        max_value: choice_value(e, "maxValue"),
        content_ref: text(e, "contentReference").map(|r| {
            let r = r.rsplit_once('#').map_or(r.as_str(), |(_, p)| p);
            r.to_owned()
        }),
        id,
        slice_name,
        min: e["min"].as_u64().map_or(0, |m| m as u32),
        max,
        types,
        fixed: choice_value(e, "fixed"),
        pattern: choice_value(e, "pattern"),
        binding,
        slicing,
        constraints,
        path,
    })
}

/// The R4 base definition of the element at `path` (`Patient.identifier.system`
/// is `Identifier.system`), following each step's type.
pub fn r4_base(path: &str) -> Option<crate::fhir::definitions::ElementDef> {
    if let Some(e) = R4.element(path) {
        return Some(e.clone());
    }
    let (parent, name) = path.rsplit_once('.')?;
    let parent = r4_base(parent)?;
    let parent_type = parent.types.first()?;
    let parent_type = match parent_type.as_str() {
        "BackboneElement" | "Element" => return None,
        t => t,
    };
    R4.element(&format!("{parent_type}.{name}")).cloned()
}

/// Completes a differential element from R4: cardinality and types it leaves out.
fn complete_from_r4(mut element: Element, differential: &Value) -> Element {
    let base_path = element.path.replace("[x]", "");
    let Some(base) = r4_base(&element.path).or_else(|| r4_base(&base_path)) else {
        return element;
    };
    if differential.get("min").is_none() {
        element.min = base.min;
    }
    if differential.get("max").is_none() {
        element.max = if base.many { None } else { Some(1) };
    }
    if element.types.is_empty() {
        element.types = base
            .types
            .iter()
            .map(|code| TypeRef {
                code: code.clone(),
                profiles: Vec::new(),
                target_profiles: Vec::new(),
                aggregation: Vec::new(),
            })
            .collect();
    }
    element
}

/// Overlays a differential element on the base's element of the same id.
fn merge(base: &Element, diff: &Element, raw: &Value) -> Element {
    let mut merged = base.clone();
    if raw.get("min").is_some() {
        merged.min = diff.min;
    }
    if raw.get("max").is_some() {
        merged.max = diff.max;
    }
    if !diff.types.is_empty() {
        merged.types = diff.types.clone();
    }
    merged.fixed = diff.fixed.clone().or(merged.fixed);
    merged.pattern = diff.pattern.clone().or(merged.pattern);
    merged.binding = diff.binding.clone().or(merged.binding);
    merged.slicing = diff.slicing.clone().or(merged.slicing);
    merged.max_length = diff.max_length.or(merged.max_length);
    merged.min_value = diff.min_value.clone().or(merged.min_value);
    merged.max_value = diff.max_value.clone().or(merged.max_value);
    merged.constraints.extend(diff.constraints.iter().cloned());
    merged
}

/// The elements with every ancestor a differential leaves out
/// (`Task.code.coding.system` alone brings `Task.code` and `Task.code.coding`),
/// completed from R4, so that the walk reaches each element given.
fn with_ancestors(mut elements: Vec<Element>) -> Vec<Element> {
    let mut known: std::collections::HashSet<String> =
        elements.iter().map(|e| e.id.clone()).collect();
    let mut added = Vec::new();
    for e in &elements {
        let mut id = e.id.as_str();
        while let Some((parent, _)) = id.rsplit_once('.') {
            if !known.insert(parent.to_owned()) {
                break;
            }
            let last = parent.rsplit('.').next().unwrap_or(parent);
            let slice_name = last.split_once(':').map(|(_, s)| s.to_owned());
            let path: String = parent
                .split('.')
                .map(|seg| seg.split(':').next().unwrap_or(seg))
                .collect::<Vec<_>>()
                .join(".");
            added.push(complete_from_r4(
                Element::bare(parent.to_owned(), path, slice_name),
                &Value::Null,
            ));
            id = parent;
        }
    }
    elements.extend(added);
    elements
}

impl StructureDef {
    /// Reads a StructureDefinition. `base_of` gives the parsed profile a
    /// differential-only definition builds on, when known.
    pub fn parse<'a>(
        sd: &Value,
        base_of: impl Fn(&str) -> Option<&'a StructureDef>,
    ) -> Option<StructureDef> {
        let url = text(sd, "url")?;
        let type_name = text(sd, "type")?;
        let base = text(sd, "baseDefinition");
        let contexts = sd["context"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["type"].as_str() != Some("extension"))
            .filter_map(|c| text(c, "expression"))
            .collect();
        let elements: Vec<Element> = if let Some(snapshot) = sd["snapshot"]["element"].as_array() {
            snapshot.iter().filter_map(parse_element).collect()
        } else {
            let differential = sd["differential"]["element"].as_array()?;
            match base.as_deref().and_then(&base_of) {
                Some(parent) => {
                    let mut elements = parent.elements.clone();
                    for raw in differential {
                        let Some(diff) = parse_element(raw) else {
                            continue;
                        };
                        match elements.iter().position(|e| e.id == diff.id) {
                            Some(i) => elements[i] = merge(&elements[i], &diff, raw),
                            None => elements.push(complete_from_r4(diff, raw)),
                        }
                    }
                    with_ancestors(elements)
                }
                None => {
                    let mut elements: Vec<Element> = differential
                        .iter()
                        .filter_map(|raw| parse_element(raw).map(|e| complete_from_r4(e, raw)))
                        .collect();
                    if elements.first().is_none_or(|e| e.path != type_name) {
                        let root = complete_from_r4(
                            Element::bare(type_name.clone(), type_name.clone(), None),
                            &Value::Null,
                        );
                        elements.insert(0, root);
                    }
                    with_ancestors(elements)
                }
            }
        };
        // The walk starts at the first element: it must be the type itself.
        if elements.first().is_none_or(|e| e.path != type_name) {
            return None;
        }
        // The root's `isModifier`, as given, else as the profile it builds on says.
        let root_of = |list: &str| {
            sd[list]["element"]
                .as_array()?
                .iter()
                .find(|e| e["path"].as_str() == Some(type_name.as_str()))?["isModifier"]
                .as_bool()
        };
        let is_modifier = root_of("snapshot")
            .or_else(|| root_of("differential"))
            .or_else(|| base.as_deref().and_then(&base_of).map(|p| p.is_modifier))
            .unwrap_or(false);
        let mut parsed = Self::index(
            url,
            text(sd, "name").unwrap_or_default(),
            type_name,
            contexts,
            elements,
        );
        parsed.is_modifier = is_modifier;
        Some(parsed)
    }

    fn index(
        url: String,
        name: String,
        type_name: String,
        contexts: Vec<String>,
        elements: Vec<Element>,
    ) -> StructureDef {
        let by_id: HashMap<String, usize> = elements
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id.clone(), i))
            .collect();
        let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
        let mut slices: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, e) in elements.iter().enumerate() {
            let last = e.id.rsplit('.').next().unwrap_or(&e.id);
            if let (Some(slice), true) = (&e.slice_name, last.contains(':')) {
                let base_id = e.id.strip_suffix(&format!(":{slice}")).unwrap_or(&e.id);
                if let Some(&b) = by_id.get(base_id) {
                    slices.entry(b).or_default().push(i);
                    continue;
                }
            }
            if let Some((parent, _)) = e.id.rsplit_once('.') {
                if let Some(&p) = by_id.get(parent) {
                    children.entry(p).or_default().push(i);
                }
            }
        }
        StructureDef {
            url,
            name,
            type_name,
            contexts,
            is_modifier: false,
            elements,
            by_id,
            children,
            slices,
        }
    }

    pub fn root(&self) -> usize {
        0
    }

    /// The element children of element `i`; a slice without children of its
    /// own has those of the element it slices.
    pub fn children(&self, i: usize) -> &[usize] {
        if let Some(c) = self.children.get(&i) {
            return c;
        }
        let e = &self.elements[i];
        match &e.slice_name {
            Some(slice) => {
                e.id.strip_suffix(&format!(":{slice}"))
                    .and_then(|base| self.by_id.get(base))
                    .and_then(|b| self.children.get(b))
                    .map_or(&[], Vec::as_slice)
            }
            None => &[],
        }
    }

    /// The slices of element `i`, in order.
    pub fn slices(&self, i: usize) -> &[usize] {
        self.slices.get(&i).map_or(&[], Vec::as_slice)
    }

    /// The element at `id`.
    pub fn element_id(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_snapshot_is_indexed_by_children_and_slices() {
        let sd = json!({"url": "u", "type": "Patient", "snapshot": {"element": [
            {"id": "Patient", "path": "Patient", "min": 0, "max": "*"},
            {"id": "Patient.identifier", "path": "Patient.identifier", "min": 0, "max": "*",
             "slicing": {"discriminator": [{"type": "value", "path": "system"}], "rules": "closed"}},
            {"id": "Patient.identifier.system", "path": "Patient.identifier.system", "min": 0, "max": "1"},
            {"id": "Patient.identifier:ins", "path": "Patient.identifier", "sliceName": "ins", "min": 1, "max": "1"},
            {"id": "Patient.identifier:ins.system", "path": "Patient.identifier.system", "min": 1, "max": "1",
             "fixedUri": "urn:oid:1.2.250.1.213.1.4.8"}
        ]}});
        let sd = StructureDef::parse(&sd, |_| None).expect("parsed");
        let identifier = sd.element_id("Patient.identifier").expect("identifier");
        assert_eq!(sd.children(0), &[identifier]);
        let ins = sd.element_id("Patient.identifier:ins").expect("slice");
        assert_eq!(sd.slices(identifier), &[ins]);
        let system = sd
            .element_id("Patient.identifier:ins.system")
            .expect("system");
        assert_eq!(sd.children(ins), &[system]);
        assert_eq!(
            sd.elements[system].fixed,
            Some(json!("urn:oid:1.2.250.1.213.1.4.8"))
        );
        assert!(sd.elements[identifier]
            .slicing
            .as_ref()
            .is_some_and(|s| s.closed));
    }

    #[test]
    fn a_differential_over_r4_is_completed_from_the_base() {
        let sd = json!({"url": "u", "type": "Task", "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Task",
        "differential": {"element": [
            {"id": "Task.focus", "path": "Task.focus", "min": 1},
            {"id": "Task.code.coding.system", "path": "Task.code.coding.system", "fixedUri": "s"}
        ]}});
        let sd = StructureDef::parse(&sd, |_| None).expect("parsed");
        assert_eq!(sd.elements[0].path, "Task");
        let focus = &sd.elements[sd.element_id("Task.focus").expect("focus")];
        assert_eq!((focus.min, focus.max), (1, Some(1)));
        assert_eq!(focus.types[0].code, "Reference");
        let system = &sd.elements[sd.element_id("Task.code.coding.system").expect("system")];
        assert_eq!(system.types[0].code, "uri");
        // Its ancestors, left out of the differential, are there to walk it from.
        let code = sd.element_id("Task.code").expect("Task.code");
        let coding = sd.element_id("Task.code.coding").expect("Task.code.coding");
        assert_eq!(sd.children(code), &[coding]);
        assert_eq!(sd.elements[coding].max, None);
    }

    #[test]
    fn a_differential_over_a_profile_merges_into_its_snapshot() {
        let parent = json!({"url": "p", "type": "Patient", "snapshot": {"element": [
            {"id": "Patient", "path": "Patient", "min": 0, "max": "*"},
            {"id": "Patient.gender", "path": "Patient.gender", "min": 0, "max": "1", "type": [{"code": "code"}]}
        ]}});
        let parent = StructureDef::parse(&parent, |_| None).expect("parent");
        let child = json!({"url": "c", "type": "Patient", "baseDefinition": "p", "differential": {"element": [
            {"id": "Patient.gender", "path": "Patient.gender", "min": 1}
        ]}});
        let child = StructureDef::parse(&child, |u| (u == "p").then_some(&parent)).expect("child");
        let gender = &child.elements[child.element_id("Patient.gender").expect("gender")];
        assert_eq!((gender.min, gender.max), (1, Some(1)));
        assert_eq!(gender.types[0].code, "code");
    }
}
