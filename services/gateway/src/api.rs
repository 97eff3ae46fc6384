//! The gateway contract's admin API: health, routes, circuit breakers, metrics. Handlers
//! parse, call the route store or the data plane's state, and map errors once
//! ([`store_error`]).
//!
//! API clients, token issuance, rate-limit policies and the response cache are the
//! gateway-policies work; until it lands those operations answer 501 with a message saying
//! so, rather than pretending.

use crate::proxy::DataPlane;
use crate::routes::RouteStore;
use crate::upstream::{Upstream, upstream_id};
use pake_api_runtime::{ApiError, Principal};
use pake_gateway_server::*;
use pake_observe::Metrics;
use pake_registry::store::StoreError;
use pake_tokens::TokenVerifier;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const RETRY_AFTER_SECONDS: u64 = 2;

/// `/v1` paths that belong to the gateway itself and cannot be routed.
const RESERVED_PREFIXES: &[&str] = &["/admin", "/auth", "/health"];

pub struct GatewayAdmin {
    plane: Arc<DataPlane>,
    routes: RouteStore,
    verifier: TokenVerifier,
    metrics: Metrics,
    breakers: Family<BreakerLabels, Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    upstream: String,
    state: String,
}

impl GatewayAdmin {
    pub fn new(plane: Arc<DataPlane>, routes: RouteStore, verifier: TokenVerifier, metrics: Metrics) -> GatewayAdmin {
        let breakers = Family::<BreakerLabels, Gauge>::default();
        metrics.register(
            "circuit_breaker_state",
            "1 for each upstream's current breaker state, 0 for the others",
            breakers.clone(),
        );
        GatewayAdmin { plane, routes, verifier, metrics, breakers }
    }

    /// Reloads the route table after a write, so this replica routes by it at once.
    async fn reload(&self) -> Result<(), ApiError> {
        crate::reload_routes(&self.plane, &self.routes).await.map_err(store_error)
    }
}

fn not_yet(what: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_IMPLEMENTED,
        "not_implemented",
        format!("{what} are not available in this gateway yet"),
    )
}

/// The one mapping from store errors to HTTP answers.
pub fn store_error(error: StoreError) -> ApiError {
    match error {
        StoreError::NotFound => ApiError::not_found("no such route"),
        StoreError::Conflict(_) => ApiError::conflict("a route with this name already exists"),
        StoreError::Stale { expected, actual } => {
            ApiError::precondition_failed(format!("if-match version {expected} but the current version is {actual}"))
        }
        StoreError::Unavailable(source) => {
            tracing::warn!(error = %source, "store unavailable");
            ApiError::unavailable("the gateway store is unavailable", RETRY_AFTER_SECONDS)
        }
        other => ApiError::internal(&other),
    }
}

fn if_match(header: Option<&String>) -> Option<i64> {
    header
        .map(|value| value.trim_matches('"').parse::<u64>().map(|v| i64::try_from(v).unwrap_or(i64::MAX)).unwrap_or(-1))
}

fn etag(version: u64) -> String {
    format!("\"{version}\"")
}

fn internal(error: serde_json::Error) -> ApiError {
    ApiError::internal(&error)
}

/// A route document from a spec, with the contract's defaults filled in.
fn route_from_spec(
    spec: &types::RouteSpec,
    id: uuid::Uuid,
    version: i64,
    created_at: chrono::DateTime<chrono::Utc>,
) -> Result<types::Route, ApiError> {
    if spec.api_version.as_str() == "v1" {
        let prefix = spec.path_prefix.as_str();
        if let Some(reserved) = RESERVED_PREFIXES.iter().find(|r| prefix == **r || prefix.starts_with(&format!("{r}/")))
        {
            return Err(ApiError::unprocessable(format!("/v1{reserved} belongs to the gateway and cannot be routed")));
        }
    }
    let mut doc = serde_json::to_value(spec).map_err(internal)?;
    let object = doc.as_object_mut().expect("a spec is an object");
    object.insert("id".into(), json!(id));
    object.entry("retry").or_insert(json!({"max_attempts": 2}));
    object.entry("cache").or_insert(json!({"enabled": false}));
    object.entry("rate_limit_policy_id").or_insert(json!(null));
    object.insert("created_at".into(), json!(created_at));
    object.insert("updated_at".into(), json!(chrono::Utc::now()));
    object.insert("version".into(), json!(version));
    serde_json::from_value(doc).map_err(internal)
}

