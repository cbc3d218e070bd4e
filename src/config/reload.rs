//! What SIGHUP changes in the running server: the live settings (`[app]`,
//! `[stats]`), and the list of changed settings that need a restart.

use super::goconf::IniFile;
use super::{Config, ConfigError, IpList};

/// `[app]`: reloaded on SIGHUP.
#[derive(Debug, Clone, PartialEq)]
pub struct AppConfig {
    /// Reverse proxies whose `X-Real-IP` / `X-Forwarded-For` headers are
    /// believed (`trustedproxies`; default: loopback only, where the Go
    /// server also trusts private networks).
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

/// `[app] trustedproxies` (default: loopback only; the Go server also
/// trusts private networks, which lets any LAN host name itself 127.0.0.1).
pub(super) fn parse_app(ini: &IniFile) -> Result<AppConfig, ConfigError> {
    Ok(AppConfig {
        trusted_proxies: match ini.get_nonempty("app", "trustedproxies") {
            Some(v) => {
                IpList::parse(&v).map_err(|e| ConfigError(format!("[app] trustedproxies: {e}")))?
            }
            None => IpList::loopback(),
        },
    })
}

/// `[stats] allowed_ips` (default: loopback).
pub(super) fn parse_stats(ini: &IniFile) -> Result<StatsConfig, ConfigError> {
    Ok(StatsConfig {
        allowed_ips: match ini.get_nonempty("stats", "allowed_ips") {
            Some(v) => {
                IpList::parse(&v).map_err(|e| ConfigError(format!("[stats] allowed_ips: {e}")))?
            }
            None => IpList::loopback(),
        },
    })
}

impl Config {
    /// The settings that differ in `new` but that SIGHUP does not apply
    /// (the running server keeps its values until a restart). Backends,
    /// `[app] trustedproxies`, `[stats]`, `[logging] level`, the GeoIP overrides and the
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
        check(self.state_file != new.state_file, "[sessions] statefile");
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
        // Bitrates, candidate lists and timeout are reloaded (Mcu::reload).
        let janus = |c: &Config| c.mcu.as_ref().map(|m| (m.url.clone(), m.proxy.clone()));
        check(
            janus(self) != janus(new),
            "[mcu] type/url/token_id/token_key/proxytimeout",
        );
        check(self.turn != new.turn, "[turn]");
        // The overrides are reloaded (Hub::reload).
        check(self.geoip.source != new.geoip.source, "[geoip] url/license");
        check(
            self.backend.etcd_prefix != new.backend.etcd_prefix || self.etcd != new.etcd,
            "[backend] backendtype/backendprefix, [etcd]",
        );
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
}
