//! Every WebSocket frame a peer sends is charged to its budget: pings,
//! pongs, fragments (empty ones too) and what a federation remote sends
//! (binary messages: parity_protocol.rs).

use crate::support::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// `signaling_client_read_pauses_total`: how often a connection was not
/// read because it went over its budget.
pub async fn read_pauses(ts: &TestServer) -> u64 {
    let text = ts.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix("signaling_client_read_pauses_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A server with a budget of 5 frames at once, then 20 a second.
async fn small_budget() -> TestServer {
    TestServer::start_with("[clients]\nmessagespersecond = 20\nmessageburst = 5\n").await
}

/// The connection is still served, in order: a request sent after the
/// flood is answered.
async fn answered(c: &mut Client) {
    c.send(json!({"id": "probe", "type": "room", "room": {"roomid": ""}}))
        .await;
    let r = c.wait_for(|m| m["id"] == "probe").await;
    assert_eq!(r["type"], "room", "{r}");
}

#[tokio::test]
async fn pings_are_charged_to_the_budget() {
    let ts = small_budget().await;
    let mut a = ts.client(Some("alice")).await;
    assert_eq!(read_pauses(&ts).await, 0);
    for _ in 0..40 {
        a.send_raw(Message::Ping(vec![1; 100].into())).await;
    }
    answered(&mut a).await;
    assert!(read_pauses(&ts).await > 0, "pings were read at any rate");
    ts.stop().await;
}

#[tokio::test]
async fn empty_fragments_are_charged_to_the_budget() {
    let ts = small_budget().await;
    let mut a = ts.client(Some("alice")).await;
    let frame = |op: Data, fin: bool, data: &str| {
        Message::Frame(Frame::message(
            data.as_bytes().to_vec(),
            OpCode::Data(op),
            fin,
        ))
    };
    a.send_raw(frame(Data::Text, false, "")).await;
    for _ in 0..40 {
        a.send_raw(frame(Data::Continue, false, "")).await;
    }
    let probe = json!({"id": "frag", "type": "room", "room": {"roomid": ""}}).to_string();
    a.send_raw(frame(Data::Continue, true, &probe)).await;
    // The fragments made one message, answered as such.
    let r = a.wait_for(|m| m["id"] == "frag").await;
    assert_eq!(r["type"], "room", "{r}");
    assert!(
        read_pauses(&ts).await > 0,
        "empty fragments were read at any rate"
    );
    ts.stop().await;
}
