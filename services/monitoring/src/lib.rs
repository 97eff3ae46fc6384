//! The PAKE monitoring service (the monitoring contract): a bounded in-memory series
//! store fed by scrapes of the PAKE services and of registered instances and by pushed
//! samples; active health checks of every registered instance, written back to the
//! registry; alert rules evaluated with Prometheus's semantics; webhook receivers that get
//! Alertmanager's payload; silences, acknowledgements and auto-healing.
//!
//! Rules, receivers, silences and alerts live in the platform store (PostgreSQL or the
//! embedded SQLite file, beside the registry's tables); samples live in memory only. The
//! HTTP surface is the generated `pake-monitoring-server` router.
//!
//! Several replicas may share one PostgreSQL database: one evaluates and notifies at a
//! time (`lease.rs`), the others answer from the store and take over when it goes.
//!
//! Spans live in memory too, in the trace store (`traces.rs`), per replica.
//!
//! What it does not do (yet): share samples or spans between replicas (each scrapes for
//! itself, and a push or a batch of spans reaches only the replica it is sent to).

pub mod api;
pub mod chunks;
pub mod cursor;
pub mod exposition;
pub mod forward;
pub mod health;
pub mod labels;
pub mod lease;
pub mod model;
pub mod monitor;
pub mod notify;
pub mod otel;
pub mod rules;
pub mod rules_test;
pub mod scrape;
pub mod secrets;
pub mod series;
pub mod store;
pub mod traces;

use std::path::Path;
use std::sync::Arc;
use tokio::task::JoinHandle;

pub use api::MonitoringService;
pub use monitor::{Core, MonitorError};
pub use scrape::ScrapeSettings;
pub use series::Limits;
pub use traces::{TraceLimits, TraceStore};

/// How often the evaluation lease is checked (and followers re-read the store).
const LEASE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// How the service is set up.
#[derive(Debug, Clone)]
pub struct MonitorOptions {
    pub limits: Limits,
    pub scrape: ScrapeSettings,
    /// The 32-byte key receiver header values are sealed with.
    pub sealing_key: [u8; secrets::KEY_LEN],
    /// Where users reach this service (behind a load balancer, the balancer's address):
    /// links in notifications.
    pub external_url: String,
    /// Where other monitoring replicas reach this one itself, not through a load balancer:
    /// a follower passes pushes on to the leader there.
    pub advertise_url: String,
    /// Deliver notifications only to loopback addresses.
    pub loopback_only: bool,
    /// After a start, how long rules with open alerts wait before their first evaluation
    /// (the series store starts empty and fills from scrapes and pushes).
    pub warm_up: std::time::Duration,
    /// What the trace store keeps.
    pub traces: TraceLimits,
}

impl MonitorOptions {
    pub fn new(sealing_key: [u8; secrets::KEY_LEN]) -> MonitorOptions {
        MonitorOptions {
            limits: Limits::default(),
            scrape: ScrapeSettings::default(),
            sealing_key,
            external_url: "http://127.0.0.1:9090".into(),
            advertise_url: "http://127.0.0.1:9090".into(),
            loopback_only: false,
            warm_up: std::time::Duration::from_secs(10),
            traces: TraceLimits::default(),
        }
    }
}

/// The sealing key kept in `dir/monitoring-sealing.key` (created, readable by the owner
/// only, on first use).
pub fn sealing_key_in(dir: &Path) -> std::io::Result<[u8; secrets::KEY_LEN]> {
    let path = dir.join("monitoring-sealing.key");
    if let Ok(bytes) = std::fs::read(&path) {
        return bytes.try_into().map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{} must hold 32 bytes", path.display()))
        });
    }
    std::fs::create_dir_all(dir)?;
    let key = secrets::SealingKey::generate().map_err(std::io::Error::other)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, &key)?;
            Ok(key)
        }
        // Another process wrote it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => sealing_key_in(dir),
        Err(error) => Err(error),
    }
}

