//! Federation, the client's side: a session of this server joins a
//! conversation hosted by another Nextcloud, whose signaling server ("B")
//! this server dials on the client's behalf. Every message of the session
//! then goes through that link, with the session ids, room ids and actors
//! rewritten both ways (see `spec/federation-notes.md`, 2.3 - 2.8).
//!
//! One task per federated session owns the WebSocket to B. The hub talks to
//! it through a bounded channel; the task delivers B's messages to the
//! session through the hub like any other frame. When the link breaks the
//! task reconnects with backoff and resumes its session on B, telling the
//! client `federation_interrupted` and `federation_resumed`.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::Hub;
use crate::api::client::RoomFederation;
use crate::api::error::{self, ProtocolError};
use crate::api::server::{error_frame, Frame};

/// Largest message accepted from B (as the Go server).
const MAX_REMOTE_MESSAGE: usize = 64 * 1024;
/// Client messages kept for B while the link is down (then refused).
const QUEUE_LIMIT: usize = 256;
/// Commands waiting for the link task (then refused).
pub(crate) const CHANNEL_SIZE: usize = 256;
/// First reconnect delay, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// What the hub keeps of a session's link to B.
pub(crate) struct FedLink {
    /// Identifies the link (a session may replace its link).
    pub link_id: u64,
    /// Commands to the link task.
    pub tx: mpsc::Sender<FedCmd>,
    /// `federation.signaling` as the client sent it.
    pub signaling: String,
    /// `federation.url` as the client sent it.
    pub url: String,
    /// The local room id the client knows the conversation by.
    pub local_room: Arc<str>,
    /// The client's Nextcloud session id (pinged to its own Nextcloud).
    pub nc_session: Arc<str>,
}

/// What the hub asks of a link.
pub(crate) enum FedCmd {
    /// Join (another) room on B over the same connection.
    Join {
        id: Option<String>,
        local_room: String,
        remote_room: String,
        nc_session: String,
    },
    /// Leave the room; the connection closes after B confirmed.
    Leave { id: Option<String> },
    /// A client message for B.
    Forward(Value),
    /// The session ended: say bye to B and close.
    Close,
}

/// A checked `federation` object of a room request.
pub(crate) struct Target {
    /// `ws(s)://.../spreed`.
    pub ws_url: String,
    pub signaling: String,
    pub url: String,
    pub remote_room: String,
    pub token: String,
}

impl Target {
    /// Checks the `federation` object as the Go server does; None means
    /// `invalid_format`.
    pub fn parse(f: &RoomFederation, local_room: &str) -> Option<Target> {
        let mut signaling = f.signaling.trim().to_string();
        if !signaling.ends_with('/') {
            signaling.push('/');
        }
        let mut ws = reqwest::Url::parse(&signaling).ok()?;
        let scheme = match ws.scheme() {
            "http" | "ws" => "ws",
            "https" | "wss" => "wss",
            _ => return None,
        };
        ws.set_scheme(scheme).ok()?;
        ws.host_str()?;
        let ws_url = ws.join("spreed").ok()?.to_string();
        let url = reqwest::Url::parse(&f.url).ok()?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return None;
        }
        if f.token.is_empty() {
            return None;
        }
        Some(Target {
            ws_url,
            signaling: f.signaling.clone(),
            url: f.url.clone(),
            remote_room: if f.roomid.is_empty() {
                local_room.to_string()
            } else {
                f.roomid.clone()
            },
            token: f.token.clone(),
        })
    }
}

/// `@host[:port][/path]` of a Nextcloud URL, without scheme and OCS suffix:
/// how federated actor ids name their cloud.
pub(crate) fn cloud_of(url: &str) -> String {
    let no_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let base = match no_scheme.find("/ocs/v") {
        Some(pos) => &no_scheme[..pos],
        None => no_scheme,
    };
    format!("@{}", base.trim_end_matches('/'))
}

