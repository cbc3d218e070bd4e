//! Internal clients (SIP bridge, recording) and their virtual sessions in
//! a rolling restart over a real nats-server: handed over with the other
//! sessions, resumed on any process, nobody sees the phone leave.

use serde_json::{json, Value};

use super::handover::{is_leave, leaves, logs, nodes, resume, until_close};
use crate::support::*;

/// An internal client on `node` with a virtual session `phone` in
/// `room`; returns it, its session and resume ids.
async fn sip_with_phone(node: &Node, random: &str, phone: &str, room: &str) -> (Client, Value) {
    let mut sip = Client::connect(&node.ws_url()).await;
    sip.expect_type("welcome").await;
    sip.send(internal_hello(random)).await;
    let h = sip.expect_type("hello").await;
    sip.send(
        json!({"type": "internal", "internal": {"type": "addsession", "addsession": {
        "sessionid": phone, "roomid": room, "userid": "", "flags": 1}}}),
    )
    .await;
    (sip, h["hello"].clone())
}

/// Nextcloud heard of no removed virtual session and no leave.
fn nextcloud_told_nothing(nc: &FakeNextcloud) {
    let removed: Vec<_> = nc
        .requests("session")
        .into_iter()
        .filter(|r| r.body["session"]["action"] == "remove")
        .map(|r| r.body)
        .collect();
    assert!(removed.is_empty(), "{removed:?}");
    assert!(leaves(nc).is_empty(), "{:?}", leaves(nc));
}

#[tokio::test]
async fn internal_clients_and_their_virtual_sessions_survive_a_rolling_restart() {
    let nats = NatsServer::start().await;
    let nc = FakeNextcloud::start().await;
    let mut n = nodes(&nats, &nc, 3, "").await;
    let mut alice = n[1].client_in_room(&nc, "alice", "room1").await;
    // (A virtual session is added to a room this process serves.)
    let dave = n[0].client_in_room(&nc, "dave", "room1").await;
    alice.wait_join_of(&dave.session_id).await;
    // Two internal clients: the stopping process spreads them over the
    // two others, both resume on the third (one was handed to it, the
    // other is claimed from the second).
    let (mut sip1, h1) = sip_with_phone(
        &n[0],
        "0123456789012345678901234567890123456789",
        "phone-1",
        "room1",
    )
    .await;
    let (mut sip2, h2) = sip_with_phone(
        &n[0],
        "9876543210987654321098765432109876543210",
        "phone-2",
        "room1",
    )
    .await;
    let me = alice.session_id.clone();
    let mut phones: Vec<String> = Vec::new();
    while phones.len() < 2 {
        let j = alice.wait_for(|m| m["event"]["type"] == "join").await;
        for e in j["event"]["join"].as_array().unwrap() {
            let sid = e["sessionid"].as_str().unwrap().to_string();
            if sid != me && sid != dave.session_id && !phones.contains(&sid) {
                phones.push(sid);
            }
        }
    }

    n[0].signal("-TERM");
    for c in [&mut sip1, &mut sip2] {
        let (seen, code) = until_close(c).await;
        assert_eq!(code, Some(1012), "{seen:?}");
        assert!(seen.iter().all(|m| m["type"] != "bye"), "{seen:?}");
    }
    assert_eq!(n[0].exit_code(TIMEOUT).await, Some(0));

    // Meanwhile alice writes to a phone: its internal client gets it.
    alice
        .message_to(
            json!({"type": "session", "sessionid": phones[0]}),
            json!({"n": 1}),
        )
        .await;
    let mut resumed = Vec::new();
    for h in [&h1, &h2] {
        let (c, hello) = resume(&n[2], h["resumeid"].as_str().unwrap()).await;
        assert_eq!(
            hello["hello"]["sessionid"],
            h["sessionid"],
            "{hello}\n{}",
            logs(&n)
        );
        resumed.push(c);
    }
    // The message written while the client was away reached one of them,
    // addressed to the phone's own id.
    let mut got: Vec<Value> = Vec::new();
    for c in resumed.iter_mut() {
        if let Ok(m) = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            c.wait_for(|m| m["type"] == "message"),
        )
        .await
        {
            got.push(m);
        }
    }
    assert_eq!(got.len(), 1, "{got:?}\n{}", logs(&n));
    assert_eq!(got[0]["message"]["data"]["n"], 1, "{got:?}");
    assert!(got[0]["message"]["recipient"]["sessionid"]
        .as_str()
        .is_some_and(|s| s.starts_with("phone-")));

    // Both phones are still in the room, on the process that holds their
    // internal client now: messages to each reach it.
    for (i, phone) in phones.iter().enumerate() {
        alice
            .message_to(
                json!({"type": "session", "sessionid": phone}),
                json!({"n": 10 + i}),
            )
            .await;
    }
    let mut later = Vec::new();
    let mut owns = Vec::new();
    for c in resumed.iter_mut() {
        let m = c.wait_for(|m| m["type"] == "message").await;
        later.push(m["message"]["data"]["n"].as_i64().unwrap());
        owns.push(m["message"]["recipient"]["sessionid"].clone());
    }
    later.sort();
    assert_eq!(later, vec![10, 11], "{}", logs(&n));
    // A newcomer finds both phones; alice saw nobody leave.
    let carol = n[2].client_in_room(&nc, "carol", "room1").await;
    let mut seen = Vec::new();
    loop {
        let m = alice.recv().await;
        let done = m["type"] == "event" && m.to_string().contains(carol.session_id.as_str());
        seen.push(m);
        if done {
            break;
        }
    }
    assert!(!seen.iter().any(is_leave), "{seen:?}");
    let mut carol = carol;
    let j = carol.wait_join_of(&phones[0]).await;
    assert!(j.to_string().contains(phones[1].as_str()), "{j}");
    nextcloud_told_nothing(&nc);

    // The internal client still owns its phone: removing it is a leave.
    resumed[0]
        .send(
            json!({"type": "internal", "internal": {"type": "removesession", "removesession": {
            "sessionid": owns[0], "roomid": "room1"}}}),
        )
        .await;
    let l = alice.wait_for(is_leave).await;
    assert_eq!(l["event"]["leave"].as_array().unwrap().len(), 1, "{l}");
}
