//! The gateway's HTTP front: accepts connections and serves them with hyper, sending each
//! request either to the gateway's own API or to the data plane.
//!
//! A request whose path is one of the contract's ([`pake_gateway_server::PATHS`]) goes to
//! the generated axum router with its layers (metrics, token-endpoint throttling); any
//! other request goes straight to [`proxy::handle`], without the router's matching,
//! boxing and middleware in between. That is the same split the router's fallback made,
//! at a fraction of the per-request work on the path that carries the traffic.

use crate::h1;
use crate::proxy::{self, DataPlane};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::Service;

/// How long a graceful shutdown waits for requests in flight before closing anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway's request entry point; cheap to clone, one per worker thread or listener.
#[derive(Clone)]
pub struct Front {
    inner: Arc<Inner>,
}

struct Inner {
    builder: auto::Builder<TokioExecutor>,
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // The same bounds as the gateway's own path: a head must arrive in time, and be of a
        // sane size (hyper answers 431 beyond its read buffer).
        builder.http1().timer(TokioTimer::new()).header_read_timeout(h1::HEAD_TIMEOUT).max_buf_size(h1::HEAD_LIMIT);
        Front { inner: Arc::new(Inner { builder, api, api_paths: paths, plane }) }
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

    /// Serves connections from `listener` until `shutdown` completes; then stops
    /// accepting and lets the requests in flight finish, for at most [`DRAIN_TIMEOUT`].
    ///
    /// Each connection starts on the gateway's own HTTP/1.1 path ([`h1`]) and moves to
    /// hyper (HTTP/1.1, and HTTP/2 for clients that open with its preface) at the first
    /// request that path does not take.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        let (stopping, stop) = watch::channel(false);
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
            tokio::spawn(self.clone().connection(stream, client, stop.clone()));
        }
        drop(listener);
        drop(stop);
        // Every connection holds a receiver; closed() completes when the last one is done.
        let _ = stopping.send(true);
        tokio::select! {
            () = stopping.closed() => {}
            () = tokio::time::sleep(DRAIN_TIMEOUT) => {
                tracing::warn!("requests still in flight after {} s; closing their connections", DRAIN_TIMEOUT.as_secs());
            }
        }
        Ok(())
    }

    /// Serves one client connection until it ends or, between requests, shutdown starts.
    async fn connection(self, mut stream: TcpStream, client: SocketAddr, mut stop: watch::Receiver<bool>) {
        let inner = &self.inner;
        let read = match h1::serve(&mut stream, client, &inner.plane, &inner.api_paths, &mut stop).await {
            h1::Ended::Closed => return,
            h1::Ended::Handover(read) => read,
        };
        let front = self.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let front = front.clone();
            async move { Ok::<_, Infallible>(front.call(request.map(Body::new), client).await) }
        });
        let io = TokioIo::new(Rewind { read, at: 0, stream });
        let connection = inner.builder.serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = async { drop(stop.wait_for(|stopping| *stopping).await) } => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%error, %client, "client connection ended with an error");
        }
    }
}

/// A connection whose first bytes were already read: they are read again first.
struct Rewind {
    read: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.read.len() {
            let take = (this.read.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.read[this.at..this.at + take]);
            this.at += take;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(context, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, context: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
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
