//! The task of one federated session: owns the WebSocket to the remote
//! signaling server, joins there, pumps messages both ways, and reconnects
//! with backoff (resuming its session there) when the link breaks.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{
    ConnectError, FedCmd, Target, MAX_BACKOFF, MAX_REMOTE_MESSAGE, MIN_BACKOFF, QUEUE_LIMIT,
};
use crate::api::error::{self, ProtocolError};
use crate::api::remote::ServerKind;
use crate::api::server::{error_frame, Frame};
use crate::hub::Hub;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The task of one federated session.
pub(super) struct Link {
    pub(super) link_id: u64,
    pub(super) hub: Arc<Hub>,
    /// The client's session id here (L).
    pub(super) sid: Arc<str>,
    pub(super) target: Target,
    pub(super) features: Vec<String>,
    pub(super) local_room: String,
    pub(super) nc_session: String,
    /// Request id of the join or leave B has not answered yet.
    pub(super) pending: Option<String>,
    /// The session id B gave us (R) and its resume id.
    pub(super) remote_sid: Option<String>,
    pub(super) resume_id: Option<String>,
    pub(super) leaving: bool,
    /// A join was asked while B was unreachable: sent after a resume.
    pub(super) rejoin: bool,
    pub(super) local_cloud: String,
    pub(super) remote_cloud: String,
    pub(super) local_base: String,
    pub(super) remote_base: String,
    /// Client messages while the link is down.
    pub(super) queue: Vec<Value>,
}

