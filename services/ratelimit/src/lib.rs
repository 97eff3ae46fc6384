//! Rate limiting for the PAKE API gateway.
//!
//! The gateway calls [`RateLimiter::check`] once per request for each policy that applies,
//! with an opaque key such as `tenant:acme:route:search`, and answers 429 (or 503) from the
//! returned [`Decision`], whose [`Decision::headers`] tell the client where it stands.
//!
//! # Where the counters live
//!
//! - [`RateLimiter::redis`]: in Redis, so the limit is global across all gateway replicas.
//!   Each decision is exactly one atomic round trip (EVALSHA of a Lua script that reads the
//!   server's clock with `TIME`, so replicas with skewed clocks agree); the scripts are
//!   loaded once per connection, when it is made. The GCRA decisions a thread gathers while
//!   its previous batch is out share one EVALSHA, one entry per key (each still decided
//!   atomically, in order). Each call, connecting included, is bounded by
//!   [`RedisOptions::timeout`]; after a failure Redis is left alone for
//!   [`RedisOptions::backoff`] (requests fall back at no latency cost), then the next request
//!   probes it again. While Redis is unreachable each policy follows its [`OnUnavailable`];
//!   the outage is logged once (warn) when it starts and once (info) when it ends.
//! - [`RateLimiter::local`]: in process memory (embedded mode, one replica).
//!
//! Keys are namespaced `{prefix}rl:gcra:{key}` and `{prefix}rl:sw:{key}`, so a policy that
//! changes algorithm starts from fresh counters instead of misreading the other's state.
//!
//! # Algorithms
//!
//! - [`Algorithm::Gcra`] (generic cell rate algorithm): emission interval T = period / rate,
//!   tolerance τ = burst × T. One theoretical arrival time (TAT) is stored per key, in µs
//!   (so that rates such as 3 per second do not drift as whole milliseconds would); a request
//!   at `now` is admitted when TAT − τ ≤ now, and then TAT becomes max(TAT, now) + T. Hence
//!   `burst + 1` requests may arrive at once, then one every T. The key expires once the
//!   TAT has passed, since it then means "full quota" like an absent key.
//! - [`Algorithm::SlidingWindow`]: counts of the current and the previous fixed window of
//!   length `period`; the estimate is previous × (share of the previous window still inside
//!   the sliding window) + current, and a request is admitted while the estimate is below
//!   `rate + burst`. The share is quantised to 1/65536. Keys expire after 2 periods.
//!
//! # Figures in a decision
//!
//! - `limit` is `rate + burst` for both algorithms. For GCRA it is the most requests
//!   admitted within any window of length `period` (`burst + 1` at once, then `rate - 1`
//!   more, one every T); for the sliding window it is the bound on the estimated count.
//! - `remaining` is how many more requests would be admitted right now, back to back, after
//!   this one. For GCRA that is at most `burst` (the rest of the quota only comes at one
//!   per T), so it never promises a request that would be refused.
//! - `reset_after` (`t` in `RateLimit`) is the time until the key is back to its untouched
//!   state if no request comes: `remaining` is then at its maximum.
//! - `retry_after` is, when refused, the time until the next request would be admitted.
//!
//! How a limit is published in response fields (one item for a sliding window, a rate and
//! a burst item for GCRA, so that a client keeping to them is never refused) is
//! [`published`]'s.
//!
//! Both algorithms are integer arithmetic, identical in Rust (embedded mode and the `Local`
//! fallback) and in Lua (Redis), with every quantity below 2^53 so that Lua's doubles are
//! exact. Limits beyond that (a period over 2^36 ms, a quota over 2^36, an interval or
//! tolerance over 2^48 µs) are clamped; [`Limit::validate`] rejects them.

mod algo;
mod local;
pub mod published;
mod redis_store;
mod resp;

use algo::{Outcome, Rates};
use local::LocalStore;
use redis_store::RedisStore;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How requests are counted for a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Generic cell rate algorithm: a smooth token bucket, one timestamp per key.
    Gcra,
    /// Weighted counts of the current and previous fixed windows.
    SlidingWindow,
}

/// What a Redis-backed limiter does for a policy while Redis cannot be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OnUnavailable {
    /// Admit every request.
    FailOpen,
    /// Refuse every request with [`Decision::unavailable`] set (the gateway answers 503).
    FailClosed,
    /// Enforce the same limit in this process's memory: the effective limit is multiplied
    /// by the number of replicas.
    Local,
}

