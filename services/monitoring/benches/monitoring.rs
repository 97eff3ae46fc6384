//! Monitoring-service benchmark: what `cargo xtask bench monitoring` runs and prints.
//!
//! - Pushed samples per second in process (`SeriesStore::push`, new series and samples of
//!   existing ones) and through the API (`pushMetricSamples` over real HTTP, batches of
//!   1,000, two producers), and scraped samples per second (`ingest_scrape`).
//! - Rule evaluation: the time of one round of N rules over M series (`rules::evaluate`,
//!   what the evaluation loop runs for each due rule), with the series spread over 50
//!   metric names and, the harder case, all under one name.
//! - Memory per series: the growth of the resident set of a fresh process (this binary,
//!   run again) that stores the series, with 1 sample each and with 1 h of samples at the
//!   5 s scrape interval.
//! - Active health checks: instances registered in an in-process registry with a 1 s
//!   check interval, answered by real HTTP health endpoints (a few listeners on port 0,
//!   one path per instance), checked by the service's own supervisor: checks per second
//!   achieved against expected, the spread of the interval between two checks of one
//!   instance, and check latency.
//!
//! - Side by side with Prometheus (`compare.rs`): alert latency, evaluation rounds and CPU
//!   per sample of the same rules over the same series from one synthetic exporter, and
//!   memory per active series, ours and Prometheus's, in a second table.
//!
//! Sizes come from the environment (`cargo xtask bench monitoring` sets them from its
//! flags): `PAKE_BENCH_RULES` and `PAKE_BENCH_SERIES` (largest evaluation point and the
//! comparison's, default 1,000 and 100,000), `PAKE_BENCH_MEMORY_SERIES` (default 20,000),
//! `PAKE_BENCH_INSTANCES` (default 5,000), `PAKE_BENCH_CHECK_SECONDS` (default 10),
//! `PAKE_BENCH_ALERTS` (alerts of the latency comparison, default 100),
//! `PAKE_BENCH_ROUNDS` (evaluation rounds compared, default 6, every
//! `PAKE_BENCH_INTERVAL_SECONDS`, default 5); `PAKE_BENCH_PROMETHEUS` names the
//! Prometheus program (default `prometheus` on PATH; `none`: our side only);
//! `PAKE_BENCH_ONLY` is `own` (the first table only) or `prometheus` (the comparison
//! only); `PAKE_BENCH_OUT` names a file the tables are also written to. Everything shares
//! this machine's cores (the HTTP client, the health endpoints and the service are one
//! process), so the numbers are printed, not asserted.

// Not in `benches/` itself, where cargo would take it for a bench target of its own.
#[path = "monitoring/compare.rs"]
mod compare;

use conformance::TestServer;
use conformance::support::{Backend, TestDatabase};
use pake_monitoring::health::HealthBook;
use pake_monitoring::labels::{LabelSet, Matcher};
use pake_monitoring::rules::{self, RuleSpec};
use pake_monitoring::series::{Limits, MetricType, PushedSample, SeriesStore};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"monitoring-bench-secret-0123456789abcdef";
/// The contract's largest push.
const BATCH: usize = 1_000;
/// Metric names the spread layout uses; half gauges, half counters.
const NAMES: usize = 50;
/// Values of the `service` label.
const SERVICES: usize = 100;
const CODES: [&str; 4] = ["200", "404", "500", "503"];
/// Points of each series in the evaluation store: the last minute at the 5 s interval.
const POINTS: usize = 13;
const STEP_MS: i64 = 5_000;
/// A child run of this binary that measures memory: `series,points`.
const MEMORY_CHILD: &str = "PAKE_BENCH_MEMORY_CHILD";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

/// This process's resident set in bytes, from `/proc/self/statm` (pages of 4 KiB).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).unwrap_or(0) * 4096
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rate(n: f64, elapsed: Duration) -> String {
    let per_second = n / elapsed.as_secs_f64();
    if per_second >= 1e6 { format!("{:.2} M/s", per_second / 1e6) } else { format!("{:.0} k/s", per_second / 1e3) }
}

/// The printed table, also kept as markdown.
#[derive(Default)]
struct Table {
    rows: Vec<[String; 3]>,
}

