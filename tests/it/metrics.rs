//! `/metrics` during a run: the Go server's metric names and labels, with
//! values that match what the clients and Nextcloud did.

use crate::support::*;
use futures_util::StreamExt;
use serde_json::json;
use spreed_signaling::config::Config;
use spreed_signaling::server::Server;
use tokio_tungstenite::tungstenite::Message;

/// The value of one series (`name{labels}`); panics when it is missing.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
}

/// Reads the next text frame as sent (for its exact length).
async fn raw_text(c: &mut Client) -> String {
    loop {
        let m = tokio::time::timeout(TIMEOUT, c.ws.next())
            .await
            .expect("no frame")
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            return t.to_string();
        }
    }
}

fn incall(nc_session: &str, flags: u32) -> serde_json::Value {
    json!({"type": "incall", "incall": {"incall": flags, "changed": [{"sessionId": nc_session, "inCall": flags}]}})
}

#[tokio::test]
async fn metrics_match_what_happened() {
    let nc = FakeNextcloud::start().await;
    let closed = free_port();
    let text = format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\n\
         [backend]\nbackends = nc1, nc2\ntimeout = 5\npinginterval = 3600\n\
         [nc1]\nurl = {}\nsecret = {SECRET}\nsessionlimit = 2\n\
         [nc2]\nurl = http://127.0.0.1:{closed}\nsecret = other\n",
        nc.url
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::start(Config::parse(&text).unwrap(), Some(listener))
        .await
        .unwrap();
    let ts = TestServer {
        url: format!("http://{}", server.addr),
        server: Some(server),
        nc,
    };

    let mut alice = ts.client_in_room("alice", "r1").await;
    let mut bob = ts.client_in_room("bob", "r1").await;
    alice.wait_join_of(&bob.session_id).await;
    // A third client session is over nc1's limit.
    let mut carol = ts.connect().await;
    carol.expect_type("welcome").await;
    carol
        .send(json!({"type": "hello", "hello": {"version": "1.0", "auth": {"url": ts.nc.backend_url(), "params": {"userid": "carol"}}}}))
        .await;
    carol.expect_error("session_limit_exceeded").await;
    // nc2 does not answer.
    let mut dave = ts.connect().await;
    dave.expect_type("welcome").await;
    let nc2 = format!("http://127.0.0.1:{closed}{BACKEND_PATH}");
    dave.send(
        json!({"type": "hello", "hello": {"version": "1.0", "auth": {"url": nc2, "params": {}}}}),
    )
    .await;
    dave.expect_type("error").await;

    // Both join the call; alice leaves and joins again (a new call session,
    // not a new call: bob stayed).
    for (who, flags) in [
        ("nc-alice", 7),
        ("nc-bob", 7),
        ("nc-alice", 0),
        ("nc-alice", 3),
    ] {
        let (status, _) = ts.backend_request("r1", &incall(who, flags)).await;
        assert_eq!(status, 200);
        for c in [&mut alice, &mut bob] {
            c.wait_for(|m| {
                m["event"]["update"]["changed"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|e| e["nextcloudSessionId"] == who && e["inCall"] == flags)
                })
            })
            .await;
        }
    }

    let before = ts.metrics_text().await;
    let g = |s: &str| value(&before, s);
    assert_eq!(g("signaling_backend_current"), 2.0);
    assert_eq!(g("signaling_backend_session_limit{backend=\"nc1\"}"), 2.0);
    assert_eq!(
        g("signaling_backend_session_limit_exceeded_total{backend=\"nc1\"}"),
        1.0
    );
    assert_eq!(
        g("signaling_hub_sessions{backend=\"nc1\",clienttype=\"client\"}"),
        2.0
    );
    assert_eq!(
        g("signaling_hub_sessions_total{backend=\"nc1\",clienttype=\"client\"}"),
        2.0
    );
    assert_eq!(g("signaling_hub_rooms{backend=\"nc1\"}"), 1.0);
    assert_eq!(
        g("signaling_room_sessions{backend=\"nc1\",clienttype=\"client\",room=\"r1\"}"),
        2.0
    );
    assert_eq!(
        g("signaling_call_sessions{backend=\"nc1\",clienttype=\"client\",room=\"r1\"}"),
        2.0
    );
    assert_eq!(
        g("signaling_call_sessions_total{backend=\"nc1\",clienttype=\"client\"}"),
        3.0
    );
    assert_eq!(g("signaling_call_rooms_total{backend=\"nc1\"}"), 1.0);
    assert_eq!(
        g("signaling_backend_room_requests_total{type=\"incall\"}"),
        4.0
    );
    assert_eq!(g("signaling_server_messages_total{type=\"hello\"}"), 4.0);
    assert_eq!(g("signaling_server_messages_total{type=\"room\"}"), 2.0);
    // Every request to Nextcloud: one series per backend, with its time.
    let to_nc = {
        let st = ts.nc.state.lock().unwrap();
        st.requests.len() + st.capability_fetches
    } as f64;
    assert!(to_nc >= 5.0, "3 auth + 2 joins at least: {to_nc}");
    assert_eq!(
        g("signaling_backend_client_requests_total{backend=\"nc1\"}"),
        to_nc
    );
    assert_eq!(
        g("signaling_backend_client_requests_duration_count{backend=\"nc1\"}"),
        to_nc
    );
    let nc2_requests = g("signaling_backend_client_requests_total{backend=\"nc2\"}");
    assert!(nc2_requests >= 1.0);
    assert_eq!(
        g("signaling_backend_client_requests_errors_total{backend=\"nc2\",error=\"unknown\"}"),
        nc2_requests
    );
    assert!(!before.contains("requests_errors_total{backend=\"nc1\""));

    // Messages by type and the exact traffic they make.
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(
            json!({"type": "message", "message": {"recipient": {"type": "session", "sessionid": bob.session_id}, "data": {"n": i}}})
                .to_string(),
        );
    }
    sent.push(
        json!({"type": "control", "control": {"recipient": {"type": "session", "sessionid": bob.session_id}, "data": {"c": 1}}})
            .to_string(),
    );
    for t in &sent {
        alice.send_raw(Message::Text(t.clone().into())).await;
    }
    let mut received = Vec::new();
    for _ in 0..sent.len() {
        received.push(raw_text(&mut bob).await);
    }
    assert!(received[3].contains("\"control\""), "{received:?}");
    let after = ts.metrics_text().await;
    let delta = |s: &str| value(&after, s) - value(&before, s);
    assert_eq!(
        delta("signaling_server_messages_total{type=\"message\"}"),
        3.0
    );
    assert_eq!(
        value(&after, "signaling_server_messages_total{type=\"control\"}"),
        1.0
    );
    assert_eq!(
        delta("signaling_client_messages_total{direction=\"incoming\"}"),
        4.0
    );
    assert_eq!(
        delta("signaling_client_bytes_total{direction=\"incoming\"}"),
        sent.iter().map(String::len).sum::<usize>() as f64
    );
    assert_eq!(
        delta("signaling_client_messages_total{direction=\"outgoing\"}"),
        4.0
    );
    assert_eq!(
        delta("signaling_client_bytes_total{direction=\"outgoing\"}"),
        received.iter().map(String::len).sum::<usize>() as f64
    );

    // A resume is counted per backend and client type.
    let resume_id = bob.resume_id.clone();
    drop(bob);
    let mut again = ts.connect().await;
    again.expect_type("welcome").await;
    again
        .send(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": resume_id}}))
        .await;
    again.expect_type("hello").await;
    let last = ts.metrics_text().await;
    assert_eq!(
        value(
            &last,
            "signaling_hub_sessions_resume_total{backend=\"nc1\",clienttype=\"client\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&last, "signaling_server_messages_total{type=\"hello\"}"),
        5.0
    );

    // The gauges follow sessions and rooms going away (they are kept as
    // things change, not recounted; a scrape shows them at most 1 s late).
    again
        .send(json!({"type": "room", "id": "l", "room": {"roomid": ""}}))
        .await;
    again.expect_type("room").await;
    let text = scrape_until(&ts, |t| {
        t.contains("signaling_room_sessions{backend=\"nc1\",clienttype=\"client\",room=\"r1\"} 1\n")
    })
    .await;
    assert_eq!(
        value(
            &text,
            "signaling_call_sessions{backend=\"nc1\",clienttype=\"client\",room=\"r1\"}"
        ),
        1.0
    );
    assert_eq!(value(&text, "signaling_hub_rooms{backend=\"nc1\"}"), 1.0);
    alice.send(json!({"type": "bye", "bye": {}})).await;
    let text = scrape_until(&ts, |t| !t.contains("signaling_hub_rooms{")).await;
    assert_eq!(
        value(
            &text,
            "signaling_hub_sessions{backend=\"nc1\",clienttype=\"client\"}"
        ),
        1.0
    );
    assert!(!text.contains("signaling_room_sessions{"), "{text}");
    assert!(!text.contains("signaling_call_sessions{"), "{text}");
    drop(again);
    ts.stop().await;
}

/// Scrapes until `done` holds (gauges are refreshed at most once a second).
async fn scrape_until(ts: &TestServer, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = ts.metrics_text().await;
        if done(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metrics never got there:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// `signaling_client_rtt`: the server's pings carry their send time; the
/// client's pongs give the round trip. Pongs nobody asked for do not count.
#[tokio::test]
async fn ping_round_trips_are_measured() {
    let ts = TestServer::start_with("[clients]\npinginterval = 1\n").await;
    let mut c = ts.client(Some("alice")).await;
    c.send_raw(Message::Pong(b"made-up".to_vec().into())).await;
    c.send_raw(Message::Pong(u64::MAX.to_be_bytes().to_vec().into()))
        .await;
    // The client answers pings while it reads.
    let reader = tokio::spawn(async move {
        let end = tokio::time::Instant::now() + std::time::Duration::from_millis(2500);
        while let Ok(Some(m)) = tokio::time::timeout_at(end, c.ws.next()).await {
            assert!(matches!(m, Ok(Message::Ping(_))), "{m:?}");
        }
        c
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let text = loop {
        let text = ts.metrics_text().await;
        if value(&text, "signaling_client_rtt_count") >= 1.0 {
            break text;
        }
        assert!(tokio::time::Instant::now() < deadline, "no ping answered");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let count = value(&text, "signaling_client_rtt_count");
    let sum = value(&text, "signaling_client_rtt_sum");
    // At most two pings in 2.5 s; loopback answers well within a second.
    assert!(count <= 2.0, "{count}");
    assert!(sum / count < 1000.0, "{sum} / {count}");
    reader.await.unwrap();
    ts.stop().await;
}
