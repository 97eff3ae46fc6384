//! The listeners of the real `pake serve` process against clients that hold connections
//! without using them: silent new connections and idle keep-alive ones are closed after
//! their timeouts on every path (the gateway's own HTTP/1.1 path, hyper's HTTP/1.1,
//! HTTP/2, the registry); a few thousand idle sockets against a lowered descriptor limit
//! cannot stop the process from serving; heads that are malformed or too large get the
//! contracts' `Error` body, and many header lines are no reason to refuse a head.

mod support;

use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::Pake;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn data_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("pake-listeners-{}", uuid::Uuid::new_v4().simple()))
}

/// Reads from `stream` until the server closes it or `limit` passes; what it sent and
/// when it closed (after `since`), or `None` if it is still open.
async fn closed_within(stream: &mut TcpStream, since: Instant, limit: Duration) -> Option<(Duration, Vec<u8>)> {
    let mut sent = Vec::new();
    let mut buffer = [0u8; 4096];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => sent.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    closed.ok().map(|()| (since.elapsed(), sent))
}

/// One HTTP/1.1 response read off `stream`: status, head and body (`Content-Length`
/// framed, as every answer here is).
async fn response(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut read = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        assert!(n > 0, "closed before a whole head: {:?}", String::from_utf8_lossy(&read));
        read.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&read[..head_end]).to_string();
    let status = head[9..12].parse().expect("a status");
    let length = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
        .map(|v| v.parse::<usize>().expect("a length"))
        .unwrap_or(0);
    while read.len() < head_end + length {
        let n = stream.read(&mut buffer).await.expect("read");
        assert!(n > 0, "closed within the body");
        read.extend_from_slice(&buffer[..n]);
    }
    (status, head, read[head_end..head_end + length].to_vec())
}

/// Sends `request` on a new connection and reads the answer; the connection stays open.
async fn exchange(addr: SocketAddr, request: &[u8]) -> (TcpStream, u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let (status, head, body) = response(&mut stream).await;
    (stream, status, head, body)
}

/// An HTTP/2 connection (prior knowledge): when it was opened, when the server ended it.
struct H2 {
    sender: hyper::client::conn::http2::SendRequest<axum::body::Body>,
    ended: tokio::task::JoinHandle<Instant>,
}

