//! The backend API (`POST /api/v1/room/{id}`): authentication, limits and
//! every request type, with the events each kind of session receives.

use crate::support::*;
use serde_json::{json, Value};
use std::time::Duration;

/// Sends `body` to the room API with the given headers.
async fn raw_request(
    ts: &TestServer,
    room: &str,
    body: Vec<u8>,
    headers: &[(&str, String)],
) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/v1/room/{room}", ts.url))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    assert!(resp.headers().contains_key("X-Spreed-Signaling-Features"));
    (status, resp.text().await.unwrap())
}

fn signed_headers(ts: &TestServer, body: &[u8], secret: &str) -> Vec<(&'static str, String)> {
    let random = spreed_signaling::backend::checksum::new_random();
    let sum =
        spreed_signaling::backend::checksum::calculate(secret.as_bytes(), random.as_bytes(), body);
    vec![
        ("Content-Type", "application/json".to_string()),
        ("Spreed-Signaling-Random", random),
        ("Spreed-Signaling-Checksum", sum),
        ("Spreed-Signaling-Backend", ts.nc.url.clone()),
    ]
}

/// Three sessions: alice and bob in `room1`, carol (invited, elsewhere),
/// dave (not invited); all join events consumed.
async fn setup(ts: &TestServer) -> (Client, Client, Client, Client) {
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    b.wait_join_of(&b.session_id.clone()).await;
    let c = ts.client(Some("carol")).await;
    let d = ts.client(Some("dave")).await;
    (a, b, c, d)
}

/// Proves `c` received nothing before: a direct marker is its next message.
async fn nothing_before_marker(from: &mut Client, c: &mut Client) {
    from.message_to(
        json!({"type": "session", "sessionid": c.session_id}),
        json!({"marker": 1}),
    )
    .await;
    let m = c.recv().await;
    assert_eq!(m["message"]["data"]["marker"], 1, "unexpected: {m}");
}

#[tokio::test]
async fn requests_without_a_valid_checksum_are_refused_and_change_nothing() {
    let ts = TestServer::start().await;
    let (mut a, _b, _c, _d) = setup(&ts).await;
    let body =
        serde_json::to_vec(&json!({"type": "message", "message": {"data": {"x": 1}}})).unwrap();

    let mut wrong = signed_headers(&ts, &body, "wrong-secret");
    assert_eq!(raw_request(&ts, "room1", body.clone(), &wrong).await.0, 403);
    wrong.retain(|(k, _)| *k != "Spreed-Signaling-Checksum");
    assert_eq!(raw_request(&ts, "room1", body.clone(), &wrong).await.0, 403);
    let mut unknown = signed_headers(&ts, &body, SECRET);
    unknown[3].1 = "https://unknown.example".into();
    assert_eq!(
        raw_request(&ts, "room1", body.clone(), &unknown).await.0,
        403
    );
    let mut ct = signed_headers(&ts, &body, SECRET);
    ct[0].1 = "text/plain".into();
    assert_eq!(raw_request(&ts, "room1", body.clone(), &ct).await.0, 400);
    let bad = b"{not json".to_vec();
    let (status, text) = raw_request(
        &ts,
        "room1",
        bad.clone(),
        &signed_headers(&ts, &bad, SECRET),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        serde_json::from_str::<Value>(&text).is_ok(),
        "error body is JSON: {text}"
    );
    let unk = br#"{"type":"explode"}"#.to_vec();
    assert_eq!(
        raw_request(
            &ts,
            "room1",
            unk.clone(),
            &signed_headers(&ts, &unk, SECRET)
        )
        .await
        .0,
        400
    );
    // Up to 256 KiB is accepted, more is 413.
    let big = serde_json::to_vec(
        &json!({"type": "message", "message": {"data": {"pad": "p".repeat(200 * 1024)}}}),
    )
    .unwrap();
    assert_eq!(
        raw_request(
            &ts,
            "room1",
            big.clone(),
            &signed_headers(&ts, &big, SECRET)
        )
        .await
        .0,
        200
    );
    let huge = serde_json::to_vec(
        &json!({"type": "message", "message": {"data": {"pad": "p".repeat(300 * 1024)}}}),
    )
    .unwrap();
    assert_eq!(
        raw_request(
            &ts,
            "room1",
            huge.clone(),
            &signed_headers(&ts, &huge, SECRET)
        )
        .await
        .0,
        413
    );
    // Only the valid 200 KiB message arrived.
    let m = a.wait_for(|m| m["type"] == "event").await;
    assert_eq!(
        m["event"]["message"]["data"]["pad"].as_str().unwrap().len(),
        200 * 1024
    );
    ts.stop().await;
}

