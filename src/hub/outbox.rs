//! Per-connection outbox: frames waiting for the writer, bounded in bytes.
//! Pushing never blocks; on overflow the connection is closed
//! ([`CloseReason::Overflow`], 1013 on the wire) and whatever was queued
//! moves back to the session for resume.
//!
//! An outbox more than half full is *congested*: a client whose message
//! left a recipient congested is not read until that recipient drained
//! (see [`Outbox::drained_while_progressing`]), so one sender cannot push
//! the others over their limit. Nobody waits for a recipient that makes no
//! progress: one whose socket took no byte for [`STALL_WAIT`] is given up
//! on (and closed with 1013 once its outbox is full).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// A congested recipient whose socket took no byte for this long is
/// stalled: senders stop waiting for it. Healthy members are then held
/// back by a stalled one for at most this long (once: it is not waited
/// for again until its writer took its queue). This is the value for the
/// default `[clients] slowreceiverwait` of 5 s: see [`stall_wait`].
pub const STALL_WAIT: Duration = Duration::from_millis(500);

/// How long a congested recipient's socket may take nothing before it is
/// stalled: a tenth of `[clients] slowreceiverwait` (0.5 s by default), so
/// an admin who lets senders wait longer for slow members also tolerates
/// longer pauses of a member that still reads.
pub fn stall_wait(slow_receiver_wait: Duration) -> Duration {
    slow_receiver_wait / 10
}

use crate::api::server::Frame;

/// Why the writer should close the connection; `http/ws.rs` turns it into
/// the WebSocket close code and text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The session ended (bye, expiry, ended by the server).
    SessionEnded,
    /// The session was resumed by another connection.
    SessionResumed,
    /// The client did not read fast enough: its outbox overflowed.
    Overflow,
    /// The server restarts and keeps the session: resume it there.
    Restart,
    /// Decided by the transport itself (timeouts, protocol errors): the
    /// close code and text.
    Transport(u16, &'static str),
}

#[derive(Default)]
struct State {
    frames: VecDeque<Frame>,
    bytes: usize,
    close: Option<CloseReason>,
    /// A sender waited for this outbox in vain: until it drains, nobody
    /// waits for it again (it is closed with 1013 once full).
    given_up: bool,
    /// A pong to send (the payload of the client's last ping).
    pong: Option<bytes::Bytes>,
}

/// What the writer takes from the outbox at once.
pub struct Drained {
    /// Frames to send, in order.
    pub frames: VecDeque<Frame>,
    /// Close after them.
    pub close: Option<CloseReason>,
    /// Answer a ping (before the frames).
    pub pong: Option<bytes::Bytes>,
}

/// Frames queued for one WebSocket connection.
pub struct Outbox {
    /// Unique id of the connection (to tell a resumed connection from the old one).
    pub conn_id: u64,
    state: Mutex<State>,
    notify: Notify,
    /// Woken whenever the writer takes the queue (or the outbox closes).
    drained: Notify,
    limit: usize,
    /// Bytes the writer got the socket to take so far (progress of a
    /// recipient, see [`Outbox::drained_while_progressing`]).
    written: AtomicU64,
    /// Set with `close` (checked for every message the client sends,
    /// without taking the lock).
    closing: AtomicBool,
}

/// Result of a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued.
    Queued,
    /// Queued, and the outbox is now more than half full.
    Congested,
    /// Would exceed the byte limit: nothing queued, caller must detach.
    Overflow,
    /// The connection is closing; nothing queued.
    Closed,
}

impl Outbox {
    /// An empty outbox holding at most `limit` bytes.
    pub fn new(conn_id: u64, limit: usize) -> Self {
        Outbox {
            conn_id,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            drained: Notify::new(),
            limit,
            written: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        }
    }

