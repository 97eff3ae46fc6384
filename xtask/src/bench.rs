//! `cargo xtask bench gateway`: compares our gateway with nginx as a keep-alive reverse
//! proxy, both in front of the same fixed upstream, with one load generator (wrk).
//!
//! The paths measured in one run: straight to the upstream, through nginx, and through
//! `pake serve registry gateway` (plain, with a JWT and a rate limit, a cache hit), and the
//! plain path again through a second `pake serve` that also runs the performance service,
//! which takes a sample of every request in process (what the sample feed costs), and
//! through a third that traces every request (ratio 1.0) and exports its spans over
//! OTLP/HTTP to a receiver run here (what tracing costs; the others trace nothing). The
//! command installs wrk and nginx from Debian's packages when
//! they are missing, builds the release binary, sets the gateway up through its real
//! APIs, prints a table with the gateway/nginx ratios and writes it to
//! `target/bench/gateway.md`.
//!
//! The paths are measured in rounds: each round measures every path in turn, for the same
//! time, in an order that rotates from round to round. A slow spell of the machine then
//! falls on all paths of a round rather than on one path, and each ratio is the median of
//! its per-round ratios, which pair measurements taken seconds apart.
//!
//! It is a benchmark, not a test: it fails only when a step fails, never on a ratio.
//! It is not a capacity figure either: wrk, the proxies and the upstream share the
//! machine's cores, so the numbers compare the paths with each other.

use anyhow::{Context, Result, bail};
use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The body the upstream answers, and what a correct proxy must pass through unchanged.
const UPSTREAM_BODY: &str = "hello from upstream\n";
/// wrk threads: one per core of the 2-core machine this benchmark is meant for.
const WRK_THREADS: u32 = 2;
const WARM_UP: Duration = Duration::from_secs(2);
/// How long one request of the set-up (not of the load) may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// Above this share of failed requests a measurement describes errors, not proxying.
const MAX_ERROR_SHARE: f64 = 0.01;

/// What `cargo xtask bench gateway` accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Seconds each path is measured for in each round.
    pub duration_secs: u64,
    pub rounds: u32,
    pub connections: u32,
    /// Idle keep-alive connections whose memory is measured, per server.
    pub idle: u32,
    /// Redis for the gateway's rate limits and L2 cache; without it, both stay in process.
    pub redis: Option<String>,
}

impl Options {
    pub const USAGE: &'static str =
        "cargo xtask bench gateway [--duration SECS] [--rounds N] [--connections N] [--idle N] [--redis URL]";

    pub fn parse(args: &[&str]) -> Result<Options> {
        let mut options = Options { duration_secs: 5, rounds: 3, connections: 64, idle: 10_000, redis: None };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let value = args.next().with_context(|| format!("{flag} needs a value; usage: {}", Self::USAGE));
            match *flag {
                "--duration" => options.duration_secs = value?.parse().context("--duration takes whole seconds")?,
                "--rounds" => options.rounds = value?.parse().context("--rounds takes a number")?,
                "--connections" => options.connections = value?.parse().context("--connections takes a number")?,
                "--idle" => options.idle = value?.parse().context("--idle takes a number")?,
                "--redis" => options.redis = Some(value?.to_string()),
                _ => bail!("unknown argument {flag}; usage: {}", Self::USAGE),
            }
        }
        if options.duration_secs == 0 {
            bail!("--duration must be at least 1 second");
        }
        if options.rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        // wrk refuses fewer connections than threads.
        if options.connections < WRK_THREADS {
            bail!("--connections must be at least {WRK_THREADS} (one per wrk thread)");
        }
        Ok(options)
    }
}

