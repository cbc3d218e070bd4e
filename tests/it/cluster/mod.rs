//! Several server instances sharing a real nats-server started by the test:
//! they behave like one server to clients and to Nextcloud.

use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

mod federation_gone;
mod handover;
mod handover_internal;
mod resync;
mod room_state;
mod stall;
mod subjects;
mod user_subject;
mod versions;

/// `n` servers on one fake Nextcloud and one NATS, all aware of each other.
pub(super) async fn cluster(n: usize, extra: &str) -> (NatsServer, Vec<TestServer>) {
    let nats = NatsServer::start().await;
    let servers = cluster_on(&nats, n, extra).await;
    (nats, servers)
}

/// [`cluster`] on a NATS server of the caller's.
pub(super) async fn cluster_on(nats: &NatsServer, n: usize, extra: &str) -> Vec<TestServer> {
    let nc = FakeNextcloud::start().await;
    let mut servers = Vec::new();
    for _ in 0..n {
        let conf = format!("{extra}\n[nats]\nurl = {}\n", nats.url());
        servers.push(TestServer::start_on(nc.clone(), &conf).await);
    }
    for s in &servers {
        let hub = s.server.as_ref().unwrap().hub.clone();
        eventually(
            "the processes see each other",
            Duration::from_secs(5),
            || hub.known_processes() == n - 1,
        )
        .await;
    }
    servers
}

pub(super) async fn stop_all(servers: Vec<TestServer>) {
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test]
async fn messages_and_room_events_cross_processes() {
    let (_nats, s) = cluster(2, "").await;
    let mut a = s[0].client_in_room("alice", "room1").await;
    a.wait_join_of(&a.session_id.clone()).await;
    let mut b = s[1].client_in_room("bob", "room1").await;
    // Bob's initial list includes alice from the other process.
    b.wait_join_of(&a.session_id).await;
    let j = a.wait_join_of(&b.session_id).await;
    assert_eq!(j["event"]["join"][0]["userid"], "bob");
    assert_eq!(j["event"]["join"][0]["roomsessionid"], "nc-bob");

    a.message_to(
        json!({"type": "session", "sessionid": b.session_id}),
        json!({"n": 1}),
    )
    .await;
    let m = b.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["n"], 1);
    assert_eq!(m["message"]["sender"]["sessionid"], a.session_id.as_str());

    b.message_to(json!({"type": "room"}), json!({"n": 2})).await;
    assert_eq!(
        a.wait_for(|m| m["type"] == "message").await["message"]["data"]["n"],
        2
    );

    let mut a2 = s[1].client(Some("alice")).await;
    b.message_to(json!({"type": "user", "userid": "alice"}), json!({"n": 3}))
        .await;
    assert_eq!(
        a.wait_for(|m| m["type"] == "message").await["message"]["data"]["n"],
        3
    );
    assert_eq!(
        a2.wait_for(|m| m["type"] == "message").await["message"]["data"]["n"],
        3
    );

    // Leaving on one process is seen on the other.
    b.send(json!({"type": "room", "room": {"roomid": ""}}))
        .await;
    let l = a.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([b.session_id]));
    stop_all(s).await;
}

#[tokio::test]
async fn a_backend_request_reaches_every_process_exactly_once() {
    let (_nats, s) = cluster(2, "").await;
    let mut a = s[0].client_in_room("alice", "room1").await;
    let mut b = s[1].client_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    b.wait_join_of(&a.session_id).await;
    let (status, _) = s[1]
        .backend_request(
            "room1",
            &json!({"type": "message", "message": {"data": {"n": 1}}}),
        )
        .await;
    assert_eq!(status, 200);
    s[0].backend_request(
        "room1",
        &json!({"type": "message", "message": {"data": {"n": 2}}}),
    )
    .await;
    for c in [&mut a, &mut b] {
        let first = c
            .wait_for(|m| m["type"] == "event" && m["event"]["type"] == "message")
            .await;
        assert_eq!(first["event"]["message"]["data"]["n"], 1);
        let second = c.wait_for(|m| m["type"] == "event").await;
        assert_eq!(
            second["event"]["message"]["data"]["n"], 2,
            "duplicate or lost: {second}"
        );
    }
    stop_all(s).await;
}

