//! `[backend]` and the section of each backend it lists: the Nextcloud
//! instances allowed to use this server, and how it talks to them.

use std::time::Duration;

use super::goconf::{expand_env, split_list, IniFile};
use super::{redact, safe_urls, secs, ConfigError};

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
    /// Made from the legacy `[backend] allowed` list (the id is the host;
    /// the URLs are its http and https forms).
    pub legacy: bool,
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
    /// `backendtype = etcd`: the `backendprefix` whose keys hold the
    /// backends (`backends` is then empty: they come from etcd).
    pub etcd_prefix: Option<String>,
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
            .field("etcd_prefix", &self.etcd_prefix)
            .finish_non_exhaustive()
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

/// `[backend]`: the request settings, then the backends, listed by id
/// (`backends`, a section each) or in the legacy form (`allowed` hosts
/// with the common secret).
pub(super) fn parse_backends(ini: &IniFile) -> Result<BackendsConfig, ConfigError> {
    let allow_all = ini.get_bool("backend", "allowall", false)?;
    let common_secret = ini
        .get("backend", "secret")
        .map(|v| expand_env(&v))
        .unwrap_or_default();
    let timeout = secs(ini, "backend", "timeout", 10)?;
    if timeout.is_zero() {
        return Err(ConfigError("[backend] timeout: must be > 0".into()));
    }
    // As the Go server: 0 means the default.
    let connections_per_host = match ini.get_u64("backend", "connectionsperhost", 8)? {
        0 => 8,
        n => n as usize,
    };
    let skip_verify = ini.get_bool("backend", "skipverify", false)?;
    let max_concurrent_requests = ini.get_u64("backend", "maxconcurrentrequests", 256)? as usize;
    if max_concurrent_requests == 0 {
        return Err(ConfigError(
            "[backend] maxconcurrentrequests: must be > 0".into(),
        ));
    }
    let max_response_size = ini.get_u64("backend", "maxresponsesize", 1 << 20)? as usize;

    let backends = if let Some(ids) = ini.get_nonempty("backend", "backends") {
        split_list(&ids)
            .iter()
            .map(|id| parse_backend(ini, id, &common_secret))
            .collect::<Result<Vec<_>, _>>()?
    } else if let Some(allowed) = ini.get_nonempty("backend", "allowed") {
        legacy_backends(&allowed, &common_secret)?
    } else {
        Vec::new()
    };
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
        etcd_prefix: None,
    })
}

/// The section of backend `id` (named as the id in lower case): its URLs,
/// its secret (default: the common one) and its limits.
fn parse_backend(
    ini: &IniFile,
    id: &str,
    common_secret: &str,
) -> Result<BackendConfig, ConfigError> {
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
        .unwrap_or_else(|| common_secret.to_string());
    if secret.is_empty() {
        return Err(ConfigError(format!(
            "[{section}] secret: backend `{id}` has no secret"
        )));
    }
    let session_limit = ini.get_u64(&section, "sessionlimit", 0)?;
    let max_stream_bitrate = ini.get_u64(&section, "maxstreambitrate", 0)?;
    let max_screen_bitrate = ini.get_u64(&section, "maxscreenbitrate", 0)?;
    Ok(BackendConfig {
        id: section,
        urls,
        secret,
        session_limit,
        max_stream_bitrate,
        max_screen_bitrate,
        legacy: false,
    })
}

/// Legacy form: `allowed = host1, host2` with the common secret, over
/// http and https.
fn legacy_backends(allowed: &str, common_secret: &str) -> Result<Vec<BackendConfig>, ConfigError> {
    if common_secret.is_empty() {
        return Err(ConfigError(
            "[backend] secret: required with `allowed`".into(),
        ));
    }
    Ok(split_list(allowed)
        .into_iter()
        .map(|host| BackendConfig {
            id: host.clone(),
            urls: vec![format!("http://{host}"), format!("https://{host}")],
            secret: common_secret.to_string(),
            session_limit: 0,
            max_stream_bitrate: 0,
            max_screen_bitrate: 0,
            legacy: true,
        })
        .collect())
}
