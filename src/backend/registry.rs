//! Which Nextcloud instances may use this server, with their secrets and
//! session limits. Rooms and users are scoped by the backend found here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::Url;

use crate::config::BackendsConfig;

/// One allowed Nextcloud instance.
pub struct Backend {
    /// Id from the config (or the origin for `allowall`).
    pub id: Arc<str>,
    /// Base URLs.
    pub urls: Vec<String>,
    /// Shared secret.
    pub secret: Vec<u8>,
    /// Maximum client sessions, 0 = unlimited.
    pub session_limit: u64,
    /// Highest bitrates (bits/s) of `video` and `screen` streams, 0 = none.
    pub max_bitrates: (u64, u64),
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("id", &self.id)
            .field("urls", &self.urls.len())
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// All allowed backends.
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

/// Talk's signaling endpoint under a Nextcloud base URL (auth, room,
/// ping and session requests).
pub const SIGNALING_PATH: &str = "/ocs/v2.php/apps/spreed/api/v3/signaling/backend";
/// Nextcloud's capabilities endpoint under a base URL.
pub const CAPABILITIES_PATH: &str = "/ocs/v2.php/cloud/capabilities";

/// True for the path of Talk's signaling endpoint in any API version:
/// `[/index.php]/ocs/v{1,2}.php/apps/spreed/api/v<N>/signaling/backend[/]`.
fn is_signaling_path(path: &str) -> bool {
    let path = path.strip_prefix("/index.php").unwrap_or(path);
    let Some(rest) = path
        .strip_prefix("/ocs/v2.php/apps/spreed/api/v")
        .or_else(|| path.strip_prefix("/ocs/v1.php/apps/spreed/api/v"))
    else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0
        && digits <= 2
        && matches!(
            &rest[digits..],
            "/signaling/backend" | "/signaling/backend/"
        )
}

/// The URL this server sends requests for a client to: the configured base
/// URL plus Talk's fixed signaling path. The client's `auth.url` only
/// selects the backend (and the Talk API version when it names Talk's
/// endpoint); its user info, query and any other path are never used, so a
/// client cannot make the server ask a URL of its choosing.
pub fn signaling_url(base: &str, client_url: &str) -> String {
    let base = base.trim_end_matches('/');
    let suffix = match (Url::parse(base), Url::parse(client_url)) {
        (Ok(b), Ok(c)) => {
            let bp = b.path().trim_end_matches('/');
            c.path()
                .strip_prefix(bp)
                .filter(|rest| is_signaling_path(rest))
                .map(|rest| rest.trim_end_matches('/').to_string())
        }
        _ => None,
    };
    format!("{base}{}", suffix.as_deref().unwrap_or(SIGNALING_PATH))
}

/// The capabilities URL of a configured base URL.
pub fn capabilities_url(base: &str) -> String {
    format!("{}{CAPABILITIES_PATH}", base.trim_end_matches('/'))
}

impl std::fmt::Debug for BackendRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendRegistry")
            .field("allow_all", &self.allow_all)
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
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
                        max_bitrates: (b.max_stream_bitrate, b.max_screen_bitrate),
                    })
                })
                .collect(),
            dynamic: Mutex::new(HashMap::new()),
        }
    }

    /// The configured backends (not those `allowall` admitted).
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
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
            // Not remembered here: only once the request proved it knows the
            // secret (checksum, or Nextcloud accepted the hello), so requests
            // from nobody cannot grow the map.
            let origin = parsed.origin().ascii_serialization();
            let known = self
                .dynamic
                .lock()
                .expect("registry lock")
                .get(&origin)
                .cloned();
            let b = known.unwrap_or_else(|| {
                Arc::new(Backend {
                    id: origin.as_str().into(),
                    urls: vec![origin.clone()],
                    secret: self.common_secret.clone(),
                    session_limit: 0,
                    max_bitrates: (0, 0),
                })
            });
            return Some((b, origin));
        }
        None
    }

    /// Remembers a backend created for `allowall` after a request of it was
    /// authenticated (so other lookups by id find it).
    pub fn remember(&self, backend: &Arc<Backend>) {
        if !self.allow_all || self.backends.iter().any(|b| b.id == backend.id) {
            return;
        }
        let mut dynamic = self.dynamic.lock().expect("registry lock");
        dynamic
            .entry(backend.id.to_string())
            .or_insert_with(|| backend.clone());
    }

    /// Number of backends created for `allowall`.
    pub fn dynamic_count(&self) -> usize {
        self.dynamic.lock().expect("registry lock").len()
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

    #[test]
    fn request_urls_come_from_the_configured_base() {
        let base = "https://cloud.example.com/nc";
        // Talk's endpoint, in the API version the client named.
        assert_eq!(
            signaling_url(
                base,
                "https://cloud.example.com/nc/ocs/v2.php/apps/spreed/api/v3/signaling/backend"
            ),
            "https://cloud.example.com/nc/ocs/v2.php/apps/spreed/api/v3/signaling/backend"
        );
        assert_eq!(
            signaling_url(
                base,
                "https://cloud.example.com/nc/index.php/ocs/v2.php/apps/spreed/api/v1/signaling/backend/"
            ),
            "https://cloud.example.com/nc/index.php/ocs/v2.php/apps/spreed/api/v1/signaling/backend"
        );
        // Any other path, user info or query: the fixed path under the base.
        for client in [
            "https://cloud.example.com/nc/remote.php/dav/files/me/ocs/v2.php/cloud/capabilities",
            "https://me:pw@cloud.example.com/nc/ocs/v2.php/apps/spreed/api/v3/signaling/backend?x=1",
            "https://cloud.example.com/nc/remote.php/dav/files/me/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
            "https://cloud.example.com/nc/",
        ] {
            assert_eq!(
                signaling_url(base, client),
                "https://cloud.example.com/nc/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
                "{client}"
            );
        }
        assert_eq!(
            capabilities_url("https://cloud.example.com/nc/"),
            "https://cloud.example.com/nc/ocs/v2.php/cloud/capabilities"
        );
    }
}
