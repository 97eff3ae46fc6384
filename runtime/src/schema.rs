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
}
