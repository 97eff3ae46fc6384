//! The gateway's own request timings, fed to the performance service (its SLOs, statistics
//! and auto-scaling read them) without slowing the data plane.
//!
//! A request's end records one sample into its thread's buffer ([`pake_observe::shards`]),
//! never awaited; a buffer holding a second's worth ([`QUEUE`]) drops further samples and
//! counts them (`pake_gateway_samples_dropped_total`). A task takes every buffer once a
//! second and hands the samples, as one batch, to a [`SampleSink`]: the performance service
//! itself when it runs in the same process, or whatever else `pake serve` wires in. Both
//! HTTP paths record through [`crate::proxy::RouteMetrics::record`], so they feed alike.

use axum::http::Method;
use pake_observe::shards::Sharded;
use prometheus_client::metrics::counter::Counter;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Samples one shard holds between two deliveries, at most; beyond, new ones are dropped.
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
    /// The route's service and prefix, one value per route that its samples share.
    pub labels: Arc<SampleLabels>,
    pub method: Method,
    pub status: u16,
    pub latency: Duration,
    /// The registry instance whose answer was relayed; none when the gateway answered
    /// itself (no route, a refusal, a cache hit, every try failed).
    pub instance: Option<uuid::Uuid>,
    pub at: SystemTime,
}

/// What names a route's samples: its service, and its path prefix (`/search`), not the
/// request's path: a bounded set.
#[derive(Debug, PartialEq, Eq)]
pub struct SampleLabels {
    pub service: String,
    pub route: String,
}

impl SampleLabels {
    pub fn new(service: &str, route: &str) -> Arc<SampleLabels> {
        Arc::new(SampleLabels { service: service.to_string(), route: route.to_string() })
    }
}

/// Where batches of samples go.
pub trait SampleSink: std::fmt::Debug + Send + Sync + 'static {
    /// Delivers one batch; an error is counted and logged, and the batch dropped.
    fn deliver(&self, samples: Vec<RequestSample>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;
}

/// The data plane's end of the feed.
#[derive(Clone)]
pub struct SampleFeed {
    shards: Arc<Sharded<RequestSample>>,
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
        let shards = Arc::new(Sharded::new(QUEUE));
        let [dropped, delivered, failed] = [Counter::default(), Counter::default(), Counter::default()];
        metrics.register(
            "samples_dropped",
            "Request samples dropped because the feed's buffer was full",
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
        let task = tokio::spawn(drain(shards.clone(), sink, delivered, failed));
        (SampleFeed { shards, dropped }, task)
    }

    /// Records one sample, or counts it dropped: never waits on another thread.
    pub fn record(&self, sample: RequestSample) {
        if self.shards.push(sample).is_err() {
            self.dropped.inc();
        }
    }
}

/// Once a tick, every shard's samples as one batch to `sink`; ends once every
/// [`SampleFeed`] is gone, after delivering what they recorded.
async fn drain(shards: Arc<Sharded<RequestSample>>, sink: Arc<dyn SampleSink>, delivered: Counter, failed: Counter) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Once only this task holds the shards, nothing more will be recorded.
        let gone = Arc::strong_count(&shards) == 1;
        // What was recorded by the tick: samples recorded while it is delivered wait for
        // the next tick, so that a busy gateway still delivers once a second.
        let batch = shards.take();
        if !batch.is_empty() {
            let count = batch.len() as u64;
            if let Err(error) = sink.deliver(batch).await {
                failed.inc_by(count);
                tracing::warn!(%error, samples = count, "request samples could not be delivered");
            } else {
                delivered.inc_by(count);
            }
        }
        if gone {
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
            labels: SampleLabels::new("search", "/search"),
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

    /// Keeps every batch.
    #[derive(Debug, Default)]
    struct Kept(Mutex<Vec<usize>>);

    impl SampleSink for Kept {
        fn deliver(
            &self,
            samples: Vec<RequestSample>,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            self.0.lock().unwrap().push(samples.len());
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn a_full_shard_counts_its_drops() {
        let sink = Arc::new(Kept::default());
        let (feed, task) = SampleFeed::start(sink.clone(), &pake_observe::Metrics::new("gateway"));
        // No await yet: the drain has not run, so this thread's shard fills up.
        for _ in 0..QUEUE + 5 {
            feed.record(sample());
        }
        assert_eq!(feed.dropped.get(), 5, "a shard holds a second's worth, and counts what it drops");
        // Once the feed is gone, the drain delivers what it held, then ends.
        drop(feed);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the drain ends").unwrap();
        assert_eq!(*sink.0.lock().unwrap(), vec![QUEUE]);
    }

    #[tokio::test]
    async fn samples_of_many_threads_arrive_in_one_batch() {
        let sink = Arc::new(Kept::default());
        let (feed, task) = SampleFeed::start(sink.clone(), &pake_observe::Metrics::new("gateway"));
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..1000).for_each(|_| feed.record(sample())));
            }
        });
        assert_eq!(feed.dropped.get(), 0);
        drop(feed);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the drain ends").unwrap();
        assert_eq!(*sink.0.lock().unwrap(), vec![4000], "one batch at the first tick");
    }
}
