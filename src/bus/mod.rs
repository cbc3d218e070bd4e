//! Cross-process events behind one trait. The in-process bus (the default,
//! also what `nats://loopback` means) has no other processes to talk to;
//! the NATS bus connects several server processes.
//!
//! Wire format of a bus message: one line of JSON ([`Header`]), `\n`, then
//! an optional body (a serialized client frame, forwarded as is).
//!
//! Subjects by audience: a process receives only what is for it.
//!
//! | subject | what | who listens |
//! |---|---|---|
//! | [`SUBJECT_ALL`] | heartbeats, discovery, goodbyes, backend requests, room snapshot requests, dialout requests | every process |
//! | [`process_subject`] | frames and MCU messages for its sessions, resume requests, ends of moved sessions, holds | that process |
//! | [`room_subject`] | joins, changes and leaves of members, room frames, transient data | the processes with members in the room (from before the first member is visible there until the room is gone) |
//! | [`user_subject`] | frames for every session of a user | the processes with sessions of the user |
//! | [`ALL_ROOMS`] | what a process of the previous release asks on a room's subject (its room snapshot requests; the rest is dropped on arrival) | every process, while one of the previous release is in the cluster |
//!
//! Versions: heartbeats and discovery carry the [`BUS_VERSION`] of their
//! process; a process of the previous release sends none (it is
//! [`PREVIOUS_BUS_VERSION`]). The two work together: see `ALL_ROOMS`.
//!
//! NATS keeps the order of one publisher's messages on one subject; a
//! room's events and frames share its subject, so they stay in order.

#[cfg(test)]
pub mod mesh;
pub mod nats;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Subject every process listens to: heartbeats, discovery, backend
/// requests, snapshot and dialout requests.
pub const SUBJECT_ALL: &str = "signaling.all";

/// The bus protocol of this release, announced in heartbeats and
/// discovery. 2: subjects by audience (snapshot requests on
/// [`SUBJECT_ALL`], user frames on [`user_subject`], `Hold`/`Release`).
pub const BUS_VERSION: u32 = 2;

/// The bus protocol of a process that announces none: the previous
/// release, which subscribes to `signaling.>`, asks for room snapshots on
/// the room's subject and sends user frames on [`SUBJECT_ALL`].
pub const PREVIOUS_BUS_VERSION: u32 = 1;

fn previous_bus_version() -> u32 {
    PREVIOUS_BUS_VERSION
}

/// Every room's subject. A process of the previous release asks for a
/// room's snapshot on the room's subject and waits for an answer of every
/// process: while one is in the cluster, every process receives these
/// requests (only these, [`is_snapshot_request`]) to answer those of
/// rooms it does not serve.
pub const ALL_ROOMS: &str = "signaling.room.>";

/// True for an encoded [`Header::SnapshotRequest`] (without decoding it:
/// the all-rooms subscription sees every room's traffic).
pub fn is_snapshot_request(payload: &[u8]) -> bool {
    payload.starts_with(b"{\"snapshot_request\":")
}

/// True for a subject NATS accepts to publish on: dot-separated non-empty
/// tokens of printable ASCII other than the wildcards. A subject with a
/// space would break the publishing connection's protocol (the server
/// closes it), so the NATS bus refuses others before they are sent.
pub fn valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|t| {
            !t.is_empty() && t != "*" && t != ">" && t.bytes().all(|b| b.is_ascii_graphic())
        })
}

/// Subject of one process (session frames, resume hand-over).
pub fn process_subject(pid: &str) -> String {
    format!("signaling.process.{pid}")
}

