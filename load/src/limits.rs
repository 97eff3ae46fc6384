//! The platform's limits a run will meet, read before the ramp and set against what the
//! configured ramp and mix will ask of them, so that a run that cannot pass a limit says so
//! before it starts rather than failing for the test's reasons.
//!
//! - **Token requests**: the gateway limits token requests per source address (a GCRA,
//!   `PAKE_TOKEN_REQUESTS_PER_SECOND` per second with twice that at once by default) and
//!   publishes the limit on every answer of its token endpoint, in `RateLimit-Policy`
//!   (a rate item and a burst item, [`pake_ratelimit::published`]). The run reads it from
//!   the answer to the set-up's own token request, or from a probe when it was given a
//!   token ([`TokenLimit::read`]); `--token-rate` (`PAKE_TOKEN_REQUESTS_PER_SECOND`)
//!   overrides it only when given. Every virtual user signs in from this one address.
//! - **Rate-limit policies** on the workload's routes and API clients, read through the
//!   admin API. The offered load is estimated from the mix and the think time (each user
//!   starts a transaction every mean think time at most), for the largest tenant.
//!
//! Not modelled: the per-client Argon2 budgets behind the address limit (a secret verified
//! a moment ago passes them uncounted, so only a client's first sign-ins meet them).

use crate::scenario::{MIX, TokenPer};
use crate::setup::Platform;
use anyhow::{Result, anyhow};
use pake_gateway_client::types as gw;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// The gateway's token requests per second per address when `PAKE_TOKEN_REQUESTS_PER_SECOND`
/// is unset (its `GatewayOptions::new`; a test holds the two together): what a run assumes
/// of a gateway that publishes no token limit.
pub const GATEWAY_DEFAULT_TOKEN_RATE: u64 = 20;

/// The name of the gateway's token limit in its `RateLimit-Policy` field.
pub const TOKEN_POLICY: &str = "token-issuance";

/// Where the run's figure of the token limit came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenLimitSource {
    /// The gateway's `RateLimit-Policy` on its token endpoint.
    Published,
    /// `--token-rate` / `PAKE_TOKEN_REQUESTS_PER_SECOND`, with what the gateway published
    /// (requests per second), if anything.
    Override { published_per_sec: Option<f64> },
    /// Nothing published, nothing given: the gateway's default.
    Assumed,
}

/// The gateway's limit on token requests per source address, as the run takes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TokenLimit {
    /// Requests per `period_secs`, sustained.
    pub rate: u64,
    pub period_secs: u64,
    /// Requests admitted at once beyond the first.
    pub burst: u64,
    pub source: TokenLimitSource,
}

impl TokenLimit {
    /// The limit a `RateLimit-Policy` field value of the token endpoint publishes.
    pub fn published(field: Option<&str>) -> Option<TokenLimit> {
        let published = pake_ratelimit::published::read(field?, TOKEN_POLICY)?;
        Some(TokenLimit {
            rate: published.rate,
            period_secs: published.period_secs,
            burst: published.burst,
            source: TokenLimitSource::Published,
        })
    }

    /// The limit the run assumes: `override_rate` when given (with the gateway's burst of
    /// twice the rate), else what the gateway published, else the gateway's default.
    pub fn resolve(published: Option<TokenLimit>, override_rate: Option<u64>) -> TokenLimit {
        let gateway_rule = |rate: u64, source| TokenLimit { rate, period_secs: 1, burst: rate * 2, source };
        match (override_rate, published) {
            (Some(rate), published) => gateway_rule(
                rate.max(1),
                TokenLimitSource::Override { published_per_sec: published.map(|p| p.per_sec()) },
            ),
            (None, Some(published)) => published,
            (None, None) => gateway_rule(GATEWAY_DEFAULT_TOKEN_RATE, TokenLimitSource::Assumed),
        }
    }

    /// Reads the limit with a token request of its own, for a run given a token rather
    /// than credentials: an empty request body, refused (422) before any secret is looked
    /// at, answers with the limit like any other.
    pub async fn probe(gateway_url: &str) -> Result<Option<TokenLimit>> {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/auth/token", gateway_url.trim_end_matches('/')))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body("{}")
            .send()
            .await
            .map_err(|e| anyhow!("probing the token endpoint for its limit: {e}"))?;
        Ok(TokenLimit::published(response.headers().get("ratelimit-policy").and_then(|value| value.to_str().ok())))
    }

