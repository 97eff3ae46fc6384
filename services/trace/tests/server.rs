//! Server spans of a contract router, seen where they arrive: at a real OTLP/HTTP receiver.

use axum::extract::Path;
use pake_api_runtime::{ApiError, OperationSpec};
use pake_trace::server::{ServerSpans, in_child_span};
use pake_trace::testing::{OtlpReceiver, ReceivedSpan};
use pake_trace::{Telemetry, TraceConfig};
use std::time::Duration;
use tower::ServiceExt as _;

static GET_ITEM: OperationSpec = OperationSpec::new("getItem", "GET", "/items/{id}", None, &[], "{}", None);
static BREAK: OperationSpec = OperationSpec::new("breakThings", "POST", "/break", None, &[], "{}", None);
static WAIT: OperationSpec = OperationSpec::new("waitLong", "GET", "/wait", None, &[], "{}", None);
static OPERATIONS: &[&OperationSpec] = &[&GET_ITEM, &BREAK, &WAIT];

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

async fn get_item(Path(id): Path<String>) -> Result<String, ApiError> {
    // A lookup that matters enough to be a span of its own.
    let found = in_child_span(
        "store.get_item",
        || vec![pake_trace::opentelemetry::KeyValue::new("db.system", "sqlite")],
        async {
            tracing::info!(id, "looking the item up");
            if id == "known" { Ok::<_, String>(Some("an item".to_string())) } else { Ok(None) }
        },
    )
    .await
    .map_err(|e| ApiError::internal(&std::io::Error::other(e)))?;
    found.ok_or_else(|| ApiError::not_found(format!("no item {id}")))
}

async fn app() -> (axum::Router, OtlpReceiver, Telemetry) {
    let receiver = OtlpReceiver::start().await;
    let config = TraceConfig {
        otlp_endpoint: Some(receiver.endpoint.clone()),
        batch_delay: Duration::from_millis(10),
        ..TraceConfig::default()
    };
    let telemetry = Telemetry::start(config).unwrap();
    let spans = ServerSpans::new(telemetry.tracer("registry"), OPERATIONS);
    let router = axum::Router::new()
        .route("/items/{id}", axum::routing::get(get_item))
        .route(
            "/break",
            axum::routing::post(|| async { Err::<(), _>(ApiError::internal(&std::io::Error::other("disk on fire"))) }),
        )
        .route("/wait", axum::routing::get(|| async { tokio::time::sleep(Duration::from_secs(30)).await }))
        .layer(axum::middleware::from_fn_with_state(spans, ServerSpans::trace));
    (router, receiver, telemetry)
}

fn request(method: &str, path: &str, traceparent: Option<&str>) -> axum::http::Request<axum::body::Body> {
    let mut builder = axum::http::Request::builder().method(method).uri(path);
    if let Some(value) = traceparent {
        builder = builder.header("traceparent", value).header("tracestate", "vendor=opaque");
    }
    builder.body(axum::body::Body::empty()).unwrap()
}

async fn json(response: axum::response::Response) -> serde_json::Value {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    spans.iter().find(|span| span.name == name).unwrap_or_else(|| panic!("no span {name} in {spans:#?}"))
}

#[tokio::test]
async fn a_request_is_a_server_span_named_by_its_operation_continuing_the_callers_trace() {
    let (router, receiver, telemetry) = app().await;
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let response = router.clone().oneshot(request("GET", "/items/missing", Some(&incoming))).await.unwrap();
    assert_eq!(response.status(), 404);
    let body = json(response).await;
    assert_eq!(body["trace_id"], TRACE, "the error body names the trace: {body}");
    telemetry.flush().await;

    let spans = receiver.wait_for(Duration::from_secs(5), |spans| spans.len() >= 2).await;
    let server = named(&spans, "getItem");
    assert_eq!((server.kind, server.service.as_str()), ("server", "registry"));
    assert_eq!((server.trace_id.as_str(), server.parent_span_id.as_str()), (TRACE, PARENT));
    assert_eq!(server.attribute("http.request.method"), Some("GET"));
    assert_eq!(server.attribute("http.route"), Some("/items/{id}"));
    assert_eq!(server.attribute("url.path"), Some("/items/missing"));
    assert_eq!(server.attribute("http.response.status_code"), Some("404"));
    assert_eq!(server.status, "unset", "a 4xx is the client's, not the server's error");
    let child = named(&spans, "store.get_item");
    assert_eq!((child.trace_id.as_str(), child.parent_span_id.as_str()), (TRACE, server.span_id.as_str()));
    assert_eq!(child.attribute("db.system"), Some("sqlite"));
    assert!(child.start_unix_nano >= server.start_unix_nano && child.end_unix_nano <= server.end_unix_nano);
}

#[tokio::test]
async fn a_malformed_parent_starts_a_new_trace_and_failures_are_errors() {
    let (router, receiver, telemetry) = app().await;
    let uppercase = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    let response = router.clone().oneshot(request("POST", "/break", Some(&uppercase))).await.unwrap();
    assert_eq!(response.status(), 500);
    let body = json(response).await;
    let unknown = router.clone().oneshot(request("GET", "/nowhere", None)).await.unwrap();
    assert_eq!(unknown.status(), 404);
    telemetry.flush().await;

    let spans = receiver.wait_for(Duration::from_secs(5), |spans| spans.len() >= 2).await;
    let broken = named(&spans, "breakThings");
    assert_ne!(broken.trace_id, TRACE.to_lowercase());
    assert_eq!(broken.parent_span_id, "", "a new trace: the span is its root");
    assert_eq!(body["trace_id"], broken.trace_id.as_str());
    assert_eq!((broken.status, broken.attribute("error.type")), ("error", Some("500")));
    // An unmatched request is named by its method alone, so that scanners cannot grow the names.
    named(&spans, "GET");
}

#[tokio::test]
async fn an_abandoned_request_still_ends_its_span_as_cancelled() {
    let (router, receiver, telemetry) = app().await;
    let abandoned =
        tokio::time::timeout(Duration::from_millis(100), router.oneshot(request("GET", "/wait", None))).await;
    assert!(abandoned.is_err(), "the request was still waiting");
    telemetry.flush().await;
    let spans = receiver.wait_for(Duration::from_secs(5), |spans| !spans.is_empty()).await;
    let span = named(&spans, "waitLong");
    assert_eq!((span.status, span.attribute("error.type")), ("error", Some("cancelled")));
    assert!(span.end_unix_nano - span.start_unix_nano < 5_000_000_000, "ended when abandoned");
}
