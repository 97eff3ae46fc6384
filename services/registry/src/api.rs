//! The service-mesh contract's handlers: each turns a validated request into a call on
//! the [`Registry`] and its result into the contract's response. No SQL and no rules live
//! here; [`RegistryError`] is mapped to statuses in one place, [`api_error`].

use crate::registry::Idempotency;
use crate::registry::{Registry, RegistryError};
use crate::store::{Backend, StoreError};
use axum::http::StatusCode;
use pake_api_runtime::{ApiError, Principal};
use pake_mesh_server::*;
use pake_observe::Metrics;
use pake_tokens::TokenVerifier;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Seconds a client should wait before retrying when the store is down.
const RETRY_AFTER_SECONDS: u64 = 2;

pub struct RegistryApi {
    registry: Arc<Registry>,
    verifier: TokenVerifier,
    metrics: Metrics,
    services: Gauge,
    instances: Gauge,
}

impl RegistryApi {
    pub fn new(registry: Arc<Registry>, verifier: TokenVerifier, metrics: Metrics) -> RegistryApi {
        let services = Gauge::default();
        let instances = Gauge::default();
        metrics.register("services", "Registered services", services.clone());
        metrics.register("instances", "Registered instances, whatever their status", instances.clone());
        RegistryApi { registry, verifier, metrics, services, instances }
    }
}

/// The one mapping from registry errors to HTTP answers.
pub fn api_error(error: RegistryError) -> ApiError {
    match error {
        RegistryError::NotFound(message) => ApiError::not_found(message),
        RegistryError::Conflict(message) => ApiError::conflict(message),
        RegistryError::PreconditionFailed(message) => ApiError::precondition_failed(message),
        RegistryError::Invalid(message) => ApiError::unprocessable(message),
        RegistryError::BadCursor(message) => ApiError::bad_request("invalid_cursor", message),
        RegistryError::ConflictingPreconditions(message) => ApiError::bad_request("conflicting_preconditions", message),
        RegistryError::Unavailable(StoreError::Down) => ApiError::unavailable(
            "the registry store is unavailable: it stopped answering, and requests that need it fail at once \
             until it answers again",
            RETRY_AFTER_SECONDS,
        ),
        RegistryError::Unavailable(source) => {
            tracing::warn!(error = %source, "store unavailable");
            ApiError::unavailable("the registry store is unavailable", RETRY_AFTER_SECONDS)
        }
        RegistryError::OutcomeUnknown(source) => {
            tracing::warn!(error = %source, "store lost while committing a write");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                "the registry store stopped answering while this write was committing, so it may or may not have \
                 been applied: read the resource back before retrying, or retry registerService with the same \
                 Idempotency-Key",
            )
            .with_retry_after(RETRY_AFTER_SECONDS)
        }
        RegistryError::KeyReused(message) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", message)
        }
        RegistryError::Internal(source) => ApiError::internal(source.as_ref()),
    }
}

fn etag(revision: u64) -> String {
    format!("\"{revision}\"")
}

/// `"7"` → 7. The router has already checked the contract's pattern.
fn if_match(header: Option<&String>) -> Result<Option<i64>, ApiError> {
    header
        .map(|value| {
            // Revisions are i64; a larger tag (the contract allows 19 digits) matches none.
            value.trim_matches('"').parse::<u64>().map(|v| i64::try_from(v).unwrap_or(i64::MAX)).map_err(|_| {
                ApiError::bad_request("invalid_parameter", "header If-Match: expected a quoted revision such as \"3\"")
            })
        })
        .transpose()
}

fn environment(text: &str) -> Result<types::Environment, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request("invalid_parameter", format!("path parameter environment: {text:?}")))
}

/// Text the registry writes into a constrained field of an answer; text the contract
/// refuses is a bug, answered 500.
fn text<T>(value: &str) -> Result<T, ApiError>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + 'static,
{
    value.parse().map_err(|error: T::Err| ApiError::internal(&error))
}

