//! What the real Talk client needs from room and participant events:
//! complete participant lists, events in `changed-users` mode, reconnects
//! with the same Nextcloud session, and guests removed from their room.

use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

/// Alice and bob in `room1` (joined with `nc-alice` / `nc-bob`), all join
/// events consumed.
async fn pair(ts: &TestServer) -> (Client, Client) {
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    b.wait_join_of(&b.session_id.clone()).await;
    (a, b)
}

fn entry(sid: &str, nc: &str, in_call: u32) -> Value {
    json!({"sessionId": sid, "nextcloudSessionId": nc, "inCall": in_call})
}

async fn participants_update(c: &mut Client) -> Value {
    let p = c
        .wait_for(|m| m["event"]["target"] == "participants" && m["event"]["type"] == "update")
        .await;
    p["event"]["update"].clone()
}

/// The case: a late joiner of the call learns who is already in it
/// only from a complete `users` list.
#[tokio::test]
async fn incall_and_participants_updates_carry_the_complete_list() {
    let ts = TestServer::start().await;
    let (mut a, mut b) = pair(&ts).await;
    let (asid, bsid) = (a.session_id.clone(), b.session_id.clone());
    for kind in ["incall", "participants"] {
        let body = json!({"changed": [{"sessionId": "nc-bob", "inCall": 7}],
            "users": [{"sessionId": "nc-alice", "inCall": 7}, {"sessionId": "nc-bob", "inCall": 7}]});
        let mut req = json!({"type": kind});
        req[kind] = body;
        if kind == "incall" {
            req[kind]["incall"] = json!(7);
        }
        ts.backend_request("room1", &req).await;
        for c in [&mut a, &mut b] {
            let up = participants_update(c).await;
            assert_eq!(up["changed"], json!([entry(&bsid, "nc-bob", 7)]), "{kind}");
            assert_eq!(
                up["users"],
                json!([entry(&asid, "nc-alice", 7), entry(&bsid, "nc-bob", 7)]),
                "{kind}"
            );
        }
    }
    ts.stop().await;
}

/// `changed-users`: Nextcloud sends only what changed; the server completes
/// `users` from what it kept of alice's earlier change.
#[tokio::test]
async fn changed_users_mode_completes_the_list_from_earlier_changes() {
    let ts = TestServer::start().await;
    let (mut a, mut b) = pair(&ts).await;
    let (asid, bsid) = (a.session_id.clone(), b.session_id.clone());
    ts.backend_request("room1", &json!({"type": "incall", "incall": {"incall": 7, "changed": [{"sessionId": "nc-alice", "inCall": 7}]}})).await;
    for c in [&mut a, &mut b] {
        let up = participants_update(c).await;
        assert_eq!(up["users"], json!([entry(&asid, "nc-alice", 7)]));
    }
    ts.backend_request("room1", &json!({"type": "incall", "incall": {"incall": 7, "changed": [{"sessionId": "nc-bob", "inCall": 7}]}})).await;
    for c in [&mut a, &mut b] {
        let up = participants_update(c).await;
        assert_eq!(up["changed"], json!([entry(&bsid, "nc-bob", 7)]));
        assert_eq!(
            up["users"],
            json!([entry(&asid, "nc-alice", 7), entry(&bsid, "nc-bob", 7)])
        );
    }
    ts.backend_request("room1", &json!({"type": "participants", "participants": {"changed": [{"sessionId": "nc-alice", "participantType": 1}]}})).await;
    for c in [&mut a, &mut b] {
        let up = participants_update(c).await;
        assert_eq!(
            up["changed"],
            json!([{"sessionId": asid, "nextcloudSessionId": "nc-alice", "inCall": 7, "participantType": 1}])
        );
        assert_eq!(up["users"].as_array().unwrap().len(), 2, "{up}");
    }
    ts.stop().await;
}

fn roomlist(m: &Value, kind: &str) -> bool {
    m["type"] == "event" && m["event"]["target"] == "roomlist" && m["event"]["type"] == kind
}

