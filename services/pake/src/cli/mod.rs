//! The operator's commands: `pake <noun> <verb>` over the generated clients, with tokens
//! from `pake-client-auth`, contexts from the user's config file, and tables, JSON or YAML
//! out. Nothing here talks HTTP itself: every call is a generated client's operation, so
//! the CLI is the clients' first user. It does not run or embed any service.

mod apply;
mod commands;
mod context;
mod failure;
mod output;

pub use commands::Command;
pub use output::Format;

use context::{ConfigFile, Context, Urls};
use failure::Failure;
use output::Output;
use pake_client_auth::{Auth, Authed};
use serde::Serialize;
use serde_json::Value;
use std::future::Future;

/// Where operator commands send their calls and how they print; global flags.
#[derive(clap::Args, Clone, Debug, Default)]
#[command(next_help_heading = "Operator options")]
pub struct Target {
    /// The context (from `pake login`) to use instead of the current one.
    #[arg(long, env = "PAKE_CONTEXT", global = true)]
    pub context: Option<String>,
    /// A platform token to send, instead of the context's credentials.
    #[arg(long, env = "PAKE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The registry (service mesh) API; default the context's, else http://127.0.0.1:8000.
    #[arg(long, env = "PAKE_REGISTRY_URL", global = true)]
    pub registry_url: Option<String>,
    /// The gateway; default the context's, else http://127.0.0.1:8080.
    #[arg(long, env = "PAKE_GATEWAY_URL", global = true)]
    pub gateway_url: Option<String>,
    /// The monitoring API; default the context's, else http://127.0.0.1:9090. `pake serve`
    /// without the monitoring service sends its spans there when set.
    #[arg(long, env = "PAKE_MONITORING_URL", global = true)]
    pub monitoring_url: Option<String>,
    /// The performance API: `--performance-url` (PAKE_PERFORMANCE_URL), shared with `serve`.
    #[arg(skip)]
    pub performance_url: Option<String>,
    /// Output format of operator commands.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table", global = true)]
    pub output: Format,
    /// Print only ids (lists) or nothing (actions).
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// One command's view of the platform: URLs, tokens, output, and the context they came from.
pub struct Session {
    pub out: Output,
    pub urls: Urls,
    pub auth: Auth,
    config_path: std::path::PathBuf,
    context_name: String,
    /// The context as loaded, when credentials came from it (its token cache is updated).
    context: Option<Context>,
}

/// Runs an operator command and gives the process's exit code.
pub async fn run(command: Command, target: Target) -> i32 {
    let out = Output::new(target.output, target.quiet);
    let result = async {
        match command {
            Command::Login(login) => commands::login(login, &target, out).await,
            Command::Context(context) => commands::context(context, out),
            Command::Rules(commands::Rules::Test { files }) => commands::rules_test(&files),
            command => {
                let session = Session::open(target.clone(), out).await?;
                let result = commands::run(command, &session).await;
                session.keep_token().await;
                result
            }
        }
    }
    .await;
    match result {
        Ok(()) => 0,
        Err(failure) => failure.report(),
    }
}

impl Session {
    async fn open(target: Target, out: Output) -> Result<Session, Failure> {
        let config_path = ConfigFile::path();
        let file = ConfigFile::load(&config_path)?;
        let context_name = file.selected(target.context.as_deref());
        let stored = file.contexts.get(&context_name).cloned();
        if target.context.is_some() && stored.is_none() {
            return Err(Failure::not_found(format!("no context named {context_name} (see pake context ls)")));
        }
        let context = stored.clone().unwrap_or_default();
        let urls = context::urls(&context, &target);
        let auth = match (&target.token, &context) {
            (Some(token), _) => Auth::token(token.clone()),
            (None, Context { token: Some(token), .. }) => Auth::token(token.clone()),
            (None, Context { client_id: Some(id), client_secret: Some(secret), .. }) => {
                let auth =
                    Auth::new(pake_client_auth::Credentials::ClientCredentials(pake_client_auth::ClientCredentials {
                        gateway_url: urls.gateway.clone(),
                        client_id: id.clone(),
                        client_secret: secret.clone(),
                        scope: context.scope.clone(),
                        audience: None,
                    }));
                if let Some((token, left)) = context.cached_token() {
                    // A cached token the header cannot carry is simply not reused.
                    let _ = auth.reuse(token, left).await;
                }
                auth
            }
            // Nothing to authenticate with: the services answer 401, and the error says how to log in.
            (None, _) => Auth::token(String::new()),
        };
        let context = stored.filter(|_| target.token.is_none());
        Ok(Session { out, urls, auth, config_path, context_name, context })
    }

