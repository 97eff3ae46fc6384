//! Rate limiting against a real Redis: the shared one at 127.0.0.1:6379 (every test under
//! its own key prefix, deleted at the end) and, for the outage, a private redis-server.

use conformance::support::{PrivateRedis, RedisPrefix, free_port};
use pake_ratelimit::{Algorithm, Decision, Limit, OnUnavailable, RateLimiter, RedisOptions, Source};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tracing_subscriber::layer::SubscriberExt;

const KEY: &str = "tenant:acme:route:search";

fn limit(algorithm: Algorithm, rate: u64, period: Duration, burst: u64, on_unavailable: OnUnavailable) -> Limit {
    Limit { policy: "standard".into(), algorithm, rate, period, burst, on_unavailable }
}

fn shared_limiter(prefix: &RedisPrefix, options: RedisOptions) -> RateLimiter {
    RateLimiter::redis(&prefix.url, &prefix.prefix, options).expect("limiter")
}

/// Redis server time in ms.
async fn redis_now_ms() -> u64 {
    let client = redis::Client::open(conformance::support::redis_url()).expect("client");
    let mut connection = client.get_multiplexed_async_connection().await.expect("redis");
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut connection).await.expect("TIME");
    secs * 1000 + micros / 1000
}

/// Sliding windows are aligned on Redis time; waits if less than `margin` of the current
/// one is left, so that a test's burst does not straddle two windows.
async fn wait_for_room_in_window(period: Duration, margin: Duration) {
    let (period, margin) = (period.as_millis() as u64, margin.as_millis() as u64);
    let left = period - redis_now_ms().await % period;
    if left < margin {
        tokio::time::sleep(Duration::from_millis(left + 5)).await;
    }
}

async fn checks(limiter: &RateLimiter, key: &str, limit: &Limit, n: usize) -> Vec<Decision> {
    let mut decisions = Vec::with_capacity(n);
    for _ in 0..n {
        decisions.push(limiter.check(key, limit).await);
    }
    decisions
}

fn allowed(decisions: &[Decision]) -> Vec<bool> {
    decisions.iter().map(|d| d.allowed).collect()
}

/// rate 10 per second, burst 4: five at once, the sixth refused for about T = 100 ms;
/// then one more per T.
async fn gcra_burst_then_steady(limiter: &RateLimiter, source: Source) {
    let limit = limit(Algorithm::Gcra, 10, Duration::from_secs(1), 4, OnUnavailable::FailClosed);
    let burst = checks(limiter, KEY, &limit, 6).await;
    assert!(burst.iter().all(|d| d.source == source && d.limit == 14), "{burst:?}");
    assert_eq!(allowed(&burst), [true, true, true, true, true, false]);
    assert_eq!(burst.iter().map(|d| d.remaining).collect::<Vec<_>>(), [4, 3, 2, 1, 0, 0]);
    let retry = burst[5].retry_after;
    assert!(retry > Duration::from_millis(50) && retry <= Duration::from_millis(100), "retry_after {retry:?}");
    assert!(burst[4].retry_after.is_zero());

    tokio::time::sleep(retry).await;
    let steady = checks(limiter, KEY, &limit, 2).await;
    assert_eq!(allowed(&steady), [true, false], "{steady:?}");
    let retry = steady[1].retry_after;
    assert!(retry > Duration::from_millis(50) && retry <= Duration::from_millis(100), "retry_after {retry:?}");
}

#[tokio::test]
async fn gcra_redis_admits_burst_then_one_per_interval() {
    let prefix = RedisPrefix::new("pake-ratelimit-test");
    let limiter = shared_limiter(&prefix, RedisOptions::default());
    gcra_burst_then_steady(&limiter, Source::Redis).await;
    assert_eq!(limiter.redis_available(), Some(true));
}

