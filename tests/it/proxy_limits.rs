//! The caps of our proxy over real sockets: `[http] maxconnections` (an
//! upgrade over it gets HTTP 503, the open connections go on, a closed
//! one frees its slot) and `[app] maxsessions` (a new session's hello gets
//! `too_many_sessions`, a resume still works, a session ended by `bye`
//! frees its slot, and the Go 0.4.1 server and ours, refused at the cap,
//! get in once a slot is free; ours within about a second, as its dial
//! went through and only the hello was refused). Each refusal is counted
//! in `/metrics` and logged.

use std::time::Duration;

use serde_json::{json, Value};

use crate::go_parity::GoServer;
use crate::support::proxies::{mcu_section, proxy_metric, proxy_metrics, wait_proxy, wait_stats};
use crate::support::proxy_procs::{command, hello, now, session, token, ProxyTest};
use crate::support::raw::request_with;
use crate::support::{Client, FakeNextcloud, TestServer};

/// A hello for a new session on `c` with a token of `key`, request id
/// `id`: the first reply.
async fn hello_with(c: &mut Client, id: &str, key: &std::path::Path) -> Value {
    let token = token(key, "server1", now(), jsonwebtoken::Algorithm::RS256);
    hello(c, id, &token).await
}

/// A publisher of `c`'s session gets created: the session works.
async fn still_works(c: &mut Client, id: &str) {
    let r = command(
        c,
        id,
        json!({"type": "create-publisher", "streamType": "video"}),
    )
    .await;
    assert_eq!(r["type"], "command", "{r}");
}

/// The session of `c` ends by its `bye` (as a server says to a Go
/// proxy); the reply.
async fn say_bye(c: &mut Client) -> Value {
    c.send(json!({"id": "9", "type": "bye", "bye": {}})).await;
    c.wait_for(|m| m["type"] == "bye").await
}

/// A new hello on `c` is refused: the proxy is at its `maxsessions`.
async fn refused_again(c: &mut Client, key: &std::path::Path) {
    let r = hello_with(c, "10", key).await;
    assert_eq!(r["error"]["code"], "too_many_sessions", "{r}");
}

