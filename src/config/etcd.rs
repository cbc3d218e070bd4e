//! `[etcd]`: the etcd cluster, and `[backend] backendtype = etcd` with its
//! `backendprefix` (the backends are then the JSON values under that
//! prefix, watched; `backend/etcd/` reads them).

use std::path::PathBuf;

use super::goconf::{expand_env, split_list, IniFile};
use super::ConfigError;

/// How much of the etcd client's own activity is logged (`[etcd]
/// loglevel`, the Go client's zap levels; `dpanic`, `panic` and `fatal`
/// mean `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EtcdLogLevel {
    /// Also each event of the watch and each endpoint tried.
    Debug,
    /// Also connections made and backends read (the default).
    Info,
    /// Also lost connections and retries.
    Warn,
    /// Only requests that failed for good (bad answers, bad values).
    Error,
}

/// Client certificate, key and CA for an etcd cluster that requires TLS.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdTls {
    /// `clientkey`.
    pub client_key: PathBuf,
    /// `clientcert`.
    pub client_cert: PathBuf,
    /// `cacert`: the only CA trusted for the etcd servers.
    pub ca_cert: PathBuf,
}

/// `[etcd]` (or the Go server's older place of these keys, `[mcu]`).
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdConfig {
    /// `endpoints`: `host:port` or `http(s)://host:port`, tried in turn.
    pub endpoints: Vec<String>,
    /// `loglevel`.
    pub log_level: EtcdLogLevel,
    /// `clientkey` + `clientcert` + `cacert`, when all three are set.
    pub tls: Option<EtcdTls>,
}

fn parse_log_level(v: &str) -> Option<EtcdLogLevel> {
    Some(match v.to_ascii_lowercase().as_str() {
        "debug" => EtcdLogLevel::Debug,
        "info" => EtcdLogLevel::Info,
        "warn" => EtcdLogLevel::Warn,
        "error" | "dpanic" | "panic" | "fatal" => EtcdLogLevel::Error,
        _ => return None,
    })
}

/// `[etcd]`, falling back key by key to `[mcu]` as the Go server does;
/// None without endpoints. `discoverysrv` (SRV discovery of the etcd
/// servers) without `endpoints` is refused: not implemented (Go ignores it
/// when `endpoints` is set, so do we).
pub(super) fn parse(ini: &IniFile) -> Result<Option<EtcdConfig>, ConfigError> {
    let get = |key: &str| {
        ini.get_nonempty("etcd", key)
            .or_else(|| ini.get_nonempty("mcu", key))
            .map(|v| expand_env(&v))
    };
    let endpoints = get("endpoints").map(|v| split_list(&v)).unwrap_or_default();
    for e in &endpoints {
        let (scheme, rest) = e.split_once("://").unwrap_or(("http", e));
        if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
            return Err(ConfigError(format!(
                "[etcd] endpoints: `{e}` is not host:port or http(s)://host:port"
            )));
        }
    }
    if endpoints.is_empty() {
        if get("discoverysrv").is_some() {
            return Err(ConfigError(
                "[etcd] discoverysrv: SRV discovery of the etcd servers is not supported; list them in [etcd] endpoints".into(),
            ));
        }
        return Ok(None);
    }
    let log_level = match ini.get_nonempty("etcd", "loglevel") {
        None => EtcdLogLevel::Info,
        Some(v) => parse_log_level(&v).ok_or_else(|| {
            ConfigError(format!(
                "[etcd] loglevel: unsupported etcd log level `{v}` (debug, info, warn, error)"
            ))
        })?,
    };
    let tls = match (get("clientkey"), get("clientcert"), get("cacert")) {
        (Some(k), Some(c), Some(ca)) => Some(EtcdTls {
            client_key: k.into(),
            client_cert: c.into(),
            ca_cert: ca.into(),
        }),
        _ => None,
    };
    Ok(Some(EtcdConfig {
        endpoints,
        log_level,
        tls,
    }))
}

/// `[backend] backendtype` and `backendprefix`: Some(prefix) for `etcd`.
pub(super) fn parse_backend_type(
    ini: &IniFile,
    etcd: Option<&EtcdConfig>,
) -> Result<Option<String>, ConfigError> {
    match ini
        .get_nonempty("backend", "backendtype")
        .map(|t| t.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("static") => Ok(None),
        Some("etcd") => {
            if etcd.is_none() {
                return Err(ConfigError(
                    "[backend] backendtype: `etcd` needs [etcd] endpoints".into(),
                ));
            }
            match ini.get_nonempty("backend", "backendprefix") {
                Some(p) => Ok(Some(p)),
                None => Err(ConfigError(
                    "[backend] backendprefix: required with backendtype = etcd (e.g. /signaling/backend)"
                        .into(),
                )),
            }
        }
        Some(other) => Err(ConfigError(format!(
            "[backend] backendtype: `{other}` is neither static nor etcd"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(text: &str) -> Result<Option<EtcdConfig>, ConfigError> {
        parse(&IniFile::parse(text).unwrap())
    }

    #[test]
    fn endpoints_levels_and_tls() {
        let c = etcd("[etcd]\nendpoints = 127.0.0.1:2379, https://e2:2379\nloglevel = WARN\nclientkey = k\nclientcert = c\ncacert = ca\n")
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoints, ["127.0.0.1:2379", "https://e2:2379"]);
        assert_eq!(c.log_level, EtcdLogLevel::Warn);
        assert_eq!(c.tls.unwrap().ca_cert, PathBuf::from("ca"));
        // Partial TLS settings: none, as the Go client.
        let c = etcd("[etcd]\nendpoints = e:1\ncacert = ca\n")
            .unwrap()
            .unwrap();
        assert!(c.tls.is_none());
        assert!(etcd("[etcd]\nendpoints = e:1\nloglevel = loud\n").is_err());
        assert!(etcd("[etcd]\nendpoints = unix:///x\n").is_err());
        assert!(etcd("[etcd]\n").unwrap().is_none());
        // The Go server's older place of the keys.
        let c = etcd("[mcu]\nendpoints = e:1\n").unwrap().unwrap();
        assert_eq!(c.endpoints, vec!["e:1".to_string()]);
        // SRV discovery: refused, naming the key; ignored beside endpoints
        // (as Go).
        let e = etcd("[mcu]\ndiscoverysrv = example.com\n").unwrap_err();
        assert!(e.0.contains("[etcd] discoverysrv"), "{e:?}");
        assert!(
            etcd("[etcd]\nendpoints = e:1\ndiscoverysrv = example.com\n")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn backend_type() {
        let ini = |t: &str| IniFile::parse(t).unwrap();
        let e = etcd("[etcd]\nendpoints = e:1\n").unwrap();
        let t = ini("[backend]\nbackendtype = etcd\nbackendprefix = /sig/b\n");
        assert_eq!(
            parse_backend_type(&t, e.as_ref()).unwrap().as_deref(),
            Some("/sig/b")
        );
        assert!(parse_backend_type(&t, None).is_err());
        let t = ini("[backend]\nbackendtype = etcd\n");
        assert!(parse_backend_type(&t, e.as_ref()).is_err());
        let t = ini("[backend]\nbackendtype = consul\n");
        assert!(parse_backend_type(&t, e.as_ref()).is_err());
        let t = ini("[backend]\nbackendtype = static\n");
        assert_eq!(parse_backend_type(&t, e.as_ref()).unwrap(), None);
    }
}
