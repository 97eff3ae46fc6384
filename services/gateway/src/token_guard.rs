//! The token endpoint's guard: a limit per address in front of it, and the throttling of
//! secret guessing per client id ([`TokenThrottle`]); the address a token request comes
//! from, for the endpoint's handler.

use crate::proxy::DataPlane;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pake_api_runtime::ApiError;
use pake_ratelimit::{Limit, RateLimiter};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

tokio::task_local! {
    /// The address a token request comes from, for the token endpoint (whose generated
    /// request carries the body alone): set by [`token_endpoint_guard`].
    static TOKEN_CALLER: Option<IpAddr>;
}

/// The address the token request being answered comes from, when known.
pub fn token_caller() -> Option<IpAddr> {
    TOKEN_CALLER.try_with(|address| *address).ok().flatten()
}

/// Limits token requests per source address in front of the token endpoint, before any
/// secret is hashed: a brake on the hashing work one address can cause. Guessing is slowed
/// behind it, by [`TokenThrottle`].
///
/// Every answer of the endpoint (the token, 400, 401, either 429, and the rest) carries
/// this limit and the caller's standing under it as `RateLimit-Policy` and `RateLimit`
/// fields, written by the same code as a route policy's ([`crate::edge::add_headers`], by
/// the rule of [`pake_ratelimit::published`]), so that clients (the load suite among them)
/// read the platform's token limit instead of assuming it. The per-client budgets are not
/// published: they count only attempts whose secret must be hashed, and an owner signing in
/// again with a secret verified a moment ago never meets them.
pub async fn token_endpoint_guard(State(plane): State<Arc<DataPlane>>, request: Request, next: Next) -> Response {
    if request.method() == Method::POST && request.uri().path() == "/v1/auth/token" {
        let address = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let key = match address {
            Some(address) => format!("token:addr:{address}"),
            None => "token:addr:unknown".into(),
        };
        let limit = &plane.edge.token_limit;
        let decision = plane.edge.limiter.check(&key, limit).await;
        let mut response = if decision.allowed {
            TOKEN_CALLER.scope(address, next.run(request)).await
        } else {
            let seconds = decision.retry_after.as_secs_f64().ceil().max(1.0) as u64;
            ApiError::too_many_requests(
                format!("too many token requests from this address, retry in {seconds} seconds"),
                seconds,
            )
            .into_response()
        };
        // On a 429 of the per-client budgets the handler's `Retry-After` stays: an admitted
        // decision writes none.
        crate::edge::add_headers(response.headers_mut(), &decision, limit);
        return response;
    }
    next.run(request).await
}

/// How long an address that proved a client's secret is exempt from that client's lockout.
const PROVEN_FOR: Duration = Duration::from_secs(24 * 3600);

/// Slows down secret guessing at the token endpoint the way login throttling does, without
/// letting anyone's failures refuse the owner's secret.
///
/// - What is counted is the attempts whose secret must go through Argon2: every failure,
///   and a success only when its secret was not verified minutes ago. A secret verified a
///   moment ago ([`crate::secrets::remembered`]) passes before any of this, uncounted, so
///   an owner signing in again is never slowed by a flood of wrong secrets.
/// - Counted per client id (the configured token rate, twice that at once) and per client
///   id and address (a quarter of it). Over either budget the answer is 429 +
///   `Retry-After`, before the secret is checked: a throttled guesser learns nothing, and
///   its guesses cost no hashing.
/// - An address that proved the secret within a day is exempt from the per-client budget
///   (only its own per-address one applies): guessers rotating addresses exhaust the
///   client's budget but cannot lock out the owner's known addresses, even after a
///   rotation; its secret is checked in a lane of its own
///   ([`crate::secrets::verify_proven`]), not behind the guessers' hashing. An address with
///   no such history waits with the guessers while the client is under attack.
///
/// Unknown client ids are counted exactly like known ones, so throttling tells nothing
/// about which exist. The counters are the rate limiter's (shared through Redis); which
/// addresses proved a secret, each replica learns for itself.
pub struct TokenThrottle {
    per_client: Limit,
    per_pair: Limit,
    /// `client id` and address pairs that proved the client's secret.
    proven: moka::sync::Cache<String, ()>,
}

impl TokenThrottle {
    /// Budgets derived from the token request limit.
    pub fn new(token_limit: &Limit) -> TokenThrottle {
        let per_client = Limit { policy: "token-attempts".into(), ..token_limit.clone() };
        let pair_rate = (token_limit.rate / 4).max(1);
        let per_pair = Limit {
            policy: "token-attempts-per-address".into(),
            rate: pair_rate,
            burst: pair_rate * 2,
            ..per_client.clone()
        };
        TokenThrottle {
            per_client,
            per_pair,
            proven: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(PROVEN_FOR).build(),
        }
    }

    fn keys(client_id: &str, address: Option<IpAddr>) -> (String, String) {
        let client = format!("token:attempts:{client_id}");
        let pair = match address {
            Some(address) => format!("{client}:{address}"),
            None => format!("{client}:unknown"),
        };
        (client, pair)
    }

    /// Counts an attempt whose secret is about to be checked with Argon2; `Err` says how
    /// long to wait when it is over a budget, and must not be checked.
    pub async fn admit(&self, limiter: &RateLimiter, client_id: &str, address: Option<IpAddr>) -> Result<(), Duration> {
        let (client, pair) = Self::keys(client_id, address);
        // The address's own budget always applies; the client's unless it proved the secret.
        let client_budget = (!self.proven.contains_key(&pair)).then_some((&client, &self.per_client));
        let mut wait: Option<Duration> = None;
        for (key, limit) in [Some((&pair, &self.per_pair)), client_budget].into_iter().flatten() {
            let decision = limiter.check(key, limit).await;
            if !decision.allowed {
                wait = wait.max(Some(decision.retry_after));
            }
        }
        match wait {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    /// Whether `address` proved the client's secret within [`PROVEN_FOR`].
    pub fn proven(&self, client_id: &str, address: Option<IpAddr>) -> bool {
        let (_, pair) = Self::keys(client_id, address);
        self.proven.contains_key(&pair)
    }

    /// Records that `address` proved the client's secret.
    pub fn succeeded(&self, client_id: &str, address: Option<IpAddr>) {
        let (_, pair) = Self::keys(client_id, address);
        self.proven.insert(pair, ());
    }
}
