//! The gateway's own HTTP/1.1 path for the requests that carry its traffic.
//!
//! Most proxied requests are plain: HTTP/1.1, no body, a route without a response cache,
//! an instance speaking HTTP/1.1. For those, the work a general HTTP library does per request
//! (a header map built and rewritten twice, a request and a response object per side,
//! body frames and the tasks that drive two connections) is most of the gateway's cost.
//! This path reads the client's request head into a buffer, parses it in place
//! (`httparse`), writes the upstream's request head straight from it, and relays the
//! upstream's response head and body bytes the same way, over a pooled plain connection
//! ([`connections::take_stream`]). Routing, balancing, breakers, retries, timeouts and
//! metrics are the data plane's own ([`Tries`]), as are token checks and rate limits
//! ([`crate::edge::Edge`]), so both paths behave alike.
//!
//! Anything else is handed, at a request boundary and with the bytes already read, to
//! the general path (hyper and [`crate::proxy::handle`]) for the rest of the connection:
//! other HTTP versions and HTTP/2, request bodies, `Upgrade`, `Expect`, `Connection`
//! naming other headers, the gateway's own API, routes with a response cache, instances
//! speaking h2c or TLS, and heads with more header lines than parsed here. A malformed or
//! oversized head is answered here (400, 431) with the contracts' `Error` body.
//!
//! Response bodies are relayed as they arrive, framed as the upstream framed them:
//! `Content-Length` as is, chunked passed through chunk by chunk (the decoder here only
//! finds the end), and a body ended by closing re-chunked so that the client's connection
//! survives it.

use crate::connections::{self, SendFailure};
use crate::headers;
use crate::proxy::{self, DataPlane};
use crate::spans::{Arrival, RequestSpans};
use crate::tries::{self, Answered, Transport, Tries, Try};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use pake_mesh_server::types as mesh;
use pake_trace::w3c::TraceParent;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The first size of a connection's buffer for request heads; it grows for larger heads,
/// up to [`HEAD_LIMIT`]. Small: idle keep-alive connections keep it.
const INPUT_BUFFER: usize = 4 * 1024;
/// The buffer for upstream responses (heads grow it up to [`HEAD_LIMIT`]; bodies are
/// relayed through it), allocated at a connection's first proxied request.
const RELAY_BUFFER: usize = 8 * 1024;
/// The largest request or response head taken; a larger request is answered 431, a
/// larger response is a failed try. The number of header lines is not limited.
pub const HEAD_LIMIT: usize = pake_listen::HEAD_LIMIT;
/// Header lines parsed here (on the stack); a head with more goes to the general path,
/// which takes as many as fit in [`HEAD_LIMIT`].
const MAX_HEADERS: usize = 64;

/// How a connection's time on this path ended.
pub enum Ended {
    /// The connection is done (closed by either side, or shutdown).
    Closed,
    /// The rest of the connection belongs to the general path, starting with these bytes.
    Handover(Vec<u8>),
    /// Idle since this instant for [`pake_listen::PARK_AFTER`], holding nothing of a
    /// request: to be parked ([`pake_listen::Conn::park`]).
    Idle(Instant),
}

/// What one request left the connection to do.
enum Step {
    Next,
    Close,
    Handover,
}

/// The header names this path treats specially, found by one match on length and text.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Upgrade,
    Expect,
    /// Hop-by-hop headers dropped without further meaning.
    Hop,
    XForwardedFor,
    XForwardedHost,
    XForwardedProto,
    XRequestId,
    Traceparent,
    Tracestate,
    Authorization,
    Date,
    Other,
}

fn kind(name: &str) -> Kind {
    let is = |text: &str| name.eq_ignore_ascii_case(text);
    match name.len() {
        2 if is("te") => Kind::Hop,
        4 if is("host") => Kind::Host,
        4 if is("date") => Kind::Date,
        6 if is("expect") => Kind::Expect,
        7 if is("upgrade") => Kind::Upgrade,
        7 if is("trailer") => Kind::Hop,
        10 if is("connection") => Kind::Connection,
        10 if is("keep-alive") => Kind::Hop,
        10 if is("tracestate") => Kind::Tracestate,
        11 if is("traceparent") => Kind::Traceparent,
        12 if is("x-request-id") => Kind::XRequestId,
        13 if is("authorization") => Kind::Authorization,
        14 if is("content-length") => Kind::ContentLength,
        15 if is("x-forwarded-for") => Kind::XForwardedFor,
        16 if is("x-forwarded-host") => Kind::XForwardedHost,
        17 if is("transfer-encoding") => Kind::TransferEncoding,
        17 if is("x-forwarded-proto") => Kind::XForwardedProto,
        18 if is("proxy-authenticate") => Kind::Hop,
        19 if is("proxy-authorization") => Kind::Hop,
        _ => Kind::Other,
    }
}

/// The comma-separated tokens of a header value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(|token| token.trim_ascii()).filter(|token| !token.is_empty())
}

/// One client connection's buffers and surroundings.
struct Conn<'a> {
    stream: &'a mut TcpStream,
    client: SocketAddr,
    plane: &'a DataPlane,
    /// The forwarding header lines, the same for every try of a request.
    forwarded: Vec<u8>,
    /// Bytes about to be written: a request head for an upstream, then the client's head.
    out: Vec<u8>,
    /// Bytes read from the upstream.
    upstream: Vec<u8>,
    /// Header lines the gateway adds to the response (a rate limit's).
    extra: Vec<u8>,
}

