//! A session's messages after its hello: one handler per [`ClientKind`];
//! messages of a session in a federated conversation go to the remote
//! server instead. Also what the connection's reader waits for before it
//! reads on (recipients or the bus congested).

use std::sync::Arc;

use super::outbox::Outbox;
use super::{federation, invalid_format, mcu, recipients_drained, Hub};
use crate::api::client::{ClientKind, ClientMessage};
use crate::api::error::{self, ProtocolError};
use crate::api::server::{error_frame, frame};

impl Hub {
    /// A message of a session in a federated room goes to the remote
    /// server; false when the session is not federated.
    fn forward_federated(&self, sid: &Arc<str>, id: Option<&str>, raw: &str) -> bool {
        // The common case, no federated session on this process, without
        // taking the lock once more per message.
        if self.fed_links.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return false;
        }
        let sender = {
            let st = self.lock();
            match st.sessions.map.get(sid).and_then(|s| s.fed_link.as_ref()) {
                Some(l) => l.sender.clone(),
                None => return false,
            }
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(raw) else {
            return false;
        };
        if !sender.send(federation::FedCmd::Forward(v, raw.len())) {
            self.reply_error(
                sid,
                id,
                ProtocolError::new(
                    error::TOO_MANY_REQUESTS,
                    "Too many messages for the federated conversation, slow down.",
                ),
            );
        }
        true
    }

    /// Handles a message of an authenticated session. Everything is done at
    /// once except a room join, which needs Nextcloud: its work is returned
    /// as a boxed future, so the (large) backend request is not part of
    /// every idle connection's task.
    pub fn handle(
        self: &Arc<Self>,
        sid: &Arc<str>,
        msg: ClientMessage<'_>,
        raw: &str,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        let id = msg.id.as_deref();
        let local = matches!(
            msg.kind,
            ClientKind::Hello | ClientKind::Bye | ClientKind::Room
        );
        if !local && self.forward_federated(sid, id, raw) {
            return None;
        }
        match msg.kind {
            ClientKind::Hello => {
                // A stale timer of the Talk client sometimes sends a second
                // hello on an authenticated connection: ignore it, as the
                // Go server does (an error would make the client reconnect).
                tracing::debug!(session = %sid, "ignoring hello on authenticated connection");
            }
            ClientKind::Bye => self.bye(sid, id),
            ClientKind::Room => match msg.room {
                Some(room) => {
                    let (hub, sid) = (self.clone(), sid.clone());
                    return Some(Box::pin(async move {
                        hub.room_request(&sid, msg.id, *room).await
                    }));
                }
                None => self.reply_error(sid, id, invalid_format("room body missing")),
            },
            ClientKind::Message => match msg.message {
                Some(body) => match self.janus_paced(sid, self.mcu_message(sid, id, body)) {
                    mcu::McuRoute::Done => {}
                    mcu::McuRoute::Wait(f) => return Some(f),
                    mcu::McuRoute::Deliver(body) => {
                        return self.message(sid, id, &ClientKind::Message, body)
                    }
                },
                None => self.reply_error(sid, id, invalid_format("message body missing")),
            },
            ClientKind::Control => match msg.control {
                Some(body) => return self.message(sid, id, &ClientKind::Control, body),
                None => self.reply_error(sid, id, invalid_format("message body missing")),
            },
            ClientKind::Transient => match msg.transient {
                Some(t) => self.transient(sid, id, *t),
                None => self.reply_error(sid, id, invalid_format("transient body missing")),
            },
            ClientKind::Internal => match msg.internal {
                Some(i) => return self.internal(sid, id, *i),
                None => self.reply_error(sid, id, invalid_format("internal body missing")),
            },
            ClientKind::Unknown(other) => self.reply_error(
                sid,
                id,
                invalid_format(format!("unknown message type `{other}`")),
            ),
        }
        None
    }

    /// Routes a `message` or `control` to its recipients; what the sender's
    /// reader awaits when that left recipients congested.
    fn message(
        &self,
        sid: &Arc<str>,
        id: Option<&str>,
        kind: &ClientKind,
        body: crate::api::client::MessageClientMessage<'_>,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        let congested = self.route_message(sid, id, kind, body);
        let held = self.pacing.is_held(sid);
        if congested.is_empty() && !held {
            return None;
        }
        let recipients = (!congested.is_empty()).then(|| self.wait_for_recipients(congested));
        // Recipients of other processes it left congested earlier.
        let released = held.then(|| self.pacing.clone().released(sid.clone()));
        Some(Box::pin(async move {
            if let Some(r) = recipients {
                r.await;
            }
            if let Some(r) = released {
                r.await;
            }
        }))
    }

    /// While more bus messages wait for NATS than `[nats] publishqueue`:
    /// what a connection awaits before reading its client's next message
    /// (nearly every publish comes from a client message, so the queue
    /// stays bounded without dropping anything).
    pub fn bus_backpressure(
        &self,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> {
        if !self.bus.congested() {
            return None;
        }
        self.metrics.client_bus_waits.inc();
        Some(self.bus.drained())
    }

    /// What the reader of a sender awaits before reading on: the
    /// recipients its message left more than half full drain, for at most
    /// `[clients] slowreceiverwait`, and only while they make progress (a
    /// recipient whose socket took nothing for `outbox::STALL_WAIT` is
    /// stalled). A recipient that cannot drain by then is given up on:
    /// nobody waits for it again until it drained, and it is closed with
    /// 1013 when its queue is full.
    fn wait_for_recipients(
        &self,
        outboxes: Vec<Arc<Outbox>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        self.metrics.client_sender_waits.inc();
        let wait = self.config.limits.slow_receiver_wait;
        let given_up = self.metrics.client_stalled_recipients.clone();
        Box::pin(recipients_drained(outboxes, wait, given_up))
    }

    /// Sends an error reply to a session.
    pub fn reply_error(&self, sid: &str, id: Option<&str>, err: ProtocolError) {
        let f = error_frame(id, &err);
        let mut st = self.lock();
        st.sessions.deliver(sid, &f);
    }

    fn bye(&self, sid: &Arc<str>, id: Option<&str>) {
        let reply = frame(id, "bye", &serde_json::json!({}));
        let mut st = self.lock();
        st.end_session(sid, Some(reply));
    }
}
