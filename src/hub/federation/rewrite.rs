//! The rewriting of a federated session's messages: session ids, room ids
//! and actors of one server translated into those of the other, both ways
//! (`spec/federation-notes.md`, 2.3 - 2.8).

use serde_json::{json, Map, Value};

use super::link::Link;
use crate::api::client::{ClientKind, RecipientKind, SignalType};
use crate::api::remote::{
    ActorType, ControlAction, EventTarget, EventType, MentionType, ServerKind,
};

impl Link {
    pub(super) fn local_sid(&self) -> &str {
        &self.sid
    }

    /// Client -> B rewrites.
    pub(super) fn rewrite_to_remote(&self, mut v: Value) -> Value {
        let Some(remote) = self.remote_sid.clone() else {
            return v;
        };
        let me = self.local_sid().to_string();
        match ClientKind::of(&v["type"]) {
            ClientKind::Message
                if RecipientKind::of(&v["message"]["recipient"]["type"])
                    == RecipientKind::Session =>
            {
                let to = &mut v["message"]["recipient"]["sessionid"];
                if *to == me.as_str() {
                    *to = json!(remote);
                }
            }
            ClientKind::Transient if v["transient"]["key"] == format!("sd:{me}").as_str() => {
                v["transient"]["key"] = json!(format!("sd:{remote}"));
            }
            _ => {}
        }
        v
    }

    /// B -> client rewrites; None drops the message (B's own hello/welcome).
    pub(super) fn rewrite_from_remote(&mut self, mut v: Value) -> Option<Value> {
        let remote = self.remote_sid.clone().unwrap_or_default();
        let me = self.local_sid().to_string();
        let swap = |x: &mut Value| {
            if x.as_str() == Some(remote.as_str()) {
                *x = json!(me);
            }
        };
        let kind = ServerKind::of(&v["type"]);
        match kind {
            ServerKind::Welcome | ServerKind::Hello => return None,
            ServerKind::Room => {
                if let Some(id) = self.pending.take() {
                    v["id"] = json!(id);
                }
                if v["room"]["roomid"] == self.target.remote_room.as_str() {
                    v["room"]["roomid"] = json!(self.local_room);
                }
            }
            ServerKind::Error => {
                if let Some(id) = self.pending.take() {
                    v["id"] = json!(id);
                }
                let room = &mut v["error"]["details"]["room"]["roomid"];
                if room.as_str() == Some(self.target.remote_room.as_str()) {
                    *room = json!(self.local_room);
                }
            }
            ServerKind::Message | ServerKind::Control => {
                let body = &mut v[kind.as_str()];
                swap(&mut body["sender"]["sessionid"]);
                if RecipientKind::of(&body["recipient"]["type"]) == RecipientKind::Session {
                    swap(&mut body["recipient"]["sessionid"]);
                }
                let data = &mut body["data"];
                let sdp = matches!(
                    SignalType::of(&data["type"]),
                    SignalType::Offer | SignalType::Answer
                );
                if kind == ServerKind::Message && sdp {
                    swap(&mut data["from"]);
                    swap(&mut data["to"]);
                    let mut kept = Map::new();
                    for k in ["to", "from", "type", "roomType", "payload", "sid"] {
                        if let Some(x) = data.get(k) {
                            kept.insert(k.to_string(), x.clone());
                        }
                    }
                    *data = Value::Object(kept);
                } else if kind == ServerKind::Control
                    && ControlAction::of(&data["action"]) == ControlAction::ForceMute
                {
                    swap(&mut data["peerId"]);
                }
            }
            ServerKind::Transient if v["transient"]["key"] == format!("sd:{remote}").as_str() => {
                v["transient"]["key"] = json!(format!("sd:{me}"));
            }
            ServerKind::Event => self.event_from_remote(&mut v["event"], &remote, &me),
            _ => {}
        }
        Some(v)
    }

