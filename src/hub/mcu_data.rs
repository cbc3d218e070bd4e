//! MCU data: the part of a client's `message` `data` the server reads
//! (`type`, `sid`, `roomType`, `payload`, ...), its `type` as an enum,
//! and its validation as the Go server does it (`CheckValid`).

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::invalid_format;
use crate::api::client::RoomType;
use crate::api::error::{self, ProtocolError};
use crate::mcu::sdp::{self, SdpError};
use crate::mcu::{Mcu, Offer, StreamType};

/// The `type` of MCU data: what the client asks of the MCU.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(super) enum McuKind {
    /// Publish a stream (SDP offer).
    #[serde(rename = "offer")]
    Offer,
    /// A subscriber's SDP answer.
    #[serde(rename = "answer")]
    Answer,
    /// An ICE candidate.
    #[serde(rename = "candidate")]
    Candidate,
    /// No more ICE candidates.
    #[serde(rename = "endOfCandidates")]
    EndOfCandidates,
    /// A subscriber picks a simulcast layer.
    #[serde(rename = "selectStream")]
    SelectStream,
    /// Subscribe to the recipient's stream.
    #[serde(rename = "requestoffer")]
    RequestOffer,
    /// Make the recipient subscribe to the sender's stream.
    #[serde(rename = "sendoffer")]
    SendOffer,
    /// Stop the sender's screen share.
    #[serde(rename = "unshareScreen")]
    UnshareScreen,
    /// No `type` (or an empty one).
    #[default]
    #[serde(rename = "")]
    Missing,
    /// Any other `type`: not for the MCU, delivered as a message.
    #[serde(other)]
    Other,
}

impl McuKind {
    /// The wire name (the `type` label of the MCU message counter).
    pub(super) fn as_str(self) -> &'static str {
        match self {
            McuKind::Offer => "offer",
            McuKind::Answer => "answer",
            McuKind::Candidate => "candidate",
            McuKind::EndOfCandidates => "endOfCandidates",
            McuKind::SelectStream => "selectStream",
            McuKind::RequestOffer => "requestoffer",
            McuKind::SendOffer => "sendoffer",
            McuKind::UnshareScreen => "unshareScreen",
            McuKind::Missing => "",
            McuKind::Other => "other",
        }
    }

    /// Messages a subscriber sends about a publisher's stream: handled by
    /// the process of the publisher.
    pub(super) fn subscriber_side(self) -> bool {
        matches!(
            self,
            McuKind::RequestOffer
                | McuKind::Answer
                | McuKind::Candidate
                | McuKind::EndOfCandidates
                | McuKind::SelectStream
        )
    }
}

/// The fields of MCU data the server reads; everything else is ignored.
#[derive(Deserialize)]
pub(super) struct McuData {
    #[serde(rename = "type", default)]
    pub(super) kind: McuKind,
    #[serde(default)]
    pub(super) sid: String,
    #[serde(rename = "roomType", default)]
    pub(super) room_type: String,
    #[serde(default)]
    pub(super) payload: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    bitrate: Option<f64>,
    #[serde(default)]
    audiocodec: Option<String>,
    #[serde(default)]
    videocodec: Option<String>,
    #[serde(default)]
    vp9profile: Option<String>,
    #[serde(default)]
    h264profile: Option<String>,
}

/// MCU data after validation.
pub(super) struct Checked {
    pub(super) data: McuData,
    /// Media of an offer's or answer's SDP.
    pub(super) media: sdp::Media,
    /// The SDP of an offer or answer.
    pub(super) sdp: String,
    /// A candidate: `Some(None)` for the empty end-of-candidates string,
    /// `None` when the candidate is filtered (never reaches Janus).
    pub(super) candidate: Option<Option<Value>>,
}

pub(super) fn err(code: &str, msg: &str) -> ProtocolError {
    ProtocolError::new(code, msg)
}

fn details(v: Value) -> Box<RawValue> {
    RawValue::from_string(v.to_string()).expect("JSON value serializes")
}

/// What Janus needs of a client's offer.
pub(super) fn offer_of(c: &Checked, stream: StreamType, backend_caps: (u64, u64)) -> Offer {
    Offer {
        sid: c.data.sid.clone(),
        sdp: c.sdp.clone(),
        bitrate: c.data.bitrate.filter(|b| *b > 0.0).map_or(0, |b| b as u64),
        backend_cap: match stream {
            StreamType::Video => backend_caps.0,
            StreamType::Screen => backend_caps.1,
        },
        codecs: [
            c.data.audiocodec.clone(),
            c.data.videocodec.clone(),
            c.data.vp9profile.clone(),
            c.data.h264profile.clone(),
        ],
        media: c.media,
        payload: c.data.payload.clone().unwrap_or_default(),
        ..Offer::default()
    }
}