    /// Sustained requests per second.
    pub fn per_sec(&self) -> f64 {
        self.rate as f64 / self.period_secs.max(1) as f64
    }

    /// Where the figure came from, for the preflight's lines.
    pub fn provenance(&self) -> String {
        match &self.source {
            TokenLimitSource::Published => "published by the gateway in RateLimit-Policy".into(),
            TokenLimitSource::Override { published_per_sec: Some(published) } => format!(
                "--token-rate / PAKE_TOKEN_REQUESTS_PER_SECOND, overriding the {published:.1}/s the gateway publishes"
            ),
            TokenLimitSource::Override { published_per_sec: None } => {
                "--token-rate / PAKE_TOKEN_REQUESTS_PER_SECOND; the gateway publishes none".into()
            }
            TokenLimitSource::Assumed => "the gateway publishes none: its default assumed; --token-rate sets it".into(),
        }
    }
}

/// What the run will ask of the platform.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub users: usize,
    pub hatch_rate: u32,
    pub run_time: Duration,
    /// Think time between a user's transactions, (least, most).
    pub think: (Duration, Duration),
    pub tenants: usize,
    pub token_per: TokenPer,
}

impl Workload {
    /// Seconds until the last user has started.
    pub fn ramp_secs(&self) -> f64 {
        self.users as f64 / f64::from(self.hatch_rate.max(1))
    }

    /// Users of the largest tenant (users are dealt to tenants in turn).
    fn largest_tenant(&self) -> usize {
        self.users.div_ceil(self.tenants.max(1))
    }

    /// Transactions a user starts per second at most: one per mean think time.
    fn per_user_rate(&self) -> f64 {
        let mean = (self.think.0 + self.think.1).as_secs_f64() / 2.0;
        1.0 / mean.max(0.001)
    }
}

/// What a rate-limit policy counts a request under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    PerTenant,
    PerTenantRoute,
    PerClient,
}

/// A rate-limit policy as the admin API gives it, and where the workload meets it.
#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    pub name: String,
    pub scope: Scope,
    pub rate: u64,
    pub period_secs: u64,
    pub burst: u64,
    /// The workload routes it is the route policy of.
    pub routes: Vec<String>,
    /// Whether it is the policy of the tenants' API clients (applied to all their requests).
    pub on_clients: bool,
}

/// One limit against the load the run will offer it.
#[derive(Clone, Debug, Serialize)]
pub struct LimitUse {
    pub limit: String,
    /// Where the run's figures of it came from.
    pub source: String,
    /// Requests (or sign-ins) per second it allows, sustained.
    pub allowed_per_sec: f64,
    pub burst: u64,
    /// What the run is expected to ask of one counter of it, per second.
    pub expected_per_sec: f64,
    pub note: String,
}

/// The limits, and the warnings about those the run cannot pass.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Preflight {
    pub limits: Vec<LimitUse>,
    pub warnings: Vec<String>,
}

impl Preflight {
    pub fn print(&self) {
        println!("limits this run will meet:");
        for limit in &self.limits {
            println!(
                "  {}: {:.1}/s sustained, burst {} [{}]; expected {:.1}/s ({})",
                limit.limit, limit.allowed_per_sec, limit.burst, limit.source, limit.expected_per_sec, limit.note
            );
        }
        for warning in &self.warnings {
            println!("WARNING: {warning}");
        }
    }
}