/// Subject token of any string: base64url, so no dot, space or wildcard.
fn token(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

/// Subject of one room of one backend.
pub fn room_subject(backend: &str, room: &str) -> String {
    format!("signaling.room.{}.{}", token(backend), token(room))
}

/// Subject of the sessions of one user of one backend.
pub fn user_subject(backend: &str, user: &str) -> String {
    format!("signaling.user.{}.{}", token(backend), token(user))
}

/// A member of a room as every process knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Public session id.
    pub sid: String,
    /// Process the session is connected to.
    pub owner: String,
    /// User id, if any.
    #[serde(default)]
    pub userid: Option<String>,
    /// User data.
    #[serde(default)]
    pub user: Option<Box<RawValue>>,
    /// Nextcloud session id of the room join.
    #[serde(default)]
    pub roomsessionid: Option<String>,
    /// Client features.
    #[serde(default)]
    pub features: Vec<String>,
    /// client, internal or virtual.
    pub kind: MemberKind,
    /// For virtual sessions: the internal client's session id.
    #[serde(default)]
    pub virtual_owner: Option<String>,
    /// For virtual sessions: the id the internal client chose.
    #[serde(default)]
    pub client_sid: Option<String>,
    /// In-call flags (internal / virtual).
    #[serde(default)]
    pub in_call: u32,
    /// Participant flags (virtual).
    #[serde(default)]
    pub flags: u32,
    /// A federated session (another Nextcloud's user).
    #[serde(default)]
    pub federated: bool,
    /// A federated session's actor (`actorType`, `actorId` of its token),
    /// for the `leave` another process sends should this one vanish;
    /// absent from processes of the previous version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<(String, String)>,
}

/// What kind of session a room member is (`"client"`, `"internal"` or
/// `"virtual"` on the bus, as before it was typed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    /// A client (a browser or app of a Nextcloud user or guest).
    Client,
    /// An internal client (SIP bridge, recording, ...).
    Internal,
    /// A virtual session of an internal client.
    Virtual,
}

impl MemberKind {
    /// The name on the bus (and in Nextcloud's in-call list).
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::Client => "client",
            MemberKind::Internal => "internal",
            MemberKind::Virtual => "virtual",
        }
    }
}

/// A transient value in a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransientSnapshot {
    /// Key.
    pub key: String,
    /// Value.
    pub value: Box<RawValue>,
    /// Version (order of application).
    pub version: u64,
    /// Remaining time to live, nanoseconds.
    #[serde(default)]
    pub ttl_ns: Option<u64>,
}

/// What a process knows about a room, sent to a process that starts serving it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RoomSnapshot {
    /// The replying process's local members.
    pub members: Vec<MemberInfo>,
    /// Transient data.
    pub transient: Vec<TransientSnapshot>,
    /// Version counter of the transient data.
    pub transient_version: u64,
    /// Room properties.
    #[serde(default)]
    pub properties: Option<Box<RawValue>>,
    /// The answering process (absent from processes of the previous
    /// release): a resync removes the members of a process that answered
    /// without them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Nextcloud's participant state of the room (users, in-call flags,
    /// permissions) by Nextcloud session id: with `changed-users`
    /// Nextcloud sends only changes, so a process that starts serving the
    /// room needs the state the others built. Absent from processes of the
    /// previous release.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub participants:
        std::collections::BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
}

/// A session handed over to another process on resume.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionHandover {
    /// The session as a member (identity, room data).
    pub member: MemberInfo,
    /// Room the session is in.
    pub room: Option<String>,
    /// Resume id.
    pub resume_id: String,
    /// Backend id.
    pub backend: String,
    /// Backend base URL.
    pub backend_base: String,
    /// Nextcloud signaling URL.
    pub backend_url: String,
    /// Permissions.
    pub permissions: Option<Vec<String>>,
    /// Frames queued while disconnected.
    pub queue: Vec<String>,
    /// A federated session's actor (`actorType`, `actorId` of its token);
    /// absent from processes of the previous version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<(String, String)>,
    /// An answer to a [`Header::ResumeRequest`] with `peek`: the session
    /// stays where it is (`member.owner` holds it, `queue` is empty); the
    /// asker prepares its room, then claims it. Processes of the previous
    /// release hand the session over at once (no `peek` in the answer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub peek: bool,
    /// In a `peek` answer for an internal client: its virtual sessions,
    /// which move with it (the asker expects them too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub virtuals: Vec<ParkEntry>,
}

