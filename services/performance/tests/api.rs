//! The performance service over real HTTP through the generated client, with the registry
//! beside it, on a fresh PostgreSQL database and on a fresh SQLite file: percentiles
//! against sorting, SLO reports now and at a past `at`, a restart keeping the windows,
//! recommendations from the registry's passing instances, the rules that answer 422, and
//! the metrics.

use chrono::{Duration as Span, Utc};
use conformance::TestServer;
use conformance::support::{Backend, TestDatabase};
use pake_performance_client::{Client, types};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &[u8] = b"performance-test-secret-0123456789abcdef";

struct Running {
    server: TestServer,
    client: Client,
    registry: Arc<pake_registry::Registry>,
    performance: Arc<pake_performance::Performance>,
}

async fn start(url: &str) -> Running {
    let store = pake_registry::Store::open(url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store.clone()).await.expect("registry starts"));
    let instances: Arc<dyn pake_performance::Registry> = Arc::new(registry.snapshot_cell().clone());
    let metrics = pake_performance::PerformanceMetrics::new(pake_observe::Metrics::new("performance"));
    let performance =
        pake_performance::Performance::start(store, instances, metrics, pake_performance::Options::default())
            .await
            .expect("performance service starts");
    let verifier = pake_tokens::TokenVerifier::hs256(SECRET).expect("secret");
    let server =
        TestServer::start(pake_performance::router(performance.clone(), verifier)).await.expect("server starts");
    let token = pake_tokens::TokenIssuer::hs256(SECRET).expect("secret").issue(
        "test",
        None,
        &["performance:read", "performance:write"],
        Duration::from_secs(3600),
    );
    let client = Client::new_with_client(&server.url(), conformance::http_client_with_token(&token));
    Running { server, client, registry, performance }
}

fn batch(samples: Vec<serde_json::Value>) -> types::SampleBatch {
    serde_json::from_value(json!({ "samples": samples })).expect("a valid batch")
}

fn sample(service: &str, route: &str, status: u16, latency_ms: f64, at: chrono::DateTime<Utc>) -> serde_json::Value {
    json!({"service": service, "route": route, "method": "GET", "status": status, "latency_ms": latency_ms, "timestamp": at})
}

fn exact(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() as f64 - 1.0)) as usize]
}

fn assert_within_one_percent(name: &str, estimate: f64, exact: f64) {
    assert!((estimate - exact).abs() <= exact * 0.01 + 1e-9, "{name}: {estimate} is not within 1 % of {exact}");
}

async fn status_of<T: std::fmt::Debug>(
    result: Result<T, progenitor_client::Error<types::Error>>,
) -> (u16, Option<types::Error>) {
    match result {
        Ok(value) => panic!("expected an error, got {value:?}"),
        Err(progenitor_client::Error::ErrorResponse(response)) => {
            (response.status().as_u16(), Some(response.into_inner()))
        }
        Err(other) => (other.status().map(|s| s.as_u16()).unwrap_or(0), None),
    }
}

