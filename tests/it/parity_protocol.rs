//! Client-protocol cases run against the Go server 0.4.1 and this one
//! (`go_parity::Side`): where the spec is silent, this server answers as
//! Go does.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::go_parity::{GoServer, Side};
use crate::support::*;

/// Runs `case` against this server, then against Go 0.4.1 when it is
/// installed.
macro_rules! both {
    ($case:ident) => {{
        let ts = TestServer::start().await;
        $case(&Side::of(&ts)).await;
        ts.stop().await;
        let nc = FakeNextcloud::start().await;
        if let Some(go) = GoServer::start(&nc, "", stringify!($case)).await {
            $case(&Side::go(&go, &nc)).await;
        }
    }};
}

/// A binary data frame, final or not, or a continuation.
fn frame(op: Data, fin: bool, data: &[u8]) -> Message {
    Message::Frame(Frame::message(data.to_vec(), OpCode::Data(op), fin))
}

/// A binary message, before and after hello, whole or fragmented, is
/// answered with `invalid_format` (no id) and the connection goes on.
async fn binary_case(s: &Side) {
    let mut c = s.connect().await;
    c.send_raw(Message::Binary(vec![b'{'; 10].into())).await;
    let e = c.expect_error("invalid_format").await;
    assert!(e.get("id").is_none(), "{}: {e}", s.name);
    let url = s.nc.backend_url();
    c.hello_v1(&url, json!({"userid": "alice"})).await;
    c.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    let e = c.expect_error("invalid_format").await;
    assert!(e.get("id").is_none(), "{}: {e}", s.name);
    c.send_raw(frame(Data::Binary, false, b"ab")).await;
    c.send_raw(frame(Data::Continue, true, b"cd")).await;
    c.expect_error("invalid_format").await;
    // Still served, in order.
    c.send(
        json!({"id": "probe", "type": "room", "room": {"roomid": "room1", "sessionid": "nc-a"}}),
    )
    .await;
    let r = c.recv().await;
    assert_eq!(r["id"], "probe", "{}: {r}", s.name);
    assert_eq!(r["room"]["roomid"], "room1", "{}: {r}", s.name);
}

#[tokio::test]
async fn binary_messages_are_answered_with_invalid_format_as_in_go() {
    both!(binary_case);
}

/// An internal client's virtual session in `room1` (`addsession` with
/// user data); the room's join event of it, as `a` sees it.
async fn add_phone(s: &Side, a: &mut Client) -> (Client, Value) {
    let mut sip = s.connect().await;
    let mut hello = internal_hello("0123456789012345678901234567890123456789");
    hello["hello"]["auth"]["params"]["backend"] = json!(s.nc.url);
    sip.send(hello).await;
    let h = sip.expect_type("hello").await;
    let own = h["hello"]["sessionid"].clone();
    sip.send(json!({"id": "j", "type": "room", "room": {"roomid": "room1", "sessionid": ""}}))
        .await;
    a.wait_for(|m| m["event"]["type"] == "join" && m["event"]["join"][0]["sessionid"] == own)
        .await;
    sip.send(
        json!({"id": "a1", "type": "internal", "internal": {"type": "addsession", "addsession": {
        "sessionid": "phone-1", "roomid": "room1", "user": {"type": "phone", "number": "+49"}}}}),
    )
    .await;
    let j = a
        .wait_for(|m| {
            m["event"]["type"] == "join" && m["event"]["join"][0]["user"]["type"] == "phone"
        })
        .await;
    (sip, j)
}

/// The join entry of a virtual session has its session id, an empty
/// user id and its user data, and no `roomsessionid` (its room session
/// id is for Nextcloud only); a newcomer's list has the same entry.
async fn virtual_join_entry_case(s: &Side) {
    let mut a = s.user_in_room("alice", "room1").await;
    let (_sip, j) = add_phone(s, &mut a).await;
    let entry = &j["event"]["join"][0];
    let vsid = entry["sessionid"].clone();
    assert!(
        vsid.as_str().is_some_and(|v| !v.is_empty()),
        "{}: {j}",
        s.name
    );
    assert_eq!(
        entry,
        &json!({"sessionid": vsid, "userid": "", "user": {"type": "phone", "number": "+49"}}),
        "{}: {j}",
        s.name
    );
    let (mut b, _) = s.user("bob").await;
    b.send(json!({"id": "j", "type": "room", "room": {"roomid": "room1", "sessionid": "nc-bob"}}))
        .await;
    let list = b
        .wait_for(|m| {
            m["event"]["type"] == "join"
                && m["event"]["join"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|e| e["sessionid"] == vsid))
        })
        .await;
    let seen = list["event"]["join"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["sessionid"] == vsid)
        .unwrap();
    assert_eq!(seen, entry, "{}: {list}", s.name);
}

#[tokio::test]
async fn a_virtual_sessions_join_entry_has_no_roomsessionid_as_in_go() {
    both!(virtual_join_entry_case);
}

