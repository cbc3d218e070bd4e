//! The cluster side of a process: applies what arrives from the bus (one
//! handler per kind of message; frames in `frames.rs`, the other processes
//! in `peers.rs`, lost messages in `resync.rs`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::HEARTBEAT_INTERVAL;
use crate::api::server::event_frame;
use crate::bus::{decode, process_subject, Header, Inbound, MemberInfo, MemberKind};
use crate::hub::room::RoomKey;
use crate::hub::{Hub, State};

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
            | Header::McuAdopt { .. }
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
                // A federation link hands back what it held before its
                // session goes (`federation/saved.rs`).
                let stopping = if peek {
                    Vec::new()
                } else {
                    let st = self.lock();
                    let sid = st.sessions.resume_ids.get(ask.resume_id.as_str()).cloned();
                    st.stop_links(sid.as_deref())
                };
                if stopping.is_empty() {
                    return self.mutate(|st| st.answer_resume(ask, reply));
                }
                let hub = self.clone();
                tokio::spawn(async move {
                    crate::hub::federation::handed_back(stopping).await;
                    hub.mutate(|st| {
                        let sid = st.sessions.resume_ids.get(ask.resume_id.as_str()).cloned();
                        st.answer_resume(ask, reply);
                        // Still here (not handed over): its link again.
                        if let Some(sid) = sid {
                            st.relink_stopped(&sid);
                        }
                    });
                });
            }
            Header::Park { sessions, .. } if to_me => self.park_request(sessions, reply),
            Header::Parked { sids, .. } if to_me => self.parked_request(sids, reply),
            Header::McuAdopt { .. } if to_me => self.adopt_mcu(body, reply),
            _ => {}
        }
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
