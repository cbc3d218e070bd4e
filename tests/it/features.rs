//! Features current Talk checks for: `recipient-call`, `chat-relay`,
//! `transient-sessiondata`, and the feature lists themselves.

use crate::support::*;
use serde_json::{json, Value};

/// The ids current Nextcloud requires in `X-Spreed-Signaling-Features`.
const REQUIRED: &[&str] = &[
    "audio-video-permissions",
    "federation",
    "incall-all",
    "hello-v2",
    "switchto",
];

fn ids(header: &str) -> Vec<String> {
    header.split(',').map(|s| s.trim().to_string()).collect()
}

#[tokio::test]
async fn the_features_header_lists_what_talk_requires_and_matches_hello() {
    let ts = TestServer::start().await;
    let resp = reqwest::get(format!("{}/api/v1/welcome", ts.url))
        .await
        .unwrap();
    let header = resp.headers()["X-Spreed-Signaling-Features"]
        .to_str()
        .unwrap()
        .to_string();
    // Nextcloud refuses a clock more than 45 s off: the reply has a Date.
    assert!(resp.headers().contains_key("date"));
    let body: Value = resp.json().await.unwrap();
    assert!(body["version"].as_str().is_some());
    let listed = ids(&header);
    for f in REQUIRED {
        assert!(listed.iter().any(|l| l == f), "{f} missing in {header}");
    }
    // Sorted, and exactly the features a normal client gets in its hello.
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    assert!(!listed.iter().any(|l| l == "virtual-sessions"));
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    let h = c
        .hello_v1(&ts.nc.backend_url(), json!({"userid": "alice"}))
        .await;
    let hello: Vec<String> = h["hello"]["server"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    assert_eq!(hello, listed);
    // Requests to Nextcloud carry the same header.
    let auth = ts.nc.wait_for("auth", |_| true).await;
    assert_eq!(
        auth.headers["X-Spreed-Signaling-Features"]
            .to_str()
            .unwrap(),
        header
    );
    // The WebSocket upgrade too (a federating server reads it there).
    let (_, resp) = tokio_tungstenite::connect_async(ts.ws_url()).await.unwrap();
    assert_eq!(
        resp.headers()["X-Spreed-Signaling-Features"]
            .to_str()
            .unwrap(),
        header
    );
    ts.stop().await;
}

/// `recipient-call`: only the members of the sender's room that are in the
/// call receive it.
#[tokio::test]
async fn messages_to_the_call_reach_only_its_members() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    let mut c = ts.client_in_room("carol", "room1").await;
    a.wait_join_of(&c.session_id).await;
    b.wait_join_of(&c.session_id).await;
    ts.backend_request("room1", &json!({"type": "incall", "incall": {"incall": 7, "changed": [{"sessionId": "nc-alice", "inCall": 7}, {"sessionId": "nc-bob", "inCall": 3}], "users": [{"sessionId": "nc-alice", "inCall": 7}, {"sessionId": "nc-bob", "inCall": 3}, {"sessionId": "nc-carol", "inCall": 0}]}})).await;
    for x in [&mut a, &mut b, &mut c] {
        x.wait_for(|m| m["event"]["target"] == "participants").await;
    }
    c.message_to(json!({"type": "call"}), json!({"n": 1})).await;
    let m = a.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["n"], 1);
    assert_eq!(m["message"]["sender"]["type"], "call");
    assert_eq!(m["message"]["sender"]["sessionid"], c.session_id.as_str());
    b.wait_for(|m| m["type"] == "message").await;
    // Carol is not in the call: nothing for her (a later direct message
    // is her next message), and the sender never gets its own.
    a.message_to(json!({"type": "call"}), json!({"n": 2})).await;
    b.wait_for(|m| m["type"] == "message").await;
    a.message_to(
        json!({"type": "session", "sessionid": c.session_id}),
        json!({"n": 3}),
    )
    .await;
    let m = c.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["n"], 3, "{m}");
    // `incall` with `all` puts everybody in the call.
    ts.backend_request(
        "room1",
        &json!({"type": "incall", "incall": {"incall": 1, "all": true}}),
    )
    .await;
    c.wait_for(|m| m["event"]["target"] == "participants").await;
    a.message_to(json!({"type": "call"}), json!({"n": 4})).await;
    let m = c.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["n"], 4, "{m}");
    ts.stop().await;
}