/// Decisions a thread needs at once share round trips, and each is still exact: 200
/// concurrent requests over four keys (burst 9: ten each at once) admit exactly ten per
/// key, with every `remaining` from 9 down to 0 given once per key.
#[tokio::test]
async fn gcra_decisions_gathered_in_one_turn_share_round_trips_and_stay_exact() {
    let prefix = RedisPrefix::new("pake-ratelimit-test");
    let limiter = shared_limiter(&prefix, RedisOptions::default());
    let limit = limit(Algorithm::Gcra, 1, Duration::from_secs(60), 9, OnUnavailable::FailClosed);
    // Connected first, so that the burst below is not spread over connecting.
    assert!(limiter.check("warm-up", &limit).await.allowed);
    let before = limiter.redis_round_trips().expect("a Redis limiter");

    let keys: Vec<String> = (0..200).map(|i| format!("{KEY}:{}", i % 4)).collect();
    let decisions =
        futures::future::join_all(keys.iter().map(|key| async { (key.clone(), limiter.check(key, &limit).await) }))
            .await;
    let trips = limiter.redis_round_trips().expect("a Redis limiter") - before;
    assert!(trips < 20, "200 decisions made at once took {trips} round trips");
    for key in 0..4 {
        let key = format!("{KEY}:{key}");
        let mut admitted: Vec<u64> =
            decisions.iter().filter(|(k, d)| *k == key && d.allowed).map(|(_, d)| d.remaining).collect();
        admitted.sort_unstable();
        assert_eq!(admitted, (0..10).collect::<Vec<u64>>(), "{key}");
        let refused = decisions.iter().filter(|(k, d)| *k == key && !d.allowed).count();
        assert_eq!(refused, 40, "{key}");
    }
    assert!(decisions.iter().all(|(_, d)| d.source == Source::Redis));
}

#[tokio::test]
async fn gcra_local_admits_burst_then_one_per_interval() {
    let limiter = RateLimiter::local();
    gcra_burst_then_steady(&limiter, Source::Local).await;
    assert_eq!(limiter.redis_available(), None);
}

/// rate 5 per second, burst 2: seven within the window, then refused until the window
/// has slid far enough; just after the boundary the previous seven still weigh almost 7,
/// so exactly one more fits.
async fn sliding_window_quota_then_slide(limiter: &RateLimiter, source: Source) {
    let limit = limit(Algorithm::SlidingWindow, 5, Duration::from_secs(1), 2, OnUnavailable::FailClosed);
    let window = checks(limiter, KEY, &limit, 8).await;
    assert!(window.iter().all(|d| d.source == source && d.limit == 7), "{window:?}");
    assert_eq!(allowed(&window), [true, true, true, true, true, true, true, false]);
    assert_eq!(window.iter().map(|d| d.remaining).collect::<Vec<_>>(), [6, 5, 4, 3, 2, 1, 0, 0]);
    let retry = window[7].retry_after;
    assert!(retry > Duration::from_millis(200) && retry <= Duration::from_millis(1001), "retry_after {retry:?}");

    tokio::time::sleep(retry).await;
    let slid = checks(limiter, KEY, &limit, 2).await;
    assert_eq!(allowed(&slid), [true, false], "{slid:?}");
    assert!(slid[1].retry_after > Duration::ZERO && slid[1].retry_after < Duration::from_secs(1));
}

#[tokio::test]
async fn sliding_window_redis_admits_quota_then_refuses_until_window_slides() {
    let prefix = RedisPrefix::new("pake-ratelimit-test");
    let limiter = shared_limiter(&prefix, RedisOptions::default());
    wait_for_room_in_window(Duration::from_secs(1), Duration::from_millis(300)).await;
    sliding_window_quota_then_slide(&limiter, Source::Redis).await;
}

#[tokio::test]
async fn sliding_window_local_admits_quota_then_refuses_until_window_slides() {
    sliding_window_quota_then_slide(&RateLimiter::local(), Source::Local).await;
}

