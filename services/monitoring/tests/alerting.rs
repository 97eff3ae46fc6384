//! The monitoring service end to end over real HTTP: pushed samples fire alerts that reach
//! a real webhook receiver in Alertmanager's shape and resolve; an instance failing its
//! health URL is taken out of discovery by an auto-heal alert and handed back when it
//! recovers; rules, receivers (with sealed headers), silences and alerts survive a restart.

#[path = "alerting/promtool.rs"]
mod promtool;
#[path = "alerting/traces.rs"]
mod traces;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use conformance::TestServer;
use conformance::support::{Backend, TestDatabase, eventually};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SECRET: &[u8] = b"monitoring-test-secret-0123456789abcdef";

struct Service {
    monitor: Option<pake_monitoring::Monitor>,
    server: Option<TestServer>,
    registry: Arc<pake_registry::Registry>,
    http: reqwest::Client,
    url: String,
    /// What its notifications name as `externalURL`.
    external_url: String,
}

async fn start(db: &TestDatabase) -> Service {
    start_at(db, "http://127.0.0.1:9090").await
}

/// A replica whose notifications name `external_url` as their `externalURL`.
async fn start_at(db: &TestDatabase, external_url: &str) -> Service {
    let store = pake_registry::Store::open(&db.url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store.clone()).await.expect("registry starts"));
    let metrics = pake_observe::Metrics::new("monitoring");
    let mut options = pake_monitoring::MonitorOptions::new([9u8; 32]);
    options.external_url = external_url.to_string();
    options.loopback_only = true;
    options.warm_up = Duration::from_secs(2);
    let monitor = pake_monitoring::Monitor::start(store, registry.clone(), metrics.clone(), options)
        .await
        .expect("monitor starts");
    let verifier = pake_tokens::TokenVerifier::hs256(SECRET).expect("secret");
    let server = TestServer::start(pake_monitoring::router(&monitor, verifier, metrics)).await.expect("server starts");
    let token = pake_tokens::TokenIssuer::hs256(SECRET).expect("secret").issue(
        "tester",
        None,
        &["monitoring:read", "monitoring:write"],
        Duration::from_secs(3600),
    );
    let url = server.url();
    monitor.serving_at(url.clone());
    Service {
        monitor: Some(monitor),
        server: Some(server),
        registry,
        http: conformance::http_client_with_token(&token),
        url,
        external_url: external_url.to_string(),
    }
}

impl Service {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method.parse().expect("a method"), format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the service answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Pushes one sample as a metrics agent does: a 503 with `Retry-After` (a fail-over
    /// under way) is tried again after the time it names, for up to 10 s.
    async fn push(&self, name: &str, labels: Value, value: f64) {
        let body = json!({"source": "test", "samples": [{"name": name, "labels": labels, "value": value}]});
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let response = self
                .http
                .post(format!("{}/api/v1/metrics/samples", self.url))
                .json(&body)
                .send()
                .await
                .expect("the service answers");
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map(Duration::from_secs);
            let text = response.text().await.expect("a body");
            match retry_after {
                Some(wait) if status == 503 && Instant::now() + wait < deadline => tokio::time::sleep(wait).await,
                _ => {
                    assert_eq!(status, 202, "{text}");
                    return;
                }
            }
        }
    }

    async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.monitor.take();
    }
}

/// A webhook receiver: every body it gets, with its Authorization header.
async fn webhook() -> (TestServer, mpsc::UnboundedReceiver<(Value, Option<String>, Instant)>) {
    webhook_refusing(Arc::default()).await
}

/// Which replica's notifications a webhook refuses, told by their `externalURL`, and how
/// many it refused.
#[derive(Default)]
struct Refusal {
    external_url: std::sync::Mutex<Option<String>>,
    refused: std::sync::atomic::AtomicUsize,
}

