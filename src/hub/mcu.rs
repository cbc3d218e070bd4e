//! Client messages for the MCU: with `[mcu]` configured, a `message` whose
//! `data` is a JSON object is read as MCU data (`type`, `sid`, `roomType`,
//! `payload`, ...), checked, and `offer`, `answer`, `candidate`,
//! `endOfCandidates`, `selectStream`, `requestoffer`, `sendoffer` and
//! `unshareScreen` to sessions go to Janus instead of the recipient. Janus
//! calls happen outside the hub lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::Semaphore;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::mcu_data::{check, err, offer_of, Checked, McuData, McuKind};
use super::session::SessionKind;
use super::Hub;
use crate::api::client::{MessageClientMessage, RecipientKind, RoomType};
use crate::api::error::{self, ProtocolError};
use crate::api::server::{frame, MessageOut, Sender};
use crate::mcu::sdp;
use crate::mcu::{Command, Mcu, McuError, Signal, StreamType};

/// What the hub does with a `message` after the MCU looked at it.
pub(crate) enum McuRoute<'a> {
    /// Handled (or refused with an error reply).
    Done,
    /// Handled once the future ran (the reader awaits it, so a client's
    /// candidates stay behind its offer).
    Wait(Pin<Box<dyn Future<Output = ()> + Send>>),
    /// Not for the MCU: deliver as a normal message.
    Deliver(MessageClientMessage<'a>),
}

/// MCU requests of one sender (`requestoffer`, `sendoffer`; each may wait
/// for a publisher and Janus up to `[mcu] timeout`) that run at once.
const MCU_RUNNING: usize = 16;
/// MCU requests of one sender that wait for a slot, in order; more are
/// refused with `too_many_requests`.
const MCU_QUEUED: usize = 256;

/// The MCU requests of one sender: at most [`MCU_RUNNING`] run, at most
/// [`MCU_QUEUED`] more wait in order. The sender's connection is never held
/// back for them: a `sendoffer` waits for the sender's own publisher, which
/// only its next messages can bring.
pub(crate) struct McuSlots {
    running: Arc<Semaphore>,
    waiting: std::sync::atomic::AtomicUsize,
    /// The session's Janus budget (`janus_budget.rs`).
    pub(super) janus: std::sync::Mutex<super::janus_budget::JanusBudget>,
}

impl McuSlots {
    pub(crate) fn new() -> Arc<McuSlots> {
        Arc::new(McuSlots {
            running: Arc::new(Semaphore::new(MCU_RUNNING)),
            waiting: Default::default(),
            janus: std::sync::Mutex::new(super::janus_budget::JanusBudget::new()),
        })
    }

    /// Runs `task` now or once a slot is free; `Err` when too many wait.
    pub(crate) fn run(
        self: &Arc<Self>,
        task: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ()> {
        use std::sync::atomic::Ordering::AcqRel;
        if let Ok(slot) = self.running.clone().try_acquire_owned() {
            tokio::spawn(async move {
                task.await;
                drop(slot);
            });
            return Ok(());
        }
        if self.waiting.fetch_add(1, AcqRel) >= MCU_QUEUED {
            self.waiting.fetch_sub(1, AcqRel);
            return Err(());
        }
        let me = self.clone();
        tokio::spawn(async move {
            let slot = me.running.clone().acquire_owned().await;
            me.waiting.fetch_sub(1, AcqRel);
            if let Ok(slot) = slot {
                task.await;
                drop(slot);
            }
        });
        Ok(())
    }

    /// True when nothing runs or waits.
    pub(crate) fn idle(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Acquire) == 0
            && self.running.available_permits() == MCU_RUNNING
    }
}

pub(super) fn too_many_mcu_requests() -> ProtocolError {
    err(
        error::TOO_MANY_REQUESTS,
        "Too many MCU requests waiting, try again later.",
    )
}

