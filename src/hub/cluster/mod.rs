//! Several processes behind one NATS server: every process keeps the full
//! member list of the rooms it serves (members of other processes included,
//! from the join/leave events themselves), delivers only to its own
//! sessions, and applies replicated state (backend requests, transient
//! data) in bus order. No lookup crosses processes on the hot path.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use bytes::Bytes;

use super::room::RoomKey;
use super::session::SessionKind;
use super::State;
use crate::api::server::{event_frame, Frame};
use crate::bus::{
    encode, process_subject, room_subject, user_subject, Header, MemberInfo, MemberKind,
};

/// How often a process announces itself.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A process silent this long is treated as gone: its sessions leave.
pub const PROCESS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a starting process collects the answers of its peers.
pub const DISCOVERY_WINDOW: Duration = Duration::from_millis(300);
/// How long a joining process waits for room snapshots (every live process
/// answers at once; the timeout only matters for one that just died).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a resume waits for the owning process.
pub const HANDOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// A member of a local room that is connected to another process.
pub struct RemoteMember {
    /// What the owner announced.
    pub info: MemberInfo,
    /// The room.
    pub room: RoomKey,
}

/// Who sends a frame to a session of another process, so that the owner
/// can check the backend (the request id still goes along: a process of
/// a previous release answers `no_such_session` with it).
pub(crate) struct RemoteRoute<'a> {
    /// The sender's backend id.
    pub backend: &'a str,
    /// The sender's session id.
    pub sender: &'a str,
    /// The message's request id.
    pub id: Option<&'a str>,
}

/// Another process, as its heartbeats describe it.
pub struct ProcessInfo {
    /// Last heartbeat.
    pub last_seen: Instant,
    /// Client sessions per backend id.
    pub counts: HashMap<String, u64>,
    /// Its bus protocol ([`crate::bus::BUS_VERSION`] until it said).
    pub version: u32,
}

/// What this process knows of the others: their members in local rooms,
/// the processes themselves (from their heartbeats) and the sessions that
/// resumed on one of them. Everything here came over the bus.
#[derive(Default)]
pub(crate) struct Cluster {
    /// Members of local rooms connected to other processes.
    pub remote: HashMap<Arc<str>, RemoteMember>,
    /// Other processes, from their heartbeats.
    pub processes: HashMap<String, ProcessInfo>,
    /// Sessions handed over to another process on resume: sid -> process.
    pub moved: HashMap<Arc<str>, (String, Instant)>,
    /// Rooms whose first local join subscribes and asks for snapshots:
    /// other joins wait until it is `true`.
    pub preparing: HashMap<RoomKey, tokio::sync::watch::Receiver<bool>>,
    /// Every room's snapshot requests are received (a process of the
    /// previous release is in the cluster, `versions.rs`).
    pub all_rooms: bool,
    /// Sessions handed over from here by resume id: where they went.
    pub moved_resume: HashMap<String, handover::MovedResume>,
    /// Sessions on their way to this process (`arrival.rs`).
    pub arriving: HashMap<Arc<str>, arrival::Claim>,
    /// Rooms whose snapshots a resync asked for (`resync.rs`): leaves are
    /// remembered meanwhile, as while `preparing`.
    pub resyncing: std::collections::HashSet<RoomKey>,
    /// Frames for local sessions whose new publisher was refused because
    /// this process handed its media over (`rolling_claim.rs`): they go
    /// with the session's hand-over.
    pub refused_publishing: HashMap<Arc<str>, Vec<Frame>>,
}

impl Cluster {
    /// Client sessions of a backend on the other processes.
    pub fn remote_session_count(&self, backend: &str) -> u64 {
        self.processes
            .values()
            .filter_map(|p| p.counts.get(backend))
            .sum()
    }

