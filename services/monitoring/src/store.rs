//! The monitoring tables in the platform store (PostgreSQL or SQLite), one SQL for both
//! through the registry's `with_pool!`. Rules, receivers, silences and alerts are
//! documents (`model.rs`); receiver header values are stored sealed only.
//!
//! This module decides no statuses and validates nothing: see `monitor.rs` and `api.rs`.

use crate::model::{AlertRecord, ReceiverRecord, RuleRecord, SilenceRecord};
use crate::rules::AlertState;
use pake_registry::store::{Backend, Store, StoreError};
use pake_registry::with_pool;
use sqlx::types::Json;
use uuid::Uuid;

/// Whether `error` is a unique constraint refusing the write (the registry's error type
/// names only its own constraints, so ours arrive as `Internal`).
pub fn is_unique_violation(error: &StoreError) -> bool {
    match error {
        StoreError::Conflict(_) => true,
        StoreError::Internal(sqlx::Error::Database(db)) => db.is_unique_violation(),
        _ => false,
    }
}

/// Everything the service keeps, as loaded at start.
pub struct Loaded {
    pub rules: Vec<RuleRecord>,
    /// Receivers with their sealed headers.
    pub receivers: Vec<(ReceiverRecord, String)>,
    pub silences: Vec<SilenceRecord>,
    pub alerts: Vec<AlertRecord>,
}

macro_rules! begin_write {
    ($pool:expr, $backend:expr) => {
        if $backend == Backend::Sqlite { $pool.begin_with("BEGIN IMMEDIATE").await? } else { $pool.begin().await? }
    };
}

fn state_text(state: AlertState) -> &'static str {
    match state {
        AlertState::Pending => "pending",
        AlertState::Firing => "firing",
        AlertState::Resolved => "resolved",
    }
}

#[derive(Clone, Debug)]
pub struct MonitoringStore {
    store: Store,
}

