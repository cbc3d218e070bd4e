//! The kinds of message Janus sends (its `janus` field), read once and
//! matched as an enum.

use serde_json::Value;

/// What a message from Janus is (its `janus` field): read once, matched
/// as an enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JanusKind {
    /// A request was received; its answer follows as an event.
    Ack,
    /// A request succeeded.
    Success,
    /// A request failed.
    Error,
    /// A plugin event (or the event answering a request).
    Event,
    /// The PeerConnection of a handle is up.
    WebrtcUp,
    /// Media started or stopped flowing.
    Media,
    /// Janus sees packet loss.
    SlowLink,
    /// The PeerConnection of a handle went down.
    Hangup,
    /// The handle is gone.
    Detached,
    /// A candidate Janus gathered.
    Trickle,
    /// The Janus session timed out.
    Timeout,
    /// Anything else (logged, not acted on).
    Other,
}

impl JanusKind {
    /// The kind of a message from Janus.
    pub fn of(v: &Value) -> JanusKind {
        match v["janus"].as_str() {
            Some("ack") => JanusKind::Ack,
            Some("success") => JanusKind::Success,
            Some("error") => JanusKind::Error,
            Some("event") => JanusKind::Event,
            Some("webrtcup") => JanusKind::WebrtcUp,
            Some("media") => JanusKind::Media,
            Some("slowlink") => JanusKind::SlowLink,
            Some("hangup") => JanusKind::Hangup,
            Some("detached") => JanusKind::Detached,
            Some("trickle") => JanusKind::Trickle,
            Some("timeout") => JanusKind::Timeout,
            _ => JanusKind::Other,
        }
    }
}

wire_kind! {
    /// The `videoroom` field of a videoroom plugin event.
    pub enum VideoroomKind {
        /// A handle joined a room.
        Joined = "joined",
        /// The room was destroyed: every handle in it is gone.
        Destroyed = "destroyed",
        /// Something happened in the room (or the answer to a request).
        Event = "event",
        /// A subscriber handle is attached to a feed.
        Attached = "attached",
        /// A subscriber handle was updated.
        Updated = "updated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn janus_kinds_are_read_from_the_janus_field() {
        for (text, kind) in [
            ("ack", JanusKind::Ack),
            ("success", JanusKind::Success),
            ("error", JanusKind::Error),
            ("event", JanusKind::Event),
            ("webrtcup", JanusKind::WebrtcUp),
            ("media", JanusKind::Media),
            ("slowlink", JanusKind::SlowLink),
            ("hangup", JanusKind::Hangup),
            ("detached", JanusKind::Detached),
            ("trickle", JanusKind::Trickle),
            ("timeout", JanusKind::Timeout),
            ("keepalive", JanusKind::Other),
        ] {
            assert_eq!(JanusKind::of(&json!({"janus": text})), kind, "{text}");
        }
        assert_eq!(JanusKind::of(&json!({"janus": 5})), JanusKind::Other);
        assert_eq!(JanusKind::of(&json!({})), JanusKind::Other);
        assert_eq!(
            VideoroomKind::of(&json!("destroyed")),
            VideoroomKind::Destroyed
        );
        assert_eq!(
            VideoroomKind::of(&json!(1)),
            VideoroomKind::Unknown(String::new())
        );
    }
}
