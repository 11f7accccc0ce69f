//! Structural validation of R4 JSON against the base definitions: unknown elements,
//! JSON kinds, cardinality, required elements and primitive formats (the regexes of
//! the R4 datatypes, plus calendar checks that a regex cannot do). It names the path
//! of every problem, which fhirbolt's parser does not; and the codes of `code`
//! elements that R4 binds with strength `required`. Profiles, other bindings and
//! invariants are the profile validator's job, not this one's.

use serde_json::{Map, Value};

use super::definitions::{Definitions, ElementDef, TypeKind, R4};
use crate::error::Issue;

/// Stop after this many issues: enough to fix a resource, bounded for hostile input.
const MAX_ISSUES: usize = 50;
/// Nesting deeper than this is refused rather than walked (stack safety).
const MAX_DEPTH: usize = 64;

struct Walker<'d> {
    defs: &'d Definitions,
    issues: Vec<Issue>,
    /// Inside a StructureDefinition's differential, where element definitions are
    /// partial by design and their required children may be absent.
    in_differential: usize,
}

/// Checks one resource. `Ok` carries the resource type.
pub fn validate_resource(resource: &Value) -> Result<String, Vec<Issue>> {
    let mut walker = Walker {
        defs: &R4,
        issues: Vec::new(),
        in_differential: 0,
    };
    let resource_type = walker.resource(resource, "", 0);
    match resource_type {
        Some(rt) if walker.issues.is_empty() => Ok(rt),
        _ => Err(walker.issues),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Walker<'_> {
    fn push(&mut self, code: &'static str, message: String, path: &str) {
        if self.issues.len() < MAX_ISSUES {
            self.issues.push(Issue::new(code, message).at(path));
        }
    }

    /// Walks a resource (top level, contained, or inside a Bundle or Parameters).
    fn resource(&mut self, value: &Value, path: &str, depth: usize) -> Option<String> {
        let Some(obj) = value.as_object() else {
            self.push(
                "structure",
                format!(
                    "a resource must be a JSON object, found {}",
                    json_kind(value)
                ),
                path,
            );
            return None;
        };
        let Some(rt) = obj.get("resourceType").and_then(Value::as_str) else {
            self.push(
                "required",
                "resourceType is missing or not a string".to_owned(),
                path,
            );
            return None;
        };
        if !self.defs.is_resource_type(rt) {
            self.push(
                "not-supported",
                format!("'{rt}' is not an R4 resource type"),
                path,
            );
            return None;
        }
        let here = if path.is_empty() {
            rt.to_owned()
        } else {
            path.to_owned()
        };
        self.object(obj, rt, &here, depth + 1);
        Some(rt.to_owned())
    }

    /// Walks the members of an object whose definition path is `def_path`.
    fn object(&mut self, obj: &Map<String, Value>, def_path: &str, path: &str, depth: usize) {
        if depth > MAX_DEPTH {
            self.push(
                "too-costly",
                "elements are nested too deeply".to_owned(),
                path,
            );
            return;
        }
        if obj.is_empty() {
            self.push(
                "structure",
                "an object must have at least one element".to_owned(),
                path,
            );
        }
        let is_resource_root = self.defs.is_resource_type(def_path);
        for (key, value) in obj {
            if key == "resourceType" && is_resource_root {
                continue;
            }
            let child_path = format!("{path}.{key}");
            if let Some(base) = key.strip_prefix('_') {
                self.primitive_extension(def_path, base, value, &child_path, depth);
                continue;
            }
            let Some(def) = self.defs.element(&format!("{def_path}.{key}")) else {
                self.push("structure", format!("unknown element '{key}'"), &child_path);
                continue;
            };
            let differential = def_path == "StructureDefinition" && key == "differential";
            self.in_differential += usize::from(differential);
            self.element(def, def_path, key, value, &child_path, depth);
            self.in_differential -= usize::from(differential);
        }
        if self.in_differential > 0 {
            return;
        }
        for required in self.defs.required(def_path) {
            if !self.has_element(obj, def_path, &required.name, required.is_choice) {
                self.push(
                    "required",
                    format!("missing required element '{}'", required.name),
                    path,
                );
            }
        }
    }

    fn has_element(
        &self,
        obj: &Map<String, Value>,
        def_path: &str,
        name: &str,
        is_choice: bool,
    ) -> bool {
        let present = |key: &str| {
            let underscored = format!("_{key}");
            obj.contains_key(key) || obj.contains_key(&underscored)
        };
        if !is_choice {
            return present(name);
        }
        obj.keys().any(|key| {
            let bare = key.strip_prefix('_').unwrap_or(key);
            bare.len() > name.len()
                && bare.starts_with(name)
                && self.defs.element(&format!("{def_path}.{bare}")).is_some()
        })
    }

    fn element(
        &mut self,
        def: &ElementDef,
        def_path: &str,
        key: &str,
        value: &Value,
        path: &str,
        depth: usize,
    ) {
        match (def.many, value) {
            (true, Value::Array(items)) => {
                if items.is_empty() {
                    self.push("structure", "an array must not be empty".to_owned(), path);
                }
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    // A null stands for a value given only in the `_key` sibling.
                    if item.is_null() {
                        continue;
                    }
                    self.value(def, def_path, key, item, &item_path, depth);
                }
            }
            (true, _) => self.push(
                "structure",
                format!("'{key}' repeats and must be an array"),
                path,
            ),
            (false, Value::Array(_)) => self.push(
                "structure",
                format!("'{key}' does not repeat and must not be an array"),
                path,
            ),
            (false, _) => self.value(def, def_path, key, value, path, depth),
        }
    }

    fn value(
        &mut self,
        def: &ElementDef,
        def_path: &str,
        key: &str,
        value: &Value,
        path: &str,
        depth: usize,
    ) {
        if let Some(target) = &def.content_ref {
            return self.complex(value, target, path, depth);
        }
        let Some(type_name) = def.types.first() else {
            return;
        };
        match type_name.as_str() {
            "Resource" => {
                self.resource(value, path, depth);
            }
            "BackboneElement" | "Element" => {
                let own_path = format!("{def_path}.{key}");
                self.complex(value, &own_path, path, depth);
            }
            "xhtml" => self.xhtml(value, path),
            "code" => {
                self.primitive("code", value, path);
                self.bound_code(&format!("{def_path}.{key}"), value, path);
            }
            name => match self.defs.type_def(name).map(|t| t.kind) {
                Some(TypeKind::Primitive) => self.primitive(name, value, path),
                Some(_) => self.complex(value, name, path, depth),
                None => {}
            },
        }
    }

    /// A `code` R4 binds to a ValueSet with strength `required` must be one of
    /// its codes.
    fn bound_code(&mut self, def_path: &str, value: &Value, path: &str) {
        let (Some(binding), Some(code)) = (self.defs.binding(def_path), value.as_str()) else {
            return;
        };
        if !binding.codes.contains(code) {
            let mut allowed: Vec<&str> =
                binding.codes.iter().map(String::as_str).take(12).collect();
            if binding.codes.len() > allowed.len() {
                allowed.push("…");
            }
            self.push(
                "code-invalid",
                format!(
                    "'{code}' is not a code of the required value set {} ({})",
                    binding.value_set,
                    allowed.join(", ")
                ),
                path,
            );
        }
    }

    fn complex(&mut self, value: &Value, def_path: &str, path: &str, depth: usize) {
        match value.as_object() {
            Some(obj) => self.object(obj, def_path, path, depth + 1),
            None => self.push(
                "structure",
                format!("expected an object, found {}", json_kind(value)),
                path,
            ),
        }
    }

    /// `_given` and friends: the id and extensions of a primitive, an object or an
    /// array of objects and nulls aligned with the values.
    fn primitive_extension(
        &mut self,
        def_path: &str,
        base: &str,
        value: &Value,
        path: &str,
        depth: usize,
    ) {
        let def = self.defs.element(&format!("{def_path}.{base}"));
        let is_primitive = def
            .and_then(|d| d.types.first())
            .and_then(|t| self.defs.type_def(t))
            .is_some_and(|t| t.kind == TypeKind::Primitive);
        if !is_primitive {
            self.push("structure", format!("unknown element '_{base}'"), path);
            return;
        }
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !item.is_null() {
                        self.complex(item, "Element", &format!("{path}[{i}]"), depth);
                    }
                }
            }
            other => self.complex(other, "Element", path, depth),
        }
    }

    fn xhtml(&mut self, value: &Value, path: &str) {
        match value.as_str() {
            Some(s) if s.trim_start().starts_with("<div") => {}
            _ => self.push(
                "value",
                "narrative must be an XHTML <div> element".to_owned(),
                path,
            ),
        }
    }

    fn primitive(&mut self, type_name: &str, value: &Value, path: &str) {
        let text = match (type_name, value) {
            ("boolean", Value::Bool(_)) => return,
            ("integer" | "positiveInt" | "unsignedInt" | "decimal", Value::Number(n)) => {
                n.to_string()
            }
            ("boolean" | "integer" | "positiveInt" | "unsignedInt" | "decimal", _) => {
                return self.push(
                    "value",
                    format!(
                        "a {type_name} must be a JSON {}, found {}",
                        if type_name == "boolean" {
                            "boolean"
                        } else {
                            "number"
                        },
                        json_kind(value)
                    ),
                    path,
                )
            }
            (_, Value::String(s)) => s.clone(),
            _ => {
                return self.push(
                    "value",
                    format!(
                        "a {type_name} must be a JSON string, found {}",
                        json_kind(value)
                    ),
                    path,
                )
            }
        };
        if let Some(message) = primitive_problem(self.defs, type_name, &text) {
            self.push("value", message, path);
        }
    }
}

