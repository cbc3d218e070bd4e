//! Our MCU proxy (`spreed-signaling proxy`) over real sockets with a real
//! Janus: the hello's token checks against the Go proxy 0.4.1 on the same
//! cases, commands and events, the scheduled shutdown (SIGUSR1), `/stats`
//! and `/metrics`, and in a network namespace the Go 0.4.1 server
//! publishing and subscribing real media through it.

use std::path::Path;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

use crate::go_parity::{GoServer, Side};
use crate::mcu_media::{run_in_namespace_of, send_to, Peer};
use crate::support::proxies::{spread_then_take_over, wait_metrics, wait_stats};
use crate::support::proxy_procs::{
    command, event, hello, now, proxy_conf, rsa_pair, session, token, GoProxy, OurProxy, ProxyTest,
};
use crate::support::{free_port, fresh_dir, Client, FakeNextcloud};

/// Media may take a while on a busy 2-core machine.
const MEDIA: Duration = Duration::from_secs(40);

/// What a proxy answers to each hello case: (type, error code, id).
async fn hello_cases(url: &str, private: &Path, other: &Path) -> Vec<(String, Value)> {
    let t = |key: &Path, iss: &str, iat: i64, alg| token(key, iss, iat, alg);
    let n = now();
    let cases: Vec<(&str, Value)> = vec![
        (
            "good RS256",
            json!({"version": "1.0", "resumeid": "", "token": t(private, "server1", n, Algorithm::RS256)}),
        ),
        (
            "good RS512",
            json!({"version": "1.0", "resumeid": "", "token": t(private, "server1", n, Algorithm::RS512)}),
        ),
        (
            "wrong key",
            json!({"version": "1.0", "resumeid": "", "token": t(other, "server1", n, Algorithm::RS256)}),
        ),
        (
            "unknown iss",
            json!({"version": "1.0", "resumeid": "", "token": t(private, "server2", n, Algorithm::RS256)}),
        ),
        (
            "expired iat",
            json!({"version": "1.0", "resumeid": "", "token": t(private, "server1", n - 400, Algorithm::RS256)}),
        ),
        (
            "future iat",
            json!({"version": "1.0", "resumeid": "", "token": t(private, "server1", n + 120, Algorithm::RS256)}),
        ),
        (
            "garbage token",
            json!({"version": "1.0", "resumeid": "", "token": "a.b.c"}),
        ),
        ("no token", json!({"version": "1.0", "resumeid": ""})),
        (
            "version 2",
            json!({"version": "2.0", "resumeid": "", "token": t(private, "server1", n, Algorithm::RS256)}),
        ),
        (
            "unknown resume",
            json!({"version": "1.0", "resumeid": "nope", "token": ""}),
        ),
    ];
    let mut out = Vec::new();
    for (name, h) in cases {
        let mut c = Client::connect(url).await;
        c.send(json!({"id": "1", "type": "hello", "hello": h}))
            .await;
        let r = c.recv().await;
        out.push((
            name.to_string(),
            json!({"type": r["type"], "code": r["error"]["code"], "id": r["id"]}),
        ));
    }
    // A command before the hello.
    let mut c = Client::connect(url).await;
    c.send(json!({"id": "7", "type": "command", "command": {"type": "create-publisher", "streamType": "video"}}))
        .await;
    let r = c.recv().await;
    out.push((
        "command first".into(),
        json!({"type": r["type"], "code": r["error"]["code"], "id": r["id"]}),
    ));
    out
}

