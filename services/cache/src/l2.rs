//! L2: the Redis cache shared by all replicas.
//!
//! Layout, every name under the configured prefix `P`:
//! - `Pcache:e:{digest}`: an entry ([`crate::entry::encode`]), with a `PX` expiry;
//! - `Pcache:path:{path}`, `Pcache:tag:{tag}`: sets of the entry names stored under a path
//!   (with its query) or carrying a tag, expiring no earlier than their newest member. Members
//!   may outlive their entry (expired, or deleted through another set); that is harmless, the
//!   sets only select what to delete;
//! - `Pcache:stats`: a hash counting entries `written` (created, not overwritten) and
//!   `invalidated`, from which L2 evictions are derived;
//! - `Pcache:invalidations`: the pub/sub channel (see [`crate::propagation`]).
//!
//! Failure handling: every call is bounded by a timeout. A failure marks L2 unavailable (one
//! warning), drops the connection if it may be broken and stops request-path calls for
//! [`BACKOFF`], after which one request probes Redis again; the first success marks it
//! available again (one info line). An outage therefore costs at most one timeout per
//! backoff period and no lookup waits on a dead Redis.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, RedisResult, Script};

use crate::entry::{self, CachedResponse};
use crate::key::CacheKey;
use crate::{LevelStats, RedisConfig, now_ms};

/// How long request-path calls are skipped after a failure.
pub(crate) const BACKOFF: Duration = Duration::from_millis(500);

/// At most this many entries are counted by [`L2::usage`].
const MAX_COUNTED_ENTRIES: usize = 100_000;

/// Index sets passed to one run of the invalidation script.
const SETS_PER_SCRIPT: usize = 500;

/// Stores an entry and indexes it. KEYS: entry, stats hash, index sets; ARGV: value, ttl ms.
/// `written` counts only entries that did not exist, so that overwrites are not mistaken for
/// evictions later.
const PUT_SCRIPT: &str = r"
local ttl = tonumber(ARGV[2])
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
if existed == 0 then
  redis.call('HINCRBY', KEYS[2], 'written', 1)
end
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return existed
";

/// Deletes the entries of index sets, and the sets. KEYS: stats hash, index sets. Returns the
/// names of the entries that existed and were deleted.
const INVALIDATE_SCRIPT: &str = r"
local seen = {}
local removed = {}
for i = 2, #KEYS do
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[i])) do
    if not seen[name] then
      seen[name] = true
      if redis.call('DEL', name) == 1 then
        removed[#removed + 1] = name
      end
    end
  end
  redis.call('DEL', KEYS[i])
end
if #removed > 0 then
  redis.call('HINCRBY', KEYS[1], 'invalidated', #removed)
end
return removed
";

/// L2 is down or failed; details were logged.
#[derive(Debug)]
pub(crate) struct Unavailable;

/// Request-path calls are skipped while Redis is in backoff; admin calls always try.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Request,
    Admin,
}

/// Redis key and channel names under a prefix.
pub(crate) struct Names {
    prefix: String,
    entry_prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned(), entry_prefix: format!("{prefix}cache:e:") }
    }

    fn entry(&self, key: &CacheKey) -> String {
        format!("{}{}", self.entry_prefix, key.digest())
    }

    /// The key digest of an entry name.
    fn digest_of<'a>(&self, name: &'a str) -> Option<&'a str> {
        name.strip_prefix(self.entry_prefix.as_str())
    }

    fn path_set(&self, path: &str) -> String {
        format!("{}cache:path:{path}", self.prefix)
    }

    fn tag_set(&self, tag: &str) -> String {
        format!("{}cache:tag:{tag}", self.prefix)
    }

    fn stats(&self) -> String {
        format!("{}cache:stats", self.prefix)
    }

    pub(crate) fn channel(&self) -> String {
        format!("{}cache:invalidations", self.prefix)
    }

    /// SCAN pattern of the path sets under a path prefix.
    fn path_sets_under(&self, path_prefix: &str) -> String {
        format!("{}*", glob_escape(&self.path_set(path_prefix)))
    }

    fn all_entries(&self) -> String {
        format!("{}*", glob_escape(&self.entry_prefix))
    }
}

