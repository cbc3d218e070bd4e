//! `[mcu]`: the media server (Janus) that publishers and subscribers use,
//! with the Go server's keys.

use std::time::Duration;

use super::goconf::{expand_env, IniFile};
use super::{ConfigError, IpList};

/// Default `[mcu] maxstreambitrate` (bits/s): 1 Mbit.
pub const DEFAULT_MAX_STREAM_BITRATE: u64 = 1024 * 1024;
/// Default `[mcu] maxscreenbitrate` (bits/s): 2 Mbit.
pub const DEFAULT_MAX_SCREEN_BITRATE: u64 = 2 * 1024 * 1024;

/// A configured Janus gateway.
#[derive(Clone, PartialEq)]
pub struct McuConfig {
    /// WebSocket URL of Janus (`ws://` or `wss://`).
    pub url: String,
    /// Highest bitrate of a `video` stream (bits/s).
    pub max_stream_bitrate: u64,
    /// Highest bitrate of a `screen` stream (bits/s).
    pub max_screen_bitrate: u64,
    /// Candidate addresses always allowed (wins over `blocked`).
    pub allowed_candidates: IpList,
    /// Candidate addresses removed from client candidates and SDPs.
    pub blocked_candidates: IpList,
    /// Timeout of each Janus request, also how long a subscriber waits
    /// for its publisher (with proxies: of the whole MCU request, all
    /// proxies tried).
    pub timeout: Duration,
    /// `type = proxy`: the signaling proxies (`url` is then the list as
    /// written).
    pub proxy: Option<Box<ProxyConfig>>,
}

/// `[mcu] type = proxy`: the signaling proxies and how to log in to them.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Each proxy: (URL as configured, WebSocket URL dialled: the URL
    /// resolved against `proxy`, `http` → `ws`, `https` → `wss`).
    pub urls: Vec<(String, String)>,
    /// `token_id`: the JWT `iss` (the proxy's `[tokens]` key name).
    pub token_id: String,
    /// `token_key`: the path of the RSA private key.
    pub token_key: String,
    /// The key file's PEM (compared on SIGHUP).
    pub key_pem: Vec<u8>,
    /// The key itself, for the hello tokens.
    pub key: std::sync::Arc<jsonwebtoken::EncodingKey>,
    /// `proxytimeout`: each request to one proxy, and its WebSocket
    /// handshake.
    pub proxy_timeout: Duration,
}

impl PartialEq for ProxyConfig {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.urls,
            &self.token_id,
            &self.token_key,
            &self.key_pem,
            self.proxy_timeout,
        ) == (
            &o.urls,
            &o.token_id,
            &o.token_key,
            &o.key_pem,
            o.proxy_timeout,
        )
    }
}

impl std::fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|u| crate::logsafe::Url(&u.0).to_string())
            .collect();
        f.debug_struct("ProxyConfig")
            .field("urls", &urls)
            .field("token_id", &self.token_id)
            .field("token_key", &self.token_key)
            .field("proxy_timeout", &self.proxy_timeout)
            .finish()
    }
}

impl std::fmt::Debug for McuConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McuConfig")
            .field("url", &crate::logsafe::Url(&self.url).to_string())
            .field("max_stream_bitrate", &self.max_stream_bitrate)
            .field("max_screen_bitrate", &self.max_screen_bitrate)
            .field("allowed_candidates", &self.allowed_candidates)
            .field("blocked_candidates", &self.blocked_candidates)
            .field("timeout", &self.timeout)
            .field("proxy", &self.proxy)
            .finish()
    }
}

/// What `[mcu]` asks for.
pub enum McuSection {
    /// No MCU (no section, or `type` empty).
    None,
    /// Janus (`proxy` is `None`) or signaling proxies (`Some`).
    Janus(McuConfig),
}

fn ip_list(ini: &IniFile, key: &str) -> Result<IpList, ConfigError> {
    match ini.get_nonempty("mcu", key) {
        Some(v) => IpList::parse(&v).map_err(|e| ConfigError(format!("[mcu] {key}: {e}"))),
        None => Ok(IpList::default()),
    }
}

