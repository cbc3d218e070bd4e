//! Backend API requests (`POST /api/v1/room/{id}` from Nextcloud) turned
//! into room state changes and client events.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::chat::ChatFrames;
pub use super::dialout::DialoutError;
use super::room::RoomKey;
use super::session::SessionKind;
use super::{Hub, State};
use crate::api::backend::{
    BackendRoomRequest, InCallChange, ParticipantsChange, RoomMessage, RoomUsersChange, SwitchTo,
};
use crate::api::server::{event_frame, frame, RoomReply};
use crate::backend::registry::Backend;

/// What a backend API request did; `http/` turns it into the answer.
#[derive(Debug)]
pub enum BackendApiOk {
    /// Applied here (or published to every process).
    Done,
    /// An internal client started the dialout: its call id.
    DialoutStarted {
        /// The call id the SIP bridge reported.
        callid: String,
    },
}

/// Why a backend API request failed; `http/` picks the status code.
#[derive(Debug)]
pub enum BackendApiError {
    /// The request is malformed (`invalid_request`).
    InvalidRequest(String),
    /// The dialout could not be started.
    Dialout(DialoutError),
    /// Clustered and the bus (NATS) is not connected: the request cannot
    /// reach the other processes now (Nextcloud may send it again).
    BusUnavailable,
}

/// The outcome of a backend API request.
pub type BackendApiResult = Result<BackendApiOk, BackendApiError>;

