//! `https` instances: real TLS servers on loopback ports with certificates from a CA made
//! for the test, which the gateway trusts through its CA-file option. What is pinned down:
//! the request arrives over TLS (HTTP/2 when the instance offers it by ALPN, else
//! HTTP/1.1), and an instance whose certificate is for another name, or from a CA the
//! gateway does not trust, gets no request: the client receives a clear 502.

mod support;

use axum::body::Body;
use conformance::support::Backend;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use support::*;
use tokio::net::TcpListener;

/// A certificate authority made for one test.
struct Authority {
    certificate: rcgen::Certificate,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        Authority { certificate, issuer: Issuer::new(params, key) }
    }

    /// A server certificate for `names` (DNS names or IP addresses) and its key.
    fn issue(&self, names: &[&str]) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::new(names.iter().map(|name| name.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        (certificate.der().clone(), PrivatePkcs8KeyDer::from(key.serialize_der()).into())
    }
}

/// A TLS server on a loopback port offering `alpn`, answering every request with what it
/// saw: the HTTP version, the target and the forwarding headers.
struct TlsUpstream {
    port: u16,
    hits: Arc<AtomicUsize>,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsUpstream {
    async fn start(identity: (CertificateDer<'static>, PrivateKeyDer<'static>), alpn: &[&[u8]]) -> TlsUpstream {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![identity.0], identity.1)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hits, handshakes) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (counter, completed) = (hits.clone(), handshakes.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, counter, completed) = (acceptor.clone(), counter.clone(), completed.clone());
                tokio::spawn(async move {
                    // A client refusing the certificate ends the handshake: nothing to serve.
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    completed.fetch_add(1, Ordering::SeqCst);
                    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let echo = json!({
                            "version": format!("{:?}", request.version()),
                            "path": request.uri().path(),
                            "forwarded_proto": request.headers().get("x-forwarded-proto").and_then(|v| v.to_str().ok()),
                            "request_id": request.headers().get("x-request-id").and_then(|v| v.to_str().ok()),
                        });
                        async move { Ok::<_, std::convert::Infallible>(hyper::Response::new(Body::from(echo.to_string()))) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        TlsUpstream { port, hits, handshakes, task }
    }
}

fn ca_file(authority: &Authority) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("pake-test-ca-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&path, authority.certificate.pem()).unwrap();
    path
}

async fn route(platform: &Platform, name: &str) {
    platform
        .route(json!({"name": name, "path_prefix": format!("/{name}"), "methods": ["GET"], "api_version": "v1",
                      "service": name, "strip_prefix": true, "retry": {"max_attempts": 0}}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_instances_are_reached_over_verified_tls() {
    let trusted = Authority::new("PAKE test CA");
    let stranger = Authority::new("a CA nobody trusts");
    let h2 = TlsUpstream::start(trusted.issue(&["127.0.0.1"]), &[b"h2", b"http/1.1"]).await;
    let h1 = TlsUpstream::start(trusted.issue(&["127.0.0.1", "localhost"]), &[b"http/1.1"]).await;
    let misnamed = TlsUpstream::start(trusted.issue(&["other.example"]), &[b"h2"]).await;
    let untrusted = TlsUpstream::start(stranger.issue(&["127.0.0.1"]), &[b"h2"]).await;

    let ca = ca_file(&trusted);
    let mut options = options();
    options.upstream_ca_file = Some(ca.clone());
    let platform = Platform::start_with(Backend::Sqlite, options).await;
    for (name, upstream) in [("h2", &h2), ("h1", &h1), ("misnamed", &misnamed), ("untrusted", &untrusted)] {
        platform.service_over(name, upstream.port, "https").await;
        route(&platform, name).await;
    }

    for (name, version) in [("h2", "HTTP/2.0"), ("h1", "HTTP/1.1")] {
        for n in 0..3 {
            let response = platform.get(&format!("/v1/{name}/item/{n}")).await;
            assert_eq!(response.status().as_u16(), 200, "{name}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["version"], version, "{name}: {body}");
            assert_eq!(body["path"], format!("/item/{n}"), "{name}: {body}");
            assert_eq!(body["forwarded_proto"], "http", "the client's scheme, not the instance's: {body}");
            assert!(body["request_id"].is_string(), "{body}");
        }
    }
    assert_eq!((h2.hits.load(Ordering::SeqCst), h1.hits.load(Ordering::SeqCst)), (3, 3));
    assert_eq!(h2.handshakes.load(Ordering::SeqCst), 1, "one TLS connection, kept alive and multiplexed");

    for (name, upstream) in [("misnamed", &misnamed), ("untrusted", &untrusted)] {
        let response = platform.get(&format!("/v1/{name}/secret")).await;
        assert_eq!(response.status().as_u16(), 502, "{name}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "bad_gateway", "{name}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(name) && message.contains("TLS"), "{name}: {body}");
        assert_eq!(upstream.hits.load(Ordering::SeqCst), 0, "{name}: no request went to an unverified instance");
        assert_eq!(upstream.handshakes.load(Ordering::SeqCst), 0, "{name}");
    }

    // The failures are counted by kind at /metrics.
    let metrics = platform.get("/metrics").await.text().await.unwrap();
    let tls_failures = metrics.lines().filter(|line| line.contains("outcome=\"tls\"")).count();
    assert!(tls_failures >= 2, "one series per failing service:\n{metrics}");
    let _ = std::fs::remove_file(ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_ca_file_an_internal_ca_is_not_trusted() {
    let internal = Authority::new("internal CA");
    let upstream = TlsUpstream::start(internal.issue(&["127.0.0.1"]), &[b"h2", b"http/1.1"]).await;
    let platform = Platform::start(Backend::Sqlite).await;
    platform.service_over("internal", upstream.port, "https").await;
    route(&platform, "internal").await;
    let response = platform.get("/v1/internal/x").await;
    assert_eq!(response.status().as_u16(), 502);
    assert_eq!(upstream.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_gateway_with_an_unreadable_ca_file_does_not_start() {
    let mut options = options();
    options.upstream_ca_file = Some(std::env::temp_dir().join("pake-no-such-ca.pem"));
    let db = conformance::support::TestDatabase::new(Backend::Sqlite).await;
    let store = pake_registry::Store::open(&db.url).await.unwrap();
    let registry = pake_registry::Registry::start(store.clone()).await.unwrap();
    let started = pake_gateway::Gateway::start(store, registry.snapshot_cell().clone(), options).await;
    let error = started.err().expect("the gateway started with a CA file it cannot read").to_string();
    assert!(error.contains("configuration") && error.contains("pake-no-such-ca.pem"), "{error}");
}
