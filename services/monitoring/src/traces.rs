//! The trace store behind `ingestSpans`, `listTraces` and `getTrace`: finished
//! OpenTelemetry spans kept in memory, grouped into traces, bounded by age and size, and
//! indexed so that "the slowest traces of one service in the last ten minutes" is answered
//! in milliseconds with a million spans stored.
//!
//! - **Feeding it.** Over HTTP (`ingestSpans`, which also hands each accepted batch to the
//!   [`SpanForwarder`] when one is set, the hook the OTLP exporter connects to) or in
//!   process with [`TraceStore::ingest`] and plain [`SpanRecord`]s (how `pake serve`'s own
//!   services feed it; those are not forwarded, since their services export them already).
//!   Spans are readable as soon as `ingest` returns.
//! - **Bounds.** A trace is kept while its earliest span started less than
//!   [`TraceLimits::retention`] ago (24 h by default); a span that started before that is
//!   not stored (it would be evicted at once): `ingestSpans` still answers 202 and leaves
//!   it out of `accepted`, and it is counted in `trace_spans_refused{reason="expired"}`.
//!   When the spans stored pass [`TraceLimits::max_spans`] or the store's own estimate of
//!   its bytes passes [`TraceLimits::max_bytes`], whole traces are evicted, the earliest
//!   start first (`trace_spans_evicted{reason="limit"}`; age evictions are
//!   `reason="age"`). A trace holds at most [`MAX_SPANS_PER_TRACE`] spans (the contract's
//!   `Trace.spans`); more are refused (`reason="trace_full"`). A span sent again (same
//!   trace and span id) replaces the stored one, so an exporter's retry does not double it.
//! - **Validity** is [`SpanRecord::check`]: the contract's bounds, W3C's rule that all-zero
//!   ids are invalid, `end_time` not before `start_time`, a start at most
//!   [`MAX_CLOCK_SKEW`] after this server's clock, and a given `duration_us` within
//!   [`DURATION_TOLERANCE`] of `end_time − start_time` (times in JSON are often rounded to
//!   the millisecond while the duration keeps microseconds, so a stated duration is kept
//!   as given). `ingestSpans` answers 422 naming the first invalid span's field; in
//!   process an invalid span is dropped and counted (`reason="invalid"`).
//! - **Indexes.** By trace id (a hash map), and, for all traces and for each service taking
//!   part in one, by start (newest first, the listing order) and by duration. A listing
//!   with `min_duration_ms` reads the duration index when at most 8192 traces (of that
//!   service) are that slow, and otherwise walks the start index down from the newest
//!   (or the cursor) until the page is full or `since` is reached, so neither reads more
//!   than the traces that match one of its filters.
//! - **Size.** A span is 72 bytes plus its packed attributes and events
//!   ([`compact`]: ids as bytes, times as integer nanoseconds, interned names and keys).
//!
//! **One store per replica.** Traces live in this process's memory only: with several
//! monitoring replicas, each holds the spans sent to it (a load balancer spreads
//! `ingestSpans` batches, so a trace may be split across replicas and a read sees what its
//! replica has), and a restart starts empty. Durable, shared storage is the OTLP backend's
//! job; this store is the recent, fast view.

mod compact;
pub mod contract;

use compact::{Extra, Interner, Sym};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most spans one trace holds (the contract's `Trace.spans.maxItems`).
pub const MAX_SPANS_PER_TRACE: usize = 10_000;
/// How far after this server's clock a span may start.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(3600);
/// How far a stated `duration_us` may differ from `end_time − start_time`.
pub const DURATION_TOLERANCE: Duration = Duration::from_millis(1);
/// Traces a duration-filtered listing reads from the duration index before it decides
/// that the filter is not selective and walks the start index instead.
const DURATION_SCAN_BUDGET: usize = 8192;
/// Estimated bytes of one trace's entry in one index (a B-tree entry of the start index
/// and one of the duration index, with node overhead).
const INDEX_ENTRY_BYTES: usize = 112;
/// Estimated bytes of one trace's entry in the id map.
const ID_ENTRY_BYTES: usize = 40;

/// How long and how much the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceLimits {
    pub retention: Duration,
    pub max_spans: usize,
    pub max_bytes: usize,
}

