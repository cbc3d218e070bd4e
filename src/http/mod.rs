//! axum routes: `/spreed` (WebSocket), `/api/v1/room/{id}` (backend API),
//! `/api/v1/welcome`, `/api/v1/serverinfo`, `/api/v1/stats`, `/metrics` and
//! `/turn/credentials`.
//! Handlers are thin: they check the transport-level things, hand typed
//! requests to the hub, and turn its typed results into status codes and
//! bodies (the hub decides none).

pub mod forwarded;
pub mod janus_events;
pub mod listener;
pub mod tls;
pub mod turn;
pub mod ws;
pub mod wsframe;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::api::backend::BackendRoomRequest;
use crate::api::error;
use crate::backend::checksum::{self, HEADER_BACKEND, HEADER_CHECKSUM, HEADER_RANDOM};
use crate::backend::client::HEADER_FEATURES;
use crate::hub::backend_api::{BackendApiError, BackendApiOk, BackendApiResult, DialoutError};
use crate::hub::{all_features, header_features, Hub, VERSION};

/// Largest accepted backend API body (large rooms send big participant lists).
pub const MAX_BACKEND_BODY: usize = 256 * 1024;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Tracks WebSocket connection tasks for graceful shutdown.
    pub tracker: tokio_util::task::TaskTracker,
    /// Cancelled on shutdown.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The value of `X-Spreed-Signaling-Features`: sorted ids joined with ", ".
pub fn features_header(hub: &Hub) -> HeaderValue {
    HeaderValue::from_str(&header_features(hub.mcu_announced())).expect("feature ids are ASCII")
}

async fn add_headers(State(state): State<AppState>, mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::SERVER, HeaderValue::from_static(VERSION));
    h.insert(HEADER_FEATURES, features_header(&state.hub));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// Any other path: 404 with the Go server's text.
async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

/// `/spreed` with another method than GET: not a WebSocket handshake
/// (400, as the Go server answers every request there that is not one).
async fn not_a_handshake() -> Response {
    (StatusCode::BAD_REQUEST, "WebSocket upgrade expected").into_response()
}

/// All routes of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/spreed", get(ws::upgrade).fallback(not_a_handshake))
        .route("/spreed/", get(ws::upgrade).fallback(not_a_handshake))
        .route(
            "/api/v1/room/{roomid}",
            post(room_api).layer(DefaultBodyLimit::max(MAX_BACKEND_BODY)),
        )
        .route("/api/v1/welcome", get(welcome))
        .route("/api/v1/serverinfo", get(serverinfo))
        .route("/metrics", get(metrics))
        .route("/api/v1/stats", get(stats))
        .route("/turn/credentials", get(turn::credentials_handler))
        .fallback(not_found)
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            add_headers,
        ))
        .with_state(state)
}

/// `GET /api/v1/welcome`; while draining 503 with `"draining": true`, so
/// that a load balancer's health check takes the process out.
async fn welcome(State(state): State<AppState>) -> Response {
    let mut body = json!({
        "nextcloud-spreed-signaling": "Welcome",
        "version": VERSION,
        "features": all_features(state.hub.mcu_announced()),
    });
    if state.hub.draining() {
        body["draining"] = json!(true);
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(body).into_response()
}

/// `GET /api/v1/serverinfo`: only for addresses in `[stats] allowed_ips`.
async fn serverinfo(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    if !stats_allowed(&state, &req) {
        return forbidden();
    }
    Json(state.hub.server_info()).into_response()
}

/// True when the request comes from an address in `[stats] allowed_ips`
/// (the client address a trusted proxy names, as the Go server).
fn stats_allowed(state: &AppState, req: &axum::extract::Request) -> bool {
    let live = state.hub.live();
    let ip = forwarded::request_client_ip(req, &live.app.trusted_proxies);
    let allowed = ip
        .and_then(forwarded::ClientIp::known)
        .is_some_and(|ip| live.stats.allowed_ips.contains(ip));
    if !allowed {
        state.hub.metrics.refuse("stats_address");
    }
    allowed
}

fn forbidden() -> Response {
    api_error(
        StatusCode::FORBIDDEN,
        error::FORBIDDEN,
        "Authentication check failed",
    )
}

async fn metrics(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    if !stats_allowed(&state, &req) {
        return forbidden();
    }
    let hub = &state.hub;
    // The gauges walk the sessions under the hub lock: at most once a
    // second, however often (and by how many) the endpoint is scraped.
    hub.update_gauges_throttled();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        hub.metrics.render(),
    )
        .into_response()
}

