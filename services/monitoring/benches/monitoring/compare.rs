//! Side by side with Prometheus: the same series from one synthetic exporter, scraped by
//! Prometheus and by our service, and the same rules, as PromQL and as `AlertRuleSpec`s.
//!
//! The exporter is this binary run again (so that its work is no one's CPU time but its
//! own): an HTTP server serving the Prometheus text exposition of N series at
//! `/metrics/ours` and `/metrics/prometheus`, one view per scraper, each with its own count
//! of expositions served. Alert series (`bench_alert{alert="a-K"}`, 0 until flipped) are
//! flipped per view, and the exporter records when it first served each flipped value.
//!
//! - Alert latency: from the scrape that serves a flipped value (the condition becomes
//!   true; rules with `for: 0`) to the alert being out. Ours: the webhook's arrival at a
//!   receiver in this process; the service runs whole (`Monitor::start`), scraping every
//!   1 s and evaluating every 1 s. Prometheus: scraping and evaluating every 1 s, without
//!   Alertmanager; the time until `/api/v1/alerts` shows the alert firing (polled every
//!   10 ms). Both run at once, over the same 100 alerts flipped one after another.
//! - Evaluation and CPU: N rules over M series, one after the other (Prometheus first, then
//!   ours, so that neither competes with the other for the two cores), scraping every
//!   `interval` and evaluating every `interval`. Prometheus's round is its rule group's
//!   `prometheus_rule_group_last_duration_seconds` after each iteration; ours is the wall
//!   time of `Core::tick` with every rule due (what the evaluation loop runs). CPU per
//!   sample is the process's CPU time over the measured rounds (scraping, storing,
//!   evaluating: everything the process does) over the samples the exporter served it.
//! - Memory per active series: M series with 720 samples each (1 h at the 5 s interval).
//!   Ours: the resident-set growth of a fresh process (this binary, run again) that scrapes
//!   the exporter 720 times into a `SeriesStore`, with the scrapes' timestamps 5 s apart.
//!   Prometheus: the growth of its resident set from its start (no series of the exporter's
//!   yet) to after 720 scrapes 100 ms apart. Head chunks encode a sample's timestamp as the
//!   change of the interval, which is zero for regular scrapes whatever their interval, so
//!   720 samples 100 ms apart cost Prometheus's head what 720 samples 5 s apart do.

use super::{STEP_MS, now_ms, percentile, resident_bytes};
use conformance::TestServer;
use conformance::support::{Backend, TestDatabase};
use pake_monitoring::health::HealthBook;
use pake_monitoring::labels::LabelSet;
use pake_monitoring::monitor::{Core, Settings};
use pake_monitoring::scrape::{ScrapeMetrics, ScrapeSettings};
use pake_monitoring::series::{Limits, SeriesStore};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A child run of this binary that serves the exposition: `series,alerts`.
pub const EXPORTER_CHILD: &str = "PAKE_BENCH_EXPORTER";
/// A child run of this binary that measures our memory: `url,scrapes,series`.
pub const SCRAPE_MEMORY_CHILD: &str = "PAKE_BENCH_SCRAPE_MEMORY_CHILD";
/// The exporter's views, one per scraper.
const VIEWS: [&str; 2] = ["ours", "prometheus"];
/// Metric names of the exporter's series: half gauges, half counters.
const NAMES: usize = 50;
const SERVICES: usize = 100;
const CODES: [&str; 4] = ["200", "404", "500", "503"];
/// Samples per series of the memory measurement (1 h at the 5 s interval), and the
/// interval Prometheus scrapes them at.
const MEMORY_SAMPLES: usize = 720;
const MEMORY_INTERVAL: Duration = Duration::from_millis(100);
/// The scrape and evaluation interval of the alert-latency measurement.
const ALERT_INTERVAL: Duration = Duration::from_secs(1);
/// Between two flips of the alert-latency measurement: not a multiple of the interval, so
/// that flips land all over it.
const FLIP_GAP: Duration = Duration::from_millis(317);

/// What is compared.
pub struct Sizes {
    pub alerts: usize,
    pub rules: usize,
    pub series: usize,
    pub memory_series: usize,
    pub rounds: usize,
    pub interval: Duration,
}

fn wall_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

// ---- The synthetic exporter (child process) -------------------------------------------

struct View {
    armed: AtomicBool,
    serves: AtomicU64,
    /// Per alert series: whether it is flipped, and when an exposition first showed it so
    /// (µs since the epoch).
    alerts: Mutex<Vec<(bool, Option<i64>)>>,
}

/// One metric name's lines.
struct Family {
    /// Its `# HELP` and `# TYPE` lines.
    header: String,
    counter: bool,
    /// Each series' line up to its value, with the series' number.
    lines: Vec<(String, usize)>,
}

struct Exposition {
    families: Vec<Family>,
    bytes: usize,
    views: [View; 2],
}