impl Default for TraceLimits {
    fn default() -> TraceLimits {
        TraceLimits { retention: Duration::from_secs(24 * 3600), max_spans: 1_000_000, max_bytes: 1 << 30 }
    }
}

/// The OpenTelemetry span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
    Internal,
    Producer,
    Consumer,
}

impl SpanKind {
    const ALL: [SpanKind; 5] =
        [SpanKind::Server, SpanKind::Client, SpanKind::Internal, SpanKind::Producer, SpanKind::Consumer];

    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Internal => "internal",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
        }
    }

    pub fn parse(text: &str) -> Option<SpanKind> {
        SpanKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }
}

/// The OpenTelemetry span status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Ok,
    Error,
}

impl SpanStatus {
    const ALL: [SpanStatus; 3] = [SpanStatus::Unset, SpanStatus::Ok, SpanStatus::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            SpanStatus::Unset => "unset",
            SpanStatus::Ok => "ok",
            SpanStatus::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<SpanStatus> {
        SpanStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

/// A timestamped event within a span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEventRecord {
    pub name: String,
    pub time: SystemTime,
    pub attributes: Vec<(String, String)>,
}

/// One finished span, as the store takes and gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// `None` for a root span.
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    /// The service that recorded it (OpenTelemetry `service.name`).
    pub service: String,
    pub kind: SpanKind,
    pub start_time: SystemTime,
    pub end_time: SystemTime,
    /// Microseconds; computed from the times when `None`. Always set on spans read back.
    pub duration_us: Option<u64>,
    pub status: SpanStatus,
    pub status_message: Option<String>,
    /// Attribute values rendered as strings, in the order given.
    pub attributes: Vec<(String, String)>,
    pub events: Vec<SpanEventRecord>,
}

/// Why a span is invalid: the field (a JSON pointer within the span, `/end_time`) and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanProblem {
    pub field: String,
    pub message: String,
}

fn problem(field: impl Into<String>, message: impl Into<String>) -> SpanProblem {
    SpanProblem { field: field.into(), message: message.into() }
}

