//! Messages from other processes were lost (a NATS slow consumer, or a
//! reconnect after the server dropped this process's connection): the
//! state they could have changed is asked for again and the local clients
//! are told what changed meanwhile.
//!
//! What is resynced, per room with a local member: the other processes'
//! members (joins, changes and leaves, as events), Nextcloud's participant
//! state (in-call flags, permissions: a `participants` `update`) and the
//! transient data (`set` / `remove`), from the same snapshots a first join
//! asks for. Holds other processes put on local senders are dropped (their
//! `Release` may be the lost message). After a reconnect, the local members
//! are announced again (a process that timed this one out knows them
//! again). Room, user and session frames that were lost stay lost: they
//! are messages, not state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use super::SNAPSHOT_TIMEOUT;
use crate::bus::{encode, Header, Loss, MemberInfo, RoomSnapshot, SUBJECT_ALL};
use crate::hub::room::RoomKey;
use crate::hub::{Hub, State};

/// At most one resync per this long (a process that stays slow would
/// otherwise resync after every message dropped).
const RESYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Snapshot requests of one resync in flight at once.
const CONCURRENT_ROOMS: usize = 16;

/// A room's state before its snapshots were asked for.
struct Before {
    /// Members of other processes.
    remote: HashSet<Arc<str>>,
    /// Nextcloud's participant state.
    participants: BTreeMap<String, Map<String, Value>>,
}

type Participants = BTreeMap<String, Map<String, Value>>;

impl Hub {
    /// Resyncs after every loss the bus tells of, until `cancel`.
    pub(super) fn spawn_resync(self: &Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                let loss = tokio::select! {
                    _ = cancel.cancelled() => return,
                    l = hub.bus.lost() => l,
                };
                hub.resync(loss).await;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(RESYNC_INTERVAL) => {}
                }
            }
        });
    }

    /// One resync of every room with a local member (see the module).
    pub(crate) async fn resync(self: &Arc<Self>, loss: Loss) {
        // What the bus server has from before is processed (and a
        // reconnect's subscriptions are active) before anyone is asked.
        self.bus.flush().await;
        let rooms: Vec<RoomKey> = {
            let st = self.lock();
            st.rooms
                .iter()
                .filter(|(k, r)| {
                    !st.cluster.preparing.contains_key(*k)
                        && r.members.iter().any(|m| st.sessions.map.contains_key(m))
                })
                .map(|(k, _)| k.clone())
                .collect()
        };
        match loss {
            Loss::SlowConsumer => tracing::warn!(
                rooms = rooms.len(),
                "this process did not keep up with NATS: messages from other processes were lost; resyncing its rooms"
            ),
            Loss::Reconnected => tracing::warn!(
                rooms = rooms.len(),
                "reconnected to NATS: messages from other processes may have been lost meanwhile; resyncing its rooms"
            ),
        }
        self.metrics
            .bus_resyncs
            .with_label_values(&[loss.as_str()])
            .inc();
        self.pacing.release_all();
        futures_util::stream::iter(rooms)
            .map(|key| self.resync_room(key, loss))
            .buffer_unordered(CONCURRENT_ROOMS)
            .for_each(|_| async {})
            .await;
    }

    async fn resync_room(self: &Arc<Self>, key: RoomKey, loss: Loss) {
        let (bus, expected, before) = {
            let mut st = self.lock();
            let Some(room) = st.rooms.get(&key) else {
                return;
            };
            let before = Before {
                remote: room
                    .members
                    .iter()
                    .filter(|m| st.cluster.remote.contains_key(*m))
                    .cloned()
                    .collect(),
                participants: room.participants.clone(),
            };
            if loss == Loss::Reconnected {
                // Known again by a process that timed this one out.
                let local: Vec<Arc<str>> = room
                    .members
                    .iter()
                    .filter(|m| st.sessions.map.contains_key(*m))
                    .cloned()
                    .collect();
                for sid in local {
                    st.publish_member(&key, &sid, false);
                }
            }
            // Leaves from now on are remembered until the snapshots are
            // applied (a snapshot taken before one must not bring it back).
            st.cluster.resyncing.insert(key.clone());
            (st.bus.clone(), st.cluster.processes.len(), before)
        };
        let replies = if expected == 0 {
            Vec::new()
        } else {
            let h = Header::SnapshotRequest {
                from: bus.pid().to_string(),
                backend: key.backend.to_string(),
                room: key.room.to_string(),
            };
            let req = bus.request(
                SUBJECT_ALL.to_string(),
                encode(&h, None),
                expected,
                SNAPSHOT_TIMEOUT,
            );
            req.await
        };
        let wake = self.mutate(|st| {
            let wake = st.apply_resync(&key, before, replies);
            st.cluster.resyncing.remove(&key);
            if let Some(room) = st.rooms.get_mut(&key) {
                room.departed.clear();
            }
            wake
        });
        if wake {
            self.timer.notify_one();
        }
    }
}

