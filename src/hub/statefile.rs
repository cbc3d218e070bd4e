//! Sessions kept across a restart of a single process (`[sessions]
//! statefile`): on SIGTERM the server closes its clients with 1012 (no
//! `bye`: the session stays) and writes every session — ids, resume ids,
//! rooms, flags, permissions, what was queued for it — and its rooms'
//! state to the file (mode 0600). The next start reads the file once,
//! deletes it, and keeps the sessions for `resumetimeout` as if their
//! connections had just dropped: clients resume with the same session
//! ids, stay in their rooms, nobody sees a leave and Nextcloud is not
//! told. A file that is missing, older than `resumetimeout`, not ours
//! alone (mode), of another format or not readable as a whole is ignored
//! with a log line: it is used entirely or not at all.
//!
//! With `[mcu] type = janus` the publishers and subscribers are kept too:
//! the Janus session outlives the process and the next start claims it
//! (`mcu/direct/restore.rs`), so media goes on.
//!
//! A session in a federated room keeps its link: the link ends without a
//! word to the remote server, which keeps its session for its resume
//! window, and the next start resumes it there (`federation/saved.rs`).
//! A link the remote server never accepted is not kept (its session is
//! left out, gone after the restart).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::outbox::CloseReason;
use super::room::{RoomKey, TransientEntry};
use super::session::{Federated, Session, SessionKind};
use super::{Hub, State};
use crate::api::server::Frame;

/// The format this server writes and reads.
const FORMAT: u32 = 1;

/// Largest state file read (a corrupt or foreign file must not exhaust
/// memory): 1 GiB.
const MAX_FILE: u64 = 1 << 30;

/// Just the head: read first, so that a file of another format is told
/// apart from a corrupt one.
#[derive(Deserialize)]
struct Head {
    format: u32,
    #[serde(default)]
    written_by: String,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    format: u32,
    /// The server version that wrote it (for the log).
    written_by: String,
    /// When it was written, milliseconds since the Unix epoch.
    saved_at_ms: u64,
    sessions: Vec<SavedSession>,
    rooms: Vec<SavedRoom>,
    /// The Janus MCU's publishers and subscribers and its session (absent
    /// in files of servers before it: nothing kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mcu: Option<crate::mcu::SavedMcu>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum SavedKind {
    Client,
    Internal,
    Virtual {
        owner: String,
        client_sid: String,
        /// The actor (id, type) of its `addsession` options.
        #[serde(default)]
        actor: Option<(String, String)>,
    },
}

/// A session as the state file keeps it; also what a process hands to
/// another one in a cluster (`cluster/arrival.rs`).
#[derive(Serialize, Deserialize)]
pub(crate) struct SavedSession {
    pub(crate) id: String,
    pub(crate) resume_id: Option<String>,
    pub(crate) kind: SavedKind,
    pub(crate) backend: String,
    pub(crate) backend_base: String,
    pub(crate) backend_url: String,
    pub(crate) user_id: Option<String>,
    pub(crate) user: Option<Box<RawValue>>,
    pub(crate) features: Vec<String>,
    pub(crate) room: Option<String>,
    pub(crate) room_session_id: Option<String>,
    pub(crate) permissions: Option<Vec<String>>,
    /// Frames queued for it (the unsent rest of its connection first).
    pub(crate) queue: Vec<String>,
    pub(crate) in_call: u32,
    pub(crate) flags: u32,
    /// A federated session (hosting side) and its actor.
    pub(crate) federated: Option<Option<(String, String)>>,
    /// In a hand-over: the (subscriber, stream) waiting for this session
    /// to publish again, to be offered a new subscription then
    /// (`cluster/rolling_media.rs`); absent in files and from processes
    /// before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) resubscribe: Vec<(String, String)>,
    /// The session's link to the remote server of its federated room
    /// (absent in files and hand-overs of servers before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) federation: Option<super::federation::SavedLink>,
}