/// Escapes the glob metacharacters of a literal for SCAN MATCH.
fn glob_escape(literal: &str) -> String {
    let mut escaped = String::with_capacity(literal.len() + 8);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Availability and backoff of Redis, shared by all calls.
struct Health {
    available: AtomicBool,
    /// Milliseconds since `origin` before which request-path calls are skipped.
    retry_at_ms: AtomicU64,
    origin: Instant,
}

impl Health {
    fn new() -> Self {
        Self { available: AtomicBool::new(true), retry_at_ms: AtomicU64::new(0), origin: Instant::now() }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a request-path call may go to Redis now. While unavailable, one caller per
    /// backoff period is let through as the probe.
    fn permit(&self) -> bool {
        if self.available.load(Ordering::Acquire) {
            return true;
        }
        let now = self.elapsed_ms();
        let retry_at = self.retry_at_ms.load(Ordering::Acquire);
        now >= retry_at
            && self
                .retry_at_ms
                .compare_exchange(retry_at, now + backoff_ms(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    fn succeeded(&self) {
        if !self.available.swap(true, Ordering::AcqRel) {
            tracing::info!("response cache: Redis (L2) is available again");
        }
    }

    fn failed(&self, operation: &str, error: &dyn std::fmt::Display) {
        self.retry_at_ms.store(self.elapsed_ms() + backoff_ms(), Ordering::Release);
        if self.available.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                operation,
                error = %error,
                "response cache: Redis (L2) is unavailable; serving from L1 only until it recovers"
            );
        } else {
            tracing::debug!(operation, error = %error, "response cache: Redis (L2) call failed");
        }
    }
}

fn backoff_ms() -> u64 {
    u64::try_from(BACKOFF.as_millis()).unwrap_or(u64::MAX)
}

/// Whether the connection may be broken, so that the next call should open a new one.
fn breaks_connection(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

pub(crate) struct L2 {
    client: Client,
    connection_config: AsyncConnectionConfig,
    timeout: Duration,
    admin_timeout: Duration,
    pub(crate) names: Names,
    connection: Mutex<Option<MultiplexedConnection>>,
    connecting: tokio::sync::Mutex<()>,
    health: Health,
    put_script: Script,
    invalidate_script: Script,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    /// Last successful count of (entries, bytes, evictions), reported while Redis is down.
    last_usage: Mutex<(u64, u64, u64)>,
}

impl L2 {
    pub(crate) fn new(client: Client, config: &RedisConfig) -> Self {
        Self {
            client,
            // Our own timeout bounds connect + command together; the connection adds none.
            connection_config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.timeout.max(config.admin_timeout)))
                .set_response_timeout(None),
            timeout: config.timeout,
            admin_timeout: config.admin_timeout,
            names: Names::new(&config.prefix),
            connection: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            health: Health::new(),
            put_script: Script::new(PUT_SCRIPT),
            invalidate_script: Script::new(INVALIDATE_SCRIPT),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            last_usage: Mutex::new((0, 0, 0)),
        }
    }

    pub(crate) fn available(&self) -> bool {
        self.health.available.load(Ordering::Acquire)
    }

    /// Connects and pings once, so that `available` is accurate right after start.
    pub(crate) async fn probe(&self) {
        let _ = self
            .call(Mode::Admin, "connect", |mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await;
    }

    fn cached_connection(&self) -> Option<MultiplexedConnection> {
        self.connection.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn connection(&self) -> RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.cached_connection() {
            return Ok(conn);
        }
        // One connect at a time; whoever waited reuses the result.
        let _connecting = self.connecting.lock().await;
        if let Some(conn) = self.cached_connection() {
            return Ok(conn);
        }
        let conn = self.client.get_multiplexed_async_connection_with_config(&self.connection_config).await?;
        *self.connection.lock().unwrap_or_else(PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    fn drop_connection(&self) {
        self.connection.lock().unwrap_or_else(PoisonError::into_inner).take();
    }

    /// Runs one bounded Redis call and keeps the health state.
    async fn call<T, F, Fut>(&self, mode: Mode, operation: &'static str, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if mode == Mode::Request && !self.health.permit() {
            return Err(Unavailable);
        }
        let bound = if mode == Mode::Request { self.timeout } else { self.admin_timeout };
        let attempt = async {
            let conn = self.connection().await?;
            f(conn).await
        };
        match tokio::time::timeout(bound, attempt).await {
            Ok(Ok(value)) => {
                self.health.succeeded();
                Ok(value)
            }
            Ok(Err(error)) => {
                if breaks_connection(&error) {
                    self.drop_connection();
                }
                self.health.failed(operation, &error);
                Err(Unavailable)
            }
            Err(_) => {
                // A connection that does not answer in time may be dead without being closed.
                self.drop_connection();
                self.health.failed(operation, &format_args!("timed out after {bound:?}"));
                Err(Unavailable)
            }
        }
    }

    /// A live entry stored under `key`, counting the hit or miss. Unavailable, undecodable,
    /// expired or foreign entries (digest collision) are misses.
    pub(crate) async fn get(&self, key: &CacheKey) -> Option<CachedResponse> {
        let name = self.names.entry(key);
        let found = self
            .call(Mode::Request, "get", |mut conn| async move {
                redis::cmd("GET").arg(&name).query_async::<Option<Vec<u8>>>(&mut conn).await
            })
            .await
            .ok()
            .flatten()
            .and_then(|raw| match entry::decode(Bytes::from(raw)) {
                Some((stored_key, entry)) if stored_key == *key && !entry.is_expired(now_ms()) => Some(entry),
                Some((stored_key, _)) if stored_key != *key => {
                    tracing::warn!(digest = %key.digest(), "response cache: L2 digest collision; treated as a miss");
                    None
                }
                Some(_) => None,
                None => {
                    // Debug only: during a rolling upgrade to another format version this
                    // happens on every lookup of an old entry, until it expires.
                    tracing::debug!(digest = %key.digest(), "response cache: undecodable L2 entry; treated as a miss");
                    None
                }
            });
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Stores an entry for `ttl_ms` and indexes it under its path and tags.
    pub(crate) async fn put(&self, key: &CacheKey, entry: &CachedResponse, ttl_ms: u64) {
        let value = entry::encode(key, entry);
        let mut keys = vec![self.names.entry(key), self.names.stats(), self.names.path_set(&key.path)];
        for tag in &entry.tags {
            let set = self.names.tag_set(tag);
            if !keys[3..].contains(&set) {
                keys.push(set);
            }
        }
        let script = &self.put_script;
        let _ = self
            .call(Mode::Request, "put", |mut conn| async move {
                let mut invocation = script.prepare_invoke();
                invocation.arg(value).arg(ttl_ms);
                for key in &keys {
                    invocation.key(key);
                }
                invocation.invoke_async::<i64>(&mut conn).await
            })
            .await;
    }

    /// Deletes the entries stored under `paths`, under path prefixes or with `tags`; returns
    /// the digests of the entries that existed.
    pub(crate) async fn invalidate(
        &self,
        paths: &[String],
        prefixes: &[String],
        tags: &[String],
    ) -> Result<Vec<String>, Unavailable> {
        let mut sets: Vec<String> = paths.iter().map(|path| self.names.path_set(path)).collect();
        sets.extend(tags.iter().map(|tag| self.names.tag_set(tag)));
        for prefix in prefixes {
            sets.extend(self.scan(&self.names.path_sets_under(prefix), usize::MAX).await?);
        }
        sets.sort();
        sets.dedup();
        let mut removed = Vec::new();
        for chunk in sets.chunks(SETS_PER_SCRIPT) {
            let script = &self.invalidate_script;
            let stats = self.names.stats();
            let names = self
                .call(Mode::Admin, "invalidate", |mut conn| async move {
                    let mut invocation = script.key(&stats);
                    for set in chunk {
                        invocation.key(set);
                    }
                    invocation.invoke_async::<Vec<String>>(&mut conn).await
                })
                .await?;
            removed.extend(names.iter().filter_map(|name| self.names.digest_of(name)).map(str::to_owned));
        }
        Ok(removed)
    }

    /// Publishes an invalidation message; returns how many subscribers received it.
    pub(crate) async fn publish(&self, message: Vec<u8>) -> Result<u64, Unavailable> {
        let channel = self.names.channel();
        self.call(Mode::Admin, "publish", |mut conn| async move {
            redis::cmd("PUBLISH").arg(&channel).arg(message).query_async::<u64>(&mut conn).await
        })
        .await
    }

    /// Names matching a SCAN pattern, at most `limit` (approximately: whole batches).
    async fn scan(&self, pattern: &str, limit: usize) -> Result<Vec<String>, Unavailable> {
        let mut found = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch) = self
                .call(Mode::Admin, "scan", |mut conn| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async::<(u64, Vec<String>)>(&mut conn)
                        .await
                })
                .await?;
            found.extend(batch);
            cursor = next;
            if cursor == 0 || found.len() >= limit {
                return Ok(found);
            }
        }
    }

    /// Level statistics: hits and misses of this replica; entries and bytes counted in Redis
    /// (all replicas; at most [`MAX_COUNTED_ENTRIES`]); evictions derived as `written -
    /// invalidated - entries` (clamped at 0). While Redis is unavailable the last counted
    /// figures are reported.
    pub(crate) async fn stats(&self) -> LevelStats {
        if let Ok(usage) = self.usage().await {
            *self.last_usage.lock().unwrap_or_else(PoisonError::into_inner) = usage;
        }
        let (entries, bytes, evictions) = *self.last_usage.lock().unwrap_or_else(PoisonError::into_inner);
        LevelStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries,
            bytes,
            evictions,
        }
    }

    async fn usage(&self) -> Result<(u64, u64, u64), Unavailable> {
        let names = self.scan(&self.names.all_entries(), MAX_COUNTED_ENTRIES).await?;
        let mut entries = 0u64;
        let mut bytes = 0u64;
        for batch in names.chunks(1000) {
            let lengths = self
                .call(Mode::Admin, "stats", |mut conn| async move {
                    let mut pipe = redis::pipe();
                    for name in batch {
                        pipe.cmd("STRLEN").arg(name);
                    }
                    pipe.query_async::<Vec<u64>>(&mut conn).await
                })
                .await?;
            // An entry that expired between SCAN and STRLEN has length 0: not counted.
            entries += lengths.iter().filter(|&&len| len > 0).count() as u64;
            bytes += lengths.iter().sum::<u64>();
        }
        let stats = self.names.stats();
        let (written, invalidated) = self
            .call(Mode::Admin, "stats", |mut conn| async move {
                redis::cmd("HMGET")
                    .arg(&stats)
                    .arg("written")
                    .arg("invalidated")
                    .query_async::<(Option<u64>, Option<u64>)>(&mut conn)
                    .await
            })
            .await?;
        let evictions = written.unwrap_or(0).saturating_sub(invalidated.unwrap_or(0)).saturating_sub(entries);
        Ok((entries, bytes, evictions))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(glob_escape(r"p:*?[a]\x"), r"p:\*\?\[a\]\\x");
        let names = Names::new("t[1]:");
        assert_eq!(names.path_sets_under("/v1/*"), r"t\[1\]:cache:path:/v1/\**");
        assert_eq!(names.all_entries(), r"t\[1\]:cache:e:*");
    }

    #[test]
    fn entry_names_map_back_to_digests() {
        let names = Names::new("p:");
        let key = CacheKey::new("GET", "/a", "-", []);
        let name = names.entry(&key);
        assert_eq!(names.digest_of(&name), Some(key.digest().as_str()));
        assert_eq!(names.digest_of("other:cache:e:x"), None);
    }

    #[test]
    fn backoff_lets_one_probe_through() {
        let health = Health::new();
        assert!(health.permit());
        health.failed("test", &"boom");
        assert!(!health.available.load(Ordering::Acquire));
        assert!(!health.permit(), "no call during the backoff");
        // Pretend the backoff elapsed.
        health.retry_at_ms.store(0, Ordering::Release);
        assert!(health.permit(), "one probe");
        assert!(!health.permit(), "only one probe per period");
        health.succeeded();
        assert!(health.permit());
    }
}
