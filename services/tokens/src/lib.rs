//! The platform's bearer tokens: JWTs carrying the caller (`sub`), its tenant, and
//! space-separated OAuth-style scopes. Every PAKE service verifies them the same way through
//! [`TokenVerifier`]; the gateway and the `pake token` command issue them through
//! [`TokenIssuer`]. Both come from a [`KeyRing`]:
//!
//! - **HS256** with a shared secret (32 bytes or more): simple, but every verifier holds the
//!   signing secret, and nothing can be published.
//! - **EdDSA (Ed25519) or RS256** with a private key: tokens name their key by `kid` (the
//!   key's RFC 7638 thumbprint), and the public keys are published as a JWKS so upstream
//!   services verify without any secret. A previous key can stay in the ring for
//!   verification (and in the JWKS) while the tokens it signed run out.
//!
//! Only the algorithms of keys in the ring are accepted, so `alg: none` and algorithm
//! confusion (an HS256 token "signed" with a public key) fail.
//!
//! This crate does not know about API clients or secrets at rest; that is the gateway's
//! business.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub use jsonwebtoken::Algorithm;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use pake_api_runtime::{ApiError, Principal};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Issuer and default audience of platform tokens.
pub const ISSUER: &str = "pake";
pub const AUDIENCE: &str = "pake";

/// Shortest secret accepted: HS256 keys shorter than the hash are weak.
pub const MIN_SECRET_BYTES: usize = 32;

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the token secret must be at least {MIN_SECRET_BYTES} bytes")]
    TooShort,
    #[error("the key is neither an Ed25519 nor an RSA key in PEM (PKCS#8 or PKCS#1): {0}")]
    BadKey(String),
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// One asymmetric verification key with its id and published form.
struct PublicKey {
    kid: String,
    algorithm: Algorithm,
    key: DecodingKey,
    jwk: serde_json::Value,
}

struct Signer {
    algorithm: Algorithm,
    key: EncodingKey,
    kid: Option<String>,
}

struct Ring {
    signer: Signer,
    hs256: Option<DecodingKey>,
    public: Vec<PublicKey>,
}

/// The keys tokens are signed and verified with. Cheap to clone.
#[derive(Clone)]
pub struct KeyRing(Arc<Ring>);

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.0.public.iter().map(|k| k.kid.as_str()).collect();
        write!(
            f,
            "KeyRing {{ signing: {:?}, hs256: {}, kids: {kids:?} }}",
            self.0.signer.algorithm,
            self.0.hs256.is_some()
        )
    }
}

/// PKCS#8 DER of an Ed25519 private key is this fixed prefix followed by the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

fn check_secret(secret: &[u8]) -> Result<(), SecretError> {
    if secret.len() < MIN_SECRET_BYTES { Err(SecretError::TooShort) } else { Ok(()) }
}

/// The published form of a signing key, and its RFC 7638 thumbprint as the key id.
fn public_key(key: &EncodingKey, algorithm: Algorithm) -> Result<PublicKey, SecretError> {
    let bad = |e: jsonwebtoken::errors::Error| SecretError::BadKey(e.to_string());
    let mut jwk = Jwk::from_encoding_key(key, algorithm).map_err(bad)?;
    let kid = jwk.thumbprint(ThumbprintHash::SHA256).map_err(bad)?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    let decoding = DecodingKey::from_jwk(&jwk).map_err(bad)?;
    let published = serde_json::to_value(&jwk).map_err(|e| SecretError::BadKey(e.to_string()))?;
    Ok(PublicKey { kid, algorithm, key: decoding, jwk: published })
}

