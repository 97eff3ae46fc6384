//! The performance service's rules: what a sample batch, an SLO, a policy and a benchmark
//! must satisfy beyond the contract's schemas, how statistics and reports are read from
//! the sketches, and the background work (retention, the burn-rate and desired-replica
//! metrics, benchmarks interrupted by a restart).
//!
//! No SQL here (`crate::store`), no HTTP (`crate::api`).

use crate::autoscaling::{self, Observed};
use crate::benchmark::{self, Progress};
use crate::metrics::PerformanceMetrics;
use crate::ownership::Ownership;
use crate::sketch::LatencySketch;
use crate::slo::{self, Counts};
use crate::store::{After, BucketKey, BucketRow, PerformanceStore};
use crate::tiers::{self, TIERS};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use pake_performance_server::types;
use pake_registry::store::{Store, StoreError};
use serde_json::json;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;
use uuid::Uuid;

/// What the service knows of the registry: whether a service is registered and how many
/// of its instances pass their checks.
pub trait Registry: Send + Sync + 'static {
    /// `None` when the service is not registered.
    fn passing_instances(&self, service: &str) -> Option<u64>;
}

/// The registry's own in-memory snapshot, as `pake serve` shares it.
impl Registry for Arc<pake_registry::snapshot::SnapshotCell> {
    fn passing_instances(&self, service: &str) -> Option<u64> {
        let snapshot = self.load();
        let data = snapshot.service_by_name(service)?;
        let now = Utc::now().timestamp_millis();
        let passing = data
            .instances
            .iter()
            .filter(|record| record.effective(now).status == pake_mesh_server::types::InstanceStatus::Passing)
            .count();
        Some(passing as u64)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PerformanceError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A body field breaks a rule of the service: the JSON pointer and why.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// A query parameter breaks a rule: its name and why.
    #[error("{parameter}: {message}")]
    BadParameter { parameter: &'static str, message: String },
    #[error("cursor is not one this server issued")]
    BadCursor,
    /// Benchmarks need a load generator this process was not given.
    #[error("{0}")]
    NoRunner(String),
    #[error(transparent)]
    Unavailable(StoreError),
    #[error(transparent)]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for PerformanceError {
    fn from(error: StoreError) -> Self {
        if error.store_is_down() {
            PerformanceError::Unavailable(error)
        } else {
            PerformanceError::Internal(Box::new(error))
        }
    }
}

impl From<serde_json::Error> for PerformanceError {
    fn from(error: serde_json::Error) -> Self {
        PerformanceError::Internal(Box::new(error))
    }
}

/// One request's timing as ingestion reads it: the contract's `Sample` (service, route
/// prefix, status, latency, when it was received), borrowed.
#[derive(Clone, Copy, Debug)]
pub struct SampleRef<'a> {
    pub service: &'a str,
    /// The route prefix; empty for none.
    pub route: &'a str,
    pub status: i64,
    pub latency_ms: f64,
    /// Unix milliseconds.
    pub at_ms: i64,
}

/// Latencies already folded by time bucket, as [`Performance::ingest_folded`] takes them.
#[derive(Debug, Clone, Copy)]
pub struct FoldedRef<'a> {
    pub service: &'a str,
    /// The route prefix; empty for none.
    pub route: &'a str,
    /// 1 to 5: 1xx to 5xx.
    pub status_class: u16,
    /// The bucket's start, Unix milliseconds: a multiple of the finest tier's width.
    pub bucket_ms: i64,
    pub latencies: &'a LatencySketch,
}

/// Sketches by service, route, status class, tier and bucket start: each sample or fold in
/// the finest tier that keeps it.
type Finest<'a> = HashMap<(&'a str, &'a str, i64, usize, i64), LatencySketch>;

/// The key of a sample or fold at `at_ms` in the finest tier that keeps it at `now`; none
/// when no tier does.
fn finest_key<'a>(
    service: &'a str,
    route: &'a str,
    status_class: i64,
    at_ms: i64,
    now: i64,
) -> Option<(&'a str, &'a str, i64, usize, i64)> {
    let tier = TIERS.iter().position(|tier| tier.keeps(at_ms, now))?;
    Some((service, route, status_class, tier, TIERS[tier].bucket(at_ms)))
}

/// Refuses a time more than 5 minutes ahead, or older than samples are kept.
fn check_time(at_ms: i64, now: i64, field: impl FnOnce() -> String) -> Result<(), PerformanceError> {
    if at_ms > now + tiers::MAX_SAMPLE_AHEAD_MS {
        return Err(invalid(field(), "is more than 5 minutes in the future"));
    }
    if at_ms < now - tiers::MAX_SAMPLE_AGE_MS {
        return Err(invalid(field(), "is older than the 90 days samples are kept"));
    }
    Ok(())
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> PerformanceError {
    PerformanceError::Invalid { field: field.into(), message: message.into() }
}

/// One page of a list.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

fn encode_cursor(created_ms: i64, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_ms}:{id}"))
}

fn decode_cursor(cursor: Option<&str>) -> Result<After, PerformanceError> {
    let Some(cursor) = cursor else { return Ok(None) };
    let text = URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(PerformanceError::BadCursor)?;
    let (ms, id) = text.split_once(':').ok_or(PerformanceError::BadCursor)?;
    Ok(Some((
        ms.parse().map_err(|_| PerformanceError::BadCursor)?,
        id.parse().map_err(|_| PerformanceError::BadCursor)?,
    )))
}

fn page<T>(mut rows: Vec<(i64, T)>, limit: u64, id: impl Fn(&T) -> Uuid) -> Page<T> {
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more { rows.last().map(|(ms, item)| encode_cursor(*ms, id(item))) } else { None };
    Page { items: rows.into_iter().map(|(_, item)| item).collect(), next_cursor }
}

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct Options {
    /// The most simulated users a benchmark may ask for.
    pub max_benchmark_users: u64,
    /// The gateway benchmarks send their load through (`http://host:port`); without it
    /// benchmarks are refused (503), since no other target is allowed.
    pub gateway_url: Option<String>,
    /// How long a cancel waits for a running load test to stop and its partial result.
    pub cancel_wait: Duration,
    /// How often a replica sharing PostgreSQL looks for benchmarks whose process is gone.
    pub orphan_check_interval: Duration,
    /// How often the burn-rate and desired-replica metrics are recomputed (the HPA's
    /// sync period by default).
    pub evaluation_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_benchmark_users: 1_000,
            gateway_url: None,
            cancel_wait: Duration::from_secs(30),
            orphan_check_interval: Duration::from_secs(5),
            evaluation_interval: Duration::from_secs(15),
        }
    }
}

