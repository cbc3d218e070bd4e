//! A fake remote signaling server for federation tests: upgrades with
//! `federation` in its features header, says welcome, answers any hello and
//! the first room join (or the resume hello), then hands the connection to
//! the test (which may stop reading it, or drop it). It counts the
//! connections it accepted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type RemoteWs = WebSocketStream<TcpStream>;

pub struct FakeRemote {
    /// `http://127.0.0.1:port/`, as a client names a signaling server.
    pub url: String,
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub accepts: Arc<AtomicUsize>,
    /// Connections that got as far as a room join, with the peer address.
    pub joined: mpsc::UnboundedReceiver<(SocketAddr, RemoteWs)>,
}

impl FakeRemote {
    /// Listens on `ip`; `small_buffer` makes the accepted sockets' receive
    /// buffer small, so a peer's writes block soon once nobody reads.
    pub async fn start(ip: &str, small_buffer: bool) -> FakeRemote {
        let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4().unwrap()
        } else {
            tokio::net::TcpSocket::new_v6().unwrap()
        };
        if small_buffer {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        socket.bind(addr).unwrap();
        let listener = socket.listen(64).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepts = Arc::new(AtomicUsize::new(0));
        let (tx, joined) = mpsc::unbounded_channel();
        let counter = accepts.clone();
        tokio::spawn(async move {
            while let Ok((tcp, peer)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Some(ws) = handshake(tcp).await {
                        let _ = tx.send((peer, ws));
                    }
                });
            }
        });
        let host = match addr {
            SocketAddr::V4(a) => a.to_string(),
            SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
        };
        FakeRemote {
            url: format!("http://{host}/"),
            addr,
            accepts,
            joined,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// Welcome, hello and the first room join or a resume (messages before it are read
/// and ignored); None when the peer went away first.
// The callback's type is tungstenite's (its error is an HTTP response).
#[allow(clippy::result_large_err)]
async fn handshake(tcp: TcpStream) -> Option<RemoteWs> {
    let add_header = |_: &Request, mut resp: Response| {
        resp.headers_mut().insert(
            "X-Spreed-Signaling-Features",
            "federation, hello-v2".parse().unwrap(),
        );
        Ok(resp)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, add_header)
        .await
        .ok()?;
    send(
        &mut ws,
        json!({"type": "welcome", "welcome": {"features": ["federation", "hello-v2"]}}),
    )
    .await?;
    loop {
        let m = next(&mut ws).await?;
        match m["type"].as_str() {
            Some("hello") => {
                let reply = json!({"id": m["id"], "type": "hello", "hello": {"sessionid": "remote-session", "resumeid": "remote-resume", "userid": "alice", "version": "2.0"}});
                send(&mut ws, reply).await?;
                if !m["hello"]["resumeid"].is_null() {
                    return Some(ws);
                }
            }
            Some("room") => {
                let reply = json!({"id": m["id"], "type": "room", "room": {"roomid": m["room"]["roomid"], "properties": {"name": "remote"}}});
                send(&mut ws, reply).await?;
                return Some(ws);
            }
            _ => {}
        }
    }
}

async fn send(ws: &mut RemoteWs, v: Value) -> Option<()> {
    ws.send(Message::Text(v.to_string().into())).await.ok()
}

async fn next(ws: &mut RemoteWs) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// True while a process holds the TCP socket `local` -> `remote` (it is in
/// the kernel's table with an owner; a closed socket whose unsent data
/// the kernel still tries to deliver has inode 0).
pub fn tcp_socket_held(local: SocketAddr, remote: SocketAddr) -> bool {
    let table = if local.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(table).unwrap();
    let (l, r) = (proc_addr(local), proc_addr(remote));
    text.lines().skip(1).any(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        f.len() > 9 && f[1] == l && f[2] == r && f[9] != "0"
    })
}

/// An address as `/proc/net/tcp{,6}` prints it.
fn proc_addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(v6) => {
            let o = v6.ip().octets();
            let words: String = o
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            format!("{words}:{:04X}", v6.port())
        }
    }
}
