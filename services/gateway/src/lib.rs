//! The PAKE API gateway: the front door ([`front`]). Requests for its own API (the
//! gateway contract: health, admin) are served by the generated router; every other
//! request is routed by API version and path prefix to a healthy instance of a registered
//! service ([`proxy`]).
//!
//! Routes are persisted in the platform database ([`routes`]); instances and traffic
//! policies come from the registry's snapshot — shared in-process when the gateway runs
//! beside the registry, followed through change notifications when apart.

pub mod api;
mod bodies;
pub mod caching;
pub mod connections;
pub mod edge;
pub mod forwarded;
pub mod front;
mod h1;
mod headers;
pub mod path;
mod plane_metrics;
pub mod policy_store;
pub mod proxy;
pub mod routes;
pub mod samples;
pub mod secrets;
mod spans;
pub mod tls;
pub mod token_guard;
mod tries;
pub mod upstream;

use edge::PolicyTable;
use pake_registry::snapshot::SnapshotCell;
use pake_registry::store::{Store, StoreError};
use pake_tokens::KeyRing;
use policy_store::PolicyStore;
use proxy::{DataPlane, ProxyMetrics};
use routes::{RouteStore, RouteTable};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// How a gateway runs: its keys, token lifetime, and the Redis it shares with its
/// replicas (none in embedded mode: rate limits and the cache stay in process).
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    pub keys: KeyRing,
    pub token_ttl: Duration,
    /// `redis://host:port/`; with it, rate limits are global and the cache has an L2.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel, so deployments can share a Redis.
    pub redis_prefix: String,
    /// This replica's name in cache statistics (the host or pod name).
    pub replica_id: String,
    /// Memory for the in-process (L1) response cache.
    pub cache_bytes: u64,
    /// Token requests allowed per second per source address, and attempts that need
    /// Argon2 per client id (twice as many at once; a quarter of it per client id and
    /// address): enough for any real client, too few to guess a 256-bit secret, and a
    /// brake on the hashing work an attacker can cause.
    pub token_requests_per_second: u64,
    /// CA certificates (PEM) trusted for `https` instances besides the system's.
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// Load balancers in front of the gateway whose `X-Forwarded-For` is believed.
    pub trusted_proxies: forwarded::TrustedProxies,
    /// Where the gateway's request samples go (the performance service); none: not fed.
    pub samples: Option<Arc<dyn samples::SampleSink>>,
    /// What records the gateway's spans (a server span per proxied request, a client span
    /// per try; its tracer, those of the gateway's own API and of store calls); none: the
    /// gateway records no span.
    pub tracer: Option<pake_trace::Recorder>,
}

impl GatewayOptions {
    /// Embedded defaults: no Redis, one-hour tokens, a 64 MiB L1.
    pub fn new(keys: KeyRing) -> GatewayOptions {
        GatewayOptions {
            keys,
            token_ttl: Duration::from_secs(3600),
            redis_url: None,
            redis_prefix: "pake:".into(),
            replica_id: replica_id(),
            cache_bytes: 64 * 1024 * 1024,
            token_requests_per_second: 20,
            upstream_ca_file: None,
            trusted_proxies: forwarded::TrustedProxies::default(),
            samples: None,
            tracer: None,
        }
    }
}

/// The host name, as the contract's replica id pattern allows it.
fn replica_id() -> String {
    let name =
        std::env::var("HOSTNAME").ok().or_else(|| std::fs::read_to_string("/etc/hostname").ok()).unwrap_or_default();
    let clean: String =
        name.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')).take(253).collect();
    if clean.is_empty() || !clean.starts_with(|c: char| c.is_ascii_alphanumeric()) { "gateway".into() } else { clean }
}

