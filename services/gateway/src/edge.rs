//! The policies a route can turn on, applied by the data plane between matching a route
//! and forwarding (see [`crate::proxy`]):
//!
//! 1. **auth** — routes with `require_token` need a valid gateway token (401 otherwise) that
//!    holds every `required_scopes` scope (403 otherwise). Verified tokens are remembered
//!    until they expire (at most five minutes), so a signature is checked once per token,
//!    not once per request.
//! 2. **rate limits** — the route's policy and the calling client's policy, each keyed by
//!    its scope (tenant, tenant and route, or client; anonymous callers by address). Over
//!    the limit → 429 with `Retry-After`; every limited route's answers carry the
//!    `RateLimit-*` fields of the tightest policy.
//! 3. **cache** — cacheable requests are looked up in L1, then L2; concurrent misses for
//!    one key send one request upstream and share its answer; storable answers are kept
//!    for the route's TTL (or the upstream's shorter `max-age`). `X-Cache-Status` says
//!    HIT, MISS or BYPASS on every answer of a caching route.

use crate::proxy::DataPlane;
use crate::routes::CompiledRoute;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pake_api_runtime::{ApiError, Principal};
use pake_cache::{CacheKey, CachedResponse, Flight, Level, Lookup, ResponseCache};
use pake_gateway_server::types;
use pake_ratelimit::{Decision, Field, Limit, RateLimiter};
use pake_tokens::TokenVerifier;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Longest a verified token is remembered, whatever its expiry.
const TOKEN_MEMORY: Duration = Duration::from_secs(300);

/// Largest answer buffered to be stored or shared with coalesced requests; larger ones
/// stream through (the cache itself refuses entries over its own limit).
const MAX_ENTRY_BYTES: usize = 1024 * 1024;

/// Statuses a cache may store (RFC 9111 heuristically cacheable ones the contract names).
const STORABLE: &[u16] = &[200, 203, 204, 301, 404, 410];

/// A rate-limit policy ready for decisions.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub id: Uuid,
    pub scope: types::RateLimitScope,
    pub limit: Limit,
    /// Decision counters (allowed, limited, unavailable), resolved once per table.
    counters: [Counter; 3],
}

/// Rate-limit policies by id, and each API client's policy by its public client id.
#[derive(Debug, Default)]
pub struct PolicyTable {
    pub policies: HashMap<Uuid, CompiledPolicy, foldhash::fast::RandomState>,
    pub client_policies: HashMap<String, Uuid, foldhash::fast::RandomState>,
}