/// A connection's working buffers. They belong to requests in flight: a connection that
/// goes idle gives them back to its thread's spares and takes a set again once its next
/// request starts to arrive, so that thousands of idle keep-alive connections hold none.
#[derive(Default)]
struct Buffers {
    input: Vec<u8>,
    forwarded: Vec<u8>,
    out: Vec<u8>,
    upstream: Vec<u8>,
    extra: Vec<u8>,
}

/// Spare buffer sets kept per thread, for as many connections as are busy at once.
const SPARE_SETS: usize = 64;
/// Buffers grown beyond this (a large head) are not kept as spares.
const SPARE_CAPACITY: usize = 16 * 1024;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Conn<'_> {
    /// Takes a set of buffers for a request, `input` (the head's) sized to read into.
    fn unpark(&mut self, input: &mut Vec<u8>) {
        let set = SPARE.with_borrow_mut(Vec::pop).unwrap_or_default();
        *input = set.input;
        if input.len() < INPUT_BUFFER {
            input.resize(INPUT_BUFFER, 0);
        }
        (self.forwarded, self.out, self.upstream, self.extra) = (set.forwarded, set.out, set.upstream, set.extra);
    }

    /// Gives the buffers back while the connection is idle (`input` holds no bytes of a
    /// request).
    fn park(&mut self, input: &mut Vec<u8>) {
        let set = Buffers {
            input: std::mem::take(input),
            forwarded: std::mem::take(&mut self.forwarded),
            out: std::mem::take(&mut self.out),
            upstream: std::mem::take(&mut self.upstream),
            extra: std::mem::take(&mut self.extra),
        };
        let sizes = [&set.input, &set.forwarded, &set.out, &set.upstream, &set.extra];
        if sizes.iter().all(|buffer| buffer.capacity() <= SPARE_CAPACITY) {
            let _ = SPARE.try_with(|spare| {
                let mut spare = spare.borrow_mut();
                if spare.len() < SPARE_SETS {
                    spare.push(set);
                }
            });
        }
    }
}

/// Serves requests from `stream` for as long as they are for this path; the first that is
/// not ends it with [`Ended::Handover`]. A malformed head is answered 400 and a head over
/// [`HEAD_LIMIT`] 431, with the contracts' `Error` body, and the connection closed. Returns
/// when shutdown starts and the connection is between requests, or when it waits longer
/// than `connection`'s timeouts allow: for a head (answered 408 if begun) or idle.
pub async fn serve(
    stream: &mut TcpStream,
    client: SocketAddr,
    plane: &DataPlane,
    api_paths: &matchit::Router<()>,
    connection: &mut pake_listen::Conn,
) -> Ended {
    // Taken when the first request starts to arrive (see `Buffers`).
    let mut input = Vec::new();
    let mut filled = 0;
    let mut conn =
        Conn { stream, client, plane, forwarded: Vec::new(), out: Vec::new(), upstream: Vec::new(), extra: Vec::new() };
    let mut served = false;
    let parks = connection.parks();
    let handover = {
        let (shutdown, timeouts) = connection.split();
        let mut stopped = std::pin::pin!(shutdown.changed());
        // Rising pressure shortens the timeouts of connections already waiting.
        let mut pressure = std::pin::pin!(pake_listen::pressure_changed(timeouts.pressure()));
        // The first head counts from accept; a later one from its first byte, after an idle
        // wait counted from the last answer.
        let mut wait = pake_listen::Wait::Head(timeouts.accepted());
        loop {
            if filled > 0 {
                // Boxed: a request's state (its parsed head, its tries, the upstream exchange,
                // the relay) exists while it is in flight, not in every idle connection's task.
                match Box::pin(request(&mut conn, &input[..filled], api_paths)).await {
                    Head::Answered(head_length) => {
                        served = true;
                        input.copy_within(head_length..filled, 0);
                        filled -= head_length;
                        if filled == 0 {
                            conn.park(&mut input);
                        }
                        wait = pake_listen::Wait::Idle(Instant::now());
                        continue;
                    }
                    Head::Close => return Ended::Closed,
                    Head::Handover => break input[..filled].to_vec(),
                    Head::Partial => {
                        if let pake_listen::Wait::Idle(_) = wait {
                            wait = pake_listen::Wait::Head(Instant::now());
                        }
                        if filled == input.len() {
                            if input.len() >= HEAD_LIMIT {
                                let refused = pake_api_runtime::ApiError::new(
                                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                    "header_fields_too_large",
                                    format!("the request head exceeds {} KiB", HEAD_LIMIT / 1024),
                                );
                                let _ = Box::pin(write_response(&mut conn, refused.into_response(), true)).await;
                                return Ended::Closed;
                            }
                            input.resize(input.len() * 2, 0);
                        }
                    }
                }
            }
            let mut deadline = timeouts.deadline(wait);
            // Idle without a byte of a request for a while: parked outside this task.
            let mut parking = None;
            if let pake_listen::Wait::Idle(since) = wait
                && parks
                && input.is_empty()
                && since + pake_listen::PARK_AFTER < deadline
            {
                deadline = since + pake_listen::PARK_AFTER;
                parking = Some(since);
            }
            let read = tokio::select! {
                biased;
                read = async {
                    if input.is_empty() {
                        // Idle, holding no buffers: they are taken once bytes arrive.
                        conn.stream.readable().await?;
                        conn.unpark(&mut input);
                    }
                    conn.stream.read(&mut input[filled..]).await
                } => read,
                // Between requests: shutdown closes the connection.
                _ = &mut stopped, if filled == 0 => return Ended::Closed,
                receiver = &mut pressure => {
                    pressure.set(pake_listen::pressure_changed(receiver));
                    continue;
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    if let Some(since) = parking {
                        return Ended::Idle(since);
                    }
                    timeouts.record(wait);
                    if filled > 0 {
                        let refused = pake_api_runtime::ApiError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            "request_timeout",
                            "the request head did not arrive in time",
                        );
                        let _ = Box::pin(write_response(&mut conn, refused.into_response(), true)).await;
                    }
                    return Ended::Closed;
                }
            };
            match read {
                Ok(0) | Err(_) => return Ended::Closed,
                Ok(n) => filled += n,
            }
        }
    };
    if served {
        connection.set_served();
    }
    Ended::Handover(handover)
}