/// The snapshots of a room, decoded.
fn decode(replies: Vec<Bytes>) -> Vec<RoomSnapshot> {
    replies
        .iter()
        .filter_map(|r| serde_json::from_slice(r).ok())
        .collect()
}

impl State {
    /// Applies the other processes' snapshots of a room as the truth about
    /// their members, and the first one with participants and transient
    /// data as the truth about those; the local members are told what
    /// changed. True when an expiry timer was added.
    fn apply_resync(&mut self, key: &RoomKey, before: Before, replies: Vec<Bytes>) -> bool {
        let snaps = decode(replies);
        let answered: HashSet<&str> = snaps.iter().filter_map(|s| s.from.as_deref()).collect();
        let mut reported: HashMap<&str, &MemberInfo> = HashMap::new();
        for m in snaps.iter().flat_map(|s| &s.members) {
            reported.insert(m.sid.as_str(), m);
        }
        for m in reported.values() {
            let known = self.cluster.remote.get(m.sid.as_str()).map(|r| &r.info);
            if known.is_none_or(|k| !same_member(k, m)) {
                self.remote_member(key, (*m).clone());
            }
        }
        // Members of a process that answered without them left meanwhile
        // (only those known before the question: a later join is newer
        // than the answer).
        for sid in &before.remote {
            let gone = self.cluster.remote.get(sid).is_some_and(|r| {
                r.room == *key
                    && answered.contains(r.info.owner.as_str())
                    && !reported.contains_key(&**sid)
            });
            if gone {
                self.remove_remote(key, sid);
            }
        }
        // The processes that serve the room: their state is the newest.
        let Some(served) = snaps.iter().find(|s| !s.members.is_empty()) else {
            return false;
        };
        self.resync_participants(key, &before.participants, &served.participants);
        self.resync_transient(key, served)
    }

    /// Nextcloud's participant state as `theirs` has it, unless an update
    /// arrived here while the snapshots were on their way (then this one's
    /// is as new). The local members get the changed entries.
    fn resync_participants(&mut self, key: &RoomKey, before: &Participants, theirs: &Participants) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        if room.participants != *before || room.participants == *theirs {
            return;
        }
        let changed: Vec<Map<String, Value>> = theirs
            .iter()
            .filter(|(nc, e)| room.participants.get(*nc) != Some(*e))
            .map(|(_, e)| e.clone())
            .collect();
        room.participants.retain(|nc, _| theirs.contains_key(nc));
        self.apply_permissions(key, &changed);
        let changed = self.update_participants(key, &changed, None, false);
        if let Some(f) = self.participants_frame(key, &changed, None) {
            self.broadcast(key, &f, None);
        }
    }

    /// The transient data of a snapshot that is newer than this one's;
    /// the local members get each change. True when a timer was added.
    fn resync_transient(&mut self, key: &RoomKey, theirs: &RoomSnapshot) -> bool {
        let Some(room) = self.rooms.get(key) else {
            return false;
        };
        if theirs.transient_version <= room.transient_version {
            return false;
        }
        let keep: HashSet<&str> = theirs.transient.iter().map(|t| t.key.as_str()).collect();
        let gone: Vec<String> = room
            .transient
            .keys()
            .filter(|k| !keep.contains(k.as_str()))
            .cloned()
            .collect();
        let mut wake = false;
        for k in gone {
            self.remove_transient(key, &k);
        }
        for t in &theirs.transient {
            let ttl = t.ttl_ns.map(Duration::from_nanos);
            // Refused only by a limit, which the others applied as well.
            wake |= self
                .set_transient(key, &t.key, Some(t.value.clone()), ttl)
                .unwrap_or(false);
        }
        // Their versions: a removal by TTL names the version it removes.
        if let Some(room) = self.rooms.get_mut(key) {
            for t in &theirs.transient {
                if let Some(e) = room.transient.get_mut(&t.key) {
                    e.version = t.version;
                }
            }
            room.transient_version = room.transient_version.max(theirs.transient_version);
        }
        wake
    }
}

/// True when two announcements of a member say the same.
fn same_member(a: &MemberInfo, b: &MemberInfo) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}
