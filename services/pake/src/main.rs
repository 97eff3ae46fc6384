//! `pake`: runs the platform. `pake serve` (or plain `pake`) starts every implemented
//! service, each on its own port; `pake serve registry` starts one; `pake token` mints a
//! platform token for an operator. Every other command (`pake services ls`, `pake apply
//! -f`, …) is the operator's CLI over the generated clients, in [`cli`].
//!
//! Configuration comes from flags or `PAKE_*` environment variables. With no database URL
//! the services use an embedded SQLite file under the data directory, so a bare machine
//! runs the platform with nothing installed.

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use pake_observe::{LogFormat, Metrics};
use pake_trace::server::ServerSpans;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

mod cli;
mod feeds;

#[derive(Parser)]
#[command(name = "pake", version, about = "The PAKE platform")]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(flatten)]
    target: cli::Target,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Clone)]
#[command(next_help_heading = "Platform options (serve, token)")]
struct Config {
    /// PostgreSQL URL (postgres://…). Without it, an embedded SQLite file under the data
    /// directory is used.
    #[arg(long, env = "PAKE_DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// Where embedded state lives (the SQLite file, the generated token secret).
    #[arg(long, env = "PAKE_DATA_DIR", default_value = "data", global = true)]
    data_dir: PathBuf,
    /// An HS256 secret (32 bytes or more) for platform tokens. Alone, tokens are signed
    /// with it; beside a key file, tokens signed with it are still accepted.
    #[arg(long, env = "PAKE_TOKEN_SECRET", global = true, hide_env_values = true)]
    token_secret: Option<String>,
    /// A PEM private key (Ed25519 or RSA) that signs tokens; its public key is served as
    /// JWKS. Without it or a secret, an Ed25519 key is generated once into the data
    /// directory.
    #[arg(long, env = "PAKE_TOKEN_KEY_FILE", global = true)]
    token_key_file: Option<PathBuf>,
    /// The key signing tokens before the last rotation: still accepted and published until
    /// its tokens expire.
    #[arg(long, env = "PAKE_TOKEN_PREVIOUS_KEY_FILE", global = true)]
    token_previous_key_file: Option<PathBuf>,
    /// Lifetime of tokens the gateway issues, in seconds.
    #[arg(long, env = "PAKE_TOKEN_TTL_SECONDS", default_value_t = 3600, global = true)]
    token_ttl_seconds: u64,
    /// Redis URL (redis://host:port/). With it, gateway replicas share rate limits and an
    /// L2 response cache; without it both stay in process.
    #[arg(long, env = "PAKE_REDIS_URL", global = true, hide_env_values = true)]
    redis_url: Option<String>,
    /// Prefix of every Redis key and channel the gateway uses.
    #[arg(long, env = "PAKE_REDIS_PREFIX", default_value = "pake:", global = true)]
    redis_prefix: String,
    /// Token requests the gateway allows per second per address, and attempts that need
    /// Argon2 per client id.
    #[arg(long, env = "PAKE_TOKEN_REQUESTS_PER_SECOND", default_value_t = 20, global = true)]
    token_requests_per_second: u64,
    /// CA certificates (a PEM file) the gateway trusts for https instances, besides the
    /// system's: for services whose certificates come from an internal CA.
    #[arg(long, env = "PAKE_UPSTREAM_CA_FILE", global = true)]
    upstream_ca_file: Option<PathBuf>,
    /// Load balancers in front of the gateway (comma-separated CIDRs or addresses) whose
    /// X-Forwarded-For is believed: the client is then the right-most address it lists
    /// that is not one of them. Unset: the connection's peer is the client.
    #[arg(long, env = "PAKE_TRUSTED_PROXIES", global = true, value_parser = pake_gateway::forwarded::TrustedProxies::parse)]
    trusted_proxies: Option<pake_gateway::forwarded::TrustedProxies>,
    /// Memory for the gateway's in-process response cache, in bytes.
    #[arg(long, env = "PAKE_CACHE_BYTES", default_value_t = 64 * 1024 * 1024, global = true)]
    cache_bytes: u64,
    /// Public id of the first admin API client, created (or reset) at start with
    /// PAKE_ADMIN_CLIENT_SECRET and the gateway:admin, mesh:read and mesh:write scopes.
    #[arg(long, env = "PAKE_ADMIN_CLIENT_ID", global = true, requires = "admin_client_secret")]
    admin_client_id: Option<String>,
    /// Its secret (32 characters or more). There is no default admin credential.
    #[arg(long, env = "PAKE_ADMIN_CLIENT_SECRET", global = true, hide_env_values = true)]
    admin_client_secret: Option<String>,
    /// Address of the registry (service mesh) API.
    #[arg(long, env = "PAKE_REGISTRY_ADDR", default_value = "127.0.0.1:8000", global = true)]
    registry_addr: SocketAddr,
    /// Address of the gateway: its API and the data plane.
    #[arg(long, env = "PAKE_GATEWAY_ADDR", default_value = "127.0.0.1:8080", global = true)]
    gateway_addr: SocketAddr,
    /// Address of the performance (SLO, statistics, auto-scaling) API.
    #[arg(long, env = "PAKE_PERFORMANCE_ADDR", default_value = "127.0.0.1:8090", global = true)]
    performance_addr: SocketAddr,
    /// The performance service the gateway sends its request samples to when it does not
    /// run in the same process (http://host:port); unset, such a gateway sends none.
    /// Operator commands call it there too (default http://127.0.0.1:8090).
    #[arg(long, env = "PAKE_PERFORMANCE_URL", global = true)]
    performance_url: Option<String>,
    /// Address of the monitoring (metrics, health, alerting) API.
    #[arg(long, env = "PAKE_MONITORING_ADDR", default_value = "127.0.0.1:9090", global = true)]
    monitoring_addr: SocketAddr,
    /// Where other monitoring replicas reach this one itself (http://pod-ip:9090), not
    /// through a load balancer: followers pass pushes on to the leader there. By default
    /// http:// and the monitoring address (an unspecified IP replaced by 127.0.0.1).
    #[arg(long, env = "PAKE_MONITORING_ADVERTISE_URL", global = true)]
    monitoring_advertise_url: Option<String>,
    /// Where users reach the monitoring service (a load balancer's or Service's address):
    /// the `externalURL` and alert links of notifications. By default the advertised URL.
    #[arg(long, env = "PAKE_MONITORING_EXTERNAL_URL", global = true)]
    monitoring_external_url: Option<String>,
    /// A file holding the 32 bytes that seal alert receivers' header values in the store.
    /// Without it, a key is generated once into the data directory; replicas sharing a
    /// PostgreSQL store must share the key.
    #[arg(long, env = "PAKE_MONITORING_SEALING_KEY_FILE", global = true)]
    monitoring_sealing_key_file: Option<PathBuf>,
    /// The most series the monitoring service keeps; pushes beyond are refused (422).
    #[arg(long, env = "PAKE_MONITORING_MAX_SERIES", default_value_t = 100_000, global = true)]
    monitoring_max_series: usize,
    /// Hours the monitoring service keeps a trace (from its first span's start).
    #[arg(long, env = "PAKE_TRACE_RETENTION_HOURS", default_value_t = 24, global = true)]
    trace_retention_hours: u64,
    /// The most spans the monitoring service's trace store holds; beyond, the oldest
    /// traces are evicted whole.
    #[arg(long, env = "PAKE_TRACE_MAX_SPANS", default_value_t = 1_000_000, global = true)]
    trace_max_spans: usize,
    /// Seconds between two scrapes of the PAKE services and of registered instances
    /// that declare a `metrics_path`.
    #[arg(long, env = "PAKE_SCRAPE_INTERVAL_SECONDS", default_value_t = 5, global = true)]
    scrape_interval_seconds: u64,
    /// The PAKE services the monitoring service scrapes, as `name=url` pairs separated by
    /// commas (`registry=http://pake-registry:8000/metrics,…`), where they do not listen
    /// at the addresses above (separate hosts, a cluster's service names); empty: none.
    /// Unset: the registry, gateway and performance addresses of this configuration.
    #[arg(long, env = "PAKE_SCRAPE_SERVICES", global = true, value_parser = scrape_services)]
    scrape_services: Option<ScrapeServices>,
    /// Seconds one scrape may take.
    #[arg(long, env = "PAKE_SCRAPE_TIMEOUT_SECONDS", default_value_t = 2, global = true)]
    scrape_timeout_seconds: u64,
    /// The most simulated users one benchmark may ask for.
    #[arg(long, env = "PAKE_BENCHMARK_MAX_USERS", default_value_t = 1000, global = true)]
    benchmark_max_users: u64,
    /// The gateway benchmarks send their load through (http://host:port), the only target
    /// they may have. Unset: this configuration's gateway address.
    #[arg(long, env = "PAKE_BENCHMARK_GATEWAY_URL", global = true)]
    benchmark_gateway_url: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "PAKE_LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,
    /// Seconds a client has to send a complete request head: from accept for a
    /// connection's first request, from its first byte for later ones. Shrinks towards 1 s
    /// as the process nears its connection cap.
    #[arg(long, env = "PAKE_HEADER_TIMEOUT_SECONDS", default_value_t = 20, global = true)]
    header_timeout_seconds: u64,
    /// Seconds a client connection may stay open without a request in flight (HTTP/1.1
    /// keep-alive, HTTP/2 without streams). Shrinks towards 1 s as the process nears its
    /// connection cap.
    #[arg(long, env = "PAKE_IDLE_TIMEOUT_SECONDS", default_value_t = 60, global = true)]
    idle_timeout_seconds: u64,
    /// Client connections the process holds at most, over all its services; beyond, new
    /// ones are answered 503. By default derived from the descriptor limit, leaving room for
    /// upstream connections, the database pools and files.
    #[arg(long, env = "PAKE_MAX_CONNECTIONS", global = true)]
    max_connections: Option<usize>,
}

