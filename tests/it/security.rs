//! Attacks on the server's resources and exposure, each performed over real
//! sockets and shown to fail.

use std::time::Duration;

use crate::support::*;
use serde_json::json;
use spreed_signaling::backend::checksum;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Reads until the server closes the connection; returns what was read.
/// Panics if the server keeps it open longer than `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> String {
    let mut all = Vec::new();
    let fut = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(limit, fut)
        .await
        .expect("the server did not close the connection");
    String::from_utf8_lossy(&all).into_owned()
}

/// Reads one HTTP response head (up to the blank line).
async fn read_head(s: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let fut = async {
        let mut b = [0u8; 1];
        while !all.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).await.unwrap() == 0 {
                break;
            }
            all.push(b[0]);
        }
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .expect("no response");
    String::from_utf8_lossy(&all).into_owned()
}

/// A WebSocket client whose connection comes from `from`, hello done.
async fn client_from(ts: &TestServer, from: &str, user: &str) -> Client {
    ts.client_over(connect_from(from, ts.addr()).await, user)
        .await
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// The sum of all series whose line starts with `prefix` (one metric
/// split by a further label).
fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn stalled_and_partial_requests_are_closed_while_new_clients_connect() {
    let ts = TestServer::start_with("[http]\nreadtimeout = 1\nmaxconnectionsperip = 0\n").await;
    let addr = ts.addr();
    let mut stalled = Vec::new();
    for i in 0..40 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if i % 2 == 0 {
            // Half a request head, then nothing.
            s.write_all(b"GET /api/v1/welcome HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        stalled.push(s);
    }
    // A real client is served while they stall.
    let mut c = ts.client(Some("alice")).await;
    c.join("room1", "nc-alice").await;
    // Every stalled connection is closed by the server (timeout 1 s), and
    // counted.
    for s in &mut stalled {
        let got = read_until_closed(s, Duration::from_secs(5)).await;
        assert!(!got.contains("200 OK"), "{got}");
    }
    let text = ts.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "signaling_limits_refused_total{limit=\"header_timeout\"}"
        ),
        40,
        "{text}"
    );
    // The WebSocket outlives the HTTP header timeout: it still hears of
    // the next member.
    let d = ts.client_in_room("dave", "room1").await;
    c.wait_join_of(&d.session_id).await;
    ts.stop().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let ts = TestServer::start_with("[http]\nreadtimeout = 1\n").await;
    let mut s = TcpStream::connect(ts.addr()).await.unwrap();
    s.write_all(b"GET /api/v1/welcome HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Kept alive, then idle: closed after the read timeout.
    read_until_closed(&mut s, Duration::from_secs(5)).await;
    ts.stop().await;
}

fn signed_headers(body: &[u8], backend: &str, len: usize) -> String {
    let random = checksum::new_random();
    let sum = checksum::calculate(SECRET.as_bytes(), random.as_bytes(), body);
    format!(
        "POST /api/v1/room/room1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nSpreed-Signaling-Random: {random}\r\n\
         Spreed-Signaling-Checksum: {sum}\r\nSpreed-Signaling-Backend: {backend}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_backend_body_that_trickles_is_cut_off() {
    let ts = TestServer::start_with("[http]\nreadtimeout = 1\n").await;
    let body = br#"{"type":"message","message":{"data":{}}}"#;
    let mut s = TcpStream::connect(ts.addr()).await.unwrap();
    s.write_all(signed_headers(body, &ts.nc.url, body.len()).as_bytes())
        .await
        .unwrap();
    s.write_all(&body[..10]).await.unwrap();
    let got = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    ts.stop().await;
}

#[tokio::test]
async fn an_oversized_backend_body_is_refused_before_it_is_sent() {
    let ts = TestServer::start().await;
    let mut s = TcpStream::connect(ts.addr()).await.unwrap();
    // Only the head is sent: the answer must not wait for 100 MB of body.
    s.write_all(signed_headers(b"", &ts.nc.url, 100_000_000).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let m = ts.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            "signaling_limits_refused_total{limit=\"backend_body_size\"}"
        ),
        1
    );
    ts.stop().await;
}

#[tokio::test]
async fn connections_are_capped_per_address_and_in_all() {
    let ts = TestServer::start_with(
        "[http]\nmaxconnectionsperip = 3\nmaxconnections = 6\n[app]\ntrustedproxies = 192.0.2.1\n",
    )
    .await;
    let addr = ts.addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", addr).await);
    }
    // The fourth from the same address is closed at once, unread.
    let mut extra = connect_from("127.0.0.2", addr).await;
    let _ = extra
        .write_all(b"GET /api/v1/welcome HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let got = read_until_closed(&mut extra, TIMEOUT).await;
    assert!(got.is_empty(), "{got}");
    // Another address still gets in, WebSocket and all.
    let mut c = client_from(&ts, "127.0.0.3", "bob").await;
    c.join("room1", "nc-bob").await;
    // Once one of the held connections closes, its address may connect again.
    drop(held.pop());
    let mut ok = false;
    for _ in 0..100 {
        let mut s = connect_from("127.0.0.2", addr).await;
        s.write_all(b"GET /api/v1/welcome HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        if read_until_closed(&mut s, TIMEOUT)
            .await
            .starts_with("HTTP/1.1 200")
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the address never got a connection again");
    // The global cap: 2 held + 1 WebSocket + 3 from other addresses = 6.
    for a in ["127.0.0.4", "127.0.0.5", "127.0.0.6"] {
        held.push(connect_from(a, addr).await);
    }
    let mut over = connect_from("127.0.0.7", addr).await;
    let _ = over
        .write_all(b"GET /api/v1/welcome HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(read_until_closed(&mut over, TIMEOUT).await.is_empty());
    drop(held);
    let m = loop {
        // /metrics from loopback (allowed); retried until a slot is free.
        if let Ok(r) = reqwest::get(format!("{}/metrics", ts.url)).await {
            break r.text().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        metric(
            &m,
            "signaling_limits_refused_total{limit=\"connections_per_ip\"}"
        ) >= 1
    );
    assert!(metric(&m, "signaling_limits_refused_total{limit=\"connections\"}") >= 1);
    ts.stop().await;
}

#[tokio::test]
async fn allowall_creates_no_backend_before_the_checksum_is_verified() {
    let ts = TestServer::start_with("[backend]\nallowall = true\nsecret = common-secret\n").await;
    let hub = ts.server.as_ref().unwrap().hub.clone();
    let body = serde_json::to_vec(&json!({"type": "message", "message": {"data": {}}})).unwrap();
    for i in 0..20 {
        let random = checksum::new_random();
        let resp = reqwest::Client::new()
            .post(format!("{}/api/v1/room/room1", ts.url))
            .header("Content-Type", "application/json")
            .header("Spreed-Signaling-Random", random)
            .header("Spreed-Signaling-Checksum", "0".repeat(64))
            .header(
                "Spreed-Signaling-Backend",
                format!("https://attacker-{i}.example"),
            )
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 403);
    }
    assert_eq!(hub.registry().dynamic_count(), 0);
    // Hellos for unknown origins that Nextcloud does not accept leave nothing either.
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    c.send(json!({"id": "h", "type": "hello", "hello": {"version": "1.0", "auth": {"url": "http://127.0.0.1:1/ocs", "params": {}}}}))
        .await;
    c.expect_type("error").await;
    assert_eq!(hub.registry().dynamic_count(), 0);
    // A request signed with the common secret is accepted and remembered.
    let random = checksum::new_random();
    let sum = checksum::calculate(b"common-secret", random.as_bytes(), &body);
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/room/room1", ts.url))
        .header("Content-Type", "application/json")
        .header("Spreed-Signaling-Random", random)
        .header("Spreed-Signaling-Checksum", sum)
        .header("Spreed-Signaling-Backend", "https://known.example")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(hub.registry().dynamic_count(), 1);
    ts.stop().await;
}

async fn transient_set(
    c: &mut Client,
    id: &str,
    key: &str,
    value: serde_json::Value,
    ttl: Option<u64>,
) {
    let mut t = json!({"type": "set", "key": key, "value": value});
    if let Some(ttl) = ttl {
        t["ttl"] = json!(ttl);
    }
    c.send(json!({"id": id, "type": "transient", "transient": t}))
        .await;
}

/// Waits for the answer to request `id`: the `set` event or an error.
async fn transient_answer(c: &mut Client, id: &str, key: &str) -> serde_json::Value {
    let (id, key) = (id.to_string(), key.to_string());
    c.wait_for(move |m| {
        (m["type"] == "error" && m["id"] == id.as_str())
            || (m["type"] == "transient" && m["transient"]["key"] == key.as_str())
    })
    .await
}

#[tokio::test]
async fn transient_data_limits_are_refused_with_the_request_id() {
    let ts = TestServer::start_with(
        "[transient]\nmaxkeys = 3\nmaxkeylength = 16\nmaxvaluesize = 100\nmaxroombytes = 250\nmaxttl = 60\n",
    )
    .await;
    let mut c = ts.client_in_room("alice", "room1").await;
    let refused = |m: &serde_json::Value, id: &str| {
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(m["id"], id, "{m}");
        assert_eq!(m["error"]["code"], "transient_limit_exceeded", "{m}");
    };
    transient_set(&mut c, "long-key", &"k".repeat(17), json!(1), None).await;
    refused(&transient_answer(&mut c, "long-key", "-").await, "long-key");
    transient_set(&mut c, "big", "a", json!("v".repeat(101)), None).await;
    refused(&transient_answer(&mut c, "big", "-").await, "big");
    transient_set(&mut c, "ttl", "a", json!(1), Some(61_000_000_000)).await;
    refused(&transient_answer(&mut c, "ttl", "-").await, "ttl");
    // 90 characters: 101 bytes per entry in the room's snapshot.
    let v = json!("v".repeat(90));
    for (id, key) in [("s1", "a"), ("s2", "b")] {
        transient_set(&mut c, id, key, v.clone(), Some(1_000_000_000)).await;
        assert_eq!(transient_answer(&mut c, id, key).await["type"], "transient");
    }
    transient_set(&mut c, "s3", "c", v.clone(), None).await;
    refused(&transient_answer(&mut c, "s3", "c").await, "s3");
    transient_set(&mut c, "s4", "c", json!(1), None).await;
    assert_eq!(
        transient_answer(&mut c, "s4", "c").await["type"],
        "transient"
    );
    transient_set(&mut c, "s5", "d", json!(1), None).await;
    refused(&transient_answer(&mut c, "s5", "d").await, "s5");
    // Replacing a value counts only the difference.
    transient_set(&mut c, "s6", "a", json!("w".repeat(90)), None).await;
    assert_eq!(
        transient_answer(&mut c, "s6", "a").await["type"],
        "transient"
    );
    let m = ts.metrics_text().await;
    for (limit, n) in [
        ("transient_key_length", 1),
        ("transient_value_size", 1),
        ("transient_ttl", 1),
        ("transient_room_bytes", 1),
        ("transient_keys", 1),
    ] {
        let line = format!("signaling_limits_refused_total{{limit=\"{limit}\"}}");
        assert_eq!(metric(&m, &line), n, "{limit}");
    }
    ts.stop().await;
}

#[tokio::test]
async fn a_room_full_of_transient_data_does_not_evict_joiners() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    // Try to store 1.5 MB: more than a joiner's send queue (1 MiB).
    let chunk = "x".repeat(15_000);
    let mut stored = 0;
    for i in 0..100 {
        let (id, key) = (format!("s{i}"), format!("k{i}"));
        transient_set(&mut a, &id, &key, json!(chunk), None).await;
        if transient_answer(&mut a, &id, &key).await["type"] == "transient" {
            stored += 1;
        }
    }
    assert!(stored > 0 && stored < 100, "{stored}");
    // Joiners get all that was stored, and stay connected.
    for user in ["bob", "carol", "dave"] {
        let mut j = ts.client(Some(user)).await;
        j.send(json!({"id": "join", "type": "room", "room": {"roomid": "room1", "sessionid": format!("nc-{user}")}}))
            .await;
        let initial = j
            .wait_for(|m| m["type"] == "transient" && m["transient"]["type"] == "initial")
            .await;
        assert_eq!(
            initial["transient"]["data"].as_object().unwrap().len(),
            stored
        );
        a.wait_join_of(&j.session_id).await;
        a.send(json!({"type": "message", "message": {"recipient": {"type": "session", "sessionid": j.session_id}, "data": "hi"}}))
            .await;
        j.wait_for(|m| m["type"] == "message").await;
    }
    ts.stop().await;
}

#[tokio::test]
async fn transient_data_and_its_timers_go_with_the_room() {
    let ts = TestServer::start().await;
    let hub = ts.server.as_ref().unwrap().hub.clone();
    let mut a = ts.client_in_room("alice", "room1").await;
    transient_set(&mut a, "s", "k", json!(1), Some(3_600_000_000_000)).await;
    transient_answer(&mut a, "s", "k").await;
    assert_eq!(hub.transient_timer_count(), 1);
    // The last member leaves: room, data and timer are gone.
    a.send(json!({"id": "leave", "type": "room", "room": {"roomid": ""}}))
        .await;
    a.wait_for(|m| m["type"] == "room" && m["id"] == "leave")
        .await;
    assert_eq!(hub.room_count(), 0);
    assert_eq!(hub.transient_timer_count(), 0);
    // Joining again starts empty.
    a.join("room1", "nc-alice").await;
    a.send(json!({"id": "s2", "type": "transient", "transient": {"type": "set", "key": "k2", "value": 2}}))
        .await;
    let m = a.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(m["transient"]["type"], "set", "no initial data: {m}");
    ts.stop().await;
}

/// GET `path` over a connection from `from`; returns (status line, body).
async fn get_from(ts: &TestServer, from: &str, path: &str) -> (String, String) {
    get_with(ts, from, path, "").await
}

/// GET `path` from `from` with extra header lines (each ending in CRLF).
async fn get_with(ts: &TestServer, from: &str, path: &str, headers: &str) -> (String, String) {
    let mut s = connect_from(from, ts.addr()).await;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let all = read_until_closed(&mut s, TIMEOUT).await;
    let status = all.lines().next().unwrap_or("").to_string();
    let body = all.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test]
async fn metrics_and_stats_answer_only_allowed_addresses() {
    let ts = TestServer::start_with("[stats]\nallowed_ips = 127.0.0.8/29, 127.0.0.2\n").await;
    let _c = ts.client_in_room("alice", "room1").await;
    for path in ["/metrics", "/api/v1/stats"] {
        for from in ["127.0.0.1", "127.0.0.3", "127.0.0.16"] {
            let (status, body) = get_from(&ts, from, path).await;
            assert!(
                status.starts_with("HTTP/1.1 403"),
                "{from} {path}: {status}"
            );
            // Room tokens appear in metric labels: nothing leaks.
            assert!(!body.contains("room1"), "{body}");
        }
        for from in ["127.0.0.2", "127.0.0.9"] {
            let (status, _) = get_from(&ts, from, path).await;
            assert!(
                status.starts_with("HTTP/1.1 200"),
                "{from} {path}: {status}"
            );
        }
    }
    let (_, body) = get_from(&ts, "127.0.0.2", "/api/v1/stats").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["hub"]["sessions"], 1, "{v}");
    assert_eq!(v["hub"]["rooms"], 1, "{v}");
    let (_, m) = get_from(&ts, "127.0.0.2", "/metrics").await;
    assert_eq!(
        metric(
            &m,
            "signaling_limits_refused_total{limit=\"stats_address\"}"
        ),
        6
    );
    ts.stop().await;
}

#[tokio::test]
async fn stats_default_to_loopback_only() {
    let ts = TestServer::start().await;
    let (status, body) = get_from(&ts, "127.0.0.1", "/api/v1/stats").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("\"hub\""), "{body}");
    ts.stop().await;
}

/// A Nextcloud stand-in whose auth answers are slow or huge; records the
/// most requests it had in flight at once.
#[derive(Clone, Default)]
struct OddBackend {
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    max_in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    huge: bool,
}

async fn odd_auth(axum::extract::State(b): axum::extract::State<OddBackend>) -> String {
    use std::sync::atomic::Ordering::SeqCst;
    let n = b.in_flight.fetch_add(1, SeqCst) + 1;
    b.max_in_flight.fetch_max(n, SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    b.in_flight.fetch_sub(1, SeqCst);
    let pad = if b.huge {
        "x".repeat(2_000_000)
    } else {
        String::new()
    };
    json!({"type": "auth", "auth": {"version": "1.0", "userid": "u", "user": {"pad": pad}}})
        .to_string()
}

/// Starts an [`OddBackend`] and a server using it as backend `nc1`.
async fn server_with_odd_backend(b: OddBackend, extra: &str) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(BACKEND_PATH, axum::routing::post(odd_auth))
        .with_state(b);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let mut nc = FakeNextcloud::start().await;
    nc.url = url;
    TestServer::start_on(nc, extra).await
}

async fn hello_result(ts: &TestServer, url: &str) -> serde_json::Value {
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    c.send(json!({"id": "h", "type": "hello", "hello": {"version": "1.0", "auth": {"url": url, "params": {"userid": "u"}}}}))
        .await;
    c.recv().await
}

#[tokio::test]
async fn requests_to_nextcloud_are_bounded_in_number() {
    let b = OddBackend::default();
    let ts = server_with_odd_backend(b.clone(), "[backend]\nmaxconcurrentrequests = 2\n").await;
    let url = ts.nc.backend_url();
    let hellos = (0..8).map(|_| hello_result(&ts, &url));
    for r in futures_util::future::join_all(hellos).await {
        assert_eq!(r["type"], "hello", "{r}");
    }
    let max = b.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert!((1..=2).contains(&max), "{max} requests in flight");
    ts.stop().await;
}

#[tokio::test]
async fn oversized_nextcloud_answers_are_refused() {
    let b = OddBackend {
        huge: true,
        ..Default::default()
    };
    let ts = server_with_odd_backend(b, "[backend]\nmaxresponsesize = 65536\n").await;
    let r = hello_result(&ts, &ts.nc.backend_url()).await;
    assert_eq!(r["error"]["code"], "auth_failed", "{r}");
    assert_eq!(r["id"], "h");
    let m = ts.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            "signaling_limits_refused_total{limit=\"backend_response_size\"}"
        ),
        1
    );
    ts.stop().await;
}