/// A virtual session is reported alive to Nextcloud in the `ping`
/// requests, by its session id (the one Nextcloud got in `session` `add`)
/// and without a user id; the internal client itself is not.
async fn virtual_ping_case(s: &Side) {
    let mut a = s.user_in_room("alice", "room1").await;
    let (_sip, j) = add_phone(s, &mut a).await;
    let vsid = j["event"]["join"][0]["sessionid"]
        .as_str()
        .unwrap()
        .to_string();
    let entries = |st: &crate::support::NcState| -> Vec<Value> {
        st.requests
            .iter()
            .filter(|r| r.kind == "ping")
            .flat_map(|r| r.body["ping"]["entries"].as_array().unwrap().clone())
            .collect()
    };
    let state = s.nc.state.clone();
    let v = vsid.clone();
    // Both servers ping every 10 s.
    eventually(
        "the virtual session is pinged",
        Duration::from_secs(15),
        || {
            entries(&state.lock().unwrap())
                .iter()
                .any(|e| e["sessionid"] == v.as_str())
        },
    )
    .await;
    let all = entries(&state.lock().unwrap());
    let mine: Vec<&Value> = all
        .iter()
        .filter(|e| e["sessionid"] == vsid.as_str())
        .collect();
    assert_eq!(mine[0], &json!({"sessionid": vsid}), "{}: {all:?}", s.name);
    assert!(
        all.iter()
            .all(|e| e["sessionid"] == "nc-alice" || e["sessionid"] == vsid.as_str()),
        "{}: {all:?}",
        s.name
    );
}

#[tokio::test]
async fn virtual_sessions_are_pinged_to_nextcloud_as_in_go() {
    both!(virtual_ping_case);
}

/// `message` and `control` with `"data": null` are refused with
/// `invalid_format` and the request id, and reach nobody.
async fn null_data_case(s: &Side) {
    let mut a = s.user_in_room("alice", "room1").await;
    let mut b = s.user_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    let to_b = json!({"type": "session", "sessionid": b.session_id});
    for kind in ["message", "control"] {
        a.send(json!({"id": kind, "type": kind, kind: {"recipient": to_b, "data": null}}))
            .await;
        let e = a.wait_for(|m| m["type"] == "error").await;
        assert_eq!(e["id"], kind, "{}: {e}", s.name);
        assert_eq!(e["error"]["code"], "invalid_format", "{}: {e}", s.name);
    }
    a.message_to(to_b, json!({"after": true})).await;
    let m = b.wait_for(|m| m["type"] != "event").await;
    assert_eq!(
        m["message"]["data"],
        json!({"after": true}),
        "{}: {m}",
        s.name
    );
}

#[tokio::test]
async fn null_data_is_invalid_format_as_in_go() {
    both!(null_data_case);
}

/// A `message` or `control` to a session that does not exist is not
/// answered: the sender's next message is its peer's.
async fn unknown_session_case(s: &Side) {
    let mut a = s.user_in_room("alice", "room1").await;
    let mut b = s.user_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    let nobody = json!({"type": "session", "sessionid": "no-such-session-0123456789"});
    for kind in ["message", "control"] {
        a.send(json!({"id": kind, "type": kind, kind: {"recipient": nobody, "data": {"x": 1}}}))
            .await;
    }
    // Both were handled (any answer queued for alice) before bob gets this.
    a.message_to(
        json!({"type": "session", "sessionid": b.session_id}),
        json!({"marker": true}),
    )
    .await;
    let m = b.wait_for(|m| m["type"] != "event").await;
    assert_eq!(m["message"]["data"]["marker"], true, "{}: {m}", s.name);
    b.message_to(
        json!({"type": "session", "sessionid": a.session_id}),
        json!({"from": "bob"}),
    )
    .await;
    let m = a.wait_for(|m| m["type"] != "event").await;
    assert_eq!(m["message"]["data"]["from"], "bob", "{}: {m}", s.name);
}

#[tokio::test]
async fn a_message_to_an_unknown_session_is_not_answered_as_in_go() {
    both!(unknown_session_case);
}

/// A hello whose `auth.url` is no URL is `invalid_format`; a URL of no
/// configured backend `invalid_backend`.
async fn hello_url_case(s: &Side) {
    for (url, code) in [
        ("not a url", "invalid_format"),
        (
            "https://unknown.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
            "invalid_backend",
        ),
    ] {
        let mut c = s.connect().await;
        c.send(json!({"id": "h", "type": "hello", "hello": {"version": "1.0", "auth": {"url": url, "params": {}}}}))
            .await;
        let e = c.expect_type("error").await;
        assert_eq!(e["id"], "h", "{}: {e}", s.name);
        assert_eq!(e["error"]["code"], code, "{} {url}: {e}", s.name);
    }
}

#[tokio::test]
async fn a_hello_url_that_is_no_url_is_invalid_format_as_in_go() {
    both!(hello_url_case);
}