/// Which state made a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The shared counters in Redis.
    Redis,
    /// In-process counters: embedded mode, or [`OnUnavailable::Local`] during an outage.
    Local,
    /// Admitted without counting: [`OnUnavailable::FailOpen`] during an outage.
    FailOpen,
    /// Refused without counting: [`OnUnavailable::FailClosed`] during an outage.
    FailClosed,
}

/// One rate-limit policy as applied to a key.
#[derive(Clone, Debug)]
pub struct Limit {
    /// Policy name, used in the `RateLimit-Policy` and `RateLimit` header fields.
    pub policy: String,
    pub algorithm: Algorithm,
    /// Requests allowed per period (at least 1).
    pub rate: u64,
    /// At least 1 s.
    pub period: Duration,
    /// Extra requests allowed at once above the steady rate.
    pub burst: u64,
    pub on_unavailable: OnUnavailable,
}

impl Limit {
    /// `rate + burst`: the most requests admitted per `period` (a sliding window's quota,
    /// which its `RateLimit-Policy` item publishes; see [`published`] for GCRA's items).
    pub fn quota(&self) -> u64 {
        Rates::of(self).quota
    }

    /// Checks the figures against what the limiter computes exactly; [`RateLimiter::check`]
    /// clamps a limit that fails this instead of refusing to decide.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |why: &str| Err(Error::InvalidLimit(format!("policy {:?}: {why}", self.policy)));
        if self.rate == 0 {
            return invalid("rate must be at least 1");
        }
        if self.period < Duration::from_secs(1) {
            return invalid("period must be at least 1 s");
        }
        if self.period > Duration::from_millis(1 << 36) {
            return invalid("period must be at most 2^36 ms");
        }
        if self.rate.checked_add(self.burst).is_none_or(|quota| quota > 1 << 36) {
            return invalid("rate + burst must be at most 2^36");
        }
        let rates = Rates::of(self);
        if u128::from(rates.interval_us) * u128::from(self.burst) > u128::from(rates.tolerance_us) {
            return invalid("burst × period / rate must be at most 2^48 µs");
        }
        Ok(())
    }
}

/// The answer for one request under one policy.
#[derive(Clone, Debug)]
pub struct Decision {
    pub allowed: bool,
    /// True only when the policy is [`OnUnavailable::FailClosed`] and Redis is unreachable:
    /// the gateway answers 503 rather than 429.
    pub unavailable: bool,
    /// The quota: `rate + burst` (see the crate documentation).
    pub limit: u64,
    /// Requests that would still be admitted right now.
    pub remaining: u64,
    /// Until the quota is fully restored, if no request comes.
    pub reset_after: Duration,
    /// When refused: until the next request would be admitted (for `FailClosed`: until
    /// Redis is tried again). Zero when allowed.
    pub retry_after: Duration,
    pub source: Source,
}

impl Decision {
    fn from_outcome(outcome: Outcome, rates: &Rates, source: Source) -> Decision {
        Decision {
            allowed: outcome.allowed,
            unavailable: false,
            limit: rates.quota,
            remaining: outcome.remaining,
            reset_after: outcome.reset_after,
            retry_after: outcome.retry_after,
            source,
        }
    }

    /// Response header fields for this decision under `limit`:
    ///
    /// - `RateLimit-Policy` with the limit's items and `RateLimit: "{item}";r={remaining};t={reset}`
    ///   as in the IETF httpapi ratelimit-headers draft (structured fields; item names are
    ///   sf-strings), by the rule in [`published`];
    /// - the older `RateLimit-Limit` (the reported item's quota), `RateLimit-Remaining` and
    ///   `RateLimit-Reset`;
    /// - `Retry-After` when refused.
    ///
    /// Durations are whole seconds rounded up; `Retry-After` is at least 1.
    pub fn headers(&self, limit: &Limit) -> Vec<(&'static str, String)> {
        let mut headers = Vec::with_capacity(6);
        self.write_headers(limit, |field, value| headers.push((field.name(), value.to_string())));
        headers
    }