/// Runs the whole benchmark. Direct and nginx numbers are printed even when the gateway
/// part fails; the gateway failure is then the error returned.
pub fn gateway(root: &Path, options: &Options) -> Result<()> {
    let target = target_dir(root);
    let bench_dir = target.join("bench");
    std::fs::create_dir_all(&bench_dir).with_context(|| format!("creating {}", bench_dir.display()))?;
    let tools = Tools::ensure()?;

    // Build before anything listens, so that compiling does not compete with a measurement
    // for the two cores. A failed build is a gateway failure, not a reason to skip nginx.
    let pake_binary = build_pake(root, &target);

    let upstream_port = free_port()?;
    let proxy_port = free_port()?;
    let nginx_dir = bench_dir.join("nginx");
    println!("starting the upstream (nginx) on 127.0.0.1:{upstream_port}");
    let upstream =
        start_nginx(&tools.nginx, &nginx_dir.join("upstream"), &upstream_conf(upstream_port), upstream_port)?;
    println!("starting nginx as a reverse proxy on 127.0.0.1:{proxy_port}");
    let proxy =
        start_nginx(&tools.nginx, &nginx_dir.join("proxy"), &proxy_conf(proxy_port, upstream_port), proxy_port)?;

    let direct_url = format!("http://127.0.0.1:{upstream_port}/hello");
    let nginx_url = format!("http://127.0.0.1:{proxy_port}/hello");
    let mut gateway = pake_binary
        .as_ref()
        .map_err(|error| anyhow::anyhow!("{error:#}"))
        .and_then(|binary| start_gateway(binary, &bench_dir, upstream_port, options, Feed::Off))
        .context("the gateway part failed");
    // The same gateway with the performance service in its process, taking every
    // request's sample: what the sample feed costs.
    let mut fed = match (&gateway, &pake_binary) {
        (Ok(_), Ok(binary)) => start_gateway(binary, &bench_dir, upstream_port, options, Feed::InProcess)
            .context("the gateway with the sample feed failed"),
        _ => Err(anyhow::anyhow!("the gateway part failed")),
    };
    // The same gateway tracing every request, its spans exported to a collector: what
    // tracing costs.
    let collector = OtlpCollector::start()?;
    let mut traced = match (&gateway, &pake_binary) {
        (Ok(_), Ok(binary)) => start_gateway(binary, &bench_dir, upstream_port, options, Feed::Spans(collector.port))
            .context("the traced gateway failed"),
        _ => Err(anyhow::anyhow!("the gateway part failed")),
    };
    let mut paths = vec![
        Target { name: "direct", url: direct_url, header: None, server: Server::Upstream },
        Target { name: "nginx", url: nginx_url, header: None, server: Server::Proxy },
    ];
    if let Ok(setup) = &mut gateway {
        paths.append(&mut setup.paths);
    }
    if let Ok(setup) = &mut fed {
        paths.append(&mut setup.paths);
    }
    if let Ok(setup) = &mut traced {
        paths.append(&mut setup.paths);
    }
    let mut rounds: Vec<Vec<WrkReport>> = vec![Vec::new(); paths.len()];
    for round in 0..options.rounds {
        for index in round_order(paths.len(), round) {
            let path = &paths[index];
            let report = match path.server {
                Server::Upstream => measure(&tools.wrk, path, upstream.child.id(), options, round)?,
                Server::Proxy => measure(&tools.wrk, path, proxy.child.id(), options, round)?,
                Server::Gateway => {
                    let Ok(setup) = &mut gateway else { continue };
                    match setup.measure(&tools.wrk, path, options, round) {
                        Ok(report) => report,
                        // The gateway's remaining measurements are skipped after a failure.
                        Err(error) => {
                            gateway = Err(error.context("the gateway part failed"));
                            continue;
                        }
                    }
                }
                Server::FedGateway => {
                    let Ok(setup) = &mut fed else { continue };
                    match setup.measure(&tools.wrk, path, options, round) {
                        Ok(report) => report,
                        Err(error) => {
                            fed = Err(error.context("the gateway with the sample feed failed"));
                            continue;
                        }
                    }
                }
                Server::TracedGateway => {
                    let Ok(setup) = &mut traced else { continue };
                    match setup.measure(&tools.wrk, path, options, round) {
                        Ok(report) => report,
                        Err(error) => {
                            traced = Err(error.context("the traced gateway failed"));
                            continue;
                        }
                    }
                }
            };
            rounds[index].push(report);
        }
    }
    if let Ok(GatewayBench { rate_limiting: [decisions, trips], .. }) = &gateway
        && *trips > 0.0
    {
        println!(
            "rate limiting: {decisions} decisions in {trips} Redis round trips ({:.1} per round trip)",
            decisions / trips
        );
    }
    let mut rows: Vec<Row> =
        paths.iter().zip(rounds).map(|(path, reports)| Row::measured(path.name, &path.url, reports)).collect();
    if gateway.is_err() {
        rows.retain(|row| !GATEWAY_PATHS.contains(&row.name));
        rows.extend(GATEWAY_PATHS.iter().map(|name| Row::failed(name)));
    }
    // The samples the fed gateway's feed delivered, dropped or failed to deliver.
    let feed = match &fed {
        Ok(setup) => {
            let count = |outcome: &str| metric_sum(setup.addr, &format!("pake_gateway_samples_{outcome}_total"));
            let [delivered, dropped, failed] = ["delivered", "dropped", "failed"].map(count);
            Ok(format!(
                "the sample feed delivered {:.0} request samples to the performance service in process, dropped {:.0}, failed {:.0}",
                delivered.unwrap_or(0.0),
                dropped.unwrap_or(0.0),
                failed.unwrap_or(0.0)
            ))
        }
        Err(error) => {
            rows.retain(|row| row.name != FED_PATH);
            rows.push(Row::failed(FED_PATH));
            Err(format!("{error:#}"))
        }
    };

    // The spans the traced gateway exported, dropped or failed to export, and what the
    // collector received.
    let spans = match &traced {
        Ok(setup) => {
            let count = |name: &str| metric_sum(setup.addr, &format!("pake_gateway_trace_{name}_total")).unwrap_or(0.0);
            let (requests, bytes) = collector.received();
            Ok(format!(
                "the traced gateway exported {:.0} spans, dropped {:.0}, with {:.0} failed exports; the OTLP/HTTP \
                 collector received {requests} export requests ({:.1} MiB of protobuf)",
                count("spans_exported"),
                count("spans_dropped"),
                count("export_failures"),
                bytes as f64 / (1024.0 * 1024.0)
            ))
        }
        Err(error) => {
            rows.retain(|row| row.name != TRACED_PATH);
            rows.push(Row::failed(TRACED_PATH));
            Err(format!("{error:#}"))
        }
    };

    // Memory of idle keep-alive connections, each having made one proxied request: what a
    // server keeps per client between requests.
    let mut idle = Vec::new();
    if options.idle > 0 {
        let proxy_addr = SocketAddr::from(([127, 0, 0, 1], proxy_port));
        idle.push(idle_memory("nginx", proxy.child.id(), proxy_addr, "/hello", options.idle));
        if let Ok(setup) = &gateway {
            idle.push(idle_memory("gateway", setup.server.child.id(), setup.addr, "/v1/bench/hello", options.idle));
        }
    }

    let gateway_error = gateway.as_ref().err().map(|error| format!("{error:#}"));
    let summary =
        Summary { options, tools: &tools, rows: &rows, cores: cores(), gateway_error, idle: &idle, feed, spans };
    println!("\n{}", summary.text());
    let report_path = bench_dir.join("gateway.md");
    std::fs::write(&report_path, summary.markdown()).with_context(|| format!("writing {}", report_path.display()))?;
    println!("written to {}", report_path.display());

    gateway?;
    // A path whose requests failed more than rarely measured its errors, not its proxying.
    let erroneous: Vec<&str> = rows.iter().filter(|row| row.too_many_errors()).map(|row| row.name).collect();
    if !erroneous.is_empty() {
        bail!("more than {}% of the requests failed on: {}", MAX_ERROR_SHARE * 100.0, erroneous.join(", "));
    }
    Ok(())
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` (relative to the working directory,
/// as cargo reads it) or `target/` at the repository root.
pub(crate) fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => std::env::current_dir().map(|cwd| cwd.join(&dir)).unwrap_or_else(|_| PathBuf::from(dir)),
        None => root.join("target"),
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

/// The two external programs, with the versions they report for the written table.
struct Tools {
    nginx: PathBuf,
    wrk: PathBuf,
    nginx_version: String,
    wrk_version: String,
}

impl Tools {
    /// Finds nginx and wrk, installing from Debian's packages what is missing.
    fn ensure() -> Result<Tools> {
        let (mut nginx, mut wrk) = (find_program("nginx"), find_program("wrk"));
        if nginx.is_none() || wrk.is_none() {
            install(nginx.is_none(), wrk.is_none())?;
            nginx = find_program("nginx");
            wrk = find_program("wrk");
        }
        let nginx = nginx.context("nginx is not on PATH after installing it")?;
        let wrk = wrk.context("wrk is not on PATH after installing it")?;
        // nginx prints its version on stderr; wrk prints it on stdout and exits non-zero.
        let nginx_version = first_line(&run_captured(Command::new(&nginx).arg("-v"), HTTP_TIMEOUT)?.stderr)
            .trim_start_matches("nginx version: ")
            .to_owned();
        let wrk_version = first_line(&run_captured(Command::new(&wrk).arg("-v"), HTTP_TIMEOUT)?.stdout)
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Tools { nginx, wrk, nginx_version, wrk_version })
    }
}

/// Looks a program up on PATH, and in the sbin directories where Debian puts nginx, since
/// a non-root PATH often lacks them.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `apt-get` with `args`, non-interactively; whether it succeeded.
pub(crate) fn apt(args: &[&str]) -> Result<bool> {
    println!("running apt-get {}", args.join(" "));
    let mut command = Command::new("apt-get");
    command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    Ok(run_inherited(&mut command, Duration::from_secs(900))?.success())
}

fn install(nginx: bool, wrk: bool) -> Result<()> {
    if !apt(&["update"])? {
        bail!("apt-get update failed");
    }
    let with = |nginx_package: &'static str| {
        let mut packages = vec!["install", "-y"];
        packages.extend(nginx.then_some(nginx_package));
        packages.extend(wrk.then_some("wrk"));
        packages
    };
    // nginx-light has what a reverse proxy needs and nothing more, but not every Debian
    // release still ships it; the full package works as well.
    if apt(&with("nginx-light"))? || (nginx && apt(&with("nginx"))?) {
        return Ok(());
    }
    bail!(
        "apt-get could not install {}",
        [nginx.then_some("nginx"), wrk.then_some("wrk")].into_iter().flatten().collect::<Vec<_>>().join(" and ")
    )
}

/// `cargo build --release -p pake`, returning the binary's path.
pub(crate) fn build_pake(root: &Path, target: &Path) -> Result<PathBuf> {
    println!("building pake (cargo build --release -p pake)");
    // Under `cargo xtask`, CARGO names the cargo that is running us.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.args(["build", "--release", "-p", "pake"]).current_dir(root);
    let status = run_inherited(&mut command, Duration::from_secs(3600))?;
    if !status.success() {
        bail!("cargo build --release -p pake failed ({status})");
    }
    Ok(target.join("release").join("pake"))
}

/// A long-running child that is stopped when the guard is dropped, on success, on error
/// and on panic alike, so that no benchmark process outlives the command.
pub(crate) struct ChildGuard {
    pub(crate) name: String,
    pub(crate) child: Child,
}

impl ChildGuard {
    /// Fails with `log`'s tail when the child has already exited.
    pub(crate) fn check_running(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}); the end of {}:\n{}", self.name, log.display(), tail(log, 20));
        }
        Ok(())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM first: nginx's master then stops its workers (a SIGKILLed master would
        // leave them running), and pake closes its SQLite file cleanly.
        let pid = self.child.id().to_string();
        let _ = Command::new("sh").args(["-c", "kill -TERM \"$1\"", "sh", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop on SIGTERM within 5 s; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` until `timeout`, killing it when the time is up.
fn wait_with_timeout(child: &mut Child, timeout: Duration, what: &str) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command with the terminal as its output, within `timeout`.
pub(crate) fn run_inherited(command: &mut Command, timeout: Duration) -> Result<ExitStatus> {
    let what = describe(command);
    let mut child = command.stdin(Stdio::null()).spawn().with_context(|| format!("starting {what}"))?;
    wait_with_timeout(&mut child, timeout, &what)
}

/// Runs a command and captures its output, within `timeout`. The pipes are drained on
/// threads so that a chatty child cannot block on a full pipe while we wait for it.
fn run_captured(command: &mut Command, timeout: Duration) -> Result<Output> {
    let what = describe(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|pipe| Box::new(pipe) as Box<dyn Read + Send>));
    let status = wait_with_timeout(&mut child, timeout, &what)?;
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).lines().next().unwrap_or_default().trim().to_owned()
}

