//! W3C Trace Context (Level 1): the `traceparent` header parsed strictly and written, and
//! the rule for `tracestate`, shared by the gateway and every service.
//!
//! A valid incoming `traceparent` is continued (its trace id and sampled flag kept, the
//! receiver's span as the new parent, `tracestate` passed on); a missing or invalid one
//! (bad lengths or dashes, hex that is not lower-case, an all-zero id, version `ff`,
//! several `traceparent` lines) starts a new trace, and its `tracestate` is dropped.

use crate::ids::random;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// The `traceparent` header's name.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The `tracestate` header's name.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// One `traceparent` value: a trace, the span that is the parent of the receiver's, and
/// whether the trace is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: TraceId,
    pub parent_id: SpanId,
    pub sampled: bool,
}

impl TraceParent {
    /// A new trace, sampled, with a random parent span id (for a sender with no span).
    pub fn new() -> TraceParent {
        let high = u128::from(random()) << 64;
        TraceParent {
            trace_id: TraceId::from(high | u128::from(random() | 1)),
            parent_id: SpanId::from(random() | 1),
            sampled: true,
        }
    }

    /// The same trace with a new random parent span id: what a sender with no span of its
    /// own passes on when it continues a trace.
    pub fn with_new_parent(self) -> TraceParent {
        TraceParent { parent_id: SpanId::from(random() | 1), ..self }
    }

    /// The context `value` (one `traceparent` line) names, if it is valid.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let lower_hex = |bytes: &[u8]| bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if value.len() < 55 || !lower_hex(&value[..2]) || &value[..2] == b"ff" {
            return None;
        }
        // Version 00 is exactly 55 characters; a later version may append fields after a
        // dash, and is read as far as version 00 goes.
        if (&value[..2] == b"00" && value.len() != 55) || (value.len() > 55 && value[55] != b'-') {
            return None;
        }
        let (trace_id, parent_id, flags) = (&value[3..35], &value[36..52], &value[53..55]);
        let dashes = value[2] == b'-' && value[35] == b'-' && value[52] == b'-';
        if !dashes || !lower_hex(trace_id) || !lower_hex(parent_id) || !lower_hex(flags) {
            return None;
        }
        let (trace_id, parent_id) = (TraceId::from(read_hex(trace_id)), SpanId::from(read_hex(parent_id) as u64));
        if trace_id == TraceId::INVALID || parent_id == SpanId::INVALID {
            return None;
        }
        // The low bit of the flags is `sampled`, the only one version 00 defines.
        let sampled = read_hex(flags) & 1 == 1;
        Some(TraceParent { trace_id, parent_id, sampled })
    }

    /// The one `traceparent` among `values` (a header's lines), if there is exactly one and
    /// it is valid.
    pub fn from_lines<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Option<TraceParent> {
        match (values.next(), values.next()) {
            (Some(only), None) => TraceParent::parse(only),
            _ => None,
        }
    }

    /// The `traceparent` that names `span` as the parent.
    pub fn of(span: &SpanContext) -> TraceParent {
        TraceParent { trace_id: span.trace_id(), parent_id: span.span_id(), sampled: span.is_sampled() }
    }

    /// The value: version 00, lower-case hex.
    pub fn format(&self) -> [u8; 55] {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&mut text[3..35], u128::from_be_bytes(self.trace_id.to_bytes()));
        write_hex(&mut text[36..52], u128::from(u64::from_be_bytes(self.parent_id.to_bytes())));
        if self.sampled {
            text[54] = b'1';
        }
        text
    }

    /// The value as a header value.
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.format()).expect("hex is a header value")
    }

    /// The remote span context this names, as the parent of the receiver's spans, with the
    /// `tracestate` that came with it (a malformed one is left out of the context).
    pub fn remote_context(&self, tracestate: Option<&[u8]>) -> SpanContext {
        let state = tracestate
            .and_then(|value| std::str::from_utf8(value).ok())
            .and_then(|value| value.parse::<TraceState>().ok())
            .unwrap_or_default();
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanContext::new(self.trace_id, self.parent_id, flags, true, state)
    }
}

impl Default for TraceParent {
    fn default() -> Self {
        TraceParent::new()
    }
}

