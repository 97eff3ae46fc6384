//! A benchmark's measurements and verdict: every answer the load generator reports goes
//! into a latency sketch of its status class, from which the progress while it runs,
//! the result once it ends and the verdict against its SLO and thresholds are read.
//!
//! The verdict judges an SLO as its reports do ([`crate::performance::good_in`] over the
//! run's sketches); thresholds hold when the measure is at or under them; with neither,
//! the platform SLA applies (p95 under 500 ms, error rate under 1 %). A run that sent no
//! request passes nothing.

use crate::sketch::LatencySketch;
use crate::store::BucketRow;
use pake_performance_server::types;
use serde_json::json;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The platform SLA a benchmark without an SLO or thresholds is judged against.
pub const PLATFORM_P95_MS: u64 = 500;
pub const PLATFORM_ERROR_RATE: f64 = 0.01;

/// What a run measured so far.
#[derive(Default)]
struct Tally {
    /// Latencies by status class (index 0: 1xx … 4: 5xx and no answer).
    classes: [LatencySketch; 5],
    requests: u64,
    failures: u64,
}

/// A run's measurements, fed by the load generator as answers come.
#[derive(Default)]
pub struct Progress {
    tally: Mutex<Tally>,
}

/// A request failed when it got no answer or a 4xx/5xx one, as the contract counts.
fn failed(status: Option<u16>) -> bool {
    !matches!(status, Some(100..=399))
}

impl load::bench::Observer for Progress {
    fn request(&self, took: Duration, status: Option<u16>) {
        let class = status.map(|s| (s / 100).clamp(1, 5)).unwrap_or(5) as usize;
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        tally.classes[class - 1].add(took.as_secs_f64() * 1000.0);
        tally.requests += 1;
        tally.failures += u64::from(failed(status));
    }
}

