//! The research users: sign in (the client-credentials grant) as a tenant's backend does,
//! then search (queries follow a Zipf distribution, so a hot set exists), fetch documents
//! (Zipf too), post summaries, and now and then ask the registry for a service's
//! instances — with a think time between actions. Every transaction is named; each
//! request's latency and outcome is also recorded by [`Recorder`], per tenant, for the
//! verdict.
//!
//! Sign-in behaves as a real client: a 429 from the token endpoint is retried after its
//! `Retry-After` plus jitter, and counted as a throttled sign-in, not as a failed request.
//! With [`TokenPer::Tenant`] the users of one tenant share one token (the first to need it
//! signs in, the others wait for it), as a tenant's backend serving many people would;
//! every request still carries it.

use crate::setup::{Credentials, routes};
use crate::zipf::Zipf;
use goose::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Names of the transactions, as reports show them.
pub const TRANSACTIONS: [&str; 5] = ["token", "search", "document", "summary", "discovery"];

/// The name goose reports a throttled (and retried) sign-in attempt under.
pub const THROTTLED_SIGN_IN: &str = "token throttled";

/// What a user does between sign-ins: each transaction with its weight and the gateway
/// route it goes through. The scenario and the limit check both read it.
pub const MIX: [(&str, usize, &str); 4] = [
    ("search", 12, routes::SEARCH),
    ("document", 6, routes::DOCUMENTS),
    ("summary", 2, routes::SUMMARIES),
    ("discovery", 1, routes::DISCOVERY),
];

/// Who signs in: every user for itself, or a tenant once for all its users.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenPer {
    User,
    Tenant,
}

/// What an answer counts as in the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Ok,
    /// 429: a limit refused it.
    Throttled,
    /// 5xx, or no answer at all (timeout, refused or reset connection): the platform failed.
    Failed,
    /// Any other answer (401, 403, 404…): the request was refused as wrong.
    Refused,
}

impl Outcome {
    /// The one place answers are classified; `None` is no answer at all.
    pub fn of(status: Option<u16>) -> Outcome {
        match status {
            Some(200..=299) => Outcome::Ok,
            Some(429) => Outcome::Throttled,
            Some(500..=599) | None => Outcome::Failed,
            Some(_) => Outcome::Refused,
        }
    }
}

/// Latencies and outcomes of one transaction of one tenant. Every sample is kept: a
/// 1000-user minute is tens of thousands of samples.
#[derive(Default, Clone, Debug)]
pub struct Samples {
    /// Latency of every request counted (not of retried sign-in attempts), in µs.
    pub micros: Vec<u64>,
    /// 429 answers that were not retried.
    pub throttled: u64,
    /// 5xx answers and requests with no answer.
    pub failed: u64,
    /// Other non-2xx answers.
    pub refused: u64,
    /// Error answers by status (0: no answer).
    pub statuses: BTreeMap<u16, u64>,
    /// Sign-in attempts answered 429 and retried after `Retry-After`: not errors.
    pub retried: u64,
    /// Time spent waiting before those retries, in ms.
    pub retry_wait_ms: u64,
}

impl Samples {
    pub fn errors(&self) -> u64 {
        self.throttled + self.failed + self.refused
    }

    /// Adds `other`'s counts and samples to these.
    pub fn merge(&mut self, other: &Samples) {
        self.micros.extend_from_slice(&other.micros);
        self.throttled += other.throttled;
        self.failed += other.failed;
        self.refused += other.refused;
        for (status, count) in &other.statuses {
            *self.statuses.entry(*status).or_default() += count;
        }
        self.retried += other.retried;
        self.retry_wait_ms += other.retry_wait_ms;
    }
}

/// Samples per tenant (its index) and transaction.
#[derive(Default)]
pub struct Recorder {
    samples: Mutex<BTreeMap<(usize, &'static str), Samples>>,
}

impl Recorder {
    fn with(&self, tenant: usize, name: &'static str, change: impl FnOnce(&mut Samples)) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        change(samples.entry((tenant, name)).or_default());
    }

    /// A request counted in the verdict, with its answer's status (`None`: no answer).
    pub fn record(&self, tenant: usize, name: &'static str, took: Duration, status: Option<u16>) {
        self.with(tenant, name, |entry| {
            entry.micros.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
            let counter = match Outcome::of(status) {
                Outcome::Ok => return,
                Outcome::Throttled => &mut entry.throttled,
                Outcome::Failed => &mut entry.failed,
                Outcome::Refused => &mut entry.refused,
            };
            *counter += 1;
            *entry.statuses.entry(status.unwrap_or(0)).or_default() += 1;
        });
    }

