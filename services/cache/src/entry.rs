//! Cached responses and their L2 (Redis) encoding.

use bytes::{BufMut, Bytes, BytesMut};

use crate::key::CacheKey;

/// A stored response. Shared as `Arc<CachedResponse>` between L1, coalesced requests and the
/// gateway, so a hit never copies the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedResponse {
    /// HTTP status code.
    pub status: u16,
    /// Response headers as sent to clients (name, raw value).
    pub headers: Vec<(String, Bytes)>,
    /// Response body.
    pub body: Bytes,
    /// Invalidation tags.
    pub tags: Vec<String>,
    /// Id of the route that produced the response.
    pub route: String,
    /// When the response was stored, Unix milliseconds.
    pub stored_at_ms: i64,
    /// When the response stops being served, Unix milliseconds.
    pub expires_at_ms: i64,
}

impl CachedResponse {
    /// Milliseconds left before expiry at `now_ms` (0 when expired).
    pub fn remaining_ms(&self, now_ms: i64) -> u64 {
        u64::try_from(self.expires_at_ms.saturating_sub(now_ms)).unwrap_or(0)
    }

    /// Whether the response has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms <= now_ms
    }
}

/// Fixed per-entry overhead counted on top of the payload (allocations, Arc, moka node).
const ENTRY_OVERHEAD: usize = 160;

/// Bytes an entry is weighed at, for the L1 capacity and the `max_entry_bytes` limit: body,
/// headers, tags, route, key and a fixed overhead.
pub(crate) fn weight(key: &CacheKey, entry: &CachedResponse) -> usize {
    ENTRY_OVERHEAD
        + key.size()
        + entry.body.len()
        + entry.headers.iter().map(|(name, value)| name.len() + value.len() + 16).sum::<usize>()
        + entry.tags.iter().map(|tag| tag.len() + 8).sum::<usize>()
        + entry.route.len()
}

/// First bytes of every encoded entry: format name and version.
const MAGIC: &[u8; 4] = b"PKC1";

/// Encodes an entry and its key for L2. Binary, big-endian, every string and byte string
/// prefixed by its u32 length:
///
/// `"PKC1" status:u16 stored_at:i64 expires_at:i64 method path tenant n_vary:u32 (name value)*
/// route n_tags:u32 tag* n_headers:u32 (name value)* body`
///
/// The key is included so that a reader can verify it got the entry it asked for (the L2 name
/// is only a digest of the key).
pub(crate) fn encode(key: &CacheKey, entry: &CachedResponse) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(weight(key, entry));
    out.put_slice(MAGIC);
    out.put_u16(entry.status);
    out.put_i64(entry.stored_at_ms);
    out.put_i64(entry.expires_at_ms);
    put_bytes(&mut out, key.method.as_bytes());
    put_bytes(&mut out, key.path.as_bytes());
    put_bytes(&mut out, key.tenant.as_bytes());
    put_len(&mut out, key.vary.len());
    for (name, value) in &key.vary {
        put_bytes(&mut out, name.as_bytes());
        put_bytes(&mut out, value.as_bytes());
    }
    put_bytes(&mut out, entry.route.as_bytes());
    put_len(&mut out, entry.tags.len());
    for tag in &entry.tags {
        put_bytes(&mut out, tag.as_bytes());
    }
    put_len(&mut out, entry.headers.len());
    for (name, value) in &entry.headers {
        put_bytes(&mut out, name.as_bytes());
        put_bytes(&mut out, value);
    }
    put_bytes(&mut out, &entry.body);
    out.to_vec()
}

/// Decodes what [`encode`] wrote. Header values and the body are slices of `data` (no copy).
/// `None` for anything malformed, truncated or of another format version.
pub(crate) fn decode(data: Bytes) -> Option<(CacheKey, CachedResponse)> {
    let mut reader = Reader { data, pos: 0 };
    if reader.take(MAGIC.len())?.as_ref() != MAGIC {
        return None;
    }
    let status = u16::from_be_bytes(reader.array()?);
    let stored_at_ms = i64::from_be_bytes(reader.array()?);
    let expires_at_ms = i64::from_be_bytes(reader.array()?);
    let method = reader.string()?;
    let path = reader.string()?;
    let tenant = reader.string()?;
    let vary = (0..reader.count()?).map(|_| Some((reader.string()?, reader.string()?))).collect::<Option<Vec<_>>>()?;
    let route = reader.string()?;
    let tags = (0..reader.count()?).map(|_| reader.string()).collect::<Option<Vec<_>>>()?;
    let headers =
        (0..reader.count()?).map(|_| Some((reader.string()?, reader.bytes()?))).collect::<Option<Vec<_>>>()?;
    let body = reader.bytes()?;
    if reader.pos != reader.data.len() {
        return None;
    }
    let key = CacheKey { method, path, tenant, vary };
    Some((key, CachedResponse { status, headers, body, tags, route, stored_at_ms, expires_at_ms }))
}

