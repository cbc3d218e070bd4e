//! An etcd of the test's own (`/usr/bin/etcd`, Debian's etcd-server) on
//! free ports with a temporary data directory, spoken to through its JSON
//! gateway.

use base64::Engine as _;
use serde_json::{json, Value};

use super::*;

pub struct EtcdServer {
    child: Option<std::process::Child>,
    pub port: u16,
    peer_port: u16,
    dir: std::path::PathBuf,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl EtcdServer {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> EtcdServer {
        let mut e = EtcdServer::unstarted();
        e.spawn().await;
        e
    }

    /// Ports and directory chosen, not running yet (a server that finds
    /// etcd away at start).
    pub fn unstarted() -> EtcdServer {
        EtcdServer {
            child: None,
            port: free_port(),
            peer_port: free_port(),
            dir: fresh_dir("etcd"),
        }
    }

    /// `host:port` as `[etcd] endpoints` names it.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// etcd on this data directory serving its clients at
    /// `<scheme>://127.0.0.1:<port>`, with `extra` arguments.
    fn launch(&mut self, scheme: &str, extra: &[&std::ffi::OsStr]) {
        let client = format!("{scheme}://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = std::process::Command::new("/usr/bin/etcd")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .args(extra)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("etcd must be installed (scripts/test installs etcd-server)");
        self.child = Some(child);
    }

    /// Restarts etcd (same data) serving its clients over TLS only:
    /// `<dir>/etcd.pem` + `etcd.key` as its certificate, client
    /// certificates required and checked against `etcd-ca.pem`; waits
    /// until its port accepts.
    pub async fn spawn_tls(&mut self, certs: &std::path::Path) {
        let (pem, key, ca) = (
            certs.join("etcd.pem"),
            certs.join("etcd.key"),
            certs.join("etcd-ca.pem"),
        );
        self.launch(
            "https",
            &[
                "--cert-file".as_ref(),
                pem.as_os_str(),
                "--key-file".as_ref(),
                key.as_os_str(),
                "--trusted-ca-file".as_ref(),
                ca.as_os_str(),
                "--client-cert-auth".as_ref(),
            ],
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(tokio::time::Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn spawn(&mut self) {
        self.launch("http", &[]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if self
                .request("/v3/kv/range", &json!({"key": b64("/")}))
                .await
                .is_ok()
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "etcd did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn request(&self, path: &str, body: &Value) -> Result<Value, String> {
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}{path}", self.port))
            .json(body)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !r.status().is_success() {
            return Err(format!("etcd answered {}", r.status()));
        }
        r.json().await.map_err(|e| e.to_string())
    }

    pub async fn put(&self, key: &str, value: &Value) {
        self.request(
            "/v3/kv/put",
            &json!({"key": b64(key), "value": b64(&value.to_string())}),
        )
        .await
        .unwrap();
    }

    pub async fn delete(&self, key: &str) {
        self.request("/v3/kv/deleterange", &json!({"key": b64(key)}))
            .await
            .unwrap();
    }

    /// Kills etcd (the data stay for a restart).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
