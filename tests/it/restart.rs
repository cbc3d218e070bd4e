//! A single process keeps its sessions across a restart (`[sessions]
//! statefile`, by default `sessions.state` in `$STATE_DIRECTORY`): the
//! binary as a child process, stopped with SIGTERM and started again.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};

use crate::support::*;

/// Messages until the connection closes, and its close code.
async fn until_close(c: &mut Client) -> (Vec<Value>, Option<u16>) {
    let mut seen = Vec::new();
    loop {
        match c.recv_or_close().await {
            Ok(m) => seen.push(m),
            Err(code) => return (seen, code),
        }
    }
}

fn is_leave(m: &Value) -> bool {
    m["type"] == "event" && m["event"]["type"] == "leave"
}

/// Pings to Nextcloud that name `nc_session`.
fn pinged(nc: &FakeNextcloud, nc_session: &str) -> usize {
    nc.requests("ping")
        .iter()
        .filter(|r| {
            r.body["ping"]["entries"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["sessionid"] == nc_session))
        })
        .count()
}

#[tokio::test]
async fn sigterm_keeps_the_sessions_for_the_next_start_without_anyone_leaving() {
    let nc = FakeNextcloud::start().await;
    let state = fresh_dir("spreed-state");
    let node = Node::start(
        &nc,
        "[backend]\npinginterval = 1\n",
        &[("STATE_DIRECTORY", state.to_str().unwrap())],
    )
    .await;
    let mut alice = node.client_in_room(&nc, "alice", "room1").await;
    let mut bob = node.client_in_room(&nc, "bob", "room1").await;
    alice.wait_join_of(&bob.session_id).await;
    alice
        .send(json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": 7}}))
        .await;
    bob.wait_for(|m| m["type"] == "transient").await;

    node.signal("-TERM");
    // Closed with "service restart", without a bye (the session stays).
    for c in [&mut alice, &mut bob] {
        let (seen, code) = until_close(c).await;
        assert_eq!(code, Some(1012), "{seen:?}");
        assert!(seen.iter().all(|m| m["type"] != "bye"), "{seen:?}");
    }
    let mut node = node;
    assert_eq!(node.exit_code(TIMEOUT).await, Some(0));
    let file = state.join("sessions.state");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let requests_before = nc.requests("room").len();

    let node = node.restart().await;
    node.proc
        .wait_line(0, |l| l.contains("sessions kept from before the restart"))
        .await;
    assert!(!file.exists(), "read once, then deleted");
    let (mut alice2, hello) = resume(&node, &alice.resume_id).await;
    assert_eq!(
        hello["hello"]["sessionid"],
        alice.session_id.as_str(),
        "{hello}"
    );
    let (mut bob2, hello) = resume(&node, &bob.resume_id).await;
    assert_eq!(
        hello["hello"]["sessionid"],
        bob.session_id.as_str(),
        "{hello}"
    );

    // Still in the room: a room message reaches the other, and no leave
    // was seen on the way.
    alice2
        .message_to(json!({"type": "room"}), json!({"after": "restart"}))
        .await;
    let mut seen = Vec::new();
    loop {
        let m = bob2.recv().await;
        let done = m["type"] == "message" && m["message"]["data"]["after"] == "restart";
        seen.push(m);
        if done {
            break;
        }
    }
    assert!(!seen.iter().any(is_leave), "{seen:?}");
    // A newcomer finds both in the room, with the room's transient data.
    let mut carol = node.client_in_room(&nc, "carol", "room1").await;
    carol.wait_join_of(&alice.session_id).await;
    let init = carol.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(init["transient"]["data"], json!({"k": 7}), "{init}");
    for c in [&mut alice2, &mut bob2] {
        c.wait_join_of(&carol.session_id).await;
    }

    // Nextcloud was told nothing: no leave, and the pings after the
    // restart go on naming both.
    let pings_before = (pinged(&nc, "nc-alice"), pinged(&nc, "nc-bob"));
    nc.wait_all("ping", |_| {
        pinged(&nc, "nc-alice") > pings_before.0 && pinged(&nc, "nc-bob") > pings_before.1
    })
    .await;
    let room = nc.requests("room");
    assert!(
        room.iter().all(|r| r.body["room"]["action"] != "leave"),
        "{room:?}"
    );
    // Only carol's join was asked after the restart.
    assert_eq!(room.len(), requests_before + 1, "{room:?}");
    let _ = std::fs::remove_dir_all(&state);
}

/// Writes `bytes` as the state file with `mode`.
fn put(file: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(file, bytes).unwrap();
    std::fs::set_permissions(file, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[tokio::test]
async fn a_corrupt_stale_foreign_or_other_format_state_file_is_ignored_with_a_log_line() {
    let nc = FakeNextcloud::start().await;
    let dir = fresh_dir("spreed-state");
    let file = dir.join("kept.state");
    let extra = format!("[sessions]\nstatefile = {}\n", file.display());
    let node = Node::start(&nc, &extra, &[]).await;
    let alice = node.client_in_room(&nc, "alice", "room1").await;
    node.signal("-TERM");
    let mut node = node;
    assert_eq!(node.exit_code(TIMEOUT).await, Some(0));
    let good = std::fs::read(&file).unwrap();
    let mut parsed: Value = serde_json::from_slice(&good).unwrap();
    let with = |key: &str, v: Value| {
        let mut p = parsed.clone();
        p[key] = v;
        serde_json::to_vec(&p).unwrap()
    };
    let saved_at = parsed["saved_at_ms"].as_u64().unwrap();
    let cases: Vec<(Vec<u8>, u32, &str)> = vec![
        (good[..good.len() / 2].to_vec(), 0o600, "corrupt"),
        (with("format", json!(99)), 0o600, "format 99"),
        (
            with("saved_at_ms", json!(saved_at - 3_600_000)),
            0o600,
            "stale",
        ),
        (good.clone(), 0o644, "mode 644"),
    ];
    for (bytes, mode, why) in cases {
        put(&file, &bytes, mode);
        let next = node.restart().await;
        next.proc
            .wait_line(0, |l| l.contains("state file ignored") && l.contains(why))
            .await;
        assert!(!file.exists(), "{why}: read once, then deleted");
        let mut c = Client::connect(&next.ws_url()).await;
        c.expect_type("welcome").await;
        c.send(json!({"id": "r", "type": "hello", "hello": {"version": "1.0", "resumeid": alice.resume_id}}))
            .await;
        c.expect_error("no_such_session").await;
        next.signal("-TERM");
        node = next;
        assert_eq!(node.exit_code(TIMEOUT).await, Some(0));
    }
    // The same file untouched is taken (so the cases above failed for
    // their reason alone); its session is in the room again.
    parsed["saved_at_ms"] = json!(saved_at.max(now_ms() - 1000));
    put(&file, &serde_json::to_vec(&parsed).unwrap(), 0o600);
    let next = node.restart().await;
    next.proc
        .wait_line(0, |l| l.contains("sessions kept from before the restart"))
        .await;
    let (_c, hello) = resume(&next, &alice.resume_id).await;
    assert_eq!(
        hello["hello"]["sessionid"],
        alice.session_id.as_str(),
        "{hello}"
    );
    assert!(nc
        .requests("room")
        .iter()
        .all(|r| r.body["room"]["action"] != "leave"));
    drop(next);
    let _ = std::fs::remove_dir_all(&dir);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn an_internal_client_and_its_virtual_session_are_kept_across_a_restart() {
    let nc = FakeNextcloud::start().await;
    let state = fresh_dir("spreed-state");
    let node = Node::start(&nc, "", &[("STATE_DIRECTORY", state.to_str().unwrap())]).await;
    let mut alice = node.client_in_room(&nc, "alice", "room1").await;
    let mut sip = Client::connect(&node.ws_url()).await;
    sip.expect_type("welcome").await;
    sip.send(internal_hello("0123456789012345678901234567890123456789"))
        .await;
    let h = sip.expect_type("hello").await;
    let (sip_sid, sip_resume) = (
        h["hello"]["sessionid"].as_str().unwrap().to_string(),
        h["hello"]["resumeid"].as_str().unwrap().to_string(),
    );
    sip.send(
        json!({"type": "internal", "internal": {"type": "addsession", "addsession": {
        "sessionid": "phone-1", "roomid": "room1", "userid": "", "flags": 1}}}),
    )
    .await;
    let me = alice.session_id.clone();
    let j = alice
        .wait_for(|m| {
            m["event"]["type"] == "join" && m["event"]["join"][0]["sessionid"] != me.as_str()
        })
        .await;
    let vsid = j["event"]["join"][0]["sessionid"]
        .as_str()
        .unwrap()
        .to_string();

    node.signal("-TERM");
    let mut node = node;
    assert_eq!(node.exit_code(TIMEOUT).await, Some(0));
    let node = node.restart().await;
    let (mut sip2, hello) = resume(&node, &sip_resume).await;
    assert_eq!(hello["hello"]["sessionid"], sip_sid.as_str(), "{hello}");
    let (mut alice2, hello) = resume(&node, &alice.resume_id).await;
    assert_eq!(
        hello["hello"]["sessionid"],
        alice.session_id.as_str(),
        "{hello}"
    );

    // A newcomer finds the phone in the room.
    let mut carol = node.client_in_room(&nc, "carol", "room1").await;
    carol.wait_join_of(&vsid).await;
    // Nextcloud heard of no removal; the internal client still owns it.
    assert!(nc
        .requests("session")
        .iter()
        .all(|r| r.body["session"]["action"] != "remove"));
    sip2.send(
        json!({"type": "internal", "internal": {"type": "removesession", "removesession": {
        "sessionid": "phone-1", "roomid": "room1"}}}),
    )
    .await;
    let left = alice2.wait_for(is_leave).await;
    assert_eq!(left["event"]["leave"], json!([vsid]), "{left}");
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test]
async fn a_state_file_with_a_huge_time_to_live_is_taken_with_the_ttl_clamped() {
    let nc = FakeNextcloud::start().await;
    let dir = fresh_dir("spreed-state");
    let file = dir.join("kept.state");
    let extra = format!(
        "[sessions]\nstatefile = {}\n[transient]\nmaxttl = 1\n",
        file.display()
    );
    let node = Node::start(&nc, &extra, &[]).await;
    let alice = node.client_in_room(&nc, "alice", "room1").await;
    node.signal("-TERM");
    let mut node = node;
    assert_eq!(node.exit_code(TIMEOUT).await, Some(0));
    // A crafted file: a transient value living for u64::MAX milliseconds,
    // far beyond `[transient] maxttl` (1 s here).
    let mut parsed: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    parsed["rooms"][0]["transient"] =
        json!([{"key": "k", "value": 7, "version": 1, "ttl_ms": u64::MAX}]);
    parsed["rooms"][0]["transient_version"] = json!(1);
    put(&file, &serde_json::to_vec(&parsed).unwrap(), 0o600);
    let next = node.restart().await;
    next.proc
        .wait_line(0, |l| l.contains("sessions kept from before the restart"))
        .await;
    let (_alice2, hello) = resume(&next, &alice.resume_id).await;
    assert_eq!(
        hello["hello"]["sessionid"],
        alice.session_id.as_str(),
        "{hello}"
    );
    let mut carol = next.client_in_room(&nc, "carol", "room1").await;
    let init = carol.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(init["transient"]["data"], json!({"k": 7}), "{init}");
    // It lives no longer than maxttl allows (it lived for ever before).
    let gone = carol
        .wait_for(|m| m["type"] == "transient" && m["transient"]["type"] == "remove")
        .await;
    assert_eq!(gone["transient"]["key"], "k", "{gone}");
    drop(next);
    let _ = std::fs::remove_dir_all(&dir);
}