/// The limit on token requests per source address, and (scaled by the token throttle) on
/// attempts that need Argon2 per client id.
pub fn token_limit(per_second: u64) -> pake_ratelimit::Limit {
    pake_ratelimit::Limit {
        policy: "token-issuance".into(),
        algorithm: pake_ratelimit::Algorithm::Gcra,
        rate: per_second.max(1),
        period: Duration::from_secs(1),
        burst: per_second.max(1) * 2,
        on_unavailable: pake_ratelimit::OnUnavailable::Local,
    }
}

/// A running gateway: its data plane, its route store and the tasks that keep routes
/// current. Dropping it stops the tasks.
pub struct Gateway {
    pub plane: Arc<DataPlane>,
    pub routes: RouteStore,
    pub policies: PolicyStore,
    options: GatewayOptions,
    metrics: pake_observe::Metrics,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Loads every route, rate-limit policy and API client and swaps the tables the data plane
/// reads.
pub async fn reload(plane: &DataPlane, routes: &RouteStore, policies: &PolicyStore) -> Result<(), StoreError> {
    let all = routes.all().await?;
    let table = PolicyTable::new(policies.policies().await?, policies.clients().await?, &plane.edge);
    plane.routes.store(Arc::new(RouteTable::new(all, &plane.metrics)));
    plane.policies.store(Arc::new(table));
    Ok(())
}

impl Gateway {
    /// Starts a gateway over `store` (routes, clients, policies) and `registry` (instances
    /// and traffic policies).
    pub async fn start(
        store: Store,
        registry: Arc<SnapshotCell>,
        options: GatewayOptions,
    ) -> Result<Gateway, StartError> {
        let metrics = pake_observe::Metrics::new("gateway");
        let limiter = match &options.redis_url {
            Some(url) => pake_ratelimit::RateLimiter::redis(url, &options.redis_prefix, Default::default())
                .map_err(|e| StartError::Redis(e.to_string()))?,
            None => pake_ratelimit::RateLimiter::local(),
        };
        let cache = pake_cache::ResponseCache::start(pake_cache::CacheConfig {
            l1_max_bytes: options.cache_bytes,
            redis: options.redis_url.as_ref().map(|url| pake_cache::RedisConfig {
                prefix: options.redis_prefix.clone(),
                ..pake_cache::RedisConfig::new(url.clone())
            }),
            replica_id: options.replica_id.clone(),
            ..pake_cache::CacheConfig::default()
        })
        .await
        .map_err(|e| StartError::Redis(e.to_string()))?;
        let tls = tls::client_config(options.upstream_ca_file.as_deref()).map_err(StartError::Config)?;
        let mut proxy_metrics = ProxyMetrics::new(&metrics);
        let mut feeding = None;
        if let Some(sink) = options.samples.clone() {
            let (feed, task) = samples::SampleFeed::start(sink, &metrics);
            proxy_metrics.feed(feed);
            feeding = Some(task);
        }
        let plane = Arc::new(DataPlane::new(
            registry,
            proxy_metrics,
            edge::Edge::new(
                options.keys.verifier(),
                limiter,
                token_limit(options.token_requests_per_second),
                cache,
                &metrics,
            ),
            connections::https_client(tls),
            options.trusted_proxies.clone(),
            options.tracer.clone(),
        ));
        let routes = RouteStore::new(store.clone());
        let policies = PolicyStore::new(store.clone());
        reload(&plane, &routes, &policies).await?;
        let mut tasks = vec![tokio::spawn(reload_loop(plane.clone(), routes.clone(), policies.clone()))];
        tasks.extend(feeding);
        if store.postgres_pool().is_some() {
            tasks.push(tokio::spawn(listen_loop(plane.clone(), routes.clone(), policies.clone())));
        }
        Ok(Gateway { plane, routes, policies, options, metrics, tasks })
    }

    /// The gateway's metrics (served at its `/metrics`), for what serves it to add to.
    pub fn metrics(&self) -> &pake_observe::Metrics {
        &self.metrics
    }

