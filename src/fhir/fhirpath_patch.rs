//! FHIRPath Patch (http://hl7.org/fhir/R4/fhirpatch.html): a `Parameters` body of
//! `operation`s (`add`, `insert`, `delete`, `replace`, `move`) whose paths are
//! FHIRPath expressions. Each operation is evaluated on the resource as the previous
//! ones left it, located (the JSON pointer of each node the path selects) and
//! applied as JSON Patch. Paths are the FHIRPath subset of `fhirpath` (paths,
//! indexes, `where(child = 'literal')`, `ofType`). Pure.

use serde_json::{json, Map, Value};

use super::fhirpath::{self, Node};
use super::patch;
use crate::error::{FhirError, FhirResult, Issue};

fn invalid(index: usize, message: impl Into<String>) -> FhirError {
    FhirError::BadRequest(vec![
        Issue::new("invalid", message).at(format!("Parameters.parameter[{index}]"))
    ])
}

fn unprocessable(index: usize, message: impl Into<String>) -> FhirError {
    FhirError::Unprocessable(vec![
        Issue::new("processing", message).at(format!("Parameters.parameter[{index}]"))
    ])
}

/// Is this body a FHIRPath Patch (a Parameters of operations)?
pub fn is_fhirpath_patch(body: &Value) -> bool {
    body["resourceType"] == "Parameters"
}

/// One operation's parts, by name.
struct Operation<'a> {
    index: usize,
    parts: &'a [Value],
}

impl<'a> Operation<'a> {
    fn part(&self, name: &str) -> Option<&'a Value> {
        self.parts.iter().find(|p| p["name"] == name)
    }

    fn text(&self, name: &str) -> FhirResult<&'a str> {
        self.part(name)
            .and_then(|p| {
                p.as_object()?
                    .iter()
                    .find(|(k, _)| k.starts_with("value"))
                    .and_then(|(_, v)| v.as_str())
            })
            .ok_or_else(|| invalid(self.index, format!("operation needs a '{name}'")))
    }

    fn integer(&self, name: &str) -> FhirResult<usize> {
        self.part(name)
            .and_then(|p| p["valueInteger"].as_u64())
            .map(|n| n as usize)
            .ok_or_else(|| {
                invalid(
                    self.index,
                    format!("operation needs a non-negative '{name}' (valueInteger)"),
                )
            })
    }

    /// The `value`: a `value[x]`, or nested parts for an element without a type
    /// of its own (a BackboneElement).
    fn value(&self) -> FhirResult<Value> {
        let part = self
            .part("value")
            .ok_or_else(|| invalid(self.index, "operation needs a 'value'"))?;
        value_of(part).ok_or_else(|| invalid(self.index, "the 'value' part has no value"))
    }
}

fn value_of(part: &Value) -> Option<Value> {
    let object = part.as_object()?;
    if let Some((_, v)) = object.iter().find(|(k, _)| k.starts_with("value")) {
        return Some(v.clone());
    }
    let parts = object.get("part")?.as_array()?;
    let mut element = Map::new();
    for p in parts {
        let name = p["name"].as_str()?;
        element.insert(name.to_owned(), value_of(p)?);
    }
    Some(Value::Object(element))
}

/// A key as one JSON pointer token (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The JSON pointer of `target` inside `root` (found by identity).
fn pointer_to(root: &Value, target: &Value, prefix: &mut String) -> bool {
    if std::ptr::eq(root, target) {
        return true;
    }
    let len = prefix.len();
    let found = match root {
        Value::Object(map) => map.iter().any(|(k, v)| {
            prefix.truncate(len);
            prefix.push('/');
            prefix.push_str(&escape(k));
            pointer_to(v, target, prefix)
        }),
        Value::Array(items) => items.iter().enumerate().any(|(i, v)| {
            prefix.truncate(len);
            prefix.push('/');
            prefix.push_str(&i.to_string());
            pointer_to(v, target, prefix)
        }),
        _ => false,
    };
    if !found {
        prefix.truncate(len);
    }
    found
}

