//! The monitoring service's application layer: rules, receivers, silences and alerts in
//! memory (loaded from the store at start, written through to it), the evaluation loop
//! that runs Prometheus's state machine and sends notifications, and auto-healing.
//!
//! Reads never wait on the database; every write goes to the store first and to memory
//! after it committed, under one writer lock so that the two agree. Alert state changes
//! made by the evaluation loop are written in a batch after each tick; a batch the store
//! refuses is kept and written at the next tick.

use crate::health::HealthBook;
use crate::labels::LabelSet;
use crate::model::{AlertRecord, ReceiverRecord, ReceiverSpec, RuleRecord, Silence, SilenceRecord, millis, time};
use crate::notify::{self, Notification};
use crate::rules::{self, AlertState, Change, RuleAlerts, RuleSpec};
use crate::secrets::SealingKey;
use crate::series::SeriesStore;
use crate::store::{MonitoringStore, is_unique_violation};
use chrono::{DateTime, Utc};
use pake_registry::{Registry, StoreError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

/// How often the evaluation loop looks for rules that are due.
pub const TICK: Duration = Duration::from_millis(250);
/// Resolved alerts and expired silences are kept this long.
pub const KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Well-formed but breaking a rule the schema cannot express; `field` is a JSON pointer.
    #[error("{message}")]
    Invalid { field: Option<String>, message: String },
    #[error("{0}")]
    BadCursor(String),
    #[error("the store is unavailable")]
    Unavailable(#[source] StoreError),
    #[error("monitoring failure")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<StoreError> for MonitorError {
    fn from(error: StoreError) -> Self {
        if error.store_is_down() { MonitorError::Unavailable(error) } else { MonitorError::Internal(Box::new(error)) }
    }
}

pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> MonitorError {
    MonitorError::Invalid { field: Some(field.into()), message: message.into() }
}

pub type Result<T, E = MonitorError> = std::result::Result<T, E>;

/// A rule with what its evaluation keeps.
pub struct RuleEntry {
    pub record: RuleRecord,
    pub matchers: Vec<crate::labels::Matcher>,
    pub alerts: RuleAlerts,
    pub last_evaluated: Option<DateTime<Utc>>,
    pub last_evaluation_ms: Option<f64>,
    pub last_error: Option<String>,
    next_due: Instant,
}

impl RuleEntry {
    fn new(
        record: RuleRecord,
        matchers: Vec<crate::labels::Matcher>,
        alerts: RuleAlerts,
        next_due: Instant,
    ) -> RuleEntry {
        RuleEntry {
            record,
            matchers,
            alerts,
            last_evaluated: None,
            last_evaluation_ms: None,
            last_error: None,
            next_due,
        }
    }
}

/// When a rule due at `due`, evaluated at `at`, is due next: on its own schedule, one
/// interval after `due`, not one interval after whenever the tick that evaluated it ran
/// (which would add up to a tick to every interval: a 1 s rule evaluated every 1.25 s half
/// of the time); a rule that fell a whole interval behind (a stalled process) starts over
/// from `at`.
fn next_due(due: Instant, every: Duration, at: Instant) -> Instant {
    let next = due + every;
    if next <= at { at + every } else { next }
}

#[derive(Default)]
pub struct State {
    pub rules: BTreeMap<Uuid, RuleEntry>,
    /// Receivers with their sealed headers.
    pub receivers: HashMap<Uuid, (ReceiverRecord, String)>,
    pub silences: HashMap<Uuid, Silence>,
    pub alerts: HashMap<Uuid, AlertRecord>,
    /// Firing alerts whose first notification is on its way, with how many receivers have
    /// yet to have it. An alert is recorded as notified only when that reaches zero, so
    /// that a leader which stops with notifications queued or retrying leaves them to
    /// the replica that takes over.
    pub in_flight: HashMap<Uuid, usize>,
    /// The same for resolved alerts whose resolved notification is on its way.
    pub in_flight_resolved: HashMap<Uuid, usize>,
    /// Whether the resolved notifications owed for alerts of deleted rules have been
    /// queued since this state was read from the store.
    pub orphans_queued: bool,
}

impl State {
    pub fn silenced_by(&self, labels: &LabelSet, now: DateTime<Utc>) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.silences.values().filter(|s| s.mutes(labels, now)).map(|s| s.record.id).collect();
        ids.sort();
        ids
    }
}

#[derive(Clone)]
pub struct MonitorMetrics {
    pub evaluation: Histogram,
    pub evaluation_failures: Counter,
    pub notifications: Family<Vec<(String, String)>, Counter>,
    pub alerts: Family<Vec<(String, String)>, Counter>,
}

impl MonitorMetrics {
    fn new(metrics: &pake_observe::Metrics) -> MonitorMetrics {
        let evaluation = Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]);
        let m = MonitorMetrics {
            evaluation,
            evaluation_failures: Counter::default(),
            notifications: Family::default(),
            alerts: Family::default(),
        };
        metrics.register(
            "alert_rule_evaluation_duration_seconds",
            "Time spent evaluating one alert rule",
            m.evaluation.clone(),
        );
        metrics.register(
            "alert_rule_evaluation_failures",
            "Rule evaluations that failed",
            m.evaluation_failures.clone(),
        );
        metrics.register(
            "notifications",
            "Webhook notifications by outcome (sent, failed, dropped)",
            m.notifications.clone(),
        );
        metrics.register("alert_transitions", "Alert state changes by state entered", m.alerts.clone());
        m
    }

    fn notification(&self, outcome: &str) {
        self.notifications.get_or_create(&vec![("outcome".into(), outcome.into())]).inc();
    }
}

/// What the core is told at start.
pub struct Settings {
    pub external_url: String,
    pub loopback_only: bool,
    pub warm_up: Duration,
}

