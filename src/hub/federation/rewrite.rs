//! The rewriting of a federated session's messages: session ids, room ids
//! and actors of one server translated into those of the other, both ways
//! (`spec/federation-notes.md`, 2.3 - 2.8).

use serde_json::{json, Map, Value};

use super::link::Link;

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
        if v["type"] == "message" && v["message"]["recipient"]["type"] == "session" {
            if v["message"]["recipient"]["sessionid"] == me.as_str() {
                v["message"]["recipient"]["sessionid"] = json!(remote);
            }
        } else if v["type"] == "transient" && v["transient"]["key"] == format!("sd:{me}").as_str() {
            v["transient"]["key"] = json!(format!("sd:{remote}"));
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
        let kind = v["type"].as_str().unwrap_or("").to_string();
        match kind.as_str() {
            "welcome" | "hello" => return None,
            "room" => {
                if let Some(id) = self.pending.take() {
                    v["id"] = json!(id);
                }
                if v["room"]["roomid"] == self.target.remote_room.as_str() {
                    v["room"]["roomid"] = json!(self.local_room);
                }
            }
            "error" => {
                if let Some(id) = self.pending.take() {
                    v["id"] = json!(id);
                }
                let room = &mut v["error"]["details"]["room"]["roomid"];
                if room.as_str() == Some(self.target.remote_room.as_str()) {
                    *room = json!(self.local_room);
                }
            }
            "message" | "control" => {
                let body = &mut v[kind.as_str()];
                swap(&mut body["sender"]["sessionid"]);
                if body["recipient"]["type"] == "session" {
                    swap(&mut body["recipient"]["sessionid"]);
                }
                let data = &mut body["data"];
                if kind == "message" && matches!(data["type"].as_str(), Some("offer" | "answer")) {
                    swap(&mut data["from"]);
                    swap(&mut data["to"]);
                    let mut kept = Map::new();
                    for k in ["to", "from", "type", "roomType", "payload", "sid"] {
                        if let Some(x) = data.get(k) {
                            kept.insert(k.to_string(), x.clone());
                        }
                    }
                    *data = Value::Object(kept);
                } else if kind == "control" && data["action"] == "forceMute" {
                    swap(&mut data["peerId"]);
                }
            }
            "transient" if v["transient"]["key"] == format!("sd:{remote}").as_str() => {
                v["transient"]["key"] = json!(format!("sd:{me}"));
            }
            "event" => self.event_from_remote(&mut v["event"], &remote, &me),
            _ => {}
        }
        Some(v)
    }

    pub(super) fn event_from_remote(&self, ev: &mut Value, remote: &str, me: &str) {
        let target = ev["target"].as_str().unwrap_or("").to_string();
        let kind = ev["type"].as_str().unwrap_or("").to_string();
        let room_rewrite = |x: &mut Value| {
            if x.as_str() == Some(self.target.remote_room.as_str()) {
                *x = json!(self.local_room);
            }
        };
        match (target.as_str(), kind.as_str()) {
            ("room", "join") => {
                if let Some(list) = ev["join"].as_array_mut() {
                    if let Some(e) = list.iter_mut().find(|e| e["sessionid"] == remote) {
                        e["sessionid"] = json!(me);
                    }
                }
            }
            ("room", "leave") => {
                if let Some(list) = ev["leave"].as_array_mut() {
                    for e in list.iter_mut().filter(|e| e.as_str() == Some(remote)) {
                        *e = json!(me);
                    }
                }
            }
            ("room", "message") => {
                room_rewrite(&mut ev["message"]["roomid"]);
                let chat = &mut ev["message"]["data"]["chat"];
                self.chat_rewrite(&mut chat["comment"]);
                if let Some(list) = chat["comments"].as_array_mut() {
                    for c in list {
                        self.chat_rewrite(c);
                    }
                }
            }
            ("participants", "update") => {
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
            ("participants", "flags") => {
                room_rewrite(&mut ev["flags"]["roomid"]);
                if ev["flags"]["sessionid"] == remote {
                    ev["flags"]["sessionid"] = json!(me);
                }
            }
            ("roomlist", k) => room_rewrite(&mut ev[k]["roomid"]),
            _ => {}
        }
    }

    /// Actor of B's view -> the client's view: B's users become federated
    /// users of B's cloud, federated users of our cloud become our users.
    pub(super) fn actor_rewrite(&self, e: &mut Value, id_key: &str, type_key: &str) {
        let (Some(kind), Some(id)) = (e[type_key].as_str(), e[id_key].as_str()) else {
            return;
        };
        let (kind, id) = match kind {
            "users" => (
                "federated_users".to_string(),
                format!("{id}{}", self.remote_cloud),
            ),
            "federated_users" => match id.strip_suffix(self.local_cloud.as_str()) {
                Some(local) => ("users".to_string(), local.to_string()),
                None => return,
            },
            _ => return,
        };
        e[type_key] = json!(kind);
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
                match p["type"].as_str() {
                    Some("user") => {
                        if p["server"] == self.local_base.as_str() {
                            if let Some(o) = p.as_object_mut() {
                                o.remove("server");
                            }
                        } else if p.get("mention-id").is_none() {
                            p["mention-id"] = p["id"].clone();
                            p["server"] = json!(self.remote_base);
                        }
                    }
                    Some("call") if p["id"] == self.target.remote_room.as_str() => {
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
