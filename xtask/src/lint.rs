//! Checks the contracts for what the generators and progenitor cannot take, and for the
//! conventions in `openapi/CONVENTIONS.md`. Every finding names the file and the JSON
//! pointer of the offending node.

use crate::contract::{Contract, METHODS, Operation, ParamLocation, RequestBody, pointer_token};
use heck::{ToLowerCamelCase, ToUpperCamelCase};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub file: String,
    pub pointer: String,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}: {}", self.file, self.pointer, self.message)
    }
}

struct Linter<'a> {
    contract: &'a Contract,
    findings: Vec<Finding>,
}

impl Linter<'_> {
    fn report(&mut self, pointer: impl Into<String>, message: impl Into<String>) {
        self.findings.push(Finding {
            file: self.contract.name.clone(),
            pointer: pointer.into(),
            message: message.into(),
        });
    }
}

/// Keywords the generators and the lowering do not support.
const FORBIDDEN_KEYWORDS: &[&str] = &[
    "not",
    "if",
    "then",
    "else",
    "prefixItems",
    "patternProperties",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentSchemas",
    "$dynamicRef",
];

/// Lints one contract.
pub fn lint(contract: &Contract) -> Vec<Finding> {
    let mut linter = Linter { contract, findings: Vec::new() };
    let doc = &contract.doc;

    if doc.get("openapi").and_then(Value::as_str) != Some("3.1.0") {
        linter.report("/openapi", "must be 3.1.0");
    }
    for key in ["title", "version", "description"] {
        if doc.pointer(&format!("/info/{key}")).and_then(Value::as_str).is_none_or(str::is_empty) {
            linter.report(format!("/info/{key}"), "is required");
        }
    }
    if doc.get("servers").and_then(Value::as_array).is_none_or(Vec::is_empty) {
        linter.report("/servers", "list the service's default local URL");
    }
    let declared_tags: BTreeSet<&str> = doc
        .get("tags")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("name").and_then(Value::as_str))
        .collect();

    // Paths: no `$ref` path items (the reader follows them; the conventions keep every
    // operation where its path is written), and every templated parameter declared.
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (path, item) in paths {
            let pointer = format!("/paths/{}", pointer_token(path));
            if !path.starts_with('/') {
                linter.report(&pointer, "paths start with /");
            }
            if item.get("$ref").is_some() {
                linter.report(&pointer, "path items may not be references");
            }
            for key in item.as_object().into_iter().flat_map(|o| o.keys()) {
                if !METHODS.contains(&key.as_str())
                    && !matches!(key.as_str(), "$ref" | "parameters" | "summary" | "description")
                {
                    linter.report(format!("{pointer}/{key}"), "unsupported path item field");
                }
            }
        }
    }

    // Duplicate operationIds are refused by the reader already.
    for op in &contract.operations {
        lint_operation(&mut linter, op, &declared_tags);
    }

    if let Some(schemas) = doc.pointer("/components/schemas").and_then(Value::as_object) {
        for (name, schema) in schemas {
            let pointer = format!("/components/schemas/{}", pointer_token(name));
            if name.to_upper_camel_case() != *name {
                linter.report(
                    &pointer,
                    format!(
                        "component schema names are UpperCamelCase ({name} would become {})",
                        name.to_upper_camel_case()
                    ),
                );
            }
            lint_schema(&mut linter, schema, &pointer);
        }
    }
    linter.findings
}