fn health(
    status: types::HealthStatus,
    checks: HashMap<String, Vec<types::HealthCheckResult>>,
) -> Result<types::Health, ApiError> {
    Ok(types::Health {
        status,
        version: Some(text(env!("CARGO_PKG_VERSION"))?),
        description: Some(text("pake service mesh")?),
        checks,
    })
}

impl ServiceMeshApi for RegistryApi {
    async fn authenticate(&self, bearer_token: String) -> Result<Principal, ApiError> {
        self.verifier.verify(&bearer_token)
    }

    async fn get_liveness(&self, _request: GetLivenessRequest) -> Result<GetLivenessResponse, ApiError> {
        Ok(GetLivenessResponse::Ok(health(types::HealthStatus::Pass, HashMap::new())?))
    }

    async fn get_readiness(&self, _request: GetReadinessRequest) -> Result<GetReadinessResponse, ApiError> {
        let started = std::time::Instant::now();
        let ping = if self.registry.breaker().is_open() {
            // Known to be down: say so at once rather than wait for the ping to time out.
            Ok(Err(StoreError::Down))
        } else {
            tokio::time::timeout(Duration::from_secs(1), self.registry.store().ping()).await
        };
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let component = match self.registry.store().backend() {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        };
        let now = chrono::Utc::now();
        let (status, output) = match ping {
            Ok(Ok(())) => (types::HealthStatus::Pass, None),
            Ok(Err(error)) => (types::HealthStatus::Fail, Some(error.to_string())),
            Err(_) => (types::HealthStatus::Fail, Some("no answer within 1 s".to_string())),
        };
        let check = types::HealthCheckResult {
            component_id: Some(text(component)?),
            component_type: Some(types::HealthCheckResultComponentType::Datastore),
            status,
            observed_value: Some(elapsed_ms),
            observed_unit: Some(text("ms")?),
            output: output.map(|output| text(&output.chars().take(1000).collect::<String>())).transpose()?,
            time: now,
        };
        let body = health(status, HashMap::from([("store:connection".to_string(), vec![check])]))?;
        Ok(if status == types::HealthStatus::Pass {
            GetReadinessResponse::Ok(body)
        } else {
            GetReadinessResponse::ServiceUnavailable { body, retry_after: RETRY_AFTER_SECONDS }
        })
    }

    async fn get_metrics(&self, _request: GetMetricsRequest) -> Result<GetMetricsResponse, ApiError> {
        let snapshot = self.registry.snapshot();
        self.services.set(snapshot.len() as i64);
        self.instances.set(snapshot.services().iter().map(|s| s.instances.len() as i64).sum());
        Ok(GetMetricsResponse::Ok(self.metrics.render()))
    }

    async fn register_service(&self, request: RegisterServiceRequest) -> Result<RegisterServiceResponse, ApiError> {
        let idempotency = request
            .idempotency_key
            .as_deref()
            .map(|key| Idempotency { owner: request.principal.subject.as_str(), key });
        let service = self.registry.register_service(request.body, idempotency).await.map_err(api_error)?;
        Ok(RegisterServiceResponse::Created { location: format!("/api/v1/services/{}", service.id), body: service })
    }

    async fn list_services(&self, request: ListServicesRequest) -> Result<ListServicesResponse, ApiError> {
        let page = self
            .registry
            .list_services(
                request.name_prefix.as_deref(),
                request.tag.as_deref(),
                request.limit,
                request.cursor.as_deref(),
            )
            .map_err(api_error)?;
        Ok(ListServicesResponse::Ok(types::ServiceList { items: page.items, next_cursor: page.next_cursor }))
    }

    async fn get_service(&self, request: GetServiceRequest) -> Result<GetServiceResponse, ApiError> {
        let service = self.registry.get_service(request.service_id).map_err(api_error)?;
        Ok(GetServiceResponse::Ok { etag: etag(service.revision.get()), body: service })
    }

