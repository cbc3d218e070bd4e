//! The MCU proxy protocol between a signaling server (`[mcu] type =
//! proxy`) and a signaling proxy (the Go project's
//! `nextcloud-spreed-signaling-proxy`, or ours): JSON text frames
//! `{"id"?, "type", <type>: {...}}` (spec: mcu-proxy-notes.md §2).
//!
//! The same types serve both sides: the server serializes
//! [`ProxyClientMessage`] and parses [`ProxyServerMessage`], the proxy does
//! the reverse. Field names, omissions and `null`s follow the Go 0.4.1
//! encoding byte for byte (pinned by the tests below); fields of newer Go
//! releases that 0.4.1 does not know (`sid`) are optional and omitted when
//! empty. Signaling payloads (SDP, candidates) stay raw JSON.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The protocol version of the hello.
pub const PROXY_VERSION: &str = "1.0";

/// Bit of `mediatypes`: audio.
pub const MEDIA_AUDIO: u32 = 1;
/// Bit of `mediatypes`: video.
pub const MEDIA_VIDEO: u32 = 2;
/// Bit of `mediatypes`: screen sharing (screen offers are always this).
pub const MEDIA_SCREEN: u32 = 4;

// Error codes of the proxy's `error` replies.

/// hello: bad signature, unknown `iss`, not an RSA algorithm.
pub const AUTH_FAILED: &str = "auth_failed";
/// hello: `iat` more than 5 minutes old.
pub const TOKEN_EXPIRED: &str = "token_expired";
/// hello: wrong version, no token and no resume id, unparsable message.
pub const INVALID_FORMAT: &str = "invalid_format";
/// Anything but a hello on a connection without a session.
pub const HELLO_EXPECTED: &str = "hello_expected";
/// hello: unknown or foreign `resumeid` (the server then sends a fresh hello).
pub const NO_SUCH_SESSION: &str = "no_such_session";
/// A command or payload for a publisher/subscriber the proxy does not have.
pub const UNKNOWN_CLIENT: &str = "unknown_client";
/// Unsupported command or message type.
pub const BAD_REQUEST: &str = "bad_request";
/// Unsupported payload type.
pub const UNSUPPORTED_PAYLOAD: &str = "unsupported_payload";
/// `create-publisher` while the proxy's shutdown is scheduled.
pub const SHUTDOWN_SCHEDULED: &str = "shutdown_scheduled";
/// The proxy's MCU did not answer in time.
pub const TIMEOUT: &str = "timeout";
/// A wrapped MCU error.
pub const INTERNAL_ERROR: &str = "internal_error";
/// hello: our proxy has `[app] maxsessions` sessions (the Go proxy has no
/// such cap).
pub const TOO_MANY_SESSIONS: &str = "too_many_sessions";

/// Reason of the `bye` sent to a connection whose session was resumed on
/// another connection.
pub const BYE_SESSION_RESUMED: &str = "session_resumed";
/// Reason of the `bye` that answers a server's `bye` (its session ended).
pub const BYE_SESSION_CLOSED: &str = "session_closed";

wire_kind! {
    /// The `type` of a message from the server to the proxy.
    pub enum ProxyClientKind {
        /// `hello`: authenticate or resume.
        Hello = "hello",
        /// `bye`: end the session.
        Bye = "bye",
        /// `command`: create or delete a publisher or subscriber.
        Command = "command",
        /// `payload`: a signaling message for a publisher or subscriber.
        Payload = "payload",
    }
}

wire_kind! {
    /// The `type` of a message from the proxy to the server.
    pub enum ProxyServerKind {
        /// `hello`: the session was created or resumed.
        Hello = "hello",
        /// `bye`: the proxy ends the connection.
        Bye = "bye",
        /// `command`: reply to a command.
        Command = "command",
        /// `payload`: reply to a payload, or an unsolicited candidate.
        Payload = "payload",
        /// `event`: load, shutdown, backend state, closed clients.
        Event = "event",
        /// `error`: a request failed.
        Error = "error",
    }
}