impl PolicyTable {
    pub fn new(policies: Vec<types::RateLimitPolicy>, clients: Vec<types::ApiClient>, edge: &Edge) -> PolicyTable {
        let policies = policies
            .into_iter()
            .map(|p| {
                let limit = Limit {
                    policy: p.name.to_string(),
                    algorithm: match p.algorithm {
                        types::RateLimitAlgorithm::Gcra => pake_ratelimit::Algorithm::Gcra,
                        types::RateLimitAlgorithm::SlidingWindow => pake_ratelimit::Algorithm::SlidingWindow,
                    },
                    rate: p.rate.get(),
                    period: Duration::from_secs(p.period_seconds.get()),
                    burst: p.burst.max(0) as u64,
                    on_unavailable: match p.on_redis_unavailable {
                        types::RedisUnavailableBehaviour::FailOpen => pake_ratelimit::OnUnavailable::FailOpen,
                        types::RedisUnavailableBehaviour::FailClosed => pake_ratelimit::OnUnavailable::FailClosed,
                        types::RedisUnavailableBehaviour::Local => pake_ratelimit::OnUnavailable::Local,
                    },
                };
                let counter = |result| {
                    edge.decisions.get_or_create(&DecisionLabels { policy: p.name.to_string(), result }).clone()
                };
                let counters = [counter("allowed"), counter("limited"), counter("unavailable")];
                (p.id, CompiledPolicy { id: p.id, scope: p.scope, limit, counters })
            })
            .collect();
        let client_policies = clients
            .into_iter()
            .filter_map(|c| c.rate_limit_policy_id.map(|policy| (c.client_id.to_string(), policy)))
            .collect();
        PolicyTable { policies, client_policies }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    policy: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    level: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    result: &'static str,
}

/// Cache counters resolved once, so the hot path records without label lookups.
struct CacheCounters {
    l1_hit: Counter,
    l1_miss: Counter,
    l2_hit: Counter,
    l2_miss: Counter,
    bypass: Counter,
    coalesced: Counter,
}

/// A verified token and until when it may be used without checking its signature again.
struct Remembered {
    verified: Arc<pake_tokens::Verified>,
    until: std::time::Instant,
}

const REMEMBERED_PER_THREAD: usize = 10_000;

/// One edge's remembered tokens on one thread.
type TokensOfEdge = HashMap<Box<str>, Remembered, foldhash::fast::RandomState>;

thread_local! {
    /// Verified tokens remembered per thread, so that a token's signature is checked once
    /// per thread and [`TOKEN_MEMORY`] rather than on every request; keyed by the [`Edge`]
    /// that verified them (each has its own keys). Bounded: a full map starts over.
    static REMEMBERED: std::cell::RefCell<HashMap<u64, TokensOfEdge>> = std::cell::RefCell::default();
}

static NEXT_EDGE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// What the data plane needs to apply route policies.
pub struct Edge {
    verifier: TokenVerifier,
    /// Identifies this edge's tokens in [`REMEMBERED`].
    id: u64,
    pub limiter: RateLimiter,
    /// Applied to token requests per address, in front of the token endpoint.
    pub token_limit: Limit,
    /// Token requests that need Argon2, per client id and per client id and address.
    pub token_throttle: TokenThrottle,
    pub cache: Arc<ResponseCache>,
    decisions: Family<DecisionLabels, Counter>,
    /// Token checks: allowed, forbidden, unauthorized.
    auth: [Counter; 3],
    cache_counters: CacheCounters,
}

impl Edge {
    pub fn new(
        verifier: TokenVerifier,
        limiter: RateLimiter,
        token_limit: Limit,
        cache: Arc<ResponseCache>,
        metrics: &pake_observe::Metrics,
    ) -> Edge {
        let decisions = Family::<DecisionLabels, Counter>::default();
        metrics.register("rate_limit_decisions", "Rate-limit decisions by policy and result", decisions.clone());
        if limiter.redis_round_trips().is_some() {
            metrics.register(
                "rate_limit_redis_round_trips",
                "Round trips to Redis for rate-limit decisions (one per GCRA batch)",
                RedisRoundTrips(limiter.clone()),
            );
        }
        let auth = Family::<AuthLabels, Counter>::default();
        metrics.register("auth_decisions", "Token checks on routes that require one, by result", auth.clone());
        let lookups = Family::<CacheLabels, Counter>::default();
        metrics.register("cache_requests", "Cache lookups by level and result", lookups.clone());
        let counter = |level, result| lookups.get_or_create(&CacheLabels { level, result }).clone();
        let cache_counters = CacheCounters {
            l1_hit: counter("l1", "hit"),
            l1_miss: counter("l1", "miss"),
            l2_hit: counter("l2", "hit"),
            l2_miss: counter("l2", "miss"),
            bypass: counter("none", "bypass"),
            coalesced: counter("none", "coalesced"),
        };
        let auth =
            ["allowed", "forbidden", "unauthorized"].map(|result| auth.get_or_create(&AuthLabels { result }).clone());
        Edge {
            verifier,
            id: NEXT_EDGE.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            limiter,
            token_throttle: TokenThrottle::new(&token_limit),
            token_limit,
            cache,
            decisions,
            auth,
            cache_counters,
        }
    }

    fn counted<T>(&self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        let counter = match &result {
            Ok(_) => 0,
            Err(error) if error.status() == StatusCode::FORBIDDEN => 1,
            Err(_) => 2,
        };
        self.auth[counter].inc();
        result
    }

