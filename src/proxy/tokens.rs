//! `[tokens]`: the public keys of the signaling servers allowed to use the
//! proxy, and the check of their hello tokens as the Go proxy does it: an
//! RS256/384/512 JWT whose `iss` names the key, signed by it, `iat` not in
//! the future and at most 5 minutes old (`exp`/`nbf` checked when present).

use std::collections::HashMap;
use std::path::PathBuf;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// How old a token's `iat` may be.
pub const MAX_TOKEN_AGE_SECS: i64 = 5 * 60;

/// The loaded keys, by token id.
#[derive(Default)]
pub struct TokenKeys {
    keys: HashMap<String, DecodingKey>,
}

/// Why a token was refused: the Go proxy's error and its metric reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// `auth_failed`, with the `signaling_proxy_token_errors_total` reason.
    AuthFailed(&'static str),
    /// `token_expired` (`iat` more than 5 minutes old).
    Expired,
}

impl TokenRefusal {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            TokenRefusal::AuthFailed(r) => r,
            TokenRefusal::Expired => "expired",
        }
    }
}

impl TokenKeys {
    /// Reads every key file. At start-up (`strict`) a missing or bad file
    /// is an error naming its `[tokens]` key; on reload it is skipped
    /// (logged), as the Go proxy does.
    pub fn load(entries: &[(String, PathBuf)], strict: bool) -> Result<TokenKeys, String> {
        let mut keys = HashMap::new();
        for (id, path) in entries {
            let key = std::fs::read(path)
                .map_err(|e| format!("[tokens] {id}: cannot read {}: {e}", path.display()))
                .and_then(|pem| {
                    DecodingKey::from_rsa_pem(&pem).map_err(|e| {
                        format!(
                            "[tokens] {id}: {} is not an RSA public key in PEM: {e}",
                            path.display()
                        )
                    })
                });
            match key {
                Ok(k) => {
                    keys.insert(id.clone(), k);
                }
                Err(e) if strict => return Err(e),
                Err(e) => tracing::warn!("{e}; skipped"),
            }
        }
        if keys.is_empty() {
            tracing::warn!("No token keys loaded: no signaling server can connect");
        } else {
            let mut ids: Vec<&str> = keys.keys().map(String::as_str).collect();
            ids.sort_unstable();
            tracing::info!(keys = ?ids, "token keys loaded");
        }
        Ok(TokenKeys { keys })
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True without keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a hello token at `now` (unix seconds); returns its issuer.
    pub fn verify(&self, token: &str, now: i64) -> Result<String, TokenRefusal> {
        let failed = TokenRefusal::AuthFailed;
        let header = jsonwebtoken::decode_header(token).map_err(|_| failed("auth-failed"))?;
        if !matches!(
            header.alg,
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512
        ) {
            return Err(failed("unsupported-signing-method"));
        }
        let claims = unverified_claims(token).ok_or(failed("unsupported-claims"))?;
        let iss = claims.get("iss").and_then(|v| v.as_str()).unwrap_or("");
        let key = self.keys.get(iss).ok_or(failed("unsupported-issuer"))?;
        let mut v = Validation::new(header.alg);
        v.algorithms = vec![header.alg];
        v.leeway = 0;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, key, &v)
            .map_err(|_| failed("auth-failed"))?;
        // jwt-go reads `iat` as an integer; a missing one is 0 (expired).
        let iat = match claims.get("iat") {
            None => 0,
            Some(v) => v.as_i64().ok_or(failed("auth-failed"))?,
        };
        if iat > now {
            // jwt-go: "Token used before issued".
            return Err(failed("auth-failed"));
        }
        if iat < now.saturating_sub(MAX_TOKEN_AGE_SECS) {
            return Err(TokenRefusal::Expired);
        }
        Ok(iss.to_string())
    }
}

/// The claims object of a JWT, not verified (to find the key by `iss`).
fn unverified_claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let part = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&raw).ok()? {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    /// A 2048-bit test key pair (PKCS#8 private, PKIX public).
    fn pair() -> (EncodingKey, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("proxy-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key.pem");
        let status = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&key)
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let public = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .output()
            .unwrap()
            .stdout;
        let private = std::fs::read(&key).unwrap();
        (EncodingKey::from_rsa_pem(&private).unwrap(), public)
    }

    fn keys(public: &[u8]) -> TokenKeys {
        let path =
            std::env::temp_dir().join(format!("proxy-tokens-pub-{}.pem", std::process::id()));
        std::fs::write(&path, public).unwrap();
        TokenKeys::load(&[("server1".into(), path)], true).unwrap()
    }

    fn token(key: &EncodingKey, alg: Algorithm, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
    }

    #[test]
    fn the_go_servers_token_and_its_failures() {
        let (private, public) = pair();
        let k = keys(&public);
        let now = 1_700_000_000;
        let t = |alg, c| token(&private, alg, c);
        let ok = serde_json::json!({"iat": now, "iss": "server1"});
        assert_eq!(
            k.verify(&t(Algorithm::RS256, ok.clone()), now),
            Ok("server1".into())
        );
        assert!(k.verify(&t(Algorithm::RS384, ok.clone()), now).is_ok());
        assert!(k.verify(&t(Algorithm::RS512, ok.clone()), now).is_ok());
        assert_eq!(
            k.verify(&t(Algorithm::PS256, ok.clone()), now),
            Err(TokenRefusal::AuthFailed("unsupported-signing-method"))
        );
        let other = serde_json::json!({"iat": now, "iss": "server2"});
        assert_eq!(
            k.verify(&t(Algorithm::RS256, other), now),
            Err(TokenRefusal::AuthFailed("unsupported-issuer"))
        );
        let old = serde_json::json!({"iat": now - 301, "iss": "server1"});
        assert_eq!(
            k.verify(&t(Algorithm::RS256, old), now),
            Err(TokenRefusal::Expired)
        );
        let edge = serde_json::json!({"iat": now - 300, "iss": "server1"});
        assert!(k.verify(&t(Algorithm::RS256, edge), now).is_ok());
        let future = serde_json::json!({"iat": now + 10, "iss": "server1"});
        assert_eq!(
            k.verify(&t(Algorithm::RS256, future), now),
            Err(TokenRefusal::AuthFailed("auth-failed"))
        );
        let no_iat = serde_json::json!({"iss": "server1"});
        assert_eq!(
            k.verify(&t(Algorithm::RS256, no_iat), now),
            Err(TokenRefusal::Expired)
        );
        // Another key's signature.
        let (other_private, _) = pair();
        assert_eq!(
            k.verify(&token(&other_private, Algorithm::RS256, ok), now),
            Err(TokenRefusal::AuthFailed("auth-failed"))
        );
        for junk in ["", "a.b.c", "x", "eyJhbGciOiJSUzI1NiJ9.W10.x"] {
            assert!(k.verify(junk, now).is_err(), "{junk}");
        }
    }

    #[test]
    fn a_bad_key_file_is_refused_at_start_and_skipped_on_reload() {
        let path =
            std::env::temp_dir().join(format!("proxy-tokens-bad-{}.pem", std::process::id()));
        std::fs::write(&path, "not a key").unwrap();
        let entries = [("server9".to_string(), path)];
        let e = TokenKeys::load(&entries, true).err().unwrap();
        assert!(e.contains("[tokens] server9"), "{e}");
        assert!(TokenKeys::load(&entries, false).unwrap().is_empty());
    }
}
