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
    /// while a snapshot was on its way: not to be added by the snapshot
    /// (filled only then, cleared when it is applied).
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

/// When a transient value expires: its deadline and a sequence number
/// that makes it unique in the queue.
pub type Expiry = (Instant, u64);

/// The rooms this process serves, counted per backend as they come and go
/// (`signaling_hub_rooms` needs no walk over them), with the expiry queue
/// of their transient data. A room enters only through
/// [`Rooms::get_or_insert`] and leaves only through [`Rooms::remove`],
/// which also drops its values' timers.
#[derive(Default)]
pub struct Rooms {
    map: HashMap<RoomKey, Room>,
    per_backend: HashMap<Arc<str>, i64>,
    /// Expiry of transient values: one queue for all rooms.
    pub timers: TransientTimers,
    /// The room subjects of the bus: subscribed while the room is here.
    pub interest: crate::bus::Interest,
    /// Rooms that do not exist here yet but have joins waiting for
    /// Nextcloud: participant updates Nextcloud sends meanwhile are kept
    /// for the room the first successful join makes (the Go server's
    /// strukturag#1305 on one process).
    joining: HashMap<RoomKey, PendingJoins>,
}

/// Joins of one room waiting for Nextcloud, and the participant entries
/// (by Nextcloud session id) Nextcloud sent while they waited.
#[derive(Default)]
struct PendingJoins {
    joins: u32,
    participants: HashMap<String, serde_json::Map<String, serde_json::Value>>,
}

/// At most this many participant entries are kept for a room whose join is
/// still waiting (Nextcloud sends one per participant).
const MAX_PENDING_PARTICIPANTS: usize = 10_000;

impl Rooms {
    /// No rooms yet; their subjects are subscribed through `interest`.
    pub fn with_interest(interest: crate::bus::Interest) -> Rooms {
        Rooms {
            interest,
            ..Rooms::default()
        }
    }

    /// A join of `key` is waiting for Nextcloud.
    pub fn begin_join(&mut self, key: &RoomKey) {
        self.joining.entry(key.clone()).or_default().joins += 1;
    }

    /// A join of `key` got its answer (whatever it was).
    pub fn end_join(&mut self, key: &RoomKey) {
        if let Some(p) = self.joining.get_mut(key) {
            p.joins = p.joins.saturating_sub(1);
            if p.joins == 0 {
                self.joining.remove(key);
            }
        }
    }

    /// Keeps a participant update for a room that does not exist here but
    /// has a join waiting; false when no join waits (nothing kept).
    pub fn keep_for_join(
        &mut self,
        key: &RoomKey,
        changed: &[serde_json::Map<String, serde_json::Value>],
        users: Option<&[serde_json::Map<String, serde_json::Value>]>,
        session_id_of: impl Fn(&serde_json::Map<String, serde_json::Value>) -> Option<&str>,
    ) -> bool {
        let Some(p) = self.joining.get_mut(key) else {
            return false;
        };
        if let Some(users) = users {
            p.participants.clear();
            for u in users {
                if let Some(nc) = session_id_of(u) {
                    p.participants.insert(nc.to_string(), u.clone());
                }
            }
        }
        for c in changed {
            let Some(nc) = session_id_of(c) else { continue };
            if let Some(e) = p.participants.get_mut(nc) {
                e.extend(c.iter().map(|(k, v)| (k.clone(), v.clone())));
            } else if p.participants.len() < MAX_PENDING_PARTICIPANTS {
                p.participants.insert(nc.to_string(), c.clone());
            } else {
                tracing::warn!(room = ?key.room, "participant update for a joining room not kept: {MAX_PENDING_PARTICIPANTS} entries already");
            }
        }
        true
    }

    /// What Nextcloud said of the participants while joins of `key` were
    /// waiting (taken: the room that is made now holds it from here on).
    pub fn take_kept_for_join(
        &mut self,
        key: &RoomKey,
    ) -> HashMap<String, serde_json::Map<String, serde_json::Value>> {
        self.joining
            .get_mut(key)
            .map(|p| std::mem::take(&mut p.participants))
            .unwrap_or_default()
    }

