//! `hello`: authentication (v1 through the backend, v2 by JWT, internal
//! clients by shared secret) and resume.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use serde_json::value::RawValue;

use super::outbox::{CloseReason, Outbox};
use super::session::{flags, new_id, Session, SessionKind};
use super::{invalid_format, Hub, State, VERSION};
use crate::api::backend::{AuthRequest, BackendResponseKind};
use crate::api::client::{AuthKind, HelloClientMessage, HelloV2Params, InternalAuthParams};
use crate::api::error::{self, ProtocolError};
use crate::api::server::{frame, Frame, HelloReply, ServerInfo};
use crate::backend::checksum;
use crate::backend::client::BackendCallError;
use crate::backend::registry::{signaling_url, Backend};
use crate::backend::token::{self, TokenError};

/// Who a successful authentication says the client is.
pub(super) struct Identity {
    pub kind: SessionKind,
    pub backend: Arc<Backend>,
    pub backend_base: String,
    pub backend_url: String,
    pub user_id: Option<String>,
    pub user: Option<Box<RawValue>>,
    pub federated: Option<super::session::Federated>,
}

/// Result of a successful hello.
pub struct HelloOk {
    /// Public session id.
    pub sid: Arc<str>,
    /// Id of the session's backend (for the connection's log span).
    pub backend: Arc<str>,
    /// True when an existing session was resumed.
    pub resumed: bool,
    /// True for guests that must join a room within the room timeout.
    pub must_join_room: bool,
}

/// The error a client sees when Nextcloud could not be asked. One message
/// for every failure: whether the host did not answer, refused, timed out or
/// answered HTTP 404 stays in the log, so that (with `allowall`) a hello
/// cannot probe which hosts and ports exist.
fn backend_error(e: BackendCallError, code_on_failure: &str) -> ProtocolError {
    match e {
        BackendCallError::Throttled => {
            ProtocolError::new(error::TOO_MANY_REQUESTS, "Nextcloud throttled the request")
        }
        _ => ProtocolError::new(code_on_failure, "The user could not be authenticated."),
    }
}

/// Failures that count towards the brute-force throttle: guesses of
/// credentials, tokens and resume ids.
fn counts_as_guess(code: &str) -> bool {
    matches!(
        code,
        error::AUTH_FAILED
            | error::INVALID_TOKEN
            | error::TOKEN_EXPIRED
            | error::TOKEN_NOT_VALID_YET
            | error::NO_SUCH_SESSION
            | error::INVALID_BACKEND
    )
}

impl Hub {
    /// [`Hub::hello`] throttled per client address: an address with too
    /// many recent failures gets `too_many_requests` without any work, and
    /// each failure is answered later than the one before.
    /// Internal clients with a valid HMAC and this server's own outgoing
    /// connections are not throttled (see `hub/throttle.rs`).
    pub async fn hello_from(
        self: &Arc<Self>,
        peer: super::throttle::Peer,
        conn: &Arc<Outbox>,
        id: Option<&str>,
        hello: HelloClientMessage,
    ) -> Result<HelloOk, ProtocolError> {
        let action = if hello.resumeid.as_deref().is_some_and(|r| !r.is_empty()) {
            "resume"
        } else {
            "hello"
        };
        let exempt = self.throttle.is_own_dial(peer.socket) || self.proves_internal(&hello);
        let (client_ip, known) = (peer.ip, peer.known);
        let peer = peer.ip.filter(|_| !exempt);
        if let Some(ip) = peer {
            if self.throttle.blocked(ip) {
                self.metrics
                    .throttle_bruteforce
                    .with_label_values(&[action])
                    .inc();
                return Err(ProtocolError::new(
                    error::TOO_MANY_REQUESTS,
                    "Too many failed attempts, try again later.",
                ));
            }
        }
        let r = self.hello(conn, id, hello).await;
        if let Ok(ok) = &r {
            self.locate_client(ok, client_ip, known);
        }
        if let (Err(e), Some(ip)) = (&r, peer) {
            if counts_as_guess(&e.code) {
                let delay = self.throttle.failed(ip);
                self.metrics
                    .throttle_delayed
                    .with_label_values(&[action, &delay.as_millis().to_string()])
                    .inc();
                tracing::debug!(%ip, action, ?delay, "failed hello, answer delayed");
                tokio::time::sleep(delay).await;
            }
        }
        r
    }

