//! Running the server: bind, serve, shut down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::nats::NatsBus;
use crate::bus::{Bus, Inbound, LocalBus};
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
    /// Cancelled by a drain (and by shutdown): the listeners stop accepting.
    stop_accepting: CancellationToken,
    tracker: TaskTracker,
    done: Vec<tokio::task::JoinHandle<()>>,
    /// Where the sessions are kept across a restart (`[sessions]
    /// statefile` or `$STATE_DIRECTORY`), if anywhere.
    state_file: Option<std::path::PathBuf>,
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

/// The sockets of `[http]` and `[https]`, bound before anything starts,
/// and the addresses the server reports.
struct Bound {
    http: Vec<TcpListener>,
    https: Vec<TcpListener>,
    /// The first HTTP listener's address, or the first HTTPS one's.
    addr: SocketAddr,
    https_addrs: Vec<SocketAddr>,
}

impl Bound {
    /// Binds `[http] listen` (or takes `listener` instead) and `[https]
    /// listen`.
    async fn new(config: &Config, listener: Option<TcpListener>) -> anyhow::Result<Bound> {
        let http = match listener {
            Some(l) => vec![l],
            None => bind_all("http", &config.listen).await?,
        };
        let https = match &config.https {
            Some(h) => bind_all("https", &h.listen).await?,
            None => Vec::new(),
        };
        let https_addrs = https
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        let addr = match http.first() {
            Some(l) => l.local_addr()?,
            None => *https_addrs
                .first()
                .ok_or_else(|| anyhow::anyhow!("[http] listen: no listener configured"))?,
        };
        Ok(Bound {
            http,
            https,
            addr,
            https_addrs,
        })
    }
}

/// The bus: in-process, or NATS with the queue of what the other
/// processes publish.
async fn connect_bus(
    config: &Config,
) -> anyhow::Result<(Arc<dyn Bus>, Option<mpsc::Receiver<Inbound>>)> {
    let pid = crate::bus::new_process_id();
    if config.nats_urls.is_empty() {
        tracing::info!("bus: in-process (a single process; [nats] url clusters several)");
        return Ok((Arc::new(LocalBus::new()), None));
    }
    let (tx, rx) = mpsc::channel(crate::bus::nats::INBOUND_QUEUE);
    let bus = NatsBus::connect(&config.nats_urls, pid, tx, config.nats_publish_queue).await?;
    tracing::info!(urls = %crate::logsafe::Urls(&config.nats_urls), process = bus.pid(), "bus: clustering over NATS");
    let bus = bus as Arc<dyn Bus>;
    warn_while_unreachable(
        bus.clone(),
        crate::logsafe::Urls(&config.nats_urls).to_string(),
    );
    Ok((bus, Some(rx)))
}

/// How long start-up waits for NATS before it says so.
const NATS_PATIENCE: Duration = Duration::from_secs(5);

/// A NATS server that does not answer holds start-up (the port is bound,
/// requests wait): say so after [`NATS_PATIENCE`], then every 30 seconds
/// until it answers.
fn warn_while_unreachable(bus: Arc<dyn Bus>, urls: String) {
    tokio::spawn(async move {
        tokio::time::sleep(NATS_PATIENCE).await;
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            every.tick().await;
            if bus.connected() {
                return;
            }
            tracing::warn!(
                urls = %urls,
                "[nats] url: NATS does not answer; start-up waits for it and requests to the bound port wait too (is nats-server running? see After= in the systemd unit)"
            );
        }
    });
}

/// The start-up lines that say what this server is about to do:
/// backends, MCU, TURN (the bus and the listeners log their own).
fn log_summary(config: &Config) {
    let b = &config.backend;
    for backend in &b.backends {
        tracing::info!(
            id = %backend.id,
            urls = %crate::logsafe::Urls(&backend.urls),
            sessionlimit = backend.session_limit,
            "backend"
        );
    }
    if b.allow_all {
        tracing::info!("backend: allowall (any Nextcloud with the common secret)");
    }
    match &config.mcu {
        Some(m) if m.proxy.is_some() => tracing::info!(
            urls = %crate::logsafe::Url(&m.url),
            "MCU: signaling proxies"
        ),
        Some(m) => tracing::info!(url = %crate::logsafe::Url(&m.url), "MCU: Janus"),
        None => tracing::info!(
            "MCU: none, media goes peer to peer ([mcu] type = janus and url for Janus)"
        ),
    }
}

/// Logs the configuration's findings (unknown keys, keys not honoured,
/// sample secrets, risky values) as warnings.
fn warn_findings(config: &Config) {
    for f in &config.findings {
        tracing::warn!("{}", f.text);
    }
}

