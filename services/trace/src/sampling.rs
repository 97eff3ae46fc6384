//! Head sampling: parent-based, with a ratio for new traces. What is not sampled is still
//! recorded, so that the tail rule ([`crate::tail`]) can keep a local trace that ends
//! badly or slowly.

use opentelemetry::trace::{Link, SpanContext, SpanKind, TraceContextExt, TraceId, TraceState};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult, ShouldSample};

/// A sampled parent's children are sampled, an unsampled parent's are recorded only; a new
/// trace is sampled when its id falls under the ratio, else recorded only.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadSampler {
    /// Trace ids whose low 63 bits are below this are sampled.
    bound: u64,
    always: bool,
}

impl HeadSampler {
    pub(crate) fn new(ratio: f64) -> HeadSampler {
        let ratio = if ratio.is_nan() { 1.0 } else { ratio.clamp(0.0, 1.0) };
        HeadSampler { bound: (ratio * (1u64 << 63) as f64) as u64, always: ratio >= 1.0 }
    }

    /// Whether a span with `parent` (a valid one; none: a new trace) in trace `trace_id` is
    /// sampled, and the trace state it carries: the parent's decision and state, else the
    /// ratio's. What the SDK's tracers and [`crate::Recorder`] both ask.
    pub(crate) fn decide(&self, parent: Option<&SpanContext>, trace_id: TraceId) -> (bool, TraceState) {
        match parent {
            Some(parent) => (parent.is_sampled(), parent.trace_state().clone()),
            None => (self.samples(trace_id), TraceState::default()),
        }
    }

    /// Whether a new trace with `trace_id` is sampled.
    pub(crate) fn samples(&self, trace_id: TraceId) -> bool {
        let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().expect("eight bytes"));
        self.always || (low >> 1) < self.bound
    }
}

impl ShouldSample for HeadSampler {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        _span_kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[Link],
    ) -> SamplingResult {
        let parent = parent_context.map(|cx| cx.span()).filter(|span| span.span_context().is_valid());
        let (sampled, trace_state) = self.decide(parent.as_ref().map(|span| span.span_context()), trace_id);
        let decision = if sampled { SamplingDecision::RecordAndSample } else { SamplingDecision::RecordOnly };
        SamplingResult { decision, attributes: Vec::new(), trace_state }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratio_samples_that_share_of_new_traces() {
        let ids = |n: u64| {
            (0..n).map(|_| TraceId::from((u128::from(crate::ids::random()) << 64) | u128::from(crate::ids::random())))
        };
        for (ratio, low, high) in [(0.0, 0, 0), (0.25, 2_200, 2_800), (1.0, 10_000, 10_000)] {
            let sampler = HeadSampler::new(ratio);
            let sampled = ids(10_000).filter(|id| sampler.samples(*id)).count();
            assert!((low..=high).contains(&sampled), "ratio {ratio}: {sampled}");
        }
    }
}