    /// The gateway's HTTP entry point: its own API, and the data plane for everything
    /// else. Serve it with [`front::Front::serve_with`], once per listener or worker thread.
    pub fn front(&self) -> front::Front {
        let admin = api::GatewayAdmin::new(
            self.plane.clone(),
            self.routes.clone(),
            self.policies.clone(),
            self.options.keys.clone(),
            self.options.token_ttl,
            self.metrics.clone(),
        );
        let mut api = pake_gateway_server::router(Arc::new(admin))
            .route_layer(axum::middleware::from_fn_with_state(self.metrics.clone(), pake_observe::Metrics::track))
            .layer(axum::middleware::from_fn_with_state(self.plane.clone(), token_guard::token_endpoint_guard));
        // The gateway's own operations (tokens, administration) are server spans like every
        // service's, refusals of the token guard included.
        if let Some(tracer) = &self.options.tracer {
            let spans = pake_trace::server::ServerSpans::new(tracer.tracer().clone(), pake_gateway_server::OPERATIONS);
            api = api.layer(axum::middleware::from_fn_with_state(spans, pake_trace::server::ServerSpans::trace));
        }
        front::Front::new(api, pake_gateway_server::PATHS, self.plane.clone())
    }

    /// Makes sure the API client named by configuration exists with this secret and the
    /// admin scope: the first admin credential comes from configuration, never from a
    /// default. An existing client keeps its id; its secret and scopes are reset.
    pub async fn ensure_admin_client(&self, client_id: &str, secret: &str) -> Result<(), StartError> {
        if secret.len() < 32 {
            return Err(StartError::Config("the admin client secret must be at least 32 characters".into()));
        }
        let hash = secrets::hash(secret.to_string()).await;
        let now = chrono::Utc::now();
        let scopes = ["gateway:admin", "mesh:read", "mesh:write"];
        match self.policies.client_by_public_id(client_id).await? {
            Some(stored) => {
                let mut client = stored.client;
                for scope in scopes {
                    if !client.scopes.iter().any(|s| s.as_str() == scope) {
                        client.scopes.push(scope.parse().map_err(|_| StartError::Config(scope.into()))?);
                    }
                }
                client.disabled = false;
                client.updated_at = now;
                self.policies.update_client(&client, Some(&hash)).await?;
            }
            None => {
                let client: pake_gateway_server::types::ApiClient = serde_json::from_value(serde_json::json!({
                    "id": uuid::Uuid::new_v4(), "client_id": client_id, "name": "admin", "tenant": "pake",
                    "scopes": scopes, "rate_limit_policy_id": null, "disabled": false,
                    "created_at": now, "updated_at": now, "secret_rotated_at": now,
                }))
                .map_err(|e| StartError::Config(format!("the admin client id is not valid: {e}")))?;
                self.policies.insert_client(&client, &hash).await?;
            }
        }
        reload(&self.plane, &self.routes, &self.policies).await?;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("redis: {0}")]
    Redis(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// Reloads routes now and then, so that no missed notification lasts.
async fn reload_loop(plane: Arc<DataPlane>, routes: RouteStore, policies: PolicyStore) {
    let mut interval = tokio::time::interval(Duration::from_secs(30));
    interval.tick().await;
    loop {
        interval.tick().await;
        if let Err(error) = reload(&plane, &routes, &policies).await {
            tracing::debug!(%error, "periodic route reload failed");
        }
    }
}

/// Follows route changes made through any replica.
async fn listen_loop(plane: Arc<DataPlane>, routes: RouteStore, policies: PolicyStore) {
    let Some(pool) = routes.store().postgres_pool().cloned() else { return };
    loop {
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(routes::ROUTE_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listener.await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::debug!(%error, "route listener cannot connect; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let _ = reload(&plane, &routes, &policies).await;
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) | Ok(None) => {
                    if let Err(error) = reload(&plane, &routes, &policies).await {
                        tracing::debug!(%error, "route reload failed");
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "route listener lost its connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
    }
}
