//! Accepting client connections, the same way for every PAKE service.
//!
//! A process has one [`Limits`]: a cap on the client connections it holds (across all of
//! its listeners), the header and idle timeouts, and the pressure the open connections put
//! on those timeouts. Each service listens through a [`Server`] made from it, which counts
//! its own connections in its metrics. Every connection:
//!
//! - takes a slot at accept and gives it back when its [`Conn`] is dropped, whatever ended
//!   it; at the cap, a new connection is answered `503` with the contracts' `Error` body
//!   and `Connection: close` instead ([`refuse`]);
//! - must send a complete request head within the header timeout, counted from accept for
//!   the first request and from its first byte for later ones ([`Wait::Head`]);
//! - is closed after the idle timeout without a request in flight ([`Wait::Idle`]), on
//!   HTTP/1.1 and HTTP/2 alike;
//! - is closed between requests when shutdown starts; requests in flight get
//!   [`Settings::drain_timeout`] to finish;
//! - when its service keeps nothing of it between requests (the gateway's own HTTP/1.1
//!   path), waits idle past [`PARK_AFTER`] outside any task, in its listener's epoll set
//!   ([`Conn::park`]), and comes back to the service's handler with its next bytes.
//!
//! Under pressure both timeouts shrink, as Envoy's overload manager reduces them: up to
//! half the cap they are as configured, from there they fall linearly to
//! [`PRESSURE_FLOOR`] at the cap, and connections already waiting follow at once. Idle
//! and silent connections (an attacker's, or clients' pooled ones) are then reclaimed
//! within about a second, and a client retrying a `503` finds a free slot.
//!
//! Services built on hyper serve their connections with [`Http`]; the gateway's own
//! HTTP/1.1 path waits with [`Timeouts::expired`] around its reads.

mod http;
#[cfg(target_os = "linux")]
mod park;
#[cfg(not(target_os = "linux"))]
#[path = "park_unsupported.rs"]
mod park;

pub use http::Http;

use pake_observe::Metrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The largest request head taken, in bytes (request line and header lines).
pub const HEAD_LIMIT: usize = 64 * 1024;
/// The header lines hyper may parse in one head: ten times its default, and what
/// [`HEAD_LIMIT`] holds at 64 bytes a line, so that real heads are refused by their bytes,
/// not their count. Not more: hyper sets aside room for this many lines (about 48 bytes
/// each) for every head it parses, and at the 21,845 three-byte lines 64 KiB could hold
/// that would be a megabyte per request.
pub const MAX_HEADER_LINES: usize = 1024;
/// What the header and idle timeouts shrink to when the process holds as many
/// connections as it may.
pub const PRESSURE_FLOOR: Duration = Duration::from_secs(1);
/// Steps between no pressure (half the cap) and full pressure (the cap).
const BANDS: u32 = 20;
/// How long a connection may wait idle in its task before it is parked outside it
/// ([`Conn::park`]): long beside the pause between a busy client's requests, so that
/// those never pay for parking (about 5 µs: four `epoll_ctl` calls and a task), short
/// enough that a burst of new connections (a client pool warming up) does not hold
/// thousands of tasks at once, which an allocator keeps as resident memory afterwards.
pub const PARK_AFTER: Duration = Duration::from_millis(20);
/// How long a refused connection is kept to read the client's request, so that closing
/// does not reset the connection before the client has read the `503`.
const LINGER: Duration = Duration::from_secs(1);

/// The answer to a connection beyond the cap: the contracts' `Error` body.
pub const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 91\r\n\
\r\n\
{\"code\":\"unavailable\",\"message\":\"the server holds too many connections; retry in a moment\"}";

/// The listening configuration of a process.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// A request head must be complete within this long: from accept for a connection's
    /// first request, from its first byte for later ones.
    pub header_timeout: Duration,
    /// A connection without a request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Client connections the process holds at most, over all its listeners.
    pub max_connections: usize,
    /// How long a shutdown waits for requests in flight.
    pub drain_timeout: Duration,
}

