//! A process that starts serving a room asks the others for their members
//! and the room's transient data.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use super::SNAPSHOT_TIMEOUT;
use crate::bus::{encode, room_subject, Header, MemberInfo, RoomSnapshot, TransientSnapshot};
use crate::hub::room::{RoomKey, TransientEntry};
use crate::hub::{Hub, State};

impl State {
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
        })
    }
}

impl Hub {
    /// Makes sure a room about to get its first local member knows the
    /// members (and transient data) the other processes have.
    pub(crate) async fn prepare_room(self: &Arc<Self>, key: &RoomKey) {
        let (bus, expected) = {
            let mut st = self.lock();
            if !st.bus.clustered() || st.rooms.contains_key(key) {
                return;
            }
            let (url, base) = self.room_urls(key);
            // Exists from now on, so that events for it are applied while
            // the snapshot is on its way.
            st.rooms.get_or_insert(key, url, base);
            (st.bus.clone(), st.cluster.processes.len())
        };
        if expected == 0 {
            return;
        }
        let h = Header::SnapshotRequest {
            from: bus.pid().to_string(),
            backend: key.backend.to_string(),
            room: key.room.to_string(),
        };
        let replies = bus
            .request(
                room_subject(&key.backend, &key.room),
                encode(&h, None),
                expected,
                SNAPSHOT_TIMEOUT,
            )
            .await;
        tracing::debug!(room = ?key.room, replies = replies.len(), expected, "room snapshot");
        let mut st = self.lock();
        let mut wake = false;
        for r in replies {
            let Ok(snap) = serde_json::from_slice::<RoomSnapshot>(&r) else {
                continue;
            };
            for m in snap.members {
                st.upsert_remote(key, m);
            }
            let now = Instant::now();
            let (Some(room), timers) = st.rooms.with_timers(key) else {
                continue;
            };
            if room.properties.is_none() {
                room.properties = snap.properties.map(Arc::from);
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
        if let Some(room) = st.rooms.get_mut(key) {
            room.departed.clear();
        }
        drop(st);
        if wake {
            self.timer.notify_one();
        }
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
