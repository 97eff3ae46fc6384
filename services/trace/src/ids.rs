//! Cheap random numbers for ids: trace and span ids, and whatever else a data plane draws
//! (balancing choices, request ids).

use opentelemetry::trace::{SpanId, TraceId};
use std::sync::atomic::{AtomicU64, Ordering};

/// A cheap, well-spread random number (splitmix64). Each thread steps its own state, so no
/// cache line is shared between them.
pub fn random() -> u64 {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new(seed());
    }
    let mut z = STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        next
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A different starting point for each thread (and each process).
fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        static FALLBACK: AtomicU64 = AtomicU64::new(0x2545_F491_4F6C_DD1D);
        return FALLBACK.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    }
    u64::from_le_bytes(bytes)
}

/// The SDK's id generator over [`random`]: never an all-zero (invalid) id.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastIds;

impl opentelemetry_sdk::trace::IdGenerator for FastIds {
    fn new_trace_id(&self) -> TraceId {
        TraceId::from((u128::from(random()) << 64) | u128::from(random() | 1))
    }

    fn new_span_id(&self) -> SpanId {
        SpanId::from(random() | 1)
    }
}
