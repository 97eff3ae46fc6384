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
use pake_listen::{Conn, Http, Server};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tower::Service;

/// The gateway's request entry point; cheap to clone, one per worker thread or listener.
#[derive(Clone)]
pub struct Front {
    inner: Arc<Inner>,
}

struct Inner {
    http: Http,
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
        // The same bounds as the gateway's own path: heads of at most 64 KiB (hyper answers
        // 431 beyond), the connection's header and idle timeouts.
        Front { inner: Arc::new(Inner { http: Http::new(), api, api_paths: paths, plane }) }
    }

    /// Answers one request from `client`.
    pub async fn call(&self, request: Request<Body>, client: SocketAddr) -> Response<Body> {
        let inner = &self.inner;
        // The gateway's API is judged on the path as the data plane normalises it
        // ([`crate::path`]), and routed on that path; one that cannot be normalised is the
        // data plane's to refuse.
        let api_path = match crate::path::normalize(request.uri().path()) {
            Ok(normal) => {
                let merged = crate::path::merge_slashes(&normal);
                inner.api_paths.at(&merged).is_ok().then(|| merged.into_owned())
            }
            Err(_) => None,
        };
        if let Some(path) = api_path {
            if let Err(refused) =
                proxy::check_host(request.version(), request.headers().get_all(axum::http::header::HOST).iter().count())
            {
                return axum::response::IntoResponse::into_response(refused);
            }
            let mut request = request;
            if path != request.uri().path()
                && let Ok(uri) = proxy::with_path(request.uri(), &path)
            {
                *request.uri_mut() = uri;
            }
            // The API's per-address limits (the token endpoint's) count the client a trusted
            // proxy reports.
            let listed = request.headers().get_all("x-forwarded-for").iter().map(axum::http::HeaderValue::as_bytes);
            let caller = inner.plane.trusted_proxies.caller(client, listed);
            request.extensions_mut().insert(ConnectInfo(caller.client));
            // The router is always ready and never fails (its error type is Infallible).
            let Ok(response) = inner.api.clone().call(request).await;
            response
        } else {
            proxy::handle(&inner.plane, request, Some(client)).await
        }
    }

    /// Serves connections from `listener` until `shutdown` completes, under limits of
    /// its own with the default settings ([`Server::standalone`]); see [`Front::serve_with`].
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        self.serve_with(listener, &Server::standalone(), shutdown).await
    }

    /// Serves connections from `listener` under `server`'s limits (its connection cap,
    /// header and idle timeouts) until `shutdown` completes; then stops accepting and lets
    /// the requests in flight finish, for at most the server's drain timeout.
    ///
    /// Each connection starts on the gateway's own HTTP/1.1 path ([`h1`]) and moves to
    /// hyper (HTTP/1.1, and HTTP/2 for clients that open with its preface) at the first
    /// request that path does not take.
    pub async fn serve_with(
        self,
        listener: TcpListener,
        server: &Server,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        server
            .serve(listener, shutdown, move |stream, client, conn| self.clone().connection(stream, client, conn))
            .await
    }

    /// Serves one client connection until it ends, times out or, between requests,
    /// shutdown starts.
    async fn connection(self, mut stream: TcpStream, client: SocketAddr, mut conn: Conn) {
        let inner = &self.inner;
        let read = match h1::serve(&mut stream, client, &inner.plane, &inner.api_paths, &mut conn).await {
            h1::Ended::Closed => return,
            h1::Ended::Idle(since) => return conn.park(stream, since),
            h1::Ended::Handover(read) => read,
        };
        let front = self.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let front = front.clone();
            async move { Ok::<_, Infallible>(front.call(request.map(Body::new), client).await) }
        });
        // Boxed: the general path's state is allocated only for connections that take it,
        // not carried by every connection's task.
        Box::pin(inner.http.serve(&mut conn, Rewind { read, at: 0, stream }, service)).await;
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
