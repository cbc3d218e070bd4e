//! What a link keeps while B is unreachable, bounded in messages and in
//! bytes, and what it refuses (each with the request's id) when the
//! bounds are reached or the link ends.

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::link::Link;
use super::{FedCmd, QUEUE_BYTES, QUEUE_LIMIT};
use crate::api::error::{self, ProtocolError};
use crate::api::server::error_frame;

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
                self.retarget(local_room, remote_room, nc_session);
                self.pending = id;
                self.rejoin = true;
                // This join replaces any room request still queued.
                self.queue.retain(|(m, _)| m["type"] != "room");
                self.queue_bytes = self.queue.iter().map(|(_, b)| b).sum();
            }
            FedCmd::Leave { id } => {
                // Nothing to leave on B while it is away: confirm and end.
                self.leaving = true;
                let f = crate::api::server::frame(id.as_deref(), "room", &json!({"roomid": ""}));
                self.hub.federation_deliver(&self.sid, f);
            }
        }
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
        self.hub.federation_deliver(
            &self.sid,
            error_frame(
                id,
                &ProtocolError::new(
                    error::FEDERATION_ERROR,
                    "The federated conversation is not reachable right now.",
                ),
            ),
        );
    }

    /// The link ends: what is still queued or in the channel is refused
    /// (a leave is confirmed), so no request goes unanswered.
    pub(super) fn refuse_pending(&mut self, rx: &mut mpsc::Receiver<FedCmd>) {
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            match cmd {
                FedCmd::Forward(v, _) => self.unreachable(&v),
                FedCmd::Join { id, .. } => self.unreachable(&json!({ "id": id })),
                FedCmd::Leave { id } => {
                    let f =
                        crate::api::server::frame(id.as_deref(), "room", &json!({"roomid": ""}));
                    self.hub.federation_deliver(&self.sid, f);
                }
            }
        }
        for (m, _) in std::mem::take(&mut self.queue) {
            if m["type"] != "room" {
                self.unreachable(&m);
            }
        }
        self.queue_bytes = 0;
    }
}
