//! What a federated join may cost this server: links to remote signaling
//! servers that stop reading, where the server agrees to dial, and how
//! long a name lookup may take. The remote servers are fakes on loopback
//! (`support::remote`).

use std::time::Duration;

use crate::support::*;
use serde_json::{json, Value};

/// Dialling loopback over plain ws:// is allowed for these tests.
const OPEN: &str = "[federation]\ntimeout = 2\nallowips = 127.0.0.1, ::1\nallowhttp = true\n";

fn federation(signaling: &str) -> Value {
    json!({"signaling": signaling, "url": "https://remote.example/ocs/v2.php/apps/spreed/api/v3/signaling/backend", "roomid": "remotetoken", "token": "a.b.c"})
}

fn join(signaling: &str) -> Value {
    json!({"id": "7", "type": "room", "room": {"roomid": "localtoken", "sessionid": "nc-alice", "federation": federation(signaling)}})
}

/// A remote that stops reading after the handshake does not keep the
/// link (its socket, its buffers, its task) once the session ended: the
/// write stuck towards it gives up with the session, and the socket is
/// closed within the `[federation] timeout` bound.
#[tokio::test]
async fn a_remote_that_stops_reading_does_not_keep_the_link() {
    let extra = format!("{OPEN}[clients]\nbytespersecond = 268435456\nbyteburst = 268435456\n");
    let a = TestServer::start_with(&extra).await;
    let mut remote = FakeRemote::start("127.0.0.1", true).await;
    let mut alice = a.client(Some("alice")).await;
    alice.send(join(&remote.url)).await;
    let r = alice
        .wait_for(|m| m["type"] == "room" || m["type"] == "error")
        .await;
    assert_eq!(r["room"]["roomid"], "localtoken", "{r}");
    // The remote stops reading this connection (it keeps it open).
    let (peer, stalled) = remote.joined.recv().await.unwrap();
    assert!(tcp_socket_held(peer, remote.addr));
    // Flood until the link's queue is full: its writes are stuck.
    let pad = "x".repeat(60_000);
    let mut refused = None;
    for i in 0..1000 {
        alice.send(json!({"id": format!("m{i}"), "type": "message", "message": {"recipient": {"type": "session", "sessionid": "someone"}, "data": {"pad": pad}}})).await;
        if let Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) =
            tokio::time::timeout(
                Duration::from_millis(1),
                futures_util::StreamExt::next(&mut alice.ws),
            )
            .await
        {
            let m: Value = serde_json::from_str(t.as_str()).unwrap();
            if m["type"] == "error" {
                refused = Some(m);
                break;
            }
        }
    }
    let refused = refused.expect("the link's queue is bounded");
    assert_eq!(refused["error"]["code"], "too_many_requests", "{refused}");
    assert!(
        refused["id"].as_str().unwrap().starts_with('m'),
        "{refused}"
    );
    // The session ends.
    alice.send(json!({"type": "bye", "bye": {}})).await;
    let hub = a.server.as_ref().unwrap().hub.clone();
    eventually(
        "the link's socket is closed",
        Duration::from_secs(5),
        || !tcp_socket_held(peer, remote.addr),
    )
    .await;
    eventually("no live link is left", Duration::from_secs(5), || {
        hub.federation_links() == 0
    })
    .await;
    // The remote, reading again, sees the end of the connection.
    let mut stalled = stalled;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = futures_util::StreamExt::next(&mut stalled).await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the remote saw the connection end");
    a.stop().await;
}