/// The last `lines` lines of a log file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| format!("(unreadable: {error})"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A loopback port nobody listens on right now. The listener is dropped before the port
/// is used, which leaves a small window for a race that a developer machine can live with.
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `ready` until it answers true or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, what: &str, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} was not ready within {} s", timeout.as_secs())
}

/// Settings both nginx instances share. Everything nginx writes stays under its prefix.
fn nginx_main(prefix: &Path) -> String {
    let prefix = prefix.display();
    format!(
        "worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    # Room for the idle keep-alive connections whose memory is measured.
    worker_connections 16384;
}}
"
    )
}

/// The fixed upstream every path ends at: a fixed 200 answer with no disk access.
fn upstream_conf(port: u16) -> impl Fn(&Path) -> String {
    move |prefix| {
        let main = nginx_main(prefix);
        let prefix = prefix.display();
        format!(
            "{main}http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    # nginx closes a client connection after 1000 requests by default; each path would
    # then pay for reconnections the others may not, so connections are kept for the run.
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 \"hello from upstream\\n\";
        }}
    }}
}}
"
        )
    }
}

/// nginx as a keep-alive reverse proxy to the upstream: the configuration a careful
/// operator would use, so that the gateway is compared with nginx at its best.
fn proxy_conf(port: u16, upstream_port: u16) -> impl Fn(&Path) -> String {
    move |prefix| {
        let main = nginx_main(prefix);
        let prefix = prefix.display();
        format!(
            "{main}http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    keepalive_requests 1000000;
    upstream bench_upstream {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
"
        )
    }
}

/// Starts nginx in the foreground as our child, with its configuration, pid file and logs
/// under `prefix`, and waits until it answers on `port`.
fn start_nginx(nginx: &Path, prefix: &Path, conf: &dyn Fn(&Path) -> String, port: u16) -> Result<ChildGuard> {
    std::fs::create_dir_all(prefix).with_context(|| format!("creating {}", prefix.display()))?;
    let prefix = prefix.canonicalize()?;
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf(&prefix)).with_context(|| format!("writing {}", conf_path.display()))?;
    let error_log = prefix.join("error.log");
    let output = std::fs::File::create(prefix.join("output.log"))?;
    // `-e` keeps even the messages from before the configuration is read out of
    // /var/log/nginx, which may not exist or belong to a system nginx.
    let child = Command::new(nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&conf_path)
        .arg("-e")
        .arg(&error_log)
        .args(["-g", "daemon off;"])
        .stdin(Stdio::null())
        .stdout(output.try_clone()?)
        .stderr(output)
        .spawn()
        .with_context(|| format!("starting {}", nginx.display()))?;
    let mut guard = ChildGuard { name: format!("nginx ({})", prefix.display()), child };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_until(Duration::from_secs(10), &guard.name.clone(), || {
        guard.check_running(&error_log)?;
        Ok(http(addr, "GET", "/hello", None, None).is_ok_and(|response| response.status == 200))
    })?;
    Ok(guard)
}

/// The gateway's measured paths: the plain proxy; a route that checks a JWT and a rate
/// limit on every request and always goes upstream (no cache); a route answered from the
/// response cache.
const GATEWAY_PATHS: [&str; 3] = ["gateway", "gw+jwt+limit", "gw cache hit"];

/// The plain proxy path of a gateway sharing its process with the performance service,
/// which takes a sample of every request it answers.
const FED_PATH: &str = "gw+samples";

/// The plain proxy path of a gateway that traces every request and exports its spans.
const TRACED_PATH: &str = "gw traced";

/// What a benchmarked gateway feeds besides its answers: request samples to a performance
/// service, or spans to an OTLP collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// `pake serve registry gateway`: no performance service, no samples taken, no spans.
    Off,
    /// `pake serve registry gateway performance`: samples go to it in process.
    InProcess,
    /// `pake serve registry gateway` tracing every request (ratio 1.0), its spans exported
    /// over OTLP/HTTP to the collector on this port.
    Spans(u16),
}

/// Which process answers a path (whose CPU time is measured with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Server {
    Upstream,
    Proxy,
    Gateway,
    /// The gateway with the sample feed ([`FED_PATH`]).
    FedGateway,
    /// The traced gateway ([`TRACED_PATH`]).
    TracedGateway,
}

/// One measured path.
#[derive(Debug, Clone)]
struct Target {
    name: &'static str,
    url: String,
    /// A request header wrk sends (the policies path's token).
    header: Option<String>,
    server: Server,
}

/// The order of the paths in round `round`: all of them, starting one further each round.
fn round_order(paths: usize, round: u32) -> impl Iterator<Item = usize> {
    let start = if paths == 0 { 0 } else { round as usize % paths };
    (0..paths).map(move |offset| (start + offset) % paths)
}

/// A running `pake serve` set up for the gateway paths.
struct GatewayBench {
    server: ChildGuard,
    log_path: PathBuf,
    addr: SocketAddr,
    paths: Vec<Target>,
    /// Rate-limit decisions and Redis round trips counted over the measurements.
    rate_limiting: [f64; 2],
}

impl GatewayBench {
    /// Measures one of the gateway's paths, then checks that the gateway still runs.
    fn measure(&mut self, wrk: &Path, target: &Target, options: &Options, round: u32) -> Result<WrkReport> {
        let counted = || {
            ["pake_gateway_rate_limit_decisions_total", "pake_gateway_rate_limit_redis_round_trips_total"]
                .map(|name| metric_sum(self.addr, name))
        };
        let before = counted();
        let measured = measure(wrk, target, self.server.child.id(), options, round);
        let after = counted();
        // A gateway that exited explains a failed measurement better than wrk's error does.
        self.server.check_running(&self.log_path)?;
        let report = measured?;
        for ((total, before), after) in self.rate_limiting.iter_mut().zip(before).zip(after) {
            if let (Some(before), Some(after)) = (before, after) {
                *total += after - before;
            }
        }
        Ok(report)
    }
}

