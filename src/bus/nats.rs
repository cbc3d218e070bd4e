//! The NATS bus (async-nats). One subscription per subject of the process
//! (the subjects table in `bus/mod.rs`), made and dropped by the publisher
//! task in order with what it publishes. NATS keeps order per subject and
//! publisher, not across subjects.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{Bus, Inbound, Loss, Replies};

/// Messages received and not yet applied by the hub.
pub const INBOUND_QUEUE: usize = 65_536;

enum Out {
    Msg(String, Bytes),
    Flush(oneshot::Sender<()>),
    Subscribe(String),
    Unsubscribe(String),
    AllRooms(bool),
}

/// Forwards the messages of one subscription to the hub's inbound channel
/// (dropping the task unsubscribes).
fn forward(
    sub: async_nats::Subscriber,
    inbound: mpsc::Sender<Inbound>,
) -> tokio::task::JoinHandle<()> {
    forward_if(sub, inbound, false)
}

/// [`forward`], of every room's subject: only the snapshot requests (of
/// processes of the previous release), marked `any_room`.
fn forward_if(
    mut sub: async_nats::Subscriber,
    inbound: mpsc::Sender<Inbound>,
    any_room: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if any_room && !super::is_snapshot_request(&m.payload) {
                continue;
            }
            let item = Inbound {
                subject: m.subject.to_string(),
                payload: m.payload,
                reply: m.reply.map(|r| r.to_string()),
                any_room,
            };
            if inbound.send(item).await.is_err() {
                break;
            }
        }
    })
}

/// The publisher task: publishes, subscribes and unsubscribes in the order
/// the hub asked (a subscription asked before a flush is active once the
/// flush resolved).
async fn run_publisher(
    client: async_nats::Client,
    mut rx: mpsc::UnboundedReceiver<Out>,
    inbound: mpsc::Sender<Inbound>,
    sent: Arc<Backlog>,
) {
    let mut subs: std::collections::HashMap<String, tokio::task::JoinHandle<()>> =
        std::collections::HashMap::new();
    let mut all_rooms: Option<tokio::task::JoinHandle<()>> = None;
    while let Some(item) = rx.recv().await {
        match item {
            Out::Msg(subject, payload) => {
                // Waits while the client's own buffer is full (NATS
                // slow or reconnecting): the backlog grows meanwhile.
                if let Err(e) = client.publish(subject, payload).await {
                    tracing::warn!("NATS publish failed: {e}");
                }
                sent.sent();
            }
            Out::Flush(done) => {
                // A round trip after everything queued so far (async-nats's
                // flush only writes the socket): a request to a fresh inbox,
                // which nobody answers; the server's "no responders" reply
                // comes after it processed what this connection sent before.
                // The publisher goes on meanwhile.
                let client = client.clone();
                tokio::spawn(async move {
                    match client.request(client.new_inbox(), Bytes::new()).await {
                        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
                        Err(e) => tracing::warn!("NATS round trip failed: {e}"),
                        Ok(_) => {}
                    }
                    let _ = done.send(());
                });
            }
            Out::Subscribe(subject) => {
                if subs.contains_key(&subject) {
                    continue;
                }
                match client.subscribe(subject.clone()).await {
                    Ok(sub) => {
                        subs.insert(subject, forward(sub, inbound.clone()));
                    }
                    Err(e) => tracing::error!(subject = %subject, "NATS subscribe failed: {e}"),
                }
            }
            Out::Unsubscribe(subject) => {
                if let Some(task) = subs.remove(&subject) {
                    task.abort();
                }
            }
            Out::AllRooms(true) if all_rooms.is_none() => {
                match client.subscribe(super::ALL_ROOMS).await {
                    Ok(sub) => all_rooms = Some(forward_if(sub, inbound.clone(), true)),
                    Err(e) => tracing::error!("NATS subscribe to every room failed: {e}"),
                }
            }
            Out::AllRooms(on) => {
                if let Some(task) = all_rooms.take_if(|_| !on) {
                    task.abort();
                }
            }
        }
    }
}