/// The sender of an MCU message: its user id and its backend's bitrate caps.
/// The sender's user id, its backend's bitrate caps and its country.
type SenderInfo = (Option<Arc<str>>, (u64, u64), Option<Arc<str>>);

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
        McuError::Failed(_) | McuError::HandedOver => err(
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
    if RoomType::parse(room_type) == RoomType::Screen {
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

    /// Starts the MCU (Janus or proxy client) and the task that hands its
    /// signals to clients (when `[mcu]` is configured).
    pub fn start_mcu(self: &Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        let Some(cfg) = self.config.mcu.clone() else {
            return;
        };
        let restored = self
            .restored_mcu
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let (mcu, mut signals) =
            Mcu::start_restored(cfg, self.metrics.mcu.clone(), cancel.clone(), restored);
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
        if s.kind == "unshareScreen" && s.to == s.from {
            self.ask_to_publish_again(&s.to);
        }
    }

    /// After its own publisher ended (`unshareScreen` to itself): the
    /// session gets its room's participants again, which makes the Talk
    /// client, in the call without a publisher, publish anew
    /// (`checkStartPublishOwnPeer`).
    fn ask_to_publish_again(&self, sid: &str) {
        let mut st = self.lock();
        let Some(key) = st.sessions.map.get(sid).and_then(|s| s.room.clone()) else {
            return;
        };
        if let Some(f) = st.participants_frame(&key, &[], None) {
            st.sessions.deliver(sid, &f);
        }
    }

    fn deliver_frame(&self, to: &str, f: &crate::api::server::Frame) {
        let mut st = self.lock();
        st.sessions.deliver(to, f);
    }

    /// Looks at a client `message` for the MCU (see the module docs).
    pub(crate) fn mcu_message<'a>(
        self: &Arc<Self>,
        sid: &Arc<str>,
        id: Option<&str>,
        msg: MessageClientMessage<'a>,
    ) -> McuRoute<'a> {
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
                let (hub, task_sid, task_id) = (self.clone(), sid.clone(), id.map(str::to_string));
                self.mcu_task(sid, id, async move {
                    hub.request_offer(&mcu, &task_sid, task_id.as_deref(), &target, checked)
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
        let Some((user, backend_caps, country)) = self.mcu_sender(sid, id, &c, stream, to_self)
        else {
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
                let mut offer = offer_of(&c, stream, backend_caps);
                if let Some(country) = country {
                    offer.continents = self.geoip.continents_near(&country);
                    offer.country = Some(country);
                }
                let offer_sid = offer.sid.clone();
                let r = mcu
                    .publish(sid, stream, offer, |psid, answer| {
                        let f =
                            reply_frame(sid, user.as_deref(), sid, "answer", stream, answer, psid);
                        self.deliver_frame(sid, &f);
                    })
                    .await;
                if matches!(r, Err(McuError::HandedOver)) {
                    self.publish_elsewhere(sid, stream, &offer_sid);
                }
                r
            }
            _ => self.subscriber_call(mcu, sid, target, stream, &c).await,
        };
        if let Err(e) = result {
            tracing::info!(session = %sid, kind = kind.as_str(), "MCU message failed: {e}");
            // (After the session was handed over meanwhile: where it went.)
            let f = crate::api::server::error_frame(id, &mcu_error(&e));
            self.deliver_anywhere(sid, &f);
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
            return Some((s.user_id.clone(), s.backend.max_bitrates, s.country.clone()));
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
    /// `[app] allowsubscribeany` is set; never to a session of another
    /// backend (unlike the Go server, which skips every check then).
    pub(super) fn may_subscribe(&self, a: &str, b: &str) -> bool {
        let st = self.lock();
        let Some(sa) = st.sessions.map.get(a) else {
            return false;
        };
        let other_backend = match st.sessions.map.get(b) {
            Some(sb) => sb.backend.id != sa.backend.id,
            None => st
                .cluster
                .remote
                .get(b)
                .is_some_and(|r| r.room.backend != sa.backend.id),
        };
        if other_backend {
            return false;
        }
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

    /// Runs an MCU request of `sid` in the background within the
    /// session's [`McuSlots`]; refused with `too_many_requests` (and the
    /// request's id) when too many wait already.
    pub(super) fn mcu_task(
        &self,
        sid: &Arc<str>,
        id: Option<&str>,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let slots = {
            let mut st = self.lock();
            let Some(s) = st.sessions.map.get_mut(sid) else {
                return;
            };
            s.mcu_tasks.get_or_insert_with(McuSlots::new).clone()
        };
        if slots.run(task).is_err() {
            self.reply_error(sid, id, too_many_mcu_requests());
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
            // A recipient of another backend is unreachable, as for a
            // message to a session.
            let same_backend = st
                .sessions
                .map
                .get(&target)
                .map(|t| t.backend.id == s.backend.id);
            (may_send(s, &c.data.room_type), same_backend)
        };
        let local = match local {
            Some(same) => same,
            None => self.remote_owner(sid, &target).is_some(),
        };
        if !allowed {
            self.reply_error(
                sid,
                id,
                err(error::NOT_ALLOWED, "Not allowed to send offer"),
            );
            return;
        }
        let Some(stream) = StreamType::parse(&c.data.room_type).filter(|_| local) else {
            self.reply_error(
                sid,
                id,
                mcu_error(&McuError::NotFound("no recipient".into())),
            );
            return;
        };
        let (hub, task_sid, task_id) = (self.clone(), sid.clone(), id.map(str::to_string));
        self.mcu_task(sid, id, async move {
            let payload = Value::Object(c.data.payload.clone().unwrap_or_default());
            let deliver = |ssid: &str, offer: &Value| {
                let f = reply_frame(&task_sid, None, &target, "offer", stream, offer, ssid);
                hub.deliver_anywhere(&target, &f);
            };
            match mcu
                .subscribe(&target, &task_sid, stream, "", &payload, deliver)
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    tracing::info!(session = %task_sid, "sendoffer failed: {e}");
                    hub.reply_error(&task_sid, task_id.as_deref(), mcu_error(&e));
                }
            }
        });
    }
}