/// Everything the service's tasks and handlers share.
pub struct Core {
    pub db: MonitoringStore,
    pub registry: Arc<Registry>,
    pub series: Arc<SeriesStore>,
    pub health: Arc<HealthBook>,
    pub state: Mutex<State>,
    writer: tokio::sync::Mutex<Unwritten>,
    key: SealingKey,
    pub metrics: MonitorMetrics,
    pub external_url: String,
    /// Deliveries only to loopback addresses (tests, and deployments that forbid the
    /// service to reach elsewhere on a client's say).
    pub loopback_only: bool,
    client: reqwest::Client,
    queues: Mutex<HashMap<Uuid, mpsc::Sender<Notification>>>,
    /// Whether this replica holds the evaluation lease (see `lease.rs`).
    leading: AtomicBool,
    warm_up: Duration,
}

/// Alert changes the store has not taken yet.
#[derive(Default)]
struct Unwritten {
    alerts: HashMap<Uuid, AlertRecord>,
    dropped: HashSet<Uuid>,
}

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// One page of a sorted list.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

pub fn page<T>(mut items: Vec<T>, limit: u64, key: impl Fn(&T) -> String) -> Page<T> {
    let limit = limit as usize;
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|last| crate::cursor::encode(&key(last)))
    } else {
        None
    };
    Page { items, next_cursor }
}

impl Core {
    pub async fn load(
        db: MonitoringStore,
        registry: Arc<Registry>,
        series: Arc<SeriesStore>,
        health: Arc<HealthBook>,
        key: SealingKey,
        metrics: &pake_observe::Metrics,
        settings: Settings,
    ) -> Result<Core> {
        let Settings { external_url, loopback_only, warm_up } = settings;
        let loaded = db.load(now().timestamp_millis() - KEEP_MS).await?;
        // A firing alert is notified once more after a restart (Alertmanager would repeat
        // it too); resolved ones are not, unless their resolved notification never went
        // out (`notified_resolved`).
        let state = state_from(loaded, &key, warm_up, true)?;
        // Instances taken out of discovery before the restart stay out.
        for alert in state.alerts.values() {
            if let (AlertState::Firing, Some(instance)) = (alert.state, alert.auto_healed_instance_id) {
                health.heal(instance, alert.id);
            }
        }
        Ok(Core {
            db,
            registry,
            series,
            health,
            state: Mutex::new(state),
            writer: tokio::sync::Mutex::new(Unwritten::default()),
            key,
            metrics: MonitorMetrics::new(metrics),
            external_url,
            loopback_only,
            client: notify::client(),
            queues: Mutex::new(HashMap::new()),
            leading: AtomicBool::new(true),
            warm_up,
        })
    }

    // ---- Replicas -------------------------------------------------------------------

    /// Whether this replica evaluates rules and sends notifications (it holds the
    /// evaluation lease; always so on the embedded store).
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Becomes a follower: reads the store, evaluates nothing and notifies nobody.
    pub fn follow(&self) {
        self.leading.store(false, Ordering::Release);
    }

    /// Replaces everything in memory by what the store holds: a follower's way of keeping
    /// its answers current, and a new leader's first step (it goes on from the alerts the
    /// last leader stored, their `for` clocks and whether they were notified included, so
    /// a fail-over repeats no notification). Auto-heal holds are taken over by a leader.
    pub async fn reload(&self, lead: bool) -> Result<()> {
        let _writer = self.writer.lock().await;
        let loaded = self.db.load(now().timestamp_millis() - KEEP_MS).await?;
        let state = state_from(loaded, &self.key, if lead { self.warm_up } else { Duration::ZERO }, false)?;
        if lead {
            for alert in state.alerts.values() {
                if let (AlertState::Firing, Some(instance)) = (alert.state, alert.auto_healed_instance_id) {
                    self.health.heal(instance, alert.id);
                }
            }
        }
        *self.state() = state;
        self.leading.store(lead, Ordering::Release);
        Ok(())
    }

    /// A leader takes up what other replicas wrote to the store: receivers and silences
    /// as stored, rules created, changed or deleted elsewhere (their alerts resolved as
    /// when it is done here), acknowledgements.
    pub async fn sync(self: &Arc<Self>) -> Result<()> {
        let mut writer = self.writer.lock().await;
        let loaded = self.db.load(now().timestamp_millis() - KEEP_MS).await?;
        let mut receivers = HashMap::new();
        for (mut receiver, sealed) in loaded.receivers {
            receiver.headers = self.key.open(receiver.id, &sealed).map_err(|e| MonitorError::Internal(Box::new(e)))?;
            receivers.insert(receiver.id, (receiver, sealed));
        }
        let silences: HashMap<Uuid, Silence> = loaded
            .silences
            .into_iter()
            .filter_map(|record| Silence::new(record).ok().map(|s| (s.record.id, s)))
            .collect();
        let mut notifications = Vec::new();
        {
            let mut state = self.state();
            state.receivers = receivers;
            state.silences = silences;
            let t = now();
            let stored: HashMap<Uuid, RuleRecord> = loaded.rules.into_iter().map(|r| (r.id, r)).collect();
            let gone: Vec<Uuid> = state.rules.keys().filter(|id| !stored.contains_key(id)).copied().collect();
            for id in gone {
                let changes = state.rules.get_mut(&id).map(|e| e.alerts.resolve_all(millis(t))).unwrap_or_default();
                self.apply_changes(&mut state, id, &changes, t, &mut writer, &mut notifications);
                state.rules.remove(&id);
            }
            for (id, record) in stored {
                let Some(entry) = state.rules.get_mut(&id) else {
                    let matchers = crate::labels::compile(&record.spec.matchers).unwrap_or_default();
                    state.rules.insert(id, RuleEntry::new(record, matchers, RuleAlerts::default(), Instant::now()));
                    continue;
                };
                if entry.record.updated_at == record.updated_at {
                    continue;
                }
                let ends = entry.record.spec.name != record.spec.name || !record.spec.enabled;
                let changes = if ends { entry.alerts.resolve_all(millis(t)) } else { Vec::new() };
                entry.matchers = crate::labels::compile(&record.spec.matchers).unwrap_or_default();
                entry.record = record;
                entry.next_due = Instant::now();
                self.apply_changes(&mut state, id, &changes, t, &mut writer, &mut notifications);
            }
            for stored in loaded.alerts.into_iter().filter(|a| a.acknowledged_by.is_some()) {
                if let Some(alert) = state.alerts.get_mut(&stored.id).filter(|a| a.acknowledged_by.is_none()) {
                    alert.acknowledged_by = stored.acknowledged_by;
                    alert.acknowledged_at = stored.acknowledged_at;
                    alert.acknowledgement_comment = stored.acknowledgement_comment;
                }
            }
        }
        self.flush(&mut writer).await;
        drop(writer);
        self.dispatch(notifications);
        Ok(())
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("monitoring state lock")
    }

