//! One request, many users: the load generator behind the performance service's
//! benchmarks, as a library. A [`Plan`] names the base URL (the gateway), the request
//! every simulated user repeats, how many users start how fast, how long the full load is
//! held and the think time; [`run`] drives goose with it and reports every answer to an
//! [`Observer`] as it comes, so that the caller can show progress while it runs and judge
//! the result when it ends. A [`Stop`] ends the run early; what was measured until then
//! stays measured.
//!
//! Goose keeps process-wide state (its stop switch, its ctrl-c handler, its logger), so
//! one load test runs in a process at a time: [`Slot::take`] waits for the process's load
//! generator, first come first served, and [`run`] needs the slot. A run that fails or
//! panics ends as an error of that run, not of the process.

use anyhow::{Context, Result, anyhow};
use goose::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

/// What one benchmark sends, and how hard.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Where the requests go, e.g. the gateway's `http://127.0.0.1:8080`.
    pub base_url: String,
    /// `GET`, `POST`…
    pub method: String,
    /// The path (and query) appended to `base_url`.
    pub path: String,
    /// Headers sent with every request.
    pub headers: Vec<(String, String)>,
    /// The body sent with every request, verbatim.
    pub body: Option<String>,
    pub users: usize,
    /// Users started per second.
    pub hatch_rate: f64,
    /// How long the full load is held once every user has started.
    pub hold: Duration,
    /// Pause of each user between two requests.
    pub think: Duration,
}

/// The slowest hatch rate goose starts users at: one a day.
pub const SLOWEST_HATCH_RATE: f64 = 1.0 / 86_400.0;

/// Told of every answer while the run goes on.
pub trait Observer: Send + Sync + 'static {
    /// One request: how long it took and its status (`None`: no answer at all).
    fn request(&self, took: Duration, status: Option<u16>);
}

/// Ends a run early; cloned handles stop the same run.
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The plan ran to its end.
    Completed,
    /// [`Stop`] ended it early.
    Stopped,
}

/// The end of a run.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    pub ended: Ended,
    /// From the start of the load test to the last user's stop.
    pub elapsed: Duration,
}

static GENERATOR: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process's load generator, held for one run.
pub struct Slot(#[allow(dead_code)] tokio::sync::MutexGuard<'static, ()>);

impl Slot {
    /// Waits until no other load test runs in this process (first come, first served).
    pub async fn take() -> Slot {
        Slot(GENERATOR.lock().await)
    }
}

/// Makes goose's ctrl-c handling chain with the process's own instead of replacing it.
///
/// Goose installs a ctrl-c handler when a load test starts, and that replaces any handler
/// the process (tokio's `ctrl_c`) installed before: the process would no longer stop on
/// ctrl-c. Installed here first, before the process listens for its signals, the handler
/// that stops a running load test comes before the process's in the chain, goose keeps it
/// (it installs its own only once per process), and ctrl-c still reaches the process.
/// Call it once at start, before anything awaits a signal; later calls do nothing.
pub fn install_signal_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(error) = ctrlc::set_handler(|| goose::trigger_killswitch("interrupted")) {
            eprintln!("load generator: no ctrl-c handler: {error}");
        }
    });
}

fn parse_method(method: &str) -> Result<reqwest::Method> {
    reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .with_context(|| format!("{method} is not an HTTP method"))
}

/// The URL every request goes to: `path` appended to `base_url` as text, never resolved
/// against it, so that no path (`//elsewhere/…`, `/../`) leads away from the base's host.
fn target(base_url: &str, path: &str) -> Result<reqwest::Url> {
    let base = reqwest::Url::parse(base_url).with_context(|| format!("{base_url} is not a URL"))?;
    if !path.starts_with('/') {
        return Err(anyhow!("the path {path} does not start with /"));
    }
    let url = reqwest::Url::parse(&format!("{}{path}", base_url.trim_end_matches('/')))
        .with_context(|| format!("{path} is not a path"))?;
    if (url.scheme(), url.host_str(), url.port_or_known_default())
        != (base.scheme(), base.host_str(), base.port_or_known_default())
    {
        return Err(anyhow!("the path {path} leads away from {base_url}"));
    }
    Ok(url)
}

/// The goose command line of a plan.
fn arguments(plan: &Plan) -> Vec<String> {
    vec![
        "--host".into(),
        plan.base_url.trim_end_matches('/').to_string(),
        "--users".into(),
        plan.users.max(1).to_string(),
        "--increase-rate".into(),
        plan.hatch_rate.to_string(),
        "--run-time".into(),
        format!("{}s", plan.hold.as_secs().max(1)),
        "--no-telnet".into(),
        "--no-reset-metrics".into(),
        "--no-print-metrics".into(),
        "--quiet".into(),
    ]
}

