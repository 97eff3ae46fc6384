//! The trace operations over real HTTP: a batch is checked whole, answered with the
//! contract's `Location`, readable at once through it; listings filter and page; unknown
//! traces and spans past the retention are told apart from errors.

use super::{Service, start};
use chrono::{DateTime, SecondsFormat, Utc};
use conformance::support::{Backend, TestDatabase};
use serde_json::{Value, json};

/// `value` checked against the contract's schema `name`.
fn conforms(name: &str, value: &Value) {
    let doc: Value = serde_json::from_str(pake_monitoring_server::OPENAPI_JSON).expect("the contract is JSON");
    let reference = json!({"$ref": format!("#/components/schemas/{name}")});
    let schema = pake_api_runtime::schema::standalone_schema(&doc, &reference);
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let problems: Vec<String> = validator.iter_errors(value).map(|e| e.to_string()).collect();
    assert!(problems.is_empty(), "{name} breaks the contract: {problems:?}\n{value}");
}

/// RFC 3339 as the service writes it (UTC, as many fractional digits as needed), so that
/// times read back compare as text.
fn at(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A span of `trace` starting `offset_ms` after `base` and lasting `length_ms`.
fn span(
    trace: &str,
    id: &str,
    parent: Option<&str>,
    service: &str,
    base: DateTime<Utc>,
    offset_ms: i64,
    length_ms: i64,
) -> Value {
    let start = base + chrono::Duration::milliseconds(offset_ms);
    json!({
        "trace_id": trace,
        "span_id": id,
        "parent_span_id": parent,
        "name": format!("GET /{service}"),
        "service": service,
        "kind": "server",
        "start_time": at(start),
        "end_time": at(start + chrono::Duration::milliseconds(length_ms)),
        "status": "ok",
    })
}

const T1: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const T2: &str = "0af7651916cd43dd8448eb211c80319c";
const T3: &str = "b7ad6b7169203331b7ad6b7169203331";

impl Service {
    async fn ingest(&self, spans: Vec<Value>) -> (u16, Value, Option<String>) {
        let response = self
            .http
            .post(format!("{}/api/v1/traces/spans", self.url))
            .json(&json!({"spans": spans}))
            .send()
            .await
            .expect("the service answers");
        let status = response.status().as_u16();
        let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, location)
    }

    async fn traces(&self, query: &str) -> Value {
        let (status, body) = self.call("GET", &format!("/api/v1/traces{query}"), None).await;
        assert_eq!(status, 200, "{query}: {body}");
        conforms("TraceSummaryList", &body);
        body
    }
}

