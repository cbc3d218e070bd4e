//! `[http]` and `[https]`: the listeners, their timeouts and connection
//! caps, and the runtime's threads.

use std::time::Duration;

use super::goconf::{expand_env, IniFile};
use super::{go_secs, ConfigError};

/// Timeouts of one listener (`[http]` or `[https]` `readtimeout` /
/// `writetimeout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListenerTimeouts {
    /// Request headers (also the wait for the next request on a kept-alive
    /// connection) and a backend-API body must arrive within this time.
    pub read: Duration,
    /// A write to the client that makes no progress for this long closes
    /// the connection.
    pub write: Duration,
}

/// Limits of the HTTP server (before any WebSocket or API handler runs).
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLimits {
    /// Timeouts of the `[http]` listener.
    pub timeouts: ListenerTimeouts,
    /// Open connections (HTTP and WebSocket, both listeners) of all
    /// clients; more are closed right after accept (0 = unlimited).
    pub max_connections: usize,
    /// Open connections of one client address (0 = unlimited); trusted
    /// proxies (`[app] trustedproxies`) are exempt.
    pub max_connections_per_ip: usize,
}

/// `[https]`: the TLS listener.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpsConfig {
    /// Addresses to listen on (`listen`, separated by spaces).
    pub listen: Vec<String>,
    /// PEM certificate chain (re-read on SIGHUP).
    pub certificate: std::path::PathBuf,
    /// PEM private key (re-read on SIGHUP).
    pub key: std::path::PathBuf,
    /// Timeouts of the `[https]` listener.
    pub timeouts: ListenerTimeouts,
}

/// `[http] listen` and `[https]`: the plain listeners and the TLS one;
/// without any, the default HTTP listener.
pub(super) fn parse_listeners(
    ini: &IniFile,
) -> Result<(Vec<String>, Option<HttpsConfig>), ConfigError> {
    let mut listen = listen_addrs(ini, "http")?;
    let https = parse_https(ini)?;
    if listen.is_empty() && https.is_none() {
        // Without any listener the Go server would serve nothing.
        listen.push("127.0.0.1:8080".to_string());
    }
    Ok((listen, https))
}

/// `[https]`, when it lists addresses (certificate and key are then
/// required).
fn parse_https(ini: &IniFile) -> Result<Option<HttpsConfig>, ConfigError> {
    let https_listen = listen_addrs(ini, "https")?;
    if https_listen.is_empty() {
        return Ok(None);
    }
    let path = |key: &str| {
        ini.get_nonempty("https", key)
            .map(|v| std::path::PathBuf::from(expand_env(&v)))
            .ok_or_else(|| {
                ConfigError(format!(
                    "[https] {key}: required for the HTTPS listener (PEM file)"
                ))
            })
    };
    Ok(Some(HttpsConfig {
        listen: https_listen,
        certificate: path("certificate")?,
        key: path("key")?,
        timeouts: listener_timeouts(ini, "https")?,
    }))
}

/// `[http] threads`: the runtime's worker threads.
pub(super) fn parse_threads(ini: &IniFile) -> Result<usize, ConfigError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = ini.get_u64("http", "threads", default_threads(cores) as u64)? as usize;
    if threads == 0 || threads > 1024 {
        return Err(ConfigError(
            "[http] threads: must be between 1 and 1024".into(),
        ));
    }
    Ok(threads)
}

/// The default of `[http] threads`: one worker per core but one, at least
/// one. The core left over is for the kernel's network processing and the
/// services beside the server (NATS, Janus, Nextcloud on small installs).
/// Measured on two cores shared with a load generator (docs/benchmarks.md,
/// "Worker threads"): one worker relayed more messages, with lower
/// latency, at 42% more messages per CPU-second than two, which park and
/// wake each other; on sixteen cores this is fifteen workers.
pub fn default_threads(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

/// `[http]` timeouts and connection caps.
pub(super) fn parse_http_limits(ini: &IniFile) -> Result<HttpLimits, ConfigError> {
    Ok(HttpLimits {
        timeouts: listener_timeouts(ini, "http")?,
        max_connections: ini.get_u64("http", "maxconnections", 65536)? as usize,
        max_connections_per_ip: ini.get_u64("http", "maxconnectionsperip", 500)? as usize,
    })
}

/// `listen` of `[http]` or `[https]`: addresses separated by spaces.
fn listen_addrs(ini: &IniFile, section: &str) -> Result<Vec<String>, ConfigError> {
    let Some(v) = ini.get_nonempty(section, "listen") else {
        return Ok(Vec::new());
    };
    let addrs: Vec<String> = expand_env(&v)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    for a in &addrs {
        let port = a.rsplit_once(':').map(|(_, p)| p);
        if port.is_none_or(|p| p.parse::<u16>().is_err()) {
            return Err(ConfigError(format!(
                "[{section}] listen: `{a}` is not a host:port address"
            )));
        }
    }
    Ok(addrs)
}

/// The listener timeouts of `[http]` or `[https]` (Go's defaults 15 / 30 s).
fn listener_timeouts(ini: &IniFile, section: &str) -> Result<ListenerTimeouts, ConfigError> {
    Ok(ListenerTimeouts {
        read: go_secs(ini, section, "readtimeout", 15)?,
        write: go_secs(ini, section, "writetimeout", 30)?,
    })
}
