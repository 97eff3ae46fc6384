//! The monitoring contract's handlers: each turns a validated request into a call on the
//! [`Core`] (or a read of its state) and the result into the contract's response.
//! [`MonitorError`] is mapped to statuses in one place, [`api_error`].

use crate::health::Status;
use crate::labels::{LabelSet, MatcherSpec};
use crate::model::{AlertRecord, ReceiverRecord, ReceiverSpec, SilenceRecord};
use crate::monitor::{Core, MonitorError, Page, invalid, page};
use crate::rules::{AlertState, RuleSpec};
use crate::series::{ListFilter, MetricType, PushError, PushedSample, SeriesKey};
use crate::traces::{self, TraceCursor, TraceQuery, TraceStore};
use crate::{cursor, labels};
use axum::http::StatusCode;
use pake_api_runtime::{ApiError, ErrorDetail};
use pake_monitoring_server::*;
use pake_observe::Metrics;
use pake_registry::store::Backend;
use pake_tokens::TokenVerifier;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const RETRY_AFTER_SECONDS: u64 = 2;

pub struct MonitoringService {
    core: Arc<Core>,
    traces: Arc<TraceStore>,
    verifier: TokenVerifier,
    metrics: Metrics,
}

impl MonitoringService {
    pub fn new(
        core: Arc<Core>,
        traces: Arc<TraceStore>,
        verifier: TokenVerifier,
        metrics: Metrics,
    ) -> MonitoringService {
        MonitoringService { core, traces, verifier, metrics }
    }
}

/// The one mapping from monitoring errors to HTTP answers.
pub fn api_error(error: MonitorError) -> ApiError {
    match error {
        MonitorError::NotFound(message) => ApiError::not_found(message),
        MonitorError::Conflict(message) => ApiError::conflict(message),
        MonitorError::Invalid { field, message } => {
            let text = match &field {
                Some(field) => format!("{field}: {message}"),
                None => message.clone(),
            };
            let detail = ErrorDetail { location: pake_api_runtime::DetailLocation::Body, field, message };
            ApiError::unprocessable(text).with_details(vec![detail])
        }
        MonitorError::BadCursor(message) => ApiError::bad_request("invalid_cursor", message),
        MonitorError::Unavailable(source) => {
            tracing::warn!(error = %source, "store unavailable");
            ApiError::unavailable("the monitoring store is unavailable", RETRY_AFTER_SECONDS)
        }
        MonitorError::Internal(source) => ApiError::internal(source.as_ref()),
    }
}

/// A contract type from JSON this service built; a mismatch is this service's bug.
fn build<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|error| ApiError::internal(&error))
}

/// The request's contract body as this service's own record type.
fn convert<T: DeserializeOwned>(body: &impl serde::Serialize) -> Result<T, ApiError> {
    serde_json::to_value(body).and_then(serde_json::from_value).map_err(|error| ApiError::internal(&error))
}

fn list<T: serde::Serialize, L: DeserializeOwned>(page: Page<T>) -> Result<L, ApiError> {
    build(json!({"items": page.items, "next_cursor": page.next_cursor}))
}

fn after(cursor: Option<&String>) -> Result<Option<String>, ApiError> {
    cursor.map(|c| cursor::decode(c)).transpose().map_err(api_error)
}

fn health(status: &str, checks: Value, output: Option<String>) -> Result<types::Health, ApiError> {
    let mut body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "service_id": "monitoring",
        "description": "PAKE monitoring service",
        "checks": checks,
    });
    if let Some(output) = output {
        body["output"] = json!(output.chars().take(2000).collect::<String>());
    }
    build(body)
}

