//! `/turn/credentials` (`[turn] apikey`, `secret`, `servers`) as the Go
//! server answers it, over real HTTP.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};

use crate::support::*;

const TURN: &str = "[turn]\napikey = the-key-of-janus\nsecret = turn-shared-secret\n\
    servers = turn:192.0.2.1:3478?transport=udp, turn:192.0.2.1:3478?transport=tcp\n";

async fn get(server: &TestServer, query: &str) -> (u16, String, String) {
    let r = reqwest::get(format!("{}/turn/credentials?{query}", server.url))
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ctype, r.text().await.unwrap())
}

fn hmac_sha1(secret: &str, data: &str) -> String {
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_signed_with_the_turn_secret() {
    let server = TestServer::start_with(TURN).await;
    // Janus sends the key as `api`.
    let (status, ctype, body) =
        get(&server, "service=turn&api=the-key-of-janus&username=alice").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ctype, "application/json; charset=utf-8");
    assert!(body.ends_with('\n'));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let username = v["username"].as_str().unwrap();
    let (expires, name) = username.split_once(':').unwrap();
    assert_eq!(name, "alice");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires: u64 = expires.parse().unwrap();
    assert!(
        expires >= now + 86400 - 5 && expires <= now + 86400 + 5,
        "{expires} {now}"
    );
    assert_eq!(v["password"], hmac_sha1("turn-shared-secret", username));
    assert_eq!(v["ttl"], 86400);
    assert_eq!(
        v["uris"],
        serde_json::json!([
            "turn:192.0.2.1:3478?transport=udp",
            "turn:192.0.2.1:3478?transport=tcp"
        ])
    );
    // `key` (the draft's name) works too; without a user name, a random one.
    let (status, _, body) = get(&server, "service=turn&key=the-key-of-janus").await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let name = v["username"].as_str().unwrap().split_once(':').unwrap().1;
    assert_eq!(name.len(), 32, "{body}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_key_are_refused_as_go_does() {
    let server = TestServer::start_with(TURN).await;
    for (query, status, text) in [
        ("service=turn", 400, "Invalid service and/or key sent.\n"),
        (
            "service=stun&api=the-key-of-janus",
            400,
            "Invalid service and/or key sent.\n",
        ),
        (
            "service=turn&api=wrong",
            403,
            "Not allowed to access this service.\n",
        ),
        ("", 400, "Invalid service and/or key sent.\n"),
    ] {
        let (s, _, body) = get(&server, query).await;
        assert_eq!((s, body.as_str()), (status, text), "{query}");
    }
    server.stop().await;
    // An API key but no servers: 404, as the Go server.
    let server = TestServer::start_with("[turn]\napikey = k1\nsecret = s1\n").await;
    let (s, _, body) = get(&server, "service=turn&api=k1").await;
    assert_eq!((s, body.as_str()), (404, "No TURN servers available.\n"));
    server.stop().await;
    // No [turn] at all: nobody gets credentials.
    let server = TestServer::start().await;
    let (s, _, _) = get(&server, "service=turn&api=x").await;
    assert_eq!(s, 403);
    server.stop().await;
}

/// Servers without the key or the secret are a configuration error
/// naming the key, as in the Go server.
#[test]
fn servers_need_a_key_and_a_secret() {
    let base = "[sessions]\nhashkey = 0123456789abcdef\n";
    let e = spreed_signaling::config::Config::parse(&format!(
        "{base}[turn]\nservers = turn:x\nsecret = s\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("[turn] apikey:"), "{e}");
    let e = spreed_signaling::config::Config::parse(&format!(
        "{base}[turn]\nservers = turn:x\napikey = k\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("[turn] secret:"), "{e}");
}