/// Nanoseconds since the Unix epoch, saturating at `i64`'s range (years 1677 to 2262).
pub fn unix_nanos(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

pub fn system_time(nanos: i64) -> SystemTime {
    if nanos >= 0 {
        UNIX_EPOCH + Duration::from_nanos(nanos as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(nanos.unsigned_abs())
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn check_attributes(at: &str, attributes: &[(String, String)]) -> Result<(), SpanProblem> {
    if attributes.len() > 128 {
        return Err(problem(at, "at most 128 attributes"));
    }
    match attributes.iter().find(|(_, value)| value.chars().count() > 4096) {
        Some((key, _)) => Err(problem(format!("{at}/{}", escape_pointer(key)), "at most 4096 characters")),
        None => Ok(()),
    }
}

/// Whether `name` is a service name the contract allows (`^[a-z][a-z0-9-]{0,62}$`).
pub fn valid_service(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl SpanRecord {
    /// The duration: the stated one, or the times' difference (zero when the end is
    /// before the start).
    pub fn duration_micros(&self) -> u64 {
        self.duration_us.unwrap_or_else(|| {
            (unix_nanos(self.end_time).saturating_sub(unix_nanos(self.start_time))).max(0) as u64 / 1000
        })
    }

    /// Whether the store can keep this span as it is, at `now` (see the module docs).
    pub fn check(&self, now: SystemTime) -> Result<(), SpanProblem> {
        if self.trace_id == [0; 16] {
            return Err(problem("/trace_id", "an all-zero trace id is invalid (W3C trace context)"));
        }
        if self.span_id == [0; 8] {
            return Err(problem("/span_id", "an all-zero span id is invalid (W3C trace context)"));
        }
        if self.parent_span_id == Some([0; 8]) {
            return Err(problem("/parent_span_id", "an all-zero span id is invalid; a root span has none"));
        }
        let name_length = self.name.chars().count();
        if name_length == 0 || name_length > 256 {
            return Err(problem("/name", "1 to 256 characters"));
        }
        if !valid_service(&self.service) {
            return Err(problem("/service", "a service name matching ^[a-z][a-z0-9-]{0,62}$"));
        }
        let (start, end) = (unix_nanos(self.start_time), unix_nanos(self.end_time));
        if end < start {
            return Err(problem("/end_time", "end_time must not be before start_time"));
        }
        if start > unix_nanos(now).saturating_add(MAX_CLOCK_SKEW.as_nanos() as i64) {
            return Err(problem("/start_time", "start_time is more than an hour after this server's clock"));
        }
        if let Some(stated) = self.duration_us {
            let measured = end.saturating_sub(start);
            let stated_ns = i64::try_from(stated).unwrap_or(i64::MAX).saturating_mul(1000);
            if stated_ns.abs_diff(measured) > DURATION_TOLERANCE.as_nanos() as u64 {
                return Err(problem(
                    "/duration_us",
                    format!(
                        "duration_us ({stated}) differs from end_time - start_time ({} µs) by more than 1 ms",
                        measured / 1000
                    ),
                ));
            }
        }
        if self.status_message.as_ref().is_some_and(|m| m.chars().count() > 1024) {
            return Err(problem("/status_message", "at most 1024 characters"));
        }
        check_attributes("/attributes", &self.attributes)?;
        if self.events.len() > 128 {
            return Err(problem("/events", "at most 128 events"));
        }
        for (i, event) in self.events.iter().enumerate() {
            let length = event.name.chars().count();
            if length == 0 || length > 256 {
                return Err(problem(format!("/events/{i}/name"), "1 to 256 characters"));
            }
            check_attributes(&format!("/events/{i}/attributes"), &event.attributes)?;
        }
        Ok(())
    }
}

/// Where spans accepted through the API go besides the store (the OTLP exporter). It is
/// called on the request's task with each accepted batch before it is stored, so it must
/// not block: queue and return.
pub trait SpanForwarder: Send + Sync {
    fn forward(&self, spans: &[SpanRecord]);
}

/// What one ingestion did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Spans stored (new or replacing an earlier copy).
    pub accepted: usize,
    /// Spans that started before the retention window.
    pub expired: usize,
    /// Spans of traces already holding [`MAX_SPANS_PER_TRACE`].
    pub trace_full: usize,
    /// Spans [`SpanRecord::check`] refused (in-process ingestion only).
    pub invalid: usize,
}

/// The position after which a listing continues: the last trace of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceCursor {
    pub start_unix_nanos: i64,
    pub trace_id: [u8; 16],
}

impl TraceCursor {
    /// The cursor's text before the API makes it opaque: `<start nanos>:<trace id>`.
    pub fn to_key(&self) -> String {
        format!("{}:{}", self.start_unix_nanos, hex(&self.trace_id))
    }

    pub fn from_key(key: &str) -> Option<TraceCursor> {
        let (start, id) = key.split_once(':')?;
        Some(TraceCursor { start_unix_nanos: start.parse().ok()?, trace_id: parse_hex(id)? })
    }
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 15)] as char);
    }
    out
}

/// Bytes from exactly `2 × N` lowercase hexadecimal digits.
pub fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = (value(pair[0])? << 4) | value(pair[1])?;
    }
    Some(out)
}

/// What a listing asks for.
#[derive(Debug, Clone, Default)]
pub struct TraceQuery {
    /// Only traces with a span of this service.
    pub service: Option<String>,
    /// Only traces lasting at least this long (earliest start to latest end).
    pub min_duration: Option<Duration>,
    /// Only traces that started at or after this time.
    pub since: Option<SystemTime>,
    /// Only traces after this one in the listing order (newest start first).
    pub after: Option<TraceCursor>,
    pub limit: usize,
}

/// One trace in a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSummary {
    pub trace_id: [u8; 16],
    /// Service and name of the root span (no parent), or of the earliest span while the
    /// root is missing.
    pub root_service: String,
    pub root_name: String,
    /// Start of the earliest span.
    pub start_time: SystemTime,
    /// From the earliest start to the latest end.
    pub duration: Duration,
    pub span_count: usize,
    /// Whether any span has status `error`.
    pub error: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TracePage {
    pub items: Vec<TraceSummary>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<TraceCursor>,
}

