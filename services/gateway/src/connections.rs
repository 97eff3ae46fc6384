//! Connections to upstream instances.
//!
//! Plain HTTP/1.1 instances are reached over keep-alive connections pooled **per worker
//! thread and per instance address**. The gateway serves each client connection on one
//! thread (one single-threaded runtime per core under `pake serve`); a request takes an
//! idle connection opened by that same thread, so its bytes never cross threads and no
//! pool lock, checkout task or hand-over sits between the request and hyper's connection.
//! `h2c` instances, where one connection carries many requests at once, and `https` ones
//! go through hyper-util's pooling clients instead ([`h2c_client`], [`https_client`]).
//!
//! A connection returns to the pool of the thread that finishes reading its response,
//! when the response body ends ([`PooledBody`]); hyper marks it ready for the next request
//! on its connection task's next turn, which a checkout waits for. A response dropped
//! before its end closes its connection instead. At most [`MAX_IDLE_PER_ADDRESS`] are kept;
//! one idle for longer than [`IDLE_TIMEOUT`] is closed when a checkout or the periodic
//! sweep (every [`SWEEP_EVERY`] returns) meets it. Connections the upstream closes leave
//! the pool the same way.

use axum::body::Body;
use axum::http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::cell::RefCell;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Idle connections older than this are closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections kept per thread and instance; more are closed when they come back.
pub const MAX_IDLE_PER_ADDRESS: usize = 512;
/// Opening a connection gives up after this long (the route's per-try timeout is usually
/// tighter and wins).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Every this many returns, a thread sweeps its whole pool for closed and expired
/// connections, including those of instances no request asks for any more.
pub const SWEEP_EVERY: u32 = 4096;

/// Why a request got no response.
#[derive(Debug)]
pub enum SendFailure {
    /// No connection: refused, unreachable, or not open within [`CONNECT_TIMEOUT`].
    Connect(String),
    /// Connected, but the TLS handshake failed: the instance's certificate was not
    /// trusted or not for its address, or no protocol version was agreed.
    Tls(String),
    /// The connection failed after the request was handed to it (reset, closed early,
    /// malformed response).
    Failed(String),
}

/// One thread's idle connections of one kind, by address, each with when it went idle.
struct Pool<C> {
    by_address: HashMap<Arc<str>, Vec<(C, Instant)>, foldhash::fast::RandomState>,
    returns: u32,
}

impl<C> Default for Pool<C> {
    fn default() -> Self {
        Pool { by_address: HashMap::default(), returns: 0 }
    }
}

impl<C> Pool<C> {
    /// Keeps `connection` unless its address has [`MAX_IDLE_PER_ADDRESS`] already; every
    /// [`SWEEP_EVERY`] returns, drops the expired and those `closed` says are gone, for
    /// every address (including those no request asks for any more).
    fn put(&mut self, address: Arc<str>, connection: C, closed: impl Fn(&C) -> bool) {
        let list = self.by_address.entry(address).or_default();
        if list.len() < MAX_IDLE_PER_ADDRESS {
            list.push((connection, Instant::now()));
        }
        self.returns = self.returns.wrapping_add(1);
        if self.returns.is_multiple_of(SWEEP_EVERY) {
            let now = Instant::now();
            for list in self.by_address.values_mut() {
                list.retain(|(connection, since)| !closed(connection) && now.duration_since(*since) <= IDLE_TIMEOUT);
            }
            self.by_address.retain(|_, list| !list.is_empty());
        }
    }
}

/// Returns a connection to this thread's `pool`. Connections can come back while the
/// thread exits, after its pool is gone; they then just close.
fn put_in<C: 'static>(
    pool: &'static std::thread::LocalKey<RefCell<Pool<C>>>,
    address: Arc<str>,
    connection: C,
    closed: impl Fn(&C) -> bool,
) {
    let _ = pool.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            pool.put(address, connection, closed);
        }
    });
}

thread_local! {
    /// Plain connections of the gateway's own HTTP/1.1 path ([`crate::h1`]), between requests.
    static STREAMS: RefCell<Pool<TcpStream>> = RefCell::default();
    /// hyper connections of the general path.
    static IDLE: RefCell<Pool<SendRequest<Body>>> = RefCell::default();
    /// hyper-util's pooling client for `h2c` (HTTP/2 with prior knowledge), one per thread
    /// for the same reason.
    static H2C_CLIENT: Client<HttpConnector, Body> = build_h2c_client();
}

fn http_connector() -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector
}

fn pooling_client() -> hyper_util::client::legacy::Builder {
    let mut builder = Client::builder(TokioExecutor::new());
    builder.pool_idle_timeout(IDLE_TIMEOUT).pool_max_idle_per_host(MAX_IDLE_PER_ADDRESS);
    builder
}

fn build_h2c_client() -> Client<HttpConnector, Body> {
    pooling_client().http2_only(true).build(http_connector())
}

/// This thread's pooling client for `h2c` instances.
pub fn h2c_client() -> Client<HttpConnector, Body> {
    H2C_CLIENT.with(Client::clone)
}

/// The pooling client for `https` instances: TLS as `tls` says ([`crate::tls`]), then
/// HTTP/2 or HTTP/1.1 as the instance chooses by ALPN. Nothing but `https` URIs go
/// through it. One per gateway, shared by its threads (its configuration is the gateway's).
pub type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

