//! The kinds of what another signaling server sends when this server is its
//! client (a federated session's link): frame types, event targets and
//! types, and the fields inside them that the rewriting looks at. Read once
//! from the JSON and matched as enums.

wire_kind! {
    /// The `type` of a frame from a signaling server.
    pub enum ServerKind {
        /// The server's `welcome` on connect.
        Welcome = "welcome",
        /// The answer to `hello`.
        Hello = "hello",
        /// The server ends the session.
        Bye = "bye",
        /// The answer to a room join or leave.
        Room = "room",
        /// An error answer.
        Error = "error",
        /// A message from another session.
        Message = "message",
        /// A control message from another session.
        Control = "control",
        /// Transient data of the room.
        Transient = "transient",
        /// An event (room, roomlist, participants).
        Event = "event",
    }
}

wire_kind! {
    /// The `target` of an `event`.
    pub enum EventTarget {
        /// Members joining and leaving, room messages, switchto.
        Room = "room",
        /// The user's room list (invite, disinvite, update).
        Roomlist = "roomlist",
        /// Participant updates and flags.
        Participants = "participants",
    }
}

wire_kind! {
    /// The `type` of an `event`; also the key of its payload.
    pub enum EventType {
        /// Sessions joined the room.
        Join = "join",
        /// Sessions left the room.
        Leave = "leave",
        /// A room message (chat and others).
        Message = "message",
        /// Participants or a room list entry changed.
        Update = "update",
        /// A session's flags changed.
        Flags = "flags",
        /// A session's state changed.
        Change = "change",
        /// Invited to a room.
        Invite = "invite",
        /// Removed from a room.
        Disinvite = "disinvite",
        /// Members are asked to switch to another room.
        Switchto = "switchto",
    }
}

wire_kind! {
    /// The `action` of a control message's `data`.
    pub enum ControlAction {
        /// Mute the peer named by `peerId`.
        ForceMute = "forceMute",
    }
}

wire_kind! {
    /// An actor's type in Talk's participant lists and chat messages.
    pub enum ActorType {
        /// A user of the cloud that sends the list.
        Users = "users",
        /// A user of another cloud (`id@cloud`).
        FederatedUsers = "federated_users",
    }
}

wire_kind! {
    /// The `type` of a rich object in a chat message's parameters.
    pub enum MentionType {
        /// A mentioned user.
        User = "user",
        /// A mention of the whole conversation.
        Call = "call",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kinds_are_read_from_json_fields() {
        let v = json!({"type": "event", "event": {"target": "roomlist", "type": "disinvite"}});
        assert_eq!(ServerKind::of(&v["type"]), ServerKind::Event);
        assert_eq!(
            EventTarget::of(&v["event"]["target"]),
            EventTarget::Roomlist
        );
        assert_eq!(EventType::of(&v["event"]["type"]), EventType::Disinvite);
        assert_eq!(EventType::Disinvite.as_str(), "disinvite");
        assert_eq!(
            ServerKind::of(&json!(7)),
            ServerKind::Unknown(String::new())
        );
        assert_eq!(
            ServerKind::of(&v["missing"]),
            ServerKind::Unknown(String::new())
        );
        assert_eq!(
            EventType::parse("custom"),
            EventType::Unknown("custom".into())
        );
        assert_eq!(EventType::parse("custom").as_str(), "custom");
        assert_eq!(
            ActorType::parse("federated_users"),
            ActorType::FederatedUsers
        );
        assert_eq!(
            ControlAction::parse("forcemute"),
            ControlAction::Unknown("forcemute".into())
        );
    }
}