impl Table {
    fn row(&mut self, what: impl Into<String>, value: impl Into<String>, note: impl Into<String>) {
        let row = [what.into(), value.into(), note.into()];
        println!("{:<58} {:>16}  {}", row[0], row[1], row[2]);
        self.rows.push(row);
    }

    fn markdown(&self) -> String {
        let mut out = String::from("| measurement | value | note |\n|---|---:|---|\n");
        for [what, value, note] in &self.rows {
            out.push_str(&format!("| {what} | {value} | {note} |\n"));
        }
        out
    }
}

/// How the evaluation store names its series.
#[derive(Clone, Copy, PartialEq)]
enum Layout {
    /// Over [`NAMES`] metric names, half gauges and half counters.
    Spread,
    /// All under one counter name.
    OneName,
}

fn metric(layout: Layout, index: usize) -> (String, MetricType) {
    match layout {
        Layout::OneName => ("bench_requests_total".into(), MetricType::Counter),
        Layout::Spread if index % NAMES < NAMES / 2 => (format!("bench_gauge_{}", index % NAMES), MetricType::Gauge),
        Layout::Spread => (format!("bench_requests_{}_total", index % NAMES), MetricType::Counter),
    }
}

/// Series `j`'s sample at point `p`.
fn series_sample(layout: Layout, j: usize, p: usize, t: i64) -> PushedSample {
    let (name, kind) = metric(layout, j);
    let labels: LabelSet = [
        ("service".to_string(), format!("svc-{}", (j / NAMES) % SERVICES)),
        ("instance".to_string(), format!("i-{j}")),
        ("code".to_string(), CODES[(j / 7) % CODES.len()].to_string()),
    ]
    .into();
    let value = match kind {
        MetricType::Counter => (p * (1 + j % 5)) as f64,
        _ => (j % 100) as f64 + p as f64,
    };
    PushedSample {
        name,
        kind,
        help: None,
        labels,
        value,
        timestamp: Some(chrono::DateTime::from_timestamp_millis(t).expect("a time")),
    }
}

/// Rule `i`: a selector on one metric name and service (a regex over services for every
/// 7th), a code matcher for two in three (`=~"5.."`, or `!="404"`, which matches series
/// without the label too), and an aggregation that cycles through every kind.
fn rule(layout: Layout, i: usize) -> (RuleSpec, Vec<Matcher>) {
    let (name, kind) = metric(layout, i);
    let service = if i.is_multiple_of(7) {
        json!({"label": "service", "op": "match_regex", "value": format!("svc-{}.", i % 10)})
    } else {
        json!({"label": "service", "op": "equal", "value": format!("svc-{}", i % SERVICES)})
    };
    let mut matchers = vec![service];
    match i % 3 {
        1 => matchers.push(json!({"label": "code", "op": "match_regex", "value": "5.."})),
        2 => matchers.push(json!({"label": "code", "op": "not_equal", "value": "404"})),
        _ => {}
    }
    let (aggregation, threshold) = match (kind, i % 5) {
        (MetricType::Counter, _) => ("rate", 0.05),
        (_, 0) => ("none", 90.0),
        (_, 1) => ("sum", 500.0),
        (_, 2) => ("avg", 50.0),
        (_, 3) => ("max", 95.0),
        _ => ("min", 5.0),
    };
    let spec: RuleSpec = serde_json::from_value(json!({
        "name": format!("bench-{i}"), "metric": name, "matchers": matchers, "aggregation": aggregation,
        "group_by": if i.is_multiple_of(2) { json!(["service"]) } else { json!(["service", "code"]) },
        "rate_window_seconds": 60, "comparison": "gt", "threshold": threshold, "severity": "warning",
    }))
    .expect("a valid rule");
    let matchers = spec.check().expect("the rule checks");
    (spec, matchers)
}

