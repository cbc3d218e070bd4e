//! Sessions on their way to this process (`handover.rs`): registered
//! before their holder lets them go, filled with the `Handover` parts and
//! what is delivered to them meanwhile, installed once their parts and the
//! holder's `Changed` are here.

use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;

use bytes::Bytes;

use super::handover::ResumeAsk;
use super::PART;
use crate::backend::registry::Backend;
use crate::hub::room::RoomKey;
use crate::hub::session::SessionKind;
use crate::hub::sessions::Arrival;
use crate::hub::statefile::{session_of, SavedSession};
use crate::hub::{Hub, State};

/// How long a session may be on its way: longer than a room's
/// preparation and a hand-over together.
pub(super) const ARRIVAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest session taken (its queue is bounded by the resume queue's
/// limits on the other side; this bounds what a broken sender costs).
const MAX_PARTS: u32 = (256 << 20) / PART as u32;

/// A session on its way here.
pub(crate) struct Claim {
    /// Its resume id.
    pub resume_id: String,
    /// Its backend.
    pub backend: Arc<Backend>,
    /// Registered at.
    pub since: Instant,
    /// The holder's `Changed` naming this process arrived (or it has no
    /// room).
    pub marked: bool,
    /// The parts so far.
    pub parts: Vec<Bytes>,
    /// The session, once every part is here.
    pub saved: Option<SavedSession>,
    /// `true` once it is installed (or given up).
    pub ready: watch::Sender<bool>,
    /// Requests for it, answered once it is here.
    pub waiting: Vec<(ResumeAsk, String)>,
}

impl State {
    /// Registers a session about to be handed to this process.
    pub(super) fn expect_session(
        &mut self,
        sid: &str,
        resume_id: &str,
        backend: Arc<Backend>,
        in_room: bool,
    ) -> watch::Receiver<bool> {
        let (ready, rx) = watch::channel(false);
        self.cluster.arriving.insert(
            sid.into(),
            Claim {
                resume_id: resume_id.to_string(),
                backend,
                since: Instant::now(),
                marked: !in_room,
                parts: Vec::new(),
                saved: None,
                ready,
                waiting: Vec::new(),
            },
        );
        self.sessions
            .arriving
            .insert(sid.into(), Arrival::default());
        rx
    }

    /// The session with this resume id on its way here, if any.
    pub(super) fn arrival_of(&self, resume_id: &str) -> Option<watch::Receiver<bool>> {
        self.cluster
            .arriving
            .values()
            .find(|c| c.resume_id == resume_id)
            .map(|c| c.ready.subscribe())
    }

    /// The holder's `Changed` naming this process: room frames delivered
    /// from now on are the session's. False if no such session is coming.
    pub(super) fn arrival_marked(&mut self, sid: &str) -> bool {
        let Some(c) = self.cluster.arriving.get_mut(sid) else {
            return false;
        };
        c.marked = true;
        if let Some(a) = self.sessions.arriving.get_mut(sid) {
            a.rooms = true;
        }
        self.try_install(sid);
        true
    }

    /// One part of a session handed over to this process.
    pub(super) fn arrival_part(
        &mut self,
        from: &str,
        sid: &str,
        part: u32,
        parts: u32,
        body: Bytes,
    ) {
        let Some(c) = self.cluster.arriving.get_mut(sid) else {
            tracing::warn!(session = %sid, process = %from, "hand-over part of a session not expected here, ignored");
            return;
        };
        if part as usize != c.parts.len() || part >= parts || parts > MAX_PARTS {
            tracing::warn!(session = %sid, process = %from, part, parts, "hand-over part out of order, session given up");
            self.give_up_arrival(sid);
            return;
        }
        c.parts.push(body);
        if c.parts.len() < parts as usize {
            return;
        }
        let whole: Vec<u8> = c.parts.drain(..).flat_map(|b| b.to_vec()).collect();
        match serde_json::from_slice::<SavedSession>(&whole) {
            Ok(saved) if saved.id == sid => {
                c.saved = Some(saved);
                self.try_install(sid);
            }
            _ => {
                tracing::warn!(session = %sid, process = %from, "hand-over not readable, session given up");
                self.give_up_arrival(sid);
            }
        }
    }

    fn try_install(&mut self, sid: &str) {
        if self
            .cluster
            .arriving
            .get(sid)
            .is_some_and(|c| c.marked && c.saved.is_some())
        {
            self.install_arrival(sid);
        }
    }

    /// After a claim: installed if its parts are here, forgotten otherwise.
    pub(super) fn settle_arrival(&mut self, sid: &str) {
        match self.cluster.arriving.get(sid) {
            Some(c) if c.saved.is_some() => self.install_arrival(sid),
            Some(_) => self.give_up_arrival(sid),
            None => {}
        }
    }

    /// Sessions on their way for longer than [`ARRIVAL_TIMEOUT`].
    pub(super) fn sweep_arrivals(&mut self, now: Instant) {
        let late: Vec<Arc<str>> = self
            .cluster
            .arriving
            .iter()
            .filter(|(_, c)| now.duration_since(c.since) > ARRIVAL_TIMEOUT)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in late {
            self.settle_arrival(&sid);
        }
    }

    fn give_up_arrival(&mut self, sid: &str) {
        self.sessions.arriving.remove(sid);
        if let Some(c) = self.cluster.arriving.remove(sid) {
            tracing::warn!(session = %sid, "a session handed to this process did not arrive");
            let _ = c.ready.send(true);
        }
        self.end_orphans(sid);
    }

    /// Virtual sessions here whose internal client is neither here nor on
    /// its way (it did not arrive): they end with it, as they would have.
    fn end_orphans(&mut self, owner: &str) {
        if self.sessions.map.contains_key(owner) || self.cluster.arriving.contains_key(owner) {
            return;
        }
        let orphans: Vec<Arc<str>> = self
            .sessions
            .map
            .values()
            .filter(|s| matches!(&s.kind, SessionKind::Virtual { owner: o, .. } if &**o == owner))
            .map(|s| s.id.clone())
            .collect();
        for v in orphans {
            tracing::warn!(session = %v, "the internal client of a virtual session handed over did not arrive, it ends");
            self.end_session(&v, None);
        }
    }

    /// Links an arrived session with its internal client or its virtual
    /// sessions (whichever came first); false for a virtual session whose
    /// internal client is not coming.
    fn link_virtuals(&mut self, id: &Arc<str>) -> bool {
        let Some(s) = self.sessions.map.get(id) else {
            return false;
        };
        match &s.kind {
            SessionKind::Virtual {
                owner, client_sid, ..
            } => {
                let (owner, client_sid) = (owner.clone(), client_sid.clone());
                if let Some(o) = self.sessions.map.get_mut(&owner) {
                    o.virtuals.insert(client_sid, id.clone());
                    return true;
                }
                self.cluster.arriving.contains_key(&owner)
            }
            SessionKind::Internal => {
                let mine: Vec<(String, Arc<str>)> = self
                    .sessions
                    .map
                    .values()
                    .filter_map(|v| match &v.kind {
                        SessionKind::Virtual {
                            owner, client_sid, ..
                        } if owner == id => Some((client_sid.clone(), v.id.clone())),
                        _ => None,
                    })
                    .collect();
                if let Some(o) = self.sessions.map.get_mut(id) {
                    o.virtuals.extend(mine);
                }
                true
            }
            SessionKind::Client => true,
        }
    }

    /// The session as a disconnected session of this process (resumable
    /// for `resumetimeout`), its queue followed by what was delivered to it
    /// on its way; a local member of its room.
    fn install_arrival(&mut self, sid: &str) {
        let Some(mut c) = self.cluster.arriving.remove(sid) else {
            return;
        };
        let arrived = self.sessions.arriving.remove(sid).unwrap_or_default();
        let Some(mut saved) = c.saved.take() else {
            let _ = c.ready.send(true);
            return;
        };
        let resubscribe = std::mem::take(&mut saved.resubscribe);
        let link = saved.federation.take();
        let mut s = session_of(saved, c.backend.clone());
        s.queue.extend(arrived.frames);
        s.queue_bytes = s.queue.iter().map(|f| f.len()).sum();
        s.carried = (s.queue.len(), s.queue_bytes);
        let (id, key) = (s.id.clone(), s.room.clone());
        let (url, base) = (s.backend_url.clone(), s.backend_base.clone());
        self.cluster.remote.remove(&id);
        self.cluster.moved.remove(&id);
        self.cluster.moved_resume.remove(&c.resume_id);
        let is_virtual = s.is_virtual();
        self.sessions.insert(s);
        // A virtual session lives as long as its internal client.
        if !is_virtual {
            let deadline = Instant::now() + self.sessions.limits.resume_timeout;
            self.sessions.disconnected.insert(id.clone(), deadline);
        }
        if arrived.overflow && !is_virtual {
            self.sessions.doomed.push(id.clone());
        }
        if let Some(key) = &key {
            self.add_local_member(key, &id, &url, &base);
        }
        if !self.link_virtuals(&id) {
            tracing::warn!(session = %id, "virtual session handed over without its internal client, it ends");
            self.end_session(&id, None);
        }
        if let Some(m) = &self.mcu {
            for (sub, stream) in resubscribe {
                if let Some(stream) = crate::mcu::StreamType::parse(&stream) {
                    m.expect_republish(&sub, &id, stream);
                }
            }
        }
        if let Some(link) = link {
            // Its federation link resumes on the remote server from here.
            self.relink(&id, link);
        }
        tracing::info!(session = %id, "session taken over from another process");
        let _ = c.ready.send(true);
        for (ask, reply) in c.waiting {
            self.answer_resume(ask, reply);
        }
    }
}

impl Hub {
    /// A stopping process asks this one to take sessions: registered as
    /// arriving, their rooms prepared, then answered.
    pub(super) fn park_request(
        self: &Arc<Self>,
        sessions: Vec<crate::bus::ParkEntry>,
        reply: String,
    ) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut rooms: Vec<RoomKey> = Vec::new();
            {
                let mut st = hub.lock();
                for e in sessions {
                    let Some(backend) = hub.registry().by_id(&e.backend) else {
                        continue;
                    };
                    if st.sessions.map.contains_key(e.sid.as_str()) {
                        continue;
                    }
                    hub.expect_republish(&e);
                    let key = e.room.map(|r| RoomKey {
                        backend: backend.id.clone(),
                        room: r.into(),
                    });
                    st.expect_session(&e.sid, &e.resume_id, backend, key.is_some());
                    if let Some(k) = key.filter(|k| !rooms.contains(k)) {
                        rooms.push(k);
                    }
                }
            }
            futures_util::future::join_all(rooms.iter().map(|k| hub.prepare_room(k))).await;
            let bus = hub.lock().bus.clone();
            bus.reply(reply, Bytes::from_static(b"{}"));
        });
    }

    /// The subscribers of a session's publishers lost with the stopping
    /// process get an offer once it publishes here again
    /// (`rolling_media.rs`).
    fn expect_republish(&self, e: &crate::bus::ParkEntry) {
        let Some(mcu) = self.mcu.get() else {
            return;
        };
        for (sub, stream) in &e.resubscribe {
            if let Some(stream) = crate::mcu::StreamType::parse(stream) {
                mcu.expect_republish(sub, &e.sid, stream);
            }
        }
    }

    /// Which of these sessions this process holds or has whole on their
    /// way (answered to the stopping process that handed them over).
    pub(super) fn parked_request(&self, sids: Vec<String>, reply: String) {
        let st = self.lock();
        let taken: Vec<&String> = sids
            .iter()
            .filter(|s| {
                st.sessions.map.contains_key(s.as_str())
                    || st
                        .cluster
                        .arriving
                        .get(s.as_str())
                        .is_some_and(|c| c.saved.is_some())
            })
            .collect();
        st.bus.reply(
            reply,
            Bytes::from(serde_json::to_vec(&taken).unwrap_or_default()),
        );
    }
}
