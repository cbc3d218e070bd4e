//! A federation link across a restart: what the link needs to resume its
//! session on B — the target, the rooms, the client's features and B's
//! session and resume ids, the client messages it held while B was
//! unreachable and the requests it had not taken yet — kept in the state
//! file (`statefile.rs`) or handed to the process that takes the session
//! in a rolling restart (`cluster/handover.rs`).
//!
//! Before the session is saved or taken out, its link is stopped
//! ([`FedLink::stop`]) and the saver awaits the hand-back
//! ([`handed_back`], bounded): the task stops taking requests and
//! reading B, lets a write under way finish, closes its connection
//! without a `bye` or a leave (so B keeps the session for its resume
//! window) and delivers what B sent before its close answer to the
//! session, then hands back its queue, its request ids and its channel.
//! The next start (or the taker) starts the link again as one that lost
//! its connection: the requests carried are handled as if they came
//! while B was unreachable, its first connection resumes on B
//! (`federation_resumed`) and sends what was held, in order; when B forgot
//! the session it joins anew as the reconnect path does. A session handed
//! over that no process took ends with a `bye` to B
//! ([`Hub::federation_farewell`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::link::{Link, Ws};
use super::{FedCmd, FedLink, Target, HAND_BACK, STOP_GRACE};
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
    /// Client messages for B (rewritten for it) the link held while B was
    /// unreachable, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queue: Vec<String>,
    /// Requests the link had not taken from its channel, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<SavedCmd>,
    /// Request id of the join or leave B had not answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<String>,
    /// A join asked while B was unreachable, to send after the resume.
    #[serde(default)]
    pub rejoin: bool,
    /// The session was leaving the room.
    #[serde(default)]
    pub leaving: bool,
}

/// A request a stopped link had not taken (see [`FedCmd`]).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SavedCmd {
    Join {
        id: Option<String>,
        local_room: String,
        remote_room: String,
        nc_session: String,
    },
    Leave {
        id: Option<String>,
    },
    /// The client's message as JSON text.
    Forward(String),
}

impl From<FedCmd> for SavedCmd {
    fn from(cmd: FedCmd) -> SavedCmd {
        match cmd {
            FedCmd::Join {
                id,
                local_room,
                remote_room,
                nc_session,
            } => SavedCmd::Join {
                id,
                local_room,
                remote_room,
                nc_session,
            },
            FedCmd::Leave { id } => SavedCmd::Leave { id },
            FedCmd::Forward(v, _) => SavedCmd::Forward(v.to_string()),
        }
    }
}

impl SavedCmd {
    /// The request again (None: a message that is not JSON any more).
    fn command(self) -> Option<FedCmd> {
        Some(match self {
            SavedCmd::Join {
                id,
                local_room,
                remote_room,
                nc_session,
            } => FedCmd::Join {
                id,
                local_room,
                remote_room,
                nc_session,
            },
            SavedCmd::Leave { id } => FedCmd::Leave { id },
            SavedCmd::Forward(text) => {
                let bytes = text.len();
                FedCmd::Forward(serde_json::from_str(&text).ok()?, bytes)
            }
        })
    }
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
    /// never gave it a session (there is nothing to resume). The requests
    /// in the channel a stopped task handed back go with it.
    pub(crate) fn saved(&self) -> Option<SavedLink> {
        let mut share = self.share.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((rx, _)) = self.back.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            while let Ok(cmd) = rx.try_recv() {
                self.sender.queued.fetch_sub(cmd.bytes(), Ordering::AcqRel);
                share.commands.push(cmd.into());
            }
        }
        let mut s = share.clone();
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

    /// Stops the link task for a restart or a taker, without a `bye` or a
    /// leave towards B: B keeps the session for its resume window. The
    /// token is cancelled once the task has handed back what it held
    /// (see the module); call [`FedLink::saved`] after that.
    pub(crate) fn stop(&self) -> CancellationToken {
        self.kept.store(true, Ordering::Release);
        self.cancel.cancel();
        self.handed.clone()
    }

    /// True once [`FedLink::stop`] was called.
    pub(crate) fn stopped(&self) -> bool {
        self.kept.load(Ordering::Acquire)
    }
}

