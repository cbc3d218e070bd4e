//! Client, internal and virtual sessions: identity, room, permissions, the
//! connection they are attached to and the resume queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use base64::Engine;
use rand::RngCore;
use serde_json::value::RawValue;

use crate::api::server::Frame;
use crate::backend::registry::Backend;
use crate::hub::outbox::Outbox;
use crate::hub::room::RoomKey;

/// In-call flag bits as Nextcloud Talk defines them.
pub mod flags {
    /// In the call.
    pub const IN_CALL: u32 = 1;
    /// With audio.
    pub const WITH_AUDIO: u32 = 2;
    /// With phone.
    pub const WITH_PHONE: u32 = 8;
}

/// What kind of session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionKind {
    /// A regular client (Talk web/desktop/mobile).
    Client,
    /// An internal service (e.g. the SIP bridge).
    Internal,
    /// A virtual session added by an internal client.
    Virtual {
        /// Public id of the internal client's session.
        owner: Arc<str>,
        /// The id the internal client chose.
        client_sid: String,
        /// The Nextcloud actor the internal client gave (`options`).
        actor: Option<Arc<Actor>>,
    },
}

/// The Nextcloud actor of a virtual session (`options.actorId` and
/// `actorType` of its `addsession`).
#[derive(Debug, Clone, PartialEq)]
pub struct Actor {
    /// `actorId`.
    pub id: String,
    /// `actorType`.
    pub kind: String,
}

impl SessionKind {
    /// The `clienttype` label of the Go server's metrics.
    pub fn label(&self, federated: bool) -> &'static str {
        match self {
            SessionKind::Client if federated => "federation",
            SessionKind::Client => "client",
            SessionKind::Internal => "internal",
            SessionKind::Virtual { .. } => "virtual",
        }
    }
}

/// One session of the hub.
pub struct Session {
    /// Public session id.
    pub id: Arc<str>,
    /// Secret resume id (virtual sessions have none).
    pub resume_id: Option<Arc<str>>,
    /// Client, internal or virtual.
    pub kind: SessionKind,
    /// Backend the session belongs to.
    pub backend: Arc<Backend>,
    /// Base URL of the backend (for `Spreed-Signaling-Backend`).
    pub backend_base: Arc<str>,
    /// URL of the Nextcloud signaling endpoint for room/ping requests.
    pub backend_url: Arc<str>,
    /// User id; `None` for guests.
    pub user_id: Option<Arc<str>>,
    /// User data from the backend.
    pub user: Option<Arc<RawValue>>,
    /// Client feature ids from hello.
    pub features: Vec<String>,
    /// Room the session is in.
    pub room: Option<RoomKey>,
    /// Nextcloud session id of the room join.
    pub room_session_id: Option<Arc<str>>,
    /// Permissions from the backend; `None` = everything but `hide-displaynames`.
    pub permissions: Option<Vec<String>>,
    /// The connection, when connected.
    pub conn: Option<Arc<Outbox>>,
    /// Frames kept while disconnected.
    pub queue: VecDeque<Frame>,
    /// Bytes in `queue`.
    pub queue_bytes: usize,
    /// Frames and bytes at the front of `queue` that were still in the
    /// connection's outbox when it overflowed (close 1013): kept in full,
    /// the resume queue's limits count only what arrives after them.
    pub carried: (usize, usize),
    /// In-call flags (internal and virtual sessions).
    pub in_call: u32,
    /// Participant flags (virtual sessions).
    pub flags: u32,
    /// Virtual sessions of an internal client, by the client's id.
    pub virtuals: HashMap<String, Arc<str>>,
    /// On this server: the link to the remote server of a federated room.
    pub(crate) fed_link: Option<Box<crate::hub::federation::FedLink>>,
    /// The client's address (as `[app] trustedproxies` tell it), for the
    /// per-address cap of federation dials; None for sessions that did not
    /// say hello on this process.
    pub client_ip: Option<std::net::IpAddr>,
    /// The country of the client's address (`[geoip]`), set with
    /// `client_ip`: picks the proxy of its publishers.
    pub country: Option<Arc<str>>,
    /// Slots for MCU requests running at once (made on the first).
    pub(crate) mcu_tasks: Option<Arc<crate::hub::mcu::McuSlots>>,
    /// On the hosting server: this is a federated session (`auth.type`
    /// `federation`), with the actor its token named.
    pub federated: Option<Box<Federated>>,
}

/// A session of a user of another Nextcloud, joined through that
/// Nextcloud's signaling server.
#[derive(Debug, Clone, Default)]
pub struct Federated {
    /// `userdata.actorType` and `actorId` of the token, when both are set.
    pub actor: Option<(String, String)>,
}

impl Session {
    /// True when the session may use `permission`.
    pub fn has_permission(&self, permission: &str) -> bool {
        if self.kind == SessionKind::Internal {
            return true;
        }
        match &self.permissions {
            None => permission != "hide-displaynames",
            Some(list) => list.iter().any(|p| p == permission),
        }
    }

    /// True when the client announced `feature` in its hello.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// True for virtual sessions.
    pub fn is_virtual(&self) -> bool {
        matches!(self.kind, SessionKind::Virtual { .. })
    }
}

/// A new random id (public session id or resume id).
pub fn new_id() -> Arc<str> {
    let mut buf = [0u8; 30];
    rand::rng().fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(buf)
        .into()
}
