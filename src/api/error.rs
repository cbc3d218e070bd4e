//! Error codes, in one place: the `code` of the spec's `error` message to
//! clients (codes follow the current version of the API; the README maps
//! them to the older hyphenated names), and the `error.code` of answers to
//! the backend API. Which HTTP status goes with a backend-API error is
//! decided in `http/`.

use serde::Serialize;
use serde_json::value::RawValue;

/// An error sent to a client in the spec's `error` message.
#[derive(Debug, Clone, Serialize)]
pub struct ProtocolError {
    /// Machine-readable code, e.g. `auth_failed`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Optional details, e.g. the room for `already_joined`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Box<RawValue>>,
}

impl ProtocolError {
    /// An error with the given code and message and no details.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        ProtocolError {
            code: code.to_string(),
            message: message.into(),
            details: None,
        }
    }

    /// Adds details (already serialized JSON).
    pub fn with_details(mut self, details: Box<RawValue>) -> Self {
        self.details = Some(details);
        self
    }
}

/// The remote server (or its Nextcloud) does not support federation.
pub const FEDERATION_UNSUPPORTED: &str = "federation_unsupported";
/// The remote signaling server could not be reached or failed.
pub const FEDERATION_ERROR: &str = "federation_error";
/// The hello version is neither 1.0 nor 2.0 (older text: `unsupported-version`).
pub const INVALID_HELLO_VERSION: &str = "invalid_hello_version";
/// The backend refused the session (older text: `auth-failed`).
pub const AUTH_FAILED: &str = "auth_failed";
/// A backend's `sessionlimit` is reached (older text: `too-many-sessions`).
pub const SESSION_LIMIT_EXCEEDED: &str = "session_limit_exceeded";
/// The hello's backend URL is not allowed.
pub const INVALID_BACKEND: &str = "invalid_backend";
/// Unknown `auth.type`.
pub const INVALID_CLIENT_TYPE: &str = "invalid_client_type";
/// Bad internal-client token or hello v2 token.
pub const INVALID_TOKEN: &str = "invalid_token";
/// hello v2 token with `iat` in the future.
pub const TOKEN_NOT_VALID_YET: &str = "token_not_valid_yet";
/// hello v2 token past `exp`.
pub const TOKEN_EXPIRED: &str = "token_expired";
/// Unknown or expired resume id, unknown recipient session.
pub const NO_SUCH_SESSION: &str = "no_such_session";
/// The backend says the room does not exist or may not be joined.
pub const NO_SUCH_ROOM: &str = "no_such_room";
/// The backend could not be asked about the room.
pub const ROOM_JOIN_FAILED: &str = "room_join_failed";
/// Joining the room the session is already in.
pub const ALREADY_JOINED: &str = "already_joined";
/// A room is required for this request.
pub const NOT_IN_ROOM: &str = "not_in_room";
/// Missing permission.
pub const NOT_ALLOWED: &str = "not_allowed";
/// Malformed message.
pub const INVALID_FORMAT: &str = "invalid_format";
/// Anything but `hello` before a successful hello.
pub const HELLO_EXPECTED: &str = "hello_expected";
/// Client sends faster than its rate limit.
pub const TOO_MANY_REQUESTS: &str = "too_many_requests";
/// Backend API: clustered and NATS is not connected (HTTP 503).
pub const BUS_UNAVAILABLE: &str = "bus_unavailable";
/// An internal failure while processing the request.
pub const PROCESSING_FAILED: &str = "processing_failed";
/// An offer or answer without a parsable SDP.
pub const INVALID_SDP: &str = "invalid_sdp";
/// A `candidate` message without `payload.candidate`.
pub const NO_CANDIDATE: &str = "no_candidate";
/// A candidate that is not an object with a parsable `candidate` string.
pub const INVALID_CANDIDATE: &str = "invalid_candidate";
/// No MCU publisher or subscriber for the message, and none could be made.
pub const CLIENT_NOT_FOUND: &str = "client_not_found";
/// A transient `set` over a `[transient]` limit (nothing is stored).
pub const TRANSIENT_LIMIT_EXCEEDED: &str = "transient_limit_exceeded";
/// `addsession`: Nextcloud refused the virtual session or could not be
/// asked (it was not added).
pub const ADD_FAILED: &str = "add_failed";
/// `removesession`: Nextcloud could not be told (the session is gone).
pub const REMOVE_FAILED: &str = "remove_failed";
/// `details.code` of `federation_error`: the remote server's certificate
/// did not verify.
pub const CERTIFICATE_VERIFICATION_ERROR: &str = "certificate_verification_error";
/// `details.code` of `federation_error`: the remote server could not be
/// reached.
pub const NETWORK_ERROR: &str = "network_error";

// Backend API (`POST /api/v1/room/{id}`): the `error.code` of a refused
// request; `http/` decides the status code.

/// `/api/v1/stats` and `/metrics` from an address not allowed.
pub const FORBIDDEN: &str = "forbidden";
/// The request is malformed: unreadable body, unknown `type`, body missing.
pub const INVALID_REQUEST: &str = "invalid_request";
/// No `Content-Length` header.
pub const LENGTH_REQUIRED: &str = "length_required";
/// The body is larger than allowed.
pub const TOO_LARGE: &str = "too_large";
/// Not `application/json`.
pub const INVALID_CONTENT_TYPE: &str = "invalid_content_type";
/// Unknown backend, missing or wrong checksum.
pub const AUTHENTICATION_FAILED: &str = "authentication_failed";
/// The body did not arrive within the read timeout.
pub const REQUEST_TIMEOUT: &str = "request_timeout";

// Backend API `dialout`: the `dialout.error.code` of a failed dialout (an
// internal client may also send codes of its own).

/// No number in a `dialout` request.
pub const NUMBER_MISSING: &str = "number_missing";
/// The number is not in E.164 format.
pub const INVALID_NUMBER: &str = "invalid_number";
/// No internal client with `start-dialout` is connected.
pub const NO_CLIENT_AVAILABLE: &str = "no_client_available";
/// The internal client answered with a status other than `accepted`.
pub const UNSUPPORTED_STATUS: &str = "unsupported_status";
/// The internal client answered with an error without details.
pub const DIALOUT_FAILED: &str = "dialout_failed";
/// The internal client answered with an unknown type.
pub const UNSUPPORTED_TYPE: &str = "unsupported_type";
/// The internal client went away without answering.
pub const ERROR_NOTIFY: &str = "error_notify";
/// The internal client did not answer in time.
pub const TIMEOUT: &str = "timeout";
