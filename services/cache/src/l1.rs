//! L1: the in-process cache of one replica (moka), weighed by bytes, with per-entry expiry.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::notification::RemovalCause;
use moka::sync::Cache;

use crate::entry::{self, CachedResponse};
use crate::key::CacheKey;
use crate::now_ms;

/// The in-process level.
///
/// Copies from L2 race with invalidations: a lookup may read an entry from L2 just before an
/// invalidation deletes it and insert it into L1 just after the invalidation swept L1, which
/// would resurrect the entry on this replica until its expiry. To exclude that, every sweep
/// (invalidation, clear) bumps an epoch under the write half of `gate`, and copies from L2 are
/// inserted under the read half only if the epoch is still the one seen before reading L2.
pub(crate) struct L1 {
    cache: Cache<CacheKey, Arc<CachedResponse>>,
    gate: RwLock<u64>,
    max_entry_bytes: usize,
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    evictions: Arc<AtomicU64>,
}

/// Entries live until their own `expires_at_ms`.
struct UntilExpiry;

impl Expiry<CacheKey, Arc<CachedResponse>> for UntilExpiry {
    fn expire_after_create(&self, _key: &CacheKey, value: &Arc<CachedResponse>, _at: Instant) -> Option<Duration> {
        Some(Duration::from_millis(value.remaining_ms(now_ms())))
    }

    fn expire_after_update(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedResponse>,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(value.remaining_ms(now_ms())))
    }
}

/// What an invalidation removes: entries whose path equals one of `keys`, starts with one of
/// `prefixes`, or that carry one of `tags`.
pub(crate) struct Selector<'a> {
    keys: HashSet<&'a str>,
    prefixes: &'a [String],
    tags: HashSet<&'a str>,
}

impl<'a> Selector<'a> {
    pub(crate) fn new(keys: &'a [String], prefixes: &'a [String], tags: &'a [String]) -> Self {
        Self {
            keys: keys.iter().map(String::as_str).collect(),
            prefixes,
            tags: tags.iter().map(String::as_str).collect(),
        }
    }

    pub(crate) fn matches(&self, key: &CacheKey, entry: &CachedResponse) -> bool {
        self.keys.contains(key.path.as_str())
            || self.prefixes.iter().any(|prefix| key.path.starts_with(prefix.as_str()))
            || entry.tags.iter().any(|tag| self.tags.contains(tag.as_str()))
    }
}

