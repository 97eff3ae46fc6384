//! The series store: recent samples of every series (a metric name and a label set), in
//! memory, bounded in series count and in samples per series, fed by scrapes and pushes and
//! read by `listMetrics` and the rule evaluator.
//!
//! What Prometheus's TSDB does that matters for alerting is kept: samples are ordered by
//! time per series; a series that leaves a scrape, or whose target fails, gets a stale
//! marker, after which an instant query finds no value (a `rate` window simply skips the
//! marker); an instant query looks back at most [`LOOKBACK_MS`]. What it does not do:
//! persist samples (a restart starts empty, and scrapes and pushes refill it), or keep
//! more than [`Limits::max_samples_per_series`] points or [`Limits::retention_ms`] of
//! history per series.
//!
//! Selectors resolve through an index, as Prometheus's head block does: every series has
//! a number in creation order, and each metric name keeps the numbers of its series and,
//! per label name and value, a posting list of the series carrying that value. A selector
//! intersects the posting lists of its matchers that need a label value, and subtracts
//! those of the values a matcher that also accepts a missing label refuses, so that a
//! rule touches only the series it selects.

pub use crate::chunks::Point;
use crate::chunks::{Bounds, Points};
use crate::exposition::{Exposition, Kind};
use crate::labels::{self, LabelSet, Matcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// How far back an instant query looks for a sample (Prometheus's default lookback delta).
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

impl MetricType {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
        }
    }
}

/// Series identity: name, then label set (the order `listMetrics` answers in).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesKey {
    pub name: String,
    pub labels: LabelSet,
}

#[derive(Debug, Clone)]
pub struct Series {
    /// When the series was created, counting from the store's first: the order
    /// Prometheus's head index hands series to a query in (its postings are series
    /// references, given out in creation order), which is the order a `sum` adds them in.
    pub created: u64,
    pub kind: MetricType,
    pub help: String,
    pub source: String,
    /// Derived series (`_sum`, `_count` of a histogram or summary): evaluated by rules,
    /// listed as part of their family's series instead of on their own.
    pub hidden: bool,
    /// The samples, compressed (see [`crate::chunks`]).
    pub points: Points,
    pub sum: Option<f64>,
    pub buckets: Vec<(f64, f64)>,
    pub quantiles: Vec<(f64, f64)>,
}

impl Series {
    fn new(created: u64, kind: MetricType, help: &str, source: &str, hidden: bool) -> Series {
        Series {
            created,
            kind,
            help: help.chars().take(1024).collect(),
            source: source.to_string(),
            hidden,
            points: Points::default(),
            sum: None,
            buckets: Vec::new(),
            quantiles: Vec::new(),
        }
    }

    /// The latest point (marker or value).
    pub fn last(&self) -> Option<Point> {
        self.points.last()
    }

    /// The value an instant query at `t` sees: the latest point at or before `t` within the
    /// lookback, unless it is a stale marker.
    pub fn value_at(&self, t: i64) -> Option<f64> {
        let point = self.points.at_or_before(t)?;
        (!point.stale && point.t > t - LOOKBACK_MS).then_some(point.v)
    }

    /// The values in `(start, end]`, stale markers left out.
    pub fn range(&self, start: i64, end: i64) -> Vec<(i64, f64)> {
        self.points.range(start, end).filter(|p| !p.stale).map(|p| (p.t, p.v)).collect()
    }

    fn insert(&mut self, point: Point, limits: &Limits) {
        let bounds = Bounds { max_samples: limits.max_samples_per_series, retention_ms: limits.retention_ms };
        self.points.insert(point, &bounds);
    }
}

/// The store's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_series: usize,
    pub max_samples_per_series: usize,
    pub retention_ms: i64,
}

impl Default for Limits {
    fn default() -> Limits {
        // 100,000 series of at most 720 points (an hour at the 5 s scrape interval): at 24
        // bytes a point uncompressed (values that change every bit, timestamps at random),
        // under 2 GiB in the worst case; a steady scrape takes a few bits a point.
        Limits { max_series: 100_000, max_samples_per_series: 720, retention_ms: 3_600_000 }
    }
}

/// One pushed sample, validated by the contract's schema already.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct PushedSample {
    pub name: String,
    #[serde(rename = "type", default = "gauge")]
    pub kind: MetricType,
    #[serde(default)]
    pub help: Option<String>,
    #[serde(default)]
    pub labels: LabelSet,
    pub value: f64,
    #[serde(default)]
    pub timestamp: Option<chrono::DateTime<chrono::Utc>>,
}

fn gauge() -> MetricType {
    MetricType::Gauge
}

/// Why a push was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A sample breaks a rule; `field` is its JSON pointer.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// Accepting the batch would take the store past its series limit.
    #[error("{0}")]
    SeriesLimit(String),
}

/// A series' number: its [`Series::created`], unique for the store's life.
type SeriesRef = u64;

/// Hashes a [`SeriesRef`] by one multiplication: the numbers are dense and not chosen by
/// clients.
#[derive(Default)]
struct RefHasher(u64);

impl Hasher for RefHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type RefMap<V> = HashMap<SeriesRef, V, BuildHasherDefault<RefHasher>>;

