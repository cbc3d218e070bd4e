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

/// The installed unit (cargo-deb puts it under lib/ or usr/lib/).
fn unit_of(root: &Path) -> String {
    ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| root.join(d).join("spreed-signaling.service"))
        .find(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .expect("the package installs spreed-signaling.service")
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
    let unit = unit_of(&root);
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
