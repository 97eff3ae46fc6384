//! Registry records: the contract's resource types plus what the registry keeps beside
//! them (expiry instants, the change index), and the rules that derive one from another.
//!
//! Resources are built through `serde_json` from the contract types, so a document the
//! registry produces is checked by the same generated constraints a client applies.

use crate::store::StoreError;
use pake_mesh_server::types;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// A service and everything registered under it, as loaded from the store.
#[derive(Debug, Clone)]
pub struct ServiceData {
    pub service: types::Service,
    pub policy: types::TrafficPolicy,
    pub instances: Vec<InstanceRecord>,
    pub dependencies: Vec<types::Dependency>,
    /// The registry index of the last change to what discovery returns for the service.
    pub change_index: i64,
}

/// An instance as stored: `instance.status` is the last reported status, which the TTL
/// may have overtaken (see [`InstanceRecord::effective`]).
#[derive(Debug, Clone)]
pub struct InstanceRecord {
    pub instance: types::Instance,
    pub last_heartbeat_ms: Option<i64>,
    pub expires_at_ms: i64,
    pub deregister_after_ms: i64,
}

/// Builds a contract type from JSON, reporting a document the types reject.
pub fn build<T: DeserializeOwned>(value: Value) -> Result<T, serde_json::Error> {
    serde_json::from_value(value)
}

fn millis_to_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

impl InstanceRecord {
    /// Combines the registration document with the columns heartbeats change.
    pub fn from_parts(
        mut doc: Value,
        status: &str,
        status_output: Option<String>,
        last_heartbeat_ms: Option<i64>,
        expires_at_ms: i64,
    ) -> Result<InstanceRecord, StoreError> {
        if let Some(object) = doc.as_object_mut() {
            object.insert("status".into(), json!(status));
            object.insert("status_output".into(), json!(status_output));
            object.insert("last_heartbeat_at".into(), json!(last_heartbeat_ms.map(millis_to_time)));
            object.insert("expires_at".into(), json!(millis_to_time(expires_at_ms)));
        }
        let instance: types::Instance = build(doc)?;
        let deregister_after_ms = instance.deregister_critical_after_seconds.get() as i64 * 1000;
        Ok(InstanceRecord { instance, last_heartbeat_ms, expires_at_ms, deregister_after_ms })
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms <= now_ms
    }

    /// The instance as clients should see it at `now_ms`: critical once its TTL lapsed,
    /// whether or not the expiry has been written yet.
    pub fn effective(&self, now_ms: i64) -> types::Instance {
        let mut instance = self.instance.clone();
        if self.is_expired(now_ms) && instance.status != types::InstanceStatus::Critical {
            instance.status = types::InstanceStatus::Critical;
            instance.status_output = Some("ttl expired".parse().expect("a short constant output"));
        }
        instance
    }
}

/// The traffic policy a service gets at registration: conservative timeouts, retries of
/// idempotent failures within a 20 % budget, a breaker that opens after 5 consecutive
/// failures or a 50 % failure rate.
pub fn default_policy(service: &types::Service) -> Result<types::TrafficPolicy, serde_json::Error> {
    build(json!({
        "service_id": service.id,
        "service_name": service.name,
        "load_balancing": "round_robin",
        "connect_timeout_ms": 2000,
        "request_timeout_ms": 15000,
        "retries": {
            "max_attempts": 2,
            "per_try_timeout_ms": 5000,
            "retry_on": ["connect_failure", "refused_stream", "reset", "gateway_error"],
            "budget_percent": 20
        },
        "circuit_breaker": {
            "failure_threshold": 5,
            "failure_rate_threshold": 0.5,
            "minimum_requests": 20,
            "rate_window_seconds": 30,
            "open_seconds": 30,
            "half_open_max_requests": 3
        },
        "outlier_detection": {
            "consecutive_5xx": 5,
            "interval_seconds": 10,
            "base_ejection_seconds": 30,
            "max_ejection_percent": 50
        },
        "updated_at": service.created_at,
        "revision": 1
    }))
}

/// Where a configuration value lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigKey {
    pub service: String,
    pub environment: String,
    pub key: String,
}

impl ConfigKey {
    pub fn entry(
        &self,
        value: &str,
        description: Option<&str>,
        version: i64,
        created_at: chrono::DateTime<chrono::Utc>,
        updated_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<types::ConfigEntry, serde_json::Error> {
        build(json!({
            "service": self.service,
            "environment": self.environment,
            "key": self.key,
            "value": value,
            "description": description,
            "version": version,
            "created_at": created_at,
            "updated_at": updated_at,
        }))
    }

    pub fn history(
        &self,
        operation: &str,
        value: Option<&str>,
        description: Option<&str>,
        version: i64,
        changed_at: chrono::DateTime<chrono::Utc>,
        changed_by: &str,
    ) -> Result<types::ConfigVersion, serde_json::Error> {
        build(json!({
            "version": version,
            "operation": operation,
            "value": value,
            "description": description,
            "changed_at": changed_at,
            "changed_by": changed_by,
        }))
    }
}
