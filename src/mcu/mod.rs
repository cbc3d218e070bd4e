//! Media through an MCU ("high-performance backend"): publishers and
//! subscribers of the sessions of this process, on Janus directly
//! (`[mcu] type = janus`, [`direct`]) or through signaling proxies
//! (`type = proxy`, [`proxy`]). The hub sees one [`Mcu`] either way.
//!
//! The hub calls the async API here outside its lock; what the hub must
//! not await (a session ending, permissions changing) arrives as a
//! [`Command`]. What the MCU says on its own (candidates, renegotiation
//! offers) goes back to the hub as [`Signal`]s.

mod backend;
mod direct;
pub mod events;
mod facade;
pub mod info;
pub mod janus;
pub mod janus_kind;
pub mod proxy;
mod registry;
pub mod sdp;

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

pub use facade::{Mcu, SavedMcu};
use janus::JanusError;

/// The stream a publisher sends: the camera/microphone or the screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// `roomType: video` (also audio-only).
    Video,
    /// `roomType: screen`.
    Screen,
}

impl StreamType {
    /// From a message's `roomType` (empty means `video`); `audio` and
    /// anything else has no publisher.
    pub fn parse(room_type: &str) -> Option<StreamType> {
        match room_type {
            "" | "video" => Some(StreamType::Video),
            "screen" => Some(StreamType::Screen),
            _ => None,
        }
    }

    /// The `roomType` of replies and the metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Video => "video",
            StreamType::Screen => "screen",
        }
    }

    /// The videoroom participant id of the publisher (as Go uses).
    fn feed(self) -> u64 {
        match self {
            StreamType::Video => 1,
            StreamType::Screen => 2,
        }
    }
}

/// The publisher a new permission set closes, if any (as the Go server:
/// without `publish-media`, a video publisher (`video`: its media) with
/// audio but no `publish-audio` or video but no `publish-video`, and the
/// check stops there; else a screen publisher (`screen`) without
/// `publish-screen`). Both MCU kinds apply it.
pub(crate) fn revoked_stream(
    perms: &[String],
    video: Option<sdp::Media>,
    screen: bool,
) -> Option<StreamType> {
    let has = |p: &str| perms.iter().any(|x| x == p);
    if !has("publish-media") {
        if let Some(m) = video {
            if (m.audio && !has("publish-audio")) || (m.video && !has("publish-video")) {
                return Some(StreamType::Video);
            }
        }
    }
    (screen && !has("publish-screen")).then_some(StreamType::Screen)
}

/// The limit of two (MCU and backend): the smaller when both are set,
/// else whichever is (0 = none), as the Go server combines them.
pub fn combine_limits(a: u64, b: u64) -> u64 {
    if a > 0 && b > 0 {
        a.min(b)
    } else {
        a.max(b)
    }
}

/// Why an MCU request failed, as the client hears it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum McuError {
    /// `client_not_found`: no publisher or subscriber, or none could be made.
    #[error("no MCU client: {0}")]
    NotFound(String),
    /// `processing_failed`: Janus refused or failed.
    #[error("MCU request failed: {0}")]
    Failed(String),
    /// `processing_failed`: this process is stopping and handed its Janus
    /// publishers and subscribers to a successor (rolling restart); it
    /// makes no new ones (they would be on no list the successor got).
    #[error("this process handed its media over to another process")]
    HandedOver,
}

impl From<JanusError> for McuError {
    fn from(e: JanusError) -> Self {
        McuError::Failed(e.to_string())
    }
}

/// What a client's `offer` asks for.
#[derive(Debug, Clone, Default)]
pub struct Offer {
    /// The offer's `sid`.
    pub sid: String,
    /// The SDP (candidates are filtered here).
    pub sdp: String,
    /// `bitrate` (bits/s), capped by the config; 0 = the cap.
    pub bitrate: u64,
    /// The backend's limit for this stream type (0 = none).
    pub backend_cap: u64,
    /// `audiocodec`, `videocodec`, `vp9profile`, `h264profile`.
    pub codecs: [Option<String>; 4],
    /// Media of the SDP (for permission revocation).
    pub media: sdp::Media,
    /// The client's payload as sent (`type`, `sdp`, Talk's `nick`, …):
    /// forwarded to a signaling proxy with the filtered SDP.
    pub payload: serde_json::Map<String, Value>,
    /// The publishing client's country (`[geoip]`), when known: a proxy
    /// in it is preferred, then one on `continents`.
    pub country: Option<Arc<str>>,
    /// The continents near the client (its own and those
    /// `[continent-overrides]` add).
    pub continents: Vec<&'static str>,
}

impl Offer {
    /// The publisher's bitrate: the offer's within the backend's and
    /// `[mcu]`'s caps for `stream`, the cap when the offer names none.
    fn bitrate_within(&self, stream: StreamType, cfg: &crate::config::mcu::McuConfig) -> u64 {
        let cap = combine_limits(
            self.backend_cap,
            match stream {
                StreamType::Video => cfg.max_stream_bitrate,
                StreamType::Screen => cfg.max_screen_bitrate,
            },
        );
        if self.bitrate == 0 {
            cap
        } else {
            self.bitrate.min(cap)
        }
    }
}

