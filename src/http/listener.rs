//! The accept loop of each listener (`[http]` and `[https]`): hyper's
//! HTTP/1 connection with a header read timeout (which also ends idle
//! kept-alive connections), a write timeout, the TLS handshake for
//! `[https]`, caps on open connections in all and per client address
//! (shared by both listeners), and the client address as [`ConnectInfo`]
//! for the handlers. A connection over a cap is closed right after accept,
//! before anything is read.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
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

use super::tls::Tls;
use crate::config::{HttpLimits, ListenerTimeouts, Live};
use crate::conn_counts::{ConnCounts, Slot};
use crate::metrics::Metrics;

/// Bytes a connection collects before it writes them without a flush.
const COALESCE_MAX: usize = 64 * 1024;

/// A TCP stream that holds its connection slot and coalesces the writes
/// between two flushes into one system call (with `TCP_NODELAY`, each
/// write would otherwise be a TCP segment of its own: tungstenite writes a
/// batch of frames in pieces of its small write buffer). The buffer is
/// released after each flush, so an idle connection holds none.
///
/// A write to the socket that makes no progress for the write timeout
/// fails (and so ends the connection): a client that stops reading does
/// not hold its connection and buffers forever.
struct Counted {
    stream: TcpStream,
    pending: Vec<u8>,
    write_timeout: Duration,
    /// Running while a write to the socket waits.
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    _slot: Slot,
}

/// Passes on the result of a socket write; while it is pending, runs the
/// write timeout and fails once it expired.
fn watch<T>(
    stall: &mut Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
    cx: &mut Context<'_>,
    r: Poll<std::io::Result<T>>,
) -> Poll<std::io::Result<T>> {
    match r {
        Poll::Ready(r) => {
            *stall = None;
            Poll::Ready(r)
        }
        Poll::Pending => {
            let sleep = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            match sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write timeout",
                ))),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl Counted {
    fn new(stream: TcpStream, slot: Slot, write_timeout: Duration) -> Self {
        Counted {
            stream,
            pending: Vec::new(),
            write_timeout,
            stall: None,
            _slot: slot,
        }
    }

    /// Writes out what was collected; frees the buffer when done.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            let r = Pin::new(&mut self.stream).poll_write(cx, &self.pending);
            let n = std::task::ready!(watch(&mut self.stall, self.write_timeout, cx, r))?;
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
                let r = Pin::new(&mut this.stream).poll_write(cx, buf);
                return watch(&mut this.stall, this.write_timeout, cx, r);
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
                let r = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
                return watch(&mut this.stall, this.write_timeout, cx, r);
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

/// What the listeners of one server share: the connection caps and their
/// counts, the settings SIGHUP replaces, the metrics.
#[derive(Clone)]
pub struct Shared {
    counts: ConnCounts,
    limits: HttpLimits,
    live: Live,
    metrics: Metrics,
}

impl Shared {
    /// Caps from `limits`, counted in `counts`; trusted proxies from
    /// `live` as they are at each accept.
    pub fn new(limits: HttpLimits, counts: ConnCounts, live: Live, metrics: Metrics) -> Self {
        Shared {
            counts,
            limits,
            live,
            metrics,
        }
    }
}

/// One listening socket: plain HTTP, or HTTPS with `tls`.
pub struct Listener {
    /// The bound socket.
    pub tcp: TcpListener,
    /// The TLS configuration for `[https]`.
    pub tls: Option<Arc<Tls>>,
    /// `readtimeout` / `writetimeout` of its section.
    pub timeouts: ListenerTimeouts,
}

/// Takes a slot for a new connection from `ip`, or says which cap refused it.
fn admit(shared: &Shared, ip: IpAddr) -> Result<Slot, &'static str> {
    let trusted = shared.live.load().app.trusted_proxies.contains(ip);
    shared.counts.admit(ip, &shared.limits, trusted)
}

/// Serves `app` on `listener` until `stop_accepting` (a drain, or a child
/// of `shutdown`): then closes the listening socket, so new connections
/// are refused, and serves the accepted connections on until `shutdown`
/// (or until they end), waiting for them (upgraded WebSockets are tracked
/// elsewhere).
pub async fn serve(
    listener: Listener,
    app: Router,
    stop_accepting: CancellationToken,
    shutdown: CancellationToken,
    shared: Shared,
) {
    let conns = TaskTracker::new();
    let timeouts = listener.timeouts;
    let counters = TimeoutCounters {
        header: shared.metrics.refusals("header_timeout"),
        write: shared.metrics.refusals("write_timeout"),
    };
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop_accepting.cancelled() => break,
            r = listener.tcp.accept() => match r {
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
        let slot = match admit(&shared, peer.ip()) {
            Ok(s) => s,
            Err(limit) => {
                shared.metrics.refuse(limit);
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
        let io = Counted::new(stream, slot, timeouts.write);
        let app = app.clone();
        let shutdown = shutdown.clone();
        match &listener.tls {
            None => {
                let c = counters.clone();
                conns.spawn(serve_connection(io, app, peer, shutdown, timeouts.read, c));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                let metrics = shared.metrics.clone();
                let counters = counters.clone();
                conns.spawn(async move {
                    // The handshake is bounded like reading a request.
                    match tokio::time::timeout(timeouts.read, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => {
                            let read = timeouts.read;
                            serve_connection(tls, app, peer, shutdown, read, counters).await
                        }
                        Ok(Err(e)) => {
                            metrics.refuse("tls_handshake");
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                        }
                        Err(_) => {
                            metrics.refuse("tls_handshake");
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

/// Serves HTTP/1 requests (and upgrades) on one accepted connection.
async fn serve_connection<I>(
    io: I,
    app: Router,
    peer: SocketAddr,
    shutdown: CancellationToken,
    read_timeout: Duration,
    counters: TimeoutCounters,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let mut app = app.clone();
        async move { tower_service::Service::call(&mut app, req).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                // A request's headers (or the next request on a kept-alive
                // connection) did not come within `readtimeout`, or a write
                // made no progress for `writetimeout`: the connection is
                // closed and counted.
                if e.is_timeout() {
                    counters.header.inc();
                } else if io_timed_out(&e) {
                    counters.write.inc();
                }
                tracing::debug!(%peer, "http connection ended: {e}");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Connections closed by a timeout (`signaling_limits_refused_total`).
#[derive(Clone)]
struct TimeoutCounters {
    header: prometheus::IntCounter,
    write: prometheus::IntCounter,
}

/// True when an I/O timeout (the write timeout of [`Counted`]) is among
/// the causes of `e`.
fn io_timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    false
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
        let slot = ConnCounts::default()
            .admit_forwarded(IpAddr::from([127, 0, 0, 1]), 0)
            .unwrap();
        let mut io = Counted::new(server, slot, Duration::from_secs(5));
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