/// Series `j` of the exporter: its metric name and whether it is a counter.
fn metric_of(j: usize) -> (String, bool) {
    if j % NAMES < NAMES / 2 {
        (format!("bench_gauge_{}", j % NAMES), false)
    } else {
        (format!("bench_requests_{}_total", j % NAMES), true)
    }
}

impl Exposition {
    fn new(series: usize, alerts: usize) -> Exposition {
        let mut families: Vec<Family> = (0..NAMES.min(series))
            .map(|n| {
                let (name, counter) = metric_of(n);
                let kind = if counter { "counter" } else { "gauge" };
                Family {
                    header: format!("# HELP {name} Synthetic.\n# TYPE {name} {kind}\n"),
                    counter,
                    lines: Vec::new(),
                }
            })
            .collect();
        let mut bytes = 0;
        for j in 0..series {
            let (name, _) = metric_of(j);
            let line = format!(
                "{name}{{svc=\"svc-{}\",pod=\"p-{j}\",code=\"{}\"}} ",
                (j / NAMES) % SERVICES,
                CODES[(j / 7) % CODES.len()]
            );
            bytes += line.len() + 8;
            families[j % NAMES].lines.push((line, j));
        }
        let view = || View {
            armed: AtomicBool::new(false),
            serves: AtomicU64::new(0),
            alerts: Mutex::new(vec![(false, None); alerts]),
        };
        Exposition { families, bytes, views: [view(), view()] }
    }

    /// The `n`th exposition of `view`: counters grow by 1 to 5 a scrape, gauges move.
    fn render(&self, view: &View, n: u64) -> String {
        let mut out = String::with_capacity(self.bytes + 64);
        for family in &self.families {
            out.push_str(&family.header);
            for (line, j) in &family.lines {
                out.push_str(line);
                let value = if family.counter { n * (1 + (*j as u64 % 5)) } else { (*j as u64 + n * 7) % 100 };
                let _ = writeln!(out, "{value}");
            }
        }
        let mut alerts = view.alerts.lock().expect("alerts");
        if !alerts.is_empty() {
            out.push_str("# HELP bench_alert 1 once flipped.\n# TYPE bench_alert gauge\n");
            let now = wall_us();
            for (k, (flipped, served)) in alerts.iter_mut().enumerate() {
                if *flipped && served.is_none() {
                    *served = Some(now);
                }
                let _ = writeln!(out, "bench_alert{{alert=\"a-{k}\"}} {}", u8::from(*flipped));
            }
        }
        out
    }
}

type Shared = axum::extract::State<Arc<Exposition>>;

fn view_of<'a>(exposition: &'a Exposition, name: &str) -> Option<&'a View> {
    VIEWS.iter().position(|v| *v == name).map(|i| &exposition.views[i])
}

async fn serve_metrics(
    axum::extract::State(exposition): Shared,
    axum::extract::Path(view): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(view) = view_of(&exposition, &view) else { return axum::http::StatusCode::NOT_FOUND.into_response() };
    // A view not armed yet serves an empty exposition: its scraper starts with no series.
    let text = if view.armed.load(Ordering::Acquire) {
        let n = view.serves.fetch_add(1, Ordering::AcqRel) + 1;
        exposition.render(view, n)
    } else {
        String::new()
    };
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn arm(
    axum::extract::State(exposition): Shared,
    axum::extract::Path(view): axum::extract::Path<String>,
) -> axum::http::StatusCode {
    match view_of(&exposition, &view) {
        Some(view) => {
            view.armed.store(true, Ordering::Release);
            axum::http::StatusCode::NO_CONTENT
        }
        None => axum::http::StatusCode::NOT_FOUND,
    }
}

async fn flip(
    axum::extract::State(exposition): Shared,
    axum::extract::Path((view, k)): axum::extract::Path<(String, usize)>,
) -> axum::http::StatusCode {
    let Some(view) = view_of(&exposition, &view) else { return axum::http::StatusCode::NOT_FOUND };
    match view.alerts.lock().expect("alerts").get_mut(k) {
        Some(alert) => {
            alert.0 = true;
            axum::http::StatusCode::NO_CONTENT
        }
        None => axum::http::StatusCode::NOT_FOUND,
    }
}

async fn state(
    axum::extract::State(exposition): Shared,
    axum::extract::Path(view): axum::extract::Path<String>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(view) = view_of(&exposition, &view) else { return axum::http::StatusCode::NOT_FOUND.into_response() };
    let served: Vec<Option<i64>> = view.alerts.lock().expect("alerts").iter().map(|a| a.1).collect();
    axum::Json(json!({"serves": view.serves.load(Ordering::Acquire), "served": served})).into_response()
}

/// Run in a child process: serves the exposition on a loopback port, printed first, until
/// its standard input closes (the parent has gone).
pub fn exporter_child(spec: &str) {
    let (series, alerts) = spec.split_once(',').expect("series,alerts");
    let exposition = Arc::new(Exposition::new(series.parse().expect("series"), alerts.parse().expect("alerts")));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("a port");
        println!("{}", listener.local_addr().expect("an address").port());
        let router = axum::Router::new()
            .route("/metrics/{view}", axum::routing::get(serve_metrics))
            .route("/arm/{view}", axum::routing::post(arm))
            .route("/flip/{view}/{k}", axum::routing::post(flip))
            .route("/state/{view}", axum::routing::get(state))
            .with_state(exposition);
        tokio::spawn(async move { axum::serve(listener, router).await.expect("the exporter serves") });
        tokio::task::spawn_blocking(|| {
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
        })
        .await
        .expect("stdin");
    });
}

