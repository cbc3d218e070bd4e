//! `[geoip]`, `[geoip-overrides]` and `[continent-overrides]`, read as the
//! Go server reads them; bad values are errors naming the key (the Go
//! server skips some of them with a log line).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::goconf::{expand_env, IniFile};
use super::iplist::IpNet;
use super::ConfigError;
use crate::geoip::continents;

/// Where the GeoIP database comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GeoIpSource {
    /// A local `.mmdb` file (`file://…` or an absolute path): read at
    /// start (a file that does not load stops start-up) and again when it
    /// changed, checked daily.
    File(PathBuf),
    /// An `http(s)://` URL (or the MaxMind URL `license` builds):
    /// downloaded after start and daily, with `If-Modified-Since`.
    Url(String),
}

/// The three GeoIP sections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoIpConfig {
    /// `[geoip] url` or `license`; None: no database.
    pub source: Option<GeoIpSource>,
    /// `[geoip-overrides]`: address or network → country (upper case),
    /// the most specific network first.
    pub overrides: Vec<(IpNet, String)>,
    /// `[continent-overrides]`: continent → further continents whose
    /// proxies count as near for clients on it.
    pub continents: BTreeMap<String, Vec<String>>,
    /// How often the database is looked at again (a day, as the Go
    /// server). Only code sets it: tests make it short.
    #[doc(hidden)]
    pub refresh: Duration,
}

/// The Go server looks at its database once a day.
pub const REFRESH: Duration = Duration::from_secs(24 * 3600);

impl Default for GeoIpConfig {
    fn default() -> Self {
        GeoIpConfig {
            source: None,
            overrides: Vec::new(),
            continents: BTreeMap::new(),
            refresh: REFRESH,
        }
    }
}

/// MaxMind's download URL of GeoLite2-Country for a license key, as the Go
/// server builds it.
pub fn maxmind_url(license: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const QUERY: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');
    format!(
        "https://download.maxmind.com/app/geoip_download?edition_id=GeoLite2-Country\
         &license_key={}&suffix=tar.gz",
        utf8_percent_encode(license, QUERY)
    )
}

/// True for a country code as overrides and proxies use them: two
/// letters, upper case.
pub fn is_country(code: &str) -> bool {
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Reads the three sections.
pub(super) fn parse(ini: &IniFile) -> Result<GeoIpConfig, ConfigError> {
    Ok(GeoIpConfig {
        source: parse_source(ini)?,
        overrides: parse_overrides(ini)?,
        continents: parse_continents(ini)?,
        refresh: REFRESH,
    })
}

fn parse_source(ini: &IniFile) -> Result<Option<GeoIpSource>, ConfigError> {
    let url = ini
        .get_nonempty("geoip", "url")
        .filter(|u| u != "default" && u != "none");
    let Some(url) = url else {
        return Ok(ini
            .get_nonempty("geoip", "license")
            .map(|l| GeoIpSource::Url(maxmind_url(&l))));
    };
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            return Err(ConfigError("[geoip] url: `file://` names no file".into()));
        }
        return Ok(Some(GeoIpSource::File(PathBuf::from(path))));
    }
    if url.starts_with('/') {
        return Ok(Some(GeoIpSource::File(PathBuf::from(url))));
    }
    let lower = url.to_ascii_lowercase();
    if (lower.starts_with("http://") || lower.starts_with("https://"))
        && reqwest::Url::parse(&url).is_ok_and(|u| u.host_str().is_some())
    {
        return Ok(Some(GeoIpSource::Url(url)));
    }
    Err(ConfigError(format!(
        "[geoip] url: `{}` is neither an http(s):// URL nor a file (file:///path or /path)",
        crate::logsafe::Url(&url)
    )))
}

/// `[geoip-overrides]`: `1.2.3.4 = DE`, `10.0.0.0/8 = FR`. IPv6 keys
/// cannot be written (the INI format ends a key at the first `:`, for the
/// Go server too).
fn parse_overrides(ini: &IniFile) -> Result<Vec<(IpNet, String)>, ConfigError> {
    let mut out = Vec::new();
    for (key, _) in ini.options("geoip-overrides") {
        let value = ini.get("geoip-overrides", key).unwrap_or_default();
        let country = expand_env(&value).trim().to_ascii_uppercase();
        let net = IpNet::parse(key).ok_or_else(|| {
            ConfigError(format!(
                "[geoip-overrides] {key}: not an IP address or CIDR network"
            ))
        })?;
        if !is_country(&country) {
            return Err(ConfigError(format!(
                "[geoip-overrides] {key}: `{value}` is not a two-letter country code"
            )));
        }
        out.push((net, country));
    }
    // The most specific network wins (the Go server takes any match).
    out.sort_by(|a, b| b.0.prefix().cmp(&a.0.prefix()).then(a.0.cmp(&b.0)));
    Ok(out)
}

