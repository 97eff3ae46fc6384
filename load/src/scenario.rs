//! The research users: sign in once (the client-credentials grant), then search (queries
//! follow a Zipf distribution, so a hot set exists), fetch documents (Zipf too), post
//! summaries, and now and then ask the registry for a service's instances — with a think
//! time between actions. Every transaction is named; each request's latency and outcome
//! is also recorded by [`Recorder`] for the verdict.

use crate::setup::Credentials;
use crate::zipf::Zipf;
use goose::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Names of the transactions, as reports show them.
pub const TRANSACTIONS: [&str; 5] = ["token", "search", "document", "summary", "discovery"];

/// Latencies and failures per transaction, exactly (every sample is kept: a 1000-user
/// minute is tens of thousands of samples).
#[derive(Default)]
pub struct Recorder {
    samples: Mutex<BTreeMap<&'static str, Samples>>,
}

#[derive(Default, Clone)]
pub struct Samples {
    pub micros: Vec<u64>,
    pub failures: u64,
    /// Failures by status (0: no answer).
    pub statuses: BTreeMap<u16, u64>,
}

impl Recorder {
    fn record(&self, name: &'static str, took: Duration, status: Option<u16>) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = samples.entry(name).or_default();
        entry.micros.push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        if !status.is_some_and(|s| (200..300).contains(&s)) {
            entry.failures += 1;
            *entry.statuses.entry(status.unwrap_or(0)).or_default() += 1;
        }
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, Samples> {
        self.samples.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// What the transactions share during one run.
pub struct RunState {
    pub credentials: Credentials,
    pub recorder: Recorder,
    queries: Zipf,
    documents: Zipf,
}

static STATE: RwLock<Option<Arc<RunState>>> = RwLock::new(None);

/// Installs the state of the run about to start.
pub fn install(credentials: Credentials) -> Arc<RunState> {
    let state = Arc::new(RunState {
        credentials,
        recorder: Recorder::default(),
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

/// A user's session: the token it signed in with.
#[derive(Clone)]
struct Session {
    token: String,
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
    let mut builder = user.get_request_builder(&method, path)?;
    if let Some(session) = user.get_session_data::<Session>() {
        builder = builder.bearer_auth(&session.token);
    }
    if let Some(body) = &body {
        builder = builder.json(body);
    }
    let request = GooseRequest::builder().method(method).path(path).name(name).set_request_builder(builder).build();
    let started = Instant::now();
    let answer = user.request(request).await?;
    let took = started.elapsed();
    let response = answer.response.ok();
    state.recorder.record(name, took, response.as_ref().map(|r| r.status().as_u16()));
    Ok(response)
}

async fn token(user: &mut GooseUser) -> TransactionResult {
    let credentials = state()?.credentials.clone();
    let grant = serde_json::json!({
        "grant_type": "client_credentials", "client_id": credentials.client_id,
        "client_secret": credentials.client_secret,
    });
    if let Some(response) = send(user, "token", GooseMethod::Post, "/v1/auth/token", Some(grant)).await?
        && let Ok(body) = response.json::<serde_json::Value>().await
        && let Some(token) = body["access_token"].as_str()
    {
        user.set_session_data(Session { token: token.to_string() });
    }
    Ok(())
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
    Ok(scenario!("researcher")
        .set_wait_time(think.0, think.1)?
        .register_transaction(transaction!(token).set_name("token").set_on_start())
        .register_transaction(transaction!(search).set_name("search").set_weight(12)?)
        .register_transaction(transaction!(document).set_name("document").set_weight(6)?)
        .register_transaction(transaction!(summary).set_name("summary").set_weight(2)?)
        .register_transaction(transaction!(discovery).set_name("discovery").set_weight(1)?))
}
