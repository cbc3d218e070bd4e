//! Subjects by audience (issue 21, item 1), measured from the NATS
//! server's side (`/connz` of its monitoring port): a process receives only
//! the traffic of its rooms, sessions and users.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::{cluster_on, stop_all};
use crate::support::*;

/// A `nats-server` with its monitoring port: (server, monitoring port).
async fn monitored_nats() -> (NatsServer, u16) {
    let mport = free_port();
    let nats = NatsServer::start_with_args(&["-m", &mport.to_string()]).await;
    (nats, mport)
}

/// `/connz?subs=1` of the NATS server: its client connections.
async fn connz(mport: u16) -> Vec<Value> {
    let url = format!("http://127.0.0.1:{mport}/connz?subs=1&limit=1000");
    let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    v["connections"].as_array().cloned().unwrap_or_default()
}

/// What the NATS server sent the connection of a process (bytes) and the
/// subjects it subscribed to.
async fn received(mport: u16, ts: &TestServer) -> (u64, Vec<String>) {
    let name = format!(
        "spreed-signaling {}",
        ts.server.as_ref().unwrap().hub.process_id()
    );
    let conns = connz(mport).await;
    let c = conns
        .iter()
        .find(|c| c["name"] == name.as_str())
        .unwrap_or_else(|| panic!("no NATS connection named {name}: {conns:?}"));
    let subs = c["subscriptions_list"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (c["out_bytes"].as_u64().unwrap(), subs)
}

#[tokio::test]
async fn a_process_without_members_of_a_room_receives_none_of_its_traffic() {
    let (nats, mport) = monitored_nats().await;
    let s = cluster_on(&nats, 3, "").await;
    let mut a = s[0].client_in_room("alice", "busy").await;
    let mut b = s[1].client_in_room("bob", "busy").await;
    let mut c = s[2].client_in_room("carol", "quiet").await;
    a.wait_join_of(&b.session_id).await;
    b.wait_join_of(&a.session_id).await;
    // The backend is `nc1` in the test servers' configuration.
    let busy_here = spreed_signaling::bus::room_subject("nc1", "busy");
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for ts in &s {
            v.push(received(mport, ts).await.0);
        }
        v
    };
    const N: usize = 300;
    let pad = "x".repeat(2048);
    for seq in 0..N {
        a.message_to(json!({"type": "room"}), json!({"seq": seq, "pad": pad}))
            .await;
    }
    for seq in 0..N {
        let m = b.wait_for(|m| m["type"] == "message").await;
        assert_eq!(m["message"]["data"]["seq"], seq);
    }
    // What a process of the room got: at least the room's bytes.
    let (b_after, b_subs) = received(mport, &s[1]).await;
    let (c_after, c_subs) = received(mport, &s[2]).await;
    let room_bytes = b_after - before[1];
    let other = c_after - before[2];
    eprintln!(
        "{N} room messages of 2 KB: process with a member received {room_bytes} bytes, \
         process without {other} bytes"
    );
    assert!(room_bytes >= (N * 2048) as u64);
    assert!(
        other * 100 < room_bytes,
        "a process without members got {other} of {room_bytes} bytes"
    );
    assert!(b_subs.contains(&busy_here), "{b_subs:?}");
    assert!(!c_subs.contains(&busy_here), "{c_subs:?}");
    // Leaving unsubscribes.
    b.send(json!({"type": "room", "room": {"roomid": ""}}))
        .await;
    a.wait_for(|m| m["event"]["type"] == "leave").await;
    let mut gone = false;
    for _ in 0..100 {
        if !received(mport, &s[1]).await.1.contains(&busy_here) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        gone,
        "the room's subject is unsubscribed once nobody is in it"
    );
    c.send(json!({"type": "room", "room": {"roomid": ""}}))
        .await;
    stop_all(s).await;
}

#[tokio::test]
async fn a_join_while_another_process_floods_the_room_misses_nothing_after_its_answer() {
    let (nats, _mport) = monitored_nats().await;
    let s = cluster_on(&nats, 2, "").await;
    let mut a = s[0].client_in_room("alice", "r").await;
    a.wait_join_of(&a.session_id.clone()).await;
    let sent = Arc::new(AtomicUsize::new(0));
    let count = sent.clone();
    let flood = tokio::spawn(async move {
        for seq in 0..3000usize {
            a.message_to(json!({"type": "room"}), json!({"seq": seq}))
                .await;
            count.store(seq + 1, Ordering::SeqCst);
            if seq % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        a
    });
    // Bob's process has no member of the room yet: its first join
    // subscribes. Every message sent after the join was answered arrives.
    let mut b = s[1].client(Some("bob")).await;
    b.join("r", "nc-bob").await;
    let from = sent.load(Ordering::SeqCst);
    assert!(from < 2900, "the flood ended before the join");
    let mut next: Option<u64> = None;
    loop {
        let m = b.wait_for(|m| m["type"] == "message").await;
        let seq = m["message"]["data"]["seq"].as_u64().unwrap();
        if let Some(n) = next {
            assert_eq!(seq, n, "a room message was lost after the join");
        } else {
            assert!(seq <= from as u64, "messages {from}..{seq} were lost");
        }
        next = Some(seq + 1);
        if seq == 2999 {
            break;
        }
    }
    flood.await.unwrap();
    stop_all(s).await;
}
