//! The performance service's tables in the platform database (PostgreSQL or the embedded
//! SQLite file), written once for both backends with the registry's `with_pool!`.
//!
//! Sketches are merged read-modify-write inside one transaction per batch, rows taken in
//! key order (so that concurrent batches on PostgreSQL cannot deadlock), and a new row
//! first tried with `ON CONFLICT DO NOTHING` so that two replicas creating the same
//! bucket merge instead of failing. Documents (SLOs, policies, benchmarks) are stored as
//! JSON beside the columns queries filter and order on.
//!
//! This module neither validates input nor decides HTTP statuses.

use crate::sketch::LatencySketch;
use crate::tiers::Span;
use pake_performance_server::types;
use pake_registry::store::{Backend, Store, StoreError};
use pake_registry::with_pool;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::types::Json;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Unique constraints of these tables, and how SQLite spells them.
const CONSTRAINTS: &[(&str, &str)] = &[
    (SLO_NAME_KEY, "perf_slos.service, perf_slos.name"),
    (POLICY_SERVICE_KEY, "perf_autoscaling_policies.service"),
    (BENCHMARK_ACTIVE_KEY, "perf_benchmarks.service"),
];
pub const SLO_NAME_KEY: &str = "perf_slos_name_key";
pub const POLICY_SERVICE_KEY: &str = "perf_autoscaling_policies_service_key";
pub const BENCHMARK_ACTIVE_KEY: &str = "perf_benchmarks_active_key";

/// A unique violation of one of these tables is [`StoreError::Conflict`] naming it (the
/// registry's mapping knows only its own constraints); anything else maps as the
/// registry maps it.
fn map_error(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error
        && db.is_unique_violation()
    {
        let named = db.constraint().unwrap_or_default().to_string();
        let message = db.message().to_string();
        if let Some((name, _)) = CONSTRAINTS.iter().find(|(name, sqlite)| named == *name || message.ends_with(sqlite)) {
            return StoreError::Conflict(name);
        }
    }
    StoreError::from(error)
}

/// Where a sketch row belongs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BucketKey {
    pub service: String,
    pub resolution_s: i64,
    pub bucket_ms: i64,
    pub route: String,
    pub status_class: i64,
}

/// One bucket as read back: its route, status class, request count and (when asked for)
/// latencies.
#[derive(Debug, Clone)]
pub struct BucketRow {
    pub route: String,
    pub status_class: i64,
    pub requests: u64,
    pub sketch: Option<LatencySketch>,
}

/// A page position: the creation time and id of the last item of the previous page.
pub type After = Option<(i64, Uuid)>;

#[derive(Clone, Debug)]
pub struct PerformanceStore {
    store: Store,
}

fn decode_doc<T: DeserializeOwned>(Json(value): Json<serde_json::Value>) -> Result<T, StoreError> {
    Ok(serde_json::from_value(value)?)
}