/// Which requests count as good for an SLO.
pub(crate) fn good_in(slo: &types::Slo, rows: &[BucketRow]) -> Result<Counts, PerformanceError> {
    let mut counts = Counts::default();
    let mut latencies: Option<LatencySketch> = None;
    for row in rows.iter().filter(|row| route_matches(&row.route, slo.route.as_deref().map(String::as_str))) {
        counts.total += row.requests;
        match slo.objective {
            types::SloObjective::Availability if row.status_class < 5 => counts.good += row.requests,
            types::SloObjective::ErrorRate if row.status_class < 4 => counts.good += row.requests,
            types::SloObjective::Latency if row.status_class < 5 => {
                if let Some(sketch) = &row.sketch {
                    latencies
                        .get_or_insert_with(LatencySketch::new)
                        .merge(sketch)
                        .map_err(|e| PerformanceError::Internal(Box::new(e)))?;
                }
            }
            _ => {}
        }
    }
    if let (Some(sketch), Some(threshold)) = (latencies, slo.latency_threshold_ms) {
        counts.good += sketch.count_below(threshold.get() as f64);
    }
    Ok(counts)
}

/// A sample without a route counts for its service but for no route filter.
fn route_matches(route: &str, prefix: Option<&str>) -> bool {
    match prefix {
        None => true,
        Some(prefix) => !route.is_empty() && route.starts_with(prefix),
    }
}

fn window_ms(window: types::StatsWindow) -> i64 {
    match window {
        types::StatsWindow::X1m => 60_000,
        types::StatsWindow::X5m => 300_000,
        types::StatsWindow::X15m => 900_000,
        types::StatsWindow::X1h => 3_600_000,
        types::StatsWindow::X6h => 21_600_000,
        types::StatsWindow::X24h => 86_400_000,
    }
}

fn millis_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Latency percentiles of a sketch, as the contract's `LatencySummary`.
pub fn latency_summary(sketch: &LatencySketch) -> Option<serde_json::Value> {
    let q = |q: f64| sketch.quantile(q).unwrap_or(0.0);
    Some(json!({
        "p50": q(0.5), "p90": q(0.9), "p95": q(0.95), "p99": q(0.99),
        "max": sketch.max()?, "mean": sketch.mean()?,
    }))
}

/// A benchmark of this process, queued or running: its measurements and its stop.
struct Active {
    progress: Arc<Progress>,
    stop: load::bench::Stop,
    /// When the load test started.
    started: std::sync::OnceLock<std::time::Instant>,
    /// Fires when the run has written its end.
    done: tokio::sync::watch::Sender<bool>,
}

pub struct Performance {
    /// This service itself, for the benchmark runs it spawns.
    me: Weak<Performance>,
    store: PerformanceStore,
    /// Benchmarks queued or running in this process.
    active: std::sync::Mutex<HashMap<Uuid, Arc<Active>>>,
    /// Which of the store's benchmarks are this process's.
    ownership: Ownership,
    registry: Arc<dyn Registry>,
    metrics: PerformanceMetrics,
    options: Options,
    background: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Drop for Performance {
    fn drop(&mut self) {
        if let Ok(tasks) = self.background.lock() {
            tasks.iter().for_each(|task| task.abort());
        }
    }
}

impl Performance {
    /// Starts the service over the platform store: benchmarks a previous process left
    /// queued or running are marked failed, and the background work begins.
    pub async fn start(
        store: Store,
        registry: Arc<dyn Registry>,
        metrics: PerformanceMetrics,
        options: Options,
    ) -> Result<Arc<Performance>, PerformanceError> {
        let performance = Arc::new_cyclic(|me| Performance {
            me: me.clone(),
            ownership: Ownership::new(&store),
            store: PerformanceStore::new(store),
            active: std::sync::Mutex::new(HashMap::new()),
            registry,
            metrics,
            options,
            background: std::sync::Mutex::new(Vec::new()),
        });
        performance.fail_interrupted_benchmarks().await?;
        let weak = Arc::downgrade(&performance);
        let evaluation = tokio::spawn(evaluate_periodically(weak.clone()));
        let retention = tokio::spawn(purge_periodically(weak.clone()));
        performance.background.lock().expect("background task list").extend([evaluation, retention]);
        if performance.ownership.is_shared() {
            let orphans = tokio::spawn(fail_orphans_periodically(weak));
            performance.background.lock().expect("background task list").push(orphans);
        }
        Ok(performance)
    }

    pub fn store(&self) -> &PerformanceStore {
        &self.store
    }

    pub fn metrics(&self) -> &PerformanceMetrics {
        &self.metrics
    }

    // ---- samples and statistics ------------------------------------------------------

    /// Validates the whole batch, then merges it into the 10 s, 5 min and 1 h sketches.
    pub async fn ingest(&self, batch: &types::SampleBatch) -> Result<u64, PerformanceError> {
        self.ingest_samples(batch.samples.iter().map(|sample| SampleRef {
            service: sample.service.as_str(),
            route: sample.route.as_deref().map_or("", String::as_str),
            status: sample.status,
            latency_ms: sample.latency_ms,
            at_ms: sample.timestamp.timestamp_millis(),
        }))
        .await
    }

