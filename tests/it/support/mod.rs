//! Test support: a fake Nextcloud (`nextcloud`), the server under test
//! (`server`; `node`: the binary that tests stop and start again), a WebSocket client (`client`), a `nats-server` (`nats`) and
//! Janus (`janus`).

#![allow(dead_code)]

pub mod client;
pub mod etcd;
pub mod fake_process;
pub mod janus;
pub mod mmdb;
pub mod nats;
pub mod nextcloud;
pub mod node;
pub mod proxies;
pub mod proxy_procs;
pub mod raw;
pub mod relay;
pub mod remote;
pub mod server;

pub use client::*;
pub use etcd::*;
pub use fake_process::*;
pub use nats::*;
pub use nextcloud::*;
pub use node::*;
pub use raw::*;
pub use relay::*;
pub use remote::*;
pub use server::*;

use std::time::Duration;

pub const SECRET: &str = "backend-secret";
pub const INTERNAL_SECRET: &str = "internal-secret";
pub const TIMEOUT: Duration = Duration::from_secs(5);
pub const BACKEND_PATH: &str = "/ocs/v2.php/apps/spreed/api/v3/signaling/backend";

/// Waits (polling, bounded) until `cond` holds.
pub async fn eventually(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
