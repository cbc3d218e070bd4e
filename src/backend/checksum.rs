//! `Spreed-Signaling-Random` / `-Checksum`: HMAC-SHA256 over random + body
//! with a shared secret, verified in constant time.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Header carrying the random string.
pub const HEADER_RANDOM: &str = "Spreed-Signaling-Random";
/// Header carrying the checksum.
pub const HEADER_CHECKSUM: &str = "Spreed-Signaling-Checksum";
/// Header naming the Nextcloud base URL.
pub const HEADER_BACKEND: &str = "Spreed-Signaling-Backend";

fn mac(secret: &[u8], random: &[u8], body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts any key length");
    mac.update(random);
    mac.update(body);
    mac
}

/// Hex checksum of `random` + `body`.
pub fn calculate(secret: &[u8], random: &[u8], body: &[u8]) -> String {
    hex::encode(mac(secret, random, body).finalize().into_bytes())
}

/// Shortest accepted `Spreed-Signaling-Random`: a short random would let a
/// recorded checksum be replayed with little guessing (Nextcloud sends 64).
pub const MIN_RANDOM_LEN: usize = 32;

/// Constant-time check of a checksum: exactly the lower-case hex string
/// Nextcloud (PHP's `hash_hmac`) and the Go server produce and compare; a
/// random shorter than [`MIN_RANDOM_LEN`] never verifies.
pub fn verify(secret: &[u8], random: &[u8], body: &[u8], checksum_hex: &str) -> bool {
    if random.len() < MIN_RANDOM_LEN || checksum_hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return false;
    }
    let Ok(expected) = hex::decode(checksum_hex) else {
        return false;
    };
    mac(secret, random, body).verify_slice(&expected).is_ok()
}

/// A new random string of 64 hex characters (32 random bytes).
pub fn new_random() -> String {
    let mut buf = [0u8; 32];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example() {
        let body = br#"{"type":"auth","auth":{"version":"1.0","params":{"hello":"world"}}}"#;
        let random = b"afb6b872ab03e3376b31bf0af601067222ff7990335ca02d327071b73c0119c6";
        let sum = "3c4a69ff328299803ac2879614b707c807b4758cf19450755c60656cac46e3bc";
        assert_eq!(calculate(b"MySecretValue", random, body), sum);
        assert!(verify(b"MySecretValue", random, body, sum));
        assert!(!verify(b"OtherSecret", random, body, sum));
        assert!(!verify(b"MySecretValue", random, b"{}", sum));
        assert!(!verify(b"MySecretValue", random, body, "zz"));
        // Only the lower-case form, untrimmed, as Go compares the strings.
        assert!(!verify(b"MySecretValue", random, body, &sum.to_uppercase()));
        assert!(!verify(b"MySecretValue", random, body, &format!(" {sum}")));
        // A short random never verifies, even with the right checksum.
        let short = &random[..31];
        let sum = calculate(b"MySecretValue", short, body);
        assert!(!verify(b"MySecretValue", short, body, &sum));
    }
}
