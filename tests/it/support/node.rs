//! The server binary as a child process that a test signals, waits for
//! and starts again on the same port and configuration (drain, restart),
//! with its log lines collected; and a kept-alive HTTP/1.1 connection to
//! it (raw, so that a test knows it is the same connection).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// One run of the binary.
pub struct Node {
    pub proc: LoggedProcess,
    pub port: u16,
    /// Where its config lives (and what else a test puts there).
    pub dir: PathBuf,
    pub config_path: PathBuf,
    env: Vec<(String, String)>,
    /// Removed on drop unless a restart took it over.
    owns_dir: bool,
}

impl Node {
    /// Starts the binary with [`config_text`]`(nc, extra)` on a free port
    /// in a fresh directory, with `env`, and waits until it listens.
    pub async fn start(nc: &FakeNextcloud, extra: &str, env: &[(&str, &str)]) -> Node {
        let port = free_port();
        let dir = fresh_dir("spreed-node");
        let config = config_text(nc, extra).replace(
            "listen = 127.0.0.1:0",
            &format!("listen = 127.0.0.1:{port}"),
        );
        let config_path = dir.join("server.conf");
        std::fs::write(&config_path, config).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::run(port, dir, config_path, env).await
    }

    async fn run(
        port: u16,
        dir: PathBuf,
        config_path: PathBuf,
        env: Vec<(String, String)>,
    ) -> Node {
        let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let proc =
            LoggedProcess::spawn_with_env(&["--config", config_path.to_str().unwrap()], &pairs);
        let node = Node {
            proc,
            port,
            dir,
            config_path,
            env,
            owns_dir: true,
        };
        node.wait_listening().await;
        node
    }

    async fn wait_listening(&self) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server does not listen:\n{}",
                self.proc.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The same binary, port, configuration and environment again (after
    /// this run ended); the new run owns the directory.
    pub async fn restart(mut self) -> Node {
        self.owns_dir = false;
        Self::run(
            self.port,
            self.dir.clone(),
            self.config_path.clone(),
            self.env.clone(),
        )
        .await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/spreed", self.port)
    }

    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A user's client that said hello and joined `room` (Nextcloud
    /// session id `nc-<user>`), the room reply consumed.
    pub async fn client_in_room(&self, nc: &FakeNextcloud, user: &str, room: &str) -> Client {
        let mut c = Client::connect(&self.ws_url()).await;
        c.expect_type("welcome").await;
        c.hello_v1(&nc.backend_url(), json!({"userid": user})).await;
        c.join(room, &format!("nc-{user}")).await;
        c
    }

    /// Sends a signal (`-USR1`, `-TERM`).
    pub fn signal(&self, sig: &str) {
        self.proc.signal(sig);
    }

    /// The exit code, once the process ended within `limit` (panics with
    /// its log otherwise; None when a signal ended it).
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.proc.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not exit:\n{}",
                self.proc.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.proc.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One HTTP/1.1 connection kept alive across requests.
pub struct KeepAlive(tokio::net::TcpStream);

impl KeepAlive {
    pub async fn connect(port: u16) -> KeepAlive {
        KeepAlive(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap(),
        )
    }

    /// Sends `GET path` with `headers` (lines without CRLF) and returns
    /// the status and the body (JSON when it is JSON, else a string).
    pub async fn get(&mut self, path: &str, headers: &[&str]) -> (u16, Value) {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        self.0.write_all(req.as_bytes()).await.unwrap();
        tokio::time::timeout(TIMEOUT, self.response())
            .await
            .expect("an HTTP response")
    }

    async fn response(&mut self) -> (u16, Value) {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = self.0.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before a response");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .expect("a Content-Length");
        while buf.len() < head_end + len {
            let mut chunk = [0u8; 4096];
            let n = self.0.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed in the body");
            buf.extend_from_slice(&chunk[..n]);
        }
        let body = &buf[head_end..head_end + len];
        let value = serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).to_string()));
        (status, value)
    }
}

/// A new connection resuming `resume_id`; returns it and the hello reply.
pub async fn resume(node: &Node, resume_id: &str) -> (Client, Value) {
    let mut c = Client::connect(&node.ws_url()).await;
    c.expect_type("welcome").await;
    c.send(json!({"id": "r", "type": "hello", "hello": {"version": "1.0", "resumeid": resume_id}}))
        .await;
    let m = c.recv().await;
    (c, m)
}
