//! The rewriting of a federated session's messages: session ids, room ids
//! and actors of one server translated into those of the other, both ways
//! (`spec/federation-notes.md`, 2.3 - 2.8).
//!
//! [`Rewrite`] holds only the names it translates, so the fuzz target
//! `federation_rewrite` drives the same code a link runs.

use serde_json::{json, Map, Value};

use super::link::Link;
use crate::api::client::{ClientKind, RecipientKind, SignalType};
use crate::api::remote::{
    ActorType, ControlAction, EventTarget, EventType, MentionType, ServerKind,
};

/// The names a federated session's frames are translated between: ours
/// (the client's server, A) and the remote server's (B).
#[derive(Clone, Copy, Debug)]
pub struct Rewrite<'a> {
    /// The client's session id here (L).
    pub local_sid: &'a str,
    /// The session id B gave us (R); None before B's `hello` answer.
    pub remote_sid: Option<&'a str>,
    /// The room id the client knows, and B's id of that room.
    pub local_room: &'a str,
    pub remote_room: &'a str,
    /// `@host` suffixes of the federated user ids of each cloud.
    pub local_cloud: &'a str,
    pub remote_cloud: &'a str,
    /// The base URL of each Nextcloud (mentions name it as their `server`).
    pub local_base: &'a str,
    pub remote_base: &'a str,
}

impl Link {
    /// This link's names.
    pub(super) fn names(&self) -> Rewrite<'_> {
        Rewrite {
            local_sid: &self.sid,
            remote_sid: self.remote_sid.as_deref(),
            local_room: &self.local_room,
            remote_room: &self.target.remote_room,
            local_cloud: &self.local_cloud,
            remote_cloud: &self.remote_cloud,
            local_base: &self.local_base,
            remote_base: &self.remote_base,
        }
    }

    /// Client -> B rewrites.
    pub(super) fn rewrite_to_remote(&self, v: Value) -> Value {
        self.names().to_remote(v)
    }

    /// B -> client rewrites; None drops the message (B's own hello/welcome).
    pub(super) fn rewrite_from_remote(&mut self, v: Value) -> Option<Value> {
        let mut pending = self.pending.take();
        let out = self.names().from_remote(v, &mut pending);
        self.pending = pending;
        out
    }
}