fn lint_operation(linter: &mut Linter<'_>, op: &Operation, tags: &BTreeSet<&str>) {
    let doc = &linter.contract.doc;
    let raw = doc.pointer(&op.pointer).cloned().unwrap_or(Value::Null);
    let pointer = op.pointer.clone();

    if op.id.to_lower_camel_case() != op.id {
        linter.report(format!("{pointer}/operationId"), format!("operationId {} is not lowerCamelCase", op.id));
    }
    match op.tags.as_slice() {
        [tag] => {
            if !tags.contains(tag.as_str()) {
                linter.report(format!("{pointer}/tags/0"), format!("tag {tag} is not declared in the top-level tags"));
            }
        }
        _ => linter.report(format!("{pointer}/tags"), "an operation has exactly one tag"),
    }
    if op.summary.is_empty() {
        linter.report(format!("{pointer}/summary"), "is required");
    }
    if op.description.is_empty() {
        linter.report(format!("{pointer}/description"), "is required");
    }
    if raw.get("security").is_none() {
        linter.report(format!("{pointer}/security"), "every operation states its security (`[]` when public)");
    }
    if let Some(scopes) = &op.scopes {
        if scopes.len() != 1 {
            linter.report(format!("{pointer}/security/0"), "a secured operation names exactly one scope");
        }
        for status in [401, 403] {
            if !op.responses.iter().any(|r| r.status == status) {
                linter.report(format!("{pointer}/responses"), format!("a secured operation lists {status}"));
            }
        }
    }

    // Parameters.
    let template_params: BTreeSet<String> = op
        .path
        .split('/')
        .filter_map(|segment| segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(String::from)
        .collect();
    let mut declared_path_params = BTreeSet::new();
    for param in &op.params {
        match param.location {
            ParamLocation::Path => {
                declared_path_params.insert(param.name.clone());
                // The reader counts every path parameter as required, as OpenAPI does; the
                // document must say so too.
                let written = doc.pointer(&param.pointer).map(|raw| linter.contract.resolve(raw));
                if !matches!(written, Some(Ok(raw)) if raw.get("required") == Some(&Value::Bool(true))) {
                    linter.report(&param.pointer, "path parameters are required: true");
                }
            }
            ParamLocation::Cookie => {
                linter.report(&param.pointer, "cookie parameters are not supported (path, query or header)");
                continue;
            }
            ParamLocation::Query | ParamLocation::Header => {}
        }
        let schema = match linter.contract.resolve(&param.schema) {
            Ok(schema) => schema,
            Err(error) => {
                linter.report(&param.pointer, error);
                continue;
            }
        };
        let is_ref = param.schema.get("$ref").is_some();
        match schema.get("type").and_then(Value::as_str) {
            Some("string" | "integer" | "number" | "boolean") => {}
            _ => linter.report(
                format!("{}/schema", param.pointer),
                "parameters are a single primitive type (string, integer, number, boolean)",
            ),
        }
        if is_ref && schema.get("enum").is_none() {
            linter.report(format!("{}/schema", param.pointer), "a parameter `$ref` must name a string enum");
        }
        lint_schema(linter, &param.schema, &format!("{}/schema", param.pointer));
    }
    for missing in template_params.difference(&declared_path_params) {
        linter.report(&pointer, format!("path parameter {missing} is not declared"));
    }
    for extra in declared_path_params.difference(&template_params) {
        linter.report(&pointer, format!("path parameter {extra} is not in the path"));
    }
    if (!op.params.is_empty() || op.body.is_some()) && !op.responses.iter().any(|r| r.status == 400) {
        linter.report(format!("{pointer}/responses"), "an operation with parameters or a body lists 400");
    }

    if let Some(body) = &op.body {
        lint_body(linter, op, body);
    }

    // Responses.
    for status in raw.get("responses").and_then(Value::as_object).into_iter().flat_map(|r| r.keys()) {
        if status.parse::<u16>().is_err() {
            linter.report(
                format!("{pointer}/responses/{status}"),
                "no default or range responses: list every status explicitly",
            );
        }
    }
    if op.success_responses().next().is_none() {
        linter.report(format!("{pointer}/responses"), "an operation lists at least one 2xx response");
    }
    let mut success_schemas = BTreeSet::new();
    let mut error_schemas = BTreeSet::new();
    for response in &op.responses {
        let is_success = (200..300).contains(&response.status);
        if response.content.len() > 1 {
            linter.report(format!("{}/content", response.pointer), "a response has exactly one media type");
        }
        if let Some(content) = response.content.first() {
            let content_pointer = format!("{}/content/{}", response.pointer, pointer_token(&content.media_type));
            let essence = content.media_type.as_str();
            if essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json")) {
                if component_name(&content.schema).is_none() {
                    linter.report(
                        format!("{content_pointer}/schema"),
                        "JSON response schemas are a $ref to a component schema",
                    );
                }
            } else if essence == "text/plain" {
                if content.schema.get("type").and_then(Value::as_str) != Some("string") {
                    linter.report(format!("{content_pointer}/schema"), "text/plain responses are type: string");
                }
            } else {
                linter.report(&content_pointer, format!("unsupported response media type {essence}"));
            }
            if is_success {
                lint_example(linter, &content.schema, content.example.as_ref(), &content_pointer);
            }
            let key = content.schema.to_string();
            if is_success {
                success_schemas.insert(key);
            } else {
                error_schemas.insert(key);
            }
        } else if is_success {
            success_schemas.insert(String::new());
        } else {
            linter.report(&response.pointer, "error responses carry a body");
        }
        if response.status == 201 && !response.headers.iter().any(|h| h.name == "Location") {
            linter.report(format!("{}/headers", response.pointer), "a 201 response carries a Location header");
        }
        if matches!(response.status, 429 | 503) && !response.headers.iter().any(|h| h.name == "Retry-After") {
            linter.report(format!("{}/headers", response.pointer), "a 429/503 response carries a Retry-After header");
        }
        for header in &response.headers {
            match header.schema.get("type").and_then(Value::as_str) {
                Some("string" | "integer") => {}
                _ => linter.report(
                    format!("{}/headers/{}", response.pointer, pointer_token(&header.name)),
                    "response headers are strings or integers",
                ),
            }
        }
    }
    // progenitor types one success body and one error body per operation.
    if success_schemas.len() > 1 {
        linter.report(format!("{pointer}/responses"), "2xx responses of one operation share one body schema");
    }
    if error_schemas.len() > 1 {
        linter.report(format!("{pointer}/responses"), "error responses of one operation share one body schema");
    }
}

