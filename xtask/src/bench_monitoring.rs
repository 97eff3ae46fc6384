//! `cargo xtask bench monitoring`: the monitoring service's numbers, printed as a table,
//! then side by side with Prometheus's, and written to `target/bench/monitoring.md`.
//!
//! The measuring code is the `monitoring` bench target of `pake-monitoring`
//! (`services/monitoring/benches/monitoring.rs`), which reaches the service's own types in
//! process: pushed samples per second in process and through `pushMetricSamples` over
//! HTTP, scraped samples per second, one evaluation round of N rules over M series at
//! several sizes, memory per series, and 5,000 instances health-checked at a 1 s interval
//! against real HTTP endpoints. Then (`benches/monitoring/compare.rs`) one synthetic
//! exporter is scraped by Debian's Prometheus and by our service, with the same rules as
//! PromQL and as `AlertRuleSpec`s: alert latency (p50/p99 over 100 alerts), the
//! evaluation round and CPU per sample of 1,000 rules over 100,000 series, and memory per
//! active series with 720 samples, ours and Prometheus's with their ratio and whether the
//! issue's goal is met. This command installs Prometheus from Debian's `prometheus`
//! package when it is missing (as `bench gateway` installs nginx and wrk), builds the
//! bench with the release profile (`cargo bench`) and hands it the sizes. It is a
//! benchmark, not a test: it fails only when a step fails.

use crate::bench::{apt, find_program, run_inherited, target_dir};
use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// What `cargo xtask bench monitoring` accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// The largest evaluation point: rules, and series (a tenth of each is measured too);
    /// the comparison with Prometheus evaluates these.
    pub rules: usize,
    pub series: usize,
    /// Series of the memory measurements.
    pub memory_series: usize,
    /// Health-checked instances, and the seconds their checks are counted over.
    pub instances: usize,
    pub check_seconds: u64,
    /// Alerts of the latency comparison.
    pub alerts: usize,
    /// Evaluation rounds compared, and the scrape and evaluation interval of that comparison.
    pub rounds: usize,
    pub interval_seconds: u64,
    /// The Prometheus program; `none` measures our side only; by default `prometheus`,
    /// installed from Debian's package when it is missing.
    pub prometheus: Option<String>,
    /// `own` (the service's numbers only) or `prometheus` (the comparison only).
    pub only: Option<String>,
}

impl Options {
    pub const USAGE: &'static str = "cargo xtask bench monitoring [--rules N] [--series N] [--memory-series N] \
                                     [--instances N] [--check-seconds SECS] [--alerts N] [--rounds N] \
                                     [--interval SECS] [--prometheus PATH|none] [--only own|prometheus]";

    pub fn parse(args: &[&str]) -> Result<Options> {
        let mut options = Options {
            rules: 1_000,
            series: 100_000,
            memory_series: 20_000,
            instances: 5_000,
            check_seconds: 10,
            alerts: 100,
            rounds: 6,
            interval_seconds: 5,
            prometheus: None,
            only: None,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().with_context(|| format!("{flag} needs a value; usage: {}", Self::USAGE))?;
            let number = || value.replace('_', "").parse::<usize>().with_context(|| format!("{flag} takes a number"));
            match *flag {
                "--rules" => options.rules = number()?,
                "--series" => options.series = number()?,
                "--memory-series" => options.memory_series = number()?,
                "--instances" => options.instances = number()?,
                "--check-seconds" => options.check_seconds = number()? as u64,
                "--alerts" => options.alerts = number()?,
                "--rounds" => options.rounds = number()?,
                "--interval" => options.interval_seconds = number()? as u64,
                "--prometheus" => options.prometheus = Some(value.to_string()),
                "--only" if ["own", "prometheus"].contains(value) => options.only = Some(value.to_string()),
                "--only" => bail!("--only takes own or prometheus"),
                _ => bail!("unknown argument {flag}; usage: {}", Self::USAGE),
            }
        }
        if options.rules < 10 || options.series < 10 || options.memory_series == 0 || options.instances == 0 {
            bail!("--rules and --series must be at least 10 (a tenth is measured too), the others at least 1");
        }
        if options.check_seconds < 2 {
            bail!("--check-seconds must be at least 2 (an interval needs two checks)");
        }
        if options.alerts == 0 || options.rounds == 0 || options.interval_seconds == 0 {
            bail!("--alerts, --rounds and --interval must be at least 1");
        }
        Ok(options)
    }
}