    /// [`Performance::ingest`] of samples already in the contract's bounds (names that
    /// match its patterns), borrowed from wherever they are: the gateway's in-process feed
    /// hands its own over without building the contract's batch.
    pub async fn ingest_samples<'a>(
        &self,
        samples: impl IntoIterator<Item = SampleRef<'a>>,
    ) -> Result<u64, PerformanceError> {
        let now = Utc::now().timestamp_millis();
        // Each sample goes into the finest tier that keeps it, keyed by borrowed names (no
        // allocation per sample); the coarser tiers' buckets are then merged from those,
        // since every tier's buckets are whole multiples of the finer ones'.
        let mut finest = Finest::default();
        let mut accepted = 0u64;
        for (i, sample) in samples.into_iter().enumerate() {
            accepted += 1;
            check_time(sample.at_ms, now, || format!("/samples/{i}/timestamp"))?;
            if !sample.latency_ms.is_finite() || sample.latency_ms < 0.0 {
                return Err(invalid(format!("/samples/{i}/latency_ms"), "must be a finite number of milliseconds"));
            }
            let status_class = (sample.status / 100).clamp(1, 5);
            if let Some(key) = finest_key(sample.service, sample.route, status_class, sample.at_ms, now) {
                finest.entry(key).or_default().add(sample.latency_ms);
            }
        }
        self.keep(finest, now).await?;
        self.metrics.samples_ingested.inc_by(accepted);
        Ok(accepted)
    }

