//! `internal` messages of internal clients: virtual sessions, in-call flags
//! of the internal client, and answers to dialout requests.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::effects::{Effect, Nextcloud};
use super::room::RoomKey;
use super::session::{flags, new_id, Actor, Session, SessionKind};
use super::virtual_backend::VirtualNc;
use super::{invalid_format, Hub, State};
use crate::api::client::{
    AddSession, InternalClientMessage, InternalRequest, RemoveSession, UpdateSession,
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
    ) -> Option<Wait> {
        let is_internal = self
            .lock()
            .sessions
            .map
            .get(sid)
            .is_some_and(|s| s.kind == SessionKind::Internal);
        if !is_internal {
            self.reply_error(
                sid,
                id,
                ProtocolError::new(error::NOT_ALLOWED, "Only internal clients may send this."),
            );
            return None;
        }
        let req = match InternalRequest::try_from(msg) {
            Ok(r) => r,
            Err(e) => {
                self.reply_error(sid, id, invalid_format(e));
                return None;
            }
        };
        match req {
            InternalRequest::AddSession(add) => return self.add_virtual(sid, id, add),
            InternalRequest::UpdateSession(u) => self.update_virtual(sid, id, u),
            InternalRequest::RemoveSession(r) => self.remove_virtual(sid, id, r),
            InternalRequest::InCall(i) => self.mutate(|st| st.internal_incall(sid, i.incall)),
            InternalRequest::Dialout(d) => self.dialout_message(sid, id, d),
        }
        None
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

    /// `removesession`: a virtual session of this internal client ends
    /// here at once; Nextcloud is told after, and when that fails the
    /// internal client gets `remove_failed` with the request id (as Go).
    fn remove_virtual(self: &Arc<Self>, sid: &Arc<str>, id: Option<&str>, r: RemoveSession) {
        let removed = self.mutate(|st| {
            let vsid = st
                .sessions
                .map
                .get(sid)
                .and_then(|s| s.virtuals.get(&r.sessionid))
                .filter(|v| st.sessions.map.contains_key(*v))
                .cloned()?;
            let s = &st.sessions.map[&vsid];
            let nc = s.room.as_ref().map(|k| VirtualNc::of(s, k.room.clone()));
            st.leave_room(&vsid, false);
            st.end_session(&vsid, None);
            Some(nc)
        });
        match removed {
            None => self.reply_error(
                sid,
                id,
                ProtocolError::new(error::NO_SUCH_SESSION, "Unknown virtual session."),
            ),
            Some(None) => {}
            Some(Some(nc)) => {
                let (hub, sid, id) = (self.clone(), sid.clone(), id.map(str::to_string));
                // Tracked: shutdown and the end of a drain wait for it.
                self.client.spawn(async move {
                    if let Err(e) = nc.remove(&hub.client).await {
                        hub.reply_error(&sid, id.as_deref(), e);
                    }
                });
            }
        }
    }

    /// `addsession`: the virtual session is added once Nextcloud agreed
    /// (the internal client's reader waits for that, as with Go, so its
    /// next messages find the session); `add_failed` otherwise.
    fn add_virtual(
        self: &Arc<Self>,
        sid: &Arc<str>,
        id: Option<&str>,
        add: AddSession,
    ) -> Option<Wait> {
        if add.sessionid.is_empty() || add.roomid.is_empty() {
            self.reply_error(sid, id, invalid_format("sessionid and roomid are required"));
            return None;
        }
        let pending = match self.mutate(|st| st.reserve_virtual(sid, add)) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => {
                self.reply_error(sid, id, e);
                return None;
            }
        };
        let (hub, sid, id) = (self.clone(), sid.clone(), id.map(str::to_string));
        Some(Box::pin(async move {
            match pending.nc.add(&hub.client).await {
                Ok(()) => hub.mutate(|st| st.add_virtual(&sid, pending)),
                Err(e) => {
                    hub.mutate(|st| st.unreserve_virtual(&sid, &pending));
                    hub.reply_error(&sid, id.as_deref(), e);
                }
            }
        }))
    }
}

