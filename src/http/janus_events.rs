//! `/spreed` with the subprotocol `janus-events`: Janus's WebSocket event
//! handler (as with the Go server). Only loopback and private addresses
//! may connect (else closed with 1008, as Go); without `[mcu]` the
//! connection is closed with 1011. Events go to [`EventsHandler`]; the
//! server pings every 30 s and ends a connection silent for 90 s or that
//! takes no write (ping, pong) for 10 s (Go's `writeWait`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::mcu::events::EventsHandler;

/// The subprotocol of Janus's WebSocket event handler.
pub const SUBPROTOCOL: &str = "janus-events";
/// Largest message from Janus (a group of events).
const MAX_MESSAGE: usize = 4 << 20;
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENT_FOR: Duration = Duration::from_secs(90);
/// A write (ping, pong) that makes no progress for this long ends the
/// connection (Go's `writeWait`).
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// True for loopback and private (RFC 1918, unique local) addresses.
fn local_or_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.is_loopback() || v4.is_private(),
            None => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        },
    }
}

/// Answers the upgrade (101 with the subprotocol) and runs the
/// connection in a task of its own. `client` is the client's address (as
/// a trusted proxy names it).
pub fn upgrade(
    hub: Arc<Hub>,
    tracker: &tokio_util::task::TaskTracker,
    shutdown: CancellationToken,
    on_upgrade: hyper::upgrade::OnUpgrade,
    accept: &str,
    client: Option<IpAddr>,
) -> Response {
    tracker.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        serve(hub, ws, shutdown, client).await;
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    resp
}

async fn close<S>(mut ws: WebSocketStream<S>, code: CloseCode, reason: &'static str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
}

async fn serve<S>(
    hub: Arc<Hub>,
    mut ws: WebSocketStream<S>,
    shutdown: CancellationToken,
    client: Option<IpAddr>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(mcu) = hub.mcu().cloned() else {
        return close(ws, CloseCode::Error, "no mcu configured").await;
    };
    if !client.is_some_and(local_or_private) {
        tracing::warn!(client = ?client, "Janus events from an address that is neither loopback nor private, closing");
        return close(
            ws,
            CloseCode::Policy,
            "only loopback and private connections allowed",
        )
        .await;
    }
    tracing::info!(client = ?client, "processing Janus events");
    let mut handler = EventsHandler::new(mcu, hub.metrics.media.clone());
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                close(ws, CloseCode::Away, "shutdown").await;
                break;
            }
            _ = ping.tick() => {
                let sent = tokio::time::timeout(WRITE_DEADLINE, ws.send(Message::Ping(Default::default())));
                if heard.elapsed() > SILENT_FOR || !matches!(sent.await, Ok(Ok(()))) {
                    break;
                }
            }
            m = ws.next() => {
                heard = tokio::time::Instant::now();
                match m {
                    Some(Ok(Message::Text(t))) => {
                        if !handler.process_text(t.as_str()) {
                            tracing::warn!("unreadable message from Janus's event handler");
                        }
                    }
                    // Pongs to our pings go out with the next write.
                    Some(Ok(Message::Ping(_))) => {
                        if !matches!(tokio::time::timeout(WRITE_DEADLINE, ws.flush()).await, Ok(Ok(()))) {
                            tracing::info!(client = ?client, "Janus events connection takes no writes, closing");
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::info!("Janus events connection: {e}");
                        break;
                    }
                }
            }
        }
    }
    handler.finish();
    tracing::info!(client = ?client, "Janus events connection closed");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_and_private_addresses() {
        for ok in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(local_or_private(ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "8.8.8.8",
            "172.32.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "fe80::1",
        ] {
            assert!(!local_or_private(no.parse().unwrap()), "{no}");
        }
    }
}
