//! Backpressure across processes without waiting in the bus task.
//!
//! A client whose message left local recipients more than half full is not
//! read until they drained (`Hub::message`). For frames that come over the
//! bus the bus task does not wait; instead:
//!
//! - the frames of that audience (a room, a user, a session) that arrive
//!   meanwhile wait in a queue of their own, delivered in order by a task
//!   as the recipients drain (for each only while it makes progress, see
//!   [`crate::hub::recipients_drained`]): other rooms, sessions and the
//!   heartbeats are not held up;
//! - the process of each client whose frame waits there is sent a `Hold`
//!   for it: it does not read that client's next message until the queue
//!   emptied and it got `Release` (or `[clients] slowreceiverwait` passed,
//!   should the release be lost).
//!
//! Should the queues of a process hold more than [`DEFER_MAX_BYTES`] (a
//! burst after NATS stalled), they are delivered without waiting: a
//! recipient that cannot take it is closed with 1013 and keeps its frames
//! for resume, as when a local sender overfills it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::frames::Delivered;
use crate::bus::{encode, process_subject, Header};
use crate::hub::outbox::Outbox;
use crate::hub::Hub;

/// Bytes of bus frames a process keeps waiting for their recipients, in
/// all (NATS's own default for a connection's pending data).
pub const DEFER_MAX_BYTES: usize = 64 << 20;

/// Who a frame from the bus is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Audience {
    Room(String, String),
    User(String, String),
    Session(String),
}

/// A client sending over the bus: its process and session id.
type Sender = (String, String);

/// Frames of one audience waiting behind earlier ones.
#[derive(Default)]
struct Deferred {
    frames: VecDeque<(Header, Bytes)>,
    /// Senders held back until the queue emptied.
    held: HashSet<Sender>,
}

/// A local session held back by other processes: process -> (holds, until).
type Holds = HashMap<String, (u32, Instant)>;

