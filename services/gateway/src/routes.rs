//! Routes: which service answers which API version and path prefix, persisted beside the
//! registry in the platform database, and the in-memory table the data plane matches
//! against (swapped whole on every change, read without locks).

use pake_gateway_server::types;
use pake_registry::store::{Store, StoreError};
use pake_registry::with_pool;
use sqlx::types::Json;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// The channel replicas listen on for changes of routes, API clients and rate-limit policies.
pub const ROUTE_CHANNEL: &str = "pake_gateway_routes";

/// Reads and writes the `gateway_routes` table.
#[derive(Clone, Debug)]
pub struct RouteStore {
    store: Store,
}

impl RouteStore {
    pub fn new(store: Store) -> RouteStore {
        RouteStore { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn all(&self) -> Result<Vec<types::Route>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let rows: Vec<(Json<types::Route>,)> =
                sqlx::query_as("SELECT doc FROM gateway_routes ORDER BY name").fetch_all(pool).await?;
            Ok(rows.into_iter().map(|(Json(route),)| route).collect())
        })
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<types::Route>, StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let row: Option<(Json<types::Route>,)> =
                sqlx::query_as("SELECT doc FROM gateway_routes WHERE id = $1").bind(id).fetch_optional(pool).await?;
            Ok(row.map(|(Json(route),)| route))
        })
    }

    pub async fn insert(&self, route: &types::Route) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            sqlx::query("INSERT INTO gateway_routes (id, name, doc, version) VALUES ($1, $2, $3, $4)")
                .bind(route.id)
                .bind(route.name.as_str())
                .bind(Json(route))
                .bind(route.version.get() as i64)
                .execute(pool)
                .await?;
            notify(&self.store, route.id).await
        })
    }

    /// Replaces a route if its stored version is `expected`.
    pub async fn replace(&self, route: &types::Route, expected: i64) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let updated = sqlx::query(
                "UPDATE gateway_routes SET name = $1, doc = $2, version = $3 WHERE id = $4 AND version = $5",
            )
            .bind(route.name.as_str())
            .bind(Json(route))
            .bind(route.version.get() as i64)
            .bind(route.id)
            .bind(expected)
            .execute(pool)
            .await?
            .rows_affected();
            if updated == 0 {
                let current: Option<(i64,)> = sqlx::query_as("SELECT version FROM gateway_routes WHERE id = $1")
                    .bind(route.id)
                    .fetch_optional(pool)
                    .await?;
                return Err(match current {
                    Some((actual,)) => StoreError::Stale { expected, actual },
                    None => StoreError::NotFound,
                });
            }
            notify(&self.store, route.id).await
        })
    }

    /// Deletes a route, if `expected` is given only at that version.
    pub async fn delete(&self, id: Uuid, expected: Option<i64>) -> Result<(), StoreError> {
        with_pool!(&self.store, |pool, backend| {
            let current: Option<(i64,)> = sqlx::query_as("SELECT version FROM gateway_routes WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?;
            let Some((actual,)) = current else { return Err(StoreError::NotFound) };
            if let Some(expected) = expected
                && expected != actual
            {
                return Err(StoreError::Stale { expected, actual });
            }
            let deleted = sqlx::query("DELETE FROM gateway_routes WHERE id = $1 AND version = $2")
                .bind(id)
                .bind(actual)
                .execute(pool)
                .await?
                .rows_affected();
            if deleted == 0 {
                return Err(StoreError::Stale { expected: actual, actual: actual + 1 });
            }
            notify(&self.store, id).await
        })
    }
}

/// Tells every gateway replica that the routes changed (PostgreSQL only; an embedded
/// gateway reloads its own table after each write).
pub async fn notify(store: &Store, id: Uuid) -> Result<(), StoreError> {
    if let Some(pool) = store.postgres_pool() {
        sqlx::query("SELECT pg_notify($1, $2)").bind(ROUTE_CHANNEL).bind(id.to_string()).execute(pool).await?;
    }
    Ok(())
}

/// A route ready for matching.
#[derive(Debug)]
pub struct CompiledRoute {
    pub route: types::Route,
    /// The prefix without a trailing slash ("" for a route on the whole version).
    pub prefix: String,
    /// The prefix's segments, removed from the path sent upstream when the route strips it.
    pub segments: usize,
    pub methods: Vec<axum::http::Method>,
    /// `GET, HEAD` for the 405 answer.
    pub allow: String,
    pub metrics: crate::proxy::RouteMetrics,
    /// What a request's span names: the route template (`/v1/search`) and the service,
    /// made once per route table rather than once per traced request.
    pub template: Arc<str>,
    pub service: Arc<str>,
}

/// Routes grouped by API version, longest prefix first, then highest priority.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_version: BTreeMap<String, Vec<CompiledRoute>>,
}

/// What matching a request found.
pub enum Match<'t, 'p> {
    Route {
        route: &'t CompiledRoute,
        /// The path after the version segment.
        rest: &'p str,
    },
    /// The path matches routes, none of which takes this method.
    MethodNotAllowed {
        allow: String,
    },
    NoRoute,
}

