//! Media through a rolling restart (SIGTERM on one process of a cluster
//! over a real nats-server, `[mcu] type = janus`): the next process claims
//! the stopping process's Janus session and serves its publishers and
//! subscribers on, so media never stops; where it cannot, the clients
//! renegotiate without leaving the call. aiortc peers through a real
//! Janus, in a network namespace (see `mcu_media.rs`).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::mcu_media::{publish, run_in_namespace_of, Peer};
use crate::mcu_restart::{
    alice_to_bob, is_unshare, newcomer_subscribes, nobody_left_by_now, offered_again, pause_video,
    reset_gap, resume, told_to_publish_again, wait_janus,
};
use crate::support::janus::Janus;
use crate::support::*;

fn run_in_namespace(test: &str) -> bool {
    run_in_namespace_of(module_path!(), test)
}

/// `n` processes on one nats-server and one Janus, Janus connected.
async fn cluster(j: &Janus, nats: &NatsServer, nc: &FakeNextcloud, n: usize) -> Vec<Node> {
    cluster_at(j, nats, nc, &vec![j.url(); n]).await
}

/// A process on one nats-server and one Janus for each of `urls` (the
/// `[mcu] url` of each: spellings of `j`'s address).
async fn cluster_at(
    j: &Janus,
    nats: &NatsServer,
    nc: &FakeNextcloud,
    urls: &[String],
) -> Vec<Node> {
    let mut v = Vec::new();
    for url in urls {
        let mcu = j.mcu_section("timeout = 10\n").replace(&j.url(), url);
        let conf = format!("{mcu}\n[nats]\nurl = {}\n", nats.url());
        let node = Node::start(nc, &conf, &[]).await;
        wait_janus(&node).await;
        v.push(node);
    }
    v
}

/// Closed with 1012 by a SIGTERM of its process, which exits 0.
async fn stop(node: &mut Node, c: &mut Client) {
    node.signal("-TERM");
    loop {
        if let Err(code) = c.recv_or_close().await {
            assert_eq!(code, Some(1012));
            break;
        }
    }
    assert_eq!(node.exit_code(TIMEOUT).await, Some(0));
}

/// The process a session id belongs to.
fn process_of(sid: &str) -> &str {
    &sid[..8]
}

#[tokio::test]
async fn a_publisher_resuming_on_a_third_process_is_offered_again_to_its_subscribers() {
    if !run_in_namespace(
        "a_publisher_resuming_on_a_third_process_is_offered_again_to_its_subscribers",
    ) {
        return;
    }
    let j = Janus::start().await;
    let nats = NatsServer::start().await;
    let nc = FakeNextcloud::start().await;
    let mut n = cluster(&j, &nats, &nc, 3).await;
    // Alice publishes on process 0, Bob on process 1 subscribes to her;
    // Carol is on process 2.
    let mut a = n[0].client_in_room(&nc, "alice", "room1").await;
    let mut b = n[1].client_in_room(&nc, "bob", "room1").await;
    let c = n[2].client_in_room(&nc, "carol", "room1").await;
    b.wait_join_of(&a.session_id).await;
    b.wait_join_of(&c.session_id).await;
    let alice = a.session_id.clone();
    let (pa, pb, _) = alice_to_bob(&n[0], &nc, &mut a, &mut b).await;

    stop(&mut n[0], &mut a).await;
    drop(pa);
    // Alice's session went to one of the two others (the first by
    // process id); she resumes on the other one, which claims it there.
    let (p1, p2) = (process_of(&b.session_id), process_of(&c.session_id));
    let third = if p1 < p2 { &n[2] } else { &n[1] };
    let mut a2 = resume(third, &a).await;
    let mut seen = Vec::new();
    told_to_publish_again(&mut a2, &mut seen, &alice).await;
    let mut pa2 = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a2, &mut pa2, "video", "2000").await;
    // Bob is offered her new publisher, wherever she published it.
    let _pb2 = offered_again(&mut b, &mut seen, &alice, pb).await.2;
    nobody_left_by_now(&mut a2, &mut b, &nc, &mut seen).await;
}