/// Fills a store with `series` series of [`POINTS`] points each, timing the pushes of new
/// series (the first point) and of existing ones (the rest).
fn fill(layout: Layout, series: usize, end: i64) -> (SeriesStore, Duration, Duration) {
    let store = SeriesStore::new(Limits { max_series: series.max(1), ..Limits::default() });
    let start = end - (POINTS as i64 - 1) * STEP_MS;
    let (mut created, mut updated) = (Duration::ZERO, Duration::ZERO);
    for p in 0..POINTS {
        let t = start + p as i64 * STEP_MS;
        for first in (0..series).step_by(BATCH) {
            let batch: Vec<PushedSample> =
                (first..(first + BATCH).min(series)).map(|j| series_sample(layout, j, p, t)).collect();
            let started = Instant::now();
            store.push("bench", &batch, end).expect("the batch is accepted");
            *(if p == 0 { &mut created } else { &mut updated }) += started.elapsed();
        }
    }
    (store, created, updated)
}

/// One evaluation round of `rules` over `store` at `t`: its time and the elements found.
fn round(rules: &[(RuleSpec, Vec<Matcher>)], store: &SeriesStore, t: i64) -> (Duration, usize) {
    let started = Instant::now();
    let found = rules.iter().map(|(spec, matchers)| rules::evaluate(spec, matchers, store, t).len()).sum();
    (started.elapsed(), found)
}

fn evaluation(table: &mut Table, max_rules: usize, max_series: usize) {
    let mut points: Vec<(Layout, usize, usize)> = Vec::new();
    for series in [max_series / 10, max_series] {
        for rules in [max_rules / 10, max_rules] {
            points.push((Layout::Spread, rules, series));
        }
    }
    points.push((Layout::OneName, max_rules / 10, max_series));
    points.push((Layout::OneName, max_rules, max_series));
    let end = now_ms();
    let mut filled: Option<(Layout, usize, SeriesStore)> = None;
    for (layout, n_rules, n_series) in points {
        if filled.as_ref().is_none_or(|(l, s, _)| *l != layout || *s != n_series) {
            // The previous store goes before the next is filled.
            drop(filled.take());
            let (store, created, updated) = fill(layout, n_series, end);
            let label = if layout == Layout::Spread { "50 names" } else { "one name" };
            table.row(
                format!("push in process, new series ({n_series} series, {label})"),
                rate(n_series as f64, created),
                "SeriesStore::push, batches of 1,000",
            );
            table.row(
                format!("push in process, existing series ({n_series} series, {label})"),
                rate((n_series * (POINTS - 1)) as f64, updated),
                "",
            );
            filled = Some((layout, n_series, store));
        }
        let store = &filled.as_ref().expect("a filled store").2;
        let rules: Vec<_> = (0..n_rules).map(|i| rule(layout, i)).collect();
        // Rounds until three, or until 10 s have gone by; the median is printed.
        let (mut times, mut found, started) = (Vec::new(), 0, Instant::now());
        while times.len() < 3 && (times.is_empty() || started.elapsed() < Duration::from_secs(10)) {
            let (time, n) = round(&rules, store, end);
            times.push(time.as_secs_f64());
            found = n;
        }
        times.sort_by(f64::total_cmp);
        let median = percentile(&times, 0.5);
        let layout = if layout == Layout::Spread { "over 50 names" } else { "under one name" };
        table.row(
            format!("evaluation: {n_rules} rules x {n_series} series {layout}"),
            format!("{:.1} ms", median * 1000.0),
            format!(
                "median of {} round(s); {:.2} µs per rule; {found} elements hold",
                times.len(),
                median * 1e6 / n_rules as f64
            ),
        );
    }
}

/// Run in a child process: stores `series` series of `points` points (at the 5 s interval)
/// and prints the resident-set growth in bytes.
fn memory_child(spec: &str) {
    let (series, points) = spec.split_once(',').expect("series,points");
    let (series, points): (usize, usize) = (series.parse().expect("series"), points.parse().expect("points"));
    let end = now_ms();
    let before = resident_bytes();
    let store = SeriesStore::new(Limits { max_series: series, ..Limits::default() });
    for p in 0..points {
        let t = end - (points - 1 - p) as i64 * STEP_MS;
        for first in (0..series).step_by(BATCH) {
            let batch: Vec<PushedSample> =
                (first..(first + BATCH).min(series)).map(|j| series_sample(Layout::Spread, j, p, t)).collect();
            store.push("bench", &batch, end).expect("the batch is accepted");
        }
    }
    assert_eq!(store.len(), series);
    println!("{}", resident_bytes().saturating_sub(before));
}

