//! The cases the generator and the conformance engine used to read differently, each read
//! one way now.

use super::*;
use serde_json::json;

fn contract(paths: Value, components: Value) -> Contract {
    let doc = json!({
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1.0.0"},
        "paths": paths,
        "components": components,
    });
    Contract::from_value("test.yaml", doc).expect("the contract reads")
}

fn op(id: &str) -> Value {
    json!({"operationId": id, "responses": {"204": {"description": "done"}}})
}

#[test]
fn a_path_item_ref_is_followed_and_its_operations_point_where_they_are_written() {
    let mut get = op("getThing");
    get["parameters"] = json!([{"name": "limit", "in": "query", "schema": {"type": "integer"}}]);
    let contract = contract(
        json!({"/things/{id}": {"$ref": "#/components/pathItems/Thing"}}),
        json!({"pathItems": {"Thing": {
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "get": get,
        }}}),
    );
    let [op] = contract.operations.as_slice() else { panic!("one operation: {:?}", contract.operations) };
    assert_eq!((op.method.as_str(), op.path.as_str()), ("GET", "/things/{id}"));
    assert_eq!(op.pointer, "/components/pathItems/Thing/get");
    let pointers: Vec<(&str, &str)> = op.params.iter().map(|p| (p.name.as_str(), p.pointer.as_str())).collect();
    assert_eq!(
        pointers,
        [("id", "/components/pathItems/Thing/parameters/0"), ("limit", "/components/pathItems/Thing/get/parameters/0")]
    );
    for param in &op.params {
        assert!(contract.doc.pointer(&param.pointer).is_some(), "{} points into the document", param.pointer);
    }
}

#[test]
fn cookie_parameters_are_read_as_cookies() {
    let mut get = op("getThing");
    get["parameters"] = json!([{"name": "session", "in": "cookie", "schema": {"type": "string"}}]);
    let contract = contract(json!({"/things": {"get": get}}), json!({}));
    let param = &contract.operations[0].params[0];
    assert_eq!((param.name.as_str(), param.location, param.required), ("session", ParamLocation::Cookie, false));
}

#[test]
fn a_path_parameter_is_required_even_when_it_does_not_say_so() {
    let mut get = op("getThing");
    get["parameters"] = json!([{"name": "id", "in": "path", "schema": {"type": "string"}}]);
    let contract = contract(json!({"/things/{id}": {"get": get}}), json!({}));
    assert!(contract.operations[0].params[0].required);
    assert_eq!(contract.params_schema(&contract.operations[0])["required"], json!(["id"]));
}

#[test]
fn a_missing_schema_is_true_everywhere() {
    let get = json!({
        "operationId": "getThing",
        "parameters": [{"name": "q", "in": "query"}],
        "requestBody": {"content": {"application/json": {}}},
        "responses": {"200": {
            "description": "ok",
            "headers": {"X-Thing": {"description": "a header"}},
            "content": {"application/json": {}},
        }},
    });
    let contract = contract(json!({"/things": {"post": get}}), json!({}));
    let op = &contract.operations[0];
    assert_eq!(op.params[0].schema, Value::Bool(true));
    assert_eq!(op.body.as_ref().expect("a body").content[0].schema, Value::Bool(true));
    assert_eq!(op.responses[0].content[0].schema, Value::Bool(true));
    assert_eq!(op.responses[0].headers[0].schema, Value::Bool(true));
}

/// An operation's parameter `$ref` to `Step0`, then `Step0 → Step1 → … → Step{hops}`, a
/// parameter at the end: `hops + 1` references in a row.
fn ref_chain(hops: usize) -> Result<Contract, ContractError> {
    let mut parameters = Map::new();
    for step in 0..hops {
        parameters.insert(format!("Step{step}"), json!({"$ref": format!("#/components/parameters/Step{}", step + 1)}));
    }
    parameters.insert(format!("Step{hops}"), json!({"name": "q", "in": "query", "schema": {"type": "string"}}));
    let mut get = op("getThing");
    get["parameters"] = json!([{"$ref": "#/components/parameters/Step0"}]);
    let doc = json!({
        "openapi": "3.1.0",
        "paths": {"/things": {"get": get}},
        "components": {"parameters": parameters},
    });
    Contract::from_value("chain.yaml", doc)
}

