//! Serving a connection with hyper (HTTP/1.1 and HTTP/2) under the connection's timeouts.
//!
//! hyper's own `header_read_timeout` is one duration for the idle wait and the head
//! together, and HTTP/2 has no idle timeout at all; so it is turned off, and a watchdog
//! beside the connection applies [`Wait`]: it learns from the connection's reads (a head
//! begun), from its requests (begun, and answered when the response body is done or
//! dropped) and from their version whether the connection waits for a head or idles.

use crate::{Conn, HEAD_LIMIT, MAX_HEADER_LINES, Timeouts, Wait};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a connection closed for a timeout may take to close gracefully (an HTTP/2
/// GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// hyper's connection builder with the platform's bounds on heads; one per service.
pub struct Http {
    builder: auto::Builder<TokioExecutor>,
}

impl Default for Http {
    fn default() -> Http {
        Http::new()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Http {
    /// HTTP/1.1 heads are bounded by bytes ([`HEAD_LIMIT`]; hyper answers 431 beyond it),
    /// with room for [`MAX_HEADER_LINES`] lines; HTTP/2 header lists by the same bytes.
    pub fn new() -> Http {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(None)
            .max_buf_size(HEAD_LIMIT)
            .max_headers(MAX_HEADER_LINES);
        builder.http2().timer(TokioTimer::new()).max_header_list_size(HEAD_LIMIT as u32);
        Http { builder }
    }

    /// Serves `io` with `service` until the connection ends, times out, or (between
    /// requests) shutdown starts. A `101` answer to an HTTP/1.1 upgrade hands the
    /// connection to the upgraded protocol, out of the watchdog's reach; a service that
    /// never answers `101` sees no difference.
    pub async fn serve<I, S, B>(&self, conn: &mut Conn, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError> + Send + 'static,
        B: Body + Unpin + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let activity = Arc::new(Activity::new(conn));
        let io = TokioIo::new(Watched { io, activity: activity.clone(), pending: Vec::new() });
        let service = Tracked { inner: service, activity: activity.clone() };
        let connection = self.builder.serve_connection_with_upgrades(io, service);
        drive(conn, &activity, connection, |connection| connection.graceful_shutdown()).await;
    }
}

/// Polls `connection` until it ends; on shutdown or a timeout, closes it gracefully.
async fn drive<C, E>(conn: &mut Conn, activity: &Activity, connection: C, graceful: impl Fn(Pin<&mut C>))
where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut connection = std::pin::pin!(connection);
    let (stop, timeouts) = conn.split();
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = async { drop(stop.wait_for(|stopping| *stopping).await) } => {
            graceful(connection.as_mut());
            connection.await
        }
        () = watchdog(timeouts, activity) => {
            graceful(connection.as_mut());
            match tokio::time::timeout(CLOSE_GRACE, connection).await {
                Ok(ended) => ended,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "client connection ended with an error");
    }
}

/// Completes when the connection has timed out (and counts it).
async fn watchdog(timeouts: &mut Timeouts, activity: &Activity) {
    loop {
        let wait = activity.wait().unwrap_or_else(|| Wait::Idle(Instant::now()));
        // Busy: look again after an idle period; the requests may be done by then.
        timeouts.expired(wait).await;
        if let Some(wait) = activity.wait()
            && timeouts.deadline(wait) <= Instant::now()
        {
            timeouts.record(wait);
            return;
        }
    }
}

/// What a connection served by hyper is doing, as its reads, requests and responses tell.
struct Activity {
    /// Instants below are milliseconds after this one (the accept).
    base: Instant,
    in_flight: AtomicU32,
    /// When the last answer ended.
    idle_since: AtomicU64,
    /// When the first byte of a head arrived with no request in flight, plus one; 0 for
    /// none.
    head_since: AtomicU64,
    /// A request was answered (possibly before the hand-over to hyper).
    served: AtomicBool,
    http2: AtomicBool,
}

impl Activity {
    fn new(conn: &Conn) -> Activity {
        let base = conn.timeouts().accepted();
        let activity = Activity {
            base,
            in_flight: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            served: AtomicBool::new(conn.served()),
            http2: AtomicBool::new(false),
        };
        activity.idle_since.store(activity.now(), Ordering::Relaxed);
        activity
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn at(&self, millis: u64) -> Instant {
        self.base + Duration::from_millis(millis)
    }

    /// What the connection waits for; `None` while a request is in flight.
    fn wait(&self) -> Option<Wait> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.served.load(Ordering::Relaxed) {
            return Some(Wait::Head(self.base));
        }
        // HTTP/2 reads frames (pings, settings) between requests: those begin no head.
        let head_since = self.head_since.load(Ordering::Relaxed);
        if head_since > 0 && !self.http2.load(Ordering::Relaxed) {
            return Some(Wait::Head(self.at(head_since - 1)));
        }
        Some(Wait::Idle(self.at(self.idle_since.load(Ordering::Relaxed))))
    }

    fn read_some(&self) {
        if self.head_since.load(Ordering::Relaxed) == 0 && self.in_flight.load(Ordering::Acquire) == 0 {
            self.head_since.store(self.now() + 1, Ordering::Relaxed);
        }
    }

    fn begin(self: &Arc<Self>, version: Version) -> Active {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        Active(self.clone())
    }
}

/// A request in flight, until its response body is done or dropped.
struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        let activity = &self.0;
        activity.idle_since.store(activity.now(), Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The service, counting its requests in flight.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

type TrackedFuture<B, E> = Pin<Box<dyn Future<Output = Result<Response<TrackedBody<B>>, E>> + Send>>;

impl<S, B> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body + Unpin + Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<B, S::Error>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let active = self.activity.begin(request.version());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| TrackedBody { body, _active: active }))
        })
    }
}

