//! Spans recorded as values: a data plane's hot path builds the SDK's `SpanData` in place
//! and hands it to the pipeline when it ends, as a tracer's span would be, without the
//! SDK span's machinery per span (a builder, a tracer clone whose count every thread
//! shares, the data moved at each step). Ids, the sampling decision, the span limits, the
//! scope and what happens once a span ends are the pipeline's own, the same calls the
//! tracers' spans go through; `tests` holds the two to each other.

use crate::{Shared, Tracer, ids, sampling};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator as _, SpanData, SpanEvents, SpanLimits, SpanLinks};
use std::borrow::Cow;
use std::sync::Arc;

/// The instrumentation scope of every PAKE span. A static name: every span carries a copy.
pub(crate) fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("pake").build()
}

/// Records one service's spans as values ([`crate::Telemetry::recorder`]).
#[derive(Clone)]
pub struct Recorder {
    pub(crate) shared: Arc<Shared>,
    pub(crate) service: Arc<str>,
    pub(crate) sampler: sampling::HeadSampler,
    pub(crate) scope: InstrumentationScope,
    pub(crate) limits: SpanLimits,
    pub(crate) tracer: Tracer,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("service", &self.service).finish_non_exhaustive()
    }
}

impl Recorder {
    /// The same service's tracer, for spans recorded through the OpenTelemetry API.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// Starts a span of `kind` named `name`, the child of `parent` (an invalid or no
    /// parent: a new trace), with `attributes` (its vector's spare room serves those set
    /// later).
    pub fn start(
        &self,
        name: impl Into<Cow<'static, str>>,
        kind: SpanKind,
        parent: Option<&SpanContext>,
        mut attributes: Vec<KeyValue>,
    ) -> Recording<'_> {
        let parent = parent.filter(|parent| parent.is_valid());
        let trace_id = parent.map_or_else(|| ids::FastIds.new_trace_id(), SpanContext::trace_id);
        let (sampled, trace_state) = self.sampler.decide(parent, trace_id);
        let flags = parent.map_or(TraceFlags::default(), SpanContext::trace_flags).with_sampled(sampled);
        let context = SpanContext::new(trace_id, ids::FastIds.new_span_id(), flags, false, trace_state);
        let limit = self.limits.max_attributes_per_span as usize;
        let dropped = attributes.len().saturating_sub(limit);
        attributes.truncate(limit);
        let start = opentelemetry::time::now();
        let span = SpanData {
            span_context: context,
            parent_span_id: parent.map_or(SpanId::INVALID, SpanContext::span_id),
            parent_span_is_remote: parent.is_some_and(SpanContext::is_remote),
            span_kind: kind,
            name: name.into(),
            start_time: start,
            end_time: start,
            attributes,
            dropped_attributes_count: dropped as u32,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: self.scope.clone(),
        };
        Recording { recorder: self, span: Some(span) }
    }
}

/// A span being recorded. It ends when [`Recording::end`] is called or when dropped (a
/// request given up ends its spans too).
pub struct Recording<'r> {
    recorder: &'r Recorder,
    /// None once ended.
    span: Option<SpanData>,
}

impl Recording<'_> {
    /// The span's context (the invalid context once ended).
    pub fn context(&self) -> &SpanContext {
        static ENDED: std::sync::OnceLock<SpanContext> = std::sync::OnceLock::new();
        match &self.span {
            Some(span) => &span.span_context,
            None => ENDED.get_or_init(SpanContext::empty_context),
        }
    }

    /// Adds an attribute; past the span limit, it is counted as dropped.
    pub fn set_attribute(&mut self, attribute: KeyValue) {
        let limit = self.recorder.limits.max_attributes_per_span as usize;
        if let Some(span) = &mut self.span {
            if span.attributes.len() < limit {
                span.attributes.push(attribute);
            } else {
                span.dropped_attributes_count += 1;
            }
        }
    }

    /// Adds attributes (see [`Recording::set_attribute`]).
    pub fn set_attributes(&mut self, attributes: impl IntoIterator<Item = KeyValue>) {
        for attribute in attributes {
            self.set_attribute(attribute);
        }
    }

    /// Renames the span.
    pub fn update_name(&mut self, name: impl Into<Cow<'static, str>>) {
        if let Some(span) = &mut self.span {
            span.name = name.into();
        }
    }

    /// Sets the status, which only moves forward (unset, error, ok), as a tracer's span's.
    pub fn set_status(&mut self, status: Status) {
        if let Some(span) = &mut self.span
            && status > span.status
        {
            span.status = status;
        }
    }

    /// Ends the span now and hands it to the pipeline.
    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.end_time = opentelemetry::time::now();
            self.recorder.shared.finish(&self.recorder.service, span);
        }
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}