/// Starts `pake serve`, routes `/v1/bench`, `/v1/bench-policies` and `/v1/bench-cached` to
/// the upstream through the registry and the admin API, obtains a token as an API client
/// and checks each route once.
fn start_gateway(
    pake: &Path,
    bench_dir: &Path,
    upstream_port: u16,
    options: &Options,
    feed: Feed,
) -> Result<GatewayBench> {
    let registry = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let gateway = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let performance = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let suffix = match feed {
        Feed::Off => "",
        Feed::InProcess => "-fed",
        Feed::Spans(_) => "-traced",
    };
    let data_dir = bench_dir.join(format!("pake-data{suffix}"));
    // A fresh store each run, so the service and route created below never collide with
    // a previous run's.
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir).with_context(|| format!("removing {}", data_dir.display()))?;
    }
    std::fs::create_dir_all(&data_dir)?;
    let secret = token_secret();
    let environment = |command: &mut Command| {
        // PAKE_DATABASE_URL is removed so that a developer's shell cannot point the
        // benchmark at a shared PostgreSQL; the embedded store is what is measured.
        command
            .env_remove("PAKE_DATABASE_URL")
            .env("PAKE_DATA_DIR", &data_dir)
            .env("PAKE_TOKEN_SECRET", &secret)
            .env("PAKE_REGISTRY_ADDR", registry.to_string())
            .env("PAKE_GATEWAY_ADDR", gateway.to_string())
            .env("PAKE_PERFORMANCE_ADDR", performance.to_string())
            .env_remove("PAKE_PERFORMANCE_URL")
            .env("PAKE_LOG_FORMAT", "json")
            // The idle connections measured stay under half the cap, where no pressure
            // shortens their idle timeout (the default cap follows the descriptor limit).
            .env("PAKE_MAX_CONNECTIONS", (2 * options.idle + 1024).to_string())
            .env("RUST_LOG", "warn");
        match feed {
            Feed::Spans(port) => command
                .env("PAKE_TRACING", "on")
                .env("PAKE_TRACE_SAMPLE_RATIO", "1.0")
                .env("PAKE_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}")),
            Feed::Off | Feed::InProcess => command.env("PAKE_TRACING", "off").env_remove("PAKE_OTLP_ENDPOINT"),
        };
        // Spans go to the benchmark's collector only, never to a monitoring service.
        command.env_remove("PAKE_MONITORING_URL");
        match &options.redis {
            Some(url) => {
                command.env("PAKE_REDIS_URL", url).env("PAKE_REDIS_PREFIX", format!("bench-{}:", token_secret()))
            }
            None => command.env_remove("PAKE_REDIS_URL"),
        };
    };

    let log_path = bench_dir.join(format!("pake{suffix}.log"));
    let log = std::fs::File::create(&log_path)?;
    let mut command = Command::new(pake);
    // The registry and the gateway only: what is compared with nginx is the proxy, not the
    // performance and monitoring services sharing its two cores. The fed gateway adds the
    // performance service, in process, taking the gateway's request samples.
    command.args(["serve", "registry", "gateway"]);
    if feed == Feed::InProcess {
        command.arg("performance");
    }
    command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    environment(&mut command);
    println!("starting pake serve (registry {registry}, gateway {gateway}; log in {})", log_path.display());
    let child = command.spawn().with_context(|| format!("starting {}", pake.display()))?;
    let mut server = ChildGuard { name: "pake serve".into(), child };
    for (addr, path) in [(registry, "/health/ready"), (gateway, "/v1/health/live")] {
        wait_until(Duration::from_secs(30), &format!("GET http://{addr}{path}"), || {
            server.check_running(&log_path)?;
            Ok(http(addr, "GET", path, None, None).is_ok_and(|response| response.status == 200))
        })?;
    }

    let mut command = Command::new(pake);
    command.args(["token", "--scope", "mesh:read", "--scope", "mesh:write", "--scope", "gateway:admin"]);
    environment(&mut command);
    let output = run_captured(&mut command, Duration::from_secs(10))?;
    if !output.status.success() {
        bail!("pake token failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    let token = first_line(&output.stdout);

    let service = expect(
        registry,
        "POST",
        "/api/v1/services/register",
        &token,
        serde_json::json!({"name": "bench-upstream", "version": "1.0.0"}),
        201,
    )?;
    let service_id = service["id"].as_str().context("the registered service has no id")?;
    expect(
        registry,
        "POST",
        &format!("/api/v1/services/{service_id}/instances"),
        &token,
        serde_json::json!({"address": "127.0.0.1", "port": upstream_port, "ttl_seconds": 3600}),
        201,
    )?;
    // Policies: a rate limit checked on every request (high enough never to refuse), and an
    // API client whose token carries the scope the policies route requires.
    let policy = expect(
        gateway,
        "POST",
        "/v1/admin/rate-limit-policies",
        &token,
        serde_json::json!({"name": "bench", "algorithm": "gcra", "rate": 1_000_000_000u64, "period_seconds": 1,
                           "burst": 1_000_000, "scope": "per_tenant_route"}),
        201,
    )?;
    let client = expect(
        gateway,
        "POST",
        "/v1/admin/clients",
        &token,
        serde_json::json!({"name": "bench", "tenant": "bench", "scopes": ["bench:read"]}),
        201,
    )?;
    let grant = serde_json::json!({"grant_type": "client_credentials", "client_id": client["client_id"],
                                   "client_secret": client["client_secret"]});
    let response = http(gateway, "POST", "/v1/auth/token", None, Some(&grant.to_string()))?;
    if response.status != 200 {
        bail!("POST /v1/auth/token answered {}: {}", response.status, response.body);
    }
    let issued: serde_json::Value = serde_json::from_str(&response.body).context("the token answer is not JSON")?;
    let client_token = issued["access_token"].as_str().context("the token answer has no access_token")?.to_string();
    let route = |name: &str, prefix: &str, extra: serde_json::Value| {
        let mut spec = serde_json::json!({"name": name, "path_prefix": prefix, "methods": ["GET"], "api_version": "v1",
                                          "service": "bench-upstream", "strip_prefix": true});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        expect(gateway, "POST", "/v1/admin/routes", &token, spec, 201)
    };
    route("bench", "/bench", serde_json::json!({}))?;
    route(
        "bench-policies",
        "/bench-policies",
        serde_json::json!({"required_scopes": ["bench:read"], "rate_limit_policy_id": policy["id"]}),
    )?;
    // A short TTL, refreshed by the load itself, so that entries left in a shared Redis expire.
    route("bench-cached", "/bench-cached", serde_json::json!({"cache": {"enabled": true, "ttl_seconds": 30}}))?;

    let mut paths = Vec::new();
    let measured = match feed {
        Feed::Off => vec![
            (GATEWAY_PATHS[0], "/v1/bench/hello", None),
            (GATEWAY_PATHS[1], "/v1/bench-policies/hello", Some(client_token.as_str())),
            (GATEWAY_PATHS[2], "/v1/bench-cached/hello", None),
        ],
        Feed::InProcess => vec![(FED_PATH, "/v1/bench/hello", None)],
        Feed::Spans(_) => vec![(TRACED_PATH, "/v1/bench/hello", None)],
    };
    for (name, path, bearer) in measured {
        // A route may reach the data plane a moment after the admin API answers, so the
        // check is retried for a few seconds before the last answer is reported.
        let mut last = None;
        let routed = wait_until(Duration::from_secs(10), &format!("the {name} route"), || {
            server.check_running(&log_path)?;
            let response = http(gateway, "GET", path, bearer, None);
            let ok = matches!(&response, Ok(answer) if answer.status == 200 && answer.body == UPSTREAM_BODY);
            last = Some(response);
            Ok(ok)
        });
        if let Err(error) = routed {
            let answer = match last {
                Some(Ok(response)) => format!("{} {:?}", response.status, response.body),
                Some(Err(error)) => format!("{error:#}"),
                None => "nothing".into(),
            };
            bail!("{error}: GET http://{gateway}{path} answered {answer}, not 200 {UPSTREAM_BODY:?}");
        }
        paths.push(Target {
            name,
            url: format!("http://{gateway}{path}"),
            header: bearer.map(|token| format!("Authorization: Bearer {token}")),
            server: match feed {
                Feed::Off => Server::Gateway,
                Feed::InProcess => Server::FedGateway,
                Feed::Spans(_) => Server::TracedGateway,
            },
        });
    }
    Ok(GatewayBench { server, log_path, addr: gateway, paths, rate_limiting: [0.0; 2] })
}

/// The sum of every sample of metric `name` at the gateway's `/metrics`, if it has any.
fn metric_sum(gateway: SocketAddr, name: &str) -> Option<f64> {
    let response = http(gateway, "GET", "/metrics", None, None).ok()?;
    let values: Vec<f64> = response
        .body
        .lines()
        .filter(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter_map(|line| line.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// A 40-character secret that differs between runs. It only guards a throwaway store on
/// loopback, so std's randomly keyed hasher is random enough.
pub(crate) fn token_secret() -> String {
    let state = RandomState::new();
    (0..3u64)
        .map(|i| {
            let mut hasher = state.build_hasher();
            hasher.write_u64(i);
            format!("{:016x}", hasher.finish())
        })
        .collect::<String>()[..40]
        .to_owned()
}

/// Sends a JSON request and fails unless it answers `status`; returns the JSON body.
fn expect(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: &str,
    body: serde_json::Value,
    status: u16,
) -> Result<serde_json::Value> {
    let response = http(addr, method, path, Some(token), Some(&body.to_string()))?;
    if response.status != status {
        bail!("{method} http://{addr}{path} answered {} (expected {status}): {}", response.status, response.body);
    }
    serde_json::from_str(&response.body).with_context(|| format!("{method} {path} answered invalid JSON"))
}

#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// One request on a fresh connection (`Connection: close`), bounded by `HTTP_TIMEOUT`.
/// It reads content-length and chunked bodies, which is all the set-up meets.
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&str>,
) -> Result<HttpResponse> {
    let deadline = Instant::now() + HTTP_TIMEOUT;
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(token) = token {
        write!(request, "Authorization: Bearer {token}\r\n")?;
    }
    if let Some(json) = json {
        write!(request, "Content-Type: application/json\r\nContent-Length: {}\r\n", json.len())?;
    }
    request.push_str("\r\n");
    request.push_str(json.unwrap_or_default());
    stream.write_all(request.as_bytes())?;

    let mut raw = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        raw.extend_from_slice(&buffer[..read]);
        if Instant::now() > deadline {
            bail!("{method} http://{addr}{path} took longer than {} s", HTTP_TIMEOUT.as_secs());
        }
    }
    parse_response(&raw).with_context(|| format!("reading the answer to {method} http://{addr}{path}"))
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let head_end = find(raw, b"\r\n\r\n").context("the answer has no complete head")?;
    let head = std::str::from_utf8(&raw[..head_end]).context("the answer's head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).and_then(|code| code.parse().ok());
    let status = status.with_context(|| format!("bad status line {status_line:?}"))?;
    let mut body = &raw[head_end + 4..];
    let mut chunked = false;
    for line in lines {
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            let length: usize = value.parse().with_context(|| format!("bad content-length {value:?}"))?;
            body = body.get(..length).context("the body is shorter than its content-length")?;
        }
    }
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok(HttpResponse { status, body: String::from_utf8_lossy(&body).into_owned() })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").context("a chunk size line is cut short")?;
        let size_line = std::str::from_utf8(&data[..line_end])?;
        let size_text = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).with_context(|| format!("bad chunk size {size_line:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        body.extend_from_slice(data.get(..size).context("a chunk is cut short")?);
        data = data.get(size + 2..).context("a chunk is cut short")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// An OTLP/HTTP collector for the traced gateway: it takes every `POST /v1/traces` on
/// keep-alive connections and answers 200 with an empty `ExportTraceServiceResponse`,
/// counting the requests and their bytes (it decodes nothing, as the collector it stands
/// for runs elsewhere). Its threads end with the command.
struct OtlpCollector {
    port: u16,
    received: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
}

impl OtlpCollector {
    fn start() -> Result<OtlpCollector> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).context("binding the OTLP collector")?;
        let port = listener.local_addr()?.port();
        let received: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]> = std::sync::Arc::default();
        let counts = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let counts = counts.clone();
                std::thread::spawn(move || OtlpCollector::serve(stream, &counts));
            }
        });
        Ok(OtlpCollector { port, received })
    }

    /// Answers one connection's requests until it closes or sends something else.
    fn serve(mut stream: TcpStream, counts: &[std::sync::atomic::AtomicU64; 2]) {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let head_end = loop {
                if let Some(at) = find(&buffer, b"\r\n\r\n") {
                    break at + 4;
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
            let Some(length) = head.lines().find_map(|line| {
                line.strip_prefix("content-length:").and_then(|value| value.trim().parse::<usize>().ok())
            }) else {
                return;
            };
            while buffer.len() < head_end + length {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            }
            buffer.drain(..head_end + length);
            counts[0].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            counts[1].fetch_add(length as u64, std::sync::atomic::Ordering::Relaxed);
            let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
            if stream.write_all(answer).is_err() {
                return;
            }
        }
    }

    /// Export requests and bytes received so far.
    fn received(&self) -> (u64, u64) {
        let [requests, bytes] = &*self.received;
        (requests.load(std::sync::atomic::Ordering::Relaxed), bytes.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What one wrk run reports, with latencies in microseconds.
#[derive(Debug, Clone, PartialEq)]
struct WrkReport {
    requests: u64,
    requests_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// Answers outside 2xx and 3xx, plus connect, read, write and timeout errors.
    errors: u64,
    /// CPU time the answering server spent per request (the upstream for the direct path,
    /// the proxy otherwise): a measure the other processes on the cores disturb far less
    /// than requests/s.
    server_cpu_us: Option<f64>,
}

/// Measures `target` once (after a warm-up in the first round), with the CPU time the
/// process `pid` (and its children, such as nginx's workers) spends meanwhile.
fn measure(wrk: &Path, target: &Target, pid: u32, options: &Options, round: u32) -> Result<WrkReport> {
    let (name, url, header) = (target.name, target.url.as_str(), target.header.as_deref());
    let warm_up = if round == 0 { WARM_UP.as_secs() } else { 0 };
    println!(
        "round {}/{}: {name} ({url}, {}{} s with {} connections)",
        round + 1,
        options.rounds,
        if warm_up > 0 { format!("{warm_up} s warm-up, then ") } else { String::new() },
        options.duration_secs,
        options.connections
    );
    // The warm-up fills connection pools and caches on every hop; its numbers are dropped.
    if warm_up > 0 {
        run_wrk(wrk, url, header, options.connections, warm_up).with_context(|| format!("warming up {name}"))?;
    }
    let before = cpu_ticks(pid);
    let mut report = run_wrk(wrk, url, header, options.connections, options.duration_secs)
        .with_context(|| format!("measuring {name}"))?;
    if let (Some(before), Some(after)) = (before, cpu_ticks(pid))
        && report.requests > 0
    {
        let seconds = after.saturating_sub(before) as f64 / ticks_per_second() as f64;
        report.server_cpu_us = Some(seconds * 1e6 / report.requests as f64);
    }
    Ok(report)
}

/// User and system CPU ticks of process `pid` and its children (`/proc`; None elsewhere).
fn cpu_ticks(pid: u32) -> Option<u64> {
    // After the command name (which may hold spaces, so it is skipped to its closing
    // parenthesis): state, ppid, …; utime and stime are the 12th and 13th fields from there.
    let stat = |path: &Path| -> Option<(u32, u64)> {
        let text = std::fs::read_to_string(path).ok()?;
        let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split_whitespace().collect();
        let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some((fields.get(1)?.parse().ok()?, ticks))
    };
    let (_, own) = stat(&PathBuf::from(format!("/proc/{pid}/stat")))?;
    let children: u64 = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| stat(&entry.ok()?.path().join("stat")))
        .filter(|(parent, _)| *parent == pid)
        .map(|(_, ticks)| ticks)
        .sum();
    Some(own + children)
}

/// What idle keep-alive connections cost a server: its resident memory (with its
/// children's, such as nginx's workers) before they were opened and while they are held.
struct IdleMemory {
    server: &'static str,
    connections: u32,
    before_kib: u64,
    after_kib: u64,
}

impl IdleMemory {
    fn per_connection_kib(&self) -> f64 {
        self.after_kib.saturating_sub(self.before_kib) as f64 / f64::from(self.connections.max(1))
    }
}

/// Opens `connections` connections to `addr`, makes one `GET path` on each and keeps them
/// open and idle, and measures the resident memory of process `pid` (and its children)
/// before and after.
fn idle_memory(server: &'static str, pid: u32, addr: SocketAddr, path: &str, connections: u32) -> Result<IdleMemory> {
    use std::io::{Read, Write};
    println!("opening {connections} idle keep-alive connections to {server}");
    let before_kib = settled_resident_kib(pid)?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let mut held = Vec::with_capacity(connections as usize);
    for n in 0..connections {
        let mut stream = std::net::TcpStream::connect(addr).with_context(|| format!("connection {n} to {server}"))?;
        stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
        stream.write_all(request.as_bytes())?;
        // The answer is small: read until its body (the upstream's) has arrived.
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        while !answer.windows(UPSTREAM_BODY.len()).any(|window| window == UPSTREAM_BODY.as_bytes()) {
            let read = stream.read(&mut chunk).with_context(|| format!("reading answer {n} from {server}"))?;
            if read == 0 {
                bail!(
                    "{server} closed connection {n} before answering in full: {:?}",
                    String::from_utf8_lossy(&answer)
                );
            }
            answer.extend_from_slice(&chunk[..read]);
        }
        held.push(stream);
    }
    // Let allocators settle after the burst.
    std::thread::sleep(Duration::from_secs(1));
    let after_kib = settled_resident_kib(pid)?;
    drop(held);
    Ok(IdleMemory { server, connections, before_kib, after_kib })
}

/// The median of five readings of [`resident_kib`] over two seconds: a server's resident
/// memory moves by a megabyte or two at a time as its allocator takes and gives back
/// segments, which one reading would count against ten thousand connections.
fn settled_resident_kib(pid: u32) -> Result<u64> {
    let mut readings = Vec::new();
    for n in 0..5 {
        if n > 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
        readings.push(resident_kib(pid).context("reading the server's memory")?);
    }
    readings.sort_unstable();
    Ok(readings[readings.len() / 2])
}

/// Resident memory of process `pid` and its children, in KiB (`/proc`; None elsewhere).
fn resident_kib(pid: u32) -> Option<u64> {
    let rss = |pid: &str| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let parent = |pid: &str| -> Option<u32> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        text.get(text.rfind(')')? + 2..)?.split_whitespace().nth(1)?.parse().ok()
    };
    let own = rss(&pid.to_string())?;
    let children: u64 = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()) && parent(name) == Some(pid))
        .filter_map(|name| rss(&name))
        .sum();
    Some(own + children)
}