/// A response body that keeps its request in flight until it is done or dropped.
pub struct TrackedBody<B> {
    body: B,
    _active: Active,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The connection's IO, noting when a head begins.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
    /// Bytes of a rewritten answer (see [`error_body`]) not yet written.
    pending: Vec<u8>,
}

/// The bodies of the answers hyper writes by itself, with no body, when it cannot parse a
/// request head: the contracts' `Error` body instead, as the gateway's own HTTP/1.1 path
/// answers them.
const MALFORMED: &str = "{\"code\":\"malformed_request\",\"message\":\"the request head is malformed\"}";
const TOO_LARGE: &str = "{\"code\":\"header_fields_too_large\",\"message\":\"the request head exceeds 64 KiB\"}";
const URI_TOO_LONG: &str = "{\"code\":\"uri_too_long\",\"message\":\"the request target is too long\"}";

/// When `data` is one of hyper's automatic answers to a request head it could not parse
/// (400, 414 or 431, a whole head with `content-length: 0` written while no request is
/// in flight, since every answer of ours has a body), the same answer with the `Error`
/// body.
fn error_body(data: &[u8], in_flight: bool) -> Option<Vec<u8>> {
    if in_flight || !data.ends_with(b"\r\n\r\n") {
        return None;
    }
    let body = match data.get(..13)? {
        b"HTTP/1.1 400 " => MALFORMED,
        b"HTTP/1.1 414 " => URI_TOO_LONG,
        b"HTTP/1.1 431 " => TOO_LARGE,
        _ => return None,
    };
    let head = std::str::from_utf8(data).ok()?;
    let at = head.to_ascii_lowercase().find("\r\ncontent-length: 0\r\n")?;
    let length = "\r\ncontent-length: 0".len();
    let mut answer = Vec::with_capacity(data.len() + body.len() + 64);
    answer.extend_from_slice(&data[..at]);
    answer
        .extend_from_slice(format!("\r\ncontent-type: application/json\r\ncontent-length: {}", body.len()).as_bytes());
    answer.extend_from_slice(&data[at + length..]);
    answer.extend_from_slice(body.as_bytes());
    Some(answer)
}

impl<I: AsyncWrite + Unpin> Watched<I> {
    /// Writes what is left of a rewritten answer.
    fn poll_pending(&mut self, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let written = std::task::ready!(Pin::new(&mut self.io).poll_write(context, &self.pending))?;
            if written == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(context, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            self.activity.read_some();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(mut self: Pin<&mut Self>, context: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(context))?;
        let in_flight = self.activity.in_flight.load(Ordering::Acquire) > 0;
        if let Some(answer) = error_body(data, in_flight) {
            // Taken whole; written from here and by the flush that follows.
            self.pending = answer;
            let _ = self.poll_pending(context)?;
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut self.io).poll_write(context, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::task::ready!(self.poll_pending(context))?;
        if let [only] = data {
            return self.poll_write(context, only);
        }
        Pin::new(&mut self.io).poll_write_vectored(context, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(context))?;
        Pin::new(&mut self.io).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_pending(context))?;
        Pin::new(&mut self.io).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::IntoResponse;
    use pake_api_runtime::ApiError;

    async fn rendered(error: ApiError) -> String {
        let body = axum::body::to_bytes(error.into_response().into_body(), usize::MAX).await.unwrap();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn the_bodies_are_the_contracts_error_bodies() {
        use axum::http::StatusCode;
        let error = |status, code, message: &str| ApiError::new(status, code, message.to_string());
        let cases = [
            (MALFORMED, error(StatusCode::BAD_REQUEST, "malformed_request", "the request head is malformed")),
            (
                TOO_LARGE,
                error(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "header_fields_too_large",
                    "the request head exceeds 64 KiB",
                ),
            ),
            (URI_TOO_LONG, error(StatusCode::URI_TOO_LONG, "uri_too_long", "the request target is too long")),
        ];
        for (body, error) in cases {
            assert_eq!(body, rendered(error).await);
        }
    }

    #[test]
    fn only_hyper_s_own_bodiless_refusals_are_rewritten() {
        let canned = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sun, 06 Dec 2026 08:00:00 GMT\r\n\r\n";
        let answer = String::from_utf8(error_body(canned, false).unwrap()).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert_eq!(body, MALFORMED);
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\nconnection: close\r\n"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", body.len())));
        assert!(head.ends_with("date: Sun, 06 Dec 2026 08:00:00 GMT"), "{head}");
        let large = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        assert!(String::from_utf8(error_body(large, false).unwrap()).unwrap().ends_with(TOO_LARGE));
        // A request in flight: the answer is a service's, passed on as it is.
        assert_eq!(error_body(canned, true), None);
        // Answers with a body, other statuses, or a part of a message are not hyper's.
        assert_eq!(error_body(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n", false), None);
        assert_eq!(error_body(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false), None);
        assert_eq!(error_body(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n", false), None);
        assert_eq!(error_body(b"{\"a\": 1}", false), None);
    }
}
