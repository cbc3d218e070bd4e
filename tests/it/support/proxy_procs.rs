//! Signaling proxies as child processes, and their protocol as a
//! signaling server speaks it: RSA key pairs and hello tokens,
//! `proxy.conf`, our proxy (`spreed-signaling proxy`) and the Go 0.4.1
//! proxy, each optionally in front of a Janus of its own, and the hello,
//! commands and events of mcu-proxy-notes.md §2.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::janus::Janus;
use super::{eventually, free_port, fresh_dir, Client, LoggedProcess};

/// The Go proxy 0.4.1 of Debian's package.
pub const GO_PROXY: &str = "/usr/bin/nextcloud-spreed-signaling-proxy";

/// An RSA key pair made with openssl: (private PEM path, public PEM path).
pub fn rsa_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let private = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genrsa");
    let ok = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl rsa -pubout");
    (private, public)
}

/// Seconds since the epoch (a token's `iat`).
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The token a signaling server sends: `{"iat", "iss"}` signed with `key`.
pub fn token(key: &Path, iss: &str, iat: i64, alg: Algorithm) -> String {
    let pem = std::fs::read(key).unwrap();
    jsonwebtoken::encode(
        &Header::new(alg),
        &json!({"iat": iat, "iss": iss}),
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

/// The `proxy.conf` of a proxy on `port` for `janus`, trusting `server1`.
pub fn proxy_conf(port: u16, janus: &Janus, public: &Path, extra: &str) -> String {
    format!(
        "[http]\nlisten = 127.0.0.1:{port}\n[app]\ntokentype = static\n\
         [tokens]\nserver1 = {}\n[mcu]\ntype = janus\nurl = {}\n{extra}",
        public.display(),
        janus.url()
    )
}

/// Waits until the proxy on `port` listens (it does once it reached
/// Janus).
async fn listening(port: u16) {
    eventually("the proxy listens", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
}

/// Our proxy as a child process with its log collected (killed on drop,
/// with its Janus when it has one of its own).
pub struct OurProxy {
    pub process: LoggedProcess,
    pub port: u16,
    pub conf: PathBuf,
    _janus: Option<Janus>,
}

impl OurProxy {
    /// Starts `spreed-signaling proxy --config <conf>` (written to `dir`)
    /// and waits until it listens.
    pub async fn start(dir: &Path, conf: &str, port: u16) -> OurProxy {
        OurProxy::spawn(dir, conf, port, None).await
    }

    /// A Janus and our proxy in front of it, accepting `public` as
    /// `server1`.
    pub async fn with_janus(dir: &Path, public: &Path) -> OurProxy {
        let janus = Janus::start().await;
        let port = free_port();
        let conf = proxy_conf(port, &janus, public, "");
        OurProxy::spawn(dir, &conf, port, Some(janus)).await
    }

    async fn spawn(dir: &Path, conf: &str, port: u16, janus: Option<Janus>) -> OurProxy {
        let path = dir.join(format!("proxy-{port}.conf"));
        std::fs::write(&path, conf).unwrap();
        let process = LoggedProcess::spawn(&["proxy", "--config", path.to_str().unwrap()]);
        listening(port).await;
        OurProxy {
            process,
            port,
            conf: path,
            _janus: janus,
        }
    }

    /// Where a server dials it.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/proxy", self.port)
    }

    /// The base URL a server's `[mcu] url` lists.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A test of our proxy: its directory, the key pair of `server1`, a
/// Janus, and our proxy in front of it.
pub struct ProxyTest {
    pub dir: PathBuf,
    pub private: PathBuf,
    pub public: PathBuf,
    pub janus: Janus,
    pub proxy: OurProxy,
}

impl ProxyTest {
    /// With `extra` in the proxy's `proxy.conf`; None (the test `name`
    /// says it is skipped) without Janus.
    pub async fn start(name: &str, extra: &str) -> Option<ProxyTest> {
        if !super::janus::available() {
            eprintln!("SKIPPED {name}: no janus");
            return None;
        }
        let dir = fresh_dir("proxy-test");
        let (private, public) = rsa_pair(&dir, "server1");
        let janus = Janus::start().await;
        let port = free_port();
        let proxy = OurProxy::start(&dir, &proxy_conf(port, &janus, &public, extra), port).await;
        Some(ProxyTest {
            dir,
            private,
            public,
            janus,
            proxy,
        })
    }
}

/// The Go proxy 0.4.1 as a child process with its log collected (killed
/// on drop, with its Janus when it has one of its own).
pub struct GoProxy {
    pub process: LoggedProcess,
    pub port: u16,
    _janus: Option<Janus>,
}

impl GoProxy {
    /// True when it is installed (scripts/test installs it); says so when
    /// not.
    pub fn installed() -> bool {
        let ok = Path::new(GO_PROXY).exists();
        if !ok {
            eprintln!("SKIPPED: {GO_PROXY} is not installed");
        }
        ok
    }

    /// Starts it with `conf` (written to `dir`) and waits until it
    /// listens; None when it is not installed.
    pub async fn start(dir: &Path, conf: &str, port: u16) -> Option<GoProxy> {
        if !GoProxy::installed() {
            return None;
        }
        Some(GoProxy::spawn(dir, conf, port, None).await)
    }

    /// A Janus and the Go proxy in front of it, accepting `public` as
    /// `server1` (the caller checked [`GoProxy::installed`]).
    pub async fn with_janus(dir: &Path, public: &Path) -> GoProxy {
        let janus = Janus::start().await;
        let port = free_port();
        let conf = proxy_conf(port, &janus, public, "[stats]\nallowed_ips = 127.0.0.1\n");
        GoProxy::spawn(dir, &conf, port, Some(janus)).await
    }

    async fn spawn(dir: &Path, conf: &str, port: u16, janus: Option<Janus>) -> GoProxy {
        let path = dir.join(format!("go-proxy-{port}.conf"));
        std::fs::write(&path, conf).unwrap();
        let process = LoggedProcess::spawn_program(GO_PROXY, &["-config", path.to_str().unwrap()]);
        listening(port).await;
        GoProxy {
            process,
            port,
            _janus: janus,
        }
    }

    /// Where a server dials it.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/proxy", self.port)
    }

    /// The base URL a server's `[mcu] url` lists.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Sends a hello for a new session with `token` and request id `id`;
/// returns its reply (events before it skipped).
pub async fn hello(c: &mut Client, id: &str, token: &str) -> Value {
    c.send(json!({"id": id, "type": "hello", "hello": {"version": "1.0", "resumeid": "", "token": token}}))
        .await;
    c.wait_for(|m| m["id"] == id).await
}

/// A new session on the proxy at `url`: the hello reply and the event.
pub async fn session(url: &str, key: &Path) -> (Client, Value) {
    let mut c = Client::connect(url).await;
    let h = hello(&mut c, "1", &token(key, "server1", now(), Algorithm::RS256)).await;
    assert_eq!(h["type"], "hello", "{h}");
    let e = c.recv().await;
    assert_eq!(e["type"], "event", "{e}");
    (c, h)
}

/// Sends a command; returns its reply (a `bye` first fails).
pub async fn command(c: &mut Client, id: &str, cmd: Value) -> Value {
    c.send(json!({"id": id, "type": "command", "command": cmd}))
        .await;
    let r = c.wait_for(|m| m["id"] == id || m["type"] == "bye").await;
    assert_eq!(r["id"], id, "{r}");
    r
}

/// Waits for an event of `kind` (other messages skipped).
pub async fn event(c: &mut Client, kind: &str) -> Value {
    c.wait_for_within(Duration::from_secs(10), |m| {
        m["type"] == "event" && m["event"]["type"] == kind
    })
    .await
}
