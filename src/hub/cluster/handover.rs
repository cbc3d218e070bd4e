//! A session moves to another process: resumed there, or taken by another
//! process when this one stops (`rolling.rs`). The holder hands it over.
//!
//! A claim (a resume on a process that does not hold the session):
//! 1. the resuming process asks where the session is (`ResumeRequest` with
//!    `peek`: to the process that created it while that one is alive, else
//!    to every process); the holder answers and keeps it (a process that
//!    handed it on answers with the process it went to);
//! 2. the claimer registers it as arriving and prepares its room
//!    (subscribed, snapshot): the room's traffic reaches it from now on;
//! 3. it claims it (`chunked`): the holder takes it out under its lock,
//!    publishes a `Changed` naming the claimer on the room's subject (room
//!    frames after it are the claimer's to keep, those before it are in the
//!    session's queue) and sends the session — in the state file's form,
//!    with its queue and its connection's unsent frames — in `Handover`
//!    parts of at most [`PART`] bytes on the claimer's subject;
//! 4. the claimer keeps what is delivered to the session after that
//!    `Changed` (and frames forwarded to it) and installs the session once
//!    the parts and the `Changed` are there (`arrival.rs`).
//!
//! A process of the previous release answers the first request with the
//! whole session (no `peek`): adopted as before.

use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

use bytes::Bytes;

use super::{owner_of, RemoteMember, HANDOVER_TIMEOUT};
use crate::api::server::{frame, Bye, Frame};
use crate::bus::{
    encode, process_subject, room_subject, Bus, Header, MemberInfo, MemberKind, SessionHandover,
    SUBJECT_ALL,
};
use crate::hub::outbox::CloseReason;
use crate::hub::room::RoomKey;
use crate::hub::session::{Session, SessionKind};
use crate::hub::statefile::{saved_session, SavedSession};
use crate::hub::{Hub, State};

/// Largest part of a session handed over: NATS refuses messages over its
/// `max_payload` (1 MiB unless configured smaller).
pub(super) const PART: usize = 256 * 1024;

/// A session handed over from here: where it went (a later request for it
/// is answered with that process).
pub(crate) struct MovedResume {
    /// The process it went to.
    pub pid: String,
    /// Session id.
    pub sid: String,
    /// Backend id.
    pub backend: String,
    /// Its room.
    pub room: Option<String>,
    /// When.
    pub at: Instant,
}

/// What a `ResumeRequest` asks.
#[derive(Clone)]
pub(crate) struct ResumeAsk {
    pub resume_id: String,
    pub to: String,
    pub peek: bool,
    pub chunked: bool,
}

impl State {
    /// Takes a local session (client, internal or virtual) out for
    /// process `to`: no leave, it stays a member of its room (now remote).
    /// The frames its connection had not sent go first in its queue; the
    /// connection is closed.
    pub(super) fn take_out(
        &mut self,
        sid: &str,
        to: &str,
        close: CloseReason,
    ) -> Option<(Session, MemberInfo)> {
        let s = self.sessions.map.get(sid)?;
        // A federation link goes with its session if it can resume there.
        if s.fed_link.as_ref().is_some_and(|l| !l.resumable()) {
            return None;
        }
        let mut member = self.member_info(sid)?;
        member.owner = to.to_string();
        let mut s = self.sessions.remove(sid)?;
        self.sessions.disconnected.remove(sid);
        if let Some(link) = &s.fed_link {
            // Ends here without a word to the remote server; `to` resumes
            // it (stopped before, so that it handed back what it held).
            let _ = link.stop();
        }
        if let Some(conn) = s.conn.take() {
            let mut pending = conn.take_pending();
            pending.append(&mut s.queue);
            s.queue = pending;
            if close == CloseReason::SessionResumed {
                conn.push(frame(
                    None,
                    "bye",
                    &Bye {
                        reason: Some("session_resumed"),
                    },
                ));
            }
            conn.close(close);
        }
        if let Some(key) = &s.room {
            self.cluster.remote.insert(
                s.id.clone(),
                RemoteMember {
                    info: member.clone(),
                    room: key.clone(),
                },
            );
            self.drop_room_if_unserved(key);
        }
        let now = Instant::now();
        self.cluster
            .moved
            .insert(s.id.clone(), (to.to_string(), now));
        if let Some(r) = &s.resume_id {
            self.cluster.moved_resume.insert(
                r.to_string(),
                MovedResume {
                    pid: to.to_string(),
                    sid: s.id.to_string(),
                    backend: s.backend.id.to_string(),
                    room: s.room.as_ref().map(|k| k.room.to_string()),
                    at: now,
                },
            );
        }
        Some((s, member))
    }