/// A private key from PEM: Ed25519 (PKCS#8) or RSA (PKCS#8 or PKCS#1).
fn private_key(pem: &[u8]) -> Result<(EncodingKey, Algorithm), SecretError> {
    if let Ok(key) = EncodingKey::from_ed_pem(pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    EncodingKey::from_rsa_pem(pem)
        .map(|key| (key, Algorithm::RS256))
        .map_err(|error| SecretError::BadKey(error.to_string()))
}

impl KeyRing {
    /// Signs and verifies with a shared HS256 secret.
    pub fn hs256(secret: &[u8]) -> Result<KeyRing, SecretError> {
        check_secret(secret)?;
        Ok(KeyRing(Arc::new(Ring {
            signer: Signer { algorithm: Algorithm::HS256, key: EncodingKey::from_secret(secret), kid: None },
            hs256: Some(DecodingKey::from_secret(secret)),
            public: Vec::new(),
        })))
    }

    /// Signs with a private key (Ed25519 → EdDSA, RSA → RS256) given in PEM.
    pub fn from_private_pem(pem: &[u8]) -> Result<KeyRing, SecretError> {
        let (key, algorithm) = private_key(pem)?;
        let public = public_key(&key, algorithm)?;
        Ok(KeyRing(Arc::new(Ring {
            signer: Signer { algorithm, key, kid: Some(public.kid.clone()) },
            hs256: None,
            public: vec![public],
        })))
    }

    /// A fresh Ed25519 key, and its PEM so that it can be kept.
    pub fn generate_ed25519() -> Result<(KeyRing, String), SecretError> {
        let mut der = ED25519_PKCS8_PREFIX.to_vec();
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| SecretError::BadKey(e.to_string()))?;
        der.extend_from_slice(&seed);
        let body = base64::engine::general_purpose::STANDARD.encode(&der);
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n");
        Ok((KeyRing::from_private_pem(pem.as_bytes())?, pem))
    }

    /// Also verifies (and publishes) tokens of a previous private key, during a rotation.
    pub fn with_previous_private_pem(self, pem: &[u8]) -> Result<KeyRing, SecretError> {
        let (key, algorithm) = private_key(pem)?;
        let previous = public_key(&key, algorithm)?;
        let mut ring = self.into_ring();
        if !ring.public.iter().any(|k| k.kid == previous.kid) {
            ring.public.push(previous);
        }
        Ok(KeyRing(Arc::new(ring)))
    }

    /// Also accepts HS256 tokens signed with `secret` (operator tokens minted with a shared
    /// secret keep working when the gateway signs with a key pair).
    pub fn with_hs256_verification(self, secret: &[u8]) -> Result<KeyRing, SecretError> {
        check_secret(secret)?;
        let mut ring = self.into_ring();
        ring.hs256 = Some(DecodingKey::from_secret(secret));
        Ok(KeyRing(Arc::new(ring)))
    }

    fn into_ring(self) -> Ring {
        Arc::try_unwrap(self.0).unwrap_or_else(|shared| Ring {
            signer: Signer {
                algorithm: shared.signer.algorithm,
                key: shared.signer.key.clone(),
                kid: shared.signer.kid.clone(),
            },
            hs256: shared.hs256.clone(),
            public: shared
                .public
                .iter()
                .map(|k| PublicKey {
                    kid: k.kid.clone(),
                    algorithm: k.algorithm,
                    key: k.key.clone(),
                    jwk: k.jwk.clone(),
                })
                .collect(),
        })
    }

    /// The algorithm new tokens are signed with.
    pub fn signing_algorithm(&self) -> Algorithm {
        self.0.signer.algorithm
    }

    /// The public keys as JWKS entries, the signing key first; empty for HS256 alone.
    pub fn jwks(&self) -> Vec<serde_json::Value> {
        self.0.public.iter().map(|k| k.jwk.clone()).collect()
    }

    pub fn verifier(&self) -> TokenVerifier {
        TokenVerifier { ring: self.clone(), audience: AUDIENCE.to_string() }
    }

    pub fn issuer(&self) -> TokenIssuer {
        TokenIssuer { ring: self.clone() }
    }
}

/// Verifies platform tokens.
#[derive(Clone, Debug)]
pub struct TokenVerifier {
    ring: KeyRing,
    audience: String,
}

fn validation(algorithm: Algorithm, audience: &str) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECONDS;
    validation
}

/// Header parameters registered for JWS by RFC 7515 §4.1 and RFC 7518: a `crit` list
/// must not name them (RFC 7515 §4.1.11).
const REGISTERED_HEADER_PARAMETERS: &[&str] = &[
    "alg", "jku", "jwk", "kid", "x5u", "x5c", "x5t", "x5t#S256", "typ", "cty", "crit", "epk", "apu", "apv", "iv",
    "tag", "p2s", "p2c",
];

/// Extensions this verifier understands and may be marked critical. None: a token whose
/// `crit` names anything is refused rather than verified without the extension's rules.
const UNDERSTOOD_EXTENSIONS: &[&str] = &[];

