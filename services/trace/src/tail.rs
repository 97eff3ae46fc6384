//! The tail rule: the spans of a local trace that head sampling left out are held while
//! its local root runs; when the root ends in error (a 5xx) or took longer than the slow
//! threshold, the whole local trace is exported anyway, otherwise it is dropped. The
//! spans held are bounded in number.

use opentelemetry::trace::{SpanId, Status, TraceId};
use opentelemetry_sdk::trace::SpanData;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Unsampled spans waiting for their local root's end.
#[derive(Debug)]
pub(crate) struct Tail {
    slow: Duration,
    capacity: usize,
    /// Entries older than this are given up when room is needed (a root that never ended,
    /// or spans that ended after their root).
    stale: Duration,
    state: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    traces: HashMap<TraceId, Pending>,
    spans: usize,
}

#[derive(Debug)]
struct Pending {
    since: Instant,
    spans: Vec<SpanData>,
}

/// What became of an unsampled span that ended.
#[derive(Debug, Default)]
pub(crate) struct Offered {
    /// Spans to export: a local trace the rule keeps, its root last.
    pub keep: Vec<SpanData>,
    /// Spans given up for lack of room.
    pub overflow: usize,
}

/// Whether a span with no parent in this process is a local root.
pub(crate) fn is_local_root(span: &SpanData) -> bool {
    span.parent_span_id == SpanId::INVALID || span.parent_span_is_remote
}

impl Tail {
    pub(crate) fn new(slow: Duration, capacity: usize) -> Tail {
        Tail { slow, capacity, stale: (slow * 10).max(Duration::from_secs(30)), state: Mutex::new(Held::default()) }
    }

    /// Whether a local root that ended so is worth its trace.
    fn worth_keeping(&self, root: &SpanData) -> bool {
        let took = root.end_time.duration_since(root.start_time).unwrap_or_default();
        matches!(root.status, Status::Error { .. }) || took > self.slow
    }

    /// Takes an unsampled span that ended.
    pub(crate) fn offer(&self, span: SpanData) -> Offered {
        let mut held = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let trace_id = span.span_context.trace_id();
        if !is_local_root(&span) {
            if held.spans >= self.capacity {
                self.sweep(&mut held);
            }
            if held.spans >= self.capacity {
                return Offered { keep: Vec::new(), overflow: 1 };
            }
            held.spans += 1;
            let pending =
                held.traces.entry(trace_id).or_insert_with(|| Pending { since: Instant::now(), spans: Vec::new() });
            pending.spans.push(span);
            return Offered::default();
        }
        // The root's descendants: what descends from it, not the spans of another local
        // root of the same trace (a service called in this process).
        let mut mine = Vec::new();
        if let Some(pending) = held.traces.get_mut(&trace_id) {
            let mut parents = vec![span.span_context.span_id()];
            loop {
                let before = mine.len();
                let mut k = 0;
                while k < pending.spans.len() {
                    if parents.contains(&pending.spans[k].parent_span_id) {
                        let child = pending.spans.swap_remove(k);
                        parents.push(child.span_context.span_id());
                        mine.push(child);
                    } else {
                        k += 1;
                    }
                }
                if mine.len() == before {
                    break;
                }
            }
            if pending.spans.is_empty() {
                held.traces.remove(&trace_id);
            }
            held.spans -= mine.len();
        }
        drop(held);
        if !self.worth_keeping(&span) {
            return Offered::default();
        }
        mine.push(span);
        Offered { keep: mine, overflow: 0 }
    }

    /// Gives up entries that waited too long.
    fn sweep(&self, held: &mut Held) {
        let now = Instant::now();
        let mut freed = 0;
        held.traces.retain(|_, pending| {
            let keep = now.duration_since(pending.since) < self.stale;
            if !keep {
                freed += pending.spans.len();
            }
            keep
        });
        held.spans -= freed;
    }

