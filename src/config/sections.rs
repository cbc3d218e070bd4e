//! The smaller sections: `[sessions]` keys, `[clients] internalsecret`,
//! `[nats]`, `[federation]`, `[logging]`, `[mcu]`'s type.

use std::time::Duration;

use super::goconf::{expand_env, split_list, IniFile};
use super::{go_secs, mcu, ConfigError, IpList};

/// `[federation]`: how this server dials the signaling servers of other
/// Nextclouds for federated conversations.
#[derive(Debug, Clone, PartialEq)]
pub struct FederationConfig {
    /// Skip TLS certificate checks (development only).
    pub skip_verify: bool,
    /// Timeout of dialing and of each handshake step.
    pub timeout: Duration,
    /// `allowips`: addresses that may be dialled although they are in a
    /// range refused by default (loopback, private, link-local, ...).
    pub allow_ips: IpList,
    /// `allowhttp`: plain `http://` / `ws://` signaling servers allowed.
    pub allow_http: bool,
    /// Name servers for the host names of remote signaling servers; empty
    /// (always, from a file) means the system's (`/etc/resolv.conf`).
    /// Only code sets it: tests point it at a server that never answers.
    #[doc(hidden)]
    pub nameservers: Vec<std::net::SocketAddr>,
}

/// `[sessions] hashkey` (required) and `blockkey` (16, 24 or 32 bytes, or
/// empty), validated as by the Go server.
pub(super) fn parse_session_keys(ini: &IniFile) -> Result<(String, String), ConfigError> {
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
    Ok((hash_key, block_key))
}

/// `[sessions] statefile`: where the sessions are kept across a restart
/// (None: the default, `sessions.state` in `$STATE_DIRECTORY`, see
/// [`super::Config::state_file_in`]). Refused with NATS: a cluster's other
/// processes end a stopping process's sessions.
pub(super) fn parse_state_file(
    ini: &IniFile,
    nats_urls: &[String],
) -> Result<Option<std::path::PathBuf>, ConfigError> {
    let Some(path) = ini.get_nonempty("sessions", "statefile") else {
        return Ok(None);
    };
    if !nats_urls.is_empty() {
        return Err(ConfigError(
            "[sessions] statefile: not supported with [nats] url (the other processes end the sessions of a process that stops)".into(),
        ));
    }
    Ok(Some(path.into()))
}

/// `[clients] internalsecret` (may be empty).
pub(super) fn parse_internal_secret(ini: &IniFile) -> String {
    ini.get("clients", "internalsecret")
        .map(|v| expand_env(&v))
        .unwrap_or_default()
}

/// `[nats] url` (the loopback forms mean the in-process bus: no URL) and
/// `publishqueue`.
pub(super) fn parse_nats(ini: &IniFile) -> Result<(Vec<String>, usize), ConfigError> {
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
    Ok((nats_urls, nats_publish_queue))
}

/// `[federation]`.
pub(super) fn parse_federation(ini: &IniFile) -> Result<FederationConfig, ConfigError> {
    Ok(FederationConfig {
        skip_verify: ini.get_bool("federation", "skipverify", false)?,
        // As the Go server: missing, 0 or negative means 10 seconds.
        timeout: go_secs(ini, "federation", "timeout", 10)?,
        allow_ips: match ini.get_nonempty("federation", "allowips") {
            Some(v) => {
                IpList::parse(&v).map_err(|e| ConfigError(format!("[federation] allowips: {e}")))?
            }
            None => IpList::default(),
        },
        allow_http: ini.get_bool("federation", "allowhttp", false)?,
        nameservers: Vec::new(),
    })
}

/// `[logging] level` (a tracing filter, default `info`) and `format`
/// (JSON lines or text).
pub(super) fn parse_logging(ini: &IniFile) -> Result<(String, bool), ConfigError> {
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
    Ok((log_level, log_json))
}

/// `[mcu]` with `type = janus` or `type = proxy`.
pub(super) fn parse_mcu(ini: &IniFile) -> Result<Option<mcu::McuConfig>, ConfigError> {
    Ok(match mcu::parse(ini)? {
        mcu::McuSection::None => None,
        mcu::McuSection::Janus(c) => Some(c),
    })
}
