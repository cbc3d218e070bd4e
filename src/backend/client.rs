//! HTTP client for requests to Nextcloud: pooled, with timeouts, checksums
//! and the headers Nextcloud expects; unwraps OCS envelopes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use serde::Serialize;

use crate::api::backend::{BackendResponse, Ocs};
use crate::api::server::Envelope;
use crate::backend::checksum::{self, HEADER_BACKEND, HEADER_CHECKSUM, HEADER_RANDOM};
use crate::backend::host_slots::HostSlots;

/// Header with the comma-separated feature ids.
pub const HEADER_FEATURES: &str = "X-Spreed-Signaling-Features";

/// Why a request to Nextcloud failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendCallError {
    /// No answer within the configured timeout.
    #[error("backend request timed out")]
    Timeout,
    /// Could not connect or transfer.
    #[error("backend request failed: {0}")]
    Transport(String),
    /// HTTP status other than 200.
    #[error("backend answered HTTP {0}")]
    Status(u16),
    /// Nextcloud throttled the request (OCS status 429).
    #[error("backend throttled the request")]
    Throttled,
    /// The answer was larger than `[backend] maxresponsesize`.
    #[error("backend answer too large")]
    TooLarge,
    /// The answer was not the expected JSON.
    #[error("invalid backend answer: {0}")]
    Invalid(String),
}

/// Pooled HTTP client for one server process.
#[derive(Clone)]
pub struct BackendClient {
    http: reqwest::Client,
    timeout: Duration,
    features: String,
    /// Requests in flight at once (`[backend] maxconcurrentrequests`).
    slots: Arc<Semaphore>,
    /// Requests in flight per host (`[backend] connectionsperhost`).
    hosts: Arc<HostSlots>,
    per_host: usize,
    /// Requests nobody waits for (a session's leave): shutdown lets them
    /// finish.
    background: tokio_util::task::TaskTracker,
    max_response: usize,
    refused: Option<prometheus::IntCounterVec>,
    stats: Option<ClientStats>,
}

/// The backend id of a request URL (the `backend` label).
pub type BackendOf = Arc<dyn Fn(&str) -> Option<Arc<str>> + Send + Sync>;

/// `signaling_backend_client_*`: requests to Nextcloud by backend, their
/// duration and errors (the Go server's metrics).
#[derive(Clone)]
struct ClientStats {
    metrics: crate::metrics::GoMetrics,
    backend_of: BackendOf,
}

impl ClientStats {
    fn record<T>(&self, url: &str, took: Duration, r: &Result<T, BackendCallError>) {
        let backend = (self.backend_of)(url);
        let backend = backend.as_deref().unwrap_or("unknown");
        let m = &self.metrics;
        m.backend_client_requests
            .with_label_values(&[backend])
            .inc();
        m.backend_client_duration
            .with_label_values(&[backend])
            .observe(took.as_secs_f64());
        if let Err(e) = r {
            m.backend_client_errors
                .with_label_values(&[backend, e.metric_label()])
                .inc();
        }
    }
}

impl BackendCallError {
    /// The `error` label of `signaling_backend_client_requests_errors_total`
    /// (the Go server's values; `status` for an HTTP status other than 200).
    pub fn metric_label(&self) -> &'static str {
        match self {
            BackendCallError::Timeout => "timeout",
            BackendCallError::Transport(_) => "unknown",
            BackendCallError::Status(_) => "status",
            BackendCallError::Throttled => "throttled",
            BackendCallError::TooLarge => "error_reading_body",
            BackendCallError::Invalid(_) => "error_decoding_body",
        }
    }
}

