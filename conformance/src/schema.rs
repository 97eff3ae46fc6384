//! What the generators and checks share about JSON Schemas: compiling validators
//! (draft 2020-12 with format assertions on, as the generated routers validate), reading
//! a schema with its `$ref`s and `allOf`s folded into one object, and the JSON types a
//! schema admits.
//!
//! Folding is an approximation used only to steer generation; whether a value is valid is
//! always decided by the compiled validator.

use crate::contract::Contract;
use jsonschema::Validator;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The JSON types, as JSON Schema names them.
pub const TYPES: &[&str] = &["null", "boolean", "integer", "number", "string", "array", "object"];

/// Keywords that describe rather than constrain; folding ignores them.
const ANNOTATIONS: &[&str] =
    &["description", "title", "example", "examples", "default", "deprecated", "readOnly", "writeOnly", "$comment"];

/// Compiles a self-contained schema the way the generated routers do.
pub fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::draft202012::options().should_validate_formats(true).build(schema).map_err(|e| e.to_string())
}

/// Compiled validators for a contract's schemas, keyed by the schema's JSON text.
pub struct Validators {
    contract: Arc<Contract>,
    compiled: Mutex<HashMap<String, Arc<Validator>>>,
}

impl Validators {
    pub fn new(contract: Arc<Contract>) -> Validators {
        Validators { contract, compiled: Mutex::new(HashMap::new()) }
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    /// A validator for `schema` as written in the contract (references resolved through
    /// the contract's component schemas).
    pub fn get(&self, schema: &Value) -> Result<Arc<Validator>, String> {
        let key = schema.to_string();
        if let Some(found) = self.compiled.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(found.clone());
        }
        let validator = Arc::new(compile(&self.contract.standalone_schema(schema))?);
        self.compiled.lock().unwrap_or_else(|e| e.into_inner()).insert(key, validator.clone());
        Ok(validator)
    }
}

/// `schema` with its `$ref` (and the `$ref`s of what it points at) replaced by the target
/// merged with the siblings, and `allOf` folded in. A boolean schema stays boolean.
pub fn fold(contract: &Contract, schema: &Value) -> Result<Value, String> {
    fold_depth(contract, schema, 0)
}

fn fold_depth(contract: &Contract, schema: &Value, depth: usize) -> Result<Value, String> {
    if depth > 32 {
        return Err("schema references nest too deeply".into());
    }
    let Value::Object(object) = schema else { return Ok(schema.clone()) };
    let mut current: Map<String, Value> = object.clone();
    if let Some(reference) = current.remove("$ref") {
        let reference = reference.as_str().ok_or("$ref is not a string")?;
        let target = fold_depth(contract, contract.target(reference)?, depth + 1)?;
        current = match target {
            Value::Object(target) => merge(target, strip_annotations(current)),
            Value::Bool(true) => current,
            other => return Ok(other),
        };
    }
    if let Some(all) = current.remove("allOf") {
        for part in all.as_array().into_iter().flatten() {
            match fold_depth(contract, part, depth + 1)? {
                Value::Object(part) => current = merge(current, part),
                Value::Bool(false) => return Ok(Value::Bool(false)),
                _ => {}
            }
        }
    }
    Ok(Value::Object(current))
}

fn strip_annotations(mut object: Map<String, Value>) -> Map<String, Value> {
    object.retain(|key, _| !ANNOTATIONS.contains(&key.as_str()));
    object
}