/// The nodes a path selects, each with its JSON pointer.
fn locate<'a>(
    resource: &'a Value,
    op: &Operation<'_>,
    path: &str,
) -> FhirResult<Vec<(String, Node<'a>)>> {
    let expr = fhirpath::compile(path).map_err(|e| {
        invalid(
            op.index,
            format!("path '{path}' is outside the supported FHIRPath: {}", e.0),
        )
    })?;
    Ok(fhirpath::evaluate(&expr, resource)
        .into_iter()
        .filter_map(|node| {
            let mut pointer = String::new();
            pointer_to(resource, node.value, &mut pointer).then_some((pointer, node))
        })
        .collect())
}

fn one<'a>(
    op: &Operation<'_>,
    path: &str,
    mut found: Vec<(String, Node<'a>)>,
) -> FhirResult<(String, Node<'a>)> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(unprocessable(
            op.index,
            format!("path '{path}' matches nothing"),
        )),
        n => Err(unprocessable(
            op.index,
            format!("path '{path}' matches {n} elements; an operation needs one"),
        )),
    }
}

/// The list a path selects the elements of: its JSON pointer and its length.
fn list(resource: &Value, op: &Operation<'_>, path: &str) -> FhirResult<(String, usize)> {
    let found = locate(resource, op, path)?;
    let (pointer, _) = found
        .first()
        .ok_or_else(|| unprocessable(op.index, format!("path '{path}' matches nothing")))?;
    let list = pointer
        .rsplit_once('/')
        .filter(|(_, i)| i.parse::<usize>().is_ok())
        .map(|(list, _)| list.to_owned())
        .ok_or_else(|| unprocessable(op.index, format!("path '{path}' is not a list element")))?;
    Ok((list, found.len()))
}

/// The JSON Patch operations for one FHIRPath Patch operation on `resource`.
fn translate(resource: &Value, op: &Operation<'_>) -> FhirResult<Vec<Value>> {
    let kind = op.text("type")?;
    let path = op.text("path")?;
    Ok(match kind {
        "add" => {
            let name = op.text("name")?;
            let (pointer, parent) = one(op, path, locate(resource, op, path)?)?;
            let value = op.value()?;
            // The name is one element name, never a path (`a/b` stays one key).
            let target = format!("{pointer}/{}", escape(name));
            match (parent.value.get(name), parent.child_is_many(name)) {
                (_, None) if !parent.value.is_object() => {
                    return Err(unprocessable(
                        op.index,
                        format!("'{path}' cannot have children"),
                    ))
                }
                (Some(Value::Array(_)), _) => {
                    vec![json!({"op": "add", "path": format!("{target}/-"), "value": value})]
                }
                (None, Some(true)) => vec![json!({"op": "add", "path": target, "value": [value]})],
                (None, _) => vec![json!({"op": "add", "path": target, "value": value})],
                (Some(_), _) => {
                    return Err(unprocessable(
                        op.index,
                        format!("'{path}' already has a '{name}'; use replace"),
                    ))
                }
            }
        }
        "insert" => {
            let index = op.integer("index")?;
            let (list, len) = list(resource, op, path)?;
            if index > len {
                return Err(unprocessable(
                    op.index,
                    format!("index {index} is beyond the {len} elements of '{path}'"),
                ));
            }
            vec![json!({"op": "add", "path": format!("{list}/{index}"), "value": op.value()?})]
        }
        "delete" => match locate(resource, op, path)?.as_slice() {
            // Deleting what is not there is not an error.
            [] => Vec::new(),
            [(pointer, _)] => vec![json!({"op": "remove", "path": pointer})],
            many => {
                return Err(unprocessable(
                    op.index,
                    format!(
                        "path '{path}' matches {} elements; delete needs one",
                        many.len()
                    ),
                ))
            }
        },
        "replace" => {
            let (pointer, _) = one(op, path, locate(resource, op, path)?)?;
            vec![json!({"op": "replace", "path": pointer, "value": op.value()?})]
        }
        "move" => {
            let (source, destination) = (op.integer("source")?, op.integer("destination")?);
            let (list, len) = list(resource, op, path)?;
            if source >= len || destination >= len {
                return Err(unprocessable(
                    op.index,
                    format!("'{path}' has {len} elements; cannot move {source} to {destination}"),
                ));
            }
            vec![
                json!({"op": "move", "from": format!("{list}/{source}"), "path": format!("{list}/{destination}")}),
            ]
        }
        other => {
            return Err(invalid(
                op.index,
                format!("unknown operation type '{other}'"),
            ))
        }
    })
}