/// What the reader of a connection waits for before reading on.
pub(crate) type Wait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A virtual session waiting for Nextcloud: its id is reserved in the
/// internal client's session, nothing else exists yet.
pub(super) struct PendingVirtual {
    nc: VirtualNc,
    client_sid: String,
    key: RoomKey,
    flags: u32,
}

impl State {
    /// Checks an `addsession` of the internal client `sid` (the room
    /// exists, the id is new) and reserves its id; None when the internal
    /// client is gone.
    pub(super) fn reserve_virtual(
        &mut self,
        sid: &Arc<str>,
        add: AddSession,
    ) -> Result<Option<PendingVirtual>, ProtocolError> {
        let vsid: Arc<str> = format!("{}{}", self.bus.pid(), new_id()).into();
        let Some(owner) = self.sessions.map.get_mut(sid) else {
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
        let actor = add.options.and_then(|o| match (o.actor_id, o.actor_type) {
            (Some(id), Some(kind)) if !id.is_empty() && !kind.is_empty() => {
                Some(Arc::new(Actor { id, kind }))
            }
            _ => None,
        });
        owner.virtuals.insert(add.sessionid.clone(), vsid.clone());
        Ok(Some(PendingVirtual {
            nc: VirtualNc {
                to: Nextcloud {
                    url: owner.backend_url.clone(),
                    base: owner.backend_base.clone(),
                    secret: owner.backend.secret.clone(),
                },
                room: key.room.clone(),
                vsid,
                user_id: add.userid.filter(|u| !u.is_empty()).map(Arc::from),
                user: add.user.map(Arc::from),
                actor,
                in_call,
            },
            client_sid: add.sessionid,
            key,
            flags: add.flags.unwrap_or(0),
        }))
    }

    /// Nextcloud refused: the id is free again.
    fn unreserve_virtual(&mut self, sid: &Arc<str>, p: &PendingVirtual) {
        if let Some(o) = self.sessions.map.get_mut(sid) {
            if o.virtuals.get(&p.client_sid) == Some(&p.nc.vsid) {
                o.virtuals.remove(&p.client_sid);
            }
        }
    }

    /// Nextcloud agreed: the virtual session joins its room. When its
    /// internal client went away meanwhile, Nextcloud is told it is gone.
    pub(super) fn add_virtual(&mut self, sid: &Arc<str>, p: PendingVirtual) {
        let reserved = self
            .sessions
            .map
            .get(sid)
            .is_some_and(|o| o.virtuals.get(&p.client_sid) == Some(&p.nc.vsid));
        if !reserved {
            self.effects.push(Effect::VirtualRemoved(p.nc));
            return;
        }
        let owner = &self.sessions.map[sid];
        let nc = p.nc;
        let vsid = nc.vsid.clone();
        let v = Session {
            id: vsid.clone(),
            resume_id: None,
            kind: SessionKind::Virtual {
                owner: sid.clone(),
                client_sid: p.client_sid,
                actor: nc.actor,
            },
            backend: owner.backend.clone(),
            backend_base: owner.backend_base.clone(),
            backend_url: owner.backend_url.clone(),
            user_id: nc.user_id,
            user: nc.user,
            features: Vec::new(),
            room: None,
            room_session_id: None,
            permissions: None,
            conn: None,
            queue: VecDeque::new(),
            queue_bytes: 0,
            carried: (0, 0),
            in_call: nc.in_call,
            flags: p.flags,
            virtuals: HashMap::new(),
            fed_link: None,
            client_ip: None,
            country: None,
            mcu_tasks: None,
            federated: None,
        };
        self.sessions.insert(v);
        let rs = Some(vsid.clone());
        self.join_room(&vsid, None, p.key.clone(), None, None, rs, false);
        self.publish_internal_incall(&p.key);
        if p.flags != 0 {
            self.flags_event(&p.key, &vsid, p.flags);
        }
    }
}
