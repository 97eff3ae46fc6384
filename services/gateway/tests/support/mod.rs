//! What the gateway's integration tests share: real upstream servers on loopback ports,
//! and a platform (registry and gateway over one store) set up through the generated
//! clients.
#![allow(dead_code)]

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderMap;
use axum::routing::any;
use conformance::support::{Backend, TestDatabase};
use conformance::{TestServer, http_client_with_token};
use pake_gateway::{Gateway, GatewayOptions};
use pake_registry::{Registry, Store};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use uuid::Uuid;

pub const SECRET: &[u8] = b"gateway-tests-secret-0123456789abcdef";

/// Embedded policies (no Redis): these tests are about the data plane.
pub fn options() -> pake_gateway::GatewayOptions {
    pake_gateway::GatewayOptions::new(pake_tokens::KeyRing::hs256(SECRET).unwrap())
}

pub fn token() -> String {
    pake_tokens::TokenIssuer::hs256(SECRET).unwrap().issue(
        "tester",
        None,
        &["mesh:read", "mesh:write", "gateway:admin"],
        Duration::from_secs(600),
    )
}

/// How a test upstream answers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Ok,
    Fail,
    Slow(Duration),
    DieMidResponse,
}

/// A real HTTP upstream on a loopback port that counts its requests and echoes what it saw.
pub struct Upstream {
    pub server: TestServer,
    pub hits: Arc<AtomicUsize>,
    pub healthy: Arc<AtomicBool>,
}

impl Upstream {
    pub async fn start(name: &'static str, behaviour: Behaviour) -> Upstream {
        let hits = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(behaviour != Behaviour::Fail));
        let (counter, health) = (hits.clone(), healthy.clone());
        let router = Router::new().fallback(any(move |request: Request| {
            let (counter, health) = (counter.clone(), health.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                if let Behaviour::Slow(delay) = behaviour {
                    tokio::time::sleep(delay).await;
                }
                if behaviour == Behaviour::DieMidResponse {
                    // Headers and a first chunk go out; then the upstream dies.
                    return axum::response::Response::new(Body::from_stream(dying_stream::DyingStream::new()));
                }
                if !health.load(Ordering::SeqCst) {
                    return axum::response::Response::builder().status(503).body(Body::from("down")).unwrap();
                }
                let echo = json!({
                    "name": name,
                    "version": format!("{:?}", request.version()),
                    "path": request.uri().to_string(),
                    "headers": headers_json(request.headers()),
                });
                axum::response::Response::new(Body::from(echo.to_string()))
            }
        }));
        Upstream { server: TestServer::start(router).await.unwrap(), hits, healthy }
    }

    pub fn port(&self) -> u16 {
        self.server.addr.port()
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A body that sends one chunk, waits, then fails: an upstream dying mid-response.
mod dying_stream {
    use futures_core::Stream;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    pub struct DyingStream {
        sent: bool,
        death: Pin<Box<tokio::time::Sleep>>,
    }

    impl DyingStream {
        pub fn new() -> DyingStream {
            DyingStream { sent: false, death: Box::pin(tokio::time::sleep(Duration::from_millis(200))) }
        }
    }

    impl Stream for DyingStream {
        type Item = Result<&'static str, std::io::Error>;
        fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            if !self.sent {
                self.sent = true;
                return Poll::Ready(Some(Ok("partial ")));
            }
            match self.death.as_mut().poll(context) {
                Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::other("the upstream died")))),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

pub fn headers_json(headers: &HeaderMap) -> Value {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        map.insert(name.to_string(), json!(value.to_str().unwrap_or("")));
    }
    Value::Object(map)
}

/// Registry and gateway over one store, as `pake serve` runs them.
pub struct Platform {
    pub db: TestDatabase,
    pub registry_server: TestServer,
    pub gateway_server: TestServer,
    pub gateway: Gateway,
    pub mesh: pake_mesh_client::Client,
    pub admin: pake_gateway_client::Client,
    pub http: reqwest::Client,
}

impl Platform {
    pub async fn start(backend: Backend) -> Platform {
        Platform::start_with(backend, options()).await
    }

