//! One WebSocket connection: the upgrade handshake, a reader that parses
//! client messages and hands them to the hub, and a writer that drains the
//! outbox (one write per batch) and sends keep-alive pings. Both run in one
//! task. The wire format is in [`super::wsframe`].

mod read;
mod write;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use super::wsframe::FrameReader;
use super::{features_header, AppState};
use crate::backend::client::HEADER_FEATURES;
use crate::hub::throttle::Peer;
use crate::hub::Hub;
use read::read_loop;
use write::write_loop;

/// Close code for frames over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a client that does not read fast enough ("try again later").
pub const CLOSE_OVERFLOW: u16 = 1013;
/// Close code of a restart that keeps the sessions ("service restart"):
/// resume on the restarted server.
pub const CLOSE_RESTART: u16 = 1012;

/// True if the comma-separated header `name` holds `token` (any case).
fn header_has(headers: &axum::http::HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// `GET /spreed`: checks the WebSocket handshake (RFC 6455 4.2.1), answers
/// 101 and hands the upgraded socket to [`serve`] in a task of its own.
pub async fn upgrade(State(state): State<AppState>, mut req: Request) -> Response {
    if state.hub.draining() {
        // A kept-alive connection of a proxy may still ask: new sessions
        // go elsewhere.
        return (StatusCode::SERVICE_UNAVAILABLE, "server is draining").into_response();
    }
    let headers = req.headers();
    if !header_has(headers, header::UPGRADE, "websocket")
        || !header_has(headers, header::CONNECTION, "upgrade")
    {
        return (StatusCode::BAD_REQUEST, "WebSocket upgrade expected").into_response();
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        let mut r = (
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 expected",
        )
            .into_response();
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return (StatusCode::BAD_REQUEST, "Sec-WebSocket-Key missing").into_response();
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let socket_peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let trusted = &state.hub.live().app.trusted_proxies;
    let client = super::forwarded::client_ip(socket_peer, headers, trusted);
    let peer = client.map(super::forwarded::ClientIp::counted);
    if header_has(
        headers,
        header::SEC_WEBSOCKET_PROTOCOL,
        super::janus_events::SUBPROTOCOL,
    ) {
        // Janus's event handler, not a client.
        let on_upgrade = hyper::upgrade::on(&mut req);
        let known = client.and_then(super::forwarded::ClientIp::known);
        let shutdown = state.shutdown.child_token();
        let hub = state.hub.clone();
        return super::janus_events::upgrade(
            hub,
            &state.tracker,
            shutdown,
            on_upgrade,
            &accept,
            known,
        );
    }
    // A client behind a trusted proxy is held to the per-address cap by
    // the address the proxy names (the proxy itself is exempt); one the
    // proxy could not name, by the proxy's address.
    let cap = state.hub.config.http.max_connections_per_ip;
    let named = match (socket_peer, client) {
        (_, Some(super::forwarded::ClientIp::Unknown(hop))) => Some(hop),
        (Some(s), Some(super::forwarded::ClientIp::Known(real))) if s.ip() != real => Some(real),
        _ => None,
    };
    let forwarded = match named {
        Some(real) => match state.hub.conn_counts.admit_forwarded(real, cap) {
            Some(slot) => Some(slot),
            None => {
                state.hub.metrics.refuse("connections_per_ip");
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections from this address",
                )
                    .into_response();
            }
        },
        _ => None,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let hub = state.hub.clone();
    let shutdown = state.shutdown.child_token();
    state.tracker.spawn(async move {
        let _slot = forwarded;
        match on_upgrade.await {
            Ok(upgraded) => {
                let peer = Peer {
                    ip: peer,
                    known: client.and_then(super::forwarded::ClientIp::known),
                    socket: socket_peer,
                };
                serve(hub, TokioIo::new(upgraded), shutdown, peer).await
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(HEADER_FEATURES, features_header(&state.hub));
    resp
}

/// Runs one connection until it closes or the server shuts down.
pub async fn serve<IO>(hub: Arc<Hub>, io: IO, cancel: CancellationToken, peer: Peer)
where
    IO: tokio::io::AsyncRead + AsyncWrite + Send + 'static,
{
    // Every log line of this connection carries the client address and,
    // once known, the session id and backend.
    let span = tracing::info_span!(
        "conn",
        client = peer.ip.map(tracing::field::display),
        session = tracing::field::Empty,
        backend = tracing::field::Empty,
    );
    let outbox = hub.new_outbox();
    outbox.push(hub.welcome_frame());
    let (rd, wr) = tokio::io::split(io);
    let limits = &hub.config.limits;
    // The two futures are made in the awaited expression itself: held in
    // locals first, their storage would stay in this future beside the
    // joined copies (doubling every idle connection's task).
    tracing::Instrument::instrument(
        futures_util::future::join(
            read_loop(
                &hub,
                FrameReader::new(rd, limits.max_message_size),
                &outbox,
                &cancel,
                peer,
            ),
            write_loop(wr, &outbox, &cancel, limits.ping_interval, &hub.metrics.go),
        ),
        span,
    )
    .await;
}

/// Milliseconds since the Unix epoch (the payload of the server's pings).
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The round trip in milliseconds of a pong that answers one of our pings
/// (its payload is the time the ping was sent); None for other pongs.
fn ping_rtt(payload: &[u8]) -> Option<f64> {
    let sent = u64::from_be_bytes(payload.try_into().ok()?);
    let rtt = unix_millis().checked_sub(sent)?;
    // A pong of a ping from this process's lifetime, not a made-up one.
    (rtt < 3_600_000).then_some(rtt as f64)
}

#[cfg(test)]
mod size_tests {
    /// Every connection's task embeds the reader's and writer's futures;
    /// keep them small (idle memory per session is a budget).
    #[test]
    fn the_connection_reader_future_stays_small() {
        fn size<F: std::future::Future>(_: &F) -> usize {
            std::mem::size_of::<F>()
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let cfg = crate::config::Config::parse("[sessions]\nhashkey=x\n").unwrap();
            let hub = crate::hub::Hub::new(
                std::sync::Arc::new(cfg),
                crate::metrics::Metrics::new(),
                std::sync::Arc::new(crate::bus::LocalBus::new()),
            )
            .unwrap();
            let outbox = hub.new_outbox();
            let cancel = tokio_util::sync::CancellationToken::new();
            let stream = futures_util::stream::empty::<
                Result<crate::http::wsframe::Incoming, crate::http::wsframe::WsError>,
            >();
            let n = size(&super::read_loop(
                &hub,
                stream,
                &outbox,
                &cancel,
                Default::default(),
            ));
            eprintln!("reader future: {n} bytes");
            let (a, _b) = tokio::io::duplex(64);
            let (_r, w) = tokio::io::split(a);
            let wn = size(&super::write_loop(
                w,
                &outbox,
                &cancel,
                std::time::Duration::from_secs(1),
                &hub.metrics.go,
            ));
            eprintln!("writer future: {wn} bytes");
            let (a, _b) = tokio::io::duplex(64);
            let sn = size(&super::serve(
                hub.clone(),
                a,
                cancel.clone(),
                Default::default(),
            ));
            eprintln!("serve future: {sn} bytes");
            // Reader and writer once each, not twice (see `serve`).
            assert!(sn <= n + wn + 512, "serve future is {sn} bytes");
            assert!(n <= 1024, "reader future is {n} bytes");
        });
    }
}
