//! SIGHUP (`Server::reload`, what the binary calls on it) takes the
//! `[mcu]` settings that need no new connection, as the Go server's HEAD:
//! bitrates, candidate lists and the timeout; against a real Janus.

use std::time::Duration;

use serde_json::json;
use spreed_signaling::config::Config;

use crate::mcu::{alice_and_bob_join_the_call, publish, send_to};
use crate::support::janus::{audio_offer, wait_janus, Janus, Observer};
use crate::support::*;

/// A candidate of `addr` for `to`'s video publisher, with request id `id`.
async fn candidate(c: &mut Client, id: &str, to: &str, addr: &str) {
    let text = format!("candidate:1 1 udp 2122260223 {addr} 50000 typ host");
    send_to(
        c,
        id,
        to,
        json!({"type": "candidate", "roomType": "video",
        "payload": {"candidate": {"candidate": text, "sdpMid": "0", "sdpMLineIndex": 0}}}),
    )
    .await;
}

#[tokio::test]
async fn sighup_reloads_the_mcu_bitrates_candidate_lists_and_timeout() {
    let j = Janus::start().await;
    let ts = TestServer::start_with(&j.mcu_section("maxstreambitrate = 500000\n")).await;
    wait_janus(&ts, true).await;
    let mut a = ts.client(Some("alice")).await;
    let join = a.join("room1", "nc-alice").await;
    assert_eq!(join["room"]["bandwidth"]["maxstreambitrate"], 500000);
    let me = a.session_id.clone();
    // Not blocked yet: the candidate looks for (and misses) a publisher.
    candidate(&mut a, "c1", &me, "10.1.2.3").await;
    let e = a.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["id"], "c1", "{e}");
    assert_eq!(e["error"]["code"], "client_not_found", "{e}");

    let after = j
        .mcu_section("maxstreambitrate = 300000\nblockedcandidates = 10.0.0.0/8\n")
        .replace("timeout = 3", "timeout = 1");
    let cfg = Config::parse(&config_text(&ts.nc, &after)).unwrap();
    ts.server.as_ref().unwrap().reload(&cfg);

    // The bitrate: a new join is told, a new publisher's room gets it.
    let mut b = ts.client(Some("bob")).await;
    let join = b.join("room1", "nc-bob").await;
    assert_eq!(join["room"]["bandwidth"]["maxstreambitrate"], 300000);
    let bob = b.session_id.clone();
    let m = publish(&mut b, "video", &audio_offer(), "1").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    let mut obs = Observer::connect(&j.url()).await;
    let room = obs.wait_room(&bob, "video", true).await.unwrap();
    assert_eq!(room["bitrate"], 300000);

    // The blocked list: the candidate vanishes, the next one answers first.
    candidate(&mut a, "c2", &me, "10.1.2.3").await;
    candidate(&mut a, "kept", &me, "192.0.2.7").await;
    let e = a.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["id"], "kept", "the blocked one got no answer: {e}");

    // The timeout: a requestoffer for a stream nobody publishes fails
    // after the new 1 s, not the old 3 s.
    alice_and_bob_join_the_call(&ts, &mut a).await;
    let start = tokio::time::Instant::now();
    send_to(
        &mut b,
        "r",
        &me,
        json!({"type": "requestoffer", "roomType": "video"}),
    )
    .await;
    let e = b
        .wait_for_within(Duration::from_secs(10), |m| m["type"] == "error")
        .await;
    assert_eq!(e["error"]["code"], "client_not_found", "{e}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "waited {waited:?}"
    );
    ts.stop().await;
}
