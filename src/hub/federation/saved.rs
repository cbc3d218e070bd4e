//! A federation link across a restart: what the link needs to resume its
//! session on B — the target, the rooms, the client's features and B's
//! session and resume ids — kept in the state file (`statefile.rs`) or
//! handed to the process that takes the session in a rolling restart
//! (`cluster/handover.rs`). The stopping process ends its link without a
//! `bye` or a leave, so B keeps the session for its resume window; the
//! next start (or the taker) starts the link again as one that lost its
//! connection: its first connection resumes on B (`federation_resumed`),
//! and when B forgot the session it joins anew as the reconnect path does.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{FedLink, Target};
use crate::api::client::RoomFederation;
use crate::hub::{Hub, State};

/// What a link needs to go on elsewhere (also its state shared between
/// the hub's handle and the task, which updates it).
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct SavedLink {
    /// `federation.signaling`, `federation.url` and `federation.token` as
    /// the client sent them (checked again when the link is restored).
    pub signaling: String,
    pub url: String,
    pub token: String,
    /// The room on B and here.
    pub remote_room: String,
    pub local_room: String,
    /// The client's Nextcloud session id.
    pub nc_session: String,
    /// The client's hello features (forwarded to B).
    pub features: Vec<String>,
    /// The client's own Nextcloud (for actor and mention rewrites).
    pub local_url: String,
    /// B's session id (R) and resume id.
    pub remote_sid: Option<String>,
    pub resume_id: Option<String>,
    /// B had confirmed the join.
    #[serde(default)]
    pub joined: bool,
}

impl SavedLink {
    /// The checked target of the link (None: not a valid one).
    pub(super) fn target(&self) -> Option<Target> {
        let f = RoomFederation {
            signaling: self.signaling.clone(),
            url: self.url.clone(),
            roomid: self.remote_room.clone(),
            token: self.token.clone(),
        };
        Target::parse(&f, &self.local_room)
    }
}

impl FedLink {
    /// What a restart or a taker needs to resume this link; None when B
    /// never gave it a session (there is nothing to resume).
    pub(crate) fn saved(&self) -> Option<SavedLink> {
        let mut s = self.share.lock().unwrap_or_else(|p| p.into_inner()).clone();
        s.joined = self.joined();
        s.resume_id.is_some().then_some(s)
    }

    /// True when the link can go on elsewhere (see [`FedLink::saved`]).
    pub(crate) fn resumable(&self) -> bool {
        self.share
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .resume_id
            .is_some()
    }

    /// Ends the link task without a `bye` or a leave towards B: B keeps
    /// the session for its resume window, for the next start or the taker
    /// to resume. Call [`FedLink::saved`] after it (the task no longer
    /// changes what it holds once it sees this).
    pub(crate) fn keep_for_restart(&self) {
        self.kept.store(true, Ordering::Release);
        self.cancel.cancel();
    }
}

impl Hub {
    /// Starts a saved link again for session `sid`: as a link that lost
    /// its connection, its first connection resumes on B. None when the
    /// saved target is not valid.
    pub(crate) fn resume_federation(
        self: &Arc<Self>,
        sid: &Arc<str>,
        saved: SavedLink,
    ) -> Option<FedLink> {
        let target = saved.target()?;
        Some(self.spawn_link(sid, None, target, saved, false))
    }
}

impl State {
    /// Gives restored or taken-over session `sid` its link again; a link
    /// that cannot be started ends the session (as a kept link never did
    /// before).
    pub(crate) fn relink(&mut self, sid: &str, saved: SavedLink) {
        let Some(sid) = self.sessions.map.get_key_value(sid).map(|(k, _)| k.clone()) else {
            return;
        };
        let sid = &sid;
        let link = self
            .hub
            .upgrade()
            .and_then(|hub| hub.resume_federation(sid, saved));
        match (link, self.sessions.map.get_mut(sid)) {
            (Some(link), Some(s)) => {
                tracing::info!(session = %sid, "federation link kept, resuming on the remote server");
                s.fed_link = Some(Box::new(link));
            }
            (None, Some(_)) => {
                tracing::warn!(session = %sid, "federation link not valid, the session ends");
                self.end_session(sid, None);
            }
            _ => {}
        }
    }
}
