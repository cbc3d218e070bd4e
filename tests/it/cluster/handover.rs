//! Sessions that move between processes over a real nats-server, the
//! binaries as child processes: a rolling restart (SIGTERM while others
//! are alive) and a resume on another process.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Messages until the connection closes, and its close code.
pub(super) async fn until_close(c: &mut Client) -> (Vec<Value>, Option<u16>) {
    let mut seen = Vec::new();
    loop {
        match c.recv_or_close().await {
            Ok(m) => seen.push(m),
            Err(code) => return (seen, code),
        }
    }
}

pub(super) use crate::support::resume;

pub(super) fn is_leave(m: &Value) -> bool {
    m["type"] == "event" && m["event"]["type"] == "leave"
}

/// Room requests to Nextcloud that said someone left.
pub(super) fn leaves(nc: &FakeNextcloud) -> Vec<Value> {
    nc.requests("room")
        .into_iter()
        .filter(|r| r.body["room"]["action"] == "leave")
        .map(|r| r.body)
        .collect()
}

/// The log lines of every node, for failure messages.
pub(super) fn logs(n: &[Node]) -> String {
    n.iter()
        .enumerate()
        .map(|(i, node)| format!("--- node {i}\n{}", node.proc.lines().join("\n")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `n` processes on one NATS and one fake Nextcloud.
pub(super) async fn nodes(
    nats: &NatsServer,
    nc: &FakeNextcloud,
    n: usize,
    extra: &str,
) -> Vec<Node> {
    let conf = format!("{extra}\n[nats]\nurl = {}\n", nats.url());
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(Node::start(nc, &conf, &[]).await);
    }
    v
}

/// The `n` of the messages with data `{"n": ..}` in `seen`.
fn numbers(seen: &[Value]) -> Vec<i64> {
    seen.iter()
        .filter(|m| m["type"] == "message")
        .filter_map(|m| m["message"]["data"]["n"].as_i64())
        .collect()
}

#[tokio::test]
async fn sigterm_hands_the_sessions_to_the_other_processes_without_anyone_leaving() {
    let nats = NatsServer::start().await;
    let nc = FakeNextcloud::start().await;
    let mut n = nodes(&nats, &nc, 3, "").await;
    let mut alice = n[0].client_in_room(&nc, "alice", "room1").await;
    let mut dave = n[0].client_in_room(&nc, "dave", "room1").await;
    let mut bob = n[1].client_in_room(&nc, "bob", "room1").await;
    // Bob's first join event lists everybody already there.
    let j = bob.wait_join_of(&dave.session_id).await;
    assert!(j.to_string().contains(alice.session_id.as_str()), "{j}");

    n[0].signal("-TERM");
    // Closed with "service restart" (the client reconnects), no bye.
    for c in [&mut alice, &mut dave] {
        let (seen, code) = until_close(c).await;
        assert_eq!(code, Some(1012), "{seen:?}");
        assert!(seen.iter().all(|m| m["type"] != "bye"), "{seen:?}");
    }
    assert_eq!(n[0].exit_code(TIMEOUT).await, Some(0));

    // Meanwhile, a room message and one for alice alone.
    bob.message_to(json!({"type": "room"}), json!({"n": 1}))
        .await;
    bob.message_to(
        json!({"type": "session", "sessionid": alice.session_id}),
        json!({"n": 2}),
    )
    .await;
    // Both resume on the third process: one of them was handed to it, the
    // other to bob's process (claimed from there).
    let (mut alice2, hello) = resume(&n[2], &alice.resume_id).await;
    assert_eq!(
        hello["hello"]["sessionid"],
        alice.session_id.as_str(),
        "{hello}\n{}",
        logs(&n)
    );
    let (mut dave2, hello) = resume(&n[2], &dave.resume_id).await;
    assert_eq!(
        hello["hello"]["sessionid"],
        dave.session_id.as_str(),
        "{hello}\n{}",
        logs(&n)
    );
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = alice2.recv().await;
        assert!(!is_leave(&m), "{m}");
        got.extend(numbers(&[m]));
    }
    // (A room's and a session's frames travel on different subjects.)
    got.sort();
    assert_eq!(got, vec![1, 2]);
    let m = dave2.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["n"], 1, "{m}");

    // Still in the room, for everybody: a room message reaches bob, who
    // saw nobody leave.
    alice2
        .message_to(json!({"type": "room"}), json!({"n": 3}))
        .await;
    let mut seen = Vec::new();
    loop {
        let m = bob.recv().await;
        let done = numbers(std::slice::from_ref(&m)) == [3];
        seen.push(m);
        if done {
            break;
        }
    }
    assert!(!seen.iter().any(is_leave), "{seen:?}");
    // A newcomer finds both in the room.
    let mut carol = n[1].client_in_room(&nc, "carol", "room1").await;
    let j = carol.wait_join_of(&alice.session_id).await;
    assert!(j.to_string().contains(dave.session_id.as_str()), "{j}");
    // Nextcloud was told nothing.
    assert!(leaves(&nc).is_empty(), "{:?}", leaves(&nc));
}

