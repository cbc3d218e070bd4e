//! `spreed-signaling check`: the binary probes what the configuration points
//! at and names the key to fix.

use crate::support;

use crate::support::*;

/// Runs `spreed-signaling --config <file> check`; (exit ok, output).
pub(crate) async fn check(config: String) -> (bool, String) {
    let dir = fresh_dir("spreed-check");
    let path = dir.join("server.conf");
    std::fs::write(&path, config).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
            .arg("--config")
            .arg(&path)
            .arg("check")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    (out.status.success(), text)
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_configuration_passes_every_probe() {
    let nc = FakeNextcloud::start().await;
    let nats = NatsServer::start().await;
    let (ok, out) = check(config_text(&nc, &format!("[nats]\nurl = {}\n", nats.url()))).await;
    assert!(ok, "{out}");
    assert!(out.contains("OK   [nc1] url:"), "{out}");
    assert!(out.contains("OK   [nc1] secret accepted"), "{out}");
    assert!(out.contains("OK   [nats] url: connected"), "{out}");
    // No hello v2 key in this Nextcloud's capabilities: a warning only.
    assert!(out.contains("WARN [nc1] url:"), "{out}");
    // Only check lines: no log line of the NATS client among them.
    for l in out.lines() {
        assert!(
            l.starts_with("OK   ") || l.starts_with("WARN ") || l.starts_with("FAIL "),
            "{l}\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_named() {
    let nc = FakeNextcloud::start().await;
    let text =
        config_text(&nc, "").replace(&format!("secret = {SECRET}"), "secret = not-the-secret");
    let (ok, out) = check(text).await;
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL [nc1] secret:"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_url_and_a_stopped_nats_are_named() {
    let nc = FakeNextcloud::start().await;
    let bad = format!("http://127.0.0.1:{}", closed_port());
    let text = config_text(
        &nc,
        &format!("[nats]\nurl = nats://127.0.0.1:{}\n", closed_port()),
    )
    .replace(&format!("url = {}", nc.url), &format!("url = {bad}"));
    let (ok, out) = check(text).await;
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL [nc1] url:"), "{out}");
    assert!(out.contains("FAIL [nats] url:"), "{out}");
}

/// `[logging] format = json`: every log line is a JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_can_be_json_lines() {
    let nc = FakeNextcloud::start().await;
    let dir = fresh_dir("spreed-log");
    let path = dir.join("server.conf");
    std::fs::write(
        &path,
        config_text(&nc, "[logging]\nformat = json\nlevel = info\n"),
    )
    .unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(out).lines() {
            let line = line.unwrap();
            let done = line.contains("listening");
            lines.push(line);
            if done {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        lines
    })
    .await
    .unwrap();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
        assert!(v["level"].is_string(), "{l}");
    }
}

/// The NATS probe uses the credentials of `[nats] url`, as the server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_probe_uses_the_url_credentials() {
    let nc = FakeNextcloud::start().await;
    let nats = NatsServer::start_with_args(&["--auth", "s3cret-token"]).await;
    let good = format!(
        "[nats]\nurl = nats://s3cret-token@127.0.0.1:{}\n",
        nats.port
    );
    let (ok, out) = check(config_text(&nc, &good)).await;
    assert!(ok, "{out}");
    assert!(out.contains("OK   [nats] url: connected"), "{out}");
    let bad = format!("[nats]\nurl = nats://wrong@127.0.0.1:{}\n", nats.port);
    let (ok, out) = check(config_text(&nc, &bad)).await;
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL [nats] url:"), "{out}");
    assert!(!out.contains("wrong"), "credentials printed: {out}");
}

/// `[mcu]`: Janus is asked `info` over its WebSocket API; a real Janus
/// passes, a closed port and a server that is not Janus are named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn janus_is_probed_at_the_mcu_url() {
    let nc = FakeNextcloud::start().await;
    let janus = support::janus::Janus::start().await;
    let mcu = |url: &str| config_text(&nc, &format!("[mcu]\ntype = janus\nurl = {url}\n"));
    let (ok, out) = check(mcu(&format!("ws://127.0.0.1:{}", janus.port))).await;
    assert!(ok, "{out}");
    assert!(out.contains("OK   [mcu] url: Janus "), "{out}");
    assert!(out.contains("with the videoroom plugin"), "{out}");

    let (ok, out) = check(mcu(&format!("ws://127.0.0.1:{}", closed_port()))).await;
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL [mcu] url: cannot connect"), "{out}");

    // Something else on that address (here: the fake Nextcloud's HTTP).
    let other = nc.url.replace("http://", "ws://");
    let (ok, out) = check(mcu(&other)).await;
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL [mcu] url:"), "{out}");
    // The backend lines are unaffected.
    assert!(out.contains("OK   [nc1] secret accepted"), "{out}");
}

/// `[https]`: the certificate and key are loaded as the server would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_certificate_is_named() {
    let nc = FakeNextcloud::start().await;
    let dir = fresh_dir("spreed-check-cert");
    let cert = dir.join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let text = config_text(
        &nc,
        &format!(
            "[https]\nlisten = 127.0.0.1:0\ncertificate = {}\nkey = {}\n",
            cert.display(),
            dir.join("missing.key").display()
        ),
    );
    let (ok, out) = check(text).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL [https] certificate: no certificate in"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A key of earlier versions that is no longer read is named with its
