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

use crate::token_guard::TokenThrottle;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pake_api_runtime::{ApiError, Principal};
use pake_cache::{Level, Lookup, ResponseCache};
use pake_gateway_server::types;
use pake_ratelimit::{Decision, Field, Limit, RateLimiter};
use pake_tokens::TokenVerifier;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Longest a verified token is remembered, whatever its expiry.
const TOKEN_MEMORY: Duration = Duration::from_secs(300);

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
pub(crate) struct CacheCounters {
    pub(crate) l1_hit: Counter,
    pub(crate) l1_miss: Counter,
    pub(crate) l2_hit: Counter,
    pub(crate) l2_miss: Counter,
    pub(crate) bypass: Counter,
    pub(crate) coalesced: Counter,
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
    pub(crate) cache_counters: CacheCounters,
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
    pub(crate) async fn rate_limit<'t>(
        &self,
        table: &'t PolicyTable,
        route: &types::Route,
        principal: Option<&Principal>,
        client: Option<SocketAddr>,
        children: &crate::spans::ChildSpans<'_>,
    ) -> Result<Option<(Decision, &'t Limit)>, Refused> {
        let shared = self.limiter.redis_round_trips().is_some();
        let client_policy = principal.and_then(|p| table.client_policies.get(&p.subject));
        let applicable = [route.rate_limit_policy_id.as_ref(), client_policy]
            .into_iter()
            .flatten()
            .filter_map(|id| table.policies.get(id));
        let mut tightest: Option<(Decision, &Limit)> = None;
        for policy in applicable {
            let key = limit_key(policy, route, principal, client);
            // Shared limits are decided in Redis: a call worth a span of its own.
            let asking = if shared { children.start("ratelimit.check", "redis") } else { None };
            let decision = self.limiter.check(&key, &policy.limit).await;
            drop(asking);
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
                return Err(Refused::from(ApiError::unavailable(
                    format!(
                        "rate limiting for policy {} is unavailable and the policy fails closed",
                        policy.limit.policy
                    ),
                    seconds,
                )));
            }
            if !decision.allowed {
                let seconds = decision.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let mut refused = Refused::from(ApiError::too_many_requests(
                    format!("rate limit {} exceeded, retry in {seconds} seconds", policy.limit.policy),
                    seconds,
                ));
                add_headers(&mut refused.headers, &decision, &policy.limit);
                return Err(refused);
            }
            if tightest.as_ref().is_none_or(|(d, _)| decision.remaining < d.remaining) {
                tightest = Some((decision, &policy.limit));
            }
        }
        Ok(tightest)
    }

    pub(crate) fn count_lookup(&self, lookup: &Lookup) {
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

/// A refusal and the fields that go with it (a rate limit's `RateLimit-*`, a path's
/// `Allow`): kept apart until answered, so that the error can still name the request's
/// trace.
#[derive(Debug)]
pub struct Refused {
    pub error: ApiError,
    pub headers: HeaderMap,
}

impl From<ApiError> for Refused {
    fn from(error: ApiError) -> Refused {
        Refused { error, headers: HeaderMap::new() }
    }
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        self.error.status()
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response();
        response.headers_mut().extend(self.headers);
        response
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::test_route as route;
    use serde_json::json;

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
}
