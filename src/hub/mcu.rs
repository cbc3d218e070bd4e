//! Client messages for the MCU: with `[mcu]` configured, a `message` whose
//! `data` is a JSON object is read as MCU data (`type`, `sid`, `roomType`,
//! `payload`, ...), checked, and `offer`, `answer`, `candidate`,
//! `endOfCandidates`, `selectStream`, `requestoffer`, `sendoffer` and
//! `unshareScreen` to sessions go to Janus instead of the recipient. Janus
//! calls happen outside the hub lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::session::SessionKind;
use super::{invalid_format, Hub};
use crate::api::client::{MessageClientMessage, RecipientKind};
use crate::api::error::{self, ProtocolError};
use crate::api::server::{frame, MessageOut, Sender};
use crate::mcu::sdp::{self, SdpError};
use crate::mcu::{Command, Mcu, McuError, Offer, Signal, StreamType};

/// What the hub does with a `message` after the MCU looked at it.
pub(crate) enum McuRoute {
    /// Handled (or refused with an error reply).
    Done,
    /// Handled once the future ran (the reader awaits it, so a client's
    /// candidates stay behind its offer).
    Wait(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Not for the MCU: deliver as a normal message.
    Deliver(MessageClientMessage),
}

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
    fn subscriber_side(self) -> bool {
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

/// The sender of an MCU message: its user id and its backend's bitrate caps.
type SenderInfo = (Option<Arc<str>>, (u64, u64));

/// What Janus needs of a client's offer.
fn offer_of(c: &Checked, stream: StreamType, backend_caps: (u64, u64)) -> Offer {
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
    }
}

/// Checks MCU data as the Go server does (`CheckValid`).
pub(super) fn check(data: McuData, mcu: &Mcu) -> Result<Checked, ProtocolError> {
    if !data.room_type.is_empty()
        && !matches!(data.room_type.as_str(), "audio" | "video" | "screen")
    {
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

/// `data` of an MCU reply, in the Go server's key order.
#[derive(Serialize)]
struct ReplyData<'a> {
    to: &'a str,
    from: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "roomType")]
    room_type: &'a str,
    payload: &'a Value,
    #[serde(skip_serializing_if = "str::is_empty")]
    sid: &'a str,
}

/// A `message` from `from` to `to` carrying MCU data.
pub(super) fn reply_frame(
    from: &str,
    from_user: Option<&str>,
    to: &str,
    kind: &str,
    stream: StreamType,
    payload: &Value,
    sid: &str,
) -> crate::api::server::Frame {
    let data = ReplyData {
        to,
        from,
        kind,
        room_type: stream.as_str(),
        payload,
        sid,
    };
    let data = RawValue::from_string(serde_json::to_string(&data).expect("reply serializes"))
        .expect("reply is JSON");
    frame(
        None,
        "message",
        &MessageOut {
            sender: Sender {
                kind: "session",
                sessionid: from,
                userid: from_user,
            },
            recipient: None,
            data: &data,
        },
    )
}

pub(super) fn mcu_error(e: &McuError) -> ProtocolError {
    match e {
        McuError::NotFound(_) => err(
            error::CLIENT_NOT_FOUND,
            "No MCU client found to send message to.",
        ),
        McuError::Failed(_) => err(
            error::PROCESSING_FAILED,
            "Processing of the message failed, please check server logs.",
        ),
    }
}

/// True when `sdp` only carries media the session may publish.
fn may_publish(s: &super::session::Session, stream: StreamType, media: sdp::Media) -> bool {
    if stream == StreamType::Screen {
        return s.has_permission("publish-screen");
    }
    let all = s.has_permission("publish-media");
    (!media.audio || all || s.has_permission("publish-audio"))
        && (!media.video || all || s.has_permission("publish-video"))
}

/// True when the session may send candidates for its own `room_type` stream.
fn may_send(s: &super::session::Session, room_type: &str) -> bool {
    if room_type == "screen" {
        s.has_permission("publish-screen")
    } else {
        s.has_permission("publish-media")
            || s.has_permission("publish-audio")
            || s.has_permission("publish-video")
    }
}

