//! Several processes behind one NATS server: every process keeps the full
//! member list of the rooms it serves (members of other processes included,
//! from the join/leave events themselves), delivers only to its own
//! sessions, and applies replicated state (backend requests, transient
//! data) in bus order. No lookup crosses processes on the hot path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::room::{Room, RoomKey, TransientEntry};
use super::session::{Session, SessionKind};
use super::{Hub, State};
use crate::api::server::{event_frame, frame, Bye, Frame};
use crate::bus::{
    decode, encode, process_subject, room_subject, Header, Inbound, MemberInfo, RoomSnapshot,
    SessionHandover, TransientSnapshot, SUBJECT_ALL,
};

/// How often a process announces itself.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A process silent this long is treated as gone: its sessions leave.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a joining process waits for room snapshots.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a resume waits for the owning process.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// A member of a local room that is connected to another process.
pub struct RemoteMember {
    /// What the owner announced.
    pub info: MemberInfo,
    /// The room.
    pub room: RoomKey,
}

/// Another process, as its heartbeats describe it.
pub struct ProcessInfo {
    /// Last heartbeat.
    pub last_seen: Instant,
    /// Client sessions per backend id.
    pub counts: HashMap<String, u64>,
}

fn kind_name(kind: &SessionKind) -> &'static str {
    match kind {
        SessionKind::Client => "client",
        SessionKind::Internal => "internal",
        SessionKind::Virtual { .. } => "virtual",
    }
}

/// A frame received from the bus, shared without copying (UTF-8 checked).
fn body_frame(body: &Bytes) -> Option<Frame> {
    Frame::try_from(body.clone()).ok()
}

/// The process id a session or resume id was created by.
pub fn owner_of(id: &str) -> Option<&str> {
    id.get(..8)
}

impl State {
    /// A local session as other processes should know it.
    pub(crate) fn member_info(&self, sid: &str) -> Option<MemberInfo> {
        let s = self.sessions.map.get(sid)?;
        let (virtual_owner, client_sid) = match &s.kind {
            SessionKind::Virtual { owner, client_sid } => {
                (Some(owner.to_string()), Some(client_sid.clone()))
            }
            _ => (None, None),
        };
        Some(MemberInfo {
            sid: s.id.to_string(),
            owner: self.bus.pid().to_string(),
            userid: s.user_id.as_deref().map(str::to_string),
            user: s
                .user
                .as_deref()
                .map(|u| serde_json::value::RawValue::from_string(u.get().to_string()))
                .transpose()
                .ok()
                .flatten(),
            roomsessionid: s.room_session_id.as_deref().map(str::to_string),
            features: s.features.clone(),
            kind: kind_name(&s.kind).to_string(),
            virtual_owner,
            client_sid,
            in_call: s.in_call,
            flags: s.flags,
        })
    }

    /// Announces a local member of a room (joined, or changed) to the
    /// other processes.
    pub(crate) fn publish_member(&self, key: &RoomKey, sid: &str, joined: bool) {
        if !self.bus.clustered() {
            return;
        }
        let Some(member) = self.member_info(sid) else {
            return;
        };
        let (from, backend, room) = (
            self.bus.pid().to_string(),
            key.backend.to_string(),
            key.room.to_string(),
        );
        let h = if joined {
            Header::Joined {
                from,
                backend,
                room,
                member,
            }
        } else {
            Header::Changed {
                from,
                backend,
                room,
                member,
            }
        };
        self.bus
            .publish(room_subject(&key.backend, &key.room), encode(&h, None));
    }

    /// Sends a frame to the members of a room on other processes.
    pub(crate) fn publish_room_frame(&self, key: &RoomKey, f: &Frame, except: Option<&str>) {
        if !self.bus.clustered() {
            return;
        }
        let has_remote = self
            .rooms
            .get(key)
            .is_some_and(|r| r.members.iter().any(|m| self.remote.contains_key(m)));
        if !has_remote {
            return;
        }
        let h = Header::RoomFrame {
            from: self.bus.pid().to_string(),
            backend: key.backend.to_string(),
            room: key.room.to_string(),
            except: except.map(str::to_string),
        };
        self.bus.publish(
            room_subject(&key.backend, &key.room),
            encode(&h, Some(f.as_bytes())),
        );
    }

