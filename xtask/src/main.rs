//! Developer commands for PAKE. Run through the cargo alias: `cargo xtask <command>`.
//!
//! - `codegen`: lint `openapi/*.yaml` and regenerate `generated/`.
//! - `codegen --check [--since REV]`: regenerate in memory and fail with a diff when
//!   `generated/` is stale, and fail on breaking contract changes since the last release
//!   tag (or `REV`; `HEAD` before the first tag); see `compat.rs`.
//! - `bench gateway [--duration SECS] [--rounds N] [--connections N] [--redis URL]`:
//!   compare the gateway with nginx in front of the same upstream, with wrk, in rounds
//!   that measure every path in turn; writes `target/bench/gateway.md`.
//! - `bench monitoring [--rules N] [--series N] [--memory-series N] [--instances N]
//!   [--check-seconds SECS] [--alerts N] [--rounds N] [--interval SECS]
//!   [--prometheus PATH|none] [--only own|prometheus]`: pushes, scrapes, rule evaluation,
//!   memory per series and active health checks of the monitoring service, then alert
//!   latency, evaluation, CPU per sample and memory side by side with Prometheus; writes
//!   `target/bench/monitoring.md`; see `bench_monitoring.rs`.
//! - `load [--users N] [--hatch-rate N] [--run-time SECS] [--tenants N] [--token-per tenant|user]
//!   [--postgres URL] [--redis URL]`: the SLA run of the research workload through `pake
//!   serve` with its default settings; reports in `target/load/`.
//! - `image [--tag NAME:TAG] [--engine podman|docker|buildah]`: the static `pake` binary
//!   packed into the minimal image of deploy/Containerfile; see `image.rs`.
//! - `cluster [--pake PATH] [--postgres URL] [--redis URL] [--prometheus PATH]
//!   [--hosts netns|loopback]`: two gateways, two registries, monitoring and performance as
//!   separate processes on hosts of their own over one PostgreSQL and Redis, scraped by
//!   Prometheus, and the multi-replica checks; see `cluster.rs`.
//! - `mutants [--service NAME]... [--minutes N] [--test-timeout SECS] [--shard K/N] [--re REGEX]`:
//!   cargo-mutants over the services' domain code with their tests and the conformance
//!   suites; reports in `target/mutants/`; see `mutants.rs`.

mod bench;
mod bench_monitoring;
mod cluster;
mod codegen;
mod compat;
mod contract;
mod docs;
mod image;
mod lint;
mod load;
mod lower;
mod mutants;
mod server;

#[cfg(test)]
mod tests;

use anyhow::{Result, bail};
use std::process::ExitCode;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let root = codegen::repo_root();
    match args.as_slice() {
        ["codegen"] => {
            let written = codegen::write(&root)?;
            println!("generated/ is up to date ({written} file(s) written)");
            Ok(())
        }
        ["codegen", "--check", rest @ ..] => {
            let since = match rest {
                [] => None,
                ["--since", revision] => Some(*revision),
                _ => bail!("usage: cargo xtask codegen --check [--since REV]"),
            };
            let problems = codegen::check(&root)?;
            for problem in &problems {
                eprintln!("{problem}\n");
            }
            let breaking = report_breaking_changes(&root, since)?;
            if !problems.is_empty() {
                bail!(
                    "generated/ is stale ({} file(s)); run `{}` and commit the result",
                    problems.len(),
                    codegen::COMMAND
                )
            }
            if breaking > 0 {
                bail!(
                    "{breaking} breaking contract change(s); keep the contract compatible, or raise the major of its info.version to release them"
                )
            }
            println!("generated/ is up to date");
            Ok(())
        }
        ["bench", "gateway", options @ ..] => bench::gateway(&root, &bench::Options::parse(options)?),
        ["bench", "monitoring", options @ ..] => {
            bench_monitoring::run(&root, &bench_monitoring::Options::parse(options)?)
        }
        ["load", options @ ..] => load::run(&root, &load::Options::parse(options)?),
        ["image", options @ ..] => image::build(&root, &image::Options::parse(options)?),
        ["cluster", options @ ..] => cluster::run(&root, &cluster::Options::parse(options)?),
        ["mutants", options @ ..] => mutants::run(&root, &mutants::Options::parse(options)?),
        _ => bail!(
            "usage: cargo xtask codegen [--check [--since REV]] | {} | {} | {} | {} | {} | {}",
            bench::Options::USAGE,
            bench_monitoring::Options::USAGE,
            load::Options::USAGE,
            image::Options::USAGE,
            cluster::Options::USAGE,
            mutants::Options::USAGE
        ),
    }
}

/// Prints the comparison of the contracts with their baseline; returns how many breaking
/// changes fail the check.
fn report_breaking_changes(root: &std::path::Path, since: Option<&str>) -> Result<usize> {
    let contracts = codegen::load_contracts(root)?;
    let Some(report) = compat::check(root, &contracts, since)? else {
        println!("not a git work tree: breaking changes were not checked");
        return Ok(0);
    };
    println!("breaking changes checked against {}", report.baseline.how);
    for change in &report.allowed {
        println!("  allowed (major version raised): {change}");
    }
    for change in &report.breaking {
        eprintln!("  breaking: {change}");
    }
    Ok(report.breaking.len())
}
