//! Active health checks of every instance registered in the service mesh, and the book of
//! their results.
//!
//! Each instance is checked by a task of its own at its service's `health_check` interval,
//! offset by a jitter derived from the instance id so that checks do not align; a slow
//! instance delays only its own checks. Results follow Consul's mapping (2xx passing, or
//! the `application/health+json` status of the body: `warn` warning, `fail` critical; 429
//! warning; any other status, an error or a timeout critical) and the thresholds
//! (`unhealthy_threshold` consecutive failures make a healthy instance critical,
//! `healthy_threshold` consecutive successes make a critical one healthy). A change is
//! written back to the registry as the instance's status (a heartbeat, in process: the
//! registry shares this process's store), and every check feeds the series
//! `up{job="health",service,instance_id}` (1 when the check succeeded, 0 when not).
//!
//! Auto-healing: an instance that a firing `auto_heal` alert names is held `critical` in
//! the registry (re-asserted every second while the alert fires, since the instance's own
//! heartbeats may report otherwise) and handed back to its checked status when the alert
//! resolves.

use crate::labels::LabelSet;
use crate::series::{MetricType, SeriesKey, SeriesStore};
use chrono::{DateTime, Utc};
use pake_mesh_server::types;
use pake_registry::Registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Bytes of a health answer read to find its status.
const MAX_HEALTH_BODY: usize = 64 * 1024;
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Passing,
    Warning,
    Critical,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::Unknown => "unknown",
        }
    }
}

/// What the checks found for one instance.
#[derive(Debug, Clone)]
pub struct InstanceHealth {
    pub status: Status,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub consecutive_failures: u64,
    consecutive_successes: u64,
    pub latency_ms: Option<f64>,
    pub output: String,
}

impl Default for InstanceHealth {
    fn default() -> Self {
        InstanceHealth {
            status: Status::Unknown,
            last_checked_at: None,
            last_success_at: None,
            consecutive_failures: 0,
            consecutive_successes: 0,
            latency_ms: None,
            output: "not checked yet".into(),
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub status: Status,
    pub latency_ms: Option<f64>,
    pub output: String,
}

impl InstanceHealth {
    /// Applies one result under the thresholds.
    pub fn record(&mut self, result: CheckResult, healthy_threshold: u64, unhealthy_threshold: u64, at: DateTime<Utc>) {
        self.last_checked_at = Some(at);
        self.latency_ms = result.latency_ms;
        self.output = result.output.chars().take(4000).collect();
        if result.status == Status::Critical {
            self.consecutive_failures += 1;
            self.consecutive_successes = 0;
            if self.status == Status::Unknown || self.consecutive_failures >= unhealthy_threshold {
                self.status = Status::Critical;
            }
        } else {
            self.consecutive_successes += 1;
            self.consecutive_failures = 0;
            if result.status == Status::Passing {
                self.last_success_at = Some(at);
            }
            if self.status != Status::Critical || self.consecutive_successes >= healthy_threshold {
                self.status = result.status;
            }
        }
    }
}

/// Health of every checked instance, and which instances auto-heal alerts hold out.
#[derive(Default)]
pub struct HealthBook {
    entries: Mutex<HashMap<Uuid, InstanceHealth>>,
    healed: Mutex<HashMap<Uuid, HashSet<Uuid>>>,
    pub checks: Family<Vec<(String, String)>, Counter>,
}

impl HealthBook {
    pub fn get(&self, instance: Uuid) -> Option<InstanceHealth> {
        self.entries.lock().expect("health lock").get(&instance).cloned()
    }

    pub fn all(&self) -> HashMap<Uuid, InstanceHealth> {
        self.entries.lock().expect("health lock").clone()
    }

    /// An alert takes `instance` out of discovery.
    pub fn heal(&self, instance: Uuid, alert: Uuid) {
        self.healed.lock().expect("healed lock").entry(instance).or_default().insert(alert);
    }

    /// The alert no longer holds `instance` out.
    pub fn unheal(&self, instance: Uuid, alert: Uuid) {
        let mut healed = self.healed.lock().expect("healed lock");
        if let Some(alerts) = healed.get_mut(&instance) {
            alerts.remove(&alert);
            if alerts.is_empty() {
                healed.remove(&instance);
            }
        }
    }

    pub fn is_healed(&self, instance: Uuid) -> bool {
        self.healed.lock().expect("healed lock").contains_key(&instance)
    }

    fn healed(&self) -> Vec<Uuid> {
        self.healed.lock().expect("healed lock").keys().copied().collect()
    }
}

/// What checking one instance needs, and what restarts its task when it changes.
#[derive(Debug, Clone, PartialEq)]
struct CheckPlan {
    service_id: Uuid,
    service: String,
    url: String,
    interval: Duration,
    timeout: Duration,
    healthy_threshold: u64,
    unhealthy_threshold: u64,
}

/// The URL an instance is checked at: its own `health_url`, else its scheme, address and
/// port with the service's `health_check.path`.
fn health_url(service: &types::Service, instance: &types::Instance) -> String {
    if let Some(url) = &instance.health_url {
        return url.to_string();
    }
    let scheme = match instance.scheme {
        types::InstanceScheme::Https => "https",
        _ => "http",
    };
    let host =
        if instance.address.contains(':') { format!("[{}]", *instance.address) } else { instance.address.to_string() };
    format!("{scheme}://{host}:{}{}", instance.port, service.health_check.path.as_str())
}

/// Checks `url` once.
pub async fn check(client: &reqwest::Client, url: &str, timeout: Duration) -> CheckResult {
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, async {
        let mut response =
            client.get(url).header(&pake_trace::w3c::TRACEPARENT, crate::scrape::machinery_trace()).send().await?;
        let status = response.status();
        let mut body = Vec::new();
        while body.len() < MAX_HEALTH_BODY {
            match response.chunk().await? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        Ok::<_, reqwest::Error>((status, body))
    })
    .await;
    let latency_ms = Some(started.elapsed().as_secs_f64() * 1000.0);
    match outcome {
        Ok(Ok((status, body))) => {
            let line = format!("HTTP {} {}", status.as_u16(), status.canonical_reason().unwrap_or(""));
            let reported = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_ascii_lowercase));
            let result = |status, detail: &str| CheckResult { status, latency_ms, output: format!("{line}{detail}") };
            if status.is_success() {
                match reported.as_deref() {
                    Some("warn") => result(Status::Warning, ": status warn"),
                    Some("fail" | "down" | "critical") => result(Status::Critical, ": status fail"),
                    Some(other) => result(Status::Passing, &format!(": status {other}")),
                    None => result(Status::Passing, ""),
                }
            } else if status.as_u16() == 429 {
                result(Status::Warning, "")
            } else {
                result(Status::Critical, "")
            }
        }
        Ok(Err(error)) => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            CheckResult { status: Status::Critical, latency_ms: None, output: text }
        }
        Err(_) => CheckResult {
            status: Status::Critical,
            latency_ms: None,
            output: format!("no answer within {} ms", timeout.as_millis()),
        },
    }
}

