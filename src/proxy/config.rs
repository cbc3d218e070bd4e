//! `proxy.conf`: the Go proxy's file (`nextcloud-spreed-signaling-proxy`),
//! read unchanged with the crate's goconf reader. What it asks for that
//! this proxy does not do stops start-up naming the key; unknown keys are
//! warned about (the same [`Finding`]s `check` prints).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::limits::{DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_SESSIONS};
use crate::config::goconf::{expand_env, IniFile, DEFAULT_SECTION};
use crate::config::mcu::{McuConfig, McuSection};
use crate::config::{ConfigError, Finding, IpList, Severity};

/// A validated `proxy.conf`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// `[http] listen`: addresses (space-separated in the file); empty
    /// means no listener, as the Go proxy.
    pub listen: Vec<String>,
    /// `[app] name`: shown in the start-up log and by `check`.
    pub name: String,
    /// `[app] country`: upper-cased ISO 3166 code sent in the hello.
    pub country: Option<String>,
    /// `[app] trustedproxies`: who may name the client of `/stats` and
    /// `/metrics` (default loopback).
    pub trusted_proxies: IpList,
    /// `[tokens]`: token id (the JWT `iss`) and its public key file.
    pub tokens: Vec<(String, PathBuf)>,
    /// `[mcu]`: Janus.
    pub mcu: McuConfig,
    /// `[stats] allowed_ips` (default 127.0.0.1, as the Go proxy).
    pub stats_allowed: IpList,
    /// `[http] maxconnections`: open WebSocket connections (0: no cap).
    pub max_connections: u64,
    /// `[app] maxsessions`: sessions at once (0: no cap).
    pub max_sessions: u64,
    /// What to warn about or refuse (see [`ProxyConfig::refusals`]).
    pub findings: Vec<Finding>,
}

/// Every key the proxy reads or knows, by section.
const KNOWN: &[(&str, &[&str])] = &[
    (
        "http",
        &["listen", "readtimeout", "writetimeout", "maxconnections"],
    ),
    (
        "app",
        &[
            "name",
            "maxsessions",
            "debug",
            "trustedproxies",
            "country",
            "tokentype",
            "hostname",
            "token_id",
            "token_key",
            "skipverify",
        ],
    ),
    ("bandwidth", &["incoming", "outgoing"]),
    (
        "mcu",
        &[
            "type",
            "url",
            "maxstreambitrate",
            "maxscreenbitrate",
            "allowedcandidates",
            "blockedcandidates",
            "timeout",
        ],
    ),
    ("stats", &["allowed_ips"]),
    (
        "etcd",
        &[
            "endpoints",
            "discoverysrv",
            "discoveryservice",
            "clientkey",
            "clientcert",
            "cacert",
        ],
    ),
    ("backend", &["skipverify"]),
];

/// Keys of newer Go proxies that change what the proxy does and that
/// this one does not have: a value that is set (not empty, false or 0)
/// stops start-up.
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "app",
        "token_id",
        "remote streams (publishers of other proxies) are not implemented: remove it",
    ),
    (
        "app",
        "token_key",
        "remote streams (publishers of other proxies) are not implemented: remove it",
    ),
    (
        "app",
        "hostname",
        "remote streams (publishers of other proxies) are not implemented: remove it",
    ),
    (
        "bandwidth",
        "incoming",
        "bandwidth limits are not implemented: remove it (or set 0)",
    ),
    (
        "bandwidth",
        "outgoing",
        "bandwidth limits are not implemented: remove it (or set 0)",
    ),
];

/// Keys read by the Go proxy whose loss is small: warned about when set.
const WARNED: &[(&str, &str, &str)] = &[
    ("app", "debug", "there are no pprof debug handlers; ignored"),
    (
        "http",
        "readtimeout",
        "requests have their own deadlines here (WebSocket pings); ignored",
    ),
    (
        "http",
        "writetimeout",
        "requests have their own deadlines here (WebSocket pings); ignored",
    ),
    (
        "app",
        "skipverify",
        "only used for remote streams, which are not implemented; ignored",
    ),
    (
        "backend",
        "skipverify",
        "only used for remote streams, which are not implemented; ignored",
    ),
];

/// ISO 3166-1 alpha-2 codes (and XK), as the Go proxy accepts for
/// `[app] country`.
const COUNTRIES: &str =
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ \
BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ \
DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT \
GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY \
KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX \
MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS \
RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN \
TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS XK YE YT ZA ZM ZW";

/// True for a valid upper-case country code.
pub fn valid_country(code: &str) -> bool {
    code.len() == 2 && COUNTRIES.split(' ').any(|c| c == code)
}

fn is_set(v: &str) -> bool {
    let v = v.trim().to_ascii_lowercase();
    !v.is_empty() && !["false", "f", "no", "n", "off", "0"].contains(&v.as_str())
}

