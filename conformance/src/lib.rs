//! Drives real PAKE servers over real HTTP through the generated clients and checks
//! that they keep their contracts.
//!
//! This library holds what the test binaries share: serving a router on an ephemeral
//! loopback port and building HTTP clients that carry a bearer token, and the
//! contract-generic conformance [`Engine`], which reads an OpenAPI 3.1 contract at test
//! time, generates valid and invalid requests from its schemas with proptest, sends them
//! to a real server and checks every answer against the contract.
//!
//! ```no_run
//! # async fn example(url: String) {
//! use conformance::{Config, ContractSource, Engine, Target};
//! let target = Target::new(url).with_token("a token with every scope").or_from_env();
//! let engine = Engine::new(ContractSource::file("openapi/service-mesh.yaml"), target).expect("contract loads");
//! let report = engine.run(&Config::from_env().expect("valid PAKE_CONFORMANCE_* variables")).await;
//! report.assert_ok();
//! report.require_positive_coverage();
//! report.require_property_coverage();
//! # }
//! ```

pub mod check;
pub mod contract;
pub mod coverage;
pub mod engine;
pub mod generate;
pub mod mutate;
pub mod report;
pub mod request;
pub mod schema;
pub mod stateful;
pub mod support;

pub use contract::{Contract, ContractError, Operation};
pub use engine::{Config, ConfigError, ContractSource, Engine, EngineError, Target};
pub use report::{CaseKind, Check, Coverage, Failure, PropertyCoverage, Report};
pub use stateful::{Reference, Resource};

use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running on `127.0.0.1:0` for the length of a test; stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Serves `router` on an ephemeral loopback port.
    pub async fn start(router: Router) -> std::io::Result<TestServer> {
        TestServer::serve(|listener, stopped| async move {
            // Handlers see the caller's address, as under `pake serve`.
            let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, service).with_graceful_shutdown(stopped).await
        })
        .await
    }

    /// Runs `serve` on an ephemeral loopback port: it gets the listener and a future that
    /// completes when the test stops the server, and serves until then.
    pub async fn serve<F, S>(serve: F) -> std::io::Result<TestServer>
    where
        F: FnOnce(tokio::net::TcpListener, Pin<Box<dyn Future<Output = ()> + Send>>) -> S,
        S: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let serving = serve(
            listener,
            Box::pin(async {
                let _ = stopped.await;
            }),
        );
        let task = tokio::spawn(async move {
            if let Err(error) = serving.await {
                eprintln!("test server stopped with an error: {error}");
            }
        });
        Ok(TestServer { addr, shutdown: Some(shutdown), task: Some(task) })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// An HTTP client that sends `Authorization: Bearer <token>` on every request, for use
/// with a generated client's `new_with_client`.
pub fn http_client_with_token(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("token is header-safe");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().default_headers(headers).build().expect("http client builds")
}
