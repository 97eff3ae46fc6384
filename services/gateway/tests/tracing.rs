//! The gateway's spans, as they arrive over the wire at a real OTLP/HTTP receiver, against
//! real upstreams: a server span per request and a client span per try under it, the try's
//! span id as the parent the upstream receives, refusals and cache hits with their reason;
//! the W3C propagation table as the upstream sees it; and the same spans whichever of the
//! gateway's HTTP/1.1 paths (its own, hyper's) served the request.

mod support;

use axum::Router;
use axum::extract::Request;
use axum::routing::any;
use conformance::TestServer;
use conformance::support::{Backend, RedisPrefix};
use pake_gateway::GatewayOptions;
use pake_trace::testing::{OtlpReceiver, ReceivedSpan};
use pake_trace::{Telemetry, TraceConfig};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PARENT: &str = "00f067aa0ba902b7";

/// What the upstream received: the path, `traceparent` and `tracestate`.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// An upstream that records the trace headers of every request; under `/flaky` it answers
/// 503 and 200 in turn (a first try fails, its retry succeeds).
struct Recorder {
    server: TestServer,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let flaky = Arc::new(AtomicUsize::new(0));
        let kept = seen.clone();
        let router = Router::new().fallback(any(move |request: Request| {
            let (kept, flaky) = (kept.clone(), flaky.clone());
            async move {
                let header = |name: &str| request.headers().get(name).map(|v| v.to_str().unwrap().to_string());
                let path = request.uri().path().to_string();
                kept.lock().unwrap().push(Seen {
                    path: path.clone(),
                    traceparent: header("traceparent"),
                    tracestate: header("tracestate"),
                });
                let status =
                    if path.starts_with("/flaky") && flaky.fetch_add(1, Ordering::SeqCst) % 2 == 0 { 503 } else { 200 };
                axum::response::Response::builder().status(status).body(axum::body::Body::from("ok")).unwrap()
            }
        }));
        Recorder { server: TestServer::start(router).await.unwrap(), seen }
    }

    fn seen_for(&self, trace_id: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter().filter(|s| s.traceparent.as_deref().is_some_and(|t| t.contains(trace_id))).cloned().collect()
    }

    fn last(&self) -> Seen {
        self.seen.lock().unwrap().last().cloned().expect("the upstream saw a request")
    }
}

/// A traced gateway exporting to `receiver`, with routes to a [`Recorder`]: `/v1/ok`,
/// `/v1/flaky` (one retry on 5xx), `/v1/secure` (a token required), `/v1/limited` (one
/// request per hour), `/v1/cached` (the response cache).
async fn traced_platform(receiver: &OtlpReceiver) -> (Platform, Recorder, Telemetry) {
    traced_platform_on(receiver, None).await
}

/// [`traced_platform`], its rate limits and cache L2 in Redis under `redis` when given.
async fn traced_platform_on(receiver: &OtlpReceiver, redis: Option<&RedisPrefix>) -> (Platform, Recorder, Telemetry) {
    let telemetry = Telemetry::start(TraceConfig {
        otlp_endpoint: Some(receiver.endpoint.clone()),
        batch_delay: Duration::from_millis(10),
        ..TraceConfig::default()
    })
    .unwrap();
    let mut options = GatewayOptions { tracer: Some(telemetry.recorder("gateway")), ..options() };
    if let Some(redis) = redis {
        options.redis_url = Some(redis.url.clone());
        options.redis_prefix = redis.prefix.clone();
    }
    let platform = Platform::start_with(Backend::Sqlite, options).await;
    let recorder = Recorder::start().await;
    platform.service("recorder", "round_robin", &[(recorder.server.addr.port(), 100)], lenient_breaker()).await;
    let policy: Value = conformance::http_client_with_token(&token())
        .post(format!("{}/v1/admin/rate-limit-policies", platform.gateway_server.url()))
        .json(&json!({"name": "one-an-hour", "algorithm": "sliding_window", "rate": 1, "period_seconds": 3600,
                      "scope": "per_tenant_route"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (name, extra) in [
        ("ok", json!({})),
        ("flaky", json!({"retry": {"max_attempts": 1, "retry_on": ["5xx"], "budget_percent": 100}})),
        ("secure", json!({"require_token": true})),
        ("limited", json!({"rate_limit_policy_id": policy["id"]})),
        ("cached", json!({"cache": {"enabled": true, "ttl_seconds": 60, "methods": ["GET"]}})),
    ] {
        let mut spec = json!({"name": name, "path_prefix": format!("/{name}"), "methods": ["GET"],
                              "api_version": "v1", "service": "recorder", "strip_prefix": false});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        platform.route(spec).await;
    }
    (platform, recorder, telemetry)
}

/// Which of the gateway's HTTP/1.1 paths serves a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// The gateway's own HTTP/1.1 path.
    Own,
    /// hyper's, after a first request the own path hands over.
    General,
}

/// A raw HTTP/1.1 client connection (repeated header lines, exact bytes).
struct Client {
    stream: tokio::net::TcpStream,
}

impl Client {
    async fn open(platform: &Platform, path: Path) -> Client {
        let stream = tokio::net::TcpStream::connect(platform.gateway_server.addr).await.unwrap();
        let mut client = Client { stream };
        if path == Path::General {
            // `Connection` naming another header: the own path hands the connection over.
            let (status, _) = client.get("/v1/nowhere", &[("connection", "keep-alive, x-hop")]).await;
            assert_eq!(status, 404);
        }
        client
    }

    async fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut request = format!("GET {target} HTTP/1.1\r\nhost: gateway.test\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        self.stream.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the gateway closed the connection");
            buffer.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        let status: u16 = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
            })
            .expect("a content-length");
        while buffer.len() < head_end + length {
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the gateway closed the connection mid-body");
            buffer.extend_from_slice(&chunk[..n]);
        }
        (status, String::from_utf8_lossy(&buffer[head_end..head_end + length]).to_string())
    }
}

