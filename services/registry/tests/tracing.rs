//! The registry's spans, seen where they arrive (a real OTLP/HTTP receiver): each API
//! operation a server span continuing the caller's trace, each store call under it a
//! child span, on both backends.

mod support;

use conformance::TestServer;
use pake_registry::{Registry, Store};
use pake_trace::server::ServerSpans;
use pake_trace::testing::OtlpReceiver;
use pake_trace::{Telemetry, TraceConfig};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";

async fn spans_of_a_registration(backend: Backend, db_system: &str) {
    let db = TestDatabase::new(backend).await;
    let receiver = OtlpReceiver::start().await;
    let config = TraceConfig {
        otlp_endpoint: Some(receiver.endpoint.clone()),
        batch_delay: Duration::from_millis(10),
        ..TraceConfig::default()
    };
    let telemetry = Telemetry::start(config).unwrap();
    let store = Store::open(&db.url).await.unwrap();
    let registry = Arc::new(Registry::start(store).await.unwrap());
    let verifier = pake_tokens::TokenVerifier::hs256(SECRET).unwrap();
    let router = pake_registry::router(registry, verifier, pake_observe::Metrics::new("registry"));
    let router = ServerSpans::around(router, &telemetry, "registry", pake_mesh_server::OPERATIONS);
    let server = TestServer::start(router).await.unwrap();

    let answer = reqwest::Client::new()
        .post(format!("{}/api/v1/services/register", server.url()))
        .bearer_auth(token(&["mesh:write"]))
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .json(&json!({"name": "arxiv-search", "version": "1.0.0"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 201);
    telemetry.flush().await;

    let spans = receiver
        .wait_for(Duration::from_secs(5), |spans| {
            spans.iter().any(|s| s.name == "registerService")
                && spans.iter().any(|s| s.name == "store.register_service")
        })
        .await;
    let server_span = spans.iter().find(|s| s.name == "registerService").unwrap();
    assert_eq!((server_span.kind, server_span.service.as_str()), ("server", "registry"));
    assert_eq!((server_span.trace_id.as_str(), server_span.parent_span_id.as_str()), (TRACE, PARENT));
    assert_eq!(server_span.attribute("http.response.status_code"), Some("201"));
    let store_span = spans.iter().find(|s| s.name == "store.register_service").unwrap();
    assert_eq!(store_span.trace_id, TRACE);
    assert_eq!(store_span.parent_span_id, server_span.span_id, "the store call is a child of the request");
    assert_eq!(store_span.attribute("db.system"), Some(db_system));
    // Background work (the registry's reaper, its snapshot refresh) is not part of any trace.
    assert!(spans.iter().all(|s| s.trace_id == TRACE), "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_registrations_are_traced_down_to_the_store() {
    spans_of_a_registration(Backend::Postgres, "postgresql").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_registrations_are_traced_down_to_the_store() {
    spans_of_a_registration(Backend::Sqlite, "sqlite").await;
}
