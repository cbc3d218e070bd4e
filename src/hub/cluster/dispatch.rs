//! The cluster side of a process: applies what arrives from the bus,
//! announces the process, notices processes that went away.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{body_frame, ProcessInfo, DISCOVERY_WINDOW, HEARTBEAT_INTERVAL, PROCESS_TIMEOUT};
use crate::api::server::event_frame;
use crate::bus::{decode, encode, process_subject, Header, Inbound, MemberInfo, SUBJECT_ALL};
use crate::hub::room::RoomKey;
use crate::hub::{Hub, State};

/// Longest wait of the bus inbound for a congested local recipient: far
/// below [`PROCESS_TIMEOUT`], so heartbeats behind it are never late.
const INBOUND_WAIT: Duration = Duration::from_secs(1);

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
            .counts
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let h = Header::Heartbeat {
            from: self.bus.pid().to_string(),
            counts,
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
                // A client of another process flooding a room: its frames
                // wait here while local recipients drain (briefly: the bus
                // also carries heartbeats), as a local sender would.
                let congested = std::mem::take(&mut *hub.inbound_congested.lock().expect("lock"));
                if !congested.is_empty() {
                    hub.metrics.client_sender_waits.inc();
                    let wait = hub.config.limits.slow_receiver_wait.min(INBOUND_WAIT);
                    crate::hub::recipients_drained(congested, wait).await;
                }
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
            if let Some((Header::Heartbeat { from, counts }, _)) = decode(&r) {
                if from != bus.pid() {
                    st.processes.insert(
                        from,
                        ProcessInfo {
                            last_seen: Instant::now(),
                            counts,
                        },
                    );
                }
            }
        }
        tracing::info!(peers = st.processes.len(), "cluster peers discovered");
    }

    fn heartbeat(&self) {
        let mut st = self.lock();
        st.bus
            .publish(SUBJECT_ALL.to_string(), st.heartbeat_message());
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
                    crate::hub::notify_backend_leave(
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

    /// Remembers recipients a bus frame left congested (see `spawn_cluster`).
    fn note_congested(&self, congested: Vec<Arc<crate::hub::outbox::Outbox>>) {
        if !congested.is_empty() {
            self.inbound_congested
                .lock()
                .expect("lock")
                .extend(congested);
        }
    }

    async fn apply_inbound(self: &Arc<Self>, msg: Inbound) {
        let Some((header, body)) = decode(&msg.payload) else {
            return;
        };
        let me = self.lock().bus.pid().to_string();
        // Any message of a process not yet known makes it known (and thus
        // watched for death): no rule waits for a heartbeat.
        if let Some(from) = header.origin().filter(|f| *f != me) {
            let mut st = self.lock();
            if !st.processes.contains_key(from) {
                tracing::info!(process = %from, "new process in the cluster");
                st.processes.insert(
                    from.to_string(),
                    ProcessInfo {
                        last_seen: Instant::now(),
                        counts: Default::default(),
                    },
                );
            }
        }
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
            Header::Discover { from } => {
                if from == me {
                    return;
                }
                if let Some(reply) = msg.reply {
                    let st = self.lock();
                    st.bus.reply(reply, st.heartbeat_message());
                }
            }
            Header::EndSession { sid, reason } => {
                let mut st = self.lock();
                if let Some(s) = st.sessions.map.get_mut(sid.as_str()) {
                    // Same participant: Nextcloud is not told it left.
                    let rs = s.room_session_id.take();
                    let key = s.room.clone();
                    let sid = s.id.clone();
                    if let (Some(rs), Some(room)) = (rs, key.and_then(|k| st.rooms.get_mut(&k))) {
                        if room.nc_sessions.get(&rs) == Some(&sid) {
                            room.nc_sessions.remove(&rs);
                        }
                    }
                    let bye = crate::api::server::frame(
                        None,
                        "bye",
                        &crate::api::server::Bye {
                            reason: Some(reason.as_str()),
                        },
                    );
                    st.end_session(&sid, Some(bye));
                }
                st.reap();
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
                call_only,
            } => {
                if from == me {
                    return;
                }
                let Some(f) = body_frame(&body) else { return };
                let mut st = self.lock();
                let key = key_of(&backend, &room);
                let ((), congested) = st.collecting_congestion(|st| {
                    if call_only {
                        st.broadcast_call(&key, &f, except.as_deref());
                    } else {
                        st.broadcast(&key, &f, except.as_deref());
                    }
                });
                st.reap();
                drop(st);
                self.note_congested(congested);
            }
            Header::SessionFrame {
                sid,
                backend,
                reply_to,
                id,
            } => {
                // Every process sees all bus traffic: only the one the frame
                // is addressed to delivers it (or answers no_such_session).
                if msg.subject != process_subject(&me) {
                    return;
                }
                let Some(f) = body_frame(&body) else { return };
                let mut st = self.lock();
                let found = st.sessions.map.get(sid.as_str()).map(|s| {
                    backend
                        .as_deref()
                        .is_none_or(|b| b == s.backend.id.as_ref())
                });
                match found {
                    Some(true) => {
                        let ((), congested) =
                            st.collecting_congestion(|st| st.sessions.deliver(&sid, &f));
                        self.note_congested(congested);
                    }
                    Some(false) => st.tell_no_such_session(reply_to.as_deref(), id.as_deref()),
                    None => {
                        if let Some((pid, _)) = st.moved.get(sid.as_str()) {
                            // Resumed elsewhere: forward.
                            let h = Header::SessionFrame {
                                sid: sid.clone(),
                                backend,
                                reply_to,
                                id,
                            };
                            st.bus
                                .publish(process_subject(pid), encode(&h, Some(&body)));
                        } else {
                            st.tell_no_such_session(reply_to.as_deref(), id.as_deref());
                        }
                    }
                }
                st.reap();
            }
            Header::Mcu {
                from: _,
                sid,
                sender,
                backend,
                id,
            } => {
                if msg.subject == process_subject(&me) {
                    self.remote_mcu_message(&sid, &sender, &backend, id, &body);
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
                let ((), congested) = st.collecting_congestion(|st| {
                    st.send_to_user(&backend.as_str().into(), &user, &f, except.as_deref())
                });
                st.reap();
                drop(st);
                self.note_congested(congested);
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
                // Every process answers (an empty snapshot when it does not
                // serve the room), so the asking process need not wait for
                // the timeout.
                let st = self.lock();
                let snap = st
                    .local_snapshot(&key_of(&backend, &room))
                    .unwrap_or_default();
                let payload = Bytes::from(serde_json::to_vec(&snap).unwrap_or_default());
                st.bus.reply(reply, payload);
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
