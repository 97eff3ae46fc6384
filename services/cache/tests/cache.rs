//! Integration tests against a real Redis: the shared one at 127.0.0.1:6379 (every test uses
//! its own key prefix and deletes its keys at the end) and, for the outage test, a private
//! `redis-server` child on a free port.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use conformance::support::{PrivateRedis, RedisPrefix, free_port};
use pake_cache::{
    CacheConfig, CacheKey, CachedResponse, Error, Flight, Level, Lookup, RedisConfig, ResponseCache, now_ms,
};

/// How long another replica may take to apply an invalidation (pub/sub delivery).
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

/// A test's own key prefix (its keys are deleted when dropped, also when the test panics),
/// and the cache configuration that uses it.
struct Namespace(RedisPrefix);

impl Namespace {
    fn new(url: &str) -> Self {
        Self(RedisPrefix::on(url, "test:pake-cache"))
    }

    fn config(&self, replica: &str) -> CacheConfig {
        CacheConfig {
            redis: Some(RedisConfig { prefix: self.0.prefix.clone(), ..RedisConfig::new(&self.0.url) }),
            replica_id: replica.to_owned(),
            ..CacheConfig::default()
        }
    }
}

fn key(path: &str) -> CacheKey {
    CacheKey::new("GET", path, "-", [])
}

fn response(tags: &[&str], ttl_ms: i64) -> CachedResponse {
    let now = now_ms();
    CachedResponse {
        status: 200,
        headers: vec![("content-type".into(), Bytes::from_static(b"application/json"))],
        body: Bytes::from(format!("{{\"at\":{now}}}")),
        tags: tags.iter().map(|tag| tag.to_string()).collect(),
        route: "route-1".into(),
        stored_at_ms: now,
        expires_at_ms: now + ttl_ms,
    }
}

fn level(lookup: &Lookup) -> Option<Level> {
    match lookup {
        Lookup::Hit { level, .. } => Some(*level),
        Lookup::Miss => None,
    }
}

