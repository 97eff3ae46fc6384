//! Coalescing of concurrent misses: one leader fetches, followers wait for its response.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::entry::CachedResponse;
use crate::key::CacheKey;

/// The result of [`crate::ResponseCache::join`].
#[derive(Debug)]
pub enum Flight {
    /// No one is fetching this key: fetch it, store it, then [`FlightGuard::complete`].
    Leader(FlightGuard),
    /// Another request fetched the response meanwhile: serve this.
    Shared(Arc<CachedResponse>),
    /// The leader could not share a response (not cacheable, too large, failed, dropped) or
    /// did not finish within the wait: fetch yourself.
    Alone,
}

#[derive(Clone, Debug)]
enum Outcome {
    Pending,
    Done(Option<Arc<CachedResponse>>),
}

type Slot = Arc<watch::Sender<Outcome>>;

/// The requests in flight, by key.
#[derive(Default)]
pub(crate) struct Flights {
    in_flight: Mutex<HashMap<CacheKey, Slot>>,
}

impl Flights {
    /// Becomes the leader for `key`, or waits up to `wait` for the current leader.
    pub(crate) async fn join(self: &Arc<Self>, key: &CacheKey, wait: Duration) -> Flight {
        let mut outcome = {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            match in_flight.entry(key.clone()) {
                Entry::Occupied(slot) => slot.get().subscribe(),
                Entry::Vacant(vacant) => {
                    let slot = Arc::new(watch::channel(Outcome::Pending).0);
                    vacant.insert(slot.clone());
                    return Flight::Leader(FlightGuard {
                        flights: self.clone(),
                        key: key.clone(),
                        slot,
                        finished: false,
                    });
                }
            }
        };
        // Subscribed under the lock, before the leader can finish: its outcome cannot be missed.
        match tokio::time::timeout(wait, outcome.wait_for(|outcome| matches!(outcome, Outcome::Done(_)))).await {
            Ok(Ok(done)) => match &*done {
                Outcome::Done(Some(response)) => Flight::Shared(response.clone()),
                _ => Flight::Alone,
            },
            // Timed out, or the leader vanished without an outcome.
            _ => Flight::Alone,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// Held by the leader of a key. Finishing it (by [`FlightGuard::complete`] or by dropping it,
/// which shares nothing) releases the followers and lets the next request for the key lead.
#[derive(Debug)]
pub struct FlightGuard {
    flights: Arc<Flights>,
    key: CacheKey,
    slot: Slot,
    finished: bool,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights").finish_non_exhaustive()
    }
}

impl FlightGuard {
    /// Shares `response` with the followers (`None`: they fetch themselves).
    pub fn complete(mut self, response: Option<Arc<CachedResponse>>) {
        self.finish(response);
    }

    /// The key being fetched.
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Followers currently waiting.
    pub fn waiting(&self) -> usize {
        self.slot.receiver_count()
    }

    fn finish(&mut self, response: Option<Arc<CachedResponse>>) {
        if self.finished {
            return;
        }
        self.finished = true;
        {
            let mut in_flight = self.flights.in_flight.lock().unwrap_or_else(PoisonError::into_inner);
            if in_flight.get(&self.key).is_some_and(|slot| Arc::ptr_eq(slot, &self.slot)) {
                in_flight.remove(&self.key);
            }
        }
        self.slot.send_replace(Outcome::Done(response));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.finish(None);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn response() -> Arc<CachedResponse> {
        Arc::new(CachedResponse {
            status: 200,
            headers: vec![],
            body: Bytes::from_static(b"x"),
            tags: vec![],
            route: "r".into(),
            stored_at_ms: 0,
            expires_at_ms: i64::MAX,
        })
    }

    #[tokio::test]
    async fn leader_then_next_leader_after_completion() {
        let flights = Arc::new(Flights::default());
        let key = CacheKey::new("GET", "/a", "-", []);
        let Flight::Leader(guard) = flights.join(&key, Duration::from_secs(1)).await else {
            panic!("first join leads");
        };
        assert_eq!(guard.key(), &key);
        guard.complete(Some(response()));
        assert_eq!(flights.len(), 0, "completion frees the key");
        assert!(matches!(flights.join(&key, Duration::from_secs(1)).await, Flight::Leader(_)));
    }

    #[tokio::test]
    async fn follower_wait_is_bounded() {
        let flights = Arc::new(Flights::default());
        let key = CacheKey::new("GET", "/slow", "-", []);
        let leader = flights.join(&key, Duration::from_secs(1)).await;
        let started = std::time::Instant::now();
        assert!(matches!(flights.join(&key, Duration::from_millis(50)).await, Flight::Alone));
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(leader);
        assert_eq!(flights.len(), 0);
    }
}
