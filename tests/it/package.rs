//! The Debian package that `scripts/deb` built (it names the file in
//! `SPREED_DEB` and runs this module): what it installs, and its binary
//! serving with its configuration once the sample's secrets and Nextcloud
//! are filled in.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use serde_json::json;

use crate::support::*;

/// The packaged binary, killed on drop.
struct Packaged(Child);

impl Packaged {
    /// The binary of the package unpacked in `root` with `args` and
    /// `--config <config>`, once it listens on `port`.
    async fn start(root: &Path, args: &[&str], config: &Path, port: u16) -> Packaged {
        let child = Command::new(root.join("usr/bin/spreed-signaling"))
            .args(args)
            .arg("--config")
            .arg(config)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let p = Packaged(child);
        wait_listening(port).await;
        p
    }
}

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

/// The package `scripts/deb` named in `SPREED_DEB`, unpacked in a fresh
/// directory named after `prefix`: (package, root); None (the test is
/// skipped) without it.
fn unpacked(prefix: &str) -> Option<(OsString, PathBuf)> {
    let Some(deb) = std::env::var_os("SPREED_DEB") else {
        eprintln!("skipped: scripts/deb builds the package and runs this test");
        return None;
    };
    let root: PathBuf = fresh_dir(prefix);
    dpkg_deb(&["-x".as_ref(), deb.as_ref(), root.as_os_str()]);
    Some((deb, root))
}

/// Asserts that the installed unit `name` (cargo-deb puts it under lib/
/// or usr/lib/) has each of `lines`.
fn assert_unit(root: &Path, name: &str, lines: &[&str]) {
    let unit = ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| root.join(d).join(name))
        .find(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|| panic!("the package installs {name}"));
    for line in lines {
        assert!(
            unit.lines().any(|l| l == *line),
            "{line} missing in:\n{unit}"
        );
    }
}

/// The conffile `/etc/spreed-signaling/<name>` in `root`, asserted to be
/// the source tree's `<sample>`.
fn conffile_is_sample(root: &Path, name: &str, sample: &str) -> String {
    let conf = std::fs::read_to_string(root.join("etc/spreed-signaling").join(name)).unwrap();
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(sample)).unwrap();
    assert_eq!(conf, shipped, "the conffile is the sample");
    conf
}

/// `conf` with the lines that `new(section, key)` replaces (a section's
/// own line has its name as key).
fn with_lines(conf: &str, new: impl Fn(&str, &str) -> Option<String>) -> String {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in conf.lines() {
        if line.starts_with('[') {
            section = line.to_string();
        }
        let key = line.split('=').next().unwrap_or("").trim();
        out.push(new(&section, key).unwrap_or_else(|| line.to_string()));
    }
    out.join("\n")
}

/// The sample's placeholders replaced: a free port, the fake Nextcloud
/// and its secret, other secrets of the right length.
fn fill(conf: &str, port: u16, nc: &FakeNextcloud) -> String {
    with_lines(conf, |section, key| {
        Some(match (section, key) {
            ("[http]", "listen") => format!("listen = 127.0.0.1:{port}"),
            ("[sessions]", "hashkey") => "hashkey = 0123456789abcdef0123456789abcdef".into(),
            ("[sessions]", "blockkey") => "blockkey = 0123456789abcdef".into(),
            ("[clients]", "internalsecret") => format!("internalsecret = {INTERNAL_SECRET}"),
            ("[nextcloud]", "url") => format!("url = {}", nc.url),
            ("[nextcloud]", "secret") => format!("secret = {SECRET}"),
            _ => return None,
        })
    })
}

#[tokio::test]
async fn the_packaged_binary_serves_with_the_packaged_configuration() {
    let Some((deb, root)) = unpacked("spreed-deb") else {
        return;
    };
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
    assert_unit(
        &root,
        "spreed-signaling.service",
        &[
            "Type=notify",
            "ExecStart=/usr/bin/spreed-signaling --config /etc/spreed-signaling/server.conf",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "StateDirectory=spreed-signaling",
        ],
    );
    let sample = conffile_is_sample(&root, "server.conf", "server.conf.sample");

    let nc = FakeNextcloud::start().await;
    let port = free_port();
    let config = root.join("etc/spreed-signaling/server.conf");
    std::fs::write(&config, fill(&sample, port, &nc)).unwrap();
    let mut server = Packaged::start(&root, &[], &config, port).await;
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
    with_lines(conf, |section, key| {
        Some(match (section, key) {
            ("[http]", "listen") => format!("listen = 127.0.0.1:{port}"),
            ("[mcu]", "url") => format!("url = {janus}"),
            ("[tokens]", "[tokens]") => format!("[tokens]\nserver1 = {}", public.display()),
            _ => return None,
        })
    })
}

#[tokio::test]
async fn the_packaged_proxy_serves_with_the_packaged_proxy_conf() {
    let Some((deb, root)) = unpacked("spreed-deb-proxy") else {
        return;
    };
    assert_unit(
        &root,
        "spreed-signaling-proxy.service",
        &[
            "Type=notify",
            "ExecStart=/usr/bin/spreed-signaling proxy --config /etc/spreed-signaling/proxy.conf",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "User=spreed-signaling",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
        ],
    );
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
    let sample = conffile_is_sample(&root, "proxy.conf", "proxy.conf.sample");
    if !crate::support::janus::available() {
        eprintln!("SKIPPED running the packaged proxy: no janus");
        return;
    }
    let janus = crate::support::janus::Janus::start().await;
    let (private, public) = crate::support::proxy_procs::rsa_pair(&root, "server1");
    let port = free_port();
    let config = root.join("etc/spreed-signaling/proxy.conf");
    std::fs::write(&config, fill_proxy(&sample, port, &janus.url(), &public)).unwrap();
    let proxy = Packaged::start(&root, &["proxy"], &config, port).await;
    // A server with the key in [tokens] gets a session.
    let (_c, hello) =
        crate::support::proxy_procs::session(&format!("ws://127.0.0.1:{port}/proxy"), &private)
            .await;
    assert!(hello["hello"]["sessionid"].is_string(), "{hello}");
    drop(proxy);
    let _ = std::fs::remove_dir_all(&root);
}
