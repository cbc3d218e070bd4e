//! Prometheus metrics. Names follow the Go server where it has an
//! equivalent (`signaling_hub_*`), so existing dashboards keep working.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// All metrics of one server process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Sessions created since start.
    pub sessions_total: IntCounter,
    /// Sessions right now (updated at scrape time).
    pub sessions_current: IntGauge,
    /// Rooms right now (updated at scrape time).
    pub rooms_current: IntGauge,
    /// Backend API requests by type.
    pub backend_requests: IntCounterVec,
    /// Client messages by type.
    pub client_messages: IntCounterVec,
    /// Connections closed because their send queue overflowed.
    pub slow_clients: IntCounter,
    /// `client_messages` resolved once per known type (no label lookup per message).
    known_types: Vec<(&'static str, IntCounter)>,
}

/// Client message types counted under their own label; others count as "other".
const CLIENT_TYPES: &[&str] = &[
    "hello",
    "bye",
    "room",
    "message",
    "control",
    "transient",
    "internal",
];

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Self {
        let registry = Registry::new();
        let sessions_total = IntCounter::with_opts(
            Opts::new("sessions_total", "The total number of sessions")
                .namespace("signaling")
                .subsystem("hub"),
        )
        .expect("valid metric");
        let sessions_current = IntGauge::with_opts(
            Opts::new("sessions_current", "The current number of sessions")
                .namespace("signaling")
                .subsystem("hub"),
        )
        .expect("valid metric");
        let rooms_current = IntGauge::with_opts(
            Opts::new("rooms_current", "The current number of rooms")
                .namespace("signaling")
                .subsystem("hub"),
        )
        .expect("valid metric");
        let backend_requests = IntCounterVec::new(
            Opts::new("room_requests_total", "Backend API requests by type")
                .namespace("signaling")
                .subsystem("backend"),
            &["type"],
        )
        .expect("valid metric");
        let client_messages = IntCounterVec::new(
            Opts::new("messages_total", "Client messages by type")
                .namespace("signaling")
                .subsystem("client"),
            &["type"],
        )
        .expect("valid metric");
        let slow_clients = IntCounter::with_opts(
            Opts::new(
                "send_queue_overflows_total",
                "Connections closed (1013) because they did not read fast enough",
            )
            .namespace("signaling")
            .subsystem("client"),
        )
        .expect("valid metric");
        for c in [
            Box::new(sessions_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(sessions_current.clone()),
            Box::new(rooms_current.clone()),
            Box::new(backend_requests.clone()),
            Box::new(client_messages.clone()),
            Box::new(slow_clients.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let known_types = CLIENT_TYPES
            .iter()
            .map(|t| (*t, client_messages.with_label_values(&[*t])))
            .collect();
        Metrics {
            known_types,
            registry,
            sessions_total,
            sessions_current,
            rooms_current,
            backend_requests,
            client_messages,
            slow_clients,
        }
    }

    /// Counts one client message of type `kind`.
    pub fn client_message(&self, kind: &str) {
        match self.known_types.iter().find(|(t, _)| *t == kind) {
            Some((_, c)) => c.inc(),
            None => self.client_messages.with_label_values(&["other"]).inc(),
        }
    }

    /// Text exposition of all metrics.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
