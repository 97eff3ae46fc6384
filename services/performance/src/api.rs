//! The performance contract's handlers: each turns a validated request into a call on
//! [`Performance`] and its result into the contract's response; [`api_error`] maps errors
//! to statuses in one place.

use crate::performance::{Page, Performance, PerformanceError};
use axum::http::StatusCode;
use pake_api_runtime::{ApiError, DetailLocation, ErrorDetail, Principal};
use pake_performance_server::*;
use pake_registry::store::Backend;
use pake_tokens::TokenVerifier;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Seconds a client should wait before retrying when the store is down.
const RETRY_AFTER_SECONDS: u64 = 2;

pub struct PerformanceApi {
    performance: Arc<Performance>,
    verifier: TokenVerifier,
}

impl PerformanceApi {
    pub fn new(performance: Arc<Performance>, verifier: TokenVerifier) -> PerformanceApi {
        PerformanceApi { performance, verifier }
    }
}

/// The one mapping from the service's errors to HTTP answers.
pub fn api_error(error: PerformanceError) -> ApiError {
    match error {
        PerformanceError::NotFound(message) => ApiError::not_found(message),
        PerformanceError::Conflict(message) => ApiError::conflict(message),
        PerformanceError::Invalid { field, message } => ApiError::unprocessable(format!("{field}: {message}"))
            .with_details(vec![ErrorDetail { location: DetailLocation::Body, field: Some(field), message }]),
        PerformanceError::BadParameter { parameter, message } => {
            ApiError::bad_request("invalid_parameter", format!("query parameter {parameter}: {message}")).with_details(
                vec![ErrorDetail { location: DetailLocation::Query, field: Some(parameter.into()), message }],
            )
        }
        PerformanceError::BadCursor => ApiError::bad_request("invalid_cursor", "cursor is not one this server issued"),
        PerformanceError::NoRunner(message) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "benchmarks_unavailable", message)
                .with_retry_after(RETRY_AFTER_SECONDS)
        }
        PerformanceError::Unavailable(source) => {
            tracing::warn!(error = %source, "store unavailable");
            ApiError::unavailable("the performance store is unavailable", RETRY_AFTER_SECONDS)
        }
        PerformanceError::Internal(source) => ApiError::internal(source.as_ref()),
    }
}

fn list<T: serde::Serialize, L: serde::de::DeserializeOwned>(page: Page<T>) -> Result<L, ApiError> {
    serde_json::from_value(json!({"items": page.items, "next_cursor": page.next_cursor}))
        .map_err(|error| ApiError::internal(&error))
}

fn health(status: &str, checks: serde_json::Value) -> Result<types::Health, ApiError> {
    serde_json::from_value(json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "service_id": "performance",
        "checks": checks,
    }))
    .map_err(|error| ApiError::internal(&error))
}

impl pake_performance_server::PerformanceApi for PerformanceApi {
    async fn authenticate(&self, bearer_token: String) -> Result<Principal, ApiError> {
        self.verifier.verify(&bearer_token)
    }

    async fn get_liveness(&self, _request: GetLivenessRequest) -> Result<GetLivenessResponse, ApiError> {
        Ok(GetLivenessResponse::Ok(health("pass", json!({}))?))
    }

    async fn get_readiness(&self, _request: GetReadinessRequest) -> Result<GetReadinessResponse, ApiError> {
        let started = std::time::Instant::now();
        let store = self.performance.store().store();
        let ping = tokio::time::timeout(Duration::from_secs(1), store.ping()).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let component = match store.backend() {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        };
        let (status, output) = match ping {
            Ok(Ok(())) => ("pass", None),
            Ok(Err(error)) => ("fail", Some(error.to_string())),
            Err(_) => ("fail", Some("no answer within 1 s".to_string())),
        };
        let mut check = json!({
            "component_id": component, "component_type": "datastore", "status": status,
            "observed_value": elapsed_ms, "observed_unit": "ms", "time": chrono::Utc::now(),
        });
        if let Some(output) = output {
            check["output"] = json!(output.chars().take(1000).collect::<String>());
        }
        let body = health(status, json!({ "store:connection": [check] }))?;
        Ok(if status == "pass" {
            GetReadinessResponse::Ok(body)
        } else {
            GetReadinessResponse::ServiceUnavailable { body, retry_after: RETRY_AFTER_SECONDS }
        })
    }

    async fn get_metrics(&self, _request: GetMetricsRequest) -> Result<GetMetricsResponse, ApiError> {
        Ok(GetMetricsResponse::Ok(self.performance.metrics().render()))
    }

    async fn list_slos(&self, request: ListSlosRequest) -> Result<ListSlosResponse, ApiError> {
        let page = self
            .performance
            .list_slos(request.service.as_deref(), request.objective, request.limit, request.cursor.as_deref())
            .await
            .map_err(api_error)?;
        Ok(ListSlosResponse::Ok(list(page)?))
    }

    async fn create_slo(&self, request: CreateSloRequest) -> Result<CreateSloResponse, ApiError> {
        let slo = self.performance.create_slo(&request.body).await.map_err(api_error)?;
        Ok(CreateSloResponse::Created { location: format!("/api/v1/slos/{}", slo.id), body: slo })
    }

    async fn get_slo(&self, request: GetSloRequest) -> Result<GetSloResponse, ApiError> {
        Ok(GetSloResponse::Ok(self.performance.get_slo(request.slo_id).await.map_err(api_error)?))
    }

