//! The cluster side of a process: applies what arrives from the bus,
//! announces the process, notices processes that went away.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{body_frame, DISCOVERY_WINDOW, HEARTBEAT_INTERVAL, PROCESS_TIMEOUT};
use crate::api::server::event_frame;
use crate::bus::{
    decode, encode, process_subject, Header, Inbound, MemberInfo, MemberKind, BUS_VERSION,
    SUBJECT_ALL,
};
use crate::hub::outbox::Outbox;
use crate::hub::room::RoomKey;
use crate::hub::{Hub, State};

impl State {
    /// Runs `f` and returns, with its result, the outboxes its deliveries
    /// left more than half full.
    pub(crate) fn collecting_congestion<R>(
        &mut self,
        f: impl FnOnce(&mut State) -> R,
    ) -> (R, Vec<Arc<crate::hub::outbox::Outbox>>) {
        self.sessions.congested = Some(Vec::new());
        let r = f(self);
        let c = self.sessions.congested.take().unwrap_or_default();
        (r, c)
    }

    /// This process's heartbeat: its id and client sessions per backend.
    pub(crate) fn heartbeat_message(&self) -> Bytes {
        let counts = self
            .sessions
            .counts
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let h = Header::Heartbeat {
            from: self.bus.pid().to_string(),
            counts,
            version: BUS_VERSION,
        };
        encode(&h, None)
    }
}