    /// A sign-in answered 429 that is retried after `wait`.
    pub fn retried_sign_in(&self, tenant: usize, wait: Duration) {
        self.with(tenant, "token", |entry| {
            entry.retried += 1;
            entry.retry_wait_ms += u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        });
    }

    pub fn snapshot(&self) -> BTreeMap<(usize, &'static str), Samples> {
        self.samples.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// A token and when to get a new one.
#[derive(Clone, Debug)]
struct Issued {
    token: Arc<str>,
    renew_at: Instant,
}

/// One tenant of the run: its API client, and the token its users share.
pub struct Tenant {
    pub credentials: Credentials,
    shared: tokio::sync::Mutex<Option<Issued>>,
}

/// What the transactions share during one run.
pub struct RunState {
    pub tenants: Vec<Tenant>,
    pub token_per: TokenPer,
    pub recorder: Recorder,
    /// How long after the first transaction throttled sign-ins are retried (the ramp and
    /// the run time: the run is over by then).
    patience: Duration,
    /// When the first transaction started.
    started: OnceLock<Instant>,
    queries: Zipf,
    documents: Zipf,
}

impl RunState {
    /// The moment past which a throttled sign-in is not retried.
    fn retry_until(&self) -> Instant {
        *self.started.get_or_init(Instant::now) + self.patience
    }
}

static STATE: RwLock<Option<Arc<RunState>>> = RwLock::new(None);

/// Installs the state of the run about to start; throttled sign-ins are retried until
/// `patience` after its first transaction.
pub fn install(credentials: Vec<Credentials>, token_per: TokenPer, patience: Duration) -> Arc<RunState> {
    let state = Arc::new(RunState {
        tenants: credentials
            .into_iter()
            .map(|credentials| Tenant { credentials, shared: tokio::sync::Mutex::new(None) })
            .collect(),
        token_per,
        recorder: Recorder::default(),
        patience,
        started: OnceLock::new(),
        queries: Zipf::new(500, 1.0),
        documents: Zipf::new(2000, 1.0),
    });
    *STATE.write().unwrap_or_else(PoisonError::into_inner) = Some(state.clone());
    state
}

fn state() -> Result<Arc<RunState>, Box<TransactionError>> {
    STATE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .ok_or_else(|| Box::new(TransactionError::Custom("no load run is installed".into())))
}

/// The tenant a user belongs to: users are dealt to tenants in turn.
pub fn tenant_of(user_index: usize, tenants: usize) -> usize {
    user_index % tenants.max(1)
}

/// A user's session: its tenant and the token it sends.
#[derive(Clone)]
struct Session {
    issued: Issued,
}

/// How long to wait before retrying a 429 for the `attempt`th time (1 for the first): its
/// `Retry-After` (delta-seconds; 1 s when absent or unreadable), never less, plus a random
/// share of a window — half of it and a quarter second — that doubles with each refusal up
/// to eight times, so that the refused do not all come back in the same instant and a crowd
/// refused again and again thins out (capped exponential backoff with jitter, as client
/// libraries do).
pub fn retry_wait(retry_after: Option<&str>, attempt: u32, random: f64) -> Duration {
    let seconds = retry_after.and_then(|value| value.trim().parse::<u64>().ok()).unwrap_or(1);
    let base = Duration::from_secs(seconds);
    let window = (base / 2 + Duration::from_millis(250)) * (1u32 << attempt.clamp(1, 4).saturating_sub(1));
    base + window.mul_f64(random.clamp(0.0, 1.0))
}

/// Signs in with the tenant's credentials, retrying throttled attempts; `None` when no
/// token could be had (the failure is recorded).
///
/// Attempts are recorded as custom requests rather than sent through `GooseUser::request`:
/// goose enters every non-2xx answer of `request` in its error summary before
/// `set_success` could correct it, and a 429 this client retries is not an error.
async fn sign_in(
    user: &mut GooseUser,
    state: &RunState,
    tenant: usize,
) -> Result<Option<Issued>, Box<TransactionError>> {
    let credentials = &state.tenants[tenant].credentials;
    let grant = serde_json::json!({
        "grant_type": "client_credentials", "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
    });
    let mut refusals = 0;
    loop {
        let builder = user.get_request_builder(&GooseMethod::Post, "/v1/auth/token")?.json(&grant);
        let started = Instant::now();
        let answer = builder.send().await;
        let mut took = started.elapsed();
        let mut status = answer.as_ref().ok().map(|r| r.status().as_u16());
        if status == Some(429)
            && let Ok(response) = &answer
        {
            let header = response.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok());
            refusals += 1;
            let wait = retry_wait(header, refusals, rand::random::<f64>());
            if Instant::now() + wait < state.retry_until() {
                state.recorder.retried_sign_in(tenant, wait);
                user.record_custom_request_duration("POST", THROTTLED_SIGN_IN, took, true, Some(429), None).await?;
                tokio::time::sleep(wait).await;
                continue;
            }
        }
        let mut issued = None;
        if let Ok(response) = answer
            && response.status().is_success()
        {
            match response.json::<serde_json::Value>().await {
                Ok(body) if body["access_token"].is_string() => {
                    let lifetime = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(300));
                    issued = Some(Issued {
                        token: body["access_token"].as_str().unwrap_or_default().into(),
                        // Renewed with a tenth of its life left, as token caches do.
                        renew_at: Instant::now() + lifetime.mul_f64(0.9),
                    });
                }
                // A 2xx without a token is the platform failing.
                _ => status = None,
            }
            took = started.elapsed();
        }
        state.recorder.record(tenant, "token", took, status);
        let error = match (Outcome::of(status), status) {
            (Outcome::Ok, _) => None,
            (_, Some(code)) => Some(format!("{code}: sign-in")),
            (_, None) => Some("no token: sign-in".to_string()),
        };
        user.record_custom_request_duration("POST", "token", took, error.is_none(), status, error.as_deref()).await?;
        return Ok(issued);
    }
}

/// The token this user sends, signing in (or waiting for its tenant's sign-in) when it has
/// none yet or it is due for renewal.
async fn ensure_token(user: &mut GooseUser, state: &RunState) -> Result<Option<Arc<str>>, Box<TransactionError>> {
    if let Some(session) = user.get_session_data::<Session>()
        && session.issued.renew_at > Instant::now()
    {
        return Ok(Some(session.issued.token.clone()));
    }
    let tenant = tenant_of(user.weighted_users_index, state.tenants.len());
    let issued = match state.token_per {
        TokenPer::User => sign_in(user, state, tenant).await?,
        TokenPer::Tenant => {
            // The first user to need the tenant's token signs in while the others wait on
            // the lock; the guard is held across the sign-in on purpose.
            let mut shared = state.tenants[tenant].shared.lock().await;
            match shared.as_ref() {
                Some(issued) if issued.renew_at > Instant::now() => Some(issued.clone()),
                _ => {
                    let fresh = sign_in(user, state, tenant).await?;
                    if fresh.is_some() {
                        *shared = fresh.clone();
                    }
                    fresh
                }
            }
        }
    };
    Ok(issued.map(|issued| {
        let token = issued.token.clone();
        user.set_session_data(Session { issued });
        token
    }))
}

/// Sends one named request with the user's token, records it, and returns the answer.
async fn send(
    user: &mut GooseUser,
    name: &'static str,
    method: GooseMethod,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Option<reqwest::Response>, Box<TransactionError>> {
    let state = state()?;
    // A user whose sign-in failed sends without a token, and its 401s are counted.
    // A token that could not be renewed is sent while it lasts.
    let token = match user.get_session_data::<Session>().map(|session| session.issued.token.clone()) {
        Some(current) => ensure_token(user, &state).await?.or(Some(current)),
        None => None,
    };
    let mut builder = user.get_request_builder(&method, path)?;
    if let Some(token) = &token {
        builder = builder.bearer_auth(token);
    }
    if let Some(body) = &body {
        builder = builder.json(body);
    }
    let request = GooseRequest::builder().method(method).path(path).name(name).set_request_builder(builder).build();
    let started = Instant::now();
    let answer = user.request(request).await?;
    let took = started.elapsed();
    let response = answer.response.ok();
    let tenant = tenant_of(user.weighted_users_index, state.tenants.len());
    state.recorder.record(tenant, name, took, response.as_ref().map(|r| r.status().as_u16()));
    Ok(response)
}

async fn token(user: &mut GooseUser) -> TransactionResult {
    let state = state()?;
    state.started.get_or_init(Instant::now);
    match ensure_token(user, &state).await? {
        Some(_) => Ok(()),
        None => Err(Box::new(TransactionError::Custom("the user could not sign in".into()))),
    }
}

async fn search(user: &mut GooseUser) -> TransactionResult {
    let rank = state()?.queries.sample();
    send(user, "search", GooseMethod::Get, &format!("/v1/search?q=topic-{rank}"), None).await?;
    Ok(())
}

async fn document(user: &mut GooseUser) -> TransactionResult {
    let rank = state()?.documents.sample();
    send(user, "document", GooseMethod::Get, &format!("/v1/documents/doc-{rank}"), None).await?;
    Ok(())
}

async fn summary(user: &mut GooseUser) -> TransactionResult {
    let rank = state()?.documents.sample();
    let body = serde_json::json!({"document_id": format!("doc-{rank}"), "length": "short"});
    send(user, "summary", GooseMethod::Post, "/v1/summaries", Some(body)).await?;
    Ok(())
}

async fn discovery(user: &mut GooseUser) -> TransactionResult {
    send(user, "discovery", GooseMethod::Get, "/v1/mesh/api/v1/discovery/research-search", None).await?;
    Ok(())
}

/// The researcher scenario: think time `think` (low, high) between transactions.
pub fn researcher(think: (Duration, Duration)) -> Result<Scenario, GooseError> {
    let weight = |name: &str| MIX.iter().find(|(n, _, _)| *n == name).map(|(_, w, _)| *w).unwrap_or(1);
    Ok(scenario!("researcher")
        .set_wait_time(think.0, think.1)?
        .register_transaction(transaction!(token).set_name("token").set_on_start())
        .register_transaction(transaction!(search).set_name("search").set_weight(weight("search"))?)
        .register_transaction(transaction!(document).set_name("document").set_weight(weight("document"))?)
        .register_transaction(transaction!(summary).set_name("summary").set_weight(weight("summary"))?)
        .register_transaction(transaction!(discovery).set_name("discovery").set_weight(weight("discovery"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_once() {
        assert_eq!(Outcome::of(Some(200)), Outcome::Ok);
        assert_eq!(Outcome::of(Some(201)), Outcome::Ok);
        assert_eq!(Outcome::of(Some(429)), Outcome::Throttled);
        assert_eq!(Outcome::of(Some(503)), Outcome::Failed);
        assert_eq!(Outcome::of(None), Outcome::Failed);
        assert_eq!(Outcome::of(Some(401)), Outcome::Refused);
    }

    #[test]
    fn retries_wait_for_retry_after_plus_jitter() {
        assert_eq!(retry_wait(Some("2"), 1, 0.0), Duration::from_secs(2));
        assert_eq!(retry_wait(Some("2"), 1, 1.0), Duration::from_millis(3250));
        assert_eq!(retry_wait(None, 1, 0.0), Duration::from_secs(1));
        assert_eq!(retry_wait(Some("soon"), 1, 1.0), Duration::from_millis(1750));
        // The window doubles with each refusal, up to eight times.
        assert_eq!(retry_wait(Some("1"), 2, 1.0), Duration::from_millis(2500));
        assert_eq!(retry_wait(Some("1"), 4, 1.0), Duration::from_millis(7000));
        assert_eq!(retry_wait(Some("1"), 30, 1.0), Duration::from_millis(7000));
    }

    #[test]
    fn the_recorder_keeps_retried_sign_ins_out_of_the_errors() {
        let recorder = Recorder::default();
        recorder.retried_sign_in(0, Duration::from_millis(1200));
        recorder.record(0, "token", Duration::from_millis(3), Some(200));
        recorder.record(1, "search", Duration::from_millis(3), Some(429));
        recorder.record(1, "search", Duration::from_millis(3), None);
        recorder.record(1, "search", Duration::from_millis(3), Some(401));
        let samples = recorder.snapshot();
        let token = &samples[&(0, "token")];
        assert_eq!((token.micros.len(), token.errors(), token.retried, token.retry_wait_ms), (1, 0, 1, 1200));
        let search = &samples[&(1, "search")];
        assert_eq!((search.throttled, search.failed, search.refused), (1, 1, 1));
        assert_eq!(search.statuses, BTreeMap::from([(0, 1), (401, 1), (429, 1)]));
    }

    #[test]
    fn users_are_dealt_to_tenants_in_turn() {
        let dealt: Vec<usize> = (0..6).map(|user| tenant_of(user, 4)).collect();
        assert_eq!(dealt, [0, 1, 2, 3, 0, 1]);
        assert_eq!(tenant_of(5, 0), 0);
    }
}