impl Hub {
    /// The MCU, when configured and started.
    pub fn mcu(&self) -> Option<&Arc<Mcu>> {
        self.mcu.get()
    }

    /// Starts the Janus client and the task that hands its signals to
    /// clients (when `[mcu]` is configured).
    pub fn start_mcu(self: &Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let Some(cfg) = self.config.mcu.clone() else {
            return;
        };
        let (mcu, mut signals) = Mcu::start(cfg, self.metrics.mcu.clone(), cancel.clone());
        if self.mcu.set(mcu.clone()).is_err() {
            return;
        }
        self.lock().mcu = Some(mcu);
        let hub = self.clone();
        tokio::spawn(async move {
            loop {
                let s = tokio::select! {
                    _ = cancel.cancelled() => return,
                    s = signals.recv() => match s { Some(s) => s, None => return },
                };
                hub.deliver_signal(s);
            }
        });
    }

    /// A signal of the MCU to a client: local, or a subscriber on another
    /// process (whose subscription this process's Janus handle serves).
    fn deliver_signal(&self, s: Signal) {
        let f = reply_frame(&s.from, None, &s.to, s.kind, s.stream, &s.payload, &s.sid);
        self.deliver_anywhere(&s.to, &f);
    }

    fn deliver_frame(&self, to: &str, f: &crate::api::server::Frame) {
        let mut st = self.lock();
        st.sessions.deliver(to, f);
    }

    /// Looks at a client `message` for the MCU (see the module docs).
    pub(crate) fn mcu_message(
        self: &Arc<Self>,
        sid: &Arc<str>,
        id: Option<&str>,
        msg: MessageClientMessage,
    ) -> McuRoute {
        let Some(mcu) = self.mcu.get().cloned() else {
            return McuRoute::Deliver(msg);
        };
        if !matches!(
            msg.recipient.kind,
            RecipientKind::Session | RecipientKind::Room | RecipientKind::Call
        ) || !msg.data.get().trim_start().starts_with('{')
        {
            return McuRoute::Deliver(msg);
        }
        let Ok(data) = serde_json::from_str::<McuData>(msg.data.get()) else {
            return McuRoute::Deliver(msg);
        };
        let checked = match check(data, &mcu) {
            Ok(c) => c,
            Err(e) => {
                self.reply_error(sid, id, e);
                return McuRoute::Done;
            }
        };
        if msg.recipient.kind != RecipientKind::Session {
            return McuRoute::Deliver(msg);
        }
        let target: Arc<str> = match msg.recipient.sessionid.as_deref() {
            Some(t) if !t.is_empty() => t.into(),
            _ => return McuRoute::Deliver(msg),
        };
        let kind = checked.data.kind;
        let to_self = target == *sid;
        if kind.subscriber_side()
            && !to_self
            && self.forward_to_publisher_process(&mcu, sid, id, &target, &checked, &msg)
        {
            return McuRoute::Done;
        }
        match kind {
            McuKind::Offer
            | McuKind::Answer
            | McuKind::Candidate
            | McuKind::EndOfCandidates
            | McuKind::SelectStream => {
                mcu.count_message(kind.as_str());
                let (hub, sid, id) = (self.clone(), sid.clone(), id.map(str::to_string));
                McuRoute::Wait(Box::pin(async move {
                    hub.mcu_client_message(&mcu, &sid, id.as_deref(), &target, checked)
                        .await
                }))
            }
            McuKind::RequestOffer => {
                mcu.count_message(kind.as_str());
                if to_self {
                    return McuRoute::Done;
                }
                let (hub, sid, id) = (self.clone(), sid.clone(), id.map(str::to_string));
                tokio::spawn(async move {
                    hub.request_offer(&mcu, &sid, id.as_deref(), &target, checked)
                        .await
                });
                McuRoute::Done
            }
            McuKind::SendOffer if !to_self => {
                mcu.count_message(kind.as_str());
                self.send_offer(mcu, sid, id, target, checked);
                McuRoute::Done
            }
            McuKind::UnshareScreen if to_self => {
                mcu.command(Command::UnshareScreen(sid.clone()));
                McuRoute::Done
            }
            _ => McuRoute::Deliver(msg),
        }
    }

