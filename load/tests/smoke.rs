//! The load suite against a deployment, as an operator runs it against staging: `pake
//! serve` started as a process of its own with its default settings (embedded SQLite in a
//! temporary directory, an admin client, and nothing else), and the `load` binary run
//! against it. A run with a token per tenant (the default) must make no error at all; a run
//! with a token per user must be throttled at the token endpoint, retry, and still make no
//! error. A `pake serve` whose token limit is not the default is read as it is (the gateway
//! publishes it) and warned about. Correctness, not latency: the 1000-user verdict is
//! `cargo xtask load`'s.
//!
//! `pake` is the binary `cargo test --workspace` builds beside this test; when it is
//! missing (`cargo test -p load` alone), it is built first.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `pake serve`, killed when dropped, with its data directory removed.
struct Pake {
    child: Child,
    gateway: SocketAddr,
    registry: SocketAddr,
    data_dir: PathBuf,
}

impl Drop for Pake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The `pake` binary of this build profile, built when missing.
fn pake_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/smoke-… → target/<profile>/
    let profile_dir = exe.parent().and_then(Path::parent).expect("a target directory").to_path_buf();
    let pake = profile_dir.join("pake");
    if !pake.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "-p", "pake"]).current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|name| name == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "cargo build -p pake failed: {status}");
    }
    pake
}

impl Pake {
    /// `pake serve` with its defaults on ephemeral ports; its addresses are read from its
    /// JSON log, which is drained to stderr afterwards.
    fn start(admin_id: &str, admin_secret: &str) -> Pake {
        Pake::start_with(admin_id, admin_secret, &[])
    }

    /// [`Pake::start`] with the settings `env` changes from their defaults.
    fn start_with(admin_id: &str, admin_secret: &str, env: &[(&str, &str)]) -> Pake {
        let data_dir = std::env::temp_dir().join(format!("pake-load-smoke-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&data_dir).expect("a data directory");
        let mut command = Command::new(pake_binary());
        command.arg("serve");
        // Nothing from the caller's environment may change a default.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PAKE_") {
                command.env_remove(name);
            }
        }
        let mut child = command
            .env("PAKE_DATA_DIR", &data_dir)
            .env("PAKE_GATEWAY_ADDR", "127.0.0.1:0")
            .env("PAKE_REGISTRY_ADDR", "127.0.0.1:0")
            .env("PAKE_PERFORMANCE_ADDR", "127.0.0.1:0")
            .env("PAKE_MONITORING_ADDR", "127.0.0.1:0")
            .env("PAKE_ADMIN_CLIENT_ID", admin_id)
            .env("PAKE_ADMIN_CLIENT_SECRET", admin_secret)
            .env("PAKE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pake starts");
        let stdout = child.stdout.take().expect("its stdout");
        let (found, addresses) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                let fields = if event["fields"].is_object() { &event["fields"] } else { &event };
                if let (Some(message), Some(addr)) = (fields["message"].as_str(), fields["addr"].as_str())
                    && let Some(service) =
                        ["gateway", "registry"].into_iter().find(|s| message.starts_with(&format!("{s} listening")))
                    && let Ok(addr) = addr.parse::<SocketAddr>()
                {
                    let _ = found.send((service, addr));
                }
                if event["level"].as_str().is_some_and(|level| level == "WARN" || level == "ERROR") {
                    eprintln!("pake: {line}");
                }
            }
        });
        let (mut gateway, mut registry) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while gateway.is_none() || registry.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match addresses.recv_timeout(left) {
                Ok(("gateway", addr)) => gateway = Some(addr),
                Ok((_, addr)) => registry = Some(addr),
                Err(_) => panic!("pake serve did not listen within 30 s: {:?}", child.try_wait()),
            }
        }
        Pake { child, gateway: gateway.expect("a gateway"), registry: registry.expect("a registry"), data_dir }
    }
}

