//! The same cases against the Go server (Debian's
//! `nextcloud-spreed-signaling` 0.4.1, when installed) and this server,
//! for behaviour this server copies from Go: each case asserts what tells
//! the old behaviour of this server from Go's, and must pass on both.
//! Without the Go server the Go half is skipped with a message.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::janus::{audio_offer, Janus};
use crate::support::{
    free_port, fresh_dir, internal_hello, signed_backend_request, Client, FakeNextcloud,
    TestServer, INTERNAL_SECRET, SECRET,
};

const GO_SERVER: &str = "/usr/bin/nextcloud-spreed-signaling-server";

/// The Go server on a free port of 127.0.0.1, killed when dropped.
pub(crate) struct GoServer {
    child: Child,
    url: String,
    dir: std::path::PathBuf,
}

impl Drop for GoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("go.log")).unwrap_or_default();
            eprintln!("--- the Go server's log ---\n{log}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl GoServer {
    /// Starts the Go server for `nc`; `extra` is appended to its config.
    /// None (with a message) when it is not installed.
    pub(crate) async fn start(nc: &FakeNextcloud, extra: &str, test: &str) -> Option<GoServer> {
        if !Path::new(GO_SERVER).exists() {
            eprintln!("SKIPPED the Go half of {test}: {GO_SERVER} is not installed");
            return None;
        }
        let port = free_port();
        let dir = fresh_dir("go-parity");
        let conf = dir.join("server.conf");
        std::fs::write(
            &conf,
            format!(
                "[http]\nlisten = 127.0.0.1:{port}\n[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\n\
                 blockkey = 0123456789abcdef\n[clients]\ninternalsecret = {INTERNAL_SECRET}\n\
                 [backend]\nbackends = nc1\ntimeout = 5\n[nc1]\nurl = {}\nsecret = {SECRET}\n\
                 [nats]\nurl = :loopback:\n{extra}",
                nc.url
            ),
        )
        .unwrap();
        let child = Command::new(GO_SERVER)
            .arg("-config")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("go.log")).unwrap())
            .spawn()
            .unwrap();
        let go = GoServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{}/api/v1/welcome", go.url))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the Go server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(go)
    }
}

/// One server under test: its HTTP URL and its Nextcloud.
pub(crate) struct Side {
    pub(crate) name: &'static str,
    pub(crate) url: String,
    pub(crate) nc: FakeNextcloud,
}

impl Side {
    pub(crate) fn of(ts: &TestServer) -> Side {
        Side {
            name: "this server",
            url: ts.url.clone(),
            nc: ts.nc.clone(),
        }
    }

    pub(crate) fn go(go: &GoServer, nc: &FakeNextcloud) -> Side {
        // Go asks for Talk's v3 signaling path (the fake's) only when the
        // capabilities say so.
        nc.state
            .lock()
            .unwrap()
            .extra_features
            .push("signaling-v3".into());
        Side {
            name: "Go",
            url: go.url.clone(),
            nc: nc.clone(),
        }
    }

    /// A connection (the Go server 0.4.1 sends no `welcome`; ours does).
    pub(crate) async fn connect(&self) -> Client {
        let mut c = Client::connect(&format!("{}/spreed", self.url.replace("http", "ws"))).await;
        if self.name != "Go" {
            c.expect_type("welcome").await;
        }
        c
    }

    /// A user's session; the hello reply.
    pub(crate) async fn user(&self, user: &str) -> (Client, Value) {
        let mut c = self.connect().await;
        let h = c
            .hello_v1(&self.nc.backend_url(), json!({"userid": user}))
            .await;
        (c, h)
    }

    pub(crate) async fn user_in_room(&self, user: &str, room: &str) -> Client {
        let (mut c, _) = self.user(user).await;
        c.join(room, &format!("nc-{user}")).await;
        c
    }

    pub(crate) async fn backend_request(&self, room: &str, body: &Value) -> (u16, Value) {
        signed_backend_request(&self.url, &self.nc.url, room, body).await
    }
}