    // ---- Rules ----------------------------------------------------------------------

    fn check_rule(&self, spec: &RuleSpec) -> Result<Vec<crate::labels::Matcher>> {
        let matchers = spec.check().map_err(|(field, message)| invalid(field, message))?;
        let state = self.state();
        if let Some((i, id)) = spec.receivers.iter().enumerate().find(|(_, id)| !state.receivers.contains_key(id)) {
            return Err(invalid(format!("/receivers/{i}"), format!("no receiver {id}")));
        }
        Ok(matchers)
    }

    pub async fn create_rule(&self, spec: RuleSpec) -> Result<RuleRecord> {
        let matchers = self.check_rule(&spec)?;
        let _writer = self.writer.lock().await;
        let at = now();
        let record = RuleRecord { id: Uuid::new_v4(), spec, created_at: at, updated_at: at };
        self.write_rule(&record, false).await?;
        self.state()
            .rules
            .insert(record.id, RuleEntry::new(record.clone(), matchers, RuleAlerts::default(), Instant::now()));
        Ok(record)
    }

    async fn write_rule(&self, record: &RuleRecord, replace: bool) -> Result<()> {
        match self.db.put_rule(record, replace).await {
            Ok(()) => Ok(()),
            Err(error) if is_unique_violation(&error) => {
                Err(MonitorError::Conflict(format!("an alert rule named {} exists already", record.spec.name)))
            }
            Err(StoreError::NotFound) if replace => Err(MonitorError::NotFound(format!("no alert rule {}", record.id))),
            // A receiver deleted between the check and the write.
            Err(StoreError::NotFound) => Err(invalid("/receivers", "a receiver the rule names does not exist")),
            Err(error) => Err(error.into()),
        }
    }

    pub async fn replace_rule(self: &Arc<Self>, id: Uuid, spec: RuleSpec) -> Result<RuleRecord> {
        let matchers = self.check_rule(&spec)?;
        let mut writer = self.writer.lock().await;
        let created_at = self.state().rules.get(&id).map(|r| r.record.created_at);
        let Some(created_at) = created_at else {
            return Err(MonitorError::NotFound(format!("no alert rule {id}")));
        };
        let record = RuleRecord { id, spec, created_at, updated_at: now() };
        self.write_rule(&record, true).await?;
        // The alerts of the old expression resolve at the next evaluation unless the new
        // one yields their label sets again (Prometheus keeps state across a reload for
        // alerts whose labels are unchanged); a rename changes every alert's labels.
        let mut notifications = Vec::new();
        {
            let mut state = self.state();
            let renamed = state.rules.get(&id).is_some_and(|r| r.record.spec.name != record.spec.name);
            let disabled = !record.spec.enabled;
            let t = now();
            // Alerts change on the leader only (a follower's leader takes the change up
            // from the store).
            let changes = match state.rules.get_mut(&id) {
                Some(entry) if (renamed || disabled) && self.is_leader() => entry.alerts.resolve_all(millis(t)),
                _ => Vec::new(),
            };
            if let Some(entry) = state.rules.get_mut(&id) {
                entry.record = record.clone();
                entry.matchers = matchers;
                entry.next_due = Instant::now();
            }
            self.apply_changes(&mut state, id, &changes, t, &mut writer, &mut notifications);
        }
        self.flush(&mut writer).await;
        self.dispatch(notifications);
        Ok(record)
    }

    pub async fn delete_rule(self: &Arc<Self>, id: Uuid) -> Result<()> {
        let mut writer = self.writer.lock().await;
        match self.db.delete_rule(id).await {
            Err(StoreError::NotFound) => return Err(MonitorError::NotFound(format!("no alert rule {id}"))),
            other => other?,
        }
        let mut notifications = Vec::new();
        {
            let mut state = self.state();
            let t = now();
            let changes = match state.rules.get_mut(&id) {
                Some(entry) if self.is_leader() => entry.alerts.resolve_all(millis(t)),
                _ => Vec::new(),
            };
            self.apply_changes(&mut state, id, &changes, t, &mut writer, &mut notifications);
            state.rules.remove(&id);
        }
        self.flush(&mut writer).await;
        self.dispatch(notifications);
        Ok(())
    }

    // ---- Receivers ------------------------------------------------------------------