    /// `offer`, `answer`, `candidate`, `endOfCandidates`, `selectStream`.
    async fn mcu_client_message(
        &self,
        mcu: &Mcu,
        sid: &Arc<str>,
        id: Option<&str>,
        target: &Arc<str>,
        c: Checked,
    ) {
        let kind = c.data.kind;
        let stream = StreamType::parse(&c.data.room_type);
        let to_self = target == sid;
        let Some((user, backend_caps)) = self.mcu_sender(sid, id, &c, stream, to_self) else {
            return;
        };
        if kind == McuKind::Candidate && c.candidate.is_none() {
            // Filtered candidates are dropped silently.
            return;
        }
        if kind == McuKind::SelectStream && to_self {
            return;
        }
        let Some(stream) = stream else {
            return self.reply_error(sid, id, mcu_error(&McuError::NotFound("no stream".into())));
        };
        let result = match kind {
            McuKind::Offer => {
                let offer = offer_of(&c, stream, backend_caps);
                mcu.publish(sid, stream, offer, |psid, answer| {
                    let f = reply_frame(sid, user.as_deref(), sid, "answer", stream, answer, psid);
                    self.deliver_frame(sid, &f);
                })
                .await
            }
            _ => self.subscriber_call(mcu, sid, target, stream, &c).await,
        };
        if let Err(e) = result {
            tracing::info!(session = %sid, kind = kind.as_str(), "MCU message failed: {e}");
            self.reply_error(sid, id, mcu_error(&e));
        }
    }

    /// The sender of an MCU message, if it may send it: its user id and its
    /// backend's bitrate caps. Refusals are answered here.
    fn mcu_sender(
        &self,
        sid: &Arc<str>,
        id: Option<&str>,
        c: &Checked,
        stream: Option<StreamType>,
        to_self: bool,
    ) -> Option<SenderInfo> {
        let st = self.lock();
        let s = st.sessions.map.get(sid)?;
        let refused = match c.data.kind {
            McuKind::Offer => stream
                .is_some_and(|t| !may_publish(s, t, c.media))
                .then_some("Not allowed to publish."),
            McuKind::Candidate | McuKind::EndOfCandidates if to_self && c.candidate.is_some() => {
                (!may_send(s, &c.data.room_type)).then_some("Not allowed to send candidate.")
            }
            _ => None,
        };
        let Some(text) = refused else {
            return Some((s.user_id.clone(), s.backend.max_bitrates));
        };
        drop(st);
        tracing::info!(session = %sid, kind = c.data.kind.as_str(), "not allowed to publish");
        self.reply_error(sid, id, err(error::NOT_ALLOWED, text));
        None
    }

    /// `answer`, `candidate`, `endOfCandidates` and `selectStream`: to the
    /// session's own publisher (candidates) or its subscriber of `target`.
    async fn subscriber_call(
        &self,
        mcu: &Mcu,
        sid: &Arc<str>,
        target: &Arc<str>,
        stream: StreamType,
        c: &Checked,
    ) -> Result<(), McuError> {
        let to_self = target == sid;
        match c.data.kind {
            McuKind::Answer if !to_self => {
                mcu.subscriber_answer(sid, target, stream, &c.data.sid, &c.sdp)
                    .await
            }
            McuKind::Answer => Err(McuError::NotFound("answer to self".into())),
            McuKind::Candidate | McuKind::EndOfCandidates => {
                let cand = if c.data.kind == McuKind::Candidate {
                    c.candidate.clone().flatten()
                } else {
                    None
                };
                if to_self {
                    mcu.publisher_candidate(sid, stream, &c.data.sid, cand)
                        .await
                } else {
                    mcu.subscriber_candidate(sid, target, stream, &c.data.sid, cand)
                        .await
                }
            }
            McuKind::SelectStream => {
                let payload = Value::Object(c.data.payload.clone().unwrap_or_default());
                mcu.select_stream(sid, target, stream, &payload).await
            }
            _ => Ok(()),
        }
    }