/// A webhook receiver that answers 503 to what `refusal` names and takes every other
/// body, with its Authorization header.
async fn webhook_refusing(
    refusal: Arc<Refusal>,
) -> (TestServer, mpsc::UnboundedReceiver<(Value, Option<String>, Instant)>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    type Taken = mpsc::UnboundedSender<(Value, Option<String>, Instant)>;
    async fn take(
        State((sender, refusal)): State<(Taken, Arc<Refusal>)>,
        headers: HeaderMap,
        body: axum::Json<Value>,
    ) -> StatusCode {
        let refused = refusal.external_url.lock().expect("refusal").clone();
        if refused.is_some_and(|url| body.0["externalURL"] == json!(url)) {
            refusal.refused.fetch_add(1, Ordering::SeqCst);
            return StatusCode::SERVICE_UNAVAILABLE;
        }
        let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
        let _ = sender.send((body.0, auth, Instant::now()));
        StatusCode::OK
    }
    let router = axum::Router::new().route("/hook", axum::routing::post(take)).with_state((sender, refusal));
    (TestServer::start(router).await.expect("webhook starts"), receiver)
}

/// The next notification, checked against the contract's `AlertNotification` schema.
async fn next_notification(
    notifications: &mut mpsc::UnboundedReceiver<(Value, Option<String>, Instant)>,
) -> (Value, Option<String>, Instant) {
    let notification = tokio::time::timeout(Duration::from_secs(10), notifications.recv())
        .await
        .expect("a notification within 10 s")
        .expect("the webhook is up");
    let doc: Value = serde_json::from_str(pake_monitoring_server::OPENAPI_JSON).expect("the contract is JSON");
    let reference = json!({"$ref": "#/components/schemas/AlertNotification"});
    let schema = pake_api_runtime::schema::standalone_schema(&doc, &reference);
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let problems: Vec<String> = validator.iter_errors(&notification.0).map(|e| e.to_string()).collect();
    assert!(problems.is_empty(), "the notification breaks the contract: {problems:?}\n{}", notification.0);
    notification
}