/// replacement (a warning: the server still starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_proxyips_key_is_named() {
    let nc = FakeNextcloud::start().await;
    let (ok, out) = check(config_text(&nc, "[http]\nproxyips = 10.0.0.1\n")).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("WARN [http] proxyips: no longer read; list your reverse proxies in [app] trustedproxies"),
        "{out}"
    );
}

/// Runs the server itself on `config`; (exit code, stderr) once it
/// stopped, which a refused configuration does before binding anything.
async fn start_refused(config: String) -> (Option<i32>, String) {
    let dir = fresh_dir("spreed-refused");
    let path = dir.join("server.conf");
    std::fs::write(&path, config).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
            .arg("--config")
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A server that started would run on: give it 10 s, then stop it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Features of the Go server this server lacks stop start-up (exit 2)
/// and fail `check`, naming the key: `[grpc]` keys without NATS
/// (`[mcu] type = proxy` works: `mcu_proxy_go.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_this_server_lacks_are_refused() {
    let nc = FakeNextcloud::start().await;
    for (extra, key) in [("[grpc]\ntargets = 127.0.0.1:9090\n", "[grpc] targets:")] {
        let (code, err) = start_refused(config_text(&nc, extra)).await;
        assert_eq!(code, Some(2), "{extra}: {err}");
        assert!(err.contains(key), "{extra}: {err}");
        let (ok, out) = check(config_text(&nc, extra)).await;
        assert!(!ok, "{out}");
        assert!(out.contains(&format!("FAIL {key}")), "{out}");
        // The backend is probed all the same.
        assert!(out.contains("OK   [nc1] secret accepted"), "{out}");
    }
    // SRV discovery of etcd is not implemented: refused, naming the key.
    let extra = "[etcd]\ndiscoverysrv = example.com\n";
    let (code, err) = start_refused(config_text(&nc, extra)).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("[etcd] discoverysrv:"), "{err}");
    let (ok, out) = check(config_text(&nc, extra)).await;
    assert!(!ok, "{out}");
    // Debian's file has these sections with comments only: nothing said.
    let empty =
        "[mcu]\n[turn]\n[geoip]\n[geoip-overrides]\n[continent-overrides]\n[etcd]\n[grpc]\n";
    let (ok, out) = check(config_text(&nc, empty)).await;
    assert!(ok, "{out}");
    for s in ["mcu", "turn", "geoip", "etcd", "grpc", "continent"] {
        assert!(!out.contains(&format!("[{s}")), "{s}: {out}");
    }
}

/// What check names in a file that parses: unknown keys (with a
/// suggestion), unset `$(VAR)`, sample secrets, risky values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_unset_variables_and_sample_secrets_are_named() {
    let nc = FakeNextcloud::start().await;
    let text = config_text(
        &nc,
        "[http]\nlisen = 0.0.0.0:80\n[backend]\nskipverify = true\n",
    )
    .replace(
        &format!("internalsecret = {INTERNAL_SECRET}"),
        "internalsecret = change-me-internal-secret",
    );
    let (ok, out) = check(text.clone()).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("WARN [http] lisen: unknown key, not read (did you mean `listen`?)"),
        "{out}"
    );
    assert!(
        out.contains("FAIL [clients] internalsecret: the sample's value"),
        "{out}"
    );
    assert!(out.contains("WARN [backend] skipverify:"), "{out}");
    // Without the sample secret: warnings only, exit 0.
    let (ok, out) = check(text.replace("change-me-internal-secret", "x9f3kq0s7d")).await;
    assert!(ok, "{out}");
    let with_var = config_text(&nc, "").replace(
        &format!("secret = {SECRET}"),
        "secret = $(SPREED_CHECK_UNSET_VARIABLE)",
    );
    let (ok, out) = check(with_var).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL [nc1] secret: $(SPREED_CHECK_UNSET_VARIABLE) is not set"),
        "{out}"
    );
    let none = config_text(&nc, "").replace("backends = nc1", "backends =");
    let (ok, out) = check(none).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL [backend] backends: no backend configured"),
        "{out}"
    );
}

/// The legacy form `[backend] allowed = host:port` (with the common
/// secret) passes when Nextcloud answers over one of http and https.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_allowed_host_passes() {
    let nc = FakeNextcloud::start().await;
    let host = nc.url.trim_start_matches("http://").to_string();
    let text = format!(
        "[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\n[clients]\ninternalsecret = {INTERNAL_SECRET}\n\
         [backend]\nallowed = {host}\nsecret = {SECRET}\n"
    );
    let (ok, out) = check(text).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("OK   [backend] allowed secret accepted"),
        "{out}"
    );
    assert!(!out.contains(&format!("[{host}]")), "{out}");
}

/// `check | head -1`: a closed stdout ends the printing, not with a
/// panic (exit 101).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_is_no_panic() {
    let nc = FakeNextcloud::start().await;
    let dir = fresh_dir("spreed-check-pipe");
    let path = dir.join("server.conf");
    std::fs::write(&path, config_text(&nc, "")).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
            .arg("--config")
            .arg(&path)
            .arg("check")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The reading end closes before anything is written.
        drop(child.stdout.take());
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