async fn scenario(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let running = start(&db.url).await;
    let client = &running.client;
    let now = Utc::now();

    // 2,000 samples over the last 40 s, 2 % of them 5xx and 3 % 4xx, on two routes.
    let mut latencies = Vec::new();
    let mut samples = Vec::new();
    for i in 0..2_000u32 {
        let latency = 1.0 + ((i * 7_919) % 1_000) as f64 * 0.731 + if i % 97 == 0 { 2_500.0 } else { 0.0 };
        let status = if i % 50 == 0 {
            503
        } else if i % 33 == 0 {
            404
        } else {
            200
        };
        let route = if i % 4 == 0 { "/v1/papers" } else { "/v1/search" };
        latencies.push(latency);
        samples.push(sample("arxiv-search", route, status, latency, now - Span::milliseconds(40_000 - i as i64 * 20)));
    }
    for chunk in samples.chunks(500) {
        let accepted = client.ingest_samples().body(batch(chunk.to_vec())).send().await.expect("ingest").into_inner();
        assert_eq!(accepted.accepted.get(), chunk.len() as u64);
    }

    let stats = client
        .get_service_stats()
        .service_name("arxiv-search")
        .window(types::StatsWindow::X1m)
        .send()
        .await
        .expect("stats")
        .into_inner();
    assert_eq!(stats.count, 2_000);
    let fives = (0..2_000u32).filter(|i| i % 50 == 0).count() as u64;
    assert_eq!(stats.status_classes.class_5xx, fives);
    assert!((stats.error_rate - fives as f64 / 2_000.0).abs() < 1e-12);
    assert!((stats.throughput_rps - 2_000.0 / 60.0).abs() < 1e-9);
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let summary = stats.latency_ms.expect("latencies");
    assert_within_one_percent("p50", summary.p50, exact(&sorted, 0.5));
    assert_within_one_percent("p90", summary.p90, exact(&sorted, 0.9));
    assert_within_one_percent("p95", summary.p95, exact(&sorted, 0.95));
    assert_within_one_percent("p99", summary.p99, exact(&sorted, 0.99));
    assert_eq!(summary.max, *sorted.last().unwrap());

    // Per route prefix.
    let papers = client
        .get_service_stats()
        .service_name("arxiv-search")
        .window(types::StatsWindow::X5m)
        .route("/v1/pap")
        .send()
        .await
        .expect("stats per route")
        .into_inner();
    assert_eq!(papers.count, 500);
    // A service that never sent a sample is unknown; a quiet window is a zero count.
    let (status, _) = status_of(client.get_service_stats().service_name("nobody").send().await).await;
    assert_eq!(status, 404);

    // An availability SLO: 2 % bad against 99 % allows 1 %: budget overspent, burning at 2.
    let slo: types::SloSpec = serde_json::from_value(json!({
        "name": "search-availability", "service": "arxiv-search", "objective": "availability",
        "target": 99.0, "window_days": 30,
    }))
    .unwrap();
    let slo = client.create_slo().body(slo).send().await.expect("create SLO").into_inner();
    let report = client.get_slo_report().slo_id(slo.id).send().await.expect("report").into_inner();
    assert_eq!(report.total_requests, 2_000);
    assert_eq!(report.good_requests, 2_000 - fives);
    assert!((report.sli.unwrap() - 98.0).abs() < 1e-9);
    assert!(!report.compliant);
    assert!((report.error_budget.total - 20.0).abs() < 1e-9);
    assert_eq!(report.error_budget.consumed, 40.0);
    assert!((report.error_budget.remaining - -20.0).abs() < 1e-9);
    for rate in &report.burn_rates {
        assert!((rate.rate - 2.0).abs() < 1e-9, "{rate:?}");
    }
    // Burning at 2: only the 3 d / 6 h ticket (threshold 1) fires.
    let firing: Vec<_> = report.alerts.iter().filter(|a| a.firing).map(|a| a.long_window.to_string()).collect();
    assert_eq!(firing, ["3d"]);

    // A latency SLO counts a request good under the threshold (and not a 5xx).
    let threshold = 300.0;
    let latency: types::SloSpec = serde_json::from_value(json!({
        "name": "search-latency", "service": "arxiv-search", "objective": "latency",
        "target": 90.0, "latency_threshold_ms": threshold as u64, "route": "/v1/search",
    }))
    .unwrap();
    let latency = client.create_slo().body(latency).send().await.expect("create latency SLO").into_inner();
    let report = client.get_slo_report().slo_id(latency.id).send().await.expect("latency report").into_inner();
    let search: Vec<usize> = (0..2_000usize).filter(|i| i % 4 != 0).collect();
    let expected_good = search.iter().filter(|i| *i % 50 != 0 && latencies[**i] < threshold).count() as u64;
    assert_eq!(report.total_requests, search.len() as u64);
    let slack = search.iter().filter(|i| (latencies[**i] - threshold).abs() <= threshold * 0.02).count() as u64;
    assert!(
        report.good_requests.abs_diff(expected_good) <= slack,
        "{} good, expected {expected_good} ± {slack}",
        report.good_requests
    );

    // A report at a past `at` (before the samples) sees no traffic: null SLI, compliant,
    // the whole budget left and no burn.
    let before = client
        .get_slo_report()
        .slo_id(slo.id)
        .at(now - Span::minutes(10))
        .send()
        .await
        .expect("past report")
        .into_inner();
    assert_eq!((before.total_requests, before.sli, before.compliant), (0, None, true));
    assert_eq!(before.error_budget.remaining_percent, 100.0);
    assert!(before.burn_rates.iter().all(|r| r.rate == 0.0));
    let (status, _) =
        status_of(client.get_slo_report().slo_id(slo.id).at(Utc::now() + Span::hours(1)).send().await).await;
    assert_eq!(status, 400);

    // Rules beyond the schemas answer 422 naming the field.
    let no_threshold: types::SloSpec = serde_json::from_value(json!({
        "name": "x", "service": "arxiv-search", "objective": "latency", "target": 99.0,
    }))
    .unwrap();
    let (status, error) = status_of(client.create_slo().body(no_threshold).send().await).await;
    assert_eq!(status, 422);
    assert_eq!(error.unwrap().details[0].field.as_deref().map(String::as_str), Some("/latency_threshold_ms"));
    let (status, _) = status_of(
        client.create_slo().body(serde_json::from_value::<types::SloSpec>(json!({
            "name": "search-availability", "service": "arxiv-search", "objective": "availability", "target": 99.5,
        })).unwrap()).send().await,
    )
    .await;
    assert_eq!(status, 409, "a second SLO of one name in one service");
    let future = batch(vec![sample("arxiv-search", "/v1/search", 200, 1.0, Utc::now() + Span::hours(1))]);
    let (status, error) = status_of(client.ingest_samples().body(future).send().await).await;
    assert_eq!(status, 422);
    assert_eq!(error.unwrap().details[0].field.as_deref().map(String::as_str), Some("/samples/0/timestamp"));
    let inverted: types::AutoscalingPolicySpec = serde_json::from_value(json!({
        "service": "arxiv-search", "min_replicas": 5, "max_replicas": 2, "target_rps_per_replica": 10.0,
    }))
    .unwrap();
    let (status, error) = status_of(client.create_autoscaling_policy().body(inverted).send().await).await;
    assert_eq!(status, 422);
    assert_eq!(error.unwrap().details[0].field.as_deref().map(String::as_str), Some("/min_replicas"));

    // Auto-scaling: three passing instances in the registry, 2,000 requests in the last
    // minute = 33.3 rps against 5 rps per replica: ceil(33.3 / 5) = 7, but the scale-up
    // step of 2 allows 5.
    let service = running
        .registry
        .register_service(serde_json::from_value(json!({"name": "arxiv-search", "version": "1.0.0"})).unwrap(), None)
        .await
        .expect("register the service");
    for port in [9001, 9002, 9003] {
        let instance = running
            .registry
            .register_instance(
                service.id,
                serde_json::from_value(json!({"address": "127.0.0.1", "port": port})).unwrap(),
            )
            .await
            .expect("register an instance");
        running
            .registry
            .heartbeat(service.id, instance.id, serde_json::from_value(json!({"status": "passing"})).unwrap())
            .await
            .expect("heartbeat");
    }
    let policy: types::AutoscalingPolicySpec = serde_json::from_value(json!({
        "service": "arxiv-search", "min_replicas": 1, "max_replicas": 10, "target_rps_per_replica": 5.0,
        "max_scale_up_step": 2,
    }))
    .unwrap();
    let policy = client.create_autoscaling_policy().body(policy).send().await.expect("policy").into_inner();
    let recommendation =
        client.get_autoscaling_recommendation().policy_id(policy.id).send().await.expect("recommend").into_inner();
    assert_eq!(recommendation.current_replicas, 3);
    assert_eq!(recommendation.desired_replicas.get(), 5, "{}", recommendation.reason.as_str());
    assert!(recommendation.reason.contains("scale-up step"), "{}", recommendation.reason.as_str());

    // The exposition is text, which the generated client hands over as a stream.
    let text = reqwest::get(format!("{}/metrics", running.server.url()))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let series = "pake_slo_burn_rate{service=\"arxiv-search\",slo=\"search-availability\",window=\"1h\"} ";
    let burn: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series} in {text}"))
        .parse()
        .expect("a number");
    assert!((burn - 2.0).abs() < 1e-9, "{burn}");
    assert!(text.contains("pake_autoscaling_desired_replicas{service=\"arxiv-search\"} 5"), "{text}");
    assert!(text.contains("pake_performance_samples_ingested_total 2000"), "{text}");

    // A restart keeps the windows: a new process over the same database reports the same.
    running.server.stop().await;
    let restarted = start(&db.url).await;
    let again = restarted.client.get_slo_report().slo_id(slo.id).send().await.expect("report after restart");
    assert_eq!(again.into_inner().total_requests, 2_000);
    restarted.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_slos_and_recommendations_on_postgres() {
    scenario(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_slos_and_recommendations_on_sqlite() {
    scenario(Backend::Sqlite).await;
}

/// The gateway of the service's process folds its timings into sketches by the finest
/// tier's buckets instead of sending samples: the same requests read back the same either
/// way, in every window and per route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folded_timings_read_back_as_the_same_samples_would() {
    use pake_performance::sketch::LatencySketch;
    let db = TestDatabase::new(Backend::Sqlite).await;
    let running = start(&db.url).await;
    let now = Utc::now();
    let width = pake_performance::tiers::TIERS[0].millis();
    let mut samples = Vec::new();
    let mut folds: std::collections::BTreeMap<(&str, u16, i64), LatencySketch> = Default::default();
    for i in 0..3_000u32 {
        let latency = 0.2 + ((i * 7_919) % 2_000) as f64 * 0.37 + if i % 89 == 0 { 4_000.0 } else { 0.0 };
        let status: u16 = [200, 200, 201, 404, 503, 200, 302][i as usize % 7];
        let route = ["/v1/search", "/v1/papers", "/v1/papers/x"][i as usize % 3];
        let at = now - Span::milliseconds(250_000 - i as i64 * 80);
        samples.push(sample("sampled", route, status, latency, at));
        let bucket = at.timestamp_millis().div_euclid(width) * width;
        folds.entry((route, status / 100, bucket)).or_default().add(latency);
    }
    for chunk in samples.chunks(1_000) {
        running.client.ingest_samples().body(batch(chunk.to_vec())).send().await.expect("ingest");
    }
    let folded = folds.iter().map(|((route, class, bucket), latencies)| pake_performance::FoldedRef {
        service: "folded",
        route,
        status_class: *class,
        bucket_ms: *bucket,
        latencies,
    });
    assert_eq!(running.performance.ingest_folded(folded).await.expect("folded taken"), 3_000);
    for window in [types::StatsWindow::X1m, types::StatsWindow::X5m, types::StatsWindow::X1h] {
        for route in [None, Some("/v1/papers"), Some("/v1/s")] {
            let stats = |service: &'static str| {
                let mut request = running.client.get_service_stats().service_name(service).window(window);
                if let Some(route) = route {
                    request = request.route(route);
                }
                async move { request.send().await.expect("stats").into_inner() }
            };
            let (sampled, folded) = (stats("sampled").await, stats("folded").await);
            let what = format!("{window:?} {route:?}");
            assert!(sampled.count > 0, "{what}");
            assert_eq!(
                (sampled.count, sampled.status_classes, sampled.error_rate, sampled.throughput_rps),
                (folded.count, folded.status_classes, folded.error_rate, folded.throughput_rps),
                "{what}"
            );
            let (a, b) = (sampled.latency_ms.expect("latencies"), folded.latency_ms.expect("latencies"));
            assert_eq!((a.p50, a.p90, a.p95, a.p99, a.max), (b.p50, b.p90, b.p95, b.p99, b.max), "{what}");
            assert!((a.mean - b.mean).abs() <= a.mean * 1e-9, "{what}: {} vs {}", a.mean, b.mean);
        }
    }
    // Folds are held to the rules samples are: not from the future.
    let ahead = LatencySketch::default();
    let future = pake_performance::FoldedRef {
        service: "folded",
        route: "",
        status_class: 2,
        bucket_ms: (now + Span::minutes(10)).timestamp_millis(),
        latencies: &ahead,
    };
    assert!(running.performance.ingest_folded([future]).await.is_err());
    running.server.stop().await;
}
