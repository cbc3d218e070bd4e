//! Log lines of a real run: every line about a session names the session
//! and its backend (span fields of the connection), as JSON lines and as
//! plain text, with the client address a trusted proxy passed.

use crate::support::*;
use serde_json::{json, Value};

/// A client whose connection comes through a reverse proxy on loopback
/// (trusted by default) that names `real_ip`; welcome consumed.
async fn client_via_proxy(ws_url: &str, real_ip: &str) -> Client {
    let mut c = Client::upgrade(request_with(ws_url, &[("X-Real-IP", real_ip)]))
        .await
        .unwrap();
    c.expect_type("welcome").await;
    c
}

/// Starts the binary with `args` on a free port; returns it and the port.
async fn start(nc: &FakeNextcloud, dir: &std::path::Path, args: &[&str]) -> (LoggedProcess, u16) {
    let port = free_port();
    let config = config_text(nc, "").replace(
        "listen = 127.0.0.1:0",
        &format!("listen = 127.0.0.1:{port}"),
    );
    let path = dir.join(format!("server-{port}.conf"));
    std::fs::write(&path, config).unwrap();
    let mut all = vec!["--config", path.to_str().unwrap()];
    all.extend(args);
    let p = LoggedProcess::spawn(&all);
    wait_listening(port).await;
    (p, port)
}

/// Alice and bob join a room, alice sends a message and says bye, bob
/// goes away; returns (alice's, bob's) session ids.
async fn run_sessions(nc: &FakeNextcloud, port: u16) -> (String, String) {
    let ws_url = format!("ws://127.0.0.1:{port}/spreed");
    let mut alice = Client::connect(&ws_url).await;
    alice.expect_type("welcome").await;
    alice
        .hello_v1(&nc.backend_url(), json!({"userid": "alice"}))
        .await;
    alice.join("room1", "nc-alice").await;
    let mut bob = client_via_proxy(&ws_url, "203.0.113.77").await;
    bob.hello_v1(&nc.backend_url(), json!({"userid": "bob"}))
        .await;
    bob.join("room1", "nc-bob").await;
    alice
        .message_to(
            json!({"type": "session", "sessionid": bob.session_id}),
            json!({"hi": 1}),
        )
        .await;
    bob.wait_for(|m| m["type"] == "message").await;
    alice.send(json!({"type": "bye", "bye": {}})).await;
    alice.wait_for(|m| m["type"] == "bye").await;
    let ids = (alice.session_id.clone(), bob.session_id.clone());
    drop(bob);
    ids
}

/// The value of `key` in the line's own fields, its current span or any
/// span it is in.
fn field<'a>(line: &'a Value, key: &str) -> Vec<&'a Value> {
    let mut out = Vec::new();
    out.extend(line["fields"].get(key));
    out.extend(line["span"].get(key));
    if let Some(spans) = line["spans"].as_array() {
        out.extend(spans.iter().filter_map(|s| s.get(key)));
    }
    out
}

#[tokio::test]
async fn every_json_log_line_about_a_session_names_it_and_its_backend() {
    let nc = FakeNextcloud::start().await;
    let dir = fresh_dir("spreed-logs");
    let (server, port) = start(&nc, &dir, &["--log-format", "json"]).await;
    let (alice, bob) = run_sessions(&nc, port).await;
    server
        .wait_line(0, |l| l.contains("session ended") && l.contains(&alice))
        .await;
    server
        .wait_line(0, |l| l.contains("connection closed") && l.contains(&bob))
        .await;
    let lines: Vec<Value> = server
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for (sid, what) in [
        (
            &alice,
            vec![
                "session started",
                "joined room",
                "left room",
                "session ended",
            ],
        ),
        (
            &bob,
            vec!["session started", "joined room", "connection closed"],
        ),
    ] {
        let about: Vec<&Value> = lines
            .iter()
            .filter(|l| l.to_string().contains(sid.as_str()))
            .collect();
        for m in &what {
            assert!(
                about.iter().any(|l| l["fields"]["message"] == *m),
                "no `{m}` line for {sid} in {about:#?}"
            );
        }
        // Every line mentioning the session carries it and the backend as
        // fields, not only in its text.
        for l in &about {
            let session = field(l, "session");
            assert!(
                !session.is_empty() && session.iter().all(|v| *v == sid.as_str()),
                "{l}"
            );
            let backend = field(l, "backend");
            assert!(
                !backend.is_empty() && backend.iter().all(|v| *v == "nc1"),
                "{l}"
            );
        }
    }
    // Bob's lines name the address the trusted proxy passed.
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "session started" && l.to_string().contains(&bob))
        .unwrap();
    let client = field(started, "client");
    assert!(
        !client.is_empty() && client.iter().all(|v| *v == "203.0.113.77"),
        "{started}"
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn plain_log_lines_carry_the_same_fields() {
    let nc = FakeNextcloud::start().await;
    let dir = fresh_dir("spreed-logs-plain");
    let (server, port) = start(&nc, &dir, &[]).await;
    let (alice, _) = run_sessions(&nc, port).await;
    let l = server
        .wait_line(0, |l| l.contains("joined room") && l.contains(&alice))
        .await;
    assert!(!l.contains('\u{1b}'), "colour codes in a pipe: {l:?}");
    assert!(l.contains(&format!("session={alice}")), "{l}");
    assert!(l.contains("backend=nc1"), "{l}");
    let l = server
        .wait_line(0, |l| l.contains("session started") && l.contains(&alice))
        .await;
    assert!(l.contains("client=127.0.0.1"), "{l}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