fn breaker_state(upstream: &Upstream) -> Result<types::CircuitBreakerState, ApiError> {
    let state = upstream.state();
    let breaker = upstream.breaker.lock().expect("breaker lock");
    serde_json::from_value(json!({
        "upstream_id": upstream_id(&upstream.service, upstream.instance),
        "service": upstream.service,
        "instance_id": upstream.instance,
        "address": upstream.address,
        "state": state,
        "consecutive_failures": breaker.consecutive_failures,
        "failure_rate": breaker.failure_rate(),
        "opened_at": breaker.opened_at,
        "next_probe_at": breaker.next_probe_at,
        "total_requests": upstream.total_requests(&breaker),
        "total_failures": breaker.total_failures,
    }))
    .map_err(internal)
}

fn list<T: serde::Serialize, L: serde::de::DeserializeOwned>(
    items: Vec<T>,
    limit: u64,
    key: impl Fn(&T) -> String,
) -> Result<L, ApiError> {
    let mut items = items;
    let next_cursor = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(|last| pake_registry::cursor::encode(&key(last)))
    } else {
        None
    };
    serde_json::from_value(json!({"items": items, "next_cursor": next_cursor})).map_err(internal)
}

fn after(cursor: Option<&String>) -> Result<Option<String>, ApiError> {
    cursor
        .map(|c| {
            pake_registry::cursor::decode(c)
                .map_err(|_| ApiError::bad_request("invalid_cursor", "cursor is not one this server issued"))
        })
        .transpose()
}

impl GatewayApi for GatewayAdmin {
    async fn authenticate(&self, bearer_token: String) -> Result<Principal, ApiError> {
        self.verifier.verify(&bearer_token)
    }

    async fn get_health(&self, _request: GetHealthRequest) -> Result<GetHealthResponse, ApiError> {
        let now = chrono::Utc::now();
        let started = std::time::Instant::now();
        let ping = tokio::time::timeout(Duration::from_secs(1), self.routes.store().ping()).await;
        let latency_ms = started.elapsed().as_millis() as u64;
        let store_ok = matches!(ping, Ok(Ok(())));
        let mut store = json!({"status": if store_ok { "pass" } else { "fail" }, "component_type": "datastore", "latency_ms": latency_ms, "time": now});
        if !store_ok {
            store["output"] = json!("the store does not answer; routing continues from memory");
        }
        let snapshot = self.plane.registry.load();
        let routes = self.plane.routes.load().len();
        let registry = json!({
            "status": "pass", "component_type": "component", "latency_ms": 0, "time": now,
            "output": format!("{} services known, {routes} routes", snapshot.len()),
        });
        // The data plane keeps routing from memory when the store is down: degraded, not down.
        let status = if store_ok { "pass" } else { "warn" };
        let body: types::Health = serde_json::from_value(json!({
            "status": status, "version": env!("CARGO_PKG_VERSION"), "service_id": "pake-gateway",
            "description": "pake api gateway", "checks": {"store": store, "registry": registry},
        }))
        .map_err(internal)?;
        Ok(GetHealthResponse::Ok(body))
    }

    async fn get_liveness(&self, _request: GetLivenessRequest) -> Result<GetLivenessResponse, ApiError> {
        let body: types::Health = serde_json::from_value(json!({
            "status": "pass", "version": env!("CARGO_PKG_VERSION"), "service_id": "pake-gateway",
        }))
        .map_err(internal)?;
        Ok(GetLivenessResponse::Ok(body))
    }