    /// A token this thread verified for this edge, still unexpired (`now`: Unix seconds)
    /// and within [`TOKEN_MEMORY`] of its verification.
    fn remembered(&self, token: &str, now: u64) -> Option<Arc<pake_tokens::Verified>> {
        REMEMBERED.with_borrow(|remembered| {
            let known = remembered.get(&self.id)?.get(token)?;
            (known.verified.expires_at > now && known.until > std::time::Instant::now()).then(|| known.verified.clone())
        })
    }

    fn remember(&self, token: &str, verified: &Arc<pake_tokens::Verified>) {
        REMEMBERED.with_borrow_mut(|remembered| {
            let tokens = remembered.entry(self.id).or_default();
            if tokens.len() >= REMEMBERED_PER_THREAD {
                tokens.clear();
            }
            let until = std::time::Instant::now() + TOKEN_MEMORY;
            tokens.insert(token.into(), Remembered { verified: verified.clone(), until });
        });
    }

    /// The caller of a route that requires a token, or the 401/403 to answer. The verified
    /// token is shared with the memory of verified tokens, not copied for each request.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        route: &types::Route,
    ) -> Result<Arc<pake_tokens::Verified>, ApiError> {
        self.authorize(headers.get(header::AUTHORIZATION).map(HeaderValue::as_bytes), route)
    }

    /// [`Edge::authenticate`] from the `Authorization` value alone (the first, if several).
    pub fn authorize(
        &self,
        authorization: Option<&[u8]>,
        route: &types::Route,
    ) -> Result<Arc<pake_tokens::Verified>, ApiError> {
        let result = (|| {
            let value = authorization.ok_or_else(|| ApiError::unauthorized("this route requires a bearer token"))?;
            // The runtime's parser, as the admin API's: the scheme in any case (RFC 7235).
            let token = std::str::from_utf8(value)
                .ok()
                .and_then(pake_api_runtime::bearer_token)
                .ok_or_else(|| ApiError::unauthorized("the Authorization header is not a bearer token"))?;
            let now =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            let verified = match self.remembered(token, now) {
                Some(known) => known,
                None => {
                    let verified = Arc::new(self.verifier.verify_full(token)?);
                    if verified.expires_at > now + 1 {
                        self.remember(token, &verified);
                    }
                    verified
                }
            };
            let held = &verified.principal.scopes;
            if let Some(missing) =
                route.required_scopes.iter().find(|needed| !held.iter().any(|held| held == needed.as_str()))
            {
                return Err(ApiError::forbidden(format!("the token lacks the scope {}", missing.as_str())));
            }
            Ok(verified)
        })();
        self.counted(result)
    }

    /// Applies the route's and the client's rate limits. `Ok` carries the headers of the
    /// tightest decision (none when no policy applies); `Err` is the 429 (or the 503 of a
    /// fail-closed policy while Redis is down) to answer.
    pub async fn rate_limit<'t>(
        &self,
        table: &'t PolicyTable,
        route: &types::Route,
        principal: Option<&Principal>,
        client: Option<SocketAddr>,
    ) -> Result<Option<(Decision, &'t Limit)>, Response> {
        let client_policy = principal.and_then(|p| table.client_policies.get(&p.subject));
        let applicable = [route.rate_limit_policy_id.as_ref(), client_policy]
            .into_iter()
            .flatten()
            .filter_map(|id| table.policies.get(id));
        let mut tightest: Option<(Decision, &Limit)> = None;
        for policy in applicable {
            let key = limit_key(policy, route, principal, client);
            let decision = self.limiter.check(&key, &policy.limit).await;
            let counter = if decision.unavailable {
                &policy.counters[2]
            } else if decision.allowed {
                &policy.counters[0]
            } else {
                &policy.counters[1]
            };
            counter.inc();
            if decision.unavailable {
                let seconds = decision.retry_after.as_secs().max(1);
                return Err(ApiError::unavailable(
                    format!(
                        "rate limiting for policy {} is unavailable and the policy fails closed",
                        policy.limit.policy
                    ),
                    seconds,
                )
                .into_response());
            }
            if !decision.allowed {
                let seconds = decision.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let mut response = ApiError::too_many_requests(
                    format!("rate limit {} exceeded, retry in {seconds} seconds", policy.limit.policy),
                    seconds,
                )
                .into_response();
                add_headers(response.headers_mut(), &decision, &policy.limit);
                return Err(response);
            }
            if tightest.as_ref().is_none_or(|(d, _)| decision.remaining < d.remaining) {
                tightest = Some((decision, &policy.limit));
            }
        }
        Ok(tightest)
    }

    fn count_lookup(&self, lookup: &Lookup) {
        let c = &self.cache_counters;
        match lookup {
            Lookup::Hit { level: Level::L1, .. } => {
                c.l1_hit.inc();
            }
            Lookup::Hit { level: Level::L2, .. } => {
                c.l1_miss.inc();
                c.l2_hit.inc();
            }
            Lookup::Miss => {
                c.l1_miss.inc();
                if self.cache.l2_available().is_some() {
                    c.l2_miss.inc();
                }
            }
        }
    }
}

