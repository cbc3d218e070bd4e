//! How sessions end: a connection that goes away leaves its session
//! resumable until the resume timeout; a guest that does not join a room
//! in time, a `bye`, a full resume queue or the server end it. Ending a
//! session takes it out of its room (the others and Nextcloud are told),
//! with its virtual sessions and every index.

use std::sync::Arc;

use tokio::time::Instant;

use super::effects::{Effect, Nextcloud};
use super::outbox::CloseReason;
use super::room::RoomKey;
use super::session::SessionKind;
use super::virtual_backend::VirtualNc;
use super::{session_data_key, Hub, State};
use crate::api::server::{frame, Bye, Frame};

impl Hub {
    /// The connection of a session went away: keep the session for resume.
    pub fn connection_closed(&self, sid: &Arc<str>, conn_id: u64) {
        let mut st = self.lock();
        let deadline = Instant::now() + st.sessions.limits.resume_timeout;
        let Some(s) = st.sessions.map.get_mut(sid) else {
            return;
        };
        if s.conn.as_ref().is_none_or(|c| c.conn_id != conn_id) {
            return;
        }
        // What the writer had not taken yet is kept for the resume, in full
        // (at most `outboxbytes`, as after a 1013 close).
        if let Some(conn) = s.conn.take() {
            // Older than anything already queued (frames that met the
            // closing outbox went to the queue): first.
            let mut pending = conn.take_pending();
            s.queue_bytes += pending.iter().map(|f| f.len()).sum::<usize>();
            pending.append(&mut s.queue);
            s.queue = pending;
            s.carried = (s.queue.len(), s.queue_bytes);
        }
        let backend = s.backend.id.clone();
        st.sessions.disconnected.insert(sid.clone(), deadline);
        tracing::debug!(session = %sid, %backend, "connection closed, session kept for resume");
    }

    /// Ends sessions that are idle without connection past the resume timeout.
    pub fn expire_sessions(&self, now: Instant) {
        let mut st = self.lock();
        let expired: Vec<Arc<str>> = st
            .sessions
            .disconnected
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in expired {
            let backend = st.sessions.map.get(&sid).map(|s| s.backend.id.clone());
            tracing::info!(session = %sid, backend = backend.as_deref(), "resume timeout, ending session");
            st.end_session(&sid, None);
        }
        let late: Vec<Arc<str>> = st
            .sessions
            .room_deadlines
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in late {
            st.sessions.room_deadlines.remove(&sid);
            let in_room = st.sessions.map.get(&sid).is_none_or(|s| s.room.is_some());
            if !in_room {
                let backend = st.sessions.map.get(&sid).map(|s| s.backend.id.clone());
                tracing::info!(session = %sid, backend = backend.as_deref(), "guest did not join a room in time, ending session");
                let bye = frame(
                    None,
                    "bye",
                    &Bye {
                        reason: Some("room_join_timeout"),
                    },
                );
                st.end_session(&sid, Some(bye));
            }
        }
    }

    /// Ends a session from the server side with a `bye` carrying `reason`.
    pub fn close_session(&self, sid: &Arc<str>, reason: &str) {
        let f = frame(
            None,
            "bye",
            &Bye {
                reason: Some(reason),
            },
        );
        let mut st = self.lock();
        st.end_session(sid, Some(f));
    }
}

impl State {
    /// Ends sessions whose resume queue overflowed during the last
    /// operation; called when the lock is released ([`StateGuard`]).
    pub(super) fn reap(&mut self) {
        while let Some(sid) = self.sessions.doomed.pop() {
            let f = frame(
                None,
                "bye",
                &Bye {
                    reason: Some("send_queue_overflow"),
                },
            );
            self.end_session(&sid, Some(f));
        }
    }