#[tokio::test]
async fn invite_reaches_invited_users_with_properties() {
    let ts = TestServer::start().await;
    let (mut a, _b, mut c, mut d) = setup(&ts).await;
    let (status, body) = ts.backend_request("room1", &json!({"type": "invite", "invite": {"userids": ["carol"], "alluserids": ["alice", "bob", "carol"], "properties": {"name": "New"}}})).await;
    assert_eq!((status, body), (200, json!({})));
    let m = c.expect_type("event").await;
    assert_eq!(
        m["event"],
        json!({"target": "roomlist", "type": "invite", "invite": {"roomid": "room1", "properties": {"name": "New"}}})
    );
    // The others invited get an update.
    let u = a.wait_for(|m| m["event"]["target"] == "roomlist").await;
    assert_eq!(u["event"]["type"], "update");
    nothing_before_marker(&mut c, &mut d).await;
    ts.stop().await;
}

/// After `disinvite`, a session in that room gets the `roomlist` event and
/// then its connection closes (1000): the session ended, as with the Go
/// server (which closes a session after sending it a disinvite for its
/// room). The room's others see it leave and Nextcloud gets its `leave`.
#[tokio::test]
async fn disinvite_ends_the_users_sessions_in_that_room() {
    let ts = TestServer::start().await;
    let (mut a, mut b, mut c, _d) = setup(&ts).await;
    // Bob's second session, in no room: told, but it goes on.
    let mut b2 = ts.client(Some("bob")).await;
    let (status, _) = ts.backend_request("room1", &json!({"type": "disinvite", "disinvite": {"userids": ["bob"], "alluserids": ["alice"]}})).await;
    assert_eq!(status, 200);
    let ev = b.recv_or_close().await.expect("the disinvite comes first");
    assert_eq!(ev["type"], "event", "{ev}");
    assert_eq!(
        ev["event"],
        json!({"target": "roomlist", "type": "disinvite",
               "disinvite": {"roomid": "room1", "reason": "disinvited"}})
    );
    assert_eq!(b.recv_or_close().await, Err(Some(1000)), "then the close");
    let l = a.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([b.session_id]));
    ts.nc
        .wait_for("room", |r| {
            r["room"]["action"] == "leave" && r["room"]["sessionid"] == "nc-bob"
        })
        .await;
    // The session is gone: its resume id is unknown.
    let mut again = ts.connect().await;
    again.expect_type("welcome").await;
    again
        .send(json!({"id": "r", "type": "hello", "hello": {"version": "1.0", "resumeid": b.resume_id}}))
        .await;
    again.expect_error("no_such_session").await;
    let ev = b2.expect_type("event").await;
    assert_eq!(ev["event"]["type"], "disinvite", "{ev}");
    // Bob's other session is not in that room and stays.
    a.message_to(
        json!({"type": "session", "sessionid": b2.session_id}),
        json!({"still": 1}),
    )
    .await;
    assert_eq!(b2.recv().await["message"]["data"]["still"], 1);
    a.message_to(json!({"type": "room"}), json!({"after": 1}))
        .await;
    nothing_before_marker(&mut a, &mut c).await;
    ts.stop().await;
}

