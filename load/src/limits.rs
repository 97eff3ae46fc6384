//! The platform's limits a run will meet, read before the ramp and set against what the
//! configured ramp and mix will ask of them, so that a run that cannot pass a limit says so
//! before it starts rather than failing for the test's reasons.
//!
//! - **Token requests**: the gateway allows `PAKE_TOKEN_REQUESTS_PER_SECOND` (20 by default)
//!   token requests per second per source address, with twice that at once (GCRA: `burst + 1`
//!   at once, then one every `1/rate` s). The gateway publishes this number nowhere, so the
//!   run takes it from its own setting of the same name, the gateway's default when unset;
//!   every virtual user signs in from this one address.
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
/// is unset (its `GatewayOptions::new`; a test holds the two together).
pub const GATEWAY_DEFAULT_TOKEN_RATE: u64 = 20;

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
                "  {}: {:.1}/s sustained, burst {}; expected {:.1}/s ({})",
                limit.limit, limit.allowed_per_sec, limit.burst, limit.expected_per_sec, limit.note
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

/// Sets the token limit (`token_rate` per second per address) and `policies` against
/// `workload`.
pub fn check(workload: &Workload, token_rate: u64, policies: &[Policy]) -> Preflight {
    let mut preflight = Preflight::default();
    let rate = token_rate.max(1) as f64;
    let burst = token_rate.max(1) * 2;
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
    preflight.limits.push(LimitUse {
        limit: "token requests per address (PAKE_TOKEN_REQUESTS_PER_SECOND)".into(),
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
            "{sign_ins} sign-ins at {:.0}/s from one address exceed the gateway's {token_rate} token requests/s \
             (burst {burst}): sign-ins will be throttled and retried, and the last user signs in about {admitted_by:.0} s \
             after the start instead of {ramp:.0} s",
            arrival_rate
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
        let preflight = check(&workload(1000, TokenPer::Tenant), GATEWAY_DEFAULT_TOKEN_RATE, &[writes(3000)]);
        assert!(preflight.warnings.is_empty(), "{:?}", preflight.warnings);
        assert_eq!(preflight.limits.len(), 2);
        // 250 users × 0.5 transactions/s × 2/21 of them summaries.
        let expected = preflight.limits[1].expected_per_sec;
        assert!((expected - 250.0 * 0.5 * 2.0 / 21.0).abs() < 1e-9, "{expected}");
    }

    #[test]
    fn a_token_per_user_ramp_is_warned_about() {
        let preflight = check(&workload(1000, TokenPer::User), GATEWAY_DEFAULT_TOKEN_RATE, &[]);
        assert_eq!(preflight.warnings.len(), 1, "{:?}", preflight.warnings);
        // 1000 - 41 sign-ins at 20/s: about 48 s, not the ramp's 10.
        assert!(
            preflight.warnings[0].contains("about 48 s after the start instead of 10 s"),
            "{:?}",
            preflight.warnings
        );
        let short = Workload { run_time: Duration::from_secs(5), ..workload(1000, TokenPer::User) };
        let preflight = check(&short, GATEWAY_DEFAULT_TOKEN_RATE, &[]);
        assert!(preflight.warnings[0].contains("some users will not sign in at all"), "{:?}", preflight.warnings);
        assert!(check(&workload(40, TokenPer::User), GATEWAY_DEFAULT_TOKEN_RATE, &[]).warnings.is_empty());
    }

    #[test]
    fn a_policy_the_mix_exceeds_is_warned_about() {
        let preflight = check(&workload(1000, TokenPer::Tenant), GATEWAY_DEFAULT_TOKEN_RATE, &[writes(600)]);
        assert_eq!(preflight.warnings.len(), 1, "{:?}", preflight.warnings);
        assert!(preflight.warnings[0].starts_with("policy research-writes allows 10.0 requests/s per tenant"));
        let client = Policy { routes: Vec::new(), on_clients: true, scope: Scope::PerClient, ..writes(3000) };
        // All of a 250-user tenant's 125 transactions/s against 50/s.
        let preflight = check(&workload(1000, TokenPer::Tenant), GATEWAY_DEFAULT_TOKEN_RATE, &[client]);
        assert!((preflight.limits[1].expected_per_sec - 125.0).abs() < 1e-9);
        assert_eq!(preflight.warnings.len(), 1, "{:?}", preflight.warnings);
    }

    #[test]
    fn the_default_token_rate_is_the_gateways() {
        let (keys, _) = pake_tokens::KeyRing::generate_ed25519().expect("a key");
        assert_eq!(GATEWAY_DEFAULT_TOKEN_RATE, pake_gateway::GatewayOptions::new(keys).token_requests_per_second);
    }
}
