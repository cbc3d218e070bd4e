//! The proxy's state: sessions, the publishers and subscribers they
//! created (its "clients", whose number is the load), the Janus MCU, the
//! scheduled shutdown, and the background work (load reports, session
//! expiry, and, when the MCU says something changed, Janus coming and
//! going and clients Janus closed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::{ProxyConfig, SESSION_EXPIRY};
use super::limits::{Cap, Limit, Refusals, MAX_CLIENTS};
use super::metrics::ProxyMetrics;
use super::session::{Sent, Session};
use super::tokens::TokenKeys;
use crate::api::proxy::{EventKind, ProxyEvent, ProxyServerMessage};
use crate::mcu::{Mcu, StreamType};

/// How often the load is looked at (and sent when it changed).
pub const LOAD_INTERVAL: Duration = Duration::from_secs(1);
/// How often expired sessions are removed (as Go).
pub const EXPIRE_INTERVAL: Duration = Duration::from_secs(10);

/// What a client (publisher or subscriber) is.
#[derive(Debug, Clone)]
pub enum ClientKind {
    /// A publisher: the bitrate cap the server asked for, its media.
    Publisher {
        /// `bitrate` of create-publisher (0: the config's cap).
        bitrate: u64,
        /// `mediatypes` of create-publisher.
        mediatypes: u32,
    },
    /// A subscriber of the publisher with this id.
    Subscriber {
        /// The publisher's client id.
        publisher: Arc<str>,
    },
}

/// A publisher or subscriber: what the per-client worker needs.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The proxy's id (a UUID; also its "session" in the MCU).
    pub id: Arc<str>,
    /// The session that created it.
    pub session: Arc<str>,
    /// Its stream.
    pub stream: StreamType,
    /// Publisher or subscriber.
    pub kind: ClientKind,
}

/// A registered client.
pub struct Client {
    /// What it is.
    pub info: ClientInfo,
    /// Its worker's queue: payloads of one client run one at a time, in
    /// the order they arrived.
    pub queue: mpsc::Sender<super::handle::Job>,
    /// True once Janus has it (a publisher after its offer, a subscriber
    /// after its offer was requested).
    pub established: AtomicBool,
    /// True while its worker runs a job (Janus may be between two states).
    pub busy: AtomicBool,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<Arc<str>, Arc<Session>>,
    clients: HashMap<Arc<str>, Arc<Client>>,
}

/// The proxy.
pub struct Proxy {
    /// `[app] country`.
    pub country: Option<String>,
    /// `[mcu] url`, for `/stats`.
    pub mcu_url: String,
    /// `[tokens]`, replaced on SIGHUP.
    pub tokens: ArcSwap<TokenKeys>,
    /// Janus.
    pub mcu: Arc<Mcu>,
    /// Metrics.
    pub metrics: ProxyMetrics,
    inner: Mutex<Inner>,
    shutdown: AtomicBool,
    /// Set to true when the proxy should exit (a scheduled shutdown with
    /// no client left).
    exit: watch::Sender<bool>,
    load: AtomicU64,
    next_conn: AtomicU64,
    /// When Janus was last connected (for `/stats` uptime).
    janus_since: Mutex<Option<SystemTime>>,
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// `[http] maxconnections`.
    pub max_connections: Cap,
    max_sessions: Cap,
    /// Refusals by a cap, counted and logged.
    pub refusals: Refusals,
    /// Stops the background tasks and Janus.
    pub cancel: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn event(kind: EventKind) -> ProxyServerMessage {
    ProxyServerMessage::event(ProxyEvent::new(kind))
}

fn client_event(kind: EventKind, id: &str) -> ProxyServerMessage {
    let mut e = ProxyEvent::new(kind);
    e.client_id = id.to_string();
    ProxyServerMessage::event(e)
}

impl Proxy {
    /// The proxy of `cfg` with its keys; starts Janus and the background
    /// tasks.
    pub fn start(cfg: &ProxyConfig, tokens: TokenKeys) -> Arc<Proxy> {
        let metrics = ProxyMetrics::new();
        let cancel = CancellationToken::new();
        let (mcu, signals) = Mcu::start(cfg.mcu.clone(), metrics.mcu.clone(), cancel.clone());
        let proxy = Arc::new(Proxy {
            country: cfg.country.clone(),
            mcu_url: cfg.mcu.url.clone(),
            tokens: ArcSwap::from_pointee(tokens),
            mcu,
            metrics,
            inner: Mutex::new(Inner::default()),
            shutdown: AtomicBool::new(false),
            exit: watch::Sender::new(false),
            load: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
            janus_since: Mutex::new(None),
            connections: AtomicU64::new(0),
            max_connections: Cap(cfg.max_connections),
            max_sessions: Cap(cfg.max_sessions),
            refusals: Refusals::default(),
            cancel,
        });
        tokio::spawn(super::handle::forward_signals(proxy.clone(), signals));
        tokio::spawn(proxy.clone().background());
        proxy
    }

