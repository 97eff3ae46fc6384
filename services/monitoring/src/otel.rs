//! The trace store joined to the process's span pipeline ([`pake_trace::Telemetry`]):
//! spans the services of this process record are stored as they are exported
//! ([`StoreSink`]), and spans accepted through `ingestSpans` go on to the OTLP collector
//! when one is configured ([`OtlpForwarder`]).
//!
//! The conversions between OpenTelemetry's `SpanData` and the store's [`SpanRecord`] live
//! here, once, in both directions.

use crate::traces::{SpanEventRecord, SpanKind, SpanRecord, SpanStatus, TraceStore};
use pake_trace::opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind as OtelKind, Status, TraceFlags, TraceId, TraceState,
};
use pake_trace::opentelemetry::{InstrumentationScope, KeyValue};
use pake_trace::{FinishedSpan, SpanData, SpanSink, Telemetry};
use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// The contract's bounds on a stored span (`Span`, `SpanAttributes`, `SpanEvent`).
const MAX_NAME: usize = 256;
const MAX_ATTRIBUTES: usize = 128;
const MAX_VALUE: usize = 4096;
const MAX_EVENTS: usize = 128;
const MAX_STATUS_MESSAGE: usize = 1024;

/// Connects `store` to `telemetry`: the process's spans are stored, and spans ingested
/// through the API are exported over OTLP when the pipeline has a collector.
pub fn connect(store: &Arc<TraceStore>, telemetry: &Telemetry) {
    telemetry.add_sink(Arc::new(StoreSink(store.clone())));
    if telemetry.config().otlp_endpoint.is_some() {
        store.set_forwarder(Arc::new(OtlpForwarder(telemetry.clone())));
    }
}

/// Stores each exported batch.
pub struct StoreSink(pub Arc<TraceStore>);

impl SpanSink for StoreSink {
    fn deliver<'a>(
        &'a self,
        batch: &'a [FinishedSpan],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        let records = batch.iter().map(|finished| record(&finished.service, &finished.span)).collect();
        self.0.ingest(records);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Hands spans accepted through the API to the pipeline, whose OTLP exporter sends them on.
pub struct OtlpForwarder(pub Telemetry);

impl crate::traces::SpanForwarder for OtlpForwarder {
    fn forward(&self, spans: &[SpanRecord]) {
        self.0
            .submit(spans.iter().map(|span| FinishedSpan { service: span.service.as_str().into(), span: data(span) }));
    }
}

/// `text` cut to at most `max` characters.
fn clipped(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_string(),
        None => text.to_string(),
    }
}

fn attributes(values: &[KeyValue]) -> Vec<(String, String)> {
    values
        .iter()
        .take(MAX_ATTRIBUTES)
        .map(|pair| (clipped(pair.key.as_str(), MAX_VALUE), clipped(&pair.value.to_string(), MAX_VALUE)))
        .collect()
}

/// A span recorded by `service` in this process, as the store keeps it, cut to the
/// contract's bounds.
pub fn record(service: &str, span: &SpanData) -> SpanRecord {
    let parent = span.parent_span_id;
    let (status, status_message) = match &span.status {
        Status::Unset => (SpanStatus::Unset, None),
        Status::Ok => (SpanStatus::Ok, None),
        Status::Error { description } => {
            (SpanStatus::Error, (!description.is_empty()).then(|| clipped(description, MAX_STATUS_MESSAGE)))
        }
    };
    SpanRecord {
        trace_id: span.span_context.trace_id().to_bytes(),
        span_id: span.span_context.span_id().to_bytes(),
        parent_span_id: (parent != SpanId::INVALID).then(|| parent.to_bytes()),
        name: clipped(&span.name, MAX_NAME),
        service: service.to_string(),
        kind: match span.span_kind {
            OtelKind::Server => SpanKind::Server,
            OtelKind::Client => SpanKind::Client,
            OtelKind::Internal => SpanKind::Internal,
            OtelKind::Producer => SpanKind::Producer,
            OtelKind::Consumer => SpanKind::Consumer,
        },
        start_time: span.start_time,
        end_time: span.end_time.max(span.start_time),
        duration_us: None,
        status,
        status_message,
        attributes: attributes(&span.attributes),
        events: span
            .events
            .iter()
            .take(MAX_EVENTS)
            .map(|event| SpanEventRecord {
                name: clipped(&event.name, MAX_NAME),
                time: event.timestamp,
                attributes: attributes(&event.attributes),
            })
            .collect(),
    }
}

