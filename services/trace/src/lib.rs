//! PAKE's distributed tracing: the W3C trace context every service shares ([`w3c`]) and
//! one span pipeline per process ([`Telemetry`]).
//!
//! Services record spans with the OpenTelemetry API through the tracer
//! [`Telemetry::tracer`] gives them (one per service name, all feeding the same pipeline).
//! A finished span the sampler kept is gathered, without waiting, with others that ended
//! on the same thread; a thread's spans go on a bounded queue a chunk at a time (a full
//! queue drops the chunk, counted), so that recording threads share no queue position
//! per span. One task drains the queue in batches, and every batch delay gathers what
//! threads still hold, to the OTLP/HTTP collector at `PAKE_OTLP_ENDPOINT` when set and to
//! every [`SpanSink`] registered (the monitoring service's trace store). With no sink to
//! feed, a chunk is written as OTLP protobuf by the thread that filled it, and its spans
//! freed there.
//!
//! Sampling is parent-based, with `PAKE_TRACE_SAMPLE_RATIO` for new traces; what it
//! leaves out is still recorded while its local root runs, and exported anyway when the
//! root ends in error or took longer than `PAKE_TRACE_SLOW_MS`.

pub mod ids;
mod otlp;
mod record;
mod sampling;
pub mod server;
mod tail;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod w3c;

/// The OpenTelemetry API, for recording spans with a [`Tracer`].
pub use opentelemetry;
pub use opentelemetry::trace::{SpanKind, Status};
pub use opentelemetry_sdk::trace::{SdkTracer as Tracer, Span as SdkSpan, SpanData};
pub use record::{Recorder, Recording};

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanLimits, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use record::scope;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How a process traces.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// Whether services record spans at all (`PAKE_TRACING=off` turns them off).
    pub enabled: bool,
    /// The OTLP/HTTP collector's base URL (spans go to its `/v1/traces`); none: no export
    /// over the network.
    pub otlp_endpoint: Option<String>,
    /// The share of new traces sampled, 0 to 1.
    pub sample_ratio: f64,
    /// A local trace whose root takes longer than this is exported even when not sampled.
    pub slow: Duration,
    /// Finished spans waiting for export; beyond it they are dropped (counted).
    pub queue_capacity: usize,
    /// Unsampled spans held for the tail rule; beyond it they are dropped (counted).
    pub tail_capacity: usize,
    /// The most spans handed on at once.
    pub batch_size: usize,
    /// How long a batch waits to fill once its first span arrived.
    pub batch_delay: Duration,
}

impl Default for TraceConfig {
    fn default() -> Self {
        TraceConfig {
            enabled: true,
            otlp_endpoint: None,
            sample_ratio: 1.0,
            slow: Duration::from_millis(1000),
            queue_capacity: 32 * 1024,
            tail_capacity: 16 * 1024,
            batch_size: 1024,
            batch_delay: Duration::from_millis(100),
        }
    }
}

impl TraceConfig {
    /// The defaults with `PAKE_TRACING` (`on` or `off`), `PAKE_OTLP_ENDPOINT`,
    /// `PAKE_TRACE_SAMPLE_RATIO` and `PAKE_TRACE_SLOW_MS` applied; a malformed value is an
    /// error naming the variable.
    pub fn from_env() -> Result<TraceConfig, String> {
        TraceConfig::from_vars(|name| std::env::var(name).ok())
    }

    /// [`TraceConfig::from_env`] over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<TraceConfig, String> {
        let mut config = TraceConfig {
            otlp_endpoint: var("PAKE_OTLP_ENDPOINT").map(|url| url.trim().to_string()).filter(|url| !url.is_empty()),
            ..TraceConfig::default()
        };
        match var("PAKE_TRACING").as_deref().map(str::trim) {
            None | Some("on") => {}
            Some("off") => config.enabled = false,
            Some(other) => return Err(format!("PAKE_TRACING must be on or off, not {other:?}")),
        }
        if let Some(url) = &config.otlp_endpoint
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!("PAKE_OTLP_ENDPOINT must be an http:// or https:// URL, not {url:?}"));
        }
        if let Some(ratio) = var("PAKE_TRACE_SAMPLE_RATIO") {
            config.sample_ratio = ratio
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("PAKE_TRACE_SAMPLE_RATIO must be a number from 0 to 1, not {ratio:?}"))?;
        }
        if let Some(ms) = var("PAKE_TRACE_SLOW_MS") {
            let ms = ms
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("PAKE_TRACE_SLOW_MS must be a whole number of milliseconds, not {ms:?}"))?;
            config.slow = Duration::from_millis(ms);
        }
        Ok(config)
    }
}