impl ProxyConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        ProxyConfig::parse(&text)
    }

    /// Validates the text of a `proxy.conf`.
    pub fn parse(text: &str) -> Result<ProxyConfig, ConfigError> {
        let ini = IniFile::parse(text).map_err(ConfigError)?;
        let mut findings = Vec::new();
        refused_and_warned(&ini, &mut findings);
        unknown_keys(&ini, &mut findings);
        let listen = ini
            .get_nonempty("http", "listen")
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let country = match ini.get_nonempty("app", "country") {
            None => None,
            Some(c) => {
                let c = c.trim().to_ascii_uppercase();
                if !valid_country(&c) {
                    return Err(ConfigError(format!(
                        "[app] country: `{c}` is not an ISO 3166 country code"
                    )));
                }
                Some(c)
            }
        };
        let trusted_proxies = match ini.get_nonempty("app", "trustedproxies") {
            Some(v) => {
                IpList::parse(&v).map_err(|e| ConfigError(format!("[app] trustedproxies: {e}")))?
            }
            None => IpList::loopback(),
        };
        let stats_allowed = match ini.get_nonempty("stats", "allowed_ips") {
            Some(v) => {
                IpList::parse(&v).map_err(|e| ConfigError(format!("[stats] allowed_ips: {e}")))?
            }
            None => IpList::parse("127.0.0.1").map_err(ConfigError)?,
        };
        Ok(ProxyConfig {
            listen,
            name: ini.get_nonempty("app", "name").unwrap_or_default(),
            country,
            trusted_proxies,
            tokens: tokens(&ini)?,
            mcu: mcu(&ini)?,
            stats_allowed,
            max_connections: ini
                .get_u64("http", "maxconnections", DEFAULT_MAX_CONNECTIONS)
                .map_err(ConfigError)?,
            max_sessions: ini
                .get_u64("app", "maxsessions", DEFAULT_MAX_SESSIONS)
                .map_err(ConfigError)?,
            findings,
        })
    }

    /// The refusals, one per line; None when start-up may go on.
    pub fn refusals(&self) -> Option<String> {
        let r: Vec<&str> = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Refuse)
            .map(|f| f.text.as_str())
            .collect();
        (!r.is_empty()).then(|| r.join("\n"))
    }
}

/// `[app] tokentype` and the keys of newer Go proxies.
fn refused_and_warned(ini: &IniFile, out: &mut Vec<Finding>) {
    let push = |out: &mut Vec<Finding>, severity, text| out.push(Finding { severity, text });
    match ini
        .get_nonempty("app", "tokentype")
        .map(|t| t.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("static") => {}
        Some("etcd") => push(
            out,
            Severity::Refuse,
            "[app] tokentype: `etcd` is not implemented: list the servers' public keys in [tokens] (tokentype = static)".into(),
        ),
        Some(other) => push(
            out,
            Severity::Refuse,
            format!("[app] tokentype: `{other}` is neither static nor etcd"),
        ),
    }
    for (section, key, why) in REFUSED {
        if ini.get(section, key).is_some_and(|v| is_set(&v)) {
            push(out, Severity::Refuse, format!("[{section}] {key}: {why}"));
        }
    }
    for (section, key, why) in WARNED {
        if ini.get(section, key).is_some_and(|v| is_set(&v)) {
            push(out, Severity::Warn, format!("[{section}] {key}: {why}"));
        }
    }
}

/// Keys and sections the proxy does not know (`[tokens]` holds any id).
fn unknown_keys(ini: &IniFile, out: &mut Vec<Finding>) {
    let mut sections: Vec<&str> = ini.sections().collect();
    sections.sort_unstable();
    for section in sections {
        if section == "tokens" || section == DEFAULT_SECTION {
            continue;
        }
        let Some((_, keys)) = KNOWN.iter().find(|(s, _)| *s == section) else {
            out.push(Finding {
                severity: Severity::Warn,
                text: format!("[{section}]: unknown section, ignored"),
            });
            continue;
        };
        let mut names: Vec<&str> = ini.options(section).map(|(k, _)| k).collect();
        names.sort_unstable();
        for key in names {
            if !keys.contains(&key) {
                out.push(Finding {
                    severity: Severity::Warn,
                    text: format!("[{section}] {key}: unknown key, ignored"),
                });
            }
        }
    }
}

/// `[tokens] <id> = <public key PEM path>` (`keyformat` is etcd's).
fn tokens(ini: &IniFile) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    let mut out = Vec::new();
    let mut ids: Vec<&str> = ini.options("tokens").map(|(k, _)| k).collect();
    ids.sort_unstable();
    for id in ids {
        if id == "keyformat" {
            continue;
        }
        let path = ini.get("tokens", id).unwrap_or_default();
        let path = expand_env(path.trim());
        if path.is_empty() {
            return Err(ConfigError(format!(
                "[tokens] {id}: no public key file given"
            )));
        }
        out.push((id.to_string(), PathBuf::from(path)));
    }
    Ok(out)
}