    pub(super) fn event_from_remote(&self, ev: &mut Value, remote: &str, me: &str) {
        let target = EventTarget::of(&ev["target"]);
        let kind = EventType::of(&ev["type"]);
        let room_rewrite = |x: &mut Value| {
            if x.as_str() == Some(self.target.remote_room.as_str()) {
                *x = json!(self.local_room);
            }
        };
        match (target, kind) {
            (EventTarget::Room, EventType::Join) => {
                if let Some(list) = ev["join"].as_array_mut() {
                    if let Some(e) = list.iter_mut().find(|e| e["sessionid"] == remote) {
                        e["sessionid"] = json!(me);
                    }
                }
            }
            (EventTarget::Room, EventType::Leave) => {
                if let Some(list) = ev["leave"].as_array_mut() {
                    for e in list.iter_mut().filter(|e| e.as_str() == Some(remote)) {
                        *e = json!(me);
                    }
                }
            }
            (EventTarget::Room, EventType::Message) => {
                room_rewrite(&mut ev["message"]["roomid"]);
                let chat = &mut ev["message"]["data"]["chat"];
                self.chat_rewrite(&mut chat["comment"]);
                if let Some(list) = chat["comments"].as_array_mut() {
                    for c in list {
                        self.chat_rewrite(c);
                    }
                }
            }
            (EventTarget::Participants, EventType::Update) => {
                room_rewrite(&mut ev["update"]["roomid"]);
                for list in ["changed", "users"] {
                    if let Some(entries) = ev["update"][list].as_array_mut() {
                        let mut swapped = false;
                        for e in entries {
                            self.actor_rewrite(e, "actorId", "actorType");
                            for key in ["sessionId", "sessionid"] {
                                if !swapped && e[key] == remote {
                                    e[key] = json!(me);
                                    swapped = true;
                                }
                            }
                        }
                    }
                }
            }
            (EventTarget::Participants, EventType::Flags) => {
                room_rewrite(&mut ev["flags"]["roomid"]);
                if ev["flags"]["sessionid"] == remote {
                    ev["flags"]["sessionid"] = json!(me);
                }
            }
            (EventTarget::Roomlist, k) => room_rewrite(&mut ev[k.as_str()]["roomid"]),
            _ => {}
        }
    }

    /// Actor of B's view -> the client's view: B's users become federated
    /// users of B's cloud, federated users of our cloud become our users.
    pub(super) fn actor_rewrite(&self, e: &mut Value, id_key: &str, type_key: &str) {
        let Some(id) = e[id_key].as_str() else {
            return;
        };
        let (kind, id) = match ActorType::of(&e[type_key]) {
            ActorType::Users => (
                ActorType::FederatedUsers,
                format!("{id}{}", self.remote_cloud),
            ),
            ActorType::FederatedUsers => match id.strip_suffix(self.local_cloud.as_str()) {
                Some(local) => (ActorType::Users, local.to_string()),
                None => return,
            },
            ActorType::Unknown(_) => return,
        };
        e[type_key] = json!(kind.as_str());
        e[id_key] = json!(id);
    }

    pub(super) fn chat_rewrite(&self, c: &mut Value) {
        if !c.is_object() {
            return;
        }
        self.actor_rewrite(c, "actorId", "actorType");
        self.actor_rewrite(c, "lastEditActorId", "lastEditActorType");
        if c["token"] == self.target.remote_room.as_str() {
            c["token"] = json!(self.local_room);
        }
        if let Some(params) = c["messageParameters"].as_object_mut() {
            for (k, p) in params.iter_mut() {
                if !k.starts_with("mention-") {
                    continue;
                }
                match MentionType::of(&p["type"]) {
                    MentionType::User => {
                        if p["server"] == self.local_base.as_str() {
                            if let Some(o) = p.as_object_mut() {
                                o.remove("server");
                            }
                        } else if p.get("mention-id").is_none() {
                            p["mention-id"] = p["id"].clone();
                            p["server"] = json!(self.remote_base);
                        }
                    }
                    MentionType::Call if p["id"] == self.target.remote_room.as_str() => {
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
