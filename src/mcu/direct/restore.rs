//! Publishers and subscribers kept across a restart of this process
//! (`[sessions] statefile`): the stopping process leaves its Janus session
//! alive ([`JanusMcu::keep_for_restart`]) and writes what it served
//! ([`JanusMcu::saved`]); the next start re-creates those objects on the
//! same handles and claims the Janus session ([`JanusMcu::restore`]), so
//! the media never stops and `requestoffer`, candidates, `selectStream`
//! and closing go on working for them.
//!
//! Where Janus no longer has the session (restarted, or its
//! `reclaim_session_timeout` is unset or over), the clients are told to
//! renegotiate without leaving the call ([`JanusMcu::renegotiate_lost`]):
//! each publisher's client gets `unshareScreen` for its own stream (the
//! Talk client ends that PeerConnection) followed by a participants update
//! from the hub (which makes it publish again); each subscriber's client
//! gets `unshareScreen` from the publisher (its receiving PeerConnection
//! ends) and, once that publisher published again, an offer with a new
//! sid, as for `sendoffer`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use super::super::{lock, sdp, Signal, StreamType, SubKey};
use super::{JanusMcu, Publisher, Registry, Subscriber};

/// What a state file keeps of the Janus MCU.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedMcu {
    /// `[mcu] url` of the process that wrote it (another Janus has
    /// other sessions).
    pub url: String,
    /// The Janus session to claim.
    pub janus_session: u64,
    /// The publishers served.
    pub publishers: Vec<SavedPublisher>,
    /// The subscribers served.
    pub subscribers: Vec<SavedSubscriber>,
}

/// A publisher in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedPublisher {
    pub(super) session: String,
    pub(super) stream: String,
    pub(super) handle: u64,
    pub(super) room: u64,
    pub(super) sid: String,
    pub(super) audio: bool,
    pub(super) video: bool,
    /// The media Janus received (bits of `streams::STREAM_LABELS`).
    pub(super) receiving: u8,
    /// Its Janus session when not the main one (claimed from a process
    /// that stopped, `adopt.rs`); 0 in files before it.
    #[serde(default)]
    pub(super) janus_session: u64,
}

/// A subscriber in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedSubscriber {
    pub(super) subscriber: String,
    pub(super) publisher: String,
    pub(super) stream: String,
    pub(super) handle: u64,
    pub(super) connected: bool,
    /// As [`SavedPublisher::janus_session`].
    #[serde(default)]
    pub(super) janus_session: u64,
}

fn stream_of(s: &str) -> Option<StreamType> {
    match s {
        "video" => Some(StreamType::Video),
        "screen" => Some(StreamType::Screen),
        _ => None,
    }
}

impl JanusMcu {
    /// SIGTERM with a state file: the Janus session outlives this process.
    pub fn keep_for_restart(&self) {
        self.gw.keep_session();
    }

    /// The publishers and subscribers to write to the state file; None
    /// when there are none (or no Janus session was ever up).
    pub fn saved(&self) -> Option<SavedMcu> {
        let janus_session = self.gw.session_id();
        let reg = self.clients.lock();
        if janus_session == 0 || (reg.publishers.is_empty() && reg.subscribers.is_empty()) {
            return None;
        }
        let publishers = reg
            .publishers
            .values()
            .map(|p| {
                let media = *lock(&p.media);
                SavedPublisher {
                    session: p.session.to_string(),
                    stream: p.stream.as_str().to_string(),
                    handle: p.handle,
                    room: p.room,
                    sid: p.sid.clone(),
                    audio: media.audio,
                    video: media.video,
                    receiving: p.receiving.load(Ordering::Relaxed),
                    janus_session: self.gw.session_of(p.handle),
                }
            })
            .collect();
        let subscribers = reg
            .subscribers
            .values()
            .map(|s| SavedSubscriber {
                subscriber: s.key.0.to_string(),
                publisher: s.key.1.to_string(),
                stream: s.key.2.as_str().to_string(),
                handle: s.handle,
                connected: s.connected.load(Ordering::Relaxed),
                janus_session: self.gw.session_of(s.handle),
            })
            .collect();
        Some(SavedMcu {
            url: self.config().url.clone(),
            janus_session,
            publishers,
            subscribers,
        })
    }

    /// At start, before the first connection: the saved objects are
    /// served again on their handles, and the first connection claims
    /// their Janus session. A file of another Janus is ignored.
    pub fn restore(&self, saved: SavedMcu) {
        if saved.url != self.config().url {
            tracing::warn!(
                "the saved publishers and subscribers were on another Janus ({}), not kept",
                saved.url
            );
            return;
        }
        // (A state file is of a process outside a cluster: all its
        // objects are on its own Janus session.)
        let janus_session = saved.janus_session;
        let mut reg = self.clients.lock();
        self.insert_saved(&mut reg, saved);
        tracing::info!(
            publishers = reg.publishers.len(),
            subscribers = reg.subscribers.len(),
            janus_session,
            "publishers and subscribers kept from before the restart, claiming their Janus session"
        );
        self.gw.claim_at_connect(janus_session);
    }