/// `[mcu]`: only Janus (the Go proxy's only type).
fn mcu(ini: &IniFile) -> Result<McuConfig, ConfigError> {
    let kind = ini
        .get_nonempty("mcu", "type")
        .map(|t| t.trim().to_ascii_lowercase());
    if let Some(k) = kind.as_deref().filter(|k| *k != "janus") {
        return Err(ConfigError(format!(
            "[mcu] type: `{k}` is not supported by the proxy (only janus)"
        )));
    }
    if ini.get_nonempty("mcu", "url").is_none() {
        return Err(ConfigError(
            "[mcu] url: required (the WebSocket URL of Janus, e.g. ws://127.0.0.1:8188)".into(),
        ));
    }
    // The server's reader of the same keys (type janus, url, bitrates,
    // candidate lists, timeout).
    match crate::config::mcu::parse(ini)? {
        McuSection::Janus(c) => Ok(c),
        _ => Err(ConfigError("[mcu] type: janus expected".into())),
    }
}

/// How long a proxy session lives after its last use (as Go).
pub const SESSION_EXPIRY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[http]\nlisten = 127.0.0.1:9090\n[app]\ntokentype = static\n\
        [tokens]\nserver1 = /etc/keys/server1.pem\n[mcu]\ntype = janus\nurl = ws://127.0.0.1:8188/\n";

    fn err(text: &str) -> String {
        ProxyConfig::parse(text)
            .err()
            .map(|e| e.0)
            .unwrap_or_default()
    }

    #[test]
    fn the_go_sample_reads() {
        let c = ProxyConfig::parse(MINIMAL).unwrap();
        assert_eq!(c.listen, vec!["127.0.0.1:9090"]);
        assert_eq!(
            c.tokens,
            vec![("server1".into(), PathBuf::from("/etc/keys/server1.pem"))]
        );
        assert_eq!(c.mcu.url, "ws://127.0.0.1:8188/");
        assert_eq!(c.mcu.max_stream_bitrate, 1048576);
        assert!(c.stats_allowed.contains("127.0.0.1".parse().unwrap()));
        assert!(!c.stats_allowed.contains("127.0.0.2".parse().unwrap()));
        assert!(c.refusals().is_none());
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert_eq!(c.country, None);
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.max_sessions, DEFAULT_MAX_SESSIONS);
    }

    #[test]
    fn the_caps_are_read_and_checked() {
        let c = ProxyConfig::parse(&format!(
            "{MINIMAL}[http]\nmaxconnections = 3\n[app]\nmaxsessions = 0\n"
        ))
        .unwrap();
        assert_eq!((c.max_connections, c.max_sessions), (3, 0));
        assert!(c.findings.is_empty(), "{:?}", c.findings);
        assert!(err(&format!("{MINIMAL}[http]\nmaxconnections = -1\n"))
            .contains("[http] maxconnections"));
        assert!(err(&format!("{MINIMAL}[app]\nmaxsessions = many\n")).contains("[app] maxsessions"));
    }

    #[test]
    fn country_is_upper_cased_and_checked() {
        let c = ProxyConfig::parse(&format!("{MINIMAL}[app]\ncountry = de\n")).unwrap();
        assert_eq!(c.country.as_deref(), Some("DE"));
        assert!(err(&format!("{MINIMAL}[app]\ncountry = XY\n")).contains("[app] country"));
        assert!(err(&format!("{MINIMAL}[app]\ncountry = GER\n")).contains("[app] country"));
    }

    #[test]
    fn what_is_not_done_is_refused_naming_the_key() {
        let r = |extra: &str| {
            ProxyConfig::parse(&format!("{MINIMAL}{extra}"))
                .unwrap()
                .refusals()
                .unwrap_or_default()
        };
        assert!(r("[app]\ntokentype = etcd\n").contains("[app] tokentype"));
        assert!(r("[app]\ntokentype = foo\n").contains("[app] tokentype"));
        assert!(r("[bandwidth]\nincoming = 100\n").contains("[bandwidth] incoming"));
        assert!(r("[app]\ntoken_id = s\n").contains("[app] token_id"));
        assert_eq!(r("[bandwidth]\nincoming = 0\n"), "");
        assert!(err("[mcu]\ntype = proxy\nurl = ws://x\n").contains("[mcu] type"));
        assert!(err("[mcu]\ntype = janus\n").contains("[mcu] url"));
        assert!(
            err(&format!("{MINIMAL}[stats]\nallowed_ips = nope\n")).contains("[stats] allowed_ips")
        );
        assert!(err(&format!("{MINIMAL}[mcu]\nmaxstreambitrate = x\n"))
            .contains("[mcu] maxstreambitrate"));
        assert!(err(&format!("{MINIMAL}[tokens]\nempty =\n")).contains("[tokens] empty"));
    }

    #[test]
    fn unknown_keys_are_warned() {
        let c = ProxyConfig::parse(&format!(
            "{MINIMAL}[app]\nfoo = 1\n[nats]\nurl = x\n[app]\ndebug = true\n"
        ))
        .unwrap();
        let texts: Vec<&str> = c.findings.iter().map(|f| f.text.as_str()).collect();
        assert!(
            texts.iter().any(|t| t.starts_with("[app] foo:")),
            "{texts:?}"
        );
        assert!(texts.iter().any(|t| t.starts_with("[nats]:")), "{texts:?}");
        assert!(
            texts.iter().any(|t| t.starts_with("[app] debug:")),
            "{texts:?}"
        );
        assert!(c.refusals().is_none());
    }
}
