//! The contract-generic conformance engine: reads an OpenAPI 3.1 contract at test time,
//! generates requests for every operation from its schemas with proptest, sends them over
//! real HTTP to a base URL and checks every answer against the contract.
//!
//! Per operation it first runs the deterministic coverage phase ([`crate::coverage`]:
//! every optional property present and absent, every enum value, bounds and just past
//! them, empty and full arrays, integers written as whole floats), then random cases.
//! Per operation it runs positive cases (valid parameters and body: accepted), negative
//! cases (one thing broken: rejected with a 4xx and the error body) and, for secured
//! operations, requests without a token and with a bad one (401). Per path it probes the
//! undeclared methods (405 with `Allow`). Per resource the contract's links describe, it
//! runs create → read → update → list → delete → read-is-404 sequences
//! ([`crate::stateful`]), the first of complete inputs so that every optional property of
//! a create and an update is read back, with the resources a body names created first.
//! A failing case is shrunk and reported with `curl` commands.
//!
//! Nothing here knows a particular contract: a new contract needs no change to the engine.
//! It does not start servers either (tests do, or the target is already running) and
//! sends one request at a time: it checks behaviour, not throughput (that is `load/`).

use crate::check::{Violation, check_response};
use crate::contract::{Contract, ContractError, Operation, ParamLocation};
use crate::coverage::{self, Place};
use crate::generate::Generator;
use crate::mutate::{self, Negative, Shape};
use crate::report::{CaseKind, Check, Failure, Report};
use crate::request::{Auth, HttpRequest, Payload};
use crate::schema::{self, Validators};
use crate::stateful::{self, Resource};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::{SBoxedStrategy, Union, ValueTree};
use proptest::test_runner::{RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where the contract comes from.
#[derive(Debug, Clone)]
pub enum ContractSource {
    /// An OpenAPI document on disk (`openapi/service-mesh.yaml`).
    File(PathBuf),
    /// An OpenAPI document as text, named for reports (tests write small ones inline).
    Text { name: String, text: String },
}

impl ContractSource {
    pub fn file(path: impl Into<PathBuf>) -> ContractSource {
        ContractSource::File(path.into())
    }

    pub fn text(name: impl Into<String>, text: impl Into<String>) -> ContractSource {
        ContractSource::Text { name: name.into(), text: text.into() }
    }

    pub fn load(&self) -> Result<Contract, ContractError> {
        match self {
            ContractSource::File(path) => Contract::load(path),
            ContractSource::Text { name, text } => Contract::from_yaml_str(name, text),
        }
    }
}

/// The server under test.
#[derive(Clone)]
pub struct Target {
    /// `http://127.0.0.1:8000`, or a staging URL (a path prefix is kept).
    pub base_url: String,
    /// A bearer token with every scope the contract uses; without one, secured
    /// operations get only the authentication cases.
    pub token: Option<String>,
    /// A token the server must refuse with 401.
    pub bad_token: String,
}

/// The token the engine sends when it must be refused.
pub const DEFAULT_BAD_TOKEN: &str = "pake-conformance-invalid-token";

impl Target {
    pub fn new(base_url: impl Into<String>) -> Target {
        Target { base_url: base_url.into(), token: None, bad_token: DEFAULT_BAD_TOKEN.to_string() }
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Target {
        self.token = Some(token.into());
        self
    }

    pub fn with_bad_token(mut self, bad_token: impl Into<String>) -> Target {
        self.bad_token = bad_token.into();
        self
    }

    /// This target unless the environment names another: `PAKE_CONFORMANCE_BASE_URL`
    /// (an already-running server or a staging URL), `PAKE_CONFORMANCE_TOKEN` and
    /// `PAKE_CONFORMANCE_BAD_TOKEN`.
    pub fn or_from_env(self) -> Target {
        self.or_from_vars(|name| std::env::var(name).ok())
    }

    /// [`Target::or_from_env`] with the variables read through `lookup`.
    pub fn or_from_vars(mut self, lookup: impl Fn(&str) -> Option<String>) -> Target {
        if let Some(url) = lookup("PAKE_CONFORMANCE_BASE_URL") {
            self.base_url = url;
        }
        if let Some(token) = lookup("PAKE_CONFORMANCE_TOKEN") {
            self.token = Some(token);
        }
        if let Some(bad_token) = lookup("PAKE_CONFORMANCE_BAD_TOKEN") {
            self.bad_token = bad_token;
        }
        self
    }
}

impl std::fmt::Debug for Target {
    // The token is a secret: it is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("base_url", &self.base_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("bad_token", &self.bad_token)
            .finish()
    }
}

/// How much to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Every case derives from this seed (and the operationId), so a run is repeatable.
    pub seed: u64,
    /// Positive and negative cases per operation (each).
    pub cases_per_operation: u32,
    /// Whether to run the stateful sequences.
    pub stateful: bool,
    /// Sequences per resource.
    pub sequences_per_resource: u32,
    /// Requests (or sequences) spent shrinking one failure.
    pub max_shrink_runs: u32,
    pub request_timeout: Duration,
    /// Parameters positive cases leave out (unless required): `name` for every
    /// operation or `operationId.name` for one. Their valid values come only from earlier
    /// answers (pagination cursors) or make the server wait (blocking queries). Negative
    /// cases still break them.
    pub leave_out: BTreeSet<String>,
    /// Per operationId, statuses that valid data may also get because of the server's
    /// state, beyond the ones every operation may get (a declared 404, 409, 412 or 429,
    /// and a declared 401 on a public operation whose credentials are in the body).
    pub also_accepted: BTreeMap<String, BTreeSet<u16>>,
}