fn listed(page: &Value) -> Vec<&str> {
    page["items"].as_array().expect("items").iter().map(|i| i["trace_id"].as_str().expect("an id")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_checked_whole_stored_read_listed_and_paged() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let service = start(&db).await;
    let base = Utc::now() - chrono::Duration::seconds(30);

    // One trace: Location is the trace, readable at once, spans ordered by start.
    let mut child = span(T1, "53995c3f42cd8ad8", Some("00f067aa0ba902b7"), "search", base, 10, 128);
    child["duration_us"] = json!(128_250);
    child["status"] = json!("error");
    child["status_message"] = json!("upstream timed out");
    child["attributes"] = json!({"http.request.method": "GET", "http.route": "/search"});
    child["events"] = json!([{"name": "cache.miss", "time": at(base + chrono::Duration::milliseconds(12)),
        "attributes": {"cache.layer": "l2"}}]);
    let root = span(T1, "00f067aa0ba902b7", None, "gateway", base, 0, 145);
    let (status, body, location) = service.ingest(vec![child.clone(), root.clone()]).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"accepted": 2}));
    let location = location.expect("a Location");
    assert_eq!(location, format!("/api/v1/traces/{T1}"));
    let (status, trace) = service.call("GET", &location, None).await;
    assert_eq!(status, 200, "{trace}");
    conforms("Trace", &trace);
    assert_eq!(trace["trace_id"], T1);
    let spans = trace["spans"].as_array().expect("spans");
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0]["span_id"], "00f067aa0ba902b7");
    assert_eq!(spans[0]["parent_span_id"], Value::Null);
    assert_eq!(spans[0]["duration_us"], 145_000, "computed from the times");
    assert_eq!(spans[0]["status_message"], Value::Null);
    assert_eq!(spans[0]["attributes"], json!({}));
    assert_eq!(spans[0]["events"], json!([]));
    for field in ["name", "service", "kind", "status", "start_time", "end_time"] {
        assert_eq!(spans[0][field], root[field], "{field}");
    }
    for field in
        ["parent_span_id", "duration_us", "status", "status_message", "attributes", "events", "start_time", "end_time"]
    {
        assert_eq!(spans[1][field], child[field], "{field}");
    }

    // Two traces: Location lists from the earliest start, and it lists both.
    let later = base + chrono::Duration::seconds(5);
    let batch = vec![
        span(T2, "1111111111111111", None, "gateway", later, 20, 900),
        span(T2, "2222222222222222", Some("1111111111111111"), "arxiv", later, 25, 800),
        span(T3, "3333333333333333", None, "gateway", later, 0, 40),
    ];
    let (status, body, location) = service.ingest(batch).await;
    assert_eq!((status, &body), (202, &json!({"accepted": 3})));
    let location = location.expect("a Location");
    assert_eq!(location, format!("/api/v1/traces?since={}", at(later)));
    let page = service.traces(location.trim_start_matches("/api/v1/traces")).await;
    assert_eq!(listed(&page), vec![T2, T3], "newest start first, from the batch's earliest start");

    // Filters and the summary's fields.
    let all = service.traces("").await;
    assert_eq!(listed(&all), vec![T2, T3, T1]);
    let t1 = &all["items"][2];
    assert_eq!(t1["root_service"], "gateway");
    assert_eq!(t1["root_name"], "GET /gateway");
    assert_eq!(t1["start_time"], at(base));
    assert_eq!(t1["duration_ms"], 145.0);
    assert_eq!(t1["span_count"], 2);
    assert_eq!(t1["error"], true);
    assert_eq!(listed(&service.traces("?service=arxiv").await), vec![T2]);
    assert_eq!(listed(&service.traces("?service=gateway&min_duration_ms=140").await), vec![T2, T1]);
    assert_eq!(listed(&service.traces("?min_duration_ms=880").await), vec![T2]);
    assert_eq!(listed(&service.traces("?service=nobody").await), Vec::<&str>::new());

    // Pages of one, through the cursor.
    let mut seen = Vec::new();
    let mut query = "?limit=1".to_string();
    loop {
        let page = service.traces(&query).await;
        seen.extend(listed(&page).into_iter().map(str::to_string));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, vec![T2, T3, T1]);
    // A cursor this server did not issue ("nope", base64url).
    let (status, body) = service.call("GET", "/api/v1/traces?cursor=bm9wZQ", None).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_cursor")), "{body}");

    // Unknown traces are 404 with the error body.
    let (status, body) = service.call("GET", "/api/v1/traces/00000000000000000000000000000001", None).await;
    assert_eq!(status, 404, "{body}");
    conforms("Error", &body);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_span_refuses_the_batch_naming_it_and_old_spans_are_not_kept() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let service = start(&db).await;
    let base = Utc::now() - chrono::Duration::seconds(30);
    let fine = span(T1, "00f067aa0ba902b7", None, "gateway", base, 0, 10);

    let refused = |mutate: &dyn Fn(&mut Value)| {
        let mut bad = span(T2, "53995c3f42cd8ad8", None, "search", base, 0, 10);
        mutate(&mut bad);
        vec![fine.clone(), bad]
    };
    let cases: Vec<(Vec<Value>, &str)> = vec![
        (refused(&|s| s["end_time"] = json!(at(base - chrono::Duration::milliseconds(1)))), "/spans/1/end_time"),
        (refused(&|s| s["duration_us"] = json!(25_000)), "/spans/1/duration_us"),
        (refused(&|s| s["trace_id"] = json!("0".repeat(32))), "/spans/1/trace_id"),
        (refused(&|s| s["span_id"] = json!("0".repeat(16))), "/spans/1/span_id"),
        (
            refused(&|s| {
                s["start_time"] = json!(at(Utc::now() + chrono::Duration::hours(2)));
                s["end_time"] = s["start_time"].clone();
            }),
            "/spans/1/start_time",
        ),
    ];
    for (batch, field) in cases {
        let (status, body, _) = service.ingest(batch).await;
        assert_eq!(status, 422, "{field}: {body}");
        conforms("Error", &body);
        assert_eq!(body["details"][0]["field"], field, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| m.starts_with(field)), "{body}");
    }
    // Nothing of a refused batch was kept, its valid span included.
    let (status, _) = service.call("GET", &format!("/api/v1/traces/{T1}"), None).await;
    assert_eq!(status, 404);

    // A span that started before the retention (24 h) is accepted but not kept.
    let old = span(T3, "3333333333333333", None, "gateway", Utc::now() - chrono::Duration::hours(25), 0, 10);
    let (status, body, location) = service.ingest(vec![old, fine]).await;
    assert_eq!((status, &body), (202, &json!({"accepted": 1})));
    assert!(location.is_some_and(|l| l.starts_with("/api/v1/traces?since=")));
    let (status, _) = service.call("GET", &format!("/api/v1/traces/{T3}"), None).await;
    assert_eq!(status, 404);
    let (status, _) = service.call("GET", &format!("/api/v1/traces/{T1}"), None).await;
    assert_eq!(status, 200);

    let metrics = service
        .http
        .get(format!("{}/metrics", service.url))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("a body");
    for line in [
        "pake_monitoring_trace_spans 1",
        "pake_monitoring_trace_spans_refused_total{reason=\"expired\"} 1",
        "pake_monitoring_trace_spans_ingested_total{origin=\"api\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_fed_in_process_are_read_over_http() {
    let db = TestDatabase::new(Backend::Sqlite).await;
    let service = start(&db).await;
    let monitor = service.monitor.as_ref().expect("running");
    let now = std::time::SystemTime::now();
    let record = pake_monitoring::traces::SpanRecord {
        trace_id: pake_monitoring::traces::parse_hex(T2).expect("hex"),
        span_id: [1, 2, 3, 4, 5, 6, 7, 8],
        parent_span_id: None,
        name: "listServices".into(),
        service: "registry".into(),
        kind: pake_monitoring::traces::SpanKind::Server,
        start_time: now - std::time::Duration::from_millis(5),
        end_time: now,
        duration_us: None,
        status: pake_monitoring::traces::SpanStatus::Unset,
        status_message: None,
        attributes: vec![("http.response.status_code".into(), "200".into())],
        events: Vec::new(),
    };
    assert_eq!(monitor.traces().ingest(vec![record]).accepted, 1);
    let (status, trace) = service.call("GET", &format!("/api/v1/traces/{T2}"), None).await;
    assert_eq!(status, 200, "{trace}");
    assert_eq!(trace["spans"][0]["span_id"], "0102030405060708");
    assert_eq!(trace["spans"][0]["duration_us"], 5000);
    assert_eq!(trace["spans"][0]["attributes"], json!({"http.response.status_code": "200"}));
    service.stop().await;
}
