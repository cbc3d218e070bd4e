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

/// Most addresses remembered; beyond, the ones without recent failures go.
const MAX_ADDRESSES: usize = 100_000;

/// Where a connection comes from: the client address (as a trusted proxy
/// names it) and the socket's own peer address.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    /// The client's address; what the throttle counts.
    pub ip: Option<IpAddr>,
    /// The address and port of the TCP peer (the proxy, when there is one).
    pub socket: Option<SocketAddr>,
}

/// Failures per client address.
pub struct Throttle {
    limits: BruteForceLimits,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
    /// Local addresses of this server's own outgoing connections while they
    /// say hello (see [`OwnDial`]).
    own: Mutex<HashSet<SocketAddr>>,
}

impl Throttle {
    /// A throttle with the configured limits.
    pub fn new(limits: BruteForceLimits) -> Self {
        Throttle {
            limits,
            failures: Mutex::new(HashMap::new()),
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
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
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
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            let window = self.limits.window;
            map.retain(|_, l| l.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let list = map.entry(ip).or_default();
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
}
