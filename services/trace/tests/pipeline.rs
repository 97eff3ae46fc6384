//! The pipeline end to end: spans recorded through `Telemetry`'s tracers arrive at a real
//! OTLP/HTTP receiver and at the sinks, sampled as configured.

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use pake_trace::testing::OtlpReceiver;
use pake_trace::{FinishedSpan, SpanSink, Telemetry, TraceConfig};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config(receiver: &OtlpReceiver, ratio: f64) -> TraceConfig {
    TraceConfig {
        otlp_endpoint: Some(receiver.endpoint.clone()),
        sample_ratio: ratio,
        batch_delay: Duration::from_millis(10),
        ..TraceConfig::default()
    }
}

#[derive(Default)]
struct Collect(Mutex<Vec<FinishedSpan>>);

impl SpanSink for Collect {
    fn deliver<'a>(
        &'a self,
        batch: &'a [FinishedSpan],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            self.0.lock().unwrap().extend_from_slice(batch);
            Ok(())
        })
    }
}

#[tokio::test]
async fn spans_arrive_over_otlp_per_service_with_their_parentage_and_at_sinks_added_later() {
    let receiver = OtlpReceiver::start().await;
    let metrics = pake_observe::Metrics::new("pipeline");
    let telemetry = Telemetry::start(config(&receiver, 1.0)).unwrap();
    telemetry.register_metrics(&metrics);
    let gateway = telemetry.tracer("gateway");
    let registry = telemetry.tracer("registry");

    let server = gateway.span_builder("GET /v1/things").with_kind(SpanKind::Server).start(&gateway);
    let cx = opentelemetry::Context::current_with_span(server);
    let mut attempt = gateway.span_builder("try").with_kind(SpanKind::Client).start_with_context(&gateway, &cx);
    attempt.set_attribute(KeyValue::new("pake.attempt", 1));
    let upstream_parent = attempt.span_context().clone();
    attempt.end();
    // The service downstream continues the trace from the header it received.
    let header = pake_trace::w3c::TraceParent::of(&upstream_parent).format();
    let remote = pake_trace::w3c::TraceParent::parse(&header).unwrap().remote_context(None);
    let remote_cx = opentelemetry::Context::new().with_remote_span_context(remote);
    registry.span_builder("listServices").with_kind(SpanKind::Server).start_with_context(&registry, &remote_cx).end();
    cx.span().end();

    telemetry.flush().await;
    let sink = Arc::new(Collect::default());
    telemetry.add_sink(sink.clone());
    let spans = receiver.wait_for(Duration::from_secs(5), |spans| spans.len() == 3).await;
    let find = |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name}: {spans:#?}"));
    let (server, attempt, downstream) = (find("GET /v1/things"), find("try"), find("listServices"));
    assert_eq!((server.service.as_str(), server.kind, server.parent_span_id.as_str()), ("gateway", "server", ""));
    assert_eq!((attempt.service.as_str(), attempt.kind), ("gateway", "client"));
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(attempt.attribute("pake.attempt"), Some("1"));
    assert_eq!(
        (downstream.service.as_str(), downstream.parent_span_id.as_str()),
        ("registry", attempt.span_id.as_str())
    );
    assert!(spans.iter().all(|s| s.trace_id == server.trace_id));

    gateway.span_builder("after").start(&gateway).end();
    telemetry.flush().await;
    let delivered = sink.0.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1, "a sink sees what ends after it was added");
    assert_eq!((&*delivered[0].service, &*delivered[0].span.name), ("gateway", "after"));
    let text = metrics.render();
    assert!(text.contains("pake_pipeline_trace_spans_exported_total 4"), "{text}");
    assert!(text.contains("pake_pipeline_trace_spans_dropped_total 0"), "{text}");
}

#[tokio::test]
async fn unsampled_traces_are_exported_only_when_they_fail_or_are_slow() {
    let receiver = OtlpReceiver::start().await;
    let metrics = pake_observe::Metrics::new("tail");
    let telemetry =
        Telemetry::start(TraceConfig { slow: Duration::from_millis(50), ..config(&receiver, 0.0) }).unwrap();
    telemetry.register_metrics(&metrics);
    let tracer = telemetry.tracer("gateway");
    let trace = |name: &'static str, status: Status, pause: Duration| {
        let tracer = tracer.clone();
        async move {
            let root = tracer.span_builder(name).with_kind(SpanKind::Server).start(&tracer);
            let cx = opentelemetry::Context::current_with_span(root);
            assert!(!cx.span().span_context().is_sampled(), "ratio 0 samples no new trace");
            tracer.span_builder(format!("{name} child")).start_with_context(&tracer, &cx).end();
            tokio::time::sleep(pause).await;
            cx.span().set_status(status);
            cx.span().end();
        }
    };
    trace("fine", Status::Unset, Duration::ZERO).await;
    trace("failed", Status::error("500"), Duration::ZERO).await;
    trace("slow", Status::Unset, Duration::from_millis(80)).await;
    telemetry.flush().await;
    let spans = receiver.wait_for(Duration::from_secs(5), |spans| spans.len() >= 4).await;
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["failed", "failed child", "slow", "slow child"]);
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    let metrics = pake_observe::Metrics::new("full");
    // No destination, a queue of one, and a drain that waits long for a batch to fill.
    let config = TraceConfig {
        queue_capacity: 1,
        batch_delay: Duration::from_secs(30),
        batch_size: 1000,
        ..TraceConfig::default()
    };
    let telemetry = Telemetry::start(config).unwrap();
    telemetry.register_metrics(&metrics);
    let tracer = telemetry.tracer("gateway");
    let started = std::time::Instant::now();
    for _ in 0..1000 {
        tracer.span_builder("burst").start(&tracer).end();
    }
    assert!(started.elapsed() < Duration::from_secs(5), "ending spans never waits for room");
    let text = metrics.render();
    let dropped: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("pake_full_trace_spans_dropped_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(dropped >= 990, "{dropped} dropped: {text}");
}

