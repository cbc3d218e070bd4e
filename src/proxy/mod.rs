//! Our MCU proxy (`spreed-signaling proxy --config proxy.conf`): a
//! replacement for the Go project's `nextcloud-spreed-signaling-proxy`
//! that signaling servers with `[mcu] type = proxy` (the Go server's or
//! ours) use to reach a Janus. It reads the Go proxy's `proxy.conf`
//! unchanged, checks the servers' tokens against `[tokens]`, puts their
//! publishers and subscribers on its Janus through the crate's MCU
//! (`crate::mcu`), reports its load, drains on SIGUSR1 and exports the Go
//! proxy's metrics. Wire types: `crate::api::proxy`.
//!
//! `config` (`proxy.conf`), `tokens` (the keys and the hello token),
//! `session` (a server's session and its messages), `server` (the state:
//! sessions, clients, load, shutdown, background work), `conn` (one
//! WebSocket), `handle` (commands, payloads, what Janus sends), `http`
//! (routes), `limits` (the caps of connections, sessions and clients),
//! `metrics`, `check`.

pub mod check;
pub mod config;
pub mod conn;
pub mod handle;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod session;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;

use config::ProxyConfig;
use server::Proxy;
use tokens::TokenKeys;

/// A new session id: 32 random bytes, URL-safe base64 (opaque to servers).
pub fn session_id() -> String {
    let b: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Runs the proxy until SIGINT/SIGTERM, or until a scheduled shutdown
/// (SIGUSR1) saw its last client go. The HTTP port opens once Janus is
/// connected (as the Go proxy).
pub async fn run(config: ProxyConfig, tokens: TokenKeys, path: &Path) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %path.display(),
        name = %config.name,
        country = config.country.as_deref().unwrap_or(""),
        "spreed-signaling proxy starting"
    );
    let proxy = Proxy::start(&config, tokens);
    let janus = async {
        while !proxy.mcu.connected() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = janus => {}
        _ = term.recv() => return stop(&proxy),
        _ = tokio::signal::ctrl_c() => return stop(&proxy),
    }
    let state = http::HttpState {
        proxy: proxy.clone(),
        trusted: config.trusted_proxies.clone(),
        stats_allowed: config.stats_allowed.clone(),
    };
    let app = http::router(state);
    for addr in &config.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("[http] listen: cannot listen on {addr}: {e}"))?;
        tracing::info!(address = %listener.local_addr()?, "listening");
        let app = app
            .clone()
            .into_make_service_with_connect_info::<std::net::SocketAddr>();
        let cancel = proxy.cancel.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!("HTTP server: {e}");
            }
        });
    }
    crate::sdnotify::notify("READY=1");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = usr1.recv() => {
                tracing::info!(clients = proxy.client_count(), "SIGUSR1: shutdown scheduled, exiting when the last publisher and subscriber are gone");
                proxy.schedule_shutdown();
            }
            _ = proxy.exit_requested() => {
                tracing::info!("all clients gone, shutting down");
                break;
            }
            _ = hup.recv() => reload(&proxy, path),
        }
    }
    stop_gracefully(&proxy).await
}

fn stop(proxy: &Arc<Proxy>) -> anyhow::Result<()> {
    crate::sdnotify::notify("STOPPING=1");
    proxy.cancel.cancel();
    Ok(())
}

/// Connections get this long to send what they queued and close.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Stops, then waits (at most [`CLOSE_GRACE`]) for the connections to
/// close after sending what was queued (a reply, the close frame).
async fn stop_gracefully(proxy: &Arc<Proxy>) -> anyhow::Result<()> {
    stop(proxy)?;
    let closed = async {
        while proxy.connections.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(CLOSE_GRACE, closed).await;
    Ok(())
}

/// SIGHUP: `[tokens]` again (keys that do not load are skipped, as the Go
/// proxy); the rest of the file needs a restart.
fn reload(proxy: &Proxy, path: &Path) {
    match ProxyConfig::load(path) {
        Ok(c) => match TokenKeys::load(&c.tokens, false) {
            Ok(keys) => {
                tracing::info!(
                    keys = keys.len(),
                    "SIGHUP: [tokens] reloaded (other settings need a restart)"
                );
                proxy.tokens.store(Arc::new(keys));
            }
            Err(e) => tracing::error!("SIGHUP: {e}"),
        },
        Err(e) => tracing::error!(
            "SIGHUP: reload of {} failed, keeping the keys: {e}",
            path.display()
        ),
    }
}
