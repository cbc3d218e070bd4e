//! `room`: joining (validated by Nextcloud) and leaving rooms, with the
//! join/leave events and the initial state a joiner receives.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use super::federation::{FedCmd, Target};
use super::room::RoomKey;
use super::session::SessionKind;
use super::{Hub, State};
use crate::api::backend::{BackendResponseKind, RoomRequest};
use crate::api::client::RoomClientMessage;
use crate::api::error::{self, ProtocolError};
use crate::api::server::{event_frame, frame, Bye, Frame, RoomReply, TransientOut};
use crate::bus::MemberKind;

/// Members per `join` event in the list a joiner receives.
pub(crate) const JOIN_BATCH: usize = 8;

/// A room `join` event entry, with the client features (`join-features`).
#[derive(Serialize)]
pub(crate) struct JoinEntry<'a> {
    pub sessionid: &'a str,
    pub userid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<std::borrow::Cow<'a, RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roomsessionid: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub features: &'a [String],
    /// A session of another Nextcloud's user (federation).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub federated: bool,
}

/// A joiner's backend URLs (signaling, base) and its bitrate caps.
type RoomUrls = (Arc<str>, Arc<str>, (u64, u64));

impl State {
    /// The `join` entry of a session, local or on another process.
    pub(crate) fn join_entry<'a>(&'a self, sid: &'a str) -> Option<JoinEntry<'a>> {
        if let Some(s) = self.sessions.map.get(sid) {
            return Some(JoinEntry {
                sessionid: &s.id,
                userid: s.user_id.as_deref().unwrap_or(""),
                user: s.user.as_deref().map(std::borrow::Cow::Borrowed),
                // A virtual session's is its own id, for Nextcloud only:
                // Go leaves it out of the event.
                roomsessionid: s.room_session_id.as_deref().filter(|_| !s.is_virtual()),
                features: &s.features,
                federated: s.federated.is_some(),
            });
        }
        let r = &self.cluster.remote.get(sid)?.info;
        Some(JoinEntry {
            sessionid: &r.sid,
            userid: r.userid.as_deref().unwrap_or(""),
            user: r.user.as_deref().map(std::borrow::Cow::Borrowed),
            roomsessionid: r
                .roomsessionid
                .as_deref()
                .filter(|_| r.kind != MemberKind::Virtual),
            features: &r.features,
            federated: r.federated,
        })
    }

    /// Flags of a virtual session (local or remote), if it is one.
    fn virtual_flags(&self, sid: &str) -> Option<u32> {
        if let Some(s) = self.sessions.map.get(sid) {
            return s.is_virtual().then_some(s.flags);
        }
        let r = &self.cluster.remote.get(sid)?.info;
        (r.kind == MemberKind::Virtual).then_some(r.flags)
    }

    /// The bandwidth limits a joiner is told: the smaller of the MCU's and
    /// the backend's; none when neither has one.
    fn bandwidth(&self, backend: (u64, u64)) -> Option<crate::api::server::Bandwidth> {
        let mcu = self.mcu.as_ref().map_or((0, 0), |m| {
            (m.config().max_stream_bitrate, m.config().max_screen_bitrate)
        });
        let stream = crate::mcu::combine_limits(mcu.0, backend.0);
        let screen = crate::mcu::combine_limits(mcu.1, backend.1);
        (stream > 0 || screen > 0).then_some(crate::api::server::Bandwidth {
            maxstreambitrate: stream,
            maxscreenbitrate: screen,
        })
    }

    /// The room's transient data for a joiner (`transient` `initial`), if
    /// there is any.
    fn initial_transient(&self, key: &RoomKey) -> Option<Frame> {
        let room = self.rooms.get(key).filter(|r| !r.transient.is_empty())?;
        let data: std::collections::BTreeMap<String, Box<RawValue>> = room
            .transient
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect();
        Some(frame(
            None,
            "transient",
            &TransientOut {
                kind: "initial",
                key: None,
                value: None,
                oldvalue: None,
                data: Some(&data),
            },
        ))
    }

