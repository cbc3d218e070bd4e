//! `server.conf` (the Go server's INI file) turned into a typed, validated
//! [`Config`]. Everything is checked before any port is bound; errors name
//! the section and key.

pub mod goconf;
pub mod iplist;
pub mod mcu;

use std::time::Duration;

use goconf::{expand_env, split_list, IniFile};
pub use iplist::IpList;

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

/// `[app]`: reloaded on SIGHUP.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// Reverse proxies whose `X-Real-IP` / `X-Forwarded-For` headers are
    /// believed (`trustedproxies`; default: loopback and private networks,
    /// as the Go server).
    pub trusted_proxies: IpList,
}

/// `[stats]`: who may read `/metrics` and `/api/v1/stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsConfig {
    /// Allowed client addresses (default loopback).
    pub allowed_ips: IpList,
}

/// The settings SIGHUP replaces in the running server (`[app]`, `[stats]`);
/// readers load them per request.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    /// `[app]`.
    pub app: AppConfig,
    /// `[stats]`.
    pub stats: StatsConfig,
}

impl LiveSettings {
    /// The live part of `config`.
    pub fn of(config: &Config) -> Self {
        LiveSettings {
            app: config.app.clone(),
            stats: config.stats.clone(),
        }
    }
}

/// The live settings, shared by the hub and the listeners.
pub type Live = std::sync::Arc<arc_swap::ArcSwap<LiveSettings>>;

/// Limits of transient data, per room.
#[derive(Debug, Clone, PartialEq)]
pub struct TransientLimits {
    /// Keys per room.
    pub max_keys: usize,
    /// Bytes of one key.
    pub max_key_length: usize,
    /// Bytes of one value (as JSON).
    pub max_value_size: usize,
    /// Bytes of all keys and values of a room (what a joiner's `initial` holds).
    pub max_room_bytes: usize,
    /// Longest TTL.
    pub max_ttl: Duration,
}

/// Throttling of failed hellos and resumes per client address.
#[derive(Debug, Clone, PartialEq)]
pub struct BruteForceLimits {
    /// Failures per address within `window` before `too_many_requests`
    /// (0 = no throttling).
    pub max_failures: u32,
    /// How long failures are remembered.
    pub window: Duration,
}

/// One Nextcloud instance that may use this server.
#[derive(Clone, PartialEq)]
pub struct BackendConfig {
    /// The id from `[backend] backends`, or a generated one for legacy forms.
    pub id: String,
    /// Base URLs of the Nextcloud instance, without trailing slash.
    pub urls: Vec<String>,
    /// Shared secret for checksums in both directions.
    pub secret: String,
    /// Maximum number of client sessions (0 = unlimited).
    pub session_limit: u64,
    /// Highest bitrate of this backend's `video` streams (bits/s, 0 = none;
    /// the smaller of this and `[mcu] maxstreambitrate` applies).
    pub max_stream_bitrate: u64,
    /// The same for `screen` streams.
    pub max_screen_bitrate: u64,
}

/// Backends section as a whole.
#[derive(Clone, PartialEq)]
pub struct BackendsConfig {
    /// Accept any backend URL with the common secret (insecure, for tests).
    pub allow_all: bool,
    /// The common secret (`[backend] secret`).
    pub common_secret: String,
    /// Configured backends.
    pub backends: Vec<BackendConfig>,
    /// Timeout of each request to Nextcloud.
    pub timeout: Duration,
    /// Maximum idle pooled connections per backend host.
    pub connections_per_host: usize,
    /// Skip TLS certificate checks of backends.
    pub skip_verify: bool,
    /// Requests to Nextcloud in flight at once (all backends); more wait.
    pub max_concurrent_requests: usize,
    /// Largest accepted answer of Nextcloud, in bytes.
    pub max_response_size: usize,
}

