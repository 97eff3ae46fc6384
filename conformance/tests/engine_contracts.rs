//! The engine on the four real contracts in `openapi/`: each loads, its operations and
//! resources are enumerated, every operation yields requests, and the generated routers
//! agree with the engine about what is valid — positive cases pass the router's
//! validation and reach the implementation, negative cases are turned away before it.
//!
//! The implementations behind the routers answer 501 to everything: what is under test
//! here is the engine's generation against the routers' validation, not any service.

use axum::http::StatusCode;
use conformance::{CaseKind, Check, Config, ContractSource, Engine, Failure, Report, Target, TestServer};
use pake_api_runtime::{ApiError, Principal};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

const CONTRACTS: &[&str] = &["api-gateway.yaml", "service-mesh.yaml", "monitoring.yaml", "performance.yaml"];

fn source(file: &str) -> ContractSource {
    ContractSource::file(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi").join(file))
}

/// An engine that is never asked to send anything.
fn offline(file: &str) -> Engine {
    Engine::new(source(file), Target::new("http://127.0.0.1:9")).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn all_four_contracts_load_and_enumerate_their_operations() {
    let expected = [
        ("api-gateway.yaml", pake_gateway_server::OPERATION_COUNT),
        ("service-mesh.yaml", pake_mesh_server::OPERATION_COUNT),
        ("monitoring.yaml", pake_monitoring_server::OPERATION_COUNT),
        ("performance.yaml", pake_performance_server::OPERATION_COUNT),
    ];
    for (file, count) in expected {
        let engine = offline(file);
        let contract = engine.contract();
        assert_eq!(contract.operations().len(), count, "{file}: the generated server has {count} operations");
        for op in contract.operations() {
            assert!(["GET", "PUT", "POST", "DELETE", "PATCH"].contains(&op.method.as_str()), "{file} {}", op.id);
            assert!(op.path.starts_with('/'), "{file} {}", op.id);
            assert!(!op.responses.is_empty(), "{file} {} declares responses", op.id);
            let templated = op.path.matches('{').count();
            assert_eq!(op.path_params().count(), templated, "{file} {}: one parameter per template", op.id);
        }
        let listed: usize = contract.paths().values().map(Vec::len).sum();
        assert_eq!(listed, count, "{file}: every operation is on a path");
        // One engine can be shared between tasks (each awaits its own run).
        let shared: Arc<dyn std::any::Any + Send + Sync> = Arc::new(engine);
        assert!(shared.is::<Engine>());
    }
}

#[test]
fn resources_are_found_from_links_and_paths() {
    let summary = |file: &str| -> BTreeMap<String, String> {
        let engine = offline(file);
        engine
            .resources()
            .iter()
            .map(|r| {
                let parents: Vec<String> = r
                    .parents
                    .iter()
                    .map(|(param, index)| format!("{param}←{}", engine.resources()[*index].create))
                    .collect();
                let shape = format!(
                    "get {} update {} list {} delete {} parents [{}]",
                    r.get,
                    r.update.as_deref().unwrap_or("-"),
                    r.list.as_deref().unwrap_or("-"),
                    r.delete.as_deref().unwrap_or("-"),
                    parents.join(", ")
                );
                (r.create.clone(), shape)
            })
            .collect()
    };
    let mesh = summary("service-mesh.yaml");
    assert_eq!(
        mesh["registerService"],
        "get getService update updateService list listServices delete deregisterService parents []"
    );
    assert_eq!(
        mesh["registerInstance"],
        "get getInstance update - list listInstances delete deregisterInstance parents [service_id←registerService]"
    );
    assert_eq!(
        mesh["createDependency"],
        "get getDependency update - list listDependencies delete deleteDependency parents [service_id←registerService]"
    );
    let gateway = summary("api-gateway.yaml");
    assert_eq!(gateway["createRoute"], "get getRoute update updateRoute list listRoutes delete deleteRoute parents []");
    assert!(gateway.contains_key("createApiClient") && gateway.contains_key("createRateLimitPolicy"), "{gateway:?}");
    let monitoring = summary("monitoring.yaml");
    for create in ["createAlertRule", "createSilence", "createReceiver"] {
        assert!(monitoring.contains_key(create), "{create} in {monitoring:?}");
    }
    let performance = summary("performance.yaml");
    assert_eq!(performance["startBenchmark"], "get getBenchmark update - list listBenchmarks delete - parents []");
    assert!(performance.contains_key("createSlo") && performance.contains_key("createAutoscalingPolicy"));
}

#[test]
fn body_properties_naming_another_resource_are_found() {
    let references = |file: &str| -> BTreeMap<String, Vec<String>> {
        let engine = offline(file);
        engine
            .resources()
            .iter()
            .map(|r| {
                let named = r
                    .references
                    .iter()
                    .map(|x| {
                        let many = if x.many { "[]" } else { "" };
                        format!("{}{many}→{}", x.property, engine.resources()[x.resource].create)
                    })
                    .collect();
                (r.create.clone(), named)
            })
            .collect()
    };
    let gateway = references("api-gateway.yaml");
    assert_eq!(gateway["createRoute"], ["rate_limit_policy_id→createRateLimitPolicy"], "{gateway:?}");
    assert_eq!(gateway["createApiClient"], ["rate_limit_policy_id→createRateLimitPolicy"], "{gateway:?}");
    let monitoring = references("monitoring.yaml");
    assert_eq!(monitoring["createAlertRule"], ["receivers[]→createReceiver"], "{monitoring:?}");
    let performance = references("performance.yaml");
    assert_eq!(performance["startBenchmark"], ["slo_id→createSlo"], "{performance:?}");
    // Dependencies name the service depended on by name, not by id: nothing to resolve.
    let mesh = references("service-mesh.yaml");
    assert!(mesh.values().all(Vec::is_empty), "{mesh:?}");
}

#[test]
fn every_operation_yields_positive_and_negative_requests() {
    let config = Config::default();
    for file in CONTRACTS {
        let engine = offline(file);
        for op in engine.contract().operations() {
            let positive = engine
                .sample_requests(&op.id, CaseKind::Positive, 3, &config)
                .unwrap_or_else(|e| panic!("{file} {}: {e}", op.id));
            for request in &positive {
                assert_eq!(request.method, op.method);
                assert!(!request.path.contains('{'), "{file} {}: {}", op.id, request.path);
                let needs_body = op.body.as_ref().is_some_and(|b| b.required);
                assert_eq!(request.body.is_some(), needs_body, "{file} {}", op.id);
            }
            if !op.params.is_empty() || op.body.is_some() {
                let negative = engine
                    .sample_requests(&op.id, CaseKind::Negative, 3, &config)
                    .unwrap_or_else(|e| panic!("{file} {}: {e}", op.id));
                assert_eq!(negative.len(), 3, "{file} {}", op.id);
            }
        }
    }
}

/// Implements every operation listed as an answer of 501.
macro_rules! unimplemented_operations {
    ($($method:ident: $request:ident => $response:ident),* $(,)?) => {
        $(
            async fn $method(&self, _request: $request) -> Result<$response, ApiError> {
                Err(ApiError::new(StatusCode::NOT_IMPLEMENTED, "not_implemented", stringify!($method)))
            }
        )*
    };
}

/// The test token `good` carries `scopes`; anything else is refused.
fn principal(token: &str, scopes: &[&str]) -> Result<Principal, ApiError> {
    match token {
        "good" => Ok(Principal {
            subject: "conformance".into(),
            tenant: Some("test".into()),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }),
        _ => Err(ApiError::unauthorized("unknown token")),
    }
}

async fn run(file: &str, server: &TestServer) -> Report {
    let engine = Engine::new(source(file), Target::new(server.url()).with_token("good")).expect("the contract loads");
    let config = Config { cases_per_operation: 6, stateful: false, ..Config::default() };
    engine.run(&config).await
}

/// Failures that show the engine and the router disagree, or that the router itself
/// breaks the contract. Positive cases reach the implementation, whose 501 is neither a
/// success nor declared: those two checks are expected to fail and nothing else.
fn assert_router_agrees(report: &Report, operation_count: usize) {
    assert_eq!(report.coverage.len(), operation_count);
    let disagreements: Vec<&Failure> = report
        .failures()
        .iter()
        .filter(|f| !(f.kind == CaseKind::Positive && matches!(f.check, Check::NoServerError | Check::StatusDeclared)))
        .collect();
    let listed: Vec<String> = disagreements.iter().map(|f| f.to_string()).collect();
    assert!(disagreements.is_empty(), "{}:\n{}", report.contract, listed.join("\n"));
    report.require_positive_coverage();
    for (operation, coverage) in &report.coverage {
        let reached = report.failures().iter().any(|f| &f.operation == operation && f.check == Check::NoServerError);
        assert!(reached, "{operation}: positive cases reach the implementation");
        assert!(coverage.positive > 0, "{operation}");
    }
}

/// `pake-gateway-server`'s router in front of an implementation that answers 501 to everything.
mod gateway {
    use super::*;
    use pake_gateway_server::*;

    pub struct Unimplemented;

    impl GatewayApi for Unimplemented {
        async fn authenticate(&self, token: String) -> Result<Principal, ApiError> {
            principal(&token, &["gateway:admin"])
        }

        unimplemented_operations! {
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
            delete_api_client: DeleteApiClientRequest => DeleteApiClientResponse,
            update_api_client: UpdateApiClientRequest => UpdateApiClientResponse,
            rotate_api_client_secret: RotateApiClientSecretRequest => RotateApiClientSecretResponse,
            list_rate_limit_policies: ListRateLimitPoliciesRequest => ListRateLimitPoliciesResponse,
            create_rate_limit_policy: CreateRateLimitPolicyRequest => CreateRateLimitPolicyResponse,
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

    #[tokio::test]
    async fn the_generated_router_accepts_positive_and_rejects_negative_cases() {
        let server = TestServer::start(router(Arc::new(Unimplemented))).await.expect("server starts");
        let report = run("api-gateway.yaml", &server).await;
        server.stop().await;
        assert_router_agrees(&report, OPERATION_COUNT);
    }
}

/// `pake-mesh-server`'s router in front of an implementation that answers 501 to everything.
mod mesh {
    use super::*;
    use pake_mesh_server::*;

    pub struct Unimplemented;

    impl ServiceMeshApi for Unimplemented {
        async fn authenticate(&self, token: String) -> Result<Principal, ApiError> {
            principal(&token, &["mesh:read", "mesh:write"])
        }

        unimplemented_operations! {
            get_liveness: GetLivenessRequest => GetLivenessResponse,
            get_readiness: GetReadinessRequest => GetReadinessResponse,
            get_metrics: GetMetricsRequest => GetMetricsResponse,
            register_service: RegisterServiceRequest => RegisterServiceResponse,
            list_services: ListServicesRequest => ListServicesResponse,
            get_service: GetServiceRequest => GetServiceResponse,
            deregister_service: DeregisterServiceRequest => DeregisterServiceResponse,
            update_service: UpdateServiceRequest => UpdateServiceResponse,
            list_instances: ListInstancesRequest => ListInstancesResponse,
            register_instance: RegisterInstanceRequest => RegisterInstanceResponse,
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

    #[tokio::test]
    async fn the_generated_router_accepts_positive_and_rejects_negative_cases() {
        let server = TestServer::start(router(Arc::new(Unimplemented))).await.expect("server starts");
        let report = run("service-mesh.yaml", &server).await;
        server.stop().await;
        assert_router_agrees(&report, OPERATION_COUNT);
    }
}

/// `pake-monitoring-server`'s router in front of an implementation that answers 501 to everything.
mod monitoring {
    use super::*;
    use pake_monitoring_server::*;

    pub struct Unimplemented;

    impl MonitoringApi for Unimplemented {
        async fn authenticate(&self, token: String) -> Result<Principal, ApiError> {
            principal(&token, &["monitoring:read", "monitoring:write"])
        }

        unimplemented_operations! {
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
            list_receivers: ListReceiversRequest => ListReceiversResponse,
            create_receiver: CreateReceiverRequest => CreateReceiverResponse,
            get_receiver: GetReceiverRequest => GetReceiverResponse,
            replace_receiver: ReplaceReceiverRequest => ReplaceReceiverResponse,
            delete_receiver: DeleteReceiverRequest => DeleteReceiverResponse,
            test_receiver: TestReceiverRequest => TestReceiverResponse,
            ingest_spans: IngestSpansRequest => IngestSpansResponse,
            list_traces: ListTracesRequest => ListTracesResponse,
            get_trace: GetTraceRequest => GetTraceResponse,
        }
    }

    #[tokio::test]
    async fn the_generated_router_accepts_positive_and_rejects_negative_cases() {
        let server = TestServer::start(router(Arc::new(Unimplemented))).await.expect("server starts");
        let report = run("monitoring.yaml", &server).await;
        server.stop().await;
        assert_router_agrees(&report, OPERATION_COUNT);
    }
}

/// `pake-performance-server`'s router in front of an implementation that answers 501 to everything.
mod performance {
    use super::*;
    use pake_performance_server::*;

    pub struct Unimplemented;

    impl PerformanceApi for Unimplemented {
        async fn authenticate(&self, token: String) -> Result<Principal, ApiError> {
            principal(&token, &["performance:read", "performance:write"])
        }

        unimplemented_operations! {
            get_liveness: GetLivenessRequest => GetLivenessResponse,
            get_readiness: GetReadinessRequest => GetReadinessResponse,
            get_metrics: GetMetricsRequest => GetMetricsResponse,
            list_slos: ListSlosRequest => ListSlosResponse,
            create_slo: CreateSloRequest => CreateSloResponse,
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

    #[tokio::test]
    async fn the_generated_router_accepts_positive_and_rejects_negative_cases() {
        let server = TestServer::start(router(Arc::new(Unimplemented))).await.expect("server starts");
        let report = run("performance.yaml", &server).await;
        server.stop().await;
        assert_router_agrees(&report, OPERATION_COUNT);
    }
}
