//! Scraping: every interval, the Prometheus exposition of each PAKE service (this one in
//! process, the others over HTTP) and of every registered instance whose service (or the
//! instance itself) declares a `metrics_path` in its metadata, into the series store, with
//! an `up{job="metrics"}` series per target (1 when the scrape succeeded). A target that
//! fails, or disappears, gets stale markers for every series it produced.
//!
//! A round's samples are stamped with the round's scheduled time ([`ScrapeClock`]), as
//! Prometheus stamps a scrape with its start and keeps it on the interval: timestamps
//! exactly one interval apart cost the series store a bit each (delta of delta 0), where
//! the few milliseconds of jitter of "now" would cost two bytes.

use crate::exposition;
use crate::labels::LabelSet;
use crate::series::{MetricType, SeriesKey, SeriesStore};
use pake_registry::Registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// The most of one exposition read.
const MAX_EXPOSITION_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ScrapeSettings {
    pub interval: Duration,
    pub timeout: Duration,
    /// PAKE services scraped over HTTP: name and `/metrics` URL.
    pub services: Vec<(String, String)>,
}

impl Default for ScrapeSettings {
    fn default() -> Self {
        ScrapeSettings { interval: Duration::from_secs(5), timeout: Duration::from_secs(2), services: Vec::new() }
    }
}

#[derive(Clone, Default)]
pub struct ScrapeMetrics {
    pub scrapes: Family<Vec<(String, String)>, Counter>,
}

struct Target {
    id: String,
    source: String,
    url: String,
    labels: LabelSet,
}

fn up_key(labels: &LabelSet) -> SeriesKey {
    let mut labels = labels.clone();
    labels.insert("job".into(), "metrics".into());
    SeriesKey { name: "up".into(), labels }
}

/// The trace context of a request the platform's own machinery makes (a scrape, a health
/// check): a new trace, not sampled, so that a service following its caller's decision
/// records it only when it fails or is slow (its tail rule), and routine checks every few
/// seconds do not bury the traces worth reading.
pub fn machinery_trace() -> axum::http::HeaderValue {
    pake_trace::w3c::TraceParent { sampled: false, ..pake_trace::w3c::TraceParent::new() }.header_value()
}