async fn stats(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    if !stats_allowed(&state, &req) {
        return forbidden();
    }
    Json(state.hub.stats()).into_response()
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// `POST /api/v1/room/{id}`: a request of Nextcloud about a room. What the
/// headers can refuse is refused before the body is read; the body must
/// carry the backend's checksum before it is parsed and handed to the hub.
async fn room_api(
    State(state): State<AppState>,
    Path(roomid): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let hub = &state.hub;
    let (random, sum) = match check_room_api_headers(hub, &headers) {
        Ok(checksum) => checksum,
        Err(refused) => return refused.into_response(),
    };
    let backend_header = headers
        .get(HEADER_BACKEND)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let found = match backend_header {
        Some(url) => match hub.registry().for_url(url) {
            Some(found) => Some(found),
            None => return AUTHENTICATION_FAILED.into_response(),
        },
        None => hub.registry().single(),
    };
    let body = match read_backend_body(hub, body).await {
        Ok(b) => b,
        Err(refused) => return refused.into_response(),
    };
    // Without the header (older Talk) and with several backends, the
    // backend is the one whose secret made the checksum, as in Go.
    let found = found.or_else(|| unnamed_backend(hub, random, &body, sum));
    let Some((backend, base)) = found else {
        return AUTHENTICATION_FAILED.into_response();
    };
    if !checksum::verify(&backend.secret, random.as_bytes(), &body, sum) {
        tracing::warn!(backend = %backend.id, "backend request with invalid checksum");
        return AUTHENTICATION_FAILED.into_response();
    }
    // Only now, with the secret proven, may an `allowall` origin be kept.
    hub.registry().remember(&backend);
    let req = match BackendRoomRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                error::INVALID_REQUEST,
                &e.to_string(),
            )
        }
    };
    let url = backend_header.map(str::to_string).unwrap_or(base);
    let result = hub.backend_api(&backend, &url, &roomid, req, &body).await;
    backend_api_response(result)
}

/// The configured backend whose secret made `sum`, for a request that
/// names no backend.
fn unnamed_backend(
    hub: &Hub,
    random: &str,
    body: &[u8],
    sum: &str,
) -> Option<(Arc<crate::backend::registry::Backend>, String)> {
    let registry = hub.registry();
    let b = registry
        .backends()
        .iter()
        .find(|b| checksum::verify(&b.secret, random.as_bytes(), body, sum))?;
    Some((b.clone(), b.urls.first()?.clone()))
}

/// The headers of a backend API request: a length within
/// [`MAX_BACKEND_BODY`], a JSON content type, and the checksum's random
/// and sum, which are returned.
fn check_room_api_headers<'h>(
    hub: &Hub,
    headers: &'h HeaderMap,
) -> Result<(&'h str, &'h str), Refusal> {
    let Some(len) = headers.get(header::CONTENT_LENGTH) else {
        return Err(Refusal(
            StatusCode::LENGTH_REQUIRED,
            error::LENGTH_REQUIRED,
            "Length required",
        ));
    };
    if len
        .to_str()
        .ok()
        .and_then(|l| l.parse::<usize>().ok())
        .is_none_or(|l| l > MAX_BACKEND_BODY)
    {
        // Refused from the header alone: the body is never read.
        hub.metrics.refuse("backend_body_size");
        return Err(Refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            error::TOO_LARGE,
            "Request entity too large",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            error::INVALID_CONTENT_TYPE,
            "Unsupported Content-Type",
        ));
    }
    let random = headers.get(HEADER_RANDOM).and_then(|v| v.to_str().ok());
    let sum = headers.get(HEADER_CHECKSUM).and_then(|v| v.to_str().ok());
    match (random, sum) {
        (Some(random), Some(sum)) => Ok((random, sum)),
        _ => Err(AUTHENTICATION_FAILED),
    }
}

/// The body of a backend API request. It must arrive within the read
/// timeout (a slow sender does not keep the request open), and be no
/// longer than it announced.
async fn read_backend_body(hub: &Hub, body: axum::body::Body) -> Result<Bytes, Refusal> {
    let read = axum::body::to_bytes(body, MAX_BACKEND_BODY);
    match tokio::time::timeout(hub.config.http.timeouts.read, read).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            error::INVALID_REQUEST,
            "Could not read body",
        )),
        Err(_) => {
            hub.metrics.refuse("backend_body_timeout");
            Err(Refusal(
                StatusCode::REQUEST_TIMEOUT,
                error::REQUEST_TIMEOUT,
                "Body not received in time",
            ))
        }
    }
}

/// A backend API request refused before it reached the hub: the HTTP
/// status, the error code and the message of its answer.
struct Refusal(StatusCode, &'static str, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        api_error(self.0, self.1, self.2)
    }
}

/// A backend API request without a valid checksum, or from no allowed
/// backend.
const AUTHENTICATION_FAILED: Refusal = Refusal(
    StatusCode::FORBIDDEN,
    error::AUTHENTICATION_FAILED,
    "Authentication check failed",
);

/// The answer to Nextcloud for what the hub made of a backend API request:
/// the HTTP status of each outcome is decided here, not in the hub.
fn backend_api_response(result: BackendApiResult) -> Response {
    match result {
        Ok(BackendApiOk::Done) => Json(json!({})).into_response(),
        Ok(BackendApiOk::DialoutStarted { callid }) => {
            Json(json!({"type": "dialout", "dialout": {"callid": callid}})).into_response()
        }
        Err(BackendApiError::InvalidRequest(message)) => {
            api_error(StatusCode::BAD_REQUEST, error::INVALID_REQUEST, &message)
        }
        Err(BackendApiError::Dialout(e)) => {
            let status = match &e {
                DialoutError::NumberMissing | DialoutError::InvalidNumber => {
                    StatusCode::BAD_REQUEST
                }
                DialoutError::NoClientAvailable => StatusCode::NOT_FOUND,
                DialoutError::Failed(_) => StatusCode::BAD_GATEWAY,
            };
            let body = json!({"type": "dialout", "dialout": {"error": e.into_backend_error()}});
            (status, Json(body)).into_response()
        }
        Err(BackendApiError::BusUnavailable) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            error::BUS_UNAVAILABLE,
            "The signaling servers cannot reach each other (NATS), try again.",
        ),
    }
}
