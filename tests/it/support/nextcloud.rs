//! The fake Nextcloud: checks checksums, records requests, answers
//! auth/room/ping/session and capabilities.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use spreed_signaling::backend::checksum;
use tokio::net::TcpListener;

use super::*;

/// One request the fake Nextcloud received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub kind: String,
    pub body: Value,
    pub headers: HeaderMap,
}

/// Behaviour and log of the fake Nextcloud.
#[derive(Default)]
pub struct NcState {
    pub requests: Vec<Recorded>,
    /// Permissions returned for a Nextcloud session id on room join.
    pub permissions: HashMap<String, Vec<String>>,
    /// hello v2 public key in the capabilities.
    pub token_key: Option<String>,
    /// session-ping-limit in the capabilities.
    pub ping_limit: Option<u64>,
    pub capability_fetches: usize,
    /// Delay for room answers (to test that slow backends stall nobody).
    pub room_delay: Option<Duration>,
    /// Delayed room joins being answered now, and the most at once.
    pub joins_in_flight: usize,
    pub max_joins_in_flight: usize,
    /// Virtual sessions are refused: `session` requests get HTTP 500 and
    /// room requests with an actor an error answer.
    pub refuse_virtual: bool,
    /// A key an attacker uploaded as a file under `/remote.php/dav/`.
    pub dav_key: Option<String>,
    /// Requests that reached `/remote.php/dav/`.
    pub dav_fetches: usize,
    /// `Authorization` headers of capabilities requests.
    pub capability_auth: Vec<String>,
    /// The capabilities endpoint answers with a redirect to this path.
    pub capabilities_redirect: Option<String>,
    /// Talk features listed besides audio and video (e.g. federation-v2).
    pub extra_features: Vec<String>,
}

#[derive(Clone)]
pub struct FakeNextcloud {
    pub url: String,
    pub state: Arc<Mutex<NcState>>,
    notify: Arc<tokio::sync::Notify>,
}

fn ocs(data: Value) -> axum::Json<Value> {
    axum::Json(
        json!({"ocs": {"meta": {"status": "ok", "statuscode": 200, "message": "OK"}, "data": data}}),
    )
}

async fn backend_handler(
    State(nc): State<FakeNextcloud>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let random = headers
        .get("Spreed-Signaling-Random")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let sum = headers
        .get("Spreed-Signaling-Checksum")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if random.len() < 32 || !checksum::verify(SECRET.as_bytes(), random.as_bytes(), &body, sum) {
        return (StatusCode::FORBIDDEN, "bad checksum").into_response();
    }
    let v: Value = serde_json::from_slice(&body).unwrap();
    let kind = v["type"].as_str().unwrap_or("").to_string();
    let delay = {
        let mut st = nc.state.lock().unwrap();
        st.requests.push(Recorded {
            kind: kind.clone(),
            body: v.clone(),
            headers: headers.clone(),
        });
        st.room_delay
    };
    nc.notify.notify_waiters();
    match kind.as_str() {
        "auth" => {
            let params = &v["auth"]["params"];
            if params["fail"].as_bool() == Some(true) {
                return ocs(
                    json!({"type": "error", "error": {"code": "auth_failed", "message": "nope"}}),
                )
                .into_response();
            }
            let user = params["userid"].as_str();
            let mut auth = json!({"version": "1.0"});
            if let Some(u) = user {
                auth["userid"] = json!(u);
                auth["user"] = json!({"displayname": format!("User {u}")});
            }
            ocs(json!({"type": "auth", "auth": auth})).into_response()
        }
        "room" => {
            // A join (the Go server sends no `action` with it).
            let join = matches!(v["room"]["action"].as_str(), None | Some("join"));
            if let (Some(d), true) = (delay, join) {
                {
                    let mut st = nc.state.lock().unwrap();
                    st.joins_in_flight += 1;
                    st.max_joins_in_flight = st.max_joins_in_flight.max(st.joins_in_flight);
                }
                tokio::time::sleep(d).await;
                nc.state.lock().unwrap().joins_in_flight -= 1;
            }
            if v["room"].get("actorid").is_some() && nc.state.lock().unwrap().refuse_virtual {
                return ocs(json!({"type": "error", "error": {"code": "not_allowed", "message": "No phones here."}})).into_response();
            }
            let room = v["room"]["roomid"].as_str().unwrap_or("");
            if room.starts_with("forbidden") {
                return ocs(json!({"type": "error", "error": {"code": "no_such_room", "message": "The user is not invited to this room."}})).into_response();
            }
            let nc_session = v["room"]["sessionid"].as_str().unwrap_or("");
            let mut resp = json!({"version": "1.0", "roomid": room, "properties": {"name": format!("Room {room}"), "type": 2}});
            if let Some(p) = nc.state.lock().unwrap().permissions.get(nc_session) {
                resp["permissions"] = json!(p);
            }
            ocs(json!({"type": "room", "room": resp})).into_response()
        }
        "ping" => {
            ocs(json!({"type": "room", "room": {"version": "1.0", "roomid": v["ping"]["roomid"]}}))
                .into_response()
        }
        "session" if nc.state.lock().unwrap().refuse_virtual => {
            (StatusCode::INTERNAL_SERVER_ERROR, "broken").into_response()
        }
        "session" => ocs(json!({"type": "session", "session": {"version": "1.0"}})).into_response(),
        _ => (StatusCode::BAD_REQUEST, "unknown").into_response(),
    }
}

