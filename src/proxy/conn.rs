//! One `/proxy` WebSocket connection: a reader that parses each text frame
//! and handles it (hello first), and a writer that sends what the session
//! queued and pings as the Go proxy does (every 54 s; a connection silent
//! for 60 s is closed). Limits: [`MAX_MESSAGE`] per message (larger closes
//! with 1009), [`IN_FLIGHT`] payloads per connection (then the connection
//! is not read until one is done), a full write queue closes with 1013
//! (the session keeps the messages for its resume).

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::server::Proxy;
use super::session::{ConnTx, Session, CONN_QUEUE};
use super::tokens::TokenRefusal;
use crate::api::proxy::{
    self as wire, ProxyClientKind, ProxyClientMessage, ProxyHelloReply, ProxyHelloRequest,
    ProxyServerInfo, ProxyServerMessage, BYE_SESSION_CLOSED, BYE_SESSION_RESUMED, PROXY_VERSION,
};

/// Largest message a server may send (as the Go proxy).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Payloads one connection may have in flight.
pub const IN_FLIGHT: usize = 64;
/// A ping goes out this often.
const PING_EVERY: Duration = Duration::from_secs(54);
/// A connection that sent nothing (pongs included) for this long is closed.
const SILENT_FOR: Duration = Duration::from_secs(60);

struct Conn {
    proxy: Arc<Proxy>,
    tx: ConnTx,
    session: Option<Arc<Session>>,
    permits: Arc<Semaphore>,
}

fn unix_nanos() -> String {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
        .to_string()
}

/// Serves one connection until it closes.
pub async fn serve(proxy: Arc<Proxy>, ws: WebSocket, peer: String) {
    let (tx, mut rx) = mpsc::channel::<String>(CONN_QUEUE);
    let overflow = CancellationToken::new();
    let conn_tx = ConnTx {
        id: proxy.conn_id(),
        tx,
        overflow: overflow.clone(),
    };
    let (mut sink, mut stream) = ws.split();
    let done = CancellationToken::new();
    let cancel = proxy.cancel.clone();
    let writer_done = done.clone();
    // The code of the close frame when the reader ends the connection.
    let close_code = Arc::new(AtomicU16::new(1000));
    let writer_code = close_code.clone();
    let writer = tokio::spawn(async move {
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        let close = |code, reason: &'static str| {
            Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            }))
        };
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m {
                    Some(text) => Message::Text(text.into()),
                    None => close(1000, ""),
                },
                _ = ping.tick() => Message::Ping(unix_nanos().into()),
                _ = overflow.cancelled() => close(1013, "too many messages waiting"),
                _ = cancel.cancelled() => {
                    // What was queued goes out before the goodbye.
                    while let Ok(text) = rx.try_recv() {
                        if sink.send(Message::Text(text.into())).await.is_err() {
                            break;
                        }
                    }
                    close(1001, "proxy stopping")
                }
                _ = writer_done.cancelled() => match writer_code.load(Ordering::Relaxed) {
                    1009 => close(1009, "message too big"),
                    1002 => close(1002, "protocol error"),
                    _ => close(1000, ""),
                },
            };
            let last = matches!(msg, Message::Close(_));
            if sink.send(msg).await.is_err() || last {
                break;
            }
        }
        writer_done.cancel();
    });
    let mut conn = Conn {
        proxy: proxy.clone(),
        tx: conn_tx,
        session: None,
        permits: Arc::new(Semaphore::new(IN_FLIGHT)),
    };
    loop {
        let next = tokio::select! {
            _ = done.cancelled() => break,
            n = tokio::time::timeout(SILENT_FOR, stream.next()) => n,
        };
        let msg = match next {
            Err(_) => {
                tracing::info!(peer, "connection silent for 60 s, closing");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                // Over MAX_MESSAGE: "Space limit exceeded" / "Message too long".
                let text = e.to_string();
                let code = if text.contains("limit exceeded") || text.contains("too long") {
                    1009
                } else {
                    1002
                };
                tracing::info!(peer, "read error, closing with {code}: {text}");
                close_code.store(code, Ordering::Relaxed);
                break;
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => conn.message(t.as_str()).await,
            Message::Binary(_) => {
                conn.reply(&ProxyServerMessage::error(
                    None,
                    wire::INVALID_FORMAT,
                    "binary messages are not supported",
                ));
            }
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => {
                if let Some(s) = &conn.session {
                    s.touch();
                }
            }
        }
    }
    done.cancel();
    let _ = writer.await;
    if let Some(s) = &conn.session {
        s.detach(conn.tx.id);
    }
    tracing::debug!(peer, "connection closed");
}

impl Conn {
    /// To this connection (before the hello), or the session's.
    fn reply(&self, msg: &ProxyServerMessage) {
        match &self.session {
            Some(s) => self.proxy.send_to(s, msg),
            None => {
                if let Ok(text) = serde_json::to_string(msg) {
                    if self.tx.tx.try_send(text).is_err() {
                        self.tx.overflow.cancel();
                    }
                }
            }
        }
    }

