//! The monitoring contract against the real monitoring service (with the registry beside
//! it, as `pake serve` runs them), served over real HTTP on a loopback port, on a fresh
//! PostgreSQL database and on a fresh SQLite file.
//!
//! The trace operations run as single operations: `ingestSpans` declares no link to
//! `getTrace`, and the engine's generated times fall anywhere in 1970–2100, so nearly
//! every generated batch holds a span past the 24-hour retention (accepted, not kept) or
//! one that ends before it starts or starts in the future (422). A directed check through
//! the generated client then ingests spans of the present and reads them back with
//! `getTrace` and `listTraces`, so that the client decodes what the server answers.
//!
//! Silences run as single operations, not as a create → read → delete sequence: `expireSilence`
//! leaves the silence readable (as Alertmanager's DELETE does), which the engine's
//! read-after-delete-gives-404 step cannot express yet, so the test's copy of the contract
//! drops the link from `createSilence` to `getSilence` that makes silences a sequence
//! (`services/monitoring/tests/alerting.rs` drives that life cycle). Receivers are limited
//! to loopback addresses here, so that generated webhook URLs never leave the machine.

use conformance::support::{Backend, TestDatabase};
use conformance::{Config, ContractSource, Engine, Target, TestServer};
use std::sync::Arc;
use std::time::Duration;

const SECRET: &[u8] = b"conformance-secret-0123456789abcdefgh";

/// The monitoring contract less the link that makes silences a create → delete sequence.
fn contract_without_silence_sequences() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/monitoring.yaml");
    let mut contract: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).expect("the contract reads")).expect("the contract parses");
    let paths = contract.get_mut("paths").and_then(serde_yaml::Value::as_mapping_mut).expect("paths");
    let created = paths
        .get_mut("/api/v1/silences")
        .and_then(|path| path.get_mut("post"))
        .and_then(|post| post.get_mut("responses"))
        .and_then(|responses| responses.get_mut("201"))
        .and_then(serde_yaml::Value::as_mapping_mut)
        .expect("createSilence answers 201");
    created.remove("links");
    serde_yaml::to_string(&contract).expect("the contract serialises")
}

async fn run_against_monitoring(backend: Backend) {
    let db = TestDatabase::new(backend).await;
    let store = pake_registry::Store::open(&db.url).await.expect("store opens");
    let registry = Arc::new(pake_registry::Registry::start(store.clone()).await.expect("registry starts"));
    let metrics = pake_observe::Metrics::new("monitoring");
    let mut options = pake_monitoring::MonitorOptions::new([7u8; 32]);
    options.loopback_only = true;
    let monitor =
        pake_monitoring::Monitor::start(store, registry, metrics.clone(), options).await.expect("monitoring starts");
    let verifier = pake_tokens::TokenVerifier::hs256(SECRET).expect("secret");
    let server = TestServer::start(pake_monitoring::router(&monitor, verifier, metrics)).await.expect("server starts");

    let token = pake_tokens::TokenIssuer::hs256(SECRET).expect("secret").issue(
        "conformance",
        None,
        &["monitoring:read", "monitoring:write"],
        Duration::from_secs(3600),
    );
    let engine = Engine::new(
        ContractSource::text("monitoring.yaml", contract_without_silence_sequences()),
        Target::new(server.url()).with_token(token.clone()).or_from_env(),
    )
    .expect("the contract loads");
    let config = Config::default()
        // Generated receiver ids name no receiver; generated label names may be reserved
        // (`__…`), regexes may not compile, names may change type between pushes, silences
        // may end in the past or match everything, header names may not be HTTP's: 422
        // names the field.
        // A `match` parameter whose regex does not compile is a bad parameter (400).
        .accept_for_positive("listMetrics", 400)
        .accept_for_positive("createAlertRule", 422)
        .accept_for_positive("replaceAlertRule", 422)
        .accept_for_positive("pushMetricSamples", 422)
        .accept_for_positive("createSilence", 422)
        .accept_for_positive("createReceiver", 422)
        .accept_for_positive("replaceReceiver", 422)
        // Generated spans may end before they start, start in the future or state a
        // duration their times disagree with: 422 names the span's field.
        .accept_for_positive("ingestSpans", 422)
        .with_env()
        .expect("valid settings");
    let report = engine.run(&config).await;
    report.assert_ok();
    report.require_positive_coverage();
    report.require_property_coverage();
    spans_read_back_through_the_client(&server.url(), &token).await;
    server.stop().await;
}

/// Spans of the present ingested and read back through the generated client.
async fn spans_read_back_through_the_client(url: &str, token: &str) {
    use pake_monitoring_client::types;
    let client = pake_monitoring_client::Client::new_with_client(url, conformance::http_client_with_token(token));
    let trace_id = "5c3e0d4b8a2f41e7a9d0c6b1f2e3a4d5";
    let start = chrono::Utc::now() - chrono::Duration::seconds(2);
    let span = |id: &str, parent: Option<&str>, service: &str, offset_ms: i64, length_ms: i64| {
        let begins = start + chrono::Duration::milliseconds(offset_ms);
        serde_json::from_value::<types::SpanIngest>(serde_json::json!({
            "trace_id": trace_id,
            "span_id": id,
            "parent_span_id": parent,
            "name": format!("GET /{service}"),
            "service": service,
            "kind": "server",
            "start_time": begins,
            "end_time": begins + chrono::Duration::milliseconds(length_ms),
            "status": "ok",
            "attributes": {"http.request.method": "GET"},
        }))
        .expect("a valid span")
    };
    let batch = types::SpanBatch {
        spans: vec![
            span("00f067aa0ba902b7", None, "gateway", 0, 300),
            span("53995c3f42cd8ad8", Some("00f067aa0ba902b7"), "conformance-search", 10, 250),
        ],
    };
    let accepted = client.ingest_spans().body(batch).send().await.expect("the spans are accepted").into_inner();
    assert_eq!(accepted.accepted, 2);

    let trace = client.get_trace().trace_id(trace_id).send().await.expect("the trace reads back").into_inner();
    let ids: Vec<&str> = trace.spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids, ["00f067aa0ba902b7", "53995c3f42cd8ad8"], "ordered by start");
    assert_eq!(trace.spans[1].duration_us, 250_000);

    let page = client
        .list_traces()
        .service("conformance-search")
        .min_duration_ms(299)
        .since(start)
        .limit(std::num::NonZeroU64::new(5).expect("non-zero"))
        .send()
        .await
        .expect("the listing answers")
        .into_inner();
    assert_eq!(page.items.len(), 1, "{page:?}");
    assert_eq!(page.items[0].trace_id.as_str(), trace_id);
    assert_eq!(page.items[0].root_service.as_str(), "gateway");
    assert_eq!(page.items[0].span_count.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_keeps_its_contract_on_postgres() {
    run_against_monitoring(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_keeps_its_contract_on_sqlite() {
    run_against_monitoring(Backend::Sqlite).await;
}
