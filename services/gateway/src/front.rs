//! The gateway's HTTP front: accepts connections and serves them with hyper, sending each
//! request either to the gateway's own API or to the data plane.
//!
//! A request whose path is one of the contract's ([`pake_gateway_server::PATHS`]) goes to
//! the generated axum router with its layers (metrics, token-endpoint throttling); any
//! other request goes straight to [`proxy::handle`], without the router's matching,
//! boxing and middleware in between. That is the same split the router's fallback made,
//! at a fraction of the per-request work on the path that carries the traffic.

use crate::proxy::{self, DataPlane};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::Service;

/// How long a graceful shutdown waits for requests in flight before closing anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway's request entry point; cheap to clone, one per worker thread or listener.
#[derive(Clone)]
pub struct Front {
    inner: Arc<Inner>,
}

struct Inner {
    api: axum::Router,
    api_paths: matchit::Router<()>,
    plane: Arc<DataPlane>,
}

impl Front {
    /// `api` serves the gateway's contract, whose paths are `api_paths`.
    pub(crate) fn new(api: axum::Router, api_paths: &[&str], plane: Arc<DataPlane>) -> Front {
        let mut paths = matchit::Router::new();
        for path in api_paths {
            paths.insert(*path, ()).unwrap_or_else(|error| panic!("contract path {path} does not route: {error}"));
        }
        Front { inner: Arc::new(Inner { api, api_paths: paths, plane }) }
    }

    /// Answers one request from `client`.
    pub async fn call(&self, request: Request<Body>, client: SocketAddr) -> Response<Body> {
        let inner = &self.inner;
        if inner.api_paths.at(request.uri().path()).is_ok() {
            let mut request = request;
            request.extensions_mut().insert(ConnectInfo(client));
            // The router is always ready and never fails (its error type is Infallible).
            let Ok(response) = inner.api.clone().call(request).await;
            response
        } else {
            proxy::handle(&inner.plane, request, Some(client)).await
        }
    }

    /// Serves connections from `listener` (HTTP/1.1, and HTTP/2 for clients that open
    /// with its preface) until `shutdown` completes; then stops accepting and lets the
    /// requests in flight finish, for at most [`DRAIN_TIMEOUT`].
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let builder = auto::Builder::new(TokioExecutor::new());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (stream, client) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_failed(&error).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            let front = self.clone();
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let front = front.clone();
                async move { Ok::<_, Infallible>(front.call(request.map(Body::new), client).await) }
            });
            let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, %client, "client connection ended with an error");
                }
            });
        }
        drop(listener);
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(DRAIN_TIMEOUT) => {
                tracing::warn!("requests still in flight after {} s; closing their connections", DRAIN_TIMEOUT.as_secs());
            }
        }
        Ok(())
    }
}

/// Accepting fails for a single connection (reset before it was taken) or for the
/// process (out of file descriptors): the first is skipped, the second waited out rather
/// than spun on.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
