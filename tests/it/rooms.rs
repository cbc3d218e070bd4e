//! Rooms, messages, control, transient data and virtual sessions.

use crate::support::*;
use serde_json::{json, Value};

fn join_ids(m: &Value) -> Vec<String> {
    m["event"]["join"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sessionid"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn joining_a_room_is_validated_by_the_backend_and_announced() {
    let ts = TestServer::start().await;
    let mut a = ts.client(Some("alice")).await;
    let r = a.join("room1", "nc-a").await;
    assert_eq!(r["id"], "join");
    assert_eq!(r["room"]["properties"]["name"], "Room room1");
    let req = ts.nc.wait_for("room", |_| true).await;
    assert_eq!(req.body["room"]["roomid"], "room1");
    assert_eq!(req.body["room"]["userid"], "alice");
    assert_eq!(req.body["room"]["sessionid"], "nc-a");
    assert_eq!(req.body["room"]["action"], "join");
    // The joiner sees itself join.
    let me = a.wait_join_of(&a.session_id.clone()).await;
    assert_eq!(me["event"]["target"], "room");
    let entry = &me["event"]["join"][0];
    assert_eq!(entry["userid"], "alice");
    assert_eq!(entry["user"]["displayname"], "User alice");
    assert_eq!(entry["roomsessionid"], "nc-a");

    let mut g = ts.client(None).await;
    g.join("room1", "nc-g").await;
    // The guest gets the members list (alice) and its own join.
    let first = g.wait_for(|m| m["event"]["type"] == "join").await;
    let mut seen = join_ids(&first);
    if !seen.contains(&a.session_id) || !seen.contains(&g.session_id) {
        seen.extend(join_ids(
            &g.wait_for(|m| m["event"]["type"] == "join").await,
        ));
    }
    assert!(
        seen.contains(&a.session_id) && seen.contains(&g.session_id),
        "{seen:?}"
    );
    // Alice sees the guest, with an empty user id.
    let j = a.wait_join_of(&g.session_id).await;
    assert_eq!(j["event"]["join"][0]["userid"], "");
    ts.stop().await;
}

#[tokio::test]
async fn join_errors_already_joined_and_no_such_room() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    a.send(json!({"id": "again", "type": "room", "room": {"roomid": "room1", "sessionid": "nc-alice"}})).await;
    let e = a.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["error"]["code"], "already_joined");
    assert_eq!(e["id"], "again");
    assert_eq!(e["error"]["details"]["roomid"], "room1");
    assert_eq!(e["error"]["details"]["properties"]["name"], "Room room1");
    a.send(json!({"id": "f", "type": "room", "room": {"roomid": "forbidden1", "sessionid": "nc-alice"}})).await;
    let e = a.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["error"]["code"], "no_such_room");
    assert_eq!(e["id"], "f");
    ts.stop().await;
}

#[tokio::test]
async fn leaving_tells_the_others_and_the_backend_and_one_room_per_session() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    // Joining another room leaves the first one.
    b.join("room2", "nc-bob-2").await;
    let l = a.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([b.session_id]));
    ts.nc
        .wait_for("room", |r| {
            r["room"]["action"] == "leave"
                && r["room"]["roomid"] == "room1"
                && r["room"]["sessionid"] == "nc-bob"
        })
        .await;
    // Room messages of room1 no longer reach bob.
    b.join("room1", "nc-bob").await;
    a.wait_join_of(&b.session_id).await;
    b.send(json!({"id": "leave", "type": "room", "room": {"roomid": ""}}))
        .await;
    let r = b.wait_for(|m| m["type"] == "room").await;
    assert_eq!(r["room"]["roomid"], "");
    assert_eq!(r["id"], "leave");
    a.wait_for(|m| m["event"]["type"] == "leave").await;
    ts.stop().await;
}