impl MonitoringStore {
    pub fn new(store: Store) -> MonitoringStore {
        MonitoringStore { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Alerts resolved before `resolved_before_ms` are not loaded (they are purged).
    pub async fn load(&self, resolved_before_ms: i64) -> Result<Loaded, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let rules: Vec<(Json<RuleRecord>,)> =
                sqlx::query_as("SELECT doc FROM monitoring_alert_rules ORDER BY name").fetch_all(pool).await?;
            let receivers: Vec<(Json<ReceiverRecord>, String)> =
                sqlx::query_as("SELECT doc, sealed_headers FROM monitoring_receivers ORDER BY name")
                    .fetch_all(pool)
                    .await?;
            let silences: Vec<(Json<SilenceRecord>,)> =
                sqlx::query_as("SELECT doc FROM monitoring_silences").fetch_all(pool).await?;
            let alerts: Vec<(Json<AlertRecord>, bool)> = sqlx::query_as(
                "SELECT doc, notified_resolved FROM monitoring_alerts \
                 WHERE resolved_at_ms IS NULL OR resolved_at_ms >= $1",
            )
            .bind(resolved_before_ms)
            .fetch_all(pool)
            .await?;
            Ok(Loaded {
                rules: rules.into_iter().map(|(Json(r),)| r).collect(),
                receivers: receivers.into_iter().map(|(Json(r), sealed)| (r, sealed)).collect(),
                silences: silences.into_iter().map(|(Json(s),)| s).collect(),
                alerts: alerts
                    .into_iter()
                    .map(|(Json(mut a), notified_resolved)| {
                        a.notified_resolved = notified_resolved;
                        a
                    })
                    .collect(),
            })
        })
    }

    /// Inserts (`replace: false`) or replaces a rule with its receiver links.
    pub async fn put_rule(&self, rule: &RuleRecord, replace: bool) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            if replace {
                let updated = sqlx::query("UPDATE monitoring_alert_rules SET name = $1, doc = $2 WHERE id = $3")
                    .bind(&rule.spec.name)
                    .bind(Json(rule))
                    .bind(rule.id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated == 0 {
                    return Err(StoreError::NotFound);
                }
                sqlx::query("DELETE FROM monitoring_rule_receivers WHERE rule_id = $1")
                    .bind(rule.id)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query("INSERT INTO monitoring_alert_rules (id, name, doc) VALUES ($1, $2, $3)")
                    .bind(rule.id)
                    .bind(&rule.spec.name)
                    .bind(Json(rule))
                    .execute(&mut *tx)
                    .await?;
            }
            for receiver in &rule.spec.receivers {
                sqlx::query("INSERT INTO monitoring_rule_receivers (rule_id, receiver_id) VALUES ($1, $2)")
                    .bind(rule.id)
                    .bind(*receiver)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn delete_rule(&self, id: Uuid) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            sqlx::query("DELETE FROM monitoring_rule_receivers WHERE rule_id = $1").bind(id).execute(&mut *tx).await?;
            let deleted = sqlx::query("DELETE FROM monitoring_alert_rules WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 0 {
                return Err(StoreError::NotFound);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn put_receiver(&self, receiver: &ReceiverRecord, sealed: &str, replace: bool) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let done = if replace {
                sqlx::query("UPDATE monitoring_receivers SET name = $1, doc = $2, sealed_headers = $3 WHERE id = $4")
                    .bind(&receiver.name)
                    .bind(Json(receiver))
                    .bind(sealed)
                    .bind(receiver.id)
                    .execute(pool)
                    .await?
            } else {
                sqlx::query("INSERT INTO monitoring_receivers (id, name, doc, sealed_headers) VALUES ($1, $2, $3, $4)")
                    .bind(receiver.id)
                    .bind(&receiver.name)
                    .bind(Json(receiver))
                    .bind(sealed)
                    .execute(pool)
                    .await?
            };
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            Ok(())
        })
    }

    /// Deletes a receiver no rule names; `Conflict` when one does.
    pub async fn delete_receiver(&self, id: Uuid) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            let named: Option<(Uuid,)> =
                sqlx::query_as("SELECT rule_id FROM monitoring_rule_receivers WHERE receiver_id = $1 LIMIT 1")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if named.is_some() {
                return Err(StoreError::Conflict("monitoring_rule_receivers_pkey"));
            }
            let deleted = sqlx::query("DELETE FROM monitoring_receivers WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 0 {
                return Err(StoreError::NotFound);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn put_silence(&self, silence: &SilenceRecord) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            sqlx::query(
                "INSERT INTO monitoring_silences (id, doc, ends_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET doc = excluded.doc, ends_at_ms = excluded.ends_at_ms",
            )
            .bind(silence.id)
            .bind(Json(silence))
            .bind(silence.ends_at.timestamp_millis())
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Writes alerts as they are now, and forgets `dropped` ones, in one transaction.
    pub async fn put_alerts(&self, alerts: &[AlertRecord], dropped: &[Uuid]) -> Result<(), StoreError> {
        if alerts.is_empty() && dropped.is_empty() {
            return Ok(());
        }
        with_pool!(&self.store, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            for alert in alerts {
                sqlx::query(
                    "INSERT INTO monitoring_alerts (id, rule_id, state, doc, resolved_at_ms, notified_resolved) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (id) DO UPDATE SET state = excluded.state, doc = excluded.doc, \
                     resolved_at_ms = excluded.resolved_at_ms, notified_resolved = excluded.notified_resolved",
                )
                .bind(alert.id)
                .bind(alert.rule_id)
                .bind(state_text(alert.state))
                .bind(Json(alert))
                .bind(alert.resolved_at.map(|t| t.timestamp_millis()))
                .bind(alert.notified_resolved)
                .execute(&mut *tx)
                .await?;
            }
            for id in dropped {
                sqlx::query("DELETE FROM monitoring_alerts WHERE id = $1").bind(*id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Records `url` as where the replica holding the evaluation lease is reached.
    pub async fn put_leader(&self, url: &str, since_ms: i64) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            sqlx::query(
                "INSERT INTO monitoring_leader (id, url, since_ms) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET url = excluded.url, since_ms = excluded.since_ms",
            )
            .bind(url)
            .bind(since_ms)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Where the last replica to take the evaluation lease said it is reached.
    pub async fn leader(&self) -> Result<Option<String>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let url: Option<(String,)> =
                sqlx::query_as("SELECT url FROM monitoring_leader WHERE id = 1").fetch_optional(pool).await?;
            Ok(url.map(|(url,)| url))
        })
    }

    /// Forgets alerts resolved and silences expired before `before_ms`.
    pub async fn purge(&self, before_ms: i64) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            sqlx::query("DELETE FROM monitoring_alerts WHERE resolved_at_ms < $1")
                .bind(before_ms)
                .execute(pool)
                .await?;
            sqlx::query("DELETE FROM monitoring_silences WHERE ends_at_ms < $1").bind(before_ms).execute(pool).await?;
            Ok(())
        })
    }
}