    pub async fn put_receiver(&self, id: Option<Uuid>, spec: ReceiverSpec) -> Result<ReceiverRecord> {
        for (name, value) in &spec.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(invalid(format!("/headers/{name}"), "not a valid HTTP header name"));
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                return Err(invalid(format!("/headers/{name}"), "not a valid HTTP header value"));
            }
        }
        if reqwest::Url::parse(&spec.url).map(|u| u.host_str().is_none()).unwrap_or(true) {
            return Err(invalid("/url", "an absolute http or https URL with a host"));
        }
        let _writer = self.writer.lock().await;
        let at = now();
        let previous = id.and_then(|id| self.state().receivers.get(&id).map(|(r, _)| r.clone()));
        if id.is_some() && previous.is_none() {
            return Err(MonitorError::NotFound(format!("no receiver {}", id.unwrap_or_default())));
        }
        let record = ReceiverRecord {
            id: id.unwrap_or_else(Uuid::new_v4),
            name: spec.name,
            url: spec.url,
            send_resolved: spec.send_resolved,
            headers: spec.headers,
            timeout_ms: spec.timeout_ms,
            max_retries: spec.max_retries,
            created_at: previous.as_ref().map(|p| p.created_at).unwrap_or(at),
            updated_at: at,
            last_delivery_at: previous.as_ref().and_then(|p| p.last_delivery_at),
            last_delivery_error: previous.as_ref().and_then(|p| p.last_delivery_error.clone()),
        };
        let sealed = self.key.seal(record.id, &record.headers).map_err(|e| MonitorError::Internal(Box::new(e)))?;
        match self.db.put_receiver(&record, &sealed, id.is_some()).await {
            Err(error) if is_unique_violation(&error) => {
                return Err(MonitorError::Conflict(format!("a receiver named {} exists already", record.name)));
            }
            Err(StoreError::NotFound) => return Err(MonitorError::NotFound(format!("no receiver {}", record.id))),
            other => other?,
        }
        self.state().receivers.insert(record.id, (record.clone(), sealed));
        Ok(record)
    }

    pub async fn delete_receiver(&self, id: Uuid) -> Result<()> {
        let _writer = self.writer.lock().await;
        match self.db.delete_receiver(id).await {
            Err(StoreError::NotFound) => return Err(MonitorError::NotFound(format!("no receiver {id}"))),
            Err(StoreError::Conflict(_)) => {
                let state = self.state();
                let names: Vec<&str> = state
                    .rules
                    .values()
                    .filter(|r| r.record.spec.receivers.contains(&id))
                    .map(|r| r.record.spec.name.as_str())
                    .collect();
                return Err(MonitorError::Conflict(format!(
                    "alert rules still name this receiver ({}); remove it from them first",
                    names.join(", ")
                )));
            }
            other => other?,
        }
        self.state().receivers.remove(&id);
        self.queues.lock().expect("queues lock").remove(&id);
        Ok(())
    }

    /// Sends the synthetic test notification once, without retries.
    pub async fn test_receiver(&self, id: Uuid) -> Result<notify::Attempt> {
        let receiver = self.state().receivers.get(&id).map(|(r, _)| r.clone());
        let receiver = receiver.ok_or_else(|| MonitorError::NotFound(format!("no receiver {id}")))?;
        let t = now();
        let labels: LabelSet = [("alertname".to_string(), "pake-test".to_string())].into();
        let alert = AlertRecord {
            id: Uuid::new_v4(),
            rule_id: Uuid::nil(),
            rule_name: "pake-test".into(),
            severity: "info".into(),
            state: AlertState::Firing,
            fingerprint: crate::labels::fingerprint(&labels),
            labels,
            annotations: [("summary".to_string(), "a test notification from PAKE monitoring".to_string())].into(),
            value: 1.0,
            active_since: t,
            fired_at: Some(t),
            resolved_at: None,
            acknowledged_by: None,
            acknowledged_at: None,
            acknowledgement_comment: None,
            auto_healed_instance_id: None,
            notified_firing: true,
            notified_resolved: true,
            owed_to: Vec::new(),
        };
        let body = notify::payload(&receiver.name, Uuid::nil(), "pake-test", &[alert], &self.external_url);
        Ok(notify::attempt(&self.client, &receiver, &body, self.loopback_only).await)
    }

    // ---- Silences -------------------------------------------------------------------

    pub async fn create_silence(&self, silence: SilenceRecord) -> Result<SilenceRecord> {
        let t = now();
        if silence.ends_at <= t {
            return Err(invalid("/ends_at", "ends_at must be in the future"));
        }
        if silence.ends_at <= silence.starts_at {
            return Err(invalid("/ends_at", "ends_at must be after starts_at"));
        }
        let mut matches_empty = true;
        for (i, spec) in silence.matchers.iter().enumerate() {
            let matcher = crate::labels::Matcher::new(spec).map_err(|m| invalid(format!("/matchers/{i}/value"), m))?;
            if !crate::labels::valid_label_name(&spec.label) && spec.label != "alertname" {
                return Err(invalid(format!("/matchers/{i}/label"), "not a label name alerts can carry"));
            }
            matches_empty &= matcher.matches_value("");
        }
        if matches_empty {
            return Err(invalid(
                "/matchers",
                "at least one matcher must not match the empty string, or the silence would mute every alert",
            ));
        }
        let compiled = Silence::new(silence.clone()).map_err(|m| invalid("/matchers", m))?;
        let _writer = self.writer.lock().await;
        self.db.put_silence(&silence).await?;
        self.state().silences.insert(silence.id, compiled);
        Ok(silence)
    }

    pub async fn expire_silence(&self, id: Uuid) -> Result<()> {
        let _writer = self.writer.lock().await;
        let current = self.state().silences.get(&id).cloned();
        let Silence { record: mut silence, .. } =
            current.ok_or_else(|| MonitorError::NotFound(format!("no silence {id}")))?;
        let t = now();
        if silence.ends_at <= t {
            return Ok(());
        }
        if silence.starts_at > t {
            silence.starts_at = t;
        }
        silence.ends_at = t;
        self.db.put_silence(&silence).await?;
        if let Some(current) = self.state().silences.get_mut(&id) {
            current.record = silence;
        }
        Ok(())
    }

    // ---- Alerts ---------------------------------------------------------------------

    pub async fn acknowledge(&self, id: Uuid, by: String, comment: Option<String>) -> Result<AlertRecord> {
        let mut writer = self.writer.lock().await;
        let mut alert =
            self.state().alerts.get(&id).cloned().ok_or_else(|| MonitorError::NotFound(format!("no alert {id}")))?;
        if alert.state == AlertState::Resolved {
            return Err(MonitorError::Conflict(
                "the alert is resolved; only pending or firing alerts are acknowledged".into(),
            ));
        }
        alert.acknowledged_by = Some(by);
        alert.acknowledged_at = Some(now());
        alert.acknowledgement_comment = comment;
        writer.alerts.insert(alert.id, alert.clone());
        self.db
            .put_alerts(
                &writer.alerts.values().cloned().collect::<Vec<_>>(),
                &writer.dropped.iter().copied().collect::<Vec<_>>(),
            )
            .await?;
        writer.alerts.clear();
        writer.dropped.clear();
        let mut state = self.state();
        // The evaluation may have moved it on meanwhile: keep its state, add the ack.
        if let Some(current) = state.alerts.get_mut(&id) {
            current.acknowledged_by = alert.acknowledged_by.clone();
            current.acknowledged_at = alert.acknowledged_at;
            current.acknowledgement_comment = alert.acknowledgement_comment.clone();
            alert = current.clone();
        }
        Ok(alert)
    }

    /// Forgets alerts resolved and silences expired before `before_ms`.
    pub async fn purge(&self, before_ms: i64) -> Result<()> {
        let _writer = self.writer.lock().await;
        self.db.purge(before_ms).await?;
        let mut state = self.state();
        state.alerts.retain(|_, a| a.resolved_at.is_none_or(|r| millis(r) >= before_ms));
        state.silences.retain(|_, s| millis(s.record.ends_at) >= before_ms);
        Ok(())
    }

    // ---- Evaluation -----------------------------------------------------------------

    /// Evaluates every enabled rule that is due, writes what changed and hands
    /// notifications to the receivers' queues.
    ///
    /// `RuleAlerts::evaluate` in two halves: every due rule's expression is evaluated
    /// over the series store holding neither the state lock nor the writer lock; then,
    /// under the writer lock, each result goes through the state machine under the state
    /// lock, one rule at a time. Handlers reading rules and alerts wait for one rule's
    /// bookkeeping at most, writers for the bookkeeping of one round, never for a whole
    /// round's series scans. A rule replaced or deleted meanwhile is left to the next
    /// tick (a replaced rule is due at once).
    pub async fn tick(self: &Arc<Self>) {
        let t = now();
        let ms = millis(t);
        let due: Vec<(Uuid, RuleRecord, Vec<crate::labels::Matcher>)> = {
            let mut state = self.state();
            let at = Instant::now();
            state
                .rules
                .iter_mut()
                .filter(|(_, entry)| entry.next_due <= at)
                .map(|(id, entry)| {
                    let every = Duration::from_secs(entry.record.spec.evaluation_interval_seconds.max(1));
                    entry.next_due = next_due(entry.next_due, every, at);
                    (*id, entry.record.clone(), entry.matchers.clone())
                })
                .collect()
        };
        let evaluated: Vec<_> = due
            .into_iter()
            .map(|(id, record, matchers)| {
                let started = Instant::now();
                let results = record.spec.enabled.then(|| rules::evaluate(&record.spec, &matchers, &self.series, ms));
                (id, record, results, started.elapsed())
            })
            .collect();
        let mut writer = self.writer.lock().await;
        let mut notifications = Vec::new();
        for (id, record, results, scan) in evaluated {
            let mut state = self.state();
            let Some(entry) = state.rules.get_mut(&id) else { continue };
            if entry.record.updated_at != record.updated_at || entry.record.spec != record.spec {
                continue;
            }
            let changes = match results {
                Some(results) => {
                    let started = Instant::now();
                    let outcome = entry.alerts.step(&record.spec, results, ms);
                    let elapsed = scan + started.elapsed();
                    self.metrics.evaluation.observe(elapsed.as_secs_f64());
                    entry.last_evaluated = Some(t);
                    entry.last_evaluation_ms = Some(elapsed.as_secs_f64() * 1000.0);
                    match outcome {
                        Ok(changes) => {
                            entry.last_error = None;
                            changes
                        }
                        Err(error) => {
                            self.metrics.evaluation_failures.inc();
                            entry.last_error = Some(error);
                            Vec::new()
                        }
                    }
                }
                None => entry.alerts.resolve_all(ms),
            };
            self.apply_changes(&mut state, id, &changes, t, &mut writer, &mut notifications);
            // Firing alerts not yet notified: new ones above, ones a silence muted until
            // now, and ones restored after a restart.
            self.renotify(&mut state, id, t, &mut writer, &mut notifications);
        }
        self.renotify_orphans(&mut self.state(), t, &mut writer, &mut notifications);
        self.flush(&mut writer).await;
        drop(writer);
        self.dispatch(notifications);
    }

    /// Brings alert records in line with the rule's state machine after `changes`.
    fn apply_changes(
        &self,
        state: &mut State,
        rule_id: Uuid,
        changes: &[Change],
        t: DateTime<Utc>,
        writer: &mut Unwritten,
        notifications: &mut Vec<Notification>,
    ) {
        let Some(entry) = state.rules.get(&rule_id) else { return };
        let spec = entry.record.spec.clone();
        let by_id: HashMap<Uuid, rules::ActiveAlert> =
            entry.alerts.active.values().map(|a| (a.id, a.clone())).collect();
        // Values and annotations move with every evaluation; keep the records current.
        for active in by_id.values() {
            if let Some(record) = state.alerts.get_mut(&active.id) {
                record.value = finite(active.value);
                record.annotations = active.annotations.clone();
            }
        }
        let mut resolved = Vec::new();
        for change in changes {
            match *change {
                Change::Pending(id) => {
                    let Some(active) = by_id.get(&id) else { continue };
                    let record = AlertRecord {
                        id,
                        rule_id,
                        rule_name: spec.name.clone(),
                        severity: spec.severity.clone(),
                        state: AlertState::Pending,
                        labels: active.labels.clone(),
                        annotations: active.annotations.clone(),
                        value: finite(active.value),
                        active_since: time(active.active_at),
                        fired_at: None,
                        resolved_at: None,
                        acknowledged_by: None,
                        acknowledged_at: None,
                        acknowledgement_comment: None,
                        auto_healed_instance_id: None,
                        fingerprint: active.fingerprint.clone(),
                        notified_firing: false,
                        notified_resolved: false,
                        owed_to: Vec::new(),
                    };
                    self.metrics.alerts.get_or_create(&vec![("state".into(), "pending".into())]).inc();
                    writer.alerts.insert(id, record.clone());
                    state.alerts.insert(id, record);
                }
                Change::Fired(id) => {
                    let Some(record) = state.alerts.get_mut(&id) else { continue };
                    record.state = AlertState::Firing;
                    record.fired_at = Some(t);
                    if spec.auto_heal
                        && let Some(instance) = record.labels.get("instance_id").and_then(|v| v.parse::<Uuid>().ok())
                    {
                        record.auto_healed_instance_id = Some(instance);
                        self.health.heal(instance, id);
                        tokio::spawn(crate::health::reconcile(self.registry.clone(), self.health.clone(), instance));
                    }
                    self.metrics.alerts.get_or_create(&vec![("state".into(), "firing".into())]).inc();
                    writer.alerts.insert(id, record.clone());
                }
                Change::Resolved(id) => {
                    let Some(record) = state.alerts.get_mut(&id) else { continue };
                    record.state = AlertState::Resolved;
                    record.resolved_at = Some(t);
                    if let Some(instance) = record.auto_healed_instance_id {
                        self.health.unheal(instance, id);
                        tokio::spawn(crate::health::reconcile(self.registry.clone(), self.health.clone(), instance));
                    }
                    self.metrics.alerts.get_or_create(&vec![("state".into(), "resolved".into())]).inc();
                    // Resolved notifications follow firing ones only.
                    let due = record.notified_firing || state.in_flight.contains_key(&id);
                    record.notified_resolved = !due;
                    writer.alerts.insert(id, record.clone());
                    if due {
                        resolved.push(id);
                    }
                }
                Change::Dropped(id) => {
                    state.alerts.remove(&id);
                    writer.alerts.remove(&id);
                    writer.dropped.insert(id);
                }
            }
        }
        self.queue_resolved(state, rule_id, &spec.name, &spec.receivers, &resolved, t, writer, notifications);
    }

    /// Queues the resolved notification of the rule's resolved alerts `due`, for the receivers
    /// that want resolved notifications. An alert silenced now, or with nobody to tell,
    /// is notified as far as anyone will be; the others are recorded as notified once
    /// every receiver has had theirs (see [`Core::delivered`]).
    #[allow(clippy::too_many_arguments)]
    fn queue_resolved(
        &self,
        state: &mut State,
        rule_id: Uuid,
        rule_name: &str,
        wanted: &[Uuid],
        due: &[Uuid],
        t: DateTime<Utc>,
        writer: &mut Unwritten,
        notifications: &mut Vec<Notification>,
    ) {
        if due.is_empty() {
            return;
        }
        let receivers: Vec<Uuid> = wanted
            .iter()
            .filter(|r| state.receivers.get(r).is_some_and(|(rec, _)| rec.send_resolved))
            .copied()
            .collect();
        let mut alerts = Vec::new();
        for &id in due {
            let Some(silenced) = state.alerts.get(&id).map(|r| !state.silenced_by(&r.labels, t).is_empty()) else {
                continue;
            };
            let Some(record) = state.alerts.get_mut(&id) else { continue };
            record.notified_resolved = receivers.is_empty() || silenced;
            record.owed_to = if record.notified_resolved { Vec::new() } else { receivers.clone() };
            writer.alerts.insert(id, record.clone());
            if !record.notified_resolved {
                alerts.push(record.clone());
            }
        }
        if alerts.is_empty() {
            return;
        }
        let resolves: Vec<Uuid> = alerts.iter().map(|a| a.id).collect();
        for &id in &resolves {
            state.in_flight_resolved.insert(id, receivers.len());
        }
        for receiver_id in receivers {
            notifications.push(Notification {
                receiver_id,
                rule_id,
                rule_name: rule_name.to_string(),
                alerts: alerts.clone(),
                announces: Vec::new(),
                resolves: resolves.clone(),
            });
        }
    }

    /// Queues, once per state read from the store, the resolved notifications still owed
    /// for alerts whose rule was deleted before they were delivered (a leader that stopped
    /// meanwhile left them so): to the receivers they were owed to, as the rule named them.
    fn renotify_orphans(
        &self,
        state: &mut State,
        t: DateTime<Utc>,
        writer: &mut Unwritten,
        notifications: &mut Vec<Notification>,
    ) {
        if std::mem::replace(&mut state.orphans_queued, true) {
            return;
        }
        let mut owed: BTreeMap<Uuid, (String, Vec<Uuid>, Vec<Uuid>)> = BTreeMap::new();
        for alert in state.alerts.values() {
            if alert.state == AlertState::Resolved
                && !alert.notified_resolved
                && !state.rules.contains_key(&alert.rule_id)
                && !state.in_flight_resolved.contains_key(&alert.id)
            {
                let (_, receivers, due) =
                    owed.entry(alert.rule_id).or_insert_with(|| (alert.rule_name.clone(), Vec::new(), Vec::new()));
                receivers.extend(alert.owed_to.iter().filter(|r| !receivers.contains(r)).copied().collect::<Vec<_>>());
                due.push(alert.id);
            }
        }
        for (rule_id, (rule_name, receivers, due)) in owed {
            self.queue_resolved(state, rule_id, &rule_name, &receivers, &due, t, writer, notifications);
        }
    }

    /// Queues the firing notification of the rule's firing alerts that have not had one
    /// and are not silenced, and the resolved notification of its resolved alerts that
    /// have not had one (a leader that stopped before delivering it left it so).
    fn renotify(
        &self,
        state: &mut State,
        rule_id: Uuid,
        t: DateTime<Utc>,
        writer: &mut Unwritten,
        notifications: &mut Vec<Notification>,
    ) {
        let Some(entry) = state.rules.get(&rule_id) else { return };
        let spec = entry.record.spec.clone();
        let resolved: Vec<Uuid> = entry
            .alerts
            .active
            .values()
            .filter(|a| a.state == AlertState::Resolved)
            .map(|a| a.id)
            .filter(|id| {
                state.alerts.get(id).is_some_and(|r| !r.notified_resolved) && !state.in_flight_resolved.contains_key(id)
            })
            .collect();
        self.queue_resolved(state, rule_id, &spec.name, &spec.receivers, &resolved, t, writer, notifications);
        let Some(entry) = state.rules.get(&rule_id) else { return };
        let ids: Vec<Uuid> =
            entry.alerts.active.values().filter(|a| a.state == AlertState::Firing).map(|a| a.id).collect();
        let mut due = Vec::new();
        for id in ids {
            let Some(record) = state.alerts.get(&id) else { continue };
            if record.notified_firing
                || state.in_flight.contains_key(&id)
                || !state.silenced_by(&record.labels, t).is_empty()
            {
                continue;
            }
            due.push(id);
        }
        if due.is_empty() {
            return;
        }
        let receivers: Vec<Uuid> = spec.receivers.iter().filter(|r| state.receivers.contains_key(r)).copied().collect();
        let name = spec.name.clone();
        let mut alerts = Vec::new();
        for &id in &due {
            if let Some(record) = state.alerts.get_mut(&id) {
                if receivers.is_empty() {
                    // Nobody to tell: notified as far as anyone will be.
                    record.notified_firing = true;
                    writer.alerts.insert(id, record.clone());
                }
                alerts.push(record.clone());
            }
        }
        if receivers.is_empty() {
            return;
        }
        for &id in &due {
            state.in_flight.insert(id, receivers.len());
        }
        for receiver_id in receivers {
            notifications.push(Notification {
                receiver_id,
                rule_id,
                rule_name: name.clone(),
                alerts: alerts.clone(),
                announces: due.clone(),
                resolves: Vec::new(),
            });
        }
    }

    /// Writes what the store has not taken yet; kept for the next tick when it refuses.
    async fn flush(&self, writer: &mut Unwritten) {
        if writer.alerts.is_empty() && writer.dropped.is_empty() {
            return;
        }
        let alerts: Vec<AlertRecord> = writer.alerts.values().cloned().collect();
        let dropped: Vec<Uuid> = writer.dropped.iter().copied().collect();
        match self.db.put_alerts(&alerts, &dropped).await {
            Ok(()) => {
                writer.alerts.clear();
                writer.dropped.clear();
            }
            Err(error) => {
                tracing::warn!(%error, alerts = alerts.len(), "alert changes not stored yet; retrying at the next tick")
            }
        }
    }

    /// Hands notifications to their receivers' queues (never waits); a receiver's worker
    /// starts with its first notification.
    fn dispatch(self: &Arc<Self>, notifications: Vec<Notification>) {
        for notification in notifications {
            let queue = {
                let mut queues = self.queues.lock().expect("queues lock");
                queues
                    .entry(notification.receiver_id)
                    .or_insert_with(|| {
                        let (sender, receiver) = mpsc::channel(notify::QUEUE_DEPTH);
                        tokio::spawn(deliveries(Arc::downgrade(self), notification.receiver_id, receiver));
                        sender
                    })
                    .clone()
            };
            if let Err(refused) = queue.try_send(notification) {
                self.metrics.notification("dropped");
                // Given up on, as a delivery that failed for good.
                let refused = refused.into_inner();
                let core = self.clone();
                tokio::spawn(async move { core.delivered(&refused).await });
            }
        }
    }

    /// One receiver has had (or given up on) `notification`: the alerts it announces
    /// firing or resolved that every receiver has had are recorded as notified so, in
    /// memory and in the store.
    async fn delivered(&self, notification: &Notification) {
        if notification.announces.is_empty() && notification.resolves.is_empty() {
            return;
        }
        let mut writer = self.writer.lock().await;
        {
            let mut state = self.state();
            let state = &mut *state;
            for (alerts, in_flight, resolved) in [
                (&notification.announces, &mut state.in_flight, false),
                (&notification.resolves, &mut state.in_flight_resolved, true),
            ] {
                for id in alerts {
                    let Some(left) = in_flight.get_mut(id) else { continue };
                    *left = left.saturating_sub(1);
                    if *left > 0 {
                        continue;
                    }
                    in_flight.remove(id);
                    if let Some(record) = state.alerts.get_mut(id) {
                        if resolved {
                            record.notified_resolved = true;
                            record.owed_to.clear();
                        } else {
                            record.notified_firing = true;
                        }
                        writer.alerts.insert(*id, record.clone());
                    }
                }
            }
        }
        self.flush(&mut writer).await;
    }

    /// Records the outcome of a delivery on the receiver, in memory and in the store.
    async fn record_delivery(&self, receiver_id: Uuid, error: Option<String>) {
        let _writer = self.writer.lock().await;
        let current = self.state().receivers.get(&receiver_id).cloned();
        let Some((mut record, sealed)) = current else { return };
        record.last_delivery_at = Some(now());
        record.last_delivery_error = error.map(|e| e.chars().take(2000).collect());
        if let Err(error) = self.db.put_receiver(&record, &sealed, true).await {
            tracing::debug!(%error, "delivery outcome not stored");
        }
        if let Some(entry) = self.state().receivers.get_mut(&receiver_id) {
            entry.0.last_delivery_at = record.last_delivery_at;
            entry.0.last_delivery_error = record.last_delivery_error;
        }
    }
}

