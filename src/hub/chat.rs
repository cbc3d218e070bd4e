//! Chat messages Nextcloud relays through the backend API (`message` with
//! `data.type` `chat`): clients with `chat-relay` get each comment as an
//! event of its own (without display names for `hide-displaynames`), the
//! others the plain refresh event.

use std::sync::Arc;

use serde_json::{json, Value};

use super::room::RoomKey;
use super::State;
use crate::api::server::{event_frame, Frame};

/// A chat message Nextcloud sent with its comment(s): clients with
/// `chat-relay` get each comment as an event of its own, the others the
/// plain refresh event. Each variant is serialized once.
pub(super) struct ChatFrames {
    plain: Frame,
    comments: Vec<Frame>,
    /// The comments without display names (`hide-displaynames`).
    hidden: Vec<Frame>,
}

impl ChatFrames {
    pub(super) fn new(room_id: &str, data: &serde_json::value::RawValue) -> Option<ChatFrames> {
        let v: Value = serde_json::from_str(data.get()).ok()?;
        if v.get("type").and_then(Value::as_str) != Some("chat") {
            return None;
        }
        let chat = v.get("chat")?.as_object()?;
        let mut comments: Vec<&Value> = Vec::new();
        comments.extend(chat.get("comment").filter(|c| !c.is_null()));
        if let Some(list) = chat.get("comments").and_then(Value::as_array) {
            comments.extend(list.iter().filter(|c| !c.is_null()));
        }
        if comments.is_empty() {
            return None;
        }
        let event = |chat: Value| {
            event_frame(
                "room",
                "message",
                &json!({"roomid": room_id, "data": {"type": "chat", "chat": chat}}),
            )
        };
        let hide = |c: &Value| {
            let mut c = c.clone();
            if let Some(name) = c.get_mut("actorDisplayName").filter(|n| !n.is_null()) {
                *name = json!("");
            }
            c
        };
        Some(ChatFrames {
            plain: event(json!({"refresh": true})),
            comments: comments
                .iter()
                .map(|c| event(json!({"comment": c})))
                .collect(),
            hidden: comments
                .iter()
                .map(|c| event(json!({"comment": hide(c)})))
                .collect(),
        })
    }
}

impl State {
    /// Delivers a chat message to the local members of a room, each in the
    /// form it understands.
    pub(super) fn deliver_chat(&mut self, key: &RoomKey, chat: &ChatFrames) {
        let members: Vec<Arc<str>> = self
            .rooms
            .get(key)
            .map(|r| r.members.clone())
            .unwrap_or_default();
        for m in members {
            let Some(s) = self.sessions.map.get(&m) else {
                continue;
            };
            let frames: &[Frame] = if !s.has_feature("chat-relay") {
                std::slice::from_ref(&chat.plain)
            } else if s.permissions.is_some() && s.has_permission("hide-displaynames") {
                &chat.hidden
            } else {
                &chat.comments
            };
            for f in frames {
                self.sessions.deliver(&m, f);
            }
        }
    }
}