fn rule_view(core: &Core, id: Uuid) -> Option<Value> {
    let state = core.state();
    let entry = state.rules.get(&id)?;
    let spec = &entry.record.spec;
    let pending = entry.alerts.active.values().filter(|a| a.state == AlertState::Pending).count();
    let firing = entry.alerts.active.values().filter(|a| a.state == AlertState::Firing).count();
    let rule_state = if firing > 0 {
        "firing"
    } else if pending > 0 {
        "pending"
    } else {
        "inactive"
    };
    let mut doc = serde_json::to_value(spec).ok()?;
    let object = doc.as_object_mut()?;
    object.insert("id".into(), json!(id));
    object.insert("state".into(), json!(rule_state));
    object.insert("pending_alerts".into(), json!(pending));
    object.insert("firing_alerts".into(), json!(firing));
    object.insert("last_evaluated_at".into(), json!(entry.last_evaluated));
    object.insert("last_evaluation_ms".into(), json!(entry.last_evaluation_ms));
    object.insert(
        "last_error".into(),
        json!(entry.last_error.as_ref().map(|e| e.chars().take(2000).collect::<String>())),
    );
    object.insert("created_at".into(), json!(entry.record.created_at));
    object.insert("updated_at".into(), json!(entry.record.updated_at));
    Some(doc)
}

fn alert_view(alert: &AlertRecord, silenced_by: &[Uuid]) -> Value {
    json!({
        "id": alert.id,
        "rule_id": alert.rule_id,
        "rule_name": alert.rule_name,
        "state": alert.state,
        "severity": alert.severity,
        "labels": alert.labels,
        "annotations": alert.annotations,
        "value": alert.value,
        "active_since": alert.active_since,
        "fired_at": alert.fired_at,
        "resolved_at": alert.resolved_at,
        "acknowledged_by": alert.acknowledged_by,
        "acknowledged_at": alert.acknowledged_at,
        "acknowledgement_comment": alert.acknowledgement_comment,
        "silenced": !silenced_by.is_empty(),
        "silenced_by": silenced_by.iter().take(100).collect::<Vec<_>>(),
        "auto_healed_instance_id": if alert.state == AlertState::Firing { alert.auto_healed_instance_id } else { None },
        "fingerprint": alert.fingerprint,
    })
}

fn receiver_view(receiver: &ReceiverRecord) -> Value {
    let headers: BTreeMap<&String, &str> = receiver.headers.keys().map(|k| (k, "<redacted>")).collect();
    json!({
        "id": receiver.id,
        "name": receiver.name,
        "url": receiver.url,
        "send_resolved": receiver.send_resolved,
        "headers": headers,
        "timeout_ms": receiver.timeout_ms,
        "max_retries": receiver.max_retries,
        "last_delivery_at": receiver.last_delivery_at,
        "last_delivery_error": receiver.last_delivery_error,
        "created_at": receiver.created_at,
        "updated_at": receiver.updated_at,
    })
}

fn silence_view(silence: &SilenceRecord, now: chrono::DateTime<chrono::Utc>) -> Value {
    json!({
        "id": silence.id,
        "matchers": silence.matchers,
        "starts_at": silence.starts_at,
        "ends_at": silence.ends_at,
        "created_by": silence.created_by,
        "comment": silence.comment,
        "state": silence.state(now).as_str(),
        "created_at": silence.created_at,
    })
}

/// Instance health rows from the registry's snapshot and the health book, ordered by
/// service name, then instance id.
fn instance_rows(core: &Core) -> Vec<(String, Uuid, Value, Status)> {
    let snapshot = core.registry.snapshot();
    let book = core.health.all();
    let now = chrono::Utc::now().timestamp_millis();
    let mut rows = Vec::new();
    for data in snapshot.services() {
        let mut instances: Vec<_> = data.instances.iter().collect();
        instances.sort_by_key(|r| r.instance.id);
        for record in instances {
            let instance = record.instance.clone();
            let effective = record.effective(now);
            let health = book.get(&instance.id).cloned().unwrap_or_default();
            let host = if instance.address.contains(':') {
                format!("[{}]", *instance.address)
            } else {
                instance.address.to_string()
            };
            let url = match &instance.health_url {
                Some(url) => url.to_string(),
                None => format!(
                    "{}://{host}:{}{}",
                    if matches!(instance.scheme, pake_mesh_server::types::InstanceScheme::Https) {
                        "https"
                    } else {
                        "http"
                    },
                    instance.port,
                    data.service.health_check.path.as_str()
                ),
            };
            let in_discovery =
                !record.is_expired(now) && effective.status != pake_mesh_server::types::InstanceStatus::Critical;
            let row = json!({
                "instance_id": instance.id,
                "service": data.service.name,
                "address": format!("{host}:{}", instance.port),
                "health_url": url,
                "status": health.status.as_str(),
                "in_discovery": in_discovery,
                "last_checked_at": health.last_checked_at,
                "last_success_at": health.last_success_at,
                "consecutive_failures": health.consecutive_failures,
                "latency_ms": health.latency_ms,
                "output": health.output,
            });
            rows.push((data.service.name.to_string(), instance.id, row, health.status));
        }
    }
    rows
}