/// What is wrong with a primitive's lexical value, if anything.
pub fn primitive_problem(defs: &Definitions, type_name: &str, text: &str) -> Option<String> {
    if text.contains('\0') {
        return Some(format!("a {type_name} must not contain a NUL character"));
    }
    if text.is_empty() {
        return Some(format!("a {type_name} must not be empty"));
    }
    let regex_ok = defs
        .type_def(type_name)
        .and_then(|t| t.regex.as_ref())
        .is_none_or(|re| re.is_match(text));
    if !regex_ok {
        return Some(format!("'{text}' is not a valid {type_name}"));
    }
    let in_range = match type_name {
        "integer" => text.parse::<i32>().is_ok(),
        "positiveInt" => text.parse::<i32>().is_ok_and(|n| n > 0),
        "unsignedInt" => text.parse::<i32>().is_ok_and(|n| n >= 0),
        "date" | "dateTime" | "instant" => super::datetime::is_valid_calendar_date(text),
        _ => true,
    };
    (!in_range).then(|| format!("'{text}' is out of range for a {type_name}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(v: Value) -> Vec<String> {
        match validate_resource(&v) {
            Ok(_) => vec![],
            Err(issues) => issues
                .into_iter()
                .map(|i| format!("{}: {}", i.expression.unwrap_or_default(), i.message))
                .collect(),
        }
    }

    #[test]
    fn codes_of_required_bindings_are_checked() {
        let p = json!({"resourceType":"Patient","gender":"femme",
            "address":[{"use":"home"}],
            "contact":[{"gender":"female","telecom":[{"system":"fax","use":"bureau","value":"x"}]}]});
        let found = problems(p);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].starts_with("Patient.gender: 'femme' is not a code of the required value set http://hl7.org/fhir/ValueSet/administrative-gender (female, male, other, unknown)"), "{found:?}");
        assert!(
            found[1].starts_with("Patient.contact[0].telecom[0].use: 'bureau'"),
            "{found:?}"
        );
        // A code of a backbone element reached through a contentReference.
        let q = json!({"resourceType":"Questionnaire","status":"draft",
            "item":[{"linkId":"1","type":"group","item":[{"linkId":"1.1","type":"texte"}]}]});
        let found = problems(q);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with("Questionnaire.item[0].item[0].type: 'texte'"),
            "{found:?}"
        );
        // Bindings of other strengths (a preferred one here) are not checked.
        let ok = json!({"resourceType":"Patient","language":"fr-FR","gender":"other"});
        assert_eq!(problems(ok), Vec::<String>::new());
    }

    #[test]
    fn valid_patient_passes() {
        let p = json!({"resourceType":"Patient","id":"p1","active":true,
            "name":[{"family":"Martin","given":["Léa","Anne"]}],
            "_birthDate": {"extension":[{"url":"http://example.org/x","valueString":"y"}]},
            "birthDate":"1974-12-25",
            "multipleBirthInteger": 2,
            "identifier":[{"system":"urn:oid:1.2.250.1.213.1.4.10","value":"1740512345678"}]});
        assert_eq!(problems(p), Vec::<String>::new());
    }

    #[test]
    fn names_the_path_of_each_problem() {
        let p = json!({"resourceType":"Patient","birthDate":"25.12.1974",
            "name":[{"given":"Léa"}],"nickname":"x","active":"yes","gender":""});
        let found = problems(p);
        assert!(
            found.iter().any(|m| m.starts_with("Patient.birthDate:")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|m| m.starts_with("Patient.name[0].given:")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|m| m.starts_with("Patient.nickname:")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|m| m.starts_with("Patient.active:")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|m| m.starts_with("Patient.gender:")),
            "{found:?}"
        );
    }

    #[test]
    fn required_and_choice_elements() {
        let missing = problems(json!({"resourceType":"Observation","code":{"text":"x"}}));
        assert!(
            missing.iter().any(|m| m.contains("'status'")),
            "{missing:?}"
        );
        let ok = problems(
            json!({"resourceType":"Observation","status":"final","code":{"text":"x"},
            "valueQuantity":{"value":70.10,"unit":"kg"}}),
        );
        assert!(ok.is_empty(), "{ok:?}");
        let bad_choice = problems(json!({"resourceType":"Observation","status":"final",
            "code":{"text":"x"},"valueFoo":1}));
        assert!(
            bad_choice.iter().any(|m| m.contains("valueFoo")),
            "{bad_choice:?}"
        );
        // Extension.url is required; value[x] of Extension accepts any type.
        let ext = problems(json!({"resourceType":"Patient","extension":[{"valueCode":"x"}]}));
        assert!(ext.iter().any(|m| m.contains("'url'")), "{ext:?}");
    }

    #[test]
    fn contained_bundle_and_content_references() {
        let b = json!({"resourceType":"Bundle","type":"collection","entry":[
            {"resource":{"resourceType":"Patient","birthDate":"2024-02-30"}},
            {"resource":{"resourceType":"Questionnaire","status":"draft",
              "item":[{"linkId":"1","type":"group","item":[{"linkId":"1.1","type":"string","bogus":1}]}]}}]});
        let found = problems(b);
        assert!(
            found
                .iter()
                .any(|m| m.starts_with("Bundle.entry[0].resource.birthDate:")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|m| m.starts_with("Bundle.entry[1].resource.item[0].item[0].bogus:")),
            "{found:?}"
        );
    }

    #[test]
    fn differentials_may_be_partial() {
        let sd = json!({"resourceType":"StructureDefinition","url":"http://x","name":"X",
            "status":"draft","kind":"resource","abstract":false,"type":"Patient",
            "differential":{"element":[{"path":"Patient.gender","binding":{"valueSet":"http://vs"}}]}});
        assert_eq!(problems(sd.clone()), Vec::<String>::new());
        let mut snapshot = sd;
        snapshot["snapshot"] = snapshot["differential"].take();
        snapshot
            .as_object_mut()
            .map(|o| o.shift_remove("differential"));
        assert!(problems(snapshot).iter().any(|m| m.contains("'strength'")));
    }

    #[test]
    fn primitive_formats() {
        let d = &*R4;
        assert!(primitive_problem(d, "instant", "2026-11-25T10:00:00Z").is_none());
        assert!(primitive_problem(d, "instant", "2026-11-25").is_some());
        assert!(primitive_problem(d, "dateTime", "2026-11-25T10:00:00").is_some());
        assert!(primitive_problem(d, "id", "a_b").is_some());
        assert!(primitive_problem(d, "integer", "2147483648").is_some());
        assert!(primitive_problem(d, "positiveInt", "0").is_some());
        assert!(primitive_problem(d, "decimal", "1.50").is_none());
        assert!(primitive_problem(d, "string", "a\0b").is_some());
        assert!(primitive_problem(d, "date", "2023-02-29").is_some());
        assert!(primitive_problem(d, "date", "2024-02-29").is_none());
    }
}