#[tokio::test]
async fn hellos_with_allowall_cannot_probe_hosts_and_ports() {
    let ts = TestServer::start_with("[backend]\nallowall = true\nsecret = common-secret\n").await;
    // A closed port.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // A port with a web server that is not Nextcloud (404).
    let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let web_port = web.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(web, axum::Router::new()).await.unwrap() });
    // A port that accepts and answers garbage.
    let junk = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let junk_port = junk.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = junk.accept().await.unwrap();
            let _ = s.write_all(b"SSH-2.0-OpenSSH\r\n").await;
        }
    });
    let mut answers = Vec::new();
    for port in [closed, web_port, junk_port] {
        let r = hello_result(&ts, &format!("http://127.0.0.1:{port}{BACKEND_PATH}")).await;
        assert_eq!(r["type"], "error", "{r}");
        answers.push(r["error"].clone());
    }
    assert_eq!(answers[0]["code"], "auth_failed");
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    // Origins that proved nothing are no metric label (series of nobody).
    let metrics = ts.metrics_text().await;
    assert!(
        metrics.contains("signaling_backend_client_requests_total{backend=\"unknown\"}"),
        "the requests are counted"
    );
    assert!(!metrics.contains("backend=\"http://127.0.0.1"), "{metrics}");
    ts.stop().await;
}

