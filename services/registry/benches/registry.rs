//! Registry benchmark: registration throughput and discovery latency, on PostgreSQL and on
//! the embedded SQLite backend, through the real HTTP API and the generated client.
//!
//! `cargo bench -p pake-registry` (set `PAKE_BENCH_SERVICES` / `PAKE_BENCH_DISCOVERIES` to
//! change the sizes). Client and server share this machine's cores.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};
use support::{Backend, TestDatabase, TestRegistry, instance, registration};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Numbers {
    registrations_per_second: f64,
    discovery_p50: Duration,
    discovery_p99: Duration,
    discoveries_per_second: f64,
}

async fn measure(backend: Backend, services: usize, discoveries: usize, concurrency: usize) -> Numbers {
    let db = TestDatabase::new(backend).await;
    let registry = TestRegistry::start(&db.url).await;

    // Registrations: `concurrency` clients registering distinct services.
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let client = registry.client();
        workers.spawn(async move {
            let mut ids = Vec::new();
            for n in (worker..services).step_by(concurrency) {
                let service = client.register_service().body(registration(&format!("bench-{n}"))).send().await;
                ids.push(service.expect("registration succeeds").into_inner().id);
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(done) = workers.join_next().await {
        ids.extend(done.expect("worker"));
    }
    let registrations_per_second = services as f64 / started.elapsed().as_secs_f64();

    // Three instances each for the first 50 services, then discovery of those services.
    let client = registry.client();
    let targets: Vec<_> = ids.iter().take(50).copied().collect();
    for (n, id) in targets.iter().enumerate() {
        for port in 0..3u16 {
            client.register_instance().service_id(*id).body(instance(10_000 + port, 300, 600)).send().await.unwrap();
        }
        let _ = n;
    }
    let names: Vec<String> = {
        let snapshot = registry.registry.snapshot();
        targets.iter().map(|id| snapshot.service(*id).unwrap().service.name.to_string()).collect()
    };
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let client = registry.client();
        let names = names.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            for n in (worker..discoveries).step_by(concurrency) {
                let begun = Instant::now();
                let found = client.discover_service().service_name(names[n % names.len()].clone()).send().await;
                assert_eq!(found.expect("discovery succeeds").into_inner().instances.len(), 3);
                latencies.push(begun.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = workers.join_next().await {
        latencies.extend(done.expect("worker"));
    }
    let discoveries_per_second = discoveries as f64 / started.elapsed().as_secs_f64();
    latencies.sort();
    Numbers {
        registrations_per_second,
        discovery_p50: percentile(&latencies, 50.0),
        discovery_p99: percentile(&latencies, 99.0),
        discoveries_per_second,
    }
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing else we need.
    let services = env_or("PAKE_BENCH_SERVICES", 2000);
    let discoveries = env_or("PAKE_BENCH_DISCOVERIES", 20_000);
    let concurrency = env_or("PAKE_BENCH_CONCURRENCY", 16);
    println!(
        "registry benchmark: {services} registrations, {discoveries} discoveries, {concurrency} concurrent clients \
         (client and server share this machine's {} cores)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "{:<10} {:>16} {:>14} {:>14} {:>16}",
        "backend", "registrations/s", "discovery p50", "discovery p99", "discoveries/s"
    );
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let numbers = measure(backend, services, discoveries, concurrency).await;
        println!(
            "{:<10} {:>16.0} {:>14.2?} {:>14.2?} {:>16.0}",
            format!("{backend:?}").to_lowercase(),
            numbers.registrations_per_second,
            numbers.discovery_p50,
            numbers.discovery_p99,
            numbers.discoveries_per_second
        );
    }
}
