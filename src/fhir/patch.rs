//! JSON Patch (RFC 6902) on a resource, for `PATCH` with
//! `application/json-patch+json`. Pure.

use serde_json::Value;

use crate::error::{FhirError, FhirResult, Issue};

/// One operation of a JSON Patch document.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Add(String, Value),
    Remove(String),
    Replace(String, Value),
    Move { from: String, path: String },
    Copy { from: String, path: String },
    Test(String, Value),
}

fn invalid(index: usize, message: impl Into<String>) -> FhirError {
    FhirError::BadRequest(vec![Issue::new("invalid", message).at(format!("[{index}]"))])
}

/// A patch that cannot apply to this resource (a failed test, a missing path): 422.
fn unprocessable(index: usize, message: impl Into<String>) -> FhirError {
    FhirError::Unprocessable(vec![
        Issue::new("processing", message).at(format!("[{index}]"))
    ])
}

fn parse(document: &Value) -> FhirResult<Vec<Op>> {
    let ops = document
        .as_array()
        .ok_or_else(|| FhirError::bad_request("a JSON Patch document is an array of operations"))?;
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let text = |key: &str| {
                op.get(key)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(i, format!("operation {i} needs '{key}'")))
            };
            let value = || {
                op.get("value")
                    .cloned()
                    .ok_or_else(|| invalid(i, format!("operation {i} needs 'value'")))
            };
            Ok(match text("op")?.as_str() {
                "add" => Op::Add(text("path")?, value()?),
                "remove" => Op::Remove(text("path")?),
                "replace" => Op::Replace(text("path")?, value()?),
                "move" => Op::Move {
                    from: text("from")?,
                    path: text("path")?,
                },
                "copy" => Op::Copy {
                    from: text("from")?,
                    path: text("path")?,
                },
                "test" => Op::Test(text("path")?, value()?),
                other => return Err(invalid(i, format!("unknown operation '{other}'"))),
            })
        })
        .collect()
}

/// The reference tokens of a JSON Pointer (`/a/b~1c` -> `a`, `b/c`).
fn tokens(pointer: &str) -> Option<Vec<String>> {
    if pointer.is_empty() {
        return Some(Vec::new());
    }
    let rest = pointer.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

/// The parent container of a pointer's target, and the last token.
fn parent<'v>(root: &'v mut Value, pointer: &str) -> Option<(&'v mut Value, String)> {
    let mut tokens = tokens(pointer)?;
    let last = tokens.pop()?;
    let mut node = root;
    for t in tokens {
        node = match node {
            Value::Object(map) => map.get_mut(&t)?,
            Value::Array(items) => items.get_mut(t.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some((node, last))
}

fn get<'v>(root: &'v Value, pointer: &str) -> Option<&'v Value> {
    root.pointer(pointer)
}

fn add(root: &mut Value, pointer: &str, value: Value) -> Option<()> {
    let (container, last) = parent(root, pointer)?;
    match container {
        Value::Object(map) => {
            map.insert(last, value);
            Some(())
        }
        Value::Array(items) if last == "-" => {
            items.push(value);
            Some(())
        }
        Value::Array(items) => {
            let i = last.parse::<usize>().ok().filter(|i| *i <= items.len())?;
            items.insert(i, value);
            Some(())
        }
        _ => None,
    }
}

fn remove(root: &mut Value, pointer: &str) -> Option<Value> {
    let (container, last) = parent(root, pointer)?;
    match container {
        Value::Object(map) => map.shift_remove(&last),
        Value::Array(items) => {
            let i = last.parse::<usize>().ok().filter(|i| *i < items.len())?;
            Some(items.remove(i))
        }
        _ => None,
    }
}

/// Applies a JSON Patch document to `resource`.
pub fn apply(resource: &Value, document: &Value) -> FhirResult<Value> {
    let mut result = resource.clone();
    for (i, op) in parse(document)?.into_iter().enumerate() {
        let missing = |p: &str| unprocessable(i, format!("operation {i}: no element at '{p}'"));
        match op {
            Op::Add(path, value) => add(&mut result, &path, value).ok_or_else(|| missing(&path))?,
            Op::Remove(path) => {
                remove(&mut result, &path).ok_or_else(|| missing(&path))?;
            }
            Op::Replace(path, value) => {
                remove(&mut result, &path).ok_or_else(|| missing(&path))?;
                add(&mut result, &path, value).ok_or_else(|| missing(&path))?;
            }
            Op::Move { from, path } => {
                let value = remove(&mut result, &from).ok_or_else(|| missing(&from))?;
                add(&mut result, &path, value).ok_or_else(|| missing(&path))?;
            }
            Op::Copy { from, path } => {
                let value = get(&result, &from).cloned().ok_or_else(|| missing(&from))?;
                add(&mut result, &path, value).ok_or_else(|| missing(&path))?;
            }
            Op::Test(path, expected) => {
                if get(&result, &path) != Some(&expected) {
                    return Err(unprocessable(
                        i,
                        format!("operation {i}: test of '{path}' failed"),
                    ));
                }
            }
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations() {
        let p =
            json!({"resourceType":"Patient","id":"p","name":[{"family":"Martin"}],"active":false});
        let patched = apply(
            &p,
            &json!([
                {"op":"test","path":"/active","value":false},
                {"op":"replace","path":"/active","value":true},
                {"op":"add","path":"/name/0/given","value":["Léa"]},
                {"op":"add","path":"/name/-","value":{"family":"Dupont","use":"maiden"}},
                {"op":"copy","from":"/name/0/family","path":"/name/1/text"},
                {"op":"remove","path":"/name/1/use"},
                {"op":"move","from":"/name/1/text","path":"/name/1/suffix"}
            ]),
        )
        .expect("applies");
        assert_eq!(patched["active"], true);
        assert_eq!(patched["name"][0]["given"][0], "Léa");
        assert_eq!(
            patched["name"][1],
            json!({"family":"Dupont","suffix":"Martin"})
        );
    }

    #[test]
    fn failures() {
        let p = json!({"resourceType":"Patient","active":false});
        assert_eq!(
            apply(&p, &json!([{"op":"test","path":"/active","value":true}]))
                .expect_err("test")
                .status(),
            422
        );
        assert_eq!(
            apply(&p, &json!([{"op":"remove","path":"/name"}]))
                .expect_err("missing")
                .status(),
            422
        );
        assert_eq!(
            apply(&p, &json!([{"op":"jump","path":"/x"}]))
                .expect_err("op")
                .status(),
            400
        );
        assert_eq!(
            apply(&p, &json!({"op":"add"}))
                .expect_err("not an array")
                .status(),
            400
        );
        assert_eq!(
            apply(&p, &json!([{"op":"add","path":"/x"}]))
                .expect_err("value")
                .status(),
            400
        );
    }
}