fn memory(table: &mut Table, series: usize) {
    for points in [1, 720] {
        let exe = std::env::current_exe().expect("this binary");
        let output = std::process::Command::new(exe)
            .env(MEMORY_CHILD, format!("{series},{points}"))
            .output()
            .expect("the memory run starts");
        let grown: Option<u64> = String::from_utf8_lossy(&output.stdout).trim().parse().ok();
        let what = format!("memory per series, {points} sample(s) each ({series} series)");
        match grown {
            Some(bytes) => table.row(
                what,
                format!("{:.0} B", bytes as f64 / series as f64),
                format!(
                    "resident-set growth of a fresh process{}",
                    if points == 720 { "; 1 h at the 5 s interval" } else { "" }
                ),
            ),
            None => table.row(what, "failed", String::from_utf8_lossy(&output.stderr).trim().to_string()),
        }
    }
}

fn scrape(table: &mut Table) {
    let store = SeriesStore::new(Limits::default());
    let mut text = String::from("# TYPE bench_scraped gauge\n");
    for j in 0..1_000 {
        text.push_str(&format!("bench_scraped{{service=\"svc-{}\",path=\"/p/{j}\"}} {j}\n", j % SERVICES));
    }
    let extra: LabelSet = [("instance_id".to_string(), "bench".to_string())].into();
    let scrapes = 200;
    let started = Instant::now();
    let parsed: Vec<_> = (0..scrapes).map(|_| pake_monitoring::exposition::parse(&text)).collect();
    let parsing = started.elapsed();
    let end = now_ms();
    let started = Instant::now();
    for (k, exposition) in parsed.iter().enumerate() {
        store.ingest_scrape("bench", "bench", &extra, exposition, end - (scrapes - k) as i64 * STEP_MS);
    }
    let ingesting = started.elapsed();
    let samples = (scrapes * 1_000) as f64;
    table.row("scrape ingestion (1,000 series a scrape)", rate(samples, ingesting), "ingest_scrape, parsed already");
    table.row("scrape parsing", rate(samples, parsing), "exposition::parse");
}

async fn through_the_api(table: &mut Table) {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let store = pake_registry::Store::open(&db.url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store.clone()).await.expect("registry starts"));
    let metrics = pake_observe::Metrics::new("monitoring");
    let options = pake_monitoring::MonitorOptions::new([7u8; 32]);
    let monitor =
        pake_monitoring::Monitor::start(store, registry, metrics.clone(), options).await.expect("monitor starts");
    let verifier = pake_tokens::TokenVerifier::hs256(SECRET).expect("secret");
    let server = TestServer::start(pake_monitoring::router(&monitor, verifier, metrics)).await.expect("server");
    let token = pake_tokens::TokenIssuer::hs256(SECRET).expect("secret").issue(
        "bench",
        None,
        &["monitoring:read", "monitoring:write"],
        Duration::from_secs(3600),
    );
    let client =
        pake_monitoring_client::Client::new_with_client(&server.url(), conformance::http_client_with_token(&token));
    let series = 10_000;
    let batches = 200;
    let body = |b: usize| -> pake_monitoring_client::types::MetricSamplesPush {
        let samples: Vec<_> = (0..BATCH)
            .map(|i| {
                let j = (b * BATCH + i) % series;
                json!({"name": format!("bench_pushed_{}", j % NAMES), "labels": {"service": format!("svc-{}", j % SERVICES), "instance": format!("i-{j}")}, "value": b as f64})
            })
            .collect();
        serde_json::from_value(json!({"source": "bench", "samples": samples})).expect("a valid push")
    };
    // The series first, then the timed batches over them.
    for b in 0..series / BATCH {
        client.push_metric_samples().body(body(b)).send().await.expect("the push is accepted");
    }
    let bodies: Vec<_> = (0..batches).map(body).collect();
    let (cpu, started) = (pake_observe::process_cpu_time(), Instant::now());
    let mut producers = tokio::task::JoinSet::new();
    for share in bodies.chunks(batches / 2) {
        let (client, share) = (client.clone(), share.to_vec());
        producers.spawn(async move {
            for body in share {
                client.push_metric_samples().body(body).send().await.expect("the push is accepted");
            }
        });
    }
    while let Some(done) = producers.join_next().await {
        done.expect("a producer");
    }
    let (wall, cpu) = (started.elapsed(), pake_observe::process_cpu_time().saturating_sub(cpu));
    let samples = (batches * BATCH) as f64;
    table.row(
        "push through the API (pushMetricSamples over HTTP)",
        rate(samples, wall),
        format!(
            "{series} series, batches of 1,000, 2 producers; {:.2} µs CPU a sample (client and server)",
            cpu.as_secs_f64() * 1e6 / samples
        ),
    );
    server.stop().await;
    drop(monitor);
}

