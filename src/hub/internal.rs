//! `internal` messages of internal clients: virtual sessions, in-call flags
//! of the internal client, and answers to dialout requests.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::value::RawValue;

use super::room::RoomKey;
use super::session::{flags, new_id, Session, SessionKind};
use super::{invalid_format, Hub, State};
use crate::api::backend::{RoomRequest, SessionRequest};
use crate::api::client::{
    AddSession, AddSessionOptions, InternalClientMessage, InternalRequest, RemoveSession,
    UpdateSession,
};
use crate::api::error::{self, ProtocolError};
use crate::api::server::event_frame;
use crate::bus::MemberKind;

impl State {
    /// `participants` `update` with the in-call state of the internal and
    /// virtual sessions of a room (they are not known to Nextcloud).
    pub(crate) fn publish_internal_incall(&mut self, key: &RoomKey) {
        let entries = self.internal_incall_entries(key);
        if entries.is_empty() {
            return;
        }
        let f = event_frame(
            "participants",
            "update",
            &serde_json::json!({"roomid": &*key.room, "users": entries}),
        );
        self.broadcast(key, &f, None);
    }

    /// Participant entries of the internal and virtual sessions of a room.
    pub(crate) fn internal_incall_entries(&self, key: &RoomKey) -> Vec<serde_json::Value> {
        let Some(room) = self.rooms.get(key) else {
            return Vec::new();
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        room.members
            .iter()
            .filter_map(|m| {
                let (kind, in_call, id) = match self.sessions.map.get(m) {
                    Some(s) => (super::cluster::member_kind(&s.kind), s.in_call, &*s.id),
                    None => {
                        let r = &self.cluster.remote.get(m)?.info;
                        (r.kind, r.in_call, r.sid.as_str())
                    }
                };
                if kind == MemberKind::Client {
                    return None;
                }
                Some(serde_json::json!({
                    "inCall": in_call,
                    "sessionId": id,
                    "lastPing": now,
                    kind.as_str(): true,
                }))
            })
            .collect()
    }

    /// The internal client's own in-call state; the room learns of a change.
    fn internal_incall(&mut self, sid: &Arc<str>, incall: u32) {
        let Some(s) = self.sessions.map.get_mut(sid) else {
            return;
        };
        let changed = s.in_call != incall;
        s.in_call = incall;
        if let (true, Some(room)) = (changed, s.room.clone()) {
            self.publish_member(&room, sid, false);
            self.publish_internal_incall(&room);
        }
    }

    fn flags_event(&mut self, key: &RoomKey, sid: &str, flags: u32) {
        let f = event_frame(
            "participants",
            "flags",
            &serde_json::json!({"roomid": &*key.room, "sessionid": sid, "flags": flags}),
        );
        self.broadcast(key, &f, None);
    }
}

impl Hub {
    /// Handles an `internal` message.
    pub(crate) fn internal(
        self: &Arc<Self>,
        sid: &Arc<str>,
        id: Option<&str>,
        msg: InternalClientMessage,
    ) {
        let is_internal = self
            .lock()
            .sessions
            .map
            .get(sid)
            .is_some_and(|s| s.kind == SessionKind::Internal);
        if !is_internal {
            return self.reply_error(
                sid,
                id,
                ProtocolError::new(error::NOT_ALLOWED, "Only internal clients may send this."),
            );
        }
        let req = match InternalRequest::try_from(msg) {
            Ok(r) => r,
            Err(e) => return self.reply_error(sid, id, invalid_format(e)),
        };
        match req {
            InternalRequest::AddSession(add) => self.add_virtual(sid, id, add),
            InternalRequest::UpdateSession(u) => self.update_virtual(sid, id, u),
            InternalRequest::RemoveSession(r) => self.remove_virtual(sid, id, r),
            InternalRequest::InCall(i) => self.mutate(|st| st.internal_incall(sid, i.incall)),
            InternalRequest::Dialout(d) => self.dialout_message(sid, id, d),
        }
    }

    /// `updatesession`: a virtual session's in-call state or flags changed.
    fn update_virtual(&self, sid: &Arc<str>, id: Option<&str>, u: UpdateSession) {
        let mut st = self.lock();
        let Some(vsid) = st
            .sessions
            .map
            .get(sid)
            .and_then(|s| s.virtuals.get(&u.sessionid))
            .cloned()
        else {
            drop(st);
            return self.reply_error(
                sid,
                id,
                ProtocolError::new(error::NO_SUCH_SESSION, "Unknown virtual session."),
            );
        };
        let Some(v) = st.sessions.map.get_mut(&vsid) else {
            return;
        };
        let room = v.room.clone();
        let incall_changed = u.incall.is_some_and(|i| i != v.in_call);
        let flags_changed = u.flags.is_some_and(|f| f != v.flags);
        if let Some(i) = u.incall {
            v.in_call = i;
        }
        if let Some(f) = u.flags {
            v.flags = f;
        }
        let new_flags = v.flags;
        if let Some(room) = room {
            st.publish_member(&room, &vsid, false);
            if incall_changed {
                st.publish_internal_incall(&room);
            }
            if flags_changed {
                st.flags_event(&room, &vsid, new_flags);
            }
        }
    }

