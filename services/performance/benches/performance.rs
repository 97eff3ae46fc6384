//! Performance-service benchmark, on the embedded SQLite backend and on PostgreSQL:
//! samples ingested per second in process (the way `pake serve` feeds the gateway's
//! samples) and through the HTTP API with the generated client, CPU per sample, the
//! stored bytes of one service-route-day of sketches, and the time of a 30-day SLO report.
//!
//! `cargo bench -p pake-performance` (sizes: `PAKE_BENCH_SAMPLES`, default 1,000,000 in
//! process; `PAKE_BENCH_API_SAMPLES`, default 200,000 through the API). Goals (issue 19):
//! 1 million samples/s in process on one core, a 30-day report under 50 ms. Client and
//! server share this machine's cores; the numbers are printed, not asserted.

use chrono::{DateTime, Duration as Span, Utc};
use conformance::TestServer;
use conformance::support::{Backend, TestDatabase};
use pake_performance::Performance;
use pake_performance_server::types;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"performance-bench-secret-0123456789abcdef";
/// The gateway's batch size (`services/gateway/src/samples.rs`).
const BATCH: usize = 5_000;
const ROUTES: usize = 20;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

fn sample(service: &str, n: usize, at: DateTime<Utc>) -> types::Sample {
    let status = match n % 50 {
        0 => 503,
        1 | 2 => 404,
        _ => 200,
    };
    serde_json::from_value(serde_json::json!({
        "service": service,
        "route": format!("/v1/route-{}", n % ROUTES),
        "method": "GET",
        "status": status,
        // Spread over 1 to 2,000 ms, so the sketches have many bins.
        "latency_ms": 1.0 + (n.wrapping_mul(7919) % 2_000) as f64 + (n % 7) as f64 / 7.0,
        "timestamp": at,
    }))
    .expect("a valid sample")
}

fn batch(samples: Vec<types::Sample>) -> types::SampleBatch {
    types::SampleBatch { samples }
}

struct Platform {
    performance: Arc<Performance>,
    server: TestServer,
    client: pake_performance_client::Client,
}

async fn start(url: &str) -> Platform {
    let store = pake_registry::Store::open(url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store.clone()).await.expect("registry starts"));
    let instances: Arc<dyn pake_performance::Registry> = Arc::new(registry.snapshot_cell().clone());
    let metrics = pake_performance::PerformanceMetrics::new(pake_observe::Metrics::new("performance"));
    let performance = Performance::start(store, instances, metrics, pake_performance::Options::default())
        .await
        .expect("performance service starts");
    let verifier = pake_tokens::TokenVerifier::hs256(SECRET).expect("secret");
    let server = TestServer::start(pake_performance::router(performance.clone(), verifier)).await.expect("server");
    let token = pake_tokens::TokenIssuer::hs256(SECRET).expect("secret").issue(
        "bench",
        None,
        &["performance:read", "performance:write"],
        Duration::from_secs(3600),
    );
    let client =
        pake_performance_client::Client::new_with_client(&server.url(), conformance::http_client_with_token(&token));
    Platform { performance, server, client }
}

/// Stored sketches of one service and route: rows and bytes.
async fn stored(store: &pake_registry::Store, service: &str, route: &str) -> (i64, i64) {
    match store {
        pake_registry::Store::Sqlite(pool) => sqlx::query_as(
            "SELECT count(*), COALESCE(sum(length(sketch)), 0) FROM perf_sketches WHERE service = $1 AND route = $2",
        )
        .bind(service)
        .bind(route)
        .fetch_one(pool)
        .await
        .expect("sketch sizes"),
        pake_registry::Store::Postgres(pool) => sqlx::query_as(
            "SELECT count(*), COALESCE(sum(octet_length(sketch)), 0)::BIGINT FROM perf_sketches \
             WHERE service = $1 AND route = $2",
        )
        .bind(service)
        .bind(route)
        .fetch_one(pool)
        .await
        .expect("sketch sizes"),
    }
}