/// Serves `app` on every bound listener until `shutdown`; returns the
/// listeners' tasks.
fn serve_all(
    hub: &Arc<Hub>,
    app: Router,
    bound: Bound,
    tls: Option<&Arc<Tls>>,
    stop_accepting: &CancellationToken,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let shared = Shared::new(
        hub.config.http.clone(),
        hub.conn_counts.clone(),
        hub.live_handle(),
        hub.metrics.clone(),
    );
    let serve = |l: Listener| {
        tokio::spawn(crate::http::listener::serve(
            l,
            app.clone(),
            stop_accepting.clone(),
            shutdown.clone(),
            shared.clone(),
        ))
    };
    let mut done = Vec::new();
    for tcp in bound.http {
        tracing::info!(addr = %tcp.local_addr()?, "listening (http)");
        done.push(serve(Listener {
            tcp,
            tls: None,
            timeouts: hub.config.http.timeouts,
        }));
    }
    if let Some(h) = &hub.config.https {
        for tcp in bound.https {
            tracing::info!(addr = %tcp.local_addr()?, "listening (https)");
            done.push(serve(Listener {
                tcp,
                tls: tls.cloned(),
                timeouts: h.timeouts,
            }));
        }
    }
    Ok(done)
}

impl Server {
    /// Binds `[http] listen` (or uses the given listener instead) and
    /// `[https] listen`, and starts serving on the current runtime.
    pub async fn start(config: Config, listener: Option<TcpListener>) -> anyhow::Result<Server> {
        if let Some(refused) = config.refusals() {
            anyhow::bail!("{refused}");
        }
        let config = Arc::new(config);
        warn_findings(&config);
        log_summary(&config);
        let tls = match &config.https {
            Some(h) => Some(Arc::new(Tls::new(h)?)),
            None => None,
        };
        let bound = Bound::new(&config, listener).await?;
        let (addr, https_addrs) = (bound.addr, bound.https_addrs.clone());
        let shutdown = CancellationToken::new();
        let (bus, inbound) = connect_bus(&config).await?;
        let hub = Hub::new(config.clone(), Metrics::new(), bus)?;
        // A [geoip] file that does not load stops start-up (as Go's).
        hub.geoip
            .start(shutdown.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        // The backends of etcd before the saved sessions (they name theirs).
        hub.start_etcd(shutdown.clone(), config.backend.timeout)
            .await?;
        let state_file = config.state_file_in(std::env::var_os("STATE_DIRECTORY").as_deref());
        match &state_file {
            Some(path) => hub.restore_state(path).await,
            None if !config.nats_urls.is_empty() => {
                tracing::info!("clustered: sessions are not kept in a state file across a restart")
            }
            None => tracing::info!(
                "no [sessions] statefile and no $STATE_DIRECTORY: sessions end with the process"
            ),
        }
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
        let stop_accepting = shutdown.child_token();
        let done = serve_all(&hub, app, bound, tls.as_ref(), &stop_accepting, &shutdown)?;
        Ok(Server {
            hub,
            addr,
            https_addrs,
            tls,
            shutdown,
            stop_accepting,
            tracker,
            done,
            state_file,
        })
    }

    /// SIGHUP: backends, `[app]`, `[stats]` and the `[https]` certificate
    /// are taken from `new` without dropping sessions; changes to other
    /// settings are logged as needing a restart.
    pub fn reload(&self, new: &Config) {
        warn_findings(new);
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

    /// SIGUSR1: closes the listening sockets (new connections are
    /// refused, `/api/v1/welcome` answers 503 on kept-alive ones) and
    /// serves the sessions already here; [`Hub::drained`] resolves once
    /// the last client session is gone. False when already draining.
    pub fn drain(&self) -> bool {
        if !self.hub.start_draining() {
            return false;
        }
        self.stop_accepting.cancel();
        true
    }

    /// Stops accepting, closes connections (1001) and waits for them.
    /// With a state file, clients are closed with 1012 instead (no `bye`)
    /// and the sessions are written to it for the next start.
    pub async fn shutdown(self) {
        if self.state_file.is_some() {
            self.stop_accepting.cancel();
            self.hub.close_for_restart();
            // Media goes on: the next start claims the Janus session.
            if let Some(m) = self.hub.mcu() {
                m.keep_for_restart();
            }
        } else if self.hub.clustered() {
            // A rolling restart: the other processes take the sessions.
            self.stop_accepting.cancel();
            self.hub.hand_over_all().await;
        }
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
        // Nextcloud hears of the sessions that ended (their leaves).
        self.hub.finish_backend_requests().await;
        if let Some(path) = &self.state_file {
            match self.hub.save_state(path).await {
                Ok(sessions) => tracing::info!(
                    file = %path.display(),
                    sessions,
                    "sessions written for the next start"
                ),
                Err(e) => tracing::error!(
                    file = %path.display(),
                    "[sessions] statefile: cannot write the sessions, they end with the process: {e}"
                ),
            }
        }
    }
}
