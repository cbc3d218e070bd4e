//! The Go server's media-quality metrics, fed by Janus's WebSocket event
//! handler (`/spreed` with the `janus-events` subprotocol, see
//! `mcu::events`): the same names, labels and buckets.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// Distinct values one label (`state`, `reason`, `media`, `codec`, ...)
/// takes from events; later new values count as [`OTHER`]. Janus uses a
/// handful of each, but anybody on a private network may send events, and
/// every value would be a series kept for good.
pub const MAX_LABEL_VALUES: usize = 16;
/// The label value of what is over [`MAX_LABEL_VALUES`].
pub const OTHER: &str = "other";

/// The label values seen so far, per label name (shared by all event
/// connections).
#[derive(Clone, Default)]
pub struct LabelValues(Arc<Mutex<HashMap<&'static str, HashSet<String>>>>);

impl LabelValues {
    /// `value` as the value of label `name`: itself when it was seen
    /// before or there is room for it, else [`OTHER`].
    pub fn admit(&self, name: &'static str, value: String) -> String {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let values = seen.entry(name).or_default();
        if values.contains(&value) || values.len() < MAX_LABEL_VALUES {
            values.insert(value.clone());
            return value;
        }
        OTHER.to_string()
    }
}

/// `signaling_mcu_*` of Janus's events.
#[derive(Clone)]
pub struct MediaMetrics {
    /// `signaling_mcu_selected_candidate_total{origin,type,transport,family}`.
    pub selected_candidate: IntCounterVec,
    /// `signaling_mcu_peerconnection_state_total{state,reason}`.
    pub peerconnection_state: IntCounterVec,
    /// `signaling_mcu_ice_state_total{state}`.
    pub ice_state: IntCounterVec,
    /// `signaling_mcu_dtls_state_total{state}`.
    pub dtls_state: IntCounterVec,
    /// `signaling_mcu_slow_link_total{media,direction}`.
    pub slow_link: IntCounterVec,
    /// `signaling_mcu_media_rtt{media}` (milliseconds).
    pub rtt: HistogramVec,
    /// `signaling_mcu_media_jitter{media,origin}` (milliseconds).
    pub jitter: HistogramVec,
    /// `signaling_mcu_media_codecs_total{media,codec}`.
    pub codecs: IntCounterVec,
    /// `signaling_mcu_media_nacks_total{media,direction}`.
    pub nacks: IntCounterVec,
    /// `signaling_mcu_media_retransmissions_total{media}`.
    pub retransmissions: IntCounterVec,
    /// `signaling_mcu_media_bytes_total{media,direction}`.
    pub bytes: IntCounterVec,
    /// `signaling_mcu_media_lost_total{media,origin}`.
    pub lost: IntCounterVec,
    /// `signaling_mcu_bandwidth{direction}` (bytes per second).
    pub bandwidth: GaugeVec,
    /// The label values taken from events so far (bounded).
    pub values: LabelValues,
}

/// Buckets from `min` to `max` growing by a constant factor (Go's
/// `prometheus.ExponentialBucketsRange`).
fn exponential_range(min: f64, max: f64, count: usize) -> Vec<f64> {
    let factor = (max / min).powf(1.0 / (count as f64 - 1.0));
    (0..count).map(|i| min * factor.powi(i as i32)).collect()
}

impl MediaMetrics {
    /// Creates and registers the metrics.
    pub fn new(registry: &Registry) -> Self {
        let opts = |name: &str, help: &str| {
            Opts::new(name, help)
                .namespace("signaling")
                .subsystem("mcu")
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(opts(name, help), labels).expect("valid metric")
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>, labels: &[&str]| {
            let o = HistogramOpts::new(name, help)
                .namespace("signaling")
                .subsystem("mcu")
                .buckets(buckets);
            HistogramVec::new(o, labels).expect("valid metric")
        };
        let m = MediaMetrics {
            selected_candidate: counter(
                "selected_candidate_total",
                "Total number of selected candidates",
                &["origin", "type", "transport", "family"],
            ),
            peerconnection_state: counter(
                "peerconnection_state_total",
                "Total number of PeerConnections states",
                &["state", "reason"],
            ),
            ice_state: counter(
                "ice_state_total",
                "Total number of ICE connection states",
                &["state"],
            ),
            dtls_state: counter(
                "dtls_state_total",
                "Total number of DTLS connection states",
                &["state"],
            ),
            slow_link: counter(
                "slow_link_total",
                "Total number of slow link events",
                &["media", "direction"],
            ),
            rtt: histogram(
                "media_rtt",
                "The roundtrip time of WebRTC media in milliseconds",
                exponential_range(1.0, 10000.0, 25),
                &["media"],
            ),
            jitter: histogram(
                "media_jitter",
                "The jitter of WebRTC media in milliseconds",
                exponential_range(1.0, 2000.0, 20),
                &["media", "origin"],
            ),
            codecs: counter(
                "media_codecs_total",
                "The total number of codecs",
                &["media", "codec"],
            ),
            nacks: counter(
                "media_nacks_total",
                "The total number of NACKs",
                &["media", "direction"],
            ),
            retransmissions: counter(
                "media_retransmissions_total",
                "The total number of received retransmissions",
                &["media"],
            ),
            bytes: counter(
                "media_bytes_total",
                "The total number of media bytes sent / received",
                &["media", "direction"],
            ),
            lost: counter(
                "media_lost_total",
                "The total number of lost media packets",
                &["media", "origin"],
            ),
            bandwidth: GaugeVec::new(
                opts("bandwidth", "The current bandwidth in bytes per second"),
                &["direction"],
            )
            .expect("valid metric"),
            values: LabelValues::default(),
        };
        for c in [
            Box::new(m.selected_candidate.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.peerconnection_state.clone()),
            Box::new(m.ice_state.clone()),
            Box::new(m.dtls_state.clone()),
            Box::new(m.slow_link.clone()),
            Box::new(m.rtt.clone()),
            Box::new(m.jitter.clone()),
            Box::new(m.codecs.clone()),
            Box::new(m.nacks.clone()),
            Box::new(m.retransmissions.clone()),
            Box::new(m.bytes.clone()),
            Box::new(m.lost.clone()),
            Box::new(m.bandwidth.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        m
    }
}
