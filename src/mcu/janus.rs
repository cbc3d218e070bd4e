//! A client of the Janus WebSocket API (subprotocol `janus-protocol`): one
//! Janus session per server, transactions, keepalives and reconnects.
//!
//! Replies are matched on `transaction`. Asynchronous plugin requests
//! (`join`, `configure`, `start`) are answered with an `ack` and an `event`
//! in either order; the caller waits for the event. Plugin errors arrive
//! inside `event` or `success` (`plugindata.data.error_code`) and become
//! [`JanusError::Plugin`]. Messages without a known transaction that carry a
//! `sender` (handle id) go to the owner as [`GatewayEvent::Handle`].
//!
//! Across a restart of this process the Janus session outlives the
//! connection: [`Gateway::keep_session`] makes the way out close the
//! WebSocket without `destroy` (Janus keeps a session whose transport went
//! away for its `reclaim_session_timeout`), and the next process
//! [`Gateway::claim_at_connect`]s it, so its handles, and their media, go
//! on. Events of the session's handles then arrive on the new connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::info::JanusInfo;
pub use super::janus_kind::{JanusKind, VideoroomKind};
use tokio_util::sync::CancellationToken;

/// The Janus plugin every room lives in.
pub const VIDEOROOM: &str = "janus.plugin.videoroom";
/// Longest interval of session keepalives and WebSocket pings (Janus ends a
/// session after its `session-timeout`, 60 s by default, without one); a
/// shorter `session-timeout` gets keepalives at half of it.
pub const KEEPALIVE: Duration = Duration::from_secs(30);
/// First reconnect delay; doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest reconnect delay.
const MAX_RETRY: Duration = Duration::from_secs(16);

/// Why a Janus request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JanusError {
    /// There is no connection to Janus right now.
    #[error("not connected to Janus")]
    NotConnected,
    /// No answer within the MCU timeout.
    #[error("Janus did not answer in time")]
    Timeout,
    /// The connection dropped while the request was pending.
    #[error("connection to Janus lost")]
    Cancelled,
    /// `{"janus":"error"}` (e.g. 458 no such session).
    #[error("Janus error {code}: {reason}")]
    Janus {
        /// Janus error code.
        code: i64,
        /// Janus's text.
        reason: String,
    },
    /// A videoroom error (`plugindata.data.error_code`).
    #[error("videoroom error {code}: {reason}")]
    Plugin {
        /// Videoroom error code (e.g. 428 no such feed).
        code: i64,
        /// The plugin's text.
        reason: String,
    },
    /// An answer that lacks what the request must return.
    #[error("unexpected answer from Janus: {0}")]
    Protocol(String),
}

/// What the gateway tells its owner, in order.
#[derive(Debug)]
pub enum GatewayEvent {
    /// A Janus session is ready (after start-up or a reconnect).
    Connected {
        /// `Some(true)`: the session to claim was taken over (its handles
        /// live on); `Some(false)`: it could not be (Janus no longer has
        /// it), this is a new one; `None`: there was none to claim.
        claimed: Option<bool>,
    },
    /// The connection dropped: every handle of the old session is gone.
    Disconnected,
    /// A message of a handle that answers no request (`webrtcup`,
    /// `hangup`, `detached`, `trickle`, `media`, unsolicited `event`s).
    Handle {
        /// The handle (`sender`).
        handle: u64,
        /// The whole message.
        msg: Value,
    },
}

struct Pending {
    /// Wait for the `event` and ignore the `ack`.
    wait_event: bool,
    tx: oneshot::Sender<Result<Value, JanusError>>,
}

struct Conn {
    session: u64,
    /// Janus's `info` answer and when the session was created.
    info: Arc<JanusInfo>,
    out: mpsc::UnboundedSender<String>,
    /// Cancelled when Janus forgot the session (458): reconnect.
    broken: CancellationToken,
}

struct Shared {
    conn: Mutex<Option<Conn>>,
    pending: Mutex<HashMap<String, Pending>>,
    next: AtomicU64,
    /// The MCU timeout in milliseconds (reloaded on SIGHUP).
    timeout_ms: AtomicU64,
    /// Janus requests sent, by `janus` type (for metrics).
    requests: prometheus::IntCounterVec,
    /// A session of a previous process to claim at the next connect.
    claim: Mutex<Option<u64>>,
    /// The id of the last session (kept after the connection ended).
    last_session: AtomicU64,
    /// Set for a restart: the way out leaves the session to be claimed.
    keep: std::sync::atomic::AtomicBool,
    /// Handles of other Janus sessions this connection claimed (of a
    /// process that stopped, `janus_extra.rs`): handle -> session.
    extra: Mutex<HashMap<u64, u64>>,
}

