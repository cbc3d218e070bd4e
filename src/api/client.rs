//! Client -> server messages. Payloads the server only forwards stay raw.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Any message a client sends.
///
/// The bodies of the rare types are boxed: the message is built and moved
/// on every frame, and `message` / `control` are most of them.
#[derive(Debug, Deserialize)]
pub struct ClientMessage<'a> {
    /// Request id, echoed in the reply.
    #[serde(default)]
    pub id: Option<String>,
    /// Message type: hello, bye, room, message, control, transient, internal.
    #[serde(rename = "type")]
    pub kind: ClientKind,
    /// Body of `hello`.
    #[serde(default)]
    pub hello: Option<Box<HelloClientMessage>>,
    /// Body of `room`.
    #[serde(default)]
    pub room: Option<Box<RoomClientMessage>>,
    /// Body of `message`.
    #[serde(borrow, default)]
    pub message: Option<MessageClientMessage<'a>>,
    /// Body of `control`.
    #[serde(borrow, default)]
    pub control: Option<MessageClientMessage<'a>>,
    /// Body of `transient`.
    #[serde(default)]
    pub transient: Option<Box<TransientClientMessage>>,
    /// Body of `internal`.
    #[serde(default)]
    pub internal: Option<Box<InternalClientMessage>>,
}

wire_kind! {
    /// The `type` of a client message.
    pub enum ClientKind {
        /// `hello`: authenticate or resume.
        Hello = "hello",
        /// `bye`: end the session.
        Bye = "bye",
        /// `room`: join or leave a room.
        Room = "room",
        /// `message`: to a session, user, room or call.
        Message = "message",
        /// `control`: as `message`, for moderators.
        Control = "control",
        /// `transient`: set or remove transient room data.
        Transient = "transient",
        /// `internal`: requests of internal clients.
        Internal = "internal",
    }
}

/// Just the id of a message that failed to parse, to echo it in the error.
#[derive(Debug, Deserialize)]
pub struct IdOnly {
    /// Request id.
    pub id: Option<String>,
}

/// `hello` request.
#[derive(Debug, Deserialize)]
pub struct HelloClientMessage {
    /// "1.0" or "2.0".
    #[serde(default)]
    pub version: String,
    /// Resume id of an earlier session.
    #[serde(default)]
    pub resumeid: Option<String>,
    /// Client feature ids.
    #[serde(default)]
    pub features: Vec<String>,
    /// Authentication.
    #[serde(default)]
    pub auth: Option<HelloAuth>,
}

/// `hello.auth`.
#[derive(Debug, Deserialize)]
pub struct HelloAuth {
    /// Client type (absent: a client).
    #[serde(rename = "type", default)]
    pub kind: AuthKind,
    /// Backend URL (client type).
    #[serde(default)]
    pub url: String,
    /// Parameters forwarded to the backend (v1) or holding the token (v2).
    #[serde(default)]
    pub params: Option<Box<RawValue>>,
}

wire_kind! {
    /// `hello.auth.type`: who authenticates.
    #[derive(Default)]
    pub enum AuthKind {
        /// A Talk client, authenticated by Nextcloud (v1) or a token (v2).
        #[default]
        Client = "client" | "",
        /// Another signaling server, for a user of its Nextcloud.
        Federation = "federation",
        /// An internal client (SIP bridge, recording), by shared secret.
        Internal = "internal",
    }
}

/// `params` of an internal client.
#[derive(Debug, Deserialize)]
pub struct InternalAuthParams {
    /// Random string of at least 32 bytes.
    #[serde(default)]
    pub random: String,
    /// HMAC-SHA256 of `random` with the internal secret, hex.
    #[serde(default)]
    pub token: String,
    /// Backend URL the internal client acts for.
    #[serde(default)]
    pub backend: String,
}

/// `params` of a hello v2.
#[derive(Debug, Deserialize)]
pub struct HelloV2Params {
    /// The JWT.
    #[serde(default)]
    pub token: String,
}

/// `room` request.
#[derive(Debug, Deserialize)]
pub struct RoomClientMessage {
    /// Room to join; empty to leave.
    #[serde(default)]
    pub roomid: String,
    /// Nextcloud session id.
    #[serde(default)]
    pub sessionid: String,
    /// A conversation hosted by another Nextcloud (federation).
    #[serde(default)]
    pub federation: Option<RoomFederation>,
}