    /// Takes latencies already folded into sketches by time bucket (the gateway of this
    /// process folds its own timings so): each as if its samples had been ingested one by
    /// one at its bucket's start. Answers how many samples the sketches hold.
    pub async fn ingest_folded<'a>(
        &self,
        folded: impl IntoIterator<Item = FoldedRef<'a>>,
    ) -> Result<u64, PerformanceError> {
        let now = Utc::now().timestamp_millis();
        let mut finest = Finest::default();
        let mut accepted = 0u64;
        for (i, fold) in folded.into_iter().enumerate() {
            check_time(fold.bucket_ms, now, || format!("/folded/{i}/bucket"))?;
            accepted += fold.latencies.count();
            let status_class = i64::from(fold.status_class).clamp(1, 5);
            if let Some(key) = finest_key(fold.service, fold.route, status_class, fold.bucket_ms, now) {
                finest
                    .entry(key)
                    .or_default()
                    .merge(fold.latencies)
                    .map_err(|e| PerformanceError::Internal(Box::new(e)))?;
            }
        }
        self.keep(finest, now).await?;
        self.metrics.samples_ingested.inc_by(accepted);
        Ok(accepted)
    }

    /// Merges sketches of the finest tier that keeps each into the store, and into every
    /// coarser tier's bucket holding it.
    async fn keep(&self, finest: Finest<'_>, now: i64) -> Result<(), PerformanceError> {
        let mut buckets: BTreeMap<BucketKey, LatencySketch> = BTreeMap::new();
        let mut services = BTreeSet::new();
        for ((service, route, status_class, tier, bucket_ms), sketch) in finest {
            for coarser in &TIERS[tier..] {
                let key = BucketKey {
                    service: service.to_string(),
                    resolution_s: coarser.seconds,
                    bucket_ms: coarser.bucket(bucket_ms),
                    route: route.to_string(),
                    status_class,
                };
                match buckets.entry(key) {
                    Entry::Vacant(vacant) => {
                        vacant.insert(sketch.clone());
                    }
                    Entry::Occupied(mut occupied) => {
                        occupied.get_mut().merge(&sketch).map_err(|e| PerformanceError::Internal(Box::new(e)))?;
                    }
                }
            }
            services.insert(service.to_string());
        }
        let services: Vec<String> = services.into_iter().collect();
        if !buckets.is_empty() {
            self.store.merge(&services, &buckets, now).await?;
        }
        Ok(())
    }

    /// Statistics of `service` over the `window` ending now.
    pub async fn stats(
        &self,
        service: &str,
        window: types::StatsWindow,
        route: Option<&str>,
    ) -> Result<types::ServiceStats, PerformanceError> {
        if !self.store.has_samples(service).await? {
            return Err(PerformanceError::NotFound(format!("no sample has been recorded for the service {service}")));
        }
        let now = Utc::now().timestamp_millis();
        let length = window_ms(window);
        let from = now - length;
        let rows = self.store.buckets(service, &tiers::cover(from, now, now), true).await?;
        let mut classes = [0u64; 5];
        let mut merged = LatencySketch::new();
        for row in rows.iter().filter(|row| route_matches(&row.route, route)) {
            classes[(row.status_class.clamp(1, 5) - 1) as usize] += row.requests;
            if let Some(sketch) = &row.sketch {
                merged.merge(sketch).map_err(|e| PerformanceError::Internal(Box::new(e)))?;
            }
        }
        let count: u64 = classes.iter().sum();
        let mut body = json!({
            "service": service,
            "window": window,
            "from": millis_to_time(from),
            "to": millis_to_time(now),
            "count": count,
            "throughput_rps": count as f64 / (length as f64 / 1000.0),
            "error_rate": if count == 0 { 0.0 } else { classes[4] as f64 / count as f64 },
            "status_classes": {
                "class_1xx": classes[0], "class_2xx": classes[1], "class_3xx": classes[2],
                "class_4xx": classes[3], "class_5xx": classes[4],
            },
        });
        if let Some(route) = route {
            body["route"] = json!(route);
        }
        if count > 0
            && let Some(summary) = latency_summary(&merged)
        {
            body["latency_ms"] = summary;
        }
        Ok(serde_json::from_value(body)?)
    }

    /// Good and total requests of an SLO in `[from, to)`.
    async fn slo_counts(&self, slo: &types::Slo, from: i64, to: i64, now: i64) -> Result<Counts, PerformanceError> {
        let latencies = slo.objective == types::SloObjective::Latency;
        let rows = self.store.buckets(slo.service.as_str(), &tiers::cover(from, to, now), latencies).await?;
        good_in(slo, &rows)
    }

    // ---- SLOs ------------------------------------------------------------------------

    fn check_slo(spec: &types::SloSpec) -> Result<(), PerformanceError> {
        if spec.objective == types::SloObjective::Latency && spec.latency_threshold_ms.is_none() {
            return Err(invalid("/latency_threshold_ms", "a latency objective needs latency_threshold_ms"));
        }
        if spec.target >= 100.0 {
            return Err(invalid(
                "/target",
                "a target of 100 leaves no error budget, so burn rates are undefined; promise at most 99.999",
            ));
        }
        if let Some(labels) = &spec.labels {
            for key in labels.keys() {
                let valid = (1..=63).contains(&key.len())
                    && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
                if !valid {
                    return Err(invalid(format!("/labels/{key}"), "label keys are 1 to 63 characters of [a-z0-9_.-]"));
                }
            }
        }
        Ok(())
    }

    fn slo_document(
        spec: &types::SloSpec,
        id: Uuid,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    ) -> Result<types::Slo, PerformanceError> {
        let mut doc = serde_json::to_value(spec)?;
        doc["id"] = json!(id);
        doc["created_at"] = json!(created_at);
        doc["updated_at"] = json!(updated_at);
        Ok(serde_json::from_value(doc)?)
    }

    fn slo_conflict(error: StoreError, spec: &types::SloSpec) -> PerformanceError {
        match error {
            StoreError::Conflict(_) => PerformanceError::Conflict(format!(
                "the service {} already has an SLO named {}",
                spec.service.as_str(),
                spec.name.as_str()
            )),
            other => other.into(),
        }
    }

    pub async fn create_slo(&self, spec: &types::SloSpec) -> Result<types::Slo, PerformanceError> {
        Self::check_slo(spec)?;
        let now = now_millis_time();
        let slo = Self::slo_document(spec, Uuid::new_v4(), now, now)?;
        self.store.insert_slo(&slo).await.map_err(|e| Self::slo_conflict(e, spec))?;
        Ok(slo)
    }

    pub async fn replace_slo(&self, id: Uuid, spec: &types::SloSpec) -> Result<types::Slo, PerformanceError> {
        Self::check_slo(spec)?;
        let current = self.get_slo(id).await?;
        let slo = Self::slo_document(spec, id, current.created_at, now_millis_time())?;
        self.store.replace_slo(&slo).await.map_err(|e| match e {
            StoreError::NotFound => not_found_slo(id),
            other => Self::slo_conflict(other, spec),
        })?;
        if current.service != slo.service || current.name != slo.name {
            self.metrics.forget_slo(&current);
        }
        Ok(slo)
    }

    pub async fn delete_slo(&self, id: Uuid) -> Result<(), PerformanceError> {
        let current = self.get_slo(id).await?;
        self.store.delete_slo(id).await.map_err(|e| match e {
            StoreError::NotFound => not_found_slo(id),
            other => other.into(),
        })?;
        self.metrics.forget_slo(&current);
        Ok(())
    }

    pub async fn get_slo(&self, id: Uuid) -> Result<types::Slo, PerformanceError> {
        self.store.slo(id).await?.ok_or_else(|| not_found_slo(id))
    }

    pub async fn list_slos(
        &self,
        service: Option<&str>,
        objective: Option<types::SloObjective>,
        limit: u64,
        cursor: Option<&str>,
    ) -> Result<Page<types::Slo>, PerformanceError> {
        let after = decode_cursor(cursor)?;
        let objective = objective.map(|o| o.to_string());
        let rows = self.store.slos(service, objective.as_deref(), after, limit as i64 + 1).await?;
        Ok(page(rows, limit, |slo| slo.id))
    }

    /// The compliance report of an SLO over its window ending at `at` (now when `None`),
    /// computed from the buckets of that time.
    pub async fn slo_report(&self, id: Uuid, at: Option<DateTime<Utc>>) -> Result<types::SloReport, PerformanceError> {
        let slo = self.get_slo(id).await?;
        let now = Utc::now();
        if let Some(at) = at
            && at > now
        {
            return Err(PerformanceError::BadParameter {
                parameter: "at",
                message: "must not be in the future".into(),
            });
        }
        let report = self.report(&slo, at.unwrap_or(now), now).await?;
        if at.is_none() {
            self.metrics.record_report(&slo, &report);
        }
        Ok(report)
    }

    async fn report(
        &self,
        slo: &types::Slo,
        end: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<types::SloReport, PerformanceError> {
        let (end_ms, now_ms) = (end.timestamp_millis(), now.timestamp_millis());
        let window_days = slo.window_days.get();
        let start_ms = end_ms - window_days as i64 * 86_400_000;
        let counts = self.slo_counts(slo, start_ms, end_ms, now_ms).await?;
        let mut rates = BTreeMap::new();
        let mut burn_rates = Vec::new();
        for (window, base_ms) in slo::WINDOWS {
            let length = slo::scaled_ms(base_ms, window_days);
            let counts = self.slo_counts(slo, end_ms - length, end_ms, now_ms).await?;
            let rate = slo::burn_rate(counts, slo.target);
            let threshold = slo::threshold_of(window);
            rates.insert(window.to_string(), rate);
            burn_rates
                .push(json!({"window": window, "rate": rate, "threshold": threshold, "alerting": rate >= threshold}));
        }
        let alerts: Vec<serde_json::Value> = slo::ALERTS
            .iter()
            .map(|alert| {
                let burning =
                    |w: types::BurnRateWindow| rates.get(&w.to_string()).copied().unwrap_or(0.0) >= alert.threshold;
                json!({
                    "severity": alert.severity, "long_window": alert.long, "short_window": alert.short,
                    "burn_rate_threshold": alert.threshold, "firing": burning(alert.long) && burning(alert.short),
                })
            })
            .collect();
        let sli = slo::sli(counts);
        let budget = slo::budget(counts, slo.target);
        let report = json!({
            "slo_id": slo.id,
            "service": slo.service,
            "objective": slo.objective,
            "window_start": millis_to_time(start_ms),
            "window_end": millis_to_time(end_ms),
            "sli": sli,
            "target": slo.target,
            "compliant": sli.is_none_or(|sli| sli >= slo.target),
            "error_budget": {
                "total": budget.total, "consumed": budget.consumed,
                "remaining": budget.remaining, "remaining_percent": budget.remaining_percent,
            },
            "burn_rates": burn_rates,
            "alerts": alerts,
            "total_requests": counts.total,
            "good_requests": counts.good,
            "generated_at": Utc::now(),
        });
        Ok(serde_json::from_value(report)?)
    }

    // ---- auto-scaling ----------------------------------------------------------------

    fn check_policy(spec: &types::AutoscalingPolicySpec) -> Result<(), PerformanceError> {
        if spec.min_replicas > spec.max_replicas {
            return Err(invalid("/min_replicas", "min_replicas must not exceed max_replicas"));
        }
        if spec.target_cpu_utilization.is_none()
            && spec.target_rps_per_replica.is_none()
            && spec.target_p95_latency_ms.is_none()
        {
            return Err(invalid(
                "/target_rps_per_replica",
                "a policy needs at least one of target_cpu_utilization, target_rps_per_replica, target_p95_latency_ms",
            ));
        }
        Ok(())
    }

    fn policy_document(
        spec: &types::AutoscalingPolicySpec,
        id: Uuid,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    ) -> Result<types::AutoscalingPolicy, PerformanceError> {
        let mut doc = serde_json::to_value(spec)?;
        doc["id"] = json!(id);
        doc["created_at"] = json!(created_at);
        doc["updated_at"] = json!(updated_at);
        Ok(serde_json::from_value(doc)?)
    }

    fn policy_conflict(error: StoreError, service: &str) -> PerformanceError {
        match error {
            StoreError::Conflict(_) => {
                PerformanceError::Conflict(format!("the service {service} already has an auto-scaling policy"))
            }
            other => other.into(),
        }
    }

    pub async fn create_policy(
        &self,
        spec: &types::AutoscalingPolicySpec,
    ) -> Result<types::AutoscalingPolicy, PerformanceError> {
        Self::check_policy(spec)?;
        let now = now_millis_time();
        let policy = Self::policy_document(spec, Uuid::new_v4(), now, now)?;
        self.store.insert_policy(&policy).await.map_err(|e| Self::policy_conflict(e, spec.service.as_str()))?;
        Ok(policy)
    }

    pub async fn replace_policy(
        &self,
        id: Uuid,
        spec: &types::AutoscalingPolicySpec,
    ) -> Result<types::AutoscalingPolicy, PerformanceError> {
        Self::check_policy(spec)?;
        let current = self.get_policy(id).await?;
        let policy = Self::policy_document(spec, id, current.created_at, now_millis_time())?;
        let moved = current.service != policy.service;
        self.store.replace_policy(&policy, moved).await.map_err(|e| match e {
            StoreError::NotFound => not_found_policy(id),
            other => Self::policy_conflict(other, spec.service.as_str()),
        })?;
        if moved || !policy.enabled {
            self.metrics.forget_service(current.service.as_str());
        }
        Ok(policy)
    }

    pub async fn delete_policy(&self, id: Uuid) -> Result<(), PerformanceError> {
        let current = self.get_policy(id).await?;
        self.store.delete_policy(id).await.map_err(|e| match e {
            StoreError::NotFound => not_found_policy(id),
            other => other.into(),
        })?;
        self.metrics.forget_service(current.service.as_str());
        Ok(())
    }

    pub async fn get_policy(&self, id: Uuid) -> Result<types::AutoscalingPolicy, PerformanceError> {
        self.store.policy(id).await?.ok_or_else(|| not_found_policy(id))
    }

    pub async fn list_policies(
        &self,
        service: Option<&str>,
        limit: u64,
        cursor: Option<&str>,
    ) -> Result<Page<types::AutoscalingPolicy>, PerformanceError> {
        let after = decode_cursor(cursor)?;
        let rows = self.store.policies(service, after, limit as i64 + 1).await?;
        Ok(page(rows, limit, |policy| policy.id))
    }

    /// The load of `service` over the last minute.
    async fn observed_load(&self, service: &str, now_ms: i64) -> Result<Observed, PerformanceError> {
        let from = now_ms - 60_000;
        let rows = self.store.buckets(service, &tiers::cover(from, now_ms, now_ms), true).await?;
        let mut merged = LatencySketch::new();
        let mut requests = 0;
        for row in &rows {
            requests += row.requests;
            if let Some(sketch) = &row.sketch {
                merged.merge(sketch).map_err(|e| PerformanceError::Internal(Box::new(e)))?;
            }
        }
        // No operation of the contract reports CPU yet, so CPU targets have no data.
        Ok(Observed { rps: requests as f64 / 60.0, p95_ms: merged.quantile(0.95), cpu_utilization: None })
    }

    /// The recommendation of a policy now, remembered for later stabilisation.
    pub async fn recommendation(&self, id: Uuid) -> Result<types::AutoscalingRecommendation, PerformanceError> {
        let policy = self.get_policy(id).await?;
        self.recommend(&policy).await
    }

    async fn recommend(
        &self,
        policy: &types::AutoscalingPolicy,
    ) -> Result<types::AutoscalingRecommendation, PerformanceError> {
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let service = policy.service.as_str();
        let current = self.registry.passing_instances(service).unwrap_or(0);
        let observed = self.observed_load(service, now_ms).await?;
        let windows = policy.scale_up_stabilization_seconds.max(policy.scale_down_stabilization_seconds).max(0);
        let history = self.store.recommendations(policy.id, now_ms - windows * 1000).await?;
        let parameters = autoscaling::Policy {
            min_replicas: policy.min_replicas.get(),
            max_replicas: policy.max_replicas.get(),
            target_cpu_utilization: policy.target_cpu_utilization,
            target_rps_per_replica: policy.target_rps_per_replica,
            target_p95_latency_ms: policy.target_p95_latency_ms.map(|t| t.get() as f64),
            scale_up_stabilization_ms: policy.scale_up_stabilization_seconds * 1000,
            scale_down_stabilization_ms: policy.scale_down_stabilization_seconds * 1000,
            max_scale_up_step: policy.max_scale_up_step.get(),
            max_scale_down_step: policy.max_scale_down_step.get(),
        };
        let decision = autoscaling::recommend(&parameters, current, &observed, &history, now_ms);
        if let Some(raw) = decision.raw {
            self.store.record_recommendation(policy.id, now_ms, raw).await?;
        }
        let mut reason = decision.reason;
        if policy.enabled {
            self.metrics.desired_replicas(service, decision.desired);
        } else {
            reason = format!("the policy is disabled, so this is not acted upon: {reason}");
        }
        reason = reason.chars().take(1024).collect();
        Ok(serde_json::from_value(json!({
            "policy_id": policy.id,
            "service": policy.service,
            "current_replicas": current,
            "desired_replicas": decision.desired,
            "recommended_at": now,
            "reason": reason,
            "metrics": {
                "observed_rps": observed.rps,
                "observed_p95_ms": observed.p95_ms,
                "observed_cpu_utilization": observed.cpu_utilization,
            },
            "stabilized": decision.stabilized,
        }))?)
    }

    // ---- benchmarks ------------------------------------------------------------------

    /// Validates and queues a benchmark; it runs when the process's load generator is free
    /// (one load test at a time, first come first served).
    pub async fn start_benchmark(&self, spec: &types::BenchmarkSpec) -> Result<types::Benchmark, PerformanceError> {
        if self.registry.passing_instances(spec.service.as_str()).is_none() {
            return Err(invalid("/service", format!("no service named {} is registered", spec.service.as_str())));
        }
        if spec.users.get() > self.options.max_benchmark_users {
            return Err(invalid(
                "/users",
                format!("this server runs benchmarks of at most {} users", self.options.max_benchmark_users),
            ));
        }
        if let Some(slo_id) = spec.slo_id
            && self.store.slo(slo_id).await?.is_none()
        {
            return Err(invalid("/slo_id", format!("no SLO has the id {slo_id}")));
        }
        if spec.hatch_rate_per_second < load::bench::SLOWEST_HATCH_RATE {
            return Err(invalid(
                "/hatch_rate_per_second",
                "is below one user a day, the slowest rate the load generator starts users at",
            ));
        }
        for (name, value) in spec.headers.iter().flat_map(|headers| headers.iter()) {
            // A JSON pointer escapes `~` and `/` in a member's name.
            let field = format!("/headers/{}", name.replace('~', "~0").replace('/', "~1"));
            if axum::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(field, "is not an HTTP header name"));
            }
            if axum::http::HeaderValue::from_str(value.as_str()).is_err() {
                return Err(invalid(field, "is not a value an HTTP header can carry (control characters)"));
            }
        }
        let Some(gateway) = self.options.gateway_url.clone() else {
            return Err(PerformanceError::NoRunner(
                "this server was not given the gateway's address, the only way benchmarks may go; nothing was queued"
                    .into(),
            ));
        };
        let benchmark: types::Benchmark = serde_json::from_value(json!({
            "id": Uuid::new_v4(),
            "name": spec.name,
            "service": spec.service,
            "path": spec.path,
            "method": spec.method,
            "body": spec.body,
            "headers": spec.headers,
            "users": spec.users,
            "hatch_rate_per_second": spec.hatch_rate_per_second,
            "duration_seconds": spec.duration_seconds,
            "think_time_ms": spec.think_time_ms,
            "slo_id": spec.slo_id,
            "thresholds": spec.thresholds,
            "status": "queued",
            "created_at": now_millis_time(),
            "started_at": null,
            "finished_at": null,
        }))?;
        // Claimed before it is stored: no replica may take it for one whose process is gone.
        self.ownership.claim(benchmark.id).await;
        let inserted = self.store.insert_benchmark(&benchmark).await;
        if inserted.is_err() {
            self.ownership.release(benchmark.id).await;
        }
        match inserted {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(PerformanceError::Conflict(format!(
                    "a benchmark against {} is already queued or running",
                    spec.service.as_str()
                )));
            }
            Err(error) => return Err(error.into()),
        }
        let active = Arc::new(Active {
            progress: Arc::new(Progress::default()),
            stop: load::bench::Stop::default(),
            started: std::sync::OnceLock::new(),
            done: tokio::sync::watch::channel(false).0,
        });
        self.active.lock().unwrap_or_else(PoisonError::into_inner).insert(benchmark.id, active.clone());
        tokio::spawn(run_benchmark(self.me.clone(), benchmark.clone(), active, gateway));
        Ok(benchmark)
    }

    /// A running benchmark of this process with its measurements so far as its result
    /// (fresher than the progress its run stores once a second).
    fn with_progress(&self, mut benchmark: types::Benchmark) -> types::Benchmark {
        if benchmark.status == types::BenchmarkStatus::Running {
            let active = self.active.lock().unwrap_or_else(PoisonError::into_inner).get(&benchmark.id).cloned();
            if let Some(active) = active
                && let Some(started) = active.started.get()
            {
                benchmark.result = active.progress.result(started.elapsed()).ok();
            }
        }
        benchmark
    }

    /// The benchmark; while it runs here, its result is the measurements so far.
    pub async fn get_benchmark(&self, id: Uuid) -> Result<types::Benchmark, PerformanceError> {
        let benchmark = self.store.benchmark(id).await?.ok_or_else(|| not_found_benchmark(id))?;
        Ok(self.with_progress(benchmark))
    }

    pub async fn list_benchmarks(
        &self,
        status: Option<types::BenchmarkStatus>,
        service: Option<&str>,
        limit: u64,
        cursor: Option<&str>,
    ) -> Result<Page<types::Benchmark>, PerformanceError> {
        let after = decode_cursor(cursor)?;
        let status = status.map(|s| s.to_string());
        let rows = self.store.benchmarks(status.as_deref(), service, after, limit as i64 + 1).await?;
        let rows = rows.into_iter().map(|(ms, benchmark)| (ms, self.with_progress(benchmark))).collect();
        Ok(page(rows, limit, |benchmark| benchmark.id))
    }

    /// Cancels a queued or running benchmark; 409 once it has finished. A load test
    /// running here is stopped and the answer waits for its partial result; one running
    /// in another replica is marked cancelled, and that replica stops it and writes its
    /// partial result within a second or so.
    pub async fn cancel_benchmark(&self, id: Uuid) -> Result<types::Benchmark, PerformanceError> {
        let mut benchmark = self.store.benchmark(id).await?.ok_or_else(|| not_found_benchmark(id))?;
        let from = benchmark.status.to_string();
        if !matches!(benchmark.status, types::BenchmarkStatus::Queued | types::BenchmarkStatus::Running) {
            return Err(PerformanceError::Conflict(format!("the benchmark is already {from}")));
        }
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned();
        let cancelled = |mut benchmark: types::Benchmark| {
            benchmark.status = types::BenchmarkStatus::Cancelled;
            benchmark.finished_at = Some(now_millis_time());
            benchmark
        };
        if benchmark.status == types::BenchmarkStatus::Queued {
            let queued = cancelled(benchmark.clone());
            if self.store.update_benchmark(&queued, &["queued"]).await? {
                if let Some(active) = &active {
                    active.stop.stop();
                }
                return Ok(queued);
            }
            // It started meanwhile.
            benchmark = self.store.benchmark(id).await?.ok_or_else(|| not_found_benchmark(id))?;
            if benchmark.status != types::BenchmarkStatus::Running {
                return Err(PerformanceError::Conflict(format!("the benchmark is already {}", benchmark.status)));
            }
        }
        if let Some(active) = active {
            let mut done = active.done.subscribe();
            active.stop.stop();
            if tokio::time::timeout(self.options.cancel_wait, done.wait_for(|done| *done)).await.is_ok() {
                return self.get_benchmark(id).await;
            }
            tracing::warn!(%id, "the load test did not stop in time; the benchmark is cancelled without its result");
        }
        let running = cancelled(benchmark);
        if !self.store.update_benchmark(&running, &["running"]).await? {
            return self.get_benchmark(id).await.and_then(|now| match now.status {
                types::BenchmarkStatus::Cancelled => Ok(now),
                status => Err(PerformanceError::Conflict(format!("the benchmark is already {status}"))),
            });
        }
        Ok(running)
    }

    /// The end of a run, as it is written: its result, and its verdict when it completed.
    async fn end_of_run(
        &self,
        mut benchmark: types::Benchmark,
        active: &Active,
        outcome: anyhow::Result<load::bench::Finished>,
    ) -> Result<(), PerformanceError> {
        let elapsed = match &outcome {
            Ok(finished) => finished.elapsed,
            Err(_) => active.started.get().map(|started| started.elapsed()).unwrap_or_default(),
        };
        let result = active.progress.result(elapsed)?;
        benchmark.finished_at = Some(now_millis_time());
        let stopped = active.stop.is_stopped();
        match outcome {
            Ok(finished) if finished.ended == load::bench::Ended::Completed && !stopped => {
                benchmark.verdict = Some(self.verdict(&benchmark, &active.progress, &result).await?);
                benchmark.result = Some(result.clone());
                benchmark.status = types::BenchmarkStatus::Completed;
                if self.store.update_benchmark(&benchmark, &["running"]).await? {
                    return Ok(());
                }
                // Cancelled elsewhere as it ended: cancelled it stays, with its result.
                benchmark.verdict = None;
                benchmark.status = types::BenchmarkStatus::Cancelled;
            }
            Ok(_) => {
                benchmark.result = Some(result);
                benchmark.status = types::BenchmarkStatus::Cancelled;
            }
            Err(error) => {
                benchmark.result = (result.requests > 0).then_some(result);
                benchmark.status = types::BenchmarkStatus::Failed;
                let reason: String = format!("{error:#}").chars().take(2048).collect();
                benchmark.error =
                    Some(reason.parse().map_err(|e: types::error::ConversionError| {
                        PerformanceError::Internal(e.to_string().into())
                    })?);
                if self.store.update_benchmark(&benchmark, &["running"]).await? {
                    return Ok(());
                }
                benchmark.error = None;
                benchmark.status = types::BenchmarkStatus::Cancelled;
            }
        }
        self.store.update_benchmark(&benchmark, &["running", "cancelled"]).await?;
        Ok(())
    }

    /// The verdict of a completed run: its thresholds and SLO, or the platform SLA.
    async fn verdict(
        &self,
        benchmark: &types::Benchmark,
        progress: &Progress,
        result: &types::BenchmarkResult,
    ) -> Result<types::BenchmarkVerdict, PerformanceError> {
        let slo = match benchmark.slo_id {
            Some(id) => Some(self.store.slo(id).await?.ok_or(id)),
            None => None,
        };
        let route = benchmark.path.as_str().split('?').next().unwrap_or_default();
        let judged = match &slo {
            Some(Ok(slo)) => Some((slo, slo::sli(good_in(slo, &progress.rows(route))?))),
            _ => None,
        };
        let mut verdict = benchmark::verdict(result, benchmark.thresholds.as_ref(), judged)?;
        if let Some(Err(id)) = slo {
            verdict.passed = false;
            verdict.reasons.push(serde_json::from_value(json!(format!(
                "the SLO {id} was deleted before the run ended: it could not be judged"
            )))?);
        }
        Ok(verdict)
    }

    /// Benchmarks left queued or running by a process that stopped (a previous start of
    /// this one, or a replica that is gone) can never finish: they fail, saying why.
    async fn fail_interrupted_benchmarks(&self) -> Result<(), PerformanceError> {
        for status in ["queued", "running"] {
            for mut benchmark in self.store.benchmarks_in(status).await? {
                if !self.ownership.orphaned(benchmark.id).await {
                    continue;
                }
                benchmark.status = types::BenchmarkStatus::Failed;
                benchmark.finished_at = Some(now_millis_time());
                benchmark.error = Some(
                    format!("interrupted: the performance service running it stopped while the benchmark was {status}")
                        .parse()
                        .map_err(|e: types::error::ConversionError| PerformanceError::Internal(e.to_string().into()))?,
                );
                self.store.update_benchmark(&benchmark, &[status]).await?;
            }
        }
        Ok(())
    }

    // ---- background ------------------------------------------------------------------

    /// Recomputes the burn-rate metrics of every SLO and the desired replicas of every
    /// enabled policy.
    pub async fn evaluate(&self) -> Result<(), PerformanceError> {
        let now = Utc::now();
        for slo in self.store.all_slos().await? {
            let report = self.report(&slo, now, now).await?;
            self.metrics.record_report(&slo, &report);
        }
        for policy in self.store.all_policies().await? {
            if policy.enabled {
                self.recommend(&policy).await?;
            }
        }
        Ok(())
    }
}