/// Two replicas (two limiters on one Redis and prefix) hammered from 100 concurrent tasks
/// admit exactly the quota, each admission seeing a distinct count.
async fn replicas_share_limit(limit: Limit) {
    let prefix = RedisPrefix::new("pake-ratelimit-test");
    // A generous timeout: this run may share two cores with other builds, and a timed-out
    // call would fall back (here: FailClosed) instead of showing the shared count.
    let options = RedisOptions { timeout: Duration::from_secs(1), ..RedisOptions::default() };
    let replicas = [shared_limiter(&prefix, options.clone()), shared_limiter(&prefix, options)];
    let limit = Arc::new(limit);
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (replica, limit) = (replicas[i % 2].clone(), Arc::clone(&limit));
            tokio::spawn(async move { replica.check(KEY, &limit).await })
        })
        .collect();
    let mut decisions = Vec::new();
    for task in tasks {
        decisions.push(task.await.expect("task"));
    }
    assert!(decisions.iter().all(|d| d.source == Source::Redis), "every decision from Redis");
    let mut remaining: Vec<u64> = decisions.iter().filter(|d| d.allowed).map(|d| d.remaining).collect();
    remaining.sort_unstable();
    assert_eq!(remaining, (0..20).collect::<Vec<_>>(), "exactly 20 admitted, one at a time");
    assert_eq!(prefix.keys().len(), 1, "one key shared by both replicas");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gcra_limit_is_global_across_replicas() {
    let period = Duration::from_secs(60);
    replicas_share_limit(limit(Algorithm::Gcra, 20, period, 19, OnUnavailable::FailClosed)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sliding_window_limit_is_global_across_replicas() {
    let period = Duration::from_secs(60);
    wait_for_room_in_window(period, Duration::from_secs(3)).await;
    replicas_share_limit(limit(Algorithm::SlidingWindow, 20, period, 0, OnUnavailable::FailClosed)).await;
}

#[tokio::test]
async fn algorithms_keep_separate_expiring_keys() {
    let prefix = RedisPrefix::new("pake-ratelimit-test");
    let limiter = shared_limiter(&prefix, RedisOptions::default());
    let mut limit = limit(Algorithm::Gcra, 10, Duration::from_secs(1), 0, OnUnavailable::FailClosed);
    assert!(limiter.check(KEY, &limit).await.allowed);
    // The policy switches algorithm: fresh counters, no type confusion in Redis.
    limit.algorithm = Algorithm::SlidingWindow;
    let decision = limiter.check(KEY, &limit).await;
    assert!(decision.allowed && decision.source == Source::Redis && decision.remaining == 9, "{decision:?}");

    let mut connection =
        redis::Client::open(conformance::support::redis_url()).and_then(|c| c.get_connection()).expect("redis");
    let mut pttl = |key: String| -> i64 { redis::cmd("PTTL").arg(key).query(&mut connection).expect("PTTL") };
    let gcra = pttl(format!("{}rl:gcra:{KEY}", prefix.prefix));
    let sliding = pttl(format!("{}rl:sw:{KEY}", prefix.prefix));
    assert!(gcra > 0 && gcra <= 100, "GCRA key expires with its TAT, {gcra} ms");
    assert!(sliding > 1000 && sliding <= 2000, "sliding-window key expires after 2 periods, {sliding} ms");
}

/// Warnings and infos logged by this crate, with the limiter's key prefix.
///
/// One global subscriber for the whole test binary: a per-thread one can miss events
/// when tests on other threads race it for tracing's per-callsite cache.
#[derive(Clone, Default)]
struct Logged(Arc<Mutex<Vec<(tracing::Level, String)>>>);

impl Logged {
    fn global() -> &'static Logged {
        static LOGGED: OnceLock<Logged> = OnceLock::new();
        LOGGED.get_or_init(|| {
            let logged = Logged::default();
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(logged.clone()))
                .expect("no other global subscriber");
            logged
        })
    }

    fn count(&self, level: tracing::Level, prefix: &str) -> usize {
        self.0.lock().expect("log").iter().filter(|(l, p)| *l == level && p == prefix).count()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Prefix(String);
        impl tracing::field::Visit for Prefix {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "prefix" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let metadata = event.metadata();
        if metadata.target().starts_with("pake_ratelimit") && *metadata.level() <= tracing::Level::INFO {
            let mut prefix = Prefix(String::new());
            event.record(&mut prefix);
            self.0.lock().expect("log").push((*metadata.level(), prefix.0));
        }
    }
}

/// Times one check: an outage must not make requests wait.
async fn prompt_check(limiter: &RateLimiter, key: &str, limit: &Limit) -> Decision {
    let started = Instant::now();
    let decision = limiter.check(key, limit).await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(200), "check took {took:?}: {decision:?}");
    decision
}

