//! The NATS bus (async-nats). One wildcard subscription receives everything
//! under `signaling.>` in the order the server sent it: room events, backend
//! requests and session frames of different subjects stay causally ordered
//! (async-nats would reorder across separate subscriptions). Each process
//! therefore sees all bus traffic and drops what concerns rooms it does not
//! serve; fine for a handful of processes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use super::{Bus, Inbound, Replies};

/// Messages waiting to be published, bounded: while NATS is unreachable the
/// oldest traffic is not kept forever.
const PUBLISH_QUEUE: usize = 65_536;
/// Messages received and not yet applied by the hub.
pub const INBOUND_QUEUE: usize = 65_536;

enum Out {
    Msg(String, Bytes),
    Flush(oneshot::Sender<()>),
}

/// Decodes `%XX` escapes of a URL's user or password.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// A connection to NATS shared by the whole process.
pub struct NatsBus {
    pid: String,
    client: async_nats::Client,
    out: mpsc::Sender<Out>,
}

impl NatsBus {
    /// Connects (retrying in the background if the server is not up yet),
    /// subscribes to `signaling.>` and forwards what arrives to `inbound`.
    pub async fn connect(
        urls: &[String],
        pid: String,
        inbound: mpsc::Sender<Inbound>,
    ) -> anyhow::Result<Arc<NatsBus>> {
        let (addrs, options) = connect_options(urls)?;
        let client = options
            .name(format!("spreed-signaling {pid}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS, reconnecting")
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        tracing::warn!("NATS reports this process as a slow consumer")
                    }
                    other => tracing::info!("NATS: {other}"),
                }
            })
            .connect(addrs)
            .await?;
        let mut sub = client.subscribe("signaling.>").await?;
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let item = Inbound {
                    subject: m.subject.to_string(),
                    payload: m.payload,
                    reply: m.reply.map(|r| r.to_string()),
                };
                if inbound.send(item).await.is_err() {
                    break;
                }
            }
        });
        let (tx, mut rx) = mpsc::channel::<Out>(PUBLISH_QUEUE);
        let publisher = client.clone();
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Out::Msg(subject, payload) => {
                        if let Err(e) = publisher.publish(subject, payload).await {
                            tracing::warn!("NATS publish failed: {e}");
                        }
                    }
                    Out::Flush(done) => {
                        if let Err(e) = publisher.flush().await {
                            tracing::warn!("NATS flush failed: {e}");
                        }
                        let _ = done.send(());
                    }
                }
            }
        });
        Ok(Arc::new(NatsBus {
            pid,
            client,
            out: tx,
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
        if let Err(e) = self.out.try_send(Out::Msg(subject, payload)) {
            tracing::warn!("NATS publish queue full, dropping a bus message: {e}");
        }
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
            let inbox = client.new_inbox();
            let Ok(mut sub) = client.subscribe(inbox.clone()).await else {
                return Vec::new();
            };
            if client
                .publish_with_reply(subject, inbox, payload)
                .await
                .is_err()
            {
                return Vec::new();
            }
            let _ = client.flush().await;
            let mut replies = Vec::new();
            let deadline = tokio::time::Instant::now() + timeout;
            while replies.len() < expected {
                match tokio::time::timeout_at(deadline, sub.next()).await {
                    Ok(Some(m)) => replies.push(m.payload),
                    _ => break,
                }
            }
            replies
        })
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn flush(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.out.send(Out::Flush(tx)).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(2), rx).await;
            }
        })
    }
}
