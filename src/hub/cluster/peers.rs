//! The other processes: this one announces itself (heartbeats, discovery,
//! goodbye) and notices those that went away (their sessions leave).

use std::sync::Arc;

use bytes::Bytes;
use tokio::time::Instant;

use super::{DISCOVERY_WINDOW, PROCESS_TIMEOUT};
use crate::bus::{decode, encode, Header, MemberInfo, MemberKind, BUS_VERSION, SUBJECT_ALL};
use crate::hub::room::RoomKey;
use crate::hub::{Hub, State};

impl State {
    /// This process's heartbeat: its id and client sessions per backend.
    pub(crate) fn heartbeat_message(&self) -> Bytes {
        let counts = self
            .sessions
            .counts
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let h = Header::Heartbeat {
            from: self.bus.pid().to_string(),
            counts,
            version: BUS_VERSION,
        };
        encode(&h, None)
    }
}

impl Hub {
    /// Tells the other processes this one stops: they treat its sessions as
    /// gone at once instead of after the process timeout.
    pub async fn goodbye(&self) {
        let bus = {
            let st = self.lock();
            if !st.bus.clustered() {
                return;
            }
            let h = Header::Goodbye {
                from: st.bus.pid().to_string(),
            };
            st.bus.publish(SUBJECT_ALL.to_string(), encode(&h, None));
            st.bus.clone()
        };
        bus.flush().await;
    }

    /// Learns the other processes before serving clients: every process
    /// answers a `Discover` request with its heartbeat. Of two processes
    /// starting at once, at least one subscribed before the other asked, so
    /// both know each other afterwards (the answer tells the asker).
    pub async fn discover_peers(&self) {
        let bus = {
            let st = self.lock();
            if !st.bus.clustered() {
                return;
            }
            st.bus.clone()
        };
        let h = Header::Discover {
            from: bus.pid().to_string(),
            version: BUS_VERSION,
        };
        let replies = bus
            .request(
                SUBJECT_ALL.to_string(),
                encode(&h, None),
                usize::MAX,
                DISCOVERY_WINDOW,
            )
            .await;
        let mut st = self.lock();
        for r in replies {
            if let Some((
                Header::Heartbeat {
                    from,
                    counts,
                    version,
                },
                _,
            )) = decode(&r)
            {
                if from != bus.pid() {
                    st.heard(from, counts, version);
                }
            }
        }
        tracing::info!(
            peers = st.cluster.processes.len(),
            "cluster peers discovered"
        );
    }

    pub(super) fn heartbeat(&self) {
        let mut st = self.lock();
        st.bus
            .publish(SUBJECT_ALL.to_string(), st.heartbeat_message());
        // Processes that went silent: their sessions are gone.
        let now = Instant::now();
        let dead: Vec<String> = st
            .cluster
            .processes
            .iter()
            .filter(|(_, p)| now.duration_since(p.last_seen) > PROCESS_TIMEOUT)
            .map(|(pid, _)| pid.clone())
            .collect();
        for pid in dead {
            tracing::warn!(process = %pid, "process went silent, its sessions leave");
            st.cluster.processes.remove(&pid);
            self.process_gone(&mut st, &pid);
        }
        st.follow_versions();
        let keep = st.sessions.limits.resume_timeout * 2;
        st.cluster
            .moved
            .retain(|_, (_, at)| now.duration_since(*at) < keep);
        st.cluster
            .moved_resume
            .retain(|_, m| now.duration_since(m.at) < keep);
        st.sweep_arrivals(now);
    }

    pub(super) fn process_gone(&self, st: &mut State, pid: &str) {
        let gone: Vec<(Arc<str>, RoomKey, MemberInfo)> = st
            .cluster
            .remote
            .iter()
            // A session on its way here is not gone with its holder.
            .filter(|(sid, r)| r.info.owner == pid && !st.sessions.arriving.contains_key(*sid))
            .map(|(sid, r)| (sid.clone(), r.room.clone(), r.info.clone()))
            .collect();
        // The process with the smallest id among the survivors tells
        // Nextcloud, so it is told once.
        let leader = st
            .cluster
            .processes
            .keys()
            .all(|p| p.as_str() > st.bus.pid());
        for (sid, key, info) in gone {
            st.remove_remote(&key, &sid);
            if leader && info.kind == MemberKind::Client {
                if let (Some(rs), Some(b)) =
                    (info.roomsessionid, self.registry().by_id(&key.backend))
                {
                    let (url, base) = self.room_urls(&key);
                    st.effects.push(crate::hub::Effect::Left {
                        to: crate::hub::Nextcloud {
                            url,
                            base,
                            secret: b.secret.clone(),
                        },
                        room: key.room.clone(),
                        user_id: info.userid.as_deref().map(Arc::from),
                        room_session_id: rs.as_str().into(),
                        // As the leave its own process would have sent.
                        actor: info.actor,
                    });
                }
            }
            st.drop_room_if_unserved(&key);
        }
    }
}