/// Decodes `%XX` escapes of a URL's user or password.
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// The server addresses and connect options of `[nats] url`, with the
/// credentials the URLs carry (async-nats ignores credentials in URLs):
/// `user:password@` or `token@`, as the Go server reads them.
pub fn connect_options(
    urls: &[String],
) -> anyhow::Result<(Vec<async_nats::ServerAddr>, async_nats::ConnectOptions)> {
    let addrs: Vec<async_nats::ServerAddr> = urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("[nats] url: {e}"))?;
    let creds = addrs.iter().find_map(|a| {
        a.username()
            .map(|u| (percent_decode(u), a.password().map(percent_decode)))
    });
    let options = match creds {
        Some((user, Some(pass))) => async_nats::ConnectOptions::with_user_and_password(user, pass),
        Some((token, None)) => async_nats::ConnectOptions::with_token(token),
        None => async_nats::ConnectOptions::new(),
    };
    Ok((addrs, options))
}

/// Messages waiting for the publisher task. Publishing never blocks the
/// hub and never drops: above `high` the bus reports itself congested and
/// connections stop reading clients (the source of nearly every publish)
/// until the queue is back at half, so it stays near `high`.
struct Backlog {
    queued: AtomicUsize,
    high: usize,
    drained: Notify,
}

impl Backlog {
    fn congested(&self) -> bool {
        self.queued.load(Ordering::Relaxed) > self.high
    }

    /// One message was handed to the NATS client.
    fn sent(&self) {
        let before = self.queued.fetch_sub(1, Ordering::Relaxed);
        if before == self.high / 2 + 1 {
            self.drained.notify_waiters();
        }
    }

    async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.queued.load(Ordering::Relaxed) <= self.high / 2 {
                return;
            }
            notified.await;
        }
    }
}

/// Messages from other processes that may have been lost, told by
/// async-nats's events: a slow consumer (a subscription's channel was full
/// and async-nats dropped what came, one event per message dropped) or a
/// reconnect (the server dropped the connection, e.g. as a slow consumer
/// itself, and what was published meanwhile is gone). Coalesced: the hub
/// takes what is pending and resyncs once for all of it.
#[derive(Default)]
struct Losses {
    /// Bit 0: slow consumer; bit 1: reconnected.
    pending: std::sync::atomic::AtomicU8,
    /// Connected once: the next `Connected` is a reconnect.
    connected: std::sync::atomic::AtomicBool,
    notify: Notify,
}

const SLOW: u8 = 1;
const RECONNECTED: u8 = 2;

impl Losses {
    fn event(&self, event: &async_nats::Event) {
        let bit = match event {
            async_nats::Event::SlowConsumer(_) => SLOW,
            async_nats::Event::Connected if self.connected.swap(true, Ordering::Relaxed) => {
                RECONNECTED
            }
            _ => return,
        };
        self.pending.fetch_or(bit, Ordering::Relaxed);
        self.notify.notify_one();
    }

    async fn next(&self) -> Loss {
        loop {
            let bits = self.pending.swap(0, Ordering::Relaxed);
            if bits & RECONNECTED != 0 {
                return Loss::Reconnected;
            }
            if bits & SLOW != 0 {
                return Loss::SlowConsumer;
            }
            self.notify.notified().await;
        }
    }
}

/// A connection to NATS shared by the whole process.
pub struct NatsBus {
    pid: String,
    client: async_nats::Client,
    out: mpsc::UnboundedSender<Out>,
    backlog: Arc<Backlog>,
    losses: Arc<Losses>,
}

