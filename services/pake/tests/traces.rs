//! Distributed tracing through the real `pake serve`: a client's trace continues through
//! the gateway, the upstream it proxies to and the registry that upstream calls; the spans
//! arrive over the wire at an OTLP/HTTP collector and are readable at once from the
//! monitoring service's trace store, in one process or across processes.

mod support;

use pake_trace::testing::{OtlpReceiver, ReceivedSpan};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::Pake;

const SECRET: &str = "traces-test-secret-0123456789abcdef-01234";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn token() -> String {
    pake_tokens::TokenIssuer::hs256(SECRET.as_bytes()).expect("secret").issue(
        "tester",
        None,
        &["mesh:read", "mesh:write", "gateway:admin", "monitoring:read", "monitoring:write"],
        Duration::from_secs(600),
    )
}

fn data_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pake-traces-{}", uuid::Uuid::new_v4()))
}

/// An upstream that, like a service of the platform, calls the registry on the trace it
/// was called in (it passes the `traceparent` it received on), and reports what it got.
async fn upstream(registry: String) -> conformance::TestServer {
    let handler = move |headers: axum::http::HeaderMap| {
        let registry = registry.clone();
        async move {
            let received = headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let answer = reqwest::Client::new()
                .get(format!("{registry}/api/v1/services"))
                .bearer_auth(token())
                .header("traceparent", &received)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            axum::Json(json!({"traceparent": received, "registry": answer}))
        }
    };
    conformance::TestServer::start(axum::Router::new().fallback(handler)).await.unwrap()
}

