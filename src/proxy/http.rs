//! The proxy's HTTP side: `/proxy` (the WebSocket of the signaling
//! servers), `/stats` and `/metrics` (only for `[stats] allowed_ips`, the
//! client address as a trusted proxy names it), on every `[http] listen`
//! address.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::conn::MAX_MESSAGE;
use super::limits::Limit;
use super::server::Proxy;
use crate::config::IpList;
use crate::http::forwarded;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The proxy.
    pub proxy: Arc<Proxy>,
    /// `[app] trustedproxies`.
    pub trusted: IpList,
    /// `[stats] allowed_ips`.
    pub stats_allowed: IpList,
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/proxy", get(upgrade))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::map_response(server_header))
        .with_state(state)
}

async fn server_header(mut resp: Response) -> Response {
    let v = format!("spreed-signaling-proxy/{}", env!("CARGO_PKG_VERSION"));
    if let Ok(v) = HeaderValue::from_str(&v) {
        resp.headers_mut().insert(header::SERVER, v);
    }
    resp
}

/// Counts an open connection while it lives.
struct Counted(Arc<Proxy>);

impl Counted {
    /// The connection counted, or None (and the refusal counted) when
    /// `[http] maxconnections` are open.
    fn new(proxy: &Arc<Proxy>) -> Option<Counted> {
        let open = proxy.connections.fetch_add(1, Ordering::Relaxed);
        if proxy.max_connections.full(open) {
            proxy.connections.fetch_sub(1, Ordering::Relaxed);
            let cap = proxy.max_connections.0;
            proxy
                .refusals
                .refused(&proxy.metrics, Limit::Connections, cap);
            return None;
        }
        proxy.metrics.connections.inc();
        Some(Counted(proxy.clone()))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.connections.dec();
    }
}

async fn upgrade(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let proxy = state.proxy.clone();
    let Some(counted) = Counted::new(&proxy) else {
        return (StatusCode::SERVICE_UNAVAILABLE, "Too many connections\n").into_response();
    };
    ws.max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _counted = counted;
            super::conn::serve(proxy, socket, peer.to_string()).await;
        })
}

fn allowed(state: &HttpState, req: &Request) -> bool {
    forwarded::request_client_ip(req, &state.trusted)
        .and_then(forwarded::ClientIp::known)
        .is_some_and(|ip| state.stats_allowed.contains(ip))
}

fn forbidden() -> Response {
    (StatusCode::FORBIDDEN, "Authentication check failed\n").into_response()
}

async fn stats(State(state): State<HttpState>, req: Request) -> Response {
    if !allowed(&state, &req) {
        return forbidden();
    }
    Json(state.proxy.stats()).into_response()
}

async fn metrics(State(state): State<HttpState>, req: Request) -> Response {
    if !allowed(&state, &req) {
        return forbidden();
    }
    // The stream gauges are computed from the Janus MCU's registry when
    // read, as the server does (`Hub` metrics).
    state.proxy.mcu.refresh_stream_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.proxy.metrics.render(),
    )
        .into_response()
}
