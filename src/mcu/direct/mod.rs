//! `[mcu] type = janus`: publishers and subscribers of the sessions of
//! this process, each on its own handle of the one Janus, one videoroom
//! room per published stream.

mod adopt;
mod publisher;
mod restore;
mod streams;
mod subscriber;

pub use restore::{SavedMcu, Served};

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::janus::{plugin_data, Gateway, GatewayEvent, JanusKind, VideoroomKind};
use super::registry::{self, Clients, Published, Subscribed};
use super::{info, sdp, Command, HeldCandidates, Signal, StreamType, SubKey};
use crate::api::client::SignalType;
use crate::config::mcu::McuConfig;
use crate::metrics::McuMetrics;

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
    /// Candidates trickled while a configure's answer is on its way.
    held: HeldCandidates,
    /// The media Janus receives from the client (its `media` events): one
    /// bit per [`streams::STREAM_LABELS`] entry.
    receiving: std::sync::atomic::AtomicU8,
}

/// A session receiving a publisher's stream.
pub(super) struct Subscriber {
    key: SubKey,
    handle: u64,
    /// Candidates trickled while Janus's offer is on its way.
    held: HeldCandidates,
    /// True once Janus said `webrtcup` for it (Go's `SubscriberConnected`).
    connected: std::sync::atomic::AtomicBool,
}

impl Subscriber {
    fn sid(&self) -> String {
        self.handle.to_string()
    }
}

registry::registered!(JanusMcu, id: u64 = |x| x.handle, sid: |s| Subscriber::sid(s));

/// What a Janus handle of this process serves.
type Owner = registry::Owner<Publisher, Subscriber>;
type Registry = registry::Registry<Publisher, Subscriber>;

/// The Janus MCU of this process.
pub struct JanusMcu {
    gw: Gateway,
    /// `[mcu]`; all but `url` replaced on SIGHUP ([`Mcu::reload`]).
    cfg: arc_swap::ArcSwap<McuConfig>,
    metrics: McuMetrics,
    /// The publishers and subscribers, by Janus handle.
    clients: Clients<Publisher, Subscriber>,
    /// Counts what a watcher may want to look at again: Janus connected
    /// or lost, a publisher or subscriber gone ([`JanusMcu::changes`]).
    changes: watch::Sender<u64>,
    signals: mpsc::UnboundedSender<Signal>,
    commands: mpsc::UnboundedSender<Command>,
    /// Subscribers lost with a Janus session that could not be claimed,
    /// waiting for their publisher to publish again (`restore.rs`).
    resubscribe: Mutex<Vec<SubKey>>,
    /// Set once [`JanusMcu::hand_over`] composed what a successor claims:
    /// no new publisher or subscriber is made from then on (`adopt.rs`).
    handed_over: std::sync::atomic::AtomicBool,
}

