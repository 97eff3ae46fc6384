//! Each contract's progenitor client against its generated router, over real HTTP on a
//! loopback port, with a small implementation of the trait inside the test: a success
//! round-trips typed values both ways, and invalid requests are rejected by the router's
//! validation (before the implementation is called) with the contract's error body.
//!
//! The operations a test does not exercise answer 501 through `not_in_this_test!`; a
//! validation failure that reached one of them would show up as 501 instead of 4xx.

use axum::http::StatusCode;
use conformance::{TestServer, http_client_with_token};
use pake_api_runtime::{ApiError, Principal};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

macro_rules! not_in_this_test {
    ($($method:ident: $request:ident => $response:ident),* $(,)?) => {
        $(
            async fn $method(&self, _request: $request) -> Result<$response, ApiError> {
                Err(ApiError::new(
                    StatusCode::NOT_IMPLEMENTED,
                    "not_implemented",
                    concat!(stringify!($method), " is not part of this test"),
                ))
            }
        )*
    };
}

/// Tokens the test implementations accept: `writer` has every scope, `reader` only the
/// read scopes, anything else is unknown.
fn principal_for(token: &str, read_scope: &str, write_scope: &str) -> Result<Principal, ApiError> {
    let scopes = match token {
        "writer" => vec![read_scope.to_string(), write_scope.to_string()],
        "reader" => vec![read_scope.to_string()],
        _ => return Err(ApiError::unauthorized("unknown token")),
    };
    Ok(Principal { subject: token.to_string(), tenant: Some("test".into()), scopes })
}

/// The typed body plus server-assigned fields, as the resource type.
fn resource<T: serde::Serialize, R: serde::de::DeserializeOwned>(body: &T, extra: Value) -> Result<R, ApiError> {
    let mut value = serde_json::to_value(body).map_err(|e| ApiError::internal(&e))?;
    let (Some(object), Value::Object(extra)) = (value.as_object_mut(), extra) else {
        return Err(ApiError::unprocessable("expected an object"));
    };
    object.extend(extra);
    // A test implementation that builds an invalid resource is a broken test: say why.
    serde_json::from_value(value)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "test_bug", e.to_string()))
}

