//! The nouns and verbs of the operator CLI and what each one calls.

use super::context::{ConfigFile, Context};
use super::failure::{Class, Failure};
use super::output::{Column, Output};
use super::{Session, Target, all, apply, call, id_of};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Store credentials and service URLs as a context, and make it the current one.
    #[command(
        after_help = "Examples:\n  pake login --client-id pk_ops --client-secret \"$SECRET\" --gateway-url http://gw:8080\n  pake login --context staging --token \"$(pake token --scope mesh:read)\""
    )]
    Login(Login),
    /// List contexts or switch the current one.
    #[command(subcommand, after_help = "Example:\n  pake context use staging")]
    Context(ContextCommand),
    /// Print a shell completion script.
    #[command(after_help = "Example:\n  pake completions bash > /etc/bash_completion.d/pake")]
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Services in the registry.
    #[command(subcommand, after_help = "Example:\n  pake services ls")]
    Services(Services),
    /// Instances of a service.
    #[command(subcommand, after_help = "Example:\n  pake instances ls arxiv-search")]
    Instances(Instances),
    /// The healthy instances of a service, as the gateway would route to them.
    #[command(after_help = "Example:\n  pake discover arxiv-search --tag primary")]
    Discover {
        /// The service name.
        service: String,
        /// Only instances with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only instances in this zone.
        #[arg(long)]
        zone: Option<String>,
        /// Include instances that are not passing.
        #[arg(long)]
        all: bool,
    },
    /// Configuration entries per service and environment.
    #[command(
        subcommand,
        after_help = "Example:\n  pake config set arxiv-search production max_results 50 --expect-version 3"
    )]
    Config(ConfigCommand),
    /// Health of every service (the aggregated table), or of one service's instances.
    #[command(after_help = "Examples:\n  pake health --service all\n  pake health --service arxiv-search")]
    Health {
        /// `all`, or a service name for its instances.
        #[arg(long, default_value = "all")]
        service: String,
    },
    /// Gateway routes.
    #[command(subcommand, after_help = "Example:\n  pake routes create -f route.yaml")]
    Routes(Routes),
    /// API clients of the gateway.
    #[command(subcommand, after_help = "Example:\n  pake clients create --name web --tenant acme --scope arxiv:read")]
    Clients(Clients),
    /// Rate-limit policies.
    #[command(subcommand, after_help = "Example:\n  pake ratelimits ls")]
    Ratelimits(Ratelimits),
    /// The gateway's response cache.
    #[command(subcommand, after_help = "Example:\n  pake cache invalidate --tag arxiv")]
    Cache(Cache),
    /// Circuit breakers per upstream.
    #[command(subcommand, after_help = "Example:\n  pake breakers ls --state open")]
    Breakers(Breakers),
    /// Alerts: list, acknowledge, silence.
    #[command(subcommand, after_help = "Example:\n  pake alerts ls --state firing")]
    Alerts(Alerts),
    /// Alert rules.
    #[command(subcommand, after_help = "Example:\n  pake rules apply -f rules.yaml")]
    Rules(Rules),
    /// Current metric series in the monitoring service.
    #[command(after_help = "Example:\n  pake metrics --name pake_http_requests_total --source gateway")]
    Metrics {
        /// Only series of this metric name.
        #[arg(long)]
        name: Option<String>,
        /// Only series whose source (scrape target, push) is this.
        #[arg(long)]
        source: Option<String>,
    },
    /// A trace's spans as a tree with a waterfall of their timing.
    #[command(after_help = "Example:\n  pake trace 4bf92f3577b34da6a3ce929d0e0e4736")]
    Trace {
        /// The trace id (32 hex digits).
        trace_id: String,
    },
    /// Service level objectives.
    #[command(subcommand, after_help = "Example:\n  pake slos report availability")]
    Slos(Slos),
    /// Benchmarks run by the performance service.
    #[command(
        subcommand,
        after_help = "Example:\n  pake bench start --service arxiv-search --path /search --users 100 --duration 60"
    )]
    Bench(Bench),
    /// Create or update the resources a YAML file declares (routes, rate-limit policies,
    /// alert rules, receivers, SLOs, traffic and auto-scaling policies).
    #[command(
        after_help = "Example:\n  pake apply -f platform.yaml\n\nEach document of the file is `kind: Route|RateLimitPolicy|AlertRule|Receiver|Slo|TrafficPolicy|AutoscalingPolicy` and `spec:` (the contract's create body). Resources are matched by name (policies by service)."
    )]
    Apply {
        /// A YAML file of `kind`/`spec` documents.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Show what `apply -f` would change; exits 1 when something would.
    #[command(after_help = "Example:\n  pake diff -f platform.yaml")]
    Diff {
        /// A YAML file of `kind`/`spec` documents.
        #[arg(short, long)]
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct Login {
    /// An API client's id, exchanged with its secret at the gateway for tokens.
    #[arg(long, conflicts_with = "token")]
    client_id: Option<String>,
    /// Its secret; read from standard input when not given.
    #[arg(long, env = "PAKE_CLIENT_SECRET", hide_env_values = true, allow_hyphen_values = true)]
    client_secret: Option<String>,
    /// A scope to ask for (repeat); by default all of the client's.
    #[arg(long = "scope")]
    scopes: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ContextCommand {
    /// List contexts.
    #[command(after_help = "Example:\n  pake context ls")]
    Ls,
    /// Make a context the current one.
    #[command(after_help = "Example:\n  pake context use staging")]
    Use {
        /// A context stored by `pake login`.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Services {
    /// List services.
    #[command(after_help = "Example:\n  pake services ls --tag search")]
    Ls {
        /// Only services with this tag.
        #[arg(long)]
        tag: Option<String>,
    },
    /// One service, by name or id.
    #[command(after_help = "Example:\n  pake services get arxiv-search")]
    Get {
        /// The service, by name or id.
        service: String,
    },
    /// Register a service.
    #[command(after_help = "Example:\n  pake services register --name arxiv-search --version 1.0.0 --tag search")]
    Register {
        /// The service name (lowercase letters, digits and dashes).
        #[arg(long)]
        name: String,
        /// Its version, e.g. 1.0.0.
        #[arg(long)]
        version: String,
        /// What the service does.
        #[arg(long)]
        description: Option<String>,
        /// A tag (repeat for several).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Change a service's version, description or tags.
    #[command(after_help = "Example:\n  pake services update arxiv-search --version 1.1.0")]
    Update {
        /// The service, by name or id.
        service: String,
        /// The new version.
        #[arg(long)]
        version: Option<String>,
        /// The new description.
        #[arg(long)]
        description: Option<String>,
        /// The tags (repeat; replaces them all).
        #[arg(long = "tag")]
        tags: Option<Vec<String>>,
    },
    /// Remove a service and its instances.
    #[command(after_help = "Example:\n  pake services deregister arxiv-search")]
    Deregister {
        /// The service, by name or id.
        service: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Instances {
    /// List a service's instances.
    #[command(after_help = "Example:\n  pake instances ls arxiv-search")]
    Ls {
        /// The service, by name or id.
        service: String,
    },
    /// Register an instance of a service.
    #[command(after_help = "Example:\n  pake instances register arxiv-search --address 10.0.0.7 --port 9001 --ttl 30")]
    Register {
        /// The service, by name or id.
        service: String,
        /// Host name or IP address the instance answers on.
        #[arg(long)]
        address: String,
        /// Its port.
        #[arg(long)]
        port: u16,
        /// Seconds between heartbeats before the instance leaves discovery.
        #[arg(long)]
        ttl: Option<u64>,
        /// The URL the monitoring service checks (default: the service's health path).
        #[arg(long)]
        health_url: Option<String>,
    },
    /// Renew an instance's TTL.
    #[command(after_help = "Example:\n  pake instances heartbeat arxiv-search 6f1c…")]
    Heartbeat {
        /// The service, by name or id.
        service: String,
        /// The instance id (see pake instances ls).
        instance: uuid::Uuid,
        /// passing, warning or critical.
        #[arg(long, default_value = "passing")]
        status: String,
        /// What the instance says about its status.
        #[arg(long = "note")]
        note: Option<String>,
    },
    /// Remove an instance.
    #[command(after_help = "Example:\n  pake instances deregister arxiv-search 6f1c…")]
    Deregister {
        /// The service, by name or id.
        service: String,
        /// The instance id (see pake instances ls).
        instance: uuid::Uuid,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// One entry, or every entry of the environment when no key is given.
    #[command(after_help = "Example:\n  pake config get arxiv-search production max_results")]
    Get {
        /// The service name.
        service: String,
        /// dev, staging or production.
        environment: String,
        /// The entry's key.
        key: Option<String>,
    },
    /// Write an entry; with --expect-version only if it is still at that version.
    #[command(after_help = "Example:\n  pake config set arxiv-search production max_results 50 --expect-version 3")]
    Set {
        /// The service name.
        service: String,
        /// dev, staging or production.
        environment: String,
        /// The entry's key.
        key: String,
        /// The new value.
        value: String,
        /// Write only if the entry is at this version (0: only if it does not exist).
        #[arg(long)]
        expect_version: Option<i64>,
    },
    /// Every version of an entry.
    #[command(after_help = "Example:\n  pake config history arxiv-search production max_results")]
    History {
        /// The service name.
        service: String,
        /// dev, staging or production.
        environment: String,
        /// The entry's key.
        key: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Routes {
    /// List routes.
    #[command(after_help = "Example:\n  pake routes ls")]
    Ls,
    /// One route, by name or id.
    #[command(after_help = "Example:\n  pake routes get search")]
    Get {
        /// The route, by name or id.
        route: String,
    },
    /// Create a route from a YAML or JSON file (the contract's RouteSpec).
    #[command(after_help = "Example:\n  pake routes create -f route.yaml")]
    Create {
        /// A YAML or JSON file holding a RouteSpec.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Delete a route, by name or id.
    #[command(after_help = "Example:\n  pake routes delete search")]
    Delete {
        /// The route, by name or id.
        route: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Clients {
    /// List API clients.
    #[command(after_help = "Example:\n  pake clients ls")]
    Ls,
    /// Create an API client; its secret is shown once.
    #[command(after_help = "Example:\n  pake clients create --name web --tenant acme --scope arxiv:read")]
    Create {
        /// A name for people.
        #[arg(long)]
        name: String,
        /// The tenant its tokens carry.
        #[arg(long)]
        tenant: String,
        /// A scope its tokens may carry (repeat for several).
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// Issue a new secret for a client (name or id); the old one stops working.
    #[command(after_help = "Example:\n  pake clients rotate-secret web")]
    RotateSecret {
        /// The client, by name, client id or id.
        client: String,
    },
    /// Delete an API client (name or id).
    #[command(after_help = "Example:\n  pake clients delete web")]
    Delete {
        /// The client, by name, client id or id.
        client: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Ratelimits {
    /// List rate-limit policies.
    #[command(after_help = "Example:\n  pake ratelimits ls")]
    Ls,
    /// Create a policy from a YAML or JSON file (the contract's RateLimitPolicySpec).
    #[command(after_help = "Example:\n  pake ratelimits create -f policy.yaml")]
    Create {
        /// A YAML or JSON file holding a RateLimitPolicySpec.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Delete a policy (name or id).
    #[command(after_help = "Example:\n  pake ratelimits delete per-tenant")]
    Delete {
        /// The policy, by name or id.
        policy: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Cache {
    /// Hit rate and counts, per route.
    #[command(after_help = "Example:\n  pake cache stats")]
    Stats,
    /// Drop cached answers by tag, key prefix or key, on every replica.
    #[command(after_help = "Example:\n  pake cache invalidate --tag arxiv --prefix /v1/search")]
    Invalidate {
        /// Answers cached with this tag (repeat).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Answers whose path starts with this (repeat).
        #[arg(long = "prefix")]
        prefixes: Vec<String>,
        /// One cached answer by its key (repeat).
        #[arg(long = "key")]
        keys: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum Breakers {
    /// List circuit breakers.
    #[command(after_help = "Example:\n  pake breakers ls --state open")]
    Ls {
        /// Only this service's breakers.
        #[arg(long)]
        service: Option<String>,
        /// closed, open or half_open.
        #[arg(long)]
        state: Option<String>,
    },
    /// Close a breaker by hand.
    #[command(after_help = "Example:\n  pake breakers reset 6f1c…")]
    Reset {
        /// The upstream id (see pake breakers ls).
        upstream: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Alerts {
    /// List alerts.
    #[command(after_help = "Example:\n  pake alerts ls --state firing")]
    Ls {
        /// pending, firing or resolved.
        #[arg(long)]
        state: Option<String>,
    },
    /// Acknowledge an alert.
    #[command(after_help = "Example:\n  pake alerts ack 6f1c… --comment \"looking\"")]
    Ack {
        /// The alert id (see pake alerts ls).
        alert: uuid::Uuid,
        /// Why, for the others on call.
        #[arg(long)]
        comment: Option<String>,
        /// Who acknowledges it.
        #[arg(long, env = "USER", default_value = "operator")]
        by: String,
    },
    /// Silence alerts whose labels match, for a while.
    #[command(after_help = "Example:\n  pake alerts silence --matcher service=arxiv-search --hours 2 --comment deploy")]
    Silence {
        /// label=value (repeat); every one must match.
        #[arg(long = "matcher", required = true)]
        matchers: Vec<String>,
        /// How long the silence lasts.
        #[arg(long, default_value_t = 1.0)]
        hours: f64,
        /// Why the alerts are silenced.
        #[arg(long)]
        comment: String,
        /// Who silences them.
        #[arg(long, env = "USER", default_value = "operator")]
        by: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Rules {
    /// List alert rules.
    #[command(after_help = "Example:\n  pake rules ls")]
    Ls,
    /// Create or update the alert rules of a YAML file (AlertRuleSpec documents, or
    /// `kind: AlertRule` ones).
    #[command(after_help = "Example:\n  pake rules apply -f rules.yaml")]
    Apply {
        /// A YAML file of AlertRuleSpec documents (or a list of them).
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Delete a rule (name or id).
    #[command(after_help = "Example:\n  pake rules delete search-down")]
    Delete {
        /// The rule, by name or id.
        rule: String,
    },
    /// Run offline rule tests in `promtool test rules`' format against rule files of
    /// AlertRuleSpecs; prints and exits as promtool does (1 when a test fails).
    #[command(after_help = "Example:\n  pake rules test tests/search.yaml")]
    Test {
        /// Test files in promtool's format; their rule_files hold AlertRuleSpecs.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum Slos {
    /// List SLOs.
    #[command(after_help = "Example:\n  pake slos ls")]
    Ls,
    /// Create or update the SLOs of a YAML file (SloSpec documents, or `kind: Slo` ones).
    #[command(after_help = "Example:\n  pake slos apply -f slos.yaml")]
    Apply {
        /// A YAML file of SloSpec documents (or a list of them).
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Compliance, error budget and burn rates of an SLO (name or id).
    #[command(after_help = "Example:\n  pake slos report availability")]
    Report {
        /// The SLO, by name or id.
        slo: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// List benchmarks.
    #[command(after_help = "Example:\n  pake bench ls")]
    Ls,
    /// Start a benchmark against a registered service, then watch it (unless --detach).
    #[command(
        after_help = "Example:\n  pake bench start --service arxiv-search --path /search --users 100 --duration 60"
    )]
    Start(Box<BenchStart>),
    /// Follow a benchmark with a progress bar until its verdict.
    #[command(after_help = "Example:\n  pake bench watch 6f1c…")]
    Watch {
        /// The benchmark id (see pake bench ls).
        benchmark: uuid::Uuid,
    },
    /// Stop a running benchmark.
    #[command(after_help = "Example:\n  pake bench cancel 6f1c…")]
    Cancel {
        /// The benchmark id (see pake bench ls).
        benchmark: uuid::Uuid,
    },
}

/// What `pake bench start` is given.
#[derive(clap::Args, Debug)]
pub struct BenchStart {
    /// The registered service to load.
    #[arg(long)]
    service: String,
    /// The path every simulated user requests.
    #[arg(long, default_value = "/")]
    path: String,
    /// The HTTP method of those requests.
    #[arg(long, default_value = "GET")]
    method: String,
    /// Simulated users at once.
    #[arg(long, default_value_t = 10)]
    users: u64,
    /// Seconds the full load is held, once every user has started.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Users started per second until all run.
    #[arg(long)]
    hatch_rate: Option<f64>,
    /// Milliseconds each user pauses between two requests.
    #[arg(long)]
    think_ms: Option<u64>,
    /// A header every request carries, as `name: value` (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The body every request carries, verbatim.
    #[arg(long)]
    body: Option<String>,
    /// The SLO (its id) the result is judged against.
    #[arg(long)]
    slo: Option<uuid::Uuid>,
    /// Highest acceptable p95 latency, ms.
    #[arg(long)]
    p95_ms: Option<u64>,
    /// Highest acceptable fraction of failed requests (0.01 is 1 %).
    #[arg(long)]
    error_rate: Option<f64>,
    /// A name for the run (default: the service and the time).
    #[arg(long)]
    name: Option<String>,
    /// Print the benchmark and return instead of watching it.
    #[arg(long)]
    detach: bool,
}

const SERVICE_COLUMNS: &[Column] =
    &[("ID", "/id"), ("NAME", "/name"), ("VERSION", "/version"), ("TAGS", "/tags"), ("UPDATED", "/updated_at")];
const INSTANCE_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("ADDRESS", "/address"),
    ("PORT", "/port"),
    ("STATUS", "/status"),
    ("ZONE", "/zone"),
    ("WEIGHT", "/weight"),
    ("LAST HEARTBEAT", "/last_heartbeat_at"),
];
const CONFIG_COLUMNS: &[Column] =
    &[("KEY", "/key"), ("VALUE", "/value"), ("VERSION", "/version"), ("UPDATED", "/updated_at")];
const ROUTE_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("VERSION", "/api_version"),
    ("PATH", "/path_prefix"),
    ("METHODS", "/methods"),
    ("SERVICE", "/service"),
    ("SCOPES", "/required_scopes"),
];
const CLIENT_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("CLIENT ID", "/client_id"),
    ("NAME", "/name"),
    ("TENANT", "/tenant"),
    ("SCOPES", "/scopes"),
    ("DISABLED", "/disabled"),
];
const POLICY_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("ALGORITHM", "/algorithm"),
    ("RATE", "/rate"),
    ("PERIOD S", "/period_seconds"),
    ("BURST", "/burst"),
    ("SCOPE", "/scope"),
];
const BREAKER_COLUMNS: &[Column] = &[
    ("UPSTREAM", "/upstream_id"),
    ("SERVICE", "/service"),
    ("ADDRESS", "/address"),
    ("STATE", "/state"),
    ("FAILURES", "/consecutive_failures"),
    ("FAILURE RATE", "/failure_rate"),
];
const ALERT_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("RULE", "/rule_name"),
    ("SEVERITY", "/severity"),
    ("STATE", "/state"),
    ("VALUE", "/value"),
    ("SINCE", "/active_since"),
    ("SILENCED", "/silenced"),
];
const RULE_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("METRIC", "/metric"),
    ("COMPARISON", "/comparison"),
    ("THRESHOLD", "/threshold"),
    ("FOR S", "/for_seconds"),
    ("SEVERITY", "/severity"),
    ("STATE", "/state"),
];
const SLO_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("SERVICE", "/service"),
    ("OBJECTIVE", "/objective"),
    ("TARGET", "/target"),
    ("WINDOW D", "/window_days"),
];
const BENCH_COLUMNS: &[Column] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("SERVICE", "/service"),
    ("STATUS", "/status"),
    ("USERS", "/users"),
    ("REQUESTS", "/result/requests"),
    ("P95 MS", "/result/latency_ms/p95"),
    ("PASSED", "/verdict/passed"),
];

pub async fn run(command: Command, session: &Session) -> Result<(), Failure> {
    let out = session.out;
    match command {
        Command::Login(_) | Command::Context(_) | Command::Completions { .. } => {
            Err(Failure::usage("this command does not talk to the platform"))
        }
        Command::Services(command) => services(command, session).await,
        Command::Instances(command) => instances(command, session).await,
        Command::Discover { service, tag, zone, all } => {
            let (service, tag, zone) = (service.as_str(), tag.as_deref(), zone.as_deref());
            let found = call(&session.mesh(), |c| async move {
                let mut request = c.discover_service().service_name(service).passing_only(!all);
                if let Some(tag) = tag {
                    request = request.tag(tag);
                }
                if let Some(zone) = zone {
                    request = request.zone(zone);
                }
                request.send().await
            })
            .await?;
            match out.format {
                super::Format::Table => out.list(&json!({"items": found["instances"]}), INSTANCE_COLUMNS),
                _ => out.document(&found),
            }
            Ok(())
        }
        Command::Config(command) => config(command, session).await,
        Command::Health { service } => health(&service, session).await,
        Command::Routes(command) => routes(command, session).await,
        Command::Clients(command) => clients(command, session).await,
        Command::Ratelimits(command) => ratelimits(command, session).await,
        Command::Cache(Cache::Stats) => {
            let stats = call(&session.gateway(), |c| async move { c.get_cache_stats().send().await }).await?;
            match out.format {
                super::Format::Table => {
                    out.one(
                        &stats,
                        &[
                            ("HIT RATE", "/hit_rate"),
                            ("LOOKUPS", "/lookups"),
                            ("HITS", "/hits"),
                            ("MISSES", "/misses"),
                            ("SINCE", "/since"),
                        ],
                    );
                    if !out.quiet && stats["routes"].as_array().is_some_and(|r| !r.is_empty()) {
                        println!();
                        out.list(
                            &json!({"items": stats["routes"]}),
                            &[
                                ("ROUTE", "/route_id"),
                                ("HIT RATE", "/hit_rate"),
                                ("HITS", "/hits"),
                                ("MISSES", "/misses"),
                            ],
                        );
                    }
                }
                _ => out.document(&stats),
            }
            Ok(())
        }
        Command::Cache(Cache::Invalidate { tags, prefixes, keys }) => {
            if tags.is_empty() && prefixes.is_empty() && keys.is_empty() {
                return Err(Failure::usage("name what to invalidate: --tag, --prefix or --key"));
            }
            let body: pake_gateway_client::types::CacheInvalidationRequest =
                body(json!({"tags": tags, "prefixes": prefixes, "keys": keys}))?;
            let body = &body;
            let done =
                call(&session.gateway(), |c| async move { c.invalidate_cache().body(body.clone()).send().await })
                    .await?;
            out.done(&done, &format!("invalidated {} cached answers", super::output::cell(done.get("invalidated"))));
            Ok(())
        }
        Command::Breakers(Breakers::Ls { service, state }) => {
            let (service, state) = (service.as_deref(), state.as_deref());
            let items = all(&session.gateway(), |c, cursor| async move {
                let mut request = c.list_circuit_breakers().limit(500u64);
                if let Some(cursor) = cursor {
                    request = request.cursor(cursor);
                }
                if let Some(service) = service {
                    request = request.service(service);
                }
                if let Some(state) = state {
                    request = request.state(state);
                }
                request.send().await
            })
            .await?;
            out.list(&Value::Array(items), BREAKER_COLUMNS);
            Ok(())
        }
        Command::Breakers(Breakers::Reset { upstream }) => {
            let upstream = upstream.as_str();
            let state =
                call(
                    &session.gateway(),
                    |c| async move { c.reset_circuit_breaker().upstream_id(upstream).send().await },
                )
                .await?;
            out.one(&state, BREAKER_COLUMNS);
            Ok(())
        }
        Command::Alerts(command) => alerts(command, session).await,
        Command::Rules(Rules::Ls) => {
            let items = all(&session.monitoring(), |c, cursor| async move {
                let mut request = c.list_alert_rules().limit(500u64);
                if let Some(cursor) = cursor {
                    request = request.cursor(cursor);
                }
                request.send().await
            })
            .await?;
            out.list(&Value::Array(items), RULE_COLUMNS);
            Ok(())
        }
        Command::Rules(Rules::Apply { file }) => apply::apply(session, &file, Some(apply::Kind::AlertRule)).await,
        Command::Rules(Rules::Test { files }) => rules_test(&files),
        Command::Rules(Rules::Delete { rule }) => {
            let id = rule_id(session, &rule).await?;
            call(&session.monitoring(), |c| async move { c.delete_alert_rule().rule_id(id).send().await }).await?;
            out.done(&json!({"id": id}), &format!("alert rule {rule} deleted"));
            Ok(())
        }
        Command::Metrics { name, source } => {
            let (name, source) = (name.as_deref(), source.as_deref());
            let items = all(&session.monitoring(), |c, cursor| async move {
                let mut request = c.list_metrics().limit(500u64);
                if let Some(cursor) = cursor {
                    request = request.cursor(cursor);
                }
                if let Some(name) = name {
                    request = request.name(name);
                }
                if let Some(source) = source {
                    request = request.source(source);
                }
                request.send().await
            })
            .await?;
            out.list(
                &Value::Array(items),
                &[
                    ("NAME", "/name"),
                    ("TYPE", "/type"),
                    ("LABELS", "/labels"),
                    ("VALUE", "/value"),
                    ("SOURCE", "/source"),
                ],
            );
            Ok(())
        }
        Command::Slos(Slos::Ls) => {
            let items = all(&session.performance(), |c, cursor| async move {
                let mut request = c.list_slos().limit(500u64);
                if let Some(cursor) = cursor {
                    request = request.cursor(cursor);
                }
                request.send().await
            })
            .await?;
            out.list(&Value::Array(items), SLO_COLUMNS);
            Ok(())
        }
        Command::Slos(Slos::Apply { file }) => apply::apply(session, &file, Some(apply::Kind::Slo)).await,
        Command::Slos(Slos::Report { slo }) => {
            let id = slo_id(session, &slo).await?;
            let report =
                call(&session.performance(), |c| async move { c.get_slo_report().slo_id(id).send().await }).await?;
            out.one(
                &report,
                &[
                    ("SERVICE", "/service"),
                    ("OBJECTIVE", "/objective"),
                    ("TARGET", "/target"),
                    ("SLI", "/sli"),
                    ("COMPLIANT", "/compliant"),
                    ("BUDGET LEFT", "/error_budget/remaining_ratio"),
                    ("REQUESTS", "/total_requests"),
                ],
            );
            Ok(())
        }
        Command::Bench(command) => bench(command, session).await,
        Command::Trace { trace_id } => {
            let id = trace_id.as_str();
            let trace = call(&session.monitoring(), |c| async move { c.get_trace().trace_id(id).send().await }).await?;
            match out.format {
                super::Format::Table => out.list(
                    &Value::Array(waterfall(&trace)),
                    &[
                        ("SPAN", "/span"),
                        ("SERVICE", "/service"),
                        ("STATUS", "/status"),
                        ("DURATION MS", "/duration_ms"),
                        ("TIMELINE", "/bar"),
                    ],
                ),
                _ => out.document(&trace),
            }
            Ok(())
        }
        Command::Apply { file } => apply::apply(session, &file, None).await,
        Command::Diff { file } => apply::diff(session, &file).await,
    }
}

/// `pake rules test`: the monitoring service's own engine, offline; nothing is called.
pub fn rules_test(files: &[PathBuf]) -> Result<(), Failure> {
    let passed = pake_monitoring::rules_test::run(files, &mut std::io::stdout(), &mut std::io::stderr());
    if passed { Ok(()) } else { Err(Failure::new(Class::General, String::new())) }
}

/// A request body of the contract's type, from JSON the command assembled or a file held.
pub fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, Failure> {
    serde_json::from_value(value).map_err(|error| Failure::usage(format!("invalid input: {error}")))
}

/// A request body the command assembled from its flags: flags not given (null, or an
/// empty list) are left out.
pub fn body<T: serde::de::DeserializeOwned>(mut value: Value) -> Result<T, Failure> {
    if let Some(fields) = value.as_object_mut() {
        fields.retain(|_, field| !field.is_null() && field.as_array().is_none_or(|list| !list.is_empty()));
    }
    typed(value)
}

/// A YAML or JSON file as JSON.
pub fn read_document(path: &std::path::Path) -> Result<Value, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| Failure::usage(format!("reading {}: {error}", path.display())))?;
    serde_yaml::from_str(&text)
        .map_err(|error| Failure::usage(format!("{} is not YAML or JSON: {error}", path.display())))
}

async fn service_id(session: &Session, service: &str) -> Result<uuid::Uuid, Failure> {
    if let Ok(id) = service.parse() {
        return Ok(id);
    }
    let page =
        call(&session.mesh(), |c| async move { c.list_services().name_prefix(service).limit(500u64).send().await })
            .await?;
    id_of(page["items"].as_array().map_or(&[], Vec::as_slice), service, "service")
}

async fn services(command: Services, session: &Session) -> Result<(), Failure> {
    let (out, mesh) = (session.out, session.mesh());
    match command {
        Services::Ls { tag } => {
            let tag = tag.as_deref();
            let items = all(&mesh, |c, cursor| async move {
                let mut request = c.list_services().limit(500u64);
                if let Some(cursor) = cursor {
                    request = request.cursor(cursor);
                }
                if let Some(tag) = tag {
                    request = request.tag(tag);
                }
                request.send().await
            })
            .await?;
            out.list(&Value::Array(items), SERVICE_COLUMNS);
        }
        Services::Get { service } => {
            let id = service_id(session, &service).await?;
            let found = call(&mesh, |c| async move { c.get_service().service_id(id).send().await }).await?;
            out.one(&found, SERVICE_COLUMNS);
        }
        Services::Register { name, version, description, tags } => {
            let body: pake_mesh_client::types::ServiceRegistration =
                body(json!({"name": name, "version": version, "description": description, "tags": tags}))?;
            let body = &body;
            let created = call(&mesh, |c| async move { c.register_service().body(body.clone()).send().await }).await?;
            out.one(&created, SERVICE_COLUMNS);
        }
        Services::Update { service, version, description, tags } => {
            let id = service_id(session, &service).await?;
            let mut update = serde_json::Map::new();
            for (field, value) in
                [("version", json!(version)), ("description", json!(description)), ("tags", json!(tags))]
            {
                if !value.is_null() {
                    update.insert(field.into(), value);
                }
            }
            if update.is_empty() {
                return Err(Failure::usage("nothing to update: give --version, --description or --tag"));
            }
            let body: pake_mesh_client::types::ServiceUpdate = typed(Value::Object(update))?;
            let body = &body;
            let updated =
                call(&mesh, |c| async move { c.update_service().service_id(id).body(body.clone()).send().await })
                    .await?;
            out.one(&updated, SERVICE_COLUMNS);
        }
        Services::Deregister { service } => {
            let id = service_id(session, &service).await?;
            call(&mesh, |c| async move { c.deregister_service().service_id(id).send().await }).await?;
            out.done(&json!({"id": id}), &format!("service {service} deregistered"));
        }
    }
    Ok(())
}

async fn instances(command: Instances, session: &Session) -> Result<(), Failure> {
    let (out, mesh) = (session.out, session.mesh());
    match command {
        Instances::Ls { service } => {
            let id = service_id(session, &service).await?;
            let items = all(&mesh, |c, cursor| async move {
                let mut request = c.list_instances().service_id(id).limit(500u64);
                if let Some(cursor) = cursor {
                    request = request.cursor(cursor);
                }
                request.send().await
            })
            .await?;
            out.list(&Value::Array(items), INSTANCE_COLUMNS);
        }
        Instances::Register { service, address, port, ttl, health_url } => {
            let id = service_id(session, &service).await?;
            let mut body = json!({"address": address, "port": port});
            if let Some(ttl) = ttl {
                body["ttl_seconds"] = ttl.into();
            }
            if let Some(url) = health_url {
                body["health_url"] = url.into();
            }
            let body: pake_mesh_client::types::InstanceRegistration = typed(body)?;
            let body = &body;
            let created =
                call(&mesh, |c| async move { c.register_instance().service_id(id).body(body.clone()).send().await })
                    .await?;
            out.one(&created, INSTANCE_COLUMNS);
        }
        Instances::Heartbeat { service, instance, status, note } => {
            let id = service_id(session, &service).await?;
            let body: pake_mesh_client::types::HeartbeatRequest = body(json!({"status": status, "output": note}))?;
            let body = &body;
            let renewed = call(&mesh, |c| async move {
                c.heartbeat_instance().service_id(id).instance_id(instance).body(body.clone()).send().await
            })
            .await?;
            out.one(&renewed, INSTANCE_COLUMNS);
        }
        Instances::Deregister { service, instance } => {
            let id = service_id(session, &service).await?;
            call(&mesh, |c| async move { c.deregister_instance().service_id(id).instance_id(instance).send().await })
                .await?;
            out.done(&json!({"id": instance}), &format!("instance {instance} deregistered"));
        }
    }
    Ok(())
}

async fn config(command: ConfigCommand, session: &Session) -> Result<(), Failure> {
    let (out, mesh) = (session.out, session.mesh());
    match command {
        ConfigCommand::Get { service, environment, key: Some(key) } => {
            let (service, environment, key) = (service.as_str(), environment.as_str(), key.as_str());
            let entry = call(&mesh, |c| async move {
                c.get_config_entry().service_name(service).environment(environment).key(key).send().await
            })
            .await?;
            out.one(&entry, CONFIG_COLUMNS);
        }
        ConfigCommand::Get { service, environment, key: None } => {
            let (service, environment) = (service.as_str(), environment.as_str());
            let items = all(&mesh, |c, cursor| async move {
                let mut request = c.list_config_entries().service_name(service).environment(environment).limit(500u64);
                if let Some(cursor) = cursor {
                    request = request.cursor(cursor);
                }
                request.send().await
            })
            .await?;
            out.list(&Value::Array(items), CONFIG_COLUMNS);
        }
        ConfigCommand::Set { service, environment, key, value, expect_version } => {
            let body: pake_mesh_client::types::ConfigWrite =
                body(json!({"value": value, "expected_version": expect_version}))?;
            let (service, environment, key, body) = (service.as_str(), environment.as_str(), key.as_str(), &body);
            let entry = call(&mesh, |c| async move {
                c.put_config_entry()
                    .service_name(service)
                    .environment(environment)
                    .key(key)
                    .body(body.clone())
                    .send()
                    .await
            })
            .await?;
            out.one(&entry, CONFIG_COLUMNS);
        }
        ConfigCommand::History { service, environment, key } => {
            let (service, environment, key) = (service.as_str(), environment.as_str(), key.as_str());
            let items = all(&mesh, |c, cursor| async move {
                let mut request =
                    c.list_config_history().service_name(service).environment(environment).key(key).limit(500u64);
                if let Some(cursor) = cursor {
                    request = request.cursor(cursor);
                }
                request.send().await
            })
            .await?;
            out.list(
                &Value::Array(items),
                &[
                    ("VERSION", "/version"),
                    ("OPERATION", "/operation"),
                    ("VALUE", "/value"),
                    ("BY", "/changed_by"),
                    ("AT", "/changed_at"),
                ],
            );
        }
    }
    Ok(())
}

/// `--service all`: one row per service with its instances' health counts (the seeds'
/// `pake orchestration --health-check --service=all`); a name: that service's instances.
async fn health(service: &str, session: &Session) -> Result<(), Failure> {
    let out = session.out;
    if service == "all" {
        let summary = call(&session.monitoring(), |c| async move { c.get_health_summary().send().await }).await?;
        out.list(
            &json!({"items": summary["services"]}),
            &[
                ("SERVICE", "/service"),
                ("STATUS", "/status"),
                ("PASSING", "/counts/passing"),
                ("WARNING", "/counts/warning"),
                ("CRITICAL", "/counts/critical"),
                ("UNKNOWN", "/counts/unknown"),
            ],
        );
        if out.format == super::Format::Table && !out.quiet {
            println!("overall: {}", super::output::cell(summary.get("status")));
        }
        return Ok(());
    }
    let items = all(&session.monitoring(), |c, cursor| async move {
        let mut request = c.list_instance_health().service(service).limit(500u64);
        if let Some(cursor) = cursor {
            request = request.cursor(cursor);
        }
        request.send().await
    })
    .await?;
    out.list(
        &Value::Array(items),
        &[
            ("INSTANCE", "/instance_id"),
            ("ADDRESS", "/address"),
            ("STATUS", "/status"),
            ("LATENCY MS", "/latency_ms"),
            ("IN DISCOVERY", "/in_discovery"),
            ("CHECKED", "/last_checked_at"),
            ("OUTPUT", "/output"),
        ],
    );
    Ok(())
}

pub async fn all_routes(session: &Session) -> Result<Vec<Value>, Failure> {
    all(&session.gateway(), |c, cursor| async move {
        let mut request = c.list_routes().limit(500u64);
        if let Some(cursor) = cursor {
            request = request.cursor(cursor);
        }
        request.send().await
    })
    .await
}

async fn routes(command: Routes, session: &Session) -> Result<(), Failure> {
    let (out, gateway) = (session.out, session.gateway());
    match command {
        Routes::Ls => out.list(&Value::Array(all_routes(session).await?), ROUTE_COLUMNS),
        Routes::Get { route } => {
            let id = id_of(&all_routes(session).await?, &route, "route")?;
            let found = call(&gateway, |c| async move { c.get_route().route_id(id).send().await }).await?;
            out.one(&found, ROUTE_COLUMNS);
        }
        Routes::Create { file } => {
            let body: pake_gateway_client::types::RouteSpec = typed(read_document(&file)?)?;
            let body = &body;
            let created = call(&gateway, |c| async move { c.create_route().body(body.clone()).send().await }).await?;
            out.one(&created, ROUTE_COLUMNS);
        }
        Routes::Delete { route } => {
            let id = id_of(&all_routes(session).await?, &route, "route")?;
            call(&gateway, |c| async move { c.delete_route().route_id(id).send().await }).await?;
            out.done(&json!({"id": id}), &format!("route {route} deleted"));
        }
    }
    Ok(())
}

async fn clients(command: Clients, session: &Session) -> Result<(), Failure> {
    let (out, gateway) = (session.out, session.gateway());
    let every = || {
        all(&gateway, |c, cursor| async move {
            let mut request = c.list_api_clients().limit(500u64);
            if let Some(cursor) = cursor {
                request = request.cursor(cursor);
            }
            request.send().await
        })
    };
    // A client is named by its admin id, its public client id or its name.
    let find = |items: Vec<Value>, wanted: &str| {
        items
            .iter()
            .find(|item| item["client_id"].as_str() == Some(wanted))
            .and_then(|item| item["id"].as_str()?.parse().ok())
            .map_or_else(|| id_of(&items, wanted, "API client"), Ok)
    };
    let secret_columns: &[Column] =
        &[("ID", "/id"), ("CLIENT ID", "/client_id"), ("CLIENT SECRET", "/client_secret"), ("SCOPES", "/scopes")];
    match command {
        Clients::Ls => out.list(&Value::Array(every().await?), CLIENT_COLUMNS),
        Clients::Create { name, tenant, scopes } => {
            let body: pake_gateway_client::types::ApiClientSpec =
                typed(json!({"name": name, "tenant": tenant, "scopes": scopes}))?;
            let body = &body;
            let created =
                call(&gateway, |c| async move { c.create_api_client().body(body.clone()).send().await }).await?;
            out.one(&created, secret_columns);
        }
        Clients::RotateSecret { client } => {
            let id: uuid::Uuid = find(every().await?, &client)?;
            let rotated =
                call(&gateway, |c| async move { c.rotate_api_client_secret().api_client_id(id).send().await }).await?;
            out.one(&rotated, secret_columns);
        }
        Clients::Delete { client } => {
            let id: uuid::Uuid = find(every().await?, &client)?;
            call(&gateway, |c| async move { c.delete_api_client().api_client_id(id).send().await }).await?;
            out.done(&json!({"id": id}), &format!("API client {client} deleted"));
        }
    }
    Ok(())
}

pub async fn all_rate_limit_policies(session: &Session) -> Result<Vec<Value>, Failure> {
    all(&session.gateway(), |c, cursor| async move {
        let mut request = c.list_rate_limit_policies().limit(500u64);
        if let Some(cursor) = cursor {
            request = request.cursor(cursor);
        }
        request.send().await
    })
    .await
}

async fn ratelimits(command: Ratelimits, session: &Session) -> Result<(), Failure> {
    let (out, gateway) = (session.out, session.gateway());
    match command {
        Ratelimits::Ls => out.list(&Value::Array(all_rate_limit_policies(session).await?), POLICY_COLUMNS),
        Ratelimits::Create { file } => {
            let body: pake_gateway_client::types::RateLimitPolicySpec = typed(read_document(&file)?)?;
            let body = &body;
            let created =
                call(&gateway, |c| async move { c.create_rate_limit_policy().body(body.clone()).send().await }).await?;
            out.one(&created, POLICY_COLUMNS);
        }
        Ratelimits::Delete { policy } => {
            let id = id_of(&all_rate_limit_policies(session).await?, &policy, "rate-limit policy")?;
            call(&gateway, |c| async move { c.delete_rate_limit_policy().policy_id(id).send().await }).await?;
            out.done(&json!({"id": id}), &format!("rate-limit policy {policy} deleted"));
        }
    }
    Ok(())
}

async fn alerts(command: Alerts, session: &Session) -> Result<(), Failure> {
    let (out, monitoring) = (session.out, session.monitoring());
    match command {
        Alerts::Ls { state } => {
            let state = state.as_deref();
            let items = all(&monitoring, |c, cursor| async move {
                let mut request = c.list_alerts().limit(500u64);
                if let Some(cursor) = cursor {
                    request = request.cursor(cursor);
                }
                if let Some(state) = state {
                    request = request.state(state);
                }
                request.send().await
            })
            .await?;
            out.list(&Value::Array(items), ALERT_COLUMNS);
        }
        Alerts::Ack { alert, comment, by } => {
            let body: pake_monitoring_client::types::AlertAcknowledgement =
                body(json!({"by": by, "comment": comment}))?;
            let body = &body;
            let acknowledged =
                call(
                    &monitoring,
                    |c| async move { c.acknowledge_alert().alert_id(alert).body(body.clone()).send().await },
                )
                .await?;
            out.one(&acknowledged, ALERT_COLUMNS);
        }
        Alerts::Silence { matchers, hours, comment, by } => {
            let matchers = matchers
                .iter()
                .map(|matcher| {
                    let (label, value) = matcher
                        .split_once('=')
                        .ok_or_else(|| Failure::usage(format!("--matcher {matcher}: expected label=value")))?;
                    Ok(json!({"label": label, "op": "equal", "value": value}))
                })
                .collect::<Result<Vec<_>, Failure>>()?;
            if !(hours > 0.0 && hours.is_finite()) {
                return Err(Failure::usage("--hours must be a positive number"));
            }
            let ends_at = chrono::Utc::now() + chrono::Duration::seconds((hours * 3600.0) as i64);
            let body: pake_monitoring_client::types::SilenceCreate =
                body(json!({"matchers": matchers, "ends_at": ends_at, "comment": comment, "created_by": by}))?;
            let body = &body;
            let silence =
                call(&monitoring, |c| async move { c.create_silence().body(body.clone()).send().await }).await?;
            out.one(&silence, &[("ID", "/id"), ("STATE", "/state"), ("MATCHERS", "/matchers"), ("ENDS", "/ends_at")]);
        }
    }
    Ok(())
}

pub async fn all_alert_rules(session: &Session) -> Result<Vec<Value>, Failure> {
    all(&session.monitoring(), |c, cursor| async move {
        let mut request = c.list_alert_rules().limit(500u64);
        if let Some(cursor) = cursor {
            request = request.cursor(cursor);
        }
        request.send().await
    })
    .await
}

async fn rule_id(session: &Session, rule: &str) -> Result<uuid::Uuid, Failure> {
    match rule.parse() {
        Ok(id) => Ok(id),
        Err(_) => id_of(&all_alert_rules(session).await?, rule, "alert rule"),
    }
}

pub async fn all_slos(session: &Session) -> Result<Vec<Value>, Failure> {
    all(&session.performance(), |c, cursor| async move {
        let mut request = c.list_slos().limit(500u64);
        if let Some(cursor) = cursor {
            request = request.cursor(cursor);
        }
        request.send().await
    })
    .await
}

async fn slo_id(session: &Session, slo: &str) -> Result<uuid::Uuid, Failure> {
    match slo.parse() {
        Ok(id) => Ok(id),
        Err(_) => id_of(&all_slos(session).await?, slo, "SLO"),
    }
}

async fn bench(command: Bench, session: &Session) -> Result<(), Failure> {
    let (out, performance) = (session.out, session.performance());
    match command {
        Bench::Ls => {
            let items = all(&performance, |c, cursor| async move {
                let mut request = c.list_benchmarks().limit(500u64);
                if let Some(cursor) = cursor {
                    request = request.cursor(cursor);
                }
                request.send().await
            })
            .await?;
            out.list(&Value::Array(items), BENCH_COLUMNS);
        }
        Bench::Start(start) => {
            let BenchStart {
                service,
                path,
                method,
                users,
                duration,
                hatch_rate,
                think_ms,
                headers,
                body: payload,
                slo,
                p95_ms,
                error_rate,
                name,
                detach,
            } = *start;
            let name = name.unwrap_or_else(|| format!("{service}-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S")));
            let mut spec = json!({
                "service": service, "path": path, "method": method.to_ascii_uppercase(), "users": users,
                "duration_seconds": duration, "name": name,
            });
            if !headers.is_empty() {
                let mut map = serde_json::Map::new();
                for header in &headers {
                    let (header_name, value) = header.split_once(':').ok_or_else(|| {
                        Failure::new(Class::Usage, format!("--header {header}: expected `name: value`"))
                    })?;
                    map.insert(header_name.trim().to_ascii_lowercase(), json!(value.trim()));
                }
                spec["headers"] = Value::Object(map);
            }
            let optional = [
                ("hatch_rate_per_second", hatch_rate.map(|v| json!(v))),
                ("think_time_ms", think_ms.map(|v| json!(v))),
                ("body", payload.map(|v| json!(v))),
                ("slo_id", slo.map(|v| json!(v))),
            ];
            for (field, value) in optional {
                if let Some(value) = value {
                    spec[field] = value;
                }
            }
            if p95_ms.is_some() || error_rate.is_some() {
                let mut thresholds = serde_json::Map::new();
                if let Some(p95) = p95_ms {
                    thresholds.insert("p95_ms".into(), json!(p95));
                }
                if let Some(rate) = error_rate {
                    thresholds.insert("error_rate".into(), json!(rate));
                }
                spec["thresholds"] = Value::Object(thresholds);
            }
            let body: pake_performance_client::types::BenchmarkSpec = body(spec)?;
            let body = &body;
            let started =
                call(&performance, |c| async move { c.start_benchmark().body(body.clone()).send().await }).await?;
            if detach || out.format != super::Format::Table {
                out.one(&started, BENCH_COLUMNS);
                return Ok(());
            }
            let id = started["id"].as_str().and_then(|id| id.parse().ok()).ok_or_else(|| {
                Failure::new(Class::General, "the performance service answered a benchmark without an id")
            })?;
            watch(session, id).await?;
        }
        Bench::Watch { benchmark } => watch(session, benchmark).await?,
        Bench::Cancel { benchmark } => {
            let cancelled =
                call(&performance, |c| async move { c.cancel_benchmark().benchmark_id(benchmark).send().await })
                    .await?;
            out.one(&cancelled, BENCH_COLUMNS);
        }
    }
    Ok(())
}

/// Polls a benchmark once a second with a progress bar (requests, errors, current p95)
/// until it ends, then prints its verdict; exits 1 when the verdict is a failure.
async fn watch(session: &Session, benchmark: uuid::Uuid) -> Result<(), Failure> {
    let performance = session.performance();
    let bar = if session.out.quiet || session.out.format != super::Format::Table {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(1)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len}s {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let last = loop {
        let current =
            call(&performance, |c| async move { c.get_benchmark().benchmark_id(benchmark).send().await }).await?;
        // The users start first (users / hatch rate), then the full load is held.
        let ramp = current["users"].as_f64().unwrap_or(0.0) / current["hatch_rate_per_second"].as_f64().unwrap_or(1.0);
        let ramp = if ramp.is_finite() { ramp.ceil() as u64 } else { 0 };
        bar.set_length(current["duration_seconds"].as_u64().unwrap_or(1).max(1) + ramp);
        let elapsed = current["started_at"]
            .as_str()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map_or(0, |at| (chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_seconds().max(0) as u64);
        bar.set_position(elapsed);
        bar.set_message(format!(
            "{} requests {} errors {} p95 {} ms",
            super::output::cell(current.get("status")),
            super::output::cell(current.pointer("/result/requests")),
            super::output::cell(current.pointer("/result/failures")),
            super::output::cell(current.pointer("/result/latency_ms/p95")),
        ));
        if matches!(current["status"].as_str(), Some("completed" | "failed" | "cancelled")) {
            break current;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    };
    bar.finish_and_clear();
    session.out.one(&last, BENCH_COLUMNS);
    if let Some(reasons) = last.pointer("/verdict/reasons").and_then(Value::as_array)
        && session.out.format == super::Format::Table
        && !session.out.quiet
    {
        for reason in reasons {
            println!("  {}", super::output::cell(Some(reason)));
        }
    }
    match last.pointer("/verdict/passed") {
        Some(Value::Bool(false)) => Err(Failure::new(Class::General, "the benchmark failed its thresholds")),
        _ if last["status"] == "failed" => Err(Failure::new(
            Class::General,
            format!("the benchmark failed: {}", super::output::cell(last.get("error"))),
        )),
        _ => Ok(()),
    }
}

/// `pake login`: checks the credentials (client credentials are exchanged for a token at
/// once) and stores them with any URLs given as the context, then makes it current.
pub async fn login(login: Login, target: &Target, out: Output) -> Result<(), Failure> {
    let path = ConfigFile::path();
    let mut file = ConfigFile::load(&path)?;
    let name = file.selected(target.context.as_deref());
    let mut context = file.contexts.get(&name).cloned().unwrap_or_default();
    for (stored, flag) in [
        (&mut context.registry, &target.registry_url),
        (&mut context.gateway, &target.gateway_url),
        (&mut context.monitoring, &target.monitoring_url),
        (&mut context.performance, &target.performance_url),
    ] {
        if let Some(url) = flag {
            *stored = Some(url.trim_end_matches('/').to_string());
        }
    }
    let who = match (&target.token, login.client_id) {
        (Some(token), None) => {
            context = Context {
                token: Some(token.clone()),
                client_id: None,
                client_secret: None,
                scope: None,
                access_token: None,
                access_token_expires_at: None,
                ..context
            };
            "a token".to_string()
        }
        (None, Some(client_id)) => {
            let secret = match login.client_secret {
                Some(secret) => secret,
                None => {
                    use std::io::IsTerminal;
                    if std::io::stdin().is_terminal() {
                        eprint!("client secret for {client_id}: ");
                    }
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim().to_string()
                }
            };
            if secret.is_empty() {
                return Err(Failure::usage(
                    "give the client secret with --client-secret, PAKE_CLIENT_SECRET or on standard input",
                ));
            }
            let scope = (!login.scopes.is_empty()).then(|| login.scopes.join(" "));
            let urls = super::context::urls(&context, target);
            let auth = pake_client_auth::Auth::new(pake_client_auth::Credentials::ClientCredentials(
                pake_client_auth::ClientCredentials {
                    gateway_url: urls.gateway.clone(),
                    client_id: client_id.clone(),
                    client_secret: secret.clone(),
                    scope: scope.clone(),
                    audience: None,
                },
            ));
            let (token, left) = match auth.access_token().await {
                Ok(issued) => issued,
                Err(error) => return Err(Failure::from_api::<()>(pake_client_auth::Error::Token(error)).await),
            };
            context.token = None;
            context.client_id = Some(client_id.clone());
            context.client_secret = Some(secret);
            context.scope = scope;
            context.cache_token(token, left.unwrap_or_default());
            format!("API client {client_id}")
        }
        (Some(_), Some(_)) => return Err(Failure::usage("give either --token or --client-id, not both")),
        (None, None) => return Err(Failure::usage("give --client-id (and its secret) or --token (or PAKE_TOKEN)")),
    };
    file.contexts.insert(name.clone(), context);
    file.current = Some(name.clone());
    file.save(&path)?;
    out.done(
        &json!({"context": name, "config": path}),
        &format!("logged in to context {name} with {who} ({})", path.display()),
    );
    Ok(())
}

pub fn context(command: ContextCommand, out: Output) -> Result<(), Failure> {
    let path = ConfigFile::path();
    let mut file = ConfigFile::load(&path)?;
    match command {
        ContextCommand::Ls => {
            let rows: Vec<Value> = file
                .contexts
                .iter()
                .map(|(name, context)| {
                    json!({
                        "current": if file.current.as_deref() == Some(name) { "*" } else { "" },
                        "name": name,
                        "gateway": context.gateway, "registry": context.registry,
                        "monitoring": context.monitoring, "performance": context.performance,
                        "auth": context.auth_kind(),
                    })
                })
                .collect();
            out.list(
                &Value::Array(rows),
                &[
                    ("NAME", "/name"),
                    ("CURRENT", "/current"),
                    ("GATEWAY", "/gateway"),
                    ("REGISTRY", "/registry"),
                    ("MONITORING", "/monitoring"),
                    ("PERFORMANCE", "/performance"),
                    ("AUTH", "/auth"),
                ],
            );
        }
        ContextCommand::Use { name } => {
            if !file.contexts.contains_key(&name) {
                return Err(Failure::not_found(format!("no context named {name} (see pake context ls)")));
            }
            file.current = Some(name.clone());
            file.save(&path)?;
            out.done(&json!({"current": name}), &format!("current context: {name}"));
        }
    }
    Ok(())
}

/// The spans of a trace in tree order (children after their parent, by start), each
/// with its name indented by depth and a bar placing it on the trace's timeline.
fn waterfall(trace: &Value) -> Vec<Value> {
    const WIDTH: f64 = 40.0;
    let spans = trace["spans"].as_array().map_or(&[][..], Vec::as_slice);
    let start = |span: &Value| {
        span["start_time"]
            .as_str()
            .and_then(|at| chrono::DateTime::parse_from_rfc3339(at).ok())
            .map_or(0, |at| at.timestamp_micros())
    };
    let duration = |span: &Value| span["duration_us"].as_i64().unwrap_or(0).max(0);
    let first = spans.iter().map(start).min().unwrap_or(0);
    let last = spans.iter().map(|span| start(span) + duration(span)).max().unwrap_or(0);
    let total = (last - first).max(1) as f64;
    let ids: std::collections::HashSet<&str> = spans.iter().filter_map(|span| span["span_id"].as_str()).collect();
    let mut rows = Vec::new();
    // Roots are spans whose parent is absent from the trace.
    let mut stack: Vec<(&Value, usize)> = spans
        .iter()
        .filter(|span| span["parent_span_id"].as_str().is_none_or(|parent| !ids.contains(parent)))
        .map(|span| (span, 0))
        .collect();
    stack.sort_by_key(|(span, _)| std::cmp::Reverse(start(span)));
    while let Some((span, depth)) = stack.pop().filter(|_| rows.len() < spans.len()) {
        let offset = ((start(span) - first) as f64 / total * WIDTH).round() as usize;
        let length = ((duration(span) as f64 / total * WIDTH).round() as usize)
            .max(1)
            .min(WIDTH as usize - offset.min(WIDTH as usize - 1));
        rows.push(json!({
            "span": format!("{}{}", "  ".repeat(depth), span["name"].as_str().unwrap_or("?")),
            "service": span["service"],
            "status": span["status"],
            "duration_ms": duration(span) as f64 / 1000.0,
            "bar": format!("|{}{}{}|", " ".repeat(offset), "#".repeat(length), " ".repeat((WIDTH as usize).saturating_sub(offset + length))),
        }));
        let mut children: Vec<&Value> = spans
            .iter()
            .filter(|child| child["parent_span_id"] == span["span_id"] && child["span_id"] != span["span_id"])
            .collect();
        children.sort_by_key(|child| std::cmp::Reverse(start(child)));
        stack.extend(children.into_iter().map(|child| (child, depth + 1)));
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::waterfall;
    use serde_json::json;

    #[test]
    fn a_waterfall_places_children_under_their_parent_on_the_traces_timeline() {
        let span = |id: &str, parent: Option<&str>, name: &str, from_ms: u32, duration_us: u64| {
            json!({"span_id": id, "parent_span_id": parent, "name": name, "service": "gateway", "status": "ok",
                "start_time": format!("2026-01-01T00:00:00.{from_ms:03}Z"), "duration_us": duration_us})
        };
        // Given out of order, with a span whose parent is not in the trace (a root too).
        let trace = json!({"spans": [
            span("b", Some("a"), "search", 50, 50_000),
            span("c", Some("b"), "query", 60, 20_000),
            span("a", None, "GET /v1/search", 0, 100_000),
            span("d", Some("elsewhere"), "late", 90, 10_000),
        ]});
        let rows = waterfall(&trace);
        let names: Vec<&str> = rows.iter().map(|row| row["span"].as_str().unwrap()).collect();
        assert_eq!(names, ["GET /v1/search", "  search", "    query", "late"]);
        let bars: Vec<&str> = rows.iter().map(|row| row["bar"].as_str().unwrap()).collect();
        assert_eq!(bars[0], format!("|{}|", "#".repeat(40)));
        assert_eq!(bars[1], format!("|{}{}|", " ".repeat(20), "#".repeat(20)));
        assert_eq!(bars[2], format!("|{}{}{}|", " ".repeat(24), "#".repeat(8), " ".repeat(8)));
        assert_eq!(bars[3], format!("|{}{}|", " ".repeat(36), "#".repeat(4)));
        assert_eq!(rows[1]["duration_ms"], 50.0);
    }
}