impl JanusMcu {
    /// Starts the Janus connection (in the background, reconnecting) and
    /// the MCU's event task. Signals for clients come out of the receiver.
    /// `restored`: the publishers and subscribers of the process before
    /// (state file), whose Janus session the first connection claims.
    pub fn start(
        cfg: McuConfig,
        metrics: McuMetrics,
        cancel: CancellationToken,
        restored: Option<SavedMcu>,
    ) -> (Arc<JanusMcu>, mpsc::UnboundedReceiver<Signal>) {
        let gw = Gateway::new(cfg.timeout, metrics.janus_requests_total.clone());
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let (commands, mut command_rx) = mpsc::unbounded_channel();
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let mcu = Arc::new(JanusMcu {
            gw: gw.clone(),
            cfg: arc_swap::ArcSwap::from_pointee(cfg.clone()),
            clients: Clients::new(metrics.clone()),
            metrics,
            changes: watch::Sender::new(0),
            signals,
            commands,
            resubscribe: Mutex::new(Vec::new()),
            handed_over: Default::default(),
        });
        if let Some(saved) = restored {
            mcu.restore(saved);
        }
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
                        Some(cmd) => super::backend::run_command(&m, cmd),
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

    /// Changes whenever Janus connects or goes, and whenever a publisher
    /// or subscriber is dropped (closed by Janus or by a request): the
    /// proxy looks at its clients then instead of polling.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// True when Janus handle `handle` is one of this process's
    /// publishers or subscribers.
    pub fn has_handle(&self, handle: u64) -> bool {
        self.clients.lock().by_id.contains_key(&handle)
    }

    /// `sfu` of `/api/v1/serverinfo` (the Go server's shape).
    pub fn server_info(&self) -> Value {
        info::serverinfo(&self.cfg.load().url, self.gw.info().as_deref())
    }

    /// `mcu` of `/api/v1/stats` (the Go server's shape): publishers and
    /// clients (publishers and subscribers) of this process.
    pub fn stats(&self) -> Value {
        let (publishers, clients) = {
            let reg = self.clients.lock();
            (
                reg.publishers.len(),
                reg.publishers.len() + reg.subscribers.len(),
            )
        };
        info::stats(
            &self.cfg.load().url,
            self.gw.info().as_deref(),
            publishers,
            clients,
        )
    }

    /// The `[mcu]` settings as last (re)loaded.
    pub fn config(&self) -> Arc<McuConfig> {
        self.cfg.load_full()
    }

    /// SIGHUP: the bitrates, candidate lists and timeout of `new` apply
    /// from now on (to new publishers, subscribers, candidates and
    /// requests); the Janus URL stays (a new one needs a restart).
    pub fn reload(&self, new: &McuConfig) {
        let mut cfg = new.clone();
        cfg.url = self.cfg.load().url.clone();
        self.gw.set_timeout(cfg.timeout);
        self.cfg.store(Arc::new(cfg));
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
        self.clients.has_publisher(session, stream)
    }

    /// True when `subscriber` receives `publisher`'s `stream` (the proxy
    /// notices subscribers Janus closed).
    pub fn has_subscriber(&self, subscriber: &str, publisher: &str, stream: StreamType) -> bool {
        self.clients.has_subscriber(subscriber, publisher, stream)
    }

    /// Closes everything of a session: its publishers (with their
    /// subscribers) and its subscribers.
    pub async fn close_session(&self, session: &Arc<str>) {
        self.forget_resubscribe(session);
        let (pubs, subs) = self.clients.of_session(session);
        for p in pubs {
            self.close_publisher(p).await;
        }
        for s in subs {
            self.close_subscriber(s).await;
        }
    }

    fn on_gateway_event(self: &Arc<Self>, ev: GatewayEvent) {
        match ev {
            GatewayEvent::Connected {
                claimed: Some(false),
            } => {
                // Only kept objects can be here before the first session.
                let reg = std::mem::take(&mut *self.clients.lock());
                self.renegotiate_lost(reg);
                self.changed();
            }
            GatewayEvent::Connected { .. } => self.changed(),
            GatewayEvent::Disconnected => {
                // Every handle died with the Janus session: clients publish
                // and subscribe again (their PeerConnections fail).
                let reg = std::mem::take(&mut *self.clients.lock());
                self.clients.uncount(&reg);
                tracing::info!(
                    publishers = reg.publishers.len(),
                    subscribers = reg.subscribers.len(),
                    "Janus connection lost, media clients dropped"
                );
                self.changed();
            }
            GatewayEvent::Handle { handle, msg } => self.on_handle_event(handle, msg),
        }
    }

    fn on_handle_event(self: &Arc<Self>, handle: u64, msg: Value) {
        let Some(owner) = self.clients.owner(&handle) else {
            return;
        };
        let kind = JanusKind::of(&msg);
        let videoroom = VideoroomKind::of(&plugin_data(&msg)["videoroom"]);
        match (owner, kind) {
            (Owner::Publisher(p), JanusKind::WebrtcUp) => {
                p.up.send_replace(true);
            }
            (Owner::Publisher(p), JanusKind::Media) => p.media_event(&msg),
            (Owner::Subscriber(s), JanusKind::WebrtcUp) => {
                s.connected
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            (Owner::Publisher(p), JanusKind::Hangup | JanusKind::Detached) => {
                tracing::debug!(session = %p.session, janus = ?kind, "publisher closed by Janus");
                let m = self.clone();
                tokio::spawn(async move { m.close_publisher(p).await });
            }
            (Owner::Publisher(p), JanusKind::Event) if videoroom == VideoroomKind::Destroyed => {
                let subs = self.forget_publisher(&p);
                let m = self.clone();
                tokio::spawn(async move {
                    let _ = m.gw.detach(p.handle).await;
                    for s in subs {
                        let _ = m.gw.detach(s.handle).await;
                    }
                });
            }
            (Owner::Publisher(p), JanusKind::Trickle) => {
                if let Some(c) = janus_candidate(&msg).and_then(|c| p.held.pass(c)) {
                    let _ = self.signals.send(p.candidate_signal(c));
                }
            }
            (Owner::Subscriber(s), JanusKind::Hangup | JanusKind::Detached) => {
                tracing::debug!(subscriber = %s.key.0, janus = ?kind, "subscriber closed by Janus");
                let m = self.clone();
                tokio::spawn(async move { m.close_subscriber(s).await });
            }
            (Owner::Subscriber(s), JanusKind::Event) if videoroom == VideoroomKind::Destroyed => {
                let m = self.clone();
                tokio::spawn(async move { m.close_subscriber(s).await });
            }
            (Owner::Subscriber(s), JanusKind::Event) => {
                if let Some(jsep) = msg
                    .get("jsep")
                    .filter(|j| SignalType::of(&j["type"]) == SignalType::Offer)
                {
                    let signal = Signal::to_subscriber(&s.key, "offer", jsep.clone(), s.sid());
                    let _ = self.signals.send(signal);
                }
            }
            (Owner::Subscriber(s) | Owner::Joining(s), JanusKind::Trickle) => {
                if let Some(c) = janus_candidate(&msg).and_then(|c| s.held.pass(c)) {
                    let _ = self.signals.send(s.candidate_signal(c));
                }
            }
            (_, other) => tracing::trace!(handle, janus = ?other, "Janus event"),
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
