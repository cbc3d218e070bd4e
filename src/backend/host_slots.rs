//! `[backend] connectionsperhost`, as the Go server's client pool: at most
//! that many requests to one Nextcloud host (host and port) at once; more
//! wait for a slot within the request's timeout. The number in use is
//! `signaling_http_client_pool_connections{host}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// More hosts than this and the idle ones are forgotten (with `allowall`
/// the hosts are not a configured list).
const MAX_HOSTS: usize = 1024;

/// The slots of every host.
pub struct HostSlots {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    gauge: Option<prometheus::IntGaugeVec>,
}

/// A slot in use; returned when dropped.
pub struct HostSlot {
    _permit: OwnedSemaphorePermit,
    gauge: Option<prometheus::IntGauge>,
}

impl Drop for HostSlot {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// `host:port` of a URL (the port of its scheme when not written), the
/// key of its slots; None for a URL without a host.
pub fn host_key(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?;
    Some(match u.port_or_known_default() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

impl HostSlots {
    /// `per_host` requests at once per host (at least one).
    pub fn new(per_host: usize, gauge: Option<prometheus::IntGaugeVec>) -> Self {
        HostSlots {
            per_host: per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
            gauge,
        }
    }

    fn semaphore(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = hosts.get(host) {
            return s.clone();
        }
        if hosts.len() >= MAX_HOSTS {
            // The idle hosts go, with their series of the gauge (hosts
            // come and go with `allowall`: the series must not pile up).
            let full = self.per_host;
            hosts.retain(|host, s| {
                let busy = s.available_permits() < full;
                if let (false, Some(g)) = (busy, &self.gauge) {
                    let _ = g.remove_label_values(&[host]);
                }
                busy
            });
        }
        let s = Arc::new(Semaphore::new(self.per_host));
        hosts.insert(host.to_string(), s.clone());
        s
    }

    /// Waits for a slot of the host of `url` (the caller bounds the wait).
    pub async fn acquire(&self, url: &str) -> Option<HostSlot> {
        let host = host_key(url)?;
        let permit = self.semaphore(&host).acquire_owned().await.ok()?;
        let gauge = self.gauge.as_ref().map(|g| g.with_label_values(&[&host]));
        if let Some(g) = &gauge {
            g.inc();
        }
        Some(HostSlot {
            _permit: permit,
            gauge,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hosts_are_keyed_with_their_port() {
        assert_eq!(host_key("https://nc.example/x").unwrap(), "nc.example:443");
        assert_eq!(
            host_key("http://nc.example:8080/").unwrap(),
            "nc.example:8080"
        );
        assert_eq!(host_key("http://[::1]/").unwrap(), "[::1]:80");
        assert!(host_key("not a url").is_none());
    }

    #[tokio::test]
    async fn forgotten_hosts_take_their_gauge_series_along() {
        let gauge =
            prometheus::IntGaugeVec::new(prometheus::Opts::new("pool", "test"), &["host"]).unwrap();
        let slots = HostSlots::new(1, Some(gauge.clone()));
        for i in 0..MAX_HOSTS + 10 {
            drop(slots.acquire(&format!("http://h{i}:1/")).await.unwrap());
        }
        let held = slots.acquire("http://last:1/").await.unwrap();
        let series = || {
            use prometheus::core::Collector;
            gauge.collect()[0].get_metric().len()
        };
        assert!(series() <= MAX_HOSTS + 1, "{} series", series());
        assert_eq!(gauge.with_label_values(&["last:1"]).get(), 1);
        drop(held);
    }

    #[tokio::test]
    async fn at_most_per_host_at_once_and_other_hosts_are_not_held_up() {
        let slots = HostSlots::new(2, None);
        let a = slots.acquire("http://a:1/x").await.unwrap();
        let _b = slots.acquire("http://a:1/y").await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(50), slots.acquire("http://a:1/z"));
        assert!(third.await.is_err(), "a third request to a waits");
        let other = tokio::time::timeout(Duration::from_millis(50), slots.acquire("http://b:1/"));
        assert!(other.await.is_ok(), "another host has its own slots");
        drop(a);
        let third = tokio::time::timeout(Duration::from_millis(50), slots.acquire("http://a:1/z"));
        assert!(third.await.is_ok(), "a slot came free");
    }
}
