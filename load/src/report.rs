//! The verdict of a run: latency percentiles per transaction and overall, throughput,
//! error rate with the errors split into throttling (429) and the platform failing (5xx,
//! no answer), sign-ins and their throttling, the same per tenant, the limits read before
//! the ramp, the gateway's cache hit rate and its process's CPU and memory, checked
//! against the SLA; printed, and written as JSON and Markdown beside goose's own reports.

use crate::limits::Preflight;
use crate::scenario::{Samples, TokenPer};
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

/// Latency and outcomes of one transaction (or of all): errors split into throttling (429),
/// the platform failing (5xx, no answer) and other refusals.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub name: String,
    pub requests: u64,
    pub errors: u64,
    pub throttled: u64,
    pub failed: u64,
    pub refused: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Error answers by status (0: no answer at all).
    pub error_statuses: BTreeMap<u16, u64>,
}

/// One tenant's share of the run.
#[derive(Clone, Debug, Serialize)]
pub struct TenantRow {
    pub tenant: String,
    pub users: usize,
    /// Sign-ins answered (with a token or an error), retried attempts aside.
    pub sign_ins: u64,
    /// Sign-in attempts answered 429 and retried after `Retry-After`.
    pub throttled_sign_ins: u64,
    pub requests: u64,
    pub errors: u64,
    pub throttled: u64,
    pub failed: u64,
    pub refused: u64,
    pub p95_ms: f64,
}

