//! The data plane: every request that is not for the gateway's own API is matched to a
//! route, sent to a healthy instance of the route's service, and streamed back.
//!
//! The phases, in order, and why:
//! 1. **route** — version and longest path prefix; no route is 404, a route without the
//!    method is 405 (both with the contract's error body).
//! 2. **discover** — healthy, unexpired instances from the registry snapshot (no I/O).
//! 3. **balance** — the service's traffic policy picks among instances whose breaker
//!    admits a request (round robin, least request by two random choices, weighted).
//! 4. **forward** — hop-by-hop headers dropped, `X-Forwarded-*`, `X-Request-Id` and W3C
//!    `traceparent` set, bodies streamed both ways over pooled keep-alive connections,
//!    each try bounded by the per-try timeout and the route's deadline.
//! 5. **retry** — only idempotent requests without a body, only on the conditions the
//!    route names, only while the service's retry budget allows, on another instance.
//! 6. **account** — the breaker and outlier detection see every try; metrics every request.
//!
//! Nothing here awaits the database or takes a lock shared by all requests.

use crate::connections::{self, SendFailure};
use crate::edge::{Edge, PolicyTable};
use crate::forwarded::Caller;
use crate::routes::{Match, RouteTable};
use crate::upstream::{Admission, Outcome, Upstream, Upstreams};
use arc_swap::ArcSwap;
use axum::body::Body;
use axum::body::HttpBody;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use pake_api_runtime::ApiError;
use pake_gateway_server::types as gw;
use pake_mesh_server::types as mesh;
use pake_registry::snapshot::SnapshotCell;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteCacheLabels {
    route: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    service: String,
    outcome: String,
}

/// Data-plane metrics.
#[derive(Clone)]
pub struct ProxyMetrics {
    requests: Family<RouteLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    cache: Family<RouteCacheLabels, Counter>,
    failed_tries: Family<UpstreamLabels, Counter>,
    retries: Family<UpstreamLabels, Counter>,
}

/// One route's metric handles, resolved when the route table is built so that the proxy
/// path records without building labels or looking them up.
#[derive(Debug)]
pub struct RouteMetrics {
    /// By status class: 1xx … 5xx.
    requests: [Counter; 5],
    durations: [Histogram; 5],
    /// Cache lookups of the route answered from the cache, and not.
    pub cache_hits: Counter,
    pub cache_misses: Counter,
}

impl RouteMetrics {
    pub(crate) fn record(&self, status: StatusCode, elapsed: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
        self.durations[class].observe(elapsed.as_secs_f64());
    }
}

impl ProxyMetrics {
    pub fn for_route(&self, route: &str) -> RouteMetrics {
        let labels = |class: usize| RouteLabels { route: route.to_string(), status: format!("{}xx", class + 1) };
        // Each handle is cloned out before the next lookup: a family's read guard held
        // across a lookup that creates a label would deadlock on its write lock.
        let cache = |result| self.cache.get_or_create(&RouteCacheLabels { route: route.to_string(), result }).clone();
        let cache_hits = cache("hit");
        let cache_misses = cache("miss");
        RouteMetrics {
            requests: std::array::from_fn(|class| self.requests.get_or_create(&labels(class)).clone()),
            durations: std::array::from_fn(|class| self.duration.get_or_create(&labels(class)).clone()),
            cache_hits,
            cache_misses,
        }
    }

    pub fn new(metrics: &pake_observe::Metrics) -> ProxyMetrics {
        let proxy = ProxyMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            cache: Family::default(),
            failed_tries: Family::default(),
            retries: Family::default(),
        };
        metrics.register("proxy_requests", "Proxied requests by route and status class", proxy.requests.clone());
        metrics.register("proxy_request_duration_seconds", "Proxied request latency by route", proxy.duration.clone());
        metrics.register("route_cache_lookups", "Cache lookups by route and result", proxy.cache.clone());
        metrics.register(
            "upstream_failed_tries",
            "Tries that failed upstream (5xx, refused, reset, timed out), by service",
            proxy.failed_tries.clone(),
        );
        metrics.register(
            "upstream_retries",
            "Retries by service and the condition that caused them",
            proxy.retries.clone(),
        );
        proxy
    }
}

/// Everything the data plane reads.
pub struct DataPlane {
    pub routes: ArcSwap<RouteTable>,
    /// The client for `https` instances.
    pub https: connections::HttpsClient,
    pub policies: ArcSwap<PolicyTable>,
    pub registry: Arc<SnapshotCell>,
    pub upstreams: Upstreams,
    pub metrics: ProxyMetrics,
    pub edge: Edge,
    /// Whose `X-Forwarded-For` says who the client is.
    pub trusted_proxies: crate::forwarded::TrustedProxies,
}

impl DataPlane {
    pub fn new(
        registry: Arc<SnapshotCell>,
        metrics: ProxyMetrics,
        edge: Edge,
        https: connections::HttpsClient,
        trusted_proxies: crate::forwarded::TrustedProxies,
    ) -> DataPlane {
        DataPlane {
            trusted_proxies,
            https,
            routes: ArcSwap::from_pointee(RouteTable::default()),
            policies: ArcSwap::from_pointee(PolicyTable::default()),
            registry,
            upstreams: Upstreams::default(),
            metrics,
            edge,
        }
    }
}