/// A finished span and the service that recorded it.
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    /// The recording service's `service.name`.
    pub service: Arc<str>,
    pub span: SpanData,
}

/// A destination of finished spans besides OTLP (the monitoring service's trace store).
/// Batches are delivered one at a time, in order, from the pipeline's task.
pub trait SpanSink: Send + Sync + 'static {
    /// Takes a batch; an error is logged and the batch is not retried.
    fn deliver<'a>(
        &'a self,
        batch: &'a [FinishedSpan],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;
}

/// What the queue carries: chunks of spans, and flush requests answered once everything
/// before them has been handed on.
enum Item {
    Spans(Vec<FinishedSpan>),
    /// A chunk already written as an `ExportTraceServiceRequest`, and how many spans it holds.
    Encoded(bytes::Bytes, usize),
    Flush(oneshot::Sender<()>),
}

/// Spans that ended on the threads of one shard, not yet queued.
type Shard = Mutex<Vec<FinishedSpan>>;

/// The parts every service's processor shares.
#[derive(Debug)]
struct Shared {
    queue: mpsc::Sender<Item>,
    /// Finished spans gathered per thread (a thread keeps to one shard), queued a chunk at
    /// a time.
    shards: Box<[Shard]>,
    /// The spans a shard gathers before it queues them.
    chunk: usize,
    /// Whether a sink takes spans (they then travel as `SpanData`); else, with OTLP, a
    /// chunk is written as protobuf where it filled.
    sinks_present: AtomicBool,
    otlp: bool,
    /// Wakes the export task early: a batch's worth of spans is waiting, or a flush.
    wake: Arc<tokio::sync::Notify>,
    /// The queue's free room (in chunks) at or below which a batch's worth is waiting.
    full_batch_below: usize,
    tail: tail::Tail,
    dropped: Counter,
}

impl Shared {
    /// Takes a span that ended: sampled, to the queue; else to the tail rule, which may
    /// keep its local trace.
    fn finish(&self, service: &Arc<str>, span: SpanData) {
        if span.span_context.is_sampled() {
            self.push(service, span);
            return;
        }
        let offered = self.tail.offer(span);
        if offered.overflow > 0 {
            self.dropped.inc_by(offered.overflow as u64);
        }
        for span in offered.keep {
            self.push(service, span);
        }
    }

    /// Gathers a span without waiting, in the calling thread's shard, and queues the shard's
    /// spans once a chunk's worth. The export task is not woken for each chunk (a wake-up on
    /// another thread costs more than the chunk): it wakes every batch delay, or when a
    /// batch's worth is waiting.
    fn push(&self, service: &Arc<str>, span: SpanData) {
        let shard = &self.shards[shard_of_thread() % self.shards.len()];
        let chunk = {
            let mut spans = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            spans.push(FinishedSpan { service: service.clone(), span });
            if spans.len() < self.chunk {
                return;
            }
            std::mem::replace(&mut *spans, Vec::with_capacity(self.chunk))
        };
        self.queue_chunk(chunk);
    }

    /// Queues `spans` without waiting (no room: dropped, counted); written as protobuf
    /// first when nothing but OTLP takes them.
    fn queue_chunk(&self, spans: Vec<FinishedSpan>) {
        let count = spans.len();
        if count == 0 {
            return;
        }
        if self.queue.try_send(self.prepared(spans)).is_err() {
            self.dropped.inc_by(count as u64);
        } else if self.queue.capacity() <= self.full_batch_below {
            self.wake.notify_one();
        }
    }

    /// `spans` as the queue carries them.
    fn prepared(&self, spans: Vec<FinishedSpan>) -> Item {
        if self.otlp && !self.sinks_present.load(Ordering::Acquire) {
            Item::Encoded(otlp::encode_chunk(&spans), spans.len())
        } else {
            Item::Spans(spans)
        }
    }