/// Timers and limits of client connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLimits {
    /// A client must complete `hello` within this time after connecting.
    pub hello_timeout: Duration,
    /// An anonymous (guest) session must join a room within this time.
    pub room_timeout: Duration,
    /// A session whose connection dropped lives this long for resume.
    pub resume_timeout: Duration,
    /// Interval of WebSocket pings sent by the server.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) this long is closed.
    pub read_timeout: Duration,
    /// Largest accepted WebSocket message, in bytes.
    pub max_message_size: usize,
    /// Bytes queued for one connection before it is closed with 1013.
    pub outbox_bytes: usize,
    /// Messages kept for a disconnected session before it is ended.
    pub resume_queue_messages: usize,
    /// Bytes kept for a disconnected session before it is ended.
    pub resume_queue_bytes: usize,
    /// Interval of `ping` requests telling Nextcloud which sessions are alive.
    pub backend_ping_interval: Duration,
    /// Client messages read per second per connection, on average; a
    /// connection over its budget is not read until it refilled.
    pub messages_per_second: u32,
    /// Messages a connection may send at once before the rate applies.
    pub message_burst: u32,
    /// Client bytes read per second per connection, on average.
    pub bytes_per_second: u64,
    /// Bytes a connection may send at once before the rate applies.
    pub byte_burst: u64,
    /// How long a sender is not read while a recipient its message left
    /// more than half full drains its send queue.
    pub slow_receiver_wait: Duration,
}

/// The whole validated configuration.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// `[http] listen` addresses (separated by spaces); empty when only
    /// `[https]` listens.
    pub listen: Vec<String>,
    /// `[https]`: the TLS listener, if configured.
    pub https: Option<HttpsConfig>,
    /// `[app]` (reloaded on SIGHUP).
    pub app: AppConfig,
    /// `[http] threads`: runtime worker threads (1 = single-threaded);
    /// default: the number of cores.
    pub threads: usize,
    /// `[sessions] hashkey`: required and validated as by the Go server, so
    /// the same file starts either server, but not used: the Go server
    /// signs its session ids with it because it decodes data from them;
    /// ours carry none (process id + 240 random bits, only looked up), so
    /// a forged id finds no session. See the README.
    pub hash_key: String,
    /// `[sessions] blockkey` (may be empty): validated, not used (as
    /// `hash_key`; Go encrypts its session ids with it).
    pub block_key: String,
    /// `[clients] internalsecret`.
    pub internal_secret: String,
    /// Backends allowed to use this server.
    pub backend: BackendsConfig,
    /// NATS URLs; empty means the in-process bus.
    pub nats_urls: Vec<String>,
    /// `[nats] publishqueue`: bus messages waiting for NATS before client
    /// connections stop being read until the queue drained to half.
    pub nats_publish_queue: usize,
    /// Client timers and limits.
    pub limits: ClientLimits,
    /// HTTP server limits.
    pub http: HttpLimits,
    /// Access to statistics.
    pub stats: StatsConfig,
    /// Transient data limits.
    pub transient: TransientLimits,
    /// Throttling of failed hellos and resumes.
    pub brute_force: BruteForceLimits,
    /// Connections to other signaling servers (federation).
    pub federation: FederationConfig,
    /// `[logging] level`: a tracing filter (`info`, `debug`, `warn,spreed_signaling=debug`).
    pub log_level: String,
    /// `[logging] format`: JSON lines instead of plain text.
    pub log_json: bool,
    /// Sections present in the file that this server does not implement.
    pub unsupported_sections: Vec<String>,
    /// Keys that are no longer read, with what to use instead (logged at
    /// start, shown by `check`).
    pub obsolete_keys: Vec<String>,
    /// `[mcu]` with `type = janus`: the media server.
    pub mcu: Option<mcu::McuConfig>,
    /// `[app] allowsubscribeany`: subscribe to any publisher, not only to
    /// those in the same call.
    pub allow_subscribe_any: bool,
}

/// `[federation]`: how this server dials the signaling servers of other
/// Nextclouds for federated conversations.
#[derive(Debug, Clone, PartialEq)]
pub struct FederationConfig {
    /// Skip TLS certificate checks (development only).
    pub skip_verify: bool,
    /// Timeout of dialing and of each handshake step.
    pub timeout: Duration,
}

/// How secrets appear in `Debug` output.
const REDACTED: &str = "<redacted>";

fn redact(s: &str) -> &'static str {
    if s.is_empty() {
        ""
    } else {
        REDACTED
    }
}

/// URLs as `Debug` shows them: without credentials or query.
fn safe_urls(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|u| crate::logsafe::Url(u).to_string())
        .collect()
}

impl std::fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendConfig")
            .field("id", &self.id)
            .field("urls", &safe_urls(&self.urls))
            .field("secret", &redact(&self.secret))
            .field("session_limit", &self.session_limit)
            .finish()
    }
}