/// Sign-ins over the run.
#[derive(Clone, Debug, Serialize)]
pub struct SignIns {
    pub token_per: TokenPer,
    /// Sign-ins answered, retried attempts aside.
    pub answered: u64,
    /// Attempts answered 429 and retried: not errors.
    pub throttled_and_retried: u64,
    /// Seconds users spent waiting to retry them, in all.
    pub retry_wait_secs: f64,
    /// Sign-ins that ended in an error (a 429 not retried because the run was over among them).
    pub errors: u64,
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

/// What a run measured, for [`Summary::new`].
pub struct Measured {
    pub target: String,
    pub users: usize,
    pub duration_secs: f64,
    /// Samples per tenant index and transaction.
    pub samples: BTreeMap<(usize, &'static str), Samples>,
    /// Tenant names by index.
    pub tenants: Vec<String>,
    pub token_per: TokenPer,
    pub preflight: Preflight,
    pub cache_hit_rate: Option<f64>,
    pub gateway: Option<ProcessUsage>,
    pub sla: Sla,
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
    pub tenants: Vec<TenantRow>,
    pub sign_ins: SignIns,
    /// The platform's limits read before the ramp, and the warnings about them.
    pub limits: Preflight,
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

fn latency(name: &str, mut samples: Samples) -> Latency {
    samples.micros.sort_unstable();
    let micros = &samples.micros;
    Latency {
        name: name.to_string(),
        requests: micros.len() as u64,
        errors: samples.errors(),
        throttled: samples.throttled,
        failed: samples.failed,
        refused: samples.refused,
        p50_ms: percentile(micros, 0.50),
        p95_ms: percentile(micros, 0.95),
        p99_ms: percentile(micros, 0.99),
        max_ms: micros.last().map(|us| *us as f64 / 1000.0).unwrap_or(0.0),
        error_statuses: samples.statuses,
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 }
}

impl Summary {
    pub fn new(run: Measured) -> Summary {
        let mut all = Samples::default();
        let mut by_name: BTreeMap<&'static str, Samples> = BTreeMap::new();
        let mut by_tenant: BTreeMap<usize, Samples> = BTreeMap::new();
        let mut sign_ins = Samples::default();
        for ((tenant, name), samples) in &run.samples {
            all.merge(samples);
            by_name.entry(*name).or_default().merge(samples);
            let tenant_samples = by_tenant.entry(*tenant).or_default();
            tenant_samples.merge(samples);
            if *name == "token" {
                sign_ins.merge(samples);
            }
        }
        let tenant_count = run.tenants.len().max(1);
        let tenants = (0..run.tenants.len())
            .map(|index| {
                let samples = by_tenant.remove(&index).unwrap_or_default();
                let token = run.samples.get(&(index, "token"));
                let row = latency("", samples);
                TenantRow {
                    tenant: run.tenants[index].clone(),
                    users: (0..run.users)
                        .filter(|user| crate::scenario::tenant_of(*user, tenant_count) == index)
                        .count(),
                    sign_ins: token.map(|t| t.micros.len() as u64).unwrap_or(0),
                    throttled_sign_ins: token.map(|t| t.retried).unwrap_or(0),
                    requests: row.requests,
                    errors: row.errors,
                    throttled: row.throttled,
                    failed: row.failed,
                    refused: row.refused,
                    p95_ms: row.p95_ms,
                }
            })
            .collect();
        let sign_ins = SignIns {
            token_per: run.token_per,
            answered: sign_ins.micros.len() as u64,
            throttled_and_retried: sign_ins.retried,
            retry_wait_secs: sign_ins.retry_wait_ms as f64 / 1000.0,
            errors: sign_ins.errors(),
        };
        let transactions: Vec<Latency> = by_name.into_iter().map(|(name, samples)| latency(name, samples)).collect();
        let overall = latency("overall", all);
        let requests = overall.requests;
        let error_rate = if requests == 0 { 1.0 } else { overall.errors as f64 / requests as f64 };
        let sla = run.sla;
        let mut breaches = Vec::new();
        if requests == 0 {
            breaches.push("no request was made".to_string());
        }
        for row in transactions.iter().chain(std::iter::once(&overall)) {
            if row.p95_ms >= sla.p95_ms {
                breaches.push(format!("{} p95 {:.1} ms is not under {} ms", row.name, row.p95_ms, sla.p95_ms));
            }
        }
        if error_rate >= sla.max_error_rate {
            breaches.push(format!(
                "error rate {:.3} % is not under {:.3} % ({} throttled with 429, {} platform failures: 5xx or no \
                 answer, {} other refusals)",
                error_rate * 100.0,
                sla.max_error_rate * 100.0,
                overall.throttled,
                overall.failed,
                overall.refused
            ));
        }
        Summary {
            target: run.target,
            users: run.users,
            duration_secs: run.duration_secs,
            requests,
            requests_per_sec: if run.duration_secs > 0.0 { requests as f64 / run.duration_secs } else { 0.0 },
            error_rate,
            overall,
            transactions,
            tenants,
            sign_ins,
            limits: run.preflight,
            cache_hit_rate: run.cache_hit_rate,
            gateway: run.gateway,
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
            "# Load test: {}\n\n{} users in {} tenants against `{}` for {:.0} s: {} requests, {:.1} requests/s, error rate \
             {:.3} %.\n\n",
            if self.passed() { "SLA met" } else { "SLA breached" },
            self.users,
            self.tenants.len(),
            self.target,
            self.duration_secs,
            self.requests,
            self.requests_per_sec,
            self.error_rate * 100.0
        );
        text.push_str(
            "| transaction | requests | errors | of which 429 | 5xx or no answer | other | p50 ms | p95 ms | p99 ms | max ms |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for row in self.transactions.iter().chain(std::iter::once(&self.overall)) {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
                row.name,
                row.requests,
                row.errors,
                row.throttled,
                row.failed,
                row.refused,
                row.p50_ms,
                row.p95_ms,
                row.p99_ms,
                row.max_ms
            );
        }
        let overall = &self.overall;
        if overall.errors > 0 {
            let _ = writeln!(
                text,
                "\nErrors: {} — {:.1} % throttling (429), {:.1} % the platform failing (5xx or no answer), {:.1} % other \
                 refusals; by status (0: no answer): {:?}.",
                overall.errors,
                share(overall.throttled, overall.errors),
                share(overall.failed, overall.errors),
                share(overall.refused, overall.errors),
                overall.error_statuses
            );
        }
        let sign_ins = &self.sign_ins;
        let _ = writeln!(
            text,
            "\nSign-ins (one token per {}): {} answered, {} throttled with 429 and retried after Retry-After ({:.1} s of \
             waiting in all; not errors), {} ended in an error.",
            match sign_ins.token_per {
                TokenPer::User => "user",
                TokenPer::Tenant => "tenant",
            },
            sign_ins.answered,
            sign_ins.throttled_and_retried,
            sign_ins.retry_wait_secs,
            sign_ins.errors
        );
        text.push_str(
            "\n| tenant | users | sign-ins | throttled sign-ins | requests | errors | of which 429 | 5xx or no answer | \
             other | p95 ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for row in &self.tenants {
            let _ = writeln!(
                text,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} |",
                row.tenant,
                row.users,
                row.sign_ins,
                row.throttled_sign_ins,
                row.requests,
                row.errors,
                row.throttled,
                row.failed,
                row.refused,
                row.p95_ms
            );
        }
        text.push_str("\nLimits read before the ramp:\n");
        for limit in &self.limits.limits {
            let _ = writeln!(
                text,
                "- {}: {:.1}/s, burst {} [{}]; expected {:.1}/s ({})",
                limit.limit, limit.allowed_per_sec, limit.burst, limit.source, limit.expected_per_sec, limit.note
            );
        }
        for warning in &self.limits.warnings {
            let _ = writeln!(text, "- warning: {warning}");
        }
        let _ = writeln!(
            text,
            "\nSLA: p95 under {} ms for every transaction and overall, error rate under {} % (429s on the data routes \
             count; sign-in 429s retried after Retry-After do not).",
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

    fn samples(micros: &[u64], status: Option<u16>, errors: u64) -> Samples {
        let mut samples = Samples { micros: micros.to_vec(), ..Samples::default() };
        match crate::scenario::Outcome::of(status) {
            crate::scenario::Outcome::Ok => {}
            crate::scenario::Outcome::Throttled => samples.throttled = errors,
            crate::scenario::Outcome::Failed => samples.failed = errors,
            crate::scenario::Outcome::Refused => samples.refused = errors,
        }
        if errors > 0 {
            samples.statuses.insert(status.unwrap_or(0), errors);
        }
        samples
    }

    fn measured(samples: BTreeMap<(usize, &'static str), Samples>) -> Measured {
        Measured {
            target: "http://gw".into(),
            users: 10,
            duration_secs: 10.0,
            samples,
            tenants: vec!["research-1".into(), "research-2".into()],
            token_per: TokenPer::Tenant,
            preflight: Preflight::default(),
            cache_hit_rate: Some(0.9),
            gateway: None,
            sla: Sla::default(),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank_and_breaches_are_named() {
        let fast: Vec<u64> = (1..=100).map(|ms| ms * 1000).collect();
        let summary = Summary::new(measured(BTreeMap::from([((0, "search"), samples(&fast, Some(200), 0))])));
        assert_eq!((summary.overall.p50_ms, summary.overall.p95_ms, summary.overall.p99_ms), (50.0, 95.0, 99.0));
        assert_eq!(summary.requests_per_sec, 10.0);
        assert!(summary.passed(), "{:?}", summary.breaches);

        let slow: Vec<u64> = (1..=100).map(|ms| ms * 10_000).collect();
        let summary = Summary::new(measured(BTreeMap::from([
            ((0, "search"), samples(&fast, Some(200), 0)),
            ((1, "summary"), samples(&slow, Some(503), 1)),
        ])));
        assert!(!summary.passed());
        assert!(summary.breaches.iter().any(|b| b.starts_with("summary p95 950.0 ms")), "{:?}", summary.breaches);
        assert!(
            summary.breaches.iter().any(|b| b.starts_with("error rate 0.500 %") && b.contains("1 platform failures")),
            "{:?}",
            summary.breaches
        );
        assert!(summary.markdown().contains("SLA breached"));
    }

    #[test]
    fn errors_are_split_per_transaction_and_tenant() {
        let ms: Vec<u64> = vec![1000; 10];
        let mut token = samples(&ms[..1], Some(200), 0);
        token.retried = 3;
        token.retry_wait_ms = 4500;
        let summary = Summary::new(measured(BTreeMap::from([
            ((0, "token"), token),
            ((0, "search"), samples(&ms, Some(429), 2)),
            ((1, "search"), samples(&ms, None, 1)),
            ((1, "document"), samples(&ms, Some(401), 1)),
        ])));
        let search = summary.transactions.iter().find(|t| t.name == "search").expect("a search row");
        assert_eq!((search.requests, search.errors, search.throttled, search.failed), (20, 3, 2, 1));
        assert_eq!((summary.overall.throttled, summary.overall.failed, summary.overall.refused), (2, 1, 1));
        assert_eq!(summary.overall.requests, 31, "retried sign-ins are not requests of the verdict");
        assert_eq!((summary.sign_ins.answered, summary.sign_ins.throttled_and_retried), (1, 3));
        assert_eq!(summary.sign_ins.retry_wait_secs, 4.5);
        let first = &summary.tenants[0];
        assert_eq!((first.users, first.sign_ins, first.throttled_sign_ins, first.errors), (5, 1, 3, 2));
        assert_eq!((summary.tenants[1].failed, summary.tenants[1].refused), (1, 1));
        let text = summary.markdown();
        assert!(text.contains("50.0 % throttling (429), 25.0 % the platform failing"), "{text}");
        assert!(text.contains("3 throttled with 429 and retried"), "{text}");
        assert!(text.contains("| research-2 | 5 | 0 | 0 | 20 | 2 | 0 | 1 | 1 |"), "{text}");
    }

    #[test]
    fn no_requests_is_a_breach() {
        let summary = Summary::new(measured(BTreeMap::new()));
        assert_eq!(summary.breaches[0], "no request was made");
        assert!(summary.breaches[1].starts_with("error rate 100.000 % is not under 0.100 %"), "{:?}", summary.breaches);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let (ticks, rss, peak) = process_sample(std::process::id()).expect("/proc is readable");
        assert!(rss > 0.0 && peak >= rss, "{ticks} {rss} {peak}");
    }
}
