//! `[mcu] type = proxy`: media through signaling proxies (the Go
//! project's `nextcloud-spreed-signaling-proxy`, or ours), one WebSocket
//! per proxy URL ([`conn`]). A new publisher goes to the least loaded
//! usable proxy ([`select`]; an error reply or no answer within
//! `proxytimeout` means the next one, all within `[mcu] timeout`); its
//! subscribers are created on the same proxy. To clients this is the same
//! MCU as `type = janus` ([`super::Mcu`]).
//!
//! A proxy whose connection drops keeps its publishers and subscribers
//! for [`RESUME_WINDOW`] (the proxy keeps the session that long, and media
//! keeps flowing through its Janus); a resumed session carries on. When
//! the proxy forgot the session, or did not come back in time, its
//! publishers and subscribers are forgotten, as `type = janus` forgets
//! them when Janus goes: the clients' next offer (Talk offers again when
//! its PeerConnection fails) lands on a proxy that is there. An offer for
//! a publisher on a proxy that is not connected does the same at once.

mod clients;
pub mod conn;
mod moved;
pub mod select;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::registry::{self, Clients, Published, Subscribed};
use super::{info, lock, sdp, Command, HeldCandidates, Signal, StreamType, SubKey};
use crate::api::proxy::{EventKind, PayloadKind, ProxyPayload};
use crate::config::mcu::{McuConfig, ProxyConfig};
use crate::metrics::McuMetrics;
use conn::{Conn, ConnEvent, TokenMaker};

/// How long the publishers and subscribers on a proxy whose connection
/// dropped are kept for a resume (the Go proxy keeps a session one minute
/// after its last use).
pub const RESUME_WINDOW: Duration = Duration::from_secs(60);

/// A published stream on a proxy.
pub(super) struct Publisher {
    session: Arc<str>,
    stream: StreamType,
    /// The proxy (index into the connections).
    conn: usize,
    /// The proxy's id of it.
    id: String,
    sid: String,
    media: Mutex<sdp::Media>,
    held: HeldCandidates,
}

/// A subscriber on the proxy of its publisher.
pub(super) struct Subscriber {
    key: SubKey,
    conn: usize,
    id: String,
    held: HeldCandidates,
}

registry::registered!(ProxyMcu, id: (usize, String) = |x| (x.conn, x.id.clone()), sid: |s| s.id.clone());

/// What a (proxy, the proxy's client id) serves; subscribers are known
/// from their creation on ([`registry::Owner::Joining`]).
type Owner = registry::Owner<Publisher, Subscriber>;

/// The proxy MCU of this process.
pub struct ProxyMcu {
    /// Itself, for the tasks it spawns.
    me: std::sync::Weak<ProxyMcu>,
    conns: Vec<Arc<Conn>>,
    cfg: arc_swap::ArcSwap<McuConfig>,
    metrics: McuMetrics,
    /// The publishers and subscribers, by proxy and the proxy's id.
    clients: Clients<Publisher, Subscriber>,
    /// Subscribers of publishers lost with their proxy ([`moved`]).
    moved: Mutex<moved::Moved>,
    signals: mpsc::UnboundedSender<Signal>,
    commands: mpsc::UnboundedSender<Command>,
}

