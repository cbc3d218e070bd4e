//! Resume on another process: the owner hands the session over.

use std::collections::HashMap;
use std::sync::Arc;
use tokio::time::Instant;

use super::{RemoteMember, HANDOVER_TIMEOUT};
use crate::api::server::{frame, Bye, Frame};
use crate::bus::{encode, process_subject, Header, SessionHandover};
use crate::hub::room::RoomKey;
use crate::hub::session::{Session, SessionKind};
use crate::hub::{Hub, State};

impl State {
    /// Takes a local session out for another process (resume there): no
    /// leave event, it stays a member, now remote.
    pub(super) fn hand_over(&mut self, resume_id: &str, to: &str) -> Option<SessionHandover> {
        let sid = self.sessions.resume_ids.get(resume_id).cloned()?;
        let s = self.sessions.map.get(&sid)?;
        if s.kind != SessionKind::Client {
            return None;
        }
        let mut member = self.member_info(&sid)?;
        member.owner = to.to_string();
        let s = self.sessions.remove(&sid)?;
        self.sessions.disconnected.remove(&sid);
        if let Some(conn) = &s.conn {
            conn.push(frame(
                None,
                "bye",
                &Bye {
                    reason: Some("session_resumed"),
                },
            ));
            conn.close(crate::hub::outbox::CloseReason::SessionResumed);
        }
        if let Some(key) = &s.room {
            self.cluster.remote.insert(
                sid.clone(),
                RemoteMember {
                    info: member.clone(),
                    room: key.clone(),
                },
            );
            self.drop_room_if_unserved(key);
        }
        self.cluster
            .moved
            .insert(sid.clone(), (to.to_string(), Instant::now()));
        Some(SessionHandover {
            member,
            room: s.room.as_ref().map(|k| k.room.to_string()),
            resume_id: resume_id.to_string(),
            backend: s.backend.id.to_string(),
            backend_base: s.backend_base.to_string(),
            backend_url: s.backend_url.to_string(),
            permissions: s.permissions.clone(),
            queue: s.queue.iter().map(|f| f.to_string()).collect(),
            actor: s.federated.as_ref().and_then(|f| f.actor.clone()),
        })
    }
}

impl Hub {
    /// Asks the process that owns `resume_id` to hand the session over.
    pub(crate) async fn fetch_session(
        self: &Arc<Self>,
        resume_id: &str,
    ) -> Option<SessionHandover> {
        let (bus, owner) = {
            let st = self.lock();
            let owner = super::owner_of(resume_id)?.to_string();
            // The owner is asked even when no message of it arrived yet
            // (a process that just started); the timeout bounds the wait.
            if !st.bus.clustered() || owner == st.bus.pid() {
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
        conn: Arc<crate::hub::outbox::Outbox>,
    ) -> Option<Arc<str>> {
        let backend = self.registry().by_id(&h.backend)?;
        let sid: Arc<str> = h.member.sid.as_str().into();
        let resume_id: Arc<str> = h.resume_id.as_str().into();
        let room = h.room.as_ref().map(|r| RoomKey {
            backend: backend.id.clone(),
            room: r.as_str().into(),
        });
        let user_id: Option<Arc<str>> = h.member.userid.as_deref().map(Arc::from);
        st.cluster.remote.remove(&sid);
        st.cluster.moved.remove(&sid);
        st.sessions.insert(Session {
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
            carried: (0, 0),
            in_call: h.member.in_call,
            flags: h.member.flags,
            virtuals: HashMap::new(),
            fed_link: None,
            client_ip: None,
            mcu_tasks: None,
            // A federated session stays one, with its actor.
            federated: h
                .member
                .federated
                .then(|| Box::new(crate::hub::session::Federated { actor: h.actor })),
        });
        if let Some(key) = &room {
            let (url, base) = (
                h.backend_url.as_str().into(),
                h.backend_base.as_str().into(),
            );
            let r = st.rooms.get_or_insert(key, url, base);
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
}
