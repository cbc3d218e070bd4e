//! `/spreed` with the subprotocol `janus-events` (Janus's WebSocket event
//! handler, as with the Go server): events a Janus would send become the
//! Go server's media-quality metrics; only loopback and private addresses
//! may send them. With a real Janus and real media:
//! `mcu_media::janus_events_feed_the_media_quality_metrics`.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{free_port, TestServer};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects as Janus's event handler (optionally naming a client address
/// through the trusted proxy on 127.0.0.1).
async fn connect(ts: &TestServer, forwarded_for: Option<&str>) -> Ws {
    let mut req = format!("{}/spreed", ts.url.replace("http", "ws"))
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("janus-events"),
    );
    if let Some(ip) = forwarded_for {
        h.insert("X-Forwarded-For", HeaderValue::from_str(ip).unwrap());
    }
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["Sec-WebSocket-Protocol"], "janus-events");
    ws
}

/// The close code the server ends the connection with.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

/// The value of `name` with these labels in a Prometheus text (0 when
/// absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Label names and values of a metric.
type Labels<'a> = &'a [(&'a str, &'a str)];

fn event(kind: u64, subtype: u64, handle: u64, event: Value) -> Value {
    json!({"emitter": "janus", "type": kind, "subtype": subtype, "timestamp": 1,
           "session_id": 1, "handle_id": handle, "event": event})
}

fn stats(media: &str, bytes_in: u64, lost: u64) -> Value {
    event(
        32,
        3,
        5,
        json!({"mid": "0", "mindex": 0, "media": media, "codec": "opus",
        "base": 48000, "lost": lost, "lost-by-remote": 0, "jitter-local": 5,
        "jitter-remote": 0, "bytes-received-lastsec": 100, "bytes-sent-lastsec": 0,
        "nacks-received": 0, "nacks-sent": 0, "retransmissions-received": 0,
        "rtt": 20, "packets-received": 10, "packets-sent": 0,
        "bytes-received": bytes_in, "bytes-sent": 0}),
    )
}

