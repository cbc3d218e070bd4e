//! The publishers and subscribers of this process's MCU, whichever the
//! backend: one [`Clients`] in [`super::direct::JanusMcu`] (Janus handles)
//! and one in [`super::proxy::ProxyMcu`] (clients on signaling proxies).
//! Here is what both do alike: the lookups, registering and forgetting
//! (with the `signaling_mcu_publishers`/`_subscribers` gauges and their
//! `_total` counters), a subscriber waiting for its publisher, the sid
//! checks and which publisher a new permission set closes. What Janus or
//! a proxy must be told stays with each backend.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{lock, sdp, HeldCandidates, McuError, Signal, StreamType, SubKey};
use crate::metrics::McuMetrics;

/// A published stream as the registry sees it.
pub(super) trait Published {
    /// The backend's name of a publisher or subscriber (a Janus handle,
    /// or a proxy and its client id).
    type Id: Eq + Hash + Clone;
    fn id(&self) -> Self::Id;
    fn session(&self) -> &Arc<str>;
    fn stream(&self) -> StreamType;
    /// The sid of the client's offer.
    fn sid(&self) -> &str;
    /// The media of its last offer.
    fn media(&self) -> sdp::Media;

    /// A candidate the backend trickled, for the publisher's client.
    fn candidate_signal(&self, c: Value) -> Signal {
        let payload = json!({"candidate": c});
        let sid = self.sid().to_string();
        Signal::to_publisher(self.session(), self.stream(), "candidate", payload, sid)
    }
}

/// A subscriber as the registry sees it.
pub(super) trait Subscribed {
    type Id;
    fn id(&self) -> Self::Id;
    fn key(&self) -> &SubKey;
    /// The sid its client knows it by.
    fn sid(&self) -> String;
    fn held(&self) -> &HeldCandidates;

    /// A candidate the backend trickled, for the subscriber's client.
    fn candidate_signal(&self, c: Value) -> Signal {
        Signal::to_subscriber(self.key(), "candidate", json!({"candidate": c}), self.sid())
    }

    /// Hands the backend's offer for it to `deliver`, then the candidates
    /// held meanwhile to `signals` (dropped when there is no offer: they
    /// belong to no SDP).
    fn deliver_offer(
        &self,
        signals: &UnboundedSender<Signal>,
        offer: Result<Value, McuError>,
        deliver: impl FnOnce(&str, &Value),
    ) -> Result<(), McuError> {
        let out = |c| {
            let _ = signals.send(self.candidate_signal(c));
        };
        self.held()
            .after_reply(offer, |o| deliver(&self.sid(), o), out)
    }
}

/// Implements [`super::backend::Backend`] for a backend (`$mcu`, by its
/// methods of the same names and its field `clients`), [`Published`] for
/// the `Publisher` and [`Subscribed`] for the `Subscriber` of the module
/// it is called in: both named by the
/// backend's id (`id: Type = |x| expr` of either), a publisher by its
/// fields `session`, `stream`, `sid` and `media`, a subscriber by its
/// fields `key` and `held` and its sid (`|x| expr`).
macro_rules! registered {
    ($mcu:ty, id: $id:ty = |$x:ident| $by:expr, sid: |$y:ident| $sid:expr) => {
        impl $crate::mcu::backend::Backend for $mcu {
            type P = Publisher;
            type S = Subscriber;
            fn clients(&self) -> &$crate::mcu::registry::Clients<Publisher, Subscriber> {
                &self.clients
            }
            fn close_session(
                &self,
                session: &std::sync::Arc<str>,
            ) -> impl std::future::Future<Output = ()> + Send {
                <$mcu>::close_session(self, session)
            }
            fn close_publisher(
                &self,
                p: std::sync::Arc<Publisher>,
            ) -> impl std::future::Future<Output = ()> + Send {
                <$mcu>::close_publisher(self, p)
            }
            fn close_subscriber(
                &self,
                s: std::sync::Arc<Subscriber>,
            ) -> impl std::future::Future<Output = ()> + Send {
                <$mcu>::close_subscriber(self, s)
            }
            fn abandon(
                &self,
                s: &std::sync::Arc<Subscriber>,
            ) -> impl std::future::Future<Output = ()> + Send {
                <$mcu>::abandon(self, s)
            }
        }

        impl $crate::mcu::registry::Published for Publisher {
            type Id = $id;
            fn id(&self) -> $id {
                let $x = self;
                $by
            }
            fn session(&self) -> &std::sync::Arc<str> {
                &self.session
            }
            fn stream(&self) -> $crate::mcu::StreamType {
                self.stream
            }
            fn sid(&self) -> &str {
                &self.sid
            }
            fn media(&self) -> $crate::mcu::sdp::Media {
                *$crate::mcu::lock(&self.media)
            }
        }

        impl $crate::mcu::registry::Subscribed for Subscriber {
            type Id = $id;
            fn id(&self) -> $id {
                let $x = self;
                $by
            }
            fn key(&self) -> &$crate::mcu::SubKey {
                &self.key
            }
            fn sid(&self) -> String {
                let $y = self;
                $sid
            }
            fn held(&self) -> &$crate::mcu::HeldCandidates {
                &self.held
            }
        }
    };
}
pub(super) use registered;

