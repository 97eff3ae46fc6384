//! A breaker on the store. Without it, every request during a database outage waits for
//! the pool's acquire timeout (2 s) before its 503. Once a request or a background task
//! finds the store unreachable ([`StoreError::store_is_down`]), the breaker opens: calls
//! through [`StoreBreaker::guard`] fail at once with [`StoreError::Down`], and
//! [`probe_loop`] pings the store in the background until it answers; it then reloads the
//! snapshot (writes committed while it was away, or whose refresh failed, show again) and
//! closes the breaker.

use crate::snapshot::SnapshotCell;
use crate::store::{Store, StoreError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

/// Pause between probes while the breaker is open.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How long a probe (a ping, then a snapshot reload) may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct StoreBreaker {
    open: AtomicBool,
    opened: Notify,
    /// How many times the breaker opened, for tests and logs.
    trips: AtomicU64,
}

impl StoreBreaker {
    pub fn new() -> StoreBreaker {
        StoreBreaker::default()
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    pub fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }

    /// Runs a store call unless the breaker is open, and opens it when the call finds the
    /// store unreachable.
    pub async fn guard<T>(&self, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        if self.is_open() {
            return Err(StoreError::Down);
        }
        let result = call.await;
        self.record(&result);
        result
    }

    /// Opens the breaker if `result` says the store is unreachable.
    pub fn record<T>(&self, result: &Result<T, StoreError>) {
        if let Err(error) = result
            && error.store_is_down()
            && !matches!(error, StoreError::Down)
            && !self.open.swap(true, Ordering::AcqRel)
        {
            self.trips.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "the store is unreachable: failing fast and probing until it answers");
            self.opened.notify_one();
        }
    }

    fn close(&self) {
        if self.open.swap(false, Ordering::AcqRel) {
            tracing::info!("the store answers again: breaker closed");
        }
    }
}

/// While the breaker is open, pings the store every [`PROBE_INTERVAL`]; when a ping and a
/// full snapshot reload succeed, closes it.
pub async fn probe_loop(breaker: Arc<StoreBreaker>, store: Store, snapshot: Arc<SnapshotCell>) {
    loop {
        while !breaker.is_open() {
            breaker.opened.notified().await;
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
        let probe = tokio::time::timeout(PROBE_TIMEOUT, async {
            store.ping().await?;
            snapshot.reload_all(&store).await
        });
        match probe.await {
            Ok(Ok(())) => breaker.close(),
            Ok(Err(error)) => tracing::debug!(%error, "store probe failed"),
            Err(_) => tracing::debug!("store probe timed out"),
        }
    }
}
