//! Test support: a fake Nextcloud (checks checksums, records requests,
//! answers auth/room/ping/session and capabilities) and a WebSocket client.

#![allow(dead_code)]

pub mod janus;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use spreed_signaling::backend::checksum;
use spreed_signaling::config::Config;
use spreed_signaling::server::Server;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

pub const SECRET: &str = "backend-secret";
pub const INTERNAL_SECRET: &str = "internal-secret";
pub const TIMEOUT: Duration = Duration::from_secs(5);
pub const BACKEND_PATH: &str = "/ocs/v2.php/apps/spreed/api/v3/signaling/backend";

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
            if let (Some(d), Some("join")) = (delay, v["room"]["action"].as_str()) {
                tokio::time::sleep(d).await;
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

pub fn config_text(nc: &FakeNextcloud, extra: &str) -> String {
    format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\nblockkey = 0123456789abcdef\n\
         [clients]\ninternalsecret = {INTERNAL_SECRET}\n[backend]\nbackends = nc1\ntimeout = 5\n\
         [nc1]\nurl = {}\nsecret = {SECRET}\n{extra}",
        nc.url
    )
}

pub struct TestServer {
    pub server: Option<Server>,
    pub nc: FakeNextcloud,
    pub url: String,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with("").await
    }

    /// Starts the server; `extra` is appended to the config.
    pub async fn start_with(extra: &str) -> TestServer {
        let nc = FakeNextcloud::start().await;
        Self::start_on(nc, extra).await
    }

    /// Starts a server using an existing fake Nextcloud.
    pub async fn start_on(nc: FakeNextcloud, extra: &str) -> TestServer {
        let cfg = Config::parse(&config_text(&nc, extra)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Server::start(cfg, Some(listener)).await.unwrap();
        let url = format!("http://{}", server.addr);
        TestServer {
            server: Some(server),
            nc,
            url,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("{}/spreed", self.url.replace("http://", "ws://"))
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Connects and says hello as `user` (None = guest); welcome consumed.
    pub async fn client(&self, user: Option<&str>) -> Client {
        let mut c = self.connect().await;
        c.expect_type("welcome").await;
        let params = match user {
            Some(u) => json!({"userid": u}),
            None => json!({}),
        };
        c.hello_v1(&self.nc.backend_url(), params).await;
        c
    }

    /// A client in `room` (joined with Nextcloud session id `nc-<user>`),
    /// with the room reply consumed.
    pub async fn client_in_room(&self, user: &str, room: &str) -> Client {
        let mut c = self.client(Some(user)).await;
        c.join(room, &format!("nc-{user}")).await;
        c
    }

    /// Sends a backend API request with a valid checksum.
    pub async fn backend_request(&self, room: &str, body: &Value) -> (u16, Value) {
        signed_backend_request(&self.url, &self.nc.url, room, body).await
    }

    /// The same request in a task of its own (for requests that wait for a
    /// client, such as dialout).
    pub fn spawn_backend_request(
        &self,
        room: &str,
        body: Value,
    ) -> tokio::task::JoinHandle<(u16, Value)> {
        let (url, nc, room) = (self.url.clone(), self.nc.url.clone(), room.to_string());
        tokio::spawn(async move { signed_backend_request(&url, &nc, &room, &body).await })
    }

    /// Asserts that `resume_id` can no longer be resumed.
    pub async fn assert_resume_refused(&self, resume_id: &str) {
        let mut c = self.connect().await;
        c.expect_type("welcome").await;
        c.send(
            json!({"id": "r", "type": "hello", "hello": {"version": "1.0", "resumeid": resume_id}}),
        )
        .await;
        c.expect_error("no_such_session").await;
    }

    /// Waits until Nextcloud was told that the session with Nextcloud
    /// session id `nc_session` left.
    pub async fn assert_backend_told_leave(&self, nc_session: &str) {
        self.nc
            .wait_for("room", |r| {
                r["room"]["action"] == "leave" && r["room"]["sessionid"] == nc_session
            })
            .await;
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct Client {
    pub ws: Ws,
    pub session_id: String,
    pub resume_id: String,
    pub user_id: Option<String>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Client {
            ws,
            session_id: String::new(),
            resume_id: String::new(),
            user_id: None,
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.unwrap();
    }

    /// Next text message as JSON (pings skipped).
    pub async fn recv(&mut self) -> Value {
        self.recv_within(TIMEOUT).await
    }

    /// Skips messages until one matches, waiting up to `limit` in all.
    pub async fn wait_for_within(
        &mut self,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.recv_within(left).await;
            if pred(&m) {
                return m;
            }
        }
    }

    /// Next text message, waiting up to `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Value {
        loop {
            let m = tokio::time::timeout(limit, self.ws.next())
                .await
                .expect("timed out waiting for a message")
                .expect("connection closed")
                .expect("read error");
            match m {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Close(c) => panic!("connection closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Next message or the close frame code (None = ended without close).
    pub async fn recv_or_close(&mut self) -> Result<Value, Option<u16>> {
        loop {
            let m = tokio::time::timeout(TIMEOUT, self.ws.next())
                .await
                .expect("timed out waiting for a message");
            match m {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str()).unwrap()),
                Some(Ok(Message::Close(c))) => return Err(c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => continue,
                _ => return Err(None),
            }
        }
    }

    /// Waits for the connection to close; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.recv_or_close().await {
                Ok(_) => continue,
                Err(code) => return code,
            }
        }
    }

    pub async fn expect_type(&mut self, kind: &str) -> Value {
        let m = self.recv().await;
        assert_eq!(m["type"], kind, "unexpected message: {m}");
        m
    }

    /// Skips messages until one matches.
    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let m = self.recv().await;
            if pred(&m) {
                return m;
            }
        }
    }

    pub async fn expect_error(&mut self, code: &str) -> Value {
        let m = self.expect_type("error").await;
        assert_eq!(m["error"]["code"], code, "unexpected error: {m}");
        m
    }

    /// Asserts that nothing arrives within a short time (used only where
    /// the absence of a message is the behaviour under test, after a later
    /// message has proven ordering — see callers).
    pub async fn expect_nothing(&mut self, within: Duration) {
        if let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout(within, self.ws.next()).await {
            panic!("unexpected message: {t}");
        }
    }

    pub async fn hello_v1(&mut self, url: &str, params: Value) -> Value {
        self.send(json!({"id": "hello-1", "type": "hello", "hello": {"version": "1.0", "auth": {"url": url, "params": params}}})).await;
        let m = self.expect_type("hello").await;
        self.session_id = m["hello"]["sessionid"].as_str().unwrap().to_string();
        self.resume_id = m["hello"]["resumeid"].as_str().unwrap().to_string();
        self.user_id = m["hello"]["userid"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map(str::to_string);
        m
    }

    /// Joins a room and returns the room reply.
    pub async fn join(&mut self, room: &str, nc_session: &str) -> Value {
        self.send(json!({"id": "join", "type": "room", "room": {"roomid": room, "sessionid": nc_session}})).await;
        let m = self
            .wait_for(|m| m["type"] == "room" || m["type"] == "error")
            .await;
        assert_eq!(m["room"]["roomid"], room);
        m
    }

    /// Waits for a room join event listing `sid`.
    pub async fn wait_join_of(&mut self, sid: &str) -> Value {
        let sid = sid.to_string();
        self.wait_for(move |m| {
            m["type"] == "event"
                && m["event"]["type"] == "join"
                && m["event"]["join"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|e| e["sessionid"] == sid.as_str()))
        })
        .await
    }

    /// Sends a `message` and returns nothing.
    pub async fn message_to(&mut self, recipient: Value, data: Value) {
        self.send(json!({"type": "message", "message": {"recipient": recipient, "data": data}}))
            .await;
    }
}