#[tokio::test]
async fn redis_outage_follows_on_unavailable_and_recovers() {
    let logged = Logged::global();
    let mut server = PrivateRedis::start();
    let prefix = format!("outage-{}:", free_port());
    let limiter = RateLimiter::redis(&server.url(), &prefix, RedisOptions::default()).expect("limiter");
    let second = Duration::from_secs(1);
    let minute = Duration::from_secs(60);
    // Three at once per minute, counted in process memory while Redis is away.
    let local = limit(Algorithm::Gcra, 3, minute, 2, OnUnavailable::Local);
    let open = limit(Algorithm::SlidingWindow, 1, minute, 0, OnUnavailable::FailOpen);
    let closed = limit(Algorithm::Gcra, 100, second, 0, OnUnavailable::FailClosed);

    for (key, limit) in [("local", &local), ("open", &open), ("closed", &closed)] {
        let decision = prompt_check(&limiter, key, limit).await;
        assert!(decision.allowed && decision.source == Source::Redis, "{decision:?}");
    }
    assert_eq!(limiter.redis_available(), Some(true));

    server.kill();
    let outage = async |limiter: &RateLimiter| {
        let decisions = [
            prompt_check(limiter, "local", &local).await,
            prompt_check(limiter, "local", &local).await,
            prompt_check(limiter, "local", &local).await,
            prompt_check(limiter, "local", &local).await,
        ];
        for decision in &decisions {
            assert!(decision.source == Source::Local && !decision.unavailable, "{decision:?}");
        }
        for _ in 0..3 {
            let decision = prompt_check(limiter, "open", &open).await;
            assert!(decision.allowed && decision.source == Source::FailOpen, "{decision:?}");
        }
        let decision = prompt_check(limiter, "closed", &closed).await;
        assert!(!decision.allowed && decision.unavailable && decision.source == Source::FailClosed, "{decision:?}");
        assert!(decision.headers(&closed).iter().any(|(name, value)| *name == "Retry-After" && value == "1"));
        assert_eq!(limiter.redis_available(), Some(false));
        allowed(&decisions)
    };
    // The local fallback starts counting afresh: three more, then refused.
    assert_eq!(outage(&limiter).await, [true, true, true, false]);
    // After the backoff a probe finds Redis still gone: as prompt, still enforced.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(outage(&limiter).await, [false, false, false, false]);

    server.restart();
    let restarted = Instant::now();
    loop {
        let decision = prompt_check(&limiter, "local", &local).await;
        if decision.source == Source::Redis {
            // The restarted Redis is empty: a fresh count.
            assert!(decision.allowed && decision.remaining == 2, "{decision:?}");
            break;
        }
        assert!(restarted.elapsed() < Duration::from_secs(2), "no recovery: {decision:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(limiter.redis_available(), Some(true));
    for (key, limit) in [("open", &open), ("closed", &closed)] {
        assert_eq!(prompt_check(&limiter, key, limit).await.source, Source::Redis);
    }
    assert_eq!(logged.count(tracing::Level::WARN, &prefix), 1, "outage logged once");
    assert_eq!(logged.count(tracing::Level::INFO, &prefix), 1, "recovery logged once");
}

#[tokio::test]
async fn unresponsive_redis_costs_at_most_the_timeout() {
    let mut server = PrivateRedis::start();
    let options = RedisOptions { timeout: Duration::from_millis(100), backoff: Duration::from_millis(300) };
    let limiter = RateLimiter::redis(&server.url(), "hung:", options).expect("limiter");
    let limit = limit(Algorithm::SlidingWindow, 1000, Duration::from_secs(1), 0, OnUnavailable::FailOpen);
    assert_eq!(prompt_check(&limiter, KEY, &limit).await.source, Source::Redis);

    server.signal("-STOP");
    // The first check waits for the timeout; then the backoff spares the others; after it
    // one probe (a connection the kernel accepts, a script load nobody answers) times out.
    let started = Instant::now();
    let mut waited = Vec::new();
    while started.elapsed() < Duration::from_millis(800) {
        let before = Instant::now();
        let decision = prompt_check(&limiter, KEY, &limit).await;
        assert!(decision.allowed && decision.source == Source::FailOpen, "{decision:?}");
        if before.elapsed() >= Duration::from_millis(50) {
            waited.push(before.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!((2..=3).contains(&waited.len()), "one bounded wait per backoff, got {waited:?}");

    server.signal("-CONT");
    let resumed = Instant::now();
    while prompt_check(&limiter, KEY, &limit).await.source != Source::Redis {
        assert!(resumed.elapsed() < Duration::from_secs(2), "no recovery");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill();
}

#[tokio::test]
async fn limiter_starts_and_answers_without_redis() {
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let limiter = RateLimiter::redis(&url, "nothing-listens:", RedisOptions::default()).expect("no connection needed");
    let limit = limit(Algorithm::Gcra, 10, Duration::from_secs(1), 1, OnUnavailable::Local);
    let decisions = [
        prompt_check(&limiter, KEY, &limit).await,
        prompt_check(&limiter, KEY, &limit).await,
        prompt_check(&limiter, KEY, &limit).await,
    ];
    assert!(decisions.iter().all(|d| d.source == Source::Local));
    assert_eq!(allowed(&decisions), [true, true, false]);
    assert_eq!(limiter.redis_available(), Some(false));
    assert!(RateLimiter::redis("not a url", "x:", RedisOptions::default()).is_err());
}

#[test]
fn headers_for_allowed_and_refused_decisions() {
    let standard = limit(Algorithm::Gcra, 550, Duration::from_secs(60), 50, OnUnavailable::Local);
    let allowed = Decision {
        allowed: true,
        unavailable: false,
        limit: 600,
        remaining: 12,
        reset_after: Duration::from_millis(2200),
        retry_after: Duration::ZERO,
        source: Source::Redis,
    };
    assert_eq!(
        allowed.headers(&standard),
        [
            ("RateLimit-Policy", "\"standard\";q=550;w=60, \"standard-burst\";q=51;w=6".to_string()),
            ("RateLimit", "\"standard-burst\";r=12;t=3".to_string()),
            ("RateLimit-Limit", "51".to_string()),
            ("RateLimit-Remaining", "12".to_string()),
            ("RateLimit-Reset", "3".to_string()),
        ]
    );
    let refused = Decision {
        allowed: false,
        remaining: 0,
        reset_after: Duration::from_millis(54_001),
        retry_after: Duration::from_millis(100),
        ..allowed
    };
    assert_eq!(
        refused.headers(&standard),
        [
            ("RateLimit-Policy", "\"standard\";q=550;w=60, \"standard-burst\";q=51;w=6".to_string()),
            ("RateLimit", "\"standard-burst\";r=0;t=55".to_string()),
            ("RateLimit-Limit", "51".to_string()),
            ("RateLimit-Remaining", "0".to_string()),
            ("RateLimit-Reset", "55".to_string()),
            ("Retry-After", "1".to_string()),
        ]
    );
}

#[tokio::test]
async fn headers_of_real_decisions() {
    let limiter = RateLimiter::local();
    let limit =
        Limit { policy: "search".into(), ..limit(Algorithm::Gcra, 2, Duration::from_secs(4), 1, OnUnavailable::Local) };
    let [first, second, third] =
        [limiter.check(KEY, &limit).await, limiter.check(KEY, &limit).await, limiter.check(KEY, &limit).await];
    let pairs = |d: &Decision| d.headers(&limit).into_iter().map(|(n, v)| format!("{n}: {v}")).collect::<Vec<_>>();
    // T = 2 s: the first leaves the TAT 2 s ahead, the second 4 s; the third waits 2 s.
    assert_eq!(
        pairs(&first),
        [
            "RateLimit-Policy: \"search\";q=2;w=4",
            "RateLimit: \"search\";r=1;t=2",
            "RateLimit-Limit: 2",
            "RateLimit-Remaining: 1",
            "RateLimit-Reset: 2"
        ]
    );
    assert!(second.allowed && second.remaining == 0);
    assert_eq!(
        pairs(&third),
        [
            "RateLimit-Policy: \"search\";q=2;w=4",
            "RateLimit: \"search\";r=0;t=4",
            "RateLimit-Limit: 2",
            "RateLimit-Remaining: 0",
            "RateLimit-Reset: 4",
            "Retry-After: 2",
        ]
    );
}

/// A Redis that lost its scripts (SCRIPT FLUSH, a restart with an empty cache) gets them
/// again on the next decision, which is still Redis's: nothing falls back.
#[tokio::test]
async fn a_flushed_script_cache_is_refilled_without_falling_back() {
    let server = PrivateRedis::start();
    let limiter = RateLimiter::redis(&server.url(), "flush:", RedisOptions::default()).expect("limiter");
    let limit = limit(Algorithm::Gcra, 10, Duration::from_secs(1), 4, OnUnavailable::FailClosed);
    assert_eq!(limiter.check(KEY, &limit).await.source, Source::Redis);
    let client = redis::Client::open(server.url()).expect("client");
    let mut connection = client.get_multiplexed_async_connection().await.expect("redis");
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut connection).await.expect("SCRIPT FLUSH");
    let after = checks(&limiter, KEY, &limit, 5).await;
    assert!(after.iter().all(|d| d.source == Source::Redis), "{after:?}");
    assert_eq!(allowed(&after), [true, true, true, true, false], "the count survived the flush");
}