impl H2 {
    async fn open(addr: SocketAddr) -> H2 {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (sender, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .expect("an HTTP/2 handshake");
        let ended = tokio::spawn(async move {
            let _ = connection.await;
            Instant::now()
        });
        H2 { sender, ended }
    }

    async fn get(&mut self, addr: SocketAddr, path: &str) -> u16 {
        let request = hyper::Request::get(format!("http://{addr}{path}")).body(axum::body::Body::empty()).unwrap();
        let response = self.sender.send_request(request).await.expect("an HTTP/2 answer");
        let status = response.status().as_u16();
        // Read the body to its end: the stream is then closed on both sides.
        let _ = axum::body::to_bytes(axum::body::Body::new(response.into_body()), usize::MAX).await;
        status
    }

    /// When the server ended the connection, after `since`; `None` if not within `limit`.
    async fn ended_within(self, since: Instant, limit: Duration) -> Option<Duration> {
        let ended = tokio::time::timeout(limit, self.ended).await.ok()?.expect("the connection task");
        Some(ended.duration_since(since))
    }
}

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Closed after `timeout`: not before (less a little for the clock), and not long after.
fn assert_closed_after(what: &str, closed: Option<Duration>, timeout: Duration) {
    let closed = closed.unwrap_or_else(|| panic!("{what}: still open {} s after its timeout", 3 + timeout.as_secs()));
    let early = timeout - Duration::from_millis(200);
    let late = timeout + Duration::from_millis(2500);
    assert!(closed >= early && closed <= late, "{what}: closed after {closed:?}, expected about {timeout:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_after_their_timeouts_on_every_path() {
    let dir = data_dir();
    let env = [
        ("PAKE_DATA_DIR", dir.display().to_string()),
        ("PAKE_HEADER_TIMEOUT_SECONDS", HEADER_TIMEOUT.as_secs().to_string()),
        ("PAKE_IDLE_TIMEOUT_SECONDS", IDLE_TIMEOUT.as_secs().to_string()),
    ];
    let pake = Pake::start(&["registry", "gateway"], &env).await;
    let (gateway, registry) = (pake.addrs["gateway"], pake.addrs["registry"]);
    let limit = IDLE_TIMEOUT + Duration::from_secs(3);

    let silent = |addr: SocketAddr| async move {
        let opened = Instant::now();
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let closed = closed_within(&mut stream, opened, limit).await;
        assert!(
            closed.as_ref().is_none_or(|(_, sent)| sent.is_empty()),
            "a silent connection is closed without a word"
        );
        closed.map(|(after, _)| after)
    };
    // Answered, then left idle: keep-alive.
    let idle = |addr: SocketAddr, request: &'static str, status: u16| async move {
        let (mut stream, got, head, _) = exchange(addr, request.as_bytes()).await;
        assert_eq!(got, status, "{head}");
        let answered = Instant::now();
        closed_within(&mut stream, answered, limit).await.map(|(after, _)| after)
    };
    // A second head begun 1 s after an answer and never finished: the header timeout
    // counts from its first byte, and the answer is 408 with the contract's body.
    let stalled = |addr: SocketAddr| async move {
        let (mut stream, got, _, _) = exchange(addr, b"GET /v1/nothing HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert_eq!(got, 404);
        tokio::time::sleep(Duration::from_secs(1)).await;
        stream.write_all(b"GET /v1/nothing HTTP/1.1\r\nhost: x\r\n").await.unwrap();
        let begun = Instant::now();
        let closed = closed_within(&mut stream, begun, limit).await;
        let sent = closed.as_ref().map(|(_, sent)| String::from_utf8_lossy(sent).to_string()).unwrap_or_default();
        assert!(sent.starts_with("HTTP/1.1 408 "), "{sent:?}");
        assert!(sent.contains("\"code\":\"request_timeout\""), "{sent:?}");
        closed.map(|(after, _)| after)
    };
    let h2_idle = |addr: SocketAddr, path: &'static str| async move {
        let mut h2 = H2::open(addr).await;
        assert_eq!(h2.get(addr, path).await, 200);
        let answered = Instant::now();
        h2.ended_within(answered, limit).await
    };
    let h2_silent = |addr: SocketAddr| async move {
        let opened = Instant::now();
        H2::open(addr).await.ended_within(opened, limit).await
    };

    let (
        silent_gateway,
        silent_registry,
        idle_own_path,
        idle_hyper_path,
        idle_registry,
        stalled_own_path,
        h2_idle_gateway,
        h2_idle_registry,
        h2_silent_gateway,
        h2_silent_registry,
    ) = tokio::join!(
        silent(gateway),
        silent(registry),
        // Unrouted: answered 404 by the gateway's own path, which keeps the connection.
        idle(gateway, "GET /v1/nothing HTTP/1.1\r\nhost: x\r\n\r\n", 404),
        // The gateway's API: handed over to hyper.
        idle(gateway, "GET /v1/health/live HTTP/1.1\r\nhost: x\r\n\r\n", 200),
        idle(registry, "GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n", 200),
        stalled(gateway),
        h2_idle(gateway, "/v1/health/live"),
        h2_idle(registry, "/health/live"),
        h2_silent(gateway),
        h2_silent(registry),
    );
    assert_closed_after("a silent connection to the gateway", silent_gateway, HEADER_TIMEOUT);
    assert_closed_after("a silent connection to the registry", silent_registry, HEADER_TIMEOUT);
    assert_closed_after("an idle connection on the gateway's own path", idle_own_path, IDLE_TIMEOUT);
    assert_closed_after("an idle connection on the gateway's hyper path", idle_hyper_path, IDLE_TIMEOUT);
    assert_closed_after("an idle connection to the registry", idle_registry, IDLE_TIMEOUT);
    assert_closed_after("a stalled second head on the gateway's own path", stalled_own_path, HEADER_TIMEOUT);
    assert_closed_after("an idle HTTP/2 connection to the gateway", h2_idle_gateway, IDLE_TIMEOUT);
    assert_closed_after("an idle HTTP/2 connection to the registry", h2_idle_registry, IDLE_TIMEOUT);
    assert_closed_after("an HTTP/2 connection to the gateway without a request", h2_silent_gateway, HEADER_TIMEOUT);
    assert_closed_after("an HTTP/2 connection to the registry without a request", h2_silent_registry, HEADER_TIMEOUT);

    // Every close was counted, by service and cause.
    let metrics = reqwest::get(format!("{}/metrics", pake.url("registry"))).await.unwrap().text().await.unwrap();
    assert_eq!(counter(&metrics, "pake_registry_connections_header_timeouts_total"), 2, "{metrics}");
    assert_eq!(counter(&metrics, "pake_registry_connections_idle_timeouts_total"), 2, "{metrics}");
    let metrics = reqwest::get(format!("{}/metrics", pake.url("gateway"))).await.unwrap().text().await.unwrap();
    assert_eq!(counter(&metrics, "pake_gateway_connections_header_timeouts_total"), 3, "{metrics}");
    assert_eq!(counter(&metrics, "pake_gateway_connections_idle_timeouts_total"), 3, "{metrics}");
    drop(pake);
    let _ = std::fs::remove_dir_all(dir);
}

fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in the metrics"))
}

