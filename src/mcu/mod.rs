//! Media through Janus (the MCU, "high-performance backend"): publishers
//! and subscribers of the sessions of this process, each on its own Janus
//! handle, one videoroom room per published stream.
//!
//! The hub calls the async API here outside its lock; what the hub must
//! not await (a session ending, permissions changing) arrives as a
//! [`Command`]. What Janus says on its own (candidates, renegotiation
//! offers) goes back to the hub as [`Signal`]s.

pub mod janus;
pub mod sdp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::mcu::McuConfig;
use crate::metrics::McuMetrics;
use janus::{plugin_data, Gateway, GatewayEvent, JanusError};

/// The stream a publisher sends: the camera/microphone or the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// `roomType: video` (also audio-only).
    Video,
    /// `roomType: screen`.
    Screen,
}

impl StreamType {
    /// From a message's `roomType` (empty means `video`); `audio` and
    /// anything else has no publisher.
    pub fn parse(room_type: &str) -> Option<StreamType> {
        match room_type {
            "" | "video" => Some(StreamType::Video),
            "screen" => Some(StreamType::Screen),
            _ => None,
        }
    }

    /// The `roomType` of replies and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Video => "video",
            StreamType::Screen => "screen",
        }
    }

    /// The videoroom participant id of the publisher (as Go uses).
    fn feed(self) -> u64 {
        match self {
            StreamType::Video => 1,
            StreamType::Screen => 2,
        }
    }
}

/// Why an MCU request failed, as the client hears it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum McuError {
    /// `client_not_found`: no publisher or subscriber, or none could be made.
    #[error("no MCU client: {0}")]
    NotFound(String),
    /// `processing_failed`: Janus refused or failed.
    #[error("MCU request failed: {0}")]
    Failed(String),
}

impl From<JanusError> for McuError {
    fn from(e: JanusError) -> Self {
        McuError::Failed(e.to_string())
    }
}

/// What a client's `offer` asks for.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// The offer's `sid`.
    pub sid: String,
    /// The SDP (candidates are filtered here).
    pub sdp: String,
    /// `bitrate` (bits/s), capped by the config; 0 = the cap.
    pub bitrate: u64,
    /// `audiocodec`, `videocodec`, `vp9profile`, `h264profile`.
    pub codecs: [Option<String>; 4],
    /// Media of the SDP (for permission revocation).
    pub media: sdp::Media,
}

/// Something Janus sent on its own that a client must hear.
#[derive(Debug)]
pub struct Signal {
    /// The session to tell.
    pub to: Arc<str>,
    /// `from`: the publisher.
    pub from: Arc<str>,
    /// `offer` or `candidate`.
    pub kind: &'static str,
    /// The stream.
    pub stream: StreamType,
    /// The payload (jsep or `{"candidate": ...}`).
    pub payload: Value,
    /// The publisher's or subscriber's sid.
    pub sid: String,
}

/// Work for the MCU that the hub hands over without waiting.
#[derive(Debug)]
pub enum Command {
    /// The session left the call or room or ended: close all it has.
    CloseSession(Arc<str>),
    /// New permissions of a session: close publishers they no longer allow.
    Permissions(Arc<str>, Vec<String>),
    /// `unshareScreen`: close the screen publisher after a second.
    UnshareScreen(Arc<str>),
}

/// A published stream.
pub struct Publisher {
    session: Arc<str>,
    stream: StreamType,
    handle: u64,
    room: u64,
    sid: String,
    media: Mutex<sdp::Media>,
    /// True once Janus said `webrtcup` (subscribers may join).
    up: watch::Sender<bool>,
}

/// Subscriber key: (subscriber session, publisher session, stream).
type SubKey = (Arc<str>, Arc<str>, StreamType);

/// A session receiving a publisher's stream.
struct Subscriber {
    key: SubKey,
    handle: u64,
}

impl Subscriber {
    fn sid(&self) -> String {
        self.handle.to_string()
    }
}

