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
    let _ = std::fs::remove_dir_all(&dir);
}