fn now_millis_time() -> DateTime<Utc> {
    millis_to_time(Utc::now().timestamp_millis())
}

fn not_found_slo(id: Uuid) -> PerformanceError {
    PerformanceError::NotFound(format!("no SLO has the id {id}"))
}

fn not_found_policy(id: Uuid) -> PerformanceError {
    PerformanceError::NotFound(format!("no auto-scaling policy has the id {id}"))
}

fn not_found_benchmark(id: Uuid) -> PerformanceError {
    PerformanceError::NotFound(format!("no benchmark has the id {id}"))
}

/// How often a run stores its progress and reads whether it was ended elsewhere.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Until `stop` is used.
async fn stopped(stop: &load::bench::Stop) {
    while !stop.is_stopped() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// While a run is this process's: counted as running, and forgotten (its waiters told)
/// however it ends.
struct RunGuard {
    performance: Arc<Performance>,
    id: Uuid,
    active: Arc<Active>,
    counted: bool,
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if self.counted {
            self.performance.metrics.benchmarks_running.dec();
        }
        self.performance.active.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
        self.active.done.send_replace(true);
        let (performance, id) = (self.performance.clone(), self.id);
        tokio::spawn(async move { performance.ownership.release(id).await });
    }
}

/// One benchmark: waits for the process's load generator, runs, and writes its end.
async fn run_benchmark(
    performance: Weak<Performance>,
    mut benchmark: types::Benchmark,
    active: Arc<Active>,
    gateway: String,
) {
    let id = benchmark.id;
    let slot = tokio::select! {
        slot = load::bench::Slot::take() => Some(slot),
        () = stopped(&active.stop) => None,
    };
    let Some(performance) = performance.upgrade() else { return };
    let mut guard = RunGuard { performance: performance.clone(), id, active: active.clone(), counted: false };
    // Cancelled while queued: the cancel wrote it.
    let Some(slot) = slot else { return };
    benchmark.status = types::BenchmarkStatus::Running;
    benchmark.started_at = Some(now_millis_time());
    match performance.store.update_benchmark(&benchmark, &["queued"]).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            tracing::warn!(%id, %error, "a queued benchmark could not be started");
            return;
        }
    }
    let _ = active.started.set(std::time::Instant::now());
    performance.metrics.benchmarks_running.inc();
    guard.counted = true;
    let plan = load::bench::Plan {
        base_url: gateway,
        method: benchmark.method.to_string(),
        path: benchmark.path.to_string(),
        headers: benchmark
            .headers
            .as_ref()
            .map(|headers| headers.iter().map(|(name, value)| (name.clone(), value.to_string())).collect())
            .unwrap_or_default(),
        body: benchmark.body.as_ref().map(|body| body.to_string()),
        users: usize::try_from(benchmark.users.get()).unwrap_or(usize::MAX),
        hatch_rate: benchmark.hatch_rate_per_second,
        hold: Duration::from_secs(benchmark.duration_seconds.get()),
        think: Duration::from_millis(u64::try_from(benchmark.think_time_ms).unwrap_or(0)),
    };
    let observer: Arc<dyn load::bench::Observer> = active.progress.clone();
    let outcome = {
        let run = load::bench::run(&slot, &plan, observer, &active.stop);
        tokio::pin!(run);
        // Once a second the progress is stored, for the replicas that do not run it; a
        // cancel answered by another replica, or a replica that failed the run, reaches
        // this one through the store.
        loop {
            tokio::select! {
                outcome = &mut run => break outcome,
                () = tokio::time::sleep(PROGRESS_INTERVAL) => {
                    match performance.store.benchmark(id).await {
                        Ok(Some(stored)) if stored.status != types::BenchmarkStatus::Running => active.stop.stop(),
                        Ok(Some(_)) => {
                            let mut progress = benchmark.clone();
                            progress.result = active.started.get().and_then(|s| active.progress.result(s.elapsed()).ok());
                            if let Err(error) = performance.store.update_benchmark(&progress, &["running"]).await {
                                tracing::debug!(%id, %error, "a benchmark's progress could not be stored");
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    };
    drop(slot);
    if let Err(error) = performance.end_of_run(benchmark, &active, outcome).await {
        tracing::warn!(%id, %error, "the end of a benchmark could not be written");
    }
    drop(guard);
}

async fn evaluate_periodically(performance: Weak<Performance>) {
    loop {
        let Some(interval) = performance.upgrade().map(|p| p.options.evaluation_interval) else { return };
        tokio::time::sleep(interval).await;
        let Some(performance) = performance.upgrade() else { return };
        if let Err(error) = performance.evaluate().await {
            tracing::warn!(%error, "evaluating SLO burn rates and scaling recommendations failed");
        }
    }
}

async fn fail_orphans_periodically(performance: Weak<Performance>) {
    loop {
        let Some(interval) = performance.upgrade().map(|p| p.options.orphan_check_interval) else { return };
        tokio::time::sleep(interval).await;
        let Some(performance) = performance.upgrade() else { return };
        if let Err(error) = performance.fail_interrupted_benchmarks().await {
            tracing::warn!(%error, "looking for benchmarks whose process is gone failed");
        }
    }
}

async fn purge_periodically(performance: Weak<Performance>) {
    loop {
        tokio::time::sleep(Duration::from_secs(600)).await;
        let Some(performance) = performance.upgrade() else { return };
        let now = Utc::now().timestamp_millis();
        match performance.store.purge(now, now - 3_600_000).await {
            Ok(deleted) if deleted > 0 => tracing::debug!(deleted, "expired performance buckets removed"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "removing expired performance buckets failed"),
        }
    }
}