/// The kernel's clock ticks per second for `/proc` CPU times (`getconf CLK_TCK`; 100 on
/// every Linux this runs on when getconf is missing).
fn ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

fn run_wrk(wrk: &Path, url: &str, header: Option<&str>, connections: u32, duration_secs: u64) -> Result<WrkReport> {
    let mut command = Command::new(wrk);
    if let Some(header) = header {
        command.args(["-H", header]);
    }
    command.args([
        format!("-t{WRK_THREADS}"),
        format!("-c{connections}"),
        format!("-d{duration_secs}s"),
        "--latency".into(),
        url.into(),
    ]);
    let output = run_captured(&mut command, Duration::from_secs(duration_secs + 30))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed ({}): {}{}", output.status, stdout.trim(), String::from_utf8_lossy(&output.stderr).trim());
    }
    parse_wrk(&stdout).with_context(|| format!("reading wrk's output:\n{stdout}"))
}

fn parse_wrk(output: &str) -> Result<WrkReport> {
    let (mut requests, mut requests_per_sec, mut p50_us, mut p99_us) = (None, None, None, None);
    let mut errors = 0;
    for line in output.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("Requests/sec:") {
            requests_per_sec = Some(value.trim().parse::<f64>().context("bad Requests/sec")?);
        } else if let Some(value) = line.strip_prefix("50%") {
            p50_us = Some(parse_latency_us(value.trim())?);
        } else if let Some(value) = line.strip_prefix("99%") {
            p99_us = Some(parse_latency_us(value.trim())?);
        } else if let Some(value) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += value.trim().parse::<u64>().context("bad non-2xx count")?;
        } else if let Some(value) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in value.split(',') {
                let count = part.split_whitespace().nth(1).context("bad socket error count")?;
                errors += count.parse::<u64>().context("bad socket error count")?;
            }
        } else if let Some((count, _)) = line.split_once(" requests in ") {
            requests = Some(count.trim().parse::<u64>().context("bad request count")?);
        }
    }
    Ok(WrkReport {
        requests: requests.context("no \"N requests in\" line")?,
        requests_per_sec: requests_per_sec.context("no Requests/sec line")?,
        p50_us: p50_us.context("no 50% latency line (was --latency given?)")?,
        p99_us: p99_us.context("no 99% latency line (was --latency given?)")?,
        errors,
        server_cpu_us: None,
    })
}