/// The rate limiter's Redis round trips, read when metrics are rendered. Beside
/// `rate_limit_decisions` it tells how many decisions each round trip carried.
#[derive(Debug)]
struct RedisRoundTrips(RateLimiter);

impl EncodeMetric for RedisRoundTrips {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.0.redis_round_trips().unwrap_or(0), None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// Puts a decision's `RateLimit-*` (and, when refused, `Retry-After`) fields on a response.
pub fn add_headers(headers: &mut HeaderMap, decision: &Decision, limit: &Limit) {
    static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
    static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
    static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
    static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
    decision.write_headers(limit, |field, value| {
        // Every limited response carries these: the names are not parsed again each time.
        let name = match field {
            Field::Policy => &RATELIMIT_POLICY,
            Field::RateLimit => &RATELIMIT,
            Field::Limit => &RATELIMIT_LIMIT,
            Field::Remaining => &RATELIMIT_REMAINING,
            Field::Reset => &RATELIMIT_RESET,
            Field::RetryAfter => &header::RETRY_AFTER,
        };
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), value);
        }
    });
}

/// The key a policy counts a request under: `{policy}:tenant:{tenant}` (per tenant, with
/// `:route:{route}` per tenant and route) or `{policy}:client:{client id}`; callers
/// without the identity the scope names are counted by address, `addr:{ip}`. Written
/// into one buffer: it is built for every limited request.
fn limit_key(
    policy: &CompiledPolicy,
    route: &types::Route,
    principal: Option<&Principal>,
    client: Option<SocketAddr>,
) -> String {
    use std::fmt::Write as _;
    let mut key = String::with_capacity(128);
    let mut uuid = [0u8; uuid::fmt::Hyphenated::LENGTH];
    key.push_str(policy.id.hyphenated().encode_lower(&mut uuid));
    key.push(':');
    let identity = match policy.scope {
        types::RateLimitScope::PerTenant | types::RateLimitScope::PerTenantRoute => {
            principal.and_then(|p| p.tenant.as_deref()).map(|tenant| ("tenant:", tenant))
        }
        types::RateLimitScope::PerClient => principal.map(|p| ("client:", p.subject.as_str())),
    };
    match (identity, client) {
        (Some((kind, name)), _) => {
            key.push_str(kind);
            key.push_str(name);
        }
        (None, Some(addr)) => {
            let _ = write!(key, "addr:{}", addr.ip());
        }
        (None, None) => key.push_str("addr:unknown"),
    }
    if policy.scope == types::RateLimitScope::PerTenantRoute {
        key.push_str(":route:");
        key.push_str(route.id.hyphenated().encode_lower(&mut uuid));
    }
    key
}

