//! Header tables and byte formatters both transports of the data plane share: the
//! hop-by-hop headers, the forwarding headers a request gains, request and trace ids, and
//! addresses as text.

use crate::forwarded::Caller;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use std::sync::atomic::{AtomicU64, Ordering};

/// Hop-by-hop headers (RFC 9110 §7.6.1) never cross the proxy.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A cheap, well-spread random number (splitmix64) for balancing choices, request ids and
/// trace ids. Each thread steps its own state, so no cache line is shared between them.
pub(crate) fn random() -> u64 {
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

/// Prepares the client's headers, in place, for the upstream: drops hop-by-hop ones and
/// those `Connection` names, moves `Host` to `X-Forwarded-Host` (each try sets the
/// instance's own), and adds the other forwarding headers, a request id and a trace
/// context where the client sent none.
pub(crate) fn forward_headers(headers: &mut HeaderMap, caller: Option<Caller>) {
    remove_hop_by_hop(headers);
    // Room for the five headers added here and the Host each try sets, in one growth.
    headers.reserve(6);
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    if let Some(caller) = caller {
        let mut value = Vec::with_capacity(48);
        let previous = headers.get_all(&X_FORWARDED_FOR).iter().map(HeaderValue::as_bytes);
        caller.forwarded_for(&mut value, previous);
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
    }
    if let header::Entry::Vacant(slot) = headers.entry(&X_REQUEST_ID) {
        slot.insert(HeaderValue::from_bytes(&request_id()).expect("a uuid is a header value"));
    }
    let mut incoming = headers.get_all(&TRACEPARENT).iter();
    let context = match (incoming.next(), incoming.next()) {
        (Some(only), None) => TraceContext::continued(only.as_bytes()),
        _ => None,
    };
    if context.is_none() {
        headers.remove(&TRACESTATE);
    }
    let value = context.unwrap_or_else(TraceContext::new).traceparent();
    headers.insert(TRACEPARENT.clone(), HeaderValue::from_bytes(&value).expect("hex is a header value"));
}

/// A random version-4 UUID as text, without a system call or an allocation.
pub(crate) fn request_id() -> [u8; uuid::fmt::Hyphenated::LENGTH] {
    let mut random_bytes = [0u8; 16];
    random_bytes[..8].copy_from_slice(&random().to_le_bytes());
    random_bytes[8..].copy_from_slice(&random().to_le_bytes());
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Builder::from_random_bytes(random_bytes).into_uuid().hyphenated().encode_lower(&mut text);
    text
}

/// The W3C trace context (Trace Context Level 1) a request goes upstream with. The
/// gateway is an intermediary with a span of its own: a valid incoming `traceparent` is
/// continued (its trace id and sampled flag kept, the gateway's span id as the new parent
/// id, `tracestate` passed on); a missing or invalid one (bad lengths or dashes, hex that
/// is not lower-case, an all-zero id, version `ff`, several `traceparent` lines) starts a
/// new trace, and its `tracestate` is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceContext {
    trace_id: [u8; 32],
    /// The gateway's own span id, sent upstream as the parent id.
    span_id: [u8; 16],
    sampled: bool,
}

impl TraceContext {
    /// A new trace, sampled.
    pub(crate) fn new() -> TraceContext {
        let mut context = TraceContext { trace_id: [b'0'; 32], span_id: [b'0'; 16], sampled: true };
        write_hex(&mut context.trace_id[..16], random());
        write_hex(&mut context.trace_id[16..], random() | 1);
        write_hex(&mut context.span_id, random() | 1);
        context
    }

    /// The continuation of the trace `value` (one `traceparent` line) names, if it is valid.
    pub(crate) fn continued(value: &[u8]) -> Option<TraceContext> {
        let lower_hex = |bytes: &[u8]| bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let all_zero = |bytes: &[u8]| bytes.iter().all(|&b| b == b'0');
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
        if all_zero(trace_id) || all_zero(parent_id) {
            return None;
        }
        let mut context = TraceContext::new();
        context.trace_id.copy_from_slice(trace_id);
        // The low bit of the flags is `sampled`, the only one version 00 defines: the low
        // hex digit is odd.
        context.sampled = matches!(flags[1], b'1' | b'3' | b'5' | b'7' | b'9' | b'b' | b'd' | b'f');
        Some(context)
    }

    /// The `traceparent` value sent upstream: version 00.
    pub(crate) fn traceparent(&self) -> [u8; 55] {
        let mut text = *b"00-00000000000000000000000000000000-0000000000000000-00";
        text[3..35].copy_from_slice(&self.trace_id);
        text[36..52].copy_from_slice(&self.span_id);
        if self.sampled {
            text[54] = b'1';
        }
        text
    }
}

/// Writes `ip` in its usual text form into `out` (large enough for any address) and
/// returns the length; IPv4, the common case, without the formatting machinery.
pub(crate) fn write_ip(out: &mut [u8; 48], ip: std::net::IpAddr) -> usize {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut length = 0;
            for (index, octet) in v4.octets().into_iter().enumerate() {
                if index > 0 {
                    out[length] = b'.';
                    length += 1;
                }
                if octet >= 100 {
                    out[length] = b'0' + octet / 100;
                    length += 1;
                }
                if octet >= 10 {
                    out[length] = b'0' + octet / 10 % 10;
                    length += 1;
                }
                out[length] = b'0' + octet % 10;
                length += 1;
            }
            length
        }
        std::net::IpAddr::V6(v6) => {
            let mut cursor = std::io::Cursor::new(&mut out[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{v6}"));
            cursor.position() as usize
        }
    }
}

