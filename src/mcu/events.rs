//! Janus's WebSocket event handler (`janus.eventhandler.wsevh`, pointed at
//! `/spreed` with the subprotocol `janus-events`, as for the Go server):
//! its events become the Go server's media-quality metrics. ICE, DTLS and
//! PeerConnection states, the selected candidate pairs, slow links, and per
//! media stream the RTT, jitter, codecs, NACKs, retransmissions, bytes and
//! lost packets (counters of a handle are sent as totals: the metrics get
//! what grew since the last event), and the bandwidth of this server's
//! publishers and subscribers (`signaling_mcu_bandwidth`).
//!
//! Janus is trusted here (only loopback and private addresses may connect,
//! as with Go); still every label value is cut to [`MAX_LABEL`] bytes, a
//! label takes at most [`crate::metrics::media::MAX_LABEL_VALUES`] distinct
//! values (then `other`) and the per-handle state is bounded.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::Mcu;
use crate::metrics::media::MediaMetrics;

/// Longest label value taken from an event.
pub const MAX_LABEL: usize = 32;
/// Handles whose counters are kept; beyond, the oldest state is dropped.
const MAX_HANDLES: usize = 65_536;
/// Streams (media names) kept per handle.
const MAX_STREAMS: usize = 16;

const TYPE_HANDLE: u64 = 2;
const TYPE_WEBRTC: u64 = 16;
const TYPE_MEDIA: u64 = 32;
const WEBRTC_ICE: u64 = 1;
const WEBRTC_SELECTED_PAIR: u64 = 4;
const WEBRTC_DTLS: u64 = 5;
const WEBRTC_PEERCONNECTION: u64 = 6;
const MEDIA_SLOW_LINK: u64 = 2;
const MEDIA_STATS: u64 = 3;