/// Whether the request may be answered from the cache at all.
fn cacheable_request(route: &types::Route, method: &Method, headers: &HeaderMap) -> bool {
    let method_ok = route.cache.methods.iter().any(|m| m.to_string() == method.as_str());
    let refuses = headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().map(|v| v.to_ascii_lowercase()).is_ok_and(|v| v.contains("no-cache") || v.contains("no-store"))
    }) || headers.get(header::PRAGMA).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"));
    method_ok && !refuses
}

/// How long an upstream answer may be kept: the route's TTL, shortened by the answer's own
/// `s-maxage`/`max-age`; `None` when it must not be stored.
fn storable_for(route: &types::Route, status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    if !STORABLE.contains(&status.as_u16()) || headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    let mut ttl = route.cache.ttl_seconds.get();
    let mut shared_max_age = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { return None };
        for directive in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            if directive == "no-store" || directive == "private" || directive == "no-cache" {
                return None;
            }
            if let Some(seconds) = directive.strip_prefix("s-maxage=").and_then(|s| s.parse::<u64>().ok()) {
                shared_max_age = Some(seconds);
            } else if let Some(seconds) = directive.strip_prefix("max-age=").and_then(|s| s.parse::<u64>().ok()) {
                shared_max_age.get_or_insert(seconds);
            }
        }
    }
    if let Some(seconds) = shared_max_age {
        ttl = ttl.min(seconds);
    }
    (ttl > 0).then(|| Duration::from_secs(ttl))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn with_status(mut response: Response, status: &'static str) -> Response {
    response.headers_mut().insert(HeaderName::from_static("x-cache-status"), HeaderValue::from_static(status));
    response
}

/// A response from a cached (or shared) entry.
fn from_entry(entry: &CachedResponse, status: &'static str) -> Response {
    let mut response = Response::new(Body::from(entry.body.clone()));
    *response.status_mut() = StatusCode::from_u16(entry.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in &entry.headers {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_maybe_shared(value.clone()))
        {
            headers.append(name, value);
        }
    }
    if status == "HIT" {
        let age = (now_ms() - entry.stored_at_ms).max(0) / 1000;
        headers.insert(header::AGE, HeaderValue::from(age as u64));
    }
    with_status(response, status)
}

/// Reads a body into memory up to `limit` bytes. Past the limit, gives back a body that
/// replays what was read and streams the rest, so nothing is lost.
async fn buffer(body: Body, limit: usize) -> Result<Bytes, Body> {
    use futures::StreamExt;
    if HttpBody::size_hint(&body).lower() as usize > limit {
        return Err(body);
    }
    let mut stream = body.into_data_stream();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut size = 0usize;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                size += chunk.len();
                chunks.push(chunk);
                if size > limit {
                    let read = futures::stream::iter(chunks.into_iter().map(Ok::<Bytes, axum::Error>));
                    return Err(Body::from_stream(read.chain(stream)));
                }
            }
            Err(error) => {
                // The upstream broke off mid-body: pass on what came and the break itself.
                let read = futures::stream::iter(chunks.into_iter().map(Ok::<Bytes, axum::Error>));
                return Err(Body::from_stream(read.chain(futures::stream::once(async move { Err(error) }))));
            }
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => Bytes::from(chunks.concat()),
    })
}