wire_kind! {
    /// `command.type`.
    pub enum CommandKind {
        /// Create a publisher (`streamType`, `bitrate`, `mediatypes`).
        CreatePublisher = "create-publisher",
        /// Create a subscriber (`streamType`, `publisherId`).
        CreateSubscriber = "create-subscriber",
        /// Delete a publisher (`clientId`).
        DeletePublisher = "delete-publisher",
        /// Delete a subscriber (`clientId`).
        DeleteSubscriber = "delete-subscriber",
    }
}

wire_kind! {
    /// `payload.type`: the signaling message's type (the reply echoes it).
    pub enum PayloadKind {
        /// SDP offer of a publisher (the reply carries the answer).
        Offer = "offer",
        /// SDP answer of a subscriber.
        Answer = "answer",
        /// A trickled ICE candidate (both directions).
        Candidate = "candidate",
        /// End of trickled candidates (confirmed at once).
        EndOfCandidates = "endOfCandidates",
        /// A subscriber asks for the publisher's offer.
        RequestOffer = "requestoffer",
        /// Sent by the Go server for `sendoffer`.
        SendOffer = "sendoffer",
        /// Simulcast / SVC layer selection of a subscriber.
        SelectStream = "selectStream",
    }
}

wire_kind! {
    /// `event.type`.
    pub enum EventKind {
        /// The proxy's load (`load`, omitted for 0).
        UpdateLoad = "update-load",
        /// The proxy takes no new publishers and exits when empty.
        ShutdownScheduled = "shutdown-scheduled",
        /// The proxy's MCU (Janus) connection is back.
        BackendConnected = "backend-connected",
        /// The proxy lost its MCU; it dropped all its clients.
        BackendDisconnected = "backend-disconnected",
        /// A publisher is gone (`clientId`).
        PublisherClosed = "publisher-closed",
        /// A subscriber is gone (`clientId`).
        SubscriberClosed = "subscriber-closed",
        /// ICE of a publisher or subscriber completed (`clientId`).
        IceCompleted = "ice-completed",
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_zero32(n: &u32) -> bool {
    *n == 0
}

/// A message from the server to the proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyClientMessage {
    /// Request id ("1", "2", … per connection), echoed in the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Message type.
    #[serde(rename = "type")]
    pub kind: ProxyClientKind,
    /// Body of `hello`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<ProxyHelloRequest>,
    /// Body of `bye` (always empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bye: Option<ProxyByeRequest>,
    /// Body of `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<ProxyCommand>,
    /// Body of `payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<ProxyPayload>,
}

impl ProxyClientMessage {
    fn bare(id: &str, kind: ProxyClientKind) -> Self {
        ProxyClientMessage {
            id: Some(id.to_string()),
            kind,
            hello: None,
            bye: None,
            command: None,
            payload: None,
        }
    }

    /// A `hello` request.
    pub fn hello(id: &str, hello: ProxyHelloRequest) -> Self {
        ProxyClientMessage {
            hello: Some(hello),
            ..Self::bare(id, ProxyClientKind::Hello)
        }
    }

    /// A `command` request.
    pub fn command(id: &str, command: ProxyCommand) -> Self {
        ProxyClientMessage {
            command: Some(command),
            ..Self::bare(id, ProxyClientKind::Command)
        }
    }

    /// A `payload` request.
    pub fn payload(id: &str, payload: ProxyPayload) -> Self {
        ProxyClientMessage {
            payload: Some(payload),
            ..Self::bare(id, ProxyClientKind::Payload)
        }
    }
}

/// `hello` from the server: a new session (`token`, empty `resumeid`) or a
/// resume (`resumeid`, empty `token`). Both fields are always sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProxyHelloRequest {
    /// Always [`PROXY_VERSION`].
    #[serde(default)]
    pub version: String,
    /// The session id of the proxy to resume, empty for a new session.
    #[serde(default)]
    pub resumeid: String,
    /// Feature ids (never sent by Go 0.4.1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// RS256 JWT `{"iat", "iss": token_id}`, empty on a resume.
    #[serde(default)]
    pub token: String,
}