/// Files of users (WebDAV): an attacker with an account can put any
/// document here, e.g. capabilities with a key of their own.
async fn dav_file(State(nc): State<FakeNextcloud>) -> axum::Json<Value> {
    let mut st = nc.state.lock().unwrap();
    st.dav_fetches += 1;
    let key = st.dav_key.clone().unwrap_or_default();
    ocs(
        json!({"capabilities": {"spreed": {"features": [], "config": {"signaling": {"hello-v2-token-key": key}}}}}),
    )
}

async fn capabilities(
    State(nc): State<FakeNextcloud>,
    headers: HeaderMap,
) -> axum::response::Response {
    let mut st = nc.state.lock().unwrap();
    st.capability_fetches += 1;
    if let Some(auth) = headers.get("authorization") {
        st.capability_auth
            .push(auth.to_str().unwrap_or_default().to_string());
    }
    if let Some(to) = &st.capabilities_redirect {
        return (
            StatusCode::FOUND,
            [("Location", format!("{}{to}", nc.url))],
            "moved",
        )
            .into_response();
    }
    let mut signaling = json!({});
    if let Some(k) = &st.token_key {
        signaling["hello-v2-token-key"] = json!(k);
    }
    if let Some(l) = st.ping_limit {
        signaling["session-ping-limit"] = json!(l);
    }
    let mut features = vec!["audio".to_string(), "video".to_string()];
    features.extend(st.extra_features.iter().cloned());
    ocs(
        json!({"capabilities": {"spreed": {"features": features, "config": {"signaling": signaling}}}}),
    )
    .into_response()
}

impl FakeNextcloud {
    pub async fn start() -> FakeNextcloud {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let nc = FakeNextcloud {
            url: format!("http://{addr}"),
            state: Arc::new(Mutex::new(NcState::default())),
            notify: Arc::new(tokio::sync::Notify::new()),
        };
        let app = Router::new()
            .route(BACKEND_PATH, post(backend_handler))
            .route("/ocs/v2.php/cloud/capabilities", get(capabilities))
            .route(
                "/remote.php/dav/files/{*rest}",
                get(dav_file).post(dav_file),
            )
            .with_state(nc.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        nc
    }

    pub fn backend_url(&self) -> String {
        format!("{}{}", self.url, BACKEND_PATH)
    }

    pub fn requests(&self, kind: &str) -> Vec<Recorded> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    /// Waits until a recorded request of `kind` satisfies `pred`.
    pub async fn wait_for(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Recorded {
        let fut = async {
            loop {
                let notified = self.notify.notified();
                if let Some(r) = self.requests(kind).into_iter().find(|r| pred(&r.body)) {
                    return r;
                }
                notified.await;
            }
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| panic!("no {kind} request arrived"))
    }
}

impl FakeNextcloud {
    /// Waits until the recorded requests of `kind` satisfy `pred`.
    pub async fn wait_all(&self, kind: &str, pred: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        let fut = async {
            loop {
                let notified = self.notify.notified();
                let reqs = self.requests(kind);
                if pred(&reqs) {
                    return reqs;
                }
                notified.await;
            }
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| panic!("{kind} requests never matched"))
    }
}