#[tokio::test]
async fn disinvite_by_nextcloud_session_id_ends_guests() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut g = ts.client(None).await;
    g.join("room1", "nc-guest").await;
    a.wait_join_of(&g.session_id).await;
    ts.backend_request(
        "room1",
        &json!({"type": "disinvite", "disinvite": {"userids": [], "sessionids": ["nc-guest"]}}),
    )
    .await;
    let ev = g.wait_for(|m| m["event"]["target"] == "roomlist").await;
    assert_eq!(ev["event"]["type"], "disinvite", "{ev}");
    assert_eq!(g.recv_or_close().await, Err(Some(1000)));
    a.wait_for(|m| m["event"]["type"] == "leave").await;
    ts.stop().await;
}

#[tokio::test]
async fn update_sends_properties_to_the_room_and_roomlist_updates() {
    let ts = TestServer::start().await;
    let (mut a, mut b, mut c, mut d) = setup(&ts).await;
    ts.backend_request("room1", &json!({"type": "update", "update": {"userids": ["alice", "bob", "carol"], "properties": {"name": "Renamed"}}})).await;
    for x in [&mut a, &mut b] {
        let r = x.wait_for(|m| m["type"] == "room").await;
        assert_eq!(
            r["room"],
            json!({"roomid": "room1", "properties": {"name": "Renamed"}})
        );
    }
    let u = c.expect_type("event").await;
    assert_eq!(
        u["event"],
        json!({"target": "roomlist", "type": "update", "update": {"roomid": "room1", "properties": {"name": "Renamed"}}})
    );
    nothing_before_marker(&mut c, &mut d).await;
    ts.stop().await;
}

#[tokio::test]
async fn delete_empties_the_room_and_disinvites() {
    let ts = TestServer::start().await;
    let (mut a, mut b, mut c, _d) = setup(&ts).await;
    ts.backend_request(
        "room1",
        &json!({"type": "delete", "delete": {"userids": ["alice", "bob", "carol"]}}),
    )
    .await;
    for x in [&mut a, &mut b] {
        let r = x.wait_for(|m| m["type"] == "room").await;
        assert_eq!(r["room"]["roomid"], "");
    }
    let ev = c.expect_type("event").await;
    assert_eq!(ev["event"]["type"], "disinvite");
    a.message_to(json!({"type": "room"}), json!({})).await;
    assert_eq!(
        a.wait_for(|m| m["type"] == "error").await["error"]["code"],
        "not_in_room"
    );
    ts.stop().await;
}