/// Sends the request through the route's cache: a hit answers from memory or Redis, a miss
/// goes upstream once however many ask at the same time.
pub async fn through_cache<F, Fut>(
    plane: &DataPlane,
    route: &CompiledRoute,
    request: Request,
    tenant: &str,
    forward: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let edge = &plane.edge;
    let policy = &route.route.cache;
    if !cacheable_request(&route.route, request.method(), request.headers()) {
        edge.cache_counters.bypass.inc();
        return with_status(forward(request).await, "BYPASS");
    }
    let vary: Vec<(String, String)> = policy
        .vary_headers
        .iter()
        .map(|name| {
            let name = name.as_str().to_ascii_lowercase();
            let value = request.headers().get(name.as_str()).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            (name, value)
        })
        .collect();
    let path = request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/").to_string();
    let key = CacheKey::new(request.method().as_str(), path, tenant, vary);
    let lookup = edge.cache.get(&key).await;
    edge.count_lookup(&lookup);
    if let Lookup::Hit { entry, .. } = lookup {
        route.metrics.cache_hits.inc();
        return from_entry(&entry, "HIT");
    }
    route.metrics.cache_misses.inc();
    let guard = match edge.cache.join(&key).await {
        Flight::Shared(entry) => {
            edge.cache_counters.coalesced.inc();
            return from_entry(&entry, "MISS");
        }
        Flight::Alone => return with_status(forward(request).await, "MISS"),
        Flight::Leader(guard) => guard,
    };
    let response = forward(request).await;
    let (parts, body) = response.into_parts();
    let bytes = match buffer(body, MAX_ENTRY_BYTES).await {
        Ok(bytes) => bytes,
        Err(streaming) => {
            guard.complete(None);
            return with_status(Response::from_parts(parts, streaming), "MISS");
        }
    };
    let stored_at_ms = now_ms();
    let ttl = storable_for(&route.route, parts.status, &parts.headers);
    let mut tags: Vec<String> = policy.tags.iter().map(|t| t.to_string()).collect();
    if let Some(tag_header) = &policy.tag_header {
        for value in parts.headers.get_all(tag_header.as_str()) {
            if let Ok(value) = value.to_str() {
                tags.extend(value.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from));
            }
        }
    }
    tags.sort();
    tags.dedup();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != header::AGE && name.as_str() != "x-cache-status")
        .map(|(name, value)| (name.as_str().to_string(), Bytes::copy_from_slice(value.as_bytes())))
        .collect();
    let entry = CachedResponse {
        status: parts.status.as_u16(),
        headers,
        body: bytes,
        tags,
        route: route.route.id.to_string(),
        stored_at_ms,
        expires_at_ms: stored_at_ms + ttl.map(|t| t.as_millis() as i64).unwrap_or(0),
    };
    let entry = Arc::new(entry);
    if ttl.is_some() {
        edge.cache.put_shared(&key, entry.clone()).await;
    }
    guard.complete(Some(entry.clone()));
    from_entry(&entry, "MISS")
}

tokio::task_local! {
    /// The address a token request comes from, for the token endpoint (whose generated
    /// request carries the body alone): set by [`token_endpoint_guard`].
    static TOKEN_CALLER: Option<IpAddr>;
}

/// The address the token request being answered comes from, when known.
pub fn token_caller() -> Option<IpAddr> {
    TOKEN_CALLER.try_with(|address| *address).ok().flatten()
}

/// Limits token requests per source address in front of the token endpoint, before any
/// secret is hashed: a brake on the hashing work one address can cause. Guessing is slowed
/// behind it, by [`TokenThrottle`].
pub async fn token_endpoint_guard(State(plane): State<Arc<DataPlane>>, request: Request, next: Next) -> Response {
    if request.method() == Method::POST && request.uri().path() == "/v1/auth/token" {
        let address = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let key = match address {
            Some(address) => format!("token:addr:{address}"),
            None => "token:addr:unknown".into(),
        };
        let decision = plane.edge.limiter.check(&key, &plane.edge.token_limit).await;
        if !decision.allowed {
            let seconds = decision.retry_after.as_secs_f64().ceil().max(1.0) as u64;
            return ApiError::too_many_requests(
                format!("too many token requests from this address, retry in {seconds} seconds"),
                seconds,
            )
            .into_response();
        }
        return TOKEN_CALLER.scope(address, next.run(request)).await;
    }
    next.run(request).await
}

/// How long an address that proved a client's secret is exempt from that client's lockout.
const PROVEN_FOR: Duration = Duration::from_secs(24 * 3600);

