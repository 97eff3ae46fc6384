//! Bearer tokens for the generated PAKE clients (`pake-*-client`).
//!
//! The progenitor clients are built from a `reqwest::Client`
//! (`Client::new_with_client(url, http)`) and offer no per-request hook, so an [`Auth`]
//! hands out a `reqwest::Client` whose default `Authorization` header carries the current
//! token, builds a new one when the token is replaced, and runs a call again, once, with a
//! fresh token when the first try answers 401.
//!
//! Tokens come from a static string or from the gateway's client-credentials grant
//! (`POST /v1/auth/token`). A fetched token is replaced before it expires (a tenth of its
//! lifetime early, at most a minute), and after a 401. One [`Auth`] is shared by any number
//! of clients and concurrent calls: at most one token request is in flight, and callers
//! that need a token meanwhile wait for it.
//!
//! It does not verify tokens, keep anything on disk, or retry anything but a 401.
//!
//! ```text
//! let auth = pake_client_auth::Auth::client_credentials("http://127.0.0.1:8080", client_id, secret);
//! let registry = auth.bind("http://127.0.0.1:8000", pake_mesh_client::Client::new_with_client);
//! let services = registry.call(|c| async move { c.list_services().send().await }).await?;
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a connection and a whole request may take, as the generated `Client::new`.
const TIMEOUT: Duration = Duration::from_secs(15);
/// The most a fetched token is replaced ahead of its expiry.
const MAX_REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Where tokens come from.
#[derive(Clone)]
pub enum Credentials {
    /// A token obtained elsewhere (`pake token`, a CI secret); used as it is, never refreshed.
    Token(String),
    /// An API client's id and secret, exchanged at the gateway for tokens.
    ClientCredentials(ClientCredentials),
}

/// An API client of the gateway, as `POST /v1/auth/token` takes it.
#[derive(Clone)]
pub struct ClientCredentials {
    /// The gateway's base URL (`http://127.0.0.1:8080`).
    pub gateway_url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Space-separated scopes to ask for; `None` asks for all of the client's.
    pub scope: Option<String>,
    /// The `aud` claim to ask for; `None` leaves the gateway's default.
    pub audience: Option<String>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token(_) => formatter.write_str("Token(…)"),
            Credentials::ClientCredentials(credentials) => formatter
                .debug_struct("ClientCredentials")
                .field("gateway_url", &credentials.gateway_url)
                .field("client_id", &credentials.client_id)
                .field("scope", &credentials.scope)
                .finish_non_exhaustive(),
        }
    }
}

/// A token could not be had: the gateway refused the credentials, could not be reached,
/// or the token cannot be sent in a header.
#[derive(Debug, Clone)]
pub struct TokenError {
    /// The gateway's HTTP status, when it answered.
    pub status: Option<u16>,
    /// The contract's error code, when the gateway sent its error body.
    pub code: Option<String>,
    pub message: String,
}

impl fmt::Display for TokenError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(formatter, "token request answered {status}: {}", self.message),
            None => write!(formatter, "token request failed: {}", self.message),
        }
    }
}

impl std::error::Error for TokenError {}

/// The failure of an authenticated call: no token, or the call's own error.
#[derive(Debug)]
pub enum Error<E> {
    Token(TokenError),
    Api(progenitor_client::Error<E>),
}

impl<E> fmt::Display for Error<E>
where
    progenitor_client::Error<E>: fmt::Display,
{
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Token(error) => error.fmt(formatter),
            Error::Api(error) => error.fmt(formatter),
        }
    }
}

impl<E: fmt::Debug> std::error::Error for Error<E> where progenitor_client::Error<E>: fmt::Display {}

/// Tokens for any number of clients; cheap to clone (clones share the token).
#[derive(Clone, Debug)]
pub struct Auth {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    credentials: Credentials,
    /// Talks to the token endpoint; carries no token.
    plain: reqwest::Client,
    /// The token in use. The lock is held across a token request, so that concurrent
    /// callers wait for that one request instead of sending their own.
    current: tokio::sync::Mutex<Option<Current>>,
    generations: AtomicU64,
    fetched: AtomicU64,
}

/// A token and the HTTP client that sends it.
#[derive(Clone)]
struct Current {
    token: String,
    /// When to fetch the next one; `None` for a static token.
    refresh_at: Option<Instant>,
    /// When the gateway stops accepting it; `None` when unknown.
    expires_at: Option<Instant>,
    generation: u64,
    http: reqwest::Client,
}

impl fmt::Debug for Current {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Current").field("generation", &self.generation).finish_non_exhaustive()
    }
}

