//! What the registry's integration tests and benchmark share: a registry served on a
//! loopback port over a fresh database, and typed clients with tokens.

// Shared by the test binary and the benchmark, which each use part of it.
#![allow(dead_code)]

pub use conformance::support::{Backend, TestDatabase};
use conformance::{TestServer, http_client_with_token};
use pake_mesh_client::Client;
use pake_registry::{Registry, Store};
use pake_tokens::TokenIssuer;
use std::sync::Arc;
use std::time::Duration;

pub const SECRET: &[u8] = b"registry-tests-secret-0123456789abcdef";

/// A registry served on a loopback port.
pub struct TestRegistry {
    pub registry: Arc<Registry>,
    pub server: TestServer,
}

impl TestRegistry {
    pub async fn start(url: &str) -> TestRegistry {
        let store = Store::open(url).await.expect("store opens");
        let registry = Arc::new(Registry::start(store).await.expect("registry starts"));
        let verifier = pake_tokens::TokenVerifier::hs256(SECRET).expect("secret");
        let router = pake_registry::router(registry.clone(), verifier, pake_observe::Metrics::new("registry"));
        let server = TestServer::start(router).await.expect("server starts");
        TestRegistry { registry, server }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A client whose token has every registry scope.
    pub fn client(&self) -> Client {
        Client::new_with_client(&self.url(), http_client_with_token(&token(&["mesh:read", "mesh:write"])))
    }

    pub fn http(&self) -> reqwest::Client {
        http_client_with_token(&token(&["mesh:read", "mesh:write"]))
    }
}

pub fn token(scopes: &[&str]) -> String {
    TokenIssuer::hs256(SECRET).expect("secret").issue("tester", Some("test"), scopes, Duration::from_secs(600))
}

pub fn registration(name: &str) -> pake_mesh_client::types::ServiceRegistration {
    serde_json::from_value(serde_json::json!({"name": name, "version": "1.0.0", "tags": ["research"]}))
        .expect("a valid registration")
}

pub fn instance(port: u16, ttl_seconds: u64, critical_seconds: u64) -> pake_mesh_client::types::InstanceRegistration {
    serde_json::from_value(serde_json::json!({
        "address": "127.0.0.1", "port": port, "ttl_seconds": ttl_seconds,
        "deregister_critical_after_seconds": critical_seconds, "tags": ["stable"], "zone": "zone-a"
    }))
    .expect("a valid instance")
}
