//! The Janus budget of a session: every client `message` the MCU handles
//! (offers, answers, candidates, `requestoffer`, `sendoffer`,
//! `selectStream`, `unshareScreen`, ... whether for this process's Janus
//! or a publisher's on another process) costs one request of a token
//! bucket of its own, `[clients] mcurequestspersecond` /
//! `mcurequestburst`, apart from the general message budget. The request
//! is still carried out (a lost candidate breaks a call); a session in
//! debt is not read until the debt is paid, as for the message budget
//! (counted in `signaling_client_read_pauses_total`).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::mcu::{McuRoute, McuSlots};
use super::Hub;

/// Janus requests a session made beyond what the rate paid back.
#[derive(Debug)]
pub(crate) struct JanusBudget {
    used: f64,
    last: Option<Instant>,
}

impl JanusBudget {
    pub(crate) fn new() -> Self {
        JanusBudget {
            used: 0.0,
            last: None,
        }
    }

    /// Charges one request at `now`; how long the session must not be read
    /// (None while within the burst).
    pub(crate) fn take(&mut self, now: Instant, rate: u32, burst: u32) -> Option<Duration> {
        let rate = f64::from(rate);
        let elapsed = self
            .last
            .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        self.last = Some(now);
        self.used = (self.used - elapsed * rate).max(0.0) + 1.0;
        let over = self.used - f64::from(burst);
        (over > 0.0).then(|| Duration::from_secs_f64(over / rate))
    }
}

impl Hub {
    /// Charges the MCU's handling of a message of `sid` to the session's
    /// Janus budget: a message delivered as any other costs nothing; when
    /// the session is in debt, reading it waits after the request.
    pub(super) fn janus_paced<'a>(&self, sid: &Arc<str>, route: McuRoute<'a>) -> McuRoute<'a> {
        if matches!(route, McuRoute::Deliver(_)) {
            return route;
        }
        let (rate, burst) = (
            self.config.limits.mcu_requests_per_second,
            self.config.limits.mcu_request_burst,
        );
        let wait = {
            let mut st = self.lock();
            let Some(s) = st.sessions.map.get_mut(sid) else {
                return route;
            };
            let slots = s.mcu_tasks.get_or_insert_with(McuSlots::new).clone();
            let mut b = slots.janus.lock().unwrap_or_else(|e| e.into_inner());
            b.take(Instant::now(), rate, burst)
        };
        let Some(wait) = wait else {
            return route;
        };
        self.metrics.client_throttled.inc();
        let first = match route {
            McuRoute::Wait(f) => Some(f),
            _ => None,
        };
        McuRoute::Wait(Box::pin(async move {
            if let Some(f) = first {
                f.await;
            }
            tokio::time::sleep(wait).await;
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_free_then_each_request_costs_its_share() {
        let mut b = JanusBudget::new();
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.take(now, 10, 3), None);
        }
        assert_eq!(b.take(now, 10, 3), Some(Duration::from_millis(100)));
        // Half a second pays back five requests: within the burst again.
        let later = now + Duration::from_millis(500);
        assert_eq!(b.take(later, 10, 3), None);
    }
}