/// The exporter child, stopped on drop.
struct Exporter {
    child: Child,
    _stdin: Option<ChildStdin>,
    base: String,
    client: reqwest::Client,
}

impl Exporter {
    fn start(series: usize, alerts: usize) -> Exporter {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .env(EXPORTER_CHILD, format!("{series},{alerts}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the exporter starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("the exporter's port");
        let port: u16 = line.trim().parse().expect("the exporter prints its port");
        let client = reqwest::Client::builder().no_proxy().build().expect("a client");
        Exporter { _stdin: child.stdin.take(), child, base: format!("http://127.0.0.1:{port}"), client }
    }

    fn host(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    fn url(&self, view: &str) -> String {
        format!("{}/metrics/{view}", self.base)
    }

    async fn post(&self, path: &str) {
        let response = self.client.post(format!("{}{path}", self.base)).send().await.expect("the exporter answers");
        assert!(response.status().is_success(), "the exporter refused {path}: {}", response.status());
    }

    /// Expositions served to `view`, and when each flipped alert was first served (µs).
    async fn state(&self, view: &str) -> (u64, Vec<Option<i64>>) {
        let response =
            self.client.get(format!("{}/state/{view}", self.base)).send().await.expect("the exporter answers");
        let state: Value = serde_json::from_str(&response.text().await.expect("a body")).expect("JSON");
        let served = state["served"].as_array().map(|a| a.iter().map(Value::as_i64).collect()).unwrap_or_default();
        (state["serves"].as_u64().unwrap_or(0), served)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- Prometheus -----------------------------------------------------------------------

/// A Prometheus of our own: its configuration, data and log in a directory of its own,
/// on a free loopback port; stopped and removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    base: String,
    client: reqwest::Client,
}

impl Prometheus {
    /// Starts `program` scraping `exporter`'s Prometheus view every `scrape` with `rules`
    /// (one group evaluated every `scrape`), and waits until it is ready.
    async fn start(program: &Path, name: &str, exporter: &Exporter, scrape: Duration, rules: &[String]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("pake-bench-prometheus-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for Prometheus");
        let interval = format!("{}ms", scrape.as_millis());
        let mut config = format!(
            "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n"
        );
        if !rules.is_empty() {
            let mut file = format!("groups:\n  - name: bench\n    interval: {interval}\n    rules:\n");
            for rule in rules {
                file.push_str(rule);
            }
            std::fs::write(dir.join("rules.yml"), file).expect("the rule file is written");
            config.push_str(&format!("rule_files:\n  - {}\n", dir.join("rules.yml").display()));
        }
        config.push_str(&format!(
            "scrape_configs:\n  - job_name: bench\n    metrics_path: /metrics/prometheus\n    static_configs:\n      - targets: ['{}']\n",
            exporter.host()
        ));
        std::fs::write(dir.join("prometheus.yml"), config).expect("the configuration is written");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("a log file");
        let child = Command::new(program)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting {}: {error}", program.display()));
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().expect("a client");
        let mut prometheus = Prometheus { child, dir, base: format!("http://127.0.0.1:{port}"), client };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited ({status}): {}", prometheus.log_tail());
            }
            let ready = prometheus.client.get(format!("{}/-/ready", prometheus.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus was not ready within 60 s: {}", prometheus.log_tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    async fn get(&self, path: &str) -> String {
        let response = self.client.get(format!("{}{path}", self.base)).send().await.expect("prometheus answers");
        assert!(response.status().is_success(), "prometheus answered {path} with {}", response.status());
        response.text().await.expect("a body")
    }

    /// Its own metrics, summed by name over their label sets.
    async fn metrics(&self) -> HashMap<String, f64> {
        let mut sums: HashMap<String, f64> = HashMap::new();
        for line in self.get("/metrics").await.lines().filter(|l| !l.starts_with('#')) {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else { continue };
            *sums.entry(line[..name_end].to_string()).or_default() += value;
        }
        sums
    }

    /// The value of an instant query that answers one number (NaN when it answers none).
    async fn query(&self, expression: &str) -> f64 {
        let response = self
            .client
            .get(format!("{}/api/v1/query", self.base))
            .query(&[("query", expression)])
            .send()
            .await
            .expect("prometheus answers");
        let answer: Value = serde_json::from_str(&response.text().await.expect("a body")).expect("JSON");
        answer["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    }

    /// The `alert` labels of the alerts firing now.
    async fn firing(&self) -> Vec<String> {
        let answer: Value = serde_json::from_str(&self.get("/api/v1/alerts").await).expect("JSON");
        answer["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["alert"].as_str().map(str::to_string))
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn metric(metrics: &HashMap<String, f64>, name: &str) -> f64 {
    metrics.get(name).copied().unwrap_or(f64::NAN)
}

/// Prometheus's version line (`prometheus, version 2.42.0 (…)`), for the table.
pub fn version(program: &Path) -> Option<String> {
    let output = Command::new(program).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    let line = text.lines().next()?.trim();
    Some(line.split(" (").next().unwrap_or(line).replace("prometheus, version ", "Prometheus "))
}

// ---- The rules, both ways -------------------------------------------------------------

/// Rule `i` of the evaluation measurement as our `AlertRuleSpec` and as a PromQL alerting
/// rule: a selector on one metric name and `svc` (a regex over them for every 7th), a
/// `code` matcher for two in three, and an aggregation that cycles through every kind.
fn rule(i: usize) -> (Value, String) {
    let (name, counter) = metric_of(i);
    let (svc_json, svc_promql) = if i.is_multiple_of(7) {
        let value = format!("svc-{}.", i % 10);
        (json!({"label": "svc", "op": "match_regex", "value": value}), format!("svc=~\"{value}\""))
    } else {
        let value = format!("svc-{}", i % SERVICES);
        (json!({"label": "svc", "op": "equal", "value": value}), format!("svc=\"{value}\""))
    };
    let mut matchers = vec![svc_json];
    let mut selector = vec![svc_promql];
    match i % 3 {
        1 => {
            matchers.push(json!({"label": "code", "op": "match_regex", "value": "5.."}));
            selector.push("code=~\"5..\"".into());
        }
        2 => {
            matchers.push(json!({"label": "code", "op": "not_equal", "value": "404"}));
            selector.push("code!=\"404\"".into());
        }
        _ => {}
    }
    let (aggregation, threshold) = match (counter, i % 5) {
        (true, _) => ("rate", 0.5),
        (_, 0) => ("none", 90.0),
        (_, 1) => ("sum", 500.0),
        (_, 2) => ("avg", 50.0),
        (_, 3) => ("max", 95.0),
        _ => ("min", 5.0),
    };
    let group_by: &[&str] = if i.is_multiple_of(2) { &["svc"] } else { &["svc", "code"] };
    let selector = format!("{name}{{{}}}", selector.join(","));
    let expression = match aggregation {
        "none" => format!("{selector} > {threshold}"),
        "rate" => format!("sum by ({}) (rate({selector}[60s])) > {threshold}", group_by.join(", ")),
        other => format!("{other} by ({}) ({selector}) > {threshold}", group_by.join(", ")),
    };
    let spec = json!({
        "name": format!("bench-{i}"), "metric": name, "matchers": matchers, "aggregation": aggregation,
        "group_by": group_by, "rate_window_seconds": 60, "comparison": "gt", "threshold": threshold,
        "severity": "warning", "evaluation_interval_seconds": 1,
    });
    (spec, promql_rule(&format!("bench_{i}"), &expression))
}

fn promql_rule(alert: &str, expression: &str) -> String {
    // Single-quoted YAML: the expression's double quotes stay as they are.
    format!("      - alert: {alert}\n        expr: '{}'\n        for: 0s\n", expression.replace('\'', "''"))
}

// ---- Ours -----------------------------------------------------------------------------

/// The platform store and registry our service runs over (an embedded SQLite file).
async fn registry() -> (TestDatabase, pake_registry::Store, Arc<pake_registry::Registry>) {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let store = pake_registry::Store::open(&db.url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store.clone()).await.expect("registry starts"));
    (db, store, registry)
}

fn scrape_settings(exporter: &Exporter, interval: Duration) -> ScrapeSettings {
    ScrapeSettings { interval, timeout: interval, services: vec![("exporter".into(), exporter.url("ours"))] }
}

// ---- The measurements -----------------------------------------------------------------

/// Latencies in ms, sorted, and how many alerts never arrived.
struct Latencies {
    ms: Vec<f64>,
    missing: usize,
}

fn latencies(served: &[Option<i64>], seen: &HashMap<String, i64>) -> Latencies {
    let mut ms = Vec::new();
    let mut missing = 0;
    for (k, served) in served.iter().enumerate() {
        match (served, seen.get(&format!("a-{k}"))) {
            (Some(served), Some(seen)) => ms.push((seen - served) as f64 / 1000.0),
            _ => missing += 1,
        }
    }
    ms.sort_by(f64::total_cmp);
    Latencies { ms, missing }
}

async fn alert_latency(prometheus: Option<&Path>, alerts: usize) -> (Latencies, Option<Latencies>) {
    println!("alert latency: {alerts} alerts, ours and Prometheus at once");
    let exporter = Exporter::start(0, alerts);
    for view in VIEWS {
        exporter.post(&format!("/arm/{view}")).await;
    }
    let rules: Vec<String> = (0..alerts)
        .map(|k| promql_rule(&format!("bench_alert_{k}"), &format!("bench_alert{{alert=\"a-{k}\"}} > 0")))
        .collect();
    let theirs = match prometheus {
        Some(program) => Some(Prometheus::start(program, "alerts", &exporter, ALERT_INTERVAL, &rules).await),
        None => None,
    };
    // Ours, whole: scraping, evaluating and notifying as it runs.
    let (_db, store, registry) = registry().await;
    let mut options = pake_monitoring::MonitorOptions::new([7u8; 32]);
    options.scrape = scrape_settings(&exporter, ALERT_INTERVAL);
    options.warm_up = Duration::ZERO;
    let metrics = pake_observe::Metrics::new("monitoring");
    let monitor = pake_monitoring::Monitor::start(store, registry, metrics, options).await.expect("monitor starts");
    let arrivals: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    async fn hook(
        axum::extract::State(arrivals): axum::extract::State<Arc<Mutex<HashMap<String, i64>>>>,
        body: String,
    ) {
        let now = wall_us();
        let payload: Value = serde_json::from_str(&body).unwrap_or_default();
        let mut arrivals = arrivals.lock().expect("arrivals");
        for alert in payload["alerts"].as_array().into_iter().flatten().filter(|a| a["status"] == "firing") {
            if let Some(name) = alert["labels"]["alert"].as_str() {
                arrivals.entry(name.to_string()).or_insert(now);
            }
        }
    }
    let webhook =
        TestServer::start(axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(arrivals.clone()))
            .await
            .expect("the webhook listens");
    let receiver = serde_json::from_value(
        json!({"name": "bench", "url": format!("{}/hook", webhook.url()), "send_resolved": false}),
    )
    .expect("a receiver");
    let receiver = monitor.core().put_receiver(None, receiver).await.expect("the receiver is stored");
    for k in 0..alerts {
        let spec = serde_json::from_value(json!({
            "name": format!("bench-alert-{k}"), "metric": "bench_alert",
            "matchers": [{"label": "alert", "op": "equal", "value": format!("a-{k}")}],
            "comparison": "gt", "threshold": 0, "for_seconds": 0, "evaluation_interval_seconds": 1,
            "severity": "warning", "receivers": [receiver.id],
        }))
        .expect("a rule");
        monitor.core().create_rule(spec).await.expect("the rule is stored");
    }
    // A few scrapes and evaluations with nothing to alert on first.
    tokio::time::sleep(3 * ALERT_INTERVAL).await;
    let seen: Arc<Mutex<HashMap<String, i64>>> = Arc::default();
    let polling = Arc::new(AtomicBool::new(true));
    let poller = theirs.map(|theirs| {
        let (seen, polling) = (seen.clone(), polling.clone());
        tokio::spawn(async move {
            while polling.load(Ordering::Acquire) {
                let firing = theirs.firing().await;
                let now = wall_us();
                {
                    let mut seen = seen.lock().expect("seen");
                    for name in firing {
                        seen.entry(name).or_insert(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            theirs
        })
    });
    for k in 0..alerts {
        for view in VIEWS {
            exporter.post(&format!("/flip/{view}/{k}")).await;
        }
        tokio::time::sleep(FLIP_GAP).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let ours_done = arrivals.lock().expect("arrivals").len() >= alerts;
        let theirs_done = poller.is_none() || seen.lock().expect("seen").len() >= alerts;
        if ours_done && theirs_done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    polling.store(false, Ordering::Release);
    if let Some(poller) = poller {
        drop(poller.await.expect("the poller"));
    }
    let served = exporter.state("ours").await.1;
    let ours = latencies(&served, &arrivals.lock().expect("arrivals"));
    let served = exporter.state("prometheus").await.1;
    let theirs = prometheus.map(|_| latencies(&served, &seen.lock().expect("seen")));
    webhook.stop().await;
    drop(monitor);
    (ours, theirs)
}

/// One side's evaluation rounds (ms, sorted) and CPU per sample ingested (µs).
struct Evaluation {
    rounds_ms: Vec<f64>,
    cpu_us_per_sample: f64,
    samples: u64,
}

async fn evaluation(prometheus: Option<&Path>, sizes: &Sizes) -> (Evaluation, Option<Evaluation>) {
    let (n_rules, n_series, interval) = (sizes.rules, sizes.series, sizes.interval);
    println!("evaluation: {n_rules} rules over {n_series} series every {} s, Prometheus then ours", interval.as_secs());
    let exporter = Exporter::start(n_series, 0);
    let rules: Vec<(Value, String)> = (0..n_rules).map(rule).collect();
    let theirs = match prometheus {
        Some(program) => {
            exporter.post("/arm/prometheus").await;
            let promql: Vec<String> = rules.iter().map(|(_, r)| r.clone()).collect();
            let theirs = Prometheus::start(program, "evaluation", &exporter, interval, &promql).await;
            // The rounds are counted from the third iteration on, as ours are.
            let deadline = Instant::now() + interval * 10;
            loop {
                // NaN (no iteration yet) compares false.
                if metric(&theirs.metrics().await, "prometheus_rule_group_iterations_total") >= 3.0 {
                    break;
                }
                assert!(Instant::now() < deadline, "prometheus evaluated no rules: {}", theirs.log_tail());
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let loaded = metric(&theirs.metrics().await, "prometheus_rule_group_rules");
            assert_eq!(loaded as usize, n_rules, "prometheus loaded {loaded} rules: {}", theirs.log_tail());
            let start = theirs.metrics().await;
            let (served, mut last) =
                (exporter.state("prometheus").await.0, metric(&start, "prometheus_rule_group_iterations_total"));
            let mut rounds_ms = Vec::new();
            let deadline = Instant::now() + interval * (3 * sizes.rounds as u32 + 3);
            let mut now = start.clone();
            // Its own metrics are read four times an interval, so that reading them
            // costs it little of the CPU time measured.
            while rounds_ms.len() < sizes.rounds && Instant::now() < deadline {
                tokio::time::sleep((interval / 4).max(Duration::from_millis(250))).await;
                now = theirs.metrics().await;
                let iterations = metric(&now, "prometheus_rule_group_iterations_total");
                if iterations > last {
                    last = iterations;
                    rounds_ms.push(metric(&now, "prometheus_rule_group_last_duration_seconds") * 1000.0);
                }
            }
            let failures = metric(&now, "prometheus_rule_evaluation_failures_total");
            assert!(failures == 0.0, "prometheus failed {failures} rule evaluations: {}", theirs.log_tail());
            let samples = (exporter.state("prometheus").await.0 - served) * n_series as u64;
            let cpu = metric(&now, "process_cpu_seconds_total") - metric(&start, "process_cpu_seconds_total");
            rounds_ms.sort_by(f64::total_cmp);
            drop(theirs);
            Some(Evaluation { rounds_ms, cpu_us_per_sample: cpu * 1e6 / samples.max(1) as f64, samples })
        }
        None => None,
    };
    // Ours: the scrape loop and the evaluation core, with the rounds driven from here so
    // that each is timed whole.
    exporter.post("/arm/ours").await;
    let (_db, store, registry) = registry().await;
    let metrics = pake_observe::Metrics::new("monitoring");
    let series = Arc::new(SeriesStore::new(Limits { max_series: n_series + 1_000, ..Limits::default() }));
    let core = Arc::new(
        Core::load(
            pake_monitoring::store::MonitoringStore::new(store),
            registry.clone(),
            series.clone(),
            Arc::new(HealthBook::default()),
            pake_monitoring::secrets::SealingKey::new(&[7u8; 32]).expect("a key"),
            &metrics,
            Settings { external_url: "http://127.0.0.1:9090".into(), loopback_only: false, warm_up: Duration::ZERO },
        )
        .await
        .expect("the core loads"),
    );
    for (spec, _) in &rules {
        core.create_rule(serde_json::from_value(spec.clone()).expect("a rule")).await.expect("the rule is stored");
    }
    let scraping = tokio::spawn(pake_monitoring::scrape::scrape_loop(
        scrape_settings(&exporter, interval),
        registry,
        series.clone(),
        metrics,
        ScrapeMetrics::default(),
    ));
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..3 {
        ticks.tick().await;
        core.tick().await;
    }
    let (cpu, served) = (pake_observe::process_cpu_time(), exporter.state("ours").await.0);
    let mut rounds_ms = Vec::new();
    for _ in 0..sizes.rounds {
        ticks.tick().await;
        let started = Instant::now();
        core.tick().await;
        rounds_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let cpu = pake_observe::process_cpu_time().saturating_sub(cpu).as_secs_f64();
    let samples = (exporter.state("ours").await.0 - served) * n_series as u64;
    scraping.abort();
    let failing = core.state().rules.values().filter(|r| r.last_error.is_some()).count();
    assert_eq!(failing, 0, "{failing} of our rules failed to evaluate");
    rounds_ms.sort_by(f64::total_cmp);
    let ours = Evaluation { rounds_ms, cpu_us_per_sample: cpu * 1e6 / samples.max(1) as f64, samples };
    (ours, theirs)
}

/// Run in a child process: scrapes `url` 720 times into a fresh series store (timestamps
/// 5 s apart, ending now) and prints the resident-set growth in bytes and the series held.
pub fn scrape_memory_child(spec: &str) {
    let mut parts = spec.rsplitn(3, ',');
    let series: usize = parts.next().and_then(|s| s.parse().ok()).expect("series");
    let scrapes: usize = parts.next().and_then(|s| s.parse().ok()).expect("scrapes");
    let url = parts.next().expect("url").to_string();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let client = reqwest::Client::builder().no_proxy().build().expect("a client");
    let fetch = || {
        runtime.block_on(async {
            client.get(&url).send().await.expect("the exporter answers").text().await.expect("a body")
        })
    };
    // One scrape not kept: what a scrape needs in passing is allocated before the baseline.
    drop(pake_monitoring::exposition::parse(&fetch()));
    let before = resident_bytes();
    let store = SeriesStore::new(Limits { max_series: series + 10, ..Limits::default() });
    let extra: LabelSet = [("service".to_string(), "exporter".to_string())].into();
    let start = now_ms() - (scrapes as i64 - 1) * STEP_MS;
    for k in 0..scrapes {
        let exposition = pake_monitoring::exposition::parse(&fetch());
        store.ingest_scrape("exporter", "exporter", &extra, &exposition, start + k as i64 * STEP_MS);
    }
    println!("{} {}", resident_bytes().saturating_sub(before), store.len());
}

/// Bytes per series, and the samples per series held.
struct Memory {
    bytes_per_series: f64,
    samples_per_series: f64,
    note: String,
}

async fn memory(prometheus: Option<&Path>, n_series: usize) -> (Memory, Option<Memory>) {
    println!("memory: {n_series} series with {MEMORY_SAMPLES} samples each, ours then Prometheus");
    let exporter = Exporter::start(n_series, 0);
    exporter.post("/arm/ours").await;
    let output = Command::new(std::env::current_exe().expect("this binary"))
        .env(SCRAPE_MEMORY_CHILD, format!("{},{MEMORY_SAMPLES},{n_series}", exporter.url("ours")))
        .stderr(Stdio::inherit())
        .output()
        .expect("the memory run starts");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut numbers = text.split_whitespace().filter_map(|n| n.parse::<u64>().ok());
    let (grown, held) = (numbers.next(), numbers.next());
    let (Some(grown), Some(held)) = (grown, held) else {
        panic!("the memory run printed {text:?} ({})", output.status)
    };
    let ours = Memory {
        bytes_per_series: grown as f64 / held.max(1) as f64,
        samples_per_series: MEMORY_SAMPLES as f64,
        note: format!("{held} series held, {MEMORY_SAMPLES} samples a series"),
    };
    let theirs = match prometheus {
        Some(program) => {
            let theirs = Prometheus::start(program, "memory", &exporter, MEMORY_INTERVAL, &[]).await;
            // Settled, with the target's own series (`up` and the like) only.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let before = theirs.metrics().await;
            exporter.post("/arm/prometheus").await;
            let deadline = Instant::now() + MEMORY_INTERVAL * (MEMORY_SAMPLES as u32 * 5) + Duration::from_secs(30);
            while exporter.state("prometheus").await.0 < MEMORY_SAMPLES as u64 {
                assert!(Instant::now() < deadline, "prometheus scraped too slowly: {}", theirs.log_tail());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let after = theirs.metrics().await;
            let delta = |name: &str| metric(&after, name) - metric(&before, name);
            let series = delta("prometheus_tsdb_head_series").max(1.0);
            // Asked once the memory is read: the query's own allocations come after.
            let samples = theirs.query("avg(count_over_time({job=\"bench\",__name__=~\"bench_.+\"}[1h]))").await;
            Some(Memory {
                bytes_per_series: delta("process_resident_memory_bytes") / series,
                samples_per_series: samples,
                note: format!(
                    "{series:.0} head series; Go heap in use grew {:.0} B a series",
                    delta("go_memstats_heap_inuse_bytes") / series
                ),
            })
        }
        None => None,
    };
    (ours, theirs)
}

// ---- The table ------------------------------------------------------------------------

/// The comparison's rows: measurement, ours, Prometheus, ratio, goal, met, note.
#[derive(Default)]
pub struct Comparison {
    pub heading: String,
    rows: Vec<[String; 7]>,
}

impl Comparison {
    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        what: &str,
        ours: f64,
        theirs: Option<f64>,
        unit: &str,
        goal: &str,
        met: Option<bool>,
        note: String,
    ) {
        let show = |v: f64| if v >= 100.0 { format!("{v:.0} {unit}") } else { format!("{v:.2} {unit}") };
        let row = [
            what.to_string(),
            show(ours),
            theirs.map(show).unwrap_or_else(|| "not run".into()),
            theirs.map(|t| format!("{:.2}", ours / t)).unwrap_or_else(|| "-".into()),
            goal.to_string(),
            match met {
                Some(true) => "yes".into(),
                Some(false) => "no".into(),
                None => "-".into(),
            },
            note,
        ];
        self.rows.push(row);
    }

    pub fn print(&self) {
        println!("\n{}", self.heading);
        println!(
            "{:<52} {:>12} {:>12} {:>6}  {:<18} {:<4} note",
            "measurement", "ours", "Prometheus", "ratio", "goal", "met"
        );
        for r in &self.rows {
            println!("{:<52} {:>12} {:>12} {:>6}  {:<18} {:<4} {}", r[0], r[1], r[2], r[3], r[4], r[5], r[6]);
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "## {}\n\n| measurement | ours | Prometheus | ratio (ours / Prometheus) | goal | met | note |\n|---|---:|---:|---:|---|---|---|\n",
            self.heading
        );
        for r in &self.rows {
            out.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        out
    }
}

/// Runs the three comparisons; `prometheus` is the program (None: ours only).
pub async fn compare(sizes: &Sizes, prometheus: Option<PathBuf>) -> Comparison {
    let version = prometheus.as_deref().map(|p| version(p).unwrap_or_else(|| p.display().to_string()));
    let mut table = Comparison {
        heading: format!(
            "side by side with {}",
            version.clone().unwrap_or_else(|| "Prometheus (not run: no prometheus program)".into())
        ),
        ..Comparison::default()
    };
    let program = prometheus.as_deref();

    // Evaluation and CPU first, in a process that has run nothing else yet.
    let (ours, theirs) = evaluation(program, sizes).await;
    let median = |e: &Evaluation| percentile(&e.rounds_ms, 0.5);
    let ours_round = median(&ours);
    let theirs_round = theirs.as_ref().map(median);
    table.row(
        &format!("evaluation round, {} rules x {} series", sizes.rules, sizes.series),
        ours_round,
        theirs_round,
        "ms",
        "≤ Prometheus",
        theirs_round.map(|t| ours_round <= t),
        format!(
            "median of {} rounds every {} s (max: ours {:.1} ms{}); ours: Core::tick with every rule due; Prometheus: prometheus_rule_group_last_duration_seconds",
            ours.rounds_ms.len(),
            sizes.interval.as_secs(),
            ours.rounds_ms.last().copied().unwrap_or(f64::NAN),
            theirs.as_ref().map(|t| format!(", Prometheus {:.1} ms", t.rounds_ms.last().copied().unwrap_or(f64::NAN))).unwrap_or_default()
        ),
    );
    table.row(
        &format!("CPU per sample ingested ({} rules running)", sizes.rules),
        ours.cpu_us_per_sample,
        theirs.as_ref().map(|t| t.cpu_us_per_sample),
        "µs",
        "≤ Prometheus",
        theirs.as_ref().map(|t| ours.cpu_us_per_sample <= t.cpu_us_per_sample),
        format!(
            "process CPU over the measured rounds (scrape, parse, store, evaluate) / samples served to it: ours {}{}",
            ours.samples,
            theirs.as_ref().map(|t| format!(", Prometheus {}", t.samples)).unwrap_or_default()
        ),
    );

    let (ours, theirs) = alert_latency(program, sizes.alerts).await;
    let p = |l: &Latencies, q: f64| percentile(&l.ms, q);
    let missing =
        |l: &Latencies| if l.missing > 0 { format!("; {} alert(s) never arrived", l.missing) } else { String::new() };
    let theirs_note = theirs.as_ref().map(missing).unwrap_or_default();
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        let ours_value = p(&ours, q);
        table.row(
            &format!("alert latency {label}, {} alerts (for: 0)", sizes.alerts),
            ours_value,
            theirs.as_ref().map(|t| p(t, q)),
            "ms",
            if q > 0.9 { "p99 ≤ 1 s" } else { "" },
            (q > 0.9).then_some(ours_value <= 1000.0 && ours.missing == 0),
            if q > 0.9 {
                format!(
                    "scrape and evaluation every 1 s; from the scrape serving the change to: ours, the webhook's arrival{}; Prometheus, /api/v1/alerts showing it firing (polled every 10 ms, no Alertmanager; its scrape and evaluation keep the phase they start with, so its latency is that phase, anywhere in 0-1 s and set anew each run, plus the evaluation){theirs_note}",
                    missing(&ours)
                )
            } else {
                String::new()
            },
        );
    }

    let (ours, theirs) = memory(program, sizes.memory_series).await;
    table.row(
        &format!("memory per active series, {MEMORY_SAMPLES} samples ({} series)", sizes.memory_series),
        ours.bytes_per_series,
        theirs.as_ref().map(|t| t.bytes_per_series),
        "B",
        "≤ Prometheus",
        theirs.as_ref().map(|t| ours.bytes_per_series <= t.bytes_per_series),
        format!(
            "resident-set growth; ours: a fresh process scraping {MEMORY_SAMPLES} times, timestamps 5 s apart, {}{}",
            ours.note,
            theirs
                .as_ref()
                .map(|t| format!(
                    "; Prometheus: from its start to after {MEMORY_SAMPLES} scrapes {} ms apart, {:.0} samples a series held, {}",
                    MEMORY_INTERVAL.as_millis(),
                    t.samples_per_series,
                    t.note
                ))
                .unwrap_or_default()
        ),
    );
    table
}
