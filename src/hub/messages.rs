//! `message` and `control`: delivery to a session, all sessions of a user,
//! or the sender's room. `data` is forwarded byte-for-byte and the frame is
//! built once for all recipients.

use std::sync::Arc;

use super::cluster::RemoteRoute;
use super::outbox::Outbox;
use super::room::RoomKey;
use super::session::SessionKind;
use super::{invalid_format, Hub, State};
use crate::api::client::{ClientKind, MessageClientMessage, RecipientKind, RoomType, SignalType};
use crate::api::error::{self, ProtocolError};
use crate::api::server::{Frame, MessageOut, RecipientOut, Sender};

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
    if peek.kind.as_deref().map(SignalType::parse) != Some(SignalType::Offer) {
        return true;
    }
    if peek.room_type.as_deref().map(RoomType::parse) == Some(RoomType::Screen) {
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
        kind: &ClientKind,
        msg: MessageClientMessage<'_>,
    ) -> Vec<Arc<Outbox>> {
        let (result, congested) =
            self.mutate(|st| st.collecting_congestion(|st| route(st, sid, id, kind, &msg)));
        if let Err(e) = result {
            self.reply_error(sid, id, e);
        }
        congested
    }
}

/// A `message` or `control` on its way: who sent it, and the frame the
/// recipients get (built by [`Outgoing::frame`], once per recipient form).
struct Outgoing<'a> {
    sid: &'a Arc<str>,
    id: Option<&'a str>,
    kind: &'a ClientKind,
    msg: &'a MessageClientMessage<'a>,
    user: Option<Arc<str>>,
    backend: Arc<str>,
}

impl Outgoing<'_> {
    fn frame(&self, recipient: Option<RecipientOut>) -> Frame {
        MessageOut {
            sender: Sender {
                kind: self.msg.recipient.kind.as_str(),
                sessionid: self.sid,
                userid: self.user.as_deref(),
            },
            recipient,
            data: self.msg.data,
        }
        .to_frame(self.kind.as_str())
    }
}

/// Delivers one `message` or `control` under the hub lock, by recipient
/// type; an error is replied to the sender by the caller.
fn route(
    st: &mut State,
    sid: &Arc<str>,
    id: Option<&str>,
    kind: &ClientKind,
    msg: &MessageClientMessage<'_>,
) -> Result<(), ProtocolError> {
    let Some(sender) = st.sessions.map.get(sid) else {
        return Ok(());
    };
    if msg.data.get() == "null" {
        // As the Go server: `null` is no data.
        return Err(invalid_format("data missing"));
    }
    if *kind == ClientKind::Control && !sender.has_permission("control") {
        return Err(ProtocolError::new(
            error::NOT_ALLOWED,
            "Not allowed to send control messages.",
        ));
    }
    if *kind == ClientKind::Message
        && sender.permissions.is_some()
        && !may_send_offer(sender, msg.data)
    {
        return Err(ProtocolError::new(
            error::NOT_ALLOWED,
            "Not allowed to publish.",
        ));
    }
    let sender_room = sender.room.clone();
    let out = Outgoing {
        sid,
        id,
        kind,
        msg,
        user: sender.user_id.clone(),
        backend: sender.backend.id.clone(),
    };
    match &msg.recipient.kind {
        RecipientKind::Session => to_session(st, &out),
        RecipientKind::User => to_user(st, &out),
        RecipientKind::Room => to_room(st, &out, sender_room, false),
        // `call` (`recipient-call`): only the members in the call.
        RecipientKind::Call => to_room(st, &out, sender_room, true),
        RecipientKind::Unknown(other) => Err(invalid_format(format!(
            "unsupported recipient type `{other}`"
        ))),
    }
}

