//! A `nats-server` of the test's own.

use std::time::Duration;

use super::*;

/// A `nats-server` of the test's own, on a free port.
pub struct NatsServer {
    child: Option<std::process::Child>,
    pub port: u16,
    args: Vec<String>,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        Self::start_with_args(&[]).await
    }

    /// A `nats-server` with extra arguments (e.g. `--user`, `--pass`).
    pub async fn start_with_args(args: &[&str]) -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = NatsServer {
            child: None,
            port,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        n.spawn().await;
        n
    }

    async fn spawn(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the nats-server process: its
    /// connections stay open but nothing is read or forwarded meanwhile.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
