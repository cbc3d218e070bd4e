//! Prometheus metrics. Names follow the Go server where it has an
//! equivalent (`signaling_hub_*`), so existing dashboards keep working.

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics of one server process.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `signaling_backend_current`: configured backends.
    pub backend_current: IntGauge,
    /// `signaling_hub_sessions{backend,clienttype}` (set at scrape time).
    pub hub_sessions: IntGaugeVec,
    /// `signaling_hub_sessions_total{backend,clienttype}`.
    pub hub_sessions_total: IntCounterVec,
    /// `signaling_hub_sessions_resume_failed_total`.
    pub resume_failed: IntCounter,
    /// `signaling_hub_rooms{backend}` (set at scrape time).
    pub hub_rooms: IntGaugeVec,
    /// `signaling_room_sessions{backend,clienttype,room}` (set at scrape time).
    pub room_sessions: IntGaugeVec,
    /// Backend API requests by type.
    pub backend_requests: IntCounterVec,
    /// Client messages by type.
    pub client_messages: IntCounterVec,
    /// Connections closed because their send queue overflowed.
    pub slow_clients: IntCounter,
    /// Pauses in reading a connection that went over its message budget.
    pub client_throttled: IntCounter,
    /// Senders held back for a congested recipient.
    pub client_sender_waits: IntCounter,
    /// Connections held back while the NATS publish queue is long.
    pub client_bus_waits: IntCounter,
    /// `signaling_limits_refused_total{limit}`: what a configured limit refused.
    pub refused: IntCounterVec,
    /// `signaling_throttle_delayed_total{action}`: failed hellos answered late.
    pub throttle_delayed: IntCounterVec,
    /// `signaling_throttle_bruteforce_total{action}`: hellos refused with
    /// `too_many_requests` after too many failures.
    pub throttle_bruteforce: IntCounterVec,
    /// Publishers, subscribers and Janus requests (`signaling_mcu_*`).
    pub mcu: McuMetrics,
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
        let opts = |name: &str, help: &str, subsystem: &str| {
            let o = Opts::new(name, help).namespace("signaling");
            if subsystem.is_empty() {
                o
            } else {
                o.subsystem(subsystem.to_string())
            }
        };
        let backend_current = IntGauge::with_opts(opts(
            "current",
            "The current number of configured backends",
            "backend",
        ))
        .expect("valid metric");
        let hub_sessions = IntGaugeVec::new(
            opts(
                "sessions",
                "The current number of sessions per backend",
                "hub",
            ),
            &["backend", "clienttype"],
        )
        .expect("valid metric");
        let hub_sessions_total = IntCounterVec::new(
            opts(
                "sessions_total",
                "The total number of sessions per backend",
                "hub",
            ),
            &["backend", "clienttype"],
        )
        .expect("valid metric");
        let resume_failed = IntCounter::with_opts(opts(
            "sessions_resume_failed_total",
            "The total number of failed session resume requests",
            "hub",
        ))
        .expect("valid metric");
        let hub_rooms = IntGaugeVec::new(
            opts("rooms", "The current number of rooms per backend", "hub"),
            &["backend"],
        )
        .expect("valid metric");
        let room_sessions = IntGaugeVec::new(
            opts(
                "sessions",
                "The current number of sessions in a room",
                "room",
            ),
            &["backend", "clienttype", "room"],
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
        let client_throttled = IntCounter::with_opts(
            Opts::new(
                "read_pauses_total",
                "Times a connection was not read for a while because it sent more than its budget",
            )
            .namespace("signaling")
            .subsystem("client"),
        )
        .expect("valid metric");
        let client_sender_waits = IntCounter::with_opts(
            Opts::new(
                "sender_waits_total",
                "Times a connection was not read until a recipient its message left more than half full drained",
            )
            .namespace("signaling")
            .subsystem("client"),
        )
        .expect("valid metric");
        let client_bus_waits = IntCounter::with_opts(
            Opts::new(
                "bus_waits_total",
                "Times a connection was not read while more messages waited for NATS than [nats] publishqueue",
            )
            .namespace("signaling")
            .subsystem("client"),
        )
        .expect("valid metric");
        let refused = IntCounterVec::new(
            opts(
                "refused_total",
                "Requests, connections and messages refused by a configured limit",
                "limits",
            ),
            &["limit"],
        )
        .expect("valid metric");
        let throttle_delayed = IntCounterVec::new(
            opts(
                "delayed_total",
                "Failed hellos and resumes answered with a delay",
                "throttle",
            ),
            &["action"],
        )
        .expect("valid metric");
        let throttle_bruteforce = IntCounterVec::new(
            opts(
                "bruteforce_total",
                "Hellos and resumes refused after too many failures from one address",
                "throttle",
            ),
            &["action"],
        )
        .expect("valid metric");
        for c in [
            Box::new(backend_current.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(client_throttled.clone()),
            Box::new(client_sender_waits.clone()),
            Box::new(client_bus_waits.clone()),
            Box::new(hub_sessions.clone()),
            Box::new(hub_sessions_total.clone()),
            Box::new(resume_failed.clone()),
            Box::new(hub_rooms.clone()),
            Box::new(room_sessions.clone()),
            Box::new(backend_requests.clone()),
            Box::new(client_messages.clone()),
            Box::new(slow_clients.clone()),
            Box::new(refused.clone()),
            Box::new(throttle_delayed.clone()),
            Box::new(throttle_bruteforce.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        let mcu = McuMetrics::new(&registry);
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
            mcu,
            known_types,
            registry,
            backend_current,
            hub_sessions,
            hub_sessions_total,
            resume_failed,
            hub_rooms,
            room_sessions,
            backend_requests,
            client_messages,
            slow_clients,
            client_throttled,
            client_sender_waits,
            client_bus_waits,
            refused,
            throttle_delayed,
            throttle_bruteforce,
        }
    }

    /// Counts one refusal by the limit named `limit`.
    pub fn refuse(&self, limit: &str) {
        self.refused.with_label_values(&[limit]).inc();
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

/// The Go server's `signaling_mcu_*` metrics (labels `type`: `video` or
/// `screen` for streams, the client message type for `messages_total`),
/// plus the Janus requests this server sent.
#[derive(Clone)]
pub struct McuMetrics {
    /// `signaling_mcu_publishers{type}`.
    pub publishers: IntGaugeVec,
    /// `signaling_mcu_publishers_total{type}`.
    pub publishers_total: IntCounterVec,
    /// `signaling_mcu_subscribers{type}`.
    pub subscribers: IntGaugeVec,
    /// `signaling_mcu_subscribers_total{type}`.
    pub subscribers_total: IntCounterVec,
    /// `signaling_mcu_nopublisher_total{type}`.
    pub nopublisher_total: IntCounterVec,
    /// `signaling_mcu_messages_total{type}`: client MCU messages by `data.type`.
    pub messages_total: IntCounterVec,
    /// `signaling_mcu_janus_requests_total{type}`: requests sent to Janus by
    /// their `janus` type (no Go equivalent).
    pub janus_requests_total: IntCounterVec,
}

impl McuMetrics {
    fn new(registry: &Registry) -> Self {
        let vec = |name: &str, help: &str| {
            IntCounterVec::new(
                Opts::new(name, help)
                    .namespace("signaling")
                    .subsystem("mcu"),
                &["type"],
            )
            .expect("valid metric")
        };
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(
                Opts::new(name, help)
                    .namespace("signaling")
                    .subsystem("mcu"),
                &["type"],
            )
            .expect("valid metric")
        };
        let m = McuMetrics {
            publishers: gauge("publishers", "The current number of publishers"),
            publishers_total: vec("publishers_total", "The total number of created publishers"),
            subscribers: gauge("subscribers", "The current number of subscribers"),
            subscribers_total: vec(
                "subscribers_total",
                "The total number of created subscribers",
            ),
            nopublisher_total: vec(
                "nopublisher_total",
                "The total number of subscribe requests where no publisher exists",
            ),
            messages_total: vec("messages_total", "The total number of MCU messages"),
            janus_requests_total: vec(
                "janus_requests_total",
                "The total number of requests sent to Janus",
            ),
        };
        for c in [
            Box::new(m.publishers.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.publishers_total.clone()),
            Box::new(m.subscribers.clone()),
            Box::new(m.subscribers_total.clone()),
            Box::new(m.nopublisher_total.clone()),
            Box::new(m.messages_total.clone()),
            Box::new(m.janus_requests_total.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        m
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
