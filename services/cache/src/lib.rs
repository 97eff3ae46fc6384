//! The response cache of the PAKE API gateway, independent of any HTTP framework.
//!
//! - **L1**: in-process ([moka]), per replica, weighed by bytes, each entry expiring at its own
//!   `expires_at_ms`.
//! - **L2**: Redis, shared by all replicas, optional (embedded mode has none). An L2 hit is
//!   copied into L1 for the rest of its lifetime. Redis being down never fails a lookup or a
//!   store: the cache degrades to L1 and recovers by itself ([`ResponseCache::l2_available`]).
//! - **Invalidation** by exact path (with query; every method and variant), path prefix or
//!   tag: deletes from L2 and this replica's L1, then publishes on Redis so every other
//!   replica drops its L1 entries too.
//! - **Coalescing**: concurrent misses of one key wait for a single upstream fetch
//!   ([`ResponseCache::join`]).
//!
//! Typical use by the gateway:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use pake_cache::*;
//! # async fn fetch() -> Option<CachedResponse> { None }
//! # async fn demo(cache: Arc<ResponseCache>, key: CacheKey, route: &str) {
//! if let Lookup::Hit { entry, .. } = cache.lookup(route, &key).await {
//!     // serve `entry`
//! #   drop(entry);
//!     return;
//! }
//! match cache.join(&key).await {
//!     Flight::Shared(entry) => { /* serve `entry` */ }
//!     Flight::Leader(guard) => {
//!         let response = fetch().await.map(Arc::new); // None: not cacheable or failed
//!         if let Some(response) = &response {
//!             cache.put_shared(&key, response.clone()).await;
//!         }
//!         guard.complete(response);
//!     }
//!     Flight::Alone => { /* fetch without sharing */ }
//! }
//! # }
//! ```

mod entry;
mod flight;
mod key;
mod l1;
mod l2;
mod propagation;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub use entry::CachedResponse;
pub use flight::{Flight, FlightGuard};
pub use key::CacheKey;

use flight::Flights;
use l1::{L1, Selector};
use l2::L2;
use propagation::{Message, Subscriber};

/// Current wall-clock time, Unix milliseconds (the unit of `stored_at_ms`/`expires_at_ms`).
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The level that answered a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    L1,
    L2,
}

/// The result of a lookup.
#[derive(Clone, Debug)]
pub enum Lookup {
    Hit { entry: Arc<CachedResponse>, level: Level },
    Miss,
}

/// Cache settings.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Capacity of L1, in weighed bytes (body, headers, key, tags plus a small overhead).
    pub l1_max_bytes: u64,
    /// Entries weighing more are not stored at all (neither level).
    pub max_entry_bytes: usize,
    /// L2; `None` in embedded mode.
    pub redis: Option<RedisConfig>,
    /// This replica's name (the pod name), for stats and invalidation logs.
    pub replica_id: String,
    /// How long [`ResponseCache::join`] followers wait for the leader before going alone.
    pub flight_wait: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            l1_max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            redis: None,
            replica_id: "local".to_owned(),
            flight_wait: Duration::from_secs(30),
        }
    }
}

/// The Redis L2.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prepended to every key and to the channel, e.g. `pake:`.
    pub prefix: String,
    /// Bound of each call on the request path (`get`, `put`): a slow Redis costs at most this.
    pub timeout: Duration,
    /// Bound of each call of the admin operations (`invalidate`, `stats`), which do more work
    /// per call and are rare.
    pub admin_timeout: Duration,
}

impl RedisConfig {
    /// Defaults: prefix `pake:`, timeout 100 ms, admin timeout 1 s.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "pake:".to_owned(),
            timeout: Duration::from_millis(100),
            admin_timeout: Duration::from_secs(1),
        }
    }
}

/// Errors of the cache.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Redis URL cannot be parsed. (Redis being unreachable is not an error at start.)
    #[error("invalid Redis configuration: {0}")]
    Config(#[source] redis::RedisError),
    /// An invalidation could not reach Redis. This replica's L1 *was* swept (`invalidated`
    /// entries removed, counted as in [`Invalidation::invalidated`]); but L2 (unless
    /// `l2_invalidated`) and the other replicas may still hold matching entries, so the caller
    /// should report failure (503) and retry.
    #[error(
        "invalidation {id}: Redis unavailable ({invalidated} entries removed here; {})",
        if *l2_invalidated { "L2 invalidated but other replicas not notified" } else { "L2 and other replicas not invalidated" }
    )]
    Unavailable { id: Uuid, invalidated: u64, l2_invalidated: bool },
}