    /// Puts a session into a room: reply to the joiner, the members list to
    /// the joiner, the join event to everybody, then the transient data.
    /// With `hold`, the joiner's frames are returned instead of delivered
    /// (the caller first makes sure other processes saw the join).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn join_room(
        &mut self,
        sid: &Arc<str>,
        id: Option<&str>,
        key: RoomKey,
        properties: Option<Arc<RawValue>>,
        permissions: Option<Vec<String>>,
        room_session_id: Option<Arc<str>>,
        hold: bool,
    ) -> Vec<Frame> {
        let Some((url, base, bitrates)) =
            self.enter_room(sid, &key, permissions, room_session_id.as_ref())
        else {
            return Vec::new();
        };
        let bandwidth = self.bandwidth(bitrates);
        let kept = self.rooms.take_kept_for_join(&key);
        let room = self.rooms.get_or_insert(&key, url, base);
        for (nc, entry) in kept {
            room.participants.entry(nc).or_insert(entry);
        }
        if properties.is_some() {
            room.properties = properties;
        }
        let reply = RoomReply {
            roomid: &key.room,
            properties: room.properties.as_deref(),
            bandwidth,
        };
        let mut mine = vec![frame(id, "room", &reply)];
        let others: Vec<Arc<str>> = room.members.clone();
        room.members.push(sid.clone());
        if let Some(rs) = room_session_id {
            room.nc_sessions.insert(rs, sid.clone());
        }
        let hide = self.hides_names(sid);
        mine.extend(self.join_events(&others, hide));
        if let Some((plain, hidden)) = self.broadcast_join(&key, sid, Some(sid)) {
            mine.push(if hide { hidden } else { plain });
        }
        mine.extend(self.virtual_flags_events(&key, &others));
        if let Some(f) =
            room_session_id_of(self, sid).and_then(|nc| self.replay_participant(&key, &nc))
        {
            self.broadcast(&key, &f, Some(sid));
            mine.push(f);
        }
        mine.extend(self.initial_transient(&key));
        self.publish_member(&key, sid, true);
        if !hold {
            for f in mine.drain(..) {
                self.sessions.deliver(sid, &f);
            }
        }
        let is_internal = self
            .sessions
            .map
            .get(sid)
            .is_some_and(|s| s.kind == SessionKind::Internal);
        if is_internal {
            self.publish_internal_incall(&key);
        }
        mine
    }

    /// The session's side of a join: its room, Nextcloud session id and
    /// permissions; the room's URLs and the backend's bitrates, or None
    /// when the session is gone.
    fn enter_room(
        &mut self,
        sid: &Arc<str>,
        key: &RoomKey,
        permissions: Option<Vec<String>>,
        room_session_id: Option<&Arc<str>>,
    ) -> Option<RoomUrls> {
        let s = self.sessions.map.get_mut(sid)?;
        s.room = Some(key.clone());
        s.room_session_id = room_session_id.cloned();
        // Permissions only ever come from Nextcloud: a join without a list
        // keeps the ones the session has (as the Go server does).
        if permissions.is_some() {
            s.permissions = permissions;
        }
        let urls = (s.backend_url.clone(), s.backend_base.clone());
        let bitrates = s.backend.max_bitrates;
        tracing::info!(session = %sid, backend = %key.backend, room = ?key.room, "joined room");
        self.sessions.room_deadlines.remove(sid);
        if let Some(rs) = room_session_id {
            self.replace_room_session(key, rs, sid);
        }
        Some((urls.0, urls.1, bitrates))
    }

    /// The members already in the room, for the joiner: join events batched
    /// in events of moderate size (a connection's write buffer keeps the
    /// capacity of the largest frame it wrote).
    fn join_events(&self, others: &[Arc<str>], hide: bool) -> Vec<Frame> {
        let entries: Vec<JoinEntry> = others
            .iter()
            .filter_map(|o| self.join_entry(o))
            .map(|e| {
                if hide {
                    super::hide_names::hidden(e)
                } else {
                    e
                }
            })
            .collect();
        entries
            .chunks(JOIN_BATCH)
            .map(|chunk| event_frame("room", "join", chunk))
            .collect()
    }

    /// Flags of the virtual sessions already in the room, for the joiner.
    fn virtual_flags_events(&self, key: &RoomKey, others: &[Arc<str>]) -> Vec<Frame> {
        others
            .iter()
            .filter_map(|o| {
                let flags = self.virtual_flags(o).filter(|f| *f != 0)?;
                Some(event_frame(
                    "participants",
                    "flags",
                    &serde_json::json!({"roomid": &*key.room, "sessionid": &**o, "flags": flags}),
                ))
            })
            .collect()
    }
}

