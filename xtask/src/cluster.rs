//! `cargo xtask cluster`: PAKE as a cluster on one machine, and the checks that only
//! separate processes can fail.
//!
//! Two registries, two gateways, one monitoring and one performance service run as six
//! `pake serve <service>` processes, each a host of its own: as root, a network namespace
//! with its own address on a bridge (10.213.N.x/24, its own loopback, reaching PostgreSQL
//! and Redis through relays on the bridge); otherwise, or with `--hosts loopback`, a
//! loopback address of its own (127.0.0.x). They share one fresh PostgreSQL database and
//! one Redis key prefix; Debian's Prometheus scrapes them as jobs `pake-<service>` with the
//! chart's rules (deploy/prometheus/rules.yaml). Then, in order:
//!
//! 1. a registration on one registry is served by the other within a second;
//! 2. a route made on one gateway is served by the other within a second;
//! 3. a rate limit holds over both gateways combined;
//! 4. a cache invalidation sent to one gateway evicts on the other;
//! 5. a gateway's SIGTERM lets every request in flight finish;
//! 6. a gateway killed mid-load loses no request that the client retries on the other;
//! 7. every dashboard query returns data from the live Prometheus;
//! 8. every rule of the chart evaluates without error there, and the SLO page fires on the
//!    performance service's real metrics.
//!
//! What the kubelet and the scheduler do (probes, endpoints, drains) needs a real cluster;
//! deploy/README.md says which is which.

use crate::bench::{ChildGuard, HttpResponse, http, token_secret, wait_until};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Options {
    pake: Option<PathBuf>,
    postgres: String,
    redis: String,
    prometheus: String,
    /// Network namespaces (`true`) or loopback addresses; by default namespaces when root.
    namespaces: Option<bool>,
}

impl Options {
    pub const USAGE: &str =
        "cluster [--pake PATH] [--postgres URL] [--redis URL] [--prometheus PATH] [--hosts netns|loopback]";

    pub fn parse(arguments: &[&str]) -> Result<Options> {
        let mut options = Options {
            pake: None,
            postgres: "postgres://postgres@127.0.0.1:5432".into(),
            redis: "redis://127.0.0.1:6379/".into(),
            prometheus: "prometheus".into(),
            namespaces: None,
        };
        let mut rest = arguments.iter();
        while let Some(argument) = rest.next() {
            let value = rest.next().with_context(|| format!("{argument} needs a value"))?.to_string();
            match *argument {
                "--pake" => options.pake = Some(value.into()),
                "--postgres" => options.postgres = value.trim_end_matches('/').to_string(),
                "--redis" => options.redis = value,
                "--prometheus" => options.prometheus = value,
                "--hosts" => {
                    options.namespaces = Some(match value.as_str() {
                        "netns" => true,
                        "loopback" => false,
                        other => bail!("--hosts takes netns or loopback, not {other}"),
                    })
                }
                other => bail!("unknown option {other}; usage: cargo xtask {}", Options::USAGE),
            }
        }
        Ok(options)
    }
}

/// The PAKE processes: (name, service, the last byte of its address).
const NODES: [(&str, &str, u8); 6] = [
    ("registry-a", "registry", 11),
    ("registry-b", "registry", 12),
    ("gateway-a", "gateway", 21),
    ("gateway-b", "gateway", 22),
    ("monitoring", "monitoring", 31),
    ("performance", "performance", 41),
];
/// How soon a write on one replica must be served by another.
const PROPAGATION: Duration = Duration::from_secs(1);