struct Slot {
    key: Arc<SeriesKey>,
    series: Series,
}

/// The series of one metric name, and their posting lists. Every list is in creation
/// order (ascending [`SeriesRef`]), since series are added in that order.
#[derive(Default)]
struct NameIndex {
    all: Vec<SeriesRef>,
    /// Label name, then label value: the series carrying that value.
    postings: HashMap<String, HashMap<String, Vec<SeriesRef>>>,
}

#[derive(Default)]
struct Inner {
    /// Every series' number by identity: hashed for pushes and scrapes, which look a
    /// series up per sample, and ordered as `listMetrics` answers.
    lookup: HashMap<Arc<SeriesKey>, SeriesRef>,
    keys: BTreeMap<Arc<SeriesKey>, SeriesRef>,
    series: RefMap<Slot>,
    index: HashMap<String, NameIndex>,
    /// The series each scrape target produced last time, to mark those that leave stale.
    by_target: HashMap<String, HashSet<SeriesRef>>,
    /// The type every pushed name was first pushed with.
    pushed_types: HashMap<String, MetricType>,
}

impl Inner {
    fn len(&self) -> usize {
        self.series.len()
    }

    fn find(&self, key: &SeriesKey) -> Option<SeriesRef> {
        self.lookup.get(key).copied()
    }

    fn get(&self, key: &SeriesKey) -> Option<&Series> {
        self.series.get(&self.find(key)?).map(|slot| &slot.series)
    }

    /// The type of the series of `name`, if it has any.
    fn kind_of(&self, name: &str) -> Option<MetricType> {
        let first = self.index.get(name)?.all.first()?;
        self.series.get(first).map(|slot| slot.series.kind)
    }

    /// The series of `key`, made by `make` (whose `created` must exceed every number
    /// given so far) when there is none yet.
    fn get_or_insert(&mut self, key: SeriesKey, make: impl FnOnce() -> Series) -> (SeriesRef, &mut Series) {
        let at = match self.find(&key) {
            Some(at) => at,
            None => {
                let series = make();
                let at = series.created;
                let name = match self.index.get_mut(&key.name) {
                    Some(name) => name,
                    None => self.index.entry(key.name.clone()).or_default(),
                };
                name.all.push(at);
                for (label, value) in &key.labels {
                    let values = match name.postings.get_mut(label) {
                        Some(values) => values,
                        None => name.postings.entry(label.clone()).or_default(),
                    };
                    match values.get_mut(value) {
                        Some(list) => list.push(at),
                        None => {
                            values.insert(value.clone(), vec![at]);
                        }
                    }
                }
                let key = Arc::new(key);
                self.lookup.insert(key.clone(), at);
                self.keys.insert(key.clone(), at);
                self.series.insert(at, Slot { key, series });
                at
            }
        };
        (at, &mut self.series.get_mut(&at).expect("an indexed series").series)
    }

    /// Forgets the series `keep` refuses, from the store and from the index.
    fn retain(&mut self, mut keep: impl FnMut(&Series) -> bool) {
        let mut gone: HashMap<String, Vec<(SeriesRef, Arc<SeriesKey>)>> = HashMap::new();
        self.series.retain(|at, slot| {
            let kept = keep(&slot.series);
            if !kept {
                gone.entry(slot.key.name.clone()).or_default().push((*at, slot.key.clone()));
            }
            kept
        });
        if gone.is_empty() {
            return;
        }
        for (name, series) in gone {
            for (_, key) in &series {
                self.lookup.remove(key.as_ref());
                self.keys.remove(key.as_ref());
            }
            let refs: HashSet<SeriesRef> = series.iter().map(|(at, _)| *at).collect();
            let Some(index) = self.index.get_mut(&name) else { continue };
            index.all.retain(|at| !refs.contains(at));
            if index.all.is_empty() {
                self.index.remove(&name);
                continue;
            }
            let touched: BTreeSet<(&String, &String)> = series.iter().flat_map(|(_, key)| key.labels.iter()).collect();
            for (label, value) in touched {
                let Some(values) = index.postings.get_mut(label) else { continue };
                if let Some(list) = values.get_mut(value) {
                    list.retain(|at| !refs.contains(at));
                    if list.is_empty() {
                        values.remove(value);
                    }
                }
                if values.is_empty() {
                    index.postings.remove(label);
                }
            }
        }
        for refs in self.by_target.values_mut() {
            refs.retain(|at| self.series.contains_key(at));
        }
    }

    /// The series of `name` whose labels satisfy every matcher, in creation order:
    /// exactly those a scan with [`labels::all_match`] finds.
    ///
    /// A matcher that refuses the empty value selects the union of the posting lists of
    /// the values it accepts (a series without the label has the empty value, so it is
    /// not selected); the lists of these matchers are intersected, smallest first. A
    /// matcher that accepts the empty value selects every series but those in the posting
    /// lists of the values it refuses: those lists are subtracted. With no matcher of the
    /// first kind, the subtraction starts from every series of the name.
    fn matching(&self, name: &str, matchers: &[Matcher]) -> Vec<SeriesRef> {
        let Some(index) = self.index.get(name) else { return Vec::new() };
        let mut including: Vec<Cow<'_, [SeriesRef]>> = Vec::new();
        let mut excluding: Vec<Cow<'_, [SeriesRef]>> = Vec::new();
        for m in matchers {
            let values = index.postings.get(&m.label);
            if m.matches_value("") {
                let refused = postings_of(values, m, false);
                if !refused.is_empty() {
                    excluding.push(refused);
                }
            } else {
                including.push(postings_of(values, m, true));
            }
        }
        including.sort_by_key(|list| list.len());
        let mut lists = including.into_iter();
        let mut selected: Vec<SeriesRef> = match lists.next() {
            Some(first) => lists.fold(first.into_owned(), |acc, list| intersect(&acc, &list)),
            None => index.all.clone(),
        };
        for list in excluding {
            if selected.is_empty() {
                break;
            }
            selected = subtract(&selected, &list);
        }
        selected
    }
}

