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
/// Samples handed to the sink at once, at most.
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
        // Everything queued by now, in batches of at most MAX_BATCH.
        while !receiver.is_empty() {
            let mut batch = Vec::with_capacity(receiver.len().min(MAX_BATCH));
            while batch.len() < MAX_BATCH
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
        if receiver.is_closed() {
            return;
        }
    }
}