#[derive(Serialize, Deserialize)]
struct SavedTransient {
    key: String,
    value: Box<RawValue>,
    version: u64,
    /// Time to live left when saved, in milliseconds.
    ttl_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct SavedRoom {
    backend: String,
    room: String,
    backend_url: String,
    backend_base: String,
    /// Saved sessions in the room, in join order.
    members: Vec<String>,
    properties: Option<Box<RawValue>>,
    participants: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    transient: Vec<SavedTransient>,
    transient_version: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn raw(v: &RawValue) -> Option<Box<RawValue>> {
    RawValue::from_string(v.get().to_string()).ok()
}

impl Hub {
    /// Before a restart that keeps the sessions: every connected session's
    /// connection is closed with 1012 after what it holds (no `bye`); the
    /// session stays, as after a dropped connection.
    pub fn close_for_restart(&self) {
        let st = self.lock();
        for s in st.sessions.map.values() {
            if let Some(conn) = &s.conn {
                conn.close(CloseReason::Restart);
            }
        }
    }

    /// Writes every session (but those whose federation link the remote
    /// server never accepted) and its room
    /// to `path` (mode 0600, replaced atomically); returns how many. The
    /// file is written and synced on tokio's blocking pool, not on the
    /// runtime's workers.
    pub async fn save_state(&self, path: &Path) -> std::io::Result<usize> {
        // The federation links hand back what they held first.
        let stopping = {
            let st = self.lock();
            let sids: Vec<Arc<str>> = st.sessions.map.keys().cloned().collect();
            st.stop_links(sids.iter().map(|s| &**s))
        };
        crate::hub::federation::handed_back(stopping).await;
        let mut file = self.lock().saved_state();
        file.mcu = self.mcu().and_then(|m| m.saved_state());
        let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || write_private(&path, &bytes))
            .await
            .map_err(std::io::Error::other)??;
        Ok(file.sessions.len())
    }

    /// At start, before serving: takes the sessions of a state file (read
    /// once, then deleted) if it is usable as a whole; logs what it did.
    pub async fn restore_state(&self, path: &Path) {
        let max_age = self.config.limits.resume_timeout;
        let owned = path.to_path_buf();
        // Read (and deleted) on the blocking pool: up to 1 GiB of file.
        let read = tokio::task::spawn_blocking(move || read_state(&owned, max_age))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let mut file = match read {
            Ok(Some(f)) => f,
            Ok(None) => {
                tracing::info!(file = %path.display(), "no sessions kept from before (no state file)");
                return;
            }
            Err(why) => {
                tracing::warn!(file = %path.display(), "state file ignored, no sessions kept: {why}");
                return;
            }
        };
        let written_by = file.written_by.clone();
        let mcu = file.mcu.take();
        match self.install(file) {
            Ok((sessions, rooms, skipped)) => {
                tracing::info!(
                    file = %path.display(),
                    sessions,
                    rooms,
                    skipped,
                    %written_by,
                    "sessions kept from before the restart, resumable for [sessions] resumetimeout"
                );
                // The MCU takes them when it starts (right after this).
                *self.restored_mcu.lock().unwrap_or_else(|p| p.into_inner()) = mcu;
            }
            Err(why) => {
                tracing::warn!(file = %path.display(), "state file ignored, no sessions kept: {why}")
            }
        }
    }

    /// Builds every session and room of `file` first (all or nothing),
    /// then installs them as disconnected sessions. Sessions of a backend
    /// that is no longer configured are left out (counted as skipped).
    fn install(&self, file: StateFile) -> Result<(usize, usize, usize), String> {
        let registry = self.registry();
        let mut sessions = Vec::new();
        let mut ids = HashSet::new();
        let mut resume_ids = HashSet::new();
        let mut skipped = 0;
        let mut links = Vec::new();
        for mut s in file.sessions {
            let Some(backend) = registry.by_id(&s.backend) else {
                skipped += 1;
                continue;
            };
            if !ids.insert(s.id.clone()) {
                return Err(format!("session {} twice", s.id));
            }
            if let Some(r) = &s.resume_id {
                if !resume_ids.insert(r.clone()) {
                    return Err("a resume id twice".into());
                }
            }
            if let Some(link) = s.federation.take() {
                links.push((s.id.clone(), link));
            }
            sessions.push(session_of(s, backend));
        }
        for s in &sessions {
            if let SessionKind::Virtual { owner, .. } = &s.kind {
                if !ids.contains(&**owner) {
                    return Err(format!("virtual session {} without its owner", s.id));
                }
            }
        }
        let mut rooms = Vec::new();
        for r in file.rooms {
            let key = RoomKey {
                backend: r.backend.as_str().into(),
                room: r.room.as_str().into(),
            };
            let in_room = |m: &String| {
                sessions
                    .iter()
                    .any(|s| &*s.id == m.as_str() && s.room.as_ref() == Some(&key))
            };
            if r.members.iter().any(|m| !in_room(m)) && registry.by_id(&r.backend).is_some() {
                return Err(format!("room {:?} lists a member not in it", r.room));
            }
            rooms.push((key, r));
        }
        let elapsed =
            Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(file.saved_at_ms));
        let counts = (sessions.len(), rooms.len(), skipped);
        let mut st = self.lock();
        st.install_saved(sessions, rooms, elapsed);
        for (sid, link) in links {
            st.relink(&sid, link);
        }
        drop(st);
        self.timer.notify_one();
        Ok(counts)
    }
}

