//! Delivery of one frame to the local recipients a message names: the
//! members of a room, those of them in its call, the sessions of a user.
//! Each goes through [`super::Sessions::deliver`] (never blocks).

use std::sync::Arc;

use super::room::RoomKey;
use super::session::{self, SessionKind};
use super::{in_call_flag, State};
use crate::api::server::Frame;

impl State {
    /// Delivers one frame to every member of a room, optionally skipping one.
    pub fn broadcast(&mut self, key: &RoomKey, f: &Frame, except: Option<&str>) {
        let Some(room) = self.rooms.get(key) else {
            return;
        };
        for m in &room.members {
            if Some(&**m) != except {
                self.sessions.deliver(m, f);
            }
        }
    }

    /// Delivers one frame to the local members of a room that are in the
    /// call (recipient type `call`), but `except`.
    pub fn broadcast_call(&mut self, key: &RoomKey, f: &Frame, except: Option<&str>) {
        let Some(room) = self.rooms.get(key) else {
            return;
        };
        let targets: Vec<Arc<str>> = room
            .members
            .iter()
            .filter(|m| {
                Some(&***m) != except && (self.is_in_call(key, m) || self.arriving_in_call(key, m))
            })
            .cloned()
            .collect();
        for m in targets {
            self.sessions.deliver(&m, f);
        }
    }

    /// True for a session on its way to this process that Nextcloud lists
    /// in the room's call (its room frames are kept for it).
    fn arriving_in_call(&self, key: &RoomKey, sid: &str) -> bool {
        self.sessions.arriving.contains_key(sid)
            && self
                .cluster
                .remote
                .get(sid)
                .and_then(|r| r.info.roomsessionid.as_deref())
                .and_then(|rs| self.rooms.get(key)?.participants.get(rs))
                .and_then(|p| p.get("inCall"))
                .is_some_and(in_call_flag)
    }

    /// True when a local session of the room is in its call: for clients
    /// from the participant state Nextcloud sent, for internal and virtual
    /// sessions from their own in-call flags.
    pub fn is_in_call(&self, key: &RoomKey, sid: &str) -> bool {
        let Some(s) = self.sessions.map.get(sid) else {
            return false;
        };
        match s.kind {
            SessionKind::Client => s
                .room_session_id
                .as_deref()
                .and_then(|rs| self.rooms.get(key)?.participants.get(rs))
                .and_then(|p| p.get("inCall"))
                .is_some_and(in_call_flag),
            _ => s.in_call & session::flags::IN_CALL != 0,
        }
    }

    /// Delivers one frame to every session of a user on a backend.
    pub fn send_to_user(
        &mut self,
        backend: &Arc<str>,
        user: &str,
        f: &Frame,
        except: Option<&str>,
    ) {
        self.sessions.deliver_to_user(backend, user, f, except);
    }
}