/// A WebSocket connection from `from` (welcome consumed), optionally
/// claiming a client address in `X-Real-IP` as a reverse proxy would.
async fn ws_from(ts: &TestServer, from: &str, real_ip: Option<&str>) -> Client {
    let tcp = connect_from(from, ts.addr()).await;
    let headers: Vec<_> = real_ip.map(|ip| ("X-Real-IP", ip)).into_iter().collect();
    let req = request_with(&ts.ws_url(), &headers);
    Client::over(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp)).await
}

/// Tries to resume a made-up session; returns the error code and how long
/// the answer took.
async fn guess_resume(c: &mut Client) -> (String, Duration) {
    let start = std::time::Instant::now();
    c.send(json!({"id": "r", "type": "hello", "hello": {"version": "1.0", "resumeid": "guessed-resume-id"}}))
        .await;
    let m = c.expect_type("error").await;
    assert_eq!(m["id"], "r");
    (
        m["error"]["code"].as_str().unwrap().to_string(),
        start.elapsed(),
    )
}

#[tokio::test]
async fn failed_hellos_and_resumes_are_throttled_per_address() {
    let ts =
        TestServer::start_with("[clients]\nmaxfailedhellos = 3\nfailedhellowindow = 60\n").await;
    let mut c = ws_from(&ts, "127.0.0.2", None).await;
    // Each failure is answered later than the one before...
    let mut last = Duration::ZERO;
    for expected in [100, 200, 400] {
        let (code, took) = guess_resume(&mut c).await;
        assert_eq!(code, "no_such_session");
        assert!(took >= Duration::from_millis(expected), "{took:?}");
        assert!(took > last);
        last = took;
    }
    // ...then the address is refused without a try, on any connection.
    let (code, took) = guess_resume(&mut c).await;
    assert_eq!(code, "too_many_requests");
    assert!(took < Duration::from_millis(400), "{took:?}");
    let mut again = ws_from(&ts, "127.0.0.2", None).await;
    again
        .send(json!({"id": "h", "type": "hello", "hello": {"version": "1.0", "auth": {"url": ts.nc.backend_url(), "params": {"userid": "bob"}}}}))
        .await;
    assert_eq!(
        again.expect_type("error").await["error"]["code"],
        "too_many_requests"
    );
    // Other addresses are not affected.
    let mut other = ws_from(&ts, "127.0.0.3", None).await;
    other
        .hello_v1(&ts.nc.backend_url(), json!({"userid": "carol"}))
        .await;
    // Behind a reverse proxy (loopback), the address it passes counts.
    for _ in 0..3 {
        let mut p = ws_from(&ts, "127.0.0.1", Some("203.0.113.5")).await;
        assert_eq!(guess_resume(&mut p).await.0, "no_such_session");
    }
    let mut p = ws_from(&ts, "127.0.0.1", Some("203.0.113.5")).await;
    assert_eq!(guess_resume(&mut p).await.0, "too_many_requests");
    let mut q = ws_from(&ts, "127.0.0.1", Some("203.0.113.6")).await;
    assert_eq!(guess_resume(&mut q).await.0, "no_such_session");
    let m = ts.metrics_text().await;
    assert_eq!(
        metric(&m, "signaling_throttle_bruteforce_total{action=\"resume\"}"),
        2
    );
    assert_eq!(
        metric(&m, "signaling_throttle_bruteforce_total{action=\"hello\"}"),
        1
    );
    assert_eq!(
        metric_sum(&m, "signaling_throttle_delayed_total{action=\"resume\","),
        7
    );
    ts.stop().await;
}