    /// The room `key`, made (and counted) when it does not exist yet.
    pub fn get_or_insert(&mut self, key: &RoomKey, url: Arc<str>, base: Arc<str>) -> &mut Room {
        match self.map.entry(key.clone()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                *self.per_backend.entry(key.backend.clone()).or_default() += 1;
                self.interest
                    .add(|| crate::bus::room_subject(&key.backend, &key.room));
                e.insert(Room::new(url, base))
            }
        }
    }

    /// Removes a room with the expiry timers of its transient data.
    pub fn remove(&mut self, key: &RoomKey) -> Option<Room> {
        let room = self.map.remove(key)?;
        self.interest
            .remove(|| crate::bus::room_subject(&key.backend, &key.room));
        if let Some(n) = self.per_backend.get_mut(&key.backend) {
            *n -= 1;
            if *n <= 0 {
                self.per_backend.remove(&key.backend);
            }
        }
        for e in room.transient.values() {
            if let Some(x) = e.expires {
                self.timers.cancel(&x);
            }
        }
        Some(room)
    }

    /// A room.
    pub fn get(&self, key: &RoomKey) -> Option<&Room> {
        self.map.get(key)
    }

    /// A room, to change it.
    pub fn get_mut(&mut self, key: &RoomKey) -> Option<&mut Room> {
        self.map.get_mut(key)
    }

    /// A room to change and the expiry queue, borrowed together.
    pub fn with_timers(&mut self, key: &RoomKey) -> (Option<&mut Room>, &mut TransientTimers) {
        (self.map.get_mut(key), &mut self.timers)
    }

    /// True if this process serves the room.
    pub fn contains_key(&self, key: &RoomKey) -> bool {
        self.map.contains_key(key)
    }

    /// Number of rooms.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no room is served.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every room.
    pub fn iter(&self) -> impl Iterator<Item = (&RoomKey, &Room)> {
        self.map.iter()
    }

    /// Every room's key.
    pub fn keys(&self) -> impl Iterator<Item = &RoomKey> {
        self.map.keys()
    }

    /// Rooms per backend id.
    pub fn per_backend(&self) -> &HashMap<Arc<str>, i64> {
        &self.per_backend
    }

    /// Public ids of the sessions in a room matching a set of Nextcloud
    /// session ids.
    pub fn sessions_by_nc_ids(
        &self,
        key: &RoomKey,
        nc_ids: &std::collections::HashSet<String>,
    ) -> Vec<Arc<str>> {
        let Some(room) = self.map.get(key) else {
            return Vec::new();
        };
        room.nc_sessions
            .iter()
            .filter(|(nc, _)| nc_ids.contains(&***nc))
            .map(|(_, sid)| sid.clone())
            .collect()
    }
}

/// Transient values waiting for their TTL, earliest first.
#[derive(Default)]
pub struct TransientTimers {
    queue: BTreeMap<Expiry, (RoomKey, String)>,
    seq: u64,
}

impl TransientTimers {
    /// A new expiry at `at` (not scheduled yet).
    pub fn expiry(&mut self, at: Instant) -> Expiry {
        self.seq += 1;
        (at, self.seq)
    }

    /// Schedules the expiry of `name` in `key`; true if it is the earliest.
    pub fn schedule(&mut self, at: Expiry, key: &RoomKey, name: &str) -> bool {
        let earliest = self.queue.keys().next().is_none_or(|first| at.0 < first.0);
        self.queue.insert(at, (key.clone(), name.to_string()));
        earliest
    }

    /// Forgets a scheduled expiry.
    pub fn cancel(&mut self, at: &Expiry) {
        self.queue.remove(at);
    }

    /// Takes the earliest expiry due at `now`, or tells when the next one is.
    pub fn pop_due(&mut self, now: Instant) -> Result<(Expiry, RoomKey, String), Option<Instant>> {
        let Some((&at, _)) = self.queue.iter().next() else {
            return Err(None);
        };
        if at.0 > now {
            return Err(Some(at.0));
        }
        match self.queue.remove(&at) {
            Some((key, name)) => Ok((at, key, name)),
            None => Err(None),
        }
    }

    /// Number of values waiting for their TTL.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no value waits for its TTL.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