impl RouteTable {
    pub fn new(routes: Vec<types::Route>, metrics: &crate::proxy::ProxyMetrics) -> RouteTable {
        let mut by_version: BTreeMap<String, Vec<CompiledRoute>> = BTreeMap::new();
        for route in routes {
            let prefix = route.path_prefix.trim_end_matches('/').to_string();
            let methods: Vec<axum::http::Method> = route
                .methods
                .iter()
                .filter_map(|m| axum::http::Method::from_bytes(m.to_string().as_bytes()).ok())
                .collect();
            let mut allow: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
            allow.sort();
            let metrics = metrics.for_route(route.name.as_str(), route.service.as_str(), route.path_prefix.as_str());
            let segments = crate::path::segment_count(&prefix);
            let template = format!("/{}{prefix}", route.api_version.as_str()).into();
            let service = route.service.as_str().into();
            let compiled =
                CompiledRoute { prefix, segments, methods, allow: allow.join(", "), metrics, template, service, route };
            by_version.entry(compiled.route.api_version.to_string()).or_default().push(compiled);
        }
        for routes in by_version.values_mut() {
            routes.sort_by(|a, b| b.prefix.len().cmp(&a.prefix.len()).then(b.route.priority.cmp(&a.route.priority)));
        }
        RouteTable { by_version }
    }

    /// Matches `/{version}{rest}`, a normalised path with merged slashes
    /// ([`crate::path`]): the longest prefix of whole segments (a request segment's
    /// parameters ignored), then the highest priority, among routes that take `method`.
    pub fn find<'t, 'p>(&'t self, method: &axum::http::Method, path: &'p str) -> Match<'t, 'p> {
        let Some(after_slash) = path.strip_prefix('/') else { return Match::NoRoute };
        let (version, rest) = match after_slash.find('/') {
            Some(at) => (&after_slash[..at], &after_slash[at..]),
            None => (after_slash, ""),
        };
        let Some(routes) = self.by_version.get(version) else { return Match::NoRoute };
        let mut allow: Option<String> = None;
        for compiled in routes {
            if !crate::path::has_prefix(rest, &compiled.prefix) {
                continue;
            }
            if compiled.methods.iter().any(|m| m == method) {
                return Match::Route { route: compiled, rest };
            }
            allow.get_or_insert_with(|| compiled.allow.clone());
        }
        match allow {
            Some(allow) => Match::MethodNotAllowed { allow },
            None => Match::NoRoute,
        }
    }

    /// Every route in the table.
    pub fn routes(&self) -> impl Iterator<Item = &CompiledRoute> {
        self.by_version.values().flatten()
    }

    pub fn len(&self) -> usize {
        self.by_version.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A route on `/` of `v1` with `cache`, for tests.
#[cfg(test)]
pub(crate) fn test_route(cache: serde_json::Value) -> types::Route {
    serde_json::from_value(serde_json::json!({
        "id": Uuid::new_v4(), "name": "r", "path_prefix": "/", "methods": ["GET"], "api_version": "v1",
        "service": "svc", "strip_prefix": false, "merge_slashes": true, "timeout_ms": 1000, "retry": {"max_attempts": 0},
        "cache": cache, "rate_limit_policy_id": null, "required_scopes": [], "require_token": false,
        "priority": 0, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "version": 1
    }))
    .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(name: &str, version: &str, prefix: &str, methods: &[&str], priority: u64) -> types::Route {
        serde_json::from_value(json!({
            "id": Uuid::new_v4(), "name": name, "path_prefix": prefix, "methods": methods, "api_version": version,
            "service": "svc", "strip_prefix": false, "merge_slashes": true, "timeout_ms": 1000, "retry": {"max_attempts": 0},
            "cache": {"enabled": false}, "rate_limit_policy_id": null, "required_scopes": [], "require_token": false,
            "priority": priority,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "version": 1
        }))
        .unwrap()
    }

    fn matched(table: &RouteTable, method: &str, path: &str) -> String {
        match table.find(&axum::http::Method::from_bytes(method.as_bytes()).unwrap(), path) {
            Match::Route { route, rest } => format!("{} {rest}", route.route.name.as_str()),
            Match::MethodNotAllowed { allow } => format!("405 {allow}"),
            Match::NoRoute => "404".into(),
        }
    }

    #[test]
    fn longest_prefix_then_priority_at_segment_boundaries() {
        let metrics = crate::proxy::ProxyMetrics::new(&pake_observe::Metrics::new("test"));
        let table = RouteTable::new(
            vec![
                route("search", "v1", "/search", &["GET"], 0),
                route("search-docs", "v1", "/search/docs", &["GET", "POST"], 0),
                route("search-v2", "v2", "/search", &["GET"], 0),
                route("low", "v1", "/x", &["GET"], 1),
                route("high", "v1", "/x", &["GET"], 5),
                route("everything", "v3", "/", &["GET"], 0),
            ],
            &metrics,
        );
        assert_eq!(matched(&table, "GET", "/v1/search"), "search /search");
        assert_eq!(matched(&table, "GET", "/v1/search/abc"), "search /search/abc");
        assert_eq!(matched(&table, "GET", "/v1/search/docs/7"), "search-docs /search/docs/7");
        assert_eq!(matched(&table, "GET", "/v1/searching"), "404");
        assert_eq!(matched(&table, "GET", "/v1/search;p=1/docs/7"), "search-docs /search;p=1/docs/7");
        assert_eq!(matched(&table, "GET", "/v1/search;p=1"), "search /search;p=1");
        assert_eq!(matched(&table, "GET", "/v2/search"), "search-v2 /search");
        assert_eq!(matched(&table, "GET", "/v1/x"), "high /x");
        assert_eq!(matched(&table, "DELETE", "/v1/search"), "405 GET");
        assert_eq!(matched(&table, "GET", "/v3/anything/at/all"), "everything /anything/at/all");
        assert_eq!(matched(&table, "GET", "/v9/search"), "404");
        assert_eq!(matched(&table, "GET", "/"), "404");
    }
}