    /// Takes every shard's spans, as the queue would carry them.
    fn gather(&self) -> Vec<Item> {
        let mut gathered = Vec::new();
        for shard in &self.shards {
            let spans = {
                let mut spans = shard.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if spans.is_empty() {
                    continue;
                }
                // Room for a chunk, as after a chunk is queued (not grown span by span).
                std::mem::replace(&mut *spans, Vec::with_capacity(self.chunk))
            };
            gathered.push(self.prepared(spans));
        }
        gathered
    }
}

/// The calling thread's shard number (threads are numbered as they first record).
fn shard_of_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SHARD.with(|shard| *shard)
}

/// The span processor of one service's provider: sampled spans to the queue, others to
/// the tail rule.
#[derive(Debug)]
struct Processor {
    service: Arc<str>,
    shared: Arc<Shared>,
}

impl SpanProcessor for Processor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.shared.finish(&self.service, span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

type Sinks = Arc<RwLock<Vec<Arc<dyn SpanSink>>>>;

/// A process's span pipeline. Start it once ([`Telemetry::start`]) and clone it freely.
#[derive(Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

struct Inner {
    config: TraceConfig,
    shared: Arc<Shared>,
    sinks: Sinks,
    sampler: sampling::HeadSampler,
    /// Each service's provider, and its name as every span of it carries it.
    providers: Mutex<HashMap<String, (SdkTracerProvider, Arc<str>)>>,
    counters: Counters,
}

/// The pipeline's counters.
struct Counters {
    dropped: Counter,
    exported: Counter,
    failures: Counter,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

/// Why the pipeline could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tracing: {}", self.0)
    }
}

impl std::error::Error for StartError {}

impl Telemetry {
    /// Starts the pipeline's export task (on the current Tokio runtime). Its counters are
    /// served where [`Telemetry::register_metrics`] puts them.
    pub fn start(config: TraceConfig) -> Result<Telemetry, StartError> {
        let dropped = Counter::default();
        let exported = Counter::default();
        let failures = Counter::default();
        let otlp = match &config.otlp_endpoint {
            Some(base) => Some(otlp::Otlp::new(base)?),
            None => None,
        };
        let counters = Counters { dropped: dropped.clone(), exported: exported.clone(), failures: failures.clone() };
        let capacity = config.queue_capacity.max(1);
        let batch_size = config.batch_size.max(1);
        // The queue holds at most `capacity` spans: as many chunks as fit.
        let chunk = CHUNK.min(capacity).min(batch_size);
        let chunks = (capacity / chunk).max(1);
        let (queue, receiver) = mpsc::channel(chunks);
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let shared = Arc::new(Shared {
            queue,
            shards: (0..(2 * threads).max(4)).map(|_| Mutex::new(Vec::new())).collect(),
            chunk,
            sinks_present: AtomicBool::new(false),
            otlp: otlp.is_some(),
            wake: Arc::default(),
            full_batch_below: chunks.saturating_sub((batch_size / chunk).max(1)),
            tail: tail::Tail::new(config.slow, config.tail_capacity),
            dropped,
        });
        let sinks: Sinks = Arc::default();
        let drain = Drain {
            receiver,
            shared: Arc::downgrade(&shared),
            wake: shared.wake.clone(),
            sinks: sinks.clone(),
            otlp,
            exported,
            failures,
            batch_size,
            batch_delay: config.batch_delay,
        };
        tokio::spawn(drain.run());
        Ok(Telemetry {
            inner: Arc::new(Inner {
                sampler: sampling::HeadSampler::new(config.sample_ratio),
                config,
                shared,
                sinks,
                providers: Mutex::default(),
                counters,
            }),
        })
    }