/// The store's metrics, registered on the monitoring service's registry.
#[derive(Default)]
pub struct TraceMetrics {
    pub spans: Gauge,
    pub traces: Gauge,
    pub bytes: Gauge,
    pub ingested: Family<Vec<(String, String)>, Counter>,
    pub refused: Family<Vec<(String, String)>, Counter>,
    pub evicted: Family<Vec<(String, String)>, Counter>,
}

impl TraceMetrics {
    fn count(family: &Family<Vec<(String, String)>, Counter>, label: &str, value: &str, n: usize) {
        if n > 0 {
            family.get_or_create(&vec![(label.into(), value.into())]).inc_by(n as u64);
        }
    }
}

/// A span as stored: 72 bytes plus its packed extras.
struct StoredSpan {
    start: i64,
    end: i64,
    duration_us: u64,
    span_id: [u8; 8],
    /// All zeros for a root span (W3C ids are never all zero).
    parent: [u8; 8],
    name: Sym,
    service: Sym,
    kind: u8,
    status: u8,
    extra: Box<[u8]>,
}

impl StoredSpan {
    fn is_root(&self) -> bool {
        self.parent == [0; 8]
    }

    fn is_error(&self) -> bool {
        self.status == SpanStatus::Error as u8
    }

    /// Whether `self` is a better root than `other`: a span without parent over one with,
    /// then the earlier start.
    fn better_root_than(&self, other: &StoredSpan) -> bool {
        match (self.is_root(), other.is_root()) {
            (true, false) => true,
            (false, true) => false,
            _ => self.start < other.start,
        }
    }
}

struct TraceEntry {
    id: [u8; 16],
    /// Earliest start and latest end of its spans.
    start: i64,
    end: i64,
    spans: Vec<StoredSpan>,
    /// The services taking part, each once.
    services: Vec<Sym>,
    /// Index in `spans` of the root (see [`TraceSummary::root_service`]).
    root: usize,
    errors: usize,
    /// Bytes of the spans' packed extras.
    extra_bytes: usize,
}

impl TraceEntry {
    fn key(&self) -> Key {
        (self.start, self.id)
    }

    fn duration(&self) -> i64 {
        self.end.saturating_sub(self.start)
    }

    /// The store's estimate of this trace's memory, its index entries included.
    fn bytes(&self) -> usize {
        std::mem::size_of::<Option<TraceEntry>>()
            + self.spans.capacity() * std::mem::size_of::<StoredSpan>()
            + self.extra_bytes
            + self.services.capacity() * std::mem::size_of::<Sym>()
            + (1 + self.services.len()) * INDEX_ENTRY_BYTES
            + ID_ENTRY_BYTES
    }

    /// Recomputes what adding spans keeps up incrementally, after a span was replaced.
    fn recompute(&mut self) {
        self.start = self.spans.iter().map(|s| s.start).min().unwrap_or(0);
        self.end = self.spans.iter().map(|s| s.end).max().unwrap_or(0);
        self.errors = self.spans.iter().filter(|s| s.is_error()).count();
        self.root = 0;
        for (i, span) in self.spans.iter().enumerate() {
            if span.better_root_than(&self.spans[self.root]) {
                self.root = i;
            }
        }
        self.services.clear();
        for span in &self.spans {
            if !self.services.contains(&span.service) {
                self.services.push(span.service);
            }
        }
    }
}

/// A trace's place in the listing order: its start, then its id.
type Key = (i64, [u8; 16]);

/// The traces of one service (or of all), by start and by duration; values are slots.
#[derive(Default)]
struct Index {
    by_start: BTreeMap<Key, (u32, i64)>,
    by_duration: BTreeMap<(i64, Key), u32>,
}

impl Index {
    fn insert(&mut self, key: Key, duration: i64, slot: u32) {
        self.by_start.insert(key, (slot, duration));
        self.by_duration.insert((duration, key), slot);
    }

    fn remove(&mut self, key: Key, duration: i64) {
        self.by_start.remove(&key);
        self.by_duration.remove(&(duration, key));
    }

    fn is_empty(&self) -> bool {
        self.by_start.is_empty()
    }
}

/// How a touched trace was indexed before this ingestion changed it.
struct Before {
    key: Key,
    duration: i64,
    services: Vec<Sym>,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    slots: Vec<Option<TraceEntry>>,
    free: Vec<u32>,
    by_id: HashMap<[u8; 16], u32>,
    all: Index,
    by_service: HashMap<Sym, Index>,
    strings: Interner,
    spans: usize,
    /// Bytes of the traces (see [`TraceEntry::bytes`]); the interner's are added on read.
    trace_bytes: usize,
}