/// What a backend id stands for.
pub(super) enum Owner<P, S> {
    Publisher(Arc<P>),
    /// A subscriber counted in [`Registry::subscribers`].
    Subscriber(Arc<S>),
    /// A subscriber whose offer is under way (not counted yet): known so
    /// that nothing the backend trickles for it is missed.
    Joining(Arc<S>),
}

impl<P, S> Clone for Owner<P, S> {
    fn clone(&self) -> Self {
        match self {
            Owner::Publisher(p) => Owner::Publisher(p.clone()),
            Owner::Subscriber(s) => Owner::Subscriber(s.clone()),
            Owner::Joining(s) => Owner::Joining(s.clone()),
        }
    }
}

/// The maps themselves (under [`Clients`]'s lock).
pub(super) struct Registry<P: Published, S> {
    pub(super) publishers: HashMap<(Arc<str>, StreamType), Arc<P>>,
    pub(super) subscribers: HashMap<SubKey, Arc<S>>,
    /// Each publisher and subscriber by the backend's id of it, for what
    /// the backend says on its own.
    pub(super) by_id: HashMap<P::Id, Owner<P, S>>,
}

impl<P: Published, S> Default for Registry<P, S> {
    fn default() -> Self {
        Registry {
            publishers: HashMap::new(),
            subscribers: HashMap::new(),
            by_id: HashMap::new(),
        }
    }
}

impl<P: Published, S: Subscribed<Id = P::Id>> Registry<P, S> {
    /// Adds a publisher (not counted); returns the one of the same
    /// session and stream it replaces.
    pub(super) fn insert_publisher(&mut self, p: Arc<P>) -> Option<Arc<P>> {
        self.by_id.insert(p.id(), Owner::Publisher(p.clone()));
        self.publishers.insert((p.session().clone(), p.stream()), p)
    }

    /// Adds a subscriber (not counted); returns the one of the same key it
    /// replaces.
    pub(super) fn insert_subscriber(&mut self, s: Arc<S>) -> Option<Arc<S>> {
        self.by_id.insert(s.id(), Owner::Subscriber(s.clone()));
        self.subscribers.insert(s.key().clone(), s)
    }

    /// True when `p` is the publisher of its session and stream.
    fn is_current(&self, p: &Arc<P>) -> bool {
        self.publishers
            .get(&(p.session().clone(), p.stream()))
            .is_some_and(|x| Arc::ptr_eq(x, p))
    }

    /// The publishers and subscribers that pass the filters.
    pub(super) fn select(
        &self,
        publisher: impl Fn(&P) -> bool,
        subscriber: impl Fn(&S) -> bool,
    ) -> (Vec<Arc<P>>, Vec<Arc<S>>) {
        (
            self.publishers
                .values()
                .filter(|p| publisher(p))
                .cloned()
                .collect(),
            self.subscribers
                .values()
                .filter(|s| subscriber(s))
                .cloned()
                .collect(),
        )
    }
}

/// The registry of one MCU backend with its lock, its gauges and the
/// notification subscribers wait on for their publisher.
pub(super) struct Clients<P: Published, S> {
    reg: Mutex<Registry<P, S>>,
    /// Woken whenever a publisher appears (waiting subscribers look again).
    published: Notify,
    metrics: McuMetrics,
}

