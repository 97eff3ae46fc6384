//! Developer commands for PAKE. Run through the cargo alias: `cargo xtask <command>`.
//!
//! - `codegen`: lint `openapi/*.yaml` and regenerate `generated/`.
//! - `codegen --check`: regenerate in memory and fail with a diff when `generated/` is stale.
//! - `bench gateway [--duration SECS] [--rounds N] [--connections N] [--redis URL]`:
//!   compare the gateway with nginx in front of the same upstream, with wrk, in rounds
//!   that measure every path in turn; writes `target/bench/gateway.md`.
//! - `load [--users N] [--hatch-rate N] [--run-time SECS] [--postgres URL] [--redis URL]`:
//!   the SLA run of the research workload through `pake serve`; reports in `target/load/`.

mod bench;
mod codegen;
mod contract;
mod docs;
mod lint;
mod load;
mod lower;
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
        ["codegen", "--check"] => {
            let problems = codegen::check(&root)?;
            if problems.is_empty() {
                println!("generated/ is up to date");
                return Ok(());
            }
            for problem in &problems {
                eprintln!("{problem}\n");
            }
            bail!("generated/ is stale ({} file(s)); run `{}` and commit the result", problems.len(), codegen::COMMAND)
        }
        ["bench", "gateway", options @ ..] => bench::gateway(&root, &bench::Options::parse(options)?),
        ["load", options @ ..] => load::run(&root, &load::Options::parse(options)?),
        _ => bail!("usage: cargo xtask codegen [--check] | {} | {}", bench::Options::USAGE, load::Options::USAGE),
    }
}