/// One receiver's worker: delivers its notifications in order, with retries; ends when
/// the receiver's queue is dropped (deleted receiver, stopped service).
async fn deliveries(core: std::sync::Weak<Core>, receiver_id: Uuid, mut queue: mpsc::Receiver<Notification>) {
    while let Some(notification) = queue.recv().await {
        let Some(core) = core.upgrade() else { return };
        let receiver = core.state().receivers.get(&receiver_id).map(|(r, _)| r.clone());
        let Some(receiver) = receiver else {
            // The receiver is gone: nothing queued for it will be delivered.
            core.delivered(&notification).await;
            while let Ok(dropped) = queue.try_recv() {
                core.delivered(&dropped).await;
            }
            return;
        };
        let body = notify::payload(
            &receiver.name,
            notification.rule_id,
            &notification.rule_name,
            &notification.alerts,
            &core.external_url,
        );
        let (attempt, retries) = notify::deliver(&core.client, &receiver, &body, core.loopback_only).await;
        match &attempt.error {
            None => core.metrics.notification("sent"),
            Some(error) => {
                core.metrics.notification("failed");
                tracing::warn!(receiver = %receiver.name, %error, retries, "a notification could not be delivered");
            }
        }
        let error = attempt.error.map(|e| if retries > 0 { format!("{e} after {retries} retries") } else { e });
        core.record_delivery(receiver_id, error).await;
        core.delivered(&notification).await;
    }
}