/// `changed-users`: `update`, `invite`, `disinvite` and `delete` without
/// `userids` / `alluserids` still reach every session of the room.
#[tokio::test]
async fn room_events_without_user_lists_reach_the_members() {
    let ts = TestServer::start().await;
    let (mut a, mut b) = pair(&ts).await;
    let mut g = ts.client(None).await;
    g.join("room1", "nc-guest").await;
    a.wait_join_of(&g.session_id).await;
    b.wait_join_of(&g.session_id).await;
    let mut carol = ts.client(Some("carol")).await;

    // update: the room message and a roomlist update to every member.
    ts.backend_request(
        "room1",
        &json!({"type": "update", "update": {"properties": {"name": "New"}}}),
    )
    .await;
    for c in [&mut a, &mut b, &mut g] {
        let m = c.wait_for(|m| roomlist(m, "update")).await;
        assert_eq!(m["event"]["update"]["properties"]["name"], "New");
    }

    // invite: invite to the invited user, update to the members.
    ts.backend_request(
        "room1",
        &json!({"type": "invite", "invite": {"userids": ["carol"], "properties": {"name": "New"}}}),
    )
    .await;
    let m = carol.wait_for(|m| m["type"] == "event").await;
    assert!(roomlist(&m, "invite"), "{m}");
    for c in [&mut a, &mut b, &mut g] {
        c.wait_for(|m| roomlist(m, "update")).await;
    }

    // disinvite: disinvite to bob (whose session ends), update to the others.
    ts.backend_request(
        "room1",
        &json!({"type": "disinvite", "disinvite": {"userids": ["bob"], "properties": {"name": "New"}}}),
    )
    .await;
    let m = b.wait_for(|m| roomlist(m, "disinvite")).await;
    assert_eq!(m["event"]["disinvite"]["reason"], "disinvited");
    assert_eq!(b.expect_close().await, Some(1000));
    for c in [&mut a, &mut g] {
        c.wait_for(|m| roomlist(m, "update")).await;
    }

    // delete: every member is told (reason deleted) and removed.
    ts.backend_request("room1", &json!({"type": "delete", "delete": {}}))
        .await;
    for c in [&mut a, &mut g] {
        let m = c.wait_for(|m| roomlist(m, "disinvite")).await;
        assert_eq!(m["event"]["disinvite"]["reason"], "deleted");
        c.wait_for(|m| m["type"] == "room" && m["room"]["roomid"] == "")
            .await;
    }
    assert_eq!(ts.server.as_ref().unwrap().hub.room_count(), 0);
    ts.stop().await;
}

/// A Talk client reconnecting (new connection, same Nextcloud session id)
/// replaces its old connection; Nextcloud is not told that it left.
#[tokio::test]
async fn same_nextcloud_session_on_a_new_connection_replaces_the_old_one() {
    let ts = TestServer::start().await;
    let (mut a, mut b) = pair(&ts).await;
    let old = a.session_id.clone();
    let mut a2 = ts.client(Some("alice")).await;
    a2.join("room1", "nc-alice").await;
    let bye = a.expect_type("bye").await;
    assert_eq!(bye["bye"]["reason"], "room_session_reconnected");
    a.expect_close().await;
    // Bob sees the old session leave and the new one join.
    let l = b.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([old]));
    b.wait_join_of(&a2.session_id).await;
    // The new session gets the room's events; Nextcloud never heard a leave
    // of nc-alice (bob's later leave proves the order of leave notices).
    b.send(json!({"type": "room", "room": {"roomid": ""}}))
        .await;
    ts.nc
        .wait_for("room", |r| {
            r["room"]["action"] == "leave" && r["room"]["sessionid"] == "nc-bob"
        })
        .await;
    let leaves: Vec<Recorded> = ts
        .nc
        .requests("room")
        .into_iter()
        .filter(|r| {
            r.body["room"]["action"] == "leave" && r.body["room"]["sessionid"] == "nc-alice"
        })
        .collect();
    assert!(leaves.is_empty(), "Nextcloud was told nc-alice left");
    // The old session is gone for good: its resume id is refused.
    ts.assert_resume_refused(&a.resume_id).await;
    let l = a2.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([b.session_id]));
    ts.stop().await;
}

/// A guest that Nextcloud removes from its room (the room is deleted) must
/// join one again within the room timeout, like a guest that never joined.
#[tokio::test]
async fn guests_removed_by_nextcloud_get_the_room_deadline_again() {
    let ts = TestServer::start_with("[clients]\nroomtimeout = 1\n").await;
    let mut g = ts.client(None).await;
    g.join("room1", "nc-g").await;
    let mut u = ts.client(Some("alice")).await;
    u.join("room2", "nc-alice").await;
    ts.backend_request("room1", &json!({"type": "delete", "delete": {}}))
        .await;
    g.wait_for(|m| m["type"] == "room" && m["room"]["roomid"] == "")
        .await;
    let bye = g.wait_for(|m| m["type"] == "bye").await;
    assert_eq!(bye["bye"]["reason"], "room_join_timeout");
    g.expect_close().await;
    // A user removed the same way stays connected.
    ts.backend_request(
        "room2",
        &json!({"type": "delete", "delete": {"userids": ["alice"]}}),
    )
    .await;
    u.wait_for(|m| m["type"] == "room" && m["room"]["roomid"] == "")
        .await;
    u.expect_nothing(Duration::from_millis(2500)).await;
    ts.stop().await;
}
