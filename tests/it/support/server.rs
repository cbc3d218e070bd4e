//! The server under test: in-process (`TestServer`) or as a child
//! process (`ServerProcess`, `LoggedProcess`), and its config.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use spreed_signaling::backend::checksum;
use spreed_signaling::config::Config;
use spreed_signaling::server::Server;
use tokio::net::TcpListener;

use super::*;

pub fn config_text(nc: &FakeNextcloud, extra: &str) -> String {
    format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\nblockkey = 0123456789abcdef\n\
         [clients]\ninternalsecret = {INTERNAL_SECRET}\n[backend]\nbackends = nc1\ntimeout = 5\n\
         [nc1]\nurl = {}\nsecret = {SECRET}\n{extra}",
        nc.url
    )
}

pub struct TestServer {
    pub server: Option<Server>,
    pub nc: FakeNextcloud,
    pub url: String,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with("").await
    }

    /// Starts the server; `extra` is appended to the config.
    pub async fn start_with(extra: &str) -> TestServer {
        let nc = FakeNextcloud::start().await;
        Self::start_on(nc, extra).await
    }

    /// Starts a server using an existing fake Nextcloud.
    pub async fn start_on(nc: FakeNextcloud, extra: &str) -> TestServer {
        let cfg = Config::parse(&config_text(&nc, extra)).unwrap();
        Self::start_config(nc, cfg).await
    }

    /// Starts a server with a configuration the test changed in code.
    pub async fn start_config(nc: FakeNextcloud, cfg: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(cfg, Some(listener)).await.unwrap();
        let url = format!("http://{}", server.addr);
        TestServer {
            server: Some(server),
            nc,
            url,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("{}/spreed", self.url.replace("http://", "ws://"))
    }

    /// The `/metrics` page (allowed from loopback).
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Connects and says hello as `user` (None = guest); welcome consumed.
    pub async fn client(&self, user: Option<&str>) -> Client {
        let mut c = self.connect().await;
        c.expect_type("welcome").await;
        let params = match user {
            Some(u) => json!({"userid": u}),
            None => json!({}),
        };
        c.hello_v1(&self.nc.backend_url(), params).await;
        c
    }

    /// A client in `room` (joined with Nextcloud session id `nc-<user>`),
    /// with the room reply consumed.
    pub async fn client_in_room(&self, user: &str, room: &str) -> Client {
        let mut c = self.client(Some(user)).await;
        c.join(room, &format!("nc-{user}")).await;
        c
    }

    /// `client_in_room`, once the client saw its own join event.
    pub async fn joined_client(&self, user: &str, room: &str) -> Client {
        let mut c = self.client_in_room(user, room).await;
        c.wait_join_of(&c.session_id.clone()).await;
        c
    }

    /// Sends a backend API request with a valid checksum.
    pub async fn backend_request(&self, room: &str, body: &Value) -> (u16, Value) {
        signed_backend_request(&self.url, &self.nc.url, room, body).await
    }

    /// The same request in a task of its own (for requests that wait for a
    /// client, such as dialout).
    pub fn spawn_backend_request(
        &self,
        room: &str,
        body: Value,
    ) -> tokio::task::JoinHandle<(u16, Value)> {
        let (url, nc, room) = (self.url.clone(), self.nc.url.clone(), room.to_string());
        tokio::spawn(async move { signed_backend_request(&url, &nc, &room, &body).await })
    }

    /// Asserts that `resume_id` can no longer be resumed.
    pub async fn assert_resume_refused(&self, resume_id: &str) {
        let mut c = self.connect().await;
        c.expect_type("welcome").await;
        c.send(
            json!({"id": "r", "type": "hello", "hello": {"version": "1.0", "resumeid": resume_id}}),
        )
        .await;
        c.expect_error("no_such_session").await;
    }

    /// Waits until Nextcloud was told that the session with Nextcloud
    /// session id `nc_session` left.
    pub async fn assert_backend_told_leave(&self, nc_session: &str) {
        self.nc
            .wait_for("room", |r| {
                r["room"]["action"] == "leave" && r["room"]["sessionid"] == nc_session
            })
            .await;
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// A new empty directory under the system's temp dir, unique to this call.
pub fn fresh_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        checksum::new_random()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The server binary running as a child process, with its config in a
/// temporary directory (killed and cleaned up on drop).
pub struct ServerProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub config_path: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl ServerProcess {
    /// Starts the binary with `config` (its `listen` is replaced by a free
    /// port) and waits until it accepts connections.
    pub async fn start(config: &str) -> ServerProcess {
        Self::start_with_env(config, &[]).await
    }

    /// As [`ServerProcess::start`], with extra environment variables.
    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> ServerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = config.replace(
            "listen = 127.0.0.1:0",
            &format!("listen = 127.0.0.1:{port}"),
        );
        let dir = std::env::temp_dir().join(format!("spreed-test-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("server.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        eventually("the server process listens", TIMEOUT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        ServerProcess {
            child,
            port,
            config_path,
            dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/spreed", self.port)
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The server binary with its output collected line by line (killed on
/// drop).
pub struct LoggedProcess {
    pub child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl LoggedProcess {
    /// Starts the binary with `args`; stdout and stderr are collected.
    pub fn spawn(args: &[&str]) -> LoggedProcess {
        Self::spawn_with_env(args, &[])
    }

    /// As [`LoggedProcess::spawn`], with extra environment variables.
    pub fn spawn_with_env(args: &[&str], env: &[(&str, &str)]) -> LoggedProcess {
        Self::spawn_program_with_env(env!("CARGO_BIN_EXE_spreed-signaling"), args, env)
    }

    /// Another program (e.g. the Go proxy), its output collected.
    pub fn spawn_program(program: &str, args: &[&str]) -> LoggedProcess {
        Self::spawn_program_with_env(program, args, &[])
    }

    fn spawn_program_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> LoggedProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for r in out {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(r).lines() {
                    let Ok(l) = l else { break };
                    lines.lock().unwrap().push(l);
                }
            });
        }
        LoggedProcess { child, lines }
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line (after the first `skip`) matching `pred`.
    pub async fn wait_line(&self, skip: usize, pred: impl Fn(&str) -> bool) -> String {
        let fut = async {
            loop {
                if let Some(l) = self.lines().iter().skip(skip).find(|l| pred(l)) {
                    return l.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(l) => l,
            Err(_) => panic!("no such log line in:\n{}", self.lines().join("\n")),
        }
    }

    /// Sends a signal (`-HUP`, `-TERM`).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16) {
    eventually("the server process listens", TIMEOUT, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
}
