//! One signaling proxy: its authenticated WebSocket (hello with an RS256
//! token, resume after a reconnect, a fresh hello when the proxy forgot
//! the session), requests matched on their `id`, WebSocket pings, and
//! reconnects with backoff (1 s doubling to 32 s while dialling fails; a
//! completed dial resets it, as Go, so a proxy that refuses our hello, e.g.
//! `too_many_sessions`, is tried again after 1 s). What the proxy says on its own (events, candidates) goes to
//! the MCU as [`ConnEvent`]s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::super::lock;
use crate::api::proxy::{
    EventKind, ProxyClientMessage, ProxyEvent, ProxyHelloRequest, ProxyPayload, ProxyServerKind,
    ProxyServerMessage, NO_SUCH_SESSION, PROXY_VERSION,
};

/// First reconnect delay; doubles up to [`MAX_RETRY`] while dials fail,
/// back to it once a dial completes.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest reconnect delay (as Go).
const MAX_RETRY: Duration = Duration::from_secs(32);
/// WebSocket ping interval (as Go).
const PING: Duration = Duration::from_secs(54);
/// The connection is dropped after this long without any frame (as Go).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request to a proxy failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnError {
    /// No logged-in connection to this proxy right now.
    #[error("not connected")]
    NotConnected,
    /// No answer in time.
    #[error("no answer in time")]
    Timeout,
    /// The connection dropped while the request was pending.
    #[error("connection lost")]
    Lost,
    /// The proxy answered with an `error`.
    #[error("{code}: {message}")]
    Refused {
        /// The proxy's error code.
        code: String,
        /// Its text.
        message: String,
    },
    /// An answer that lacks what the request must return.
    #[error("unexpected answer: {0}")]
    Protocol(String),
}

/// What a connection tells the MCU, in order.
#[derive(Debug)]
pub enum ConnEvent {
    /// Logged in; `resumed` false: a new proxy session (whatever this
    /// server had on the proxy before is gone).
    Up {
        /// The old session was resumed.
        resumed: bool,
    },
    /// The WebSocket dropped (the proxy session may still be resumed).
    Down,
    /// An event of the proxy (load and shutdown are recorded already).
    Event(ProxyEvent),
    /// An unsolicited payload (a candidate for a publisher/subscriber).
    Payload(ProxyPayload),
}

/// What is known of a proxy; read by selection and statistics.
#[derive(Debug, Clone, Default)]
pub struct ConnState {
    /// Logged in.
    pub connected: bool,
    /// The proxy's session id (to resume).
    pub session: String,
    /// Its last reported load.
    pub load: u64,
    /// It announced its shutdown (no new publishers).
    pub shutdown: bool,
    /// It lost its Janus (no new publishers until `backend-connected`).
    pub backend_down: bool,
    /// Its `[app] country`, if any.
    pub country: String,
    /// Its version string.
    pub version: String,
    /// When the current login happened.
    pub since: Option<SystemTime>,
    /// Logins so far (a new one tells stale timers apart).
    pub generation: u64,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Makes the hello tokens: RS256, `{"iat": now, "iss": token_id}`.
pub struct TokenMaker {
    id: String,
    key: Arc<jsonwebtoken::EncodingKey>,
}

impl TokenMaker {
    /// From `[mcu] token_id` and `token_key`.
    pub fn new(p: &crate::config::mcu::ProxyConfig) -> TokenMaker {
        TokenMaker {
            id: p.token_id.clone(),
            key: p.key.clone(),
        }
    }

    /// A token for a hello now.
    pub fn token(&self) -> Result<String, String> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            iat: u64,
            iss: &'a str,
        }
        let iat = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        jsonwebtoken::encode(&header, &Claims { iat, iss: &self.id }, &self.key)
            .map_err(|e| e.to_string())
    }
}

