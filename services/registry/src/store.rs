//! Durable registry state in PostgreSQL or in an embedded SQLite file.
//!
//! Both backends run the same SQL: resource documents are JSON (JSONB or TEXT), ids are
//! UUIDs (native or BLOB), instants that queries compare are epoch milliseconds. The
//! `with_pool!` macro compiles each method body once per backend, so the two cannot drift.
//!
//! Every write that changes what discovery returns bumps the global `registry_index`,
//! stamps the service's `change_index` with it, and (on PostgreSQL) sends a `NOTIFY` so
//! that every replica refreshes its snapshot of that service.
//!
//! This module does not validate input (the generated router and the application layer
//! do) and does not decide HTTP statuses (see [`StoreError`]).

use crate::model::{ConfigKey, InstanceRecord, ServiceData};
use pake_mesh_server::types;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

/// The channel replicas listen on for registry changes.
pub const CHANGE_CHANNEL: &str = "pake_registry";

/// How long a request waits for a database connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A unique constraint, by name.
    #[error("conflict on {0}")]
    Conflict(&'static str),
    /// A compare-and-set lost: the stored version is `actual`.
    #[error("expected version {expected} but the current version is {actual}")]
    Stale { expected: i64, actual: i64 },
    /// The database cannot be reached; nothing was written and the caller should retry
    /// later.
    #[error("the store is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The store was found unreachable a moment ago and has not answered a probe since:
    /// refused without trying (see `crate::breaker`).
    #[error("the store is unreachable; failing fast until it answers again")]
    Down,
    /// The connection failed while a write was committing: it may or may not have been
    /// applied.
    #[error("the store failed while committing; the write may or may not have been applied: {0}")]
    OutcomeUnknown(#[source] sqlx::Error),
    #[error("store failure: {0}")]
    Internal(#[source] sqlx::Error),
    #[error("stored document is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
}

impl StoreError {
    /// Whether the error says the store cannot be reached (rather than refusing one
    /// statement): what opens the breaker.
    pub fn store_is_down(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::OutcomeUnknown(_) | StoreError::Down)
    }

    /// The error of a `COMMIT`: losing the store there leaves the outcome unknown.
    fn at_commit(error: sqlx::Error) -> StoreError {
        match StoreError::from(error) {
            StoreError::Unavailable(source) => StoreError::OutcomeUnknown(source),
            other => other,
        }
    }
}

/// SQLSTATEs that say the server or the connection went away, not that a statement was
/// refused: class 08 (connection exception), 57P01–57P03 (administrator shutdown, crash
/// shutdown, cannot connect now), 53300 (too many connections).
fn connection_lost(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// Which backend, for the few statements that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A connection pool to either backend.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the concrete pool and `$backend` to its [`Backend`].
/// Exported so that other stores on the platform database (the gateway's routes) write
/// their SQL once for both backends too.
///
/// Inside a traced request the call is a child span of the request's span, named by the
/// store function it is written in (`store.register_instance`), with `db.system`; an
/// error marks the span. `$body` ends its function: the macro is the function's result.
#[macro_export]
macro_rules! with_pool {
    ($store:expr, |$pool:ident, $backend:ident| $body:expr) => {{
        fn here() {}
        let operation = $crate::store::operation_name(::std::any::type_name_of_val(&here));
        let store: &$crate::store::Store = $store;
        $crate::store::trace::server::in_child_span(
            operation,
            || ::std::vec![$crate::store::trace::opentelemetry::KeyValue::new("db.system", store.db_system())],
            async {
                match store {
                    $crate::store::Store::Postgres($pool) => {
                        #[allow(unused_variables)]
                        let $backend = $crate::store::Backend::Postgres;
                        $body
                    }
                    $crate::store::Store::Sqlite($pool) => {
                        #[allow(unused_variables)]
                        let $backend = $crate::store::Backend::Sqlite;
                        $body
                    }
                }
            },
        )
        .await
    }};
}

/// The tracing crate, for [`with_pool!`] expanded in other crates.
#[doc(hidden)]
pub use pake_trace as trace;

/// `store.<function>` for the path of a function nested in a store function
/// (`pake_registry::store::Store::register_instance::here`).
#[doc(hidden)]
pub fn operation_name(nested: &'static str) -> &'static str {
    let function = nested.strip_suffix("::here").unwrap_or(nested);
    // Async functions show as `{{closure}}` segments in some compilers' type names.
    let function = function.trim_end_matches("::{{closure}}");
    let start = function.rfind("::").map_or(0, |at| at + 2);
    // `store.` + the function name, leaked once per distinct name (a fixed, small set).
    static NAMES: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<&'static str, &'static str>>> =
        std::sync::OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    names.entry(nested).or_insert_with(|| Box::leak(format!("store.{}", &function[start..]).into_boxed_str()))
}

/// Starts a write transaction. SQLite takes the write lock up front (`BEGIN IMMEDIATE`) so
/// that two writers queue on the busy timeout instead of failing when one upgrades a read
/// lock; PostgreSQL's row locks and constraints do that work there.
macro_rules! begin_write {
    ($pool:expr, $backend:expr) => {
        if $backend == Backend::Sqlite { $pool.begin_with("BEGIN IMMEDIATE").await? } else { $pool.begin().await? }
    };
}

/// The highest version a configuration key's history holds (0 for none): versions keep
/// counting across deletes.
macro_rules! last_history_version {
    ($tx:expr, $key:expr) => {{
        let (last,): (i64,) = sqlx::query_as(
            "SELECT COALESCE(MAX(version), 0) FROM config_history WHERE service = $1 AND environment = $2 AND key = $3",
        )
        .bind($key.service.as_str())
        .bind($key.environment.to_string())
        .bind($key.key.as_str())
        .fetch_one($tx)
        .await?;
        last
    }};
}

/// Appends one version to a configuration key's history.
macro_rules! record_history {
    ($tx:expr, $key:expr, $version:expr, $history:expr) => {{
        sqlx::query("INSERT INTO config_history (service, environment, key, version, doc) VALUES ($1, $2, $3, $4, $5)")
            .bind($key.service.as_str())
            .bind($key.environment.to_string())
            .bind($key.key.as_str())
            .bind($version)
            .bind(Json(&$history))
            .execute($tx)
            .await?;
    }};
}

/// Commits a write transaction; a connection lost during the commit is
/// [`StoreError::OutcomeUnknown`], since the server may have committed before it went.
macro_rules! commit_write {
    ($tx:expr) => {
        $tx.commit().await.map_err(StoreError::at_commit)?
    };
}

/// Increments the registry index inside a transaction and evaluates to the new value.
macro_rules! bump_index {
    ($tx:expr) => {{
        let (value,): (i64,) =
            sqlx::query_as("UPDATE registry_index SET value = value + 1 WHERE id = 1 RETURNING value")
                .fetch_one($tx)
                .await?;
        value
    }};
}

/// Stamps a service with the index of a change that affects what discovery returns.
macro_rules! touch_service {
    ($tx:expr, $service_id:expr, $index:expr) => {{
        sqlx::query("UPDATE services SET change_index = $1 WHERE id = $2")
            .bind($index)
            .bind($service_id)
            .execute($tx)
            .await?;
    }};
}

/// Tells other replicas (PostgreSQL only) that a service changed; delivered at commit.
macro_rules! notify {
    ($tx:expr, $backend:expr, $service_id:expr) => {{
        if $backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGE_CHANNEL)
                .bind($service_id.to_string())
                .execute($tx)
                .await?;
        }
    }};
}

/// Reads one service and everything under it; evaluates to `Option<ServiceData>`.
macro_rules! load_service {
    ($tx:expr, $id:expr) => {{
        let id: Uuid = $id;
        let service: Option<(Json<types::Service>, i64)> =
            sqlx::query_as("SELECT doc, change_index FROM services WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *$tx)
                .await?;
        match service {
            None => None,
            Some((Json(service), change_index)) => {
                let (Json(policy),): (Json<types::TrafficPolicy>,) =
                    sqlx::query_as("SELECT doc FROM traffic_policies WHERE service_id = $1")
                        .bind(id)
                        .fetch_one(&mut *$tx)
                        .await?;
                let rows: Vec<InstanceRow> = sqlx::query_as(
                    "SELECT doc, status, status_output, last_heartbeat_ms, expires_at_ms FROM instances \
                     WHERE service_id = $1 ORDER BY id",
                )
                .bind(id)
                .fetch_all(&mut *$tx)
                .await?;
                let instances = rows.into_iter().map(instance_record).collect::<Result<Vec<_>, _>>()?;
                let dependencies: Vec<(Json<types::Dependency>,)> =
                    sqlx::query_as("SELECT doc FROM dependencies WHERE service_id = $1 ORDER BY depends_on")
                        .bind(id)
                        .fetch_all(&mut *$tx)
                        .await?;
                Some(ServiceData {
                    service,
                    policy,
                    instances,
                    dependencies: dependencies.into_iter().map(|(Json(d),)| d).collect(),
                    change_index,
                })
            }
        }
    }};
}

/// Unique constraints by name, and how SQLite spells them in its messages.
const CONSTRAINTS: &[(&str, &str)] = &[
    ("services_name_key", "services.name"),
    ("instances_endpoint_key", "instances.service_id, instances.address, instances.port"),
    ("dependencies_edge_key", "dependencies.service_id, dependencies.depends_on"),
    ("config_entries_pkey", "config_entries.service, config_entries.environment, config_entries.key"),
    ("gateway_routes_name_key", "gateway_routes.name"),
    ("gateway_rate_limit_policies_name_key", "gateway_rate_limit_policies.name"),
    ("gateway_api_clients_client_id_key", "gateway_api_clients.client_id"),
    ("gateway_api_clients_name_key", "gateway_api_clients.tenant, gateway_api_clients.name"),
    (
        IDEMPOTENCY_KEY_CONSTRAINT,
        "registry_idempotency_keys.owner, registry_idempotency_keys.operation, registry_idempotency_keys.key",
    ),
];

/// The constraint a second write under one idempotency key runs into.
pub const IDEMPOTENCY_KEY_CONSTRAINT: &str = "registry_idempotency_keys_pkey";

/// A write's idempotency key, recorded in the write's own transaction with the request
/// (canonical JSON) and the answer a retry with the same key and request replays.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    /// Whose key: the caller's subject, so that callers cannot collide.
    pub owner: String,
    pub operation: &'static str,
    pub key: String,
    pub request: String,
    pub response: Value,
    /// Records created before this (epoch ms) have expired and are replaced.
    pub expired_before_ms: i64,
}

/// What an earlier write under a key asked for and answered.
#[derive(Debug, Clone)]
pub struct IdempotentAnswer {
    pub request: String,
    pub response: Value,
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
            sqlx::Error::Database(db) if db.code().is_some_and(|code| connection_lost(&code)) => {
                StoreError::Unavailable(error)
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                let named = db.constraint().map(str::to_string).unwrap_or_default();
                let message = db.message().to_string();
                let found = CONSTRAINTS
                    .iter()
                    .find(|(name, sqlite)| named == *name || message.ends_with(sqlite))
                    .map(|(name, _)| *name);
                match found {
                    Some(name) => StoreError::Conflict(name),
                    None => StoreError::Internal(error),
                }
            }
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
            _ => StoreError::Internal(error),
        }
    }
}

