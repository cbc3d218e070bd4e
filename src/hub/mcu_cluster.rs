//! MCU messages across processes: the process of a publisher owns its
//! Janus handles, so subscriber-side messages of sessions on other
//! processes travel over the bus to it ([`crate::bus::Header::Mcu`]) and
//! its replies come back as session frames.

use std::sync::Arc;

use serde_json::Value;

use super::mcu::{mcu_error, reply_frame, too_many_mcu_requests};
use super::mcu_data::{check, err, Checked, McuData, McuKind};
use super::Hub;
use crate::api::client::MessageClientMessage;
use crate::api::error;
use crate::mcu::{Mcu, McuError, StreamType};

impl Hub {
    /// Sends a subscriber-side MCU message to a publisher on another
    /// process; false when `target` is not a session of another process.
    pub(super) fn forward_to_publisher_process(
        &self,
        mcu: &Mcu,
        sid: &Arc<str>,
        id: Option<&str>,
        target: &Arc<str>,
        checked: &Checked,
        msg: &MessageClientMessage<'_>,
    ) -> bool {
        let Some(owner) = self.remote_owner(sid, target) else {
            return false;
        };
        let kind = checked.data.kind;
        mcu.count_message(kind.as_str());
        if kind == McuKind::Candidate && checked.candidate.is_none() {
            return true;
        }
        if kind == McuKind::RequestOffer && !self.may_subscribe(sid, target) {
            self.reply_error(
                sid,
                id,
                err(error::NOT_ALLOWED, "Not allowed to request offer."),
            );
            return true;
        }
        // The publisher's process owns its Janus handles.
        let backend = self
            .lock()
            .sessions
            .map
            .get(sid)
            .map(|s| s.backend.id.to_string())
            .unwrap_or_default();
        let bus = self.lock().bus.clone();
        let h = crate::bus::Header::Mcu {
            from: bus.pid().to_string(),
            sid: target.to_string(),
            sender: sid.to_string(),
            backend,
            id: id.map(str::to_string),
        };
        bus.publish(
            crate::bus::process_subject(&owner),
            crate::bus::encode(&h, Some(msg.data.get().as_bytes())),
        );
        true
    }

    /// The process of `target` when it is a session of another process
    /// of the sender's backend (None: local, or unknown).
    pub(super) fn remote_owner(&self, sid: &str, target: &str) -> Option<String> {
        let st = self.lock();
        if st.sessions.map.contains_key(target) || !st.bus.clustered() {
            return None;
        }
        let backend = st.sessions.map.get(sid)?.backend.id.clone();
        match st.cluster.remote.get(target) {
            Some(r) if r.room.backend == backend => Some(r.info.owner.clone()),
            Some(_) => None,
            None => super::cluster::owner_of(target)
                .filter(|p| st.cluster.processes.contains_key(*p))
                .map(str::to_string),
        }
    }

    /// Delivers a frame to a session of this or another process.
    pub(super) fn deliver_anywhere(&self, to: &str, f: &crate::api::server::Frame) {
        let mut st = self.lock();
        if st.sessions.map.contains_key(to) {
            st.sessions.deliver(to, f);
        } else {
            st.send_to_remote_session(to, f, None);
        }
    }

    /// An MCU message of a session of another process to a local
    /// publisher (see [`crate::bus::Header::Mcu`]); the sender's process
    /// validated it and checked the permissions.
    pub(crate) fn remote_mcu_message(
        self: &Arc<Self>,
        target: &str,
        sender: &str,
        backend: &str,
        id: Option<String>,
        body: &[u8],
    ) {
        let sender: Arc<str> = sender.into();
        let target: Arc<str> = target.into();
        let fail = |e: McuError| {
            self.deliver_anywhere(
                &sender,
                &crate::api::server::error_frame(id.as_deref(), &mcu_error(&e)),
            )
        };
        let Some(mcu) = self.mcu.get().cloned() else {
            return fail(McuError::NotFound("no MCU".into()));
        };
        let local = self
            .lock()
            .sessions
            .map
            .get(&*target)
            .is_some_and(|s| &*s.backend.id == backend);
        if !local {
            return fail(McuError::NotFound("no such publisher".into()));
        }
        let Ok(data) = serde_json::from_slice::<McuData>(body) else {
            return;
        };
        let Ok(c) = check(data, &mcu) else {
            return;
        };
        let Some(stream) = StreamType::parse(&c.data.room_type) else {
            return fail(McuError::NotFound("no stream".into()));
        };
        let waits = c.data.kind == McuKind::RequestOffer;
        let task = self
            .clone()
            .remote_mcu_task(mcu, sender.clone(), target, id.clone(), stream, c);
        // A `requestoffer` may wait for a publisher up to `[mcu] timeout`:
        // within its sender's slots, as on the sender's own process.
        // Answers, candidates and stream selections are quick Janus calls.
        if !waits {
            tokio::spawn(task);
        } else if self.remote_mcu_slots(&sender).run(task).is_err() {
            self.deliver_anywhere(
                &sender,
                &crate::api::server::error_frame(id.as_deref(), &too_many_mcu_requests()),
            );
        }
    }

    /// Carries out an MCU message of a session of another process; an
    /// error goes back to that session.
    async fn remote_mcu_task(
        self: Arc<Self>,
        mcu: Arc<Mcu>,
        sender: Arc<str>,
        target: Arc<str>,
        id: Option<String>,
        stream: StreamType,
        c: Checked,
    ) {
        let payload = Value::Object(c.data.payload.clone().unwrap_or_default());
        let r = match c.data.kind {
            McuKind::RequestOffer => {
                let deliver = |ssid: &str, offer: &Value| {
                    let f = reply_frame(&target, None, &sender, "offer", stream, offer, ssid);
                    self.deliver_anywhere(&sender, &f);
                };
                mcu.subscribe(&sender, &target, stream, &c.data.sid, &payload, deliver)
                    .await
            }
            McuKind::Answer => {
                mcu.subscriber_answer(&sender, &target, stream, &c.data.sid, &c.sdp)
                    .await
            }
            McuKind::Candidate | McuKind::EndOfCandidates => {
                let cand = if c.data.kind == McuKind::Candidate {
                    c.candidate.clone().flatten()
                } else {
                    None
                };
                mcu.subscriber_candidate(&sender, &target, stream, &c.data.sid, cand)
                    .await
            }
            McuKind::SelectStream => mcu.select_stream(&sender, &target, stream, &payload).await,
            _ => Ok(()),
        };
        if let Err(e) = r {
            tracing::info!(session = %sender, publisher = %target, "MCU message from another process failed: {e}");
            self.deliver_anywhere(
                &sender,
                &crate::api::server::error_frame(id.as_deref(), &mcu_error(&e)),
            );
        }
    }

    /// The MCU slots of a session of another process; idle ones are
    /// forgotten once there are many.
    fn remote_mcu_slots(&self, sender: &Arc<str>) -> Arc<super::mcu::McuSlots> {
        let mut all = self.remote_mcu.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() >= REMOTE_MCU_SENDERS && !all.contains_key(sender) {
            all.retain(|_, s| !s.idle());
        }
        all.entry(sender.clone())
            .or_insert_with(super::mcu::McuSlots::new)
            .clone()
    }
}

/// Senders of other processes whose MCU slots are kept before idle ones
/// are dropped.
const REMOTE_MCU_SENDERS: usize = 1024;