    /// `removesession`: a virtual session of this internal client ends.
    fn remove_virtual(&self, sid: &Arc<str>, id: Option<&str>, r: RemoveSession) {
        let removed = self.mutate(|st| {
            let vsid = st
                .sessions
                .map
                .get(sid)
                .and_then(|s| s.virtuals.get(&r.sessionid))
                .cloned();
            vsid.map(|vsid| st.end_session(&vsid, None)).is_some()
        });
        if !removed {
            self.reply_error(
                sid,
                id,
                ProtocolError::new(error::NO_SUCH_SESSION, "Unknown virtual session."),
            );
        }
    }

    fn add_virtual(&self, sid: &Arc<str>, id: Option<&str>, add: AddSession) {
        if add.sessionid.is_empty() || add.roomid.is_empty() {
            return self.reply_error(sid, id, invalid_format("sessionid and roomid are required"));
        }
        match self.mutate(|st| st.add_virtual(sid, add)) {
            Ok(Some(added)) => self.tell_virtual_added(added),
            Ok(None) => {}
            Err(e) => self.reply_error(sid, id, e),
        }
    }

    /// Tells Nextcloud (in the background) about a new virtual session: as
    /// a room join with the actor when the internal client gave options,
    /// else as an added session.
    fn tell_virtual_added(&self, added: VirtualAdded) {
        let client = self.client.clone();
        tokio::spawn(async move {
            let VirtualAdded {
                vsid,
                room,
                options,
                user_id,
                user,
                in_call,
                url,
                base,
                secret,
            } = added;
            let result = match &options {
                Some(o) => {
                    let req = RoomRequest {
                        version: "1.0",
                        roomid: &room,
                        userid: user_id.as_deref().unwrap_or(""),
                        sessionid: &vsid,
                        action: "join",
                        actor_id: o.actor_id.as_deref(),
                        actor_type: o.actor_type.as_deref(),
                        in_call: Some(in_call),
                    };
                    client.post(&url, &base, &secret, "room", &req).await
                }
                None => {
                    let req = SessionRequest {
                        version: "1.0",
                        roomid: &room,
                        action: "add",
                        sessionid: &vsid,
                        userid: user_id.as_deref(),
                        user: user.as_deref(),
                    };
                    client.post(&url, &base, &secret, "session", &req).await
                }
            };
            if let Err(e) = result {
                tracing::warn!(room = ?room, "could not tell backend about virtual session: {e}");
            }
        });
    }
}

/// A virtual session just added, as Nextcloud must be told about it.
struct VirtualAdded {
    vsid: Arc<str>,
    room: String,
    options: Option<AddSessionOptions>,
    user_id: Option<Arc<str>>,
    user: Option<Arc<RawValue>>,
    in_call: u32,
    url: Arc<str>,
    base: Arc<str>,
    secret: Vec<u8>,
}

impl State {
    /// Adds a virtual session of the internal client `sid` to a room it
    /// names; None when the internal client is gone.
    fn add_virtual(
        &mut self,
        sid: &Arc<str>,
        add: AddSession,
    ) -> Result<Option<VirtualAdded>, ProtocolError> {
        let Some(owner) = self.sessions.map.get(sid) else {
            return Ok(None);
        };
        if owner.virtuals.contains_key(&add.sessionid) {
            return Err(invalid_format(
                "a virtual session with this id exists already",
            ));
        }
        let key = RoomKey {
            backend: owner.backend.id.clone(),
            room: add.roomid.as_str().into(),
        };
        if !self.rooms.contains_key(&key) {
            return Err(ProtocolError::new(
                error::NO_SUCH_ROOM,
                "The room does not exist.",
            ));
        }
        let in_call = if owner.has_feature("internal-incall") {
            add.incall.unwrap_or(0)
        } else {
            flags::IN_CALL | flags::WITH_PHONE
        };
        let vsid: Arc<str> = format!("{}{}", self.bus.pid(), new_id()).into();
        let v = Session {
            id: vsid.clone(),
            resume_id: None,
            kind: SessionKind::Virtual {
                owner: sid.clone(),
                client_sid: add.sessionid.clone(),
            },
            backend: owner.backend.clone(),
            backend_base: owner.backend_base.clone(),
            backend_url: owner.backend_url.clone(),
            user_id: add.userid.clone().filter(|u| !u.is_empty()).map(Arc::from),
            user: add.user.map(Arc::from),
            features: Vec::new(),
            room: None,
            room_session_id: None,
            permissions: None,
            conn: None,
            queue: VecDeque::new(),
            queue_bytes: 0,
            carried: (0, 0),
            in_call,
            flags: add.flags.unwrap_or(0),
            virtuals: HashMap::new(),
            fed_link: None,
            mcu_tasks: None,
            federated: None,
        };
        let added = VirtualAdded {
            vsid: vsid.clone(),
            room: add.roomid,
            options: add.options,
            user_id: v.user_id.clone(),
            user: v.user.clone(),
            in_call,
            url: owner.backend_url.clone(),
            base: owner.backend_base.clone(),
            secret: owner.backend.secret.clone(),
        };
        let vflags = v.flags;
        self.sessions.insert(v);
        if let Some(o) = self.sessions.map.get_mut(sid) {
            o.virtuals.insert(add.sessionid, vsid.clone());
        }
        let rs = Some(vsid.clone());
        self.join_room(&vsid, None, key.clone(), None, None, rs, false);
        self.publish_internal_incall(&key);
        if vflags != 0 {
            self.flags_event(&key, &vsid, vflags);
        }
        Ok(Some(added))
    }
}
