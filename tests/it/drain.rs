//! Draining on SIGUSR1 (as the Go server): the binary stops accepting
//! connections, serves the sessions already there and exits 0 when the
//! last client session is gone; internal clients do not hold it.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

fn refused(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
}

const UPGRADE: [&str; 4] = [
    "Connection: Upgrade",
    "Upgrade: websocket",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
];

#[tokio::test]
async fn sigusr1_refuses_new_connections_serves_the_sessions_there_and_exits_0_after_the_last() {
    let nc = FakeNextcloud::start().await;
    let mut node = Node::start(&nc, "", &[]).await;
    let mut alice = node.client_in_room(&nc, "alice", "room1").await;
    let mut bob = node.client_in_room(&nc, "bob", "room1").await;
    alice.wait_join_of(&bob.session_id).await;
    let (mut internal, _) = internal_client(&node.ws_url(), &[]).await;
    let mut http = KeepAlive::connect(node.port).await;
    assert_eq!(http.get("/api/v1/welcome", &[]).await.0, 200);

    node.signal("-USR1");
    node.proc.wait_line(0, |l| l.contains("draining")).await;
    eventually("new connections are refused", TIMEOUT, || {
        refused(node.port)
    })
    .await;
    // A second SIGUSR1 changes nothing.
    node.signal("-USR1");
    node.proc
        .wait_line(0, |l| l.contains("already draining"))
        .await;
    // The kept-alive connection (a load balancer's health check) is told.
    let (status, body) = http.get("/api/v1/welcome", &[]).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["draining"], true, "{body}");
    // ... and cannot open a session either.
    assert_eq!(http.get("/spreed", &UPGRADE).await.0, 503);

    // The sessions there are served: messages flow both ways.
    alice
        .message_to(
            json!({"type": "session", "sessionid": bob.session_id}),
            json!({"n": 1}),
        )
        .await;
    bob.wait_for(|m| m["type"] == "message" && m["message"]["data"]["n"] == 1)
        .await;
    bob.message_to(
        json!({"type": "session", "sessionid": alice.session_id}),
        json!({"n": 2}),
    )
    .await;
    alice
        .wait_for(|m| m["type"] == "message" && m["message"]["data"]["n"] == 2)
        .await;

    alice.send(json!({"type": "bye", "bye": {}})).await;
    alice.expect_close().await;
    bob.wait_for(|m| m["type"] == "event" && m["event"]["type"] == "leave")
        .await;
    // Bob still holds it: the internal client reaches him.
    internal
        .message_to(
            json!({"type": "session", "sessionid": bob.session_id}),
            json!({"n": 3}),
        )
        .await;
    bob.wait_for(|m| m["type"] == "message" && m["message"]["data"]["n"] == 3)
        .await;
    assert!(node.running());

    // The last client says bye: the process exits 0 although the internal
    // client is still connected.
    bob.send(json!({"type": "bye", "bye": {}})).await;
    assert_eq!(node.exit_code(TIMEOUT).await, Some(0));
    node.proc
        .wait_line(0, |l| l.contains("last client session is gone"))
        .await;
    assert_eq!(internal.expect_close().await, Some(1001));
}

#[tokio::test]
async fn a_drain_without_client_sessions_exits_at_once_and_sigterm_ends_a_drain() {
    let nc = FakeNextcloud::start().await;
    let mut node = Node::start(&nc, "", &[]).await;
    let (_internal, _) = internal_client(&node.ws_url(), &[]).await;
    node.signal("-USR1");
    assert_eq!(node.exit_code(TIMEOUT).await, Some(0));

    let mut node = Node::start(&nc, "", &[]).await;
    let mut alice = node.client_in_room(&nc, "alice", "room1").await;
    node.signal("-USR1");
    eventually("new connections are refused", TIMEOUT, || {
        refused(node.port)
    })
    .await;
    node.signal("-TERM");
    assert_eq!(node.exit_code(TIMEOUT).await, Some(0));
    assert_eq!(alice.expect_close().await, Some(1001));
}

#[tokio::test]
async fn a_client_waiting_for_its_resume_holds_the_drain_until_its_resume_timeout() {
    let nc = FakeNextcloud::start().await;
    let mut node = Node::start(&nc, "[sessions]\nresumetimeout = 1\n", &[]).await;
    let alice = node.client_in_room(&nc, "alice", "room1").await;
    let mut bob = node.client_in_room(&nc, "bob", "room1").await;
    drop(alice);
    node.signal("-USR1");
    eventually("new connections are refused", TIMEOUT, || {
        refused(node.port)
    })
    .await;
    bob.send(json!({"type": "bye", "bye": {}})).await;
    bob.expect_close().await;
    // Alice's session is still resumable; it ends after a second, and
    // Nextcloud is told, then the process exits.
    nc.wait_for("room", |r| {
        r["room"]["action"] == "leave" && r["room"]["sessionid"] == "nc-alice"
    })
    .await;
    assert_eq!(node.exit_code(Duration::from_secs(5)).await, Some(0));
    node.proc
        .wait_line(0, |l| l.contains("resume timeout"))
        .await;
}
