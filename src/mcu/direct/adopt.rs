//! A rolling restart without a media gap: the stopping process hands what
//! its Janus session(s) serve ([`SavedMcu`]) to one successor, which claims
//! those sessions on its own Janus connection (`janus_extra.rs`) and serves
//! the publishers and subscribers on their handles from then on
//! (`hub/cluster/rolling_claim.rs`). A session it cannot claim is left to
//! the stopping process, whose clients renegotiate (`rolling_media.rs`).
//! When the successor stops in turn, what it claimed goes on with its own
//! session to the next one (each object names its Janus session).
//!
//! Once the stopping process composed what it hands over
//! ([`JanusMcu::hand_over`]), it makes no new publisher or subscriber
//! ([`McuError::HandedOver`]; one under way when that happens is undone
//! when it would be registered): the successor would not know it and
//! nobody would serve it.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::super::{McuError, StreamType};
use super::restore::SavedMcu;
use super::{JanusMcu, Owner, Registry, Served};

impl SavedMcu {
    /// The Janus session of an object (0: the main one).
    fn session_or_main(&self, s: u64) -> u64 {
        if s == 0 {
            self.janus_session
        } else {
            s
        }
    }

    /// Every Janus session of the objects.
    fn sessions(&self) -> BTreeSet<u64> {
        let p = self.publishers.iter().map(|p| p.janus_session);
        let s = self.subscribers.iter().map(|s| s.janus_session);
        p.chain(s).map(|x| self.session_or_main(x)).collect()
    }

    /// The handles of the objects of Janus session `session`.
    fn handles_of(&self, session: u64) -> Vec<u64> {
        let p = self
            .publishers
            .iter()
            .filter(|p| self.session_or_main(p.janus_session) == session)
            .map(|p| p.handle);
        let s = self
            .subscribers
            .iter()
            .filter(|s| self.session_or_main(s.janus_session) == session)
            .map(|s| s.handle);
        p.chain(s).collect()
    }
}

impl JanusMcu {
    /// A rolling restart: what this process serves, for its successor to
    /// claim ([`JanusMcu::saved`]). From now on no new publisher or
    /// subscriber is made here (the flag is set before the registry is
    /// read, and registering checks it under the registry's lock: an
    /// object is either in what is returned or refused).
    pub fn hand_over(&self) -> Option<SavedMcu> {
        self.handed_over.store(true, Ordering::SeqCst);
        self.saved()
    }

    /// The successor claimed nothing: new publishers and subscribers are
    /// made here again (the renegotiation path covers what is here).
    pub fn hand_over_failed(&self) {
        self.handed_over.store(false, Ordering::SeqCst);
    }

    /// [`McuError::HandedOver`] once [`JanusMcu::hand_over`] ran (and did
    /// not fail).
    pub(super) fn refuse_if_handed_over(&self) -> Result<(), McuError> {
        if self.handed_over.load(Ordering::SeqCst) {
            return Err(McuError::HandedOver);
        }
        Ok(())
    }

    /// Serves the objects of another process's Janus session(s) by
    /// claiming them on this connection; returns the sessions claimed
    /// (none when Janus is not connected or `saved` is of another Janus).
    /// Objects of a session that could not be claimed are not kept.
    pub async fn adopt(self: &Arc<Self>, saved: SavedMcu) -> Vec<u64> {
        let (claimed, lost) = self.adopt_sessions(saved).await;
        self.clients.uncount(&lost);
        claimed
    }

    /// Claims the sessions of `saved`; returns the sessions claimed and
    /// the objects lost with the others.
    async fn adopt_sessions(self: &Arc<Self>, saved: SavedMcu) -> (Vec<u64>, Registry) {
        if saved.url != self.config().url || !self.gw.connected() {
            tracing::warn!("cannot take the Janus sessions of another process here");
            let mut lost = Registry::default();
            self.insert_saved(&mut lost, saved);
            return (Vec::new(), lost);
        }
        let sessions = saved.sessions();
        let groups: Vec<(u64, Vec<u64>)> = sessions
            .iter()
            .map(|s| (*s, saved.handles_of(*s)))
            .collect();
        // Known before the claim: their events come here from then on.
        for (session, handles) in &groups {
            self.gw.adopt_handles(*session, handles);
        }
        self.insert_saved(&mut self.clients.lock(), saved);
        let mut claimed = Vec::new();
        let mut lost = Registry::default();
        for (session, handles) in groups {
            match self.gw.claim_extra(session).await {
                Ok(()) => {
                    tracing::info!(
                        session,
                        objects = handles.len(),
                        "claimed the Janus session of a process that stopped"
                    );
                    claimed.push(session);
                }
                Err(e) => {
                    tracing::warn!(
                        session,
                        "cannot claim the Janus session of a process that stopped ({e})"
                    );
                    self.gw.drop_extra(session);
                    self.take_handles(&handles, &mut lost);
                }
            }
        }
        self.clients.notify_published();
        self.changed();
        (claimed, lost)
    }

    /// Moves the objects on `handles` out of the registry into `into`.
    fn take_handles(&self, handles: &[u64], into: &mut Registry) {
        let mut reg = self.clients.lock();
        for h in handles {
            match reg.by_id.remove(h) {
                Some(Owner::Publisher(p)) => {
                    reg.publishers.remove(&(p.session.clone(), p.stream));
                    into.publishers.insert((p.session.clone(), p.stream), p);
                }
                Some(Owner::Subscriber(s) | Owner::Joining(s)) => {
                    reg.subscribers.remove(&s.key);
                    into.subscribers.insert(s.key.clone(), s);
                }
                None => {}
            }
        }
    }

    /// What this process serves on Janus sessions other than `claimed`
    /// (see [`Served`]).
    pub fn served_except(&self, claimed: &[u64]) -> Served {
        self.served_where(|_| true, |h| !claimed.contains(&self.gw.session_of(h)))
    }

    /// The publishers of `session` and their subscribers (see
    /// [`Served`]).
    pub fn served_of(&self, session: &str) -> Served {
        self.served_where(|p| p == session, |_| true)
    }

    /// Closes the publishers of `session` (with their subscribers).
    pub fn close_publishers(self: &Arc<Self>, session: Arc<str>) {
        let m = self.clone();
        tokio::spawn(async move {
            for stream in [StreamType::Video, StreamType::Screen] {
                m.close_stream(&session, stream).await;
            }
        });
    }
}

#[cfg(test)]
#[path = "adopt_tests.rs"]
mod tests;
