//! API clients and rate-limit policies, persisted beside the routes. Documents are the
//! contract's `ApiClient` and `RateLimitPolicy`; a client's secret exists only as an Argon2
//! PHC string in its own column, never in the document.
//!
//! Every write notifies the other replicas on the same channel as route changes, so that
//! the in-memory view the data plane reads ([`crate::proxy::DataPlane`]) follows within a
//! second.

use crate::routes::notify;
use pake_gateway_server::types;
use pake_registry::store::{Store, StoreError};
use pake_registry::with_pool;
use sqlx::types::Json;
use uuid::Uuid;

/// Reads and writes `gateway_api_clients` and `gateway_rate_limit_policies`.
#[derive(Clone, Debug)]
pub struct PolicyStore {
    store: Store,
}

/// An API client as stored: the document and the hash of its current secret.
#[derive(Clone, Debug)]
pub struct StoredClient {
    pub client: types::ApiClient,
    pub secret_hash: String,
}

impl PolicyStore {
    pub fn new(store: Store) -> PolicyStore {
        PolicyStore { store }
    }

    /// After an update or delete of `id`: none of its rows means no such thing; otherwise
    /// the other replicas are told.
    async fn changed(&self, rows: u64, id: Uuid) -> Result<(), StoreError> {
        if rows == 0 {
            return Err(StoreError::NotFound);
        }
        notify(&self.store, id).await
    }

    /// Every client, ordered by tenant then name.
    pub async fn clients(&self) -> Result<Vec<types::ApiClient>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let rows: Vec<(Json<types::ApiClient>,)> =
                sqlx::query_as("SELECT doc FROM gateway_api_clients ORDER BY tenant, name").fetch_all(pool).await?;
            Ok(rows.into_iter().map(|(Json(client),)| client).collect())
        })
    }

    pub async fn client(&self, id: Uuid) -> Result<Option<types::ApiClient>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let row: Option<(Json<types::ApiClient>,)> =
                sqlx::query_as("SELECT doc FROM gateway_api_clients WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
            Ok(row.map(|(Json(client),)| client))
        })
    }

    /// The client presenting `client_id` to the token endpoint, with its secret hash.
    pub async fn client_by_public_id(&self, client_id: &str) -> Result<Option<StoredClient>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let row: Option<(Json<types::ApiClient>, String)> =
                sqlx::query_as("SELECT doc, secret_hash FROM gateway_api_clients WHERE client_id = $1")
                    .bind(client_id)
                    .fetch_optional(pool)
                    .await?;
            Ok(row.map(|(Json(client), secret_hash)| StoredClient { client, secret_hash }))
        })
    }

    pub async fn insert_client(&self, client: &types::ApiClient, secret_hash: &str) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            sqlx::query(
                "INSERT INTO gateway_api_clients (id, client_id, tenant, name, secret_hash, doc) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(client.id)
            .bind(client.client_id.as_str())
            .bind(client.tenant.as_str())
            .bind(client.name.as_str())
            .bind(secret_hash)
            .bind(Json(client))
            .execute(pool)
            .await?;
            notify(&self.store, client.id).await
        })
    }

    /// Replaces a client's document, and its secret hash when one is given.
    pub async fn update_client(&self, client: &types::ApiClient, secret_hash: Option<&str>) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let updated = sqlx::query(
                "UPDATE gateway_api_clients SET name = $1, doc = $2, secret_hash = COALESCE($3, secret_hash) \
                 WHERE id = $4",
            )
            .bind(client.name.as_str())
            .bind(Json(client))
            .bind(secret_hash)
            .bind(client.id)
            .execute(pool)
            .await?
            .rows_affected();
            self.changed(updated, client.id).await
        })
    }

    pub async fn delete_client(&self, id: Uuid) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let deleted = sqlx::query("DELETE FROM gateway_api_clients WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected();
            self.changed(deleted, id).await
        })
    }

    /// Every rate-limit policy, ordered by name.
    pub async fn policies(&self) -> Result<Vec<types::RateLimitPolicy>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let rows: Vec<(Json<types::RateLimitPolicy>,)> =
                sqlx::query_as("SELECT doc FROM gateway_rate_limit_policies ORDER BY name").fetch_all(pool).await?;
            Ok(rows.into_iter().map(|(Json(policy),)| policy).collect())
        })
    }

    pub async fn policy(&self, id: Uuid) -> Result<Option<types::RateLimitPolicy>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let row: Option<(Json<types::RateLimitPolicy>,)> =
                sqlx::query_as("SELECT doc FROM gateway_rate_limit_policies WHERE id = $1")
                    .bind(id)
                    .fetch_optional(pool)
                    .await?;
            Ok(row.map(|(Json(policy),)| policy))
        })
    }

    pub async fn insert_policy(&self, policy: &types::RateLimitPolicy) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            sqlx::query("INSERT INTO gateway_rate_limit_policies (id, name, doc) VALUES ($1, $2, $3)")
                .bind(policy.id)
                .bind(policy.name.as_str())
                .bind(Json(policy))
                .execute(pool)
                .await?;
            notify(&self.store, policy.id).await
        })
    }

    pub async fn replace_policy(&self, policy: &types::RateLimitPolicy) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let updated = sqlx::query("UPDATE gateway_rate_limit_policies SET name = $1, doc = $2 WHERE id = $3")
                .bind(policy.name.as_str())
                .bind(Json(policy))
                .bind(policy.id)
                .execute(pool)
                .await?
                .rows_affected();
            self.changed(updated, policy.id).await
        })
    }

    pub async fn delete_policy(&self, id: Uuid) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let deleted = sqlx::query("DELETE FROM gateway_rate_limit_policies WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected();
            self.changed(deleted, id).await
        })
    }
}