/// One proxy.
pub struct Conn {
    /// Its position in `[mcu] url`.
    pub index: usize,
    /// Its URL as configured (the key of statistics).
    pub url: String,
    dial: String,
    timeout: Duration,
    token: Arc<TokenMaker>,
    state: Mutex<ConnState>,
    out: Mutex<Option<mpsc::UnboundedSender<String>>>,
    pending: Mutex<HashMap<String, oneshot::Sender<ProxyServerMessage>>>,
    next: AtomicU64,
    events: mpsc::UnboundedSender<(usize, ConnEvent)>,
}

impl Conn {
    /// A proxy that is not connected yet; [`Conn::run`] connects it.
    pub fn new(
        index: usize,
        (url, dial): (String, String),
        timeout: Duration,
        token: Arc<TokenMaker>,
        events: mpsc::UnboundedSender<(usize, ConnEvent)>,
    ) -> Conn {
        Conn {
            index,
            url,
            dial,
            timeout,
            token,
            state: Mutex::new(ConnState::default()),
            out: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            events,
        }
    }

    /// A copy of what is known of the proxy.
    pub fn state(&self) -> ConnState {
        lock(&self.state).clone()
    }

    /// True while logged in.
    pub fn connected(&self) -> bool {
        lock(&self.state).connected
    }