async fn alerts_fire_notify_and_resolve(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let service = start(&db).await;
    let (hook, mut notifications) = webhook().await;
    let (status, receiver) = service
        .call(
            "POST",
            "/api/v1/receivers",
            Some(json!({"name": "oncall", "url": format!("{}/hook", hook.url()), "headers": {"Authorization": "Bearer s3cret"}})),
        )
        .await;
    assert_eq!(status, 201, "{receiver}");
    assert_eq!(receiver["headers"]["Authorization"], "<redacted>");
    let (status, rule) = service
        .call(
            "POST",
            "/api/v1/alert-rules",
            Some(json!({
                "name": "deep-queue", "metric": "queue_depth", "comparison": "gt", "threshold": 10,
                "severity": "warning", "receivers": [receiver["id"]],
                "matchers": [{"label": "queue", "op": "match_regex", "value": "arx.*"}],
                "annotations": {"summary": "{{ $labels.queue }} holds {{ $value }}"}
            })),
        )
        .await;
    assert_eq!(status, 201, "{rule}");

    service.push("queue_depth", json!({"queue": "pubmed"}), 50.0).await;
    let pushed = Instant::now();
    service.push("queue_depth", json!({"queue": "arxiv"}), 20.0).await;
    let (body, auth, arrived) = next_notification(&mut notifications).await;
    eprintln!("push to webhook: {:?}", arrived - pushed);
    assert!(arrived - pushed < Duration::from_secs(5), "the alert fired within 5 s");
    assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
    assert_eq!(body["version"], "4");
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "oncall");
    assert_eq!(body["alerts"].as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(body["alerts"][0]["labels"]["queue"], "arxiv");
    assert_eq!(body["alerts"][0]["annotations"]["summary"], "arxiv holds 20");

    let (_, alerts) = service.call("GET", "/api/v1/alerts?state=firing", None).await;
    let alert = alerts["items"][0].clone();
    assert_eq!(alert["fingerprint"], body["alerts"][0]["fingerprint"]);
    let (status, acked) = service
        .call(
            "POST",
            &format!("/api/v1/alerts/{}/acknowledge", alert["id"].as_str().unwrap()),
            Some(json!({"by": "alice"})),
        )
        .await;
    assert_eq!((status, acked["acknowledged_by"].clone()), (200, json!("alice")));
    let (_, rule_now) =
        service.call("GET", &format!("/api/v1/alert-rules/{}", rule["id"].as_str().unwrap()), None).await;
    assert_eq!((rule_now["state"].clone(), rule_now["firing_alerts"].clone()), (json!("firing"), json!(1)));

    // The condition clears: resolved, notified, kept readable; acknowledging it is refused.
    service.push("queue_depth", json!({"queue": "arxiv"}), 3.0).await;
    let (body, _, _) = next_notification(&mut notifications).await;
    assert_eq!(body["status"], "resolved");
    assert_ne!(body["alerts"][0]["endsAt"], "0001-01-01T00:00:00Z");
    let (_, resolved) = service.call("GET", &format!("/api/v1/alerts/{}", alert["id"].as_str().unwrap()), None).await;
    assert_eq!(resolved["state"], "resolved");
    let (status, _) = service
        .call(
            "POST",
            &format!("/api/v1/alerts/{}/acknowledge", alert["id"].as_str().unwrap()),
            Some(json!({"by": "bob"})),
        )
        .await;
    assert_eq!(status, 409);

    // A silence mutes the next alert; expiring it lets the notification through.
    let ends = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, silence) = service
        .call(
            "POST",
            "/api/v1/silences",
            Some(json!({"matchers": [{"label": "queue", "op": "equal", "value": "arxiv"}], "ends_at": ends, "created_by": "alice", "comment": "reindexing"})),
        )
        .await;
    assert_eq!((status, silence["state"].clone()), (201, json!("active")), "{silence}");
    service.push("queue_depth", json!({"queue": "arxiv"}), 30.0).await;
    let silenced = eventually(Duration::from_secs(5), || async {
        let (_, alerts) = service.call("GET", "/api/v1/alerts?state=firing&silenced=true", None).await;
        alerts["items"].as_array().is_some_and(|items| items.len() == 1)
    })
    .await;
    eprintln!("silenced alert listed after {silenced:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), notifications.recv()).await.is_err(),
        "a silenced alert is not notified"
    );
    let (status, _) =
        service.call("DELETE", &format!("/api/v1/silences/{}", silence["id"].as_str().unwrap()), None).await;
    assert_eq!(status, 204);
    let (body, _, _) = next_notification(&mut notifications).await;
    assert_eq!(body["status"], "firing");

    // A receiver a rule names cannot be deleted; the rule's deletion resolves its alerts.
    let (status, _) =
        service.call("DELETE", &format!("/api/v1/receivers/{}", receiver["id"].as_str().unwrap()), None).await;
    assert_eq!(status, 409);

    // Everything survives a restart on the same store, and the still-firing alert is
    // notified once more (with the sealed header opened again).
    service.stop().await;
    let service = start(&db).await;
    let (_, rules) = service.call("GET", "/api/v1/alert-rules", None).await;
    assert_eq!(rules["items"][0]["name"], "deep-queue");
    let (_, receivers) = service.call("GET", "/api/v1/receivers", None).await;
    assert_eq!(receivers["items"][0]["headers"]["Authorization"], "<redacted>");
    let (_, silences) = service.call("GET", "/api/v1/silences?state=expired", None).await;
    assert_eq!(silences["items"].as_array().map(Vec::len), Some(1));
    let (_, firing) = service.call("GET", "/api/v1/alerts?state=firing", None).await;
    assert_eq!(firing["items"].as_array().map(Vec::len), Some(1), "{firing}");
    // Samples are not kept across restarts: push again so the alert keeps holding.
    service.push("queue_depth", json!({"queue": "arxiv"}), 30.0).await;
    let (body, auth, _) = next_notification(&mut notifications).await;
    assert_eq!((body["status"].clone(), auth.as_deref()), (json!("firing"), Some("Bearer s3cret")));
    assert_eq!(body["alerts"][0]["fingerprint"], firing["items"][0]["fingerprint"]);

    let (status, _) =
        service.call("DELETE", &format!("/api/v1/alert-rules/{}", rule["id"].as_str().unwrap()), None).await;
    assert_eq!(status, 204);
    let (body, _, _) = next_notification(&mut notifications).await;
    assert_eq!(body["status"], "resolved");
    let (status, _) =
        service.call("DELETE", &format!("/api/v1/receivers/{}", receiver["id"].as_str().unwrap()), None).await;
    assert_eq!(status, 204);
    service.stop().await;
    hook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_notify_resolve_and_survive_a_restart_on_sqlite() {
    alerts_fire_notify_and_resolve(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_fire_notify_resolve_and_survive_a_restart_on_postgres() {
    alerts_fire_notify_and_resolve(Backend::Postgres).await;
}

/// An upstream whose health URL answers 200 or 503 as the test says.
async fn upstream(healthy: Arc<AtomicBool>) -> TestServer {
    async fn health(State(healthy): State<Arc<AtomicBool>>) -> (StatusCode, axum::Json<Value>) {
        if healthy.load(Ordering::SeqCst) {
            (StatusCode::OK, axum::Json(json!({"status": "pass"})))
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "fail"})))
        }
    }
    let router = axum::Router::new().route("/health", axum::routing::get(health)).with_state(healthy);
    TestServer::start(router).await.expect("upstream starts")
}

