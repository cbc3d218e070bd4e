//! The MCU as the hub sees it, whatever the backend: Janus directly
//! (`[mcu] type = janus`) or signaling proxies (`type = proxy`).

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::direct::JanusMcu;
pub use super::direct::{SavedMcu, Served};
use super::proxy::ProxyMcu;
use super::{Command, McuError, Offer, Signal, StreamType};
use crate::config::mcu::McuConfig;
use crate::metrics::McuMetrics;

enum Backend {
    Janus(Arc<JanusMcu>),
    Proxy(Arc<ProxyMcu>),
}

/// The MCU of this process.
pub struct Mcu {
    backend: Backend,
}

/// Calls the same method on whichever backend runs.
macro_rules! each {
    ($self:ident, $m:ident => $e:expr) => {
        match &$self.backend {
            Backend::Janus($m) => $e,
            Backend::Proxy($m) => $e,
        }
    };
}

impl Mcu {
    /// Starts the MCU of `cfg` (Janus, or the proxies of `cfg.proxy`) in
    /// the background. Signals for clients come out of the receiver.
    pub fn start(
        cfg: McuConfig,
        metrics: McuMetrics,
        cancel: CancellationToken,
    ) -> (Arc<Mcu>, mpsc::UnboundedReceiver<Signal>) {
        Self::start_restored(cfg, metrics, cancel, None)
    }

    /// [`Mcu::start`] serving again the publishers and subscribers a
    /// process before this one kept for it (Janus only: see
    /// `direct/restore.rs`).
    pub fn start_restored(
        cfg: McuConfig,
        metrics: McuMetrics,
        cancel: CancellationToken,
        restored: Option<SavedMcu>,
    ) -> (Arc<Mcu>, mpsc::UnboundedReceiver<Signal>) {
        if let Some(proxies) = cfg.proxy.clone() {
            let (m, rx) = ProxyMcu::start(cfg, &proxies, metrics, cancel);
            return (
                Arc::new(Mcu {
                    backend: Backend::Proxy(m),
                }),
                rx,
            );
        }
        let (m, rx) = JanusMcu::start(cfg, metrics, cancel, restored);
        (
            Arc::new(Mcu {
                backend: Backend::Janus(m),
            }),
            rx,
        )
    }

    /// SIGTERM with a state file: the Janus session outlives this process
    /// for the next one to claim (nothing with proxies).
    pub fn keep_for_restart(&self) {
        if let Backend::Janus(m) = &self.backend {
            m.keep_for_restart();
        }
    }

    /// A rolling restart: what a successor is to claim (Janus only); no
    /// new publisher or subscriber is made here from then on
    /// ([`McuError::HandedOver`]).
    pub fn hand_over(&self) -> Option<SavedMcu> {
        match &self.backend {
            Backend::Janus(m) => m.hand_over(),
            Backend::Proxy(_) => None,
        }
    }

    /// The successor claimed nothing: see [`Mcu::hand_over`].
    pub fn hand_over_failed(&self) {
        if let Backend::Janus(m) = &self.backend {
            m.hand_over_failed();
        }
    }

    /// The publishers and subscribers to keep in the state file (Janus
    /// only: a proxy's are the proxy's).
    pub fn saved_state(&self) -> Option<SavedMcu> {
        match &self.backend {
            Backend::Janus(m) => m.saved(),
            Backend::Proxy(_) => None,
        }
    }

    /// The publishers and subscribers on this process's Janus session,
    /// which a rolling restart loses (empty with proxies: theirs are on
    /// the proxies).
    pub fn served(&self) -> Served {
        match &self.backend {
            Backend::Janus(m) => m.served(),
            Backend::Proxy(_) => Served::default(),
        }
    }

    /// What this process serves on Janus sessions other than `claimed`
    /// (those a successor took over in a rolling restart).
    pub fn served_except(&self, claimed: &[u64]) -> Served {
        match &self.backend {
            Backend::Janus(m) => m.served_except(claimed),
            Backend::Proxy(_) => Served::default(),
        }
    }

    /// The publishers of `session` here and their subscribers (Janus
    /// only).
    pub fn served_of(&self, session: &str) -> Served {
        match &self.backend {
            Backend::Janus(m) => m.served_of(session),
            Backend::Proxy(_) => Served::default(),
        }
    }

    /// Closes the publishers of `session` (with their subscribers), in
    /// the background (Janus only: see [`Mcu::served_of`]).
    pub fn close_publishers(&self, session: &Arc<str>) {
        if let Backend::Janus(m) = &self.backend {
            m.close_publishers(session.clone());
        }
    }

    /// Serves the publishers and subscribers of a process that stops by
    /// claiming its Janus session(s); returns the sessions claimed (none
    /// with proxies).
    pub async fn adopt(&self, saved: SavedMcu) -> Vec<u64> {
        match &self.backend {
            Backend::Janus(m) => m.adopt(saved).await,
            Backend::Proxy(_) => Vec::new(),
        }
    }

    /// `subscriber` lost its subscription to `publisher` with a process
    /// that stopped: it gets an offer once `publisher` publishes `stream`
    /// here again (Janus only).
    pub fn expect_republish(&self, subscriber: &str, publisher: &str, stream: StreamType) {
        if let Backend::Janus(m) = &self.backend {
            m.expect_republish((subscriber.into(), publisher.into(), stream));
        }
    }

