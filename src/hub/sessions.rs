//! The sessions of this process and their indexes: resume ids, the
//! sessions of each user, client sessions per backend and per metrics
//! label. A session enters only through [`Sessions::insert`] and leaves
//! only through [`Sessions::remove`], which keep every index right; what
//! it is (room, connection, queue) changes in place through `map`.
//! Delivery to a session never blocks ([`Sessions::deliver`]).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;

use super::outbox::{CloseReason, Outbox, Push};
use super::session::{Session, SessionKind};
use crate::api::server::Frame;
use crate::config::ClientLimits;

/// A map keyed by session id, with a fast hasher (ids are long and looked
/// up several times per message; the keys are the server's own, so a
/// client cannot choose colliding ones).
pub(crate) type SidMap<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// A user on a backend: (backend id, user id).
pub(crate) type UserKey = (Arc<str>, Arc<str>);

/// Sessions and what happens to them as frames are delivered.
pub(crate) struct Sessions {
    /// Every session by public id (entered with `insert`, left with `remove`).
    /// Boxed: the table's free slots then cost a pointer, not a whole
    /// session (about 200 B per idle session, docs/benchmarks.md).
    pub map: SidMap<Box<Session>>,
    /// Resume id -> session.
    pub resume_ids: HashMap<Arc<str>, Arc<str>>,
    /// (backend id, user id) -> sessions of that user (virtual sessions
    /// are reached through their internal client, not listed here).
    pub users: HashMap<UserKey, Vec<Arc<str>>>,
    /// Client sessions per backend id (for `sessionlimit`).
    pub counts: HashMap<Arc<str>, u64>,
    /// Disconnected sessions and when they expire.
    pub disconnected: HashMap<Arc<str>, Instant>,
    /// Guests that Nextcloud removed from their room, and by when they must
    /// join one again (as after their hello).
    pub room_deadlines: HashMap<Arc<str>, Instant>,
    /// Sessions to end once the current operation is done (resume queue full).
    pub doomed: Vec<Arc<str>>,
    pub limits: ClientLimits,
    /// Counts connections closed with 1013.
    pub overflows: prometheus::IntCounter,
    /// While a client's message is routed: the recipients' outboxes it left
    /// more than half full (its reader waits for them to drain).
    pub congested: Option<Vec<Arc<Outbox>>>,
    /// Sessions per (backend id, `clienttype` label), kept as sessions come
    /// and go so that a scrape needs no walk over them.
    pub per_label: HashMap<(Arc<str>, &'static str), i64>,
    /// Client sessions (connected or waiting for a resume, all backends;
    /// not internal or virtual ones): what a drain waits for.
    pub clients: tokio::sync::watch::Sender<usize>,
    /// The user subjects of the bus: subscribed while a user has sessions
    /// here (kept by the user index).
    pub interest: crate::bus::Interest,
    /// The backend URLs of the last hello: the next session with the same
    /// ones shares them (nearly every client of a backend names the same).
    pub last_urls: Option<(Arc<str>, Arc<str>)>,
    /// Sessions another process is handing over to this one and that are
    /// not here yet: what is delivered to them meanwhile
    /// (`cluster/arrival.rs`).
    pub arriving: HashMap<Arc<str>, Arrival>,
}

/// What is delivered to a session on its way to this process.
#[derive(Default)]
pub(crate) struct Arrival {
    /// Room deliveries are kept (the process handing it over stopped
    /// delivering them: its `Changed` arrived); before, they were its.
    pub rooms: bool,
    /// Frames, in order.
    pub frames: std::collections::VecDeque<Frame>,
    /// Their bytes.
    pub bytes: usize,
    /// More arrived than a resume queue holds: the session ends once here.
    pub overflow: bool,
}

impl Arrival {
    /// Keeps a frame, within the resume queue's limits.
    pub fn push(&mut self, f: &Frame, limits: &ClientLimits) {
        if self.overflow {
            return;
        }
        if self.frames.len() >= limits.resume_queue_messages
            || self.bytes + f.len() > limits.resume_queue_bytes
        {
            self.overflow = true;
            return;
        }
        self.bytes += f.len();
        self.frames.push_back(f.clone());
    }
}

impl Sessions {
    /// No sessions yet.
    pub fn new(limits: ClientLimits, overflows: prometheus::IntCounter) -> Sessions {
        Sessions {
            map: SidMap::default(),
            resume_ids: HashMap::new(),
            users: HashMap::new(),
            counts: HashMap::new(),
            disconnected: HashMap::new(),
            room_deadlines: HashMap::new(),
            doomed: Vec::new(),
            limits,
            overflows,
            congested: None,
            per_label: HashMap::new(),
            clients: tokio::sync::watch::Sender::new(0),
            interest: Default::default(),
            last_urls: None,
            arriving: HashMap::new(),
        }
    }

    /// The backend base and signaling URLs of a new session, shared with
    /// the previous session when they are the same (one copy instead of
    /// one per session; only the last pair is kept, so a client cannot
    /// grow this).
    pub fn shared_urls(&mut self, base: String, url: String) -> (Arc<str>, Arc<str>) {
        match &self.last_urls {
            Some((b, u)) if **b == *base && **u == *url => (b.clone(), u.clone()),
            _ => {
                let pair: (Arc<str>, Arc<str>) = (base.into(), url.into());
                self.last_urls = Some(pair.clone());
                pair
            }
        }
    }

    /// Adds a session with its resume id, user and counts (the only way
    /// in, so that the indexes stay right).
    pub fn insert(&mut self, s: Session) {
        self.index(&s);
        if let Some(old) = self.map.insert(s.id.clone(), Box::new(s)) {
            self.unindex(&old);
        }
    }