/// Recipient `session`: a local session (a virtual one's internal client),
/// or one on another process.
fn to_session(st: &mut State, out: &Outgoing) -> Result<(), ProtocolError> {
    let sid = out.sid;
    let Some(target) = out
        .msg
        .recipient
        .sessionid
        .as_deref()
        .filter(|s| !s.is_empty())
    else {
        return Err(invalid_format("recipient sessionid missing"));
    };
    if target == &**sid {
        // Don't loop messages back to the sender.
        return Ok(());
    }
    let Some(t) = st.sessions.map.get(target) else {
        return to_remote_session(st, out, target);
    };
    if t.backend.id != out.backend {
        // Sessions of other backends are unreachable (as for a session
        // that does not exist: nothing is answered, as by the Go server).
        return Ok(());
    }
    match &t.kind {
        SessionKind::Virtual {
            owner, client_sid, ..
        } => {
            // Messages for a virtual session go to its internal client.
            let f = out.frame(Some(RecipientOut {
                kind: "session",
                sessionid: client_sid,
            }));
            let owner = owner.clone();
            st.sessions.deliver(&owner, &f);
        }
        _ => st.sessions.deliver_owned(target, out.frame(None)),
    }
    Ok(())
}

/// The sender and backend a session's owner on another process checks
/// the message against.
fn route_of<'a>(out: &'a Outgoing) -> RemoteRoute<'a> {
    RemoteRoute {
        backend: &out.backend,
        sender: out.sid,
        id: out.id,
    }
}

/// Recipient `session` not connected here: a member of a local room on
/// another process, or a session its owner process must look up.
fn to_remote_session(st: &mut State, out: &Outgoing, target: &str) -> Result<(), ProtocolError> {
    if let Some((info, room)) = st
        .cluster
        .remote
        .get(target)
        .map(|r| (r.info.clone(), r.room.clone()))
    {
        if room.backend != out.backend {
            // Sessions of other backends are unreachable.
            return Ok(());
        }
        if let (Some(owner), Some(client_sid)) = (&info.virtual_owner, &info.client_sid) {
            let f = out.frame(Some(RecipientOut {
                kind: "session",
                sessionid: client_sid,
            }));
            if st.sessions.map.contains_key(owner.as_str()) {
                st.sessions.deliver(owner, &f);
            } else if st.bus.clustered() {
                // Its internal client is on the virtual session's process
                // (they move together), which need not be the one that
                // created it.
                st.send_session_frame(&info.owner, owner, &f, None);
            }
        } else {
            // With a route: its process delivers only to a session of the
            // sender's backend.
            st.send_to_remote_session(target, &out.frame(None), Some(&route_of(out)));
        }
        return Ok(());
    }
    // A session that does not exist (anymore): the message is not
    // delivered, and nothing is answered, as by the Go server (messages
    // reach only sessions that are connected).
    st.send_to_remote_session(target, &out.frame(None), Some(&route_of(out)));
    Ok(())
}

/// Recipient `user`: every session of the user on the sender's backend,
/// here and on other processes, but the sender.
fn to_user(st: &mut State, out: &Outgoing) -> Result<(), ProtocolError> {
    let Some(user) = out
        .msg
        .recipient
        .userid
        .as_deref()
        .filter(|s| !s.is_empty())
    else {
        return Err(invalid_format("recipient userid missing"));
    };
    let f = out.frame(None);
    st.send_to_user(&out.backend, user, &f, Some(out.sid));
    st.publish_user_frame(&out.backend, user, &f, Some(out.sid));
    Ok(())
}

/// Recipient `room` (or `call`: only the members in the call): the other
/// members of the sender's room, here and on other processes.
fn to_room(
    st: &mut State,
    out: &Outgoing,
    room: Option<RoomKey>,
    call_only: bool,
) -> Result<(), ProtocolError> {
    let Some(key) = room else {
        return Err(ProtocolError::new(
            error::NOT_IN_ROOM,
            "No room joined yet.",
        ));
    };
    let f = out.frame(None);
    if call_only {
        st.broadcast_call(&key, &f, Some(out.sid));
    } else {
        st.broadcast(&key, &f, Some(out.sid));
    }
    st.publish_room_frame(&key, &f, Some(out.sid), call_only);
    Ok(())
}
