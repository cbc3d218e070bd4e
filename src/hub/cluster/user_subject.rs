//! A session is answered once its user's subject is active: the first
//! session of a user on this process subscribes to the user's subject,
//! and a message another process sends to the user right after the hello
//! answer must reach it. Until the bus server confirmed the subscription
//! (a flush), the new session is detached: what arrives for it queues, and
//! goes out after the hello answer.

use std::sync::Arc;

use crate::api::error;
use crate::api::error::ProtocolError;
use crate::api::server::Frame;
use crate::hub::hello::Identity;
use crate::hub::outbox::Outbox;
use crate::hub::{Hub, State};

impl State {
    /// True when registering `ident` subscribes to its user's subject (with
    /// other processes, the first session of the user here).
    pub(in crate::hub) fn subscribes_user(&self, ident: &Identity) -> bool {
        let Some(user) = ident.user_id.as_deref() else {
            return false;
        };
        self.bus.clustered()
            && !self
                .sessions
                .users
                .contains_key(&(ident.backend.id.clone(), Arc::from(user)))
    }
}

impl Hub {
    /// Waits until the subscriptions asked so far are active at the bus
    /// server, then attaches the detached new session `sid` to `conn`: its
    /// hello `reply` first, then what arrived meanwhile.
    pub(crate) async fn answer_once_subscribed(
        &self,
        conn: &Arc<Outbox>,
        sid: &Arc<str>,
        reply: Frame,
    ) -> Result<(), ProtocolError> {
        let bus = self.lock().bus.clone();
        bus.flush().await;
        let mut st = self.lock();
        let Some(s) = st.sessions.map.get_mut(sid) else {
            // Ended while its hello waited (a shutdown).
            return Err(ProtocolError::new(
                error::NO_SUCH_SESSION,
                "The session id is no longer valid.",
            ));
        };
        conn.push(reply);
        for f in s.queue.drain(..) {
            conn.push_force(f);
        }
        s.queue_bytes = 0;
        s.conn = Some(conn.clone());
        Ok(())
    }
}