    async fn message(&mut self, text: &str) {
        let msg: ProxyClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(_) => {
                self.reply(&ProxyServerMessage::error(
                    None,
                    wire::INVALID_FORMAT,
                    "Could not decode message.",
                ));
                return;
            }
        };
        let id = msg.id.as_deref();
        // A session resumed on another connection is no longer this one's
        // (as the Go proxy: its next message must be a hello).
        if self
            .session
            .as_ref()
            .is_some_and(|s| !s.held_by(self.tx.id))
        {
            self.session = None;
        }
        let Some(session) = self.session.clone() else {
            if msg.kind != ProxyClientKind::Hello {
                self.reply(&ProxyServerMessage::error(
                    id,
                    wire::HELLO_EXPECTED,
                    "Expected Hello request.",
                ));
                return;
            }
            match msg.hello {
                Some(h) => self.hello(id, h),
                None => self.reply(&ProxyServerMessage::error(
                    id,
                    wire::INVALID_FORMAT,
                    "hello missing",
                )),
            }
            return;
        };
        session.touch();
        match (msg.kind, msg.command, msg.payload) {
            (ProxyClientKind::Bye, _, _) => self.bye(session),
            (ProxyClientKind::Command, Some(cmd), _) => {
                super::handle::command(&self.proxy, &session, id, cmd)
            }
            (ProxyClientKind::Payload, _, Some(p)) => {
                // Not read further while IN_FLIGHT payloads are running.
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    return;
                };
                let id = msg.id.clone();
                super::handle::payload(&self.proxy, &session, id, p, permit).await
            }
            (ProxyClientKind::Command | ProxyClientKind::Payload, _, _) => self.reply(
                &ProxyServerMessage::error(id, wire::INVALID_FORMAT, "body missing"),
            ),
            _ => self.reply(&ProxyServerMessage::error(
                id,
                wire::BAD_REQUEST,
                "Unsupported message received.",
            )),
        }
    }

    /// `bye` (as the Go proxy): the session ends (its publishers and
    /// subscribers close), the connection hears `bye session_closed` and
    /// may send a new hello.
    fn bye(&mut self, session: Arc<Session>) {
        tracing::info!(session = %session.id, "session closed by its server");
        self.session = None;
        // Gone before the connection hears it.
        self.proxy.end_session(&session.id);
        let _ = session.send(&ProxyServerMessage::bye(BYE_SESSION_CLOSED));
    }

    fn hello(&mut self, id: Option<&str>, hello: ProxyHelloRequest) {
        if hello.version != PROXY_VERSION {
            let text = format!("unsupported hello version: {}", hello.version);
            self.reply(&ProxyServerMessage::error(id, wire::INVALID_FORMAT, &text));
            return;
        }
        let proxy = self.proxy.clone();
        let session = if !hello.resumeid.is_empty() {
            let Some(s) = proxy.session(&hello.resumeid) else {
                self.reply(&ProxyServerMessage::error(
                    id,
                    wire::NO_SUCH_SESSION,
                    "The session to resume does not exist.",
                ));
                return;
            };
            if let Some(prev) = s.attach(self.tx.clone()) {
                if let Ok(text) =
                    serde_json::to_string(&ProxyServerMessage::bye(BYE_SESSION_RESUMED))
                {
                    let _ = prev.tx.try_send(text);
                }
            }
            proxy.metrics.sessions_resumed_total.inc();
            tracing::info!(session = %s.id, "session resumed");
            s
        } else {
            if hello.token.is_empty() {
                self.reply(&ProxyServerMessage::error(
                    id,
                    wire::INVALID_FORMAT,
                    "token missing",
                ));
                return;
            }
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let iss = match proxy.tokens.load().verify(&hello.token, now) {
                Ok(iss) => iss,
                Err(r) => {
                    proxy
                        .metrics
                        .token_errors_total
                        .with_label_values(&[r.reason()])
                        .inc();
                    tracing::info!(reason = r.reason(), "hello token refused");
                    let (code, text) = match r {
                        TokenRefusal::Expired => (wire::TOKEN_EXPIRED, "The token is expired."),
                        TokenRefusal::AuthFailed(_) => {
                            (wire::AUTH_FAILED, "The token could not be authenticated.")
                        }
                    };
                    self.reply(&ProxyServerMessage::error(id, code, text));
                    return;
                }
            };
            let sid: Arc<str> = super::session_id().into();
            let s = Arc::new(Session::new(sid.clone(), self.tx.clone()));
            if !proxy.add_session(s.clone()) {
                self.reply(&ProxyServerMessage::error(
                    id,
                    wire::TOO_MANY_SESSIONS,
                    "Too many sessions.",
                ));
                return;
            }
            proxy.metrics.sessions_total.inc();
            tracing::info!(session = %sid, issuer = %iss, "session created");
            s
        };
        self.session = Some(session.clone());
        let reply = ProxyServerMessage::hello(
            id,
            ProxyHelloReply {
                version: PROXY_VERSION.into(),
                sessionid: session.id.to_string(),
                server: Some(ProxyServerInfo {
                    version: env!("CARGO_PKG_VERSION").into(),
                    features: Vec::new(),
                    country: proxy.country.clone().unwrap_or_default(),
                }),
            },
        );
        proxy.send_to(&session, &reply);
        proxy.send_to(&session, &proxy.state_event());
    }
}
