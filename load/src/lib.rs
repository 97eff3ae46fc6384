//! PAKE's load tests: the research workload through the gateway with goose, against a
//! demo fleet of upstreams set up through the generated clients, judged against the SLA
//! (1000 concurrent users, p95 under 500 ms, error rate under 0.1 %).
//!
//! [`run`] does it all: starts the fleet, sets the workload up on the platform
//! ([`setup`]), reads the limits the run will meet and warns about those it cannot pass
//! ([`limits`]), runs goose ([`scenario`]), and returns the verdict ([`report`]) with the
//! reports written under the output directory.
//!
//! [`bench`] is the same load generator as a library: one request repeated by many users
//! against a base URL, every answer told to the caller as it comes (the performance
//! service's benchmarks).

pub mod bench;
pub mod fleet;
pub mod limits;
pub mod report;
pub mod scenario;
pub mod setup;
pub mod zipf;

use anyhow::{Context, Result, anyhow};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Who may set the workload up on the platform.
#[derive(Clone, Debug)]
pub enum Admin {
    /// A token with `gateway:admin`, `mesh:read` and `mesh:write`.
    Token(String),
    /// An admin API client's credentials, exchanged at the token endpoint.
    Client { id: String, secret: String },
}

/// One load run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The gateway, e.g. `http://127.0.0.1:8080`.
    pub host: String,
    /// The registry's API, e.g. `http://127.0.0.1:8000`.
    pub registry: String,
    pub admin: Admin,
    pub users: usize,
    /// Tenants (API clients) the users are dealt to in turn.
    pub tenants: usize,
    /// Who signs in: each user, or each tenant once for its users.
    pub token_per: scenario::TokenPer,
    /// The gateway's token requests per second per address, when given: overrides the
    /// limit the gateway publishes ([`limits::TokenLimit`]).
    pub token_rate: Option<u64>,
    /// Users started per second.
    pub hatch_rate: u32,
    pub run_time: Duration,
    /// Think time between a user's transactions, (least, most).
    pub think: (Duration, Duration),
    pub fleet: fleet::Behaviour,
    /// The address the platform reaches the fleet at, when it is not this machine's
    /// loopback (a staging deployment); the fleet then listens on every interface.
    pub advertise: Option<IpAddr>,
    /// Where the reports go.
    pub out_dir: PathBuf,
    /// The gateway process, when it runs here: its CPU and memory are reported.
    pub gateway_pid: Option<u32>,
    pub sla: report::Sla,
}

impl Options {
    /// The defaults: 1000 users in 4 tenants sharing a token per tenant, started at 100
    /// per second, 60 s, 1–3 s of think time, against the token limit the gateway publishes.
    pub fn new(host: &str, registry: &str, admin: Admin) -> Options {
        Options {
            host: host.trim_end_matches('/').to_string(),
            registry: registry.trim_end_matches('/').to_string(),
            admin,
            users: 1000,
            tenants: 4,
            token_per: scenario::TokenPer::Tenant,
            token_rate: None,
            hatch_rate: 100,
            run_time: Duration::from_secs(60),
            think: (Duration::from_secs(1), Duration::from_secs(3)),
            fleet: fleet::Behaviour::default(),
            advertise: None,
            out_dir: PathBuf::from("target/load"),
            gateway_pid: None,
            sla: report::Sla::default(),
        }
    }
}

fn socket_addr(url: &str) -> Result<SocketAddr> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("{url} is not a URL"))?;
    let host = parsed.host_str().ok_or_else(|| anyhow!("{url} names no host"))?;
    let port = parsed.port_or_known_default().ok_or_else(|| anyhow!("{url} names no port"))?;
    (host, port).to_socket_addrs()?.next().ok_or_else(|| anyhow!("{host} does not resolve"))
}