/// The holds of both directions and the waiting frames.
#[derive(Default)]
pub(crate) struct Pacing {
    /// Local sessions other processes hold back.
    held: Mutex<HashMap<Arc<str>, Holds>>,
    /// Woken on every release.
    released: Notify,
    /// Frames from the bus waiting for their recipients, per audience.
    deferred: Mutex<HashMap<Audience, Deferred>>,
    /// Their bytes, in all.
    deferred_bytes: AtomicUsize,
    /// Woken when `deferred_bytes` went over [`DEFER_MAX_BYTES`].
    flush: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pacing {
    /// Process `from` holds the local session `sid` back, until `until` at
    /// the latest.
    pub fn hold(&self, sid: &str, from: String, until: Instant) {
        let mut held = lock(&self.held);
        let e = held
            .entry(sid.into())
            .or_default()
            .entry(from)
            .or_insert((0, until));
        e.0 += 1;
        e.1 = until;
    }

    /// Process `from` releases one hold of the local session `sid`.
    pub fn release(&self, sid: &str, from: &str) {
        let mut held = lock(&self.held);
        if let Some(by) = held.get_mut(sid) {
            if let Some(e) = by.get_mut(from) {
                e.0 = e.0.saturating_sub(1);
                if e.0 == 0 {
                    by.remove(from);
                }
            }
            if by.is_empty() {
                held.remove(sid);
            }
        }
        drop(held);
        self.released.notify_waiters();
    }

    /// Drops every hold (their `Release` may have been lost on the bus).
    pub fn release_all(&self) {
        lock(&self.held).clear();
        self.released.notify_waiters();
    }

    /// The latest live hold of a session, if any (expired ones go).
    fn held_until(&self, sid: &str) -> Option<Instant> {
        let mut held = lock(&self.held);
        let by = held.get_mut(sid)?;
        let now = Instant::now();
        by.retain(|_, (_, until)| *until > now);
        let last = by.values().map(|(_, until)| *until).max();
        if last.is_none() {
            held.remove(sid);
        }
        last
    }

    /// True while another process holds the session back.
    pub fn is_held(&self, sid: &str) -> bool {
        self.held_until(sid).is_some()
    }

    /// Resolves once no process holds the session back.
    pub async fn released(self: Arc<Self>, sid: Arc<str>) {
        loop {
            let notified = self.released.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(until) = self.held_until(&sid) else {
                return;
            };
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    fn over_cap(&self) -> bool {
        self.deferred_bytes.load(Ordering::Relaxed) > DEFER_MAX_BYTES
    }

    /// True while frames of the audience wait.
    fn is_deferred(&self, audience: &Audience) -> bool {
        lock(&self.deferred).contains_key(audience)
    }

    /// Queues a frame behind the waiting ones of its audience, if any (it
    /// is taken from `frame`); returns its sender (`sender`, else the one
    /// the header names) when it is new there.
    fn defer(
        &self,
        audience: &Audience,
        frame: &mut Option<(Header, Bytes)>,
        sender: Option<Sender>,
    ) -> Option<Sender> {
        let mut d = lock(&self.deferred);
        let q = d.get_mut(audience)?;
        let (h, body) = frame.take()?;
        let new_sender = sender
            .or_else(|| sender_of(&h))
            .filter(|s| q.held.insert(s.clone()));
        let total = self.deferred_bytes.fetch_add(body.len(), Ordering::Relaxed) + body.len();
        q.frames.push_back((h, body));
        drop(d);
        if total > DEFER_MAX_BYTES {
            self.flush.notify_waiters();
        }
        new_sender
    }

    /// The next waiting frame of an audience; when there is none, the
    /// audience stops waiting and its held senders are returned.
    fn next(&self, audience: &Audience) -> Result<(Header, Bytes), HashSet<Sender>> {
        let mut d = lock(&self.deferred);
        let Some(q) = d.get_mut(audience) else {
            return Err(HashSet::new());
        };
        match q.frames.pop_front() {
            Some((h, body)) => {
                self.deferred_bytes.fetch_sub(body.len(), Ordering::Relaxed);
                Ok((h, body))
            }
            None => Err(d.remove(audience).map(|q| q.held).unwrap_or_default()),
        }
    }
}

/// The audience of a frame from the bus.
fn audience_of(h: &Header) -> Option<Audience> {
    match h {
        Header::RoomFrame { backend, room, .. } => {
            Some(Audience::Room(backend.clone(), room.clone()))
        }
        Header::UserFrame { backend, user, .. } => {
            Some(Audience::User(backend.clone(), user.clone()))
        }
        Header::SessionFrame { sid, .. } => Some(Audience::Session(sid.clone())),
        _ => None,
    }
}

/// The client that sent a room or user frame (`except` names it); a
/// session frame's sender is found by [`Hub::session_sender`].
fn sender_of(h: &Header) -> Option<Sender> {
    match h {
        Header::RoomFrame { from, except, .. } | Header::UserFrame { from, except, .. } => {
            except.clone().map(|e| (from.clone(), e))
        }
        _ => None,
    }
}

impl Hub {
    /// A room, user or session frame from the bus: delivered now, or queued
    /// behind the earlier frames of its audience that wait for their
    /// recipients. Never waits.
    pub(super) fn frame_in_order(self: &Arc<Self>, h: Header, body: Bytes) {
        let Some(audience) = audience_of(&h) else {
            return;
        };
        // A session frame names its sender's session (`reply_to`), whose
        // process the state knows: looked up only when it may wait.
        let sender = match &h {
            Header::SessionFrame { reply_to, .. } if self.pacing.is_deferred(&audience) => {
                self.session_sender(reply_to.as_deref())
            }
            _ => None,
        };
        let mut frame = Some((h, body));
        if let Some(s) = self.pacing.defer(&audience, &mut frame, sender) {
            self.send_hold(&s, true);
        }
        let Some((h, body)) = frame else {
            return;
        };
        let Delivered { congested, sender } = self.deliver_bus_frame(h, &body);
        if congested.is_empty() {
            return;
        }
        let mut waiting = Deferred::default();
        if let Some(s) = sender {
            self.send_hold(&s, true);
            waiting.held.insert(s);
        }
        lock(&self.pacing.deferred).insert(audience.clone(), waiting);
        let hub = self.clone();
        tokio::spawn(async move { hub.deliver_deferred(audience, congested).await });
    }

    /// Delivers an audience's waiting frames as its recipients drain, then
    /// releases the senders held meanwhile.
    async fn deliver_deferred(self: Arc<Self>, audience: Audience, first: Vec<Arc<Outbox>>) {
        let wait = self.config.limits.slow_receiver_wait;
        let given_up = &self.metrics.client_stalled_recipients;
        let mut congested = first;
        loop {
            if !congested.is_empty() && !self.pacing.over_cap() {
                let flush = self.pacing.flush.notified();
                tokio::select! {
                    _ = crate::hub::recipients_drained(congested, wait, given_up.clone()) => {}
                    _ = flush => {}
                }
            }
            match self.pacing.next(&audience) {
                Ok((h, body)) => congested = self.deliver_bus_frame(h, &body).congested,
                Err(held) => {
                    for s in held {
                        self.send_hold(&s, false);
                    }
                    return;
                }
            }
        }
    }

    /// The sender of a session frame: its session and that session's process.
    fn session_sender(&self, reply_to: Option<&str>) -> Option<Sender> {
        let sid = reply_to?;
        let st = self.lock();
        let from = st.cluster.owner_of_session(sid)?.to_string();
        Some((from, sid.to_string()))
    }

    /// Tells a sender's process to hold it back (`hold`) or release it.
    fn send_hold(&self, (from, sid): &Sender, hold: bool) {
        let me = self.bus.pid().to_string();
        let h = if hold {
            self.metrics.client_sender_waits.inc();
            Header::Hold {
                from: me,
                sid: sid.clone(),
            }
        } else {
            Header::Release {
                from: me,
                sid: sid.clone(),
            }
        };
        self.bus.publish(process_subject(from), encode(&h, None));
    }

    /// Another process holds back or releases a session of this one.
    pub(super) fn held_by(&self, h: Header) {
        match h {
            Header::Hold { from, sid } => {
                let until = Instant::now() + self.config.limits.slow_receiver_wait;
                self.pacing.hold(&sid, from, until);
            }
            Header::Release { from, sid } => self.pacing.release(&sid, &from),
            _ => {}
        }
    }
}
