//! Server -> client messages. Each is serialized once into a [`Frame`] that
//! is shared by every recipient.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;

/// A serialized text frame: UTF-8 JSON, cheap to clone (reference
/// counted), shared by every recipient and written by `http::wsframe`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame(bytes::Bytes);

impl Frame {
    /// The frame's bytes (UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for an empty frame.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl From<String> for Frame {
    fn from(s: String) -> Frame {
        Frame(bytes::Bytes::from(s))
    }
}

impl From<&'static str> for Frame {
    fn from(s: &'static str) -> Frame {
        Frame(bytes::Bytes::from_static(s.as_bytes()))
    }
}

impl TryFrom<bytes::Bytes> for Frame {
    type Error = std::str::Utf8Error;

    /// Checks that the bytes are UTF-8 (a frame from another process).
    fn try_from(b: bytes::Bytes) -> Result<Frame, Self::Error> {
        std::str::from_utf8(&b)?;
        Ok(Frame(b))
    }
}

/// `{"id": ..., "type": kind, kind: body}` — the spec's message envelope.
pub struct Envelope<'a, B: ?Sized> {
    /// Id of the request this answers.
    pub id: Option<&'a str>,
    /// Message type; also the key of the body.
    pub kind: &'a str,
    /// The body, omitted when `None`.
    pub body: Option<&'a B>,
}

impl<B: Serialize + ?Sized> Serialize for Envelope<'_, B> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(id) = self.id {
            m.serialize_entry("id", id)?;
        }
        m.serialize_entry("type", self.kind)?;
        if let Some(body) = self.body {
            m.serialize_entry(self.kind, body)?;
        }
        m.end()
    }
}

/// Serializes a message into a shareable frame.
pub fn frame<B: Serialize + ?Sized>(id: Option<&str>, kind: &str, body: &B) -> Frame {
    let env = Envelope {
        id,
        kind,
        body: Some(body),
    };
    serialize(&env)
}

/// A buffer kept per thread to serialize frames into: each frame is then
/// one allocation of its exact size (no regrowth while writing it, and no
/// separate reference-count block, as `Bytes` needs for a `Vec` with spare
/// capacity).
const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn serialize<T: Serialize + ?Sized>(v: &T) -> Frame {
    let write = |buf: &mut Vec<u8>| {
        // Writing JSON into a Vec fails only for a map with non-string
        // keys, which no server message has.
        serde_json::to_writer(&mut *buf, v).expect("server messages always serialize");
        Frame(bytes::Bytes::copy_from_slice(buf))
    };
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            buf.clear();
            let f = write(&mut buf);
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
            f
        }
        // A frame built while serializing another (not done today).
        Err(_) => write(&mut Vec::new()),
    })
}

/// `{"target": t, "type": kind, kind: payload}` inside an `event` message.
pub struct Event<'a, P: ?Sized> {
    /// room, roomlist or participants.
    pub target: &'a str,
    /// Event type; also the key of the payload.
    pub kind: &'a str,
    /// The payload.
    pub payload: &'a P,
}

impl<P: Serialize + ?Sized> Serialize for Event<'_, P> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("target", self.target)?;
        m.serialize_entry("type", self.kind)?;
        m.serialize_entry(self.kind, self.payload)?;
        m.end()
    }
}

/// Serializes an `event` message into a frame.
pub fn event_frame<P: Serialize + ?Sized>(target: &str, kind: &str, payload: &P) -> Frame {
    frame(
        None,
        "event",
        &Event {
            target,
            kind,
            payload,
        },
    )
}

/// Server version and features, in `welcome` and in hello's `server`.
#[derive(serde::Serialize)]
pub struct ServerInfo<'a> {
    /// Server version string.
    pub version: &'a str,
    /// Feature ids.
    pub features: &'a [&'a str],
}

/// Body of the hello reply.
#[derive(serde::Serialize)]
pub struct HelloReply<'a> {
    /// Public session id.
    pub sessionid: &'a str,
    /// Secret resume id.
    pub resumeid: &'a str,
    /// User id, empty for anonymous sessions (as the Go server sends it).
    pub userid: &'a str,
    /// Protocol version of the hello.
    pub version: &'a str,
    /// Deprecated but read by the Talk client.
    pub server: ServerInfo<'a>,
}

/// Body of `bye`.
#[derive(serde::Serialize)]
pub struct Bye<'a> {
    /// Why the server ends the session.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
}

/// Body of `room`.
#[derive(serde::Serialize)]
pub struct RoomReply<'a> {
    /// Room id; empty when not in a room.
    pub roomid: &'a str,
    /// Room properties from Nextcloud.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub properties: Option<&'a RawValue>,
    /// Bitrate limits of the MCU, on joins with `[mcu]` configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}

/// `bandwidth` of a room join reply (bits/s).
#[derive(serde::Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bandwidth {
    /// Highest bitrate of a `video` stream.
    pub maxstreambitrate: u64,
    /// Highest bitrate of a `screen` stream.
    pub maxscreenbitrate: u64,
}

/// One session in a room `join` event.
#[derive(serde::Serialize)]
pub struct SessionEntry<'a> {
    /// Public session id.
    pub sessionid: &'a str,
    /// User id, empty for guests.
    pub userid: &'a str,
    /// User data from the backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a RawValue>,
    /// Nextcloud session id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roomsessionid: Option<&'a str>,
}