/// The Nextcloud session id a session joined its room with.
fn room_session_id_of(st: &State, sid: &str) -> Option<Arc<str>> {
    st.sessions.map.get(sid)?.room_session_id.clone()
}

impl Hub {
    /// A join of a conversation hosted by another Nextcloud: this server
    /// dials that Nextcloud's signaling server and joins there on the
    /// client's behalf (its own Nextcloud is not asked).
    fn federated_join(
        self: &Arc<Self>,
        sid: &Arc<str>,
        id: Option<String>,
        msg: &RoomClientMessage,
        fed: &crate::api::client::RoomFederation,
    ) {
        let target = Target::parse(fed, &msg.roomid).filter(|_| !msg.roomid.is_empty());
        let Some(target) = target else {
            return self.reply_error(
                sid,
                id.as_deref(),
                super::invalid_format("Invalid data format."),
            );
        };
        let mut st = self.lock();
        let Some(s) = st.sessions.map.get_mut(sid) else {
            return;
        };
        if let Some(link) = s.fed_link.as_mut() {
            if link.signaling == fed.signaling && link.url == fed.url {
                // Same remote server: the connection is reused.
                link.local_room = msg.roomid.as_str().into();
                link.nc_session = msg.sessionid.as_str().into();
                let cmd = FedCmd::Join {
                    id: id.clone(),
                    local_room: msg.roomid.clone(),
                    remote_room: target.remote_room,
                    nc_session: msg.sessionid.clone(),
                };
                if !link.send(cmd) {
                    drop(st);
                    self.reply_error(
                        sid,
                        id.as_deref(),
                        ProtocolError::new(error::TOO_MANY_REQUESTS, "Too many requests."),
                    );
                }
                return;
            }
            // Another server: the old link ends with its handle.
            s.fed_link = None;
        }
        if !self.fed_dials.admit(sid, s.client_ip) {
            drop(st);
            return self.reply_error(
                sid,
                id.as_deref(),
                ProtocolError::new(
                    error::TOO_MANY_REQUESTS,
                    "Too many federated joins, try again later.",
                ),
            );
        }
        let features = s.features.clone();
        let local_url = s.backend_url.to_string();
        // Out of a local room first (telling its Nextcloud).
        st.leave_room(sid, true);
        let link = self.start_federation(
            sid,
            id,
            target,
            msg.roomid.clone(),
            msg.sessionid.clone(),
            features,
            &local_url,
        );
        if let Some(s) = st.sessions.map.get_mut(sid) {
            s.fed_link = Some(Box::new(link));
        }
    }

    /// A `room` request of a session in a federated room: a leave goes to
    /// the remote server (true: handled); a local join closes the link
    /// first.
    fn leave_federation(&self, sid: &Arc<str>, id: Option<&str>, leave: bool) -> bool {
        let mut st = self.lock();
        let Some(s) = st.sessions.map.get_mut(sid) else {
            return false;
        };
        let Some(link) = s.fed_link.as_ref() else {
            return false;
        };
        if leave {
            let cmd = FedCmd::Leave {
                id: id.map(str::to_string),
            };
            if link.send(cmd) {
                return true;
            }
        }
        // The link ends with its handle.
        s.fed_link = None;
        false
    }
}