impl ProxyMcu {
    /// Starts a connection per proxy and the MCU's event task.
    pub fn start(
        cfg: McuConfig,
        pc: &ProxyConfig,
        metrics: McuMetrics,
        cancel: CancellationToken,
    ) -> (Arc<ProxyMcu>, mpsc::UnboundedReceiver<Signal>) {
        let token = Arc::new(TokenMaker::new(pc));
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let conns: Vec<Arc<Conn>> = pc
            .urls
            .iter()
            .enumerate()
            .map(|(i, u)| {
                Arc::new(Conn::new(
                    i,
                    u.clone(),
                    pc.proxy_timeout,
                    token.clone(),
                    ev_tx.clone(),
                ))
            })
            .collect();
        let (signals, signal_rx) = mpsc::unbounded_channel();
        let (commands, mut command_rx) = mpsc::unbounded_channel();
        let mcu = Arc::new_cyclic(|me| ProxyMcu {
            me: me.clone(),
            conns: conns.clone(),
            cfg: arc_swap::ArcSwap::from_pointee(cfg),
            clients: Clients::new(metrics.clone()),
            metrics,
            moved: Default::default(),
            signals,
            commands,
        });
        for c in conns {
            tokio::spawn(c.run(cancel.clone()));
        }
        let m = mcu.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    ev = ev_rx.recv() => match ev {
                        Some((i, ev)) => m.on_conn_event(i, ev),
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

    /// True while at least one proxy is logged in.
    pub fn connected(&self) -> bool {
        self.conns.iter().any(|c| c.connected())
    }

    /// `sfu` of `/api/v1/serverinfo` (the Go server's shape).
    pub fn server_info(&self) -> Value {
        let proxies: Vec<Value> = self
            .conns
            .iter()
            .map(|c| {
                let st = c.state();
                let mut v = json!({"url": c.url, "connected": st.connected, "temporary": false});
                if st.connected {
                    v["shutdown"] = json!(st.shutdown);
                    v["load"] = json!(st.load);
                    if let Some(t) = st.since {
                        v["uptime"] = json!(info::rfc3339(t));
                    }
                    if !st.version.is_empty() {
                        v["version"] = json!(st.version);
                    }
                    if !st.country.is_empty() {
                        v["country"] = json!(st.country);
                    }
                }
                v
            })
            .collect();
        json!({"mode": "proxy", "proxies": proxies})
    }

    /// `mcu` of `/api/v1/stats`: publishers and clients of this process,
    /// and per proxy URL its state (the Go 0.4.1 shape).
    pub fn stats(&self) -> Value {
        let reg = self.clients.lock();
        let mut details = Map::new();
        let (mut publishers, mut clients) = (0, 0);
        for c in &self.conns {
            let st = c.state();
            let p = reg
                .publishers
                .values()
                .filter(|p| p.conn == c.index)
                .count();
            let s = reg
                .subscribers
                .values()
                .filter(|s| s.conn == c.index)
                .count();
            publishers += p;
            clients += p + s;
            let mut v = json!({
                "url": c.url, "connected": st.connected,
                "publishers": p, "clients": p + s,
            });
            if st.connected {
                v["load"] = json!(st.load);
                v["shutdown"] = json!(st.shutdown);
                if let Some(t) = st.since {
                    v["uptime"] = json!(info::rfc3339(t));
                }
            }
            details.insert(c.url.clone(), v);
        }
        json!({"publishers": publishers, "clients": clients, "details": details})
    }

    /// The `[mcu]` settings as last (re)loaded.
    pub fn config(&self) -> Arc<McuConfig> {
        self.cfg.load_full()
    }

    /// SIGHUP: bitrates, candidate lists and timeout apply from now on;
    /// the proxies and the token stay (they need a restart).
    pub fn reload(&self, new: &McuConfig) {
        let old = self.cfg.load();
        let mut cfg = new.clone();
        cfg.url = old.url.clone();
        cfg.proxy = old.proxy.clone();
        self.cfg.store(Arc::new(cfg));
    }

    /// Hands work to the MCU without waiting.
    pub fn command(&self, cmd: Command) {
        let _ = self.commands.send(cmd);
    }

    /// Counts a client MCU message (`signaling_mcu_messages_total`).
    pub fn count_message(&self, kind: &str) {
        self.metrics.messages_total.with_label_values(&[kind]).inc();
    }

    /// True when the session publishes `stream`.
    pub fn has_publisher(&self, session: &str, stream: StreamType) -> bool {
        self.clients.has_publisher(session, stream)
    }

    /// True when `subscriber` receives `publisher`'s `stream`.
    pub fn has_subscriber(&self, subscriber: &str, publisher: &str, stream: StreamType) -> bool {
        self.clients.has_subscriber(subscriber, publisher, stream)
    }

    fn update_gauges(&self) {
        let mut by_country: HashMap<String, i64> = HashMap::new();
        for c in &self.conns {
            let st = c.state();
            let load = if st.connected { st.load as f64 } else { 0.0 };
            self.metrics
                .backend_load
                .with_label_values(&[&c.url])
                .set(load);
            *by_country.entry(st.country.clone()).or_default() += i64::from(st.connected);
        }
        for (country, n) in by_country {
            self.metrics
                .backend_connections
                .with_label_values(&[&country])
                .set(n);
        }
    }

    fn on_conn_event(self: &Arc<Self>, i: usize, ev: ConnEvent) {
        match ev {
            ConnEvent::Up { resumed } => {
                if !resumed {
                    self.forget_conn(i, "the proxy has a new session");
                }
                self.update_gauges();
            }
            ConnEvent::Down => {
                self.update_gauges();
                let generation = self.conns[i].state().generation;
                let m = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RESUME_WINDOW).await;
                    let st = m.conns[i].state();
                    if !st.connected && st.generation == generation {
                        m.forget_conn(i, "the proxy did not come back in time");
                    }
                });
            }
            ConnEvent::Event(e) => match e.kind {
                EventKind::UpdateLoad | EventKind::ShutdownScheduled => self.update_gauges(),
                EventKind::BackendDisconnected => {
                    self.forget_conn(i, "the proxy lost its media server");
                }
                EventKind::PublisherClosed | EventKind::SubscriberClosed => {
                    let Some(owner) = self.clients.owner(&(i, e.client_id)) else {
                        return;
                    };
                    match owner {
                        Owner::Publisher(p) => {
                            tracing::debug!(session = %p.session, "publisher closed by the proxy");
                            self.forget_publisher(&p);
                        }
                        Owner::Subscriber(s) | Owner::Joining(s) => {
                            tracing::debug!(subscriber = %s.key.0, "subscriber closed by the proxy");
                            self.clients.forget_subscriber(&s);
                        }
                    }
                }
                _ => {}
            },
            ConnEvent::Payload(p) => self.on_payload(i, p),
        }
    }

    /// A candidate the proxy trickled for a publisher or subscriber.
    fn on_payload(&self, i: usize, p: ProxyPayload) {
        if p.kind != PayloadKind::Candidate {
            tracing::debug!(
                kind = p.kind.as_str(),
                "unsolicited payload from proxy ignored"
            );
            return;
        }
        let Some(c) = p
            .payload
            .as_ref()
            .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
            .and_then(|v| v.get("candidate").cloned())
        else {
            return;
        };
        match self.clients.owner(&(i, p.client_id)) {
            Some(Owner::Publisher(pb)) => {
                if let Some(c) = pb.held.pass(c) {
                    let _ = self.signals.send(pb.candidate_signal(c));
                }
            }
            Some(Owner::Subscriber(s) | Owner::Joining(s)) => {
                if let Some(c) = s.held.pass(c) {
                    let _ = self.signals.send(s.candidate_signal(c));
                }
            }
            None => {}
        }
    }

    /// Forgets every publisher and subscriber on proxy `i` (its session or
    /// its Janus is gone): their clients publish and subscribe again.
    fn forget_conn(&self, i: usize, why: &str) {
        let (pubs, subs) = self.clients.lock().select(|p| p.conn == i, |s| s.conn == i);
        if pubs.is_empty() && subs.is_empty() {
            return;
        }
        tracing::info!(
            proxy = %self.conns[i].url,
            publishers = pubs.len(),
            subscribers = subs.len(),
            "{why}: its media clients are dropped"
        );
        for p in pubs {
            let lost = self.forget_publisher(&p);
            self.remember_moved(&p, &lost);
        }
        for s in subs {
            self.clients.forget_subscriber(&s);
        }
        self.clients.lock().by_id.retain(|k, _| k.0 != i);
    }
}