impl Hub {
    /// Runs the cluster side of the hub: applies what arrives from the bus,
    /// announces this process, and notices processes that went away.
    pub fn spawn_cluster(
        self: &Arc<Self>,
        mut inbound: mpsc::Receiver<Inbound>,
        cancel: CancellationToken,
    ) {
        self.spawn_resync(cancel.clone());
        let hub = self.clone();
        let c = cancel.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = c.cancelled() => return,
                    m = inbound.recv() => m,
                };
                let Some(msg) = msg else { return };
                // Never waits for a local recipient: a sender of another
                // process is held back by its own process (`pacing.rs`).
                hub.apply_inbound(msg).await;
            }
        });
        let hub = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                hub.heartbeat();
            }
        });
    }

    /// Tells the other processes this one stops: they treat its sessions as
    /// gone at once instead of after the process timeout.
    pub async fn goodbye(&self) {
        let bus = {
            let st = self.lock();
            if !st.bus.clustered() {
                return;
            }
            let h = Header::Goodbye {
                from: st.bus.pid().to_string(),
            };
            st.bus.publish(SUBJECT_ALL.to_string(), encode(&h, None));
            st.bus.clone()
        };
        bus.flush().await;
    }

    /// Learns the other processes before serving clients: every process
    /// answers a `Discover` request with its heartbeat. Of two processes
    /// starting at once, at least one subscribed before the other asked, so
    /// both know each other afterwards (the answer tells the asker).
    pub async fn discover_peers(&self) {
        let bus = {
            let st = self.lock();
            if !st.bus.clustered() {
                return;
            }
            st.bus.clone()
        };
        let h = Header::Discover {
            from: bus.pid().to_string(),
            version: BUS_VERSION,
        };
        let replies = bus
            .request(
                SUBJECT_ALL.to_string(),
                encode(&h, None),
                usize::MAX,
                DISCOVERY_WINDOW,
            )
            .await;
        let mut st = self.lock();
        for r in replies {
            if let Some((
                Header::Heartbeat {
                    from,
                    counts,
                    version,
                },
                _,
            )) = decode(&r)
            {
                if from != bus.pid() {
                    st.heard(from, counts, version);
                }
            }
        }
        tracing::info!(
            peers = st.cluster.processes.len(),
            "cluster peers discovered"
        );
    }

    fn heartbeat(&self) {
        let mut st = self.lock();
        st.bus
            .publish(SUBJECT_ALL.to_string(), st.heartbeat_message());
        // Processes that went silent: their sessions are gone.
        let now = Instant::now();
        let dead: Vec<String> = st
            .cluster
            .processes
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) > PROCESS_TIMEOUT)
            .map(|(pid, _)| pid.clone())
            .collect();
        for pid in dead {
            tracing::warn!(process = %pid, "process went silent, its sessions leave");
            st.cluster.processes.remove(&pid);
            self.process_gone(&mut st, &pid);
        }
        st.follow_versions();
        let keep = st.sessions.limits.resume_timeout * 2;
        st.cluster
            .moved
            .retain(|_, (_, at)| now.duration_since(*at) < keep);
        st.cluster
            .moved_resume
            .retain(|_, m| now.duration_since(m.at) < keep);
        st.sweep_arrivals(now);
    }

    fn process_gone(&self, st: &mut State, pid: &str) {
        let gone: Vec<(Arc<str>, RoomKey, MemberInfo)> = st
            .cluster
            .remote
            .iter()
            // A session on its way here is not gone with its holder.
            .filter(|(sid, r)| r.info.owner == pid && !st.sessions.arriving.contains_key(*sid))
            .map(|(sid, r)| (sid.clone(), r.room.clone(), r.info.clone()))
            .collect();
        // The process with the smallest id among the survivors tells
        // Nextcloud, so it is told once.
        let leader = st
            .cluster
            .processes
            .keys()
            .all(|p| p.as_str() > st.bus.pid());
        for (sid, key, info) in gone {
            st.remove_remote(&key, &sid);
            if leader && info.kind == MemberKind::Client {
                if let (Some(rs), Some(b)) =
                    (info.roomsessionid, self.registry().by_id(&key.backend))
                {
                    let (url, base) = self.room_urls(&key);
                    st.effects.push(crate::hub::Effect::Left {
                        to: crate::hub::Nextcloud {
                            url,
                            base,
                            secret: b.secret.clone(),
                        },
                        room: key.room.clone(),
                        user_id: info.userid.as_deref().map(Arc::from),
                        room_session_id: rs.as_str().into(),
                        // As the leave its own process would have sent.
                        actor: info.actor,
                    });
                }
            }
            st.drop_room_if_unserved(&key);
        }
    }

    /// Applies one bus message: one handler per kind of [`Header`].
    async fn apply_inbound(self: &Arc<Self>, msg: Inbound) {
        if msg.any_room {
            return self.any_room_request(msg);
        }
        let Some((header, body)) = decode(&msg.payload) else {
            return;
        };
        if self.is_own(&header) {
            return;
        }
        let to_me = msg.subject == process_subject(self.bus.pid());
        match header {
            Header::Heartbeat {
                from,
                counts,
                version,
            } => self.lock().heard(from, counts, version),
            Header::Goodbye { from } => self.mutate(|st| {
                st.cluster.processes.remove(&from);
                self.process_gone(st, &from);
                st.follow_versions();
            }),
            Header::EndSession { sid, reason } => {
                self.mutate(|st| st.end_moved_session(&sid, &reason))
            }
            h @ (Header::Joined { .. } | Header::Changed { .. } | Header::Left { .. }) => {
                self.membership(h)
            }
            Header::Backend { backend, url, room } => {
                self.replicated_backend_request(&backend, &url, &room, &body)
                    .await
            }
            Header::Transient { .. } => self.replicated_transient(header),
            h @ (Header::RoomFrame { .. } | Header::UserFrame { .. }) => {
                self.frame_in_order(h, body)
            }
            h @ (Header::Hold { .. } | Header::Release { .. }) => {
                if to_me {
                    self.held_by(h)
                }
            }
            h @ Header::SessionFrame { .. } => {
                // Every process sees every message; only the addressee acts.
                if to_me {
                    self.frame_in_order(h, body);
                }
            }
            Header::Mcu {
                sid,
                sender,
                backend,
                id,
                ..
            } => {
                if to_me {
                    self.remote_mcu_message(&sid, &sender, &backend, id, &body);
                }
            }
            h @ (Header::Discover { .. }
            | Header::SnapshotRequest { .. }
            | Header::Dialout { .. }
            | Header::ResumeRequest { .. }
            | Header::Park { .. }
            | Header::Parked { .. }) => {
                if let Some(reply) = msg.reply {
                    self.answer(h, to_me, &body, reply);
                }
            }
            Header::Handover {
                from,
                sid,
                part,
                parts,
            } => {
                if to_me {
                    self.mutate(|st| st.arrival_part(&from, &sid, part, parts, body));
                    self.timer.notify_one();
                }
            }
        }
    }

    /// True for this process's own broadcasts (every process sees all bus
    /// traffic; MCU messages are addressed instead). A message of a process
    /// not yet known makes it known, and thus watched for death: no rule
    /// waits for a heartbeat.
    fn is_own(&self, header: &Header) -> bool {
        let me = self.bus.pid();
        if let Some(from) = header.origin().filter(|f| *f != me) {
            self.lock().cluster.note_process(from);
        }
        match header {
            Header::Goodbye { from } => from == me,
            Header::Mcu { .. } => false,
            h => h.origin() == Some(me),
        }
    }

    /// A member of another process joined, changed or left a room.
    fn membership(&self, h: Header) {
        if let Header::Changed { member, .. } = &h {
            // Handed to this process: room frames are its own from here.
            if member.owner == self.bus.pid() {
                self.mutate(|st| st.arrival_marked(&member.sid));
                self.timer.notify_one();
                return;
            }
        }
        self.mutate(|st| match h {
            Header::Joined {
                backend,
                room,
                member,
                ..
            }
            | Header::Changed {
                backend,
                room,
                member,
                ..
            } => st.remote_member(&key_of(&backend, &room), member),
            Header::Left {
                backend, room, sid, ..
            } => st.remove_remote(&key_of(&backend, &room), &sid),
            _ => {}
        })
    }

    /// A transient data operation, applied in bus order.
    fn replicated_transient(&self, h: Header) {
        let Header::Transient {
            backend,
            room,
            key,
            value,
            ttl_ns,
            if_version,
            sender,
            id,
        } = h
        else {
            return;
        };
        let rk = key_of(&backend, &room);
        let ttl = ttl_ns.map(Duration::from_nanos);
        let wake = self.mutate(|st| {
            match st.apply_transient(&rk, &key, value, ttl, if_version) {
                Ok(wake) => wake,
                Err(e) => {
                    // Refused in bus order: the sender's process tells it.
                    if let Some(sender) =
                        sender.filter(|s| st.sessions.map.contains_key(s.as_str()))
                    {
                        let f = crate::api::server::error_frame(id.as_deref(), &e);
                        st.sessions.deliver(&sender, &f);
                    }
                    false
                }
            }
        });
        if wake {
            self.timer.notify_one();
        }
    }

    /// Delivers a frame for the local members of a room, the sessions of a
    /// user or one session: the recipients it left congested, and the
    /// sender to hold back (its process, its id), if a client sent it.
    pub(super) fn deliver_bus_frame(&self, h: Header, body: &Bytes) -> Delivered {
        let (from, except, congested) = match h {
            Header::RoomFrame {
                from,
                backend,
                room,
                except,
                call_only,
            } => {
                let c =
                    self.room_frame(&key_of(&backend, &room), body, except.as_deref(), call_only);
                (from, except, c)
            }
            Header::UserFrame {
                from,
                backend,
                user,
                except,
            } => {
                let c = self.user_frame(&backend, &user, except.as_deref(), body);
                (from, except, c)
            }
            Header::SessionFrame {
                sid,
                backend,
                reply_to,
                id,
            } => return self.session_frame(sid, backend, reply_to, id, body),
            _ => return Delivered::default(),
        };
        // `except` is the sender of a client's room or user message.
        Delivered {
            congested,
            sender: except.map(|e| (from, e)),
        }
    }

    /// A request that wants a reply: discovery, a room snapshot, a dialout
    /// or a resume.
    fn answer(self: &Arc<Self>, h: Header, to_me: bool, body: &Bytes, reply: String) {
        match h {
            Header::Discover { from, version } => {
                let mut st = self.lock();
                // Known (and, of the previous release, its requests
                // received) before it hears the answer.
                st.heard(from, Default::default(), version);
                st.bus.reply(reply, st.heartbeat_message());
            }
            Header::SnapshotRequest { backend, room, .. } => {
                self.answer_snapshot(&key_of(&backend, &room), reply)
            }
            Header::Dialout {
                backend, room, url, ..
            } => self.remote_dialout(key_of(&backend, &room), url, body, reply),
            // Only the addressed process answers. The requester itself would
            // otherwise find the session it just adopted and hand it to
            // itself, closing the resumed connection.
            Header::ResumeRequest {
                resume_id,
                to,
                peek,
                chunked,
            } if to_me || peek => {
                let ask = super::handover::ResumeAsk {
                    resume_id,
                    to,
                    peek,
                    chunked,
                };
                self.mutate(|st| st.answer_resume(ask, reply))
            }
            Header::Park { sessions, .. } if to_me => self.park_request(sessions, reply),
            Header::Parked { sids, .. } if to_me => self.parked_request(sids, reply),
            _ => {}
        }
    }

    /// A frame of another process's client for the members of a local
    /// room; returns the recipients it left congested.
    fn room_frame(
        &self,
        key: &RoomKey,
        body: &Bytes,
        except: Option<&str>,
        call_only: bool,
    ) -> Vec<Arc<Outbox>> {
        let Some(f) = body_frame(body) else {
            return Vec::new();
        };
        let ((), congested) = self.mutate(|st| {
            st.collecting_congestion(|st| {
                if call_only {
                    st.broadcast_call(key, &f, except);
                } else {
                    st.broadcast(key, &f, except);
                }
            })
        });
        congested
    }

    /// A frame for a session of this process: delivered, forwarded to the
    /// process it moved to, or answered with `no_such_session`.
    fn session_frame(
        &self,
        sid: String,
        backend: Option<String>,
        reply_to: Option<String>,
        id: Option<String>,
        body: &Bytes,
    ) -> Delivered {
        let Some(f) = body_frame(body) else {
            return Delivered::default();
        };
        self.mutate(|st| {
            let found = st.sessions.map.get(sid.as_str()).map(|s| {
                backend
                    .as_deref()
                    .is_none_or(|b| b == s.backend.id.as_ref())
            });
            match found {
                Some(true) => {
                    let ((), congested) =
                        st.collecting_congestion(|st| st.sessions.deliver(&sid, &f));
                    let sender = reply_to.and_then(|r| {
                        let from = st.cluster.owner_of_session(&r)?.to_string();
                        Some((from, r))
                    });
                    return Delivered { congested, sender };
                }
                Some(false) => st.tell_no_such_session(reply_to.as_deref(), id.as_deref()),
                None if st.sessions.arriving.contains_key(sid.as_str()) => {
                    // On its way here: kept for it.
                    let limits = st.sessions.limits.clone();
                    if let Some(a) = st.sessions.arriving.get_mut(sid.as_str()) {
                        a.push(&f, &limits);
                    }
                }
                None => match st.cluster.moved.get(sid.as_str()) {
                    Some((pid, _)) => {
                        // Resumed elsewhere: forward.
                        let subject = process_subject(pid);
                        let h = Header::SessionFrame {
                            sid,
                            backend,
                            reply_to,
                            id,
                        };
                        st.bus.publish(subject, encode(&h, Some(body)));
                    }
                    None => st.tell_no_such_session(reply_to.as_deref(), id.as_deref()),
                },
            }
            Delivered::default()
        })
    }

    /// A frame of another process's client for the sessions of a user;
    /// returns the recipients it left congested.
    fn user_frame(
        &self,
        backend: &str,
        user: &str,
        except: Option<&str>,
        body: &Bytes,
    ) -> Vec<Arc<Outbox>> {
        let Some(f) = body_frame(body) else {
            return Vec::new();
        };
        let ((), congested) = self.mutate(|st| {
            st.collecting_congestion(|st| st.send_to_user(&backend.into(), user, &f, except))
        });
        congested
    }

    /// A backend API request that reached another process (or this one),
    /// applied to this process's sessions.
    async fn replicated_backend_request(
        self: &Arc<Self>,
        backend: &str,
        url: &str,
        room: &str,
        body: &Bytes,
    ) {
        let Some(b) = self.registry().by_id(backend) else {
            return;
        };
        let Ok(req) = serde_json::from_slice(body) else {
            return;
        };
        let _ = self.backend_request(&b, url, room, req).await;
    }

    /// Answers a joining process with this one's members of a room. Every
    /// process answers (an empty snapshot when it does not serve the room),
    /// so the asking process need not wait for the timeout.
    fn answer_snapshot(&self, key: &RoomKey, reply: String) {
        let st = self.lock();
        let mut snap = st.local_snapshot(key).unwrap_or_default();
        snap.from = Some(st.bus.pid().to_string());
        let payload = Bytes::from(serde_json::to_vec(&snap).unwrap_or_default());
        st.bus.reply(reply, payload);
    }

    /// A dialout another process has no internal client for: tried here.
    fn remote_dialout(self: &Arc<Self>, key: RoomKey, url: String, body: &Bytes, reply: String) {
        let Ok(d) = serde_json::from_slice::<crate::api::backend::Dialout>(body) else {
            return;
        };
        // Waiting for the internal client must not hold up the bus.
        let hub = self.clone();
        tokio::spawn(async move {
            if let Some(r) = hub.dialout_local(&key, &url, &d).await {
                let payload = Bytes::from(serde_json::to_vec(&r).unwrap_or_default());
                let bus = hub.lock().bus.clone();
                bus.reply(reply, payload);
            }
        });
    }
}

