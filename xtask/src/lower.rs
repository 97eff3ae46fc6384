//! Lowers an OpenAPI 3.1 document to the OpenAPI 3.0.3 that progenitor (through the
//! `openapiv3` crate) accepts. The lowering happens in memory only: the 3.1 contract in
//! `openapi/` stays the source of truth, and the generated servers validate against the
//! original 3.1 schemas (JSON Schema 2020-12), not against this lowered copy.
//!
//! Each rewrite is lossless for code generation purposes or drops a keyword that has no
//! effect on generated types (`examples`, `$comment`, …), with one deliberate exception:
//! `additionalProperties: false` is dropped, so that clients ignore response fields they
//! do not know (see [`open_for_clients`]).

use serde_json::{Map, Value};

/// Keywords a 3.0.3 Schema Object may carry. Everything else found in a 3.1 schema is
/// rewritten (see [`lower_schema`]) or dropped.
const SCHEMA_KEYWORDS_30: &[&str] = &[
    "title",
    "multipleOf",
    "maximum",
    "exclusiveMaximum",
    "minimum",
    "exclusiveMinimum",
    "maxLength",
    "minLength",
    "pattern",
    "maxItems",
    "minItems",
    "uniqueItems",
    "maxProperties",
    "minProperties",
    "required",
    "enum",
    "type",
    "allOf",
    "oneOf",
    "anyOf",
    "not",
    "items",
    "properties",
    "additionalProperties",
    "description",
    "format",
    "default",
    "nullable",
    "discriminator",
    "readOnly",
    "writeOnly",
    "xml",
    "externalDocs",
    "example",
    "deprecated",
    "$ref",
];

/// Media types that are JSON under another name. progenitor only types
/// `application/json` bodies, so these are renamed for the client generator.
fn is_json_media_type(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or("").trim();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Lowers a whole document.
pub fn lower_document(doc: &Value) -> Value {
    let mut doc = doc.clone();
    let Some(root) = doc.as_object_mut() else {
        return doc;
    };
    root.insert("openapi".into(), Value::String("3.0.3".into()));
    root.remove("jsonSchemaDialect");
    root.remove("webhooks");
    if let Some(info) = root.get_mut("info").and_then(Value::as_object_mut) {
        // 3.1 added `info.summary` and `license.identifier`.
        info.remove("summary");
        if let Some(license) = info.get_mut("license").and_then(Value::as_object_mut) {
            license.remove("identifier");
        }
    }
    if let Some(paths) = root.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            lower_path_item(item);
        }
    }
    if let Some(components) = root.get_mut("components").and_then(Value::as_object_mut) {
        components.remove("pathItems");
        if let Some(schemas) = components.get_mut("schemas").and_then(Value::as_object_mut) {
            for schema in schemas.values_mut() {
                lower_schema(schema);
            }
        }
        for kind in ["parameters", "headers"] {
            if let Some(items) = components.get_mut(kind).and_then(Value::as_object_mut) {
                for item in items.values_mut() {
                    lower_parameter_like(item);
                }
            }
        }
        if let Some(responses) = components.get_mut("responses").and_then(Value::as_object_mut) {
            for response in responses.values_mut() {
                lower_response(response);
            }
        }
        if let Some(bodies) = components.get_mut("requestBodies").and_then(Value::as_object_mut) {
            for body in bodies.values_mut() {
                lower_content(body);
            }
        }
    }
    doc
}

fn lower_path_item(item: &mut Value) {
    let Some(item) = item.as_object_mut() else {
        return;
    };
    if let Some(params) = item.get_mut("parameters").and_then(Value::as_array_mut) {
        params.iter_mut().for_each(lower_parameter_like);
    }
    for (key, operation) in item.iter_mut() {
        if !matches!(key.as_str(), "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace") {
            continue;
        }
        let Some(operation) = operation.as_object_mut() else {
            continue;
        };
        if let Some(params) = operation.get_mut("parameters").and_then(Value::as_array_mut) {
            params.iter_mut().for_each(lower_parameter_like);
        }
        if let Some(body) = operation.get_mut("requestBody") {
            lower_content(body);
        }
        if let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) {
            responses.values_mut().for_each(lower_response);
        }
    }
}

/// Parameters and headers: a schema, and possibly content.
fn lower_parameter_like(item: &mut Value) {
    if let Some(schema) = item.get_mut("schema") {
        lower_schema(schema);
    }
    lower_content(item);
}

