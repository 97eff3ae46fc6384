//! `cargo xtask load`: the 1000-user SLA run on this machine. Starts `pake serve` with its
//! default settings (embedded, or on PostgreSQL and Redis when given; its token limits
//! included: a run that needs a limit raised has found something, not fixed it), runs the
//! `load` binary against it — which starts the demo fleet and sets the workload up through
//! the generated clients — and stops everything. The exit code is the load run's: non-zero on an SLA breach, with
//! the reports written under `target/load/` either way.

use crate::bench::{ChildGuard, build_pake, free_port, http, run_inherited, target_dir, token_secret, wait_until};
use anyhow::{Context, Result, bail};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub users: usize,
    pub hatch_rate: u32,
    pub run_time_secs: u64,
    pub tenants: usize,
    /// `tenant` or `user` (the load binary checks it).
    pub token_per: String,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
}

impl Options {
    pub const USAGE: &'static str = "cargo xtask load [--users N] [--hatch-rate N] [--run-time SECS] [--tenants N] [--token-per tenant|user] \
         [--postgres URL] [--redis URL]";

    pub fn parse(args: &[&str]) -> Result<Options> {
        let mut options = Options {
            users: 1000,
            hatch_rate: 100,
            run_time_secs: 60,
            tenants: 4,
            token_per: "tenant".into(),
            database_url: None,
            redis_url: None,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().with_context(|| format!("{flag} needs a value; usage: {}", Self::USAGE));
            match *flag {
                "--users" => options.users = value?.parse().context("--users takes a number")?,
                "--hatch-rate" => options.hatch_rate = value?.parse().context("--hatch-rate takes a number")?,
                "--run-time" => options.run_time_secs = value?.parse().context("--run-time takes whole seconds")?,
                "--tenants" => options.tenants = value?.parse().context("--tenants takes a number")?,
                "--token-per" => match *value? {
                    who @ ("tenant" | "user") => options.token_per = who.to_string(),
                    other => bail!("--token-per takes tenant or user, not {other}"),
                },
                "--postgres" => options.database_url = Some(value?.to_string()),
                "--redis" => options.redis_url = Some(value?.to_string()),
                _ => bail!("unknown argument {flag}; usage: {}", Self::USAGE),
            }
        }
        if options.users == 0 || options.hatch_rate == 0 || options.run_time_secs == 0 || options.tenants == 0 {
            bail!("--users, --hatch-rate, --run-time and --tenants must be at least 1");
        }
        Ok(options)
    }
}

fn build_load(root: &Path, target: &Path) -> Result<std::path::PathBuf> {
    println!("building load (cargo build --release -p load)");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = run_inherited(
        Command::new(cargo).args(["build", "--release", "-p", "load"]).current_dir(root),
        Duration::from_secs(3600),
    )?;
    if !status.success() {
        bail!("cargo build --release -p load failed ({status})");
    }
    Ok(target.join("release").join("load"))
}