#[tokio::test]
async fn same_room_id_on_two_backends_is_two_rooms() {
    let nc2 = FakeNextcloud::start().await;
    let nc1 = FakeNextcloud::start().await;
    let text = config_text(&nc1, "").replace("backends = nc1", "backends = nc1, nc2")
        + &format!("[nc2]\nurl = {}\nsecret = {SECRET}\n", nc2.url);
    let cfg = spreed_signaling::config::Config::parse(&text).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = spreed_signaling::server::Server::start(cfg, Some(listener))
        .await
        .unwrap();
    let ws = format!("ws://{}/spreed", server.addr);
    let mut a = Client::connect(&ws).await;
    a.expect_type("welcome").await;
    a.hello_v1(&nc1.backend_url(), json!({"userid": "alice"}))
        .await;
    a.join("same", "nc-a").await;
    let mut b = Client::connect(&ws).await;
    b.expect_type("welcome").await;
    b.hello_v1(&nc2.backend_url(), json!({"userid": "alice"}))
        .await;
    b.join("same", "nc-b").await;
    b.wait_join_of(&b.session_id.clone()).await;
    b.message_to(json!({"type": "room"}), json!({"x": 1})).await;
    // Same user id on another backend is another user.
    b.message_to(json!({"type": "user", "userid": "alice"}), json!({"x": 2}))
        .await;
    // Sessions of another backend are unreachable (nothing is answered,
    // as for a session that does not exist); the answer to the next
    // request proves that b's earlier messages were handled.
    b.send(json!({"id": "direct", "type": "message", "message": {"recipient": {"type": "session", "sessionid": a.session_id}, "data": {"x": 4}}})).await;
    b.send(json!({"id": "probe", "type": "room", "room": {"roomid": "same", "sessionid": "nc-b"}}))
        .await;
    let e = b.expect_error("already_joined").await;
    assert_eq!(e["id"], "probe");
    // A direct message from a's own backend is a's first message.
    let mut c = Client::connect(&ws).await;
    c.expect_type("welcome").await;
    c.hello_v1(&nc1.backend_url(), json!({"userid": "carol"}))
        .await;
    c.message_to(
        json!({"type": "session", "sessionid": a.session_id}),
        json!({"x": 3}),
    )
    .await;
    let m = a.wait_for(|m| m["type"] == "message").await;
    assert_eq!(
        m["message"]["data"]["x"], 3,
        "room/user messages leaked across backends: {m}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn messages_reach_session_user_and_room_with_the_sender() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    let mut b2 = ts.client(Some("bob")).await;
    let mut g = ts.client(None).await;
    g.join("room1", "nc-g").await;
    a.wait_join_of(&g.session_id).await;

    // Byte-for-byte: odd spacing and key order survive.
    let raw = r#"{"type":"message","message":{"recipient":{"type":"session","sessionid":"SID"},"data":{"z": 1,  "a" :[1, 2.50 ,"\u00e9"]}}}"#
        .replace("SID", &b.session_id);
    a.send_raw(tokio_tungstenite::tungstenite::Message::Text(raw.into()))
        .await;
    let m = b.wait_for(|m| m["type"] == "message").await;
    assert_eq!(
        m["message"]["sender"],
        json!({"type": "session", "sessionid": a.session_id, "userid": "alice"})
    );
    assert_eq!(m["message"]["data"]["a"][1], 2.5);

    // To a user: all sessions of bob, not alice.
    a.message_to(
        json!({"type": "user", "userid": "bob"}),
        json!({"to": "bob"}),
    )
    .await;
    for c in [&mut b, &mut b2] {
        let m = c.wait_for(|m| m["type"] == "message").await;
        assert_eq!(m["message"]["data"]["to"], "bob");
        assert_eq!(m["message"]["sender"]["type"], "user");
    }

    // To the room: everyone in it but the sender; from a guest: no userid.
    g.message_to(json!({"type": "room"}), json!({"to": "room"}))
        .await;
    for c in [&mut a, &mut b] {
        let m = c.wait_for(|m| m["type"] == "message").await;
        assert_eq!(m["message"]["data"]["to"], "room");
        assert_eq!(
            m["message"]["sender"],
            json!({"type": "room", "sessionid": g.session_id})
        );
    }
    // b2 is not in the room: a later direct message is the next thing it sees.
    a.message_to(
        json!({"type": "session", "sessionid": b2.session_id}),
        json!({"marker": 1}),
    )
    .await;
    let m = b2.recv().await;
    assert_eq!(m["message"]["data"]["marker"], 1, "{m}");
    ts.stop().await;
}

#[tokio::test]
async fn message_errors_go_to_the_sender_only() {
    let ts = TestServer::start().await;
    let mut a = ts.client(Some("alice")).await;
    let mut b = ts.client_in_room("bob", "room1").await;
    // A session that does not exist: nothing is answered (as by the Go
    // server), the next reply is m2's.
    a.send(json!({"id": "m1", "type": "message", "message": {"recipient": {"type": "session", "sessionid": "nope"}, "data": {}}})).await;
    a.send(json!({"id": "m2", "type": "message", "message": {"recipient": {"type": "room"}, "data": {}}})).await;
    assert_eq!(a.expect_error("not_in_room").await["id"], "m2");
    a.send(json!({"id": "m3", "type": "message", "message": {"recipient": {"type": "planet"}, "data": {}}})).await;
    assert_eq!(a.expect_error("invalid_format").await["id"], "m3");
    a.send(json!({"id": "m4", "type": "message", "message": {"data": {}}}))
        .await;
    assert_eq!(a.expect_error("invalid_format").await["id"], "m4");
    // b got nothing of that: the next thing it sees is this marker.
    a.message_to(
        json!({"type": "session", "sessionid": b.session_id}),
        json!({"marker": true}),
    )
    .await;
    let m = b.wait_for(|m| m["type"] != "event").await;
    assert_eq!(m["message"]["data"]["marker"], true, "{m}");
    ts.stop().await;
}

#[tokio::test]
async fn control_messages_need_the_control_permission() {
    let ts = TestServer::start().await;
    ts.nc
        .state
        .lock()
        .unwrap()
        .permissions
        .insert("nc-guest".into(), vec!["publish-audio".into()]);
    ts.nc
        .state
        .lock()
        .unwrap()
        .permissions
        .insert("nc-mod".into(), vec!["control".into()]);
    let mut m = ts.client(Some("mod")).await;
    m.join("room1", "nc-mod").await;
    let mut g = ts.client(Some("guest")).await;
    g.join("room1", "nc-guest").await;
    m.wait_join_of(&g.session_id).await;
    g.send(json!({"id": "c1", "type": "control", "control": {"recipient": {"type": "session", "sessionid": m.session_id}, "data": {"type": "mute", "audio": 1}}})).await;
    g.wait_for(|x| x["type"] == "error" && x["error"]["code"] == "not_allowed")
        .await;
    m.send(json!({"type": "control", "control": {"recipient": {"type": "session", "sessionid": g.session_id}, "data": {"type": "mute", "audio": 1}}})).await;
    let c = g.wait_for(|x| x["type"] == "control").await;
    assert_eq!(c["control"]["data"], json!({"type": "mute", "audio": 1}));
    assert_eq!(c["control"]["sender"]["sessionid"], m.session_id.as_str());
    // The moderator never received the guest's control message.
    g.message_to(
        json!({"type": "session", "sessionid": m.session_id}),
        json!({"marker": 1}),
    )
    .await;
    let next = m.wait_for(|x| x["type"] != "event").await;
    assert_eq!(next["type"], "message", "{next}");
    ts.stop().await;
}

#[tokio::test]
async fn transient_data_set_remove_initial_and_cleared_with_the_room() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    a.send(
        json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": {"v": 1}}}),
    )
    .await;
    let s = a.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(
        s["transient"],
        json!({"type": "set", "key": "k", "value": {"v": 1}})
    );
    // Same value again: ignored. New value: oldvalue included.
    a.send(
        json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": {"v": 1}}}),
    )
    .await;
    a.send(json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": [2]}}))
        .await;
    let s = a.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(
        s["transient"],
        json!({"type": "set", "key": "k", "value": [2], "oldvalue": {"v": 1}})
    );
    a.send(
        json!({"type": "transient", "transient": {"type": "set", "key": "other", "value": "x"}}),
    )
    .await;
    a.wait_for(|m| m["type"] == "transient").await;

    let mut b = ts.client(Some("bob")).await;
    b.join("room1", "nc-bob").await;
    let init = b.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(
        init["transient"],
        json!({"type": "initial", "data": {"k": [2], "other": "x"}})
    );

    b.send(json!({"type": "transient", "transient": {"type": "remove", "key": "k"}}))
        .await;
    for c in [&mut a, &mut b] {
        let r = c.wait_for(|m| m["type"] == "transient").await;
        assert_eq!(
            r["transient"],
            json!({"type": "remove", "key": "k", "oldvalue": [2]})
        );
    }
    // Everyone leaves: the data is gone for the next joiner.
    a.send(json!({"type": "room", "room": {"roomid": ""}}))
        .await;
    a.wait_for(|m| m["type"] == "room").await;
    b.send(json!({"type": "room", "room": {"roomid": ""}}))
        .await;
    b.wait_for(|m| m["type"] == "room").await;
    let mut c = ts.client(Some("carol")).await;
    c.join("room1", "nc-carol").await;
    c.wait_join_of(&c.session_id.clone()).await;
    c.send(json!({"type": "transient", "transient": {"type": "set", "key": "fresh", "value": 1}}))
        .await;
    let m = c.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(m["transient"]["type"], "set", "old data survived: {m}");
    ts.stop().await;
}

#[tokio::test]
async fn transient_ttl_expires_with_a_remove_event() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    a.send(json!({"type": "transient", "transient": {"type": "set", "key": "t", "value": 5, "ttl": 200_000_000}})).await;
    a.wait_for(|m| m["transient"]["type"] == "set").await;
    let r = a.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(
        r["transient"],
        json!({"type": "remove", "key": "t", "oldvalue": 5})
    );
    ts.stop().await;
}