/// What the bytes of a connection's next request came to.
enum Head {
    /// A request was answered; its head was this long.
    Answered(usize),
    /// The head is not complete yet.
    Partial,
    Close,
    Handover,
}

/// Parses the head at the start of `input` and, once it is complete, answers its request.
/// A malformed head is answered 400 and closes the connection.
async fn request(conn: &mut Conn<'_>, input: &[u8], api_paths: &matchit::Router<()>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(input) {
        Ok(httparse::Status::Complete(head_length)) => match one(conn, &request, api_paths).await {
            Step::Next => Head::Answered(head_length),
            Step::Close => Head::Close,
            Step::Handover => Head::Handover,
        },
        Ok(httparse::Status::Partial) => Head::Partial,
        // More header lines than parsed here, or another protocol (the HTTP/2 preface): the
        // general path takes them.
        Err(httparse::Error::TooManyHeaders) => Head::Handover,
        Err(httparse::Error::Version) if input.starts_with(b"PRI * HTTP/2") => Head::Handover,
        Err(error) => {
            let refused = pake_api_runtime::ApiError::bad_request(
                "malformed_request",
                format!("malformed request head: {error}"),
            );
            let _ = write_response(conn, refused.into_response(), true).await;
            Head::Close
        }
    }
}

/// Answers one request whose head is complete (and which has no body when taken here).
async fn one(conn: &mut Conn<'_>, request: &httparse::Request<'_, '_>, api_paths: &matchit::Router<()>) -> Step {
    let started = Instant::now();
    let (Some(method_text), Some(target), Some(1)) = (request.method, request.path, request.version) else {
        return Step::Handover;
    };
    // Origin form in visible ASCII only; anything else is the general path's to judge.
    if !target.starts_with('/') || !target.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b'#') {
        return Step::Handover;
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    // The gateway's API is judged on the path as normalised (once, for routing too); a
    // path that cannot be is answered below.
    let normal = crate::path::normalize(path);
    if let Ok(normal) = &normal
        && api_paths.at(&crate::path::merge_slashes(normal)).is_ok()
    {
        return Step::Handover;
    }
    let Ok(method) = Method::from_bytes(method_text.as_bytes()) else { return Step::Handover };

    let headers: &[httparse::Header<'_>] = request.headers;
    let mut kinds = [Kind::Other; MAX_HEADERS];
    let mut host: Option<&[u8]> = None;
    let mut hosts = 0;
    let mut close = false;
    let mut has_request_id = false;
    let (mut traceparent, mut traceparents): (Option<&[u8]>, usize) = (None, 0);
    let mut tracestate: Option<&[u8]> = None;
    let mut authorization: Option<&[u8]> = None;
    for (header, slot) in headers.iter().zip(kinds.iter_mut()) {
        *slot = kind(header.name);
        match *slot {
            Kind::Host => {
                hosts += 1;
                host = Some(header.value);
            }
            Kind::ContentLength if header.value.iter().any(|&b| b != b'0') || header.value.is_empty() => {
                return Step::Handover;
            }
            Kind::TransferEncoding | Kind::Upgrade | Kind::Expect => return Step::Handover,
            Kind::Connection => {
                for token in tokens(header.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        return Step::Handover;
                    }
                }
            }
            Kind::XRequestId => has_request_id = true,
            Kind::Authorization => {
                authorization.get_or_insert(header.value);
            }
            Kind::Traceparent => {
                traceparent = Some(header.value);
                traceparents += 1;
            }
            Kind::Tracestate => {
                tracestate.get_or_insert(header.value);
            }
            _ => {}
        }
    }

    let plane = conn.plane;
    let forwarded_for = || {
        let lines = headers.iter().zip(kinds.iter()).filter(|(_, kind)| **kind == Kind::XForwardedFor);
        lines.map(|(header, _)| header.value)
    };
    let caller = plane.trusted_proxies.caller(conn.client, forwarded_for());
    // The trace continued, or a new one (`tracestate` goes with a continued one only).
    let parent = traceparent.filter(|_| traceparents == 1).and_then(TraceParent::parse);
    let arrival = || Arrival { method: &method, path, host, client: Some(caller.client), tracestate, route: None };
    if let Err(refused) = proxy::check_host(axum::http::Version::HTTP_11, hosts) {
        let mut spans = RequestSpans::start(plane.tracer.as_ref(), parent, arrival);
        let refused = spans.refusal("request", refused);
        spans.end(refused.status());
        return finish(write_response(conn, refused.into_response(), true).await, true);
    }
    let table = plane.routes.load();
    let located = match proxy::locate(&table, &method, normal) {
        Ok(located) => located,
        Err(refused) => {
            let mut spans = RequestSpans::start(plane.tracer.as_ref(), parent, arrival);
            let refused = spans.unrouted(refused);
            spans.end(refused.status());
            return finish(write_response(conn, refused.into_response(), close).await, close);
        }
    };
    let route = located.route;
    let settings = &route.route;
    if settings.cache.enabled {
        return Step::Handover;
    }
    // Decided before any policy counts the request, so that a request handed over is
    // never authenticated or rate-limited twice.
    let snapshot = plane.registry.load();
    let service = snapshot.service_by_name(settings.service.as_str()).map(|service| &**service);
    let plain = service.is_none_or(|service| {
        service.instances.iter().all(|record| record.instance.scheme == mesh::InstanceScheme::Http)
    });
    if !plain {
        return Step::Handover;
    }
    let mut spans = RequestSpans::start(plane.tracer.as_ref(), parent, || Arrival { route: Some(route), ..arrival() });
    // Auth and rate limits as the general path applies them; the limit's headers are
    // written into `conn.extra` for the response.
    let principal = if settings.require_token {
        match spans.check("auth", plane.edge.authorize(authorization, settings)) {
            Ok(principal) => Some(principal),
            Err(refused) => return refuse(conn, route, &method, refused.into_response(), started, close, spans).await,
        }
    } else {
        None
    };
    conn.extra.clear();
    if settings.rate_limit_policy_id.is_some() || principal.is_some() {
        let table = plane.policies.load();
        let limited = Box::pin(plane.edge.rate_limit(
            &table,
            settings,
            principal.as_deref().map(|verified| &verified.principal),
            Some(caller.client),
            &spans.children(),
        ))
        .await;
        match spans.rate_limited(limited) {
            Ok(Some((decision, limit))) => decision.write_headers(limit, |field, value| {
                push_header(&mut conn.extra, field.name().as_bytes(), value.as_bytes());
            }),
            Ok(None) => {}
            Err(refused) => return refuse(conn, route, &method, refused.into_response(), started, close, spans).await,
        }
    }
    let idempotent = tries::idempotent(&method);
    let mut tries = match spans.check("upstream", Tries::new(plane, settings, service, started, idempotent)) {
        Ok(tries) => tries,
        Err(refused) => return refuse(conn, route, &method, refused.into_response(), started, close, spans).await,
    };

    // The forwarding headers: the client's, less hop-by-hop ones and those replaced here
    // (each try adds its own `traceparent` and the blank line).
    let forwarded = &mut conn.forwarded;
    forwarded.clear();
    for (header, &kind) in headers.iter().zip(kinds.iter()) {
        // X-Forwarded-For is extended below (several lines join as one list); Host moves
        // to X-Forwarded-Host, and each try sets the instance's own.
        let kept = match kind {
            Kind::Other | Kind::Date | Kind::ContentLength | Kind::XRequestId | Kind::Authorization => true,
            Kind::Tracestate => parent.is_some(),
            Kind::XForwardedHost => host.is_none(),
            _ => false,
        };
        if kept {
            push_header(forwarded, header.name.as_bytes(), header.value);
        }
    }
    if let Some(host) = host {
        push_header(forwarded, b"x-forwarded-host", host);
    }
    forwarded.extend_from_slice(b"x-forwarded-proto: http\r\nx-forwarded-for: ");
    caller.forwarded_for(forwarded, forwarded_for());
    forwarded.extend_from_slice(b"\r\n");
    if !has_request_id {
        push_header(forwarded, b"x-request-id", &headers::request_id());
    }

    let upstream_path = located.upstream_path();
    let head_request = method == Method::HEAD;
    let mut transport =
        H1Try { conn: &mut *conn, method: method_text, upstream_path, query, head_request, idempotent, close };
    let (mut attempt, answer) = match tries.run(started, &mut transport, &mut spans, |_| None).await {
        Ok(answered) => answered,
        Err(refused) => return refuse(conn, route, &method, refused.into_response(), started, close, spans).await,
    };
    let status = answer.status();
    route.metrics.record(&method, status, started, spans.answering_instance());
    let idle = Duration::from_millis(settings.timeout_ms.get());
    let relayed = relay(conn, answer, &attempt.upstream.address, idle).await;
    spans.end(status);
    if status.is_server_error() {
        // Counted when it arrived.
    } else if relayed == Err(Broke::Upstream) {
        tries.broke_off(&mut attempt);
    } else {
        tries.settled(&mut attempt);
    }
    match relayed {
        Ok(()) if !close => Step::Next,
        _ => Step::Close,
    }
}

