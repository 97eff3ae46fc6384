//! The gateway's own request timings, fed to the performance service (its SLOs, statistics
//! and auto-scaling read them) without slowing the data plane.
//!
//! A request's end is recorded into its thread's part of the feed
//! ([`pake_observe::shards`]), never awaited; a task takes every thread's part once a second
//! and hands it, as one batch, to a [`SampleSink`]. What is recorded depends on the sink:
//! - one sample per request, for a sink that sends samples on (the contract's
//!   `ingestSamples`, over HTTP): a thread's buffer holds a second's worth ([`QUEUE`]) and
//!   drops further samples, counting them (`pake_gateway_samples_dropped_total`);
//! - for a sink that keeps latency sketches per route, status class and time bucket (the
//!   performance service in this process, see [`Folding`]), each request's latency is
//!   folded into its thread's sketch of that key at once: what the service would make of
//!   the samples, without a sample per request to carry, hand over and take apart.
//!
//! Both HTTP paths record through [`crate::proxy::RouteMetrics::record`], so they feed
//! alike.

use axum::http::Method;
use pake_observe::shards::{PerThread, Sharded};
use pake_observe::sketch::LatencySketch;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

impl RequestSample {
    /// When the request arrived: its end less its latency.
    pub fn received(&self) -> SystemTime {
        received(self.at, self.latency)
    }

    /// The latency in milliseconds, as samples and folded sketches carry it.
    pub fn latency_ms(&self) -> f64 {
        millis(self.latency)
    }
}

/// When a request that ended `at` after `latency` arrived.
fn received(at: SystemTime, latency: Duration) -> SystemTime {
    at.checked_sub(latency).unwrap_or(at)
}

/// `latency` in milliseconds (from nanoseconds: 1.003 s is 1003 ms exactly).
fn millis(latency: Duration) -> f64 {
    latency.as_nanos() as f64 / 1e6
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

/// How a sink that keeps sketches wants request timings folded.
#[derive(Debug, Clone, Copy)]
pub struct Folding {
    /// The width of the time buckets, in milliseconds: the finest the sink keeps.
    pub bucket_ms: i64,
    /// Whether a request of this method counts: what the sink could take as a sample.
    pub counts: fn(&Method) -> bool,
}

/// The latencies (milliseconds) of one route's requests of one status class that arrived
/// in one time bucket, as one thread folded them.
#[derive(Debug, Clone)]
pub struct Folded {
    pub labels: Arc<SampleLabels>,
    /// 1 to 5: 1xx to 5xx.
    pub status_class: u16,
    /// The bucket's start, Unix milliseconds.
    pub bucket_ms: i64,
    pub latencies: LatencySketch,
}

/// What one thread folded since the last delivery.
#[derive(Default)]
struct Folds {
    folded: Vec<Folded>,
    /// Where each key's fold is: by route (its labels' address: the fold holds them, so the
    /// address stays theirs), status class and bucket.
    at: HashMap<(usize, u16, i64), usize>,
    /// The fold used last: a thread's requests mostly go on to the same one.
    last: usize,
}

impl Folds {
    fn add(&mut self, labels: &Arc<SampleLabels>, status_class: u16, bucket_ms: i64, latency_ms: f64) {
        if let Some(fold) = self.folded.get_mut(self.last)
            && Arc::ptr_eq(&fold.labels, labels)
            && (fold.status_class, fold.bucket_ms) == (status_class, bucket_ms)
        {
            fold.latencies.add(latency_ms);
            return;
        }
        let key = (Arc::as_ptr(labels) as usize, status_class, bucket_ms);
        let next = self.folded.len();
        let at = *self.at.entry(key).or_insert(next);
        if at == next {
            self.folded.push(Folded {
                labels: labels.clone(),
                status_class,
                bucket_ms,
                latencies: LatencySketch::new(),
            });
        }
        self.folded[at].latencies.add(latency_ms);
        self.last = at;
    }
}

/// The methods with a fixed representation, for the table of which of them a folding
/// sink counts.
const STANDARD_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
    Method::TRACE,
    Method::CONNECT,
];

thread_local! {
    /// This thread's pairing of the monotonic clock with the wall clock, renewed once a
    /// second: a request's end in wall-clock time without a second clock read.
    static WALL: std::cell::Cell<Option<(Instant, SystemTime)>> = const { std::cell::Cell::new(None) };
}

