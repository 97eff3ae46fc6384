//! The data plane's metrics: requests and latency per route, cache lookups, failed tries
//! and retries per service.

use crate::samples::{SampleFeed, SampleLabels};
use axum::http::{Method, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteCacheLabels {
    route: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabels {
    pub(crate) service: String,
    pub(crate) outcome: String,
}

/// Data-plane metrics.
#[derive(Clone)]
pub struct ProxyMetrics {
    requests: Family<RouteLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    cache: Family<RouteCacheLabels, Counter>,
    pub(crate) failed_tries: Family<UpstreamLabels, Counter>,
    pub(crate) retries: Family<UpstreamLabels, Counter>,
    /// Where each request's timing goes, when the performance service is fed.
    pub(crate) samples: Option<SampleFeed>,
}

/// One route's metric handles, resolved when the route table is built so that the proxy
/// path records without building labels or looking them up.
#[derive(Debug)]
pub struct RouteMetrics {
    /// By status class: 1xx … 5xx.
    requests: [Counter; 5],
    durations: [Histogram; 5],
    /// Cache lookups of the route answered from the cache, and not.
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    /// The route's service and prefix, and the feed its samples go to.
    samples: Option<(SampleFeed, Arc<SampleLabels>)>,
}

impl RouteMetrics {
    /// Records a request's answer: the route's metrics, and a sample for the performance
    /// service when it is fed, naming `instance`, the registry instance that answered
    /// (none: the gateway answered itself).
    /// The request started at `started` and ends now.
    pub(crate) fn record(&self, method: &Method, status: StatusCode, started: Instant, instance: Option<uuid::Uuid>) {
        let ended = Instant::now();
        let elapsed = ended.saturating_duration_since(started);
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.requests[class].inc();
        self.durations[class].observe(elapsed.as_secs_f64());
        if let Some((feed, labels)) = &self.samples {
            feed.record(labels, method, status.as_u16(), elapsed, instance, ended);
        }
    }
}

impl ProxyMetrics {
    /// The handles of the route `route` (its name) to `service` on `prefix`.
    pub fn for_route(&self, route: &str, service: &str, prefix: &str) -> RouteMetrics {
        let labels = |class: usize| RouteLabels { route: route.to_string(), status: format!("{}xx", class + 1) };
        // Each handle is cloned out before the next lookup: a family's read guard held
        // across a lookup that creates a label would deadlock on its write lock.
        let cache = |result| self.cache.get_or_create(&RouteCacheLabels { route: route.to_string(), result }).clone();
        let cache_hits = cache("hit");
        let cache_misses = cache("miss");
        RouteMetrics {
            requests: std::array::from_fn(|class| self.requests.get_or_create(&labels(class)).clone()),
            durations: std::array::from_fn(|class| self.duration.get_or_create(&labels(class)).clone()),
            cache_hits,
            cache_misses,
            samples: self.samples.as_ref().map(|feed| (feed.clone(), SampleLabels::new(service, prefix))),
        }
    }

    /// Feeds every route's request samples to `feed` (routes compiled from now on).
    pub fn feed(&mut self, feed: SampleFeed) {
        self.samples = Some(feed);
    }

    pub fn new(metrics: &pake_observe::Metrics) -> ProxyMetrics {
        let proxy = ProxyMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            cache: Family::default(),
            failed_tries: Family::default(),
            retries: Family::default(),
            samples: None,
        };
        metrics.register("proxy_requests", "Proxied requests by route and status class", proxy.requests.clone());
        metrics.register("proxy_request_duration_seconds", "Proxied request latency by route", proxy.duration.clone());
        metrics.register("route_cache_lookups", "Cache lookups by route and result", proxy.cache.clone());
        metrics.register(
            "upstream_failed_tries",
            "Tries that failed upstream (5xx, refused, reset, timed out), by service",
            proxy.failed_tries.clone(),
        );
        metrics.register(
            "upstream_retries",
            "Retries by service and the condition that caused them",
            proxy.retries.clone(),
        );
        proxy
    }
}
