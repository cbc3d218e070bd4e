//! What a mutation of the state decides but must not do under the hub
//! lock: requests to Nextcloud. A mutation records an [`Effect`] on the
//! state; the lock's guard ([`super::StateGuard`]) carries the effects out
//! once the lock is released.
//!
//! Not yet here (issue 12): bus publishes and MCU commands, which do not
//! block but still happen under the lock.

use std::sync::Arc;

use super::virtual_backend::VirtualNc;
use crate::api::backend::RoomRequest;
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
        /// (actor type, actor id) of a federated session, as its join
        /// carried them (the Go server sends them with the leave too).
        actor: Option<(String, String)>,
    },
    /// A virtual session left its room: `session` `remove`, or the
    /// actor's `room` `leave`.
    VirtualRemoved(VirtualNc),
}

impl Effect {
    /// Sends the request in the background (tracked: shutdown waits for
    /// it); a failure is logged.
    pub(crate) fn run(self, client: &BackendClient) {
        match self {
            Effect::Left {
                to,
                room,
                user_id,
                room_session_id,
                actor,
            } => {
                let c = client.clone();
                client.spawn(async move {
                    let req = RoomRequest {
                        version: "1.0",
                        roomid: &room,
                        userid: user_id.as_deref().unwrap_or(""),
                        sessionid: &room_session_id,
                        action: "leave",
                        actor_id: actor.as_ref().map(|a| a.1.as_str()),
                        actor_type: actor.as_ref().map(|a| a.0.as_str()),
                        in_call: None,
                    };
                    if let Err(e) = c.post(&to.url, &to.base, &to.secret, "room", &req).await {
                        tracing::warn!(room = ?room, "could not tell backend about leave: {e}");
                    }
                });
            }
            Effect::VirtualRemoved(nc) => {
                // Failures are logged (nobody asked for this removal).
                let c = client.clone();
                client.spawn(async move {
                    let _ = nc.remove(&c).await;
                });
            }
        }
    }
}
