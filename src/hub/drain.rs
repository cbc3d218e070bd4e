//! Draining (SIGUSR1, as the Go server): the listeners stop accepting
//! (`server.rs`), the sessions already here are served on, and the process
//! exits once the last client session is gone. Internal clients (SIP
//! bridge, recording) and their virtual sessions do not hold it; a client
//! session waiting for a resume does, until it resumes elsewhere or its
//! resume timeout ends it.

use super::Hub;

impl Hub {
    /// Starts draining; false when it had already started.
    pub fn start_draining(&self) -> bool {
        self.draining
            .send_if_modified(|d| !std::mem::replace(d, true))
    }

    /// True once draining started.
    pub fn draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Client sessions of this process (connected or waiting for a resume).
    pub fn client_sessions(&self) -> usize {
        *self.lock().sessions.clients.borrow()
    }

    /// Resolves once draining started and no client session is left.
    pub async fn drained(&self) {
        let mut draining = self.draining.subscribe();
        // The sender lives as long as the hub: an error cannot happen
        // while `self` is borrowed.
        let _ = draining.wait_for(|d| *d).await;
        let mut clients = self.lock().sessions.clients.subscribe();
        let _ = clients.wait_for(|n| *n == 0).await;
    }
}
