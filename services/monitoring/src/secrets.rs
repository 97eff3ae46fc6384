//! Sealing of receiver header values (`Authorization` and the like) for the store: the
//! values are kept only as ChaCha20-Poly1305 ciphertext under a key of this deployment,
//! bound to the receiver they belong to, and never appear in an answer.

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::collections::BTreeMap;
use uuid::Uuid;

pub const KEY_LEN: usize = 32;

/// The key header values are sealed with.
pub struct SealingKey {
    key: LessSafeKey,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the sealing key must be {KEY_LEN} bytes")]
    KeyLength,
    #[error("sealed header values cannot be opened with this key (was the key changed?)")]
    Open,
    #[error("no randomness available")]
    Random,
}

impl SealingKey {
    pub fn new(bytes: &[u8]) -> Result<SealingKey, SecretError> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).map_err(|_| SecretError::KeyLength)?;
        Ok(SealingKey { key: LessSafeKey::new(key) })
    }

    /// A fresh random key (its bytes, to keep).
    pub fn generate() -> Result<[u8; KEY_LEN], SecretError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SecretError::Random)?;
        Ok(bytes)
    }

    /// `headers` as base64 of nonce and ciphertext, bound to `owner`.
    pub fn seal(&self, owner: Uuid, headers: &BTreeMap<String, String>) -> Result<String, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SecretError::Random)?;
        let mut data = serde_json::to_vec(headers).expect("a map of strings serialises");
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(owner.as_bytes()), &mut data)
            .map_err(|_| SecretError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(STANDARD.encode(out))
    }

    pub fn open(&self, owner: Uuid, sealed: &str) -> Result<BTreeMap<String, String>, SecretError> {
        let bytes = STANDARD.decode(sealed).map_err(|_| SecretError::Open)?;
        if bytes.len() < NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Open)?;
        let mut data = data.to_vec();
        let plain =
            self.key.open_in_place(nonce, Aad::from(owner.as_bytes()), &mut data).map_err(|_| SecretError::Open)?;
        serde_json::from_slice(plain).map_err(|_| SecretError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_key_and_owner() {
        let key = SealingKey::new(&SealingKey::generate().unwrap()).unwrap();
        let owner = Uuid::new_v4();
        let headers: BTreeMap<String, String> = [("Authorization".to_string(), "Bearer s3cret".to_string())].into();
        let sealed = key.seal(owner, &headers).unwrap();
        assert!(!sealed.contains("s3cret"));
        assert_eq!(key.open(owner, &sealed).unwrap(), headers);
        assert!(key.open(Uuid::new_v4(), &sealed).is_err());
        let other = SealingKey::new(&SealingKey::generate().unwrap()).unwrap();
        assert!(other.open(owner, &sealed).is_err());
    }
}