fn status_of(counts: &BTreeMap<&str, u64>) -> &'static str {
    let total: u64 = counts.values().sum();
    let checked = total - counts["unknown"];
    if checked == 0 {
        "unknown"
    } else if counts["passing"] == total {
        "passing"
    } else if counts["passing"] == 0 {
        "critical"
    } else {
        "warning"
    }
}

fn counts() -> BTreeMap<&'static str, u64> {
    BTreeMap::from([("passing", 0), ("warning", 0), ("critical", 0), ("unknown", 0)])
}

/// The cursor of a series: its key as JSON.
fn series_cursor(key: &SeriesKey) -> String {
    serde_json::to_string(&(&key.name, &key.labels)).unwrap_or_default()
}

impl MonitoringApi for MonitoringService {
    async fn authenticate(&self, bearer_token: String) -> Result<pake_api_runtime::Principal, ApiError> {
        self.verifier.verify(&bearer_token)
    }

    async fn get_prometheus_metrics(
        &self,
        _request: GetPrometheusMetricsRequest,
    ) -> Result<GetPrometheusMetricsResponse, ApiError> {
        Ok(GetPrometheusMetricsResponse::Ok(self.metrics.render()))
    }

    async fn list_metrics(&self, request: ListMetricsRequest) -> Result<ListMetricsResponse, ApiError> {
        let matchers = match request.r#match.as_deref() {
            Some(text) => labels::parse_selector(text).map_err(|message| {
                ApiError::bad_request("invalid_parameter", format!("query parameter match: {message}"))
            })?,
            None => Vec::new(),
        };
        let kind = request.r#type.map(|t| match t {
            types::MetricType::Counter => MetricType::Counter,
            types::MetricType::Gauge => MetricType::Gauge,
            types::MetricType::Histogram => MetricType::Histogram,
            types::MetricType::Summary => MetricType::Summary,
        });
        let filter = ListFilter { name: request.name.as_deref(), matchers, source: request.source.as_deref(), kind };
        let after = match after(request.cursor.as_ref())? {
            Some(text) => {
                let (name, labels): (String, LabelSet) = serde_json::from_str(&text)
                    .map_err(|_| ApiError::bad_request("invalid_cursor", "cursor is not one this server issued"))?;
                Some(SeriesKey { name, labels })
            }
            None => None,
        };
        let views = self.core.series.list(&filter, after.as_ref(), 0, request.limit as usize);
        let items: Vec<Value> = views
            .iter()
            .map(|view| {
                let mut item = json!({
                    "name": view.key.name,
                    "type": view.kind.as_str(),
                    "help": view.help,
                    "source": view.source,
                    "labels": view.key.labels,
                    "value": view.value,
                    "timestamp": crate::model::time(view.t),
                });
                if let Some(sum) = view.sum {
                    item["sum"] = json!(sum);
                }
                if view.kind == MetricType::Histogram {
                    item["buckets"] = json!(
                        view.buckets
                            .iter()
                            .take(64)
                            .map(|(le, c)| json!({"le": le, "count": c.max(0.0).round() as u64}))
                            .collect::<Vec<_>>()
                    );
                }
                if view.kind == MetricType::Summary {
                    item["quantiles"] = json!(
                        view.quantiles
                            .iter()
                            .take(32)
                            .map(|(q, v)| json!({"quantile": q, "value": v}))
                            .collect::<Vec<_>>()
                    );
                }
                item
            })
            .collect();
        let keys: Vec<SeriesKey> = views.into_iter().map(|v| v.key).collect();
        let mut page = page(items, request.limit, |_| String::new());
        if page.next_cursor.is_some() {
            let last = &keys[page.items.len() - 1];
            let encoded = cursor::encode(&series_cursor(last));
            // A label set too long for a cursor ends the listing there; say so rather than
            // hand out a cursor the contract does not allow.
            page.next_cursor = (encoded.len() <= 512).then_some(encoded);
        }
        Ok(ListMetricsResponse::Ok(list(page)?))
    }

    async fn push_metric_samples(
        &self,
        request: PushMetricSamplesRequest,
    ) -> Result<PushMetricSamplesResponse, ApiError> {
        let body = serde_json::to_value(&request.body).map_err(|e| ApiError::internal(&e))?;
        let samples: Vec<PushedSample> =
            serde_json::from_value(body["samples"].clone()).map_err(|e| ApiError::internal(&e))?;
        let source = match body.get("source").and_then(Value::as_str) {
            Some(source) => source.to_string(),
            None => {
                let subject = &request.principal.subject;
                let usable = !subject.is_empty()
                    && subject.len() <= 255
                    && subject.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && subject.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
                if usable { subject.clone() } else { "push".into() }
            }
        };
        let now = chrono::Utc::now().timestamp_millis();
        let accepted = self.core.series.push(&source, &samples, now).map_err(|error| match error {
            PushError::Invalid { field, message } => api_error(invalid(field, message)),
            PushError::SeriesLimit(message) => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "series_limit", message),
        })?;
        Ok(PushMetricSamplesResponse::Accepted {
            body: build(json!({"accepted": accepted}))?,
            location: format!("/api/v1/metrics?source={source}"),
        })
    }

    async fn get_liveness(&self, _request: GetLivenessRequest) -> Result<GetLivenessResponse, ApiError> {
        Ok(GetLivenessResponse::Ok(health("pass", json!({}), None)?))
    }

    async fn get_readiness(&self, _request: GetReadinessRequest) -> Result<GetReadinessResponse, ApiError> {
        let started = std::time::Instant::now();
        let store = self.core.db.store();
        let ping = tokio::time::timeout(Duration::from_secs(1), store.ping()).await;
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let component = match store.backend() {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        };
        let now = chrono::Utc::now();
        let (status, output) = match ping {
            Ok(Ok(())) => ("pass", None),
            Ok(Err(error)) => ("fail", Some(error.to_string())),
            Err(_) => ("fail", Some("no answer within 1 s".to_string())),
        };
        let mut check = json!({
            "component_id": component, "component_type": "datastore", "status": status,
            "observed_value": elapsed_ms, "observed_unit": "ms", "time": now,
        });
        if let Some(output) = &output {
            check["output"] = json!(output.chars().take(2000).collect::<String>());
        }
        let registry = json!({
            "component_id": "service-mesh", "component_type": "component", "status": "pass", "time": now,
            "observed_value": self.core.registry.snapshot().len(), "observed_unit": "services",
        });
        let body = health(status, json!({"store:responseTime": [check], "registry:reachable": [registry]}), output)?;
        Ok(if status == "pass" {
            GetReadinessResponse::Ok(body)
        } else {
            GetReadinessResponse::ServiceUnavailable { body, retry_after: RETRY_AFTER_SECONDS }
        })
    }

    async fn list_instance_health(
        &self,
        request: ListInstanceHealthRequest,
    ) -> Result<ListInstanceHealthResponse, ApiError> {
        let after = after(request.cursor.as_ref())?;
        let wanted = request.status.map(|s| s.to_string());
        let items: Vec<(String, Value)> = instance_rows(&self.core)
            .into_iter()
            .filter(|(service, _, _, _)| request.service.as_deref().is_none_or(|s| s == service))
            .filter(|(_, _, _, status)| wanted.as_deref().is_none_or(|w| w == status.as_str()))
            .map(|(service, id, row, _)| (format!("{service}/{id}"), row))
            .filter(|(key, _)| after.as_deref().is_none_or(|a| key.as_str() > a))
            .take(request.limit as usize + 1)
            .collect();
        let page = page(items, request.limit, |(key, _)| key.clone());
        Ok(ListInstanceHealthResponse::Ok(list(Page {
            items: page.items.into_iter().map(|(_, row)| row).collect(),
            next_cursor: page.next_cursor,
        })?))
    }

    async fn get_instance_health(
        &self,
        request: GetInstanceHealthRequest,
    ) -> Result<GetInstanceHealthResponse, ApiError> {
        let row = instance_rows(&self.core).into_iter().find(|(_, id, _, _)| *id == request.instance_id);
        let (_, _, row, _) = row.ok_or_else(|| ApiError::not_found(format!("no instance {}", request.instance_id)))?;
        Ok(GetInstanceHealthResponse::Ok(build(row)?))
    }

    async fn get_health_summary(
        &self,
        _request: GetHealthSummaryRequest,
    ) -> Result<GetHealthSummaryResponse, ApiError> {
        let rows = instance_rows(&self.core);
        let mut overall = counts();
        let mut services: BTreeMap<String, BTreeMap<&str, u64>> = BTreeMap::new();
        // Every registered service appears, with or without instances.
        for data in self.core.registry.snapshot().services() {
            services.entry(data.service.name.to_string()).or_insert_with(counts);
        }
        for (service, _, _, status) in &rows {
            *overall.get_mut(status.as_str()).expect("a status") += 1;
            *services.entry(service.clone()).or_insert_with(counts).get_mut(status.as_str()).expect("a status") += 1;
        }
        let service_statuses: Vec<&str> = services.values().map(status_of).collect();
        let overall_status = if service_statuses.iter().all(|s| *s == "unknown") {
            "unknown"
        } else if service_statuses.iter().all(|s| *s == "passing" || *s == "unknown") {
            "passing"
        } else if service_statuses.iter().all(|s| *s == "critical" || *s == "unknown") {
            "critical"
        } else {
            "warning"
        };
        let services: Vec<Value> =
            services.iter().map(|(name, c)| json!({"service": name, "status": status_of(c), "counts": c})).collect();
        Ok(GetHealthSummaryResponse::Ok(build(json!({
            "status": overall_status,
            "generated_at": chrono::Utc::now(),
            "counts": overall,
            "services": services,
        }))?))
    }

    async fn list_alert_rules(&self, request: ListAlertRulesRequest) -> Result<ListAlertRulesResponse, ApiError> {
        let after = after(request.cursor.as_ref())?;
        let severity = request.severity.map(|s| s.to_string());
        let mut ids: Vec<(String, Uuid)> = {
            let state = self.core.state();
            state
                .rules
                .values()
                .filter(|r| severity.as_deref().is_none_or(|s| s == r.record.spec.severity))
                .filter(|r| request.enabled.is_none_or(|e| e == r.record.spec.enabled))
                .map(|r| (r.record.spec.name.clone(), r.record.id))
                .filter(|(name, _)| after.as_deref().is_none_or(|a| name.as_str() > a))
                .collect()
        };
        ids.sort();
        ids.truncate(request.limit as usize + 1);
        let items: Vec<(String, Value)> =
            ids.into_iter().filter_map(|(name, id)| rule_view(&self.core, id).map(|v| (name, v))).collect();
        let page = page(items, request.limit, |(name, _)| name.clone());
        Ok(ListAlertRulesResponse::Ok(list(Page {
            items: page.items.into_iter().map(|(_, v)| v).collect(),
            next_cursor: page.next_cursor,
        })?))
    }

    async fn create_alert_rule(&self, request: CreateAlertRuleRequest) -> Result<CreateAlertRuleResponse, ApiError> {
        let spec: RuleSpec = convert(&request.body)?;
        let record = self.core.create_rule(spec).await.map_err(api_error)?;
        let view =
            rule_view(&self.core, record.id).ok_or_else(|| ApiError::not_found("the rule was deleted meanwhile"))?;
        Ok(CreateAlertRuleResponse::Created {
            location: format!("/api/v1/alert-rules/{}", record.id),
            body: build(view)?,
        })
    }

    async fn get_alert_rule(&self, request: GetAlertRuleRequest) -> Result<GetAlertRuleResponse, ApiError> {
        let view = rule_view(&self.core, request.rule_id)
            .ok_or_else(|| ApiError::not_found(format!("no alert rule {}", request.rule_id)))?;
        Ok(GetAlertRuleResponse::Ok(build(view)?))
    }

    async fn replace_alert_rule(&self, request: ReplaceAlertRuleRequest) -> Result<ReplaceAlertRuleResponse, ApiError> {
        let spec: RuleSpec = convert(&request.body)?;
        self.core.replace_rule(request.rule_id, spec).await.map_err(api_error)?;
        let view = rule_view(&self.core, request.rule_id)
            .ok_or_else(|| ApiError::not_found(format!("no alert rule {}", request.rule_id)))?;
        Ok(ReplaceAlertRuleResponse::Ok(build(view)?))
    }

    async fn delete_alert_rule(&self, request: DeleteAlertRuleRequest) -> Result<DeleteAlertRuleResponse, ApiError> {
        self.core.delete_rule(request.rule_id).await.map_err(api_error)?;
        Ok(DeleteAlertRuleResponse::NoContent)
    }

    async fn list_alerts(&self, request: ListAlertsRequest) -> Result<ListAlertsResponse, ApiError> {
        let after = after(request.cursor.as_ref())?;
        let state_filter = request.state.map(|s| s.to_string());
        let severity = request.severity.map(|s| s.to_string());
        let now = chrono::Utc::now();
        // Newest `active_since` first; the cursor is `active_since|id` of the last one.
        let key = |a: &AlertRecord| format!("{:020}|{}", i64::MAX - a.active_since.timestamp_millis(), a.id);
        let mut items: Vec<(String, Value)> = {
            let state = self.core.state();
            state
                .alerts
                .values()
                .filter(|a| state_filter.as_deref().is_none_or(|s| serde_json::to_value(a.state).is_ok_and(|v| v == s)))
                .filter(|a| severity.as_deref().is_none_or(|s| s == a.severity))
                .filter(|a| request.rule_id.is_none_or(|r| r == a.rule_id))
                .filter_map(|a| {
                    let silenced_by =
                        if a.state == AlertState::Resolved { Vec::new() } else { state.silenced_by(&a.labels, now) };
                    let silenced = !silenced_by.is_empty();
                    if request.silenced.is_some_and(|s| s != silenced) {
                        return None;
                    }
                    let k = key(a);
                    if after.as_deref().is_some_and(|after| k.as_str() <= after) {
                        return None;
                    }
                    Some((k, alert_view(a, &silenced_by)))
                })
                .collect()
        };
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items.truncate(request.limit as usize + 1);
        let page = page(items, request.limit, |(k, _)| k.clone());
        Ok(ListAlertsResponse::Ok(list(Page {
            items: page.items.into_iter().map(|(_, v)| v).collect(),
            next_cursor: page.next_cursor,
        })?))
    }

    async fn get_alert(&self, request: GetAlertRequest) -> Result<GetAlertResponse, ApiError> {
        let view = {
            let state = self.core.state();
            let alert = state
                .alerts
                .get(&request.alert_id)
                .ok_or_else(|| ApiError::not_found(format!("no alert {}", request.alert_id)))?;
            let silenced_by = if alert.state == AlertState::Resolved {
                Vec::new()
            } else {
                state.silenced_by(&alert.labels, chrono::Utc::now())
            };
            alert_view(alert, &silenced_by)
        };
        Ok(GetAlertResponse::Ok(build(view)?))
    }

    async fn acknowledge_alert(&self, request: AcknowledgeAlertRequest) -> Result<AcknowledgeAlertResponse, ApiError> {
        let body = serde_json::to_value(&request.body).map_err(|e| ApiError::internal(&e))?;
        let by = body["by"].as_str().unwrap_or_default().to_string();
        let comment = body.get("comment").and_then(Value::as_str).map(str::to_string);
        let alert = self.core.acknowledge(request.alert_id, by, comment).await.map_err(api_error)?;
        let silenced_by = self.core.state().silenced_by(&alert.labels, chrono::Utc::now());
        Ok(AcknowledgeAlertResponse::Ok(build(alert_view(&alert, &silenced_by))?))
    }

    async fn list_silences(&self, request: ListSilencesRequest) -> Result<ListSilencesResponse, ApiError> {
        let after = after(request.cursor.as_ref())?;
        let wanted = request.state.map(|s| s.to_string());
        let now = chrono::Utc::now();
        // Latest `starts_at` first.
        let key = |s: &SilenceRecord| format!("{:020}|{}", i64::MAX - s.starts_at.timestamp_millis(), s.id);
        let mut items: Vec<(String, Value)> = self
            .core
            .state()
            .silences
            .values()
            .map(|s| &s.record)
            .filter(|s| wanted.as_deref().is_none_or(|w| w == s.state(now).as_str()))
            .map(|s| (key(s), silence_view(s, now)))
            .filter(|(k, _)| after.as_deref().is_none_or(|a| k.as_str() > a))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items.truncate(request.limit as usize + 1);
        let page = page(items, request.limit, |(k, _)| k.clone());
        Ok(ListSilencesResponse::Ok(list(Page {
            items: page.items.into_iter().map(|(_, v)| v).collect(),
            next_cursor: page.next_cursor,
        })?))
    }

    async fn create_silence(&self, request: CreateSilenceRequest) -> Result<CreateSilenceResponse, ApiError> {
        let body = serde_json::to_value(&request.body).map_err(|e| ApiError::internal(&e))?;
        let now = chrono::Utc::now();
        let matchers: Vec<MatcherSpec> =
            serde_json::from_value(body["matchers"].clone()).map_err(|e| ApiError::internal(&e))?;
        let time = |field: &str| -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
            body.get(field)
                .filter(|v| !v.is_null())
                .map(|v| serde_json::from_value(v.clone()).map_err(|e| ApiError::internal(&e)))
                .transpose()
        };
        let silence = SilenceRecord {
            id: Uuid::new_v4(),
            matchers,
            starts_at: time("starts_at")?.unwrap_or(now),
            ends_at: time("ends_at")?.unwrap_or(now),
            created_by: body["created_by"].as_str().unwrap_or_default().to_string(),
            comment: body["comment"].as_str().unwrap_or_default().to_string(),
            created_at: now,
        };
        let silence = self.core.create_silence(silence).await.map_err(api_error)?;
        Ok(CreateSilenceResponse::Created {
            location: format!("/api/v1/silences/{}", silence.id),
            body: build(silence_view(&silence, chrono::Utc::now()))?,
        })
    }

    async fn get_silence(&self, request: GetSilenceRequest) -> Result<GetSilenceResponse, ApiError> {
        let silence = self.core.state().silences.get(&request.silence_id).map(|s| s.record.clone());
        let silence = silence.ok_or_else(|| ApiError::not_found(format!("no silence {}", request.silence_id)))?;
        Ok(GetSilenceResponse::Ok(build(silence_view(&silence, chrono::Utc::now()))?))
    }

    async fn expire_silence(&self, request: ExpireSilenceRequest) -> Result<ExpireSilenceResponse, ApiError> {
        self.core.expire_silence(request.silence_id).await.map_err(api_error)?;
        Ok(ExpireSilenceResponse::NoContent)
    }

    async fn list_receivers(&self, request: ListReceiversRequest) -> Result<ListReceiversResponse, ApiError> {
        let after = after(request.cursor.as_ref())?;
        let mut items: Vec<(String, Value)> = self
            .core
            .state()
            .receivers
            .values()
            .filter(|(r, _)| after.as_deref().is_none_or(|a| r.name.as_str() > a))
            .map(|(r, _)| (r.name.clone(), receiver_view(r)))
            .collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        items.truncate(request.limit as usize + 1);
        let page = page(items, request.limit, |(k, _)| k.clone());
        Ok(ListReceiversResponse::Ok(list(Page {
            items: page.items.into_iter().map(|(_, v)| v).collect(),
            next_cursor: page.next_cursor,
        })?))
    }

    async fn create_receiver(&self, request: CreateReceiverRequest) -> Result<CreateReceiverResponse, ApiError> {
        let spec: ReceiverSpec = convert(&request.body)?;
        let receiver = self.core.put_receiver(None, spec).await.map_err(api_error)?;
        Ok(CreateReceiverResponse::Created {
            location: format!("/api/v1/receivers/{}", receiver.id),
            body: build(receiver_view(&receiver))?,
        })
    }

    async fn get_receiver(&self, request: GetReceiverRequest) -> Result<GetReceiverResponse, ApiError> {
        let receiver = self.core.state().receivers.get(&request.receiver_id).map(|(r, _)| receiver_view(r));
        let receiver = receiver.ok_or_else(|| ApiError::not_found(format!("no receiver {}", request.receiver_id)))?;
        Ok(GetReceiverResponse::Ok(build(receiver)?))
    }

    async fn replace_receiver(&self, request: ReplaceReceiverRequest) -> Result<ReplaceReceiverResponse, ApiError> {
        let spec: ReceiverSpec = convert(&request.body)?;
        let receiver = self.core.put_receiver(Some(request.receiver_id), spec).await.map_err(api_error)?;
        Ok(ReplaceReceiverResponse::Ok(build(receiver_view(&receiver))?))
    }

    async fn delete_receiver(&self, request: DeleteReceiverRequest) -> Result<DeleteReceiverResponse, ApiError> {
        self.core.delete_receiver(request.receiver_id).await.map_err(api_error)?;
        Ok(DeleteReceiverResponse::NoContent)
    }

    async fn test_receiver(&self, request: TestReceiverRequest) -> Result<TestReceiverResponse, ApiError> {
        let attempt = self.core.test_receiver(request.receiver_id).await.map_err(api_error)?;
        Ok(TestReceiverResponse::Ok(build(json!({
            "delivered": attempt.delivered(),
            "status_code": attempt.status,
            "latency_ms": attempt.latency.as_secs_f64() * 1000.0,
            "error": attempt.error,
        }))?))
    }

    async fn ingest_spans(&self, request: IngestSpansRequest) -> Result<IngestSpansResponse, ApiError> {
        let spans = traces::contract::records(&request.body, std::time::SystemTime::now()).map_err(api_error)?;
        let location = traces::contract::location(&spans);
        let ingested = self.traces.ingest_checked(spans);
        Ok(IngestSpansResponse::Accepted { location, body: build(json!({"accepted": ingested.accepted}))? })
    }

    async fn list_traces(&self, request: ListTracesRequest) -> Result<ListTracesResponse, ApiError> {
        let after = match after(request.cursor.as_ref())? {
            Some(key) => Some(
                TraceCursor::from_key(&key)
                    .ok_or_else(|| ApiError::bad_request("invalid_cursor", "cursor is not one this server issued"))?,
            ),
            None => None,
        };
        let query = TraceQuery {
            service: request.service,
            min_duration: request.min_duration_ms.map(Duration::from_millis),
            since: request.since.map(Into::into),
            after,
            limit: request.limit as usize,
        };
        let page = self.traces.list(&query);
        Ok(ListTracesResponse::Ok(build(json!({
            "items": page.items.iter().map(traces::contract::summary_view).collect::<Vec<_>>(),
            "next_cursor": page.next.map(|next| cursor::encode(&next.to_key())),
        }))?))
    }

    async fn get_trace(&self, request: GetTraceRequest) -> Result<GetTraceResponse, ApiError> {
        let not_found = || ApiError::not_found(format!("no trace {} is stored", request.trace_id));
        let id = traces::parse_hex(&request.trace_id).ok_or_else(not_found)?;
        let spans = self.traces.get(&id).ok_or_else(not_found)?;
        Ok(GetTraceResponse::Ok(build(json!({
            "trace_id": request.trace_id,
            "spans": spans.iter().map(traces::contract::span_view).collect::<Vec<_>>(),
        }))?))
    }
}