fn error(status: StatusCode, code: &'static str, message: String) -> ApiError {
    ApiError::new(status, code, message)
}

/// A cheap, well-spread random number (splitmix64) for balancing choices, request ids and
/// trace ids. Each thread steps its own state, so no cache line is shared between them.
fn random() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(seed());
    }
    let mut z = STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        next
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A different starting point for each thread (and each process).
fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        static FALLBACK: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);
        return FALLBACK.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    }
    u64::from_le_bytes(bytes)
}

/// Milliseconds since the Unix epoch at `now`, for instance expiry, read from the wall
/// clock at most once a second per thread and advanced by the monotonic clock between
/// reads (the request already read it), so expiry is exact to well within its 1 s bound.
fn wall_clock_ms(now: Instant) -> i64 {
    thread_local! {
        static ANCHOR: std::cell::Cell<Option<(Instant, i64)>> = const { std::cell::Cell::new(None) };
    }
    ANCHOR.with(|anchor| {
        if let Some((at, ms)) = anchor.get()
            && let Some(since) = now.checked_duration_since(at)
            && since < Duration::from_secs(1)
        {
            return ms + since.as_millis() as i64;
        }
        let ms = chrono::Utc::now().timestamp_millis();
        anchor.set(Some((now, ms)));
        ms
    })
}

/// Most tries a request can make: the first and at most ten retries (the contract's bound).
const MAX_TRIES: usize = 11;

/// Picks an instance the breaker admits, by the service's balancing algorithm, avoiding
/// instances this request already tried while others remain.
fn pick(
    plane: &DataPlane,
    service: &str,
    state: &crate::upstream::ServiceState,
    candidates: &[&mesh::Instance],
    policy: &mesh::TrafficPolicy,
    tried: &[uuid::Uuid],
    deadline: Instant,
) -> Result<(Arc<Upstream>, mesh::InstanceScheme, bool), u64> {
    // The pool: untried candidates, or all of them once every one has been tried. A first
    // try (nothing tried) uses the candidates as they are.
    let untried;
    let pool: &[&mesh::Instance] = if tried.is_empty() || candidates.iter().all(|i| tried.contains(&i.id)) {
        candidates
    } else {
        untried = candidates.iter().copied().filter(|i| !tried.contains(&i.id)).collect::<Vec<_>>();
        &untried
    };
    let upstreams: Vec<Arc<Upstream>> = pool.iter().map(|i| plane.upstreams.instance(service, i)).collect();
    let n = pool.len();
    // The preferred instance; the others follow it in order as fallbacks.
    let first = match policy.load_balancing {
        mesh::LoadBalancing::RoundRobin => state.next.fetch_add(1, Ordering::Relaxed) % n,
        mesh::LoadBalancing::LeastRequest => {
            // Two distinct random choices, the less loaded one.
            let a = (random() % n as u64) as usize;
            let b = if n > 1 { (a + 1 + (random() % (n as u64 - 1)) as usize) % n } else { a };
            if upstreams[b].in_flight.load(Ordering::Relaxed) < upstreams[a].in_flight.load(Ordering::Relaxed) {
                b
            } else {
                a
            }
        }
        mesh::LoadBalancing::Weighted => {
            let total: u64 = pool.iter().map(|i| i.weight.get()).sum();
            let mut ticket = random() % total.max(1);
            let mut first = 0;
            for (k, instance) in pool.iter().enumerate() {
                if ticket < instance.weight.get() {
                    first = k;
                    break;
                }
                ticket -= instance.weight.get();
            }
            first
        }
    };
    // Round robin walks on from its start; the others fall back in list order.
    let order = |k: usize| match policy.load_balancing {
        mesh::LoadBalancing::RoundRobin => (first + k) % n,
        _ if k == 0 => first,
        _ if k <= first => k - 1,
        _ => k,
    };
    // Outlier ejection may take out at most max_ejection_percent of the instances; beyond
    // that it is ignored, so that a bad moment everywhere does not empty the service.
    let ejected = upstreams.iter().filter(|u| u.is_ejected()).count();
    let honour_ejection = ejected * 100 <= n * policy.outlier_detection.max_ejection_percent as usize;
    for k in (0..n).map(order) {
        match upstreams[k].admit(&policy.circuit_breaker, honour_ejection, deadline) {
            Admission::Refused => continue,
            Admission::Admitted => return Ok((upstreams[k].clone(), pool[k].scheme, false)),
            Admission::Probe => return Ok((upstreams[k].clone(), pool[k].scheme, true)),
        }
    }
    Err(upstreams.iter().map(|u| u.retry_after()).min().unwrap_or(1))
}

/// Prepares the client's headers, in place, for the upstream: drops hop-by-hop ones and
/// those `Connection` names, moves `Host` to `X-Forwarded-Host` (each try sets the
/// instance's own), and adds the other forwarding headers, a request id and a trace
/// context where the client sent none.
fn forward_headers(headers: &mut HeaderMap, caller: Option<Caller>) {
    remove_hop_by_hop(headers);
    // Room for the five headers added here and the Host each try sets, in one growth.
    headers.reserve(6);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(caller) = caller {
        let mut value = Vec::with_capacity(48);
        let previous = headers.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes);
        caller.forwarded_for(&mut value, previous);
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    }
    if let header::Entry::Vacant(slot) = headers.entry(&X_REQUEST_ID) {
        slot.insert(HeaderValue::from_bytes(&request_id()).expect("a uuid is a header value"));
    }
    if let header::Entry::Vacant(slot) = headers.entry(&TRACEPARENT) {
        slot.insert(HeaderValue::from_bytes(&traceparent()).expect("hex is a header value"));
    }
}