/// Polls `check` every 10 ms until it holds or `bound` elapses; returns whether it held.
async fn eventually<F, Fut>(bound: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn two_replicas(namespace: &Namespace) -> (Arc<ResponseCache>, Arc<ResponseCache>) {
    let a = ResponseCache::start(namespace.config("replica-a")).await.expect("start a");
    let b = ResponseCache::start(namespace.config("replica-b")).await.expect("start b");
    assert_eq!(a.l2_available(), Some(true));
    assert_eq!(b.propagation_active(), Some(true));
    (a, b)
}

#[tokio::test]
async fn l1_hit_then_other_replica_hits_l2_then_its_own_l1() {
    let namespace = Namespace::new(&conformance::support::redis_url());
    let (a, b) = two_replicas(&namespace).await;
    let k = key("/v1/items?page=1");
    let stored = response(&["items"], 60_000);

    assert!(matches!(a.get(&k).await, Lookup::Miss));
    a.put(&k, stored.clone()).await;
    let Lookup::Hit { entry, level } = a.get(&k).await else { panic!("a: miss after put") };
    assert_eq!((level, &*entry), (Level::L1, &stored));

    let Lookup::Hit { entry, level } = b.get(&k).await else { panic!("b: miss") };
    assert_eq!(level, Level::L2, "b reads what a stored from Redis");
    assert_eq!(*entry, stored, "the entry survives the round trip through Redis unchanged");
    assert_eq!(level_of(&b, &k).await, Some(Level::L1), "the L2 hit was copied into b's L1");

    // Other methods, tenants and vary values are other entries.
    assert!(matches!(b.get(&CacheKey::new("HEAD", "/v1/items?page=1", "-", [])).await, Lookup::Miss));
    assert!(matches!(b.get(&CacheKey::new("GET", "/v1/items?page=1", "t1", [])).await, Lookup::Miss));
}

async fn level_of(cache: &ResponseCache, k: &CacheKey) -> Option<Level> {
    level(&cache.get(k).await)
}

#[tokio::test]
async fn entries_expire_in_both_levels_and_l2_copies_keep_the_remaining_ttl() {
    let namespace = Namespace::new(&conformance::support::redis_url());
    let (a, b) = two_replicas(&namespace).await;
    let k = key("/v1/short");
    let stored = response(&[], 400);
    a.put(&k, stored.clone()).await;

    assert_eq!(level_of(&a, &k).await, Some(Level::L1));
    assert_eq!(level_of(&b, &k).await, Some(Level::L2));
    assert_eq!(level_of(&b, &k).await, Some(Level::L1));

    let until_expiry = u64::try_from(stored.expires_at_ms - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(until_expiry + 50)).await;
    assert!(matches!(a.get(&k).await, Lookup::Miss), "gone from a's L1 and from L2");
    // b's copy was made with the remaining TTL, not a fresh one.
    assert!(matches!(b.get(&k).await, Lookup::Miss), "gone from b's L1 copy");
    let fresh = ResponseCache::start(namespace.config("replica-c")).await.expect("start c");
    assert!(matches!(fresh.get(&k).await, Lookup::Miss), "gone from L2");
}

/// Stores entries through replica a, copies them into b's L1, runs an invalidation on a and
/// checks: removed entries are gone from L2 and a's L1 at once and from b's L1 within
/// [`PROPAGATION_BOUND`], kept entries are still in both L1s.
async fn check_invalidation(keys: &[&str], prefixes: &[&str], tags: &[&str], removed: &[&str], kept: &[&str]) {
    let namespace = Namespace::new(&conformance::support::redis_url());
    let (a, b) = two_replicas(&namespace).await;
    let entries: HashMap<&str, &[&str]> = [
        ("/v1/papers/1?v=2", &["paper:1", "papers"][..]),
        ("/v1/papers/1", &["paper:1", "papers"][..]),
        ("/v1/papers/2", &["paper:2", "papers"][..]),
        ("/v1/papers*", &[][..]),
        ("/v1/people/1", &["people"][..]),
    ]
    .into_iter()
    .collect();
    for (path, entry_tags) in &entries {
        a.put(&key(path), response(entry_tags, 60_000)).await;
        // Also a HEAD variant: invalidation by key covers every method.
        a.put(&CacheKey::new("HEAD", *path, "-", []), response(entry_tags, 60_000)).await;
        assert_eq!(level_of(&b, &key(path)).await, Some(Level::L2));
        assert_eq!(level_of(&b, &key(path)).await, Some(Level::L1));
    }

    let to_strings = |items: &[&str]| items.iter().map(|item| item.to_string()).collect::<Vec<_>>();
    let outcome =
        a.invalidate(&to_strings(keys), &to_strings(prefixes), &to_strings(tags)).await.expect("invalidation");
    assert_eq!(outcome.invalidated, 2 * removed.len() as u64, "GET and HEAD entry of each removed path");
    assert_eq!(outcome.propagated_to, 1, "b is the only other replica");

    let observer = ResponseCache::start(namespace.config("observer")).await.expect("start observer");
    for path in removed {
        assert!(matches!(a.get(&key(path)).await, Lookup::Miss), "{path}: still in a or L2");
        assert!(matches!(a.get(&CacheKey::new("HEAD", *path, "-", [])).await, Lookup::Miss));
        assert!(matches!(observer.get(&key(path)).await, Lookup::Miss), "{path}: still in L2");
        // L2 no longer has it, so a hit on b could only come from b's L1.
        let dropped = eventually(PROPAGATION_BOUND, || async { matches!(b.get(&key(path)).await, Lookup::Miss) }).await;
        assert!(dropped, "{path}: b's L1 kept it");
    }
    for path in kept {
        assert_eq!(level_of(&a, &key(path)).await, Some(Level::L1), "{path}: a lost it");
        assert_eq!(level_of(&b, &key(path)).await, Some(Level::L1), "{path}: b lost it");
        assert_eq!(level_of(&observer, &key(path)).await, Some(Level::L2), "{path}: L2 lost it");
    }
}

#[tokio::test]
async fn invalidation_by_key_removes_every_variant_of_that_path_only() {
    check_invalidation(
        &["/v1/papers/1"],
        &[],
        &[],
        &["/v1/papers/1"],
        &["/v1/papers/1?v=2", "/v1/papers/2", "/v1/papers*", "/v1/people/1"],
    )
    .await;
}

#[tokio::test]
async fn invalidation_by_prefix_removes_paths_under_it_and_treats_glob_characters_literally() {
    check_invalidation(
        &[],
        &["/v1/papers/"],
        &[],
        &["/v1/papers/1?v=2", "/v1/papers/1", "/v1/papers/2"],
        &["/v1/papers*", "/v1/people/1"],
    )
    .await;
    check_invalidation(
        &[],
        &["/v1/papers*"],
        &[],
        &["/v1/papers*"],
        &["/v1/papers/1?v=2", "/v1/papers/1", "/v1/papers/2", "/v1/people/1"],
    )
    .await;
}

#[tokio::test]
async fn invalidation_by_tag_removes_tagged_entries() {
    check_invalidation(
        &[],
        &[],
        &["paper:1", "people"],
        &["/v1/papers/1?v=2", "/v1/papers/1", "/v1/people/1"],
        &["/v1/papers/2", "/v1/papers*"],
    )
    .await;
}

#[tokio::test]
async fn invalidation_without_redis_sweeps_l1() {
    let cache = ResponseCache::start(CacheConfig::default()).await.expect("start");
    cache.put(&key("/a"), response(&["t"], 60_000)).await;
    cache.put(&key("/b"), response(&[], 60_000)).await;
    let outcome = cache.invalidate(&[], &[], &["t".to_string()]).await.expect("embedded invalidation");
    assert_eq!((outcome.invalidated, outcome.propagated_to), (1, 0));
    assert!(matches!(cache.get(&key("/a")).await, Lookup::Miss));
    assert_eq!(level_of(&cache, &key("/b")).await, Some(Level::L1));
    assert_eq!(cache.l2_available(), None);
    assert_eq!(cache.propagation_active(), None);
}

#[tokio::test]
async fn fifty_concurrent_joins_make_one_leader_whose_response_all_followers_share() {
    let cache = ResponseCache::start(CacheConfig::default()).await.expect("start");
    let k = key("/v1/slow");
    let shared = Arc::new(response(&[], 60_000));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (cache, k, shared) = (cache.clone(), k.clone(), shared.clone());
            tokio::spawn(async move {
                match cache.join(&k).await {
                    Flight::Leader(guard) => {
                        // Complete only once every follower waits, so none can arrive late and lead.
                        let all_waiting =
                            eventually(Duration::from_secs(5), || std::future::ready(guard.waiting() == 49)).await;
                        assert!(all_waiting, "followers waiting: {}", guard.waiting());
                        cache.put_shared(&k, shared.clone()).await;
                        guard.complete(Some(shared));
                        "leader"
                    }
                    Flight::Shared(entry) => {
                        assert!(Arc::ptr_eq(&entry, &shared), "followers get the leader's response itself");
                        "shared"
                    }
                    Flight::Alone => "alone",
                }
            })
        })
        .collect();
    let mut outcomes: HashMap<&str, usize> = HashMap::new();
    for task in tasks {
        *outcomes.entry(task.await.expect("task")).or_default() += 1;
    }
    assert_eq!(outcomes, HashMap::from([("leader", 1), ("shared", 49)]));
    assert_eq!(level_of(&cache, &k).await, Some(Level::L1));
}

