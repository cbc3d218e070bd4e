//! Background work of the hub: one timer for transient-data TTLs and resume
//! expiry, and the periodic `ping` telling Nextcloud who is still here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::session::SessionKind;
use super::{Hub, State};
use crate::api::backend::{PingEntry, PingRequest};

/// How often disconnected sessions are checked for resume expiry.
const EXPIRY_TICK: Duration = Duration::from_millis(500);

/// Pings of one backend: (url, base, secret) and entries per room.
struct BackendPings {
    url: Arc<str>,
    base: Arc<str>,
    secret: Vec<u8>,
    rooms: BTreeMap<Arc<str>, Vec<PingEntry>>,
}

impl Hub {
    /// Starts the background tasks; they stop when `cancel` fires.
    pub fn spawn_tasks(self: &Arc<Self>, cancel: CancellationToken) {
        let hub = self.clone();
        let c = cancel.clone();
        tokio::spawn(async move { hub.timer_loop(c).await });
        let hub = self.clone();
        tokio::spawn(async move { hub.ping_loop(cancel).await });
    }

    pub(crate) async fn timer_loop(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let now = Instant::now();
            let next_ttl = self.lock().expire_transient(now);
            self.expire_sessions(now);
            let mut wake = now + EXPIRY_TICK;
            if let Some(t) = next_ttl {
                wake = wake.min(t);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
                _ = self.timer.notified() => {}
            }
        }
    }

    async fn ping_loop(self: Arc<Self>, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(self.config.limits.backend_ping_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = interval.tick() => {}
            }
            self.ping_backends().await;
        }
    }

    /// Sends one round of `ping` requests: per room, or batched across the
    /// rooms of a backend when its capabilities carry `session-ping-limit`.
    pub async fn ping_backends(&self) {
        let by_backend = self.lock().pings();
        for (_, p) in by_backend {
            // Fetched (and cached) when needed, not only after a hello v2.
            let limit = self
                .caps
                .get(&self.client, &p.base, false)
                .await
                .ok()
                .and_then(|c| c.session_ping_limit);
            let requests: Vec<(String, Vec<PingEntry>)> = match limit {
                Some(limit) => {
                    let all: Vec<PingEntry> = p.rooms.into_values().flatten().collect();
                    all.chunks(limit)
                        .map(|c| (String::new(), c.to_vec()))
                        .collect()
                }
                None => p
                    .rooms
                    .into_iter()
                    .map(|(room, e)| (room.to_string(), e))
                    .collect(),
            };
            for (room, entries) in requests {
                let req = PingRequest {
                    version: "1.0",
                    roomid: &room,
                    entries: &entries,
                };
                if let Err(e) = self
                    .client
                    .post(&p.url, &p.base, &p.secret, "ping", &req)
                    .await
                {
                    tracing::warn!(room = ?room, "ping request failed: {e}");
                }
            }
        }
    }
}

impl State {
    /// Who to report alive to Nextcloud, per backend and room: the client
    /// and virtual sessions of each local room, and the sessions in federated rooms
    /// (their own Nextcloud still wants to hear that they are alive).
    fn pings(&self) -> BTreeMap<Arc<str>, BackendPings> {
        let mut by_backend: BTreeMap<Arc<str>, BackendPings> = BTreeMap::new();
        for (key, room) in self.rooms.iter() {
            let entries: Vec<PingEntry> = room
                .members
                .iter()
                .filter_map(|m| self.sessions.map.get(m))
                // Virtual sessions too, as the Go server does: Nextcloud
                // knows them by their session id (`session` `add`).
                .filter(|s| s.kind == SessionKind::Client || s.is_virtual())
                .filter_map(|s| {
                    s.room_session_id.as_ref().map(|rs| PingEntry {
                        sessionid: rs.to_string(),
                        userid: s.user_id.as_deref().map(str::to_string),
                    })
                })
                .collect();
            if entries.is_empty() {
                continue;
            }
            let Some(secret) = room
                .members
                .iter()
                .find_map(|m| self.sessions.map.get(m))
                .map(|s| s.backend.secret.clone())
            else {
                continue;
            };
            by_backend
                .entry(key.backend.clone())
                .or_insert_with(|| BackendPings {
                    url: room.backend_url.clone(),
                    base: room.backend_base.clone(),
                    secret,
                    rooms: BTreeMap::new(),
                })
                .rooms
                .insert(key.room.clone(), entries);
        }
        // Sessions in federated rooms: their own Nextcloud still wants
        // to hear that they are alive (under the local room id), as the Go
        // server does: only once the remote server accepted the session
        // (here: confirmed its join), with the authenticated user id and
        // the Nextcloud session id of the join (else the session's id).
        for s in self.sessions.map.values() {
            let Some(link) = s.fed_link.as_ref().filter(|l| l.joined()) else {
                continue;
            };
            let nc_session = if link.nc_session.is_empty() {
                s.id.to_string()
            } else {
                link.nc_session.to_string()
            };
            by_backend
                .entry(s.backend.id.clone())
                .or_insert_with(|| BackendPings {
                    url: s.backend_url.clone(),
                    base: s.backend_base.clone(),
                    secret: s.backend.secret.clone(),
                    rooms: BTreeMap::new(),
                })
                .rooms
                .entry(link.local_room.clone())
                .or_default()
                .push(PingEntry {
                    sessionid: nc_session,
                    userid: s.user_id.as_deref().map(str::to_string),
                });
        }
        by_backend
    }
}
