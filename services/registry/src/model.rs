//! Registry records: the contract's resource types plus what the registry keeps beside
//! them (expiry instants, the change index), and the rules that derive one from another.
//!
//! Resources are built as the generated types themselves, field by field, so the compiler
//! checks every field a document carries; the only conversions left are from text the
//! store keeps in its own columns.

use crate::store::StoreError;
use pake_mesh_server::types;
use std::num::NonZeroU64;

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

/// A count the contract requires to be positive, checked when the constant is compiled:
/// use it in a `const` block.
pub const fn positive(n: u64) -> NonZeroU64 {
    match NonZeroU64::new(n) {
        Some(n) => n,
        None => panic!("a positive count"),
    }
}

pub fn millis_to_time(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// A stored column that does not hold what the contract allows.
fn unreadable(column: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(<serde_json::Error as serde::de::Error>::custom(format!("{column}: {error}")))
}

impl InstanceRecord {
    /// An instance with the instants the registry keeps beside it.
    pub fn new(instance: types::Instance, last_heartbeat_ms: Option<i64>, expires_at_ms: i64) -> InstanceRecord {
        let deregister_after_ms = instance.deregister_critical_after_seconds.get() as i64 * 1000;
        InstanceRecord { instance, last_heartbeat_ms, expires_at_ms, deregister_after_ms }
    }

    /// Combines the registration document with the columns heartbeats change.
    pub fn from_parts(
        mut instance: types::Instance,
        status: &str,
        status_output: Option<String>,
        last_heartbeat_ms: Option<i64>,
        expires_at_ms: i64,
    ) -> Result<InstanceRecord, StoreError> {
        instance.status = status.parse().map_err(|error| unreadable("instances.status", error))?;
        instance.status_output = status_output
            .map(types::InstanceStatusOutput::try_from)
            .transpose()
            .map_err(|error| unreadable("instances.status_output", error))?;
        instance.last_heartbeat_at = last_heartbeat_ms.map(millis_to_time);
        instance.expires_at = millis_to_time(expires_at_ms);
        Ok(InstanceRecord::new(instance, last_heartbeat_ms, expires_at_ms))
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

/// The health check a service gets when its registration names none.
pub fn default_health_check() -> types::ServiceHealthCheck {
    types::ServiceHealthCheck {
        path: "/health".parse().expect("a constant absolute path"),
        interval_seconds: const { positive(10) },
        timeout_ms: const { positive(2000) },
        healthy_threshold: const { positive(2) },
        unhealthy_threshold: const { positive(3) },
    }
}

/// The traffic policy a service gets at registration: conservative timeouts, retries of
/// idempotent failures within a 20 % budget, a breaker that opens after 5 consecutive
/// failures or a 50 % failure rate.
pub fn default_policy_spec() -> types::TrafficPolicySpec {
    types::TrafficPolicySpec {
        load_balancing: types::LoadBalancing::RoundRobin,
        connect_timeout_ms: const { positive(2000) },
        request_timeout_ms: const { positive(15000) },
        retries: types::RetryPolicy {
            max_attempts: 2,
            per_try_timeout_ms: const { positive(5000) },
            retry_on: vec![
                types::RetryOn::ConnectFailure,
                types::RetryOn::RefusedStream,
                types::RetryOn::Reset,
                types::RetryOn::GatewayError,
            ],
            budget_percent: 20,
        },
        circuit_breaker: types::CircuitBreakerPolicy {
            failure_threshold: const { positive(5) },
            failure_rate_threshold: 0.5,
            minimum_requests: const { positive(20) },
            rate_window_seconds: const { positive(30) },
            open_seconds: const { positive(30) },
            half_open_max_requests: const { positive(3) },
        },
        outlier_detection: types::OutlierDetectionPolicy {
            consecutive_5xx: const { positive(5) },
            interval_seconds: const { positive(10) },
            base_ejection_seconds: const { positive(30) },
            max_ejection_percent: 50,
        },
    }
}

/// A service's traffic policy: `spec` applied to `service` at `revision`.
pub fn traffic_policy(
    spec: types::TrafficPolicySpec,
    service: &types::Service,
    updated_at: chrono::DateTime<chrono::Utc>,
    revision: NonZeroU64,
) -> types::TrafficPolicy {
    let types::TrafficPolicySpec {
        load_balancing,
        connect_timeout_ms,
        request_timeout_ms,
        retries,
        circuit_breaker,
        outlier_detection,
    } = spec;
    types::TrafficPolicy {
        service_id: service.id,
        service_name: service.name.clone(),
        load_balancing,
        connect_timeout_ms,
        request_timeout_ms,
        retries,
        circuit_breaker,
        outlier_detection,
        updated_at,
        revision,
    }
}

/// Where a configuration value lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigKey {
    pub service: types::ServiceName,
    pub environment: types::Environment,
    pub key: types::ConfigKey,
}

impl ConfigKey {
    pub fn entry(
        &self,
        value: types::ConfigValue,
        description: Option<types::ConfigDescription>,
        version: NonZeroU64,
        created_at: chrono::DateTime<chrono::Utc>,
        updated_at: chrono::DateTime<chrono::Utc>,
    ) -> types::ConfigEntry {
        types::ConfigEntry {
            service: self.service.clone(),
            environment: self.environment,
            key: self.key.clone(),
            value,
            description,
            version,
            created_at,
            updated_at,
        }
    }
}
