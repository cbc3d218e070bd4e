//! Throttling of failed hellos and resumes per client address, as the Go
//! server does: every failure within the window delays the next error reply
//! more (100 ms, doubling, at most 10 s); after `max_failures` the address
//! gets `too_many_requests` at once until its failures age out.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use crate::config::BruteForceLimits;

/// Most addresses remembered; beyond, the ones without recent failures go.
const MAX_ADDRESSES: usize = 100_000;

/// Failures per client address.
pub struct Throttle {
    limits: BruteForceLimits,
    failures: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Throttle {
    /// A throttle with the configured limits.
    pub fn new(limits: BruteForceLimits) -> Self {
        Throttle {
            limits,
            failures: Mutex::new(HashMap::new()),
        }
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
