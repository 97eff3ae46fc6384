//! The verdict of a run: latency percentiles per transaction and overall, throughput,
//! error rate, the gateway's cache hit rate and its process's CPU and memory, checked
//! against the SLA; printed, and written as JSON and Markdown beside goose's own reports.

use crate::scenario::Samples;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// The service-level agreement a run is judged by.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Sla {
    pub p95_ms: f64,
    /// Largest share of failed requests (0.001 = 0.1 %).
    pub max_error_rate: f64,
}

impl Default for Sla {
    fn default() -> Self {
        Sla { p95_ms: 500.0, max_error_rate: 0.001 }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub name: String,
    pub requests: u64,
    pub failures: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Failed answers by status (0: no answer at all).
    pub failed_statuses: BTreeMap<u16, u64>,
}

/// What the gateway process used during the run (when it runs on this machine).
#[derive(Clone, Debug, Serialize)]
pub struct ProcessUsage {
    pub pid: u32,
    /// CPU time over wall time: 1.0 is one core kept busy.
    pub cpu_cores: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub target: String,
    pub users: usize,
    pub duration_secs: f64,
    pub requests: u64,
    pub requests_per_sec: f64,
    pub error_rate: f64,
    pub overall: Latency,
    pub transactions: Vec<Latency>,
    /// The gateway's cache hit rate over the run (from its admin API), if readable.
    pub cache_hit_rate: Option<f64>,
    pub gateway: Option<ProcessUsage>,
    pub sla: Sla,
    pub breaches: Vec<String>,
    pub note: String,
}

/// The value below which `share` of the sorted samples fall (nearest rank).
fn percentile(sorted: &[u64], share: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((share * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn latency(name: &str, micros: &mut [u64], failures: u64, statuses: BTreeMap<u16, u64>) -> Latency {
    micros.sort_unstable();
    Latency {
        name: name.to_string(),
        requests: micros.len() as u64,
        failures,
        p50_ms: percentile(micros, 0.50),
        p95_ms: percentile(micros, 0.95),
        p99_ms: percentile(micros, 0.99),
        max_ms: micros.last().map(|us| *us as f64 / 1000.0).unwrap_or(0.0),
        failed_statuses: statuses,
    }
}

impl Summary {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        target: &str,
        users: usize,
        duration_secs: f64,
        samples: BTreeMap<&'static str, Samples>,
        cache_hit_rate: Option<f64>,
        gateway: Option<ProcessUsage>,
        sla: Sla,
    ) -> Summary {
        let mut all = Vec::new();
        let mut all_failures = 0;
        let mut all_statuses = BTreeMap::new();
        let mut transactions = Vec::new();
        for (name, mut samples) in samples {
            all.extend_from_slice(&samples.micros);
            all_failures += samples.failures;
            for (status, count) in &samples.statuses {
                *all_statuses.entry(*status).or_default() += count;
            }
            transactions.push(latency(name, &mut samples.micros, samples.failures, samples.statuses));
        }
        let overall = latency("overall", &mut all, all_failures, all_statuses);
        let requests = overall.requests;
        let error_rate = if requests == 0 { 1.0 } else { all_failures as f64 / requests as f64 };
        let mut breaches = Vec::new();
        if requests == 0 {
            breaches.push("no request was made".to_string());
        }
        if overall.p95_ms >= sla.p95_ms {
            breaches.push(format!("overall p95 {:.1} ms is not under {} ms", overall.p95_ms, sla.p95_ms));
        }
        for transaction in &transactions {
            if transaction.p95_ms >= sla.p95_ms {
                breaches.push(format!(
                    "{} p95 {:.1} ms is not under {} ms",
                    transaction.name, transaction.p95_ms, sla.p95_ms
                ));
            }
        }
        if error_rate >= sla.max_error_rate {
            breaches.push(format!(
                "error rate {:.3} % is not under {:.3} %",
                error_rate * 100.0,
                sla.max_error_rate * 100.0
            ));
        }
        Summary {
            target: target.to_string(),
            users,
            duration_secs,
            requests,
            requests_per_sec: if duration_secs > 0.0 { requests as f64 / duration_secs } else { 0.0 },
            error_rate,
            overall,
            transactions,
            cache_hit_rate,
            gateway,
            sla,
            breaches,
            note: "The load generator, the gateway, the registry and the demo upstreams share this machine's cores \
                   when run locally, so these figures are a floor for the platform, not its capacity."
                .into(),
        }
    }

    pub fn passed(&self) -> bool {
        self.breaches.is_empty()
    }

    pub fn markdown(&self) -> String {
        let mut text = format!(
            "# Load test: {}\n\n{} users against `{}` for {:.0} s: {} requests, {:.1} requests/s, error rate {:.3} %.\n\n\
             | transaction | requests | failures | p50 ms | p95 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|---:|\n",
            if self.passed() { "SLA met" } else { "SLA breached" },
            self.users,
            self.target,
            self.duration_secs,
            self.requests,
            self.requests_per_sec,
            self.error_rate * 100.0
        );
        for row in self.transactions.iter().chain(std::iter::once(&self.overall)) {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                row.name, row.requests, row.failures, row.p50_ms, row.p95_ms, row.p99_ms, row.max_ms
            );
        }
        let _ = writeln!(
            text,
            "\nSLA: p95 under {} ms for every transaction and overall, error rate under {} %.",
            self.sla.p95_ms,
            self.sla.max_error_rate * 100.0
        );
        match self.cache_hit_rate {
            Some(rate) => {
                let _ = writeln!(text, "Gateway cache hit rate during the run: {:.1} %.", rate * 100.0);
            }
            None => text.push_str("Gateway cache hit rate: not readable.\n"),
        }
        if let Some(gateway) = &self.gateway {
            let _ = writeln!(
                text,
                "Gateway process {}: {:.2} cores of CPU on average, {:.0} MiB resident at the end, {:.0} MiB at its peak.",
                gateway.pid, gateway.cpu_cores, gateway.rss_mib, gateway.peak_rss_mib
            );
        }
        if !self.overall.failed_statuses.is_empty() {
            let _ = writeln!(text, "Failures by status (0: no answer): {:?}.", self.overall.failed_statuses);
        }
        for breach in &self.breaches {
            let _ = writeln!(text, "- breach: {breach}");
        }
        let _ = writeln!(text, "\n{}", self.note);
        text
    }

    /// Writes `summary.json` and `summary.md` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("summary.json"), json)?;
        std::fs::write(dir.join("summary.md"), self.markdown())
    }
}

/// CPU ticks (user + system) and resident memory of a process, from /proc.
pub fn process_sample(pid: u32) -> Option<(u64, f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|line| line.starts_with(key))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some((ticks, kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(micros: &[u64], failures: u64) -> Samples {
        Samples { micros: micros.to_vec(), failures, statuses: BTreeMap::from([(503, failures)]) }
    }

    #[test]
    fn percentiles_are_nearest_rank_and_breaches_are_named() {
        let fast: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        let summary = Summary::new(
            "http://gw",
            10,
            10.0,
            BTreeMap::from([("search", samples(&fast, 0))]),
            Some(0.9),
            None,
            Sla::default(),
        );
        assert_eq!((summary.overall.p50_ms, summary.overall.p95_ms, summary.overall.p99_ms), (50.0, 95.0, 99.0));
        assert_eq!(summary.requests_per_sec, 10.0);
        assert!(summary.passed(), "{:?}", summary.breaches);

        let slow: Vec<u64> = (1..=100).map(|ms| ms * 10_000).collect();
        let summary = Summary::new(
            "http://gw",
            10,
            10.0,
            BTreeMap::from([("search", samples(&fast, 0)), ("summary", samples(&slow, 1))]),
            None,
            None,
            Sla::default(),
        );
        assert!(!summary.passed());
        assert!(summary.breaches.iter().any(|b| b.starts_with("summary p95 950.0 ms")), "{:?}", summary.breaches);
        assert!(summary.breaches.iter().any(|b| b.starts_with("error rate 0.500 %")), "{:?}", summary.breaches);
        assert!(summary.markdown().contains("SLA breached"));
    }

    #[test]
    fn no_requests_is_a_breach() {
        let summary = Summary::new("http://gw", 1, 1.0, BTreeMap::new(), None, None, Sla::default());
        assert_eq!(
            summary.breaches,
            vec!["no request was made".to_string(), "error rate 100.000 % is not under 0.100 %".to_string()]
        );
    }

    #[test]
    fn this_process_can_be_sampled() {
        let (ticks, rss, peak) = process_sample(std::process::id()).expect("/proc is readable");
        assert!(rss > 0.0 && peak >= rss, "{ticks} {rss} {peak}");
    }
}
