//! Timers and bad input: nothing panics, each gets its error or a
//! documented close, and other sessions keep working.

use crate::support::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// Proves `b` still works: a message from `a` arrives.
async fn still_works(a: &mut Client, b: &mut Client) {
    a.message_to(
        json!({"type": "session", "sessionid": b.session_id}),
        json!({"alive": true}),
    )
    .await;
    let m = b
        .wait_for(|m| m["type"] == "message" && m["message"]["data"]["alive"] == true)
        .await;
    assert_eq!(m["message"]["sender"]["sessionid"], a.session_id.as_str());
}

#[tokio::test]
async fn malformed_messages_get_invalid_format_and_the_connection_survives() {
    let ts = TestServer::start().await;
    let mut a = ts.client(Some("alice")).await;
    let mut b = ts.client(Some("bob")).await;
    let bad = [
        "not json",
        "{\"type\":",
        "[]",
        "{\"id\":\"x\"}",
        "{\"id\":\"x\",\"type\":42}",
        "{\"id\":\"x\",\"type\":\"message\",\"message\":\"str\"}",
        "{\"id\":\"x\",\"type\":\"room\",\"room\":{\"roomid\":5}}",
        "{\"id\":\"x\",\"type\":\"transient\",\"transient\":{\"type\":\"set\",\"key\":\"k\",\"ttl\":\"soon\"}}",
    ];
    for text in bad {
        a.send_raw(Message::Text(text.into())).await;
        let e = a.expect_type("error").await;
        assert_eq!(e["error"]["code"], "invalid_format", "{text}: {e}");
    }
    a.send(json!({"id": "u", "type": "dance"})).await;
    let e = a.expect_error("invalid_format").await;
    assert_eq!(e["id"], "u");
    still_works(&mut a, &mut b).await;
    still_works(&mut b, &mut a).await;
    ts.stop().await;
}

#[tokio::test]
async fn oversized_frames_close_with_1009_and_others_keep_working() {
    let ts = TestServer::start().await;
    let mut a = ts.client(Some("alice")).await;
    let mut b = ts.client(Some("bob")).await;
    let mut c = ts.client(Some("carol")).await;
    let big = format!("{{\"type\":\"message\",\"message\":{{\"recipient\":{{\"type\":\"user\",\"userid\":\"bob\"}},\"data\":\"{}\"}}}}", "x".repeat(70 * 1024));
    a.send_raw(Message::Text(big.into())).await;
    assert_eq!(a.expect_close().await, Some(1009));
    still_works(&mut c, &mut b).await;
    ts.stop().await;
}