/// Scrape targets named on the command line: `(service, metrics URL)` pairs.
#[derive(Clone, Debug, PartialEq)]
struct ScrapeServices(Vec<(String, String)>);

fn scrape_services(text: &str) -> Result<ScrapeServices, String> {
    let mut listed = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
        let Some((name, url)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not name=url"));
        };
        let (name, url) = (name.trim(), url.trim());
        let valid_name = name.starts_with(|c: char| c.is_ascii_lowercase())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid_name {
            return Err(format!("{name:?} is not a service name (lowercase letters, digits and -)"));
        }
        match url.parse::<axum::http::Uri>() {
            Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {}
            _ => return Err(format!("{url:?} is not an http(s) URL")),
        }
        listed.push((name.to_string(), url.to_string()));
    }
    Ok(ScrapeServices(listed))
}

#[derive(Subcommand)]
enum Command {
    /// Run services (all implemented ones when none is named).
    #[command(after_help = "Examples:\n  pake serve\n  PAKE_DATABASE_URL=postgres://… pake serve registry gateway")]
    Serve {
        /// The services to run; all of them when none is named.
        #[arg(value_enum)]
        services: Vec<ServiceName>,
    },
    /// Print a platform token signed with the configured secret.
    #[command(after_help = "Example:\n  pake token --scope mesh:read --scope mesh:write --ttl 600")]
    Token {
        /// A scope to grant (repeat for several), e.g. mesh:read.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Who the token stands for.
        #[arg(long, default_value = "operator")]
        subject: String,
        /// The tenant the token carries.
        #[arg(long)]
        tenant: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Apply the store's pending migrations and exit: a deployment's migration step
    /// (a Helm hook), before replicas of a new version start. `serve` applies them too.
    #[command(after_help = "Example:\n  PAKE_DATABASE_URL=postgres://pake@db/pake pake migrate")]
    Migrate,
    #[command(flatten)]
    Operator(cli::Command),
}

/// The services this binary can run. Services not implemented yet are absent, not stubbed.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum ServiceName {
    Registry,
    Gateway,
    Performance,
    Monitoring,
}