/// `bye` from the server (no fields).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProxyByeRequest {}

/// `command` from the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyCommand {
    /// What to do.
    #[serde(rename = "type")]
    pub kind: CommandKind,
    /// Signaling session id of newer Go servers (ignored by 0.4.1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
    /// `video` or `screen` (create-*).
    #[serde(
        rename = "streamType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub stream_type: String,
    /// The proxy's id of the publisher (create-subscriber).
    #[serde(
        rename = "publisherId",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub publisher_id: String,
    /// The proxy's id of the publisher/subscriber (delete-*).
    #[serde(rename = "clientId", default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// Bitrate cap in bit/s (create-publisher), omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bitrate: u64,
    /// [`MEDIA_AUDIO`] | [`MEDIA_VIDEO`] | [`MEDIA_SCREEN`], omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero32")]
    pub mediatypes: u32,
}

impl ProxyCommand {
    /// A command with only its type set.
    pub fn new(kind: CommandKind) -> Self {
        ProxyCommand {
            kind,
            sid: String::new(),
            stream_type: String::new(),
            publisher_id: String::new(),
            client_id: String::new(),
            bitrate: 0,
            mediatypes: 0,
        }
    }
}

/// `payload` in both directions: the request (`payload` omitted when
/// there is none) and the reply (`payload` is `null` when there is none,
/// as Go sends it: build replies with [`ProxyPayload::reply`]).
#[derive(Debug, Clone, Deserialize)]
pub struct ProxyPayload {
    /// The signaling message's type; echoed in the reply.
    #[serde(rename = "type")]
    pub kind: PayloadKind,
    /// The proxy's id of the publisher/subscriber.
    #[serde(rename = "clientId", default)]
    pub client_id: String,
    /// Signaling session id of newer Go servers (ignored by 0.4.1).
    #[serde(default)]
    pub sid: String,
    /// The client's payload, unchanged (request), or the MCU's answer
    /// (reply: `{"type":"answer","sdp":…}`; unsolicited: `{"candidate":…}`).
    /// `"payload":null` reads as `None`.
    #[serde(default)]
    pub payload: Option<Box<RawValue>>,
    /// Serialize a missing payload as `"payload":null` instead of omitting
    /// it (replies from the proxy).
    #[serde(skip)]
    pub null_payload: bool,
}

impl ProxyPayload {
    /// A request to the proxy (a missing payload is omitted).
    pub fn request(kind: PayloadKind, client_id: &str, payload: Option<Box<RawValue>>) -> Self {
        ProxyPayload {
            kind,
            client_id: client_id.to_string(),
            sid: String::new(),
            payload,
            null_payload: false,
        }
    }

    /// A reply or unsolicited message from the proxy (a missing payload is
    /// `"payload":null`).
    pub fn reply(kind: PayloadKind, client_id: &str, payload: Option<Box<RawValue>>) -> Self {
        ProxyPayload {
            null_payload: true,
            ..Self::request(kind, client_id, payload)
        }
    }
}

impl Serialize for ProxyPayload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("type", &self.kind)?;
        m.serialize_entry("clientId", &self.client_id)?;
        if !self.sid.is_empty() {
            m.serialize_entry("sid", &self.sid)?;
        }
        if self.payload.is_some() || self.null_payload {
            m.serialize_entry("payload", &self.payload)?;
        }
        m.end()
    }
}

/// A message from the proxy to the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyServerMessage {
    /// The id of the request this answers; none on unsolicited messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Message type.
    #[serde(rename = "type")]
    pub kind: ProxyServerKind,
    /// Body of `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ProxyError>,
    /// Body of `hello`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<ProxyHelloReply>,
    /// Body of `bye`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bye: Option<ProxyBye>,
    /// Body of `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<ProxyCommandReply>,
    /// Body of `payload`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<ProxyPayload>,
    /// Body of `event`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<ProxyEvent>,
}