/// Creates a hello v2 token signed with a fresh Ed25519 key; returns (token, public key PEM).
pub fn internal_hello(random: &str) -> Value {
    let token = checksum::calculate(INTERNAL_SECRET.as_bytes(), random.as_bytes(), b"");
    json!({"type": "hello", "id": "ih", "hello": {"version": "1.0", "auth": {"type": "internal", "params": {"random": random, "token": token}}}})
}

/// A new empty directory under the system's temp dir, unique to this call.
pub fn fresh_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}",
        std::process::id(),
        checksum::new_random()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `nats-server` of the test's own, on a free port.
pub struct NatsServer {
    child: Option<std::process::Child>,
    pub port: u16,
    args: Vec<String>,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        Self::start_with_args(&[]).await
    }

    /// A `nats-server` with extra arguments (e.g. `--user`, `--pass`).
    pub async fn start_with_args(args: &[&str]) -> NatsServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut n = NatsServer {
            child: None,
            port,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        n.spawn().await;
        n
    }

    async fn spawn(&mut self) {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Freezes (`STOP`) or thaws (`CONT`) the nats-server process: its
    /// connections stay open but nothing is read or forwarded meanwhile.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits (polling, bounded) until `cond` holds.
pub async fn eventually(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a backend API request with a valid checksum to the server at
/// `server_url`, naming the Nextcloud at `nc_url`.
pub async fn signed_backend_request(
    server_url: &str,
    nc_url: &str,
    room: &str,
    body: &Value,
) -> (u16, Value) {
    let body = serde_json::to_vec(body).unwrap();
    let random = checksum::new_random();
    let sum = checksum::calculate(SECRET.as_bytes(), random.as_bytes(), &body);
    let resp = reqwest::Client::new()
        .post(format!("{server_url}/api/v1/room/{room}"))
        .header("Content-Type", "application/json")
        .header("Spreed-Signaling-Random", random)
        .header("Spreed-Signaling-Checksum", sum)
        .header("Spreed-Signaling-Backend", nc_url)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let v = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, v)
}

/// The server binary running as a child process, with its config in a
/// temporary directory (killed and cleaned up on drop).
pub struct ServerProcess {
    pub child: std::process::Child,
    pub port: u16,
    pub config_path: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl ServerProcess {
    /// Starts the binary with `config` (its `listen` is replaced by a free
    /// port) and waits until it accepts connections.
    pub async fn start(config: &str) -> ServerProcess {
        Self::start_with_env(config, &[]).await
    }

    /// As [`ServerProcess::start`], with extra environment variables.
    pub async fn start_with_env(config: &str, env: &[(&str, &str)]) -> ServerProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = config.replace(
            "listen = 127.0.0.1:0",
            &format!("listen = 127.0.0.1:{port}"),
        );
        let dir = std::env::temp_dir().join(format!("spreed-test-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config_path = dir.join("server.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
            .arg("--config")
            .arg(&config_path)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        eventually("the server process listens", TIMEOUT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .await;
        ServerProcess {
            child,
            port,
            config_path,
            dir,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/spreed", self.port)
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects an internal client (hello done) announcing `features`.
pub async fn internal_client(ws_url: &str, features: &[&str]) -> (Client, String) {
    let mut c = Client::connect(ws_url).await;
    c.expect_type("welcome").await;
    let mut hello = internal_hello("0123456789012345678901234567890123456789");
    hello["hello"]["features"] = json!(features);
    c.send(hello).await;
    let h = c.expect_type("hello").await;
    let sid = h["hello"]["sessionid"].as_str().unwrap().to_string();
    c.session_id = sid.clone();
    (c, sid)
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server binary with its output collected line by line (killed on
/// drop).
pub struct LoggedProcess {
    pub child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl LoggedProcess {
    /// Starts the binary with `args`; stdout and stderr are collected.
    pub fn spawn(args: &[&str]) -> LoggedProcess {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().unwrap()),
            Box::new(child.stderr.take().unwrap()),
        ];
        for r in out {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for l in std::io::BufReader::new(r).lines() {
                    let Ok(l) = l else { break };
                    lines.lock().unwrap().push(l);
                }
            });
        }
        LoggedProcess { child, lines }
    }

    /// All lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a line (after the first `skip`) matching `pred`.
    pub async fn wait_line(&self, skip: usize, pred: impl Fn(&str) -> bool) -> String {
        let fut = async {
            loop {
                if let Some(l) = self.lines().iter().skip(skip).find(|l| pred(l)) {
                    return l.clone();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(l) => l,
            Err(_) => panic!("no such log line in:\n{}", self.lines().join("\n")),
        }
    }

    /// Sends a signal (`-HUP`, `-TERM`).
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for LoggedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16) {
    eventually("the server process listens", TIMEOUT, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
}