/// Runs the `load` binary against `pake` with `args`; whether it passed (with its output
/// when it did not) and its `summary.json`.
fn load(pake: &Pake, admin: (&str, &str), args: &[&str]) -> (Result<(), String>, Value) {
    let out_dir = pake.data_dir.join(format!("load-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&out_dir).expect("an output directory");
    // Its output (goose's tables, the summary) is shown only when the run fails.
    let output_path = out_dir.join("output.txt");
    let output = std::fs::File::create(&output_path).expect("an output file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_load"))
        .args(["--host", &format!("http://{}", pake.gateway), "--registry", &format!("http://{}", pake.registry)])
        // Fast upstreams and short thoughts: many requests in a few seconds.
        .args(["--upstream-latency-ms", "5", "--upstream-jitter-ms", "5", "--think-min-ms", "200"])
        .args(["--think-max-ms", "600"])
        // A debug build on a shared machine: latency is `cargo xtask load`'s to judge.
        .args(["--sla-p95-ms", "5000"])
        .args(args)
        .arg("--out-dir")
        .arg(&out_dir)
        .env_remove("PAKE_TOKEN_REQUESTS_PER_SECOND")
        .env("PAKE_LOAD_ADMIN_CLIENT_ID", admin.0)
        .env("PAKE_LOAD_ADMIN_CLIENT_SECRET", admin.1)
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("the output file"))
        .stderr(output)
        .spawn()
        .expect("load starts");
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.try_wait().expect("load runs") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("load {args:?} did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&output_path).unwrap_or_default();
    let passed = if status.success() { Ok(()) } else { Err(format!("load {args:?} exited {status}:\n{output}")) };
    let summary = std::fs::read_to_string(out_dir.join("summary.json"))
        .unwrap_or_else(|e| panic!("summary.json is written ({e}); the run's output:\n{output}"));
    (passed, serde_json::from_str(&summary).expect("summary.json is JSON"))
}

/// Where the preflight says a token limit read from the gateway came from.
const PUBLISHED: &str = "published by the gateway in RateLimit-Policy";

fn count(summary: &Value, pointer: &str) -> u64 {
    summary.pointer(pointer).and_then(Value::as_u64).unwrap_or_else(|| panic!("{pointer} in {summary:#}"))
}

#[test]
fn the_load_binary_passes_against_pake_serve_with_default_settings() {
    let admin_id = "pk_load_smoke_admin";
    let admin_secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let pake = Pake::start(admin_id, &admin_secret);
    let admin = (admin_id, admin_secret.as_str());

    // The default: four tenants, one token each, shared by their users.
    let (passed, summary) = load(&pake, admin, &["--users", "40", "--hatch-rate", "40", "--run-time", "5"]);
    if let Err(output) = passed {
        panic!("the run passes: {output}");
    }
    assert_eq!(count(&summary, "/overall/errors"), 0, "no error at all: {:#}", summary["overall"]);
    assert_eq!(count(&summary, "/sign_ins/answered"), 4, "one sign-in per tenant: {:#}", summary["sign_ins"]);
    assert_eq!(count(&summary, "/sign_ins/throttled_and_retried"), 0);
    let tenants = summary["tenants"].as_array().expect("tenant rows");
    assert_eq!(tenants.len(), 4);
    for tenant in tenants {
        assert_eq!(tenant["users"], 10, "{tenant}");
        assert!(tenant["requests"].as_u64().is_some_and(|n| n > 20), "every tenant works: {tenant}");
    }
    for name in ["token", "search", "document", "summary", "discovery"] {
        let row = summary["transactions"].as_array().and_then(|rows| rows.iter().find(|t| t["name"] == name));
        assert!(row.is_some_and(|t| t["requests"].as_u64() > Some(0)), "{name} ran: {:#}", summary["transactions"]);
    }
    // The token limit and both policies were read, and none is a problem for this run.
    assert_eq!(summary["limits"]["limits"].as_array().map(Vec::len), Some(3), "{:#}", summary["limits"]);
    let token_limit = &summary["limits"]["limits"][0];
    assert_eq!(token_limit["source"], PUBLISHED, "{token_limit}");
    assert_eq!((token_limit["allowed_per_sec"].as_f64(), token_limit["burst"].as_u64()), (Some(20.0), Some(40)));
    assert_eq!(summary["limits"]["warnings"], serde_json::json!([]));
    assert!(summary["cache_hit_rate"].as_f64().is_some_and(|rate| rate > 0.2), "{}", summary["cache_hit_rate"]);

    // A token per user: sixty sign-ins in a third of a second from one address pass the
    // default limit (20/s, 40 at once) only by waiting for Retry-After, and that is no error.
    let (passed, summary) =
        load(&pake, admin, &["--users", "60", "--hatch-rate", "200", "--run-time", "5", "--token-per", "user"]);
    if let Err(output) = passed {
        panic!("the run passes: {output}");
    }
    assert_eq!(count(&summary, "/overall/errors"), 0, "no error at all: {:#}", summary["overall"]);
    assert_eq!(count(&summary, "/sign_ins/answered"), 60, "every user signs in: {:#}", summary["sign_ins"]);
    assert!(count(&summary, "/sign_ins/throttled_and_retried") > 0, "{:#}", summary["sign_ins"]);
    let warnings = summary["limits"]["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w.as_str().is_some_and(|w| w.starts_with("60 sign-ins at 200/s"))),
        "the ramp was warned about: {warnings:?}"
    );
}

#[test]
fn the_preflight_reads_a_token_limit_the_gateway_was_given() {
    let admin_id = "pk_load_smoke_admin";
    let admin_secret = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    let pake = Pake::start_with(admin_id, &admin_secret, &[("PAKE_TOKEN_REQUESTS_PER_SECOND", "5")]);
    let admin = (admin_id, admin_secret.as_str());

    // Thirty sign-ins at 60/s against 5/s and 11 at once: the last about 4 s in, not 0.5.
    let args = ["--users", "30", "--hatch-rate", "60", "--run-time", "6", "--token-per", "user"];
    let (passed, summary) = load(&pake, admin, &args);
    if let Err(output) = passed {
        panic!("the run passes: {output}");
    }
    let token_limit = &summary["limits"]["limits"][0];
    assert_eq!(token_limit["source"], PUBLISHED, "{token_limit}");
    assert_eq!((token_limit["allowed_per_sec"].as_f64(), token_limit["burst"].as_u64()), (Some(5.0), Some(10)));
    let warnings = summary["limits"]["warnings"].as_array().expect("warnings");
    let expected = "30 sign-ins at 60/s from one address exceed the gateway's 5 token requests/s (burst 10; published \
                    by the gateway in RateLimit-Policy)";
    assert!(warnings.iter().any(|w| w.as_str().is_some_and(|w| w.starts_with(expected))), "{warnings:?}");
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains("the last user signs in about 4 s after the start"))),
        "{warnings:?}"
    );
    // The limit is real: sign-ins were throttled, retried, and every user got in.
    assert_eq!(count(&summary, "/overall/errors"), 0, "no error at all: {:#}", summary["overall"]);
    assert_eq!(count(&summary, "/sign_ins/answered"), 30, "{:#}", summary["sign_ins"]);
    assert!(count(&summary, "/sign_ins/throttled_and_retried") > 0, "{:#}", summary["sign_ins"]);

    // --token-rate overrides what is published, and the preflight says both.
    let (passed, summary) = load(&pake, admin, &["--users", "4", "--run-time", "2", "--token-rate", "50"]);
    if let Err(output) = passed {
        panic!("the run passes: {output}");
    }
    let token_limit = &summary["limits"]["limits"][0];
    assert_eq!(
        token_limit["source"],
        "--token-rate / PAKE_TOKEN_REQUESTS_PER_SECOND, overriding the 5.0/s the gateway publishes",
        "{token_limit}"
    );
    assert_eq!((token_limit["allowed_per_sec"].as_f64(), token_limit["burst"].as_u64()), (Some(50.0), Some(100)));
    let warnings = summary["limits"]["warnings"].as_array().expect("warnings");
    assert!(
        warnings.iter().any(|w| w.as_str().is_some_and(|w| w.contains("but the gateway publishes 5.0/s"))),
        "{warnings:?}"
    );
}
