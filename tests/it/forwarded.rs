//! Forwarded client addresses: `X-Forwarded-For` from a trusted proxy
//! wins over `X-Real-IP`, and an entry that is not an address is the
//! (unknown) client, never skipped.

use std::net::SocketAddr;

use crate::support::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The status line of `GET /metrics` from `from` with extra header lines.
async fn metrics_status(ts: &TestServer, from: &str, headers: &str) -> String {
    let mut s = connect_from(from, ts.addr()).await;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(TIMEOUT, s.read_to_end(&mut all))
        .await
        .expect("no answer")
        .unwrap();
    let all = String::from_utf8_lossy(&all);
    all.lines().next().unwrap_or("").to_string()
}

/// A WebSocket from `from` through a "proxy" sending `headers`.
async fn ws_via(ts: &TestServer, from: &str, headers: &[(&'static str, &str)]) -> Client {
    let tcp = connect_from(from, ts.addr()).await;
    let req = request_with(&ts.ws_url(), headers);
    Client::over(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp)).await
}

async fn guess_resume(c: &mut Client) -> String {
    c.send(json!({"id": "r", "type": "hello", "hello": {"version": "1.0", "resumeid": "guessed-resume-id"}}))
        .await;
    let m = c.expect_type("error").await;
    m["error"]["code"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn x_forwarded_for_wins_and_junk_entries_are_the_client() {
    let ts = TestServer::start_with(
        "[app]\ntrustedproxies = 127.0.0.2\n[stats]\nallowed_ips = 198.51.100.7\n",
    )
    .await;
    let cases = [
        // X-Real-IP alone, from the trusted proxy.
        ("X-Real-IP: 198.51.100.7\r\n", true),
        // A client's X-Real-IP passed through: the proxy's X-Forwarded-For
        // names the real client.
        (
            "X-Real-IP: 198.51.100.7\r\nX-Forwarded-For: 203.0.113.9\r\n",
            false,
        ),
        // An entry that is not an address is the client: not skipped.
        ("X-Forwarded-For: 198.51.100.7, nonsense\r\n", false),
        (
            "X-Forwarded-For: 198.51.100.7, nonsense, 127.0.0.2\r\n",
            false,
        ),
        (
            "X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-For: localhost\r\n",
            false,
        ),
        ("X-Real-IP: nonsense\r\n", false),
        // Several lines are one list; trusted proxies are skipped.
        (
            "X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-For: 127.0.0.2\r\n",
            true,
        ),
    ];
    for (headers, allowed) in cases {
        let status = metrics_status(&ts, "127.0.0.2", headers).await;
        let want = if allowed {
            "HTTP/1.1 200"
        } else {
            "HTTP/1.1 403"
        };
        assert!(status.starts_with(want), "{headers:?}: {status}");
    }
    ts.stop().await;
}

/// A client behind a proxy that passes `X-Real-IP` through cannot change
/// the address it is throttled under.
#[tokio::test]
async fn a_passed_through_x_real_ip_does_not_escape_the_throttle() {
    let ts = TestServer::start_with(
        "[app]\ntrustedproxies = 127.0.0.2\n[clients]\nmaxfailedhellos = 1\nfailedhellowindow = 60\n",
    )
    .await;
    let via = |xri: &'static str| [("X-Real-IP", xri), ("X-Forwarded-For", "198.51.100.9")];
    let mut c = ws_via(&ts, "127.0.0.2", &via("203.0.113.1")).await;
    assert_eq!(guess_resume(&mut c).await, "no_such_session");
    let mut c = ws_via(&ts, "127.0.0.2", &via("203.0.113.2")).await;
    assert_eq!(guess_resume(&mut c).await, "too_many_requests");
    // Another client behind the same proxy is not affected.
    let mut other = ws_via(&ts, "127.0.0.2", &[("X-Forwarded-For", "198.51.100.10")]).await;
    assert_eq!(guess_resume(&mut other).await, "no_such_session");
    ts.stop().await;
}

/// Set in the child that runs a test inside its own network namespace.
const NETNS: &str = "SPREED_FORWARDED_NETNS";

/// Runs `test` of this module again under `unshare -n` (where the loopback
/// interface also has the LAN address 10.0.0.5) and asserts it passed
/// there; true when the caller is that child and runs the body. Where
/// namespaces are not available the test says so and skips.
fn in_namespace(test: &str) -> bool {
    if std::env::var_os(NETNS).is_some() {
        for cmd in ["ip link set lo up", "ip addr add 10.0.0.5/32 dev lo"] {
            let args: Vec<&str> = cmd.split(' ').collect();
            let s = std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .unwrap();
            assert!(s.success(), "`{cmd}` failed");
        }
        return true;
    }
    let usable = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !usable {
        eprintln!("SKIPPED {test}: `unshare -n` failed (needs root or CAP_SYS_ADMIN)");
        return false;
    }
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let status = std::process::Command::new("unshare")
        .arg("-n")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &format!("{module}::{test}"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(NETNS, "1")
        .status()
        .unwrap();
    assert!(status.success(), "{test} failed inside its namespace");
    false
}

/// The default `[app] trustedproxies` is loopback only: a LAN host (here
/// 10.0.0.5, a private address the Go server trusts by default) that sends
/// `X-Real-IP` or `X-Forwarded-For` naming 127.0.0.1 is not believed and
/// does not get `/metrics` (allowed from loopback by default); a proxy on
/// loopback still is believed.
#[test]
fn by_default_only_loopback_proxies_are_believed() {
    if !in_namespace("by_default_only_loopback_proxies_are_believed") {
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let nc = FakeNextcloud::start().await;
        let cfg = spreed_signaling::config::Config::parse(&config_text(&nc, "")).unwrap();
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
        let server = spreed_signaling::server::Server::start(cfg, Some(listener))
            .await
            .unwrap();
        let port = server.addr.port();
        let ts = TestServer {
            server: Some(server),
            nc,
            url: format!("http://127.0.0.1:{port}"),
        };
        let lan = SocketAddr::from(([10, 0, 0, 5], port));
        let status = |from: &'static str, to: SocketAddr, headers: &'static str| async move {
            let mut s = connect_from(from, to).await;
            s.write_all(
                format!("GET /metrics HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut all = Vec::new();
            tokio::time::timeout(TIMEOUT, s.read_to_end(&mut all))
                .await
                .expect("no answer")
                .unwrap();
            let all = String::from_utf8_lossy(&all).to_string();
            all.split(' ').nth(1).unwrap_or("").to_string()
        };
        let local = SocketAddr::from(([127, 0, 0, 1], port));
        // Loopback itself, and a loopback proxy naming a loopback client.
        assert_eq!(status("127.0.0.1", local, "").await, "200");
        assert_eq!(
            status("127.0.0.1", local, "X-Real-IP: 127.0.0.1\r\n").await,
            "200"
        );
        // A loopback proxy naming a LAN client: believed, so refused.
        assert_eq!(
            status("127.0.0.1", local, "X-Forwarded-For: 10.0.0.9\r\n").await,
            "403"
        );
        assert_eq!(
            status("127.0.0.1", local, "X-Real-IP: 10.0.0.9\r\n").await,
            "403"
        );
        // The LAN host claiming loopback: not believed.
        assert_eq!(status("10.0.0.5", lan, "").await, "403");
        assert_eq!(
            status("10.0.0.5", lan, "X-Real-IP: 127.0.0.1\r\n").await,
            "403"
        );
        assert_eq!(
            status("10.0.0.5", lan, "X-Forwarded-For: 127.0.0.1\r\n").await,
            "403"
        );
        assert_eq!(
            status(
                "10.0.0.5",
                lan,
                "X-Forwarded-For: 127.0.0.1\r\nX-Real-IP: 127.0.0.1\r\n"
            )
            .await,
            "403"
        );
        ts.stop().await;
    });
}