impl Inner {
    fn bytes(&self) -> usize {
        self.trace_bytes + self.strings.bytes()
    }

    fn index(&mut self, key: Key, duration: i64, slot: u32, services: &[Sym]) {
        self.all.insert(key, duration, slot);
        for service in services {
            self.by_service.entry(*service).or_default().insert(key, duration, slot);
        }
    }

    fn unindex(&mut self, key: Key, duration: i64, services: &[Sym]) {
        self.all.remove(key, duration);
        for service in services {
            if let Some(index) = self.by_service.get_mut(service) {
                index.remove(key, duration);
                if index.is_empty() {
                    self.by_service.remove(service);
                }
            }
        }
    }

    fn release(&mut self, span: &StoredSpan) {
        self.strings.release(span.name);
        self.strings.release(span.service);
        let strings = &mut self.strings;
        compact::symbols(&span.extra, |sym| strings.release(sym));
    }

    /// Removes the trace in `slot`; answers how many spans it held.
    fn evict(&mut self, slot: u32) -> usize {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::take) else { return 0 };
        self.free.push(slot);
        self.by_id.remove(&entry.id);
        self.unindex(entry.key(), entry.duration(), &entry.services);
        for span in &entry.spans {
            self.release(span);
        }
        self.spans -= entry.spans.len();
        self.trace_bytes -= entry.bytes();
        entry.spans.len()
    }

    /// The oldest trace when it started before `horizon`.
    fn oldest_before(&self, horizon: i64) -> Option<u32> {
        self.all.by_start.first_key_value().filter(|(key, _)| key.0 < horizon).map(|(_, (slot, _))| *slot)
    }

    fn entry(&self, slot: u32) -> Option<&TraceEntry> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    fn summary(&self, entry: &TraceEntry) -> TraceSummary {
        let root = &entry.spans[entry.root];
        TraceSummary {
            trace_id: entry.id,
            root_service: self.strings.resolve(root.service).to_string(),
            root_name: self.strings.resolve(root.name).to_string(),
            start_time: system_time(entry.start),
            duration: Duration::from_nanos(entry.duration().max(0) as u64),
            span_count: entry.spans.len(),
            error: entry.errors > 0,
        }
    }

    fn record(&self, trace_id: [u8; 16], span: &StoredSpan) -> SpanRecord {
        let (status_message, attributes, events) = compact::decode(&span.extra, span.start, &self.strings);
        SpanRecord {
            trace_id,
            span_id: span.span_id,
            parent_span_id: (!span.is_root()).then_some(span.parent),
            name: self.strings.resolve(span.name).to_string(),
            service: self.strings.resolve(span.service).to_string(),
            kind: SpanKind::ALL[usize::from(span.kind)],
            start_time: system_time(span.start),
            end_time: system_time(span.end),
            duration_us: Some(span.duration_us),
            status: SpanStatus::ALL[usize::from(span.status)],
            status_message,
            attributes,
            events,
        }
    }
}

/// The trace store (see the module docs).
pub struct TraceStore {
    inner: RwLock<Inner>,
    limits: TraceLimits,
    pub metrics: TraceMetrics,
    forwarder: RwLock<Option<Arc<dyn SpanForwarder>>>,
}

/// Where spans came from, for `trace_spans_ingested{origin}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Api,
    InProcess,
}

impl TraceStore {
    pub fn new(limits: TraceLimits) -> TraceStore {
        TraceStore {
            inner: RwLock::new(Inner::default()),
            limits,
            metrics: TraceMetrics::default(),
            forwarder: RwLock::new(None),
        }
    }

    pub fn limits(&self) -> TraceLimits {
        self.limits
    }