#[tokio::test]
async fn where_the_next_process_cannot_claim_the_janus_session_the_clients_renegotiate() {
    if !run_in_namespace(
        "where_the_next_process_cannot_claim_the_janus_session_the_clients_renegotiate",
    ) {
        return;
    }
    let j = Janus::start().await;
    let nats = NatsServer::start().await;
    let nc = FakeNextcloud::start().await;
    // B names Janus otherwise: for B it is another Janus, whose sessions
    // it does not claim.
    let other = j.url().replace("127.0.0.1", "localhost");
    let mut n = cluster_at(&j, &nats, &nc, &[j.url(), other]).await;
    let (na, nb) = n.split_at_mut(1);
    let (na, nb) = (&mut na[0], &nb[0]);
    // Alice publishes on process A, Bob on process B subscribes to her
    // (his subscriber is on A's Janus session).
    let mut a = na.client_in_room(&nc, "alice", "room1").await;
    let mut b = nb.client_in_room(&nc, "bob", "room1").await;
    b.wait_join_of(&a.session_id).await;
    let alice = a.session_id.clone();
    let (pa, pb, old_sid) = alice_to_bob(na, &nc, &mut a, &mut b).await;

    let stopped = Instant::now();
    stop(na, &mut a).await;
    drop(pa);
    let mut a2 = resume(nb, &a).await;
    let mut seen = Vec::new();
    // Alice's client ends its publishing PeerConnection and, hearing the
    // participants again while in the call, publishes anew on B.
    told_to_publish_again(&mut a2, &mut seen, &alice).await;
    let mut pa2 = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a2, &mut pa2, "video", "2000").await;
    // Bob's client ends its receiving PeerConnection and takes the offer
    // of Alice's new publisher (a new sid).
    let (unshare, offer, _pb2) = offered_again(&mut b, &mut seen, &alice, pb).await;
    assert_eq!(
        unshare["message"]["data"]["sid"],
        old_sid.as_str(),
        "{unshare}"
    );
    assert_ne!(offer["message"]["data"]["sid"], old_sid.as_str(), "{offer}");
    eprintln!(
        "MEDIA GAP across the rolling restart (renegotiated): {} ms from SIGTERM to Bob decoding again",
        stopped.elapsed().as_millis()
    );
    // Nobody left, neither for the others nor for Nextcloud.
    nobody_left_by_now(&mut a2, &mut b, &nc, &mut seen).await;
}

/// How long the claim test watches the media after the SIGTERM.
const WATCHED: Duration = Duration::from_secs(4);

#[tokio::test]
async fn media_goes_on_through_a_rolling_restart_that_claims_the_janus_session() {
    if !run_in_namespace("media_goes_on_through_a_rolling_restart_that_claims_the_janus_session") {
        return;
    }
    // Janus destroys a session the moment its WebSocket goes away
    // (`reclaim_session_timeout` 0): A's media would stop at A's exit
    // unless B claimed its session before.
    let j = Janus::start_reclaiming(0).await;
    let nats = NatsServer::start().await;
    let nc = FakeNextcloud::start().await;
    let mut n = cluster(&j, &nats, &nc, 2).await;
    let (na, nb) = n.split_at_mut(1);
    let (na, nb) = (&mut na[0], &nb[0]);
    // Alice publishes on process A, Bob on process B subscribes to her
    // (his subscriber is on A's Janus session).
    let mut a = na.client_in_room(&nc, "alice", "room1").await;
    let mut b = nb.client_in_room(&nc, "bob", "room1").await;
    b.wait_join_of(&a.session_id).await;
    let alice = a.session_id.clone();
    let (pa, mut pb, _) = alice_to_bob(na, &nc, &mut a, &mut b).await;
    let before = reset_gap(&mut pb).await;

    let stopped = Instant::now();
    stop(na, &mut a).await;
    let mut a2 = resume(nb, &a).await;
    let resumed = stopped.elapsed();
    // Bob decodes on, well past A's exit, and never waited long for a
    // frame.
    tokio::time::sleep_until((stopped + WATCHED).into()).await;
    let after = pb.wait_frames(before, 50, 50).await;
    let after = pb.wait_frames(after, 25, 25).await;
    let gap = pb.stats().await["max_video_gap_ms"].as_u64().unwrap();
    eprintln!(
        "MEDIA GAP across the rolling restart (claimed): largest gap between decoded video frames {gap} ms; \
         Alice resumed after {} ms; frames {before:?} -> {after:?}",
        resumed.as_millis()
    );
    assert!(gap < 500, "media stopped for {gap} ms");

    // B serves A's objects on: Bob's selectStream pauses his video, and a
    // newcomer subscribes to Alice's kept publisher.
    pause_video(&mut b, &mut pb, &alice).await;
    let _carol = newcomer_subscribes(nb, &nc, &alice).await;

    // Nobody was told to renegotiate, nobody left (for the others or for
    // Nextcloud).
    let mut seen = Vec::new();
    nobody_left_by_now(&mut a2, &mut b, &nc, &mut seen).await;
    b.message_to(
        json!({"type": "room"}),
        json!({"type": "nickChanged", "after": "all"}),
    )
    .await;
    loop {
        let m = a2.recv().await;
        let done = m["message"]["data"]["after"] == "all";
        seen.push(m);
        if done {
            break;
        }
    }
    assert!(!seen.iter().any(is_unshare), "{seen:?}");
    drop(pa);
}