pub fn run(root: &Path, options: &Options) -> Result<()> {
    let started = Instant::now();
    let pake = match &options.pake {
        Some(path) => path.clone(),
        None => build_pake(root)?,
    };
    let suffix = &token_secret()[..12];
    let work = crate::bench::target_dir(root).join("cluster").join(suffix);
    std::fs::create_dir_all(&work)?;
    let database = Database::create(&options.postgres, &format!("pake_cluster_{suffix}"))?;
    let redis_prefix = format!("pake-cluster-{suffix}:");
    let _redis_keys = RedisKeys { url: options.redis.clone(), prefix: redis_prefix.clone() };
    std::fs::write(work.join("sealing-key"), &token_secret()[..32])?;
    let secret = token_secret();
    let namespaces = options.namespaces.unwrap_or_else(is_root);
    let network = if namespaces { Network::namespaces(suffix)? } else { Network::loopback()? };
    let upstream = Upstream::start(network.host)?;
    let (database_url, redis_url) = (network.reach(&database.url())?, network.reach(&options.redis)?);

    let addresses = network.nodes.clone();
    let addr = |name: &str| addresses[NODES.iter().position(|(node, _, _)| *node == name).expect("a node")];
    let env: Vec<(String, String)> = vec![
        ("PAKE_DATABASE_URL".into(), database_url),
        ("PAKE_REDIS_URL".into(), redis_url),
        ("PAKE_REDIS_PREFIX".into(), redis_prefix),
        ("PAKE_TOKEN_SECRET".into(), secret),
        ("PAKE_MONITORING_SEALING_KEY_FILE".into(), work.join("sealing-key").display().to_string()),
        ("PAKE_SCRAPE_INTERVAL_SECONDS".into(), "1".into()),
        ("PAKE_LOG_FORMAT".into(), "json".into()),
        // Where the monitoring service scrapes the others, and the gateways send samples.
        ("PAKE_REGISTRY_ADDR".into(), addr("registry-a").to_string()),
        ("PAKE_GATEWAY_ADDR".into(), addr("gateway-a").to_string()),
        ("PAKE_PERFORMANCE_ADDR".into(), addr("performance").to_string()),
        ("PAKE_MONITORING_ADDR".into(), addr("monitoring").to_string()),
        ("PAKE_PERFORMANCE_URL".into(), format!("http://{}", addr("performance"))),
    ];
    let mut cluster = Cluster { pake, work: work.clone(), env, nodes: Vec::new(), network };
    // The first registry applies the migrations; the others start on a migrated database.
    cluster.start("registry-a")?;
    for (name, _, _) in &NODES[1..] {
        cluster.start(name)?;
    }
    println!(
        "cluster up in {:.1} s: {}; logs under {} (kept if a check fails)",
        started.elapsed().as_secs_f64(),
        cluster.describe(),
        work.display()
    );
    let prometheus = Prometheus::start(&options.prometheus, root, &work, &cluster)?;
    let upstream_host = cluster.network.host.to_string();

    let token = token(&cluster)?;
    let api = Api { token };
    let (registry_a, registry_b) = (addr("registry-a"), addr("registry-b"));
    let (gateway_a, gateway_b) = (addr("gateway-a"), addr("gateway-b"));

    // 1. A registration on one registry is served by the other.
    let service = api.expect(
        registry_a,
        "POST",
        "/api/v1/services/register",
        json!({"name": "papers", "version": "1.0.0"}),
        201,
    )?;
    let id = service["id"].as_str().context("a service id")?.to_string();
    let took = within(PROPAGATION, "the registration on registry-a served by registry-b", || {
        Ok(api.get(registry_b, &format!("/api/v1/services/{id}"))?.status == 200)
    })?;
    println!("ok: a registration on registry-a is served by registry-b after {} ms", took.as_millis());
    let instance = json!({"address": upstream_host, "port": upstream.addr.port(), "ttl_seconds": 300});
    api.expect(registry_a, "POST", &format!("/api/v1/services/{id}/instances"), instance, 201)?;

    // 2. A route made on one gateway is served by the other.
    let route = |name: &str, extra: Value| {
        let mut body = json!({"name": name, "path_prefix": format!("/{name}"), "methods": ["GET"], "api_version": "v1", "service": "papers"});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        body
    };
    api.expect(gateway_a, "POST", "/v1/admin/routes", route("echo", json!({})), 201)?;
    let took = within(PROPAGATION, "the route made on gateway-a served by gateway-b", || {
        Ok(http(gateway_b, "GET", "/v1/echo/doc", None, None)?.status == 200)
    })?;
    println!("ok: a route made on gateway-a is served by gateway-b after {} ms", took.as_millis());

    // 3. A rate limit holds over both gateways combined.
    let policy = api.expect(
        gateway_a,
        "POST",
        "/v1/admin/rate-limit-policies",
        json!({"name": "ten-an-hour",
        "algorithm": "gcra", "rate": 10, "period_seconds": 3600, "burst": 9, "scope": "per_tenant_route"}),
        201,
    )?;
    api.expect(
        gateway_b,
        "POST",
        "/v1/admin/routes",
        route("limited", json!({"rate_limit_policy_id": policy["id"]})),
        201,
    )?;
    within(PROPAGATION, "the limited route on gateway-a", || {
        Ok(http(gateway_a, "GET", "/v1/limited/x", None, None)?.status != 404)
    })?;
    let mut allowed = 1; // the probe above was the first of the ten
    let mut limited = 0;
    for index in 0..29 {
        match http(if index % 2 == 0 { gateway_b } else { gateway_a }, "GET", "/v1/limited/x", None, None)?.status {
            200 => allowed += 1,
            429 => limited += 1,
            other => bail!("a rate-limited request answered {other}"),
        }
    }
    if (allowed, limited) != (10, 20) {
        bail!("30 requests over both gateways under a limit of ten: {allowed} allowed, {limited} refused");
    }
    println!("ok: a limit of ten over both gateways: {allowed} of 30 allowed, {limited} answered 429");

    // 4. A cache invalidation sent to one gateway evicts on the other.
    api.expect(
        gateway_a,
        "POST",
        "/v1/admin/routes",
        route("cached", json!({"cache": {"enabled": true, "ttl_seconds": 300}})),
        201,
    )?;
    within(PROPAGATION, "the cached route on gateway-b", || {
        Ok(http(gateway_b, "GET", "/v1/cached/doc", None, None)?.status == 200)
    })?;
    let before = upstream.hits();
    for gateway in [gateway_a, gateway_b, gateway_a, gateway_b] {
        http(gateway, "GET", "/v1/cached/doc", None, None)?;
    }
    if upstream.hits() != before {
        bail!("cached answers went upstream {} times", upstream.hits() - before);
    }
    api.expect(gateway_a, "POST", "/v1/admin/cache/invalidations", json!({"prefixes": ["/v1/cached/"]}), 200)?;
    let took = within(PROPAGATION, "gateway-b going upstream after the invalidation on gateway-a", || {
        http(gateway_b, "GET", "/v1/cached/doc", None, None)?;
        Ok(upstream.hits() > before)
    })?;
    println!("ok: an invalidation on gateway-a evicts on gateway-b within {} ms", took.as_millis());

    // 5. A gateway's SIGTERM lets the requests in flight finish.
    api.expect(gateway_a, "POST", "/v1/admin/routes", route("slow", json!({})), 201)?;
    within(PROPAGATION, "the slow route on gateway-b", || {
        Ok(http(gateway_b, "GET", "/v1/slow/ready", None, None)?.status != 404)
    })?;
    let in_flight: Vec<_> =
        (0..8).map(|_| std::thread::spawn(move || http(gateway_b, "GET", "/v1/slow/sleep", None, None))).collect();
    wait_until(Duration::from_secs(5), "eight slow requests upstream", || Ok(upstream.sleeping() >= 8))?;
    cluster.signal("gateway-b", "TERM")?;
    let mut finished = 0;
    for request in in_flight {
        match request.join().expect("a request thread") {
            Ok(HttpResponse { status: 200, .. }) => finished += 1,
            Ok(other) => bail!("a request in flight at SIGTERM answered {}: {}", other.status, other.body),
            Err(error) => bail!("a request in flight at SIGTERM was lost: {error:#}"),
        }
    }
    cluster.wait_stopped("gateway-b", Duration::from_secs(15))?;
    println!("ok: SIGTERM to gateway-b: {finished} of 8 requests in flight finished with 200, then it stopped");

    // 6. A gateway killed mid-load: the client retries on the other and loses nothing.
    cluster.start("gateway-b")?;
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let sent = sent.clone();
        std::thread::spawn(move || -> Result<(usize, usize)> {
            let (mut answered, mut retried) = (0, 0);
            for index in 0..400 {
                let (first, other) = if index % 2 == 0 { (gateway_b, gateway_a) } else { (gateway_a, gateway_b) };
                sent.fetch_add(1, Ordering::SeqCst);
                let status = match http(first, "GET", "/v1/echo/load", None, None) {
                    Ok(response) => response.status,
                    // Refused or reset: the client's retry on the other replica.
                    Err(_) => {
                        retried += 1;
                        http(other, "GET", "/v1/echo/load", None, None)?.status
                    }
                };
                if status != 200 {
                    bail!("request {index} answered {status}");
                }
                answered += 1;
            }
            Ok((answered, retried))
        })
    };
    wait_until(Duration::from_secs(30), "a quarter of the load", || Ok(sent.load(Ordering::SeqCst) >= 100))?;
    cluster.signal("gateway-b", "KILL")?;
    let (answered, retried) = load.join().expect("the load thread")?;
    println!(
        "ok: gateway-b killed mid-load: {answered} of 400 requests answered 200, {retried} after a retry on gateway-a"
    );
    cluster.wait_stopped("gateway-b", Duration::from_secs(5))?;
    cluster.start("gateway-b")?;

    // 7. Every dashboard query returns data from the live Prometheus.
    match prometheus {
        Some(prometheus) => {
            prometheus.check_dashboards(root, &api, &cluster)?;
            prometheus.check_rules()?;
        }
        None => println!("skipped: {} is not installed, the dashboards were not queried", options.prometheus),
    }
    println!("cluster checks passed in {:.1} s", started.elapsed().as_secs_f64());
    // The logs and Prometheus's data stay only when a check failed.
    drop(cluster);
    std::fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(())
}