enum Owner {
    Publisher(Arc<Publisher>),
    Subscriber(Arc<Subscriber>),
}

#[derive(Default)]
struct Registry {
    publishers: HashMap<(Arc<str>, StreamType), Arc<Publisher>>,
    subscribers: HashMap<SubKey, Arc<Subscriber>>,
    handles: HashMap<u64, Owner>,
}

/// The MCU of this process.
pub struct Mcu {
    gw: Gateway,
    cfg: McuConfig,
    metrics: McuMetrics,
    reg: Mutex<Registry>,
    /// Woken whenever a publisher appears (waiting subscribers look again).
    published: Notify,
    signals: mpsc::UnboundedSender<Signal>,
    commands: mpsc::UnboundedSender<Command>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long `unshareScreen` waits before closing the screen publisher.
const UNSHARE_DELAY: Duration = Duration::from_secs(1);

impl Mcu {
    /// Starts the Janus connection (in the background, reconnecting) and
    /// the MCU's event task. Signals for clients come out of the receiver.
    pub fn start(
        cfg: McuConfig,
        metrics: McuMetrics,
        cancel: CancellationToken,
    ) -> (Arc<Mcu>, mpsc::UnboundedReceiver<Signal>) {
        let gw = Gateway::new(cfg.timeout, metrics.janus_requests_total.clone());
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let (commands, mut command_rx) = mpsc::unbounded_channel();
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let mcu = Arc::new(Mcu {
            gw: gw.clone(),
            cfg: cfg.clone(),
            metrics,
            reg: Mutex::new(Registry::default()),
            published: Notify::new(),
            signals,
            commands,
        });
        tokio::spawn(gw.run(cfg.url.clone(), ev_tx, cancel.clone()));
        let m = mcu.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = ev_rx.recv() => match ev {
                        Some(ev) => m.on_gateway_event(ev),
                        None => return,
                    },
                    cmd = command_rx.recv() => match cmd {
                        Some(cmd) => m.on_command(cmd),
                        None => return,
                    },
                }
            }
        });
        (mcu, signal_rx)
    }

    /// True while Janus is connected.
    pub fn connected(&self) -> bool {
        self.gw.connected()
    }

    /// The `[mcu]` settings.
    pub fn config(&self) -> &McuConfig {
        &self.cfg
    }

    /// Hands work to the MCU without waiting (callable under any lock).
    pub fn command(&self, cmd: Command) {
        let _ = self.commands.send(cmd);
    }

    /// Counts a client MCU message (`signaling_mcu_messages_total`).
    pub fn count_message(&self, kind: &str) {
        self.metrics.messages_total.with_label_values(&[kind]).inc();
    }

    /// True when the session publishes `stream` (for tests and the hub).
    pub fn has_publisher(&self, session: &str, stream: StreamType) -> bool {
        lock(&self.reg)
            .publishers
            .contains_key(&(Arc::from(session), stream))
    }

    fn publisher(&self, session: &Arc<str>, stream: StreamType) -> Option<Arc<Publisher>> {
        lock(&self.reg)
            .publishers
            .get(&(session.clone(), stream))
            .cloned()
    }

    fn subscriber(&self, key: &SubKey) -> Option<Arc<Subscriber>> {
        lock(&self.reg).subscribers.get(key).cloned()
    }

    /// Publishes (or re-negotiates) a session's stream; returns the
    /// publisher's sid and Janus's answer jsep.
    pub async fn publish(
        &self,
        session: &Arc<str>,
        stream: StreamType,
        offer: Offer,
    ) -> Result<(String, Value), McuError> {
        let publisher = match self.publisher(session, stream) {
            Some(p) => p,
            None => self
                .create_publisher(session, stream, &offer)
                .await
                .map_err(|e| McuError::NotFound(e.to_string()))?,
        };
        let jsep = json!({
            "type": "offer",
            "sdp": sdp::filter(&offer.sdp, &self.cfg.allowed_candidates, &self.cfg.blocked_candidates),
        });
        let r = self
            .gw
            .message(
                publisher.handle,
                json!({"request": "configure", "audio": true, "video": true, "data": true}),
                Some(jsep),
                true,
            )
            .await?;
        let answer = r
            .get("jsep")
            .filter(|j| j["type"] == "answer")
            .cloned()
            .ok_or_else(|| McuError::Failed("configure brought no answer".into()))?;
        *lock(&publisher.media) = offer.media;
        Ok((publisher.sid.clone(), answer))
    }

    async fn create_publisher(
        &self,
        session: &Arc<str>,
        stream: StreamType,
        offer: &Offer,
    ) -> Result<Arc<Publisher>, JanusError> {
        let handle = self.gw.attach().await?;
        let cap = match stream {
            StreamType::Video => self.cfg.max_stream_bitrate,
            StreamType::Screen => self.cfg.max_screen_bitrate,
        };
        let bitrate = if offer.bitrate == 0 {
            cap
        } else {
            offer.bitrate.min(cap)
        };
        let mut body = json!({
            "request": "create",
            "description": format!("{session}|{}", stream.as_str()),
            "publishers": 1,
            "videoorient_ext": false,
            "bitrate": bitrate,
        });
        for (key, value) in ["audiocodec", "videocodec", "vp9_profile", "h264_profile"]
            .iter()
            .zip(&offer.codecs)
        {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                body[*key] = json!(v);
            }
        }
        let room = match self.gw.message(handle, body, None, false).await {
            Ok(r) => match plugin_data(&r)["room"].as_u64() {
                Some(room) => room,
                None => {
                    let _ = self.gw.detach(handle).await;
                    return Err(JanusError::Protocol("create without room".into()));
                }
            },
            Err(e) => {
                let _ = self.gw.detach(handle).await;
                return Err(e);
            }
        };
        let join =
            json!({"request": "join", "ptype": "publisher", "room": room, "id": stream.feed()});
        if let Err(e) = self.gw.message(handle, join, None, true).await {
            self.destroy_room(handle, room).await;
            return Err(e);
        }
        let publisher = Arc::new(Publisher {
            session: session.clone(),
            stream,
            handle,
            room,
            sid: offer.sid.clone(),
            media: Mutex::new(offer.media),
            up: watch::Sender::new(false),
        });
        let replaced = {
            let mut reg = lock(&self.reg);
            reg.handles
                .insert(handle, Owner::Publisher(publisher.clone()));
            reg.publishers
                .insert((session.clone(), stream), publisher.clone())
        };
        let label = [stream.as_str()];
        self.metrics.publishers.with_label_values(&label).inc();
        self.metrics
            .publishers_total
            .with_label_values(&label)
            .inc();
        tracing::debug!(session = %session, stream = stream.as_str(), room, handle, "publisher created");
        if let Some(old) = replaced {
            self.close_publisher(old).await;
        }
        self.published.notify_waiters();
        Ok(publisher)
    }

    /// Destroys a publisher's room and detaches its handle.
    async fn destroy_room(&self, handle: u64, room: u64) {
        if let Err(e) = self
            .gw
            .message(
                handle,
                json!({"request": "destroy", "room": room}),
                None,
                false,
            )
            .await
        {
            tracing::debug!(room, "could not destroy room: {e}");
        }
        if let Err(e) = self.gw.detach(handle).await {
            tracing::debug!(handle, "could not detach: {e}");
        }
    }

    /// Forgets a publisher (and the subscribers of its stream on this
    /// process) and removes its room from Janus.
    async fn close_publisher(&self, p: Arc<Publisher>) {
        let subs = self.forget_publisher(&p);
        self.destroy_room(p.handle, p.room).await;
        for s in subs {
            let _ = self.gw.detach(s.handle).await;
        }
    }

    /// Drops a publisher and its subscribers from the registry; returns the
    /// subscribers whose handles must go.
    fn forget_publisher(&self, p: &Arc<Publisher>) -> Vec<Arc<Subscriber>> {
        let mut reg = lock(&self.reg);
        let key = (p.session.clone(), p.stream);
        if reg.publishers.get(&key).is_some_and(|x| Arc::ptr_eq(x, p)) {
            reg.publishers.remove(&key);
        }
        if reg.handles.remove(&p.handle).is_none() {
            return Vec::new();
        }
        self.metrics
            .publishers
            .with_label_values(&[p.stream.as_str()])
            .dec();
        let keys: Vec<SubKey> = reg
            .subscribers
            .keys()
            .filter(|k| k.1 == p.session && k.2 == p.stream)
            .cloned()
            .collect();
        let mut subs = Vec::new();
        for k in keys {
            if let Some(s) = reg.subscribers.remove(&k) {
                reg.handles.remove(&s.handle);
                self.metrics
                    .subscribers
                    .with_label_values(&[s.key.2.as_str()])
                    .dec();
                subs.push(s);
            }
        }
        subs
    }

    fn forget_subscriber(&self, s: &Arc<Subscriber>) -> bool {
        let mut reg = lock(&self.reg);
        if reg
            .subscribers
            .get(&s.key)
            .is_some_and(|x| Arc::ptr_eq(x, s))
        {
            reg.subscribers.remove(&s.key);
        }
        if reg.handles.remove(&s.handle).is_none() {
            return false;
        }
        self.metrics
            .subscribers
            .with_label_values(&[s.key.2.as_str()])
            .dec();
        true
    }

    async fn close_subscriber(&self, s: Arc<Subscriber>) {
        if self.forget_subscriber(&s) {
            let _ = self.gw.detach(s.handle).await;
        }
    }

    /// A candidate of a publisher (`sid` empty or the publisher's);
    /// `client_not_found` without publisher.
    pub async fn publisher_candidate(
        &self,
        session: &Arc<str>,
        stream: StreamType,
        sid: &str,
        candidate: Option<Value>,
    ) -> Result<(), McuError> {
        let p = self
            .publisher(session, stream)
            .ok_or_else(|| McuError::NotFound("no publisher".into()))?;
        if !sid.is_empty() && sid != p.sid {
            return Err(McuError::Failed(format!(
                "sid {sid} is not the publisher's"
            )));
        }
        match candidate {
            Some(c) => Ok(self.gw.trickle(p.handle, c).await?),
            None => Ok(()),
        }
    }

    /// Waits (until `deadline`) for a publisher of `publisher`'s `stream`.
    async fn wait_publisher(
        &self,
        publisher: &Arc<str>,
        stream: StreamType,
        deadline: Instant,
    ) -> Option<Arc<Publisher>> {
        let mut counted = false;
        loop {
            let notified = self.published.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(p) = self.publisher(publisher, stream) {
                return Some(p);
            }
            if !counted {
                counted = true;
                self.metrics
                    .nopublisher_total
                    .with_label_values(&[stream.as_str()])
                    .inc();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// `requestoffer`/`sendoffer`: subscribes `subscriber` to a publisher's
    /// stream, or renegotiates when `sid` is the current subscriber's.
    /// Returns the subscriber's sid and Janus's offer jsep.
    pub async fn subscribe(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        selection: &Value,
    ) -> Result<(String, Value), McuError> {
        let key: SubKey = (subscriber.clone(), publisher.clone(), stream);
        if let Some(s) = self.subscriber(&key) {
            if !sid.is_empty() && sid == s.sid() {
                let mut body = json!({"request": "configure", "update": true});
                add_selection(&mut body, selection);
                let r = self.gw.message(s.handle, body, None, true).await?;
                let offer = r
                    .get("jsep")
                    .cloned()
                    .ok_or_else(|| McuError::Failed("update brought no offer".into()))?;
                return Ok((s.sid(), offer));
            }
            self.close_subscriber(s).await;
        }
        let deadline = Instant::now() + self.cfg.timeout;
        let p = self
            .wait_publisher(publisher, stream, deadline)
            .await
            .ok_or_else(|| McuError::NotFound("publisher did not appear in time".into()))?;
        let mut handle = self
            .gw
            .attach()
            .await
            .map_err(|e| McuError::NotFound(e.to_string()))?;
        let mut up = p.up.subscribe();
        loop {
            let mut body = json!({
                "request": "join", "ptype": "subscriber", "room": p.room,
                "streams": [{"feed": stream.feed()}],
            });
            add_selection(&mut body, selection);
            match self.gw.message(handle, body, None, true).await {
                Ok(r) => {
                    let Some(offer) = r.get("jsep").cloned() else {
                        let _ = self.gw.detach(handle).await;
                        return Err(McuError::Failed("join brought no offer".into()));
                    };
                    let s = Arc::new(Subscriber {
                        key: key.clone(),
                        handle,
                    });
                    let (old, publisher_gone) = {
                        let mut reg = lock(&self.reg);
                        let gone = !reg
                            .publishers
                            .get(&(publisher.clone(), stream))
                            .is_some_and(|x| Arc::ptr_eq(x, &p));
                        if gone {
                            (None, true)
                        } else {
                            reg.handles.insert(handle, Owner::Subscriber(s.clone()));
                            (reg.subscribers.insert(key.clone(), s.clone()), false)
                        }
                    };
                    if publisher_gone {
                        let _ = self.gw.detach(handle).await;
                        return Err(McuError::NotFound("publisher closed".into()));
                    }
                    let label = [stream.as_str()];
                    self.metrics.subscribers.with_label_values(&label).inc();
                    self.metrics
                        .subscribers_total
                        .with_label_values(&label)
                        .inc();
                    if let Some(old) = old {
                        self.close_subscriber(old).await;
                    }
                    return Ok((s.sid(), offer));
                }
                Err(JanusError::Plugin { code: 428, .. }) => {
                    // The publisher's PeerConnection is not up yet: wait
                    // for its `webrtcup` (or a moment when it already was).
                    let is_up = *up.borrow();
                    let waited = if is_up {
                        let until = deadline.min(Instant::now() + Duration::from_millis(200));
                        tokio::time::sleep_until(until).await;
                        Instant::now() < deadline
                    } else {
                        matches!(
                            tokio::time::timeout_at(deadline, up.wait_for(|u| *u)).await,
                            Ok(Ok(_))
                        )
                    };
                    if !waited {
                        let _ = self.gw.detach(handle).await;
                        return Err(McuError::Failed("publisher is not sending".into()));
                    }
                }
                Err(JanusError::Plugin { code: 425, .. }) => {
                    let _ = self.gw.detach(handle).await;
                    handle = self.gw.attach().await?;
                }
                Err(e) => {
                    let _ = self.gw.detach(handle).await;
                    return Err(e.into());
                }
            }
        }
    }

    fn subscriber_checked(&self, key: &SubKey, sid: &str) -> Result<Arc<Subscriber>, McuError> {
        let s = self
            .subscriber(key)
            .ok_or_else(|| McuError::NotFound("no subscriber".into()))?;
        if !sid.is_empty() && sid != s.sid() {
            return Err(McuError::Failed(format!(
                "sid {sid} is not the subscriber's"
            )));
        }
        Ok(s)
    }

    /// A subscriber's `answer`: Janus `start`.
    pub async fn subscriber_answer(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        sdp_text: &str,
    ) -> Result<(), McuError> {
        let s = self.subscriber_checked(&(subscriber.clone(), publisher.clone(), stream), sid)?;
        let jsep = json!({
            "type": "answer",
            "sdp": sdp::filter(sdp_text, &self.cfg.allowed_candidates, &self.cfg.blocked_candidates),
        });
        self.gw
            .message(s.handle, json!({"request": "start"}), Some(jsep), true)
            .await?;
        Ok(())
    }

    /// A subscriber's candidate (None: end of candidates, nothing sent).
    pub async fn subscriber_candidate(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        candidate: Option<Value>,
    ) -> Result<(), McuError> {
        let s = self.subscriber_checked(&(subscriber.clone(), publisher.clone(), stream), sid)?;
        match candidate {
            Some(c) => Ok(self.gw.trickle(s.handle, c).await?),
            None => Ok(()),
        }
    }

    /// `selectStream`: substream/temporal layer, audio/video on or off.
    pub async fn select_stream(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        payload: &Value,
    ) -> Result<(), McuError> {
        let s = self.subscriber_checked(&(subscriber.clone(), publisher.clone(), stream), "")?;
        let mut body = json!({"request": "configure"});
        if !add_selection(&mut body, payload) {
            return Ok(());
        }
        self.gw.message(s.handle, body, None, true).await?;
        Ok(())
    }

    /// Closes a session's publisher of `stream`, if any.
    pub async fn close_stream(&self, session: &Arc<str>, stream: StreamType) {
        if let Some(p) = self.publisher(session, stream) {
            self.close_publisher(p).await;
        }
    }

    /// Closes everything of a session: its publishers (with their
    /// subscribers) and its subscribers.
    pub async fn close_session(&self, session: &Arc<str>) {
        let (pubs, subs): (Vec<_>, Vec<_>) = {
            let reg = lock(&self.reg);
            (
                reg.publishers
                    .values()
                    .filter(|p| p.session == *session)
                    .cloned()
                    .collect(),
                reg.subscribers
                    .values()
                    .filter(|s| s.key.0 == *session)
                    .cloned()
                    .collect(),
            )
        };
        for p in pubs {
            self.close_publisher(p).await;
        }
        for s in subs {
            self.close_subscriber(s).await;
        }
    }

    /// Closes the publishers a new permission set no longer allows (as the
    /// Go server: without `publish-media`, a video publisher with audio
    /// but no `publish-audio` or video but no `publish-video` closes and
    /// the check stops; else the screen publisher without `publish-screen`).
    async fn apply_permissions(&self, session: &Arc<str>, perms: &[String]) {
        let has = |p: &str| perms.iter().any(|x| x == p);
        if !has("publish-media") {
            if let Some(p) = self.publisher(session, StreamType::Video) {
                let m = *lock(&p.media);
                if (m.audio && !has("publish-audio")) || (m.video && !has("publish-video")) {
                    tracing::info!(session = %session, "permission revoked, closing video publisher");
                    self.close_publisher(p).await;
                    return;
                }
            }
        }
        if !has("publish-screen") {
            if let Some(p) = self.publisher(session, StreamType::Screen) {
                tracing::info!(session = %session, "permission revoked, closing screen publisher");
                self.close_publisher(p).await;
            }
        }
    }

    fn on_command(self: &Arc<Self>, cmd: Command) {
        let m = self.clone();
        tokio::spawn(async move {
            match cmd {
                Command::CloseSession(s) => m.close_session(&s).await,
                Command::Permissions(s, perms) => m.apply_permissions(&s, &perms).await,
                Command::UnshareScreen(s) => {
                    tokio::time::sleep(UNSHARE_DELAY).await;
                    m.close_stream(&s, StreamType::Screen).await;
                }
            }
        });
    }

    fn on_gateway_event(self: &Arc<Self>, ev: GatewayEvent) {
        match ev {
            GatewayEvent::Connected => {}
            GatewayEvent::Disconnected => {
                // Every handle died with the Janus session: clients publish
                // and subscribe again (their PeerConnections fail).
                let reg = std::mem::take(&mut *lock(&self.reg));
                for p in reg.publishers.values() {
                    self.metrics
                        .publishers
                        .with_label_values(&[p.stream.as_str()])
                        .dec();
                }
                for s in reg.subscribers.values() {
                    self.metrics
                        .subscribers
                        .with_label_values(&[s.key.2.as_str()])
                        .dec();
                }
                tracing::info!(
                    publishers = reg.publishers.len(),
                    subscribers = reg.subscribers.len(),
                    "Janus connection lost, media clients dropped"
                );
            }
            GatewayEvent::Handle { handle, msg } => self.on_handle_event(handle, msg),
        }
    }

    fn on_handle_event(self: &Arc<Self>, handle: u64, msg: Value) {
        let owner = match lock(&self.reg).handles.get(&handle) {
            Some(Owner::Publisher(p)) => Owner::Publisher(p.clone()),
            Some(Owner::Subscriber(s)) => Owner::Subscriber(s.clone()),
            None => return,
        };
        let kind = msg["janus"].as_str().unwrap_or("");
        let videoroom = plugin_data(&msg)["videoroom"].as_str().unwrap_or("");
        match (owner, kind) {
            (Owner::Publisher(p), "webrtcup") => {
                p.up.send_replace(true);
            }
            (Owner::Publisher(p), "hangup" | "detached") => {
                tracing::debug!(session = %p.session, janus = kind, "publisher closed by Janus");
                let m = self.clone();
                tokio::spawn(async move { m.close_publisher(p).await });
            }
            (Owner::Publisher(p), "event") if videoroom == "destroyed" => {
                let subs = self.forget_publisher(&p);
                let m = self.clone();
                tokio::spawn(async move {
                    let _ = m.gw.detach(p.handle).await;
                    for s in subs {
                        let _ = m.gw.detach(s.handle).await;
                    }
                });
            }
            (Owner::Publisher(p), "trickle") => {
                if let Some(c) = janus_candidate(&msg) {
                    let _ = self.signals.send(Signal {
                        to: p.session.clone(),
                        from: p.session.clone(),
                        kind: "candidate",
                        stream: p.stream,
                        payload: json!({"candidate": c}),
                        sid: p.sid.clone(),
                    });
                }
            }
            (Owner::Subscriber(s), "hangup" | "detached") => {
                tracing::debug!(subscriber = %s.key.0, janus = kind, "subscriber closed by Janus");
                let m = self.clone();
                tokio::spawn(async move { m.close_subscriber(s).await });
            }
            (Owner::Subscriber(s), "event") if videoroom == "destroyed" => {
                let m = self.clone();
                tokio::spawn(async move { m.close_subscriber(s).await });
            }
            (Owner::Subscriber(s), "event") => {
                if let Some(jsep) = msg.get("jsep").filter(|j| j["type"] == "offer") {
                    let _ = self.signals.send(Signal {
                        to: s.key.0.clone(),
                        from: s.key.1.clone(),
                        kind: "offer",
                        stream: s.key.2,
                        payload: jsep.clone(),
                        sid: s.sid(),
                    });
                }
            }
            (Owner::Subscriber(s), "trickle") => {
                if let Some(c) = janus_candidate(&msg) {
                    let _ = self.signals.send(Signal {
                        to: s.key.0.clone(),
                        from: s.key.1.clone(),
                        kind: "candidate",
                        stream: s.key.2,
                        payload: json!({"candidate": c}),
                        sid: s.sid(),
                    });
                }
            }
            (_, other) => tracing::trace!(handle, janus = other, "Janus event"),
        }
    }
}

/// A candidate Janus trickled (not its "completed" marker).
fn janus_candidate(msg: &Value) -> Option<Value> {
    let c = msg.get("candidate")?;
    if c.get("completed").is_some() || c.get("candidate").is_none() {
        return None;
    }
    Some(c.clone())
}

/// Copies `substream`, `temporal` (integers) and `audio`, `video`
/// (booleans) from a client payload; false when there was none.
fn add_selection(body: &mut Value, payload: &Value) -> bool {
    let mut any = false;
    for key in ["substream", "temporal"] {
        if let Some(v) = payload.get(key).and_then(Value::as_i64) {
            body[key] = json!(v);
            any = true;
        }
    }
    for key in ["audio", "video"] {
        if let Some(v) = payload.get(key).and_then(Value::as_bool) {
            body[key] = json!(v);
            any = true;
        }
    }
    any
}