    /// Takes a session out of the map and every index (the only way out).
    pub fn remove(&mut self, sid: &str) -> Option<Session> {
        let s = self.map.remove(sid)?;
        self.unindex(&s);
        Some(*s)
    }

    fn index(&mut self, s: &Session) {
        *self.per_label.entry(label_of(s)).or_default() += 1;
        if let Some(r) = &s.resume_id {
            self.resume_ids.insert(r.clone(), s.id.clone());
        }
        if let (Some(user), false) = (&s.user_id, s.is_virtual()) {
            // Most users have one session here: room for one, not four.
            let list = self
                .users
                .entry((s.backend.id.clone(), user.clone()))
                .or_insert_with(|| Vec::with_capacity(1));
            if list.is_empty() {
                self.interest
                    .add(|| crate::bus::user_subject(&s.backend.id, user));
            }
            list.push(s.id.clone());
        }
        if s.kind == SessionKind::Client {
            *self.counts.entry(s.backend.id.clone()).or_default() += 1;
            self.clients.send_modify(|n| *n += 1);
        }
    }

    fn unindex(&mut self, s: &Session) {
        let key = label_of(s);
        if let Some(n) = self.per_label.get_mut(&key) {
            *n -= 1;
            if *n <= 0 {
                self.per_label.remove(&key);
            }
        }
        if let Some(r) = &s.resume_id {
            self.resume_ids.remove(r);
        }
        if let Some(user) = &s.user_id {
            let key = (s.backend.id.clone(), user.clone());
            if let Some(list) = self.users.get_mut(&key) {
                list.retain(|x| *x != s.id);
                if list.is_empty() {
                    self.users.remove(&key);
                    self.interest
                        .remove(|| crate::bus::user_subject(&s.backend.id, user));
                }
            }
        }
        if s.kind == SessionKind::Client {
            if let Some(c) = self.counts.get_mut(&s.backend.id) {
                *c = c.saturating_sub(1);
            }
            self.clients.send_modify(|n| *n = n.saturating_sub(1));
        }
    }

    /// Hands a frame to a session: its connection's outbox when connected,
    /// else its resume queue. Never blocks; a full outbox detaches the
    /// connection (close 1013), a full resume queue ends the session.
    pub fn deliver(&mut self, sid: &str, frame: &Frame) {
        self.deliver_cow(sid, Cow::Borrowed(frame));
    }

    /// As [`Sessions::deliver`] for a frame made for this one recipient:
    /// it is queued as it is, without taking a reference to share it.
    pub fn deliver_owned(&mut self, sid: &str, frame: Frame) {
        self.deliver_cow(sid, Cow::Owned(frame));
    }

    fn deliver_cow(&mut self, sid: &str, frame: Cow<'_, Frame>) {
        let Some(s) = self.map.get_mut(sid) else {
            if let Some(a) = self.arriving.get_mut(sid).filter(|a| a.rooms) {
                a.push(&frame, &self.limits);
            }
            return;
        };
        if s.is_virtual() || (s.hides_names() && super::hide_names::drops_for_hidden(&frame)) {
            return;
        }
        let mut frame = frame;
        if let Some(conn) = &s.conn {
            // Queued, or handed back (closed, overflow) to go to the queue.
            let (pushed, back) = conn.push_or_return(frame.into_owned());
            let Some(back) = back else {
                if pushed == Push::Congested {
                    if let Some(c) = &mut self.congested {
                        c.push(conn.clone());
                    }
                }
                return;
            };
            frame = Cow::Owned(back);
            if pushed == Push::Overflow {
                tracing::info!(session = %s.id, backend = %s.backend.id, "send queue full, closing connection (1013)");
                self.overflows.inc();
                let left = conn.abort(CloseReason::Overflow);
                s.conn = None;
                for f in left {
                    s.queue_bytes += f.len();
                    s.queue.push_back(f);
                }
                // The client resumes with all of it (at most
                // `outboxbytes`): the limits apply to what comes next.
                s.carried = (s.queue.len(), s.queue_bytes);
                self.disconnected
                    .insert(s.id.clone(), Instant::now() + self.limits.resume_timeout);
            }
        }
        s.queue_bytes += frame.len();
        s.queue.push_back(frame.into_owned());
        let (carried_frames, carried_bytes) = s.carried;
        if (s.queue.len().saturating_sub(carried_frames) > self.limits.resume_queue_messages
            || s.queue_bytes.saturating_sub(carried_bytes) > self.limits.resume_queue_bytes)
            && !self.doomed.contains(&s.id)
        {
            tracing::info!(session = %s.id, backend = %s.backend.id, "resume queue full, ending session");
            self.doomed.push(s.id.clone());
        }
    }
}

impl Sessions {
    /// Delivers one frame to every session of a user on a backend.
    pub fn deliver_to_user(
        &mut self,
        backend: &Arc<str>,
        user: &str,
        f: &Frame,
        except: Option<&str>,
    ) {
        let key = (backend.clone(), Arc::<str>::from(user));
        // Delivery never changes the user index: lent out meanwhile (no copy).
        let users = std::mem::take(&mut self.users);
        if let Some(list) = users.get(&key) {
            for sid in list {
                if Some(&**sid) != except {
                    self.deliver(sid, f);
                }
            }
        }
        self.users = users;
    }
}

/// The labels a session is counted under in `signaling_hub_sessions`.
fn label_of(s: &Session) -> (Arc<str>, &'static str) {
    (s.backend.id.clone(), s.kind.label(s.federated.is_some()))
}