/// Reads the rate-limit policies on the workload's routes and on the tenants' clients.
pub async fn read(platform: &Platform, tenants: &[String]) -> Result<Vec<Policy>> {
    let routes = platform.gateway.list_routes().limit(500).send().await.map_err(|e| anyhow!("listing routes: {e}"))?;
    let policies = platform
        .gateway
        .list_rate_limit_policies()
        .limit(500)
        .send()
        .await
        .map_err(|e| anyhow!("listing rate-limit policies: {e}"))?
        .into_inner()
        .items;
    let mut on_routes: BTreeMap<uuid::Uuid, Vec<String>> = BTreeMap::new();
    for route in routes.into_inner().items {
        if let Some(id) = route.rate_limit_policy_id
            && MIX.iter().any(|(_, _, name)| *name == route.name.as_str())
        {
            on_routes.entry(id).or_default().push(route.name.to_string());
        }
    }
    let mut on_clients = Vec::new();
    for tenant in tenants {
        let clients = platform
            .gateway
            .list_api_clients()
            .tenant(tenant.as_str())
            .limit(500)
            .send()
            .await
            .map_err(|e| anyhow!("listing the API clients of {tenant}: {e}"))?;
        on_clients.extend(clients.into_inner().items.into_iter().filter_map(|c| c.rate_limit_policy_id));
    }
    Ok(policies
        .into_iter()
        .filter(|p| on_routes.contains_key(&p.id) || on_clients.contains(&p.id))
        .map(|p| Policy {
            name: p.name.to_string(),
            scope: match p.scope {
                gw::RateLimitScope::PerTenant => Scope::PerTenant,
                gw::RateLimitScope::PerTenantRoute => Scope::PerTenantRoute,
                gw::RateLimitScope::PerClient => Scope::PerClient,
            },
            rate: p.rate.get(),
            period_secs: p.period_seconds.get(),
            burst: u64::try_from(p.burst).unwrap_or(0),
            routes: on_routes.get(&p.id).cloned().unwrap_or_default(),
            on_clients: on_clients.contains(&p.id),
        })
        .collect())
}