/// Memory as the store holds it: receivers opened, silences compiled, each rule with its
/// open alerts restored (Prometheus's `ALERTS_FOR_STATE`) and resolved ones still within
/// the retention. Samples are not kept across restarts: a rule with open alerts waits for
/// `warm_up` (scrapes and pushes refilling the series store) before it judges them,
/// rather than resolving them all at its first evaluation. With `restart`, firing alerts
/// are marked not notified, so that they are notified once more.
fn state_from(loaded: crate::store::Loaded, key: &SealingKey, warm_up: Duration, restart: bool) -> Result<State> {
    let mut state = State::default();
    for (mut receiver, sealed) in loaded.receivers {
        receiver.headers = key.open(receiver.id, &sealed).map_err(|e| MonitorError::Internal(Box::new(e)))?;
        state.receivers.insert(receiver.id, (receiver, sealed));
    }
    for silence in loaded.silences {
        // Its matchers compiled when it was created; one that no longer does (a changed
        // regex engine) would mute nothing, so it is left out, loudly.
        match Silence::new(silence.clone()) {
            Ok(compiled) => {
                state.silences.insert(silence.id, compiled);
            }
            Err(error) => tracing::warn!(silence = %silence.id, %error, "a stored silence does not compile"),
        }
    }
    for mut alert in loaded.alerts {
        if restart && alert.state == AlertState::Firing {
            alert.notified_firing = false;
        }
        state.alerts.insert(alert.id, alert);
    }
    let horizon = now().timestamp_millis() - rules::RESOLVED_RETENTION_MS;
    for record in loaded.rules {
        let matchers = crate::labels::compile(&record.spec.matchers).unwrap_or_default();
        let mut alerts = RuleAlerts::default();
        let mut next_due = Instant::now();
        for alert in state.alerts.values().filter(|a| a.rule_id == record.id) {
            if alert.state != AlertState::Resolved {
                next_due = Instant::now() + warm_up;
            }
            if alert.state == AlertState::Resolved && alert.resolved_at.is_some_and(|r| millis(r) < horizon) {
                continue;
            }
            alerts.active.insert(alert.fingerprint.clone(), active_from(alert));
        }
        state.rules.insert(record.id, RuleEntry::new(record, matchers, alerts, next_due));
    }
    Ok(state)
}

