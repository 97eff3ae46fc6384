//! The trace operations' contract types turned into the store's records and back: a
//! `SpanBatch` checked as a whole into [`SpanRecord`]s, and spans, traces and summaries
//! as the contract's JSON.

use super::{SpanEventRecord, SpanKind, SpanRecord, SpanStatus, TraceSummary, hex, parse_hex, unix_nanos};
use crate::monitor::{MonitorError, invalid};
use chrono::{DateTime, SecondsFormat, Utc};
use pake_monitoring_server::types;
use serde_json::{Map, Value, json};
use std::time::SystemTime;

fn kind(kind: &types::SpanKind) -> SpanKind {
    match kind {
        types::SpanKind::Server => SpanKind::Server,
        types::SpanKind::Client => SpanKind::Client,
        types::SpanKind::Internal => SpanKind::Internal,
        types::SpanKind::Producer => SpanKind::Producer,
        types::SpanKind::Consumer => SpanKind::Consumer,
    }
}

fn status(status: &types::SpanStatus) -> SpanStatus {
    match status {
        types::SpanStatus::Unset => SpanStatus::Unset,
        types::SpanStatus::Ok => SpanStatus::Ok,
        types::SpanStatus::Error => SpanStatus::Error,
    }
}

/// Attributes in key order (the contract's object has none; this makes answers stable).
fn attributes(given: Option<&types::SpanAttributes>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> =
        given.into_iter().flat_map(|a| a.iter()).map(|(k, v)| (k.clone(), v.to_string())).collect();
    out.sort();
    out
}

/// The batch's spans as records, or 422 naming the first invalid one's field
/// (`/spans/3/end_time`): the batch is taken whole or not at all.
pub fn records(batch: &types::SpanBatch, now: SystemTime) -> Result<Vec<SpanRecord>, MonitorError> {
    let mut out = Vec::with_capacity(batch.spans.len());
    for (i, span) in batch.spans.iter().enumerate() {
        let at = |field: &str| format!("/spans/{i}{field}");
        let hex_error = |field: &str| invalid(at(field), "lowercase hexadecimal digits of the contract's length");
        let record = SpanRecord {
            trace_id: parse_hex(&span.trace_id).ok_or_else(|| hex_error("/trace_id"))?,
            span_id: parse_hex(&span.span_id).ok_or_else(|| hex_error("/span_id"))?,
            parent_span_id: match &span.parent_span_id {
                Some(parent) => Some(parse_hex(parent).ok_or_else(|| hex_error("/parent_span_id"))?),
                None => None,
            },
            name: span.name.to_string(),
            service: span.service.to_string(),
            kind: kind(&span.kind),
            start_time: span.start_time.into(),
            end_time: span.end_time.into(),
            duration_us: span.duration_us,
            status: status(&span.status),
            status_message: span.status_message.as_ref().map(|m| m.to_string()),
            attributes: attributes(span.attributes.as_ref()),
            events: span
                .events
                .iter()
                .map(|event| SpanEventRecord {
                    name: event.name.to_string(),
                    time: event.time.into(),
                    attributes: attributes(event.attributes.as_ref()),
                })
                .collect(),
        };
        record.check(now).map_err(|problem| invalid(at(&problem.field), problem.message))?;
        out.push(record);
    }
    Ok(out)
}

/// Where the batch's spans are read: the trace when it holds one, otherwise the listing
/// from its earliest start.
pub fn location(spans: &[SpanRecord]) -> String {
    match spans.first() {
        Some(first) if spans.iter().all(|s| s.trace_id == first.trace_id) => {
            format!("/api/v1/traces/{}", hex(&first.trace_id))
        }
        _ => {
            let earliest = spans.iter().map(|s| s.start_time).min().unwrap_or(SystemTime::UNIX_EPOCH);
            format!("/api/v1/traces?since={}", time(earliest))
        }
    }
}

/// RFC 3339 in UTC with as many fractional digits as needed (no `+`, so it travels in a
/// query string as it is).
pub fn time(at: SystemTime) -> String {
    DateTime::<Utc>::from_timestamp_nanos(unix_nanos(at)).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn attributes_view(attributes: &[(String, String)]) -> Value {
    Value::Object(attributes.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<Map<_, _>>())
}

/// A stored span as the contract's `Span`.
pub fn span_view(span: &SpanRecord) -> Value {
    json!({
        "trace_id": hex(&span.trace_id),
        "span_id": hex(&span.span_id),
        "parent_span_id": span.parent_span_id.map(|p| hex(&p)),
        "name": span.name,
        "service": span.service,
        "kind": span.kind.as_str(),
        "start_time": time(span.start_time),
        "end_time": time(span.end_time),
        "duration_us": span.duration_micros(),
        "status": span.status.as_str(),
        "status_message": span.status_message,
        "attributes": attributes_view(&span.attributes),
        "events": span.events.iter().map(|event| {
            let mut view = json!({"name": event.name, "time": time(event.time)});
            if !event.attributes.is_empty() {
                view["attributes"] = attributes_view(&event.attributes);
            }
            view
        }).collect::<Vec<_>>(),
    })
}

/// A trace summary as the contract's `TraceSummary`.
pub fn summary_view(summary: &TraceSummary) -> Value {
    json!({
        "trace_id": hex(&summary.trace_id),
        "root_service": summary.root_service,
        "root_name": summary.root_name,
        "start_time": time(summary.start_time),
        "duration_ms": summary.duration.as_nanos() as f64 / 1e6,
        "span_count": summary.span_count,
        "error": summary.error,
    })
}
