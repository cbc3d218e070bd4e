//! Transient data: per-room key/value state shared by the sessions in the
//! room, with optional TTL. Expiry runs on one timer for the whole hub.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use serde_json::value::RawValue;

use super::room::{RoomKey, TransientEntry};
use super::{invalid_format, Hub, State};
use crate::api::client::{TransientClientMessage, TransientKind};
use crate::api::error::{self, ProtocolError};
use crate::api::server::{frame, Frame, TransientOut};

/// Parses a TTL in nanoseconds (number or numeric string); zero = none.
fn parse_ttl(v: &serde_json::Value) -> Result<Option<Duration>, ()> {
    let ns = match v {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Number(n) => n.as_u64().ok_or(())?,
        serde_json::Value::String(s) if s.is_empty() => return Ok(None),
        serde_json::Value::String(s) => s.trim().parse::<u64>().map_err(|_| ())?,
        _ => return Err(()),
    };
    Ok((ns > 0).then(|| Duration::from_nanos(ns)))
}

/// Bytes a key and value take in a room's `initial` snapshot.
fn entry_size(key: &str, value: &RawValue) -> usize {
    // `"key":value,` plus escaping slack.
    key.len() + value.get().len() + 8
}

/// Why a `set` is refused, if it is: (metric label, message).
fn check_set(
    room: Option<&super::room::Room>,
    name: &str,
    value: &RawValue,
    limits: &crate::config::TransientLimits,
) -> Result<(), (&'static str, String)> {
    if value.get().len() > limits.max_value_size {
        return Err((
            "transient_value_size",
            format!("Value is larger than {} bytes.", limits.max_value_size),
        ));
    }
    let Some(room) = room else {
        return Ok(());
    };
    let old = room.transient.get(name);
    if old.is_none() && room.transient.len() >= limits.max_keys {
        return Err((
            "transient_keys",
            format!("The room already has {} keys.", limits.max_keys),
        ));
    }
    let total: usize = room
        .transient
        .iter()
        .map(|(k, e)| entry_size(k, &e.value))
        .sum();
    let after =
        total - old.map(|e| entry_size(name, &e.value)).unwrap_or(0) + entry_size(name, value);
    if after > limits.max_room_bytes {
        return Err((
            "transient_room_bytes",
            format!(
                "The room's transient data would exceed {} bytes.",
                limits.max_room_bytes
            ),
        ));
    }
    Ok(())
}

/// The error for a refused transient request.
fn limit_error(msg: String) -> ProtocolError {
    ProtocolError::new(crate::api::error::TRANSIENT_LIMIT_EXCEEDED, msg)
}

