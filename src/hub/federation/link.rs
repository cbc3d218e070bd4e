//! The task of one federated session: owns the WebSocket to the remote
//! signaling server, joins there, pumps messages both ways, and reconnects
//! with backoff (resuming its session there) when the link breaks. Every
//! write to B has the `[federation] timeout` deadline and races the end of
//! the session (`gone`); the task ends, closing its socket, when either
//! says so.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    Back, ConnectError, FedCmd, LiveLink, SavedLink, Target, MAX_BACKOFF, MIN_BACKOFF, STABLE_LINK,
    STOP_GRACE,
};
use crate::api::remote::ServerKind;
use crate::api::server::{error_frame, Frame};
use crate::hub::Hub;

pub(super) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The task of one federated session.
pub(super) struct Link {
    pub(super) link_id: u64,
    /// Counts the task in the hub's live links until it ends (a
    /// stopped task hands it back with its channel).
    pub(super) live: LiveLink,
    /// Cancelled when the session's handle of the link goes.
    pub(super) gone: CancellationToken,
    /// The link is kept for a restart or a taker: end without a word to
    /// B (no `bye`, no leave) and without touching the session.
    pub(super) kept: Arc<AtomicBool>,
    /// What the link needs to go on elsewhere, kept up to date here.
    pub(super) share: Arc<Mutex<SavedLink>>,
    /// Where a stopped link hands back its channel.
    pub(super) back: Back,
    /// Tells the handle that the task handed back what it held (or
    /// ended), when the task ends.
    pub(super) _handed: DropGuard,
    /// Bytes of the commands waiting in the channel.
    pub(super) queued: Arc<AtomicUsize>,
    /// B confirmed the join of a room (see `FedLink::joined`).
    pub(super) joined: Arc<std::sync::atomic::AtomicBool>,
    /// `[federation] timeout`: dialing, each handshake step, each write.
    pub(super) timeout: Duration,
    pub(super) hub: Arc<Hub>,
    /// The client's session id here (L).
    pub(super) sid: Arc<str>,
    pub(super) target: Target,
    pub(super) features: Vec<String>,
    pub(super) local_room: String,
    pub(super) nc_session: String,
    /// Request id of the join or leave B has not answered yet.
    pub(super) pending: Option<String>,
    /// The session id B gave us (R) and its resume id.
    pub(super) remote_sid: Option<String>,
    pub(super) resume_id: Option<String>,
    pub(super) leaving: bool,
    /// A join was asked while B was unreachable: sent after a resume.
    pub(super) rejoin: bool,
    pub(super) local_cloud: String,
    pub(super) remote_cloud: String,
    pub(super) local_base: String,
    pub(super) remote_base: String,
    /// Client messages (rewritten for B, with their size) while the link
    /// is down, and their bytes.
    pub(super) queue: Vec<(Value, usize)>,
    pub(super) queue_bytes: usize,
    /// Only resumes B's session to say `bye` (a session handed over that
    /// no process took).
    pub(super) farewell: bool,
}

/// Why a write to B did not happen.
pub(super) enum WriteError {
    /// It failed or missed its deadline: the connection is broken.
    Broken,
    /// The session ended meanwhile.
    Gone,
}