const ALL_SERVICES: &[ServiceName] =
    &[ServiceName::Registry, ServiceName::Gateway, ServiceName::Performance, ServiceName::Monitoring];

impl Config {
    fn database_url(&self) -> Result<String> {
        match &self.database_url {
            Some(url) => Ok(url.clone()),
            None => {
                std::fs::create_dir_all(&self.data_dir)
                    .with_context(|| format!("creating the data directory {}", self.data_dir.display()))?;
                Ok(format!("sqlite://{}", self.data_dir.join("pake.db").display()))
            }
        }
    }

    fn token_secret(&self) -> Result<Option<Vec<u8>>> {
        match &self.token_secret {
            Some(secret) if secret.len() < pake_tokens::MIN_SECRET_BYTES => {
                bail!("PAKE_TOKEN_SECRET must be at least {} bytes", pake_tokens::MIN_SECRET_BYTES)
            }
            Some(secret) => Ok(Some(secret.as_bytes().to_vec())),
            None => Ok(None),
        }
    }

    /// The keys tokens are signed and verified with: a configured key file, else a
    /// configured secret, else the Ed25519 key kept in the data directory (created on first
    /// use).
    fn key_ring(&self) -> Result<pake_tokens::KeyRing> {
        let secret = self.token_secret()?;
        let read =
            |path: &Path| std::fs::read(path).with_context(|| format!("reading the key file {}", path.display()));
        let mut ring = match (&self.token_key_file, &secret) {
            (Some(path), _) => pake_tokens::KeyRing::from_private_pem(&read(path)?)
                .with_context(|| format!("loading the token key {}", path.display()))?,
            (None, Some(secret)) => pake_tokens::KeyRing::hs256(secret)?,
            (None, None) => self.generated_key()?,
        };
        if let (Some(secret), pake_tokens::Algorithm::EdDSA | pake_tokens::Algorithm::RS256) =
            (&secret, ring.signing_algorithm())
        {
            ring = ring.with_hs256_verification(secret)?;
        }
        if let Some(path) = &self.token_previous_key_file {
            ring = ring
                .with_previous_private_pem(&read(path)?)
                .with_context(|| format!("loading the previous token key {}", path.display()))?;
        }
        Ok(ring)
    }