    /// The same fields as [`Decision::headers`], handed to `emit` one at a time from one
    /// reused buffer: what a proxy adding them to every response calls.
    pub fn write_headers(&self, limit: &Limit, mut emit: impl FnMut(Field, &str)) {
        let mut numbers = itoa::Buffer::new();
        let reset = ceil_secs(self.reset_after);
        let (items, count) = published::items(limit);
        let items = &items[..count];
        let mut value = String::with_capacity(64 + 2 * limit.policy.len());
        // `"{policy}[-burst]";{a}={x};{b}={y}`, the shape of the items of both fields.
        let mut item = |value: &mut String, burst: bool, (a, x): (&str, u64), (b, y): (&str, u64)| {
            if !value.is_empty() {
                value.push_str(", ");
            }
            write_sf_string(value, &limit.policy, if burst { published::BURST_SUFFIX } else { "" });
            for (key, number) in [(a, x), (b, y)] {
                value.push(';');
                value.push_str(key);
                value.push('=');
                value.push_str(numbers.format(number));
            }
        };
        for i in items {
            item(&mut value, i.burst, ("q", i.quota), ("w", i.window_secs));
        }
        emit(Field::Policy, &value);
        let reported = items[count - 1];
        value.clear();
        item(&mut value, reported.burst, ("r", self.remaining), ("t", reset));
        emit(Field::RateLimit, &value);
        emit(Field::Limit, numbers.format(reported.quota));
        emit(Field::Remaining, numbers.format(self.remaining));
        emit(Field::Reset, numbers.format(reset));
        if !self.allowed {
            emit(Field::RetryAfter, numbers.format(ceil_secs(self.retry_after).max(1)));
        }
    }
}

/// The response header fields a [`Decision`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Policy,
    RateLimit,
    Limit,
    Remaining,
    Reset,
    RetryAfter,
}