/// Runs the load test and returns its verdict (already printed and written).
pub async fn run(options: &Options) -> Result<report::Summary> {
    let listen: IpAddr = if options.advertise.is_some() { [0, 0, 0, 0].into() } else { [127, 0, 0, 1].into() };
    let fleet = fleet::Fleet::start(listen, options.fleet).await.context("starting the demo fleet")?;
    // The token limit comes with the answer to the set-up's token request, or from a probe.
    let (token, published) = match &options.admin {
        Admin::Token(token) => (token.clone(), limits::TokenLimit::probe(&options.host).await?),
        Admin::Client { id, secret } => setup::admin_token(&options.host, id, secret).await?,
    };
    let token_limit = limits::TokenLimit::resolve(published, options.token_rate);
    let platform = setup::Platform::new(&options.host, &options.registry, socket_addr(&options.registry)?, &token)?;
    let credentials =
        platform.set_up(&fleet, options.advertise, options.tenants).await.context("setting the workload up")?;
    let tenants: Vec<String> = credentials.iter().map(|c| c.tenant.clone()).collect();
    let workload = limits::Workload {
        users: options.users,
        hatch_rate: options.hatch_rate,
        run_time: options.run_time,
        think: options.think,
        tenants: tenants.len(),
        token_per: options.token_per,
    };
    let policies = limits::read(&platform, &tenants).await.context("reading the platform's rate-limit policies")?;
    let preflight = limits::check(&workload, &token_limit, &policies);
    preflight.print();
    // Throttled sign-ins are retried until the run is over, not past it.
    let patience = Duration::from_secs_f64(workload.ramp_secs()) + options.run_time;
    let state = scenario::install(credentials, options.token_per, patience);
    let cache_before = platform.cache_stats().await.ok();
    let cpu_before = options.gateway_pid.and_then(report::process_sample);

    std::fs::create_dir_all(&options.out_dir).with_context(|| format!("creating {}", options.out_dir.display()))?;
    let out = |name: &str| options.out_dir.join(name).display().to_string();
    let args: Vec<String> = vec![
        "--host".into(),
        options.host.clone(),
        "--users".into(),
        options.users.to_string(),
        "--increase-rate".into(),
        options.hatch_rate.to_string(),
        "--run-time".into(),
        format!("{}s", options.run_time.as_secs().max(1)),
        "--no-reset-metrics".into(),
        "--no-telnet".into(),
        "--report-file".into(),
        out("report.html"),
        "--report-file".into(),
        out("report.json"),
        "--report-file".into(),
        out("report.md"),
    ];
    let configuration = goose::config::GooseConfiguration::parse_args_default(&args)
        .map_err(|e| anyhow!("configuring goose: {e:?}"))?;
    let started = Instant::now();
    let metrics = goose::GooseAttack::initialize_with_config(configuration)
        .map_err(|e| anyhow!("starting goose: {e}"))?
        .register_scenario(scenario::researcher(options.think).map_err(|e| anyhow!("{e}"))?)
        .execute()
        .await
        .map_err(|e| anyhow!("running goose: {e}"))?;
    let elapsed = started.elapsed().as_secs_f64();
    let duration = if metrics.duration > 0 { metrics.duration as f64 } else { elapsed };

    let gateway = match (options.gateway_pid, cpu_before) {
        (Some(pid), Some((before, _, _))) => report::process_sample(pid).map(|(after, rss, peak)| {
            // Linux counts CPU time in clock ticks of 1/100 s.
            let cpu_seconds = after.saturating_sub(before) as f64 / 100.0;
            report::ProcessUsage { pid, cpu_cores: cpu_seconds / elapsed.max(0.001), rss_mib: rss, peak_rss_mib: peak }
        }),
        _ => None,
    };
    let cache_after = platform.cache_stats().await.ok();
    let cache_hit_rate = match (cache_before, cache_after) {
        (Some(before), Some(after)) if after.lookups > before.lookups => {
            Some((after.hits - before.hits) as f64 / (after.lookups - before.lookups) as f64)
        }
        (_, Some(after)) => Some(after.hit_rate),
        _ => None,
    };
    let summary = report::Summary::new(report::Measured {
        target: options.host.clone(),
        users: options.users,
        duration_secs: duration,
        samples: state.recorder.snapshot(),
        tenants,
        token_per: options.token_per,
        preflight,
        cache_hit_rate,
        gateway,
        sla: options.sla,
    });
    println!("\n{}", summary.markdown());
    summary.write(&options.out_dir).with_context(|| format!("writing the summary to {}", options.out_dir.display()))?;
    println!("reports: {}/{{report.html,report.json,report.md,summary.json,summary.md}}", options.out_dir.display());
    drop(fleet);
    Ok(summary)
}