/// A label value from an event: a string, cut to [`MAX_LABEL`] bytes.
fn cut(v: &Value) -> String {
    let s = v.as_str().unwrap_or("");
    let mut end = s.len().min(MAX_LABEL);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Totals Janus reports for a handle, per stream: what grew since the
/// last report (a total that went down started again, e.g. a new
/// PeerConnection on the handle).
#[derive(Default)]
struct Totals(HashMap<String, u64>);

impl Totals {
    fn delta(&mut self, stream: &str, value: u64) -> u64 {
        if !self.0.contains_key(stream) && self.0.len() >= MAX_STREAMS {
            return 0;
        }
        let prev = self.0.insert(stream.to_string(), value).unwrap_or(0);
        if value >= prev {
            value - prev
        } else {
            value
        }
    }
}

/// What is kept of one Janus handle.
#[derive(Default)]
struct HandleStats {
    codecs: HashMap<String, String>,
    bytes_in: Totals,
    bytes_out: Totals,
    nacks_in: Totals,
    nacks_out: Totals,
    lost_local: Totals,
    lost_remote: Totals,
    retransmissions: Totals,
    /// Bytes per second (received, sent) of each stream, for a handle of
    /// this server's MCU.
    bandwidth: HashMap<String, (f64, f64)>,
}

/// The state of one event connection from Janus.
pub struct EventsHandler {
    mcu: Arc<Mcu>,
    metrics: MediaMetrics,
    /// Janus sends handle events (so detached handles can be forgotten):
    /// only then are per-handle counters kept (as the Go server).
    handles_seen: bool,
    handles: HashMap<u64, HandleStats>,
}

impl EventsHandler {
    /// A handler feeding `metrics`; `mcu` tells which handles are this
    /// server's (their bandwidth counts).
    pub fn new(mcu: Arc<Mcu>, metrics: MediaMetrics) -> Self {
        EventsHandler {
            mcu,
            metrics,
            handles_seen: false,
            handles: HashMap::new(),
        }
    }

    /// One WebSocket text message: an event or an array of events (with
    /// `grouping`). False when it is not JSON of that shape.
    pub fn process_text(&mut self, text: &str) -> bool {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(events)) => {
                events.iter().for_each(|e| self.process(e));
                true
            }
            Ok(e @ Value::Object(_)) => {
                self.process(&e);
                true
            }
            _ => false,
        }
    }

    /// One event.
    pub fn process(&mut self, e: &Value) {
        let kind = e["type"].as_u64().unwrap_or(0);
        let subtype = e["subtype"].as_u64().unwrap_or(0);
        let handle = e["handle_id"].as_u64().unwrap_or(0);
        let ev = &e["event"];
        let m = &self.metrics;
        let label = |name: &'static str, v: &Value| m.values.admit(name, cut(v));
        match (kind, subtype) {
            (TYPE_HANDLE, _) => match ev["name"].as_str() {
                Some("attached") => self.handles_seen = true,
                Some("detached") => self.forget(handle),
                _ => {}
            },
            (TYPE_WEBRTC, WEBRTC_ICE) => m
                .ice_state
                .with_label_values(&[&label("ice", &ev["ice"])])
                .inc(),
            (TYPE_WEBRTC, WEBRTC_DTLS) => m
                .dtls_state
                .with_label_values(&[&label("dtls", &ev["dtls"])])
                .inc(),
            (TYPE_WEBRTC, WEBRTC_PEERCONNECTION) => m
                .peerconnection_state
                .with_label_values(&[
                    &label("connection", &ev["connection"]),
                    &label("reason", &ev["reason"]),
                ])
                .inc(),
            (TYPE_WEBRTC, WEBRTC_SELECTED_PAIR) => {
                for origin in ["local", "remote"] {
                    let c = &ev["candidates"][origin];
                    let family = m.values.admit(
                        "family",
                        format!("ipv{}", c["family"].as_u64().unwrap_or(0)),
                    );
                    m.selected_candidate
                        .with_label_values(&[
                            origin,
                            &label("type", &c["type"]),
                            &label("transport", &c["transport"]),
                            &family,
                        ])
                        .inc();
                }
            }
            (TYPE_MEDIA, MEDIA_SLOW_LINK) => {
                let direction = if ev["slow_link"] == "uplink" {
                    "outgoing"
                } else {
                    "incoming"
                };
                m.slow_link
                    .with_label_values(&[&label("media", &ev["media"]), direction])
                    .inc();
            }
            (TYPE_MEDIA, MEDIA_STATS) => match ev {
                // `combine_media_stats`: all streams in one event.
                Value::Array(streams) => streams.iter().for_each(|s| self.stats(handle, s)),
                s => self.stats(handle, s),
            },
            _ => {}
        }
    }

    /// The media statistics of one stream of a handle.
    fn stats(&mut self, handle: u64, s: &Value) {
        let media = self.metrics.values.admit("media", cut(&s["media"]));
        let num = |k: &str| s[k].as_u64().unwrap_or(0);
        let m = self.metrics.clone();
        if let Some(rtt) = s["rtt"].as_u64().filter(|r| *r > 0) {
            m.rtt.with_label_values(&[&media]).observe(rtt as f64);
        }
        for (key, origin) in [("jitter-local", "local"), ("jitter-remote", "remote")] {
            if let Some(j) = s[key].as_u64().filter(|j| *j > 0) {
                m.jitter
                    .with_label_values(&[&media, origin])
                    .observe(j as f64);
            }
        }
        let own = handle != 0 && self.mcu.has_handle(handle);
        let Some(h) = self.handle(handle) else {
            return;
        };
        let codec = Some(cut(&s["codec"]))
            .filter(|c| !c.is_empty())
            .map(|c| m.values.admit("codec", c))
            .unwrap_or_default();
        if !codec.is_empty() && h.codecs.get(&media) != Some(&codec) {
            m.codecs.with_label_values(&[&media, &codec]).inc();
            if h.codecs.len() < MAX_STREAMS || h.codecs.contains_key(&media) {
                h.codecs.insert(media.clone(), codec);
            }
        }
        let add = |c: &prometheus::IntCounterVec, labels: &[&str], n: u64| {
            if n > 0 {
                c.with_label_values(labels).inc_by(n);
            }
        };
        add(
            &m.bytes,
            &[&media, "incoming"],
            h.bytes_in.delta(&media, num("bytes-received")),
        );
        add(
            &m.bytes,
            &[&media, "outgoing"],
            h.bytes_out.delta(&media, num("bytes-sent")),
        );
        add(
            &m.nacks,
            &[&media, "incoming"],
            h.nacks_in.delta(&media, num("nacks-received")),
        );
        add(
            &m.nacks,
            &[&media, "outgoing"],
            h.nacks_out.delta(&media, num("nacks-sent")),
        );
        let retrans = h
            .retransmissions
            .delta(&media, num("retransmissions-received"));
        add(&m.retransmissions, &[&media], retrans);
        add(
            &m.lost,
            &[&media, "local"],
            h.lost_local.delta(&media, num("lost")),
        );
        add(
            &m.lost,
            &[&media, "remote"],
            h.lost_remote.delta(&media, num("lost-by-remote")),
        );
        if own && (h.bandwidth.len() < MAX_STREAMS || h.bandwidth.contains_key(&media)) {
            let now = (
                num("bytes-received-lastsec") as f64,
                num("bytes-sent-lastsec") as f64,
            );
            let before = h.bandwidth.insert(media, now).unwrap_or((0.0, 0.0));
            m.bandwidth
                .with_label_values(&["incoming"])
                .add(now.0 - before.0);
            m.bandwidth
                .with_label_values(&["outgoing"])
                .add(now.1 - before.1);
        }
    }

    /// The kept state of a handle, once Janus sends handle events.
    fn handle(&mut self, handle: u64) -> Option<&mut HandleStats> {
        if !self.handles_seen || handle == 0 {
            return None;
        }
        if !self.handles.contains_key(&handle) && self.handles.len() >= MAX_HANDLES {
            // Janus forgot to say some were detached: start over.
            let all: Vec<u64> = self.handles.keys().copied().collect();
            all.into_iter().for_each(|h| self.forget(h));
        }
        Some(self.handles.entry(handle).or_default())
    }

    /// A detached handle: its state goes, its bandwidth no longer counts.
    fn forget(&mut self, handle: u64) {
        if let Some(h) = self.handles.remove(&handle) {
            for (received, sent) in h.bandwidth.values() {
                self.metrics
                    .bandwidth
                    .with_label_values(&["incoming"])
                    .sub(*received);
                self.metrics
                    .bandwidth
                    .with_label_values(&["outgoing"])
                    .sub(*sent);
            }
        }
    }

    /// The connection from Janus ended: what it reported no longer counts.
    pub fn finish(&mut self) {
        let all: Vec<u64> = self.handles.keys().copied().collect();
        all.into_iter().for_each(|h| self.forget(h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_give_what_grew_and_a_restart_counts_from_zero() {
        let mut t = Totals::default();
        assert_eq!(t.delta("audio", 100), 100);
        assert_eq!(t.delta("audio", 150), 50);
        assert_eq!(t.delta("audio", 150), 0);
        assert_eq!(t.delta("audio", 30), 30, "a new PeerConnection");
        assert_eq!(t.delta("video", 7), 7);
        for i in 0..MAX_STREAMS {
            t.delta(&format!("s{i}"), 1);
        }
        assert_eq!(t.0.len(), MAX_STREAMS, "streams per handle are bounded");
    }

    #[test]
    fn labels_are_cut_on_a_character_boundary() {
        assert_eq!(cut(&Value::from("opus")), "opus");
        assert_eq!(cut(&Value::Null), "");
        let long = "é".repeat(40);
        let l = cut(&Value::from(long.as_str()));
        assert!(l.len() <= MAX_LABEL && l.chars().all(|c| c == 'é'), "{l}");
    }
}