/// A request body: required, `application/json` only, a `$ref` to an object schema that
/// refuses unknown fields, with a valid example; and the statuses a JSON body can cause.
fn lint_body(linter: &mut Linter<'_>, op: &Operation, body: &RequestBody) {
    let doc = &linter.contract.doc;
    for status in [413, 415, 422] {
        if !op.declares(status) {
            linter.report(format!("{}/responses", op.pointer), format!("an operation with a JSON body lists {status}"));
        }
    }
    if !body.required {
        linter.report(&body.pointer, "request bodies are required: true");
    }
    let media = match body.content.as_slice() {
        [media] if media.media_type == "application/json" => media,
        _ => {
            linter.report(format!("{}/content", body.pointer), "request bodies are application/json only");
            return;
        }
    };
    match component_name(&media.schema) {
        None => linter.report(
            format!("{}/content/application~1json/schema", body.pointer),
            "request body schemas are a $ref to a component schema",
        ),
        Some(name) => {
            let schema_pointer = format!("/components/schemas/{}", pointer_token(name));
            match doc.pointer(&schema_pointer) {
                None => linter.report(&schema_pointer, "dangling reference"),
                Some(schema) => {
                    if schema.get("type").and_then(Value::as_str) != Some("object") {
                        linter.report(&schema_pointer, "request body schemas are objects");
                    }
                    if schema.get("additionalProperties") != Some(&Value::Bool(false)) {
                        linter.report(&schema_pointer, "request body schemas set additionalProperties: false");
                    }
                    lint_optional_nullables(linter, schema, &schema_pointer);
                }
            }
        }
    }
    lint_example(linter, &media.schema, media.example.as_ref(), &format!("{}/content/application~1json", body.pointer));
}

/// A typed client cannot tell `null` from absent for an optional property (both are
/// `None`), so request bodies must not give optional properties a nullable type: the
/// contract would promise a meaning clients cannot express.
fn lint_optional_nullables(linter: &mut Linter<'_>, schema: &Value, pointer: &str) {
    let required: Vec<&str> =
        schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    for (name, property) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
        let nullable = match property.get("type") {
            Some(Value::Array(types)) => types.iter().any(|t| t == "null"),
            Some(Value::String(t)) => t == "null",
            _ => false,
        };
        if nullable && !required.contains(&name.as_str()) {
            linter.report(
                format!("{pointer}/properties/{}/type", pointer_token(name)),
                "an optional request property cannot be nullable: typed clients cannot send null apart from absent",
            );
        }
    }
}

