//! A signaling server's session on the proxy: created by a hello with a
//! valid token, kept for [`SESSION_EXPIRY`](super::config::SESSION_EXPIRY)
//! after its connection went, resumed by a hello with its id (the
//! connection it had gets `bye session_resumed`). What is sent while no
//! connection holds it waits (bounded) and goes out on the resume.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::proxy::ProxyServerMessage;

/// Messages one connection's writer may have queued; past it the
/// connection is closed (1013) and its session keeps the messages for the
/// resume.
pub const CONN_QUEUE: usize = 1024;

/// Messages a session without connection keeps; past it the session ends
/// (its publishers and subscribers close; a resume gets `no_such_session`).
pub const MAX_PENDING: usize = 4096;

/// The writer side of one WebSocket connection.
#[derive(Clone)]
pub struct ConnTx {
    /// Unique per connection.
    pub id: u64,
    /// Frames for the writer.
    pub tx: mpsc::Sender<String>,
    /// Cancelled to close the connection because its queue overflowed.
    pub overflow: CancellationToken,
}

struct Out {
    conn: Option<ConnTx>,
    pending: VecDeque<String>,
    last_used: Instant,
}

/// One session.
pub struct Session {
    /// The public id (the hello's `sessionid`, a resume's `resumeid`).
    pub id: Arc<str>,
    out: Mutex<Out>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Session::send`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    /// Queued for a connection or kept for the resume.
    Ok,
    /// Too much waits for a resume: the session must end.
    Overflow,
}

impl Session {
    /// A new session, held by `conn`.
    pub fn new(id: Arc<str>, conn: ConnTx) -> Session {
        Session {
            id,
            out: Mutex::new(Out {
                conn: Some(conn),
                pending: VecDeque::new(),
                last_used: Instant::now(),
            }),
        }
    }

    /// Sends a message to the connection holding the session, or keeps it
    /// for the resume.
    pub fn send(&self, msg: &ProxyServerMessage) -> Sent {
        match serde_json::to_string(msg) {
            Ok(text) => self.send_text(text),
            Err(e) => {
                tracing::error!("cannot serialize a proxy message: {e}");
                Sent::Ok
            }
        }
    }

    fn send_text(&self, text: String) -> Sent {
        let mut out = lock(&self.out);
        if let Some(c) = out.conn.clone() {
            match c.tx.try_send(text) {
                Ok(()) => return Sent::Ok,
                Err(mpsc::error::TrySendError::Full(text)) => {
                    tracing::warn!(session = %self.id, "connection does not read, closing it (1013); messages wait for the resume");
                    c.overflow.cancel();
                    out.conn = None;
                    out.last_used = Instant::now();
                    out.pending.push_back(text);
                }
                Err(mpsc::error::TrySendError::Closed(text)) => {
                    out.conn = None;
                    out.last_used = Instant::now();
                    out.pending.push_back(text);
                }
            }
        } else {
            out.pending.push_back(text);
        }
        if out.pending.len() > MAX_PENDING {
            Sent::Overflow
        } else {
            Sent::Ok
        }
    }

    /// Hands the session to `conn` (a resume); returns the connection that
    /// held it. What waited goes out first.
    pub fn attach(&self, conn: ConnTx) -> Option<ConnTx> {
        let mut out = lock(&self.out);
        let prev = out.conn.replace(conn.clone());
        out.last_used = Instant::now();
        while let Some(text) = out.pending.pop_front() {
            if let Err(e) = conn.tx.try_send(text) {
                let text = match e {
                    mpsc::error::TrySendError::Full(t) | mpsc::error::TrySendError::Closed(t) => t,
                };
                out.pending.push_front(text);
                conn.overflow.cancel();
                out.conn = None;
                break;
            }
        }
        prev.filter(|p| p.id != conn.id)
    }

    /// The connection `conn_id` went: the session waits for a resume.
    pub fn detach(&self, conn_id: u64) {
        let mut out = lock(&self.out);
        if out.conn.as_ref().is_some_and(|c| c.id == conn_id) {
            out.conn = None;
        }
        out.last_used = Instant::now();
    }

    /// True when no connection holds the session and it was last used
    /// more than `after` ago.
    pub fn expired(&self, now: Instant, after: std::time::Duration) -> bool {
        let out = lock(&self.out);
        out.conn.is_none() && now.saturating_duration_since(out.last_used) > after
    }

    /// The session was used (a message or a pong arrived).
    pub fn touch(&self) {
        lock(&self.out).last_used = Instant::now();
    }

    /// True while the connection `conn_id` holds the session (not once
    /// another one resumed it).
    pub fn held_by(&self, conn_id: u64) -> bool {
        lock(&self.out)
            .conn
            .as_ref()
            .is_some_and(|c| c.id == conn_id)
    }

    /// True while a connection holds the session.
    pub fn connected(&self) -> bool {
        lock(&self.out).conn.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proxy::BYE_SESSION_RESUMED;

    fn conn(id: u64, cap: usize) -> (ConnTx, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            ConnTx {
                id,
                tx,
                overflow: CancellationToken::new(),
            },
            rx,
        )
    }

    #[test]
    fn messages_wait_for_the_resume_in_order_and_overflow_is_reported() {
        let (c1, mut rx1) = conn(1, 1);
        let s = Session::new("s".into(), c1.clone());
        let bye = ProxyServerMessage::bye(BYE_SESSION_RESUMED);
        assert_eq!(s.send(&bye), Sent::Ok);
        // The second does not fit: the connection is closed, kept.
        assert_eq!(s.send(&ProxyServerMessage::bye("b")), Sent::Ok);
        assert!(c1.overflow.is_cancelled());
        assert!(!s.connected());
        assert!(rx1.try_recv().unwrap().contains(BYE_SESSION_RESUMED));
        assert_eq!(s.send(&ProxyServerMessage::bye("c")), Sent::Ok);
        let (c2, mut rx2) = conn(2, 16);
        assert!(s.attach(c2).is_none());
        assert!(rx2.try_recv().unwrap().contains("\"b\""));
        assert!(rx2.try_recv().unwrap().contains("\"c\""));
        s.detach(2);
        let mut last = Sent::Ok;
        for _ in 0..=MAX_PENDING {
            last = s.send(&ProxyServerMessage::bye("x"));
        }
        assert_eq!(last, Sent::Overflow);
    }

    #[test]
    fn a_resume_returns_the_previous_connection_and_expiry_needs_no_connection() {
        let (c1, _rx1) = conn(1, 4);
        let s = Session::new("s".into(), c1);
        let (c2, _rx2) = conn(2, 4);
        assert_eq!(s.attach(c2).map(|c| c.id), Some(1));
        let later = Instant::now() + std::time::Duration::from_secs(120);
        assert!(!s.expired(later, std::time::Duration::from_secs(60)));
        s.detach(1);
        assert!(s.connected(), "an old connection's end does not detach");
        s.detach(2);
        assert!(s.expired(later, std::time::Duration::from_secs(60)));
        assert!(!s.expired(Instant::now(), std::time::Duration::from_secs(60)));
    }
}
