//! HTTP/1.1 framing through the gateway's data plane, with raw TCP on both sides: each
//! test's client writes exact bytes to the gateway and parses what comes back, and each
//! upstream is a bare listener that parses the gateway's requests and answers with exact
//! bytes. What is pinned down: keep-alive and pipelining, every way a body can be framed
//! (length, chunked, close-delimited, none for HEAD, 204 and 304), `Expect: 100-continue`,
//! hop-by-hop and forwarding headers, malformed and slow clients, and an upstream answer
//! framed two ways at once.

mod support;

use conformance::support::Backend;
use serde_json::json;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a client waits for any one read from the gateway before its test fails.
const CLIENT_PATIENCE: Duration = Duration::from_secs(10);
/// How long an upstream waits for the gateway's next bytes before dropping the connection.
const UPSTREAM_PATIENCE: Duration = Duration::from_secs(120);

// ---- one HTTP/1.1 connection, either side -------------------------------------------------

/// A start line (request or status line) and header fields, names lower-cased, in order.
#[derive(Clone, Debug, Default)]
struct Head {
    start: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(n, _)| n == name).count()
    }

    /// Whether the comma-separated field `name` lists `token` (case-insensitively).
    fn lists(&self, name: &str, token: &str) -> bool {
        let values = self.headers.iter().filter(|(n, _)| n == name).flat_map(|(_, v)| v.split(','));
        values.map(str::trim).any(|t| t.eq_ignore_ascii_case(token))
    }

    fn status(&self) -> u16 {
        let code = self.start.split(' ').nth(1).and_then(|code| code.parse().ok());
        code.unwrap_or_else(|| panic!("not a status line: {:?}", self.start))
    }

    fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or_default()
    }

    fn target(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or_default()
    }
}

/// A whole message: head and decoded body.
#[derive(Clone, Debug, Default)]
struct Message {
    head: Head,
    body: Vec<u8>,
}

impl Message {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn cut_short() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the connection ended inside a message")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

fn field(line: &str) -> io::Result<(String, String)> {
    let (name, value) = line.split_once(':').ok_or_else(|| invalid(format!("not a header field: {line:?}")))?;
    if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
        return Err(invalid(format!("bad field name in {line:?}")));
    }
    Ok((name.to_ascii_lowercase(), value.trim().to_string()))
}

/// Reads HTTP/1.1 messages off a stream. Every read is bounded by `patience`; the buffer
/// only loses bytes once a whole head or body part is parsed, so `head` can be cancelled.
struct Wire {
    stream: TcpStream,
    buffer: Vec<u8>,
    patience: Duration,
}

impl Wire {
    /// Reads more bytes into the buffer: Ok(0) at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = vec![0u8; 64 * 1024];
        let read = tokio::time::timeout(self.patience, self.stream.read(&mut chunk)).await;
        let n = read.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "nothing arrived in time"))??;
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(at) = find(&self.buffer, b"\r\n") {
                let line =
                    String::from_utf8(self.buffer[..at].to_vec()).map_err(|_| invalid("a non-UTF-8 line".into()));
                self.buffer.drain(..at + 2);
                return line;
            }
            if self.fill().await? == 0 {
                return Err(cut_short());
            }
        }
    }

    async fn exact(&mut self, length: usize) -> io::Result<Vec<u8>> {
        while self.buffer.len() < length {
            if self.fill().await? == 0 {
                return Err(cut_short());
            }
        }
        Ok(self.buffer.drain(..length).collect())
    }

    /// The next head; None if the stream ends cleanly before one starts.
    async fn head(&mut self) -> io::Result<Option<Head>> {
        let end = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end;
            }
            if self.fill().await? == 0 {
                return if self.buffer.is_empty() { Ok(None) } else { Err(cut_short()) };
            }
        };
        let text = String::from_utf8(self.buffer[..end].to_vec()).map_err(|_| invalid("a non-UTF-8 head".into()))?;
        self.buffer.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or_default().to_string();
        let headers = lines.map(field).collect::<io::Result<_>>()?;
        Ok(Some(Head { start, headers }))
    }

    /// A chunked body, decoded (extensions ignored; trailer fields checked and dropped).
    async fn chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                break;
            }
            body.extend(self.exact(size).await?);
            if self.exact(2).await? != b"\r\n" {
                return Err(invalid("chunk data not followed by CRLF".into()));
            }
        }
        loop {
            let line = self.line().await?;
            if line.is_empty() {
                return Ok(body);
            }
            field(&line)?;
        }
    }

    /// The body of a message with `head`, framed as RFC 9112 §6.3 says. `bodyless`: a
    /// response to HEAD, or a 1xx, 204 or 304 one. The gateway sends every message read
    /// here, so framing a sender must not use (both fields, several lengths) is an error.
    async fn body(&mut self, head: &Head, response: bool, bodyless: bool) -> io::Result<Message> {
        let mut message = Message { head: head.clone(), ..Message::default() };
        if bodyless {
            return Ok(message);
        }
        let encoding = head.get("transfer-encoding");
        if encoding.is_some() && head.count("content-length") > 0 {
            return Err(invalid(format!("both Content-Length and Transfer-Encoding in {head:?}")));
        }
        if head.count("content-length") > 1 || head.count("transfer-encoding") > 1 {
            return Err(invalid(format!("repeated framing fields in {head:?}")));
        }
        if let Some(encoding) = encoding {
            if !encoding.eq_ignore_ascii_case("chunked") {
                return Err(invalid(format!("unexpected transfer coding {encoding:?}")));
            }
            message.body = self.chunked().await?;
        } else if let Some(length) = head.get("content-length") {
            let length = length.parse().map_err(|_| invalid(format!("bad Content-Length {length:?}")))?;
            message.body = self.exact(length).await?;
        } else if response {
            while self.fill().await? > 0 {}
            message.body = std::mem::take(&mut self.buffer);
        }
        Ok(message)
    }
}

// ---- the client -----------------------------------------------------------------------

/// A raw client connection to the gateway.
struct Client {
    wire: Wire,
}

impl Client {
    async fn connect(platform: &Platform) -> Client {
        let stream = TcpStream::connect(platform.gateway_server.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client { wire: Wire { stream, buffer: Vec::new(), patience: CLIENT_PATIENCE } }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.wire.stream.write_all(bytes.as_ref()).await.expect("writing to the gateway");
    }

    /// The next final response (interim 1xx ones skipped) to a request with `method`.
    async fn response(&mut self, method: &str) -> Message {
        loop {
            let head = self.wire.head().await.expect("reading a response head");
            let head = head.expect("the gateway closed the connection instead of answering");
            assert!(head.start.starts_with("HTTP/1.1 ") || head.start.starts_with("HTTP/1.0 "), "{head:?}");
            let status = head.status();
            if (100..200).contains(&status) {
                continue;
            }
            let bodyless = method == "HEAD" || status == 204 || status == 304;
            let message = self.wire.body(&head, true, bodyless).await;
            return message.unwrap_or_else(|error| panic!("reading the body of {head:?}: {error}"));
        }
    }

    /// `GET target`, its response.
    async fn get(&mut self, target: &str) -> Message {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: gateway.test\r\n\r\n")).await;
        self.response("GET").await
    }

    /// Waits up to `limit` for the gateway to end the connection (end of stream or reset):
    /// what arrived before, or None if it was still open.
    async fn closed_within(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut chunk = [0u8; 8192];
        loop {
            match tokio::time::timeout_at(deadline, self.wire.stream.read(&mut chunk)).await {
                Err(_) => return None,
                Ok(Ok(0) | Err(_)) => return Some(std::mem::take(&mut self.wire.buffer)),
                Ok(Ok(n)) => self.wire.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future).await.unwrap_or_else(|_| panic!("{what}: nothing within {limit:?}"))
}

// ---- raw upstreams --------------------------------------------------------------------

/// What an upstream answers: exact bytes, after `delay`, and whether it then closes.
struct Reply {
    bytes: Vec<u8>,
    close: bool,
    delay: Duration,
}

impl Reply {
    fn keep(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply { bytes: bytes.into(), close: false, delay: Duration::ZERO }
    }

    fn closing(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply { close: true, ..Reply::keep(bytes) }
    }
}

/// `200 OK` with `body` and its Content-Length.
fn ok(body: impl AsRef<[u8]>) -> Vec<u8> {
    let body = body.as_ref();
    let mut bytes =
        format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Answers with the request target as the body.
fn echo_target(request: &Message, _: usize) -> Reply {
    Reply::keep(ok(request.head.target()))
}

/// A bare HTTP/1.1 upstream on a loopback port: parses each request (body included),
/// remembers it, and writes what `answer` (given the request and its number) returns.
struct Origin {
    port: u16,
    seen: Arc<Mutex<Vec<Message>>>,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    async fn start(answer: impl Fn(&Message, usize) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen, connections) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicUsize::new(0)));
        let (log, accepted, answer) = (seen.clone(), connections.clone(), Arc::new(answer));
        let requests = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let (log, answer, requests) = (log.clone(), answer.clone(), requests.clone());
                tokio::spawn(async move {
                    let mut wire = Wire { stream, buffer: Vec::new(), patience: UPSTREAM_PATIENCE };
                    while let Ok(Some(head)) = wire.head().await {
                        let request = match wire.body(&head, false, false).await {
                            Ok(request) => request,
                            Err(error) => {
                                eprintln!("upstream: the gateway's request {head:?} was unreadable: {error}");
                                return;
                            }
                        };
                        let reply = answer(&request, requests.fetch_add(1, Ordering::SeqCst));
                        log.lock().unwrap().push(request);
                        tokio::time::sleep(reply.delay).await;
                        if wire.stream.write_all(&reply.bytes).await.is_err() || reply.close {
                            return;
                        }
                    }
                });
            }
        });
        Origin { port, seen, connections, task }
    }

    fn seen(&self) -> Vec<Message> {
        self.seen.lock().unwrap().clone()
    }
}