/// The one transaction of a benchmark user: the plan's request, timed, told to `observer`.
fn transaction(plan: &Plan, observer: Arc<dyn Observer>) -> Result<Transaction> {
    let method = parse_method(&plan.method)?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &plan.headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("{name} is not a header name"))?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .with_context(|| format!("the value of {name} is not a header value"))?;
        headers.append(name, value);
    }
    let url = target(&plan.base_url, &plan.path)?;
    let shared = Arc::new((method, url, headers, plan.body.clone()));
    let function: TransactionFunction = Arc::new(move |user| {
        let shared = shared.clone();
        let observer = observer.clone();
        Box::pin(async move {
            let (method, url, headers, body) = &*shared;
            let mut builder = user.client.request(method.clone(), url.clone()).headers(headers.clone());
            if let Some(body) = body {
                builder = builder.body(body.clone());
            }
            let started = Instant::now();
            let answer = builder.send().await;
            let took = started.elapsed();
            let status = answer.as_ref().ok().map(|response| response.status().as_u16());
            // The whole answer is part of the request's time, as a client sees it.
            let (took, error) = match answer {
                Ok(response) => match response.bytes().await {
                    Ok(_) => (started.elapsed(), None),
                    Err(error) => (started.elapsed(), Some(error.to_string())),
                },
                Err(error) => (took, Some(error.to_string())),
            };
            let status = if error.is_some() { None } else { status };
            observer.request(took, status);
            let success = matches!(status, Some(200..=399));
            let error = error.or_else(|| (!success).then(|| format!("{}", status.unwrap_or(0))));
            user.record_custom_request_duration(method.as_str(), "benchmark", took, success, status, error.as_deref())
                .await?;
            Ok(())
        })
    });
    Ok(Transaction::new(function).set_name("benchmark"))
}

/// Runs `plan` with the process's load generator, telling `observer` of every answer,
/// until the plan ends or `stop` is used.
pub async fn run(_slot: &Slot, plan: &Plan, observer: Arc<dyn Observer>, stop: &Stop) -> Result<Finished> {
    if plan.hatch_rate.is_nan() || plan.hatch_rate < SLOWEST_HATCH_RATE {
        return Err(anyhow!("the hatch rate must be at least one user a day"));
    }
    if stop.is_stopped() {
        return Ok(Finished { ended: Ended::Stopped, elapsed: Duration::ZERO });
    }
    let configuration = goose::config::GooseConfiguration::parse_args_default(&arguments(plan))
        .map_err(|e| anyhow!("configuring the load generator: {e:?}"))?;
    let mut scenario = scenario!("benchmark").register_transaction(transaction(plan, observer)?);
    if !plan.think.is_zero() {
        scenario = scenario.set_wait_time(plan.think, plan.think).map_err(|e| anyhow!("think time: {e}"))?;
    }
    let attack = goose::GooseAttack::initialize_with_config(configuration)
        .map_err(|e| anyhow!("starting the load generator: {e}"))?
        .register_scenario(scenario);
    let started = Instant::now();
    // Goose clears its stop switch as the load test starts: a stop is repeated until the
    // run has ended, so that one given before that moment is not lost.
    let running = tokio::spawn(attack.execute());
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                if stop.is_stopped() {
                    goose::trigger_killswitch("the benchmark was cancelled");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let outcome = running.await;
    watcher.abort();
    let _ = watcher.await;
    goose::reset_killswitch();
    let elapsed = started.elapsed();
    match outcome {
        Ok(Ok(_metrics)) => {
            let ended = if stop.is_stopped() { Ended::Stopped } else { Ended::Completed };
            Ok(Finished { ended, elapsed })
        }
        Ok(Err(error)) => Err(anyhow!("the load generator failed: {error}")),
        Err(join) if join.is_panic() => Err(anyhow!("the load generator panicked")),
        Err(join) => Err(anyhow!("the load generator stopped: {join}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_read_in_any_case_and_nonsense_is_refused() {
        assert_eq!(parse_method("get").unwrap(), reqwest::Method::GET);
        assert_eq!(parse_method("OPTIONS").unwrap(), reqwest::Method::OPTIONS);
        assert!(parse_method("GE T").is_err());
    }

    #[test]
    fn paths_stay_on_the_base_host() {
        let url = target("http://127.0.0.1:8080/", "//example.com/x?q=1").unwrap();
        assert_eq!(url.host_str(), Some("127.0.0.1"));
        assert_eq!(url.port(), Some(8080));
        assert_eq!(url.path(), "//example.com/x");
        assert_eq!(
            target("http://127.0.0.1:8080", "/v1/search?q=a").unwrap().as_str(),
            "http://127.0.0.1:8080/v1/search?q=a"
        );
        assert!(target("http://127.0.0.1:8080", "@example.com/").is_err());
    }

    #[test]
    fn the_plan_becomes_a_goose_configuration() {
        let plan = Plan {
            base_url: "http://127.0.0.1:8080/".into(),
            method: "GET".into(),
            path: "/v1/search".into(),
            headers: vec![],
            body: None,
            users: 3,
            hatch_rate: 0.5,
            hold: Duration::from_secs(2),
            think: Duration::ZERO,
        };
        let arguments = arguments(&plan);
        assert!(arguments.windows(2).any(|pair| pair == ["--increase-rate", "0.5"]));
        assert!(arguments.windows(2).any(|pair| pair == ["--host", "http://127.0.0.1:8080"]));
        assert!(goose::config::GooseConfiguration::parse_args_default(&arguments).is_ok());
    }
}