    fn generated_key(&self) -> Result<pake_tokens::KeyRing> {
        let path = self.data_dir.join("token-key.pem");
        if let Ok(existing) = std::fs::read(&path) {
            return pake_tokens::KeyRing::from_private_pem(&existing)
                .with_context(|| format!("loading the token key {}", path.display()));
        }
        std::fs::create_dir_all(&self.data_dir)?;
        let (ring, pem) = pake_tokens::KeyRing::generate_ed25519()?;
        match write_private(&path, &pem) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated an Ed25519 token key for this data directory");
                Ok(ring)
            }
            // Another process sharing the data directory wrote it first: use theirs.
            Err(_) if path.exists() => pake_tokens::KeyRing::from_private_pem(&std::fs::read(&path)?)
                .with_context(|| format!("loading the token key {}", path.display())),
            Err(error) => Err(error),
        }
    }

    /// The listening limits of every service in this process, for `nofile` descriptors.
    fn listen_settings(&self, nofile: u64) -> pake_listen::Settings {
        pake_listen::Settings {
            header_timeout: Duration::from_secs(self.header_timeout_seconds.max(1)),
            idle_timeout: Duration::from_secs(self.idle_timeout_seconds.max(1)),
            max_connections: self.max_connections.unwrap_or_else(|| pake_listen::default_max_connections(nofile)),
            ..pake_listen::Settings::default()
        }
    }

    fn monitoring_options(&self) -> Result<pake_monitoring::MonitorOptions> {
        let key = match &self.monitoring_sealing_key_file {
            Some(path) => std::fs::read(path)
                .with_context(|| format!("reading the sealing key {}", path.display()))?
                .try_into()
                .map_err(|_| anyhow::anyhow!("the sealing key {} must hold exactly 32 bytes", path.display()))?,
            None => pake_monitoring::sealing_key_in(&self.data_dir).context("the monitoring sealing key")?,
        };
        let mut options = pake_monitoring::MonitorOptions::new(key);
        options.limits.max_series = self.monitoring_max_series.max(1);
        options.traces.retention = Duration::from_secs(self.trace_retention_hours.clamp(1, 24 * 365) * 3600);
        options.traces.max_spans = self.trace_max_spans.max(1);
        options.scrape.interval = Duration::from_secs(self.scrape_interval_seconds.max(1));
        options.scrape.timeout = Duration::from_secs(self.scrape_timeout_seconds.max(1));
        // The other PAKE services, wherever this process or another one runs them.
        let loopback = |addr: SocketAddr| {
            let ip = if addr.ip().is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { addr.ip() };
            format!("http://{}/metrics", SocketAddr::new(ip, addr.port()))
        };
        options.scrape.services = match &self.scrape_services {
            Some(ScrapeServices(listed)) => listed.clone(),
            None => vec![
                ("registry".into(), loopback(self.registry_addr)),
                ("gateway".into(), loopback(self.gateway_addr)),
                ("performance".into(), loopback(self.performance_addr)),
            ],
        };
        let advertised = match &self.monitoring_advertise_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => loopback(self.monitoring_addr).trim_end_matches("/metrics").to_string(),
        };
        options.external_url = self
            .monitoring_external_url
            .as_deref()
            .map(|url| url.trim_end_matches('/').to_string())
            .unwrap_or(advertised.clone());
        options.advertise_url = advertised;
        Ok(options)
    }

    fn gateway_options(&self, keys: pake_tokens::KeyRing) -> pake_gateway::GatewayOptions {
        let mut options = pake_gateway::GatewayOptions::new(keys);
        options.token_ttl = Duration::from_secs(self.token_ttl_seconds.clamp(1, 86_400));
        options.redis_url = self.redis_url.clone();
        options.redis_prefix = self.redis_prefix.clone();
        options.cache_bytes = self.cache_bytes;
        options.token_requests_per_second = self.token_requests_per_second;
        options.upstream_ca_file = self.upstream_ca_file.clone();
        options.trusted_proxies = self.trusted_proxies.clone().unwrap_or_default();
        options
    }
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents)?;
    Ok(())
}