    /// Sends a frame to a session of another process; false if no live
    /// process can own it.
    pub(crate) fn send_to_remote_session(&self, sid: &str, f: &Frame) -> bool {
        if !self.bus.clustered() {
            return false;
        }
        let pid = match self.remote.get(sid) {
            Some(r) => r.info.owner.clone(),
            None => match owner_of(sid) {
                Some(p) if self.processes.contains_key(p) => p.to_string(),
                _ => return false,
            },
        };
        let h = Header::SessionFrame {
            sid: sid.to_string(),
        };
        self.bus
            .publish(process_subject(&pid), encode(&h, Some(f.as_bytes())));
        true
    }

    /// Sends a frame to the sessions of a user on other processes.
    pub(crate) fn publish_user_frame(
        &self,
        backend: &str,
        user: &str,
        f: &Frame,
        except: Option<&str>,
    ) {
        if !self.bus.clustered() {
            return;
        }
        let h = Header::UserFrame {
            from: self.bus.pid().to_string(),
            backend: backend.to_string(),
            user: user.to_string(),
            except: except.map(str::to_string),
        };
        self.bus
            .publish(SUBJECT_ALL.to_string(), encode(&h, Some(f.as_bytes())));
    }

    /// Client sessions of a backend on the other processes.
    pub(crate) fn remote_session_count(&self, backend: &str) -> u64 {
        self.processes
            .values()
            .filter_map(|p| p.counts.get(backend))
            .sum()
    }

    /// Adds or updates a member of another process; returns true if new.
    fn upsert_remote(&mut self, key: &RoomKey, member: MemberInfo) -> bool {
        let Some(room) = self.rooms.get_mut(key) else {
            return false;
        };
        let sid: Arc<str> = member.sid.as_str().into();
        if self.sessions.map.contains_key(&sid) {
            return false;
        }
        let new = !room.members.contains(&sid);
        if new {
            if room.departed.remove(&sid) {
                return false;
            }
            room.members.push(sid.clone());
        }
        if let Some(rs) = &member.roomsessionid {
            room.nc_sessions.insert(rs.as_str().into(), sid.clone());
        }
        self.remote.insert(
            sid,
            RemoteMember {
                info: member,
                room: key.clone(),
            },
        );
        new
    }

