//! Federation, the client's side: a session of this server joins a
//! conversation hosted by another Nextcloud, whose signaling server ("B")
//! this server dials on the client's behalf. Every message of the session
//! then goes through that link, with the session ids, room ids and actors
//! rewritten both ways (see `spec/federation-notes.md`, 2.3 - 2.8).
//!
//! One task per federated session owns the WebSocket to B. The hub talks to
//! it through a channel bounded in commands and in bytes; the task delivers
//! B's messages to the session through the hub like any other frame. When
//! the link breaks the task reconnects with backoff and resumes its session
//! on B, telling the client `federation_interrupted` and
//! `federation_resumed`. The task ends when the session's [`FedLink`] goes
//! (a cancellation, not a message that a full channel could lose); every
//! write and close towards B has the `[federation] timeout` deadline and
//! races that end, so a B that stops reading holds nothing for long.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

mod dial;
mod handshake;
mod link;
mod offline;
mod rewrite;
pub use rewrite::Rewrite;
mod saved;
pub(crate) use saved::{handed_back, SavedLink};
mod tls;

pub(crate) use dial::{resolver, DialLimits};
use link::Link;
pub(crate) use tls::tls_config;

use super::Hub;
use crate::api::client::RoomFederation;
use crate::api::error::{self, ProtocolError};
use crate::api::server::Frame;

/// Largest message accepted from B (as the Go server).
const MAX_REMOTE_MESSAGE: usize = 64 * 1024;
/// Client messages kept for B while the link is down (then refused).
const QUEUE_LIMIT: usize = 256;
/// Commands waiting for the link task (then refused).
pub(crate) const CHANNEL_SIZE: usize = 256;
/// Bytes of client messages waiting for the link task, and (separately)
/// kept while the link is down; more are refused with `too_many_requests`
/// / `federation_error` carrying the request's id.
pub(crate) const QUEUE_BYTES: usize = 1024 * 1024;
/// First reconnect delay, doubled up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How long a link stopped for a restart or a taker may finish a write
/// under way, and read what B sent before it answers the close.
const STOP_GRACE: Duration = Duration::from_millis(150);
/// How long a save or a hand-over waits for the stopped links to hand
/// back what they held (each needs at most two [`STOP_GRACE`]s).
const HAND_BACK: Duration = Duration::from_millis(500);
/// A connection to B that broke sooner than this after its handshake does
/// not reset the backoff: a B that accepts and drops at once is not dialled
/// in a tight loop.
const STABLE_LINK: Duration = Duration::from_secs(30);

/// What the hub keeps of a session's link to B.
pub(crate) struct FedLink {
    /// Identifies the link (a session may replace its link).
    pub link_id: u64,
    /// Commands to the link task.
    pub sender: FedSender,
    /// `federation.signaling` as the client sent it.
    pub signaling: String,
    /// `federation.url` as the client sent it.
    pub url: String,
    /// The local room id the client knows the conversation by.
    pub local_room: Arc<str>,
    /// The client's Nextcloud session id (pinged to its own Nextcloud).
    pub nc_session: Arc<str>,
    /// Ends the link task when this handle goes (session ended, link
    /// cleared or replaced), however full the channel is.
    _gone: DropGuard,
    /// The same end, asked before the handle goes (a restart).
    cancel: CancellationToken,
    /// Set with `cancel` when the link is kept for a restart or a taker:
    /// the task ends without a word to B.
    kept: Arc<AtomicBool>,
    /// What the link needs to go on elsewhere (updated by the task).
    share: Arc<std::sync::Mutex<SavedLink>>,
    /// The command channel, handed back by a stopped task with what it
    /// had not taken yet (and what came since).
    back: Back,
    /// Cancelled once the task has handed back what it held (or ended).
    handed: CancellationToken,
    /// True while B has confirmed the session's join of a room (set by the
    /// task): only then is the session in a room for the room-join
    /// timeout and pinged to its own Nextcloud.
    joined: Arc<AtomicBool>,
}

impl FedLink {
    /// True once B confirmed the join (and until a leave).
    pub(crate) fn joined(&self) -> bool {
        self.joined.load(Ordering::Acquire)
    }

    /// See [`FedSender::send`].
    pub(crate) fn send(&self, cmd: FedCmd) -> bool {
        self.sender.send(cmd)
    }
}

/// The sending end of a link's command channel, bounded in commands and
/// in bytes (a clone does not keep the link alive).
#[derive(Clone)]
pub(crate) struct FedSender {
    tx: mpsc::Sender<FedCmd>,
    /// Bytes of the commands in `tx` (shared with the task).
    queued: Arc<AtomicUsize>,
}

impl FedSender {
    /// Queues a command for the link task; false when its channel is full
    /// (in commands or in bytes): the caller refuses the request with its
    /// id.
    pub(crate) fn send(&self, cmd: FedCmd) -> bool {
        let bytes = cmd.bytes();
        let before = self.queued.fetch_add(bytes, Ordering::AcqRel);
        if before + bytes > QUEUE_BYTES || self.tx.try_send(cmd).is_err() {
            self.queued.fetch_sub(bytes, Ordering::AcqRel);
            return false;
        }
        true
    }
}