impl Progress {
    /// The measurements so far, `elapsed` after the run started.
    pub fn result(&self, elapsed: Duration) -> Result<types::BenchmarkResult, serde_json::Error> {
        let tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all = LatencySketch::new();
        for sketch in &tally.classes {
            all.merge(sketch).map_err(|e| <serde_json::Error as serde::de::Error>::custom(e.to_string()))?;
        }
        let latency = crate::performance::latency_summary(&all)
            .unwrap_or_else(|| json!({"p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}));
        let seconds = elapsed.as_secs_f64();
        serde_json::from_value(json!({
            "requests": tally.requests,
            "failures": tally.failures,
            "requests_per_second": if seconds > 0.0 { tally.requests as f64 / seconds } else { 0.0 },
            "latency_ms": latency,
            "error_rate": if tally.requests == 0 { 0.0 } else { tally.failures as f64 / tally.requests as f64 },
        }))
    }

    /// The run as sketch rows of one route, as an SLO report reads the gateway's.
    pub fn rows(&self, route: &str) -> Vec<BucketRow> {
        let tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        (1..=5)
            .map(|class| {
                let sketch = &tally.classes[class - 1];
                BucketRow {
                    route: route.to_string(),
                    status_class: class as i64,
                    requests: sketch.count(),
                    sketch: Some(sketch.clone()),
                }
            })
            .filter(|row| row.requests > 0)
            .collect()
    }
}

fn percent(ratio: f64) -> String {
    let value = format!("{:.2}", ratio * 100.0);
    let value = value.trim_end_matches('0').trim_end_matches('.');
    format!("{value}%")
}

/// One criterion and how it went.
fn criterion(passed: bool, held: String, broken: String) -> (bool, String) {
    if passed { (true, held) } else { (false, broken) }
}

/// The verdict of a finished run: each threshold, the SLO's objective over the run's
/// requests (`slo_sli`: the SLO and its SLI in percent, `None` when none of the run's
/// requests fall under it), or the platform SLA when neither is given.
pub fn verdict(
    result: &types::BenchmarkResult,
    thresholds: Option<&types::BenchmarkThresholds>,
    slo: Option<(&types::Slo, Option<f64>)>,
) -> Result<types::BenchmarkVerdict, serde_json::Error> {
    let mut criteria = Vec::new();
    if result.requests == 0 {
        criteria.push((false, "no request was sent, so nothing was measured".to_string()));
    }
    let platform;
    let thresholds = match (thresholds, slo) {
        (Some(thresholds), _) => Some(thresholds),
        (None, Some(_)) => None,
        (None, None) => {
            platform = types::BenchmarkThresholds {
                p95_ms: std::num::NonZeroU64::new(PLATFORM_P95_MS),
                error_rate: Some(PLATFORM_ERROR_RATE),
            };
            criteria.push((true, "no SLO or thresholds were given: the platform SLA applies".to_string()));
            Some(&platform)
        }
    };
    if let Some(thresholds) = thresholds {
        let p95 = result.latency_ms.p95;
        if let Some(limit) = thresholds.p95_ms {
            let limit = limit.get();
            criteria.push(criterion(
                p95 <= limit as f64,
                format!("p95 {p95:.1} ms is under the threshold of {limit} ms"),
                format!("p95 {p95:.1} ms is above the threshold of {limit} ms"),
            ));
        }
        if let Some(limit) = thresholds.error_rate {
            let rate = result.error_rate;
            criteria.push(criterion(
                rate <= limit,
                format!("error rate {} is under the threshold of {}", percent(rate), percent(limit)),
                format!("error rate {} is above the threshold of {}", percent(rate), percent(limit)),
            ));
        }
    }
    if let Some((slo, sli)) = slo {
        let name = slo.name.as_str();
        let target = slo.target;
        criteria.push(match sli {
            None => (false, format!("SLO {name}: none of the benchmark's requests fall under it")),
            Some(sli) => criterion(
                sli >= target,
                format!("SLO {name}: SLI {sli:.3}% meets the target of {target}%"),
                format!("SLO {name}: SLI {sli:.3}% misses the target of {target}%"),
            ),
        });
    }
    let passed = criteria.iter().all(|(passed, _)| *passed);
    let reasons: Vec<String> = criteria.into_iter().map(|(_, reason)| reason).collect();
    serde_json::from_value(json!({ "passed": passed, "reasons": reasons }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use load::bench::Observer;

    fn thresholds(p95_ms: Option<u64>, error_rate: Option<f64>) -> types::BenchmarkThresholds {
        types::BenchmarkThresholds { p95_ms: p95_ms.and_then(std::num::NonZeroU64::new), error_rate }
    }

    #[test]
    fn answers_are_counted_and_failures_are_4xx_5xx_and_silence() {
        let progress = Progress::default();
        for _ in 0..96 {
            progress.request(Duration::from_millis(10), Some(200));
        }
        progress.request(Duration::from_millis(900), Some(503));
        progress.request(Duration::from_millis(900), Some(404));
        progress.request(Duration::from_millis(900), None);
        progress.request(Duration::from_millis(10), Some(302));
        let result = progress.result(Duration::from_secs(10)).unwrap();
        assert_eq!((result.requests, result.failures), (100, 3));
        assert!((result.error_rate - 0.03).abs() < 1e-12);
        assert!((result.requests_per_second - 10.0).abs() < 1e-12);
        assert!((result.latency_ms.p50 - 10.0).abs() < 0.1, "{}", result.latency_ms.p50);
        assert!((result.latency_ms.max - 900.0).abs() < 9.0);
        let rows = progress.rows("/v1/search");
        let classes: Vec<(i64, u64)> = rows.iter().map(|row| (row.status_class, row.requests)).collect();
        assert_eq!(classes, [(2, 96), (3, 1), (4, 1), (5, 2)]);
    }

    #[test]
    fn an_empty_run_has_a_result_of_zeros_and_passes_nothing() {
        let result = Progress::default().result(Duration::ZERO).unwrap();
        assert_eq!((result.requests, result.requests_per_second, result.latency_ms.p95), (0, 0.0, 0.0));
        assert!(!verdict(&result, None, None).unwrap().passed);
    }

    #[test]
    fn thresholds_hold_at_or_under_and_each_says_how_it_went() {
        let progress = Progress::default();
        for i in 0..200 {
            progress.request(Duration::from_millis(100), Some(if i == 0 { 500 } else { 200 }));
        }
        let result = progress.result(Duration::from_secs(1)).unwrap();
        let passed = verdict(&result, Some(&thresholds(Some(200), Some(0.01))), None).unwrap();
        assert!(passed.passed, "{:?}", passed.reasons);
        assert_eq!(passed.reasons.len(), 2);
        assert!(passed.reasons[1].contains("error rate 0.5% is under the threshold of 1%"), "{:?}", passed.reasons);
        let failed = verdict(&result, Some(&thresholds(Some(50), None)), None).unwrap();
        assert!(!failed.passed);
        assert!(failed.reasons[0].contains("above the threshold of 50 ms"), "{:?}", failed.reasons);
        // Neither an SLO nor thresholds: the platform SLA (p95 500 ms, 1 %).
        let platform = verdict(&result, None, None).unwrap();
        assert!(platform.passed);
        assert_eq!(platform.reasons.len(), 3);
        let slow = Progress::default();
        slow.request(Duration::from_millis(700), Some(200));
        assert!(!verdict(&slow.result(Duration::from_secs(1)).unwrap(), None, None).unwrap().passed);
    }
}