async fn fetch(client: &reqwest::Client, url: &str, timeout: Duration) -> Result<String, String> {
    let outcome = tokio::time::timeout(timeout, async {
        let mut response = client
            .get(url)
            .header("accept", "text/plain;version=0.0.4")
            .header(&pake_trace::w3c::TRACEPARENT, machinery_trace())
            .send()
            .await?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_EXPOSITION_BYTES {
                return Ok(Err(format!("the exposition is larger than {MAX_EXPOSITION_BYTES} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Ok(Err(format!("HTTP {}", status.as_u16())));
        }
        Ok::<_, reqwest::Error>(String::from_utf8(body).map_err(|_| "the exposition is not UTF-8".to_string()))
    })
    .await;
    match outcome {
        Ok(Ok(result)) => result,
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// The registered instances to scrape.
fn instance_targets(registry: &Registry) -> Vec<Target> {
    let snapshot = registry.snapshot();
    let mut targets = Vec::new();
    for data in snapshot.services() {
        for record in &data.instances {
            let instance = &record.instance;
            let path = instance.metadata.get("metrics_path").or_else(|| data.service.metadata.get("metrics_path"));
            let Some(path) = path.map(|p| p.to_string()).filter(|p| p.starts_with('/')) else { continue };
            let scheme = if matches!(instance.scheme, pake_mesh_server::types::InstanceScheme::Https) {
                "https"
            } else {
                "http"
            };
            let host = if instance.address.contains(':') {
                format!("[{}]", *instance.address)
            } else {
                instance.address.to_string()
            };
            targets.push(Target {
                id: instance.id.to_string(),
                source: instance.id.to_string(),
                url: format!("{scheme}://{host}:{}{path}", instance.port),
                labels: [
                    ("instance_id".to_string(), instance.id.to_string()),
                    ("service".to_string(), data.service.name.to_string()),
                ]
                .into(),
            });
        }
    }
    targets
}

/// How far the wall clock may have moved against the schedule before the schedule is set
/// anew from it (a clock step, a suspended process).
const CLOCK_TOLERANCE_MS: i64 = 100;

/// The wall-clock time of each scheduled scrape: the first tick's wall-clock time plus the
/// schedule's own (monotonic) progress, while the wall clock agrees with that.
#[derive(Debug, Default)]
pub struct ScrapeClock {
    base: Option<(std::time::Instant, i64)>,
}

impl ScrapeClock {
    /// The time, in Unix milliseconds, of the tick scheduled for `tick`, read at `now`
    /// when the wall clock says `wall_ms`.
    pub fn at(&mut self, tick: std::time::Instant, now: std::time::Instant, wall_ms: i64) -> i64 {
        let wall_at_tick = wall_ms - now.saturating_duration_since(tick).as_millis() as i64;
        if let Some((base, base_ms)) = self.base {
            let scheduled = base_ms + tick.saturating_duration_since(base).as_millis() as i64;
            if tick >= base && (wall_at_tick - scheduled).abs() <= CLOCK_TOLERANCE_MS {
                return scheduled;
            }
        }
        self.base = Some((tick, wall_at_tick));
        wall_at_tick
    }
}

/// Scrapes every target every interval until the task is stopped.
pub async fn scrape_loop(
    settings: ScrapeSettings,
    registry: Arc<Registry>,
    series: Arc<SeriesStore>,
    own: pake_observe::Metrics,
    metrics: ScrapeMetrics,
) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("the scrape client builds");
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut previous: HashSet<String> = HashSet::new();
    let mut rounds = 0u64;
    let mut clock = ScrapeClock::default();
    loop {
        let tick = ticks.tick().await;
        let now = clock.at(tick.into_std(), std::time::Instant::now(), chrono::Utc::now().timestamp_millis());
        // This service's own metrics, in process.
        let own_labels: LabelSet = [("service".to_string(), "monitoring".to_string())].into();
        series.ingest_scrape("pake:monitoring", "monitoring", &own_labels, &exposition::parse(&own.render()), now);
        series.set_value(
            up_key(&own_labels),
            MetricType::Gauge,
            "Whether the latest scrape of the target succeeded",
            "monitoring",
            now,
            1.0,
        );
        let mut targets: Vec<Target> = settings
            .services
            .iter()
            .map(|(name, url)| Target {
                id: format!("pake:{name}"),
                source: name.clone(),
                url: url.clone(),
                labels: [("service".to_string(), name.clone())].into(),
            })
            .collect();
        targets.extend(instance_targets(&registry));
        let scrapes = targets.iter().map(|target| {
            let client = client.clone();
            async move { (target, fetch(&client, &target.url, settings.timeout).await) }
        });
        let mut current = HashSet::new();
        for (target, outcome) in futures::future::join_all(scrapes).await {
            current.insert(target.id.clone());
            let up = match outcome {
                Ok(text) => {
                    series.ingest_scrape(&target.id, &target.source, &target.labels, &exposition::parse(&text), now);
                    metrics.scrapes.get_or_create(&vec![("outcome".into(), "ok".into())]).inc();
                    1.0
                }
                Err(error) => {
                    tracing::debug!(target = %target.url, %error, "scrape failed");
                    series.end_target(&target.id, None, now);
                    metrics.scrapes.get_or_create(&vec![("outcome".into(), "failed".into())]).inc();
                    0.0
                }
            };
            series.set_value(
                up_key(&target.labels),
                MetricType::Gauge,
                "Whether the latest scrape of the target succeeded",
                &target.source,
                now,
                up,
            );
        }
        for gone in previous.difference(&current) {
            series.end_target(gone, None, now);
        }
        previous = current;
        rounds += 1;
        if rounds.is_multiple_of(12) {
            series.collect_garbage(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn scrape_times_keep_the_schedule_until_the_wall_clock_leaves_it() {
        let mut clock = ScrapeClock::default();
        let start = Instant::now();
        let second = Duration::from_secs(5);
        // Woken a little late each time, with the wall clock read a little later still.
        let first = clock.at(start, start + Duration::from_millis(3), 1_000_003);
        assert_eq!(first, 1_000_000);
        for k in 1..=10u32 {
            let tick = start + second * k;
            let late = Duration::from_millis(u64::from(k % 4) * 7);
            let wall = 1_000_000 + i64::from(k) * 5_000 + late.as_millis() as i64 + 1;
            assert_eq!(clock.at(tick, tick + late, wall), 1_000_000 + i64::from(k) * 5_000);
        }
        // The wall clock steps back a minute: the schedule is taken from it anew.
        let tick = start + second * 11;
        assert_eq!(clock.at(tick, tick, 1_055_000 - 60_000), 995_000);
        assert_eq!(clock.at(tick + second, tick + second, 1_000_000), 1_000_000);
    }
}
