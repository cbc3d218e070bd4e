//! hello 1.0 / 2.0 / internal, welcome, resume, bye and the hello errors,
//! over real sockets against a fake Nextcloud.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::*;
use serde_json::{json, Value};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign(alg: jsonwebtoken::Algorithm, key_file: &str, claims: Value) -> String {
    let pem = std::fs::read(format!(
        "{}/tests/data/{key_file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&pem),
        jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem),
        _ => jsonwebtoken::EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).unwrap()
}

fn data(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

async fn hello_v2(ts: &TestServer, token: &str) -> Value {
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    c.send(json!({"id": "h2", "type": "hello", "hello": {"version": "2.0", "auth": {"url": ts.nc.backend_url(), "params": {"token": token}}}})).await;
    c.recv().await
}

#[tokio::test]
async fn welcome_then_hello_v1_authenticates_through_the_backend() {
    let ts = TestServer::start().await;
    let mut c = ts.connect().await;
    let w = c.expect_type("welcome").await;
    assert!(w["welcome"]["version"].as_str().is_some());
    let features: Vec<&str> = w["welcome"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    for f in [
        "hello-v2",
        "transient-data",
        "welcome",
        "switchto",
        "incall-all",
    ] {
        assert!(features.contains(&f), "{f} missing in {features:?}");
    }
    let h = c
        .hello_v1(
            &ts.nc.backend_url(),
            json!({"userid": "alice", "ticket": "t"}),
        )
        .await;
    assert_eq!(h["id"], "hello-1");
    assert_eq!(h["hello"]["userid"], "alice");
    assert_eq!(h["hello"]["version"], "1.0");
    assert!(h["hello"]["resumeid"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert!(h["hello"]["server"]["features"]
        .as_array()
        .is_some_and(|f| f.contains(&json!("hello-v2"))));
    assert!(!h["hello"]["server"]["features"]
        .as_array()
        .unwrap()
        .contains(&json!("virtual-sessions")));

    let auth = ts.nc.wait_for("auth", |_| true).await;
    assert_eq!(
        auth.body,
        json!({"type": "auth", "auth": {"version": "1.0", "params": {"userid": "alice", "ticket": "t"}}})
    );
    assert_eq!(auth.headers["Spreed-Signaling-Backend"], ts.nc.url.as_str());
    assert_eq!(auth.headers["OCS-APIRequest"], "true");
    let feat = auth.headers["X-Spreed-Signaling-Features"]
        .to_str()
        .unwrap();
    assert!(feat.contains("hello-v2"), "{feat}");
    ts.stop().await;
}

#[tokio::test]
async fn guests_have_no_userid() {
    let ts = TestServer::start().await;
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    let h = c.hello_v1(&ts.nc.backend_url(), json!({})).await;
    assert_eq!(h["hello"]["userid"], "");
    ts.stop().await;
}

#[tokio::test]
async fn hello_errors_use_the_current_codes() {
    let ts = TestServer::start().await;
    let url = ts.nc.backend_url();
    let cases = [
        (
            json!({"version": "3.0", "auth": {"url": url, "params": {}}}),
            "invalid_hello_version",
        ),
        (
            json!({"version": "1.0", "auth": {"url": "https://evil.example/ocs", "params": {"userid": "x"}}}),
            "invalid_backend",
        ),
        (
            json!({"version": "1.0", "auth": {"type": "robot", "url": url, "params": {"x": 1}}}),
            "invalid_client_type",
        ),
        (
            json!({"version": "1.0", "auth": {"url": url, "params": {"fail": true}}}),
            "auth_failed",
        ),
        (
            json!({"version": "1.0", "auth": {"url": url}}),
            "invalid_format",
        ),
        (
            json!({"version": "1.0", "resumeid": "does-not-exist"}),
            "no_such_session",
        ),
    ];
    for (hello, code) in cases {
        let mut c = ts.connect().await;
        c.expect_type("welcome").await;
        c.send(json!({"id": "x", "type": "hello", "hello": hello}))
            .await;
        let e = c.expect_error(code).await;
        assert_eq!(e["id"], "x");
        assert!(e["error"]["message"].as_str().is_some());
    }
    ts.stop().await;
}

#[tokio::test]
async fn anything_before_hello_is_hello_expected() {
    let ts = TestServer::start().await;
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    c.send(json!({"id": "r", "type": "room", "room": {"roomid": "a", "sessionid": "b"}}))
        .await;
    let e = c.expect_error("hello_expected").await;
    assert_eq!(e["id"], "r");
    // The connection still works afterwards.
    c.hello_v1(&ts.nc.backend_url(), json!({"userid": "u"}))
        .await;
    ts.stop().await;
}

#[tokio::test]
async fn internal_clients_authenticate_with_the_shared_secret() {
    let ts = TestServer::start().await;
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    c.send(internal_hello("0123456789012345678901234567890123456789"))
        .await;
    let h = c.expect_type("hello").await;
    assert!(h["hello"]["server"]["features"]
        .as_array()
        .unwrap()
        .contains(&json!("virtual-sessions")));

    let mut bad = ts.connect().await;
    bad.expect_type("welcome").await;
    let mut msg = internal_hello("0123456789012345678901234567890123456789");
    msg["hello"]["auth"]["params"]["token"] = json!("00ff");
    bad.send(msg).await;
    bad.expect_error("invalid_token").await;
    ts.stop().await;
}

#[tokio::test]
async fn hello_v2_accepts_rsa_ecdsa_and_ed25519_tokens() {
    let cases = [
        (jsonwebtoken::Algorithm::RS256, "rsa.key", data("rsa.pub")),
        (
            jsonwebtoken::Algorithm::RS256,
            "rsa.key",
            data("rsa_pkcs1.pub"),
        ),
        (jsonwebtoken::Algorithm::ES256, "ec.key", data("ec.pub")),
        (jsonwebtoken::Algorithm::EdDSA, "ed.key", data("ed.pub")),
        (jsonwebtoken::Algorithm::EdDSA, "ed.key", data("ed.raw")),
    ];
    for (alg, key, public) in cases {
        let ts = TestServer::start().await;
        let claims = json!({"iss": ts.nc.url, "iat": now(), "exp": now() + 300, "sub": "bob", "userdata": {"displayname": "Bob"}});
        ts.nc.state.lock().unwrap().token_key = Some(public.trim().to_string());
        let token = sign(alg, key, claims);
        let h = hello_v2(&ts, &token).await;
        assert_eq!(h["type"], "hello", "{alg:?} {key}: {h}");
        assert_eq!(h["hello"]["userid"], "bob");
        assert_eq!(h["hello"]["version"], "2.0");
        // No auth request went to the backend for v2.
        assert!(ts.nc.requests("auth").is_empty());
        ts.stop().await;
    }
}

#[tokio::test]
async fn a_rotated_token_key_is_fetched_again_but_not_for_every_bad_token() {
    let ts = TestServer::start().await;
    let claims = json!({"iat": now(), "exp": now() + 300, "sub": "bob"});
    ts.nc.state.lock().unwrap().token_key = Some(data("ec.pub"));
    let es = jsonwebtoken::Algorithm::ES256;
    assert_eq!(
        hello_v2(&ts, &sign(es, "ec.key", claims.clone())).await["type"],
        "hello"
    );
    assert_eq!(ts.nc.state.lock().unwrap().capability_fetches, 1);
    // Nextcloud rotates its key: the cached key fails, the server refetches once.
    ts.nc.state.lock().unwrap().token_key = Some(data("ec2.pub"));
    assert_eq!(
        hello_v2(&ts, &sign(es, "ec2.key", claims.clone())).await["type"],
        "hello"
    );
    assert_eq!(ts.nc.state.lock().unwrap().capability_fetches, 2);
    // Tokens signed with some other key do not make it fetch again and again.
    for _ in 0..5 {
        let h = hello_v2(&ts, &sign(es, "ec.key", claims.clone())).await;
        assert_eq!(h["error"]["code"], "invalid_token");
    }
    assert_eq!(ts.nc.state.lock().unwrap().capability_fetches, 2);
    ts.stop().await;
}

#[tokio::test]
async fn hello_v2_rejects_expired_future_and_foreign_tokens() {
    let ts = TestServer::start().await;
    ts.nc.state.lock().unwrap().token_key = Some(data("ec.pub"));
    let es = jsonwebtoken::Algorithm::ES256;
    let expired = sign(
        es,
        "ec.key",
        json!({"iat": now() - 600, "exp": now() - 120, "sub": "bob"}),
    );
    let h = hello_v2(&ts, &expired).await;
    assert_eq!(h["error"]["code"], "token_expired", "{h}");
    let future = sign(
        es,
        "ec.key",
        json!({"iat": now() + 600, "exp": now() + 900, "sub": "bob"}),
    );
    assert_eq!(
        hello_v2(&ts, &future).await["error"]["code"],
        "token_not_valid_yet"
    );
    let within_leeway = sign(
        es,
        "ec.key",
        json!({"iat": now() - 100, "exp": now() - 30, "sub": "bob"}),
    );
    assert_eq!(hello_v2(&ts, &within_leeway).await["type"], "hello");
    let foreign = sign(
        es,
        "ec2.key",
        json!({"iat": now(), "exp": now() + 60, "sub": "bob"}),
    );
    assert_eq!(
        hello_v2(&ts, &foreign).await["error"]["code"],
        "invalid_token"
    );
    let missing_exp = sign(es, "ec.key", json!({"iat": now(), "sub": "bob"}));
    assert_eq!(
        hello_v2(&ts, &missing_exp).await["error"]["code"],
        "invalid_token"
    );
    assert_eq!(
        hello_v2(&ts, "not.a.token").await["error"]["code"],
        "invalid_token"
    );
    ts.stop().await;
}

#[tokio::test]
async fn session_limit_of_a_backend_is_enforced() {
    let ts = TestServer::start_with("sessionlimit = 2\n").await;
    let _a = ts.client(Some("a")).await;
    let b = ts.client(Some("b")).await;
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    c.send(json!({"id": "x", "type": "hello", "hello": {"version": "1.0", "auth": {"url": ts.nc.backend_url(), "params": {"userid": "c"}}}})).await;
    c.expect_error("session_limit_exceeded").await;
    // Releasing a session frees a slot.
    let mut b = b;
    b.send(json!({"id": "bye", "type": "bye", "bye": {}})).await;
    let bye = b.expect_type("bye").await;
    assert_eq!(bye["id"], "bye");
    c.hello_v1(&ts.nc.backend_url(), json!({"userid": "c"}))
        .await;
    ts.stop().await;
}

#[tokio::test]
async fn resume_restores_the_room_and_delivers_missed_messages_in_order() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    let (sid, rid) = (a.session_id.clone(), a.resume_id.clone());
    drop(a);
    for i in 0..5 {
        b.message_to(
            json!({"type": "session", "sessionid": sid}),
            json!({"n": i}),
        )
        .await;
    }
    // A broadcast after the messages proves they were processed.
    b.message_to(json!({"type": "room"}), json!({"n": "room"}))
        .await;
    let mut a2 = ts.connect().await;
    a2.expect_type("welcome").await;
    a2.send(json!({"id": "r", "type": "hello", "hello": {"version": "1.0", "resumeid": rid}}))
        .await;
    let h = a2.expect_type("hello").await;
    assert_eq!(h["hello"]["sessionid"], sid.as_str());
    for i in 0..5 {
        let m = a2.expect_type("message").await;
        assert_eq!(m["message"]["data"]["n"], i);
        assert_eq!(m["message"]["sender"]["sessionid"], b.session_id.as_str());
    }
    assert_eq!(
        a2.expect_type("message").await["message"]["data"]["n"],
        "room"
    );
    // Still in the room: room messages reach it.
    b.message_to(json!({"type": "room"}), json!({"after": true}))
        .await;
    assert_eq!(
        a2.expect_type("message").await["message"]["data"]["after"],
        true
    );
    ts.stop().await;
}

#[tokio::test]
async fn bye_releases_the_session_at_once() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    let rid = a.resume_id.clone();
    a.send(json!({"id": "b1", "type": "bye", "bye": {}})).await;
    let m = a.expect_type("bye").await;
    assert_eq!(m["id"], "b1");
    let left = b.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(left["event"]["leave"][0], a.session_id.as_str());
    ts.assert_backend_told_leave("nc-alice").await;
    ts.assert_resume_refused(&rid).await;
    ts.stop().await;
}

#[tokio::test]
async fn a_second_hello_on_an_authenticated_connection_is_ignored() {
    let ts = TestServer::start().await;
    let mut a = ts.client(Some("alice")).await;
    let rid = a.resume_id.clone();
    a.send(json!({"id": "again", "type": "hello", "hello": {"version": "1.0", "resumeid": rid}}))
        .await;
    a.send(json!({"id": "after", "type": "room", "room": {"roomid": "r1", "sessionid": "x"}}))
        .await;
    // The next message is the room reply, not a hello or an error.
    let m = a.recv().await;
    assert_eq!(m["type"], "room", "{m}");
    assert_eq!(m["id"], "after");
    ts.stop().await;
}

#[tokio::test]
async fn welcome_endpoint_and_headers() {
    let ts = TestServer::start().await;
    let resp = reqwest::get(format!("{}/api/v1/welcome", ts.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let feat = resp.headers()["X-Spreed-Signaling-Features"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(resp.headers().contains_key("server"));
    assert!(resp.headers().contains_key("date"));
    let ids: Vec<&str> = feat.split(", ").collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    for f in [
        "incall-all",
        "hello-v2",
        "switchto",
        "dialout",
        "transient-data",
    ] {
        assert!(ids.contains(&f), "{f} missing: {feat}");
    }
    let v: Value = resp.json().await.unwrap();
    assert!(v["version"].as_str().is_some());

    // The WebSocket upgrade carries the header too.
    let (_, resp) = tokio_tungstenite::connect_async(ts.ws_url()).await.unwrap();
    assert!(resp.headers().contains_key("X-Spreed-Signaling-Features"));
    ts.stop().await;
}

#[tokio::test]
async fn reloading_backends_keeps_sessions_and_admits_new_backends() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let nc2 = FakeNextcloud::start().await;
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    c.send(json!({"id": "x", "type": "hello", "hello": {"version": "1.0", "auth": {"url": nc2.backend_url(), "params": {"userid": "bob"}}}})).await;
    c.expect_error("invalid_backend").await;
    let text = config_text(&ts.nc, "").replace("backends = nc1", "backends = nc1, nc2")
        + &format!("[nc2]\nurl = {}\nsecret = {SECRET}\n", nc2.url);
    let cfg = spreed_signaling::config::Config::parse(&text).unwrap();
    ts.server.as_ref().unwrap().hub.reload(&cfg);
    let mut b = ts.connect().await;
    b.expect_type("welcome").await;
    b.hello_v1(&nc2.backend_url(), json!({"userid": "bob"}))
        .await;
    // Alice's session survived the reload (and is reachable from her own
    // backend only).
    let mut c = ts.client(Some("carol")).await;
    c.message_to(
        json!({"type": "session", "sessionid": a.session_id}),
        json!({"after": "reload"}),
    )
    .await;
    let m = a.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["after"], "reload");
    ts.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_config_file() {
    let nc1 = FakeNextcloud::start().await;
    let nc2 = FakeNextcloud::start().await;
    let text = config_text(&nc1, "");
    let mut server = ServerProcess::start(&text).await;
    let url = server.ws_url();
    let hello = |u: String| json!({"id": "x", "type": "hello", "hello": {"version": "1.0", "auth": {"url": u, "params": {"userid": "bob"}}}});
    let mut c = Client::connect(&url).await;
    c.expect_type("welcome").await;
    c.send(hello(nc2.backend_url())).await;
    c.expect_error("invalid_backend").await;
    let new = text.replace("backends = nc1", "backends = nc1, nc2")
        + &format!("[nc2]\nurl = {}\nsecret = {SECRET}\n", nc2.url);
    std::fs::write(&server.config_path, new).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The same connection can now authenticate against the new backend.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        c.send(hello(nc2.backend_url())).await;
        let m = c.recv().await;
        if m["type"] == "hello" {
            break;
        }
        assert_eq!(m["error"]["code"], "invalid_backend");
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload did not happen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.kill();
}

#[tokio::test]
async fn metrics_use_the_go_servers_names_and_labels() {
    let ts = TestServer::start().await;
    let _a = ts.client_in_room("alice", "room1").await;
    let mut r = ts.connect().await;
    r.expect_type("welcome").await;
    r.send(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": "gone"}}))
        .await;
    r.expect_error("no_such_session").await;
    let text = ts.metrics_text().await;
    for line in [
        "signaling_backend_current 1",
        "signaling_hub_sessions{backend=\"nc1\",clienttype=\"client\"} 1",
        "signaling_hub_sessions_total{backend=\"nc1\",clienttype=\"client\"} 1",
        "signaling_hub_rooms{backend=\"nc1\"} 1",
        "signaling_room_sessions{backend=\"nc1\",clienttype=\"client\",room=\"room1\"} 1",
        "signaling_hub_sessions_resume_failed_total 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    ts.stop().await;
}

#[tokio::test]
async fn resuming_a_connected_session_moves_it_to_the_new_connection() {
    let ts = TestServer::start().await;
    let mut old = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    b.wait_join_of(&old.session_id).await;
    let mut new = ts.connect().await;
    new.expect_type("welcome").await;
    new.send(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": old.resume_id}}))
        .await;
    assert_eq!(
        new.expect_type("hello").await["hello"]["sessionid"],
        old.session_id.as_str()
    );
    let bye = old.wait_for(|m| m["type"] == "bye").await;
    assert_eq!(bye["bye"]["reason"], "session_resumed");
    b.message_to(
        json!({"type": "session", "sessionid": old.session_id}),
        json!({"to": "new"}),
    )
    .await;
    assert_eq!(
        new.wait_for(|m| m["type"] == "message").await["message"]["data"]["to"],
        "new"
    );
    ts.stop().await;
}

#[tokio::test]
async fn shutdown_says_bye_and_closes_with_1001() {
    let ts = TestServer::start().await;
    let mut a = ts.client(Some("alice")).await;
    let stopping = tokio::spawn(ts.stop());
    let bye = a.expect_type("bye").await;
    assert_eq!(bye["bye"]["reason"], "shutdown");
    assert_eq!(a.expect_close().await, Some(1001));
    stopping.await.unwrap();
}

/// A hello's features are copied into every join event of the session:
/// more than 64, or one longer than 64 bytes, are refused.
#[tokio::test]
async fn a_hello_with_too_many_or_too_long_features_is_refused() {
    let ts = TestServer::start().await;
    let url = ts.nc.backend_url();
    let many: Vec<String> = (0..65).map(|i| format!("f{i}")).collect();
    for features in [json!(many), json!(["x".repeat(65)])] {
        let mut c = ts.connect().await;
        c.expect_type("welcome").await;
        c.send(
            json!({"id": "h", "type": "hello", "hello": {"version": "1.0", "features": features,
            "auth": {"url": url, "params": {"userid": "alice"}}}}),
        )
        .await;
        let e = c.expect_error("invalid_format").await;
        assert_eq!(e["id"], "h");
    }
    // 64 features of 64 bytes are fine.
    let ok: Vec<String> = (0..64).map(|i| format!("{i:064}")).collect();
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    c.send(
        json!({"id": "h", "type": "hello", "hello": {"version": "1.0", "features": ok,
        "auth": {"url": url, "params": {"userid": "alice"}}}}),
    )
    .await;
    c.expect_type("hello").await;
    ts.stop().await;
}