    async fn replace_slo(&self, request: ReplaceSloRequest) -> Result<ReplaceSloResponse, ApiError> {
        let slo = self.performance.replace_slo(request.slo_id, &request.body).await.map_err(api_error)?;
        Ok(ReplaceSloResponse::Ok(slo))
    }

    async fn delete_slo(&self, request: DeleteSloRequest) -> Result<DeleteSloResponse, ApiError> {
        self.performance.delete_slo(request.slo_id).await.map_err(api_error)?;
        Ok(DeleteSloResponse::NoContent)
    }

    async fn get_slo_report(&self, request: GetSloReportRequest) -> Result<GetSloReportResponse, ApiError> {
        let report = self.performance.slo_report(request.slo_id, request.at).await.map_err(api_error)?;
        Ok(GetSloReportResponse::Ok(report))
    }

    async fn ingest_samples(&self, request: IngestSamplesRequest) -> Result<IngestSamplesResponse, ApiError> {
        let accepted = self.performance.ingest(&request.body).await.map_err(api_error)?;
        let body =
            serde_json::from_value(json!({ "accepted": accepted })).map_err(|error| ApiError::internal(&error))?;
        Ok(IngestSamplesResponse::Accepted(body))
    }

    async fn get_service_stats(&self, request: GetServiceStatsRequest) -> Result<GetServiceStatsResponse, ApiError> {
        let stats = self
            .performance
            .stats(&request.service_name, request.window, request.route.as_deref())
            .await
            .map_err(api_error)?;
        Ok(GetServiceStatsResponse::Ok(stats))
    }

    async fn list_benchmarks(&self, request: ListBenchmarksRequest) -> Result<ListBenchmarksResponse, ApiError> {
        let page = self
            .performance
            .list_benchmarks(request.status, request.service.as_deref(), request.limit, request.cursor.as_deref())
            .await
            .map_err(api_error)?;
        Ok(ListBenchmarksResponse::Ok(list(page)?))
    }

    async fn start_benchmark(&self, request: StartBenchmarkRequest) -> Result<StartBenchmarkResponse, ApiError> {
        let benchmark = self.performance.start_benchmark(&request.body).await.map_err(api_error)?;
        Ok(StartBenchmarkResponse::Accepted {
            location: format!("/api/v1/benchmarks/{}", benchmark.id),
            body: benchmark,
        })
    }

    async fn get_benchmark(&self, request: GetBenchmarkRequest) -> Result<GetBenchmarkResponse, ApiError> {
        Ok(GetBenchmarkResponse::Ok(self.performance.get_benchmark(request.benchmark_id).await.map_err(api_error)?))
    }

    async fn cancel_benchmark(&self, request: CancelBenchmarkRequest) -> Result<CancelBenchmarkResponse, ApiError> {
        let benchmark = self.performance.cancel_benchmark(request.benchmark_id).await.map_err(api_error)?;
        Ok(CancelBenchmarkResponse::Ok(benchmark))
    }

    async fn list_autoscaling_policies(
        &self,
        request: ListAutoscalingPoliciesRequest,
    ) -> Result<ListAutoscalingPoliciesResponse, ApiError> {
        let page = self
            .performance
            .list_policies(request.service.as_deref(), request.limit, request.cursor.as_deref())
            .await
            .map_err(api_error)?;
        Ok(ListAutoscalingPoliciesResponse::Ok(list(page)?))
    }

    async fn create_autoscaling_policy(
        &self,
        request: CreateAutoscalingPolicyRequest,
    ) -> Result<CreateAutoscalingPolicyResponse, ApiError> {
        let policy = self.performance.create_policy(&request.body).await.map_err(api_error)?;
        Ok(CreateAutoscalingPolicyResponse::Created {
            location: format!("/api/v1/autoscaling-policies/{}", policy.id),
            body: policy,
        })
    }

    async fn get_autoscaling_policy(
        &self,
        request: GetAutoscalingPolicyRequest,
    ) -> Result<GetAutoscalingPolicyResponse, ApiError> {
        Ok(GetAutoscalingPolicyResponse::Ok(self.performance.get_policy(request.policy_id).await.map_err(api_error)?))
    }

    async fn replace_autoscaling_policy(
        &self,
        request: ReplaceAutoscalingPolicyRequest,
    ) -> Result<ReplaceAutoscalingPolicyResponse, ApiError> {
        let policy = self.performance.replace_policy(request.policy_id, &request.body).await.map_err(api_error)?;
        Ok(ReplaceAutoscalingPolicyResponse::Ok(policy))
    }

    async fn delete_autoscaling_policy(
        &self,
        request: DeleteAutoscalingPolicyRequest,
    ) -> Result<DeleteAutoscalingPolicyResponse, ApiError> {
        self.performance.delete_policy(request.policy_id).await.map_err(api_error)?;
        Ok(DeleteAutoscalingPolicyResponse::NoContent)
    }

    async fn get_autoscaling_recommendation(
        &self,
        request: GetAutoscalingRecommendationRequest,
    ) -> Result<GetAutoscalingRecommendationResponse, ApiError> {
        let recommendation = self.performance.recommendation(request.policy_id).await.map_err(api_error)?;
        Ok(GetAutoscalingRecommendationResponse::Ok(recommendation))
    }
}