fn build_pake(root: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo).args(["build", "--quiet", "-p", "pake"]).current_dir(root).status()?;
    if !status.success() {
        bail!("cargo build -p pake failed ({status})");
    }
    Ok(crate::bench::target_dir(root).join("debug/pake"))
}

/// A free port on `host`.
fn free_addr(host: Ipv4Addr) -> Result<SocketAddr> {
    let listener = TcpListener::bind((host, 0)).with_context(|| format!("binding {host}"))?;
    Ok(listener.local_addr()?)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// Where the nodes live: their addresses, the host address the rest of the cluster (the
/// upstream, Prometheus, the relays to PostgreSQL and Redis) listens on, and the network
/// namespaces, removed with the bridge when this is dropped.
struct Network {
    nodes: Vec<SocketAddr>,
    host: Ipv4Addr,
    /// (node, namespace) when the nodes run in namespaces.
    namespaces: Vec<String>,
    bridge: Option<String>,
}

impl Network {
    /// Loopback addresses of their own (127.0.0.x) and free ports.
    fn loopback() -> Result<Network> {
        let nodes =
            NODES.iter().map(|(_, _, last)| free_addr(Ipv4Addr::new(127, 0, 0, *last))).collect::<Result<_>>()?;
        Ok(Network { nodes, host: Ipv4Addr::new(127, 0, 0, 51), namespaces: Vec::new(), bridge: None })
    }

    /// A network namespace per node, joined by a bridge whose address is the host's; each
    /// node listens on its service's usual port.
    fn namespaces(suffix: &str) -> Result<Network> {
        // A subnet of its own for each run: 10.213.N.0/24, N from the run's suffix.
        let subnet = 100 + u8::from_str_radix(&suffix[..2], 16).unwrap_or(0) % 100;
        let host = Ipv4Addr::new(10, 213, subnet, 1);
        let bridge = format!("pk{}", &suffix[..8]);
        let mut network = Network { nodes: Vec::new(), host, namespaces: Vec::new(), bridge: None };
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        network.bridge = Some(bridge.clone());
        ip(&["addr", "add", &format!("{host}/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for (index, (name, service, last)) in NODES.iter().enumerate() {
            let namespace = format!("pk{}-{name}", &suffix[..8]);
            ip(&["netns", "add", &namespace])?;
            network.namespaces.push(namespace.clone());
            let (outside, inside) = (format!("pk{}{index}", &suffix[..8]), format!("pk{}{index}i", &suffix[..8]));
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
            ip(&["link", "set", &outside, "master", &bridge, "up"])?;
            ip(&["link", "set", &inside, "netns", &namespace])?;
            let address = Ipv4Addr::new(10, 213, subnet, *last);
            ip(&["-n", &namespace, "addr", "add", &format!("{address}/24"), "dev", &inside])?;
            ip(&["-n", &namespace, "link", "set", &inside, "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
            ip(&["-n", &namespace, "route", "add", "default", "via", &host.to_string()])?;
            let port = match *service {
                "registry" => 8000,
                "gateway" => 8080,
                "performance" => 8090,
                _ => 9090,
            };
            network.nodes.push(SocketAddr::from((address, port)));
        }
        Ok(network)
    }

    /// The command that runs `program` on node `index`'s host.
    fn command(&self, index: usize, program: &Path) -> Command {
        match self.namespaces.get(index) {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }

    /// `url` (postgres://… or redis://…) as the nodes reach it: through a relay on the
    /// bridge when they live in namespaces, whose loopback is their own.
    fn reach(&self, url: &str) -> Result<String> {
        if self.namespaces.is_empty() {
            return Ok(url.to_string());
        }
        let (scheme, rest) = url.split_once("://").context("a URL")?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, target) = match authority.rsplit_once('@') {
            Some((user, target)) => (format!("{user}@"), target),
            None => (String::new(), authority),
        };
        let relay = Relay::start(self.host, target.to_string())?;
        Ok(format!("{scheme}://{user}{relay}/{path}"))
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for namespace in &self.namespaces {
            let _ = ip(&["netns", "del", namespace]);
        }
        if let Some(bridge) = &self.bridge {
            let _ = ip(&["link", "del", bridge]);
        }
    }
}

fn ip(arguments: &[&str]) -> Result<()> {
    let output = Command::new("ip").args(arguments).output().context("running ip (iproute2)")?;
    if !output.status.success() {
        bail!("ip {}: {}", arguments.join(" "), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Copies connections made to an address on the bridge to `target` (PostgreSQL or Redis on
/// the machine's loopback), for as long as the program runs.
struct Relay;

impl Relay {
    fn start(host: Ipv4Addr, target: String) -> Result<SocketAddr> {
        let listener = TcpListener::bind((host, 0))?;
        let addr = listener.local_addr()?;
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let target = target.clone();
                std::thread::spawn(move || {
                    let Ok(server) = TcpStream::connect(&target) else { return };
                    let (Ok(client_reader), Ok(server_reader)) = (client.try_clone(), server.try_clone()) else {
                        return;
                    };
                    let pipe = |mut from: TcpStream, mut to: TcpStream| {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        })
                    };
                    let upstream = pipe(client_reader, server);
                    let downstream = pipe(server_reader, client);
                    let _ = (upstream.join(), downstream.join());
                });
            }
        });
        Ok(addr)
    }
}

/// Polls `done` every 20 ms until it holds; fails after `limit`. Returns how long it took.
fn within(limit: Duration, what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let started = Instant::now();
    loop {
        if done()? {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            bail!("{what}: not within {} ms", limit.as_millis());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Api {
    token: String,
}

impl Api {
    fn get(&self, addr: SocketAddr, path: &str) -> Result<HttpResponse> {
        http(addr, "GET", path, Some(&self.token), None)
    }

    fn expect(&self, addr: SocketAddr, method: &str, path: &str, body: Value, status: u16) -> Result<Value> {
        let response = http(addr, method, path, Some(&self.token), Some(&body.to_string()))?;
        if response.status != status {
            bail!("{method} http://{addr}{path} answered {} (expected {status}): {}", response.status, response.body);
        }
        serde_json::from_str(&response.body).with_context(|| format!("{method} {path} answered invalid JSON"))
    }
}

/// A token for every API, signed with the cluster's shared secret.
fn token(cluster: &Cluster) -> Result<String> {
    let scopes = [
        "mesh:read",
        "mesh:write",
        "gateway:admin",
        "performance:read",
        "performance:write",
        "monitoring:read",
        "monitoring:write",
    ];
    let mut command = Command::new(&cluster.pake);
    command.arg("token").envs(cluster.env.iter().map(|(k, v)| (k, v)));
    for scope in scopes {
        command.arg(format!("--scope={scope}"));
    }
    let output = command.output().context("running pake token")?;
    if !output.status.success() {
        bail!("pake token failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

struct Cluster {
    pake: PathBuf,
    work: PathBuf,
    env: Vec<(String, String)>,
    /// Dropped (stopped) before the network they live in.
    nodes: Vec<(String, ChildGuard)>,
    network: Network,
}

impl Cluster {
    fn index(&self, name: &str) -> usize {
        NODES.iter().position(|(node, _, _)| *node == name).expect("a node")
    }

    /// Starts a node and waits until it answers its readiness endpoint.
    fn start(&mut self, name: &str) -> Result<()> {
        let index = self.index(name);
        let (_, service, _) = NODES[index];
        let addr = self.network.nodes[index];
        let data = self.work.join(name);
        std::fs::create_dir_all(&data)?;
        let log_path = self.work.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut command = self.network.command(index, &self.pake);
        command
            .args(["serve", service])
            .env_clear()
            .envs(std::env::vars().filter(|(key, _)| !key.starts_with("PAKE_")))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(format!("PAKE_{}_ADDR", service.to_uppercase()), addr.to_string())
            .env("PAKE_DATA_DIR", &data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = command.spawn().with_context(|| format!("starting {name}"))?;
        self.nodes.retain(|(node, _)| node != name);
        self.nodes.push((name.to_string(), ChildGuard { name: name.to_string(), child }));
        // The readiness paths the Helm chart probes.
        let ready = if service == "gateway" { "/v1/health" } else { "/health/ready" };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((_, guard)) = self.nodes.iter_mut().find(|(node, _)| node == name) {
                guard.check_running(&log_path)?;
            }
            if http(addr, "GET", ready, None, None).is_ok_and(|response| response.status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{name} did not answer {ready} within 60 s; see {}", log_path.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&mut self, name: &str, signal: &str) -> Result<()> {
        let (_, guard) = self.nodes.iter().find(|(node, _)| node == name).context("a running node")?;
        let pid = guard.child.id().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status()?;
        if !status.success() {
            bail!("kill -{signal} {name} failed");
        }
        Ok(())
    }

    fn wait_stopped(&mut self, name: &str, limit: Duration) -> Result<()> {
        let (_, guard) = self.nodes.iter_mut().find(|(node, _)| node == name).context("a node")?;
        let deadline = Instant::now() + limit;
        while guard.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("{name} did not stop within {} s", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        NODES
            .iter()
            .zip(&self.network.nodes)
            .map(|((name, _, _), addr)| format!("{name} {addr}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Prometheus scrape jobs: `pake-<service>` and its targets.
    fn jobs(&self) -> Vec<(String, Vec<SocketAddr>)> {
        let mut jobs: Vec<(String, Vec<SocketAddr>)> = Vec::new();
        for ((_, service, _), addr) in NODES.iter().zip(&self.network.nodes) {
            let job = format!("pake-{service}");
            match jobs.iter_mut().find(|(name, _)| *name == job) {
                Some((_, targets)) => targets.push(*addr),
                None => jobs.push((job, vec![*addr])),
            }
        }
        jobs
    }
}

/// A database of its own, dropped at the end.
struct Database {
    server: String,
    name: String,
}

impl Database {
    fn create(server: &str, name: &str) -> Result<Database> {
        psql(server, &format!("CREATE DATABASE {name}"))?;
        Ok(Database { server: server.to_string(), name: name.to_string() })
    }

    fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        if let Err(error) = psql(&self.server, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)) {
            eprintln!("could not drop the database {}: {error:#}", self.name);
        }
    }
}

fn psql(server: &str, sql: &str) -> Result<()> {
    let output =
        Command::new("psql").arg(format!("{server}/postgres")).args(["-v", "ON_ERROR_STOP=1", "-qc", sql]).output()?;
    if !output.status.success() {
        bail!("psql {sql:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// The Redis keys under the cluster's prefix, deleted at the end.
struct RedisKeys {
    url: String,
    prefix: String,
}

impl Drop for RedisKeys {
    fn drop(&mut self) {
        let keys = Command::new("redis-cli")
            .args(["-u", &self.url, "--scan", "--pattern", &format!("{}*", self.prefix)])
            .output();
        if let Ok(output) = keys {
            for key in String::from_utf8_lossy(&output.stdout).lines().filter(|key| !key.is_empty()) {
                let _ = Command::new("redis-cli").args(["-u", &self.url, "DEL", key]).output();
            }
        }
    }
}

/// The instance behind the routes: answers every path with 200 and the number of requests
/// it has seen, `/…/sleep` after 1.5 s, `/…/fail` with 503.
struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    sleeping: Arc<AtomicUsize>,
}

impl Upstream {
    fn start(host: Ipv4Addr) -> Result<Upstream> {
        let listener = TcpListener::bind((host, 0))?;
        let addr = listener.local_addr()?;
        let (hits, sleeping) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (counted, asleep) = (hits.clone(), sleeping.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (counted, asleep) = (counted.clone(), asleep.clone());
                std::thread::spawn(move || serve_one(stream, &counted, &asleep));
            }
        });
        Ok(Upstream { addr, hits, sleeping })
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn sleeping(&self) -> usize {
        self.sleeping.load(Ordering::SeqCst)
    }
}

fn serve_one(mut stream: TcpStream, hits: &AtomicUsize, sleeping: &AtomicUsize) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let status = if path.ends_with("/fail") { "503 Service Unavailable" } else { "200 OK" };
    if path != "/health" {
        hits.fetch_add(1, Ordering::SeqCst);
    }
    if path.ends_with("/sleep") {
        sleeping.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1500));
        sleeping.fetch_sub(1, Ordering::SeqCst);
    }
    let body = json!({"path": path, "hits": hits.load(Ordering::SeqCst)}).to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Debian's Prometheus scraping the cluster every second with the chart's rules.
struct Prometheus {
    addr: SocketAddr,
    _process: ChildGuard,
}

impl Prometheus {
    fn start(program: &str, root: &Path, work: &Path, cluster: &Cluster) -> Result<Option<Prometheus>> {
        if Command::new(program).arg("--version").output().is_err() {
            return Ok(None);
        }
        let addr = free_addr(cluster.network.host)?;
        let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
        config.push_str(&format!("rule_files:\n  - {}\n", root.join("deploy/prometheus/rules.yaml").display()));
        config.push_str("scrape_configs:\n");
        for (job, targets) in cluster.jobs() {
            let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config_path = work.join("prometheus.yaml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(work.join("prometheus.log"))?;
        let child = Command::new(program)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", work.join("prometheus-data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut process = ChildGuard { name: "prometheus".into(), child };
        wait_until(Duration::from_secs(30), "prometheus", || {
            process.check_running(&work.join("prometheus.log"))?;
            Ok(http(addr, "GET", "/-/ready", None, None).is_ok_and(|r| r.status == 200))
        })?;
        Ok(Some(Prometheus { addr, _process: process }))
    }

    fn query(&self, expression: &str) -> Result<Vec<Value>> {
        let path = format!("/api/v1/query?query={}", percent_encode(expression));
        let response = http(self.addr, "GET", &path, None, None)?;
        let answer: Value = serde_json::from_str(&response.body).context("prometheus answered invalid JSON")?;
        if answer["status"] != "success" {
            bail!("prometheus refused {expression}: {}", answer["error"]);
        }
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Makes every kind of event the dashboards show happen, then requires each dashboard
    /// query to return at least one series.
    fn check_dashboards(&self, root: &Path, api: &Api, cluster: &Cluster) -> Result<()> {
        let addr = |name: &str| cluster.network.nodes[cluster.index(name)];
        let (gateway_a, gateway_b) = (addr("gateway-a"), addr("gateway-b"));
        // An upstream that refuses connections opens its breaker; 503s make 5xx ratios and
        // retries; an SLO of the service with failures burns; a policy recommends replicas.
        let broken = api.expect(
            addr("registry-b"),
            "POST",
            "/api/v1/services/register",
            json!({"name": "broken", "version": "1.0.0"}),
            201,
        )?;
        let closed = free_addr(cluster.network.host)?;
        api.expect(
            addr("registry-b"),
            "POST",
            &format!("/api/v1/services/{}/instances", broken["id"].as_str().unwrap_or_default()),
            json!({"address": cluster.network.host.to_string(), "port": closed.port(), "ttl_seconds": 300}),
            201,
        )?;
        let retried = json!({"retry": {"max_attempts": 1, "retry_on": ["5xx"], "budget_percent": 100}});
        let mut route = json!({"name": "flaky", "path_prefix": "/flaky", "methods": ["GET"], "api_version": "v1", "service": "papers"});
        route.as_object_mut().expect("an object").extend(retried.as_object().cloned().unwrap_or_default());
        api.expect(gateway_a, "POST", "/v1/admin/routes", route, 201)?;
        api.expect(gateway_a, "POST", "/v1/admin/routes", json!({"name": "broken", "path_prefix": "/broken", "methods": ["GET"], "api_version": "v1", "service": "broken"}), 201)?;
        api.expect(
            addr("performance"),
            "POST",
            "/api/v1/slos",
            json!({"name": "availability", "service": "papers", "objective": "availability", "target": 99.9}),
            201,
        )?;
        api.expect(
            addr("performance"),
            "POST",
            "/api/v1/autoscaling-policies",
            json!({"service": "papers", "min_replicas": 1, "max_replicas": 4, "target_rps_per_replica": 5}),
            201,
        )?;
        let expressions = dashboard_expressions(root)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let started = Instant::now();
        loop {
            for gateway in [gateway_a, gateway_b] {
                for path in
                    ["/v1/echo/a", "/v1/cached/doc", "/v1/flaky/fail", "/v1/broken/x", "/v1/limited/x", "/v1/echo/b"]
                {
                    let _ = http(gateway, "GET", path, None, None);
                }
                let _ = http(
                    gateway,
                    "POST",
                    "/v1/auth/token",
                    None,
                    Some(
                        r#"{"grant_type": "client_credentials", "client_id": "pk_nobody", "client_secret": "not-a-secret-of-anyone-at-all-000"}"#,
                    ),
                );
            }
            for registry in [addr("registry-a"), addr("registry-b")] {
                let _ = api.get(registry, "/api/v1/services");
            }
            let mut empty = Vec::new();
            for (where_, expression) in &expressions {
                if self.query(&expression.replace("$__rate_interval", "20s"))?.is_empty() {
                    empty.push(format!("{where_}: {expression}"));
                }
            }
            if empty.is_empty() {
                println!(
                    "ok: all {} dashboard queries return data from Prometheus scraping the cluster (after {:.0} s of traffic)",
                    expressions.len(),
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} dashboard queries return no data from the live Prometheus:\n  {}",
                    empty.len(),
                    empty.join("\n  ")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    /// Every rule of deploy/prometheus/rules.yaml evaluates without error on the cluster's
    /// series, and the SLO page (made to burn by the dashboards' check) fires.
    fn check_rules(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let response = http(self.addr, "GET", "/api/v1/rules", None, None)?;
            let answer: Value = serde_json::from_str(&response.body).context("prometheus answered invalid JSON")?;
            let rules: Vec<&Value> = answer["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|group| group["rules"].as_array().into_iter().flatten())
                .collect();
            if rules.is_empty() {
                bail!("prometheus loaded no rules: {}", response.body);
            }
            let failing: Vec<String> = rules
                .iter()
                .filter(|rule| rule["health"] == "err")
                .map(|rule| format!("{}: {}", rule["name"], rule["lastError"]))
                .collect();
            if !failing.is_empty() {
                bail!("rules that fail to evaluate:\n  {}", failing.join("\n  "));
            }
            let firing = self.query(r#"ALERTS{alertname="PakeSLOErrorBudgetBurnPage", alertstate="firing"}"#)?;
            let evaluated = rules.iter().all(|rule| rule["health"] == "ok");
            if evaluated && !firing.is_empty() {
                let services: Vec<&str> =
                    firing.iter().filter_map(|alert| alert["metric"]["service"].as_str()).collect();
                println!(
                    "ok: all {} rules evaluate without error; PakeSLOErrorBudgetBurnPage fires for {}",
                    rules.len(),
                    services.join(", ")
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "within 30 s: rules evaluated {evaluated}, PakeSLOErrorBudgetBurnPage firing {}",
                    !firing.is_empty()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// (panel, expression) of every query in deploy/grafana/*.json.
fn dashboard_expressions(root: &Path) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(root.join("deploy/grafana"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    paths.sort();
    fn walk(file: &str, panels: &[Value], found: &mut Vec<(String, String)>) {
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expression) = target["expr"].as_str() {
                    found.push((format!("{file} {:?}", panel["title"].as_str().unwrap_or("")), expression.to_string()));
                }
            }
            walk(file, panel["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), found);
        }
    }
    for path in paths {
        let board: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        let file = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        walk(&file, board["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), &mut found);
    }
    Ok(found)
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
