//! Monitoring records as stored and kept in memory: rules, receivers, silences, alerts.
//! Contract documents are built from them (through `serde_json`, so the generated types
//! check what this service answers) in `api.rs`.

use crate::labels::{LabelSet, Matcher, MatcherSpec};
use crate::rules::{AlertState, RuleSpec};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuleRecord {
    pub id: Uuid,
    pub spec: RuleSpec,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A receiver. `headers` holds the opened values (memory only; the store keeps them
/// sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiverRecord {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub send_resolved: bool,
    #[serde(skip)]
    pub headers: BTreeMap<String, String>,
    pub timeout_ms: u64,
    pub max_retries: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub last_delivery_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_delivery_error: Option<String>,
}

fn yes() -> bool {
    true
}
fn five_seconds() -> u64 {
    5000
}
fn three() -> u32 {
    3
}

/// The contract's `ReceiverSpec` with its defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ReceiverSpec {
    pub name: String,
    pub url: String,
    #[serde(default = "yes")]
    pub send_resolved: bool,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "five_seconds")]
    pub timeout_ms: u64,
    #[serde(default = "three")]
    pub max_retries: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SilenceRecord {
    pub id: Uuid,
    pub matchers: Vec<MatcherSpec>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub created_by: String,
    pub comment: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SilenceState {
    Pending,
    Active,
    Expired,
}

impl SilenceState {
    pub fn as_str(self) -> &'static str {
        match self {
            SilenceState::Pending => "pending",
            SilenceState::Active => "active",
            SilenceState::Expired => "expired",
        }
    }
}

impl SilenceRecord {
    pub fn state(&self, now: DateTime<Utc>) -> SilenceState {
        if now < self.starts_at {
            SilenceState::Pending
        } else if now < self.ends_at {
            SilenceState::Active
        } else {
            SilenceState::Expired
        }
    }
}

/// A silence in memory: its record and its matchers compiled once, since they are
/// checked against alerts at every evaluation and every listing.
#[derive(Debug, Clone)]
pub struct Silence {
    pub record: SilenceRecord,
    matchers: Vec<Matcher>,
}

impl Silence {
    /// Compiles the record's matchers; the error says which regex does not compile.
    pub fn new(record: SilenceRecord) -> Result<Silence, String> {
        let matchers = crate::labels::compile(&record.matchers)?;
        Ok(Silence { record, matchers })
    }

    /// Whether an alert with `labels` is muted by this silence at `now`.
    pub fn mutes(&self, labels: &LabelSet, now: DateTime<Utc>) -> bool {
        self.record.state(now) == SilenceState::Active && crate::labels::all_match(&self.matchers, labels)
    }
}

/// An alert as stored: what the contract shows, and what delivery has done with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AlertRecord {
    pub id: Uuid,
    pub rule_id: Uuid,
    pub rule_name: String,
    pub severity: String,
    pub state: AlertState,
    pub labels: LabelSet,
    pub annotations: BTreeMap<String, String>,
    pub value: f64,
    pub active_since: DateTime<Utc>,
    pub fired_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub acknowledged_by: Option<String>,
    #[serde(default)]
    pub acknowledged_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub acknowledgement_comment: Option<String>,
    #[serde(default)]
    pub auto_healed_instance_id: Option<Uuid>,
    pub fingerprint: String,
    /// Whether the firing notification went out (or was not due: silenced, no receiver).
    #[serde(default)]
    pub notified_firing: bool,
    /// Whether the resolved notification went out (or was not due); meaningful once
    /// resolved. Kept in its own column, not in the document.
    #[serde(skip)]
    pub notified_resolved: bool,
    /// The receivers a resolved notification still on its way is owed to: what a replica
    /// taking over sends it to when the alert's rule is gone (deleted meanwhile).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owed_to: Vec<Uuid>,
}

pub fn millis(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}