/// The proxy path allocates small buffers at a high rate; mimalloc serves them with less
/// contention and fragmentation than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve { services: Vec::new() }) {
        Command::Serve { services } => {
            pake_observe::init_logging(cli.config.log_format);
            serve(&cli.config, cli.target.monitoring_url.as_deref(), &services).await
        }
        Command::Migrate => {
            pake_observe::init_logging(cli.config.log_format);
            let url = cli.config.database_url()?;
            let store = pake_registry::Store::open(&url).await.context("migrating the platform store")?;
            let version = store.schema_version().await.context("reading the schema version")?;
            store.close().await;
            println!("the platform store is at schema version {version}");
            Ok(())
        }
        Command::Token { scopes, subject, tenant, ttl } => {
            pake_observe::init_logging(cli.config.log_format);
            let issuer = cli.config.key_ring()?.issuer();
            let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
            println!("{}", issuer.issue(&subject, tenant.as_deref(), &scopes, Duration::from_secs(ttl)));
            Ok(())
        }
        Command::Operator(cli::Command::Completions { shell }) => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "pake", &mut std::io::stdout());
            Ok(())
        }
        // Operator commands log nothing; they print their results and exit with a code
        // that says how they failed.
        Command::Operator(command) => {
            let target = cli::Target { performance_url: cli.config.performance_url.clone(), ..cli.target };
            let code = cli::run(command, target).await;
            let _ = std::io::Write::flush(&mut std::io::stdout());
            std::process::exit(code)
        }
    }
}