    /// Registers the store's metrics on the service's registry.
    pub fn register(&self, metrics: &pake_observe::Metrics) {
        let m = &self.metrics;
        metrics.register("trace_spans", "Spans in the trace store", m.spans.clone());
        metrics.register("trace_traces", "Traces in the trace store", m.traces.clone());
        metrics.register("trace_store_bytes", "The trace store's estimate of its memory", m.bytes.clone());
        metrics.register("trace_spans_ingested", "Spans stored, by origin (api, in_process)", m.ingested.clone());
        metrics.register(
            "trace_spans_refused",
            "Spans not stored, by reason (expired, trace_full, invalid)",
            m.refused.clone(),
        );
        metrics.register("trace_spans_evicted", "Spans evicted, by reason (age, limit)", m.evicted.clone());
    }

    /// Sets where spans accepted through the API are forwarded (the OTLP exporter).
    pub fn set_forwarder(&self, forwarder: Arc<dyn SpanForwarder>) {
        *self.forwarder.write().expect("trace forwarder lock") = Some(forwarder);
    }

    /// Stores spans recorded in this process (not forwarded). Invalid spans are dropped
    /// and counted; see the module docs for what else is not stored.
    pub fn ingest(&self, spans: Vec<SpanRecord>) -> Ingested {
        let now = SystemTime::now();
        let total = spans.len();
        let valid: Vec<SpanRecord> = spans.into_iter().filter(|span| span.check(now).is_ok()).collect();
        let invalid = total - valid.len();
        TraceMetrics::count(&self.metrics.refused, "reason", "invalid", invalid);
        Ingested { invalid, ..self.store(valid, unix_nanos(now), Origin::InProcess) }
    }

    /// Stores a batch received through the API, which has checked every span, after
    /// handing it to the forwarder.
    pub(crate) fn ingest_checked(&self, spans: Vec<SpanRecord>) -> Ingested {
        let forwarder = self.forwarder.read().expect("trace forwarder lock").clone();
        if let Some(forwarder) = forwarder {
            forwarder.forward(&spans);
        }
        self.store(spans, unix_nanos(SystemTime::now()), Origin::Api)
    }

    fn horizon(&self, now: i64) -> i64 {
        now.saturating_sub(i64::try_from(self.limits.retention.as_nanos()).unwrap_or(i64::MAX))
    }