impl Link {
    /// Runs the link until the session ends or leaves; `fresh`: a new
    /// link, else one kept across a restart that resumes B's session,
    /// with the requests the stopped link had not taken (`carried`).
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::Receiver<FedCmd>,
        fresh: bool,
        carried: Vec<FedCmd>,
    ) {
        let mut first = fresh;
        let mut backoff = MIN_BACKOFF;
        let gone = self.gone.clone();
        if !fresh {
            self.event_plain("federation_interrupted");
        }
        // As if they came while B was unreachable (in order, after the
        // messages the stopped link held).
        for cmd in carried {
            self.offline(cmd);
        }
        while !self.leaving {
            let had_session = self.remote_sid.is_some();
            // Commands wait in their (bounded) channel while dialing.
            let connected = tokio::select! {
                r = self.connect() => r,
                _ = gone.cancelled() => break,
            };
            let (mut ws, resumed) = match connected {
                Ok(ok) => ok,
                Err(e) => {
                    if let ConnectError::Network(why) = &e {
                        tracing::info!(session = %self.sid, why, "federation link failed");
                    }
                    if first || matches!(e, ConnectError::Hello(_)) {
                        let id = self.pending.take();
                        self.hub.federation_deliver(
                            &self.sid,
                            error_frame(id.as_deref(), &e.to_protocol()),
                        );
                        break;
                    }
                    if !self.back_off(&mut backoff, &mut rx).await {
                        break;
                    }
                    continue;
                }
            };
            self.share_state();
            let up_since = Instant::now();
            let was_first = std::mem::replace(&mut first, false);
            let pumped = match self.restore(&mut ws, was_first, resumed, had_session).await {
                Ok(()) => self.pump(&mut ws, &mut rx).await,
                Err(WriteError::Gone) => Pump::Gone,
                Err(WriteError::Broken) => Pump::Broken,
            };
            match pumped {
                Pump::Closed => {
                    if self.is_kept() {
                        self.close_reading(&mut ws).await;
                    } else {
                        self.say_bye(&mut ws).await;
                    }
                    break;
                }
                Pump::Gone => break,
                Pump::Broken => {
                    drop(ws);
                    if self.leaving || self.is_kept() {
                        break;
                    }
                    self.event_plain("federation_interrupted");
                    // Only a link that stayed up a while dials again at once.
                    if up_since.elapsed() >= STABLE_LINK {
                        backoff = MIN_BACKOFF;
                    }
                    if !self.back_off(&mut backoff, &mut rx).await {
                        break;
                    }
                }
            }
        }
        if self.is_kept() {
            // The session goes on with a new link (next start, taker).
            self.hand_back(rx);
            return;
        }
        self.refuse_pending(&mut rx);
        self.hub.federation_ended(&self.sid, self.link_id);
    }

    fn is_kept(&self) -> bool {
        self.kept.load(Ordering::Acquire)
    }

    /// Updates what a restart or a taker would take of this link.
    pub(super) fn share_state(&self) {
        let mut s = self.share.lock().unwrap_or_else(|p| p.into_inner());
        s.remote_room.clone_from(&self.target.remote_room);
        s.local_room.clone_from(&self.local_room);
        s.nc_session.clone_from(&self.nc_session);
        s.remote_sid.clone_from(&self.remote_sid);
        s.resume_id.clone_from(&self.resume_id);
    }

    /// Waits `backoff` before dialing again (doubling it for the next
    /// time), keeping the commands that arrive meanwhile; false when the
    /// link should end (the session went or left).
    async fn back_off(&mut self, backoff: &mut Duration, rx: &mut mpsc::Receiver<FedCmd>) -> bool {
        let sleep = tokio::time::sleep(*backoff);
        tokio::pin!(sleep);
        *backoff = (*backoff * 2).min(MAX_BACKOFF);
        let gone = self.gone.clone();
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                _ = gone.cancelled() => return false,
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return false };
                    self.taken(&cmd);
                    self.offline(cmd);
                    if self.leaving {
                        return false;
                    }
                }
            }
        }
    }

    /// A command left the channel: its bytes no longer count there.
    fn taken(&self, cmd: &FedCmd) {
        self.queued.fetch_sub(cmd.bytes(), Ordering::AcqRel);
    }

    /// One write to B, within the deadline and racing the end of the
    /// session.
    /// A link stopped for a restart lets a write under way finish within
    /// [`STOP_GRACE`]: a message either reached B whole or is handed back.
    pub(super) async fn write(&self, ws: &mut Ws, m: Message) -> Result<(), WriteError> {
        let send = tokio::time::timeout(self.timeout, ws.send(m));
        tokio::pin!(send);
        let r = tokio::select! {
            biased;
            r = &mut send => r,
            _ = self.gone.cancelled() => {
                if !self.is_kept() {
                    return Err(WriteError::Gone);
                }
                match tokio::time::timeout(STOP_GRACE, &mut send).await {
                    Ok(r) => r,
                    Err(_) => return Err(WriteError::Gone),
                }
            }
        };
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(WriteError::Broken),
        }
    }

    async fn write_json(&self, ws: &mut Ws, v: &Value) -> Result<(), WriteError> {
        self.write(ws, Message::Text(v.to_string().into())).await
    }

    /// What a new connection to B needs first: the join on the first
    /// connection, the messages queued meanwhile after a resume, a new
    /// join (without an id) when B gave a new session. An error when the
    /// connection broke (or the session ended) while sending.
    async fn restore(
        &mut self,
        ws: &mut Ws,
        first: bool,
        resumed: bool,
        had_session: bool,
    ) -> Result<(), WriteError> {
        if first {
            let id = self.pending.clone();
            // On failure, sent (with its id) on the next connection.
            self.rejoin = true;
            self.send_join(ws, id).await?;
            self.rejoin = false;
            return Ok(());
        }
        if resumed {
            self.event("federation_resumed", json!(true));
            if self.rejoin {
                let id = self.pending.clone();
                self.send_join(ws, id).await?;
                self.rejoin = false;
            }
            while !self.queue.is_empty() {
                // Kept, in order, for the next connection until sent.
                self.write_json(ws, &self.queue[0].0).await?;
                let (_, bytes) = self.queue.remove(0);
                self.queue_bytes -= bytes;
            }
        } else if had_session {
            self.queue.clear();
            self.queue_bytes = 0;
            self.event("federation_resumed", json!(false));
            // A join or leave asked meanwhile is answered by this join
            // (sent again after a resume if this write fails).
            self.rejoin = true;
            let id = self.pending.clone();
            self.send_join(ws, id).await?;
            self.rejoin = false;
        }
        Ok(())
    }

    pub(super) fn event(&self, kind: &str, resumed: Value) {
        let f = Frame::from(
            json!({"type": "event", "event": {"target": "room", "type": kind, "resumed": resumed}})
                .to_string(),
        );
        self.hub.federation_deliver(&self.sid, f);
    }

    pub(super) fn event_plain(&self, kind: &str) {
        let f = Frame::from(
            json!({"type": "event", "event": {"target": "room", "type": kind}}).to_string(),
        );
        self.hub.federation_deliver(&self.sid, f);
    }

    fn join_message(&mut self, id: Option<String>) -> Value {
        self.pending = id.clone();
        let mut m = json!({"type": "room", "room": {"roomid": self.target.remote_room, "sessionid": self.nc_session}});
        if let Some(id) = id {
            m["id"] = json!(id);
        }
        m
    }

    async fn send_join(&mut self, ws: &mut Ws, id: Option<String>) -> Result<(), WriteError> {
        let m = self.join_message(id);
        self.write_json(ws, &m).await
    }

    /// Relays both ways until the session ends or leaves (Closed), the
    /// session ends while a write is stuck (Gone) or the link breaks.
    async fn pump(&mut self, ws: &mut Ws, rx: &mut mpsc::Receiver<FedCmd>) -> Pump {
        let mut ping = tokio::time::interval(Duration::from_secs(54));
        ping.tick().await;
        // The remote's frames are charged as a client's are.
        let mut budget = crate::budget::Budget::new(&self.hub.config.limits);
        let gone = self.gone.clone();
        loop {
            // Only picks what to do: no write is awaited in here.
            let step = tokio::select! {
                // The end first: a stopped link reads no more of B here.
                biased;
                _ = gone.cancelled() => return Pump::Closed,
                cmd = rx.recv() => Step::Command(cmd),
                m = tokio::time::timeout(Duration::from_secs(60), ws.next()) => Step::Read(m),
                _ = ping.tick() => Step::Ping,
            };
            let written = match step {
                Step::Command(None) => return Pump::Closed,
                Step::Command(Some(cmd)) => {
                    self.taken(&cmd);
                    let out = self.online(cmd);
                    let text = out.to_string();
                    let bytes = text.len();
                    let r = self.write(ws, Message::Text(text.into())).await;
                    if r.is_err() {
                        // Not lost: sent after a resume (or refused now).
                        self.keep(out, bytes, true);
                    }
                    r
                }
                Step::Ping => self.write(ws, Message::Ping(Default::default())).await,
                Step::Read(m) => {
                    if let Ok(Some(Ok(m))) = &m {
                        // (Delivered below even if the link stops meanwhile.)
                        tokio::select! {
                            _ = budget.pace(&self.hub.metrics, m.len()) => {}
                            _ = gone.cancelled() => {}
                        }
                    }
                    let text = match m {
                        Ok(Some(Ok(Message::Text(t)))) => t,
                        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                            return Pump::Broken
                        }
                        Ok(Some(Ok(_))) => continue,
                    };
                    match self.remote_message(text.as_str()) {
                        Some(pump) => return pump,
                        None => continue,
                    }
                }
            };
            match written {
                Ok(()) => {}
                Err(WriteError::Broken) => return Pump::Broken,
                Err(WriteError::Gone) => return Pump::Gone,
            }
        }
    }

    /// A message of B for the client; Some when the pump ends.
    pub(super) fn remote_message(&mut self, text: &str) -> Option<Pump> {
        let v = serde_json::from_str::<Value>(text).ok()?;
        let kind = ServerKind::of(&v["type"]);
        if kind == ServerKind::Bye {
            return Some(Pump::Broken);
        }
        if kind == ServerKind::Room {
            let roomid = v["room"]["roomid"].as_str().unwrap_or_default();
            self.joined.store(!roomid.is_empty(), Ordering::Release);
        }
        let close = self.leaving && kind == ServerKind::Room && v["room"]["roomid"] == "";
        if let Some(out) = self.rewrite_from_remote(v) {
            self.hub
                .federation_deliver(&self.sid, Frame::from(out.to_string()));
        }
        close.then_some(Pump::Closed)
    }

    /// The message for B of a command while connected.
    fn online(&mut self, cmd: FedCmd) -> Value {
        match cmd {
            FedCmd::Forward(v, _) => self.rewrite_to_remote(v),
            FedCmd::Leave { id } => {
                self.leaving = true;
                self.pending = id.clone();
                let mut m = json!({"type": "room", "room": {"roomid": ""}});
                if let Some(id) = id {
                    m["id"] = json!(id);
                }
                m
            }
            FedCmd::Join {
                id,
                local_room,
                remote_room,
                nc_session,
            } => {
                self.retarget(local_room, remote_room, nc_session);
                self.leaving = false;
                self.join_message(id)
            }
        }
    }

    /// The room a join asks for, here and on B, and the Nextcloud session
    /// it is pinged under (online and offline joins alike).
    pub(super) fn retarget(&mut self, local_room: String, remote_room: String, nc_session: String) {
        self.local_room = local_room;
        self.target.remote_room = remote_room;
        self.nc_session = nc_session;
        self.share_state();
    }

    /// Says goodbye to B and closes the connection, within the deadline
    /// (errors do not matter: the link ends either way).
    pub(super) async fn say_bye(&self, ws: &mut Ws) {
        let bye = json!({"type": "bye", "bye": {}}).to_string();
        let _ = tokio::time::timeout(self.timeout, async {
            ws.send(Message::Text(bye.into())).await?;
            ws.close(None).await
        })
        .await;
    }
}

/// What the pump does next.
enum Step {
    Command(Option<FedCmd>),
    Read(
        Result<
            Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
            tokio::time::error::Elapsed,
        >,
    ),
    Ping,
}

pub(super) enum Pump {
    /// The session ended or left: say bye.
    Closed,
    /// The session ended while a write was stuck: just close.
    Gone,
    Broken,
}

pub(super) fn hello_id() -> String {
    crate::hub::session::new_id().chars().take(8).collect()
}