/// wrk's latency format: a number and a unit among us, ms, s, m and h.
fn parse_latency_us(text: &str) -> Result<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).with_context(|| format!("no unit in {text:?}"))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().with_context(|| format!("bad latency {text:?}"))?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => bail!("unknown latency unit in {text:?}"),
    };
    Ok(number * scale)
}

struct Row<'a> {
    name: &'a str,
    url: String,
    /// One report per round, in round order; none when the path could not be measured.
    rounds: Vec<WrkReport>,
}

impl<'a> Row<'a> {
    fn measured(name: &'a str, url: &str, rounds: Vec<WrkReport>) -> Row<'a> {
        Row { name, url: url.to_owned(), rounds }
    }

    fn failed(name: &'a str) -> Row<'a> {
        Row::measured(name, "", Vec::new())
    }

    /// The rounds combined ([`combine`]).
    fn report(&self) -> Option<WrkReport> {
        combine(&self.rounds)
    }

    fn too_many_errors(&self) -> bool {
        self.report().is_some_and(|report| report.errors as f64 > report.requests as f64 * MAX_ERROR_SHARE)
    }

    fn cells(&self) -> [String; 5] {
        match self.report() {
            Some(report) => [
                format!("{:.0}", report.requests_per_sec),
                format_ms(report.p50_us),
                format_ms(report.p99_us),
                report.server_cpu_us.map_or_else(|| "-".into(), |us| format!("{us:.1} us")),
                report.errors.to_string(),
            ],
            None => ["failed".into(), "-".into(), "-".into(), "-".into(), "-".into()],
        }
    }
}

/// The median of `values` (the mean of the middle two for an even count); none if empty.
fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[middle]),
        _ => Some((values[middle - 1] + values[middle]) / 2.0),
    }
}