/// The status the registry should show for an instance: critical while healed, else the
/// checked one (none while unknown).
fn desired(book: &HealthBook, instance: Uuid) -> Option<types::InstanceStatus> {
    if book.is_healed(instance) {
        return Some(types::InstanceStatus::Critical);
    }
    match book.get(instance)?.status {
        Status::Passing => Some(types::InstanceStatus::Passing),
        Status::Warning => Some(types::InstanceStatus::Warning),
        Status::Critical => Some(types::InstanceStatus::Critical),
        Status::Unknown => None,
    }
}

/// Writes `status` to the registry for the instance if it shows another one.
async fn write_back(
    registry: &Registry,
    service_id: Uuid,
    instance: Uuid,
    status: types::InstanceStatus,
    output: &str,
) {
    let now = chrono::Utc::now().timestamp_millis();
    let current = registry
        .snapshot()
        .service(service_id)
        .and_then(|data| data.instances.iter().find(|r| r.instance.id == instance).map(|r| r.effective(now).status));
    if current.is_none() || current == Some(status) {
        return;
    }
    let heartbeat: types::HeartbeatRequest = match serde_json::from_value(serde_json::json!({
        "status": status, "output": output.chars().take(4000).collect::<String>(),
    })) {
        Ok(heartbeat) => heartbeat,
        Err(error) => {
            tracing::warn!(%error, "cannot build a heartbeat");
            return;
        }
    };
    if let Err(error) = registry.heartbeat(service_id, instance, heartbeat).await {
        tracing::debug!(%error, %instance, "health status not written to the registry");
    }
}

fn up_key(service: &str, instance: Uuid) -> SeriesKey {
    let labels: LabelSet = [
        ("instance_id".to_string(), instance.to_string()),
        ("job".to_string(), "health".to_string()),
        ("service".to_string(), service.to_string()),
    ]
    .into();
    SeriesKey { name: "up".into(), labels }
}

