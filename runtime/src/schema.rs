//! Self-contained JSON Schemas cut out of an OpenAPI 3.1 document, for validators that
//! compile one schema at a time (the generated routers, the conformance engine, the
//! contract linter).

use serde_json::{Map, Value};
use std::collections::BTreeSet;

fn pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// A self-contained JSON Schema (2020-12) for `schema` taken from `doc`: every component
/// schema it reaches is copied under `$defs` and the references rewritten to point there.
pub fn standalone_schema(doc: &Value, schema: &Value) -> Value {
    let mut names = BTreeSet::new();
    let mut pending = vec![schema.clone()];
    while let Some(next) = pending.pop() {
        collect_schema_refs(&next, &mut |name| {
            if names.insert(name.to_string())
                && let Some(target) = doc.pointer(&format!("/components/schemas/{}", pointer_token(name)))
            {
                pending.push(target.clone());
            }
        });
    }
    let mut root = schema.clone();
    rewrite_schema_refs(&mut root);
    if names.is_empty() {
        return root;
    }
    let mut defs = Map::new();
    for name in names {
        if let Some(target) = doc.pointer(&format!("/components/schemas/{}", pointer_token(&name))) {
            let mut target = target.clone();
            rewrite_schema_refs(&mut target);
            defs.insert(name, target);
        }
    }
    match root {
        Value::Object(mut object) if !object.contains_key("$defs") => {
            object.insert("$defs".into(), Value::Object(defs));
            Value::Object(object)
        }
        other => serde_json::json!({ "allOf": [other], "$defs": defs }),
    }
}

/// Calls `found` with the name of every `#/components/schemas/NAME` reference.
fn collect_schema_refs(value: &Value, found: &mut dyn FnMut(&str)) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                if key == "$ref" {
                    if let Some(name) = child.as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
                        found(&unescape(name));
                    }
                } else {
                    collect_schema_refs(child, found);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_schema_refs(item, found)),
        _ => {}
    }
}