/// One path's rounds as one report: the median requests/s, p50 and p99 of the rounds, all
/// their requests and errors, and the server CPU time of all of them over all requests.
fn combine(rounds: &[WrkReport]) -> Option<WrkReport> {
    let of = |field: fn(&WrkReport) -> f64| median(rounds.iter().map(field).collect());
    let requests: u64 = rounds.iter().map(|report| report.requests).sum();
    let cpu: Option<Vec<f64>> =
        rounds.iter().map(|report| Some(report.server_cpu_us? * report.requests as f64)).collect();
    Some(WrkReport {
        requests,
        requests_per_sec: of(|report| report.requests_per_sec)?,
        p50_us: of(|report| report.p50_us)?,
        p99_us: of(|report| report.p99_us)?,
        errors: rounds.iter().map(|report| report.errors).sum(),
        server_cpu_us: cpu.filter(|_| requests > 0).map(|cpu| cpu.iter().sum::<f64>() / requests as f64),
    })
}

/// The median over rounds of `a`'s `field` over `b`'s in the same round, and each
/// round's ratio.
fn paired_ratio(a: &[WrkReport], b: &[WrkReport], field: fn(&WrkReport) -> f64) -> Option<(f64, Vec<f64>)> {
    let each: Vec<f64> = a.iter().zip(b).filter(|(_, b)| field(b) > 0.0).map(|(a, b)| field(a) / field(b)).collect();
    Some((median(each.clone())?, each))
}

fn format_ms(us: f64) -> String {
    format!("{:.3} ms", us / 1e3)
}

struct Summary<'a> {
    options: &'a Options,
    tools: &'a Tools,
    rows: &'a [Row<'a>],
    cores: usize,
    /// Why the gateway row is empty, kept in the written table since the terminal's
    /// error message does not reach the file.
    gateway_error: Option<String>,
    idle: &'a [Result<IdleMemory>],
    /// What the fed gateway's sample feed did, or why that gateway failed.
    feed: Result<String, String>,
    /// What the traced gateway exported, or why it failed.
    spans: Result<String, String>,
}