impl State {
    /// A Talk client that reconnected (e.g. after a network change) joins
    /// with the Nextcloud session id its old connection still uses in the
    /// room: the old session gets `bye` `room_session_reconnected` and ends,
    /// and Nextcloud is not told that it left (it is the same participant).
    fn replace_room_session(&mut self, key: &RoomKey, rs: &str, sid: &Arc<str>) {
        let Some(old) = self
            .rooms
            .get(key)
            .and_then(|r| r.nc_sessions.get(rs))
            .filter(|o| ***o != **sid)
            .cloned()
        else {
            return;
        };
        let bye = frame(
            None,
            "bye",
            &Bye {
                reason: Some(REASON_RECONNECTED),
            },
        );
        if let Some(s) = self.sessions.map.get_mut(&old) {
            tracing::info!(session = %old, backend = %key.backend, room = ?key.room, "room session reconnected on another connection, closing the old one");
            // Out of the room without telling Nextcloud; the room itself
            // stays (the new session joins it right away).
            s.room = None;
            s.room_session_id = None;
            if let Some(room) = self.rooms.get_mut(key) {
                room.remove_member(&old);
                room.nc_sessions.remove(rs);
            }
            self.publish_left(key, &old);
            let leave = event_frame("room", "leave", &[&*old]);
            self.broadcast(key, &leave, None);
            self.end_session(&old, Some(bye));
        } else if let Some(owner) = self.cluster.remote.get(&old).map(|r| r.info.owner.clone()) {
            // Its process ends it; the leave event comes from there.
            self.end_remote_session(&owner, &old, REASON_RECONNECTED);
        }
    }
}

/// `bye` reason of a session replaced by a reconnected Talk client.
pub(crate) const REASON_RECONNECTED: &str = "room_session_reconnected";

impl State {
    /// The session vanished while Nextcloud was asked whether it may join:
    /// the room prepared for it must not stay behind, and Nextcloud, which
    /// let it join, is told that it left.
    fn joiner_vanished(&mut self, j: Joiner, nc_session: Option<Arc<str>>) {
        self.drop_room_if_unserved(&j.key);
        if let (SessionKind::Client, Some(rs)) = (&j.kind, nc_session) {
            self.effects.push(super::Effect::Left {
                to: super::Nextcloud {
                    url: j.url,
                    base: j.base,
                    secret: j.secret,
                },
                room: j.key.room.clone(),
                user_id: j.user_id,
                room_session_id: rs,
                actor: j.actor,
            });
        }
    }
}

/// A join of a room waiting for Nextcloud (and the bus), registered in
/// [`super::room::Rooms::begin_join`] while it lives. Dropped after the
/// function's other locals, so never while the hub's lock is held there.
struct JoinWaiting<'a> {
    hub: &'a Hub,
    key: RoomKey,
}

impl<'a> JoinWaiting<'a> {
    fn new(hub: &'a Hub, key: &RoomKey) -> Self {
        hub.lock().rooms.begin_join(key);
        JoinWaiting {
            hub,
            key: key.clone(),
        }
    }
}

impl Drop for JoinWaiting<'_> {
    fn drop(&mut self) {
        self.hub.lock().rooms.end_join(&self.key);
    }
}

/// What a join needs of the session, taken under the lock before
/// Nextcloud is asked (no lock across the await).
struct Joiner {
    key: RoomKey,
    kind: SessionKind,
    user_id: Option<Arc<str>>,
    url: Arc<str>,
    base: Arc<str>,
    secret: Vec<u8>,
    /// (actor type, actor id) of a federated session.
    actor: Option<(String, String)>,
}

impl Hub {
    /// Handles a client's `room` request (join, or leave with an empty id).
    pub(crate) async fn room_request(
        self: &Arc<Self>,
        sid: &Arc<str>,
        id: Option<String>,
        msg: RoomClientMessage,
    ) {
        if let Some(fed) = msg.federation.clone() {
            return self.federated_join(sid, id, &msg, &fed);
        }
        if self.leave_federation(sid, id.as_deref(), msg.roomid.is_empty()) {
            return;
        }
        let id = id.as_deref();
        if msg.roomid.is_empty() {
            let reply = frame(
                id,
                "room",
                &RoomReply {
                    roomid: "",
                    properties: None,
                    bandwidth: None,
                },
            );
            let mut st = self.lock();
            st.leave_room(sid, true);
            st.sessions.deliver(sid, &reply);
            return;
        }
        let joiner = match self.joiner(sid, &msg.roomid) {
            Ok(Some(j)) => j,
            Ok(None) => return,
            Err(e) => return self.reply_error(sid, id, e),
        };
        let nc_session: Option<Arc<str>> = Some(msg.sessionid.as_str())
            .filter(|s| !s.is_empty())
            .map(Arc::from);
        // Until this function returns, participant updates for the room
        // (if it does not exist yet) are kept for the join.
        let _waiting = JoinWaiting::new(self, &joiner.key);
        let (properties, permissions) = if joiner.kind == SessionKind::Internal {
            // Internal clients may join any room.
            (None, None)
        } else {
            match self.ask_to_join(&joiner, &msg).await {
                Ok(answer) => answer,
                Err(e) => return self.reply_error(sid, id, e),
            }
        };
        // With other processes: learn who is in the room there first.
        self.prepare_room(&joiner.key).await;
        let hold = self.lock().bus.clustered();
        let held = {
            let mut st = self.lock();
            if !st.sessions.map.contains_key(sid) {
                return st.joiner_vanished(joiner, nc_session);
            }
            st.leave_room(sid, true);
            let key = joiner.key;
            st.join_room(sid, id, key, properties, permissions, nc_session, hold)
        };
        if hold {
            // The other processes have the join before the client hears
            // about it (and could make Nextcloud send events about it).
            let bus = self.lock().bus.clone();
            bus.flush().await;
            let mut st = self.lock();
            for f in &held {
                st.sessions.deliver(sid, f);
            }
        }
    }

