//! A process that starts serving a room subscribes to it, then asks the
//! others for their members and the room's transient data.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::SNAPSHOT_TIMEOUT;
use crate::bus::{encode, Header, MemberInfo, RoomSnapshot, TransientSnapshot, SUBJECT_ALL};
use crate::hub::room::{RoomKey, TransientEntry};
use crate::hub::{Hub, State};

impl State {
    /// Applies the other processes' snapshots of a room: their members, and
    /// the newest transient data. True when an expiry timer was added.
    fn apply_snapshots(&mut self, key: &RoomKey, replies: Vec<bytes::Bytes>) -> bool {
        let mut wake = false;
        for r in replies {
            let Ok(snap) = serde_json::from_slice::<RoomSnapshot>(&r) else {
                continue;
            };
            for m in snap.members {
                self.upsert_remote(key, m);
            }
            let now = Instant::now();
            let (Some(room), timers) = self.rooms.with_timers(key) else {
                continue;
            };
            if room.properties.is_none() {
                room.properties = snap.properties.map(Arc::from);
            }
            // What arrived while the snapshot was on its way is newer.
            for (nc, entry) in snap.participants {
                room.participants.entry(nc).or_insert(entry);
            }
            if snap.transient_version > room.transient_version {
                room.transient_version = snap.transient_version;
                room.transient.clear();
                for t in snap.transient {
                    let expires = t
                        .ttl_ns
                        .map(|ns| timers.expiry(now + Duration::from_nanos(ns)));
                    if let Some(e) = expires {
                        timers.schedule(e, key, &t.key);
                        wake = true;
                    }
                    room.transient.insert(
                        t.key,
                        TransientEntry {
                            value: t.value,
                            expires,
                            version: t.version,
                        },
                    );
                }
            }
        }
        if let Some(room) = self.rooms.get_mut(key) {
            room.departed.clear();
        }
        wake
    }

    pub(super) fn local_snapshot(&self, key: &RoomKey) -> Option<RoomSnapshot> {
        let room = self.rooms.get(key)?;
        let members: Vec<MemberInfo> = room
            .members
            .iter()
            .filter_map(|m| self.member_info(m))
            .collect();
        if members.is_empty() {
            return None;
        }
        let now = Instant::now();
        Some(RoomSnapshot {
            members,
            transient: room
                .transient
                .iter()
                .map(|(k, v)| TransientSnapshot {
                    key: k.clone(),
                    value: v.value.clone(),
                    version: v.version,
                    ttl_ns: v
                        .expires
                        .map(|(at, _)| at.saturating_duration_since(now).as_nanos() as u64),
                })
                .collect(),
            transient_version: room.transient_version,
            properties: room
                .properties
                .as_deref()
                .and_then(|p| serde_json::value::RawValue::from_string(p.get().to_string()).ok()),
            participants: room.participants.clone(),
            from: Some(self.bus.pid().to_string()),
        })
    }
}

/// What a join finds when it prepares its room.
enum Prepare {
    /// Served (and prepared) already, or no other process exists.
    Ready,
    /// Another join prepares it: ready when this says so.
    Wait(tokio::sync::watch::Receiver<bool>),
    /// This join prepares it: the bus, how many processes to ask, and
    /// what tells the others that it is ready.
    Mine(
        Arc<dyn crate::bus::Bus>,
        usize,
        tokio::sync::watch::Sender<bool>,
    ),
}

impl Hub {
    /// Makes sure a room about to get its first local member is received
    /// from the bus (the subscription active at the server) and knows the
    /// members (and transient data) the other processes have. A join while
    /// another join prepares the room waits for that one.
    pub(crate) async fn prepare_room(self: &Arc<Self>, key: &RoomKey) {
        let (bus, expected, done) = match self.begin_prepare(key) {
            Prepare::Ready => return,
            Prepare::Wait(mut ready) => {
                let _ = ready.wait_for(|r| *r).await;
                return;
            }
            Prepare::Mine(bus, expected, done) => (bus, expected, done),
        };
        // The subscription is active before anyone is asked: what the
        // others publish after answering reaches this process.
        bus.flush().await;
        let replies = if expected == 0 {
            Vec::new()
        } else {
            // On the subject of every process: those without the room
            // answer at once with an empty snapshot.
            let h = Header::SnapshotRequest {
                from: bus.pid().to_string(),
                backend: key.backend.to_string(),
                room: key.room.to_string(),
            };
            bus.request(
                SUBJECT_ALL.to_string(),
                encode(&h, None),
                expected,
                SNAPSHOT_TIMEOUT,
            )
            .await
        };
        tracing::debug!(room = ?key.room, replies = replies.len(), expected, "room snapshot");
        let wake = {
            let mut st = self.lock();
            let wake = st.apply_snapshots(key, replies);
            st.cluster.preparing.remove(key);
            wake
        };
        let _ = done.send(true);
        if wake {
            self.timer.notify_one();
        }
    }

    /// Whether a join has a room to prepare, or waits for another's.
    fn begin_prepare(&self, key: &RoomKey) -> Prepare {
        let mut st = self.lock();
        if !st.bus.clustered() {
            return Prepare::Ready;
        }
        if st.rooms.contains_key(key) {
            return match st.cluster.preparing.get(key) {
                Some(ready) => Prepare::Wait(ready.clone()),
                None => Prepare::Ready,
            };
        }
        let (url, base) = self.room_urls(key);
        // Exists (and is subscribed to) from now on, so that events for it
        // are applied while the snapshot is on its way.
        st.rooms.get_or_insert(key, url, base);
        let (done, ready) = tokio::sync::watch::channel(false);
        st.cluster.preparing.insert(key.clone(), ready);
        Prepare::Mine(st.bus.clone(), st.cluster.processes.len(), done)
    }

    /// Backend URLs for pings and leave notices of a room's backend.
    pub(super) fn room_urls(&self, key: &RoomKey) -> (Arc<str>, Arc<str>) {
        let base = self
            .registry()
            .by_id(&key.backend)
            .and_then(|b| b.urls.first().cloned())
            .unwrap_or_default();
        let url = format!(
            "{}/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
            base.trim_end_matches('/')
        );
        (url.into(), base.into())
    }
}