fn discovered(registry: &pake_registry::Registry, instance: &str) -> bool {
    let snapshot = registry.snapshot();
    let now = chrono::Utc::now().timestamp_millis();
    snapshot.service_by_name("search").is_some_and(|data| {
        data.instances.iter().any(|r| {
            r.instance.id.to_string() == instance
                && !r.is_expired(now)
                && r.effective(now).status != pake_mesh_server::types::InstanceStatus::Critical
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_heal_alert_takes_a_failing_instance_out_of_discovery_and_hands_it_back() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let service = start(&db).await;
    let healthy = Arc::new(AtomicBool::new(true));
    let upstream = upstream(healthy.clone()).await;
    // Thresholds high enough that the checks alone would not mark it critical for a while:
    // what takes it out is the alert.
    let registration = serde_json::from_value(json!({
        "name": "search", "version": "1.0.0",
        "health_check": {"path": "/health", "interval_seconds": 1, "timeout_ms": 500, "healthy_threshold": 1, "unhealthy_threshold": 10}
    }))
    .unwrap();
    let registered = service.registry.register_service(registration, None).await.expect("service registers");
    let instance = service
        .registry
        .register_instance(
            registered.id,
            serde_json::from_value(json!({"address": "127.0.0.1", "port": upstream.addr.port(), "ttl_seconds": 3600}))
                .unwrap(),
        )
        .await
        .expect("instance registers");
    let instance_id = instance.id.to_string();
    let (status, rule) = service
        .call(
            "POST",
            "/api/v1/alert-rules",
            Some(json!({
                "name": "search-instance-down", "metric": "up", "comparison": "lt", "threshold": 1,
                "severity": "critical", "auto_heal": true,
                "matchers": [{"label": "service", "op": "equal", "value": "search"}, {"label": "job", "op": "equal", "value": "health"}],
            })),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    eventually(Duration::from_secs(5), || async {
        let (_, health) = service.call("GET", &format!("/api/v1/health/instances/{instance_id}"), None).await;
        health["status"] == "passing"
    })
    .await;
    assert!(discovered(&service.registry, &instance_id));

    healthy.store(false, Ordering::SeqCst);
    let out = eventually(Duration::from_secs(5), || async { !discovered(&service.registry, &instance_id) }).await;
    eprintln!("out of discovery {out:?} after the health URL started failing");
    let (_, alerts) = service.call("GET", "/api/v1/alerts?state=firing", None).await;
    assert_eq!(alerts["items"][0]["auto_healed_instance_id"], json!(instance_id), "{alerts}");
    let (_, summary) = service.call("GET", "/api/v1/health/summary", None).await;
    assert_eq!(summary["services"][0]["service"], "search");

    healthy.store(true, Ordering::SeqCst);
    let back = eventually(Duration::from_secs(5), || async { discovered(&service.registry, &instance_id) }).await;
    eprintln!("back in discovery {back:?} after the health URL recovered");
    let (_, alerts) = service.call("GET", "/api/v1/alerts?state=resolved", None).await;
    assert_eq!(alerts["items"].as_array().map(Vec::len), Some(1), "{alerts}");
    service.stop().await;
    upstream.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_over_the_series_limit_are_refused_naming_it_and_counted() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let store = pake_registry::Store::open(&db.url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store.clone()).await.expect("registry starts"));
    let metrics = pake_observe::Metrics::new("monitoring");
    let mut options = pake_monitoring::MonitorOptions::new([1u8; 32]);
    // Own metrics and `up` take some series at the first scrape; leave room for them.
    options.limits.max_series = 400;
    let monitor = pake_monitoring::Monitor::start(store, registry, metrics.clone(), options).await.expect("starts");
    let verifier = pake_tokens::TokenVerifier::hs256(SECRET).expect("secret");
    let server = TestServer::start(pake_monitoring::router(&monitor, verifier, metrics)).await.expect("server starts");
    let token = pake_tokens::TokenIssuer::hs256(SECRET).expect("secret").issue(
        "t",
        None,
        &["monitoring:write"],
        Duration::from_secs(60),
    );
    let http = conformance::http_client_with_token(&token);
    let samples: Vec<Value> =
        (0..500).map(|i| json!({"name": "wide", "labels": {"i": i.to_string()}, "value": 1})).collect();
    let response = http
        .post(format!("{}/api/v1/metrics/samples", server.url()))
        .json(&json!({"samples": samples}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 422);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "series_limit");
    assert!(body["message"].as_str().unwrap().contains("series limit of 400"), "{body}");
    let exposition = reqwest::get(format!("{}/metrics", server.url())).await.unwrap().text().await.unwrap();
    assert!(exposition.contains("pake_monitoring_samples_refused_total{reason=\"series_limit\"} 500"), "{exposition}");
    server.stop().await;
}

/// Whether the replica evaluates (holds the lease).
fn leads(service: &Service) -> bool {
    service.monitor.as_ref().expect("running").core().is_leader()
}

/// No notification arrives for `quiet`.
async fn no_more_notifications(
    notifications: &mut mpsc::UnboundedReceiver<(Value, Option<String>, Instant)>,
    quiet: Duration,
) {
    if let Ok(Some((body, _, _))) = tokio::time::timeout(quiet, notifications.recv()).await {
        panic!("a notification too many: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_one_database_notify_once_and_fail_over() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let first = start(&db).await;
    let second = start(&db).await;
    eventually(Duration::from_secs(10), || async { leads(&first) != leads(&second) }).await;
    let (hook, mut notifications) = webhook().await;
    let (status, receiver) = first
        .call("POST", "/api/v1/receivers", Some(json!({"name": "oncall", "url": format!("{}/hook", hook.url())})))
        .await;
    assert_eq!(status, 201, "{receiver}");
    // Replicas read what the others wrote within about a second.
    let path = format!("/api/v1/receivers/{}", receiver["id"].as_str().unwrap_or_default());
    eventually(Duration::from_secs(5), || async { second.call("GET", &path, None).await.0 == 200 }).await;
    // One rule created through each replica: the leader takes up the follower's from the
    // store.
    for (service, name) in [(&first, "deep-queue"), (&second, "long-queue")] {
        let (status, rule) = service
            .call(
                "POST",
                "/api/v1/alert-rules",
                Some(json!({
                    "name": name, "metric": format!("{}_depth", name.replace('-', "_")), "comparison": "gt",
                    "threshold": 10, "severity": "warning", "receivers": [receiver["id"]]
                })),
            )
            .await;
        assert_eq!(status, 201, "{rule}");
    }
    // Every replica scrapes for itself; a push to a follower is passed on to the leader.
    for service in [&first, &second] {
        service.push("deep_queue_depth", json!({"queue": "arxiv"}), 20.0).await;
        service.push("long_queue_depth", json!({"queue": "pubmed"}), 30.0).await;
    }
    let mut fired = Vec::new();
    for _ in 0..2 {
        let (body, _, _) = next_notification(&mut notifications).await;
        assert_eq!(body["status"], "firing", "{body}");
        fired.push(body["commonLabels"]["alertname"].as_str().unwrap_or_default().to_string());
    }
    fired.sort();
    assert_eq!(fired, ["deep-queue", "long-queue"]);
    no_more_notifications(&mut notifications, Duration::from_secs(3)).await;
    // Both answer with the alerts the leader stored.
    for service in [&first, &second] {
        let seen = eventually(Duration::from_secs(5), || async {
            let (_, alerts) = service.call("GET", "/api/v1/alerts?state=firing", None).await;
            alerts["items"].as_array().map_or(0, Vec::len) == 2
        });
        seen.await;
    }

    // The leader goes; the follower takes over without notifying again what was notified,
    // and goes on: a resolution is notified once.
    let (leader, survivor) = if leads(&first) { (first, second) } else { (second, first) };
    leader.stop().await;
    let took = eventually(Duration::from_secs(10), || async { leads(&survivor) }).await;
    no_more_notifications(&mut notifications, Duration::from_secs(4)).await;
    survivor.push("deep_queue_depth", json!({"queue": "arxiv"}), 1.0).await;
    let (body, _, _) = next_notification(&mut notifications).await;
    assert_eq!(
        (body["status"].as_str(), body["commonLabels"]["alertname"].as_str()),
        (Some("resolved"), Some("deep-queue"))
    );
    no_more_notifications(&mut notifications, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(5), "fail-over took {took:?}");
    survivor.stop().await;
    hook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_still_on_its_way_when_the_leader_stops_is_sent_by_the_next() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let first = start_at(&db, "http://replica-1.test").await;
    let second = start_at(&db, "http://replica-2.test").await;
    eventually(Duration::from_secs(10), || async { leads(&first) != leads(&second) }).await;
    let (leader, survivor) = if leads(&first) { (first, second) } else { (second, first) };
    // The receiver refuses the leader's notifications, so that its first stays queued
    // for retries (many of them) until the leader stops.
    let refusal = Arc::new(Refusal::default());
    *refusal.external_url.lock().expect("refusal") = Some(leader.external_url.clone());
    let (hook, mut notifications) = webhook_refusing(refusal.clone()).await;
    let (status, receiver) = leader
        .call(
            "POST",
            "/api/v1/receivers",
            Some(json!({"name": "oncall", "url": format!("{}/hook", hook.url()), "max_retries": 10})),
        )
        .await;
    assert_eq!(status, 201, "{receiver}");
    let (status, rule) = leader
        .call(
            "POST",
            "/api/v1/alert-rules",
            Some(json!({
                "name": "deep-queue", "metric": "queue_depth", "comparison": "gt", "threshold": 10,
                "severity": "warning", "receivers": [receiver["id"]]
            })),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    for service in [&leader, &survivor] {
        service.push("queue_depth", json!({"queue": "arxiv"}), 20.0).await;
    }
    eventually(Duration::from_secs(10), || async { refusal.refused.load(Ordering::SeqCst) > 0 }).await;
    leader.stop().await;
    eventually(Duration::from_secs(10), || async { leads(&survivor) }).await;
    // The next leader sends what the last one never delivered.
    let (body, _, _) = next_notification(&mut notifications).await;
    assert_eq!(
        (body["status"].as_str(), body["commonLabels"]["alertname"].as_str(), body["externalURL"].as_str()),
        (Some("firing"), Some("deep-queue"), Some(survivor.external_url.as_str())),
        "{body}"
    );
    no_more_notifications(&mut notifications, Duration::from_secs(3)).await;
    survivor.stop().await;
    hook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_notification_still_on_its_way_when_the_leader_stops_is_sent_by_the_next() {
    resolved_on_its_way_when_the_leader_stops(Resolution::ConditionEnds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_rules_resolved_notification_still_on_its_way_when_the_leader_stops_is_sent_by_the_next() {
    resolved_on_its_way_when_the_leader_stops(Resolution::RuleDeleted).await;
}

/// How a firing alert ends.
#[derive(Clone, Copy)]
enum Resolution {
    /// Its condition stops holding.
    ConditionEnds,
    /// Its rule is deleted: nothing of the rule is left to say whom to tell.
    RuleDeleted,
}

async fn resolved_on_its_way_when_the_leader_stops(resolution: Resolution) {
    let db = TestDatabase::new(Backend::Postgres).await;
    let first = start_at(&db, "http://replica-1.test").await;
    let second = start_at(&db, "http://replica-2.test").await;
    eventually(Duration::from_secs(10), || async { leads(&first) != leads(&second) }).await;
    let (leader, survivor) = if leads(&first) { (first, second) } else { (second, first) };
    let refusal = Arc::new(Refusal::default());
    let (hook, mut notifications) = webhook_refusing(refusal.clone()).await;
    let (status, receiver) = leader
        .call(
            "POST",
            "/api/v1/receivers",
            Some(json!({
                "name": "oncall", "url": format!("{}/hook", hook.url()), "send_resolved": true, "max_retries": 10
            })),
        )
        .await;
    assert_eq!(status, 201, "{receiver}");
    let (status, rule) = leader
        .call(
            "POST",
            "/api/v1/alert-rules",
            Some(json!({
                "name": "deep-queue", "metric": "queue_depth", "comparison": "gt", "threshold": 10,
                "severity": "warning", "receivers": [receiver["id"]]
            })),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    for service in [&leader, &survivor] {
        service.push("queue_depth", json!({"queue": "arxiv"}), 20.0).await;
    }
    // The firing notification is delivered by the leader.
    let (body, _, _) = next_notification(&mut notifications).await;
    assert_eq!(
        (body["status"].as_str(), body["externalURL"].as_str()),
        (Some("firing"), Some(leader.external_url.as_str())),
        "{body}"
    );
    // From now on the receiver refuses the leader, so that its resolved notification stays
    // queued for retries until the leader stops.
    *refusal.external_url.lock().expect("refusal") = Some(leader.external_url.clone());
    match resolution {
        Resolution::ConditionEnds => {
            for service in [&leader, &survivor] {
                service.push("queue_depth", json!({"queue": "arxiv"}), 1.0).await;
            }
        }
        Resolution::RuleDeleted => {
            let path = format!("/api/v1/alert-rules/{}", rule["id"].as_str().unwrap_or_default());
            let (status, body) = leader.call("DELETE", &path, None).await;
            assert_eq!(status, 204, "{body}");
        }
    }
    eventually(Duration::from_secs(10), || async { refusal.refused.load(Ordering::SeqCst) > 0 }).await;
    leader.stop().await;
    eventually(Duration::from_secs(10), || async { leads(&survivor) }).await;
    // The next leader sends the resolution the last one never delivered, and only it.
    let (body, _, _) = next_notification(&mut notifications).await;
    assert_eq!(
        (body["status"].as_str(), body["commonLabels"]["alertname"].as_str(), body["externalURL"].as_str()),
        (Some("resolved"), Some("deep-queue"), Some(survivor.external_url.as_str())),
        "{body}"
    );
    no_more_notifications(&mut notifications, Duration::from_secs(3)).await;
    // Once delivered, it is recorded as such: a replica that takes over later sends nothing.
    let (_, alerts) = survivor.call("GET", "/api/v1/alerts?state=resolved", None).await;
    assert_eq!(alerts["items"].as_array().map_or(0, Vec::len), 1, "{alerts}");
    let third = start_at(&db, "http://replica-3.test").await;
    survivor.stop().await;
    eventually(Duration::from_secs(10), || async { leads(&third) }).await;
    no_more_notifications(&mut notifications, Duration::from_secs(4)).await;
    third.stop().await;
    hook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_a_follower_reaches_the_leader_with_the_callers_token() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let first = start(&db).await;
    let second = start(&db).await;
    eventually(Duration::from_secs(10), || async { leads(&first) != leads(&second) }).await;
    let (mut leader, follower) = if leads(&first) { (first, second) } else { (second, first) };
    let (hook, mut notifications) = webhook().await;
    let (status, receiver) = leader
        .call("POST", "/api/v1/receivers", Some(json!({"name": "oncall", "url": format!("{}/hook", hook.url())})))
        .await;
    assert_eq!(status, 201, "{receiver}");
    let (status, rule) = leader
        .call(
            "POST",
            "/api/v1/alert-rules",
            Some(json!({
                "name": "deep-queue", "metric": "queue_depth", "comparison": "gt", "threshold": 10,
                "severity": "warning", "receivers": [receiver["id"]]
            })),
        )
        .await;
    assert_eq!(status, 201, "{rule}");
    let push = |client: reqwest::Client, body: Value| {
        let url = format!("{}/api/v1/metrics/samples", follower.url);
        async move { client.post(url).json(&body).send().await.expect("the follower answers") }
    };
    let samples =
        json!({"source": "test", "samples": [{"name": "queue_depth", "labels": {"queue": "arxiv"}, "value": 20.0}]});
    // Pushed to the follower only, once it knows the leader (within a lease check).
    eventually(Duration::from_secs(5), || {
        let pushed = push(follower.http.clone(), samples.clone());
        async move { pushed.await.status() == 202 }
    })
    .await;
    let answer = push(follower.http.clone(), samples.clone()).await;
    assert_eq!(answer.status(), 202);
    assert_eq!(answer.headers()["location"], "/api/v1/metrics?source=test");
    assert_eq!(answer.json::<Value>().await.expect("json")["accepted"], 1);
    // The leader judged it.
    let (body, _, _) = next_notification(&mut notifications).await;
    assert_eq!(
        (body["status"].as_str(), body["commonLabels"]["alertname"].as_str()),
        (Some("firing"), Some("deep-queue")),
        "{body}"
    );
    // The follower keeps what the leader took, for its own answers and a fail-over.
    let (status, metrics) = follower.call("GET", "/api/v1/metrics?source=test", None).await;
    assert_eq!(status, 200, "{metrics}");
    assert!(metrics.to_string().contains("queue_depth"), "{metrics}");
    // The leader's answers are the follower's: a bad sample, and a caller without a token.
    let bad = json!({"source": "test", "samples": [{"name": "2bad", "labels": {}, "value": 1.0}]});
    let refused = push(follower.http.clone(), bad).await;
    assert_eq!(refused.status(), 422);
    let refused: Value = refused.json().await.expect("json");
    assert!(refused.to_string().contains("name"), "{refused}");
    assert_eq!(push(reqwest::Client::new(), samples.clone()).await.status(), 401);
    // The leader can no longer be reached while it keeps the lease: try again later.
    if let Some(server) = leader.server.take() {
        server.stop().await;
    }
    let unavailable = push(follower.http.clone(), samples.clone()).await;
    assert_eq!(unavailable.status(), 503);
    assert_eq!(unavailable.headers()["retry-after"], "1");
    assert_eq!(unavailable.json::<Value>().await.expect("json")["code"], "unavailable");
    leader.stop().await;
    follower.stop().await;
    hook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_address_that_reaches_a_follower_is_refused_not_looped() {
    let db = TestDatabase::new(Backend::Postgres).await;
    let first = start(&db).await;
    let second = start(&db).await;
    eventually(Duration::from_secs(10), || async { leads(&first) != leads(&second) }).await;
    let (leader, follower) = if leads(&first) { (first, second) } else { (second, first) };
    // The leader advertises an address that reaches the follower (as a load balancer's
    // might), spelled differently from the follower's own.
    leader.monitor.as_ref().expect("running").serving_at(format!("{}/", follower.url));
    let samples =
        json!({"source": "test", "samples": [{"name": "queue_depth", "labels": {"queue": "arxiv"}, "value": 20.0}]});
    let url = format!("{}/api/v1/metrics/samples", follower.url);
    let answered = eventually(Duration::from_secs(10), || {
        let pushed = follower.http.post(&url).json(&samples).send();
        async move {
            let answer = pushed.await.expect("the follower answers");
            let status = answer.status();
            let body = answer.text().await.unwrap_or_default();
            status == 503 && body.contains("PAKE_MONITORING_ADVERTISE_URL")
        }
    });
    // Within a lease check or two, not after hops that each wait for the next.
    assert!(answered.await < Duration::from_secs(5));
    follower.stop().await;
    leader.stop().await;
}
