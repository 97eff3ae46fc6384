//! The generated clients tolerate additive response changes: an answer carrying fields
//! the contract does not (yet) name, at the top level and inside nested objects, still
//! decodes. A server that adds a response field therefore breaks no deployed client;
//! servers themselves stay strict about requests (see the registry's and the engine's
//! unknown-field tests).
//!
//! Each answer is the contract's own example for the operation, served over real HTTP
//! with unknown fields added.

use axum::Router;
use axum::routing::get;
use conformance::{TestServer, http_client_with_token};
use serde_json::Value;

fn contract(file: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../openapi").join(file);
    serde_yaml::from_str(&std::fs::read_to_string(path).expect("the contract reads")).expect("the contract parses")
}

/// The media-type example and the schema of the 200 answer of `GET path`.
fn example(doc: &Value, path: &str) -> (Value, Value) {
    let content = &doc["paths"][path]["get"]["responses"]["200"]["content"];
    let media = content.as_object().and_then(|c| c.values().next()).expect("a 200 with content");
    (media["example"].clone(), media["schema"].clone())
}

/// Adds an unknown member to `value` and to every object nested in it whose schema names
/// its properties (maps, whose members are all of one schema, are left alone).
fn with_unknown_fields(doc: &Value, schema: &Value, value: &mut Value) -> usize {
    let mut schema = schema;
    while let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        schema = doc.pointer(reference.trim_start_matches('#')).expect("a local reference");
    }
    match value {
        Value::Object(members) => {
            let Some(properties) = schema.get("properties") else { return 0 };
            let mut added = 1;
            for (name, member) in members.iter_mut() {
                if let Some(sub) = properties.get(name) {
                    added += with_unknown_fields(doc, sub, member);
                }
            }
            members.insert("x_added_in_a_later_release".into(), serde_json::json!({"any": ["shape", 1, null]}));
            added
        }
        Value::Array(items) => items.iter_mut().map(|item| with_unknown_fields(doc, &schema["items"], item)).sum(),
        _ => 0,
    }
}

/// Serves `body` as `application/json` at `route`.
async fn serve(route: &str, body: Value) -> TestServer {
    let router = Router::new().route(route, get(move || async move { axum::Json(body) }));
    TestServer::start(router).await.expect("server starts")
}

#[tokio::test]
async fn the_mesh_client_ignores_response_fields_it_does_not_know() {
    let doc = contract("service-mesh.yaml");
    let (mut body, schema) = example(&doc, "/api/v1/services/{service_id}");
    let plain: pake_mesh_client::types::Service = serde_json::from_value(body.clone()).expect("the example decodes");
    assert!(with_unknown_fields(&doc, &schema, &mut body) >= 2, "nested objects too: {body}");
    let server = serve("/api/v1/services/{service_id}", body).await;
    let client = pake_mesh_client::Client::new_with_client(&server.url(), http_client_with_token("t"));
    let service = client.get_service().service_id(plain.id).send().await.expect("decodes").into_inner();
    assert_eq!(service, plain);
    server.stop().await;
}

#[tokio::test]
async fn the_gateway_client_ignores_response_fields_it_does_not_know() {
    let doc = contract("api-gateway.yaml");
    let (mut body, schema) = example(&doc, "/v1/admin/routes/{route_id}");
    let plain: pake_gateway_client::types::Route = serde_json::from_value(body.clone()).expect("the example decodes");
    assert!(with_unknown_fields(&doc, &schema, &mut body) >= 2, "nested objects too: {body}");
    let server = serve("/v1/admin/routes/{route_id}", body).await;
    let client = pake_gateway_client::Client::new_with_client(&server.url(), http_client_with_token("t"));
    let route = client.get_route().route_id(plain.id).send().await.expect("decodes").into_inner();
    assert_eq!(route, plain);
    server.stop().await;
}
