//! MCU messages across processes: the process of a publisher owns its
//! Janus handles, so subscriber-side messages of sessions on other
//! processes travel over the bus to it ([`crate::bus::Header::Mcu`]) and
//! its replies come back as session frames.

use std::sync::Arc;

use serde_json::Value;

use super::mcu::{mcu_error, reply_frame};
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
        msg: &MessageClientMessage,
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
        // Sessions of other processes are not limited per session here:
        // all of them together get REMOTE_MCU_TASKS at once, beyond that a
        // request is refused with an error its sender gets.
        let Ok(slot) = self.remote_mcu_slots.clone().try_acquire_owned() else {
            let e = err(
                error::TOO_MANY_REQUESTS,
                "Too many MCU requests from other processes, try again.",
            );
            return self
                .deliver_anywhere(&sender, &crate::api::server::error_frame(id.as_deref(), &e));
        };
        let hub = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let payload = Value::Object(c.data.payload.clone().unwrap_or_default());
            let r = match c.data.kind {
                McuKind::RequestOffer => {
                    let deliver = |ssid: &str, offer: &Value| {
                        let f = reply_frame(&target, None, &sender, "offer", stream, offer, ssid);
                        hub.deliver_anywhere(&sender, &f);
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
                McuKind::SelectStream => {
                    mcu.select_stream(&sender, &target, stream, &payload).await
                }
                _ => Ok(()),
            };
            if let Err(e) = r {
                tracing::info!(session = %sender, publisher = %target, "MCU message from another process failed: {e}");
                hub.deliver_anywhere(
                    &sender,
                    &crate::api::server::error_frame(id.as_deref(), &mcu_error(&e)),
                );
            }
        });
    }
}
