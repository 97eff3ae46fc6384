//! Puts the research workload on a running platform, entirely through the generated
//! clients: the fleet's services and instances in the registry (with traffic policies),
//! and on the gateway the rate-limit policies, the routes with their scopes and cache
//! policies, and one API client per tenant whose credentials that tenant's users present.
//!
//! Every step is idempotent, so a staging deployment can be set up again: a service or a
//! route that exists is reused or replaced, an API client's secret is rotated. A rate-limit
//! policy that exists keeps the numbers its operator gave it: the run reads them before the
//! ramp ([`crate::limits`]) and warns when the workload cannot pass them.

use crate::fleet::Fleet;
use anyhow::{Context, Result, anyhow};
use pake_gateway_client::types as gw;
use pake_mesh_client::types as mesh;
use serde_json::{Value, json};
use std::net::SocketAddr;

/// The research tenant's scopes.
pub const READ_SCOPE: &str = "research:read";
pub const WRITE_SCOPE: &str = "research:write";

/// The gateway routes the workload goes through, by name.
pub mod routes {
    pub const SEARCH: &str = "research-search";
    pub const DOCUMENTS: &str = "research-documents";
    pub const SUMMARIES: &str = "research-summaries";
    pub const DISCOVERY: &str = "research-discovery";
}

/// The rate-limit policies the set-up creates when missing, by name.
pub mod policies {
    /// On the summaries route, per tenant.
    pub const WRITES: &str = "research-writes";
    /// On every research client, per client.
    pub const CLIENT: &str = "research-client";
}

/// The research tenants: `research-1`, `research-2`, …
pub fn tenant_name(index: usize) -> String {
    format!("research-{}", index + 1)
}

/// What one tenant's users sign in with.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub tenant: String,
    pub client_id: String,
    pub client_secret: String,
}

/// Where the platform is, and who may set it up.
pub struct Platform {
    pub gateway: pake_gateway_client::Client,
    pub mesh: pake_mesh_client::Client,
    /// The registry's own address as the gateway reaches it (for the discovery route).
    pub registry_addr: SocketAddr,
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).context("building a request body")
}

fn status<E>(error: &pake_gateway_client::Error<E>) -> Option<u16> {
    error.status().map(|s| s.as_u16())
}

fn mesh_status<E>(error: &pake_mesh_client::Error<E>) -> Option<u16> {
    error.status().map(|s| s.as_u16())
}

/// A token for the admin API: an admin API client's credentials through the token
/// endpoint; with it, the token limit the endpoint's answer publishes, if any.
pub async fn admin_token(
    gateway_url: &str,
    client_id: &str,
    client_secret: &str,
) -> Result<(String, Option<crate::limits::TokenLimit>)> {
    let client = pake_gateway_client::Client::new(gateway_url);
    let grant: gw::TokenRequest = typed(json!({
        "grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret,
    }))?;
    let token = client.issue_token().body(grant).send().await.map_err(|e| anyhow!("admin token: {e}"))?;
    let policy = token.headers().get("ratelimit-policy").and_then(|value| value.to_str().ok());
    let limit = crate::limits::TokenLimit::published(policy);
    Ok((token.into_inner().access_token.to_string(), limit))
}

/// A reqwest client that sends `token` on every request.
pub fn authorised(token: &str) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).context("token as a header")?;
    headers.insert(reqwest::header::AUTHORIZATION, value);
    Ok(reqwest::Client::builder().default_headers(headers).build()?)
}

impl Platform {
    pub fn new(gateway_url: &str, registry_url: &str, registry_addr: SocketAddr, token: &str) -> Result<Platform> {
        let http = authorised(token)?;
        Ok(Platform {
            gateway: pake_gateway_client::Client::new_with_client(gateway_url, http.clone()),
            mesh: pake_mesh_client::Client::new_with_client(registry_url, http),
            registry_addr,
        })
    }

