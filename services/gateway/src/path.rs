//! Request paths as the data plane sees them: one normalisation, one prefix match and one
//! rule for the path sent upstream, used by every transport (the own HTTP/1.1 path, hyper's
//! HTTP/1.1 and HTTP/2).
//!
//! A gateway that matches one path and forwards another lets the upstream resolve what the
//! gateway never judged: `/v1/public/../secret` matched a public route and reached a
//! protected one. So, as Envoy's `normalize_path` and nginx do, the path is normalised
//! first, the route is matched on the normalised path, and exactly that path is forwarded:
//!
//! 1. Percent-encoded unreserved characters (RFC 3986 §2.3: letters, digits, `-._~`) are
//!    decoded, so `%2e` is a dot and `%41` is `A`. Other escapes stay as they are.
//! 2. Dot-segments are removed (RFC 3986 §5.2.4); `..` never climbs above the root.
//! 3. For matching, runs of `/` are merged. What is forwarded is merged too, unless the
//!    route says `merge_slashes: false` (then its empty segments are kept; the route was
//!    still matched on the merged path, so the upstream sees nothing the route did not
//!    cover but empty segments).
//!
//! Paths that cannot be forwarded unambiguously answer 400 `invalid_path` rather than be
//! guessed at, because upstreams disagree on them: an encoded separator (`%2F`, `%5C`), a
//! raw `\`, a `%25` that encodes a dot or a separator once more (`%252e`: an upstream
//! that decodes twice would see a dot-segment), a dot-segment with parameters (`..;`,
//! which servlet containers treat as `..`), a malformed escape or an encoded NUL, and
//! anything not in origin form.
//!
//! Route prefixes are matched segment by segment, with a request segment's parameters
//! (`;…`) ignored, so that `/websec;x/file` is judged by the route for `/websec`, as an
//! upstream that strips parameters would serve it.

use axum::http::StatusCode;
use pake_api_runtime::ApiError;
use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    Backslash,
    EncodedSeparator,
    DoubleEncoded,
    DotSegmentParameters,
    BadEscape,
    EncodedNul,
    Control,
}

impl PathError {
    fn reason(self) -> &'static str {
        match self {
            PathError::NotOriginForm => "the path does not start with /",
            PathError::Backslash => "the path contains a backslash",
            PathError::EncodedSeparator => "the path contains an encoded / or \\ (%2F, %5C)",
            PathError::DoubleEncoded => "the path contains a percent-encoded escape of a dot or separator (%252e)",
            PathError::DotSegmentParameters => "the path contains a dot-segment with parameters (..;)",
            PathError::BadEscape => "the path contains a malformed percent escape",
            PathError::EncodedNul => "the path contains an encoded NUL (%00)",
            PathError::Control => "the path contains a control character or a space",
        }
    }
}

impl From<PathError> for ApiError {
    fn from(error: PathError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", format!("{}; it cannot be forwarded", error.reason()))
    }
}

