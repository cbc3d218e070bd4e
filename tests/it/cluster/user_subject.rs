//! A user's subject is active before a new session of the user is
//! answered: a message another process sends to the user right after the
//! hello answer reaches the new session, even when the subscription takes
//! long to reach NATS.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::stop_all;
use crate::support::*;

/// A TCP proxy to NATS whose client-to-server direction can be held: what
/// the process sends (subscriptions, publishes, pings) waits while held.
struct HeldProxy {
    port: u16,
    held: watch::Sender<bool>,
}

impl HeldProxy {
    async fn start(nats_url: &str) -> HeldProxy {
        let target = nats_url.trim_start_matches("nats://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (held, rx) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut sr, &mut cw).await;
                });
                let mut rx = rx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || rx.wait_for(|h| !*h).await.is_err() {
                            break;
                        }
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        HeldProxy { port, held }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

#[tokio::test]
async fn a_message_to_a_user_right_after_its_hello_on_another_process_arrives() {
    let nats = NatsServer::start().await;
    let proxy = HeldProxy::start(&nats.url()).await;
    let nc = FakeNextcloud::start().await;
    let a = TestServer::start_on(nc.clone(), &format!("[nats]\nurl = {}\n", nats.url())).await;
    let b = TestServer::start_on(nc.clone(), &format!("[nats]\nurl = {}\n", proxy.url())).await;
    for s in [&a, &b] {
        let hub = s.server.as_ref().unwrap().hub.clone();
        eventually("the processes see each other", TIMEOUT, || {
            hub.known_processes() == 1
        })
        .await;
    }
    let mut bob = a.client(Some("bob")).await;
    // What process b sends NATS is held for a while: its subscription to
    // alice's subject among it.
    proxy.held.send_replace(true);
    let held = proxy.held.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        held.send_replace(false);
    });
    let mut alice = b.client(Some("alice")).await;
    bob.message_to(json!({"type": "user", "userid": "alice"}), json!({"n": 1}))
        .await;
    // Lost if alice's subscription reached NATS after the message.
    let m = alice
        .wait_for_within(Duration::from_secs(3), |m| m["type"] == "message")
        .await;
    assert_eq!(m["message"]["data"]["n"], 1);
    assert_eq!(m["message"]["sender"]["userid"], "bob");
    stop_all(vec![a, b]).await;
}
