//! Dialing B: the WebSocket handshake, the check that B speaks
//! federation, and the hello (resuming the session on B when there is
//! one). Every step has the `[federation] timeout` deadline.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::handshake::client::Response;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::link::{hello_id, Link, Ws};
use super::{dial, ConnectError, MAX_REMOTE_MESSAGE};
use crate::api::error;
use crate::api::remote::ServerKind;

impl Link {
    /// Opens the WebSocket to B: a TCP connection to the address
    /// [`dial::open`] checked, then TLS (named after the URL's host) and
    /// the upgrade over it. Every attempt is logged with its outcome; the
    /// client only ever learns that it failed.
    async fn dial(&self) -> Result<(Ws, Response), ConnectError> {
        let url = reqwest::Url::parse(&self.target.ws_url)
            .map_err(|e| ConnectError::Network(e.to_string()))?;
        let host = url.host_str().unwrap_or_default().to_string();
        let log = |addr: Option<std::net::SocketAddr>, outcome: &str| {
            let addr = addr.map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(session = %self.sid, %host, address = %addr, outcome, "federation dial");
        };
        let resolver = self.hub.federation_resolver.as_ref();
        let (stream, addr) = match dial::open(&self.hub.config.federation, resolver, &url).await {
            Ok(ok) => ok,
            Err((addr, why)) => {
                log(addr, &why);
                return Err(ConnectError::Network(why));
            }
        };
        let mut config = WebSocketConfig::default();
        config.max_message_size = Some(MAX_REMOTE_MESSAGE);
        config.max_frame_size = Some(MAX_REMOTE_MESSAGE);
        let connector = Some(tokio_tungstenite::Connector::Rustls(
            self.hub.federation_tls.clone(),
        ));
        let upgrade = tokio_tungstenite::client_async_tls_with_config(
            url.as_str(),
            stream,
            Some(config),
            connector,
        );
        let why = match tokio::time::timeout(self.timeout, upgrade).await {
            Ok(Ok(ok)) => {
                log(Some(addr), "connected");
                return Ok(ok);
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "handshake timeout".into(),
        };
        log(Some(addr), &why);
        Err(ConnectError::Network(why))
    }

    pub(super) async fn connect(&mut self) -> Result<(Ws, bool), ConnectError> {
        let timeout = self.timeout;
        let (mut ws, resp) = self.dial().await?;
        let _own = self.hub.own_dial(ws.get_ref());
        let has_federation = |list: &str| list.split(',').any(|f| f.trim() == "federation");
        let header = resp
            .headers()
            .get(crate::backend::client::HEADER_FEATURES)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !has_federation(header) {
            self.close(&mut ws).await;
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
            self.close(&mut ws).await;
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
        if !resumed && self.farewell {
            // Only a session B still has is worth a goodbye.
            self.close(&mut ws).await;
            return Err(ConnectError::Network("session gone on the remote".into()));
        }
        if !resumed {
            self.send(&mut ws, json!({"id": hello_id(), "type": "hello", "hello": {"version": "2.0", "features": self.features,
                "auth": {"type": "federation", "url": self.target.url, "params": {"token": self.target.token}}}})).await?;
            let reply = self.read(&mut ws, timeout).await?;
            if ServerKind::of(&reply["type"]) != ServerKind::Hello {
                self.close(&mut ws).await;
                return Err(ConnectError::Hello(reply["error"].clone()));
            }
            self.remote_sid = reply["hello"]["sessionid"].as_str().map(str::to_string);
            self.resume_id = reply["hello"]["resumeid"].as_str().map(str::to_string);
        }
        Ok((ws, resumed))
    }

    /// A handshake message to B, within the deadline.
    async fn send(&self, ws: &mut Ws, v: Value) -> Result<(), ConnectError> {
        let sent = tokio::time::timeout(self.timeout, ws.send(Message::Text(v.to_string().into())));
        match sent.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ConnectError::Network(e.to_string())),
            Err(_) => Err(ConnectError::Network("timeout".into())),
        }
    }

    /// Closes a connection B is not wanted on, within the deadline.
    async fn close(&self, ws: &mut Ws) {
        let _ = tokio::time::timeout(self.timeout, ws.close(None)).await;
    }

    /// The next JSON message from B during the handshake.
    async fn read(&self, ws: &mut Ws, timeout: Duration) -> Result<Value, ConnectError> {
        let broken = ConnectError::Network;
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
}