/// Every migration of the platform's database, registry and gateway alike: one migrator
/// must know all applied versions.
fn postgres_migrator() -> sqlx::migrate::Migrator {
    migrator(&[
        (1, "registry", include_str!("../../../migrations/postgres/0001_registry.sql")),
        (2, "gateway routes", include_str!("../../../migrations/postgres/0002_gateway_routes.sql")),
        (3, "gateway policies", include_str!("../../../migrations/postgres/0003_gateway_policies.sql")),
        (4, "route merge_slashes", include_str!("../../../migrations/postgres/0004_route_merge_slashes.sql")),
        (
            5,
            "registry idempotency keys",
            include_str!("../../../migrations/postgres/0005_registry_idempotency_keys.sql"),
        ),
        (6, "monitoring", include_str!("../../../migrations/postgres/0006_monitoring.sql")),
        (7, "performance", include_str!("../../../migrations/postgres/0007_performance.sql")),
        (
            8,
            "monitoring notified_resolved",
            include_str!("../../../migrations/postgres/0008_monitoring_notified_resolved.sql"),
        ),
        (9, "monitoring leader", include_str!("../../../migrations/postgres/0009_monitoring_leader.sql")),
    ])
}

fn sqlite_migrator() -> sqlx::migrate::Migrator {
    migrator(&[
        (1, "registry", include_str!("../../../migrations/sqlite/0001_registry.sql")),
        (2, "gateway routes", include_str!("../../../migrations/sqlite/0002_gateway_routes.sql")),
        (3, "gateway policies", include_str!("../../../migrations/sqlite/0003_gateway_policies.sql")),
        (4, "route merge_slashes", include_str!("../../../migrations/sqlite/0004_route_merge_slashes.sql")),
        (5, "registry idempotency keys", include_str!("../../../migrations/sqlite/0005_registry_idempotency_keys.sql")),
        (6, "monitoring", include_str!("../../../migrations/sqlite/0006_monitoring.sql")),
        (7, "performance", include_str!("../../../migrations/sqlite/0007_performance.sql")),
        (
            8,
            "monitoring notified_resolved",
            include_str!("../../../migrations/sqlite/0008_monitoring_notified_resolved.sql"),
        ),
        (9, "monitoring leader", include_str!("../../../migrations/sqlite/0009_monitoring_leader.sql")),
    ])
}

