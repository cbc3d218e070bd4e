//! One WebSocket connection: a reader that parses client messages and hands
//! them to the hub, and a writer that drains the outbox (feed all, flush
//! once) and sends keep-alive pings. Both run in one task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{features_header, AppState};
use crate::api::client::{ClientMessage, IdOnly};
use crate::api::error::{self, ProtocolError};
use crate::api::server::{error_frame, frame, Bye};
use crate::backend::client::HEADER_FEATURES;
use crate::hub::outbox::Outbox;
use crate::hub::{invalid_format, HelloOk, Hub};

/// Close code for frames over the size limit.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// `GET /spreed`: upgrades and hands the socket to [`serve`].
pub async fn upgrade(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    extensions: axum::http::Extensions,
    ws: WebSocketUpgrade,
) -> Response {
    let socket_peer = extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let trusted = &state.hub.live().app.trusted_proxies;
    let peer = super::listener::real_client_ip(socket_peer, &headers, trusted);
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
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        "too many connections from this address",
                    )
                        .into_response();
                }
            }
        }
        _ => None,
    };
    let limits = &state.hub.config.limits;
    let max = limits.max_message_size;
    let hub = state.hub.clone();
    let tracker = state.tracker.clone();
    let shutdown = state.shutdown.child_token();
    let mut resp = ws
        // Small buffers: an idle connection keeps their capacity. Larger
        // messages grow the read buffer only while they are read.
        .read_buffer_size(1024)
        .write_buffer_size(1024)
        .max_write_buffer_size(limits.outbox_bytes.max(max) * 2)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                let _slot = forwarded;
                serve(hub, socket, shutdown, peer).await
            })
        });
    resp.headers_mut()
        .insert(HEADER_FEATURES, features_header(&state.hub));
    resp
}

/// Runs one connection until it closes or the server shuts down.
pub async fn serve(
    hub: Arc<Hub>,
    socket: WebSocket,
    cancel: CancellationToken,
    peer: Option<std::net::IpAddr>,
) {
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
    let (sink, stream) = socket.split();
    let reader = read_loop(&hub, stream, &outbox, &cancel, peer);
    let writer = write_loop(
        sink,
        &outbox,
        &cancel,
        hub.config.limits.ping_interval,
        &hub.metrics.go,
    );
    tracing::Instrument::instrument(
        async move {
            tokio::join!(reader, writer);
        },
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
    S: futures_util::Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let limits = hub.config.limits.clone();
    let mut session: Option<Arc<str>> = None;
    let mut is_guest = false;
    let mut hello_deadline = Some(Instant::now() + limits.hello_timeout);
    let mut room_deadline: Option<Instant> = None;
    let mut last_read = Instant::now();
    let mut budget = Budget::new(&limits);
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
                outbox.close(1000, "hello timeout");
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
                outbox.close(1000, "read timeout");
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
        let msg = match next {
            None => break,
            Some(Err(e)) => {
                let text = e.to_string();
                if text.contains("Space limit exceeded")
                    || text.contains("too long")
                    || text.contains("Message too big")
                    || text.contains("Frame too big")
                    || text.contains("capacity")
                {
                    outbox.close(CLOSE_TOO_BIG, "message too big");
                } else {
                    tracing::debug!(error = ?text, "websocket read error");
                }
                break;
            }
            Some(Ok(m)) => m,
        };
        let text = match msg {
            Message::Text(t) => {
                hub.metrics.go.client_messages_in.inc();
                hub.metrics.go.client_bytes_in.inc_by(t.len() as u64);
                t
            }
            Message::Binary(_) => {
                outbox.push(error_frame(
                    None,
                    &invalid_format("binary messages are not supported"),
                ));
                continue;
            }
            Message::Close(_) => break,
            Message::Pong(p) => {
                if let Some(rtt) = ping_rtt(&p) {
                    hub.metrics.go.client_rtt.observe(rtt);
                }
                continue;
            }
            Message::Ping(_) => continue,
        };
        // Over its budget, the connection is not read for a while after
        // this message (backpressure: nothing is dropped).
        let pause = budget.take(now, text.len());
        match on_text(hub, outbox, session.as_ref(), text.as_str(), peer) {
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
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
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
        outbox.close(1000, "");
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
    hub.metrics.client_message(&parsed.kind);
    let Some(sid) = session else {
        if parsed.kind != "hello" {
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
    let kind_room = parsed.kind == "room";
    let kind_bye = parsed.kind == "bye";
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

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: &Arc<Outbox>,
    cancel: &CancellationToken,
    ping_interval: std::time::Duration,
    stats: &crate::metrics::GoMetrics,
) {
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    let mut batch = Vec::new();
    loop {
        let close = outbox.drain(&mut batch);
        if !batch.is_empty() {
            let mut failed = false;
            stats.client_messages_out.inc_by(batch.len() as u64);
            let bytes: usize = batch.iter().map(|f| f.len()).sum();
            stats.client_bytes_out.inc_by(bytes as u64);
            for f in batch.drain(..) {
                if sink.feed(Message::Text(f)).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed || sink.flush().await.is_err() {
                batch.clear();
                cancel.cancel();
                return;
            }
        }
        if let Some(c) = close {
            let _ = sink
                .send(Message::Close(Some(CloseFrame {
                    code: c.code,
                    reason: c.reason.into(),
                })))
                .await;
            cancel.cancel();
            return;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                // Server shutdown: say so, then close with "going away".
                let bye = frame(None, "bye", &Bye { reason: Some("shutdown") });
                let _ = sink.send(Message::Text(bye)).await;
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: 1001,
                        reason: "server shutting down".into(),
                    })))
                    .await;
                return;
            }
            _ = outbox.wait() => {}
            _ = ping.tick() => {
                let stamp = unix_millis().to_be_bytes().to_vec();
                if sink.send(Message::Ping(stamp.into())).await.is_err() {
                    cancel.cancel();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod size_tests {
    /// Every connection's task embeds the reader's future; keep it small
    /// (idle memory per session is a budget).
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
            let stream =
                futures_util::stream::empty::<Result<axum::extract::ws::Message, axum::Error>>();
            let n = size(&super::read_loop(&hub, stream, &outbox, &cancel, None));
            eprintln!("reader future: {n} bytes");
            assert!(n <= 1024, "reader future is {n} bytes");
        });
    }
}