/// Where a stopped link's task hands back its channel and its place in
/// the count of live links (the link still takes requests).
pub(super) type Back = Arc<std::sync::Mutex<Option<(mpsc::Receiver<FedCmd>, LiveLink)>>>;

/// One live link task in the hub's count, for as long as the task runs
/// (its socket to B included): the count is right however a link ends.
pub(crate) struct LiveLink(Arc<AtomicUsize>);

impl LiveLink {
    fn new(count: &Arc<AtomicUsize>) -> LiveLink {
        count.fetch_add(1, Ordering::AcqRel);
        LiveLink(count.clone())
    }
}

impl Drop for LiveLink {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the hub asks of a link (the end of the session is the drop of its
/// [`FedLink`]).
pub(crate) enum FedCmd {
    /// Join (another) room on B over the same connection.
    Join {
        id: Option<String>,
        local_room: String,
        remote_room: String,
        nc_session: String,
    },
    /// Leave the room; the connection closes after B confirmed.
    Leave { id: Option<String> },
    /// A client message for B, and its size as received.
    Forward(Value, usize),
}

impl FedCmd {
    /// What the command counts against [`QUEUE_BYTES`].
    fn bytes(&self) -> usize {
        match self {
            FedCmd::Forward(_, bytes) => *bytes,
            _ => 0,
        }
    }
}

/// A checked `federation` object of a room request.
pub(crate) struct Target {
    /// `ws(s)://.../spreed`.
    pub ws_url: String,
    pub signaling: String,
    pub url: String,
    pub remote_room: String,
    pub token: String,
}

impl Target {
    /// Checks the `federation` object as the Go server does; None means
    /// `invalid_format`.
    pub fn parse(f: &RoomFederation, local_room: &str) -> Option<Target> {
        let mut signaling = f.signaling.trim().to_string();
        if !signaling.ends_with('/') {
            signaling.push('/');
        }
        let mut ws = reqwest::Url::parse(&signaling).ok()?;
        let scheme = match ws.scheme() {
            "http" | "ws" => "ws",
            "https" | "wss" => "wss",
            _ => return None,
        };
        ws.set_scheme(scheme).ok()?;
        ws.host_str()?;
        let ws_url = ws.join("spreed").ok()?.to_string();
        let url = reqwest::Url::parse(&f.url).ok()?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return None;
        }
        if f.token.is_empty() {
            return None;
        }
        Some(Target {
            ws_url,
            signaling: f.signaling.clone(),
            url: f.url.clone(),
            remote_room: if f.roomid.is_empty() {
                local_room.to_string()
            } else {
                f.roomid.clone()
            },
            token: f.token.clone(),
        })
    }
}

/// `@host[:port][/path]` of a Nextcloud URL, without scheme and OCS suffix:
/// how federated actor ids name their cloud.
pub(crate) fn cloud_of(url: &str) -> String {
    let no_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let base = match no_scheme.find("/ocs/v") {
        Some(pos) => &no_scheme[..pos],
        None => no_scheme,
    };
    format!("@{}", base.trim_end_matches('/'))
}

/// Base URL (with scheme) of a Nextcloud URL, for chat mentions.
fn base_of(url: &str) -> String {
    match url.find("/ocs/v") {
        Some(pos) => url[..pos].to_string(),
        None => url.trim_end_matches('/').to_string(),
    }
    .trim_end_matches('/')
    .to_string()
}

/// Why connecting to B failed.
enum ConnectError {
    /// B does not speak federation (it upgraded to WebSocket, but without
    /// `federation` in its features).
    Unsupported,
    /// Refused target, lookup, dial, TLS, HTTP or handshake failure: only
    /// logged; the client gets one generic error whatever it was, so a
    /// federated join tells nothing about what answered where.
    Network(String),
    /// B refused the hello (forwarded to the client).
    Hello(Value),
}

/// The error of every failed dial, the same bytes whatever happened.
pub(crate) fn dial_failed() -> ProtocolError {
    let mut e = ProtocolError::new(
        error::FEDERATION_ERROR,
        "Failed to create federation client.",
    );
    e.details = serde_json::value::to_raw_value(&json!({"code": error::NETWORK_ERROR})).ok();
    e
}

impl ConnectError {
    fn to_protocol(&self) -> ProtocolError {
        match self {
            ConnectError::Unsupported => ProtocolError::new(
                error::FEDERATION_UNSUPPORTED,
                "The target server does not support federation.",
            ),
            ConnectError::Network(_) => dial_failed(),
            ConnectError::Hello(err) => ProtocolError {
                code: err["code"]
                    .as_str()
                    .unwrap_or(error::FEDERATION_ERROR)
                    .into(),
                message: err["message"].as_str().unwrap_or_default().into(),
                details: err
                    .get("details")
                    .and_then(|d| serde_json::value::to_raw_value(d).ok()),
            },
        }
    }
}

impl Hub {
    /// Starts the link of a session to B; the first join carries `id`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_federation(
        self: &Arc<Self>,
        sid: &Arc<str>,
        id: Option<String>,
        target: Target,
        local_room: String,
        nc_session: String,
        features: Vec<String>,
        local_url: &str,
    ) -> FedLink {
        let saved = SavedLink {
            signaling: target.signaling.clone(),
            url: target.url.clone(),
            token: target.token.clone(),
            remote_room: target.remote_room.clone(),
            local_room,
            nc_session,
            features,
            local_url: local_url.to_string(),
            ..SavedLink::default()
        };
        self.spawn_link(sid, id, target, saved, true)
    }

