//! Mixed versions (issue 21, item 5): a process of the previous release on
//! the same NATS keeps working with this one. The test plays that process
//! with the previous release's bus messages: no version in its discovery
//! and heartbeats, one `signaling.>` subscription, room snapshot requests on
//! the room's subject (answered by every process before its join goes on),
//! user frames on `signaling.all`.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};
use spreed_signaling::bus::{process_subject, room_subject, user_subject};

use crate::support::*;

/// The process id of the previous release's process.
const OLD: &str = "0ldPr0c1";

/// A bus message as the previous release encodes it: header line, body.
fn old_message(header: Value, body: Option<Value>) -> Bytes {
    let mut s = header.to_string();
    s.push('\n');
    if let Some(b) = body {
        s.push_str(&b.to_string());
    }
    Bytes::from(s)
}

/// The previous release's process: its NATS connection and everything it
/// receives (`signaling.>`).
struct OldProcess {
    nats: async_nats::Client,
    all: async_nats::Subscriber,
    beating: tokio::task::JoinHandle<()>,
}

impl OldProcess {
    /// Connects and sends its heartbeats (every second, as the previous
    /// release does) until the connection is dropped.
    async fn connect(url: &str) -> OldProcess {
        let nats = async_nats::connect(url).await.unwrap();
        let all = nats.subscribe("signaling.>").await.unwrap();
        nats.flush().await.unwrap();
        let beat = nats.clone();
        let beating = tokio::spawn(async move {
            let h = json!({"heartbeat": {"from": OLD, "counts": {}}});
            while beat
                .publish("signaling.all", old_message(h.clone(), None))
                .await
                .is_ok()
            {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        OldProcess { nats, all, beating }
    }

    async fn publish(&self, subject: String, payload: Bytes) {
        self.nats.publish(subject, payload).await.unwrap();
        self.nats.flush().await.unwrap();
    }

    /// Sends a request and collects the replies that arrive within `wait`.
    async fn request(&self, subject: String, payload: Bytes, wait: Duration) -> Vec<Value> {
        let inbox = self.nats.new_inbox();
        let mut sub = self.nats.subscribe(inbox.clone()).await.unwrap();
        self.nats
            .publish_with_reply(subject, inbox, payload)
            .await
            .unwrap();
        self.nats.flush().await.unwrap();
        let mut replies = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await {
            replies.push(serde_json::from_slice(&m.payload).unwrap_or(Value::Null));
        }
        replies
    }

    /// The room snapshot request of the previous release: on the room's
    /// subject.
    async fn snapshot_replies(&self, room: &str) -> Vec<Value> {
        let h = json!({"snapshot_request": {"from": OLD, "backend": "nc1", "room": room}});
        self.request(
            room_subject("nc1", room),
            old_message(h, None),
            Duration::from_millis(700),
        )
        .await
    }

    /// Waits for a message on `subject` whose header line matches `pred`;
    /// returns its body.
    async fn wait_for(&mut self, subject: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let fut = async {
            loop {
                let m = self.all.next().await.unwrap();
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                let (head, body) = text.split_once('\n').unwrap_or((&text, ""));
                let head: Value = serde_json::from_str(head).unwrap_or(Value::Null);
                if m.subject.as_str() == subject && pred(&head) {
                    return serde_json::from_str(body).unwrap_or(Value::Null);
                }
            }
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| panic!("nothing on {subject}"))
    }
}

/// The server binary on `nats`, its log lines collected; (process, its
/// WebSocket URL, the fake Nextcloud).
async fn new_process(nats: &NatsServer) -> (LoggedProcess, String, FakeNextcloud) {
    let nc = FakeNextcloud::start().await;
    let port = free_port();
    let config = config_text(&nc, &format!("[nats]\nurl = {}\n", nats.url())).replace(
        "listen = 127.0.0.1:0",
        &format!("listen = 127.0.0.1:{port}"),
    );
    let dir = fresh_dir("versions");
    let path = dir.join("server.conf");
    std::fs::write(&path, config).unwrap();
    let p = LoggedProcess::spawn(&["--config", path.to_str().unwrap()]);
    wait_listening(port).await;
    (p, format!("ws://127.0.0.1:{port}/spreed"), nc)
}

#[tokio::test]
async fn a_process_of_the_previous_release_keeps_working_with_this_one() {
    let nats = NatsServer::start().await;
    let (new, ws_url, nc) = new_process(&nats).await;
    let mut alice = Client::connect(&ws_url).await;
    alice.expect_type("welcome").await;
    alice
        .hello_v1(&nc.backend_url(), json!({"userid": "alice"}))
        .await;
    alice.join("served", "nc-alice").await;

    // The old process starts: discovery without a version. The answer
    // comes after the new process received every room's requests.
    let mut old = OldProcess::connect(&nats.url()).await;
    let answers = old
        .request(
            "signaling.all".into(),
            old_message(json!({"discover": {"from": OLD}}), None),
            Duration::from_millis(500),
        )
        .await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    let line = new
        .wait_line(0, |l| l.contains("previous release") && l.contains(OLD))
        .await;
    assert!(line.contains("WARN"), "{line}");

    // Its first join of a room asks every process for a snapshot on the
    // room's subject: the new process answers once, for a room it does not
    // serve (empty) as for one it serves (its member).
    let quiet = old.snapshot_replies("quiet").await;
    assert_eq!(quiet.len(), 1, "{quiet:?}");
    assert_eq!(quiet[0]["members"], json!([]));
    let served = old.snapshot_replies("served").await;
    assert_eq!(served.len(), 1, "{served:?}");
    assert_eq!(served[0]["members"][0]["sid"], alice.session_id.as_str());

    // Its member joins the room: alice sees bob, messages go both ways.
    let bob = format!("{OLD}bobsession");
    let joined = json!({"joined": {"from": OLD, "backend": "nc1", "room": "served",
        "member": {"sid": bob, "owner": OLD, "userid": "bob", "roomsessionid": "nc-bob", "kind": "client"}}});
    old.publish(room_subject("nc1", "served"), old_message(joined, None))
        .await;
    alice.wait_join_of(&bob).await;
    alice
        .message_to(
            json!({"type": "session", "sessionid": bob}),
            json!({"n": 1}),
        )
        .await;
    let m = old
        .wait_for(&process_subject(OLD), |h| {
            h["session_frame"]["sid"] == bob.as_str()
        })
        .await;
    assert_eq!(m["message"]["data"]["n"], 1);
    alice
        .message_to(json!({"type": "user", "userid": "bob"}), json!({"n": 2}))
        .await;
    let m = old
        .wait_for(&user_subject("nc1", "bob"), |h| {
            h["user_frame"]["user"] == "bob"
        })
        .await;
    assert_eq!(m["message"]["data"]["n"], 2);
    // Its user frames come on signaling.all.
    let frame = json!({"type": "message", "message": {"sender": {"type": "user", "userid": "bob", "sessionid": bob}, "data": {"n": 3}}});
    let h = json!({"user_frame": {"from": OLD, "backend": "nc1", "user": "alice"}});
    old.publish("signaling.all".into(), old_message(h, Some(frame)))
        .await;
    let m = alice.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["n"], 3);

    // It stops: the new process says so and goes back to its own rooms.
    let skip = new.lines().len();
    old.beating.abort();
    let _ = (&mut old.beating).await;
    old.publish(
        "signaling.all".into(),
        old_message(json!({"goodbye": {"from": OLD}}), None),
    )
    .await;
    new.wait_line(skip, |l| {
        l.contains("no process of the previous release left")
    })
    .await;
    let mut unanswered = false;
    for _ in 0..20 {
        if old.snapshot_replies("quiet").await.is_empty() {
            unanswered = true;
            break;
        }
    }
    assert!(unanswered, "rooms not served here are still answered");
}
