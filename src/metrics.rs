//! Prometheus metrics. Names follow the Go server where it has an
//! equivalent (`signaling_hub_*`), so existing dashboards keep working.

pub mod media;

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
    /// `signaling_server_messages_total{type}`: client messages by type.
    pub server_messages: IntCounterVec,
    /// Connections closed because their send queue overflowed.
    pub slow_clients: IntCounter,
    /// Pauses in reading a connection that went over its message budget.
    pub client_throttled: IntCounter,
    /// Senders held back for a congested recipient.
    pub client_sender_waits: IntCounter,
    /// Connections held back while the NATS publish queue is long.
    pub client_bus_waits: IntCounter,
    /// Recipients senders stopped waiting for (no progress).
    pub client_stalled_recipients: IntCounter,
    /// Resyncs after messages from other processes were lost, by reason.
    pub bus_resyncs: IntCounterVec,
    /// `signaling_limits_refused_total{limit}`: what a configured limit refused.
    pub refused: IntCounterVec,
    /// `signaling_throttle_delayed_total{action,delay}`: failed hellos
    /// answered late (delay in milliseconds).
    pub throttle_delayed: IntCounterVec,
    /// `signaling_throttle_bruteforce_total{action}`: hellos refused with
    /// `too_many_requests` after too many failures.
    pub throttle_bruteforce: IntCounterVec,
    /// Publishers, subscribers and Janus requests (`signaling_mcu_*`).
    pub mcu: McuMetrics,
    /// Traffic, resumes, session limits, requests to Nextcloud and calls.
    pub go: GoMetrics,
    /// Media quality from Janus's event handler (`signaling_mcu_media_*`, ...).
    pub media: media::MediaMetrics,
    /// `server_messages` resolved once per known type (no label lookup per message).
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
        let server_messages = IntCounterVec::new(
            opts(
                "messages_total",
                "The total number of signaling messages",
                "server",
            ),
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
        let client_stalled_recipients = IntCounter::with_opts(
            Opts::new(
                "stalled_recipients_total",
                "Times a sender stopped waiting for a congested recipient that took nothing for a tenth of [clients] slowreceiverwait or did not drain within it (nobody waits for it again until it drained)",
            )
            .namespace("signaling")
            .subsystem("client"),
        )
        .expect("valid metric");
        let bus_resyncs = IntCounterVec::new(
            opts(
                "resyncs_total",
                "Times the rooms of this process were asked for again because messages from other processes were lost (slow_consumer: this process did not keep up; reconnected: the connection to NATS was lost)",
                "bus",
            ),
            &["reason"],
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
                "The total number of delayed requests",
                "throttle",
            ),
            &["action", "delay"],
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
            Box::new(bus_resyncs.clone()),
            Box::new(client_stalled_recipients.clone()),
            Box::new(hub_sessions.clone()),
            Box::new(hub_sessions_total.clone()),
            Box::new(resume_failed.clone()),
            Box::new(hub_rooms.clone()),
            Box::new(room_sessions.clone()),
            Box::new(backend_requests.clone()),
            Box::new(server_messages.clone()),
            Box::new(slow_clients.clone()),
            Box::new(refused.clone()),
            Box::new(throttle_delayed.clone()),
            Box::new(throttle_bruteforce.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        let mcu = McuMetrics::new(&registry);
        let go = GoMetrics::new(&registry);
        let media = media::MediaMetrics::new(&registry);
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        let known_types = CLIENT_TYPES
            .iter()
            .map(|t| (*t, server_messages.with_label_values(&[*t])))
            .collect();
        Metrics {
            mcu,
            go,
            media,
            known_types,
            registry,
            backend_current,
            hub_sessions,
            hub_sessions_total,
            resume_failed,
            hub_rooms,
            room_sessions,
            backend_requests,
            server_messages,
            slow_clients,
            client_throttled,
            client_sender_waits,
            client_bus_waits,
            bus_resyncs,
            client_stalled_recipients,
            refused,
            throttle_delayed,
            throttle_bruteforce,
        }
    }

    /// The counter of refusals by the limit named `limit`.
    pub fn refusals(&self, limit: &str) -> prometheus::IntCounter {
        self.refused.with_label_values(&[limit])
    }

    /// Counts one refusal by the limit named `limit`.
    pub fn refuse(&self, limit: &str) {
        self.refused.with_label_values(&[limit]).inc();
    }

    /// Counts one client message of type `kind`.
    pub fn client_message(&self, kind: &str) {
        match self.known_types.iter().find(|(t, _)| *t == kind) {
            Some((_, c)) => c.inc(),
            None => self.server_messages.with_label_values(&["other"]).inc(),
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
    /// `signaling_mcu_backend_connections{country}`: connected proxies.
    pub backend_connections: IntGaugeVec,
    /// `signaling_mcu_backend_load{url}`: each proxy's reported load.
    pub backend_load: prometheus::GaugeVec,
    /// `signaling_mcu_no_backend_available_total{type}`: publishers no
    /// proxy took.
    pub no_backend_available_total: IntCounterVec,
    /// `signaling_mcu_publisher_streams{type}`: media Janus receives from
    /// publishers (`audio`, `video`, `screen`), from Janus's `media` events.
    pub publisher_streams: IntGaugeVec,
    /// `signaling_mcu_subscriber_streams{type}`: those streams times their
    /// connected subscribers.
    pub subscriber_streams: IntGaugeVec,
}

impl McuMetrics {
    /// Creates the metrics and registers them in `registry` (the
    /// server's, or the proxy's own).
    pub fn new(registry: &Registry) -> Self {
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
            publisher_streams: gauge(
                "publisher_streams",
                "The current number of published media streams",
            ),
            subscriber_streams: gauge(
                "subscriber_streams",
                "The current number of subscribed media streams",
            ),
            janus_requests_total: vec(
                "janus_requests_total",
                "The total number of requests sent to Janus",
            ),
            backend_connections: IntGaugeVec::new(
                Opts::new(
                    "backend_connections",
                    "Current number of connections to signaling proxy backends",
                )
                .namespace("signaling")
                .subsystem("mcu"),
                &["country"],
            )
            .expect("valid metric"),
            backend_load: prometheus::GaugeVec::new(
                Opts::new("backend_load", "Current load of signaling proxy backends")
                    .namespace("signaling")
                    .subsystem("mcu"),
                &["url"],
            )
            .expect("valid metric"),
            no_backend_available_total: vec(
                "no_backend_available_total",
                "Total number of publishing requests where no backend was available",
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
            Box::new(m.backend_connections.clone()),
            Box::new(m.backend_load.clone()),
            Box::new(m.no_backend_available_total.clone()),
            Box::new(m.publisher_streams.clone()),
            Box::new(m.subscriber_streams.clone()),
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

/// The rest of the Go server's metrics (its `docs/prometheus-metrics.md`)
/// for the parts this server has, with its names, labels and buckets.
#[derive(Clone)]
pub struct GoMetrics {
    /// `signaling_client_messages_total{direction="incoming"}`.
    pub client_messages_in: IntCounter,
    /// `signaling_client_messages_total{direction="outgoing"}`.
    pub client_messages_out: IntCounter,
    /// `signaling_client_bytes_total{direction="incoming"}`.
    pub client_bytes_in: IntCounter,
    /// `signaling_client_bytes_total{direction="outgoing"}`.
    pub client_bytes_out: IntCounter,
    /// `signaling_hub_sessions_resume_total{backend,clienttype}`.
    pub resume_total: IntCounterVec,
    /// `signaling_backend_session_limit{backend}` (set at scrape time).
    pub session_limit: IntGaugeVec,
    /// `signaling_backend_session_limit_exceeded_total{backend}`.
    pub session_limit_exceeded: IntCounterVec,
    /// `signaling_backend_client_requests_total{backend}`.
    pub backend_client_requests: IntCounterVec,
    /// `signaling_backend_client_requests_duration{backend}` (seconds).
    pub backend_client_duration: prometheus::HistogramVec,
    /// `signaling_backend_client_requests_errors_total{backend,error}`.
    pub backend_client_errors: IntCounterVec,
    /// `signaling_call_sessions{backend,room,clienttype}` (set at scrape time).
    pub call_sessions: IntGaugeVec,
    /// `signaling_call_sessions_total{backend,clienttype}`.
    pub call_sessions_total: IntCounterVec,
    /// `signaling_call_rooms_total{backend}`.
    pub call_rooms_total: IntCounterVec,
    /// `signaling_client_rtt`: round trip of WebSocket pings (milliseconds).
    pub client_rtt: prometheus::Histogram,
    /// `signaling_http_client_pool_connections{host}`: requests to a
    /// Nextcloud host in flight (`[backend] connectionsperhost` caps it).
    pub http_client_pool_connections: IntGaugeVec,
    /// `signaling_client_countries_total{country}`: new sessions by the
    /// country of their address (`[geoip]`; two letters, so bounded).
    pub client_countries: IntCounterVec,
}

/// Buckets from `min` to `max` growing by a constant factor (Go's
/// `prometheus.ExponentialBucketsRange`).
fn exponential_range(min: f64, max: f64, count: usize) -> Vec<f64> {
    let factor = (max / min).powf(1.0 / (count as f64 - 1.0));
    (0..count).map(|i| min * factor.powi(i as i32)).collect()
}

impl GoMetrics {
    fn new(registry: &Registry) -> Self {
        let opts = |subsystem: &str, name: &str, help: &str| {
            Opts::new(name, help)
                .namespace("signaling")
                .subsystem(subsystem.to_string())
        };
        let counter_vec = |subsystem: &str, name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(opts(subsystem, name, help), labels).expect("valid metric")
        };
        let gauge_vec = |subsystem: &str, name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(opts(subsystem, name, help), labels).expect("valid metric")
        };
        let client_messages = counter_vec(
            "client",
            "messages_total",
            "The total number of messages sent to or received by clients",
            &["direction"],
        );
        let client_bytes = counter_vec(
            "client",
            "bytes_total",
            "The total number of bytes sent to or received by clients",
            &["direction"],
        );
        let resume_total = counter_vec(
            "hub",
            "sessions_resume_total",
            "The total number of resumed sessions per backend",
            &["backend", "clienttype"],
        );
        let session_limit = gauge_vec(
            "backend",
            "session_limit",
            "The session limit of a backend (if set)",
            &["backend"],
        );
        let session_limit_exceeded = counter_vec(
            "backend",
            "session_limit_exceeded_total",
            "The number of times the session limit exceeded",
            &["backend"],
        );
        let backend_client_requests = counter_vec(
            "backend_client",
            "requests_total",
            "The total number of backend client requests",
            &["backend"],
        );
        let backend_client_duration = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "requests_duration",
                "The duration of backend client requests in seconds",
            )
            .namespace("signaling")
            .subsystem("backend_client")
            .buckets(exponential_range(0.01, 30.0, 30)),
            &["backend"],
        )
        .expect("valid metric");
        let backend_client_errors = counter_vec(
            "backend_client",
            "requests_errors_total",
            "The total number of backend client requests that had an error",
            &["backend", "error"],
        );
        let call_sessions = gauge_vec(
            "call",
            "sessions",
            "The current number of sessions in a call",
            &["backend", "room", "clienttype"],
        );
        let call_sessions_total = counter_vec(
            "call",
            "sessions_total",
            "The total number of sessions in a call",
            &["backend", "clienttype"],
        );
        let call_rooms_total = counter_vec(
            "call",
            "rooms_total",
            "The total number of rooms with an active call",
            &["backend"],
        );
        let client_rtt = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "rtt",
                "The roundtrip time of WebSocket ping messages in milliseconds",
            )
            .namespace("signaling")
            .subsystem("client")
            .buckets(exponential_range(1.0, 30000.0, 50)),
        )
        .expect("valid metric");
        let http_client_pool_connections = gauge_vec(
            "http_client_pool",
            "connections",
            "The current number of HTTP client connections per host",
            &["host"],
        );
        let client_countries = counter_vec(
            "client",
            "countries_total",
            "The total number of connections by country",
            &["country"],
        );
        for c in [
            Box::new(client_rtt.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(client_countries.clone()),
            Box::new(http_client_pool_connections.clone()),
            Box::new(client_messages.clone()),
            Box::new(client_bytes.clone()),
            Box::new(resume_total.clone()),
            Box::new(session_limit.clone()),
            Box::new(session_limit_exceeded.clone()),
            Box::new(backend_client_requests.clone()),
            Box::new(backend_client_duration.clone()),
            Box::new(backend_client_errors.clone()),
            Box::new(call_sessions.clone()),
            Box::new(call_sessions_total.clone()),
            Box::new(call_rooms_total.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        GoMetrics {
            client_messages_in: client_messages.with_label_values(&["incoming"]),
            client_messages_out: client_messages.with_label_values(&["outgoing"]),
            client_bytes_in: client_bytes.with_label_values(&["incoming"]),
            client_bytes_out: client_bytes.with_label_values(&["outgoing"]),
            resume_total,
            session_limit,
            session_limit_exceeded,
            backend_client_requests,
            backend_client_duration,
            backend_client_errors,
            call_sessions,
            call_sessions_total,
            call_rooms_total,
            client_rtt,
            http_client_pool_connections,
            client_countries,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn buckets_span_go_s_range() {
        let b = super::exponential_range(0.01, 30.0, 30);
        assert_eq!(b.len(), 30);
        assert!((b[0] - 0.01).abs() < 1e-12);
        assert!((b[29] - 30.0).abs() < 1e-9);
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }
}