/// Room messages of ~60 KiB from `sender`, numbered 0..n, sent from a task
/// (the server may stop reading the sender for a while).
fn flood_room(mut sender: Client, n: usize) -> tokio::task::JoinHandle<Client> {
    let pad = "x".repeat(60_000);
    tokio::spawn(async move {
        for seq in 0..n {
            sender
                .message_to(json!({"type": "room"}), json!({"seq": seq, "pad": pad}))
                .await;
        }
        sender
    })
}

/// Reads the room messages numbered 0..n in order (other frames skipped).
async fn read_flood(c: &mut Client, n: usize) {
    for seq in 0..n {
        let m = c
            .wait_for_within(Duration::from_secs(60), |m| m["type"] == "message")
            .await;
        assert_eq!(m["message"]["data"]["seq"], seq, "out of order or lost");
    }
}

const FLOOD_LIMITS: &str = "[clients]\noutboxbytes = 262144\nmessagespersecond = 100000\n\
     messageburst = 100000\nbytespersecond = 1073741824\nbyteburst = 1073741824\n";

#[tokio::test]
async fn one_broadcaster_cannot_get_a_slow_member_evicted() {
    // The slow member's reads pause when this loaded test machine does not
    // schedule the test for a while: a slowreceiverwait of 30 s tolerates
    // pauses of 3 s (a tenth) before the member counts as stalled.
    let ts = TestServer::start_with(&format!("{FLOOD_LIMITS}slowreceiverwait = 30\n")).await;
    let mut slow = ts.slow_member("slow", "r").await;
    let mut other = ts.client_in_room("other", "r").await;
    let sender = ts.client_in_room("sender", "r").await;
    slow.wait_join_of(&sender.session_id).await;
    other.wait_join_of(&sender.session_id).await;
    // 12 MB, far more than the slow member's kernel buffers and its 256 KiB
    // send queue: without backpressure on the sender it is closed (1013).
    const N: usize = 200;
    let flood = flood_room(sender, N);
    // The fast member gets everything while the slow one does not read...
    let reader = tokio::spawn(async move {
        read_flood(&mut other, N).await;
        other
    });
    // ...while the slow one reads slowly (a message every 10 ms through
    // its tiny buffer: its socket keeps taking bytes, so the broadcaster
    // waits for it), everything, in order, on the same connection.
    for seq in 0..N {
        let m = slow
            .wait_for_within(Duration::from_secs(60), |m| m["type"] == "message")
            .await;
        assert_eq!(m["message"]["data"]["seq"], seq, "out of order or lost");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _other = reader.await.unwrap();
    let _sender = flood.await.unwrap();
    let text = ts.metrics_text().await;
    assert!(metric(&text, "signaling_client_sender_waits_total ") > 0);
    assert_eq!(
        metric(&text, "signaling_client_send_queue_overflows_total "),
        0
    );
}

#[tokio::test]
async fn a_member_that_never_reads_holds_a_broadcaster_back_only_briefly() {
    let ts = TestServer::start_with(&format!(
        "{FLOOD_LIMITS}[sessions]\nresumequeuebytes = 67108864\n"
    ))
    .await;
    let mut stuck = ts.slow_member("stuck", "r").await;
    let mut other = ts.client_in_room("other", "r").await;
    let sender = ts.client_in_room("sender", "r").await;
    stuck.wait_join_of(&sender.session_id).await;
    other.wait_join_of(&sender.session_id).await;
    const N: usize = 200;
    let flood = flood_room(sender, N);
    // The member that never reads is closed with 1013 in the end (it may
    // resume and lose nothing); everyone else gets every message.
    read_flood(&mut other, N).await;
    flood.await.unwrap();
    let text = ts.metrics_text().await;
    assert_eq!(
        metric(&text, "signaling_client_send_queue_overflows_total "),
        1
    );
    let resume_id = stuck.resume_id.clone();
    drop(stuck);
    let mut again = ts.connect().await;
    again.expect_type("welcome").await;
    again
        .send(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": resume_id}}))
        .await;
    again.expect_type("hello").await;
    // Whatever the old connection did not read is still there, in order,
    // up to the last message.
    let first = again.wait_for(|m| m["type"] == "message").await;
    let start = first["message"]["data"]["seq"].as_u64().unwrap() as usize;
    for seq in start + 1..N {
        let m = again.wait_for(|m| m["type"] == "message").await;
        assert_eq!(m["message"]["data"]["seq"], seq);
    }
}

#[tokio::test]
async fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
    let ts = TestServer::start_with(
        "[app]\ntrustedproxies = 127.0.0.2\n[stats]\nallowed_ips = 198.51.100.7\n\
         [clients]\nmaxfailedhellos = 1\nfailedhellowindow = 60\n",
    )
    .await;
    let cases = [
        // (peer, headers, allowed)
        ("127.0.0.2", "X-Real-IP: 198.51.100.7\r\n", true),
        ("127.0.0.3", "X-Real-IP: 198.51.100.7\r\n", false),
        ("127.0.0.2", "X-Forwarded-For: 198.51.100.7\r\n", true),
        ("127.0.0.3", "X-Forwarded-For: 198.51.100.7\r\n", false),
        // The right-most untrusted hop is the client, not what it claims.
        (
            "127.0.0.2",
            "X-Forwarded-For: 198.51.100.7, 203.0.113.9\r\n",
            false,
        ),
        (
            "127.0.0.2",
            "X-Forwarded-For: 203.0.113.9, 198.51.100.7, 127.0.0.2\r\n",
            true,
        ),
        ("127.0.0.2", "", false),
    ];
    for (from, headers, allowed) in cases {
        let (status, _) = get_with(&ts, from, "/metrics", headers).await;
        let want = if allowed {
            "HTTP/1.1 200"
        } else {
            "HTTP/1.1 403"
        };
        assert!(status.starts_with(want), "{from} {headers:?}: {status}");
    }
    // Throttling counts the address a trusted proxy names...
    let mut p = ws_from(&ts, "127.0.0.2", Some("203.0.113.5")).await;
    assert_eq!(guess_resume(&mut p).await.0, "no_such_session");
    let mut p = ws_from(&ts, "127.0.0.2", Some("203.0.113.5")).await;
    assert_eq!(guess_resume(&mut p).await.0, "too_many_requests");
    // ...and the peer's own address when it is not trusted: claiming the
    // throttled address neither blocks nor helps the claimer.
    let mut u = ws_from(&ts, "127.0.0.3", Some("203.0.113.5")).await;
    assert_eq!(guess_resume(&mut u).await.0, "no_such_session");
    let mut u = ws_from(&ts, "127.0.0.3", Some("203.0.113.77")).await;
    assert_eq!(guess_resume(&mut u).await.0, "too_many_requests");
    ts.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let ts = TestServer::start_with("[http]\nwritetimeout = 1\nreadtimeout = 30\n").await;
    // A small receive window; far more answers than kernel buffers hold.
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let s = sock.connect(ts.addr()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    const REQUESTS: usize = 8000;
    let requests = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(REQUESTS);
    // The server stops reading requests while its answers wait.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(requests.as_bytes()).await;
        wr
    });
    // Not reading for longer than the write timeout is what is tested.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = vec![0u8; 65536];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(TIMEOUT, read_all)
        .await
        .expect("the server did not close the connection");
    let answered = String::from_utf8_lossy(&got)
        .matches("HTTP/1.1 200")
        .count();
    assert!(answered < REQUESTS, "{answered}");
    drop(writer.await);
    // A client that reads gets everything over one connection.
    let mut r = connect_from("127.0.0.1", ts.addr()).await;
    let few = "GET /api/v1/welcome HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3)
        + "GET /api/v1/welcome HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    r.write_all(few.as_bytes()).await.unwrap();
    let got = read_until_closed(&mut r, TIMEOUT).await;
    assert_eq!(got.matches("HTTP/1.1 200").count(), 4);
    ts.stop().await;
}