/// Subscriber key: (subscriber session, publisher session, stream).
pub(crate) type SubKey = (Arc<str>, Arc<str>, StreamType);

/// Something the MCU sent on its own that a client must hear.
#[derive(Debug)]
pub struct Signal {
    /// The session to tell.
    pub to: Arc<str>,
    /// `from`: the publisher.
    pub from: Arc<str>,
    /// `offer` or `candidate`.
    pub kind: &'static str,
    /// The stream.
    pub stream: StreamType,
    /// The payload (jsep or `{"candidate": ...}`).
    pub payload: Value,
    /// The publisher's or subscriber's sid.
    pub sid: String,
}

/// A `deliver` of a subscribe the MCU makes on its own (no client asked):
/// the offer goes to the subscriber of `key` as a pushed `offer`.
fn push_offer<'a>(
    signals: &'a tokio::sync::mpsc::UnboundedSender<Signal>,
    key: &'a SubKey,
) -> impl FnOnce(&str, &Value) + 'a {
    move |sid, offer| {
        let _ = signals.send(Signal::to_subscriber(
            key,
            "offer",
            offer.clone(),
            sid.into(),
        ));
    }
}

impl Signal {
    /// To the subscriber of `key`, from its publisher; `sid` the
    /// subscriber's.
    fn to_subscriber(key: &SubKey, kind: &'static str, payload: Value, sid: String) -> Signal {
        Signal {
            to: key.0.clone(),
            from: key.1.clone(),
            kind,
            stream: key.2,
            payload,
            sid,
        }
    }

    /// To the client of the publisher of `session`'s `stream`; `sid` the
    /// publisher's.
    fn to_publisher(
        session: &Arc<str>,
        stream: StreamType,
        kind: &'static str,
        payload: Value,
        sid: String,
    ) -> Signal {
        Signal {
            to: session.clone(),
            from: session.clone(),
            kind,
            stream,
            payload,
            sid,
        }
    }
}

/// Work for the MCU that the hub hands over without waiting.
#[derive(Debug)]
pub enum Command {
    /// The session left the call or room or ended: close all it has.
    CloseSession(Arc<str>),
    /// New permissions of a session: close publishers they no longer allow.
    Permissions(Arc<str>, Vec<String>),
    /// `unshareScreen`: close the screen publisher after a second.
    UnshareScreen(Arc<str>),
}

/// Candidates Janus trickles for a handle before the client has the SDP
/// they belong to wait here and go out right after it: a client cannot
/// add a candidate before the remote description (and Janus may trickle
/// before the reply that carries its SDP has been read).
#[derive(Default)]
struct HeldCandidates(Mutex<Option<Vec<Value>>>);

impl HeldCandidates {
    fn holding() -> Self {
        Self(Mutex::new(Some(Vec::new())))
    }

    /// Holds candidates from now on until [`Self::release`].
    fn hold(&self) {
        lock(&self.0).get_or_insert_with(Vec::new);
    }

    /// `Some(c)` when `c` may go to the client now; held otherwise.
    fn pass(&self, c: Value) -> Option<Value> {
        match lock(&self.0).as_mut() {
            Some(held) => {
                held.push(c);
                None
            }
            None => Some(c),
        }
    }

    /// Stops holding; returns what was held, in order.
    fn release(&self) -> Vec<Value> {
        lock(&self.0).take().unwrap_or_default()
    }

    /// Hands a reply the client must have first (Janus's or the proxy's
    /// offer or answer) to `deliver`, then stops holding: what was held
    /// goes to `out` after it, or is dropped when there is no reply (it
    /// belongs to no SDP the client has).
    fn after_reply(
        &self,
        reply: Result<Value, McuError>,
        deliver: impl FnOnce(&Value),
        mut out: impl FnMut(Value),
    ) -> Result<(), McuError> {
        if let Ok(r) = &reply {
            deliver(r);
        }
        for c in self.release() {
            if reply.is_ok() {
                out(c);
            }
        }
        reply.map(|_| ())
    }
}

/// How long `unshareScreen` waits before closing the screen publisher.
const UNSHARE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod permission_tests {
    use super::{revoked_stream, sdp, StreamType};

    fn perms(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_revoked_permission_closes_one_publisher_video_first() {
        let av = sdp::Media {
            audio: true,
            video: true,
        };
        let audio = sdp::Media {
            audio: true,
            video: false,
        };
        // publish-media allows all the camera's media.
        assert_eq!(
            revoked_stream(&perms(&["publish-media", "publish-screen"]), Some(av), true),
            None
        );
        assert_eq!(
            revoked_stream(&perms(&["publish-audio"]), Some(av), true),
            Some(StreamType::Video)
        );
        assert_eq!(
            revoked_stream(&perms(&["publish-audio"]), Some(audio), true),
            Some(StreamType::Screen)
        );
        assert_eq!(
            revoked_stream(&perms(&["publish-audio"]), Some(audio), false),
            None
        );
        assert_eq!(revoked_stream(&[], None, true), Some(StreamType::Screen));
    }
}
