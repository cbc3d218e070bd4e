//! Rooms: members, properties, transient data and the mapping from
//! Nextcloud session ids to signaling sessions.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::time::Instant;

use serde_json::value::RawValue;

/// A room is scoped by its backend: the same room id on two backends is two rooms.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomKey {
    /// Backend id.
    pub backend: Arc<str>,
    /// Room id (Talk token).
    pub room: Arc<str>,
}

/// One transient value.
pub struct TransientEntry {
    /// The value, raw JSON.
    pub value: Box<RawValue>,
    /// Expiry and its sequence number in the hub's timer.
    pub expires: Option<(Instant, u64)>,
    /// Order of application (the same on every process).
    pub version: u64,
}

/// A room with at least one session.
pub struct Room {
    /// Public ids of the sessions in the room, in join order.
    pub members: Vec<Arc<str>>,
    /// Properties from Nextcloud.
    pub properties: Option<Arc<RawValue>>,
    /// Transient data.
    pub transient: BTreeMap<String, TransientEntry>,
    /// Nextcloud session id -> public session id.
    pub nc_sessions: HashMap<Arc<str>, Arc<str>>,
    /// URL of the backend's signaling endpoint (for pings).
    pub backend_url: Arc<str>,
    /// Base URL of the backend.
    pub backend_base: Arc<str>,
    /// Participants as last reported by Nextcloud (by Nextcloud session id),
    /// for `changed-users` where Nextcloud sends only changes.
    pub participants: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// Version counter of the transient data.
    pub transient_version: u64,
    /// Members of other processes that left before their join was known
    /// (while a snapshot was on its way): not to be added by the snapshot.
    pub departed: std::collections::HashSet<Arc<str>>,
}

impl Room {
    /// An empty room.
    pub fn new(backend_url: Arc<str>, backend_base: Arc<str>) -> Self {
        Room {
            members: Vec::new(),
            properties: None,
            transient: BTreeMap::new(),
            nc_sessions: HashMap::new(),
            backend_url,
            backend_base,
            participants: BTreeMap::new(),
            transient_version: 0,
            departed: Default::default(),
        }
    }

    /// Removes a member; true if it was there.
    pub fn remove_member(&mut self, sid: &str) -> bool {
        match self.members.iter().position(|m| &**m == sid) {
            Some(pos) => {
                self.members.remove(pos);
                true
            }
            None => false,
        }
    }
}