    /// The handle and the task of a link; `fresh`: a new link (its first
    /// connection joins), else one that resumes B's session of `saved`
    /// (with the messages and requests it held).
    fn spawn_link(
        self: &Arc<Self>,
        sid: &Arc<str>,
        id: Option<String>,
        target: Target,
        saved: SavedLink,
        fresh: bool,
    ) -> FedLink {
        let (link, mut task, rx) = self.new_link(sid, id, target, saved.clone());
        let carried = task.carry(saved);
        tokio::spawn(task.run(rx, fresh, carried));
        link
    }

    /// A link's handle, its task (not started) and the task's channel.
    fn new_link(
        self: &Arc<Self>,
        sid: &Arc<str>,
        id: Option<String>,
        target: Target,
        saved: SavedLink,
    ) -> (FedLink, Link, mpsc::Receiver<FedCmd>) {
        static NEXT_LINK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let link_id = NEXT_LINK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CHANNEL_SIZE);
        let gone = CancellationToken::new();
        let queued = Arc::new(AtomicUsize::new(0));
        let joined = Arc::new(AtomicBool::new(saved.joined));
        let kept = Arc::new(AtomicBool::new(false));
        let share = Arc::new(std::sync::Mutex::new(saved.clone()));
        let back = Arc::new(std::sync::Mutex::new(None));
        let handed = CancellationToken::new();
        let link = FedLink {
            link_id,
            sender: FedSender {
                tx,
                queued: queued.clone(),
            },
            signaling: target.signaling.clone(),
            url: target.url.clone(),
            local_room: saved.local_room.as_str().into(),
            nc_session: saved.nc_session.as_str().into(),
            _gone: gone.clone().drop_guard(),
            cancel: gone.clone(),
            kept: kept.clone(),
            share: share.clone(),
            back: back.clone(),
            handed: handed.clone(),
            joined: joined.clone(),
        };
        let task = Link {
            link_id,
            live: LiveLink::new(&self.fed_links),
            gone,
            kept,
            share,
            back,
            _handed: handed.drop_guard(),
            queued,
            joined,
            timeout: self.config.federation.timeout,
            hub: self.clone(),
            sid: sid.clone(),
            local_cloud: cloud_of(&saved.local_url),
            remote_cloud: cloud_of(&target.url),
            local_base: base_of(&saved.local_url),
            remote_base: base_of(&target.url),
            target,
            features: saved.features,
            local_room: saved.local_room,
            nc_session: saved.nc_session,
            pending: id,
            remote_sid: saved.remote_sid,
            resume_id: saved.resume_id,
            leaving: false,
            rejoin: false,
            queue: Vec::new(),
            queue_bytes: 0,
            farewell: false,
        };
        (link, task, rx)
    }

    /// Federation links whose task still runs (and may hold a socket to a
    /// remote server).
    pub fn federation_links(&self) -> usize {
        self.fed_links.load(Ordering::Acquire)
    }

    fn federation_deliver(&self, sid: &str, f: Frame) {
        let mut st = self.lock();
        st.sessions.deliver(sid, &f);
    }

    /// The link ended: the session is no longer federated.
    fn federation_ended(&self, sid: &str, link_id: u64) {
        let mut st = self.lock();
        if let Some(s) = st.sessions.map.get_mut(sid) {
            if s.fed_link.as_ref().is_some_and(|l| l.link_id == link_id) {
                s.fed_link = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clouds_and_targets() {
        assert_eq!(
            cloud_of("https://remote.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend"),
            "@remote.example"
        );
        assert_eq!(cloud_of("http://127.0.0.1:8080/nc/"), "@127.0.0.1:8080/nc");
        let f = RoomFederation {
            signaling: "https://sig.remote".into(),
            url: "https://remote.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend".into(),
            roomid: String::new(),
            token: "t".into(),
        };
        let t = Target::parse(&f, "local").unwrap();
        assert_eq!(t.ws_url, "wss://sig.remote/spreed");
        assert_eq!(t.remote_room, "local");
        let bad = RoomFederation {
            token: String::new(),
            ..f
        };
        assert!(Target::parse(&bad, "local").is_none());
    }
}