#[tokio::test]
async fn a_handed_over_session_nobody_resumes_ends_after_resumetimeout_and_nextcloud_is_told() {
    let nats = NatsServer::start().await;
    let nc = FakeNextcloud::start().await;
    let mut n = nodes(&nats, &nc, 2, "[sessions]\nresumetimeout = 2\n").await;
    let alice = n[0].client_in_room(&nc, "alice", "room1").await;
    let mut bob = n[1].client_in_room(&nc, "bob", "room1").await;
    bob.wait_join_of(&alice.session_id).await;
    n[0].signal("-TERM");
    assert_eq!(n[0].exit_code(TIMEOUT).await, Some(0));
    // Not at once (it was taken over) ...
    let early = tokio::time::timeout(Duration::from_millis(1000), bob.wait_for(is_leave)).await;
    assert!(early.is_err(), "left at once: {early:?}");
    // ... but once nobody resumed it in time, as any session.
    let l = bob.wait_for(is_leave).await;
    assert_eq!(l["event"]["leave"], json!([alice.session_id]), "{l}");
    nc.wait_for("room", |r| {
        r["room"]["action"] == "leave" && r["room"]["sessionid"] == "nc-alice"
    })
    .await;
    drop(alice);
}

#[tokio::test]
async fn a_resume_on_another_process_misses_no_room_message_while_its_room_is_prepared() {
    let nats = NatsServer::start().await;
    let nc = FakeNextcloud::start().await;
    let n = nodes(&nats, &nc, 3, "").await;
    let mut alice = n[0].client_in_room(&nc, "alice", "room1").await;
    let mut bob = n[0].client_in_room(&nc, "bob", "room1").await;
    alice.wait_join_of(&bob.session_id).await;
    // A process that does not answer: the second process waits the whole
    // snapshot timeout (2 s) while it prepares the room.
    n[2].signal("-STOP");
    let total = 60;
    let sender = tokio::spawn(async move {
        for i in 0..total {
            bob.message_to(json!({"type": "room"}), json!({"n": i}))
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bob.message_to(json!({"type": "room"}), json!({"end": true}))
            .await;
        bob
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut alice2, hello) = resume(&n[1], &alice.resume_id).await;
    assert_eq!(
        hello["hello"]["sessionid"],
        alice.session_id.as_str(),
        "{hello}"
    );
    // What the old connection got, then the new one: every message once,
    // in order.
    let (old, _) = until_close(&mut alice).await;
    let mut got = numbers(&old);
    loop {
        let m = alice2.recv_within(Duration::from_secs(10)).await;
        if m["message"]["data"]["end"] == true {
            break;
        }
        got.extend(numbers(&[m]));
    }
    assert_eq!(got, (0..total).collect::<Vec<_>>());
    let _bob = sender.await.unwrap();
    n[2].signal("-CONT");
}

#[tokio::test]
async fn a_session_with_more_than_a_mebibyte_queued_resumes_on_another_process() {
    let nats = NatsServer::start().await;
    let nc = FakeNextcloud::start().await;
    let n = nodes(&nats, &nc, 2, "[sessions]\nresumequeuebytes = 4194304\n").await;
    let alice = n[0].client_in_room(&nc, "alice", "room1").await;
    let mut bob = n[0].client_in_room(&nc, "bob", "room1").await;
    let mut carol = n[0].client_in_room(&nc, "carol", "room1").await;
    let (sid, resume_id) = (alice.session_id.clone(), alice.resume_id.clone());
    drop(alice);
    // 1.5 MB for alice while she is away (NATS takes at most 1 MiB in one
    // message).
    let big = "x".repeat(50_000);
    for i in 0..30 {
        bob.message_to(
            json!({"type": "session", "sessionid": sid}),
            json!({"n": i, "pad": big}),
        )
        .await;
    }
    // Bob's messages are handled in order: all queued once carol has this.
    bob.message_to(
        json!({"type": "session", "sessionid": carol.session_id}),
        json!({"n": -1}),
    )
    .await;
    carol.wait_for(|m| m["type"] == "message").await;
    let (mut alice2, hello) = resume(&n[1], &resume_id).await;
    assert_eq!(hello["hello"]["sessionid"], sid.as_str(), "{hello}");
    let mut got = Vec::new();
    while got.len() < 30 {
        let m = alice2.recv().await;
        got.extend(numbers(&[m]));
    }
    assert_eq!(got, (0..30).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_process_stopped_while_nats_is_gone_still_exits() {
    let mut nats = NatsServer::start().await;
    let nc = FakeNextcloud::start().await;
    let mut n = nodes(&nats, &nc, 2, "").await;
    let mut alice = n[0].client_in_room(&nc, "alice", "room1").await;
    let bob = n[1].client_in_room(&nc, "bob", "room1").await;
    alice.wait_join_of(&bob.session_id).await;
    // NATS goes away for good; the other process is still known (for
    // 5 s), so the stopping one asks it to take alice: no answer comes.
    nats.stop();
    n[0].signal("-TERM");
    // The requests give up after their timeouts (Park 4 s) and the
    // process ends as if the peer had not answered.
    let started = tokio::time::Instant::now();
    let exit = n[0].exit_code(Duration::from_secs(20)).await;
    assert_eq!(exit, Some(0), "{}", logs(&n));
    eprintln!("exited {:?} after SIGTERM", started.elapsed());
}
