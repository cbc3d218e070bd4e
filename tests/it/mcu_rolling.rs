//! Media through a rolling restart (SIGTERM on one process of a cluster
//! over a real nats-server, `[mcu] type = janus`): the publishers and
//! subscribers on the stopping process's Janus session die with it, the
//! sessions move to the other process and their clients renegotiate
//! without leaving the call. aiortc peers through a real Janus, in a
//! network namespace (see `mcu_media.rs`).

use std::time::Instant;

use crate::mcu_media::{publish, run_in_namespace_of, Peer};
use crate::mcu_restart::{
    all_in_call, nobody_left_by_now, offered_again, resume, subscribe, told_to_publish_again,
    wait_janus,
};
use crate::support::janus::Janus;
use crate::support::*;

fn run_in_namespace(test: &str) -> bool {
    run_in_namespace_of(module_path!(), test)
}

/// `n` processes on one nats-server and one Janus, Janus connected.
async fn cluster(j: &Janus, nats: &NatsServer, nc: &FakeNextcloud, n: usize) -> Vec<Node> {
    let conf = format!(
        "{}\n[nats]\nurl = {}\n",
        j.mcu_section("timeout = 10\n"),
        nats.url()
    );
    let mut v = Vec::new();
    for _ in 0..n {
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
    all_in_call(&n[0], &nc, &["nc-alice", "nc-bob"]).await;
    let alice = a.session_id.clone();
    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a, &mut pa, "video", "1000").await;
    let mut pb = Peer::start(&["subscribe"]).await;
    subscribe(&mut b, &mut pb, &alice).await;
    pb.wait_frames((0, 0), 25, 25).await;

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
async fn a_rolling_restart_makes_the_clients_renegotiate_without_leaving_the_call() {
    if !run_in_namespace("a_rolling_restart_makes_the_clients_renegotiate_without_leaving_the_call")
    {
        return;
    }
    let j = Janus::start().await;
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
    all_in_call(na, &nc, &["nc-alice", "nc-bob"]).await;
    let alice = a.session_id.clone();
    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a, &mut pa, "video", "1000").await;
    let mut pb = Peer::start(&["subscribe"]).await;
    let old_sid = subscribe(&mut b, &mut pb, &alice).await;
    pb.wait_frames((0, 0), 25, 25).await;

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