/// Whether requests with `method` may be sent more than once (RFC 9110 §9.2.2; the
/// contract's retry rule): GET, HEAD, PUT, DELETE and OPTIONS.
pub(crate) fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS)
}

/// A random version-4 UUID as text, without a system call or an allocation.
pub(crate) fn request_id() -> [u8; uuid::fmt::Hyphenated::LENGTH] {
    let mut random_bytes = [0u8; 16];
    random_bytes[..8].copy_from_slice(&random().to_le_bytes());
    random_bytes[8..].copy_from_slice(&random().to_le_bytes());
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Builder::from_random_bytes(random_bytes).into_uuid().hyphenated().encode_lower(&mut text);
    text
}

/// A new W3C trace context: version 00, a 128-bit trace id, a 64-bit parent id, sampled.
pub(crate) fn traceparent() -> [u8; 55] {
    let mut text = *b"00-00000000000000000000000000000000-0000000000000000-01";
    write_hex(&mut text[3..19], random());
    write_hex(&mut text[19..35], random());
    write_hex(&mut text[36..52], random());
    text
}

/// Writes `ip` in its usual text form into `out` (large enough for any address) and
/// returns the length; IPv4, the common case, without the formatting machinery.
pub(crate) fn write_ip(out: &mut [u8; 48], ip: std::net::IpAddr) -> usize {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut length = 0;
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    out[length] = b'.';
                    length += 1;
                }
                if octet >= 100 {
                    out[length] = b'0' + octet / 100;
                    length += 1;
                }
                if octet >= 10 {
                    out[length] = b'0' + octet / 10 % 10;
                    length += 1;
                }
                out[length] = b'0' + octet % 10;
                length += 1;
            }
            length
        }
        std::net::IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{v6}"));
            cursor.position() as usize
        }
    }
}

/// Writes `value` as lower-case hex digits, most significant first, filling `out`.
pub(crate) fn write_hex(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let last = out.len() - 1;
    for (index, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((value >> (4 * (last - index))) & 0xf) as usize];
    }
}

/// Where `name` is in [`HOP_BY_HOP`]: a match on the text, which most names leave at
/// their length, rather than eight comparisons.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-authenticate" => Some(2),
        "proxy-authorization" => Some(3),
        "te" => Some(4),
        "trailer" => Some(5),
        "transfer-encoding" => Some(6),
        "upgrade" => Some(7),
        _ => None,
    }
}

/// Drops hop-by-hop headers and the headers `Connection` names (RFC 9110 §7.6.1). Most
/// messages carry none, or only `Connection: keep-alive`, so one pass over the names finds
/// which are there and only those are removed.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(index) = hop_by_hop_index(name) {
            present |= 1 << index;
        }
    }
    if present == 0 {
        return;
    }
    // HOP_BY_HOP[0] is Connection: the other names it lists go too. Usually it lists only
    // `keep-alive` or `close`, which need no lookup.
    if present & 1 != 0 {
        let mut listed = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            for token in value.to_str().unwrap_or_default().split(',').map(str::trim) {
                let known = token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || HOP_BY_HOP.iter().any(|hop| token.eq_ignore_ascii_case(hop.as_str()));
                if !known && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(name);
        }
    }
}

/// Sends one try to an instance by its scheme.
async fn send(
    https: &connections::HttpsClient,
    scheme: mesh::InstanceScheme,
    address: &Arc<str>,
    request: axum::http::Request<Body>,
    now: Instant,
) -> Result<axum::http::Response<Body>, SendFailure> {
    if scheme == mesh::InstanceScheme::Http {
        return Ok(connections::send(address, request, now).await?.map(Body::new));
    }
    let response = if scheme == mesh::InstanceScheme::Https {
        https.request(request).await
    } else {
        connections::h2c_client().request(request).await
    };
    let response = response.map_err(|failed| match tls_failure(&failed) {
        Some(tls) => SendFailure::Tls(format!("{address}: {tls}")),
        None if failed.is_connect() => SendFailure::Connect(format!("{failed:?}")),
        None => SendFailure::Failed(format!("{failed:?}")),
    })?;
    Ok(response.map(Body::new))
}

/// The TLS error somewhere in `error`'s chain of causes, if a handshake failed.
fn tls_failure<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e rustls::Error> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // tokio-rustls reports the handshake's error inside an I/O error (itself wrapped in
        // another by the connector), and an I/O error's `source` skips what it wraps.
        if let Some(inner) = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            cause = Some(inner);
            continue;
        }
        cause = error.source();
    }
    None
}

/// Why a try failed without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryFailure {
    Connect,
    /// The TLS handshake with an `https` instance failed.
    Tls,
    Reset,
    Timeout,
}