    async fn update_service(&self, request: UpdateServiceRequest) -> Result<UpdateServiceResponse, ApiError> {
        let expected = if_match(request.if_match.as_ref())?;
        let service =
            self.registry.update_service(request.service_id, request.body, expected).await.map_err(api_error)?;
        Ok(UpdateServiceResponse::Ok { etag: etag(service.revision.get()), body: service })
    }

    async fn deregister_service(
        &self,
        request: DeregisterServiceRequest,
    ) -> Result<DeregisterServiceResponse, ApiError> {
        self.registry.deregister_service(request.service_id).await.map_err(api_error)?;
        Ok(DeregisterServiceResponse::NoContent)
    }

    async fn register_instance(&self, request: RegisterInstanceRequest) -> Result<RegisterInstanceResponse, ApiError> {
        let instance = self.registry.register_instance(request.service_id, request.body).await.map_err(api_error)?;
        Ok(RegisterInstanceResponse::Created {
            location: format!("/api/v1/services/{}/instances/{}", instance.service_id, instance.id),
            body: instance,
        })
    }

    async fn list_instances(&self, request: ListInstancesRequest) -> Result<ListInstancesResponse, ApiError> {
        let page = self
            .registry
            .list_instances(request.service_id, request.status, request.limit, request.cursor.as_deref())
            .map_err(api_error)?;
        Ok(ListInstancesResponse::Ok(types::InstanceList { items: page.items, next_cursor: page.next_cursor }))
    }

    async fn get_instance(&self, request: GetInstanceRequest) -> Result<GetInstanceResponse, ApiError> {
        let instance = self.registry.get_instance(request.service_id, request.instance_id).map_err(api_error)?;
        Ok(GetInstanceResponse::Ok(instance))
    }

    async fn deregister_instance(
        &self,
        request: DeregisterInstanceRequest,
    ) -> Result<DeregisterInstanceResponse, ApiError> {
        self.registry.deregister_instance(request.service_id, request.instance_id).await.map_err(api_error)?;
        Ok(DeregisterInstanceResponse::NoContent)
    }

    async fn heartbeat_instance(
        &self,
        request: HeartbeatInstanceRequest,
    ) -> Result<HeartbeatInstanceResponse, ApiError> {
        let instance =
            self.registry.heartbeat(request.service_id, request.instance_id, request.body).await.map_err(api_error)?;
        Ok(HeartbeatInstanceResponse::Ok(instance))
    }

    async fn discover_service(&self, request: DiscoverServiceRequest) -> Result<DiscoverServiceResponse, ApiError> {
        let discovery = self
            .registry
            .discover(
                &request.service_name,
                request.index,
                Duration::from_secs(request.wait_seconds),
                request.tag.as_deref(),
                request.zone.as_deref(),
                request.passing_only,
            )
            .await
            .map_err(api_error)?;
        Ok(DiscoverServiceResponse::Ok { x_pake_index: discovery.index.max(0) as u64, body: discovery })
    }

    async fn list_dependencies(&self, request: ListDependenciesRequest) -> Result<ListDependenciesResponse, ApiError> {
        let page = self
            .registry
            .list_dependencies(request.service_id, request.limit, request.cursor.as_deref())
            .map_err(api_error)?;
        Ok(ListDependenciesResponse::Ok(types::DependencyList { items: page.items, next_cursor: page.next_cursor }))
    }

    async fn create_dependency(&self, request: CreateDependencyRequest) -> Result<CreateDependencyResponse, ApiError> {
        let dependency = self.registry.create_dependency(request.service_id, request.body).await.map_err(api_error)?;
        Ok(CreateDependencyResponse::Created {
            location: format!("/api/v1/services/{}/dependencies/{}", dependency.service_id, dependency.id),
            body: dependency,
        })
    }

    async fn get_dependency(&self, request: GetDependencyRequest) -> Result<GetDependencyResponse, ApiError> {
        let dependency = self.registry.get_dependency(request.service_id, request.dependency_id).map_err(api_error)?;
        Ok(GetDependencyResponse::Ok(dependency))
    }

