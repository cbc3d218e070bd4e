//! Capabilities of Nextcloud instances (hello v2 token key, session ping
//! limit), fetched on demand and cached for a minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backend::client::{BackendCallError, BackendClient};

/// How long fetched capabilities are used before fetching again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// A forced refetch (a token failed with the cached key) happens at most
/// this often per Nextcloud: bad tokens must not make the server hammer it.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);

/// The parts of Talk's capabilities the server uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capabilities {
    /// `spreed.features`.
    pub features: Vec<String>,
    /// `spreed.config.signaling.hello-v2-token-key`.
    pub token_key: Option<String>,
    /// `spreed.config.signaling.session-ping-limit`.
    pub session_ping_limit: Option<usize>,
}

impl Capabilities {
    /// Extracts the capabilities from the OCS `data` of the capabilities endpoint.
    pub fn from_data(data: &serde_json::Value) -> Self {
        let spreed = &data["capabilities"]["spreed"];
        let signaling = &spreed["config"]["signaling"];
        Capabilities {
            features: spreed["features"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            token_key: signaling["hello-v2-token-key"].as_str().map(str::to_string),
            session_ping_limit: signaling["session-ping-limit"]
                .as_u64()
                .filter(|n| *n > 0)
                .map(|n| n as usize),
        }
    }
}

/// The capabilities URL for a Nextcloud URL: everything before `ocs/v` in
/// the path, then `ocs/v2.php/cloud/capabilities`.
pub fn capabilities_url(url: &str) -> String {
    let Ok(mut u) = reqwest::Url::parse(url) else {
        return url.to_string();
    };
    let path = u.path().to_string();
    let new_path = match path.find("ocs/v") {
        Some(pos) => format!("{}ocs/v2.php/cloud/capabilities", &path[..pos]),
        None => format!(
            "{}/ocs/v2.php/cloud/capabilities",
            path.trim_end_matches('/')
        ),
    };
    u.set_path(&new_path);
    u.set_query(None);
    u.to_string()
}

struct CacheEntry {
    fetched: Instant,
    /// Last fetch forced by a failing token.
    forced: Option<Instant>,
    caps: Capabilities,
}

/// Cache of capabilities by capabilities URL.
#[derive(Default)]
pub struct CapabilitiesCache {
    entries: Mutex<HashMap<String, CacheEntry>>,
}

impl CapabilitiesCache {
    /// Cached capabilities for `url` (any Nextcloud URL), fetched when
    /// missing or older than [`CACHE_TTL`]; with `refresh` (a token failed
    /// with the cached key) fetched again unless that was already done in
    /// the last [`MIN_REFRESH`].
    pub async fn get(
        &self,
        client: &BackendClient,
        url: &str,
        refresh: bool,
    ) -> Result<Capabilities, BackendCallError> {
        let key = capabilities_url(url);
        let mut forced = None;
        {
            let entries = self.entries.lock().expect("capabilities lock");
            if let Some(e) = entries.get(&key) {
                let use_cached = if refresh {
                    // One forced refetch, then at most one per MIN_REFRESH.
                    e.forced.is_some_and(|f| f.elapsed() < MIN_REFRESH)
                } else {
                    e.fetched.elapsed() < CACHE_TTL
                };
                if use_cached {
                    return Ok(e.caps.clone());
                }
                forced = e.forced;
            }
        }
        let data = client.get_json(&key).await?;
        let caps = Capabilities::from_data(&data);
        let now = Instant::now();
        self.entries.lock().expect("capabilities lock").insert(
            key,
            CacheEntry {
                fetched: now,
                forced: if refresh { Some(now) } else { forced },
                caps: caps.clone(),
            },
        );
        Ok(caps)
    }

    /// Cached capabilities without fetching.
    pub fn cached(&self, url: &str) -> Option<Capabilities> {
        let key = capabilities_url(url);
        self.entries
            .lock()
            .expect("capabilities lock")
            .get(&key)
            .map(|e| e.caps.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_derivation() {
        assert_eq!(
            capabilities_url(
                "https://c.example/nc/ocs/v2.php/apps/spreed/api/v3/signaling/backend"
            ),
            "https://c.example/nc/ocs/v2.php/cloud/capabilities"
        );
        assert_eq!(
            capabilities_url("https://c.example/nc/"),
            "https://c.example/nc/ocs/v2.php/cloud/capabilities"
        );
    }

    #[test]
    fn parses_capabilities() {
        let data = serde_json::json!({"capabilities": {"spreed": {"features": ["a"], "config": {"signaling": {"hello-v2-token-key": "KEY", "session-ping-limit": 200}}}}});
        let c = Capabilities::from_data(&data);
        assert_eq!(c.features, vec!["a"]);
        assert_eq!(c.token_key.as_deref(), Some("KEY"));
        assert_eq!(c.session_ping_limit, Some(200));
    }
}
