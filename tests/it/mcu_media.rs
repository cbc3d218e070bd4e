//! Real media through Janus: aiortc peers (`tests/mcu_peer.py`) publish
//! and subscribe via the server, and the subscribers count the audio and
//! video frames they decode (and report their size). For simulcast, which
//! aiortc cannot send, a headless chromium (`tests/mcu_chrome_peer.py`)
//! publishes.
//!
//! Janus gathers no ICE candidates on loopback, so each test runs in a
//! network namespace of its own: the test re-runs itself under `unshare -n`
//! with a veth pair (10.99.0.1/2) and a default route, and starts Janus,
//! the fake Nextcloud, the server and the peers in there. Where namespaces
//! are not available the tests say so and skip.

use crate::support;

use std::process::Stdio;
use std::time::Duration;

use crate::support::janus::{Janus, Observer};
use crate::support::{Client, TestServer};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const INSIDE: &str = "SPREED_MCU_NETNS";
/// Media may take a while on a busy 2-core machine.
const MEDIA: Duration = Duration::from_secs(40);

/// True when the caller should run the test body here (inside the
/// namespace); otherwise the test was run in a namespace child (and its
/// result asserted) or skipped.
fn run_in_namespace(test: &str) -> bool {
    run_in_namespace_of(module_path!(), test)
}

/// [`run_in_namespace`] for a test of another module (`module_path!()`).
pub(crate) fn run_in_namespace_of(module: &str, test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        setup_network();
        return true;
    }
    let usable = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!("SKIPPED {test}: network namespaces are not available here (`unshare -n` failed; run as root or with CAP_SYS_ADMIN)");
        return false;
    }
    if !support::janus::available()
        || !std::process::Command::new("/usr/bin/python3")
            .args(["-c", "import aiortc"])
            .status()
            .is_ok_and(|s| s.success())
    {
        panic!("janus and python3-aiortc must be installed (scripts/test installs them)");
    }
    let exe = std::env::current_exe().unwrap();
    // The test's full name in this binary: its module path without the
    // crate ("mcu_media::name").
    let full = match module.split_once("::") {
        Some((_, module)) => format!("{module}::{test}"),
        None => test.to_string(),
    };
    let status = std::process::Command::new("unshare")
        .arg("-n")
        .arg(exe)
        .args(["--exact", &full, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{test} failed inside its network namespace"
    );
    false
}

fn setup_network() {
    for cmd in [
        "ip link set lo up",
        "ip link add v0 type veth peer name v1",
        "ip addr add 10.99.0.1/24 dev v0",
        "ip addr add 10.99.0.2/24 dev v1",
        "ip link set v0 up",
        "ip link set v1 up",
        "ip route add default via 10.99.0.2 dev v0",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        let s = std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .unwrap();
        assert!(s.success(), "`{cmd}` failed");
    }
}

/// One aiortc peer.
pub(crate) struct Peer {
    child: Child,
    /// A directory of the peer's, removed on drop.
    dir: Option<std::path::PathBuf>,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    /// An aiortc peer (`tests/mcu_peer.py`).
    pub(crate) async fn start(args: &[&str]) -> Peer {
        Self::start_script("mcu_peer.py", args).await
    }

    /// A peer of another helper in `tests/` with the same protocol.
    async fn start_script(script: &str, args: &[&str]) -> Peer {
        let script = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Peer {
            child,
            dir: None,
            stdin,
            lines,
        }
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.stdin
            .write_all(format!("{v}\n").as_bytes())
            .await
            .unwrap();
    }

    pub(crate) async fn recv(&mut self) -> Value {
        let line = tokio::time::timeout(MEDIA, self.lines.next_line())
            .await
            .expect("peer answers")
            .unwrap()
            .expect("peer alive");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_ne!(v["type"], "error", "peer failed: {v}");
        v
    }

    pub(crate) async fn stats(&mut self) -> Value {
        self.send(json!({"type": "stats"})).await;
        self.recv().await
    }

    /// (audio, video) frames decoded so far.
    pub(crate) async fn frames(&mut self) -> (u64, u64) {
        let s = self.stats().await;
        (
            s["frames"]["audio"].as_u64().unwrap(),
            s["frames"]["video"].as_u64().unwrap(),
        )
    }

