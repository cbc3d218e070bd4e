//! `[backend] backendtype = etcd` in the hub: the backends read from etcd
//! (`backend/etcd/`) become the registry, replaced at each change; SIGHUP
//! keeps them (its other `[backend]` settings apply).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::backend::etcd::{self, EtcdStatus};
use crate::backend::registry::BackendRegistry;
use crate::config::{BackendConfig, BackendsConfig, Config};

/// The backends last read from etcd and the watch's state.
#[derive(Default)]
pub(super) struct EtcdBackends {
    list: Mutex<Option<Vec<BackendConfig>>>,
    status: OnceLock<Arc<EtcdStatus>>,
}

impl EtcdBackends {
    /// The watch's state, with `backendtype = etcd`.
    pub(super) fn status(&self) -> Option<&Arc<EtcdStatus>> {
        self.status.get()
    }
}

impl Hub {
    /// With `backendtype = etcd`: starts the watch of the backends and
    /// waits for the first list at most `wait` (etcd away: the server
    /// starts without backends, refusing hellos until etcd answers).
    /// Errors: the `[etcd]` TLS files cannot be used.
    pub async fn start_etcd(
        self: &Arc<Self>,
        shutdown: CancellationToken,
        wait: Duration,
    ) -> anyhow::Result<()> {
        let (Some(prefix), Some(cfg)) = (&self.config.backend.etcd_prefix, &self.config.etcd)
        else {
            return Ok(());
        };
        let hub = Arc::downgrade(self);
        let sink: etcd::Sink = Arc::new(move |list| {
            if let Some(hub) = hub.upgrade() {
                hub.set_etcd_backends(list);
            }
        });
        let (status, mut loaded) =
            etcd::start(cfg, prefix, sink, shutdown).map_err(|e| anyhow::anyhow!("[etcd]: {e}"))?;
        let _ = self.etcd.status.set(status);
        if tokio::time::timeout(wait, loaded.wait_for(|l| *l))
            .await
            .is_err()
        {
            tracing::warn!(
                prefix = %prefix,
                waited = ?wait,
                "etcd: no list of backends yet; serving without backends (hellos are refused) until etcd answers"
            );
        }
        Ok(())
    }

    /// The backends of `list` with the `[backend]` settings of `base`.
    fn registry_with(base: &BackendsConfig, list: &[BackendConfig]) -> BackendRegistry {
        let mut cfg = base.clone();
        cfg.backends = list.to_vec();
        BackendRegistry::new(&cfg)
    }

    fn set_etcd_backends(&self, list: Vec<BackendConfig>) {
        let registry = Arc::new(Self::registry_with(&self.config.backend, &list));
        tracing::info!(backends = list.len(), "backends from etcd applied");
        *self.etcd.list.lock().unwrap_or_else(|p| p.into_inner()) = Some(list);
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = registry;
    }

    /// SIGHUP with `backendtype = etcd`: the backends stay those of etcd;
    /// false without etcd (the file's backends apply).
    pub(super) fn reload_etcd_backends(&self, config: &Config) -> bool {
        if self.etcd.status().is_none() {
            return false;
        }
        let list = self.etcd.list.lock().unwrap_or_else(|p| p.into_inner());
        let registry = Self::registry_with(&config.backend, list.as_deref().unwrap_or_default());
        *self.registry.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
        tracing::info!("backends stay those of etcd ([backend] backendtype = etcd)");
        true
    }
}