impl TryFailure {
    /// A try's answer, or why it got none (logged for `service`): the send failed, or the
    /// try's deadline passed first.
    pub(crate) fn check<T>(
        sent: Result<Result<T, SendFailure>, tokio::time::error::Elapsed>,
        service: &str,
    ) -> Result<T, TryFailure> {
        match sent {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(SendFailure::Connect(reason))) => {
                tracing::debug!(%reason, service, "upstream try failed to connect");
                Err(TryFailure::Connect)
            }
            Ok(Err(SendFailure::Tls(reason))) => {
                // A configuration problem (a certificate, a CA not trusted), not a passing one.
                tracing::warn!(%reason, service, "TLS handshake with an upstream instance failed");
                Err(TryFailure::Tls)
            }
            Ok(Err(SendFailure::Failed(reason))) => {
                tracing::debug!(%reason, service, "upstream try failed");
                Err(TryFailure::Reset)
            }
            Err(_) => Err(TryFailure::Timeout),
        }
    }

    fn label(self) -> &'static str {
        match self {
            TryFailure::Connect => "connect",
            TryFailure::Tls => "tls",
            TryFailure::Reset => "reset",
            TryFailure::Timeout => "timeout",
        }
    }

    fn condition(self) -> gw::RetryCondition {
        match self {
            TryFailure::Connect | TryFailure::Tls => gw::RetryCondition::ConnectFailure,
            TryFailure::Reset => gw::RetryCondition::Reset,
            TryFailure::Timeout => gw::RetryCondition::Timeout,
        }
    }
}

/// The data plane: answers a request that is not for the gateway's own API.
pub async fn handle(plane: &DataPlane, request: Request, peer: Option<SocketAddr>) -> Response {
    let started = Instant::now();
    let caller = peer.map(|peer| {
        let listed = request.headers().get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes);
        plane.trusted_proxies.caller(peer, listed)
    });
    if let Err(refused) = check_host(request.version(), request.headers().get_all(header::HOST).iter().count()) {
        return refused.into_response();
    }
    let table = plane.routes.load();
    let mut request = request;
    let (route, upstream_path, normalised) = match locate(&table, request.method(), request.uri().path()) {
        Ok(located) => {
            let normalised = (located.forwarded != request.uri().path())
                .then(|| with_path(request.uri(), &located.forwarded).ok())
                .flatten();
            (located.route, located.upstream_path().to_string(), normalised)
        }
        Err(refused) => return *refused,
    };
    // What follows (the cache key, the tries) sees the path as forwarded.
    if let Some(uri) = normalised {
        *request.uri_mut() = uri;
    }
    let response = apply_policies(plane, route, &upstream_path, request, caller, started).await;
    route.metrics.record(response.status(), started.elapsed());
    response
}

/// `uri` with its path replaced by `path` (its query kept).
pub(crate) fn with_path(uri: &Uri, path: &str) -> Result<Uri, axum::http::Error> {
    let path_and_query = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// RFC 9112 §3.2: an HTTP/1.1 request without exactly one `Host` answers 400, whichever
/// transport read it (HTTP/2 carries `:authority` instead).
pub(crate) fn check_host(version: axum::http::Version, hosts: usize) -> Result<(), ApiError> {
    if version != axum::http::Version::HTTP_11 || hosts == 1 {
        return Ok(());
    }
    let problem = if hosts == 0 { "has no Host header" } else { "has more than one Host header" };
    Err(error(StatusCode::BAD_REQUEST, "invalid_host", format!("the HTTP/1.1 request {problem}")))
}

/// A request's route and the path its upstream is sent, found the one way every transport
/// finds them ([`crate::path`]): the path normalised, the route matched on it with runs of
/// `/` merged, and the normalised path forwarded (merged unless the route keeps empty
/// segments), less the version segment and, when the route strips it, its prefix.
pub(crate) struct Located<'t, 'p> {
    pub route: &'t crate::routes::CompiledRoute,
    /// The whole normalised path as forwarded (version segment included).
    pub forwarded: std::borrow::Cow<'p, str>,
    /// Where the upstream's path starts in `forwarded` (its length: `/`).
    upstream_at: usize,
}

impl Located<'_, '_> {
    /// The path the upstream is sent.
    pub fn upstream_path(&self) -> &str {
        if self.upstream_at >= self.forwarded.len() { "/" } else { &self.forwarded[self.upstream_at..] }
    }
}

/// Finds the route for `method` and the raw request path `raw`: 400 for a path that
/// cannot be forwarded unambiguously, 404/405 when no route takes it.
pub(crate) fn locate<'t, 'p>(
    table: &'t RouteTable,
    method: &Method,
    raw: &'p str,
) -> Result<Located<'t, 'p>, Box<Response>> {
    let normal = crate::path::normalize(raw).map_err(|invalid| Box::new(ApiError::from(invalid).into_response()))?;
    let matched = crate::path::merged(&normal);
    let route = match table.find(method, &matched) {
        Match::Route { route, .. } => route,
        refused => return Err(Box::new(refusal(refused, method, &matched))),
    };
    let forwarded = if route.route.merge_slashes { matched } else { normal };
    let skip = 1 + if route.route.strip_prefix { route.segments } else { 0 };
    let upstream_at = crate::path::after_segments(&forwarded, skip);
    Ok(Located { route, forwarded, upstream_at })
}

/// Auth, rate limits and the cache, as the route asks, around forwarding.
async fn apply_policies(
    plane: &DataPlane,
    route: &crate::routes::CompiledRoute,
    upstream_path: &str,
    request: Request,
    caller: Option<Caller>,
    started: Instant,
) -> Response {
    let settings = &route.route;
    let principal = if settings.require_token {
        match plane.edge.authenticate(request.headers(), settings) {
            Ok(principal) => Some(principal),
            Err(refused) => return refused.into_response(),
        }
    } else {
        None
    };
    // Only a route's own policy or a caller's client policy can limit; most routes have
    // neither, and skip the table.
    let table = (settings.rate_limit_policy_id.is_some() || principal.is_some()).then(|| plane.policies.load());
    let limited = match &table {
        Some(table) => match Box::pin(plane.edge.rate_limit(
            table,
            settings,
            principal.as_deref().map(|verified| &verified.principal),
            caller.map(|caller| caller.client),
        ))
        .await
        {
            Ok(limited) => limited,
            Err(refused) => return refused,
        },
        None => None,
    };
    let send = |request: Request| async move {
        forward(plane, route, upstream_path, request, caller, started).await.unwrap_or_else(IntoResponse::into_response)
    };
    let mut response = if settings.cache.enabled {
        let tenant = principal.as_ref().and_then(|verified| verified.principal.tenant.as_deref()).unwrap_or("-");
        Box::pin(crate::edge::through_cache(plane, route, request, tenant, send)).await
    } else {
        send(request).await
    };
    if let Some((decision, limit)) = limited {
        crate::edge::add_headers(response.headers_mut(), &decision, limit);
    }
    response
}

/// The answer to a request no route takes: 405 with `Allow` when routes match the path
/// but not the method, 404 otherwise.
pub(crate) fn refusal(found: Match<'_, '_>, method: &Method, path: &str) -> Response {
    match found {
        Match::MethodNotAllowed { allow } => {
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not routed for {path}; this path allows {allow}"),
            )
            .into_response();
            if let Ok(value) = HeaderValue::from_str(&allow) {
                response.headers_mut().insert(header::ALLOW, value);
            }
            response
        }
        Match::NoRoute | Match::Route { .. } => {
            error(StatusCode::NOT_FOUND, "no_route", format!("no route for {path}")).into_response()
        }
    }
}

