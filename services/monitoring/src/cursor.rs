//! Opaque pagination cursors: the sort key of the last item on a page, base64url-encoded
//! so clients treat it as a token rather than something to construct.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub fn encode(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

pub fn decode(cursor: &str) -> Result<String, crate::monitor::MonitorError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| crate::monitor::MonitorError::BadCursor("cursor is not one this server issued".into()))
}