    /// Takes a local session out for another process that asked in the
    /// previous release's way: the whole session in the answer.
    pub(super) fn hand_over(&mut self, resume_id: &str, to: &str) -> Option<SessionHandover> {
        let sid = self.sessions.resume_ids.get(resume_id).cloned()?;
        // (Such a process adopts client sessions only, without links.)
        let s = self.sessions.map.get(&sid)?;
        if s.kind != SessionKind::Client || s.fed_link.is_some() {
            return None;
        }
        let (s, member) = self.take_out(&sid, to, CloseReason::SessionResumed)?;
        Some(SessionHandover {
            member,
            room: s.room.as_ref().map(|k| k.room.to_string()),
            resume_id: resume_id.to_string(),
            backend: s.backend.id.to_string(),
            backend_base: s.backend_base.to_string(),
            backend_url: s.backend_url.to_string(),
            permissions: s.permissions.clone(),
            queue: s.queue.iter().map(|f| f.to_string()).collect(),
            actor: s.federated.as_ref().and_then(|f| f.actor.clone()),
            peek: false,
            virtuals: Vec::new(),
        })
    }

    /// Hands a local session to `to` in parts, after a `Changed` naming
    /// `to` on its room's subject; returns it (gone from here).
    /// Its publishers here close and their clients renegotiate
    /// ([`State::renegotiate_moving`]).
    pub(crate) fn hand_over_parts(
        &mut self,
        sid: &str,
        to: &str,
        close: CloseReason,
    ) -> Option<Session> {
        self.hand_over_parts_inner(sid, to, close, None)
    }

    /// [`State::hand_over_parts`] in a rolling restart: `extra` frames
    /// queued for the session after what it had (delivered once it
    /// resumes); its publishers stay as `rolling.rs` planned.
    pub(super) fn hand_over_parts_with(
        &mut self,
        sid: &str,
        to: &str,
        close: CloseReason,
        extra: Vec<Frame>,
    ) -> Option<Session> {
        self.hand_over_parts_inner(sid, to, close, Some(extra))
    }

    fn hand_over_parts_inner(
        &mut self,
        sid: &str,
        to: &str,
        close: CloseReason,
        rolling: Option<Vec<Frame>>,
    ) -> Option<Session> {
        let (mut s, member) = self.take_out(sid, to, close)?;
        let moving = match rolling {
            Some(extra) => {
                s.queue.extend(extra);
                Vec::new()
            }
            None => self.renegotiate_moving(&mut s),
        };
        if let Some(key) = &s.room {
            let h = Header::Changed {
                from: self.bus.pid().to_string(),
                backend: key.backend.to_string(),
                room: key.room.to_string(),
                member,
            };
            self.bus
                .publish(room_subject(&key.backend, &key.room), encode(&h, None));
        }
        let mut saved = saved_session(&s);
        // Its subscribers waiting for it to publish again go with it.
        saved.resubscribe = moving;
        if let Some(m) = &self.mcu {
            saved.resubscribe.extend(
                m.take_resubscribe(&s.id)
                    .into_iter()
                    .map(|(sub, stream)| (sub, stream.as_str().to_string())),
            );
        }
        send_parts(&*self.bus, to, &saved);
        Some(s)
    }

