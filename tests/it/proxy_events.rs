//! Our proxy tells the server at once (not on a poll) when Janus closes
//! a publisher (`publisher-closed`; subscribers take the same path and
//! need real media: `proxy::the_go_server_publishes_and_subscribes_media_through_our_proxy`)
//! and when Janus goes (`backend-disconnected`): the proxy's Janus client
//! notifies it (`JanusMcu::changes`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::janus::{audio_offer, Observer};
use crate::support::proxy_procs::{command, event, session, ProxyTest};
use crate::support::Client;

/// How soon an event must follow its cause. A poll of the MCU once a
/// second (the old way) misses it in most rounds; a notification takes
/// milliseconds.
const PROMPT: Duration = Duration::from_millis(300);

/// A request `kind` with a payload for client `id`; returns the reply.
async fn payload(c: &mut Client, rid: &str, kind: &str, id: &str, body: Value) -> Value {
    let mut p = json!({"type": kind, "clientId": id});
    if !body.is_null() {
        p["payload"] = body;
    }
    c.send(json!({"id": rid, "type": "payload", "payload": p}))
        .await;
    let r = c.wait_for(|m| m["id"] == rid).await;
    assert_eq!(r["type"], "payload", "{r}");
    r
}

/// Waits for `publisher-closed` of `publisher` (other messages skipped),
/// within PROMPT.
async fn publisher_closed(c: &mut Client, publisher: &str) {
    tokio::time::timeout(
        PROMPT,
        c.wait_for(|m| {
            m["event"]["type"] == "publisher-closed" && m["event"]["clientId"] == publisher
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("publisher-closed within {PROMPT:?}"));
}

#[tokio::test]
async fn janus_closing_clients_and_janus_going_reach_the_server_at_once() {
    let Some(t) = ProxyTest::start(
        "janus_closing_clients_and_janus_going_reach_the_server_at_once",
        "",
    )
    .await
    else {
        return;
    };
    let ProxyTest {
        dir,
        private,
        janus: mut j,
        proxy: ours,
        ..
    } = t;
    let (mut c, _) = session(&ours.url(), &private).await;
    let mut janus = Observer::connect(&j.url()).await;
    for round in 0..4 {
        let p = command(
            &mut c,
            &format!("p{round}"),
            json!({"type": "create-publisher", "streamType": "video"}),
        )
        .await;
        let pid = p["command"]["id"].as_str().unwrap().to_string();
        let offer = json!({"type": "offer", "sdp": audio_offer()});
        let a = payload(&mut c, &format!("o{round}"), "offer", &pid, offer).await;
        assert_eq!(a["payload"]["payload"]["type"], "answer", "{a}");
        // Someone destroys the publisher's room: Janus tells its handle.
        let room = janus.wait_room(&pid, "video", true).await.unwrap();
        janus.destroy(&room["room"]).await;
        publisher_closed(&mut c, &pid).await;
    }
    // Janus goes: backend-disconnected follows at once.
    j.kill();
    tokio::time::timeout(PROMPT, event(&mut c, "backend-disconnected"))
        .await
        .expect("backend-disconnected at once");
    j.restart().await;
    event(&mut c, "backend-connected").await;
    let _ = std::fs::remove_dir_all(&dir);
}