impl State {
    /// Local client sessions in a room (the recipients of room events that
    /// Nextcloud sent without user lists).
    fn local_client_members(&self, key: &RoomKey) -> Vec<Arc<str>> {
        self.rooms
            .get(key)
            .map(|r| {
                r.members
                    .iter()
                    .filter(|m| {
                        self.sessions
                            .map
                            .get(*m)
                            .is_some_and(|s| s.kind == SessionKind::Client)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Delivers `f` to the local client members of a room whose user is not
    /// in `skip_users` (those were told through their user already).
    fn members_except_users(
        &mut self,
        key: &RoomKey,
        skip_users: &[String],
        f: &crate::api::server::Frame,
    ) {
        let skip: HashSet<&str> = skip_users.iter().map(String::as_str).collect();
        for sid in self.local_client_members(key) {
            let told = self
                .sessions
                .map
                .get(&sid)
                .and_then(|s| s.user_id.as_deref())
                .is_some_and(|u| skip.contains(u));
            if !told {
                self.sessions.deliver(&sid, f);
            }
        }
    }

    /// Removes sessions from a room on the backend's behalf: they get a
    /// `room` message with an empty id, the others a leave event.
    fn remove_from_room(&mut self, key: &RoomKey, sids: &[Arc<str>]) {
        let f = frame(
            None,
            "room",
            &RoomReply {
                roomid: "",
                properties: None,
                bandwidth: None,
            },
        );
        let deadline = tokio::time::Instant::now() + self.sessions.limits.room_timeout;
        for sid in sids {
            let Some(s) = self.sessions.map.get(sid) else {
                continue;
            };
            if s.room.as_ref() != Some(key) {
                continue;
            }
            // A guest must join a room again in time, as after its hello.
            let guest = s.kind == SessionKind::Client && s.user_id.is_none();
            self.leave_room(sid, false);
            self.sessions.deliver(sid, &f);
            if guest {
                self.sessions.room_deadlines.insert(sid.clone(), deadline);
            }
        }
    }

    fn roomlist_to_users(
        &mut self,
        backend: &Arc<str>,
        users: &[String],
        f: &crate::api::server::Frame,
    ) {
        for u in users {
            self.send_to_user(backend, u, f, None);
        }
    }

    /// `update` to all users not already notified; without the list of all
    /// users (`changed-users`), to the room's members not already notified.
    fn roomlist_update_others(
        &mut self,
        key: &RoomKey,
        notified: &[String],
        all: Option<&[String]>,
        properties: Option<&serde_json::value::RawValue>,
    ) {
        let f = event_frame(
            "roomlist",
            "update",
            &json!({"roomid": &*key.room, "properties": properties}),
        );
        let Some(all) = all else {
            self.members_except_users(key, notified, &f);
            return;
        };
        let notified: HashSet<&str> = notified.iter().map(String::as_str).collect();
        let others: Vec<String> = all
            .iter()
            .filter(|u| !notified.contains(u.as_str()))
            .cloned()
            .collect();
        self.roomlist_to_users(&key.backend, &others, &f);
    }

    fn members_of_users(&self, key: &RoomKey, users: &[String]) -> Vec<Arc<str>> {
        let users: HashSet<&str> = users.iter().map(String::as_str).collect();
        self.rooms
            .get(key)
            .map(|r| {
                r.members
                    .iter()
                    .filter(|m| {
                        self.sessions.map.get(*m).is_some_and(|s| {
                            s.kind == SessionKind::Client
                                && s.user_id.as_deref().is_some_and(|u| users.contains(u))
                        })
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl State {
    /// `invite`: the invited users get `roomlist` `invite`, the others an
    /// `update`.
    fn invite(&mut self, key: &RoomKey, b: &RoomUsersChange) {
        let f = event_frame(
            "roomlist",
            "invite",
            &json!({"roomid": &*key.room, "properties": b.properties.as_deref()}),
        );
        self.roomlist_to_users(&key.backend, &b.userids, &f);
        self.roomlist_update_others(
            key,
            &b.userids,
            b.alluserids.as_deref(),
            b.properties.as_deref(),
        );
    }

    /// `disinvite`: the users (and guest sessions) get `roomlist`
    /// `disinvite`; their sessions in that room end (as the Go server
    /// closes them after the event: the room's others see them leave,
    /// Nextcloud gets their `leave`, the connection closes with 1000).
    /// The others get an `update`.
    fn disinvite(&mut self, key: &RoomKey, b: &RoomUsersChange) {
        let f = event_frame(
            "roomlist",
            "disinvite",
            &json!({"roomid": &*key.room, "reason": "disinvited"}),
        );
        self.roomlist_to_users(&key.backend, &b.userids, &f);
        let mut sids = self.members_of_users(key, &b.userids);
        let nc: HashSet<String> = b.sessionids.iter().cloned().collect();
        for sid in self.rooms.sessions_by_nc_ids(key, &nc) {
            if !sids.contains(&sid) {
                // Guests have no user id: tell the session itself.
                self.sessions.deliver(&sid, &f);
                sids.push(sid);
            }
        }
        for sid in &sids {
            let in_room = self
                .sessions
                .map
                .get(sid)
                .is_some_and(|s| s.room.as_ref() == Some(key) && !s.is_virtual());
            if in_room {
                tracing::info!(session = %sid, backend = %key.backend, room = ?key.room, "disinvited from its room, ending the session");
                self.end_session(sid, None);
            }
        }
        // A virtual session stays; its internal client is asked to hang
        // up (and then removes it), as the Go server does.
        sids.retain(|sid| !self.hang_up_virtual(key, sid));
        self.remove_from_room(key, &sids);
        self.roomlist_update_others(
            key,
            &b.userids,
            b.alluserids.as_deref(),
            b.properties.as_deref(),
        );
    }

    /// Sends the internal client of virtual session `sid` (in room `key`)
    /// a `hangup` control for it (reason `disinvited`); false when `sid`
    /// is no such session.
    fn hang_up_virtual(&mut self, key: &RoomKey, sid: &Arc<str>) -> bool {
        let Some(s) = self.sessions.map.get(sid) else {
            return false;
        };
        let SessionKind::Virtual {
            owner, client_sid, ..
        } = &s.kind
        else {
            return false;
        };
        if s.room.as_ref() != Some(key) {
            return false;
        }
        let mut recipient = json!({"type": "session", "sessionid": client_sid});
        if let Some(u) = &s.user_id {
            recipient["userid"] = json!(&**u);
        }
        let f = frame(
            None,
            "control",
            &json!({"recipient": recipient,
                    "data": {"type": "hangup", "hangup": {"reason": "disinvited"}}}),
        );
        let owner = owner.clone();
        tracing::info!(session = %sid, room = ?key.room, "virtual session disinvited, asking its internal client to hang up");
        self.sessions.deliver(&owner, &f);
        true
    }

    /// `update`: new properties for the members (`room`, only when they
    /// differ from the room's, byte for byte, as the Go server: the Talk
    /// client refetches its conversations on each) and the users
    /// (`roomlist` `update`).
    fn update_room(&mut self, key: &RoomKey, b: &RoomUsersChange) {
        let changed = self.rooms.get_mut(key).is_some_and(|room| {
            let new = b.properties.as_deref().map(RawValue::get);
            if room.properties.as_deref().map(RawValue::get) == new {
                return false;
            }
            room.properties = b.properties.as_deref().map(|p| Arc::from(p.to_owned()));
            true
        });
        if changed {
            let f = frame(
                None,
                "room",
                &RoomReply {
                    roomid: &key.room,
                    properties: b.properties.as_deref(),
                    bandwidth: None,
                },
            );
            self.broadcast(key, &f, None);
        }
        let f = event_frame(
            "roomlist",
            "update",
            &json!({"roomid": &*key.room, "properties": b.properties.as_deref()}),
        );
        if b.userids.is_empty() {
            // `changed-users`: no list, the members are told.
            self.members_except_users(key, &[], &f);
        } else {
            self.roomlist_to_users(&key.backend, &b.userids, &f);
        }
    }

    /// `delete`: everybody concerned gets `roomlist` `disinvite`, the
    /// members leave and the room is gone.
    fn delete_room(&mut self, key: &RoomKey, b: &RoomUsersChange) {
        let f = event_frame(
            "roomlist",
            "disinvite",
            &json!({"roomid": &*key.room, "reason": "deleted"}),
        );
        self.roomlist_to_users(&key.backend, &b.userids, &f);
        // Members not told through their user (guests, or no list with
        // `changed-users`) are told directly.
        self.members_except_users(key, &b.userids, &f);
        let members: Vec<Arc<str>> = self
            .rooms
            .get(key)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        self.remove_from_room(key, &members);
        self.rooms.remove(key);
    }

    /// `participants`: permissions applied, participant state kept, the
    /// members get the `participants` `update` event.
    fn participants_changed(&mut self, key: &RoomKey, p: &ParticipantsChange) {
        self.apply_permissions(key, &p.changed);
        let changed = self.update_participants(key, &p.changed, p.users.as_deref(), false);
        if let Some(f) = self.participants_frame(key, &changed, p.users.as_deref()) {
            self.broadcast(key, &f, None);
        }
    }

    /// `incall`: the in-call state of all or of some participants.
    fn incall_changed(&mut self, key: &RoomKey, ic: &InCallChange) {
        if ic.all {
            // The flags as a number, as the Go server sends them (the Talk
            // client compares them with `=== 0`): `true` / `false` are 1 / 0;
            // anything else is ignored.
            let flags = match &ic.incall {
                Value::Number(n) => n.as_i64(),
                Value::Bool(b) => Some(i64::from(*b)),
                _ => None,
            };
            let Some(flags) = flags else {
                tracing::info!(room = ?key.room, incall = %ic.incall, "incall for all with unsupported flags, ignored");
                return;
            };
            return self.incall_all(key, &Value::from(flags));
        }
        let changed = self.update_participants(key, &ic.changed, ic.users.as_deref(), true);
        // In changes-only mode a request that changed no in-call state is
        // not repeated to the clients.
        let repeat = changed.is_empty() && ic.users.is_none();
        if !repeat {
            if let Some(f) = self.participants_frame(key, &changed, ic.users.as_deref()) {
                self.broadcast(key, &f, None);
            }
        }
    }

    /// `incall` with `all`: every client member is now in that call state,
    /// also those Nextcloud never listed (for `recipient-call`).
    fn incall_all(&mut self, key: &RoomKey, incall: &Value) {
        let room_sessions: Vec<String> = self
            .rooms
            .get(key)
            .map(|r| {
                r.members
                    .iter()
                    .filter_map(|m| self.client_room_session_id(m))
                    .collect()
            })
            .unwrap_or_default();
        let previous = self
            .rooms
            .get(key)
            .map(|r| r.participants.clone())
            .unwrap_or_default();
        if let Some(room) = self.rooms.get_mut(key) {
            for p in room.participants.values_mut() {
                p.insert("inCall".into(), incall.clone());
            }
            for rs in room_sessions {
                room.participants.entry(rs.clone()).or_insert_with(|| {
                    let mut e = Map::new();
                    e.insert("sessionId".into(), Value::String(rs));
                    e.insert("inCall".into(), incall.clone());
                    e
                });
            }
        }
        self.count_call_changes(key, &previous);
        let f = event_frame(
            "participants",
            "update",
            &json!({"roomid": &*key.room, "incall": incall, "all": true}),
        );
        self.broadcast(key, &f, None);
    }

    /// The Nextcloud session id of a member that is a (not federated)
    /// client, local or on another process: federated sessions join calls
    /// themselves.
    fn client_room_session_id(&self, member: &str) -> Option<String> {
        match self.sessions.map.get(member) {
            Some(s) if s.kind == SessionKind::Client && s.federated.is_none() => {
                s.room_session_id.as_deref().map(str::to_string)
            }
            Some(_) => None,
            None => self
                .cluster
                .remote
                .get(member)
                .filter(|r| r.info.kind == crate::bus::MemberKind::Client && !r.info.federated)
                .and_then(|r| r.info.roomsessionid.clone()),
        }
    }

    /// `message`: a chat message in the form each member understands, or
    /// any other data as a `room` `message` event.
    fn room_message(&mut self, key: &RoomKey, m: &RoomMessage) {
        let Some(data) = &m.data else {
            return;
        };
        match ChatFrames::new(&key.room, data) {
            Some(chat) => self.deliver_chat(key, &chat),
            None => {
                let f = event_frame(
                    "room",
                    "message",
                    &json!({"roomid": &*key.room, "data": data}),
                );
                self.broadcast(key, &f, None);
            }
        }
    }

    /// `switchto`: the listed sessions are asked to switch rooms, with the
    /// details Nextcloud gave for each.
    fn switch_to(&mut self, key: &RoomKey, sw: &SwitchTo) -> Result<(), BackendApiError> {
        let targets: Vec<(String, Option<Value>)> = match &sw.sessions {
            Value::Array(list) => list
                .iter()
                .filter_map(|v| v.as_str().map(|s| (s.to_string(), None)))
                .collect(),
            Value::Object(map) => map
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone()).filter(|v| !v.is_null())))
                .collect(),
            Value::Null => Vec::new(),
            _ => return Err(invalid_request("sessions must be a list or a map")),
        };
        for (nc, details) in targets {
            let sid = self
                .rooms
                .get(key)
                .and_then(|r| r.nc_sessions.get(nc.as_str()))
                .cloned();
            let Some(sid) = sid else {
                continue;
            };
            let body = match details {
                Some(d) => json!({"roomid": &sw.roomid, "details": d}),
                None => json!({"roomid": &sw.roomid}),
            };
            let f = event_frame("room", "switchto", &body);
            self.sessions.deliver(&sid, &f);
        }
        Ok(())
    }
}

impl Hub {
    /// Entry point of `POST /api/v1/room/{id}`. With other processes the
    /// request is published and every process (this one included) applies
    /// it to its own sessions in bus order; `dialout` is answered here.
    pub async fn backend_api(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        backend_url: &str,
        room_id: &str,
        req: BackendRoomRequest,
        raw: &[u8],
    ) -> BackendApiResult {
        let bus = self.lock().bus.clone();
        if bus.clustered() && !matches!(req, BackendRoomRequest::Dialout(_)) {
            if !bus.connected() {
                // Not published: a 200 would claim an effect no process
                // may ever apply.
                return Err(BackendApiError::BusUnavailable);
            }
            let h = crate::bus::Header::Backend {
                backend: backend.id.to_string(),
                url: backend_url.to_string(),
                room: room_id.to_string(),
            };
            bus.publish(
                crate::bus::SUBJECT_ALL.to_string(),
                crate::bus::encode(&h, Some(raw)),
            );
            bus.flush().await;
            return Ok(BackendApiOk::Done);
        }
        self.backend_request(backend, backend_url, room_id, req)
            .await
    }

    /// Applies a backend API request for `room_id` of `backend` to the
    /// sessions of this process: one handler per request type.
    pub async fn backend_request(
        self: &Arc<Self>,
        backend: &Arc<Backend>,
        backend_url: &str,
        room_id: &str,
        req: BackendRoomRequest,
    ) -> BackendApiResult {
        let key = RoomKey {
            backend: backend.id.clone(),
            room: room_id.into(),
        };
        self.metrics
            .backend_requests
            .with_label_values(&[req.kind()])
            .inc();
        let key = &key;
        match req {
            BackendRoomRequest::Invite(b) => self.mutate(|st| st.invite(key, &b)),
            BackendRoomRequest::Disinvite(b) => self.mutate(|st| st.disinvite(key, &b)),
            BackendRoomRequest::Update(b) => self.mutate(|st| st.update_room(key, &b)),
            BackendRoomRequest::Delete(b) => self.mutate(|st| st.delete_room(key, &b)),
            BackendRoomRequest::Participants(p) => {
                self.mutate(|st| st.participants_changed(key, &p))
            }
            BackendRoomRequest::InCall(ic) => self.mutate(|st| st.incall_changed(key, &ic)),
            BackendRoomRequest::Message(m) => self.mutate(|st| st.room_message(key, &m)),
            BackendRoomRequest::SwitchTo(sw) => {
                return self
                    .mutate(|st| st.switch_to(key, &sw))
                    .map(|()| BackendApiOk::Done)
            }
            BackendRoomRequest::Dialout(d) => {
                return self
                    .dialout(key, backend_url, &d)
                    .await
                    .map(|callid| BackendApiOk::DialoutStarted { callid })
                    .map_err(BackendApiError::Dialout);
            }
        }
        Ok(BackendApiOk::Done)
    }
}

fn invalid_request(message: &str) -> BackendApiError {
    BackendApiError::InvalidRequest(message.to_string())
}
