//! The gateway's request samples name the registry instance whose answer was relayed, on
//! both HTTP/1.1 paths (its own, hyper's), and none when the gateway answered itself: a
//! refusal, a cache hit, a try that got no answer.

mod support;

use conformance::support::Backend;
use pake_gateway::GatewayOptions;
use pake_gateway::samples::{RequestSample, SampleSink};
use serde_json::json;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use uuid::Uuid;

/// Keeps every sample delivered.
#[derive(Debug, Default)]
struct Kept(Mutex<Vec<RequestSample>>);

impl SampleSink for Kept {
    fn deliver(&self, samples: Vec<RequestSample>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        self.0.lock().unwrap().extend(samples);
        Box::pin(async { Ok(()) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_names_the_instance_that_answered_and_none_when_the_gateway_did() {
    let kept = Arc::new(Kept::default());
    let options = GatewayOptions { samples: Some(kept.clone()), ..options() };
    let platform = Platform::start_with(Backend::Sqlite, options).await;
    let upstream = Upstream::start("answering", Behaviour::Ok).await;
    let (_, answering) =
        platform.service("answering", "round_robin", &[(upstream.port(), 100)], lenient_breaker()).await;
    // A port nobody listens on: its one try fails to connect.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    platform.service("closed", "round_robin", &[(closed, 100)], lenient_breaker()).await;
    let cached = json!({"cache": {"enabled": true, "ttl_seconds": 60, "methods": ["GET"]}});
    for (name, service, extra) in [
        ("ok", "answering", json!({})),
        ("secure", "answering", json!({"require_token": true})),
        ("cached", "answering", cached.clone()),
        ("securecached", "answering", json!({"require_token": true, "cache": cached["cache"]})),
        ("closed", "closed", json!({})),
    ] {
        let mut spec = json!({"name": name, "path_prefix": format!("/{name}"), "methods": ["GET"],
                              "api_version": "v1", "service": service});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        platform.route(spec).await;
    }

    // A new connection per request: each starts on the gateway's own path, and a cached
    // route's is handed over to hyper's.
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let answering = Some(answering[0]);
    let cases: [(&str, &str, u16, Option<Uuid>); 6] = [
        ("/v1/ok/a", "/ok", 200, answering),
        ("/v1/secure/a", "/secure", 401, None),
        ("/v1/cached/a", "/cached", 200, answering),
        ("/v1/cached/a", "/cached", 200, None),
        ("/v1/securecached/a", "/securecached", 401, None),
        ("/v1/closed/a", "/closed", 502, None),
    ];
    for (path, _, status, _) in cases {
        let response = client.get(format!("{}{path}", platform.gateway_server.url())).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{path}");
    }
    assert_eq!(upstream.hits(), 2, "the cache answered the second request to /v1/cached");

    // The feed drains once a second.
    let started = Instant::now();
    let samples = loop {
        let samples = kept.0.lock().unwrap().clone();
        if samples.len() >= cases.len() {
            break samples;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "samples did not arrive: {samples:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Threads record into shards of their own: the batch is in order per thread, and the
    // requests (one after the other) in the order of their end.
    let mut samples = samples;
    samples.sort_by_key(|sample| sample.at);
    let seen: Vec<_> =
        samples.iter().map(|sample| (sample.labels.route.as_str(), sample.status, sample.instance)).collect();
    let expected: Vec<_> = cases.iter().map(|&(_, route, status, instance)| (route, status, instance)).collect();
    assert_eq!(seen, expected);
}
