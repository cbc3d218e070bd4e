//! Start-up says who it is (version, config path, backends, bus, MCU,
//! listeners) and warns about every finding of the configuration.

use crate::support::*;

/// The INFO lines and a WARN for an unknown key and a sample secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_says_who_it_is() {
    let nc = FakeNextcloud::start().await;
    let node = Node::start(
        &nc,
        "[http]\nlisen = 0.0.0.0:80\n[sessions]\nblockkey = change-me-012345\n",
        &[("RUST_LOG", "info")],
    )
    .await;
    let p = &node.proc;
    let version = env!("CARGO_PKG_VERSION");
    p.wait_line(0, |l| {
        l.contains("spreed-signaling starting")
            && l.contains(&format!("version=\"{version}\""))
            && l.contains("server.conf")
    })
    .await;
    p.wait_line(0, |l| {
        l.contains("INFO") && l.contains("backend") && l.contains("id=nc1")
    })
    .await;
    p.wait_line(0, |l| l.contains("bus: in-process")).await;
    p.wait_line(0, |l| l.contains("MCU: none")).await;
    p.wait_line(0, |l| l.contains("listening (http)")).await;
    p.wait_line(0, |l| {
        l.contains("WARN")
            && l.contains("[http] lisen: unknown key, not read (did you mean `listen`?)")
    })
    .await;
    p.wait_line(0, |l| {
        l.contains("WARN") && l.contains("[sessions] blockkey: the sample's value")
    })
    .await;
}

/// NATS that does not answer: a WARN instead of a silent wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_nats_is_warned_about() {
    let nc = FakeNextcloud::start().await;
    let port = free_port();
    let dir = fresh_dir("spreed-nats-down");
    let path = dir.join("server.conf");
    std::fs::write(
        &path,
        config_text(&nc, &format!("[nats]\nurl = nats://127.0.0.1:{port}\n")),
    )
    .unwrap();
    let p = LoggedProcess::spawn_with_env(
        &["--config", path.to_str().unwrap()],
        &[("RUST_LOG", "info")],
    );
    p.wait_line(0, |l| {
        l.contains("WARN") && l.contains("[nats] url: NATS does not answer")
    })
    .await;
    // Signals while start-up waits: SIGHUP does not kill it, SIGTERM stops
    // it (exit 0, not killed by a signal).
    p.signal("-HUP");
    p.signal("-TERM");
    let mut p = p;
    let code = tokio::time::timeout(TIMEOUT, async {
        loop {
            if let Some(status) = p.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the server stops on SIGTERM while waiting for NATS");
    assert_eq!(code, Some(0), "{}", p.lines().join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGHUP: what the new file holds is warned about as at start-up, and a
/// refused key keeps the running configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_warns_and_refuses_as_start_up_does() {
    let nc = FakeNextcloud::start().await;
    let node = Node::start(&nc, "", &[("RUST_LOG", "info")]).await;
    let text = std::fs::read_to_string(&node.config_path).unwrap();
    std::fs::write(
        &node.config_path,
        format!("{text}[http]\nlisen = 0.0.0.0:80\n"),
    )
    .unwrap();
    let skip = node.proc.lines().len();
    node.proc.signal("-HUP");
    node.proc
        .wait_line(skip, |l| {
            l.contains("WARN") && l.contains("[http] lisen: unknown key, not read")
        })
        .await;
    std::fs::write(&node.config_path, format!("{text}[mcu]\ntype = proxy\n")).unwrap();
    let skip = node.proc.lines().len();
    node.proc.signal("-HUP");
    node.proc
        .wait_line(skip, |l| {
            l.contains("keeping the running configuration")
                && l.contains("[mcu] url: required with type proxy")
        })
        .await;
    // Still serving.
    let r = reqwest::get(format!("{}/api/v1/welcome", node.http_url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