/// Slows down secret guessing at the token endpoint the way login throttling does, without
/// letting anyone's failures refuse the owner's secret.
///
/// - What is counted is the attempts whose secret must go through Argon2: every failure,
///   and a success only when its secret was not verified minutes ago. A secret verified a
///   moment ago ([`crate::secrets::remembered`]) passes before any of this, uncounted, so
///   an owner signing in again is never slowed by a flood of wrong secrets.
/// - Counted per client id (the configured token rate, twice that at once) and per client
///   id and address (a quarter of it). Over either budget the answer is 429 +
///   `Retry-After`, before the secret is checked: a throttled guesser learns nothing, and
///   its guesses cost no hashing.
/// - An address that proved the secret within a day is exempt from the per-client budget
///   (only its own per-address one applies): guessers rotating addresses exhaust the
///   client's budget but cannot lock out the owner's known addresses, even after a
///   rotation; its secret is checked in a lane of its own
///   ([`crate::secrets::verify_proven`]), not behind the guessers' hashing. An address with
///   no such history waits with the guessers while the client is under attack.
///
/// Unknown client ids are counted exactly like known ones, so throttling tells nothing
/// about which exist. The counters are the rate limiter's (shared through Redis); which
/// addresses proved a secret, each replica learns for itself.
pub struct TokenThrottle {
    per_client: Limit,
    per_pair: Limit,
    /// `client id` and address pairs that proved the client's secret.
    proven: moka::sync::Cache<String, ()>,
}

impl TokenThrottle {
    /// Budgets derived from the token request limit.
    pub fn new(token_limit: &Limit) -> TokenThrottle {
        let per_client = Limit { policy: "token-attempts".into(), ..token_limit.clone() };
        let pair_rate = (token_limit.rate / 4).max(1);
        let per_pair = Limit {
            policy: "token-attempts-per-address".into(),
            rate: pair_rate,
            burst: pair_rate * 2,
            ..per_client.clone()
        };
        TokenThrottle {
            per_client,
            per_pair,
            proven: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(PROVEN_FOR).build(),
        }
    }

    fn keys(client_id: &str, address: Option<IpAddr>) -> (String, String) {
        let client = format!("token:attempts:{client_id}");
        let pair = match address {
            Some(address) => format!("{client}:{address}"),
            None => format!("{client}:unknown"),
        };
        (client, pair)
    }