/// One try's instance and bounds.
pub(crate) struct Try {
    pub upstream: Arc<Upstream>,
    pub scheme: mesh::InstanceScheme,
    /// When the try started (the request's start for the first one).
    pub now: Instant,
    /// When the try gives up: its per-try timeout or the route's deadline.
    pub deadline: Instant,
    /// Whether a retry may follow this try (so its request must stay available).
    pub may_retry: bool,
    /// Whether this try holds one of a half-open breaker's probe slots that no outcome
    /// has settled yet: dropped so (cancelled, abandoned), it gives the slot back.
    probe: bool,
}

impl Try {
    /// Records the try's outcome with its instance (which settles a probe).
    fn record(&mut self, outcome: Outcome, policy: &mesh::TrafficPolicy) {
        self.probe = false;
        self.upstream.record(outcome, &policy.circuit_breaker, &policy.outlier_detection);
    }
}

impl Drop for Try {
    fn drop(&mut self) {
        if self.probe {
            self.upstream.release();
        }
    }
}

/// A request's tries: the service's instances, its traffic policy and the route's retry
/// rules, shared by every way the gateway speaks to upstreams. The caller sends each
/// [`Try`] its own way and reports how it went; this decides whether another follows.
pub(crate) struct Tries<'a> {
    plane: &'a DataPlane,
    service_name: &'a str,
    candidates: Vec<&'a mesh::Instance>,
    policy: &'a mesh::TrafficPolicy,
    state: Arc<crate::upstream::ServiceState>,
    retry: &'a gw::RetryPolicy,
    max_retries: u64,
    deadline: Instant,
    tried: [uuid::Uuid; MAX_TRIES],
    attempt: u64,
}