/// A request sent the short path's way: its head written out here, over this thread's
/// pooled HTTP/1.1 connections.
struct H1Try<'c, 'a, 'r> {
    conn: &'c mut Conn<'a>,
    method: &'r str,
    upstream_path: &'r str,
    query: Option<&'r str>,
    head_request: bool,
    idempotent: bool,
    close: bool,
}

impl Transport for H1Try<'_, '_, '_> {
    type Answer = Answer;

    fn send(&mut self, attempt: &Try) -> impl Future<Output = Result<Answer, SendFailure>> + Send {
        let out = &mut self.conn.out;
        out.clear();
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.upstream_path.as_bytes());
        if let Some(query) = self.query {
            out.push(b'?');
            out.extend_from_slice(query.as_bytes());
        }
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(attempt.upstream.host.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.conn.forwarded);
        out.extend_from_slice(b"traceparent: ");
        out.extend_from_slice(&attempt.traceparent);
        out.extend_from_slice(b"\r\n\r\n");
        async move {
            exchange(self.conn, &attempt.upstream.address, self.head_request, self.idempotent, self.close, attempt.now)
                .await
        }
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

fn finish(written: std::io::Result<()>, close: bool) -> Step {
    if written.is_err() || close { Step::Close } else { Step::Next }
}

/// Answers with the data plane's refusal, counted in the route's metrics.
async fn refuse(
    conn: &mut Conn<'_>,
    route: &crate::routes::CompiledRoute,
    method: &Method,
    refused: Response,
    started: Instant,
    close: bool,
    spans: RequestSpans<'_>,
) -> Step {
    route.metrics.record(method, refused.status(), started, spans.answering_instance());
    spans.end(refused.status());
    finish(write_response(conn, refused, close).await, close)
}