    /// Serves the saved publishers and subscribers again (on their
    /// handles); returns their handles.
    pub(super) fn insert_saved(&self, reg: &mut Registry, saved: SavedMcu) -> Vec<u64> {
        let mut handles = Vec::new();
        for p in saved.publishers {
            let Some(stream) = stream_of(&p.stream) else {
                continue;
            };
            let publisher = Arc::new(Publisher {
                session: p.session.as_str().into(),
                stream,
                handle: p.handle,
                room: p.room,
                sid: p.sid,
                media: Mutex::new(sdp::Media {
                    audio: p.audio,
                    video: p.video,
                }),
                // It was sending: subscribers join at once.
                up: watch::Sender::new(true),
                held: Default::default(),
                receiving: p.receiving.into(),
            });
            handles.push(p.handle);
            reg.insert_publisher(publisher);
            self.metrics
                .publishers
                .with_label_values(&[stream.as_str()])
                .inc();
        }
        for s in saved.subscribers {
            let Some(stream) = stream_of(&s.stream) else {
                continue;
            };
            let key: SubKey = (
                s.subscriber.as_str().into(),
                s.publisher.as_str().into(),
                stream,
            );
            if !reg.publishers.contains_key(&(key.1.clone(), stream)) {
                continue;
            }
            let sub = Arc::new(Subscriber {
                key,
                handle: s.handle,
                held: Default::default(),
                connected: s.connected.into(),
            });
            handles.push(s.handle);
            reg.insert_subscriber(sub);
            self.metrics
                .subscribers
                .with_label_values(&[stream.as_str()])
                .inc();
        }
        handles
    }

    /// The claimed Janus session was gone: every kept object died with it.
    /// Their clients are told to renegotiate (see the module docs).
    pub(super) fn renegotiate_lost(&self, reg: Registry) {
        self.clients.uncount(&reg);
        for p in reg.publishers.values() {
            let sid = p.sid.clone();
            let signal =
                Signal::to_publisher(&p.session, p.stream, "unshareScreen", json!({}), sid);
            let _ = self.signals.send(signal);
        }
        let mut pending = lock(&self.resubscribe);
        for s in reg.subscribers.values() {
            let signal = Signal::to_subscriber(&s.key, "unshareScreen", json!({}), s.sid());
            let _ = self.signals.send(signal);
            pending.push(s.key.clone());
        }
        tracing::info!(
            publishers = reg.publishers.len(),
            subscribers = reg.subscribers.len(),
            "kept publishers and subscribers lost with their Janus session, clients told to renegotiate"
        );
    }

    /// A publisher (again): the subscribers lost with a claimed session
    /// that waited for it get an offer of it (a new subscriber, new sid).
    pub(super) fn resubscribe_to(self: &Arc<Self>, publisher: &Arc<str>, stream: StreamType) {
        let waiting: Vec<SubKey> = {
            let mut pending = lock(&self.resubscribe);
            let (now, later) = pending
                .drain(..)
                .partition(|k| k.1 == *publisher && k.2 == stream);
            *pending = later;
            now
        };
        for key in waiting {
            let m = self.clone();
            tokio::spawn(async move {
                let deliver = super::super::push_offer(&m.signals, &key);
                if let Err(e) = m.subscribe(&key, "", &json!({}), deliver).await {
                    tracing::info!(subscriber = %key.0, publisher = %key.1, "cannot subscribe again after the restart: {e}");
                }
            });
        }
    }

    /// The subscribers waiting for `publisher` to publish again, taken
    /// out (they go with its session to another process).
    pub fn take_resubscribe(&self, publisher: &str) -> Vec<SubKey> {
        let mut pending = lock(&self.resubscribe);
        let (mine, rest) = pending.drain(..).partition(|k| &*k.1 == publisher);
        *pending = rest;
        mine
    }

    /// A session that closed waits for nothing any more.
    pub(super) fn forget_resubscribe(&self, session: &Arc<str>) {
        lock(&self.resubscribe).retain(|k| k.0 != *session && k.1 != *session);
    }
}

/// The publishers and subscribers of this process when a rolling restart
/// hands its sessions to other processes: they die with its Janus
/// session, so their clients renegotiate (see `hub/cluster/rolling.rs`).
#[derive(Debug, Default)]
pub struct Served {
    /// Each publisher: its session, stream and sid.
    pub publishers: Vec<(Arc<str>, StreamType, String)>,
    /// Each subscriber: (subscriber, publisher, stream) and its sid.
    pub subscribers: Vec<(SubKey, String)>,
}

impl JanusMcu {
    /// What this process serves (see [`Served`]).
    pub fn served(&self) -> Served {
        self.served_where(|_| true, |_| true)
    }

    /// The publishers whose session passes `publisher` and whose handle
    /// passes `handle`, and the subscribers likewise (by their
    /// publisher's session and their own handle).
    pub(super) fn served_where(
        &self,
        publisher: impl Fn(&str) -> bool,
        handle: impl Fn(u64) -> bool,
    ) -> Served {
        let reg = self.clients.lock();
        Served {
            publishers: reg
                .publishers
                .values()
                .filter(|p| publisher(&p.session) && handle(p.handle))
                .map(|p| (p.session.clone(), p.stream, p.sid.clone()))
                .collect(),
            subscribers: reg
                .subscribers
                .values()
                .filter(|s| publisher(&s.key.1) && handle(s.handle))
                .map(|s| (s.key.clone(), s.sid()))
                .collect(),
        }
    }

    /// A subscriber whose subscription died with another process gets an
    /// offer once `key.1` publishes `key.2` here.
    pub fn expect_republish(&self, key: SubKey) {
        let mut pending = lock(&self.resubscribe);
        if !pending.contains(&key) {
            pending.push(key);
        }
    }
}