/// The migrations are compiled into the binary, so a deployment needs no files beside it.
fn migrator(migrations: &[(i64, &'static str, &'static str)]) -> sqlx::migrate::Migrator {
    let list = migrations
        .iter()
        .map(|(version, description, sql)| {
            sqlx::migrate::Migration::new(
                *version,
                (*description).into(),
                sqlx::migrate::MigrationType::Simple,
                sqlx::SqlStr::from_static(sql),
                false,
            )
        })
        .collect();
    sqlx::migrate::Migrator::with_migrations(list)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

type InstanceRow = (Json<types::Instance>, String, Option<String>, Option<i64>, i64);

fn instance_record(row: InstanceRow) -> Result<InstanceRecord, StoreError> {
    let (Json(instance), status, status_output, last_heartbeat_ms, expires_at_ms) = row;
    InstanceRecord::from_parts(instance, &status, status_output, last_heartbeat_ms, expires_at_ms)
}

impl Store {
    /// The OpenTelemetry `db.system` of the backend.
    pub fn db_system(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgresql",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Connects and migrates. `url` is `postgres://…` or `sqlite://path`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let store = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(StoreError::Internal)?.application_name("pake");
            let pool =
                PgPoolOptions::new().max_connections(16).acquire_timeout(ACQUIRE_TIMEOUT).connect_with(options).await?;
            Store::Postgres(pool)
        } else {
            // WAL with synchronous=FULL: an acknowledged write survives a killed process
            // and a power cut.
            let options = SqliteConnectOptions::from_str(url)
                .map_err(StoreError::Internal)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .connect_with(options)
                .await?;
            Store::Sqlite(pool)
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The version of the last migration applied (0 before any).
    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        with_pool!(self, |pool, backend| {
            let (version,): (Option<i64>,) =
                sqlx::query_as("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool).await?;
            Ok(version.unwrap_or(0))
        })
    }

    /// Applies pending migrations. On PostgreSQL the migrator holds an advisory lock, so
    /// replicas starting together apply each migration once.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let result = match self {
            Store::Postgres(pool) => postgres_migrator().run(pool).await,
            Store::Sqlite(pool) => sqlite_migrator().run(pool).await,
        };
        result.map_err(|error| match error {
            sqlx::migrate::MigrateError::Execute(inner) => StoreError::from(inner),
            other => StoreError::Internal(sqlx::Error::Migrate(Box::new(other))),
        })
    }

    pub fn backend(&self) -> Backend {
        match self {
            Store::Postgres(_) => Backend::Postgres,
            Store::Sqlite(_) => Backend::Sqlite,
        }
    }

    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match self {
            Store::Postgres(pool) => Some(pool),
            Store::Sqlite(_) => None,
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Postgres(pool) => pool.close().await,
            Store::Sqlite(pool) => pool.close().await,
        }
    }

    /// A cheap round trip, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(self, |pool, backend| {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        })
    }

    /// The registry index: how many changes have been committed.
    pub async fn index(&self) -> Result<i64, StoreError> {
        with_pool!(self, |pool, backend| {
            let (value,): (i64,) =
                sqlx::query_as("SELECT value FROM registry_index WHERE id = 1").fetch_one(pool).await?;
            Ok(value)
        })
    }

    /// Every service with its instances, policy and dependencies, and the index they
    /// reflect.
    pub async fn load_all(&self) -> Result<(i64, Vec<ServiceData>), StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = pool.begin().await?;
            let (index,): (i64,) =
                sqlx::query_as("SELECT value FROM registry_index WHERE id = 1").fetch_one(&mut *tx).await?;
            let ids: Vec<(Uuid,)> = sqlx::query_as("SELECT id FROM services").fetch_all(&mut *tx).await?;
            let mut services = Vec::with_capacity(ids.len());
            for (id,) in ids {
                if let Some(data) = load_service!(&mut *tx, id) {
                    services.push(data);
                }
            }
            tx.commit().await?;
            Ok((index, services))
        })
    }

    /// One service with its instances, policy and dependencies.
    pub async fn load_service(&self, id: Uuid) -> Result<Option<ServiceData>, StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = pool.begin().await?;
            let data = load_service!(&mut *tx, id);
            tx.commit().await?;
            Ok(data)
        })
    }

    /// Registers a service with its default policy and, with `idempotency`, records the key
    /// in the same transaction (an expired record under the key is replaced; a live one is
    /// [`StoreError::Conflict`] on [`IDEMPOTENCY_KEY_CONSTRAINT`]).
    pub async fn register_service(
        &self,
        service: &types::Service,
        policy: &types::TrafficPolicy,
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<i64, StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            if let Some(record) = idempotency {
                sqlx::query(
                    "DELETE FROM registry_idempotency_keys \
                     WHERE owner = $1 AND operation = $2 AND key = $3 AND created_at_ms < $4",
                )
                .bind(&record.owner)
                .bind(record.operation)
                .bind(&record.key)
                .bind(record.expired_before_ms)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO registry_idempotency_keys (owner, operation, key, request, response, created_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&record.owner)
                .bind(record.operation)
                .bind(&record.key)
                .bind(&record.request)
                .bind(Json(&record.response))
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            }
            let index = bump_index!(&mut *tx);
            sqlx::query("INSERT INTO services (id, name, doc, revision, change_index) VALUES ($1, $2, $3, $4, $5)")
                .bind(service.id)
                .bind(service.name.as_str())
                .bind(Json(service))
                .bind(service.revision.get() as i64)
                .bind(index)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO traffic_policies (service_id, doc, revision) VALUES ($1, $2, $3)")
                .bind(service.id)
                .bind(Json(policy))
                .bind(policy.revision.get() as i64)
                .execute(&mut *tx)
                .await?;
            notify!(&mut *tx, backend, service.id);
            commit_write!(tx);
            Ok(index)
        })
    }

    /// The live record under an idempotency key (created at or after
    /// `expired_before_ms`), if any.
    pub async fn idempotent_answer(
        &self,
        owner: &str,
        operation: &str,
        key: &str,
        expired_before_ms: i64,
    ) -> Result<Option<IdempotentAnswer>, StoreError> {
        with_pool!(self, |pool, backend| {
            let row: Option<(String, Json<Value>)> = sqlx::query_as(
                "SELECT request, response FROM registry_idempotency_keys \
                 WHERE owner = $1 AND operation = $2 AND key = $3 AND created_at_ms >= $4",
            )
            .bind(owner)
            .bind(operation)
            .bind(key)
            .bind(expired_before_ms)
            .fetch_optional(pool)
            .await?;
            Ok(row.map(|(request, Json(response))| IdempotentAnswer { request, response }))
        })
    }

    /// Forgets idempotency keys created before `expired_before_ms`; returns how many.
    pub async fn purge_idempotency_keys(&self, expired_before_ms: i64) -> Result<u64, StoreError> {
        with_pool!(self, |pool, backend| {
            let done = sqlx::query("DELETE FROM registry_idempotency_keys WHERE created_at_ms < $1")
                .bind(expired_before_ms)
                .execute(pool)
                .await?;
            Ok(done.rows_affected())
        })
    }

    /// Replaces a service document if its stored revision is `expected_revision`.
    pub async fn update_service(&self, service: &types::Service, expected_revision: i64) -> Result<(), StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            let index = bump_index!(&mut *tx);
            let updated = sqlx::query(
                "UPDATE services SET doc = $1, revision = $2, change_index = $3 WHERE id = $4 AND revision = $5",
            )
            .bind(Json(service))
            .bind(service.revision.get() as i64)
            .bind(index)
            .bind(service.id)
            .bind(expected_revision)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                let current: Option<(i64,)> = sqlx::query_as("SELECT revision FROM services WHERE id = $1")
                    .bind(service.id)
                    .fetch_optional(&mut *tx)
                    .await?;
                return Err(match current {
                    Some((actual,)) => StoreError::Stale { expected: expected_revision, actual },
                    None => StoreError::NotFound,
                });
            }
            notify!(&mut *tx, backend, service.id);
            commit_write!(tx);
            Ok(())
        })
    }

    /// Removes a service, its instances, dependencies, policy and configuration.
    pub async fn deregister_service(&self, id: Uuid) -> Result<(), StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            bump_index!(&mut *tx);
            let name: Option<(String,)> = sqlx::query_as("DELETE FROM services WHERE id = $1 RETURNING name")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((name,)) = name else {
                return Err(StoreError::NotFound);
            };
            sqlx::query("DELETE FROM config_entries WHERE service = $1").bind(&name).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM config_history WHERE service = $1").bind(&name).execute(&mut *tx).await?;
            notify!(&mut *tx, backend, id);
            commit_write!(tx);
            Ok(())
        })
    }

    pub async fn register_instance(&self, record: &InstanceRecord) -> Result<i64, StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            let index = bump_index!(&mut *tx);
            let instance = &record.instance;
            sqlx::query(
                "INSERT INTO instances (id, service_id, address, port, doc, status, status_output, \
                 last_heartbeat_ms, expires_at_ms, deregister_after_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(instance.id)
            .bind(instance.service_id)
            .bind(instance.address.as_str())
            .bind(instance.port.get() as i32)
            .bind(Json(instance))
            .bind(instance.status.to_string())
            .bind(instance.status_output.as_ref().map(|o| o.to_string()))
            .bind(record.last_heartbeat_ms)
            .bind(record.expires_at_ms)
            .bind(record.deregister_after_ms)
            .execute(&mut *tx)
            .await?;
            touch_service!(&mut *tx, instance.service_id, index);
            notify!(&mut *tx, backend, instance.service_id);
            commit_write!(tx);
            Ok(index)
        })
    }

    /// Records a heartbeat. The index moves only when the status changes: a heartbeat
    /// that merely extends the TTL wakes no blocking query, but still reaches every
    /// replica's snapshot.
    pub async fn heartbeat(
        &self,
        service_id: Uuid,
        instance_id: Uuid,
        status: &str,
        output: Option<&str>,
        ttl_ms: i64,
    ) -> Result<InstanceRecord, StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            let now = now_ms();
            let previous: Option<(String, i64)> =
                sqlx::query_as("SELECT status, expires_at_ms FROM instances WHERE id = $1 AND service_id = $2")
                    .bind(instance_id)
                    .bind(service_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((previous_status, previous_expiry)) = previous else {
                return Err(StoreError::NotFound);
            };
            // An expired instance counts as critical whatever its stored status says.
            let effective_previous = if previous_expiry <= now { "critical" } else { previous_status.as_str() };
            let row: InstanceRow = sqlx::query_as(
                "UPDATE instances SET status = $1, status_output = $2, last_heartbeat_ms = $3, expires_at_ms = $4 \
                 WHERE id = $5 AND service_id = $6 \
                 RETURNING doc, status, status_output, last_heartbeat_ms, expires_at_ms",
            )
            .bind(status)
            .bind(output)
            .bind(now)
            .bind(now + ttl_ms)
            .bind(instance_id)
            .bind(service_id)
            .fetch_one(&mut *tx)
            .await?;
            if effective_previous != status {
                let index = bump_index!(&mut *tx);
                touch_service!(&mut *tx, service_id, index);
            }
            notify!(&mut *tx, backend, service_id);
            commit_write!(tx);
            instance_record(row)
        })
    }

    pub async fn deregister_instance(&self, service_id: Uuid, instance_id: Uuid) -> Result<(), StoreError> {
        self.delete_under_service("DELETE FROM instances WHERE id = $1 AND service_id = $2", service_id, instance_id)
            .await
    }

    /// Deletes one row that belongs to a service (`$1` is its id, `$2` the service's) and
    /// records the change for discovery; `NotFound` when there is no such row.
    async fn delete_under_service(
        &self,
        statement: &'static str,
        service_id: Uuid,
        id: Uuid,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            let index = bump_index!(&mut *tx);
            let deleted = sqlx::query(statement).bind(id).bind(service_id).execute(&mut *tx).await?.rows_affected();
            if deleted == 0 {
                return Err(StoreError::NotFound);
            }
            touch_service!(&mut *tx, service_id, index);
            notify!(&mut *tx, backend, service_id);
            commit_write!(tx);
            Ok(())
        })
    }

    /// Marks instances whose TTL lapsed as critical; returns the services touched.
    pub async fn expire_instances(&self) -> Result<Vec<Uuid>, StoreError> {
        self.change_instances(
            "UPDATE instances SET status = 'critical', status_output = 'ttl expired' \
             WHERE expires_at_ms <= $1 AND status <> 'critical' RETURNING service_id",
        )
        .await
    }

    /// Deregisters instances that stayed critical past their critical period.
    pub async fn reap_instances(&self) -> Result<Vec<Uuid>, StoreError> {
        self.change_instances(
            "DELETE FROM instances WHERE expires_at_ms + deregister_after_ms <= $1 RETURNING service_id",
        )
        .await
    }

    /// Runs a time-driven change to instances (`$1` is now, in epoch milliseconds, and the
    /// statement returns the `service_id` of each instance it changed), then stamps and
    /// announces every service it touched.
    async fn change_instances(&self, statement: &'static str) -> Result<Vec<Uuid>, StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            let touched: Vec<(Uuid,)> = sqlx::query_as(statement).bind(now_ms()).fetch_all(&mut *tx).await?;
            let services = distinct(touched);
            if !services.is_empty() {
                let index = bump_index!(&mut *tx);
                for id in &services {
                    touch_service!(&mut *tx, *id, index);
                    notify!(&mut *tx, backend, *id);
                }
            }
            commit_write!(tx);
            Ok(services)
        })
    }

    pub async fn add_dependency(&self, dependency: &types::Dependency) -> Result<(), StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            let index = bump_index!(&mut *tx);
            sqlx::query("INSERT INTO dependencies (id, service_id, depends_on, doc) VALUES ($1, $2, $3, $4)")
                .bind(dependency.id)
                .bind(dependency.service_id)
                .bind(dependency.depends_on.as_str())
                .bind(Json(dependency))
                .execute(&mut *tx)
                .await?;
            touch_service!(&mut *tx, dependency.service_id, index);
            notify!(&mut *tx, backend, dependency.service_id);
            commit_write!(tx);
            Ok(())
        })
    }

    pub async fn delete_dependency(&self, service_id: Uuid, id: Uuid) -> Result<(), StoreError> {
        self.delete_under_service("DELETE FROM dependencies WHERE id = $1 AND service_id = $2", service_id, id).await
    }

    /// Replaces a traffic policy if its stored revision is `expected_revision`.
    pub async fn replace_policy(
        &self,
        policy: &types::TrafficPolicy,
        expected_revision: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            let index = bump_index!(&mut *tx);
            let updated = sqlx::query(
                "UPDATE traffic_policies SET doc = $1, revision = $2 WHERE service_id = $3 AND revision = $4",
            )
            .bind(Json(policy))
            .bind(policy.revision.get() as i64)
            .bind(policy.service_id)
            .bind(expected_revision)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 0 {
                let current: Option<(i64,)> =
                    sqlx::query_as("SELECT revision FROM traffic_policies WHERE service_id = $1")
                        .bind(policy.service_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                return Err(match current {
                    Some((actual,)) => StoreError::Stale { expected: expected_revision, actual },
                    None => StoreError::NotFound,
                });
            }
            touch_service!(&mut *tx, policy.service_id, index);
            notify!(&mut *tx, backend, policy.service_id);
            commit_write!(tx);
            Ok(())
        })
    }

    pub async fn get_config(&self, key: &ConfigKey) -> Result<Option<types::ConfigEntry>, StoreError> {
        with_pool!(self, |pool, backend| {
            let row: Option<(Json<types::ConfigEntry>,)> =
                sqlx::query_as("SELECT doc FROM config_entries WHERE service = $1 AND environment = $2 AND key = $3")
                    .bind(key.service.as_str())
                    .bind(key.environment.to_string())
                    .bind(key.key.as_str())
                    .fetch_optional(pool)
                    .await?;
            Ok(row.map(|(Json(entry),)| entry))
        })
    }

    /// Entries of one service and environment in key order, after `after` and starting
    /// with `prefix`.
    pub async fn list_config(
        &self,
        service: &str,
        environment: &str,
        prefix: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<types::ConfigEntry>, StoreError> {
        with_pool!(self, |pool, backend| {
            // Keys are restricted by the contract to [A-Za-z0-9._-], so a range scan from the
            // prefix is exact without LIKE escaping.
            let upper = format!("{prefix}\u{10FFFF}");
            let rows: Vec<(Json<types::ConfigEntry>,)> = sqlx::query_as(
                "SELECT doc FROM config_entries WHERE service = $1 AND environment = $2 \
                 AND key >= $3 AND key < $4 AND key > $5 ORDER BY key LIMIT $6",
            )
            .bind(service)
            .bind(environment)
            .bind(prefix)
            .bind(upper)
            .bind(after.unwrap_or(""))
            .bind(limit)
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(|(Json(entry),)| entry).collect())
        })
    }

    /// Writes a configuration value. `expected`: `None` writes unconditionally, `Some(0)`
    /// only creates, `Some(v)` only replaces version `v`. Every write is kept in the
    /// history; versions keep counting across deletes.
    pub async fn put_config(
        &self,
        key: &ConfigKey,
        value: &types::ConfigValue,
        description: Option<&types::ConfigDescription>,
        expected: Option<i64>,
        changed_by: &str,
    ) -> Result<types::ConfigEntry, StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            let current: Option<(Json<types::ConfigEntry>,)> =
                sqlx::query_as("SELECT doc FROM config_entries WHERE service = $1 AND environment = $2 AND key = $3")
                    .bind(key.service.as_str())
                    .bind(key.environment.to_string())
                    .bind(key.key.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            let current = current.map(|(Json(entry),)| entry);
            let actual = current.as_ref().map(|e| e.version.get() as i64).unwrap_or(0);
            if let Some(expected) = expected
                && expected != actual
            {
                return Err(StoreError::Stale { expected, actual });
            }
            let last = last_history_version!(&mut *tx, key);
            let version = last + 1;
            let now = chrono::Utc::now();
            let entry = key.entry(
                value.clone(),
                description.cloned(),
                version_number(version)?,
                current.as_ref().map(|e| e.created_at).unwrap_or(now),
                now,
            );
            // The version guard makes the write itself the compare-and-set: of two writers
            // that read the same version, only one updates a row.
            let written = if current.is_some() {
                sqlx::query(
                    "UPDATE config_entries SET doc = $1, version = $2 \
                     WHERE service = $3 AND environment = $4 AND key = $5 AND version = $6",
                )
                .bind(Json(&entry))
                .bind(version)
                .bind(key.service.as_str())
                .bind(key.environment.to_string())
                .bind(key.key.as_str())
                .bind(actual)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            } else {
                sqlx::query(
                    "INSERT INTO config_entries (service, environment, key, doc, version) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(key.service.as_str())
                .bind(key.environment.to_string())
                .bind(key.key.as_str())
                .bind(Json(&entry))
                .bind(version)
                .execute(&mut *tx)
                .await?
                .rows_affected()
            };
            if written == 0 {
                return Err(StoreError::Conflict("config_entries_pkey"));
            }
            let history = types::ConfigVersion {
                version: entry.version,
                operation: types::ConfigVersionOperation::Put,
                value: Some(value.clone()),
                description: description.cloned(),
                changed_at: now,
                changed_by: changed_by_subject(changed_by)?,
            };
            record_history!(&mut *tx, key, version, history);
            commit_write!(tx);
            Ok(entry)
        })
    }

    pub async fn delete_config(
        &self,
        key: &ConfigKey,
        expected: Option<i64>,
        changed_by: &str,
    ) -> Result<(), StoreError> {
        with_pool!(self, |pool, backend| {
            let mut tx = begin_write!(pool, backend);
            let current: Option<(i64,)> = sqlx::query_as(
                "SELECT version FROM config_entries WHERE service = $1 AND environment = $2 AND key = $3",
            )
            .bind(key.service.as_str())
            .bind(key.environment.to_string())
            .bind(key.key.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some((actual,)) = current else {
                return Err(StoreError::NotFound);
            };
            if let Some(expected) = expected
                && expected != actual
            {
                return Err(StoreError::Stale { expected, actual });
            }
            let deleted = sqlx::query(
                "DELETE FROM config_entries WHERE service = $1 AND environment = $2 AND key = $3 AND version = $4",
            )
            .bind(key.service.as_str())
            .bind(key.environment.to_string())
            .bind(key.key.as_str())
            .bind(actual)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if deleted == 0 {
                return Err(StoreError::Conflict("config_entries_pkey"));
            }
            let version = actual.max(last_history_version!(&mut *tx, key)) + 1;
            let history = types::ConfigVersion {
                version: version_number(version)?,
                operation: types::ConfigVersionOperation::Delete,
                value: None,
                description: None,
                changed_at: chrono::Utc::now(),
                changed_by: changed_by_subject(changed_by)?,
            };
            record_history!(&mut *tx, key, version, history);
            commit_write!(tx);
            Ok(())
        })
    }

    /// History of a key, newest first, older than `before` (a version).
    pub async fn config_history(
        &self,
        key: &ConfigKey,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<types::ConfigVersion>, StoreError> {
        with_pool!(self, |pool, backend| {
            let rows: Vec<(Json<types::ConfigVersion>,)> = sqlx::query_as(
                "SELECT doc FROM config_history WHERE service = $1 AND environment = $2 AND key = $3 AND version < $4 \
                 ORDER BY version DESC LIMIT $5",
            )
            .bind(key.service.as_str())
            .bind(key.environment.to_string())
            .bind(key.key.as_str())
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(pool)
            .await?;
            Ok(rows.into_iter().map(|(Json(version),)| version).collect())
        })
    }
}

/// The subject a history entry names; one the contract cannot hold fails the write.
fn changed_by_subject(subject: &str) -> Result<types::ConfigVersionChangedBy, StoreError> {
    subject.parse().map_err(|error| {
        StoreError::Corrupt(<serde_json::Error as serde::de::Error>::custom(format!("changed_by {subject:?}: {error}")))
    })
}

/// A version number the store counted, as the contract's positive integer.
fn version_number(version: i64) -> Result<std::num::NonZeroU64, StoreError> {
    u64::try_from(version).ok().and_then(std::num::NonZeroU64::new).ok_or_else(|| {
        StoreError::Corrupt(<serde_json::Error as serde::de::Error>::custom(format!(
            "version {version} is not positive"
        )))
    })
}

fn distinct(rows: Vec<(Uuid,)>) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = rows.into_iter().map(|(id,)| id).collect();
    ids.sort();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection as _;

    #[test]
    fn connection_loss_is_told_from_refused_statements() {
        for code in ["08000", "08006", "08P01", "57P01", "57P02", "57P03", "53300"] {
            assert!(connection_lost(code), "{code} is a lost connection");
        }
        for code in ["23505", "23503", "23514", "40001", "57014", "42P01", "P0001", "53100"] {
            assert!(!connection_lost(code), "{code} is a refused statement");
        }
    }

    /// Closing an SQLite store (as `pake migrate` does before it exits) checkpoints its
    /// write-ahead log into the database file: one file is left, holding every write, and
    /// the store refuses further work.
    #[tokio::test]
    async fn closing_an_sqlite_store_leaves_one_file_and_refuses_work() {
        let db = conformance::support::TestDatabase::new(conformance::support::Backend::Sqlite).await;
        let path = std::path::PathBuf::from(db.url.trim_start_matches("sqlite://"));
        let wal = path.with_extension("db-wal");
        let store = Store::open(&db.url).await.expect("store opens");
        store.ping().await.expect("open, it answers");
        assert!(wal.exists(), "a write-ahead log while open");
        store.close().await;
        assert!(!wal.exists(), "the log checkpointed and removed on close");
        assert!(store.ping().await.is_err(), "a closed store answers nothing");
        let reopened = Store::open(&db.url).await.expect("store opens again");
        let newest = sqlite_migrator().iter().map(|migration| migration.version).max();
        assert_eq!(reopened.schema_version().await.ok(), newest);
    }

    #[test]
    fn a_missing_row_is_not_found() {
        assert!(matches!(StoreError::from(sqlx::Error::RowNotFound), StoreError::NotFound));
    }

    /// Errors PostgreSQL really raises, by SQLSTATE, become what the registry answers
    /// with: a lost connection 503, a missing reference 404, a unique key the conflict it
    /// names, anything else 500.
    #[tokio::test]
    async fn postgres_errors_are_classified_by_their_sqlstate() {
        let mut connection = sqlx::PgConnection::connect(&conformance::support::postgres_admin_url())
            .await
            .expect("PostgreSQL is reachable");
        let mut raised = async |sqlstate: &str| -> StoreError {
            let statement = format!("DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{sqlstate}'; END $$");
            let error = sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut connection).await.expect_err("raised");
            StoreError::from(error)
        };
        for lost in ["08006", "57P01", "53300"] {
            assert!(matches!(raised(lost).await, StoreError::Unavailable(_)), "{lost}");
        }
        assert!(matches!(raised("23503").await, StoreError::NotFound), "a foreign key violation");
        for other in ["23514", "22023", "P0001"] {
            assert!(matches!(raised(other).await, StoreError::Internal(_)), "{other}");
        }
        // A unique violation names its constraint: the idempotency key's is told apart
        // from the others.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TEMPORARY TABLE keyed (key text CONSTRAINT {IDEMPOTENCY_KEY_CONSTRAINT} PRIMARY KEY)"
        )))
        .execute(&mut connection)
        .await
        .unwrap();
        sqlx::query("INSERT INTO keyed VALUES ('a')").execute(&mut connection).await.unwrap();
        let duplicate = sqlx::query("INSERT INTO keyed VALUES ('a')").execute(&mut connection).await.unwrap_err();
        match StoreError::from(duplicate) {
            StoreError::Conflict(name) => assert_eq!(name, IDEMPOTENCY_KEY_CONSTRAINT),
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
}
