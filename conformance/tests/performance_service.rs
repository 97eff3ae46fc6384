//! The performance contract against the real performance service (with the registry
//! beside it, as `pake serve` runs them), served over real HTTP on a loopback port, on a
//! fresh PostgreSQL database and on a fresh SQLite file.

use conformance::support::{Backend, TestDatabase};
use conformance::{Config, ContractSource, Engine, Target, TestServer};
use std::sync::Arc;
use std::time::Duration;

const SECRET: &[u8] = b"conformance-secret-0123456789abcdefgh";

async fn run_against_performance(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = pake_registry::Store::open(&db.url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store.clone()).await.expect("registry starts"));
    let instances: Arc<dyn pake_performance::Registry> = Arc::new(registry.snapshot_cell().clone());
    let metrics = pake_performance::PerformanceMetrics::new(pake_observe::Metrics::new("performance"));
    let performance =
        pake_performance::Performance::start(store, instances, metrics, pake_performance::Options::default())
            .await
            .expect("performance service starts");
    let verifier = pake_tokens::TokenVerifier::hs256(SECRET).expect("secret");
    let server = TestServer::start(pake_performance::router(performance, verifier)).await.expect("server starts");

    let token = pake_tokens::TokenIssuer::hs256(SECRET).expect("secret").issue(
        "conformance",
        None,
        &["performance:read", "performance:write"],
        Duration::from_secs(3600),
    );
    let contract = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/performance.yaml");
    let engine = Engine::new(ContractSource::file(contract), Target::new(server.url()).with_token(token).or_from_env())
        .expect("the contract loads");
    let config = Config::default()
        // Rules beyond the schemas, each answered 422 naming the field: a latency SLO
        // without a threshold, a 100 % target (no error budget), label keys outside
        // [a-z0-9_.-], a policy without targets or with min above max, samples stamped
        // far in the future or past the 90 days kept, and a benchmark against a service
        // the registry does not know (generated names never are registered).
        .accept_for_positive("createSlo", 422)
        .accept_for_positive("replaceSlo", 422)
        .accept_for_positive("createAutoscalingPolicy", 422)
        .accept_for_positive("replaceAutoscalingPolicy", 422)
        .accept_for_positive("ingestSamples", 422)
        .accept_for_positive("startBenchmark", 422)
        // A generated `at` is as likely to lie in the future as not: 400 says so.
        .accept_for_positive("getSloReport", 400)
        .with_env()
        .expect("valid settings");
    let report = engine.run(&config).await;
    println!("{}", report.coverage_table());
    report.assert_ok();
    report.require_positive_coverage();
    // startBenchmark cannot create a benchmark yet (the service has no load generator and
    // answers 503 after checking the request), so nothing it is sent can be read back.
    report.require_property_coverage_except(&["startBenchmark"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_performance_service_keeps_its_contract_on_postgres() {
    run_against_performance(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_performance_service_keeps_its_contract_on_sqlite() {
    run_against_performance(Backend::Sqlite).await;
}
