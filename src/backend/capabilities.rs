//! Capabilities of Nextcloud instances (hello v2 token key, session ping
//! limit), fetched on demand and cached for a minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::backend::client::{BackendCallError, BackendClient};
use crate::backend::registry::capabilities_url;

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

/// How long a failed fetch is remembered: hellos that fail (or forge
/// tokens) must not make the server ask Nextcloud again and again.
pub const FAILURE_TTL: Duration = Duration::from_secs(5);

struct CacheEntry {
    fetched: Instant,
    /// Last fetch forced by a failing token.
    forced: Option<Instant>,
    result: Result<Capabilities, BackendCallError>,
}

/// Nextclouds whose capabilities are kept at most (more than any
/// configuration lists; reached only with `[backend] allowall`).
const MAX_ENTRIES: usize = 1024;

/// Cache of capabilities per configured base URL. The URL fetched is always
/// the configured base plus Nextcloud's fixed capabilities path (see
/// [`crate::backend::registry::capabilities_url`]), never one a client named.
#[derive(Default)]
pub struct CapabilitiesCache {
    entries: Mutex<HashMap<String, CacheEntry>>,
}

impl CapabilitiesCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, CacheEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cached capabilities of the Nextcloud at `base` (a configured base
    /// URL), fetched when missing or older than [`CACHE_TTL`] (a failure is
    /// kept for [`FAILURE_TTL`]); with `refresh` (a token failed with the
    /// cached key) fetched again unless that was already done in the last
    /// [`MIN_REFRESH`].
    pub async fn get(
        &self,
        client: &BackendClient,
        base: &str,
        refresh: bool,
    ) -> Result<Capabilities, BackendCallError> {
        let key = capabilities_url(base);
        let mut forced = None;
        {
            let entries = self.entries();
            if let Some(e) = entries.get(&key) {
                let use_cached = if e.result.is_err() {
                    e.fetched.elapsed() < FAILURE_TTL
                } else if refresh {
                    // One forced refetch, then at most one per MIN_REFRESH.
                    e.forced.is_some_and(|f| f.elapsed() < MIN_REFRESH)
                } else {
                    e.fetched.elapsed() < CACHE_TTL
                };
                if use_cached {
                    return e.result.clone();
                }
                forced = e.forced;
            }
        }
        let result = client
            .get_json(&key)
            .await
            .map(|data| Capabilities::from_data(&data));
        if let Err(e) = &result {
            tracing::warn!(url = %crate::logsafe::Url(&key), "capabilities request failed: {e}");
        }
        let now = Instant::now();
        let mut entries = self.entries();
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(&key) {
            // Only with `[backend] allowall` can there be this many
            // Nextclouds: forget the stale ones, else the oldest.
            entries.retain(|_, e| e.fetched.elapsed() < CACHE_TTL);
            if entries.len() >= MAX_ENTRIES {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.fetched)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    entries.remove(&k);
                }
            }
        }
        entries.insert(
            key,
            CacheEntry {
                fetched: now,
                forced: if refresh { Some(now) } else { forced },
                result: result.clone(),
            },
        );
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cache_keeps_at_most_max_entries() {
        let client = BackendClient::new(Duration::from_secs(2), 4, false, String::new()).unwrap();
        let cache = CapabilitiesCache::default();
        // Nothing listens on port 9: each lookup fails at once and is kept.
        for i in 0..MAX_ENTRIES + 10 {
            let base = format!("http://127.0.0.1:9/nc{i}");
            assert!(cache.get(&client, &base, false).await.is_err());
        }
        assert_eq!(cache.entries().len(), MAX_ENTRIES);
        // The newest is kept, the oldest went.
        let newest = capabilities_url(&format!("http://127.0.0.1:9/nc{}", MAX_ENTRIES + 9));
        assert!(cache.entries().contains_key(&newest));
        assert!(!cache
            .entries()
            .contains_key(&capabilities_url("http://127.0.0.1:9/nc0")));
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