fn lower_response(response: &mut Value) {
    lower_content(response);
    if let Some(headers) = response.get_mut("headers").and_then(Value::as_object_mut) {
        headers.values_mut().for_each(lower_parameter_like);
    }
}

/// A `content` map: lowers each media type's schema and renames JSON-like media types.
fn lower_content(holder: &mut Value) {
    let Some(content) = holder.get_mut("content").and_then(Value::as_object_mut) else {
        return;
    };
    let entries = std::mem::take(content);
    for (media_type, mut media) in entries {
        if let Some(schema) = media.get_mut("schema") {
            lower_schema(schema);
        }
        if let Some(media) = media.as_object_mut() {
            // `examples` on a media type is the same in both versions, but progenitor
            // ignores them and 3.0 forbids `example` together with `examples`.
            if media.contains_key("example") {
                media.remove("examples");
            }
        }
        let name = if is_json_media_type(&media_type) { "application/json".to_string() } else { media_type };
        // Two JSON-like media types on one response collapse into one entry.
        content.entry(name).or_insert(media);
    }
}

/// Lowers one JSON Schema 2020-12 schema (as used by OpenAPI 3.1) to a 3.0.3 Schema
/// Object, recursively.
pub fn lower_schema(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        // `true`/`false` schemas: 3.0 has no boolean schemas; `true` means "anything".
        if schema.as_bool() == Some(true) {
            *schema = Value::Object(Map::new());
        }
        return;
    };

    // Recurse first so that the rewrites below see lowered children.
    for key in ["items", "additionalProperties", "not"] {
        if let Some(child) = object.get_mut(key)
            && (!child.is_boolean() || key == "items")
        {
            lower_schema(child);
        }
    }
    for key in ["allOf", "oneOf", "anyOf"] {
        if let Some(list) = object.get_mut(key).and_then(Value::as_array_mut) {
            list.iter_mut().for_each(lower_schema);
        }
    }
    if let Some(properties) = object.get_mut("properties").and_then(Value::as_object_mut) {
        properties.values_mut().for_each(lower_schema);
    }

    open_for_clients(object);
    lower_type_array(object);
    lower_const(object);
    lower_empty_required(object);
    lower_exclusive_bounds(object);
    lower_examples(object);
    lower_null_alternatives(object);
    lower_ref_siblings(object);

    object.retain(|key, _| SCHEMA_KEYWORDS_30.contains(&key.as_str()) || key.starts_with("x-"));
}

/// `additionalProperties: false` is dropped: the lowered document only feeds the client
/// generator, and a client that refused fields it does not know would break the day a
/// response gains one. Requests stay strict where it matters: the generated servers
/// validate every request against the original 3.1 schemas, which keep
/// `additionalProperties: false`, before the (shared) types decode it.
fn open_for_clients(object: &mut Map<String, Value>) {
    if object.get("additionalProperties") == Some(&Value::Bool(false)) {
        object.remove("additionalProperties");
    }
}

/// `type: [string, "null"]` → `type: string, nullable: true`; several non-null types
/// become an `anyOf` of single-typed schemas.
fn lower_type_array(object: &mut Map<String, Value>) {
    let types: Vec<String> = match object.get("type") {
        Some(Value::Array(types)) => types.iter().filter_map(Value::as_str).map(String::from).collect(),
        Some(Value::String(only)) if only == "null" => vec!["null".into()],
        _ => return,
    };
    let nullable = types.iter().any(|t| t == "null");
    let non_null: Vec<&String> = types.iter().filter(|t| *t != "null").collect();
    match non_null.as_slice() {
        [] => {
            // Only `null` is allowed.
            object.remove("type");
            object.insert("enum".into(), Value::Array(vec![Value::Null]));
        }
        [one] => {
            object.insert("type".into(), Value::String((*one).clone()));
        }
        many => {
            object.remove("type");
            let alternatives = many.iter().map(|t| serde_json::json!({ "type": t })).collect::<Vec<_>>();
            object.insert("anyOf".into(), Value::Array(alternatives));
        }
    }
    if nullable {
        object.insert("nullable".into(), Value::Bool(true));
        if let Some(Value::Array(values)) = object.get_mut("enum")
            && !values.contains(&Value::Null)
        {
            values.push(Value::Null);
        }
    }
}

/// 3.0 requires `required` to have at least one entry; an empty list means nothing.
fn lower_empty_required(object: &mut Map<String, Value>) {
    if object.get("required").and_then(Value::as_array).is_some_and(Vec::is_empty) {
        object.remove("required");
    }
}