fn hex(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

fn unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// The escape `%XY` at `at` (the `%`), decoded.
fn escape(bytes: &[u8], at: usize) -> Result<u8, PathError> {
    match (bytes.get(at + 1).copied().and_then(hex), bytes.get(at + 2).copied().and_then(hex)) {
        (Some(high), Some(low)) => Ok(high << 4 | low),
        _ => Err(PathError::BadEscape),
    }
}

/// The normalised form of `raw` (a request target's path, without the query): unreserved
/// characters decoded and dot-segments removed; empty segments are kept (see
/// [`merge_slashes`]). Borrowed when `raw` is already normal, the common case.
pub fn normalize(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let mut normal = true;
    for (at, &byte) in bytes.iter().enumerate() {
        match byte {
            b'%' => normal = false,
            b'\\' => return Err(PathError::Backslash),
            // A segment starting with a dot may be a dot-segment (the first byte is `/`).
            b'.' if bytes[at - 1] == b'/' => normal = false,
            0..=0x20 | 0x7f..=0xff => return Err(PathError::Control),
            _ => {}
        }
    }
    if normal {
        return Ok(Cow::Borrowed(raw));
    }

    // Decode unreserved escapes; refuse the ambiguous ones.
    let mut decoded = String::with_capacity(raw.len());
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if byte != b'%' {
            decoded.push(byte as char);
            at += 1;
            continue;
        }
        let value = escape(bytes, at)?;
        match value {
            0 => return Err(PathError::EncodedNul),
            b'/' | b'\\' => return Err(PathError::EncodedSeparator),
            b'%' => {
                // `%25` followed by what would escape a dot or a separator once decoded.
                let digit = |offset: usize| bytes.get(at + offset).copied().and_then(hex);
                if let (Some(high), Some(low)) = (digit(3), digit(4))
                    && matches!(high << 4 | low, b'.' | b'/' | b'\\' | 0)
                {
                    return Err(PathError::DoubleEncoded);
                }
                decoded.push_str(&raw[at..at + 3]);
            }
            value if unreserved(value) => decoded.push(value as char),
            _ => decoded.push_str(&raw[at..at + 3]),
        }
        at += 3;
    }

    // Remove dot-segments over the segments after the leading `/`.
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in decoded[1..].split('/') {
        trailing_slash = false;
        match segment {
            "." => trailing_slash = true,
            ".." => {
                kept.pop();
                trailing_slash = true;
            }
            _ => {
                let name = segment.split_once(';').map_or(segment, |(name, _)| name);
                if name == "." || name == ".." {
                    return Err(PathError::DotSegmentParameters);
                }
                kept.push(segment);
            }
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(if out == raw { Cow::Borrowed(raw) } else { Cow::Owned(out) })
}

/// `path` with runs of `/` merged into one; borrowed when there are none.
pub fn merge_slashes(path: &str) -> Cow<'_, str> {
    if !path.contains("//") {
        return Cow::Borrowed(path);
    }
    let mut merged = String::with_capacity(path.len());
    for ch in path.chars() {
        if !(ch == '/' && merged.ends_with('/')) {
            merged.push(ch);
        }
    }
    Cow::Owned(merged)
}

/// [`merge_slashes`] of a normalised path, borrowed as long as it is.
pub fn merged<'p>(path: &Cow<'p, str>) -> Cow<'p, str> {
    match path {
        Cow::Borrowed(path) => merge_slashes(path),
        Cow::Owned(path) => Cow::Owned(merge_slashes(path).into_owned()),
    }
}

/// The request segment's name, its parameters (`;…`) left out.
fn name(segment: &str) -> &str {
    segment.split_once(';').map_or(segment, |(name, _)| name)
}

/// Whether the segments of `prefix` (a route prefix such as `/a/b`, or `` for all paths)
/// begin `path` (a merged, normalised path such as `/a/b;x/c`), each request segment
/// compared without its parameters.
pub fn has_prefix(path: &str, prefix: &str) -> bool {
    let mut segments = path.split('/').skip(1);
    prefix.split('/').skip(1).filter(|s| !s.is_empty()).all(|wanted| segments.next().is_some_and(|s| name(s) == wanted))
}

/// Where what follows the first `count` non-empty segments of `path` starts (the `/` before
/// the next segment); `path.len()` when nothing does.
pub fn after_segments(path: &str, count: usize) -> usize {
    let bytes = path.as_bytes();
    let mut at = 0;
    let mut seen = 0;
    while seen < count && at < bytes.len() {
        // Skip the separators, then the segment.
        while at < bytes.len() && bytes[at] == b'/' {
            at += 1;
        }
        if at == bytes.len() {
            break;
        }
        while at < bytes.len() && bytes[at] != b'/' {
            at += 1;
        }
        seen += 1;
    }
    at
}