#[tokio::test]
async fn hello_tokens_are_checked_as_the_go_proxy_does() {
    let Some(t) = ProxyTest::start("hello_tokens_are_checked_as_the_go_proxy_does", "").await
    else {
        return;
    };
    let (dir, private, public, port) = (&t.dir, &t.private, &t.public, t.proxy.port);
    let (other, _) = rsa_pair(dir, "other");
    let got = hello_cases(&t.proxy.url(), private, &other).await;
    let expect = |name: &str| -> Value {
        match name {
            "good RS256" | "good RS512" => json!({"type": "hello", "code": null, "id": "1"}),
            "wrong key" | "unknown iss" | "future iat" | "garbage token" => {
                json!({"type": "error", "code": "auth_failed", "id": "1"})
            }
            "expired iat" => json!({"type": "error", "code": "token_expired", "id": "1"}),
            "no token" | "version 2" => {
                json!({"type": "error", "code": "invalid_format", "id": "1"})
            }
            "unknown resume" => json!({"type": "error", "code": "no_such_session", "id": "1"}),
            "command first" => json!({"type": "error", "code": "hello_expected", "id": "7"}),
            _ => unreachable!(),
        }
    };
    for (name, r) in &got {
        assert_eq!(r, &expect(name), "our proxy, {name}");
    }
    // The token errors are counted by reason, as Go does.
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "signaling_proxy_token_errors_total{reason=\"expired\"} 1",
        "signaling_proxy_token_errors_total{reason=\"unsupported-issuer\"} 1",
        "signaling_proxy_sessions 2",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    let go_port = free_port();
    let go_conf = proxy_conf(go_port, &t.janus, public, "");
    if let Some(go) = GoProxy::start(dir, &go_conf, go_port).await {
        let go_got = hello_cases(&go.url(), private, &other).await;
        assert_eq!(
            go_got, got,
            "the Go proxy answers the same cases the same way"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn commands_load_stats_resume_and_a_scheduled_shutdown() {
    let Some(t) = ProxyTest::start(
        "commands_load_stats_resume_and_a_scheduled_shutdown",
        "[app]\ncountry = de\n",
    )
    .await
    else {
        return;
    };
    let ProxyTest {
        dir,
        private,
        janus: j,
        proxy: mut ours,
        ..
    } = t;
    let port = ours.port;
    let (mut c, h) = session(&ours.url(), &private).await;
    assert_eq!(h["id"], "1");
    assert_eq!(h["hello"]["version"], "1.0");
    assert_eq!(h["hello"]["server"]["country"], "DE", "{h}");
    let sid = h["hello"]["sessionid"].as_str().unwrap().to_string();

    // A publisher, a subscriber of it; the load counts both.
    let p = command(&mut c, "2", json!({"type": "create-publisher", "streamType": "video", "bitrate": 500000, "mediatypes": 3})).await;
    assert_eq!(p["type"], "command", "{p}");
    let pub_id = p["command"]["id"].as_str().unwrap().to_string();
    let s = command(
        &mut c,
        "3",
        json!({"type": "create-subscriber", "streamType": "video", "publisherId": pub_id}),
    )
    .await;
    let sub_id = s["command"]["id"].as_str().unwrap().to_string();
    let e = c
        .wait_for_within(Duration::from_secs(5), |m| m["event"]["load"] == 2)
        .await;
    assert_eq!(e["event"]["type"], "update-load");
    // Unknown clients, publishers and types.
    let r = command(
        &mut c,
        "4",
        json!({"type": "create-subscriber", "streamType": "video", "publisherId": "nope"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "unknown_client", "{r}");
    let r = command(
        &mut c,
        "5",
        json!({"type": "delete-publisher", "clientId": sub_id}),
    )
    .await;
    assert_eq!(r["error"]["code"], "unknown_client", "{r}");
    let r = command(&mut c, "6", json!({"type": "explode"})).await;
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    c.send(
        json!({"id": "7", "type": "payload", "payload": {"type": "teleport", "clientId": pub_id}}),
    )
    .await;
    let r = c.wait_for(|m| m["id"] == "7").await;
    assert_eq!(r["error"]["code"], "unsupported_payload", "{r}");
    c.send(json!({"id": "8", "type": "payload", "payload": {"type": "endOfCandidates", "clientId": pub_id}}))
        .await;
    let r = c.wait_for(|m| m["id"] == "8").await;
    assert_eq!(
        r["payload"],
        json!({"type": "endOfCandidates", "clientId": pub_id, "payload": null}),
        "{r}"
    );

    // /stats in the Go proxy's shape; /metrics with its names.
    let stats: Value = reqwest::get(format!("http://127.0.0.1:{port}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["load"], 2, "{stats}");
    assert_eq!(stats["sessions"], 1, "{stats}");
    assert_eq!(stats["mcu"]["connected"], true, "{stats}");
    assert_eq!(stats["mcu"]["publishers"], 1, "{stats}");
    assert_eq!(stats["mcu"]["clients"], 2, "{stats}");
    assert_eq!(stats["mcu"]["url"], j.url(), "{stats}");
    assert!(stats["mcu"]["uptime"].is_string(), "{stats}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "signaling_proxy_publishers{type=\"video\"} 1",
        "signaling_proxy_subscribers_total{type=\"video\"} 1",
        "signaling_proxy_command_messages_total{type=\"create-publisher\"} 1",
        "signaling_proxy_command_messages_total{type=\"other\"} 1",
        "signaling_proxy_payload_messages_total{type=\"endOfCandidates\"} 1",
        "signaling_proxy_load 2",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    // A client a trusted proxy names is not in [stats] allowed_ips.
    let refused = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/stats"))
        .header("X-Forwarded-For", "192.0.2.1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    // A resume on a new connection: the old one hears bye session_resumed.
    let mut c2 = Client::connect(&ours.url()).await;
    c2.send(json!({"id": "1", "type": "hello", "hello": {"version": "1.0", "resumeid": sid, "token": ""}}))
        .await;
    let bye = c.wait_for(|m| m["type"] == "bye").await;
    assert_eq!(bye["bye"]["reason"], "session_resumed", "{bye}");
    let h2 = c2.wait_for(|m| m["type"] == "hello").await;
    assert_eq!(h2["hello"]["sessionid"], sid.as_str());
    let mut c = c2;

    // SIGUSR1: every session hears it, no new publisher, subscribers yes.
    ours.process.signal("-USR1");
    event(&mut c, "shutdown-scheduled").await;
    let r = command(
        &mut c,
        "10",
        json!({"type": "create-publisher", "streamType": "screen"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "shutdown_scheduled", "{r}");
    // Still serving while a client is left.
    let r = command(
        &mut c,
        "11",
        json!({"type": "delete-subscriber", "clientId": sub_id}),
    )
    .await;
    assert_eq!(r["command"]["id"], sub_id.as_str(), "{r}");
    assert!(
        ours.process.child.try_wait().unwrap().is_none(),
        "exited with a publisher left"
    );
    let r = command(
        &mut c,
        "12",
        json!({"type": "delete-publisher", "clientId": pub_id}),
    )
    .await;
    assert_eq!(r["command"]["id"], pub_id.as_str(), "{r}");
    // The last client went: exit 0.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = ours.process.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.success(),
        "{status:?}: {}",
        ours.process.lines().join("\n")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sighup_reloads_the_token_keys_and_check_reports_the_file() {
    let Some(t) = ProxyTest::start(
        "sighup_reloads_the_token_keys_and_check_reports_the_file",
        "",
    )
    .await
    else {
        return;
    };
    let (dir, ours) = (&t.dir, &t.proxy);
    let (private2, public2) = rsa_pair(dir, "server2");
    let conf = std::fs::read_to_string(&ours.conf).unwrap();
    let t2 = || token(&private2, "server2", now(), Algorithm::RS256);
    let mut c = Client::connect(&ours.url()).await;
    assert_eq!(
        hello(&mut c, "1", &t2()).await["error"]["code"],
        "auth_failed"
    );
    // server2's key added, a bad key file too: the good one is taken.
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    std::fs::write(
        &ours.conf,
        conf.replace(
            "[tokens]\n",
            &format!(
                "[tokens]\nserver2 = {}\nserver3 = {}\n",
                public2.display(),
                bad.display()
            ),
        ),
    )
    .unwrap();
    let seen = ours.process.lines().len();
    ours.process.signal("-HUP");
    ours.process
        .wait_line(seen, |l| l.contains("[tokens] reloaded"))
        .await;
    let mut c = Client::connect(&ours.url()).await;
    let h = hello(&mut c, "1", &t2()).await;
    assert_eq!(h["type"], "hello", "{h}");

    // check: the same file fails on the bad key, names it, probes Janus.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
        .args(["proxy", "check", "--config"])
        .arg(&ours.conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("OK   [tokens] server2: RSA public key"),
        "{text}"
    );
    assert!(text.contains("FAIL [tokens] server3:"), "{text}");
    assert!(text.contains("OK   [mcu] url: Janus"), "{text}");
    // Without it the file passes; a refused key fails it, named.
    std::fs::write(&ours.conf, &conf).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
        .args(["proxy", "--config"])
        .arg(&ours.conf)
        .arg("check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::fs::write(&ours.conf, format!("{conf}[app]\ntokentype = etcd\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
        .args(["proxy", "check", "--config"])
        .arg(&ours.conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && text.contains("FAIL [app] tokentype"),
        "{text}"
    );
    // And start-up refuses it, naming the key (exit code 2).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
        .args(["proxy", "--config"])
        .arg(&ours.conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[app] tokentype"));
    let _ = std::fs::remove_dir_all(dir);
}

/// The publisher's offer through the Go server; the answer back to `peer`.
/// As `screen`: the Debian build of Go 0.4.1 refuses every `video` offer
/// ("payload does not contain a valid sdp", its SDP permission check),
/// screen offers skip that check.
async fn go_publish(c: &mut Client, peer: &mut Peer, sid: &str) {
    let offer = peer.recv().await;
    assert_eq!(offer["type"], "offer");
    let me = c.session_id.clone();
    send_to(
        c,
        "offer",
        &me,
        json!({"to": me, "sid": sid, "roomType": "screen", "type": "offer",
        "payload": {"type": "offer", "sdp": offer["sdp"]}}),
    )
    .await;
    let m = c
        .wait_for_within(MEDIA, |m| {
            m["type"] == "error" || m["message"]["data"]["type"] == "answer"
        })
        .await;
    assert_eq!(
        m["message"]["data"]["type"], "answer",
        "{m}; offer sent: {offer}"
    );
    peer.send(json!({"type": "answer", "sdp": m["message"]["data"]["payload"]["sdp"]}))
        .await;
    assert_eq!(peer.recv().await["type"], "ok");
}

/// `requestoffer` to `publisher` through the Go server; `peer` answers.
async fn go_subscribe(c: &mut Client, peer: &mut Peer, publisher: &str) {
    send_to(
        c,
        "req",
        publisher,
        json!({"type": "requestoffer", "roomType": "screen", "sid": "s1"}),
    )
    .await;
    let m = c
        .wait_for_within(MEDIA, |m| {
            m["type"] == "error" || m["message"]["data"]["type"] == "offer"
        })
        .await;
    let d = &m["message"]["data"];
    assert_eq!(d["type"], "offer", "{m}");
    peer.send(json!({"type": "offer", "sdp": d["payload"]["sdp"]}))
        .await;
    let answer = peer.recv().await;
    assert_eq!(answer["type"], "answer");
    send_to(
        c,
        "answer",
        publisher,
        json!({"to": publisher, "sid": d["sid"], "roomType": "screen", "type": "answer",
        "payload": {"type": "answer", "sdp": answer["sdp"]}}),
    )
    .await;
}

#[tokio::test]
async fn the_go_server_publishes_and_subscribes_media_through_our_proxy() {
    const NAME: &str = "the_go_server_publishes_and_subscribes_media_through_our_proxy";
    if !run_in_namespace_of(module_path!(), NAME) {
        return;
    }
    let Some(t) = ProxyTest::start(NAME, "").await else {
        return;
    };
    let (dir, private, port) = (&t.dir, &t.private, t.proxy.port);
    let nc = FakeNextcloud::start().await;
    nc.state.lock().unwrap().permissions.insert(
        "nc-alice".into(),
        [
            "publish-media",
            "publish-audio",
            "publish-video",
            "publish-screen",
        ]
        .map(String::from)
        .to_vec(),
    );
    let mcu = format!(
        "[mcu]\ntype = proxy\nurl = http://127.0.0.1:{port}\ntoken_id = server1\ntoken_key = {}\n",
        private.display()
    );
    let Some(go) = GoServer::start(&nc, &mcu, NAME).await else {
        return;
    };
    // The Go server says hello to the proxy.
    wait_stats(port, "the Go server connects", |s| s["sessions"] == 1).await;
    let side = Side::go(&go, &nc);
    let mut a = side.user_in_room("alice", "room1").await;
    let mut b = side.user_in_room("bob", "room1").await;
    let users =
        json!([{"sessionId": "nc-alice", "inCall": 7}, {"sessionId": "nc-bob", "inCall": 7}]);
    let (status, _) = side
        .backend_request(
            "room1",
            &json!({"type": "incall", "incall": {"incall": 7, "changed": users, "users": users}}),
        )
        .await;
    assert_eq!(status, 200);
    let alice = a.session_id.clone();
    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    go_publish(&mut a, &mut pa, "1000").await;
    let mut pb = Peer::start(&["subscribe"]).await;
    go_subscribe(&mut b, &mut pb, &alice).await;
    let f = pb.wait_frames((0, 0), 25, 25).await;
    eprintln!("bob decoded {f:?} through our proxy");
    let s = wait_stats(port, "one publisher, one subscriber", |s| s["load"] == 2).await;
    assert_eq!(s["mcu"]["publishers"], 1, "{s}");
    // The Go proxy's Janus stream gauges, from Janus's media events and
    // the subscriber's webrtcup (the stream is published as `screen`).
    for line in [
        "signaling_mcu_publisher_streams{type=\"audio\"} 1",
        "signaling_mcu_publisher_streams{type=\"screen\"} 1",
        "signaling_mcu_subscriber_streams{type=\"audio\"} 1",
        "signaling_mcu_subscriber_streams{type=\"screen\"} 1",
    ] {
        wait_metrics(port, line).await;
    }
    // Bob's peer goes: Janus hangs up his subscriber, the load drops.
    pb.close().await;
    wait_stats(port, "the subscriber is dropped", |s| s["load"] == 1).await;
    pa.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn janus_going_and_coming_bad_input_and_the_message_limit() {
    let Some(t) =
        ProxyTest::start("janus_going_and_coming_bad_input_and_the_message_limit", "").await
    else {
        return;
    };
    let ProxyTest {
        dir,
        private,
        janus: mut j,
        proxy: ours,
        ..
    } = t;
    let port = ours.port;
    let (mut c, _) = session(&ours.url(), &private).await;
    // Not JSON, a binary frame: refused, the connection goes on.
    c.send_raw(tokio_tungstenite::tungstenite::Message::Text(
        "{nope".into(),
    ))
    .await;
    assert_eq!(c.recv().await["error"]["code"], "invalid_format");
    let p = command(
        &mut c,
        "2",
        json!({"type": "create-publisher", "streamType": "video"}),
    )
    .await;
    assert_eq!(p["type"], "command", "{p}");
    c.wait_for_within(Duration::from_secs(5), |m| m["event"]["load"] == 1)
        .await;
    // Janus goes: the session hears it, every client is dropped.
    j.kill();
    event(&mut c, "backend-disconnected").await;
    wait_stats(port, "clients dropped", |s| {
        s["mcu"]["clients"] == 0 && s["mcu"]["connected"] == false
    })
    .await;
    let r = command(
        &mut c,
        "3",
        json!({"type": "create-publisher", "streamType": "video"}),
    )
    .await;
    assert_eq!(r["error"]["code"], "internal_error", "{r}");
    j.restart().await;
    event(&mut c, "backend-connected").await;
    let r = command(
        &mut c,
        "4",
        json!({"type": "create-publisher", "streamType": "video"}),
    )
    .await;
    assert_eq!(r["type"], "command", "{r}");
    // More than 64 KiB in one message closes with 1009.
    let big = "x".repeat(70 * 1024);
    c.send(json!({"id": "5", "type": "command", "command": {"type": big}}))
        .await;
    assert_eq!(c.expect_close().await, Some(1009));
    // The process is fine: a new session works.
    session(&ours.url(), &private).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn our_server_spreads_publishers_over_two_of_our_proxies_and_takes_over_from_one_that_stops()
{
    const NAME: &str =
        "our_server_spreads_publishers_over_two_of_our_proxies_and_takes_over_from_one_that_stops";
    if !run_in_namespace_of(module_path!(), NAME) {
        return;
    }
    let dir = fresh_dir("proxy-two");
    let (private, public) = rsa_pair(&dir, "server1");
    let p1 = OurProxy::with_janus(&dir, &public).await;
    let p2 = OurProxy::with_janus(&dir, &public).await;
    spread_then_take_over(p1, &p2, &private).await;
    let _ = std::fs::remove_dir_all(&dir);
}
