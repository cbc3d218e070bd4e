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

/// Reads until the `message` whose data is `{"marker": marker}`; returns
/// the `data.type`s of the messages before it.
async fn types_until(c: &mut Client, marker: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let m = c.recv().await;
        if m["type"] != "message" {
            continue;
        }
        let data = &m["message"]["data"];
        if data["marker"] == marker {
            return seen;
        }
        seen.push(data["type"].clone());
    }
}

#[tokio::test]
async fn nick_changes_do_not_reach_those_who_must_not_see_names() {
    use tokio_tungstenite::tungstenite::Message;
    let nc = FakeNextcloud::start().await;
    nc.state
        .lock()
        .unwrap()
        .permissions
        .insert("nc-bob".into(), vec!["hide-displaynames".into()]);
    let ts = TestServer::start_on(nc, "").await;
    let mut alice = ts.client_in_room("alice", "room1").await;
    let mut bob = ts.client_in_room("bob", "room1").await;
    let b = bob.session_id.clone();
    let mut carol = ts.client_in_room("carol", "room1").await;
    let nick = serde_json::json!({"type": "nickChanged", "name": "Carol the guest"});
    let room = serde_json::json!({"type": "room"});
    let to_bob = serde_json::json!({"type": "session", "sessionid": b});
    let user_bob = serde_json::json!({"type": "user", "userid": "bob"});
    // To the room, to bob's session, to bob as a user, and to the room
    // with the type spelled with a JSON escape (a client reads it the same).
    carol.message_to(room.clone(), nick.clone()).await;
    carol.message_to(to_bob.clone(), nick.clone()).await;
    carol.message_to(user_bob, nick.clone()).await;
    carol
        .send_raw(Message::text(
            r#"{"type":"message","message":{"recipient":{"type":"room"},"data":{"type":"nick\u0043hanged","name":"X"}}}"#,
        ))
        .await;
    carol
        .message_to(room, serde_json::json!({"marker": "end"}))
        .await;
    // Alice (no such permission) gets both room ones.
    assert_eq!(
        types_until(&mut alice, "end").await,
        vec![Value::from("nickChanged"), Value::from("nickChanged")]
    );
    // Bob gets none of the four, but what follows them.
    assert_eq!(types_until(&mut bob, "end").await, Vec::<Value>::new());
    // Other messages still reach him.
    carol
        .message_to(
            to_bob,
            serde_json::json!({"type": "offer-ish", "marker": "x"}),
        )
        .await;
    let m = bob.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["type"], "offer-ish");
    ts.stop().await;
}