/// Writes a whole response the gateway made itself (errors: small bodies).
async fn write_response(conn: &mut Conn<'_>, response: Response, close: bool) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, HEAD_LIMIT).await.unwrap_or_default();
    let out = &mut conn.out;
    out.clear();
    status_line(out, parts.status.as_u16(), parts.status.canonical_reason().unwrap_or("").as_bytes());
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_LENGTH {
            push_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    if !parts.headers.contains_key(axum::http::header::DATE) {
        push_date(out);
    }
    let mut length = itoa::Buffer::new();
    push_header(out, b"content-length", length.format(body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    conn.stream.write_all(out).await
}

/// Appends `date: <IMF-fixdate>\r\n`: the line the gateway adds to a response that has no
/// `Date`, as an HTTP intermediary with a clock must (RFC 9110 §6.6.1). Formatted at most
/// once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::Cell<(u64, [u8; DATE_LINE])> = const { std::cell::Cell::new((u64::MAX, [0; DATE_LINE])) };
    }
    // A clock before 1970 gives that instant rather than a date HTTP cannot write.
    let now = std::time::SystemTime::now().max(std::time::UNIX_EPOCH);
    let second = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let line = DATE.with(|cached| {
        let (at, mut line) = cached.get();
        if at != second {
            // IMF-fixdate has a fixed width: the line always fills the array.
            line.copy_from_slice(format!("date: {}\r\n", httpdate::fmt_http_date(now)).as_bytes());
            cached.set((second, line));
        }
        line
    });
    out.extend_from_slice(&line);
}

/// The length of a `date` line: `date: ` (6), the IMF-fixdate (29) and CRLF (2).
const DATE_LINE: usize = 37;

fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
    out.push(b' ');
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
}

/// How a response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// None (HEAD, 1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes.
    UntilClose,
}

/// An upstream's answer whose head has been read (and turned into the client's head in
/// `Conn::out`); its body's first bytes are in `Conn::upstream[head..filled]`.
struct Answer {
    stream: TcpStream,
    status: u16,
    head: usize,
    filled: usize,
    framing: Framing,
    /// Whether the connection can carry another request once the body is read.
    reusable: bool,
}

impl Answered for Answer {
    fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY)
    }
}

/// Sends the request head in `conn.out` to `address` (over a pooled connection, or a new
/// one) and reads the answer's head. An idle connection the upstream closed before it saw
/// the request (nothing came back) is replaced once, for requests that may be repeated.
async fn exchange(
    conn: &mut Conn<'_>,
    address: &Arc<str>,
    head_request: bool,
    idempotent: bool,
    close: bool,
    now: Instant,
) -> Result<Answer, SendFailure> {
    let (mut stream, mut reused) = match connections::take_stream(address, now) {
        Some(stream) => (stream, true),
        None => (Box::pin(connections::open(address)).await?, false),
    };
    let buffer = &mut conn.upstream;
    if buffer.is_empty() {
        buffer.resize(RELAY_BUFFER, 0);
    }
    let failed = |error: String| SendFailure::Failed(format!("{address}: {error}"));
    loop {
        // Why this connection gave nothing back, if it did not answer.
        let silent = 'answer: {
            if let Err(error) = stream.write_all(&conn.out).await {
                break 'answer error.to_string();
            }
            let mut filled = 0;
            loop {
                if filled > 0 {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut response = httparse::Response::new(&mut headers);
                    match response.parse(&buffer[..filled]) {
                        Ok(httparse::Status::Complete(head)) => {
                            let status = response.code.unwrap_or(0);
                            if (100..200).contains(&status) && status != 101 {
                                // Informational answers are not relayed; the final one follows.
                                buffer.copy_within(head..filled, 0);
                                filled -= head;
                                continue;
                            }
                            if status == 101 || status < 100 {
                                return Err(failed(format!("unexpected status {status}")));
                            }
                            let (framing, reusable) =
                                client_head(&mut conn.out, &response, &conn.extra, push_date, head_request, close)
                                    .map_err(failed)?;
                            return Ok(Answer { stream, status, head, filled, framing, reusable });
                        }
                        Ok(httparse::Status::Partial) => {
                            if filled == buffer.len() {
                                if buffer.len() >= HEAD_LIMIT {
                                    return Err(failed("response head too large".into()));
                                }
                                buffer.resize(buffer.len() * 2, 0);
                            }
                        }
                        Err(error) => return Err(failed(format!("malformed response head: {error}"))),
                    }
                }
                match stream.read(&mut buffer[filled..]).await {
                    Ok(n) if n > 0 => filled += n,
                    Ok(_) if filled == 0 => break 'answer "closed before a complete response head".to_string(),
                    Err(error) if filled == 0 => break 'answer error.to_string(),
                    Ok(_) => return Err(failed("closed before a complete response head".into())),
                    Err(error) => return Err(failed(error.to_string())),
                }
            }
        };
        if !(reused && idempotent) {
            return Err(failed(silent));
        }
        // An idle connection the upstream had closed: once more on a new one.
        stream = Box::pin(connections::open(address)).await?;
        reused = false;
    }
}

