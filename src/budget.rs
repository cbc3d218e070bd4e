//! The message budget of one peer that sends us WebSocket frames (a client
//! connection, or a remote signaling server a federation link reads from):
//! token buckets for frames and bytes. A frame is always accepted (never
//! dropped); a peer that went over its budget is simply not read until the
//! budget refilled, so TCP holds it back and a flood cannot take more than
//! its share. Every frame counts: text, binary, pings, pongs and each
//! fragment of a fragmented message (an empty one too).

use std::time::{Duration, Instant};

use crate::config::ClientLimits;
use crate::metrics::Metrics;

/// Frames and bytes a peer may still send before it is read more slowly.
pub struct Budget {
    messages: f64,
    bytes: f64,
    message_rate: f64,
    byte_rate: f64,
    message_burst: f64,
    byte_burst: f64,
    last: Instant,
}

impl Budget {
    /// A full budget of `[clients] messagespersecond`/`messageburst` and
    /// `bytespersecond`/`byteburst`.
    pub fn new(limits: &ClientLimits) -> Self {
        Budget {
            messages: limits.message_burst as f64,
            bytes: limits.byte_burst as f64,
            message_rate: limits.messages_per_second as f64,
            byte_rate: limits.bytes_per_second as f64,
            message_burst: limits.message_burst as f64,
            byte_burst: limits.byte_burst as f64,
            last: Instant::now(),
        }
    }

    /// Takes one frame of `len` bytes; returns how long to stop reading
    /// until the budget is back to zero (None when it is not in debt).
    pub fn take(&mut self, now: Instant, len: usize) -> Option<Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.messages = (self.messages + elapsed * self.message_rate).min(self.message_burst) - 1.0;
        self.bytes = (self.bytes + elapsed * self.byte_rate).min(self.byte_burst) - len as f64;
        let wait = (-self.messages / self.message_rate).max(-self.bytes / self.byte_rate);
        (wait > 0.0).then(|| Duration::from_secs_f64(wait))
    }

    /// Takes one frame of `len` bytes and, when that put the peer in debt,
    /// waits until it is paid back (counted in
    /// `signaling_client_read_pauses_total`). For a reader that has nothing
    /// else to watch while it does not read.
    pub async fn pace(&mut self, metrics: &Metrics, len: usize) {
        if let Some(wait) = self.take(Instant::now(), len) {
            metrics.client_throttled.inc();
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> ClientLimits {
        let cfg = crate::config::Config::parse(&format!(
            "[sessions]\nhashkey=x\n[clients]\nmessagespersecond={rate}\nmessageburst={burst}\n"
        ))
        .unwrap();
        cfg.limits.clone()
    }

    #[test]
    fn a_burst_is_free_then_every_frame_costs_its_share() {
        let mut b = Budget::new(&limits(100, 3));
        let now = b.last;
        // Empty frames count as much as full ones.
        for _ in 0..3 {
            assert_eq!(b.take(now, 0), None);
        }
        let wait = b.take(now, 0).unwrap();
        assert!((wait.as_secs_f64() - 0.01).abs() < 1e-9, "{wait:?}");
        // After the wait the budget is back to zero: the next frame waits
        // one more share.
        let later = now + wait;
        let again = b.take(later, 0).unwrap();
        assert!((again.as_secs_f64() - 0.01).abs() < 1e-9, "{again:?}");
    }
}