#[tokio::test]
async fn transient_errors_not_in_room_and_not_allowed() {
    let ts = TestServer::start().await;
    ts.nc
        .state
        .lock()
        .unwrap()
        .permissions
        .insert("nc-ro".into(), vec!["publish-audio".into()]);
    let mut a = ts.client(Some("ro")).await;
    a.send(json!({"id": "t1", "type": "transient", "transient": {"type": "set", "key": "k", "value": 1}})).await;
    assert_eq!(a.expect_error("not_in_room").await["id"], "t1");
    a.join("room1", "nc-ro").await;
    a.send(json!({"id": "t2", "type": "transient", "transient": {"type": "set", "key": "k", "value": 1}})).await;
    let e = a.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["error"]["code"], "not_allowed");
    assert_eq!(e["id"], "t2");
    a.send(json!({"id": "t3", "type": "transient", "transient": {"type": "set", "value": 1}}))
        .await;
    assert_eq!(
        a.wait_for(|m| m["type"] == "error").await["error"]["code"],
        "invalid_format"
    );
    ts.stop().await;
}

#[tokio::test]
async fn virtual_sessions_of_internal_clients() {
    let ts = TestServer::start().await;
    let mut a = ts.joined_client("alice", "room1").await;
    let (mut sip, sip_sid) = internal_client(&ts.ws_url(), &[]).await;
    sip.send(json!({"type": "internal", "internal": {"type": "addsession", "addsession": {
        "sessionid": "phone-1", "roomid": "room1", "userid": "", "user": {"type": "phone", "callid": "c1", "number": "+4912345"}, "flags": 1}}})).await;
    let j = a.wait_for(|m| m["event"]["type"] == "join").await;
    let entry = &j["event"]["join"][0];
    let vsid = entry["sessionid"].as_str().unwrap().to_string();
    assert_eq!(entry["user"]["type"], "phone");
    assert_ne!(vsid, sip_sid);
    let p = a
        .wait_for(|m| m["event"]["target"] == "participants" && m["event"]["type"] == "update")
        .await;
    let users = p["event"]["update"]["users"].as_array().unwrap();
    let v = users
        .iter()
        .find(|u| u["sessionId"] == vsid.as_str())
        .unwrap();
    assert_eq!(
        v["inCall"], 9,
        "virtual sessions default to in call with phone"
    );
    assert_eq!(v["virtual"], true);
    let f = a.wait_for(|m| m["event"]["type"] == "flags").await;
    assert_eq!(
        f["event"]["flags"],
        json!({"roomid": "room1", "sessionid": vsid, "flags": 1})
    );
    ts.nc
        .wait_for("session", |r| {
            r["session"]["action"] == "add" && r["session"]["sessionid"] == vsid.as_str()
        })
        .await;

    // Control messages to the virtual session go to the internal client.
    a.send(json!({"type": "control", "control": {"recipient": {"type": "session", "sessionid": vsid}, "data": {"type": "hangup"}}})).await;
    let c = sip.wait_for(|m| m["type"] == "control").await;
    assert_eq!(
        c["control"]["recipient"],
        json!({"type": "session", "sessionid": "phone-1"})
    );
    assert_eq!(c["control"]["data"]["type"], "hangup");

    sip.send(json!({"type": "internal", "internal": {"type": "updatesession", "updatesession": {"sessionid": "phone-1", "roomid": "room1", "flags": 3}}})).await;
    let f = a.wait_for(|m| m["event"]["type"] == "flags").await;
    assert_eq!(f["event"]["flags"]["flags"], 3);

    sip.send(json!({"type": "internal", "internal": {"type": "removesession", "removesession": {"sessionid": "phone-1", "roomid": "room1"}}})).await;
    let l = a.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([vsid]));
    ts.nc
        .wait_for("session", |r| r["session"]["action"] == "remove")
        .await;

    // Virtual sessions vanish with their internal client.
    sip.send(json!({"type": "internal", "internal": {"type": "addsession", "addsession": {"sessionid": "phone-2", "roomid": "room1"}}})).await;
    let j = a.wait_for(|m| m["event"]["type"] == "join").await;
    let v2 = j["event"]["join"][0]["sessionid"]
        .as_str()
        .unwrap()
        .to_string();
    sip.send(json!({"type": "bye", "bye": {}})).await;
    let l = a.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([v2]));

    // Regular clients may not send internal messages.
    a.send(json!({"id": "i", "type": "internal", "internal": {"type": "incall", "incall": {"incall": 1}}})).await;
    assert_eq!(
        a.wait_for(|m| m["type"] == "error").await["error"]["code"],
        "not_allowed"
    );
    ts.stop().await;
}