/// The seed used unless `PAKE_CONFORMANCE_SEED` says otherwise.
pub const DEFAULT_SEED: u64 = 0x5041_4b45;

impl Default for Config {
    fn default() -> Config {
        Config {
            seed: DEFAULT_SEED,
            cases_per_operation: 20,
            stateful: true,
            sequences_per_resource: 2,
            max_shrink_runs: 64,
            request_timeout: Duration::from_secs(30),
            leave_out: BTreeSet::from(["cursor".to_string()]),
            also_accepted: BTreeMap::new(),
        }
    }
}

/// An environment variable the engine reads that holds something it cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{variable}={value:?}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub value: String,
    pub message: &'static str,
}

impl Config {
    /// The defaults with `PAKE_CONFORMANCE_SEED` (decimal or `0x` hex),
    /// `PAKE_CONFORMANCE_CASES`, `PAKE_CONFORMANCE_STATEFUL` (`true`/`false`/`1`/`0`) and
    /// `PAKE_CONFORMANCE_SEQUENCES` applied.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::default().with_env()
    }

    pub fn with_env(self) -> Result<Config, ConfigError> {
        self.with_vars(|name| std::env::var(name).ok())
    }

    /// [`Config::with_env`] with the variables read through `lookup`.
    pub fn with_vars(mut self, lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let read = |variable: &'static str| lookup(variable).map(|v| (variable, v.trim().to_string()));
        if let Some((variable, value)) = read("PAKE_CONFORMANCE_SEED") {
            let parsed = match value.strip_prefix("0x").or_else(|| value.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => value.parse(),
            };
            self.seed = parsed.map_err(|_| ConfigError { variable, value, message: "expected an unsigned integer" })?;
        }
        if let Some((variable, value)) = read("PAKE_CONFORMANCE_CASES") {
            self.cases_per_operation =
                value.parse().map_err(|_| ConfigError { variable, value, message: "expected a count" })?;
        }
        if let Some((variable, value)) = read("PAKE_CONFORMANCE_SEQUENCES") {
            self.sequences_per_resource =
                value.parse().map_err(|_| ConfigError { variable, value, message: "expected a count" })?;
        }
        if let Some((variable, value)) = read("PAKE_CONFORMANCE_STATEFUL") {
            self.stateful = match value.as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" => false,
                _ => return Err(ConfigError { variable, value, message: "expected true or false" }),
            };
        }
        Ok(self)
    }

    /// Lets valid data for `operation_id` also get `status` (the server's state explains it).
    pub fn accept_for_positive(mut self, operation_id: &str, status: u16) -> Config {
        self.also_accepted.entry(operation_id.to_string()).or_default().insert(status);
        self
    }

    /// Leaves a parameter out of positive cases (`name` or `operationId.name`).
    pub fn leave_out_parameter(mut self, parameter: &str) -> Config {
        self.leave_out.insert(parameter.to_string());
        self
    }

    fn leaves_out(&self, operation_id: &str, parameter: &str) -> bool {
        self.leave_out.contains(parameter) || self.leave_out.contains(&format!("{operation_id}.{parameter}"))
    }
}

/// Why an engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("{contract}: {operation}: {message}")]
    Generate { contract: String, operation: String, message: String },
    #[error("cannot build the http client: {0}")]
    Client(String),
}

/// One generated request: parameters (name → value), body and credentials, with what is
/// wrong with it for negative cases.
#[derive(Debug, Clone)]
pub struct Case {
    pub params: Map<String, Value>,
    pub payload: Payload,
    pub auth: Auth,
    pub description: String,
}

/// Valid input for one operation.
#[derive(Debug, Clone)]
pub struct Input {
    pub params: Map<String, Value>,
    pub body: Option<Value>,
}

