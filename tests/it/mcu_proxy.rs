//! `[mcu] type = proxy` against small fake proxies of the test's own
//! (real WebSockets, the proxy protocol of mcu-proxy-notes.md §2): which
//! proxy gets a publisher (load, ties, shutdown, a lost Janus, an error
//! reply, a lost connection), the token, and what reaches the proxies.
//! The Go proxy with Janus and real media: `mcu_proxy_go.rs`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::support::janus::audio_offer;
use crate::support::proxy_procs::rsa_pair;
use crate::support::{Client, TestServer, TIMEOUT};

/// How a fake proxy behaves.
#[derive(Clone, Default)]
pub(crate) struct Behave {
    /// Events sent right after each hello.
    pub(crate) after_hello: Vec<Value>,
    /// `create-publisher` is answered with this error code.
    pub(crate) refuse_publishers: Option<&'static str>,
    /// The `country` of the hello reply (`[app] country`).
    pub(crate) country: Option<&'static str>,
}

/// A fake signaling proxy: answers hellos, commands and payloads, and
/// records what it got.
pub(crate) struct FakeProxy {
    port: u16,
    got: Arc<Mutex<Vec<Value>>>,
    /// Sends a frame on the current connection.
    push: Arc<Mutex<Option<mpsc::UnboundedSender<Message>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeProxy {
    pub(crate) async fn start(behave: Behave) -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let push = Arc::new(Mutex::new(None));
        let (g, p) = (got.clone(), push.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    continue;
                };
                let (tx, rx) = mpsc::unbounded_channel();
                *p.lock().unwrap() = Some(tx.clone());
                tokio::spawn(serve(ws, port, behave.clone(), g.clone(), tx, rx));
            }
        });
        FakeProxy {
            port,
            got,
            push,
            task,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn send(&self, v: Value) {
        let push = self.push.lock().unwrap();
        push.as_ref()
            .expect("connected")
            .send(Message::Text(v.to_string().into()))
            .unwrap();
    }

    /// The commands of `kind` it got.
    pub(crate) fn commands(&self, kind: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "command" && m["command"]["type"] == kind)
            .cloned()
            .collect()
    }

    fn payloads(&self, kind: &str) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "payload" && m["payload"]["type"] == kind)
            .cloned()
            .collect()
    }

    fn hellos(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "hello")
            .cloned()
            .collect()
    }

    /// Stops listening and drops the current connection.
    fn stop(&self) {
        self.task.abort();
        if let Some(tx) = self.push.lock().unwrap().take() {
            let _ = tx.send(Message::Close(None));
        }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

const ANSWER_SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=fake\r\nt=0 0\r\n";

async fn serve(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    port: u16,
    behave: Behave,
    got: Arc<Mutex<Vec<Value>>>,
    tx: mpsc::UnboundedSender<Message>,
    mut rx: mpsc::UnboundedReceiver<Message>,
) {
    let (mut sink, mut stream) = ws.split();
    let reply = |v: Value| {
        let _ = tx.send(Message::Text(v.to_string().into()));
    };
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else { return };
                let close = matches!(out, Message::Close(_));
                if sink.send(out).await.is_err() || close {
                    return;
                }
            }
            m = stream.next() => {
                let Some(Ok(Message::Text(text))) = m else {
                    match m {
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                };
                let m: Value = serde_json::from_str(&text).unwrap();
                got.lock().unwrap().push(m.clone());
                let id = m["id"].clone();
                match m["type"].as_str().unwrap_or("") {
                    "hello" => {
                        reply(json!({"id": id, "type": "hello", "hello": {"version": "1.0",
                            "sessionid": format!("session-{port}"),
                            "server": {"version": "fake", "country": behave.country.unwrap_or("")}}}));
                        for e in &behave.after_hello {
                            reply(json!({"type": "event", "event": e}));
                        }
                    }
                    "command" => {
                        let c = &m["command"];
                        match c["type"].as_str().unwrap_or("") {
                            "create-publisher" => match behave.refuse_publishers {
                                Some(code) => reply(json!({"id": id, "type": "error",
                                    "error": {"code": code, "message": "refused by the test"}})),
                                None => reply(json!({"id": id, "type": "command",
                                    "command": {"id": format!("pub-{port}-{}", c["streamType"].as_str().unwrap())}})),
                            },
                            "create-subscriber" => reply(json!({"id": id, "type": "command",
                                "command": {"id": format!("sub-{port}-{}", id.as_str().unwrap())}})),
                            _ => reply(json!({"id": id, "type": "command",
                                "command": {"id": c["clientId"]}})),
                        }
                    }
                    "payload" => {
                        let p = &m["payload"];
                        let body = match p["type"].as_str().unwrap_or("") {
                            "offer" => json!({"type": "answer", "sdp": ANSWER_SDP}),
                            "requestoffer" => json!({"type": "offer", "sdp": ANSWER_SDP}),
                            _ => Value::Null,
                        };
                        reply(json!({"id": id, "type": "payload", "payload": {
                            "type": p["type"], "clientId": p["clientId"], "payload": body}}));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The server's `[mcu]` for `proxies`, with a key of its own.
pub(crate) fn proxy_section(proxies: &[&FakeProxy], key: &Path) -> String {
    let urls: Vec<String> = proxies.iter().map(|p| p.url()).collect();
    format!(
        "[mcu]\ntype = proxy\nurl = {}\ntoken_id = server1\ntoken_key = {}\ntimeout = 5\nproxytimeout = 1\n",
        urls.join(" "),
        key.display()
    )
}

async fn mcu_stats(ts: &TestServer) -> Value {
    crate::support::proxies::mcu_stats(&ts.url).await
}

/// Waits until the server's statistics of proxy `url` satisfy `pred`.
async fn wait_proxy(ts: &TestServer, url: &str, pred: impl Fn(&Value) -> bool) {
    crate::support::proxies::wait_proxy(&ts.url, url, TIMEOUT, pred).await
}

pub(crate) async fn offer(c: &mut Client, id: &str, sid: &str) -> Value {
    let me = c.session_id.clone();
    c.send(json!({"id": id, "type": "message", "message": {
        "recipient": {"type": "session", "sessionid": me},
        "data": {"to": me, "type": "offer", "roomType": "video", "sid": sid,
            "payload": {"type": "offer", "sdp": audio_offer(), "nick": "Alice"}}}}))
        .await;
    c.wait_for(|m| m["type"] == "error" || m["message"]["data"]["type"] == "answer")
        .await
}

pub(crate) struct Setup {
    _dir: PathBuf,
    public: PathBuf,
    pub(crate) key: PathBuf,
}

pub(crate) fn setup() -> Setup {
    let dir = crate::support::fresh_dir("mcu-proxy");
    let (key, public) = rsa_pair(&dir, "server1");
    Setup {
        _dir: dir,
        public,
        key,
    }
}

#[tokio::test]
async fn an_error_reply_makes_the_server_try_the_next_proxy() {
    let s = setup();
    let bad = FakeProxy::start(Behave {
        refuse_publishers: Some("internal_error"),
        ..Default::default()
    })
    .await;
    let good = FakeProxy::start(Behave::default()).await;
    let ts = TestServer::start_with(&proxy_section(&[&bad, &good], &s.key)).await;
    wait_proxy(&ts, &good.url(), |d| d["connected"] == true).await;
    wait_proxy(&ts, &bad.url(), |d| d["connected"] == true).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let m = offer(&mut a, "o1", "1000").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    assert_eq!(m["message"]["data"]["payload"]["sdp"], ANSWER_SDP);
    assert_eq!(m["message"]["data"]["sid"], "1000");
    // The first proxy (a tie in load, first in [mcu] url) was asked first.
    assert_eq!(bad.commands("create-publisher").len(), 1);
    let created = good.commands("create-publisher");
    assert_eq!(created.len(), 1);
    assert_eq!(
        created[0]["command"]["streamType"], "video",
        "{}",
        created[0]
    );
    assert_eq!(created[0]["command"]["bitrate"], 1048576);
    assert_eq!(created[0]["command"]["mediatypes"], 1, "audio only");
    // The client's payload goes on unchanged (Talk's nick included).
    let offers = good.payloads("offer");
    assert_eq!(
        offers[0]["payload"]["clientId"],
        "pub-".to_string() + &good.port.to_string() + "-video"
    );
    assert_eq!(offers[0]["payload"]["payload"]["nick"], "Alice");
    assert_eq!(offers[0]["payload"]["payload"]["type"], "offer");
    // The hello: version 1.0, an RS256 token {iat, iss} of the server's key.
    let hello = &good.hellos()[0]["hello"];
    assert_eq!(hello["version"], "1.0");
    assert_eq!(hello["resumeid"], "");
    let token = hello["token"].as_str().unwrap();
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(&std::fs::read(&s.public).unwrap()).unwrap();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<Value>(token, &key, &v)
        .unwrap()
        .claims;
    assert_eq!(claims["iss"], "server1");
    assert!(claims["iat"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(claims.as_object().unwrap().len(), 2, "{claims}");

    // A subscriber goes to the publisher's proxy, with its uuid; the
    // proxy's unsolicited candidate for it reaches the client.
    let mut b = ts.client_in_room("bob", "room1").await;
    crate::mcu_media::all_in_call(&ts, &["nc-alice", "nc-bob"]).await;
    let alice = a.session_id.clone();
    b.send(json!({"id": "r1", "type": "message", "message": {
        "recipient": {"type": "session", "sessionid": alice},
        "data": {"type": "requestoffer", "roomType": "video"}}}))
        .await;
    let m = b
        .wait_for(|m| m["type"] == "error" || m["message"]["data"]["type"] == "offer")
        .await;
    assert_eq!(m["message"]["data"]["type"], "offer", "{m}");
    let sub = good.commands("create-subscriber");
    assert_eq!(sub[0]["command"]["publisherId"], created_id(&good));
    let sub_id = m["message"]["data"]["sid"].as_str().unwrap().to_string();
    assert!(sub_id.starts_with("sub-"), "{m}");
    good.send(json!({"type": "payload", "payload": {"type": "candidate", "clientId": sub_id,
        "payload": {"candidate": {"candidate": "candidate:1 1 udp 2130706431 10.1.2.3 5000 typ host",
        "sdpMid": "0", "sdpMLineIndex": 0}}}}));
    let m = b
        .wait_for(|m| m["message"]["data"]["type"] == "candidate")
        .await;
    assert_eq!(m["message"]["data"]["from"], alice);
    assert_eq!(m["message"]["data"]["sid"], sub_id);
    assert_eq!(
        m["message"]["data"]["payload"]["candidate"]["sdpMid"], "0",
        "{m}"
    );
    assert!(bad.commands("create-subscriber").is_empty());
}

fn created_id(p: &FakeProxy) -> String {
    format!("pub-{}-video", p.port)
}

#[tokio::test]
async fn proxies_in_shutdown_or_without_janus_get_no_publishers_until_janus_is_back() {
    let s = setup();
    let closing = FakeProxy::start(Behave {
        after_hello: vec![json!({"type": "shutdown-scheduled"})],
        ..Default::default()
    })
    .await;
    let no_janus = FakeProxy::start(Behave {
        after_hello: vec![json!({"type": "backend-disconnected"})],
        ..Default::default()
    })
    .await;
    let fine = FakeProxy::start(Behave::default()).await;
    let ts = TestServer::start_with(&proxy_section(&[&closing, &no_janus, &fine], &s.key)).await;
    wait_proxy(&ts, &closing.url(), |d| d["shutdown"] == true).await;
    wait_proxy(&ts, &fine.url(), |d| d["connected"] == true).await;
    // The backend-disconnected event follows the hello at once: by the time
    // the third proxy is connected it has long been read.
    wait_proxy(&ts, &no_janus.url(), |d| d["connected"] == true).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let m = offer(&mut a, "o1", "1").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    assert!(closing.commands("create-publisher").is_empty());
    assert!(no_janus.commands("create-publisher").is_empty());
    assert_eq!(fine.commands("create-publisher").len(), 1);
    wait_proxy(&ts, &fine.url(), |d| d["publishers"] == 1).await;

    // Its Janus is back: with equal loads, it comes first in [mcu] url.
    fine.send(json!({"type": "event", "event": {"type": "update-load", "load": 1}}));
    wait_proxy(&ts, &fine.url(), |d| d["load"] == 1).await;
    no_janus.send(json!({"type": "event", "event": {"type": "backend-connected"}}));
    no_janus.send(json!({"type": "event", "event": {"type": "update-load", "load": 1}}));
    wait_proxy(&ts, &no_janus.url(), |d| d["load"] == 1).await;
    let mut b = ts.client_in_room("bob", "room1").await;
    let m = offer(&mut b, "o2", "2").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    assert_eq!(no_janus.commands("create-publisher").len(), 1);
    assert!(closing.commands("create-publisher").is_empty());
}

#[tokio::test]
async fn publishers_go_to_the_least_loaded_proxy() {
    let s = setup();
    let busy = FakeProxy::start(Behave {
        after_hello: vec![json!({"type": "update-load", "load": 5})],
        ..Default::default()
    })
    .await;
    let idle = FakeProxy::start(Behave::default()).await;
    let ts = TestServer::start_with(&proxy_section(&[&busy, &idle], &s.key)).await;
    wait_proxy(&ts, &busy.url(), |d| d["load"] == 5).await;
    wait_proxy(&ts, &idle.url(), |d| d["connected"] == true).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    assert_eq!(
        offer(&mut a, "o1", "1").await["message"]["data"]["type"],
        "answer"
    );
    assert_eq!(idle.commands("create-publisher").len(), 1);
    assert!(busy.commands("create-publisher").is_empty());
    idle.send(json!({"type": "event", "event": {"type": "update-load", "load": 9}}));
    wait_proxy(&ts, &idle.url(), |d| d["load"] == 9).await;
    let mut b = ts.client_in_room("bob", "room1").await;
    assert_eq!(
        offer(&mut b, "o2", "2").await["message"]["data"]["type"],
        "answer"
    );
    assert_eq!(busy.commands("create-publisher").len(), 1);
    // /api/v1/stats in the Go shape.
    let st = mcu_stats(&ts).await;
    assert_eq!(st["publishers"], 2, "{st}");
    assert_eq!(st["clients"], 2, "{st}");
    assert_eq!(st["details"][busy.url()]["url"], busy.url());
    assert_eq!(st["details"][busy.url()]["publishers"], 1);
    assert_eq!(st["details"][busy.url()]["shutdown"], false);
    assert!(st["details"][busy.url()]["uptime"].is_string(), "{st}");
    let metrics = ts.metrics_text().await;
    assert!(
        metrics.contains(&format!(
            "signaling_mcu_backend_load{{url=\"{}\"}} 9",
            idle.url()
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("signaling_mcu_backend_connections{country=\"\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("signaling_mcu_publishers{type=\"video\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_publisher_on_a_lost_proxy_publishes_again_on_another_and_none_left_is_client_not_found()
{
    let s = setup();
    let first = FakeProxy::start(Behave::default()).await;
    let second = FakeProxy::start(Behave {
        after_hello: vec![json!({"type": "update-load", "load": 1})],
        ..Default::default()
    })
    .await;
    let ts = TestServer::start_with(&proxy_section(&[&first, &second], &s.key)).await;
    wait_proxy(&ts, &second.url(), |d| d["load"] == 1).await;
    wait_proxy(&ts, &first.url(), |d| d["connected"] == true).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    assert_eq!(
        offer(&mut a, "o1", "1").await["message"]["data"]["type"],
        "answer"
    );
    assert_eq!(first.commands("create-publisher").len(), 1);
    first.stop();
    wait_proxy(&ts, &first.url(), |d| d["connected"] == false).await;
    // Alice's next offer (her PeerConnection failed) lands on the proxy
    // that is there, within [mcu] timeout.
    let m = offer(&mut a, "o2", "2").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    assert_eq!(second.commands("create-publisher").len(), 1);
    wait_proxy(&ts, &second.url(), |d| d["publishers"] == 1).await;
    wait_proxy(&ts, &first.url(), |d| d["publishers"] == 0).await;
    // No proxy left: client_not_found with the request's id, signaling
    // goes on.
    second.stop();
    wait_proxy(&ts, &second.url(), |d| d["connected"] == false).await;
    let mut b = ts.client_in_room("bob", "room1").await;
    let m = offer(&mut b, "o3", "3").await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["id"], "o3");
    assert_eq!(m["error"]["code"], "client_not_found");
    let metrics = ts.metrics_text().await;
    assert!(
        metrics.contains("signaling_mcu_no_backend_available_total{type=\"video\"} 1"),
        "{metrics}"
    );
    b.send(
        json!({"type": "message", "message": {"recipient": {"type": "session",
        "sessionid": a.session_id}, "data": "still here"}}),
    )
    .await;
    let m = a.wait_for(|m| m["message"]["data"] == "still here").await;
    assert_eq!(m["message"]["sender"]["sessionid"], b.session_id);
}

/// Polls the server's metrics (every 50 ms, within [`TIMEOUT`]) until
/// they contain `line`.
async fn wait_metric(ts: &TestServer, line: &str) {
    let found = tokio::time::timeout(TIMEOUT, async {
        while !ts.metrics_text().await.contains(line) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "no {line} in {}", ts.metrics_text().await);
}

/// Two `requestoffer`s of one client for a publisher that is not there
/// yet both wait for it and both make a subscriber on the proxy; the later
/// one replaces the earlier, which is deleted on the proxy and no longer
/// counted (it was left on the proxy and in the gauge).
#[tokio::test]
async fn a_subscriber_replaced_by_a_concurrent_requestoffer_is_deleted_on_the_proxy() {
    let s = setup();
    let proxy = FakeProxy::start(Behave::default()).await;
    let ts = TestServer::start_with(&proxy_section(&[&proxy], &s.key)).await;
    wait_proxy(&ts, &proxy.url(), |d| d["connected"] == true).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    crate::mcu_media::all_in_call(&ts, &["nc-alice", "nc-bob"]).await;
    let alice = a.session_id.clone();
    for rid in ["r1", "r2"] {
        b.send(json!({"id": rid, "type": "message", "message": {
            "recipient": {"type": "session", "sessionid": alice},
            "data": {"type": "requestoffer", "roomType": "video"}}}))
            .await;
    }
    // Both wait for Alice's publisher.
    wait_metric(&ts, "signaling_mcu_nopublisher_total{type=\"video\"} 2").await;
    let m = offer(&mut a, "o1", "1").await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    let mut sids = Vec::new();
    for _ in 0..2 {
        let m = b
            .wait_for(|m| m["type"] == "error" || m["message"]["data"]["type"] == "offer")
            .await;
        assert_eq!(m["message"]["data"]["type"], "offer", "{m}");
        sids.push(m["message"]["data"]["sid"].as_str().unwrap().to_string());
    }
    assert_eq!(proxy.commands("create-subscriber").len(), 2);
    // The one replaced went before the offer of the one that stays.
    let deleted = proxy.commands("delete-subscriber");
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    let gone = deleted[0]["command"]["clientId"].as_str().unwrap();
    assert!(sids.iter().any(|s| s == gone), "{gone} of {sids:?}");
    let metrics = ts.metrics_text().await;
    assert!(
        metrics.contains("signaling_mcu_subscribers{type=\"video\"} 1"),
        "{metrics}"
    );
    wait_proxy(&ts, &proxy.url(), |d| d["clients"] == 2).await;
}
