//! `hide-displaynames`: a session with this permission sees no display
//! names of others (as the Go server): join events carry no
//! `user.displayname` for it (a `user` left empty is left out), chat
//! comments are relayed without the actor's name (`chat.rs`), and a
//! `message` whose `data.type` is `nickChanged` (a guest's new name) is
//! not delivered to it at all ([`drops_for_hidden`], checked for every
//! delivery in `Sessions::deliver`, whatever path the message took:
//! session, user, room, call, another process, a federated link).

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

/// True for a frame a session with `hide-displaynames` must not get: a
/// `message` whose `data` (an object, or a string holding one) has the
/// `type` `nickChanged` (as the Go server, `filterMessage`). Frames that
/// can spell neither the word nor an escape of it are passed unparsed.
pub(super) fn drops_for_hidden(f: &Frame) -> bool {
    // Under the hub lock, for each such recipient: SIMD search, not a
    // window per byte (a 64 KiB frame to a room of such guests).
    let b = f.as_bytes();
    let has = |needle: &[u8]| memchr::memmem::find(b, needle).is_some();
    if !has(b"nickChanged") && !has(b"\\u") {
        return false;
    }
    let Ok(v) = serde_json::from_slice::<Value>(b) else {
        return false;
    };
    if v["type"] != "message" {
        return false;
    }
    let data = &v["message"]["data"];
    let nick = |d: &Value| d["type"] == "nickChanged";
    match data {
        Value::String(s) => serde_json::from_str::<Value>(s).is_ok_and(|d| nick(&d)),
        d => nick(d),
    }
}

impl State {
    /// True when the local session `sid` must not see names.
    pub(super) fn hides_names(&self, sid: &str) -> bool {
        self.sessions.map.get(sid).is_some_and(|s| s.hides_names())
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
    fn nick_changes_are_recognised_in_any_spelling_of_the_json() {
        let drops = |s: &str| drops_for_hidden(&Frame::from(s.to_string()));
        assert!(drops(
            r#"{"type":"message","message":{"sender":{},"data":{"type":"nickChanged","name":"N"}}}"#
        ));
        assert!(drops(
            r#"{"type":"message","message":{"data":{"type":"nick\u0043hanged"}}}"#
        ));
        assert!(drops(
            r#"{"type":"message","message":{"data":"{\"type\":\"nickChanged\"}"}}"#
        ));
        assert!(drops(
            r#"{"type":"message","message":{"data":{"type":"x","type":"nickChanged"}}}"#
        ));
        assert!(!drops(
            r#"{"type":"message","message":{"data":{"type":"offer","x":"nickChanged"}}}"#
        ));
        assert!(!drops(
            r#"{"type":"control","control":{"data":{"type":"nickChanged"}}}"#
        ));
        assert!(!drops(
            r#"{"type":"message","message":{"data":"nickChanged"}}"#
        ));
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