/// A one-page list body (`{items, next_cursor: null}`).
fn list<T: serde::Serialize, L: serde::de::DeserializeOwned>(items: Vec<T>) -> Result<L, ApiError> {
    serde_json::from_value(json!({"items": items, "next_cursor": null})).map_err(|e| ApiError::internal(&e))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// The error body of a progenitor error response.
fn error_body<E: std::fmt::Debug>(error: progenitor_error::Error<E>) -> (u16, E) {
    match error {
        progenitor_error::Error::ErrorResponse(response) => (response.status().as_u16(), response.into_inner()),
        other => panic!("expected an error response, got {other:?}"),
    }
}

/// progenitor's error type, as re-exported by every generated client.
mod progenitor_error {
    pub use pake_mesh_client::Error;
}

mod gateway {
    use super::*;
    use pake_gateway_client::{Client, types};
    use pake_gateway_server::*;

    #[derive(Default)]
    struct Gateway {
        policies: Mutex<Vec<types::RateLimitPolicy>>,
    }

    impl GatewayApi for Gateway {
        async fn authenticate(&self, token: String) -> Result<Principal, ApiError> {
            principal_for(&token, "gateway:admin", "gateway:admin")
        }

        async fn create_rate_limit_policy(
            &self,
            request: CreateRateLimitPolicyRequest,
        ) -> Result<CreateRateLimitPolicyResponse, ApiError> {
            let id = uuid::Uuid::new_v4();
            let policy: types::RateLimitPolicy =
                resource(&request.body, json!({"id": id, "created_at": now(), "updated_at": now()}))?;
            self.policies.lock().expect("not poisoned").push(policy.clone());
            Ok(CreateRateLimitPolicyResponse::Created {
                body: policy,
                location: format!("/v1/admin/rate-limit-policies/{id}"),
            })
        }

        async fn list_rate_limit_policies(
            &self,
            request: ListRateLimitPoliciesRequest,
        ) -> Result<ListRateLimitPoliciesResponse, ApiError> {
            let items: Vec<types::RateLimitPolicy> =
                self.policies.lock().expect("not poisoned").iter().take(request.limit as usize).cloned().collect();
            Ok(ListRateLimitPoliciesResponse::Ok(list(items)?))
        }

        not_in_this_test! {
            get_health: GetHealthRequest => GetHealthResponse,
            get_liveness: GetLivenessRequest => GetLivenessResponse,
            get_metrics: GetMetricsRequest => GetMetricsResponse,
            issue_token: IssueTokenRequest => IssueTokenResponse,
            get_jwks: GetJwksRequest => GetJwksResponse,
            list_routes: ListRoutesRequest => ListRoutesResponse,
            create_route: CreateRouteRequest => CreateRouteResponse,
            get_route: GetRouteRequest => GetRouteResponse,
            update_route: UpdateRouteRequest => UpdateRouteResponse,
            delete_route: DeleteRouteRequest => DeleteRouteResponse,
            list_api_clients: ListApiClientsRequest => ListApiClientsResponse,
            create_api_client: CreateApiClientRequest => CreateApiClientResponse,
            get_api_client: GetApiClientRequest => GetApiClientResponse,
            update_api_client: UpdateApiClientRequest => UpdateApiClientResponse,
            delete_api_client: DeleteApiClientRequest => DeleteApiClientResponse,
            rotate_api_client_secret: RotateApiClientSecretRequest => RotateApiClientSecretResponse,
            get_rate_limit_policy: GetRateLimitPolicyRequest => GetRateLimitPolicyResponse,
            update_rate_limit_policy: UpdateRateLimitPolicyRequest => UpdateRateLimitPolicyResponse,
            delete_rate_limit_policy: DeleteRateLimitPolicyRequest => DeleteRateLimitPolicyResponse,
            list_circuit_breakers: ListCircuitBreakersRequest => ListCircuitBreakersResponse,
            get_circuit_breaker: GetCircuitBreakerRequest => GetCircuitBreakerResponse,
            reset_circuit_breaker: ResetCircuitBreakerRequest => ResetCircuitBreakerResponse,
            get_cache_stats: GetCacheStatsRequest => GetCacheStatsResponse,
            invalidate_cache: InvalidateCacheRequest => InvalidateCacheResponse,
        }
    }

    fn spec(period_seconds: u64) -> types::RateLimitPolicySpec {
        serde_json::from_value(json!({
            "name": "standard-tenant", "algorithm": "gcra", "rate": 600, "period_seconds": period_seconds,
            "burst": 50, "scope": "per_tenant_route", "on_redis_unavailable": "local"
        }))
        .expect("a valid spec")
    }

    #[tokio::test]
    async fn create_and_list_round_trip_and_invalid_input_is_rejected() {
        let server = TestServer::start(router(Arc::new(Gateway::default()))).await.expect("server starts");
        let client = Client::new_with_client(&server.url(), http_client_with_token("writer"));

        let created = client.create_rate_limit_policy().body(spec(60)).send().await.expect("201");
        assert_eq!(created.status().as_u16(), 201);
        let location = created.headers().get("location").expect("Location").to_str().expect("text").to_string();
        let created = created.into_inner();
        assert_eq!(location, format!("/v1/admin/rate-limit-policies/{}", created.id));
        assert_eq!(created.rate.get(), 600);

        let listed = client.list_rate_limit_policies().limit(10u64).send().await.expect("200").into_inner();
        assert_eq!(listed.items, vec![created]);

        // period_seconds is at most 86400: the typed client lets it through, the router does not.
        let (status, body) =
            error_body(client.create_rate_limit_policy().body(spec(100_000)).send().await.unwrap_err());
        assert_eq!(status, 422);
        assert_eq!(body.code.as_str(), "validation_failed");
        let detail = &body.details[0];
        assert_eq!(detail.field.as_ref().map(|f| f.as_str()), Some("/period_seconds"));
        assert!(detail.message.contains("86400"), "{:?}", detail.message);

        let (status, body) = error_body(client.list_rate_limit_policies().limit(501u64).send().await.unwrap_err());
        assert_eq!(status, 400);
        assert_eq!(body.code.as_str(), "invalid_parameter");
        assert!(body.message.starts_with("query parameter limit:"), "{:?}", body.message);
        server.stop().await;
    }
}

mod mesh {
    use super::*;
    use pake_mesh_client::{Client, types};
    use pake_mesh_server::*;

    #[derive(Default)]
    struct Mesh {
        services: Mutex<Vec<types::Service>>,
    }

    impl ServiceMeshApi for Mesh {
        async fn authenticate(&self, token: String) -> Result<Principal, ApiError> {
            principal_for(&token, "mesh:read", "mesh:write")
        }

        async fn register_service(&self, request: RegisterServiceRequest) -> Result<RegisterServiceResponse, ApiError> {
            let mut services = self.services.lock().expect("not poisoned");
            if services.iter().any(|s| s.name == request.body.name) {
                return Err(ApiError::conflict(format!("service {} is already registered", *request.body.name)));
            }
            let id = uuid::Uuid::new_v4();
            let service: types::Service = resource(
                &request.body,
                json!({
                    "id": id, "description": request.body.description, "owner": request.body.owner,
                    "tags": [], "metadata": {}, "protocol": "http",
                    "health_check": {"path": "/health", "interval_seconds": 10, "timeout_ms": 2000, "healthy_threshold": 2, "unhealthy_threshold": 3},
                    "created_at": now(), "updated_at": now(), "revision": 1
                }),
            )?;
            services.push(service.clone());
            Ok(RegisterServiceResponse::Created { body: service, location: format!("/api/v1/services/{id}") })
        }

        async fn list_services(&self, request: ListServicesRequest) -> Result<ListServicesResponse, ApiError> {
            let items: Vec<types::Service> =
                self.services.lock().expect("not poisoned").iter().take(request.limit as usize).cloned().collect();
            Ok(ListServicesResponse::Ok(list(items)?))
        }

        not_in_this_test! {
            get_liveness: GetLivenessRequest => GetLivenessResponse,
            get_readiness: GetReadinessRequest => GetReadinessResponse,
            get_metrics: GetMetricsRequest => GetMetricsResponse,
            get_service: GetServiceRequest => GetServiceResponse,
            update_service: UpdateServiceRequest => UpdateServiceResponse,
            deregister_service: DeregisterServiceRequest => DeregisterServiceResponse,
            register_instance: RegisterInstanceRequest => RegisterInstanceResponse,
            list_instances: ListInstancesRequest => ListInstancesResponse,
            get_instance: GetInstanceRequest => GetInstanceResponse,
            deregister_instance: DeregisterInstanceRequest => DeregisterInstanceResponse,
            heartbeat_instance: HeartbeatInstanceRequest => HeartbeatInstanceResponse,
            discover_service: DiscoverServiceRequest => DiscoverServiceResponse,
            list_dependencies: ListDependenciesRequest => ListDependenciesResponse,
            create_dependency: CreateDependencyRequest => CreateDependencyResponse,
            get_dependency: GetDependencyRequest => GetDependencyResponse,
            delete_dependency: DeleteDependencyRequest => DeleteDependencyResponse,
            get_dependency_graph: GetDependencyGraphRequest => GetDependencyGraphResponse,
            get_traffic_policy: GetTrafficPolicyRequest => GetTrafficPolicyResponse,
            replace_traffic_policy: ReplaceTrafficPolicyRequest => ReplaceTrafficPolicyResponse,
            list_config_entries: ListConfigEntriesRequest => ListConfigEntriesResponse,
            get_config_entry: GetConfigEntryRequest => GetConfigEntryResponse,
            put_config_entry: PutConfigEntryRequest => PutConfigEntryResponse,
            delete_config_entry: DeleteConfigEntryRequest => DeleteConfigEntryResponse,
            list_config_history: ListConfigHistoryRequest => ListConfigHistoryResponse,
        }
    }

    fn registration() -> types::ServiceRegistration {
        serde_json::from_value(json!({"name": "arxiv-search", "version": "1.4.2", "description": "full-text search"}))
            .expect("a valid registration")
    }

    async fn start() -> TestServer {
        TestServer::start(router(Arc::new(Mesh::default()))).await.expect("server starts")
    }

    #[tokio::test]
    async fn register_round_trips_and_invalid_input_is_rejected() {
        let server = start().await;
        let client = Client::new_with_client(&server.url(), http_client_with_token("writer"));

        let created = client.register_service().body(registration()).send().await.expect("201");
        assert_eq!(created.status().as_u16(), 201);
        let created = created.into_inner();
        assert_eq!(created.name.as_str(), "arxiv-search");
        assert_eq!(created.description.as_ref().map(|d| d.as_str()), Some("full-text search"));

        let (status, body) = error_body(client.register_service().body(registration()).send().await.unwrap_err());
        assert_eq!((status, body.code.as_str()), (409, "conflict"));

        let listed = client.list_services().send().await.expect("200").into_inner();
        assert_eq!(listed.items, vec![created.clone()]);

        // Port 70000 fits the client's integer type but not the contract's maximum.
        let instance: types::InstanceRegistration =
            serde_json::from_value(json!({"address": "10.0.3.17", "port": 70000})).expect("typed");
        let (status, body) =
            error_body(client.register_instance().service_id(created.id).body(instance).send().await.unwrap_err());
        assert_eq!(status, 422);
        assert_eq!(body.details[0].field.as_ref().map(|f| f.as_str()), Some("/port"));

        let (status, body) = error_body(client.list_services().limit(501u64).send().await.unwrap_err());
        assert_eq!((status, body.code.as_str()), (400, "invalid_parameter"));
        server.stop().await;
    }

    #[tokio::test]
    async fn tokens_and_scopes_are_enforced() {
        let server = start().await;
        let anonymous = Client::new(&server.url());
        let (status, body) = error_body(anonymous.list_services().send().await.unwrap_err());
        assert_eq!((status, body.code.as_str()), (401, "unauthenticated"));

        let stranger = Client::new_with_client(&server.url(), http_client_with_token("stranger"));
        let (status, _) = error_body(stranger.list_services().send().await.unwrap_err());
        assert_eq!(status, 401);

        let reader = Client::new_with_client(&server.url(), http_client_with_token("reader"));
        reader.list_services().send().await.expect("a reader may list");
        let (status, body) = error_body(reader.register_service().body(registration()).send().await.unwrap_err());
        assert_eq!((status, body.code.as_str()), (403, "insufficient_scope"));
        assert!(body.message.contains("mesh:write"), "{:?}", body.message);
        server.stop().await;
    }

    /// What the typed client cannot send: wrong media types, bad JSON, unknown fields,
    /// undeclared methods and paths, oversized bodies. Each gets the contract's error body.
    #[tokio::test]
    async fn malformed_requests_get_the_contract_error_body() {
        let server = start().await;
        let http = http_client_with_token("writer");
        let url = |path: &str| format!("{}{path}", server.url());
        let register = url("/api/v1/services/register");

        async fn answer(response: reqwest::Response) -> (u16, Value, reqwest::header::HeaderMap) {
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.json::<Value>().await.expect("a JSON body");
            (status, body, headers)
        }

        let (status, body, _) = answer(
            http.post(&register).body("{\"name\":").header("content-type", "application/json").send().await.unwrap(),
        )
        .await;
        assert_eq!((status, body["code"].as_str()), (400, Some("malformed_json")));

        let (status, body, _) =
            answer(http.post(&register).body("name=x").header("content-type", "text/plain").send().await.unwrap())
                .await;
        assert_eq!((status, body["code"].as_str()), (415, Some("unsupported_media_type")));

        let (status, body, _) = answer(
            http.post(&register).json(&json!({"name": "a", "version": "1.0.0", "colour": "red"})).send().await.unwrap(),
        )
        .await;
        assert_eq!((status, body["code"].as_str()), (422, Some("validation_failed")));
        assert!(body["message"].as_str().unwrap().contains("colour"), "{body}");

        let (status, body, _) =
            answer(http.post(&register).json(&json!({"name": "Not A Name", "version": "one"})).send().await.unwrap())
                .await;
        assert_eq!(status, 422);
        let fields: Vec<&str> =
            body["details"].as_array().unwrap().iter().map(|d| d["field"].as_str().unwrap()).collect();
        assert_eq!(fields, vec!["/name", "/version", "/version"], "{body}");

        let huge =
            format!("{{\"name\":\"a\",\"version\":\"1.0.0\",\"description\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
        let (status, body, _) =
            answer(http.post(&register).body(huge).header("content-type", "application/json").send().await.unwrap())
                .await;
        assert_eq!((status, body["code"].as_str()), (413, Some("payload_too_large")));

        let (status, body, headers) = answer(http.delete(&register).send().await.unwrap()).await;
        assert_eq!((status, body["code"].as_str()), (405, Some("method_not_allowed")));
        assert_eq!(headers.get("allow").unwrap(), "POST");

        let (status, body, _) =
            answer(http.get(url("/api/v1/services?limit=abc&colour=red")).send().await.unwrap()).await;
        assert_eq!(status, 400);
        let details = body["details"].as_array().unwrap();
        assert_eq!(details.len(), 2, "{body}");
        assert_eq!(details[0]["field"], "limit");
        assert_eq!(details[1]["message"], "unknown query parameter");

        let (status, body, _) = answer(http.get(url("/api/v1/services/not-a-uuid")).send().await.unwrap()).await;
        assert_eq!(status, 400);
        assert_eq!(body["details"][0]["location"], "path");

        let (status, body, _) = answer(http.get(url("/no/such/path")).send().await.unwrap()).await;
        assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
        server.stop().await;
    }

    #[tokio::test]
    async fn the_contract_and_its_docs_are_served() {
        let server = start().await;
        let http = reqwest::Client::new();
        let contract: Value =
            http.get(format!("{}/openapi.json", server.url())).send().await.unwrap().json().await.unwrap();
        assert_eq!(contract["openapi"], "3.1.0");
        assert!(contract["paths"]["/api/v1/services/register"]["post"].is_object());

        let docs = http.get(format!("{}/docs", server.url())).send().await.unwrap();
        assert_eq!(docs.headers()["content-type"], "text/html; charset=utf-8");
        let html = docs.text().await.unwrap();
        assert!(html.contains("registerService"));
        assert!(!html.contains("<script src"), "the docs page loads nothing from elsewhere");
        server.stop().await;
    }
}

mod monitoring {
    use super::*;
    use pake_monitoring_client::{Client, types};
    use pake_monitoring_server::*;

    #[derive(Default)]
    struct Monitoring {
        receivers: Mutex<Vec<types::Receiver>>,
    }

    impl MonitoringApi for Monitoring {
        async fn authenticate(&self, token: String) -> Result<Principal, ApiError> {
            principal_for(&token, "monitoring:read", "monitoring:write")
        }

        async fn create_receiver(&self, request: CreateReceiverRequest) -> Result<CreateReceiverResponse, ApiError> {
            let id = uuid::Uuid::new_v4();
            let receiver: types::Receiver = resource(
                &request.body,
                json!({"id": id, "headers": {}, "last_delivery_at": null, "last_delivery_error": null, "created_at": now(), "updated_at": now()}),
            )?;
            self.receivers.lock().expect("not poisoned").push(receiver.clone());
            Ok(CreateReceiverResponse::Created { body: receiver, location: format!("/api/v1/receivers/{id}") })
        }

        async fn list_receivers(&self, request: ListReceiversRequest) -> Result<ListReceiversResponse, ApiError> {
            let items: Vec<types::Receiver> =
                self.receivers.lock().expect("not poisoned").iter().take(request.limit as usize).cloned().collect();
            Ok(ListReceiversResponse::Ok(list(items)?))
        }

        not_in_this_test! {
            get_prometheus_metrics: GetPrometheusMetricsRequest => GetPrometheusMetricsResponse,
            list_metrics: ListMetricsRequest => ListMetricsResponse,
            push_metric_samples: PushMetricSamplesRequest => PushMetricSamplesResponse,
            get_liveness: GetLivenessRequest => GetLivenessResponse,
            get_readiness: GetReadinessRequest => GetReadinessResponse,
            list_instance_health: ListInstanceHealthRequest => ListInstanceHealthResponse,
            get_instance_health: GetInstanceHealthRequest => GetInstanceHealthResponse,
            get_health_summary: GetHealthSummaryRequest => GetHealthSummaryResponse,
            list_alert_rules: ListAlertRulesRequest => ListAlertRulesResponse,
            create_alert_rule: CreateAlertRuleRequest => CreateAlertRuleResponse,
            get_alert_rule: GetAlertRuleRequest => GetAlertRuleResponse,
            replace_alert_rule: ReplaceAlertRuleRequest => ReplaceAlertRuleResponse,
            delete_alert_rule: DeleteAlertRuleRequest => DeleteAlertRuleResponse,
            list_alerts: ListAlertsRequest => ListAlertsResponse,
            get_alert: GetAlertRequest => GetAlertResponse,
            acknowledge_alert: AcknowledgeAlertRequest => AcknowledgeAlertResponse,
            list_silences: ListSilencesRequest => ListSilencesResponse,
            create_silence: CreateSilenceRequest => CreateSilenceResponse,
            get_silence: GetSilenceRequest => GetSilenceResponse,
            expire_silence: ExpireSilenceRequest => ExpireSilenceResponse,
            get_receiver: GetReceiverRequest => GetReceiverResponse,
            replace_receiver: ReplaceReceiverRequest => ReplaceReceiverResponse,
            delete_receiver: DeleteReceiverRequest => DeleteReceiverResponse,
            test_receiver: TestReceiverRequest => TestReceiverResponse,
            ingest_spans: IngestSpansRequest => IngestSpansResponse,
            list_traces: ListTracesRequest => ListTracesResponse,
            get_trace: GetTraceRequest => GetTraceResponse,
        }
    }

    fn receiver(timeout_ms: u64) -> types::ReceiverSpec {
        serde_json::from_value(json!({
            "name": "oncall-search", "url": "https://hooks.pake.example/alerts/search", "timeout_ms": timeout_ms
        }))
        .expect("a typed spec")
    }

    #[tokio::test]
    async fn create_and_list_round_trip_and_invalid_input_is_rejected() {
        let server = TestServer::start(router(Arc::new(Monitoring::default()))).await.expect("server starts");
        let client = Client::new_with_client(&server.url(), http_client_with_token("writer"));

        let created = client.create_receiver().body(receiver(5000)).send().await.expect("201").into_inner();
        assert_eq!(created.name.as_str(), "oncall-search");
        // Defaults from the contract were applied on the way in.
        assert_eq!(created.max_retries, 3);
        assert!(created.send_resolved);

        let listed = client.list_receivers().send().await.expect("200").into_inner();
        assert_eq!(listed.items, vec![created]);

        let (status, body) = error_body(client.create_receiver().body(receiver(50)).send().await.unwrap_err());
        assert_eq!(status, 422);
        assert_eq!(body.details[0].field.as_ref().map(|f| f.as_str()), Some("/timeout_ms"));
        server.stop().await;
    }
}

mod performance {
    use super::*;
    use pake_performance_client::{Client, types};
    use pake_performance_server::*;

    #[derive(Default)]
    struct Performance {
        slos: Mutex<Vec<types::Slo>>,
    }

    impl PerformanceApi for Performance {
        async fn authenticate(&self, token: String) -> Result<Principal, ApiError> {
            principal_for(&token, "performance:read", "performance:write")
        }

        async fn create_slo(&self, request: CreateSloRequest) -> Result<CreateSloResponse, ApiError> {
            let id = uuid::Uuid::new_v4();
            let slo: types::Slo = resource(&request.body, json!({"id": id, "created_at": now(), "updated_at": now()}))?;
            self.slos.lock().expect("not poisoned").push(slo.clone());
            Ok(CreateSloResponse::Created { body: slo, location: format!("/api/v1/slos/{id}") })
        }

        async fn list_slos(&self, request: ListSlosRequest) -> Result<ListSlosResponse, ApiError> {
            let items: Vec<types::Slo> = self
                .slos
                .lock()
                .expect("not poisoned")
                .iter()
                .filter(|slo| request.service.as_ref().is_none_or(|service| slo.service.as_str() == service))
                .take(request.limit as usize)
                .cloned()
                .collect();
            Ok(ListSlosResponse::Ok(list(items)?))
        }

        not_in_this_test! {
            get_liveness: GetLivenessRequest => GetLivenessResponse,
            get_readiness: GetReadinessRequest => GetReadinessResponse,
            get_metrics: GetMetricsRequest => GetMetricsResponse,
            get_slo: GetSloRequest => GetSloResponse,
            replace_slo: ReplaceSloRequest => ReplaceSloResponse,
            delete_slo: DeleteSloRequest => DeleteSloResponse,
            get_slo_report: GetSloReportRequest => GetSloReportResponse,
            ingest_samples: IngestSamplesRequest => IngestSamplesResponse,
            get_service_stats: GetServiceStatsRequest => GetServiceStatsResponse,
            list_benchmarks: ListBenchmarksRequest => ListBenchmarksResponse,
            start_benchmark: StartBenchmarkRequest => StartBenchmarkResponse,
            get_benchmark: GetBenchmarkRequest => GetBenchmarkResponse,
            cancel_benchmark: CancelBenchmarkRequest => CancelBenchmarkResponse,
            list_autoscaling_policies: ListAutoscalingPoliciesRequest => ListAutoscalingPoliciesResponse,
            create_autoscaling_policy: CreateAutoscalingPolicyRequest => CreateAutoscalingPolicyResponse,
            get_autoscaling_policy: GetAutoscalingPolicyRequest => GetAutoscalingPolicyResponse,
            replace_autoscaling_policy: ReplaceAutoscalingPolicyRequest => ReplaceAutoscalingPolicyResponse,
            delete_autoscaling_policy: DeleteAutoscalingPolicyRequest => DeleteAutoscalingPolicyResponse,
            get_autoscaling_recommendation: GetAutoscalingRecommendationRequest => GetAutoscalingRecommendationResponse,
        }
    }

    fn slo(target: f64) -> types::SloSpec {
        serde_json::from_value(json!({
            "name": "search-availability", "service": "arxiv-search", "objective": "availability", "target": target
        }))
        .expect("a typed spec")
    }

    #[tokio::test]
    async fn create_and_list_round_trip_and_invalid_input_is_rejected() {
        let server = TestServer::start(router(Arc::new(Performance::default()))).await.expect("server starts");
        let client = Client::new_with_client(&server.url(), http_client_with_token("writer"));

        let created = client.create_slo().body(slo(99.9)).send().await.expect("201").into_inner();
        assert_eq!(created.target, 99.9);
        assert_eq!(created.window_days.get(), 30, "the contract's default window");

        let listed = client.list_slos().service("arxiv-search").send().await.expect("200").into_inner();
        assert_eq!(listed.items, vec![created]);
        let other = client.list_slos().service("other-service").send().await.expect("200").into_inner();
        assert!(other.items.is_empty());

        // A target above 100 % is a number to the client, but not to the contract.
        let (status, body) = error_body(client.create_slo().body(slo(150.0)).send().await.unwrap_err());
        assert_eq!(status, 422);
        assert_eq!(body.details[0].field.as_ref().map(|f| f.as_str()), Some("/target"));
        server.stop().await;
    }
}

/// Every operation's parameter and body schemas compile, in all four contracts, so no
/// service can meet a schema its validator cannot use.
#[test]
fn every_contract_schema_compiles() {
    pake_gateway_server::warm().expect("gateway schemas compile");
    pake_mesh_server::warm().expect("service-mesh schemas compile");
    pake_monitoring_server::warm().expect("monitoring schemas compile");
    pake_performance_server::warm().expect("performance schemas compile");
    assert_eq!(pake_mesh_server::OPERATIONS.len(), pake_mesh_server::OPERATION_COUNT);
}