    /// A member of another process left: leave event to the local members.
    fn remove_remote(&mut self, key: &RoomKey, sid: &str) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        if !room.remove_member(sid) {
            room.departed.insert(sid.into());
            return;
        }
        room.nc_sessions.retain(|_, v| &**v != sid);
        let was_internal = self
            .remote
            .remove(sid)
            .is_some_and(|r| r.info.kind != "client");
        let leave = event_frame("room", "leave", &[sid]);
        self.broadcast(key, &leave, None);
        if was_internal {
            self.publish_internal_incall(key);
        }
    }

    fn local_snapshot(&self, key: &RoomKey) -> Option<RoomSnapshot> {
        let room = self.rooms.get(key)?;
        let members: Vec<MemberInfo> = room
            .members
            .iter()
            .filter_map(|m| self.member_info(m))
            .collect();
        if members.is_empty() {
            return None;
        }
        let now = Instant::now();
        Some(RoomSnapshot {
            members,
            transient: room
                .transient
                .iter()
                .map(|(k, v)| TransientSnapshot {
                    key: k.clone(),
                    value: v.value.clone(),
                    version: v.version,
                    ttl_ns: v
                        .expires
                        .map(|(at, _)| at.saturating_duration_since(now).as_nanos() as u64),
                })
                .collect(),
            transient_version: room.transient_version,
            properties: room
                .properties
                .as_deref()
                .and_then(|p| serde_json::value::RawValue::from_string(p.get().to_string()).ok()),
        })
    }

    /// Takes a local session out for another process (resume there): no
    /// leave event, it stays a member, now remote.
    fn hand_over(&mut self, resume_id: &str, to: &str) -> Option<SessionHandover> {
        let sid = self.resume_ids.get(resume_id).cloned()?;
        let s = self.sessions.map.get(&sid)?;
        if s.kind != SessionKind::Client {
            return None;
        }
        let mut member = self.member_info(&sid)?;
        member.owner = to.to_string();
        let s = self.sessions.map.remove(&sid)?;
        self.resume_ids.remove(resume_id);
        self.sessions.disconnected.remove(&sid);
        if let Some(user) = &s.user_id {
            let key = (s.backend.id.clone(), user.clone());
            if let Some(list) = self.users.get_mut(&key) {
                list.retain(|x| *x != sid);
                if list.is_empty() {
                    self.users.remove(&key);
                }
            }
        }
        if let Some(c) = self.counts.get_mut(&s.backend.id) {
            *c = c.saturating_sub(1);
        }
        if let Some(conn) = &s.conn {
            conn.push(frame(
                None,
                "bye",
                &Bye {
                    reason: Some("session_resumed"),
                },
            ));
            conn.close(1000, "session resumed");
        }
        if let Some(key) = &s.room {
            self.remote.insert(
                sid.clone(),
                RemoteMember {
                    info: member.clone(),
                    room: key.clone(),
                },
            );
            self.drop_room_if_unserved(key);
        }
        self.moved
            .insert(sid.clone(), (to.to_string(), Instant::now()));
        Some(SessionHandover {
            member,
            room: s.room.as_ref().map(|k| k.room.to_string()),
            resume_id: resume_id.to_string(),
            backend: s.backend.id.to_string(),
            backend_base: s.backend_base.to_string(),
            backend_url: s.backend_url.to_string(),
            permissions: s.permissions.clone(),
            queue: s.queue.iter().map(|f| f.as_str().to_string()).collect(),
        })
    }

    /// Applies a transient operation received from the bus.
    fn apply_transient(
        &mut self,
        key: &RoomKey,
        name: &str,
        value: Option<Box<serde_json::value::RawValue>>,
        ttl: Option<Duration>,
        if_version: Option<u64>,
    ) -> bool {
        if let Some(v) = if_version {
            let current = self
                .rooms
                .get(key)
                .and_then(|r| r.transient.get(name))
                .map(|e| e.version);
            if current != Some(v) {
                return false;
            }
        }
        self.set_transient(key, name, value, ttl)
    }
}

impl Hub {
    /// Makes sure a room about to get its first local member knows the
    /// members (and transient data) the other processes have.
    pub(crate) async fn prepare_room(self: &Arc<Self>, key: &RoomKey) {
        let (bus, expected, url, base) = {
            let mut st = self.lock();
            if !st.bus.clustered() || st.rooms.contains_key(key) {
                return;
            }
            let (url, base) = self.room_urls(key);
            // Exists from now on, so that events for it are applied while
            // the snapshot is on its way.
            st.rooms
                .insert(key.clone(), Room::new(url.clone(), base.clone()));
            (st.bus.clone(), st.processes.len(), url, base)
        };
        let _ = (url, base);
        if expected == 0 {
            return;
        }
        let h = Header::SnapshotRequest {
            from: bus.pid().to_string(),
            backend: key.backend.to_string(),
            room: key.room.to_string(),
        };
        let replies = bus
            .request(
                room_subject(&key.backend, &key.room),
                encode(&h, None),
                expected,
                SNAPSHOT_TIMEOUT,
            )
            .await;
        tracing::debug!(room = %key.room, replies = replies.len(), expected, "room snapshot");
        let mut st = self.lock();
        let mut wake = false;
        for r in replies {
            let Ok(snap) = serde_json::from_slice::<RoomSnapshot>(&r) else {
                continue;
            };
            for m in snap.members {
                st.upsert_remote(key, m);
            }
            let now = Instant::now();
            let Some(room) = st.rooms.get_mut(key) else {
                continue;
            };
            if room.properties.is_none() {
                room.properties = snap.properties.map(Arc::from);
            }
            if snap.transient_version > room.transient_version {
                room.transient_version = snap.transient_version;
                room.transient.clear();
                let mut timers = Vec::new();
                for t in snap.transient {
                    let expires = t.ttl_ns.map(|ns| {
                        st.ttl_seq += 1;
                        (now + Duration::from_nanos(ns), st.ttl_seq)
                    });
                    if let Some(e) = expires {
                        timers.push((e, t.key.clone()));
                    }
                    let Some(room) = st.rooms.get_mut(key) else {
                        break;
                    };
                    room.transient.insert(
                        t.key,
                        TransientEntry {
                            value: t.value,
                            expires,
                            version: t.version,
                        },
                    );
                }
                for (e, name) in timers {
                    st.ttl.insert(e, (key.clone(), name));
                    wake = true;
                }
            }
        }
        if let Some(room) = st.rooms.get_mut(key) {
            room.departed.clear();
        }
        drop(st);
        if wake {
            self.timer.notify_one();
        }
    }