    /// Registers the pipeline's counters on `metrics` (the registry of the service that
    /// serves them): `trace_spans_dropped_total`, `trace_spans_exported_total` and
    /// `trace_export_failures_total`, under its prefix.
    pub fn register_metrics(&self, metrics: &pake_observe::Metrics) {
        let counters = &self.inner.counters;
        metrics.register(
            "trace_spans_dropped",
            "Finished spans dropped for want of room in the export queue or the tail-sampling buffer",
            counters.dropped.clone(),
        );
        metrics.register(
            "trace_spans_exported",
            "Finished spans handed to OTLP and the span sinks",
            counters.exported.clone(),
        );
        metrics.register(
            "trace_export_failures",
            "Batches an export destination (OTLP or a span sink) refused",
            counters.failures.clone(),
        );
    }

    /// How the pipeline was configured.
    pub fn config(&self) -> &TraceConfig {
        &self.inner.config
    }

    /// Whether services should record spans (else they are given no tracer).
    pub fn enabled(&self) -> bool {
        self.inner.config.enabled
    }

    /// The tracer of `service` (its spans carry `service.name` = `service`); every call
    /// for the same name shares one provider.
    pub fn tracer(&self, service: &str) -> Tracer {
        self.provider(service).0
    }

    /// The tracer of `service` and what records its spans as values ([`Recorder`]).
    pub fn recorder(&self, service: &str) -> Recorder {
        let (tracer, service) = self.provider(service);
        Recorder {
            shared: self.inner.shared.clone(),
            service,
            sampler: self.inner.sampler,
            scope: scope(),
            limits: SpanLimits::default(),
            tracer,
        }
    }

    /// The tracer of `service`'s provider (made on first use) and its name.
    fn provider(&self, service: &str) -> (Tracer, Arc<str>) {
        use opentelemetry::trace::TracerProvider as _;
        let mut providers = self.inner.providers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (provider, name) = providers.entry(service.to_string()).or_insert_with(|| {
            let name: Arc<str> = service.into();
            let provider = SdkTracerProvider::builder()
                .with_resource(Resource::builder_empty().with_service_name(service.to_string()).build())
                .with_sampler(self.inner.sampler)
                .with_id_generator(ids::FastIds)
                .with_span_processor(Processor { service: name.clone(), shared: self.inner.shared.clone() })
                .build();
            (provider, name)
        });
        (provider.tracer_with_scope(scope()), name.clone())
    }

    /// Adds a destination for every batch exported from now on (spans that ended before
    /// the call may not reach it).
    pub fn add_sink(&self, sink: Arc<dyn SpanSink>) {
        self.inner.sinks.write().unwrap_or_else(std::sync::PoisonError::into_inner).push(sink);
        self.inner.shared.sinks_present.store(true, Ordering::Release);
    }

    /// Hands spans recorded elsewhere (spans ingested through an API) to the pipeline, as
    /// if they had ended here; those that find no room are dropped (counted).
    pub fn submit(&self, spans: impl IntoIterator<Item = FinishedSpan>) {
        let shared = &self.inner.shared;
        let mut spans = spans.into_iter().peekable();
        while spans.peek().is_some() {
            // A chunk at a time, so that the queue's bound in spans holds.
            shared.queue_chunk(spans.by_ref().take(shared.chunk).collect());
        }
    }

    /// Waits until every span that ended before the call has been handed on.
    pub async fn flush(&self) {
        let (done, delivered) = oneshot::channel();
        if self.inner.shared.queue.send(Item::Flush(done)).await.is_ok() {
            self.inner.shared.wake.notify_one();
            let _ = delivered.await;
        }
    }
}

/// The spans a thread gathers before it queues them: few enough that writing them as
/// protobuf (where no sink takes them) holds a request up for well under a millisecond,
/// enough that the queue is touched once per hundred spans rather than per span.
pub(crate) const CHUNK: usize = 128;

/// The task that drains the queue.
struct Drain {
    receiver: mpsc::Receiver<Item>,
    /// Not the queue's sender: the task ends once every sender is gone.
    shared: std::sync::Weak<Shared>,
    wake: Arc<tokio::sync::Notify>,
    sinks: Sinks,
    otlp: Option<otlp::Otlp>,
    exported: Counter,
    failures: Counter,
    batch_size: usize,
    batch_delay: Duration,
}

/// What the drain hands on at once: spans as recorded, and chunks already written.
#[derive(Default)]
struct Batch {
    spans: Vec<FinishedSpan>,
    encoded: Vec<bytes::Bytes>,
    encoded_spans: usize,
}

