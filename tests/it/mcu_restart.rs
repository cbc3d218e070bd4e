//! Media through a restart of a single process (`[sessions] statefile`
//! with `[mcu] type = janus`): aiortc peers publish and subscribe through
//! a real Janus, the server binary is stopped with SIGTERM and started
//! again on the same state file, the clients resume. The new process
//! claims the Janus session of the old one, so media never stops; where
//! Janus lost it, the clients are told to renegotiate and media flows
//! again without anybody leaving the call. Runs in a network namespace
//! (see `mcu_media.rs`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::mcu_media::{answer_any_offer, publish, run_in_namespace_of, send_to, Peer};
use crate::support::janus::Janus;
use crate::support::*;

/// Media may take a while on a busy 2-core machine.
pub(crate) const MEDIA: Duration = Duration::from_secs(40);

fn run_in_namespace(test: &str) -> bool {
    run_in_namespace_of(module_path!(), test)
}

/// Waits until the node reports Janus as connected.
pub(crate) async fn wait_janus(node: &Node) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = reqwest::get(format!("{}/api/v1/serverinfo", node.http_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["sfu"]["janus"]["connected"] == true {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Janus never connected: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn all_in_call(node: &Node, nc: &FakeNextcloud, nc_ids: &[&str]) {
    let users: Vec<Value> = nc_ids
        .iter()
        .map(|n| json!({"sessionId": n, "inCall": 7}))
        .collect();
    let body = json!({"type": "incall", "incall": {"incall": 7, "changed": users, "users": users}});
    let (status, _) = signed_backend_request(&node.http_url(), &nc.url, "room1", &body).await;
    assert_eq!(status, 200);
}

/// `requestoffer` to `publisher`; the offer is answered by `peer`.
pub(crate) async fn subscribe(c: &mut Client, peer: &mut Peer, publisher: &str) -> String {
    send_to(
        c,
        "req",
        publisher,
        json!({"type": "requestoffer", "roomType": "video"}),
    )
    .await;
    let m = c
        .wait_for_within(MEDIA, |m| {
            m["type"] == "error" || m["message"]["data"]["type"] == "offer"
        })
        .await;
    answer_any_offer(c, peer, &m).await
}

/// A new connection resuming `old`'s session.
pub(crate) async fn resume(node: &Node, old: &Client) -> Client {
    let (mut c, m) = crate::support::resume(node, &old.resume_id).await;
    assert_eq!(m["hello"]["sessionid"], old.session_id.as_str(), "{m}");
    c.session_id = old.session_id.clone();
    c.resume_id = old.resume_id.clone();
    c
}

/// Stops the node with SIGTERM (clients closed with 1012, exit 0) and
/// starts it again on the same state file.
async fn restart(node: Node, clients: &mut [&mut Client]) -> Node {
    node.signal("-TERM");
    for c in clients.iter_mut() {
        loop {
            if let Err(code) = c.recv_or_close().await {
                assert_eq!(code, Some(1012));
                break;
            }
        }
    }
    let mut node = node;
    assert_eq!(node.exit_code(TIMEOUT).await, Some(0));
    node.restart().await
}

/// Reads until `pred` holds, keeping every message in `seen`.
pub(crate) async fn until(
    c: &mut Client,
    seen: &mut Vec<Value>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let m = c.recv_within(MEDIA).await;
        seen.push(m.clone());
        if pred(&m) {
            return m;
        }
    }
}

pub(crate) fn is_unshare(m: &Value) -> bool {
    m["type"] == "message" && m["message"]["data"]["type"] == "unshareScreen"
}

pub(crate) fn is_leave(m: &Value) -> bool {
    m["type"] == "event" && m["event"]["type"] == "leave"
}

/// Alice publishes, Bob subscribes, Bob decodes her media.
struct Call {
    nc: FakeNextcloud,
    node: Node,
    state: std::path::PathBuf,
    a: Client,
    b: Client,
    pa: Peer,
    pb: Peer,
}

async fn call(j: &Janus) -> Call {
    let nc = FakeNextcloud::start().await;
    let state = fresh_dir("spreed-state");
    let node = Node::start(
        &nc,
        &j.mcu_section("timeout = 10\n"),
        &[("STATE_DIRECTORY", state.to_str().unwrap())],
    )
    .await;
    wait_janus(&node).await;
    let mut a = node.client_in_room(&nc, "alice", "room1").await;
    let mut b = node.client_in_room(&nc, "bob", "room1").await;
    let (pa, pb, _) = alice_to_bob(&node, &nc, &mut a, &mut b).await;
    Call {
        nc,
        node,
        state,
        a,
        b,
        pa,
        pb,
    }
}

/// Alice (`a`) and Bob (`b`), in `room1`, are in the call (told through
/// `node`); Alice publishes, Bob subscribes to her and decodes. Returns
/// her peer, his peer and the sid of his subscription.
pub(crate) async fn alice_to_bob(
    node: &Node,
    nc: &FakeNextcloud,
    a: &mut Client,
    b: &mut Client,
) -> (Peer, Peer, String) {
    all_in_call(node, nc, &["nc-alice", "nc-bob"]).await;
    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    publish(a, &mut pa, "video", "1000").await;
    let mut pb = Peer::start(&["subscribe"]).await;
    let sid = subscribe(b, &mut pb, &a.session_id).await;
    pb.wait_frames((0, 0), 25, 25).await;
    (pa, pb, sid)
}

/// Resets the largest gap `pb` measured; the frames it decoded so far.
pub(crate) async fn reset_gap(pb: &mut Peer) -> (u64, u64) {
    pb.send(json!({"type": "reset_gap"})).await;
    assert_eq!(pb.recv().await["type"], "ok");
    pb.frames().await
}

/// Bob's (`b`) `selectStream` for `publisher`'s video pauses it at his
/// peer `pb`.
pub(crate) async fn pause_video(b: &mut Client, pb: &mut Peer, publisher: &str) {
    send_to(
        b,
        "sel",
        publisher,
        json!({"type": "selectStream", "roomType": "video", "sid": "", "payload": {"video": false}}),
    )
    .await;
    pb.assert_video_stopped(Duration::from_secs(1)).await;
}

/// Carol joins `room1` on `node`, is in the call and subscribes to
/// `publisher`, and decodes; her client and peer.
pub(crate) async fn newcomer_subscribes(
    node: &Node,
    nc: &FakeNextcloud,
    publisher: &str,
) -> (Client, Peer) {
    let mut c = node.client_in_room(nc, "carol", "room1").await;
    all_in_call(node, nc, &["nc-alice", "nc-bob", "nc-carol"]).await;
    let mut pc = Peer::start(&["subscribe"]).await;
    subscribe(&mut c, &mut pc, publisher).await;
    pc.wait_frames((0, 0), 25, 25).await;
    (c, pc)
}

/// Nobody left: no leave event among `seen`, Nextcloud told no leave.
pub(crate) fn assert_nobody_left(nc: &FakeNextcloud, seen: &[Value]) {
    assert!(!seen.iter().any(is_leave), "{seen:?}");
    let room = nc.requests("room");
    assert!(
        room.iter().all(|r| r.body["room"]["action"] != "leave"),
        "{room:?}"
    );
}

/// The publisher's client `c` (session `me`) is told to publish anew:
/// `unshareScreen` of its own video, then the room's participants with
/// it in the call (Talk then publishes again).
pub(crate) async fn told_to_publish_again(c: &mut Client, seen: &mut Vec<Value>, me: &str) {
    let m = until(c, seen, is_unshare).await;
    assert_eq!(m["message"]["sender"]["sessionid"], me, "{m}");
    assert_eq!(m["message"]["data"]["roomType"], "video", "{m}");
    let update = until(c, seen, |m| {
        m["type"] == "event"
            && m["event"]["target"] == "participants"
            && m["event"]["type"] == "update"
    })
    .await;
    let users = update["event"]["update"]["users"].as_array().unwrap();
    assert!(
        users
            .iter()
            .any(|u| u["sessionId"] == me && u["inCall"] == 7),
        "{update}"
    );
}

/// The subscriber's client `c` is told the stream of `publisher` ended
/// (its receiving PeerConnection `old` goes), then gets the offer of the
/// new publisher, answers it and decodes. Returns the `unshareScreen`,
/// the offer and the new peer.
pub(crate) async fn offered_again(
    c: &mut Client,
    seen: &mut Vec<Value>,
    publisher: &str,
    old: Peer,
) -> (Value, Value, Peer) {
    let unshare = until(c, seen, is_unshare).await;
    assert_eq!(
        unshare["message"]["sender"]["sessionid"], publisher,
        "{unshare}"
    );
    drop(old);
    let offer = until(c, seen, |m| m["message"]["data"]["type"] == "offer").await;
    assert_eq!(offer["message"]["sender"]["sessionid"], publisher);
    let mut peer = Peer::start(&["subscribe"]).await;
    answer_any_offer(c, &mut peer, &offer).await;
    peer.wait_frames((0, 0), 25, 25).await;
    (unshare, offer, peer)
}

/// A room message `from` sends reaches `to` after all that came before
/// it, and nobody left: no leave event among `seen`, Nextcloud told none.
pub(crate) async fn nobody_left_by_now(
    from: &mut Client,
    to: &mut Client,
    nc: &FakeNextcloud,
    seen: &mut Vec<Value>,
) {
    from.message_to(
        json!({"type": "room"}),
        json!({"type": "nickChanged", "after": "restart"}),
    )
    .await;
    loop {
        let m = to.recv().await;
        let done = m["type"] == "message" && m["message"]["data"]["after"] == "restart";
        seen.push(m);
        if done {
            break;
        }
    }
    assert_nobody_left(nc, seen);
}

#[tokio::test]
async fn media_goes_on_through_a_restart_that_claims_the_janus_session() {
    if !run_in_namespace("media_goes_on_through_a_restart_that_claims_the_janus_session") {
        return;
    }
    let j = Janus::start().await;
    let Call {
        nc,
        node,
        state,
        mut a,
        mut b,
        pa,
        mut pb,
    } = call(&j).await;
    let alice = a.session_id.clone();
    let before = reset_gap(&mut pb).await;

    let stopped = Instant::now();
    let node = restart(node, &mut [&mut a, &mut b]).await;
    let mut a2 = resume(&node, &a).await;
    let mut b2 = resume(&node, &b).await;
    let restarted = stopped.elapsed();
    // Bob decodes on, and never waited long for a frame.
    let after = pb.wait_frames(before, 50, 50).await;
    let gap = pb.stats().await["max_video_gap_ms"].as_u64().unwrap();
    eprintln!(
        "MEDIA GAP across the restart (claimed): largest gap between decoded video frames {gap} ms; \
         the clients were back after {} ms; frames {before:?} -> {after:?}",
        restarted.as_millis()
    );
    assert!(gap < 1000, "media stopped for {gap} ms");

    // The kept objects serve on: Bob's selectStream pauses his video,
    // and a newcomer subscribes to Alice's kept publisher.
    pause_video(&mut b2, &mut pb, &alice).await;
    let _carol = newcomer_subscribes(&node, &nc, &alice).await;

    // Nobody left, neither for the others nor for Nextcloud.
    let mut seen = Vec::new();
    nobody_left_by_now(&mut a2, &mut b2, &nc, &mut seen).await;
    drop(pa);
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test]
async fn where_janus_lost_the_session_the_clients_renegotiate_without_leaving_the_call() {
    if !run_in_namespace(
        "where_janus_lost_the_session_the_clients_renegotiate_without_leaving_the_call",
    ) {
        return;
    }
    // Janus forgets a session as soon as its WebSocket goes away.
    let j = Janus::start_reclaiming(0).await;
    let Call {
        nc,
        node,
        state,
        mut a,
        mut b,
        pa,
        pb,
    } = call(&j).await;
    let alice = a.session_id.clone();

    let stopped = Instant::now();
    let node = restart(node, &mut [&mut a, &mut b]).await;
    let mut a2 = resume(&node, &a).await;
    let mut b2 = resume(&node, &b).await;
    let mut seen = Vec::new();
    // Alice's client ends its publishing PeerConnection and, hearing the
    // participants again while in the call, publishes anew.
    told_to_publish_again(&mut a2, &mut seen, &alice).await;
    drop(pa);
    let mut pa2 = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a2, &mut pa2, "video", "2000").await;
    // Bob's client ends its receiving PeerConnection and takes the offer
    // of Alice's new publisher.
    let _pb2 = offered_again(&mut b2, &mut seen, &alice, pb).await.2;
    eprintln!(
        "MEDIA GAP across the restart (session lost, renegotiated): {} ms from SIGTERM to Bob decoding again",
        stopped.elapsed().as_millis()
    );
    nobody_left_by_now(&mut a2, &mut b2, &nc, &mut seen).await;
    let _ = std::fs::remove_dir_all(&state);
}