fn same_json(a: &RawValue, b: &RawValue) -> bool {
    if a.get() == b.get() {
        return true;
    }
    match (
        serde_json::from_str::<serde_json::Value>(a.get()),
        serde_json::from_str::<serde_json::Value>(b.get()),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn transient_frame(
    kind: &str,
    key: &str,
    value: Option<&RawValue>,
    old: Option<&RawValue>,
) -> Frame {
    frame(
        None,
        "transient",
        &TransientOut {
            kind,
            key: Some(key),
            value,
            oldvalue: old,
            data: None,
        },
    )
}

impl State {
    /// Sets (or, with `None`, removes) a transient value, notifying the room.
    /// Returns true when a new earliest expiry was scheduled; the error when
    /// a `[transient]` limit refuses the value.
    pub(crate) fn set_transient(
        &mut self,
        key: &RoomKey,
        name: &str,
        value: Option<Box<RawValue>>,
        ttl: Option<Duration>,
    ) -> Result<bool, ProtocolError> {
        let Some(value) = value else {
            self.remove_transient(key, name);
            return Ok(false);
        };
        let expires = ttl.map(|t| self.rooms.timers.expiry(Instant::now() + t));
        let (Some(room), timers) = self.rooms.with_timers(key) else {
            return Ok(false);
        };
        // The origin checked the limits; in a cluster two processes may
        // race, and every process refuses the same (later) one here.
        if let Err((limit, msg)) = check_set(Some(room), name, &value, &self.transient_limits) {
            tracing::info!(room = ?key.room, limit, "transient value refused: {msg}");
            self.refused.with_label_values(&[limit]).inc();
            return Err(limit_error(msg));
        }
        let earliest = expires.is_some_and(|at| timers.schedule(at, key, name));
        if let Some(existing) = room.transient.get_mut(name) {
            if same_json(&existing.value, &value) {
                // Same value: only the TTL changes.
                if let Some(old) = existing.expires.take() {
                    timers.cancel(&old);
                }
                existing.expires = expires;
                return Ok(earliest);
            }
        }
        room.transient_version += 1;
        let old = room.transient.insert(
            name.to_string(),
            TransientEntry {
                value: value.clone(),
                expires,
                version: room.transient_version,
            },
        );
        if let Some(x) = old.as_ref().and_then(|e| e.expires) {
            timers.cancel(&x);
        }
        let f = transient_frame("set", name, Some(&value), old.as_ref().map(|o| &*o.value));
        self.broadcast(key, &f, None);
        Ok(earliest)
    }

    /// Removes a transient value, notifying the room; unknown keys are ignored.
    pub(crate) fn remove_transient(&mut self, key: &RoomKey, name: &str) {
        let Some(room) = self.rooms.get_mut(key) else {
            return;
        };
        let Some(old) = room.transient.remove(name) else {
            return;
        };
        if let Some(x) = old.expires {
            self.rooms.timers.cancel(&x);
        }
        let f = transient_frame("remove", name, None, Some(&old.value));
        self.broadcast(key, &f, None);
    }

    /// Removes values whose TTL passed; returns the next deadline.
    pub(crate) fn expire_transient(&mut self, now: Instant) -> Option<Instant> {
        loop {
            let (at, room_key, name) = match self.rooms.timers.pop_due(now) {
                Ok(due) => due,
                Err(next) => return next,
            };
            let current = self
                .rooms
                .get(&room_key)
                .and_then(|r| r.transient.get(&name))
                .filter(|e| e.expires == Some(at))
                .map(|e| e.version);
            if let Some(version) = current {
                if self.bus.clustered() {
                    // Every process publishes the removal; the first one
                    // applies, the others no longer match the version.
                    let h = crate::bus::Header::Transient {
                        backend: room_key.backend.to_string(),
                        room: room_key.room.to_string(),
                        key: name.clone(),
                        value: None,
                        ttl_ns: None,
                        if_version: Some(version),
                        sender: None,
                        id: None,
                    };
                    self.bus.publish(
                        crate::bus::room_subject(&room_key.backend, &room_key.room),
                        crate::bus::encode(&h, None),
                    );
                } else {
                    self.remove_transient(&room_key, &name);
                }
            }
        }
    }
}

impl Hub {
    /// Handles a client's `transient` request.
    pub(crate) fn transient(&self, sid: &Arc<str>, id: Option<&str>, t: TransientClientMessage) {
        let (set, ttl) = match self.check_transient(&t) {
            Ok(checked) => checked,
            Err(e) => return self.reply_error(sid, id, e),
        };
        match self.mutate(|st| self.apply_client_transient(st, sid, id, t, set, ttl)) {
            Ok(true) => self.timer.notify_one(),
            Ok(false) => {}
            Err(e) => self.reply_error(sid, id, e),
        }
    }

    /// What can be checked of a `transient` request without the state:
    /// its type (true for `set`), key, TTL and the `[transient]` limits on
    /// them.
    fn check_transient(
        &self,
        t: &TransientClientMessage,
    ) -> Result<(bool, Option<Duration>), ProtocolError> {
        let ttl = match t.ttl.as_ref().map(parse_ttl) {
            None => None,
            Some(Ok(ttl)) => ttl,
            Some(Err(())) => return Err(invalid_format("ttl must be nanoseconds")),
        };
        let set = match &t.kind {
            TransientKind::Set => true,
            TransientKind::Remove => false,
            TransientKind::Unknown(other) => {
                return Err(invalid_format(format!(
                    "unsupported transient type `{other}`"
                )))
            }
        };
        if t.key.is_empty() {
            return Err(invalid_format("key missing"));
        }
        let limits = &self.config.transient;
        if t.key.len() > limits.max_key_length {
            self.metrics.refuse("transient_key_length");
            return Err(limit_error(format!(
                "Key is longer than {} bytes.",
                limits.max_key_length
            )));
        }
        if ttl.is_some_and(|d| d > limits.max_ttl) {
            self.metrics.refuse("transient_ttl");
            return Err(limit_error(format!(
                "TTL is longer than {} seconds.",
                limits.max_ttl.as_secs()
            )));
        }
        Ok((set, ttl))
    }

    /// Sets or removes a client's transient value in its room (through the
    /// bus when clustered); true when the timer must wake for a new
    /// earliest expiry.
    fn apply_client_transient(
        &self,
        st: &mut State,
        sid: &Arc<str>,
        id: Option<&str>,
        t: TransientClientMessage,
        set: bool,
        ttl: Option<Duration>,
    ) -> Result<bool, ProtocolError> {
        let Some(s) = st.sessions.map.get(sid) else {
            return Ok(false);
        };
        let Some(key) = s.room.clone() else {
            return Err(ProtocolError::new(
                error::NOT_IN_ROOM,
                "No room joined yet.",
            ));
        };
        if !s.has_permission("transient-data") {
            return Err(ProtocolError::new(
                error::NOT_ALLOWED,
                "Not allowed to update transient data.",
            ));
        }
        // `transient-sessiondata`: `sd:<session id>` belongs to that session.
        if t.key.starts_with("sd:") && t.key != super::session_data_key(sid) {
            return Err(ProtocolError::new(
                error::NOT_ALLOWED,
                "Not allowed to update this transient data entry.",
            ));
        }
        if let (true, Some(v)) = (set, t.value.as_deref()) {
            if let Err((limit, msg)) =
                check_set(st.rooms.get(&key), &t.key, v, &self.config.transient)
            {
                self.metrics.refuse(limit);
                return Err(limit_error(msg));
            }
        }
        let value = if set { t.value } else { None };
        st.change_transient(&key, t.key, value, ttl, Some((sid, id)))
    }
}

impl State {
    /// Sets (or, with `None`, removes) a transient value in a room of this
    /// process and, when clustered, of every process (all of them, this
    /// one too, apply it in bus order). True when the timer must wake for
    /// a new earliest expiry.
    pub(crate) fn change_transient(
        &mut self,
        key: &RoomKey,
        name: String,
        value: Option<Box<RawValue>>,
        ttl: Option<Duration>,
        sender: Option<(&str, Option<&str>)>,
    ) -> Result<bool, ProtocolError> {
        if self.bus.clustered() {
            let h = crate::bus::Header::Transient {
                backend: key.backend.to_string(),
                room: key.room.to_string(),
                key: name,
                value,
                ttl_ns: ttl.map(|d| d.as_nanos() as u64),
                if_version: None,
                sender: sender.map(|(s, _)| s.to_string()),
                id: sender.and_then(|(_, id)| id.map(str::to_string)),
            };
            self.bus.publish(
                crate::bus::room_subject(&key.backend, &key.room),
                crate::bus::encode(&h, None),
            );
            Ok(false)
        } else if value.is_some() {
            self.set_transient(key, &name, value, ttl)
        } else {
            self.remove_transient(key, &name);
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parsing() {
        assert_eq!(
            parse_ttl(&serde_json::json!(1_000_000_000)),
            Ok(Some(Duration::from_secs(1)))
        );
        assert_eq!(
            parse_ttl(&serde_json::json!("2000")),
            Ok(Some(Duration::from_nanos(2000)))
        );
        assert_eq!(parse_ttl(&serde_json::json!(0)), Ok(None));
        assert!(parse_ttl(&serde_json::json!(-1)).is_err());
        assert!(parse_ttl(&serde_json::json!({})).is_err());
    }

    #[test]
    fn json_equality_ignores_key_order() {
        let a = RawValue::from_string(r#"{"a":1,"b":2}"#.into()).unwrap();
        let b = RawValue::from_string(r#"{"b":2, "a":1}"#.into()).unwrap();
        let c = RawValue::from_string(r#"{"b":3,"a":1}"#.into()).unwrap();
        assert!(same_json(&a, &b));
        assert!(!same_json(&a, &c));
    }
}