/// `#/components/schemas/NAME` → `NAME`.
pub fn component_name(schema: &Value) -> Option<&str> {
    let object = schema.as_object()?;
    if object.len() != 1 {
        return None;
    }
    object.get("$ref")?.as_str()?.strip_prefix("#/components/schemas/")
}

fn lint_example(linter: &mut Linter<'_>, schema: &Value, example: Option<&Value>, pointer: &str) {
    let Some(example) = example else {
        linter.report(pointer, "needs an example");
        return;
    };
    let standalone = linter.contract.standalone_schema(schema);
    let validator = match jsonschema::draft202012::options().should_validate_formats(true).build(&standalone) {
        Ok(validator) => validator,
        Err(error) => {
            linter.report(pointer, format!("schema does not compile: {error}"));
            return;
        }
    };
    for error in validator.iter_errors(example) {
        linter
            .report(format!("{pointer}/example"), format!("example is invalid at {}: {error}", error.instance_path()));
    }
}

/// Recursive schema checks: forbidden keywords, references that resolve, patterns that
/// Rust's regex engine accepts.
fn lint_schema(linter: &mut Linter<'_>, schema: &Value, pointer: &str) {
    let Some(object) = schema.as_object() else { return };
    for keyword in FORBIDDEN_KEYWORDS {
        if object.contains_key(*keyword) {
            linter.report(format!("{pointer}/{keyword}"), format!("`{keyword}` is not supported by the generators"));
        }
    }
    if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
        let target = reference.strip_prefix('#').and_then(|p| linter.contract.doc.pointer(p));
        if target.is_none() {
            linter.report(format!("{pointer}/$ref"), format!("dangling reference {reference}"));
        }
    }
    if let Some(pattern) = object.get("pattern").and_then(Value::as_str)
        && let Err(error) = regex::Regex::new(pattern)
    {
        linter.report(format!("{pointer}/pattern"), format!("pattern is not accepted by Rust's regex: {error}"));
    }
    if let Some(Value::Array(types)) = object.get("type") {
        let non_null = types.iter().filter(|t| t.as_str() != Some("null")).count();
        if non_null > 1 {
            linter.report(format!("{pointer}/type"), "a type array has one type besides null");
        }
    }
    for (key, child) in object {
        match key.as_str() {
            "properties" | "$defs" => {
                for (name, sub) in child.as_object().into_iter().flatten() {
                    lint_schema(linter, sub, &format!("{pointer}/{key}/{}", pointer_token(name)));
                }
            }
            "items" | "additionalProperties" | "propertyNames" | "contains" => {
                lint_schema(linter, child, &format!("{pointer}/{key}"))
            }
            "allOf" | "oneOf" | "anyOf" => {
                for (index, sub) in child.as_array().into_iter().flatten().enumerate() {
                    lint_schema(linter, sub, &format!("{pointer}/{key}/{index}"));
                }
            }
            _ => {}
        }
    }
}

/// Components that every contract carries verbatim (see `openapi/shared-components.yaml`).
pub const SHARED_COMPONENTS: &[&str] = &[
    "/components/securitySchemes/bearerAuth",
    "/components/parameters/Limit",
    "/components/parameters/Cursor",
    "/components/headers/Location",
    "/components/headers/RetryAfter",
    "/components/schemas/Error",
    "/components/schemas/ErrorDetail",
    "/components/responses/BadRequest",
    "/components/responses/Unauthorized",
    "/components/responses/Forbidden",
    "/components/responses/NotFound",
    "/components/responses/Conflict",
    "/components/responses/PreconditionFailed",
    "/components/responses/PayloadTooLarge",
    "/components/responses/UnsupportedMediaType",
    "/components/responses/UnprocessableEntity",
    "/components/responses/TooManyRequests",
    "/components/responses/InternalError",
    "/components/responses/ServiceUnavailable",
];