impl std::fmt::Debug for BackendsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendsConfig")
            .field("allow_all", &self.allow_all)
            .field("common_secret", &redact(&self.common_secret))
            .field("backends", &self.backends)
            .field("timeout", &self.timeout)
            .field("connections_per_host", &self.connections_per_host)
            .field("skip_verify", &self.skip_verify)
            .field("max_concurrent_requests", &self.max_concurrent_requests)
            .field("max_response_size", &self.max_response_size)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("https", &self.https)
            .field("app", &self.app)
            .field("threads", &self.threads)
            .field("hash_key", &redact(&self.hash_key))
            .field("block_key", &redact(&self.block_key))
            .field("internal_secret", &redact(&self.internal_secret))
            .field("backend", &self.backend)
            .field("nats_urls", &safe_urls(&self.nats_urls))
            .field("limits", &self.limits)
            .field("http", &self.http)
            .field("stats", &self.stats)
            .field("transient", &self.transient)
            .field("brute_force", &self.brute_force)
            .field("unsupported_sections", &self.unsupported_sections)
            .field("obsolete_keys", &self.obsolete_keys)
            .field("mcu", &self.mcu)
            .finish_non_exhaustive()
    }
}

/// A configuration error; the message names section and key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        ConfigError(s)
    }
}

fn normalize_url(url: &str) -> String {
    url.trim().trim_end_matches('/').to_string()
}

fn validate_url(section: &str, key: &str, url: &str) -> Result<(), ConfigError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.split("://").nth(1).is_some_and(|h| !h.is_empty());
    if ok {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "[{section}] {key}: `{url}` is not an http(s) URL"
        )))
    }
}

fn secs(ini: &IniFile, section: &str, key: &str, default: u64) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(ini.get_u64(section, key, default)?))
}

/// Seconds as the Go server reads them: missing, 0 or negative means the
/// default.
fn go_secs(ini: &IniFile, section: &str, key: &str, default: u64) -> Result<Duration, ConfigError> {
    match ini.get_nonempty(section, key) {
        None => Ok(Duration::from_secs(default)),
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) if n > 0 => Ok(Duration::from_secs(n as u64)),
            Ok(_) => Ok(Duration::from_secs(default)),
            Err(_) => Err(ConfigError(format!(
                "[{section}] {key}: `{v}` is not an integer"
            ))),
        },
    }
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

const SUPPORTED_SECTIONS: &[&str] = &[
    goconf::DEFAULT_SECTION,
    "http",
    "https",
    "app",
    "mcu",
    "sessions",
    "clients",
    "backend",
    "nats",
    "stats",
    "transient",
    "federation",
    "logging",
];

