//! Janus sessions of other processes served on this connection: in a
//! rolling restart the stopping process leaves its Janus session alive and
//! one successor claims it (`hub/cluster/rolling_claim.rs`), so the
//! handles of its publishers and subscribers, and their media, go on.
//!
//! One WebSocket may hold several Janus sessions. A request on a handle of
//! a claimed session carries that session's id (Janus finds handles within
//! their session, and accepts a session's requests from any transport);
//! its events arrive here once claimed (Janus sends a session's events to
//! the transport that claimed it last). Each claimed session gets the
//! keepalives of the connection, is destroyed once its last handle is
//! detached, and on the way out is kept (a restart) or destroyed as the
//! connection's own session is.

use serde_json::{json, Value};

use super::{lock, Gateway, JanusError};

impl Gateway {
    /// The claimed session a handle belongs to (None: the connection's
    /// own session, or unknown).
    pub(super) fn extra_session_of(&self, handle: u64) -> Option<u64> {
        lock(&self.shared.extra).get(&handle).copied()
    }

    /// The Janus session of `handle`: the one it was claimed with, else
    /// the connection's own.
    pub fn session_of(&self, handle: u64) -> u64 {
        self.extra_session_of(handle)
            .unwrap_or_else(|| self.session_id())
    }

    /// Requests on `handles` go to Janus session `session` from now on
    /// (before [`Gateway::claim_extra`], so no event of theirs is missed).
    pub fn adopt_handles(&self, session: u64, handles: &[u64]) {
        let mut extra = lock(&self.shared.extra);
        for h in handles {
            extra.insert(*h, session);
        }
    }

    /// Forgets the handles of `session` (its claim failed, or it is gone).
    pub fn drop_extra(&self, session: u64) {
        lock(&self.shared.extra).retain(|_, s| *s != session);
    }

    /// Claims Janus session `session` (of another process) on this
    /// connection: its handles' events come here from now on.
    pub async fn claim_extra(&self, session: u64) -> Result<(), JanusError> {
        self.request(json!({"janus": "claim", "session_id": session}), false)
            .await
            .map(|_| ())
    }

    fn extra_sessions(&self) -> Vec<u64> {
        let mut v: Vec<u64> = lock(&self.shared.extra).values().copied().collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// A keepalive for each claimed session; one Janus no longer has is
    /// forgotten.
    pub(super) async fn keep_extra_alive(&self) {
        for session in self.extra_sessions() {
            let r = self
                .request(json!({"janus": "keepalive", "session_id": session}), false)
                .await;
            if let Err(e @ JanusError::Janus { .. }) = r {
                tracing::warn!(session, "claimed Janus session lost ({e})");
                self.drop_extra(session);
            }
        }
    }

    /// The last message for each claimed session on the way out: a
    /// keepalive when the sessions are kept for a restart, else `destroy`.
    pub(super) fn last_for_extra(&self) -> Vec<String> {
        let keep = self.shared.keep.load(std::sync::atomic::Ordering::Relaxed);
        let kind = if keep { "keepalive" } else { "destroy" };
        self.extra_sessions()
            .into_iter()
            .map(|session| {
                let m: Value = json!({"janus": kind, "session_id": session, "transaction": "bye"});
                m.to_string()
            })
            .collect()
    }

    /// `handle` was detached: a claimed session left without handles is
    /// destroyed.
    pub(super) async fn release_extra(&self, handle: u64) {
        let gone = {
            let mut extra = lock(&self.shared.extra);
            match extra.remove(&handle) {
                Some(session) if !extra.values().any(|s| *s == session) => Some(session),
                _ => None,
            }
        };
        if let Some(session) = gone {
            tracing::info!(
                session,
                "last handle of a claimed Janus session gone, destroying it"
            );
            let _ = self
                .request(json!({"janus": "destroy", "session_id": session}), false)
                .await;
        }
    }
}