/// `room.federation`: where the conversation is hosted.
#[derive(Debug, Deserialize, Default, Clone)]
pub struct RoomFederation {
    /// The remote signaling server's URL.
    #[serde(default)]
    pub signaling: String,
    /// The remote Nextcloud's signaling backend URL.
    #[serde(default)]
    pub url: String,
    /// The room id on the remote server (default: the local one).
    #[serde(default)]
    pub roomid: String,
    /// A hello v2 token of the remote Nextcloud.
    #[serde(default)]
    pub token: String,
}

/// `message` and `control` request, borrowed from the frame it came in
/// (handled before the next frame is read: nothing is copied).
#[derive(Debug, Deserialize)]
pub struct MessageClientMessage<'a> {
    /// Who receives it.
    #[serde(borrow)]
    pub recipient: Recipient<'a>,
    /// Forwarded byte-for-byte.
    #[serde(borrow)]
    pub data: &'a RawValue,
}

/// Recipient of a message.
#[derive(Debug, Deserialize)]
pub struct Recipient<'a> {
    /// session, user, room or call.
    #[serde(rename = "type")]
    pub kind: RecipientKind,
    /// For `session` (borrowed unless it has escapes).
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    pub sessionid: Option<Cow<'a, str>>,
    /// For `user`.
    #[serde(borrow, default, deserialize_with = "borrowed_str")]
    pub userid: Option<Cow<'a, str>>,
}

/// An optional string borrowed from the input when it has no escapes
/// (serde borrows a `Cow` field only when it is not in an `Option`).
fn borrowed_str<'de: 'a, 'a, D>(d: D) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(d)?.map(|b| b.0))
}

wire_kind! {
    /// The recipient `type` of a message.
    pub enum RecipientKind {
        /// One session (`sessionid`).
        Session = "session",
        /// Every session of a user (`userid`).
        User = "user",
        /// The other members of the sender's room.
        Room = "room",
        /// The other members of the sender's room that are in its call.
        Call = "call",
    }
}

wire_kind! {
    /// The `type` of a signaling message's `data` (offer/answer carry SDP).
    pub enum SignalType {
        /// An SDP offer.
        Offer = "offer",
        /// An SDP answer.
        Answer = "answer",
        /// An ICE candidate.
        Candidate = "candidate",
    }
}

wire_kind! {
    /// The `roomType` of a signaling message's `data`: which stream of the
    /// sender it is about (empty is `video`).
    pub enum RoomType {
        /// The camera and microphone (also an empty `roomType`).
        Video = "video" | "",
        /// Audio only.
        Audio = "audio",
        /// The screen.
        Screen = "screen",
    }
}

/// `transient` request.
#[derive(Debug, Deserialize)]
pub struct TransientClientMessage {
    /// set or remove.
    #[serde(rename = "type")]
    pub kind: TransientKind,
    /// The key.
    #[serde(default)]
    pub key: String,
    /// The value (any JSON); null means remove.
    #[serde(default)]
    pub value: Option<Box<RawValue>>,
    /// Time to live in nanoseconds (number or numeric string).
    #[serde(default)]
    pub ttl: Option<serde_json::Value>,
}

wire_kind! {
    /// The `type` of a `transient` request.
    pub enum TransientKind {
        /// Set a value (`null` removes it).
        Set = "set",
        /// Remove a value.
        Remove = "remove",
    }
}

wire_kind! {
    /// The `type` of an `internal` request.
    pub enum InternalKind {
        /// Add a virtual session.
        AddSession = "addsession",
        /// Change a virtual session.
        UpdateSession = "updatesession",
        /// Remove a virtual session.
        RemoveSession = "removesession",
        /// The internal client's own in-call state.
        InCall = "incall",
        /// A dialout answer or status.
        Dialout = "dialout",
    }
}

/// `internal` request (internal clients only).
#[derive(Debug, Deserialize)]
pub struct InternalClientMessage {
    /// addsession, updatesession, removesession, incall, dialout.
    #[serde(rename = "type")]
    pub kind: InternalKind,
    /// Body of addsession.
    #[serde(default)]
    pub addsession: Option<AddSession>,
    /// Body of updatesession.
    #[serde(default)]
    pub updatesession: Option<UpdateSession>,
    /// Body of removesession.
    #[serde(default)]
    pub removesession: Option<RemoveSession>,
    /// Body of incall.
    #[serde(default)]
    pub incall: Option<InCallInternal>,
    /// Body of a dialout answer.
    #[serde(default)]
    pub dialout: Option<DialoutInternal>,
}

