//! The backend API and the other HTTP endpoints, case by case against this
//! server and the Go server 0.4.1 (through `go_parity::Side`): what
//! Nextcloud gets back and what the clients in the room see.

use serde_json::{json, Value};

use crate::go_parity::{ours_then_go, GoServer, Side};
use crate::support::{FakeNextcloud, TestServer, SECRET};
use spreed_signaling::backend::checksum;

/// Headers of a backend API request signed with `secret`; with `backend`
/// the `Spreed-Signaling-Backend` header.
fn signed(body: &[u8], secret: &str, backend: Option<&str>) -> Vec<(&'static str, String)> {
    let random = checksum::new_random();
    let sum = checksum::calculate(secret.as_bytes(), random.as_bytes(), body);
    let mut h = vec![
        ("Content-Type", "application/json".to_string()),
        ("Spreed-Signaling-Random", random),
        ("Spreed-Signaling-Checksum", sum),
    ];
    if let Some(b) = backend {
        h.push(("Spreed-Signaling-Backend", b.to_string()));
    }
    h
}

/// Sends `body` with `headers` to the room API of `s`: status and body.
async fn post(s: &Side, room: &str, body: &[u8], headers: &[(&str, String)]) -> (u16, String) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/api/v1/room/{room}", s.url))
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn is_room_message(m: &Value) -> bool {
    m["type"] == "event" && m["event"]["target"] == "room" && m["event"]["type"] == "message"
}

/// An `update` with the properties the room already has changes nothing:
/// no `room` message (the Talk client reloads its conversations on each);
/// new properties do send one.
async fn update_case(s: &Side) {
    let mut a = s.user_in_room("alice", "room1").await;
    let mut b = s.user_in_room("bob", "room1").await;
    a.wait_join_of(&b.session_id).await;
    let update = |name: &str| {
        json!({"type": "update", "update": {"userids": ["alice", "bob"],
            "properties": {"name": name, "type": 2}}})
    };
    // What the fake Nextcloud answered to the joins, byte for byte.
    for name in ["Room room1", "New", "New", "Third"] {
        let (status, _) = s.backend_request("room1", &update(name)).await;
        assert_eq!(status, 200, "{}", s.name);
    }
    for c in [&mut a, &mut b] {
        for name in ["New", "Third"] {
            let m = c.wait_for(|m| m["type"] == "room").await;
            assert_eq!(m["room"]["roomid"], "room1", "{}: {m}", s.name);
            assert_eq!(m["room"]["properties"]["name"], name, "{}: {m}", s.name);
        }
    }
}

#[tokio::test]
async fn update_sends_the_room_message_only_for_new_properties_as_in_go() {
    ours_then_go!(update_case, "", "update_sends_the_room_message_only");
}

/// A `message` without `data` (or without a body) is accepted and sends
/// nothing; the next message with data is the first event the room sees.
async fn message_without_data_case(s: &Side) {
    let mut a = s.user_in_room("alice", "room1").await;
    for body in [
        json!({"type": "message", "message": {}}),
        json!({"type": "message"}),
        json!({"type": "message", "message": {"data": null}}),
    ] {
        let (status, _) = s.backend_request("room1", &body).await;
        assert_eq!(status, 200, "{}: {body}", s.name);
    }
    let (status, _) = s
        .backend_request(
            "room1",
            &json!({"type": "message", "message": {"data": {"type": "recording", "n": 1}}}),
        )
        .await;
    assert_eq!(status, 200, "{}", s.name);
    let m = a.wait_for(is_room_message).await;
    assert_eq!(m["event"]["message"]["data"]["n"], 1, "{}: {m}", s.name);
}

#[tokio::test]
async fn a_room_message_without_data_sends_nothing_as_in_go() {
    ours_then_go!(
        message_without_data_case,
        "",
        "a_room_message_without_data_sends_nothing"
    );
}

/// The checksum is the lower-case hex string (upper case is refused), and a
/// request naming no backend belongs to the backend whose secret made its
/// checksum, also with several backends.
async fn checksum_case(s: &Side) {
    let mut a = s.user_in_room("alice", "room1").await;
    let body = |n: u32| {
        serde_json::to_vec(&json!({"type": "message", "message": {"data": {"n": n}}})).unwrap()
    };
    let mut upper = signed(&body(1), SECRET, Some(&s.nc.url));
    upper[2].1 = upper[2].1.to_uppercase();
    let (status, _) = post(s, "room1", &body(1), &upper).await;
    assert_eq!(status, 403, "{}", s.name);
    // Signed with the second backend's secret, named by no header: that
    // backend's room1, where nobody is.
    let (status, _) = post(
        s,
        "room1",
        &body(2),
        &signed(&body(2), "other-secret", None),
    )
    .await;
    assert_eq!(status, 200, "{}", s.name);
    let (status, _) = post(s, "room1", &body(3), &signed(&body(3), SECRET, None)).await;
    assert_eq!(status, 200, "{}", s.name);
    let (status, _) = post(s, "room1", &body(4), &signed(&body(4), "wrong", None)).await;
    assert_eq!(status, 403, "{}", s.name);
    let m = a.wait_for(is_room_message).await;
    assert_eq!(m["event"]["message"]["data"]["n"], 3, "{}: {m}", s.name);
}

#[tokio::test]
async fn checksums_and_requests_without_a_backend_header_as_in_go() {
    ours_then_go!(
        checksum_case,
        "[backend]\nbackends = nc1, nc2\n[nc2]\nurl = http://127.0.0.1:9/other\nsecret = other-secret\n",
        "checksums_and_requests_without_a_backend_header"
    );
}

/// Answers to what is not a backend API request: other paths (404 with
/// Go's text), other methods (405), `/spreed` without a handshake (400),
/// and the `nosniff` header on the room API's answers.
async fn http_case(s: &Side) {
    let http = reqwest::Client::new();
    for path in [
        "/nope",
        "/",
        "/api/v1/",
        "/api/v1/room/",
        "/api/v1/room/r1/x",
    ] {
        let r = http.post(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{}: {path}", s.name);
        assert_eq!(
            r.text().await.unwrap(),
            "404 page not found\n",
            "{}",
            s.name
        );
    }
    for path in ["/api/v1/room/r1"] {
        let r = http.get(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405, "{}: {path}", s.name);
    }
    for path in ["/api/v1/welcome", "/api/v1/stats", "/metrics"] {
        let r = http.post(format!("{}{path}", s.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405, "{}: {path}", s.name);
    }
    for r in [
        http.get(format!("{}/spreed", s.url)),
        http.post(format!("{}/spreed", s.url)),
    ] {
        let r = r.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{}", s.name);
    }
    let body = serde_json::to_vec(&json!({"type": "message", "message": {}})).unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/room/r1", s.url))
        .headers(
            signed(&body, SECRET, Some(&s.nc.url))
                .into_iter()
                .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
                .collect(),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", s.name);
    assert_eq!(
        r.headers()["x-content-type-options"],
        "nosniff",
        "{}",
        s.name
    );
}

#[tokio::test]
async fn other_paths_and_methods_are_answered_as_in_go() {
    ours_then_go!(http_case, "", "other_paths_and_methods");
}