/// The number of non-empty segments of a route prefix.
pub fn segment_count(prefix: &str) -> usize {
    prefix.split('/').filter(|s| !s.is_empty()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for path in ["/", "/v1/search", "/v1/search/", "/v1/a.b/c..d/x.", "/v1/a//b", "/v1/a;b=c/d", "/v1/~u/%C3%A9"] {
            assert!(matches!(normalize(path), Ok(Cow::Borrowed(p)) if p == path), "{path}");
        }
    }

    #[test]
    fn dot_segments_are_removed_and_unreserved_escapes_decoded() {
        let cases = [
            ("/v1/webpub/../websec/secret.txt", "/v1/websec/secret.txt"),
            ("/v1/webpub/%2e%2e/websec/secret.txt", "/v1/websec/secret.txt"),
            ("/v1/webpub/%2E%2E/websec/secret.txt", "/v1/websec/secret.txt"),
            ("/v1/webpub/.%2e/websec/secret.txt", "/v1/websec/secret.txt"),
            ("/v1/webpub/%2e./websec/secret.txt", "/v1/websec/secret.txt"),
            ("/v1/./a/./b", "/v1/a/b"),
            ("/v1/a/b/..", "/v1/a/"),
            ("/v1/a/b/.", "/v1/a/b/"),
            ("/../../v1/a", "/v1/a"),
            ("/..", "/"),
            ("/.", "/"),
            ("/v1/a//../b", "/v1/a/b"),
            ("/v1/%61%62c", "/v1/abc"),
            ("/v1/%7Euser", "/v1/~user"),
            ("/v1/caf%C3%A9", "/v1/caf%C3%A9"),
            ("/v1/.well-known/x", "/v1/.well-known/x"),
            ("/v1/a%20b", "/v1/a%20b"),
            ("/v1/%2541", "/v1/%2541"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw).as_deref(), Ok(want), "{raw}");
            // Normalising is idempotent.
            assert_eq!(normalize(want).as_deref(), Ok(want), "{want}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("/v1/webpub/..;/websec/secret.txt", PathError::DotSegmentParameters),
            ("/v1/webpub/.;x/websec", PathError::DotSegmentParameters),
            ("/v1/webpub/%2e%2e;/websec", PathError::DotSegmentParameters),
            ("/v1/webpub/..%2fwebsec/secret.txt", PathError::EncodedSeparator),
            ("/v1/webpub/..%2Fwebsec/secret.txt", PathError::EncodedSeparator),
            ("/v1/webpub/..%5cwebsec", PathError::EncodedSeparator),
            ("/v1/webpub/..\\websec", PathError::Backslash),
            ("/v1/webpub/%252e%252e/websec/secret.txt", PathError::DoubleEncoded),
            ("/v1/webpub/%252E%252E/websec", PathError::DoubleEncoded),
            ("/v1/webpub/..%252fwebsec", PathError::DoubleEncoded),
            ("/v1/%00", PathError::EncodedNul),
            ("/v1/%zz", PathError::BadEscape),
            ("/v1/%4", PathError::BadEscape),
            ("/v1/%", PathError::BadEscape),
            ("v1/a", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
            ("", PathError::NotOriginForm),
            ("/v1/a b", PathError::Control),
            ("/v1/a\u{7f}", PathError::Control),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize(raw), Err(want), "{raw}");
        }
    }

    #[test]
    fn slashes_merge() {
        assert_eq!(merge_slashes("/v1//a///b/"), "/v1/a/b/");
        assert_eq!(merge_slashes("//"), "/");
        assert!(matches!(merge_slashes("/v1/a/b"), Cow::Borrowed(_)));
    }

    #[test]
    fn prefixes_match_whole_segments_without_parameters() {
        assert!(has_prefix("/websec/secret.txt", "/websec"));
        assert!(has_prefix("/websec;jsessionid=1/secret.txt", "/websec"));
        assert!(has_prefix("/websec", "/websec"));
        assert!(has_prefix("/a;x/b;y/c", "/a/b"));
        assert!(has_prefix("/anything", ""));
        assert!(has_prefix("/", ""));
        assert!(!has_prefix("/websecret", "/websec"));
        assert!(!has_prefix("/web", "/websec"));
        assert!(!has_prefix("/a/c", "/a/b"));
        assert!(!has_prefix("/a", "/a/b"));
    }

    #[test]
    fn segments_are_skipped_whatever_the_slashes_between() {
        let after = |path: &'static str, count| match after_segments(path, count) {
            at if at == path.len() => "/",
            at => &path[at..],
        };
        assert_eq!(after("/v1/search/abc", 1), "/search/abc");
        assert_eq!(after("/v1/search/abc", 2), "/abc");
        assert_eq!(after("/v1/search", 2), "/");
        assert_eq!(after("/v1/search/", 2), "/");
        assert_eq!(after("//v1//search//abc", 2), "//abc");
        assert_eq!(after("/v1", 1), "/");
        assert_eq!(after("/v1/x", 0), "/v1/x");
        assert_eq!(segment_count("/"), 0);
        assert_eq!(segment_count("/a/b/"), 2);
    }
}
