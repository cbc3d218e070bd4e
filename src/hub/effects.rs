//! What a mutation of the state decides but must not do under the hub
//! lock: requests to Nextcloud. A mutation records an [`Effect`] on the
//! state; the lock's guard ([`super::StateGuard`]) carries the effects out
//! once the lock is released.
//!
//! Not yet here (issue 12): bus publishes and MCU commands, which do not
//! block but still happen under the lock.

use std::sync::Arc;

use crate::api::backend::{RoomRequest, SessionRequest};
use crate::backend::client::BackendClient;

/// The Nextcloud a request goes to: signaling endpoint, base URL, secret
/// (no `Debug`: the secret must not end up in a log).
#[derive(Clone)]
pub(crate) struct Nextcloud {
    /// URL of the backend's signaling endpoint.
    pub url: Arc<str>,
    /// The backend's base URL.
    pub base: Arc<str>,
    /// The backend's secret (for the checksum).
    pub secret: Vec<u8>,
}

/// A request to Nextcloud decided under the lock, sent after it.
pub(crate) enum Effect {
    /// A session left its room: `room` request, action `leave`.
    Left {
        /// Where to.
        to: Nextcloud,
        /// The room id.
        room: Arc<str>,
        /// The session's user, none for guests.
        user_id: Option<Arc<str>>,
        /// The session's Nextcloud session id.
        room_session_id: Arc<str>,
    },
    /// A virtual session left its room: `session` request, action `remove`.
    VirtualRemoved {
        /// Where to.
        to: Nextcloud,
        /// The room id.
        room: Arc<str>,
        /// The virtual session's id.
        sid: Arc<str>,
        /// Its user, if any.
        user_id: Option<Arc<str>>,
    },
}

impl Effect {
    /// Sends the request in the background; a failure is logged.
    pub(crate) fn run(self, client: &BackendClient) {
        let client = client.clone();
        match self {
            Effect::Left {
                to,
                room,
                user_id,
                room_session_id,
            } => {
                tokio::spawn(async move {
                    let req = RoomRequest {
                        version: "1.0",
                        roomid: &room,
                        userid: user_id.as_deref().unwrap_or(""),
                        sessionid: &room_session_id,
                        action: "leave",
                        actor_id: None,
                        actor_type: None,
                        in_call: None,
                    };
                    if let Err(e) = client
                        .post(&to.url, &to.base, &to.secret, "room", &req)
                        .await
                    {
                        tracing::warn!(room = ?room, "could not tell backend about leave: {e}");
                    }
                });
            }
            Effect::VirtualRemoved {
                to,
                room,
                sid,
                user_id,
            } => {
                tokio::spawn(async move {
                    let req = SessionRequest {
                        version: "1.0",
                        roomid: &room,
                        action: "remove",
                        sessionid: &sid,
                        userid: user_id.as_deref(),
                        user: None,
                    };
                    if let Err(e) = client
                        .post(&to.url, &to.base, &to.secret, "session", &req)
                        .await
                    {
                        tracing::warn!(room = ?room, "could not tell backend about removed virtual session: {e}");
                    }
                });
            }
        }
    }
}