/// RFC 7515 §4.1.11: a `crit` header must be a non-empty array of distinct strings naming
/// extension parameters present in the header, none of them registered; every extension it
/// names must be understood, or the JWS is invalid. Checked on the raw header, since a
/// decoded `Header` cannot tell an absent `crit` from some malformed ones.
fn check_critical(token: &str) -> Result<(), ApiError> {
    let malformed = || ApiError::unauthorized("the token is malformed");
    let encoded = token.split('.').next().ok_or_else(malformed)?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| malformed())?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    let Some(crit) = header.get("crit") else {
        return Ok(());
    };
    let bad_crit = |why: &str| ApiError::unauthorized(format!("the token header's crit {why}"));
    let names = crit.as_array().ok_or_else(|| bad_crit("is not an array"))?;
    if names.is_empty() {
        return Err(bad_crit("is an empty array"));
    }
    let mut seen: Vec<&str> = Vec::with_capacity(names.len());
    for name in names {
        let name = name.as_str().ok_or_else(|| bad_crit("holds something other than strings"))?;
        if REGISTERED_HEADER_PARAMETERS.contains(&name) {
            return Err(bad_crit(&format!("names the registered header parameter {name:?}")));
        }
        if seen.contains(&name) {
            return Err(bad_crit(&format!("names {name:?} twice")));
        }
        if !header.contains_key(name) {
            return Err(bad_crit(&format!("names {name:?}, which the header does not carry")));
        }
        if !UNDERSTOOD_EXTENSIONS.contains(&name) {
            return Err(ApiError::unauthorized(format!(
                "the token requires the header extension {name:?}, which this verifier does not understand"
            )));
        }
        seen.push(name);
    }
    Ok(())
}

/// A verified token: who, for which tenant, with which scopes, until when.
#[derive(Clone, Debug)]
pub struct Verified {
    pub principal: Principal,
    /// Expiry, seconds since the epoch.
    pub expires_at: u64,
}

impl TokenVerifier {
    pub fn hs256(secret: &[u8]) -> Result<Self, SecretError> {
        Ok(KeyRing::hs256(secret)?.verifier())
    }

    /// The principal a token stands for, or a 401 saying why not.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        self.verify_full(token).map(|verified| verified.principal)
    }

    /// Like [`TokenVerifier::verify`], with the token's expiry (for caching the result).
    pub fn verify_full(&self, token: &str) -> Result<Verified, ApiError> {
        let ring = &self.ring.0;
        check_critical(token)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| ApiError::unauthorized("the token is malformed"))?;
        let key = match header.alg {
            Algorithm::HS256 => ring.hs256.as_ref(),
            Algorithm::EdDSA | Algorithm::RS256 => {
                let kid =
                    header.kid.as_deref().ok_or_else(|| ApiError::unauthorized("the token names no key (kid)"))?;
                let found = ring.public.iter().find(|k| k.kid == kid && k.algorithm == header.alg);
                Some(&found.ok_or_else(|| ApiError::unauthorized("the token is signed with an unknown key"))?.key)
            }
            _ => None,
        }
        .ok_or_else(|| ApiError::unauthorized("the token algorithm is not accepted"))?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &validation(header.alg, &self.audience)).map_err(|error| {
                use jsonwebtoken::errors::ErrorKind;
                let reason = match error.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet",
                    ErrorKind::InvalidSignature => "the token signature is invalid",
                    ErrorKind::InvalidAudience => "the token is for another audience",
                    ErrorKind::InvalidIssuer => "the token is from another issuer",
                    ErrorKind::InvalidAlgorithm => "the token algorithm is not accepted",
                    ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
                    _ => "the token is malformed",
                };
                ApiError::unauthorized(reason)
            })?;
        let claims = data.claims;
        Ok(Verified {
            principal: Principal {
                subject: claims.sub,
                tenant: claims.tenant,
                scopes: claims.scope.split_whitespace().map(String::from).collect(),
            },
            expires_at: claims.exp,
        })
    }
}

/// Issues platform tokens.
#[derive(Clone, Debug)]
pub struct TokenIssuer {
    ring: KeyRing,
}

impl TokenIssuer {
    pub fn hs256(secret: &[u8]) -> Result<Self, SecretError> {
        Ok(KeyRing::hs256(secret)?.issuer())
    }