    async fn get_metrics(&self, _request: GetMetricsRequest) -> Result<GetMetricsResponse, ApiError> {
        // Breaker states are read when scraped rather than pushed on every transition.
        for upstream in self.plane.upstreams.all() {
            let id = upstream_id(&upstream.service, upstream.instance);
            let current = upstream.state().to_string();
            for state in ["closed", "open", "half_open"] {
                let labels = BreakerLabels { upstream: id.clone(), state: state.to_string() };
                self.breakers.get_or_create(&labels).set(i64::from(state == current));
            }
        }
        Ok(GetMetricsResponse::Ok(self.metrics.render()))
    }

    async fn list_routes(&self, request: ListRoutesRequest) -> Result<ListRoutesResponse, ApiError> {
        let after = after(request.cursor.as_ref())?;
        let routes: Vec<types::Route> = self
            .routes
            .all()
            .await
            .map_err(store_error)?
            .into_iter()
            .filter(|r| request.service.as_ref().is_none_or(|s| r.service.as_str() == s))
            .filter(|r| request.api_version.as_ref().is_none_or(|v| r.api_version.as_str() == v))
            .filter(|r| request.path_prefix.as_ref().is_none_or(|p| r.path_prefix.starts_with(p.as_str())))
            .filter(|r| after.as_ref().is_none_or(|a| r.name.as_str() > a.as_str()))
            .take(request.limit as usize + 1)
            .collect();
        Ok(ListRoutesResponse::Ok(list(routes, request.limit, |r| r.name.to_string())?))
    }

    async fn create_route(&self, request: CreateRouteRequest) -> Result<CreateRouteResponse, ApiError> {
        let route = route_from_spec(&request.body, uuid::Uuid::new_v4(), 1, chrono::Utc::now())?;
        self.routes.insert(&route).await.map_err(store_error)?;
        self.reload().await?;
        Ok(CreateRouteResponse::Created {
            location: format!("/v1/admin/routes/{}", route.id),
            etag: etag(route.version.get()),
            body: route,
        })
    }

    async fn get_route(&self, request: GetRouteRequest) -> Result<GetRouteResponse, ApiError> {
        let route = self
            .routes
            .get(request.route_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found("no such route"))?;
        Ok(GetRouteResponse::Ok { etag: etag(route.version.get()), body: route })
    }

    async fn update_route(&self, request: UpdateRouteRequest) -> Result<UpdateRouteResponse, ApiError> {
        let current = self
            .routes
            .get(request.route_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ApiError::not_found("no such route"))?;
        let version = current.version.get() as i64;
        if let Some(expected) = if_match(request.if_match.as_ref())
            && expected != version
        {
            return Err(ApiError::precondition_failed(format!(
                "if-match version {expected} but the current version is {version}"
            )));
        }
        let route = route_from_spec(&request.body, current.id, version + 1, current.created_at)?;
        self.routes.replace(&route, version).await.map_err(store_error)?;
        self.reload().await?;
        Ok(UpdateRouteResponse::Ok { etag: etag(route.version.get()), body: route })
    }

    async fn delete_route(&self, request: DeleteRouteRequest) -> Result<DeleteRouteResponse, ApiError> {
        self.routes.delete(request.route_id, if_match(request.if_match.as_ref())).await.map_err(store_error)?;
        self.reload().await?;
        Ok(DeleteRouteResponse::NoContent)
    }

    async fn list_circuit_breakers(
        &self,
        request: ListCircuitBreakersRequest,
    ) -> Result<ListCircuitBreakersResponse, ApiError> {
        let after = after(request.cursor.as_ref())?;
        let mut items = Vec::new();
        for upstream in self.plane.upstreams.all() {
            let id = upstream_id(&upstream.service, upstream.instance);
            if request.service.as_ref().is_some_and(|s| &upstream.service != s)
                || after.as_ref().is_some_and(|a| id.as_str() <= a.as_str())
                || request.state.is_some_and(|s| upstream.state() != s)
            {
                continue;
            }
            items.push(breaker_state(&upstream)?);
            if items.len() > request.limit as usize {
                break;
            }
        }
        Ok(ListCircuitBreakersResponse::Ok(list(items, request.limit, |b| b.upstream_id.to_string())?))
    }

