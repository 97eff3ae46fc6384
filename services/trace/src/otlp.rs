//! OTLP/HTTP export: a batch of finished spans written as an `ExportTraceServiceRequest`
//! in protobuf straight from the SDK's `SpanData`, and posted to `/v1/traces`.
//!
//! The SDK's exporter first builds opentelemetry-proto's message structs (a `String` and
//! a `Vec` for every attribute, ids as vectors, a map to group the spans), then encodes
//! them: on the gateway that took half of everything tracing cost. Here each field is
//! written once, a chunk of spans at a time (the body is sent as its chunks), with room set
//! aside for each message's length as wide as it is expected to be (so that a span is not
//! moved once written), and spans grouped by service and scope in one pass. The bytes are the same
//! message the SDK's exporter sends (held to opentelemetry-proto's own conversion and
//! decoder by `tests::the_encoding_is_what_opentelemetry_proto_makes_of_the_same_spans`):
//! one `ResourceSpans` per service (`service.name`), one `ScopeSpans` per instrumentation
//! scope, the span flags with the parent's remoteness.

use crate::{FinishedSpan, StartError};
use bytes::Bytes;
use opentelemetry::trace::{SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::SpanData;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The OTLP/HTTP protobuf client of one pipeline.
pub(crate) struct Otlp {
    endpoint: String,
    client: reqwest::Client,
}

impl Otlp {
    pub(crate) fn new(base: &str) -> Result<Otlp, StartError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| StartError(format!("the OTLP client: {e}")))?;
        Ok(Otlp { endpoint: format!("{}/v1/traces", base.trim_end_matches('/')), client })
    }

    /// Posts `batch` and the spans already written as `encoded` (chunks of a request's
    /// fields: concatenated, they are one request); an answer other than 2xx is an error
    /// naming it. The body is sent as its chunks, never copied into one buffer: a batch's
    /// worth of bytes in one allocation would be fresh pages from the system at every
    /// batch.
    pub(crate) async fn export(&mut self, batch: &[FinishedSpan], encoded: Vec<Bytes>) -> Result<(), String> {
        let mut chunks = VecDeque::with_capacity(encoded.len() + batch.len().div_ceil(crate::CHUNK));
        chunks.extend(batch.chunks(crate::CHUNK).map(encode_chunk));
        chunks.extend(encoded);
        let length = chunks.iter().map(Bytes::len).sum::<usize>() as u64;
        let sent = self
            .client
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(reqwest::Body::wrap(Chunks { chunks, length }))
            .send()
            .await;
        let response = sent.map_err(|e| format!("OTLP export to {}: {e}", self.endpoint))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("the OTLP collector at {} answered {status}: {}", self.endpoint, text.trim()));
        }
        Ok(())
    }
}

/// A request body sent as the chunks it was written in, its exact length known (so it
/// goes with a `Content-Length`).
struct Chunks {
    chunks: VecDeque<Bytes>,
    length: u64,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.length -= chunk.len() as u64;
        }
        std::task::Poll::Ready(next.map(|chunk| Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.length)
    }
}

// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `SpanFlags`: the flags say whether the parent's remoteness is known (always, here)
/// and whether it is remote.
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// The spans of one instrumentation scope of one service, by their place in the batch.
struct ScopeGroup<'b> {
    scope: &'b InstrumentationScope,
    spans: Vec<usize>,
}

/// The spans of one service, by scope.
struct ServiceGroup<'b> {
    service: &'b Arc<str>,
    scopes: Vec<ScopeGroup<'b>>,
}

/// The batch's services in order of first appearance, each with its scopes in order of
/// first appearance, each with its spans in order. A span usually shares the previous
/// one's service (the same `Arc`) and scope, which is checked first.
fn group(batch: &[FinishedSpan]) -> Vec<ServiceGroup<'_>> {
    let mut services: Vec<ServiceGroup<'_>> = Vec::new();
    let mut last: Option<(usize, usize)> = None;
    for (index, finished) in batch.iter().enumerate() {
        let scope = &finished.span.instrumentation_scope;
        let same = |group: &ServiceGroup<'_>| {
            Arc::ptr_eq(group.service, &finished.service) || *group.service == finished.service
        };
        if let Some((s, c)) = last
            && same(&services[s])
            && same_scope(services[s].scopes[c].scope, scope)
        {
            services[s].scopes[c].spans.push(index);
            continue;
        }
        let s = match services.iter().position(same) {
            Some(s) => s,
            None => {
                services.push(ServiceGroup { service: &finished.service, scopes: Vec::new() });
                services.len() - 1
            }
        };
        let scopes = &mut services[s].scopes;
        let c = match scopes.iter().position(|group| same_scope(group.scope, scope)) {
            Some(c) => c,
            None => {
                scopes.push(ScopeGroup { scope, spans: Vec::new() });
                scopes.len() - 1
            }
        };
        scopes[c].spans.push(index);
        last = Some((s, c));
    }
    services
}