impl<'a> Tries<'a> {
    /// The healthy, unexpired instances of `service`, the route's service as the registry
    /// snapshot has it (none: not registered); `retryable` says whether the request may be
    /// sent more than once (idempotent, no body).
    pub fn new(
        plane: &'a DataPlane,
        route: &'a gw::Route,
        service: Option<&'a pake_registry::model::ServiceData>,
        started: Instant,
        retryable: bool,
    ) -> Result<Tries<'a>, ApiError> {
        let service_name = route.service.as_str();
        let no_instances = || {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_healthy_upstream",
                format!("{service_name} has no healthy instance"),
            )
            .with_retry_after(1)
        };
        let service = service.ok_or_else(no_instances)?;
        let now_ms = wall_clock_ms(started);
        let candidates: Vec<&mesh::Instance> = service
            .instances
            .iter()
            .filter(|record| !record.is_expired(now_ms) && record.instance.status == mesh::InstanceStatus::Passing)
            .map(|record| &record.instance)
            .collect();
        if candidates.is_empty() {
            return Err(no_instances());
        }
        let state = plane.upstreams.service(service_name);
        state.count_request();
        let retry = &route.retry;
        let max_retries = if retryable { retry.max_attempts.clamp(0, MAX_TRIES as i64 - 1) as u64 } else { 0 };
        Ok(Tries {
            plane,
            service_name,
            candidates,
            policy: &service.policy,
            state,
            retry,
            max_retries,
            deadline: started + Duration::from_millis(route.timeout_ms.get()),
            tried: [uuid::Uuid::nil(); MAX_TRIES],
            attempt: 0,
        })
    }

    /// The next try's instance, or 503 when every instance's breaker refuses.
    pub fn next(&mut self, started: Instant) -> Result<Try, ApiError> {
        // The first try starts as the request did (a few microseconds of routing later).
        let now = if self.attempt == 0 { started } else { Instant::now() };
        let deadline = match self.retry.per_try_timeout_ms {
            Some(ms) => self.deadline.min(now + Duration::from_millis(ms.get())),
            None => self.deadline,
        };
        let tried = &self.tried[..self.attempt as usize];
        let picked = pick(self.plane, self.service_name, &self.state, &self.candidates, self.policy, tried, deadline);
        let (upstream, scheme, probe) = picked.map_err(|retry_after| {
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "circuit_open",
                format!("every instance of {} is refusing requests (circuit open)", self.service_name),
            )
            .with_retry_after(retry_after)
        })?;
        self.tried[self.attempt as usize] = upstream.instance;
        Ok(Try { upstream, scheme, now, deadline, may_retry: self.attempt < self.max_retries, probe })
    }

    /// Accounts an answer with `status`; true when it is to be dropped and retried. A 5xx
    /// counts against the instance at once; any other answer's outcome is known once its
    /// body has been relayed: the caller reports it with [`Tries::settled`] or
    /// [`Tries::broke_off`] (or hands it to a [`Verdict`]).
    pub fn answered(&mut self, done: &mut Try, status: StatusCode) -> bool {
        if !status.is_server_error() {
            return false;
        }
        done.record(Outcome::ServerError, self.policy);
        self.count_failure("5xx");
        let gateway_error = matches!(status.as_u16(), 502..=504);
        let retry = gateway_error && self.retry.retry_on.contains(&gw::RetryCondition::X5xx) && self.may_retry();
        if retry {
            self.count_retry("5xx");
        }
        retry
    }

    /// Accounts a try that got no answer: `Ok` when another try follows, else the error
    /// to answer with.
    pub fn failed(&mut self, done: &mut Try, failure: TryFailure) -> Result<(), ApiError> {
        done.record(Outcome::Failure, self.policy);
        let outcome = failure.label();
        self.count_failure(outcome);
        if self.retry.retry_on.contains(&failure.condition()) && self.may_retry() {
            self.count_retry(outcome);
            return Ok(());
        }
        let (service, address) = (self.service_name, &done.upstream.address);
        Err(match failure {
            TryFailure::Timeout => error(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                format!("{service} did not answer in time (instance {address})"),
            ),
            TryFailure::Connect => error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("{service} refused the connection (instance {address})"),
            ),
            TryFailure::Tls => error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!(
                    "{service} could not be reached over TLS: its certificate was not accepted or no TLS version was agreed (instance {address})"
                ),
            ),
            TryFailure::Reset => error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                format!("{service} closed the connection without answering (instance {address})"),
            ),
        })
    }

    /// Accounts an answer relayed whole (or whose client went away): a success.
    pub fn settled(&self, done: &mut Try) {
        done.record(Outcome::Success, self.policy);
    }

    /// Accounts an answer relayed in part: the instance broke its body off.
    pub fn broke_off(&self, done: &mut Try) {
        record_broken_body(&self.plane.metrics.failed_tries, done, self.policy);
    }

    /// Takes a retry when the request allows another try, the deadline has not passed and
    /// the service's budget has one.
    fn may_retry(&mut self) -> bool {
        let allowed = self.attempt < self.max_retries
            && Instant::now() < self.deadline
            && self.state.take_retry(self.retry.budget_percent.clamp(0, 100) as u64);
        if allowed {
            self.attempt += 1;
        }
        allowed
    }

    fn count_failure(&self, outcome: &'static str) {
        let labels = UpstreamLabels { service: self.service_name.to_string(), outcome: outcome.into() };
        self.plane.metrics.failed_tries.get_or_create(&labels).inc();
    }

    fn count_retry(&self, outcome: &'static str) {
        let labels = UpstreamLabels { service: self.service_name.to_string(), outcome: outcome.into() };
        self.plane.metrics.retries.get_or_create(&labels).inc();
    }
}