/// The gateway's token answer (the contract's `TokenResponse`, the fields used here).
#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

impl Auth {
    pub fn new(credentials: Credentials) -> Auth {
        let plain = reqwest::Client::builder().connect_timeout(TIMEOUT).timeout(TIMEOUT).build().unwrap_or_default();
        Auth {
            inner: Arc::new(Inner {
                credentials,
                plain,
                current: tokio::sync::Mutex::new(None),
                generations: AtomicU64::new(0),
                fetched: AtomicU64::new(0),
            }),
        }
    }

    /// A static token.
    pub fn token(token: impl Into<String>) -> Auth {
        Auth::new(Credentials::Token(token.into()))
    }

    /// Client credentials exchanged at the gateway at `gateway_url` for tokens with all of
    /// the client's scopes.
    pub fn client_credentials(
        gateway_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Auth {
        Auth::new(Credentials::ClientCredentials(ClientCredentials {
            gateway_url: gateway_url.into(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            scope: None,
            audience: None,
        }))
    }

    pub fn credentials(&self) -> &Credentials {
        &self.inner.credentials
    }

    /// Starts from a token fetched earlier (a CLI's cache) that the gateway said lives
    /// `expires_in` from now; with client credentials it is replaced as if fetched now.
    pub async fn reuse(&self, token: String, expires_in: Duration) -> Result<(), TokenError> {
        let now = Instant::now();
        let current = self.install(token, Some(now + refresh_after(expires_in)), Some(now + expires_in))?;
        *self.inner.current.lock().await = Some(current);
        Ok(())
    }

    /// The token to send now and how long it has left (`None`: unknown), fetching one
    /// when needed.
    pub async fn access_token(&self) -> Result<(String, Option<Duration>), TokenError> {
        let current = self.current().await?;
        let left = current.expires_at.map(|at| at.saturating_duration_since(Instant::now()));
        Ok((current.token, left))
    }

    /// An HTTP client that sends the current token, for `Client::new_with_client`. It keeps
    /// that token: for calls over a token's lifetime, use [`Auth::call`] or [`Authed`].
    pub async fn http(&self) -> Result<reqwest::Client, TokenError> {
        Ok(self.current().await?.http)
    }

    /// How many tokens have been fetched from the gateway so far.
    pub fn tokens_fetched(&self) -> u64 {
        self.inner.fetched.load(Ordering::Relaxed)
    }

    /// A generated client's constructor and base URL, bound to these tokens.
    pub fn bind<C>(&self, url: impl Into<String>, build: fn(&str, reqwest::Client) -> C) -> Authed<C> {
        Authed { auth: self.clone(), url: url.into(), build }
    }

    /// Runs `call` on a client built by `build` for `url` with the current token; when it
    /// answers 401 and the token can be replaced, replaces it and runs `call` once more.
    pub async fn call<C, F, Fut, T, E>(
        &self,
        url: &str,
        build: fn(&str, reqwest::Client) -> C,
        call: F,
    ) -> Result<T, Error<E>>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, progenitor_client::Error<E>>>,
    {
        let current = self.current().await.map_err(Error::Token)?;
        match call(build(url, current.http)).await {
            Err(error) if unauthorized(&error) && self.refreshable() => {
                self.forget(current.generation).await;
                let fresh = self.current().await.map_err(Error::Token)?;
                call(build(url, fresh.http)).await.map_err(Error::Api)
            }
            result => result.map_err(Error::Api),
        }
    }

    fn refreshable(&self) -> bool {
        matches!(self.inner.credentials, Credentials::ClientCredentials(_))
    }

    /// Drops the token of `generation` if it is still the current one (concurrent calls
    /// refused with the same token replace it once).
    async fn forget(&self, generation: u64) {
        let mut current = self.inner.current.lock().await;
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }

    async fn current(&self) -> Result<Current, TokenError> {
        let mut slot = self.inner.current.lock().await;
        let now = Instant::now();
        if let Some(current) = &*slot
            && current.refresh_at.is_none_or(|at| now < at)
        {
            return Ok(current.clone());
        }
        let fresh = match &self.inner.credentials {
            Credentials::Token(token) => self.install(token.clone(), None, None)?,
            Credentials::ClientCredentials(credentials) => match self.fetch(credentials).await {
                Ok(fresh) => fresh,
                // A gateway that cannot issue one right now: the old token serves until it
                // expires.
                Err(error) => match &*slot {
                    Some(current)
                        if current.expires_at.is_some_and(|at| now < at) && error.status.is_none_or(|s| s >= 500) =>
                    {
                        return Ok(current.clone());
                    }
                    _ => return Err(error),
                },
            },
        };
        *slot = Some(fresh.clone());
        Ok(fresh)
    }

    async fn fetch(&self, credentials: &ClientCredentials) -> Result<Current, TokenError> {
        let mut body = serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
        });
        if let Some(scope) = &credentials.scope {
            body["scope"] = scope.as_str().into();
        }
        if let Some(audience) = &credentials.audience {
            body["audience"] = audience.as_str().into();
        }
        let url = format!("{}/v1/auth/token", credentials.gateway_url.trim_end_matches('/'));
        // Timed from before the request, so the token is never thought to live longer than it does.
        let asked = Instant::now();
        let response = self.inner.plain.post(&url).json(&body).send().await.map_err(|error| TokenError {
            status: None,
            code: None,
            message: format!("{url}: {error}"),
        })?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|error| TokenError {
            status: Some(status),
            code: None,
            message: error.to_string(),
        })?;
        if !(200..300).contains(&status) {
            let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            return Err(TokenError {
                status: Some(status),
                code: body["code"].as_str().map(str::to_string),
                message: body["message"].as_str().map_or_else(|| text.chars().take(200).collect(), str::to_string),
            });
        }
        let issued: TokenResponse = serde_json::from_str(&text).map_err(|error| TokenError {
            status: Some(status),
            code: None,
            message: format!("unreadable token response: {error}"),
        })?;
        self.inner.fetched.fetch_add(1, Ordering::Relaxed);
        let lifetime = Duration::from_secs(issued.expires_in);
        self.install(issued.access_token, Some(asked + refresh_after(lifetime)), Some(asked + lifetime))
    }

    fn install(
        &self,
        token: String,
        refresh_at: Option<Instant>,
        expires_at: Option<Instant>,
    ) -> Result<Current, TokenError> {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| TokenError {
            status: None,
            code: None,
            message: "the token holds characters a header cannot carry".into(),
        })?;
        value.set_sensitive(true);
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::AUTHORIZATION, value);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT)
            .build()
            .map_err(|error| TokenError { status: None, code: None, message: error.to_string() })?;
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Current { token, refresh_at, expires_at, generation, http })
    }
}

