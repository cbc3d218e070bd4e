//! `[mcu] type = proxy`: the Go server's keys for its signaling proxies
//! (`url`, `token_id`, `token_key`, `proxytimeout`), read as it reads them;
//! what this server does not implement (`urltype = etcd`, `dnsdiscovery`,
//! `skipverify`) stops start-up naming the key.

use super::goconf::IniFile;
use super::mcu::ProxyConfig;
use super::ConfigError;

/// Default `[mcu] proxytimeout` (seconds), as Go.
const DEFAULT_PROXY_TIMEOUT: u64 = 2;

/// Reads the proxy keys of `[mcu]` (`url` is the expanded list).
pub(super) fn parse(ini: &IniFile, url: &str) -> Result<ProxyConfig, ConfigError> {
    match ini
        .get_nonempty("mcu", "urltype")
        .map(|t| t.to_ascii_lowercase())
        .as_deref()
    {
        None | Some("static") => {}
        Some("etcd") => {
            return Err(ConfigError(
                "[mcu] urltype: `etcd` (proxies announced in etcd) is not implemented; list the proxies in [mcu] url (urltype = static)".into(),
            ))
        }
        Some(other) => {
            return Err(ConfigError(format!(
                "[mcu] urltype: `{other}` is neither static nor etcd"
            )))
        }
    }
    for (key, what) in [
        ("dnsdiscovery", "finding proxies through DNS is not implemented; list each proxy in [mcu] url"),
        ("skipverify", "TLS without certificate verification is not supported; give the proxies certificates the system trusts"),
    ] {
        if ini.get_bool("mcu", key, false)? {
            return Err(ConfigError(format!("[mcu] {key}: {what}")));
        }
    }
    let urls = url
        .split_whitespace()
        .map(dial_url)
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(ConfigError(
            "[mcu] url: required with type proxy (the proxies' base URLs, space-separated)".into(),
        ));
    }
    let token_id = ini
        .get_nonempty("mcu", "token_id")
        .ok_or_else(|| ConfigError("[mcu] token_id: required with type proxy".into()))?;
    let token_key = ini
        .get_nonempty("mcu", "token_key")
        .ok_or_else(|| ConfigError("[mcu] token_key: required with type proxy".into()))?;
    let (key_pem, key) = read_key(&token_key)?;
    let secs = ini.get_u64("mcu", "proxytimeout", DEFAULT_PROXY_TIMEOUT)?;
    let secs = if secs == 0 {
        DEFAULT_PROXY_TIMEOUT
    } else {
        secs
    };
    let proxy_timeout = super::at_most_a_year("mcu", "proxytimeout", secs)?;
    Ok(ProxyConfig {
        urls,
        token_id,
        token_key,
        key_pem,
        key: std::sync::Arc::new(key),
        proxy_timeout,
    })
}

/// The WebSocket URL of a proxy: `base` resolved against `proxy` (Go's
/// `ResolveReference`: `http://h/sub/` → `/sub/proxy`, `http://h/sub` →
/// `/proxy`), `http` → `ws`, `https` → `wss`.
pub(crate) fn dial_url(base: &str) -> Result<(String, String), ConfigError> {
    let shown = crate::logsafe::Url(base).to_string();
    let bad = |why: String| ConfigError(format!("[mcu] url: `{shown}` {why}"));
    let parsed = reqwest::Url::parse(base).map_err(|e| bad(format!("is not a URL: {e}")))?;
    let scheme = match parsed.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        other => return Err(bad(format!("has scheme `{other}`, not http(s) or ws(s)"))),
    };
    let mut dial = parsed
        .join("proxy")
        .map_err(|e| bad(format!("cannot be resolved: {e}")))?;
    dial.set_scheme(scheme)
        .map_err(|_| bad("cannot be turned into a WebSocket URL".into()))?;
    Ok((base.to_string(), dial.to_string()))
}

/// The PEM and the RSA private key at `path` (PKCS#1 or PKCS#8).
fn read_key(path: &str) -> Result<(Vec<u8>, jsonwebtoken::EncodingKey), ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError(format!("[mcu] token_key: cannot read `{path}`: {e}")))?;
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| {
        ConfigError(format!(
            "[mcu] token_key: `{path}` is not an RSA private key in PEM: {e}"
        ))
    })?;
    Ok((pem, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_urls_resolve_as_go_does() {
        let d = |u: &str| dial_url(u).unwrap().1;
        assert_eq!(d("http://127.0.0.1:9000"), "ws://127.0.0.1:9000/proxy");
        assert_eq!(d("https://p.example/sub/"), "wss://p.example/sub/proxy");
        assert_eq!(d("https://p.example/sub"), "wss://p.example/proxy");
        assert_eq!(d("ws://p:1/x/"), "ws://p:1/x/proxy");
        assert!(dial_url("ftp://p")
            .unwrap_err()
            .to_string()
            .contains("[mcu] url"));
        assert!(dial_url("nope").is_err());
    }

    fn parse_text(text: &str) -> Result<ProxyConfig, ConfigError> {
        let ini = IniFile::parse(text).unwrap();
        let url = ini.get_nonempty("mcu", "url").unwrap_or_default();
        parse(&ini, &url)
    }

    #[test]
    fn missing_or_bad_keys_are_named() {
        let e = |t: &str| {
            parse_text(t)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(e("[mcu]\ntype = proxy\n").contains("[mcu] url"));
        assert!(e("[mcu]\nurl = http://p:1\n").contains("[mcu] token_id"));
        assert!(e("[mcu]\nurl = http://p:1\ntoken_id = s\n").contains("[mcu] token_key"));
        let missing =
            e("[mcu]\nurl = http://p:1\ntoken_id = s\ntoken_key = /nonexistent/key.pem\n");
        assert!(
            missing.contains("[mcu] token_key") && missing.contains("/nonexistent/key.pem"),
            "{missing}"
        );
        let dir = std::env::temp_dir().join(format!("mcu-proxy-key-{}", std::process::id()));
        std::fs::write(&dir, "not a key").unwrap();
        let garbage = e(&format!(
            "[mcu]\nurl = http://p:1\ntoken_id = s\ntoken_key = {}\n",
            dir.display()
        ));
        assert!(
            garbage.contains("[mcu] token_key") && garbage.contains("not an RSA private key"),
            "{garbage}"
        );
        let _ = std::fs::remove_file(&dir);
        assert!(e("[mcu]\nurl = http://p:1\nurltype = etcd\n").contains("[mcu] urltype"));
        assert!(e("[mcu]\nurl = http://p:1\ndnsdiscovery = true\n").contains("[mcu] dnsdiscovery"));
        assert!(e("[mcu]\nurl = http://p:1\nskipverify = true\n").contains("[mcu] skipverify"));
    }
}
