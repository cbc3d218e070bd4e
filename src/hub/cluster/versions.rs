//! Processes of the previous release on the same NATS (a rolling upgrade):
//! they keep working with this one. What differs ([`crate::bus::BUS_VERSION`]):
//! a process of the previous release receives everything (`signaling.>`),
//! so it gets what this release sends to rooms, users and processes; it
//! sends user frames on `signaling.all`, which every process receives;
//! it ignores `Hold`/`Release`; and it asks for a room's snapshot on the
//! room's subject, waiting for an answer of every process. For that
//! request alone, every process of this release receives every room's
//! snapshot requests while a process of the previous release is known.

use std::collections::HashMap;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Cluster, ProcessInfo};
use crate::bus::{decode, Header, Inbound, RoomSnapshot, BUS_VERSION};
use crate::hub::{Hub, State};

impl Cluster {
    /// Another process's heartbeat: alive, with these session counts, and
    /// speaking bus protocol `version`.
    pub fn heard_from(&mut self, from: String, counts: HashMap<String, u64>, version: u32) {
        let before = self.processes.get(&from).map(|p| p.version);
        if version < BUS_VERSION && before != Some(version) {
            tracing::warn!(
                process = %from,
                version,
                "a process of the previous release is in the cluster: working with it \
                 (every process receives its room snapshot requests); upgrade every process \
                 to have the traffic split by audience"
            );
        }
        self.processes.insert(
            from,
            ProcessInfo {
                last_seen: Instant::now(),
                counts,
                version,
            },
        );
    }

    /// True while a process of an older bus protocol is known.
    fn previous_release_present(&self) -> bool {
        self.processes.values().any(|p| p.version < BUS_VERSION)
    }
}

impl State {
    /// Receives every room's snapshot requests while a process of the
    /// previous release is known, and stops once none is (after each
    /// change of the known processes).
    pub(crate) fn follow_versions(&mut self) {
        let want = self.cluster.previous_release_present();
        if want == self.cluster.all_rooms {
            return;
        }
        self.cluster.all_rooms = want;
        self.bus.all_rooms_snapshot_requests(want);
        if !want {
            tracing::info!(
                "no process of the previous release left: room snapshot requests \
                 are received for the rooms served here only"
            );
        }
    }

    /// [`Cluster::heard_from`], then [`State::follow_versions`].
    pub(crate) fn heard(&mut self, from: String, counts: HashMap<String, u64>, version: u32) {
        self.cluster.heard_from(from, counts, version);
        self.follow_versions();
    }
}

impl Hub {
    /// A message of the all-rooms subscription: a snapshot request, answered
    /// (empty) when this process does not serve the room. Those of rooms
    /// served here come through the room's own subscription (answered
    /// there, so each process answers once).
    pub(super) fn any_room_request(&self, msg: Inbound) {
        let (Some((Header::SnapshotRequest { backend, room, .. }, _)), Some(reply)) =
            (decode(&msg.payload), msg.reply)
        else {
            return;
        };
        let key = super::dispatch::key_of(&backend, &room);
        let st = self.lock();
        if st.rooms.contains_key(&key) {
            return;
        }
        let payload = serde_json::to_vec(&RoomSnapshot::default()).unwrap_or_default();
        st.bus.reply(reply, Bytes::from(payload));
    }
}
