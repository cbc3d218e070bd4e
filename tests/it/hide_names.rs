//! `hide-displaynames`: a session with it sees others' join events without
//! `user.displayname`; everybody else sees the names.

use crate::support::*;
use serde_json::Value;

/// The `user` of `sid`'s entry in a join event `m`, if it is one.
fn user_in(m: &Value, sid: &str) -> Option<Value> {
    m["event"]["join"]
        .as_array()?
        .iter()
        .find(|e| e["sessionid"] == sid)
        .map(|e| e.get("user").cloned().unwrap_or(Value::Null))
}

async fn join_user(c: &mut Client, sid: &str) -> Value {
    let m = c
        .wait_for(|m| m["event"]["type"] == "join" && user_in(m, sid).is_some())
        .await;
    user_in(&m, sid).unwrap()
}

#[tokio::test]
async fn join_events_hide_display_names_from_those_who_must_not_see_them() {
    let nc = FakeNextcloud::start().await;
    nc.state
        .lock()
        .unwrap()
        .permissions
        .insert("nc-bob".into(), vec!["hide-displaynames".into()]);
    let ts = TestServer::start_on(nc, "").await;
    let mut alice = ts.client_in_room("alice", "room1").await;
    let a = alice.session_id.clone();
    let mut bob = ts.client_in_room("bob", "room1").await;
    let b = bob.session_id.clone();
    // Bob's list of the room: alice without her name.
    assert_eq!(join_user(&mut bob, &a).await, Value::Null);
    // Alice sees bob's name.
    assert_eq!(join_user(&mut alice, &b).await["displayname"], "User bob");
    // A later joiner: named for alice, not for bob.
    let carol = ts.client_in_room("carol", "room1").await;
    let c = carol.session_id.clone();
    assert_eq!(join_user(&mut alice, &c).await["displayname"], "User carol");
    assert_eq!(join_user(&mut bob, &c).await, Value::Null);
    ts.stop().await;
}