/// A remote that drops the link right after each handshake is dialled
/// again with a growing delay (100 ms doubling), not in a tight loop.
#[tokio::test]
async fn links_that_break_right_after_the_handshake_back_off() {
    let a = TestServer::start_with(OPEN).await;
    let mut remote = FakeRemote::start("127.0.0.1", false).await;
    let mut alice = a.client(Some("alice")).await;
    alice.send(join(&remote.url)).await;
    let r = alice
        .wait_for(|m| m["type"] == "room" || m["type"] == "error")
        .await;
    assert_eq!(r["room"]["roomid"], "localtoken", "{r}");
    let started = tokio::time::Instant::now();
    let accepts = remote.accepts.clone();
    // Every connection (the first and each resume) is dropped at once.
    tokio::spawn(async move { while remote.joined.recv().await.is_some() {} });
    alice
        .wait_for(|m| m["event"]["type"] == "federation_interrupted")
        .await;
    tokio::time::sleep_until(started + Duration::from_secs(3)).await;
    // Backoff 100, 200, 400, 800, 1600 ms: at most six dials in three
    // seconds (without it, hundreds).
    let n = accepts.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=6).contains(&n), "{n} dials in 3 s");
    a.stop().await;
}

/// A plain HTTP server on loopback answering every request with `status`
/// (or with bytes that are not HTTP at all when None).
async fn http_answering(status: Option<&'static str>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tcp.read(&mut buf).await;
                let answer = match status {
                    Some(s) => format!("HTTP/1.1 {s}\r\nContent-Length: 0\r\n\r\n"),
                    None => "SSH-2.0-OpenSSH_9.2\r\n".to_string(),
                };
                let _ = tcp.write_all(answer.as_bytes()).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    url
}

/// The error a federated join through `signaling` gets, as sent (text).
async fn join_error(a: &TestServer, signaling: &str) -> String {
    let mut c = a.client(Some("alice")).await;
    c.send(join(signaling)).await;
    loop {
        let m = tokio::time::timeout(TIMEOUT, futures_util::StreamExt::next(&mut c.ws))
            .await
            .expect("an answer")
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "error" || v["type"] == "room" {
                return t.to_string();
            }
        }
    }
}

/// By default a federated join may not make the server dial loopback,
/// private or link-local addresses (a name that resolves to one
/// included), nor plain ws:// targets: refused with the one generic
/// error, and no connection is made.
#[tokio::test]
async fn private_and_plain_targets_are_refused_without_a_connection() {
    let a = TestServer::start().await;
    let v4 = FakeRemote::start("127.0.0.1", false).await;
    let v6 = FakeRemote::start("[::1]", false).await;
    let (p4, p6) = (v4.addr.port(), v6.addr.port());
    let generic = join_error(&a, &format!("http://127.0.0.1:{p4}/")).await;
    let e: Value = serde_json::from_str(&generic).unwrap();
    assert_eq!(e["id"], "7");
    assert_eq!(e["error"]["code"], "federation_error", "{e}");
    assert_eq!(
        e["error"]["details"],
        json!({"code": "network_error"}),
        "{e}"
    );
    for target in [
        format!("https://127.0.0.1:{p4}/"),
        format!("https://localhost:{p4}/"),
        format!("https://[::1]:{p6}/"),
        format!("https://[::ffff:127.0.0.1]:{p4}/"),
        format!("https://127.1:{p4}/"),
        format!("https://0x7f000001:{p4}/"),
        "https://10.1.2.3/".to_string(),
        "https://192.168.1.1/".to_string(),
        "https://169.254.169.254/".to_string(),
        "https://100.64.0.1/".to_string(),
        "https://[fd00::1]/".to_string(),
        "https://[fe80::1]/".to_string(),
        "https://0.0.0.0/".to_string(),
        // Plain targets, even on a public address.
        "http://192.0.2.1/".to_string(),
        "ws://192.0.2.1/".to_string(),
    ] {
        assert_eq!(join_error(&a, &target).await, generic, "{target}");
    }
    assert_eq!(v4.accepted(), 0, "nothing dialled 127.0.0.1");
    assert_eq!(v6.accepted(), 0, "nothing dialled ::1");
    a.stop().await;
}

