//! `message` and `control`: delivery to a session, all sessions of a user,
//! or the sender's room. `data` is forwarded byte-for-byte and the frame is
//! built once for all recipients.

use std::sync::Arc;

use super::cluster::RemoteRoute;
use super::outbox::Outbox;
use super::session::SessionKind;
use super::{invalid_format, Hub, State};
use crate::api::client::MessageClientMessage;
use crate::api::error::{self, ProtocolError};
use crate::api::server::{frame, MessageOut, RecipientOut, Sender};

/// The two fields of a message's `data` that decide whether it publishes
/// media; everything else stays unparsed.
#[derive(serde::Deserialize)]
struct OfferPeek<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(rename = "roomType", borrow, default)]
    room_type: Option<std::borrow::Cow<'a, str>>,
}

/// `audio-video-permissions`: an `offer` publishes media (or the screen for
/// `roomType: screen`) and needs the matching permission once Nextcloud
/// has sent a permission list.
fn may_send_offer(sender: &super::session::Session, data: &serde_json::value::RawValue) -> bool {
    let Ok(peek) = serde_json::from_str::<OfferPeek>(data.get()) else {
        return true;
    };
    if peek.kind.as_deref() != Some("offer") {
        return true;
    }
    if peek.room_type.as_deref() == Some("screen") {
        sender.has_permission("publish-screen")
    } else {
        sender.has_permission("publish-media")
            || sender.has_permission("publish-audio")
            || sender.has_permission("publish-video")
    }
}

impl Hub {
    /// Routes a `message` or `control` (`kind`) from `sid`. Returns the
    /// recipients' outboxes it left congested (the caller stops reading the
    /// sender until they drained).
    pub(crate) fn route_message(
        &self,
        sid: &Arc<str>,
        id: Option<&str>,
        kind: &str,
        msg: MessageClientMessage,
    ) -> Vec<Arc<Outbox>> {
        let mut st = self.lock();
        let (result, congested) = st.collecting_congestion(|st| route(st, sid, id, kind, &msg));
        st.reap();
        drop(st);
        if let Err(e) = result {
            self.reply_error(sid, id, e);
        }
        congested
    }
}

/// Delivers one `message` or `control` under the hub lock; an error is
/// replied to the sender by the caller.
fn route(
    st: &mut State,
    sid: &Arc<str>,
    id: Option<&str>,
    kind: &str,
    msg: &MessageClientMessage,
) -> Result<(), ProtocolError> {
    let Some(sender) = st.sessions.map.get(sid) else {
        return Ok(());
    };
    if kind == "control" && !sender.has_permission("control") {
        return Err(ProtocolError::new(
            error::NOT_ALLOWED,
            "Not allowed to send control messages.",
        ));
    }
    if kind == "message" && sender.permissions.is_some() && !may_send_offer(sender, &msg.data) {
        return Err(ProtocolError::new(
            error::NOT_ALLOWED,
            "Not allowed to publish.",
        ));
    }
    let sender_user = sender.user_id.clone();
    let backend = sender.backend.id.clone();
    let sender_room = sender.room.clone();
    let out = |recipient: Option<RecipientOut>| {
        frame(
            None,
            kind,
            &MessageOut {
                sender: Sender {
                    kind: &msg.recipient.kind,
                    sessionid: sid,
                    userid: sender_user.as_deref(),
                },
                recipient,
                data: &msg.data,
            },
        )
    };
    let no_such_session = || {
        ProtocolError::new(
            error::NO_SUCH_SESSION,
            "The recipient session does not exist.",
        )
    };
    match msg.recipient.kind.as_str() {
        "session" => {
            let Some(target) = msg.recipient.sessionid.as_deref().filter(|s| !s.is_empty()) else {
                return Err(invalid_format("recipient sessionid missing"));
            };
            if target == &**sid {
                // Don't loop messages back to the sender.
                return Ok(());
            }
            let Some(t) = st.sessions.map.get(target) else {
                // On another process?
                if let Some((info, room)) = st
                    .remote
                    .get(target)
                    .map(|r| (r.info.clone(), r.room.clone()))
                {
                    if room.backend != backend {
                        // Sessions of other backends are unreachable.
                        return Err(no_such_session());
                    }
                    if let (Some(owner), Some(client_sid)) = (&info.virtual_owner, &info.client_sid)
                    {
                        let f = out(Some(RecipientOut {
                            kind: "session",
                            sessionid: client_sid,
                        }));
                        if st.sessions.map.contains_key(owner.as_str()) {
                            st.sessions.deliver(owner, &f);
                        } else {
                            st.send_to_remote_session(owner, &f, None);
                        }
                    } else {
                        st.send_to_remote_session(target, &out(None), None);
                    }
                    return Ok(());
                }
                let route = RemoteRoute {
                    backend: &backend,
                    sender: sid,
                    id,
                };
                if st.send_to_remote_session(target, &out(None), Some(&route)) {
                    return Ok(());
                }
                return Err(no_such_session());
            };
            if t.backend.id != backend {
                // Sessions of other backends are unreachable.
                return Err(no_such_session());
            }
            if t.id == *sid {
                // Don't loop messages back to the sender.
                return Ok(());
            }
            match &t.kind {
                SessionKind::Virtual { owner, client_sid } => {
                    // Messages for a virtual session go to its internal client.
                    let f = out(Some(RecipientOut {
                        kind: "session",
                        sessionid: client_sid,
                    }));
                    let owner = owner.clone();
                    st.sessions.deliver(&owner, &f);
                }
                _ => {
                    let f = out(None);
                    st.sessions.deliver(target, &f);
                }
            }
        }
        "user" => {
            let Some(user) = msg.recipient.userid.as_deref().filter(|s| !s.is_empty()) else {
                return Err(invalid_format("recipient userid missing"));
            };
            let f = out(None);
            st.send_to_user(&backend, user, &f, Some(sid));
            st.publish_user_frame(&backend, user, &f, Some(sid));
        }
        "room" | "call" => {
            let Some(key) = sender_room else {
                return Err(ProtocolError::new(
                    error::NOT_IN_ROOM,
                    "No room joined yet.",
                ));
            };
            let f = out(None);
            // `call` (`recipient-call`): only the members in the call.
            let call_only = msg.recipient.kind == "call";
            if call_only {
                st.broadcast_call(&key, &f, Some(sid));
            } else {
                st.broadcast(&key, &f, Some(sid));
            }
            st.publish_room_frame(&key, &f, Some(sid), call_only);
        }
        other => {
            return Err(invalid_format(format!(
                "unsupported recipient type `{other}`"
            )));
        }
    }
    Ok(())
}