/// A trace id of its own for each request of a test.
fn trace_id(n: usize) -> String {
    format!("4bf92f3577b34da6a3ce929d{n:08x}")
}

/// The spans of the trace `trace_id`, once `count` have arrived.
async fn spans_of(receiver: &OtlpReceiver, telemetry: &Telemetry, trace_id: &str, count: usize) -> Vec<ReceivedSpan> {
    telemetry.flush().await;
    let all = receiver
        .wait_for(Duration::from_secs(10), |spans| spans.iter().filter(|s| s.trace_id == trace_id).count() >= count)
        .await;
    let mut mine: Vec<ReceivedSpan> = all.into_iter().filter(|s| s.trace_id == trace_id).collect();
    mine.sort_by_key(|s| (s.kind != "server", s.attribute("pake.attempt").map(str::to_string)));
    assert_eq!(mine.len(), count, "{mine:#?}");
    mine
}

/// A span as both paths must record it: ids replaced by their role in the trace.
fn shape(
    span: &ReceivedSpan,
    server_id: &str,
) -> (String, &'static str, &'static str, &'static str, BTreeMap<String, String>) {
    let parent = if span.parent_span_id == PARENT {
        "the client's span"
    } else if span.parent_span_id == server_id {
        "the server span"
    } else {
        "something else"
    };
    (span.name.clone(), span.kind, parent, span.status, span.attributes.clone())
}