/// Both schemas at once, as far as generation needs: bounds tighten, required and
/// properties accumulate, types and enums intersect.
pub fn merge(mut into: Map<String, Value>, from: Map<String, Value>) -> Map<String, Value> {
    for (key, value) in from {
        let Some(existing) = into.get(&key).cloned() else {
            into.insert(key, value);
            continue;
        };
        let merged = match key.as_str() {
            "properties" => {
                let mut properties = existing.as_object().cloned().unwrap_or_default();
                for (name, schema) in value.as_object().cloned().unwrap_or_default() {
                    let combined = match properties.remove(&name) {
                        Some(previous) => serde_json::json!({ "allOf": [previous, schema] }),
                        None => schema,
                    };
                    properties.insert(name, combined);
                }
                Value::Object(properties)
            }
            "required" => {
                let mut names = existing.as_array().cloned().unwrap_or_default();
                for name in value.as_array().cloned().unwrap_or_default() {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                Value::Array(names)
            }
            "minimum" | "exclusiveMinimum" | "minLength" | "minItems" | "minProperties" => {
                if value.as_f64() > existing.as_f64() { value } else { existing }
            }
            "maximum" | "exclusiveMaximum" | "maxLength" | "maxItems" | "maxProperties" => {
                if value.as_f64() < existing.as_f64() { value } else { existing }
            }
            "type" => {
                let left = type_list(&existing);
                let right = type_list(&value);
                // `integer` is a kind of `number`, so the pair narrows to `integer`.
                let both: Vec<Value> = TYPES
                    .iter()
                    .filter(|t| {
                        let admits = |list: &[&str]| list.contains(t) || (**t == "integer" && list.contains(&"number"));
                        admits(&left) && admits(&right)
                    })
                    .map(|t| Value::String(t.to_string()))
                    .collect();
                Value::Array(both)
            }
            "enum" => {
                let right = value.as_array().cloned().unwrap_or_default();
                Value::Array(existing.as_array().into_iter().flatten().filter(|v| right.contains(v)).cloned().collect())
            }
            "additionalProperties" => {
                if value == Value::Bool(false) {
                    value
                } else {
                    existing
                }
            }
            _ => existing,
        };
        into.insert(key, merged);
    }
    into
}

fn type_list(value: &Value) -> Vec<&'static str> {
    let names: Vec<&str> = match value {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    TYPES.iter().copied().filter(|t| names.contains(t)).collect()
}

/// The JSON types a folded schema admits: its `type`, or what its keywords imply, or
/// every type when nothing says.
pub fn types(schema: &Value) -> Vec<&'static str> {
    let Value::Object(object) = schema else {
        return if *schema == Value::Bool(false) { Vec::new() } else { TYPES.to_vec() };
    };
    if let Some(declared) = object.get("type") {
        return type_list(declared);
    }
    let has = |keys: &[&str]| keys.iter().any(|k| object.contains_key(*k));
    if has(&["properties", "additionalProperties", "required", "minProperties", "maxProperties", "propertyNames"]) {
        vec!["object"]
    } else if has(&["items", "minItems", "maxItems", "uniqueItems", "prefixItems"]) {
        vec!["array"]
    } else if has(&["minLength", "maxLength", "pattern", "format"]) {
        vec!["string"]
    } else if has(&["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"]) {
        vec!["number"]
    } else {
        TYPES.to_vec()
    }
}

/// Whether `value` is of JSON type `name` (`integer` counts as `number`).
pub fn has_type(value: &Value, name: &str) -> bool {
    match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "integer" => value.as_f64().is_some_and(|n| n.fract() == 0.0),
        "number" => value.is_number(),
        "string" => value.is_string(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    }
}

/// The JSON value a parameter's text stands for, by the parameter's declared types,
/// the way generated routers read it; `None` when the text fits none of them.
pub fn coerce_param(text: &str, types: &[&str]) -> Option<Value> {
    for name in ["integer", "number", "boolean"] {
        if !types.contains(&name) {
            continue;
        }
        let value = match name {
            "integer" => pake_api_runtime::integer_text(text),
            "number" => text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number),
            _ => match text {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
        };
        if value.is_some() {
            return value;
        }
    }
    types.contains(&"string").then(|| Value::String(text.to_string()))
}

/// A parameter value as the text sent on the wire.
pub fn param_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}