    /// Keeps the address and country of a session's client (the Go
    /// server's `Client.Country`, per connection) and counts a new
    /// session's country in `signaling_client_countries_total`.
    fn locate_client(
        &self,
        ok: &HelloOk,
        ip: Option<std::net::IpAddr>,
        known: Option<std::net::IpAddr>,
    ) {
        let located = self.geoip.locate(known);
        let country = located.country().cloned();
        if let Some(s) = self.lock().sessions.map.get_mut(&ok.sid) {
            s.client_ip = ip;
            s.country = country.clone();
        }
        if let (Some(c), false) = (&country, ok.resumed) {
            self.metrics
                .go
                .client_countries
                .with_label_values(&[c])
                .inc();
        }
        tracing::debug!(session = %ok.sid, country = %located, resumed = ok.resumed, "client located");
    }

    /// True when `hello` proves an internal client: its token is the HMAC
    /// of its random with the internal secret, or it resumes an internal
    /// session (whose resume id only that client knows).
    fn proves_internal(&self, hello: &HelloClientMessage) -> bool {
        if let Some(resume_id) = hello.resumeid.as_deref().filter(|r| !r.is_empty()) {
            let st = self.lock();
            return st
                .sessions
                .resume_ids
                .get(resume_id)
                .and_then(|sid| st.sessions.map.get(sid))
                .is_some_and(|s| s.kind == SessionKind::Internal);
        }
        let Some(auth) = hello.auth.as_ref().filter(|a| a.kind == AuthKind::Internal) else {
            return false;
        };
        let Some(params) = auth.params.as_deref() else {
            return false;
        };
        let secret = self.config.internal_secret.as_bytes();
        serde_json::from_str::<InternalAuthParams>(params.get()).is_ok_and(|p| {
            p.random.len() >= 32
                && !secret.is_empty()
                && checksum::verify(secret, p.random.as_bytes(), b"", &p.token)
        })
    }