impl PerformanceStore {
    pub fn new(store: Store) -> PerformanceStore {
        PerformanceStore { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Merges `buckets` into the stored sketches and records `services` as having sent
    /// samples, in one transaction.
    pub async fn merge(
        &self,
        services: &[String],
        buckets: &BTreeMap<BucketKey, LatencySketch>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let mut tx = if backend == Backend::Sqlite {
                pool.begin_with("BEGIN IMMEDIATE").await?
            } else {
                pool.begin().await?
            };
            for service in services {
                sqlx::query(
                    "INSERT INTO perf_services (service, first_sample_ms) VALUES ($1, $2) ON CONFLICT (service) DO NOTHING",
                )
                .bind(service)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            }
            let select = if backend == Backend::Postgres {
                "SELECT requests, sketch FROM perf_sketches WHERE service = $1 AND resolution_s = $2 AND bucket_ms = $3 \
                 AND route = $4 AND status_class = $5 FOR UPDATE"
            } else {
                "SELECT requests, sketch FROM perf_sketches WHERE service = $1 AND resolution_s = $2 AND bucket_ms = $3 \
                 AND route = $4 AND status_class = $5"
            };
            for (key, sketch) in buckets {
                let inserted = sqlx::query(
                    "INSERT INTO perf_sketches (service, resolution_s, bucket_ms, route, status_class, requests, sketch) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                )
                .bind(&key.service)
                .bind(key.resolution_s)
                .bind(key.bucket_ms)
                .bind(&key.route)
                .bind(key.status_class)
                .bind(sketch.count() as i64)
                .bind(sketch.encode())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if inserted == 1 {
                    continue;
                }
                let (_, stored): (i64, Vec<u8>) = sqlx::query_as(select)
                    .bind(&key.service)
                    .bind(key.resolution_s)
                    .bind(key.bucket_ms)
                    .bind(&key.route)
                    .bind(key.status_class)
                    .fetch_one(&mut *tx)
                    .await?;
                let mut merged = LatencySketch::decode(&stored).map_err(|e| StoreError::Corrupt(corrupt(e)))?;
                merged.merge(sketch).map_err(|e| StoreError::Corrupt(corrupt(e)))?;
                sqlx::query(
                    "UPDATE perf_sketches SET requests = $6, sketch = $7 WHERE service = $1 AND resolution_s = $2 \
                     AND bucket_ms = $3 AND route = $4 AND status_class = $5",
                )
                .bind(&key.service)
                .bind(key.resolution_s)
                .bind(key.bucket_ms)
                .bind(&key.route)
                .bind(key.status_class)
                .bind(merged.count() as i64)
                .bind(merged.encode())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// The buckets of `service` in `spans`, with their sketches when `latencies`.
    pub async fn buckets(&self, service: &str, spans: &[Span], latencies: bool) -> Result<Vec<BucketRow>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let mut rows = Vec::new();
            for span in spans {
                if latencies {
                    let found: Vec<(String, i64, i64, Vec<u8>)> = sqlx::query_as(
                        "SELECT route, status_class, requests, sketch FROM perf_sketches \
                         WHERE service = $1 AND resolution_s = $2 AND bucket_ms >= $3 AND bucket_ms < $4",
                    )
                    .bind(service)
                    .bind(span.resolution_s)
                    .bind(span.from_ms)
                    .bind(span.to_ms)
                    .fetch_all(pool)
                    .await?;
                    for (route, status_class, requests, sketch) in found {
                        let sketch = LatencySketch::decode(&sketch).map_err(|e| StoreError::Corrupt(corrupt(e)))?;
                        rows.push(BucketRow { route, status_class, requests: requests as u64, sketch: Some(sketch) });
                    }
                } else {
                    let found: Vec<(String, i64, i64)> = sqlx::query_as(
                        "SELECT route, status_class, requests FROM perf_sketches \
                         WHERE service = $1 AND resolution_s = $2 AND bucket_ms >= $3 AND bucket_ms < $4",
                    )
                    .bind(service)
                    .bind(span.resolution_s)
                    .bind(span.from_ms)
                    .bind(span.to_ms)
                    .fetch_all(pool)
                    .await?;
                    rows.extend(found.into_iter().map(|(route, status_class, requests)| BucketRow {
                        route,
                        status_class,
                        requests: requests as u64,
                        sketch: None,
                    }));
                }
            }
            Ok(rows)
        })
    }

    /// Whether `service` has ever sent a sample.
    pub async fn has_samples(&self, service: &str) -> Result<bool, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let found: Option<(String,)> = sqlx::query_as("SELECT service FROM perf_services WHERE service = $1")
                .bind(service)
                .fetch_optional(pool)
                .await?;
            Ok(found.is_some())
        })
    }

    /// Deletes buckets past their tier's retention and recommendations older than
    /// `recommendations_before_ms`; returns the rows deleted.
    pub async fn purge(&self, now_ms: i64, recommendations_before_ms: i64) -> Result<u64, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let mut deleted = 0;
            for tier in crate::tiers::TIERS {
                deleted += sqlx::query("DELETE FROM perf_sketches WHERE resolution_s = $1 AND bucket_ms < $2")
                    .bind(tier.seconds)
                    .bind(now_ms - tier.retention_ms)
                    .execute(pool)
                    .await?
                    .rows_affected();
            }
            deleted += sqlx::query("DELETE FROM perf_scaling_recommendations WHERE at_ms < $1")
                .bind(recommendations_before_ms)
                .execute(pool)
                .await?
                .rows_affected();
            Ok(deleted)
        })
    }

    // ---- SLOs ------------------------------------------------------------------------

    pub async fn insert_slo(&self, slo: &types::Slo) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            sqlx::query(
                "INSERT INTO perf_slos (id, service, name, objective, created_ms, doc) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(slo.id)
            .bind(slo.service.as_str())
            .bind(slo.name.as_str())
            .bind(slo.objective.to_string())
            .bind(slo.created_at.timestamp_millis())
            .bind(Json(slo))
            .execute(pool)
            .await
            .map_err(map_error)?;
            Ok(())
        })
    }

    pub async fn replace_slo(&self, slo: &types::Slo) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let updated =
                sqlx::query("UPDATE perf_slos SET service = $2, name = $3, objective = $4, doc = $5 WHERE id = $1")
                    .bind(slo.id)
                    .bind(slo.service.as_str())
                    .bind(slo.name.as_str())
                    .bind(slo.objective.to_string())
                    .bind(Json(slo))
                    .execute(pool)
                    .await
                    .map_err(map_error)?
                    .rows_affected();
            if updated == 0 { Err(StoreError::NotFound) } else { Ok(()) }
        })
    }

    pub async fn delete_slo(&self, id: Uuid) -> Result<(), StoreError> {
        self.delete("DELETE FROM perf_slos WHERE id = $1", id).await
    }

    pub async fn slo(&self, id: Uuid) -> Result<Option<types::Slo>, StoreError> {
        self.document("SELECT doc FROM perf_slos WHERE id = $1", id).await
    }

    pub async fn slos(
        &self,
        service: Option<&str>,
        objective: Option<&str>,
        after: After,
        limit: i64,
    ) -> Result<Vec<(i64, types::Slo)>, StoreError> {
        let (after_ms, after_id) = after.unwrap_or((i64::MIN, Uuid::nil()));
        with_pool!(&self.store, |pool, backend| {
            let rows: Vec<(i64, Json<serde_json::Value>)> = sqlx::query_as(
                "SELECT created_ms, doc FROM perf_slos \
                 WHERE ($1 IS NULL OR service = $1) AND ($2 IS NULL OR objective = $2) \
                 AND (created_ms > $3 OR (created_ms = $3 AND id > $4)) ORDER BY created_ms, id LIMIT $5",
            )
            .bind(service)
            .bind(objective)
            .bind(after_ms)
            .bind(after_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(|(ms, doc)| Ok((ms, decode_doc(doc)?))).collect()
        })
    }

    /// Every SLO, for the burn-rate metrics.
    pub async fn all_slos(&self) -> Result<Vec<types::Slo>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let rows: Vec<(Json<serde_json::Value>,)> =
                sqlx::query_as("SELECT doc FROM perf_slos ORDER BY created_ms, id").fetch_all(pool).await?;
            rows.into_iter().map(|(doc,)| decode_doc(doc)).collect()
        })
    }

    // ---- auto-scaling ----------------------------------------------------------------

    pub async fn insert_policy(&self, policy: &types::AutoscalingPolicy) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            sqlx::query("INSERT INTO perf_autoscaling_policies (id, service, created_ms, doc) VALUES ($1, $2, $3, $4)")
                .bind(policy.id)
                .bind(policy.service.as_str())
                .bind(policy.created_at.timestamp_millis())
                .bind(Json(policy))
                .execute(pool)
                .await
                .map_err(map_error)?;
            Ok(())
        })
    }

    /// Replaces a policy; a policy moved to another service forgets its recommendations.
    pub async fn replace_policy(&self, policy: &types::AutoscalingPolicy, moved: bool) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let mut tx = if backend == Backend::Sqlite {
                pool.begin_with("BEGIN IMMEDIATE").await?
            } else {
                pool.begin().await?
            };
            let updated = sqlx::query("UPDATE perf_autoscaling_policies SET service = $2, doc = $3 WHERE id = $1")
                .bind(policy.id)
                .bind(policy.service.as_str())
                .bind(Json(policy))
                .execute(&mut *tx)
                .await
                .map_err(map_error)?
                .rows_affected();
            if updated == 0 {
                return Err(StoreError::NotFound);
            }
            if moved {
                sqlx::query("DELETE FROM perf_scaling_recommendations WHERE policy_id = $1")
                    .bind(policy.id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub async fn delete_policy(&self, id: Uuid) -> Result<(), StoreError> {
        self.delete("DELETE FROM perf_autoscaling_policies WHERE id = $1", id).await
    }

    pub async fn policy(&self, id: Uuid) -> Result<Option<types::AutoscalingPolicy>, StoreError> {
        self.document("SELECT doc FROM perf_autoscaling_policies WHERE id = $1", id).await
    }

    pub async fn policies(
        &self,
        service: Option<&str>,
        after: After,
        limit: i64,
    ) -> Result<Vec<(i64, types::AutoscalingPolicy)>, StoreError> {
        let (after_ms, after_id) = after.unwrap_or((i64::MIN, Uuid::nil()));
        with_pool!(&self.store, |pool, backend| {
            let rows: Vec<(i64, Json<serde_json::Value>)> = sqlx::query_as(
                "SELECT created_ms, doc FROM perf_autoscaling_policies WHERE ($1 IS NULL OR service = $1) \
                 AND (created_ms > $2 OR (created_ms = $2 AND id > $3)) ORDER BY created_ms, id LIMIT $4",
            )
            .bind(service)
            .bind(after_ms)
            .bind(after_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(|(ms, doc)| Ok((ms, decode_doc(doc)?))).collect()
        })
    }

    /// The unstabilised recommendations of a policy since `since_ms`, oldest first.
    pub async fn recommendations(&self, policy_id: Uuid, since_ms: i64) -> Result<Vec<(i64, u64)>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let rows: Vec<(i64, i32)> = sqlx::query_as(
                "SELECT at_ms, replicas FROM perf_scaling_recommendations WHERE policy_id = $1 AND at_ms > $2 \
                 ORDER BY at_ms",
            )
            .bind(policy_id)
            .bind(since_ms)
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(|(at, replicas)| (at, replicas.max(0) as u64)).collect())
        })
    }

    /// Records an unstabilised recommendation (a policy deleted meanwhile records nothing).
    pub async fn record_recommendation(&self, policy_id: Uuid, at_ms: i64, replicas: u64) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let result = sqlx::query(
                "INSERT INTO perf_scaling_recommendations (policy_id, at_ms, replicas) VALUES ($1, $2, $3)",
            )
            .bind(policy_id)
            .bind(at_ms)
            .bind(replicas.min(i32::MAX as u64) as i32)
            .execute(pool)
            .await;
            match result.map_err(StoreError::from) {
                Ok(_) | Err(StoreError::NotFound) => Ok(()),
                Err(error) => Err(error),
            }
        })
    }

    /// Every policy, for the desired-replicas metric.
    pub async fn all_policies(&self) -> Result<Vec<types::AutoscalingPolicy>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let rows: Vec<(Json<serde_json::Value>,)> =
                sqlx::query_as("SELECT doc FROM perf_autoscaling_policies ORDER BY created_ms, id")
                    .fetch_all(pool)
                    .await?;
            rows.into_iter().map(|(doc,)| decode_doc(doc)).collect()
        })
    }

    // ---- benchmarks ------------------------------------------------------------------

    pub async fn insert_benchmark(&self, benchmark: &types::Benchmark) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            sqlx::query(
                "INSERT INTO perf_benchmarks (id, service, status, created_ms, doc) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(benchmark.id)
            .bind(benchmark.service.as_str())
            .bind(benchmark.status.to_string())
            .bind(benchmark.created_at.timestamp_millis())
            .bind(Json(benchmark))
            .execute(pool)
            .await
            .map_err(map_error)?;
            Ok(())
        })
    }

    /// Writes a benchmark's new state if it is still in `from` (one of its statuses);
    /// returns whether it was.
    pub async fn update_benchmark(&self, benchmark: &types::Benchmark, from: &[&str]) -> Result<bool, StoreError> {
        let [first, second] = match from {
            [one] => [*one, *one],
            [one, two] => [*one, *two],
            _ => return Err(StoreError::NotFound),
        };
        with_pool!(&self.store, |pool, backend| {
            let updated = sqlx::query(
                "UPDATE perf_benchmarks SET status = $2, doc = $3 WHERE id = $1 AND (status = $4 OR status = $5)",
            )
            .bind(benchmark.id)
            .bind(benchmark.status.to_string())
            .bind(Json(benchmark))
            .bind(first)
            .bind(second)
            .execute(pool)
            .await
            .map_err(map_error)?
            .rows_affected();
            Ok(updated == 1)
        })
    }

    pub async fn benchmark(&self, id: Uuid) -> Result<Option<types::Benchmark>, StoreError> {
        self.document("SELECT doc FROM perf_benchmarks WHERE id = $1", id).await
    }

    /// Newest first.
    pub async fn benchmarks(
        &self,
        status: Option<&str>,
        service: Option<&str>,
        after: After,
        limit: i64,
    ) -> Result<Vec<(i64, types::Benchmark)>, StoreError> {
        let (after_ms, after_id) = after.unwrap_or((i64::MAX, Uuid::max()));
        with_pool!(&self.store, |pool, backend| {
            let rows: Vec<(i64, Json<serde_json::Value>)> = sqlx::query_as(
                "SELECT created_ms, doc FROM perf_benchmarks WHERE ($1 IS NULL OR status = $1) \
                 AND ($2 IS NULL OR service = $2) AND (created_ms < $3 OR (created_ms = $3 AND id < $4)) \
                 ORDER BY created_ms DESC, id DESC LIMIT $5",
            )
            .bind(status)
            .bind(service)
            .bind(after_ms)
            .bind(after_id)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(|(ms, doc)| Ok((ms, decode_doc(doc)?))).collect()
        })
    }

    /// Benchmarks in one of `statuses`, oldest first.
    pub async fn benchmarks_in(&self, status: &str) -> Result<Vec<types::Benchmark>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let rows: Vec<(Json<serde_json::Value>,)> =
                sqlx::query_as("SELECT doc FROM perf_benchmarks WHERE status = $1 ORDER BY created_ms, id")
                    .bind(status)
                    .fetch_all(pool)
                    .await?;
            rows.into_iter().map(|(doc,)| decode_doc(doc)).collect()
        })
    }

    // ---- shared ----------------------------------------------------------------------

    async fn delete(&self, sql: &'static str, id: Uuid) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let deleted = sqlx::query(sql).bind(id).execute(pool).await?.rows_affected();
            if deleted == 0 { Err(StoreError::NotFound) } else { Ok(()) }
        })
    }

    async fn document<T: DeserializeOwned + Serialize>(
        &self,
        sql: &'static str,
        id: Uuid,
    ) -> Result<Option<T>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let row: Option<(Json<serde_json::Value>,)> = sqlx::query_as(sql).bind(id).fetch_optional(pool).await?;
            row.map(|(doc,)| decode_doc(doc)).transpose()
        })
    }
}

/// A sketch that cannot be read or merged, as the JSON error `StoreError::Corrupt` holds.
fn corrupt(error: crate::sketch::SketchError) -> serde_json::Error {
    serde::de::Error::custom(error.to_string())
}