    async fn delete_dependency(&self, request: DeleteDependencyRequest) -> Result<DeleteDependencyResponse, ApiError> {
        self.registry.delete_dependency(request.service_id, request.dependency_id).await.map_err(api_error)?;
        Ok(DeleteDependencyResponse::NoContent)
    }

    async fn get_dependency_graph(
        &self,
        request: GetDependencyGraphRequest,
    ) -> Result<GetDependencyGraphResponse, ApiError> {
        let graph = self.registry.dependency_graph(request.root.as_deref()).map_err(api_error)?;
        Ok(GetDependencyGraphResponse::Ok(graph))
    }

    async fn get_traffic_policy(&self, request: GetTrafficPolicyRequest) -> Result<GetTrafficPolicyResponse, ApiError> {
        let policy = self.registry.traffic_policy(request.service_id).map_err(api_error)?;
        Ok(GetTrafficPolicyResponse::Ok { etag: etag(policy.revision.get()), body: policy })
    }

    async fn replace_traffic_policy(
        &self,
        request: ReplaceTrafficPolicyRequest,
    ) -> Result<ReplaceTrafficPolicyResponse, ApiError> {
        let expected = if_match(request.if_match.as_ref())?;
        let policy = self
            .registry
            .replace_traffic_policy(request.service_id, request.body, expected)
            .await
            .map_err(api_error)?;
        Ok(ReplaceTrafficPolicyResponse::Ok { etag: etag(policy.revision.get()), body: policy })
    }

    async fn list_config_entries(
        &self,
        request: ListConfigEntriesRequest,
    ) -> Result<ListConfigEntriesResponse, ApiError> {
        let page = self
            .registry
            .list_config(
                &request.service_name,
                environment(&request.environment)?,
                request.key_prefix.as_deref(),
                request.limit,
                request.cursor.as_deref(),
            )
            .await
            .map_err(api_error)?;
        Ok(ListConfigEntriesResponse::Ok(types::ConfigEntryList { items: page.items, next_cursor: page.next_cursor }))
    }

    async fn get_config_entry(&self, request: GetConfigEntryRequest) -> Result<GetConfigEntryResponse, ApiError> {
        let entry = self
            .registry
            .get_config(&request.service_name, environment(&request.environment)?, &request.key)
            .await
            .map_err(api_error)?;
        Ok(GetConfigEntryResponse::Ok { etag: etag(entry.version.get()), body: entry })
    }

    async fn put_config_entry(&self, request: PutConfigEntryRequest) -> Result<PutConfigEntryResponse, ApiError> {
        let expected = if_match(request.if_match.as_ref())?;
        let entry = self
            .registry
            .put_config(
                &request.service_name,
                environment(&request.environment)?,
                &request.key,
                request.body,
                expected,
                &request.principal.subject,
            )
            .await
            .map_err(api_error)?;
        Ok(PutConfigEntryResponse::Ok { etag: etag(entry.version.get()), body: entry })
    }

    async fn delete_config_entry(
        &self,
        request: DeleteConfigEntryRequest,
    ) -> Result<DeleteConfigEntryResponse, ApiError> {
        self.registry
            .delete_config(
                &request.service_name,
                environment(&request.environment)?,
                &request.key,
                request.expected_version.map(|v| v as i64),
                &request.principal.subject,
            )
            .await
            .map_err(api_error)?;
        Ok(DeleteConfigEntryResponse::NoContent)
    }

    async fn list_config_history(
        &self,
        request: ListConfigHistoryRequest,
    ) -> Result<ListConfigHistoryResponse, ApiError> {
        let page = self
            .registry
            .config_history(
                &request.service_name,
                environment(&request.environment)?,
                &request.key,
                request.limit,
                request.cursor.as_deref(),
            )
            .await
            .map_err(api_error)?;
        Ok(ListConfigHistoryResponse::Ok(types::ConfigVersionList { items: page.items, next_cursor: page.next_cursor }))
    }
}