    /// Hands internal client `sid` to `to` in parts, its virtual sessions
    /// after it (they live as long as it, on its process); returns how
    /// many sessions went.
    pub(crate) fn hand_over_with_virtuals(
        &mut self,
        sid: &str,
        to: &str,
        close: CloseReason,
    ) -> Vec<Session> {
        let virtuals: Vec<Arc<str>> = self
            .sessions
            .map
            .get(sid)
            .map(|s| s.virtuals.values().cloned().collect())
            .unwrap_or_default();
        let mut gone: Vec<Session> = self.hand_over_parts(sid, to, close).into_iter().collect();
        if !gone.is_empty() {
            for v in virtuals {
                gone.extend(self.hand_over_parts(&v, to, close));
            }
        }
        gone
    }

    /// Where a local session is, for a `peek`: here, and it stays.
    fn peek(&self, sid: &str) -> Option<SessionHandover> {
        let s = self.sessions.map.get(sid)?;
        let unmovable_link = s.fed_link.as_ref().is_some_and(|l| !l.resumable());
        if !matches!(s.kind, SessionKind::Client | SessionKind::Internal) || unmovable_link {
            return None;
        }
        Some(SessionHandover {
            member: self.member_info(sid)?,
            room: s.room.as_ref().map(|k| k.room.to_string()),
            resume_id: s.resume_id.as_deref()?.to_string(),
            backend: s.backend.id.to_string(),
            backend_base: s.backend_base.to_string(),
            backend_url: s.backend_url.to_string(),
            permissions: None,
            queue: Vec::new(),
            actor: None,
            peek: true,
            virtuals: self.virtual_entries(s),
        })
    }

    /// A `ResumeRequest` for a session this process holds, handed on, or
    /// is getting (answered once it is here).
    pub(super) fn answer_resume(&mut self, ask: ResumeAsk, reply: String) {
        let answer = match self
            .sessions
            .resume_ids
            .get(ask.resume_id.as_str())
            .cloned()
        {
            Some(sid) if ask.peek => self.peek(&sid).map(json),
            Some(sid) if ask.chunked => {
                let gone = self.hand_over_with_virtuals(&sid, &ask.to, CloseReason::SessionResumed);
                (!gone.is_empty()).then(|| Bytes::from_static(b"{}"))
            }
            Some(_) => self.hand_over(&ask.resume_id, &ask.to).map(json),
            None => {
                if let Some(c) = self
                    .cluster
                    .arriving
                    .values_mut()
                    .find(|c| c.resume_id == ask.resume_id)
                {
                    c.waiting.push((ask, reply));
                    return;
                }
                match self.cluster.moved_resume.get(&ask.resume_id) {
                    Some(m) if ask.peek && m.pid != ask.to => Some(json(moved_peek(m, &ask))),
                    _ => None,
                }
            }
        };
        if let Some(p) = answer {
            self.bus.reply(reply, p);
        }
    }
}

fn json(h: SessionHandover) -> Bytes {
    Bytes::from(serde_json::to_vec(&h).unwrap_or_default())
}

/// The answer to a `peek` for a session that went on to another process.
fn moved_peek(m: &MovedResume, ask: &ResumeAsk) -> SessionHandover {
    SessionHandover {
        member: MemberInfo {
            sid: m.sid.clone(),
            owner: m.pid.clone(),
            userid: None,
            user: None,
            roomsessionid: None,
            features: Vec::new(),
            kind: MemberKind::Client,
            virtual_owner: None,
            client_sid: None,
            in_call: 0,
            flags: 0,
            federated: false,
            actor: None,
        },
        room: m.room.clone(),
        resume_id: ask.resume_id.clone(),
        backend: m.backend.clone(),
        backend_base: String::new(),
        backend_url: String::new(),
        permissions: None,
        queue: Vec::new(),
        actor: None,
        peek: true,
        virtuals: Vec::new(),
    }
}