/// A platform whose route `/v1/echo` (prefix stripped, no retries) goes to `origin`.
async fn gateway_to(origin: &Origin) -> Platform {
    let platform = Platform::start(Backend::Sqlite).await;
    platform.service("origin", "round_robin", &[(origin.port, 100)], lenient_breaker()).await;
    platform
        .route(json!({"name": "echo", "path_prefix": "/echo", "methods": ["GET", "HEAD", "POST", "PUT"],
                      "api_version": "v1", "service": "origin", "strip_prefix": true, "retry": {"max_attempts": 0}}))
        .await;
    platform
}

/// Deterministic bytes that do not repeat with any short period.
fn pattern(length: usize) -> Vec<u8> {
    (0..length).map(|i| (i.wrapping_mul(31) ^ (i >> 8) ^ (i >> 16)) as u8).collect()
}

/// FNV-1a.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

fn assert_same_bytes(got: &[u8], expected: &[u8], what: &str) {
    let first_difference = got.iter().zip(expected).position(|(a, b)| a != b);
    assert!(
        got == expected,
        "{what}: {} bytes arrived, {} expected; first difference at {first_difference:?}",
        got.len(),
        expected.len()
    );
}

// ---- the tests ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    // The first answer is the slowest: a front that answered out of order would show it.
    let origin = Origin::start(|request, _| {
        let delay = if request.head.target() == "/one" { Duration::from_millis(300) } else { Duration::ZERO };
        Reply { delay, ..echo_target(request, 0) }
    })
    .await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    client
        .send(
            "GET /v1/echo/one HTTP/1.1\r\nHost: gateway.test\r\n\r\n\
             GET /v1/echo/two HTTP/1.1\r\nHost: gateway.test\r\n\r\n\
             GET /v1/echo/three?n=3 HTTP/1.1\r\nHost: gateway.test\r\n\r\n",
        )
        .await;
    for expected in ["/one", "/two", "/three?n=3"] {
        let response = client.response("GET").await;
        assert_eq!((response.head.status(), response.text().as_str()), (200, expected), "{:?}", response.head);
    }
    assert_eq!(origin.seen().len(), 3);
    assert_eq!(client.get("/v1/echo/four").await.text(), "/four", "the connection is still usable");
}

