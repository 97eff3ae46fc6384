//! The gateway feeds its own request timings to the performance service of its process:
//! requests proxied through the real `pake serve` show up in the service's statistics.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::Pake;

const SECRET: &str = "samples-test-secret-0123456789abcdef-0123";

fn token() -> String {
    pake_tokens::TokenIssuer::hs256(SECRET.as_bytes()).expect("secret").issue(
        "tester",
        None,
        &["mesh:read", "mesh:write", "gateway:admin", "performance:read"],
        Duration::from_secs(600),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_requests_reach_the_performance_service_as_samples() {
    let dir = data_dir();
    let pake = Pake::start(
        &["registry", "gateway", "performance"],
        &[("PAKE_DATA_DIR", dir.display().to_string()), ("PAKE_TOKEN_SECRET", SECRET.to_string())],
    )
    .await;
    proxy_and_read_back(&pake.url("registry"), &pake.url("gateway"), &pake.url("performance")).await;
    drop(pake);
    let _ = std::fs::remove_dir_all(dir);
}

/// A gateway without the performance service in its process sends its samples to the
/// one `PAKE_PERFORMANCE_URL` names, through its API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_gateway_sends_its_samples_over_the_api() {
    let (gateway_dir, performance_dir) = (data_dir(), data_dir());
    let secret = ("PAKE_TOKEN_SECRET", SECRET.to_string());
    let performance =
        Pake::start(&["performance"], &[("PAKE_DATA_DIR", performance_dir.display().to_string()), secret.clone()])
            .await;
    let gateway = Pake::start(
        &["registry", "gateway"],
        &[
            ("PAKE_DATA_DIR", gateway_dir.display().to_string()),
            ("PAKE_PERFORMANCE_URL", performance.url("performance")),
            secret,
        ],
    )
    .await;
    proxy_and_read_back(&gateway.url("registry"), &gateway.url("gateway"), &performance.url("performance")).await;
    drop((gateway, performance));
    let _ = std::fs::remove_dir_all(gateway_dir);
    let _ = std::fs::remove_dir_all(performance_dir);
}

fn data_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pake-samples-{}", uuid::Uuid::new_v4()))
}

/// Routes `/v1/timed` to a real upstream, proxies 30 requests (10 answered 404), and waits
/// for the performance service to count them.
async fn proxy_and_read_back(registry: &str, gateway: &str, performance: &str) {
    let upstream = conformance::TestServer::start(
        axum::Router::new()
            .route("/timed/missing", axum::routing::get(|| async { (axum::http::StatusCode::NOT_FOUND, "no") }))
            .fallback(|| async { "ok" }),
    )
    .await
    .unwrap();
    let http = conformance::http_client_with_token(&token());
    let expect = |response: reqwest::Response, status: u16| async move {
        let got = response.status().as_u16();
        let body = response.text().await.unwrap();
        assert_eq!(got, status, "{body}");
        serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)
    };
    let service = expect(
        http.post(format!("{registry}/api/v1/services/register"))
            .json(&json!({"name": "timed", "version": "1.0.0"}))
            .send()
            .await
            .unwrap(),
        201,
    )
    .await;
    let id = service["id"].as_str().unwrap();
    let instance = json!({"address": "127.0.0.1", "port": upstream.addr.port(), "ttl_seconds": 600});
    expect(http.post(format!("{registry}/api/v1/services/{id}/instances")).json(&instance).send().await.unwrap(), 201)
        .await;
    let route =
        json!({"name": "timed", "path_prefix": "/timed", "methods": ["GET"], "api_version": "v1", "service": "timed"});
    expect(http.post(format!("{gateway}/v1/admin/routes")).json(&route).send().await.unwrap(), 201).await;

    let client = reqwest::Client::new();
    let (mut ok, mut missing) = (0, 0);
    for n in 0..30 {
        let path = if n % 3 == 0 { "/v1/timed/missing" } else { "/v1/timed/x" };
        let status = client.get(format!("{gateway}{path}")).send().await.unwrap().status().as_u16();
        match status {
            200 => ok += 1,
            404 => missing += 1,
            other => panic!("{path} answered {other}"),
        }
    }
    assert_eq!((ok, missing), (20, 10));

    // Delivered within a couple of seconds (the feed drains every second).
    let started = Instant::now();
    let stats = loop {
        let response = http.get(format!("{performance}/api/v1/services/timed/stats?window=5m")).send().await.unwrap();
        if response.status().as_u16() == 200 {
            let stats: Value = response.json().await.unwrap();
            if stats["count"] == 30 {
                break stats;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the samples did not arrive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stats["status_classes"]["class_4xx"], 10, "{stats}");
    assert_eq!(stats["status_classes"]["class_2xx"], 20, "{stats}");
    assert!(stats["latency_ms"]["p50"].as_f64().is_some_and(|p50| p50 > 0.0), "{stats}");
    let by_route =
        http.get(format!("{performance}/api/v1/services/timed/stats?window=5m&route=/timed")).send().await.unwrap();
    assert_eq!(by_route.json::<Value>().await.unwrap()["count"], 30, "samples carry the route's prefix");
}
