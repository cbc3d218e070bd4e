//! The Debian package that `scripts/deb` built (it names the file in
//! `SPREED_DEB` and runs this module): what it installs, and its binary
//! serving with its configuration once the sample's secrets and Nextcloud
//! are filled in.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use serde_json::json;

use crate::support::*;

/// The packaged binary, killed on drop.
struct Packaged(Child);

impl Drop for Packaged {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dpkg_deb(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new("dpkg-deb").args(args).output().unwrap();
    assert!(out.status.success(), "dpkg-deb {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The installed unit `name` (cargo-deb puts it under lib/ or usr/lib/).
fn unit_of(root: &Path, name: &str) -> String {
    ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| root.join(d).join(name))
        .find(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|| panic!("the package installs {name}"))
}

/// The sample's placeholders replaced: a free port, the fake Nextcloud
/// and its secret, other secrets of the right length.
fn fill(conf: &str, port: u16, nc: &FakeNextcloud) -> String {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in conf.lines() {
        if line.starts_with('[') {
            section = line.to_string();
        }
        let key = line.split('=').next().unwrap_or("").trim();
        let new = match (section.as_str(), key) {
            ("[http]", "listen") => format!("listen = 127.0.0.1:{port}"),
            ("[sessions]", "hashkey") => "hashkey = 0123456789abcdef0123456789abcdef".into(),
            ("[sessions]", "blockkey") => "blockkey = 0123456789abcdef".into(),
            ("[clients]", "internalsecret") => format!("internalsecret = {INTERNAL_SECRET}"),
            ("[nextcloud]", "url") => format!("url = {}", nc.url),
            ("[nextcloud]", "secret") => format!("secret = {SECRET}"),
            _ => line.to_string(),
        };
        out.push(new);
    }
    out.join("\n")
}

#[tokio::test]
async fn the_packaged_binary_serves_with_the_packaged_configuration() {
    let Some(deb) = std::env::var_os("SPREED_DEB") else {
        eprintln!("skipped: scripts/deb builds the package and runs this test");
        return;
    };
    let root: PathBuf = fresh_dir("spreed-deb");
    dpkg_deb(&["-x".as_ref(), deb.as_ref(), root.as_os_str()]);
    let conffiles = dpkg_deb(&["--info".as_ref(), deb.as_ref(), "conffiles".as_ref()]);
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/spreed-signaling/server.conf"),
        "{conffiles}"
    );
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/spreed-signaling/proxy.conf"),
        "{conffiles}"
    );
    let unit = unit_of(&root, "spreed-signaling.service");
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/spreed-signaling --config /etc/spreed-signaling/server.conf",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=spreed-signaling",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing in:\n{unit}"
        );
    }
    let sample = std::fs::read_to_string(root.join("etc/spreed-signaling/server.conf")).unwrap();
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("server.conf.sample"))
            .unwrap();
    assert_eq!(sample, shipped, "the conffile is the sample");

    let nc = FakeNextcloud::start().await;
    let port = free_port();
    let config = root.join("etc/spreed-signaling/server.conf");
    std::fs::write(&config, fill(&sample, port, &nc)).unwrap();
    let mut server = Packaged(
        Command::new(root.join("usr/bin/spreed-signaling"))
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port).await;
    let welcome: serde_json::Value =
        reqwest::get(format!("http://127.0.0.1:{port}/api/v1/welcome"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        welcome["nextcloud-spreed-signaling"], "Welcome",
        "{welcome}"
    );
    // The filled-in Nextcloud and secret are the ones it uses.
    let mut c = Client::connect(&format!("ws://127.0.0.1:{port}/spreed")).await;
    c.expect_type("welcome").await;
    c.hello_v1(&nc.backend_url(), json!({"userid": "alice"}))
        .await;
    assert!(!c.session_id.is_empty());
    let pid = server.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || server.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&root);
}

/// The proxy sample's placeholders replaced: a free port, a Janus, the
/// test's server key.
fn fill_proxy(conf: &str, port: u16, janus: &str, public: &Path) -> String {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in conf.lines() {
        if line.starts_with('[') {
            section = line.to_string();
        }
        let key = line.split('=').next().unwrap_or("").trim();
        out.push(match (section.as_str(), key) {
            ("[http]", "listen") => format!("listen = 127.0.0.1:{port}"),
            ("[mcu]", "url") => format!("url = {janus}"),
            _ => line.to_string(),
        });
        if line == "[tokens]" {
            out.push(format!("server1 = {}", public.display()));
        }
    }
    out.join("\n")
}

#[tokio::test]
async fn the_packaged_proxy_serves_with_the_packaged_proxy_conf() {
    let Some(deb) = std::env::var_os("SPREED_DEB") else {
        eprintln!("skipped: scripts/deb builds the package and runs this test");
        return;
    };
    let root: PathBuf = fresh_dir("spreed-deb-proxy");
    dpkg_deb(&["-x".as_ref(), deb.as_ref(), root.as_os_str()]);
    let unit = unit_of(&root, "spreed-signaling-proxy.service");
    for line in [
        "Type=notify",
        "ExecStart=/usr/bin/spreed-signaling proxy --config /etc/spreed-signaling/proxy.conf",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=spreed-signaling",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line} missing in:\n{unit}"
        );
    }
    // Installed, neither enabled nor started by the package: enabled again
    // on upgrades only where the admin had enabled it (debhelper's
    // --no-enable form), only restarted where it runs.
    let postinst = dpkg_deb(&["--info".as_ref(), deb.as_ref(), "postinst".as_ref()]);
    assert!(
        postinst.contains("deb-systemd-helper debian-installed spreed-signaling-proxy.service"),
        "{postinst}"
    );
    for l in postinst
        .lines()
        .filter(|l| l.contains("spreed-signaling-proxy"))
    {
        assert!(
            !l.contains("_dh_action") && !l.contains("invoke start"),
            "the proxy is started: {l}"
        );
    }
    let sample = std::fs::read_to_string(root.join("etc/spreed-signaling/proxy.conf")).unwrap();
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proxy.conf.sample"))
            .unwrap();
    assert_eq!(sample, shipped, "the conffile is the sample");
    if !crate::support::janus::available() {
        eprintln!("SKIPPED running the packaged proxy: no janus");
        return;
    }
    let janus = crate::support::janus::Janus::start().await;
    let (private, public) = crate::support::proxy_procs::rsa_pair(&root, "server1");
    let port = free_port();
    let config = root.join("etc/spreed-signaling/proxy.conf");
    std::fs::write(&config, fill_proxy(&sample, port, &janus.url(), &public)).unwrap();
    let proxy = Packaged(
        Command::new(root.join("usr/bin/spreed-signaling"))
            .args(["proxy", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_listening(port).await;
    // A server with the key in [tokens] gets a session.
    let (_c, hello) =
        crate::support::proxy_procs::session(&format!("ws://127.0.0.1:{port}/proxy"), &private)
            .await;
    assert!(hello["hello"]["sessionid"].is_string(), "{hello}");
    drop(proxy);
    let _ = std::fs::remove_dir_all(&root);
}