async fn measure(backend: Backend, in_process: usize, through_api: usize) {
    let db = TestDatabase::new(backend).await;
    let platform = start(&db.url).await;
    let performance = &platform.performance;

    // In process: batches as the gateway's feed sends them, samples of the last 10 s.
    let batches: Vec<types::SampleBatch> = (0..in_process.div_ceil(BATCH))
        .map(|b| {
            let now = Utc::now();
            batch(
                (0..BATCH)
                    .map(|i| sample("bench-live", b * BATCH + i, now - Span::milliseconds((i % 10_000) as i64)))
                    .collect(),
            )
        })
        .collect();
    let (cpu, started) = (pake_observe::process_cpu_time(), Instant::now());
    let mut ingested = 0;
    for batch in &batches {
        ingested += performance.ingest(batch).await.expect("ingest");
    }
    let (wall, cpu) = (started.elapsed(), pake_observe::process_cpu_time().saturating_sub(cpu));
    println!(
        "{backend:?}: in process: {ingested} samples in {:.2} s: {:.0} samples/s, {:.2} µs CPU per sample",
        wall.as_secs_f64(),
        ingested as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / ingested as f64,
    );

    // Through the API: two producers posting batches over HTTP.
    let batches: Vec<types::SampleBatch> = (0..through_api.div_ceil(BATCH))
        .map(|b| {
            let now = Utc::now();
            batch(
                (0..BATCH)
                    .map(|i| sample("bench-api", b * BATCH + i, now - Span::milliseconds((i % 10_000) as i64)))
                    .collect(),
            )
        })
        .collect();
    let (cpu, started) = (pake_observe::process_cpu_time(), Instant::now());
    let mut producers = tokio::task::JoinSet::new();
    for share in batches.chunks(batches.len().div_ceil(2).max(1)) {
        let (client, share) = (platform.client.clone(), share.to_vec());
        producers.spawn(async move {
            let mut accepted = 0;
            for batch in &share {
                let answer = client.ingest_samples().body(batch.clone()).send().await.expect("samples accepted");
                accepted += answer.into_inner().accepted.get();
            }
            accepted
        });
    }
    let mut accepted = 0;
    while let Some(done) = producers.join_next().await {
        accepted += done.expect("producer");
    }
    let (wall, cpu) = (started.elapsed(), pake_observe::process_cpu_time().saturating_sub(cpu));
    println!(
        "{backend:?}: through the API: {accepted} samples in {:.2} s: {:.0} samples/s, {:.2} µs CPU per sample (client and server)",
        wall.as_secs_f64(),
        accepted as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / accepted.max(1) as f64,
    );

    // One service-route-day: ten samples every 10 s over the last 24 h, in every tier
    // that keeps them.
    let now = Utc::now();
    let day: Vec<types::Sample> = (0..8_640 * 10)
        .map(|n| {
            let mut one = sample("bench-day", n, now - Span::seconds((n / 10) as i64 * 10));
            one.route = Some("/v1/day".parse().expect("route"));
            one
        })
        .collect();
    for chunk in day.chunks(BATCH) {
        performance.ingest(&batch(chunk.to_vec())).await.expect("ingest");
    }
    let (rows, bytes) = stored(performance.store().store(), "bench-day", "/v1/day").await;
    println!(
        "{backend:?}: one service-route-day ({} samples, 3 status classes, every tier): {rows} sketches, {:.1} KiB stored",
        day.len(),
        bytes as f64 / 1024.0
    );

    // A 30-day report: one sample a minute on each of 20 routes for 30 days (the 5 min
    // and 1 h tiers keep what is older than 2 days).
    let month: Vec<types::Sample> = (0..30 * 24 * 60 * ROUTES)
        .map(|n| sample("bench-month", n, now - Span::minutes((n / ROUTES) as i64)))
        .collect();
    for chunk in month.chunks(BATCH) {
        performance.ingest(&batch(chunk.to_vec())).await.expect("ingest");
    }
    let spec: types::SloSpec = serde_json::from_value(serde_json::json!({
        "name": "latency", "service": "bench-month", "objective": "latency", "target": 99.0,
        "latency_threshold_ms": 1500, "window_days": 30,
    }))
    .expect("a valid SLO");
    let slo = performance.create_slo(&spec).await.expect("SLO created");
    let mut times = Vec::new();
    for _ in 0..20 {
        let started = Instant::now();
        let report = performance.slo_report(slo.id, None).await.expect("report");
        times.push(started.elapsed());
        assert!(report.sli.is_some(), "a month of samples gives an SLI");
    }
    times.sort();
    println!(
        "{backend:?}: 30-day SLO report over {} samples: p50 {:.1} ms, max {:.1} ms (20 reports)",
        month.len(),
        times[times.len() / 2].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
    );
    drop(platform.server);
}

fn main() {
    let in_process = env_or("PAKE_BENCH_SAMPLES", 1_000_000);
    let through_api = env_or("PAKE_BENCH_API_SAMPLES", 200_000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        measure(Backend::Sqlite, in_process, through_api).await;
        measure(Backend::Postgres, in_process, through_api).await;
    });
}
