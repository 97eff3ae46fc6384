//! Opaque pagination cursors: the sort key of the last item on a page, base64url-encoded
//! so clients treat it as a token rather than something to construct.

use crate::registry::RegistryError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub fn encode(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

pub fn decode(cursor: &str) -> Result<String, RegistryError> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| RegistryError::BadCursor("cursor is not one this server issued".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode(&encode("arxiv-search")).unwrap(), "arxiv-search");
        assert!(matches!(decode("###"), Err(RegistryError::BadCursor(_))));
        // Valid base64url that is not UTF-8.
        assert!(matches!(decode("_w"), Err(RegistryError::BadCursor(_))));
    }
}
