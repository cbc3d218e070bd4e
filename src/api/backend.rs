//! Bodies exchanged with Nextcloud: requests the server sends, the answers,
//! and the backend API requests Nextcloud sends to the server.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// `{"type": kind, kind: body}` request to Nextcloud.
pub type BackendRequest<'a, B> = crate::api::server::Envelope<'a, B>;

/// `auth` request body.
#[derive(Serialize)]
pub struct AuthRequest<'a> {
    /// Always "1.0".
    pub version: &'a str,
    /// The client's params, verbatim.
    pub params: &'a RawValue,
}

/// `room` request body (join / leave, also used for virtual sessions with actors).
#[derive(Serialize)]
pub struct RoomRequest<'a> {
    /// Always "1.0".
    pub version: &'a str,
    /// Room id.
    pub roomid: &'a str,
    /// User id, empty for guests.
    pub userid: &'a str,
    /// Nextcloud session id.
    pub sessionid: &'a str,
    /// join or leave.
    pub action: &'a str,
    /// Actor id (virtual sessions with options).
    #[serde(rename = "actorid", skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<&'a str>,
    /// Actor type (virtual sessions with options).
    #[serde(rename = "actortype", skip_serializing_if = "Option::is_none")]
    pub actor_type: Option<&'a str>,
    /// In-call flags (virtual sessions with options).
    #[serde(rename = "incall", skip_serializing_if = "Option::is_none")]
    pub in_call: Option<u32>,
}

/// One entry of a `ping` request.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct PingEntry {
    /// Nextcloud session id.
    pub sessionid: String,
    /// User id, omitted for guests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userid: Option<String>,
}

/// `ping` request body.
#[derive(Serialize)]
pub struct PingRequest<'a> {
    /// Always "1.0".
    pub version: &'a str,
    /// Room id; empty when entries of several rooms are batched.
    pub roomid: &'a str,
    /// Sessions that are still alive.
    pub entries: &'a [PingEntry],
}

/// `session` request body (virtual sessions added / removed).
#[derive(Serialize)]
pub struct SessionRequest<'a> {
    /// Always "1.0".
    pub version: &'a str,
    /// Room id.
    pub roomid: &'a str,
    /// add or remove.
    pub action: &'a str,
    /// Public id of the virtual session.
    pub sessionid: &'a str,
    /// User id, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userid: Option<&'a str>,
    /// User data, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a RawValue>,
}

/// OCS envelope around every Nextcloud answer.
#[derive(Deserialize)]
pub struct Ocs {
    /// The envelope.
    pub ocs: OcsBody,
}

/// Inside the OCS envelope.
#[derive(Deserialize)]
pub struct OcsBody {
    /// Status.
    #[serde(default)]
    pub meta: Option<OcsMeta>,
    /// The actual answer.
    pub data: Box<RawValue>,
}

/// OCS status.
#[derive(Deserialize)]
pub struct OcsMeta {
    /// ok / failure.
    #[serde(default)]
    pub status: String,
    /// HTTP-like status code; 429 = throttled.
    #[serde(default)]
    pub statuscode: u16,
}

/// Error object inside a backend answer.
#[derive(Deserialize, Serialize, Debug, Clone)]
pub struct BackendError {
    /// Error code.
    #[serde(default)]
    pub code: String,
    /// Message.
    #[serde(default)]
    pub message: String,
    /// Details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<RawValue>>,
}

/// The `type` of Nextcloud's answer.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendResponseKind {
    /// Answer to `auth`.
    Auth,
    /// Answer to `room`.
    Room,
    /// Answer to `ping`.
    Ping,
    /// Answer to `session`.
    Session,
    /// The request failed (`error` says why).
    Error,
    /// Missing, or a type this server does not know.
    #[default]
    #[serde(other)]
    Other,
}

/// Any answer of Nextcloud to `auth`, `room`, `ping`, `session`.
#[derive(Deserialize)]
pub struct BackendResponse {
    /// auth, room, ping, session or error.
    #[serde(rename = "type", default)]
    pub kind: BackendResponseKind,
    /// Set for errors.
    #[serde(default)]
    pub error: Option<BackendError>,
    /// Set for `auth`.
    #[serde(default)]
    pub auth: Option<AuthResponse>,
    /// Set for `room`.
    #[serde(default)]
    pub room: Option<RoomResponse>,
}

