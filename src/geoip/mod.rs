//! GeoIP as the Go server does it: a client's country from its address
//! (`[geoip-overrides]` first, then loopback, then the MaxMind database of
//! `[geoip] url`/`license`), and the continents a client counts as near
//! (`[continent-overrides]`). The country picks the proxy of a publisher
//! (`mcu/proxy/select.rs`) and labels `signaling_client_countries_total`.
//!
//! The database is replaced as a whole (`ArcSwap`): lookups never wait for
//! a reload, and a reload that fails keeps the database in use.

pub mod continents;
mod load;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio_util::sync::CancellationToken;

use crate::config::geoip::{is_country, GeoIpConfig, GeoIpSource};
use crate::config::iplist::IpNet;
use crate::logsafe::Url;
pub use load::{probe, Database};

/// Where a client is, as the Go server names it in its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Located {
    /// A country code (upper case).
    Country(Arc<str>),
    /// A loopback address without an override.
    Loopback,
    /// Not in the database, or no database.
    Unknown,
    /// No address.
    NoAddress,
}

impl Located {
    /// The country, when there is one (what picks a proxy and counts in
    /// the metrics).
    pub fn country(&self) -> Option<&Arc<str>> {
        match self {
            Located::Country(c) => Some(c),
            _ => None,
        }
    }
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Located::Country(c) => c,
            Located::Loopback => "loopback",
            Located::Unknown => "unknown-country",
            Located::NoAddress => "no-country",
        })
    }
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Updated {
    /// A database was (re)loaded.
    Loaded,
    /// The file or download has not changed.
    Unchanged,
}

/// The GeoIP state of a server: database, overrides, continent overrides.
pub struct GeoIp {
    source: Option<GeoIpSource>,
    refresh: Duration,
    db: ArcSwapOption<Database>,
    overrides: ArcSwap<Vec<(IpNet, Arc<str>)>>,
    continents: ArcSwap<BTreeMap<String, Vec<String>>>,
    /// The file's modification time, or the download's `Last-Modified`.
    stamp: Mutex<Stamp>,
    http: reqwest::Client,
}

#[derive(Default)]
struct Stamp {
    modified: Option<SystemTime>,
    last_modified: Option<String>,
}