    /// Processes a `hello` on an unauthenticated connection. On success the
    /// hello reply (and, for a resume, the queued messages) is already in
    /// the connection's outbox.
    pub async fn hello(
        self: &Arc<Self>,
        conn: &Arc<Outbox>,
        id: Option<&str>,
        hello: HelloClientMessage,
    ) -> Result<HelloOk, ProtocolError> {
        if hello.version != "1.0" && hello.version != "2.0" {
            return Err(ProtocolError::new(
                error::INVALID_HELLO_VERSION,
                "The hello version is not supported.",
            ));
        }
        super::features::check_client_features(&hello.features)?;
        if let Some(resume_id) = hello.resumeid.as_deref().filter(|r| !r.is_empty()) {
            let known = self.lock().sessions.resume_ids.contains_key(resume_id);
            if !known {
                // The session may live on another process, or be on its
                // way here: claimed (`cluster/handover.rs`); a holder of the
                // previous release hands it over at once, adopted here.
                if let Some(h) = self.claim_session(resume_id).await {
                    if let Some(r) = &h.room {
                        let key = super::room::RoomKey {
                            backend: h.backend.as_str().into(),
                            room: r.as_str().into(),
                        };
                        self.prepare_room(&key).await;
                    }
                    let bus = {
                        let mut st = self.lock();
                        if let Some(sid) = self.adopt_session(&mut st, h, conn.clone()) {
                            // Detached again: `resume` attaches and flushes in order.
                            if let Some(s) = st.sessions.map.get_mut(&sid) {
                                s.conn = None;
                                s.queue_bytes = s.queue.iter().map(|f| f.len()).sum();
                                s.carried = (0, 0);
                            }
                        }
                        st.bus.clone()
                    };
                    // Its user's subject is active before the answer.
                    bus.flush().await;
                }
            }
            return self.resume(conn, id, &hello.version, resume_id);
        }
        let Some(auth) = hello.auth else {
            return Err(invalid_format("auth missing"));
        };
        let Some(params) = auth.params.filter(|p| p.get() != "null") else {
            return Err(invalid_format("params missing"));
        };
        let identity = match auth.kind {
            AuthKind::Client => {
                let (backend, base, url) = self.backend_of(&auth.url)?;
                if hello.version == "1.0" {
                    self.auth_v1(backend, base, &url, &params).await?
                } else {
                    self.auth_v2(backend, base, &url, &params, false).await?
                }
            }
            AuthKind::Federation => {
                // Another signaling server, for a user of its Nextcloud:
                // verified with the key of the Nextcloud the URL names,
                // which must be one of ours.
                if hello.version != "2.0" {
                    return Err(invalid_format("federation needs hello 2.0"));
                }
                let (backend, base, url) = self.backend_of(&auth.url)?;
                self.auth_v2(backend, base, &url, &params, true).await?
            }
            AuthKind::Internal => self.auth_internal(&params)?,
            AuthKind::Unknown(_) => {
                return Err(ProtocolError::new(
                    error::INVALID_CLIENT_TYPE,
                    "The client type is not supported.",
                ))
            }
        };
        self.register(conn, id, &hello.version, hello.features, identity)
            .await
    }

    /// The configured backend a hello's `auth.url` selects, its base URL,
    /// and the URL requests for the client go to: the configured base plus
    /// Talk's fixed path, never the client's URL itself.
    fn backend_of(&self, auth_url: &str) -> Result<(Arc<Backend>, String, String), ProtocolError> {
        if auth_url.is_empty() {
            return Err(invalid_format("url missing"));
        }
        // What is no URL at all is a format error, as for the Go server
        // (which parses it as a request URI: absolute, or a path).
        if !auth_url.starts_with('/') && reqwest::Url::parse(auth_url).is_err() {
            return Err(invalid_format("url is not a URL"));
        }
        let Some((backend, base)) = self.registry().for_url(auth_url) else {
            return Err(ProtocolError::new(
                error::INVALID_BACKEND,
                "The backend URL is not supported.",
            ));
        };
        let url = signaling_url(&base, auth_url);
        Ok((backend, base, url))
    }

    async fn auth_v1(
        &self,
        backend: Arc<Backend>,
        base: String,
        url: &str,
        params: &RawValue,
    ) -> Result<Identity, ProtocolError> {
        let req = AuthRequest {
            version: "1.0",
            params,
        };
        let resp = self
            .client
            .post(url, &base, &backend.secret, "auth", &req)
            .await
            .map_err(|e| {
                tracing::warn!(url = %crate::logsafe::Url(url), "auth request failed: {e}");
                backend_error(e, error::AUTH_FAILED)
            })?;
        if resp.kind == BackendResponseKind::Error {
            return Err(match resp.error {
                Some(e) if !e.code.is_empty() => ProtocolError {
                    code: e.code,
                    message: e.message,
                    details: e.details,
                },
                _ => ProtocolError::new(error::AUTH_FAILED, "The user could not be authenticated."),
            });
        }
        let Some(auth) = resp.auth.filter(|_| resp.kind == BackendResponseKind::Auth) else {
            return Err(ProtocolError::new(
                error::AUTH_FAILED,
                "The user could not be authenticated.",
            ));
        };
        Ok(Identity {
            kind: SessionKind::Client,
            backend,
            backend_base: base,
            backend_url: url.to_string(),
            user_id: auth.userid.filter(|u| !u.is_empty()),
            user: auth.user,
            federated: None,
        })
    }