#[tokio::test]
async fn participants_right_after_a_join_on_another_process_map_session_ids() {
    let (_nats, s) = cluster(2, "").await;
    let mut a = s[0].client_in_room("alice", "room1").await;
    a.wait_join_of(&a.session_id.clone()).await;
    let b = s[1].client_in_room("bob", "room1").await;
    // No waiting: the update goes to the other process right away.
    s[0].backend_request("room1", &json!({"type": "incall", "incall": {"incall": 7, "changed": [{"sessionId": "nc-bob", "inCall": 7}], "users": [{"sessionId": "nc-bob", "inCall": 7}]}})).await;
    let p = a.wait_for(|m| m["event"]["target"] == "participants").await;
    assert_eq!(
        p["event"]["update"]["users"][0]["sessionId"],
        b.session_id.as_str()
    );
    // Room state changed on one process is the same on the other: an
    // `all` update followed by an update of one user keeps both in sync.
    s[1].backend_request(
        "room1",
        &json!({"type": "incall", "incall": {"incall": 0, "all": true}}),
    )
    .await;
    let p = a.wait_for(|m| m["event"]["target"] == "participants").await;
    assert_eq!(p["event"]["update"]["all"], true);
    stop_all(s).await;
}

#[tokio::test]
async fn transient_data_is_one_state_across_processes() {
    let (_nats, s) = cluster(2, "").await;
    let mut a = s[0].client_in_room("alice", "room1").await;
    let mut b = s[1].client_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    a.send(json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": 1}}))
        .await;
    for c in [&mut a, &mut b] {
        let t = c.wait_for(|m| m["type"] == "transient").await;
        assert_eq!(
            t["transient"],
            json!({"type": "set", "key": "k", "value": 1})
        );
    }
    b.send(json!({"type": "transient", "transient": {"type": "remove", "key": "k"}}))
        .await;
    for c in [&mut a, &mut b] {
        let t = c.wait_for(|m| m["type"] == "transient").await;
        assert_eq!(
            t["transient"],
            json!({"type": "remove", "key": "k", "oldvalue": 1})
        );
    }
    // TTL honoured once: one remove event per session, then the marker.
    b.send(json!({"type": "transient", "transient": {"type": "set", "key": "t", "value": 2, "ttl": 300_000_000}})).await;
    for c in [&mut a, &mut b] {
        assert_eq!(
            c.wait_for(|m| m["type"] == "transient").await["transient"]["type"],
            "set"
        );
        let r = c.wait_for(|m| m["type"] == "transient").await;
        assert_eq!(
            r["transient"],
            json!({"type": "remove", "key": "t", "oldvalue": 2})
        );
    }
    a.send(json!({"type": "transient", "transient": {"type": "set", "key": "marker", "value": 3}}))
        .await;
    for c in [&mut a, &mut b] {
        let t = c.wait_for(|m| m["type"] == "transient").await;
        assert_eq!(
            t["transient"]["key"], "marker",
            "a second remove arrived: {t}"
        );
    }
    // A process that starts serving the room gets the state.
    let mut c3 = s[1].client_in_room("carol", "room1").await;
    let init = c3.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(
        init["transient"],
        json!({"type": "initial", "data": {"marker": 3}})
    );
    stop_all(s).await;
}

#[tokio::test]
async fn session_limits_count_sessions_on_all_processes() {
    let (_nats, s) = cluster(2, "sessionlimit = 2\n").await;
    let _a = s[0].client(Some("a")).await;
    let _b = s[1].client(Some("b")).await;
    let hub = s[1].server.as_ref().unwrap().hub.clone();
    eventually("counts are exchanged", Duration::from_secs(5), || {
        hub.remote_sessions("nc1") == 1
    })
    .await;
    let mut c = s[1].connect().await;
    c.expect_type("welcome").await;
    c.send(json!({"type": "hello", "hello": {"version": "1.0", "auth": {"url": s[1].nc.backend_url(), "params": {"userid": "c"}}}})).await;
    c.expect_error("session_limit_exceeded").await;
    stop_all(s).await;
}

#[tokio::test]
async fn resume_works_on_another_process() {
    let (_nats, s) = cluster(2, "").await;
    let a = s[0].client_in_room("alice", "room1").await;
    let mut b = s[1].client_in_room("bob", "room1").await;
    b.wait_join_of(&a.session_id).await;
    let (sid, rid) = (a.session_id.clone(), a.resume_id.clone());
    drop(a);
    b.message_to(
        json!({"type": "session", "sessionid": sid}),
        json!({"n": 1}),
    )
    .await;
    // Proves the message was routed before the resume.
    b.message_to(json!({"type": "user", "userid": "bob"}), json!({}))
        .await;
    let mut a2 = s[1].connect().await;
    a2.expect_type("welcome").await;
    a2.send(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": rid}}))
        .await;
    let h = a2.expect_type("hello").await;
    assert_eq!(h["hello"]["sessionid"], sid.as_str());
    let m = a2.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["n"], 1);
    // Still in the room, now on the second process.
    b.message_to(json!({"type": "room"}), json!({"n": 2})).await;
    assert_eq!(
        a2.wait_for(|m| m["type"] == "message").await["message"]["data"]["n"],
        2
    );
    a2.message_to(json!({"type": "room"}), json!({"n": 3}))
        .await;
    assert_eq!(
        b.wait_for(|m| m["type"] == "message").await["message"]["data"]["n"],
        3
    );
    stop_all(s).await;
}

#[tokio::test]
async fn sessions_of_a_killed_process_leave_and_nextcloud_is_told() {
    let (nats, s) = cluster(1, "").await;
    let nc = s[0].nc.clone();
    // A real second process, killed with SIGKILL (no goodbye).
    let mut child = ServerProcess::start(&config_text(
        &nc,
        &format!("[nats]\nurl = {}\n", nats.url()),
    ))
    .await;
    let hub = s[0].server.as_ref().unwrap().hub.clone();
    eventually(
        "the processes see each other",
        Duration::from_secs(10),
        || hub.known_processes() == 1,
    )
    .await;
    let mut a = s[0].client_in_room("alice", "room1").await;
    let mut b = Client::connect(&child.ws_url()).await;
    b.expect_type("welcome").await;
    b.hello_v1(&nc.backend_url(), json!({"userid": "bob"}))
        .await;
    b.join("room1", "nc-bob").await;
    a.wait_join_of(&b.session_id).await;
    assert_killed_member_leaves(&mut child, &mut a, &b.session_id, &nc).await;
    stop_all(s).await;
}

/// Kills `child` (SIGKILL, no goodbye): within the process timeout (5 s)
/// plus a heartbeat interval its member leaves for `a`, and Nextcloud is
/// told that `nc-bob` left.
async fn assert_killed_member_leaves(
    child: &mut ServerProcess,
    a: &mut Client,
    sid: &str,
    nc: &FakeNextcloud,
) {
    child.kill();
    let l = a
        .wait_for_within(Duration::from_secs(15), |m| m["event"]["type"] == "leave")
        .await;
    assert_eq!(l["event"]["leave"], json!([sid]));
    nc.wait_for("room", |r| {
        r["room"]["action"] == "leave" && r["room"]["sessionid"] == "nc-bob"
    })
    .await;
}

#[tokio::test]
async fn a_process_that_stops_cleanly_hands_its_sessions_to_the_others() {
    let (_nats, mut s) = cluster(2, "[sessions]\nresumetimeout = 2\n").await;
    let mut a = s[0].client_in_room("alice", "room1").await;
    let b = s[1].client_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    s.pop().unwrap().stop().await;
    // Bob's session is the other process's now: he has not left ...
    let early = tokio::time::timeout(
        Duration::from_secs(1),
        a.wait_for(|m| m["event"]["type"] == "leave"),
    )
    .await;
    assert!(early.is_err(), "{early:?}");
    // ... until nobody resumed it within resumetimeout.
    let l = a
        .wait_for_within(Duration::from_secs(4), |m| m["event"]["type"] == "leave")
        .await;
    assert_eq!(l["event"]["leave"], json!([b.session_id]));
    stop_all(s).await;
}

#[tokio::test]
async fn processes_carry_on_after_nats_restarts() {
    let (mut nats, s) = cluster(2, "").await;
    let mut a = s[0].client(Some("alice")).await;
    let mut b = s[1].client(Some("bob")).await;
    nats.restart().await;
    // Local delivery works meanwhile; cross-process delivery resumes once
    // the processes reconnected (async-nats retries by itself).
    let mut a_local = s[0].client(Some("carol")).await;
    a.message_to(
        json!({"type": "session", "sessionid": a_local.session_id}),
        json!({"local": 1}),
    )
    .await;
    assert_eq!(
        a_local.wait_for(|m| m["type"] == "message").await["message"]["data"]["local"],
        1
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        a.message_to(
            json!({"type": "session", "sessionid": b.session_id}),
            json!({"x": 1}),
        )
        .await;
        if let Ok(m) = tokio::time::timeout(Duration::from_millis(300), b.recv()).await {
            assert_eq!(m["message"]["data"]["x"], 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery after the NATS restart"
        );
    }
    stop_all(s).await;
}

#[tokio::test]
async fn dialout_reaches_an_internal_client_on_another_process() {
    let (_nats, s) = cluster(2, "").await;
    let (mut sip, _) = internal_client(&s[1].ws_url(), &["start-dialout"]).await;
    // The request arrives at the process without the internal client.
    let request = s[0].spawn_backend_request(
        "123",
        json!({"type": "dialout", "dialout": {"number": "+4930123"}}),
    );
    let m = sip.wait_for(|m| m["type"] == "internal").await;
    assert_eq!(m["internal"]["dialout"]["request"]["number"], "+4930123");
    let id = m["id"].as_str().unwrap().to_string();
    sip.send(json!({"id": id, "type": "internal", "internal": {"type": "dialout", "dialout": {"type": "status", "status": {"callid": "c-9", "status": "accepted"}}}})).await;
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["dialout"]["callid"], "c-9");
    stop_all(s).await;
}

/// A session that vanished while Nextcloud was asked about its join (its
/// resumed connection said bye) leaves no room behind, and Nextcloud hears
/// that it left.
#[tokio::test]
async fn no_room_stays_behind_a_session_that_vanished_during_its_join() {
    let (_nats, s) = cluster(1, "").await;
    let ts = &s[0];
    ts.nc.state.lock().unwrap().room_delay = Some(Duration::from_millis(500));
    let mut a = ts.client(Some("alice")).await;
    a.send(
        json!({"id": "j", "type": "room", "room": {"roomid": "room1", "sessionid": "nc-alice"}}),
    )
    .await;
    ts.nc
        .wait_for("room", |r| r["room"]["sessionid"] == "nc-alice")
        .await;
    // While Nextcloud thinks, the session moves to a new connection, which
    // says bye.
    let mut a2 = ts.connect().await;
    a2.expect_type("welcome").await;
    a2.send(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": a.resume_id}}))
        .await;
    a2.expect_type("hello").await;
    a2.send(json!({"id": "b", "type": "bye", "bye": {}})).await;
    a2.expect_type("bye").await;
    ts.nc
        .wait_for("room", |r| {
            r["room"]["action"] == "leave" && r["room"]["sessionid"] == "nc-alice"
        })
        .await;
    assert_eq!(ts.server.as_ref().unwrap().hub.room_count(), 0);
    stop_all(s).await;
}

/// `n` servers on one fake Nextcloud and one NATS, started one after the
/// other without waiting for heartbeats.
async fn fresh_cluster(n: usize) -> (NatsServer, Vec<TestServer>) {
    let nats = NatsServer::start().await;
    let nc = FakeNextcloud::start().await;
    let mut servers = Vec::new();
    for _ in 0..n {
        let conf = format!("[nats]\nurl = {}\n", nats.url());
        servers.push(TestServer::start_on(nc.clone(), &conf).await);
    }
    (nats, servers)
}

/// Right after start, a joiner's initial list has the members that joined
/// on the other process just before, in both directions.
#[tokio::test]
async fn a_fresh_cluster_shares_room_members_at_once() {
    let (_nats, s) = fresh_cluster(2).await;
    let a = s[0].client_in_room("alice", "room1").await;
    let mut b = s[1].client_in_room("bob", "room1").await;
    b.wait_join_of(&a.session_id).await;
    let c = s[1].client_in_room("carol", "room2").await;
    let mut d = s[0].client_in_room("dave", "room2").await;
    d.wait_join_of(&c.session_id).await;
    stop_all(s).await;
}

/// Right after start, a session resumes on the other process.
#[tokio::test]
async fn a_fresh_cluster_resumes_on_the_other_process() {
    let (_nats, s) = fresh_cluster(2).await;
    let a = s[0].client(Some("alice")).await;
    let (sid, rid) = (a.session_id.clone(), a.resume_id.clone());
    drop(a);
    let mut a2 = s[1].connect().await;
    a2.expect_type("welcome").await;
    a2.send(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": rid}}))
        .await;
    let h = a2.expect_type("hello").await;
    assert_eq!(h["hello"]["sessionid"], sid.as_str(), "{h}");
    stop_all(s).await;
}

/// A process killed right after start: its members leave everywhere and
/// Nextcloud is told.
#[tokio::test]
async fn a_process_killed_right_after_start_is_noticed() {
    let (nats, s) = fresh_cluster(1).await;
    let nc = s[0].nc.clone();
    let mut child = ServerProcess::start(&config_text(
        &nc,
        &format!("[nats]\nurl = {}\n", nats.url()),
    ))
    .await;
    let mut b = Client::connect(&child.ws_url()).await;
    b.expect_type("welcome").await;
    b.hello_v1(&nc.backend_url(), json!({"userid": "bob"}))
        .await;
    b.join("room1", "nc-bob").await;
    let mut a = s[0].client_in_room("alice", "room1").await;
    a.wait_join_of(&b.session_id).await;
    assert_killed_member_leaves(&mut child, &mut a, &b.session_id, &nc).await;
    stop_all(s).await;
}

/// A Talk client reconnecting to another process with the same Nextcloud
/// session replaces its old connection there.
#[tokio::test]
async fn a_reconnect_on_another_process_replaces_the_old_connection() {
    let (_nats, s) = cluster(2, "").await;
    let mut a = s[0].client_in_room("alice", "room1").await;
    let mut b = s[0].client_in_room("bob", "room1").await;
    b.wait_join_of(&a.session_id).await;
    let old = a.session_id.clone();
    let mut a2 = s[1].client(Some("alice")).await;
    a2.join("room1", "nc-alice").await;
    let bye = a.wait_for(|m| m["type"] == "bye").await;
    assert_eq!(bye["bye"]["reason"], "room_session_reconnected");
    let l = b.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([old]));
    b.send(json!({"type": "room", "room": {"roomid": ""}}))
        .await;
    s[0].nc
        .wait_for("room", |r| {
            r["room"]["action"] == "leave" && r["room"]["sessionid"] == "nc-bob"
        })
        .await;
    let told =
        s[0].nc.requests("room").into_iter().any(|r| {
            r.body["room"]["action"] == "leave" && r.body["room"]["sessionid"] == "nc-alice"
        });
    assert!(!told, "Nextcloud was told nc-alice left");
    stop_all(s).await;
}

/// Every process sees all bus traffic: a session message causes no error
/// reply from any process.
#[tokio::test]
async fn cross_process_messages_cause_no_errors() {
    let (_nats, s) = cluster(3, "").await;
    let mut a = s[0].client(Some("alice")).await;
    let mut b = s[1].client(Some("bob")).await;
    for i in 0..3 {
        a.send(json!({"id": format!("m{i}"), "type": "message", "message": {"recipient": {"type": "session", "sessionid": b.session_id}, "data": {"i": i}}})).await;
        let m = b.wait_for(|m| m["type"] == "message").await;
        assert_eq!(m["message"]["data"]["i"], i);
    }
    b.message_to(
        json!({"type": "session", "sessionid": a.session_id}),
        json!({"reply": true}),
    )
    .await;
    let next = a.recv().await;
    assert_eq!(next["type"], "message", "unexpected: {next}");
    assert_eq!(next["message"]["data"]["reply"], true);
    // A session that does not exist: nothing is answered, by no process
    // (as by the Go server); the next thing alice gets is bob's message.
    let gone = format!("{}xxxxxxxxxxxxxxxx", &b.session_id[..8]);
    a.send(json!({"id": "g", "type": "message", "message": {"recipient": {"type": "session", "sessionid": gone}, "data": {}}})).await;
    b.message_to(
        json!({"type": "session", "sessionid": a.session_id}),
        json!({"after": true}),
    )
    .await;
    let next = a.recv().await;
    assert_eq!(next["message"]["data"]["after"], true, "unexpected: {next}");
    stop_all(s).await;
}

/// Two servers on the NATS at `nats_url`, once they hear each other.
async fn pair_over(nats_url: &str) -> (TestServer, TestServer) {
    let extra = format!("[nats]\nurl = {nats_url}\n");
    let a = TestServer::start_with(&extra).await;
    let b = TestServer::start_on(a.nc.clone(), &extra).await;
    let (ha, hb) = (
        a.server.as_ref().unwrap().hub.clone(),
        b.server.as_ref().unwrap().hub.clone(),
    );
    eventually("the processes hear each other", TIMEOUT * 2, || {
        ha.known_processes() == 1 && hb.known_processes() == 1
    })
    .await;
    (a, b)
}

/// Two servers on a NATS that requires credentials, given in `[nats] url`.
async fn cluster_over(nats_url: &str) {
    let (a, b) = pair_over(nats_url).await;
    b.stop().await;
    a.stop().await;
}

#[tokio::test]
async fn nats_user_and_password_in_the_url_are_used() {
    let nats = NatsServer::start_with_args(&["--user", "sig", "--pass", "p@ss word"]).await;
    cluster_over(&format!("nats://sig:p%40ss%20word@127.0.0.1:{}", nats.port)).await;
}

#[tokio::test]
async fn a_nats_token_in_the_url_is_used() {
    let nats = NatsServer::start_with_args(&["--auth", "s3cret-token"]).await;
    cluster_over(&format!("nats://s3cret-token@127.0.0.1:{}", nats.port)).await;
}

#[tokio::test]
async fn a_stalled_nats_holds_senders_back_and_loses_nothing() {
    let (nats, s) = cluster(
        2,
        "[clients]\nmessagespersecond = 100000\nmessageburst = 100000\n\
         bytespersecond = 1073741824\nbyteburst = 1073741824\n[nats]\npublishqueue = 50\n",
    )
    .await;
    let mut a = s[0].client_in_room("alice", "room1").await;
    let mut b = s[1].client_in_room("bob", "room1").await;
    b.wait_join_of(&a.session_id).await;
    a.wait_join_of(&b.session_id).await;
    // NATS reads nothing: the kernel's buffers, the NATS client's few
    // commands and then the 50-message publish queue fill up; past that the
    // sender is not read any more (before, the queue dropped messages).
    nats.signal("STOP");
    const N: usize = 1000;
    let pad = "x".repeat(60_000);
    let sender = tokio::spawn(async move {
        for seq in 0..N {
            a.message_to(json!({"type": "room"}), json!({"seq": seq, "pad": pad}))
                .await;
        }
        a
    });
    let hub = s[0].server.as_ref().unwrap().hub.clone();
    eventually("the sender is held back", Duration::from_secs(20), || {
        hub.metrics.client_bus_waits.get() > 0
    })
    .await;
    nats.signal("CONT");
    for seq in 0..N {
        let m = b
            .wait_for_within(Duration::from_secs(60), |m| m["type"] == "message")
            .await;
        assert_eq!(m["message"]["data"]["seq"], seq, "lost or out of order");
    }
    sender.await.unwrap();
    stop_all(s).await;
}

/// A test CA and a certificate for 127.0.0.1 signed by it, made with the
/// `openssl` command: (CA certificate, leaf certificate, leaf key) paths.
fn test_certificates(dir: &std::path::Path) -> (String, String, String) {
    let p = |f: &str| dir.join(f).to_str().unwrap().to_string();
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let steps: [Vec<String>; 3] = [
        ["req", "-x509"]
            .iter()
            .chain(&ec)
            .map(|s| s.to_string())
            .chain(["-keyout", &p("ca.key"), "-out", &p("ca.pem")].map(String::from))
            .chain(["-days", "2", "-subj", "/CN=spreed-test-ca"].map(String::from))
            .collect(),
        ["req"]
            .iter()
            .chain(&ec)
            .map(|s| s.to_string())
            .chain(["-keyout", &p("leaf.key"), "-out", &p("leaf.csr")].map(String::from))
            .chain(["-subj", "/CN=127.0.0.1"].map(String::from))
            .collect(),
        [
            "x509",
            "-req",
            "-in",
            &p("leaf.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-CAcreateserial",
            "-out",
            &p("leaf.pem"),
            "-days",
            "2",
            "-extfile",
            &p("leaf.ext"),
        ]
        .map(String::from)
        .to_vec(),
    ];
    for args in steps {
        let out = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl must be installed");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    }
    (p("ca.pem"), p("leaf.pem"), p("leaf.key"))
}

#[tokio::test]
async fn processes_cluster_over_a_tls_nats_server() {
    let dir = fresh_dir("nats-tls");
    let (ca, cert, key) = test_certificates(&dir);
    // The NATS server refuses clients that do not speak TLS.
    let nats = NatsServer::start_with_args(&["--tls", "--tlscert", &cert, "--tlskey", &key]).await;
    let nc = FakeNextcloud::start().await;
    let conf = config_text(
        &nc,
        &format!("[nats]\nurl = tls://127.0.0.1:{}\n", nats.port),
    );
    // Trust in the CA comes from the system store, here SSL_CERT_FILE (as
    // for the Go server, whose [nats] section has only the URL).
    let env = [("SSL_CERT_FILE", ca.as_str())];
    let p1 = ServerProcess::start_with_env(&conf, &env).await;
    let p2 = ServerProcess::start_with_env(&conf, &env).await;
    let mut a = Client::connect(&p1.ws_url()).await;
    a.expect_type("welcome").await;
    a.hello_v1(&nc.backend_url(), json!({"userid": "alice"}))
        .await;
    a.join("room1", "nc-alice").await;
    let mut b = Client::connect(&p2.ws_url()).await;
    b.expect_type("welcome").await;
    b.hello_v1(&nc.backend_url(), json!({"userid": "bob"}))
        .await;
    b.join("room1", "nc-bob").await;
    // Bob's process learned of alice over the TLS bus, and back.
    b.wait_join_of(&a.session_id).await;
    a.wait_join_of(&b.session_id).await;
    a.message_to(
        json!({"type": "session", "sessionid": b.session_id}),
        json!({"over": "tls"}),
    )
    .await;
    let m = b.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["over"], "tls");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A client's resume id becomes part of a NATS subject only when it starts
/// with a process id: one with a space (not a subject) broke the process's
/// NATS connection (the server closes it for a protocol violation, and what
/// was queued behind was lost).
#[tokio::test]
async fn a_resume_id_that_is_no_subject_leaves_nats_alone() {
    let monitor = free_port();
    let nats = NatsServer::start_with_args(&["-m", &monitor.to_string()]).await;
    let (a, b) = pair_over(&nats.url()).await;
    for bad in ["ab cdefgh0123", "ab.cdefgh0123", "ab\tcdefgh0123"] {
        let mut c = Client::connect(&a.ws_url()).await;
        c.expect_type("welcome").await;
        c.send(json!({"id": "r", "type": "hello", "hello": {"version": "1.0", "resumeid": bad}}))
            .await;
        c.expect_error("no_such_session").await;
    }
    // Everything sent before has been through NATS once a message went
    // from one process to the other and back.
    let mut x = a.client_in_room("alice", "room1").await;
    let mut y = b.client_in_room("bob", "room1").await;
    x.wait_join_of(&y.session_id.clone()).await;
    x.message_to(
        json!({"type": "session", "sessionid": y.session_id}),
        json!({"n": 1}),
    )
    .await;
    assert_eq!(
        y.wait_for(|m| m["type"] == "message").await["message"]["data"]["n"],
        1
    );
    let closed: Value = reqwest::get(format!("http://127.0.0.1:{monitor}/connz?state=closed"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // (The test's own port probe at start closes too, having sent nothing.)
    let servers_closed = closed["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["in_msgs"] != 0 || c["out_msgs"] != 0)
        .count();
    assert_eq!(
        servers_closed, 0,
        "no server's NATS connection was closed: {closed}"
    );
    b.stop().await;
    a.stop().await;
}

/// `/api/v1/serverinfo`'s `nats.connected` of a server.
async fn nats_connected(ts: &TestServer) -> bool {
    let v: Value = reqwest::get(format!("{}/api/v1/serverinfo", ts.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["nats"]["connected"] == true
}

/// While NATS is down, a backend request that must reach every process is
/// answered 503 (`bus_unavailable`): a 200 would claim an effect no process
/// may ever apply; Nextcloud can send it again.
#[tokio::test]
async fn backend_requests_get_503_while_nats_is_down() {
    let (mut nats, s) = cluster(2, "").await;
    let msg = json!({"type": "message", "message": {"data": {"n": 1}}});
    let (status, _) = s[0].backend_request("room1", &msg).await;
    assert_eq!(status, 200);
    nats.stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while nats_connected(&s[0]).await {
        assert!(tokio::time::Instant::now() < deadline, "never disconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = s[0].backend_request("room1", &msg).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "bus_unavailable");
    nats.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !nats_connected(&s[0]).await {
        assert!(tokio::time::Instant::now() < deadline, "never reconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _) = s[0].backend_request("room1", &msg).await;
    assert_eq!(status, 200);
    stop_all(s).await;
}