    /// Removes a session completely: leaves its room (telling the others and
    /// Nextcloud), drops its virtual sessions and indexes. `last` is sent
    /// before the connection closes.
    pub fn end_session(&mut self, sid: &Arc<str>, last: Option<Frame>) {
        if !self.sessions.map.contains_key(sid) {
            return;
        }
        self.leave_room(sid, true);
        let Some(s) = self.sessions.remove(sid) else {
            return;
        };
        tracing::info!(session = %sid, backend = %s.backend.id, "session ended");
        if let Some(m) = &self.mcu {
            m.command(crate::mcu::Command::CloseSession(sid.clone()));
        }
        self.sessions.disconnected.remove(sid);
        self.sessions.room_deadlines.remove(sid);
        // A federation link ends (saying bye to B, so its members see the
        // session leave at once) when `s` and its handle of the link go.
        if let SessionKind::Virtual {
            owner, client_sid, ..
        } = &s.kind
        {
            if let Some(o) = self.sessions.map.get_mut(owner) {
                o.virtuals.remove(client_sid);
            }
        }
        for (_, vsid) in s.virtuals.iter() {
            self.end_session(vsid, None);
        }
        if let Some(conn) = &s.conn {
            if let Some(f) = last {
                conn.push(f);
            }
            conn.close(CloseReason::SessionEnded);
        }
    }

    /// Takes a session out of its room: leave event to the others, Nextcloud
    /// told (when `notify_backend`), room dropped when empty.
    pub fn leave_room(&mut self, sid: &Arc<str>, notify_backend: bool) -> Option<RoomKey> {
        let s = self.sessions.map.get_mut(sid)?;
        let key = s.room.take()?;
        if let Some(m) = &self.mcu {
            m.command(crate::mcu::Command::CloseSession(sid.clone()));
        }
        let room_session_id = s.room_session_id.take();
        let virtual_nc =
            (notify_backend && s.is_virtual()).then(|| VirtualNc::of(s, key.room.clone()));
        // Permissions stay: leaving a room never grants any.
        let is_virtual = s.is_virtual();
        let notify = notify_backend && s.kind == SessionKind::Client;
        let user_id = s.user_id.clone();
        let actor = s.federated.as_ref().and_then(|f| f.actor.clone());
        let backend_url = s.backend_url.clone();
        let backend_base = s.backend_base.clone();
        let secret = s.backend.secret.clone();
        tracing::info!(session = %sid, backend = %key.backend, room = ?key.room, "left room");

        if let Some(room) = self.rooms.get_mut(&key) {
            room.remove_member(sid);
            if let Some(rs) = &room_session_id {
                if room.nc_sessions.get(rs).is_some_and(|x| x == sid) {
                    room.nc_sessions.remove(rs);
                }
            }
        }
        self.publish_left(&key, sid);
        // Its session data goes with it (every process does the same when
        // it learns of the leave).
        self.remove_transient(&key, &session_data_key(sid));
        let leave = crate::api::server::event_frame("room", "leave", &[&**sid]);
        self.broadcast(&key, &leave, None);
        if is_virtual {
            self.publish_internal_incall(&key);
        }
        self.drop_room_if_unserved(&key);
        let to = Nextcloud {
            url: backend_url,
            base: backend_base,
            secret,
        };
        if let Some(nc) = virtual_nc {
            self.effects.push(Effect::VirtualRemoved(nc));
        } else if let (true, Some(rs)) = (notify, room_session_id) {
            self.effects.push(Effect::Left {
                to,
                room: key.room.clone(),
                user_id,
                room_session_id: rs,
                actor,
            });
        }
        Some(key)
    }

    /// Forgets a room once no local session is in it (members on other
    /// processes no longer matter here).
    pub fn drop_room_if_unserved(&mut self, key: &RoomKey) {
        let Some(room) = self.rooms.get(key) else {
            return;
        };
        if room
            .members
            .iter()
            .any(|m| self.sessions.map.contains_key(m) || self.sessions.arriving.contains_key(m))
        {
            return;
        }
        if let Some(room) = self.rooms.remove(key) {
            for m in room.members {
                self.cluster.remote.remove(&m);
            }
        }
    }
}
