//! The reading half of a connection: frames to client messages for the
//! hub, with the hello, room and read timeouts on one timer and the
//! connection's rate budget.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{ping_rtt, CLOSE_TOO_BIG};
use crate::api::client::{ClientKind, ClientMessage, IdOnly};
use crate::api::error::{self, ProtocolError};
use crate::api::server::{error_frame, frame, Bye};
use crate::budget::Budget;
use crate::http::wsframe::{self, Incoming, WsError};
use crate::hub::outbox::{CloseReason, Outbox};
use crate::hub::{invalid_format, HelloOk, Hub};

/// What the reader knows of its connection between two messages: the
/// session once hello succeeded, and the deadlines of its one timer.
struct Reader<'a> {
    hub: &'a Arc<Hub>,
    outbox: &'a Arc<Outbox>,
    session: Option<Arc<str>>,
    /// A guest must be in a room by `room_deadline`.
    is_guest: bool,
    hello_deadline: Option<Instant>,
    room_deadline: Option<Instant>,
    last_read: Instant,
    /// What the timer is set to.
    armed_for: Instant,
}

/// What the reader makes of a frame.
enum Read {
    /// A text message to handle.
    Text(String),
    /// Nothing more to do for this frame of this many bytes (a fragment,
    /// a ping, a pong), but it is charged to the budget like a message.
    Next(usize),
    /// The connection ends.
    Stop,
}

impl<'a> Reader<'a> {
    fn new(hub: &'a Arc<Hub>, outbox: &'a Arc<Outbox>) -> Self {
        let now = Instant::now();
        Reader {
            hub,
            outbox,
            session: None,
            is_guest: false,
            hello_deadline: Some(now + hub.config.limits.hello_timeout),
            room_deadline: None,
            last_read: now,
            armed_for: now + hub.config.limits.read_timeout,
        }
    }

    /// Sets the timer to the earliest deadline: the read timeout, hello's
    /// and the room's.
    fn rearm(&mut self, timer: Pin<&mut tokio::time::Sleep>) {
        self.armed_for = self.last_read + self.hub.config.limits.read_timeout;
        for d in [self.hello_deadline, self.room_deadline]
            .into_iter()
            .flatten()
        {
            self.armed_for = self.armed_for.min(d);
        }
        timer.reset(self.armed_for.into());
    }

    /// Brings the timer forward when the hello or room deadline is earlier
    /// than what it is set to (reads only move `last_read`; a timer that
    /// fires early is re-armed then).
    fn pull_in(&mut self, timer: Pin<&mut tokio::time::Sleep>) {
        let deadlines = [self.hello_deadline, self.room_deadline];
        if let Some(d) = deadlines.into_iter().flatten().min() {
            if d < self.armed_for {
                self.armed_for = d;
                timer.reset(d.into());
            }
        }
    }