/// A session a stopping process is about to hand to another one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ParkEntry {
    /// Session id.
    pub sid: String,
    /// Resume id.
    pub resume_id: String,
    /// Backend id.
    pub backend: String,
    /// Room it is in.
    #[serde(default)]
    pub room: Option<String>,
    /// Subscribers of its publishers that died with the stopping
    /// process: (subscriber session, stream); each gets an offer once it
    /// publishes again on the taker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resubscribe: Vec<(String, String)>,
}

/// The header line of every bus message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Header {
    /// Liveness and session counts of a process.
    Heartbeat {
        /// Process id.
        from: String,
        /// Client sessions per backend id.
        counts: std::collections::HashMap<String, u64>,
        /// Its [`BUS_VERSION`] (absent: the previous release).
        #[serde(default = "previous_bus_version")]
        version: u32,
    },
    /// A process starts: every other process answers (request/reply) with
    /// its heartbeat, so a new process knows its peers before it serves
    /// clients, and the peers know it.
    Discover {
        /// Process id.
        from: String,
        /// Its [`BUS_VERSION`] (absent: the previous release).
        #[serde(default = "previous_bus_version")]
        version: u32,
    },
    /// A process stops (clean shutdown).
    Goodbye {
        /// Process id.
        from: String,
    },
    /// A session joined a room (published on the room subject).
    Joined {
        /// Origin process.
        from: String,
        /// Backend id.
        backend: String,
        /// Room id.
        room: String,
        /// The member.
        member: MemberInfo,
    },
    /// A member's data changed (flags, in-call, owner after resume).
    Changed {
        /// Origin process.
        from: String,
        /// Backend id.
        backend: String,
        /// Room id.
        room: String,
        /// The member.
        member: MemberInfo,
    },
    /// A session left a room.
    Left {
        /// Origin process.
        from: String,
        /// Backend id.
        backend: String,
        /// Room id.
        room: String,
        /// Session id.
        sid: String,
    },
    /// Deliver the body to every local member of the room but `except`.
    RoomFrame {
        /// Origin process.
        from: String,
        /// Backend id.
        backend: String,
        /// Room id.
        room: String,
        /// Session not to deliver to.
        #[serde(default)]
        except: Option<String>,
        /// Only to the members in the call (recipient type `call`).
        #[serde(default)]
        call_only: bool,
    },
    /// Deliver the body to a session of the receiving process.
    SessionFrame {
        /// Session id.
        sid: String,
        /// The sender's backend: the frame is delivered only to a session
        /// of this backend (sessions of other backends are unreachable).
        #[serde(default)]
        backend: Option<String>,
        /// Sender to tell `no_such_session` when the target does not exist
        /// (or is on another backend), with the request id.
        #[serde(default)]
        reply_to: Option<String>,
        /// Request id of the message, for the error to `reply_to`.
        #[serde(default)]
        id: Option<String>,
    },
    /// End a session of the receiving process with `bye` `reason`, without
    /// telling Nextcloud that it left (it was replaced by a reconnect).
    EndSession {
        /// Session id.
        sid: String,
        /// `bye` reason.
        reason: String,
    },
    /// An MCU message (the body: the client's `data`) of `sender` to the
    /// receiving process's session `sid`, whose process owns the Janus
    /// handles of its publishers: subscribing (`requestoffer`), `answer`,
    /// `candidate`, `endOfCandidates`, `selectStream`. Replies go to
    /// `sender` as session frames.
    Mcu {
        /// Origin process.
        from: String,
        /// The publisher's session (on the receiving process).
        sid: String,
        /// The subscriber's session (on the origin process).
        sender: String,
        /// The sender's backend.
        backend: String,
        /// Request id of the message, for errors.
        #[serde(default)]
        id: Option<String>,
    },
    /// Deliver the body to every local session of a user.
    UserFrame {
        /// Origin process.
        from: String,
        /// Backend id.
        backend: String,
        /// User id.
        user: String,
        /// Session not to deliver to.
        #[serde(default)]
        except: Option<String>,
    },
    /// A backend API request; the body is the request JSON. Every process
    /// applies it to its local sessions, in bus order.
    Backend {
        /// Backend id.
        backend: String,
        /// Backend URL as the request named it.
        url: String,
        /// Room id.
        room: String,
    },
    /// A transient data operation, applied by every process in bus order.
    Transient {
        /// Backend id.
        backend: String,
        /// Room id.
        room: String,
        /// Key.
        key: String,
        /// New value (None = remove).
        #[serde(default)]
        value: Option<Box<RawValue>>,
        /// TTL in nanoseconds.
        #[serde(default)]
        ttl_ns: Option<u64>,
        /// For removals by TTL: only if the value still has this version.
        #[serde(default)]
        if_version: Option<u64>,
        /// The session that asked, and its request id: told by its process
        /// when the change is refused in bus order (a limit another
        /// process's change reached first).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
        /// See `sender`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
    },
    /// Asks the processes serving a room for a [`RoomSnapshot`].
    SnapshotRequest {
        /// Origin process.
        from: String,
        /// Backend id.
        backend: String,
        /// Room id.
        room: String,
    },
    /// Asks the processes for an internal client that can start a dialout;
    /// the body is `{"number", "options"}`. Only a process that has one
    /// answers (with the backend API reply).
    Dialout {
        /// Origin process.
        from: String,
        /// Backend id.
        backend: String,
        /// Room id.
        room: String,
        /// Backend URL as the request named it.
        url: String,
    },
    /// The receiving process's session `sid` sent a frame (room, user or
    /// session message; `except` or `reply_to` name the sender) that left
    /// recipients of process `from` more than half full: its next message
    /// is not read until `from` sends `Release` (or `[clients]
    /// slowreceiverwait` passed).
    Hold {
        /// Process whose recipients are congested.
        from: String,
        /// The sender, a session of the receiving process.
        sid: String,
    },
    /// See `Hold`: the recipients drained, or made no progress.
    Release {
        /// Process that sent the `Hold`.
        from: String,
        /// The sender.
        sid: String,
    },
    /// Asks the owner of a resume id to hand the session over.
    ResumeRequest {
        /// Resume id.
        resume_id: String,
        /// Process taking the session.
        to: String,
        /// Only say where the session is (answered with a
        /// [`SessionHandover`] with `peek`), keep it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        peek: bool,
        /// Hand it over as [`Header::Handover`] parts on the asker's
        /// subject, after a `Changed` on its room's subject (the answer
        /// only acknowledges).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        chunked: bool,
    },
    /// One part of a session handed over (the body: part `part` of
    /// `parts` of the session as the state file writes it), on the
    /// receiving process's subject.
    Handover {
        /// Origin process.
        from: String,
        /// Session id.
        sid: String,
        /// This part (from 0).
        part: u32,
        /// How many parts.
        parts: u32,
    },
    /// A stopping process asks the receiving one to take these sessions:
    /// it prepares their rooms and answers, then gets them as `Handover`s.
    Park {
        /// Origin process.
        from: String,
        /// The sessions.
        sessions: Vec<ParkEntry>,
    },
    /// A stopping process asks the receiving one to serve its Janus
    /// publishers and subscribers by claiming its Janus session(s) (the
    /// body: `mcu::SavedMcu`); answered with the sessions claimed.
    McuAdopt {
        /// Origin process.
        from: String,
    },
    /// A stopping process asks which of the sessions it handed over the
    /// receiving one holds (answered with their ids).
    Parked {
        /// Origin process.
        from: String,
        /// Session ids.
        sids: Vec<String>,
    },
}

