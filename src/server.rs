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
use crate::http::listener::{Listener, Shared};
use crate::http::tls::Tls;
use crate::http::{router, AppState};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// How long shutdown waits for connections to close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running server (used by `main` and by the tests).
pub struct Server {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Address of the first listener (HTTP, or HTTPS when only that is
    /// configured).
    pub addr: SocketAddr,
    /// Addresses of the `[https]` listeners.
    pub https_addrs: Vec<SocketAddr>,
    /// The `[https]` certificate (re-read by [`Server::reload`]).
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    done: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds every address of `listen` (`section` names the config section in
/// errors).
async fn bind_all(section: &str, listen: &[String]) -> anyhow::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for a in listen {
        let addr: SocketAddr = tokio::net::lookup_host(a)
            .await
            .ok()
            .and_then(|mut it| it.next())
            .ok_or_else(|| anyhow::anyhow!("[{section}] listen: cannot resolve {a}"))?;
        out.push(
            bind(addr).map_err(|e| anyhow::anyhow!("[{section}] listen: cannot bind {a}: {e}"))?,
        );
    }
    Ok(out)
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
    /// Binds `[http] listen` (or uses the given listener instead) and
    /// `[https] listen`, and starts serving on the current runtime.
    pub async fn start(config: Config, listener: Option<TcpListener>) -> anyhow::Result<Server> {
        let config = Arc::new(config);
        for k in &config.obsolete_keys {
            tracing::warn!("{k}");
        }
        for s in &config.unsupported_sections {
            tracing::warn!(section = %s, "configuration section is not supported yet and is ignored");
        }
        let tls = match &config.https {
            Some(h) => Some(Arc::new(Tls::new(h)?)),
            None => None,
        };
        let http_listeners = match listener {
            Some(l) => vec![l],
            None => bind_all("http", &config.listen).await?,
        };
        let https_listeners = match &config.https {
            Some(h) => bind_all("https", &h.listen).await?,
            None => Vec::new(),
        };
        let https_addrs = https_listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        let addr = match http_listeners.first() {
            Some(l) => l.local_addr()?,
            None => *https_addrs
                .first()
                .ok_or_else(|| anyhow::anyhow!("[http] listen: no listener configured"))?,
        };
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
        let shared = Shared::new(
            hub.config.http.clone(),
            hub.conn_counts.clone(),
            hub.live_handle(),
            hub.metrics.clone(),
        );
        let mut done = Vec::new();
        for tcp in http_listeners {
            tracing::info!(addr = %tcp.local_addr()?, "listening (http)");
            let l = Listener {
                tcp,
                tls: None,
                timeouts: hub.config.http.timeouts,
            };
            done.push(tokio::spawn(crate::http::listener::serve(
                l,
                app.clone(),
                shutdown.clone(),
                shared.clone(),
            )));
        }
        if let Some(h) = &hub.config.https {
            for tcp in https_listeners {
                tracing::info!(addr = %tcp.local_addr()?, "listening (https)");
                let l = Listener {
                    tcp,
                    tls: tls.clone(),
                    timeouts: h.timeouts,
                };
                done.push(tokio::spawn(crate::http::listener::serve(
                    l,
                    app.clone(),
                    shutdown.clone(),
                    shared.clone(),
                )));
            }
        }
        Ok(Server {
            hub,
            addr,
            https_addrs,
            tls,
            shutdown,
            tracker,
            done,
        })
    }

    /// SIGHUP: backends, `[app]`, `[stats]` and the `[https]` certificate
    /// are taken from `new` without dropping sessions; changes to other
    /// settings are logged as needing a restart.
    pub fn reload(&self, new: &Config) {
        self.hub.reload(new);
        if let (Some(tls), Some(h)) = (&self.tls, &new.https) {
            match tls.reload(h) {
                Ok(()) => tracing::info!(
                    certificate = %h.certificate.display(),
                    "[https] certificate reloaded"
                ),
                Err(e) => tracing::error!("{e}; keeping the running certificate"),
            }
        }
        let changed = self.hub.config.restart_needed(new);
        if !changed.is_empty() {
            tracing::warn!(
                settings = %changed.join(", "),
                "changed settings need a restart to take effect"
            );
        }
    }

    /// Stops accepting, closes connections (1001) and waits for them.
    pub async fn shutdown(self) {
        self.hub.goodbye().await;
        self.shutdown.cancel();
        for d in self.done {
            let _ = d.await;
        }
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown grace period over, dropping remaining connections");
        }
    }
}