    fn store(&self, spans: Vec<SpanRecord>, now: i64, origin: Origin) -> Ingested {
        let horizon = self.horizon(now);
        let mut done = Ingested::default();
        let mut inner = self.inner.write().expect("trace store lock");
        let inner = &mut *inner;
        let mut evicted_by_age = 0;
        while let Some(slot) = inner.oldest_before(horizon) {
            evicted_by_age += inner.evict(slot);
        }
        // Traces this batch touches, with how they were indexed before (`None`: new).
        let mut touched: HashMap<u32, Option<Before>> = HashMap::new();
        // Replaced spans give their strings back only once the indexes are updated, so
        // that a service symbol is not freed and reused while an index still names it.
        let mut replaced: Vec<StoredSpan> = Vec::new();
        for record in spans {
            let start = unix_nanos(record.start_time);
            if start < horizon {
                done.expired += 1;
                continue;
            }
            let slot = match inner.by_id.get(&record.trace_id) {
                Some(&slot) => {
                    if let Some(entry) = inner.entry(slot) {
                        touched.entry(slot).or_insert_with(|| {
                            Some(Before {
                                key: entry.key(),
                                duration: entry.duration(),
                                services: entry.services.clone(),
                                bytes: entry.bytes(),
                            })
                        });
                    }
                    slot
                }
                None => {
                    let entry = TraceEntry {
                        id: record.trace_id,
                        start,
                        end: unix_nanos(record.end_time),
                        spans: Vec::new(),
                        services: Vec::new(),
                        root: 0,
                        errors: 0,
                        extra_bytes: 0,
                    };
                    let slot = match inner.free.pop() {
                        Some(slot) => {
                            inner.slots[slot as usize] = Some(entry);
                            slot
                        }
                        None => {
                            inner.slots.push(Some(entry));
                            (inner.slots.len() - 1) as u32
                        }
                    };
                    inner.by_id.insert(record.trace_id, slot);
                    touched.insert(slot, None);
                    slot
                }
            };
            let existing = inner.entry(slot).and_then(|e| e.spans.iter().position(|s| s.span_id == record.span_id));
            let full = inner.entry(slot).is_some_and(|e| e.spans.len() >= MAX_SPANS_PER_TRACE);
            if existing.is_none() && full {
                done.trace_full += 1;
                continue;
            }
            let extra = Extra {
                status_message: record.status_message.as_deref(),
                attributes: &record.attributes,
                events: &record.events,
            };
            let span = StoredSpan {
                start,
                end: unix_nanos(record.end_time),
                duration_us: record.duration_micros(),
                span_id: record.span_id,
                parent: record.parent_span_id.unwrap_or([0; 8]),
                name: inner.strings.intern(&record.name),
                service: inner.strings.intern(&record.service),
                kind: record.kind as u8,
                status: record.status as u8,
                extra: compact::encode(&extra, start, &mut inner.strings),
            };
            let Some(entry) = inner.slots.get_mut(slot as usize).and_then(Option::as_mut) else { continue };
            entry.extra_bytes += span.extra.len();
            match existing {
                Some(position) => {
                    let old = std::mem::replace(&mut entry.spans[position], span);
                    entry.extra_bytes -= old.extra.len();
                    replaced.push(old);
                    entry.recompute();
                }
                None => {
                    if entry.spans.is_empty() {
                        entry.start = span.start;
                        entry.end = span.end;
                    } else {
                        entry.start = entry.start.min(span.start);
                        entry.end = entry.end.max(span.end);
                    }
                    if !entry.services.contains(&span.service) {
                        entry.services.push(span.service);
                    }
                    entry.errors += usize::from(span.is_error());
                    let better = entry.spans.get(entry.root).is_none_or(|root| span.better_root_than(root));
                    entry.spans.push(span);
                    if better {
                        entry.root = entry.spans.len() - 1;
                    }
                    inner.spans += 1;
                }
            }
            done.accepted += 1;
        }
        for (slot, before) in touched {
            let Some(entry) = inner.entry(slot) else { continue };
            let (key, duration, services, bytes) =
                (entry.key(), entry.duration(), entry.services.clone(), entry.bytes());
            if entry.spans.is_empty() {
                // Every span of a new trace was refused.
                inner.slots[slot as usize] = None;
                inner.free.push(slot);
                inner.by_id.remove(&key.1);
                continue;
            }
            match before {
                Some(before) => {
                    inner.trace_bytes = inner.trace_bytes - before.bytes + bytes;
                    if before.key != key || before.duration != duration || before.services != services {
                        inner.unindex(before.key, before.duration, &before.services);
                        inner.index(key, duration, slot, &services);
                    }
                }
                None => {
                    inner.trace_bytes += bytes;
                    inner.index(key, duration, slot, &services);
                }
            }
        }
        for span in &replaced {
            inner.release(span);
        }
        let mut evicted_by_limit = 0;
        while inner.spans > self.limits.max_spans || inner.bytes() > self.limits.max_bytes {
            let Some(slot) = inner.oldest_before(i64::MAX) else { break };
            evicted_by_limit += inner.evict(slot);
        }
        self.publish(inner);
        let m = &self.metrics;
        let origin = match origin {
            Origin::Api => "api",
            Origin::InProcess => "in_process",
        };
        TraceMetrics::count(&m.ingested, "origin", origin, done.accepted);
        TraceMetrics::count(&m.refused, "reason", "expired", done.expired);
        TraceMetrics::count(&m.refused, "reason", "trace_full", done.trace_full);
        TraceMetrics::count(&m.evicted, "reason", "age", evicted_by_age);
        TraceMetrics::count(&m.evicted, "reason", "limit", evicted_by_limit);
        done
    }

    fn publish(&self, inner: &Inner) {
        self.metrics.spans.set(inner.spans as i64);
        self.metrics.traces.set(inner.by_id.len() as i64);
        self.metrics.bytes.set(inner.bytes() as i64);
    }

    /// Evicts the traces past the retention; answers how many spans went.
    pub fn sweep(&self) -> usize {
        self.sweep_at(unix_nanos(SystemTime::now()))
    }

    fn sweep_at(&self, now: i64) -> usize {
        let horizon = self.horizon(now);
        let mut evicted = 0;
        {
            let mut inner = self.inner.write().expect("trace store lock");
            while let Some(slot) = inner.oldest_before(horizon) {
                evicted += inner.evict(slot);
            }
            self.publish(&inner);
        }
        TraceMetrics::count(&self.metrics.evicted, "reason", "age", evicted);
        evicted
    }

