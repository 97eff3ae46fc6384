//! `cargo xtask mutants`: the mutation score of the services' domain code. Runs
//! `cargo-mutants` (crates.io; installed with `cargo install --locked cargo-mutants` when
//! missing) over each chosen service's domain files with that service's own tests and the
//! conformance suites as the test command, within a time budget per service, and writes
//! `target/mutants/<service>/report.md`: killed, surviving, timed out and unviable
//! mutants with the score, and each survivor's location and replacement.
//!
//! A developer command, not part of CI: every mutant is a rebuild and a test run. The
//! mutated copies build into `target/mutants/build` (never the workspace's own target
//! directory), one mutant at a time, so a second run reuses the first run's dependencies.

use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A service and what is mutated in it.
struct Service {
    name: &'static str,
    package: &'static str,
    /// The service's directory under `services/` (its `tests/*.rs` are run).
    dir: &'static str,
    /// The conformance suite of its contract.
    suite: &'static str,
    /// The domain files, relative to the workspace root (globs as cargo-mutants reads them).
    files: &'static [&'static str],
}

const SERVICES: &[Service] = &[
    Service {
        name: "registry",
        package: "pake-registry",
        dir: "registry",
        suite: "mesh_service",
        files: &[
            "services/registry/src/registry.rs",
            "services/registry/src/store.rs",
            "services/registry/src/graph.rs",
            "services/registry/src/model.rs",
            "services/registry/src/api.rs",
        ],
    },
    Service {
        name: "gateway",
        package: "pake-gateway",
        dir: "gateway",
        suite: "gateway_service",
        files: &[
            "services/gateway/src/api.rs",
            "services/gateway/src/policy_store.rs",
            "services/gateway/src/routes.rs",
        ],
    },
    Service {
        name: "monitoring",
        package: "pake-monitoring",
        dir: "monitoring",
        suite: "monitoring_service",
        files: &["services/monitoring/src/**/*.rs"],
    },
    Service {
        name: "performance",
        package: "pake-performance",
        dir: "performance",
        suite: "performance_service",
        files: &["services/performance/src/**/*.rs"],
    },
];

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Services by name; all of them when empty.
    pub services: Vec<String>,
    /// Wall-clock budget per service; the run stops there and reports what it reached.
    pub minutes: u64,
    /// The longest one mutant's tests may run before it counts as a timeout.
    pub test_timeout_secs: u64,
    /// `K/N`: only the K-th of N shards of the mutants (to split a run over machines).
    pub shard: Option<String>,
    /// Only mutants whose name matches this regular expression.
    pub matching: Option<String>,
}

impl Options {
    pub const USAGE: &'static str = "cargo xtask mutants [--service registry|gateway|monitoring|performance]... \
         [--minutes N] [--test-timeout SECS] [--shard K/N] [--re REGEX]";

    pub fn parse(args: &[&str]) -> Result<Options> {
        let mut options =
            Options { services: Vec::new(), minutes: 60, test_timeout_secs: 600, shard: None, matching: None };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().with_context(|| format!("{flag} needs a value; usage: {}", Self::USAGE));
            match *flag {
                "--service" => {
                    let name = *value?;
                    if !SERVICES.iter().any(|s| s.name == name) {
                        bail!("unknown service {name}; usage: {}", Self::USAGE);
                    }
                    options.services.push(name.to_string());
                }
                "--minutes" => options.minutes = value?.parse().context("--minutes takes whole minutes")?,
                "--test-timeout" => {
                    options.test_timeout_secs = value?.parse().context("--test-timeout takes whole seconds")?
                }
                "--shard" => options.shard = Some(value?.to_string()),
                "--re" => options.matching = Some(value?.to_string()),
                _ => bail!("unknown argument {flag}; usage: {}", Self::USAGE),
            }
        }
        if options.minutes == 0 || options.test_timeout_secs == 0 {
            bail!("--minutes and --test-timeout must be at least 1");
        }
        Ok(options)
    }
}

/// The mutants of one run, by outcome, as cargo-mutants lists them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcomes {
    pub caught: Vec<String>,
    pub missed: Vec<String>,
    pub timeout: Vec<String>,
    pub unviable: Vec<String>,
}

