//! `dialout`: a backend request handed to an internal client (the SIP
//! bridge) that announced `start-dialout`, on this or another process.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::room::RoomKey;
use super::session::SessionKind;
use super::Hub;
use crate::api::backend::BackendError;
use crate::api::client::{DialoutAnswerKind, DialoutInternal, DialoutStatusKind};
use crate::api::error;
use crate::api::server::frame;

/// How long a dialout request waits for the internal client's answer.
pub const DIALOUT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a rejected or cleared call's `callstatus_<callid>` stays in
/// the room's transient data (the Go server's `removeCallStatusTTL`).
pub const CALL_STATUS_TTL: Duration = Duration::from_secs(5);

/// Why a dialout could not be started (also the answer of another process
/// over the bus).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum DialoutError {
    /// No number given.
    NumberMissing,
    /// The number is not in E.164 format.
    InvalidNumber,
    /// No internal client with `start-dialout` on any process.
    NoClientAvailable,
    /// Every capable internal client failed: the first one's error.
    Failed(BackendError),
}

impl DialoutError {
    /// The `dialout.error` object of the answer to Nextcloud.
    pub fn into_backend_error(self) -> BackendError {
        let (code, message) = match self {
            DialoutError::NumberMissing => (error::NUMBER_MISSING, "No number provided"),
            DialoutError::InvalidNumber => (error::INVALID_NUMBER, "Expected E.164 number."),
            DialoutError::NoClientAvailable => (
                error::NO_CLIENT_AVAILABLE,
                "No available client found to trigger dialout.",
            ),
            DialoutError::Failed(e) => return e,
        };
        backend_error(code, message)
    }
}

fn backend_error(code: &str, message: &str) -> BackendError {
    BackendError {
        code: code.into(),
        message: message.into(),
        details: None,
    }
}

/// What an internal client's dialout message tells the call's room.
enum CallNews {
    /// Set `callstatus_<callid>` to the status (with a TTL when the call
    /// ended).
    Status {
        key: RoomKey,
        name: String,
        value: Box<serde_json::value::RawValue>,
        ttl: Option<Duration>,
    },
    /// Send the message (an error or another type) to the room's sessions.
    Message {
        key: RoomKey,
        frame: crate::api::server::Frame,
    },
}

impl Hub {
    /// Starts a dialout through an internal client of this or another
    /// process; the call id on success.
    pub(crate) async fn dialout(
        self: &Arc<Self>,
        key: &RoomKey,
        backend_url: &str,
        d: &crate::api::backend::Dialout,
    ) -> Result<String, DialoutError> {
        // E.164 as the Go server checks it: `+` and at least two digits.
        let valid_number = d.number.len() > 2
            && d.number.starts_with('+')
            && d.number[1..].bytes().all(|b| b.is_ascii_digit());
        if d.number.is_empty() {
            return Err(DialoutError::NumberMissing);
        }
        if !valid_number {
            return Err(DialoutError::InvalidNumber);
        }
        if let Some(reply) = self.dialout_local(key, backend_url, d).await {
            return reply;
        }
        // No capable internal client here: maybe on another process.
        let bus = self.lock().bus.clone();
        if bus.clustered() {
            let h = crate::bus::Header::Dialout {
                from: bus.pid().to_string(),
                backend: key.backend.to_string(),
                room: key.room.to_string(),
                url: backend_url.to_string(),
            };
            let body = serde_json::to_vec(&json!({"number": &d.number, "options": &d.options}))
                .unwrap_or_default();
            let replies = bus
                .request(
                    crate::bus::SUBJECT_ALL.to_string(),
                    crate::bus::encode(&h, Some(&body)),
                    1,
                    DIALOUT_TIMEOUT + Duration::from_secs(2),
                )
                .await;
            if let Some(r) = replies
                .first()
                .and_then(|r| serde_json::from_slice::<Result<String, DialoutError>>(r).ok())
            {
                return r;
            }
        }
        Err(DialoutError::NoClientAvailable)
    }