/// Arrival times of the checks of every instance, by instance number.
type Arrivals = Arc<Mutex<Vec<Vec<Instant>>>>;

async fn health_checks(table: &mut Table, instances: usize, window: Duration) {
    const LISTENERS: usize = 4;
    const PER_SERVICE: usize = 100;
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![Vec::new(); instances]));
    async fn answer(
        axum::extract::State(arrivals): axum::extract::State<Arrivals>,
        axum::extract::Path(n): axum::extract::Path<usize>,
    ) -> axum::Json<serde_json::Value> {
        if let Some(times) = arrivals.lock().expect("arrivals").get_mut(n) {
            times.push(Instant::now());
        }
        axum::Json(json!({"status": "pass"}))
    }
    let mut listeners = Vec::new();
    for _ in 0..LISTENERS {
        let router = axum::Router::new().route("/health/{n}", axum::routing::get(answer)).with_state(arrivals.clone());
        listeners.push(TestServer::start(router).await.expect("a health endpoint"));
    }
    let db = TestDatabase::new(Backend::Sqlite).await;
    let store = pake_registry::Store::open(&db.url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store).await.expect("registry starts"));
    let started = Instant::now();
    for s in 0..instances.div_ceil(PER_SERVICE) {
        let registration = serde_json::from_value(json!({
            "name": format!("bench-{s}"), "version": "1.0.0",
            "health_check": {"path": "/health", "interval_seconds": 1, "timeout_ms": 1000, "healthy_threshold": 1, "unhealthy_threshold": 3}
        }))
        .expect("a registration");
        let service = registry.register_service(registration, None).await.expect("the service registers");
        for n in s * PER_SERVICE..((s + 1) * PER_SERVICE).min(instances) {
            let port = listeners[n % LISTENERS].addr.port();
            // An instance is one address and port: each has an address of its own,
            // and its health URL names the listener that answers for it.
            let registration = serde_json::from_value(json!({
                "address": format!("127.1.{}.{}", n / 256, n % 256), "port": port, "ttl_seconds": 3600,
                "health_url": format!("http://127.0.0.1:{port}/health/{n}"),
            }))
            .expect("an instance");
            registry.register_instance(service.id, registration).await.expect("the instance registers");
        }
    }
    println!("registered {instances} instances in {:.1} s", started.elapsed().as_secs_f64());
    let book = Arc::new(HealthBook::default());
    let series = Arc::new(SeriesStore::new(Limits::default()));
    let supervisor = tokio::spawn(pake_monitoring::health::supervise(registry.clone(), book.clone(), series));
    // The supervisor starts every check within its first second and spreads them over
    // the interval; the window opens once the first round is over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu, opened) = (pake_observe::process_cpu_time(), Instant::now());
    tokio::time::sleep(window).await;
    let (closed, cpu) = (Instant::now(), pake_observe::process_cpu_time().saturating_sub(cpu));
    let (mut checks, mut gaps, mut unchecked) = (0usize, Vec::new(), 0usize);
    for times in arrivals.lock().expect("arrivals").iter() {
        let inside: Vec<Instant> = times.iter().copied().filter(|t| *t >= opened && *t < closed).collect();
        checks += inside.len();
        unchecked += usize::from(inside.is_empty());
        gaps.extend(inside.windows(2).map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0));
    }
    gaps.sort_by(f64::total_cmp);
    let mut latencies: Vec<f64> = book.all().values().filter_map(|h| h.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let achieved = checks as f64 / (closed - opened).as_secs_f64();
    table.row(
        format!("health checks: {instances} instances at a 1 s interval"),
        format!("{achieved:.0} /s"),
        format!(
            "expected {instances} /s ({:.1} %); {unchecked} instance(s) not checked in the {} s window; {:.1} µs CPU a check (checker and endpoints)",
            achieved * 100.0 / instances as f64,
            window.as_secs(),
            cpu.as_secs_f64() * 1e6 / checks.max(1) as f64
        ),
    );
    table.row(
        "health checks: interval between two checks of an instance",
        format!("p50 {:.0} ms", percentile(&gaps, 0.5)),
        format!(
            "p1 {:.0} ms, p99 {:.0} ms, max {:.0} ms (1,000 ms meant)",
            percentile(&gaps, 0.01),
            percentile(&gaps, 0.99),
            gaps.last().copied().unwrap_or(f64::NAN)
        ),
    );
    table.row(
        "health checks: check latency (each instance's latest)",
        format!("p50 {:.1} ms", percentile(&latencies, 0.5)),
        format!(
            "p99 {:.1} ms, max {:.1} ms over {} instances",
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN),
            latencies.len()
        ),
    );
    supervisor.abort();
}