/// Handle to the Janus connection; cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The videoroom part of a reply or event (`plugindata.data`).
pub fn plugin_data(v: &Value) -> &Value {
    &v["plugindata"]["data"]
}

/// Turns a reply into the request's result: Janus and plugin errors become
/// [`JanusError`]s.
fn classify(v: Value) -> Result<Value, JanusError> {
    match JanusKind::of(&v) {
        JanusKind::Error => Err(JanusError::Janus {
            code: v["error"]["code"].as_i64().unwrap_or(0),
            reason: v["error"]["reason"].as_str().unwrap_or("").to_string(),
        }),
        _ => {
            let d = plugin_data(&v);
            if let Some(code) = d.get("error_code").and_then(Value::as_i64) {
                return Err(JanusError::Plugin {
                    code,
                    reason: d["error"].as_str().unwrap_or("").to_string(),
                });
            }
            Ok(v)
        }
    }
}

impl Gateway {
    /// A gateway that is not connected yet; [`Gateway::run`] connects it.
    pub fn new(timeout: Duration, requests: prometheus::IntCounterVec) -> Gateway {
        Gateway {
            shared: Arc::new(Shared {
                conn: Mutex::new(None),
                pending: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
                timeout_ms: AtomicU64::new(timeout.as_millis() as u64),
                requests,
                claim: Mutex::new(None),
                last_session: AtomicU64::new(0),
                keep: Default::default(),
                extra: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The timeout of each request (and of connecting).
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.shared.timeout_ms.load(Ordering::Relaxed))
    }

    /// Changes the timeout of the requests from now on (SIGHUP).
    pub fn set_timeout(&self, timeout: Duration) {
        self.shared
            .timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// The first connection claims Janus session `session` (of a process
    /// before this one) instead of creating one.
    pub fn claim_at_connect(&self, session: u64) {
        *lock(&self.shared.claim) = Some(session);
    }

    /// From now on, stopping leaves the Janus session alive for the next
    /// process to claim: a last keepalive, then the WebSocket closes
    /// without `destroy`.
    pub fn keep_session(&self) {
        self.shared.keep.store(true, Ordering::Relaxed);
    }

    /// The id of the current (or, after the connection ended, the last)
    /// Janus session; 0 before the first.
    pub fn session_id(&self) -> u64 {
        self.shared.last_session.load(Ordering::Relaxed)
    }

    /// True while a Janus session is up.
    pub fn connected(&self) -> bool {
        lock(&self.shared.conn).is_some()
    }

    /// What Janus said about itself, while a Janus session is up.
    pub fn info(&self) -> Option<Arc<JanusInfo>> {
        lock(&self.shared.conn).as_ref().map(|c| c.info.clone())
    }

    /// Sends a request and waits for its answer (at most the MCU
    /// timeout): on the session `msg` names, else on its handle's session
    /// (an extra one claimed, `janus_extra.rs`), else on the current one.
    async fn request(&self, mut msg: Value, wait_event: bool) -> Result<Value, JanusError> {
        let (tx, rx) = oneshot::channel();
        let t = format!("t{}", self.shared.next.fetch_add(1, Ordering::Relaxed));
        let kind = msg["janus"].as_str().unwrap_or("").to_string();
        let main;
        let broken = {
            let conn = lock(&self.shared.conn);
            let Some(c) = conn.as_ref() else {
                return Err(JanusError::NotConnected);
            };
            msg["transaction"] = Value::String(t.clone());
            let session = msg["session_id"]
                .as_u64()
                .or_else(|| self.extra_session_of(msg["handle_id"].as_u64()?))
                .unwrap_or(c.session);
            main = session == c.session;
            msg["session_id"] = json!(session);
            lock(&self.shared.pending).insert(t.clone(), Pending { wait_event, tx });
            if c.out.send(msg.to_string()).is_err() {
                lock(&self.shared.pending).remove(&t);
                return Err(JanusError::NotConnected);
            }
            c.broken.clone()
        };
        self.shared.requests.with_label_values(&[&kind]).inc();
        match tokio::time::timeout(self.timeout(), rx).await {
            Ok(Ok(Err(JanusError::Janus { code: 458, reason }))) if main => {
                tracing::warn!("Janus lost our session ({reason}), reconnecting");
                broken.cancel();
                Err(JanusError::Janus { code: 458, reason })
            }
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(JanusError::Cancelled),
            Err(_) => {
                lock(&self.shared.pending).remove(&t);
                Err(JanusError::Timeout)
            }
        }
    }

    /// Attaches a new videoroom handle.
    pub async fn attach(&self) -> Result<u64, JanusError> {
        let v = self
            .request(json!({"janus": "attach", "plugin": VIDEOROOM}), false)
            .await?;
        v["data"]["id"]
            .as_u64()
            .ok_or_else(|| JanusError::Protocol("attach without handle id".into()))
    }

    /// Detaches a handle (Janus answers `success`).
    pub async fn detach(&self, handle: u64) -> Result<(), JanusError> {
        let r = self
            .request(json!({"janus": "detach", "handle_id": handle}), false)
            .await
            .map(|_| ());
        self.release_extra(handle).await;
        r
    }

    /// A videoroom request on a handle. `wait_event` for the asynchronous
    /// ones (`join`, `configure`, `start`), which answer with an `event`.
    pub async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
        wait_event: bool,
    ) -> Result<Value, JanusError> {
        let mut msg = json!({"janus": "message", "handle_id": handle, "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        self.request(msg, wait_event).await
    }

    /// Trickles one candidate object (or `{"completed": true}`).
    pub async fn trickle(&self, handle: u64, candidate: Value) -> Result<(), JanusError> {
        self.request(
            json!({"janus": "trickle", "handle_id": handle, "candidate": candidate}),
            false,
        )
        .await
        .map(|_| ())
    }

    /// Routes one message from Janus: the answer to a pending transaction,
    /// or an event of a handle.
    fn dispatch(&self, v: Value, events: &mpsc::UnboundedSender<GatewayEvent>) {
        let kind = JanusKind::of(&v);
        if let Some(t) = v.get("transaction").and_then(Value::as_str) {
            let mut pending = lock(&self.shared.pending);
            if let Some(p) = pending.get(t) {
                if kind == JanusKind::Ack && p.wait_event {
                    return;
                }
                if let Some(p) = pending.remove(t) {
                    drop(pending);
                    let _ = p.tx.send(classify(v));
                }
                return;
            }
            drop(pending);
            if kind == JanusKind::Ack {
                // The ack of a request whose event came first.
                return;
            }
        }
        match v.get("sender").and_then(Value::as_u64) {
            Some(handle) => {
                let _ = events.send(GatewayEvent::Handle { handle, msg: v });
            }
            None => tracing::debug!(janus = ?kind, "Janus message without sender or transaction"),
        }
    }

    /// Fails every pending request (the connection dropped).
    fn fail_pending(&self) {
        let all: Vec<Pending> = lock(&self.shared.pending).drain().map(|(_, p)| p).collect();
        for p in all {
            let _ = p.tx.send(Err(JanusError::Cancelled));
        }
    }

    /// Keeps a Janus session up until `cancel`: connects, creates the
    /// session, reconnects with backoff (1 s doubling to 16 s) when the
    /// connection drops or Janus forgets the session. Events go to `events`.
    pub async fn run(
        self,
        url: String,
        events: mpsc::UnboundedSender<GatewayEvent>,
        cancel: CancellationToken,
    ) {
        let mut delay = FIRST_RETRY;
        loop {
            match self.connect(&url).await {
                Ok((ws, session, info, claimed)) => {
                    delay = FIRST_RETRY;
                    tracing::info!(session, "connected to Janus");
                    self.serve(ws, session, info, claimed, &events, &cancel)
                        .await;
                    *lock(&self.shared.conn) = None;
                    lock(&self.shared.extra).clear();
                    self.fail_pending();
                    if cancel.is_cancelled() {
                        // Stopping: what the MCU serves stays as it is (a
                        // restart writes it to the state file).
                        return;
                    }
                    let _ = events.send(GatewayEvent::Disconnected);
                    tracing::warn!("connection to Janus interrupted, reconnecting in {delay:?}");
                }
                Err(e) => {
                    tracing::warn!("cannot connect to Janus ({e}), retrying in {delay:?}");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RETRY);
        }
    }

    /// Opens the WebSocket, checks `info` and claims the session to claim
    /// (see [`Gateway::claim_at_connect`]) or creates one.
    async fn connect(&self, url: &str) -> Result<(Ws, u64, JanusInfo, Option<bool>), String> {
        let mut req = url
            .into_client_request()
            .map_err(|e| format!("bad URL: {e}"))?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("janus-protocol"),
        );
        let dial = tokio_tungstenite::connect_async(req);
        let (mut ws, _) = tokio::time::timeout(self.timeout(), dial)
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| e.to_string())?;
        let info = self
            .exchange(&mut ws, json!({"janus": "info", "transaction": "info"}))
            .await?;
        if info["plugins"].get(VIDEOROOM).is_none() {
            return Err("Janus has no videoroom plugin".into());
        }
        if info["data_channels"] != Value::Bool(true) {
            tracing::warn!("Janus was built without data channels");
        }
        if info["full-trickle"] != Value::Bool(true) {
            tracing::info!("Janus runs without full-trickle");
        }
        tracing::info!(
            version = info["version_string"].as_str().unwrap_or("?"),
            "Janus gateway info"
        );
        let info = JanusInfo::new(info, std::time::SystemTime::now());
        let to_claim = lock(&self.shared.claim).take();
        if let Some(id) = to_claim {
            let claim = json!({"janus": "claim", "session_id": id, "transaction": "claim"});
            match self.exchange(&mut ws, claim).await {
                Ok(_) => {
                    tracing::info!(session = id, "claimed the Janus session of the process before");
                    return Ok((ws, id, info, Some(true)));
                }
                Err(e) => tracing::warn!(
                    session = id,
                    "cannot claim the Janus session of the process before ({e}): its publishers and subscribers are gone, their clients renegotiate"
                ),
            }
        }
        let created = match self
            .exchange(&mut ws, json!({"janus": "create", "transaction": "create"}))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // The connection failed, not (only) the claim: the next
                // connection claims again.
                if let Some(id) = to_claim {
                    *lock(&self.shared.claim) = Some(id);
                }
                return Err(e);
            }
        };
        let session = created["data"]["id"]
            .as_u64()
            .ok_or("create without session id")?;
        Ok((ws, session, info, to_claim.map(|_| false)))
    }

    /// One request/reply before the session exists (nothing else is in
    /// flight on a new connection).
    async fn exchange(&self, ws: &mut Ws, msg: Value) -> Result<Value, String> {
        let t = msg["transaction"].clone();
        ws.send(Message::Text(msg.to_string().into()))
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + self.timeout();
        loop {
            let next = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| "timeout".to_string())?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                    if v["transaction"] == t {
                        return classify(v).map_err(|e| e.to_string());
                    }
                }
                Some(Ok(Message::Close(_))) | None => return Err("closed".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
            }
        }
    }

    /// Runs a connected session until it breaks or `cancel`.
    async fn serve(
        &self,
        ws: Ws,
        session: u64,
        info: JanusInfo,
        claimed: Option<bool>,
        events: &mpsc::UnboundedSender<GatewayEvent>,
        cancel: &CancellationToken,
    ) {
        let keepalive = keepalive_for(info.raw());
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<String>();
        // Keepalives wait for their answer through this loop, so they run
        // beside it; a lost session (458) or a dead Janus breaks it.
        let broken = CancellationToken::new();
        *lock(&self.shared.conn) = Some(Conn {
            session,
            info: Arc::new(info),
            out: out_tx,
            broken: broken.clone(),
        });
        self.shared.last_session.store(session, Ordering::Relaxed);
        let _ = events.send(GatewayEvent::Connected { claimed });
        let keepalive_task = {
            let gw = self.clone();
            let broken = broken.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = broken.cancelled() => return,
                        _ = tokio::time::sleep(keepalive) => {}
                    }
                    gw.keep_extra_alive().await;
                    match gw.request(json!({"janus": "keepalive"}), false).await {
                        Ok(_) => {}
                        Err(JanusError::Cancelled) | Err(JanusError::NotConnected) => return,
                        Err(e) => {
                            tracing::warn!("Janus keepalive failed: {e}");
                            broken.cancel();
                            return;
                        }
                    }
                }
            })
        };
        let mut ping = tokio::time::interval(keepalive);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    // Kept: a keepalive restarts Janus's clock of the
                    // session (`reclaim_session_timeout` counts from the
                    // last request), then the transport goes away.
                    let last = match self.shared.keep.load(Ordering::Relaxed) {
                        true => json!({"janus": "keepalive", "session_id": session, "transaction": "bye"}),
                        false => json!({"janus": "destroy", "session_id": session, "transaction": "bye"}),
                    };
                    let _ = sink.send(Message::Text(last.to_string().into())).await;
                    for m in self.last_for_extra() {
                        let _ = sink.send(Message::Text(m.into())).await;
                    }
                    let _ = sink.close().await;
                    break;
                }
                _ = broken.cancelled() => break,
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
                m = stream.next() => match m {
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<Value>(&text) {
                        Ok(v) => self.dispatch(v, events),
                        Err(e) => tracing::warn!("unparsable message from Janus: {e}"),
                    },
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!("Janus connection error: {e}");
                        break;
                    }
                },
            }
        }
        broken.cancel();
        keepalive_task.abort();
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How often to keep the Janus session alive: half of its session timeout
/// (seconds, from `info`), at most [`KEEPALIVE`], whatever Janus says.
fn keepalive_for(info: &Value) -> Duration {
    match info["session-timeout"].as_u64() {
        Some(t) if t > 0 => KEEPALIVE.min(Duration::from_millis(t.saturating_mul(500))),
        _ => KEEPALIVE,
    }
}

#[path = "janus_extra.rs"]
mod extra;

#[cfg(test)]
#[path = "janus_tests.rs"]
mod tests;