    /// Backend URLs for pings and leave notices of a room's backend.
    fn room_urls(&self, key: &RoomKey) -> (Arc<str>, Arc<str>) {
        let base = self
            .registry()
            .by_id(&key.backend)
            .and_then(|b| b.urls.first().cloned())
            .unwrap_or_default();
        let url = format!(
            "{}/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
            base.trim_end_matches('/')
        );
        (url.into(), base.into())
    }

    /// Asks the process that owns `resume_id` to hand the session over.
    pub(crate) async fn fetch_session(
        self: &Arc<Self>,
        resume_id: &str,
    ) -> Option<SessionHandover> {
        let (bus, owner) = {
            let st = self.lock();
            let owner = owner_of(resume_id)?.to_string();
            if !st.bus.clustered() || owner == st.bus.pid() || !st.processes.contains_key(&owner) {
                return None;
            }
            (st.bus.clone(), owner)
        };
        let h = Header::ResumeRequest {
            resume_id: resume_id.to_string(),
            to: bus.pid().to_string(),
        };
        let replies = bus
            .request(
                process_subject(&owner),
                encode(&h, None),
                1,
                HANDOVER_TIMEOUT,
            )
            .await;
        let reply = replies.into_iter().next()?;
        serde_json::from_slice(&reply).ok()
    }

    /// Installs a session handed over by another process (resume here).
    pub(crate) fn adopt_session(
        &self,
        st: &mut State,
        h: SessionHandover,
        conn: Arc<super::outbox::Outbox>,
    ) -> Option<Arc<str>> {
        let backend = self.registry().by_id(&h.backend)?;
        let sid: Arc<str> = h.member.sid.as_str().into();
        let resume_id: Arc<str> = h.resume_id.as_str().into();
        let room = h.room.as_ref().map(|r| RoomKey {
            backend: backend.id.clone(),
            room: r.as_str().into(),
        });
        let user_id: Option<Arc<str>> = h.member.userid.as_deref().map(Arc::from);
        if let Some(u) = &user_id {
            st.users
                .entry((backend.id.clone(), u.clone()))
                .or_default()
                .push(sid.clone());
        }
        *st.counts.entry(backend.id.clone()).or_default() += 1;
        st.resume_ids.insert(resume_id.clone(), sid.clone());
        st.remote.remove(&sid);
        st.moved.remove(&sid);
        st.sessions.map.insert(
            sid.clone(),
            Session {
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
                in_call: h.member.in_call,
                flags: h.member.flags,
                virtuals: HashMap::new(),
            },
        );
        if let Some(key) = &room {
            let (url, base) = (
                h.backend_url.as_str().into(),
                h.backend_base.as_str().into(),
            );
            let r = st
                .rooms
                .entry(key.clone())
                .or_insert_with(|| Room::new(url, base));
            if !r.members.contains(&sid) {
                r.members.push(sid.clone());
            }
            if let Some(rs) = &st
                .sessions
                .map
                .get(&sid)
                .and_then(|s| s.room_session_id.clone())
            {
                if let Some(r) = st.rooms.get_mut(key) {
                    r.nc_sessions.insert(rs.clone(), sid.clone());
                }
            }
            st.publish_member(key, &sid, false);
        }
        Some(sid)
    }