    async fn get_circuit_breaker(
        &self,
        request: GetCircuitBreakerRequest,
    ) -> Result<GetCircuitBreakerResponse, ApiError> {
        let upstream =
            self.plane.upstreams.find(&request.upstream_id).ok_or_else(|| ApiError::not_found("no such upstream"))?;
        Ok(GetCircuitBreakerResponse::Ok(breaker_state(&upstream)?))
    }

    async fn reset_circuit_breaker(
        &self,
        request: ResetCircuitBreakerRequest,
    ) -> Result<ResetCircuitBreakerResponse, ApiError> {
        let upstream =
            self.plane.upstreams.find(&request.upstream_id).ok_or_else(|| ApiError::not_found("no such upstream"))?;
        upstream.reset();
        tracing::info!(upstream = %request.upstream_id, by = %request.principal.subject, "circuit breaker reset");
        Ok(ResetCircuitBreakerResponse::Ok(breaker_state(&upstream)?))
    }

    async fn issue_token(&self, _request: IssueTokenRequest) -> Result<IssueTokenResponse, ApiError> {
        Err(not_yet("API clients and token issuance"))
    }

    async fn get_jwks(&self, _request: GetJwksRequest) -> Result<GetJwksResponse, ApiError> {
        Err(not_yet("published signing keys"))
    }

    async fn list_api_clients(&self, _request: ListApiClientsRequest) -> Result<ListApiClientsResponse, ApiError> {
        Err(not_yet("API clients"))
    }

    async fn create_api_client(&self, _request: CreateApiClientRequest) -> Result<CreateApiClientResponse, ApiError> {
        Err(not_yet("API clients"))
    }

    async fn get_api_client(&self, _request: GetApiClientRequest) -> Result<GetApiClientResponse, ApiError> {
        Err(not_yet("API clients"))
    }

    async fn update_api_client(&self, _request: UpdateApiClientRequest) -> Result<UpdateApiClientResponse, ApiError> {
        Err(not_yet("API clients"))
    }

    async fn delete_api_client(&self, _request: DeleteApiClientRequest) -> Result<DeleteApiClientResponse, ApiError> {
        Err(not_yet("API clients"))
    }

    async fn rotate_api_client_secret(
        &self,
        _request: RotateApiClientSecretRequest,
    ) -> Result<RotateApiClientSecretResponse, ApiError> {
        Err(not_yet("API clients"))
    }

    async fn list_rate_limit_policies(
        &self,
        _request: ListRateLimitPoliciesRequest,
    ) -> Result<ListRateLimitPoliciesResponse, ApiError> {
        Err(not_yet("rate-limit policies"))
    }

    async fn create_rate_limit_policy(
        &self,
        _request: CreateRateLimitPolicyRequest,
    ) -> Result<CreateRateLimitPolicyResponse, ApiError> {
        Err(not_yet("rate-limit policies"))
    }

    async fn get_rate_limit_policy(
        &self,
        _request: GetRateLimitPolicyRequest,
    ) -> Result<GetRateLimitPolicyResponse, ApiError> {
        Err(not_yet("rate-limit policies"))
    }

    async fn update_rate_limit_policy(
        &self,
        _request: UpdateRateLimitPolicyRequest,
    ) -> Result<UpdateRateLimitPolicyResponse, ApiError> {
        Err(not_yet("rate-limit policies"))
    }

    async fn delete_rate_limit_policy(
        &self,
        _request: DeleteRateLimitPolicyRequest,
    ) -> Result<DeleteRateLimitPolicyResponse, ApiError> {
        Err(not_yet("rate-limit policies"))
    }

    async fn get_cache_stats(&self, _request: GetCacheStatsRequest) -> Result<GetCacheStatsResponse, ApiError> {
        Err(not_yet("response cache statistics"))
    }

    async fn invalidate_cache(&self, _request: InvalidateCacheRequest) -> Result<InvalidateCacheResponse, ApiError> {
        Err(not_yet("response cache invalidations"))
    }
}
