//! What a federation link holds when its session is saved for a restart
//! or handed to another process (`federation/saved.rs`): the messages it
//! kept while the remote server B was unreachable, the requests in its
//! channel and what B sent before the link closed go with the session;
//! nothing is lost or sent twice. And a session handed over that no
//! process took says goodbye to B at once.

use serde_json::{json, Value};

use crate::federation_restart::{
    a_with_state, clouds, cluster_conf, federated_alice, is_leave, numbered, resumed, send_n, stop,
    until,
};
use crate::support::*;

/// The `n` of each numbered message in `seen`.
fn numbers(seen: &[Value]) -> Vec<i64> {
    seen.iter()
        .filter(|m| m["type"] == "message")
        .filter_map(|m| m["message"]["data"]["n"].as_i64())
        .collect()
}

#[tokio::test]
async fn messages_kept_while_the_remote_was_unreachable_reach_it_after_a_restart() {
    let (nc_a, nc_b) = clouds().await;
    let b = TestServer::start_on(nc_b.clone(), "").await;
    let relay = Relay::start(&b.url).await;
    let (a, state) = a_with_state(&nc_a).await;
    let mut bob = b.joined_client("bob", "remotetoken").await;
    let (mut alice, remote) =
        federated_alice(&a.ws_url(), &nc_a, &nc_b, &relay.url(), &mut bob).await;

    // B becomes unreachable; alice writes to bob meanwhile.
    relay.cut();
    alice
        .wait_for(|m| m["event"]["type"] == "federation_interrupted")
        .await;
    for n in 1..=3 {
        send_n(&mut alice, &bob.session_id, n).await;
    }
    // A request A answers itself (it cannot parse it): A read the
    // messages before it.
    alice
        .send(json!({"id": "sync", "type": "message", "message": 5}))
        .await;
    let mut seen_before = vec![alice.wait_for(|m| m["id"] == "sync").await];
    let (a, seen) = stop(a, &mut alice).await;
    seen_before.extend(seen);
    relay.restore();
    let a = a.restart().await;
    let mut alice2 = resumed(&a, &alice).await;
    let seen = until(&mut alice2, |m| m["event"]["type"] == "federation_resumed").await;
    assert_eq!(seen.last().unwrap()["event"]["resumed"], true, "{seen:?}");
    let refused = |m: &Value| m["type"] == "error" && m["id"] != "sync";
    assert!(
        !seen.iter().chain(&seen_before).any(refused),
        "{seen_before:?} {seen:?}"
    );
    send_n(&mut alice2, &bob.session_id, 4).await;
    // Bob gets the messages kept across the restart once each, in order,
    // from her link's session on B, which he never saw leave.
    let bob_seen = until(&mut bob, |m| numbered(m, 4)).await;
    assert_eq!(numbers(&bob_seen), [1, 2, 3, 4], "{bob_seen:?}");
    for m in bob_seen.iter().filter(|m| m["type"] == "message") {
        assert_eq!(m["message"]["sender"]["sessionid"], remote.as_str());
    }
    assert!(!bob_seen.iter().any(is_leave), "{bob_seen:?}");
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test]
async fn a_rolling_restart_delivers_what_the_remote_sent_before_the_link_moved() {
    let nats = NatsServer::start().await;
    let (nc_a, nc_b) = clouds().await;
    let b = TestServer::start_on(nc_b.clone(), "").await;
    // A reads B slowly (the link has a client's budget): what bob sends
    // waits in the link's socket when A stops.
    let conf = format!(
        "{}[clients]\nmessagespersecond = 20\nmessageburst = 20\n",
        cluster_conf(&nats)
    );
    let a0 = Node::start(&nc_a, &conf, &[]).await;
    let a1 = Node::start(&nc_a, &conf, &[]).await;
    let mut bob = b.joined_client("bob", "remotetoken").await;
    let (mut alice, remote) = federated_alice(&a0.ws_url(), &nc_a, &nc_b, &b.url, &mut bob).await;
    for n in 1..=60 {
        send_n(&mut bob, &remote, n).await;
    }
    let mut seen = until(&mut alice, |m| numbered(m, 5)).await;
    let (_a0, until_closed) = stop(a0, &mut alice).await;
    seen.extend(until_closed);
    let mut alice2 = resumed(&a1, &alice).await;
    seen.extend(until(&mut alice2, |m| m["event"]["type"] == "federation_resumed").await);
    send_n(&mut bob, &remote, 61).await;
    seen.extend(until(&mut alice2, |m| numbered(m, 61)).await);
    // Each of bob's messages once, in order.
    assert_eq!(numbers(&seen), (1..=61).collect::<Vec<i64>>(), "{seen:?}");
    assert!(!seen.iter().any(is_leave), "{seen:?}");
    send_n(&mut alice2, &bob.session_id, 62).await;
    let bob_seen = until(&mut bob, |m| numbered(m, 62)).await;
    assert!(!bob_seen.iter().any(is_leave), "{bob_seen:?}");
}

#[tokio::test]
async fn a_federated_session_no_process_took_leaves_the_remote_room_at_once() {
    let nats = NatsServer::start().await;
    let (nc_a, nc_b) = clouds().await;
    // B would keep a silent link's session for 30 s.
    let b = TestServer::start_on(nc_b.clone(), "[sessions]\nresumetimeout = 30\n").await;
    // The only other process of A's cluster takes nothing it is handed.
    let _other = FakeProcess::start(&nats.url(), "fake-taker").await;
    let a0 = Node::start(&nc_a, &cluster_conf(&nats), &[]).await;
    a0.proc
        .wait_line(0, |l| {
            l.contains("cluster peers discovered") && l.contains("peers=1")
        })
        .await;
    let mut bob = b.joined_client("bob", "remotetoken").await;
    let (mut alice, remote) = federated_alice(&a0.ws_url(), &nc_a, &nc_b, &b.url, &mut bob).await;

    let (a0, _) = stop(a0, &mut alice).await;
    assert!(
        a0.proc
            .lines()
            .iter()
            .any(|l| l.contains("no process took the session")),
        "{}",
        a0.proc.lines().join("\n")
    );
    // Bob sees her leave now, not after B's resume timeout.
    let l = bob.wait_for(is_leave).await;
    assert_eq!(l["event"]["leave"], json!([remote]), "{l}");
    nc_b.wait_all("room", |reqs| {
        reqs.iter().any(|r| r.body["room"]["action"] == "leave")
    })
    .await;
}