    /// Runs the cluster side of the hub: applies what arrives from the bus,
    /// announces this process, and notices processes that went away.
    pub fn spawn_cluster(
        self: &Arc<Self>,
        mut inbound: mpsc::Receiver<Inbound>,
        cancel: CancellationToken,
    ) {
        let hub = self.clone();
        let c = cancel.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    _ = c.cancelled() => return,
                    m = inbound.recv() => m,
                };
                let Some(msg) = msg else { return };
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

    fn heartbeat(&self) {
        let mut st = self.lock();
        let counts = st.counts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let h = Header::Heartbeat {
            from: st.bus.pid().to_string(),
            counts,
        };
        st.bus.publish(SUBJECT_ALL.to_string(), encode(&h, None));
        // Processes that went silent: their sessions are gone.
        let now = Instant::now();
        let dead: Vec<String> = st
            .processes
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) > PROCESS_TIMEOUT)
            .map(|(pid, _)| pid.clone())
            .collect();
        for pid in dead {
            tracing::warn!(process = %pid, "process went silent, its sessions leave");
            st.processes.remove(&pid);
            self.process_gone(&mut st, &pid);
        }
        let keep = st.sessions.limits.resume_timeout * 2;
        st.moved.retain(|_, (_, at)| now.duration_since(*at) < keep);
        st.reap();
    }

    fn process_gone(&self, st: &mut State, pid: &str) {
        let gone: Vec<(Arc<str>, RoomKey, MemberInfo)> = st
            .remote
            .iter()
            .filter(|(_, r)| r.info.owner == pid)
            .map(|(sid, r)| (sid.clone(), r.room.clone(), r.info.clone()))
            .collect();
        // The process with the smallest id among the survivors tells
        // Nextcloud, so it is told once.
        let leader = st.processes.keys().all(|p| p.as_str() > st.bus.pid());
        for (sid, key, info) in gone {
            st.remove_remote(&key, &sid);
            if leader && info.kind == "client" {
                if let (Some(rs), Some(b)) =
                    (info.roomsessionid, self.registry().by_id(&key.backend))
                {
                    let (url, base) = self.room_urls(&key);
                    super::notify_backend_leave(
                        &st.client,
                        url,
                        base,
                        b.secret.clone(),
                        key.room.clone(),
                        info.userid.as_deref().map(Arc::from),
                        rs.as_str().into(),
                    );
                }
            }
            st.drop_room_if_unserved(&key);
        }
    }

    async fn apply_inbound(self: &Arc<Self>, msg: Inbound) {
        let Some((header, body)) = decode(&msg.payload) else {
            return;
        };
        let me = self.lock().bus.pid().to_string();
        let key_of = |backend: &str, room: &str| RoomKey {
            backend: backend.into(),
            room: room.into(),
        };
        match header {
            Header::Heartbeat { from, counts } => {
                if from != me {
                    self.lock().processes.insert(
                        from,
                        ProcessInfo {
                            last_seen: Instant::now(),
                            counts,
                        },
                    );
                }
            }
            Header::Goodbye { from } => {
                if from == me {
                    return;
                }
                let mut st = self.lock();
                st.processes.remove(&from);
                self.process_gone(&mut st, &from);
                st.reap();
            }
            Header::Joined {
                from,
                backend,
                room,
                member,
            }
            | Header::Changed {
                from,
                backend,
                room,
                member,
            } => {
                if from == me {
                    return;
                }
                let key = key_of(&backend, &room);
                let mut st = self.lock();
                let sid = member.sid.clone();
                let special = member.kind != "client";
                let flags = (member.kind == "virtual").then_some(member.flags);
                let old_flags = st.remote.get(sid.as_str()).map(|r| r.info.flags);
                let new = st.upsert_remote(&key, member);
                if new {
                    if let Some(e) = st.join_entry(&sid) {
                        let f = event_frame("room", "join", &[e]);
                        st.broadcast(&key, &f, None);
                    }
                }
                if special {
                    st.publish_internal_incall(&key);
                }
                if let Some(fl) =
                    flags.filter(|f| (new && *f != 0) || old_flags.is_some_and(|o| o != *f))
                {
                    let f = event_frame(
                        "participants",
                        "flags",
                        &serde_json::json!({"roomid": &room, "sessionid": &sid, "flags": fl}),
                    );
                    st.broadcast(&key, &f, None);
                }
                st.reap();
            }
            Header::Left {
                from,
                backend,
                room,
                sid,
            } => {
                if from == me {
                    return;
                }
                let mut st = self.lock();
                st.remove_remote(&key_of(&backend, &room), &sid);
                st.reap();
            }
            Header::RoomFrame {
                from,
                backend,
                room,
                except,
            } => {
                if from == me {
                    return;
                }
                let Some(f) = body_frame(&body) else { return };
                let mut st = self.lock();
                st.broadcast(&key_of(&backend, &room), &f, except.as_deref());
                st.reap();
            }
            Header::SessionFrame { sid } => {
                let Some(f) = body_frame(&body) else { return };
                let mut st = self.lock();
                if st.sessions.map.contains_key(sid.as_str()) {
                    st.sessions.deliver(&sid, &f);
                    st.reap();
                } else if let Some((pid, _)) = st.moved.get(sid.as_str()) {
                    // Resumed elsewhere: forward.
                    let h = Header::SessionFrame { sid: sid.clone() };
                    st.bus
                        .publish(process_subject(pid), encode(&h, Some(&body)));
                }
            }
            Header::UserFrame {
                from,
                backend,
                user,
                except,
            } => {
                if from == me {
                    return;
                }
                let Some(f) = body_frame(&body) else { return };
                let mut st = self.lock();
                st.send_to_user(&backend.as_str().into(), &user, &f, except.as_deref());
                st.reap();
            }
            Header::Backend { backend, url, room } => {
                let Some(b) = self.registry().by_id(&backend) else {
                    return;
                };
                let Ok(req) = serde_json::from_slice(&body) else {
                    return;
                };
                let _ = self.backend_request(&b, &url, &room, req).await;
            }
            Header::Transient {
                backend,
                room,
                key,
                value,
                ttl_ns,
                if_version,
            } => {
                let rk = key_of(&backend, &room);
                let mut st = self.lock();
                let wake = st.apply_transient(
                    &rk,
                    &key,
                    value,
                    ttl_ns.map(Duration::from_nanos),
                    if_version,
                );
                st.reap();
                drop(st);
                if wake {
                    self.timer.notify_one();
                }
            }
            Header::SnapshotRequest {
                from,
                backend,
                room,
            } => {
                if from == me {
                    return;
                }
                let Some(reply) = msg.reply else { return };
                let st = self.lock();
                if let Some(snap) = st.local_snapshot(&key_of(&backend, &room)) {
                    let payload = Bytes::from(serde_json::to_vec(&snap).unwrap_or_default());
                    st.bus.reply(reply, payload);
                }
            }
            Header::Dialout {
                from,
                backend,
                room,
                url,
            } => {
                if from == me {
                    return;
                }
                let Some(reply) = msg.reply else { return };
                let Ok(d) = serde_json::from_slice::<crate::api::backend::Dialout>(&body) else {
                    return;
                };
                // Waiting for the internal client must not hold up the bus.
                let hub = self.clone();
                tokio::spawn(async move {
                    let key = key_of(&backend, &room);
                    if let Some(r) = hub.dialout_local(&key, &url, &d).await {
                        let payload = Bytes::from(serde_json::to_vec(&r).unwrap_or_default());
                        let bus = hub.lock().bus.clone();
                        bus.reply(reply, payload);
                    }
                });
            }
            Header::ResumeRequest { resume_id, to } => {
                let Some(reply) = msg.reply else { return };
                let mut st = self.lock();
                if let Some(h) = st.hand_over(&resume_id, &to) {
                    let payload = Bytes::from(serde_json::to_vec(&h).unwrap_or_default());
                    st.bus.reply(reply, payload);
                }
                st.reap();
            }
        }
    }
}