/// `auth` answer.
#[derive(Deserialize)]
pub struct AuthResponse {
    /// User id; empty / missing for guests.
    #[serde(default)]
    pub userid: Option<String>,
    /// User data, forwarded in room events.
    #[serde(default)]
    pub user: Option<Box<RawValue>>,
}

/// `room` answer.
#[derive(Deserialize)]
pub struct RoomResponse {
    /// Room id.
    #[serde(default)]
    pub roomid: String,
    /// Room properties.
    #[serde(default)]
    pub properties: Option<Box<RawValue>>,
    /// Permissions of the session in this room.
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
}

/// A backend API request (`POST /api/v1/room/{id}`), one variant per
/// `type`, each with the body that type needs. Parsed once, at the edge:
/// the hub matches on the variant and never looks at the `type` string.
#[derive(Deserialize, Debug)]
#[serde(try_from = "BackendRoomRequestWire")]
pub enum BackendRoomRequest {
    /// Users invited to the room.
    Invite(RoomUsersChange),
    /// Users (or guest sessions) removed from the room.
    Disinvite(RoomUsersChange),
    /// Room properties changed.
    Update(RoomUsersChange),
    /// Room deleted.
    Delete(RoomUsersChange),
    /// Participants changed (permissions, types, in-call state).
    Participants(ParticipantsChange),
    /// In-call state changed.
    InCall(InCallChange),
    /// A message for the room's members (chat refresh or chat comments).
    Message(RoomMessage),
    /// Sessions asked to switch to another room.
    SwitchTo(SwitchTo),
    /// Dial out through an internal client (the SIP bridge).
    Dialout(Dialout),
}

/// Why a backend API body is not a [`BackendRoomRequest`].
#[derive(Debug, thiserror::Error)]
pub enum BackendRoomRequestError {
    /// Not JSON, or a field of the wrong shape.
    #[error("Could not read body: {0}")]
    Json(#[from] serde_json::Error),
    /// Unknown `type`, or the body its type needs missing.
    #[error("{0}")]
    Invalid(String),
}

impl BackendRoomRequest {
    /// Parses a request body; the error's text is the reply's `message`.
    pub fn parse(body: &[u8]) -> Result<Self, BackendRoomRequestError> {
        let wire: BackendRoomRequestWire = serde_json::from_slice(body)?;
        Self::try_from(wire).map_err(BackendRoomRequestError::Invalid)
    }

    /// The `type` as it came, for logs and the
    /// `signaling_backend_requests_total` label.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendRoomRequest::Invite(_) => "invite",
            BackendRoomRequest::Disinvite(_) => "disinvite",
            BackendRoomRequest::Update(_) => "update",
            BackendRoomRequest::Delete(_) => "delete",
            BackendRoomRequest::Participants(_) => "participants",
            BackendRoomRequest::InCall(_) => "incall",
            BackendRoomRequest::Message(_) => "message",
            BackendRoomRequest::SwitchTo(_) => "switchto",
            BackendRoomRequest::Dialout(_) => "dialout",
        }
    }
}

impl TryFrom<BackendRoomRequestWire> for BackendRoomRequest {
    type Error = String;

    fn try_from(w: BackendRoomRequestWire) -> Result<Self, String> {
        fn body<T>(b: Option<T>, kind: &str) -> Result<T, String> {
            b.ok_or_else(|| format!("{kind} missing"))
        }
        Ok(match w.kind.as_str() {
            // These four may come without a body.
            "invite" => BackendRoomRequest::Invite(w.invite.unwrap_or_default()),
            "disinvite" => BackendRoomRequest::Disinvite(w.disinvite.unwrap_or_default()),
            "update" => BackendRoomRequest::Update(w.update.unwrap_or_default()),
            "delete" => BackendRoomRequest::Delete(w.delete.unwrap_or_default()),
            "participants" => {
                BackendRoomRequest::Participants(body(w.participants, "participants")?)
            }
            "incall" => BackendRoomRequest::InCall(body(w.incall, "incall")?),
            // Without data (or without a body) nothing is sent, as in Go.
            "message" => BackendRoomRequest::Message(w.message.unwrap_or_default()),
            "switchto" => BackendRoomRequest::SwitchTo(body(w.switchto, "switchto")?),
            "dialout" => BackendRoomRequest::Dialout(body(w.dialout, "dialout")?),
            other => return Err(format!("unsupported request type `{other}`")),
        })
    }
}

