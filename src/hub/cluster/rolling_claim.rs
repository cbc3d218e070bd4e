//! Media through a rolling restart without a gap (`[mcu] type = janus`):
//! before handing its sessions over (`rolling.rs`), the stopping process
//! A sends what its Janus session(s) serve ([`crate::mcu::SavedMcu`]) to
//! one successor C (the first other process by id), which claims those
//! sessions on its own Janus connection and serves A's publishers and
//! subscribers on their handles (`mcu/direct/adopt.rs`); A then leaves
//! its Janus session alive (a last keepalive, no `destroy`).
//!
//! - Every session with a publisher C now serves is handed to C: its own
//!   MCU messages reach C's MCU, and those of its subscribers on other
//!   processes travel to the publisher's process (`hub/mcu_cluster.rs`),
//!   which is C once C's `Changed` is known. Subscribers may go anywhere.
//! - Where C claimed nothing (it did not answer in time, Janus no longer
//!   had the session, another Janus), the clients renegotiate as before
//!   (`rolling_media.rs`), for the objects of the sessions not claimed.
//! - A session with publishers that later moves on to another process
//!   (claimed from its holder, `handover.rs`) renegotiates there:
//!   [`State::renegotiate_moving`].
//! - From the moment A composed its `SavedMcu`, its MCU makes no new
//!   publisher or subscriber (`McuError::HandedOver`, an error with the
//!   request's id): C would not serve it. A client refused a publisher
//!   gets the hint of the renegotiation path (`unshareScreen` for the
//!   stream, its room's participants) with its hand-over
//!   ([`Hub::publish_elsewhere`]), and publishes again where it resumes.
//!   Where C claimed nothing, A makes them again (they are renegotiated).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::rolling_media::unshare_screen;
use crate::bus::{encode, process_subject, Bus, Header};
use crate::hub::session::Session;
use crate::hub::{Hub, State};
use crate::mcu::StreamType;

/// How long the successor may take to claim the Janus session(s): one
/// round trip to Janus per session. A process of the previous release
/// does not answer: its clients renegotiate.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(3);

impl Hub {
    /// Asks process `to` to claim this process's Janus session(s); returns
    /// the sessions it claimed (then kept alive on the way out).
    pub(super) async fn hand_mcu_over(&self, bus: &Arc<dyn Bus>, to: &str) -> Vec<u64> {
        let Some(mcu) = self.mcu.get().cloned() else {
            return Vec::new();
        };
        let Some(saved) = mcu.hand_over() else {
            mcu.hand_over_failed();
            return Vec::new();
        };
        let h = Header::McuAdopt {
            from: bus.pid().to_string(),
        };
        let body = serde_json::to_vec(&saved).unwrap_or_default();
        let replies = bus
            .request(
                process_subject(to),
                encode(&h, Some(&body)),
                1,
                ADOPT_TIMEOUT,
            )
            .await;
        let claimed: Vec<u64> = replies
            .first()
            .and_then(|r| serde_json::from_slice(r).ok())
            .unwrap_or_default();
        if claimed.is_empty() {
            mcu.hand_over_failed();
            tracing::warn!(process = %to, "no process took this process's Janus session, media clients renegotiate");
        } else {
            tracing::info!(process = %to, sessions = ?claimed, "Janus session(s) taken over by another process");
            mcu.keep_for_restart();
        }
        claimed
    }

    /// The new publisher (`stream`, offer sid `psid`) of session `sid` was
    /// refused because this process handed its media over: its client is
    /// told what the renegotiation path tells a publisher that is lost,
    /// `unshareScreen` and its room's participants (the Talk client then
    /// publishes anew), with its hand-over so that it does so on its new
    /// process; when it is gone already, `unshareScreen` goes after it.
    pub(in crate::hub) fn publish_elsewhere(&self, sid: &Arc<str>, stream: StreamType, psid: &str) {
        let mut st = self.lock();
        let f = unshare_screen(sid, sid, stream, psid);
        let Some(s) = st.sessions.map.get(sid) else {
            st.send_to_remote_session(sid, &f, None);
            return;
        };
        let update = s
            .room
            .clone()
            .and_then(|k| st.participants_frame(&k, &[], None));
        let queued = st
            .cluster
            .refused_publishing
            .entry(sid.clone())
            .or_default();
        queued.push(f);
        queued.extend(update);
    }

    /// A stopping process's Janus publishers and subscribers, to serve
    /// here by claiming its Janus session(s); answered with the sessions
    /// claimed.
    pub(super) fn adopt_mcu(self: &Arc<Self>, body: &Bytes, reply: String) {
        let saved: Option<crate::mcu::SavedMcu> = serde_json::from_slice(body).ok();
        let hub = self.clone();
        tokio::spawn(async move {
            let claimed = match (hub.mcu.get().cloned(), saved) {
                (Some(m), Some(saved)) => m.adopt(saved).await,
                _ => Vec::new(),
            };
            let bus = hub.lock().bus.clone();
            bus.reply(
                reply,
                Bytes::from(serde_json::to_vec(&claimed).unwrap_or_default()),
            );
        });
    }
}

impl State {
    /// The sessions with a publisher on the Janus sessions `claimed` by
    /// the successor: they are handed to it.
    pub(super) fn served_by_successor(&self, claimed: &[u64]) -> HashSet<Arc<str>> {
        let Some(m) = &self.mcu else {
            return HashSet::new();
        };
        if claimed.is_empty() {
            return HashSet::new();
        }
        let rest: HashSet<Arc<str>> = m
            .served_except(claimed)
            .publishers
            .into_iter()
            .map(|p| p.0)
            .collect();
        m.served()
            .publishers
            .into_iter()
            .map(|p| p.0)
            .filter(|s| !rest.contains(s))
            .collect()
    }

    /// Session `s` (taken out of this process) publishes here and moves
    /// on to another process: its publishers close; its client finds
    /// `unshareScreen` for each and its room's participants in its queue
    /// (Talk publishes anew), each subscriber gets `unshareScreen` from it
    /// now; returns those subscribers, to be offered its new stream where
    /// it publishes again (`SavedSession::resubscribe`).
    pub(super) fn renegotiate_moving(&mut self, s: &mut Session) -> Vec<(String, String)> {
        let Some(m) = self.mcu.clone() else {
            return Vec::new();
        };
        let served = m.served_of(&s.id);
        if served.publishers.is_empty() {
            return Vec::new();
        }
        for (me, stream, sid) in &served.publishers {
            let f = unshare_screen(me, me, *stream, sid);
            s.queue.push_back(f);
        }
        let update = s
            .room
            .as_ref()
            .and_then(|k| self.participants_frame(k, &[], None));
        s.queue.extend(update);
        let mut resubscribe = Vec::new();
        for ((sub, publisher, stream), sid) in &served.subscribers {
            let f = unshare_screen(publisher, sub, *stream, sid);
            if self.sessions.map.contains_key(sub) {
                self.sessions.deliver(sub, &f);
            } else {
                self.send_to_remote_session(sub, &f, None);
            }
            resubscribe.push((sub.to_string(), stream.as_str().to_string()));
        }
        tracing::info!(session = %s.id, subscribers = resubscribe.len(), "publishing session moves to another process, its clients renegotiate");
        m.close_publishers(&s.id);
        resubscribe
    }
}
