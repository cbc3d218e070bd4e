//! `signaling_mcu_publisher_streams{type}` and `_subscriber_streams{type}`
//! as the Go server counts them: a publisher's stream of a type counts
//! while Janus's `media` events say it receives it (a screen publisher's
//! video is `screen`); each such stream counts once more per subscriber
//! of that publisher that is connected (Janus said `webrtcup`). Computed
//! from the registry when the metrics are read, so no path that drops
//! publishers (Janus lost, closed, replaced) can leave a count behind.

use std::sync::atomic::Ordering;

use serde_json::Value;

use super::{JanusMcu, Publisher, StreamType};

/// The `type` labels of `signaling_mcu_publisher_streams` and
/// `_subscriber_streams` (Go's: a screen publisher's video is `screen`).
pub(super) const STREAM_LABELS: [&str; 3] = ["audio", "video", "screen"];

impl Publisher {
    /// A `media` event of the publisher's handle: `type` (audio, video)
    /// and `receiving`.
    pub(super) fn media_event(&self, msg: &Value) {
        let label = match (msg["type"].as_str(), self.stream) {
            (Some("audio"), _) => "audio",
            (Some("video"), StreamType::Screen) => "screen",
            (Some("video"), StreamType::Video) => "video",
            _ => return,
        };
        let Some(i) = STREAM_LABELS.iter().position(|l| *l == label) else {
            return;
        };
        let bit = 1u8 << i;
        if msg["receiving"].as_bool() == Some(true) {
            self.receiving.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.receiving.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

impl JanusMcu {
    /// Sets the two gauges from the publishers and subscribers of now.
    pub fn refresh_stream_gauges(&self) {
        let mut publishers = [0i64; 3];
        let mut subscribers = [0i64; 3];
        {
            let reg = self.clients.lock();
            let mut connected: std::collections::HashMap<(&str, StreamType), i64> =
                Default::default();
            for s in reg.subscribers.values() {
                if s.connected.load(Ordering::Relaxed) {
                    *connected.entry((&*s.key.1, s.key.2)).or_default() += 1;
                }
            }
            for p in reg.publishers.values() {
                let bits = p.receiving.load(Ordering::Relaxed);
                let subs = connected
                    .get(&(&*p.session, p.stream))
                    .copied()
                    .unwrap_or(0);
                for i in 0..STREAM_LABELS.len() {
                    if bits & (1 << i) != 0 {
                        publishers[i] += 1;
                        subscribers[i] += subs;
                    }
                }
            }
        }
        for (i, label) in STREAM_LABELS.iter().enumerate() {
            self.metrics
                .publisher_streams
                .with_label_values(&[label])
                .set(publishers[i]);
            self.metrics
                .subscriber_streams
                .with_label_values(&[label])
                .set(subscribers[i]);
        }
    }
}