/// A saved session as a disconnected session of this process.
pub(crate) fn session_of(
    s: SavedSession,
    backend: Arc<crate::backend::registry::Backend>,
) -> Session {
    let queue: std::collections::VecDeque<Frame> = s.queue.into_iter().map(Frame::from).collect();
    let bytes = queue.iter().map(|f| f.len()).sum();
    let room = s.room.map(|r| RoomKey {
        backend: backend.id.clone(),
        room: r.into(),
    });
    Session {
        id: s.id.into(),
        resume_id: s.resume_id.map(Arc::from),
        kind: match s.kind {
            SavedKind::Client => SessionKind::Client,
            SavedKind::Internal => SessionKind::Internal,
            SavedKind::Virtual {
                owner,
                client_sid,
                actor,
            } => SessionKind::Virtual {
                owner: owner.into(),
                client_sid,
                actor: actor.map(|(id, kind)| Arc::new(super::session::Actor { id, kind })),
            },
        },
        backend,
        backend_base: s.backend_base.into(),
        backend_url: s.backend_url.into(),
        user_id: s.user_id.map(Arc::from),
        user: s.user.map(Arc::from),
        features: s.features,
        room,
        room_session_id: s.room_session_id.map(Arc::from),
        permissions: s.permissions,
        conn: None,
        // Kept in full, as the unsent rest of a dropped connection.
        carried: (queue.len(), bytes),
        queue_bytes: bytes,
        queue,
        in_call: s.in_call,
        flags: s.flags,
        virtuals: HashMap::new(),
        fed_link: None,
        client_ip: None,
        country: None,
        mcu_tasks: None,
        federated: s.federated.map(|actor| Box::new(Federated { actor })),
    }
}

impl State {
    /// What the state file holds: the sessions (their connections' unsent
    /// frames moved to their queues) and their rooms.
    fn saved_state(&mut self) -> StateFile {
        let now = Instant::now();
        let mut sessions = Vec::new();
        for s in self.sessions.map.values_mut() {
            if let Some(link) = &s.fed_link {
                if !link.resumable() {
                    continue;
                }
                // Ends without a word to the remote server (stopped
                // already, unless it became resumable since).
                let _ = link.stop();
            }
            if let Some(conn) = s.conn.take() {
                let mut pending = conn.take_pending();
                pending.append(&mut s.queue);
                s.queue = pending;
            }
            sessions.push(saved_session(s));
        }
        let saved: HashSet<&str> = sessions.iter().map(|s| s.id.as_str()).collect();
        let mut rooms = Vec::new();
        for (key, room) in self.rooms.iter() {
            let members: Vec<String> = room
                .members
                .iter()
                .filter(|m| saved.contains(&***m))
                .map(|m| m.to_string())
                .collect();
            if members.is_empty() {
                continue;
            }
            rooms.push(SavedRoom {
                backend: key.backend.to_string(),
                room: key.room.to_string(),
                backend_url: room.backend_url.to_string(),
                backend_base: room.backend_base.to_string(),
                members,
                properties: room.properties.as_deref().and_then(raw),
                participants: room.participants.clone(),
                transient: room
                    .transient
                    .iter()
                    .filter_map(|(k, v)| {
                        Some(SavedTransient {
                            key: k.clone(),
                            value: raw(&v.value)?,
                            version: v.version,
                            ttl_ms: v.expires.map(|(at, _)| {
                                at.saturating_duration_since(now).as_millis() as u64
                            }),
                        })
                    })
                    .collect(),
                transient_version: room.transient_version,
            });
        }
        StateFile {
            format: FORMAT,
            written_by: super::VERSION.to_string(),
            saved_at_ms: unix_ms(SystemTime::now()),
            sessions,
            rooms,
            mcu: None,
        }
    }

