//! The accept loop: hyper's HTTP/1 connection with a header read timeout
//! (which also ends idle kept-alive connections), caps on open connections
//! in all and per client address, and the client address as
//! [`ConnectInfo`] for the handlers. A connection over a cap is closed right
//! after accept, before anything is read.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpLimits;
use crate::metrics::Metrics;

/// Open connections, in all and per address.
#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Releases a connection's place in [`Counts`] when the socket is dropped
/// (for a WebSocket: when the upgraded connection ends).
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let Some(n) = c.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
        }
    }
}

/// Bytes a connection collects before it writes them without a flush.
const COALESCE_MAX: usize = 64 * 1024;

/// A TCP stream that holds its connection slot and coalesces the writes
/// between two flushes into one system call (with `TCP_NODELAY`, each
/// write would otherwise be a TCP segment of its own: tungstenite writes a
/// batch of frames in pieces of its small write buffer). The buffer is
/// released after each flush, so an idle connection holds none.
struct Counted {
    stream: TcpStream,
    pending: Vec<u8>,
    _slot: Slot,
}

impl Counted {
    fn new(stream: TcpStream, slot: Slot) -> Self {
        Counted {
            stream,
            pending: Vec::new(),
            _slot: slot,
        }
    }

    /// Writes out what was collected; frees the buffer when done.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.stream).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        self.pending = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // Best effort for bytes written without a flush (tungstenite's
        // answer to a client's close frame).
        if !self.pending.is_empty() {
            let _ = self.stream.try_write(&self.pending);
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.pending.len() + buf.len() > COALESCE_MAX {
            std::task::ready!(this.poll_drain(cx))?;
            if buf.len() > COALESCE_MAX {
                return Pin::new(&mut this.stream).poll_write(cx, buf);
            }
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if this.pending.len() + len > COALESCE_MAX {
            std::task::ready!(this.poll_drain(cx))?;
            if len > COALESCE_MAX {
                return Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
            }
        }
        for b in bufs {
            this.pending.extend_from_slice(b);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Takes a slot for a new connection from `ip`, or says which cap refused it.
fn admit(
    counts: &Arc<Mutex<Counts>>,
    limits: &HttpLimits,
    ip: IpAddr,
) -> Result<Slot, &'static str> {
    let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
    if limits.max_connections > 0 && c.total >= limits.max_connections {
        return Err("connections");
    }
    let per_ip = limits.max_connections_per_ip > 0 && !limits.proxy_ips.contains(ip);
    if per_ip {
        let n = c.per_ip.entry(ip).or_default();
        if *n >= limits.max_connections_per_ip {
            return Err("connections_per_ip");
        }
        *n += 1;
    }
    c.total += 1;
    Ok(Slot {
        counts: counts.clone(),
        ip: per_ip.then_some(ip),
    })
}

/// Serves `app` on `listener` until `shutdown`; then lets the connections
/// finish their requests and waits for them (upgraded WebSockets are
/// tracked elsewhere).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    limits: HttpLimits,
    metrics: Metrics,
) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let conns = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little
                    // rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match admit(&counts, &limits, peer.ip()) {
            Ok(s) => s,
            Err(limit) => {
                metrics.refuse(limit);
                tracing::debug!(%peer, limit, "connection refused");
                drop(stream);
                continue;
            }
        };
        // Signaling frames are small and latency-bound: without
        // TCP_NODELAY a small write waits for the ACK of the previous one
        // (Nagle's algorithm), which the peer may delay by 40 ms.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, "cannot set TCP_NODELAY: {e}");
        }
        let io = TokioIo::new(Counted::new(stream, slot));
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, req).await }
        });
        let shutdown = shutdown.clone();
        let read_timeout = limits.read_timeout;
        conns.spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, "http connection ended: {e}");
                    }
                }
                _ = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

/// The address of the client behind a request: the peer, or when the peer
/// is a trusted proxy (`[http] proxyips`) the address it passes in
/// `X-Real-IP` or as the last `X-Forwarded-For` entry.
pub fn real_client_ip(
    peer: Option<SocketAddr>,
    headers: &axum::http::HeaderMap,
    proxies: &crate::config::IpList,
) -> Option<IpAddr> {
    let ip = peer?.ip();
    if !proxies.contains(ip) {
        return Some(ip);
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok())
    };
    header("x-real-ip")
        .or_else(|| header("x-forwarded-for"))
        .or(Some(ip))
}

/// The client address of a request (from the accept loop).
pub fn client_ip(ci: Option<&ConnectInfo<SocketAddr>>) -> Option<IpAddr> {
    ci.map(|c| c.0.ip())
}

#[cfg(test)]
mod coalesce_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_go_out_together_at_the_flush_and_the_buffer_is_freed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted, client) = tokio::join!(listener.accept(), TcpStream::connect(addr));
        let (server, _) = accepted.unwrap();
        let mut client = client.unwrap();
        let slot = Slot {
            counts: Arc::new(Mutex::new(Counts::default())),
            ip: None,
        };
        let mut io = Counted::new(server, slot);
        io.write_all(b"one ").await.unwrap();
        io.write_all(b"two").await.unwrap();
        // Nothing was written to the socket before the flush.
        assert_eq!(io.pending, b"one two");
        let mut buf = [0u8; 16];
        assert_eq!(
            client.try_read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        io.flush().await.unwrap();
        assert_eq!(io.pending.capacity(), 0);
        let mut got = vec![0u8; 7];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"one two");
        // A write larger than the limit goes out without being copied.
        let big = vec![7u8; COALESCE_MAX + 1];
        io.write_all(&big).await.unwrap();
        assert!(io.pending.is_empty());
        let mut got = vec![0u8; big.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
    }
}
