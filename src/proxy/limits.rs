//! The proxy's caps and what it says when one is reached: open WebSocket
//! connections (`[http] maxconnections`: an upgrade over it gets HTTP 503),
//! sessions (`[app] maxsessions`: a new session's hello gets
//! `too_many_sessions`, the connection stays open for a later hello), and
//! publishers plus subscribers ([`MAX_CLIENTS`]: `internal_error`). Each
//! refusal is counted in `signaling_proxy_limit_refusals_total{limit}` and
//! logged, at most once per [`LOG_EVERY`] and limit (with how many were
//! refused since), so a flood does not flood the journal.
//!
//! The Go proxy has no such caps; a Go server refused at one re-dials
//! (about every 2 s) and gets in once a slot is free.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::metrics::ProxyMetrics;

/// `[http] maxconnections` when not set.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 4096;
/// `[app] maxsessions` when not set.
pub const DEFAULT_MAX_SESSIONS: u64 = 1000;
/// Most publishers and subscribers at once, over all sessions.
pub const MAX_CLIENTS: usize = 100_000;
/// A limit's refusals are logged at most this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// A cap of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `[http] maxconnections`.
    Connections,
    /// `[app] maxsessions`.
    Sessions,
    /// [`MAX_CLIENTS`].
    Clients,
}

impl Limit {
    const ALL: [Limit; 3] = [Limit::Connections, Limit::Sessions, Limit::Clients];

    /// The `limit` label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::Sessions => "sessions",
            Limit::Clients => "clients",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Limit::Connections => {
                "connection cap ([http] maxconnections) reached: new connections get HTTP 503"
            }
            Limit::Sessions => {
                "session cap ([app] maxsessions) reached: new sessions get too_many_sessions"
            }
            Limit::Clients => "publisher and subscriber cap reached: new ones get internal_error",
        }
    }

    fn index(self) -> usize {
        Limit::ALL.iter().position(|l| *l == self).unwrap_or(0)
    }
}

/// A cap: `max` (0: none), and whether `current` more would go over it.
#[derive(Debug, Clone, Copy)]
pub struct Cap(pub u64);

impl Cap {
    /// True when one more than `current` is not allowed.
    pub fn full(self, current: u64) -> bool {
        self.0 != 0 && current >= self.0
    }
}

#[derive(Default, Clone, Copy)]
struct Logged {
    at: Option<Instant>,
    since: u64,
}

/// Counts and logs refusals.
#[derive(Default)]
pub struct Refusals {
    logged: Mutex<[Logged; 3]>,
}

impl Refusals {
    /// One refusal by `limit` (whose cap is `cap`).
    pub fn refused(&self, metrics: &ProxyMetrics, limit: Limit, cap: u64) {
        metrics
            .limit_refusals_total
            .with_label_values(&[limit.label()])
            .inc();
        if let Some(refused) = self.due(limit, Instant::now()) {
            tracing::warn!(limit = cap, refused, "{}", limit.what());
        }
    }

    /// The number refused since the last log line when one is due now.
    fn due(&self, limit: Limit, now: Instant) -> Option<u64> {
        let mut logged = self.logged.lock().unwrap_or_else(|p| p.into_inner());
        let l = &mut logged[limit.index()];
        l.since += 1;
        if l.at
            .is_some_and(|at| now.saturating_duration_since(at) < LOG_EVERY)
        {
            return None;
        }
        l.at = Some(now);
        Some(std::mem::take(&mut l.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cap_of_zero_is_none() {
        assert!(!Cap(0).full(1_000_000));
        assert!(!Cap(2).full(1));
        assert!(Cap(2).full(2));
        assert!(Cap(2).full(3));
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_interval_with_their_count() {
        let r = Refusals::default();
        let t0 = Instant::now();
        assert_eq!(r.due(Limit::Sessions, t0), Some(1));
        assert_eq!(r.due(Limit::Sessions, t0 + Duration::from_secs(1)), None);
        assert_eq!(r.due(Limit::Sessions, t0 + Duration::from_secs(2)), None);
        // Another limit has its own interval.
        assert_eq!(r.due(Limit::Connections, t0), Some(1));
        assert_eq!(r.due(Limit::Sessions, t0 + LOG_EVERY), Some(3));
    }
}