#[tokio::test]
async fn followers_of_a_dropped_leader_go_alone_promptly() {
    let cache = ResponseCache::start(CacheConfig::default()).await.expect("start");
    let k = key("/v1/failing");
    let Flight::Leader(guard) = cache.join(&k).await else { panic!("first join must lead") };
    let followers: Vec<_> = (0..10)
        .map(|_| {
            let (cache, k) = (cache.clone(), k.clone());
            tokio::spawn(async move { matches!(cache.join(&k).await, Flight::Alone) })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || std::future::ready(guard.waiting() == 10)).await);
    let dropped_at = Instant::now();
    drop(guard); // e.g. the upstream call failed or the request was cancelled
    for follower in followers {
        assert!(follower.await.expect("task"), "a follower of a dropped leader goes alone");
    }
    // The default wait is 30 s: going alone this fast means the drop released them.
    assert!(dropped_at.elapsed() < Duration::from_millis(500), "took {:?}", dropped_at.elapsed());
    assert!(matches!(cache.join(&k).await, Flight::Leader(_)), "the key is free again");
}

#[tokio::test]
async fn oversized_and_expired_entries_are_not_stored() {
    let namespace = Namespace::new(&conformance::support::redis_url());
    let config = CacheConfig { max_entry_bytes: 4096, ..namespace.config("a") };
    let a = ResponseCache::start(config).await.expect("start");
    let b = ResponseCache::start(namespace.config("b")).await.expect("start");
    let mut big = response(&[], 60_000);
    big.body = Bytes::from(vec![b'x'; 5000]);
    a.put(&key("/big"), big).await;
    assert!(matches!(a.get(&key("/big")).await, Lookup::Miss));
    assert!(matches!(b.get(&key("/big")).await, Lookup::Miss), "not in L2 either");
    a.put(&key("/old"), response(&[], -1)).await;
    assert!(matches!(b.get(&key("/old")).await, Lookup::Miss));
    a.put(&key("/ok"), response(&[], 60_000)).await;
    assert_eq!(level_of(&b, &key("/ok")).await, Some(Level::L2));
}

