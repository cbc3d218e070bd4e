//! Client-protocol cases run against the Go server 0.4.1 and this one
//! (`go_parity::Side`): where the spec is silent, this server answers as
//! Go does.

use serde_json::json;
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