impl Rewrite<'_> {
    /// Client -> B: the client's own session id in a session recipient and
    /// in its transient `sd:` key become B's id of it.
    pub fn to_remote(&self, mut v: Value) -> Value {
        let Some(remote) = self.remote_sid else {
            return v;
        };
        let me = self.local_sid;
        match ClientKind::of(&v["type"]) {
            ClientKind::Message
                if RecipientKind::of(&v["message"]["recipient"]["type"])
                    == RecipientKind::Session =>
            {
                replace_at(&mut v, &["message", "recipient", "sessionid"], me, remote);
            }
            ClientKind::Transient => {
                replace_at(
                    &mut v,
                    &["transient", "key"],
                    &format!("sd:{me}"),
                    &format!("sd:{remote}"),
                );
            }
            _ => {}
        }
        v
    }

    /// B -> client; None drops the message (B's own hello/welcome). A
    /// `room` or `error` answer without an id, or with the one in
    /// `pending` (the join or leave B had not answered), takes it. Whatever B sends, nothing here
    /// panics: fields are only changed where every step of their path is
    /// an object.
    pub fn from_remote(&self, mut v: Value, pending: &mut Option<String>) -> Option<Value> {
        let remote = self.remote_sid.unwrap_or_default();
        let me = self.local_sid;
        let (theirs, ours) = (self.remote_room, self.local_room);
        let kind = ServerKind::of(&v["type"]);
        match kind {
            ServerKind::Welcome | ServerKind::Hello => return None,
            ServerKind::Room | ServerKind::Error => {
                // The answer to the waiting request carries its id; an
                // answer with another id (an earlier join, a forwarded
                // message) keeps it, and the request keeps waiting.
                if let (Some(id), Some(o)) = (pending.as_deref(), v.as_object_mut()) {
                    if o.get("id").is_none_or(|x| x.as_str() == Some(id)) {
                        o.insert("id".into(), json!(id));
                        *pending = None;
                    }
                }
                let path: &[&str] = if kind == ServerKind::Room {
                    &["room", "roomid"]
                } else {
                    &["error", "details", "room", "roomid"]
                };
                replace_at(&mut v, path, theirs, ours);
            }
            ServerKind::Message | ServerKind::Control => {
                if let Some(body) = at(&mut v, &[kind.as_str()]) {
                    message_from_remote(body, kind == ServerKind::Message, remote, me);
                }
            }
            ServerKind::Transient => {
                replace_at(
                    &mut v,
                    &["transient", "key"],
                    &format!("sd:{remote}"),
                    &format!("sd:{me}"),
                );
            }
            ServerKind::Event => {
                if let Some(ev) = at(&mut v, &["event"]) {
                    self.event_from_remote(ev, remote, me);
                }
            }
            _ => {}
        }
        Some(v)
    }
    fn event_from_remote(&self, ev: &mut Value, remote: &str, me: &str) {
        let target = EventTarget::of(&ev["target"]);
        let kind = EventType::of(&ev["type"]);
        let (theirs, ours) = (self.remote_room, self.local_room);
        match (target, kind) {
            (EventTarget::Room, EventType::Join) => {
                if let Some(list) = at(ev, &["join"]).and_then(Value::as_array_mut) {
                    if let Some(e) = list.iter_mut().find(|e| e["sessionid"] == remote) {
                        replace_at(e, &["sessionid"], remote, me);
                    }
                }
            }
            (EventTarget::Room, EventType::Leave) => {
                if let Some(list) = at(ev, &["leave"]).and_then(Value::as_array_mut) {
                    for e in list.iter_mut().filter(|e| e.as_str() == Some(remote)) {
                        *e = json!(me);
                    }
                }
            }
            (EventTarget::Room, EventType::Message) => {
                replace_at(ev, &["message", "roomid"], theirs, ours);
                if let Some(chat) = at(ev, &["message", "data", "chat"]) {
                    if let Some(c) = at(chat, &["comment"]) {
                        self.chat_rewrite(c);
                    }
                    if let Some(list) = at(chat, &["comments"]).and_then(Value::as_array_mut) {
                        for c in list {
                            self.chat_rewrite(c);
                        }
                    }
                }
            }
            (EventTarget::Participants, EventType::Update) => {
                replace_at(ev, &["update", "roomid"], theirs, ours);
                for list in ["changed", "users"] {
                    let Some(entries) = at(ev, &["update", list]).and_then(Value::as_array_mut)
                    else {
                        continue;
                    };
                    let mut swapped = false;
                    for e in entries {
                        self.actor_rewrite(e, "actorId", "actorType");
                        for key in ["sessionId", "sessionid"] {
                            if !swapped && e[key] == remote {
                                replace_at(e, &[key], remote, me);
                                swapped = true;
                            }
                        }
                    }
                }
            }
            (EventTarget::Participants, EventType::Flags) => {
                replace_at(ev, &["flags", "roomid"], theirs, ours);
                replace_at(ev, &["flags", "sessionid"], remote, me);
            }
            (EventTarget::Roomlist, k) => replace_at(ev, &[k.as_str(), "roomid"], theirs, ours),
            _ => {}
        }
    }

    /// Actor of B's view -> the client's view: B's users become federated
    /// users of B's cloud, federated users of our cloud become our users.
    fn actor_rewrite(&self, e: &mut Value, id_key: &str, type_key: &str) {
        let Some(id) = e[id_key].as_str() else {
            return;
        };
        let (kind, id) = match ActorType::of(&e[type_key]) {
            ActorType::Users => (
                ActorType::FederatedUsers,
                format!("{id}{}", self.remote_cloud),
            ),
            ActorType::FederatedUsers => match id.strip_suffix(self.local_cloud) {
                Some(local) => (ActorType::Users, local.to_string()),
                None => return,
            },
            ActorType::Unknown(_) => return,
        };
        e[type_key] = json!(kind.as_str());
        e[id_key] = json!(id);
    }

    fn chat_rewrite(&self, c: &mut Value) {
        if !c.is_object() {
            return;
        }
        self.actor_rewrite(c, "actorId", "actorType");
        self.actor_rewrite(c, "lastEditActorId", "lastEditActorType");
        if c["token"] == self.remote_room {
            c["token"] = json!(self.local_room);
        }
        if let Some(params) = at(c, &["messageParameters"]).and_then(Value::as_object_mut) {
            for (k, p) in params.iter_mut() {
                if !k.starts_with("mention-") {
                    continue;
                }
                match MentionType::of(&p["type"]) {
                    MentionType::User => {
                        if p["server"] == self.local_base {
                            if let Some(o) = p.as_object_mut() {
                                o.remove("server");
                            }
                        } else if p.get("mention-id").is_none() {
                            p["mention-id"] = p["id"].clone();
                            p["server"] = json!(self.remote_base);
                        }
                    }
                    MentionType::Call if p["id"] == self.remote_room => {
                        p["id"] = json!(self.local_room);
                    }
                    _ => {}
                }
            }
        }
        if c["parent"].is_object() {
            let mut parent = c["parent"].take();
            self.chat_rewrite(&mut parent);
            c["parent"] = parent;
        }
    }
}