/// The outcome of an invalidation.
#[derive(Clone, Debug, Serialize)]
pub struct Invalidation {
    /// Also in the message sent to the other replicas and in their logs.
    pub id: Uuid,
    /// Distinct entries removed from L2 or from this replica's L1 (an entry in both counts
    /// once; entries only in other replicas' L1 are not counted).
    pub invalidated: u64,
    /// Other replicas subscribed to invalidations that received the message: PUBLISH's
    /// receiver count minus this replica's own subscription. 0 without Redis.
    pub propagated_to: u64,
    pub requested_at: DateTime<Utc>,
}

/// Counters of one level.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LevelStats {
    /// Lookups this level answered (by this replica).
    pub hits: u64,
    /// Lookups this level could not answer (by this replica). L2 is consulted only on L1
    /// misses; a lookup skipped because Redis is unavailable is an L2 miss.
    pub misses: u64,
    /// Entries stored now. L2: all replicas' entries, counted up to 100 000.
    pub entries: u64,
    /// Size of the stored entries now. L1: weighed bytes; L2: encoded bytes in Redis.
    pub bytes: u64,
    /// Entries removed on expiry or for lack of space, not by invalidation. L1: counted from
    /// moka's removal causes (expired entries are reaped by moka's maintenance, up to about a
    /// second after they stopped being served). L2: derived from counters kept in Redis by all
    /// replicas as `created - invalidated - entries now`, clamped at 0.
    pub evictions: u64,
}

impl LevelStats {
    /// hits / (hits + misses); 0 without lookups.
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.hits + self.misses)
    }
}

/// Counters of one route (both levels), as recorded with [`ResponseCache::record`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteStats {
    /// Route id.
    pub route: String,
    pub hits: u64,
    pub misses: u64,
}

impl RouteStats {
    /// hits / (hits + misses); 0 without lookups.
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.hits + self.misses)
    }
}

/// Statistics of this replica's cache since its start.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub replica_id: String,
    pub since: DateTime<Utc>,
    /// Lookups (`get`/`lookup` calls).
    pub lookups: u64,
    /// Lookups answered by L1 or L2.
    pub hits: u64,
    /// Lookups answered by neither.
    pub misses: u64,
    pub l1: LevelStats,
    /// `None` in embedded mode.
    pub l2: Option<LevelStats>,
    /// Per route, sorted by route id.
    pub routes: Vec<RouteStats>,
}

impl Stats {
    /// hits / lookups; 0 without lookups.
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.lookups)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 / whole as f64 }
}

/// The cache. `Send + Sync`; share it as `Arc<ResponseCache>`. Dropping the last handle (or
/// [`ResponseCache::shutdown`]) stops the invalidation subscriber.
pub struct ResponseCache {
    replica_id: String,
    instance: Uuid,
    since: DateTime<Utc>,
    flight_wait: Duration,
    l1: Arc<L1>,
    l2: Option<L2>,
    flights: Arc<Flights>,
    subscribed: Arc<AtomicBool>,
    subscriber: Mutex<Option<JoinHandle<()>>>,
    lookups: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    routes: Mutex<HashMap<String, (u64, u64)>>,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache")
            .field("replica_id", &self.replica_id)
            .field("instance", &self.instance)
            .field("l2", &self.l2.is_some())
            .finish_non_exhaustive()
    }
}

impl ResponseCache {
    /// Builds the cache; with Redis, connects and subscribes to invalidations (together bounded
    /// by the admin timeout). Redis being unreachable is not an error: the cache starts with L2 marked
    /// unavailable and the subscriber keeps retrying. Must be called within a Tokio runtime.
    pub async fn start(config: CacheConfig) -> Result<Arc<ResponseCache>, Error> {
        let l1 = Arc::new(L1::new(config.l1_max_bytes, config.max_entry_bytes));
        let instance = Uuid::new_v4();
        let subscribed = Arc::new(AtomicBool::new(false));
        let (l2, subscriber) = match &config.redis {
            None => (None, None),
            Some(redis_config) => {
                let client = redis::Client::open(redis_config.url.as_str()).map_err(Error::Config)?;
                let l2 = L2::new(client.clone(), redis_config);
                let subscriber = Subscriber {
                    client,
                    channel: l2.names.channel(),
                    instance,
                    l1: l1.clone(),
                    active: subscribed.clone(),
                    bound: redis_config.admin_timeout,
                };
                // Subscribe before returning so that invalidations published right after start
                // already reach this replica; on failure the task keeps trying. Probing L2 at
                // the same time bounds the start by one admin timeout when Redis is down.
                let (_, initial) = tokio::join!(l2.probe(), subscriber.subscribe());
                let initial = initial.ok();
                subscribed.store(initial.is_some(), Ordering::Release);
                (Some(l2), Some(tokio::spawn(subscriber.run(initial))))
            }
        };
        Ok(Arc::new(ResponseCache {
            replica_id: config.replica_id,
            instance,
            since: Utc::now(),
            flight_wait: config.flight_wait,
            l1,
            l2,
            flights: Arc::new(Flights::default()),
            subscribed,
            subscriber: Mutex::new(subscriber),
            lookups: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            routes: Mutex::new(HashMap::new()),
        }))
    }