/// Whether two spans' scopes are one: fields in the same order (as every span of one
/// tracer has them) are compared without the sorting the scope's own equality does.
fn same_scope(a: &InstrumentationScope, b: &InstrumentationScope) -> bool {
    let listed_alike = a.name() == b.name()
        && a.version() == b.version()
        && a.schema_url() == b.schema_url()
        && a.attributes().eq(b.attributes());
    listed_alike || a == b
}

/// A chunk of spans (at most [`crate::CHUNK`]) written as an `ExportTraceServiceRequest`.
pub(crate) fn encode_chunk(spans: &[FinishedSpan]) -> Bytes {
    let mut chunk = Vec::with_capacity(spans.len() * 320);
    encode_request(spans, &mut chunk);
    chunk.into()
}

/// Writes `batch` as an `ExportTraceServiceRequest` into `out`.
pub(crate) fn encode_request(batch: &[FinishedSpan], out: &mut Vec<u8>) {
    for service in group(batch) {
        // ExportTraceServiceRequest.resource_spans = 1 (a batch: megabytes at most)
        nested_sized(out, 1, 3, |out| {
            // ResourceSpans.resource = 1: Resource.attributes = 1
            nested(out, 1, |out| {
                nested(out, 1, |out| {
                    string(out, 1, "service.name");
                    nested(out, 2, |out| string(out, 1, service.service));
                });
            });
            for scope in &service.scopes {
                // ResourceSpans.scope_spans = 2
                nested_sized(out, 2, 3, |out| {
                    // ScopeSpans.scope = 1
                    nested(out, 1, |out| {
                        string(out, 1, scope.scope.name());
                        string(out, 2, scope.scope.version().unwrap_or_default());
                        for attribute in scope.scope.attributes() {
                            nested(out, 3, |out| key_value(out, attribute));
                        }
                    });
                    for &index in &scope.spans {
                        // ScopeSpans.spans = 2 (a span: hundreds of bytes)
                        nested_sized(out, 2, 2, |out| encode_span(out, &batch[index].span));
                    }
                    // ScopeSpans.schema_url = 3
                    string(out, 3, scope.scope.schema_url().unwrap_or_default());
                });
            }
        });
    }
}

fn encode_span(out: &mut Vec<u8>, span: &SpanData) {
    let context = &span.span_context;
    bytes(out, 1, &context.trace_id().to_bytes());
    bytes(out, 2, &context.span_id().to_bytes());
    string(out, 3, &context.trace_state().header());
    if span.parent_span_id != opentelemetry::trace::SpanId::INVALID {
        bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    string(out, 5, &span.name);
    let kind = match span.span_kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    };
    uint(out, 6, kind);
    fixed64(out, 7, nanos(span.start_time));
    fixed64(out, 8, nanos(span.end_time));
    for attribute in &span.attributes {
        nested(out, 9, |out| key_value(out, attribute));
    }
    uint(out, 10, u64::from(span.dropped_attributes_count));
    for event in span.events.iter() {
        nested(out, 11, |out| {
            fixed64(out, 1, nanos(event.timestamp));
            string(out, 2, &event.name);
            for attribute in &event.attributes {
                nested(out, 3, |out| key_value(out, attribute));
            }
            uint(out, 4, u64::from(event.dropped_attributes_count));
        });
    }
    uint(out, 12, u64::from(span.events.dropped_count));
    for link in span.links.iter() {
        nested(out, 13, |out| {
            let context = &link.span_context;
            bytes(out, 1, &context.trace_id().to_bytes());
            bytes(out, 2, &context.span_id().to_bytes());
            string(out, 3, &context.trace_state().header());
            for attribute in &link.attributes {
                nested(out, 4, |out| key_value(out, attribute));
            }
            uint(out, 5, u64::from(link.dropped_attributes_count));
            fixed32(out, 6, flags(u32::from(context.trace_flags().to_u8()), context.is_remote()));
        });
    }
    uint(out, 14, u64::from(span.links.dropped_count));
    // Span.status = 15, always present: Status.message = 2, Status.code = 3.
    nested(out, 15, |out| match &span.status {
        Status::Unset => {}
        Status::Ok => uint(out, 3, 1),
        Status::Error { description } => {
            string(out, 2, description);
            uint(out, 3, 2);
        }
    });
    fixed32(out, 16, flags(u32::from(context.trace_flags().to_u8()), span.parent_span_is_remote));
}