impl NatsBus {
    /// Connects (retrying in the background if the server is not up yet),
    /// subscribes to the subjects every process and this one need (the
    /// hub subscribes to its rooms and users as they come) and forwards
    /// what arrives to `inbound`.
    pub async fn connect(
        urls: &[String],
        pid: String,
        inbound: mpsc::Sender<Inbound>,
        publish_queue: usize,
    ) -> anyhow::Result<Arc<NatsBus>> {
        let (addrs, options) = connect_options(urls)?;
        let losses = Arc::new(Losses::default());
        let seen = losses.clone();
        let client = options
            .name(format!("spreed-signaling {pid}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            // Few commands inside async-nats: what waits for a slow NATS
            // waits in our backlog, which holds clients back when long.
            .client_capacity(256)
            .event_callback(move |event| {
                seen.event(&event);
                async move {
                    match event {
                        async_nats::Event::Connected => tracing::info!("connected to NATS"),
                        async_nats::Event::Disconnected => {
                            tracing::warn!("disconnected from NATS, reconnecting")
                        }
                        // One per message dropped: the hub's resync logs
                        // once for all of them.
                        async_nats::Event::SlowConsumer(_) => {}
                        other => tracing::info!("NATS: {other}"),
                    }
                }
            })
            .connect(addrs)
            .await?;
        // What every process needs; rooms and users come and go.
        let all = client.subscribe(super::SUBJECT_ALL).await?;
        let mine = client.subscribe(super::process_subject(&pid)).await?;
        forward(all, inbound.clone());
        forward(mine, inbound.clone());
        let (tx, rx) = mpsc::unbounded_channel::<Out>();
        let backlog = Arc::new(Backlog {
            queued: AtomicUsize::new(0),
            high: publish_queue,
            drained: Notify::new(),
        });
        tokio::spawn(run_publisher(client.clone(), rx, inbound, backlog.clone()));
        Ok(Arc::new(NatsBus {
            pid,
            client,
            out: tx,
            backlog,
            losses,
        }))
    }
}

impl Bus for NatsBus {
    fn pid(&self) -> &str {
        &self.pid
    }

    fn clustered(&self) -> bool {
        true
    }

    fn publish(&self, subject: String, payload: Bytes) {
        if !super::valid_subject(&subject) {
            tracing::error!(subject = ?subject, "not a valid NATS subject, not published");
            return;
        }
        self.backlog.queued.fetch_add(1, Ordering::Relaxed);
        if self.out.send(Out::Msg(subject, payload)).is_err() {
            // Only after the runtime shut the publisher task down.
            self.backlog.queued.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("NATS publisher stopped, a bus message was not sent");
        }
    }

    fn congested(&self) -> bool {
        self.backlog.congested()
    }

    fn drained(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.backlog.drained())
    }

    fn request(
        &self,
        subject: String,
        payload: Bytes,
        expected: usize,
        timeout: Duration,
    ) -> Replies {
        let client = self.client.clone();
        Box::pin(async move {
            if !super::valid_subject(&subject) {
                tracing::error!(subject = ?subject, "not a valid NATS subject, no request sent");
                return Vec::new();
            }
            // The whole request within `timeout`: while NATS is away,
            // async-nats's flush waits for the reconnect (for ever, when it
            // is gone for good: a stopping process would never exit).
            let deadline = tokio::time::Instant::now() + timeout;
            let inbox = client.new_inbox();
            let sent = tokio::time::timeout_at(deadline, async {
                let sub = client.subscribe(inbox.clone()).await.ok()?;
                client
                    .publish_with_reply(subject, inbox, payload)
                    .await
                    .ok()?;
                let _ = client.flush().await;
                Some(sub)
            });
            let Ok(Some(mut sub)) = sent.await else {
                return Vec::new();
            };
            let mut replies = Vec::new();
            while replies.len() < expected {
                match tokio::time::timeout_at(deadline, sub.next()).await {
                    Ok(Some(m)) => replies.push(m.payload),
                    _ => break,
                }
            }
            replies
        })
    }

    fn subscribe(&self, subject: String) {
        if !super::valid_subject(&subject) {
            tracing::error!(subject = ?subject, "not a valid NATS subject, not subscribed");
            return;
        }
        let _ = self.out.send(Out::Subscribe(subject));
    }

    fn unsubscribe(&self, subject: String) {
        let _ = self.out.send(Out::Unsubscribe(subject));
    }

    fn all_rooms_snapshot_requests(&self, on: bool) {
        let _ = self.out.send(Out::AllRooms(on));
    }

    fn lost(&self) -> Pin<Box<dyn Future<Output = Loss> + Send + '_>> {
        Box::pin(self.losses.next())
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.out.send(Out::Flush(tx)).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn losses_are_told_once_for_many_events_and_the_first_connect_is_none() {
        let l = Losses::default();
        l.event(&async_nats::Event::Connected);
        let none = tokio::time::timeout(Duration::from_millis(20), l.next()).await;
        assert!(none.is_err(), "the first connect lost nothing");
        for sid in 0..100 {
            l.event(&async_nats::Event::SlowConsumer(sid));
        }
        assert_eq!(l.next().await, Loss::SlowConsumer);
        let none = tokio::time::timeout(Duration::from_millis(20), l.next()).await;
        assert!(none.is_err(), "told once");
        l.event(&async_nats::Event::Disconnected);
        l.event(&async_nats::Event::SlowConsumer(1));
        l.event(&async_nats::Event::Connected);
        assert_eq!(l.next().await, Loss::Reconnected);
    }
}