    /// The session about to join `roomid`; `already_joined` when it is in
    /// that room, None when it is gone.
    fn joiner(&self, sid: &Arc<str>, roomid: &str) -> Result<Option<Joiner>, ProtocolError> {
        let st = self.lock();
        let Some(s) = st.sessions.map.get(sid) else {
            return Ok(None);
        };
        let key = RoomKey {
            backend: s.backend.id.clone(),
            room: roomid.into(),
        };
        if s.room.as_ref() == Some(&key) {
            let props = st.rooms.get(&key).and_then(|r| r.properties.clone());
            let details = serde_json::value::to_raw_value(&RoomReply {
                roomid: &key.room,
                properties: props.as_deref(),
                bandwidth: None,
            })
            .expect("serializable");
            return Err(
                ProtocolError::new(error::ALREADY_JOINED, "Already joined this room.")
                    .with_details(details),
            );
        }
        Ok(Some(Joiner {
            key,
            kind: s.kind.clone(),
            user_id: s.user_id.clone(),
            url: s.backend_url.clone(),
            base: s.backend_base.clone(),
            secret: s.backend.secret.clone(),
            actor: s.federated.as_ref().and_then(|f| f.actor.clone()),
        }))
    }

    /// Asks Nextcloud whether the session may join: the room's properties
    /// and the session's permissions, or the error for the client.
    async fn ask_to_join(
        &self,
        j: &Joiner,
        msg: &RoomClientMessage,
    ) -> Result<(Option<Arc<RawValue>>, Option<Vec<String>>), ProtocolError> {
        let req = RoomRequest {
            version: "1.0",
            roomid: &msg.roomid,
            userid: j.user_id.as_deref().unwrap_or(""),
            sessionid: &msg.sessionid,
            action: "join",
            actor_id: j.actor.as_ref().map(|a| a.1.as_str()),
            actor_type: j.actor.as_ref().map(|a| a.0.as_str()),
            in_call: None,
        };
        let resp = match self
            .client
            .post(&j.url, &j.base, &j.secret, "room", &req)
            .await
        {
            Ok(resp) => resp,
            Err(e) => {
                tracing::warn!(room = ?msg.roomid, "room request failed: {e}");
                let code = match e {
                    crate::backend::client::BackendCallError::Throttled => error::TOO_MANY_REQUESTS,
                    _ => error::ROOM_JOIN_FAILED,
                };
                return Err(ProtocolError::new(code, e.to_string()));
            }
        };
        if resp.kind == BackendResponseKind::Error {
            return Err(match resp.error {
                Some(e) if !e.code.is_empty() => ProtocolError {
                    code: e.code,
                    message: e.message,
                    details: e.details,
                },
                _ => ProtocolError::new(error::NO_SUCH_ROOM, "The room could not be joined."),
            });
        }
        match resp.room {
            Some(room) if resp.kind == BackendResponseKind::Room => {
                Ok((room.properties.map(Arc::from), room.permissions))
            }
            _ => Err(ProtocolError::new(
                error::ROOM_JOIN_FAILED,
                "Invalid answer of the backend.",
            )),
        }
    }
}
