//! A rolling restart: SIGTERM on a process while others are alive. Its
//! client sessions are handed to the others (spread over them) before it
//! goes: each taker prepares the rooms, gets the sessions (`handover.rs`,
//! each after a `Changed` on its room's subject) and keeps them as after a
//! dropped connection; the clients are closed with 1012 and resume on any
//! process. A session no process took ends as before (Nextcloud is told).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use super::{HANDOVER_TIMEOUT, SNAPSHOT_TIMEOUT};
use crate::bus::{encode, process_subject, Header, ParkEntry};
use crate::hub::federation::SavedLink;
use crate::hub::outbox::CloseReason;
use crate::hub::session::{Session, SessionKind};
use crate::hub::{Hub, State};

/// How long a taker may take to prepare the rooms.
const PARK_TIMEOUT: Duration = SNAPSHOT_TIMEOUT.saturating_add(HANDOVER_TIMEOUT);

impl State {
    /// The client and internal sessions to hand over, spread over `peers`
    /// in turn but those in `pinned`, which go to the first (the successor
    /// serving their publishers, `rolling_claim.rs`); an internal client's
    /// virtual sessions go with it, after it.
    fn plan_hand_over(
        &self,
        peers: &[String],
        pinned: &HashSet<Arc<str>>,
    ) -> BTreeMap<String, Vec<ParkEntry>> {
        let mut ids: Vec<&Arc<str>> = self.sessions.map.keys().collect();
        ids.sort();
        let mut plan: BTreeMap<String, Vec<ParkEntry>> = BTreeMap::new();
        let mut n = 0;
        for sid in ids {
            let s = &self.sessions.map[sid];
            // A federated room's link goes with its session when the
            // remote server gave it a session to resume, else it dies with
            // the process (as before).
            let movable = matches!(s.kind, SessionKind::Client | SessionKind::Internal);
            if !movable || s.fed_link.as_ref().is_some_and(|l| !l.resumable()) {
                continue;
            }
            let Some(resume_id) = &s.resume_id else {
                continue;
            };
            let to = if pinned.contains(sid) {
                &peers[0]
            } else {
                n += 1;
                &peers[(n - 1) % peers.len()]
            };
            let list = plan.entry(to.clone()).or_default();
            list.push(park_entry(s, resume_id));
            list.extend(self.virtual_entries(s));
        }
        plan
    }

    /// A session handed over that its taker does not hold: here again,
    /// and ended as if it had stayed (its room and Nextcloud are told).
    /// Its federation link stopped without a word to the remote server:
    /// returned, to say goodbye there ([`Hub::federation_farewell`]).
    fn not_taken(&mut self, mut s: Session) -> Option<(Arc<str>, SavedLink)> {
        let id = s.id.clone();
        let farewell = s.fed_link.take().and_then(|l| l.saved());
        let room = s.room.clone();
        let (url, base) = (s.backend_url.clone(), s.backend_base.clone());
        self.cluster.remote.remove(&id);
        self.cluster.moved.remove(&id);
        if let Some(r) = &s.resume_id {
            self.cluster.moved_resume.remove(&**r);
        }
        self.sessions.insert(s);
        if let Some(key) = &room {
            let r = self.rooms.get_or_insert(key, url, base);
            if !r.members.contains(&id) {
                r.members.push(id.clone());
            }
        }
        tracing::warn!(session = %id, "no process took the session, it ends");
        self.end_session(&id, None);
        farewell.map(|saved| (id, saved))
    }
}

/// What a taker needs to expect a session (`resume_id` is empty for a
/// virtual session).
pub(super) fn park_entry(s: &Session, resume_id: &str) -> ParkEntry {
    ParkEntry {
        sid: s.id.to_string(),
        resume_id: resume_id.to_string(),
        backend: s.backend.id.to_string(),
        room: s.room.as_ref().map(|k| k.room.to_string()),
        resubscribe: Vec::new(),
    }
}

impl State {
    /// The virtual sessions of internal client `s`, to move with it.
    pub(super) fn virtual_entries(&self, s: &Session) -> Vec<ParkEntry> {
        let mut v: Vec<ParkEntry> = s
            .virtuals
            .values()
            .filter_map(|vsid| self.sessions.map.get(vsid))
            .map(|v| park_entry(v, ""))
            .collect();
        v.sort_by(|a, b| a.sid.cmp(&b.sid));
        v
    }
}

