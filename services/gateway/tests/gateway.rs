//! The gateway's data plane against real upstream servers on loopback ports (healthy,
//! slow, failing, dying mid-response, refusing, recovering), with the registry and routes
//! set up through the generated clients.

mod support;

use conformance::support::{Backend, TestDatabase, eventually};
use conformance::{TestServer, http_client_with_token};
use pake_gateway::Gateway;
use pake_registry::{Registry, Store};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::*;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_route_to_their_services_and_headers_are_forwarded() {
    let platform = Platform::start(Backend::Sqlite).await;
    let (one, two) = (Upstream::start("one", Behaviour::Ok).await, Upstream::start("two", Behaviour::Ok).await);
    platform.service("items-v1", "round_robin", &[(one.port(), 100)], lenient_breaker()).await;
    platform.service("items-v2", "round_robin", &[(two.port(), 100)], lenient_breaker()).await;
    platform
        .route(json!({"name": "items-one", "path_prefix": "/items", "methods": ["GET"], "api_version": "v1", "service": "items-v1", "strip_prefix": true}))
        .await;
    platform
        .route(json!({"name": "items-two", "path_prefix": "/items", "methods": ["GET"], "api_version": "v2", "service": "items-v2"}))
        .await;

    let response = platform
        .http
        .get(format!("{}/v1/items/42?full=true", platform.gateway_server.url()))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("connection", "x-secret-hop")
        .header("x-secret-hop", "must not pass")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["name"], "one");
    assert_eq!(echo["path"], "/42?full=true", "strip_prefix removes /items");
    let headers = &echo["headers"];
    // The trace continues, with the gateway as the parent.
    let trace = headers["traceparent"].as_str().unwrap();
    assert!(trace.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && trace.ends_with("-01"), "{trace}");
    assert!(!trace.contains("00f067aa0ba902b7"), "{trace}");
    assert!(headers["x-request-id"].as_str().is_some_and(|id| id.len() == 36), "{headers}");
    assert!(headers.get("x-secret-hop").is_none(), "headers named in Connection are hop-by-hop");
    assert!(headers["x-forwarded-host"].as_str().is_some());

    let echo: Value = platform.get("/v2/items/42").await.json().await.unwrap();
    assert_eq!((echo["name"].as_str(), echo["path"].as_str()), (Some("two"), Some("/items/42")));
    let echo: Value = platform.get("/v2/items").await.json().await.unwrap();
    assert!(echo["headers"]["traceparent"].as_str().is_some_and(|t| t.starts_with("00-") && t.len() == 55));

    let missing = platform.get("/v3/items").await;
    assert_eq!(missing.status().as_u16(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["code"], "no_route");
    let wrong = platform.http.post(format!("{}/v1/items", platform.gateway_server.url())).send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 405);
    assert_eq!(wrong.headers()["allow"], "GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancing_spreads_load_as_the_policy_says() {
    let platform = Platform::start(Backend::Sqlite).await;
    let a = Upstream::start("a", Behaviour::Ok).await;
    let b = Upstream::start("b", Behaviour::Ok).await;
    let c = Upstream::start("c", Behaviour::Ok).await;
    platform
        .service("rr", "round_robin", &[(a.port(), 100), (b.port(), 100), (c.port(), 100)], lenient_breaker())
        .await;
    platform
        .route(json!({"name": "rr", "path_prefix": "/rr", "methods": ["GET"], "api_version": "v1", "service": "rr"}))
        .await;
    for _ in 0..300 {
        assert_eq!(platform.get("/v1/rr").await.status().as_u16(), 200);
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (100, 100, 100), "round robin is exact");

    let light = Upstream::start("light", Behaviour::Ok).await;
    let heavy = Upstream::start("heavy", Behaviour::Ok).await;
    platform.service("weighted", "weighted", &[(light.port(), 1), (heavy.port(), 3)], lenient_breaker()).await;
    platform.route(json!({"name": "weighted", "path_prefix": "/w", "methods": ["GET"], "api_version": "v1", "service": "weighted"})).await;
    for _ in 0..800 {
        platform.get("/v1/w").await;
    }
    let share = heavy.hits() as f64 / 800.0;
    assert!((0.68..0.82).contains(&share), "weights 1:3 give the heavy instance {share:.2} of requests");

    // Least request: a slow instance accumulates requests in flight, so concurrent
    // traffic goes mostly to the fast one.
    let slow = Upstream::start("slow", Behaviour::Slow(Duration::from_millis(200))).await;
    let fast = Upstream::start("fast", Behaviour::Ok).await;
    platform.service("least", "least_request", &[(slow.port(), 100), (fast.port(), 100)], lenient_breaker()).await;
    platform
        .route(
            json!({"name": "least", "path_prefix": "/l", "methods": ["GET"], "api_version": "v1", "service": "least"}),
        )
        .await;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (http, url) = (platform.http.clone(), format!("{}/v1/l", platform.gateway_server.url()));
        requests.spawn(async move { http.get(url).send().await.unwrap().status().as_u16() });
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert!(
        fast.hits() > 3 * slow.hits(),
        "least request favours the fast instance: fast {} slow {}",
        fast.hits(),
        slow.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_happen_only_for_idempotent_bodyless_requests_on_named_conditions() {
    let platform = Platform::start(Backend::Sqlite).await;
    let good = Upstream::start("good", Behaviour::Ok).await;
    // A port nothing listens on: connections are refused.
    let refused_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    platform.service("flaky", "round_robin", &[(refused_port, 100), (good.port(), 100)], lenient_breaker()).await;
    platform
        .route(json!({"name": "flaky", "path_prefix": "/flaky", "methods": ["GET", "POST"], "api_version": "v1", "service": "flaky",
                      "retry": {"max_attempts": 2, "retry_on": ["connect_failure"], "budget_percent": 100}}))
        .await;
    for _ in 0..20 {
        assert_eq!(platform.get("/v1/flaky").await.status().as_u16(), 200, "a GET is retried on the good instance");
    }
    let mut refused = 0;
    for _ in 0..20 {
        let response = platform
            .http
            .post(format!("{}/v1/flaky", platform.gateway_server.url()))
            .body("payload")
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => {}
            502 => {
                refused += 1;
                assert_eq!(response.json::<Value>().await.unwrap()["code"], "bad_gateway");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused >= 5, "a POST is never retried: {refused} of 20 met the refusing instance");

    // 5xx answers are retried only where the route names them.
    let failing = Upstream::start("failing", Behaviour::Fail).await;
    let fine = Upstream::start("fine", Behaviour::Ok).await;
    platform.service("sometimes", "round_robin", &[(failing.port(), 100), (fine.port(), 100)], lenient_breaker()).await;
    platform
        .route(json!({"name": "retry-5xx", "path_prefix": "/r5", "methods": ["GET"], "api_version": "v1", "service": "sometimes",
                      "retry": {"max_attempts": 1, "retry_on": ["5xx"], "budget_percent": 100}}))
        .await;
    platform
        .route(json!({"name": "no-retry", "path_prefix": "/n5", "methods": ["GET"], "api_version": "v1", "service": "sometimes",
                      "retry": {"max_attempts": 1, "retry_on": ["connect_failure"], "budget_percent": 100}}))
        .await;
    for _ in 0..10 {
        assert_eq!(platform.get("/v1/r5").await.status().as_u16(), 200);
    }
    let statuses: Vec<u16> = futures_join(&platform, "/v1/n5", 10).await;
    assert!(statuses.contains(&503), "without 5xx in retry_on the upstream's 503 comes through: {statuses:?}");
}

async fn futures_join(platform: &Platform, path: &str, count: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..count {
        statuses.push(platform.get(path).await.status().as_u16());
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_short_circuits_half_opens_and_closes() {
    let platform = Platform::start(Backend::Sqlite).await;
    let upstream = Upstream::start("shaky", Behaviour::Fail).await;
    let breaker = json!({"failure_threshold": 3, "failure_rate_threshold": 1.0, "minimum_requests": 1000,
                         "rate_window_seconds": 60, "open_seconds": 1, "half_open_max_requests": 1});
    let (_, instances) = platform.service("shaky", "round_robin", &[(upstream.port(), 100)], breaker).await;
    platform.route(json!({"name": "shaky", "path_prefix": "/shaky", "methods": ["GET"], "api_version": "v1", "service": "shaky"})).await;

    for _ in 0..3 {
        assert_eq!(platform.get("/v1/shaky").await.status().as_u16(), 503, "the upstream's own 503");
    }
    assert_eq!(upstream.hits(), 3);
    let started = Instant::now();
    let short = platform.get("/v1/shaky").await;
    assert!(started.elapsed() < Duration::from_millis(200), "an open breaker answers at once");
    assert_eq!(short.status().as_u16(), 503);
    assert!(short.headers().contains_key("retry-after"));
    assert_eq!(short.json::<Value>().await.unwrap()["code"], "circuit_open");
    assert_eq!(upstream.hits(), 3, "the open breaker sent nothing upstream");

    let id = format!("shaky.{}", instances[0]);
    let state = platform.admin.get_circuit_breaker().upstream_id(id.clone()).send().await.unwrap().into_inner();
    assert_eq!(state.state, pake_gateway_client::types::CircuitState::Open);
    assert_eq!(state.consecutive_failures, 3);

    // The upstream recovers; after open_seconds one probe goes through and closes it.
    upstream.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(platform.get("/v1/shaky").await.status().as_u16(), 200);
    let state = platform.admin.get_circuit_breaker().upstream_id(id.clone()).send().await.unwrap().into_inner();
    assert_eq!(state.state, pake_gateway_client::types::CircuitState::Closed);

    // It fails again and opens; an operator resets it by hand.
    upstream.healthy.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        platform.get("/v1/shaky").await;
    }
    let listed = platform.admin.list_circuit_breakers().service("shaky").send().await.unwrap().into_inner();
    assert_eq!(listed.items[0].state, pake_gateway_client::types::CircuitState::Open);
    let metrics = platform.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!("pake_gateway_circuit_breaker_state{{upstream=\"{id}\",state=\"open\"}} 1")),
        "{metrics}"
    );
    assert!(metrics.contains("pake_gateway_proxy_requests_total{route=\"shaky\",status=\"5xx\"}"), "{metrics}");
    let reset = platform.admin.reset_circuit_breaker().upstream_id(id).send().await.unwrap().into_inner();
    assert_eq!(reset.state, pake_gateway_client::types::CircuitState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_dying_upstreams_never_hang_the_gateway() {
    let platform = Platform::start(Backend::Sqlite).await;
    let slow = Upstream::start("slow", Behaviour::Slow(Duration::from_secs(5))).await;
    let dying = Upstream::start("dying", Behaviour::DieMidResponse).await;
    platform.service("slow", "round_robin", &[(slow.port(), 100)], lenient_breaker()).await;
    platform.service("dying", "round_robin", &[(dying.port(), 100)], lenient_breaker()).await;
    platform
        .route(json!({"name": "slow", "path_prefix": "/slow", "methods": ["GET"], "api_version": "v1", "service": "slow", "timeout_ms": 300,
                      "retry": {"max_attempts": 0}}))
        .await;
    platform.route(json!({"name": "dying", "path_prefix": "/dying", "methods": ["GET"], "api_version": "v1", "service": "dying"})).await;

    let started = Instant::now();
    let response = platform.get("/v1/slow").await;
    assert_eq!(response.status().as_u16(), 504);
    assert!(started.elapsed() < Duration::from_secs(2), "timed out after {:?}", started.elapsed());
    assert_eq!(response.json::<Value>().await.unwrap()["code"], "gateway_timeout");

    let started = Instant::now();
    let response = platform.get("/v1/dying").await;
    assert_eq!(response.status().as_u16(), 200, "the headers had already gone out");
    let body = tokio::time::timeout(Duration::from_secs(5), response.bytes()).await.expect("no hang");
    assert!(body.is_err(), "a response cut short is not passed off as complete");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The gateway keeps serving.
    let fine = Upstream::start("fine", Behaviour::Ok).await;
    platform.service("fine", "round_robin", &[(fine.port(), 100)], lenient_breaker()).await;
    platform
        .route(
            json!({"name": "fine", "path_prefix": "/fine", "methods": ["GET"], "api_version": "v1", "service": "fine"}),
        )
        .await;
    assert_eq!(platform.get("/v1/fine").await.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistered_and_expired_instances_get_no_traffic_within_a_second() {
    let platform = Platform::start(Backend::Sqlite).await;
    let (a, b) = (Upstream::start("a", Behaviour::Ok).await, Upstream::start("b", Behaviour::Ok).await);
    let (service, ids) =
        platform.service("moving", "round_robin", &[(a.port(), 100), (b.port(), 100)], lenient_breaker()).await;
    platform.route(json!({"name": "moving", "path_prefix": "/m", "methods": ["GET"], "api_version": "v1", "service": "moving"})).await;
    for _ in 0..10 {
        platform.get("/v1/m").await;
    }
    assert!(a.hits() > 0 && b.hits() > 0);
    platform.mesh.deregister_instance().service_id(service).instance_id(ids[0]).send().await.unwrap();
    let before = a.hits();
    eventually(Duration::from_secs(1), || async {
        platform.get("/v1/m").await;
        a.hits() == before
    })
    .await;
    for _ in 0..20 {
        assert_eq!(platform.get("/v1/m").await.status().as_u16(), 200);
    }
    assert_eq!(a.hits(), before, "a deregistered instance gets nothing");

    // An instance whose TTL lapses stops getting traffic with no one telling the gateway.
    let c = Upstream::start("c", Behaviour::Ok).await;
    let instance: pake_mesh_client::types::InstanceRegistration =
        serde_json::from_value(json!({"address": "127.0.0.1", "port": c.port(), "ttl_seconds": 1})).unwrap();
    platform.mesh.register_instance().service_id(service).body(instance).send().await.unwrap();
    platform.get("/v1/m").await;
    platform.get("/v1/m").await;
    assert!(c.hits() > 0);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = c.hits();
    for _ in 0..20 {
        assert_eq!(platform.get("/v1/m").await.status().as_u16(), 200);
    }
    assert_eq!(c.hits(), before, "an expired instance gets nothing");

    platform.mesh.deregister_instance().service_id(service).instance_id(ids[1]).send().await.unwrap();
    let none = platform.get("/v1/m").await;
    assert_eq!(none.status().as_u16(), 503);
    assert!(none.headers().contains_key("retry-after"));
    assert_eq!(none.json::<Value>().await.unwrap()["code"], "no_healthy_upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_validates_routes() {
    let platform = Platform::start(Backend::Sqlite).await;
    let spec = |name: &str, prefix: &str| json!({"name": name, "path_prefix": prefix, "methods": ["GET"], "api_version": "v1", "service": "svc"});
    let id = platform.route(spec("one", "/one")).await;
    let url = format!("{}/v1/admin/routes", platform.gateway_server.url());
    let http = http_client_with_token(&token());
    assert_eq!(http.post(&url).json(&spec("one", "/other")).send().await.unwrap().status().as_u16(), 409);
    let reserved = http.post(&url).json(&spec("sneaky", "/admin/x")).send().await.unwrap();
    assert_eq!(reserved.status().as_u16(), 422);
    let stale =
        http.put(format!("{url}/{id}")).header("if-match", "\"7\"").json(&spec("one", "/one")).send().await.unwrap();
    assert_eq!(stale.status().as_u16(), 412);
    let updated =
        http.put(format!("{url}/{id}")).header("if-match", "\"1\"").json(&spec("one", "/uno")).send().await.unwrap();
    assert_eq!(updated.status().as_u16(), 200);
    assert_eq!(updated.headers()["etag"], "\"2\"");
    let anonymous = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(http.delete(format!("{url}/{id}")).send().await.unwrap().status().as_u16(), 204);
    assert_eq!(http.get(format!("{url}/{id}")).send().await.unwrap().status().as_u16(), 404);
}

/// A route created without `retry` or `merge_slashes` gets what the contract says absent
/// means, and behaves so: two retries of connect failures on another instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_retry_takes_the_contract_s_defaults() {
    let platform = Platform::start(Backend::Sqlite).await;
    let live = Upstream::start("live", Behaviour::Ok).await;
    // A port with nothing listening: every connection to it is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // The dead instance's breaker opens after two failures, within the retry budget's floor.
    let breaker = json!({"failure_threshold": 2, "failure_rate_threshold": 1.0, "minimum_requests": 1000,
                         "rate_window_seconds": 60, "open_seconds": 60, "half_open_max_requests": 1});
    platform.service("pair", "round_robin", &[(dead, 100), (live.port(), 100)], breaker).await;
    let id = platform
        .route(
            json!({"name": "pair", "path_prefix": "/pair", "methods": ["GET"], "api_version": "v1", "service": "pair"}),
        )
        .await;
    let route = platform.admin.get_route().route_id(id).send().await.unwrap().into_inner();
    let route = serde_json::to_value(&route).unwrap();
    assert_eq!(
        route["retry"],
        json!({"max_attempts": 2, "retry_on": ["connect_failure", "reset"], "budget_percent": 20}),
        "the contract: Absent: `{{max_attempts: 2}}`"
    );
    assert_eq!(route["merge_slashes"], true);
    for _ in 0..6 {
        let response = platform.get("/v1/pair/x").await;
        let status = response.status().as_u16();
        assert_eq!(status, 200, "the dead instance is retried past: {}", response.text().await.unwrap());
    }
}

/// Two gateway replicas on one PostgreSQL database: a route created through one routes on
/// the other within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_changes_reach_every_replica_within_a_second() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let verifier = pake_tokens::TokenVerifier::hs256(SECRET).unwrap();
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = Store::open(&db.url).await.unwrap();
        let registry = Arc::new(Registry::start(store.clone()).await.unwrap());
        let gateway = Gateway::start(store, registry.snapshot_cell().clone(), options()).await.unwrap();
        let server = TestServer::serve(|listener, stop| gateway.front().serve(listener, stop)).await.unwrap();
        let registry_server = TestServer::start(pake_registry::router(
            registry.clone(),
            verifier.clone(),
            pake_observe::Metrics::new("registry"),
        ))
        .await
        .unwrap();
        replicas.push((gateway, server, registry_server, registry));
    }
    let upstream = Upstream::start("shared", Behaviour::Ok).await;
    let authed = http_client_with_token(&token());
    let mesh = pake_mesh_client::Client::new_with_client(&replicas[0].2.url(), authed.clone());
    let registration: pake_mesh_client::types::ServiceRegistration =
        serde_json::from_value(json!({"name": "shared", "version": "1.0.0"})).unwrap();
    let service = mesh.register_service().body(registration).send().await.unwrap().into_inner();
    let instance: pake_mesh_client::types::InstanceRegistration =
        serde_json::from_value(json!({"address": "127.0.0.1", "port": upstream.port()})).unwrap();
    mesh.register_instance().service_id(service.id).body(instance).send().await.unwrap();
    let admin = pake_gateway_client::Client::new_with_client(&replicas[0].1.url(), authed);
    let spec: pake_gateway_client::types::RouteSpec = serde_json::from_value(json!({"name": "shared", "path_prefix": "/shared", "methods": ["GET"], "api_version": "v1", "service": "shared"}))
        .unwrap();
    admin.create_route().body(spec).send().await.unwrap();
    let other = format!("{}/v1/shared", replicas[1].1.url());
    let took =
        eventually(Duration::from_secs(1), || async { reqwest::get(&other).await.unwrap().status().as_u16() == 200 })
            .await;
    eprintln!("the other replica routed after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outliers_are_ejected_within_the_allowed_share() {
    let platform = Platform::start(Backend::Sqlite).await;
    let bad = Upstream::start("bad", Behaviour::Fail).await;
    let good = Upstream::start("good", Behaviour::Ok).await;
    let outliers =
        json!({"consecutive_5xx": 2, "interval_seconds": 10, "base_ejection_seconds": 30, "max_ejection_percent": 50});
    platform
        .service_with("ejecting", "round_robin", &[(bad.port(), 100), (good.port(), 100)], lenient_breaker(), outliers)
        .await;
    platform.route(json!({"name": "ejecting", "path_prefix": "/e", "methods": ["GET"], "api_version": "v1", "service": "ejecting"})).await;
    for _ in 0..30 {
        platform.get("/v1/e").await;
    }
    assert_eq!(bad.hits(), 2, "two 5xx in a row eject the instance");
    assert_eq!(good.hits(), 28);

    // With both failing, ejecting both would exceed 50 %: ejection is then ignored and
    // both are tried again rather than leaving the service with nothing.
    good.healthy.store(false, Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(platform.get("/v1/e").await.status().as_u16(), 503);
    }
    assert!(good.hits() > 30, "the last instance keeps being tried: {}", good.hits());
    assert!(bad.hits() > 2, "past the allowed share ejections are ignored: {}", bad.hits());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_instances_are_reached_over_http2() {
    let platform = Platform::start(Backend::Sqlite).await;
    let upstream = Upstream::start("multiplexed", Behaviour::Ok).await;
    platform.service_over("multiplexed", upstream.port(), "h2c").await;
    platform
        .route(json!({"name": "multiplexed", "path_prefix": "/mux", "methods": ["GET"], "api_version": "v1", "service": "multiplexed"}))
        .await;

    // Many requests at once, all answered over HTTP/2 (clients still speak HTTP/1.1 to the gateway).
    let requests = (0..32).map(|n| {
        let (http, url) = (platform.http.clone(), format!("{}/v1/mux/{n}", platform.gateway_server.url()));
        tokio::spawn(async move {
            let response = http.get(url).send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap())
        })
    });
    for (n, answer) in futures::future::join_all(requests).await.into_iter().enumerate() {
        let (status, body) = answer.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["version"], "HTTP/2.0", "{body}");
        // HTTP/2 carries the authority: the upstream sees the absolute form of the target.
        let target = body["path"].as_str().unwrap();
        assert_eq!(target, format!("http://127.0.0.1:{}/mux/{n}", upstream.port()));
        assert!(body["headers"]["x-request-id"].is_string() && body["headers"].get("connection").is_none(), "{body}");
    }
    assert_eq!(upstream.hits(), 32);
}

/// On one thread, as each `pake serve` worker runs: its connection pool is that thread's.
#[tokio::test(flavor = "current_thread")]
async fn upstream_connections_are_kept_alive_and_stale_ones_replaced() {
    let platform = Platform::start(Backend::Sqlite).await;
    let kept = RawUpstream::start(false).await;
    platform.service("kept", "round_robin", &[(kept.port, 100)], lenient_breaker()).await;
    platform
        .route(
            json!({"name": "kept", "path_prefix": "/kept", "methods": ["GET"], "api_version": "v1", "service": "kept"}),
        )
        .await;
    for _ in 0..50 {
        let response = platform.get("/v1/kept").await;
        assert_eq!(response.status().as_u16(), 200);
        assert_eq!(response.text().await.unwrap(), "raw");
    }
    assert_eq!(kept.requests.load(Ordering::SeqCst), 50);
    assert_eq!(kept.connections.load(Ordering::SeqCst), 1, "sequential requests reuse one connection");

    // An upstream that drops every connection after one answer: the pooled connection is
    // closed by the time the next request comes (2 ms later), and that request goes out on
    // a new connection instead of failing, with retries off.
    let closing = RawUpstream::start(true).await;
    platform.service("closing", "round_robin", &[(closing.port, 100)], lenient_breaker()).await;
    platform.route(json!({"name": "closing", "path_prefix": "/closing", "methods": ["GET"], "api_version": "v1", "service": "closing", "retry": {"max_attempts": 0}})).await;
    for n in 0..30 {
        let response = platform.get("/v1/closing").await;
        assert_eq!(response.status().as_u16(), 200, "request {n} through a closing upstream");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(closing.requests.load(Ordering::SeqCst), 30);
    assert_eq!(closing.connections.load(Ordering::SeqCst), 30, "one connection per request");
}