/// Publishes a session (the state file's form) to process `to` in
/// `Handover` parts, in order on its subject.
fn send_parts(bus: &dyn Bus, to: &str, s: &SavedSession) {
    let bytes = serde_json::to_vec(s).unwrap_or_default();
    let parts = bytes.len().div_ceil(PART).max(1) as u32;
    for (i, chunk) in bytes.chunks(PART).enumerate() {
        let h = Header::Handover {
            from: bus.pid().to_string(),
            sid: s.id.clone(),
            part: i as u32,
            parts,
        };
        bus.publish(process_subject(to), encode(&h, Some(chunk)));
    }
}

impl Hub {
    /// Asks who holds `resume_id` (`peek`): the process that created it
    /// while alive, else (or when it does not answer and has gone
    /// meanwhile) every process.
    async fn find_session(self: &Arc<Self>, resume_id: &str) -> Option<SessionHandover> {
        let (bus, target) = {
            let st = self.lock();
            let owner = owner_of(resume_id)?.to_string();
            if !st.bus.clustered() {
                return None;
            }
            // Created here and handed on: asked where it went. Created
            // elsewhere: asked there while that process is alive.
            let target = if owner == st.bus.pid() {
                Some(st.cluster.moved_resume.get(resume_id)?.pid.clone())
            } else {
                st.cluster.processes.contains_key(&owner).then_some(owner)
            };
            (st.bus.clone(), target)
        };
        let h = Header::ResumeRequest {
            resume_id: resume_id.to_string(),
            to: bus.pid().to_string(),
            peek: true,
            chunked: false,
        };
        if let Some(target) = target {
            let replies = bus
                .request(
                    process_subject(&target),
                    encode(&h, None),
                    1,
                    HANDOVER_TIMEOUT,
                )
                .await;
            // (NATS answers an empty "no responders" for a process gone.)
            if let Some(h) = replies.iter().find_map(|r| serde_json::from_slice(r).ok()) {
                return Some(h);
            }
        }
        // Gone (a rolling restart: its sessions are elsewhere) or it does
        // not hold the session any more: whoever holds it answers.
        let replies = bus
            .request(
                SUBJECT_ALL.to_string(),
                encode(&h, None),
                1,
                HANDOVER_TIMEOUT,
            )
            .await;
        replies.iter().find_map(|r| serde_json::from_slice(r).ok())
    }

    /// A resume of a session this process does not hold: waits for it if
    /// it is on its way here, else claims it from its holder. Returns what
    /// a holder of the previous release handed over at once (to adopt).
    pub(crate) async fn claim_session(
        self: &Arc<Self>,
        resume_id: &str,
    ) -> Option<SessionHandover> {
        let on_its_way = self.lock().arrival_of(resume_id);
        if let Some(mut ready) = on_its_way {
            let _ = tokio::time::timeout(HANDOVER_TIMEOUT, ready.wait_for(|r| *r)).await;
            return None;
        }
        let h = self.find_session(resume_id).await?;
        if !h.peek {
            return Some(h);
        }
        let backend = self.registry().by_id(&h.backend)?;
        let key = h.room.as_ref().map(|r| RoomKey {
            backend: backend.id.clone(),
            room: r.as_str().into(),
        });
        let sid = h.member.sid.clone();
        let mut rooms: Vec<RoomKey> = key.into_iter().collect();
        let mut ready = {
            let mut st = self.lock();
            let ready = st.expect_session(&sid, resume_id, backend.clone(), !rooms.is_empty());
            // An internal client's virtual sessions come with it (installed
            // once each is here; the sweep settles a late one).
            for v in &h.virtuals {
                let vkey = v.room.as_ref().map(|r| RoomKey {
                    backend: backend.id.clone(),
                    room: r.as_str().into(),
                });
                st.expect_session(&v.sid, "", backend.clone(), vkey.is_some());
                if let Some(k) = vkey.filter(|k| !rooms.contains(k)) {
                    rooms.push(k);
                }
            }
            ready
        };
        futures_util::future::join_all(rooms.iter().map(|k| self.prepare_room(k))).await;
        let bus = self.lock().bus.clone();
        let claim = Header::ResumeRequest {
            resume_id: resume_id.to_string(),
            to: bus.pid().to_string(),
            peek: false,
            chunked: true,
        };
        let acked = bus
            .request(
                process_subject(&h.member.owner),
                encode(&claim, None),
                1,
                HANDOVER_TIMEOUT,
            )
            .await
            .iter()
            .any(|r| !r.is_empty());
        if acked {
            let _ = tokio::time::timeout(HANDOVER_TIMEOUT, ready.wait_for(|r| *r)).await;
        }
        // Installed when its parts are here (a late `Changed` does not
        // hold it back any longer), forgotten otherwise.
        self.mutate(|st| st.settle_arrival(&sid));
        self.timer.notify_one();
        None
    }