    /// The timer fired at `now`: hello, the room join or the read timed
    /// out (the connection ends), or none did yet.
    fn timer_fired(&mut self, now: Instant) -> ControlFlow<()> {
        if self.hello_deadline.is_some_and(|d| d <= now) {
            let f = frame(
                None,
                "bye",
                &Bye {
                    reason: Some("hello_timeout"),
                },
            );
            self.outbox.push(f);
            self.outbox
                .close(CloseReason::Transport(1000, "hello timeout"));
            return ControlFlow::Break(());
        }
        if let (Some(d), Some(sid)) = (self.room_deadline, &self.session) {
            if d <= now {
                if self.hub.in_room(sid) {
                    self.room_deadline = None;
                } else {
                    self.hub.close_session(sid, "room_join_timeout");
                    self.session = None;
                    return ControlFlow::Break(());
                }
            }
        }
        if self.last_read + self.hub.config.limits.read_timeout <= now {
            self.outbox
                .close(CloseReason::Transport(1000, "read timeout"));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// Answers control frames and refuses what is not a text message;
    /// `None` is the end of the stream.
    fn frame(&self, next: Option<Result<Incoming, WsError>>) -> Read {
        let (hub, outbox) = (self.hub, self.outbox);
        match next {
            None => Read::Stop,
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
                Read::Stop
            }
            Some(Ok(Incoming::Text(t))) => {
                hub.metrics.go.client_messages_in.inc();
                hub.metrics.go.client_bytes_in.inc_by(t.len() as u64);
                Read::Text(t)
            }
            Some(Ok(Incoming::Binary(len))) => {
                // The protocol is text: answered like text that is not
                // JSON (as the Go server does), within the same budget.
                let e = invalid_format("binary messages are not supported");
                match &self.session {
                    Some(sid) => hub.reply_error(sid, None, e),
                    None => outbox.push_reply(error_frame(None, &e)),
                }
                Read::Next(len)
            }
            Some(Ok(Incoming::Fragment(len))) => Read::Next(len),
            Some(Ok(Incoming::Close)) => Read::Stop,
            Some(Ok(Incoming::Ping(payload))) => {
                let len = payload.len();
                outbox.pong(payload);
                Read::Next(len)
            }
            Some(Ok(Incoming::Pong(p))) => {
                if let Some(rtt) = ping_rtt(&p) {
                    hub.metrics.go.client_rtt.observe(rtt);
                }
                Read::Next(p.len())
            }
        }
    }

    /// Nextcloud answered the hello: the session starts (a guest's room
    /// deadline with it), or the client is told why not.
    fn hello_done(&mut self, result: Result<HelloOk, (Option<String>, ProtocolError)>) {
        let ok = match result {
            Ok(ok) => ok,
            Err((id, e)) => {
                self.outbox.push_reply(error_frame(id.as_deref(), &e));
                return;
            }
        };
        let span = tracing::Span::current();
        span.record("session", &*ok.sid);
        span.record("backend", &*ok.backend);
        if ok.resumed {
            tracing::info!("session resumed");
        } else {
            tracing::info!("session started");
        }
        self.hello_deadline = None;
        self.is_guest = ok.must_join_room;
        if ok.must_join_room {
            self.room_deadline = Some(Instant::now() + self.hub.config.limits.room_timeout);
        }
        self.session = Some(ok.sid);
    }

    /// A room request was handled: a guest out of any room has the room
    /// timeout again, one in a room none.
    fn room_done(&mut self) {
        if let (true, Some(sid)) = (self.is_guest, &self.session) {
            self.room_deadline = if self.hub.in_room(sid) {
                None
            } else {
                Some(Instant::now() + self.hub.config.limits.room_timeout)
            };
        }
    }

    /// The connection ended: the session (if any) is told, and the writer
    /// sends what is queued (bye, errors), then closes; on server shutdown
    /// the writer says goodbye itself.
    fn finish(self, cancel: &CancellationToken) {
        if let Some(sid) = self.session {
            tracing::info!("connection closed");
            self.hub.connection_closed(&sid, self.outbox.conn_id);
        }
        if !cancel.is_cancelled() {
            self.outbox.close(CloseReason::Transport(1000, ""));
        }
    }
}

/// Reads the client's messages and hands them to the hub until the
/// connection ends, times out or the server shuts down.
pub(super) async fn read_loop<S>(
    hub: &Arc<Hub>,
    mut stream: S,
    outbox: &Arc<Outbox>,
    cancel: &CancellationToken,
    peer: crate::hub::throttle::Peer,
) where
    S: futures_util::Stream<Item = Result<Incoming, WsError>> + Unpin,
{
    let mut conn = Reader::new(hub, outbox);
    let mut budget = Budget::new(&hub.config.limits);
    // One timer for the connection, re-armed lazily: reads only move
    // `last_read`; when the timer fires early it is set to the real deadline.
    let timer = tokio::time::sleep(hub.config.limits.read_timeout);
    tokio::pin!(timer);
    conn.rearm(timer.as_mut());
    loop {
        // Hello and room deadlines may be earlier than what the timer is set to.
        conn.pull_in(timer.as_mut());
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = &mut timer => None,
            m = stream.next() => Some(m),
        };
        let now = Instant::now();
        let Some(next) = next else {
            if conn.timer_fired(now).is_break() {
                break;
            }
            conn.rearm(timer.as_mut());
            continue;
        };
        conn.last_read = now;
        let read = conn.frame(next);
        let len = match &read {
            Read::Text(t) => t.len(),
            Read::Next(len) => *len,
            Read::Stop => break,
        };
        // Every frame is charged; over its budget, the connection is not
        // read for a while after this one (backpressure: nothing is
        // dropped).
        let pause = budget.take(now, len);
        if let Read::Text(text) = read {
            match on_text(hub, outbox, conn.session.as_ref(), &text, peer) {
                Step::Done => {}
                Step::Hello(pending) => conn.hello_done(pending.await),
                Step::Room(join) => {
                    if let Some(join) = join {
                        join.await;
                    }
                    conn.room_done();
                }
                Step::Wait(drained) => {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = drained => {}
                    }
                }
                Step::Bye => {
                    conn.session = None;
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
    conn.finish(cancel);
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
    peer: crate::hub::throttle::Peer,
) -> Step {
    let parsed: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(e) => {
            let id = serde_json::from_str::<IdOnly>(text).ok().and_then(|i| i.id);
            let e = invalid_format(format!("invalid message: {e}"));
            match session {
                Some(sid) => hub.reply_error(sid, id.as_deref(), e),
                None => outbox.push_reply(error_frame(id.as_deref(), &e)),
            }
            return Step::Done;
        }
    };
    hub.metrics.client_message(parsed.kind.as_str());
    let Some(sid) = session else {
        if parsed.kind != ClientKind::Hello {
            outbox.push_reply(error_frame(
                parsed.id.as_deref(),
                &ProtocolError::new(error::HELLO_EXPECTED, "Expected Hello request."),
            ));
            return Step::Done;
        }
        let ClientMessage { id, hello, .. } = parsed;
        let Some(hello) = hello else {
            outbox.push_reply(error_frame(id.as_deref(), &invalid_format("hello missing")));
            return Step::Done;
        };
        let (hub, outbox) = (hub.clone(), outbox.clone());
        return Step::Hello(Box::pin(async move {
            hub.hello_from(peer, &outbox, id.as_deref(), *hello)
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
