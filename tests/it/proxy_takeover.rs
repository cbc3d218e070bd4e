//! A proxy goes away during a call (our server, two of our proxies, each
//! with its own Janus, real media in a network namespace): the publisher
//! that was on it publishes again on the other proxy, and its subscribers
//! are offered the moved stream by the server (an `offer` with a new sid,
//! as Talk takes it), without asking and without leaving the call.

use std::time::Duration;

use serde_json::Value;

use crate::mcu_media::{
    all_in_call, answer_any_offer, publish, run_in_namespace_of, subscribe_any, Peer,
};
use crate::support::proxies::{server_on_proxies, wait_proxy};
use crate::support::proxy_procs::{rsa_pair, OurProxy};
use crate::support::{fresh_dir, Client};

/// How long after the publisher's new answer its subscribers must decode
/// its media again (offer pushed, answered, ICE/DTLS, first frames).
const BOUND: Duration = Duration::from_secs(20);

/// Waits for an offer from `publisher` that this client did not ask for.
async fn pushed_offer(c: &mut Client, publisher: &str, old_sid: &str) -> Value {
    let m = c
        .wait_for_within(BOUND, |m| {
            m["type"] == "error"
                || (m["message"]["data"]["type"] == "offer"
                    && m["message"]["sender"]["sessionid"] == publisher)
        })
        .await;
    assert_eq!(m["message"]["data"]["type"], "offer", "{m}");
    assert_eq!(m["message"]["data"]["roomType"], "video", "{m}");
    assert_ne!(
        m["message"]["data"]["sid"], old_sid,
        "a new subscriber: {m}"
    );
    m
}

#[tokio::test]
async fn a_publisher_moves_to_the_other_proxy_and_its_subscribers_get_its_media_again() {
    const NAME: &str =
        "a_publisher_moves_to_the_other_proxy_and_its_subscribers_get_its_media_again";
    if !run_in_namespace_of(module_path!(), NAME) {
        return;
    }
    let dir = fresh_dir("proxy-takeover");
    let (private, public) = rsa_pair(&dir, "server1");
    let p1 = OurProxy::with_janus(&dir, &public).await;
    let p2 = OurProxy::with_janus(&dir, &public).await;
    let ts = server_on_proxies(&[p1.base(), p2.base()], &private).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    let mut c = ts.client_in_room("carol", "room1").await;
    all_in_call(&ts, &["nc-alice", "nc-bob", "nc-carol"]).await;
    let alice = a.session_id.clone();
    // Alice publishes on the first proxy (loads tie), Bob and Carol
    // receive her.
    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a, &mut pa, "video", "1").await;
    wait_proxy(&ts.url, &p1.base(), Duration::from_secs(5), |d| {
        d["publishers"] == 1
    })
    .await;
    let mut old = Vec::new();
    for c in [&mut b, &mut c] {
        let mut peer = Peer::start(&["subscribe"]).await;
        let sid = subscribe_any(c, &mut peer, &alice, "video", "").await;
        peer.wait_frames((0, 0), 10, 10).await;
        old.push((peer, sid));
    }
    // The first proxy and its Janus go.
    let p1_base = p1.base();
    drop(p1);
    wait_proxy(&ts.url, &p1_base, Duration::from_secs(10), |d| {
        d["connected"] == false
    })
    .await;
    // Alice's client offers again (Talk does once its PeerConnection
    // fails) on the same session: it lands on the second proxy.
    let mut pa2 = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a, &mut pa2, "video", "2").await;
    let published = tokio::time::Instant::now();
    wait_proxy(&ts.url, &p2.base(), Duration::from_secs(5), |d| {
        d["publishers"] == 1
    })
    .await;
    // Bob and Carol are offered her stream again without asking; each
    // answers with a new peer (Talk ends the stale one) and decodes her.
    let mut new = Vec::new();
    for (c, (stale, old_sid)) in [&mut b, &mut c].into_iter().zip(old) {
        let m = pushed_offer(c, &alice, &old_sid).await;
        let mut peer = Peer::start(&["subscribe"]).await;
        answer_any_offer(c, &mut peer, &m).await;
        peer.wait_frames((0, 0), 10, 10).await;
        drop(stale);
        new.push(peer);
    }
    let took = published.elapsed();
    eprintln!("subscribers decode the moved publisher {took:?} after its answer");
    assert!(took < BOUND, "media back only after {took:?}");
    // Nobody left: all three are still in the room and the call.
    let stats: Value = reqwest::get(format!("{}/api/v1/stats", ts.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["mcu"]["publishers"], 1, "{stats}");
    assert_eq!(stats["mcu"]["clients"], 3, "{stats}");
    drop((pa, pa2, new, p2));
    let _ = std::fs::remove_dir_all(&dir);
}