fn flags(trace_flags: u32, remote: bool) -> u32 {
    trace_flags | CONTEXT_HAS_IS_REMOTE | if remote { CONTEXT_IS_REMOTE } else { 0 }
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

/// `KeyValue.key = 1`, `KeyValue.value = 2`.
fn key_value(out: &mut Vec<u8>, attribute: &KeyValue) {
    string(out, 1, attribute.key.as_str());
    nested(out, 2, |out| any_value(out, &attribute.value));
}

/// The fields of an `AnyValue` (a oneof: written even when it holds the default).
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(value) => {
            key(out, 2, VARINT);
            varint(out, u64::from(*value));
        }
        Value::I64(value) => {
            key(out, 3, VARINT);
            varint(out, *value as u64);
        }
        Value::F64(value) => {
            key(out, 4, FIXED64);
            out.extend_from_slice(&value.to_le_bytes());
        }
        Value::String(value) => string_always(out, 1, value.as_str()),
        Value::Array(array) => nested(out, 5, |out| {
            // ArrayValue.values = 1
            match array {
                Array::Bool(values) => {
                    values.iter().for_each(|v| nested(out, 1, |out| any_value(out, &Value::Bool(*v))))
                }
                Array::I64(values) => values.iter().for_each(|v| nested(out, 1, |out| any_value(out, &Value::I64(*v)))),
                Array::F64(values) => values.iter().for_each(|v| nested(out, 1, |out| any_value(out, &Value::F64(*v)))),
                Array::String(values) => {
                    values.iter().for_each(|v| nested(out, 1, |out| string_always(out, 1, v.as_str())))
                }
                // Array kinds the API may add: their text, rather than a panic on export.
                other => nested(out, 1, |out| string_always(out, 1, &other.to_string())),
            }
        }),
        // Value kinds the API may add: their text, rather than a panic on export.
        other => string_always(out, 1, &other.as_str()),
    }
}

#[inline]
fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, u64::from((field << 3) | wire));
}

#[inline]
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited field whose body `body` writes. One byte is set aside for the
/// length, which nearly every attribute and value fits.
#[inline]
fn nested(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    nested_sized(out, field, 1, body);
}

/// A length-delimited field whose length is expected to take `width` bytes as a varint:
/// that many are set aside, and the body moved only when its length needs another width.
#[inline]
fn nested_sized(out: &mut Vec<u8>, field: u32, width: usize, body: impl FnOnce(&mut Vec<u8>)) {
    key(out, field, LEN);
    let at = out.len();
    for _ in 0..width {
        out.push(0);
    }
    body(out);
    let length = out.len() - at - width;
    let needed = varint_length(length as u64);
    if needed != width {
        resize_prefix(out, at, width, needed);
    }
    let mut value = length as u64;
    let mut place = at;
    while value >= 0x80 {
        out[place] = (value as u8) | 0x80;
        value >>= 7;
        place += 1;
    }
    out[place] = value as u8;
}

/// Moves the body written after `at + width` so that `needed` bytes precede it.
#[cold]
fn resize_prefix(out: &mut Vec<u8>, at: usize, width: usize, needed: usize) {
    let length = out.len() - at - width;
    if needed > width {
        out.resize(out.len() + needed - width, 0);
    }
    out.copy_within(at + width..at + width + length, at + needed);
    out.truncate(at + needed + length);
}