/// The id of `node`'s process (the prefix of its session ids).
async fn process_id(node: &Node, nc: &FakeNextcloud) -> String {
    let mut c = Client::connect(&node.ws_url()).await;
    c.expect_type("welcome").await;
    c.hello_v1(&nc.backend_url(), json!({"userid": "probe"}))
        .await;
    process_of(&c.session_id).to_string()
}

/// Reads `c` until its connection closes; the close code.
async fn closed(c: &mut Client) -> Option<u16> {
    loop {
        if let Err(code) = c.recv_or_close().await {
            return code;
        }
    }
}

#[tokio::test]
async fn media_goes_on_when_the_process_that_claimed_the_janus_session_stops_in_turn() {
    if !run_in_namespace(
        "media_goes_on_when_the_process_that_claimed_the_janus_session_stops_in_turn",
    ) {
        return;
    }
    let j = Janus::start_reclaiming(0).await;
    let nats = NatsServer::start().await;
    let nc = FakeNextcloud::start().await;
    let mut n = cluster(&j, &nats, &nc, 3).await;
    let mut a = n[0].client_in_room(&nc, "alice", "room1").await;
    let mut b = n[1].client_in_room(&nc, "bob", "room1").await;
    b.wait_join_of(&a.session_id).await;
    let alice = a.session_id.clone();
    let (pa, mut pb, _) = alice_to_bob(&n[0], &nc, &mut a, &mut b).await;
    let before = reset_gap(&mut pb).await;

    // Process 0 stops: the first of the others by id claims its Janus
    // session and takes Alice, who resumes there.
    let p2 = process_id(&n[2], &nc).await;
    let (first, last) = if process_of(&b.session_id) < p2.as_str() {
        (1, 2)
    } else {
        (2, 1)
    };
    stop(&mut n[0], &mut a).await;
    let mut a2 = resume(&n[first], &a).await;
    let seen_frames = pb.wait_frames(before, 25, 25).await;
    // Then that one stops too (as in a rolling restart of every process):
    // the last claims both Janus sessions; Alice (and Bob, if he was
    // there) resume on it.
    let stopped = Instant::now();
    n[first].signal("-TERM");
    assert_eq!(closed(&mut a2).await, Some(1012));
    let mut b = if first == 1 {
        assert_eq!(closed(&mut b).await, Some(1012));
        resume(&n[last], &b).await
    } else {
        b
    };
    assert_eq!(n[first].exit_code(TIMEOUT).await, Some(0));
    let mut a3 = resume(&n[last], &a).await;
    tokio::time::sleep_until((stopped + WATCHED).into()).await;
    let after = pb.wait_frames(seen_frames, 50, 50).await;
    let gap = pb.stats().await["max_video_gap_ms"].as_u64().unwrap();
    eprintln!(
        "MEDIA GAP across two rolling restarts (claimed twice): largest gap between decoded video frames {gap} ms; \
         frames {before:?} -> {after:?}"
    );
    assert!(gap < 500, "media stopped for {gap} ms");

    // The last process serves the objects on: Bob's selectStream pauses
    // his video.
    pause_video(&mut b, &mut pb, &alice).await;
    let mut seen = Vec::new();
    nobody_left_by_now(&mut a3, &mut b, &nc, &mut seen).await;
    assert!(!seen.iter().any(is_unshare), "{seen:?}");
    drop(pa);
}