/// Applies a FHIRPath Patch `Parameters` to `resource`.
pub fn apply(resource: &Value, parameters: &Value) -> FhirResult<Value> {
    let operations = parameters["parameter"]
        .as_array()
        .ok_or_else(|| FhirError::bad_request("a FHIRPath Patch has operation parameters"))?;
    let mut result = resource.clone();
    for (index, parameter) in operations.iter().enumerate() {
        if parameter["name"] != "operation" {
            return Err(invalid(
                index,
                "each parameter of a FHIRPath Patch is an 'operation'",
            ));
        }
        let parts = parameter["part"]
            .as_array()
            .ok_or_else(|| invalid(index, "an operation has parts"))?;
        let op = Operation { index, parts };
        let json_patch = translate(&result, &op)?;
        result = patch::apply(&result, &Value::Array(json_patch)).map_err(|e| {
            unprocessable(index, format!("operation {index} cannot be applied: {e}"))
        })?;
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(parts: Value) -> Value {
        json!({"name": "operation", "part": parts})
    }

    fn patched(resource: &Value, ops: Vec<Value>) -> FhirResult<Value> {
        apply(
            resource,
            &json!({"resourceType": "Parameters", "parameter": ops}),
        )
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p1", "active": true, "birthDate": "1950-03-02",
               "name": [{"family": "Martin", "given": ["Léa"]}],
               "telecom": [{"system": "phone", "value": "06"}, {"system": "email", "value": "a@b.fr"}]})
    }

    #[test]
    fn replace_add_and_delete() {
        let p = patched(
            &patient(),
            vec![
                operation(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"}, {"name": "value", "valueDate": "1950-03-12"}])),
                operation(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "gender"}, {"name": "value", "valueCode": "female"}])),
                operation(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient.name[0]"}, {"name": "name", "valueString": "given"}, {"name": "value", "valueString": "Marie"}])),
                operation(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.telecom.where(system='email')"}])),
                operation(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.deceased"}])),
            ],
        )
        .expect("applies");
        assert_eq!(p["birthDate"], "1950-03-12");
        assert_eq!(p["gender"], "female");
        assert_eq!(p["name"][0]["given"], json!(["Léa", "Marie"]));
        assert_eq!(p["telecom"], json!([{"system": "phone", "value": "06"}]));
    }

    #[test]
    fn add_builds_lists_and_backbone_elements_from_parts() {
        let p = patched(
            &patient(),
            vec![operation(json!([
                {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                {"name": "name", "valueString": "contact"},
                {"name": "value", "part": [
                    {"name": "relationship", "valueCodeableConcept": {"text": "fille"}},
                    {"name": "name", "valueHumanName": {"family": "Martin"}}]}
            ]))],
        )
        .expect("applies");
        assert_eq!(
            p["contact"],
            json!([{"relationship": {"text": "fille"}, "name": {"family": "Martin"}}])
        );
    }

    #[test]
    fn insert_and_move_in_lists() {
        let p = patched(
            &patient(),
            vec![
                operation(json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.telecom"}, {"name": "index", "valueInteger": 0}, {"name": "value", "valueContactPoint": {"system": "fax", "value": "02"}}])),
                operation(json!([{"name": "type", "valueCode": "move"}, {"name": "path", "valueString": "Patient.telecom"}, {"name": "source", "valueInteger": 0}, {"name": "destination", "valueInteger": 2}])),
            ],
        )
        .expect("applies");
        let systems: Vec<&str> = p["telecom"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(|t| t["system"].as_str())
            .collect();
        assert_eq!(systems, vec!["phone", "email", "fax"]);
    }

    #[test]
    fn ambiguous_or_unknown_paths_are_refused() {
        let many = patched(
            &patient(),
            vec![operation(
                json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.telecom"}, {"name": "value", "valueString": "x"}]),
            )],
        );
        assert_eq!(many.expect_err("two elements").status(), 422);
        let unsupported = patched(
            &patient(),
            vec![operation(
                json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name.exists()"}]),
            )],
        );
        assert_eq!(unsupported.expect_err("outside the subset").status(), 400);
        let bad_type = patched(
            &patient(),
            vec![operation(
                json!([{"name": "type", "valueCode": "upsert"}, {"name": "path", "valueString": "Patient"}]),
            )],
        );
        assert_eq!(bad_type.expect_err("unknown type").status(), 400);
    }
}