/// Runs `case` against this server, then against Go 0.4.1 when it is
/// installed (the Go server's log is named after `test`); both get the
/// config lines `extra`.
macro_rules! ours_then_go {
    ($case:ident, $extra:expr, $test:expr) => {{
        let ts = TestServer::start_with($extra).await;
        $case(&Side::of(&ts)).await;
        ts.stop().await;
        let nc = FakeNextcloud::start().await;
        if let Some(go) = GoServer::start(&nc, $extra, $test).await {
            $case(&Side::go(&go, &nc)).await;
        }
    }};
}
pub(crate) use ours_then_go;

/// A `disinvite` for the room a session is in: the `roomlist` event, then
/// the connection closes (no `room` message); the room sees it leave.
async fn disinvite_case(s: &Side) {
    let mut a = s.user_in_room("alice", "room1").await;
    let mut b = s.user_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    let (status, _) = s
        .backend_request(
            "room1",
            &json!({"type": "disinvite", "disinvite": {"userids": ["bob"], "alluserids": ["alice"]}}),
        )
        .await;
    assert_eq!(status, 200, "{}", s.name);
    // Bob may still see his own join event first.
    let ev = loop {
        let m = b.recv_or_close().await.expect("an event first");
        if m["type"] == "event" && m["event"]["target"] == "roomlist" {
            break m;
        }
        assert_eq!(m["event"]["type"], "join", "{}: {m}", s.name);
    };
    assert_eq!(ev["event"]["type"], "disinvite", "{}: {ev}", s.name);
    assert_eq!(ev["event"]["disinvite"]["roomid"], "room1", "{}", s.name);
    // Then the connection closes: with 1000 here and in Go's current
    // source, without a close frame in Go 0.4.1.
    let close = b.recv_or_close().await;
    match s.name {
        "Go" => assert!(close.is_err(), "Go: {close:?}"),
        _ => assert_eq!(close, Err(Some(1000))),
    }
    let l = a.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([b.session_id]), "{}", s.name);
}

#[tokio::test]
async fn disinvite_ends_the_session_in_the_room_as_in_go() {
    ours_then_go!(disinvite_case, "", "disinvite_ends_the_session");
}

/// `addsession` refused by Nextcloud: `add_failed` with the request id,
/// and the room never sees the session; `removesession` that Nextcloud
/// could not be told of: `remove_failed`.
async fn virtual_session_case(s: &Side) {
    let mut a = s.user_in_room("alice", "room1").await;
    let mut sip = s.connect().await;
    let mut hello = internal_hello("0123456789012345678901234567890123456789");
    hello["hello"]["auth"]["params"]["backend"] = json!(s.nc.url);
    sip.send(hello).await;
    let h = sip.recv().await;
    assert_eq!(h["type"], "hello", "{}: {h}", s.name);
    let add = |id: &str| {
        json!({"id": id, "type": "internal", "internal": {"type": "addsession", "addsession": {
            "sessionid": "phone-1", "roomid": "room1"}}})
    };
    s.nc.state.lock().unwrap().refuse_virtual = true;
    sip.send(add("a1")).await;
    let e = sip.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["id"], "a1", "{}: {e}", s.name);
    assert_eq!(e["error"]["code"], "add_failed", "{}: {e}", s.name);
    // The next join alice sees is bob's: the refused session never came.
    let b = s.user_in_room("bob", "room1").await;
    let alice = a.session_id.clone();
    let j = a
        .wait_for(|m| {
            m["event"]["type"] == "join"
                && m["event"]["join"]
                    .as_array()
                    .is_some_and(|l| l.iter().all(|e| e["sessionid"] != alice.as_str()))
        })
        .await;
    assert_eq!(
        j["event"]["join"][0]["sessionid"],
        b.session_id.as_str(),
        "{}: {j}",
        s.name
    );

    s.nc.state.lock().unwrap().refuse_virtual = false;
    sip.send(add("a2")).await;
    let j = a.wait_for(|m| m["event"]["type"] == "join").await;
    let vsid = j["event"]["join"][0]["sessionid"].clone();
    s.nc.state.lock().unwrap().refuse_virtual = true;
    sip.send(json!({"id": "r1", "type": "internal", "internal": {"type": "removesession", "removesession": {
        "sessionid": "phone-1", "roomid": "room1"}}}))
        .await;
    let l = a.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([vsid]), "{}", s.name);
    let e = sip.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["id"], "r1", "{}: {e}", s.name);
    assert_eq!(e["error"]["code"], "remove_failed", "{}: {e}", s.name);
}