impl Default for Settings {
    /// 20 s for a head, 60 s idle, a cap derived from the descriptor limit, 30 s to drain.
    fn default() -> Settings {
        Settings {
            header_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            max_connections: default_max_connections(fd_limit().soft),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// The client connections a process may hold when it may open `nofile` descriptors: a
/// proxied request holds a second descriptor upstream, and the database pools, Redis, the
/// listeners, files and refused connections lingering need a reserve.
pub fn default_max_connections(nofile: u64) -> usize {
    let reserve = 256 + nofile / 16;
    let connections = nofile.saturating_sub(reserve) / 2;
    usize::try_from(connections).unwrap_or(usize::MAX).max(16)
}

/// One process's connection slots and timeouts; cheap to clone.
#[derive(Clone)]
pub struct Limits {
    shared: Arc<Shared>,
}

struct Shared {
    settings: Settings,
    open: AtomicUsize,
    /// The pressure band of `open`, 0 (half the cap or less) to [`BANDS`] (the cap).
    band: AtomicU32,
    /// Tells waiting connections that the band changed.
    pressure: watch::Sender<u32>,
    /// Refused connections still lingering, bounded by `max_lingering`.
    lingering: AtomicUsize,
    max_lingering: usize,
    /// When refusals were last logged, in seconds since `born`.
    refusal_logged: AtomicU64,
    born: Instant,
}

impl Limits {
    pub fn new(settings: Settings) -> Limits {
        let settings = Settings { max_connections: settings.max_connections.max(1), ..settings };
        Limits {
            shared: Arc::new(Shared {
                settings,
                open: AtomicUsize::new(0),
                band: AtomicU32::new(0),
                pressure: watch::Sender::new(0),
                lingering: AtomicUsize::new(0),
                max_lingering: (settings.max_connections / 32).clamp(16, 1024),
                refusal_logged: AtomicU64::new(0),
                born: Instant::now(),
            }),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.shared.settings
    }

    /// Client connections open now, over all listeners.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// A service's listening under these limits, with its own counters.
    pub fn server(&self) -> Server {
        Server { limits: self.clone(), stats: Stats::default() }
    }

    /// `full`, shrunk by the current pressure.
    pub fn scaled(&self, full: Duration) -> Duration {
        scale(full, self.shared.band.load(Ordering::Relaxed))
    }

    fn take(&self) -> bool {
        let shared = &self.shared;
        let open = shared.open.fetch_add(1, Ordering::AcqRel);
        if open >= shared.settings.max_connections {
            shared.open.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.track_pressure(open + 1);
        true
    }

    fn give_back(&self) {
        let open = self.shared.open.fetch_sub(1, Ordering::AcqRel) - 1;
        self.track_pressure(open);
    }

    fn track_pressure(&self, open: usize) {
        let shared = &self.shared;
        let band = band(open, shared.settings.max_connections);
        if shared.band.load(Ordering::Relaxed) != band && shared.band.swap(band, Ordering::AcqRel) != band {
            shared.pressure.send_replace(band);
        }
    }
}

/// The pressure band of `open` connections out of `max`: 0 up to half, [`BANDS`] at `max`.
fn band(open: usize, max: usize) -> u32 {
    let (open, max) = (open as u64, max as u64);
    let over = (2 * open).saturating_sub(max);
    if over == 0 {
        return 0;
    }
    (over * u64::from(BANDS)).div_ceil(max).min(u64::from(BANDS)) as u32
}

fn scale(full: Duration, band: u32) -> Duration {
    if band == 0 {
        return full;
    }
    let scaled = full * (BANDS - band.min(BANDS)) / BANDS;
    scaled.max(PRESSURE_FLOOR).min(full)
}

/// One listener's counters.
#[derive(Clone, Default)]
pub struct Stats {
    /// Connections open now.
    pub open: Gauge,
    /// Connections refused at the cap.
    pub refused: Counter,
    /// Connections closed because a head did not arrive in time.
    pub header_timeouts: Counter,
    /// Connections closed after idling.
    pub idle_timeouts: Counter,
    /// Idle connections parked outside tasks now (part of `open`).
    pub parked: Gauge,
}

/// A service's listening: the process's [`Limits`] and this service's [`Stats`]. Cheap to
/// clone; one per service, shared by its listeners (the gateway has one per thread).
#[derive(Clone)]
pub struct Server {
    limits: Limits,
    stats: Stats,
}

impl Server {
    /// A server under limits of its own with the default settings: for tests and tools
    /// that run one service.
    pub fn standalone() -> Server {
        Limits::new(Settings::default()).server()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Adds this listener's counters to a service's metrics.
    pub fn register_metrics(&self, metrics: &Metrics) {
        let stats = &self.stats;
        metrics.register("connections_open", "Client connections open", stats.open.clone());
        metrics.register(
            "connections_refused",
            "Client connections answered 503 because the process held as many as it may",
            stats.refused.clone(),
        );
        metrics.register(
            "connections_header_timeouts",
            "Client connections closed because a request head did not arrive in time",
            stats.header_timeouts.clone(),
        );
        metrics.register(
            "connections_idle_timeouts",
            "Client connections closed after idling without a request",
            stats.idle_timeouts.clone(),
        );
        metrics.register(
            "connections_parked",
            "Idle keep-alive client connections parked outside tasks until their next request",
            stats.parked.clone(),
        );
    }

    /// Accepts connections from `listener` and runs `handle` on each, in a task of its
    /// own, until `shutdown` completes; then stops accepting and waits for the
    /// connections to finish, for at most [`Settings::drain_timeout`]. A connection
    /// beyond the cap is refused and never reaches `handle`.
    pub async fn serve<H, F>(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        mut handle: H,
    ) -> std::io::Result<()>
    where
        H: FnMut(TcpStream, SocketAddr, Conn) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let (stopping, stop) = watch::channel(false);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut accept_logged: Option<Instant> = None;
        // Idle connections that can start over between requests wait here, outside tasks
        // (see `park`); without an epoll set every connection waits in its task.
        let parking = park::Parking::new(self.limits.clone(), self.stats.clone()).map(Arc::new).ok();
        let mut attendant = parking
            .as_ref()
            .and_then(|parking| park::Attendant::new(parking.clone(), self.limits.shared.pressure.subscribe()).ok());
        let parking = parking.filter(|_| attendant.is_some());
        let idle_timeout = self.limits.settings().idle_timeout;
        loop {
            let (stream, client) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        accept_failed(&error, &mut accept_logged).await;
                        continue;
                    }
                },
                turn = async {
                    match &mut attendant {
                        Some(attendant) => attendant.turn(self.limits.scaled(idle_timeout)).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let park::Turn::Woken(woken) = turn {
                        for (stream, client) in woken {
                            // Its slot, and its next request's head timeout from now, its
                            // first byte; a socket the runtime refuses gives the slot back.
                            let conn = self.conn(&stop, &parking, true);
                            if let Ok(stream) = TcpStream::from_std(stream) {
                                tokio::spawn(handle(stream, client, conn));
                            }
                        }
                    }
                    continue;
                }
                () = &mut shutdown => break,
            };
            if !self.limits.take() {
                self.refuse(stream);
                continue;
            }
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            self.stats.open.inc();
            tokio::spawn(handle(stream, client, self.conn(&stop, &parking, false)));
        }
        // Parked connections are between requests: shutdown closes them at once.
        if let Some(parking) = &parking {
            parking.close();
        }
        drop(listener);
        drop(stop);
        // Every connection holds a receiver; closed() completes when the last one is done.
        let _ = stopping.send(true);
        let drain = self.limits.settings().drain_timeout;
        tokio::select! {
            () = stopping.closed() => {}
            () = tokio::time::sleep(drain) => {
                tracing::warn!("requests still in flight after {} s; closing their connections", drain.as_secs());
            }
        }
        Ok(())
    }

    /// A connection's slot holder, its slot already taken.
    fn conn(&self, stop: &watch::Receiver<bool>, parking: &Option<Arc<park::Parking>>, served: bool) -> Conn {
        Conn {
            stop: stop.clone(),
            timeouts: Timeouts {
                limits: self.limits.clone(),
                stats: self.stats.clone(),
                pressure: self.limits.shared.pressure.subscribe(),
                accepted: Instant::now(),
            },
            served,
            parking: parking.clone(),
            parked: false,
        }
    }

    /// Serves an axum router (a service's contract) on `listener`: HTTP/1.1 and HTTP/2,
    /// with upgrades, each request carrying its client's address as `ConnectInfo`.
    pub async fn serve_router(
        &self,
        listener: TcpListener,
        router: axum::Router,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        use tower::Service;
        let http = Arc::new(Http::new());
        self.serve(listener, shutdown, move |stream, client, mut conn| {
            let (router, http) = (router.clone(), http.clone());
            async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut request = request.map(axum::body::Body::new);
                    request.extensions_mut().insert(axum::extract::ConnectInfo(client));
                    router.clone().call(request)
                });
                http.serve(&mut conn, stream, service).await;
            }
        })
        .await
    }

