//! The service's own metrics: the platform's per-route HTTP metrics and the ingestion
//! counter under `pake_performance_`, and, unprefixed so that alert rules and autoscalers
//! name them plainly, the SLO burn rates and the desired replicas:
//!
//! - `pake_slo_burn_rate{service,slo,window}`: the burn rate over each window of the
//!   workbook's table (scaled to the SLO's window);
//! - `pake_slo_alert_firing{service,slo,severity,long_window,short_window}`: 1 while a
//!   multi-window burn-rate alert fires, so a Prometheus rule (or a monitoring alert rule)
//!   pages with `pake_slo_alert_firing{severity="page"} == 1`;
//! - `pake_autoscaling_desired_replicas{service}`: the recommendation of each enabled
//!   policy, for an HPA on an external metric (or KEDA) to act on.

use pake_observe::Metrics;
use pake_performance_server::types;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BurnLabels {
    service: String,
    slo: String,
    window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    service: String,
    slo: String,
    severity: String,
    long_window: String,
    short_window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone)]
pub struct PerformanceMetrics {
    http: Metrics,
    pub samples_ingested: Counter,
    pub benchmarks_running: Gauge,
    platform: Arc<RwLock<Registry>>,
    burn_rates: Family<BurnLabels, Gauge<f64, AtomicU64>>,
    alerts: Family<AlertLabels, Gauge>,
    desired: Family<ServiceLabels, Gauge>,
}

impl PerformanceMetrics {
    pub fn new(http: Metrics) -> PerformanceMetrics {
        let samples_ingested = Counter::default();
        http.register("samples_ingested", "Performance samples accepted", samples_ingested.clone());
        let benchmarks_running = Gauge::default();
        http.register("benchmarks_running", "Benchmarks currently running", benchmarks_running.clone());
        let mut platform = Registry::default();
        let burn_rates = Family::<BurnLabels, Gauge<f64, AtomicU64>>::default();
        let alerts = Family::<AlertLabels, Gauge>::default();
        let desired = Family::<ServiceLabels, Gauge>::default();
        platform.register(
            "pake_slo_burn_rate",
            "Error ratio over the window divided by the ratio the SLO allows",
            burn_rates.clone(),
        );
        platform.register(
            "pake_slo_alert_firing",
            "1 while the SLO's multi-window burn-rate alert fires",
            alerts.clone(),
        );
        platform.register(
            "pake_autoscaling_desired_replicas",
            "Replicas the service's enabled auto-scaling policy recommends",
            desired.clone(),
        );
        PerformanceMetrics {
            http,
            samples_ingested,
            benchmarks_running,
            platform: Arc::new(RwLock::new(platform)),
            burn_rates,
            alerts,
            desired,
        }
    }

    pub fn http(&self) -> &Metrics {
        &self.http
    }

    pub fn record_report(&self, slo: &types::Slo, report: &types::SloReport) {
        let (service, name) = (slo.service.to_string(), slo.name.to_string());
        for rate in &report.burn_rates {
            let labels = BurnLabels { service: service.clone(), slo: name.clone(), window: rate.window.to_string() };
            self.burn_rates.get_or_create(&labels).set(rate.rate);
        }
        for alert in &report.alerts {
            let labels = AlertLabels {
                service: service.clone(),
                slo: name.clone(),
                severity: alert.severity.to_string(),
                long_window: alert.long_window.to_string(),
                short_window: alert.short_window.to_string(),
            };
            self.alerts.get_or_create(&labels).set(i64::from(alert.firing));
        }
    }

    /// Drops the series of an SLO that was deleted or renamed.
    pub fn forget_slo(&self, slo: &types::Slo) {
        let (service, name) = (slo.service.to_string(), slo.name.to_string());
        for (window, _) in crate::slo::WINDOWS {
            self.burn_rates.remove(&BurnLabels {
                service: service.clone(),
                slo: name.clone(),
                window: window.to_string(),
            });
        }
        for alert in crate::slo::ALERTS {
            self.alerts.remove(&AlertLabels {
                service: service.clone(),
                slo: name.clone(),
                severity: alert.severity.to_string(),
                long_window: alert.long.to_string(),
                short_window: alert.short.to_string(),
            });
        }
    }

    pub fn desired_replicas(&self, service: &str, replicas: u64) {
        self.desired.get_or_create(&ServiceLabels { service: service.to_string() }).set(replicas as i64);
    }

    pub fn forget_service(&self, service: &str) {
        self.desired.remove(&ServiceLabels { service: service.to_string() });
    }

    /// Both registries in one exposition.
    pub fn render(&self) -> String {
        let mut out = self.http.render();
        if let Some(stripped) = out.strip_suffix("# EOF\n") {
            out.truncate(stripped.len());
        }
        let registry = self.platform.read().expect("metrics registry lock");
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
