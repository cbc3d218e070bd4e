//! `[mcu] type = proxy` with the Go 0.4.1 proxy
//! (`/usr/bin/nextcloud-spreed-signaling-proxy`) and Debian's Janus: a
//! refused token, and real media from aiortc peers in a network namespace
//! (as `mcu_media.rs`), over one and two proxies.

use std::time::Duration;

use serde_json::json;

use crate::mcu_media::{
    all_in_call as all_in_call_of, publish as publish_as, run_in_namespace_of, subscribe_any, Peer,
};
use crate::support::janus::audio_offer;
use crate::support::proxies::{
    mcu_section, mcu_stats, server_on_proxies, spread_then_take_over, wait_proxy,
};
use crate::support::proxy_procs::{rsa_pair, GoProxy};
use crate::support::{config_text, fresh_dir, FakeNextcloud, LoggedProcess, TestServer};

/// True when the Go proxy is installed (scripts/test installs it).
fn available() -> bool {
    let ok = GoProxy::installed() && crate::support::janus::available();
    if !ok {
        eprintln!("SKIPPED: the Go proxy or janus is not installed");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_key_is_refused_logged_and_checked_and_publishing_fails_cleanly() {
    if !available() {
        return;
    }
    let dir = fresh_dir("mcu-proxy-token");
    let (_, public) = rsa_pair(&dir, "right");
    let (wrong, _) = rsa_pair(&dir, "wrong");
    let proxy = GoProxy::with_janus(&dir, &public).await;
    let nc = FakeNextcloud::start().await;
    let section = mcu_section(&[proxy.base()], &wrong);

    // `check` names the proxy and the refusal.
    let path = dir.join("server.conf");
    std::fs::write(&path, config_text(&nc, &section)).unwrap();
    let out = tokio::task::spawn_blocking({
        let path = path.clone();
        move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
                .arg("--config")
                .arg(&path)
                .arg("check")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "FAIL [mcu] url: proxy {}/: refused our hello with [mcu] token_id `server1`: auth_failed",
            proxy.base()
        )),
        "{text}"
    );

    // The server's log says so.
    let port = crate::support::free_port();
    std::fs::write(
        &path,
        config_text(&nc, &section).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let server = LoggedProcess::spawn(&["--config", path.to_str().unwrap()]);
    server
        .wait_line(0, |l| {
            l.contains(&proxy.base())
                && l.contains("token_id `server1`")
                && l.contains("auth_failed")
        })
        .await;
    drop(server);

    // A publish gets client_not_found with its id; signaling goes on.
    let ts = TestServer::start_on(nc, &section).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    let me = a.session_id.clone();
    a.send(json!({"id": "pub1", "type": "message", "message": {
        "recipient": {"type": "session", "sessionid": me},
        "data": {"to": me, "type": "offer", "roomType": "video", "sid": "1",
            "payload": {"type": "offer", "sdp": audio_offer()}}}}))
        .await;
    let m = a.wait_for(|m| m["type"] == "error").await;
    assert_eq!(m["error"]["code"], "client_not_found", "{m}");
    assert_eq!(m["id"], "pub1");
    a.send(
        json!({"type": "message", "message": {"recipient": {"type": "session",
        "sessionid": b.session_id}, "data": "still here"}}),
    )
    .await;
    b.wait_for(|m| m["message"]["data"] == "still here").await;
    let st = mcu_stats(&ts.url).await;
    assert_eq!(st["details"][proxy.base()]["connected"], false, "{st}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unreadable_token_key_stops_start_up_naming_it() {
    let nc = FakeNextcloud::start().await;
    let dir = fresh_dir("mcu-proxy-nokey");
    let path = dir.join("server.conf");
    let missing = dir.join("missing.key");
    std::fs::write(
        &path,
        config_text(&nc, &mcu_section(&["http://127.0.0.1:1".into()], &missing)),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("[mcu] token_key") && err.contains(missing.to_str().unwrap()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn media_through_the_go_proxy() {
    if !run_in_namespace_of(module_path!(), "media_through_the_go_proxy") {
        return;
    }
    let dir = fresh_dir("mcu-proxy-media");
    let (key, public) = rsa_pair(&dir, "server1");
    let proxy = GoProxy::with_janus(&dir, &public).await;
    let ts = server_on_proxies(&[proxy.base()], &key).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    all_in_call_of(&ts, &["nc-alice", "nc-bob"]).await;
    let alice = a.session_id.clone();
    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    publish_as(&mut a, &mut pa, "video", "1000").await;
    let mut pb = Peer::start(&["subscribe"]).await;
    let sid = subscribe_any(&mut b, &mut pb, &alice, "video", "").await;
    assert!(!sid.is_empty());
    let f = pb.wait_frames((0, 0), 25, 25).await;
    eprintln!("bob decoded {f:?} through the Go proxy");
    let st = mcu_stats(&ts.url).await;
    assert_eq!(st["publishers"], 1, "{st}");
    assert_eq!(st["clients"], 2, "{st}");
    // The proxy reports its load (publisher + subscriber).
    wait_proxy(&ts.url, &proxy.base(), Duration::from_secs(5), |d| {
        d["load"] == 2
    })
    .await;
    pb.close().await;
    pa.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn two_go_proxies_spread_publishers_and_take_over_from_one_that_stops() {
    if !run_in_namespace_of(
        module_path!(),
        "two_go_proxies_spread_publishers_and_take_over_from_one_that_stops",
    ) {
        return;
    }
    let dir = fresh_dir("mcu-proxy-two");
    let (key, public) = rsa_pair(&dir, "server1");
    let p1 = GoProxy::with_janus(&dir, &public).await;
    let p2 = GoProxy::with_janus(&dir, &public).await;
    spread_then_take_over(p1, &p2, &key).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes `c`'s stream with a hand-made audio offer (no media needed
/// to place a publisher); waits for the answer.
async fn publish_offer(c: &mut crate::support::Client, sid: &str) {
    let me = c.session_id.clone();
    c.send(
        json!({"id": format!("pub{sid}"), "type": "message", "message": {
        "recipient": {"type": "session", "sessionid": me},
        "data": {"to": me, "type": "offer", "roomType": "video", "sid": sid,
            "payload": {"type": "offer", "sdp": audio_offer()}}}}),
    )
    .await;
    let m = c
        .wait_for(|m| m["type"] == "error" || m["message"]["data"]["type"] == "answer")
        .await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
}

/// The Go 0.4.1 proxy handles SIGUSR1 (`Received SIGUSR1, scheduling
/// server to shutdown`, then `shutdown-scheduled` to its sessions): our
/// server places no new publisher there, even where the loads tie and it
/// would be first.
#[tokio::test]
async fn after_sigusr1_on_a_go_proxy_new_publishers_go_to_the_other() {
    if !available() {
        return;
    }
    let dir = fresh_dir("mcu-proxy-usr1");
    let (key, public) = rsa_pair(&dir, "server1");
    let p1 = GoProxy::with_janus(&dir, &public).await;
    let p2 = GoProxy::with_janus(&dir, &public).await;
    let ts = server_on_proxies(&[p1.base(), p2.base()], &key).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    let mut c = ts.client_in_room("carol", "room1").await;
    // One publisher on each: the loads tie again, the first URL is next.
    publish_offer(&mut a, "1").await;
    wait_proxy(&ts.url, &p1.base(), Duration::from_secs(5), |d| {
        d["publishers"] == 1 && d["load"] == 1
    })
    .await;
    publish_offer(&mut b, "2").await;
    wait_proxy(&ts.url, &p2.base(), Duration::from_secs(5), |d| {
        d["publishers"] == 1 && d["load"] == 1
    })
    .await;
    p1.process.signal("-USR1");
    p1.process
        .wait_line(0, |l| l.contains("Received SIGUSR1"))
        .await;
    wait_proxy(&ts.url, &p1.base(), Duration::from_secs(5), |d| {
        d["shutdown"] == true && d["connected"] == true
    })
    .await;
    publish_offer(&mut c, "3").await;
    wait_proxy(&ts.url, &p2.base(), Duration::from_secs(5), |d| {
        d["publishers"] == 2
    })
    .await;
    let st = mcu_stats(&ts.url).await;
    assert_eq!(st["details"][p1.base()]["publishers"], 1, "{st}");
    let _ = std::fs::remove_dir_all(&dir);
}
