//! One room state on every process (issue 21, item 2; the Go server's
//! strukturag#1261 and #1305): with `changed-users` Nextcloud sends only
//! changes, so a process that starts serving a room late must get the
//! participant state the others built, and an update Nextcloud sends while
//! a join is pending must reach the members once the join is known.

use std::time::Duration;

use serde_json::{json, Value};

use super::{cluster, stop_all};
use crate::support::*;

/// The entry of `users` of a `participants` `update` whose Nextcloud
/// session id is `nc`.
fn user_entry<'a>(update: &'a Value, nc: &str) -> Option<&'a Value> {
    update["event"]["update"]["users"]
        .as_array()?
        .iter()
        .find(|u| u["nextcloudSessionId"] == nc)
}

fn is_update(m: &Value) -> bool {
    m["type"] == "event" && m["event"]["target"] == "participants" && m["event"]["type"] == "update"
}

#[tokio::test]
async fn a_sip_bridge_joining_on_another_process_keeps_everybodys_in_call() {
    let (_nats, s) = cluster(2, "").await;
    let mut alice = s[0].client_in_room("alice", "r").await;
    // Alice is in the call; Nextcloud (changed-users) sends only the change.
    let incall = |nc: &str, flags: u64| json!({"type": "incall", "incall": {"incall": flags, "changed": [{"sessionId": nc, "inCall": flags, "participantType": 3}]}});
    assert_eq!(
        s[0].backend_request("r", &incall("nc-alice", 7)).await.0,
        200
    );
    alice.wait_for(is_update).await;
    // The SIP bridge is the first member of the room on the other process.
    let (mut sip, _) = internal_client(&s[1].ws_url(), &[]).await;
    sip.send(json!({"id": "j", "type": "room", "room": {"roomid": "r"}}))
        .await;
    sip.wait_for(|m| m["type"] == "room").await;
    // A phone joins the call through it; Nextcloud tells the process of the
    // bridge. Everybody's update still lists alice in the call.
    assert_eq!(
        s[1].backend_request("r", &incall("nc-phone", 1)).await.0,
        200
    );
    let u = sip
        .wait_for(|m| is_update(m) && user_entry(m, "nc-phone").is_some())
        .await;
    let a = user_entry(&u, "nc-alice").unwrap_or_else(|| panic!("alice dropped: {u}"));
    assert_eq!(a["inCall"], 7);
    assert_eq!(a["sessionId"], alice.session_id.as_str());
    let u = alice
        .wait_for(|m| is_update(m) && user_entry(m, "nc-phone").is_some())
        .await;
    assert_eq!(user_entry(&u, "nc-alice").unwrap()["inCall"], 7);
    // A client joining there later is told the same.
    let mut bob = s[1].client_in_room("bob", "r").await;
    assert_eq!(s[1].backend_request("r", &incall("nc-bob", 7)).await.0, 200);
    let u = bob
        .wait_for(|m| is_update(m) && user_entry(m, "nc-bob").is_some())
        .await;
    assert_eq!(user_entry(&u, "nc-alice").unwrap()["inCall"], 7);
    assert_eq!(user_entry(&u, "nc-phone").unwrap()["inCall"], 1);
    stop_all(s).await;
}

#[tokio::test]
async fn an_update_during_a_slow_join_reaches_the_other_process_once_the_join_is_known() {
    let (_nats, s) = cluster(2, "").await;
    let mut alice = s[0].client_in_room("alice", "r").await;
    let mut bob = s[1].client(Some("bob")).await;
    s[1].nc.state.lock().unwrap().room_delay = Some(Duration::from_millis(1500));
    bob.send(json!({"id": "join", "type": "room", "room": {"roomid": "r", "sessionid": "nc-bob"}}))
        .await;
    s[1].nc
        .wait_for("room", |r| r["room"]["sessionid"] == "nc-bob")
        .await;
    // Nextcloud added bob and tells a process while his join is pending:
    // nobody knows which signaling session nc-bob is yet.
    let update = json!({"type": "participants", "participants": {"changed": [{"sessionId": "nc-bob", "inCall": 3, "participantType": 3}]}});
    assert_eq!(s[0].backend_request("r", &update).await.0, 200);
    bob.wait_for(|m| m["type"] == "room").await;
    // Once bob's join is known, alice on the other process gets the update
    // with his session id, and so does bob.
    let bob_sid = bob.session_id.clone();
    let u = alice
        .wait_for(|m| {
            is_update(m)
                && user_entry(m, "nc-bob").is_some_and(|e| e["sessionId"] == bob_sid.as_str())
        })
        .await;
    assert_eq!(user_entry(&u, "nc-bob").unwrap()["inCall"], 3);
    let bob_sid = bob.session_id.clone();
    bob.wait_for(|m| {
        is_update(m) && user_entry(m, "nc-bob").is_some_and(|e| e["sessionId"] == bob_sid.as_str())
    })
    .await;
    stop_all(s).await;
}