    /// The (subscriber, stream) waiting for `publisher` to publish again
    /// here, taken out: they go with its session to another process.
    pub fn take_resubscribe(&self, publisher: &str) -> Vec<(String, StreamType)> {
        match &self.backend {
            Backend::Janus(m) => m
                .take_resubscribe(publisher)
                .into_iter()
                .map(|k| (k.0.to_string(), k.2))
                .collect(),
            Backend::Proxy(_) => Vec::new(),
        }
    }

    /// True while Janus (or at least one proxy) is connected.
    pub fn connected(&self) -> bool {
        each!(self, m => m.connected())
    }

    /// With `type = janus`: changes when Janus connects or goes and when
    /// a publisher or subscriber is dropped (see [`super::direct::JanusMcu::changes`]).
    pub fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.backend {
            Backend::Janus(m) => Some(m.changes()),
            Backend::Proxy(_) => None,
        }
    }

    /// True when Janus handle `handle` is one of this process's
    /// publishers or subscribers (never with proxies: their Janus
    /// handles are the proxies').
    pub fn has_handle(&self, handle: u64) -> bool {
        match &self.backend {
            Backend::Janus(m) => m.has_handle(handle),
            Backend::Proxy(_) => false,
        }
    }

    /// Sets `signaling_mcu_publisher_streams` / `_subscriber_streams`
    /// (Janus only: a proxy's streams are its own).
    pub fn refresh_stream_gauges(&self) {
        if let Backend::Janus(m) = &self.backend {
            m.refresh_stream_gauges();
        }
    }

    /// `sfu` of `/api/v1/serverinfo` (the Go server's shape).
    pub fn server_info(&self) -> Value {
        each!(self, m => m.server_info())
    }

    /// `mcu` of `/api/v1/stats` (the Go server's shape).
    pub fn stats(&self) -> Value {
        each!(self, m => m.stats())
    }

    /// The `[mcu]` settings as last (re)loaded.
    pub fn config(&self) -> Arc<McuConfig> {
        each!(self, m => m.config())
    }

    /// SIGHUP: bitrates, candidate lists and timeout apply from now on;
    /// where media goes (URLs, token) needs a restart.
    pub fn reload(&self, new: &McuConfig) {
        each!(self, m => m.reload(new))
    }

    /// Hands work to the MCU without waiting (callable under any lock).
    pub fn command(&self, cmd: Command) {
        each!(self, m => m.command(cmd))
    }

    /// Counts a client MCU message (`signaling_mcu_messages_total`).
    pub fn count_message(&self, kind: &str) {
        each!(self, m => m.count_message(kind))
    }

    /// True when the session publishes `stream`.
    pub fn has_publisher(&self, session: &str, stream: StreamType) -> bool {
        each!(self, m => m.has_publisher(session, stream))
    }

    /// True when `subscriber` receives `publisher`'s `stream`.
    pub fn has_subscriber(&self, subscriber: &str, publisher: &str, stream: StreamType) -> bool {
        each!(self, m => m.has_subscriber(subscriber, publisher, stream))
    }

    /// Publishes (or re-negotiates) a session's stream; `deliver` gets
    /// the publisher's sid and the answer.
    pub async fn publish(
        &self,
        session: &Arc<str>,
        stream: StreamType,
        offer: Offer,
        deliver: impl FnOnce(&str, &Value),
    ) -> Result<(), McuError> {
        each!(self, m => m.publish(session, stream, offer, deliver).await)
    }

    /// A candidate of a publisher (`None`: end of candidates).
    pub async fn publisher_candidate(
        &self,
        session: &Arc<str>,
        stream: StreamType,
        sid: &str,
        candidate: Option<Value>,
    ) -> Result<(), McuError> {
        each!(self, m => m.publisher_candidate(session, stream, sid, candidate).await)
    }

    /// Closes a session's publisher of `stream`, if any.
    pub async fn close_stream(&self, session: &Arc<str>, stream: StreamType) {
        each!(self, m => m.close_stream(session, stream).await)
    }

    /// Closes everything of a session.
    pub async fn close_session(&self, session: &Arc<str>) {
        each!(self, m => m.close_session(session).await)
    }

    /// `requestoffer`/`sendoffer`: subscribes `subscriber` to a
    /// publisher's stream (or renegotiates with the current `sid`).
    pub async fn subscribe(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        selection: &Value,
        deliver: impl FnOnce(&str, &Value),
    ) -> Result<(), McuError> {
        let key = (subscriber.clone(), publisher.clone(), stream);
        each!(self, m => m.subscribe(&key, sid, selection, deliver).await)
    }

    /// A subscriber's `answer`.
    pub async fn subscriber_answer(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        sdp_text: &str,
    ) -> Result<(), McuError> {
        let key = (subscriber.clone(), publisher.clone(), stream);
        each!(self, m => m.subscriber_answer(&key, sid, sdp_text).await)
    }

    /// A subscriber's candidate (`None`: end of candidates).
    pub async fn subscriber_candidate(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        candidate: Option<Value>,
    ) -> Result<(), McuError> {
        let key = (subscriber.clone(), publisher.clone(), stream);
        each!(self, m => m.subscriber_candidate(&key, sid, candidate).await)
    }

    /// `selectStream`.
    pub async fn select_stream(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        payload: &Value,
    ) -> Result<(), McuError> {
        let key = (subscriber.clone(), publisher.clone(), stream);
        each!(self, m => m.select_stream(&key, payload).await)
    }
}
