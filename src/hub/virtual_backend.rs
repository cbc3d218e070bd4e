//! Telling Nextcloud about the virtual sessions of internal clients, as the
//! Go server does: with the internal client's actor (`options` with
//! `actorId` and `actorType`) as a `room` request (`join` / `leave`, the
//! actor and the in-call flags), else as a `session` request (`add` /
//! `remove`).
//!
//! An added session joins its room only once Nextcloud agreed; otherwise
//! the internal client gets `add_failed` with its request id. A removed
//! session is gone here at once; when Nextcloud could not be told, the
//! internal client gets `remove_failed` (an actor's `no_such_room` is not
//! an error: the room is gone already).

use std::sync::Arc;

use serde_json::value::RawValue;

use super::effects::Nextcloud;
use super::session::{Actor, Session, SessionKind};
use crate::api::backend::{BackendResponseKind, RoomRequest, SessionRequest};
use crate::api::error::{self, ProtocolError};
use crate::backend::client::BackendClient;

/// What Nextcloud hears of one virtual session.
pub(crate) struct VirtualNc {
    /// Where to.
    pub to: Nextcloud,
    /// The room id.
    pub room: Arc<str>,
    /// The virtual session's id (its Nextcloud session id too).
    pub vsid: Arc<str>,
    /// Its user, if any.
    pub user_id: Option<Arc<str>>,
    /// Its user data, if any.
    pub user: Option<Arc<RawValue>>,
    /// The internal client's actor, if it gave one.
    pub actor: Option<Arc<Actor>>,
    /// In-call flags (sent with an actor's join).
    pub in_call: u32,
}

impl VirtualNc {
    /// The request about virtual session `s` in `room`.
    pub(crate) fn of(s: &Session, room: Arc<str>) -> VirtualNc {
        let actor = match &s.kind {
            SessionKind::Virtual { actor, .. } => actor.clone(),
            _ => None,
        };
        VirtualNc {
            to: Nextcloud {
                url: s.backend_url.clone(),
                base: s.backend_base.clone(),
                secret: s.backend.secret.clone(),
            },
            room,
            vsid: s.id.clone(),
            user_id: s.user_id.clone(),
            user: s.user.clone(),
            actor,
            in_call: s.in_call,
        }
    }

    /// The room request of an actor (`join` or `leave`).
    async fn actor_request(
        &self,
        client: &BackendClient,
        actor: &Actor,
        action: &str,
    ) -> Result<crate::api::backend::BackendResponse, crate::backend::client::BackendCallError>
    {
        let req = RoomRequest {
            version: "1.0",
            roomid: &self.room,
            userid: self.user_id.as_deref().unwrap_or(""),
            sessionid: &self.vsid,
            action,
            actor_id: Some(&actor.id),
            actor_type: Some(&actor.kind),
            in_call: (action == "join").then_some(self.in_call),
        };
        client
            .post(&self.to.url, &self.to.base, &self.to.secret, "room", &req)
            .await
    }

    /// The session request (`add` or `remove`).
    async fn session_request(
        &self,
        client: &BackendClient,
        action: &str,
    ) -> Result<(), crate::backend::client::BackendCallError> {
        let req = SessionRequest {
            version: "1.0",
            roomid: &self.room,
            action,
            sessionid: &self.vsid,
            userid: self.user_id.as_deref(),
            user: self.user.as_deref(),
        };
        client
            .post(
                &self.to.url,
                &self.to.base,
                &self.to.secret,
                "session",
                &req,
            )
            .await
            .map(|_| ())
    }

    /// Asks Nextcloud to add the session; `add_failed` when it did not.
    pub(crate) async fn add(&self, client: &BackendClient) -> Result<(), ProtocolError> {
        let failed = |m: &str| ProtocolError::new(error::ADD_FAILED, m);
        let Some(actor) = &self.actor else {
            return self.session_request(client, "add").await.map_err(|e| {
                tracing::warn!(room = ?self.room, session = %self.vsid, "could not add virtual session: {e}");
                failed("Could not add virtual session.")
            });
        };
        match self.actor_request(client, actor, "join").await {
            Err(e) => {
                tracing::warn!(room = ?self.room, session = %self.vsid, "could not join virtual session: {e}");
                Err(failed("Could not join virtual session."))
            }
            Ok(r) if r.kind == BackendResponseKind::Error => {
                let message = r.error.map(|e| e.message).unwrap_or_default();
                tracing::warn!(room = ?self.room, session = %self.vsid, "Nextcloud refused the virtual session: {message}");
                Err(failed(&message))
            }
            Ok(_) => Ok(()),
        }
    }

    /// Tells Nextcloud that the session is gone; `remove_failed` when that
    /// did not work.
    pub(crate) async fn remove(&self, client: &BackendClient) -> Result<(), ProtocolError> {
        let failed = |m: &str| ProtocolError::new(error::REMOVE_FAILED, m);
        const NOT_TOLD: &str = "Could not remove virtual session from backend.";
        let Some(actor) = &self.actor else {
            return self.session_request(client, "remove").await.map_err(|e| {
                tracing::warn!(room = ?self.room, session = %self.vsid, "could not remove virtual session: {e}");
                failed(NOT_TOLD)
            });
        };
        match self.actor_request(client, actor, "leave").await {
            Err(e) => {
                tracing::warn!(room = ?self.room, session = %self.vsid, "could not leave virtual session: {e}");
                Err(failed(NOT_TOLD))
            }
            Ok(r) if r.kind == BackendResponseKind::Error => match r.error {
                Some(e) if e.code == error::NO_SUCH_ROOM => Ok(()),
                e => {
                    let message = e.map(|e| e.message).unwrap_or_default();
                    tracing::warn!(room = ?self.room, session = %self.vsid, "Nextcloud refused the leave of the virtual session: {message}");
                    Err(failed(&message))
                }
            },
            Ok(_) => Ok(()),
        }
    }
}
