//! What every PAKE service shares for being observed and operated: structured logs (text
//! or JSON), a Prometheus registry with per-route HTTP metrics, and the shutdown signal.
//!
//! It holds no service-specific metrics; each service registers its own families on the
//! [`Metrics`] it is given.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other} (expected text or json)")),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // A second call (tests start several services in one process) keeps the first.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received");
}

/// One service's Prometheus registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
    http: HttpMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: String,
}

#[derive(Clone)]
struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    duration: Family<HttpLabels, Histogram>,
}

/// Latency buckets in seconds, from 0.5 ms to 10 s.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

impl Metrics {
    /// A registry whose metrics carry the `pake_<service>_` prefix.
    pub fn new(service: &str) -> Metrics {
        let mut registry = Registry::with_prefix(format!("pake_{service}"));
        let requests = Family::<HttpLabels, Counter>::default();
        let duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register("http_requests", "HTTP requests answered, by route and status class", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route and status class",
            duration.clone(),
        );
        Metrics { registry: Arc::new(RwLock::new(registry)), http: HttpMetrics { requests, duration } }
    }

    /// Registers a service-specific metric.
    pub fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.write().expect("metrics registry lock").register(name, help, metric);
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.read().expect("metrics registry lock");
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Axum middleware counting and timing every request by matched route.
    pub async fn track(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
        let started = Instant::now();
        let method = request.method().as_str().to_string();
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "unmatched".into());
        let response = next.run(request).await;
        let status = format!("{}xx", response.status().as_u16() / 100);
        let labels = HttpLabels { method, route, status };
        metrics.http.requests.get_or_create(&labels).inc();
        metrics.http.duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_carry_the_service_prefix_and_samples() {
        let metrics = Metrics::new("test");
        let labels = HttpLabels { method: "GET".into(), route: "/x".into(), status: "2xx".into() };
        metrics.http.requests.get_or_create(&labels).inc();
        let text = metrics.render();
        assert!(text.contains("pake_test_http_requests_total{method=\"GET\",route=\"/x\",status=\"2xx\"} 1"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