/// `[continent-overrides]`: `AF = EU` (clients in Africa may also use
/// proxies in Europe), values comma-separated.
fn parse_continents(ini: &IniFile) -> Result<BTreeMap<String, Vec<String>>, ConfigError> {
    let mut out = BTreeMap::new();
    for (key, _) in ini.options("continent-overrides") {
        let continent = key.trim().to_ascii_uppercase();
        let known = continents::CONTINENTS.join(", ");
        if !continents::is_continent(&continent) {
            return Err(ConfigError(format!(
                "[continent-overrides] {key}: not a continent code ({known})"
            )));
        }
        let value = ini.get("continent-overrides", key).unwrap_or_default();
        let mut to = Vec::new();
        for v in expand_env(&value).split(',').map(str::trim) {
            let v = v.to_ascii_uppercase();
            if v.is_empty() {
                continue;
            }
            if !continents::is_continent(&v) {
                return Err(ConfigError(format!(
                    "[continent-overrides] {key}: `{v}` is not a continent code ({known})"
                )));
            }
            if !to.contains(&v) {
                to.push(v);
            }
        }
        if to.is_empty() {
            return Err(ConfigError(format!(
                "[continent-overrides] {key}: names no continent"
            )));
        }
        out.insert(continent, to);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<GeoIpConfig, String> {
        parse(&IniFile::parse(text).unwrap()).map_err(|e| e.0)
    }

    #[test]
    fn url_license_and_files() {
        assert_eq!(parse_text("").unwrap(), GeoIpConfig::default());
        let src = |t: &str| parse_text(t).unwrap().source;
        assert_eq!(src("[geoip]\nurl = none\n"), None);
        assert_eq!(src("[geoip]\nurl = default\n"), None);
        assert_eq!(
            src("[geoip]\nlicense = ab c+d\n"),
            Some(GeoIpSource::Url(
                "https://download.maxmind.com/app/geoip_download?edition_id=GeoLite2-Country\
                 &license_key=ab%20c%2Bd&suffix=tar.gz"
                    .into()
            ))
        );
        // url wins over license; "default" falls back to it.
        assert_eq!(
            src("[geoip]\nlicense = k\nurl = https://db.example/x.mmdb\n"),
            Some(GeoIpSource::Url("https://db.example/x.mmdb".into()))
        );
        assert!(matches!(
            src("[geoip]\nlicense = k\nurl = default\n"),
            Some(GeoIpSource::Url(u)) if u.contains("license_key=k&")
        ));
        assert_eq!(
            src("[geoip]\nurl = file:///var/lib/geo.mmdb\n"),
            Some(GeoIpSource::File("/var/lib/geo.mmdb".into()))
        );
        assert_eq!(
            src("[geoip]\nurl = /var/lib/geo.mmdb\n"),
            Some(GeoIpSource::File("/var/lib/geo.mmdb".into()))
        );
        for bad in ["ftp://x/y", "geo.mmdb", "file://", "http://"] {
            let e = parse_text(&format!("[geoip]\nurl = {bad}\n")).unwrap_err();
            assert!(e.starts_with("[geoip] url:"), "{bad}: {e}");
        }
    }

    #[test]
    fn overrides_are_checked_and_most_specific_first() {
        let c =
            parse_text("[geoip-overrides]\n10.0.0.0/8 = fr\n10.1.0.0/16 = DE \n10.1.2.3 = it\n")
                .unwrap();
        let got: Vec<(String, &str)> = c
            .overrides
            .iter()
            .map(|(n, c)| (n.to_string(), c.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.1.2.3/32".to_string(), "IT"),
                ("10.1.0.0/16".to_string(), "DE"),
                ("10.0.0.0/8".to_string(), "FR"),
            ]
        );
        for (text, key) in [
            ("1.2.3.x = DE", "[geoip-overrides] 1.2.3.x:"),
            ("1.2.3.0/33 = DE", "[geoip-overrides] 1.2.3.0/33:"),
            ("1.2.3.4 =", "[geoip-overrides] 1.2.3.4:"),
            ("1.2.3.4 = Germany", "[geoip-overrides] 1.2.3.4:"),
            ("1.2.3.4 = loopback", "[geoip-overrides] 1.2.3.4:"),
            // The INI format cuts an IPv6 key at its first colon.
            ("2001:db8::/32 = DE", "[geoip-overrides] 2001:"),
        ] {
            let e = parse_text(&format!("[geoip-overrides]\n{text}\n")).unwrap_err();
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }

    #[test]
    fn continent_overrides_are_checked() {
        let c = parse_text("[continent-overrides]\naf = eu\nSA = NA, eu,NA\n").unwrap();
        assert_eq!(c.continents["AF"], vec!["EU"]);
        assert_eq!(c.continents["SA"], vec!["NA", "EU"]);
        for (text, key) in [
            ("XX = EU", "[continent-overrides] xx:"),
            ("AF = Europe", "[continent-overrides] af:"),
            ("AF = ,", "[continent-overrides] af:"),
        ] {
            let e = parse_text(&format!("[continent-overrides]\n{text}\n")).unwrap_err();
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }
}