    /// Looks `key` up in L1, then L2. An L2 hit is copied into L1 until the entry's own expiry.
    /// Never fails: an unavailable L2 is a miss, and is not even asked during its backoff.
    pub async fn get(&self, key: &CacheKey) -> Lookup {
        self.get_observed(key, || ()).await
    }

    /// [`ResponseCache::get`], holding what `around_l2` returns (a trace span, say) for as
    /// long as L2 is asked, and calling it only when L2 is asked.
    pub async fn get_observed<G>(&self, key: &CacheKey, around_l2: impl FnOnce() -> G) -> Lookup {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        if let Some(entry) = self.l1.get(key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Lookup::Hit { entry, level: Level::L1 };
        }
        if let Some(l2) = &self.l2 {
            let epoch = self.l1.epoch();
            let asking = around_l2();
            let found = l2.get(key).await;
            drop(asking);
            if let Some(entry) = found {
                let entry = Arc::new(entry);
                if self.l1.admits(key, &entry) {
                    self.l1.insert_unless_swept(key.clone(), entry.clone(), epoch);
                }
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Lookup::Hit { entry, level: Level::L2 };
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        Lookup::Miss
    }

    /// [`ResponseCache::get`] plus [`ResponseCache::record`] for `route` (a route id). `get`
    /// cannot attribute misses to a route by itself, as it has no entry to read it from.
    pub async fn lookup(&self, route: &str, key: &CacheKey) -> Lookup {
        let found = self.get(key).await;
        self.record(route, matches!(found, Lookup::Hit { .. }));
        found
    }

    /// Counts a hit or miss for a route in [`Stats::routes`].
    pub fn record(&self, route: &str, hit: bool) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = match routes.get_mut(route) {
            Some(counts) => counts,
            None => routes.entry(route.to_owned()).or_default(),
        };
        if hit {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }

    /// Stores a response under `key` until `entry.expires_at_ms`: in L1 and L2 (with the
    /// remaining time as `PX`), indexed in L2 by path and tags. Entries heavier than
    /// `max_entry_bytes` or already expired are not stored. L2 failures are logged (once per
    /// outage) and otherwise ignored.
    ///
    /// Invalidation is not a barrier for fetches in flight: a response fetched before an
    /// invalidation and stored after it is cached.
    pub async fn put(&self, key: &CacheKey, entry: CachedResponse) {
        self.put_shared(key, Arc::new(entry)).await;
    }

    /// [`ResponseCache::put`] for a response that is also shared, e.g. with
    /// [`FlightGuard::complete`].
    pub async fn put_shared(&self, key: &CacheKey, entry: Arc<CachedResponse>) {
        let now = now_ms();
        if entry.is_expired(now) || !self.l1.admits(key, &entry) {
            return;
        }
        self.l1.insert(key.clone(), entry.clone());
        if let Some(l2) = &self.l2 {
            l2.put(key, &entry, entry.remaining_ms(now)).await;
        }
    }

    /// Joins the fetch of `key`: the first caller leads, callers arriving before it finishes
    /// wait (at most `flight_wait`) for its response. Meant for after a miss; a leader may
    /// check the cache once more before fetching, as a previous leader may just have stored.
    pub async fn join(&self, key: &CacheKey) -> Flight {
        self.flights.join(key, self.flight_wait).await
    }

    /// [`ResponseCache::join`] with an explicit bound on the wait.
    pub async fn join_with_timeout(&self, key: &CacheKey, wait: Duration) -> Flight {
        self.flights.join(key, wait).await
    }

    /// Removes every entry whose path equals one of `keys`, starts with one of `prefixes` or
    /// that carries one of `tags`: from L2, then from this replica's L1 (in that order, so that
    /// a concurrent lookup cannot copy a deleted L2 entry back into L1), and publishes the
    /// invalidation so that the other replicas sweep their L1 (they do within milliseconds;
    /// replicas whose subscription is down clear their whole L1 when they resubscribe).
    ///
    /// With Redis configured but unreachable, this replica's L1 is still swept, and then
    /// [`Error::Unavailable`] is returned: the invalidation is incomplete. Without Redis
    /// (embedded mode) only L1 exists and the result is always `Ok`.
    pub async fn invalidate(
        &self,
        keys: &[String],
        prefixes: &[String],
        tags: &[String],
    ) -> Result<Invalidation, Error> {
        let id = Uuid::new_v4();
        let requested_at = Utc::now();
        let mut removed: HashSet<String> = HashSet::new();
        let l2_result = match &self.l2 {
            Some(l2) => Some(l2.invalidate(keys, prefixes, tags).await),
            None => None,
        };
        let l2_invalidated = matches!(l2_result, Some(Ok(_)));
        if let Some(Ok(digests)) = l2_result {
            removed.extend(digests);
        }
        let local = self.l1.remove_matching(&Selector::new(keys, prefixes, tags));
        removed.extend(local.iter().map(CacheKey::digest));
        let invalidated = removed.len() as u64;

        let mut propagated_to = 0;
        if let Some(l2) = &self.l2 {
            let published = if l2_invalidated {
                let message = Message {
                    id,
                    origin: self.replica_id.clone(),
                    instance: self.instance,
                    keys: keys.to_vec(),
                    prefixes: prefixes.to_vec(),
                    tags: tags.to_vec(),
                };
                // Serializing plain strings and ids cannot fail.
                let payload = serde_json::to_vec(&message).unwrap_or_default();
                l2.publish(payload).await.ok()
            } else {
                None
            };
            let Some(receivers) = published else {
                tracing::warn!(%id, invalidated, l2_invalidated, "response cache: invalidation incomplete, Redis unavailable");
                return Err(Error::Unavailable { id, invalidated, l2_invalidated });
            };
            let own = u64::from(self.subscribed.load(Ordering::Acquire));
            propagated_to = receivers.saturating_sub(own);
        }
        tracing::info!(
            %id,
            invalidated,
            propagated_to,
            keys = keys.len(),
            prefixes = prefixes.len(),
            tags = tags.len(),
            "response cache: invalidated"
        );
        Ok(Invalidation { id, invalidated, propagated_to, requested_at })
    }

    /// Statistics since start. Counts L2 entries in Redis (SCAN), so this is an admin call.
    pub async fn stats(&self) -> Stats {
        let (entries, bytes, evictions) = self.l1.usage();
        let l1 = LevelStats {
            hits: self.l1.hits.load(Ordering::Relaxed),
            misses: self.l1.misses.load(Ordering::Relaxed),
            entries,
            bytes,
            evictions,
        };
        let l2 = match &self.l2 {
            Some(l2) => Some(l2.stats().await),
            None => None,
        };
        let mut routes: Vec<RouteStats> = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(route, &(hits, misses))| RouteStats { route: route.clone(), hits, misses })
            .collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        Stats {
            replica_id: self.replica_id.clone(),
            since: self.since,
            lookups: self.lookups.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            l1,
            l2,
            routes,
        }
    }

    /// Whether the last L2 call succeeded; `None` without Redis. After a failure, L2 is
    /// retried by one request every 500 ms, so this turns `true` again by itself.
    pub fn l2_available(&self) -> Option<bool> {
        self.l2.as_ref().map(L2::available)
    }

    /// Whether this replica currently receives other replicas' invalidations; `None` without
    /// Redis.
    pub fn propagation_active(&self) -> Option<bool> {
        self.l2.as_ref().map(|_| self.subscribed.load(Ordering::Acquire))
    }

    /// Stops the invalidation subscriber (also done when the last handle is dropped). The
    /// cache keeps working; this replica no longer hears other replicas' invalidations.
    pub fn shutdown(&self) {
        if let Some(task) = self.subscriber.lock().unwrap_or_else(PoisonError::into_inner).take() {
            task.abort();
        }
        self.subscribed.store(false, Ordering::Release);
    }

    /// This replica's id.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }
}

impl Drop for ResponseCache {
    fn drop(&mut self) {
        self.shutdown();
    }
}