/// `chat-relay`: clients announcing it get each comment as its own event;
/// others get the plain refresh.
#[tokio::test]
async fn chat_comments_are_relayed_to_clients_that_ask() {
    let ts = TestServer::start().await;
    let mut a = ts.connect().await;
    a.expect_type("welcome").await;
    a.send(json!({"id": "h", "type": "hello", "hello": {"version": "1.0", "features": ["chat-relay"], "auth": {"url": ts.nc.backend_url(), "params": {"userid": "alice"}}}})).await;
    a.expect_type("hello").await;
    a.join("room1", "nc-alice").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    b.wait_join_of(&b.session_id.clone()).await;
    let c1 = json!({"id": 1, "message": "hi", "actorId": "bob", "actorDisplayName": "Bob"});
    let c2 = json!({"id": 2, "message": "there", "actorId": "bob", "actorDisplayName": "Bob"});
    ts.backend_request("room1", &json!({"type": "message", "message": {"data": {"type": "chat", "chat": {"refresh": true, "comment": c1, "comments": [c2]}}}})).await;
    for c in [&c1, &c2] {
        let m = a.wait_for(|m| m["event"]["type"] == "message").await;
        assert_eq!(
            m["event"]["message"],
            json!({"roomid": "room1", "data": {"type": "chat", "chat": {"comment": c}}})
        );
    }
    let m = b.wait_for(|m| m["event"]["type"] == "message").await;
    assert_eq!(
        m["event"]["message"],
        json!({"roomid": "room1", "data": {"type": "chat", "chat": {"refresh": true}}})
    );
    // Other room messages pass unchanged.
    ts.backend_request(
        "room1",
        &json!({"type": "message", "message": {"data": {"type": "other", "x": 1}}}),
    )
    .await;
    let m = a.wait_for(|m| m["event"]["type"] == "message").await;
    assert_eq!(
        m["event"]["message"]["data"],
        json!({"type": "other", "x": 1})
    );
    ts.stop().await;
}

/// `transient-sessiondata`: `sd:<session id>` may be set only by that
/// session and goes away when it leaves.
#[tokio::test]
async fn session_data_belongs_to_its_session() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    let mine = format!("sd:{}", b.session_id);
    let theirs = format!("sd:{}", a.session_id);
    b.send(json!({"id": "t1", "type": "transient", "transient": {"type": "set", "key": theirs, "value": 1}})).await;
    let e = b.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["error"]["code"], "not_allowed");
    assert_eq!(e["id"], "t1");
    b.send(json!({"id": "t2", "type": "transient", "transient": {"type": "set", "key": mine, "value": {"muted": true}}})).await;
    let m = a.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(m["transient"]["key"], mine.as_str());
    // Bob leaves: his session data is removed for everyone.
    b.send(json!({"type": "room", "room": {"roomid": ""}}))
        .await;
    let m = a.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(
        m["transient"],
        json!({"type": "remove", "key": mine, "oldvalue": {"muted": true}})
    );
    ts.stop().await;
}

#[tokio::test]
async fn serverinfo_answers_allowed_addresses_only() {
    let ts = TestServer::start().await;
    let mut sip = ts.connect().await;
    sip.expect_type("welcome").await;
    sip.send(internal_hello_with_features(
        &spreed_signaling::backend::checksum::new_random(),
        &["start-dialout"],
    ))
    .await;
    let h = sip.expect_type("hello").await;
    let resp = reqwest::get(format!("{}/api/v1/serverinfo", ts.url))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let info: Value = resp.json().await.unwrap();
    assert!(info["version"].as_str().is_some());
    assert!(info["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "serverinfo"));
    assert_eq!(info["dialout"][0]["sessionid"], h["hello"]["sessionid"]);
    assert_eq!(info["dialout"][0]["connected"], true);
    ts.stop().await;
    let ts = TestServer::start_with("[stats]\nallowed_ips = 10.1.2.3\n").await;
    let resp = reqwest::get(format!("{}/api/v1/serverinfo", ts.url))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    ts.stop().await;
}

fn internal_hello_with_features(random: &str, features: &[&str]) -> Value {
    let mut h = internal_hello(random);
    h["hello"]["features"] = json!(features);
    h
}