    /// `requestoffer` from local session `a` to `b` (of any process): both
    /// in the same room and in its call, unless `a` is internal or
    /// `[app] allowsubscribeany` is set.
    pub(super) fn may_subscribe(&self, a: &str, b: &str) -> bool {
        let st = self.lock();
        let Some(sa) = st.sessions.map.get(a) else {
            return false;
        };
        if sa.kind == SessionKind::Internal || self.config.allow_subscribe_any {
            return true;
        }
        let Some(room) = &sa.room else {
            return false;
        };
        if !st.is_in_call(room, a) {
            return false;
        }
        if let Some(sb) = st.sessions.map.get(b) {
            return sb.room.as_ref() == Some(room) && st.is_in_call(room, b);
        }
        let Some(r) = st.cluster.remote.get(b) else {
            return false;
        };
        if &r.room != room {
            return false;
        }
        if r.info.kind == crate::bus::MemberKind::Client {
            r.info
                .roomsessionid
                .as_deref()
                .and_then(|rs| st.rooms.get(room)?.participants.get(rs))
                .and_then(|p| p.get("inCall"))
                .is_some_and(super::in_call_flag)
        } else {
            r.info.in_call & super::session::flags::IN_CALL != 0
        }
    }

    /// `requestoffer`: subscribes the sender to the target's stream; the
    /// offer goes to the sender.
    async fn request_offer(
        &self,
        mcu: &Mcu,
        sid: &Arc<str>,
        id: Option<&str>,
        target: &Arc<str>,
        c: Checked,
    ) {
        if !self.may_subscribe(sid, target) {
            return self.reply_error(
                sid,
                id,
                err(error::NOT_ALLOWED, "Not allowed to request offer."),
            );
        }
        let Some(stream) = StreamType::parse(&c.data.room_type) else {
            return self.reply_error(sid, id, mcu_error(&McuError::NotFound("no stream".into())));
        };
        let payload = Value::Object(c.data.payload.clone().unwrap_or_default());
        let deliver = |ssid: &str, offer: &Value| {
            let f = reply_frame(target, None, sid, "offer", stream, offer, ssid);
            self.deliver_frame(sid, &f);
        };
        match mcu
            .subscribe(sid, target, stream, &c.data.sid, &payload, deliver)
            .await
        {
            Ok(()) => {}
            Err(e) => {
                tracing::info!(session = %sid, publisher = %target, "requestoffer failed: {e}");
                self.reply_error(sid, id, mcu_error(&e));
            }
        }
    }

    /// `sendoffer`: the sender publishes; the recipient gets a subscriber
    /// of it and the offer. Errors go to the sender.
    fn send_offer(
        self: &Arc<Self>,
        mcu: Arc<Mcu>,
        sid: &Arc<str>,
        id: Option<&str>,
        target: Arc<str>,
        c: Checked,
    ) {
        let (allowed, local) = {
            let st = self.lock();
            let Some(s) = st.sessions.map.get(sid) else {
                return;
            };
            (
                may_send(s, &c.data.room_type),
                st.sessions.map.contains_key(&target),
            )
        };
        let local = local || self.remote_owner(sid, &target).is_some();
        if !allowed {
            return self.reply_error(
                sid,
                id,
                err(error::NOT_ALLOWED, "Not allowed to send offer"),
            );
        }
        let Some(stream) = StreamType::parse(&c.data.room_type).filter(|_| local) else {
            return self.reply_error(
                sid,
                id,
                mcu_error(&McuError::NotFound("no recipient".into())),
            );
        };
        let (hub, sid, id) = (self.clone(), sid.clone(), id.map(str::to_string));
        tokio::spawn(async move {
            let payload = Value::Object(c.data.payload.clone().unwrap_or_default());
            let deliver = |ssid: &str, offer: &Value| {
                let f = reply_frame(&sid, None, &target, "offer", stream, offer, ssid);
                hub.deliver_anywhere(&target, &f);
            };
            match mcu
                .subscribe(&target, &sid, stream, "", &payload, deliver)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::info!(session = %sid, "sendoffer failed: {e}");
                    hub.reply_error(&sid, id.as_deref(), mcu_error(&e));
                }
            }
        });
    }
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