impl Summary<'_> {
    fn row(&self, name: &str) -> Option<&Row<'_>> {
        self.rows.iter().find(|row| row.name == name && !row.rounds.is_empty())
    }

    fn ratios(&self) -> String {
        let ratio = |name: &str, base: &str, what: &str| {
            let (Some(a), Some(b)) = (self.row(name), self.row(base)) else {
                return format!("{name}/{base}: not measured");
            };
            let (Some(throughput), Some(p50), Some(p99)) = (
                paired_ratio(&a.rounds, &b.rounds, |report| report.requests_per_sec),
                paired_ratio(&a.rounds, &b.rounds, |report| report.p50_us),
                paired_ratio(&a.rounds, &b.rounds, |report| report.p99_us),
            ) else {
                return format!("{name}/{base}: not measured");
            };
            let rounds: Vec<String> = throughput.1.iter().map(|ratio| format!("{ratio:.2}")).collect();
            let cpu = match (a.report().and_then(|r| r.server_cpu_us), b.report().and_then(|r| r.server_cpu_us)) {
                (Some(x), Some(y)) if y > 0.0 => format!("{:.2}x", x / y),
                _ => "-".into(),
            };
            format!(
                "{name}/{base}: throughput {:.2}x (rounds {}), p50 {:.2}x, p99 {:.2}x, server CPU per request {cpu} ({what})",
                throughput.0,
                rounds.join(" "),
                p50.0,
                p99.0,
            )
        };
        [
            ratio("gateway", "nginx", "goal: throughput at least 1.00x, p99 at most 1.00x"),
            ratio(GATEWAY_PATHS[1], "gateway", "goal: the policies cost at most 20 %, throughput at least 0.80x"),
            ratio(GATEWAY_PATHS[2], "gateway", "a cache hit against going upstream through the gateway"),
            ratio(GATEWAY_PATHS[2], "direct", "a cache hit against the upstream itself"),
            ratio(FED_PATH, "gateway", "goal: the sample feed costs at most 3 %, throughput at least 0.97x"),
            match &self.feed {
                Ok(feed) => feed.clone(),
                Err(error) => format!("the gateway with the sample feed failed: {error}"),
            },
            ratio(
                TRACED_PATH,
                "gateway",
                "goal: tracing every request with export keeps at least 0.90x the throughput",
            ),
            match &self.spans {
                Ok(spans) => spans.clone(),
                Err(error) => format!("the traced gateway failed: {error}"),
            },
        ]
        .join("\n")
    }

    fn setting(&self) -> String {
        format!(
            "{} with {WRK_THREADS} threads and {} connections; {} rounds, each measuring every path for {} s \
             in turn (the order rotating by round), after a {} s warm-up per path in the first; {}. \
             requests/s, p50 and p99 are medians over the rounds, and each ratio is the median of its \
             per-round ratios. The load generator, the proxies and the upstream share this machine's {} \
             cores, so the numbers compare the paths with each other and are not the capacity of any one \
             of them. CPU/req is the user and system time of the process answering (the upstream for \
             direct, the proxy otherwise, with its worker processes) per request, over all rounds.",
            self.tools.wrk_version,
            self.options.connections,
            self.options.rounds,
            self.options.duration_secs,
            WARM_UP.as_secs(),
            self.tools.nginx_version,
            self.cores
        )
    }

    fn text(&self) -> String {
        let mut text = format!(
            "{:<14} {:>12} {:>12} {:>12} {:>11} {:>8}\n",
            "path", "requests/s", "p50", "p99", "CPU/req", "errors"
        );
        for row in self.rows {
            let [rps, p50, p99, cpu, errors] = row.cells();
            let _ = writeln!(text, "{:<14} {rps:>12} {p50:>12} {p99:>12} {cpu:>11} {errors:>8}", row.name);
        }
        let _ = write!(text, "\n{}\n\n{}", self.ratios(), self.setting());
        let _ = write!(text, "\n{}", self.idle_lines());
        text
    }

    /// One line per server: the memory its idle keep-alive connections hold.
    fn idle_lines(&self) -> String {
        let mut text = String::new();
        for measured in self.idle {
            let _ = match measured {
                Ok(idle) => writeln!(
                    text,
                    "{} idle keep-alive connections: {:.1} KiB each on {} (RSS {:.1} → {:.1} MiB)",
                    idle.connections,
                    idle.per_connection_kib(),
                    idle.server,
                    idle.before_kib as f64 / 1024.0,
                    idle.after_kib as f64 / 1024.0
                ),
                Err(error) => writeln!(text, "idle connections: {error:#}"),
            };
        }
        text
    }

    fn markdown(&self) -> String {
        let mut text = format!(
            "# Gateway benchmark\n\n`cargo xtask bench gateway --duration {} --rounds {} --connections {}`\n\n\
             | path | URL | requests/s | p50 | p99 | server CPU/request | errors |\n|---|---|---:|---:|---:|---:|---:|\n",
            self.options.duration_secs, self.options.rounds, self.options.connections
        );
        for row in self.rows {
            let [rps, p50, p99, cpu, errors] = row.cells();
            let url = if row.url.is_empty() { String::new() } else { format!("`{}`", row.url) };
            let _ = writeln!(text, "| {} | {url} | {rps} | {p50} | {p99} | {cpu} | {errors} |", row.name);
        }
        let ratios: Vec<String> = self.ratios().lines().map(|line| format!("- {line}")).collect();
        let redis = match &self.options.redis {
            Some(_) => "Rate limits and the L2 cache in Redis (one round trip per decision).",
            None => "Embedded mode: rate limits and the cache in process (no Redis).",
        };
        let _ = write!(text, "\n{}\n\n{redis} {}\n", ratios.join("\n"), self.setting());
        let idle: Vec<String> = self.idle_lines().lines().map(|line| format!("- {line}")).collect();
        if !idle.is_empty() {
            let _ = write!(text, "\n{}\n", idle.join("\n"));
        }
        if let Some(error) = &self.gateway_error {
            let _ = write!(text, "\nThe gateway part failed:\n\n```text\n{error}\n```\n");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `wrk -t2 -c64 -d3s --latency` against the upstream on the 2-core development
    /// machine: latencies in microseconds and milliseconds, no errors.
    const WRK_FAST: &str = r#"Running 3s test @ http://127.0.0.1:34953/hello
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   675.24us  439.01us   5.62ms   86.91%
    Req/Sec    49.38k     9.33k   74.47k    73.33%
  Latency Distribution
     50%  660.00us
     75%  702.00us
     90%  813.00us
     99%    3.02ms
  294392 requests in 3.00s, 47.17MB read
Requests/sec:  98072.54
Transfer/sec:     15.71MB
"#;

    /// `wrk -t2 -c4 -d4s --timeout 5s --latency` against a server that answers 404 after
    /// 1.1 s: latencies in seconds (wrk pads them with a trailing space) and non-2xx answers.
    const WRK_SLOW: &str = r#"Running 4s test @ http://127.0.0.1:18765/
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.13s    19.76ms   1.14s    66.67%
    Req/Sec     1.00      0.00     1.00    100.00%
  Latency Distribution
     50%    1.14s 
     75%    1.14s 
     90%    1.14s 
     99%    1.14s 
  12 requests in 4.01s, 1.48KB read
  Non-2xx or 3xx responses: 12
Requests/sec:      2.99
Transfer/sec:     377.21B
"#;

    /// The same server with `--timeout 1s`: every request times out.
    const WRK_TIMEOUTS: &str = r#"Running 3s test @ http://127.0.0.1:18765/
  2 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     1.00      0.00     1.00    100.00%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  8 requests in 3.01s, 0.98KB read
  Socket errors: connect 0, read 0, write 0, timeout 8
  Non-2xx or 3xx responses: 8
Requests/sec:      2.66
Transfer/sec:     335.26B
"#;

    #[test]
    fn parses_microseconds_and_milliseconds() {
        let report = parse_wrk(WRK_FAST).unwrap();
        assert_eq!(
            report,
            WrkReport {
                requests: 294392,
                requests_per_sec: 98072.54,
                p50_us: 660.0,
                p99_us: 3020.0,
                errors: 0,
                server_cpu_us: None
            }
        );
    }

    #[test]
    fn parses_seconds_and_counts_non_2xx_answers() {
        let report = parse_wrk(WRK_SLOW).unwrap();
        assert_eq!(
            report,
            WrkReport {
                requests: 12,
                requests_per_sec: 2.99,
                p50_us: 1.14e6,
                p99_us: 1.14e6,
                errors: 12,
                server_cpu_us: None
            }
        );
    }

    #[test]
    fn counts_socket_errors() {
        let report = parse_wrk(WRK_TIMEOUTS).unwrap();
        assert_eq!(report.errors, 8 + 8);
        assert_eq!(report.p99_us, 0.0);
        let row = Row::measured("timeouts", "http://127.0.0.1:1/", vec![report]);
        assert!(row.too_many_errors());
    }

    #[test]
    fn rejects_output_without_latency_distribution() {
        let without: String = WRK_FAST.lines().filter(|line| !line.contains('%')).collect::<Vec<_>>().join("\n");
        let error = parse_wrk(&without).unwrap_err().to_string();
        assert!(error.contains("--latency"), "{error}");
    }

    #[test]
    fn latency_units() {
        assert_eq!(parse_latency_us("328.00us").unwrap(), 328.0);
        assert_eq!(parse_latency_us("1.19ms").unwrap(), 1190.0);
        assert_eq!(parse_latency_us("2.50s").unwrap(), 2.5e6);
        assert_eq!(parse_latency_us("1.00m").unwrap(), 60e6);
        assert!(parse_latency_us("3.00").is_err());
        assert!(parse_latency_us("3.00ns").is_err());
    }

    #[test]
    fn reads_content_length_and_chunked_answers() {
        let plain = parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 10\r\n\r\n{\"id\":\"a\"}").unwrap();
        assert_eq!((plain.status, plain.body.as_str()), (201, "{\"id\":\"a\"}"));
        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5;x=y\r\nworld\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((chunked.status, chunked.body.as_str()), (200, "hello world"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_err());
    }

    #[test]
    fn options() {
        let defaults = Options { duration_secs: 5, rounds: 3, connections: 64, idle: 10_000, redis: None };
        assert_eq!(Options::parse(&[]).unwrap(), defaults);
        let arguments =
            ["--duration", "3", "--rounds", "2", "--connections", "16", "--idle", "0", "--redis", "redis://r/"];
        let options = Options::parse(&arguments).unwrap();
        let expected =
            Options { duration_secs: 3, rounds: 2, connections: 16, idle: 0, redis: Some("redis://r/".into()) };
        assert_eq!(options, expected);
        assert!(Options::parse(&["--rounds", "0"]).is_err());
        assert!(Options::parse(&["--duration"]).is_err());
        assert!(Options::parse(&["--connections", "1"]).is_err());
        assert!(Options::parse(&["--threads", "4"]).is_err());
    }

    fn run(requests: u64, requests_per_sec: f64, p99_us: f64, server_cpu_us: Option<f64>) -> WrkReport {
        WrkReport { requests, requests_per_sec, p50_us: p99_us / 2.0, p99_us, errors: 1, server_cpu_us }
    }

    #[test]
    fn rounds_rotate_through_every_path() {
        let orders: Vec<Vec<usize>> = (0..4).map(|round| round_order(3, round).collect()).collect();
        assert_eq!(orders, [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]);
        assert_eq!(round_order(0, 2).count(), 0);
    }

    #[test]
    fn rounds_combine_into_medians_and_cpu_over_all_requests() {
        let rounds = [run(100, 10.0, 4.0, Some(2.0)), run(300, 30.0, 8.0, Some(4.0)), run(200, 20.0, 6.0, Some(1.0))];
        let combined = combine(&rounds).unwrap();
        assert_eq!((combined.requests, combined.requests_per_sec, combined.p99_us), (600, 20.0, 6.0));
        assert_eq!((combined.p50_us, combined.errors), (3.0, 3));
        // (100·2 + 300·4 + 200·1) / 600 µs.
        assert_eq!(combined.server_cpu_us, Some(1600.0 / 600.0));
        assert_eq!(combine(&[run(1, 1.0, 1.0, None), run(1, 3.0, 1.0, Some(1.0))]).unwrap().server_cpu_us, None);
        assert_eq!(combine(&[run(1, 1.0, 1.0, None), run(1, 3.0, 1.0, None)]).unwrap().requests_per_sec, 2.0);
        assert!(combine(&[]).is_none());
    }

    #[test]
    fn ratios_pair_the_rounds() {
        // A slow second round slows both paths: paired, the ratio stays put; the ratio of
        // the medians would not.
        let base = [run(1, 100.0, 1.0, None), run(1, 50.0, 1.0, None), run(1, 100.0, 1.0, None)];
        let path = [run(1, 80.0, 1.0, None), run(1, 40.0, 1.0, None), run(1, 90.0, 1.0, None)];
        let (median, each) = paired_ratio(&path, &base, |report| report.requests_per_sec).unwrap();
        assert_eq!(each, [0.8, 0.8, 0.9]);
        assert_eq!(median, 0.8);
        assert!(paired_ratio(&[], &base, |report| report.requests_per_sec).is_none());
    }

    #[test]
    fn token_secrets_are_40_characters_and_differ() {
        let (first, second) = (token_secret(), token_secret());
        assert_eq!(first.len(), 40);
        assert_ne!(first, second);
    }
}