/// How long after it was asked for a token of `lifetime` is replaced: a tenth of its
/// lifetime early, never more than a minute early.
fn refresh_after(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 10).min(MAX_REFRESH_MARGIN)
}

fn unauthorized<E>(error: &progenitor_client::Error<E>) -> bool {
    error.status().is_some_and(|status| status.as_u16() == 401)
}

/// A generated client's base URL and constructor with the [`Auth`] that feeds it tokens.
pub struct Authed<C> {
    auth: Auth,
    url: String,
    build: fn(&str, reqwest::Client) -> C,
}

impl<C> Clone for Authed<C> {
    fn clone(&self) -> Self {
        Authed { auth: self.auth.clone(), url: self.url.clone(), build: self.build }
    }
}

impl<C> fmt::Debug for Authed<C> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Authed").field("url", &self.url).finish_non_exhaustive()
    }
}

impl<C> Authed<C> {
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// [`Auth::call`] on this client: `registry.call(|c| async move { c.list_services().send().await })`.
    pub async fn call<F, Fut, T, E>(&self, call: F) -> Result<T, Error<E>>
    where
        F: Fn(C) -> Fut,
        Fut: Future<Output = Result<T, progenitor_client::Error<E>>>,
    {
        self.auth.call(&self.url, self.build, call).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_replaced_a_tenth_of_their_life_early_and_at_most_a_minute() {
        assert_eq!(refresh_after(Duration::from_secs(3600)), Duration::from_secs(3540));
        assert_eq!(refresh_after(Duration::from_secs(300)), Duration::from_secs(270));
        assert_eq!(refresh_after(Duration::from_secs(2)), Duration::from_millis(1800));
        assert_eq!(refresh_after(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_static_token_goes_in_the_authorization_header_and_a_bad_one_is_refused() {
        let auth = Auth::token("abc.def.ghi");
        assert_eq!(auth.access_token().await.unwrap(), ("abc.def.ghi".to_string(), None));
        let error = Auth::token("line\nbreak").http().await.unwrap_err();
        assert!(error.message.contains("header"), "{error}");
        assert_eq!(auth.tokens_fetched(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_gateway_is_a_token_error_without_status() {
        // A port nothing listens on: bind one and let it go.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let auth = Auth::client_credentials(format!("http://127.0.0.1:{port}"), "pk_x", "secret");
        let error = auth.http().await.unwrap_err();
        assert_eq!(error.status, None, "{error}");
    }
}
