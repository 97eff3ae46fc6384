//! The gateway's own request timings, fed to the performance service (its SLOs, statistics
//! and auto-scaling read them) without slowing the data plane.
//!
//! A request's end records one sample with a `try_send` on a bounded channel: never
//! awaited, never blocking; when the channel is full the sample is dropped and counted
//! (`pake_gateway_samples_dropped_total`). A task drains the channel once a second and
//! hands the batch to a [`SampleSink`]: the performance service itself when it runs in the
//! same process, or whatever else `pake serve` wires in. Both HTTP paths record through
//! [`crate::proxy::RouteMetrics::record`], so they feed alike.

use axum::http::Method;
use prometheus_client::metrics::counter::Counter;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Samples waiting for the next batch, at most; beyond, new ones are dropped.
pub const QUEUE: usize = 65_536;
/// The largest batch the performance contract's `ingestSamples` takes: a sink that sends
/// batches over HTTP sends them in pieces of this size. A sink in process takes each
/// second's samples whole, so that the service merges its sketches once a second, not
/// once per piece.
pub const MAX_BATCH: usize = 5_000;
/// How often the queue is drained.
pub const EVERY: Duration = Duration::from_secs(1);

/// One proxied request, as the gateway saw it.
#[derive(Clone, Debug)]
pub struct RequestSample {
    pub service: Arc<str>,
    /// The route's path prefix (`/search`), not the request's path: a bounded set.
    pub route: Arc<str>,
    pub method: Method,
    pub status: u16,
    pub latency: Duration,
    /// The registry instance whose answer was relayed; none when the gateway answered
    /// itself (no route, a refusal, a cache hit, every try failed).
    pub instance: Option<uuid::Uuid>,
    pub at: SystemTime,
}

/// Where batches of samples go.
pub trait SampleSink: std::fmt::Debug + Send + Sync + 'static {
    /// Delivers one batch; an error is counted and logged, and the batch dropped.
    fn deliver(&self, samples: Vec<RequestSample>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// The data plane's end of the feed.
#[derive(Clone)]
pub struct SampleFeed {
    sender: tokio::sync::mpsc::Sender<RequestSample>,
    dropped: Counter,
}

impl std::fmt::Debug for SampleFeed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("SampleFeed").finish_non_exhaustive()
    }
}

impl SampleFeed {
    /// A feed into `sink`, drained by a task spawned on the current runtime; its counters
    /// are registered in `metrics`.
    pub fn start(
        sink: Arc<dyn SampleSink>,
        metrics: &pake_observe::Metrics,
    ) -> (SampleFeed, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = tokio::sync::mpsc::channel(QUEUE);
        let [dropped, delivered, failed] = [Counter::default(), Counter::default(), Counter::default()];
        metrics.register(
            "samples_dropped",
            "Request samples dropped because the feed's queue was full",
            dropped.clone(),
        );
        metrics.register(
            "samples_delivered",
            "Request samples delivered to the performance service",
            delivered.clone(),
        );
        metrics.register(
            "samples_failed",
            "Request samples lost because their batch could not be delivered",
            failed.clone(),
        );
        let task = tokio::spawn(drain(receiver, sink, delivered, failed));
        (SampleFeed { sender, dropped }, task)
    }

    /// Records one sample, or counts it dropped: never waits.
    pub fn record(&self, sample: RequestSample) {
        if self.sender.try_send(sample).is_err() {
            self.dropped.inc();
        }
    }
}

async fn drain(
    mut receiver: tokio::sync::mpsc::Receiver<RequestSample>,
    sink: Arc<dyn SampleSink>,
    delivered: Counter,
    failed: Counter,
) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // What was queued by the tick, as one batch: samples that arrive while it is
        // delivered wait for the next tick, so that a busy gateway still delivers once a
        // second rather than in a loop of small batches. Once the senders are gone, what
        // is queued is all there will be.
        let closed = receiver.is_closed();
        let queued = receiver.len();
        if queued > 0 {
            let mut batch = Vec::with_capacity(queued);
            while batch.len() < queued
                && let Ok(sample) = receiver.try_recv()
            {
                batch.push(sample);
            }
            let count = batch.len() as u64;
            if let Err(error) = sink.deliver(batch).await {
                failed.inc_by(count);
                tracing::warn!(%error, samples = count, "request samples could not be delivered");
            } else {
                delivered.inc_by(count);
            }
        }
        if closed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;

    /// A sink that notes when each batch came and how big it was; while a batch is being
    /// delivered, more requests end (it records samples into the feed), as on a busy gateway.
    #[derive(Debug, Default)]
    struct Busy {
        feed: OnceLock<SampleFeed>,
        deliveries: Mutex<Vec<(Instant, usize)>>,
    }

    fn sample() -> RequestSample {
        RequestSample {
            service: "search".into(),
            route: "/search".into(),
            method: Method::GET,
            status: 200,
            latency: Duration::from_millis(2),
            instance: None,
            at: SystemTime::now(),
        }
    }

    impl SampleSink for Busy {
        fn deliver(
            &self,
            samples: Vec<RequestSample>,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            self.deliveries.lock().unwrap().push((Instant::now(), samples.len()));
            for _ in 0..10 {
                self.feed.get().unwrap().record(sample());
            }
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn a_busy_feed_delivers_once_a_tick_and_loses_nothing() {
        let sink = Arc::new(Busy::default());
        let (feed, task) = SampleFeed::start(sink.clone(), &pake_observe::Metrics::new("gateway"));
        sink.feed.set(feed.clone()).unwrap();
        for _ in 0..10 {
            feed.record(sample());
        }
        tokio::time::sleep(EVERY * 2 + EVERY / 2).await;
        let deliveries = sink.deliveries.lock().unwrap().clone();
        // The first tick is at once; then one a second, each with what arrived meanwhile.
        assert_eq!(deliveries.iter().map(|(_, n)| *n).collect::<Vec<_>>(), vec![10, 10, 10], "{deliveries:?}");
        for pair in deliveries.windows(2) {
            let apart = pair[1].0 - pair[0].0;
            assert!(apart >= EVERY * 9 / 10, "deliveries {apart:?} apart: samples that arrive during a delivery wait");
        }
        drop((feed, sink));
        task.abort();
    }
}
