//! `[backend] backendtype = etcd`: the backends are the JSON values under
//! `[backend] backendprefix` in etcd, in the Go server's format (`urls` or
//! `url`, `secret`, `sessionlimit`, `maxstreambitrate`,
//! `maxscreenbitrate`), the key being the backend's id. Read at start,
//! then watched: a key written adds or changes a backend, a key deleted
//! removes it (its sessions stay, as in the Go server; new hellos and its
//! backend-API requests are refused). While etcd is away the backends
//! known so far stay; reconnecting reads them all again.
//!
//! etcd is spoken to through its JSON gateway (`gateway.rs`) rather than
//! gRPC: the HTTP client the server has already, no second HTTP/2 stack
//! (see the notes in ARCHITECTURE.md).

pub mod gateway;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::etcd::{EtcdConfig, EtcdLogLevel};
use crate::config::BackendConfig;
use gateway::{Change, EtcdError, Gateway};

/// Receives the whole list of backends after each change.
pub type Sink = Arc<dyn Fn(Vec<BackendConfig>) + Send + Sync>;

/// The Go client's backoff between attempts: from 1 s, doubled, at most 8 s.
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(8);

/// What `/api/v1/serverinfo` says of etcd (the Go server's `etcd` block).
#[derive(Default)]
pub struct EtcdStatus {
    endpoints: Mutex<Vec<String>>,
    active: Mutex<String>,
    connected: AtomicBool,
}

impl EtcdStatus {
    /// `{endpoints, active, connected}`.
    pub fn server_info(&self) -> serde_json::Value {
        let endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut v = serde_json::json!({ "endpoints": endpoints });
        let active = self
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if !active.is_empty() {
            v["active"] = active.into();
            v["connected"] = self.connected().into();
        }
        v
    }

    /// True while the watch of the backends runs.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn set(&self, g: &Gateway, connected: bool) {
        *self.endpoints.lock().unwrap_or_else(|p| p.into_inner()) = g.endpoints().to_vec();
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = g.active().to_string();
        self.connected.store(connected, Ordering::Relaxed);
    }
}

/// A backend's value in etcd (the Go server's `BackendInformationEtcd`).
#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    url: String,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    maxstreambitrate: u64,
    #[serde(default)]
    maxscreenbitrate: u64,
    #[serde(default)]
    sessionlimit: u64,
}

/// The backend stored under `key`, or why the value is not one.
pub fn backend_of(key: &str, value: &[u8]) -> Result<BackendConfig, String> {
    let info: Info = serde_json::from_slice(value).map_err(|e| format!("not JSON: {e}"))?;
    if info.secret.is_empty() {
        return Err("secret missing".into());
    }
    let mut urls = if info.urls.is_empty() && !info.url.is_empty() {
        vec![info.url]
    } else {
        info.urls
    };
    if urls.is_empty() {
        return Err("urls missing".into());
    }
    for u in &mut urls {
        let parsed = reqwest::Url::parse(u.trim()).map_err(|e| format!("invalid url {u}: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(format!("invalid url {u}: not http(s)"));
        }
        *u = u.trim().trim_end_matches('/').to_string();
    }
    urls.sort();
    urls.dedup();
    Ok(BackendConfig {
        id: key.to_string(),
        urls,
        secret: info.secret,
        session_limit: info.sessionlimit,
        max_stream_bitrate: info.maxstreambitrate,
        max_screen_bitrate: info.maxscreenbitrate,
        legacy: false,
    })
}

/// Starts reading and watching the backends under `prefix`; `sink` gets
/// the list after each change. The receiver turns true once the first
/// list was read. Errors: the TLS files of `[etcd]` cannot be used.
pub fn start(
    cfg: &EtcdConfig,
    prefix: &str,
    sink: Sink,
    shutdown: CancellationToken,
) -> Result<(Arc<EtcdStatus>, watch::Receiver<bool>), EtcdError> {
    // The client is made once (a bad TLS file stops start-up, as in the
    // Go server).
    let gateway = Arc::new(Gateway::new(cfg, &cfg.endpoints)?);
    let status = Arc::new(EtcdStatus::default());
    let (tx, rx) = watch::channel(false);
    let w = Watcher {
        cfg: cfg.clone(),
        prefix: prefix.to_string(),
        sink,
        status: status.clone(),
        loaded: tx,
        backends: BTreeMap::new(),
        gateway,
    };
    tracing::info!(
        prefix,
        endpoints = ?cfg.endpoints,
        "etcd: backends come from etcd"
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = w.run() => {}
            _ = shutdown.cancelled() => {}
        }
    });
    Ok((status, rx))
}

/// What `check` reports: the endpoint that answered, the backends under
/// `prefix`, and the keys whose value is not a backend (with why).
pub struct Snapshot {
    /// The endpoint that answered.
    pub endpoint: String,
    /// The backends.
    pub backends: Vec<BackendConfig>,
    /// Keys with invalid values.
    pub invalid: Vec<(String, String)>,
}

/// Reads the backends under `prefix` once (for `check`).
pub async fn read_once(cfg: &EtcdConfig, prefix: &str) -> Result<Snapshot, EtcdError> {
    let g = Gateway::new(cfg, &cfg.endpoints)?;
    let range = g.range_prefix(prefix).await?;
    let mut snap = Snapshot {
        endpoint: g.active().to_string(),
        backends: Vec::new(),
        invalid: Vec::new(),
    };
    for (k, v) in range.kvs {
        match backend_of(&k, &v) {
            Ok(b) => snap.backends.push(b),
            Err(e) => snap.invalid.push((k, e)),
        }
    }
    Ok(snap)
}

