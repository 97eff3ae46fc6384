//! The platform's bearer tokens: JWTs signed with a shared HS256 secret, carrying the
//! caller (`sub`), its tenant, and space-separated OAuth-style scopes. Every PAKE service
//! verifies them the same way through [`TokenVerifier`]; the gateway and the `pake token`
//! command issue them through [`TokenIssuer`].
//!
//! This crate does not know about API clients, secrets at rest or key rotation; that is
//! the gateway's business.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pake_api_runtime::{ApiError, Principal};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Issuer and audience of platform tokens.
pub const ISSUER: &str = "pake";
pub const AUDIENCE: &str = "pake";

/// Shortest secret accepted: HS256 keys shorter than the hash are weak.
pub const MIN_SECRET_BYTES: usize = 32;

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
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Verifies platform tokens.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenVerifier { .. }")
    }
}

impl TokenVerifier {
    pub fn hs256(secret: &[u8]) -> Result<Self, SecretError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort);
        }
        // Only HS256 is accepted, so `alg: none` and algorithm-confusion tokens fail.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Ok(TokenVerifier { key: DecodingKey::from_secret(secret), validation })
    }

    /// The principal a token stands for, or a 401 saying why not.
    pub fn verify(&self, token: &str) -> Result<Principal, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(|error| {
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
        Ok(Principal {
            subject: claims.sub,
            tenant: claims.tenant,
            scopes: claims.scope.split_whitespace().map(String::from).collect(),
        })
    }
}

/// Issues platform tokens.
#[derive(Clone)]
pub struct TokenIssuer {
    key: EncodingKey,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenIssuer { .. }")
    }
}

impl TokenIssuer {
    pub fn hs256(secret: &[u8]) -> Result<Self, SecretError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(SecretError::TooShort);
        }
        Ok(TokenIssuer { key: EncodingKey::from_secret(secret) })
    }

    /// A token for `subject` with `scopes`, valid for `lifetime` from now.
    pub fn issue(&self, subject: &str, tenant: Option<&str>, scopes: &[&str], lifetime: Duration) -> String {
        let now = now();
        let claims = Claims {
            sub: subject.to_string(),
            tenant: tenant.map(String::from),
            scope: scopes.join(" "),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            exp: now + lifetime.as_secs(),
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        self.issue_claims(&claims)
    }

    /// Signs arbitrary claims (tests use it to make tokens that must be refused).
    pub fn issue_claims(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.key)
            .expect("HS256 signing with an in-memory key cannot fail")
    }
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
}
