//! A short run of the whole harness against an in-process platform (registry and gateway
//! over one store, as `pake serve` runs them): the fleet is set up through the generated
//! clients, fifty users run every transaction, and every request succeeds. Correctness,
//! not latency: the 1000-user verdict is `cargo xtask load`'s.

use conformance::TestServer;
use conformance::support::{Backend, TestDatabase};
use std::sync::Arc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_users_run_every_transaction_without_an_error() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let store = pake_registry::Store::open(&db.url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store.clone()).await.expect("registry starts"));
    let (keys, _) = pake_tokens::KeyRing::generate_ed25519().expect("a key");
    let registry_server = TestServer::start(pake_registry::router(
        registry.clone(),
        keys.verifier(),
        pake_observe::Metrics::new("registry"),
    ))
    .await
    .expect("registry serves");
    let mut options = pake_gateway::GatewayOptions::new(keys.clone());
    // One load generator's address stands for fifty users' sign-ins.
    options.token_requests_per_second = 1000;
    let gateway =
        pake_gateway::Gateway::start(store, registry.snapshot_cell().clone(), options).await.expect("gateway starts");
    let gateway_server =
        TestServer::serve(|listener, stop| gateway.front().serve(listener, stop)).await.expect("gateway serves");

    let admin = keys.issuer().issue(
        "load-smoke",
        Some("pake"),
        &["gateway:admin", "mesh:read", "mesh:write"],
        Duration::from_secs(600),
    );
    let out_dir = std::env::temp_dir().join(format!("pake-load-smoke-{}", uuid::Uuid::new_v4().simple()));
    let mut run = load::Options::new(&gateway_server.url(), &registry_server.url(), load::Admin::Token(admin));
    run.users = 50;
    run.hatch_rate = 50;
    run.run_time = Duration::from_secs(10);
    run.think = (Duration::from_millis(100), Duration::from_millis(300));
    run.fleet.latency = Duration::from_millis(5);
    run.fleet.jitter = Duration::from_millis(5);
    run.out_dir = out_dir.clone();
    let summary = load::run(&run).await.expect("the run completes");

    assert_eq!(summary.overall.failures, 0, "every request succeeds: {:?}", summary.overall.failed_statuses);
    for name in load::scenario::TRANSACTIONS {
        let row = summary.transactions.iter().find(|t| t.name == name);
        assert!(row.is_some_and(|t| t.requests > 0), "{name} ran: {:?}", summary.transactions);
    }
    let tokens = summary.transactions.iter().find(|t| t.name == "token").map(|t| t.requests);
    assert_eq!(tokens, Some(50), "each user signs in once");
    assert!(summary.requests > 500, "{} requests", summary.requests);
    assert!(
        summary.cache_hit_rate.is_some_and(|rate| rate > 0.2),
        "the hot set is served from the cache: {:?}",
        summary.cache_hit_rate
    );
    for report in ["report.html", "report.json", "report.md", "summary.json", "summary.md"] {
        let written = std::fs::metadata(out_dir.join(report)).map(|m| m.len()).unwrap_or(0);
        assert!(written > 0, "{report} is written");
    }
    let _ = std::fs::remove_dir_all(out_dir);
}