/// An `internal` request, one variant per `type`, with the body that type
/// needs. Built from [`InternalClientMessage`] by the hub, which answers
/// `invalid_format` when the conversion fails.
#[derive(Debug)]
pub enum InternalRequest {
    /// Add a virtual session.
    AddSession(AddSession),
    /// Change a virtual session's flags or in-call state.
    UpdateSession(UpdateSession),
    /// Remove a virtual session.
    RemoveSession(RemoveSession),
    /// The internal client's own in-call state.
    InCall(InCallInternal),
    /// The answer to a dialout request (with that request's id) or a later
    /// status of the call.
    Dialout(DialoutInternal),
}

impl TryFrom<InternalClientMessage> for InternalRequest {
    /// The `invalid_format` message.
    type Error = String;

    fn try_from(m: InternalClientMessage) -> Result<Self, String> {
        fn body<T>(b: Option<T>, kind: &str) -> Result<T, String> {
            b.ok_or_else(|| format!("{kind} missing"))
        }
        Ok(match m.kind {
            InternalKind::AddSession => {
                InternalRequest::AddSession(body(m.addsession, "addsession")?)
            }
            InternalKind::UpdateSession => {
                InternalRequest::UpdateSession(body(m.updatesession, "updatesession")?)
            }
            InternalKind::RemoveSession => {
                InternalRequest::RemoveSession(body(m.removesession, "removesession")?)
            }
            InternalKind::InCall => InternalRequest::InCall(body(m.incall, "incall")?),
            InternalKind::Dialout => InternalRequest::Dialout(body(m.dialout, "dialout")?),
            InternalKind::Unknown(other) => {
                return Err(format!("unsupported internal type `{other}`"))
            }
        })
    }
}

/// Add a virtual session.
#[derive(Debug, Deserialize)]
pub struct AddSession {
    /// Id chosen by the internal client.
    pub sessionid: String,
    /// Room to add it to.
    pub roomid: String,
    /// Optional user id.
    #[serde(default)]
    pub userid: Option<String>,
    /// Optional user data, forwarded in room events.
    #[serde(default)]
    pub user: Option<Box<RawValue>>,
    /// Initial participant flags.
    #[serde(default)]
    pub flags: Option<u32>,
    /// Initial in-call flags.
    #[serde(default)]
    pub incall: Option<u32>,
    /// Actor options (sent to Nextcloud).
    #[serde(default)]
    pub options: Option<AddSessionOptions>,
}

/// `addsession.options`.
#[derive(Debug, Deserialize)]
pub struct AddSessionOptions {
    /// Nextcloud actor id.
    #[serde(rename = "actorId", default)]
    pub actor_id: Option<String>,
    /// Nextcloud actor type.
    #[serde(rename = "actorType", default)]
    pub actor_type: Option<String>,
}

/// Update a virtual session.
#[derive(Debug, Deserialize)]
pub struct UpdateSession {
    /// Id chosen by the internal client.
    pub sessionid: String,
    /// Room of the session.
    #[serde(default)]
    pub roomid: String,
    /// New participant flags.
    #[serde(default)]
    pub flags: Option<u32>,
    /// New in-call flags.
    #[serde(default)]
    pub incall: Option<u32>,
}

/// Remove a virtual session.
#[derive(Debug, Deserialize)]
pub struct RemoveSession {
    /// Id chosen by the internal client.
    pub sessionid: String,
    /// Room of the session.
    #[serde(default)]
    pub roomid: String,
    /// Optional user id.
    #[serde(default)]
    pub userid: Option<String>,
}

/// In-call flags of the internal client itself.
#[derive(Debug, Deserialize)]
pub struct InCallInternal {
    /// New in-call flags.
    pub incall: u32,
}

wire_kind! {
    /// The `type` of an internal client's answer to a dialout request.
    pub enum DialoutAnswerKind {
        /// How the call goes (`accepted`, ...).
        Status = "status",
        /// The dialout failed.
        Error = "error",
    }
}

impl Default for DialoutAnswerKind {
    fn default() -> Self {
        DialoutAnswerKind::Unknown(String::new())
    }
}

/// An internal client's answer to a dialout request.
#[derive(Debug, Deserialize)]
pub struct DialoutInternal {
    /// "status" or "error".
    #[serde(rename = "type", default)]
    pub kind: DialoutAnswerKind,
    /// Room the call belongs to.
    #[serde(default)]
    pub roomid: Option<String>,
    /// Error of a failed dialout.
    #[serde(default)]
    pub error: Option<Box<RawValue>>,
    /// Status of the call.
    #[serde(default)]
    pub status: Option<DialoutStatus>,
}