/// Checks MCU data as the Go server does (`CheckValid`).
pub(super) fn check(data: McuData, mcu: &Mcu) -> Result<Checked, ProtocolError> {
    if let RoomType::Unknown(_) = RoomType::parse(&data.room_type) {
        return Err(invalid_format(format!(
            "invalid room type: {}",
            data.room_type
        )));
    }
    let mut out = Checked {
        media: sdp::Media::default(),
        sdp: String::new(),
        candidate: Some(None),
        data,
    };
    match out.data.kind {
        McuKind::Missing => return Err(invalid_format("type missing")),
        McuKind::Offer | McuKind::Answer => check_sdp(&mut out)?,
        McuKind::Candidate => check_candidate(&mut out, mcu)?,
        _ => {}
    }
    Ok(out)
}

/// An offer's or answer's SDP: parsed for its media.
fn check_sdp(out: &mut Checked) -> Result<(), ProtocolError> {
    let Some(text) = out
        .data
        .payload
        .as_ref()
        .and_then(|p| p.get("sdp"))
        .and_then(Value::as_str)
    else {
        return Err(err(
            error::INVALID_SDP,
            "Payload does not contain a valid SDP.",
        ));
    };
    out.media = sdp::parse(text).map_err(|e| match e {
        SdpError::Sdp(e) => err(error::INVALID_SDP, "Error parsing SDP from payload.")
            .with_details(details(serde_json::json!({"error": e}))),
        SdpError::Candidate { media, idx, error } => err(
            error::INVALID_SDP,
            "Error parsing candidate from media description.",
        )
        .with_details(details(
            serde_json::json!({"media": media, "idx": idx, "error": error}),
        )),
    })?;
    out.sdp = text.to_string();
    Ok(())
}

/// A candidate: parsed, and dropped (`None`) when `[mcu]` filters it.
fn check_candidate(out: &mut Checked, mcu: &Mcu) -> Result<(), ProtocolError> {
    let Some(c) = out.data.payload.as_ref().and_then(|p| p.get("candidate")) else {
        return Err(err(
            error::NO_CANDIDATE,
            "Payload does not contain a candidate.",
        ));
    };
    let Some(text) = c.get("candidate").and_then(Value::as_str) else {
        return Err(err(
            error::INVALID_CANDIDATE,
            "Payload does not contain a valid candidate.",
        ));
    };
    if text.is_empty() {
        out.candidate = Some(Some(c.clone()));
        return Ok(());
    }
    let parsed = sdp::parse_candidate(text).map_err(|e| {
        err(
            error::INVALID_CANDIDATE,
            "Error parsing candidate from payload.",
        )
        .with_details(details(serde_json::json!({"error": e})))
    })?;
    let cfg = mcu.config();
    out.candidate = if sdp::is_filtered(&parsed, &cfg.allowed_candidates, &cfg.blocked_candidates) {
        None
    } else {
        Some(Some(c.clone()))
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{McuData, McuKind};

    #[test]
    fn mcu_types_are_read_from_the_strings_clients_send() {
        let kind = |json: &str| serde_json::from_str::<McuData>(json).map(|d| d.kind).ok();
        assert_eq!(kind(r#"{"type":"offer"}"#), Some(McuKind::Offer));
        assert_eq!(
            kind(r#"{"type":"endOfCandidates"}"#),
            Some(McuKind::EndOfCandidates)
        );
        assert_eq!(
            kind(r#"{"type":"requestoffer"}"#),
            Some(McuKind::RequestOffer)
        );
        assert_eq!(
            kind(r#"{"type":"unshareScreen"}"#),
            Some(McuKind::UnshareScreen)
        );
        assert_eq!(kind(r#"{"type":""}"#), Some(McuKind::Missing));
        assert_eq!(kind(r#"{}"#), Some(McuKind::Missing));
        assert_eq!(kind(r#"{"type":"chat"}"#), Some(McuKind::Other));
        assert_eq!(kind(r#"{"type":null}"#), None, "not MCU data, as before");
        for k in [McuKind::Offer, McuKind::SelectStream, McuKind::SendOffer] {
            let json = format!(r#"{{"type":"{}"}}"#, k.as_str());
            assert_eq!(kind(&json), Some(k));
        }
    }
}