const KNOWN_UNSUPPORTED: &[&str] = &[
    "turn",
    "geoip",
    "geoip-overrides",
    "continent-overrides",
    "etcd",
    "grpc",
];

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let ini = IniFile::parse(text)?;
        let mut listen = listen_addrs(&ini, "http")?;
        let https_listen = listen_addrs(&ini, "https")?;
        let https = if https_listen.is_empty() {
            None
        } else {
            let path = |key: &str| {
                ini.get_nonempty("https", key)
                    .map(|v| std::path::PathBuf::from(expand_env(&v)))
                    .ok_or_else(|| {
                        ConfigError(format!(
                            "[https] {key}: required for the HTTPS listener (PEM file)"
                        ))
                    })
            };
            Some(HttpsConfig {
                listen: https_listen,
                certificate: path("certificate")?,
                key: path("key")?,
                timeouts: listener_timeouts(&ini, "https")?,
            })
        };
        if listen.is_empty() && https.is_none() {
            // Without any listener the Go server would serve nothing.
            listen.push("127.0.0.1:8080".to_string());
        }
        let app = AppConfig {
            trusted_proxies: match ini.get_nonempty("app", "trustedproxies") {
                Some(v) => IpList::parse(&v)
                    .map_err(|e| ConfigError(format!("[app] trustedproxies: {e}")))?,
                None => IpList::private(),
            },
        };

        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let threads = ini.get_u64("http", "threads", cores)? as usize;
        if threads == 0 || threads > 1024 {
            return Err(ConfigError(
                "[http] threads: must be between 1 and 1024".into(),
            ));
        }
        let hash_key = ini
            .get("sessions", "hashkey")
            .map(|v| expand_env(&v))
            .unwrap_or_default();
        if hash_key.is_empty() {
            return Err(ConfigError(
                "[sessions] hashkey: is required (a random string of 32 or 64 bytes)".into(),
            ));
        }
        let block_key = ini
            .get("sessions", "blockkey")
            .map(|v| expand_env(&v))
            .unwrap_or_default();
        if !block_key.is_empty() && ![16, 24, 32].contains(&block_key.len()) {
            return Err(ConfigError(format!(
                "[sessions] blockkey: must be 16, 24 or 32 bytes, is {}",
                block_key.len()
            )));
        }
        let internal_secret = ini
            .get("clients", "internalsecret")
            .map(|v| expand_env(&v))
            .unwrap_or_default();

        let backend = Self::parse_backends(&ini)?;

        let nats_urls = ini
            .get_nonempty("nats", "url")
            .map(|v| split_list(&expand_env(&v)))
            .unwrap_or_default()
            .into_iter()
            .filter(|u| u != "nats://loopback" && u != ":loopback:")
            .collect::<Vec<_>>();
        for u in &nats_urls {
            if !u.starts_with("nats://") && !u.starts_with("tls://") {
                return Err(ConfigError(format!(
                    "[nats] url: `{u}` is not a nats:// URL"
                )));
            }
        }

        let nats_publish_queue = ini.get_u64("nats", "publishqueue", 65536)?.max(2) as usize;

        let limits = ClientLimits {
            hello_timeout: secs(&ini, "clients", "hellotimeout", 2)?,
            room_timeout: secs(&ini, "clients", "roomtimeout", 10)?,
            resume_timeout: secs(&ini, "sessions", "resumetimeout", 30)?,
            ping_interval: secs(&ini, "clients", "pinginterval", 54)?,
            read_timeout: secs(&ini, "clients", "readtimeout", 60)?,
            max_message_size: ini.get_u64("clients", "maxmessagesize", 65536)? as usize,
            outbox_bytes: ini.get_u64("clients", "outboxbytes", 1 << 20)? as usize,
            resume_queue_messages: ini.get_u64("sessions", "resumequeuemessages", 1000)? as usize,
            resume_queue_bytes: ini.get_u64("sessions", "resumequeuebytes", 1 << 20)? as usize,
            backend_ping_interval: secs(&ini, "backend", "pinginterval", 10)?,
            messages_per_second: ini.get_u64("clients", "messagespersecond", 500)? as u32,
            message_burst: ini.get_u64("clients", "messageburst", 5000)? as u32,
            bytes_per_second: ini.get_u64("clients", "bytespersecond", 1 << 20)?,
            byte_burst: ini.get_u64("clients", "byteburst", 8 << 20)?,
            slow_receiver_wait: secs(&ini, "clients", "slowreceiverwait", 5)?,
        };
        if limits.hello_timeout.is_zero() {
            return Err(ConfigError("[clients] hellotimeout: must be > 0".into()));
        }
        if limits.ping_interval.is_zero() || limits.read_timeout <= limits.ping_interval {
            return Err(ConfigError(
                "[clients] readtimeout: must be greater than pinginterval (> 0)".into(),
            ));
        }
        if limits.max_message_size < 1024 {
            return Err(ConfigError(
                "[clients] maxmessagesize: must be at least 1024".into(),
            ));
        }
        if limits.backend_ping_interval.is_zero() {
            return Err(ConfigError("[backend] pinginterval: must be > 0".into()));
        }
        if limits.messages_per_second == 0 {
            return Err(ConfigError(
                "[clients] messagespersecond: must be > 0".into(),
            ));
        }
        if limits.bytes_per_second == 0 {
            return Err(ConfigError("[clients] bytespersecond: must be > 0".into()));
        }
        if limits.message_burst == 0 {
            return Err(ConfigError("[clients] messageburst: must be > 0".into()));
        }
        if limits.byte_burst < limits.max_message_size as u64 {
            return Err(ConfigError(
                "[clients] byteburst: must be at least maxmessagesize".into(),
            ));
        }

        let http = HttpLimits {
            timeouts: listener_timeouts(&ini, "http")?,
            max_connections: ini.get_u64("http", "maxconnections", 65536)? as usize,
            max_connections_per_ip: ini.get_u64("http", "maxconnectionsperip", 500)? as usize,
        };
        let stats = StatsConfig {
            allowed_ips: match ini.get_nonempty("stats", "allowed_ips") {
                Some(v) => IpList::parse(&v)
                    .map_err(|e| ConfigError(format!("[stats] allowed_ips: {e}")))?,
                None => IpList::loopback(),
            },
        };
        let transient = TransientLimits {
            max_keys: ini.get_u64("transient", "maxkeys", 100)? as usize,
            max_key_length: ini.get_u64("transient", "maxkeylength", 256)? as usize,
            max_value_size: ini.get_u64("transient", "maxvaluesize", 16384)? as usize,
            max_room_bytes: ini.get_u64(
                "transient",
                "maxroombytes",
                (limits.outbox_bytes as u64 / 2).min(262144),
            )? as usize,
            max_ttl: secs(&ini, "transient", "maxttl", 86400)?,
        };
        // A joiner receives all of a room's transient data at once: it must
        // fit in its send queue next to the room reply and join events.
        if transient.max_room_bytes > limits.outbox_bytes / 2 {
            return Err(ConfigError(format!(
                "[transient] maxroombytes: must be at most half of [clients] outboxbytes ({})",
                limits.outbox_bytes / 2
            )));
        }
        let brute_force = BruteForceLimits {
            max_failures: ini.get_u64("clients", "maxfailedhellos", 10)? as u32,
            window: secs(&ini, "clients", "failedhellowindow", 30)?,
        };

        let federation = FederationConfig {
            skip_verify: ini.get_bool("federation", "skipverify", false)?,
            // As the Go server: missing, 0 or negative means 10 seconds.
            timeout: match ini.get_nonempty("federation", "timeout") {
                None => Duration::from_secs(10),
                Some(v) => match v.trim().parse::<i64>() {
                    Ok(n) if n > 0 => Duration::from_secs(n as u64),
                    Ok(_) => Duration::from_secs(10),
                    Err(_) => {
                        return Err(ConfigError(format!(
                            "[federation] timeout: `{v}` is not an integer"
                        )))
                    }
                },
            },
        };

        let log_level = ini
            .get_nonempty("logging", "level")
            .unwrap_or_else(|| "info".to_string());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(ConfigError(format!(
                "[logging] level: `{log_level}` is not a log filter (e.g. info, debug)"
            )));
        }
        let log_json = match ini.get_nonempty("logging", "format").as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError(format!(
                    "[logging] format: `{other}` is neither text nor json"
                )))
            }
        };

        // Validate values of sections we accept but do not implement, so a
        // typo does not go unnoticed, and remember them for a start-up log.
        let mut unsupported_sections = Vec::new();
        for s in ini.sections() {
            if SUPPORTED_SECTIONS.contains(&s) {
                continue;
            }
            let is_backend_section = backend.backends.iter().any(|b| b.id == s);
            if is_backend_section {
                continue;
            }
            if KNOWN_UNSUPPORTED.contains(&s) {
                unsupported_sections.push(s.to_string());
            }
        }
        let mcu = match mcu::parse(&ini)? {
            mcu::McuSection::None => None,
            mcu::McuSection::Janus(c) => Some(c),
            mcu::McuSection::Unsupported => {
                unsupported_sections.push("mcu (type proxy)".to_string());
                None
            }
        };
        unsupported_sections.sort();
        let mut obsolete_keys = Vec::new();
        if ini.get("http", "proxyips").is_some() {
            obsolete_keys.push(
                "[http] proxyips: no longer read; list your reverse proxies in [app] trustedproxies (the Go server's key)"
                    .to_string(),
            );
        }
        let _ = ini.get_bool("app", "debug", false)?;
        let allow_subscribe_any = ini.get_bool("app", "allowsubscribeany", false)?;

        Ok(Config {
            listen,
            https,
            app,
            threads,
            hash_key,
            block_key,
            internal_secret,
            backend,
            nats_urls,
            nats_publish_queue,
            limits,
            http,
            stats,
            transient,
            brute_force,
            federation,
            log_level,
            log_json,
            unsupported_sections,
            obsolete_keys,
            mcu,
            allow_subscribe_any,
        })
    }

    /// The settings that differ in `new` but that SIGHUP does not apply
    /// (the running server keeps its values until a restart). Backends,
    /// `[app] trustedproxies`, `[stats]`, `[logging] level` and the
    /// `[https]` certificate are reloaded and never listed.
    pub fn restart_needed(&self, new: &Config) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |changed: bool, what: &'static str| {
            if changed {
                out.push(what);
            }
        };
        check(self.listen != new.listen, "[http] listen");
        check(self.threads != new.threads, "[http] threads");
        check(
            self.http != new.http,
            "[http] readtimeout/writetimeout/maxconnections/maxconnectionsperip",
        );
        let https = |c: &Config| c.https.as_ref().map(|h| (h.listen.clone(), h.timeouts));
        check(
            https(self) != https(new),
            "[https] listen/readtimeout/writetimeout",
        );
        check(
            self.hash_key != new.hash_key || self.block_key != new.block_key,
            "[sessions] hashkey/blockkey",
        );
        check(
            self.internal_secret != new.internal_secret,
            "[clients] internalsecret",
        );
        check(self.nats_urls != new.nats_urls, "[nats] url");
        check(
            self.limits != new.limits,
            "[clients]/[sessions] timers and limits",
        );
        check(
            self.brute_force != new.brute_force,
            "[clients] maxfailedhellos/failedhellowindow",
        );
        check(self.transient != new.transient, "[transient]");
        check(self.federation != new.federation, "[federation]");
        check(self.log_json != new.log_json, "[logging] format");
        check(self.mcu != new.mcu, "[mcu]");
        check(
            self.allow_subscribe_any != new.allow_subscribe_any,
            "[app] allowsubscribeany",
        );
        let (a, b) = (&self.backend, &new.backend);
        check(
            a.timeout != b.timeout
                || a.connections_per_host != b.connections_per_host
                || a.skip_verify != b.skip_verify
                || a.max_concurrent_requests != b.max_concurrent_requests
                || a.max_response_size != b.max_response_size,
            "[backend] timeout/connectionsperhost/skipverify/maxconcurrentrequests/maxresponsesize",
        );
        out
    }

    fn parse_backends(ini: &IniFile) -> Result<BackendsConfig, ConfigError> {
        let allow_all = ini.get_bool("backend", "allowall", false)?;
        let common_secret = ini
            .get("backend", "secret")
            .map(|v| expand_env(&v))
            .unwrap_or_default();
        let timeout = secs(ini, "backend", "timeout", 10)?;
        if timeout.is_zero() {
            return Err(ConfigError("[backend] timeout: must be > 0".into()));
        }
        let connections_per_host = ini.get_u64("backend", "connectionsperhost", 8)? as usize;
        let skip_verify = ini.get_bool("backend", "skipverify", false)?;
        let max_concurrent_requests =
            ini.get_u64("backend", "maxconcurrentrequests", 256)? as usize;
        if max_concurrent_requests == 0 {
            return Err(ConfigError(
                "[backend] maxconcurrentrequests: must be > 0".into(),
            ));
        }
        let max_response_size = ini.get_u64("backend", "maxresponsesize", 1 << 20)? as usize;

        let mut backends = Vec::new();
        if let Some(ids) = ini.get_nonempty("backend", "backends") {
            for id in split_list(&ids) {
                let section = id.to_ascii_lowercase();
                let mut urls: Vec<String> = Vec::new();
                if let Some(list) = ini.get_nonempty(&section, "urls") {
                    urls.extend(
                        split_list(&expand_env(&list))
                            .iter()
                            .map(|u| normalize_url(u)),
                    );
                } else if let Some(u) = ini.get_nonempty(&section, "url") {
                    urls.push(normalize_url(&expand_env(&u)));
                }
                if urls.is_empty() {
                    return Err(ConfigError(format!(
                        "[{section}] urls: backend `{id}` has no url"
                    )));
                }
                for u in &urls {
                    validate_url(&section, "urls", u)?;
                }
                let secret = ini
                    .get_nonempty(&section, "secret")
                    .map(|v| expand_env(&v))
                    .unwrap_or_else(|| common_secret.clone());
                if secret.is_empty() {
                    return Err(ConfigError(format!(
                        "[{section}] secret: backend `{id}` has no secret"
                    )));
                }
                let session_limit = ini.get_u64(&section, "sessionlimit", 0)?;
                let max_stream_bitrate = ini.get_u64(&section, "maxstreambitrate", 0)?;
                let max_screen_bitrate = ini.get_u64(&section, "maxscreenbitrate", 0)?;
                backends.push(BackendConfig {
                    id: section,
                    urls,
                    secret,
                    session_limit,
                    max_stream_bitrate,
                    max_screen_bitrate,
                });
            }
        } else if let Some(allowed) = ini.get_nonempty("backend", "allowed") {
            // Legacy form: `allowed = host1, host2` with the common secret.
            if common_secret.is_empty() {
                return Err(ConfigError(
                    "[backend] secret: required with `allowed`".into(),
                ));
            }
            for host in split_list(&allowed) {
                backends.push(BackendConfig {
                    id: host.clone(),
                    urls: vec![format!("http://{host}"), format!("https://{host}")],
                    secret: common_secret.clone(),
                    session_limit: 0,
                    max_stream_bitrate: 0,
                    max_screen_bitrate: 0,
                });
            }
        }
        if allow_all && common_secret.is_empty() {
            return Err(ConfigError(
                "[backend] secret: required when allowall is enabled".into(),
            ));
        }
        Ok(BackendsConfig {
            allow_all,
            common_secret,
            backends,
            timeout,
            connections_per_host,
            skip_verify,
            max_concurrent_requests,
            max_response_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "
[http]
listen = 127.0.0.1:9090
[sessions]
hashkey = 0123456789abcdef0123456789abcdef
blockkey = 0123456789abcdef
[clients]
internalsecret = internal
[backend]
backends = one, two
timeout = 5
[one]
url = https://cloud.one.example/
secret = s1
sessionlimit = 3
[two]
urls = https://a.example, https://b.example/nc
secret = s2
[nats]
url = nats://loopback
[mcu]
type = janus
url = ws://127.0.0.1:8188
";

    #[test]
    fn debug_output_has_no_secrets() {
        let text = SAMPLE
            .replace("nats://loopback", "nats://user:natspass@nats.example:4222")
            .replace(
                "url = https://cloud.one.example/",
                "url = https://u:urlpass@cloud.one.example/",
            );
        let c = Config::parse(&text).unwrap();
        let d = format!("{c:?}");
        for secret in [
            "0123456789abcdef0123456789abcdef",
            "internal",
            "s1",
            "s2",
            "natspass",
            "urlpass",
        ] {
            assert!(!d.contains(&format!("\"{secret}")), "{secret} in {d}");
            assert!(!d.contains(&format!(":{secret}@")), "{secret} in {d}");
        }
        assert!(d.contains("nats.example"), "{d}");
    }

    #[test]
    fn parses_go_sample() {
        let c = Config::parse(SAMPLE).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:9090"]);
        assert!(c.https.is_none());
        assert_eq!(c.backend.backends.len(), 2);
        assert_eq!(
            c.backend.backends[0].urls,
            vec!["https://cloud.one.example"]
        );
        assert_eq!(c.backend.backends[0].session_limit, 3);
        assert_eq!(
            c.backend.backends[1].urls,
            vec!["https://a.example", "https://b.example/nc"]
        );
        assert_eq!(c.backend.timeout, Duration::from_secs(5));
        assert!(c.nats_urls.is_empty());
        assert!(c.unsupported_sections.is_empty());
        assert_eq!(
            c.mcu.as_ref().map(|m| m.url.as_str()),
            Some("ws://127.0.0.1:8188")
        );
    }

    #[test]
    fn errors_name_section_and_key() {
        let bad = SAMPLE.replace("timeout = 5", "timeout = soon");
        let e = Config::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("[backend] timeout"), "{e}");
        let bad = SAMPLE.replace("blockkey = 0123456789abcdef", "blockkey = short");
        let e = Config::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("[sessions] blockkey"), "{e}");
        let bad = SAMPLE.replace("url = https://cloud.one.example/", "");
        let e = Config::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("[one] urls"), "{e}");
    }

    #[test]
    fn threads_default_to_the_cores_and_can_be_set() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Config::parse(SAMPLE).unwrap().threads, cores);
        let one = SAMPLE.replace("[http]\n", "[http]\nthreads = 1\n");
        assert_eq!(Config::parse(&one).unwrap().threads, 1);
        let zero = SAMPLE.replace("[http]\n", "[http]\nthreads = 0\n");
        let e = Config::parse(&zero).unwrap_err().to_string();
        assert!(e.contains("[http] threads"), "{e}");
    }

    #[test]
    fn nats_list_and_legacy_loopback() {
        let c = Config::parse(&SAMPLE.replace("nats://loopback", ":loopback:")).unwrap();
        assert!(c.nats_urls.is_empty());
        let c = Config::parse(&SAMPLE.replace("nats://loopback", "nats://a:4222, nats://b:4222"))
            .unwrap();
        assert_eq!(c.nats_urls, vec!["nats://a:4222", "nats://b:4222"]);
    }

    #[test]
    fn listeners_as_the_go_server_reads_them() {
        // Only HTTPS: no HTTP listener.
        let text = SAMPLE.replace(
            "[http]\nlisten = 127.0.0.1:9090\n",
            "[https]\nlisten = 127.0.0.1:8443 [::1]:8443\ncertificate = /c.pem\nkey = /k.pem\nreadtimeout = 0\nwritetimeout = 7\n",
        );
        let c = Config::parse(&text).unwrap();
        assert!(c.listen.is_empty());
        let https = c.https.unwrap();
        assert_eq!(https.listen, vec!["127.0.0.1:8443", "[::1]:8443"]);
        assert_eq!(https.certificate, std::path::PathBuf::from("/c.pem"));
        // 0 means the default, as in Go.
        assert_eq!(https.timeouts.read, Duration::from_secs(15));
        assert_eq!(https.timeouts.write, Duration::from_secs(7));
        let e = Config::parse(&text.replace("key = /k.pem\n", ""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[https] key"), "{e}");
        let e = Config::parse(&SAMPLE.replace("127.0.0.1:9090", "localhost"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[http] listen"), "{e}");
        // No listener at all: the default HTTP one.
        let c = Config::parse(&SAMPLE.replace("listen = 127.0.0.1:9090\n", "")).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:8080"]);
        assert_eq!(c.http.timeouts.write, Duration::from_secs(30));
    }

    #[test]
    fn trusted_proxies_default_to_private_networks() {
        let c = Config::parse(SAMPLE).unwrap();
        for ip in ["127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "::1"] {
            assert!(c.app.trusted_proxies.contains(ip.parse().unwrap()), "{ip}");
        }
        assert!(!c.app.trusted_proxies.contains("8.8.8.8".parse().unwrap()));
        let c = Config::parse(&format!("{SAMPLE}[app]\ntrustedproxies = 192.0.2.0/24\n")).unwrap();
        assert!(c.app.trusted_proxies.contains("192.0.2.9".parse().unwrap()));
        assert!(!c.app.trusted_proxies.contains("127.0.0.1".parse().unwrap()));
        let e = Config::parse(&format!("{SAMPLE}[app]\ntrustedproxies = nope\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[app] trustedproxies"), "{e}");
    }

    #[test]
    fn what_needs_a_restart_is_named() {
        let a = Config::parse(SAMPLE).unwrap();
        let mut text = SAMPLE.replace("secret = s1", "secret = s1-new");
        text.push_str("[app]\ntrustedproxies = 10.0.0.1\n[stats]\nallowed_ips = 10.0.0.2\n[logging]\nlevel = debug\n");
        assert!(a.restart_needed(&Config::parse(&text).unwrap()).is_empty());
        text = text.replace("127.0.0.1:9090", "127.0.0.1:9091");
        text.push_str("[clients]\nhellotimeout = 5\n");
        assert_eq!(
            a.restart_needed(&Config::parse(&text).unwrap()),
            vec!["[http] listen", "[clients]/[sessions] timers and limits"]
        );
    }

    #[test]
    fn the_old_proxyips_key_is_named() {
        let c =
            Config::parse(&SAMPLE.replace("[http]\n", "[http]\nproxyips = 10.0.0.1\n")).unwrap();
        assert_eq!(c.obsolete_keys.len(), 1);
        assert!(c.obsolete_keys[0].contains("[app] trustedproxies"));
        assert!(Config::parse(SAMPLE).unwrap().obsolete_keys.is_empty());
    }
}
