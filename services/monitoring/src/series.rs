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

use crate::exposition::{Exposition, Kind};
use crate::labels::{self, LabelSet, Matcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

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

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t: i64,
    pub v: f64,
    /// A stale marker: the series ended here.
    pub stale: bool,
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
    pub points: VecDeque<Point>,
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
            points: VecDeque::new(),
            sum: None,
            buckets: Vec::new(),
            quantiles: Vec::new(),
        }
    }

    /// The latest point (marker or value).
    pub fn last(&self) -> Option<&Point> {
        self.points.back()
    }

    /// The value an instant query at `t` sees: the latest point at or before `t` within the
    /// lookback, unless it is a stale marker.
    pub fn value_at(&self, t: i64) -> Option<f64> {
        let point = self.points.iter().rev().find(|p| p.t <= t)?;
        (!point.stale && point.t > t - LOOKBACK_MS).then_some(point.v)
    }

    /// The values in `(start, end]`, stale markers left out.
    pub fn range(&self, start: i64, end: i64) -> Vec<(i64, f64)> {
        // Points are ordered by time: find the window's edges by bisection.
        let first = self.points.partition_point(|p| p.t <= start);
        let last = self.points.partition_point(|p| p.t <= end);
        self.points.range(first..last.max(first)).filter(|p| !p.stale).map(|p| (p.t, p.v)).collect()
    }

    fn insert(&mut self, point: Point, limits: &Limits) {
        match self.points.back() {
            Some(last) if last.t == point.t => *self.points.back_mut().expect("a last point") = point,
            Some(last) if last.t > point.t => {
                let at = self.points.partition_point(|p| p.t < point.t);
                if self.points.get(at).is_some_and(|p| p.t == point.t) {
                    self.points[at] = point;
                } else {
                    self.points.insert(at, point);
                }
            }
            _ => self.points.push_back(point),
        }
        while self.points.len() > limits.max_samples_per_series {
            self.points.pop_front();
        }
        let horizon = self.points.back().map(|p| p.t - limits.retention_ms).unwrap_or(i64::MIN);
        while self.points.front().is_some_and(|p| p.t < horizon) {
            self.points.pop_front();
        }
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
        // bytes a point, under 2 GiB in the worst case.
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

#[derive(Default)]
struct Inner {
    series: BTreeMap<SeriesKey, Series>,
    /// The keys each scrape target produced last time, to mark those that leave stale.
    by_target: HashMap<String, BTreeSet<SeriesKey>>,
    /// The type every pushed name was first pushed with.
    pushed_types: HashMap<String, MetricType>,
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
        self.inner.read().expect("series lock").series.len()
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
            let existing_series =
                inner.series.range(SeriesKey { name: sample.name.clone(), labels: LabelSet::new() }..).next();
            let existing_kind =
                known.or_else(|| existing_series.filter(|(k, _)| k.name == sample.name).map(|(_, series)| series.kind));
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
            match inner.series.get(&key) {
                Some(series) => {
                    if sample.kind == MetricType::Counter
                        && let Some(last) = series.points.iter().rev().find(|p| !p.stale)
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
        if inner.series.len() + new_keys.len() > self.limits.max_series {
            self.metrics.refused("series_limit", samples.len() as u64);
            return Err(PushError::SeriesLimit(format!(
                "the series limit of {} is reached ({} series stored, this batch adds {}): no sample was stored",
                self.limits.max_series,
                inner.series.len(),
                new_keys.len()
            )));
        }
        for sample in samples {
            inner.pushed_types.entry(sample.name.clone()).or_insert(sample.kind);
            let key = SeriesKey { name: sample.name.clone(), labels: sample.labels.clone() };
            let series = inner.series.entry(key).or_insert_with(|| {
                Series::new(self.create(), sample.kind, sample.help.as_deref().unwrap_or(""), source, false)
            });
            if let Some(help) = &sample.help {
                series.help = help.chars().take(1024).collect();
            }
            series.source = source.to_string();
            let t = sample.timestamp.map(|t| t.timestamp_millis()).unwrap_or(now_ms);
            series.insert(Point { t, v: sample.value, stale: false }, &self.limits);
        }
        self.metrics.series.set(inner.series.len() as i64);
        self.metrics.ingested("push", samples.len() as u64);
        Ok(samples.len())
    }

    /// Stores one scrape of `target`: every family's series with `extra` labels added (they
    /// win over the target's own), stale markers for the series it produced last time but
    /// not now. Series beyond the limit are refused and counted.
    pub fn ingest_scrape(&self, target: &str, source: &str, extra: &LabelSet, scrape: &Exposition, now_ms: i64) {
        let mut inner = self.inner.write().expect("series lock");
        let mut seen = BTreeSet::new();
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
            if !inner.series.contains_key(&key) && inner.series.len() >= self.limits.max_series {
                refused += 1;
                return None;
            }
            let series = inner
                .series
                .entry(key.clone())
                .or_insert_with(|| Series::new(self.create(), kind, help, source, hidden));
            series.kind = kind;
            series.source = source.to_string();
            series.insert(Point { t, v, stale: false }, &self.limits);
            extra(series);
            stored += 1;
            Some(key)
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
        let previous = inner.by_target.insert(target.to_string(), seen.clone()).unwrap_or_default();
        for gone in previous.difference(&seen) {
            if let Some(series) = inner.series.get_mut(gone) {
                series.insert(Point { t: now_ms, v: f64::NAN, stale: true }, &self.limits);
            }
        }
        self.metrics.series.set(inner.series.len() as i64);
        self.metrics.ingested("scrape", stored);
        if refused > 0 {
            self.metrics.refused("series_limit_or_labels", refused);
        }
    }

    /// Writes one sample outside any scrape (the `up` series), leaving other series alone.
    pub fn set_value(&self, key: SeriesKey, kind: MetricType, help: &str, source: &str, t: i64, v: f64) {
        let mut inner = self.inner.write().expect("series lock");
        if !inner.series.contains_key(&key) && inner.series.len() >= self.limits.max_series {
            self.metrics.refused("series_limit", 1);
            return;
        }
        let limits = self.limits;
        let series = inner.series.entry(key).or_insert_with(|| Series::new(self.create(), kind, help, source, false));
        series.insert(Point { t, v, stale: false }, &limits);
        self.metrics.series.set(inner.series.len() as i64);
    }

    /// Writes one point as it is (a stale marker or a NaN included), outside any scrape or
    /// push: how offline rule tests load their input series and the `ALERTS` series. False
    /// when the series limit refuses a new series.
    pub fn append(&self, key: SeriesKey, source: &str, point: Point) -> bool {
        let mut inner = self.inner.write().expect("series lock");
        if !inner.series.contains_key(&key) && inner.series.len() >= self.limits.max_series {
            return false;
        }
        let limits = self.limits;
        let series =
            inner.series.entry(key).or_insert_with(|| Series::new(self.create(), MetricType::Gauge, "", source, false));
        series.insert(point, &limits);
        self.metrics.series.set(inner.series.len() as i64);
        true
    }

    /// Marks everything `target` produced stale (the target is gone), and a given series.
    pub fn end_target(&self, target: &str, also: Option<&SeriesKey>, now_ms: i64) {
        let mut inner = self.inner.write().expect("series lock");
        let mut keys: Vec<SeriesKey> = inner.by_target.remove(target).unwrap_or_default().into_iter().collect();
        keys.extend(also.cloned());
        for key in keys {
            if let Some(series) = inner.series.get_mut(&key)
                && series.last().is_some_and(|p| !p.stale)
            {
                series.insert(Point { t: now_ms, v: f64::NAN, stale: true }, &self.limits);
            }
        }
    }

    /// Forgets series whose newest point is older than the retention, and names no series
    /// carries any more.
    pub fn collect_garbage(&self, now_ms: i64) {
        let mut inner = self.inner.write().expect("series lock");
        let horizon = now_ms - self.limits.retention_ms;
        inner.series.retain(|_, series| series.last().is_some_and(|p| p.t >= horizon));
        let names: BTreeSet<String> = inner.series.keys().map(|k| k.name.clone()).collect();
        inner.pushed_types.retain(|name, _| names.contains(name));
        self.metrics.series.set(inner.series.len() as i64);
    }

    /// Runs `visit` over every series of `name` whose labels satisfy `matchers`.
    pub fn select<T>(
        &self,
        name: &str,
        matchers: &[Matcher],
        mut visit: impl FnMut(&LabelSet, &Series) -> Option<T>,
    ) -> Vec<T> {
        let inner = self.inner.read().expect("series lock");
        inner
            .series
            .range(SeriesKey { name: name.to_string(), labels: LabelSet::new() }..)
            .take_while(|(key, _)| key.name == name)
            .filter(|(key, _)| labels::all_match(matchers, &key.labels))
            .filter_map(|(key, series)| visit(&key.labels, series))
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
            .series
            .range((start, std::ops::Bound::Unbounded))
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
                let point = series.points.iter().rev().find(|p| !p.stale && p.v.is_finite())?;
                Some(SeriesView {
                    key: key.clone(),
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