/// `[federation] allowips` and `allowhttp` open those targets (tests, LANs).
#[tokio::test]
async fn allowips_and_allowhttp_open_them() {
    let a = TestServer::start_with(OPEN).await;
    for ip in ["127.0.0.1", "[::1]"] {
        let mut remote = FakeRemote::start(ip, false).await;
        let answer: Value = serde_json::from_str(&join_error(&a, &remote.url).await).unwrap();
        assert_eq!(answer["type"], "room", "{answer}");
        assert_eq!(answer["room"]["roomid"], "localtoken", "{answer}");
        assert!(remote.joined.recv().await.is_some());
        assert_eq!(remote.accepted(), 1);
    }
    // Only the listed addresses: 127.0.0.2 is still loopback.
    let other = FakeRemote::start("127.0.0.2", false).await;
    let e: Value = serde_json::from_str(&join_error(&a, &other.url).await).unwrap();
    assert_eq!(e["error"]["code"], "federation_error", "{e}");
    assert_eq!(other.accepted(), 0);
    a.stop().await;
}

/// Whatever answers where the client pointed (nothing, an HTTP server
/// with 404 or 200, something that is not HTTP), the client gets the same
/// bytes: a federated join cannot scan ports.
#[tokio::test]
async fn the_error_does_not_tell_what_answered() {
    let a = TestServer::start_with(OPEN).await;
    let closed = format!("http://127.0.0.1:{}/", free_port());
    let first = join_error(&a, &closed).await;
    for target in [
        http_answering(Some("404 Not Found")).await,
        http_answering(Some("200 OK")).await,
        http_answering(None).await,
    ] {
        assert_eq!(join_error(&a, &target).await, first, "{target}");
    }
    a.stop().await;
}

/// Each session, and each client address, may make the server dial only
/// so often (10 and 30 a minute): more joins are refused with their id.
#[tokio::test]
async fn dials_are_capped_per_session_and_per_address() {
    let a = TestServer::start_with(OPEN).await;
    let closed = format!("http://127.0.0.1:{}/", free_port());
    let mut c = a.client(Some("alice")).await;
    for i in 0..10 {
        c.send(json!({"id": format!("j{i}"), "type": "room", "room": {"roomid": "localtoken", "sessionid": "nc-alice", "federation": federation(&closed)}})).await;
        let e = c.wait_for(|m| m["type"] == "error").await;
        assert_eq!(e["error"]["code"], "federation_error", "{e}");
    }
    c.send(json!({"id": "over", "type": "room", "room": {"roomid": "localtoken", "sessionid": "nc-alice", "federation": federation(&closed)}})).await;
    let e = c.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["id"], "over");
    assert_eq!(e["error"]["code"], "too_many_requests", "{e}");
    // Other sessions of the same address: 20 more, then refused.
    let mut refused = 0;
    for s in 0..3 {
        let mut c = a.client(Some("alice")).await;
        for i in 0..8 {
            c.send(json!({"id": format!("s{s}-{i}"), "type": "room", "room": {"roomid": "localtoken", "sessionid": "nc-alice", "federation": federation(&closed)}})).await;
            let e = c.wait_for(|m| m["type"] == "error").await;
            if e["error"]["code"] == "too_many_requests" {
                assert_eq!(e["id"], format!("s{s}-{i}"));
                refused += 1;
            }
        }
    }
    assert_eq!(refused, 4, "24 asked, 20 left for the address");
    a.stop().await;
}

/// A server whose federation resolver asks only `nameserver`.
async fn with_nameserver(nameserver: std::net::SocketAddr) -> TestServer {
    let nc = FakeNextcloud::start().await;
    let mut cfg = spreed_signaling::config::Config::parse(&config_text(&nc, OPEN)).unwrap();
    cfg.federation.nameservers = vec![nameserver];
    TestServer::start_config(nc, cfg).await
}

/// A name whose DNS never answers fails within `[federation] timeout`
/// (2 s here), and requests to Nextcloud go on meanwhile.
#[tokio::test]
async fn a_name_whose_dns_never_answers_fails_within_the_deadline() {
    // A name server that never replies.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = with_nameserver(silent.local_addr().unwrap()).await;
    let mut alice = a.client(Some("alice")).await;
    let started = tokio::time::Instant::now();
    alice
        .send(join("https://signaling.never-answers.test/"))
        .await;
    // The resolver asked the silent server.
    let mut buf = [0u8; 512];
    tokio::time::timeout(TIMEOUT, silent.recv_from(&mut buf))
        .await
        .expect("a DNS query")
        .unwrap();
    // Meanwhile a room join, which asks Nextcloud, is answered at once.
    let _bob = a.client_in_room("bob", "room1").await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let e = alice.wait_for(|m| m["type"] == "error").await;
    let waited = started.elapsed();
    assert_eq!(e["id"], "7");
    assert_eq!(e["error"]["code"], "federation_error", "{e}");
    assert_eq!(e["error"]["details"], json!({"code": "network_error"}));
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    a.stop().await;
}