/// `const: x` → `enum: [x]`.
fn lower_const(object: &mut Map<String, Value>) {
    if let Some(value) = object.remove("const") {
        object.insert("enum".into(), Value::Array(vec![value]));
    }
}

/// 3.1's numeric `exclusiveMinimum: n` → 3.0's `minimum: n, exclusiveMinimum: true`.
fn lower_exclusive_bounds(object: &mut Map<String, Value>) {
    for (exclusive, inclusive) in [("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")] {
        if let Some(bound) = object.get(exclusive).filter(|v| v.is_number()).cloned() {
            object.insert(inclusive.into(), bound);
            object.insert(exclusive.into(), Value::Bool(true));
        }
    }
}

/// Schema-level `examples: [a, b]` → `example: a`.
fn lower_examples(object: &mut Map<String, Value>) {
    if let Some(Value::Array(examples)) = object.remove("examples")
        && let Some(first) = examples.into_iter().next()
    {
        object.entry("example").or_insert(first);
    }
}

/// `oneOf`/`anyOf` alternatives that only admit `null` become `nullable: true`.
fn lower_null_alternatives(object: &mut Map<String, Value>) {
    for key in ["oneOf", "anyOf"] {
        let Some(Value::Array(list)) = object.get_mut(key) else {
            continue;
        };
        let before = list.len();
        list.retain(|alternative| !is_null_only(alternative));
        if list.len() == before {
            continue;
        }
        object.insert("nullable".into(), Value::Bool(true));
        let Some(Value::Array(list)) = object.get_mut(key) else {
            continue;
        };
        if list.len() == 1 {
            // A single remaining alternative is wrapped in `allOf` so that a `$ref`
            // keeps its sibling `nullable`.
            let only = list.pop().expect("one alternative");
            object.remove(key);
            object.insert("allOf".into(), Value::Array(vec![only]));
        }
    }
}

/// What a lowered `{type: "null"}` looks like.
fn is_null_only(schema: &Value) -> bool {
    schema.get("enum") == Some(&Value::Array(vec![Value::Null])) && schema.as_object().is_some_and(|o| o.len() <= 2)
}