#[tokio::test]
async fn virtual_sessions_need_nextclouds_consent_as_in_go() {
    ours_then_go!(
        virtual_session_case,
        "",
        "virtual_sessions_need_nextclouds_consent"
    );
}

/// Five joins at once with `connectionsperhost = 2`: Nextcloud never
/// sees more than two at once, and all five join.
async fn connections_per_host_case(s: &Side) {
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(s.user(&format!("user{i}")).await.0);
    }
    s.nc.state.lock().unwrap().room_delay = Some(Duration::from_millis(300));
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(json!({"id": "join", "type": "room", "room": {"roomid": "room1", "sessionid": format!("nc-{i}")}}))
            .await;
    }
    for c in clients.iter_mut() {
        let r = c
            .wait_for(|m| m["type"] == "room" || m["type"] == "error")
            .await;
        assert_eq!(r["room"]["roomid"], "room1", "{}: {r}", s.name);
    }
    assert_eq!(
        s.nc.state.lock().unwrap().max_joins_in_flight,
        2,
        "{}",
        s.name
    );
}

#[tokio::test]
async fn connectionsperhost_caps_requests_in_flight_as_in_go() {
    ours_then_go!(
        connections_per_host_case,
        "[backend]\nconnectionsperhost = 2\n",
        "connectionsperhost_caps"
    );
}

fn has_mcu(hello: &Value) -> bool {
    hello["hello"]["server"]["features"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "mcu"))
}

/// Janus goes away: a client saying hello now is still told about the
/// MCU, its offer fails with its request id; `/api/v1/stats` reports the
/// MCU in Go's shape.
async fn janus_outage_case(s: &Side, j: &mut Janus) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats: Value = reqwest::get(format!("{}/api/v1/stats", s.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["mcu"]["connected"] == true {
            assert!(stats["sessions"].is_number(), "{}: {stats}", s.name);
            assert!(stats["rooms"].is_number(), "{}: {stats}", s.name);
            assert_eq!(stats["mcu"]["publishers"], 0, "{}: {stats}", s.name);
            assert!(stats["mcu"]["uptime"].is_string(), "{}: {stats}", s.name);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: Janus never connected: {stats}",
            s.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    j.kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stats: Value = reqwest::get(format!("{}/api/v1/stats", s.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if stats["mcu"]["connected"] == false {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: Janus never went away: {stats}",
            s.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.nc.state.lock().unwrap().permissions.insert(
        "nc-carol".into(),
        [
            "publish-media",
            "publish-audio",
            "publish-video",
            "publish-screen",
        ]
        .map(String::from)
        .to_vec(),
    );
    let (mut c, h) = s.user("carol").await;
    assert!(has_mcu(&h), "{}: {h}", s.name);
    c.join("room1", "nc-carol").await;
    let me = c.session_id.clone();
    c.send(json!({"id": "offer", "type": "message", "message": {
        "recipient": {"type": "session", "sessionid": me},
        "data": {"to": me, "sid": "1", "roomType": "video", "type": "offer",
                 "payload": {"type": "offer", "sdp": audio_offer()}}}}))
        .await;
    let e = c
        .wait_for_within(Duration::from_secs(15), |m| m["type"] == "error")
        .await;
    assert_eq!(e["id"], "offer", "{}: {e}", s.name);
    // Go 0.4.1 refuses this hand-made SDP before it looks for Janus (its
    // current source answers `client_not_found` when Janus is away).
    if s.name != "Go" {
        assert_eq!(e["error"]["code"], "client_not_found", "{e}");
    }
}

#[tokio::test]
async fn the_mcu_stays_announced_during_a_janus_outage_as_in_go() {
    if !crate::support::janus::available() {
        eprintln!("SKIPPED the_mcu_stays_announced_during_a_janus_outage_as_in_go: no janus");
        return;
    }
    let mut j = Janus::start().await;
    let ts = TestServer::start_with(&j.mcu_section("")).await;
    janus_outage_case(&Side::of(&ts), &mut j).await;
    ts.stop().await;
    let mut j = Janus::start().await;
    let nc = FakeNextcloud::start().await;
    if let Some(go) = GoServer::start(&nc, &j.mcu_section(""), "the_mcu_stays_announced").await {
        janus_outage_case(&Side::go(&go, &nc), &mut j).await;
    }
}