impl BackendClient {
    /// Creates the client; `features` is sent in `X-Spreed-Signaling-Features`.
    pub fn new(
        timeout: Duration,
        connections_per_host: usize,
        skip_verify: bool,
        features: String,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_max_idle_per_host(connections_per_host)
            // Requests and answers are small: no Nagle delay (reqwest's
            // default too, stated here so it stays).
            .tcp_nodelay(true)
            .tls_danger_accept_invalid_certs(skip_verify)
            // Answers come from the configured URL only: a redirect could
            // point the server (and a hello v2 key lookup) elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("spreed-signaling/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(BackendClient {
            http,
            timeout,
            features,
            slots: Arc::new(Semaphore::new(1)),
            hosts: Arc::new(HostSlots::new(connections_per_host, None)),
            per_host: connections_per_host,
            background: tokio_util::task::TaskTracker::new(),
            max_response: usize::MAX,
            refused: None,
            stats: None,
        })
    }

    /// Bounds the requests in flight (more wait, within the request
    /// timeout) and the size of answers; refusals are counted in `refused`.
    pub fn with_limits(
        mut self,
        max_concurrent: usize,
        max_response: usize,
        refused: prometheus::IntCounterVec,
    ) -> Self {
        self.slots = Arc::new(Semaphore::new(max_concurrent.max(1)));
        self.max_response = max_response;
        self.refused = Some(refused);
        self
    }

    /// Counts requests, their duration and errors per backend;
    /// `backend_of` names the backend of a request URL.
    pub fn with_stats(mut self, metrics: crate::metrics::GoMetrics, backend_of: BackendOf) -> Self {
        self.hosts = Arc::new(HostSlots::new(
            self.per_host,
            Some(metrics.http_client_pool_connections.clone()),
        ));
        self.stats = Some(ClientStats {
            metrics,
            backend_of,
        });
        self
    }

    /// Sends `req` and parses the answer with `parse`, counted in the
    /// metrics under the backend of `url`.
    async fn request<T>(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
        parse: impl FnOnce(&[u8]) -> Result<T, BackendCallError>,
    ) -> Result<T, BackendCallError> {
        let start = std::time::Instant::now();
        let r = match self.send(url, req).await {
            Ok(bytes) => parse(&bytes),
            Err(e) => Err(e),
        };
        if let Some(stats) = &self.stats {
            stats.record(url, start.elapsed(), &r);
        }
        r
    }

    fn refuse(&self, limit: &str) {
        if let Some(r) = &self.refused {
            r.with_label_values(&[limit]).inc();
        }
    }

    /// Runs a request whose answer nobody waits for, tracked so that
    /// [`BackendClient::finish`] can let it finish before the process ends.
    pub fn spawn(&self, request: impl std::future::Future<Output = ()> + Send + 'static) {
        self.background.spawn(request);
    }

    /// Waits (at most the request timeout) for the requests
    /// [`BackendClient::spawn`]ed so far: Nextcloud hears of the sessions
    /// that ended at shutdown or at the end of a drain.
    pub async fn finish(&self) {
        self.background.close();
        let wait = self.background.wait();
        if tokio::time::timeout(self.timeout + Duration::from_millis(100), wait)
            .await
            .is_err()
        {
            tracing::warn!("requests to Nextcloud still running at exit were dropped");
        }
    }

    /// POSTs `{"type": kind, kind: body}` to `url`, signed with `secret`, and
    /// returns the answer (OCS envelope removed).
    pub async fn post<B: Serialize>(
        &self,
        url: &str,
        backend_base: &str,
        secret: &[u8],
        kind: &str,
        body: &B,
    ) -> Result<BackendResponse, BackendCallError> {
        let payload = serde_json::to_vec(&Envelope {
            id: None,
            kind,
            body: Some(body),
        })
        .map_err(|e| BackendCallError::Invalid(e.to_string()))?;
        let random = checksum::new_random();
        let sum = checksum::calculate(secret, random.as_bytes(), &payload);
        let req = self
            .http
            .post(url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .header("OCS-APIRequest", "true")
            .header(HEADER_FEATURES, &self.features)
            .header(HEADER_RANDOM, random)
            .header(HEADER_CHECKSUM, sum)
            .header(HEADER_BACKEND, backend_base)
            .body(payload);
        self.request(url, req, parse_response).await
    }

    /// GETs a JSON document (capabilities), OCS envelope removed.
    pub async fn get_json(&self, url: &str) -> Result<serde_json::Value, BackendCallError> {
        let req = self
            .http
            .get(url)
            .header("Accept", "application/json")
            .header("OCS-APIRequest", "true")
            .header(HEADER_FEATURES, &self.features);
        self.request(url, req, |bytes| {
            let data = unwrap_ocs(bytes)?;
            serde_json::from_str(data.get()).map_err(|e| BackendCallError::Invalid(e.to_string()))
        })
        .await
    }

    async fn send(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<bytes::Bytes, BackendCallError> {
        let fut = async {
            // Waiting for a slot counts into the timeout: a flood of hellos
            // cannot open unbounded connections to Nextcloud. The host's
            // slot first, so that requests waiting for a busy host do not
            // hold up the others.
            let Some(_host) = self.hosts.acquire(url).await else {
                return Err(BackendCallError::Transport("URL without a host".into()));
            };
            let Ok(_permit) = self.slots.acquire().await else {
                return Err(BackendCallError::Timeout);
            };
            let mut resp = req.send().await.map_err(map_err)?;
            let status = resp.status().as_u16();
            if status != 200 {
                return Err(BackendCallError::Status(status));
            }
            if resp
                .content_length()
                .is_some_and(|l| l > self.max_response as u64)
            {
                self.refuse("backend_response_size");
                return Err(BackendCallError::TooLarge);
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(map_err)? {
                if body.len() + chunk.len() > self.max_response {
                    self.refuse("backend_response_size");
                    return Err(BackendCallError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(bytes::Bytes::from(body))
        };
        // reqwest's own timeout covers the request; this one also bounds a
        // body that trickles in and the wait for a slot.
        match tokio::time::timeout(self.timeout + Duration::from_millis(100), fut).await {
            Ok(r) => r,
            Err(_) => Err(BackendCallError::Timeout),
        }
    }
}

fn map_err(e: reqwest::Error) -> BackendCallError {
    if e.is_timeout() {
        BackendCallError::Timeout
    } else {
        // The URL may hold credentials or tokens: not in messages and logs.
        BackendCallError::Transport(e.without_url().to_string())
    }
}

/// The `data` of an OCS envelope, or the whole body when it is not one;
/// OCS status 429 is [`BackendCallError::Throttled`].
pub fn unwrap_ocs(bytes: &[u8]) -> Result<Box<serde_json::value::RawValue>, BackendCallError> {
    if let Ok(ocs) = serde_json::from_slice::<Ocs>(bytes) {
        if ocs.ocs.meta.as_ref().is_some_and(|m| m.statuscode == 429) {
            return Err(BackendCallError::Throttled);
        }
        return Ok(ocs.ocs.data);
    }
    serde_json::from_slice(bytes).map_err(|e| BackendCallError::Invalid(e.to_string()))
}

/// Parses Nextcloud's answer to a backend request (OCS-wrapped or bare).
pub fn parse_response(bytes: &[u8]) -> Result<BackendResponse, BackendCallError> {
    let data = unwrap_ocs(bytes)?;
    serde_json::from_str(data.get()).map_err(|e| BackendCallError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_types_are_read_from_nextclouds_strings() {
        use crate::api::backend::BackendResponseKind as K;
        for (t, k) in [
            ("auth", K::Auth),
            ("room", K::Room),
            ("ping", K::Ping),
            ("session", K::Session),
            ("error", K::Error),
            ("", K::Other),
            ("something-new", K::Other),
        ] {
            let r = parse_response(format!(r#"{{"type":"{t}"}}"#).as_bytes()).unwrap();
            assert_eq!(r.kind, k, "{t}");
        }
        assert_eq!(parse_response(b"{}").unwrap().kind, K::Other);
    }

    #[test]
    fn parses_bare_and_ocs_wrapped_answers() {
        let bare = br#"{"type":"auth","auth":{"version":"1.0","userid":"u"}}"#;
        let r = parse_response(bare).unwrap();
        assert_eq!(r.auth.unwrap().userid.as_deref(), Some("u"));
        let wrapped = br#"{"ocs":{"meta":{"status":"ok","statuscode":200,"message":"OK"},"data":{"type":"error","error":{"code":"no_such_room","message":"x"}}}}"#;
        let r = parse_response(wrapped).unwrap();
        assert_eq!(r.kind, crate::api::backend::BackendResponseKind::Error);
        assert_eq!(r.error.unwrap().code, "no_such_room");
        let throttled = br#"{"ocs":{"meta":{"status":"failure","statuscode":429},"data":{}}}"#;
        assert!(matches!(
            parse_response(throttled),
            Err(BackendCallError::Throttled)
        ));
    }
}