#[tokio::test]
async fn offers_need_a_publish_permission_once_nextcloud_sends_permissions() {
    let ts = TestServer::start().await;
    ts.nc
        .state
        .lock()
        .unwrap()
        .permissions
        .insert("nc-viewer".into(), vec![]);
    ts.nc
        .state
        .lock()
        .unwrap()
        .permissions
        .insert("nc-speaker".into(), vec!["publish-audio".into()]);
    let mut v = ts.client(Some("viewer")).await;
    v.join("room1", "nc-viewer").await;
    let mut s = ts.client(Some("speaker")).await;
    s.join("room1", "nc-speaker").await;
    let to_s = json!({"type": "session", "sessionid": s.session_id});
    let to_v = json!({"type": "session", "sessionid": v.session_id});
    v.send(json!({"id": "o1", "type": "message", "message": {"recipient": to_s, "data": {"type": "offer", "roomType": "video", "payload": {}}}})).await;
    let e = v.wait_for(|m| m["type"] == "error").await;
    assert_eq!(
        (e["id"].as_str(), e["error"]["code"].as_str()),
        (Some("o1"), Some("not_allowed"))
    );
    // Answers and candidates are not publishing: they pass.
    v.message_to(to_s.clone(), json!({"type": "answer", "roomType": "video"}))
        .await;
    let m = s.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["type"], "answer");
    s.message_to(to_v.clone(), json!({"type": "offer", "roomType": "video"}))
        .await;
    assert_eq!(
        v.wait_for(|m| m["type"] == "message").await["message"]["data"]["type"],
        "offer"
    );
    s.send(json!({"id": "o2", "type": "message", "message": {"recipient": to_v, "data": {"type": "offer", "roomType": "screen"}}})).await;
    assert_eq!(
        s.wait_for(|m| m["type"] == "error").await["error"]["code"],
        "not_allowed"
    );
    ts.stop().await;
}

