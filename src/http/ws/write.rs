//! The writing half of a connection: drains the outbox (one write per
//! batch), sends keep-alive pings, and closes with the code of the reason.

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{unix_millis, CLOSE_OVERFLOW, CLOSE_RESTART};
use crate::api::server::{frame, Bye};
use crate::http::wsframe;
use crate::hub::outbox::{CloseReason, Outbox};

/// The WebSocket close code and text for why a connection closes: the
/// hub's reasons are given their codes here, the transport's carry theirs.
fn close_code(reason: CloseReason) -> (u16, &'static str) {
    match reason {
        CloseReason::SessionEnded => (1000, "session ended"),
        CloseReason::SessionResumed => (1000, "session resumed"),
        CloseReason::Overflow => (CLOSE_OVERFLOW, "send queue full"),
        CloseReason::Restart => (CLOSE_RESTART, "service restart"),
        CloseReason::Transport(code, text) => (code, text),
    }
}

/// Writes `buf`, telling the outbox each time the socket took some of it
/// (senders wait only for recipients that make progress).
async fn write_counted<W: AsyncWrite + Unpin>(
    io: &mut W,
    mut buf: &[u8],
    outbox: &Outbox,
) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = io.write(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        outbox.wrote(n);
        buf = &buf[n..];
    }
    io.flush().await
}

/// Writes what the outbox holds and the keep-alive pings until the
/// connection closes or the server shuts down.
pub(super) async fn write_loop<W: AsyncWrite + Unpin>(
    mut io: W,
    outbox: &Arc<Outbox>,
    cancel: &CancellationToken,
    ping_interval: std::time::Duration,
    stats: &crate::metrics::GoMetrics,
) {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    loop {
        let batch = outbox.drain();
        let mut out = Vec::new();
        if let Some(p) = &batch.pong {
            wsframe::put_pong(&mut out, p);
        }
        if !batch.frames.is_empty() {
            stats.client_messages_out.inc_by(batch.frames.len() as u64);
            let bytes: usize = batch.frames.iter().map(|f| f.len()).sum();
            stats.client_bytes_out.inc_by(bytes as u64);
            out.reserve(bytes + 10 * batch.frames.len());
            for f in &batch.frames {
                wsframe::put_text(&mut out, f);
            }
        }
        drop(batch.frames);
        if let Some(c) = batch.close {
            let (code, text) = close_code(c);
            wsframe::put_close(&mut out, code, text);
        }
        // One write per batch; the buffer is freed right after.
        if !out.is_empty() && write_counted(&mut io, &out, outbox).await.is_err() {
            cancel.cancel();
            return;
        }
        drop(out);
        if batch.close.is_some() {
            let _ = io.shutdown().await;
            cancel.cancel();
            return;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                if outbox.is_closing() {
                    // Closed before the shutdown (a restart that keeps the
                    // session): what it holds, then its close code.
                    write_last(&mut io, outbox.drain()).await;
                    return;
                }
                // Server shutdown: say so, then close with "going away".
                let bye = frame(None, "bye", &Bye { reason: Some("shutdown") });
                let mut out = Vec::new();
                wsframe::put_text(&mut out, &bye);
                wsframe::put_close(&mut out, 1001, "server shutting down");
                let _ = io.write_all(&out).await;
                let _ = io.flush().await;
                let _ = io.shutdown().await;
                return;
            }
            _ = outbox.wait() => {}
            _ = ping.tick() => {
                let mut out = Vec::new();
                wsframe::put_ping(&mut out, &unix_millis().to_be_bytes());
                if io.write_all(&out).await.is_err() || io.flush().await.is_err() {
                    cancel.cancel();
                    return;
                }
            }
        }
    }
}

/// Writes the last batch of a closing outbox and its close frame.
async fn write_last<W: AsyncWrite + Unpin>(io: &mut W, batch: crate::hub::outbox::Drained) {
    let mut out = Vec::new();
    for f in &batch.frames {
        wsframe::put_text(&mut out, f);
    }
    if let Some(c) = batch.close {
        let (code, text) = close_code(c);
        wsframe::put_close(&mut out, code, text);
    }
    let _ = io.write_all(&out).await;
    let _ = io.flush().await;
    let _ = io.shutdown().await;
}