    /// Installs a session handed over by a process of the previous
    /// release (resume here).
    pub(crate) fn adopt_session(
        &self,
        st: &mut State,
        h: SessionHandover,
        conn: Arc<crate::hub::outbox::Outbox>,
    ) -> Option<Arc<str>> {
        let backend = self.registry().by_id(&h.backend)?;
        let sid: Arc<str> = h.member.sid.as_str().into();
        let resume_id: Arc<str> = h.resume_id.as_str().into();
        let room = h.room.as_ref().map(|r| RoomKey {
            backend: backend.id.clone(),
            room: r.as_str().into(),
        });
        let user_id: Option<Arc<str>> = h.member.userid.as_deref().map(Arc::from);
        st.cluster.remote.remove(&sid);
        st.cluster.moved.remove(&sid);
        st.sessions.insert(Session {
            id: sid.clone(),
            resume_id: Some(resume_id),
            kind: SessionKind::Client,
            backend: backend.clone(),
            backend_base: h.backend_base.as_str().into(),
            backend_url: h.backend_url.as_str().into(),
            user_id,
            user: h.member.user.map(Arc::from),
            features: h.member.features,
            room: room.clone(),
            room_session_id: h.member.roomsessionid.as_deref().map(Arc::from),
            permissions: h.permissions,
            conn: Some(conn),
            queue: h.queue.into_iter().map(Frame::from).collect(),
            queue_bytes: 0,
            carried: (0, 0),
            in_call: h.member.in_call,
            flags: h.member.flags,
            virtuals: HashMap::new(),
            fed_link: None,
            client_ip: None,
            country: None,
            mcu_tasks: None,
            // A federated session stays one, with its actor.
            federated: h
                .member
                .federated
                .then(|| Box::new(crate::hub::session::Federated { actor: h.actor })),
        });
        if let Some(key) = &room {
            st.add_local_member(key, &sid, &h.backend_url, &h.backend_base);
        }
        Some(sid)
    }
}

impl State {
    /// A session that came from another process is a local member of its
    /// room again; the others hear it is here.
    pub(super) fn add_local_member(
        &mut self,
        key: &RoomKey,
        sid: &Arc<str>,
        url: &str,
        base: &str,
    ) {
        let r = self.rooms.get_or_insert(key, url.into(), base.into());
        if !r.members.contains(sid) {
            r.members.push(sid.clone());
        }
        let rs = self
            .sessions
            .map
            .get(sid)
            .and_then(|s| s.room_session_id.clone());
        if let (Some(rs), Some(r)) = (rs, self.rooms.get_mut(key)) {
            r.nc_sessions.insert(rs, sid.clone());
        }
        self.publish_member(key, sid, false);
    }
}