pub fn https_client(tls: rustls::ClientConfig) -> HttpsClient {
    let mut http = http_connector();
    // The TLS connector hands it `https` URIs.
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_all_versions()
        .wrap_connector(http);
    pooling_client().build(connector)
}

/// Sends `request` (origin-form URI, `Host` set) to the HTTP/1.1 instance at `address`
/// (`host:port`) over one of this thread's idle connections, or a new one; `now` is about
/// the current time (for idle expiry).
///
/// An idle connection can be closed by the upstream a moment before it is used, without
/// this thread having noticed; hyper then hands the request back unsent, and it goes out
/// on a new connection. A request that reached a connection is never sent twice here:
/// whether to retry it is the caller's decision.
pub async fn send(
    address: &Arc<str>,
    request: Request<Body>,
    now: Instant,
) -> Result<Response<PooledBody>, SendFailure> {
    let mut request = request;
    if let Some(mut sender) = checkout(address, now) {
        // A connection returned when its response ended turns ready on its task's next
        // turn; one the upstream closed meanwhile fails here and is replaced.
        if sender.ready().await.is_ok() {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(pooled(address, sender, response)),
                Err(mut refused) => match refused.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(SendFailure::Failed(refused.into_error().to_string())),
                },
            }
        }
    }
    // Boxed: opening a connection is the rare path, and its state would otherwise be
    // carried (and copied) in every request's future.
    let mut sender = Box::pin(connect(address)).await?;
    let response = sender.send_request(request).await.map_err(|error| SendFailure::Failed(error.to_string()))?;
    Ok(pooled(address, sender, response))
}

fn pooled(address: &Arc<str>, sender: SendRequest<Body>, response: Response<Incoming>) -> Response<PooledBody> {
    let address = address.clone();
    response.map(|body| PooledBody { body, finished: false, connection: Some((address, sender)) })
}

/// An upstream response body that gives its connection back to the pool once read to the
/// end.
pub struct PooledBody {
    body: Incoming,
    finished: bool,
    connection: Option<(Arc<str>, SendRequest<Body>)>,
}

impl HttpBody for PooledBody {
    type Data = <Incoming as HttpBody>::Data;
    type Error = <Incoming as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(context);
        match &polled {
            Poll::Ready(None) => self.finished = true,
            Poll::Ready(Some(Err(_))) => self.connection = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if let Some((address, sender)) = self.connection.take()
            && (self.finished || self.body.is_end_stream())
        {
            checkin(address, sender);
        }
    }
}

/// Opens a plain TCP connection to `address`, within [`CONNECT_TIMEOUT`].
pub async fn open(address: &str) -> Result<TcpStream, SendFailure> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(SendFailure::Connect(format!("connecting to {address}: {error}"))),
        Err(_) => {
            return Err(SendFailure::Connect(format!(
                "connecting to {address}: no answer within {} s",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
    };
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "could not set TCP_NODELAY on an upstream connection");
    }
    Ok(stream)
}

/// An idle plain connection to `address` from this thread's pool, most recently returned
/// first. One the upstream has closed or written to since (its readiness says so, without
/// a system call when nothing happened) is dropped on the way, as are expired ones.
pub fn take_stream(address: &str, now: Instant) -> Option<TcpStream> {
    STREAMS.with_borrow_mut(|pool| {
        let list = pool.by_address.get_mut(address)?;
        while let Some((stream, since)) = list.pop() {
            let mut probe = [0u8; 1];
            let quiet =
                matches!(stream.try_read(&mut probe), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock);
            if quiet && now.saturating_duration_since(since) <= IDLE_TIMEOUT {
                return Some(stream);
            }
        }
        None
    })
}

/// Returns a plain connection whose last response was read to its end, and nothing more.
pub fn put_stream(address: &Arc<str>, stream: TcpStream) {
    put_in(&STREAMS, address.clone(), stream, |_| false);
}

async fn connect(address: &str) -> Result<SendRequest<Body>, SendFailure> {
    let stream = open(address).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| SendFailure::Connect(format!("connecting to {address}: {error}")))?;
    // The connection is driven by a task on this thread; it ends when the upstream closes
    // it or when the last sender is dropped.
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// An idle connection to `address`: one ready for a request if there is one, else the
/// most recently returned (about to turn ready). Closed and expired ones met on the way
/// are dropped.
fn checkout(address: &str, now: Instant) -> Option<SendRequest<Body>> {
    IDLE.with_borrow_mut(|pool| {
        let list = pool.by_address.get_mut(address)?;
        loop {
            // Most recently returned first: the warmest, and the least likely to have been
            // closed by the upstream's own idle timeout.
            let index = list.iter().rposition(|(sender, _)| sender.is_ready()).or(list.len().checked_sub(1))?;
            let (sender, since) = list.swap_remove(index);
            if !sender.is_closed() && now.duration_since(since) <= IDLE_TIMEOUT {
                return Some(sender);
            }
        }
    })
}

fn checkin(address: Arc<str>, sender: SendRequest<Body>) {
    put_in(&IDLE, address, sender, SendRequest::is_closed);
}
