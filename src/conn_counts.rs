//! Open connections, in all and per client address: counted by the
//! listeners at accept (`http::listener`) and by the WebSocket upgrade for
//! clients behind a trusted proxy; held by the hub so both share them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::HttpLimits;

/// The key a client address is counted under: an IPv4 address itself, an
/// IPv6 address by its /64 (one subscriber's network: a single host can use
/// any of its 2^64 addresses), an IPv4-mapped IPv6 address as the IPv4 one.
/// Used by the per-address connection caps and the hello throttle.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Open connections per client address, shared by the listeners and the
/// WebSocket upgrade (which counts clients behind a trusted proxy by the
/// address the proxy names).
#[derive(Clone, Default)]
pub struct ConnCounts(Arc<Mutex<Counts>>);

impl ConnCounts {
    /// A place for one more connection of `ip` that came through a trusted
    /// proxy, or None when `ip` has `cap` already (0 = no cap).
    pub fn admit_forwarded(&self, ip: IpAddr, cap: usize) -> Option<Slot> {
        let ip = address_key(ip);
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = c.per_ip.entry(ip).or_default();
        if cap > 0 && *n >= cap {
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.0.clone(),
            ip: Some(ip),
            in_total: false,
        })
    }

    /// A place for one more connection accepted from `ip`, or which cap
    /// (the name of its refusal metric) refuses it: `limits` caps all
    /// connections and those of one address, unless `ip` is `trusted`
    /// (a proxy of `[app] trustedproxies`).
    pub fn admit(
        &self,
        ip: IpAddr,
        limits: &HttpLimits,
        trusted: bool,
    ) -> Result<Slot, &'static str> {
        let ip = address_key(ip);
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if limits.max_connections > 0 && c.total >= limits.max_connections {
            return Err("connections");
        }
        let per_ip = limits.max_connections_per_ip > 0 && !trusted;
        if per_ip {
            let n = c.per_ip.entry(ip).or_default();
            if *n >= limits.max_connections_per_ip {
                return Err("connections_per_ip");
            }
            *n += 1;
        }
        c.total += 1;
        Ok(Slot {
            counts: self.0.clone(),
            ip: per_ip.then_some(ip),
            in_total: true,
        })
    }
}

/// Open connections, in all and per address.
#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Releases a connection's place in [`Counts`] when the socket is dropped
/// (for a WebSocket: when the upgraded connection ends).
pub struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: Option<IpAddr>,
    /// False for a client behind a proxy: the proxy's TCP connection holds
    /// the place in the total.
    in_total: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if self.in_total {
            c.total = c.total.saturating_sub(1);
        }
        if let Some(ip) = self.ip {
            if let Some(n) = c.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.per_ip.remove(&ip);
                }
            }
        }
    }
}