    /// Every stored span of a trace, ordered by start (then span id); `None` when the
    /// store holds none, or only expired ones.
    pub fn get(&self, trace_id: &[u8; 16]) -> Option<Vec<SpanRecord>> {
        self.get_at(trace_id, unix_nanos(SystemTime::now()))
    }

    fn get_at(&self, trace_id: &[u8; 16], now: i64) -> Option<Vec<SpanRecord>> {
        let horizon = self.horizon(now);
        let inner = self.inner.read().expect("trace store lock");
        let entry = inner.by_id.get(trace_id).and_then(|slot| inner.entry(*slot)).filter(|e| e.start >= horizon)?;
        let mut order: Vec<&StoredSpan> = entry.spans.iter().collect();
        order.sort_by_key(|span| (span.start, span.span_id));
        Some(order.into_iter().map(|span| inner.record(entry.id, span)).collect())
    }

    /// One page of trace summaries, newest start first.
    pub fn list(&self, query: &TraceQuery) -> TracePage {
        self.list_at(query, unix_nanos(SystemTime::now()))
    }

    fn list_at(&self, query: &TraceQuery, now: i64) -> TracePage {
        let limit = query.limit.max(1);
        let lower = self.horizon(now).max(query.since.map_or(i64::MIN, unix_nanos));
        let upper = query.after.map_or(Bound::Unbounded, |c| Bound::Excluded((c.start_unix_nanos, c.trace_id)));
        let min_duration = query.min_duration.map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let inner = self.inner.read().expect("trace store lock");
        let index = match &query.service {
            None => Some(&inner.all),
            Some(service) => inner.strings.lookup(service).and_then(|sym| inner.by_service.get(&sym)),
        };
        let empty = TracePage { items: Vec::new(), next: None };
        let Some(index) = index else { return empty };
        if query.after.is_some_and(|after| (after.start_unix_nanos, after.trace_id) <= (lower, [0; 16])) {
            return empty;
        }
        let in_window = |key: &Key| {
            key.0 >= lower
                && match upper {
                    Bound::Excluded(after) => *key < after,
                    _ => true,
                }
        };
        let mut hits: Vec<(Key, u32)> = Vec::new();
        let mut answered = false;
        if min_duration > 0 {
            // Few traces this slow: read them all from the duration index.
            let mut read = 0;
            answered = true;
            for ((_, key), slot) in index.by_duration.range((min_duration, (i64::MIN, [0; 16]))..) {
                read += 1;
                if read > DURATION_SCAN_BUDGET {
                    answered = false;
                    hits.clear();
                    break;
                }
                if in_window(key) {
                    hits.push((*key, *slot));
                }
            }
            if answered {
                hits.sort_unstable_by_key(|hit| std::cmp::Reverse(hit.0));
                hits.truncate(limit + 1);
            }
        }
        if !answered {
            let range = index.by_start.range((Bound::Included((lower, [0; 16])), upper));
            for (key, (slot, duration)) in range.rev() {
                if *duration >= min_duration {
                    hits.push((*key, *slot));
                    if hits.len() > limit {
                        break;
                    }
                }
            }
        }
        let next = (hits.len() > limit).then(|| {
            hits.truncate(limit);
            let (start, id) = hits[limit - 1].0;
            TraceCursor { start_unix_nanos: start, trace_id: id }
        });
        let items = hits.iter().filter_map(|(_, slot)| inner.entry(*slot)).map(|entry| inner.summary(entry)).collect();
        TracePage { items, next }
    }

    /// Spans and traces stored, and the store's estimate of its bytes.
    pub fn stats(&self) -> TraceStats {
        let inner = self.inner.read().expect("trace store lock");
        TraceStats { spans: inner.spans, traces: inner.by_id.len(), bytes: inner.bytes() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceStats {
    pub spans: usize,
    pub traces: usize,
    pub bytes: usize,
}

/// Evicts expired traces every few seconds, so that memory follows the retention even
/// when nothing is ingested or read.
pub async fn sweep_loop(store: Arc<TraceStore>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(5));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        store.sweep();
    }
}

#[cfg(test)]
mod tests;
