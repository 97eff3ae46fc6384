//! The service-mesh contract against the real registry, served over real HTTP on a
//! loopback port, on a fresh PostgreSQL database and on a fresh SQLite file.

use conformance::support::{Backend, TestDatabase};
use conformance::{Config, ContractSource, Engine, Target, TestServer};
use std::sync::Arc;
use std::time::Duration;

const SECRET: &[u8] = b"conformance-secret-0123456789abcdefgh";

async fn run_against_registry(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = pake_registry::Store::open(&db.url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store).await.expect("registry starts"));
    let verifier = pake_tokens::TokenVerifier::hs256(SECRET).expect("secret");
    let router = pake_registry::router(registry, verifier, pake_observe::Metrics::new("registry"));
    let server = TestServer::start(router).await.expect("server starts");

    let token = pake_tokens::TokenIssuer::hs256(SECRET).expect("secret").issue(
        "conformance",
        None,
        &["mesh:read", "mesh:write"],
        Duration::from_secs(3600),
    );
    let contract = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/service-mesh.yaml");
    let engine = Engine::new(ContractSource::file(contract), Target::new(server.url()).with_token(token).or_from_env())
        .expect("the contract loads");
    // A blocking query with a valid index waits up to its wait time by design.
    let config = Config::default().leave_out_parameter("discoverService.index").with_env().expect("valid settings");
    let report = engine.run(&config).await;
    report.assert_ok();
    report.require_positive_coverage();
    report.require_property_coverage();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_keeps_the_service_mesh_contract_on_postgres() {
    run_against_registry(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_keeps_the_service_mesh_contract_on_sqlite() {
    run_against_registry(Backend::Sqlite).await;
}
