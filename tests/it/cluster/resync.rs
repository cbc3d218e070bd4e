//! A process that lost messages of the others (issue 21, item 4: a NATS
//! slow consumer) resyncs the rooms it serves. Over a real nats-server with
//! a small `max_pending` and `write_deadline`: one process is frozen
//! (SIGSTOP) and flooded until the server drops its connection as a slow
//! consumer; the room changes while its connection is gone; once thawed it
//! reconnects, and its client hears what changed meanwhile.

use bytes::Bytes;
use serde_json::{json, Value};
use spreed_signaling::bus::process_subject;

use crate::support::*;

/// A `nats-server` that drops a client it cannot write to quickly:
/// (server, monitoring port).
async fn impatient_nats() -> (NatsServer, u16, std::path::PathBuf) {
    let mport = free_port();
    let dir = fresh_dir("spreed-nats");
    let conf = dir.join("nats.conf");
    std::fs::write(
        &conf,
        format!("max_pending: 1048576\nwrite_deadline: \"1s\"\nhttp_port: {mport}\n"),
    )
    .unwrap();
    let nats = NatsServer::start_with_args(&["-c", conf.to_str().unwrap()]).await;
    (nats, mport, dir)
}

/// The names of the NATS server's client connections.
async fn connection_names(mport: u16) -> Vec<String> {
    let url = format!("http://127.0.0.1:{mport}/connz?limit=1000");
    let v: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    v["connections"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn is_update(m: &Value) -> bool {
    m["type"] == "event" && m["event"]["target"] == "participants" && m["event"]["type"] == "update"
}

/// The `inCall` of the entry of `nc` in an update's `changed`.
fn changed_in_call(m: &Value, nc: &str) -> Option<i64> {
    m["event"]["update"]["changed"]
        .as_array()?
        .iter()
        .find(|u| u["nextcloudSessionId"] == nc)?["inCall"]
        .as_i64()
}

#[tokio::test]
async fn room_changes_lost_while_nats_dropped_a_slow_process_reach_its_clients_after_the_resync() {
    let (nats, mport, _dir) = impatient_nats().await;
    let nc = FakeNextcloud::start().await;
    let conf = format!("\n[nats]\nurl = {}\n", nats.url());
    let a = Node::start(&nc, &conf, &[]).await;
    let b = Node::start(&nc, &conf, &[]).await;
    let mut alice = a.client_in_room(&nc, "alice", "r").await;
    let mut dave = a.client_in_room(&nc, "dave", "r").await;
    let mut bob = b.client_in_room(&nc, "bob", "r").await;
    bob.wait_join_of(&dave.session_id).await;
    alice.wait_join_of(&bob.session_id).await;
    let pid_b = bob.session_id[..8].to_string();
    let name_b = format!("spreed-signaling {pid_b}");
    assert!(connection_names(mport).await.contains(&name_b));

    // Frozen, then flooded on its own subject until NATS drops it.
    b.signal("-STOP");
    let stopped = tokio::time::Instant::now();
    let flood = async_nats::connect(nats.url()).await.unwrap();
    let junk = Bytes::from(vec![b'x'; 64 * 1024]);
    while connection_names(mport).await.contains(&name_b) {
        assert!(
            stopped.elapsed() < TIMEOUT,
            "NATS never dropped the process"
        );
        for _ in 0..16 {
            flood
                .publish(process_subject(&pid_b), junk.clone())
                .await
                .unwrap();
        }
        flood.flush().await.unwrap();
    }
    // Meanwhile, on the other process: carol joins, dave leaves, alice
    // goes into the call (Nextcloud sends only the change).
    let carol = a.client_in_room(&nc, "carol", "r").await;
    dave.send(json!({"type": "room", "room": {"roomid": ""}}))
        .await;
    alice
        .wait_for(|m| {
            m["event"]["type"] == "leave" && m["event"]["leave"][0] == dave.session_id.as_str()
        })
        .await;
    let incall = json!({"type": "incall", "incall": {"incall": 7, "changed": [{"sessionId": "nc-alice", "inCall": 7, "participantType": 3}]}});
    let (status, _) = signed_backend_request(&a.http_url(), &nc.backend_url(), "r", &incall).await;
    assert_eq!(status, 200);
    alice
        .wait_for(|m| changed_in_call(m, "nc-alice") == Some(7))
        .await;
    let gap = stopped.elapsed();
    b.signal("-CONT");

    // Bob hears all three once his process reconnected.
    let mut seen = Vec::new();
    let (mut joined, mut left, mut in_call) = (false, false, false);
    let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
    while !(joined && left && in_call) {
        let m = match tokio::time::timeout_at(deadline, bob.recv_within(TIMEOUT * 3)).await {
            Ok(m) => m,
            Err(_) => panic!(
                "bob missed (join {joined}, leave {left}, inCall {in_call}) after a gap of {gap:?}: {seen:?}\n{}",
                b.proc.lines().join("\n")
            ),
        };
        let ev = &m["event"];
        joined |= ev["type"] == "join"
            && ev["join"].as_array().is_some_and(|j| {
                j.iter()
                    .any(|e| e["sessionid"] == carol.session_id.as_str())
            });
        left |= ev["type"] == "leave"
            && ev["leave"]
                .as_array()
                .is_some_and(|l| l.iter().any(|s| s == dave.session_id.as_str()));
        in_call |= is_update(&m) && changed_in_call(&m, "nc-alice") == Some(7);
        seen.push(m);
    }
    // Told once, and counted.
    let lines = b.proc.lines();
    let resyncs: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("resyncing its rooms"))
        .collect();
    assert_eq!(resyncs.len(), 1, "{lines:?}");
    assert!(resyncs[0].contains("reconnected to NATS"), "{}", resyncs[0]);
    let metrics = reqwest::get(format!("{}/metrics", b.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("signaling_bus_resyncs_total{reason=\"reconnected\"} 1"),
        "{metrics}"
    );
    // And bob's room messages reach the other process again.
    bob.message_to(json!({"type": "room"}), json!({"n": 1}))
        .await;
    let m = alice.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["n"], 1);
}
