//! Unit tests of the rolling-restart hand-over of the Janus MCU, against
//! a fake Janus on a local WebSocket.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::super::super::{sdp, McuError, Offer, StreamType};
use super::super::JanusMcu;
use crate::config::mcu::McuConfig;
use crate::metrics::McuMetrics;

/// How long a test waits for what it expects.
const WAIT: Duration = Duration::from_secs(5);

/// A fake Janus: answers `info`, `create`, `attach`, `detach`,
/// `keepalive` and the videoroom `create`/`destroy` at once; holds every
/// other request (`join`, `configure`) until [`FakeJanus::release`],
/// then answers each with a `joined` event. Every request it got is in
/// `log` and comes out of `seen`, in order.
struct FakeJanus {
    url: String,
    seen: mpsc::UnboundedReceiver<Value>,
    log: Arc<Mutex<Vec<Value>>>,
    release: mpsc::UnboundedSender<()>,
}

impl FakeJanus {
    async fn start() -> FakeJanus {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let (seen_tx, seen) = mpsc::unbounded_channel();
        let (release, release_rx) = mpsc::unbounded_channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = tokio_tungstenite::accept_hdr_async(tcp, with_protocol)
                .await
                .unwrap();
            serve(ws, seen_tx, l, release_rx).await;
        });
        FakeJanus {
            url,
            seen,
            log,
            release,
        }
    }

    /// The next request that matches `pred` (earlier ones are skipped).
    async fn wait(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                let r = self.seen.recv().await.expect("fake Janus running");
                if pred(&r) {
                    return r;
                }
            }
        })
        .await
        .expect("the request in time")
    }

    /// How many `janus` requests of `kind` it got.
    fn count(&self, kind: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|r| r["janus"] == kind).count()
    }
}

/// The handshake's answer names the subprotocol Janus speaks.
#[allow(clippy::result_large_err)] // the callback's type, as tungstenite wants it
fn with_protocol(_: &Request, mut r: Response) -> Result<Response, ErrorResponse> {
    r.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("janus-protocol"),
    );
    Ok(r)
}

async fn serve(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    seen: mpsc::UnboundedSender<Value>,
    log: Arc<Mutex<Vec<Value>>>,
    mut release: mpsc::UnboundedReceiver<()>,
) {
    let (mut sink, mut stream) = ws.split();
    let mut next_id = 100u64;
    let mut held: Vec<Value> = Vec::new();
    loop {
        let replies: Vec<Value> = tokio::select! {
            m = stream.next() => {
                let Some(Ok(Message::Text(t))) = m else { return };
                let r: Value = serde_json::from_str(&t).unwrap();
                log.lock().unwrap().push(r.clone());
                let _ = seen.send(r.clone());
                match answer(&r, &mut next_id) {
                    Some(a) => vec![a],
                    None => {
                        held.push(r);
                        Vec::new()
                    }
                }
            }
            Some(()) = release.recv() => held.drain(..).map(|r| {
                plugin(&r, "event", json!({"videoroom": "joined", "room": 1234, "id": 1}))
            }).collect(),
        };
        for a in replies {
            if sink
                .send(Message::Text(a.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// The immediate answer to request `r`; None: held.
fn answer(r: &Value, next_id: &mut u64) -> Option<Value> {
    let t = &r["transaction"];
    match r["janus"].as_str()? {
        "info" => Some(json!({"janus": "server_info", "transaction": t,
            "plugins": {"janus.plugin.videoroom": {}},
            "data_channels": true, "full-trickle": true})),
        "create" | "attach" => {
            *next_id += 1;
            Some(json!({"janus": "success", "transaction": t, "data": {"id": *next_id}}))
        }
        "detach" => Some(json!({"janus": "success", "transaction": t})),
        "keepalive" => Some(json!({"janus": "ack", "transaction": t})),
        "message" => match r["body"]["request"].as_str()? {
            "create" => Some(plugin(
                r,
                "success",
                json!({"videoroom": "created", "room": 1234}),
            )),
            "destroy" => Some(plugin(
                r,
                "success",
                json!({"videoroom": "destroyed", "room": 1234}),
            )),
            _ => None,
        },
        _ => None,
    }
}

/// A videoroom answer of `kind` to request `r`.
fn plugin(r: &Value, kind: &str, data: Value) -> Value {
    json!({"janus": kind, "transaction": r["transaction"], "sender": r["handle_id"],
        "plugindata": {"plugin": "janus.plugin.videoroom", "data": data}})
}

fn config(url: &str) -> McuConfig {
    McuConfig {
        url: url.to_string(),
        max_stream_bitrate: 1_048_576,
        max_screen_bitrate: 2_097_152,
        allowed_candidates: Default::default(),
        blocked_candidates: Default::default(),
        timeout: Duration::from_secs(2),
        proxy: None,
    }
}

fn offer() -> Offer {
    Offer {
        sid: "1".into(),
        sdp: "v=0\r\n".into(),
        bitrate: 0,
        backend_cap: 0,
        codecs: Default::default(),
        media: sdp::Media {
            audio: true,
            video: true,
        },
        payload: Default::default(),
        country: None,
        continents: Vec::new(),
    }
}

async fn connected(mcu: &JanusMcu) {
    let mut changes = mcu.changes();
    tokio::time::timeout(WAIT, async {
        while !mcu.connected() {
            changes.changed().await.unwrap();
        }
    })
    .await
    .expect("connected to the fake Janus");
}

#[tokio::test]
async fn once_handed_over_no_new_publisher_or_subscriber_is_made_and_one_under_way_is_undone() {
    let mut janus = FakeJanus::start().await;
    let cancel = CancellationToken::new();
    let metrics = McuMetrics::new(&prometheus::Registry::new());
    let (mcu, _signals) = JanusMcu::start(config(&janus.url), metrics, cancel.clone(), None);
    connected(&mcu).await;
    // Alice's publisher is under way: Janus holds its join.
    let m = mcu.clone();
    let alice = tokio::spawn(async move {
        m.publish(&Arc::from("alice"), StreamType::Video, offer(), |_, _| {})
            .await
    });
    let join = janus.wait(|r| r["body"]["request"] == "join").await;
    let handle = join["handle_id"].as_u64().unwrap();
    // The process composes what its successor claims meanwhile: alice is
    // not in it, so her publisher must not come to be here.
    assert!(mcu.hand_over().is_none());
    janus.release.send(()).unwrap();
    let r = tokio::time::timeout(WAIT, alice).await.unwrap().unwrap();
    assert!(matches!(r, Err(McuError::HandedOver)), "{r:?}");
    assert!(!mcu.has_publisher("alice", StreamType::Video));
    // Its room and handle are removed from Janus.
    janus
        .wait(|r| r["body"]["request"] == "destroy" && r["handle_id"] == handle)
        .await;
    janus
        .wait(|r| r["janus"] == "detach" && r["handle_id"] == handle)
        .await;
    // New ones are refused before Janus hears of them.
    let attached = janus.count("attach");
    let r = mcu
        .publish(&Arc::from("bob"), StreamType::Video, offer(), |_, _| {
            panic!("no answer")
        })
        .await;
    assert!(matches!(r, Err(McuError::HandedOver)), "{r:?}");
    let r = mcu
        .subscribe(
            &(Arc::from("carol"), Arc::from("alice"), StreamType::Video),
            "",
            &json!({}),
            |_, _| panic!("no offer"),
        )
        .await;
    assert!(matches!(r, Err(McuError::HandedOver)), "{r:?}");
    assert_eq!(janus.count("attach"), attached);
    cancel.cancel();
}