impl<P: Published, S: Subscribed<Id = P::Id>> Clients<P, S> {
    pub(super) fn new(metrics: McuMetrics) -> Self {
        Clients {
            reg: Mutex::new(Registry::default()),
            published: Notify::new(),
            metrics,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Registry<P, S>> {
        lock(&self.reg)
    }

    /// Wakes the subscribers waiting for a publisher.
    pub(super) fn notify_published(&self) {
        self.published.notify_waiters();
    }

    pub(super) fn publisher(&self, session: &Arc<str>, stream: StreamType) -> Option<Arc<P>> {
        self.lock()
            .publishers
            .get(&(session.clone(), stream))
            .cloned()
    }

    pub(super) fn subscriber(&self, key: &SubKey) -> Option<Arc<S>> {
        self.lock().subscribers.get(key).cloned()
    }

    /// What backend id `id` stands for.
    pub(super) fn owner(&self, id: &P::Id) -> Option<Owner<P, S>> {
        self.lock().by_id.get(id).cloned()
    }

    /// True when the session publishes `stream`.
    pub(super) fn has_publisher(&self, session: &str, stream: StreamType) -> bool {
        self.lock()
            .publishers
            .contains_key(&(Arc::from(session), stream))
    }

    /// True when `subscriber` receives `publisher`'s `stream`.
    pub(super) fn has_subscriber(
        &self,
        subscriber: &str,
        publisher: &str,
        stream: StreamType,
    ) -> bool {
        self.lock()
            .subscribers
            .contains_key(&(Arc::from(subscriber), Arc::from(publisher), stream))
    }

    /// The publishers and the subscriptions of `session`.
    pub(super) fn of_session(&self, session: &Arc<str>) -> (Vec<Arc<P>>, Vec<Arc<S>>) {
        self.lock()
            .select(|p| p.session() == session, |s| s.key().0 == *session)
    }

    /// The publisher of `session`'s `stream`, when `sid` is empty or its
    /// sid.
    pub(super) fn publisher_checked(
        &self,
        session: &Arc<str>,
        stream: StreamType,
        sid: &str,
    ) -> Result<Arc<P>, McuError> {
        let p = self
            .publisher(session, stream)
            .ok_or_else(|| McuError::NotFound("no publisher".into()))?;
        if !sid.is_empty() && sid != p.sid() {
            return Err(McuError::Failed(format!(
                "sid {sid} is not the publisher's"
            )));
        }
        Ok(p)
    }

    /// The subscriber of `key`, when `sid` is empty or its sid.
    pub(super) fn subscriber_checked(&self, key: &SubKey, sid: &str) -> Result<Arc<S>, McuError> {
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

    /// Waits (until `deadline`) for a publisher of `publisher`'s `stream`;
    /// counts `signaling_mcu_nopublisher_total` when it is not there at
    /// once.
    pub(super) async fn wait_publisher(
        &self,
        publisher: &Arc<str>,
        stream: StreamType,
        deadline: Instant,
    ) -> Option<Arc<P>> {
        wait_found(
            &self.published,
            deadline,
            || self.publisher(publisher, stream),
            || {
                self.metrics
                    .nopublisher_total
                    .with_label_values(&[stream.as_str()])
                    .inc()
            },
        )
        .await
    }

    /// The publisher of `session` a new permission set no longer allows
    /// ([`super::revoked_stream`]), if any.
    pub(super) fn revoked(&self, session: &Arc<str>, perms: &[String]) -> Option<Arc<P>> {
        let video = self.publisher(session, StreamType::Video);
        let screen = self.publisher(session, StreamType::Screen);
        let media = video.as_ref().map(|p| p.media());
        match super::revoked_stream(perms, media, screen.is_some()) {
            Some(StreamType::Video) => video,
            Some(StreamType::Screen) => screen,
            None => None,
        }
    }

    /// Registers and counts a publisher, unless `admit` (run under the
    /// lock) refuses; returns the one of the same session and stream it
    /// replaces (still counted: forget it).
    pub(super) fn add_publisher(
        &self,
        p: &Arc<P>,
        admit: impl FnOnce() -> Result<(), McuError>,
    ) -> Result<Option<Arc<P>>, McuError> {
        let replaced = {
            let mut reg = self.lock();
            admit()?;
            reg.insert_publisher(p.clone())
        };
        let label = [p.stream().as_str()];
        self.metrics.publishers.with_label_values(&label).inc();
        self.metrics
            .publishers_total
            .with_label_values(&label)
            .inc();
        Ok(replaced)
    }

    /// Drops a publisher and the subscribers of its stream; returns those
    /// subscribers, `None` when the publisher was no longer registered.
    pub(super) fn forget_publisher(&self, p: &Arc<P>) -> Option<Vec<Arc<S>>> {
        let mut reg = self.lock();
        if reg.is_current(p) {
            reg.publishers.remove(&(p.session().clone(), p.stream()));
        }
        let id = p.id();
        if !matches!(reg.by_id.get(&id), Some(Owner::Publisher(x)) if Arc::ptr_eq(x, p)) {
            return None;
        }
        reg.by_id.remove(&id);
        self.metrics
            .publishers
            .with_label_values(&[p.stream().as_str()])
            .dec();
        let keys: Vec<SubKey> = reg
            .subscribers
            .keys()
            .filter(|k| k.1 == *p.session() && k.2 == p.stream())
            .cloned()
            .collect();
        let mut subs = Vec::new();
        for k in keys {
            if let Some(s) = reg.subscribers.remove(&k) {
                reg.by_id.remove(&s.id());
                self.metrics
                    .subscribers
                    .with_label_values(&[k.2.as_str()])
                    .dec();
                subs.push(s);
            }
        }
        Some(subs)
    }

    /// Registers and counts a subscriber of `p` unless `p` closed
    /// meanwhile or `admit` (run under the lock) refuses; returns the
    /// subscriber of the same key it replaces (still counted: forget it).
    pub(super) fn add_subscriber(
        &self,
        p: &Arc<P>,
        s: &Arc<S>,
        admit: impl FnOnce() -> Result<(), McuError>,
    ) -> Result<Option<Arc<S>>, McuError> {
        let old = {
            let mut reg = self.lock();
            if !reg.is_current(p) {
                return Err(McuError::NotFound("publisher closed".into()));
            }
            admit()?;
            reg.insert_subscriber(s.clone())
        };
        let label = [s.key().2.as_str()];
        self.metrics.subscribers.with_label_values(&label).inc();
        self.metrics
            .subscribers_total
            .with_label_values(&label)
            .inc();
        Ok(old)
    }

    /// Drops a subscriber (a joining one too); true when it was counted.
    pub(super) fn forget_subscriber(&self, s: &Arc<S>) -> bool {
        let mut reg = self.lock();
        if reg
            .subscribers
            .get(s.key())
            .is_some_and(|x| Arc::ptr_eq(x, s))
        {
            reg.subscribers.remove(s.key());
        }
        if !matches!(reg.by_id.remove(&s.id()), Some(Owner::Subscriber(_))) {
            return false;
        }
        self.metrics
            .subscribers
            .with_label_values(&[s.key().2.as_str()])
            .dec();
        true
    }

    /// Takes what `reg` holds out of the gauges.
    pub(super) fn uncount(&self, reg: &Registry<P, S>) {
        for p in reg.publishers.values() {
            self.metrics
                .publishers
                .with_label_values(&[p.stream().as_str()])
                .dec();
        }
        for s in reg.subscribers.values() {
            self.metrics
                .subscribers
                .with_label_values(&[s.key().2.as_str()])
                .dec();
        }
    }
}

/// Waits until `find` finds a publisher, at most until `deadline`, looking
/// again whenever `published` is notified; `missed` runs once, when the
/// first look found none.
async fn wait_found<T>(
    published: &Notify,
    deadline: Instant,
    find: impl Fn() -> Option<T>,
    missed: impl FnOnce(),
) -> Option<T> {
    let mut missed = Some(missed);
    loop {
        let notified = published.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(found) = find() {
            return Some(found);
        }
        if let Some(m) = missed.take() {
            m();
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return None;
        }
    }
}