wire_kind! {
    /// How a dialout call goes.
    pub enum DialoutStatusKind {
        /// The call was started (the answer to the dialout request).
        Accepted = "accepted",
        /// The phone rings.
        Ringing = "ringing",
        /// The callee answered.
        Connected = "connected",
        /// The callee refused.
        Rejected = "rejected",
        /// The call ended.
        Cleared = "cleared",
    }
}

impl Default for DialoutStatusKind {
    fn default() -> Self {
        DialoutStatusKind::Unknown(String::new())
    }
}

/// Status of a dialout call; also the value of the room's
/// `callstatus_<callid>` transient data (as the Go server sets it).
#[derive(Debug, Deserialize, Serialize)]
pub struct DialoutStatus {
    /// Call id.
    #[serde(default, deserialize_with = "null_as_default")]
    pub callid: String,
    /// accepted, ringing, connected, rejected, cleared.
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: DialoutStatusKind,
    /// Why a call was rejected or cleared.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub cause: String,
    /// SIP code of a rejected or cleared call.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "is_zero"
    )]
    pub code: i64,
    /// Message of a rejected or cleared call.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub message: String,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A `null` field reads as the type's default (as Go's JSON reader does).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_message_stays_small() {
        // Built and moved several times for every frame a client sends
        // (with every body inline it is several times larger).
        let n = std::mem::size_of::<ClientMessage>();
        assert!(n <= 256, "ClientMessage is {n} bytes");
    }

    #[test]
    fn a_message_borrows_its_recipient_and_data_from_the_frame() {
        let text = r#"{"type":"message","message":{"recipient":{"type":"session","sessionid":"abc"},"data":{"x":"\u0041"}}}"#;
        let m: ClientMessage = serde_json::from_str(text).unwrap();
        let body = m.message.unwrap();
        assert!(matches!(
            body.recipient.sessionid,
            Some(Cow::Borrowed("abc"))
        ));
        assert_eq!(body.data.get(), r#"{"x":"\u0041"}"#);
        // Escapes are read (into a copy), nulls and absent ids are none.
        let text = r#"{"type":"message","message":{"recipient":{"type":"user","userid":"\u0061b","sessionid":null},"data":1}}"#;
        let m: ClientMessage = serde_json::from_str(text).unwrap();
        let r = m.message.unwrap().recipient;
        assert_eq!(r.userid.as_deref(), Some("ab"));
        assert_eq!(r.sessionid, None);
        let m: ClientMessage = serde_json::from_str(
            r#"{"type":"message","message":{"recipient":{"type":"room"},"data":{}}}"#,
        )
        .unwrap();
        assert_eq!(m.message.unwrap().recipient.sessionid, None);
    }

    #[test]
    fn kinds_are_read_into_variants_and_unknown_ones_keep_their_name() {
        let m: ClientMessage = serde_json::from_str(r#"{"type":"control"}"#).unwrap();
        assert_eq!(m.kind, ClientKind::Control);
        let m: ClientMessage = serde_json::from_str(r#"{"type":"\u0062ye"}"#).unwrap();
        assert_eq!(m.kind, ClientKind::Bye);
        let m: ClientMessage = serde_json::from_str(r#"{"type":"Hello"}"#).unwrap();
        assert_eq!(m.kind, ClientKind::Unknown("Hello".into()));
        assert_eq!(m.kind.as_str(), "Hello");
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":1}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{}"#).is_err());
        // An absent or empty auth type is a client.
        let a: HelloAuth = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(a.kind, AuthKind::Client);
        let a: HelloAuth = serde_json::from_str(r#"{"type":""}"#).unwrap();
        assert_eq!(a.kind, AuthKind::Client);
        let a: HelloAuth = serde_json::from_str(r#"{"type":"internal"}"#).unwrap();
        assert_eq!(a.kind, AuthKind::Internal);
    }

    #[test]
    fn internal_requests_need_the_body_of_their_type() {
        let m: InternalClientMessage =
            serde_json::from_str(r#"{"type":"incall","incall":{"incall":3}}"#).unwrap();
        assert!(matches!(
            InternalRequest::try_from(m),
            Ok(InternalRequest::InCall(InCallInternal { incall: 3 }))
        ));
        let m: InternalClientMessage = serde_json::from_str(r#"{"type":"addsession"}"#).unwrap();
        assert_eq!(
            InternalRequest::try_from(m).unwrap_err(),
            "addsession missing"
        );
        let m: InternalClientMessage = serde_json::from_str(r#"{"type":"nope"}"#).unwrap();
        assert_eq!(
            InternalRequest::try_from(m).unwrap_err(),
            "unsupported internal type `nope`"
        );
    }
}