/// Checks that each contract carries the shared components exactly as
/// `shared-components.yaml` defines them.
pub fn lint_shared(shared: &Value, contracts: &[Contract]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let expected: BTreeMap<&str, Option<&Value>> = SHARED_COMPONENTS.iter().map(|p| (*p, shared.pointer(p))).collect();
    for contract in contracts {
        for (pointer, expected) in &expected {
            let actual = contract.doc.pointer(pointer);
            if actual != *expected {
                findings.push(Finding {
                    file: contract.name.clone(),
                    pointer: pointer.to_string(),
                    message: if actual.is_none() {
                        "missing shared component (copy it from shared-components.yaml)".into()
                    } else {
                        "differs from shared-components.yaml".into()
                    },
                });
            }
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn contract(doc: Value) -> Contract {
        Contract::from_value("test.yaml", doc).expect("parses")
    }

    fn messages(doc: Value) -> Vec<String> {
        lint(&contract(doc)).into_iter().map(|f| f.to_string()).collect()
    }

    fn minimal() -> Value {
        json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1", "description": "d"},
            "servers": [{"url": "http://localhost:1"}],
            "tags": [{"name": "things", "description": "things"}],
            "paths": {"/things/{thing_id}": {"get": {
                "operationId": "getThing",
                "tags": ["things"],
                "summary": "s",
                "description": "d",
                "security": [],
                "parameters": [{"name": "thing_id", "in": "path", "required": true, "schema": {"type": "string", "format": "uuid"}}],
                "responses": {
                    "200": {"description": "ok", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Thing"},
                        "example": {"name": "a"}
                    }}},
                    "400": {"description": "bad", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}}
                }
            }}},
            "components": {"schemas": {"Thing": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"}}}}}
        })
    }

    #[test]
    fn a_clean_contract_has_no_findings() {
        assert_eq!(messages(minimal()), Vec::<String>::new());
    }

    #[test]
    fn findings_name_file_and_pointer() {
        let mut doc = minimal();
        doc["paths"]["/things/{thing_id}"]["get"]["operationId"] = json!("Get_thing");
        assert_eq!(
            messages(doc),
            vec!["test.yaml#/paths/~1things~1{thing_id}/get/operationId: operationId Get_thing is not lowerCamelCase"]
        );
    }

    #[test]
    fn invalid_examples_are_reported() {
        let mut doc = minimal();
        doc["paths"]["/things/{thing_id}"]["get"]["responses"]["200"]["content"]["application/json"]["example"] =
            json!({"name": "UPPER"});
        let found = messages(doc);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("/responses/200/content/application~1json/example: example is invalid at /name"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn missing_examples_are_reported() {
        let mut doc = minimal();
        doc["paths"]["/things/{thing_id}"]["get"]["responses"]["200"]["content"]["application/json"]
            .as_object_mut()
            .unwrap()
            .remove("example");
        assert_eq!(
            messages(doc),
            vec!["test.yaml#/paths/~1things~1{thing_id}/get/responses/200/content/application~1json: needs an example"]
        );
    }

    #[test]
    fn inline_response_schemas_and_default_responses_are_rejected() {
        let mut doc = minimal();
        let op = &mut doc["paths"]["/things/{thing_id}"]["get"];
        op["responses"]["200"]["content"]["application/json"]["schema"] = json!({"type": "object"});
        op["responses"]["default"] = json!({"description": "x"});
        let found = messages(doc);
        assert!(found.iter().any(|m| m.ends_with("/responses/200/content/application~1json/schema: JSON response schemas are a $ref to a component schema")), "{found:?}");
        assert!(found.iter().any(|m| m.contains("no default or range responses")), "{found:?}");
    }

    #[test]
    fn undeclared_path_parameters_and_array_parameters_are_rejected() {
        let mut doc = minimal();
        let op = &mut doc["paths"]["/things/{thing_id}"]["get"];
        op["parameters"] =
            json!([{"name": "tags", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}}]);
        let found = messages(doc);
        assert!(found.iter().any(|m| m.contains("path parameter thing_id is not declared")), "{found:?}");
        assert!(found.iter().any(|m| m.contains("parameters are a single primitive type")), "{found:?}");
    }

    /// The linter reads a contract as the conformance engine does (`pake-contract`) and
    /// reports what the conventions forbid in that reading.
    #[test]
    fn cookie_parameters_unrequired_path_parameters_and_path_item_refs_are_reported() {
        let mut doc = minimal();
        let op = &mut doc["paths"]["/things/{thing_id}"]["get"];
        op["parameters"] = json!([
            {"name": "thing_id", "in": "path", "schema": {"type": "string", "format": "uuid"}},
            {"name": "session", "in": "cookie", "schema": {"type": "string"}},
        ]);
        let item = doc["paths"]["/things/{thing_id}"].take();
        doc["components"]["pathItems"] = json!({"Thing": item});
        doc["paths"]["/things/{thing_id}"] = json!({"$ref": "#/components/pathItems/Thing"});
        assert_eq!(
            messages(doc),
            vec![
                "test.yaml#/paths/~1things~1{thing_id}: path items may not be references",
                "test.yaml#/components/pathItems/Thing/get/parameters/0: path parameters are required: true",
                "test.yaml#/components/pathItems/Thing/get/parameters/1: cookie parameters are not supported (path, query or header)",
            ]
        );
    }

    #[test]
    fn patterns_rust_cannot_compile_and_forbidden_keywords_are_rejected() {
        let mut doc = minimal();
        doc["components"]["schemas"]["Thing"]["properties"]["name"] =
            json!({"type": "string", "pattern": "^(?=a)b$", "not": {"const": "x"}});
        let found = messages(doc);
        assert!(
            found
                .iter()
                .any(|m| m.contains("/components/schemas/Thing/properties/name/pattern: pattern is not accepted")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|m| m.contains("/components/schemas/Thing/properties/name/not: `not` is not supported")),
            "{found:?}"
        );
    }

    #[test]
    fn secured_operations_need_one_scope_and_auth_responses() {
        let mut doc = minimal();
        doc["paths"]["/things/{thing_id}"]["get"]["security"] = json!([{"bearerAuth": []}]);
        let found = messages(doc);
        assert!(found.iter().any(|m| m.contains("names exactly one scope")), "{found:?}");
        assert!(found.iter().any(|m| m.contains("a secured operation lists 401")), "{found:?}");
        assert!(found.iter().any(|m| m.contains("a secured operation lists 403")), "{found:?}");
    }

    #[test]
    fn optional_nullable_request_properties_are_rejected() {
        let mut doc = minimal();
        doc["paths"]["/things/{thing_id}"]["get"]["requestBody"] = json!({
            "required": true,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Patch"}, "example": {}}}
        });
        doc["components"]["schemas"]["Patch"] = json!({
            "type": "object", "additionalProperties": false,
            "properties": {"note": {"type": ["string", "null"]}}
        });
        let found = messages(doc);
        assert!(
            found.iter().any(|m| m.contains(
                "/components/schemas/Patch/properties/note/type: an optional request property cannot be nullable"
            )),
            "{found:?}"
        );
    }

    #[test]
    fn differing_error_bodies_are_rejected() {
        let mut doc = minimal();
        doc["components"]["schemas"]["Other"] = json!({"type": "object"});
        doc["paths"]["/things/{thing_id}"]["get"]["responses"]["404"] = json!({"description": "nf", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Other"}}}});
        let found = messages(doc);
        assert!(
            found.iter().any(|m| m.contains("error responses of one operation share one body schema")),
            "{found:?}"
        );
    }

    #[test]
    fn shared_components_must_match() {
        let shared = json!({"components": {"schemas": {"Error": {"type": "object"}}}});
        let mut doc = minimal();
        doc["components"]["schemas"]["Error"] = json!({"type": "string"});
        let findings = lint_shared(&shared, &[contract(doc)]);
        let errors: Vec<String> =
            findings.iter().filter(|f| f.pointer == "/components/schemas/Error").map(|f| f.to_string()).collect();
        assert_eq!(errors, vec!["test.yaml#/components/schemas/Error: differs from shared-components.yaml"]);
    }
}