/// The series whose value of `m`'s label `m` accepts (or, with `accept` false, refuses),
/// in creation order; a series without the label is in neither.
fn postings_of<'a>(
    values: Option<&'a HashMap<String, Vec<SeriesRef>>>,
    m: &Matcher,
    accept: bool,
) -> Cow<'a, [SeriesRef]> {
    let Some(values) = values else { return Cow::Borrowed(&[]) };
    // One value only: no need to test every value.
    if (m.op == labels::MatchOp::Equal && accept) || (m.op == labels::MatchOp::NotEqual && !accept) {
        return values.get(&m.value).map(|list| Cow::Borrowed(list.as_slice())).unwrap_or(Cow::Borrowed(&[]));
    }
    let mut chosen = values.iter().filter(|(value, _)| m.matches_value(value) == accept).map(|(_, list)| list);
    match (chosen.next(), chosen.next()) {
        (None, _) => Cow::Borrowed(&[]),
        (Some(only), None) => Cow::Borrowed(only.as_slice()),
        (Some(first), Some(second)) => {
            // The lists of one label's values are disjoint: concatenate and sort.
            let mut union: Vec<SeriesRef> = first.iter().chain(second).copied().collect();
            for list in chosen {
                union.extend_from_slice(list);
            }
            union.sort_unstable();
            Cow::Owned(union)
        }
    }
}

/// The numbers in both ascending lists.
fn intersect(a: &[SeriesRef], b: &[SeriesRef]) -> Vec<SeriesRef> {
    let (small, large) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let mut out = Vec::with_capacity(small.len());
    let mut rest = large;
    for &n in small {
        // A binary search in what is left of the longer list.
        let at = rest.partition_point(|&m| m < n);
        rest = &rest[at..];
        match rest.first() {
            None => break,
            Some(&m) if m == n => out.push(n),
            Some(_) => {}
        }
    }
    out
}

/// The numbers of ascending `a` that ascending `b` lacks.
fn subtract(a: &[SeriesRef], b: &[SeriesRef]) -> Vec<SeriesRef> {
    let mut out = Vec::with_capacity(a.len());
    let mut rest = b;
    for &n in a {
        let at = rest.partition_point(|&m| m < n);
        rest = &rest[at..];
        if rest.first() != Some(&n) {
            out.push(n);
        }
    }
    out
}

/// Counters of what the store took and refused.
#[derive(Clone, Default)]
pub struct SeriesMetrics {
    pub series: Gauge,
    pub ingested: Family<Vec<(String, String)>, Counter>,
    pub refused: Family<Vec<(String, String)>, Counter>,
}

impl SeriesMetrics {
    fn ingested(&self, origin: &str, n: u64) {
        self.ingested.get_or_create(&vec![("origin".into(), origin.into())]).inc_by(n);
    }

    fn refused(&self, reason: &str, n: u64) {
        self.refused.get_or_create(&vec![("reason".into(), reason.into())]).inc_by(n);
    }
}

pub struct SeriesStore {
    inner: RwLock<Inner>,
    /// Series created so far (under the write lock, so in creation order).
    created: AtomicU64,
    limits: Limits,
    pub metrics: SeriesMetrics,
}

/// What `listMetrics` filters on.
#[derive(Default)]
pub struct ListFilter<'a> {
    pub name: Option<&'a str>,
    pub matchers: Vec<Matcher>,
    pub source: Option<&'a str>,
    pub kind: Option<MetricType>,
}

/// One series as `listMetrics` shows it.
#[derive(Debug, Clone)]
pub struct SeriesView {
    pub key: SeriesKey,
    pub kind: MetricType,
    pub help: String,
    pub source: String,
    pub value: f64,
    pub t: i64,
    pub sum: Option<f64>,
    pub buckets: Vec<(f64, f64)>,
    pub quantiles: Vec<(f64, f64)>,
}

impl SeriesStore {
    pub fn new(limits: Limits) -> SeriesStore {
        SeriesStore {
            inner: RwLock::new(Inner::default()),
            created: AtomicU64::new(0),
            limits,
            metrics: SeriesMetrics::default(),
        }
    }

