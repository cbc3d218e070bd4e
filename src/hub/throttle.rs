//! Throttling of failed hellos and resumes per client address, as the Go
//! server does: every failure within the window delays the next error reply
//! more (100 ms, doubling, at most 10 s); after `max_failures` the address
//! gets `too_many_requests` at once until its failures age out.
//!
//! Not throttled by address: internal clients whose hello carries a valid
//! HMAC of the internal secret (or that resume an internal session), and
//! this server's own outgoing connections (a federation link dialing this
//! very server): their failures are the server's, not a client's, and would
//! otherwise lock out the SIP bridge and the recording server that connect
//! from the same address.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use crate::config::BruteForceLimits;
use crate::conn_counts::address_key;

/// Addresses remembered before the first sweep of the ones without recent
/// failures; the next sweep comes when the map has doubled since the last
/// one, so each recorded failure pays for a bounded share of the sweeps.
const MAX_ADDRESSES: usize = 100_000;

/// Where a connection comes from: the client address (as a trusted proxy
/// names it) and the socket's own peer address.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    /// The client's address; what the throttle counts.
    pub ip: Option<IpAddr>,
    /// The client's own address when known (not the proxy that could not
    /// name it): what GeoIP locates.
    pub known: Option<IpAddr>,
    /// The address and port of the TCP peer (the proxy, when there is one).
    pub socket: Option<SocketAddr>,
}

/// Recent failures per address key ([`address_key`]).
struct Failures {
    map: HashMap<IpAddr, VecDeque<Instant>>,
    /// The map's size at which addresses without recent failures are
    /// swept out next.
    sweep_at: usize,
    /// Entries looked at by sweeps, in all (to show they are linear).
    swept: u64,
}

/// Failures per client address.
pub struct Throttle {
    limits: BruteForceLimits,
    failures: Mutex<Failures>,
    /// Local addresses of this server's own outgoing connections while they
    /// say hello (see [`OwnDial`]).
    own: Mutex<HashSet<SocketAddr>>,
}

impl Throttle {
    /// A throttle with the configured limits.
    pub fn new(limits: BruteForceLimits) -> Self {
        Throttle {
            limits,
            failures: Mutex::new(Failures {
                map: HashMap::new(),
                sweep_at: MAX_ADDRESSES,
                swept: 0,
            }),
            own: Mutex::new(HashSet::new()),
        }
    }

    /// True when `socket` is the far end of one of this server's own
    /// outgoing connections (it dialed itself).
    pub fn is_own_dial(&self, socket: Option<SocketAddr>) -> bool {
        socket.is_some_and(|s| {
            self.own
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&s)
        })
    }

    fn prune(&self, list: &mut VecDeque<Instant>, now: Instant) {
        while list
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.limits.window)
        {
            list.pop_front();
        }
    }

    /// True when `ip` had too many failures recently.
    pub fn blocked(&self, ip: IpAddr) -> bool {
        if self.limits.max_failures == 0 {
            return false;
        }
        let ip = address_key(ip);
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let map = &mut f.map;
        let Some(list) = map.get_mut(&ip) else {
            return false;
        };
        self.prune(list, now);
        if list.is_empty() {
            map.remove(&ip);
            return false;
        }
        list.len() >= self.limits.max_failures as usize
    }

    /// Records a failure of `ip`; returns how long to delay its error reply.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        if self.limits.max_failures == 0 {
            return Duration::ZERO;
        }
        let ip = address_key(ip);
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if f.map.len() >= f.sweep_at && !f.map.contains_key(&ip) {
            let window = self.limits.window;
            f.swept += f.map.len() as u64;
            f.map
                .retain(|_, l| l.back().is_some_and(|t| now.duration_since(*t) < window));
            f.sweep_at = MAX_ADDRESSES.max(2 * f.map.len());
        }
        let list = f.map.entry(ip).or_default();
        self.prune(list, now);
        list.push_back(now);
        if list.len() > self.limits.max_failures as usize {
            list.pop_front();
        }
        let n = list.len() as u32;
        Duration::from_millis(100)
            .saturating_mul(1 << (n - 1).min(7))
            .min(Duration::from_secs(10))
    }
}

/// An outgoing connection of this server, registered by its local address
/// while it is held: if the server dialed itself, the hellos arriving from
/// that address are its own and neither checked against nor counted by the
/// throttle. Dropping it forgets the address.
pub struct OwnDial {
    hub: Arc<super::Hub>,
    local: SocketAddr,
}

impl Drop for OwnDial {
    fn drop(&mut self) {
        self.hub
            .throttle
            .own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.local);
    }
}

impl super::Hub {
    /// Registers an outgoing WebSocket connection of this server (see
    /// [`OwnDial`]); hold the guard while the connection says hello.
    pub fn own_dial(
        self: &Arc<Self>,
        stream: &tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    ) -> Option<OwnDial> {
        use tokio_tungstenite::MaybeTlsStream;
        let local = match stream {
            MaybeTlsStream::Plain(s) => s.local_addr().ok()?,
            MaybeTlsStream::Rustls(s) => s.get_ref().0.local_addr().ok()?,
            _ => return None,
        };
        self.throttle
            .own
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(local);
        Some(OwnDial {
            hub: self.clone(),
            local,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_the_address_is_blocked() {
        let t = Throttle::new(BruteForceLimits {
            max_failures: 3,
            window: Duration::from_secs(60),
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(!t.blocked(ip));
        assert_eq!(t.failed(ip), Duration::from_millis(100));
        assert_eq!(t.failed(ip), Duration::from_millis(200));
        assert!(!t.blocked(ip));
        assert_eq!(t.failed(ip), Duration::from_millis(400));
        assert!(t.blocked(ip));
        assert!(!t.blocked("10.0.0.2".parse().unwrap()));
    }

    #[test]
    fn ipv6_addresses_count_by_their_64() {
        let t = Throttle::new(BruteForceLimits {
            max_failures: 2,
            window: Duration::from_secs(60),
        });
        t.failed("2001:db8:1:2::1".parse().unwrap());
        t.failed("2001:db8:1:2:ffff::7".parse().unwrap());
        assert!(t.blocked("2001:db8:1:2::99".parse().unwrap()));
        assert!(!t.blocked("2001:db8:1:3::1".parse().unwrap()));
        // An IPv4-mapped address is its IPv4 address.
        t.failed("192.0.2.1".parse().unwrap());
        t.failed("::ffff:192.0.2.1".parse().unwrap());
        assert!(t.blocked("192.0.2.1".parse().unwrap()));
    }

    /// Past `MAX_ADDRESSES` addresses with recent failures, every new one
    /// swept the whole map (quadratic: 10^10 entries for 200,000
    /// addresses). Counted, not timed: the sweeps look at a bounded number
    /// of entries per failure.
    #[test]
    fn the_sweep_of_old_addresses_is_linear() {
        let t = Throttle::new(BruteForceLimits {
            max_failures: 10,
            window: Duration::from_secs(3600),
        });
        let n: u32 = 200_000;
        for i in 0..n {
            t.failed(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()));
        }
        let f = t.failures.lock().unwrap();
        assert_eq!(f.map.len(), n as usize);
        assert!(
            f.swept <= 2 * u64::from(n),
            "sweeps looked at {} entries",
            f.swept
        );
    }
}