/// Federation does not resolve on tokio's blocking pool: with every
/// blocking thread busy (as when `getaddrinfo` calls hang), a name (here
/// from /etc/hosts) still resolves and the join goes through.
#[test]
fn names_resolve_without_the_blocking_pool() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let a = TestServer::start_with(OPEN).await;
        let mut remote = FakeRemote::start("127.0.0.1", false).await;
        // The one blocking thread is taken until the test ends.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (taken, is_taken) = tokio::sync::oneshot::channel();
        let _busy = tokio::task::spawn_blocking(move || {
            let _ = taken.send(());
            let _ = held.recv();
        });
        is_taken.await.unwrap();
        let url = format!("http://localhost:{}/", remote.addr.port());
        let answer: Value = serde_json::from_str(&join_error(&a, &url).await).unwrap();
        assert_eq!(answer["type"], "room", "{answer}");
        assert!(remote.joined.recv().await.is_some());
        drop(release);
        a.stop().await;
    });
}

/// A guest whose federated join failed is still closed by the room-join
/// timeout (the federated join does not stop it until the remote server
/// confirmed the join).
#[tokio::test]
async fn a_guest_whose_federated_join_failed_meets_the_room_timeout() {
    let a = TestServer::start_with(&format!("{OPEN}[clients]\nroomtimeout = 1\n")).await;
    let mut guest = a.client(None).await;
    let closed = format!("http://127.0.0.1:{}/", free_port());
    guest.send(join(&closed)).await;
    let e = guest.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["error"]["code"], "federation_error", "{e}");
    let bye = guest.wait_for(|m| m["type"] == "bye").await;
    assert_eq!(bye["bye"]["reason"], "room_join_timeout");
    // A guest whose federated join was confirmed stays.
    let mut remote = FakeRemote::start("127.0.0.1", false).await;
    let mut ok = a.client(None).await;
    ok.send(join(&remote.url)).await;
    let r = ok.wait_for(|m| m["type"] == "room").await;
    assert_eq!(r["room"]["roomid"], "localtoken");
    let _held = remote.joined.recv().await.unwrap();
    ok.expect_nothing(Duration::from_millis(2500)).await;
    a.stop().await;
}

/// Federated sessions are pinged to their own Nextcloud only once the
/// remote server confirmed the join (as the Go server, which pings them
/// once the remote accepted the session), not while a join the client
/// pointed anywhere is pending or failed.
#[tokio::test]
async fn only_confirmed_federated_joins_are_pinged() {
    let a = TestServer::start_with(
        "[federation]\ntimeout = 5\nallowips = 127.0.0.1\nallowhttp = true\n[backend]\npinginterval = 1\n",
    )
    .await;
    // A "remote" that accepts TCP and never answers: the join stays pending.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", silent.local_addr().unwrap());
    let mut alice = a.client(Some("alice")).await;
    alice.send(join(&url)).await;
    let (_pending, _) = silent.accept().await.unwrap();
    // Bob's room is pinged every second: two rounds pass.
    let _bob = a.client_in_room("bob", "room1").await;
    let rounds = || {
        a.nc.requests("ping")
            .iter()
            .filter(|p| p.body["ping"]["roomid"] == "room1")
            .count()
    };
    eventually("two ping rounds", Duration::from_secs(4), || rounds() >= 2).await;
    let pings = a.nc.requests("ping");
    assert!(
        pings
            .iter()
            .all(|p| p.body["ping"]["roomid"] != "localtoken"),
        "pinged for a join nobody confirmed: {:?}",
        pings.iter().map(|p| p.body.to_string()).collect::<Vec<_>>()
    );
    a.stop().await;
}