/// The value of a counter without labels in `/metrics`.
async fn counter(ts: &TestServer, name: &str) -> u64 {
    let text = ts.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn floods_are_slowed_down_and_nothing_is_lost() {
    let ts = TestServer::start_with(
        "[clients]
messagespersecond = 100
messageburst = 10
",
    )
    .await;
    let mut a = ts.client(Some("alice")).await;
    let mut b = ts.client(Some("bob")).await;
    let mut c = ts.client(Some("carol")).await;
    for i in 0..200 {
        a.send(json!({"id": format!("m{i}"), "type": "message", "message": {"recipient": {"type": "session", "sessionid": b.session_id}, "data": {"i": i}}})).await;
    }
    // Another connection is not held back by the flood.
    c.message_to(
        json!({"type": "session", "sessionid": b.session_id}),
        json!({"from": "carol"}),
    )
    .await;
    // Every flood message arrives, in order; carol's somewhere in between.
    let mut next = 0;
    let mut carol = false;
    while next < 200 || !carol {
        let m = b.recv().await;
        assert_eq!(m["type"], "message", "{m}");
        if m["message"]["data"]["from"] == "carol" {
            carol = true;
            continue;
        }
        assert_eq!(m["message"]["data"]["i"], next, "lost or reordered");
        next += 1;
    }
    // The sender got no error: it was only read more slowly.
    a.message_to(
        json!({"type": "session", "sessionid": a.session_id}),
        json!({}),
    )
    .await;
    a.send(json!({"id": "probe", "type": "room", "room": {"roomid": ""}}))
        .await;
    let r = a.recv().await;
    assert_eq!(r["type"], "room", "unexpected: {r}");
    assert_eq!(r["id"], "probe");
    assert!(counter(&ts, "signaling_client_read_pauses_total").await > 0);
    ts.stop().await;
}

#[tokio::test]
async fn byte_floods_are_slowed_down_and_nothing_is_lost() {
    let ts = TestServer::start_with(
        "[clients]
bytespersecond = 200000
byteburst = 65536
",
    )
    .await;
    let mut a = ts.client(Some("alice")).await;
    let mut b = ts.client(Some("bob")).await;
    let pad = "x".repeat(30_000);
    for i in 0..20 {
        a.message_to(
            json!({"type": "session", "sessionid": b.session_id}),
            json!({"i": i, "pad": pad}),
        )
        .await;
    }
    for i in 0..20 {
        let m = b.recv().await;
        assert_eq!(m["message"]["data"]["i"], i, "{}", m["type"]);
    }
    assert!(counter(&ts, "signaling_client_read_pauses_total").await > 0);
    ts.stop().await;
}

#[tokio::test]
async fn hello_must_come_within_the_hello_timeout() {
    let ts = TestServer::start_with("[clients]\nhellotimeout = 1\n").await;
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    let bye = c.expect_type("bye").await;
    assert_eq!(bye["bye"]["reason"], "hello_timeout");
    c.expect_close().await;
    ts.stop().await;
}

#[tokio::test]
async fn guests_must_join_a_room_within_the_room_timeout() {
    let ts = TestServer::start_with("[clients]\nroomtimeout = 1\n").await;
    // A guest in a room stays...
    let mut g2 = ts.client(None).await;
    g2.join("room1", "nc-g2").await;
    let mut u = ts.client_in_room("alice", "room1").await;
    u.wait_join_of(&u.session_id.clone()).await;
    // ...while one that joins nothing is sent away (after g2's deadline too).
    let mut g = ts.client(None).await;
    let bye = g.expect_type("bye").await;
    assert_eq!(bye["bye"]["reason"], "room_join_timeout");
    g.expect_close().await;
    still_works(&mut u, &mut g2).await;
    ts.stop().await;
}

#[tokio::test]
async fn a_dropped_session_expires_after_the_resume_timeout() {
    let ts = TestServer::start_with("[sessions]\nresumetimeout = 1\n").await;
    let a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    b.wait_join_of(&a.session_id).await;
    let (sid, rid) = (a.session_id.clone(), a.resume_id.clone());
    drop(a);
    let l = b.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([sid]));
    ts.assert_backend_told_leave("nc-alice").await;
    ts.assert_resume_refused(&rid).await;
    ts.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_with_1013_and_can_resume() {
    let ts = TestServer::start_with("[clients]\noutboxbytes = 65536\nmessagespersecond = 100000\n[sessions]\nresumequeuebytes = 67108864\nresumequeuemessages = 100000\n").await;
    let mut a = ts.client(Some("alice")).await;
    let mut slow = ts.client(Some("slow")).await;
    let payload = "y".repeat(32 * 1024);
    // Keep sending until the slow reader's socket and outbox are full.
    let n = 600;
    for i in 0..n {
        a.message_to(
            json!({"type": "session", "sessionid": slow.session_id}),
            json!({"i": i, "p": payload}),
        )
        .await;
    }
    // The sender is never blocked or disconnected: it can still talk.
    let mut other = ts.client(Some("other")).await;
    still_works(&mut a, &mut other).await;
    // The slow client receives in order until the close 1013.
    let mut next = 0;
    let code = loop {
        match slow.recv_or_close().await {
            Ok(m) => {
                assert_eq!(m["message"]["data"]["i"], next);
                next += 1;
            }
            Err(code) => break code,
        }
    };
    assert_eq!(code, Some(1013));
    let metrics = ts.metrics_text().await;
    assert!(
        metrics.contains("signaling_client_send_queue_overflows_total 1"),
        "{metrics}"
    );
    // Resume: the rest arrives, in order, nothing lost.
    let mut r = ts.connect().await;
    r.expect_type("welcome").await;
    r.send(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": slow.resume_id}}))
        .await;
    r.expect_type("hello").await;
    while next < n {
        let m = r.recv().await;
        assert_eq!(m["message"]["data"]["i"], next);
        next += 1;
    }
    ts.stop().await;
}

/// A small deterministic generator (xorshift), so the test is repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

/// Replaces random parts of a valid message with values of other types.
fn mutate(rng: &mut Rng, v: &serde_json::Value, depth: usize) -> serde_json::Value {
    use serde_json::Value;
    let odd = [
        Value::Null,
        json!(true),
        json!(-1),
        json!(1.5e300),
        json!(""),
        json!("x".repeat(300)),
        json!([]),
        json!({}),
        json!([1, {"a": null}]),
        json!("\u{0000}\u{ffff}"),
    ];
    if depth > 0 && rng.next().is_multiple_of(5) {
        return rng.pick(&odd).clone();
    }
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, x) in m {
                match rng.next() % 10 {
                    0 => {}
                    1 => {
                        out.insert(format!("{k}x"), x.clone());
                    }
                    _ => {
                        out.insert(k.clone(), mutate(rng, x, depth + 1));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| mutate(rng, x, depth + 1)).collect()),
        other => other.clone(),
    }
}

#[tokio::test]
async fn thousands_of_mutated_messages_break_nothing() {
    let ts = TestServer::start_with("[clients]\nmessagespersecond = 100000\n").await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    let templates = [
        json!({"id": "1", "type": "hello", "hello": {"version": "1.0", "resumeid": "x", "auth": {"url": "http://x", "params": {"a": 1}}}}),
        json!({"id": "2", "type": "room", "room": {"roomid": "room2", "sessionid": "s"}}),
        json!({"id": "3", "type": "message", "message": {"recipient": {"type": "session", "sessionid": b.session_id}, "data": {"type": "offer", "roomType": "video"}}}),
        json!({"id": "4", "type": "control", "control": {"recipient": {"type": "user", "userid": "bob"}, "data": {"type": "mute"}}}),
        json!({"id": "5", "type": "transient", "transient": {"type": "set", "key": "k", "value": {"v": [1]}, "ttl": 1000}}),
        json!({"id": "6", "type": "internal", "internal": {"type": "addsession", "addsession": {"sessionid": "v", "roomid": "room1"}}}),
        json!({"id": "7", "type": "message", "message": {"recipient": {"type": "room"}, "data": "plain"}}),
    ];
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut mangled = ts.client(Some("mallory")).await;
    for i in 0..3000 {
        let t = rng.pick(&templates).clone();
        let m = mutate(&mut rng, &t, 0);
        let text = if i % 7 == 0 {
            // Truncated JSON now and then.
            let s = m.to_string();
            let mut cut = s.len() / 2;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s[..cut].to_string()
        } else {
            m.to_string()
        };
        mangled
            .send_raw(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await;
    }
    // The server survived and everyone else is unaffected.
    still_works(&mut a, &mut b).await;
    still_works(&mut b, &mut a).await;
    // Still answered: "data": null is invalid_format with the request id
    // (a message to an unknown session goes unanswered, as in Go).
    mangled.send(json!({"id": "last", "type": "message", "message": {"recipient": {"type": "session", "sessionid": "nope"}, "data": null}})).await;
    let last = mangled.wait_for(|m| m["id"] == "last").await;
    assert_eq!(last["error"]["code"], "invalid_format");
    ts.stop().await;
}

#[tokio::test]
async fn keepalive_pings_keep_readers_and_drop_silent_connections() {
    let ts = TestServer::start_with("[clients]\npinginterval = 1\nreadtimeout = 2\n").await;
    let mut live = ts.client(Some("alice")).await;
    let mut silent = ts.client(Some("bob")).await;
    // The live client reads (and so answers pings) for three seconds,
    // longer than the read timeout.
    let mut pings = 0;
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        if let Ok(Some(Ok(m))) = tokio::time::timeout(
            until - tokio::time::Instant::now(),
            futures_util::StreamExt::next(&mut live.ws),
        )
        .await
        {
            if m.is_ping() {
                pings += 1;
            }
        }
    }
    assert!(pings >= 2, "{pings} pings");
    // The silent one never read, so never answered a ping: the server
    // closed it after the read timeout (expect_close panics if it stays
    // open; under load the close frame may be cut off by the reset).
    let code = silent.expect_close().await;
    assert!(matches!(code, Some(1000) | None), "{code:?}");
    let mut other = ts.client(Some("carol")).await;
    still_works(&mut other, &mut live).await;
    ts.stop().await;
}

#[tokio::test]
async fn an_overflowing_resume_queue_ends_the_session_and_tells_nextcloud() {
    let ts = TestServer::start_with("[sessions]\nresumequeuemessages = 5\n").await;
    let a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    b.wait_join_of(&a.session_id).await;
    let (sid, rid) = (a.session_id.clone(), a.resume_id.clone());
    drop(a);
    // Wait until the server noticed the dropped connection: messages are
    // then queued for resume, not written to the dead socket.
    let hub = ts.server.as_ref().unwrap().hub.clone();
    eventually("the connection is gone", TIMEOUT, || {
        hub.disconnected_sessions() == 1
    })
    .await;
    for i in 0..10 {
        b.message_to(
            json!({"type": "session", "sessionid": sid}),
            json!({"i": i}),
        )
        .await;
    }
    let l = b.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([sid]));
    ts.assert_backend_told_leave("nc-alice").await;
    ts.assert_resume_refused(&rid).await;
    ts.stop().await;
}