fn main() {
    if let Ok(spec) = std::env::var(MEMORY_CHILD) {
        memory_child(&spec);
        return;
    }
    if let Ok(spec) = std::env::var(compare::EXPORTER_CHILD) {
        compare::exporter_child(&spec);
        return;
    }
    if let Ok(spec) = std::env::var(compare::SCRAPE_MEMORY_CHILD) {
        compare::scrape_memory_child(&spec);
        return;
    }
    let max_rules = env_or("PAKE_BENCH_RULES", 1_000);
    let max_series = env_or("PAKE_BENCH_SERIES", 100_000);
    let memory_series = env_or("PAKE_BENCH_MEMORY_SERIES", 20_000);
    let instances = env_or("PAKE_BENCH_INSTANCES", 5_000);
    let window = Duration::from_secs(env_or("PAKE_BENCH_CHECK_SECONDS", 10).max(2) as u64);
    let only = std::env::var("PAKE_BENCH_ONLY").unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    // The comparison first: what the measurements below leave running in this process
    // (the registries' tasks over thousands of instances) would be counted in our CPU time.
    let comparison = (only != "own").then(|| {
        let sizes = compare::Sizes {
            alerts: env_or("PAKE_BENCH_ALERTS", 100).max(1),
            rules: max_rules,
            series: max_series,
            memory_series,
            rounds: env_or("PAKE_BENCH_ROUNDS", 6).max(1),
            interval: Duration::from_secs(env_or("PAKE_BENCH_INTERVAL_SECONDS", 5).max(1) as u64),
        };
        // A program named explicitly must run; `prometheus` on PATH is used when there is one.
        let program = match std::env::var("PAKE_BENCH_PROMETHEUS") {
            Ok(program) if program == "none" => None,
            Ok(program) => {
                let program = std::path::PathBuf::from(program);
                assert!(compare::version(&program).is_some(), "{} --version does not run", program.display());
                Some(program)
            }
            Err(_) => Some(std::path::PathBuf::from("prometheus")).filter(|p| compare::version(p).is_some()),
        };
        runtime.block_on(compare::compare(&sizes, program))
    });
    let mut table = Table::default();
    if only != "prometheus" {
        memory(&mut table, memory_series);
        scrape(&mut table);
        evaluation(&mut table, max_rules, max_series);
        runtime.block_on(through_the_api(&mut table));
        runtime.block_on(health_checks(&mut table, instances, window));
    }
    let mut markdown = if table.rows.is_empty() { String::new() } else { table.markdown() };
    if let Some(comparison) = comparison {
        comparison.print();
        if !markdown.is_empty() {
            markdown.push('\n');
        }
        markdown.push_str(&comparison.markdown());
    }
    if let Ok(path) = std::env::var("PAKE_BENCH_OUT") {
        let text = format!("# cargo xtask bench monitoring\n\n{markdown}");
        match std::fs::write(&path, text) {
            Ok(()) => println!("written to {path}"),
            Err(error) => eprintln!("could not write {path}: {error}"),
        }
    }
    // The health checks' tasks end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
}