impl Header {
    /// The process that sent the message, for messages that name it.
    pub fn origin(&self) -> Option<&str> {
        match self {
            Header::Heartbeat { from, .. }
            | Header::Discover { from, .. }
            | Header::Joined { from, .. }
            | Header::Changed { from, .. }
            | Header::Left { from, .. }
            | Header::RoomFrame { from, .. }
            | Header::UserFrame { from, .. }
            | Header::Mcu { from, .. }
            | Header::SnapshotRequest { from, .. }
            | Header::Hold { from, .. }
            | Header::Release { from, .. }
            | Header::Handover { from, .. }
            | Header::Park { from, .. }
            | Header::McuAdopt { from, .. }
            | Header::Parked { from, .. }
            | Header::Dialout { from, .. } => Some(from),
            Header::ResumeRequest { to, .. } => Some(to),
            _ => None,
        }
    }
}

/// Encodes a header and an optional body into one bus message.
pub fn encode(header: &Header, body: Option<&[u8]>) -> Bytes {
    let mut out = serde_json::to_vec(header).expect("headers serialize");
    out.push(b'\n');
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    Bytes::from(out)
}

/// Splits a bus message into header and body.
pub fn decode(payload: &Bytes) -> Option<(Header, Bytes)> {
    let nl = payload.iter().position(|b| *b == b'\n')?;
    let header = serde_json::from_slice(&payload[..nl]).ok()?;
    Some((header, payload.slice(nl + 1..)))
}

