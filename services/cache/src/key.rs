//! The cache key and its stable digest.

use std::fmt::Write as _;

/// What a cached response is stored under.
///
/// Two requests share an entry exactly when all four fields are equal. `vary` is compared as
/// given, in order: build keys with [`CacheKey::new`] (which lowercases the header names and
/// sorts the pairs) so that the same headers in another order hit the same entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey {
    /// Request method, e.g. `GET`.
    pub method: String,
    /// Public request path, plus `?` and the query string if there is one.
    pub path: String,
    /// Tenant the response was produced for, `-` for anonymous requests.
    pub tenant: String,
    /// The route's vary headers and the request's values: (lowercased name, value).
    pub vary: Vec<(String, String)>,
}

impl CacheKey {
    /// Builds a key in canonical form: vary header names lowercased, pairs sorted.
    pub fn new(
        method: impl Into<String>,
        path: impl Into<String>,
        tenant: impl Into<String>,
        vary: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let mut vary: Vec<(String, String)> =
            vary.into_iter().map(|(name, value)| (name.to_ascii_lowercase(), value)).collect();
        vary.sort();
        Self { method: method.into(), path: path.into(), tenant: tenant.into(), vary }
    }

    /// A digest of the key that is the same in every process and build (unlike `Hash`, which
    /// is seeded per process): 128-bit FNV-1a over a length-prefixed encoding of the fields,
    /// as 32 lowercase hex digits. It names the entry in Redis, shared by all replicas.
    pub fn digest(&self) -> String {
        let mut hasher = Fnv1a128::new();
        hasher.field(self.method.as_bytes());
        hasher.field(self.path.as_bytes());
        hasher.field(self.tenant.as_bytes());
        hasher.write(&(self.vary.len() as u64).to_be_bytes());
        for (name, value) in &self.vary {
            hasher.field(name.as_bytes());
            hasher.field(value.as_bytes());
        }
        let mut hex = String::with_capacity(32);
        // Writing to a String cannot fail.
        let _ = write!(hex, "{:032x}", hasher.finish());
        hex
    }

    /// Approximate heap size of the key, for weighing entries.
    pub(crate) fn size(&self) -> usize {
        self.method.len()
            + self.path.len()
            + self.tenant.len()
            + self.vary.iter().map(|(name, value)| name.len() + value.len()).sum::<usize>()
    }
}

/// 128-bit FNV-1a (offset basis and prime from the FNV specification).
struct Fnv1a128(u128);

impl Fnv1a128 {
    const OFFSET_BASIS: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

    fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u128::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    /// Length prefix first, so that ("ab", "c") and ("a", "bc") hash differently.
    fn field(&mut self, bytes: &[u8]) {
        self.write(&(bytes.len() as u64).to_be_bytes());
        self.write(bytes);
    }

    fn finish(&self) -> u128 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_128_matches_reference_vectors() {
        let mut empty = Fnv1a128::new();
        empty.write(b"");
        assert_eq!(empty.finish(), 0x6c62272e07bb014262b821756295c58d);
        let mut a = Fnv1a128::new();
        a.write(b"a");
        assert_eq!(a.finish(), 0xd228cb696f1a8caf78912b704e4a8964);
    }

    #[test]
    fn digest_is_stable_and_separates_fields() {
        let key = CacheKey::new("GET", "/v1/items?page=2", "-", [("Accept".to_string(), "json".to_string())]);
        // Pinned (computed independently): the digest names entries shared by replicas of
        // different builds, so it must never change silently.
        assert_eq!(key.digest(), "78c456ebf5bc43b72f6e07d048230e79");

        let shifted = CacheKey::new("GET", "/v1/items?page=", "2-", [("accept".to_string(), "json".to_string())]);
        assert_ne!(key.digest(), shifted.digest());
        let other_tenant = CacheKey { tenant: "t1".into(), ..key.clone() };
        assert_ne!(key.digest(), other_tenant.digest());
    }

    #[test]
    fn new_canonicalises_vary() {
        let a = CacheKey::new(
            "GET",
            "/p",
            "-",
            [("Accept".to_string(), "a".to_string()), ("X-Lang".to_string(), "de".to_string())],
        );
        let b = CacheKey::new(
            "GET",
            "/p",
            "-",
            [("x-lang".to_string(), "de".to_string()), ("ACCEPT".to_string(), "a".to_string())],
        );
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
    }
}