#[tokio::test]
async fn stats_count_hits_misses_per_level_and_route_and_evictions_but_not_invalidations() {
    let namespace = Namespace::new(&conformance::support::redis_url());
    let (a, b) = two_replicas(&namespace).await;
    a.put(&key("/long"), response(&[], 60_000)).await;
    a.put(&key("/short"), response(&[], 500)).await;
    a.put(&key("/doomed"), response(&["doomed"], 60_000)).await;

    assert_eq!(level(&a.lookup("r1", &key("/long")).await), Some(Level::L1));
    assert_eq!(level(&a.lookup("r1", &key("/nothing")).await), None);
    assert_eq!(level(&a.lookup("r2", &key("/long")).await), Some(Level::L1));
    assert_eq!(level(&b.lookup("r1", &key("/long")).await), Some(Level::L2));

    let stats = a.stats().await;
    assert_eq!((stats.lookups, stats.hits, stats.misses), (3, 2, 1));
    assert!((stats.hit_rate() - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!((stats.l1.hits, stats.l1.misses, stats.l1.entries), (2, 1, 3));
    assert!((stats.l1.hit_rate() - 2.0 / 3.0).abs() < 1e-9);
    let l2 = stats.l2.clone().expect("l2 stats");
    assert_eq!((l2.hits, l2.misses, l2.entries), (0, 1, 3), "only the L1 miss reached L2");
    assert_eq!(l2.hit_rate(), 0.0);
    assert!(l2.bytes > 0);
    assert_eq!(
        stats.routes.iter().map(|r| (r.route.as_str(), r.hits, r.misses)).collect::<Vec<_>>(),
        [("r1", 1, 1), ("r2", 1, 0)]
    );
    assert_eq!(stats.replica_id, "replica-a");
    let b_stats = b.stats().await;
    let b_l2 = b_stats.l2.expect("l2 stats");
    assert_eq!((b_stats.l1.misses, b_l2.hits, b_l2.misses), (1, 1, 0));
    assert_eq!(b_l2.hit_rate(), 1.0);

    // Invalidation is not eviction; expiry is.
    a.invalidate(&[], &[], &["doomed".to_string()]).await.expect("invalidation");
    let settled = eventually(Duration::from_secs(3), || async {
        let stats = a.stats().await;
        let l2 = stats.l2.expect("l2 stats");
        (stats.l1.evictions, stats.l1.entries, l2.evictions, l2.entries) == (1, 1, 1, 1)
    })
    .await;
    let stats = a.stats().await;
    assert!(settled, "l1 {:?} l2 {:?}", stats.l1, stats.l2);
}

#[tokio::test]
async fn l1_evicts_for_size_and_counts_it() {
    let config = CacheConfig { l1_max_bytes: 20_000, max_entry_bytes: 8_000, ..CacheConfig::default() };
    let cache = ResponseCache::start(config).await.expect("start");
    for i in 0..20 {
        let mut entry = response(&[], 60_000);
        entry.body = Bytes::from(vec![b'x'; 3000]);
        cache.put(&key(&format!("/item/{i}")), entry).await;
    }
    let stats = cache.stats().await;
    assert!(stats.l1.bytes <= 20_000, "{:?}", stats.l1);
    assert!(stats.l1.entries < 20 && stats.l1.entries > 0, "{:?}", stats.l1);
    assert_eq!(stats.l1.evictions + stats.l1.entries, 20, "every entry is either stored or evicted for size");
    assert!(stats.l2.is_none());
}

#[tokio::test]
async fn starts_and_serves_from_l1_when_redis_is_unreachable() {
    let port = free_port();
    let namespace = Namespace::new(&format!("redis://127.0.0.1:{port}"));
    let started = Instant::now();
    let cache = ResponseCache::start(namespace.config("a")).await.expect("start without Redis");
    assert!(started.elapsed() < Duration::from_secs(3), "start took {:?}", started.elapsed());
    assert_eq!(cache.l2_available(), Some(false));
    assert_eq!(cache.propagation_active(), Some(false));
    cache.put(&key("/a"), response(&[], 60_000)).await;
    assert_eq!(level_of(&cache, &key("/a")).await, Some(Level::L1));
    let Err(Error::Unavailable { invalidated, l2_invalidated, .. }) =
        cache.invalidate(&["/a".to_string()], &[], &[]).await
    else {
        panic!("invalidation without Redis must report it");
    };
    assert_eq!((invalidated, l2_invalidated), (1, false));
    assert!(matches!(cache.get(&key("/a")).await, Lookup::Miss), "L1 was swept anyway");
}

/// Runs `op` and asserts it returned within 200 ms.
async fn promptly<T>(what: &str, op: impl Future<Output = T>) -> T {
    let started = Instant::now();
    let value = op.await;
    assert!(started.elapsed() < Duration::from_millis(200), "{what} took {:?}", started.elapsed());
    value
}

#[tokio::test]
async fn redis_outage_degrades_to_l1_without_latency_and_recovers_by_itself() {
    let port = free_port();
    let mut redis = PrivateRedis::start_on(port);
    let namespace = Namespace::new(&redis.url());
    let (a, b) = two_replicas(&namespace).await;
    a.put(&key("/before"), response(&[], 60_000)).await;
    assert_eq!(level_of(&b, &key("/before")).await, Some(Level::L2));

    redis.kill();
    // Over more than two backoff periods, so that probes of the dead Redis are included.
    let outage_started = Instant::now();
    let mut i = 0;
    while outage_started.elapsed() < Duration::from_millis(1200) {
        let before = promptly("get (L1)", a.get(&key("/before"))).await;
        assert_eq!(level(&before), Some(Level::L1));
        let k = key(&format!("/during/{i}"));
        promptly("put", a.put(&k, response(&[], 60_000))).await;
        assert_eq!(level(&promptly("get (L1)", a.get(&k)).await), Some(Level::L1));
        assert!(matches!(promptly("get (miss)", a.get(&key("/never"))).await, Lookup::Miss));
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(a.l2_available(), Some(false));
    assert!(eventually(Duration::from_secs(1), || std::future::ready(a.propagation_active() == Some(false))).await);

    let _redis = PrivateRedis::start_on(port);
    let recovered_at = Instant::now();
    let l2_back = eventually(Duration::from_secs(3), || async {
        a.put(&key("/after"), response(&[], 60_000)).await;
        level(&b.get(&key("/after")).await) == Some(Level::L2)
    })
    .await;
    assert!(l2_back, "L2 did not come back");
    assert_eq!((a.l2_available(), b.l2_available()), (Some(true), Some(true)));
    let resubscribed = eventually(Duration::from_secs(3), || {
        std::future::ready(a.propagation_active() == Some(true) && b.propagation_active() == Some(true))
    })
    .await;
    assert!(resubscribed, "pub/sub was not re-established");
    println!("recovered in {:?}", recovered_at.elapsed());

    // b resubscribed after its outage, and cleared its L1 then (invalidations may be lost).
    // Now cache /after in b's L1 and have a invalidate it: the message must reach b again.
    let _ = b.get(&key("/after")).await;
    assert_eq!(level_of(&b, &key("/after")).await, Some(Level::L1));
    let outcome = a.invalidate(&["/after".to_string()], &[], &[]).await.expect("invalidation after recovery");
    assert_eq!(outcome.propagated_to, 1);
    let dropped = eventually(PROPAGATION_BOUND, || async { matches!(b.get(&key("/after")).await, Lookup::Miss) }).await;
    assert!(dropped, "b's L1 kept an entry invalidated after the recovery");
}