/// Writes `value` as lower-case hex digits, most significant first, filling `out`.
pub(crate) fn write_hex(out: &mut [u8], value: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let last = out.len() - 1;
    for (index, digit) in out.iter_mut().enumerate() {
        *digit = DIGITS[((value >> (4 * (last - index))) & 0xf) as usize];
    }
}

/// Where `name` is in [`HOP_BY_HOP`]: a match on the text, which most names leave at
/// their length, rather than eight comparisons.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    match name.as_str() {
        "connection" => Some(0),
        "keep-alive" => Some(1),
        "proxy-authenticate" => Some(2),
        "proxy-authorization" => Some(3),
        "te" => Some(4),
        "trailer" => Some(5),
        "transfer-encoding" => Some(6),
        "upgrade" => Some(7),
        _ => None,
    }
}

/// Drops hop-by-hop headers and the headers `Connection` names (RFC 9110 §7.6.1). Most
/// messages carry none, or only `Connection: keep-alive`, so one pass over the names finds
/// which are there and only those are removed.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(index) = hop_by_hop_index(name) {
            present |= 1 << index;
        }
    }
    if present == 0 {
        return;
    }
    // HOP_BY_HOP[0] is Connection: the other names it lists go too. Usually it lists only
    // `keep-alive` or `close`, which need no lookup.
    if present & 1 != 0 {
        let mut listed = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            for token in value.to_str().unwrap_or_default().split(',').map(str::trim) {
                let known = token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || HOP_BY_HOP.iter().any(|hop| token.eq_ignore_ascii_case(hop.as_str()));
                if !known && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << index) != 0 {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Session-Hop"),
            ("connection", "upgrade"),
            ("keep-alive", "timeout=5"),
            ("x-session-hop", "secret"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("content-type", "text/plain"),
            ("x-kept", "1"),
            ("x-kept", "2"),
        ]);
        remove_hop_by_hop(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-kept"]);
        assert_eq!(headers.get_all("x-kept").iter().count(), 2);

        let mut plain = map(&[("content-type", "text/plain"), ("content-length", "3")]);
        remove_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 2, "a message without hop-by-hop headers is left alone");
    }

    #[test]
    fn the_hop_by_hop_index_matches_the_list() {
        for (index, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(index), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::CONTENT_TYPE), None);
        assert_eq!(hop_by_hop_index(&HeaderName::from_static("x-upgrade")), None);
    }

    #[test]
    fn addresses_are_written_as_text() {
        let cases: [(std::net::IpAddr, &str); 5] = [
            ([0, 0, 0, 0].into(), "0.0.0.0"),
            ([10, 9, 100, 255].into(), "10.9.100.255"),
            ([127, 0, 0, 1].into(), "127.0.0.1"),
            ([255, 255, 255, 255].into(), "255.255.255.255"),
            ("2001:db8::1".parse().unwrap(), "2001:db8::1"),
        ];
        for (ip, text) in cases {
            let mut out = [0u8; 48];
            let length = write_ip(&mut out, ip);
            assert_eq!(std::str::from_utf8(&out[..length]).unwrap(), text);
        }
        let longest: std::net::IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap();
        let mut out = [0u8; 48];
        assert_eq!(write_ip(&mut out, longest), longest.to_string().len());
    }

    #[test]
    fn forwarding_headers_are_added_and_the_client_host_moves_aside() {
        let mut headers = map(&[("host", "api.example"), ("x-forwarded-for", "203.0.113.7"), ("connection", "close")]);
        let peer = SocketAddr::from(([10, 0, 0, 9], 5000));
        forward_headers(
            &mut headers,
            Some(crate::forwarded::TrustedProxies::default().caller(peer, std::iter::empty())),
        );
        assert!(headers.get(header::HOST).is_none(), "each try sets the instance's Host");
        assert_eq!(headers["x-forwarded-host"], "api.example");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 10.0.0.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert!(headers.get(header::CONNECTION).is_none());
        let id = uuid::Uuid::parse_str(headers["x-request-id"].to_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 4);
        let trace = headers["traceparent"].to_str().unwrap();
        let fields: Vec<&str> = trace.split('-').collect();
        assert_eq!(fields.len(), 4, "{trace}");
        assert_eq!((fields[0], fields[1].len(), fields[2].len(), fields[3]), ("00", 32, 16, "01"));
        assert!(fields[1].chars().chain(fields[2].chars()).all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));

        let mut again = map(&[
            ("x-request-id", "mine"),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ]);
        forward_headers(&mut again, None);
        assert_eq!(again["x-request-id"], "mine");
        let continued = again["traceparent"].to_str().unwrap();
        assert!(continued.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "the trace continues: {continued}");
        assert!(continued.ends_with("-01") && !continued.contains("00f067aa0ba902b7"), "with the gateway as parent");
        assert!(again.get("x-forwarded-for").is_none());
    }

    #[test]
    fn trace_contexts_are_continued_only_when_valid() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let continued = |value: &str| TraceContext::continued(value.as_bytes()).map(|c| c.traceparent());
        let out = continued(valid).expect("a valid context continues");
        assert_eq!(&out[..36], &valid.as_bytes()[..36]);
        assert_ne!(&out[36..52], &valid.as_bytes()[36..52], "the gateway's span is the new parent");
        assert_eq!(&out[52..], b"-01");
        assert_eq!(&continued("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap()[52..], b"-00");
        assert_eq!(&continued("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").unwrap()[52..], b"-01");
        // A later version, longer, is read as version 00 and sent as 00.
        let future = continued("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next").unwrap();
        assert_eq!(&future[..36], b"00-4bf92f3577b34da6a3ce929d0e0e4736-");
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
            assert_eq!(continued(invalid), None, "{invalid:?}");
        }
        let fresh = TraceContext::new().traceparent();
        assert!(TraceContext::continued(&fresh).is_some(), "a new context is itself valid");
    }
}