/// The wall-clock time of `instant`, a moment just past.
fn wall_time(instant: Instant) -> SystemTime {
    WALL.with(|wall| {
        if let Some((at, time)) = wall.get()
            && let Some(since) = instant.checked_duration_since(at)
            && since < Duration::from_secs(1)
        {
            return time + since;
        }
        let now = SystemTime::now();
        wall.set(Some((instant, now)));
        now
    })
}

/// Where batches of samples go.
pub trait SampleSink: std::fmt::Debug + Send + Sync + 'static {
    /// Delivers one batch; an error is counted and logged, and the batch dropped.
    fn deliver(&self, samples: Vec<RequestSample>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;

    /// Some for a sink that takes request timings folded into sketches
    /// ([`SampleSink::deliver_folded`]) instead of samples.
    fn folding(&self) -> Option<Folding> {
        None
    }

    /// Delivers one second's folded timings; called only when [`SampleSink::folding`] is
    /// some.
    fn deliver_folded(&self, folded: Vec<Folded>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        drop(folded);
        Box::pin(async { Err("this sink takes samples, not folded timings".to_string()) })
    }
}

/// What the threads record into.
enum Parts {
    Samples(Sharded<RequestSample>),
    /// With the standard methods the sink counts.
    Folds(PerThread<Folds>, Folding, Vec<Method>),
}

/// The data plane's end of the feed.
#[derive(Clone)]
pub struct SampleFeed {
    parts: Arc<Parts>,
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
        let parts = Arc::new(match sink.folding() {
            Some(folding) => {
                let counted = STANDARD_METHODS.iter().filter(|method| (folding.counts)(method)).cloned().collect();
                Parts::Folds(PerThread::new(), folding, counted)
            }
            None => Parts::Samples(Sharded::new(QUEUE)),
        });
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
        let task = tokio::spawn(drain(parts.clone(), sink, delivered, failed));
        (SampleFeed { parts, dropped }, task)
    }

    /// Records one request's answer, which ended at `ended` (see [`RequestSample`] for the
    /// other fields), or counts it dropped: never waits on another thread.
    pub fn record(
        &self,
        labels: &Arc<SampleLabels>,
        method: &Method,
        status: u16,
        latency: Duration,
        instance: Option<uuid::Uuid>,
        ended: Instant,
    ) {
        let at = wall_time(ended);
        match &*self.parts {
            Parts::Samples(shards) => {
                let sample =
                    RequestSample { labels: labels.clone(), method: method.clone(), status, latency, instance, at };
                if shards.push(sample).is_err() {
                    self.dropped.inc();
                }
            }
            Parts::Folds(folds, folding, counted) => {
                let counts =
                    counted.contains(method) || (!STANDARD_METHODS.contains(method) && (folding.counts)(method));
                if !counts {
                    return;
                }
                let received_ms = received(at, latency)
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis() as i64);
                let bucket_ms = received_ms.div_euclid(folding.bucket_ms) * folding.bucket_ms;
                let status_class = (status / 100).clamp(1, 5);
                folds.with(|folds| folds.add(labels, status_class, bucket_ms, millis(latency)));
            }
        }
    }
}

