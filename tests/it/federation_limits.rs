//! What a federated join may cost this server: links to remote signaling
//! servers that stop reading, where the server agrees to dial, and how
//! long a name lookup may take. The remote servers are fakes on loopback
//! (`support::remote`).

use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

/// Dialling loopback over plain ws:// is allowed for these tests.
const OPEN: &str = "[federation]\ntimeout = 2\nallowips = 127.0.0.1, ::1\nallowhttp = true\n";

fn federation(signaling: &str) -> Value {
    json!({"signaling": signaling, "url": "https://remote.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend", "roomid": "remotetoken", "token": "a.b.c"})
}

fn join(signaling: &str) -> Value {
    json!({"id": "7", "type": "room", "room": {"roomid": "localtoken", "sessionid": "nc-alice", "federation": federation(signaling)}})
}

/// A remote that stops reading after the handshake does not keep the
/// link (its socket, its buffers, its task) once the session ended: the
/// write stuck towards it gives up with the session, and the socket is
/// closed within the `[federation] timeout` bound.
#[tokio::test]
async fn a_remote_that_stops_reading_does_not_keep_the_link() {
    let extra = format!("{OPEN}[clients]\nbytespersecond = 268435456\nbyteburst = 268435456\n");
    let a = TestServer::start_with(&extra).await;
    let mut remote = FakeRemote::start("127.0.0.1", true).await;
    let mut alice = a.client(Some("alice")).await;
    alice.send(join(&remote.url)).await;
    let r = alice
        .wait_for(|m| m["type"] == "room" || m["type"] == "error")
        .await;
    assert_eq!(r["room"]["roomid"], "localtoken", "{r}");
    // The remote stops reading this connection (it keeps it open).
    let (peer, stalled) = remote.joined.recv().await.unwrap();
    assert!(tcp_socket_held(peer, remote.addr));
    // Flood until the link's queue is full: its writes are stuck.
    let pad = "x".repeat(60_000);
    let mut refused = None;
    for i in 0..1000 {
        alice.send(json!({"id": format!("m{i}"), "type": "message", "message": {"recipient": {"type": "session", "sessionid": "someone"}, "data": {"pad": pad}}})).await;
        if let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) =
            tokio::time::timeout(
                Duration::from_millis(1),
                futures_util::StreamExt::next(&mut alice.ws),
            )
            .await
        {
            let m: Value = serde_json::from_str(t.as_str()).unwrap();
            if m["type"] == "error" {
                refused = Some(m);
                break;
            }
        }
    }
    let refused = refused.expect("the link's queue is bounded");
    assert_eq!(refused["error"]["code"], "too_many_requests", "{refused}");
    assert!(
        refused["id"].as_str().unwrap().starts_with('m'),
        "{refused}"
    );
    // The session ends.
    alice.send(json!({"type": "bye", "bye": {}})).await;
    let hub = a.server.as_ref().unwrap().hub.clone();
    eventually(
        "the link's socket is closed",
        Duration::from_secs(5),
        || !tcp_socket_held(peer, remote.addr),
    )
    .await;
    eventually("no live link is left", Duration::from_secs(5), || {
        hub.federation_links() == 0
    })
    .await;
    // The remote, reading again, sees the end of the connection.
    let mut stalled = stalled;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut stalled).await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the remote saw the connection end");
    a.stop().await;
}

/// A remote that drops the link right after each handshake is dialled
/// again with a growing delay (100 ms doubling), not in a tight loop.
#[tokio::test]
async fn links_that_break_right_after_the_handshake_back_off() {
    let a = TestServer::start_with(OPEN).await;
    let mut remote = FakeRemote::start("127.0.0.1", false).await;
    let mut alice = a.client(Some("alice")).await;
    alice.send(join(&remote.url)).await;
    let r = alice
        .wait_for(|m| m["type"] == "room" || m["type"] == "error")
        .await;
    assert_eq!(r["room"]["roomid"], "localtoken", "{r}");
    let started = tokio::time::Instant::now();
    let accepts = remote.accepts.clone();
    // Every connection (the first and each resume) is dropped at once.
    tokio::spawn(async move { while remote.joined.recv().await.is_some() {} });
    alice
        .wait_for(|m| m["event"]["type"] == "federation_interrupted")
        .await;
    tokio::time::sleep_until(started + Duration::from_secs(3)).await;
    // Backoff 100, 200, 400, 800, 1600 ms: at most six dials in three
    // seconds (without it, hundreds).
    let n = accepts.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=6).contains(&n), "{n} dials in 3 s");
    a.stop().await;
}
