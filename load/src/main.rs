//! `load`: runs the research workload against a running PAKE deployment and exits non-zero
//! when the SLA is breached (the reports are written either way).
//!
//! ```sh
//! PAKE_LOAD_ADMIN_CLIENT_ID=… PAKE_LOAD_ADMIN_CLIENT_SECRET=… \
//!   cargo run --release -p load -- --host https://gateway.staging --registry https://registry.staging
//! ```

use anyhow::{Result, bail};
use clap::Parser;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "load", about = "The PAKE research workload through the gateway, with the SLA verdict")]
struct Cli {
    /// The gateway.
    #[arg(long, env = "PAKE_LOAD_HOST", default_value = "http://127.0.0.1:8080")]
    host: String,
    /// The registry API.
    #[arg(long, env = "PAKE_LOAD_REGISTRY", default_value = "http://127.0.0.1:8000")]
    registry: String,
    /// An admin token (gateway:admin, mesh:read, mesh:write)…
    #[arg(long, env = "PAKE_LOAD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// …or an admin API client's id and secret.
    #[arg(long, env = "PAKE_LOAD_ADMIN_CLIENT_ID")]
    admin_client_id: Option<String>,
    #[arg(long, env = "PAKE_LOAD_ADMIN_CLIENT_SECRET", hide_env_values = true)]
    admin_client_secret: Option<String>,
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// Tenants (API clients) the users are dealt to in turn.
    #[arg(long, default_value_t = 4)]
    tenants: usize,
    /// Who signs in: each user, or each tenant once for its users (as a tenant's backend
    /// would; every request still carries the token).
    #[arg(long, value_enum, default_value_t = load::scenario::TokenPer::Tenant)]
    token_per: load::scenario::TokenPer,
    /// The gateway's token requests per second per address, for the check before the ramp:
    /// overrides the limit the gateway publishes on its token endpoint (read when this is
    /// not given), e.g. for a gateway behind a proxy that drops its RateLimit fields.
    #[arg(long, env = "PAKE_TOKEN_REQUESTS_PER_SECOND")]
    token_rate: Option<u64>,
    /// Users started per second.
    #[arg(long, default_value_t = 100)]
    hatch_rate: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 60)]
    run_time: u64,
    /// Think time between a user's transactions, in milliseconds: least and most.
    #[arg(long, default_value_t = 1000)]
    think_min_ms: u64,
    #[arg(long, default_value_t = 3000)]
    think_max_ms: u64,
    /// Demo upstream service time, jitter (ms) and error rate (0 to 1).
    #[arg(long, default_value_t = 20)]
    upstream_latency_ms: u64,
    #[arg(long, default_value_t = 30)]
    upstream_jitter_ms: u64,
    #[arg(long, default_value_t = 0.0)]
    upstream_error_rate: f64,
    /// The address a remote platform reaches this machine's demo fleet at.
    #[arg(long)]
    advertise: Option<std::net::IpAddr>,
    /// The gateway's process id, when it runs on this machine (CPU and memory are reported).
    #[arg(long)]
    gateway_pid: Option<u32>,
    #[arg(long, default_value = "target/load")]
    out_dir: std::path::PathBuf,
    /// SLA: p95 in milliseconds and the largest error rate (0.001 = 0.1 %).
    #[arg(long, default_value_t = 500.0)]
    sla_p95_ms: f64,
    #[arg(long, default_value_t = 0.001)]
    sla_error_rate: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let admin = match (cli.admin_token, cli.admin_client_id, cli.admin_client_secret) {
        (Some(token), _, _) => load::Admin::Token(token),
        (None, Some(id), Some(secret)) => load::Admin::Client { id, secret },
        _ => bail!(
            "give an admin token (PAKE_LOAD_ADMIN_TOKEN) or an admin client (PAKE_LOAD_ADMIN_CLIENT_ID and _SECRET)"
        ),
    };
    let mut options = load::Options::new(&cli.host, &cli.registry, admin);
    options.users = cli.users;
    options.tenants = cli.tenants.max(1);
    options.token_per = cli.token_per;
    options.token_rate = cli.token_rate;
    options.hatch_rate = cli.hatch_rate;
    options.run_time = Duration::from_secs(cli.run_time);
    options.think =
        (Duration::from_millis(cli.think_min_ms), Duration::from_millis(cli.think_max_ms.max(cli.think_min_ms)));
    options.fleet = load::fleet::Behaviour {
        latency: Duration::from_millis(cli.upstream_latency_ms),
        jitter: Duration::from_millis(cli.upstream_jitter_ms),
        error_rate: cli.upstream_error_rate.clamp(0.0, 1.0),
    };
    options.advertise = cli.advertise;
    options.gateway_pid = cli.gateway_pid;
    options.out_dir = cli.out_dir;
    options.sla = load::report::Sla { p95_ms: cli.sla_p95_ms, max_error_rate: cli.sla_error_rate };
    let summary = load::run(&options).await?;
    if !summary.passed() {
        eprintln!("SLA breached: {}", summary.breaches.join("; "));
        std::process::exit(1);
    }
    Ok(())
}