/// A backend API request as it arrives: `type` names the field that holds
/// the body.
#[derive(Deserialize, Debug)]
struct BackendRoomRequestWire {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    invite: Option<RoomUsersChange>,
    #[serde(default)]
    disinvite: Option<RoomUsersChange>,
    #[serde(default)]
    update: Option<RoomUsersChange>,
    #[serde(default)]
    delete: Option<RoomUsersChange>,
    #[serde(default)]
    participants: Option<ParticipantsChange>,
    #[serde(default)]
    incall: Option<InCallChange>,
    #[serde(default)]
    message: Option<RoomMessage>,
    #[serde(default)]
    switchto: Option<SwitchTo>,
    #[serde(default)]
    dialout: Option<Dialout>,
}

/// Body of invite / disinvite / update / delete.
#[derive(Deserialize, Debug, Default)]
pub struct RoomUsersChange {
    /// Users concerned.
    #[serde(default)]
    pub userids: Vec<String>,
    /// All users invited (absent with `changed-users`).
    #[serde(default)]
    pub alluserids: Option<Vec<String>>,
    /// Nextcloud session ids concerned (disinvite of guests).
    #[serde(default)]
    pub sessionids: Vec<String>,
    /// Room properties.
    #[serde(default)]
    pub properties: Option<Box<RawValue>>,
}

/// Body of participants.
#[derive(Deserialize, Debug, Default)]
pub struct ParticipantsChange {
    /// Changed participants.
    #[serde(default)]
    pub changed: Vec<Map<String, Value>>,
    /// All participants (absent with `changed-users`).
    #[serde(default)]
    pub users: Option<Vec<Map<String, Value>>>,
}

/// Body of incall.
#[derive(Deserialize, Debug, Default)]
pub struct InCallChange {
    /// New in-call flags.
    #[serde(default)]
    pub incall: Value,
    /// All participants changed to `incall`.
    #[serde(default)]
    pub all: bool,
    /// Changed participants.
    #[serde(default)]
    pub changed: Vec<Map<String, Value>>,
    /// All participants (absent with `changed-users`).
    #[serde(default)]
    pub users: Option<Vec<Map<String, Value>>>,
}

/// Body of message.
#[derive(Deserialize, Debug, Default)]
pub struct RoomMessage {
    /// Forwarded to clients; without it nothing is sent.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
}

/// Body of switchto.
#[derive(Deserialize, Debug)]
pub struct SwitchTo {
    /// Target room.
    pub roomid: String,
    /// List of Nextcloud session ids, or a map to details.
    pub sessions: Value,
}

/// Body of dialout.
#[derive(Deserialize, Debug)]
pub struct Dialout {
    /// E.164 number.
    #[serde(default)]
    pub number: String,
    /// Options, sent back to Nextcloud by the SIP bridge.
    #[serde(default)]
    pub options: Option<Box<RawValue>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_request_is_parsed_into_the_variant_of_its_type() {
        let r = BackendRoomRequest::parse(br#"{"type":"delete"}"#).unwrap();
        assert!(matches!(r, BackendRoomRequest::Delete(_)));
        assert_eq!(r.kind(), "delete");
        let r = BackendRoomRequest::parse(br#"{"type":"incall","incall":{"incall":7,"all":true}}"#)
            .unwrap();
        assert!(matches!(
            r,
            BackendRoomRequest::InCall(InCallChange { all: true, .. })
        ));
        let e = BackendRoomRequest::parse(br#"{"type":"participants"}"#).unwrap_err();
        assert_eq!(e.to_string(), "participants missing");
        let e = BackendRoomRequest::parse(br#"{"type":"transient"}"#).unwrap_err();
        assert_eq!(e.to_string(), "unsupported request type `transient`");
        let e = BackendRoomRequest::parse(b"{").unwrap_err();
        assert!(e.to_string().starts_with("Could not read body: "), "{e}");
        // Through serde (the bus path) the same rules apply.
        assert!(serde_json::from_slice::<BackendRoomRequest>(br#"{"type":"switchto"}"#).is_err());
    }
}