/// Waits until the proxy on `port` refused `n` sessions at its cap;
/// `who` did not try that often within 20 s otherwise.
async fn wait_refusals(port: u16, n: f64, who: &str) {
    let refusals = "signaling_proxy_limit_refusals_total{limit=\"sessions\"}";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while proxy_metric(port, refusals).await < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{who} did not try {n} times"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn over_the_connection_cap_upgrades_get_503_and_the_open_connections_go_on() {
    let Some(t) = ProxyTest::start(module_path!(), "[http]\nmaxconnections = 2\n").await else {
        return;
    };
    let ProxyTest {
        proxy: ours,
        private,
        dir,
        ..
    } = t;
    let (mut a, _) = session(&ours.url(), &private).await;
    let (b, _) = session(&ours.url(), &private).await;
    // The third connection: 503, counted and logged.
    let refused = Client::upgrade(request_with(&ours.url(), &[])).await;
    assert_eq!(refused.err(), Some(503));
    let metrics = proxy_metrics(ours.port).await;
    for line in [
        "signaling_proxy_limit_refusals_total{limit=\"connections\"} 1",
        "signaling_proxy_connections 2",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    ours.process
        .wait_line(0, |l| {
            l.contains("[http] maxconnections") && l.contains("503") && l.contains("limit=2")
        })
        .await;
    // The open connections go on.
    still_works(&mut a, "2").await;
    // One closes: its slot is free again.
    drop(b);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match Client::upgrade(request_with(&ours.url(), &[])).await {
            Ok(c) => break c,
            Err(status) => assert_eq!(status, 503),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the closed connection's slot was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let h = hello_with(&mut c, "1", &private).await;
    assert_eq!(h["type"], "hello", "{h}");
    still_works(&mut c, "2").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn over_max_sessions_a_hello_gets_too_many_sessions_and_a_session_ended_by_bye_frees_its_slot(
) {
    let Some(t) = ProxyTest::start(module_path!(), "[app]\nmaxsessions = 2\n").await else {
        return;
    };
    let ProxyTest {
        proxy: ours,
        private,
        dir,
        ..
    } = t;
    let (mut a, _) = session(&ours.url(), &private).await;
    let (mut b, hb) = session(&ours.url(), &private).await;
    still_works(&mut a, "2").await;
    // A third session: refused with the request id, counted and logged;
    // its connection stays open.
    let mut c = Client::connect(&ours.url()).await;
    let r = hello_with(&mut c, "1", &private).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["error"]["code"], "too_many_sessions", "{r}");
    assert_eq!(
        proxy_metric(
            ours.port,
            "signaling_proxy_limit_refusals_total{limit=\"sessions\"}"
        )
        .await,
        1.0
    );
    ours.process
        .wait_line(0, |l| {
            l.contains("[app] maxsessions") && l.contains("too_many_sessions")
        })
        .await;
    // The sessions there go on; a resume at the cap is no new session.
    still_works(&mut b, "3").await;
    let mut b2 = Client::connect(&ours.url()).await;
    let sid = hb["hello"]["sessionid"].as_str().unwrap();
    b2.send(json!({"id": "1", "type": "hello", "hello": {"version": "1.0", "resumeid": sid, "token": ""}}))
        .await;
    let h = b2.wait_for(|m| m["id"] == "1").await;
    assert_eq!(h["hello"]["sessionid"], sid, "{h}");
    // The connection that held it is told, and has no session any more
    // (as with the Go proxy): its bye ends nothing.
    let bye = b.wait_for(|m| m["type"] == "bye").await;
    assert_eq!(bye["bye"]["reason"], "session_resumed", "{bye}");
    b.send(json!({"id": "8", "type": "bye", "bye": {}})).await;
    let r = b.wait_for(|m| m["id"] == "8").await;
    assert_eq!(r["error"]["code"], "hello_expected", "{r}");
    still_works(&mut b2, "4").await;
    // Alice's server says bye (as to a Go proxy): her session ends with
    // its publisher, her connection hears it and stays open.
    let bye = say_bye(&mut a).await;
    assert_eq!(bye["bye"]["reason"], "session_closed", "{bye}");
    // Only Bob's two publishers are left.
    wait_stats(ours.port, "alice's session ended", |s| {
        s["sessions"] == 1 && s["load"] == 2
    })
    .await;
    // Her slot is used: the refused connection's next hello gets in, and
    // then hers is refused.
    let h = hello_with(&mut c, "2", &private).await;
    assert_eq!(h["type"], "hello", "{h}");
    still_works(&mut c, "3").await;
    refused_again(&mut a, &private).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_go_server_refused_at_max_sessions_gets_in_once_a_slot_is_free() {
    const NAME: &str = "the_go_server_refused_at_max_sessions_gets_in_once_a_slot_is_free";
    let Some(t) = ProxyTest::start(module_path!(), "[app]\nmaxsessions = 1\n").await else {
        return;
    };
    let ProxyTest {
        proxy: ours,
        private,
        dir,
        ..
    } = t;
    let (mut a, _) = session(&ours.url(), &private).await;
    let nc = FakeNextcloud::start().await;
    let mcu = format!(
        "[mcu]\ntype = proxy\nurl = http://127.0.0.1:{}\ntoken_id = server1\ntoken_key = {}\n",
        ours.port,
        private.display()
    );
    let Some(_go) = GoServer::start(&nc, &mcu, NAME).await else {
        return;
    };
    // The Go server is refused and tries again (Go's proxy has no cap: a
    // refused hello is re-dialled as any failed one).
    wait_refusals(ours.port, 2.0, "the Go server").await;
    assert_eq!(proxy_stats_sessions(ours.port).await, 1);
    // A slot is freed: the Go server's next try gets it.
    say_bye(&mut a).await;
    wait_stats(ours.port, "the Go server got the free slot", |s| {
        s["sessions"] == 1
    })
    .await;
    refused_again(&mut a, &private).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn our_server_refused_at_max_sessions_gets_in_within_three_seconds_once_a_slot_is_free() {
    let Some(t) = ProxyTest::start(module_path!(), "[app]\nmaxsessions = 1\n").await else {
        return;
    };
    let ProxyTest {
        proxy: ours,
        private,
        dir,
        ..
    } = t;
    let (mut a, _) = session(&ours.url(), &private).await;
    let ts = TestServer::start_with(&mcu_section(&[ours.base()], &private)).await;
    // Refused again and again: the proxy answers, so the server keeps
    // trying every second (a back-off doubling per refusal would make
    // the 4th try come 7 s after the first, the 5th 8 s after the 4th).
    wait_refusals(ours.port, 4.0, "our server").await;
    assert_eq!(proxy_stats_sessions(ours.port).await, 1);
    let s = crate::support::proxies::mcu_stats(&ts.url).await;
    assert_eq!(s["details"][ours.base()]["connected"], false, "{s}");
    // A slot is freed: the server's next try (about a second later) gets it.
    say_bye(&mut a).await;
    let freed = tokio::time::Instant::now();
    wait_proxy(&ts.url, &ours.base(), Duration::from_secs(3), |d| {
        d["connected"] == true
    })
    .await;
    eprintln!(
        "logged in to the proxy {:?} after the slot was freed",
        freed.elapsed()
    );
    assert_eq!(proxy_stats_sessions(ours.port).await, 1);
    refused_again(&mut a, &private).await;
    let _ = std::fs::remove_dir_all(&dir);
}

async fn proxy_stats_sessions(port: u16) -> u64 {
    crate::support::proxies::proxy_stats(port).await["sessions"]
        .as_u64()
        .unwrap()
}
