//! Per-thread buffers for what the request path hands to a background task (the gateway's
//! request samples): each thread pushes into a shard of its own, behind a lock no other
//! request thread takes while there are at most as many threads as shards, so that the
//! request path writes no cache line that every thread writes (as a shared channel's
//! semaphore and tail are). The task takes every shard's contents at once.
//!
//! [`PerThread`] is the general form: one accumulator per shard (the gateway folds its
//! request timings into per-thread latency sketches with it).
//!
//! For small items. A shard is one growing `Vec`, so its growth moves what it holds on the
//! thread that pushes: measured with finished spans (several hundred bytes each) in the
//! traced gateway benchmark, that cost more than a shared channel's linked blocks, and
//! spans stay on the channel.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// One accumulator per thread (per shard), each behind a lock of its own that only its
/// thread and the collecting task take.
pub struct PerThread<A> {
    shards: Box<[Shard<A>]>,
}

/// A shard, on a cache line of its own so that threads using neighbouring shards do not
/// contend.
#[repr(align(128))]
struct Shard<A>(Mutex<A>);

/// Gives each thread that pushes a shard number, in turn.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's shard number (modulo a buffer's shard count), taken at its first push.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

impl<A> std::fmt::Debug for PerThread<A> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("PerThread").field("shards", &self.shards.len()).finish_non_exhaustive()
    }
}

impl<A: Default> Default for PerThread<A> {
    fn default() -> Self {
        PerThread::new()
    }
}

impl<A: Default> PerThread<A> {
    /// As many shards as the machine has cores (at most 64).
    pub fn new() -> PerThread<A> {
        let count = std::thread::available_parallelism().map_or(4, usize::from).clamp(1, 64);
        PerThread { shards: (0..count).map(|_| Shard(Mutex::new(A::default()))).collect() }
    }

    /// Runs `f` on this thread's accumulator.
    pub fn with<R>(&self, f: impl FnOnce(&mut A) -> R) -> R {
        let index = SHARD.with(|shard| match shard.get() {
            Some(index) => index,
            None => {
                let index = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
                shard.set(Some(index));
                index
            }
        }) % self.shards.len();
        f(&mut self.shards[index].0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every shard's accumulator, each replaced by what `fresh` makes of it.
    pub fn take_with(&self, mut fresh: impl FnMut(&A) -> A) -> Vec<A> {
        self.shards
            .iter()
            .map(|shard| {
                let mut held = shard.0.lock().unwrap_or_else(PoisonError::into_inner);
                let next = fresh(&held);
                std::mem::replace(&mut *held, next)
            })
            .collect()
    }
}

/// Bounded per-thread buffers of `T`.
pub struct Sharded<T> {
    buffers: PerThread<Vec<T>>,
    /// Items one shard holds at most.
    capacity: usize,
}

impl<T> std::fmt::Debug for Sharded<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Sharded")
            .field("shards", &self.buffers.shards.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl<T> Sharded<T> {
    /// As many shards as the machine has cores (at most 64), each holding at most
    /// `capacity` items.
    pub fn new(capacity: usize) -> Sharded<T> {
        Sharded { buffers: PerThread::new(), capacity: capacity.max(1) }
    }

    /// Adds `item` to this thread's shard and answers how many the shard now holds; gives
    /// `item` back when the shard is full.
    pub fn push(&self, item: T) -> Result<usize, T> {
        self.buffers.with(|shard| {
            if shard.len() >= self.capacity {
                return Err(item);
            }
            shard.push(item);
            Ok(shard.len())
        })
    }

    /// Every non-empty shard's items, in the order each shard took them; each shard is left
    /// with room for as many as it held.
    pub fn take_shards(&self) -> Vec<Vec<T>> {
        let mut taken = self
            .buffers
            .take_with(|held| Vec::with_capacity(if held.is_empty() { held.capacity() } else { held.len() }));
        taken.retain(|items| !items.is_empty());
        taken
    }

    /// Every shard's items as one list.
    pub fn take(&self) -> Vec<T> {
        let mut shards = self.take_shards().into_iter();
        let mut all = shards.next().unwrap_or_default();
        for items in shards {
            all.extend(items);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_shard_gives_items_back_and_taking_empties_every_shard() {
        let sharded = Sharded::new(3);
        assert_eq!((sharded.push(1), sharded.push(2), sharded.push(3)), (Ok(1), Ok(2), Ok(3)));
        assert_eq!(sharded.push(4), Err(4), "this thread's shard is full");
        let accepted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    if sharded.push(10).is_ok() {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let all = sharded.take();
        let mine: Vec<_> = all.iter().filter(|&&item| item < 10).collect();
        assert_eq!(mine, [&1, &2, &3], "one thread's items stay in order");
        assert_eq!(all.len(), 3 + accepted.into_inner(), "every item pushed is taken once");
        assert!(sharded.take().is_empty());
        assert_eq!(sharded.push(5), Ok(1), "room again after taking");
    }
}