#[tokio::test]
async fn internal_clients_in_call_flags() {
    let ts = TestServer::start().await;
    let mut a = ts.joined_client("alice", "room1").await;
    let (mut rec, sid) = internal_client(&ts.ws_url(), &["internal-incall"]).await;
    rec.send(json!({"type": "room", "room": {"roomid": "room1", "sessionid": ""}}))
        .await;
    rec.wait_for(|m| m["type"] == "room").await;
    // With internal-incall the client starts outside the call...
    let p = a.wait_for(|m| m["event"]["target"] == "participants").await;
    let me = |p: &serde_json::Value| {
        p["event"]["update"]["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["sessionId"] == sid.as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(me(&p)["inCall"], 0);
    assert_eq!(me(&p)["internal"], true);
    // ...and sets its flags itself.
    rec.send(json!({"type": "internal", "internal": {"type": "incall", "incall": {"incall": 3}}}))
        .await;
    let p = a.wait_for(|m| m["event"]["target"] == "participants").await;
    assert_eq!(me(&p)["inCall"], 3);
    ts.stop().await;
}

/// An internal client's virtual session joins its room only once
/// Nextcloud agreed, as with the Go server; a refusal or a Nextcloud that
/// cannot be asked answers `add_failed` with the request id, and a removal
/// Nextcloud could not be told of `remove_failed` (the session is gone
/// anyway). With an actor (`options`) the requests are the room's `join`
/// and `leave` carrying it.
#[tokio::test]
async fn virtual_sessions_are_added_only_once_nextcloud_agreed() {
    let ts = TestServer::start().await;
    let mut a = ts.joined_client("alice", "room1").await;
    let (mut sip, _) = internal_client(&ts.ws_url(), &[]).await;
    let add = |id: &str, sid: &str, options: Value| {
        json!({"id": id, "type": "internal", "internal": {"type": "addsession", "addsession": {
            "sessionid": sid, "roomid": "room1", "options": options}}})
    };
    let remove = |id: &str, sid: &str| {
        json!({"id": id, "type": "internal", "internal": {"type": "removesession", "removesession": {
            "sessionid": sid, "roomid": "room1"}}})
    };
    let actor = json!({"actorId": "+49123", "actorType": "phones"});

    ts.nc.state.lock().unwrap().refuse_virtual = true;
    sip.send(add("a1", "phone-1", Value::Null)).await;
    let e = sip.expect_type("error").await;
    assert_eq!(e["id"], "a1", "{e}");
    assert_eq!(e["error"]["code"], "add_failed", "{e}");
    assert_eq!(e["error"]["message"], "Could not add virtual session.");
    sip.send(add("a2", "phone-1", actor.clone())).await;
    let e = sip.expect_type("error").await;
    assert_eq!(e["id"], "a2", "{e}");
    assert_eq!(e["error"]["code"], "add_failed", "{e}");
    assert_eq!(
        e["error"]["message"], "No phones here.",
        "Nextcloud's message"
    );
    // Nobody saw a session come.
    let mut b = ts.client_in_room("bob", "room1").await;
    let j = a.wait_for(|m| m["event"]["type"] == "join").await;
    assert_eq!(join_ids(&j), vec![b.session_id.clone()], "{j}");

    // Accepted: Nextcloud was asked before the room saw it join.
    ts.nc.state.lock().unwrap().refuse_virtual = false;
    sip.send(add("a3", "phone-1", Value::Null)).await;
    let j = a.wait_for(|m| m["event"]["type"] == "join").await;
    let vsid = join_ids(&j)[0].clone();
    assert!(
        ts.nc
            .requests("session")
            .iter()
            .any(|r| r.body["session"]["action"] == "add"
                && r.body["session"]["sessionid"] == vsid.as_str()),
        "asked first"
    );
    b.wait_join_of(&vsid).await;
    ts.nc.state.lock().unwrap().refuse_virtual = true;
    sip.send(remove("r1", "phone-1")).await;
    let l = a.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([vsid]));
    let e = sip.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["id"], "r1", "{e}");
    assert_eq!(e["error"]["code"], "remove_failed", "{e}");

    // With an actor: the room's join and leave, carrying it.
    ts.nc.state.lock().unwrap().refuse_virtual = false;
    sip.send(add("a4", "phone-2", actor)).await;
    let j = a.wait_for(|m| m["event"]["type"] == "join").await;
    let v2 = join_ids(&j)[0].clone();
    let join = ts
        .nc
        .wait_for("room", |r| r["room"]["sessionid"] == v2.as_str())
        .await;
    assert_eq!(join.body["room"]["action"], "join");
    assert_eq!(join.body["room"]["actorid"], "+49123");
    assert_eq!(join.body["room"]["actortype"], "phones");
    ts.nc.state.lock().unwrap().refuse_virtual = true;
    sip.send(remove("r2", "phone-2")).await;
    let l = a.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([v2]));
    let e = sip.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["id"], "r2", "{e}");
    assert_eq!(e["error"]["code"], "remove_failed", "{e}");
    assert_eq!(e["error"]["message"], "No phones here.");
    let leave = ts
        .nc
        .wait_for("room", |r| {
            r["room"]["sessionid"] == v2.as_str() && r["room"]["action"] == "leave"
        })
        .await;
    assert_eq!(leave.body["room"]["actorid"], "+49123");
    // The internal client goes on.
    sip.send(remove("r3", "phone-2")).await;
    let e = sip.expect_type("error").await;
    assert_eq!(e["error"]["code"], "no_such_session", "{e}");
    ts.stop().await;
}

