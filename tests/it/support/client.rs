//! A WebSocket client of the server, and signed backend-API requests.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use spreed_signaling::backend::checksum;
use tokio_tungstenite::tungstenite::Message;

use super::*;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub session_id: String,
    pub resume_id: String,
    pub user_id: Option<String>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client::from_ws(ws)
    }

    /// A client on an open WebSocket, nothing read yet.
    pub fn from_ws(ws: Ws) -> Client {
        Client {
            ws,
            session_id: String::new(),
            resume_id: String::new(),
            user_id: None,
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// Next text message as JSON (pings skipped).
    pub async fn recv(&mut self) -> Value {
        self.recv_within(TIMEOUT).await
    }

    /// Skips messages until one matches, waiting up to `limit` in all.
    pub async fn wait_for_within(
        &mut self,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.recv_within(left).await;
            if pred(&m) {
                return m;
            }
        }
    }

    /// Next text message, waiting up to `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Value {
        loop {
            let m = tokio::time::timeout(limit, self.ws.next())
                .await
                .expect("timed out waiting for a message")
                .expect("connection closed")
                .expect("read error");
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(c) => panic!("connection closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Next message or the close frame code (None = ended without close).
    pub async fn recv_or_close(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let m = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for a message");
            match m {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(Message::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => continue,
                _ => return Err(None),
            }
        }
    }

    /// Waits for the connection to close; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.recv_or_close().await {
                Ok(_) => continue,
                Err(code) => return code,
            }
        }
    }

    pub async fn expect_type(&mut self, kind: &str) -> Value {
        let m = self.recv().await;
        assert_eq!(m["type"], kind, "unexpected message: {m}");
        m
    }

    /// Skips messages until one matches.
    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let m = self.recv().await;
            if pred(&m) {
                return m;
            }
        }
    }

    pub async fn expect_error(&mut self, code: &str) -> Value {
        let m = self.expect_type("error").await;
        assert_eq!(m["error"]["code"], code, "unexpected error: {m}");
        m
    }

    /// Asserts that nothing arrives within a short time (used only where
    /// the absence of a message is the behaviour under test, after a later
    /// message has proven ordering — see callers).
    pub async fn expect_nothing(&mut self, within: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(within, self.ws.next()).await {
            panic!("unexpected message: {t}");
        }
    }

    pub async fn hello_v1(&mut self, url: &str, params: Value) -> Value {
        self.send(json!({"id": "hello-1", "type": "hello", "hello": {"version": "1.0", "auth": {"url": url, "params": params}}})).await;
        let m = self.expect_type("hello").await;
        self.session_id = m["hello"]["sessionid"].as_str().unwrap().to_string();
        self.resume_id = m["hello"]["resumeid"].as_str().unwrap().to_string();
        self.user_id = m["hello"]["userid"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(str::to_string);
        m
    }

    /// Joins a room and returns the room reply.
    pub async fn join(&mut self, room: &str, nc_session: &str) -> Value {
        self.send(json!({"id": "join", "type": "room", "room": {"roomid": room, "sessionid": nc_session}})).await;
        let m = self
            .wait_for(|m| m["type"] == "room" || m["type"] == "error")
            .await;
        assert_eq!(m["room"]["roomid"], room);
        m
    }

    /// Waits for a room join event listing `sid`.
    pub async fn wait_join_of(&mut self, sid: &str) -> Value {
        let sid = sid.to_string();
        self.wait_for(move |m| {
            m["type"] == "event"
                && m["event"]["type"] == "join"
                && m["event"]["join"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|e| e["sessionid"] == sid.as_str()))
        })
        .await
    }

    /// Sends a `message` and returns nothing.
    pub async fn message_to(&mut self, recipient: Value, data: Value) {
        self.send(json!({"type": "message", "message": {"recipient": recipient, "data": data}}))
            .await;
    }
}

/// An internal client's hello, its token computed for `random`.
pub fn internal_hello(random: &str) -> Value {
    let token = checksum::calculate(INTERNAL_SECRET.as_bytes(), random.as_bytes(), b"");
    json!({"type": "hello", "id": "ih", "hello": {"version": "1.0", "auth": {"type": "internal", "params": {"random": random, "token": token}}}})
}

/// Sends a backend API request with a valid checksum to the server at
/// `server_url`, naming the Nextcloud at `nc_url`.
pub async fn signed_backend_request(
    server_url: &str,
    nc_url: &str,
    room: &str,
    body: &Value,
) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    let random = checksum::new_random();
    let sum = checksum::calculate(SECRET.as_bytes(), random.as_bytes(), &body);
    let resp = reqwest::Client::new()
        .post(format!("{server_url}/api/v1/room/{room}"))
        .header("Content-Type", "application/json")
        .header("Spreed-Signaling-Random", random)
        .header("Spreed-Signaling-Checksum", sum)
        .header("Spreed-Signaling-Backend", nc_url)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, v)
}

/// Connects an internal client (hello done) announcing `features`.
pub async fn internal_client(ws_url: &str, features: &[&str]) -> (Client, String) {
    let mut c = Client::connect(ws_url).await;
    c.expect_type("welcome").await;
    let mut hello = internal_hello("0123456789012345678901234567890123456789");
    hello["hello"]["features"] = json!(features);
    c.send(hello).await;
    let h = c.expect_type("hello").await;
    let sid = h["hello"]["sessionid"].as_str().unwrap().to_string();
    c.session_id = sid.clone();
    (c, sid)
}