async fn check_loop(
    instance: Uuid,
    plan: CheckPlan,
    registry: Arc<Registry>,
    book: Arc<HealthBook>,
    series: Arc<SeriesStore>,
    client: reqwest::Client,
) {
    // Spread the instances' checks over the interval, the same offset for an instance
    // every time.
    let spread = (instance.as_u128() % 1000) as f64 / 1000.0;
    tokio::time::sleep(plan.interval.mul_f64(spread)).await;
    let mut ticks = tokio::time::interval(plan.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = check(&client, &plan.url, plan.timeout).await;
        let now = chrono::Utc::now();
        let up = if result.status == Status::Critical { 0.0 } else { 1.0 };
        book.checks.get_or_create(&vec![("status".into(), result.status.as_str().into())]).inc();
        series.set_value(
            up_key(&plan.service, instance),
            MetricType::Gauge,
            "Whether the latest active health check of the instance succeeded",
            &instance.to_string(),
            now.timestamp_millis(),
            up,
        );
        let output = result.output.clone();
        book.entries.lock().expect("health lock").entry(instance).or_default().record(
            result,
            plan.healthy_threshold,
            plan.unhealthy_threshold,
            now,
        );
        if let Some(status) = desired(&book, instance) {
            let output =
                if book.is_healed(instance) { "taken out of discovery by an auto-heal alert".into() } else { output };
            write_back(&registry, plan.service_id, instance, status, &output).await;
        }
    }
}

/// Keeps one check task per registered instance, and re-asserts auto-healing.
pub async fn supervise(registry: Arc<Registry>, book: Arc<HealthBook>, series: Arc<SeriesStore>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("the health-check client builds");
    let mut running: HashMap<Uuid, (CheckPlan, JoinHandle<()>)> = HashMap::new();
    let mut ticks = tokio::time::interval(SUPERVISE_INTERVAL);
    loop {
        ticks.tick().await;
        let snapshot = registry.snapshot();
        let mut present = HashSet::new();
        for data in snapshot.services() {
            let check = &data.service.health_check;
            for record in &data.instances {
                let instance = &record.instance;
                present.insert(instance.id);
                let plan = CheckPlan {
                    service_id: data.service.id,
                    service: data.service.name.to_string(),
                    url: health_url(&data.service, instance),
                    interval: Duration::from_secs(check.interval_seconds.get().max(1)),
                    timeout: Duration::from_millis(check.timeout_ms.get().max(1)),
                    healthy_threshold: check.healthy_threshold.get(),
                    unhealthy_threshold: check.unhealthy_threshold.get(),
                };
                if running.get(&instance.id).is_some_and(|(p, _)| *p == plan) {
                    continue;
                }
                if let Some((_, task)) = running.remove(&instance.id) {
                    task.abort();
                }
                let task = tokio::spawn(check_loop(
                    instance.id,
                    plan.clone(),
                    registry.clone(),
                    book.clone(),
                    series.clone(),
                    client.clone(),
                ));
                running.insert(instance.id, (plan, task));
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        running.retain(|id, (plan, task)| {
            if present.contains(id) {
                return true;
            }
            task.abort();
            series.end_target(&id.to_string(), Some(&up_key(&plan.service, *id)), now);
            false
        });
        book.entries.lock().expect("health lock").retain(|id, _| present.contains(id));
        for instance in book.healed() {
            if let Some((plan, _)) = running.get(&instance) {
                write_back(
                    &registry,
                    plan.service_id,
                    instance,
                    types::InstanceStatus::Critical,
                    "taken out of discovery by an auto-heal alert",
                )
                .await;
            }
        }
    }
}

/// Writes an instance's status to the registry now: critical while an auto-heal alert
/// holds it, else its checked status (passing when not checked yet), so that taking it out
/// of discovery and handing it back do not wait for the next check.
pub async fn reconcile(registry: Arc<Registry>, book: Arc<HealthBook>, instance: Uuid) {
    let snapshot = registry.snapshot();
    let Some(service_id) = snapshot
        .services()
        .iter()
        .find(|d| d.instances.iter().any(|r| r.instance.id == instance))
        .map(|d| d.service.id)
    else {
        return;
    };
    let (status, output) = match desired(&book, instance) {
        Some(types::InstanceStatus::Critical) if book.is_healed(instance) => {
            (types::InstanceStatus::Critical, "taken out of discovery by an auto-heal alert")
        }
        Some(status) => (status, "handed back after its auto-heal alert resolved"),
        None => (types::InstanceStatus::Passing, "handed back after its auto-heal alert resolved"),
    };
    write_back(&registry, service_id, instance, status, output).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: Status) -> CheckResult {
        CheckResult { status, latency_ms: Some(1.0), output: String::new() }
    }

    #[test]
    fn thresholds_are_consuls() {
        let at = Utc::now();
        let mut health = InstanceHealth::default();
        health.record(result(Status::Passing), 2, 3, at);
        assert_eq!(health.status, Status::Passing);
        health.record(result(Status::Critical), 2, 3, at);
        health.record(result(Status::Critical), 2, 3, at);
        assert_eq!((health.status, health.consecutive_failures), (Status::Passing, 2));
        health.record(result(Status::Critical), 2, 3, at);
        assert_eq!(health.status, Status::Critical);
        health.record(result(Status::Passing), 2, 3, at);
        assert_eq!(health.status, Status::Critical);
        health.record(result(Status::Warning), 2, 3, at);
        assert_eq!((health.status, health.consecutive_failures), (Status::Warning, 0));
    }
}