/// `[backend] connectionsperhost`, as in the Go server: at most that many
/// requests to one Nextcloud host at once; the others wait their turn
/// (and all succeed), counted in `signaling_http_client_pool_connections`.
#[tokio::test]
async fn connectionsperhost_caps_the_requests_to_a_nextcloud_at_once() {
    let ts = TestServer::start_with("[backend]\nconnectionsperhost = 2\n").await;
    let mut clients = Vec::new();
    for i in 0..5 {
        clients.push(ts.client(Some(&format!("user{i}"))).await);
    }
    ts.nc.state.lock().unwrap().room_delay = Some(std::time::Duration::from_millis(400));
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(json!({"id": "join", "type": "room", "room": {"roomid": "room1", "sessionid": format!("nc-{i}")}}))
            .await;
    }
    // While two wait for Nextcloud, the gauge says so.
    let host = ts.nc.url.trim_start_matches("http://").to_string();
    let line = format!("signaling_http_client_pool_connections{{host=\"{host}\"}} 2");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !ts.metrics_text().await.contains(&line) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never two requests in flight: {line}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for c in clients.iter_mut() {
        let r = c
            .wait_for(|m| m["type"] == "room" || m["type"] == "error")
            .await;
        assert_eq!(r["room"]["roomid"], "room1", "{r}");
    }
    assert_eq!(ts.nc.state.lock().unwrap().max_joins_in_flight, 2);
    ts.stop().await;
}