impl Batch {
    fn len(&self) -> usize {
        self.spans.len() + self.encoded_spans
    }

    fn add(&mut self, item: Item, waiting: &mut Vec<oneshot::Sender<()>>) {
        match item {
            Item::Spans(mut spans) => self.spans.append(&mut spans),
            Item::Encoded(bytes, count) => {
                self.encoded.push(bytes);
                self.encoded_spans += count;
            }
            Item::Flush(done) => waiting.push(done),
        }
    }
}

impl Drain {
    /// Wakes every batch delay, or when woken early ([`Shared::push`], a flush), and hands
    /// on everything queued, a batch at a time, then what the threads still gather (so a
    /// span waits at most about a batch delay); ends when every sender is gone.
    async fn run(mut self) {
        let mut batch = Batch::default();
        let mut waiting = Vec::new();
        let mut gathered = tokio::time::Instant::now();
        loop {
            let woken = tokio::select! {
                () = self.wake.notified() => true,
                () = tokio::time::sleep(self.batch_delay) => false,
            };
            loop {
                let mut open = true;
                while batch.len() < self.batch_size {
                    match self.receiver.try_recv() {
                        Ok(item) => batch.add(item, &mut waiting),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
                let full = batch.len() >= self.batch_size;
                // Past the queue: what threads gather, every batch delay (woken early or
                // not, the queue emptied or not) and for a flush, which must hand on every
                // span that ended before it.
                let due = !woken || gathered.elapsed() >= self.batch_delay || !waiting.is_empty();
                if due && let Some(shared) = self.shared.upgrade() {
                    gathered = tokio::time::Instant::now();
                    for item in shared.gather() {
                        batch.add(item, &mut waiting);
                    }
                }
                if batch.len() > 0 {
                    self.hand_on(&mut batch).await;
                }
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
                if !open {
                    return;
                }
                if !full {
                    break;
                }
            }
        }
    }

    /// Delivers a batch to the sinks, then to OTLP; empties it.
    async fn hand_on(&mut self, batch: &mut Batch) {
        let sinks = self.sinks.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for sink in &sinks {
            if let Err(error) = sink.deliver(&batch.spans).await {
                self.failures.inc();
                tracing::debug!(%error, "a span sink refused a batch");
            }
        }
        let destinations = !sinks.is_empty() || self.otlp.is_some();
        if destinations {
            self.exported.inc_by(batch.len() as u64);
        }
        if let Some(otlp) = &mut self.otlp
            && let Err(error) = otlp.export(&batch.spans, std::mem::take(&mut batch.encoded)).await
        {
            self.failures.inc();
            tracing::debug!(%error, "OTLP export failed");
        }
        batch.spans.clear();
        batch.encoded.clear();
        batch.encoded_spans = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_comes_from_the_environment_and_bad_values_are_named() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| value.to_string())
        };
        assert_eq!(TraceConfig::from_vars(vars(&[])).unwrap(), TraceConfig::default());
        let config = TraceConfig::from_vars(vars(&[
            ("PAKE_OTLP_ENDPOINT", "http://collector:4318"),
            ("PAKE_TRACE_SAMPLE_RATIO", "0.25"),
            ("PAKE_TRACE_SLOW_MS", "250"),
        ]))
        .unwrap();
        assert_eq!(config.otlp_endpoint.as_deref(), Some("http://collector:4318"));
        assert_eq!((config.sample_ratio, config.slow), (0.25, Duration::from_millis(250)));
        assert!(config.enabled);
        assert!(!TraceConfig::from_vars(vars(&[("PAKE_TRACING", "off")])).unwrap().enabled);
        for (name, value) in [
            ("PAKE_TRACE_SAMPLE_RATIO", "1.5"),
            ("PAKE_TRACE_SAMPLE_RATIO", "most"),
            ("PAKE_TRACE_SLOW_MS", "-1"),
            ("PAKE_OTLP_ENDPOINT", "collector:4318"),
            ("PAKE_TRACING", "maybe"),
        ] {
            let error = TraceConfig::from_vars(|n| (n == name).then(|| value.to_string())).unwrap_err();
            assert!(error.contains(name), "{error}");
        }
    }
}