    /// Counts an attempt whose secret is about to be checked with Argon2; `Err` says how
    /// long to wait when it is over a budget, and must not be checked.
    pub async fn admit(&self, limiter: &RateLimiter, client_id: &str, address: Option<IpAddr>) -> Result<(), Duration> {
        let (client, pair) = Self::keys(client_id, address);
        // The address's own budget always applies; the client's unless it proved the secret.
        let client_budget = (!self.proven.contains_key(&pair)).then_some((&client, &self.per_client));
        let mut wait: Option<Duration> = None;
        for (key, limit) in [Some((&pair, &self.per_pair)), client_budget].into_iter().flatten() {
            let decision = limiter.check(key, limit).await;
            if !decision.allowed {
                wait = wait.max(Some(decision.retry_after));
            }
        }
        match wait {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Whether `address` proved the client's secret within [`PROVEN_FOR`].
    pub fn proven(&self, client_id: &str, address: Option<IpAddr>) -> bool {
        let (_, pair) = Self::keys(client_id, address);
        self.proven.contains_key(&pair)
    }

    /// Records that `address` proved the client's secret.
    pub fn succeeded(&self, client_id: &str, address: Option<IpAddr>) {
        let (_, pair) = Self::keys(client_id, address);
        self.proven.insert(pair, ());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(cache: serde_json::Value) -> types::Route {
        serde_json::from_value(json!({
            "id": Uuid::new_v4(), "name": "r", "path_prefix": "/", "methods": ["GET"], "api_version": "v1",
            "service": "svc", "strip_prefix": false, "merge_slashes": true, "timeout_ms": 1000, "retry": {"max_attempts": 0},
            "cache": cache, "rate_limit_policy_id": null, "required_scopes": [], "require_token": false,
            "priority": 0, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "version": 1
        }))
        .unwrap()
    }

    #[test]
    fn limit_keys_name_the_policy_the_identity_and_the_route() {
        let route = route(json!({"enabled": false}));
        let policy = |scope| CompiledPolicy {
            id: Uuid::parse_str("6f1c2a9e-0b4d-4c8e-9f3a-2d7b5e8c1a40").unwrap(),
            scope,
            limit: crate::token_limit(5),
            counters: Default::default(),
        };
        let caller = Principal { subject: "cli_abc".into(), tenant: Some("acme".into()), scopes: Vec::new() };
        let untenanted = Principal { tenant: None, ..caller.clone() };
        let addr = Some(SocketAddr::from(([192, 0, 2, 7], 4000)));
        let id = "6f1c2a9e-0b4d-4c8e-9f3a-2d7b5e8c1a40";
        let r = route.id;
        use types::RateLimitScope::{PerClient, PerTenant, PerTenantRoute};
        let cases = [
            (PerTenant, Some(&caller), format!("{id}:tenant:acme")),
            (PerTenantRoute, Some(&caller), format!("{id}:tenant:acme:route:{r}")),
            (PerClient, Some(&caller), format!("{id}:client:cli_abc")),
            (PerTenant, Some(&untenanted), format!("{id}:addr:192.0.2.7")),
            (PerTenantRoute, None, format!("{id}:addr:192.0.2.7:route:{r}")),
            (PerClient, None, format!("{id}:addr:192.0.2.7")),
        ];
        for (scope, principal, expected) in cases {
            assert_eq!(limit_key(&policy(scope), &route, principal, addr), expected);
        }
        assert_eq!(limit_key(&policy(PerClient), &route, None, None), format!("{id}:addr:unknown"));
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn storability_follows_status_cache_control_and_cookies() {
        let r = route(json!({"enabled": true, "ttl_seconds": 60}));
        assert_eq!(storable_for(&r, StatusCode::OK, &headers(&[])), Some(Duration::from_secs(60)));
        assert_eq!(storable_for(&r, StatusCode::NOT_FOUND, &headers(&[])), Some(Duration::from_secs(60)));
        assert_eq!(storable_for(&r, StatusCode::INTERNAL_SERVER_ERROR, &headers(&[])), None);
        assert_eq!(storable_for(&r, StatusCode::CREATED, &headers(&[])), None);
        assert_eq!(storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "private, max-age=600")])), None);
        assert_eq!(storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "no-store")])), None);
        assert_eq!(storable_for(&r, StatusCode::OK, &headers(&[("set-cookie", "a=b")])), None);
        assert_eq!(
            storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "public, max-age=5")])),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "max-age=5, s-maxage=20")])),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "max-age=600")])),
            Some(Duration::from_secs(60)),
            "an upstream never lengthens the route's TTL"
        );
        assert_eq!(storable_for(&r, StatusCode::OK, &headers(&[("cache-control", "max-age=0")])), None);
    }

    #[test]
    fn requests_bypass_the_cache_when_they_ask_or_the_method_is_not_cached() {
        let r = route(json!({"enabled": true, "methods": ["GET"]}));
        assert!(cacheable_request(&r, &Method::GET, &headers(&[])));
        assert!(!cacheable_request(&r, &Method::HEAD, &headers(&[])));
        assert!(!cacheable_request(&r, &Method::GET, &headers(&[("cache-control", "no-cache")])));
        assert!(!cacheable_request(&r, &Method::GET, &headers(&[("pragma", "no-cache")])));
    }

    #[tokio::test]
    async fn buffering_keeps_every_byte_past_the_limit() {
        let small = buffer(Body::from("hello"), 10).await.unwrap();
        assert_eq!(small, Bytes::from("hello"));
        let chunks = futures::stream::iter(["ab", "cd", "ef"].map(|c| Ok::<_, std::io::Error>(Bytes::from(c))));
        let large = buffer(Body::from_stream(chunks), 3).await.unwrap_err();
        let all = axum::body::to_bytes(large, 100).await.unwrap();
        assert_eq!(all, Bytes::from("abcdef"));
    }
}