    /// Starts a dialout through an internal client of this process; `None`
    /// when there is none that supports dialout.
    pub(crate) async fn dialout_local(
        self: &Arc<Self>,
        key: &RoomKey,
        backend_url: &str,
        d: &crate::api::backend::Dialout,
    ) -> Option<Result<String, DialoutError>> {
        let candidates: Vec<Arc<str>> = {
            let st = self.lock();
            st.sessions
                .map
                .values()
                .filter(|s| {
                    s.kind == SessionKind::Internal
                        && s.backend.id == key.backend
                        && s.has_feature("start-dialout")
                })
                .filter(|s| s.conn.is_some())
                .map(|s| s.id.clone())
                .collect()
        };
        let mut first_error: Option<BackendError> = None;
        for sid in candidates {
            let id = crate::backend::checksum::new_random();
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.dialouts
                .lock()
                .expect("dialout lock")
                .insert(id.clone(), (sid.clone(), tx));
            let msg = json!({
                "type": "dialout",
                "dialout": {
                    "roomid": &*key.room,
                    "backend": backend_url,
                    "request": {"number": &d.number, "options": &d.options},
                }
            });
            // As every frame to a session: a full send queue closes the
            // bridge's connection (1013) and the request waits in its
            // resume queue, to be answered after the resume.
            self.lock()
                .sessions
                .deliver(&sid, &frame(Some(&id), "internal", &msg));
            let answer = tokio::time::timeout(DIALOUT_TIMEOUT, rx).await;
            self.dialouts.lock().expect("dialout lock").remove(&id);
            let err = match answer {
                Ok(Ok(a)) => match a.kind {
                    DialoutAnswerKind::Status => match a.status {
                        Some(s) if s.status == DialoutStatusKind::Accepted => {
                            return Some(Ok(s.callid))
                        }
                        _ => backend_error(
                            error::UNSUPPORTED_STATUS,
                            "Unsupported dialout status received.",
                        ),
                    },
                    DialoutAnswerKind::Error => a
                        .error
                        .and_then(|e| serde_json::from_str::<BackendError>(e.get()).ok())
                        .unwrap_or_else(|| {
                            backend_error(error::DIALOUT_FAILED, "The dialout failed.")
                        }),
                    DialoutAnswerKind::Unknown(_) => backend_error(
                        error::UNSUPPORTED_TYPE,
                        "Unsupported dialout type received.",
                    ),
                },
                Ok(Err(_)) => backend_error(error::ERROR_NOTIFY, "No dialout response received."),
                Err(_) => backend_error(
                    error::TIMEOUT,
                    "Timeout while waiting for dialout to start.",
                ),
            };
            tracing::warn!(session = %sid, backend = %key.backend, code = ?err.code, "dialout failed");
            first_error.get_or_insert(err);
        }
        first_error.map(|e| Err(DialoutError::Failed(e)))
    }

    /// An internal client's `dialout` message: the answer to a pending
    /// request (by its id) and, with a `roomid`, news for the room, as the
    /// Go server gives it: a status is set as the room's transient
    /// `callstatus_<callid>` (removed 5 s after `rejected`/`cleared`); an
    /// error (unless it answered a request: Nextcloud has it) or another
    /// type is sent to the room's sessions as a `dialout` message.
    pub(crate) fn dialout_message(&self, sid: &Arc<str>, id: Option<&str>, d: DialoutInternal) {
        let missing = match (&d.kind, &d.status, &d.error) {
            (DialoutAnswerKind::Unknown(t), _, _) if t.is_empty() => Some("type missing"),
            (DialoutAnswerKind::Status, None, _) => Some("status missing"),
            (DialoutAnswerKind::Error, _, None) => Some("error missing"),
            _ => None,
        };
        if let Some(missing) = missing {
            return self.reply_error(sid, id, super::invalid_format(missing));
        }
        let room = d.roomid.as_deref().filter(|r| !r.is_empty());
        let news = room.and_then(|room| self.dialout_news(sid, room, &d));
        let is_error = d.error.is_some();
        let answered = id.is_some_and(|id| self.dialout_answer(sid, id, d));
        if answered && is_error {
            // Nextcloud has the error; the room hears nothing (as in Go).
            return;
        }
        match news {
            Some(CallNews::Status {
                key,
                name,
                value,
                ttl,
            }) => {
                let result = self.mutate(|st| {
                    st.change_transient(&key, name, Some(value), ttl, Some((sid, id)))
                });
                match result {
                    Ok(true) => self.timer.notify_one(),
                    Ok(false) => {}
                    // A full room: the bridge hears why.
                    Err(e) => self.reply_error(sid, id, e),
                }
            }
            Some(CallNews::Message { key, frame }) => self.mutate(|st| {
                st.broadcast(&key, &frame, None);
                // The internal client's process may have no member of the
                // room: it does not know who else has.
                st.publish_room_frame_to_all(&key, &frame, None, false);
            }),
            None => {}
        }
    }

    /// What a dialout message tells its room, if anything.
    fn dialout_news(&self, sid: &Arc<str>, room: &str, d: &DialoutInternal) -> Option<CallNews> {
        let backend = self.lock().sessions.map.get(sid)?.backend.id.clone();
        let key = RoomKey {
            backend,
            room: room.into(),
        };
        match d.kind {
            DialoutAnswerKind::Status => {
                let status = d.status.as_ref()?;
                let value = serde_json::value::to_raw_value(status).ok()?;
                let ttl = matches!(
                    status.status,
                    DialoutStatusKind::Rejected | DialoutStatusKind::Cleared
                )
                .then_some(CALL_STATUS_TTL);
                let name = format!("callstatus_{}", status.callid);
                Some(CallNews::Status {
                    key,
                    name,
                    value,
                    ttl,
                })
            }
            DialoutAnswerKind::Error | DialoutAnswerKind::Unknown(_) => {
                // As the internal client sent it, without the room id.
                let mut body = serde_json::Map::new();
                body.insert("type".into(), json!(d.kind.as_str()));
                if let Some(e) = &d.error {
                    body.insert("error".into(), json!(e));
                }
                if let Some(s) = &d.status {
                    body.insert("status".into(), json!(s));
                }
                let frame = frame(None, "dialout", &body);
                Some(CallNews::Message { key, frame })
            }
        }
    }

    /// An internal client answered a dialout request; false when no
    /// request of this client has that id.
    fn dialout_answer(&self, sid: &Arc<str>, id: &str, answer: DialoutInternal) -> bool {
        let mut pending = self.dialouts.lock().expect("dialout lock");
        let matches = pending.get(id).is_some_and(|(owner, _)| owner == sid);
        if matches {
            if let Some((_, tx)) = pending.remove(id) {
                let _ = tx.send(answer);
            }
        }
        matches
    }
}