impl GeoIp {
    /// The GeoIP state of `cfg`, without a database yet ([`GeoIp::start`]).
    pub fn new(cfg: &GeoIpConfig) -> Result<Arc<GeoIp>, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(600))
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("spreed-signaling/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("[geoip]: HTTP client: {e}"))?;
        let geo = Arc::new(GeoIp {
            source: cfg.source.clone(),
            refresh: cfg.refresh,
            db: ArcSwapOption::empty(),
            overrides: ArcSwap::from_pointee(Vec::new()),
            continents: ArcSwap::from_pointee(BTreeMap::new()),
            stamp: Mutex::default(),
            http,
        });
        geo.set_overrides(cfg);
        Ok(geo)
    }

    /// Loads a `[geoip] url` file now (an error stops start-up, as with
    /// the Go server) and starts the reloads ([`GeoIp::spawn`]); a
    /// download happens there, not waited for.
    pub async fn start(self: &Arc<Self>, cancel: CancellationToken) -> Result<(), String> {
        match &self.source {
            Some(GeoIpSource::File(path)) => {
                tracing::info!(file = %path.display(), "using the GeoIP database");
                self.update()
                    .await
                    .map_err(|e| format!("[geoip] url: {e}"))?;
            }
            Some(GeoIpSource::Url(url)) => {
                tracing::info!(url = %Url(url), "downloading the GeoIP database");
            }
            None => tracing::info!("not using a GeoIP database"),
        }
        self.spawn(cancel);
        Ok(())
    }

    /// `[geoip-overrides]` and `[continent-overrides]` of `cfg` (SIGHUP).
    pub fn set_overrides(&self, cfg: &GeoIpConfig) {
        let list = cfg
            .overrides
            .iter()
            .map(|(n, c)| (*n, Arc::from(c.as_str())))
            .collect();
        self.overrides.store(Arc::new(list));
        self.continents.store(Arc::new(cfg.continents.clone()));
    }

    /// True once a database is loaded.
    pub fn has_database(&self) -> bool {
        self.db.load().is_some()
    }

    /// Where `ip` is: an override, else loopback, else the database.
    pub fn locate(&self, ip: Option<IpAddr>) -> Located {
        let Some(ip) = ip else {
            return Located::NoAddress;
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let overrides = self.overrides.load();
        if let Some((_, c)) = overrides.iter().find(|(n, _)| n.contains(ip)) {
            return Located::Country(c.clone());
        }
        if ip.is_loopback() {
            return Located::Loopback;
        }
        let db = self.db.load();
        let Some(db) = db.as_deref() else {
            return Located::Unknown;
        };
        let code = db.reader.lookup(ip).and_then(|r| {
            r.decode_path::<String>(&[
                maxminddb::PathElement::Key("country"),
                maxminddb::PathElement::Key("iso_code"),
            ])
        });
        match code {
            Ok(Some(c)) => {
                let c = c.to_ascii_uppercase();
                if is_country(&c) {
                    Located::Country(c.into())
                } else {
                    Located::Unknown
                }
            }
            Ok(None) => Located::Unknown,
            Err(e) => {
                tracing::debug!(%ip, "GeoIP lookup failed: {e}");
                Located::Unknown
            }
        }
    }

    /// The continents whose proxies count as near for a client in
    /// `country`: its own and those `[continent-overrides]` add.
    pub fn continents_near(&self, country: &str) -> Vec<&'static str> {
        let Some(own) = continents::of(country) else {
            return Vec::new();
        };
        let mut out = vec![own];
        let map = self.continents.load();
        if let Some(more) = map.get(own) {
            for m in more {
                if let Some(c) = continents::CONTINENTS.iter().find(|c| *c == m) {
                    if !out.contains(c) {
                        out.push(c);
                    }
                }
            }
        }
        out
    }

    /// Reloads the database if it changed. An error keeps the database in
    /// use.
    pub async fn update(&self) -> Result<Updated, String> {
        match &self.source {
            None => Ok(Updated::Unchanged),
            Some(GeoIpSource::File(path)) => self.update_file(path).await,
            Some(GeoIpSource::Url(url)) => self.update_url(url).await,
        }
    }

    async fn update_file(&self, path: &std::path::Path) -> Result<Updated, String> {
        let modified = tokio::fs::metadata(path)
            .await
            .and_then(|m| m.modified())
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if self.stamp().modified == Some(modified) {
            return Ok(Updated::Unchanged);
        }
        let p = path.to_path_buf();
        let db = tokio::task::spawn_blocking(move || load::from_file(&p))
            .await
            .map_err(|e| e.to_string())??;
        self.install(db, &path.display().to_string());
        self.stamp().modified = Some(modified);
        Ok(Updated::Loaded)
    }

    async fn update_url(&self, url: &str) -> Result<Updated, String> {
        let mut req = self.http.get(url);
        if let Some(lm) = self.stamp().last_modified.clone() {
            req = req.header(reqwest::header::IF_MODIFIED_SINCE, lm);
        }
        let shown = Url(url);
        let mut resp = req
            .send()
            .await
            .map_err(|e| format!("downloading {shown}: {}", e.without_url()))?;
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            tracing::info!(url = %shown, "the GeoIP database has not changed");
            return Ok(Updated::Unchanged);
        }
        if !resp.status().is_success() {
            return Err(format!("downloading {shown}: HTTP {}", resp.status()));
        }
        let last_modified = resp
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("downloading {shown}: {}", e.without_url()))?
        {
            if body.len() + chunk.len() > load::MAX_DOWNLOAD {
                return Err(format!(
                    "downloading {shown}: over {} bytes",
                    load::MAX_DOWNLOAD
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let db = tokio::task::spawn_blocking(move || load::from_download(body))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("{shown}: {e}"))?;
        self.install(db, &shown.to_string());
        self.stamp().last_modified = last_modified;
        Ok(Updated::Loaded)
    }

    fn stamp(&self) -> std::sync::MutexGuard<'_, Stamp> {
        self.stamp.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn install(&self, db: Database, from: &str) {
        let (kind, built) = db.describe();
        tracing::info!(from, database_type = %kind, build_epoch = built, "using the GeoIP database");
        self.db.store(Some(Arc::new(db)));
    }

    /// Reloads the database every `refresh` (a day, as the Go server); a
    /// download waits for no client: the first one happens here. Failures
    /// are retried with backoff (1 s doubling to 5 minutes) and logged.
    fn spawn(self: &Arc<Self>, cancel: CancellationToken) {
        let Some(source) = &self.source else {
            return;
        };
        let first_now = matches!(source, GeoIpSource::Url(_));
        let geo = self.clone();
        tokio::spawn(async move {
            if !first_now && !geo.sleep(&cancel, geo.refresh).await {
                return;
            }
            loop {
                let mut backoff = Duration::from_secs(1).min(geo.refresh);
                loop {
                    match geo.update().await {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(retry_in = ?backoff, "could not update the GeoIP database: {e}");
                        }
                    }
                    if !geo.sleep(&cancel, backoff).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                }
                if !geo.sleep(&cancel, geo.refresh).await {
                    return;
                }
            }
        });
    }

    /// False when cancelled first.
    async fn sleep(&self, cancel: &CancellationToken, d: Duration) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> GeoIpConfig {
        let base = "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\n\
                    [backend]\nallowall = true\nsecret = s\n";
        crate::config::Config::parse(&format!("{base}{text}"))
            .unwrap()
            .geoip
    }

    #[tokio::test]
    async fn overrides_win_then_loopback_then_unknown() {
        let g = GeoIp::new(&cfg(
            "[geoip-overrides]\n127.0.0.2 = de\n10.0.0.0/8 = FR\n10.1.0.0/16 = IT\n",
        ))
        .unwrap();
        let at = |s: &str| g.locate(Some(s.parse().unwrap())).to_string();
        assert_eq!(at("127.0.0.2"), "DE");
        assert_eq!(at("::ffff:127.0.0.2"), "DE");
        assert_eq!(at("127.0.0.1"), "loopback");
        assert_eq!(at("::1"), "loopback");
        assert_eq!(at("10.1.2.3"), "IT");
        assert_eq!(at("10.2.0.1"), "FR");
        // Private addresses are not special: without a database, unknown.
        assert_eq!(at("192.168.1.1"), "unknown-country");
        assert_eq!(g.locate(None).to_string(), "no-country");
        assert_eq!(g.locate(None).country(), None);
        // SIGHUP: new overrides.
        g.set_overrides(&cfg("[geoip-overrides]\n10.0.0.0/8 = NL\n"));
        assert_eq!(at("10.1.2.3"), "NL");
        assert_eq!(at("127.0.0.2"), "loopback");
    }

    #[tokio::test]
    async fn continents_with_overrides() {
        let g = GeoIp::new(&cfg("[continent-overrides]\nAF = EU, AS\nSA = NA\n")).unwrap();
        assert_eq!(g.continents_near("ZA"), vec!["AF", "EU", "AS"]);
        assert_eq!(g.continents_near("BR"), vec!["SA", "NA"]);
        assert_eq!(g.continents_near("DE"), vec!["EU"]);
        assert_eq!(g.continents_near("XK"), Vec::<&str>::new());
        g.set_overrides(&cfg(""));
        assert_eq!(g.continents_near("ZA"), vec!["AF"]);
    }

    #[tokio::test]
    async fn a_file_that_does_not_load_stops_start_up() {
        let g = GeoIp::new(&cfg("[geoip]\nurl = file:///nonexistent/geo.mmdb\n")).unwrap();
        let e = g.start(CancellationToken::new()).await.err().unwrap();
        assert!(e.starts_with("[geoip] url: cannot read"), "{e}");
    }
}