    /// Registers a service (or finds it), its instance at `addr` (checked at `health_path`
    /// when given, else at the service's default health path), and its traffic policy.
    /// The service's earlier instances — left by an earlier run, whose fleet listened on
    /// other ports — are deregistered first, so no request is sent to them.
    async fn service(&self, name: &str, addr: SocketAddr, health_path: Option<&str>) -> Result<()> {
        let registration: mesh::ServiceRegistration =
            typed(json!({"name": name, "version": "1.0.0", "description": "PAKE load-test demo upstream"}))?;
        let id = match self.mesh.register_service().body(registration).send().await {
            Ok(created) => created.into_inner().id,
            Err(error) if mesh_status(&error) == Some(409) => {
                let page = self.mesh.list_services().name_prefix(name).send().await.map_err(|e| anyhow!("{e}"))?;
                page.into_inner()
                    .items
                    .into_iter()
                    .find(|s| s.name.as_str() == name)
                    .map(|s| s.id)
                    .ok_or_else(|| anyhow!("{name} exists but is not listed"))?
            }
            Err(error) => return Err(anyhow!("registering {name}: {error}")),
        };
        let existing = self
            .mesh
            .list_instances()
            .service_id(id)
            .limit(500)
            .send()
            .await
            .map_err(|e| anyhow!("listing the instances of {name}: {e}"))?;
        for stale in existing.into_inner().items {
            self.mesh
                .deregister_instance()
                .service_id(id)
                .instance_id(stale.id)
                .send()
                .await
                .map_err(|e| anyhow!("deregistering an earlier instance of {name}: {e}"))?;
        }
        let mut instance = json!({"address": addr.ip().to_string(), "port": addr.port(), "ttl_seconds": 3600});
        if let Some(path) = health_path {
            instance["health_url"] = json!(format!("http://{addr}{path}"));
        }
        let instance: mesh::InstanceRegistration = typed(instance)?;
        self.mesh
            .register_instance()
            .service_id(id)
            .body(instance)
            .send()
            .await
            .map_err(|e| anyhow!("registering an instance of {name}: {e}"))?;
        let policy: mesh::TrafficPolicySpec = typed(json!({
            "load_balancing": "least_request", "connect_timeout_ms": 1000, "request_timeout_ms": 10000,
            "retries": {"max_attempts": 1, "per_try_timeout_ms": 5000, "retry_on": ["connect_failure"], "budget_percent": 10},
            "circuit_breaker": {"failure_threshold": 20, "failure_rate_threshold": 0.5, "minimum_requests": 50,
                "rate_window_seconds": 10, "open_seconds": 5, "half_open_max_requests": 2},
            "outlier_detection": {"consecutive_5xx": 20, "interval_seconds": 10, "base_ejection_seconds": 5,
                "max_ejection_percent": 50},
        }))?;
        self.mesh
            .replace_traffic_policy()
            .service_id(id)
            .body(policy)
            .send()
            .await
            .map_err(|e| anyhow!("setting the traffic policy of {name}: {e}"))?;
        Ok(())
    }