/// The running service: its shared core and background tasks (stopped on drop).
pub struct Monitor {
    core: Arc<Core>,
    leadership: Arc<forward::Leadership>,
    traces: Arc<TraceStore>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Monitor {
    /// Loads rules, receivers, silences and alerts from `store` and starts evaluation,
    /// health checks and scraping. `metrics` is this service's own registry (served at
    /// `/metrics`, and scraped into the series store).
    pub async fn start(
        store: pake_registry::Store,
        registry: Arc<pake_registry::Registry>,
        metrics: pake_observe::Metrics,
        options: MonitorOptions,
    ) -> Result<Monitor, MonitorError> {
        let store_for_lease = store.clone();
        let series = Arc::new(series::SeriesStore::new(options.limits));
        metrics.register("series", "Series in the series store", series.metrics.series.clone());
        metrics.register(
            "samples_ingested",
            "Samples stored, by origin (push, scrape)",
            series.metrics.ingested.clone(),
        );
        metrics.register(
            "samples_refused",
            "Samples refused, by reason (series_limit, series_limit_or_labels)",
            series.metrics.refused.clone(),
        );
        let traces = Arc::new(TraceStore::new(options.traces));
        traces.register(&metrics);
        let health = Arc::new(health::HealthBook::default());
        metrics.register("health_checks", "Active health checks by result", health.checks.clone());
        let scrape_metrics = scrape::ScrapeMetrics::default();
        metrics.register("scrapes", "Scrapes by outcome", scrape_metrics.scrapes.clone());
        let key = secrets::SealingKey::new(&options.sealing_key).map_err(|e| MonitorError::Internal(Box::new(e)))?;
        let core = Arc::new(
            Core::load(
                store::MonitoringStore::new(store),
                registry.clone(),
                series.clone(),
                health.clone(),
                key,
                &metrics,
                monitor::Settings {
                    external_url: options.external_url.clone(),
                    loopback_only: options.loopback_only,
                    warm_up: options.warm_up,
                },
            )
            .await?,
        );
        let leadership = Arc::new(forward::Leadership::new(options.advertise_url.clone()));
        let evaluator = {
            let core = core.clone();
            let leadership = leadership.clone();
            let mut lease = lease::Lease::new(&store_for_lease);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(monitor::TICK);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut rounds = 0u64;
                // The state loaded at start is a leader's (a restart's notifications
                // included) until the lease says otherwise.
                let mut leading = true;
                let mut checked = std::time::Instant::now() - LEASE_CHECK;
                // Where this replica last recorded itself as reached, while leading.
                let mut recorded: Option<String> = None;
                loop {
                    ticks.tick().await;
                    if checked.elapsed() >= LEASE_CHECK {
                        checked = std::time::Instant::now();
                        let holds = lease.hold().await;
                        let outcome = match (leading, holds) {
                            (false, true) => core.reload(true).await,
                            (true, false) => {
                                core.follow();
                                Ok(())
                            }
                            (true, true) if !lease.is_single() => core.sync().await,
                            (false, false) => core.reload(false).await,
                            _ => Ok(()),
                        };
                        match outcome {
                            Ok(()) => {
                                if holds != leading {
                                    tracing::info!(leading = holds, "monitoring evaluation lease changed hands");
                                }
                                leading = holds;
                            }
                            Err(error) => tracing::warn!(%error, "monitoring could not read the store; retrying"),
                        }
                        if !lease.is_single() {
                            record_leader(&core, &leadership, holds, &mut recorded).await;
                        }
                    }
                    if !leading {
                        continue;
                    }
                    core.tick().await;
                    rounds += 1;
                    // Forget what is past keeping, about once an hour.
                    if rounds % 14_400 == 1 {
                        let before = chrono::Utc::now().timestamp_millis() - monitor::KEEP_MS;
                        if let Err(error) = core.purge(before).await {
                            tracing::debug!(%error, "purging old alerts and silences failed");
                        }
                    }
                }
            })
        };
        let tasks = vec![
            evaluator,
            tokio::spawn(health::supervise(registry.clone(), health, series.clone())),
            tokio::spawn(scrape::scrape_loop(options.scrape.clone(), registry, series, metrics, scrape_metrics)),
            tokio::spawn(traces::sweep_loop(traces.clone())),
        ];
        Ok(Monitor { core, leadership, traces, tasks })
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// Sets where the other replicas reach this one (by default `external_url`), for
    /// passing pushes on to the leader: known once the listener is bound.
    pub fn serving_at(&self, url: impl Into<String>) {
        self.leadership.set_own(url.into());
    }

    /// The trace store, for feeding it spans in process ([`TraceStore::ingest`]) and
    /// setting where API-ingested spans are forwarded ([`TraceStore::set_forwarder`]).
    pub fn traces(&self) -> &Arc<TraceStore> {
        &self.traces
    }
}

/// The monitoring service's HTTP service: the generated contract router over
/// [`MonitoringService`], with per-route metrics.
pub fn router(monitor: &Monitor, verifier: pake_tokens::TokenVerifier, metrics: pake_observe::Metrics) -> axum::Router {
    let api = Arc::new(MonitoringService::new(monitor.core.clone(), monitor.traces.clone(), verifier, metrics.clone()));
    pake_monitoring_server::router(api)
        .route_layer(axum::middleware::from_fn_with_state(metrics, pake_observe::Metrics::track))
        .layer(axum::middleware::from_fn_with_state(
            (monitor.core.clone(), monitor.leadership.clone()),
            forward::pushes_to_leader,
        ))
}

/// On a lease check: a leader records where it is reached (once per change), a follower
/// reads where the leader is.
async fn record_leader(core: &Core, leadership: &forward::Leadership, leading: bool, recorded: &mut Option<String>) {
    if leading {
        let own = leadership.own();
        if recorded.as_deref() == Some(own.as_str()) {
            return;
        }
        match core.db.put_leader(&own, chrono::Utc::now().timestamp_millis()).await {
            Ok(()) => *recorded = Some(own),
            Err(error) => tracing::warn!(%error, "the leader's address could not be stored; retrying"),
        }
        return;
    }
    *recorded = None;
    match core.db.leader().await {
        Ok(url) => leadership.set_leader(url),
        Err(error) => {
            tracing::debug!(%error, "the leader's address could not be read");
            leadership.set_leader(None);
        }
    }
}