/// Writes the client's response head for the upstream's `response` into `out`: hop-by-hop
/// headers (and those its `Connection` names) dropped, framing as relayed. Returns the
/// framing and whether the upstream connection may be reused.
fn client_head(
    out: &mut Vec<u8>,
    response: &httparse::Response<'_, '_>,
    extra: &[u8],
    date: impl FnOnce(&mut Vec<u8>),
    head_request: bool,
    close: bool,
) -> Result<(Framing, bool), String> {
    let status = response.code.unwrap_or(0);
    let mut reusable = response.version == Some(1);
    let mut length: Option<u64> = None;
    let mut coding: Option<&[u8]> = None;
    let mut listed: [&[u8]; 8] = [&[]; 8];
    let mut listed_count = 0;
    // More names than `listed` holds: they are looked up in the Connection lines instead.
    let mut overflow = false;
    let mut dated = false;
    let mut kinds = [Kind::Other; MAX_HEADERS];
    for (header, slot) in response.headers.iter().zip(kinds.iter_mut()) {
        *slot = kind(header.name);
        match *slot {
            Kind::Date => dated = true,
            Kind::Connection => {
                for token in tokens(header.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        reusable = false;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                        if listed_count == listed.len() {
                            overflow = true;
                        } else {
                            listed[listed_count] = token;
                            listed_count += 1;
                        }
                    }
                }
            }
            Kind::ContentLength => {
                let text = std::str::from_utf8(header.value).map_err(|_| "malformed Content-Length")?;
                let value: u64 = text.parse().map_err(|_| format!("malformed Content-Length {text:?}"))?;
                if length.is_some_and(|known| known != value) {
                    return Err("conflicting Content-Length values".into());
                }
                length = Some(value);
            }
            Kind::TransferEncoding => {
                if coding.is_some() {
                    return Err("more than one Transfer-Encoding line".into());
                }
                coding = Some(header.value);
            }
            _ => {}
        }
    }
    let framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if let Some(coding) = coding {
        // Transfer-Encoding overrides Content-Length, and such a message must not leave
        // the connection open for another (RFC 9112 §6.3).
        if length.is_some() {
            reusable = false;
        }
        match tokens(coding).last() {
            Some(last) if last.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        }
    } else if let Some(length) = length {
        Framing::Length(length)
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose {
        reusable = false;
    }

    out.clear();
    status_line(out, status, response.reason.unwrap_or("").as_bytes());
    for (header, &kind) in response.headers.iter().zip(kinds.iter()) {
        let framing_or_hop =
            matches!(kind, Kind::Connection | Kind::Hop | Kind::TransferEncoding | Kind::ContentLength | Kind::Upgrade);
        let is_named = |name: &[u8]| name.eq_ignore_ascii_case(header.name.as_bytes());
        let named = if overflow {
            let lines = response.headers.iter().filter(|line| self::kind(line.name) == Kind::Connection);
            lines.flat_map(|line| tokens(line.value)).any(is_named)
        } else {
            listed[..listed_count].iter().copied().any(is_named)
        };
        if !framing_or_hop && !named {
            push_header(out, header.name.as_bytes(), header.value);
        }
    }
    let mut digits = itoa::Buffer::new();
    match framing {
        Framing::Empty => {
            if let Some(length) = length.filter(|_| coding.is_none()) {
                push_header(out, b"content-length", digits.format(length).as_bytes());
            }
        }
        Framing::Length(length) => push_header(out, b"content-length", digits.format(length).as_bytes()),
        Framing::Chunked => push_header(out, b"transfer-encoding", coding.unwrap_or(b"chunked")),
        Framing::UntilClose => match coding {
            Some(coding) => {
                out.extend_from_slice(b"transfer-encoding: ");
                out.extend_from_slice(coding);
                out.extend_from_slice(b", chunked\r\n");
            }
            None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        },
    }
    if !dated {
        date(out);
    }
    out.extend_from_slice(extra);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok((framing, reusable))
}

/// Which side ended a relayed response before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broke {
    /// The client could not be written to (it went away).
    Client,
    /// The upstream closed, went quiet or framed its body wrongly.
    Upstream,
}

/// Relays the answer's head and body to the client, then pools the upstream connection if
/// it ended cleanly. An error means the client connection must close (the response could
/// not be completed), and says whose doing that was.
async fn relay(conn: &mut Conn<'_>, answer: Answer, address: &Arc<str>, idle: Duration) -> Result<(), Broke> {
    let Answer { mut stream, head, filled, framing, mut reusable, .. } = answer;
    let client = &mut *conn.stream;
    let out = &mut conn.out;
    let buffer = &mut conn.upstream;
    let body = &buffer[head..filled];
    match framing {
        Framing::Empty => {
            reusable &= body.is_empty();
            client.write_all(out).await.map_err(|_| Broke::Client)?;
        }
        Framing::Length(length) => {
            let first = body.len().min(usize::try_from(length).unwrap_or(usize::MAX));
            reusable &= first == body.len();
            out.extend_from_slice(&body[..first]);
            client.write_all(out).await.map_err(|_| Broke::Client)?;
            let mut remaining = length - first as u64;
            while remaining > 0 {
                let got = read_body(&mut stream, buffer, idle).await?;
                let take = got.min(usize::try_from(remaining).unwrap_or(usize::MAX));
                reusable &= take == got;
                client.write_all(&buffer[..take]).await.map_err(|_| Broke::Client)?;
                remaining -= take as u64;
            }
        }
        Framing::Chunked => {
            let mut chunks = Chunks::default();
            let (used, mut done) = chunks.advance(body).map_err(|()| Broke::Upstream)?;
            reusable &= !done || used == body.len();
            out.extend_from_slice(&body[..used]);
            client.write_all(out).await.map_err(|_| Broke::Client)?;
            while !done {
                let got = read_body(&mut stream, buffer, idle).await?;
                let used;
                (used, done) = chunks.advance(&buffer[..got]).map_err(|()| Broke::Upstream)?;
                reusable &= !done || used == got;
                client.write_all(&buffer[..used]).await.map_err(|_| Broke::Client)?;
            }
        }
        Framing::UntilClose => {
            if !body.is_empty() {
                chunk(out, body);
            }
            client.write_all(out).await.map_err(|_| Broke::Client)?;
            loop {
                let got = match tokio::time::timeout(idle, stream.read(buffer)).await {
                    Ok(Ok(got)) => got,
                    _ => return Err(Broke::Upstream),
                };
                out.clear();
                if got == 0 {
                    out.extend_from_slice(b"0\r\n\r\n");
                    client.write_all(out).await.map_err(|_| Broke::Client)?;
                    break;
                }
                chunk(out, &buffer[..got]);
                client.write_all(out).await.map_err(|_| Broke::Client)?;
            }
        }
    }
    if reusable {
        connections::put_stream(address, stream);
    }
    Ok(())
}