fn put_len(out: &mut BytesMut, len: usize) {
    // Entries are bounded by `max_entry_bytes`, far below 4 GiB; saturate rather than wrap so
    // that an impossible overflow yields an undecodable entry, not a wrong one.
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    put_len(out, bytes.len());
    out.put_slice(bytes);
}

/// Bounds-checked cursor over an encoded entry.
struct Reader {
    data: Bytes,
    pos: usize,
}

impl Reader {
    fn take(&mut self, len: usize) -> Option<Bytes> {
        let end = self.pos.checked_add(len)?;
        if end > self.data.len() {
            return None;
        }
        let slice = self.data.slice(self.pos..end);
        self.pos = end;
        Some(slice)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.as_ref().try_into().ok()
    }

    fn count(&mut self) -> Option<usize> {
        let count = usize::try_from(u32::from_be_bytes(self.array()?)).ok()?;
        // Every counted item takes at least 4 bytes: reject counts the data cannot hold
        // before allocating for them.
        (count <= (self.data.len() - self.pos) / 4).then_some(count)
    }

    fn bytes(&mut self) -> Option<Bytes> {
        let len = self.length()?;
        self.take(len)
    }

    fn length(&mut self) -> Option<usize> {
        usize::try_from(u32::from_be_bytes(self.array()?)).ok()
    }

    fn string(&mut self) -> Option<String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (CacheKey, CachedResponse) {
        let key = CacheKey::new("GET", "/v1/a?b=c", "t1", [("accept".to_string(), "application/json".to_string())]);
        let entry = CachedResponse {
            status: 203,
            headers: vec![
                ("content-type".into(), Bytes::from_static(b"application/json")),
                ("x-bin".into(), Bytes::from_static(&[0, 255, 10])),
            ],
            body: Bytes::from_static(b"{\"ok\":true}"),
            tags: vec!["a".into(), "paper:1".into()],
            route: "5d1f3c8e-2a4b-4e6f-9a7c-1b3d5e7f9a2c".into(),
            stored_at_ms: 1_700_000_000_000,
            expires_at_ms: 1_700_000_060_000,
        };
        (key, entry)
    }

    #[test]
    fn round_trips() {
        let (key, entry) = sample();
        let encoded = encode(&key, &entry);
        let (decoded_key, decoded) = decode(Bytes::from(encoded)).expect("decodes");
        assert_eq!(decoded_key, key);
        assert_eq!(decoded, entry);
    }

    #[test]
    fn round_trips_empty_fields() {
        let key = CacheKey::new("HEAD", "/", "-", []);
        let entry = CachedResponse {
            status: 204,
            headers: vec![],
            body: Bytes::new(),
            tags: vec![],
            route: String::new(),
            stored_at_ms: 0,
            expires_at_ms: -1,
        };
        let (decoded_key, decoded) = decode(Bytes::from(encode(&key, &entry))).expect("decodes");
        assert_eq!((decoded_key, decoded), (key, entry));
    }

    #[test]
    fn rejects_truncated_trailing_and_foreign_data() {
        let (key, entry) = sample();
        let encoded = encode(&key, &entry);
        for len in 0..encoded.len() {
            assert!(decode(Bytes::copy_from_slice(&encoded[..len])).is_none(), "prefix of {len} bytes");
        }
        let mut trailing = encoded.clone();
        trailing.push(0);
        assert!(decode(Bytes::from(trailing)).is_none());
        let mut other_version = encoded;
        other_version[3] = b'9';
        assert!(decode(Bytes::from(other_version)).is_none());
        // A huge count must be rejected, not allocated.
        let mut huge = Vec::from(&MAGIC[..]);
        huge.extend_from_slice(&[0; 18]);
        huge.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(decode(Bytes::from(huge)).is_none());
    }

    #[test]
    fn weight_grows_with_body() {
        let (key, mut entry) = sample();
        let small = weight(&key, &entry);
        entry.body = Bytes::from(vec![0u8; 10_000]);
        assert_eq!(weight(&key, &entry), small - 11 + 10_000);
    }
}