    /// Waits until at least `audio` and `video` more frames than `from`
    /// arrived; returns the counts.
    pub(crate) async fn wait_frames(
        &mut self,
        from: (u64, u64),
        audio: u64,
        video: u64,
    ) -> (u64, u64) {
        let deadline = tokio::time::Instant::now() + MEDIA;
        loop {
            let f = self.frames().await;
            if f.0 >= from.0 + audio && f.1 >= from.1 + video {
                return f;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "frames stuck at {f:?} (wanted +{audio}/+{video} over {from:?}): {}",
                self.stats().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asserts that no video RTP packet arrives while `window` passes
    /// (packets, not decoded frames: a busy decoder may still be behind).
    pub(crate) async fn assert_video_stopped(&mut self, window: Duration) {
        let video = |s: &Value| s["packets_received"]["video"].as_u64().unwrap();
        // Packets in flight when forwarding stopped may still come in.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = self.stats().await;
        tokio::time::sleep(window).await;
        let after = self.stats().await;
        assert_eq!(
            video(&before),
            video(&after),
            "video packets still arrive: {before} -> {after}"
        );
    }
}

impl Peer {
    /// Asks the peer to quit and waits until it did (the chromium helper
    /// ends its browser first), then removes its directory.
    pub(crate) async fn close(mut self) {
        self.send(json!({"type": "quit"})).await;
        let status = tokio::time::timeout(MEDIA, self.child.wait()).await;
        assert!(
            status
                .as_ref()
                .is_ok_and(|s| s.as_ref().is_ok_and(|s| s.success())),
            "peer quits: {status:?}"
        );
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub(crate) async fn send_to(c: &mut Client, id: &str, to: &str, data: Value) {
    c.send(json!({"id": id, "type": "message", "message": {
        "recipient": {"type": "session", "sessionid": to}, "data": data}}))
        .await;
}

async fn wait_mcu(ts: &TestServer) {
    crate::support::janus::wait_janus(ts, true).await;
}

/// The publisher peer offers; the server answers from Janus.
pub(crate) async fn publish(c: &mut Client, peer: &mut Peer, room_type: &str, sid: &str) {
    let offer = peer.recv().await;
    assert_eq!(offer["type"], "offer");
    let me = c.session_id.clone();
    send_to(
        c,
        "offer",
        &me,
        json!({"to": me, "sid": sid, "roomType": room_type, "type": "offer",
        "payload": {"type": "offer", "sdp": offer["sdp"]}}),
    )
    .await;
    let m = c
        .wait_for_within(MEDIA, |m| {
            m["type"] == "error" || m["message"]["data"]["type"] == "answer"
        })
        .await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    assert_eq!(m["message"]["data"]["sid"], sid);
    peer.send(json!({"type": "answer", "sdp": m["message"]["data"]["payload"]["sdp"]}))
        .await;
    assert_eq!(peer.recv().await["type"], "ok");
}

/// Hands an offer from the server to a subscriber peer and its answer
/// back; returns the subscriber's sid.
async fn answer_offer(c: &mut Client, peer: &mut Peer, offer_msg: &Value) -> String {
    let sid = offer_msg["message"]["data"]["sid"].as_str().unwrap_or("");
    assert!(
        sid.parse::<u64>().is_ok(),
        "subscriber sid is a handle id: {sid}"
    );
    answer_any_offer(c, peer, offer_msg).await
}

/// [`answer_offer`] whatever the sid (a proxy's subscriber id).
pub(crate) async fn answer_any_offer(c: &mut Client, peer: &mut Peer, offer_msg: &Value) -> String {
    let d = &offer_msg["message"]["data"];
    assert_eq!(d["type"], "offer", "{offer_msg}");
    let from = d["from"].as_str().unwrap().to_string();
    let sid = d["sid"].as_str().unwrap().to_string();
    peer.send(json!({"type": "offer", "sdp": d["payload"]["sdp"]}))
        .await;
    let answer = peer.recv().await;
    assert_eq!(answer["type"], "answer");
    send_to(
        c,
        "answer",
        &from,
        json!({"to": from, "sid": sid, "roomType": d["roomType"], "type": "answer",
        "payload": {"type": "answer", "sdp": answer["sdp"]}}),
    )
    .await;
    sid
}

/// `requestoffer` to `publisher`; returns the offer it sends.
async fn request_offer(c: &mut Client, publisher: &str, room_type: &str, sid: &str) -> Value {
    send_to(
        c,
        "req",
        publisher,
        json!({"type": "requestoffer", "roomType": room_type, "sid": sid}),
    )
    .await;
    let m = c
        .wait_for_within(MEDIA, |m| {
            m["type"] == "error" || m["message"]["data"]["type"] == "offer"
        })
        .await;
    assert_eq!(m["message"]["sender"]["sessionid"], publisher, "{m}");
    assert_eq!(m["message"]["data"]["roomType"], room_type);
    m
}

/// `requestoffer` to `publisher`; the offer is answered by `peer`.
async fn subscribe(
    c: &mut Client,
    peer: &mut Peer,
    publisher: &str,
    room_type: &str,
    sid: &str,
) -> String {
    let m = request_offer(c, publisher, room_type, sid).await;
    answer_offer(c, peer, &m).await
}

/// [`subscribe`] through a proxy (any sid).
pub(crate) async fn subscribe_any(
    c: &mut Client,
    peer: &mut Peer,
    publisher: &str,
    room_type: &str,
    sid: &str,
) -> String {
    let m = request_offer(c, publisher, room_type, sid).await;
    answer_any_offer(c, peer, &m).await
}

/// `selectStream` `video: false` from `c` for its subscriber `sid` of
/// `publisher`: `peer` still decodes audio, its video stops.
async fn select_no_video(c: &mut Client, peer: &mut Peer, publisher: &str, sid: &str) {
    send_to(
        c,
        "sel",
        publisher,
        json!({"type": "selectStream", "roomType": "video", "sid": sid,
        "payload": {"video": false}}),
    )
    .await;
    let f = peer.frames().await;
    peer.wait_frames(f, 25, 0).await;
    peer.assert_video_stopped(Duration::from_millis(1500)).await;
}

/// `users` in room1 of `ts` (once its MCU is connected), all in the call
/// (Nextcloud sessions `nc-<user>`).
async fn in_call<const N: usize>(ts: &TestServer, users: [&str; N]) -> [Client; N] {
    wait_mcu(ts).await;
    let mut clients = Vec::new();
    for u in users {
        clients.push(ts.client_in_room(u, "room1").await);
    }
    let nc: Vec<String> = users.iter().map(|u| format!("nc-{u}")).collect();
    all_in_call(ts, &nc.iter().map(String::as_str).collect::<Vec<_>>()).await;
    match clients.try_into() {
        Ok(c) => c,
        Err(_) => unreachable!("one client per user"),
    }
}

/// No error reached Alice, Bob or Carol on the way: each sees the next
/// room message (Bob's to Alice, Alice's to the others) before any error.
async fn no_error_reached([a, b, c]: [&mut Client; 3]) {
    let room_msg = |text: &str| json!({"type": "message", "message": {"recipient": {"type": "room"}, "data": text}});
    b.send(room_msg("to alice")).await;
    a.send(room_msg("to bob and carol")).await;
    for (name, x, text) in [
        ("alice", a, "to alice"),
        ("bob", b, "to bob and carol"),
        ("carol", c, "to bob and carol"),
    ] {
        let m = x
            .wait_for(|m| m["type"] == "error" || m["message"]["data"] == text)
            .await;
        assert_ne!(m["type"], "error", "{name}: {m}");
    }
}

pub(crate) async fn all_in_call(ts: &TestServer, nc_ids: &[&str]) {
    let users: Vec<Value> = nc_ids
        .iter()
        .map(|n| json!({"sessionId": n, "inCall": 7}))
        .collect();
    let (status, _) = ts
        .backend_request(
            "room1",
            &json!({"type": "incall", "incall": {"incall": 7, "changed": users, "users": users}}),
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_publisher_and_subscribers_exchange_media_with_layer_selection_and_renegotiation() {
    if !run_in_namespace(
        "a_publisher_and_subscribers_exchange_media_with_layer_selection_and_renegotiation",
    ) {
        return;
    }
    let j = Janus::start().await;
    let ts = TestServer::start_with(&j.mcu_section("timeout = 10\n")).await;
    let [mut a, mut b, mut c] = in_call(&ts, ["alice", "bob", "carol"]).await;
    let alice = a.session_id.clone();

    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a, &mut pa, "video", "1000").await;
    let mut pb = Peer::start(&["subscribe"]).await;
    let mut pc = Peer::start(&["subscribe"]).await;
    let sid_b = subscribe(&mut b, &mut pb, &alice, "video", "").await;
    subscribe(&mut c, &mut pc, &alice, "video", "").await;
    // Both subscribers decode Alice's audio and video.
    let fb = pb.wait_frames((0, 0), 25, 25).await;
    let fc = pc.wait_frames((0, 0), 25, 25).await;
    let sent = pa.stats().await["bytes_sent"].as_u64().unwrap();
    assert!(sent > 1000, "publisher sent {sent} bytes");
    eprintln!("frames: bob {fb:?}, carol {fc:?}; alice sent {sent} bytes");
    // An empty candidate (end of candidates, trickled to Janus as is) and
    // endOfCandidates from the publisher and a subscriber change nothing.
    let empty = json!({"candidate": {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}});
    send_to(
        &mut a,
        "eoc1",
        &alice,
        json!({"type": "candidate", "roomType": "video", "sid": "1000", "payload": empty}),
    )
    .await;
    send_to(
        &mut a,
        "eoc2",
        &alice,
        json!({"type": "endOfCandidates", "roomType": "video", "sid": "1000", "payload": {}}),
    )
    .await;
    send_to(
        &mut b,
        "eoc3",
        &alice,
        json!({"type": "candidate", "roomType": "video", "sid": sid_b, "payload": empty}),
    )
    .await;
    let f = pc.frames().await;
    pc.wait_frames(f, 25, 25).await;
    let f = pb.frames().await;
    pb.wait_frames(f, 25, 25).await;

    // selectStream video:false stops Bob's video while his audio goes on,
    // Carol's video is untouched; video:true brings it back.
    select_no_video(&mut b, &mut pb, &alice, &sid_b).await;
    let fc = pc.frames().await;
    pc.wait_frames(fc, 0, 10).await;
    send_to(
        &mut b,
        "sel",
        &alice,
        json!({"type": "selectStream", "roomType": "video", "sid": sid_b,
        "payload": {"video": true, "substream": 0, "temporal": 0}}),
    )
    .await;
    let f = pb.frames().await;
    pb.wait_frames(f, 10, 10).await;

    // Renegotiation of a subscriber (update-sdp): same sid, new offer, the
    // same PeerConnection keeps receiving.
    let sid_again = subscribe(&mut b, &mut pb, &alice, "video", &sid_b).await;
    assert_eq!(sid_again, sid_b);
    let f = pb.frames().await;
    pb.wait_frames(f, 10, 10).await;

    // The publisher renegotiates: same publisher sid, media goes on.
    pa.send(json!({"type": "reoffer"})).await;
    publish(&mut a, &mut pa, "video", "1000").await;
    let f = pc.frames().await;
    pc.wait_frames(f, 10, 10).await;
    no_error_reached([&mut a, &mut b, &mut c]).await;
    ts.stop().await;
}

#[tokio::test]
async fn screen_sharing_revocation_and_a_janus_restart_with_real_media() {
    if !run_in_namespace("screen_sharing_revocation_and_a_janus_restart_with_real_media") {
        return;
    }
    let mut j = Janus::start().await;
    let nc = support::FakeNextcloud::start().await;
    nc.state.lock().unwrap().permissions.insert(
        "nc-alice".into(),
        vec!["publish-media".into(), "publish-screen".into()],
    );
    let ts = TestServer::start_on(nc, &j.mcu_section("timeout = 10\n")).await;
    let [mut a, mut b] = in_call(&ts, ["alice", "bob"]).await;
    let alice = a.session_id.clone();
    let bob = b.session_id.clone();

    // Screen: Alice publishes and sends Bob the offer (sendoffer).
    let mut screen = Peer::start(&["publish", "video"]).await;
    publish(&mut a, &mut screen, "screen", "s1").await;
    send_to(
        &mut a,
        "so",
        &bob,
        json!({"type": "sendoffer", "roomType": "screen"}),
    )
    .await;
    let m = b
        .wait_for_within(MEDIA, |m| m["message"]["data"]["type"] == "offer")
        .await;
    assert_eq!(m["message"]["data"]["from"], alice.as_str());
    assert_eq!(m["message"]["data"]["roomType"], "screen");
    let mut pb_screen = Peer::start(&["subscribe"]).await;
    answer_offer(&mut b, &mut pb_screen, &m).await;
    pb_screen.wait_frames((0, 0), 0, 25).await;

    // Camera and microphone too; Bob subscribes.
    let mut cam = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a, &mut cam, "video", "v1").await;
    let mut pb = Peer::start(&["subscribe"]).await;
    subscribe(&mut b, &mut pb, &alice, "video", "").await;
    pb.wait_frames((0, 0), 25, 25).await;

    // unshareScreen: the screen room goes, Bob's screen stops, the camera
    // goes on.
    let mut obs = Observer::connect(&j.url()).await;
    send_to(
        &mut a,
        "u",
        &alice,
        json!({"type": "unshareScreen", "roomType": "screen"}),
    )
    .await;
    obs.wait_room(&alice, "screen", false).await;
    pb_screen
        .assert_video_stopped(Duration::from_millis(1500))
        .await;
    let f = pb.frames().await;
    pb.wait_frames(f, 10, 10).await;

    // Nextcloud revokes publish-media: the camera publisher stops at once.
    let perms = json!(["publish-screen"]);
    ts.backend_request(
        "room1",
        &json!({"type": "participants", "participants": {
        "changed": [{"sessionId": "nc-alice", "inCall": 7, "permissions": perms}],
        "users": [{"sessionId": "nc-alice", "inCall": 7, "permissions": perms},
                  {"sessionId": "nc-bob", "inCall": 7}]}}),
    )
    .await;
    obs.wait_room(&alice, "video", false).await;
    pb.assert_video_stopped(Duration::from_millis(1500)).await;
    drop(obs);

    // Janus restarts: the server sees it go and come back, the publisher
    // publishes again with a new PeerConnection and Bob receives it.
    j.kill();
    crate::support::janus::wait_janus(&ts, false).await;
    j.restart().await;
    wait_mcu(&ts).await;
    let mut screen2 = Peer::start(&["publish", "video"]).await;
    publish(&mut a, &mut screen2, "screen", "s2").await;
    let mut pb2 = Peer::start(&["subscribe"]).await;
    subscribe(&mut b, &mut pb2, &alice, "screen", "").await;
    pb2.wait_frames((0, 0), 0, 25).await;
    ts.stop().await;
}

#[tokio::test]
async fn a_subscriber_on_another_process_receives_the_media_of_a_publisher() {
    if !run_in_namespace("a_subscriber_on_another_process_receives_the_media_of_a_publisher") {
        return;
    }
    let j = Janus::start().await;
    let nats = support::NatsServer::start().await;
    let nc = support::FakeNextcloud::start().await;
    let conf = format!(
        "{}[nats]\nurl = {}\n",
        j.mcu_section("timeout = 10\n"),
        nats.url()
    );
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
        wait_mcu(s).await;
    }
    let mut a = s1.client_in_room("alice", "room1").await;
    let mut b = s2.client_in_room("bob", "room1").await;
    b.wait_join_of(&a.session_id).await;
    a.wait_join_of(&b.session_id).await;
    all_in_call(&s1, &["nc-alice", "nc-bob"]).await;
    b.wait_for(|m| {
        m["event"]["target"] == "participants"
            && m["event"]["update"]["users"]
                .as_array()
                .is_some_and(|u| u.len() == 2)
    })
    .await;
    let alice = a.session_id.clone();

    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a, &mut pa, "video", "p1").await;
    // Bob, on the other process, subscribes: process 1 owns the Janus
    // handles; the offer, his answer and selectStream cross the bus.
    let mut pb = Peer::start(&["subscribe"]).await;
    let sid_b = subscribe(&mut b, &mut pb, &alice, "video", "").await;
    let f = pb.wait_frames((0, 0), 25, 25).await;
    eprintln!("bob on process 2 decoded {f:?}");
    select_no_video(&mut b, &mut pb, &alice, &sid_b).await;
    // Bob leaves: process 1 drops his subscriber.
    drop(pb);
    b.send(json!({"id": "bye", "type": "bye", "bye": {}})).await;
    let hub1 = s1.server.as_ref().unwrap().hub.clone();
    support::eventually("the subscriber is gone", Duration::from_secs(10), || {
        hub1.metrics
            .mcu
            .subscribers
            .with_label_values(&["video"])
            .get()
            == 0
    })
    .await;
    s2.stop().await;
    s1.stop().await;
}

#[tokio::test]
async fn candidates_janus_trickles_reach_the_clients_and_media_flows_with_them() {
    if !run_in_namespace("candidates_janus_trickles_reach_the_clients_and_media_flows_with_them") {
        return;
    }
    // With full_trickle Janus's SDPs carry no candidates; it trickles them
    // (before or after its SDP), and the server forwards each as a
    // `candidate` message to the publisher and to the subscriber, which
    // hand them to their PeerConnections. (Media might also connect through
    // peer-reflexive candidates; the envelope checks are what this proves.)
    let j = Janus::start_configured(None, true).await;
    let ts = TestServer::start_with(&j.mcu_section("timeout = 10\n")).await;
    let [mut a, mut b] = in_call(&ts, ["alice", "bob"]).await;
    let alice = a.session_id.clone();

    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    let offer = pa.recv().await;
    send_to(
        &mut a,
        "offer",
        &alice,
        json!({"to": alice, "sid": "t1", "roomType": "video", "type": "offer",
        "payload": {"type": "offer", "sdp": offer["sdp"]}}),
    )
    .await;
    // Janus may trickle before or after its answer.
    let (mut answer, mut candidates) = (None, Vec::new());
    while answer.is_none() || candidates.is_empty() {
        let m = a.recv_within(MEDIA).await;
        assert_ne!(m["type"], "error", "{m}");
        let d = &m["message"]["data"];
        match d["type"].as_str() {
            Some("answer") => answer = Some(d["payload"]["sdp"].clone()),
            Some("candidate") => {
                assert_eq!(d["from"], alice.as_str());
                assert_eq!(d["to"], alice.as_str());
                assert_eq!(d["sid"], "t1");
                assert_eq!(d["roomType"], "video");
                candidates.push(d["payload"]["candidate"].clone());
            }
            _ => {}
        }
    }
    let answer = answer.unwrap();
    assert!(
        !answer.as_str().unwrap().contains("a=candidate"),
        "full_trickle: no candidates in the SDP"
    );
    pa.send(json!({"type": "answer", "sdp": answer})).await;
    assert_eq!(pa.recv().await["type"], "ok");
    for c in candidates {
        assert!(
            c["candidate"].as_str().unwrap().starts_with("candidate:"),
            "{c}"
        );
        pa.send(json!({"type": "candidate", "candidate": c})).await;
        assert_eq!(pa.recv().await["type"], "ok");
    }

    let mut pb = Peer::start(&["subscribe"]).await;
    send_to(
        &mut b,
        "req",
        &alice,
        json!({"type": "requestoffer", "roomType": "video"}),
    )
    .await;
    let (mut offer, mut candidates) = (None, Vec::new());
    while offer.is_none() || candidates.is_empty() {
        let m = b.recv_within(MEDIA).await;
        assert_ne!(m["type"], "error", "{m}");
        match m["message"]["data"]["type"].as_str() {
            Some("offer") => offer = Some(m),
            Some("candidate") => {
                let d = &m["message"]["data"];
                assert_eq!(
                    d["from"],
                    alice.as_str(),
                    "the publisher, on the subscriber side"
                );
                candidates.push(d.clone());
            }
            _ => {}
        }
    }
    let sid = answer_offer(&mut b, &mut pb, &offer.unwrap()).await;
    for d in candidates {
        assert_eq!(d["sid"], sid.as_str());
        pb.send(json!({"type": "candidate", "candidate": d["payload"]["candidate"]}))
            .await;
        assert_eq!(pb.recv().await["type"], "ok");
    }
    pb.wait_frames((0, 0), 25, 25).await;
    ts.stop().await;
}

/// The value of `name` with these labels in a Prometheus text (0 when
/// absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn janus_events_feed_the_media_quality_metrics() {
    if !run_in_namespace("janus_events_feed_the_media_quality_metrics") {
        return;
    }
    // Janus's WebSocket event handler points at the server (as the Go
    // server documents): the server first, Janus on the port it expects.
    let port = support::free_port();
    let ts = TestServer::start_with(&format!(
        "[mcu]\ntype = janus\nurl = ws://127.0.0.1:{port}\ntimeout = 10\n"
    ))
    .await;
    let events = format!("{}/spreed", ts.url.replace("http", "ws"));
    let _j = Janus::start_with_events(port, &events).await;
    wait_mcu(&ts).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a, &mut pa, "video", "e1").await;
    let wanted: [(&str, &[(&str, &str)]); 7] = [
        ("signaling_mcu_ice_state_total", &[("state", "connected")]),
        ("signaling_mcu_dtls_state_total", &[("state", "connected")]),
        (
            "signaling_mcu_peerconnection_state_total",
            &[("state", "webrtcup")],
        ),
        (
            "signaling_mcu_selected_candidate_total",
            &[("origin", "local"), ("family", "ipv4")],
        ),
        (
            "signaling_mcu_media_codecs_total",
            &[("media", "audio"), ("codec", "opus")],
        ),
        (
            "signaling_mcu_media_bytes_total",
            &[("media", "audio"), ("direction", "incoming")],
        ),
        (
            "signaling_mcu_media_bytes_total",
            &[("media", "video"), ("direction", "incoming")],
        ),
    ];
    let deadline = tokio::time::Instant::now() + MEDIA;
    loop {
        let text = ts.metrics_text().await;
        let missing: Vec<_> = wanted
            .iter()
            .filter(|(name, labels)| metric(&text, name, labels) <= 0.0)
            .collect();
        let bandwidth = metric(
            &text,
            "signaling_mcu_bandwidth",
            &[("direction", "incoming")],
        );
        if missing.is_empty() && bandwidth > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing {missing:?} (bandwidth {bandwidth}):\n{}",
            text.lines()
                .filter(|l| l.starts_with("signaling_mcu_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The publisher goes: its bandwidth no longer counts once Janus says
    // the handle is detached.
    drop(pa);
    a.send(json!({"type": "bye", "bye": {}})).await;
    let deadline = tokio::time::Instant::now() + MEDIA;
    while metric(
        &ts.metrics_text().await,
        "signaling_mcu_bandwidth",
        &[("direction", "incoming")],
    ) > 0.0
    {
        assert!(tokio::time::Instant::now() < deadline, "bandwidth stays");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ts.stop().await;
}

/// True when a chromium (the simulcast publisher) is installed.
fn chromium_available() -> bool {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .any(|name| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

impl Peer {
    /// Size of the last video frame the subscriber decoded.
    async fn video_size(&mut self) -> (u64, u64, Value) {
        let s = self.stats().await;
        let w = s["video_size"][0].as_u64().unwrap();
        let h = s["video_size"][1].as_u64().unwrap();
        (w, h, s)
    }

    /// Waits until the decoded video is `width` wide and `frames` more
    /// frames of that width came in (the switch happened and holds).
    async fn wait_video_width(&mut self, width: u64, frames: u64, publisher: &mut Peer) {
        let deadline = tokio::time::Instant::now() + MEDIA;
        let mut since: Option<u64> = None;
        loop {
            let (w, _, s) = self.video_size().await;
            let n = s["frames"]["video"].as_u64().unwrap();
            if w == width {
                let first = *since.get_or_insert(n);
                if n >= first + frames {
                    return;
                }
            } else {
                since = None;
            }
            if tokio::time::Instant::now() >= deadline {
                let p = publisher.stats().await;
                panic!("video never {width} wide: subscriber {s}, publisher {p}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Peer {
    /// Frames the simulcast publisher encoded on layer `rid` so far.
    async fn layer_frames(&mut self, rid: &str) -> u64 {
        let s = self.stats().await;
        s["layers"][rid]["frames"].as_u64().unwrap_or(0)
    }

    /// Video frames this subscriber decoded over a second, as a share of
    /// the frames `publisher` encoded on layer `rid` meanwhile (a ratio,
    /// so that the publisher's own rate, which a busy machine lowers,
    /// does not matter).
    async fn video_share(&mut self, publisher: &mut Peer, rid: &str) -> f64 {
        let (s0, p0) = (self.frames().await.1, publisher.layer_frames(rid).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (s1, p1) = (self.frames().await.1, publisher.layer_frames(rid).await);
        (s1 - s0) as f64 / (p1 - p0).max(1) as f64
    }

    /// Measures [`Peer::video_share`] until it lies in `(lo, hi]`;
    /// returns it.
    async fn wait_video_share(&mut self, publisher: &mut Peer, rid: &str, lo: f64, hi: f64) -> f64 {
        let deadline = tokio::time::Instant::now() + MEDIA;
        let mut seen = Vec::new();
        loop {
            let share = self.video_share(publisher, rid).await;
            if share > lo && share <= hi {
                return share;
            }
            seen.push(format!("{share:.2}"));
            assert!(
                tokio::time::Instant::now() < deadline,
                "share of layer {rid}'s frames never in ({lo}, {hi}]: {seen:?}"
            );
        }
    }
}

#[tokio::test]
async fn simulcast_select_stream_switches_the_layer_a_subscriber_receives() {
    const TEST: &str = "simulcast_select_stream_switches_the_layer_a_subscriber_receives";
    if !chromium_available() {
        eprintln!("SKIPPED {TEST}: no chromium (the simulcast publisher; scripts/test installs Debian's chromium)");
        return;
    }
    if !run_in_namespace(TEST) {
        return;
    }
    let j = Janus::start().await;
    // Room bitrate high enough for all three layers (Janus caps the
    // publisher with REMB at the room's bitrate).
    let ts =
        TestServer::start_with(&j.mcu_section("timeout = 10\nmaxstreambitrate = 4000000\n")).await;
    let [mut a, mut b, mut c] = in_call(&ts, ["alice", "bob", "carol"]).await;
    let alice = a.session_id.clone();

    // Alice: chromium, 1280x720 camera, rid simulcast h/m/l (1280, 640,
    // 320 wide).
    let started = tokio::time::Instant::now();
    let profile = support::fresh_dir("mcu-chrome");
    let mut pa = Peer::start_script(
        "mcu_chrome_peer.py",
        &["publish", "1280x720", profile.to_str().unwrap()],
    )
    .await;
    pa.dir = Some(profile);
    publish(&mut a, &mut pa, "video", "sc1").await;
    let mut pb = Peer::start(&["subscribe"]).await;
    let sid = subscribe(&mut b, &mut pb, &alice, "video", "").await;
    pb.wait_frames((0, 0), 0, 10).await;
    eprintln!(
        "media after {:?}: subscriber {}, publisher {}",
        started.elapsed(),
        pb.stats().await,
        pa.stats().await
    );
    for (substream, width) in [(0, 320), (2, 1280), (1, 640), (0, 320)] {
        send_to(
            &mut b,
            "sel",
            &alice,
            json!({"type": "selectStream", "roomType": "video", "sid": sid,
            "payload": {"substream": substream}}),
        )
        .await;
        pb.wait_video_width(width, 15, &mut pa).await;
        eprintln!(
            "substream {substream}: {width} wide after {:?}",
            started.elapsed()
        );
    }
    // Temporal layers (L1T3: layer 0 is every 4th frame, 0+1 every 2nd):
    // on the lowest substream, temporal 0/1/2 give 1/4, 1/2, all of the
    // full frame rate.
    let select_temporal = |temporal: u64| {
        json!({"type": "selectStream", "roomType": "video", "sid": sid,
        "payload": {"temporal": temporal}})
    };
    // (temporal, share of layer l's frames: about 1/4, 1/2, all)
    let bands = [(0, 0.0, 0.375), (1, 0.375, 0.75), (2, 0.75, 2.0)];
    for i in [2, 0, 1, 2, 0] {
        let (temporal, lo, hi) = bands[i];
        send_to(&mut b, "sel", &alice, select_temporal(temporal)).await;
        let share = pb.wait_video_share(&mut pa, "l", lo, hi).await;
        eprintln!("temporal {temporal}: {share:.2} of the frames");
    }

    // Carol asks for the lowest layers right in her requestoffer: her
    // first frames are already 320 wide, at a quarter of the rate.
    let mut pc = Peer::start(&["subscribe"]).await;
    send_to(
        &mut c,
        "req",
        &alice,
        json!({"type": "requestoffer", "roomType": "video",
        "payload": {"substream": 0, "temporal": 0}}),
    )
    .await;
    let m = c
        .wait_for_within(MEDIA, |m| {
            m["type"] == "error" || m["message"]["data"]["type"] == "offer"
        })
        .await;
    answer_offer(&mut c, &mut pc, &m).await;
    pc.wait_frames((0, 0), 0, 3).await;
    let (w, h, s) = pc.video_size().await;
    assert_eq!((w, h), (320, 180), "carol's first frames: {s}");
    let share = pc.wait_video_share(&mut pa, "l", 0.0, 0.375).await;
    pc.wait_video_width(320, 10, &mut pa).await;
    eprintln!("carol: 320x180, {share:.2} of the frames");

    no_error_reached([&mut a, &mut b, &mut c]).await;
    drop((pb, pc));
    pa.close().await;
    ts.stop().await;
}

/// Go's `signaling_mcu_publisher_streams{type}` and
/// `_subscriber_streams{type}`: the publisher's audio and video count once
/// Janus's `media` events say it receives them, each once more per
/// connected subscriber; back to 0 when they go.
#[tokio::test]
async fn publisher_and_subscriber_streams_are_counted_from_janus_media_events() {
    if !run_in_namespace("publisher_and_subscriber_streams_are_counted_from_janus_media_events") {
        return;
    }
    let j = Janus::start().await;
    let ts = TestServer::start_with(&j.mcu_section("timeout = 10\n")).await;
    let [mut a, mut b] = in_call(&ts, ["alice", "bob"]).await;
    let alice = a.session_id.clone();
    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a, &mut pa, "video", "1000").await;
    let streams = |text: &str| {
        ["audio", "video", "screen"].map(|t| {
            (
                metric(text, "signaling_mcu_publisher_streams", &[("type", t)]),
                metric(text, "signaling_mcu_subscriber_streams", &[("type", t)]),
            )
        })
    };
    let wait = |want: [(f64, f64); 3]| {
        let ts = &ts;
        async move {
            let deadline = tokio::time::Instant::now() + MEDIA;
            loop {
                let got = streams(&ts.metrics_text().await);
                if got == want {
                    return;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "streams {got:?}, want {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    wait([(1.0, 0.0), (1.0, 0.0), (0.0, 0.0)]).await;
    let mut pb = Peer::start(&["subscribe"]).await;
    subscribe(&mut b, &mut pb, &alice, "video", "").await;
    pb.wait_frames((0, 0), 5, 5).await;
    wait([(1.0, 1.0), (1.0, 1.0), (0.0, 0.0)]).await;
    drop(pa);
    a.send(json!({"type": "bye", "bye": {}})).await;
    wait([(0.0, 0.0); 3]).await;
    ts.stop().await;
}