/// The remote parent the request with `headers` names: its one valid `traceparent` (and
/// its `tracestate`), or none (a new trace starts, and `tracestate` does not count).
pub fn extract(headers: &HeaderMap) -> Option<SpanContext> {
    let parent = TraceParent::from_lines(headers.get_all(&TRACEPARENT).iter().map(HeaderValue::as_bytes))?;
    Some(parent.remote_context(headers.get(&TRACESTATE).map(HeaderValue::as_bytes)))
}

/// Sets the headers that make `span` the parent of what the receiver does: `traceparent`,
/// and `tracestate` when the trace carries one (else the header is removed).
pub fn inject(span: &SpanContext, headers: &mut HeaderMap) {
    headers.insert(TRACEPARENT.clone(), TraceParent::of(span).header_value());
    let state = span.trace_state().header();
    match HeaderValue::from_str(&state) {
        Ok(value) if !state.is_empty() => {
            headers.insert(TRACESTATE.clone(), value);
        }
        _ => {
            headers.remove(&TRACESTATE);
        }
    }
}

/// Reads up to 32 lower-case hex digits (checked by the caller).
fn read_hex(digits: &[u8]) -> u128 {
    digits.iter().fold(0u128, |value, &digit| {
        let nibble = if digit.is_ascii_digit() { digit - b'0' } else { digit - b'a' + 10 };
        (value << 4) | u128::from(nibble)
    })
}

/// Writes the low `out.len()` hex digits of `value`, lower-case, most significant first.
pub fn write_hex(out: &mut [u8], value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let last = out.len() - 1;
    for (index, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((value >> (4 * (last - index))) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn trace_contexts_are_continued_only_when_valid() {
        let parsed = TraceParent::parse(VALID.as_bytes()).expect("a valid context continues");
        assert_eq!(&parsed.format()[..], VALID.as_bytes(), "parsing and writing are inverse");
        let continued = parsed.with_new_parent().format();
        assert_eq!(&continued[..36], &VALID.as_bytes()[..36]);
        assert_ne!(&continued[36..52], &VALID.as_bytes()[36..52], "a new parent");
        assert_eq!(&continued[52..], b"-01");
        let flags = |value: &str| TraceParent::parse(value.as_bytes()).unwrap().format()[52..].to_vec();
        assert_eq!(flags("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"), b"-00");
        assert_eq!(flags("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"), b"-01");
        // A later version, longer, is read as version 00 and sent as 00.
        let future = TraceParent::parse(b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next");
        assert_eq!(&future.unwrap().format()[..36], b"00-4bf92f3577b34da6a3ce929d0e0e4736-");
        for invalid in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.extra",
        ] {
            assert_eq!(TraceParent::parse(invalid.as_bytes()), None, "{invalid:?}");
        }
        let fresh = TraceParent::new().format();
        assert!(TraceParent::parse(&fresh).is_some(), "a new context is itself valid");
    }

    #[test]
    fn one_line_only_and_tracestate_with_a_valid_parent_only() {
        let lines = [VALID.as_bytes(), VALID.as_bytes()];
        assert_eq!(TraceParent::from_lines(lines.iter().copied()), None, "two lines are not one context");
        assert!(TraceParent::from_lines(lines[..1].iter().copied()).is_some());

        let mut headers = HeaderMap::new();
        headers.insert(TRACESTATE.clone(), HeaderValue::from_static("vendor=a,other=b"));
        assert_eq!(extract(&headers), None, "tracestate alone names no parent");
        headers.insert(TRACEPARENT.clone(), HeaderValue::from_static(VALID));
        let parent = extract(&headers).expect("valid");
        assert!(parent.is_remote() && parent.is_sampled());
        assert_eq!(parent.trace_state().header(), "vendor=a,other=b");

        let mut out = HeaderMap::new();
        out.insert(TRACESTATE.clone(), HeaderValue::from_static("stale=1"));
        inject(&parent, &mut out);
        assert_eq!(out[&TRACEPARENT], VALID);
        assert_eq!(out[&TRACESTATE], "vendor=a,other=b");
        inject(&TraceParent::new().remote_context(None), &mut out);
        assert!(out.get(&TRACESTATE).is_none(), "a trace without state sends none");
    }
}
