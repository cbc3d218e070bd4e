//! Clients on connections the test shapes itself: from a chosen loopback
//! address, with a small receive buffer, over TLS, or with the headers a
//! reverse proxy would add.

use std::net::SocketAddr;

use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::MaybeTlsStream;

use super::*;

/// A TCP connection to `to` from the loopback address `from`.
pub async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// The upgrade request for `url` with `headers` added.
pub fn request_with(url: &str, headers: &[(&'static str, &str)]) -> Request {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(*k, v.parse().unwrap());
    }
    req
}

impl Client {
    /// The WebSocket upgrade of `req` over an open connection; welcome
    /// consumed.
    pub async fn over(
        req: impl IntoClientRequest + Unpin,
        stream: MaybeTlsStream<TcpStream>,
    ) -> Client {
        let (ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
        let mut c = Client::from_ws(ws);
        c.expect_type("welcome").await;
        c
    }

    /// The WebSocket upgrade of `req`: the client (nothing read yet), or
    /// the HTTP status that refused it.
    pub async fn upgrade(req: Request) -> Result<Client, u16> {
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Client::from_ws(ws)),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(e) => panic!("{e}"),
        }
    }
}

impl TestServer {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().addr
    }

    /// A client on the open connection `tcp`, hello done as `user`.
    pub async fn client_over(&self, tcp: TcpStream, user: &str) -> Client {
        let mut c = Client::over(self.ws_url(), MaybeTlsStream::Plain(tcp)).await;
        c.hello_v1(&self.nc.backend_url(), json!({"userid": user}))
            .await;
        c
    }

    /// A member of `room` whose socket has a tiny kernel receive buffer:
    /// once the test stops reading it, the server's send queue for it
    /// fills.
    pub async fn slow_member(&self, user: &str, room: &str) -> Client {
        let s = TcpSocket::new_v4().unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        let tcp = s.connect(self.addr()).await.unwrap();
        let mut c = self.client_over(tcp, user).await;
        c.join(room, &format!("nc-{user}")).await;
        c
    }
}