/// How many bytes `value` takes as a varint.
#[inline]
fn varint_length(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// A proto3 `string`: left out when empty, as the default.
#[inline]
fn string(out: &mut Vec<u8>, field: u32, value: &str) {
    if !value.is_empty() {
        string_always(out, field, value);
    }
}

#[inline]
fn string_always(out: &mut Vec<u8>, field: u32, value: &str) {
    bytes(out, field, value.as_bytes());
}

#[inline]
fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    key(out, field, LEN);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// A proto3 scalar varint field: left out when zero.
#[inline]
fn uint(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(out, field, VARINT);
        varint(out, value);
    }
}

#[inline]
fn fixed64(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        key(out, field, FIXED64);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[inline]
fn fixed32(out: &mut Vec<u8>, field: u32, value: u32) {
    if value != 0 {
        key(out, field, FIXED32);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(all(test, feature = "test-support"))]
mod tests {
    use super::*;
    use opentelemetry::trace::{Event, Link, SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message as _;
    use std::borrow::Cow;

    fn context(trace: u128, span: u64, sampled: bool, remote: bool, state: &str) -> SpanContext {
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let state = if state.is_empty() { TraceState::default() } else { state.parse().unwrap() };
        SpanContext::new(TraceId::from(trace), SpanId::from(span), flags, remote, state)
    }

    /// Spans with every field the encoder writes set, cleared or at a boundary.
    fn spans() -> Vec<FinishedSpan> {
        let gateway: Arc<str> = "gateway".into();
        let registry: Arc<str> = "registry".into();
        let plain = InstrumentationScope::builder("pake").build();
        let versioned = InstrumentationScope::builder("pake-store")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
            .with_attributes([KeyValue::new("scope.kind", "store")])
            .build();
        let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
        let long = "x".repeat(300);
        let mut all = Vec::new();
        let kinds = [SpanKind::Server, SpanKind::Client, SpanKind::Internal, SpanKind::Producer, SpanKind::Consumer];
        let statuses =
            [Status::Unset, Status::Ok, Status::error("upstream answered 503"), Status::error(""), Status::Unset];
        for (n, (kind, status)) in kinds.into_iter().zip(statuses).enumerate() {
            let n64 = n as u64;
            let mut events = SpanEvents::default();
            if n % 2 == 0 {
                events.events.push(Event::new(
                    "retry",
                    start + Duration::from_micros(n64),
                    vec![KeyValue::new("pake.attempt", 2i64), KeyValue::new("reason", long.clone())],
                    n as u32,
                ));
                events.dropped_count = n as u32;
            }
            let mut links = SpanLinks::default();
            if n == 1 {
                links.links.push(Link::new(
                    context(7, 8, true, true, "vendor=value"),
                    vec![KeyValue::new("link.kind", "follows")],
                    1,
                ));
                links.dropped_count = 2;
            }
            let span = SpanData {
                span_context: context(
                    0x0af7_6519_16cd_43dd_8448_eb21_1c80_319c + n as u128,
                    0xb7ad_6b71_6920_3331 + n64,
                    n != 3,
                    false,
                    if n == 0 { "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7" } else { "" },
                ),
                parent_span_id: if n == 2 { SpanId::INVALID } else { SpanId::from(0x1111 + n64) },
                parent_span_is_remote: n == 0,
                span_kind: kind,
                name: if n == 4 {
                    Cow::Owned(format!("GET /v1/{long}/ünïcode"))
                } else {
                    Cow::Borrowed("GET /v1/search")
                },
                start_time: start,
                end_time: start + Duration::from_millis(3 + n64),
                attributes: vec![
                    KeyValue::new("http.request.method", "GET"),
                    KeyValue::new("http.response.status_code", 200i64 + n as i64),
                    KeyValue::new("negative", -1i64 - n as i64),
                    KeyValue::new("ratio", 0.25 * n as f64),
                    KeyValue::new("zero", 0.0),
                    KeyValue::new("cached", n % 2 == 0),
                    KeyValue::new("off", false),
                    KeyValue::new("empty", ""),
                    KeyValue::new("url.path", long.clone()),
                    KeyValue::new("bools", Value::Array(vec![true, false].into())),
                    KeyValue::new("ints", Value::Array(vec![0i64, -5, i64::MAX].into())),
                    KeyValue::new("floats", Value::Array(vec![1.5f64, -0.0].into())),
                    KeyValue::new(
                        "strings",
                        Value::Array(
                            Vec::<opentelemetry::StringValue>::from(["a".into(), "".into(), long.clone().into()])
                                .into(),
                        ),
                    ),
                    KeyValue::new("none", Value::Array(Vec::<i64>::new().into())),
                ],
                dropped_attributes_count: n as u32,
                events,
                links,
                status,
                instrumentation_scope: if n == 3 { versioned.clone() } else { plain.clone() },
            };
            let service = if n == 1 { registry.clone() } else { gateway.clone() };
            all.push(FinishedSpan { service, span });
        }
        all
    }

    /// What opentelemetry-proto makes of the batch: its conversion per service, with the
    /// resource the SDK's exporter would have (`service.name` only).
    fn expected(batch: &[FinishedSpan]) -> ExportTraceServiceRequest {
        let mut services: Vec<Arc<str>> = Vec::new();
        for finished in batch {
            if !services.contains(&finished.service) {
                services.push(finished.service.clone());
            }
        }
        let mut resource_spans = Vec::new();
        for service in services {
            let resource = opentelemetry_sdk::Resource::builder_empty().with_service_name(service.to_string()).build();
            let spans: Vec<SpanData> = batch.iter().filter(|f| f.service == service).map(|f| f.span.clone()).collect();
            resource_spans
                .extend(group_spans_by_resource_and_scope(spans, &ResourceAttributesWithSchema::from(&resource)));
        }
        ExportTraceServiceRequest { resource_spans }
    }

    /// Scope order within a resource is a hash map's in opentelemetry-proto's grouping.
    fn normalised(mut request: ExportTraceServiceRequest) -> ExportTraceServiceRequest {
        for resource in &mut request.resource_spans {
            resource.scope_spans.sort_by(|a, b| {
                let name =
                    |s: &opentelemetry_proto::tonic::trace::v1::ScopeSpans| s.scope.as_ref().map(|s| s.name.clone());
                name(a).cmp(&name(b))
            });
        }
        request
    }

    #[test]
    fn the_encoding_is_what_opentelemetry_proto_makes_of_the_same_spans() {
        let batch = spans();
        let mut encoded = Vec::new();
        encode_request(&batch, &mut encoded);
        let decoded = ExportTraceServiceRequest::decode(&encoded[..]).expect("a valid ExportTraceServiceRequest");
        assert_eq!(normalised(decoded), normalised(expected(&batch)));
        // Byte for byte what prost writes for that message, scope order aside.
        let ordered = normalised(ExportTraceServiceRequest::decode(&encoded[..]).unwrap());
        let mut reencoded_ours = Vec::new();
        encode_request(&batch, &mut reencoded_ours);
        assert_eq!(reencoded_ours, encoded, "deterministic");
        assert_eq!(ordered.encode_to_vec().len(), encoded.len(), "no field written that prost would leave out");
        // A batch as the pipeline hands one on: services and scopes interleaved, hundreds of
        // spans, one tiny span (its length fits one byte) and one whose length takes three.
        let mut mixed: Vec<FinishedSpan> = (0..60)
            .flat_map(|round| {
                let mut spans = batch.clone();
                if round % 2 == 1 {
                    spans.reverse();
                }
                spans
            })
            .collect();
        let mut tiny = batch[2].clone();
        tiny.span.name = Cow::Borrowed("t");
        tiny.span.attributes.clear();
        tiny.span.events = SpanEvents::default();
        tiny.span.links = SpanLinks::default();
        tiny.span.status = Status::Unset;
        let mut huge = batch[1].clone();
        huge.span.attributes.push(KeyValue::new("big", "y".repeat(40_000)));
        mixed.insert(7, tiny);
        mixed.insert(100, huge);
        let mut encoded = Vec::new();
        encode_request(&mixed, &mut encoded);
        assert!(encoded.len() > 200_000, "{}", encoded.len());
        let decoded = ExportTraceServiceRequest::decode(&encoded[..]).expect("a valid ExportTraceServiceRequest");
        assert_eq!(normalised(decoded.clone()), normalised(expected(&mixed)));
        assert_eq!(normalised(decoded).encode_to_vec().len(), encoded.len());
        // An empty batch is an empty request.
        let mut empty = Vec::new();
        encode_request(&[], &mut empty);
        assert!(empty.is_empty());
    }
}