#[tokio::test]
async fn a_flush_hands_on_the_spans_every_thread_ended_before_it() {
    // No network destination and a drain that would otherwise wait long: only the flush
    // (and a thread's full batch) wakes it.
    let config = TraceConfig { batch_delay: Duration::from_secs(30), batch_size: 64, ..TraceConfig::default() };
    let telemetry = Telemetry::start(config).unwrap();
    let sink = Arc::new(Collect::default());
    telemetry.add_sink(sink.clone());
    let tracer = telemetry.tracer("gateway");
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let tracer = &tracer;
            scope.spawn(move || {
                for n in 0..100 {
                    tracer.span_builder(format!("t{thread}-{n}")).start(tracer).end();
                }
            });
        }
    });
    telemetry.flush().await;
    let spans = sink.0.lock().unwrap();
    assert_eq!(spans.len(), 400, "every span ended before the flush was handed on");
    for thread in 0..4 {
        let mine: Vec<&str> = spans
            .iter()
            .map(|s| s.span.name.as_ref())
            .filter(|name| name.starts_with(&format!("t{thread}-")))
            .collect();
        let expected: Vec<String> = (0..100).map(|n| format!("t{thread}-{n}")).collect();
        assert_eq!(mine, expected, "a thread's spans keep their order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_from_many_threads_arrive_over_otlp_once_each_without_a_flush() {
    // OTLP alone: a thread's full chunks are written as protobuf where they filled, the
    // rest is gathered on the drain's timer.
    let receiver = OtlpReceiver::start().await;
    let metrics = pake_observe::Metrics::new("threads");
    let telemetry = Telemetry::start(config(&receiver, 1.0)).unwrap();
    telemetry.register_metrics(&metrics);
    let tracer = telemetry.tracer("gateway");
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let tracer = &tracer;
            scope.spawn(move || {
                for n in 0..301 {
                    let mut span = tracer.span_builder(format!("t{thread}-{n}")).start(tracer);
                    span.set_attribute(KeyValue::new("pake.attempt", n));
                    span.end();
                }
            });
        }
    });
    let spans = receiver.wait_for(Duration::from_secs(5), |spans| spans.len() >= 1204).await;
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!((spans.len(), names.len()), (1204, 1204), "every span once");
    for span in &spans {
        let n = span.name.split('-').nth(1).unwrap();
        assert_eq!((span.service.as_str(), span.attribute("pake.attempt")), ("gateway", Some(n)), "{span:?}");
    }
    let text = metrics.render();
    assert!(text.contains("pake_threads_trace_spans_exported_total 1204"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_threads_span_leaves_within_a_batch_delay_while_another_thread_is_busy() {
    let receiver = OtlpReceiver::start().await;
    let config = TraceConfig { batch_delay: Duration::from_millis(50), batch_size: 128, ..config(&receiver, 1.0) };
    let telemetry = Telemetry::start(config).unwrap();
    let tracer = telemetry.tracer("gateway");
    let busy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // A thread ending a span every 100 µs wakes the drain with a full chunk more often than
    // the batch delay.
    let worker = {
        let (tracer, busy) = (tracer.clone(), busy.clone());
        std::thread::spawn(move || {
            while busy.load(std::sync::atomic::Ordering::Relaxed) {
                tracer.span_builder("busy").start(&tracer).end();
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let quiet = tracer.clone();
    std::thread::spawn(move || quiet.span_builder("quiet").start(&quiet).end()).join().unwrap();
    let arrived = tokio::time::timeout(Duration::from_secs(2), async {
        while !receiver.spans().iter().any(|span| span.name == "quiet") {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    busy.store(false, std::sync::atomic::Ordering::Relaxed);
    worker.join().unwrap();
    assert!(arrived.is_ok(), "the quiet thread's span waited for the busy one to stop");
}
