//! The proxy's metrics, with the Go proxy's names
//! (`signaling_proxy_*`), and the Janus MCU's (`signaling_mcu_*`, as the
//! Go proxy registers them too), plus the process metrics.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::metrics::McuMetrics;

/// Every metric of the proxy process.
#[derive(Clone)]
pub struct ProxyMetrics {
    registry: Registry,
    /// `signaling_proxy_sessions`.
    pub sessions: IntGauge,
    /// `signaling_proxy_sessions_total`.
    pub sessions_total: IntCounter,
    /// `signaling_proxy_sessions_resumed_total`.
    pub sessions_resumed_total: IntCounter,
    /// `signaling_proxy_publishers{type}`.
    pub publishers: IntGaugeVec,
    /// `signaling_proxy_publishers_total{type}`.
    pub publishers_total: IntCounterVec,
    /// `signaling_proxy_subscribers{type}`.
    pub subscribers: IntGaugeVec,
    /// `signaling_proxy_subscribers_total{type}`.
    pub subscribers_total: IntCounterVec,
    /// `signaling_proxy_command_messages_total{type}`.
    pub command_messages_total: IntCounterVec,
    /// `signaling_proxy_payload_messages_total{type}`.
    pub payload_messages_total: IntCounterVec,
    /// `signaling_proxy_token_errors_total{reason}`.
    pub token_errors_total: IntCounterVec,
    /// `signaling_proxy_load`.
    pub load: IntGauge,
    /// `signaling_proxy_connections`: open WebSocket connections (ours).
    pub connections: IntGauge,
    /// `signaling_proxy_limit_refusals_total{limit}`: refused by a cap
    /// (ours; see `super::limits`).
    pub limit_refusals_total: IntCounterVec,
    /// The Janus MCU's `signaling_mcu_*`.
    pub mcu: McuMetrics,
}

/// Labels a client may choose (command and payload types) are counted
/// under their own name only when known: anything else is `other`, so
/// made-up types cannot grow `/metrics`.
pub fn known_label<'a>(label: &'a str, known: &[&'static str]) -> &'a str {
    if known.contains(&label) {
        label
    } else {
        "other"
    }
}

impl ProxyMetrics {
    /// Creates and registers the metrics.
    pub fn new() -> ProxyMetrics {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| {
            Opts::new(name, help)
                .namespace("signaling")
                .subsystem("proxy")
        };
        let gauge = |name, help| IntGauge::with_opts(opts(name, help)).expect("valid metric");
        let counter = |name, help| IntCounter::with_opts(opts(name, help)).expect("valid metric");
        let gauges =
            |name, help, label| IntGaugeVec::new(opts(name, help), &[label]).expect("valid metric");
        let counters = |name, help, label| {
            IntCounterVec::new(opts(name, help), &[label]).expect("valid metric")
        };
        let m = ProxyMetrics {
            sessions: gauge("sessions", "The current number of sessions"),
            sessions_total: counter("sessions_total", "The total number of created sessions"),
            sessions_resumed_total: counter(
                "sessions_resumed_total",
                "The total number of resumed sessions",
            ),
            publishers: gauges("publishers", "The current number of publishers", "type"),
            publishers_total: counters(
                "publishers_total",
                "The total number of created publishers",
                "type",
            ),
            subscribers: gauges("subscribers", "The current number of subscribers", "type"),
            subscribers_total: counters(
                "subscribers_total",
                "The total number of created subscribers",
                "type",
            ),
            command_messages_total: counters(
                "command_messages_total",
                "The total number of command messages",
                "type",
            ),
            payload_messages_total: counters(
                "payload_messages_total",
                "The total number of payload messages",
                "type",
            ),
            token_errors_total: counters(
                "token_errors_total",
                "The total number of token errors",
                "reason",
            ),
            load: gauge("load", "The current load of the signaling proxy"),
            connections: gauge("connections", "The current number of WebSocket connections"),
            limit_refusals_total: counters(
                "limit_refusals_total",
                "The total number of connections, sessions and clients refused by a cap",
                "limit",
            ),
            mcu: McuMetrics::new(&registry),
            registry,
        };
        for c in [
            Box::new(m.sessions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.sessions_total.clone()),
            Box::new(m.sessions_resumed_total.clone()),
            Box::new(m.publishers.clone()),
            Box::new(m.publishers_total.clone()),
            Box::new(m.subscribers.clone()),
            Box::new(m.subscribers_total.clone()),
            Box::new(m.command_messages_total.clone()),
            Box::new(m.payload_messages_total.clone()),
            Box::new(m.token_errors_total.clone()),
            Box::new(m.load.clone()),
            Box::new(m.connections.clone()),
            Box::new(m.limit_refusals_total.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            m.registry.register(c).expect("unique metric");
        }
        m
    }

    /// Text exposition of all metrics.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}