#[tokio::test]
async fn participants_update_maps_session_ids_and_applies_permissions() {
    let ts = TestServer::start().await;
    let (mut a, mut b, mut c, _d) = setup(&ts).await;
    let changed = json!([{"sessionId": "nc-bob", "inCall": 7, "participantType": 3, "permissions": ["publish-audio"]}]);
    let users = json!([{"sessionId": "nc-alice", "inCall": 0}, {"sessionId": "nc-bob", "inCall": 7}, {"sessionId": "nc-unknown", "inCall": 0}]);
    ts.backend_request(
        "room1",
        &json!({"type": "participants", "participants": {"changed": changed, "users": users}}),
    )
    .await;
    let (asid, bsid) = (a.session_id.clone(), b.session_id.clone());
    for x in [&mut a, &mut b] {
        let p = x.wait_for(|m| m["event"]["target"] == "participants").await;
        assert_eq!(p["event"]["type"], "update");
        let up = &p["event"]["update"];
        assert_eq!(up["roomid"], "room1");
        // `changed` lists the changed participants, `users` everybody (as
        // the Go server sends them), with signaling session ids (dropped
        // when unknown) and without permissions.
        assert_eq!(
            up["changed"],
            json!([{"sessionId": bsid, "nextcloudSessionId": "nc-bob", "inCall": 7, "participantType": 3}])
        );
        assert_eq!(
            up["users"],
            json!([
                {"sessionId": asid, "nextcloudSessionId": "nc-alice", "inCall": 0},
                {"sessionId": bsid, "nextcloudSessionId": "nc-bob", "inCall": 7},
                {"nextcloudSessionId": "nc-unknown", "inCall": 0}
            ])
        );
        assert_ne!(asid, bsid);
    }
    // Bob lost "control" and "transient-data" at once.
    b.send(json!({"id": "t", "type": "transient", "transient": {"type": "set", "key": "k", "value": 1}})).await;
    assert_eq!(
        b.wait_for(|m| m["type"] == "error").await["error"]["code"],
        "not_allowed"
    );
    b.send(json!({"id": "c", "type": "control", "control": {"recipient": {"type": "session", "sessionid": a.session_id}, "data": {}}})).await;
    assert_eq!(
        b.wait_for(|m| m["type"] == "error").await["error"]["code"],
        "not_allowed"
    );
    // Permissions that are not a list of strings leave the entry's session
    // as it was (Go skips the entry).
    for perms in [json!(["control", 5]), json!("control")] {
        let changed = json!([{"sessionId": "nc-bob", "inCall": 7, "permissions": perms}]);
        ts.backend_request(
            "room1",
            &json!({"type": "participants", "participants": {"changed": changed}}),
        )
        .await;
        b.wait_for(|m| m["event"]["target"] == "participants").await;
        b.send(json!({"id": "c", "type": "control", "control": {"recipient": {"type": "session", "sessionid": a.session_id}, "data": {}}})).await;
        let e = b.wait_for(|m| m["type"] == "error").await;
        assert_eq!(e["error"]["code"], "not_allowed", "{perms}");
    }
    nothing_before_marker(&mut a, &mut c).await;
    ts.stop().await;
}

#[tokio::test]
async fn incall_updates_and_the_all_form() {
    let ts = TestServer::start().await;
    let (mut a, mut b, _c, _d) = setup(&ts).await;
    ts.backend_request("room1", &json!({"type": "incall", "incall": {"incall": 7, "changed": [{"sessionId": "nc-alice", "inCall": 7}], "users": [{"sessionId": "nc-alice", "inCall": 7}, {"sessionId": "nc-bob", "inCall": 0}]}})).await;
    let p = b.wait_for(|m| m["event"]["target"] == "participants").await;
    assert_eq!(
        p["event"]["update"],
        json!({"roomid": "room1",
        "changed": [{"sessionId": a.session_id, "nextcloudSessionId": "nc-alice", "inCall": 7}],
        "users": [
            {"sessionId": a.session_id, "nextcloudSessionId": "nc-alice", "inCall": 7},
            {"sessionId": b.session_id, "nextcloudSessionId": "nc-bob", "inCall": 0}
        ]})
    );
    a.wait_for(|m| m["event"]["target"] == "participants").await;
    ts.backend_request(
        "room1",
        &json!({"type": "incall", "incall": {"incall": 0, "all": true}}),
    )
    .await;
    for x in [&mut a, &mut b] {
        let p = x.wait_for(|m| m["event"]["target"] == "participants").await;
        assert_eq!(
            p["event"],
            json!({"target": "participants", "type": "update", "update": {"roomid": "room1", "incall": 0, "all": true}})
        );
    }
    // Flags as the Talk client compares them (`incall === 0`), numbers as
    // in Go: booleans become 0 / 1, other values send nothing.
    for incall in [json!("x"), json!(false), json!(null), json!(true)] {
        let (status, _) = ts
            .backend_request(
                "room1",
                &json!({"type": "incall", "incall": {"incall": incall, "all": true}}),
            )
            .await;
        assert_eq!(status, 200);
    }
    for x in [&mut a, &mut b] {
        for flags in [0, 1] {
            let p = x.wait_for(|m| m["event"]["target"] == "participants").await;
            assert_eq!(p["event"]["update"]["incall"], json!(flags), "{p}");
        }
    }
    ts.stop().await;
}