async fn wait_metric(ts: &TestServer, name: &str, labels: &[(&str, &str)], value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = ts.metrics_text().await;
        let v = metric(&text, name, labels);
        if v == value {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}{labels:?} is {v}, not {value}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn events_of_janus_become_the_go_servers_media_metrics() {
    // The MCU is configured (Janus itself is not needed for its events).
    let ts =
        TestServer::start_with(&format!("[mcu]\nurl = ws://127.0.0.1:{}\n", free_port())).await;
    let mut ws = connect(&ts, None).await;
    let group = json!([
        event(
            2,
            0,
            5,
            json!({"name": "attached", "plugin": "janus.plugin.videoroom"})
        ),
        event(
            16,
            1,
            5,
            json!({"ice": "connected", "stream_id": 1, "component_id": 1})
        ),
        event(
            16,
            5,
            5,
            json!({"dtls": "connected", "stream_id": 1, "component_id": 1})
        ),
        event(
            16,
            4,
            5,
            json!({"stream_id": 1, "component_id": 1, "selected-pair": "x",
            "candidates": {"local": {"address": "10.0.0.1", "port": 1, "type": "host", "transport": "udp", "family": 4},
                           "remote": {"address": "10.0.0.2", "port": 2, "type": "srflx", "transport": "udp", "family": 4}}})
        ),
        event(16, 6, 5, json!({"connection": "webrtcup"})),
        event(
            32,
            2,
            5,
            json!({"media": "video", "mid": "1", "slow_link": "uplink", "lost_lastsec": 9})
        ),
        stats("audio", 1000, 2),
    ]);
    ws.send(Message::Text(group.to_string().into()))
        .await
        .unwrap();
    // Single events too; totals count what grew.
    ws.send(Message::Text(stats("audio", 1500, 3).to_string().into()))
        .await
        .unwrap();
    let bytes = (
        "signaling_mcu_media_bytes_total",
        [("media", "audio"), ("direction", "incoming")],
    );
    wait_metric(&ts, bytes.0, &bytes.1, 1500.0).await;
    let text = ts.metrics_text().await;
    let checks: [(&str, Labels, f64); 8] = [
        (
            "signaling_mcu_ice_state_total",
            &[("state", "connected")],
            1.0,
        ),
        (
            "signaling_mcu_dtls_state_total",
            &[("state", "connected")],
            1.0,
        ),
        (
            "signaling_mcu_peerconnection_state_total",
            &[("state", "webrtcup"), ("reason", "")],
            1.0,
        ),
        (
            "signaling_mcu_selected_candidate_total",
            &[
                ("origin", "remote"),
                ("type", "srflx"),
                ("transport", "udp"),
                ("family", "ipv4"),
            ],
            1.0,
        ),
        (
            "signaling_mcu_slow_link_total",
            &[("media", "video"), ("direction", "outgoing")],
            1.0,
        ),
        (
            "signaling_mcu_media_codecs_total",
            &[("media", "audio"), ("codec", "opus")],
            1.0,
        ),
        (
            "signaling_mcu_media_lost_total",
            &[("media", "audio"), ("origin", "local")],
            3.0,
        ),
        ("signaling_mcu_media_rtt_count", &[("media", "audio")], 2.0),
    ];
    for (name, labels, want) in checks {
        assert_eq!(metric(&text, name, labels), want, "{name}{labels:?}");
    }
    assert_eq!(
        metric(
            &text,
            "signaling_mcu_media_jitter_sum",
            &[("media", "audio"), ("origin", "local")]
        ),
        10.0
    );
    // Something that is not an event changes nothing and ends nothing.
    ws.send(Message::Text("not json".into())).await.unwrap();
    ws.send(Message::Text(stats("audio", 1600, 3).to_string().into()))
        .await
        .unwrap();
    wait_metric(&ts, bytes.0, &bytes.1, 1600.0).await;
    ts.stop().await;
}

#[tokio::test]
async fn janus_events_need_an_mcu_and_a_local_or_private_address() {
    let ts = TestServer::start().await;
    let mut ws = connect(&ts, None).await;
    assert_eq!(close_code(&mut ws).await, Some(1011), "no MCU configured");
    ts.stop().await;

    let ts =
        TestServer::start_with(&format!("[mcu]\nurl = ws://127.0.0.1:{}\n", free_port())).await;
    // Through the trusted proxy on 127.0.0.1, from a public address.
    let mut ws = connect(&ts, Some("203.0.113.9")).await;
    assert_eq!(close_code(&mut ws).await, Some(1008));
    // From a private one it is served (no close).
    let mut ws = connect(&ts, Some("10.1.2.3")).await;
    ws.send(Message::Text(
        event(16, 1, 0, json!({"ice": "failed"})).to_string().into(),
    ))
    .await
    .unwrap();
    wait_metric(
        &ts,
        "signaling_mcu_ice_state_total",
        &[("state", "failed")],
        1.0,
    )
    .await;
    ts.stop().await;
}

/// Anybody on a private network may send events: each label takes at most
/// 16 distinct values (then `other`), so made-up states cannot grow the
/// metrics (kept for good, in every scrape) without bound.
#[tokio::test]
async fn made_up_label_values_cannot_grow_the_metrics() {
    let ts =
        TestServer::start_with(&format!("[mcu]\nurl = ws://127.0.0.1:{}\n", free_port())).await;
    let mut ws = connect(&ts, Some("10.1.2.3")).await;
    let flood: Vec<Value> = (0..100)
        .map(|i| event(16, 1, 0, json!({ "ice": format!("made-up-{i}") })))
        .collect();
    ws.send(Message::Text(Value::Array(flood).to_string().into()))
        .await
        .unwrap();
    // All 100 are counted...
    wait_metric(&ts, "signaling_mcu_ice_state_total", &[], 100.0).await;
    let text = ts.metrics_text().await;
    let series = text
        .lines()
        .filter(|l| l.starts_with("signaling_mcu_ice_state_total{"))
        .count();
    // ...in the first 16 values and `other`.
    assert_eq!(series, 17, "{text}");
    let other = metric(
        &text,
        "signaling_mcu_ice_state_total",
        &[("state", "other")],
    );
    assert_eq!(other, 84.0);
    ts.stop().await;
}

/// An event handler that sends pings but reads nothing: the server's pong
/// writes stall, and after the write deadline (10 s, Go's `writeWait`)
/// the connection is closed instead of hanging forever.
#[tokio::test]
async fn a_janus_that_reads_nothing_is_closed_after_the_write_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ts =
        TestServer::start_with(&format!("[mcu]\nurl = ws://127.0.0.1:{}\n", free_port())).await;
    let ws = connect(&ts, None).await;
    let tokio_tungstenite::MaybeTlsStream::Plain(mut tcp) = ws.into_inner() else {
        panic!("plain TCP expected");
    };
    // Masked client ping frames with 125 bytes each (pongs as large).
    let mut frame = vec![0x89, 0x80 | 125, 1, 2, 3, 4];
    frame.extend((0..125u8).map(|i| i ^ [1, 2, 3, 4][usize::from(i) % 4]));
    let batch: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 512)
        .collect();
    let mut sent = 0usize;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), tcp.write_all(&batch)).await {
            Ok(Ok(())) => sent += batch.len(),
            Ok(Err(e)) => panic!("write failed before the server stalled: {e}"),
            Err(_) => break, // the server stopped reading: its pongs stall
        }
        assert!(sent < 512 << 20, "the server never stopped reading");
    }
    // The deadline passes while nothing is read.
    tokio::time::sleep(Duration::from_secs(12)).await;
    // Closed: reading ends (EOF or reset) instead of pongs forever.
    let mut buf = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled connection was not closed");
}