/// Registers the upstream and a gateway route to it, sends one request with a trace
/// context, and returns what the upstream received.
async fn call_through_the_gateway(registry: &str, gateway: &str) -> Value {
    let upstream = upstream(registry.to_string()).await;
    let http = conformance::http_client_with_token(&token());
    let service: Value = http
        .post(format!("{registry}/api/v1/services/register"))
        .json(&json!({"name": "papers", "version": "1.0.0"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = service["id"].as_str().unwrap();
    let instance = json!({"address": "127.0.0.1", "port": upstream.addr.port(), "ttl_seconds": 600});
    let registered = http.post(format!("{registry}/api/v1/services/{id}/instances")).json(&instance).send().await;
    assert_eq!(registered.unwrap().status(), 201);
    let route = json!({"name": "papers", "path_prefix": "/papers", "methods": ["GET"], "api_version": "v1", "service": "papers"});
    assert_eq!(http.post(format!("{gateway}/v1/admin/routes")).json(&route).send().await.unwrap().status(), 201);
    // The gateway reads routes and instances from the registry's snapshot: a moment.
    let started = Instant::now();
    loop {
        let answer = reqwest::Client::new()
            .get(format!("{gateway}/v1/papers/1706.03762"))
            .header("traceparent", format!("00-{TRACE}-{CLIENT_SPAN}-01"))
            .header("tracestate", "rojo=00f067aa0ba902b7")
            .send()
            .await
            .unwrap();
        if answer.status() == 200 {
            let body: Value = answer.json().await.unwrap();
            assert_eq!(body["registry"], 200, "{body}");
            return body;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the route never answered: {}", answer.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The spans of the trace at the monitoring service, once `done` holds for them.
async fn stored_trace(monitoring: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let http = conformance::http_client_with_token(&token());
    let started = Instant::now();
    loop {
        let answer = http.get(format!("{monitoring}/api/v1/traces/{TRACE}")).send().await.unwrap();
        if answer.status() == 200 {
            let trace: Value = answer.json().await.unwrap();
            let spans = trace["spans"].as_array().unwrap().clone();
            if done(&spans) {
                return spans;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "incomplete trace: {spans:#?}");
        } else {
            assert!(started.elapsed() < Duration::from_secs(10), "no trace: {}", answer.status());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn one<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.service == service && s.name == name).collect();
    assert_eq!(found.len(), 1, "one {service} span {name} in {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_continues_from_the_client_through_the_gateway_and_upstream_to_the_registry() {
    let collector = OtlpReceiver::start().await;
    let dir = data_dir();
    let pake = Pake::start(
        &["registry", "gateway", "monitoring", "performance"],
        &[
            ("PAKE_DATA_DIR", dir.display().to_string()),
            ("PAKE_TOKEN_SECRET", SECRET.to_string()),
            ("PAKE_OTLP_ENDPOINT", collector.endpoint.clone()),
            ("PAKE_SCRAPE_INTERVAL_SECONDS", "1".to_string()),
        ],
    )
    .await;
    let received = call_through_the_gateway(&pake.url("registry"), &pake.url("gateway")).await;

    let spans = collector
        .wait_for(Duration::from_secs(10), |spans| {
            spans.iter().any(|s| s.service == "registry" && s.name == "listServices" && s.trace_id == TRACE)
                && spans.iter().any(|s| s.service == "gateway" && s.kind == "server" && s.trace_id == TRACE)
        })
        .await;
    let spans: Vec<ReceivedSpan> = spans.into_iter().filter(|s| s.trace_id == TRACE).collect();
    let gateway = spans.iter().find(|s| s.service == "gateway" && s.kind == "server").unwrap();
    assert_eq!(gateway.parent_span_id, CLIENT_SPAN, "the gateway continues the client's trace");
    let tries: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.service == "gateway" && s.kind == "client").collect();
    assert_eq!(tries.len(), 1, "{spans:#?}");
    assert_eq!(tries[0].parent_span_id, gateway.span_id);
    // The upstream was told the try's span is its parent, the trace's state passed on.
    let sent = received["traceparent"].as_str().unwrap();
    assert_eq!(sent, format!("00-{TRACE}-{}-01", tries[0].span_id), "{received}");
    let registry = one(&spans, "registry", "listServices");
    assert_eq!(registry.kind, "server");
    assert_eq!(registry.parent_span_id, tries[0].span_id, "the upstream's call to the registry joins the trace");

    // The same spans are readable from the monitoring service's own trace store.
    let stored = stored_trace(&pake.url("monitoring"), |spans| spans.len() >= 3).await;
    let ids: Vec<&str> = stored.iter().map(|s| s["span_id"].as_str().unwrap()).collect();
    for span in [gateway, tries[0], registry] {
        assert!(ids.contains(&span.span_id.as_str()), "{} missing from the store: {stored:#?}", span.name);
    }

    // Spans another producer sends through ingestSpans go on to the collector too.
    let http = conformance::http_client_with_token(&token());
    let monitoring = pake.url("monitoring");
    let now = chrono::Utc::now();
    let span = json!({
        "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "b7ad6b7169203331", "name": "GET /search",
        "service": "search", "kind": "server", "status": "error", "status_message": "index offline",
        "start_time": (now - chrono::Duration::milliseconds(120)).to_rfc3339(), "end_time": now.to_rfc3339(),
        "attributes": {"http.route": "/search"}, "events": [{"name": "cache.miss", "time": now.to_rfc3339()}]
    });
    let accepted = http.post(format!("{monitoring}/api/v1/traces/spans")).json(&json!({"spans": [span]})).send().await;
    assert_eq!(accepted.unwrap().status(), 202);
    let spans = collector.wait_for(Duration::from_secs(10), |spans| spans.iter().any(|s| s.service == "search")).await;
    let forwarded = spans.iter().find(|s| s.service == "search").unwrap();
    assert_eq!(
        (forwarded.trace_id.as_str(), forwarded.span_id.as_str()),
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    );
    assert_eq!((forwarded.status, forwarded.status_message.as_str()), ("error", "index offline"));
    assert_eq!(forwarded.attribute("http.route"), Some("/search"));
    assert_eq!(forwarded.end_unix_nano - forwarded.start_unix_nano, 120_000_000);

    // The monitoring service's scrapes (every second here) are not sampled: a healthy
    // scrape leaves no trace to wade through.
    let started = Instant::now();
    loop {
        let up: Value = http
            .get(format!("{monitoring}/api/v1/metrics?name=up&match=service%3D%22registry%22"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if up["items"].as_array().is_some_and(|items| items.iter().any(|series| series["value"] == 1.0)) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the registry was never scraped: {up}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let listed: Value =
        http.get(format!("{monitoring}/api/v1/traces?limit=500")).send().await.unwrap().json().await.unwrap();
    let scrapes: Vec<&Value> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|trace| matches!(trace["root_name"].as_str(), Some("getMetrics" | "getPrometheusMetrics")))
        .collect();
    assert!(scrapes.is_empty(), "scrapes were traced: {scrapes:#?}");
    drop(pake);
    let _ = std::fs::remove_dir_all(dir);
}

/// With the monitoring service in another process, the spans go there over its API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_monitoring_service_in_another_process() {
    let (monitoring_dir, platform_dir) = (data_dir(), data_dir());
    let secret = ("PAKE_TOKEN_SECRET", SECRET.to_string());
    let monitoring =
        Pake::start(&["monitoring"], &[("PAKE_DATA_DIR", monitoring_dir.display().to_string()), secret.clone()]).await;
    let platform = Pake::start(
        &["registry", "gateway"],
        &[
            ("PAKE_DATA_DIR", platform_dir.display().to_string()),
            ("PAKE_MONITORING_URL", monitoring.url("monitoring")),
            secret,
        ],
    )
    .await;
    call_through_the_gateway(&platform.url("registry"), &platform.url("gateway")).await;
    let stored = stored_trace(&monitoring.url("monitoring"), |spans| {
        spans.iter().any(|s| s["service"] == "registry" && s["name"] == "listServices")
            && spans.iter().any(|s| s["service"] == "gateway" && s["kind"] == "server")
    })
    .await;
    let gateway = stored.iter().find(|s| s["service"] == "gateway" && s["kind"] == "server").unwrap();
    assert_eq!(gateway["parent_span_id"], CLIENT_SPAN);
    drop((platform, monitoring));
    let _ = std::fs::remove_dir_all(monitoring_dir);
    let _ = std::fs::remove_dir_all(platform_dir);
}