/// Once a tick, every thread's part as one batch to `sink`; ends once every
/// [`SampleFeed`] is gone, after delivering what they recorded.
async fn drain(parts: Arc<Parts>, sink: Arc<dyn SampleSink>, delivered: Counter, failed: Counter) {
    let mut ticks = tokio::time::interval(EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Once only this task holds the parts, nothing more will be recorded.
        let gone = Arc::strong_count(&parts) == 1;
        // What was recorded by the tick: what is recorded while it is delivered waits for
        // the next tick, so that a busy gateway still delivers once a second.
        let (count, outcome) = match &*parts {
            Parts::Samples(shards) => {
                let batch = shards.take();
                let count = batch.len() as u64;
                (count, if batch.is_empty() { Ok(()) } else { sink.deliver(batch).await })
            }
            Parts::Folds(folds, _, _) => {
                let batch: Vec<Folded> =
                    folds.take_with(|_| Folds::default()).into_iter().flat_map(|folds| folds.folded).collect();
                let count = batch.iter().map(|folded| folded.latencies.count()).sum();
                (count, if batch.is_empty() { Ok(()) } else { sink.deliver_folded(batch).await })
            }
        };
        match outcome {
            Ok(()) => {
                delivered.inc_by(count);
            }
            Err(error) => {
                failed.inc_by(count);
                tracing::warn!(%error, samples = count, "request samples could not be delivered");
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

    /// One request of the route `/search`.
    fn record(feed: &SampleFeed) {
        static LABELS: OnceLock<Arc<SampleLabels>> = OnceLock::new();
        let labels = LABELS.get_or_init(|| SampleLabels::new("search", "/search"));
        feed.record(labels, &Method::GET, 200, Duration::from_millis(2), None, Instant::now());
    }

    impl SampleSink for Busy {
        fn deliver(
            &self,
            samples: Vec<RequestSample>,
        ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            self.deliveries.lock().unwrap().push((Instant::now(), samples.len()));
            for _ in 0..10 {
                record(self.feed.get().unwrap());
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
            record(&feed);
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
            record(&feed);
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
                scope.spawn(|| (0..1000).for_each(|_| record(&feed)));
            }
        });
        assert_eq!(feed.dropped.get(), 0);
        drop(feed);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the drain ends").unwrap();
        assert_eq!(*sink.0.lock().unwrap(), vec![4000], "one batch at the first tick");
    }

    /// Takes folded timings, and counts only GET and POST.
    #[derive(Debug, Default)]
    struct Folder(Mutex<Vec<Folded>>);

    impl SampleSink for Folder {
        fn deliver(&self, _: Vec<RequestSample>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            Box::pin(async { Err("a folding sink gets no samples".to_string()) })
        }

        fn folding(&self) -> Option<Folding> {
            Some(Folding { bucket_ms: 10_000, counts: |method| *method == Method::GET || *method == Method::POST })
        }

        fn deliver_folded(&self, folded: Vec<Folded>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
            self.0.lock().unwrap().extend(folded);
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn a_folding_sink_gets_per_thread_sketches_by_route_status_class_and_bucket() {
        let sink = Arc::new(Folder::default());
        let metrics = pake_observe::Metrics::new("gateway");
        let (feed, task) = SampleFeed::start(sink.clone(), &metrics);
        let (search, books) = (SampleLabels::new("search", "/search"), SampleLabels::new("books", "/books"));
        std::thread::scope(|scope| {
            for thread in 0..4u64 {
                let (feed, search, books) = (&feed, &search, &books);
                scope.spawn(move || {
                    for i in 1..=100u64 {
                        let now = Instant::now();
                        feed.record(search, &Method::GET, 200, Duration::from_millis(i), None, now);
                        feed.record(search, &Method::POST, 503, Duration::from_millis(1000 + thread), None, now);
                        feed.record(books, &Method::GET, 404, Duration::from_micros(500), None, now);
                        // Not methods the sink counts.
                        feed.record(books, &Method::DELETE, 200, Duration::from_millis(1), None, now);
                        let purge = Method::from_bytes(b"PURGE").unwrap();
                        feed.record(books, &purge, 200, Duration::from_millis(1), None, now);
                    }
                });
            }
        });
        drop(feed);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the drain ends").unwrap();
        let folded = sink.0.lock().unwrap().clone();
        let mut totals: HashMap<(String, u16), LatencySketch> = HashMap::new();
        for fold in &folded {
            assert_eq!(fold.bucket_ms % 10_000, 0, "buckets start on the sink's width");
            let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64;
            assert!((now - 20_000..=now).contains(&fold.bucket_ms), "{} vs {now}", fold.bucket_ms);
            totals.entry((fold.labels.route.clone(), fold.status_class)).or_default().merge(&fold.latencies).unwrap();
        }
        let mut counts: Vec<(String, u16, u64)> =
            totals.iter().map(|((route, class), sketch)| (route.clone(), *class, sketch.count())).collect();
        counts.sort();
        assert_eq!(
            counts,
            vec![("/books".to_string(), 4, 400), ("/search".to_string(), 2, 400), ("/search".to_string(), 5, 400)]
        );
        // The folded latencies are the requests' own, in milliseconds, within the sketch's 1 %.
        let ok = &totals[&("/search".to_string(), 2)];
        let median = ok.quantile(0.5).unwrap();
        assert!((median - 50.0).abs() <= 50.0 * 0.011, "{median}");
        assert_eq!(ok.max(), Some(100.0));
        assert_eq!(totals[&("/search".to_string(), 5)].max(), Some(1003.0));
        let delivered = metrics.render();
        assert!(delivered.contains("samples_delivered_total 1200"), "{delivered}");
    }
}