struct Watcher {
    cfg: EtcdConfig,
    prefix: String,
    sink: Sink,
    status: Arc<EtcdStatus>,
    loaded: watch::Sender<bool>,
    backends: BTreeMap<String, BackendConfig>,
    gateway: Arc<Gateway>,
}

impl Watcher {
    fn shows(&self, level: EtcdLogLevel) -> bool {
        self.cfg.log_level <= level
    }

    /// Reads everything, then follows the watch; on any failure waits
    /// (1 s doubling to 8 s) and starts over.
    async fn run(mut self) {
        let mut wait = FIRST_WAIT;
        loop {
            match self.round().await {
                Ok(()) => wait = FIRST_WAIT,
                Err((e, was_connected)) => {
                    if was_connected {
                        wait = FIRST_WAIT;
                    }
                    self.status.connected.store(false, Ordering::Relaxed);
                    tracing::warn!(
                        prefix = %self.prefix,
                        error = %e,
                        retry_in = ?wait,
                        backends = self.backends.len(),
                        "etcd: cannot read or watch the backends; the backends known so far stay, retrying"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_WAIT);
                }
            }
        }
    }

    /// One connection: the full list, then the watch until it ends. The
    /// flag of the error says whether the list was read.
    async fn round(&mut self) -> Result<(), (EtcdError, bool)> {
        let g = self.gateway.clone();
        let range = g.range_prefix(&self.prefix).await.map_err(|e| (e, false))?;
        let n = range.kvs.len();
        self.replace_all(range.kvs);
        self.loaded.send_replace(true);
        let mut watch = g
            .watch_prefix(&self.prefix, range.revision + 1)
            .await
            .map_err(|e| (e, true))?;
        self.status.set(&g, true);
        if self.shows(EtcdLogLevel::Info) {
            tracing::info!(
                endpoint = g.active(),
                prefix = %self.prefix,
                keys = n,
                backends = self.backends.len(),
                revision = range.revision,
                "etcd: backends read, watching for changes"
            );
        }
        loop {
            match watch.next().await {
                Ok(Some(changes)) => self.apply(changes),
                Ok(None) => return Err((EtcdError("etcd ended the watch".into()), true)),
                Err(e) => return Err((e, true)),
            }
        }
    }

    fn apply(&mut self, changes: Vec<Change>) {
        let mut changed = false;
        for c in changes {
            if self.shows(EtcdLogLevel::Debug) {
                tracing::info!(change = ?DebugChange(&c), "etcd: watch event");
            }
            changed |= match c {
                Change::Put(k, v) => self.put(k, &v),
                Change::Delete(k) => self.delete(&k),
            };
        }
        if changed {
            self.publish();
        }
    }

    /// A key written: its backend added or replaced; a value that is not a
    /// backend is logged and leaves the key's backend as it was (Go).
    fn put(&mut self, key: String, value: &[u8]) -> bool {
        let b = match backend_of(&key, value) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(key, error = %e, "etcd: invalid backend information, ignored");
                return false;
            }
        };
        match self.backends.get(&key) {
            Some(old) if *old == b => false,
            Some(_) => {
                tracing::info!(key, urls = ?crate::config::safe_urls(&b.urls), "etcd: backend updated");
                self.backends.insert(key, b);
                true
            }
            None => {
                tracing::info!(key, urls = ?crate::config::safe_urls(&b.urls), "etcd: backend added");
                self.backends.insert(key, b);
                true
            }
        }
    }

    fn delete(&mut self, key: &str) -> bool {
        match self.backends.remove(key) {
            Some(b) => {
                tracing::info!(key, urls = ?crate::config::safe_urls(&b.urls), "etcd: backend removed; its sessions stay, new hellos are refused");
                true
            }
            None => false,
        }
    }

    /// The whole list read again (start, reconnect): keys gone meanwhile
    /// are removed.
    fn replace_all(&mut self, kvs: Vec<(String, Vec<u8>)>) {
        let keys: std::collections::HashSet<&str> = kvs.iter().map(|(k, _)| k.as_str()).collect();
        let gone: Vec<String> = self
            .backends
            .keys()
            .filter(|k| !keys.contains(k.as_str()))
            .cloned()
            .collect();
        for k in gone {
            self.delete(&k);
        }
        for (k, v) in kvs {
            self.put(k, &v);
        }
        self.publish();
    }

    fn publish(&self) {
        (self.sink)(self.backends.values().cloned().collect());
    }
}

/// A change without the value (it holds the secret).
struct DebugChange<'a>(&'a Change);

impl std::fmt::Debug for DebugChange<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Change::Put(k, v) => write!(f, "put {k} ({} bytes)", v.len()),
            Change::Delete(k) => write!(f, "delete {k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_in_the_go_format() {
        let b = backend_of(
            "/b/one",
            br#"{"urls":["https://b.example/nc/","https://a.example"],"secret":"s","sessionlimit":3,"maxstreambitrate":100}"#,
        )
        .unwrap();
        assert_eq!(b.id, "/b/one");
        assert_eq!(b.urls, ["https://a.example", "https://b.example/nc"]);
        assert_eq!((b.session_limit, b.max_stream_bitrate), (3, 100));
        let b = backend_of("k", br#"{"url":"http://c.example","secret":"s"}"#).unwrap();
        assert_eq!(b.urls, ["http://c.example"]);
        assert_eq!(
            backend_of("k", br#"{"url":"http://c"}"#).unwrap_err(),
            "secret missing"
        );
        assert_eq!(
            backend_of("k", br#"{"secret":"s"}"#).unwrap_err(),
            "urls missing"
        );
        assert!(backend_of("k", br#"{"url":"ftp://c","secret":"s"}"#).is_err());
        assert!(backend_of("k", b"nope").is_err());
    }
}