    /// A new connection id.
    pub fn conn_id(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Resolves once the proxy should exit (shutdown scheduled, no client).
    pub async fn exit_requested(&self) {
        let mut rx = self.exit.subscribe();
        let _ = rx.wait_for(|e| *e).await;
    }

    /// True once SIGUSR1 scheduled the shutdown.
    pub fn shutdown_scheduled(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// SIGUSR1: no new publishers, every session hears
    /// `shutdown-scheduled`, exit once the last client is gone.
    pub fn schedule_shutdown(&self) {
        if self.shutdown.swap(true, Ordering::Relaxed) {
            return;
        }
        self.broadcast(&event(EventKind::ShutdownScheduled));
        if lock(&self.inner).clients.is_empty() {
            self.exit.send_replace(true);
        }
    }

    /// The event a session gets after its hello: the load, or the
    /// scheduled shutdown.
    pub fn state_event(&self) -> ProxyServerMessage {
        if self.shutdown_scheduled() {
            event(EventKind::ShutdownScheduled)
        } else {
            let mut e = ProxyEvent::new(EventKind::UpdateLoad);
            e.load = self.load.load(Ordering::Relaxed);
            ProxyServerMessage::event(e)
        }
    }

    /// Registers a session unless `[app] maxsessions` are there (the
    /// refusal is counted and logged).
    pub fn add_session(&self, s: Arc<Session>) -> bool {
        let mut inner = lock(&self.inner);
        if self.max_sessions.full(inner.sessions.len() as u64) {
            drop(inner);
            self.refusals
                .refused(&self.metrics, Limit::Sessions, self.max_sessions.0);
            return false;
        }
        inner.sessions.insert(s.id.clone(), s);
        self.metrics.sessions.set(inner.sessions.len() as i64);
        true
    }

    /// The session of `id`.
    pub fn session(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.inner).sessions.get(id).cloned()
    }

    /// Number of sessions.
    pub fn session_count(&self) -> usize {
        lock(&self.inner).sessions.len()
    }

    /// Sends to one session; a session whose backlog overflowed ends.
    pub fn send_to(&self, session: &Session, msg: &ProxyServerMessage) {
        if session.send(msg) == Sent::Overflow {
            tracing::warn!(session = %session.id, "too many messages wait for a resume: session ended");
            self.end_session(&session.id);
        }
    }

    fn broadcast(&self, msg: &ProxyServerMessage) {
        let sessions: Vec<Arc<Session>> = lock(&self.inner).sessions.values().cloned().collect();
        for s in sessions {
            self.send_to(&s, msg);
        }
    }

    /// Registers a client unless [`MAX_CLIENTS`] are there (the refusal
    /// is counted and logged).
    pub fn add_client(&self, c: Arc<Client>) -> bool {
        let mut inner = lock(&self.inner);
        if inner.clients.len() >= MAX_CLIENTS {
            drop(inner);
            self.refusals
                .refused(&self.metrics, Limit::Clients, MAX_CLIENTS as u64);
            return false;
        }
        let label = [c.info.stream.as_str()];
        match c.info.kind {
            ClientKind::Publisher { .. } => {
                self.metrics.publishers.with_label_values(&label).inc();
                self.metrics
                    .publishers_total
                    .with_label_values(&label)
                    .inc();
            }
            ClientKind::Subscriber { .. } => {
                self.metrics.subscribers.with_label_values(&label).inc();
                self.metrics
                    .subscribers_total
                    .with_label_values(&label)
                    .inc();
            }
        }
        inner.clients.insert(c.info.id.clone(), c);
        true
    }

    /// The client of `id`.
    pub fn client(&self, id: &str) -> Option<Arc<Client>> {
        lock(&self.inner).clients.get(id).cloned()
    }

    /// Number of clients (the load).
    pub fn client_count(&self) -> usize {
        lock(&self.inner).clients.len()
    }

    /// Forgets a client (its Janus side is closed by the caller); true
    /// when it was registered. The last one of a scheduled shutdown ends
    /// the proxy.
    pub fn remove_client(&self, id: &str) -> Option<Arc<Client>> {
        let mut inner = lock(&self.inner);
        let c = inner.clients.remove(id)?;
        let label = [c.info.stream.as_str()];
        match c.info.kind {
            ClientKind::Publisher { .. } => self.metrics.publishers.with_label_values(&label).dec(),
            ClientKind::Subscriber { .. } => {
                self.metrics.subscribers.with_label_values(&label).dec()
            }
        }
        if inner.clients.is_empty() && self.shutdown_scheduled() {
            self.exit.send_replace(true);
        }
        Some(c)
    }

    /// Closes a client's Janus side (in the background).
    pub fn close_in_mcu(&self, info: &ClientInfo) {
        let mcu = self.mcu.clone();
        let info = info.clone();
        tokio::spawn(async move {
            match info.kind {
                ClientKind::Publisher { .. } => mcu.close_stream(&info.id, info.stream).await,
                ClientKind::Subscriber { .. } => mcu.close_session(&info.id).await,
            }
        });
    }

    /// Ends a session: its clients close.
    pub fn end_session(&self, id: &str) {
        let (session, clients) = {
            let mut inner = lock(&self.inner);
            let s = inner.sessions.remove(id);
            self.metrics.sessions.set(inner.sessions.len() as i64);
            let ids: Vec<Arc<str>> = inner
                .clients
                .values()
                .filter(|c| &*c.info.session == id)
                .map(|c| c.info.id.clone())
                .collect();
            (s, ids)
        };
        if session.is_none() {
            return;
        }
        for c in clients {
            if let Some(c) = self.remove_client(&c) {
                self.close_in_mcu(&c.info);
            }
        }
    }

    async fn background(self: Arc<Self>) {
        let mut load_tick = tokio::time::interval(LOAD_INTERVAL);
        let mut expire_tick = tokio::time::interval(EXPIRE_INTERVAL);
        let mut changes = self.mcu.changes();
        let mut janus_up = false;
        loop {
            // Janus coming and going, clients it closed: looked at when
            // the MCU says something changed (and once at the start).
            let up = self.mcu.connected();
            if up != janus_up {
                janus_up = up;
                self.janus_changed(up);
            }
            self.closed_by_janus();
            let changed = async {
                match changes.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                ok = changed => if !ok { return },
                _ = load_tick.tick() => self.update_load(),
                _ = expire_tick.tick() => self.expire_sessions(),
            }
        }
    }

    /// Sends `update-load` to every session when the load changed (not
    /// once the shutdown is scheduled).
    fn update_load(&self) {
        let load = self.client_count() as u64;
        self.metrics.load.set(load as i64);
        if self.load.swap(load, Ordering::Relaxed) == load || self.shutdown_scheduled() {
            return;
        }
        let mut e = ProxyEvent::new(EventKind::UpdateLoad);
        e.load = load;
        self.broadcast(&ProxyServerMessage::event(e));
    }

    fn expire_sessions(&self) {
        let now = Instant::now();
        let expired: Vec<Arc<str>> = lock(&self.inner)
            .sessions
            .values()
            .filter(|s| s.expired(now, SESSION_EXPIRY))
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            tracing::info!(session = %id, "session expired");
            self.end_session(&id);
        }
    }