    /// Creates a route, or replaces the one of that name.
    async fn route(&self, spec: Value) -> Result<()> {
        let name = spec["name"].as_str().unwrap_or_default().to_string();
        let body: gw::RouteSpec = typed(spec)?;
        match self.gateway.create_route().body(body.clone()).send().await {
            Ok(_) => Ok(()),
            Err(error) if status(&error) == Some(409) => {
                let routes = self.gateway.list_routes().limit(500).send().await.map_err(|e| anyhow!("{e}"))?;
                let existing = routes
                    .into_inner()
                    .items
                    .into_iter()
                    .find(|r| r.name.as_str() == name)
                    .ok_or_else(|| anyhow!("route {name} exists but is not listed"))?;
                self.gateway
                    .update_route()
                    .route_id(existing.id)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| anyhow!("replacing route {name}: {e}"))?;
                Ok(())
            }
            Err(error) => Err(anyhow!("creating route {name}: {error}")),
        }
    }

    /// A rate-limit policy by name (created when missing); its id.
    async fn rate_limit_policy(&self, spec: Value) -> Result<uuid::Uuid> {
        let name = spec["name"].as_str().unwrap_or_default().to_string();
        let body: gw::RateLimitPolicySpec = typed(spec)?;
        match self.gateway.create_rate_limit_policy().body(body).send().await {
            Ok(created) => Ok(created.into_inner().id),
            Err(error) if status(&error) == Some(409) => {
                let page =
                    self.gateway.list_rate_limit_policies().limit(500).send().await.map_err(|e| anyhow!("{e}"))?;
                page.into_inner()
                    .items
                    .into_iter()
                    .find(|p| p.name.as_str() == name)
                    .map(|p| p.id)
                    .ok_or_else(|| anyhow!("policy {name} exists but is not listed"))
            }
            Err(error) => Err(anyhow!("creating rate-limit policy {name}: {error}")),
        }
    }

    /// The research API client of `tenant`, created or with a fresh secret, limited by
    /// `policy`.
    async fn research_client(&self, tenant: &str, policy: uuid::Uuid) -> Result<Credentials> {
        let spec: gw::ApiClientSpec = typed(json!({
            "name": "researcher", "tenant": tenant, "scopes": [READ_SCOPE, WRITE_SCOPE, "mesh:read"],
            "rate_limit_policy_id": policy,
        }))?;
        let created = match self.gateway.create_api_client().body(spec).send().await {
            Ok(created) => created.into_inner(),
            Err(error) if status(&error) == Some(409) => {
                let page = self
                    .gateway
                    .list_api_clients()
                    .tenant(tenant)
                    .limit(500)
                    .send()
                    .await
                    .map_err(|e| anyhow!("{e}"))?;
                let existing = page
                    .into_inner()
                    .items
                    .into_iter()
                    .find(|c| c.name.as_str() == "researcher")
                    .ok_or_else(|| anyhow!("the researcher client of {tenant} exists but is not listed"))?;
                let update: gw::ApiClientUpdate = typed(json!({
                    "scopes": [READ_SCOPE, WRITE_SCOPE, "mesh:read"], "rate_limit_policy_id": policy, "disabled": false,
                }))?;
                self.gateway
                    .update_api_client()
                    .api_client_id(existing.id)
                    .body(update)
                    .send()
                    .await
                    .map_err(|e| anyhow!("updating the researcher client of {tenant}: {e}"))?;
                self.gateway
                    .rotate_api_client_secret()
                    .api_client_id(existing.id)
                    .send()
                    .await
                    .map_err(|e| anyhow!("rotating the secret of the researcher client of {tenant}: {e}"))?
                    .into_inner()
            }
            Err(error) => return Err(anyhow!("creating the researcher client of {tenant}: {error}")),
        };
        Ok(Credentials {
            tenant: tenant.to_string(),
            client_id: created.client_id.to_string(),
            client_secret: created.client_secret.to_string(),
        })
    }

    /// Sets the whole workload up for `tenants` tenants; returns their credentials.
    pub async fn set_up(
        &self,
        fleet: &Fleet,
        advertise: Option<std::net::IpAddr>,
        tenants: usize,
    ) -> Result<Vec<Credentials>> {
        let addr = |upstream: &crate::fleet::Upstream| match advertise {
            Some(ip) => SocketAddr::new(ip, upstream.addr.port()),
            None => upstream.addr,
        };
        for upstream in fleet.upstreams() {
            self.service(upstream.name, addr(upstream), None).await?;
        }
        // The registry has no `/health`, the services' default health path: monitoring
        // would take it out of discovery.
        self.service("pake-registry", self.registry_addr, Some("/health/live")).await?;
        // The limits a research tenant would be sold: writes per tenant on the summaries
        // route, and everything a client sends. A default run (1000 users over 4 tenants)
        // uses about a quarter of each; a heavier one is warned about before its ramp.
        let writes = self
            .rate_limit_policy(json!({"name": policies::WRITES, "algorithm": "gcra", "rate": 3000,
                "period_seconds": 60, "burst": 100, "scope": "per_tenant", "on_redis_unavailable": "local"}))
            .await?;
        let client = self
            .rate_limit_policy(json!({"name": policies::CLIENT, "algorithm": "gcra", "rate": 30000,
                "period_seconds": 60, "burst": 500, "scope": "per_client", "on_redis_unavailable": "local"}))
            .await?;
        self.route(json!({"name": routes::SEARCH, "path_prefix": "/search", "methods": ["GET"], "api_version": "v1",
            "service": "research-search", "required_scopes": [READ_SCOPE],
            "cache": {"enabled": true, "ttl_seconds": 60, "tags": ["search"], "tag_header": "Cache-Tag"}}))
            .await?;
        self.route(json!({"name": routes::DOCUMENTS, "path_prefix": "/documents", "methods": ["GET"],
            "api_version": "v1", "service": "research-documents", "required_scopes": [READ_SCOPE],
            "cache": {"enabled": true, "ttl_seconds": 300, "tag_header": "Cache-Tag"}}))
            .await?;
        self.route(json!({"name": routes::SUMMARIES, "path_prefix": "/summaries", "methods": ["POST"],
            "api_version": "v1", "service": "research-summarise", "required_scopes": [WRITE_SCOPE],
            "rate_limit_policy_id": writes}))
            .await?;
        self.route(json!({"name": routes::DISCOVERY, "path_prefix": "/mesh", "methods": ["GET"], "api_version": "v1",
            "service": "pake-registry", "strip_prefix": true, "required_scopes": ["mesh:read"]}))
            .await?;
        let mut credentials = Vec::with_capacity(tenants);
        for index in 0..tenants.max(1) {
            credentials.push(self.research_client(&tenant_name(index), client).await?);
        }
        Ok(credentials)
    }

    /// The gateway's cache statistics (admin API).
    pub async fn cache_stats(&self) -> Result<gw::CacheStats> {
        Ok(self.gateway.get_cache_stats().send().await.map_err(|e| anyhow!("cache statistics: {e}"))?.into_inner())
    }
}