impl Hub {
    /// SIGTERM in a cluster: hands the client sessions to the other live
    /// processes and closes their connections with 1012. False when no
    /// other process is known (the sessions end as before).
    pub async fn hand_over_all(self: &Arc<Self>) -> bool {
        let (bus, peers) = {
            let st = self.lock();
            if !st.bus.clustered() {
                return false;
            }
            let mut peers: Vec<String> = st.cluster.processes.keys().cloned().collect();
            if peers.is_empty() {
                return false;
            }
            peers.sort();
            (st.bus.clone(), peers)
        };
        // The first other process claims the Janus session(s) here.
        let claimed = self.hand_mcu_over(&bus, &peers[0]).await;
        let (plan, mut media) = {
            let st = self.lock();
            let pinned = st.served_by_successor(&claimed);
            let mut plan = st.plan_hand_over(&peers, &pinned);
            let media = st.plan_renegotiation(&mut plan, &claimed);
            (plan, media)
        };
        let me = bus.pid().to_string();
        let total: usize = plan.values().map(Vec::len).sum();
        tracing::info!(
            sessions = total,
            processes = plan.len(),
            "handing the sessions to the other processes"
        );
        // Each taker prepares the rooms first: what is published in them
        // from then on reaches it.
        let asks = plan.into_iter().map(|(pid, list)| {
            let (bus, me) = (bus.clone(), me.clone());
            async move {
                let h = Header::Park {
                    from: me,
                    sessions: list.clone(),
                };
                let replies = bus
                    .request(process_subject(&pid), encode(&h, None), 1, PARK_TIMEOUT)
                    .await;
                // (An empty reply is NATS's "no responders".)
                (pid, list, replies.iter().any(|r| !r.is_empty()))
            }
        });
        let answered = futures_util::future::join_all(asks).await;
        // Their federation links hand back what they held first.
        let stopping = {
            let st = self.lock();
            let sids = answered.iter().filter(|(_, _, ok)| *ok);
            st.stop_links(sids.flat_map(|(_, list, _)| list.iter().map(|e| e.sid.as_str())))
        };
        crate::hub::federation::handed_back(stopping).await;
        let mut handed: Vec<(String, Vec<Session>)> = Vec::new();
        {
            let mut st = self.lock();
            for (pid, list, ok) in answered {
                if !ok {
                    tracing::warn!(process = %pid, sessions = list.len(), "process did not answer, its share of the sessions ends here");
                    continue;
                }
                let taken = list
                    .iter()
                    .filter_map(|e| {
                        let mut extra = media.queued.remove(e.sid.as_str()).unwrap_or_default();
                        let refused = st.cluster.refused_publishing.remove(e.sid.as_str());
                        extra.extend(refused.unwrap_or_default());
                        let s = st.hand_over_parts_with(&e.sid, &pid, CloseReason::Restart, extra);
                        if s.is_none() {
                            st.relink_stopped(&e.sid);
                        }
                        s
                    })
                    .collect();
                handed.push((pid, taken));
            }
        }
        bus.flush().await;
        // Which sessions each taker holds now.
        let mut farewells = Vec::new();
        for (pid, sessions) in handed {
            let h = Header::Parked {
                from: me.clone(),
                sids: sessions.iter().map(|s| s.id.to_string()).collect(),
            };
            let replies = bus
                .request(process_subject(&pid), encode(&h, None), 1, HANDOVER_TIMEOUT)
                .await;
            let held: Vec<String> = replies
                .first()
                .and_then(|r| serde_json::from_slice(r).ok())
                .unwrap_or_default();
            let mut st = self.lock();
            for s in sessions {
                if !held.iter().any(|h| **h == *s.id) {
                    farewells.extend(st.not_taken(s));
                }
            }
        }
        // The remote servers of their federation links hear the end at
        // once (within the links' deadlines), before this process goes.
        let byes = farewells
            .into_iter()
            .map(|(sid, saved)| self.federation_farewell(sid, saved));
        let limit = self.config.federation.timeout * 3;
        let _ = tokio::time::timeout(limit, futures_util::future::join_all(byes)).await;
        // Subscribers elsewhere of the publishers lost here.
        let st = self.lock();
        for (to, f) in &media.remote {
            st.send_to_remote_session(to, f, None);
        }
        true
    }
}