/// The strategies of one operation.
pub(crate) struct Plan {
    pub positive: SBoxedStrategy<Input>,
    pub negative: Option<SBoxedStrategy<Case>>,
    /// Valid input with every optional parameter and property present (the coverage
    /// phase's starting point); `None` when the schemas cannot give one.
    pub complete: Option<SBoxedStrategy<Input>>,
    pub params_valid: Predicate,
    pub params_travel: Predicate,
    pub body_valid: Predicate,
}

/// A test on a generated value, shared between strategies.
pub(crate) type Predicate = Arc<dyn Fn(&Value) -> bool + Send + Sync>;

/// What one request (or sequence) showed.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    pub requests: Vec<HttpRequest>,
    pub violations: Vec<Violation>,
    pub case: String,
}

/// The engine for one contract and one target.
pub struct Engine {
    pub(crate) contract: Arc<Contract>,
    pub(crate) validators: Arc<Validators>,
    pub(crate) target: Target,
    pub(crate) client: reqwest::Client,
    pub(crate) plans: Vec<Plan>,
    pub(crate) resources: Vec<Resource>,
}

impl Engine {
    /// Loads the contract and builds the generators of every operation; a schema the
    /// engine cannot generate data for is an error here, not halfway through a run.
    pub fn new(source: ContractSource, target: Target) -> Result<Engine, EngineError> {
        let contract = Arc::new(source.load()?);
        let validators = Arc::new(Validators::new(contract.clone()));
        let generator = Generator::new(contract.clone(), validators.clone());
        let mut plans = Vec::new();
        for op in &contract.operations {
            let plan = plan(&generator, op).map_err(|message| EngineError::Generate {
                contract: contract.name.clone(),
                operation: op.id.clone(),
                message,
            })?;
            plans.push(plan);
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EngineError::Client(e.to_string()))?;
        let resources = stateful::discover(&contract);
        Ok(Engine { contract, validators, target, client, plans, resources })
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The resources the stateful sequences cover, found from the contract's links.
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// The requests the engine would send for an operation's positive or negative cases,
    /// without sending them (to look at what it generates, or to test the generators).
    pub fn sample_requests(
        &self,
        operation_id: &str,
        kind: CaseKind,
        count: u32,
        config: &Config,
    ) -> Result<Vec<HttpRequest>, String> {
        let index = self
            .contract
            .operations
            .iter()
            .position(|op| op.id == operation_id)
            .ok_or_else(|| format!("{} has no operation {operation_id}", self.contract.name))?;
        let op = &self.contract.operations[index];
        let strategy = match kind {
            CaseKind::Positive => self.positive_cases(index, config),
            CaseKind::Negative => {
                let auth = self.auth_for(op);
                let negative = self.plans[index].negative.clone().ok_or("the operation has no negative cases")?;
                negative.prop_map(move |case| Case { auth, ..case }).sboxed()
            }
            other => return Err(format!("{} cases are not sampled", other.name())),
        };
        let mut runner = self.runner(config, &[operation_id, "sample", kind.name()]);
        (0..count)
            .map(|_| {
                let case = strategy.new_tree(&mut runner).map_err(|e| e.to_string())?.current();
                Ok(HttpRequest::build(op, &case.params, &case.payload, case.auth))
            })
            .collect()
    }

    /// Runs every case, prints the coverage table and returns the report.
    ///
    /// Generation is synchronous and deterministic (proptest value trees seeded from
    /// `config.seed`); requests are sent one at a time so that a failure's reproduction
    /// is exactly the requests that led to it. The future is not `Send` (proptest's value
    /// trees are not), so it is awaited where it is made, as `#[tokio::test]` does; the
    /// engine itself is `Send + Sync` and can be shared.
    pub async fn run(&self, config: &Config) -> Report {
        let ids: Vec<String> = self.contract.operations.iter().map(|op| op.id.clone()).collect();
        let mut report =
            Report::new(&self.contract.name, &self.target.base_url, config.seed, config.cases_per_operation, &ids);
        for (index, op) in self.contract.operations.iter().enumerate() {
            // Body properties of a create or an update must also reach a checked read-back.
            let written = config.stateful
                && self.resources.iter().any(|r| r.create == op.id || r.update.as_deref() == Some(op.id.as_str()));
            let places = self.tracked(index, config);
            let labels = places.iter().map(|p| p.label(op)).collect();
            let in_sequence = places.iter().map(|p| written && matches!(p, Place::Body(_))).collect();
            report.track(&op.id, labels, in_sequence);
        }
        for index in 0..self.contract.operations.len() {
            self.run_operation(index, config, &mut report).await;
        }
        self.probe_methods(config, &mut report).await;
        if config.stateful {
            stateful::run(self, config, &mut report).await;
        }
        println!("{}", report.coverage_table());
        report
    }

    /// The runner for one phase of one operation: its seed depends only on the run's
    /// seed and the names, so adding an operation does not change the others' cases.
    pub(crate) fn runner(&self, config: &Config, parts: &[&str]) -> TestRunner {
        let settings = proptest::test_runner::Config {
            max_local_rejects: 8192,
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        };
        // XorShift, not ChaCha: the cases need no cryptographic randomness, and an
        // unoptimised ChaCha was most of the run's CPU time.
        TestRunner::new_with_rng(settings, TestRng::from_seed(RngAlgorithm::XorShift, &seed_bytes(config.seed, parts)))
    }

    fn auth_for(&self, op: &Operation) -> Auth {
        if op.is_secured() { Auth::Token } else { Auth::Anonymous }
    }

    /// Positive cases as [`Case`]s, with the parameters `config` leaves out removed.
    pub(crate) fn positive_cases(&self, index: usize, config: &Config) -> SBoxedStrategy<Case> {
        let op = &self.contract.operations[index];
        let auth = self.auth_for(op);
        let left_out: BTreeSet<String> = op
            .params
            .iter()
            .filter(|p| !p.required && config.leaves_out(&op.id, &p.name))
            .map(|p| p.name.clone())
            .collect();
        self.plans[index]
            .positive
            .clone()
            .prop_map(move |input| {
                let mut params = input.params;
                params.retain(|name, _| !left_out.contains(name));
                Case {
                    params,
                    payload: input.body.map_or(Payload::None, Payload::Json),
                    auth,
                    description: String::new(),
                }
            })
            .sboxed()
    }

    async fn run_operation(&self, index: usize, config: &Config, report: &mut Report) {
        let op = &self.contract.operations[index];
        if op.is_secured() && self.target.token.is_none() {
            report.note(format!("{}: no token given, so only authentication cases ran", op.id));
        } else {
            self.run_coverage(index, config, report).await;
            let positive = self.positive_cases(index, config);
            let cases = config.cases_per_operation;
            self.run_cases(index, CaseKind::Positive, "positive", &positive, cases, config, report).await;
            if let Some(negative) = &self.plans[index].negative {
                let auth = self.auth_for(op);
                let negative = negative.clone().prop_map(move |case| Case { auth, ..case }).sboxed();
                self.run_cases(index, CaseKind::Negative, "negative", &negative, cases, config, report).await;
            }
        }
        if op.is_secured() {
            for (auth, phase) in [(Auth::Anonymous, "anonymous"), (Auth::BadToken, "bad-token")] {
                let cases = self.positive_cases(index, config).prop_map(move |case| Case { auth, ..case }).sboxed();
                self.run_cases(index, CaseKind::Auth, phase, &cases, 1, config, report).await;
            }
        }
    }

    /// The optional parameters and body properties of an operation that positive cases
    /// must send both present and absent.
    pub(crate) fn tracked(&self, index: usize, config: &Config) -> Vec<Place> {
        let op = &self.contract.operations[index];
        coverage::tracked(&self.contract, op, |name| config.leaves_out(&op.id, name))
    }

    /// Records which tracked properties a positive case sent.
    fn observe(&self, index: usize, config: &Config, case: &Case, report: &mut Report) {
        let body = match &case.payload {
            Payload::Json(body) => Some(body),
            _ => None,
        };
        let held = coverage::presence(&self.tracked(index, config), &case.params, body);
        report.observe(&self.contract.operations[index].id, &held, false);
    }

    /// The deterministic coverage phase of one operation ([`crate::coverage`]): a
    /// complete request, a minimal one and one per interesting value, each sent once.
    async fn run_coverage(&self, index: usize, config: &Config, report: &mut Report) {
        let op = &self.contract.operations[index];
        let plan = &self.plans[index];
        let Some(complete) = &plan.complete else {
            report.note(format!("{}: no complete request could be generated for the coverage phase", op.id));
            return;
        };
        let mut runner = self.runner(config, &[&op.id, "coverage"]);
        let input = match complete.new_tree(&mut runner) {
            Ok(tree) => tree.current(),
            Err(reason) => {
                report.note(format!("{}: no complete request could be generated: {reason}", op.id));
                return;
            }
        };
        let keep = |mut params: Map<String, Value>| {
            params.retain(|name, _| {
                op.params.iter().any(|p| &p.name == name && (p.required || !config.leaves_out(&op.id, name)))
            });
            params
        };
        let params = keep(input.params);
        let mut fresh_params = || match complete.new_tree(&mut runner) {
            Ok(tree) => keep(tree.current().params),
            Err(_) => params.clone(),
        };
        let places = self.tracked(index, config);
        let checks = coverage::Checks {
            params_valid: &*plan.params_valid,
            params_travel: &*plan.params_travel,
            body_valid: &*plan.body_valid,
        };
        let auth = self.auth_for(op);
        for variant in
            coverage::variants(&self.contract, op, &places, &params, input.body.as_ref(), &checks, &mut fresh_params)
        {
            let kind = if variant.valid { CaseKind::Positive } else { CaseKind::Negative };
            let case = Case {
                params: variant.params,
                payload: variant.body.map_or(Payload::None, Payload::Json),
                auth,
                description: variant.description,
            };
            if kind == CaseKind::Positive {
                self.observe(index, config, &case, report);
            }
            let attempt = self.attempt(op, kind, &case, config).await;
            report.count(&op.id, kind);
            for violation in attempt.violations.clone() {
                if !report.seen(&op.id, kind, violation.check) {
                    report.record(self.failure(&op.id, kind, violation, &attempt));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_cases(
        &self,
        index: usize,
        kind: CaseKind,
        phase: &str,
        strategy: &SBoxedStrategy<Case>,
        count: u32,
        config: &Config,
        report: &mut Report,
    ) {
        let op = &self.contract.operations[index];
        let mut runner = self.runner(config, &[&op.id, phase]);
        for _ in 0..count {
            let mut tree = match strategy.new_tree(&mut runner) {
                Ok(tree) => tree,
                Err(reason) => {
                    report.note(format!("{}: no {} case could be generated: {reason}", op.id, kind.name()));
                    return;
                }
            };
            if kind == CaseKind::Positive {
                self.observe(index, config, &tree.current(), report);
            }
            let first = self.attempt(op, kind, &tree.current(), config).await;
            report.count(&op.id, kind);
            if first.violations.is_empty() {
                continue;
            }
            let mut fresh: Vec<Check> = Vec::new();
            for check in first.violations.iter().map(|v| v.check) {
                if !fresh.contains(&check) && !report.seen(&op.id, kind, check) {
                    fresh.push(check);
                }
            }
            let Some(target) = fresh.first().copied() else { continue };
            let best = self.shrink(op, kind, &mut *tree, first.clone(), target, config).await;
            for check in fresh {
                // The shrunk attempt reproduces the target check; other checks broken by the
                // first attempt keep the first attempt's reproduction unless the shrunk one
                // shows them too.
                let source = if best.violations.iter().any(|v| v.check == check) { &best } else { &first };
                let violation = source.violations.iter().find(|v| v.check == check).cloned();
                if let Some(violation) = violation {
                    report.record(self.failure(&op.id, kind, violation, source));
                }
            }
        }
    }

    pub(crate) fn failure(&self, operation: &str, kind: CaseKind, violation: Violation, attempt: &Attempt) -> Failure {
        Failure {
            operation: operation.to_string(),
            kind,
            check: violation.check,
            message: violation.message,
            case: attempt.case.clone(),
            reproduction: attempt
                .requests
                .iter()
                .map(|r| r.curl(&self.target.base_url, &self.target.bad_token))
                .collect(),
            occurrences: 1,
        }
    }

    /// Simplifies the case while it still breaks `target`, proptest style: simplify after
    /// a failure, complicate after a pass, stop when neither moves or the budget is spent.
    async fn shrink(
        &self,
        op: &Operation,
        kind: CaseKind,
        tree: &mut dyn ValueTree<Value = Case>,
        first: Attempt,
        target: Check,
        config: &Config,
    ) -> Attempt {
        let mut best = first;
        if !tree.simplify() {
            return best;
        }
        for _ in 0..config.max_shrink_runs {
            let attempt = self.attempt(op, kind, &tree.current(), config).await;
            if attempt.violations.iter().any(|v| v.check == target) {
                best = attempt;
                if !tree.simplify() {
                    break;
                }
            } else if !tree.complicate() {
                break;
            }
        }
        best
    }

    /// Sends one case and checks the answer.
    async fn attempt(&self, op: &Operation, kind: CaseKind, case: &Case, config: &Config) -> Attempt {
        let request = HttpRequest::build(op, &case.params, &case.payload, case.auth);
        let violations = match self.send(&request, config).await {
            Err(violation) => vec![violation],
            Ok(response) => {
                let mut violations = check_response(op, &self.validators, &response);
                violations.extend(expectations(op, kind, case, &response, config));
                violations
            }
        };
        let case = match (kind, case.auth) {
            (CaseKind::Auth, Auth::Anonymous) => "no token".to_string(),
            (CaseKind::Auth, _) => "an invalid token".to_string(),
            _ => case.description.clone(),
        };
        Attempt { requests: vec![request], violations, case }
    }

    pub(crate) async fn send(
        &self,
        request: &HttpRequest,
        config: &Config,
    ) -> Result<crate::request::HttpResponse, Violation> {
        let sent =
            request.send(&self.client, &self.target.base_url, self.target.token.as_deref(), &self.target.bad_token);
        match tokio::time::timeout(config.request_timeout, sent).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(Violation::new(Check::Reachable, format!("no answer: {error}"))),
            Err(_) => Err(Violation::new(
                Check::Reachable,
                format!("no answer within {} ms", config.request_timeout.as_millis()),
            )),
        }
    }

    /// Every known path asked with each method it does not declare must answer 405 with
    /// an `Allow` header naming the declared ones.
    async fn probe_methods(&self, config: &Config, report: &mut Report) {
        for (path, declared) in self.contract.paths() {
            let Some(index) = self.contract.operations.iter().position(|op| op.path == path) else { continue };
            let op = &self.contract.operations[index];
            let mut runner = self.runner(config, &[path, "methods"]);
            let Ok(tree) = self.positive_cases(index, config).new_tree(&mut runner) else {
                report.note(format!("{path}: no path parameters could be generated for the method probes"));
                continue;
            };
            let mut case = tree.current();
            case.params
                .retain(|name, _| op.params.iter().any(|p| &p.name == name && p.location == ParamLocation::Path));
            let secured = self.contract.operations.iter().any(|o| o.path == path && o.is_secured());
            let auth = if secured && self.target.token.is_some() { Auth::Token } else { Auth::Anonymous };
            for method in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
                if declared.contains(&method) {
                    continue;
                }
                let mut request = HttpRequest::build(op, &case.params, &Payload::None, auth);
                request.method = method.to_string();
                request.query.clear();
                request.headers.clear();
                let label = format!("{method} {path}");
                report.count(&op.id, CaseKind::Method);
                let violations = match self.send(&request, config).await {
                    Err(violation) => vec![violation],
                    Ok(response) => method_violations(&declared, &response),
                };
                let attempt = Attempt {
                    requests: vec![request],
                    violations: Vec::new(),
                    case: format!("{method} is not declared for {path}"),
                };
                for violation in violations {
                    report.record(self.failure(&label, CaseKind::Method, violation, &attempt));
                }
            }
        }
    }
}

/// The proptest seed for a phase: FNV-1a over the names, mixed with the run's seed by
/// SplitMix64. Both are fixed algorithms, so seeds are the same on every platform and
/// toolchain.
fn seed_bytes(seed: u64, parts: &[&str]) -> [u8; 16] {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut state = mix(seed);
    for part in parts {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in part.bytes().chain([0xff]) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        state = mix(state ^ hash);
    }
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        state = mix(state);
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    bytes
}

fn method_violations(declared: &[&str], response: &crate::request::HttpResponse) -> Vec<Violation> {
    let status = response.status;
    if status >= 500 {
        return vec![Violation::new(Check::NoServerError, format!("answered {status}: {}", response.excerpt()))];
    }
    if status != 405 {
        return vec![Violation::new(
            Check::MethodNotAllowed,
            format!("answered {status} instead of 405 (the path declares {})", declared.join(", ")),
        )];
    }
    let allow: BTreeSet<String> = response
        .header("allow")
        .unwrap_or_default()
        .split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .filter(|m| !m.is_empty())
        .collect();
    let missing: Vec<&str> = declared.iter().copied().filter(|m| !allow.contains(*m)).collect();
    match (response.header("allow"), missing.is_empty()) {
        (None, _) => vec![Violation::new(Check::MethodNotAllowed, "answered 405 without an Allow header")],
        (Some(allow), false) => vec![Violation::new(
            Check::MethodNotAllowed,
            format!("answered 405 with Allow: {allow}, which leaves out {}", missing.join(", ")),
        )],
        (Some(_), true) => Vec::new(),
    }
}

/// What a case expects of the status, beyond the checks every response goes through.
fn expectations(
    op: &Operation,
    kind: CaseKind,
    case: &Case,
    response: &crate::request::HttpResponse,
    config: &Config,
) -> Vec<Violation> {
    let status = response.status;
    // A 5xx is already a failure of its own; saying again that the case was not handled
    // adds nothing.
    if status >= 500 {
        return Vec::new();
    }
    match kind {
        CaseKind::Positive => {
            let state_explains = (op.declares(status)
                && (matches!(status, 404 | 409 | 412 | 429) || (status == 401 && !op.is_secured())))
                || config.also_accepted.get(&op.id).is_some_and(|statuses| statuses.contains(&status));
            if (200..300).contains(&status) || state_explains {
                Vec::new()
            } else {
                vec![Violation::new(
                    Check::PositiveAccepted,
                    format!("a valid request answered {status}: {}", response.excerpt()),
                )]
            }
        }
        CaseKind::Negative => {
            if !(400..500).contains(&status) {
                vec![Violation::new(
                    Check::NegativeRejected,
                    format!("an invalid request ({}) answered {status}", case.description),
                )]
            } else if response.body.is_empty() {
                vec![Violation::new(
                    Check::ErrorBodyOnRejection,
                    format!("rejected with {status} but without an error body"),
                )]
            } else {
                Vec::new()
            }
        }
        CaseKind::Auth => {
            if status == 401 {
                return Vec::new();
            }
            let how = if case.auth == Auth::Anonymous { "without a token" } else { "with an invalid token" };
            vec![Violation::new(Check::AuthenticationRequired, format!("a secured operation {how} answered {status}"))]
        }
        CaseKind::Method | CaseKind::Stateful => Vec::new(),
    }
}

/// Whether a parameter value can travel as the engine sends it: header values are
/// visible ASCII without surrounding space (HTTP would trim it), cookie values are
/// RFC 6265 cookie-octets (no space, `"`, `,`, `;` or `\`), path values are not empty and
/// not `.` or `..` (URL normalisation would remove them).
fn transportable(location: ParamLocation, value: &Value) -> bool {
    let text = schema::param_text(value);
    match location {
        ParamLocation::Header => {
            text.bytes().all(|b| (0x20..0x7f).contains(&b)) && text.trim() == text && !text.is_empty()
        }
        ParamLocation::Cookie => text.bytes().all(|b| (0x21..0x7f).contains(&b) && !b"\",;\\".contains(&b)),
        ParamLocation::Path => !text.is_empty() && text != "." && text != "..",
        ParamLocation::Query => true,
    }
}

/// The parameters as the server reads them: each value's text read back by its declared
/// types. `None` when a value's text fits none of them.
fn as_server_reads(types: &BTreeMap<String, Vec<&'static str>>, params: &Value) -> Option<Value> {
    let mut read = Map::new();
    for (name, value) in params.as_object()? {
        let text = schema::param_text(value);
        let value = match types.get(name) {
            Some(types) => schema::coerce_param(&text, types)?,
            None => Value::String(text),
        };
        read.insert(name.clone(), value);
    }
    Some(Value::Object(read))
}

/// Builds the strategies of one operation.
fn plan(generator: &Generator, op: &Operation) -> Result<Plan, String> {
    let contract = generator.contract().clone();
    let validators = generator.validators().clone();
    let params_schema = contract.params_schema(op);
    let params_validator = validators.get(&params_schema).map_err(|e| format!("parameters: {e}"))?;
    let mut types = BTreeMap::new();
    let mut locations = BTreeMap::new();
    for param in &op.params {
        let folded = schema::fold(&contract, &param.schema).map_err(|e| format!("parameter {}: {e}", param.name))?;
        types.insert(param.name.clone(), schema::types(&folded));
        locations.insert(param.name.clone(), param.location);
    }
    let types = Arc::new(types);
    let locations = Arc::new(locations);

    // Valid parameters must stay valid once sent as text and read back, and must travel.
    let reads_valid = {
        let (types, validator) = (types.clone(), params_validator.clone());
        move |params: &Value| as_server_reads(&types, params).is_some_and(|read| validator.is_valid(&read))
    };
    let travels = {
        let locations = locations.clone();
        move |params: &Value| {
            params.as_object().is_some_and(|map| {
                map.iter().all(|(name, value)| {
                    transportable(locations.get(name).copied().unwrap_or(ParamLocation::Query), value)
                })
            })
        }
    };
    let positive_params = {
        let (reads_valid, travels) = (reads_valid.clone(), travels.clone());
        generator
            .positive_where(&params_schema, move |params| reads_valid(params) && travels(params))
            .map_err(|e| format!("parameters: {e}"))?
    };

    let json_body =
        op.body.as_ref().and_then(|body| body.json()).map(|(media, schema)| (media.to_string(), schema.clone()));
    let body_required = op.body.as_ref().is_some_and(|b| b.required);
    let positive_body: SBoxedStrategy<Option<Value>> = match &json_body {
        Some((_, schema)) => {
            let strategy = generator.positive(schema).map_err(|e| format!("request body: {e}"))?;
            if body_required {
                strategy.prop_map(Some).sboxed()
            } else {
                proptest::option::weighted(0.8, strategy).sboxed()
            }
        }
        None => Just(None).sboxed(),
    };
    let positive = (positive_params.clone(), positive_body.clone())
        .prop_map(|(params, body)| Input { params: params.as_object().cloned().unwrap_or_default(), body })
        .sboxed();
    let complete = {
        let generator = generator.complete();
        let (reads_valid, travels) = (reads_valid.clone(), travels.clone());
        let params = generator.positive_where(&params_schema, move |params| reads_valid(params) && travels(params));
        let body: Result<SBoxedStrategy<Option<Value>>, String> = match &json_body {
            Some((_, schema)) => generator.positive(schema).map(|s| s.prop_map(Some).sboxed()),
            None => Ok(Just(None).sboxed()),
        };
        match (params, body) {
            (Ok(params), Ok(body)) => Some(
                (params, body)
                    .prop_map(|(params, body)| Input { params: params.as_object().cloned().unwrap_or_default(), body })
                    .sboxed(),
            ),
            _ => None,
        }
    };
    let body_valid: Predicate = match &json_body {
        Some((_, schema)) => {
            let validator = validators.get(schema).map_err(|e| format!("request body: {e}"))?;
            Arc::new(move |v: &Value| validator.is_valid(v) && !mutate::holds_nul(v))
        }
        None => Arc::new(|_: &Value| true),
    };
    let params_valid: Predicate = Arc::new(reads_valid.clone());
    let params_travel: Predicate = Arc::new(travels.clone());

    let mut negatives: Vec<(u32, SBoxedStrategy<Case>)> = Vec::new();
    let as_case = |params: Value, payload: Payload, description: String| Case {
        params: params.as_object().cloned().unwrap_or_default(),
        payload,
        auth: Auth::Token,
        description,
    };
    // Operations without parameters too, when their contract says they can answer 400: any
    // query parameter is unknown to them, and the one mutation of their empty parameter
    // object adds one. (Without a declared 400, that answer would break the contract; the
    // linter's rule that every operation lists 400 is what closes the gap.)
    if !op.params.is_empty() || op.declares(400) {
        let path: BTreeSet<String> =
            op.params.iter().filter(|p| p.location == ParamLocation::Path).map(|p| p.name.clone()).collect();
        let still_valid: Arc<dyn Fn(&Value) -> bool + Send + Sync> = Arc::new(reads_valid.clone());
        let broken = mutate::negative(
            contract.clone(),
            params_schema.clone(),
            positive_params.clone(),
            Shape::Params { path },
            still_valid,
        )
        .prop_filter("parameters that travel", move |negative| travels(&negative.value));
        let strategy = (broken, positive_body.clone())
            .prop_map(move |(negative, body): (Negative, Option<Value>)| {
                as_case(
                    negative.value,
                    body.map_or(Payload::None, Payload::Json),
                    format!("parameters {}", negative.description),
                )
            })
            .sboxed();
        negatives.push((3, strategy));
    }
    if let Some((_, body_schema)) = &json_body {
        let validator = validators.get(body_schema).map_err(|e| format!("request body: {e}"))?;
        let body_positive = generator.positive(body_schema).map_err(|e| format!("request body: {e}"))?;
        let still_valid: Arc<dyn Fn(&Value) -> bool + Send + Sync> =
            Arc::new(move |v: &Value| validator.is_valid(v) && !mutate::holds_nul(v));
        let broken =
            mutate::negative(contract.clone(), body_schema.clone(), body_positive.clone(), Shape::Body, still_valid);
        let strategy = (positive_params.clone(), broken)
            .prop_map(move |(params, negative)| {
                as_case(params, Payload::Json(negative.value), format!("body {}", negative.description))
            })
            .sboxed();
        negatives.push((5, strategy));

        // Bodies that are not JSON of the declared media type at all.
        let raw = (positive_params.clone(), body_positive, any::<Index>(), 0..3usize)
            .prop_filter_map("a malformed body", move |(params, body, cut, variant)| {
                let text = body.to_string();
                let (payload, description) = match variant {
                    0 => {
                        // Any proper prefix of an object or array is unterminated JSON.
                        let broken = if body.is_object() || body.is_array() {
                            let boundaries: Vec<usize> =
                                (1..text.len()).filter(|i| text.is_char_boundary(*i)).collect();
                            if boundaries.is_empty() {
                                return None;
                            }
                            text[..*cut.get(&boundaries)].to_string()
                        } else {
                            format!("{{{text}")
                        };
                        let bytes = broken.into_bytes();
                        (Payload::Raw { content_type: Some("application/json".into()), bytes }, "malformed JSON")
                    }
                    1 => (
                        Payload::Raw { content_type: Some("text/plain".into()), bytes: text.into_bytes() },
                        "a JSON body sent as text/plain",
                    ),
                    _ if body_required => (Payload::Raw { content_type: None, bytes: Vec::new() }, "no body"),
                    _ => return None,
                };
                Some(as_case(params, payload, description.to_string()))
            })
            .sboxed();
        negatives.push((2, raw));
    }
    let negative = match negatives.len() {
        0 => None,
        _ => Some(Union::new_weighted(negatives).sboxed()),
    };
    Ok(Plan { positive, negative, complete, params_valid, params_travel, body_valid })
}