impl ProxyServerMessage {
    fn bare(id: Option<&str>, kind: ProxyServerKind) -> Self {
        ProxyServerMessage {
            id: id.map(str::to_string),
            kind,
            error: None,
            hello: None,
            bye: None,
            command: None,
            payload: None,
            event: None,
        }
    }

    /// An `error` reply.
    pub fn error(id: Option<&str>, code: &str, message: &str) -> Self {
        ProxyServerMessage {
            error: Some(ProxyError {
                code: code.to_string(),
                message: message.to_string(),
                details: None,
            }),
            ..Self::bare(id, ProxyServerKind::Error)
        }
    }

    /// A `hello` reply.
    pub fn hello(id: Option<&str>, hello: ProxyHelloReply) -> Self {
        ProxyServerMessage {
            hello: Some(hello),
            ..Self::bare(id, ProxyServerKind::Hello)
        }
    }

    /// A `bye` with a reason.
    pub fn bye(reason: &str) -> Self {
        ProxyServerMessage {
            bye: Some(ProxyBye {
                reason: reason.to_string(),
            }),
            ..Self::bare(None, ProxyServerKind::Bye)
        }
    }

    /// A `command` reply naming the created/deleted client.
    pub fn command(id: Option<&str>, client_id: &str) -> Self {
        ProxyServerMessage {
            command: Some(ProxyCommandReply {
                id: client_id.to_string(),
                sid: String::new(),
            }),
            ..Self::bare(id, ProxyServerKind::Command)
        }
    }

    /// A `payload` reply (use [`ProxyPayload::reply`]) or an unsolicited
    /// payload (no id).
    pub fn payload(id: Option<&str>, payload: ProxyPayload) -> Self {
        ProxyServerMessage {
            payload: Some(payload),
            ..Self::bare(id, ProxyServerKind::Payload)
        }
    }

    /// An `event` (never has an id).
    pub fn event(event: ProxyEvent) -> Self {
        ProxyServerMessage {
            event: Some(event),
            ..Self::bare(None, ProxyServerKind::Event)
        }
    }
}

/// `error` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyError {
    /// Machine-readable code (the constants of this module).
    #[serde(default)]
    pub code: String,
    /// Human-readable message.
    #[serde(default)]
    pub message: String,
    /// Optional details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<RawValue>>,
}

/// `hello` reply body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyHelloReply {
    /// Always [`PROXY_VERSION`].
    #[serde(default)]
    pub version: String,
    /// The proxy's session id (opaque; the `resumeid` of a later resume).
    #[serde(default)]
    pub sessionid: String,
    /// Information on the proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ProxyServerInfo>,
}

/// `hello.server`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProxyServerInfo {
    /// The proxy's version string.
    #[serde(default)]
    pub version: String,
    /// Feature ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// ISO country code of the proxy (`[app] country`), uppercase.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub country: String,
}

/// `bye` from the proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyBye {
    /// Why, e.g. [`BYE_SESSION_RESUMED`].
    #[serde(default)]
    pub reason: String,
}

/// `command` reply body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyCommandReply {
    /// The proxy's id of the created/deleted publisher or subscriber.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Signaling session id of newer Go proxies.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
}

/// `event` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyEvent {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The publisher/subscriber concerned (publisher-closed,
    /// subscriber-closed, ice-completed).
    #[serde(rename = "clientId", default, skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// Publishers + subscribers on the proxy (update-load), omitted for 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub load: u64,
    /// Signaling session id of newer Go proxies.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
}

impl ProxyEvent {
    /// An event without client or load.
    pub fn new(kind: EventKind) -> Self {
        ProxyEvent {
            kind,
            client_id: String::new(),
            load: 0,
            sid: String::new(),
        }
    }
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