/// Base URL (with scheme) of a Nextcloud URL, for chat mentions.
fn base_of(url: &str) -> String {
    match url.find("/ocs/v") {
        Some(pos) => url[..pos].to_string(),
        None => url.trim_end_matches('/').to_string(),
    }
    .trim_end_matches('/')
    .to_string()
}

/// Why connecting to B failed.
enum ConnectError {
    /// B does not speak federation.
    Unsupported,
    /// Dial, TLS or handshake failure.
    Network { tls: bool, message: String },
    /// B refused the hello (forwarded to the client).
    Hello(Value),
}

impl ConnectError {
    fn to_protocol(&self) -> ProtocolError {
        match self {
            ConnectError::Unsupported => ProtocolError::new(
                error::FEDERATION_UNSUPPORTED,
                "The target server does not support federation.",
            ),
            ConnectError::Network { tls, message } => {
                let code = if *tls {
                    error::CERTIFICATE_VERIFICATION_ERROR
                } else {
                    error::NETWORK_ERROR
                };
                let details =
                    serde_json::value::to_raw_value(&json!({"code": code, "message": message}))
                        .ok();
                let mut e = ProtocolError::new(
                    error::FEDERATION_ERROR,
                    "Failed to create federation client.",
                );
                e.details = details;
                e
            }
            ConnectError::Hello(err) => ProtocolError {
                code: err["code"]
                    .as_str()
                    .unwrap_or(error::FEDERATION_ERROR)
                    .into(),
                message: err["message"].as_str().unwrap_or_default().into(),
                details: err
                    .get("details")
                    .and_then(|d| serde_json::value::to_raw_value(d).ok()),
            },
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The task of one federated session.
struct Link {
    link_id: u64,
    hub: Arc<Hub>,
    /// The client's session id here (L).
    sid: Arc<str>,
    target: Target,
    features: Vec<String>,
    local_room: String,
    nc_session: String,
    /// Request id of the join or leave B has not answered yet.
    pending: Option<String>,
    /// The session id B gave us (R) and its resume id.
    remote_sid: Option<String>,
    resume_id: Option<String>,
    leaving: bool,
    local_cloud: String,
    remote_cloud: String,
    local_base: String,
    remote_base: String,
    /// Client messages while the link is down.
    queue: Vec<Value>,
}

impl Hub {
    /// Starts the link of a session to B; the first join carries `id`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_federation(
        self: &Arc<Self>,
        sid: &Arc<str>,
        id: Option<String>,
        target: Target,
        local_room: String,
        nc_session: String,
        features: Vec<String>,
        local_url: &str,
    ) -> FedLink {
        static NEXT_LINK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let link_id = NEXT_LINK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CHANNEL_SIZE);
        let link = FedLink {
            link_id,
            tx,
            signaling: target.signaling.clone(),
            url: target.url.clone(),
            local_room: local_room.as_str().into(),
            nc_session: nc_session.as_str().into(),
        };
        let task = Link {
            link_id,
            hub: self.clone(),
            sid: sid.clone(),
            local_cloud: cloud_of(local_url),
            remote_cloud: cloud_of(&target.url),
            local_base: base_of(local_url),
            remote_base: base_of(&target.url),
            target,
            features,
            local_room,
            nc_session,
            pending: id,
            remote_sid: None,
            resume_id: None,
            leaving: false,
            queue: Vec::new(),
        };
        tokio::spawn(task.run(rx));
        link
    }

    fn federation_deliver(&self, sid: &str, f: Frame) {
        let mut st = self.lock();
        st.sessions.deliver(sid, &f);
    }

    /// The link ended: the session is no longer federated.
    fn federation_ended(&self, sid: &str, link_id: u64) {
        let mut st = self.lock();
        if let Some(s) = st.sessions.map.get_mut(sid) {
            if s.fed_link.as_ref().is_some_and(|l| l.link_id == link_id) {
                s.fed_link = None;
            }
        }
    }
}

impl Link {
    async fn run(mut self, mut rx: mpsc::Receiver<FedCmd>) {
        let mut first = true;
        let mut backoff = MIN_BACKOFF;
        loop {
            let had_session = self.remote_sid.is_some();
            let connected = tokio::select! {
                r = self.connect() => r,
                cmd = rx.recv() => {
                    // Closing while dialing.
                    if matches!(cmd, None | Some(FedCmd::Close)) {
                        break;
                    }
                    if let Some(cmd) = cmd { self.offline(cmd); }
                    if self.leaving {
                        break;
                    }
                    continue;
                }
            };
            let (mut ws, resumed) = match connected {
                Ok(ok) => ok,
                Err(e) => {
                    let fatal = first || matches!(e, ConnectError::Hello(_));
                    if fatal {
                        let id = self.pending.take();
                        self.hub.federation_deliver(
                            &self.sid,
                            error_frame(id.as_deref(), &e.to_protocol()),
                        );
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        cmd = rx.recv() => {
                            if matches!(cmd, None | Some(FedCmd::Close)) { break; }
                            if let Some(cmd) = cmd { self.offline(cmd); }
                            if self.leaving { break; }
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = MIN_BACKOFF;
            if first {
                first = false;
                let id = self.pending.clone();
                if self.send_join(&mut ws, id).await.is_err() {
                    continue;
                }
            } else if resumed {
                self.event("federation_resumed", json!(true));
                for m in std::mem::take(&mut self.queue) {
                    if ws.send(Message::Text(m.to_string().into())).await.is_err() {
                        break;
                    }
                }
            } else if had_session {
                // A new session on B: join again, without an id.
                self.queue.clear();
                self.event("federation_resumed", json!(false));
                if self.send_join(&mut ws, None).await.is_err() {
                    continue;
                }
            }
            match self.pump(&mut ws, &mut rx).await {
                Pump::Closed => {
                    let _ = ws
                        .send(Message::Text(
                            json!({"type": "bye", "bye": {}}).to_string().into(),
                        ))
                        .await;
                    let _ = ws.close(None).await;
                    break;
                }
                Pump::Broken => {
                    if self.leaving {
                        break;
                    }
                    self.event_plain("federation_interrupted");
                }
            }
        }
        self.hub.federation_ended(&self.sid, self.link_id);
    }

    /// A command while B is unreachable.
    fn offline(&mut self, cmd: FedCmd) {
        match cmd {
            FedCmd::Forward(v) => {
                if self.resume_id.is_some() && self.queue.len() < QUEUE_LIMIT {
                    self.queue.push(self.rewrite_to_remote(v));
                } else {
                    let id = v.get("id").and_then(Value::as_str).map(str::to_string);
                    self.hub.federation_deliver(
                        &self.sid,
                        error_frame(
                            id.as_deref(),
                            &ProtocolError::new(
                                error::FEDERATION_ERROR,
                                "The federated conversation is not reachable right now.",
                            ),
                        ),
                    );
                }
            }
            FedCmd::Join {
                id,
                local_room,
                remote_room,
                nc_session,
            } => {
                self.local_room = local_room;
                self.target.remote_room = remote_room;
                self.nc_session = nc_session;
                self.pending = id;
            }
            FedCmd::Leave { id } => {
                // Nothing to leave on B while it is away: confirm and end.
                self.leaving = true;
                let f = crate::api::server::frame(id.as_deref(), "room", &json!({"roomid": ""}));
                self.hub.federation_deliver(&self.sid, f);
            }
            FedCmd::Close => {}
        }
    }

    fn event(&self, kind: &str, resumed: Value) {
        let f = Frame::from(
            json!({"type": "event", "event": {"target": "room", "type": kind, "resumed": resumed}})
                .to_string(),
        );
        self.hub.federation_deliver(&self.sid, f);
    }

    fn event_plain(&self, kind: &str) {
        let f = Frame::from(
            json!({"type": "event", "event": {"target": "room", "type": kind}}).to_string(),
        );
        self.hub.federation_deliver(&self.sid, f);
    }

    async fn send_join(&mut self, ws: &mut Ws, id: Option<String>) -> Result<(), ()> {
        self.pending = id.clone();
        let mut m = json!({"type": "room", "room": {"roomid": self.target.remote_room, "sessionid": self.nc_session}});
        if let Some(id) = id {
            m["id"] = json!(id);
        }
        ws.send(Message::Text(m.to_string().into()))
            .await
            .map_err(|_| ())
    }

    /// Dials B, checks that it speaks federation, and says hello (resuming
    /// the session on B when there is one). True when resumed.
    async fn connect(&mut self) -> Result<(Ws, bool), ConnectError> {
        let timeout = self.hub.config.federation.timeout;
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(MAX_REMOTE_MESSAGE);
        config.max_frame_size = Some(MAX_REMOTE_MESSAGE);
        let connector = Some(tokio_tungstenite::Connector::Rustls(
            self.hub.federation_tls.clone(),
        ));
        let dial = tokio_tungstenite::connect_async_tls_with_config(
            self.target.ws_url.as_str(),
            Some(config),
            true,
            connector,
        );
        let (mut ws, resp) = match tokio::time::timeout(timeout, dial).await {
            Err(_) => {
                return Err(ConnectError::Network {
                    tls: false,
                    message: "timeout".into(),
                })
            }
            Ok(Err(e)) => {
                let message = e.to_string();
                let tls = message.contains("certificate") || message.contains("Tls");
                return Err(ConnectError::Network { tls, message });
            }
            Ok(Ok(ok)) => ok,
        };
        let has_federation = |list: &str| list.split(',').any(|f| f.trim() == "federation");
        let header = resp
            .headers()
            .get(crate::backend::client::HEADER_FEATURES)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !has_federation(header) {
            let _ = ws.close(None).await;
            return Err(ConnectError::Unsupported);
        }
        let welcome = self.read(&mut ws, timeout).await?;
        let features = welcome["welcome"]["features"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        if welcome["type"] != "welcome" || !has_federation(&features) {
            let _ = ws.close(None).await;
            return Err(ConnectError::Unsupported);
        }
        let mut resumed = false;
        if let Some(resume_id) = self.resume_id.clone() {
            self.send(&mut ws, json!({"id": hello_id(), "type": "hello", "hello": {"version": "2.0", "resumeid": resume_id, "features": self.features}})).await?;
            let reply = self.read(&mut ws, timeout).await?;
            if reply["type"] == "hello" {
                resumed = true;
            } else if reply["error"]["code"] != error::NO_SUCH_SESSION {
                return Err(ConnectError::Hello(reply["error"].clone()));
            }
        }
        if !resumed {
            self.send(&mut ws, json!({"id": hello_id(), "type": "hello", "hello": {"version": "2.0", "features": self.features,
                "auth": {"type": "federation", "url": self.target.url, "params": {"token": self.target.token}}}})).await?;
            let reply = self.read(&mut ws, timeout).await?;
            if reply["type"] != "hello" {
                let _ = ws.close(None).await;
                return Err(ConnectError::Hello(reply["error"].clone()));
            }
            self.remote_sid = reply["hello"]["sessionid"].as_str().map(str::to_string);
            self.resume_id = reply["hello"]["resumeid"].as_str().map(str::to_string);
        }
        Ok((ws, resumed))
    }

    async fn send(&self, ws: &mut Ws, v: Value) -> Result<(), ConnectError> {
        ws.send(Message::Text(v.to_string().into()))
            .await
            .map_err(|e| ConnectError::Network {
                tls: false,
                message: e.to_string(),
            })
    }

    /// The next JSON message from B during the handshake.
    async fn read(&self, ws: &mut Ws, timeout: Duration) -> Result<Value, ConnectError> {
        let broken = |message: String| ConnectError::Network {
            tls: false,
            message,
        };
        loop {
            let next = tokio::time::timeout(timeout, ws.next())
                .await
                .map_err(|_| broken("timeout".into()))?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str()).map_err(|e| broken(e.to_string()))
                }
                Some(Ok(Message::Close(_))) | None => return Err(broken("closed".into())),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(broken(e.to_string())),
            }
        }
    }

    /// Relays both ways until the session ends (Closed) or the link breaks.
    async fn pump(&mut self, ws: &mut Ws, rx: &mut mpsc::Receiver<FedCmd>) -> Pump {
        let mut ping = tokio::time::interval(Duration::from_secs(54));
        ping.tick().await;
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return Pump::Closed };
                    let out = match cmd {
                        FedCmd::Close => return Pump::Closed,
                        FedCmd::Forward(v) => self.rewrite_to_remote(v),
                        FedCmd::Leave { id } => {
                            self.leaving = true;
                            self.pending = id.clone();
                            let mut m = json!({"type": "room", "room": {"roomid": ""}});
                            if let Some(id) = id { m["id"] = json!(id); }
                            m
                        }
                        FedCmd::Join { id, local_room, remote_room, nc_session } => {
                            self.local_room = local_room;
                            self.target.remote_room = remote_room;
                            self.nc_session = nc_session;
                            self.leaving = false;
                            self.pending = id.clone();
                            let mut m = json!({"type": "room", "room": {"roomid": self.target.remote_room, "sessionid": self.nc_session}});
                            if let Some(id) = id { m["id"] = json!(id); }
                            m
                        }
                    };
                    if ws.send(Message::Text(out.to_string().into())).await.is_err() {
                        return Pump::Broken;
                    }
                }
                m = tokio::time::timeout(Duration::from_secs(60), ws.next()) => {
                    let text = match m {
                        Ok(Some(Ok(Message::Text(t)))) => t,
                        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return Pump::Broken,
                        Ok(Some(Ok(_))) => continue,
                    };
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    if v["type"] == "bye" {
                        return Pump::Broken;
                    }
                    let close = self.leaving && v["type"] == "room" && v["room"]["roomid"] == "";
                    if let Some(out) = self.rewrite_from_remote(v) {
                        self.hub.federation_deliver(&self.sid, Frame::from(out.to_string()));
                    }
                    if close {
                        return Pump::Closed;
                    }
                }
                _ = ping.tick() => {
                    if ws.send(Message::Ping(Default::default())).await.is_err() {
                        return Pump::Broken;
                    }
                }
            }
        }
    }

    fn local_sid(&self) -> &str {
        &self.sid
    }

    /// Client -> B rewrites.
    fn rewrite_to_remote(&self, mut v: Value) -> Value {
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
    fn rewrite_from_remote(&mut self, mut v: Value) -> Option<Value> {
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

    fn event_from_remote(&self, ev: &mut Value, remote: &str, me: &str) {
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
    fn actor_rewrite(&self, e: &mut Value, id_key: &str, type_key: &str) {
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

    fn chat_rewrite(&self, c: &mut Value) {
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

/// TLS for dialing remote signaling servers: the platform's roots, or no
/// verification with `[federation] skipverify` (development only).
pub(crate) fn tls_config(skip_verify: bool) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous();
    let config = if skip_verify {
        builder
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else {
        let verifier = rustls_platform_verifier::Verifier::new(provider)?;
        builder
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// Accepts any certificate (`[federation] skipverify`), still checking the
/// handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

enum Pump {
    Closed,
    Broken,
}

fn hello_id() -> String {
    super::session::new_id().chars().take(8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clouds_and_targets() {
        assert_eq!(
            cloud_of("https://remote.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend"),
            "@remote.example"
        );
        assert_eq!(cloud_of("http://127.0.0.1:8080/nc/"), "@127.0.0.1:8080/nc");
        let f = RoomFederation {
            signaling: "https://sig.remote".into(),
            url: "https://remote.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend".into(),
            roomid: String::new(),
            token: "t".into(),
        };
        let t = Target::parse(&f, "local").unwrap();
        assert_eq!(t.ws_url, "wss://sig.remote/spreed");
        assert_eq!(t.remote_room, "local");
        let bad = RoomFederation {
            token: String::new(),
            ..f
        };
        assert!(Target::parse(&bad, "local").is_none());
    }
}