    /// Answers a connection beyond the cap with [`REFUSAL`] and closes it. The answer is
    /// written at once (it fits any socket's send buffer); then, while few refused
    /// connections linger, the request is read and dropped for up to [`LINGER`], so that
    /// closing with it unread does not reset the connection and lose the answer.
    fn refuse(&self, stream: TcpStream) {
        self.stats.refused.inc();
        let shared = &self.limits.shared;
        let second = shared.born.elapsed().as_secs() + 1;
        let logged = shared.refusal_logged.load(Ordering::Relaxed);
        if second >= logged + 10 && shared.refusal_logged.swap(second, Ordering::Relaxed) == logged {
            tracing::warn!(
                max_connections = shared.settings.max_connections,
                "refusing connections: the process holds as many as it may (logged at most every 10 s)"
            );
        }
        let _ = stream.try_write(REFUSAL);
        if shared.lingering.fetch_add(1, Ordering::AcqRel) >= shared.max_lingering {
            shared.lingering.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let limits = self.limits.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let _ = stream.shutdown().await;
            let mut sink = [0u8; 2048];
            let _ = tokio::time::timeout(LINGER, async { while let Ok(1..) = stream.read(&mut sink).await {} }).await;
            drop(stream);
            limits.shared.lingering.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Accepting fails for a single connection (reset before it was taken) or for the
/// process (out of file descriptors, which the cap should prevent): the first is
/// skipped, the second waited out briefly rather than spun on, and logged at most every
/// 10 s.
async fn accept_failed(error: &std::io::Error, logged: &mut Option<Instant>) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
        *logged = Some(Instant::now());
        tracing::error!(%error, "accepting a connection failed; retrying every 100 ms (logged at most every 10 s)");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// One accepted connection: its slot (given back on drop, unless the connection was
/// parked with it), shutdown and timeouts.
pub struct Conn {
    stop: watch::Receiver<bool>,
    timeouts: Timeouts,
    served: bool,
    /// Where the listener parks its idle connections, if it can.
    parking: Option<Arc<park::Parking>>,
    /// Parked: the slot went with the connection.
    parked: bool,
}

impl Conn {
    /// Shutdown (changes to `true` when it starts) and the timeouts, borrowed apart so
    /// that a wait can select on both.
    pub fn split(&mut self) -> (&mut watch::Receiver<bool>, &mut Timeouts) {
        (&mut self.stop, &mut self.timeouts)
    }

    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Records that a request was answered on this connection before a hand-over: later
    /// heads get the header timeout from their first byte, not from accept.
    pub fn set_served(&mut self) {
        self.served = true;
    }

    pub fn served(&self) -> bool {
        self.served
    }

    /// Whether an idle connection can be parked ([`Conn::park`]).
    pub fn parks(&self) -> bool {
        self.parking.is_some()
    }

    /// Parks an idle connection, idle since `since`, outside its task until its next
    /// request (or its closing) arrives: then the listener's handler gets it again, as a
    /// new connection whose head timeout counts from that first byte. Parked, it keeps its
    /// slot and is closed after the idle timeout or when shutdown starts. For a service
    /// that keeps nothing of a connection between requests; a connection that cannot be
    /// parked (shutdown started) is closed, as idle ones may be.
    pub fn park(mut self, stream: TcpStream, since: Instant) {
        let Some(parking) = self.parking.take() else { return };
        let Ok(stream) = stream.into_std() else { return };
        self.parked = parking.park(stream, since).is_ok();
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.parked {
            self.timeouts.stats.open.dec();
            self.timeouts.limits.give_back();
        }
    }
}

/// What a connection is waiting for, and since when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A request head, begun (or, for the first request, the connection accepted) at this
    /// instant: the header timeout applies.
    Head(Instant),
    /// The next request, since the last answer ended at this instant: the idle timeout
    /// applies.
    Idle(Instant),
}

/// A connection's timeouts, scaled by the process's pressure.
pub struct Timeouts {
    limits: Limits,
    stats: Stats,
    pressure: watch::Receiver<u32>,
    accepted: Instant,
}

impl Timeouts {
    pub fn accepted(&self) -> Instant {
        self.accepted
    }

    /// When `wait` times out under the current pressure.
    pub fn deadline(&self, wait: Wait) -> Instant {
        let settings = self.limits.settings();
        match wait {
            Wait::Head(since) => since + self.limits.scaled(settings.header_timeout),
            Wait::Idle(since) => since + self.limits.scaled(settings.idle_timeout),
        }
    }

    /// Completes when `wait` times out, following the pressure while it waits: one timer,
    /// re-armed only when the pressure band changes.
    pub async fn expired(&mut self, wait: Wait) {
        loop {
            let deadline = self.deadline(wait);
            tokio::select! {
                () = tokio::time::sleep_until(deadline.into()) => return,
                changed = self.pressure.changed() => {
                    if changed.is_err() {
                        // The limits outlive every connection; never reached.
                        tokio::time::sleep_until(deadline.into()).await;
                        return;
                    }
                }
            }
        }
    }

    /// A receiver of pressure changes, for [`pressure_changed`]: a connection keeps that
    /// future pinned across its waits (re-armed with the receiver it yields) and
    /// recomputes its [`Timeouts::deadline`] when it fires.
    pub fn pressure(&self) -> watch::Receiver<u32> {
        self.pressure.clone()
    }

    /// Counts a connection closed because `wait` timed out.
    pub fn record(&self, wait: Wait) {
        match wait {
            Wait::Head(_) => self.stats.header_timeouts.inc(),
            Wait::Idle(_) => self.stats.idle_timeouts.inc(),
        };
    }
}

/// Completes with `receiver` when the pressure band changes (never, should the limits
/// be gone).
pub async fn pressure_changed(mut receiver: watch::Receiver<u32>) -> watch::Receiver<u32> {
    if receiver.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
    receiver
}

/// The process's descriptor limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    pub soft: u64,
    pub hard: u64,
}

/// The current `RLIMIT_NOFILE` (`u64::MAX` for unlimited; 1024 where unknown).
pub fn fd_limit() -> FdLimit {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit};
        let limit = getrlimit(Resource::Nofile);
        FdLimit { soft: limit.current.unwrap_or(u64::MAX), hard: limit.maximum.unwrap_or(u64::MAX) }
    }
    #[cfg(not(unix))]
    FdLimit { soft: 1024, hard: 1024 }
}

