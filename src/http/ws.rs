//! One WebSocket connection: the upgrade handshake, a reader that parses
//! client messages and hands them to the hub, and a writer that drains the
//! outbox (one write per batch) and sends keep-alive pings. Both run in one
//! task. The wire format is in [`super::wsframe`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::wsframe::{self, FrameReader, Incoming, WsError};
use super::{features_header, AppState};
use crate::api::client::{ClientKind, ClientMessage, IdOnly};
use crate::api::error::{self, ProtocolError};
use crate::api::server::{error_frame, frame, Bye};
use crate::backend::client::HEADER_FEATURES;
use crate::hub::outbox::{CloseReason, Outbox};
use crate::hub::{invalid_format, HelloOk, Hub};

/// Close code for frames over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code for a client that does not read fast enough ("try again later").
pub const CLOSE_OVERFLOW: u16 = 1013;

/// The WebSocket close code and text for why a connection closes: the
/// hub's reasons are given their codes here, the transport's carry theirs.
fn close_code(reason: CloseReason) -> (u16, &'static str) {
    match reason {
        CloseReason::SessionEnded => (1000, "session ended"),
        CloseReason::SessionResumed => (1000, "session resumed"),
        CloseReason::Overflow => (CLOSE_OVERFLOW, "send queue full"),
        CloseReason::Transport(code, text) => (code, text),
    }
}

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
    let peer = super::listener::real_client_ip(socket_peer, headers, trusted);
    // A client behind a trusted proxy is held to the per-address cap by
    // the address the proxy names (the proxy itself is exempt).
    let cap = state.hub.config.http.max_connections_per_ip;
    let forwarded = match (socket_peer, peer) {
        (Some(s), Some(real)) if s.ip() != real => {
            match state.hub.conn_counts.admit_forwarded(real, cap) {
                Some(slot) => Some(slot),
                None => {
                    state.hub.metrics.refuse("connections_per_ip");
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many connections from this address",
                    )
                        .into_response();
                }
            }
        }
        _ => None,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let hub = state.hub.clone();
    let shutdown = state.shutdown.child_token();
    state.tracker.spawn(async move {
        let _slot = forwarded;
        match on_upgrade.await {
            Ok(upgraded) => serve(hub, TokioIo::new(upgraded), shutdown, peer).await,
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
pub async fn serve<IO>(
    hub: Arc<Hub>,
    io: IO,
    cancel: CancellationToken,
    peer: Option<std::net::IpAddr>,
) where
    IO: tokio::io::AsyncRead + AsyncWrite + Send + 'static,
{
    // Every log line of this connection carries the client address and,
    // once known, the session id and backend.
    let span = tracing::info_span!(
        "conn",
        client = peer.map(tracing::field::display),
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

/// Token bucket for client messages.
/// What a connection may send: token buckets for messages and bytes. A
/// message is always accepted (never dropped); a connection that went over
/// its budget is simply not read until the budget refilled, so TCP holds
/// the client back and a flood cannot take more than its share.
struct Budget {
    messages: f64,
    bytes: f64,
    message_rate: f64,
    byte_rate: f64,
    message_burst: f64,
    byte_burst: f64,
    last: Instant,
}

impl Budget {
    fn new(limits: &crate::config::ClientLimits) -> Self {
        Budget {
            messages: limits.message_burst as f64,
            bytes: limits.byte_burst as f64,
            message_rate: limits.messages_per_second as f64,
            byte_rate: limits.bytes_per_second as f64,
            message_burst: limits.message_burst as f64,
            byte_burst: limits.byte_burst as f64,
            last: Instant::now(),
        }
    }

    /// Takes one message of `len` bytes; returns how long to stop reading
    /// until the budget is back to zero (None when it is not in debt).
    fn take(&mut self, now: Instant, len: usize) -> Option<std::time::Duration> {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.messages = (self.messages + elapsed * self.message_rate).min(self.message_burst) - 1.0;
        self.bytes = (self.bytes + elapsed * self.byte_rate).min(self.byte_burst) - len as f64;
        let wait = (-self.messages / self.message_rate).max(-self.bytes / self.byte_rate);
        (wait > 0.0).then(|| std::time::Duration::from_secs_f64(wait))
    }
}

async fn read_loop<S>(
    hub: &Arc<Hub>,
    mut stream: S,
    outbox: &Arc<Outbox>,
    cancel: &CancellationToken,
    peer: Option<std::net::IpAddr>,
) where
    S: futures_util::Stream<Item = Result<Incoming, WsError>> + Unpin,
{
    let limits = &hub.config.limits;
    let mut session: Option<Arc<str>> = None;
    let mut is_guest = false;
    let mut hello_deadline = Some(Instant::now() + limits.hello_timeout);
    let mut room_deadline: Option<Instant> = None;
    let mut last_read = Instant::now();
    let mut budget = Budget::new(limits);
    // One timer for the connection, re-armed lazily: reads only move
    // `last_read`; when the timer fires early it is set to the real deadline.
    let timer = tokio::time::sleep(limits.read_timeout);
    tokio::pin!(timer);
    let mut armed_for = last_read + limits.read_timeout;
    for d in [hello_deadline, room_deadline].into_iter().flatten() {
        armed_for = armed_for.min(d);
    }
    timer.as_mut().reset(armed_for.into());
    loop {
        // Hello and room deadlines may be earlier than what the timer is set to.
        if let Some(d) = [hello_deadline, room_deadline].into_iter().flatten().min() {
            if d < armed_for {
                armed_for = d;
                timer.as_mut().reset(d.into());
            }
        }
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = &mut timer => None,
            m = stream.next() => Some(m),
        };
        let now = Instant::now();
        let Some(next) = next else {
            if hello_deadline.is_some_and(|d| d <= now) {
                let f = frame(
                    None,
                    "bye",
                    &Bye {
                        reason: Some("hello_timeout"),
                    },
                );
                outbox.push(f);
                outbox.close(CloseReason::Transport(1000, "hello timeout"));
                break;
            }
            if let (Some(d), Some(sid)) = (room_deadline, &session) {
                if d <= now {
                    if hub.in_room(sid) {
                        room_deadline = None;
                    } else {
                        hub.close_session(sid, "room_join_timeout");
                        session = None;
                        break;
                    }
                }
            }
            if last_read + limits.read_timeout <= now {
                outbox.close(CloseReason::Transport(1000, "read timeout"));
                break;
            }
            armed_for = last_read + limits.read_timeout;
            for d in [hello_deadline, room_deadline].into_iter().flatten() {
                armed_for = armed_for.min(d);
            }
            timer.as_mut().reset(armed_for.into());
            continue;
        };
        last_read = now;
        let text = match next {
            None => break,
            Some(Err(e)) => {
                match e {
                    WsError::TooBig => {
                        outbox.close(CloseReason::Transport(CLOSE_TOO_BIG, "message too big"))
                    }
                    WsError::Protocol(why) => {
                        outbox.close(CloseReason::Transport(wsframe::CLOSE_PROTOCOL, why))
                    }
                    WsError::InvalidUtf8 => outbox.close(CloseReason::Transport(
                        wsframe::CLOSE_INVALID_DATA,
                        "text is not UTF-8",
                    )),
                    WsError::Io(kind) => tracing::debug!(error = ?kind, "websocket read error"),
                }
                break;
            }
            Some(Ok(Incoming::Text(t))) => {
                hub.metrics.go.client_messages_in.inc();
                hub.metrics.go.client_bytes_in.inc_by(t.len() as u64);
                t
            }
            Some(Ok(Incoming::Binary)) => {
                outbox.push(error_frame(
                    None,
                    &invalid_format("binary messages are not supported"),
                ));
                continue;
            }
            Some(Ok(Incoming::Close)) => break,
            Some(Ok(Incoming::Ping(payload))) => {
                outbox.pong(payload);
                continue;
            }
            Some(Ok(Incoming::Pong(p))) => {
                if let Some(rtt) = ping_rtt(&p) {
                    hub.metrics.go.client_rtt.observe(rtt);
                }
                continue;
            }
        };
        // Over its budget, the connection is not read for a while after
        // this message (backpressure: nothing is dropped).
        let pause = budget.take(now, text.len());
        match on_text(hub, outbox, session.as_ref(), &text, peer) {
            Step::Done => {}
            Step::Hello(pending) => match pending.await {
                Ok(ok) => {
                    let span = tracing::Span::current();
                    span.record("session", &*ok.sid);
                    span.record("backend", &*ok.backend);
                    if ok.resumed {
                        tracing::info!("session resumed");
                    } else {
                        tracing::info!("session started");
                    }
                    hello_deadline = None;
                    is_guest = ok.must_join_room;
                    if ok.must_join_room {
                        room_deadline = Some(Instant::now() + limits.room_timeout);
                    }
                    session = Some(ok.sid);
                }
                Err((id, e)) => {
                    outbox.push(error_frame(id.as_deref(), &e));
                }
            },
            Step::Room(join) => {
                if let Some(join) = join {
                    join.await;
                }
                if let (true, Some(sid)) = (is_guest, &session) {
                    room_deadline = if hub.in_room(sid) {
                        None
                    } else {
                        Some(Instant::now() + limits.room_timeout)
                    };
                }
            }
            Step::Wait(drained) => {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = drained => {}
                }
            }
            Step::Bye => {
                session = None;
                break;
            }
            Step::Closing => break,
        }
        if let Some(drained) = hub.bus_backpressure() {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = drained => {}
            }
        }
        if let Some(wait) = pause {
            hub.metrics.client_throttled.inc();
            // Boxed: rare, and the connection's task would otherwise hold
            // a second timer all its life.
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = Box::pin(tokio::time::sleep(wait)) => {}
            }
        }
    }
    if let Some(sid) = session {
        tracing::info!("connection closed");
        hub.connection_closed(&sid, outbox.conn_id);
    }
    // Let the writer send what is queued (bye, errors), then close; on
    // server shutdown the writer says goodbye itself.
    if !cancel.is_cancelled() {
        outbox.close(CloseReason::Transport(1000, ""));
    }
}

/// A hello waiting for Nextcloud; on failure carries the request id.
type PendingHello =
    Pin<Box<dyn Future<Output = Result<HelloOk, (Option<String>, ProtocolError)>> + Send>>;

/// What the reader does after a text message was handled synchronously.
/// The futures are boxed: they are rare and large, and would otherwise be
/// part of every idle connection's task.
enum Step {
    Done,
    Hello(PendingHello),
    Room(Option<Pin<Box<dyn Future<Output = ()> + Send>>>),
    /// Read on once this is done: congested recipients drained, or an
    /// MCU offer was answered (so a client's candidates stay behind it).
    Wait(Pin<Box<dyn Future<Output = ()> + Send>>),
    Bye,
    Closing,
}

/// Parses and handles one text message (no await: nothing here is held by
/// an idle connection).
fn on_text(
    hub: &Arc<Hub>,
    outbox: &Arc<Outbox>,
    session: Option<&Arc<str>>,
    text: &str,
    peer: Option<std::net::IpAddr>,
) -> Step {
    let parsed: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id);
            outbox.push(error_frame(
                id.as_deref(),
                &invalid_format(format!("invalid message: {e}")),
            ));
            return Step::Done;
        }
    };
    hub.metrics.client_message(parsed.kind.as_str());
    let Some(sid) = session else {
        if parsed.kind != ClientKind::Hello {
            outbox.push(error_frame(
                parsed.id.as_deref(),
                &ProtocolError::new(error::HELLO_EXPECTED, "Expected Hello request."),
            ));
            return Step::Done;
        }
        let ClientMessage { id, hello, .. } = parsed;
        let Some(hello) = hello else {
            outbox.push(error_frame(id.as_deref(), &invalid_format("hello missing")));
            return Step::Done;
        };
        let (hub, outbox) = (hub.clone(), outbox.clone());
        return Step::Hello(Box::pin(async move {
            hub.hello_from(peer, &outbox, id.as_deref(), hello)
                .await
                .map_err(|e| (id, e))
        }));
    };
    if outbox.is_closing() {
        return Step::Closing;
    }
    let kind_room = parsed.kind == ClientKind::Room;
    let kind_bye = parsed.kind == ClientKind::Bye;
    let join = hub.handle(sid, parsed, text);
    if kind_bye {
        Step::Bye
    } else if kind_room {
        Step::Room(join)
    } else if let Some(wait) = join {
        Step::Wait(wait)
    } else {
        Step::Done
    }
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

async fn write_loop<W: AsyncWrite + Unpin>(
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
                wsframe::put_text(&mut out, f.as_str());
            }
        }
        drop(batch.frames);
        if let Some(c) = batch.close {
            let (code, text) = close_code(c);
            wsframe::put_close(&mut out, code, text);
        }
        // One write per batch; the buffer is freed right after.
        if !out.is_empty() && (io.write_all(&out).await.is_err() || io.flush().await.is_err()) {
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
                // Server shutdown: say so, then close with "going away".
                let bye = frame(None, "bye", &Bye { reason: Some("shutdown") });
                let mut out = Vec::new();
                wsframe::put_text(&mut out, bye.as_str());
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
                Result<super::wsframe::Incoming, super::wsframe::WsError>,
            >();
            let n = size(&super::read_loop(&hub, stream, &outbox, &cancel, None));
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
            let sn = size(&super::serve(hub.clone(), a, cancel.clone(), None));
            eprintln!("serve future: {sn} bytes");
            // Reader and writer once each, not twice (see `serve`).
            assert!(sn <= n + wn + 512, "serve future is {sn} bytes");
            assert!(n <= 1024, "reader future is {n} bytes");
        });
    }
}