/// Requests of the differential test: (name, target, status, spans recorded).
const CASES: [(&str, &str, u16, usize); 6] = [
    ("proxied", "/v1/ok/a?q=1", 200, 2),
    ("retried", "/v1/flaky/a", 200, 3),
    ("no token", "/v1/secure/a", 401, 1),
    ("rate limited", "/v1/limited/a", 429, 1),
    ("no route", "/v1/nowhere-else", 404, 1),
    // Last: a cached route hands the own path's connection over.
    ("cache hit", "/v1/cached/a", 200, 1),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_record_the_same_spans_and_the_upstream_receives_each_try_as_its_parent() {
    let receiver = OtlpReceiver::start().await;
    let (platform, recorder, telemetry) = traced_platform(&receiver).await;
    // The rate limit's one request, and the cache's first (a miss), before the cases.
    assert_eq!(platform.get("/v1/limited/warm").await.status(), 200);
    assert_eq!(platform.get("/v1/cached/a").await.status(), 200);

    let mut shapes: BTreeMap<&str, Vec<Vec<_>>> = BTreeMap::new();
    for (round, path) in [Path::Own, Path::General].into_iter().enumerate() {
        let mut client = Client::open(&platform, path).await;
        for (case, &(name, target, status, count)) in CASES.iter().enumerate() {
            let trace = trace_id(round * 100 + case);
            let traceparent = format!("00-{trace}-{PARENT}-01");
            let headers = [("traceparent", traceparent.as_str()), ("tracestate", "vendor=opaque")];
            let (answered, body) = client.get(target, &headers).await;
            assert_eq!(answered, status, "{path:?} {name}");
            let spans = spans_of(&receiver, &telemetry, &trace, count).await;

            // The server span continues the client's trace; every try is its child.
            let server = &spans[0];
            assert_eq!((server.kind, server.service.as_str()), ("server", "gateway"), "{path:?} {name}");
            assert_eq!(server.parent_span_id, PARENT, "{path:?} {name}: the client's span is the parent");
            assert_eq!(server.attribute("http.response.status_code"), Some(status.to_string().as_str()));
            assert_eq!(server.attribute("http.request.method"), Some("GET"));
            assert_eq!(server.attribute("url.path"), Some(target.split('?').next().unwrap()));
            assert_eq!(server.attribute("server.address"), Some("gateway.test"));
            assert_eq!(server.attribute("client.address"), Some("127.0.0.1"));
            let tries = &spans[1..];
            for (k, attempt) in tries.iter().enumerate() {
                assert_eq!(attempt.kind, "client", "{path:?} {name}");
                assert_eq!(attempt.parent_span_id, server.span_id, "{path:?} {name}: tries are siblings");
                assert_eq!(attempt.attribute("pake.attempt"), Some((k + 1).to_string().as_str()));
                assert_eq!(
                    attempt.attribute("pake.instance.address"),
                    Some(format!("127.0.0.1:{}", recorder.server.addr.port()).as_str())
                );
            }
            // Each try reached the upstream with its own span as the parent.
            let seen = recorder.seen_for(&trace);
            let expected: Vec<String> = tries.iter().map(|t| format!("00-{trace}-{}-01", t.span_id)).collect();
            assert_eq!(
                seen.iter().map(|s| s.traceparent.clone().unwrap()).collect::<Vec<_>>(),
                expected,
                "{path:?} {name}"
            );
            assert!(seen.iter().all(|s| s.tracestate.as_deref() == Some("vendor=opaque")), "{seen:?}");

            match name {
                "proxied" => {
                    assert_eq!(server.name, "GET /v1/ok");
                    assert_eq!(server.attribute("http.route"), Some("/v1/ok"));
                    assert_eq!(tries[0].attribute("pake.outcome"), Some("ok"));
                }
                "retried" => {
                    assert_eq!(tries[0].attribute("pake.outcome"), Some("5xx"));
                    assert_eq!(
                        (tries[0].status, tries[0].attribute("http.response.status_code")),
                        ("error", Some("503"))
                    );
                    assert_eq!((tries[1].attribute("pake.outcome"), tries[1].status), (Some("ok"), "unset"));
                    assert_eq!(server.status, "unset", "the retry answered");
                }
                "no token" => {
                    assert_eq!(server.attribute("pake.refusal"), Some("auth"));
                    assert_eq!(server.attribute("error.type"), Some("unauthenticated"));
                    let error: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(error["trace_id"], trace.as_str(), "{path:?}: the error body names the trace");
                }
                "rate limited" => {
                    assert_eq!(server.attribute("pake.refusal"), Some("rate_limit"));
                    assert_eq!(server.attribute("error.type"), Some("rate_limited"));
                    let error: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(error["trace_id"], trace.as_str(), "{path:?}: the error body names the trace");
                }
                "no route" => {
                    assert_eq!(server.name, "GET");
                    assert_eq!(server.attribute("pake.refusal"), Some("route"));
                    assert_eq!(server.attribute("error.type"), Some("no_route"));
                    let error: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(error["trace_id"], trace.as_str(), "{path:?}: the error body names the trace");
                }
                "cache hit" => assert_eq!(server.attribute("pake.cache"), Some("HIT")),
                _ => unreachable!(),
            }
            let shapes = shapes.entry(name).or_default();
            shapes.push(spans.iter().map(|span| shape(span, &server.span_id)).collect());
        }
    }
    for (name, recorded) in shapes {
        assert_eq!(recorded.len(), 2, "{name}");
        assert_eq!(recorded[0], recorded[1], "{name}: the own path and hyper's record alike");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_upstream_marks_the_try_and_the_request_as_errors() {
    let receiver = OtlpReceiver::start().await;
    let (platform, _recorder, telemetry) = traced_platform(&receiver).await;
    // An instance nobody listens on: both tries fail to connect, and the request is a 502.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    platform.service("gone", "round_robin", &[(closed, 100)], lenient_breaker()).await;
    platform
        .route(
            json!({"name": "gone", "path_prefix": "/gone", "methods": ["GET"], "api_version": "v1", "service": "gone",
                   "retry": {"max_attempts": 1, "retry_on": ["connect_failure"], "budget_percent": 100}}),
        )
        .await;
    for (round, path) in [Path::Own, Path::General].into_iter().enumerate() {
        let mut client = Client::open(&platform, path).await;
        let trace = trace_id(900 + round);
        let (status, _) = client.get("/v1/gone/x", &[("traceparent", &format!("00-{trace}-{PARENT}-01"))]).await;
        assert_eq!(status, 502, "{path:?}");
        let spans = spans_of(&receiver, &telemetry, &trace, 3).await;
        assert_eq!((spans[0].status, spans[0].attribute("http.response.status_code")), ("error", Some("502")));
        assert_eq!(spans[0].attribute("pake.refusal"), Some("upstream"));
        assert_eq!(spans[0].attribute("error.type"), Some("bad_gateway"));
        for (k, attempt) in spans[1..].iter().enumerate() {
            assert_eq!(attempt.parent_span_id, spans[0].span_id, "{path:?}: siblings");
            assert_eq!(attempt.attribute("pake.attempt"), Some((k + 1).to_string().as_str()));
            assert_eq!((attempt.attribute("pake.outcome"), attempt.status), (Some("connect"), "error"), "{path:?}");
        }
    }
}

/// With Redis, a rate limit's decision and the cache's L2 lookup are client spans under the
/// request's server span, on both paths; an L1 hit asks no Redis and has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_redis_are_child_spans_of_the_request() {
    let receiver = OtlpReceiver::start().await;
    let redis = RedisPrefix::new("gateway-tracing");
    let (platform, _recorder, telemetry) = traced_platform_on(&receiver, Some(&redis)).await;
    let children = |spans: &[ReceivedSpan], name: &str| -> usize {
        let server = &spans[0];
        let named: Vec<_> = spans.iter().filter(|span| span.name == name).collect();
        for span in &named {
            assert_eq!(span.parent_span_id, server.span_id, "{name}: a child of the request's span");
            assert_eq!((span.kind, span.attribute("db.system")), ("client", Some("redis")), "{name}");
        }
        named.len()
    };
    for (round, path) in [Path::Own, Path::General].into_iter().enumerate() {
        let mut client = Client::open(&platform, path).await;
        let trace = trace_id(700 + round);
        // One an hour: the first round is let through, the second refused; both asked Redis.
        let (status, _) = client.get("/v1/limited/a", &[("traceparent", &format!("00-{trace}-{PARENT}-01"))]).await;
        let (expected, count) = if round == 0 { (200, 3) } else { (429, 2) };
        assert_eq!(status, expected, "{path:?}");
        let spans = spans_of(&receiver, &telemetry, &trace, count).await;
        assert_eq!(children(&spans, "ratelimit.check"), 1, "{path:?}: {spans:#?}");
    }
    // The first lookup misses L1 and asks L2; the second is an L1 hit.
    for (round, (cache, count, redis_spans)) in [("MISS", 3, 1), ("HIT", 1, 0)].into_iter().enumerate() {
        let mut client = Client::open(&platform, Path::General).await;
        let trace = trace_id(710 + round);
        let (status, _) = client.get("/v1/cached/r", &[("traceparent", &format!("00-{trace}-{PARENT}-01"))]).await;
        assert_eq!(status, 200);
        let spans = spans_of(&receiver, &telemetry, &trace, count).await;
        assert_eq!(spans[0].attribute("pake.cache"), Some(cache), "{spans:#?}");
        assert_eq!(children(&spans, "cache.get"), redis_spans, "{cache}: {spans:#?}");
    }
}

/// W3C propagation through the traced gateway, on both paths: what the upstream receives
/// for each incoming `traceparent` (and `tracestate`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_propagation_table_as_the_upstream_receives_it() {
    let receiver = OtlpReceiver::start().await;
    let (platform, recorder, telemetry) = traced_platform(&receiver).await;
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    // (case, traceparent lines, whether the trace continues, with which flags)
    let cases: &[(&str, &[&str], Option<&str>)] = &[
        ("valid", &["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"], Some("01")),
        ("valid, not sampled", &["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"], Some("00")),
        ("unknown version", &["cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"], Some("01")),
        ("missing", &[], None),
        ("malformed", &["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"], None),
        ("all-zero trace id", &["00-00000000000000000000000000000000-00f067aa0ba902b7-01"], None),
        ("all-zero parent id", &["00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"], None),
        ("version ff", &["ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"], None),
        ("uppercase hex", &["00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"], None),
        (
            "two lines",
            &[
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ],
            None,
        ),
    ];
    for path in [Path::Own, Path::General] {
        let mut client = Client::open(&platform, path).await;
        for &(case, lines, continues) in cases {
            let mut headers: Vec<(&str, &str)> = lines.iter().map(|line| ("traceparent", *line)).collect();
            headers.push(("tracestate", "vendor=opaque"));
            let (status, _) = client.get("/v1/ok/propagation", &headers).await;
            assert_eq!(status, 200, "{path:?} {case}");
            let seen = recorder.last();
            assert_eq!(seen.path, "/ok/propagation");
            let sent = seen.traceparent.expect("a traceparent always goes upstream");
            let fields: Vec<&str> = sent.split('-').collect();
            assert_eq!(fields.iter().map(|f| f.len()).collect::<Vec<_>>(), [2, 32, 16, 2], "{sent}");
            assert_eq!(fields[0], "00");
            assert!(sent.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{sent}");
            assert_ne!(fields[2], PARENT, "{path:?} {case}: the gateway's try is the new parent");
            match continues {
                Some(flags) => {
                    assert_eq!((fields[1], fields[3]), (TRACE, flags), "{path:?} {case}");
                    assert_eq!(seen.tracestate.as_deref(), Some("vendor=opaque"), "{path:?} {case}");
                }
                None => {
                    assert_ne!(fields[1], TRACE, "{path:?} {case}: a new trace");
                    assert_eq!(fields[3], "01", "{path:?} {case}: new traces are sampled at ratio 1");
                    assert_eq!(seen.tracestate, None, "{path:?} {case}: tracestate goes with its trace");
                }
            }
            if fields[3] == "01" {
                // The parent the upstream received is the try's span, under the server span
                // (which ends after it, and may come in a later export).
                let spans = receiver
                    .wait_for(Duration::from_secs(10), |spans| {
                        let attempt = spans.iter().find(|s| s.span_id == fields[2]);
                        attempt.is_some_and(|attempt| spans.iter().any(|s| s.span_id == attempt.parent_span_id))
                    })
                    .await;
                let attempt = spans.iter().find(|s| s.span_id == fields[2]).unwrap();
                let server = spans.iter().find(|s| s.span_id == attempt.parent_span_id).expect("the server span");
                assert_eq!((attempt.kind, server.kind, server.trace_id.as_str()), ("client", "server", fields[1]));
                let incoming_parent = if continues.is_some() { PARENT } else { "" };
                assert_eq!(server.parent_span_id, incoming_parent, "{path:?} {case}");
            } else {
                // An unsampled trace that ended well and fast is not exported.
                telemetry.flush().await;
                assert!(receiver.spans().iter().all(|s| s.span_id != fields[2]), "{path:?} {case}");
            }
        }
    }
}

/// The gateway's own operations are server spans named by their operationId, continuing
/// the caller's trace, and their error bodies name the trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_operations_are_server_spans() {
    let receiver = OtlpReceiver::start().await;
    let (platform, _recorder, telemetry) = traced_platform(&receiver).await;
    let trace = trace_id(900);
    let listed = conformance::http_client_with_token(&token())
        .get(format!("{}/v1/admin/routes", platform.gateway_server.url()))
        .header("traceparent", format!("00-{trace}-{PARENT}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let refused = reqwest::Client::new()
        .get(format!("{}/v1/admin/routes", platform.gateway_server.url()))
        .header("traceparent", format!("00-{}-{PARENT}-01", trace_id(901)))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["trace_id"], trace_id(901), "{body}");

    // The operation, and under it the store call that read the routes.
    let spans = spans_of(&receiver, &telemetry, &trace, 2).await;
    assert_eq!((spans[0].name.as_str(), spans[0].kind, spans[0].service.as_str()), ("listRoutes", "server", "gateway"));
    assert_eq!(spans[0].parent_span_id, PARENT);
    assert_eq!(spans[0].attribute("http.route"), Some("/v1/admin/routes"));
    assert!(spans[1].name.starts_with("store."), "{spans:#?}");
    assert_eq!(spans[1].parent_span_id, spans[0].span_id);
    let refusal = spans_of(&receiver, &telemetry, &trace_id(901), 1).await;
    assert_eq!(refusal[0].attribute("http.response.status_code"), Some("401"));
}