/// The Go server's strukturag#1305 on one process: the room has no member
/// yet while its first join waits for Nextcloud; a participants update
/// Nextcloud sends meanwhile reaches the joiner once the join is known.
#[tokio::test]
async fn an_update_during_a_first_join_reaches_the_joiner_once_the_join_is_known() {
    fn is_update(m: &Value) -> bool {
        m["type"] == "event"
            && m["event"]["target"] == "participants"
            && m["event"]["type"] == "update"
    }
    fn entry<'a>(u: &'a Value, nc: &str) -> Option<&'a Value> {
        u["event"]["update"]["users"]
            .as_array()?
            .iter()
            .find(|e| e["nextcloudSessionId"] == nc)
    }
    let s = TestServer::start().await;
    let mut bob = s.client(Some("bob")).await;
    s.nc.state.lock().unwrap().room_delay = Some(std::time::Duration::from_millis(1500));
    bob.send(
        json!({"id": "join", "type": "room", "room": {"roomid": "solo", "sessionid": "nc-bob"}}),
    )
    .await;
    s.nc.wait_for("room", |r| r["room"]["sessionid"] == "nc-bob")
        .await;
    let update = json!({"type": "participants", "participants": {"changed": [
        {"sessionId": "nc-bob", "inCall": 3, "participantType": 3}]}});
    assert_eq!(s.backend_request("solo", &update).await.0, 200);
    bob.wait_for(|m| m["type"] == "room").await;
    let bob_sid = bob.session_id.clone();
    let u = bob
        .wait_for(|m| {
            is_update(m) && entry(m, "nc-bob").is_some_and(|e| e["sessionId"] == bob_sid.as_str())
        })
        .await;
    assert_eq!(entry(&u, "nc-bob").unwrap()["inCall"], 3);
}