/// Status of a WebSocket upgrade from loopback (a trusted proxy) naming
/// `real_ip`; the connection is returned when it was accepted.
async fn upgrade_via_proxy(ts: &TestServer, real_ip: &str) -> Result<Client, u16> {
    Client::upgrade(request_with(&ts.ws_url(), &[("X-Real-IP", real_ip)])).await
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_capped_by_their_own_address() {
    let ts = TestServer::start_with("[http]\nmaxconnectionsperip = 2\n").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(upgrade_via_proxy(&ts, "203.0.113.9").await.unwrap());
    }
    assert_eq!(upgrade_via_proxy(&ts, "203.0.113.9").await.err(), Some(429));
    // The proxy itself is exempt: other clients behind it get in.
    let mut other = upgrade_via_proxy(&ts, "203.0.113.10").await.unwrap();
    other.expect_type("welcome").await;
    // A closed connection frees its place.
    drop(held.pop());
    let mut refused = 1;
    let mut ok = false;
    for _ in 0..100 {
        match upgrade_via_proxy(&ts, "203.0.113.9").await {
            Ok(mut c) => {
                c.expect_type("welcome").await;
                ok = true;
                break;
            }
            Err(status) => {
                assert_eq!(status, 429);
                refused += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the address never got a connection again");
    let m = ts.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            "signaling_limits_refused_total{limit=\"connections_per_ip\"}"
        ),
        refused
    );
    ts.stop().await;
}
