//! API-client credentials: public client ids, secrets shown once, and the Argon2id hashes
//! that are all the gateway keeps of them.
//!
//! Hashing and checking take tens of milliseconds of CPU and 19 MiB of memory on purpose,
//! so they run on the blocking pool, never on a worker that serves requests, and at most
//! one per core at a time (a burst of sign-ins queues rather than exhausting memory), plus
//! one at a time for callers that proved themselves, who do not queue behind guesses. An
//! unknown client id is checked against a dummy hash, so that its answer takes as long as
//! a wrong secret's and timing tells nothing about which client ids exist. The comparison
//! itself is the argon2 crate's, which is constant-time.
//!
//! A client signs in again and again with the same secret, so a verified secret is
//! remembered for a few minutes in memory, and then needs no second Argon2 run. What is
//! remembered is a keyed SHA-256 digest of the stored hash and the secret together (the key
//! is random per process), so only that very secret against that very hash is found: a
//! rotation or a deletion forgets it at once, and every other secret — a wrong one for an
//! active client, any secret for an unknown client — misses and pays for Argon2 in full.
//! The shortcut thus answers quickly only what it answers with 200 anyway, and how long a
//! refusal takes says nothing about whether the client id exists or was recently used.
//! What Argon2 protects against, a leaked store, is unchanged: the store holds only the hash.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use sha2::{Digest, Sha256};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// How long a verified secret is remembered.
const REMEMBERED_FOR: Duration = Duration::from_secs(300);

/// Argon2 runs at once: one per core.
static HASHING: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)));

/// Recently verified secrets, as [`digest`]s of the stored hash and the secret together.
static VERIFIED: LazyLock<moka::sync::Cache<[u8; 32], ()>> =
    LazyLock::new(|| moka::sync::Cache::builder().max_capacity(100_000).time_to_live(REMEMBERED_FOR).build());

/// What an unknown client's secret is digested with, so that it costs what a known one's does.
const NO_CLIENT: &str = "$argon2id$v=19$m=19456,t=2,p=1$no-client-has-this-hash";

/// SHA-256 of a per-process random key, the stored hash and the secret, each with its
/// length: the key keeps the digests in memory from being checked against guesses without
/// it, and a digest names one secret for one stored hash.
fn digest(stored: &str, secret: &str) -> [u8; 32] {
    static KEY: LazyLock<[u8; 32]> = LazyLock::new(|| {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random source is available");
        key
    });
    let mut hasher = Sha256::new();
    hasher.update(*KEY);
    for part in [stored, secret] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Whether `secret` was verified against the stored hash within the last few minutes: a
/// digest and a map lookup, the same work for an unknown client (`None`). False says
/// nothing; [`verify`] decides.
pub fn remembered(secret: &str, stored: Option<&str>) -> bool {
    let known = VERIFIED.contains_key(&digest(stored.unwrap_or(NO_CLIENT), secret));
    known && stored.is_some()
}

/// One more Argon2 run at a time for callers that have proved themselves (an admin
/// setting a secret, an address that verified the client's secret before), so that they do
/// not queue behind a flood of guesses that keeps [`HASHING`] busy.
static PROVEN: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(1));

/// Runs Argon2 work on the blocking pool: one per core at a time, or in the `proven` lane.
async fn hashing<T: Send + 'static>(proven: bool, work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let _permit = if proven { PROVEN.acquire().await } else { HASHING.acquire().await }.ok()?;
    tokio::task::spawn_blocking(work).await.ok()
}

/// Argon2id with the OWASP-recommended minimum: 19 MiB, two passes, one lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("constant Argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A new secret: 256 random bits, base64url.
pub fn new_secret() -> String {
    pake_tokens::random_token(32)
}

/// A new public client id: `pk_` and 24 random lowercase letters and digits.
pub fn new_client_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    let tail: String = bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
    format!("pk_{tail}")
}

/// The PHC string of `secret` under a fresh salt (for an admin: in the proven lane).
pub async fn hash(secret: String) -> String {
    match hashing(true, move || hash_now(&secret)).await {
        Some(phc) => phc,
        None => unreachable!("the hashing semaphore is never closed and hashing does not panic"),
    }
}

fn hash_now(secret: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the operating system's random source is available");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    argon2().hash_password(secret.as_bytes(), &salt).expect("hashing into memory cannot fail").to_string()
}

/// Whether `secret` matches the stored hash; with `None` (no such client) it checks against
/// a dummy hash and answers false, taking the same time. Only a secret [`remembered`] as
/// verified skips Argon2.
pub async fn verify(secret: String, stored: Option<String>) -> bool {
    verify_in(false, secret, stored).await
}

/// [`verify`] in the lane of callers that have proved themselves: for an address that
/// verified this client's secret before.
pub async fn verify_proven(secret: String, stored: Option<String>) -> bool {
    verify_in(true, secret, stored).await
}

async fn verify_in(proven: bool, secret: String, stored: Option<String>) -> bool {
    if remembered(&secret, stored.as_deref()) {
        return true;
    }
    let checked = hashing(proven, move || {
        static DUMMY: OnceLock<String> = OnceLock::new();
        let dummy = DUMMY.get_or_init(|| hash_now("no client has this secret; it only spends the time"));
        let phc = stored.as_deref().unwrap_or(dummy);
        let Ok(parsed) = PasswordHash::new(phc) else { return false };
        let matches = argon2().verify_password(secret.as_bytes(), &parsed).is_ok() && stored.is_some();
        if matches {
            VERIFIED.insert(digest(phc, &secret), ());
        }
        matches
    })
    .await;
    checked.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_their_secret_only() {
        let secret = new_secret();
        let stored = hash(secret.clone()).await;
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{stored}");
        assert!(!stored.contains(&secret));
        assert!(verify(secret.clone(), Some(stored.clone())).await);
        assert!(!verify(new_secret(), Some(stored.clone())).await);
        assert!(!verify(secret.clone(), None).await, "an unknown client never verifies");
        assert_ne!(hash(secret.clone()).await, stored, "salts differ");
    }

    #[tokio::test]
    async fn only_the_verified_secret_is_remembered_and_only_against_its_stored_hash() {
        let secret = new_secret();
        let stored = hash(secret.clone()).await;
        assert!(!remembered(&secret, Some(&stored)), "nothing before a verification");
        assert!(verify(secret.clone(), Some(stored.clone())).await);
        // Now remembered (as a keyed digest, never in clear): a second check needs no Argon2
        // run. Any other secret, for this client or none, is not, and costs a full check.
        assert!(remembered(&secret, Some(&stored)));
        assert!(verify(secret.clone(), Some(stored.clone())).await);
        let wrong = new_secret();
        assert!(!verify(wrong.clone(), Some(stored.clone())).await);
        assert!(!remembered(&wrong, Some(&stored)), "a refusal is never remembered");
        assert!(!remembered(&secret, None), "an unknown client is never remembered");
        assert!(!verify(secret.clone(), None).await);
        // A rotated hash is not the remembered one: the old secret fails against it.
        let rotated = hash(new_secret()).await;
        assert!(!remembered(&secret, Some(&rotated)));
        assert!(!verify(secret, Some(rotated)).await);
    }

    #[test]
    fn client_ids_match_the_contract() {
        let id = new_client_id();
        let pattern = regex_lite_check(&id);
        assert!(pattern, "{id}");
        assert_ne!(id, new_client_id());
    }

    /// `^[a-z0-9][a-z0-9_-]{2,63}$` without a regex dependency.
    fn regex_lite_check(id: &str) -> bool {
        (3..=64).contains(&id.len())
            && id.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    }
}