    fn create(&self) -> u64 {
        self.created.fetch_add(1, Ordering::Relaxed)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn len(&self) -> usize {
        self.inner.read().expect("series lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Validates a batch as a whole, then applies it: all or nothing.
    pub fn push(&self, source: &str, samples: &[PushedSample], now_ms: i64) -> Result<usize, PushError> {
        let mut inner = self.inner.write().expect("series lock");
        let mut new_keys = BTreeSet::new();
        let mut batch_types: HashMap<&str, MetricType> = HashMap::new();
        for (i, sample) in samples.iter().enumerate() {
            let at = |field: &str| format!("/samples/{i}{field}");
            if !labels::valid_metric_name(&sample.name) {
                return Err(PushError::Invalid { field: at("/name"), message: "not a Prometheus metric name".into() });
            }
            if !sample.value.is_finite() {
                return Err(PushError::Invalid { field: at("/value"), message: "the value must be finite".into() });
            }
            if let Some(bad) = sample.labels.keys().find(|name| !labels::valid_label_name(name)) {
                return Err(PushError::Invalid {
                    field: at(&format!("/labels/{}", bad.replace('~', "~0").replace('/', "~1"))),
                    message: "label names match ^[a-zA-Z_][a-zA-Z0-9_]*$, have at most 128 characters and do not \
                              start with __"
                        .into(),
                });
            }
            let known =
                inner.pushed_types.get(&sample.name).copied().or(batch_types.get(sample.name.as_str()).copied());
            let existing_kind = known.or_else(|| inner.kind_of(&sample.name));
            if let Some(kind) = existing_kind
                && kind != sample.kind
            {
                return Err(PushError::Invalid {
                    field: at("/type"),
                    message: format!("{} is a {}; a name keeps its type", sample.name, kind.as_str()),
                });
            }
            batch_types.insert(&sample.name, sample.kind);
            let key = SeriesKey { name: sample.name.clone(), labels: sample.labels.clone() };
            match inner.get(&key) {
                Some(series) => {
                    if sample.kind == MetricType::Counter
                        && let Some(last) = series.points.last_value()
                        && sample.value < last.v
                    {
                        return Err(PushError::Invalid {
                            field: at("/value"),
                            message: format!("counter {} went down from {} to {}", sample.name, last.v, sample.value),
                        });
                    }
                }
                None => {
                    new_keys.insert(key);
                }
            }
        }
        if inner.len() + new_keys.len() > self.limits.max_series {
            self.metrics.refused("series_limit", samples.len() as u64);
            return Err(PushError::SeriesLimit(format!(
                "the series limit of {} is reached ({} series stored, this batch adds {}): no sample was stored",
                self.limits.max_series,
                inner.len(),
                new_keys.len()
            )));
        }
        for sample in samples {
            inner.pushed_types.entry(sample.name.clone()).or_insert(sample.kind);
            let key = SeriesKey { name: sample.name.clone(), labels: sample.labels.clone() };
            let (_, series) = inner.get_or_insert(key, || {
                Series::new(self.create(), sample.kind, sample.help.as_deref().unwrap_or(""), source, false)
            });
            if let Some(help) = &sample.help {
                series.help = help.chars().take(1024).collect();
            }
            series.source = source.to_string();
            let t = sample.timestamp.map(|t| t.timestamp_millis()).unwrap_or(now_ms);
            series.insert(Point { t, v: sample.value, stale: false }, &self.limits);
        }
        self.metrics.series.set(inner.len() as i64);
        self.metrics.ingested("push", samples.len() as u64);
        Ok(samples.len())
    }

    /// Stores one scrape of `target`: every family's series with `extra` labels added (they
    /// win over the target's own), stale markers for the series it produced last time but
    /// not now. Series beyond the limit are refused and counted.
    pub fn ingest_scrape(&self, target: &str, source: &str, extra: &LabelSet, scrape: &Exposition, now_ms: i64) {
        let mut inner = self.inner.write().expect("series lock");
        let mut seen = HashSet::new();
        let mut refused = 0u64;
        let mut stored = 0u64;
        let mut put = |inner: &mut Inner,
                       key: SeriesKey,
                       kind: MetricType,
                       help: &str,
                       hidden: bool,
                       t: i64,
                       v: f64,
                       extra: &dyn Fn(&mut Series)| {
            if key.labels.len() > 32
                || key.labels.values().any(|v| v.len() > 1024)
                || key.labels.keys().any(|k| k.len() > 128 || k.starts_with("__"))
            {
                refused += 1;
                return None;
            }
            if inner.find(&key).is_none() && inner.len() >= self.limits.max_series {
                refused += 1;
                return None;
            }
            let (at, series) = inner.get_or_insert(key, || Series::new(self.create(), kind, help, source, hidden));
            series.kind = kind;
            if series.source != source {
                series.source = source.to_string();
            }
            series.insert(Point { t, v, stale: false }, &self.limits);
            extra(series);
            stored += 1;
            Some(at)
        };
        for family in &scrape.families {
            let help = family.help.as_str();
            match family.kind {
                Kind::Counter | Kind::Gauge | Kind::Untyped => {
                    let kind = if family.kind == Kind::Counter { MetricType::Counter } else { MetricType::Gauge };
                    for sample in &family.samples {
                        if sample.name.ends_with("_created") && family.kind == Kind::Counter {
                            continue;
                        }
                        let key = SeriesKey { name: sample.name.clone(), labels: with(&sample.labels, extra) };
                        let t = sample.timestamp_ms.unwrap_or(now_ms);
                        if let Some(key) = put(&mut inner, key, kind, help, false, t, sample.value, &|_| {}) {
                            seen.insert(key);
                        }
                    }
                }
                Kind::Histogram | Kind::Summary => {
                    // Group the family's samples by their labels less `le`/`quantile`.
                    let histogram = family.kind == Kind::Histogram;
                    let mut groups: BTreeMap<LabelSet, Group> = BTreeMap::new();
                    for sample in &family.samples {
                        let mut own = sample.labels.clone();
                        let bound = own.remove(if histogram { "le" } else { "quantile" });
                        let group = groups.entry(with(&own, extra)).or_default();
                        group.t = sample.timestamp_ms.unwrap_or(now_ms);
                        let suffix = sample.name.strip_prefix(family.name.as_str()).unwrap_or("");
                        match (suffix, bound) {
                            ("_sum", _) => group.sum = Some(sample.value),
                            ("_count", _) => group.count = Some(sample.value),
                            ("_bucket", Some(le)) if histogram => {
                                if let Some(le) = parse_bound(&le) {
                                    group.bounds.push((le, sample.value));
                                }
                            }
                            ("", Some(q)) if !histogram => {
                                if let Some(q) = parse_bound(&q) {
                                    group.bounds.push((q, sample.value));
                                }
                            }
                            _ => {}
                        }
                    }
                    let kind = if histogram { MetricType::Histogram } else { MetricType::Summary };
                    for (group_labels, group) in groups {
                        let Some(count) = group.count.or_else(|| {
                            group.bounds.iter().find(|(le, _)| histogram && le.is_infinite()).map(|(_, c)| *c)
                        }) else {
                            continue;
                        };
                        let mut bounds = group.bounds.clone();
                        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
                        let sum = group.sum;
                        let key = SeriesKey { name: family.name.clone(), labels: group_labels.clone() };
                        let fill = move |series: &mut Series| {
                            series.sum = sum;
                            if histogram {
                                series.buckets = bounds.iter().filter(|(le, _)| le.is_finite()).copied().collect();
                            } else {
                                series.quantiles = bounds.clone();
                            }
                        };
                        if let Some(key) = put(&mut inner, key, kind, help, false, group.t, count, &fill) {
                            seen.insert(key);
                        }
                        let derived = [("_count", Some(count)), ("_sum", sum)];
                        for (suffix, value) in derived {
                            let Some(value) = value else { continue };
                            let key =
                                SeriesKey { name: format!("{}{suffix}", family.name), labels: group_labels.clone() };
                            if let Some(key) = put(&mut inner, key, kind, help, true, group.t, value, &|_| {}) {
                                seen.insert(key);
                            }
                        }
                    }
                }
            }
        }
        let previous = inner.by_target.insert(target.to_string(), seen).unwrap_or_default();
        let Inner { by_target, series, .. } = &mut *inner;
        let seen = &by_target[target];
        for gone in previous.difference(seen) {
            if let Some(slot) = series.get_mut(gone) {
                slot.series.insert(Point { t: now_ms, v: f64::NAN, stale: true }, &self.limits);
            }
        }
        self.metrics.series.set(inner.len() as i64);
        self.metrics.ingested("scrape", stored);
        if refused > 0 {
            self.metrics.refused("series_limit_or_labels", refused);
        }
    }

    /// Writes one sample outside any scrape (the `up` series), leaving other series alone.
    pub fn set_value(&self, key: SeriesKey, kind: MetricType, help: &str, source: &str, t: i64, v: f64) {
        let mut inner = self.inner.write().expect("series lock");
        if inner.find(&key).is_none() && inner.len() >= self.limits.max_series {
            self.metrics.refused("series_limit", 1);
            return;
        }
        let (_, series) = inner.get_or_insert(key, || Series::new(self.create(), kind, help, source, false));
        series.insert(Point { t, v, stale: false }, &self.limits);
        self.metrics.series.set(inner.len() as i64);
    }

    /// Writes one point as it is (a stale marker or a NaN included), outside any scrape or
    /// push: how offline rule tests load their input series and the `ALERTS` series. False
    /// when the series limit refuses a new series.
    pub fn append(&self, key: SeriesKey, source: &str, point: Point) -> bool {
        let mut inner = self.inner.write().expect("series lock");
        if inner.find(&key).is_none() && inner.len() >= self.limits.max_series {
            return false;
        }
        let (_, series) = inner.get_or_insert(key, || Series::new(self.create(), MetricType::Gauge, "", source, false));
        series.insert(point, &self.limits);
        self.metrics.series.set(inner.len() as i64);
        true
    }

    /// Marks everything `target` produced stale (the target is gone), and a given series.
    pub fn end_target(&self, target: &str, also: Option<&SeriesKey>, now_ms: i64) {
        let mut inner = self.inner.write().expect("series lock");
        let mut ended: Vec<SeriesRef> = inner.by_target.remove(target).unwrap_or_default().into_iter().collect();
        ended.extend(also.and_then(|key| inner.find(key)));
        for at in ended {
            if let Some(slot) = inner.series.get_mut(&at)
                && slot.series.last().is_some_and(|p| !p.stale)
            {
                slot.series.insert(Point { t: now_ms, v: f64::NAN, stale: true }, &self.limits);
            }
        }
    }

    /// Forgets series whose newest point is older than the retention, and names no series
    /// carries any more.
    pub fn collect_garbage(&self, now_ms: i64) {
        let mut inner = self.inner.write().expect("series lock");
        let horizon = now_ms - self.limits.retention_ms;
        inner.retain(|series| series.last().is_some_and(|p| p.t >= horizon));
        let Inner { index, pushed_types, .. } = &mut *inner;
        pushed_types.retain(|name, _| index.contains_key(name));
        self.metrics.series.set(inner.len() as i64);
    }

    /// Runs `visit` over every series of `name` whose labels satisfy `matchers`, in
    /// creation order (the order Prometheus hands a query its series in), found through
    /// the index.
    pub fn select<T>(
        &self,
        name: &str,
        matchers: &[Matcher],
        mut visit: impl FnMut(&LabelSet, &Series) -> Option<T>,
    ) -> Vec<T> {
        let inner = self.inner.read().expect("series lock");
        inner
            .matching(name, matchers)
            .into_iter()
            .filter_map(|at| inner.series.get(&at))
            .filter_map(|slot| visit(&slot.key.labels, &slot.series))
            .collect()
    }

    /// The series `listMetrics` shows after `after`, at most `limit + 1` of them, with
    /// their latest finite value.
    pub fn list(
        &self,
        filter: &ListFilter<'_>,
        after: Option<&SeriesKey>,
        skip: usize,
        limit: usize,
    ) -> Vec<SeriesView> {
        let inner = self.inner.read().expect("series lock");
        let start = match (after, filter.name) {
            (Some(after), _) => std::ops::Bound::Excluded(after.clone()),
            (None, Some(name)) => {
                std::ops::Bound::Included(SeriesKey { name: name.to_string(), labels: LabelSet::new() })
            }
            (None, None) => std::ops::Bound::Unbounded,
        };
        inner
            .keys
            .range::<SeriesKey, _>((start.as_ref(), std::ops::Bound::Unbounded))
            .filter_map(|(key, at)| Some((key, &inner.series.get(at)?.series)))
            .take_while(|(key, _)| filter.name.is_none_or(|n| key.name == n))
            .filter(|(_, series)| !series.hidden)
            .filter(|(_, series)| filter.kind.is_none_or(|k| series.kind == k))
            .filter(|(key, series)| {
                filter
                    .source
                    .is_none_or(|s| series.source == s || key.labels.get("instance_id").is_some_and(|v| v == s))
            })
            .filter(|(key, _)| labels::all_match(&filter.matchers, &key.labels))
            .filter_map(|(key, series)| {
                let point = series
                    .points
                    .last_value()
                    .filter(|p| p.v.is_finite())
                    .or_else(|| series.points.iter().filter(|p| !p.stale && p.v.is_finite()).last())?;
                Some(SeriesView {
                    key: SeriesKey::clone(key),
                    kind: series.kind,
                    help: series.help.clone(),
                    source: series.source.clone(),
                    value: point.v,
                    t: point.t,
                    sum: series.sum.filter(|s| s.is_finite()),
                    buckets: series.buckets.iter().filter(|(_, c)| c.is_finite()).copied().collect(),
                    quantiles: series
                        .quantiles
                        .iter()
                        .filter(|(q, v)| (0.0..=1.0).contains(q) && v.is_finite())
                        .copied()
                        .collect(),
                })
            })
            .skip(skip)
            .take(limit + 1)
            .collect()
    }
}

#[derive(Default)]
struct Group {
    t: i64,
    sum: Option<f64>,
    count: Option<f64>,
    bounds: Vec<(f64, f64)>,
}

fn parse_bound(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        other => other.parse().ok(),
    }
}

/// `labels` with `extra` set over them.
fn with(labels: &LabelSet, extra: &LabelSet) -> LabelSet {
    let mut out = labels.clone();
    out.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str, kind: MetricType, labels: &[(&str, &str)], value: f64) -> PushedSample {
        PushedSample {
            name: name.into(),
            kind,
            help: None,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            value,
            timestamp: None,
        }
    }

    #[test]
    fn pushes_are_all_or_nothing_and_bounded() {
        let store = SeriesStore::new(Limits { max_series: 2, ..Limits::default() });
        store.push("t", &[sample("a", MetricType::Gauge, &[("x", "1")], 1.0)], 1000).unwrap();
        let over = store.push(
            "t",
            &[sample("a", MetricType::Gauge, &[("x", "2")], 1.0), sample("a", MetricType::Gauge, &[("x", "3")], 1.0)],
            2000,
        );
        assert!(matches!(over, Err(PushError::SeriesLimit(ref m)) if m.contains("series limit of 2")), "{over:?}");
        assert_eq!(store.len(), 1);
        let kind = store.push("t", &[sample("a", MetricType::Counter, &[("x", "1")], 1.0)], 3000);
        assert!(matches!(kind, Err(PushError::Invalid { ref field, .. }) if field == "/samples/0/type"));
        store.push("t", &[sample("c", MetricType::Counter, &[], 5.0)], 3000).unwrap();
        let down = store.push("t", &[sample("c", MetricType::Counter, &[], 4.0)], 4000);
        assert!(matches!(down, Err(PushError::Invalid { ref field, .. }) if field == "/samples/0/value"));
        let label = store.push("t", &[sample("a", MetricType::Gauge, &[("__x", "1")], 1.0)], 4000);
        assert!(matches!(label, Err(PushError::Invalid { ref field, .. }) if field == "/samples/0/labels/__x"));
    }

    #[test]
    fn scrapes_mark_vanished_series_stale() {
        let store = SeriesStore::new(Limits::default());
        let extra: LabelSet = [("instance_id".to_string(), "i1".to_string())].into();
        let first = crate::exposition::parse("# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"2\"} 2\n");
        store.ingest_scrape("t", "svc", &extra, &first, 1000);
        let second = crate::exposition::parse("# TYPE g gauge\ng{a=\"1\"} 3\n");
        store.ingest_scrape("t", "svc", &extra, &second, 2000);
        let values = store.select("g", &[], |labels, series| Some((labels["a"].clone(), series.value_at(2500))));
        assert_eq!(values, vec![("1".into(), Some(3.0)), ("2".into(), None)]);
        // Before the marker the old value is still what an instant query saw.
        let before = store.select("g", &[], |_, series| Some(series.value_at(1500)));
        assert_eq!(before, vec![Some(1.0), Some(2.0)]);
    }

    fn matcher(label: &str, op: labels::MatchOp, value: &str) -> Matcher {
        Matcher::new(&labels::MatcherSpec { label: label.into(), op, value: value.into() }).unwrap()
    }

    /// The `instance` values of what `select` finds, in its order.
    fn selected(store: &SeriesStore, name: &str, matchers: &[Matcher]) -> Vec<String> {
        store.select(name, matchers, |labels, _| Some(labels.get("instance").cloned().unwrap_or_default()))
    }

    /// The `instance` values a scan of every series finds, in creation order.
    fn scanned(store: &SeriesStore, name: &str, matchers: &[Matcher]) -> Vec<String> {
        let inner = store.inner.read().unwrap();
        let mut found: Vec<(u64, String)> = inner
            .series
            .values()
            .filter(|slot| slot.key.name == name && labels::all_match(matchers, &slot.key.labels))
            .map(|slot| (slot.series.created, slot.key.labels.get("instance").cloned().unwrap_or_default()))
            .collect();
        found.sort();
        found.into_iter().map(|(_, instance)| instance).collect()
    }

    /// Series of `http_requests_total` with and without `code`, one with `code=""`, and
    /// one of another name.
    fn indexed_store() -> SeriesStore {
        let store = SeriesStore::new(Limits::default());
        let codes: [Option<&str>; 6] = [Some("200"), Some("500"), Some("503"), None, Some(""), Some("404")];
        let samples: Vec<PushedSample> = (0..12)
            .map(|i| {
                let instance = format!("i{i}");
                let mut labels = vec![("instance", instance.as_str()), ("job", if i % 2 == 0 { "api" } else { "web" })];
                if let Some(code) = codes[i % codes.len()] {
                    labels.push(("code", code));
                }
                sample("http_requests_total", MetricType::Counter, &labels, i as f64)
            })
            .collect();
        store.push("t", &samples, 1000).unwrap();
        store
            .push("t", &[sample("other", MetricType::Gauge, &[("instance", "o1"), ("code", "200")], 1.0)], 1000)
            .unwrap();
        store
    }

    #[test]
    fn matchers_that_accept_the_empty_value_select_series_without_the_label() {
        use labels::MatchOp::*;
        let store = indexed_store();
        let name = "http_requests_total";
        // i3 and i9 have no code, i4 and i10 have code="": both have the empty value.
        assert_eq!(selected(&store, name, &[matcher("code", Equal, "")]), ["i3", "i4", "i9", "i10"]);
        assert_eq!(
            selected(&store, name, &[matcher("code", NotMatchRegex, "5..")]),
            ["i0", "i3", "i4", "i5", "i6", "i9", "i10", "i11"]
        );
        assert_eq!(
            selected(&store, name, &[matcher("code", MatchRegex, "200|")]),
            ["i0", "i3", "i4", "i6", "i9", "i10"]
        );
        assert_eq!(
            selected(&store, name, &[matcher("code", NotEqual, "")]),
            ["i0", "i1", "i2", "i5", "i6", "i7", "i8", "i11"]
        );
        assert_eq!(
            selected(&store, name, &[matcher("code", NotEqual, "200"), matcher("job", Equal, "api")]),
            ["i2", "i4", "i8", "i10"]
        );
        // A label no series has: every series has its empty value.
        assert_eq!(selected(&store, name, &[matcher("zone", Equal, "")]).len(), 12);
        assert!(selected(&store, name, &[matcher("zone", MatchRegex, ".+")]).is_empty());
        assert!(selected(&store, "missing", &[]).is_empty());
        assert_eq!(selected(&store, "other", &[matcher("code", Equal, "200")]), ["o1"]);
    }

    #[test]
    fn the_index_selects_what_a_scan_selects() {
        use labels::MatchOp::*;
        let store = indexed_store();
        let values = ["", "200", "5..", "200|", ".*", ".+", "2.*|4.*", "404", "x", "api"];
        let mut singles = Vec::new();
        for label in ["code", "job", "instance", "zone"] {
            for op in [Equal, NotEqual, MatchRegex, NotMatchRegex] {
                for value in values {
                    singles.push(matcher(label, op, value));
                }
            }
        }
        let mut checked = 0;
        for (i, first) in singles.iter().enumerate() {
            for second in singles.iter().skip(i % 7).step_by(7) {
                let matchers = [first.clone(), second.clone()];
                for name in ["http_requests_total", "other"] {
                    assert_eq!(
                        selected(&store, name, &matchers),
                        scanned(&store, name, &matchers),
                        "{name} {:?} {:?}",
                        (&first.label, first.op, &first.value),
                        (&second.label, second.op, &second.value)
                    );
                    checked += 1;
                }
            }
            assert_eq!(
                selected(&store, "http_requests_total", std::slice::from_ref(first)),
                scanned(&store, "http_requests_total", std::slice::from_ref(first))
            );
        }
        assert!(checked > 1000, "{checked}");
    }

    #[test]
    fn expired_series_leave_the_index_and_new_ones_join_it() {
        use labels::MatchOp::*;
        let store = SeriesStore::new(Limits { retention_ms: 10_000, ..Limits::default() });
        let old = [("instance", "old"), ("code", "500")];
        store.push("t", &[sample("g", MetricType::Gauge, &old, 1.0)], 1_000).unwrap();
        store
            .push("t", &[sample("g", MetricType::Gauge, &[("instance", "kept"), ("code", "500")], 1.0)], 5_000)
            .unwrap();
        store.push("t", &[sample("h", MetricType::Gauge, &[("instance", "gone")], 1.0)], 1_000).unwrap();
        let five = [matcher("code", Equal, "500")];
        assert_eq!(selected(&store, "g", &five), ["old", "kept"]);
        store.collect_garbage(12_000);
        assert_eq!(selected(&store, "g", &five), ["kept"]);
        assert_eq!(selected(&store, "g", &[matcher("code", NotEqual, "500")]), Vec::<String>::new());
        assert!(selected(&store, "h", &[]).is_empty());
        {
            // Nothing of the forgotten series is left in the index.
            let inner = store.inner.read().unwrap();
            assert!(!inner.index.contains_key("h"));
            assert_eq!(inner.index["g"].all.len(), 1);
            assert!(!inner.index["g"].postings["instance"].contains_key("old"));
            assert_eq!((inner.keys.len(), inner.lookup.len()), (inner.series.len(), inner.series.len()));
        }
        // The same identity comes back as a new series, after the kept one.
        store.push("t", &[sample("g", MetricType::Gauge, &old, 2.0)], 13_000).unwrap();
        assert_eq!(selected(&store, "g", &five), ["kept", "old"]);
        assert_eq!(store.select("g", &[matcher("instance", Equal, "old")], |_, s| s.value_at(13_000)), vec![2.0]);
        // A name whose series are all gone takes a new type.
        store.collect_garbage(100_000);
        store.push("t", &[sample("g", MetricType::Counter, &old, 1.0)], 100_000).unwrap();
    }

    #[test]
    fn scrapes_and_ended_targets_keep_the_index() {
        let store = SeriesStore::new(Limits::default());
        let first = crate::exposition::parse("# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"2\"} 2\n");
        store.ingest_scrape("t", "svc", &LabelSet::new(), &first, 1000);
        let second = crate::exposition::parse("# TYPE g gauge\ng{a=\"2\"} 3\ng{a=\"3\"} 4\n");
        store.ingest_scrape("t", "svc", &LabelSet::new(), &second, 2000);
        let by_a = |t| store.select("g", &[], |labels, s| Some((labels["a"].clone(), s.value_at(t))));
        let expected = vec![("1".to_string(), None), ("2".to_string(), Some(3.0)), ("3".to_string(), Some(4.0))];
        assert_eq!(by_a(2000), expected);
        store.end_target("t", None, 3000);
        assert!(by_a(3000).iter().all(|(_, v)| v.is_none()));
    }

    #[test]
    fn a_full_series_holds_its_bound_and_no_more() {
        let limits = Limits { max_samples_per_series: 720, ..Limits::default() };
        let mut series = Series::new(0, MetricType::Gauge, "", "t", false);
        for t in 0..1000 {
            series.insert(Point { t, v: t as f64, stale: false }, &limits);
        }
        assert_eq!(series.points.len(), 720);
        assert_eq!(series.points.iter().next().map(|p| p.t), Some(280));
    }

    #[test]
    fn histograms_are_one_listed_series_with_hidden_sum_and_count() {
        let store = SeriesStore::new(Limits::default());
        let text = "# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 3\nh_sum 0.9\nh_count 3\n";
        store.ingest_scrape("t", "svc", &LabelSet::new(), &crate::exposition::parse(text), 1000);
        let listed = store.list(&ListFilter::default(), None, 0, 10);
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].value, listed[0].sum, listed[0].buckets.clone()), (3.0, Some(0.9), vec![(0.1, 1.0)]));
        assert_eq!(store.select("h_count", &[], |_, s| s.value_at(1000)), vec![3.0]);
    }
}
