//! `hide-displaynames`: a session with this permission sees no display
//! names of others (as the Go server): join events carry no
//! `user.displayname` for it (a `user` left empty is left out), chat
//! comments are relayed without the actor's name (`chat.rs`).

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::room::RoomKey;
use super::rooms::JoinEntry;
use super::session::Session;
use super::State;
use crate::api::server::{event_frame, Frame};

impl Session {
    /// True when this session must not see other participants' names.
    pub(super) fn hides_names(&self) -> bool {
        self.permissions.is_some() && self.has_permission("hide-displaynames")
    }
}

/// A join entry as a session with `hide-displaynames` sees it.
pub(super) fn hidden(mut e: JoinEntry<'_>) -> JoinEntry<'_> {
    let Some(user) = e.user.take() else {
        return e;
    };
    let mut m = match serde_json::from_str::<Map<String, Value>>(user.get()) {
        Ok(m) if m.contains_key("displayname") => m,
        _ => {
            e.user = Some(user);
            return e;
        }
    };
    m.remove("displayname");
    if !m.is_empty() {
        e.user = serde_json::value::to_raw_value(&m).ok().map(Cow::Owned);
    }
    e
}

impl State {
    /// True when the local session `sid` must not see names.
    pub(super) fn hides_names(&self, sid: &str) -> bool {
        self.sessions.map.get(sid).is_some_and(Session::hides_names)
    }

    /// The `join` event of `sid`: as most see it, and as a session with
    /// `hide-displaynames` sees it.
    pub(super) fn join_frames(&self, sid: &str) -> Option<(Frame, Frame)> {
        let e = self.join_entry(sid)?;
        let plain = event_frame("room", "join", std::slice::from_ref(&e));
        let hidden = event_frame("room", "join", &[hidden(e)]);
        Some((plain, hidden))
    }

    /// Tells the local members of a room but `except` that `sid` joined,
    /// each in the form it may see; returns the frames.
    pub(super) fn broadcast_join(
        &mut self,
        key: &RoomKey,
        sid: &str,
        except: Option<&str>,
    ) -> Option<(Frame, Frame)> {
        let (plain, hidden) = self.join_frames(sid)?;
        let members: Vec<Arc<str>> = self
            .rooms
            .get(key)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for m in members.iter().filter(|m| Some(&***m) != except) {
            let f = if self.hides_names(m) { &hidden } else { &plain };
            self.sessions.deliver(m, f);
        }
        Some((plain, hidden))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn entry(user: Option<&RawValue>) -> JoinEntry<'_> {
        JoinEntry {
            sessionid: "s",
            userid: "u",
            user: user.map(Cow::Borrowed),
            roomsessionid: None,
            features: &[],
            federated: false,
        }
    }

    #[test]
    fn the_display_name_goes_and_an_empty_user_with_it() {
        let both = RawValue::from_string(r#"{"displayname":"Alice","x":1}"#.into()).unwrap();
        let h = hidden(entry(Some(&both)));
        assert_eq!(h.user.unwrap().get(), r#"{"x":1}"#);
        let only = RawValue::from_string(r#"{"displayname":"Alice"}"#.into()).unwrap();
        assert!(hidden(entry(Some(&only))).user.is_none());
        let other = RawValue::from_string(r#"{"x":1}"#.into()).unwrap();
        assert_eq!(
            hidden(entry(Some(&other))).user.unwrap().get(),
            r#"{"x":1}"#
        );
        let not_object = RawValue::from_string("5".into()).unwrap();
        assert_eq!(hidden(entry(Some(&not_object))).user.unwrap().get(), "5");
    }
}
