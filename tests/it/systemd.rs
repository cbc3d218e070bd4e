//! `Type=notify`: the binary tells systemd (through `NOTIFY_SOCKET`) when it
//! is ready, feeds the watchdog, and reports reloads and stopping.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn the_binary_speaks_the_systemd_notify_protocol() {
    let nc = FakeNextcloud::start().await;
    let dir = fresh_dir("spreed-notify");
    let sock_path = dir.join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&sock_path).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = config_text(&nc, "").replace(
        "listen = 127.0.0.1:0",
        &format!("listen = 127.0.0.1:{port}"),
    );
    let config_path = dir.join("server.conf");
    std::fs::write(&config_path, config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
        .arg("--config")
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let ready = next(&sock).await;
    assert!(ready.starts_with("READY=1"), "{ready}");
    assert!(ready.contains(&format!("127.0.0.1:{port}")), "{ready}");
    // Ready means listening.
    std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut seen_watchdog = false;
    while !seen_watchdog {
        seen_watchdog = next(&sock).await == "WATCHDOG=1";
    }
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    kill("-HUP");
    let mut states = Vec::new();
    while !states.contains(&"READY=1".to_string()) {
        let m = next(&sock).await;
        if m != "WATCHDOG=1" {
            states.push(m);
        }
    }
    assert_eq!(states, vec!["RELOADING=1", "READY=1"]);
    kill("-TERM");
    loop {
        let m = next(&sock).await;
        if m == "STOPPING=1" {
            break;
        }
        assert_eq!(m, "WATCHDOG=1");
    }
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The next notification (a datagram) from the server.
async fn next(sock: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
        .await
        .expect("a notification")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}
