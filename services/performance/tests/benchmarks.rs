//! Benchmarks end to end: the performance service runs goose through a real gateway to
//! real upstreams registered in a real registry, all over real HTTP in this process, on a
//! fresh PostgreSQL database and on a fresh SQLite file. A run's request count matches
//! what the upstream received, its progress advances while it runs, a cancel keeps the
//! partial result, a second benchmark waits for the load generator, one against the same
//! service is refused, bad requests name their field, and a restart fails the runs it
//! interrupted.

use axum::Router;
use axum::extract::Request;
use axum::routing::any;
use conformance::support::{Backend, TestDatabase};
use conformance::{TestServer, http_client_with_token};
use pake_performance_client::{Client, types};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"benchmark-tests-secret-0123456789abcdef";
const MAX_USERS: u64 = 50;

fn token(scopes: &[&str]) -> String {
    pake_tokens::TokenIssuer::hs256(SECRET).expect("secret").issue("tester", None, scopes, Duration::from_secs(600))
}

/// A real upstream on a loopback port: counts every request, and those that carry the
/// benchmark's header and body.
struct Upstream {
    server: TestServer,
    hits: Arc<AtomicU64>,
    marked: Arc<AtomicU64>,
}

impl Upstream {
    async fn start() -> Upstream {
        let hits = Arc::new(AtomicU64::new(0));
        let marked = Arc::new(AtomicU64::new(0));
        let (all, with_mark) = (hits.clone(), marked.clone());
        let router = Router::new().fallback(any(move |request: Request| {
            let (all, with_mark) = (all.clone(), with_mark.clone());
            async move {
                let header = request.headers().get("x-bench").map(|v| v.as_bytes() == b"yes").unwrap_or(false);
                let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap_or_default();
                tokio::time::sleep(Duration::from_millis(2)).await;
                all.fetch_add(1, Ordering::SeqCst);
                if header && body.as_ref() == b"ping" {
                    with_mark.fetch_add(1, Ordering::SeqCst);
                }
                "ok"
            }
        }));
        Upstream { server: TestServer::start(router).await.expect("upstream starts"), hits, marked }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Registry, gateway and performance service over one store, as `pake serve` runs them.
struct Platform {
    store: pake_registry::Store,
    registry: Arc<pake_registry::Registry>,
    _registry_server: TestServer,
    _gateway: pake_gateway::Gateway,
    gateway_server: TestServer,
    performance: Arc<pake_performance::Performance>,
    _performance_server: TestServer,
    mesh: pake_mesh_client::Client,
    admin: pake_gateway_client::Client,
    client: Client,
    reader: Client,
}

async fn performance_over(
    store: pake_registry::Store,
    registry: &pake_registry::Registry,
    gateway_url: &str,
) -> (Arc<pake_performance::Performance>, TestServer, Client) {
    let instances: Arc<dyn pake_performance::Registry> = Arc::new(registry.snapshot_cell().clone());
    let metrics = pake_performance::PerformanceMetrics::new(pake_observe::Metrics::new("performance"));
    let options = pake_performance::Options {
        max_benchmark_users: MAX_USERS,
        gateway_url: Some(gateway_url.to_string()),
        orphan_check_interval: Duration::from_millis(100),
        ..pake_performance::Options::default()
    };
    let performance =
        pake_performance::Performance::start(store, instances, metrics, options).await.expect("performance starts");
    let verifier = pake_tokens::TokenVerifier::hs256(SECRET).expect("secret");
    let server = TestServer::start(pake_performance::router(performance.clone(), verifier)).await.expect("serves");
    let client = Client::new_with_client(
        &server.url(),
        http_client_with_token(&token(&["performance:read", "performance:write"])),
    );
    (performance, server, client)
}

impl Platform {
    async fn start(url: &str) -> Platform {
        let store = pake_registry::Store::open(url).await.expect("store opens");
        let registry = Arc::new(pake_registry::Registry::start(store.clone()).await.expect("registry starts"));
        let verifier = pake_tokens::TokenVerifier::hs256(SECRET).expect("secret");
        let registry_server = TestServer::start(pake_registry::router(
            registry.clone(),
            verifier,
            pake_observe::Metrics::new("registry"),
        ))
        .await
        .expect("registry serves");
        let options = pake_gateway::GatewayOptions::new(pake_tokens::KeyRing::hs256(SECRET).expect("secret"));
        let gateway = pake_gateway::Gateway::start(store.clone(), registry.snapshot_cell().clone(), options)
            .await
            .expect("gateway starts");
        let gateway_server =
            TestServer::serve(|listener, stop| gateway.front().serve(listener, stop)).await.expect("gateway serves");
        let (performance, performance_server, client) =
            performance_over(store.clone(), &registry, &gateway_server.url()).await;
        let reader =
            Client::new_with_client(&performance_server.url(), http_client_with_token(&token(&["performance:read"])));
        let admin = http_client_with_token(&token(&["mesh:read", "mesh:write", "gateway:admin"]));
        Platform {
            store,
            mesh: pake_mesh_client::Client::new_with_client(&registry_server.url(), admin.clone()),
            admin: pake_gateway_client::Client::new_with_client(&gateway_server.url(), admin),
            registry,
            _registry_server: registry_server,
            _gateway: gateway,
            gateway_server,
            performance,
            _performance_server: performance_server,
            client,
            reader,
        }
    }

    /// Registers `name` with one instance at `port`, routed at `/v1/<name>` by the gateway.
    async fn service(&self, name: &str, port: u16) {
        let registration: pake_mesh_client::types::ServiceRegistration =
            serde_json::from_value(json!({"name": name, "version": "1.0.0"})).unwrap();
        let service = self.mesh.register_service().body(registration).send().await.expect("registers").into_inner();
        let instance: pake_mesh_client::types::InstanceRegistration =
            serde_json::from_value(json!({"address": "127.0.0.1", "port": port, "ttl_seconds": 600})).unwrap();
        self.mesh.register_instance().service_id(service.id).body(instance).send().await.expect("instance");
        let route: pake_gateway_client::types::RouteSpec = serde_json::from_value(json!({
            "name": name, "path_prefix": format!("/{name}"), "methods": ["GET", "POST"],
            "api_version": "v1", "service": name,
        }))
        .unwrap();
        self.admin.create_route().body(route).send().await.expect("route");
        // The gateway routes from the registry's snapshot and its own route table: wait
        // until a request goes through.
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = http.get(format!("{}/v1/{name}/ready", self.gateway_server.url())).send().await;
            if answer.map(|r| r.status().is_success()).unwrap_or(false) {
                break;
            }
            assert!(Instant::now() < deadline, "the gateway never routed /v1/{name}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn spec(value: Value) -> types::BenchmarkSpec {
    serde_json::from_value(value).expect("a valid spec")
}

async fn refusal<T: std::fmt::Debug>(result: Result<T, progenitor_client::Error<types::Error>>) -> (u16, types::Error) {
    match result {
        Ok(value) => panic!("expected a refusal, got {value:?}"),
        Err(progenitor_client::Error::ErrorResponse(response)) => (response.status().as_u16(), response.into_inner()),
        Err(other) => panic!("expected an error body, got {other}"),
    }
}

fn named_field(error: &types::Error) -> Vec<String> {
    error.details.iter().filter_map(|detail| detail.field.as_ref().map(|f| f.to_string())).collect()
}

async fn get(client: &Client, id: uuid::Uuid) -> types::Benchmark {
    client.get_benchmark().benchmark_id(id).send().await.expect("get").into_inner()
}

/// Polls until `done` holds of the benchmark, or fails after `within`.
async fn until(
    client: &Client,
    id: uuid::Uuid,
    within: Duration,
    what: &str,
    done: impl Fn(&types::Benchmark) -> bool,
) -> types::Benchmark {
    let deadline = Instant::now() + within;
    loop {
        let benchmark = get(client, id).await;
        if done(&benchmark) {
            return benchmark;
        }
        assert!(Instant::now() < deadline, "{what}: the benchmark is still {benchmark:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scenario(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let platform = Platform::start(&db.url).await;
    let client = &platform.client;
    let search = Upstream::start().await;
    let papers = Upstream::start().await;
    platform.service("search", search.server.addr.port()).await;
    platform.service("papers", papers.server.addr.port()).await;
    // What the gateway's readiness probes sent them.
    let (search_before, papers_before) = (search.hits(), papers.hits());

    // Bad requests name their field; nothing is queued.
    let base = json!({"name": "peak", "service": "search", "path": "/v1/search/q", "method": "GET",
                      "users": 2, "duration_seconds": 1});
    let mut unknown = base.clone();
    unknown["service"] = json!("nowhere");
    let (status, error) = refusal(client.start_benchmark().body(spec(unknown)).send().await).await;
    assert_eq!((status, named_field(&error)), (422, vec!["/service".to_string()]), "{error:?}");
    let mut too_big = base.clone();
    too_big["users"] = json!(MAX_USERS + 1);
    let (status, error) = refusal(client.start_benchmark().body(spec(too_big)).send().await).await;
    assert_eq!((status, named_field(&error)), (422, vec!["/users".to_string()]), "{error:?}");
    assert!(error.message.contains("at most 50 users"), "{error:?}");
    let mut crawling = base.clone();
    crawling["hatch_rate_per_second"] = json!(0.000001);
    let (status, error) = refusal(client.start_benchmark().body(spec(crawling)).send().await).await;
    assert_eq!((status, named_field(&error)), (422, vec!["/hatch_rate_per_second".to_string()]), "{error:?}");
    let mut bad_header = base.clone();
    bad_header["headers"] = json!({"x/y": "1"});
    let (status, error) = refusal(client.start_benchmark().body(spec(bad_header)).send().await).await;
    assert_eq!((status, named_field(&error)), (422, vec!["/headers/x~1y".to_string()]), "{error:?}");
    bad_header = base.clone();
    bad_header["headers"] = json!({"x-y": "a\nb"});
    let (status, error) = refusal(client.start_benchmark().body(spec(bad_header)).send().await).await;
    assert_eq!((status, named_field(&error)), (422, vec!["/headers/x-y".to_string()]), "{error:?}");
    let (status, _) = refusal(platform.reader.start_benchmark().body(spec(base.clone())).send().await).await;
    assert_eq!(status, 403, "starting a benchmark needs performance:write");
    let listed = client.list_benchmarks().send().await.expect("list").into_inner();
    assert!(listed.items.is_empty(), "refused benchmarks are not queued: {listed:?}");

    // An SLO the first run is judged against, beside its thresholds.
    let slo: types::SloSpec = serde_json::from_value(json!({
        "name": "search-availability", "service": "search", "objective": "availability", "target": 99.0,
        "window_days": 30,
    }))
    .unwrap();
    let slo = client.create_slo().body(slo).send().await.expect("slo").into_inner();

    // The first run: POST with a header and a body, through the gateway.
    let first = client
        .start_benchmark()
        .body(spec(json!({
            "name": "search-peak", "service": "search", "path": "/v1/search/q?term=x", "method": "POST",
            "headers": {"x-bench": "yes"}, "body": "ping", "users": 4, "hatch_rate_per_second": 40,
            "duration_seconds": 3, "think_time_ms": 5, "slo_id": slo.id,
            "thresholds": {"p95_ms": 2000, "error_rate": 0.01},
        })))
        .send()
        .await
        .expect("the benchmark is queued");
    assert_eq!(first.status().as_u16(), 202);
    let location = first.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
    let first = first.into_inner();
    assert_eq!(location, Some(format!("/api/v1/benchmarks/{}", first.id)));
    assert_eq!(first.status, types::BenchmarkStatus::Queued);
    assert!(first.started_at.is_none() && first.result.is_none());

    // One queued or running benchmark per service: a second against it is refused.
    let (status, _) = refusal(client.start_benchmark().body(spec(base.clone())).send().await).await;
    assert_eq!(status, 409, "a second benchmark against the same service");
    // One against another service waits for the load generator.
    let second = client
        .start_benchmark()
        .body(spec(json!({
            "name": "papers-soak", "service": "papers", "path": "/v1/papers/list", "method": "GET",
            "users": 3, "hatch_rate_per_second": 30, "duration_seconds": 60, "think_time_ms": 5,
        })))
        .send()
        .await
        .expect("queued")
        .into_inner();

    // Progress while the first runs: requests so far and a p95, advancing.
    let running = until(client, first.id, Duration::from_secs(20), "running with requests", |b| {
        b.status == types::BenchmarkStatus::Running && b.result.as_ref().is_some_and(|r| r.requests > 0)
    })
    .await;
    assert!(running.started_at.is_some() && running.finished_at.is_none());
    let early = running.result.expect("progress").requests;
    assert_eq!(get(client, second.id).await.status, types::BenchmarkStatus::Queued, "the second waits its turn");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = get(client, first.id).await;
    let progress = later.result.expect("progress");
    assert!(progress.requests > early, "progress advances: {early} then {}", progress.requests);
    assert!(progress.latency_ms.p95 > 0.0);
    let metrics = reqwest::get(format!("{}/metrics", platform._performance_server.url())).await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.lines().any(|line| line.ends_with("benchmarks_running 1")), "{metrics}");

    // Its end: what the upstream received, the verdict with each criterion.
    let done = until(client, first.id, Duration::from_secs(30), "completed", |b| {
        b.status != types::BenchmarkStatus::Running && b.status != types::BenchmarkStatus::Queued
    })
    .await;
    assert_eq!(done.status, types::BenchmarkStatus::Completed, "{done:?}");
    let result = done.result.expect("a result");
    let received = search.hits() - search_before;
    assert!(
        result.requests.abs_diff(received) <= 4,
        "goose counted {} requests, the upstream {received}",
        result.requests
    );
    assert!(result.requests > 20, "{result:?}");
    assert_eq!(search.marked.load(Ordering::SeqCst), received, "every request carried the header and the body");
    assert_eq!(result.failures, 0);
    assert!(result.requests_per_second > 0.0 && result.latency_ms.p95 > 0.0);
    let verdict = done.verdict.expect("a verdict");
    assert!(verdict.passed, "{verdict:?}");
    let reasons: Vec<String> = verdict.reasons.iter().map(|r| r.to_string()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].starts_with("p95 ") && reasons[0].contains("under the threshold of 2000 ms"), "{reasons:?}");
    assert!(reasons[2].contains("SLO search-availability: SLI 100.000% meets the target of 99%"), "{reasons:?}");
    assert!(done.finished_at.is_some() && done.error.is_none());

    // The second starts once the first is over; a cancel stops it and keeps what it measured.
    let second_running = until(client, second.id, Duration::from_secs(20), "the second running", |b| {
        b.result.as_ref().is_some_and(|r| r.requests >= 10)
    })
    .await;
    assert_eq!(second_running.status, types::BenchmarkStatus::Running);
    let asked = Instant::now();
    let cancelled = client.cancel_benchmark().benchmark_id(second.id).send().await.expect("cancel").into_inner();
    assert!(asked.elapsed() < Duration::from_secs(15), "the cancel took {:?}", asked.elapsed());
    assert_eq!(cancelled.status, types::BenchmarkStatus::Cancelled);
    assert!(cancelled.verdict.is_none() && cancelled.finished_at.is_some());
    let partial = cancelled.result.expect("the partial result is kept");
    assert!(partial.requests >= second_running.result.expect("progress").requests);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        partial.requests.abs_diff(papers.hits() - papers_before) <= 3,
        "{} against {}",
        partial.requests,
        papers.hits() - papers_before
    );
    assert_eq!(get(client, second.id).await.result.map(|r| r.requests), Some(partial.requests));
    let (status, _) = refusal(client.cancel_benchmark().benchmark_id(second.id).send().await).await;
    assert_eq!(status, 409, "a cancelled benchmark cannot be cancelled again");
    let (status, _) = refusal(client.cancel_benchmark().benchmark_id(first.id).send().await).await;
    assert_eq!(status, 409, "nor a completed one");

    // Newest first, filtered by status and service.
    let listed = client.list_benchmarks().send().await.expect("list").into_inner();
    let ids: Vec<uuid::Uuid> = listed.items.iter().map(|b| b.id).collect();
    assert_eq!(ids, [second.id, first.id]);
    let completed = client
        .list_benchmarks()
        .status(types::BenchmarkStatus::Completed)
        .service("search")
        .send()
        .await
        .expect("list")
        .into_inner();
    assert_eq!(completed.items.iter().map(|b| b.id).collect::<Vec<_>>(), [first.id]);

    // Another start over the same database while a run goes on. On the embedded store it
    // can only be a restart: the run failed, saying why. On PostgreSQL it may be a second
    // replica: the run is left alone while the process running it lives, and fails once
    // that process is gone (its sessions end).
    let third = client
        .start_benchmark()
        .body(spec(json!({
            "name": "interrupted", "service": "search", "path": "/v1/search/q", "method": "GET",
            "users": 2, "hatch_rate_per_second": 20, "duration_seconds": 60, "think_time_ms": 20,
        })))
        .send()
        .await
        .expect("queued")
        .into_inner();
    until(client, third.id, Duration::from_secs(20), "the third running", |b| {
        b.status == types::BenchmarkStatus::Running
    })
    .await;
    let (_restarted, _server, after_restart) =
        performance_over(platform.store.clone(), &platform.registry, &platform.gateway_server.url()).await;
    if let pake_registry::Store::Postgres(pool) = &platform.store {
        // The other replica reads the run's progress from the store.
        let elsewhere = until(&after_restart, third.id, Duration::from_secs(10), "progress elsewhere", |b| {
            b.result.as_ref().is_some_and(|r| r.requests > 0)
        })
        .await;
        assert_eq!(elsewhere.status, types::BenchmarkStatus::Running, "a live replica's run");
        let ended: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(pool)
        .await
        .expect("the sessions end");
        assert_eq!(ended, [(true,)], "one session holds the running benchmark");
    }
    let failed = until(&after_restart, third.id, Duration::from_secs(10), "failed", |b| {
        b.status == types::BenchmarkStatus::Failed
    })
    .await;
    let reason = failed.error.as_ref().expect("a reason").to_string();
    assert!(reason.contains("interrupted") && reason.contains("running"), "{reason}");
    assert!(failed.finished_at.is_some());
    // The process that ran it sees the failure in the store and stops its load test.
    let settled = Instant::now() + Duration::from_secs(10);
    while platform.performance.metrics().benchmarks_running.get() != 0 {
        assert!(Instant::now() < settled, "the interrupted run kept running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(client, third.id).await.status, types::BenchmarkStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmarks_run_through_the_gateway_on_postgres() {
    scenario(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmarks_run_through_the_gateway_on_sqlite() {
    scenario(Backend::Sqlite).await;
}