/// Sets the token limit (per address) and `policies` against `workload`.
pub fn check(workload: &Workload, token: &TokenLimit, policies: &[Policy]) -> Preflight {
    let mut preflight = Preflight::default();
    let rate = token.per_sec().max(f64::MIN_POSITIVE);
    let burst = token.burst;
    let source = token.provenance();
    let ramp = workload.ramp_secs();
    let sign_ins = match workload.token_per {
        TokenPer::User => workload.users,
        TokenPer::Tenant => workload.tenants.min(workload.users),
    };
    // Sign-ins arrive as users start; after the first `burst + 1` the gateway admits one
    // every 1/rate s, so the last one passes at about `(n - burst - 1) / rate` s.
    let admitted_by = (sign_ins as f64 - burst as f64 - 1.0).max(0.0) / rate;
    let arrival_rate = match workload.token_per {
        TokenPer::User => f64::from(workload.hatch_rate),
        TokenPer::Tenant => f64::from(workload.hatch_rate).min(sign_ins as f64),
    };
    if let TokenLimitSource::Override { published_per_sec: Some(published) } = token.source
        && (published - rate).abs() > 1e-9
    {
        preflight.warnings.push(format!(
            "the token limit is taken as {rate:.1}/s from --token-rate / PAKE_TOKEN_REQUESTS_PER_SECOND, but the \
             gateway publishes {published:.1}/s: the check below is against the override"
        ));
    }
    if token.source == TokenLimitSource::Assumed {
        preflight.warnings.push(format!(
            "the gateway publishes no token limit (no RateLimit-Policy on its token endpoint): its default of \
             {rate:.0}/s is assumed; give --token-rate if it is configured otherwise"
        ));
    }
    preflight.limits.push(LimitUse {
        limit: "token requests per address".into(),
        source: source.clone(),
        allowed_per_sec: rate,
        burst,
        expected_per_sec: arrival_rate,
        note: format!(
            "{sign_ins} sign-ins, one per {}, all from this address",
            if workload.token_per == TokenPer::User { "user" } else { "tenant" }
        ),
    });
    if admitted_by > ramp {
        let mut warning = format!(
            "{sign_ins} sign-ins at {arrival_rate:.0}/s from one address exceed the gateway's {rate:.0} token \
             requests/s (burst {burst}; {source}): sign-ins will be throttled and retried, and the last user signs in \
             about {admitted_by:.0} s after the start instead of {ramp:.0} s"
        );
        if admitted_by > ramp + workload.run_time.as_secs_f64() {
            warning.push_str(", after the run has ended: some users will not sign in at all");
        }
        warning.push_str("; --token-per tenant signs in once per tenant, as a tenant's backend would");
        preflight.warnings.push(warning);
    }

    let total_weight: usize = MIX.iter().map(|(_, weight, _)| weight).sum();
    let per_route = |route: &str| {
        MIX.iter()
            .filter(|(_, _, name)| *name == route)
            .map(|(_, weight, _)| *weight as f64 / total_weight as f64)
            .sum::<f64>()
            * workload.per_user_rate()
    };
    let tenant_users = workload.largest_tenant() as f64;
    for policy in policies {
        // The routes whose requests one counter of this policy sees: for a client policy
        // every route the client calls, else the routes it is attached to; per tenant and
        // route, only the busiest of them.
        let routes: Vec<&str> = if policy.on_clients {
            MIX.iter().map(|(_, _, route)| *route).collect()
        } else {
            policy.routes.iter().map(String::as_str).collect()
        };
        let rates = routes.iter().map(|route| per_route(route) * tenant_users);
        let expected = match policy.scope {
            Scope::PerTenantRoute => rates.fold(0.0, f64::max),
            // One client per tenant: per client is per tenant here.
            Scope::PerTenant | Scope::PerClient => rates.sum::<f64>(),
        };
        let allowed = policy.rate as f64 / policy.period_secs.max(1) as f64;
        let scope = match policy.scope {
            Scope::PerTenant => "per tenant",
            Scope::PerTenantRoute => "per tenant and route",
            Scope::PerClient => "per client",
        };
        let on = if policy.on_clients {
            "the tenants' API clients".to_string()
        } else {
            format!("route {}", policy.routes.join(", "))
        };
        preflight.limits.push(LimitUse {
            limit: format!("policy {} ({scope}, {} per {} s) on {on}", policy.name, policy.rate, policy.period_secs),
            source: "read through the admin API".into(),
            allowed_per_sec: allowed,
            burst: policy.burst,
            expected_per_sec: expected,
            note: format!(
                "largest tenant: {tenant_users:.0} users, {:.0} % of the limit",
                100.0 * expected / allowed.max(f64::MIN_POSITIVE)
            ),
        });
        if expected > allowed {
            preflight.warnings.push(format!(
                "policy {} allows {allowed:.1} requests/s {scope} but the largest tenant ({tenant_users:.0} users) is \
                 expected to send about {expected:.1}/s on {on}: expect 429s, counted as throttling errors",
                policy.name
            ));
        }
    }
    preflight
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::routes;

    fn workload(users: usize, token_per: TokenPer) -> Workload {
        Workload {
            users,
            hatch_rate: 100,
            run_time: Duration::from_secs(60),
            think: (Duration::from_secs(1), Duration::from_secs(3)),
            tenants: 4,
            token_per,
        }
    }

    /// The gateway's default as it publishes it.
    fn default_token() -> TokenLimit {
        TokenLimit::published(Some("\"token-issuance\";q=20;w=1, \"token-issuance-burst\";q=41;w=3")).unwrap()
    }

    fn writes(rate: u64) -> Policy {
        Policy {
            name: "research-writes".into(),
            scope: Scope::PerTenant,
            rate,
            period_secs: 60,
            burst: 100,
            routes: vec![routes::SUMMARIES.into()],
            on_clients: false,
        }
    }

    #[test]
    fn a_tenant_token_passes_the_default_token_limit() {
        let preflight = check(&workload(1000, TokenPer::Tenant), &default_token(), &[writes(3000)]);
        assert!(preflight.warnings.is_empty(), "{:?}", preflight.warnings);
        assert_eq!(preflight.limits.len(), 2);
        // 250 users × 0.5 transactions/s × 2/21 of them summaries.
        let expected = preflight.limits[1].expected_per_sec;
        assert!((expected - 250.0 * 0.5 * 2.0 / 21.0).abs() < 1e-9, "{expected}");
    }

    #[test]
    fn a_token_per_user_ramp_is_warned_about() {
        let preflight = check(&workload(1000, TokenPer::User), &default_token(), &[]);
        assert_eq!(preflight.warnings.len(), 1, "{:?}", preflight.warnings);
        // 1000 - 41 sign-ins at 20/s: about 48 s, not the ramp's 10.
        assert!(
            preflight.warnings[0].contains("about 48 s after the start instead of 10 s"),
            "{:?}",
            preflight.warnings
        );
        let short = Workload { run_time: Duration::from_secs(5), ..workload(1000, TokenPer::User) };
        let preflight = check(&short, &default_token(), &[]);
        assert!(preflight.warnings[0].contains("some users will not sign in at all"), "{:?}", preflight.warnings);
        assert!(check(&workload(40, TokenPer::User), &default_token(), &[]).warnings.is_empty());
    }

    #[test]
    fn a_policy_the_mix_exceeds_is_warned_about() {
        let preflight = check(&workload(1000, TokenPer::Tenant), &default_token(), &[writes(600)]);
        assert_eq!(preflight.warnings.len(), 1, "{:?}", preflight.warnings);
        assert!(preflight.warnings[0].starts_with("policy research-writes allows 10.0 requests/s per tenant"));
        let client = Policy { routes: Vec::new(), on_clients: true, scope: Scope::PerClient, ..writes(3000) };
        // All of a 250-user tenant's 125 transactions/s against 50/s.
        let preflight = check(&workload(1000, TokenPer::Tenant), &default_token(), &[client]);
        assert!((preflight.limits[1].expected_per_sec - 125.0).abs() < 1e-9);
        assert_eq!(preflight.warnings.len(), 1, "{:?}", preflight.warnings);
    }

    #[test]
    fn the_token_limit_is_the_published_one_unless_overridden() {
        let published = TokenLimit::published(Some("\"token-issuance\";q=5;w=1, \"token-issuance-burst\";q=11;w=3"));
        let published = published.expect("a published limit");
        assert_eq!((published.rate, published.period_secs, published.burst), (5, 1, 10));
        assert_eq!(TokenLimit::published(Some("\"other\";q=5;w=1")), None);
        assert_eq!(TokenLimit::published(None), None);
        // 100 sign-ins at 100/s against 5/s, 11 at once: the last about 18 s in, not 1.
        let preflight = check(&workload(100, TokenPer::User), &TokenLimit::resolve(Some(published.clone()), None), &[]);
        assert_eq!(preflight.warnings.len(), 1, "{:?}", preflight.warnings);
        assert!(
            preflight.warnings[0].starts_with(
                "100 sign-ins at 100/s from one address exceed the gateway's 5 token requests/s (burst 10; published \
                 by the gateway in RateLimit-Policy)"
            ),
            "{:?}",
            preflight.warnings
        );
        assert!(
            preflight.warnings[0].contains("about 18 s after the start instead of 1 s"),
            "{:?}",
            preflight.warnings
        );
        // An override is taken, and said to differ from what is published.
        let overridden = TokenLimit::resolve(Some(published), Some(200));
        assert_eq!((overridden.rate, overridden.burst), (200, 400));
        let preflight = check(&workload(100, TokenPer::User), &overridden, &[]);
        assert_eq!(preflight.warnings.len(), 1, "{:?}", preflight.warnings);
        assert!(preflight.warnings[0].contains("but the gateway publishes 5.0/s"), "{:?}", preflight.warnings);
        assert!(preflight.limits[0].source.contains("overriding the 5.0/s the gateway publishes"));
        // Nothing published: the gateway's default, said to be assumed.
        let assumed = TokenLimit::resolve(None, None);
        assert_eq!((assumed.rate, assumed.burst, &assumed.source), (20, 40, &TokenLimitSource::Assumed));
        let preflight = check(&workload(40, TokenPer::User), &assumed, &[]);
        assert!(preflight.warnings[0].starts_with("the gateway publishes no token limit"), "{:?}", preflight.warnings);
    }

    #[test]
    fn the_default_token_rate_is_the_gateways() {
        let (keys, _) = pake_tokens::KeyRing::generate_ed25519().expect("a key");
        assert_eq!(GATEWAY_DEFAULT_TOKEN_RATE, pake_gateway::GatewayOptions::new(keys).token_requests_per_second);
    }
}
