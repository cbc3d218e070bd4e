//! The MCU against a real Janus (Debian's `janus` 1.1.2 on loopback), with
//! hand-made offers: no media flows here (see `mcu_media.rs`), but rooms,
//! answers, permissions, validation, features and reconnects are real.

use crate::support;

use std::time::Duration;

use crate::support::janus::{
    audio_offer, audio_video_offer, janus_info, wait_janus, Janus, Observer,
};
use crate::support::{Client, TestServer};
use serde_json::{json, Value};

/// Janus and a server using it, once the server is connected to Janus.
pub(crate) async fn setup(extra: &str) -> (Janus, TestServer) {
    let j = Janus::start().await;
    let ts = TestServer::start_with(&j.mcu_section(extra)).await;
    wait_janus(&ts, true).await;
    (j, ts)
}

async fn welcome_features(ts: &TestServer) -> Vec<String> {
    let v: Value = reqwest::get(format!("{}/api/v1/welcome", ts.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

/// True when a feature list has all of the MCU's features.
fn has_mcu_features(f: &[String]) -> bool {
    ["mcu", "simulcast", "update-sdp"]
        .iter()
        .all(|x| f.iter().any(|y| y == x))
}

fn offer(to: &str, room_type: &str, sdp: &str, sid: &str) -> Value {
    json!({"to": to, "sid": sid, "roomType": room_type, "type": "offer",
           "payload": {"type": "offer", "sdp": sdp, "nick": "Alice"}, "bitrate": 0})
}

pub(crate) async fn send_to(c: &mut Client, id: &str, to: &str, data: Value) {
    c.send(json!({"id": id, "type": "message", "message": {
        "recipient": {"type": "session", "sessionid": to}, "data": data}}))
        .await;
}

/// Alice and Bob in room1, once Alice saw Bob join.
pub(crate) async fn alice_and_bob_in_room1(ts: &TestServer) -> (Client, Client) {
    let mut a = ts.client_in_room("alice", "room1").await;
    let b = ts.client_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    (a, b)
}

/// Nextcloud says that alice and bob (of room1) are in the call; alice
/// (`a`) saw the participants update.
pub(crate) async fn alice_and_bob_join_the_call(ts: &TestServer, a: &mut Client) {
    ts.backend_request(
        "room1",
        &json!({"type": "incall", "incall": {"incall": 7,
        "changed": [{"sessionId": "nc-alice", "inCall": 7}, {"sessionId": "nc-bob", "inCall": 7}],
        "users": [{"sessionId": "nc-alice", "inCall": 7}, {"sessionId": "nc-bob", "inCall": 7}]}}),
    )
    .await;
    a.wait_for(|m| m["event"]["target"] == "participants").await;
}

/// Sends an offer to one's own session and returns the answer message.
pub(crate) async fn publish(c: &mut Client, room_type: &str, sdp: &str, sid: &str) -> Value {
    let me = c.session_id.clone();
    send_to(c, "offer", &me, offer(&me, room_type, sdp, sid)).await;
    c.wait_for_within(Duration::from_secs(10), |m| {
        m["type"] == "error" || m["message"]["data"]["type"] == "answer"
    })
    .await
}

#[tokio::test]
async fn an_offer_publishes_one_room_per_stream_and_the_answer_comes_from_janus() {
    let (j, ts) = setup("").await;
    let mut a = ts.client(Some("alice")).await;
    let join = a.join("room1", "nc-alice").await;
    assert_eq!(
        join["room"]["bandwidth"],
        json!({"maxstreambitrate": 1048576, "maxscreenbitrate": 2097152})
    );
    let me = a.session_id.clone();
    let m = publish(&mut a, "video", &audio_offer(), "1700000000000").await;
    assert_eq!(m["type"], "message", "{m}");
    assert_eq!(
        m["message"]["sender"],
        json!({"type": "session", "sessionid": me, "userid": "alice"})
    );
    let d = &m["message"]["data"];
    assert_eq!(d["to"], me.as_str());
    assert_eq!(d["from"], me.as_str());
    assert_eq!(d["roomType"], "video");
    assert_eq!(d["sid"], "1700000000000");
    assert_eq!(d["payload"]["type"], "answer");
    let sdp = d["payload"]["sdp"].as_str().unwrap();
    assert!(sdp.contains("a=recvonly"), "{sdp}");
    assert!(
        sdp.contains("VideoRoom"),
        "an answer of the videoroom plugin: {sdp}"
    );

    let mut obs = Observer::connect(&j.url()).await;
    let room = obs.wait_room(&me, "video", true).await.unwrap();
    assert_eq!(room["max_publishers"], 1);
    assert_eq!(room["bitrate"], 1048576);

    // The screen gets a room of its own with the screen cap; the offer's
    // bitrate lowers it and its codecs reach Janus.
    let mut screen = offer(&me, "screen", &audio_offer(), "s1");
    screen["bitrate"] = json!(500000);
    screen["audiocodec"] = json!("opus");
    screen["videocodec"] = json!("vp9");
    screen["vp9profile"] = json!("2");
    send_to(&mut a, "o2", &me, screen).await;
    let m = a
        .wait_for(|m| m["type"] == "error" || m["message"]["data"]["roomType"] == "screen")
        .await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    let room = obs.wait_room(&me, "screen", true).await.unwrap();
    assert_eq!(room["bitrate"], 500000);
    assert_eq!(room["audiocodec"], "opus");
    assert_eq!(room["videocodec"], "vp9");
    assert_eq!(
        obs.rooms()
            .await
            .iter()
            .filter(|r| r["description"]
                .as_str()
                .is_some_and(|d| d.starts_with(me.as_str())))
            .count(),
        2
    );

    // A second offer renegotiates the same publisher: same room, same sid.
    let first = obs.room_of(&me, "video").await.unwrap();
    let m = publish(&mut a, "video", &audio_offer(), "other-sid").await;
    assert_eq!(m["message"]["data"]["sid"], "1700000000000", "{m}");
    let again = obs.room_of(&me, "video").await.unwrap();
    assert_eq!(again["room"], first["room"]);

    let metrics = ts.metrics_text().await;
    assert!(
        metrics.contains("signaling_mcu_publishers{type=\"video\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("signaling_mcu_publishers_total{type=\"screen\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("signaling_mcu_messages_total{type=\"offer\"} 3"),
        "{metrics}"
    );

    // Leaving the room closes the session's publishers: rooms gone.
    a.send(json!({"id": "leave", "type": "room", "room": {"roomid": ""}}))
        .await;
    obs.wait_room(&me, "video", false).await;
    obs.wait_room(&me, "screen", false).await;
    ts.stop().await;
}

#[tokio::test]
async fn mcu_data_is_validated_and_candidates_are_filtered() {
    let (_j, ts) = setup("blockedcandidates = 10.0.0.0/8\n").await;
    let (mut a, mut b) = alice_and_bob_in_room1(&ts).await;
    let me = a.session_id.clone();
    let bob = b.session_id.clone();

    let cases = [
        (
            json!({"type": "offer", "roomType": "foo", "payload": {}}),
            "invalid_format",
        ),
        (json!({"ping": 1}), "invalid_format"),
        (
            json!({"type": "offer", "roomType": "video", "payload": {}}),
            "invalid_sdp",
        ),
        (
            json!({"type": "answer", "roomType": "video", "payload": {"sdp": "nonsense"}}),
            "invalid_sdp",
        ),
        (
            json!({"type": "candidate", "roomType": "video", "payload": {}}),
            "no_candidate",
        ),
        (
            json!({"type": "candidate", "roomType": "video", "payload": {"candidate": "x"}}),
            "invalid_candidate",
        ),
        (
            json!({"type": "candidate", "roomType": "video", "payload": {"candidate": {"candidate": "candidate:1 1 udp"}}}),
            "invalid_candidate",
        ),
    ];
    for (i, (data, code)) in cases.iter().enumerate() {
        let id = format!("v{i}");
        send_to(&mut a, &id, &bob, data.clone()).await;
        let e = a.expect_error(code).await;
        assert_eq!(e["id"], id.as_str(), "{data}: {e}");
    }
    // String data is no MCU data: delivered.
    send_to(&mut a, "s", &bob, json!("hello bob")).await;
    let m = b.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"], "hello bob");

    // Filtered candidates (mDNS, unspecified, blocked) vanish silently even
    // without a publisher; a kept one finds no publisher.
    for addr in ["4b5c6d.local", "0.0.0.0", "10.1.2.3"] {
        let c = format!("candidate:1 1 udp 2122260223 {addr} 50000 typ host");
        send_to(
            &mut a,
            "c",
            &me,
            json!({"type": "candidate", "roomType": "video",
            "payload": {"candidate": {"candidate": c, "sdpMid": "0", "sdpMLineIndex": 0}}}),
        )
        .await;
    }
    let c = "candidate:1 1 udp 2122260223 192.0.2.7 50000 typ host";
    send_to(
        &mut a,
        "kept",
        &me,
        json!({"type": "candidate", "roomType": "video",
        "payload": {"candidate": {"candidate": c, "sdpMid": "0", "sdpMLineIndex": 0}}}),
    )
    .await;
    let e = a.recv().await;
    assert_eq!(e["id"], "kept", "the filtered ones got no answer: {e}");
    assert_eq!(e["error"]["code"], "client_not_found");

    // With a publisher, the candidate goes to Janus (no answer), and one
    // with another sid fails.
    publish(&mut a, "video", &audio_offer(), "42").await;
    send_to(
        &mut a,
        "c1",
        &me,
        json!({"type": "candidate", "roomType": "video", "sid": "42",
        "payload": {"candidate": {"candidate": c, "sdpMid": "0", "sdpMLineIndex": 0}}}),
    )
    .await;
    send_to(
        &mut a,
        "c2",
        &me,
        json!({"type": "candidate", "roomType": "video", "sid": "43",
        "payload": {"candidate": {"candidate": c, "sdpMid": "0", "sdpMLineIndex": 0}}}),
    )
    .await;
    let e = a.recv().await;
    assert_eq!(e["id"], "c2", "{e}");
    assert_eq!(e["error"]["code"], "processing_failed");
    // An SDP that parses but Janus refuses (no ICE credentials, no
    // fingerprint): the error inside Janus's event is processing_failed,
    // not silence.
    let bad = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n";
    let m = publish(&mut a, "screen", bad, "7").await;
    assert_eq!(m["error"]["code"], "processing_failed", "{m}");
    assert_eq!(m["id"], "offer");
    // An answer to a session one does not subscribe to.
    send_to(
        &mut a,
        "ans",
        &bob,
        json!({"type": "answer", "roomType": "video",
        "payload": {"type": "answer", "sdp": audio_offer()}}),
    )
    .await;
    a.expect_error("client_not_found").await;
    ts.stop().await;
}

#[tokio::test]
async fn publishing_obeys_media_permissions_and_revoking_closes_the_publisher() {
    let j = Janus::start().await;
    let nc = support::FakeNextcloud::start().await;
    {
        let mut st = nc.state.lock().unwrap();
        st.permissions.insert("nc-none".into(), vec![]);
        st.permissions
            .insert("nc-audio".into(), vec!["publish-audio".into()]);
        st.permissions.insert(
            "nc-all".into(),
            vec!["publish-media".into(), "publish-screen".into()],
        );
    }
    let ts = TestServer::start_on(nc, &j.mcu_section("")).await;
    wait_janus(&ts, true).await;
    let mut obs = Observer::connect(&j.url()).await;

    let mut none = ts.client(Some("none")).await;
    none.join("room1", "nc-none").await;
    let m = publish(&mut none, "video", &audio_offer(), "1").await;
    assert_eq!(m["error"]["code"], "not_allowed", "{m}");
    assert_eq!(m["error"]["message"], "Not allowed to publish.");
    let me = none.session_id.clone();
    send_to(
        &mut none,
        "c",
        &me,
        json!({"type": "candidate", "roomType": "video",
        "payload": {"candidate": {"candidate": "candidate:1 1 udp 1 192.0.2.1 5 typ host"}}}),
    )
    .await;
    let e = none.expect_error("not_allowed").await;
    assert_eq!(e["error"]["message"], "Not allowed to send candidate.");

    let mut audio = ts.client(Some("audio")).await;
    audio.join("room1", "nc-audio").await;
    let m = publish(&mut audio, "video", &audio_video_offer(), "1").await;
    assert_eq!(
        m["error"]["code"], "not_allowed",
        "video needs publish-video: {m}"
    );
    let m = publish(&mut audio, "screen", &audio_offer(), "1").await;
    assert_eq!(
        m["error"]["code"], "not_allowed",
        "screen needs publish-screen: {m}"
    );
    let m = publish(&mut audio, "video", &audio_offer(), "1").await;
    assert_eq!(
        m["message"]["data"]["type"], "answer",
        "audio is allowed: {m}"
    );

    let mut all = ts.client(Some("all")).await;
    all.join("room1", "nc-all").await;
    let sid = all.session_id.clone();
    let m = publish(&mut all, "video", &audio_video_offer(), "1").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    let m = publish(&mut all, "screen", &audio_offer(), "2").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    obs.wait_room(&sid, "video", true).await;

    // Nextcloud takes publish-media away, leaving audio and the screen:
    // the publisher carries video, so it closes at once; the screen stays.
    let perms = json!(["publish-audio", "publish-screen"]);
    ts.backend_request(
        "room1",
        &json!({"type": "participants", "participants": {
        "changed": [{"sessionId": "nc-all", "inCall": 7, "permissions": perms}],
        "users": [{"sessionId": "nc-all", "inCall": 7, "permissions": perms}]}}),
    )
    .await;
    obs.wait_room(&sid, "video", false).await;
    send_to(
        &mut all,
        "c",
        &sid,
        json!({"type": "candidate", "roomType": "video",
        "payload": {"candidate": {"candidate": "candidate:1 1 udp 1 192.0.2.1 5 typ host"}}}),
    )
    .await;
    let e = all.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["error"]["code"], "client_not_found", "{e}");
    assert!(obs.room_of(&sid, "screen").await.is_some());
    // unshareScreen: the screen room goes about a second later.
    send_to(
        &mut all,
        "u",
        &sid,
        json!({"type": "unshareScreen", "roomType": "screen"}),
    )
    .await;
    obs.wait_room(&sid, "screen", false).await;
    ts.stop().await;
}

#[tokio::test]
async fn requestoffer_needs_the_same_call_and_a_publisher() {
    let (_j, ts) = setup("").await;
    let (mut a, mut b) = alice_and_bob_in_room1(&ts).await;
    let bob = b.session_id.clone();
    let req = json!({"type": "requestoffer", "roomType": "video"});
    send_to(&mut a, "r1", &bob, req.clone()).await;
    let e = a.expect_error("not_allowed").await;
    assert_eq!(e["error"]["message"], "Not allowed to request offer.");
    assert_eq!(e["id"], "r1");

    alice_and_bob_join_the_call(&ts, &mut a).await;
    // In the call, but Bob publishes nothing: after the MCU timeout (3 s).
    let start = tokio::time::Instant::now();
    send_to(&mut a, "r2", &bob, req.clone()).await;
    let e = a
        .wait_for_within(Duration::from_secs(10), |m| m["type"] == "error")
        .await;
    assert_eq!(e["error"]["code"], "client_not_found", "{e}");
    assert_eq!(e["id"], "r2");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(2900), "waited {waited:?}");
    // A requestoffer to oneself is ignored; other messages still flow.
    let me = a.session_id.clone();
    send_to(&mut a, "self", &me, req).await;
    send_to(&mut a, "s", &bob, json!("after")).await;
    b.wait_for(|m| m["message"]["data"] == "after").await;
    a.expect_nothing(Duration::from_millis(300)).await;
    // The subscriber of a publisher without WebRTC: Janus answers 428
    // until the MCU timeout, then processing_failed.
    publish(&mut b, "video", &audio_offer(), "9").await;
    send_to(
        &mut a,
        "r3",
        &bob,
        json!({"type": "requestoffer", "roomType": "video"}),
    )
    .await;
    let e = a
        .wait_for_within(Duration::from_secs(10), |m| m["type"] == "error")
        .await;
    assert_eq!(e["error"]["code"], "processing_failed", "{e}");
    ts.stop().await;
}

/// A flood of `requestoffer`s for a session that publishes nothing: at
/// most 16 of one session wait for Janus at once, the rest wait their turn
/// in the background; none is lost, and the client's next messages are
/// read at once (a `sendoffer` may wait for the client's own publisher,
/// which only its next messages bring).
#[tokio::test]
async fn requestoffers_of_one_session_wait_their_turn_and_none_is_lost() {
    let (_j, ts) = setup("[mcu]\ntimeout = 2\n").await;
    let (mut a, mut b) = alice_and_bob_in_room1(&ts).await;
    alice_and_bob_join_the_call(&ts, &mut a).await;
    let bob = b.session_id.clone();
    let start = tokio::time::Instant::now();
    for i in 0..20 {
        let req = json!({"type": "requestoffer", "roomType": "video"});
        send_to(&mut a, &format!("r{i}"), &bob, req).await;
    }
    send_to(&mut a, "after", &bob, json!("after")).await;
    b.wait_for_within(Duration::from_secs(10), |m| m["message"]["data"] == "after")
        .await;
    let read_after = start.elapsed();
    assert!(
        read_after < Duration::from_millis(1500),
        "read after {read_after:?}"
    );
    let mut ids = std::collections::BTreeSet::new();
    while ids.len() < 20 {
        let e = a
            .wait_for_within(Duration::from_secs(10), |m| m["type"] == "error")
            .await;
        assert_eq!(e["error"]["code"], "client_not_found", "{e}");
        if ids.len() == 16 {
            // The first sixteen ran at once; the rest only after them.
            assert!(start.elapsed() >= Duration::from_millis(3900));
        }
        ids.insert(e["id"].as_str().unwrap().to_string());
    }
    ts.stop().await;
}

#[tokio::test]
async fn the_mcu_stays_announced_while_janus_restarts_and_a_client_of_the_outage_publishes_after_it(
) {
    let (mut j, ts) = setup("").await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let me = a.session_id.clone();
    let m = publish(&mut a, "video", &audio_offer(), "1").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");

    j.kill();
    wait_janus(&ts, false).await;
    // The features stay (as the Go server announces them from start-up
    // on): a client saying hello now is not told that there is no MCU.
    assert!(has_mcu_features(&welcome_features(&ts).await));
    let away = ts_hello_features(&ts).await;
    assert!(has_mcu_features(&away), "{away:?}");
    assert_eq!(header_features(&ts).await, away);
    // Bob says hello during the outage, with the MCU in his features.
    let mut b = ts.connect().await;
    let w = b.expect_type("welcome").await;
    assert!(
        w["welcome"]["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "mcu"),
        "{w}"
    );
    let h = b
        .hello_v1(&ts.nc.backend_url(), json!({"userid": "bob"}))
        .await;
    assert!(
        h["hello"]["server"]["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "mcu"),
        "{h}"
    );
    b.join("room1", "nc-bob").await;
    a.wait_join_of(&b.session_id).await;
    // Nothing else stalls meanwhile.
    send_to(&mut b, "x", &me, json!("still here")).await;
    a.wait_for(|m| m["message"]["data"] == "still here").await;
    // His publish while Janus is away fails at once, with its request id.
    let m = publish(&mut b, "video", &audio_offer(), "2").await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["id"], "offer", "{m}");
    assert_eq!(m["error"]["code"], "client_not_found", "{m}");

    j.restart().await;
    wait_janus(&ts, true).await;
    // The same client publishes once Janus is back.
    let bob = b.session_id.clone();
    let m = publish(&mut b, "video", &audio_offer(), "3").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    assert_eq!(m["message"]["data"]["sid"], "3", "{m}");
    let m = publish(&mut a, "video", &audio_offer(), "4").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    let mut obs = Observer::connect(&j.url()).await;
    obs.wait_room(&me, "video", true).await;
    obs.wait_room(&bob, "video", true).await;
    ts.stop().await;
}

/// `X-Spreed-Signaling-Features` of `/api/v1/welcome`, as a sorted list.
async fn header_features(ts: &TestServer) -> Vec<String> {
    let resp = reqwest::get(format!("{}/api/v1/welcome", ts.url))
        .await
        .unwrap();
    let h = resp.headers()["X-Spreed-Signaling-Features"]
        .to_str()
        .unwrap()
        .to_string();
    let mut v: Vec<String> = h.split(", ").map(str::to_string).collect();
    v.sort();
    v
}

/// A new client's hello features, sorted.
async fn ts_hello_features(ts: &TestServer) -> Vec<String> {
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    let h = c
        .hello_v1(&ts.nc.backend_url(), json!({"userid": "dave"}))
        .await;
    let mut v: Vec<String> = h["hello"]["server"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn without_janus_the_mcu_is_announced_offers_fail_with_their_id_and_messages_flow() {
    // Janus is configured but not running.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ts = TestServer::start_with(&format!(
        "[mcu]\nurl = ws://127.0.0.1:{port}\ntimeout = 1\n"
    ))
    .await;
    let f = welcome_features(&ts).await;
    assert!(has_mcu_features(&f), "{f:?}");
    assert!(f.iter().any(|x| x == "offer-codecs"), "{f:?}");
    let janus = janus_info(&ts).await;
    assert_eq!(
        janus,
        json!({"url": format!("ws://127.0.0.1:{port}/"), "connected": false})
    );
    let (mut a, mut b) = alice_and_bob_in_room1(&ts).await;
    let bob = b.session_id.clone();
    let me = a.session_id.clone();
    let m = publish(&mut a, "video", &audio_offer(), "1").await;
    assert_eq!(m["error"]["code"], "client_not_found", "{m}");
    assert_eq!(m["id"], "offer", "{m}");
    send_to(
        &mut a,
        "x",
        &bob,
        json!({"type": "chat", "text": "typed data passes"}),
    )
    .await;
    let m = b.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["text"], "typed data passes");
    assert_eq!(m["message"]["sender"]["sessionid"], me.as_str());
    ts.stop().await;
}

#[tokio::test]
async fn keepalives_hold_the_janus_session_of_an_idle_server() {
    // Janus ends sessions after 2 s without a request; the server keeps
    // its session alive (at half of Janus's session-timeout) while idle.
    let j = Janus::start_with(Some(2)).await;
    let ts = TestServer::start_with(&j.mcu_section("")).await;
    wait_janus(&ts, true).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    // Idle for three session timeouts (the behaviour under test is time).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let m = publish(&mut a, "video", &audio_offer(), "1").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    assert_eq!(janus_info(&ts).await["connected"], true);
    ts.stop().await;
}

#[tokio::test]
async fn serverinfo_and_stats_report_janus_in_the_go_servers_shapes() {
    let (j, ts) = setup("").await;
    let info = janus_info(&ts).await;
    assert_eq!(info["url"], format!("{}/", j.url()), "{info}");
    assert_eq!(info["connected"], true, "{info}");
    assert_eq!(info["name"], "Janus WebRTC Server", "{info}");
    assert!(
        info["version"].as_str().unwrap().starts_with("1."),
        "{info}"
    );
    assert!(info["author"].is_string(), "{info}");
    assert_eq!(info["datachannels"], true, "{info}");
    assert!(info["fulltrickle"].is_boolean(), "{info}");
    assert!(info["ipv6"].is_boolean(), "{info}");
    assert_eq!(
        info["videoroom"]["name"], "JANUS VideoRoom plugin",
        "{info}"
    );
    assert!(info["videoroom"]["version"].is_string(), "{info}");

    let stats = || async {
        let v: Value = reqwest::get(format!("{}/api/v1/stats", ts.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v
    };
    let v = stats().await;
    let mcu = &v["mcu"];
    assert_eq!(mcu["url"], format!("{}/", j.url()), "{v}");
    assert_eq!(mcu["connected"], true, "{v}");
    assert_eq!(mcu["publishers"], 0, "{v}");
    assert_eq!(mcu["clients"], 0, "{v}");
    let up = mcu["uptime"].as_str().unwrap();
    assert!(up.ends_with('Z') && up.len() == 24, "RFC 3339: {up}");
    assert_eq!(v["sessions"], 0, "{v}");
    assert_eq!(v["rooms"], 0, "{v}");

    let (mut a, _b) = alice_and_bob_in_room1(&ts).await;
    let m = publish(&mut a, "video", &audio_offer(), "1").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    let v = stats().await;
    assert_eq!(v["sessions"], 2, "{v}");
    assert_eq!(v["rooms"], 1, "{v}");
    assert_eq!(v["mcu"]["publishers"], 1, "{v}");
    assert_eq!(v["mcu"]["clients"], 1, "{v}");
    ts.stop().await;
}

#[tokio::test]
async fn a_requestoffer_to_a_session_of_another_process_is_answered_through_its_process() {
    let j = Janus::start().await;
    let nats = support::NatsServer::start().await;
    let nc = support::FakeNextcloud::start().await;
    let conf = format!("{}[nats]\nurl = {}\n", j.mcu_section(""), nats.url());
    let s1 = TestServer::start_on(nc.clone(), &conf).await;
    let s2 = TestServer::start_on(nc, &conf).await;
    for s in [&s1, &s2] {
        let hub = s.server.as_ref().unwrap().hub.clone();
        support::eventually(
            "the processes see each other",
            Duration::from_secs(5),
            || hub.known_processes() == 1,
        )
        .await;
        wait_janus(s, true).await;
    }
    let mut a = s1.client_in_room("alice", "room1").await;
    let mut b = s2.client_in_room("bob", "room1").await;
    b.wait_join_of(&a.session_id).await;
    let alice = a.session_id.clone();
    // Not in the call yet: refused by Bob's process.
    send_to(
        &mut b,
        "r1",
        &alice,
        json!({"type": "requestoffer", "roomType": "video"}),
    )
    .await;
    let e = b.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["error"]["code"], "not_allowed");
    assert_eq!(e["id"], "r1");

    s1.backend_request(
        "room1",
        &json!({"type": "incall", "incall": {"incall": 7,
        "changed": [{"sessionId": "nc-alice", "inCall": 7}, {"sessionId": "nc-bob", "inCall": 7}],
        "users": [{"sessionId": "nc-alice", "inCall": 7}, {"sessionId": "nc-bob", "inCall": 7}]}}),
    )
    .await;
    b.wait_for(|m| m["event"]["target"] == "participants").await;
    // Alice publishes (no media flows with the hand-made offer): Janus
    // refuses the subscriber join until her PeerConnection is up, so after
    // the MCU timeout Bob hears processing_failed with his request id, from
    // Alice's process.
    let m = publish(&mut a, "video", &audio_offer(), "1").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    send_to(
        &mut b,
        "r2",
        &alice,
        json!({"type": "requestoffer", "roomType": "video"}),
    )
    .await;
    let e = b
        .wait_for_within(Duration::from_secs(10), |m| m["type"] == "error")
        .await;
    assert_eq!(e["id"], "r2");
    assert_eq!(e["error"]["code"], "processing_failed", "{e}");
    let hub1 = s1.server.as_ref().unwrap().hub.clone();
    assert!(
        hub1.metrics
            .mcu
            .messages_total
            .with_label_values(&["requestoffer"])
            .get()
            == 0,
        "counted where the client sent it"
    );
    let hub2 = s2.server.as_ref().unwrap().hub.clone();
    assert_eq!(
        hub2.metrics
            .mcu
            .messages_total
            .with_label_values(&["requestoffer"])
            .get(),
        2
    );
    // An answer for a subscriber that does not exist: client_not_found.
    send_to(
        &mut b,
        "ans",
        &alice,
        json!({"type": "answer", "roomType": "video",
        "payload": {"type": "answer", "sdp": audio_offer()}}),
    )
    .await;
    let e = b.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["id"], "ans");
    assert_eq!(e["error"]["code"], "client_not_found");
    s2.stop().await;
    s1.stop().await;
}

#[tokio::test]
async fn leaving_the_call_or_ending_the_session_closes_its_publishers() {
    let (j, ts) = setup("").await;
    let mut obs = Observer::connect(&j.url()).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    let (alice, bob) = (a.session_id.clone(), b.session_id.clone());
    let in_call = |flags: u64| {
        json!({"type": "incall", "incall": {"incall": flags,
            "changed": [{"sessionId": "nc-alice", "inCall": flags}],
            "users": [{"sessionId": "nc-alice", "inCall": flags}, {"sessionId": "nc-bob", "inCall": 7}]}})
    };
    ts.backend_request("room1", &in_call(7)).await;
    a.wait_for(|m| m["event"]["target"] == "participants").await;
    let m = publish(&mut a, "video", &audio_offer(), "1").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    let m = publish(&mut b, "video", &audio_offer(), "2").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    obs.wait_room(&alice, "video", true).await;
    // Alice leaves the call (still in the room): her room goes, Bob's stays.
    ts.backend_request("room1", &in_call(0)).await;
    obs.wait_room(&alice, "video", false).await;
    assert!(obs.room_of(&bob, "video").await.is_some());
    // Bob says bye: his room goes.
    b.send(json!({"id": "bye", "type": "bye", "bye": {}})).await;
    obs.wait_room(&bob, "video", false).await;
    ts.stop().await;
}

#[tokio::test]
async fn the_backend_bitrate_limits_lower_the_rooms_and_the_join_bandwidth() {
    // `[nc1] maxstreambitrate` (the section before `[mcu]`) is below the
    // MCU's; the screen limit comes from `[mcu]` alone.
    let j = Janus::start().await;
    let ts = TestServer::start_with(&format!(
        "maxstreambitrate = 300000\n{}maxstreambitrate = 500000\n",
        j.mcu_section("")
    ))
    .await;
    wait_janus(&ts, true).await;
    let mut a = ts.client(Some("alice")).await;
    let join = a.join("room1", "nc-alice").await;
    assert_eq!(
        join["room"]["bandwidth"],
        json!({"maxstreambitrate": 300000, "maxscreenbitrate": 2097152})
    );
    let me = a.session_id.clone();
    let m = publish(&mut a, "video", &audio_offer(), "1").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    let mut obs = Observer::connect(&j.url()).await;
    let room = obs.wait_room(&me, "video", true).await.unwrap();
    assert_eq!(room["bitrate"], 300000);
    ts.stop().await;

    // Without an MCU the backend's limit alone is announced; with no limit
    // at all there is no bandwidth.
    let ts = TestServer::start_with("maxscreenbitrate = 400000\n").await;
    let mut a = ts.client(Some("alice")).await;
    let join = a.join("room1", "nc-alice").await;
    assert_eq!(
        join["room"]["bandwidth"],
        json!({"maxstreambitrate": 0, "maxscreenbitrate": 400000})
    );
    ts.stop().await;
    let ts = TestServer::start().await;
    let mut a = ts.client(Some("alice")).await;
    let join = a.join("room1", "nc-alice").await;
    assert!(join["room"].get("bandwidth").is_none(), "{join}");
    ts.stop().await;
}

/// The MCU messages of a session have a budget of their own
/// (`[clients] mcurequestspersecond` / `mcurequestburst`): plain messages
/// do not use it; past its burst every MCU message is still carried out
/// (and answered with its id), but the session is read more slowly.
#[tokio::test]
async fn mcu_messages_have_their_own_budget() {
    // Janus is configured but not running.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ts = TestServer::start_with(&format!(
        "[clients]\nmcurequestspersecond = 5\nmcurequestburst = 5\n\
         [mcu]\nurl = ws://127.0.0.1:{port}\ntimeout = 1\n"
    ))
    .await;
    let (mut a, mut b) = alice_and_bob_in_room1(&ts).await;
    let bob = b.session_id.clone();
    // Twenty plain messages: the MCU budget is not touched.
    for i in 0..20 {
        send_to(
            &mut a,
            &format!("p{i}"),
            &bob,
            json!({"type": "chat", "n": i}),
        )
        .await;
    }
    b.wait_for(|m| m["message"]["data"]["n"] == 19).await;
    assert_eq!(crate::frames::read_pauses(&ts).await, 0);
    // Fifteen requestoffers (bob is not in the call: each is refused at
    // once): five within the burst, ten at five a second.
    let start = tokio::time::Instant::now();
    for i in 0..15 {
        let data = json!({"type": "requestoffer", "roomType": "video"});
        send_to(&mut a, &format!("r{i}"), &bob, data).await;
    }
    send_to(&mut a, "after", &bob, json!("after")).await;
    b.wait_for_within(Duration::from_secs(10), |m| m["message"]["data"] == "after")
        .await;
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(1800), "read after {took:?}");
    assert!(crate::frames::read_pauses(&ts).await >= 10);
    // None lost: each was answered with its id.
    let mut ids = std::collections::BTreeSet::new();
    while ids.len() < 15 {
        let e = a.wait_for(|m| m["type"] == "error").await;
        assert_eq!(e["error"]["code"], "not_allowed", "{e}");
        ids.insert(e["id"].as_str().unwrap().to_string());
    }
    ts.stop().await;
}

