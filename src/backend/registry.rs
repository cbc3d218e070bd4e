//! Which Nextcloud instances may use this server, with their secrets and
//! session limits. Rooms and users are scoped by the backend found here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::Url;

use crate::config::BackendsConfig;

/// One allowed Nextcloud instance.
#[derive(Debug)]
pub struct Backend {
    /// Id from the config (or the origin for `allowall`).
    pub id: Arc<str>,
    /// Base URLs.
    pub urls: Vec<String>,
    /// Shared secret.
    pub secret: Vec<u8>,
    /// Maximum client sessions, 0 = unlimited.
    pub session_limit: u64,
}

/// All allowed backends.
#[derive(Debug)]
pub struct BackendRegistry {
    allow_all: bool,
    common_secret: Vec<u8>,
    backends: Vec<Arc<Backend>>,
    dynamic: Mutex<HashMap<String, Arc<Backend>>>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// True when `url` lies under `base`: same scheme, host and port, and the
/// path starts with the base path at a segment boundary.
pub fn url_matches(base: &Url, url: &Url) -> bool {
    if base.scheme() != url.scheme()
        || !base
            .host_str()
            .unwrap_or_default()
            .eq_ignore_ascii_case(url.host_str().unwrap_or_default())
        || base.port().or(default_port(base.scheme())) != url.port().or(default_port(url.scheme()))
    {
        return false;
    }
    let bp = base.path().trim_end_matches('/');
    let up = url.path();
    up.starts_with(bp) && matches!(up.as_bytes().get(bp.len()), None | Some(b'/'))
}

impl BackendRegistry {
    /// Builds the registry from the validated config.
    pub fn new(cfg: &BackendsConfig) -> Self {
        BackendRegistry {
            allow_all: cfg.allow_all,
            common_secret: cfg.common_secret.as_bytes().to_vec(),
            backends: cfg
                .backends
                .iter()
                .map(|b| {
                    Arc::new(Backend {
                        id: b.id.as_str().into(),
                        urls: b.urls.clone(),
                        secret: b.secret.as_bytes().to_vec(),
                        session_limit: b.session_limit,
                    })
                })
                .collect(),
            dynamic: Mutex::new(HashMap::new()),
        }
    }

    /// The backend a URL (hello `auth.url`, `Spreed-Signaling-Backend`)
    /// belongs to, with the matching base URL.
    pub fn for_url(&self, url: &str) -> Option<(Arc<Backend>, String)> {
        let parsed = Url::parse(url).ok()?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return None;
        }
        for b in &self.backends {
            for base in &b.urls {
                if let Ok(base_url) = Url::parse(base) {
                    if url_matches(&base_url, &parsed) {
                        return Some((b.clone(), base.clone()));
                    }
                }
            }
        }
        if self.allow_all {
            let origin = parsed.origin().ascii_serialization();
            let mut dynamic = self.dynamic.lock().expect("registry lock");
            let b = dynamic
                .entry(origin.clone())
                .or_insert_with(|| {
                    Arc::new(Backend {
                        id: origin.as_str().into(),
                        urls: vec![origin.clone()],
                        secret: self.common_secret.clone(),
                        session_limit: 0,
                    })
                })
                .clone();
            return Some((b, origin));
        }
        None
    }

    /// Number of configured backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// True without configured backends.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// A backend by id (configured, or created for `allowall`).
    pub fn by_id(&self, id: &str) -> Option<Arc<Backend>> {
        if let Some(b) = self.backends.iter().find(|b| &*b.id == id) {
            return Some(b.clone());
        }
        self.dynamic.lock().expect("registry lock").get(id).cloned()
    }

    /// The only backend, when exactly one is configured (used when a
    /// request does not name its backend).
    pub fn single(&self) -> Option<(Arc<Backend>, String)> {
        match self.backends.as_slice() {
            [b] if !self.allow_all => Some((b.clone(), b.urls.first()?.clone())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_respects_origin_and_path_boundary() {
        let base = Url::parse("https://cloud.example.com/nextcloud").unwrap();
        let ok = |u: &str| url_matches(&base, &Url::parse(u).unwrap());
        assert!(ok(
            "https://cloud.example.com/nextcloud/ocs/v2.php/apps/spreed/api/v3/signaling/backend"
        ));
        assert!(ok("https://cloud.example.com:443/nextcloud/"));
        assert!(!ok("https://cloud.example.com/nextcloudx/ocs"));
        assert!(!ok("http://cloud.example.com/nextcloud/ocs"));
        assert!(!ok("https://cloud.example.com:8443/nextcloud/ocs"));
        assert!(!ok("https://evil.example.com/nextcloud/ocs"));
    }
}
