//! The gateway contract against the real gateway (with the registry beside it, as `pake
//! serve` runs them), served over real HTTP on a loopback port: embedded (SQLite, rate
//! limits and cache in process) and shared (PostgreSQL, with Redis under a key prefix of
//! its own).

use conformance::support::{Backend, TestDatabase};
use conformance::{Config, ContractSource, Engine, Target, TestServer};
use std::sync::Arc;
use std::time::Duration;

async fn run_against_gateway(backend: Backend, redis: bool) {
    let db = TestDatabase::new(backend).await;
    let store = pake_registry::Store::open(&db.url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store.clone()).await.expect("registry starts"));
    let (keys, _) = pake_tokens::KeyRing::generate_ed25519().expect("a key");
    let mut options = pake_gateway::GatewayOptions::new(keys.clone());
    let prefix = conformance::support::RedisPrefix::new("conformance");
    if redis {
        options.redis_url = Some(prefix.url.clone());
        options.redis_prefix = prefix.prefix.clone();
    }
    let gateway =
        pake_gateway::Gateway::start(store, registry.snapshot_cell().clone(), options).await.expect("gateway starts");
    let server =
        TestServer::serve(|listener, stop| gateway.front().serve(listener, stop)).await.expect("server starts");

    let token = keys.issuer().issue("conformance", Some("pake"), &["gateway:admin"], Duration::from_secs(3600));
    let contract = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/api-gateway.yaml");
    let engine = Engine::new(ContractSource::file(contract), Target::new(server.url()).with_token(token).or_from_env())
        .expect("the contract loads");
    let config = Config::default()
        // Generated credentials name no real client (401), and many of them from one
        // address meet the token endpoint's own rate limit (429): both are the contract's
        // answers to valid requests.
        .accept_for_positive("issueToken", 401)
        .accept_for_positive("issueToken", 429)
        // A generated rate_limit_policy_id names no policy, and generated routes may sit on
        // a path the gateway keeps for itself (/v1/admin…): 422 says which.
        .accept_for_positive("createRoute", 422)
        .accept_for_positive("updateRoute", 422)
        .accept_for_positive("createApiClient", 422)
        .accept_for_positive("updateApiClient", 422)
        .with_env()
        .expect("valid settings");
    let report = engine.run(&config).await;
    report.assert_ok();
    report.require_positive_coverage();
    report.require_property_coverage();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_keeps_its_contract_embedded() {
    run_against_gateway(Backend::Sqlite, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_keeps_its_contract_on_postgres_and_redis() {
    run_against_gateway(Backend::Postgres, true).await;
}
