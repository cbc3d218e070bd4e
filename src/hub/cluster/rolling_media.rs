//! Media in a rolling restart (`rolling.rs`) where the successor could
//! not claim the stopping process's Janus session (`rolling_claim.rs`):
//! the publishers and subscribers on it die with it. Their
//! clients renegotiate without leaving the call, as after a Janus session
//! lost across a single-process restart (`mcu/direct/restore.rs`):
//! - a publisher's session carries, in its queue, `unshareScreen` for its
//!   own stream and its room's `participants` update (the Talk client ends
//!   its publishing PeerConnection and, in the call without one, publishes
//!   anew once resumed);
//! - a subscriber gets `unshareScreen` from the publisher (its receiving
//!   PeerConnection ends): queued when it is handed over too, sent at once
//!   when it is on another process;
//! - the publisher's hand-over entry names its subscribers
//!   ([`ParkEntry::resubscribe`]): the taking process offers each a new
//!   subscription (new sid) once the publisher publishes there again.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::json;

use crate::api::server::Frame;
use crate::bus::ParkEntry;
use crate::hub::mcu::reply_frame;
use crate::hub::State;
use crate::mcu::StreamType;

/// The frames of a rolling restart for the clients of the lost
/// publishers and subscribers.
#[derive(Default)]
pub(super) struct Renegotiation {
    /// For local sessions, queued as they are handed over.
    pub queued: HashMap<Arc<str>, Vec<Frame>>,
    /// For sessions of other processes, sent once the sessions went.
    pub remote: Vec<(Arc<str>, Frame)>,
}

impl State {
    /// What the clients of this process's publishers and subscribers are
    /// told, but for those on the Janus sessions the successor `claimed`
    /// (`rolling_claim.rs`); fills the publishers' entries of `plan` with
    /// their subscribers.
    pub(super) fn plan_renegotiation(
        &self,
        plan: &mut BTreeMap<String, Vec<ParkEntry>>,
        claimed: &[u64],
    ) -> Renegotiation {
        let mut r = Renegotiation::default();
        let Some(served) = self.mcu.as_ref().map(|m| m.served_except(claimed)) else {
            return r;
        };
        let mut publishing: Vec<Arc<str>> = Vec::new();
        for (session, stream, sid) in &served.publishers {
            if !self.sessions.map.contains_key(session) {
                continue;
            }
            let f = unshare_screen(session, session, *stream, sid);
            r.queued.entry(session.clone()).or_default().push(f);
            if !publishing.contains(session) {
                publishing.push(session.clone());
            }
        }
        // After the last unshareScreen: the room's participants.
        for session in publishing {
            let key = self.sessions.map.get(&session).and_then(|s| s.room.clone());
            if let Some(f) = key.and_then(|k| self.participants_frame(&k, &[], None)) {
                r.queued.entry(session).or_default().push(f);
            }
        }
        for ((sub, publisher, stream), sid) in &served.subscribers {
            let f = unshare_screen(publisher, sub, *stream, sid);
            if self.sessions.map.contains_key(sub) {
                r.queued.entry(sub.clone()).or_default().push(f);
            } else {
                r.remote.push((sub.clone(), f));
            }
            add_resubscribe(plan, publisher, sub, *stream);
        }
        r
    }
}

/// `unshareScreen` from `from` to `to` for the stream `stream` (offer
/// `sid`): its receiver ends that PeerConnection.
pub(super) fn unshare_screen(from: &str, to: &str, stream: StreamType, sid: &str) -> Frame {
    reply_frame(from, None, to, "unshareScreen", stream, &json!({}), sid)
}

/// Names `sub` in the hand-over entry of `publisher`.
fn add_resubscribe(
    plan: &mut BTreeMap<String, Vec<ParkEntry>>,
    publisher: &str,
    sub: &str,
    stream: StreamType,
) {
    let entry = plan
        .values_mut()
        .flat_map(|l| l.iter_mut())
        .find(|e| e.sid == publisher);
    if let Some(e) = entry {
        e.resubscribe
            .push((sub.to_string(), stream.as_str().to_string()));
    }
}