/// Reads `[mcu]`.
pub fn parse(ini: &IniFile) -> Result<McuSection, ConfigError> {
    let url = ini
        .get_nonempty("mcu", "url")
        .map(|u| expand_env(&u))
        .unwrap_or_default();
    let kind = ini
        .get_nonempty("mcu", "type")
        .map(|t| t.to_ascii_lowercase());
    let kind = match kind {
        Some(k) => k,
        // A URL without type means Janus, as in the Go server.
        None if !url.is_empty() => "janus".to_string(),
        None => return Ok(McuSection::None),
    };
    let proxy = match kind.as_str() {
        "janus" => {
            if url.is_empty() {
                return Err(ConfigError("[mcu] url: required with type janus".into()));
            }
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(ConfigError(format!(
                    "[mcu] url: `{}` is not a ws:// or wss:// URL",
                    crate::logsafe::Url(&url)
                )));
            }
            None
        }
        "proxy" => Some(Box::new(super::mcu_proxy::parse(ini, &url)?)),
        other => {
            return Err(ConfigError(format!(
                "[mcu] type: `{other}` is neither janus nor proxy"
            )))
        }
    };
    let positive = |v: u64, default: u64| if v == 0 { default } else { v };
    let timeout = super::at_most_a_year("mcu", "timeout", ini.get_u64("mcu", "timeout", 10)?)?;
    if timeout.is_zero() {
        return Err(ConfigError("[mcu] timeout: must be > 0".into()));
    }
    Ok(McuSection::Janus(McuConfig {
        url,
        max_stream_bitrate: positive(
            ini.get_u64("mcu", "maxstreambitrate", DEFAULT_MAX_STREAM_BITRATE)?,
            DEFAULT_MAX_STREAM_BITRATE,
        ),
        max_screen_bitrate: positive(
            ini.get_u64("mcu", "maxscreenbitrate", DEFAULT_MAX_SCREEN_BITRATE)?,
            DEFAULT_MAX_SCREEN_BITRATE,
        ),
        allowed_candidates: ip_list(ini, "allowedcandidates")?,
        blocked_candidates: ip_list(ini, "blockedcandidates")?,
        timeout,
        proxy,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mcu(text: &str) -> Result<McuSection, ConfigError> {
        parse(&IniFile::parse(text).unwrap())
    }

    #[test]
    fn janus_keys_and_defaults() {
        let McuSection::Janus(c) = mcu("[mcu]\ntype = janus\nurl = ws://127.0.0.1:8188\n").unwrap()
        else {
            panic!("janus expected")
        };
        assert_eq!(c.max_stream_bitrate, 1048576);
        assert_eq!(c.max_screen_bitrate, 2097152);
        assert_eq!(c.timeout, Duration::from_secs(10));
        let McuSection::Janus(c) = mcu(
            "[mcu]\nurl = ws://j:1\nmaxstreambitrate = 500000\nmaxscreenbitrate = 0\n\
             allowedcandidates = 10.0.0.0/8\nblockedcandidates = 1.2.3.0/24\ntimeout = 2\n",
        )
        .unwrap() else {
            panic!("a url alone means janus")
        };
        assert_eq!(c.max_stream_bitrate, 500000);
        assert_eq!(c.max_screen_bitrate, 2097152);
        assert!(c.allowed_candidates.contains("10.1.2.3".parse().unwrap()));
        assert!(c.blocked_candidates.contains("1.2.3.9".parse().unwrap()));
        assert_eq!(c.timeout, Duration::from_secs(2));
    }

    #[test]
    fn errors_name_the_key() {
        let e = |t: &str| mcu(t).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e("[mcu]\ntype = janus\n").contains("[mcu] url"));
        assert!(e("[mcu]\ntype = foo\nurl = ws://x\n").contains("[mcu] type"));
        assert!(e("[mcu]\nurl = http://x\n").contains("[mcu] url"));
        assert!(e("[mcu]\nurl = ws://x\nblockedcandidates = nope\n")
            .contains("[mcu] blockedcandidates"));
        assert!(e("[mcu]\nurl = ws://x\ntimeout = 0\n").contains("[mcu] timeout"));
        assert!(e("[mcu]\ntype = proxy\n").contains("[mcu] url"));
        assert!(matches!(mcu("[mcu]\n"), Ok(McuSection::None)));
    }
}