/// A `requestoffer` never reaches a session of another backend: not with
/// `[app] allowsubscribeany` (which only turns off the same-call check),
/// not from an internal client.
#[tokio::test]
async fn requestoffer_never_crosses_backends() {
    let j = Janus::start().await;
    let nc1 = support::FakeNextcloud::start().await;
    let nc2 = support::FakeNextcloud::start().await;
    let extra = format!(
        "[app]\nallowsubscribeany = true\n[nc2]\nurl = {}\nsecret = {}\n{}",
        nc2.url,
        support::SECRET,
        j.mcu_section("")
    );
    let text = support::config_text(&nc1, &extra).replace("backends = nc1", "backends = nc1, nc2");
    let cfg = spreed_signaling::config::Config::parse(&text).unwrap();
    let ts = TestServer::start_config(nc1, cfg).await;
    wait_janus(&ts, true).await;
    // Alice publishes on backend 1.
    let mut a = ts.client_in_room("alice", "room1").await;
    let answer = publish(&mut a, "video", &audio_offer(), "1").await;
    assert_eq!(answer["message"]["data"]["type"], "answer", "{answer}");
    let alice = a.session_id.clone();
    let req = json!({"type": "requestoffer", "roomType": "video"});
    // Mallory of backend 2 asks for her stream.
    let mut m = support::Client::connect(&ts.ws_url()).await;
    m.expect_type("welcome").await;
    m.hello_v1(&nc2.backend_url(), json!({"userid": "mallory"}))
        .await;
    send_to(&mut m, "r1", &alice, req.clone()).await;
    let e = m
        .wait_for_within(Duration::from_secs(10), |m| {
            m["type"] == "error" || m["message"]["data"]["type"] == "offer"
        })
        .await;
    assert_eq!(e["error"]["code"], "not_allowed", "{e}");
    assert_eq!(e["id"], "r1");
    // An internal client of backend 2 neither.
    let mut i = support::Client::connect(&ts.ws_url()).await;
    i.expect_type("welcome").await;
    let mut hello = support::internal_hello("0123456789012345678901234567890123456789");
    hello["hello"]["auth"]["params"]["backend"] = json!(format!("{}/", nc2.url));
    i.send(hello).await;
    i.expect_type("hello").await;
    send_to(&mut i, "r2", &alice, req.clone()).await;
    let e = i
        .wait_for_within(Duration::from_secs(10), |m| {
            m["type"] == "error" || m["message"]["data"]["type"] == "offer"
        })
        .await;
    assert_eq!(e["error"]["code"], "not_allowed", "{e}");
    assert_eq!(e["id"], "r2");
    // Bob of backend 1, not in the call, may (allowsubscribeany): the
    // check refuses only the other backend.
    let mut b = ts.client_in_room("bob", "room1").await;
    send_to(&mut b, "r3", &alice, req).await;
    let o = b
        .wait_for_within(Duration::from_secs(10), |m| {
            m["type"] == "error" || m["message"]["data"]["type"] == "offer"
        })
        .await;
    assert_ne!(o["error"]["code"], "not_allowed", "{o}");
    ts.stop().await;
}