#[tokio::test]
async fn incall_with_changes_only_keeps_state_and_sends_complete_lists() {
    let ts = TestServer::start().await;
    let (mut a, b, _c, _d) = setup(&ts).await;
    ts.backend_request("room1", &json!({"type": "participants", "participants": {"changed": [{"sessionId": "nc-bob", "inCall": 0, "participantType": 3, "actorId": "bob"}]}})).await;
    let p = a.wait_for(|m| m["event"]["target"] == "participants").await;
    assert_eq!(p["event"]["update"]["changed"][0]["participantType"], 3);
    assert_eq!(p["event"]["update"]["users"][0]["participantType"], 3);
    ts.backend_request("room1", &json!({"type": "incall", "incall": {"incall": 7, "changed": [{"sessionId": "nc-alice", "inCall": 7}]}})).await;
    let p = a.wait_for(|m| m["event"]["target"] == "participants").await;
    let alice7 = json!({"sessionId": a.session_id, "nextcloudSessionId": "nc-alice", "inCall": 7});
    assert_eq!(p["event"]["update"]["changed"], json!([alice7]));
    // `users` is complete: the server keeps what Nextcloud sent before.
    assert_eq!(
        p["event"]["update"]["users"],
        json!([alice7, {"sessionId": b.session_id, "nextcloudSessionId": "nc-bob", "inCall": 0, "participantType": 3, "actorId": "bob"}])
    );
    // The server completes changed entries from its own state.
    ts.backend_request("room1", &json!({"type": "incall", "incall": {"incall": 3, "changed": [{"sessionId": "nc-bob", "inCall": 3}]}})).await;
    let p = a.wait_for(|m| m["event"]["target"] == "participants").await;
    let bob3 = json!({"sessionId": b.session_id, "nextcloudSessionId": "nc-bob", "inCall": 3, "participantType": 3, "actorId": "bob"});
    assert_eq!(p["event"]["update"]["changed"], json!([bob3]));
    assert_eq!(p["event"]["update"]["users"], json!([alice7, bob3]));
    // An unchanged in-call state is not repeated.
    let (status, _) = ts.backend_request("room1", &json!({"type": "incall", "incall": {"incall": 3, "changed": [{"sessionId": "nc-bob", "inCall": 3}]}})).await;
    assert_eq!(status, 200);
    ts.backend_request(
        "room1",
        &json!({"type": "message", "message": {"data": {"marker": 1}}}),
    )
    .await;
    let next = a.wait_for(|m| m["type"] == "event").await;
    assert_eq!(
        next["event"]["type"], "message",
        "unchanged in-call state was repeated: {next}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn room_message_goes_to_everyone_in_the_room_only() {
    let ts = TestServer::start().await;
    let (mut a, mut b, mut c, mut d) = setup(&ts).await;
    ts.backend_request("room1", &json!({"type": "message", "message": {"data": {"type": "chat", "chat": {"refresh": true}}}})).await;
    for x in [&mut a, &mut b] {
        let m = x.wait_for(|m| m["type"] == "event").await;
        assert_eq!(
            m["event"],
            json!({"target": "room", "type": "message", "message": {"roomid": "room1", "data": {"type": "chat", "chat": {"refresh": true}}}})
        );
    }
    nothing_before_marker(&mut a, &mut c).await;
    nothing_before_marker(&mut a, &mut d).await;
    ts.stop().await;
}

#[tokio::test]
async fn switchto_list_and_map_forms_reach_only_the_named_sessions() {
    let ts = TestServer::start().await;
    let (mut a, mut b, _c, _d) = setup(&ts).await;
    ts.backend_request(
        "room1",
        &json!({"type": "switchto", "switchto": {"roomid": "room2", "sessions": ["nc-alice"]}}),
    )
    .await;
    let m = a.wait_for(|m| m["type"] == "event").await;
    assert_eq!(
        m["event"],
        json!({"target": "room", "type": "switchto", "switchto": {"roomid": "room2"}})
    );
    ts.backend_request("room1", &json!({"type": "switchto", "switchto": {"roomid": "room3", "sessions": {"nc-bob": {"foo": "bar"}, "nc-alice": null}}})).await;
    let m = b.wait_for(|m| m["type"] == "event").await;
    assert_eq!(
        m["event"]["switchto"],
        json!({"roomid": "room3", "details": {"foo": "bar"}})
    );
    let m = a.wait_for(|m| m["type"] == "event").await;
    assert_eq!(m["event"]["switchto"], json!({"roomid": "room3"}));
    nothing_before_marker(&mut a, &mut b).await;
    ts.stop().await;
}

#[tokio::test]
async fn dialout_is_forwarded_to_an_internal_client() {
    let ts = TestServer::start().await;
    let (status, body) = ts.backend_request("123", &json!({"type": "dialout", "dialout": {"number": "+491234567", "options": {"actorId": "x"}}})).await;
    assert_eq!(status, 404);
    assert_eq!(body["dialout"]["error"]["code"], "no_client_available");
    let (status, body) = ts
        .backend_request(
            "123",
            &json!({"type": "dialout", "dialout": {"number": "12ab"}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["dialout"]["error"]["code"], "invalid_number");
    // The Go server's other two refusals: no number, a single digit.
    for (number, code) in [("", "number_missing"), ("+1", "invalid_number")] {
        let (status, body) = ts
            .backend_request(
                "123",
                &json!({"type": "dialout", "dialout": {"number": number}}),
            )
            .await;
        assert_eq!(status, 400, "{number}");
        assert_eq!(body["dialout"]["error"]["code"], code, "{number}");
    }

    let (mut sip, _) = internal_client(&ts.ws_url(), &["start-dialout"]).await;
    let request = ts.spawn_backend_request(
        "123",
        json!({"type": "dialout", "dialout": {"number": "+491234567", "options": {"actorId": "x"}}}),
    );
    let m = sip.wait_for(|m| m["type"] == "internal").await;
    assert_eq!(m["internal"]["type"], "dialout");
    assert_eq!(m["internal"]["dialout"]["roomid"], "123");
    assert_eq!(m["internal"]["dialout"]["request"]["number"], "+491234567");
    assert_eq!(
        m["internal"]["dialout"]["request"]["options"]["actorId"],
        "x"
    );
    let id = m["id"].as_str().unwrap().to_string();
    sip.send(json!({"id": id, "type": "internal", "internal": {"type": "dialout", "dialout": {"type": "status", "status": {"callid": "call-1", "status": "accepted"}}}})).await;
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"type": "dialout", "dialout": {"callid": "call-1"}})
    );

    // An error answer is passed on with an HTTP error status.
    let request = ts.spawn_backend_request(
        "123",
        json!({"type": "dialout", "dialout": {"number": "+491234567"}}),
    );
    let m = sip.wait_for(|m| m["type"] == "internal").await;
    let id = m["id"].as_str().unwrap().to_string();
    sip.send(json!({"id": id, "type": "internal", "internal": {"type": "dialout", "dialout": {"type": "error", "error": {"code": "busy", "message": "Line busy"}}}})).await;
    let (status, body) = request.await.unwrap();
    assert_eq!(status, 502);
    assert_eq!(body["dialout"]["error"]["code"], "busy");
    ts.stop().await;
}

