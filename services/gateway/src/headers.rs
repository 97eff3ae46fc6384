//! Header tables and byte formatters both transports of the data plane share: the
//! hop-by-hop headers, the forwarding headers a request gains, request and trace ids, and
//! addresses as text.

use crate::forwarded::Caller;
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};

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

pub(crate) use pake_trace::w3c::{TRACEPARENT, TRACESTATE};

pub(crate) use pake_trace::ids::random;
pub(crate) use pake_trace::w3c::write_hex;

/// Prepares the client's headers, in place, for the upstream: drops hop-by-hop ones and
/// those `Connection` names, moves `Host` to `X-Forwarded-Host` (each try sets the
/// instance's own), and adds the other forwarding headers and a request id where the
/// client sent none. `tracestate` stays only when the trace is `continued` (each try sets
/// its own `traceparent`).
pub(crate) fn forward_headers(headers: &mut HeaderMap, caller: Option<Caller>, continued: bool) {
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
    if !continued {
        headers.remove(&TRACESTATE);
    }
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
            false,
        );
        assert!(headers.get(header::HOST).is_none(), "each try sets the instance's Host");
        assert_eq!(headers["x-forwarded-host"], "api.example");
        assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 10.0.0.9");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert!(headers.get(header::CONNECTION).is_none());
        let id = uuid::Uuid::parse_str(headers["x-request-id"].to_str().unwrap()).unwrap();
        assert_eq!(id.get_version_num(), 4);

        let mut again = map(&[("x-request-id", "mine"), ("tracestate", "vendor=1")]);
        forward_headers(&mut again, None, true);
        assert_eq!(again["x-request-id"], "mine");
        assert_eq!(again["tracestate"], "vendor=1", "a continued trace keeps its state");
        assert!(again.get("x-forwarded-for").is_none());
        forward_headers(&mut again, None, false);
        assert!(again.get("tracestate").is_none(), "a new trace drops it");
    }
}