/// In 3.0 a `$ref` replaces its whole object, so siblings (description, nullable, …)
/// are kept by moving the reference into an `allOf`. A bare `$ref` stays as it is.
fn lower_ref_siblings(object: &mut Map<String, Value>) {
    if !object.contains_key("$ref") {
        return;
    }
    let siblings: Vec<&String> =
        object.keys().filter(|k| *k != "$ref" && SCHEMA_KEYWORDS_30.contains(&k.as_str())).collect();
    if siblings.is_empty() {
        return;
    }
    let reference = object.remove("$ref").expect("checked above");
    let mut target = Map::new();
    target.insert("$ref".into(), reference);
    object.insert("allOf".into(), Value::Array(vec![Value::Object(target)]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lowered(mut schema: Value) -> Value {
        lower_schema(&mut schema);
        schema
    }

    #[test]
    fn type_array_with_null_becomes_nullable() {
        assert_eq!(
            lowered(json!({"type": ["string", "null"], "maxLength": 3})),
            json!({"type": "string", "maxLength": 3, "nullable": true})
        );
    }

    #[test]
    fn nullable_enum_keeps_null_among_its_values() {
        assert_eq!(
            lowered(json!({"type": ["string", "null"], "enum": ["a", "b"]})),
            json!({"type": "string", "enum": ["a", "b", null], "nullable": true})
        );
    }

    #[test]
    fn several_types_become_any_of() {
        assert_eq!(
            lowered(json!({"type": ["string", "integer"]})),
            json!({"anyOf": [{"type": "string"}, {"type": "integer"}]})
        );
    }

    #[test]
    fn null_type_alone_becomes_null_enum() {
        assert_eq!(lowered(json!({"type": "null"})), json!({"enum": [null], "nullable": true}));
    }

    #[test]
    fn const_becomes_single_value_enum() {
        assert_eq!(
            lowered(json!({"type": "string", "const": "Bearer"})),
            json!({"type": "string", "enum": ["Bearer"]})
        );
    }

    #[test]
    fn numeric_exclusive_bounds_become_boolean_flags() {
        assert_eq!(
            lowered(json!({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 100})),
            json!({"type": "number", "exclusiveMinimum": true, "exclusiveMaximum": true, "minimum": 0, "maximum": 100})
        );
    }

    #[test]
    fn schema_examples_become_one_example() {
        assert_eq!(
            lowered(json!({"type": "string", "examples": ["a", "b"]})),
            json!({"type": "string", "example": "a"})
        );
    }

    #[test]
    fn ref_with_siblings_moves_into_all_of() {
        assert_eq!(
            lowered(json!({"$ref": "#/components/schemas/Thing", "description": "the thing"})),
            json!({"description": "the thing", "allOf": [{"$ref": "#/components/schemas/Thing"}]})
        );
        // A bare reference is left alone.
        assert_eq!(
            lowered(json!({"$ref": "#/components/schemas/Thing"})),
            json!({"$ref": "#/components/schemas/Thing"})
        );
    }

    #[test]
    fn one_of_with_null_becomes_nullable_all_of() {
        assert_eq!(
            lowered(json!({"oneOf": [{"$ref": "#/components/schemas/Thing"}, {"type": "null"}]})),
            json!({"nullable": true, "allOf": [{"$ref": "#/components/schemas/Thing"}]})
        );
    }

    #[test]
    fn keywords_unknown_to_3_0_are_dropped_recursively() {
        assert_eq!(
            lowered(json!({
                "type": "object",
                "$comment": "internal",
                "properties": {
                    "labels": {
                        "type": "object",
                        "propertyNames": {"pattern": "^[a-z]+$"},
                        "additionalProperties": {"type": "string", "contentMediaType": "text/plain"}
                    }
                },
                "x-kept": true
            })),
            json!({
                "type": "object",
                "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string"}}},
                "x-kept": true
            })
        );
    }

    #[test]
    fn closed_objects_are_opened_for_clients_and_maps_keep_their_values() {
        assert_eq!(
            lowered(json!({
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "inner": {"type": "object", "additionalProperties": false, "properties": {"a": {"type": "string"}}},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                }
            })),
            json!({
                "type": "object",
                "properties": {
                    "inner": {"type": "object", "properties": {"a": {"type": "string"}}},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                }
            })
        );
    }

    #[test]
    fn empty_required_is_dropped() {
        assert_eq!(lowered(json!({"type": "object", "required": []})), json!({"type": "object"}));
    }

    #[test]
    fn nested_items_are_lowered() {
        assert_eq!(
            lowered(json!({"type": "array", "items": {"type": ["integer", "null"]}})),
            json!({"type": "array", "items": {"type": "integer", "nullable": true}})
        );
    }

    #[test]
    fn document_version_info_and_json_media_types() {
        let doc = json!({
            "openapi": "3.1.0",
            "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
            "info": {"title": "t", "version": "1", "summary": "s", "license": {"name": "Apache 2.0", "identifier": "Apache-2.0"}},
            "webhooks": {},
            "paths": {"/health": {"get": {
                "operationId": "getHealth",
                "parameters": [{"name": "q", "in": "query", "schema": {"type": ["string", "null"]}}],
                "responses": {"200": {
                    "description": "ok",
                    "headers": {"X-Index": {"schema": {"type": "integer", "exclusiveMinimum": 0}}},
                    "content": {"application/health+json": {"schema": {"$ref": "#/components/schemas/Health"}}}
                }}
            }}},
            "components": {"schemas": {"Health": {"type": "object", "properties": {"status": {"const": "pass"}}}}}
        });
        let lowered = lower_document(&doc);
        assert_eq!(lowered["openapi"], "3.0.3");
        assert!(lowered.get("jsonSchemaDialect").is_none());
        assert!(lowered.get("webhooks").is_none());
        assert!(lowered["info"].get("summary").is_none());
        assert_eq!(lowered["info"]["license"], json!({"name": "Apache 2.0"}));
        let operation = &lowered["paths"]["/health"]["get"];
        assert_eq!(operation["parameters"][0]["schema"], json!({"type": "string", "nullable": true}));
        let response = &operation["responses"]["200"];
        assert_eq!(
            response["headers"]["X-Index"]["schema"],
            json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true})
        );
        assert!(response["content"].get("application/json").is_some());
        assert!(response["content"].get("application/health+json").is_none());
        assert_eq!(lowered["components"]["schemas"]["Health"]["properties"]["status"], json!({"enum": ["pass"]}));
        // The result is something the 3.0 parser progenitor uses accepts.
        let parsed: openapiv3::OpenAPI = serde_json::from_value(lowered).expect("valid 3.0.3");
        assert_eq!(parsed.openapi, "3.0.3");
    }
}