impl Outcomes {
    /// Reads `caught.txt`, `missed.txt`, `timeout.txt` and `unviable.txt` from a
    /// `mutants.out` directory (files cargo-mutants appends to as it goes, so a run stopped
    /// by the budget still has them).
    pub fn read(dir: &Path) -> Outcomes {
        let lines = |name: &str| -> Vec<String> {
            std::fs::read_to_string(dir.join(name))
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        };
        Outcomes {
            caught: lines("caught.txt"),
            missed: lines("missed.txt"),
            timeout: lines("timeout.txt"),
            unviable: lines("unviable.txt"),
        }
    }

    /// Viable mutants (built, then tested).
    pub fn viable(&self) -> usize {
        self.caught.len() + self.missed.len() + self.timeout.len()
    }

    /// Killed share of the viable mutants, in percent: a mutant whose tests time out is
    /// killed (the run would not pass), one whose tests pass survived.
    pub fn score(&self) -> Option<f64> {
        let viable = self.viable();
        (viable > 0).then(|| 100.0 * (self.caught.len() + self.timeout.len()) as f64 / viable as f64)
    }

    pub fn report(&self, service: &str, stopped_by_budget: bool, elapsed: Duration) -> String {
        let mut out = format!("# Mutation score: {service}\n\n");
        let score = self.score().map_or("n/a".to_string(), |s| format!("{s:.1} %"));
        let _ = writeln!(
            out,
            "killed {} (caught {}, timed out {}), survived {}, unviable {}; score {score} of {} viable mutants; {} s{}\n",
            self.caught.len() + self.timeout.len(),
            self.caught.len(),
            self.timeout.len(),
            self.missed.len(),
            self.unviable.len(),
            self.viable(),
            elapsed.as_secs(),
            if stopped_by_budget { " (stopped by the time budget: a partial run)" } else { "" },
        );
        if !self.missed.is_empty() {
            out.push_str("## Survivors (each needs a test or a one-line reason)\n\n");
            for mutant in &self.missed {
                let _ = writeln!(out, "- {mutant}");
            }
            out.push('\n');
        }
        if !self.timeout.is_empty() {
            out.push_str("## Timed out\n\n");
            for mutant in &self.timeout {
                let _ = writeln!(out, "- {mutant}");
            }
        }
        out
    }
}

/// The integration test targets in a `tests/` directory (one per top-level `.rs` file).
fn integration_tests(dir: &Path) -> Result<Vec<String>> {
    let mut tests = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(tests) };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            tests.push(stem.to_string());
        }
    }
    tests.sort();
    Ok(tests)
}

