//! In-process limiter state: the embedded mode, and the `Local` fallback while Redis is
//! unreachable.

use crate::Algorithm;
use crate::algo::{self, Counters, Outcome, Rates};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Shards, so that concurrent requests for different keys rarely wait on one another.
const SHARDS: usize = 32;
/// A shard is not swept before it holds this many entries.
const MIN_SWEEP: usize = 1024;

/// Per-key state in sharded maps over a monotonic clock.
///
/// Memory stays bounded by the number of keys still in use: when a shard has doubled since
/// its last sweep, entries that no longer affect any decision are dropped (amortised O(1)).
pub(crate) struct LocalStore {
    epoch: Instant,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

struct Shard {
    /// Theoretical arrival time (µs since `epoch`) per key.
    gcra: HashMap<String, u64>,
    sliding: HashMap<String, SlidingEntry>,
    sweep_at: usize,
}

#[derive(Clone, Copy)]
struct SlidingEntry {
    counters: Counters,
    /// ms since `epoch` from which the counters are irrelevant.
    expires_at: u64,
}

impl Shard {
    fn len(&self) -> usize {
        self.gcra.len() + self.sliding.len()
    }

    /// Called after an insertion.
    fn maybe_sweep(&mut self, now_us: u64) {
        if self.len() < self.sweep_at {
            return;
        }
        // A TAT in the past means the key is back to a full quota: same as absent.
        self.gcra.retain(|_, tat| *tat > now_us);
        let now_ms = now_us / 1000;
        self.sliding.retain(|_, entry| entry.expires_at > now_ms);
        self.sweep_at = MIN_SWEEP.max(2 * self.len());
    }
}

impl LocalStore {
    pub(crate) fn new() -> LocalStore {
        let shards = (0..SHARDS)
            .map(|_| Mutex::new(Shard { gcra: HashMap::new(), sliding: HashMap::new(), sweep_at: MIN_SWEEP }))
            .collect();
        LocalStore { epoch: Instant::now(), hasher: RandomState::new(), shards }
    }

    pub(crate) fn check(&self, key: &str, algorithm: Algorithm, rates: &Rates) -> Outcome {
        let now_us = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.check_at(key, algorithm, rates, now_us)
    }

    fn check_at(&self, key: &str, algorithm: Algorithm, rates: &Rates, now_us: u64) -> Outcome {
        // usize -> u64 never truncates on supported targets; the modulo keeps it in range.
        let index = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // The maps hold plain numbers, so a panic elsewhere cannot leave them inconsistent.
        let mut shard = self.shards[index].lock().unwrap_or_else(PoisonError::into_inner);
        match algorithm {
            Algorithm::Gcra => {
                let (outcome, new) = algo::gcra(now_us, shard.gcra.get(key).copied(), rates);
                if let Some(tat) = new {
                    if let Some(stored) = shard.gcra.get_mut(key) {
                        *stored = tat;
                    } else {
                        shard.gcra.insert(key.to_owned(), tat);
                        shard.maybe_sweep(now_us);
                    }
                }
                outcome
            }
            Algorithm::SlidingWindow => {
                let stored = shard.sliding.get(key).map(|entry| entry.counters);
                let (outcome, new) = algo::sliding_window(now_us / 1000, stored, rates);
                if let Some(counters) = new {
                    let entry = SlidingEntry { counters, expires_at: counters.expires_at(rates.period_ms) };
                    if let Some(stored) = shard.sliding.get_mut(key) {
                        *stored = entry;
                    } else {
                        shard.sliding.insert(key.to_owned(), entry);
                        shard.maybe_sweep(now_us);
                    }
                }
                outcome
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limit, OnUnavailable};
    use std::time::Duration;

    fn rates(algorithm: Algorithm) -> Rates {
        Rates::of(&Limit {
            policy: "p".into(),
            algorithm,
            rate: 10,
            period: Duration::from_secs(1),
            burst: 4,
            on_unavailable: OnUnavailable::Local,
        })
    }

    #[test]
    fn keys_and_algorithms_are_independent() {
        let store = LocalStore::new();
        let (g, s) = (rates(Algorithm::Gcra), rates(Algorithm::SlidingWindow));
        let now = 1_000_000;
        let admitted = |key: &str, alg, r: &Rates| (0..20).filter(|_| store.check_at(key, alg, r, now).allowed).count();
        assert_eq!(admitted("a", Algorithm::Gcra, &g), 5);
        assert_eq!(admitted("b", Algorithm::Gcra, &g), 5);
        // Same key, other algorithm: its own counters.
        assert_eq!(admitted("a", Algorithm::SlidingWindow, &s), 14);
    }

    #[test]
    fn stale_entries_are_swept() {
        let store = LocalStore::new();
        let (g, s) = (rates(Algorithm::Gcra), rates(Algorithm::SlidingWindow));
        for i in 0..100_000u64 {
            // Each key is used once, 1 ms apart: a GCRA entry matters for 100 ms, a
            // sliding-window entry for at most 2 s.
            let now = i * 1000;
            store.check_at(&format!("g{i}"), Algorithm::Gcra, &g, now);
            store.check_at(&format!("s{i}"), Algorithm::SlidingWindow, &s, now);
        }
        let live = 100 + 2000;
        let len = store.len();
        assert!(len < SHARDS * MIN_SWEEP + 2 * live, "{len} entries kept");
        assert!(len >= live, "live entries must be kept, {len}");
    }

    #[test]
    fn fresh_store_uses_a_monotonic_clock() {
        let store = LocalStore::new();
        let r = rates(Algorithm::Gcra);
        let outcomes: Vec<bool> = (0..6).map(|_| store.check("k", Algorithm::Gcra, &r).allowed).collect();
        assert_eq!(outcomes, [true, true, true, true, true, false]);
    }
}