/// An idle keep-alive connection leaves its task for the listener's epoll set after
/// `PARK_AFTER`: whatever arrives next (a plain request, a request whose head and body
/// come in pieces, pipelined requests) is served as on a connection that never idled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_after_an_idle_wait_are_served_as_on_a_busy_connection() {
    let origin = Origin::start(|request, _| {
        if request.head.method() == "POST" {
            return Reply::keep(ok(digest_of(&request.body)));
        }
        echo_target(request, 0)
    })
    .await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    let idle = pake_listen::PARK_AFTER * 3;
    assert_eq!(client.get("/v1/echo/first").await.text(), "/first");
    tokio::time::sleep(idle).await;
    assert_eq!(client.get("/v1/echo/second").await.text(), "/second");
    tokio::time::sleep(idle).await;
    // The head in two pieces, the second after another idle wait (now a head in progress,
    // which the header timeout governs), then the body.
    let body = pattern(5000);
    client.send("POST /v1/echo/upload HTTP/1.1\r\nHost: gateway.test\r\n").await;
    tokio::time::sleep(idle).await;
    client.send(format!("content-length: {}\r\n\r\n", body.len())).await;
    client.send(&body).await;
    assert_eq!(client.response("POST").await.text(), digest_of(&body));
    tokio::time::sleep(idle).await;
    client
        .send(
            "GET /v1/echo/a HTTP/1.1\r\nHost: gateway.test\r\n\r\n\
             GET /v1/echo/b HTTP/1.1\r\nHost: gateway.test\r\n\r\n",
        )
        .await;
    assert_eq!(client.response("GET").await.text(), "/a");
    assert_eq!(client.response("GET").await.text(), "/b");
    let targets: Vec<String> = origin.seen().iter().map(|m| m.head.target().to_string()).collect();
    assert_eq!(targets, ["/first", "/second", "/upload", "/a", "/b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upstream_answer_with_extensions_and_trailers_arrives_whole() {
    let origin = Origin::start(|request, _| match request.head.target() {
        "/chunked" => Reply::keep(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
             5;ext=1\r\nhello\r\n7;name=\"quoted value\"\r\n, world\r\n1\r\n!\r\n10\r\n 0123456789abcde\r\n\
             0\r\nx-checksum: abc123\r\n\r\n",
        ),
        _ => echo_target(request, 0),
    })
    .await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    for _ in 0..2 {
        let response = client.get("/v1/echo/chunked").await;
        assert_eq!(response.head.status(), 200, "{:?}", response.head);
        assert_eq!(response.text(), "hello, world! 0123456789abcde");
        assert_eq!(client.get("/v1/echo/after").await.text(), "/after", "the next request on the connection");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_delimited_upstream_body_arrives_intact() {
    let body = pattern(100 * 1000);
    let sent = body.clone();
    let origin = Origin::start(move |_, _| {
        let mut bytes = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n".to_vec();
        bytes.extend_from_slice(&sent);
        Reply::closing(bytes)
    })
    .await;
    let platform = gateway_to(&origin).await;
    for _ in 0..2 {
        let mut client = Client::connect(&platform).await;
        let response = client.get("/v1/echo/unframed").await;
        assert_eq!(response.head.status(), 200, "{:?}", response.head);
        assert_same_bytes(&response.body, &body, "a close-delimited body");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_answers_carry_no_body_and_keep_the_connection() {
    let origin = Origin::start(|request, _| match request.head.target() {
        "/head" => Reply::keep("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1234\r\n\r\n"),
        "/none" => Reply::keep("HTTP/1.1 204 No Content\r\nx-kind: none\r\n\r\n"),
        "/same" => Reply::keep("HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\ncontent-length: 1234\r\n\r\n"),
        _ => echo_target(request, 0),
    })
    .await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;

    client.send("HEAD /v1/echo/head HTTP/1.1\r\nHost: gateway.test\r\n\r\n").await;
    let head = client.response("HEAD").await;
    assert_eq!(head.head.status(), 200);
    assert_eq!(
        head.head.get("content-length"),
        Some("1234"),
        "HEAD keeps the length a GET would have: {:?}",
        head.head
    );
    assert_eq!(origin.seen()[0].head.method(), "HEAD");
    assert_eq!(client.get("/v1/echo/after-head").await.text(), "/after-head");

    let none = client.get("/v1/echo/none").await;
    assert_eq!((none.head.status(), none.head.get("x-kind")), (204, Some("none")));
    assert_eq!(client.get("/v1/echo/after-204").await.text(), "/after-204");

    let same = client.get("/v1/echo/same").await;
    assert_eq!((same.head.status(), same.head.get("etag")), (304, Some("\"v1\"")));
    assert_eq!(client.get("/v1/echo/after-304").await.text(), "/after-304");

    // The same three pipelined in one write: no body bytes slip in between.
    client
        .send(
            "HEAD /v1/echo/head HTTP/1.1\r\nHost: gateway.test\r\n\r\nGET /v1/echo/none HTTP/1.1\r\nHost: gateway.test\r\n\r\n\
             GET /v1/echo/same HTTP/1.1\r\nHost: gateway.test\r\n\r\nGET /v1/echo/last HTTP/1.1\r\nHost: gateway.test\r\n\r\n",
        )
        .await;
    assert_eq!(client.response("HEAD").await.head.status(), 200);
    assert_eq!(client.response("GET").await.head.status(), 204);
    assert_eq!(client.response("GET").await.head.status(), 304);
    assert_eq!(client.response("GET").await.text(), "/last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_arrives_byte_exact() {
    let body = pattern(4 << 20);
    let answer = ok(&body);
    let origin = Origin::start(move |_, _| Reply::keep(answer.clone())).await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    for _ in 0..2 {
        let response = client.get("/v1/echo/big").await;
        assert_eq!(response.head.status(), 200, "{:?}", response.head);
        assert_same_bytes(&response.body, &body, "a 4 MiB body");
    }
}

/// The length and checksum of `body`.
fn digest_of(body: &[u8]) -> String {
    format!("{} {:016x}", body.len(), checksum(body))
}

/// Answers with the length and checksum of the request body it got.
fn digest(request: &Message, _: usize) -> Reply {
    Reply::keep(ok(digest_of(&request.body)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_reach_the_upstream_exactly() {
    let origin = Origin::start(digest).await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;

    let body = pattern(300 * 1000);
    let expected = digest_of(&body);
    client
        .send(format!(
            "POST /v1/echo/upload HTTP/1.1\r\nHost: gateway.test\r\ncontent-type: application/octet-stream\r\ncontent-length: {}\r\n\r\n",
            body.len()
        ))
        .await;
    client.send(&body).await;
    let response = client.response("POST").await;
    assert_eq!((response.head.status(), response.text()), (200, expected.clone()), "a Content-Length body");

    // The same bytes, chunked unevenly, one chunk with an extension, one chunk in two writes.
    let mut chunked =
        b"POST /v1/echo/upload HTTP/1.1\r\nHost: gateway.test\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    let mut rest = &body[..];
    for (n, size) in [1usize, 10, 1000, 65536, 100_000].into_iter().enumerate() {
        let extension = if n == 2 { ";name=value" } else { "" };
        chunked.extend(format!("{size:x}{extension}\r\n").bytes());
        chunked.extend_from_slice(&rest[..size]);
        chunked.extend(b"\r\n");
        rest = &rest[size..];
    }
    chunked.extend(format!("{:x}\r\n", rest.len()).bytes());
    client.send(&chunked).await;
    client.send(&rest[..rest.len() / 2]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.send(&rest[rest.len() / 2..]).await;
    client.send("\r\n0\r\n\r\n").await;
    let response = client.response("POST").await;
    assert_eq!((response.head.status(), response.text()), (200, expected), "a chunked body");

    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].head.get("content-length"), Some("300000"), "{:?}", seen[0].head);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_from_the_client_ends_the_connection_after_the_answer() {
    let origin = Origin::start(echo_target).await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    client.send("GET /v1/echo/bye HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n").await;
    let response = client.response("GET").await;
    assert_eq!((response.head.status(), response.text().as_str()), (200, "/bye"));
    let rest = client.closed_within(Duration::from_secs(2)).await;
    assert_eq!(rest, Some(Vec::new()), "the gateway closes the connection, sending nothing more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_request_without_host_is_answered() {
    let origin = Origin::start(echo_target).await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    client.send("GET /v1/echo/old?x=1 HTTP/1.0\r\n\r\n").await;
    let response = client.response("GET").await;
    assert_eq!((response.head.status(), response.text().as_str()), (200, "/old?x=1"), "{:?}", response.head);
    assert_eq!(response.head.get("transfer-encoding"), None, "no chunked coding for an HTTP/1.0 client");
    let rest = client.closed_within(Duration::from_secs(2)).await;
    assert_eq!(rest, Some(Vec::new()), "an HTTP/1.0 connection without keep-alive ends after the answer");
    let seen = origin.seen();
    assert_eq!(seen[0].head.get("host"), Some(format!("127.0.0.1:{}", origin.port).as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_the_body_through() {
    let origin = Origin::start(digest).await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    client
        .send(
            "POST /v1/echo/expect HTTP/1.1\r\nHost: gateway.test\r\ncontent-length: 11\r\nexpect: 100-continue\r\n\r\n",
        )
        .await;
    // A client waits a while for the interim answer, then sends the body anyway.
    if let Ok(interim) = tokio::time::timeout(Duration::from_secs(1), client.wire.head()).await {
        let interim = interim.expect("reading the interim answer").expect("the gateway closed the connection");
        assert_eq!(interim.status(), 100, "only 100 Continue may come before the body is sent: {interim:?}");
    }
    client.send("hello world").await;
    let response = client.response("POST").await;
    assert_eq!(response.head.status(), 200, "{:?}", response.head);
    assert_eq!(response.text(), digest_of(b"hello world"));
    assert_eq!(client.get("/v1/echo/next").await.text(), digest_of(b""), "the connection is still usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_stop_at_the_gateway_and_forwarding_headers_are_added() {
    let origin = Origin::start(|_, _| {
        Reply::keep(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=5, max=100\r\nconnection: X-Up\r\n\
             x-up: hop\r\nx-down: kept\r\n\r\nok",
        )
    })
    .await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    client
        .send(
            "GET /v1/echo/hops HTTP/1.1\r\nHost: api.example.test\r\nConnection: keep-alive, X-Secret\r\n\
             Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic dXNlcjpwYXNz\r\n\
             X-Secret: do-not-forward\r\nX-End-To-End: kept\r\n\r\n",
        )
        .await;
    let response = client.response("GET").await;
    assert_eq!((response.head.status(), response.text().as_str()), (200, "ok"));
    let down = &response.head;
    assert_eq!(down.get("keep-alive"), None, "{down:?}");
    assert_eq!(down.get("x-up"), None, "named by the upstream's Connection: {down:?}");
    assert!(!down.lists("connection", "x-up"), "{down:?}");
    assert_eq!(down.get("x-down"), Some("kept"));

    let seen = origin.seen();
    let up = &seen[0].head;
    for hop in ["connection", "keep-alive", "te", "proxy-authorization", "x-secret"] {
        assert_eq!(up.get(hop), None, "{hop} reached the upstream: {up:?}");
    }
    assert_eq!(up.get("x-end-to-end"), Some("kept"));
    assert_eq!(up.count("host"), 1, "{up:?}");
    assert_eq!(up.get("host"), Some(format!("127.0.0.1:{}", origin.port).as_str()));
    assert_eq!(up.get("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(up.get("x-forwarded-proto"), Some("http"));
    assert_eq!(up.get("x-forwarded-host"), Some("api.example.test"));
    assert!(up.get("x-request-id").is_some_and(|id| id.len() == 36), "{up:?}");
    let trace = up.get("traceparent").unwrap_or_default();
    let fields: Vec<&str> = trace.split('-').collect();
    assert_eq!(fields.iter().map(|f| f.len()).collect::<Vec<_>>(), [2, 32, 16, 2], "traceparent {trace:?}");
    assert!(trace.chars().all(|c| c == '-' || c.is_ascii_hexdigit()), "traceparent {trace:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_after_every_answer_costs_no_request() {
    // Every answer ends the upstream connection; only every other one says so.
    let origin = Origin::start(|request, n| {
        let target = request.head.target();
        let connection = if n % 2 == 0 { "connection: close\r\n" } else { "" };
        Reply::closing(format!("HTTP/1.1 200 OK\r\n{connection}content-length: {}\r\n\r\n{target}", target.len()))
    })
    .await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    for n in 0..20 {
        let response = client.get(&format!("/v1/echo/n/{n}")).await;
        assert_eq!((response.head.status(), response.text()), (200, format!("/n/{n}")), "request {n}");
    }
    assert_eq!(origin.seen().len(), 20);
    assert_eq!(origin.connections.load(Ordering::SeqCst), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_a_4xx_at_once() {
    let origin = Origin::start(echo_target).await;
    let platform = gateway_to(&origin).await;

    let started = Instant::now();
    let mut client = Client::connect(&platform).await;
    client.send("GARBAGE\r\n\r\n").await;
    let response = within(Duration::from_secs(2), "a garbage request line", client.response("GET")).await;
    assert_eq!(response.head.status(), 400, "{:?}", response.head);
    assert!(client.closed_within(Duration::from_secs(2)).await.is_some(), "the connection ends after a 400");
    assert!(started.elapsed() < Duration::from_secs(2));

    // A 128 KiB header section, in eight fields of 16 KiB.
    let mut request = b"GET /v1/echo/huge HTTP/1.1\r\nHost: gateway.test\r\n".to_vec();
    for n in 0..8 {
        request.extend(format!("x-filler-{n}: {}\r\n", "a".repeat(16 * 1024)).bytes());
    }
    request.extend(b"\r\n");
    let started = Instant::now();
    let mut client = Client::connect(&platform).await;
    // The gateway may refuse before reading it all: a failed write is not the test's concern.
    let _ = client.wire.stream.write_all(&request).await;
    let response = within(Duration::from_secs(2), "a 128 KiB header section", client.response("GET")).await;
    assert!(matches!(response.head.status(), 431 | 400), "{:?}", response.head.start);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(origin.seen().is_empty(), "nothing malformed reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let origin = Origin::start(echo_target).await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    client.send("GET /v1/echo/slow HTTP/1.1\r\nHost: x\r\n").await;
    let started = Instant::now();
    let sent = client.closed_within(Duration::from_secs(40)).await;
    let sent = sent.unwrap_or_else(|| panic!("the connection is still open after {:?}", started.elapsed()));
    let text = String::from_utf8_lossy(&sent);
    assert!(sent.is_empty() || text.starts_with("HTTP/1.1 408 "), "closed with {text:?}");
    assert!(origin.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_answer_framed_two_ways_is_not_smuggled_through() {
    // Content-Length ends the body right after the first chunk-size line; read by length,
    // what follows would be taken for the answer to the next request.
    let decoy = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled";
    let size_line = format!("{:x}\r\n", decoy.len());
    let ambiguous = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n{size_line}{decoy}\r\n0\r\n\r\n",
        size_line.len()
    );
    let origin = Origin::start(move |request, _| match request.head.target() {
        "/ambiguous" => Reply::keep(ambiguous.clone()),
        _ => echo_target(request, 0),
    })
    .await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    for _ in 0..2 {
        let response = client.get("/v1/echo/ambiguous").await;
        match response.head.status() {
            502 => {}
            200 => {
                assert_eq!(response.text(), decoy, "Transfer-Encoding overrides Content-Length: {:?}", response.head)
            }
            other => panic!("unexpected {other}: {:?}", response.head),
        }
        let next = client.get("/v1/echo/next").await;
        assert_eq!((next.head.status(), next.text().as_str()), (200, "/next"), "no smuggled answer");
    }
}

/// Paths reach the upstream normalised (unreserved escapes decoded, others kept as sent);
/// queries verbatim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percent_encoded_paths_reach_the_upstream_normalised_and_queries_verbatim() {
    let origin = Origin::start(echo_target).await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    let cases = [
        ("/v1/echo/a%20b?x=1&y=%2F", "/a%20b?x=1&y=%2F"),
        (
            "/v1/echo/%7Euser/x%2By/%E2%82%AC?q=a+b&empty=&flag&p=..%2F",
            "/~user/x%2By/%E2%82%AC?q=a+b&empty=&flag&p=..%2F",
        ),
        ("/v1/echo?only=query", "/?only=query"),
    ];
    for (target, upstream) in cases {
        let response = client.get(target).await;
        assert_eq!((response.head.status(), response.text().as_str()), (200, upstream), "{target}");
    }
    let seen: Vec<String> = origin.seen().iter().map(|request| request.head.target().to_string()).collect();
    assert_eq!(seen, cases.map(|(_, upstream)| upstream.to_string()));
}

/// Every answer carries one valid `Date` (RFC 9110 §6.6.1): the upstream's when it sent one,
/// else the gateway's, and so do the gateway's own refusals. A client's `Date` reaches the
/// upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_has_one_date() {
    const UPSTREAM_DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";
    let origin = Origin::start(|request, _| match request.head.target() {
        "/dated" => Reply::keep(format!("HTTP/1.1 200 OK\r\ndate: {UPSTREAM_DATE}\r\ncontent-length: 2\r\n\r\nok")),
        _ => Reply::keep(ok("undated")),
    })
    .await;
    let platform = gateway_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    let assert_fresh = |response: &Message, what: &str| {
        assert_eq!(response.head.count("date"), 1, "{what}: {:?}", response.head);
        let value = response.head.get("date").unwrap_or_default();
        let stamped = httpdate::parse_http_date(value).unwrap_or_else(|e| panic!("{what}: {value:?}: {e}"));
        let skew = stamped.duration_since(std::time::SystemTime::now()).unwrap_or_default();
        let age = std::time::SystemTime::now().duration_since(stamped).unwrap_or_default();
        assert!(age < Duration::from_secs(3) && skew < Duration::from_secs(1), "{what}: {value:?}");
    };

    let undated = client.get("/v1/echo/undated").await;
    assert_eq!((undated.head.status(), undated.text().as_str()), (200, "undated"));
    assert_fresh(&undated, "an upstream answer without Date");

    let dated = client.get("/v1/echo/dated").await;
    assert_eq!(dated.head.status(), 200);
    assert_eq!(dated.head.count("date"), 1, "{:?}", dated.head);
    assert_eq!(dated.head.get("date"), Some(UPSTREAM_DATE), "the upstream's Date is relayed as sent");

    client
        .send("GET /v1/echo/with-date HTTP/1.1\r\nHost: gateway.test\r\nDate: Mon, 07 Nov 1994 08:49:37 GMT\r\n\r\n")
        .await;
    assert_eq!(client.response("GET").await.head.status(), 200);
    let seen = origin.seen();
    let forwarded = seen.iter().find(|request| request.head.target() == "/with-date").expect("the request arrived");
    assert_eq!(forwarded.head.get("date"), Some("Mon, 07 Nov 1994 08:49:37 GMT"), "{:?}", forwarded.head);

    let no_route = client.get("/v1/nowhere").await;
    assert_eq!(no_route.head.status(), 404, "{:?}", no_route.head);
    assert_fresh(&no_route, "the gateway's 404");

    // A service whose one instance's port has no listener.
    let closed = TcpListener::bind(("127.0.0.1", 0)).await.unwrap().local_addr().unwrap().port();
    platform.service("nobody", "round_robin", &[(closed, 100)], lenient_breaker()).await;
    platform
        .route(json!({"name": "nobody", "path_prefix": "/nobody", "methods": ["GET"], "api_version": "v1",
                      "service": "nobody", "retry": {"max_attempts": 0}}))
        .await;
    let unreachable = client.get("/v1/nobody/x").await;
    assert!(unreachable.head.status() >= 500, "{:?}", unreachable.head);
    assert_fresh(&unreachable, "the gateway's answer for an unreachable upstream");
}

/// Shutdown while requests are in flight, on both paths (a plain GET on the gateway's own
/// path, a POST with a body on hyper's): both answers arrive whole, an idle keep-alive
/// connection is closed at once, and new connections are refused once the server is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_and_closes_idle_connections() {
    let origin = Origin::start(|request: &Message, _| Reply {
        delay: if request.head.target().starts_with("/slow") { Duration::from_millis(600) } else { Duration::ZERO },
        ..Reply::keep(ok(request.head.target()))
    })
    .await;
    let Platform { gateway_server, .. } = gateway_to(&origin).await;
    let address = gateway_server.addr;
    let connect = || async {
        let stream = TcpStream::connect(address).await.unwrap();
        Client { wire: Wire { stream, buffer: Vec::new(), patience: CLIENT_PATIENCE } }
    };
    let mut idle = connect().await;
    assert_eq!(idle.get("/v1/echo/first").await.text(), "/first");
    let mut plain = connect().await;
    plain.send("GET /v1/echo/slow-get HTTP/1.1\r\nHost: gateway.test\r\n\r\n").await;
    let mut general = connect().await;
    general.send("POST /v1/echo/slow-post HTTP/1.1\r\nHost: gateway.test\r\ncontent-length: 2\r\n\r\nhi").await;
    // Both requests reach the upstream before the shutdown starts.
    within(Duration::from_secs(5), "both requests upstream", async {
        while origin.seen().len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let stopping = tokio::spawn(gateway_server.stop());
    let closed = idle.closed_within(Duration::from_secs(2)).await;
    assert_eq!(closed, Some(Vec::new()), "an idle connection is closed without a word");
    let answered = plain.response("GET").await;
    assert_eq!((answered.head.status(), answered.text().as_str()), (200, "/slow-get"));
    let answered = general.response("POST").await;
    assert_eq!((answered.head.status(), answered.text().as_str()), (200, "/slow-post"));
    within(Duration::from_secs(5), "the server to finish", stopping).await.unwrap();
    assert!(TcpStream::connect(address).await.is_err(), "no new connections after shutdown");
}

// ---- paths, hosts and bodies, the same on every transport ------------------------------

/// The ways a request reaches the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// The gateway's own HTTP/1.1 path.
    Own,
    /// hyper's HTTP/1.1, after a request the own path hands over.
    General,
    /// HTTP/2 with prior knowledge.
    H2,
}

const TRANSPORTS: [Transport; 3] = [Transport::Own, Transport::General, Transport::H2];

/// A client connection over `transport`.
enum Conn {
    H1(Client),
    H2(hyper::client::conn::http2::SendRequest<axum::body::Body>),
}

impl Conn {
    /// A connection over `transport`, handed over (for the general path) by a request to
    /// no route, which reaches no upstream.
    async fn open_plain(platform: &Platform, transport: Transport) -> Conn {
        match transport {
            Transport::General => {
                let mut client = Client::connect(platform).await;
                client.send("GET /v1/nowhere HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-hop\r\n\r\n").await;
                assert_eq!(client.response("GET").await.head.status(), 404);
                Conn::H1(client)
            }
            other => Conn::open(platform, other).await,
        }
    }

    async fn open(platform: &Platform, transport: Transport) -> Conn {
        match transport {
            Transport::Own => Conn::H1(Client::connect(platform).await),
            Transport::General => {
                let mut client = Client::connect(platform).await;
                // `Connection` naming another header is the general path's: the connection
                // stays there for the rest of its life.
                client.send("GET /v1/webpub/warm HTTP/1.1\r\nHost: gateway.test\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\n\r\n").await;
                assert_eq!(client.response("GET").await.head.status(), 200);
                Conn::H1(client)
            }
            Transport::H2 => {
                let stream = TcpStream::connect(platform.gateway_server.addr).await.unwrap();
                let (sender, connection) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(stream),
                )
                .await
                .unwrap();
                tokio::spawn(connection);
                Conn::H2(sender)
            }
        }
    }

    /// `GET target` (sent as is), with extra header lines; the status and body. None when
    /// the transport's client cannot even send the target.
    async fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
        match self {
            Conn::H1(client) => {
                let mut request = format!("GET {target} HTTP/1.1\r\nHost: gateway.test\r\n");
                for (name, value) in headers {
                    request.push_str(&format!("{name}: {value}\r\n"));
                }
                client.send(request + "\r\n").await;
                let response = client.response("GET").await;
                Some((response.head.status(), response.text()))
            }
            Conn::H2(sender) => {
                let uri: axum::http::Uri = format!("http://gateway.test{target}").parse().ok()?;
                let mut request = axum::http::Request::get(uri).body(axum::body::Body::empty()).unwrap();
                for (name, value) in headers {
                    request.headers_mut().insert(
                        axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                        axum::http::HeaderValue::from_str(value).unwrap(),
                    );
                }
                sender.ready().await.unwrap();
                let response = within(CLIENT_PATIENCE, "an HTTP/2 answer", sender.send_request(request)).await.unwrap();
                let status = response.status().as_u16();
                let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20).await.unwrap();
                Some((status, String::from_utf8_lossy(&body).into_owned()))
            }
        }
    }
}

/// One service behind four routes: `/webpub` (public), `/websec` (needs `arxiv:read`),
/// `/strip` (prefix stripped) and `/keep` (empty segments kept).
async fn routes_to(origin: &Origin) -> Platform {
    let platform = Platform::start(Backend::Sqlite).await;
    platform.service("origin", "round_robin", &[(origin.port, 100)], lenient_breaker()).await;
    for (name, extra) in [
        ("webpub", json!({})),
        ("websec", json!({"required_scopes": ["arxiv:read"]})),
        ("strip", json!({"strip_prefix": true})),
        ("keep", json!({"merge_slashes": false})),
    ] {
        let mut spec = json!({"name": name, "path_prefix": format!("/{name}"), "methods": ["GET", "HEAD", "POST", "DELETE"],
                              "api_version": "v1", "service": "origin", "retry": {"max_attempts": 0}});
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        platform.route(spec).await;
    }
    platform
}

fn reader_token() -> String {
    pake_tokens::TokenIssuer::hs256(SECRET).unwrap().issue("reader", None, &["arxiv:read"], Duration::from_secs(600))
}

/// No spelling of a path escapes its route: every dot-segment form is judged by the route
/// it resolves to (and needs its token), or refused with 400; the upstream only ever sees
/// normalised paths. The same on the own HTTP/1.1 path, hyper's, and HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_form_escapes_its_route_on_any_transport() {
    let origin = Origin::start(echo_target).await;
    let platform = routes_to(&origin).await;
    // (target, status without a token, what the upstream sees when one is given)
    let cases: &[(&str, u16, Option<&str>)] = &[
        ("/v1/websec/secret.txt", 401, Some("/websec/secret.txt")),
        ("/v1/webpub/../websec/secret.txt", 401, Some("/websec/secret.txt")),
        ("/v1/webpub/%2e%2e/websec/secret.txt", 401, Some("/websec/secret.txt")),
        ("/v1/webpub/%2E%2E/websec/secret.txt", 401, Some("/websec/secret.txt")),
        ("/v1/webpub/.%2e/websec/secret.txt", 401, Some("/websec/secret.txt")),
        ("/v1/webpub/%2e./websec/secret.txt", 401, Some("/websec/secret.txt")),
        ("/v1/webpub/./../websec/secret.txt", 401, Some("/websec/secret.txt")),
        ("/v1/webpub/../../v1/websec/secret.txt", 401, Some("/websec/secret.txt")),
        ("/v1//websec/secret.txt", 401, Some("/websec/secret.txt")),
        // RFC 3986 removes the dot-segment with the empty segment before it: what is
        // forwarded is under /webpub, and has no dot left for an upstream to resolve.
        ("/v1/webpub//..//websec/secret.txt", 200, Some("/webpub/websec/secret.txt")),
        ("/v1/websec;jsessionid=1/secret.txt", 401, Some("/websec;jsessionid=1/secret.txt")),
        ("/v1/%77ebsec/secret.txt", 401, Some("/websec/secret.txt")),
        ("/v1/webpub/..;/websec/secret.txt", 400, None),
        ("/v1/webpub/.;/websec/secret.txt", 400, None),
        ("/v1/webpub/..%2fwebsec/secret.txt", 400, None),
        ("/v1/webpub/..%2Fwebsec/secret.txt", 400, None),
        ("/v1/webpub/..%5cwebsec/secret.txt", 400, None),
        ("/v1/webpub/..\\websec/secret.txt", 400, None),
        ("/v1/webpub/%252e%252e/websec/secret.txt", 400, None),
        ("/v1/webpub/%2e%2e%2fwebsec/secret.txt", 400, None),
        ("/v1/webpub/%00/x", 400, None),
        ("/v1/webpub/%zz/x", 400, None),
        // A stripped prefix cannot be climbed out of: what is left is matched, not sent.
        ("/v1/strip/../internal/admin.txt", 404, None),
        ("/v1/strip/%2e%2e/internal/admin.txt", 404, None),
        ("/v1/strip/a/../b", 200, Some("/b")),
        ("/v1/strip/./", 200, Some("/")),
        ("/v1/webpub/./x/.", 200, Some("/webpub/x/")),
        ("/v1/webpub//a///b", 200, Some("/webpub/a/b")),
        ("/v1/keep//a///b", 200, Some("/keep//a///b")),
        ("/v1/keep//a/..//b", 200, Some("/keep///b")),
    ];
    let bearer = format!("Bearer {}", reader_token());
    for transport in TRANSPORTS {
        let mut conn = Conn::open(&platform, transport).await;
        for &(target, anonymous, authorised) in cases {
            let Some((status, body)) = conn.get(target, &[]).await else {
                assert_eq!(transport, Transport::H2, "{target}: only the HTTP/2 client refuses to send some targets");
                assert_eq!(anonymous, 400, "{target}: an HTTP/2 client must be able to send it");
                continue;
            };
            assert_eq!(status, anonymous, "{transport:?} {target}: {body}");
            if status == 400 {
                let error: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(error["code"], "invalid_path", "{transport:?} {target}: {body}");
            }
            if status == 200 {
                assert_eq!(Some(body.as_str()), authorised, "{transport:?} {target}");
            }
            let (status, body) = conn.get(target, &[("authorization", &bearer)]).await.unwrap();
            match authorised {
                Some(upstream) => {
                    assert_eq!((status, body.as_str()), (200, upstream), "{transport:?} {target} with a token")
                }
                None => assert_eq!(status, anonymous, "{transport:?} {target} with a token: {body}"),
            }
        }
    }
    for request in origin.seen() {
        let target = request.head.target();
        assert!(
            !target.contains("..") && !target.contains("%2e") && !target.contains("%2E") && !target.contains('\\'),
            "the upstream saw {target}"
        );
    }
    // Without a token, no request for /websec ever reached the upstream: every one it saw
    // for /websec carried the reader's token.
    let secret_requests = origin.seen().iter().filter(|r| r.head.target().starts_with("/websec")).count();
    let authorised = origin
        .seen()
        .iter()
        .filter(|r| r.head.target().starts_with("/websec") && r.head.get("authorization") == Some(bearer.as_str()))
        .count();
    assert_eq!(secret_requests, authorised);
}

/// RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is a 400, on both HTTP/1.1
/// paths; HTTP/1.0 needs none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_1_requests_need_exactly_one_host() {
    let origin = Origin::start(echo_target).await;
    let platform = routes_to(&origin).await;
    for transport in [Transport::Own, Transport::General] {
        for (what, head) in [
            ("no Host", "GET /v1/webpub/a HTTP/1.1\r\n\r\n"),
            ("two Hosts", "GET /v1/webpub/a HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"),
            ("no Host, admin API", "GET /v1/health HTTP/1.1\r\n\r\n"),
        ] {
            let Conn::H1(mut client) = Conn::open(&platform, transport).await else { unreachable!() };
            client.send(head).await;
            let response = client.response("GET").await;
            assert_eq!(response.head.status(), 400, "{transport:?}, {what}");
            let error: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(error["code"], "invalid_host", "{transport:?}, {what}");
        }
    }
    assert!(origin.seen().iter().all(|r| r.head.target() == "/webpub/warm"), "no Host-less request was proxied");
}

/// A GET's body reaches the upstream however it is framed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_body_is_forwarded_whether_chunked_or_counted() {
    let origin = Origin::start(digest).await;
    let platform = routes_to(&origin).await;
    let mut client = Client::connect(&platform).await;
    client.send("GET /v1/webpub/q HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 5\r\n\r\nhello").await;
    let counted = client.response("GET").await;
    client.send("GET /v1/webpub/q HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n").await;
    let chunked = client.response("GET").await;
    assert_eq!(counted.head.status(), 200);
    assert_eq!(chunked.text(), counted.text(), "both bodies arrived alike");
    let seen = origin.seen();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|request| request.body == b"hello"),
        "{:?}",
        seen.iter().map(|r| r.text()).collect::<Vec<_>>()
    );
}

/// The state of the one breaker of `service`.
async fn breaker(platform: &Platform, service: &str) -> pake_gateway_client::types::CircuitBreakerState {
    let listed = platform.admin.list_circuit_breakers().service(service).send().await.unwrap().into_inner();
    listed.items.into_iter().next().expect("the service's instance has a breaker")
}

/// A client that announces a body and does not send it (closing early, or sending a
/// malformed chunk) gets 400 and costs the instance nothing: five of them used to open a
/// healthy instance's breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_s_broken_body_is_not_held_against_the_upstream() {
    let origin = Origin::start(echo_target).await;
    let platform = Platform::start(Backend::Sqlite).await;
    let breaker_policy = json!({"failure_threshold": 2, "failure_rate_threshold": 1.0, "minimum_requests": 1000,
                                "rate_window_seconds": 60, "open_seconds": 30, "half_open_max_requests": 1});
    platform.service("origin", "round_robin", &[(origin.port, 100)], breaker_policy).await;
    platform
        .route(json!({"name": "upload", "path_prefix": "/upload", "methods": ["GET", "POST"], "api_version": "v1", "service": "origin"}))
        .await;
    for round in 0..5 {
        // Announces 100000 bytes, sends 100, closes its sending side.
        let mut client = Client::connect(&platform).await;
        client
            .send(format!(
                "POST /v1/upload/{round} HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 100000\r\n\r\n{}",
                "x".repeat(100)
            ))
            .await;
        client.wire.stream.shutdown().await.unwrap();
        let answer = client.closed_within(Duration::from_secs(10)).await.expect("the gateway ends the connection");
        let text = String::from_utf8_lossy(&answer);
        assert!(answer.is_empty() || text.starts_with("HTTP/1.1 400 "), "round {round}: {text}");

        // A malformed chunk size.
        let mut client = Client::connect(&platform).await;
        client.send(format!("POST /v1/upload/{round} HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n")).await;
        let answer = client.closed_within(Duration::from_secs(10)).await.expect("the gateway ends the connection");
        let text = String::from_utf8_lossy(&answer);
        assert!(answer.is_empty() || text.starts_with("HTTP/1.1 400 "), "round {round}: {text}");
    }
    let state = breaker(&platform, "origin").await;
    assert_eq!(state.state, pake_gateway_client::types::CircuitState::Closed);
    assert_eq!((state.total_failures, state.consecutive_failures), (0, 0), "{state:?}");
    let mut client = Client::connect(&platform).await;
    assert_eq!(client.get("/v1/upload/after").await.head.status(), 200, "the instance still takes traffic");
}

/// An upstream that dies mid-response (announces 100,000 bytes, sends 1,000, closes) is
/// counted as failing, on both transports, and its breaker opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_breaks_off_its_answer_is_counted_as_failing() {
    let origin = Origin::start(|_, _| {
        let mut bytes = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 1000));
        Reply::closing(bytes)
    })
    .await;
    for transport in [Transport::Own, Transport::General] {
        let platform = Platform::start(Backend::Sqlite).await;
        let breaker_policy = json!({"failure_threshold": 3, "failure_rate_threshold": 1.0, "minimum_requests": 1000,
                                    "rate_window_seconds": 60, "open_seconds": 30, "half_open_max_requests": 1});
        platform.service("origin", "round_robin", &[(origin.port, 100)], breaker_policy).await;
        platform
            .route(json!({"name": "cut", "path_prefix": "/cut", "methods": ["GET", "POST"], "api_version": "v1",
                          "service": "origin", "retry": {"max_attempts": 0}}))
            .await;
        for _ in 0..2 {
            let mut client = Client::connect(&platform).await;
            match transport {
                Transport::Own => client.send("GET /v1/cut HTTP/1.1\r\nHost: gateway.test\r\n\r\n").await,
                _ => client.send("POST /v1/cut HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 2\r\n\r\nhi").await,
            }
            let answer = client.closed_within(Duration::from_secs(10)).await.expect("the gateway ends the connection");
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 200 ") && answer.len() < 100_000, "{transport:?}: a cut answer");
        }
        let state = breaker(&platform, "origin").await;
        assert_eq!(state.total_failures, 2, "{transport:?}: {state:?}");
        let metrics = platform.get("/metrics").await.text().await.unwrap();
        assert!(
            metrics.contains("pake_gateway_upstream_failed_tries_total{service=\"origin\",outcome=\"body\"} 2"),
            "{transport:?}: {metrics}"
        );
        // The third opens the breaker.
        let mut client = Client::connect(&platform).await;
        client.send("GET /v1/cut HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n").await;
        client.closed_within(Duration::from_secs(10)).await;
        assert_eq!(
            breaker(&platform, "origin").await.state,
            pake_gateway_client::types::CircuitState::Open,
            "{transport:?}"
        );
    }
}

/// A half-open breaker's probe whose request is cancelled mid-try (an HTTP/2 client resets
/// its stream; the request's future is dropped) gives its slot and its in-flight count
/// back: the next request probes, and traffic flows again at once rather than never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_probe_leaves_no_breaker_stuck() {
    for how in ["an HTTP/2 stream reset", "a dropped request future"] {
        // The first answer fails, the second (the probe) takes 5 s, the rest are quick.
        let origin = Origin::start(|_, n| match n {
            0 => Reply::keep(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n".to_vec()),
            1 => Reply { delay: Duration::from_secs(5), ..Reply::keep(ok("slow")) },
            _ => Reply::keep(ok("fine")),
        })
        .await;
        let platform = Platform::start(Backend::Sqlite).await;
        let breaker_policy = json!({"failure_threshold": 1, "failure_rate_threshold": 1.0, "minimum_requests": 1000,
                                    "rate_window_seconds": 60, "open_seconds": 1, "half_open_max_requests": 1});
        let (_, instances) = platform.service("origin", "least_request", &[(origin.port, 100)], breaker_policy).await;
        platform
            .route(json!({"name": "probe", "path_prefix": "/probe", "methods": ["GET"], "api_version": "v1",
                          "service": "origin", "retry": {"max_attempts": 0}}))
            .await;
        assert_eq!(platform.get("/v1/probe").await.status().as_u16(), 500);
        assert_eq!(breaker(&platform, "origin").await.state, pake_gateway_client::types::CircuitState::Open);
        tokio::time::sleep(Duration::from_millis(1100)).await;

        // The probe, given up on after 300 ms.
        let patience = Duration::from_millis(300);
        if how == "an HTTP/2 stream reset" {
            let Conn::H2(mut sender) = Conn::open(&platform, Transport::H2).await else { unreachable!() };
            let request =
                axum::http::Request::get("http://gateway.test/v1/probe").body(axum::body::Body::empty()).unwrap();
            sender.ready().await.unwrap();
            assert!(tokio::time::timeout(patience, sender.send_request(request)).await.is_err(), "the probe is slow");
        } else {
            let mut request = axum::http::Request::get("/v1/probe").body(axum::body::Body::empty()).unwrap();
            request.headers_mut().insert("host", "gateway.test".parse().unwrap());
            let front = platform.gateway.front();
            let call = front.call(request, std::net::SocketAddr::from(([127, 0, 0, 1], 40000)));
            assert!(tokio::time::timeout(patience, call).await.is_err(), "the probe is slow");
        }
        let cancelled = Instant::now();
        let upstream = platform.gateway.plane.upstreams.get(instances[0]).expect("the instance got traffic");
        while upstream.in_flight.load(Ordering::SeqCst) != 0 {
            assert!(
                cancelled.elapsed() < Duration::from_secs(2),
                "{how}: the cancelled try is still counted in flight"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The next request probes (the slow one is still running upstream) and closes it.
        let response = platform.get("/v1/probe").await;
        let status = response.status().as_u16();
        assert_eq!((status, response.text().await.unwrap().as_str()), (200, "fine"), "{how}");
        assert!(cancelled.elapsed() < Duration::from_secs(2), "{how}: recovered before the abandoned try ended");
        assert_eq!(breaker(&platform, "origin").await.state, pake_gateway_client::types::CircuitState::Closed, "{how}");
        assert_eq!(upstream.in_flight.load(Ordering::SeqCst), 0, "{how}");
    }
}

/// An upstream request head as comparable across paths: the request line and the header
/// fields, names lower-cased, sorted; generated ids stand as `<generated>`.
fn comparable_request(request: &Message, sent: &str) -> (String, Vec<(String, String)>, Vec<u8>) {
    let mut headers: Vec<(String, String)> = request
        .head
        .headers
        .iter()
        .map(|(name, value)| {
            let generated = matches!(name.as_str(), "x-request-id" | "traceparent")
                && !sent.to_ascii_lowercase().contains(&format!("\r\n{name}:"));
            let value = if generated {
                "<generated>".to_string()
            } else if name == "traceparent" {
                // The gateway's own span id is the parent: random, like the ids it makes.
                format!("{}<span>{}", &value[..36], &value[52..])
            } else {
                value.clone()
            };
            (name.clone(), value)
        })
        .collect();
    headers.sort();
    (request.head.start.clone(), headers, request.body.clone())
}

fn comparable_response(response: &Message) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut headers: Vec<(String, String)> =
        response.head.headers.iter().filter(|(name, _)| name != "date").cloned().collect();
    headers.sort();
    (response.head.status(), headers, response.body.clone())
}

/// The same requests down the own HTTP/1.1 path and hyper's reach the upstream as the same
/// heads and bring back the same answers: the two transports apply one set of rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_http_1_1_paths_forward_and_answer_alike() {
    let origin = Origin::start(|request, _| {
        let body = format!("{} {}", request.head.method(), request.head.target());
        // An answer whose Connection names more headers than a short list holds.
        let hops: Vec<String> = (0..12).map(|n| format!("x-hop-{n}")).collect();
        let connection =
            if request.head.target().contains("many-hops") { hops.join(", ") } else { "x-up-hop".to_string() };
        let named: String = hops.iter().map(|hop| format!("{hop}: 1\r\n")).collect();
        let bytes = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nX-Upstream-Case: Kept\r\nconnection: {connection}\r\nx-up-hop: 1\r\n\
             {named}set-cookie: a=1\r\nset-cookie: b=2\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        Reply::keep(bytes)
    })
    .await;
    let platform = routes_to(&origin).await;
    let requests: &[(&str, &str)] = &[
        (
            "GET",
            "GET /v1/webpub/a?x=1&y=%2F&z HTTP/1.1\r\nHost: Api.Example:8443\r\nX-Mixed-Case: Value\r\nACCEPT: text/plain\r\n\r\n",
        ),
        (
            "GET",
            "GET /v1/webpub/multi HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.1\r\nx-forwarded-for: 198.51.100.2, 192.0.2.3\r\nX-Multi: a\r\nX-Multi: b\r\n\r\n",
        ),
        (
            "GET",
            "GET /v1/webpub/conn HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-A, x-b\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n\r\n",
        ),
        (
            "GET",
            "GET /v1/webpub/te HTTP/1.1\r\nHost: h\r\nTE: trailers\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic eA==\r\n\r\n",
        ),
        ("GET", "GET /v1/webpub/%7Efoo/%41b/./c/../d?q=%20 HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("HEAD", "HEAD /v1/webpub/head HTTP/1.1\r\nHost: h\r\n\r\n"),
        (
            "GET",
            "GET /v1/webpub/ids HTTP/1.1\r\nHost: h\r\nX-Request-Id: mine\r\nTraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nauthorization: basic eA==\r\n\r\n",
        ),
        ("GET", "GET /v1/webpub/zero HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nX-Empty:\r\n\r\n"),
        (
            "POST",
            "POST /v1/webpub/expect HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
        ),
        (
            "POST",
            "POST /v1/webpub/chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("GET", "GET /v1/nowhere HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("GET", "GET /v1/webpub/many-hops HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("DELETE", "DELETE /v1/webpub/method HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("GET", "GET /v1/webpub/..%2f HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("GET", "GET /v1/websec/x HTTP/1.1\r\nHost: h\r\nAuthorization: BEARER nonsense\r\n\r\n"),
    ];
    let Conn::H1(mut general) = Conn::open(&platform, Transport::General).await else { unreachable!() };
    for (method, request) in requests {
        // A new connection each time: one request the own path hands over takes the rest
        // of its connection with it.
        let mut own = Client::connect(&platform).await;
        let mut seen = Vec::new();
        let mut answers = Vec::new();
        for client in [&mut own, &mut general] {
            let before = origin.seen().len();
            client.send(request).await;
            answers.push(comparable_response(&client.response(method).await));
            let after = origin.seen();
            seen.push(after.get(before).map(|upstream| comparable_request(upstream, request)));
            assert!(after.len() <= before + 1, "one request reached the upstream once");
        }
        assert_eq!(seen[0], seen[1], "the upstream saw different requests for {request:?}");
        assert_eq!(answers[0], answers[1], "different answers to {request:?}");
        if request.contains("/webpub/") && !request.contains("..%2f") {
            assert_eq!(answers[0].0, 200, "{request:?}: {:?}", String::from_utf8_lossy(&answers[0].2));
        }
    }
}

/// Behind trusted proxies, the client a per-address limit counts is the right-most
/// untrusted address of `X-Forwarded-For`; from an untrusted peer the list is its own
/// invention, dropped. Without trusted proxies the peer is the client, as before. The same
/// on both HTTP/1.1 paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxies_decide_who_the_client_is() {
    let origin = Origin::start(echo_target).await;
    // (trusted networks, the limit's verdicts for four requests from two forwarded
    // clients a, a, a, b, what the upstream sees for a's request)
    let cases = [
        ("127.0.0.0/8", [200, 200, 429, 200], "203.0.113.1, 127.0.0.1"),
        ("10.0.0.0/8", [200, 200, 429, 429], "127.0.0.1"),
        ("", [200, 200, 429, 429], "203.0.113.1, 127.0.0.1"),
    ];
    for (trusted, verdicts, upstream_sees) in cases {
        for transport in [Transport::Own, Transport::General] {
            let mut options = options();
            options.trusted_proxies = pake_gateway::forwarded::TrustedProxies::parse(trusted).unwrap();
            let platform = Platform::start_with(Backend::Sqlite, options).await;
            platform.service("origin", "round_robin", &[(origin.port, 100)], lenient_breaker()).await;
            let policy: pake_gateway_client::types::RateLimitPolicySpec = serde_json::from_value(json!({
                "name": "one-a-minute", "algorithm": "gcra", "rate": 1, "period_seconds": 60, "burst": 1,
                "scope": "per_tenant_route"
            }))
            .unwrap();
            let policy = platform.admin.create_rate_limit_policy().body(policy).send().await.unwrap().into_inner();
            platform
                .route(json!({"name": "limited", "path_prefix": "/limited", "methods": ["GET"], "api_version": "v1",
                              "service": "origin", "rate_limit_policy_id": policy.id}))
                .await;
            let Conn::H1(mut client) = Conn::open_plain(&platform, transport).await else { unreachable!() };
            let mut got = Vec::new();
            let before = origin.seen().len();
            // One a minute, and a burst of one more.
            for forwarded in ["203.0.113.1", "203.0.113.1", "203.0.113.1", "203.0.113.2"] {
                client
                    .send(format!("GET /v1/limited/x HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: {forwarded}\r\n\r\n"))
                    .await;
                got.push(client.response("GET").await.head.status());
            }
            assert_eq!(got, verdicts, "trusted {trusted:?}, {transport:?}");
            let first = &origin.seen()[before];
            assert_eq!(first.head.get("x-forwarded-for"), Some(upstream_sees), "trusted {trusted:?}, {transport:?}");
        }
    }
}

/// W3C trace context through the gateway (Trace Context Level 1): a valid `traceparent`
/// is continued with the gateway as the parent and its `tracestate` passed on; anything
/// invalid starts a new trace and loses its `tracestate`. The same on every transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_continued_only_when_valid_on_every_transport() {
    let origin = Origin::start(|request, _| {
        let seen =
            json!({"traceparent": request.head.get("traceparent"), "tracestate": request.head.get("tracestate")});
        Reply::keep(ok(seen.to_string()))
    })
    .await;
    let platform = routes_to(&origin).await;
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    // (traceparent lines sent, whether the trace continues with its sampled flag)
    let cases: &[(&[&str], Option<&str>)] = &[
        (&[VALID], Some("01")),
        (&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"], Some("00")),
        (&["cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later-fields"], Some("01")),
        (&[], None),
        (&["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"], None),
        (&["00-00000000000000000000000000000000-00f067aa0ba902b7-01"], None),
        (&["00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"], None),
        (&["ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"], None),
        (&["00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01"], None),
        (&["garbage"], None),
        (&[VALID, VALID], None),
    ];
    for transport in TRANSPORTS {
        let mut conn = Conn::open(&platform, transport).await;
        for &(lines, continues) in cases {
            let mut headers: Vec<(&str, &str)> = lines.iter().map(|line| ("traceparent", *line)).collect();
            headers.push(("tracestate", "vendor=opaque"));
            if transport == Transport::H2 && lines.len() > 1 {
                continue; // one value per name here; the HTTP/1.1 paths cover repeated lines
            }
            let (status, body) = conn.get("/v1/webpub/trace", &headers).await.unwrap();
            assert_eq!(status, 200, "{transport:?} {lines:?}");
            let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
            let sent = seen["traceparent"].as_str().expect("a traceparent always goes upstream");
            let fields: Vec<&str> = sent.split('-').collect();
            assert_eq!(fields.iter().map(|f| f.len()).collect::<Vec<_>>(), [2, 32, 16, 2], "{sent}");
            assert_eq!(fields[0], "00", "{sent}");
            assert!(sent.bytes().all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{sent}");
            assert_ne!(fields[1], "0".repeat(32));
            assert_ne!(fields[2], "0".repeat(16));
            assert_ne!(fields[2], "00f067aa0ba902b7", "{transport:?} {lines:?}: the gateway is the new parent");
            match continues {
                Some(flags) => {
                    assert_eq!((fields[1], fields[3]), (TRACE, flags), "{transport:?} {lines:?}");
                    assert_eq!(seen["tracestate"], "vendor=opaque", "{transport:?} {lines:?}");
                }
                None => {
                    assert_ne!(fields[1], TRACE, "{transport:?} {lines:?}: a new trace");
                    assert_eq!(seen["tracestate"], serde_json::Value::Null, "{transport:?} {lines:?}");
                }
            }
        }
    }
}