impl Field {
    /// The field name, in the case the drafts and RFC 9110 write it.
    pub fn name(self) -> &'static str {
        match self {
            Field::Policy => "RateLimit-Policy",
            Field::RateLimit => "RateLimit",
            Field::Limit => "RateLimit-Limit",
            Field::Remaining => "RateLimit-Remaining",
            Field::Reset => "RateLimit-Reset",
            Field::RetryAfter => "Retry-After",
        }
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Appends `s` followed by `suffix` as one structured-field string: quoted, `"` and `\`
/// escaped; characters outside printable ASCII, which an sf-string cannot hold, become `?`.
fn write_sf_string(out: &mut String, s: &str, suffix: &str) {
    out.push('"');
    for c in s.chars().chain(suffix.chars()) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// Tuning of the Redis-backed limiter.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Bound on each Redis round trip, connecting included (default 100 ms), rounded up
    /// to 16 ms. A GCRA decision may first wait for its thread's batch ahead of it, so it
    /// waits at most about twice this for Redis.
    pub timeout: Duration,
    /// After a failed call, how long Redis is not tried (default 500 ms); decisions fall
    /// back to each policy's [`OnUnavailable`] meanwhile, at no latency cost.
    pub backoff: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions { timeout: Duration::from_millis(100), backoff: Duration::from_millis(500) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The reason is in the message, not a `source`, so that a printed chain says it once.
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(redis::RedisError),
    #[error("invalid Redis options: {0}")]
    InvalidOptions(&'static str),
    #[error("invalid rate limit: {0}")]
    InvalidLimit(String),
}

/// The limiter. Cheap to clone (clones share state); `Send + Sync`.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    /// Embedded mode, and the [`OnUnavailable::Local`] fallback.
    local: LocalStore,
    redis: Option<RedisStore>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter").field("redis_available", &self.redis_available()).finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter that keeps its counters in process memory.
    pub fn local() -> RateLimiter {
        RateLimiter { inner: Arc::new(Inner { local: LocalStore::new(), redis: None }) }
    }

    /// A limiter shared by every replica using the same Redis and `prefix` (`url` like
    /// `redis://127.0.0.1:6379/`; `prefix` starts every key).
    ///
    /// Redis need not be up: when called within a Tokio runtime this starts connecting in
    /// the background, otherwise the first check connects. Fails only on a malformed URL or
    /// a zero timeout.
    pub fn redis(url: &str, prefix: &str, options: RedisOptions) -> Result<RateLimiter, Error> {
        let store = RedisStore::new(url, prefix, options)?;
        let inner = Arc::new(Inner { local: LocalStore::new(), redis: Some(store) });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = Arc::clone(&inner);
            runtime.spawn(async move {
                if let Some(redis) = &inner.redis {
                    redis.warm_up().await;
                }
            });
        }
        Ok(RateLimiter { inner })
    }

    /// Decides one request for `key` under `limit`, counting it if admitted.
    ///
    /// With Redis this waits at most about twice [`RedisOptions::timeout`] (see there), and
    /// not at all during the backoff after a failure; it must then run within a Tokio
    /// runtime with timers enabled.
    pub async fn check(&self, key: &str, limit: &Limit) -> Decision {
        let rates = Rates::of(limit);
        let Some(redis) = &self.inner.redis else {
            return Decision::from_outcome(self.inner.local.check(key, limit.algorithm, &rates), &rates, Source::Local);
        };
        if let Some(outcome) = redis.check(key, limit.algorithm, &rates).await {
            return Decision::from_outcome(outcome, &rates, Source::Redis);
        }
        match limit.on_unavailable {
            OnUnavailable::Local => {
                Decision::from_outcome(self.inner.local.check(key, limit.algorithm, &rates), &rates, Source::Local)
            }
            OnUnavailable::FailOpen => Decision {
                allowed: true,
                unavailable: false,
                limit: rates.quota,
                remaining: rates.quota,
                reset_after: Duration::ZERO,
                retry_after: Duration::ZERO,
                source: Source::FailOpen,
            },
            OnUnavailable::FailClosed => {
                let backoff = redis.backoff_left();
                Decision {
                    allowed: false,
                    unavailable: true,
                    limit: rates.quota,
                    remaining: 0,
                    reset_after: backoff,
                    retry_after: backoff,
                    source: Source::FailClosed,
                }
            }
        }
    }

    /// Calls to Redis made for decisions (one may carry several); `None` in local mode.
    pub fn redis_round_trips(&self) -> Option<u64> {
        self.inner.redis.as_ref().map(RedisStore::round_trips)
    }

    /// `None` in local mode; otherwise whether the last call to Redis succeeded (false
    /// before the first one).
    pub fn redis_available(&self) -> Option<bool> {
        self.inner.redis.as_ref().map(RedisStore::available)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: u64, secs: u64, burst: u64) -> Limit {
        Limit {
            policy: "standard".into(),
            algorithm: Algorithm::Gcra,
            rate,
            period: Duration::from_secs(secs),
            burst,
            on_unavailable: OnUnavailable::Local,
        }
    }

    #[test]
    fn limiter_is_send_sync_and_clone() {
        fn assert_shareable<T: Send + Sync + Clone + 'static>() {}
        assert_shareable::<RateLimiter>();
    }

    /// A decision's future is built (and moved) for every limited request: state only a
    /// batch's leader needs, or a read buffer, must not be carried in it (it once was 5.7 KB).
    #[test]
    fn a_decision_future_stays_small() {
        let limiter = RateLimiter::local();
        let limit = limit(10, 1, 0);
        let decision = limiter.check("key", &limit);
        let size = std::mem::size_of_val(&decision);
        assert!(size <= 1024, "a rate-limit decision's future takes {size} bytes");
    }

    #[test]
    fn validate_rejects_what_would_be_clamped() {
        assert!(limit(600, 60, 50).validate().is_ok());
        assert!(limit(0, 60, 0).validate().is_err());
        let mut short = limit(1, 1, 0);
        short.period = Duration::from_millis(999);
        assert!(short.validate().is_err());
        assert!(limit(1, 60, u64::MAX).validate().is_err());
        // 2^30 intervals of a day each: beyond 2^48 µs of tolerance.
        assert!(limit(1, 86_400, 1 << 30).validate().is_err());
        assert_eq!(limit(600, 60, 50).quota(), 650);
    }

    #[test]
    fn policy_names_are_structured_field_strings() {
        let sf_string = |s: &str| {
            let mut out = String::new();
            write_sf_string(&mut out, s, "");
            out
        };
        assert_eq!(sf_string("standard-tenant"), "\"standard-tenant\"");
        assert_eq!(sf_string("a\"b\\c"), "\"a\\\"b\\\\c\"");
        assert_eq!(sf_string("é\n"), "\"??\"");
    }

    #[test]
    fn durations_round_up_to_seconds() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::from_millis(3001)), 4);
    }
}