async fn forward(
    plane: &DataPlane,
    route: &crate::routes::CompiledRoute,
    upstream_path: &str,
    request: Request,
    caller: Option<Caller>,
    started: Instant,
) -> Result<Response, ApiError> {
    let route = &route.route;
    let (mut parts, body) = request.into_parts();
    let idempotent = idempotent(&parts.method);
    let bodyless = HttpBody::size_hint(&body).exact() == Some(0);
    let snapshot = plane.registry.load();
    let service = snapshot.service_by_name(route.service.as_str());
    let mut tries = Tries::new(plane, route, service.map(|service| &**service), started, idempotent && bodyless)?;

    let path_and_query = match parts.uri.query() {
        Some(query) => format!("{upstream_path}?{query}"),
        None => upstream_path.to_string(),
    };
    let invalid_path = || error(StatusCode::BAD_REQUEST, "invalid_path", "the request path cannot be forwarded".into());
    // The origin form (`/path?query`), as plain HTTP/1.1 tries send it.
    let origin = Uri::try_from(path_and_query).map_err(|_| invalid_path())?;
    // A body of unknown length goes on chunked, whatever the method: hyper would send a
    // GET's without framing, that is, drop it.
    let chunked = !bodyless && HttpBody::size_hint(&body).exact().is_none();
    // Moved into the last try; copied only while a retry is possible.
    forward_headers(&mut parts.headers, caller);
    let mut headers = Some(std::mem::take(&mut parts.headers));
    // A body is watched, so that a try that failed because the client's body did is not
    // held against the instance.
    let (mut body, watch) = if bodyless {
        (Some(body), None)
    } else {
        let (body, watch) = ClientBody::watch(body);
        (Some(body), Some(watch))
    };
    loop {
        let mut attempt = tries.next(started)?;
        let upstream = &attempt.upstream;
        // Plain HTTP/1.1 goes over this thread's pooled connections in origin form; h2c
        // and https through hyper-util's client, which wants the absolute form.
        let uri = match attempt.scheme {
            mesh::InstanceScheme::Http => Ok(origin.clone()),
            mesh::InstanceScheme::Https => Uri::try_from(format!("https://{}{origin}", upstream.address)),
            mesh::InstanceScheme::H2c => Uri::try_from(format!("http://{}{origin}", upstream.address)),
        };
        let Ok(uri) = uri else {
            return Err(invalid_path());
        };
        let mut outgoing = axum::http::Request::new(body.take().unwrap_or_default());
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.uri_mut() = uri;
        *outgoing.headers_mut() =
            if attempt.may_retry { headers.clone().unwrap_or_default() } else { headers.take().unwrap_or_default() };
        outgoing.headers_mut().insert(header::HOST, upstream.host.clone());
        if chunked && attempt.scheme == mesh::InstanceScheme::Http {
            outgoing.headers_mut().insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }

        // Counted in flight until the answer's head, or the try's end however it ends.
        let busy = upstream.busy();
        let sent = send(&plane.https, attempt.scheme, &upstream.address, outgoing, attempt.now);
        let result = tokio::time::timeout_at(attempt.deadline.into(), sent).await;
        drop(busy);

        let failure = match TryFailure::check(result, route.service.as_str()) {
            Ok(mut response) => {
                if tries.answered(&mut attempt, response.status()) {
                    continue;
                }
                remove_hop_by_hop(response.headers_mut());
                let verdict = Verdict::new(plane, attempt, service, response.status());
                return Ok(response.map(|body| Body::new(UpstreamBody { body, verdict })));
            }
            Err(failure) => failure,
        };
        // A try that failed for the client's reasons says nothing about the instance: it
        // is dropped unrecorded (a probe's slot given back), and not retried.
        if let Some(refused) = watch.as_ref().and_then(|watch| watch.client_fault(failure)) {
            return Err(refused);
        }
        tries.failed(&mut attempt, failure)?;
    }
}

/// How far the client's request body has come, as [`ClientBody`] reports it.
const BODY_READING: u8 = 0;
const BODY_AWAITING_CLIENT: u8 = 1;
const BODY_DONE: u8 = 2;
const BODY_FAILED: u8 = 3;

/// A client's request body on its way to an upstream, watched: reading it failed (the
/// client closed early, sent malformed chunks), or it was waiting for the client when the
/// try ran out of time. Either is the client's doing, not the instance's.
struct ClientBody {
    body: Body,
    state: Arc<std::sync::atomic::AtomicU8>,
}

/// The watching side of a [`ClientBody`].
struct BodyWatch {
    state: Arc<std::sync::atomic::AtomicU8>,
}

impl ClientBody {
    fn watch(body: Body) -> (Body, BodyWatch) {
        let state = Arc::new(std::sync::atomic::AtomicU8::new(BODY_READING));
        (Body::new(ClientBody { body, state: state.clone() }), BodyWatch { state })
    }
}