/// Serves `services` in this process; `monitoring_url` is where the spans go when the
/// monitoring service runs elsewhere.
async fn serve(config: &Config, monitoring_url: Option<&str>, services: &[ServiceName]) -> Result<()> {
    // Started in one order whatever the order named: the monitoring service last, once
    // every other service here listens where it will be scraped.
    let named = if services.is_empty() { ALL_SERVICES } else { services };
    let services: Vec<ServiceName> = ALL_SERVICES.iter().copied().filter(|s| named.contains(s)).collect();
    let services = services.as_slice();
    if services.contains(&ServiceName::Performance) {
        // Before anything listens for signals: ctrl-c must still stop this process once a
        // benchmark's load generator has run in it.
        pake_performance::install_signal_handler();
    }
    // Every client connection is a descriptor: take all the system allows this process.
    let nofile = match pake_listen::raise_fd_limit() {
        Ok((before, after)) => {
            tracing::info!(
                soft = before.soft,
                hard = before.hard,
                raised_to = after.soft,
                "descriptor limit (RLIMIT_NOFILE)"
            );
            after.soft
        }
        Err(error) => {
            let limit = pake_listen::fd_limit();
            tracing::warn!(%error, soft = limit.soft, hard = limit.hard, "could not raise the descriptor limit");
            limit.soft
        }
    };
    let settings = config.listen_settings(nofile);
    tracing::info!(
        max_connections = settings.max_connections,
        header_timeout_s = settings.header_timeout.as_secs(),
        idle_timeout_s = settings.idle_timeout.as_secs(),
        "client connection limits (timeouts shrink as connections near the cap)"
    );
    let limits = pake_listen::Limits::new(settings);
    // Compile every contract schema the routers validate with now: a schema that does not
    // compile stops the start rather than failing the first request that needs it.
    pake_mesh_server::warm().map_err(anyhow::Error::msg).context("compiling the service-mesh contract's schemas")?;
    pake_gateway_server::warm().map_err(anyhow::Error::msg).context("compiling the gateway contract's schemas")?;
    pake_performance_server::warm()
        .map_err(anyhow::Error::msg)
        .context("compiling the performance contract's schemas")?;
    pake_monitoring_server::warm()
        .map_err(anyhow::Error::msg)
        .context("compiling the monitoring contract's schemas")?;
    let keys = config.key_ring()?;
    let verifier = keys.verifier();
    let url = config.database_url()?;
    let backend = if url.starts_with("sqlite:") { "sqlite (embedded)" } else { "postgres" };
    // One pool and one registry snapshot serve every service in this process: the
    // gateway routes from the same in-memory view the registry answers discovery from.
    let store = pake_registry::Store::open(&url).await.context("opening the platform store")?;
    let registry = Arc::new(pake_registry::Registry::start(store.clone()).await?);
    let mut running = tokio::task::JoinSet::new();
    // The configuration with the addresses the services of this process listen on.
    let mut bound = config.clone();
    // One span pipeline for every service in this process (PAKE_TRACING, PAKE_OTLP_ENDPOINT,
    // PAKE_TRACE_SAMPLE_RATIO, PAKE_TRACE_SLOW_MS).
    let telemetry = pake_trace::TraceConfig::from_env()
        .map_err(anyhow::Error::msg)
        .and_then(|config| pake_trace::Telemetry::start(config).context("starting the span pipeline"))?;
    if let (false, Some(url)) = (services.contains(&ServiceName::Monitoring), monitoring_url) {
        tracing::info!(%url, "spans go to the monitoring service at this URL");
        telemetry.add_sink(Arc::new(feeds::RemoteSpans::new(url, keys.issuer())));
    }
    // Where the gateway listens, once known (a port 0 becomes a real one when it starts).
    let mut gateway_addr = config.gateway_addr;
    // The gateway's request timings feed the performance service when both run here.
    let in_process = (services.contains(&ServiceName::Gateway) && services.contains(&ServiceName::Performance))
        .then(|| Arc::new(feeds::InProcessSamples::default()));
    let samples: Option<Arc<dyn pake_gateway::samples::SampleSink>> = match (&in_process, &config.performance_url) {
        (Some(local), _) => Some(local.clone()),
        (None, Some(url)) if services.contains(&ServiceName::Gateway) => {
            tracing::info!(%url, "the gateway sends its request samples to the performance service at this URL");
            Some(Arc::new(feeds::RemoteSamples::new(url, keys.issuer())))
        }
        _ => None,
    };
    for service in services {
        match service {
            ServiceName::Registry => {
                let metrics = Metrics::new("registry");
                let server = limits.server();
                server.register_metrics(&metrics);
                let router = pake_registry::router(registry.clone(), verifier.clone(), metrics);
                let router = ServerSpans::around(router, &telemetry, "registry", pake_mesh_server::OPERATIONS);
                let listener = bind(config.registry_addr, "registry").await?;
                bound.registry_addr = listener.local_addr()?;
                tracing::info!(addr = %listener.local_addr()?, backend, "registry listening; contract at /openapi.json, docs at /docs");
                running
                    .spawn(async move { server.serve_router(listener, router, pake_observe::shutdown_signal()).await });
            }
            ServiceName::Gateway => {
                let mut options = config.gateway_options(keys.clone());
                options.samples = samples.clone();
                options.tracer = telemetry.enabled().then(|| telemetry.recorder("gateway"));
                let gateway =
                    pake_gateway::Gateway::start(store.clone(), registry.snapshot_cell().clone(), options).await?;
                if let (Some(id), Some(secret)) = (&config.admin_client_id, &config.admin_client_secret) {
                    gateway.ensure_admin_client(id, secret).await?;
                    tracing::info!(client_id = %id, "admin API client ready (from configuration)");
                }
                let front = gateway.front();
                let server = limits.server();
                server.register_metrics(gateway.metrics());
                telemetry.register_metrics(gateway.metrics());
                let addr = resolve_port(config.gateway_addr)?;
                gateway_addr = addr;
                let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
                let mut workers = Vec::new();
                for worker in 0..threads {
                    let (listening, finished) = serve_on_own_thread(worker, addr, front.clone(), server.clone())?;
                    // Announce the address only once every worker accepts on it.
                    listening.await.map_err(std::io::Error::other)?.context("a gateway worker could not listen")?;
                    workers.push(finished);
                }
                tracing::info!(%addr, backend, threads, "gateway listening; admin API under /v1/admin, docs at /docs");
                running.spawn(async move {
                    // The gateway value owns the route-reload tasks; keep it for the servers' life.
                    let _gateway = gateway;
                    for worker in workers {
                        worker.await.map_err(std::io::Error::other)??;
                    }
                    Ok(())
                });
            }
            ServiceName::Performance => {
                let metrics = Metrics::new("performance");
                let server = limits.server();
                server.register_metrics(&metrics);
                let options = pake_performance::Options {
                    max_benchmark_users: config.benchmark_max_users,
                    gateway_url: Some(config.benchmark_gateway_url.clone().unwrap_or_else(|| {
                        let ip = gateway_addr.ip();
                        let ip = if ip.is_unspecified() { std::net::IpAddr::from([127, 0, 0, 1]) } else { ip };
                        format!("http://{}", SocketAddr::new(ip, gateway_addr.port()))
                    })),
                    ..pake_performance::Options::default()
                };
                // Current replicas come from the registry's own snapshot in this process.
                let instances: Arc<dyn pake_performance::Registry> = Arc::new(registry.snapshot_cell().clone());
                let performance = pake_performance::Performance::start(
                    store.clone(),
                    instances,
                    pake_performance::PerformanceMetrics::new(metrics),
                    options,
                )
                .await
                .context("starting the performance service")?;
                if let Some(local) = &in_process {
                    let _ = local.0.set(performance.clone());
                }
                let router = pake_performance::router(performance, verifier.clone());
                let router =
                    ServerSpans::around(router, &telemetry, "performance", pake_performance_server::OPERATIONS);
                let listener = bind(config.performance_addr, "performance service").await?;
                bound.performance_addr = listener.local_addr()?;
                tracing::info!(addr = %listener.local_addr()?, backend, "performance service listening; contract at /openapi.json, docs at /docs");
                running
                    .spawn(async move { server.serve_router(listener, router, pake_observe::shutdown_signal()).await });
            }
            ServiceName::Monitoring => {
                let metrics = Metrics::new("monitoring");
                let server = limits.server();
                server.register_metrics(&metrics);
                let listener = bind(config.monitoring_addr, "monitoring service").await?;
                bound.monitoring_addr = listener.local_addr()?;
                bound.gateway_addr = gateway_addr;
                // Scraped where the services of this process really listen (a port 0 in the
                // configuration is the one the system gave).
                let options = bound.monitoring_options()?;
                let monitor =
                    pake_monitoring::Monitor::start(store.clone(), registry.clone(), metrics.clone(), options)
                        .await
                        .context("starting the monitoring service")?;
                // The spans this process's services record become readable here at once.
                pake_monitoring::otel::connect(monitor.traces(), &telemetry);
                let router = pake_monitoring::router(&monitor, verifier.clone(), metrics);
                let router = ServerSpans::around(router, &telemetry, "monitoring", pake_monitoring_server::OPERATIONS);
                tracing::info!(addr = %listener.local_addr()?, backend, "monitoring service listening; contract at /openapi.json, docs at /docs");
                running.spawn(async move {
                    // The monitor owns evaluation, health checks and scraping; keep it for the server's life.
                    let _monitor = monitor;
                    server.serve_router(listener, router, pake_observe::shutdown_signal()).await
                });
            }
        }
    }
    tracing::info!(
        "mint a token for the APIs with: pake token --scope mesh:read --scope mesh:write --scope gateway:admin \
         --scope performance:read --scope performance:write --scope monitoring:read --scope monitoring:write"
    );
    while let Some(result) = running.join_next().await {
        result.context("a service task failed")?.context("a service stopped with an error")?;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn bind(addr: SocketAddr, service: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding the {service} to {addr}"))
}

/// A concrete port for `addr` (port 0 picks a free one), so that every worker thread can
/// bind the same one.
fn resolve_port(addr: SocketAddr) -> Result<SocketAddr> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    let probe = std::net::TcpListener::bind(addr).with_context(|| format!("binding the gateway to {addr}"))?;
    Ok(probe.local_addr()?)
}

/// Serves the gateway's `front` on its own thread with a single-threaded runtime and its own
/// `SO_REUSEPORT` listener, as nginx runs one event loop per worker: the kernel spreads
/// connections over the threads, and each connection's request, proxying and upstream
/// connection stay on one thread, with no work stealing or cross-thread wake-ups.
type Signal = tokio::sync::oneshot::Receiver<std::io::Result<()>>;

/// Returns when the worker listens, and when it has stopped.
fn serve_on_own_thread(
    worker: usize,
    addr: SocketAddr,
    front: pake_gateway::front::Front,
    server: pake_listen::Server,
) -> Result<(Signal, Signal)> {
    let (ready, listening) = tokio::sync::oneshot::channel();
    let (done, finished) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(format!("gateway-{worker}")).spawn(move || {
        let result = (|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let socket =
                    if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
                socket.set_reuseaddr(true)?;
                #[cfg(unix)]
                socket.set_reuseport(true)?;
                let listener = match socket.bind(addr).and_then(|()| socket.listen(1024)) {
                    Ok(listener) => {
                        let _ = ready.send(Ok(()));
                        listener
                    }
                    Err(error) => {
                        let _ = ready.send(Err(std::io::Error::new(error.kind(), error.to_string())));
                        return Err(error);
                    }
                };
                front.serve_with(listener, &server, pake_observe::shutdown_signal()).await
            })
        })();
        let _ = done.send(result);
    })?;
    Ok((listening, finished))
}