    /// A federated hello: the hosting Nextcloud must support federation.
    async fn check_federation_supported(&self, base: &str) -> Result<(), ProtocolError> {
        let caps = self
            .caps
            .get(&self.client, base, false)
            .await
            .map_err(|e| backend_error(e, error::PROCESSING_FAILED))?;
        if !caps.features.iter().any(|f| f == "federation-v2") {
            return Err(ProtocolError::new(
                error::FEDERATION_UNSUPPORTED,
                "The target server does not support federation.",
            ));
        }
        Ok(())
    }

    /// The claims of a hello v2 token, verified with the key from the
    /// capabilities of `base`; they are fetched again, once, when the key
    /// is missing or seems to have rotated.
    async fn verify_token(
        &self,
        backend: &Backend,
        base: &str,
        token: &str,
        now: i64,
    ) -> Result<token::HelloV2Claims, ProtocolError> {
        let mut refreshed = false;
        loop {
            let caps = self
                .caps
                .get(&self.client, base, refreshed)
                .await
                .map_err(|e| {
                    tracing::warn!(backend = %backend.id, "capabilities request failed: {e}");
                    backend_error(e, error::AUTH_FAILED)
                })?;
            let Some(key) = caps.token_key else {
                if !refreshed {
                    refreshed = true;
                    continue;
                }
                return Err(ProtocolError::new(
                    error::INVALID_TOKEN,
                    "No key found for issuer.",
                ));
            };
            match token::verify(token, &key, now) {
                Ok(c) => return Ok(c),
                Err(TokenError::Expired) => {
                    return Err(ProtocolError::new(
                        error::TOKEN_EXPIRED,
                        "The token is expired.",
                    ))
                }
                Err(TokenError::NotValidYet) => {
                    return Err(ProtocolError::new(
                        error::TOKEN_NOT_VALID_YET,
                        "The token is not valid yet.",
                    ))
                }
                Err(TokenError::BadSignature | TokenError::BadKey(_)) if !refreshed => {
                    // The key may have rotated (or changed type) since it
                    // was cached: fetch the capabilities again, once.
                    refreshed = true;
                }
                Err(e) => return Err(ProtocolError::new(error::INVALID_TOKEN, e.to_string())),
            }
        }
    }

