//! `server.conf` (the Go server's INI file) turned into a typed, validated
//! [`Config`]. Everything is checked before any port is bound; errors name
//! the section and key.

mod backends;
pub mod etcd;
pub mod findings;
pub mod geoip;
pub mod goconf;
pub mod iplist;
pub mod known;
mod limits;
mod listeners;
pub mod mcu;
mod mcu_proxy;
mod reload;
mod sections;
mod turn;

use std::time::Duration;

use goconf::IniFile;

pub use backends::{BackendConfig, BackendsConfig};
pub use findings::{Finding, Severity};
pub use iplist::IpList;
pub use limits::{BruteForceLimits, ClientLimits, TransientLimits};
pub use listeners::{HttpLimits, HttpsConfig, ListenerTimeouts};
pub use reload::{AppConfig, Live, LiveSettings, StatsConfig};
pub use sections::FederationConfig;
pub use turn::TurnConfig;

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
    /// default: the number of cores but one, at least one.
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
    /// What an admin must hear about: unknown keys, keys this server
    /// does not honour, unset `$(VAR)`, sample secrets, risky values
    /// (logged at start, printed by `check`; a refusal stops start-up).
    pub findings: Vec<Finding>,
    /// `[mcu]` with `type = janus`: the media server.
    pub mcu: Option<mcu::McuConfig>,
    /// `[turn]`: the TURN REST API (`/turn/credentials`).
    pub turn: TurnConfig,
    /// `[app] allowsubscribeany`: subscribe to any publisher, not only to
    /// those in the same call.
    pub allow_subscribe_any: bool,
    /// `[sessions] statefile` as set (see [`Config::state_file_in`]).
    pub state_file: Option<std::path::PathBuf>,
    /// `[etcd]`: the etcd cluster, when endpoints (or SRV discovery) are
    /// set.
    pub etcd: Option<etcd::EtcdConfig>,
    /// `[geoip]`, `[geoip-overrides]`, `[continent-overrides]`.
    pub geoip: geoip::GeoIpConfig,
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
pub(crate) fn safe_urls(urls: &[String]) -> Vec<String> {
    urls.iter()
        .map(|u| crate::logsafe::Url(u).to_string())
        .collect()
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
            .field("findings", &self.findings)
            .field("mcu", &self.mcu)
            .field("turn", &self.turn)
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

/// The longest duration a setting may have: a year. Larger values are
/// refused, not clamped (added to a clock they would overflow it).
pub const MAX_SECS: u64 = 365 * 24 * 3600;

fn secs(ini: &IniFile, section: &str, key: &str, default: u64) -> Result<Duration, ConfigError> {
    at_most_a_year(section, key, ini.get_u64(section, key, default)?)
}

/// `n` seconds, refused above [`MAX_SECS`].
pub(crate) fn at_most_a_year(section: &str, key: &str, n: u64) -> Result<Duration, ConfigError> {
    if n > MAX_SECS {
        return Err(ConfigError(format!(
            "[{section}] {key}: {n} seconds is more than a year ({MAX_SECS})"
        )));
    }
    Ok(Duration::from_secs(n))
}

/// Seconds as the Go server reads them: missing, 0 or negative means the
/// default.
fn go_secs(ini: &IniFile, section: &str, key: &str, default: u64) -> Result<Duration, ConfigError> {
    match ini.get_nonempty(section, key) {
        None => Ok(Duration::from_secs(default)),
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) if n > 0 => at_most_a_year(section, key, n as u64),
            Ok(_) => Ok(Duration::from_secs(default)),
            Err(_) => Err(ConfigError(format!(
                "[{section}] {key}: `{v}` is not an integer"
            ))),
        },
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text)
    }

    /// Parses and validates config text, section by section (the first
    /// error found is returned).
    /// The file the sessions are kept in across a restart: `[sessions]
    /// statefile`, else `sessions.state` in `state_directory` (systemd's
    /// `$STATE_DIRECTORY`, its first entry), else none; never with NATS.
    pub fn state_file_in(
        &self,
        state_directory: Option<&std::ffi::OsStr>,
    ) -> Option<std::path::PathBuf> {
        if !self.nats_urls.is_empty() {
            return None;
        }
        if let Some(p) = &self.state_file {
            return Some(p.clone());
        }
        let first = state_directory?.to_str()?.split(':').next()?;
        (!first.is_empty()).then(|| std::path::Path::new(first).join("sessions.state"))
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let ini = IniFile::parse(text)?;
        let (listen, https) = listeners::parse_listeners(&ini)?;
        let app = reload::parse_app(&ini)?;
        let threads = listeners::parse_threads(&ini)?;
        let (hash_key, block_key) = sections::parse_session_keys(&ini)?;
        let internal_secret = sections::parse_internal_secret(&ini);
        let mut backend = backends::parse_backends(&ini)?;
        let etcd = etcd::parse(&ini)?;
        backend.etcd_prefix = etcd::parse_backend_type(&ini, etcd.as_ref())?;
        if backend.etcd_prefix.is_some() {
            // As the Go server: with etcd, the backends come from etcd alone
            // (`findings` warns about static ones that are set).
            backend.backends.clear();
            backend.allow_all = false;
        }
        let (nats_urls, nats_publish_queue) = sections::parse_nats(&ini)?;
        let state_file = sections::parse_state_file(&ini, &nats_urls)?;
        let limits = limits::parse_client_limits(&ini)?;
        let http = listeners::parse_http_limits(&ini)?;
        let stats = reload::parse_stats(&ini)?;
        let transient = limits::parse_transient(&ini, &limits)?;
        let brute_force = limits::parse_brute_force(&ini)?;
        let federation = sections::parse_federation(&ini)?;
        let (log_level, log_json) = sections::parse_logging(&ini)?;
        let mcu = sections::parse_mcu(&ini)?;
        let turn = turn::parse(&ini)?;
        let geoip = geoip::parse(&ini)?;
        let _ = ini.get_bool("app", "debug", false)?;
        let allow_subscribe_any = ini.get_bool("app", "allowsubscribeany", false)?;

        let mut config = Config {
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
            findings: Vec::new(),
            mcu,
            turn,
            allow_subscribe_any,
            state_file,
            etcd,
            geoip,
        };
        config.findings = findings::collect(&ini, &config);
        Ok(config)
    }

    /// The findings that stop start-up, as one message (a line each).
    pub fn refusals(&self) -> Option<String> {
        let lines: Vec<&str> = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Refuse)
            .map(|f| f.text.as_str())
            .collect();
        (!lines.is_empty()).then(|| lines.join("\n"))
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
        assert!(c.findings.is_empty(), "{:?}", c.findings);
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
    fn message_counts_over_32_bits_are_refused_not_wrapped() {
        for key in [
            "messagespersecond",
            "messageburst",
            "mcurequestspersecond",
            "mcurequestburst",
        ] {
            let text = SAMPLE.replace("[clients]\n", &format!("[clients]\n{key} = 4294967297\n"));
            let e = Config::parse(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn durations_over_a_year_are_refused() {
        for (section, key) in [
            ("clients", "hellotimeout"),
            ("sessions", "resumetimeout"),
            ("mcu", "timeout"),
            ("http", "readtimeout"),
        ] {
            let text = SAMPLE.replace(
                &format!("[{section}]\n"),
                &format!("[{section}]\n{key} = 18446744073709551615\n"),
            );
            let e = Config::parse(&text).unwrap_err().to_string();
            assert!(e.contains(key), "{section} {key}: {e}");
        }
        let ok = SAMPLE.replace(
            "[clients]\n",
            &format!("[clients]\nhellotimeout = {MAX_SECS}\n"),
        );
        assert!(Config::parse(&ok).is_ok());
    }

    #[test]
    fn threads_default_to_the_cores_but_one_and_can_be_set() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(
            Config::parse(SAMPLE).unwrap().threads,
            listeners::default_threads(cores)
        );
        assert_eq!(listeners::default_threads(1), 1);
        assert_eq!(listeners::default_threads(2), 1);
        assert_eq!(listeners::default_threads(16), 15);
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
    fn trusted_proxies_default_to_loopback_only() {
        let c = Config::parse(SAMPLE).unwrap();
        for ip in ["127.0.0.1", "127.9.9.9", "::1"] {
            assert!(c.app.trusted_proxies.contains(ip.parse().unwrap()), "{ip}");
        }
        // Unlike the Go server: a LAN host cannot name itself 127.0.0.1.
        for ip in ["10.1.2.3", "172.20.0.1", "192.168.1.1", "fd00::1"] {
            assert!(!c.app.trusted_proxies.contains(ip.parse().unwrap()), "{ip}");
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
        assert_eq!(c.findings.len(), 1);
        assert!(c.findings[0].text.contains("[app] trustedproxies"));
        assert!(Config::parse(SAMPLE).unwrap().findings.is_empty());
    }
}