/// Sender of a `message` / `control`.
#[derive(serde::Serialize)]
pub struct Sender<'a> {
    /// The recipient type the sender used.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// Sender's public session id.
    pub sessionid: &'a str,
    /// Sender's user id, omitted for anonymous senders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userid: Option<&'a str>,
}

/// Recipient, included when a message for a virtual session goes to its
/// internal client.
#[derive(serde::Serialize)]
pub struct RecipientOut<'a> {
    /// Always `session`.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The virtual session id as chosen by the internal client.
    pub sessionid: &'a str,
}

/// Body of `message` / `control` delivered to clients.
#[derive(serde::Serialize)]
pub struct MessageOut<'a> {
    /// Who sent it.
    pub sender: Sender<'a>,
    /// Only for messages to virtual sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<RecipientOut<'a>>,
    /// The data, byte-for-byte as sent.
    pub data: &'a RawValue,
}

impl MessageOut<'_> {
    /// The frame `frame(None, kind, self)` writes, byte for byte, built
    /// with a few copies: the hot path of every `message` and `control`
    /// (the sender's long session id is only checked, not escaped, and the
    /// frame is one allocation of its exact size).
    pub fn to_frame(&self, kind: &str) -> Frame {
        let Sender {
            kind: sender_kind,
            sessionid,
            userid,
        } = &self.sender;
        let data = self.data.get();
        let strings = 2 * kind.len() + sender_kind.len() + sessionid.len();
        // The literals below add 60 bytes, `userid` 12, `recipient` 39.
        let mut len = strings + data.len() + 60 + userid.map_or(0, |u| u.len() + 12);
        if let Some(r) = &self.recipient {
            len += r.kind.len() + r.sessionid.len() + 39;
        }
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(b"{\"type\":");
        json_str(&mut out, kind);
        out.push(b',');
        json_str(&mut out, kind);
        out.extend_from_slice(b":{\"sender\":{\"type\":");
        json_str(&mut out, sender_kind);
        out.extend_from_slice(b",\"sessionid\":");
        json_str(&mut out, sessionid);
        if let Some(u) = userid {
            out.extend_from_slice(b",\"userid\":");
            json_str(&mut out, u);
        }
        out.push(b'}');
        if let Some(r) = &self.recipient {
            out.extend_from_slice(b",\"recipient\":{\"type\":");
            json_str(&mut out, r.kind);
            out.extend_from_slice(b",\"sessionid\":");
            json_str(&mut out, r.sessionid);
            out.push(b'}');
        }
        out.extend_from_slice(b",\"data\":");
        out.extend_from_slice(data.as_bytes());
        out.extend_from_slice(b"}}");
        if out.len() != out.capacity() {
            // Escapes or a short estimate: one exact-size allocation, as
            // `serialize` makes.
            return Frame(bytes::Bytes::copy_from_slice(&out));
        }
        Frame(bytes::Bytes::from(out))
    }
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it
/// (only `"`, `\\` and control characters need it; ids never do).
fn json_str(out: &mut Vec<u8>, s: &str) {
    // Without an early exit the check compiles to a few vector compares.
    let plain = s
        .bytes()
        .fold(true, |ok, b| ok & (b >= 0x20) & (b != b'"') & (b != b'\\'));
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string always serializes");
    }
}

/// Body of `transient` events.
#[derive(serde::Serialize)]
pub struct TransientOut<'a> {
    /// set, remove or initial.
    #[serde(rename = "type")]
    pub kind: &'a str,
    /// The key (set / remove).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a str>,
    /// The new value (set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<&'a RawValue>,
    /// The previous value, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldvalue: Option<&'a RawValue>,
    /// All data (initial).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<&'a std::collections::BTreeMap<String, Box<RawValue>>>,
}

/// Serializes an error reply.
pub fn error_frame(id: Option<&str>, err: &crate::api::error::ProtocolError) -> Frame {
    frame(id, "error", err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_frame_is_byte_for_byte_what_serde_json_writes() {
        let data = RawValue::from_string(r#"{"type":"offer","x":[1,"\"é\u0001"]}"#.into()).unwrap();
        let odd = "a\"b\\c\n\u{1}\u{7f}é/😀";
        let long = "x".repeat(200);
        for kind in ["message", "control"] {
            for sid in ["abc", odd, long.as_str(), ""] {
                for userid in [None, Some("admin"), Some(odd), Some("")] {
                    for recipient in [None, Some(("session", "virtual")), Some((odd, odd))] {
                        let m = MessageOut {
                            sender: Sender {
                                kind: "session",
                                sessionid: sid,
                                userid,
                            },
                            recipient: recipient
                                .map(|(kind, sessionid)| RecipientOut { kind, sessionid }),
                            data: &data,
                        };
                        let f = m.to_frame(kind);
                        assert_eq!(f, frame(None, kind, &m));
                        if sid != odd && userid != Some(odd) && recipient.is_none_or(|r| r.0 != odd)
                        {
                            // Without escapes the size estimate is exact
                            // (one allocation, no copy).
                            let user = userid.map_or(0, |u| u.len() + 12);
                            let rcpt = recipient.map_or(0, |(k, s)| k.len() + s.len() + 39);
                            let strings = 2 * kind.len() + "session".len() + sid.len();
                            let len = strings + data.get().len() + 60 + user + rcpt;
                            assert_eq!(f.len(), len);
                        }
                    }
                }
            }
        }
    }
}