    /// Stores a token fetched with the context's client credentials, so that the next
    /// command reuses it instead of asking the gateway again.
    async fn keep_token(&self) {
        let Some(context) = &self.context else { return };
        if self.auth.tokens_fetched() == 0 {
            return;
        }
        let Ok((token, Some(left))) = self.auth.access_token().await else { return };
        let Ok(mut file) = ConfigFile::load(&self.config_path) else { return };
        if let Some(stored) = file.contexts.get_mut(&self.context_name)
            && stored.client_id == context.client_id
        {
            stored.cache_token(token, left);
            let _ = file.save(&self.config_path);
        }
    }

    pub fn mesh(&self) -> Authed<pake_mesh_client::Client> {
        self.auth.bind(&self.urls.registry, pake_mesh_client::Client::new_with_client)
    }

    pub fn gateway(&self) -> Authed<pake_gateway_client::Client> {
        self.auth.bind(&self.urls.gateway, pake_gateway_client::Client::new_with_client)
    }

    pub fn monitoring(&self) -> Authed<pake_monitoring_client::Client> {
        self.auth.bind(&self.urls.monitoring, pake_monitoring_client::Client::new_with_client)
    }

    pub fn performance(&self) -> Authed<pake_performance_client::Client> {
        self.auth.bind(&self.urls.performance, pake_performance_client::Client::new_with_client)
    }
}

/// Runs one operation of a generated client and gives its answer as JSON.
pub async fn call<C, F, Fut, T, E>(api: &Authed<C>, operation: F) -> Result<Value, Failure>
where
    F: Fn(C) -> Fut,
    Fut: Future<Output = Result<progenitor_client::ResponseValue<T>, progenitor_client::Error<E>>>,
    T: Serialize,
    E: Serialize,
{
    match api.call(operation).await {
        Ok(answer) => Ok(serde_json::to_value(answer.into_inner()).unwrap_or(Value::Null)),
        Err(error) => Err(Failure::from_api(error).await),
    }
}

/// Every item of a paginated list: `operation` gets the cursor of the page to read.
pub async fn all<C, F, Fut, T, E>(api: &Authed<C>, operation: F) -> Result<Vec<Value>, Failure>
where
    F: Fn(C, Option<String>) -> Fut,
    Fut: Future<Output = Result<progenitor_client::ResponseValue<T>, progenitor_client::Error<E>>>,
    T: Serialize,
    E: Serialize,
{
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = call(api, |client| operation(client, cursor.clone())).await?;
        if let Some(page_items) = page["items"].as_array() {
            items.extend(page_items.iter().cloned());
        }
        match page["next_cursor"].as_str() {
            Some(next) if !next.is_empty() && cursor.as_deref() != Some(next) => cursor = Some(next.to_string()),
            _ => return Ok(items),
        }
    }
}

/// The id of the item called `name` (or with that id) in `items`.
pub fn id_of(items: &[Value], name_or_id: &str, what: &str) -> Result<uuid::Uuid, Failure> {
    if let Ok(id) = name_or_id.parse::<uuid::Uuid>() {
        return Ok(id);
    }
    items
        .iter()
        .find(|item| item["name"].as_str() == Some(name_or_id))
        .and_then(|item| item["id"].as_str()?.parse().ok())
        .ok_or_else(|| Failure::not_found(format!("no {what} named {name_or_id}")))
}