    /// Installs checked sessions and rooms; `elapsed` since they were
    /// saved shortens the time to live of transient data.
    fn install_saved(
        &mut self,
        sessions: Vec<Session>,
        rooms: Vec<(RoomKey, SavedRoom)>,
        elapsed: Duration,
    ) {
        let deadline = Instant::now() + self.sessions.limits.resume_timeout;
        for s in sessions {
            let id = s.id.clone();
            let virtual_session = s.is_virtual();
            self.sessions.insert(s);
            // Virtual sessions live as long as their internal client.
            if !virtual_session {
                self.sessions.disconnected.insert(id, deadline);
            }
        }
        // Each internal client's virtual sessions, once all are in.
        let pairs: Vec<(Arc<str>, String, Arc<str>)> = self
            .sessions
            .map
            .values()
            .filter_map(|s| match &s.kind {
                SessionKind::Virtual {
                    owner, client_sid, ..
                } => Some((owner.clone(), client_sid.clone(), s.id.clone())),
                _ => None,
            })
            .collect();
        for (owner, client_sid, sid) in pairs {
            if let Some(o) = self.sessions.map.get_mut(&owner) {
                o.virtuals.insert(client_sid, sid);
            }
        }
        let now = Instant::now();
        for (key, r) in rooms {
            let members: Vec<Arc<str>> = r
                .members
                .iter()
                .filter_map(|m| {
                    self.sessions
                        .map
                        .get_key_value(m.as_str())
                        .map(|(k, _)| k.clone())
                })
                .collect();
            if members.is_empty() {
                continue;
            }
            let nc: Vec<(Arc<str>, Arc<str>)> = members
                .iter()
                .filter_map(|m| {
                    let rs = self.sessions.map.get(m)?.room_session_id.clone()?;
                    Some((rs, m.clone()))
                })
                .collect();
            self.rooms
                .get_or_insert(&key, r.backend_url.into(), r.backend_base.into());
            let (Some(room), timers) = self.rooms.with_timers(&key) else {
                continue;
            };
            room.members = members;
            room.nc_sessions = nc.into_iter().collect();
            room.properties = r.properties.map(Arc::from);
            room.participants = r.participants;
            room.transient_version = r.transient_version;
            for t in r.transient {
                // A file's time to live is at most `[transient] maxttl`
                // (a huge one would overflow the clock).
                let ttl = t
                    .ttl_ms
                    .map(|ms| Duration::from_millis(ms).min(self.transient_limits.max_ttl));
                let expires = match ttl {
                    Some(ttl) if ttl <= elapsed => continue,
                    Some(ttl) => {
                        let e = timers.expiry(now + (ttl - elapsed));
                        timers.schedule(e, &key, &t.key);
                        Some(e)
                    }
                    None => None,
                };
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
}

/// A session as the state file keeps it (its queue as it is: the caller
/// moved the connection's unsent frames there).
pub(crate) fn saved_session(s: &Session) -> SavedSession {
    SavedSession {
        id: s.id.to_string(),
        resume_id: s.resume_id.as_deref().map(str::to_string),
        kind: match &s.kind {
            SessionKind::Client => SavedKind::Client,
            SessionKind::Internal => SavedKind::Internal,
            SessionKind::Virtual {
                owner,
                client_sid,
                actor,
            } => SavedKind::Virtual {
                owner: owner.to_string(),
                client_sid: client_sid.clone(),
                actor: actor.as_ref().map(|a| (a.id.clone(), a.kind.clone())),
            },
        },
        backend: s.backend.id.to_string(),
        backend_base: s.backend_base.to_string(),
        backend_url: s.backend_url.to_string(),
        user_id: s.user_id.as_deref().map(str::to_string),
        user: s.user.as_deref().and_then(raw),
        features: s.features.clone(),
        room: s.room.as_ref().map(|k| k.room.to_string()),
        room_session_id: s.room_session_id.as_deref().map(str::to_string),
        permissions: s.permissions.clone(),
        queue: s.queue.iter().map(|f| f.to_string()).collect(),
        in_call: s.in_call,
        flags: s.flags,
        federated: s.federated.as_ref().map(|f| f.actor.clone()),
        resubscribe: Vec::new(),
        federation: s.fed_link.as_ref().and_then(|l| l.saved()),
    }
}

/// Writes `bytes` to `path` readable by this user only, through a
/// temporary file renamed over it (a crash leaves the old file or none,
/// never half of one).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Reads the state file once and deletes it. `Ok(None)`: there is none;
/// `Err`: why it is not used.
fn read_state(path: &Path, max_age: Duration) -> Result<Option<StateFile>, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path).and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes));
    // Read once: whatever it holds, it is not read again.
    std::fs::remove_file(path).map_err(|e| format!("cannot delete it: {e}"))?;
    read.map_err(|e| e.to_string())?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "mode {:o}: others may read or change it (written with 0600)",
            meta.permissions().mode() & 0o777
        ));
    }
    if bytes.len() as u64 > MAX_FILE {
        return Err("larger than 1 GiB".into());
    }
    let head: Head = serde_json::from_slice(&bytes).map_err(|e| format!("corrupt: {e}"))?;
    if head.format != FORMAT {
        return Err(format!(
            "format {} (written by {}), this server reads format {FORMAT}",
            head.format, head.written_by
        ));
    }
    let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| format!("corrupt: {e}"))?;
    let now = unix_ms(SystemTime::now());
    let age = now.saturating_sub(file.saved_at_ms);
    if age > max_age.as_millis() as u64 {
        return Err(format!(
            "stale: written {} s ago, longer than [sessions] resumetimeout",
            age / 1000
        ));
    }
    if file.saved_at_ms > now + 60_000 {
        return Err("written in the future".into());
    }
    Ok(Some(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(saved_at_ms: u64, format: u32) -> Vec<u8> {
        serde_json::to_vec(&StateFile {
            format,
            written_by: "test".into(),
            saved_at_ms,
            sessions: Vec::new(),
            rooms: Vec::new(),
            mcu: None,
        })
        .unwrap()
    }

    fn dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "spreed-statefile-{}-{}",
            std::process::id(),
            super::super::session::new_id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_state_file_is_read_once_and_only_when_fresh_private_and_whole() {
        let d = dir();
        let path = d.join("sessions.state");
        let minute = Duration::from_secs(60);
        assert!(read_state(&path, minute).unwrap().is_none());
        let now = unix_ms(SystemTime::now());
        write_private(&path, &file_with(now, FORMAT)).unwrap();
        assert!(read_state(&path, minute).unwrap().is_some());
        assert!(!path.exists(), "read once: deleted");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (file_with(now - 120_000, FORMAT), "stale"),
            (file_with(now, FORMAT + 1), "format 2"),
            (file_with(now, FORMAT)[..20].to_vec(), "corrupt"),
            (file_with(now + 3_600_000, FORMAT), "future"),
        ];
        for (bytes, why) in cases {
            write_private(&path, &bytes).unwrap();
            let err = read_state(&path, minute).err().unwrap();
            assert!(err.contains(why), "{err}");
            assert!(!path.exists());
        }
        write_private(&path, &file_with(now, FORMAT)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_state(&path, minute)
            .err()
            .unwrap()
            .contains("mode 644"));
        let _ = std::fs::remove_dir_all(&d);
    }
}