impl HttpBody for ClientBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(context);
        let state = match &polled {
            std::task::Poll::Pending => BODY_AWAITING_CLIENT,
            std::task::Poll::Ready(None) => BODY_DONE,
            std::task::Poll::Ready(Some(Err(_))) => BODY_FAILED,
            std::task::Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => BODY_DONE,
            std::task::Poll::Ready(Some(Ok(_))) => BODY_READING,
        };
        self.state.store(state, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl BodyWatch {
    /// The answer to a try that failed because of the client's body, if it did.
    fn client_fault(&self, failure: TryFailure) -> Option<ApiError> {
        match (self.state.load(Ordering::Relaxed), failure) {
            (BODY_FAILED, _) => Some(error(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "the request body ended before its announced length or was malformed".into(),
            )),
            (BODY_AWAITING_CLIENT, TryFailure::Timeout) => Some(error(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body did not arrive in time".into(),
            )),
            _ => None,
        }
    }
}

/// The outcome of an answer still being relayed, given when its body ends: a success
/// when it ends whole or the client goes away first (dropped), a failure of the instance
/// when the instance breaks it off ([`record_broken_body`]). A 5xx was counted already.
struct Verdict {
    attempt: Try,
    service: Arc<pake_registry::model::ServiceData>,
    failed_tries: Family<UpstreamLabels, Counter>,
    given: bool,
}

impl Verdict {
    fn new(
        plane: &DataPlane,
        attempt: Try,
        service: Option<&Arc<pake_registry::model::ServiceData>>,
        status: StatusCode,
    ) -> Option<Verdict> {
        if status.is_server_error() {
            return None;
        }
        Some(Verdict {
            attempt,
            service: service?.clone(),
            failed_tries: plane.metrics.failed_tries.clone(),
            given: false,
        })
    }

    fn broke_off(mut self) {
        self.given = true;
        record_broken_body(&self.failed_tries, &mut self.attempt, &self.service.policy);
    }
}

impl Drop for Verdict {
    fn drop(&mut self) {
        if !self.given {
            self.attempt.record(Outcome::Success, &self.service.policy);
        }
    }
}

/// Records an answer whose body the instance broke off (closed or reset before its end,
/// malformed framing, silence): a failure of the instance for its breaker and outlier
/// detection, and a failed try (`outcome="body"`).
fn record_broken_body(failed_tries: &Family<UpstreamLabels, Counter>, done: &mut Try, policy: &mesh::TrafficPolicy) {
    done.record(Outcome::Failure, policy);
    let upstream = &done.upstream;
    let labels = UpstreamLabels { service: upstream.service.clone(), outcome: "body".into() };
    failed_tries.get_or_create(&labels).inc();
    tracing::debug!(service = %upstream.service, address = %upstream.address, "upstream broke off a response body");
}

/// An upstream's response body on its way to the client, carrying the try's [`Verdict`].
/// A client that goes away drops it without an error.
struct UpstreamBody {
    body: Body,
    verdict: Option<Verdict>,
}

impl HttpBody for UpstreamBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(context);
        match &polled {
            std::task::Poll::Ready(Some(Err(_))) => {
                if let Some(verdict) = self.verdict.take() {
                    verdict.broke_off();
                }
            }
            // The end: a success, given now rather than whenever the body is dropped.
            std::task::Poll::Ready(None) => drop(self.verdict.take()),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Session-Hop"),
            ("connection", "upgrade"),
            ("keep-alive", "timeout=5"),
            ("x-session-hop", "secret"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
            ("x-kept", "1"),
            ("x-kept", "2"),
        ]);
        remove_hop_by_hop(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-kept"]);
        assert_eq!(headers.get_all("x-kept").iter().count(), 2);

        let mut plain = map(&[("content-type", "text/plain"), ("content-length", "3")]);
        remove_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 2, "a message without hop-by-hop headers is left alone");
    }

    #[test]
    fn the_hop_by_hop_index_matches_the_list() {
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(index), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::CONTENT_TYPE), None);
        assert_eq!(hop_by_hop_index(&HeaderName::from_static("x-upgrade")), None);
    }

    #[test]
    fn addresses_are_written_as_text() {
        let cases: [(std::net::IpAddr, &str); 5] = [
            ([0, 0, 0, 0].into(), "0.0.0.0"),
            ([10, 9, 100, 255].into(), "10.9.100.255"),
            ([127, 0, 0, 1].into(), "127.0.0.1"),
            ([255, 255, 255, 255].into(), "255.255.255.255"),
            ("2001:db8::1".parse().unwrap(), "2001:db8::1"),
        ];
        for (ip, text) in cases {
            let mut out = [0u8; 48];
            let length = write_ip(&mut out, ip);
            assert_eq!(std::str::from_utf8(&out[..length]).unwrap(), text);
        }
        let longest: std::net::IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap();
        let mut out = [0u8; 48];
        assert_eq!(write_ip(&mut out, longest), longest.to_string().len());
    }

    #[test]
    fn forwarding_headers_are_added_and_the_client_host_moves_aside() {
        let mut headers = map(&[("host", "api.example"), ("x-forwarded-for", "203.0.113.7"), ("connection", "close")]);
        let peer = SocketAddr::from(([10, 0, 0, 9], 5000));
        forward_headers(
            &mut headers,
            Some(crate::forwarded::TrustedProxies::default().caller(peer, std::iter::empty())),
        );
        assert!(headers.get(header::HOST).is_none(), "each try sets the instance's Host");
        assert_eq!(headers["x-forwarded-host"], "api.example");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 10.0.0.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert!(headers.get(header::CONNECTION).is_none());
        let id = uuid::Uuid::parse_str(headers["x-request-id"].to_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 4);
        let trace = headers["traceparent"].to_str().unwrap();
        let fields: Vec<&str> = trace.split('-').collect();
        assert_eq!(fields.len(), 4, "{trace}");
        assert_eq!((fields[0], fields[1].len(), fields[2].len(), fields[3]), ("00", 32, 16, "01"));
        assert!(fields[1].chars().chain(fields[2].chars()).all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));

        let mut again = map(&[
            ("x-request-id", "mine"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ]);
        forward_headers(&mut again, None);
        assert_eq!(again["x-request-id"], "mine");
        assert_eq!(again["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert!(again.get("x-forwarded-for").is_none());
    }
}
