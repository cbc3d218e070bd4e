//! Subscribers of a publisher whose proxy went away: kept by name, and
//! offered the publisher's stream again once its session publishes it
//! on another proxy. The server pushes each of them an `offer` with the
//! new subscriber's sid, as for `sendoffer`; Talk ends the peer of the old
//! sid and answers the new one (`talk src/utils/webrtc/webrtc.js` ends a
//! "stale peer" of the same session and room type on an offer with
//! another sid), so nobody has to request an offer or rejoin the call.
//!
//! The publisher itself must offer again (no message makes Talk re-offer
//! on its own: it does when its PeerConnection fails); that offer lands
//! on a proxy that is there ([`ProxyMcu::publish`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use super::{lock, ProxyMcu, Publisher, Subscriber};
use crate::mcu::StreamType;

/// How long the subscribers of a lost publisher wait for it to be
/// published again (the publisher's client notices the loss when its
/// PeerConnection fails, which browsers take up to about 30 s for).
pub const MOVED_WINDOW: Duration = Duration::from_secs(120);

/// When a publisher was lost, and the sessions that received it.
type Lost = (Instant, Vec<Arc<str>>);

/// Per publishing (session, stream): what it lost with its proxy.
#[derive(Default)]
pub(super) struct Moved(HashMap<(Arc<str>, StreamType), Lost>);

impl Moved {
    fn add(&mut self, p: &Publisher, subs: &[Arc<Subscriber>]) {
        let now = Instant::now();
        self.0
            .retain(|_, (at, _)| now.duration_since(*at) < MOVED_WINDOW);
        if subs.is_empty() {
            return;
        }
        let entry = self
            .0
            .entry((p.session.clone(), p.stream))
            .or_insert_with(|| (now, Vec::new()));
        entry.0 = now;
        for s in subs {
            if !entry.1.contains(&s.key.0) {
                entry.1.push(s.key.0.clone());
            }
        }
    }

    fn take(&mut self, session: &Arc<str>, stream: StreamType) -> Vec<Arc<str>> {
        match self.0.remove(&(session.clone(), stream)) {
            Some((at, subs)) if at.elapsed() < MOVED_WINDOW => subs,
            _ => Vec::new(),
        }
    }

    /// A session left the call or ended: it neither publishes again nor
    /// waits for anyone.
    pub(super) fn forget_session(&mut self, session: &str) {
        self.0.retain(|k, _| &*k.0 != session);
        for (_, subs) in self.0.values_mut() {
            subs.retain(|s| &**s != session);
        }
    }
}

impl ProxyMcu {
    /// Notes the subscribers a publisher lost with its proxy.
    pub(super) fn remember_moved(&self, p: &Publisher, subs: &[Arc<Subscriber>]) {
        lock(&self.moved).add(p, subs);
    }

    /// After `session` published `stream` anew: subscribes everyone who
    /// received it on the lost proxy and pushes them the offer.
    pub(super) fn resubscribe_moved(&self, session: &Arc<str>, stream: StreamType) {
        let subs = lock(&self.moved).take(session, stream);
        if subs.is_empty() {
            return;
        }
        let Some(me) = self.me.upgrade() else {
            return;
        };
        tracing::info!(session = %session, stream = stream.as_str(), subscribers = subs.len(), "publisher moved to another proxy, offering it to its subscribers again");
        for sub in subs {
            let (m, key) = (me.clone(), (sub, session.clone(), stream));
            tokio::spawn(async move {
                if m.has_subscriber(&key.0, &key.1, stream) {
                    // It asked for an offer on its own meanwhile.
                    return;
                }
                let deliver = super::super::push_offer(&m.signals, &key);
                if let Err(e) = m.subscribe(&key, "", &Value::Null, deliver).await {
                    tracing::info!(subscriber = %key.0, publisher = %key.1, "offering the moved publisher failed: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcu::HeldCandidates;

    fn publisher(session: &str) -> Publisher {
        Publisher {
            session: session.into(),
            stream: StreamType::Video,
            conn: 0,
            id: "p".into(),
            sid: "1".into(),
            media: Default::default(),
            held: HeldCandidates::default(),
        }
    }

    fn subscriber(session: &str, publisher: &str) -> Arc<Subscriber> {
        Arc::new(Subscriber {
            key: (session.into(), publisher.into(), StreamType::Video),
            conn: 0,
            id: "s".into(),
            held: HeldCandidates::default(),
        })
    }

    #[test]
    fn subscribers_are_taken_once_and_leavers_are_dropped() {
        let mut m = Moved::default();
        let a: Arc<str> = "alice".into();
        m.add(
            &publisher("alice"),
            &[subscriber("bob", "alice"), subscriber("carol", "alice")],
        );
        m.add(&publisher("alice"), &[subscriber("bob", "alice")]);
        m.forget_session("carol");
        assert_eq!(m.take(&a, StreamType::Screen), Vec::<Arc<str>>::new());
        assert_eq!(m.take(&a, StreamType::Video), vec![Arc::<str>::from("bob")]);
        assert!(m.take(&a, StreamType::Video).is_empty());
        m.add(&publisher("alice"), &[subscriber("bob", "alice")]);
        m.forget_session("alice");
        assert!(m.take(&a, StreamType::Video).is_empty());
    }
}