pub fn run(root: &Path, options: &Options) -> Result<()> {
    let target = target_dir(root);
    let pake = build_pake(root, &target)?;
    let load = build_load(root, &target)?;
    let out_dir = target.join("load");
    let data_dir = out_dir.join("pake-data");
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir).with_context(|| format!("removing {}", data_dir.display()))?;
    }
    std::fs::create_dir_all(&data_dir)?;

    let registry = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let admin_id = "pk_load_admin";
    let admin_secret = format!("{}{}", token_secret(), token_secret());
    let log_path = out_dir.join("pake.log");
    let log = std::fs::File::create(&log_path)?;
    let mut command = Command::new(&pake);
    command.arg("serve");
    // The platform's defaults, whatever this shell has set.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PAKE_") {
            command.env_remove(name);
        }
    }
    command
        .env("PAKE_DATA_DIR", &data_dir)
        .env("PAKE_REGISTRY_ADDR", registry.to_string())
        .env("PAKE_GATEWAY_ADDR", gateway.to_string())
        .env("PAKE_PERFORMANCE_ADDR", "127.0.0.1:0")
        .env("PAKE_MONITORING_ADDR", "127.0.0.1:0")
        .env("PAKE_ADMIN_CLIENT_ID", admin_id)
        .env("PAKE_ADMIN_CLIENT_SECRET", &admin_secret)
        .env("PAKE_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let redis_prefix = format!("load-{}:", token_secret());
    let backend = match (&options.database_url, &options.redis_url) {
        (None, None) => "embedded (SQLite, in-process limits and cache)".to_string(),
        (database, redis) => {
            if let Some(url) = database {
                command.env("PAKE_DATABASE_URL", url);
            }
            if let Some(url) = redis {
                command.env("PAKE_REDIS_URL", url).env("PAKE_REDIS_PREFIX", &redis_prefix);
            }
            format!(
                "{}{}",
                if database.is_some() { "PostgreSQL" } else { "SQLite" },
                if redis.is_some() { " and Redis" } else { "" }
            )
        }
    };
    println!("starting pake serve ({backend}; registry {registry}, gateway {gateway}; log in {})", log_path.display());
    let child = command.spawn().with_context(|| format!("starting {}", pake.display()))?;
    let pid = child.id();
    let mut server = ChildGuard { name: "pake serve".into(), child };
    for (addr, path) in [(registry, "/health/ready"), (gateway, "/v1/health/live")] {
        wait_until(Duration::from_secs(30), &format!("GET http://{addr}{path}"), || {
            server.check_running(&log_path)?;
            Ok(http(addr, "GET", path, None, None).is_ok_and(|response| response.status == 200))
        })?;
    }

    let run_time = Duration::from_secs(options.run_time_secs);
    let ramp = Duration::from_secs((options.users as u64).div_ceil(u64::from(options.hatch_rate)));
    let mut command = Command::new(&load);
    command
        .args(["--host", &format!("http://{gateway}"), "--registry", &format!("http://{registry}")])
        .args(["--users", &options.users.to_string(), "--hatch-rate", &options.hatch_rate.to_string()])
        .args(["--tenants", &options.tenants.to_string(), "--token-per", &options.token_per])
        .args(["--run-time", &options.run_time_secs.to_string(), "--gateway-pid", &pid.to_string()])
        .arg("--out-dir")
        .arg(&out_dir)
        // The platform runs with its default token limit, which the load run reads from the
        // gateway: a value of this variable in the calling shell would override it.
        .env_remove("PAKE_TOKEN_REQUESTS_PER_SECOND")
        .env("PAKE_LOAD_ADMIN_CLIENT_ID", admin_id)
        .env("PAKE_LOAD_ADMIN_CLIENT_SECRET", &admin_secret)
        .current_dir(root);
    println!(
        "running {} users in {} tenants (a token per {}; starting {} per second) for {} s after the ramp; load \
         generator, platform and fleet share this machine's cores",
        options.users, options.tenants, options.token_per, options.hatch_rate, options.run_time_secs
    );
    let status = run_inherited(&mut command, run_time + ramp + Duration::from_secs(300))?;
    server.check_running(&log_path)?;
    drop(server);
    if let Some(url) = &options.redis_url {
        // The run's keys in a Redis that may be shared: counters, cache entries, indexes.
        let cleaned = Command::new("sh")
            .args([
                "-c",
                "redis-cli -u \"$1\" --scan --pattern \"$2*\" | xargs -r -n 500 redis-cli -u \"$1\" del >/dev/null",
            ])
            .args(["sh", url, &redis_prefix])
            .status();
        if !cleaned.is_ok_and(|status| status.success()) {
            eprintln!("could not delete the run's keys ({redis_prefix}*) from {url}; they expire within minutes");
        }
    }
    if !status.success() {
        bail!("the load run failed or breached the SLA ({status}); reports in {}", out_dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let defaults = Options::parse(&[]).unwrap();
        assert_eq!((defaults.users, defaults.hatch_rate, defaults.run_time_secs), (1000, 100, 60));
        let parsed = Options::parse(&[
            "--users",
            "50",
            "--run-time",
            "10",
            "--postgres",
            "postgres://x",
            "--redis",
            "redis://y",
        ])
        .unwrap();
        assert_eq!(parsed.users, 50);
        assert_eq!(parsed.database_url.as_deref(), Some("postgres://x"));
        assert_eq!((defaults.tenants, defaults.token_per.as_str()), (4, "tenant"));
        let parsed = Options::parse(&["--tenants", "2", "--token-per", "user"]).unwrap();
        assert_eq!((parsed.tenants, parsed.token_per.as_str()), (2, "user"));
        assert!(Options::parse(&["--token-per", "session"]).is_err());
        assert!(Options::parse(&["--users", "0"]).is_err());
        assert!(Options::parse(&["--threads", "4"]).is_err());
    }
}