    fn janus_changed(&self, up: bool) {
        if up {
            tracing::info!(url = %crate::logsafe::Url(&self.mcu_url), "connection to Janus established");
            *lock(&self.janus_since) = Some(SystemTime::now());
            self.broadcast(&event(EventKind::BackendConnected));
            return;
        }
        tracing::warn!(url = %crate::logsafe::Url(&self.mcu_url), "connection to Janus lost, dropping every publisher and subscriber");
        *lock(&self.janus_since) = None;
        self.broadcast(&event(EventKind::BackendDisconnected));
        let ids: Vec<Arc<str>> = lock(&self.inner).clients.keys().cloned().collect();
        for id in ids {
            self.remove_client(&id);
        }
    }

    /// Clients Janus closed (hangup, a publisher's room gone): forgotten,
    /// their session hears `publisher-closed` / `subscriber-closed`.
    fn closed_by_janus(&self) {
        let clients: Vec<Arc<Client>> = lock(&self.inner).clients.values().cloned().collect();
        for c in clients {
            self.check_closed(&c);
        }
    }

    /// [`Self::closed_by_janus`] for one client (its worker calls it when
    /// a job ends: a change while it was busy was not looked at).
    pub fn check_closed(&self, c: &Client) {
        if !c.established.load(Ordering::Acquire) || c.busy.load(Ordering::Acquire) {
            return;
        }
        let i = &c.info;
        let (alive, kind) = match &i.kind {
            ClientKind::Publisher { .. } => (
                self.mcu.has_publisher(&i.id, i.stream),
                EventKind::PublisherClosed,
            ),
            ClientKind::Subscriber { publisher } => (
                self.mcu.has_subscriber(&i.id, publisher, i.stream),
                EventKind::SubscriberClosed,
            ),
        };
        // Looked at again: the worker may have started meanwhile.
        if alive || c.busy.load(Ordering::Acquire) {
            return;
        }
        if self.remove_client(&i.id).is_some() {
            tracing::debug!(client = %i.id, ?kind, "closed by Janus");
            if let Some(s) = self.session(&i.session) {
                self.send_to(&s, &client_event(kind, &i.id));
            }
        }
    }

    /// `/stats`: the Go proxy's shape.
    pub fn stats(&self) -> serde_json::Value {
        let (publishers, clients) = {
            let inner = lock(&self.inner);
            let p = inner
                .clients
                .values()
                .filter(|c| matches!(c.info.kind, ClientKind::Publisher { .. }))
                .count();
            (p, inner.clients.len())
        };
        let mut mcu = serde_json::json!({
            "url": self.mcu_url,
            "connected": self.mcu.connected(),
            "publishers": publishers,
            "clients": clients,
        });
        if let Some(since) = *lock(&self.janus_since) {
            mcu["uptime"] = crate::mcu::info::rfc3339(since).into();
        }
        serde_json::json!({
            "load": self.load.load(Ordering::Relaxed),
            "sessions": self.session_count(),
            "mcu": mcu,
        })
    }
}