/// A client behaving like a real one: a 503 or a failed connection is retried after 100
/// ms. The answer, and how long it took.
async fn patient_get(http: &reqwest::Client, url: &str, patience: Duration) -> (String, Duration, usize) {
    let started = Instant::now();
    let mut refusals = 0;
    loop {
        match http.get(url).send().await {
            Ok(response) if response.status() == 200 => {
                return (response.text().await.expect("a body"), started.elapsed(), refusals);
            }
            Ok(response) => {
                assert_eq!(response.status(), 503, "{url}");
                let body: Value = response.json().await.expect("a JSON refusal");
                assert_eq!(body["code"], "unavailable");
                refusals += 1;
            }
            Err(_) => refusals += 1,
        }
        assert!(started.elapsed() < patience, "{url}: no answer within {patience:?} ({refusals} refusals)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the attacking sockets saw.
#[derive(Default)]
struct Seen {
    /// Open now and sent nothing.
    held: AtomicUsize,
    /// Answered 503.
    refused: AtomicUsize,
    /// Closed by the server without a word (reclaimed), and for how long they were held
    /// in total, in milliseconds.
    reclaimed: AtomicUsize,
    reclaimed_after_ms: AtomicUsize,
}

/// An attacker's socket: connects, sends nothing, and reconnects 250 ms after the server
/// closes or refuses it, until `stop`.
async fn attacker(addr: SocketAddr, seen: Arc<Seen>, stop: Arc<tokio::sync::Notify>) {
    let run = async {
        loop {
            let Ok(mut stream) = TcpStream::connect(addr).await else {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            };
            let opened = Instant::now();
            seen.held.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0u8; 512];
            let read = stream.read(&mut buffer).await;
            seen.held.fetch_sub(1, Ordering::SeqCst);
            match read {
                Ok(n) if n > 0 => {
                    seen.refused.fetch_add(1, Ordering::SeqCst);
                }
                _ => {
                    seen.reclaimed.fetch_add(1, Ordering::SeqCst);
                    seen.reclaimed_after_ms.fetch_add(opened.elapsed().as_millis() as usize, Ordering::SeqCst);
                }
            }
            drop(stream);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::select! {
        () = run => {}
        () = stop.notified() => {}
    }
}

/// 2 × 1,500 sockets that never send a byte, reopened as soon as they are closed, against a
/// process allowed 2,048 descriptors (hard limit; the soft one starts at 1,024 and `pake`
/// raises it): the process refuses what it cannot hold, reclaims the idle sockets it holds
/// within about a second (its timeouts shrink under pressure), and a real client gets its
/// answers from both services throughout. Before the listener limits, the idle sockets
/// took every descriptor and both services stopped accepting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_cannot_take_the_process_out_of_descriptors() {
    const PER_SERVICE: usize = 1500;
    // This process opens the attacking sockets: it needs the descriptors.
    let (_, own) = pake_listen::raise_fd_limit().expect("the test's descriptor limit");
    assert!(own.soft >= 4 * PER_SERVICE as u64, "the test needs {} descriptors, has {}", 4 * PER_SERVICE, own.soft);
    let dir = data_dir();
    let pake = Pake::start_under(
        &["prlimit", "--nofile=1024:2048", "--"],
        &["registry", "gateway"],
        &[("PAKE_DATA_DIR", dir.display().to_string())],
    )
    .await;
    let limit = &pake.logged("descriptor limit")[0];
    assert_eq!((limit["soft"].as_u64(), limit["hard"].as_u64()), (Some(1024), Some(2048)), "{limit}");
    assert_eq!(limit["raised_to"].as_u64(), Some(2048), "{limit}");
    let cap = pake.logged("client connection limits")[0]["max_connections"].as_u64().expect("the cap");
    assert_eq!(cap, pake_listen::default_max_connections(2048) as u64);
    let (gateway, registry) = (pake.addrs["gateway"], pake.addrs["registry"]);

    let seen = Arc::new(Seen::default());
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut attack = tokio::task::JoinSet::new();
    for n in 0..2 * PER_SERVICE {
        let addr = if n % 2 == 0 { gateway } else { registry };
        attack.spawn(attacker(addr, seen.clone(), stop.clone()));
    }
    // The attack is on once the process refuses, or holds (nearly) every socket.
    let full = Instant::now();
    while seen.refused.load(Ordering::SeqCst) == 0 && seen.held.load(Ordering::SeqCst) < 2 * PER_SERVICE * 9 / 10 {
        assert!(full.elapsed() < Duration::from_secs(30), "the attack is not under way after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attack_started = Instant::now();

    let http = reqwest::Client::new();
    let patience = Duration::from_secs(10);
    let mut slowest = Duration::ZERO;
    let mut refusals = 0;
    for round in 0..10 {
        for (url, expected) in [
            (format!("{}/v1/health/live", pake.url("gateway")), "\"pass\""),
            (format!("{}/health/live", pake.url("registry")), "\"pass\""),
        ] {
            let (body, took, refused) = patient_get(&http, &url, patience).await;
            assert!(body.contains(expected), "round {round}: {url}: {body}");
            slowest = slowest.max(took);
            refusals += refused;
        }
    }
    let attacked_for = attack_started.elapsed();
    let held = seen.held.load(Ordering::SeqCst);
    // The held sockets are reclaimed fast although the configured timeouts are 20 s and 60 s.
    let reclaimed = seen.reclaimed.load(Ordering::SeqCst);
    let mean_hold = Duration::from_millis((seen.reclaimed_after_ms.load(Ordering::SeqCst) / reclaimed.max(1)) as u64);
    let metrics = patient_get(&http, &format!("{}/metrics", pake.url("gateway")), patience).await.0;
    let gateway_refused = counter(&metrics, "pake_gateway_connections_refused_total");
    let metrics = patient_get(&http, &format!("{}/metrics", pake.url("registry")), patience).await.0;
    let registry_refused = counter(&metrics, "pake_registry_connections_refused_total");
    stop.notify_waiters();
    while attack.join_next().await.is_some() {}

    eprintln!(
        "cap {cap}; over {attacked_for:?} of attack: slowest answer {slowest:?}, client retries {refusals}; \
         attacker: {} refused, {reclaimed} reclaimed after {mean_hold:?} on average, {held} held at the end; \
         refused by the gateway {gateway_refused}, by the registry {registry_refused}",
        seen.refused.load(Ordering::SeqCst)
    );
    assert!(slowest < Duration::from_secs(5), "a real client waited {slowest:?} for an answer");
    assert!(reclaimed > 0 && mean_hold < Duration::from_secs(5), "idle sockets held {mean_hold:?} on average");
    assert!(
        gateway_refused > 0 && registry_refused > 0,
        "both services refused: {gateway_refused}, {registry_refused}"
    );
    let log = pake.log.lock().unwrap().join("\n");
    assert!(!log.contains("Too many open files"), "the process ran out of descriptors");
    drop(log);
    drop(pake);
    let _ = std::fs::remove_dir_all(dir);
}

/// Sends `request` to `addr` on a new connection, after a request to `first` when given,
/// and checks it is refused with `status`, the `Error` body with `code`, and a close.
async fn refused_on(addr: SocketAddr, first: Option<&str>, request: &[u8], status: u16, code: &str) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    if let Some(path) = first {
        stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
        let (got, head, _) = response(&mut stream).await;
        assert_eq!(got, 200, "{head}");
    }
    // The server may answer before reading it all: a failed write is not the concern.
    let _ = stream.write_all(request).await;
    let (got, head, body) = response(&mut stream).await;
    assert_eq!(got, status, "{addr} after {first:?}: {head}");
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{addr} after {first:?}: {head}");
    assert!(head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let body: Value = serde_json::from_slice(&body).expect("a JSON body");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    let closed = closed_within(&mut stream, Instant::now(), Duration::from_secs(2)).await;
    assert!(closed.is_some(), "the connection is closed after a {status}");
}

/// Heads refused for their form or size are answered with the contracts' `Error` body and
/// the connection closed, whoever parses them (the gateway's own path, hyper after a
/// hand-over, the registry); many header lines are taken as long as the head fits its
/// 64 KiB, on both HTTP/1.1 paths and by the registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_heads_get_the_error_body_and_many_header_lines_are_taken() {
    let dir = data_dir();
    let pake = Pake::start(&["registry", "gateway"], &[("PAKE_DATA_DIR", dir.display().to_string())]).await;
    let (gateway, registry) = (pake.addrs["gateway"], pake.addrs["registry"]);

    // On the gateway's own path (a connection's first request), after a request handed
    // over to hyper, and on the registry (hyper throughout).
    let refused = |request: Vec<u8>, status: u16, code: &'static str| async move {
        for (addr, first) in [(gateway, None), (gateway, Some("/v1/health/live")), (registry, Some("/health/live"))] {
            refused_on(addr, first, &request, status, code).await;
        }
    };
    refused(b"GARBAGE\r\n\r\n".to_vec(), 400, "malformed_request").await;
    refused(b"GET /v1/x HTTP/1.1\r\nbad header\r\n\r\n".to_vec(), 400, "malformed_request").await;
    let mut huge = b"GET /v1/health/live HTTP/1.1\r\nhost: x\r\n".to_vec();
    for n in 0..8 {
        huge.extend(format!("x-filler-{n}: {}\r\n", "a".repeat(16 * 1024)).bytes());
    }
    huge.extend(b"\r\n");
    refused(huge, 431, "header_fields_too_large").await;

    // 400 header lines in 9 KiB: more than hyper's default count (100) and than the own
    // path parses (64), well within the bytes.
    let many = |path: &str| {
        let mut request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n");
        for n in 0..400 {
            request.push_str(&format!("x-h-{n}: v\r\n"));
        }
        request.push_str("\r\n");
        request.into_bytes()
    };
    for (addr, path, status) in [
        (gateway, "/v1/health/live", 200), // the gateway's API (hyper)
        (gateway, "/v1/nothing", 404),     // the data plane, handed over to hyper
        (registry, "/health/live", 200),
    ] {
        let (_, got, head, _) = exchange(addr, &many(path)).await;
        assert_eq!(got, status, "{path} with 400 header lines: {head}");
    }
    drop(pake);
    let _ = std::fs::remove_dir_all(dir);
}