fn rewrite_schema_refs(value: &mut Value) {
    match value {
        Value::Object(object) => {
            for (key, child) in object.iter_mut() {
                if key == "$ref" {
                    if let Some(name) = child.as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
                        *child = Value::String(format!("#/$defs/{name}"));
                    }
                } else {
                    rewrite_schema_refs(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_schema_refs),
        _ => {}
    }
}

/// How deep [`whole_numbers_as_integers`] follows references and nesting.
const MAX_NORMALISE_DEPTH: usize = 64;

/// Rewrites, in place, every number of `value` that stands where `schema` (a
/// self-contained schema as [`standalone_schema`] makes) admits an `integer` and that was
/// written as a float with a whole value (`3.0`, `3e0`, `30e-1`) into integer form (`3`).
///
/// JSON Schema counts any number with a zero fractional part as an integer, so a
/// validated body may carry `8080.0` where the contract says `type: integer`; typed
/// decoding (serde into `u16`, `NonZeroU64`, …) refuses floats. Call this after
/// validation and before decoding. Numbers elsewhere (`type: number`, free-form values)
/// are left exactly as sent; non-integral numbers are never touched (validation has
/// refused them where an integer is required). Values beyond the 64-bit integers stay
/// floats. `$ref`, `allOf`/`anyOf`/`oneOf`, `properties`, `additionalProperties`,
/// `prefixItems` and `items` are followed; a union's branches are all followed, so a
/// whole float in a union that admits an integer anywhere becomes an integer, which every
/// `number` accepts too.
pub fn whole_numbers_as_integers(schema: &Value, value: &mut Value) {
    normalise(schema, schema, value, 0);
}

fn admits_integer(schema: &Map<String, Value>) -> bool {
    match schema.get("type") {
        Some(Value::String(name)) => name == "integer",
        Some(Value::Array(names)) => names.iter().any(|name| name == "integer"),
        _ => false,
    }
}

/// A whole, finite float as a JSON integer, when one holds it exactly.
fn integer_form(number: &serde_json::Number) -> Option<Value> {
    if !number.is_f64() {
        return None;
    }
    let x = number.as_f64()?;
    if !x.is_finite() || x.fract() != 0.0 {
        return None;
    }
    // 2^64 and -2^63 are exact in f64; `as` is exact for whole values in range.
    if (0.0..18_446_744_073_709_551_616.0).contains(&x) {
        Some(Value::from(x as u64))
    } else if (-9_223_372_036_854_775_808.0..0.0).contains(&x) {
        Some(Value::from(x as i64))
    } else {
        None
    }
}

fn normalise(root: &Value, schema: &Value, value: &mut Value, depth: usize) {
    if depth > MAX_NORMALISE_DEPTH {
        return;
    }
    let Value::Object(schema) = schema else { return };
    if let Some(target) = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|reference| reference.strip_prefix('#'))
        .and_then(|pointer| root.pointer(pointer))
    {
        normalise(root, target, value, depth + 1);
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        for branch in schema.get(key).and_then(Value::as_array).into_iter().flatten() {
            normalise(root, branch, value, depth + 1);
        }
    }
    match value {
        Value::Number(number) if admits_integer(schema) => {
            if let Some(integer) = integer_form(number) {
                *value = integer;
            }
        }
        Value::Object(members) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (name, member) in members.iter_mut() {
                if let Some(sub) = properties.and_then(|p| p.get(name)).or(additional) {
                    normalise(root, sub, member, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            let prefix = schema.get("prefixItems").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            for (index, item) in items.iter_mut().enumerate() {
                if let Some(sub) = prefix.get(index).or_else(|| schema.get("items")) {
                    normalise(root, sub, item, depth + 1);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reached_components_move_under_defs_transitively() {
        let doc = json!({"components": {"schemas": {
            "A": {"type": "object", "properties": {"b": {"$ref": "#/components/schemas/B"}}},
            "B": {"type": "string"},
            "Unused": {"type": "integer"}
        }}});
        let standalone = standalone_schema(&doc, &json!({"$ref": "#/components/schemas/A"}));
        assert_eq!(
            standalone,
            json!({
                "$ref": "#/$defs/A",
                "$defs": {
                    "A": {"type": "object", "properties": {"b": {"$ref": "#/$defs/B"}}},
                    "B": {"type": "string"}
                }
            })
        );
        assert_eq!(standalone_schema(&doc, &json!({"type": "integer"})), json!({"type": "integer"}));
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).expect("valid JSON")
    }

    #[test]
    fn whole_floats_become_integers_where_the_schema_says_integer() {
        let doc = json!({"components": {"schemas": {
            "Port": {"type": "integer", "minimum": 1, "maximum": 65535},
            "Thing": {"type": "object", "properties": {
                "port": {"$ref": "#/components/schemas/Port"},
                "ttl": {"type": ["integer", "null"]},
                "weight": {"type": "number"},
                "free": {},
                "list": {"type": "array", "items": {"type": "integer"}},
                "map": {"type": "object", "additionalProperties": {"type": "integer"}},
                "both": {"allOf": [{"$ref": "#/components/schemas/Port"}]},
                "huge": {"type": "integer"},
                "negative": {"type": "integer"}
            }}
        }}});
        let schema = standalone_schema(&doc, &json!({"$ref": "#/components/schemas/Thing"}));
        let mut value = parse(
            r#"{"port": 8080.0, "ttl": 3e1, "weight": 2.0, "free": 4.0, "list": [1.0, 30e-1, 5],
                "map": {"a": 7.0e0}, "both": 9E0, "huge": 1e300, "negative": -2.0}"#,
        );
        whole_numbers_as_integers(&schema, &mut value);
        assert_eq!(value["port"], json!(8080));
        assert!(value["port"].is_u64());
        assert_eq!(value["ttl"], json!(30));
        assert!(value["weight"].is_f64(), "a number stays as sent");
        assert!(value["free"].is_f64(), "a free-form value stays as sent");
        assert_eq!(value["list"], json!([1, 3, 5]));
        assert_eq!(value["map"], json!({"a": 7}));
        assert_eq!(value["both"], json!(9));
        assert!(value["huge"].is_f64(), "beyond 64 bits there is no integer form");
        assert!(value["negative"].is_i64());
        assert_eq!(value["negative"], json!(-2));
        // A fraction is left for validation to refuse.
        let mut fraction = parse(r#"{"port": 3.5}"#);
        whole_numbers_as_integers(&schema, &mut fraction);
        assert!(fraction["port"].is_f64());
    }
}