/// Raises the soft descriptor limit to the hard one (an unlimited hard limit to 2^20,
/// what Linux allows by default); returns the limit before and after.
pub fn raise_fd_limit() -> std::io::Result<(FdLimit, FdLimit)> {
    let before = fd_limit();
    #[cfg(unix)]
    if before.soft < before.hard {
        use rustix::process::{Resource, Rlimit, setrlimit};
        let target = if before.hard == u64::MAX { 1 << 20 } else { before.hard };
        if target > before.soft {
            let hard = (before.hard != u64::MAX).then_some(before.hard);
            setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: hard })?;
        }
    }
    Ok((before, fd_limit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_bands_run_from_half_the_cap_to_the_cap() {
        assert_eq!(band(0, 1000), 0);
        assert_eq!(band(500, 1000), 0);
        assert_eq!(band(501, 1000), 1);
        assert_eq!(band(750, 1000), 10);
        assert_eq!(band(1000, 1000), BANDS);
        assert_eq!(band(5000, 1000), BANDS);
    }

    #[test]
    fn timeouts_shrink_to_the_floor_at_the_cap() {
        let idle = Duration::from_secs(60);
        assert_eq!(scale(idle, 0), idle);
        assert_eq!(scale(idle, BANDS / 2), Duration::from_secs(30));
        assert_eq!(scale(idle, BANDS), PRESSURE_FLOOR);
        // Never longer than configured, even when that is under the floor.
        assert_eq!(scale(Duration::from_millis(300), BANDS), Duration::from_millis(300));
    }

    #[test]
    fn the_default_cap_leaves_room_for_upstreams_pools_and_files() {
        assert_eq!(default_max_connections(20_000), 9_247);
        assert_eq!(default_max_connections(1_024), 352);
        assert_eq!(default_max_connections(10), 16);
    }

    #[test]
    fn slots_stop_at_the_cap_and_come_back() {
        let limits = Limits::new(Settings { max_connections: 4, ..Settings::default() });
        assert!((0..4).all(|_| limits.take()));
        assert!(!limits.take());
        assert_eq!(limits.open(), 4);
        assert_eq!(limits.scaled(Duration::from_secs(60)), PRESSURE_FLOOR);
        limits.give_back();
        assert!(limits.take());
    }

    #[tokio::test]
    async fn the_refusal_is_the_contracts_error_body() {
        use axum::response::IntoResponse;
        let text = std::str::from_utf8(REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.ends_with(&format!("\r\ncontent-length: {}", body.len())), "{head}");
        let expected =
            pake_api_runtime::ApiError::unavailable("the server holds too many connections; retry in a moment", 1)
                .into_response();
        let expected = axum::body::to_bytes(expected.into_body(), usize::MAX).await.unwrap();
        assert_eq!(body.as_bytes(), &expected[..]);
    }
}