    /// A token for `subject` with `scopes`, valid for `lifetime` from now, for the platform.
    pub fn issue(&self, subject: &str, tenant: Option<&str>, scopes: &[&str], lifetime: Duration) -> String {
        self.issue_for(AUDIENCE, subject, tenant, scopes, lifetime)
    }

    /// A token meant for `audience`.
    pub fn issue_for(
        &self,
        audience: &str,
        subject: &str,
        tenant: Option<&str>,
        scopes: &[&str],
        lifetime: Duration,
    ) -> String {
        let now = now();
        let claims = Claims {
            sub: subject.to_string(),
            tenant: tenant.map(String::from),
            scope: scopes.join(" "),
            iss: ISSUER.into(),
            aud: audience.into(),
            exp: now + lifetime.as_secs(),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        self.issue_claims(&claims)
    }

    /// Signs arbitrary claims (tests use it to make tokens that must be refused).
    pub fn issue_claims(&self, claims: &Claims) -> String {
        let signer = &self.ring.0.signer;
        let mut header = Header::new(signer.algorithm);
        header.kid = signer.kid.clone();
        jsonwebtoken::encode(&header, claims, &signer.key).expect("signing with a key the ring accepted cannot fail")
    }
}

/// `n` random bytes as base64url without padding (client secrets and ids).
pub fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    getrandom::fill(&mut buffer).expect("the operating system's random source is available");
    URL_SAFE_NO_PAD.encode(&buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(issuer: &TokenIssuer) -> Claims {
        let token = issuer.issue("svc", Some("acme"), &["mesh:read"], Duration::from_secs(60));
        let verifier = TokenVerifier::hs256(SECRET).unwrap();
        let principal = verifier.verify(&token).unwrap();
        assert_eq!(principal.subject, "svc");
        assert_eq!(principal.tenant.as_deref(), Some("acme"));
        assert_eq!(principal.scopes, vec!["mesh:read".to_string()]);
        let now = now();
        Claims {
            sub: "svc".into(),
            tenant: None,
            scope: "mesh:read".into(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: now + 60,
            nbf: now,
            iat: now,
            jti: "x".into(),
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(TokenVerifier::hs256(b"short").unwrap_err(), SecretError::TooShort);
        assert!(TokenIssuer::hs256(b"short").is_err());
    }

    #[test]
    fn every_bad_token_is_refused_with_a_reason() {
        let issuer = TokenIssuer::hs256(SECRET).unwrap();
        let verifier = TokenVerifier::hs256(SECRET).unwrap();
        let good = claims(&issuer);
        let other = TokenIssuer::hs256(b"another-secret-another-secret-xx").unwrap();
        let now = now();
        let cases: Vec<(&str, String)> = vec![
            ("expired", issuer.issue_claims(&Claims { exp: now - 3600, nbf: now - 7200, ..good.clone() })),
            ("not valid yet", issuer.issue_claims(&Claims { nbf: now + 3600, exp: now + 7200, ..good.clone() })),
            ("wrong signature", other.issue_claims(&good)),
            ("wrong audience", issuer.issue_claims(&Claims { aud: "elsewhere".into(), ..good.clone() })),
            ("wrong issuer", issuer.issue_claims(&Claims { iss: "elsewhere".into(), ..good.clone() })),
            ("malformed", "not.a.jwt".into()),
            // An unsigned token: header {"alg":"none","typ":"JWT"}, the good claims, no signature.
            ("alg none", {
                let signed = issuer.issue_claims(&good);
                let claims_part = signed.split('.').nth(1).unwrap();
                format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims_part}.")
            }),
        ];
        for (name, token) in cases {
            let error = verifier.verify(&token).expect_err(name);
            assert_eq!(error.status().as_u16(), 401, "{name}");
        }
        assert!(verifier.verify(&issuer.issue_claims(&good)).is_ok());
    }

    const ED25519_PEM: &[u8] = include_bytes!("../tests/fixtures/ed25519-test-key.pem");
    const RSA_PEM: &[u8] = include_bytes!("../tests/fixtures/rsa-test-key.pem");

    #[test]
    fn key_pairs_sign_tokens_that_name_their_key_and_verify_from_the_published_jwk() {
        for (pem, alg, kty) in [(ED25519_PEM, Algorithm::EdDSA, "OKP"), (RSA_PEM, Algorithm::RS256, "RSA")] {
            let ring = KeyRing::from_private_pem(pem).unwrap();
            assert_eq!(ring.signing_algorithm(), alg);
            let token = ring.issuer().issue("svc", Some("acme"), &["arxiv:read"], Duration::from_secs(60));
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, alg);
            let jwks = ring.jwks();
            assert_eq!(jwks.len(), 1);
            assert_eq!(jwks[0]["kty"], kty);
            assert_eq!(jwks[0]["use"], "sig");
            assert_eq!(header.kid.as_deref(), jwks[0]["kid"].as_str());
            assert!(jwks[0].get("d").is_none(), "no private part is published");
            // An upstream holding only the published key verifies the token.
            let jwk: Jwk = serde_json::from_value(jwks[0].clone()).unwrap();
            let key = DecodingKey::from_jwk(&jwk).unwrap();
            let data = jsonwebtoken::decode::<Claims>(&token, &key, &validation(alg, AUDIENCE)).unwrap();
            assert_eq!(data.claims.tenant.as_deref(), Some("acme"));
            let principal = ring.verifier().verify(&token).unwrap();
            assert_eq!(principal.scopes, vec!["arxiv:read".to_string()]);
        }
    }

    #[test]
    fn generated_keys_survive_a_round_trip_through_pem() {
        let (ring, pem) = KeyRing::generate_ed25519().unwrap();
        let again = KeyRing::from_private_pem(pem.as_bytes()).unwrap();
        assert_eq!(ring.jwks(), again.jwks());
        let token = ring.issuer().issue("svc", None, &[], Duration::from_secs(60));
        assert!(again.verifier().verify(&token).is_ok());
        let (other, _) = KeyRing::generate_ed25519().unwrap();
        assert_ne!(other.jwks()[0]["kid"], ring.jwks()[0]["kid"]);
    }

    #[test]
    fn a_rotation_keeps_the_previous_key_verifying_and_published() {
        let old = KeyRing::from_private_pem(ED25519_PEM).unwrap();
        let old_token = old.issuer().issue("svc", None, &[], Duration::from_secs(60));
        let (fresh, _) = KeyRing::generate_ed25519().unwrap();
        let rotated = fresh.clone().with_previous_private_pem(ED25519_PEM).unwrap();
        assert_eq!(rotated.jwks().len(), 2);
        assert_eq!(rotated.jwks()[0], fresh.jwks()[0], "the signing key comes first");
        assert!(rotated.verifier().verify(&old_token).is_ok());
        assert!(fresh.verifier().verify(&old_token).is_err(), "without the previous key the old token fails");
    }

    #[test]
    fn key_rings_refuse_foreign_keys_algorithms_and_confusion() {
        let ring = KeyRing::from_private_pem(ED25519_PEM).unwrap().with_hs256_verification(SECRET).unwrap();
        let verifier = ring.verifier();
        // HS256 operator tokens are accepted alongside.
        let operator =
            TokenIssuer::hs256(SECRET).unwrap().issue("op", None, &["gateway:admin"], Duration::from_secs(60));
        assert!(verifier.verify(&operator).is_ok());
        let reason = |token: &str| verifier.verify(token).unwrap_err().message().to_string();
        // Signed by another Ed25519 key: unknown kid.
        let (stranger, _) = KeyRing::generate_ed25519().unwrap();
        let foreign = stranger.issuer().issue("svc", None, &[], Duration::from_secs(60));
        assert_eq!(reason(&foreign), "the token is signed with an unknown key");
        // An RS256 token with no kid.
        let rsa = KeyRing::from_private_pem(RSA_PEM).unwrap();
        let mut claims = Claims {
            sub: "svc".into(),
            tenant: None,
            scope: String::new(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: now() + 60,
            nbf: now(),
            iat: now(),
            jti: "j".into(),
        };
        let (rsa_key, _) = private_key(RSA_PEM).unwrap();
        let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &rsa_key).unwrap();
        assert_eq!(reason(&no_kid), "the token names no key (kid)");
        // The right kid but the wrong algorithm family: the kid belongs to an EdDSA key.
        let mut header = Header::new(Algorithm::RS256);
        header.kid = ring.jwks()[0]["kid"].as_str().map(String::from);
        let confused = jsonwebtoken::encode(&header, &claims, &rsa_key).unwrap();
        assert_eq!(reason(&confused), "the token is signed with an unknown key");
        // HS256 with the public key's bytes as the secret, against a ring without HS256.
        let only_ed = KeyRing::from_private_pem(ED25519_PEM).unwrap().verifier();
        let x = ring.jwks()[0]["x"].as_str().unwrap().to_string();
        let hs = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(x.as_bytes()))
            .unwrap();
        assert_eq!(only_ed.verify(&hs).unwrap_err().message(), "the token algorithm is not accepted");
        // Another audience.
        claims.aud = "elsewhere".into();
        let elsewhere = ring.issuer().issue_claims(&claims);
        assert_eq!(reason(&elsewhere), "the token is for another audience");
        let _ = rsa;
    }