    /// `proxytimeout`.
    pub fn proxy_timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends a request built with its id and waits (at most `timeout`)
    /// for the reply; an `error` reply is [`ConnError::Refused`].
    pub async fn request(
        &self,
        build: impl FnOnce(&str) -> ProxyClientMessage,
        timeout: Duration,
    ) -> Result<ProxyServerMessage, ConnError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let text = serde_json::to_string(&build(&id)).expect("proxy messages serialize");
        let (tx, rx) = oneshot::channel();
        {
            let out = lock(&self.out);
            let Some(out) = out.as_ref().filter(|_| self.connected()) else {
                return Err(ConnError::NotConnected);
            };
            lock(&self.pending).insert(id.clone(), tx);
            if out.send(text).is_err() {
                lock(&self.pending).remove(&id);
                return Err(ConnError::NotConnected);
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) if reply.kind == ProxyServerKind::Error => {
                let e = reply
                    .error
                    .unwrap_or_else(|| crate::api::proxy::ProxyError {
                        code: String::new(),
                        message: String::new(),
                        details: None,
                    });
                Err(ConnError::Refused {
                    code: e.code,
                    message: e.message,
                })
            }
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ConnError::Lost),
            Err(_) => {
                lock(&self.pending).remove(&id);
                Err(ConnError::Timeout)
            }
        }
    }

    fn emit(&self, ev: ConnEvent) {
        let _ = self.events.send((self.index, ev));
    }

    /// Keeps the proxy connected until `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut delay = FIRST_RETRY;
        loop {
            let attempt = tokio::select! {
                _ = cancel.cancelled() => return,
                r = self.connect(&mut delay) => r,
            };
            match attempt {
                Ok((ws, resumed)) => {
                    self.serve(ws, resumed, &cancel).await;
                    if cancel.is_cancelled() {
                        return;
                    }
                    tracing::warn!(proxy = %self.url, "connection to proxy lost, reconnecting in {delay:?}");
                }
                Err(e) => {
                    tracing::warn!(proxy = %self.url, "cannot log in to proxy: {e}; retrying in {delay:?}")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    /// Dials and logs in; true when the old session was resumed. A
    /// completed dial resets `delay` (as Go): the proxy is reachable, so a
    /// refused hello (a full proxy) is tried again soon.
    async fn connect(&self, delay: &mut Duration) -> Result<(Ws, bool), String> {
        let dial = tokio_tungstenite::connect_async(self.dial.as_str());
        let (mut ws, _) = tokio::time::timeout(self.timeout, dial)
            .await
            .map_err(|_| "no WebSocket handshake in time".to_string())?
            .map_err(|e| e.to_string())?;
        *delay = FIRST_RETRY;
        let old = lock(&self.state).session.clone();
        if !old.is_empty() {
            let hello = ProxyHelloRequest {
                version: PROXY_VERSION.into(),
                resumeid: old,
                ..Default::default()
            };
            match self.hello(&mut ws, hello).await? {
                Ok(()) => return Ok((ws, true)),
                Err(code) if code == NO_SUCH_SESSION => {
                    tracing::info!(proxy = %self.url, "proxy session could not be resumed, registering a new one");
                }
                Err(code) => return Err(format!("resume refused: {code}")),
            }
        }
        let hello = ProxyHelloRequest {
            version: PROXY_VERSION.into(),
            token: self.token.token()?,
            ..Default::default()
        };
        match self.hello(&mut ws, hello).await? {
            Ok(()) => Ok((ws, false)),
            Err(code) => Err(format!(
                "the proxy refused our hello with [mcu] token_id `{}`: {code}",
                self.token.id
            )),
        }
    }

    /// One hello: `Ok(Ok)` logged in, `Ok(Err(code))` refused.
    async fn hello(
        &self,
        ws: &mut Ws,
        hello: ProxyHelloRequest,
    ) -> Result<Result<(), String>, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed).to_string();
        let msg = ProxyClientMessage::hello(&id, hello);
        let text = serde_json::to_string(&msg).expect("proxy messages serialize");
        ws.send(Message::Text(text.into()))
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| "no hello reply in time".to_string())?;
            let text = match next {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | None => return Err("closed".into()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
            };
            let Ok(reply) = serde_json::from_str::<ProxyServerMessage>(&text) else {
                return Err("unparsable hello reply".into());
            };
            if reply.id.as_deref() != Some(id.as_str()) {
                continue;
            }
            return Ok(match (reply.kind, reply.hello, reply.error) {
                (ProxyServerKind::Hello, Some(h), _) => {
                    let mut st = lock(&self.state);
                    st.session = h.sessionid;
                    let server = h.server.unwrap_or_default();
                    st.country = server.country.to_ascii_uppercase();
                    st.version = server.version;
                    Ok(())
                }
                (_, _, Some(e)) if e.code == NO_SUCH_SESSION => Err(e.code),
                (_, _, Some(e)) => Err(format!("{} ({})", e.code, e.message)),
                _ => Err("unexpected hello reply".into()),
            });
        }
    }

    /// Runs a logged-in connection until it breaks or `cancel`.
    async fn serve(&self, ws: Ws, resumed: bool, cancel: &CancellationToken) {
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
        *lock(&self.out) = Some(out_tx);
        {
            let mut st = lock(&self.state);
            st.connected = true;
            // Cleared on reconnect (as Go); a resumed proxy says it again.
            st.shutdown = false;
            st.backend_down = false;
            st.load = 0;
            st.since = Some(SystemTime::now());
            st.generation += 1;
        }
        tracing::info!(proxy = %self.url, resumed, "logged in to proxy");
        self.emit(ConnEvent::Up { resumed });
        let mut ping = tokio::time::interval(PING);
        ping.tick().await;
        let _ = sink.send(Message::Ping(Default::default())).await;
        let mut last = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = sink.close().await;
                    break;
                }
                m = out_rx.recv() => {
                    let Some(m) = m else { break };
                    if sink.send(Message::Text(m.into())).await.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(last + READ_TIMEOUT) => {
                    tracing::warn!(proxy = %self.url, "nothing from the proxy for {READ_TIMEOUT:?}");
                    break;
                }
                m = stream.next() => {
                    last = tokio::time::Instant::now();
                    match m {
                        Some(Ok(Message::Text(text))) => {
                            if !self.dispatch(&text) {
                                break;
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => break,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tracing::warn!(proxy = %self.url, "proxy connection error: {e}");
                            break;
                        }
                    }
                }
            }
        }
        *lock(&self.out) = None;
        lock(&self.state).connected = false;
        let failed: Vec<_> = lock(&self.pending).drain().collect();
        drop(failed);
        self.emit(ConnEvent::Down);
    }

    /// One message of the proxy; false when the connection must end.
    fn dispatch(&self, text: &str) -> bool {
        let msg = match serde_json::from_str::<ProxyServerMessage>(text) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(proxy = %self.url, "unparsable message from proxy: {e}");
                return true;
            }
        };
        if let Some(id) = msg.id.as_deref() {
            if let Some(tx) = lock(&self.pending).remove(id) {
                let _ = tx.send(msg);
                return true;
            }
        }
        match msg.kind {
            ProxyServerKind::Event => {
                if let Some(ev) = msg.event {
                    self.on_event(ev);
                }
            }
            ProxyServerKind::Payload => {
                if let Some(p) = msg.payload {
                    self.emit(ConnEvent::Payload(p));
                }
            }
            ProxyServerKind::Bye => {
                let reason = msg.bye.map(|b| b.reason).unwrap_or_default();
                tracing::info!(proxy = %self.url, reason, "proxy said bye");
                if reason == crate::api::proxy::BYE_SESSION_RESUMED {
                    // The session lives on another connection: not ours.
                    lock(&self.state).session.clear();
                }
                return false;
            }
            ProxyServerKind::Error => {
                let e = msg.error.map(|e| e.code).unwrap_or_default();
                tracing::warn!(proxy = %self.url, code = e, "error from proxy without request");
            }
            other => {
                tracing::debug!(proxy = %self.url, kind = other.as_str(), "unexpected message from proxy")
            }
        }
        true
    }

    fn on_event(&self, ev: ProxyEvent) {
        {
            let mut st = lock(&self.state);
            match ev.kind {
                EventKind::UpdateLoad => st.load = ev.load,
                EventKind::ShutdownScheduled => st.shutdown = true,
                EventKind::BackendDisconnected => st.backend_down = true,
                EventKind::BackendConnected => st.backend_down = false,
                _ => {}
            }
        }
        match ev.kind {
            EventKind::ShutdownScheduled => {
                tracing::info!(proxy = %self.url, "proxy scheduled its shutdown: no new publishers there")
            }
            EventKind::BackendDisconnected => {
                tracing::warn!(proxy = %self.url, "proxy lost its media server: no new publishers there until it is back")
            }
            EventKind::BackendConnected => {
                tracing::info!(proxy = %self.url, "proxy's media server is back")
            }
            _ => {}
        }
        self.emit(ConnEvent::Event(ev));
    }
}