/// Reads some body bytes from the upstream; its closing or going quiet for `idle` before
/// the body's end is an error.
async fn read_body(stream: &mut TcpStream, buffer: &mut [u8], idle: Duration) -> Result<usize, Broke> {
    match tokio::time::timeout(idle, stream.read(buffer)).await {
        Ok(Ok(got)) if got > 0 => Ok(got),
        _ => Err(Broke::Upstream),
    }
}

/// Appends `data` as one chunk of a chunked body.
fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    let mut size = [0u8; 16];
    let digits = 16 - (data.len().leading_zeros() as usize / 4).min(15);
    headers::write_hex(&mut size[..digits], data.len() as u128);
    out.extend_from_slice(&size[..digits]);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Finds where a chunked body ends (RFC 9112 §7.1) without decoding it: the bytes are
/// relayed as they came.
#[derive(Debug, Default)]
struct Chunks {
    state: ChunkState,
    /// Hex digits of the current size line.
    digits: u8,
    /// Bytes of the current size, extension or trailer line, bounded.
    line: u16,
    /// The current chunk's size, as its digits are read.
    size: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data(u64),
    DataCr,
    DataLf,
    LineStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// The longest size, extension or trailer line accepted.
const CHUNK_LINE_LIMIT: u16 = 8 * 1024;

impl Chunks {
    /// Consumes the body bytes in `data` up to the body's end: how many belong to it, and
    /// whether it ended. Malformed framing is an error.
    fn advance(&mut self, data: &[u8]) -> Result<(usize, bool), ()> {
        let mut at = 0;
        while at < data.len() {
            if let ChunkState::Data(remaining) = self.state {
                let take = (data.len() - at).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                at += take;
                let remaining = remaining - take as u64;
                self.state = if remaining == 0 { ChunkState::DataCr } else { ChunkState::Data(remaining) };
                continue;
            }
            let byte = data[at];
            at += 1;
            self.state = match self.state {
                ChunkState::Size => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(());
                        }
                        let digit = match byte {
                            b'0'..=b'9' => byte - b'0',
                            b'a'..=b'f' => byte - b'a' + 10,
                            _ => byte - b'A' + 10,
                        };
                        self.size = self.size << 4 | u64::from(digit);
                        ChunkState::Size
                    }
                    _ if self.digits == 0 => return Err(()),
                    b';' | b' ' | b'\t' => ChunkState::Extension,
                    b'\r' => ChunkState::SizeLf,
                    _ => return Err(()),
                },
                ChunkState::Extension => {
                    self.line += 1;
                    if self.line > CHUNK_LINE_LIMIT || byte == b'\n' {
                        return Err(());
                    }
                    if byte == b'\r' { ChunkState::SizeLf } else { ChunkState::Extension }
                }
                ChunkState::SizeLf => {
                    if byte != b'\n' {
                        return Err(());
                    }
                    let size = self.size;
                    (self.digits, self.line, self.size) = (0, 0, 0);
                    if size == 0 { ChunkState::LineStart } else { ChunkState::Data(size) }
                }
                ChunkState::DataCr if byte == b'\r' => ChunkState::DataLf,
                ChunkState::DataLf if byte == b'\n' => ChunkState::Size,
                ChunkState::LineStart if byte == b'\r' => ChunkState::EndLf,
                ChunkState::LineStart | ChunkState::Trailer => {
                    self.line += 1;
                    if self.line > CHUNK_LINE_LIMIT || byte == b'\n' {
                        return Err(());
                    }
                    if byte == b'\r' { ChunkState::TrailerLf } else { ChunkState::Trailer }
                }
                ChunkState::TrailerLf if byte == b'\n' => {
                    self.line = 0;
                    ChunkState::LineStart
                }
                ChunkState::EndLf if byte == b'\n' => {
                    self.state = ChunkState::Done;
                    return Ok((at, true));
                }
                _ => return Err(()),
            };
        }
        Ok((at, self.state == ChunkState::Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; returns the bytes taken and whether it ended.
    fn feed(body: &[u8], step: usize) -> Result<(usize, bool), ()> {
        let mut chunks = Chunks::default();
        let mut taken = 0;
        for piece in body.chunks(step) {
            let (used, done) = chunks.advance(piece)?;
            taken += used;
            if done {
                return Ok((taken, true));
            }
            assert_eq!(used, piece.len(), "an unfinished body takes all it is given");
        }
        Ok((taken, false))
    }

    #[test]
    fn the_end_of_a_chunked_body_is_found_however_it_arrives() {
        let body = b"5;name=value\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 42\r\nx-other: 1\r\n\r\n";
        let extra = b"HTTP/1.1 200 OK\r\n";
        let mut with_extra = body.to_vec();
        with_extra.extend_from_slice(extra);
        for step in [1, 2, 3, 7, 64, with_extra.len()] {
            assert_eq!(feed(&with_extra, step), Ok((body.len(), true)), "pieces of {step}");
        }
        assert_eq!(feed(b"0\r\n\r\n", 1), Ok((5, true)), "an empty body");
        assert_eq!(feed(&body[..body.len() - 1], 5), Ok((body.len() - 1, false)), "not yet ended");
    }

    #[test]
    fn malformed_chunked_framing_is_refused() {
        for bad in [
            &b"\r\n"[..],
            b"g\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"10000000000000000\r\n",
            b"0\r\nbad trailer\n",
            b"0\r\n\rX",
        ] {
            assert_eq!(feed(bad, 1), Err(()), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn re_chunked_data_is_framed_in_hex() {
        let mut out = Vec::new();
        chunk(&mut out, b"hello");
        chunk(&mut out, &[b'x'; 0x1a2]);
        assert!(out.starts_with(b"5\r\nhello\r\n1a2\r\nxx"));
        assert!(out.ends_with(b"xx\r\n"));
        let mut chunks = Chunks::default();
        out.extend_from_slice(b"0\r\n\r\n");
        assert_eq!(chunks.advance(&out), Ok((out.len(), true)), "our own chunking decodes");
    }

    #[test]
    fn header_names_are_classified_in_any_case() {
        let cases = [
            ("Host", Kind::Host),
            ("content-LENGTH", Kind::ContentLength),
            ("Transfer-Encoding", Kind::TransferEncoding),
            ("Connection", Kind::Connection),
            ("Keep-Alive", Kind::Hop),
            ("TE", Kind::Hop),
            ("Trailer", Kind::Hop),
            ("Proxy-Authorization", Kind::Hop),
            ("Proxy-Authenticate", Kind::Hop),
            ("Upgrade", Kind::Upgrade),
            ("Expect", Kind::Expect),
            ("X-Forwarded-For", Kind::XForwardedFor),
            ("X-Forwarded-Host", Kind::XForwardedHost),
            ("X-Forwarded-Proto", Kind::XForwardedProto),
            ("X-Request-Id", Kind::XRequestId),
            ("Traceparent", Kind::Traceparent),
            ("TraceState", Kind::Tracestate),
            ("authorization", Kind::Authorization),
            ("DATE", Kind::Date),
            ("Content-Type", Kind::Other),
            ("X-Hosts", Kind::Other),
            ("te2", Kind::Other),
        ];
        for (name, expected) in cases {
            assert_eq!(kind(name), expected, "{name}");
        }
    }

    fn head(raw: &[u8], head_request: bool, close: bool) -> (Result<(Framing, bool), String>, String) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        assert!(response.parse(raw).unwrap().is_complete());
        let mut out = Vec::new();
        let date = |out: &mut Vec<u8>| out.extend_from_slice(b"date: D\r\n");
        let result = client_head(&mut out, &response, b"", date, head_request, close);
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_heads_keep_their_framing_and_lose_hop_by_hop_headers() {
        let (result, text) = head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, X-Up\r\nKeep-Alive: timeout=5\r\nX-Up: 1\r\nX-Kept: 2\r\n\r\n",
            false,
            false,
        );
        assert_eq!(result, Ok((Framing::Length(5), true)));
        assert_eq!(text, "HTTP/1.1 200 OK\r\nX-Kept: 2\r\ncontent-length: 5\r\ndate: D\r\n\r\n");

        let (result, text) =
            head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n", false, true);
        assert_eq!(result, Ok((Framing::Chunked, false)), "both lengths: chunked wins, connection not reused");
        assert_eq!(text, "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ndate: D\r\nconnection: close\r\n\r\n");

        let (result, text) = head(b"HTTP/1.0 200 OK\r\nX-A: b\r\n\r\n", false, false);
        assert_eq!(result, Ok((Framing::UntilClose, false)));
        assert_eq!(text, "HTTP/1.1 200 OK\r\nX-A: b\r\ntransfer-encoding: chunked\r\ndate: D\r\n\r\n");

        let (result, text) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", true, false);
        assert_eq!(result, Ok((Framing::Empty, true)), "HEAD: no body, the length kept");
        assert_eq!(text, "HTTP/1.1 200 OK\r\ncontent-length: 1234\r\ndate: D\r\n\r\n");
        assert_eq!(head(b"HTTP/1.1 304 Not Modified\r\n\r\n", false, false).0, Ok((Framing::Empty, true)));

        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", false, false).0.is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", false, false).0.is_err());
    }

    #[test]
    fn an_upstream_date_is_kept_and_a_missing_one_added_once() {
        let dated = "HTTP/1.1 200 OK\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\ncontent-length: 0\r\n\r\n";
        let (_, text) = head(dated.as_bytes(), false, false);
        assert_eq!(text, dated, "the upstream's Date, and no second one");

        let mut line = Vec::new();
        push_date(&mut line);
        let text = std::str::from_utf8(&line).unwrap();
        let value =
            text.strip_prefix("date: ").and_then(|v| v.strip_suffix("\r\n")).unwrap_or_else(|| panic!("{text:?}"));
        let stamped = httpdate::parse_http_date(value).unwrap_or_else(|e| panic!("{value:?}: {e}"));
        let now = std::time::SystemTime::now();
        let age = now.duration_since(stamped).unwrap_or_else(|e| panic!("{value:?} is {:?} ahead", e.duration()));
        assert!(age < Duration::from_secs(2), "{value:?} is {age:?} old");
    }
}