impl L1 {
    pub(crate) fn new(max_bytes: u64, max_entry_bytes: usize) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &CacheKey, value: &Arc<CachedResponse>| {
                u32::try_from(entry::weight(key, value)).unwrap_or(u32::MAX)
            })
            .expire_after(UntilExpiry)
            .eviction_listener(move |_key, _value, cause| {
                // Expired or pushed out for space; not removed by invalidation or replaced.
                if matches!(cause, RemovalCause::Expired | RemovalCause::Size) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .build();
        Self {
            cache,
            gate: RwLock::new(0),
            max_entry_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions,
        }
    }

    /// A live entry, counting the hit or miss.
    pub(crate) fn get(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let found = self.cache.get(key).filter(|entry| !entry.is_expired(now_ms()));
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Whether an entry of this size may be stored at all.
    pub(crate) fn admits(&self, key: &CacheKey, entry: &CachedResponse) -> bool {
        entry::weight(key, entry) <= self.max_entry_bytes
    }

    /// The current epoch, to pass to [`L1::insert_unless_swept`].
    pub(crate) fn epoch(&self) -> u64 {
        *self.gate.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores an entry (a fresh response).
    pub(crate) fn insert(&self, key: CacheKey, entry: Arc<CachedResponse>) {
        self.cache.insert(key, entry);
    }

    /// Stores a copy of an L2 entry unless a sweep ran since `epoch` was read.
    pub(crate) fn insert_unless_swept(&self, key: CacheKey, entry: Arc<CachedResponse>, epoch: u64) -> bool {
        let current = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        if *current != epoch {
            return false;
        }
        self.cache.insert(key, entry);
        true
    }

    /// Removes every entry the selector matches; returns the keys removed.
    pub(crate) fn remove_matching(&self, selector: &Selector<'_>) -> Vec<CacheKey> {
        let mut epoch = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        *epoch = epoch.wrapping_add(1);
        let matching: Vec<Arc<CacheKey>> =
            self.cache.iter().filter(|(key, entry)| selector.matches(key, entry)).map(|(key, _)| key).collect();
        matching.into_iter().filter(|key| self.cache.remove(key.as_ref()).is_some()).map(Arc::unwrap_or_clone).collect()
    }

    /// Drops every entry (after invalidations may have been missed).
    pub(crate) fn clear(&self) {
        let mut epoch = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        *epoch = epoch.wrapping_add(1);
        self.cache.invalidate_all();
    }

    /// (entries, bytes, evictions) after applying pending removals.
    pub(crate) fn usage(&self) -> (u64, u64, u64) {
        self.cache.run_pending_tasks();
        (self.cache.entry_count(), self.cache.weighted_size(), self.evictions.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn entry(path_tags: &[&str], ttl_ms: i64, body: usize) -> Arc<CachedResponse> {
        let now = now_ms();
        Arc::new(CachedResponse {
            status: 200,
            headers: vec![],
            body: Bytes::from(vec![b'x'; body]),
            tags: path_tags.iter().map(|t| t.to_string()).collect(),
            route: "r".into(),
            stored_at_ms: now,
            expires_at_ms: now + ttl_ms,
        })
    }

    fn key(path: &str) -> CacheKey {
        CacheKey::new("GET", path, "-", [])
    }

    #[test]
    fn selector_matches_exact_prefix_and_tags() {
        let keys = vec!["/a?x=1".to_string()];
        let prefixes = vec!["/b/".to_string()];
        let tags = vec!["t".to_string()];
        let selector = Selector::new(&keys, &prefixes, &tags);
        assert!(selector.matches(&key("/a?x=1"), &entry(&[], 1000, 0)));
        assert!(!selector.matches(&key("/a?x=2"), &entry(&[], 1000, 0)));
        assert!(!selector.matches(&key("/a"), &entry(&[], 1000, 0)));
        assert!(selector.matches(&key("/b/c?d"), &entry(&[], 1000, 0)));
        assert!(!selector.matches(&key("/bc"), &entry(&[], 1000, 0)));
        assert!(selector.matches(&key("/z"), &entry(&["u", "t"], 1000, 0)));
        let none = Selector::new(&[], &[], &[]);
        assert!(!none.matches(&key("/a?x=1"), &entry(&["t"], 1000, 0)));
    }

    #[test]
    fn removal_counts_and_sweep_blocks_stale_copies() {
        let l1 = L1::new(1 << 20, 1 << 16);
        l1.insert(key("/a"), entry(&["t"], 10_000, 10));
        l1.insert(key("/b"), entry(&[], 10_000, 10));
        let before = l1.epoch();
        let tags = vec!["t".to_string()];
        let removed = l1.remove_matching(&Selector::new(&[], &[], &tags));
        assert_eq!(removed, vec![key("/a")]);
        assert!(l1.get(&key("/a")).is_none());
        assert!(l1.get(&key("/b")).is_some());
        // A copy read from L2 before the sweep is not inserted after it.
        assert!(!l1.insert_unless_swept(key("/a"), entry(&["t"], 10_000, 10), before));
        assert!(l1.get(&key("/a")).is_none());
        assert!(l1.insert_unless_swept(key("/a"), entry(&["t"], 10_000, 10), l1.epoch()));
        let (_, _, evictions) = l1.usage();
        assert_eq!(evictions, 0, "invalidation is not an eviction");
    }
}
