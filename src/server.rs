//! Running the server: bind, serve, shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::nats::NatsBus;
use crate::bus::{Bus, LocalBus};
use crate::config::Config;
use crate::http::{router, AppState};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// How long shutdown waits for connections to close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running server (used by `main` and by the tests).
pub struct Server {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Address the listener is bound to.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    done: tokio::task::JoinHandle<()>,
}

/// Binds `addr` (with `SO_REUSEADDR`, so a restart does not wait for
/// sockets in TIME_WAIT) with a listen backlog sized for reconnect storms.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

impl Server {
    /// Binds `config.listen` (or uses the given listener) and starts serving
    /// on the current runtime.
    pub async fn start(config: Config, listener: Option<TcpListener>) -> anyhow::Result<Server> {
        let config = Arc::new(config);
        for s in &config.unsupported_sections {
            tracing::warn!(section = %s, "configuration section is not supported yet and is ignored");
        }
        let listener = match listener {
            Some(l) => l,
            None => {
                let addr: SocketAddr = tokio::net::lookup_host(&config.listen)
                    .await
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| {
                        anyhow::anyhow!("[http] listen: cannot resolve {}", config.listen)
                    })?;
                bind(addr).map_err(|e| {
                    anyhow::anyhow!("[http] listen: cannot bind {}: {e}", config.listen)
                })?
            }
        };
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let pid = crate::bus::new_process_id();
        let (bus, inbound): (Arc<dyn Bus>, _) = if config.nats_urls.is_empty() {
            (Arc::new(LocalBus::new()), None)
        } else {
            let (tx, rx) = tokio::sync::mpsc::channel(crate::bus::nats::INBOUND_QUEUE);
            let bus =
                NatsBus::connect(&config.nats_urls, pid, tx, config.nats_publish_queue).await?;
            tracing::info!(urls = %crate::logsafe::Urls(&config.nats_urls), process = bus.pid(), "clustering over NATS");
            (bus as Arc<dyn Bus>, Some(rx))
        };
        let hub = Hub::new(config, Metrics::new(), bus)?;
        hub.spawn_tasks(shutdown.clone());
        hub.start_mcu(shutdown.clone());
        if let Some(rx) = inbound {
            hub.spawn_cluster(rx, shutdown.clone());
            // Know the peers before the first client: joins get the members
            // of the other processes, resumes find their owner.
            hub.discover_peers().await;
        }
        let tracker = TaskTracker::new();
        let app = router(AppState {
            hub: hub.clone(),
            tracker: tracker.clone(),
            shutdown: shutdown.clone(),
        });
        let done = tokio::spawn(crate::http::listener::serve(
            listener,
            app,
            shutdown.clone(),
            hub.config.http.clone(),
            hub.metrics.clone(),
        ));
        tracing::info!(%addr, "listening");
        Ok(Server {
            hub,
            addr,
            shutdown,
            tracker,
            done,
        })
    }

    /// Stops accepting, closes connections (1001) and waits for them.
    pub async fn shutdown(self) {
        self.hub.goodbye().await;
        self.shutdown.cancel();
        let _ = self.done.await;
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over, dropping remaining connections");
        }
    }
}