/// The value at `path`, when every step is an object that has the key.
fn at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(*k))
}

/// Replaces the string at `path` by `to` when it is `from`.
fn replace_at(v: &mut Value, path: &[&str], from: &str, to: &str) {
    if let Some(x) = at(v, path) {
        if x.as_str() == Some(from) {
            *x = json!(to);
        }
    }
}

/// A `message` or `control` body from B: B's id of the session becomes
/// ours; the SDP of an offer or answer keeps only the fields a client
/// needs.
fn message_from_remote(body: &mut Value, is_message: bool, remote: &str, me: &str) {
    replace_at(body, &["sender", "sessionid"], remote, me);
    if RecipientKind::of(&body["recipient"]["type"]) == RecipientKind::Session {
        replace_at(body, &["recipient", "sessionid"], remote, me);
    }
    let Some(data) = at(body, &["data"]) else {
        return;
    };
    let sdp = matches!(
        SignalType::of(&data["type"]),
        SignalType::Offer | SignalType::Answer
    );
    if is_message && sdp {
        replace_at(data, &["from"], remote, me);
        replace_at(data, &["to"], remote, me);
        let mut kept = Map::new();
        for k in ["to", "from", "type", "roomType", "payload", "sid"] {
            if let Some(x) = data.get(k) {
                kept.insert(k.to_string(), x.clone());
            }
        }
        *data = Value::Object(kept);
    } else if !is_message && ControlAction::of(&data["action"]) == ControlAction::ForceMute {
        replace_at(data, &["peerId"], remote, me);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Target;
    use super::*;

    fn link() -> Link {
        let hub = crate::hub::tests::hub_on(std::sync::Arc::new(crate::bus::LocalBus::new()));
        Link {
            link_id: 1,
            live: super::super::LiveLink::new(&hub.fed_links),
            gone: Default::default(),
            kept: Default::default(),
            share: Default::default(),
            back: Default::default(),
            _handed: tokio_util::sync::CancellationToken::new().drop_guard(),
            queued: Default::default(),
            joined: Default::default(),
            timeout: std::time::Duration::from_secs(1),
            hub,
            sid: "L".into(),
            target: Target {
                ws_url: "wss://b.example/spreed".into(),
                signaling: "https://b.example".into(),
                url: "https://b.example/ocs".into(),
                remote_room: "rroom".into(),
                token: "t".into(),
            },
            features: Vec::new(),
            local_room: "lroom".into(),
            nc_session: "nc".into(),
            pending: None,
            remote_sid: Some("R".into()),
            resume_id: None,
            leaving: false,
            rejoin: false,
            local_cloud: "@a.example".into(),
            remote_cloud: "@b.example".into(),
            local_base: "https://a.example".into(),
            remote_base: "https://b.example".into(),
            queue: Vec::new(),
            farewell: false,
            queue_bytes: 0,
        }
    }

    #[tokio::test]
    async fn frames_of_any_shape_from_the_remote_server_pass_without_panic() {
        let mut l = link();
        for v in [
            json!({"type": "message", "message": "x"}),
            json!({"type": "control", "control": {"sender": "s", "recipient": 1, "data": 5}}),
            json!({"type": "message", "message": {"sender": {"sessionid": 5}, "data": {"type": "offer", "from": []}}}),
            json!({"type": "error", "error": "e"}),
            json!({"type": "room", "room": 7}),
            json!({"type": "transient", "transient": [1]}),
            json!({"type": "event", "event": "e"}),
            json!({"type": "event", "event": {"target": "roomlist", "type": "invite", "invite": "s"}}),
            json!({"type": "event", "event": {"target": "room", "type": "join", "join": [1, "R", {"sessionid": 2}]}}),
            json!({"type": "event", "event": {"target": "room", "type": "message", "message": {"roomid": [], "data": {"chat": {"comment": "c", "comments": [1, "x", {"parent": 3}]}}}}}),
            json!({"type": "event", "event": {"target": "room", "type": "message", "message": {"data": "d"}}}),
            json!({"type": "event", "event": {"target": "participants", "type": "update", "update": {"changed": [1, "x"], "users": "u"}}}),
            json!({"type": "event", "event": {"target": "participants", "type": "flags", "flags": 1}}),
            json!([1, 2]),
            json!("text"),
        ] {
            let out = l.rewrite_from_remote(v.clone());
            assert_eq!(out, Some(v), "nothing to rewrite, nothing added");
        }
        // A client message of any shape too.
        for v in [
            json!({"type": "message", "message": "x"}),
            json!({"type": "message", "message": {"recipient": {"type": "session"}}}),
            json!({"type": "transient", "transient": 1}),
        ] {
            assert_eq!(l.rewrite_to_remote(v.clone()), v);
        }
    }

    #[tokio::test]
    async fn room_requests_left_behind_are_each_answered_once() {
        let mut l = link();
        l.pending = Some("j1".into());
        let join = |id: &str| json!({"id": id, "type": "room", "room": {"roomid": "r"}});
        // Joins and a leave whose writes failed, one of them j1 again.
        l.keep(join("j1"), 10, false);
        l.keep(json!({"type": "message", "id": "m"}), 20, false);
        l.keep(join("j2"), 30, false);
        l.keep(
            json!({"id": "l3", "type": "room", "room": {"roomid": ""}}),
            40,
            false,
        );
        l.keep(join("j9"), 50, false);
        let out: Vec<Value> = l
            .left_room_requests(Some("j9"))
            .iter()
            .map(|f| serde_json::from_slice(f.as_bytes()).unwrap())
            .collect();
        let ids: Vec<&str> = out.iter().map(|m| m["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["j1", "j2", "l3"]);
        assert_eq!(out[0]["error"]["code"], "federation_error");
        assert_eq!(out[1]["error"]["code"], "federation_error");
        assert_eq!(
            out[2],
            json!({"id": "l3", "type": "room", "room": {"roomid": ""}})
        );
        assert!(l.pending.is_none());
        assert_eq!(l.queue.len(), 1, "the message stays queued");
        assert_eq!(l.queue_bytes, 20);
    }

    #[tokio::test]
    async fn an_answer_with_another_id_leaves_the_waiting_request() {
        let mut l = link();
        l.pending = Some("j2".into());
        let out =
            l.rewrite_from_remote(json!({"id": "j1", "type": "room", "room": {"roomid": "rroom"}}));
        assert_eq!(out.unwrap()["id"], "j1");
        assert_eq!(l.pending.as_deref(), Some("j2"));
        let out =
            l.rewrite_from_remote(json!({"id": "j2", "type": "room", "room": {"roomid": "rroom"}}));
        assert_eq!(out.unwrap()["room"]["roomid"], "lroom");
        assert!(l.pending.is_none());
    }

    #[tokio::test]
    async fn ids_and_rooms_are_rewritten_where_they_are() {
        let mut l = link();
        l.pending = Some("req-1".into());
        let out = l.rewrite_from_remote(json!({"type": "error", "error": {"code": "x"}}));
        assert_eq!(
            out,
            Some(json!({"id": "req-1", "type": "error", "error": {"code": "x"}})),
            "no details added to an error without them"
        );
        let out = l.rewrite_from_remote(json!({"type": "message", "message": {
            "sender": {"type": "session", "sessionid": "R"},
            "recipient": {"type": "session", "sessionid": "R"},
            "data": {"type": "offer", "from": "R", "to": "X", "payload": {"sdp": "s"}, "extra": 1}}}));
        assert_eq!(
            out,
            Some(json!({"type": "message", "message": {
                "sender": {"type": "session", "sessionid": "L"},
                "recipient": {"type": "session", "sessionid": "L"},
                "data": {"type": "offer", "from": "L", "to": "X", "payload": {"sdp": "s"}}}}))
        );
        let out = l.rewrite_from_remote(json!({"type": "event", "event": {
            "target": "roomlist", "type": "disinvite", "disinvite": {"roomid": "rroom"}}}));
        assert_eq!(out.unwrap()["event"]["disinvite"]["roomid"], "lroom");
        let out = l.rewrite_to_remote(json!({"type": "message", "message": {
            "recipient": {"type": "session", "sessionid": "L"}, "data": {}}}));
        assert_eq!(out["message"]["recipient"]["sessionid"], "R");
    }
}