/// A stored span as OpenTelemetry exports it.
pub fn data(span: &SpanRecord) -> SpanData {
    let context = SpanContext::new(
        TraceId::from_bytes(span.trace_id),
        SpanId::from_bytes(span.span_id),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let pairs = |pairs: &[(String, String)]| -> Vec<KeyValue> {
        pairs.iter().map(|(key, value)| KeyValue::new(key.clone(), value.clone())).collect()
    };
    let mut data = SpanData {
        span_context: context,
        parent_span_id: span.parent_span_id.map(SpanId::from_bytes).unwrap_or(SpanId::INVALID),
        parent_span_is_remote: span.parent_span_id.is_some(),
        span_kind: match span.kind {
            SpanKind::Server => OtelKind::Server,
            SpanKind::Client => OtelKind::Client,
            SpanKind::Internal => OtelKind::Internal,
            SpanKind::Producer => OtelKind::Producer,
            SpanKind::Consumer => OtelKind::Consumer,
        },
        name: Cow::Owned(span.name.clone()),
        start_time: span.start_time,
        end_time: span.end_time,
        attributes: pairs(&span.attributes),
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status: match span.status {
            SpanStatus::Unset => Status::Unset,
            SpanStatus::Ok => Status::Ok,
            SpanStatus::Error => Status::error(span.status_message.clone().unwrap_or_default()),
        },
        instrumentation_scope: InstrumentationScope::builder("pake-monitoring-ingest").build(),
    };
    data.events.events = span
        .events
        .iter()
        .map(|event| Event::new(event.name.clone(), event.time, pairs(&event.attributes), 0))
        .collect();
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn sample() -> SpanRecord {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        SpanRecord {
            trace_id: [0x4b; 16],
            span_id: [0x53; 8],
            parent_span_id: Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]),
            name: "GET /search".into(),
            service: "search".into(),
            kind: SpanKind::Client,
            start_time: start,
            end_time: start + Duration::from_micros(128_000),
            duration_us: None,
            status: SpanStatus::Error,
            status_message: Some("upstream timed out".into()),
            attributes: vec![("http.request.method".into(), "GET".into()), ("retry".into(), "2".into())],
            events: vec![SpanEventRecord {
                name: "cache.miss".into(),
                time: start + Duration::from_millis(2),
                attributes: vec![("cache.layer".into(), "l2".into())],
            }],
        }
    }

    #[test]
    fn a_span_survives_the_round_trip_through_opentelemetry() {
        let span = sample();
        assert_eq!(record("search", &data(&span)), span);
        let mut root = sample();
        root.parent_span_id = None;
        root.status = SpanStatus::Ok;
        root.status_message = None;
        root.events.clear();
        assert_eq!(record("search", &data(&root)), root);
    }

    #[test]
    fn spans_are_cut_to_the_contract_bounds() {
        let mut long = data(&sample());
        long.name = Cow::Owned("n".repeat(300));
        long.attributes = (0..200).map(|i| KeyValue::new(format!("k{i}"), "v".repeat(5000))).collect();
        long.status = Status::error("é".repeat(2000));
        let stored = record("search", &long);
        assert_eq!(stored.name.chars().count(), MAX_NAME);
        assert_eq!(stored.attributes.len(), MAX_ATTRIBUTES);
        assert!(stored.attributes.iter().all(|(_, value)| value.chars().count() == MAX_VALUE));
        assert_eq!(stored.status_message.unwrap().chars().count(), MAX_STATUS_MESSAGE);
        assert!(record("search", &long).check(SystemTime::now()).is_ok());
    }
}
