//! hello v2 JWT verification with the key from Nextcloud's capabilities:
//! RSA, ECDSA and Ed25519, PEM or a bare base64 Ed25519 key.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Leeway for `iat` / `exp`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// Why a token was refused.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum TokenError {
    /// Past `exp` (+ leeway).
    #[error("token expired")]
    Expired,
    /// `iat` / `nbf` in the future (beyond leeway).
    #[error("token not valid yet")]
    NotValidYet,
    /// Signature does not verify with the key (maybe the key rotated).
    #[error("invalid token signature")]
    BadSignature,
    /// The key does not fit the token's algorithm or cannot be read.
    #[error("unusable key: {0}")]
    BadKey(String),
    /// Anything else: malformed, wrong algorithm, missing claims.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Claims of a hello v2 token.
#[derive(Debug, Deserialize)]
pub struct HelloV2Claims {
    /// Issuer (not checked, as the Go server).
    #[serde(default)]
    pub iss: Option<String>,
    /// Issued at.
    pub iat: i64,
    /// Expires at.
    pub exp: i64,
    /// User id; empty for guests.
    #[serde(default)]
    pub sub: Option<String>,
    /// User data.
    #[serde(default)]
    pub userdata: Option<serde_json::Value>,
}

fn decoding_key(alg: Algorithm, key: &str) -> Result<DecodingKey, TokenError> {
    let key = key.trim();
    let invalid = |e: jsonwebtoken::errors::Error| TokenError::BadKey(e.to_string());
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(key.as_bytes()).map_err(invalid),
        Algorithm::ES256 | Algorithm::ES384 => {
            DecodingKey::from_ec_pem(key.as_bytes()).map_err(invalid)
        }
        Algorithm::EdDSA => {
            if key.starts_with("-----BEGIN") {
                DecodingKey::from_ed_pem(key.as_bytes()).map_err(invalid)
            } else {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .map_err(|e| TokenError::BadKey(e.to_string()))?;
                if raw.len() != 32 {
                    return Err(TokenError::BadKey("bad Ed25519 key length".into()));
                }
                Ok(DecodingKey::from_ed_der(&raw))
            }
        }
        other => Err(TokenError::Invalid(format!(
            "unsupported algorithm {other:?}"
        ))),
    }
}

/// Verifies `token` with `key` at time `now` (unix seconds).
pub fn verify(token: &str, key: &str, now: i64) -> Result<HelloV2Claims, TokenError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
    let dkey = decoding_key(header.alg, key)?;
    let mut v = Validation::new(header.alg);
    v.leeway = LEEWAY_SECS;
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    // Decoded as a JSON object first: serde's derived struct reader also
    // takes an array of the fields in order, so `["", 5, 55, "admin"]`
    // would pass as claims (the Go server, like the JWT spec, wants an
    // object).
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &dkey, &v)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => TokenError::BadSignature,
                _ => TokenError::Invalid(e.to_string()),
            }
        })?;
    let claims: HelloV2Claims = serde_json::from_value(serde_json::Value::Object(data.claims))
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    let leeway = LEEWAY_SECS as i64;
    // Saturating: the claims may hold any i64 (an `exp` near i64::MAX
    // overflowed here: a panic in debug builds, "expired" in release).
    if claims.iat > now.saturating_add(leeway) {
        return Err(TokenError::NotValidYet);
    }
    if claims.exp.saturating_add(leeway) < now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJodHRwczovL25leHRjbG91ZC1tYXN0ZXIubG9jYWwvIiwiaWF0IjoxNjU0ODQyMDgwLCJleHAiOjE2NTQ4NDIzODAsInN1YiI6ImFkbWluIiwidXNlcmRhdGEiOnsiZGlzcGxheW5hbWUiOiJBZG1pbmlzdHJhdG9yIn19.5rV0jh89_0fG2L-BUPtciu1q49PoYkLboj33EOdD0qQeYcvE7_di2r5WXM1WmKUCOGeX3hzn6qldDMrJBNuxvQ";
    const SPEC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEIoCsNSCXyxK25zvSKRio0uiBzwub
ONq3tiGTPZo3p2Ogn6wAhhsuSxbFuUQDWMX7Tsu9fDzVdwpRHPT4y3V9cA==
-----END PUBLIC KEY-----";

    #[test]
    fn spec_example_verifies_within_its_lifetime() {
        let c = verify(SPEC_TOKEN, SPEC_KEY, 1654842100).unwrap();
        assert_eq!(c.sub.as_deref(), Some("admin"));
        assert_eq!(
            c.userdata.unwrap()["displayname"].as_str(),
            Some("Administrator")
        );
    }

    #[test]
    fn spec_example_expired_and_not_yet_valid() {
        assert_eq!(
            verify(SPEC_TOKEN, SPEC_KEY, 1654842380 + 61).unwrap_err(),
            TokenError::Expired
        );
        assert!(verify(SPEC_TOKEN, SPEC_KEY, 1654842380 + 59).is_ok());
        assert_eq!(
            verify(SPEC_TOKEN, SPEC_KEY, 1654842080 - 61).unwrap_err(),
            TokenError::NotValidYet
        );
    }

    #[test]
    fn tampered_token_is_a_bad_signature() {
        let mut parts: Vec<&str> = SPEC_TOKEN.split('.').collect();
        let other =
            "eyJpc3MiOiJ4IiwiaWF0IjoxNjU0ODQyMDgwLCJleHAiOjE2NTQ4NDIzODAsInN1YiI6ImV2aWwifQ";
        parts[1] = other;
        let t = parts.join(".");
        assert_eq!(
            verify(&t, SPEC_KEY, 1654842100).unwrap_err(),
            TokenError::BadSignature
        );
        assert!(matches!(
            verify("garbage", SPEC_KEY, 0).unwrap_err(),
            TokenError::Invalid(_)
        ));
    }
}