    pub async fn start_with(backend: Backend, options: GatewayOptions) -> Platform {
        let db = TestDatabase::new(backend).await;
        let store = Store::open(&db.url).await.unwrap();
        let registry = Arc::new(Registry::start(store.clone()).await.unwrap());
        let verifier = pake_tokens::TokenVerifier::hs256(SECRET).unwrap();
        let registry_server = TestServer::start(pake_registry::router(
            registry.clone(),
            verifier.clone(),
            pake_observe::Metrics::new("registry"),
        ))
        .await
        .unwrap();
        let gateway = Gateway::start(store, registry.snapshot_cell().clone(), options).await.unwrap();
        let gateway_server = TestServer::serve(|listener, stop| gateway.front().serve(listener, stop)).await.unwrap();
        let authed = http_client_with_token(&token());
        Platform {
            db,
            mesh: pake_mesh_client::Client::new_with_client(&registry_server.url(), authed.clone()),
            admin: pake_gateway_client::Client::new_with_client(&gateway_server.url(), authed),
            registry_server,
            gateway_server,
            gateway,
            http: reqwest::Client::builder().pool_max_idle_per_host(16).build().unwrap(),
        }
    }

    /// Registers a service with a traffic policy, and instances at `ports` (weights given).
    pub async fn service(
        &self,
        name: &str,
        balancing: &str,
        instances: &[(u16, u64)],
        breaker: Value,
    ) -> (Uuid, Vec<Uuid>) {
        let outliers = json!({"consecutive_5xx": 1000, "interval_seconds": 10, "base_ejection_seconds": 1, "max_ejection_percent": 50});
        self.service_with(name, balancing, instances, breaker, outliers).await
    }

    /// Like [`Platform::service`], with outlier detection settings.
    pub async fn service_with(
        &self,
        name: &str,
        balancing: &str,
        instances: &[(u16, u64)],
        breaker: Value,
        outliers: Value,
    ) -> (Uuid, Vec<Uuid>) {
        let registration: pake_mesh_client::types::ServiceRegistration =
            serde_json::from_value(json!({"name": name, "version": "1.0.0"})).unwrap();
        let service = self.mesh.register_service().body(registration).send().await.unwrap().into_inner();
        let policy: pake_mesh_client::types::TrafficPolicySpec = serde_json::from_value(json!({
            "load_balancing": balancing, "connect_timeout_ms": 1000, "request_timeout_ms": 10000,
            "retries": {"max_attempts": 0, "per_try_timeout_ms": 1000, "retry_on": ["connect_failure"], "budget_percent": 20},
            "circuit_breaker": breaker,
            "outlier_detection": outliers
        }))
        .unwrap();
        self.mesh.replace_traffic_policy().service_id(service.id).body(policy).send().await.unwrap();
        let mut ids = Vec::new();
        for (port, weight) in instances {
            let instance: pake_mesh_client::types::InstanceRegistration = serde_json::from_value(
                json!({"address": "127.0.0.1", "port": port, "weight": weight, "ttl_seconds": 60}),
            )
            .unwrap();
            ids.push(
                self.mesh
                    .register_instance()
                    .service_id(service.id)
                    .body(instance)
                    .send()
                    .await
                    .unwrap()
                    .into_inner()
                    .id,
            );
        }
        (service.id, ids)
    }

    /// Registers a service whose one instance, at `port`, speaks `scheme` (h2c, https).
    pub async fn service_over(&self, name: &str, port: u16, scheme: &str) {
        let (service, _) = self.service(name, "round_robin", &[], lenient_breaker()).await;
        let instance: pake_mesh_client::types::InstanceRegistration =
            serde_json::from_value(json!({"address": "127.0.0.1", "port": port, "scheme": scheme, "ttl_seconds": 60}))
                .unwrap();
        self.mesh.register_instance().service_id(service).body(instance).send().await.unwrap();
    }

    pub async fn route(&self, spec: Value) -> Uuid {
        let spec: pake_gateway_client::types::RouteSpec = serde_json::from_value(spec).unwrap();
        self.admin.create_route().body(spec).send().await.unwrap().into_inner().id
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(format!("{}{path}", self.gateway_server.url())).send().await.unwrap()
    }
}

pub fn lenient_breaker() -> Value {
    json!({"failure_threshold": 1000, "failure_rate_threshold": 1.0, "minimum_requests": 100000,
           "rate_window_seconds": 60, "open_seconds": 1, "half_open_max_requests": 1})
}

/// A bare HTTP/1.1 upstream that counts the connections it accepts. With `close_after_each`
/// it closes every connection right after its first response without announcing it, as an
/// upstream whose keep-alive timeout expires between two requests does.
pub struct RawUpstream {
    pub port: u16,
    pub connections: Arc<AtomicUsize>,
    pub requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    pub async fn start(close_after_each: bool) -> RawUpstream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (accepted, answered) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let answered = answered.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Requests here have no body: one ends at the blank line.
                        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buffer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buffer.drain(..end);
                        answered.fetch_add(1, Ordering::SeqCst);
                        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-type: text/plain\r\n\r\nraw";
                        if stream.write_all(response).await.is_err() || close_after_each {
                            return;
                        }
                    }
                });
            }
        });
        RawUpstream { port, connections, requests, task }
    }
}
