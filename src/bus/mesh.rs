//! An in-memory bus that connects several hubs of one process as if each
//! were a process of its own behind one NATS server: the cluster rules are
//! unit-tested with it, without a `nats-server`.
//!
//! It behaves as [`super::nats::NatsBus`] does: every member receives the
//! messages of the subjects it subscribed to (its own included, as NATS
//! echoes them: [`super::SUBJECT_ALL`] and its process subject from the
//! start, rooms and users as its hub asks) on its inbound channel, all
//! members in the same order (one lock orders the publishers, as the NATS
//! server does); a subscription is active at once; a request carries a
//! reply subject (`_INBOX.<n>`) and collects the replies sent to it until
//! `expected` arrived or the timeout passed.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{new_process_id, process_subject, Bus, Inbound, Replies, SUBJECT_ALL};

/// One member: where its messages go, and what it subscribed to.
struct Member {
    tx: mpsc::Sender<Inbound>,
    subjects: Arc<Mutex<HashSet<String>>>,
}

/// Prefix of the reply subjects of requests.
const INBOX_PREFIX: &str = "_INBOX.";

/// The "NATS server" the members of one mesh share.
#[derive(Default)]
pub struct Mesh {
    /// Inbound channels of the members, in the order they joined.
    members: Mutex<Vec<Member>>,
    /// Open requests: reply subject -> where their replies go.
    inboxes: Mutex<HashMap<String, mpsc::UnboundedSender<Bytes>>>,
    next_inbox: AtomicU64,
}

impl Mesh {
    /// An empty mesh.
    pub fn new() -> Arc<Mesh> {
        Arc::new(Mesh::default())
    }

    /// A new member (a "process" with a random id): its bus, and the
    /// channel its hub reads what arrives from (`Hub::spawn_cluster`).
    pub fn join(self: &Arc<Self>) -> (Arc<MeshBus>, mpsc::Receiver<Inbound>) {
        let (tx, rx) = mpsc::channel(super::nats::INBOUND_QUEUE);
        let pid = new_process_id();
        let subjects = Arc::new(Mutex::new(HashSet::from([
            SUBJECT_ALL.to_string(),
            process_subject(&pid),
        ])));
        self.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Member {
                tx,
                subjects: subjects.clone(),
            });
        let bus = MeshBus {
            pid,
            mesh: self.clone(),
            subjects,
        };
        (Arc::new(bus), rx)
    }

    /// Delivers a message: a reply to the request waiting for it, anything
    /// else to every member subscribed to its subject.
    fn deliver(&self, subject: String, payload: Bytes, reply: Option<String>) {
        if subject.starts_with(INBOX_PREFIX) {
            let inboxes = self.inboxes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = inboxes.get(&subject) {
                // The requester may have stopped waiting: nobody to tell.
                let _ = tx.send(payload);
            }
            return;
        }
        // Held while every member gets the message: publishers are ordered,
        // and every member sees the same order.
        let members = self.members.lock().unwrap_or_else(|p| p.into_inner());
        for m in members.iter() {
            let subscribed = m
                .subjects
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&subject);
            if !subscribed {
                continue;
            }
            let item = Inbound {
                subject: subject.clone(),
                payload: payload.clone(),
                reply: reply.clone(),
                any_room: false,
            };
            if let Err(e) = m.tx.try_send(item) {
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    tracing::error!("a mesh member did not keep up: a bus message was lost");
                }
            }
        }
    }
}

/// One member's view of a [`Mesh`].
pub struct MeshBus {
    pid: String,
    mesh: Arc<Mesh>,
    subjects: Arc<Mutex<HashSet<String>>>,
}

impl MeshBus {
    /// True while this member receives `subject`.
    pub fn subscribed(&self, subject: &str) -> bool {
        self.subjects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(subject)
    }
}

impl Bus for MeshBus {
    fn pid(&self) -> &str {
        &self.pid
    }

    fn clustered(&self) -> bool {
        true
    }

    fn publish(&self, subject: String, payload: Bytes) {
        self.mesh.deliver(subject, payload, None);
    }

    fn request(
        &self,
        subject: String,
        payload: Bytes,
        expected: usize,
        timeout: Duration,
    ) -> Replies {
        let n = self.mesh.next_inbox.fetch_add(1, Ordering::Relaxed);
        let inbox = format!("{INBOX_PREFIX}{n}");
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.mesh
            .inboxes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(inbox.clone(), tx);
        self.mesh.deliver(subject, payload, Some(inbox.clone()));
        let mesh = self.mesh.clone();
        Box::pin(async move {
            let mut replies = Vec::new();
            let deadline = tokio::time::Instant::now() + timeout;
            while replies.len() < expected {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) => replies.push(r),
                    _ => break,
                }
            }
            mesh.inboxes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&inbox);
            replies
        })
    }

    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        // Published means in every member's channel already.
        Box::pin(async {})
    }

    fn subscribe(&self, subject: String) {
        self.subjects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(subject);
    }

    fn unsubscribe(&self, subject: String) {
        self.subjects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&subject);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn members_get_the_subjects_they_subscribed_to_in_one_order_and_requests_get_replies() {
        let mesh = Mesh::new();
        let (a, mut ra) = mesh.join();
        let (b, mut rb) = mesh.join();
        assert_ne!(a.pid(), b.pid());
        a.publish("signaling.all".into(), Bytes::from_static(b"1"));
        b.publish("signaling.all".into(), Bytes::from_static(b"2"));
        a.publish("signaling.room.x.y".into(), Bytes::from_static(b"x"));
        for r in [&mut ra, &mut rb] {
            assert_eq!(&r.recv().await.unwrap().payload[..], b"1");
            assert_eq!(&r.recv().await.unwrap().payload[..], b"2");
            assert!(r.try_recv().is_err(), "only subscribed subjects");
        }
        b.subscribe("signaling.room.x.y".into());
        a.publish("signaling.room.x.y".into(), Bytes::from_static(b"3"));
        a.publish(process_subject(b.pid()), Bytes::from_static(b"4"));
        assert_eq!(&rb.recv().await.unwrap().payload[..], b"3");
        assert_eq!(&rb.recv().await.unwrap().payload[..], b"4");
        assert!(ra.try_recv().is_err(), "not a's");
        b.unsubscribe("signaling.room.x.y".into());
        a.publish("signaling.room.x.y".into(), Bytes::from_static(b"5"));
        assert!(rb.try_recv().is_err(), "unsubscribed");
        let replies = a.request(
            "signaling.all".into(),
            Bytes::from_static(b"q"),
            2,
            Duration::from_secs(1),
        );
        for (bus, r) in [(&a, &mut ra), (&b, &mut rb)] {
            let q = r.recv().await.unwrap();
            bus.reply(q.reply.unwrap(), Bytes::from(bus.pid().to_string()));
        }
        assert_eq!(replies.await.len(), 2);
        let none = a.request(
            "signaling.all".into(),
            Bytes::new(),
            1,
            Duration::from_secs(1),
        );
        assert!(
            none.await.is_empty(),
            "nobody answered: empty at the timeout"
        );
    }
}