impl Link {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<FedCmd>) {
        let mut first = true;
        let mut backoff = MIN_BACKOFF;
        loop {
            let had_session = self.remote_sid.is_some();
            let connected = tokio::select! {
                r = self.connect() => r,
                cmd = rx.recv() => {
                    // A command (or the close) while dialing.
                    if self.command_while_down(cmd) {
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
                            if self.command_while_down(cmd) { break; }
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            backoff = MIN_BACKOFF;
            let was_first = std::mem::replace(&mut first, false);
            if !self.restore(&mut ws, was_first, resumed, had_session).await {
                continue;
            }
            match self.pump(&mut ws, &mut rx).await {
                Pump::Closed => {
                    say_bye(&mut ws).await;
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

    /// A command (or the end of the channel) while B is not connected;
    /// true when the link should end (closed, or the session left).
    fn command_while_down(&mut self, cmd: Option<FedCmd>) -> bool {
        match cmd {
            None | Some(FedCmd::Close) => true,
            Some(cmd) => {
                self.offline(cmd);
                self.leaving
            }
        }
    }

    /// What a new connection to B needs first: the join on the first
    /// connection, the messages queued meanwhile after a resume, a new
    /// join (without an id) when B gave a new session. False when the
    /// connection broke while sending the join.
    async fn restore(
        &mut self,
        ws: &mut Ws,
        first: bool,
        resumed: bool,
        had_session: bool,
    ) -> bool {
        if first {
            let id = self.pending.clone();
            if self.send_join(ws, id).await.is_err() {
                // Sent (with its id) on the next connection.
                self.rejoin = true;
                return false;
            }
            return true;
        }
        if resumed {
            self.event("federation_resumed", json!(true));
            if std::mem::take(&mut self.rejoin) {
                let id = self.pending.clone();
                if self.send_join(ws, id).await.is_err() {
                    self.rejoin = true;
                    return false;
                }
            }
            let mut queue = std::mem::take(&mut self.queue).into_iter();
            while let Some(m) = queue.next() {
                if ws.send(Message::Text(m.to_string().into())).await.is_err() {
                    // Kept, in order, for the next connection.
                    self.queue = std::iter::once(m).chain(queue).collect();
                    return false;
                }
            }
        } else if had_session {
            self.queue.clear();
            self.rejoin = false;
            self.event("federation_resumed", json!(false));
            // A join or leave asked meanwhile is answered by this join.
            let id = self.pending.clone();
            return self.send_join(ws, id).await.is_ok();
        }
        true
    }

    /// A command while B is unreachable.
    pub(super) fn offline(&mut self, cmd: FedCmd) {
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
                self.rejoin = true;
                // This join replaces any room request still queued.
                self.queue.retain(|m| m["type"] != "room");
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

    pub(super) fn event(&self, kind: &str, resumed: Value) {
        let f = Frame::from(
            json!({"type": "event", "event": {"target": "room", "type": kind, "resumed": resumed}})
                .to_string(),
        );
        self.hub.federation_deliver(&self.sid, f);
    }

    pub(super) fn event_plain(&self, kind: &str) {
        let f = Frame::from(
            json!({"type": "event", "event": {"target": "room", "type": kind}}).to_string(),
        );
        self.hub.federation_deliver(&self.sid, f);
    }

    pub(super) async fn send_join(&mut self, ws: &mut Ws, id: Option<String>) -> Result<(), ()> {
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
    pub(super) async fn connect(&mut self) -> Result<(Ws, bool), ConnectError> {
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
        let _own = self.hub.own_dial(ws.get_ref());
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
        if ServerKind::of(&welcome["type"]) != ServerKind::Welcome || !has_federation(&features) {
            let _ = ws.close(None).await;
            return Err(ConnectError::Unsupported);
        }
        let mut resumed = false;
        if let Some(resume_id) = self.resume_id.clone() {
            self.send(&mut ws, json!({"id": hello_id(), "type": "hello", "hello": {"version": "2.0", "resumeid": resume_id, "features": self.features}})).await?;
            let reply = self.read(&mut ws, timeout).await?;
            if ServerKind::of(&reply["type"]) == ServerKind::Hello {
                resumed = true;
            } else if reply["error"]["code"] != error::NO_SUCH_SESSION {
                return Err(ConnectError::Hello(reply["error"].clone()));
            }
        }
        if !resumed {
            self.send(&mut ws, json!({"id": hello_id(), "type": "hello", "hello": {"version": "2.0", "features": self.features,
                "auth": {"type": "federation", "url": self.target.url, "params": {"token": self.target.token}}}})).await?;
            let reply = self.read(&mut ws, timeout).await?;
            if ServerKind::of(&reply["type"]) != ServerKind::Hello {
                let _ = ws.close(None).await;
                return Err(ConnectError::Hello(reply["error"].clone()));
            }
            self.remote_sid = reply["hello"]["sessionid"].as_str().map(str::to_string);
            self.resume_id = reply["hello"]["resumeid"].as_str().map(str::to_string);
        }
        Ok((ws, resumed))
    }

    pub(super) async fn send(&self, ws: &mut Ws, v: Value) -> Result<(), ConnectError> {
        ws.send(Message::Text(v.to_string().into()))
            .await
            .map_err(|e| ConnectError::Network {
                tls: false,
                message: e.to_string(),
            })
    }

    /// The next JSON message from B during the handshake.
    pub(super) async fn read(&self, ws: &mut Ws, timeout: Duration) -> Result<Value, ConnectError> {
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
    pub(super) async fn pump(&mut self, ws: &mut Ws, rx: &mut mpsc::Receiver<FedCmd>) -> Pump {
        let mut ping = tokio::time::interval(Duration::from_secs(54));
        ping.tick().await;
        let mut budget = crate::budget::Budget::new(&self.hub.config.limits);
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
                        // Not lost: sent after a resume (or refused then).
                        if self.queue.len() < QUEUE_LIMIT {
                            self.queue.insert(0, out);
                        }
                        return Pump::Broken;
                    }
                }
                m = tokio::time::timeout(Duration::from_secs(60), ws.next()) => {
                    if let Ok(Some(Ok(m))) = &m { budget.pace(&self.hub.metrics, m.len()).await; }
                    let text = match m {
                        Ok(Some(Ok(Message::Text(t)))) => t,
                        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => return Pump::Broken,
                        Ok(Some(Ok(_))) => continue,
                    };
                    let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    let kind = ServerKind::of(&v["type"]);
                    if kind == ServerKind::Bye {
                        return Pump::Broken;
                    }
                    let close = self.leaving && kind == ServerKind::Room && v["room"]["roomid"] == "";
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
}

pub(super) enum Pump {
    Closed,
    Broken,
}

pub(super) fn hello_id() -> String {
    crate::hub::session::new_id().chars().take(8).collect()
}

/// Says goodbye to B and closes the connection (errors do not matter: the
/// link ends either way).
async fn say_bye(ws: &mut Ws) {
    let bye = json!({"type": "bye", "bye": {}}).to_string();
    let _ = ws.send(Message::Text(bye.into())).await;
    let _ = ws.close(None).await;
}