#[test]
fn references_are_followed_up_to_the_same_limit_everywhere() {
    let read = ref_chain(MAX_REF_HOPS - 1).expect("a chain within the limit reads");
    assert_eq!(read.operations[0].params[0].name, "q");
    let error = ref_chain(MAX_REF_HOPS).expect_err("a chain beyond the limit is refused").to_string();
    assert!(error.contains("reference cycle"), "{error}");
    assert!(error.starts_with("chain.yaml#/paths/~1things/get/parameters/0:"), "{error}");

    let doc = json!({"components": {"schemas": {"A": {"$ref": "#/components/schemas/B"}, "B": {"$ref": "#/components/schemas/A"}}}});
    let error = resolve(&doc, &json!({"$ref": "#/components/schemas/A"})).expect_err("a cycle never resolves");
    assert!(error.contains("reference cycle"), "{error}");
    assert_eq!(
        resolve(&doc, &json!({"$ref": "#/components/schemas/C"})),
        Err("dangling reference #/components/schemas/C".to_string())
    );
}

#[test]
fn operation_parameters_override_path_item_ones_and_duplicate_ids_are_refused() {
    let mut get = op("getThing");
    get["parameters"] = json!([{"name": "q", "in": "query", "required": true, "schema": {"type": "integer"}}]);
    let contract = contract(
        json!({"/things": {"parameters": [{"name": "q", "in": "query", "schema": {"type": "string"}}], "get": get}}),
        json!({}),
    );
    let params = &contract.operations[0].params;
    assert_eq!(params.len(), 1);
    assert!(params[0].required);
    assert_eq!(params[0].schema, json!({"type": "integer"}));

    let doc = json!({"paths": {"/a": {"get": op("same")}, "/b": {"get": op("same")}}});
    let error = Contract::from_value("dup.yaml", doc).expect_err("duplicate ids are refused").to_string();
    assert!(error.contains("operationId same is used twice"), "{error}");
}

#[test]
fn responses_bodies_headers_links_and_examples_are_read_through_references() {
    let post = json!({
        "operationId": "createThing",
        "security": [{"bearerAuth": ["things:write"]}],
        "requestBody": {"$ref": "#/components/requestBodies/Thing"},
        "responses": {
            "201": {
                "description": "created",
                "headers": {"Location": {"$ref": "#/components/headers/Location"}},
                "links": {"GetThing": {"operationId": "getThing", "parameters": {"id": "$response.body#/id"}}},
                "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Thing"},
                    "examples": {"one": {"value": {"id": "a"}}},
                }},
            },
            "default": {"description": "ignored"},
            "400": {"$ref": "#/components/responses/BadRequest"},
        },
    });
    let contract = contract(
        json!({"/things": {"post": post}}),
        json!({
            "requestBodies": {"Thing": {"required": true, "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Thing"}, "example": {"id": "b"}},
            }}},
            "headers": {"Location": {"required": true, "schema": {"type": "string"}}},
            "responses": {"BadRequest": {"description": "bad", "content": {"application/problem+json": {}}}},
            "schemas": {"Thing": {"type": "object"}},
        }),
    );
    let op = &contract.operations[0];
    assert_eq!(op.scopes, Some(vec!["things:write".to_string()]));
    let body = op.body.as_ref().expect("a body");
    assert!(body.required);
    assert_eq!(body.json().map(|(media, _)| media), Some("application/json"));
    assert_eq!(body.content[0].example, Some(json!({"id": "b"})));
    let statuses: Vec<u16> = op.responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 400]);
    let created = op.response(201).expect("201");
    assert_eq!(created.content[0].example, Some(json!({"id": "a"})));
    assert!(created.headers[0].required);
    assert_eq!(created.links[0].operation_id, "getThing");
    assert_eq!(created.links[0].parameters["id"], "$response.body#/id");
    assert!(op.response(400).expect("400").content[0].is_json());
    assert_eq!(op.success_responses().count(), 1);
}