/// `check`: dials a proxy and logs in with a token as the MCU does;
/// `Ok(version)` when the proxy accepted it, else what went wrong.
pub async fn probe(dial: &str, timeout: Duration, token: &TokenMaker) -> Result<String, String> {
    let connect = tokio_tungstenite::connect_async(dial);
    let (mut ws, _) = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| "no WebSocket handshake in time".to_string())?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let hello = ProxyHelloRequest {
        version: PROXY_VERSION.into(),
        token: token.token()?,
        ..Default::default()
    };
    let text = serde_json::to_string(&ProxyClientMessage::hello("1", hello))
        .expect("proxy messages serialize");
    ws.send(Message::Text(text.into()))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "no hello reply in time".to_string())?;
        let text = match next {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None => return Err("closed without reply".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
        };
        let reply = serde_json::from_str::<ProxyServerMessage>(&text).map_err(|_| {
            "answered the hello with something that is not the proxy protocol".to_string()
        })?;
        if reply.id.as_deref() != Some("1") {
            continue;
        }
        let _ = ws.close(None).await;
        return match (reply.hello, reply.error) {
            (Some(h), _) => Ok(h.server.map(|s| s.version).unwrap_or_default()),
            (_, Some(e)) => Err(format!(
                "refused our hello with [mcu] token_id `{}`: {} ({})",
                token.id, e.code, e.message
            )),
            _ => Err("unexpected hello reply".into()),
        };
    }
}
