//! SIGHUP on the real binary: `[app]` and `[stats]` take effect at once,
//! sessions stay, and settings that need a restart are logged as such.

use crate::support::*;
use serde_json::json;

/// Status of `GET /metrics` sent from the loopback address `from`, with an
/// optional `X-Real-IP`.
async fn metrics_status(port: u16, from: &str, real_ip: Option<&str>) -> u16 {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<std::net::IpAddr>().unwrap())
        .build()
        .unwrap();
    let mut req = client.get(format!("http://127.0.0.1:{port}/metrics"));
    if let Some(ip) = real_ip {
        req = req.header("X-Real-IP", ip);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn sighup_reloads_app_and_stats_and_names_what_needs_a_restart() {
    let nc = FakeNextcloud::start().await;
    let dir = fresh_dir("spreed-reload");
    let port = free_port();
    let base = config_text(&nc, "").replace(
        "listen = 127.0.0.1:0",
        &format!("listen = 127.0.0.1:{port}"),
    );
    let config_path = dir.join("server.conf");
    std::fs::write(
        &config_path,
        format!("{base}[app]\ntrustedproxies = 192.0.2.1\n[stats]\nallowed_ips = 198.51.100.7\n"),
    )
    .unwrap();
    let server = LoggedProcess::spawn(&["--config", config_path.to_str().unwrap()]);
    wait_listening(port).await;
    let ws_url = format!("ws://127.0.0.1:{port}/spreed");

    // Loopback is no trusted proxy here, and no allowed stats address.
    assert_eq!(
        metrics_status(port, "127.0.0.1", Some("198.51.100.7")).await,
        403
    );
    assert_eq!(metrics_status(port, "127.0.0.2", None).await, 403);
    let mut alice = Client::connect(&ws_url).await;
    alice.expect_type("welcome").await;
    alice
        .hello_v1(&nc.backend_url(), json!({"userid": "alice"}))
        .await;

    std::fs::write(
        &config_path,
        format!(
            "{base}[app]\ntrustedproxies = 127.0.0.1\n[stats]\nallowed_ips = 198.51.100.7, 127.0.0.2\n\
             [clients]\nhellotimeout = 5\n"
        ),
    )
    .unwrap();
    let skip = server.lines().len();
    server.signal("-HUP");
    let restart = server
        .wait_line(skip, |l| l.contains("need a restart"))
        .await;
    assert!(restart.contains("[clients]"), "{restart}");
    assert!(
        !restart.contains("[app]") && !restart.contains("[stats]"),
        "{restart}"
    );
    server
        .wait_line(skip, |l| {
            l.contains("[app] trustedproxies and [stats] allowed_ips reloaded")
        })
        .await;

    assert_eq!(
        metrics_status(port, "127.0.0.1", Some("198.51.100.7")).await,
        200
    );
    assert_eq!(metrics_status(port, "127.0.0.2", None).await, 200);
    assert_eq!(
        metrics_status(port, "127.0.0.3", Some("198.51.100.7")).await,
        403
    );
    // The session from before the reload goes on.
    alice.join("room1", "nc-alice").await;
    let mut bob = Client::connect(&ws_url).await;
    bob.expect_type("welcome").await;
    bob.hello_v1(&nc.backend_url(), json!({"userid": "bob"}))
        .await;
    bob.message_to(
        json!({"type": "session", "sessionid": alice.session_id}),
        json!({"after": "reload"}),
    )
    .await;
    let m = alice.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["after"], "reload");

    // A config that does not parse changes nothing.
    std::fs::write(
        &config_path,
        format!("{base}[app]\ntrustedproxies = nonsense\n"),
    )
    .unwrap();
    let skip = server.lines().len();
    server.signal("-HUP");
    let l = server
        .wait_line(skip, |l| l.contains("keeping the running configuration"))
        .await;
    assert!(l.contains("[app] trustedproxies"), "{l}");
    assert_eq!(metrics_status(port, "127.0.0.2", None).await, 200);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
