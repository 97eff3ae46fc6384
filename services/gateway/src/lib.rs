//! The PAKE API gateway: the front door. Requests for its own API (the gateway contract:
//! health, admin) are served by the generated router; every other request is routed by
//! API version and path prefix to a healthy instance of a registered service ([`proxy`]).
//!
//! Routes are persisted in the platform database ([`routes`]); instances and traffic
//! policies come from the registry's snapshot — shared in-process when the gateway runs
//! beside the registry, followed through change notifications when apart.

pub mod api;
pub mod proxy;
pub mod routes;
pub mod upstream;

use pake_registry::snapshot::SnapshotCell;
use pake_registry::store::{Store, StoreError};
use proxy::{DataPlane, ProxyMetrics};
use routes::{RouteStore, RouteTable};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A running gateway: its data plane, its route store and the tasks that keep routes
/// current. Dropping it stops the tasks.
pub struct Gateway {
    pub plane: Arc<DataPlane>,
    pub routes: RouteStore,
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

/// Loads every route and swaps the table the data plane reads.
pub async fn reload_routes(plane: &DataPlane, routes: &RouteStore) -> Result<(), StoreError> {
    let all = routes.all().await?;
    plane.routes.store(Arc::new(RouteTable::new(all, &plane.metrics)));
    Ok(())
}

impl Gateway {
    /// Starts a gateway over `store` (routes) and `registry` (instances and policies).
    pub async fn start(store: Store, registry: Arc<SnapshotCell>) -> Result<Gateway, StoreError> {
        let metrics = pake_observe::Metrics::new("gateway");
        let plane = Arc::new(DataPlane::new(registry, ProxyMetrics::new(&metrics)));
        let routes = RouteStore::new(store.clone());
        reload_routes(&plane, &routes).await?;
        let mut tasks = vec![tokio::spawn(reload_loop(plane.clone(), routes.clone()))];
        if store.postgres_pool().is_some() {
            tasks.push(tokio::spawn(listen_loop(plane.clone(), routes.clone())));
        }
        Ok(Gateway { plane, routes, metrics, tasks })
    }

    /// The gateway's HTTP service: its own API, and the data plane for everything else.
    pub fn router(&self, verifier: pake_tokens::TokenVerifier) -> axum::Router {
        let admin = api::GatewayAdmin::new(self.plane.clone(), self.routes.clone(), verifier, self.metrics.clone());
        let proxy = axum::Router::new().fallback(proxy::handle).with_state(self.plane.clone());
        pake_gateway_server::router(Arc::new(admin))
            .route_layer(axum::middleware::from_fn_with_state(self.metrics.clone(), pake_observe::Metrics::track))
            .fallback_service(proxy)
    }
}

/// Reloads routes now and then, so that no missed notification lasts.
async fn reload_loop(plane: Arc<DataPlane>, routes: RouteStore) {
    let mut interval = tokio::time::interval(Duration::from_secs(30));
    interval.tick().await;
    loop {
        interval.tick().await;
        if let Err(error) = reload_routes(&plane, &routes).await {
            tracing::debug!(%error, "periodic route reload failed");
        }
    }
}

/// Follows route changes made through any replica.
async fn listen_loop(plane: Arc<DataPlane>, routes: RouteStore) {
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
        let _ = reload_routes(&plane, &routes).await;
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) | Ok(None) => {
                    if let Err(error) = reload_routes(&plane, &routes).await {
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