/// What delivering a frame from the bus left behind.
#[derive(Default)]
pub(super) struct Delivered {
    /// Recipients left more than half full.
    pub congested: Vec<Arc<Outbox>>,
    /// The client that sent it: its process and session id.
    pub sender: Option<(String, String)>,
}

pub(super) fn key_of(backend: &str, room: &str) -> RoomKey {
    RoomKey {
        backend: backend.into(),
        room: room.into(),
    }
}

impl State {
    /// A session resumed on another process ends here, without telling
    /// Nextcloud that it left (it is the same participant).
    fn end_moved_session(&mut self, sid: &str, reason: &str) {
        let Some(s) = self.sessions.map.get_mut(sid) else {
            return;
        };
        let rs = s.room_session_id.take();
        let key = s.room.clone();
        let sid = s.id.clone();
        if let (Some(rs), Some(room)) = (rs, key.and_then(|k| self.rooms.get_mut(&k))) {
            if room.nc_sessions.get(&rs) == Some(&sid) {
                room.nc_sessions.remove(&rs);
            }
        }
        let bye = crate::api::server::frame(
            None,
            "bye",
            &crate::api::server::Bye {
                reason: Some(reason),
            },
        );
        self.end_session(&sid, Some(bye));
    }

    /// A member of another process joined a local room or changed: the
    /// local members see the join, the in-call list and flags change.
    pub(super) fn remote_member(&mut self, key: &RoomKey, member: MemberInfo) {
        let sid = member.sid.clone();
        let special = member.kind != MemberKind::Client;
        let flags = (member.kind == MemberKind::Virtual).then_some(member.flags);
        let old_flags = self.cluster.remote.get(sid.as_str()).map(|r| r.info.flags);
        let nc = member.roomsessionid.clone();
        let new = self.upsert_remote(key, member);
        if new {
            self.broadcast_join(key, &sid, None);
            // An update Nextcloud sent during its join, now mapped.
            if let Some(f) = nc.and_then(|nc| self.replay_participant(key, &nc)) {
                self.broadcast(key, &f, None);
            }
        }
        if special {
            self.publish_internal_incall(key);
        }
        if let Some(fl) = flags.filter(|f| (new && *f != 0) || old_flags.is_some_and(|o| o != *f)) {
            let f = event_frame(
                "participants",
                "flags",
                &serde_json::json!({"roomid": &*key.room, "sessionid": &sid, "flags": fl}),
            );
            self.broadcast(key, &f, None);
        }
    }
}
