//! The operator CLI, run as a user would (`pake <noun> <verb>` in a process of its own)
//! against one real `pake serve` of the four services: tables and JSON, exit codes, login
//! and contexts in a config file of the test's own, a 401 that refreshes the cached token,
//! and declarative apply/diff. `client_auth` tests the token helper the CLI is built on;
//! it is a module of this binary so that the two run side by side.

// Under its own directory: a file directly in tests/ would be a test binary of its own.
#[path = "cli/client_auth.rs"]
mod client_auth;
mod support;

use serde_json::Value;
use std::path::{Path, PathBuf};
use support::Pake;

const SECRET: &str = "cli-test-secret-0123456789abcdef-0123456789";
const ADMIN_ID: &str = "cli-admin";
const ADMIN_SECRET: &str = "cli-admin-secret-0123456789abcdef-0123456789";

/// What one run of the CLI did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| panic!("not JSON ({error}): {self:?}"))
    }

    #[track_caller]
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "{self:?}");
        self
    }

    #[track_caller]
    fn fails(self, code: i32, says: &str) -> Run {
        assert_eq!(self.code, code, "{self:?}");
        assert!(self.stderr.contains(says), "stderr does not say {says:?}: {self:?}");
        self
    }
}

/// The CLI with a config file of its own and the platform's URLs in its environment.
struct Operator {
    config: PathBuf,
    urls: Vec<(&'static str, String)>,
}

impl Operator {
    async fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[]).await
    }

    async fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.run_full(args, env, "").await
    }

    /// Runs with `input` on standard input.
    async fn run_full(&self, args: &[&str], env: &[(&str, &str)], input: &str) -> Run {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pake"));
        command.args(args).env("PAKE_CONFIG", &self.config).env("NO_COLOR", "1");
        for variable in ["PAKE_TOKEN", "PAKE_CONTEXT", "PAKE_CLIENT_SECRET", "PAKE_PERFORMANCE_URL"] {
            command.env_remove(variable);
        }
        for (name, value) in &self.urls {
            command.env(name, value);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("pake runs");
        let mut stdin = child.stdin.take().expect("stdin");
        tokio::io::AsyncWriteExt::write_all(&mut stdin, input.as_bytes()).await.expect("input written");
        drop(stdin);
        let output = child.wait_with_output().await.expect("pake ends");
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// A directory of the test's own, removed when the test ends, passed or not.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("pake-{what}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// The header and rows of a table, split on runs of two or more spaces.
fn table(text: &str) -> Vec<Vec<String>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.split("  ").map(str::trim).filter(|cell| !cell.is_empty()).map(String::from).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_against_a_running_platform() {
    // Declared before the platform, so it is removed after the platform is stopped.
    let scratch = Scratch::new("cli");
    let dir = scratch.0.clone();
    let pake = Pake::start(
        &["registry", "gateway", "performance", "monitoring"],
        &[
            ("PAKE_DATA_DIR", dir.join("data").display().to_string()),
            ("PAKE_TOKEN_SECRET", SECRET.to_string()),
            ("PAKE_ADMIN_CLIENT_ID", ADMIN_ID.to_string()),
            ("PAKE_ADMIN_CLIENT_SECRET", ADMIN_SECRET.to_string()),
        ],
    )
    .await;
    let config = dir.join("home").join("pake").join("config.toml");
    let pake_cli = Operator {
        config: config.clone(),
        urls: vec![
            ("PAKE_REGISTRY_URL", pake.url("registry")),
            ("PAKE_GATEWAY_URL", pake.url("gateway")),
            ("PAKE_MONITORING_URL", pake.url("monitoring")),
            ("PAKE_PERFORMANCE_URL", pake.url("performance")),
        ],
    };
    let cli = &pake_cli;

    // Not logged in: the service's 401 is exit code 5 with the way out.
    cli.run(&["services", "ls"]).await.fails(5, "pake login");
    // Wrong credentials are refused at login and nothing is written.
    cli.run(&["login", "--client-id", ADMIN_ID, "--client-secret", "wrong-secret-0123456789abcdef-0123456789"])
        .await
        .fails(5, "invalid client credentials");
    assert!(!config.exists());
    let logged = cli.run(&["login", "--client-id", ADMIN_ID, "--client-secret", ADMIN_SECRET]).await.ok();
    assert!(logged.stdout.contains("logged in to context default"), "{logged:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&config).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let stored = std::fs::read_to_string(&config).unwrap();
    assert!(stored.contains("access_token = ") && stored.contains(&pake.url("gateway")), "{stored}");

    // Registry: register, conflict, list as a table and as JSON, not found.
    let registered = cli
        .run(&["services", "register", "--name", "arxiv-search", "--version", "1.0.0", "--tag", "search"])
        .await
        .ok();
    let rows = table(&registered.stdout);
    assert_eq!(rows[0], ["ID", "NAME", "VERSION", "TAGS", "UPDATED"]);
    assert_eq!(rows[1][1..4], ["arxiv-search", "1.0.0", "search"]);
    cli.run(&["services", "register", "--name", "arxiv-search", "--version", "1.0.0"])
        .await
        .fails(4, "already registered");
    let listed = cli.run(&["services", "ls", "-o", "json"]).await.ok().json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["name"], "arxiv-search");
    cli.run(&["services", "get", "no-such-service"]).await.fails(3, "no service named no-such-service");
    let yaml = cli.run(&["services", "get", "arxiv-search", "-o", "yaml"]).await.ok();
    assert!(yaml.stdout.contains("name: arxiv-search"), "{yaml:?}");
    let updated =
        cli.run(&["services", "update", "arxiv-search", "--version", "1.1.0", "-o", "json"]).await.ok().json();
    assert_eq!(updated["version"], "1.1.0");

    let instance = cli
        .run(&[
            "instances",
            "register",
            "arxiv-search",
            "--address",
            "127.0.0.1",
            "--port",
            "9",
            "--ttl",
            "120",
            "-o",
            "json",
        ])
        .await
        .ok()
        .json();
    let instance_id = instance["id"].as_str().unwrap().to_string();
    let quiet = cli.run(&["instances", "ls", "arxiv-search", "-q"]).await.ok();
    assert_eq!(quiet.stdout.trim(), instance_id, "--quiet prints ids alone");
    cli.run(&["instances", "heartbeat", "arxiv-search", &instance_id]).await.ok();
    let discovered = cli.run(&["discover", "arxiv-search", "--all", "-o", "json"]).await.ok().json();
    assert_eq!(discovered["instances"][0]["id"], instance_id.as_str());

    // Configuration with compare-and-set.
    let set =
        cli.run(&["config", "set", "arxiv-search", "production", "max_results", "50", "-o", "json"]).await.ok().json();
    assert_eq!(set["version"], 1);
    cli.run(&["config", "set", "arxiv-search", "production", "max_results", "60", "--expect-version", "7"])
        .await
        .fails(4, "");
    cli.run(&["config", "set", "arxiv-search", "production", "max_results", "60", "--expect-version", "1"]).await.ok();
    let got = table(&cli.run(&["config", "get", "arxiv-search", "production", "max_results"]).await.ok().stdout);
    assert_eq!(got[1][..3], ["max_results", "60", "2"]);
    let history =
        cli.run(&["config", "history", "arxiv-search", "production", "max_results", "-o", "json"]).await.ok().json();
    assert_eq!(history.as_array().map(Vec::len), Some(2));

    // Gateway: a route from a file, clients, cache, breakers; bad input is a usage error.
    let route = write(
        &dir,
        "route.yaml",
        "name: search\npath_prefix: /search\nmethods: [GET]\napi_version: v1\nservice: arxiv-search\n",
    );
    let created = table(&cli.run(&["routes", "create", "-f", &route]).await.ok().stdout);
    assert_eq!(created[1][1..6], ["search", "v1", "/search", "GET", "arxiv-search"]);
    cli.run(&["routes", "create", "-f", &route]).await.fails(4, "");
    let bad = write(&dir, "bad-route.yaml", "name: search\npath_prefix: search\n");
    cli.run(&["routes", "create", "-f", &bad]).await.fails(2, "invalid input");
    cli.run(&["routes", "create", "-f", "/nonexistent/route.yaml"]).await.fails(2, "reading");
    cli.run(&["cache", "invalidate"]).await.fails(2, "--tag");
    cli.run(&["routes", "frobnicate"]).await.fails(2, "");
    let stats = cli.run(&["cache", "stats", "-o", "json"]).await.ok().json();
    assert!(stats["lookups"].is_u64(), "{stats}");
    let invalidated = cli.run(&["cache", "invalidate", "--tag", "arxiv"]).await.ok();
    assert!(invalidated.stdout.starts_with("invalidated "), "{invalidated:?}");
    assert_eq!(
        table(&cli.run(&["breakers", "ls"]).await.ok().stdout)[0][..4],
        ["UPSTREAM", "SERVICE", "ADDRESS", "STATE"]
    );
    let scopes =
        ["monitoring:read", "monitoring:write", "performance:read", "performance:write", "mesh:read", "gateway:admin"];
    let mut create = vec!["clients", "create", "--name", "ops", "--tenant", "pake", "-o", "json"];
    for scope in &scopes {
        create.extend(["--scope", scope]);
    }
    let ops = cli.run(&create).await.ok().json();
    let (ops_id, ops_secret) = (ops["client_id"].as_str().unwrap(), ops["client_secret"].as_str().unwrap());

    // A 401 that refreshes: the cached token is refused, a new one fetched and cached.
    let stored = std::fs::read_to_string(&config).unwrap();
    let cached = |text: &str| text.lines().find(|l| l.starts_with("access_token")).unwrap_or_default().to_string();
    let broken = stored.replace(&cached(&stored), "access_token = \"not.a.token\"");
    std::fs::write(&config, broken).unwrap();
    cli.run(&["services", "ls"]).await.ok();
    let refreshed = cached(&std::fs::read_to_string(&config).unwrap());
    assert!(refreshed.starts_with("access_token = \"ey") && refreshed != cached(&stored), "{refreshed}");
    // PAKE_TOKEN overrides the context, and a static token is not refreshed.
    cli.run_with(&["services", "ls"], &[("PAKE_TOKEN", "not.a.token")]).await.fails(5, "");

    // The admin client has no monitoring scope (403 is exit 5); a second context has.
    cli.run(&["alerts", "ls"]).await.fails(5, "lack this scope");
    // The secret may come on standard input, kept out of the process list.
    cli.run_full(&["login", "--context", "ops", "--client-id", ops_id], &[], &format!("{ops_secret}\n")).await.ok();
    cli.run(&["context", "use", "default"]).await.ok();
    let contexts = table(&cli.run(&["context", "ls"]).await.ok().stdout);
    assert_eq!(contexts[1][..2], ["default", "*"]);
    assert_eq!(contexts[2][0], "ops");
    cli.run(&["context", "use", "nowhere"]).await.fails(3, "no context named nowhere");
    cli.run(&["alerts", "ls", "--context", "ops"]).await.ok();
    cli.run(&["context", "use", "ops"]).await.ok();
    assert_eq!(table(&cli.run(&["alerts", "ls"]).await.ok().stdout)[0][..4], ["ID", "RULE", "SEVERITY", "STATE"]);

    // Monitoring: the health table of every service, metrics, rules from a file.
    let health = table(&cli.run(&["health", "--service", "all"]).await.ok().stdout);
    assert_eq!(health[0], ["SERVICE", "STATUS", "PASSING", "WARNING", "CRITICAL", "UNKNOWN"]);
    assert!(health.iter().any(|row| row[0] == "arxiv-search"), "{health:?}");
    // The gateway's series arrive with the monitoring service's first scrape of it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let metrics = cli.run(&["metrics", "--source", "gateway", "-o", "json"]).await.ok().json();
        if metrics.as_array().is_some_and(|series| !series.is_empty()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no gateway series scraped: {metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let rules = write(
        &dir,
        "rules.yaml",
        "name: search-down\nmetric: up\nmatchers: [{label: service, op: equal, value: arxiv-search}]\n\
         comparison: lt\nthreshold: 1\nfor_seconds: 10\nseverity: critical\n",
    );
    let applied = table(&cli.run(&["rules", "apply", "-f", &rules]).await.ok().stdout);
    assert_eq!(applied[1], ["AlertRule", "search-down", "created"]);
    assert_eq!(table(&cli.run(&["rules", "ls"]).await.ok().stdout)[1][1], "search-down");

    // Declarative: diff shows what apply will do, apply does it, then nothing differs.
    let platform = write(
        &dir,
        "platform.yaml",
        "kind: Receiver\nspec: {name: oncall, url: 'http://127.0.0.1:9/hook'}\n---\n\
         kind: AlertRule\nspec: {name: search-down, metric: up, matchers: [{label: service, op: equal, value: arxiv-search}], comparison: lt, threshold: 2, for_seconds: 10, severity: critical, receivers: [oncall]}\n---\n\
         kind: Slo\nspec: {name: availability, service: arxiv-search, objective: availability, target: 99.9}\n---\n\
         kind: TrafficPolicy\nspec: {service: arxiv-search, load_balancing: least_request}\n",
    );
    let diff = cli.run(&["diff", "-f", &platform]).await;
    assert_eq!(diff.code, 1, "{diff:?}");
    assert!(diff.stdout.contains("+ Receiver oncall"), "{diff:?}");
    assert!(
        diff.stdout.contains("~ AlertRule search-down\n    receivers: - -> oncall\n    threshold: 1 -> 2\n"),
        "{diff:?}"
    );
    assert!(diff.stdout.contains("load_balancing: round_robin -> least_request"), "{diff:?}");
    // The ops client may not write traffic policies: apply stops there (exit 5), having
    // applied what came before; with a token that may, the rest is applied.
    cli.run(&["apply", "-f", &platform]).await.fails(5, "mesh:write");
    let mut mint = vec!["token"];
    for scope in ["mesh:read", "mesh:write", "monitoring:read", "monitoring:write", "performance:read"] {
        mint.extend(["--scope", scope]);
    }
    let root = cli.run_with(&mint, &[("PAKE_TOKEN_SECRET", SECRET)]).await.ok().stdout.trim().to_string();
    let as_root = [("PAKE_TOKEN", root.as_str())];
    let applied = table(&cli.run_with(&["apply", "-f", &platform], &as_root).await.ok().stdout);
    let actions: Vec<&str> = applied[1..].iter().map(|row| row[2].as_str()).collect();
    assert_eq!(actions, ["unchanged", "unchanged", "unchanged", "configured"], "{applied:?}");
    let rule = cli.run(&["rules", "ls", "-o", "json"]).await.ok().json();
    assert_eq!(rule[0]["threshold"], 2.0);
    assert!(rule[0]["receivers"][0].as_str().is_some_and(|id| id.parse::<uuid::Uuid>().is_ok()), "{rule}");
    let again = cli.run_with(&["diff", "-f", &platform], &as_root).await.ok();
    assert_eq!(again.stdout.trim(), "no differences");

    // Traces: a request made on a trace is shown as its span tree; an unknown trace is not found.
    let traced = reqwest::Client::new()
        .get(format!("{}/api/v1/services", pake.url("registry")))
        .bearer_auth(&root)
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .send()
        .await
        .unwrap();
    assert_eq!(traced.status(), 200);
    let mut waterfall = Vec::new();
    for _ in 0..50 {
        let shown = cli.run(&["trace", "4bf92f3577b34da6a3ce929d0e0e4736"]).await;
        if shown.code == 0 {
            waterfall = table(&shown.stdout);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        waterfall.get(1).map(|row| (row[0].as_str(), row[1].as_str())),
        Some(("listServices", "registry")),
        "{waterfall:?}"
    );
    cli.run(&["trace", "0af7651916cd43dd8448eb211c80319c"]).await.fails(3, "no trace 0af7651916cd43dd8448eb211c80319c");

    // Performance: SLOs and their report.
    assert_eq!(
        table(&cli.run(&["slos", "ls"]).await.ok().stdout)[1][1..4],
        ["availability", "arxiv-search", "availability"]
    );
    let report = cli.run(&["slos", "report", "availability", "-o", "json"]).await.ok().json();
    assert_eq!(report["service"], "arxiv-search");
    // Benchmarks: a bad one names its field; one through the gateway is watched to its
    // verdict (every error rate is at most 100 %: it passes once a request was sent).
    cli.run(&["bench", "start", "--service", "nowhere", "--path", "/v1/search"]).await.fails(2, "/service");
    let bench = ["bench", "start", "--service", "arxiv-search", "--path", "/v1/search", "--users", "1", "--duration"];
    let bench = [&bench[..], &["1", "--think-ms", "100", "--error-rate", "1", "--header", "accept: application/json"]];
    let watched = cli.run(&bench.concat()).await.ok();
    assert!(watched.stdout.contains("completed"), "{watched:?}");
    assert!(watched.stdout.contains("under the threshold of 100%"), "{watched:?}");
    let benchmarks = cli.run(&["bench", "ls", "-o", "json"]).await.ok().json();
    assert!(benchmarks[0]["result"]["requests"].as_u64().is_some_and(|n| n > 0), "{benchmarks}");
    let id = benchmarks[0]["id"].as_str().unwrap_or_default().to_string();
    cli.run(&["bench", "cancel", &id]).await.fails(4, "already completed");
    cli.run(&["bench", "watch", &uuid::Uuid::new_v4().to_string()]).await.fails(3, "");

    // Alerts: a silence by label; acknowledging an alert that does not exist is exit 3.
    let silence = table(
        &cli.run(&["alerts", "silence", "--matcher", "service=arxiv-search", "--hours", "0.5", "--comment", "deploy"])
            .await
            .ok()
            .stdout,
    );
    assert_eq!(silence[1][1..3], ["active", "service=arxiv-search"]);
    cli.run(&["alerts", "silence", "--matcher", "service", "--comment", "x"]).await.fails(2, "label=value");
    cli.run(&["alerts", "ack", &uuid::Uuid::new_v4().to_string()]).await.fails(3, "");

    // Removal verbs, by name.
    cli.run_with(&["rules", "delete", "search-down"], &as_root).await.ok();
    assert_eq!(table(&cli.run(&["rules", "ls"]).await.ok().stdout).len(), 1, "only the header is left");
    cli.run(&["clients", "rotate-secret", "ops", "-q"]).await.ok();
    // The ops context's client secret was rotated: its cached token still works until it
    // expires, but a fresh login with the old secret is refused.
    cli.run(&["login", "--context", "ops", "--client-id", ops_id, "--client-secret", ops_secret]).await.fails(5, "");
    cli.run(&["routes", "delete", "search", "--context", "default"]).await.ok();
    cli.run(&["routes", "get", "search", "--context", "default"]).await.fails(3, "no route named search");
    cli.run(&["instances", "deregister", "arxiv-search", &instance_id, "--context", "default"]).await.ok();
    cli.run(&["services", "deregister", "arxiv-search", "--context", "default"]).await.ok();
    cli.run(&["services", "get", "arxiv-search", "--context", "default"]).await.fails(3, "");

    // Without PAKE_CONFIG the file is under $XDG_CONFIG_HOME, else under ~/.config.
    let xdg = dir.join("xdg");
    let elsewhere = [("PAKE_CONFIG", ""), ("XDG_CONFIG_HOME", xdg.to_str().unwrap())];
    cli.run_with(&["login", "--token", "t0k3n"], &elsewhere).await.ok();
    assert!(std::fs::read_to_string(xdg.join("pake/config.toml")).unwrap().contains("token = \"t0k3n\""));
    let home = dir.join("home-dir");
    let at_home = [("PAKE_CONFIG", ""), ("XDG_CONFIG_HOME", ""), ("HOME", home.to_str().unwrap())];
    cli.run_with(&["login", "--token", "t0k3n"], &at_home).await.ok();
    assert!(home.join(".config/pake/config.toml").exists());

    // Offline rule tests in promtool's format: no platform, no login.
    write(
        &dir,
        "down.yml",
        "- {name: down, metric: up, comparison: lt, threshold: 1, for_seconds: 60, severity: critical}\n",
    );
    let case = |expected: &str| {
        format!(
            "rule_files: [down.yml]\nevaluation_interval: 1m\ntests:\n- interval: 1m\n  input_series:\n  \
             - {{series: 'up{{service=\"a\"}}', values: '1 0x5'}}\n  alert_rule_test:\n  \
             - {{eval_time: {expected}, alertname: down, exp_alerts: []}}\n"
        )
    };
    let quiet_at_start = write(&dir, "quiet.yml", &case("0m"));
    let wrong = write(&dir, "wrong.yml", &case("5m"));
    let offline = [("PAKE_CONFIG", "/nonexistent/config.toml")];
    let passed = cli.run_with(&["rules", "test", &quiet_at_start], &offline).await.ok();
    assert!(passed.stdout.contains("SUCCESS"), "{passed:?}");
    cli.run_with(&["rules", "test", &quiet_at_start, &wrong], &offline).await.fails(1, "FAILED");

    // A service nobody answers for is exit 6, naming where it was looked for.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let nowhere = format!("http://127.0.0.1:{port}");
    cli.run(&["services", "ls", "--registry-url", &nowhere]).await.fails(6, &nowhere);

    // Completions for the shells, generated from the same command tree.
    let bash = cli.run(&["completions", "bash"]).await.ok();
    assert!(bash.stdout.contains("pake") && bash.stdout.contains("services"), "{}", &bash.stdout[..200]);
}