    /// The writer got the socket to take `n` more bytes.
    pub fn wrote(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Waits for a congested outbox to drain below half, as long as its
    /// connection makes progress: it is given up on (see
    /// [`Outbox::give_up`]) once its socket took no byte for `stall`, or at
    /// `deadline`. True when it drained.
    pub async fn drained_while_progressing(&self, stall: Duration, deadline: Instant) -> bool {
        loop {
            let seen = self.written.load(Ordering::Relaxed);
            let until = (Instant::now() + stall).min(deadline);
            if tokio::time::timeout_at(until, self.drained_below_half())
                .await
                .is_ok()
            {
                return true;
            }
            if Instant::now() >= deadline || self.written.load(Ordering::Relaxed) == seen {
                self.give_up();
                return false;
            }
        }
    }

    /// Queues a frame for the writer without blocking.
    pub fn push(&self, frame: Frame) -> Push {
        self.push_or_return(frame).0
    }

    /// As [`Outbox::push`], handing the frame back when it was not queued
    /// (closed or overflow), so the caller can keep it without a copy.
    pub fn push_or_return(&self, frame: Frame) -> (Push, Option<Frame>) {
        let mut s = self.state.lock().expect("outbox lock");
        if s.close.is_some() {
            return (Push::Closed, Some(frame));
        }
        let len = frame.len();
        if s.bytes + len > self.limit && !s.frames.is_empty() {
            return (Push::Overflow, Some(frame));
        }
        s.bytes += len;
        s.frames.push_back(frame);
        let congested = s.bytes > self.limit / 2 && !s.given_up;
        drop(s);
        self.notify.notify_one();
        if congested {
            (Push::Congested, None)
        } else {
            (Push::Queued, None)
        }
    }

    /// After waiting for it in vain: this outbox is not reported congested
    /// again until the writer took its queue.
    pub fn give_up(&self) {
        let mut s = self.state.lock().expect("outbox lock");
        if s.bytes > self.limit / 2 {
            s.given_up = true;
        }
    }

    /// Resolves once at most half of the byte limit is queued, or the
    /// outbox closes.
    pub async fn drained_below_half(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Registered before the check: a drain in between still wakes us.
            notified.as_mut().enable();
            {
                let s = self.state.lock().expect("outbox lock");
                if s.close.is_some() || s.bytes <= self.limit / 2 {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Queues a frame even past the byte limit (used once, to flush a
    /// resume queue that is bounded on its own).
    pub fn push_force(&self, frame: Frame) {
        let mut s = self.state.lock().expect("outbox lock");
        if s.close.is_some() {
            return;
        }
        s.bytes += frame.len();
        s.frames.push_back(frame);
        drop(s);
        self.notify.notify_one();
    }

    /// Asks the writer to close after what is queued. A later close
    /// request does not replace the first.
    pub fn close(&self, reason: CloseReason) {
        let mut s = self.state.lock().expect("outbox lock");
        if s.close.is_none() {
            s.close = Some(reason);
            self.closing.store(true, Ordering::Release);
        }
        drop(s);
        self.notify.notify_one();
        self.drained.notify_waiters();
    }

    /// Closes at once, handing back the frames not yet written (so they can
    /// be kept for resume).
    pub fn abort(&self, reason: CloseReason) -> VecDeque<Frame> {
        let mut s = self.state.lock().expect("outbox lock");
        if s.close.is_none() {
            s.close = Some(reason);
            self.closing.store(true, Ordering::Release);
        }
        s.bytes = 0;
        let frames = std::mem::take(&mut s.frames);
        drop(s);
        self.notify.notify_one();
        self.drained.notify_waiters();
        frames
    }

    /// Pushes a reply to a connection without a session (before hello): a
    /// full outbox closes it with 1013 (the client does not read; there is
    /// no session to keep the frames for), nothing is dropped silently.
    pub fn push_reply(&self, frame: Frame) {
        if self.push(frame) == Push::Overflow {
            self.abort(CloseReason::Overflow);
        }
    }

    /// Takes the frames not yet handed to the writer, leaving the outbox
    /// open (they go on with the session: to its resume queue or to the
    /// connection that replaces this one).
    pub fn take_pending(&self) -> VecDeque<Frame> {
        let mut s = self.state.lock().expect("outbox lock");
        s.bytes = 0;
        let frames = std::mem::take(&mut s.frames);
        drop(s);
        self.drained.notify_waiters();
        frames
    }

    /// True once a close was requested.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Asks the writer to answer a client's ping.
    pub fn pong(&self, payload: bytes::Bytes) {
        self.state.lock().expect("outbox lock").pong = Some(payload);
        self.notify.notify_one();
    }

    /// Takes everything queued, the close request and a pong, if any. The
    /// queue's allocation goes with the frames (an idle connection keeps
    /// none).
    pub fn drain(&self) -> Drained {
        let mut s = self.state.lock().expect("outbox lock");
        let frames = std::mem::take(&mut s.frames);
        let pong = s.pong.take();
        let was_congested = s.bytes > self.limit / 2;
        s.bytes = 0;
        s.given_up = false;
        let close = s.close;
        drop(s);
        if was_congested {
            self.drained.notify_waiters();
        }
        Drained {
            frames,
            close,
            pong,
        }
    }

    /// Waits until something is pushed or a close is requested.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_that_does_not_fit_closes_with_1013_instead_of_vanishing() {
        let o = Outbox::new(1, 10);
        o.push_reply(Frame::from("12345"));
        o.push_reply(Frame::from("12345"));
        assert!(!o.is_closing());
        o.push_reply(Frame::from("1"));
        assert_eq!(o.drain().close, Some(CloseReason::Overflow));
    }

    #[test]
    fn bounded_in_bytes_and_abort_returns_frames() {
        let o = Outbox::new(1, 10);
        assert_eq!(o.push(Frame::from("12345")), Push::Queued);
        assert_eq!(o.push(Frame::from("12345")), Push::Congested);
        assert_eq!(o.push(Frame::from("1")), Push::Overflow);
        let left = o.abort(CloseReason::Overflow);
        assert_eq!(left.len(), 2);
        assert_eq!(o.push(Frame::from("1")), Push::Closed);
        let d = o.drain();
        assert_eq!(d.close, Some(CloseReason::Overflow));
        assert!(d.frames.is_empty());
    }

    #[tokio::test]
    async fn congestion_is_reported_and_clears_on_drain() {
        let o = std::sync::Arc::new(Outbox::new(1, 10));
        assert_eq!(o.push(Frame::from("12345")), Push::Queued);
        assert_eq!(o.push(Frame::from("1")), Push::Congested);
        let waiter = tokio::spawn({
            let o = o.clone();
            async move { o.drained_below_half().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        o.drain();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken by the drain")
            .unwrap();
        // Not congested: resolves at once.
        o.drained_below_half().await;
        // Given up on: not reported again until drained.
        assert_eq!(o.push(Frame::from("123456")), Push::Congested);
        o.give_up();
        assert_eq!(o.push(Frame::from("1")), Push::Queued);
        o.drain();
        assert_eq!(o.push(Frame::from("123456")), Push::Congested);
    }

    #[test]
    fn a_single_large_frame_is_accepted_when_empty() {
        let o = Outbox::new(1, 4);
        assert_eq!(o.push(Frame::from("123456")), Push::Congested);
        let d = o.drain();
        assert!(d.close.is_none());
        let out = d.frames;
        assert_eq!(out.len(), 1);
    }
}