/// The SIP bridge's later news of a dialout call reach the call's room as
/// the Go server gives them: statuses as transient `callstatus_<callid>`
/// (removed 5 s after the call ended), errors as a `dialout` message.
#[tokio::test]
async fn dialout_status_and_errors_reach_the_room() {
    let ts = TestServer::start().await;
    let mut alice = ts.client_in_room("alice", "123").await;
    let mut bob = ts.client_in_room("bob", "other").await;
    bob.wait_join_of(&bob.session_id.clone()).await;
    let (mut sip, _) = internal_client(&ts.ws_url(), &["start-dialout"]).await;
    let request = ts.spawn_backend_request(
        "123",
        json!({"type": "dialout", "dialout": {"number": "+491234567"}}),
    );
    let m = sip.wait_for(|m| m["type"] == "internal").await;
    let id = m["id"].as_str().unwrap().to_string();
    let status = |s: Value| json!({"type": "internal", "internal": {"type": "dialout", "dialout": {"type": "status", "roomid": "123", "status": s}}});
    let mut answer = status(json!({"callid": "call-1", "status": "accepted"}));
    answer["id"] = json!(id);
    sip.send(answer).await;
    let (code, body) = request.await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(body["dialout"]["callid"], "call-1");
    let key = "callstatus_call-1";
    let m = alice.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(
        m["transient"],
        json!({"type": "set", "key": key, "value": {"callid": "call-1", "status": "accepted"}})
    );

    // Later statuses come without a request id.
    sip.send(status(json!({"callid": "call-1", "status": "ringing"})))
        .await;
    let m = alice.expect_type("transient").await;
    assert_eq!(m["transient"]["value"]["status"], "ringing");
    assert_eq!(m["transient"]["oldvalue"]["status"], "accepted");
    sip.send(status(
        json!({"callid": "call-1", "status": "cleared", "cause": "hangup", "code": 16}),
    ))
    .await;
    let m = alice.expect_type("transient").await;
    let cleared = json!({"callid": "call-1", "status": "cleared", "cause": "hangup", "code": 16});
    assert_eq!(m["transient"]["value"], cleared);
    let started = std::time::Instant::now();
    let m = alice
        .wait_for_within(Duration::from_secs(10), |m| m["type"] == "transient")
        .await;
    assert_eq!(
        m["transient"],
        json!({"type": "remove", "key": key, "oldvalue": cleared})
    );
    assert!(started.elapsed() >= Duration::from_secs(4), "removed early");

    // An error that answers a request goes to Nextcloud only.
    let request = ts.spawn_backend_request(
        "123",
        json!({"type": "dialout", "dialout": {"number": "+491234567"}}),
    );
    let m = sip.wait_for(|m| m["type"] == "internal").await;
    let id = m["id"].as_str().unwrap().to_string();
    sip.send(json!({"id": id, "type": "internal", "internal": {"type": "dialout", "dialout": {"type": "error", "roomid": "123", "error": {"code": "busy", "message": "Line busy"}}}})).await;
    let (code, body) = request.await.unwrap();
    assert_eq!(code, 502);
    assert_eq!(body["dialout"]["error"]["code"], "busy");
    nothing_before_marker(&mut bob, &mut alice).await;

    // A status without its body is refused; null fields read as absent.
    sip.send(json!({"id": "s1", "type": "internal", "internal": {"type": "dialout", "dialout": {"type": "status", "roomid": "123"}}})).await;
    let e = sip.expect_error("invalid_format").await;
    assert_eq!(e["id"], "s1");
    sip.send(status(
        json!({"callid": "call-2", "status": "ringing", "cause": null, "code": null}),
    ))
    .await;
    let m = alice.expect_type("transient").await;
    assert_eq!(
        m["transient"]["value"],
        json!({"callid": "call-2", "status": "ringing"})
    );

    // Without a request, an error goes to the room.
    sip.send(json!({"type": "internal", "internal": {"type": "dialout", "dialout": {"type": "error", "roomid": "123", "error": {"code": "busy", "message": "Line busy"}}}})).await;
    let m = alice.expect_type("dialout").await;
    assert_eq!(
        m["dialout"],
        json!({"type": "error", "error": {"code": "busy", "message": "Line busy"}})
    );
    // Neither the bridge (no error for a message without id) nor another
    // room heard anything.
    nothing_before_marker(&mut alice, &mut sip).await;
    nothing_before_marker(&mut alice, &mut bob).await;
    ts.stop().await;
}