#[cfg(test)]
mod tests {
    use super::{Cli, ScrapeServices, scrape_services};

    #[test]
    fn scrape_services_are_name_url_pairs() {
        let listed = scrape_services("registry=http://pake-registry:8000/metrics, gateway=https://gw.example/metrics");
        let expected = ScrapeServices(vec![
            ("registry".into(), "http://pake-registry:8000/metrics".into()),
            ("gateway".into(), "https://gw.example/metrics".into()),
        ]);
        assert_eq!(listed, Ok(expected));
        assert_eq!(scrape_services(""), Ok(ScrapeServices(Vec::new())), "empty: scrape none");
        for bad in ["registry", "Registry=http://a/metrics", "registry=ftp://a/metrics", "registry=/metrics"] {
            let refused = scrape_services(bad);
            assert!(refused.is_err(), "{bad:?} gave {refused:?}");
        }
    }

    /// Client secrets are URL-safe base64 and may start with a dash.
    #[test]
    fn a_secret_may_start_with_a_dash() {
        let parsed =
            <Cli as clap::Parser>::try_parse_from(["pake", "login", "--client-id", "ops", "--client-secret", "-Pq4"]);
        assert!(parsed.is_ok(), "{:?}", parsed.err());
    }

    /// Every command, down to each verb, ends its `--help` with an example, and says what
    /// each of its arguments is.
    #[test]
    fn every_command_has_an_example() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands().filter(|sub| sub.get_name() != "help") {
                let path = format!("{path} {}", sub.get_name());
                if !sub.get_after_help().is_some_and(|help| help.to_string().contains("Example")) {
                    missing.push(path.clone());
                }
                for arg in sub.get_arguments().filter(|arg| !arg.is_global_set() && arg.get_id() != "help") {
                    if arg.get_help().is_none() {
                        missing.push(format!("{path} <{}> without help", arg.get_id()));
                    }
                }
                walk(sub, &path, missing);
            }
        }
        let command = <Cli as clap::CommandFactory>::command();
        command.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&command, "pake", &mut missing);
        assert!(missing.is_empty(), "commands without an example: {missing:?}");
    }
}