    /// A process heard of for the first time is watched from now on (its
    /// version is known with its first heartbeat).
    pub fn note_process(&mut self, from: &str) {
        if !self.processes.contains_key(from) {
            tracing::info!(process = %from, "new process in the cluster");
            self.heard_from(from.to_string(), HashMap::new(), crate::bus::BUS_VERSION);
        }
    }

    /// The process a session of another process is connected to: the one
    /// its room announced, else the one that created it, if alive.
    pub fn owner_of_session<'a>(&'a self, sid: &'a str) -> Option<&'a str> {
        match self.remote.get(sid) {
            Some(r) => Some(&r.info.owner),
            None => owner_of(sid).filter(|p| self.processes.contains_key(*p)),
        }
    }
}

/// How a session is known on the bus.
pub(crate) fn member_kind(kind: &SessionKind) -> MemberKind {
    match kind {
        SessionKind::Client => MemberKind::Client,
        SessionKind::Internal => MemberKind::Internal,
        SessionKind::Virtual { .. } => MemberKind::Virtual,
    }
}

/// A frame received from the bus, shared without copying (UTF-8 checked).
fn body_frame(body: &Bytes) -> Option<Frame> {
    Frame::try_from(body.clone()).ok()
}

/// The process id a session or resume id was created by.
pub fn owner_of(id: &str) -> Option<&str> {
    // Process ids are 8 characters of base64url; anything else in a
    // client's resume id is not a process (and must not reach a subject).
    id.get(..8).filter(|p| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

impl crate::hub::Hub {
    /// This process's id on the bus (the prefix of its session ids; its
    /// NATS connection is named `spreed-signaling <id>`).
    pub fn process_id(&self) -> String {
        self.bus.pid().to_string()
    }

    /// True when other processes may share the bus.
    pub fn clustered(&self) -> bool {
        self.bus.clustered()
    }
}

impl State {
    /// A local session as other processes should know it.
    pub(crate) fn member_info(&self, sid: &str) -> Option<MemberInfo> {
        let s = self.sessions.map.get(sid)?;
        let (virtual_owner, client_sid) = match &s.kind {
            SessionKind::Virtual {
                owner, client_sid, ..
            } => (Some(owner.to_string()), Some(client_sid.clone())),
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
            kind: member_kind(&s.kind),
            virtual_owner,
            client_sid,
            in_call: s.in_call,
            flags: s.flags,
            federated: s.federated.is_some(),
            actor: s.federated.as_ref().and_then(|f| f.actor.clone()),
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
    pub(crate) fn publish_room_frame(
        &self,
        key: &RoomKey,
        f: &Frame,
        except: Option<&str>,
        call_only: bool,
    ) {
        if !self.bus.clustered() {
            return;
        }
        let has_remote = self.rooms.get(key).is_some_and(|r| {
            r.members
                .iter()
                .any(|m| self.cluster.remote.contains_key(m))
        });
        if has_remote {
            self.publish_room_frame_to_all(key, f, except, call_only);
        }
    }

    /// Sends a frame to the members of a room on every other process, also
    /// when this one does not know of any (it may have no member there).
    pub(crate) fn publish_room_frame_to_all(
        &self,
        key: &RoomKey,
        f: &Frame,
        except: Option<&str>,
        call_only: bool,
    ) {
        if !self.bus.clustered() {
            return;
        }
        let h = Header::RoomFrame {
            from: self.bus.pid().to_string(),
            backend: key.backend.to_string(),
            room: key.room.to_string(),
            except: except.map(str::to_string),
            call_only,
        };
        self.bus.publish(
            room_subject(&key.backend, &key.room),
            encode(&h, Some(f.as_bytes())),
        );
    }

    /// Tells the other processes that a local session left a room.
    pub(crate) fn publish_left(&self, key: &RoomKey, sid: &str) {
        if !self.bus.clustered() {
            return;
        }
        let h = Header::Left {
            from: self.bus.pid().to_string(),
            backend: key.backend.to_string(),
            room: key.room.to_string(),
            sid: sid.to_string(),
        };
        self.bus
            .publish(room_subject(&key.backend, &key.room), encode(&h, None));
    }

    /// Asks the process owning `sid` to end it with `bye` `reason`, without
    /// telling Nextcloud that it left its room.
    pub(crate) fn end_remote_session(&self, owner: &str, sid: &str, reason: &str) {
        let h = Header::EndSession {
            sid: sid.to_string(),
            reason: reason.to_string(),
        };
        self.bus.publish(process_subject(owner), encode(&h, None));
    }

    /// Sends a frame to a session of another process; false if no live
    /// process can own it. With `route`, the owner delivers only to a
    /// session of that backend.
    pub(crate) fn send_to_remote_session(
        &self,
        sid: &str,
        f: &Frame,
        route: Option<&RemoteRoute<'_>>,
    ) -> bool {
        if !self.bus.clustered() {
            return false;
        }
        let Some(pid) = self.cluster.owner_of_session(sid) else {
            return false;
        };
        self.send_session_frame(pid, sid, f, route);
        true
    }

    /// Sends a frame for session `sid` to process `pid` (which holds it,
    /// or forwards it to where it went).
    pub(crate) fn send_session_frame(
        &self,
        pid: &str,
        sid: &str,
        f: &Frame,
        route: Option<&RemoteRoute<'_>>,
    ) {
        let h = Header::SessionFrame {
            sid: sid.to_string(),
            backend: route.map(|r| r.backend.to_string()),
            reply_to: route.map(|r| r.sender.to_string()),
            id: route.and_then(|r| r.id.map(str::to_string)),
        };
        self.bus
            .publish(process_subject(pid), encode(&h, Some(f.as_bytes())));
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
            .publish(user_subject(backend, user), encode(&h, Some(f.as_bytes())));
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
        self.cluster.remote.insert(
            sid,
            RemoteMember {
                info: member,
                room: key.clone(),
            },
        );
        new
    }

    /// A member of another process left: leave event to the local members.
    pub(super) fn remove_remote(&mut self, key: &RoomKey, sid: &str) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        if !room.remove_member(sid) {
            // Only a snapshot on its way can still bring it: remembered
            // until the snapshot is applied, not kept for ever.
            if self.cluster.preparing.contains_key(key) || self.cluster.resyncing.contains(key) {
                room.departed.insert(sid.into());
            }
            return;
        }
        room.nc_sessions.retain(|_, v| &**v != sid);
        if let Some(m) = &self.mcu {
            // Its subscribers of this process's publishers go too.
            m.command(crate::mcu::Command::CloseSession(sid.into()));
        }
        self.remove_transient(key, &crate::hub::session_data_key(sid));
        let was_internal = self
            .cluster
            .remote
            .remove(sid)
            .is_some_and(|r| r.info.kind != MemberKind::Client);
        let leave = event_frame("room", "leave", &[sid]);
        self.broadcast(key, &leave, None);
        if was_internal {
            self.publish_internal_incall(key);
        }
    }

    /// Applies a transient operation received from the bus.
    fn apply_transient(
        &mut self,
        key: &RoomKey,
        name: &str,
        value: Option<Box<serde_json::value::RawValue>>,
        ttl: Option<Duration>,
        if_version: Option<u64>,
    ) -> Result<bool, crate::api::error::ProtocolError> {
        if let Some(v) = if_version {
            let current = self
                .rooms
                .get(key)
                .and_then(|r| r.transient.get(name))
                .map(|e| e.version);
            if current != Some(v) {
                return Ok(false);
            }
        }
        self.set_transient(key, name, value, ttl)
    }
}

mod arrival;
mod dispatch;
mod frames;
mod handover;
mod pacing;
mod peers;
mod resync;
mod rolling;
mod rolling_claim;
mod rolling_media;
mod snapshot;
mod user_subject;
mod versions;

use handover::PART;

pub(crate) use pacing::Pacing;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_pacing;
#[cfg(test)]
mod tests_subjects;