    /// Spans held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.state.lock().unwrap().spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanKind, TraceFlags, TraceState};
    use std::time::SystemTime;

    fn span(trace: u128, id: u64, parent: u64, remote: bool, took_ms: u64, error: bool) -> SpanData {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        SpanData {
            span_context: SpanContext::new(
                TraceId::from(trace),
                SpanId::from(id),
                TraceFlags::default(),
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::from(parent),
            parent_span_is_remote: remote,
            span_kind: SpanKind::Internal,
            name: format!("span {id}").into(),
            start_time: start,
            end_time: start + Duration::from_millis(took_ms),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: if error { Status::error("failed") } else { Status::Unset },
            instrumentation_scope: Default::default(),
        }
    }

    fn ids(spans: &[SpanData]) -> Vec<u64> {
        spans.iter().map(|s| u64::from_be_bytes(s.span_context.span_id().to_bytes())).collect()
    }

    #[test]
    fn a_fast_successful_local_trace_is_dropped() {
        let tail = Tail::new(Duration::from_millis(1000), 100);
        assert!(tail.offer(span(1, 2, 1, false, 5, false)).keep.is_empty());
        assert!(tail.offer(span(1, 3, 1, false, 5, false)).keep.is_empty());
        assert_eq!(tail.held(), 2);
        assert!(tail.offer(span(1, 1, 0, false, 20, false)).keep.is_empty(), "fast and fine: dropped");
        assert_eq!(tail.held(), 0, "and no longer held");
    }

    #[test]
    fn an_error_or_a_slow_root_keeps_its_whole_local_trace() {
        let tail = Tail::new(Duration::from_millis(1000), 100);
        tail.offer(span(7, 2, 1, false, 5, false));
        tail.offer(span(7, 3, 2, false, 5, false));
        tail.offer(span(7, 4, 1, false, 5, true));
        let kept = tail.offer(span(7, 1, 99, true, 30, true)).keep;
        let mut kept = ids(&kept);
        assert_eq!(kept.pop(), Some(1), "the root comes last");
        kept.sort_unstable();
        assert_eq!(kept, [2, 3, 4], "children and grandchildren");

        tail.offer(span(8, 2, 1, false, 5, false));
        let kept = tail.offer(span(8, 1, 0, false, 1001, false)).keep;
        assert_eq!(ids(&kept), [2, 1], "slower than the threshold");
        assert_eq!(tail.held(), 0);
    }

    #[test]
    fn another_local_root_of_the_same_trace_keeps_its_own_spans() {
        let tail = Tail::new(Duration::from_millis(1000), 100);
        // The gateway's try (2, under root 1) called a service in this process, whose
        // server span (10) has the try as its remote parent, and a child (11).
        tail.offer(span(5, 11, 10, false, 1, false));
        assert!(tail.offer(span(5, 10, 2, true, 2, false)).keep.is_empty());
        assert_eq!(tail.held(), 0, "the service's local trace went with its root");
        tail.offer(span(5, 12, 10, false, 1, false));
        tail.offer(span(5, 2, 1, false, 5, false));
        let kept = tail.offer(span(5, 1, 0, false, 5, true)).keep;
        assert_eq!(ids(&kept), [2, 1], "not the other root's late child");
        assert_eq!(tail.held(), 1);
    }

    #[test]
    fn the_buffer_is_bounded() {
        let tail = Tail::new(Duration::from_millis(1000), 3);
        for id in 2..5 {
            assert_eq!(tail.offer(span(9, id, 1, false, 1, false)).overflow, 0);
        }
        assert_eq!(tail.offer(span(9, 5, 1, false, 1, false)).overflow, 1, "full");
        assert_eq!(tail.held(), 3);
        let kept = tail.offer(span(9, 1, 0, false, 1, true)).keep;
        assert_eq!(kept.len(), 4, "what was held, and the root");
        assert_eq!(tail.offer(span(9, 6, 1, false, 1, false)).overflow, 0, "room again");
    }
}