fn ensure_installed(cargo: &std::ffi::OsStr) -> Result<()> {
    let found = Command::new(cargo)
        .args(["mutants", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Ok(());
    }
    println!("cargo-mutants is missing: cargo install --locked cargo-mutants");
    let status = Command::new(cargo).args(["install", "--locked", "cargo-mutants"]).status()?;
    if !status.success() {
        bail!("cargo install --locked cargo-mutants failed ({status})");
    }
    Ok(())
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    ensure_installed(&cargo)?;
    let chosen: Vec<&Service> = SERVICES
        .iter()
        .filter(|s| options.services.is_empty() || options.services.iter().any(|name| name == s.name))
        .collect();
    let target = crate::bench::target_dir(root);
    let mut summary = Vec::new();
    for service in chosen {
        let out_dir: PathBuf = target.join("mutants").join(service.name);
        std::fs::create_dir_all(&out_dir)?;
        // The test command: the service's unit tests, its integration tests and its
        // contract's conformance suite (not the engine's own tests, which no service code
        // can fail).
        let mut tests = vec!["--lib".to_string(), "--test".to_string(), service.suite.to_string()];
        for test in integration_tests(&root.join("services").join(service.dir).join("tests"))? {
            tests.extend(["--test".to_string(), test]);
        }
        // The baseline, here rather than in cargo-mutants (whose baseline runs only the
        // mutated package's tests, where the conformance suite is not): a red suite would
        // count every mutant as killed.
        println!("{}: baseline: cargo test -p {} -p conformance {}", service.name, service.package, tests.join(" "));
        let baseline = Command::new(&cargo)
            .current_dir(root)
            .args(["test", "-p", service.package, "-p", "conformance"])
            .args(&tests)
            .status()
            .context("cargo test starts")?;
        if !baseline.success() {
            bail!("{}: the tests fail without any mutant ({baseline}); fix them first", service.name);
        }
        let mut command = Command::new(&cargo);
        command
            .current_dir(root)
            .args(["mutants", "--package", service.package, "--baseline", "skip"])
            .args(["--test-package", &format!("{},conformance", service.package), "--jobs", "1", "--no-shuffle"])
            .arg("--timeout")
            .arg(options.test_timeout_secs.to_string())
            .arg("--output")
            .arg(&out_dir)
            .env("CARGO_TARGET_DIR", target.join("mutants").join("build"))
            // Each mutant's test run makes its own databases; the suites' own defaults hold.
            .process_group(0);
        for file in service.files {
            command.args(["--file", file]);
        }
        if let Some(shard) = &options.shard {
            // Every k-th mutant, so that a shard samples every file rather than the first few
            // functions of one.
            command.args(["--shard", shard, "--sharding", "round-robin"]);
        }
        if let Some(matching) = &options.matching {
            command.args(["--re", matching]);
        }
        command.arg("--").args(&tests);
        println!(
            "{}: cargo mutants over {} for at most {} min",
            service.name,
            service.files.join(", "),
            options.minutes
        );
        let started = Instant::now();
        let mut child = command.spawn().context("cargo mutants starts")?;
        let budget = Duration::from_secs(options.minutes * 60);
        let mut stopped_by_budget = false;
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if started.elapsed() >= budget {
                stopped_by_budget = true;
                // The whole group: cargo-mutants, its cargo and the tests it started.
                let _ = Command::new("kill").args(["-TERM", &format!("-{}", child.id())]).status();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        let outcomes = Outcomes::read(&out_dir.join("mutants.out"));
        let report = outcomes.report(service.name, stopped_by_budget, started.elapsed());
        std::fs::write(out_dir.join("report.md"), &report)?;
        println!("{report}");
        println!("written to {}", out_dir.join("report.md").display());
        summary.push(format!(
            "{}: {} viable, score {}",
            service.name,
            outcomes.viable(),
            outcomes.score().map_or("n/a".to_string(), |s| format!("{s:.1} %"))
        ));
    }
    println!("{}", summary.join("\n"));
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn options_parse_and_refuse_unknown_services() {
        let options = Options::parse(&["--service", "registry", "--minutes", "30"]).expect("valid");
        assert_eq!(options.services, vec!["registry".to_string()]);
        assert_eq!(options.minutes, 30);
        assert!(Options::parse(&["--service", "nope"]).is_err());
        assert!(Options::parse(&["--minutes", "0"]).is_err());
        assert!(Options::parse(&["--minutes"]).is_err());
    }

    #[test]
    fn the_score_counts_timeouts_as_killed_and_leaves_unviable_out() {
        let dir = std::env::temp_dir().join(format!("pake-mutants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("caught.txt"), "a.rs:1:1: replace f -> bool with true\nb\nc\n").expect("write");
        std::fs::write(dir.join("missed.txt"), "d.rs:2:3: replace g with ()\n").expect("write");
        std::fs::write(dir.join("timeout.txt"), "e\n").expect("write");
        std::fs::write(dir.join("unviable.txt"), "f\ng\n").expect("write");
        let outcomes = Outcomes::read(&dir);
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(outcomes.viable(), 5);
        assert_eq!(outcomes.score(), Some(80.0));
        let report = outcomes.report("registry", true, Duration::from_secs(9));
        assert!(report.contains("survived 1"), "{report}");
        assert!(report.contains("- d.rs:2:3: replace g with ()"), "{report}");
        assert!(report.contains("partial run"), "{report}");
        assert_eq!(Outcomes::read(Path::new("/nonexistent")).score(), None);
    }
}
