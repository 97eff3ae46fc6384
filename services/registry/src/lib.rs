//! The PAKE service registry (the service-mesh contract): services, instances with TTL
//! heartbeats, discovery of healthy instances with blocking queries, dependencies and
//! their graph, traffic policies, and versioned configuration with compare-and-set.
//!
//! State lives in PostgreSQL or, as the embedded default, in a SQLite file ([`store`]);
//! every replica serves reads from an in-memory [`snapshot`] kept current by change
//! notifications. The HTTP surface is the generated `pake-mesh-server` router.
//!
//! What it does not do: probe instances actively (the monitoring service does, and may
//! report through heartbeats), route traffic (the gateway does, from the snapshot).

pub mod api;
pub mod breaker;
pub mod cursor;
pub mod graph;
pub mod model;
pub mod registry;
pub mod snapshot;
pub mod store;

use std::sync::Arc;

pub use api::RegistryApi;
pub use registry::{Registry, RegistryError};
pub use store::{Store, StoreError};

/// The registry's HTTP service: the generated contract router over [`RegistryApi`], with
/// per-route metrics.
pub fn router(
    registry: Arc<Registry>,
    verifier: pake_tokens::TokenVerifier,
    metrics: pake_observe::Metrics,
) -> axum::Router {
    let api = Arc::new(RegistryApi::new(registry, verifier, metrics.clone()));
    pake_mesh_server::router(api)
        .route_layer(axum::middleware::from_fn_with_state(metrics, pake_observe::Metrics::track))
}