/// A message received from the bus.
pub struct Inbound {
    /// The subject it was published on.
    pub subject: String,
    /// The payload.
    pub payload: Bytes,
    /// Reply subject, for requests.
    pub reply: Option<String>,
    /// Came through the [`ALL_ROOMS`] subscription (a snapshot request
    /// of a room that may not be served here).
    pub any_room: bool,
}

/// Why messages from other processes may have been lost (the hub then
/// resyncs what they could have changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// This process did not keep up: the client library dropped messages.
    SlowConsumer,
    /// The connection to the bus server was lost and made again (the
    /// server may have closed it as a slow consumer): what was published
    /// meanwhile never arrived.
    Reconnected,
}

impl Loss {
    /// The label of the resync metric.
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::SlowConsumer => "slow_consumer",
            Loss::Reconnected => "reconnected",
        }
    }
}

/// Boxed future of a request's replies.
pub type Replies = Pin<Box<dyn Future<Output = Vec<Bytes>> + Send>>;

/// The bus seen by the hub.
pub trait Bus: Send + Sync {
    /// This process's id (prefix of its session and resume ids).
    fn pid(&self) -> &str;
    /// True when other processes may exist (events must be published and
    /// replicated state applied in bus order).
    fn clustered(&self) -> bool;
    /// Publishes without blocking; failures are logged.
    fn publish(&self, subject: String, payload: Bytes);
    /// Publishes a reply to a request.
    fn reply(&self, subject: String, payload: Bytes) {
        self.publish(subject, payload)
    }
    /// Sends a request and collects replies until `expected` arrived or
    /// `timeout` passed.
    fn request(
        &self,
        subject: String,
        payload: Bytes,
        expected: usize,
        timeout: Duration,
    ) -> Replies;
    /// Waits until the server processed everything published and
    /// subscribed so far (a round trip: a subscription is then active, and
    /// what another process publishes from now on reaches it).
    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Starts receiving the messages of `subject`, in order with what was
    /// published and subscribed before; never blocks. Called once per
    /// subject by the index that decides it (rooms served, users with
    /// sessions here), then `unsubscribe` once; `flush` resolves when the
    /// subscription is active.
    fn subscribe(&self, _subject: String) {}
    /// Stops receiving `subject`.
    fn unsubscribe(&self, _subject: String) {}
    /// Receives (`on`) or stops receiving the snapshot requests of every
    /// room ([`ALL_ROOMS`]), marked [`Inbound::any_room`]; in order with
    /// what was published before.
    fn all_rooms_snapshot_requests(&self, _on: bool) {}
    /// Resolves when messages from other processes may have been lost
    /// since the last call (never for a bus that loses nothing); several
    /// losses before the call are told once.
    fn lost(&self) -> Pin<Box<dyn Future<Output = Loss> + Send + '_>> {
        Box::pin(std::future::pending())
    }
    /// True while connected to the bus server (always for the local bus).
    fn connected(&self) -> bool {
        true
    }
    /// True while more messages wait to be published than the bus queues
    /// comfortably: client connections are not read until it drained.
    fn congested(&self) -> bool {
        false
    }
    /// Resolves once the publish queue drained to half (at once when not
    /// congested).
    fn drained(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// The in-process bus: a single process, nothing to replicate.
pub struct LocalBus {
    pid: String,
}

impl LocalBus {
    /// A local bus with a random process id.
    pub fn new() -> Self {
        LocalBus {
            pid: new_process_id(),
        }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

/// The subscriptions of a process, kept by the indexes that decide them
/// ([`crate::hub`]'s rooms and users): nothing for a process alone.
#[derive(Clone, Default)]
pub struct Interest(Option<std::sync::Arc<dyn Bus>>);

impl Interest {
    /// The subscriptions of `bus`, when other processes may exist.
    pub fn of(bus: &std::sync::Arc<dyn Bus>) -> Interest {
        Interest(bus.clustered().then(|| bus.clone()))
    }

    /// Starts receiving `subject`.
    pub fn add(&self, subject: impl FnOnce() -> String) {
        if let Some(b) = &self.0 {
            b.subscribe(subject());
        }
    }

    /// Stops receiving `subject`.
    pub fn remove(&self, subject: impl FnOnce() -> String) {
        if let Some(b) = &self.0 {
            b.unsubscribe(subject());
        }
    }
}

/// A random process id (8 URL-safe characters).
pub fn new_process_id() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut b = [0u8; 6];
    rand::rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Bus for LocalBus {
    fn pid(&self) -> &str {
        &self.pid
    }
    fn clustered(&self) -> bool {
        false
    }
    fn publish(&self, _subject: String, _payload: Bytes) {}
    fn request(&self, _s: String, _p: Bytes, _e: usize, _t: Duration) -> Replies {
        Box::pin(async { Vec::new() })
    }
    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_with_spaces_wildcards_or_empty_tokens_are_not_valid() {
        assert!(valid_subject(&process_subject("aB3-_x9Z")));
        assert!(valid_subject(&room_subject(
            "nc 1",
            "room with spaces.and dots"
        )));
        for bad in [
            "", "a b", "a..b", "a.", ".a", "a.*", "a.>", "a\tb", "a\u{e9}",
        ] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
    }

    #[test]
    fn member_kinds_are_the_strings_of_before() {
        for (k, s) in [
            (MemberKind::Client, "\"client\""),
            (MemberKind::Internal, "\"internal\""),
            (MemberKind::Virtual, "\"virtual\""),
        ] {
            assert_eq!(serde_json::to_string(&k).unwrap(), s);
            assert_eq!(format!("\"{}\"", k.as_str()), s);
            assert_eq!(serde_json::from_str::<MemberKind>(s).unwrap(), k);
        }
    }

    #[test]
    fn the_previous_release_is_version_1_and_its_snapshot_requests_are_recognised() {
        let old = Bytes::from_static(b"{\"heartbeat\":{\"from\":\"p\",\"counts\":{}}}\n");
        assert!(matches!(
            decode(&old),
            Some((
                Header::Heartbeat {
                    version: PREVIOUS_BUS_VERSION,
                    ..
                },
                _
            ))
        ));
        let h = Header::Discover {
            from: "p".into(),
            version: BUS_VERSION,
        };
        assert!(matches!(
            decode(&encode(&h, None)),
            Some((
                Header::Discover {
                    version: BUS_VERSION,
                    ..
                },
                _
            ))
        ));
        let req = Header::SnapshotRequest {
            from: "p".into(),
            backend: "b".into(),
            room: "r".into(),
        };
        assert!(is_snapshot_request(&encode(&req, None)));
        assert!(!is_snapshot_request(&encode(&h, None)));
    }

    #[test]
    fn header_and_body_round_trip() {
        let h = Header::SessionFrame {
            sid: "abc".into(),
            backend: Some("b".into()),
            reply_to: None,
            id: None,
        };
        let p = encode(&h, Some(b"{\"type\":\"x\"}\n"));
        let (h2, body) = decode(&p).unwrap();
        assert!(
            matches!(h2, Header::SessionFrame { sid, backend, .. } if sid == "abc" && backend.as_deref() == Some("b"))
        );
        assert_eq!(&body[..], b"{\"type\":\"x\"}\n");
        assert!(
            room_subject("https://a.example", "room.1 x")
                .split('.')
                .count()
                == 4
        );
    }
}
