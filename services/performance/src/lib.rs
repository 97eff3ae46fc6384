//! The PAKE performance and SLA service (the performance contract): request samples kept
//! as mergeable latency sketches in time buckets, statistics per service and route, SLOs
//! with error budgets and multi-window burn rates, and auto-scaling recommendations
//! computed as the Kubernetes HPA computes them.
//!
//! State lives in the platform database beside the registry's (PostgreSQL, or the embedded
//! SQLite file): sketches, not raw samples, so that a restart keeps every SLO window and a
//! 30-day report reads hundreds of rows, not millions. The HTTP surface is the generated
//! `pake-performance-server` router.
//!
//! Benchmarks run goose (the `load` crate's [`load::bench`]) through the gateway named by
//! [`Options::gateway_url`], one load test at a time per process, queued first come first
//! served; their measurements are readable while they run and their end is stored.
//!
//! What it does not do (yet): receive CPU reports.

pub mod api;
pub mod autoscaling;
pub mod benchmark;
pub mod metrics;
pub mod ownership;
pub mod performance;
/// The latency sketches, shared with the gateway, which folds its own timings into them.
pub use pake_observe::sketch;
pub mod slo;
pub mod store;
pub mod tiers;

use std::sync::Arc;

pub use load::bench::install_signal_handler;
pub use metrics::PerformanceMetrics;
pub use performance::{FoldedRef, Options, Performance, PerformanceError, Registry, SampleRef};

/// The service's HTTP service: the generated contract router over [`api::PerformanceApi`],
/// with per-route metrics.
pub fn router(performance: Arc<Performance>, verifier: pake_tokens::TokenVerifier) -> axum::Router {
    let metrics = performance.metrics().http().clone();
    let api = Arc::new(api::PerformanceApi::new(performance, verifier));
    pake_performance_server::router(api)
        .route_layer(axum::middleware::from_fn_with_state(metrics, pake_observe::Metrics::track))
}