/// Waits until the stopped links handed back what they held, at most
/// [`HAND_BACK`] (a link late to answer is saved with what it had shared;
/// logged).
pub(crate) async fn handed_back(tokens: Vec<CancellationToken>) {
    let all = futures_util::future::join_all(tokens.iter().map(|t| t.cancelled()));
    if tokio::time::timeout(HAND_BACK, all).await.is_err() {
        tracing::warn!("a federation link did not hand back its messages in time, they are lost");
    }
}

impl Link {
    /// The state a restored link starts from: the messages, request ids
    /// and requests the stopped link held; returns the requests.
    pub(super) fn carry(&mut self, saved: SavedLink) -> Vec<FedCmd> {
        for text in saved.queue {
            if let Ok(v) = serde_json::from_str::<Value>(&text) {
                self.queue_bytes += text.len();
                self.queue.push((v, text.len()));
            }
        }
        if saved.pending.is_some() {
            self.pending = saved.pending;
        }
        self.rejoin = saved.rejoin;
        self.leaving = saved.leaving;
        saved
            .commands
            .into_iter()
            .filter_map(SavedCmd::command)
            .collect()
    }

    /// A stopped link's connection: closed, delivering to the session
    /// what B sent before its close answer (B keeps what comes after for
    /// the resume), within [`STOP_GRACE`].
    pub(super) async fn close_reading(&mut self, ws: &mut Ws) {
        let _ = tokio::time::timeout(STOP_GRACE, async {
            if futures_util::SinkExt::close(ws).await.is_err() {
                return;
            }
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Text(t) = m {
                    let _ = self.remote_message(t.as_str());
                }
            }
        })
        .await;
    }

    /// A stopped link hands back what it held: its queue and request ids
    /// in the shared state, its channel (with the requests not taken) and
    /// its place in the live links in `back`. The task then ends, which
    /// tells the handle.
    pub(super) fn hand_back(self, rx: mpsc::Receiver<FedCmd>) {
        self.share_state();
        {
            let mut s = self.share.lock().unwrap_or_else(|p| p.into_inner());
            s.queue = self.queue.iter().map(|(m, _)| m.to_string()).collect();
            s.pending.clone_from(&self.pending);
            s.rejoin = self.rejoin;
            s.leaving = self.leaving;
        }
        *self.back.lock().unwrap_or_else(|p| p.into_inner()) = Some((rx, self.live));
    }

    /// Resumes B's session only to say `bye` (B forgot it: nothing to
    /// say), within the link's deadlines.
    pub(super) async fn farewell(mut self) {
        self.farewell = true;
        if let Ok((mut ws, true)) = self.connect().await {
            self.say_bye(&mut ws).await;
        }
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

    /// B's members see at once that session `sid` left: its saved link
    /// resumes B's session and says `bye` (a session handed over that no
    /// process took); done when it did (or could not).
    pub(crate) async fn federation_farewell(self: &Arc<Self>, sid: Arc<str>, saved: SavedLink) {
        let Some(target) = saved.target() else {
            return;
        };
        let (_link, task, _rx) = self.new_link(&sid, None, target, saved);
        task.farewell().await;
    }
}

impl State {
    /// Stops the resumable links of sessions `sids` for a save or a
    /// hand-over; await [`handed_back`] with the tokens before saving.
    pub(crate) fn stop_links<'a>(
        &self,
        sids: impl IntoIterator<Item = &'a str>,
    ) -> Vec<CancellationToken> {
        sids.into_iter()
            .filter_map(|sid| self.sessions.map.get(sid)?.fed_link.as_ref())
            .filter(|l| l.resumable())
            .map(|l| l.stop())
            .collect()
    }

    /// A session whose link was stopped for a hand-over that did not
    /// happen gets its link again (resuming on B, with what it held).
    pub(crate) fn relink_stopped(&mut self, sid: &str) {
        let saved = match self.sessions.map.get(sid).and_then(|s| s.fed_link.as_ref()) {
            Some(l) if l.stopped() => l.saved(),
            _ => return,
        };
        if let Some(saved) = saved {
            self.relink(sid, saved);
        }
    }

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