fn finite(value: f64) -> f64 {
    // The contract's `value` is a JSON number; NaN and infinities (from NaN or infinite
    // samples) are shown as 0.
    if value.is_finite() { value } else { 0.0 }
}

fn active_from(alert: &AlertRecord) -> rules::ActiveAlert {
    rules::ActiveAlert {
        id: alert.id,
        labels: alert.labels.clone(),
        annotations: alert.annotations.clone(),
        value: alert.value,
        state: alert.state,
        active_at: millis(alert.active_since),
        fired_at: alert.fired_at.map(millis),
        resolved_at: alert.resolved_at.map(millis),
        fingerprint: alert.fingerprint.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_keeps_its_own_schedule_whenever_its_tick_ran() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        // Due at 0 s, evaluated by a tick that ran 10 ms late: due again at 1 s, so the tick
        // at 1 s (even one that runs 5 ms early of 1.01 s) evaluates it.
        let due = next_due(start, second, start + Duration::from_millis(10));
        assert_eq!(due, start + second);
        assert!(due <= start + Duration::from_millis(1005));
        // Over many rounds, never drifting by the ticks' lateness.
        let mut due = start;
        for round in 1..=100u32 {
            let ran = due + Duration::from_millis(u64::from(round % 7) * 20);
            due = next_due(due, second, ran);
            assert_eq!(due, start + second * round);
        }
        // A rule a whole interval behind starts over from when it ran.
        let late = start + Duration::from_secs(5);
        assert_eq!(next_due(start, second, late), late + second);
    }
}
