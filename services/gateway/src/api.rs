//! The gateway contract's own API: health, metrics, token issuance and JWKS, and the admin
//! API for routes, API clients, rate-limit policies, circuit breakers and the response
//! cache. Handlers parse, call the stores or the data plane's state, and map errors once
//! ([`entity_error`]).

use crate::policy_store::PolicyStore;
use crate::proxy::DataPlane;
use crate::routes::RouteStore;
use crate::upstream::{Upstream, upstream_id};
use pake_api_runtime::{ApiError, Principal};
use pake_gateway_server::*;
use pake_observe::Metrics;
use pake_registry::store::StoreError;
use pake_tokens::{KeyRing, TokenVerifier};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::Duration;

const RETRY_AFTER_SECONDS: u64 = 2;

/// `/v1` paths that belong to the gateway itself and cannot be routed.
const RESERVED_PREFIXES: &[&str] = &["/admin", "/auth", "/health"];

pub struct GatewayAdmin {
    plane: Arc<DataPlane>,
    routes: RouteStore,
    policies: PolicyStore,
    keys: KeyRing,
    verifier: TokenVerifier,
    token_ttl: Duration,
    metrics: Metrics,
    breakers: Family<BreakerLabels, Gauge>,
    tokens: Family<TokenLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BreakerLabels {
    upstream: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    result: &'static str,
}

impl GatewayAdmin {
    pub fn new(
        plane: Arc<DataPlane>,
        routes: RouteStore,
        policies: PolicyStore,
        keys: KeyRing,
        token_ttl: Duration,
        metrics: Metrics,
    ) -> GatewayAdmin {
        let breakers = Family::<BreakerLabels, Gauge>::default();
        metrics.register(
            "circuit_breaker_state",
            "1 for each upstream's current breaker state, 0 for the others",
            breakers.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        metrics.register("token_requests", "Token requests by result", tokens.clone());
        let verifier = keys.verifier();
        GatewayAdmin { plane, routes, policies, keys, verifier, token_ttl, metrics, breakers, tokens }
    }

    /// Reloads the routing and policy tables after a write, so this replica applies it at once.
    async fn reload(&self) -> Result<(), ApiError> {
        crate::reload(&self.plane, &self.routes, &self.policies).await.map_err(store_error)
    }

    fn tokens_issued(&self, result: &'static str) {
        self.tokens.get_or_create(&TokenLabels { result }).inc();
    }

    async fn client(&self, id: uuid::Uuid) -> Result<types::ApiClient, ApiError> {
        self.policies
            .client(id)
            .await
            .map_err(entity_error("API client"))?
            .ok_or_else(|| ApiError::not_found("no such API client"))
    }

    /// A referenced rate-limit policy must exist (422 otherwise).
    async fn require_policy(&self, id: Option<uuid::Uuid>) -> Result<(), ApiError> {
        let Some(id) = id else { return Ok(()) };
        match self.policies.policy(id).await.map_err(entity_error("rate-limit policy"))? {
            Some(_) => Ok(()),
            None => Err(ApiError::unprocessable(format!("rate_limit_policy_id {id} names no rate-limit policy"))),
        }
    }
}

/// The client with its secret in clear, for the one response that shows it.
fn with_secret(client: types::ApiClient, secret: &str) -> Result<types::ApiClientWithSecret, ApiError> {
    let types::ApiClient {
        id,
        client_id,
        name,
        tenant,
        scopes,
        rate_limit_policy_id,
        disabled,
        created_at,
        updated_at,
        secret_rotated_at,
    } = client;
    Ok(types::ApiClientWithSecret {
        id,
        client_id,
        client_secret: typed(secret)?,
        name,
        tenant,
        scopes,
        rate_limit_policy_id,
        disabled,
        created_at,
        updated_at,
        secret_rotated_at,
    })
}

/// A policy from a spec, with the contract's defaults filled in.
fn policy_from_spec(
    spec: types::RateLimitPolicySpec,
    id: uuid::Uuid,
    created_at: chrono::DateTime<chrono::Utc>,
) -> types::RateLimitPolicy {
    let types::RateLimitPolicySpec { name, algorithm, rate, period_seconds, burst, scope, on_redis_unavailable } = spec;
    types::RateLimitPolicy {
        id,
        name,
        algorithm,
        rate,
        period_seconds,
        burst,
        scope,
        on_redis_unavailable: on_redis_unavailable.unwrap_or(types::RedisUnavailableBehaviour::Local),
        created_at,
        updated_at: chrono::Utc::now(),
    }
}

/// The gateway's health with `status` and no checks.
fn health(status: types::HealthStatus) -> Result<types::Health, ApiError> {
    Ok(types::Health {
        status,
        version: typed(env!("CARGO_PKG_VERSION"))?,
        service_id: typed("pake-gateway")?,
        description: None,
        output: None,
        checks: Default::default(),
    })
}

/// A value from a contract type's builder (the schema's defaults filled in).
fn built<B: TryInto<T, Error = types::error::ConversionError>, T>(builder: B) -> Result<T, ApiError> {
    builder.try_into().map_err(|error| ApiError::internal(&error))
}

/// A value the gateway made itself, in the contract's constrained type: one that does
/// not fit is the gateway's own fault (500).
fn typed<T: std::str::FromStr<Err = types::error::ConversionError>>(value: &str) -> Result<T, ApiError> {
    value.parse().map_err(|error: types::error::ConversionError| ApiError::internal(&error))
}

/// The one mapping from store errors to HTTP answers, for routes.
pub fn store_error(error: StoreError) -> ApiError {
    entity_error("route")(error)
}

/// The mapping from store errors to HTTP answers for one kind of resource.
pub fn entity_error(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |error| match error {
        StoreError::NotFound => ApiError::not_found(format!("no such {what}")),
        StoreError::Conflict("gateway_api_clients_name_key") => {
            ApiError::conflict("an API client with this name already exists in the tenant")
        }
        StoreError::Conflict(_) => ApiError::conflict(format!("a {what} with this name already exists")),
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

/// A route from a spec, with the contract's defaults filled in.
fn route_from_spec(
    spec: types::RouteSpec,
    id: uuid::Uuid,
    version: std::num::NonZeroU64,
    created_at: chrono::DateTime<chrono::Utc>,
) -> Result<types::Route, ApiError> {
    if spec.api_version.as_str() == "v1" {
        let prefix = spec.path_prefix.as_str();
        if let Some(reserved) = RESERVED_PREFIXES.iter().find(|r| prefix == **r || prefix.starts_with(&format!("{r}/")))
        {
            return Err(ApiError::unprocessable(format!("/v1{reserved} belongs to the gateway and cannot be routed")));
        }
    }
    // Naming scopes means a token is needed to hold them.
    let require_token = match spec.require_token {
        Some(false) if !spec.required_scopes.is_empty() => {
            return Err(ApiError::unprocessable(
                "a route with required_scopes requires a token; drop require_token: false",
            ));
        }
        Some(require) => require,
        None => !spec.required_scopes.is_empty(),
    };
    Ok(types::Route {
        id,
        name: spec.name,
        path_prefix: spec.path_prefix,
        methods: spec.methods,
        api_version: spec.api_version,
        service: spec.service,
        strip_prefix: spec.strip_prefix,
        merge_slashes: spec.merge_slashes,
        timeout_ms: spec.timeout_ms,
        retry: match spec.retry {
            Some(retry) => retry,
            None => built(types::builder::RetryPolicy::default().max_attempts(2))?,
        },
        cache: match spec.cache {
            Some(cache) => cache,
            None => built(types::builder::CachePolicy::default().enabled(false))?,
        },
        rate_limit_policy_id: spec.rate_limit_policy_id,
        required_scopes: spec.required_scopes,
        require_token,
        priority: spec.priority,
        created_at,
        updated_at: chrono::Utc::now(),
        version,
    })
}

fn breaker_state(upstream: &Upstream) -> Result<types::CircuitBreakerState, ApiError> {
    let state = upstream.state();
    let breaker = upstream.breaker.lock().expect("breaker lock");
    Ok(types::CircuitBreakerState {
        upstream_id: typed(&upstream_id(&upstream.service, upstream.instance))?,
        service: typed(&upstream.service)?,
        instance_id: upstream.instance,
        address: typed(&upstream.address)?,
        state,
        consecutive_failures: breaker.consecutive_failures,
        failure_rate: breaker.failure_rate(),
        opened_at: breaker.opened_at,
        next_probe_at: breaker.next_probe_at,
        total_requests: upstream.total_requests(&breaker),
        total_failures: breaker.total_failures,
    })
}

/// One page of `items` (fetched one beyond `limit`, to tell whether another page
/// follows) and the cursor of the next page, keyed by `key`.
fn page<T, C: std::str::FromStr<Err = types::error::ConversionError>>(
    mut items: Vec<T>,
    limit: u64,
    key: impl Fn(&T) -> String,
) -> Result<(Vec<T>, Option<C>), ApiError> {
    if items.len() <= limit as usize {
        return Ok((items, None));
    }
    items.truncate(limit as usize);
    let next = items.last().map(|last| typed(&pake_registry::cursor::encode(&key(last)))).transpose()?;
    Ok((items, next))
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
        let store = types::HealthCheck {
            status: if store_ok { types::HealthStatus::Pass } else { types::HealthStatus::Fail },
            component_type: types::HealthCheckComponentType::Datastore,
            latency_ms: latency_ms as i64,
            time: now,
            output: if store_ok {
                None
            } else {
                Some(typed("the store does not answer; routing continues from memory")?)
            },
        };
        let snapshot = self.plane.registry.load();
        let routes = self.plane.routes.load().len();
        let registry = types::HealthCheck {
            status: types::HealthStatus::Pass,
            component_type: types::HealthCheckComponentType::Component,
            latency_ms: 0,
            time: now,
            output: Some(typed(&format!("{} services known, {routes} routes", snapshot.len()))?),
        };
        // The data plane keeps routing from memory when the store is down: degraded, not down.
        let status = if store_ok { types::HealthStatus::Pass } else { types::HealthStatus::Warn };
        let mut body = health(status)?;
        body.description = Some(typed("pake api gateway")?);
        body.checks = [("store".to_string(), store), ("registry".to_string(), registry)].into();
        Ok(GetHealthResponse::Ok(body))
    }

    async fn get_liveness(&self, _request: GetLivenessRequest) -> Result<GetLivenessResponse, ApiError> {
        Ok(GetLivenessResponse::Ok(health(types::HealthStatus::Pass)?))
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
        let (items, next_cursor) = page(routes, request.limit, |r| r.name.to_string())?;
        Ok(ListRoutesResponse::Ok(types::RouteList { items, next_cursor }))
    }

    async fn create_route(&self, request: CreateRouteRequest) -> Result<CreateRouteResponse, ApiError> {
        self.require_policy(request.body.rate_limit_policy_id).await?;
        let route = route_from_spec(request.body, uuid::Uuid::new_v4(), std::num::NonZeroU64::MIN, chrono::Utc::now())?;
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
        self.require_policy(request.body.rate_limit_policy_id).await?;
        let route = route_from_spec(request.body, current.id, current.version.saturating_add(1), current.created_at)?;
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
        let (items, next_cursor) = page(items, request.limit, |b| b.upstream_id.to_string())?;
        Ok(ListCircuitBreakersResponse::Ok(types::CircuitBreakerList { items, next_cursor }))
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

    async fn issue_token(&self, request: IssueTokenRequest) -> Result<IssueTokenResponse, ApiError> {
        let body = request.body;
        let client_id = body.client_id.to_string();
        let secret = body.client_secret.to_string();
        let edge = &self.plane.edge;
        let address = crate::token_guard::token_caller();
        let rate_limited = |wait: Duration| {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            ApiError::too_many_requests(
                format!("too many token requests for this client, retry in {seconds} seconds"),
                seconds,
            )
        };
        let stored = self.policies.client_by_public_id(&client_id).await.map_err(entity_error("API client"))?;
        let (hash, client) = match stored {
            Some(stored) => (Some(stored.secret_hash), Some(stored.client)),
            None => (None, None),
        };
        // Guessing is slowed by counting the attempts that need Argon2 (see `TokenThrottle`);
        // a secret verified a moment ago passes whatever others have tried.
        if !crate::secrets::remembered(&secret, hash.as_deref())
            && let Err(wait) = edge.token_throttle.admit(&edge.limiter, &client_id, address).await
        {
            self.tokens_issued("rate_limited");
            return Err(rate_limited(wait));
        }
        // An address that proved the secret before does not queue behind guessers' hashing.
        let verified = if edge.token_throttle.proven(&client_id, address) {
            crate::secrets::verify_proven(secret, hash).await
        } else {
            crate::secrets::verify(secret, hash).await
        };
        let client = match client {
            Some(client) if verified && !client.disabled => {
                edge.token_throttle.succeeded(&client_id, address);
                client
            }
            _ => {
                self.tokens_issued("refused");
                return Err(ApiError::unauthorized("invalid client credentials"));
            }
        };
        let held: Vec<&str> = client.scopes.iter().map(|s| s.as_str()).collect();
        let granted: Vec<&str> = match &body.scope {
            Some(requested) => {
                let requested: Vec<&str> = requested.split(' ').collect();
                if let Some(missing) = requested.iter().find(|s| !held.contains(s)) {
                    self.tokens_issued("invalid_scope");
                    return Err(ApiError::bad_request(
                        "invalid_scope",
                        format!("the client does not hold the scope {missing}"),
                    ));
                }
                let mut unique: Vec<&str> = Vec::with_capacity(requested.len());
                for scope in requested {
                    if !unique.contains(&scope) {
                        unique.push(scope);
                    }
                }
                unique
            }
            None => held,
        };
        let audience = body.audience.as_ref().map(|a| a.as_str()).unwrap_or(pake_tokens::AUDIENCE);
        let token = self.keys.issuer().issue_for(
            audience,
            client.client_id.as_str(),
            Some(client.tenant.as_str()),
            &granted,
            self.token_ttl,
        );
        self.tokens_issued("issued");
        let body = types::TokenResponse {
            access_token: typed(&token)?,
            token_type: types::TokenResponseTokenType::Bearer,
            expires_in: std::num::NonZeroU64::MIN.saturating_add(self.token_ttl.as_secs().saturating_sub(1)),
            scope: typed(&granted.join(" "))?,
        };
        // The token limit's fields are written on every answer of this endpoint, errors
        // included, by the guard that decided it (`token_guard::token_endpoint_guard`).
        Ok(IssueTokenResponse::Ok { body, cache_control: "no-store".into(), ratelimit_policy: None, ratelimit: None })
    }

    async fn get_jwks(&self, _request: GetJwksRequest) -> Result<GetJwksResponse, ApiError> {
        // The key ring's JWKs, read as the contract's (their other members left out).
        let keys = self
            .keys
            .jwks()
            .into_iter()
            .map(|jwk| {
                let mut published = serde_json::Map::new();
                for field in ["kty", "kid", "use", "alg", "n", "e", "crv", "x"] {
                    if let Some(value) = jwk.get(field) {
                        published.insert(field.into(), value.clone());
                    }
                }
                serde_json::from_value(serde_json::Value::Object(published)).map_err(|error| ApiError::internal(&error))
            })
            .collect::<Result<_, _>>()?;
        let body = types::Jwks { keys };
        Ok(GetJwksResponse::Ok { body, cache_control: "public, max-age=300".into() })
    }

    async fn list_api_clients(&self, request: ListApiClientsRequest) -> Result<ListApiClientsResponse, ApiError> {
        let after = after(request.cursor.as_ref())?;
        let key = |c: &types::ApiClient| format!("{}/{}", c.tenant.as_str(), c.name.as_str());
        let clients: Vec<types::ApiClient> = self
            .policies
            .clients()
            .await
            .map_err(entity_error("API client"))?
            .into_iter()
            .filter(|c| request.tenant.as_ref().is_none_or(|t| c.tenant.as_str() == t))
            .filter(|c| request.disabled.is_none_or(|d| c.disabled == d))
            .filter(|c| after.as_ref().is_none_or(|a| key(c).as_str() > a.as_str()))
            .take(request.limit as usize + 1)
            .collect();
        let (items, next_cursor) = page(clients, request.limit, key)?;
        Ok(ListApiClientsResponse::Ok(types::ApiClientList { items, next_cursor }))
    }

    async fn create_api_client(&self, request: CreateApiClientRequest) -> Result<CreateApiClientResponse, ApiError> {
        let spec = request.body;
        self.require_policy(spec.rate_limit_policy_id).await?;
        let now = chrono::Utc::now();
        let secret = crate::secrets::new_secret();
        let client = types::ApiClient {
            id: uuid::Uuid::new_v4(),
            client_id: typed(&crate::secrets::new_client_id())?,
            name: spec.name,
            tenant: spec.tenant,
            scopes: spec.scopes,
            rate_limit_policy_id: spec.rate_limit_policy_id,
            disabled: spec.disabled,
            created_at: now,
            updated_at: now,
            secret_rotated_at: now,
        };
        let hash = crate::secrets::hash(secret.clone()).await;
        self.policies.insert_client(&client, &hash).await.map_err(entity_error("API client"))?;
        self.reload().await?;
        tracing::info!(client_id = %client.client_id.as_str(), tenant = %client.tenant.as_str(), by = %request.principal.subject, "API client created");
        Ok(CreateApiClientResponse::Created {
            location: format!("/v1/admin/clients/{}", client.id),
            cache_control: "no-store".into(),
            body: with_secret(client, &secret)?,
        })
    }

    async fn get_api_client(&self, request: GetApiClientRequest) -> Result<GetApiClientResponse, ApiError> {
        let client = self.client(request.api_client_id).await?;
        Ok(GetApiClientResponse::Ok(client))
    }

    async fn update_api_client(&self, request: UpdateApiClientRequest) -> Result<UpdateApiClientResponse, ApiError> {
        let update = request.body;
        if update.remove_rate_limit_policy == Some(true) && update.rate_limit_policy_id.is_some() {
            return Err(ApiError::unprocessable(
                "remove_rate_limit_policy and rate_limit_policy_id cannot be given together",
            ));
        }
        self.require_policy(update.rate_limit_policy_id).await?;
        let mut client = self.client(request.api_client_id).await?;
        if let Some(name) = update.name {
            client.name = name.to_string().parse().map_err(|_| ApiError::unprocessable("invalid name"))?;
        }
        if let Some(scopes) = update.scopes {
            client.scopes = scopes;
        }
        if let Some(policy) = update.rate_limit_policy_id {
            client.rate_limit_policy_id = Some(policy);
        }
        if update.remove_rate_limit_policy == Some(true) {
            client.rate_limit_policy_id = None;
        }
        if let Some(disabled) = update.disabled {
            client.disabled = disabled;
        }
        client.updated_at = chrono::Utc::now();
        self.policies.update_client(&client, None).await.map_err(entity_error("API client"))?;
        self.reload().await?;
        Ok(UpdateApiClientResponse::Ok(client))
    }

    async fn delete_api_client(&self, request: DeleteApiClientRequest) -> Result<DeleteApiClientResponse, ApiError> {
        self.policies.delete_client(request.api_client_id).await.map_err(entity_error("API client"))?;
        self.reload().await?;
        tracing::info!(id = %request.api_client_id, by = %request.principal.subject, "API client deleted");
        Ok(DeleteApiClientResponse::NoContent)
    }

    async fn rotate_api_client_secret(
        &self,
        request: RotateApiClientSecretRequest,
    ) -> Result<RotateApiClientSecretResponse, ApiError> {
        let mut client = self.client(request.api_client_id).await?;
        let secret = crate::secrets::new_secret();
        let hash = crate::secrets::hash(secret.clone()).await;
        let now = chrono::Utc::now();
        client.updated_at = now;
        client.secret_rotated_at = now;
        self.policies.update_client(&client, Some(&hash)).await.map_err(entity_error("API client"))?;
        tracing::info!(client_id = %client.client_id.as_str(), by = %request.principal.subject, "API client secret rotated");
        Ok(RotateApiClientSecretResponse::Ok { body: with_secret(client, &secret)?, cache_control: "no-store".into() })
    }

    async fn list_rate_limit_policies(
        &self,
        request: ListRateLimitPoliciesRequest,
    ) -> Result<ListRateLimitPoliciesResponse, ApiError> {
        let after = after(request.cursor.as_ref())?;
        let policies: Vec<types::RateLimitPolicy> = self
            .policies
            .policies()
            .await
            .map_err(entity_error("rate-limit policy"))?
            .into_iter()
            .filter(|p| after.as_ref().is_none_or(|a| p.name.as_str() > a.as_str()))
            .take(request.limit as usize + 1)
            .collect();
        let (items, next_cursor) = page(policies, request.limit, |p| p.name.to_string())?;
        Ok(ListRateLimitPoliciesResponse::Ok(types::RateLimitPolicyList { items, next_cursor }))
    }

    async fn create_rate_limit_policy(
        &self,
        request: CreateRateLimitPolicyRequest,
    ) -> Result<CreateRateLimitPolicyResponse, ApiError> {
        let now = chrono::Utc::now();
        let policy = policy_from_spec(request.body, uuid::Uuid::new_v4(), now);
        self.policies.insert_policy(&policy).await.map_err(entity_error("rate-limit policy"))?;
        self.reload().await?;
        Ok(CreateRateLimitPolicyResponse::Created {
            location: format!("/v1/admin/rate-limit-policies/{}", policy.id),
            body: policy,
        })
    }

    async fn get_rate_limit_policy(
        &self,
        request: GetRateLimitPolicyRequest,
    ) -> Result<GetRateLimitPolicyResponse, ApiError> {
        let policy = self
            .policies
            .policy(request.policy_id)
            .await
            .map_err(entity_error("rate-limit policy"))?
            .ok_or_else(|| ApiError::not_found("no such rate-limit policy"))?;
        Ok(GetRateLimitPolicyResponse::Ok(policy))
    }

    async fn update_rate_limit_policy(
        &self,
        request: UpdateRateLimitPolicyRequest,
    ) -> Result<UpdateRateLimitPolicyResponse, ApiError> {
        let current = self
            .policies
            .policy(request.policy_id)
            .await
            .map_err(entity_error("rate-limit policy"))?
            .ok_or_else(|| ApiError::not_found("no such rate-limit policy"))?;
        let policy = policy_from_spec(request.body, current.id, current.created_at);
        self.policies.replace_policy(&policy).await.map_err(entity_error("rate-limit policy"))?;
        self.reload().await?;
        Ok(UpdateRateLimitPolicyResponse::Ok(policy))
    }

    async fn delete_rate_limit_policy(
        &self,
        request: DeleteRateLimitPolicyRequest,
    ) -> Result<DeleteRateLimitPolicyResponse, ApiError> {
        let id = request.policy_id;
        let routes = self.routes.all().await.map_err(store_error)?;
        if let Some(route) = routes.iter().find(|r| r.rate_limit_policy_id == Some(id)) {
            return Err(ApiError::conflict(format!(
                "the policy is used by route {}; detach it first",
                route.name.as_str()
            )));
        }
        let clients = self.policies.clients().await.map_err(entity_error("API client"))?;
        if let Some(client) = clients.iter().find(|c| c.rate_limit_policy_id == Some(id)) {
            return Err(ApiError::conflict(format!(
                "the policy is used by API client {}/{}; detach it first",
                client.tenant.as_str(),
                client.name.as_str()
            )));
        }
        self.policies.delete_policy(id).await.map_err(entity_error("rate-limit policy"))?;
        self.reload().await?;
        Ok(DeleteRateLimitPolicyResponse::NoContent)
    }

    async fn get_cache_stats(&self, _request: GetCacheStatsRequest) -> Result<GetCacheStatsResponse, ApiError> {
        let stats = self.plane.edge.cache.stats().await;
        let table = self.plane.routes.load();
        let level = |l: &pake_cache::LevelStats| types::CacheLevelStats {
            hits: l.hits,
            misses: l.misses,
            hit_rate: l.hit_rate(),
            entries: l.entries,
            bytes: l.bytes,
            evictions: l.evictions,
        };
        let ratio =
            |hits: u64, misses: u64| if hits + misses == 0 { 0.0 } else { hits as f64 / (hits + misses) as f64 };
        let mut routes: Vec<types::RouteCacheStats> = table
            .routes()
            .filter(|compiled| compiled.route.cache.enabled)
            .map(|compiled| {
                let (hits, misses) = (compiled.metrics.cache_hits.get(), compiled.metrics.cache_misses.get());
                types::RouteCacheStats {
                    route_id: compiled.route.id,
                    route_name: compiled.route.name.clone(),
                    hits,
                    misses,
                    hit_rate: ratio(hits, misses),
                }
            })
            .collect();
        routes.sort_by(|a, b| a.route_name.as_str().cmp(b.route_name.as_str()));
        Ok(GetCacheStatsResponse::Ok(types::CacheStats {
            replica_id: typed(&stats.replica_id)?,
            since: stats.since,
            lookups: stats.lookups,
            hits: stats.hits,
            misses: stats.misses,
            hit_rate: stats.hit_rate(),
            l1: level(&stats.l1),
            l2: stats.l2.as_ref().map(level),
            routes,
        }))
    }

    async fn invalidate_cache(&self, request: InvalidateCacheRequest) -> Result<InvalidateCacheResponse, ApiError> {
        let body = request.body;
        let strings = |list: Option<Vec<String>>| list.unwrap_or_default();
        let keys = strings(body.keys.map(|k| k.into_iter().map(|k| k.to_string()).collect()));
        let prefixes = strings(body.prefixes.map(|p| p.into_iter().map(|p| p.to_string()).collect()));
        let tags = strings(body.tags.map(|t| t.into_iter().map(|t| t.to_string()).collect()));
        if keys.is_empty() && prefixes.is_empty() && tags.is_empty() {
            return Err(ApiError::unprocessable("name at least one key, prefix or tag to invalidate"));
        }
        match self.plane.edge.cache.invalidate(&keys, &prefixes, &tags).await {
            Ok(done) => {
                tracing::info!(id = %done.id, invalidated = done.invalidated, propagated_to = done.propagated_to,
                    by = %request.principal.subject, "cache invalidated");
                Ok(InvalidateCacheResponse::Ok(types::CacheInvalidation {
                    id: done.id,
                    invalidated: done.invalidated,
                    propagated_to: done.propagated_to,
                    requested_at: done.requested_at,
                }))
            }
            Err(error) => {
                tracing::warn!(%error, "cache invalidation incomplete");
                Err(ApiError::unavailable(
                    format!("{error}; the shared cache could not be reached, retry the invalidation"),
                    RETRY_AFTER_SECONDS,
                ))
            }
        }
    }
}