/// A WebSocket spoken byte by byte, for frames a client library refuses
/// to send.
struct RawWs(tokio::net::TcpStream);

impl RawWs {
    /// Connects to `/spreed`, completes the handshake and reads the welcome.
    async fn connect(ts: &TestServer) -> RawWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = ts.url.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET /spreed HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            assert_eq!(
                s.read(&mut b).await.unwrap(),
                1,
                "closed during the handshake"
            );
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // RFC 6455's example key and its accept value.
        assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
        let mut ws = RawWs(s);
        let (op, payload) = ws.frame().await.expect("welcome");
        assert_eq!(op, 1);
        assert!(String::from_utf8_lossy(&payload).contains("welcome"));
        ws
    }

    /// Next frame from the server (opcode, payload); None when closed.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        let mut h = [0u8; 2];
        tokio::time::timeout(TIMEOUT, self.0.read_exact(&mut h))
            .await
            .expect("timed out reading a frame")
            .ok()?;
        assert_eq!(h[1] & 0x80, 0, "server frames are not masked");
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                self.0.read_exact(&mut l).await.ok()?;
                u16::from_be_bytes(l) as usize
            }
            127 => {
                let mut l = [0u8; 8];
                self.0.read_exact(&mut l).await.ok()?;
                u64::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        self.0.read_exact(&mut payload).await.ok()?;
        Some((h[0] & 0x0f, payload))
    }

    /// Sends one frame with `fin`, `opcode` and `payload`, masked or not.
    async fn send(&mut self, first: u8, payload: &[u8], masked: bool) {
        use tokio::io::AsyncWriteExt;
        assert!(payload.len() < 126);
        let mut f = vec![first, payload.len() as u8 | if masked { 0x80 } else { 0 }];
        let key = [0x12u8, 0x34, 0x56, 0x78];
        if masked {
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.0.write_all(&f).await.unwrap();
    }

    /// Reads until the server's close frame; returns its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            let (op, payload) = self.frame().await.expect("closed without a close frame");
            if op == 8 {
                assert!(payload.len() >= 2, "close frame without a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }
}

#[tokio::test]
async fn websocket_protocol_errors_close_with_their_rfc_codes() {
    let ts = TestServer::start().await;
    let mut a = ts.client(Some("alice")).await;
    let mut b = ts.client(Some("bob")).await;
    // (frame: first byte, payload, masked) -> close code
    let cases: [(u8, &[u8], bool, u16); 5] = [
        (0x81, b"{}", false, 1002),                    // unmasked client frame
        (0xC1, b"{}", true, 1002),                     // reserved bit RSV1
        (0x83, b"{}", true, 1002),                     // reserved opcode 3
        (0x80, b"{}", true, 1002),                     // continuation without a start
        (0x81, &[0x7b, 0xff, 0xfe, 0x7d], true, 1007), // text that is not UTF-8
    ];
    for (first, payload, masked, code) in cases {
        let mut raw = RawWs::connect(&ts).await;
        raw.send(first, payload, masked).await;
        assert_eq!(
            raw.close_code().await,
            code,
            "frame {first:#x} {payload:?} masked={masked}"
        );
    }
    // A valid masked ping is answered with its payload, on the raw socket too.
    let mut raw = RawWs::connect(&ts).await;
    raw.send(0x89, b"hi", true).await;
    assert_eq!(raw.frame().await, Some((0x0A, b"hi".to_vec())));
    still_works(&mut a, &mut b).await;
    ts.stop().await;
}