    /// A JWS built by hand: `header` as given, the claims, signed with `key` by `alg`.
    fn hand_built(header: &serde_json::Value, claims: &Claims, key: &EncodingKey, alg: Algorithm) -> String {
        let header = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap());
        let claims = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
        let message = format!("{header}.{claims}");
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
        format!("{message}.{signature}")
    }

    #[test]
    fn critical_header_extensions_are_refused_for_every_algorithm_family() {
        let (ed_key, _) = private_key(ED25519_PEM).unwrap();
        let (rsa_key, _) = private_key(RSA_PEM).unwrap();
        let ring = KeyRing::from_private_pem(ED25519_PEM)
            .unwrap()
            .with_previous_private_pem(RSA_PEM)
            .unwrap()
            .with_hs256_verification(SECRET)
            .unwrap();
        let verifier = ring.verifier();
        let kid_of =
            |pem: &[u8]| KeyRing::from_private_pem(pem).unwrap().jwks()[0]["kid"].as_str().unwrap().to_string();
        let now = now();
        let claims = Claims {
            sub: "svc".into(),
            tenant: None,
            scope: "mesh:read".into(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: now + 60,
            nbf: now,
            iat: now,
            jti: "j".into(),
        };
        let families: [(Algorithm, &str, Option<String>, EncodingKey); 3] = [
            (Algorithm::HS256, "HS256", None, EncodingKey::from_secret(SECRET)),
            (Algorithm::EdDSA, "EdDSA", Some(kid_of(ED25519_PEM)), ed_key),
            (Algorithm::RS256, "RS256", Some(kid_of(RSA_PEM)), rsa_key),
        ];
        for (alg, alg_name, kid, key) in &families {
            let header = |extra: serde_json::Value| {
                let mut header = serde_json::json!({ "alg": alg_name, "typ": "JWT" });
                if let Some(kid) = kid {
                    header["kid"] = kid.clone().into();
                }
                for (name, value) in extra.as_object().unwrap() {
                    header[name] = value.clone();
                }
                header
            };
            // The same hand-built token without `crit` verifies: the refusals below are the
            // `crit` header's alone.
            let plain = hand_built(&header(serde_json::json!({})), &claims, key, *alg);
            assert!(verifier.verify(&plain).is_ok(), "{alg_name}: a token without crit verifies");
            let refused = [
                ("unknown extension", serde_json::json!({ "crit": ["exp-ext"], "exp-ext": 1 })),
                ("b64 (RFC 7797), not supported", serde_json::json!({ "crit": ["b64"], "b64": false })),
                ("not an array", serde_json::json!({ "crit": "exp-ext", "exp-ext": 1 })),
                ("empty array", serde_json::json!({ "crit": [] })),
                ("not strings", serde_json::json!({ "crit": [1] })),
                ("null", serde_json::json!({ "crit": null })),
                ("registered name", serde_json::json!({ "crit": ["alg"] })),
                ("registered kid", serde_json::json!({ "crit": ["kid"] })),
                ("absent parameter", serde_json::json!({ "crit": ["exp-ext"] })),
                ("twice", serde_json::json!({ "crit": ["exp-ext", "exp-ext"], "exp-ext": 1 })),
            ];
            for (case, extra) in refused {
                let token = hand_built(&header(extra), &claims, key, *alg);
                let error = verifier.verify(&token).expect_err(&format!("{alg_name}: {case}"));
                assert_eq!(error.status().as_u16(), 401, "{alg_name}: {case}");
                assert!(
                    error.message().contains("crit") || error.message().contains("extension"),
                    "{alg_name}: {case}: {}",
                    error.message()
                );
            }
        }
    }

    #[test]
    fn random_tokens_are_long_urlsafe_and_distinct() {
        let a = random_token(32);
        assert_eq!(a.len(), 43);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(a, random_token(32));
    }
}
