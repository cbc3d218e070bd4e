//! A signaling client for load generation: connect from a chosen source
//! address, hello 1.0, join a room.

use std::net::{IpAddr, SocketAddr};

use anyhow::{bail, Context};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// A connected, authenticated client.
pub struct Conn {
    pub sink: SplitSink<Ws, Message>,
    pub stream: SplitStream<Ws>,
    pub session_id: String,
}

/// Where to connect and which backend URL to name in hello.
#[derive(Clone)]
pub struct Target {
    pub url: String,
    pub addr: SocketAddr,
    pub backend_url: String,
    /// Bytes of each connection's read buffer (tungstenite allocates and
    /// fills it per connection: 128 KiB by default).
    pub read_buffer: usize,
}

impl Target {
    pub fn new(url: &str, backend_url: &str, read_buffer: usize) -> anyhow::Result<Target> {
        let hostport = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .context("bad url")?;
        let addr: SocketAddr = hostport.parse().context("url must be ws://IP:PORT/...")?;
        Ok(Target {
            url: url.to_string(),
            addr,
            backend_url: backend_url.to_string(),
            read_buffer,
        })
    }
}

async fn next_json(stream: &mut SplitStream<Ws>) -> anyhow::Result<Value> {
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("read error: {e}"),
            None => bail!("connection ended"),
        }
    }
}

/// Reads until a message of `kind` arrives (skipping welcome and events).
pub async fn wait_type(stream: &mut SplitStream<Ws>, kind: &str) -> anyhow::Result<Value> {
    loop {
        let m = next_json(stream).await?;
        if m["type"] == kind {
            return Ok(m);
        }
        if m["type"] == "error" {
            bail!("server error: {m}");
        }
    }
}

/// Connects from `source` and says hello as `user`.
pub async fn connect(target: &Target, source: IpAddr, user: &str) -> anyhow::Result<Conn> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(target.read_buffer);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(target.url.as_str(), tcp, Some(config)).await?;
    let (mut sink, mut stream) = ws.split();
    let hello = json!({"id": "1", "type": "hello", "hello": {"version": "1.0", "auth": {"url": target.backend_url, "params": {"userid": user}}}});
    sink.send(Message::Text(hello.to_string().into())).await?;
    let m = wait_type(&mut stream, "hello").await?;
    let session_id = m["hello"]["sessionid"]
        .as_str()
        .context("no sessionid")?
        .to_string();
    Ok(Conn {
        sink,
        stream,
        session_id,
    })
}

impl Conn {
    /// Joins `room` and waits for the reply.
    pub async fn join(&mut self, room: &str) -> anyhow::Result<()> {
        let msg = json!({"id": "2", "type": "room", "room": {"roomid": room, "sessionid": format!("nc-{}", self.session_id)}});
        self.sink
            .send(Message::Text(msg.to_string().into()))
            .await?;
        wait_type(&mut self.stream, "room").await?;
        Ok(())
    }
}

/// What the readers need of a server message; everything else (SDPs,
/// candidates) is skipped without being copied.
#[derive(serde::Deserialize)]
pub struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    pub message: Option<IncomingMessage<'a>>,
}

/// The `message` part of a server message.
#[derive(serde::Deserialize)]
pub struct IncomingMessage<'a> {
    #[serde(borrow)]
    pub data: Option<IncomingData<'a>>,
}

/// The load generator's own fields in a message's `data`.
#[derive(serde::Deserialize)]
pub struct IncomingData<'a> {
    /// Send time (ns since the load generator started).
    pub t: Option<u64>,
    /// Index of the sending client.
    pub from: Option<u64>,
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<&'a str>,
}

impl Incoming<'_> {
    /// `(t, from, kind)` of a `message` sent by the load generator.
    pub fn stamp(&self) -> Option<(u64, usize, &str)> {
        let d = self.message.as_ref()?.data.as_ref()?;
        Some((d.t?, d.from? as usize, d.kind.unwrap_or("")))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_stamp_and_skips_the_rest() {
        let text = r#"{"type":"message","message":{"sender":{"type":"session","sessionid":"x"},"data":{"t":12,"from":3,"type":"offer","payload":{"sdp":"v=0\r\n"}}}}"#;
        let m: super::Incoming = serde_json::from_str(text).unwrap();
        assert_eq!(m.kind, "message");
        assert_eq!(m.stamp(), Some((12, 3, "offer")));
        let m: super::Incoming =
            serde_json::from_str(r#"{"type":"error","error":{"code":"x"}}"#).unwrap();
        assert_eq!((m.kind, m.stamp()), ("error", None));
    }
}