#[tokio::test]
async fn the_server_pings_the_backend_for_sessions_in_rooms() {
    let ts = TestServer::start_with("[backend]\npinginterval = 1\n").await;
    let (_a, _b, _c, _d) = setup(&ts).await;
    let ping = ts.nc.wait_for("ping", |_| true).await;
    assert_eq!(ping.body["ping"]["roomid"], "room1");
    let mut ids: Vec<String> = ping.body["ping"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sessionid"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["nc-alice", "nc-bob"]);
    assert_eq!(
        ping.body["ping"]["entries"][0]["userid"]
            .as_str()
            .map(|u| u == "alice" || u == "bob"),
        Some(true)
    );
    ts.stop().await;
}

#[tokio::test]
async fn pings_are_batched_across_rooms_with_a_session_ping_limit() {
    let ts = TestServer::start_with("[backend]\npinginterval = 1\n").await;
    // The server fetches the capabilities itself (no hello v2 needed).
    ts.nc.state.lock().unwrap().ping_limit = Some(2);
    let _a = ts.client_in_room("alice", "r1").await;
    let _b = ts.client_in_room("bob", "r2").await;
    let _c = ts.client_in_room("carol", "r3").await;
    let entries = |reqs: &[Recorded]| -> std::collections::HashSet<String> {
        reqs.iter()
            .flat_map(|r| r.body["ping"]["entries"].as_array().unwrap().clone())
            .map(|e| e["sessionid"].as_str().unwrap().to_string())
            .collect()
    };
    let reqs = ts
        .nc
        .wait_all("ping", |reqs| entries(reqs).len() == 3)
        .await;
    for r in &reqs {
        assert_eq!(r.body["ping"]["roomid"], "", "batched pings carry no room");
        assert!(r.body["ping"]["entries"].as_array().unwrap().len() <= 2);
    }
    ts.stop().await;
}

/// A virtual session named in a `disinvite` stays in the room; its
/// internal client gets a `hangup` control for it (reason `disinvited`)
/// and removes it, as with the Go server.
#[tokio::test]
async fn disinvite_of_a_virtual_session_asks_its_internal_client_to_hang_up() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    a.wait_join_of(&a.session_id.clone()).await;
    let (mut sip, _) = internal_client(&ts.ws_url(), &[]).await;
    sip.send(
        json!({"type": "internal", "internal": {"type": "addsession", "addsession": {
        "sessionid": "phone-1", "roomid": "room1", "userid": "p1"}}}),
    )
    .await;
    let j = a.wait_for(|m| m["event"]["type"] == "join").await;
    let vsid = j["event"]["join"][0]["sessionid"]
        .as_str()
        .unwrap()
        .to_string();
    ts.backend_request(
        "room1",
        &json!({"type": "disinvite", "disinvite": {"sessionids": [vsid]}}),
    )
    .await;
    let c = sip.wait_for(|m| m["type"] == "control").await;
    assert_eq!(
        c["control"],
        json!({"recipient": {"type": "session", "sessionid": "phone-1", "userid": "p1"},
               "data": {"type": "hangup", "hangup": {"reason": "disinvited"}}})
    );
    // Still in the room: alice sees no leave before a marker...
    sip.message_to(
        json!({"type": "session", "sessionid": a.session_id}),
        json!({"marker": 1}),
    )
    .await;
    let m = a
        .wait_for(|m| m["event"]["type"] == "leave" || m["type"] == "message")
        .await;
    assert_eq!(m["message"]["data"]["marker"], 1, "{m}");
    // ...and one once the internal client removed it.
    sip.send(
        json!({"type": "internal", "internal": {"type": "removesession", "removesession": {
        "sessionid": "phone-1", "roomid": "room1"}}}),
    )
    .await;
    let l = a.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([vsid]));
    ts.stop().await;
}
