//! Nextcloud's participant list of a room, as the `participants` and
//! `incall` backend requests send it (in full, or only the changes with
//! `changed-users`): kept per room, merged, and turned into the
//! `participants` events clients get; session permissions, the MCU and the
//! call counters follow it.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use super::room::RoomKey;
use super::session::SessionKind;
use super::State;
use crate::api::server::event_frame;

/// The Nextcloud session id of a participant entry.
fn entry_session_id(entry: &Map<String, Value>) -> Option<&str> {
    entry
        .get("sessionId")
        .or_else(|| entry.get("sessionid"))
        .and_then(Value::as_str)
}

impl State {
    /// Copies participant entries for clients: the Nextcloud session id moves
    /// to `nextcloudSessionId` and `sessionId` becomes the signaling session
    /// id (dropped when unknown); permissions are removed.
    pub(super) fn client_entries(
        &self,
        key: &RoomKey,
        entries: &[Map<String, Value>],
    ) -> Vec<Value> {
        let room = self.rooms.get(key);
        entries
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.remove("permissions");
                let nc = e
                    .remove("sessionId")
                    .or_else(|| e.remove("sessionid"))
                    .and_then(|v| v.as_str().map(str::to_string));
                if let Some(nc) = nc {
                    if let Some(sid) = room.and_then(|r| r.nc_sessions.get(nc.as_str())) {
                        e.insert("sessionId".into(), Value::String(sid.to_string()));
                    }
                    // Both ids, as the spec describes participant entries.
                    e.entry("nextcloudSessionId")
                        .or_insert_with(|| Value::String(nc));
                }
                Value::Object(e)
            })
            .collect()
    }

    /// The `participants` `update` event: `changed` holds the changed
    /// entries, `users` everybody (from `users` when Nextcloud sent the
    /// list, else from the participant state kept for `changed-users`),
    /// with internal and virtual sessions added, as the Go server sends it.
    /// The Talk client merges `users` into its own list, so a session that
    /// joins a call late learns who is already in it only from a complete
    /// list. None when there is nothing to tell.
    pub(super) fn participants_frame(
        &self,
        key: &RoomKey,
        changed: &[Map<String, Value>],
        users: Option<&[Map<String, Value>]>,
    ) -> Option<crate::api::server::Frame> {
        let all: Vec<Map<String, Value>> = match users {
            Some(u) => u.to_vec(),
            None => self
                .rooms
                .get(key)
                .map(|r| r.participants.values().cloned().collect())
                .unwrap_or_default(),
        };
        if changed.is_empty() && all.is_empty() {
            return None;
        }
        let changed = self.client_entries(key, changed);
        let mut users = self.client_entries(key, &all);
        let listed: HashSet<String> = users
            .iter()
            .filter_map(|u| u.get("sessionId").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        users.extend(self.internal_incall_entries(key).into_iter().filter(|e| {
            e.get("sessionId")
                .and_then(Value::as_str)
                .is_none_or(|sid| !listed.contains(sid))
        }));
        Some(event_frame(
            "participants",
            "update",
            &json!({"roomid": &*key.room, "changed": changed, "users": users}),
        ))
    }

    /// A session joined (here or on another process) whose participant
    /// entry Nextcloud sent before the join was known (an update during a
    /// slow join): the members get that update again, now with the
    /// session's signaling id. None when there is no such entry.
    pub(crate) fn replay_participant(
        &self,
        key: &RoomKey,
        nc: &str,
    ) -> Option<crate::api::server::Frame> {
        let entry = self.rooms.get(key)?.participants.get(nc)?.clone();
        self.participants_frame(key, &[entry], None)
    }

    /// Applies `permissions` carried in changed participant entries.
    pub(super) fn apply_permissions(&mut self, key: &RoomKey, changed: &[Map<String, Value>]) {
        for e in changed {
            let (Some(nc), Some(perms)) = (entry_session_id(e), e.get("permissions")) else {
                continue;
            };
            // Not a list of strings: the entry is skipped, as in Go.
            let Some(list) = perms.as_array().and_then(|a| {
                a.iter()
                    .map(|p| p.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
            }) else {
                tracing::info!(room = ?key.room, permissions = %perms, "permissions that are not a list of strings, ignored");
                continue;
            };
            let Some(sid) = self
                .rooms
                .get(key)
                .and_then(|r| r.nc_sessions.get(nc))
                .cloned()
            else {
                continue;
            };
            if let Some(s) = self.sessions.map.get_mut(&sid) {
                if let (Some(m), SessionKind::Client) = (&self.mcu, &s.kind) {
                    m.command(crate::mcu::Command::Permissions(sid.clone(), list.clone()));
                }
                s.permissions = Some(list);
            }
        }
    }

    /// Keeps the room's participant state: a full `users` list replaces it,
    /// `changed` entries are merged into it (Nextcloud with `changed-users`
    /// sends only changes). Returns the complete entries of the changed
    /// participants; with `in_call_only`, in changes-only mode, those whose
    /// `inCall` did not change are left out.
    pub(super) fn update_participants(
        &mut self,
        key: &RoomKey,
        changed: &[Map<String, Value>],
        users: Option<&[Map<String, Value>]>,
        in_call_only: bool,
    ) -> Vec<Map<String, Value>> {
        let Some(room) = self.rooms.get_mut(key) else {
            // A join of the room may be waiting for Nextcloud: the room it
            // makes starts with what Nextcloud said meanwhile.
            self.rooms
                .keep_for_join(key, changed, users, entry_session_id);
            return changed.to_vec();
        };
        let previous = std::mem::take(&mut room.participants);
        if let Some(users) = users {
            for u in users {
                if let Some(nc) = entry_session_id(u) {
                    room.participants.insert(nc.to_string(), u.clone());
                }
            }
        } else {
            room.participants = previous.clone();
        }
        let mut effective = Vec::new();
        for c in changed {
            let Some(nc) = entry_session_id(c) else {
                effective.push(c.clone());
                continue;
            };
            let before = previous.get(nc);
            let same_incall = before.is_some_and(|b| b.get("inCall") == c.get("inCall"));
            let merged = match room.participants.get(nc) {
                Some(existing) if users.is_none() => {
                    let mut m = existing.clone();
                    for (k, v) in c {
                        m.insert(k.clone(), v.clone());
                    }
                    m
                }
                _ => c.clone(),
            };
            // Leaving the call ends the session's publishers and subscribers.
            if let (Some(m), Some(sid)) = (&self.mcu, room.nc_sessions.get(nc)) {
                let was = before
                    .and_then(|b| b.get("inCall"))
                    .is_some_and(super::in_call_flag);
                let now = merged.get("inCall").is_some_and(super::in_call_flag);
                if was && !now {
                    m.command(crate::mcu::Command::CloseSession(sid.clone()));
                }
            }
            room.participants.insert(nc.to_string(), merged.clone());
            if !(in_call_only && same_incall && users.is_none()) {
                effective.push(merged);
            }
        }
        self.count_call_changes(key, &previous);
        effective
    }

    /// True when `s` is in its room's call: for clients as Nextcloud's
    /// participant state says, for internal and virtual sessions their flags.
    pub(crate) fn in_call(&self, s: &super::session::Session) -> bool {
        match s.kind {
            SessionKind::Client => {
                let (Some(key), Some(nc)) = (&s.room, &s.room_session_id) else {
                    return false;
                };
                self.rooms
                    .get(key)
                    .and_then(|r| r.participants.get(&**nc))
                    .and_then(|e| e.get("inCall"))
                    .is_some_and(super::in_call_flag)
            }
            _ => s.in_call & super::session::flags::IN_CALL != 0,
        }
    }

    /// Counts sessions that joined the call and a call that started
    /// (`signaling_call_sessions_total`, `signaling_call_rooms_total`),
    /// comparing the room's participant state with `previous`.
    pub(super) fn count_call_changes(
        &self,
        key: &RoomKey,
        previous: &std::collections::BTreeMap<String, Map<String, Value>>,
    ) {
        let Some(room) = self.rooms.get(key) else {
            return;
        };
        let flag = |m: Option<&Map<String, Value>>| {
            m.and_then(|e| e.get("inCall"))
                .is_some_and(super::in_call_flag)
        };
        let mut any_before = previous.values().any(|e| flag(Some(e)));
        for (nc, sid) in &room.nc_sessions {
            let Some(s) = self.sessions.map.get(sid) else {
                continue;
            };
            let now = flag(room.participants.get(&**nc));
            if now && !flag(previous.get(&**nc)) {
                let kind = s.kind.label(s.federated.is_some());
                self.go
                    .call_sessions_total
                    .with_label_values(&[&*key.backend, kind])
                    .inc();
                if !any_before {
                    any_before = true;
                    self.go
                        .call_rooms_total
                        .with_label_values(&[&*key.backend])
                        .inc();
                }
            }
        }
    }
}
