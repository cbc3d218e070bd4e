//! `GET /turn/credentials`: time-limited TURN credentials as the Go server
//! hands them out (draft-uberti-behave-turn-rest-00, coturn's
//! `use-auth-secret`): the user name is `<expiry unix time>:<name>`, the
//! password the base64 HMAC-SHA1 of the user name with `[turn] secret`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;

use super::AppState;
use crate::config::TurnConfig;

/// How long credentials are valid (fixed in the Go server too).
pub const VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// Length of the random name used when the request names none.
const RANDOM_NAME_LEN: usize = 32;

/// The query's value of `name` (form-decoded), if present.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        (decode(k) == name).then(|| decode(v))
    })
}

/// The user name and password for `name`, valid until `expires` (unix
/// seconds).
pub fn credentials(secret: &[u8], name: &str, expires: u64) -> (String, String) {
    let username = format!("{expires}:{name}");
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// Equal in time independent of where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, body).into_response()
}

/// The handler: `service=turn`, `key` (or `api`, as Janus sends it) equal
/// to `[turn] apikey`, optional `username`. Errors as the Go server: 400,
/// 403, 404 (no servers) with a line of text.
pub async fn credentials_handler(State(state): State<AppState>, RawQuery(q): RawQuery) -> Response {
    let turn: &TurnConfig = &state.hub.config.turn;
    let q = q.unwrap_or_default();
    let service = param(&q, "service").unwrap_or_default();
    let key = param(&q, "key")
        .filter(|k| !k.is_empty())
        .or_else(|| param(&q, "api"))
        .unwrap_or_default();
    if service != "turn" || key.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "Invalid service and/or key sent.\n",
        );
    }
    if turn.api_key.is_empty() || !same(key.as_bytes(), turn.api_key.as_bytes()) {
        return text(
            StatusCode::FORBIDDEN,
            "Not allowed to access this service.\n",
        );
    }
    if turn.servers.is_empty() {
        return text(StatusCode::NOT_FOUND, "No TURN servers available.\n");
    }
    let name = match param(&q, "username").filter(|u| !u.is_empty()) {
        Some(u) => u,
        None => rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(RANDOM_NAME_LEN)
            .map(char::from)
            .collect(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let (username, password) =
        credentials(turn.secret.as_bytes(), &name, (now + VALIDITY).as_secs());
    let mut body = serde_json::json!({
        "username": username,
        "password": password,
        "ttl": VALIDITY.as_secs(),
        "uris": turn.servers,
    })
    .to_string();
    body.push('\n');
    (
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        let q = "service=turn&api=a%2Bb+c&username=&x";
        assert_eq!(param(q, "service").as_deref(), Some("turn"));
        assert_eq!(param(q, "api").as_deref(), Some("a+b c"));
        assert_eq!(param(q, "username").as_deref(), Some(""));
        assert_eq!(param(q, "x").as_deref(), Some(""));
        assert_eq!(param(q, "key"), None);
    }

    /// coturn's check, worked by hand: base64(HMAC-SHA1("secret",
    /// "1700000000:alice")).
    #[test]
    fn credentials_are_coturn_s() {
        let (u, p) = credentials(b"secret", "alice", 1_700_000_000);
        assert_eq!(u, "1700000000:alice");
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"secret").unwrap();
        mac.update(b"1700000000:alice");
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(&p)
                .unwrap(),
            mac.finalize().into_bytes().to_vec()
        );
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