/// The Prometheus program the comparison runs: the one named, or `prometheus` on PATH,
/// installed from Debian's package when it is missing. None when told `none` or when only
/// our own numbers are measured.
fn prometheus(options: &Options) -> Result<Option<String>> {
    if options.only.as_deref() == Some("own") {
        return Ok(None);
    }
    match options.prometheus.as_deref() {
        Some("none") => return Ok(None),
        Some(program) => return Ok(Some(program.to_string())),
        None => {}
    }
    if let Some(found) = find_program("prometheus") {
        return Ok(Some(found.display().to_string()));
    }
    if !apt(&["update"])? || !apt(&["install", "-y", "--no-install-recommends", "prometheus"])? {
        bail!("apt-get could not install prometheus; name one with --prometheus PATH, or run with --prometheus none");
    }
    let found = find_program("prometheus").context("prometheus is not on PATH after installing it")?;
    Ok(Some(found.display().to_string()))
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    let bench_dir = target_dir(root).join("bench");
    std::fs::create_dir_all(&bench_dir).with_context(|| format!("creating {}", bench_dir.display()))?;
    let out = bench_dir.join("monitoring.md");
    let prometheus = prometheus(options)?;
    println!("building and running the monitoring bench (cargo bench -p pake-monitoring --bench monitoring)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["bench", "-p", "pake-monitoring", "--bench", "monitoring"])
        .current_dir(root)
        .env("PAKE_BENCH_RULES", options.rules.to_string())
        .env("PAKE_BENCH_SERIES", options.series.to_string())
        .env("PAKE_BENCH_MEMORY_SERIES", options.memory_series.to_string())
        .env("PAKE_BENCH_INSTANCES", options.instances.to_string())
        .env("PAKE_BENCH_CHECK_SECONDS", options.check_seconds.to_string())
        .env("PAKE_BENCH_ALERTS", options.alerts.to_string())
        .env("PAKE_BENCH_ROUNDS", options.rounds.to_string())
        .env("PAKE_BENCH_INTERVAL_SECONDS", options.interval_seconds.to_string())
        .env("PAKE_BENCH_PROMETHEUS", prometheus.as_deref().unwrap_or("none"))
        .env("PAKE_BENCH_ONLY", options.only.as_deref().unwrap_or("all"))
        .env("PAKE_BENCH_OUT", &out);
    let status = run_inherited(&mut command, Duration::from_secs(3600))?;
    if !status.success() {
        bail!("the monitoring bench failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_refuse_what_cannot_be_measured() {
        let options = Options::parse(&["--rules", "100", "--series", "10_000", "--instances", "50"]).unwrap();
        assert_eq!((options.rules, options.series, options.instances), (100, 10_000, 50));
        assert_eq!(options.check_seconds, 10);
        assert!(Options::parse(&["--rules", "5"]).is_err());
        assert!(Options::parse(&["--check-seconds", "1"]).is_err());
        assert!(Options::parse(&["--series"]).is_err());
        assert!(Options::parse(&["--colour", "red"]).is_err());
        let options = Options::parse(&["--alerts", "20", "--prometheus", "none", "--only", "prometheus"]).unwrap();
        assert_eq!((options.alerts, options.rounds, options.interval_seconds), (20, 6, 5));
        assert_eq!((options.prometheus.as_deref(), options.only.as_deref()), (Some("none"), Some("prometheus")));
        assert!(Options::parse(&["--only", "theirs"]).is_err());
        assert!(Options::parse(&["--rounds", "0"]).is_err());
    }
}
