//! A process of a cluster, speaking the bus protocol over a raw NATS
//! connection, that answers a stopping process's `park` (its rooms are
//! "prepared") but then holds none of the sessions (its `parked` answer
//! is empty): the sessions handed to it are not taken.

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

pub struct FakeProcess {
    task: JoinHandle<()>,
}

/// A bus message: its JSON header line and body.
fn bus(header: Value) -> String {
    format!("{header}\n")
}

impl FakeProcess {
    /// Joins the cluster of the nats-server at `url` as process `pid`: it
    /// answers discovery and sends heartbeats.
    pub async fn start(url: &str, pid: &str) -> FakeProcess {
        let addr = url.trim_start_matches("nats://").to_string();
        let stream = TcpStream::connect(&addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut info = String::new();
        read.read_line(&mut info).await.unwrap();
        assert!(info.starts_with("INFO"), "{info}");
        let heartbeat = bus(json!({"heartbeat": {"from": pid, "counts": {}, "version": 2}}));
        let setup = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB signaling.all 1\r\nSUB signaling.process.{pid} 2\r\nPUB signaling.all {}\r\n{heartbeat}\r\nPING\r\n",
            heartbeat.len()
        );
        write.write_all(setup.as_bytes()).await.unwrap();
        // Subscribed once the server answers the PING.
        loop {
            let mut line = String::new();
            read.read_line(&mut line).await.unwrap();
            if line.starts_with("PONG") {
                break;
            }
        }
        let task = tokio::spawn(async move {
            let mut beat = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                let mut line = String::new();
                let out = tokio::select! {
                    _ = beat.tick() => format!("PUB signaling.all {}\r\n{heartbeat}\r\n", heartbeat.len()),
                    r = read.read_line(&mut line) => {
                        if r.unwrap_or(0) == 0 {
                            return;
                        }
                        match answer(&mut read, &line, &heartbeat).await {
                            Some(out) => out,
                            None => continue,
                        }
                    }
                };
                if write.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        FakeProcess { task }
    }
}

/// What the fake answers to one protocol line (reading a message's
/// payload): pongs, its heartbeat to a `discover`, `{}` to a `park`, no
/// session to a `parked`.
async fn answer(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &str,
    heartbeat: &str,
) -> Option<String> {
    if line.starts_with("PING") {
        return Some("PONG\r\n".into());
    }
    // MSG <subject> <sid> [reply] <bytes>
    let parts: Vec<&str> = line.split_whitespace().collect();
    if parts.first() != Some(&"MSG") {
        return None;
    }
    let len: usize = parts.last()?.parse().ok()?;
    let mut payload = vec![0u8; len + 2];
    read.read_exact(&mut payload).await.ok()?;
    let reply = (parts.len() == 5).then(|| parts[3].to_string())?;
    let text = String::from_utf8_lossy(&payload[..len]).to_string();
    let header: Value = serde_json::from_str(text.lines().next()?).ok()?;
    let body = if header.get("discover").is_some() {
        heartbeat.to_string()
    } else if header.get("park").is_some() {
        "{}".to_string()
    } else if header.get("parked").is_some() {
        "[]".to_string()
    } else {
        return None;
    };
    Some(format!("PUB {reply} {}\r\n{body}\r\n", body.len()))
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        self.task.abort();
    }
}