    async fn auth_v2(
        &self,
        backend: Arc<Backend>,
        base: String,
        url: &str,
        params: &RawValue,
        federation: bool,
    ) -> Result<Identity, ProtocolError> {
        let p: HelloV2Params = serde_json::from_str(params.get())
            .map_err(|_| invalid_format("invalid hello v2 params"))?;
        if p.token.is_empty() {
            return Err(invalid_format("token missing"));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if federation {
            self.check_federation_supported(&base).await?;
        }
        let claims = self.verify_token(&backend, &base, &p.token, now).await?;
        let actor = claims.userdata.as_ref().and_then(|u| {
            match (u.get("actorType")?.as_str(), u.get("actorId")?.as_str()) {
                (Some(t), Some(i)) if !t.is_empty() && !i.is_empty() => {
                    Some((t.to_string(), i.to_string()))
                }
                _ => None,
            }
        });
        let user = match claims.userdata {
            Some(v) if !v.is_null() => serde_json::value::to_raw_value(&v).ok(),
            _ => None,
        };
        Ok(Identity {
            kind: SessionKind::Client,
            backend,
            backend_base: base,
            backend_url: url.to_string(),
            user_id: claims.sub.filter(|s| !s.is_empty()),
            user,
            federated: federation.then_some(super::session::Federated { actor }),
        })
    }

    fn auth_internal(&self, params: &RawValue) -> Result<Identity, ProtocolError> {
        let p: InternalAuthParams = serde_json::from_str(params.get())
            .map_err(|_| invalid_format("invalid internal params"))?;
        if p.random.len() < 32 {
            return Err(invalid_format("random too short"));
        }
        if p.token.is_empty() {
            return Err(invalid_format("token missing"));
        }
        let secret = self.config.internal_secret.as_bytes();
        if secret.is_empty() || !checksum::verify(secret, p.random.as_bytes(), b"", &p.token) {
            return Err(ProtocolError::new(
                error::INVALID_TOKEN,
                "The token could not be authenticated.",
            ));
        }
        let found = if p.backend.is_empty() {
            self.registry().single()
        } else {
            self.registry().for_url(&p.backend)
        };
        let Some((backend, base)) = found else {
            return Err(ProtocolError::new(
                error::INVALID_BACKEND,
                "The backend URL is not supported.",
            ));
        };
        let url = signaling_url(&base, "");
        Ok(Identity {
            kind: SessionKind::Internal,
            backend,
            backend_base: base,
            backend_url: url,
            user_id: None,
            user: None,
            federated: None,
        })
    }

    /// The `hello` answer of a new session.
    fn hello_reply(
        &self,
        id: Option<&str>,
        version: &str,
        sid: &str,
        resume_id: &str,
        ident: &Identity,
    ) -> Frame {
        let internal = ident.kind != SessionKind::Client;
        frame(
            id,
            "hello",
            &HelloReply {
                sessionid: sid,
                resumeid: resume_id,
                userid: ident.user_id.as_deref().unwrap_or(""),
                version,
                server: ServerInfo {
                    version: VERSION,
                    features: super::features(internal, self.mcu_announced()),
                },
            },
        )
    }

    /// A backend's `sessionlimit` (client sessions on all processes).
    fn within_session_limit(&self, st: &State, backend: &Backend) -> Result<(), ProtocolError> {
        if backend.session_limit == 0 {
            return Ok(());
        }
        let count = st.sessions.counts.get(&backend.id).copied().unwrap_or(0)
            + st.cluster.remote_session_count(&backend.id);
        if count < backend.session_limit {
            return Ok(());
        }
        self.metrics
            .go
            .session_limit_exceeded
            .with_label_values(&[&*backend.id])
            .inc();
        Err(ProtocolError::new(
            error::SESSION_LIMIT_EXCEEDED,
            "Too many sessions connected for this backend.",
        ))
    }

    /// Registers a new session and answers its hello (with other
    /// processes, the first session of a user once the user's subject is
    /// active: `cluster/user_subject.rs`).
    pub(super) async fn register(
        &self,
        conn: &Arc<Outbox>,
        id: Option<&str>,
        version: &str,
        features: Vec<String>,
        ident: Identity,
    ) -> Result<HelloOk, ProtocolError> {
        let (ok, waiting) = self.insert_session(conn, id, version, features, ident)?;
        if let Some(reply) = waiting {
            self.answer_once_subscribed(conn, &ok.sid, reply).await?;
        }
        Ok(ok)
    }

    /// The session of a hello: registered, answered, or detached with its
    /// answer returned when it waits for its user's subject.
    fn insert_session(
        &self,
        conn: &Arc<Outbox>,
        id: Option<&str>,
        version: &str,
        features: Vec<String>,
        ident: Identity,
    ) -> Result<(HelloOk, Option<Frame>), ProtocolError> {
        let pid = self.lock().bus.pid().to_string();
        let sid: Arc<str> = format!("{pid}{}", new_id()).into();
        let resume_id: Arc<str> = format!("{pid}{}", new_id()).into();
        let is_client = ident.kind == SessionKind::Client;
        let reply = self.hello_reply(id, version, &sid, &resume_id, &ident);
        let must_join_room = is_client && ident.user_id.is_none();
        let backend_id = ident.backend.id.clone();
        let backend = ident.backend.clone();
        let kind_label = if ident.federated.is_some() {
            "federation"
        } else if is_client {
            "client"
        } else {
            "internal"
        };
        let mut st = self.lock();
        if is_client {
            self.within_session_limit(&st, &ident.backend)?;
        }
        let in_call = if ident.kind == SessionKind::Internal
            && !features.iter().any(|f| f == "internal-incall")
        {
            flags::IN_CALL | flags::WITH_AUDIO
        } else {
            0
        };
        // The first session of a user here is answered once the user's
        // subject is active: until then it is detached (frames queue).
        let subscribing = st.subscribes_user(&ident);
        let (backend_base, backend_url) = st
            .sessions
            .shared_urls(ident.backend_base, ident.backend_url);
        st.sessions.insert(Session {
            id: sid.clone(),
            resume_id: Some(resume_id),
            kind: ident.kind,
            backend: ident.backend,
            backend_base,
            backend_url,
            user_id: ident.user_id.map(Arc::from),
            user: ident.user.map(Arc::from),
            features,
            room: None,
            room_session_id: None,
            permissions: None,
            conn: (!subscribing).then(|| conn.clone()),
            queue: VecDeque::new(),
            queue_bytes: 0,
            carried: (0, 0),
            in_call,
            flags: 0,
            virtuals: HashMap::new(),
            fed_link: None,
            client_ip: None,
            country: None,
            mcu_tasks: None,
            federated: ident.federated.map(Box::new),
        });
        let reply = match subscribing {
            true => Some(reply),
            false => {
                conn.push(reply);
                None
            }
        };
        drop(st);
        self.registry().remember(&backend);
        self.metrics
            .hub_sessions_total
            .with_label_values(&[backend_id.as_ref(), kind_label])
            .inc();
        Ok((
            HelloOk {
                sid,
                backend: backend_id,
                resumed: false,
                must_join_room,
            },
            reply,
        ))
    }

    fn resume(
        &self,
        conn: &Arc<Outbox>,
        id: Option<&str>,
        version: &str,
        resume_id: &str,
    ) -> Result<HelloOk, ProtocolError> {
        let no_such_session =
            || ProtocolError::new(error::NO_SUCH_SESSION, "The session id is no longer valid.");
        let mut st = self.lock();
        let Some(sid) = st.sessions.resume_ids.get(resume_id).cloned() else {
            self.metrics.resume_failed.inc();
            return Err(no_such_session());
        };
        let Some(s) = st.sessions.map.get_mut(&sid) else {
            self.metrics.resume_failed.inc();
            return Err(no_such_session());
        };
        let server_features = super::features(s.kind != SessionKind::Client, self.mcu_announced());
        let reply = frame(
            id,
            "hello",
            &HelloReply {
                sessionid: &sid,
                resumeid: resume_id,
                userid: s.user_id.as_deref().unwrap_or(""),
                version,
                server: ServerInfo {
                    version: VERSION,
                    features: server_features,
                },
            },
        );
        let mut pending = std::collections::VecDeque::new();
        if let Some(old) = s.conn.take() {
            // The session moves to the new connection with what the old
            // one's writer had not taken yet; the old one is told.
            pending = old.take_pending();
            let bye = frame(
                None,
                "bye",
                &crate::api::server::Bye {
                    reason: Some("session_resumed"),
                },
            );
            old.push(bye);
            old.close(CloseReason::SessionResumed);
        }
        conn.push(reply);
        // Attach and flush as one step under the lock: queued messages go out
        // before anything newer.
        for f in pending.into_iter().chain(s.queue.drain(..)) {
            conn.push_force(f);
        }
        s.queue_bytes = 0;
        s.carried = (0, 0);
        s.conn = Some(conn.clone());
        let must_join_room =
            s.kind == SessionKind::Client && s.user_id.is_none() && s.room.is_none();
        let (backend, kind) = (s.backend.id.clone(), s.kind.label(s.federated.is_some()));
        st.sessions.disconnected.remove(&sid);
        self.metrics
            .go
            .resume_total
            .with_label_values(&[&*backend, kind])
            .inc();
        Ok(HelloOk {
            sid,
            backend,
            resumed: true,
            must_join_room,
        })
    }
}
