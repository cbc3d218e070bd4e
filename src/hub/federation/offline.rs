//! What a link keeps while B is unreachable, bounded in messages and in
//! bytes, and what it refuses (each with the request's id) when the
//! bounds are reached or the link ends.

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::link::Link;
use super::{FedCmd, QUEUE_BYTES, QUEUE_LIMIT};
use crate::api::error::{self, ProtocolError};
use crate::api::server::{error_frame, Frame};

impl Link {
    /// A command while B is unreachable.
    pub(super) fn offline(&mut self, cmd: FedCmd) {
        match cmd {
            FedCmd::Forward(v, bytes) => {
                if self.resume_id.is_some() {
                    let v = self.rewrite_to_remote(v);
                    self.keep(v, bytes, false);
                } else {
                    self.unreachable(&v);
                }
            }
            FedCmd::Join {
                id,
                local_room,
                remote_room,
                nc_session,
            } => {
                // This join replaces the room requests still waiting:
                // each is answered now.
                for f in self.left_room_requests(id.as_deref()) {
                    self.hub.federation_deliver(&self.sid, f);
                }
                self.retarget(local_room, remote_room, nc_session);
                self.pending = id;
                self.rejoin = true;
            }
            FedCmd::Leave { id } => {
                // Nothing to leave on B while it is away: a join still
                // waiting is refused, the leave confirmed, the link ends.
                for f in self.left_room_requests(id.as_deref()) {
                    self.hub.federation_deliver(&self.sid, f);
                }
                self.leaving = true;
                self.hub.federation_deliver(&self.sid, left(id.as_deref()));
            }
        }
    }

    /// The answers to the room requests nobody else will answer: the one
    /// B has not answered (`pending`) and the joins and leaves kept for B
    /// after their write failed, each id once, but `except` (the id of the
    /// request that replaces them). A leave is confirmed (there is nothing
    /// left to leave on B), a join refused as unreachable.
    pub(super) fn left_room_requests(&mut self, except: Option<&str>) -> Vec<Frame> {
        let mut requests: Vec<(Option<String>, bool)> = Vec::new();
        if let Some(id) = self.pending.take() {
            requests.push((Some(id), self.leaving));
        }
        let (rooms, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|(m, _)| m["type"] == "room");
        self.queue = rest;
        self.queue_bytes = self.queue.iter().map(|(_, b)| b).sum();
        for (m, _) in rooms {
            let id = m.get("id").and_then(Value::as_str).map(str::to_string);
            requests.push((id, m["room"]["roomid"] == ""));
        }
        let mut answered: Vec<Option<String>> = Vec::new();
        let mut out = Vec::new();
        for (id, leave) in requests {
            if (except.is_some() && id.as_deref() == except) || answered.contains(&id) {
                continue;
            }
            out.push(if leave {
                left(id.as_deref())
            } else {
                unreachable_frame(id.as_deref())
            });
            answered.push(id);
        }
        out
    }

    /// Keeps a message for B until the link is back (at the front: one
    /// whose write failed); refused with its id over the bounds.
    pub(super) fn keep(&mut self, m: Value, bytes: usize, front: bool) {
        if self.queue.len() >= QUEUE_LIMIT || self.queue_bytes + bytes > QUEUE_BYTES {
            return self.unreachable(&m);
        }
        self.queue_bytes += bytes;
        if front {
            self.queue.insert(0, (m, bytes));
        } else {
            self.queue.push((m, bytes));
        }
    }

    /// Tells the client its message cannot reach B now.
    fn unreachable(&self, m: &Value) {
        let id = m.get("id").and_then(Value::as_str);
        self.hub
            .federation_deliver(&self.sid, unreachable_frame(id));
    }

    /// The link ends: what is still queued or in the channel is refused
    /// (a leave is confirmed), so no request goes unanswered.
    pub(super) fn refuse_pending(&mut self, rx: &mut mpsc::Receiver<FedCmd>) {
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                FedCmd::Forward(v, _) => self.unreachable(&v),
                FedCmd::Join { id, .. } => self.unreachable(&json!({ "id": id })),
                FedCmd::Leave { id } => self.hub.federation_deliver(&self.sid, left(id.as_deref())),
            }
        }
        for f in self.left_room_requests(None) {
            self.hub.federation_deliver(&self.sid, f);
        }
        for (m, _) in std::mem::take(&mut self.queue) {
            self.unreachable(&m);
        }
        self.queue_bytes = 0;
    }
}

/// The answer to a leave: the session is in no room.
fn left(id: Option<&str>) -> Frame {
    crate::api::server::frame(id, "room", &json!({"roomid": ""}))
}

/// The error of a request that cannot reach B now.
fn unreachable_frame(id: Option<&str>) -> Frame {
    error_frame(
        id,
        &ProtocolError::new(
            error::FEDERATION_ERROR,
            "The federated conversation is not reachable right now.",
        ),
    )
}
