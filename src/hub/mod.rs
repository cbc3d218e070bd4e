//! The in-memory state and routing: sessions, rooms, users, and delivery of
//! frames to them. One `std::sync::Mutex` guards the state: no critical
//! section awaits (requests to Nextcloud are awaited before or after it, or
//! recorded as effects and sent when it is released), and every frame is
//! serialized before the lock is taken or once inside it. See
//! ARCHITECTURE.md for the parts and how a message flows.

pub mod backend_api;
mod chat;
mod cluster;
mod delivery;
mod dialout;
mod drain;
mod effects;
mod etcd_backends;
mod features;
pub use features::{
    all_features, features, header_features, CLIENT_FEATURES, INTERNAL_FEATURES, MCU_FEATURES,
};
pub(crate) mod federation;
/// The federation rewrite of frames, for the fuzz target.
pub use federation::Rewrite as FederationRewrite;
mod handle;
mod hello;
mod hide_names;
pub use hello::HelloOk;
#[cfg(test)]
mod hot_path_bench;
mod internal;
mod janus_budget;
mod lifecycle;
mod mcu;
mod mcu_cluster;
mod mcu_data;
mod messages;
pub mod outbox;
mod participants;
pub mod room;
mod rooms;
pub mod session;
mod sessions;
mod statefile;
mod tasks;
#[cfg(test)]
mod tests;
pub mod throttle;
mod transient;
mod virtual_backend;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

use tokio::sync::Notify;

use crate::api::error::{self, ProtocolError};
use crate::api::server::{frame, Frame, ServerInfo};
use crate::backend::capabilities::CapabilitiesCache;
use crate::backend::client::BackendClient;
use crate::backend::registry::BackendRegistry;
use crate::bus::Bus;
use crate::config::Config;
use crate::metrics::Metrics;
use effects::{Effect, Nextcloud};
use outbox::Outbox;
use room::{RoomKey, Rooms};
use session::SessionKind;
use sessions::Sessions;

/// Server version reported in `welcome`, hello and `/api/v1/welcome`.
pub const VERSION: &str = concat!("spreed-signaling-rs/", env!("CARGO_PKG_VERSION"));

/// Everything guarded by the hub lock: the owned parts, each keeping its
/// own invariants ([`Sessions`], [`Rooms`], [`cluster::Cluster`]), and the
/// handles the rules need while they hold it.
pub(crate) struct State {
    pub sessions: Sessions,
    pub rooms: Rooms,
    /// What this process knows of the others.
    pub cluster: cluster::Cluster,
    /// `[transient]` limits (checked again when a value is applied).
    pub transient_limits: crate::config::TransientLimits,
    /// Refusals by a configured limit (`signaling_limits_refused_total`).
    pub refused: prometheus::IntCounterVec,
    /// Call counters and the rest of the Go server's metrics.
    pub go: crate::metrics::GoMetrics,
    pub client: BackendClient,
    /// The bus to other processes (a no-op in a single process).
    pub bus: Arc<dyn Bus>,
    /// The MCU, told when sessions leave or lose permissions.
    pub mcu: Option<Arc<crate::mcu::Mcu>>,
    /// Requests to Nextcloud decided in the current critical section, sent
    /// when the lock is released ([`StateGuard`]).
    pub effects: Vec<Effect>,
    /// The hub itself (federation links of sessions restored or taken
    /// over are started from the state).
    pub hub: std::sync::Weak<Hub>,
}

/// The hub lock, held. When it is released, the sessions whose resume
/// queue overflowed during the critical section are ended (with a `bye`,
/// leaving their room), and then, with the lock released, the effects the
/// critical section recorded are carried out: no mutation has to remember
/// either, and none can forget.
pub(crate) struct StateGuard<'a>(Option<MutexGuard<'a, State>>);

impl std::ops::Deref for StateGuard<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        self.0
            .as_ref()
            .expect("the guard holds the lock until dropped")
    }
}

impl std::ops::DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        self.0
            .as_mut()
            .expect("the guard holds the lock until dropped")
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        let Some(mut st) = self.0.take() else {
            return;
        };
        st.reap();
        if st.effects.is_empty() {
            return;
        }
        let effects = std::mem::take(&mut st.effects);
        let client = st.client.clone();
        drop(st);
        for e in effects {
            e.run(&client);
        }
    }
}

/// A backend dialout request waiting for an internal client's answer.
type DialoutWaiter = (
    Arc<str>,
    tokio::sync::oneshot::Sender<crate::api::client::DialoutInternal>,
);

/// The hub: shared by every connection and the backend API.
pub struct Hub {
    /// The configuration the server was started with.
    pub config: Arc<Config>,
    /// Allowed backends (replaced on reload).
    registry: Arc<std::sync::RwLock<Arc<BackendRegistry>>>,
    /// HTTP client for Nextcloud.
    pub client: BackendClient,
    /// Capabilities of Nextcloud instances.
    pub caps: CapabilitiesCache,
    /// Prometheus metrics.
    pub metrics: Metrics,
    state: Mutex<State>,
    /// Wakes the timer task when an earlier deadline was added.
    timer: Notify,
    next_conn_id: AtomicU64,
    /// When the gauges were last computed.
    gauges_at: Mutex<Option<Instant>>,
    /// Failed hellos and resumes per client address.
    throttle: throttle::Throttle,
    welcome: Frame,
    dialouts: Mutex<HashMap<String, DialoutWaiter>>,
    /// TLS of connections to remote signaling servers (federation).
    federation_tls: Arc<rustls::ClientConfig>,
    /// Live federation links (counted by the links themselves): while
    /// none exist, a client message needs no look-up to know that it is
    /// not for a remote server.
    fed_links: Arc<std::sync::atomic::AtomicUsize>,
    /// Federation dials started by clients, per session and address.
    fed_dials: federation::DialLimits,
    /// Resolves remote signaling servers' names (not on the blocking pool).
    federation_resolver: Option<hickory_resolver::TokioResolver>,
    /// MCU slots of other processes' sessions (their `requestoffer`s).
    remote_mcu: Mutex<HashMap<Arc<str>, Arc<mcu::McuSlots>>>,
    /// The bus (also in the state; here for checks without the lock).
    bus: Arc<dyn Bus>,
    /// Senders held back across processes (`cluster/pacing.rs`).
    pacing: Arc<cluster::Pacing>,
    /// The MCU (Janus), when `[mcu]` is configured; set at start.
    mcu: std::sync::OnceLock<Arc<crate::mcu::Mcu>>,
    /// The publishers and subscribers of the state file, until the MCU
    /// starts and takes them.
    restored_mcu: Mutex<Option<crate::mcu::SavedMcu>>,
    /// `[app]` and `[stats]` as last (re)loaded.
    live: crate::config::Live,
    /// Open connections per client address (listeners and upgrades).
    pub conn_counts: crate::conn_counts::ConnCounts,
    /// Set by a drain (SIGUSR1); never cleared.
    draining: tokio::sync::watch::Sender<bool>,
    /// `backendtype = etcd`: the backends last read from etcd, and the
    /// state of the watch (`etcd_backends.rs`).
    etcd: etcd_backends::EtcdBackends,
    /// Client countries (`[geoip]`); its database loads in `Server::start`.
    pub geoip: Arc<crate::geoip::GeoIp>,
}

impl Hub {
    /// Builds the hub from a validated config.
    pub fn new(
        config: Arc<Config>,
        metrics: Metrics,
        bus: Arc<dyn Bus>,
    ) -> anyhow::Result<Arc<Hub>> {
        let mcu = config.mcu.is_some();
        let features = header_features(mcu);
        let client = BackendClient::new(
            config.backend.timeout,
            config.backend.connections_per_host,
            config.backend.skip_verify,
            features,
        )?
        .with_limits(
            config.backend.max_concurrent_requests,
            config.backend.max_response_size,
            metrics.refused.clone(),
        );
        let registry = Arc::new(std::sync::RwLock::new(Arc::new(BackendRegistry::new(
            &config.backend,
        ))));
        let lookup = registry.clone();
        let client = client.with_stats(
            metrics.go.clone(),
            Arc::new(move |url: &str| {
                let reg = lookup.read().unwrap_or_else(|p| p.into_inner()).clone();
                // With `allowall`, an origin is a label only once it was
                // remembered (it proved the secret): others are "unknown",
                // so requests of nobody cannot add metric series.
                reg.for_url(url)
                    .map(|(b, _)| b.id.clone())
                    .filter(|id| reg.by_id(id).is_some())
            }),
        );
        let welcome = frame(
            None,
            "welcome",
            &ServerInfo {
                version: VERSION,
                features: &all_features(mcu),
            },
        );
        let federation_tls = federation::tls_config(config.federation.skip_verify)?;
        let federation_resolver = federation::resolver(&config.federation);
        let throttle = throttle::Throttle::new(config.brute_force.clone());
        let live = Arc::new(arc_swap::ArcSwap::from_pointee(
            crate::config::LiveSettings::of(&config),
        ));
        let geoip = crate::geoip::GeoIp::new(&config.geoip).map_err(anyhow::Error::msg)?;
        Ok(Arc::new_cyclic(|me| Hub {
            registry,
            state: Mutex::new(State {
                sessions: Sessions {
                    interest: crate::bus::Interest::of(&bus),
                    ..Sessions::new(config.limits.clone(), metrics.slow_clients.clone())
                },
                rooms: Rooms::with_interest(crate::bus::Interest::of(&bus)),
                cluster: cluster::Cluster::default(),
                transient_limits: config.transient.clone(),
                refused: metrics.refused.clone(),
                go: metrics.go.clone(),
                client: client.clone(),
                bus: bus.clone(),
                mcu: None,
                effects: Vec::new(),
                hub: me.clone(),
            }),
            client,
            caps: CapabilitiesCache::default(),
            metrics,
            config,
            timer: Notify::new(),
            next_conn_id: AtomicU64::new(1),
            gauges_at: Mutex::new(None),
            throttle,
            welcome,
            dialouts: Mutex::new(HashMap::new()),
            federation_tls,
            fed_links: Arc::default(),
            fed_dials: Default::default(),
            federation_resolver,
            remote_mcu: Mutex::new(HashMap::new()),
            bus,
            pacing: Arc::default(),
            mcu: std::sync::OnceLock::new(),
            restored_mcu: Mutex::new(None),
            live,
            conn_counts: Default::default(),
            draining: tokio::sync::watch::Sender::new(false),
            etcd: Default::default(),
            geoip,
        }))
    }

    /// Takes the hub lock. Releasing it ends the sessions whose resume
    /// queue overflowed meanwhile (see [`StateGuard`]).
    pub(crate) fn lock(&self) -> StateGuard<'_> {
        StateGuard(Some(self.state.lock().unwrap_or_else(|p| p.into_inner())))
    }

    /// Runs `f` on the state under the lock.
    pub(crate) fn mutate<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.lock())
    }

    /// The allowed backends as currently configured.
    pub fn registry(&self) -> Arc<BackendRegistry> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a reloaded configuration's backends (URLs, secrets, session
    /// limits), `[app]` and `[stats]` without dropping sessions; existing
    /// sessions keep the backend they authenticated with. Other settings
    /// need a restart (see [`Config::restart_needed`]).
    pub fn reload(&self, config: &Config) {
        if !self.reload_etcd_backends(config) {
            let new = Arc::new(BackendRegistry::new(&config.backend));
            *self.registry.write().unwrap_or_else(|p| p.into_inner()) = new;
            tracing::info!(
                backends = config.backend.backends.len(),
                "backends reloaded"
            );
        }
        let live = Arc::new(crate::config::LiveSettings::of(config));
        self.live.store(live.clone());
        tracing::info!(
            trustedproxies = %live.app.trusted_proxies,
            stats_allowed_ips = %live.stats.allowed_ips,
            "[app] trustedproxies and [stats] allowed_ips reloaded"
        );
        self.geoip.set_overrides(&config.geoip);
        tracing::info!(
            overrides = config.geoip.overrides.len(),
            continent_overrides = config.geoip.continents.len(),
            "[geoip-overrides] and [continent-overrides] reloaded"
        );
        if let (Some(mcu), Some(new)) = (self.mcu(), &config.mcu) {
            if mcu.config().url == new.url {
                mcu.reload(new);
                tracing::info!(
                    maxstreambitrate = new.max_stream_bitrate,
                    maxscreenbitrate = new.max_screen_bitrate,
                    allowedcandidates = %new.allowed_candidates,
                    blockedcandidates = %new.blocked_candidates,
                    timeout = ?new.timeout,
                    "[mcu] bitrates, candidate lists and timeout reloaded"
                );
            }
        }
    }

    /// `[app]` and `[stats]` as currently configured.
    pub fn live(&self) -> Arc<crate::config::LiveSettings> {
        self.live.load_full()
    }

    /// The shared handle of the live settings (for the listeners).
    pub fn live_handle(&self) -> crate::config::Live {
        self.live.clone()
    }

    /// A new outbox for a connection that just upgraded.
    pub fn new_outbox(&self) -> Arc<Outbox> {
        let id = self.next_conn_id.fetch_add(1, Ordering::Relaxed);
        Arc::new(Outbox::new(id, self.config.limits.outbox_bytes))
    }

    /// The `welcome` frame sent right after connecting.
    pub fn welcome_frame(&self) -> Frame {
        self.welcome.clone()
    }

    /// Waits (at most the backend timeout) for the requests to Nextcloud
    /// that nobody waits for (sessions' leaves) before the process exits.
    pub async fn finish_backend_requests(&self) {
        self.client.finish().await;
    }

    /// True when an MCU (Janus) is configured: its features are announced
    /// from start-up on, also while Janus is away (as the Go server), so a
    /// client saying hello during a Janus restart still uses the MCU once
    /// it is back.
    pub fn mcu_announced(&self) -> bool {
        self.config.mcu.is_some()
    }

    /// `GET /api/v1/serverinfo` (as the Go server): version, features, the
    /// internal clients that can dial out, and the bus.
    pub fn server_info(&self) -> serde_json::Value {
        let st = self.lock();
        let dialout: Vec<serde_json::Value> = st
            .sessions
            .map
            .values()
            .filter(|s| s.kind == SessionKind::Internal && s.has_feature("start-dialout"))
            .map(|s| {
                serde_json::json!({
                    "sessionid": &*s.id,
                    "connected": s.conn.is_some(),
                    "features": &s.features,
                })
            })
            .collect();
        let mut info = serde_json::json!({
            "version": VERSION,
            "features": features(false, self.mcu_announced()),
        });
        if !dialout.is_empty() {
            info["dialout"] = serde_json::json!(dialout);
        }
        if let Some(m) = self.mcu.get() {
            info["sfu"] = m.server_info();
        }
        if st.bus.clustered() {
            // Only scheme, host and port: credentials never leave.
            let urls: Vec<String> = self
                .config
                .nats_urls
                .iter()
                .map(|u| match reqwest::Url::parse(u) {
                    Ok(p) => format!(
                        "{}://{}:{}",
                        p.scheme(),
                        p.host_str().unwrap_or(""),
                        p.port().unwrap_or(4222)
                    ),
                    Err(_) => "(invalid)".to_string(),
                })
                .collect();
            info["nats"] = serde_json::json!({"urls": urls, "connected": st.bus.connected()});
        }
        if let Some(etcd) = self.etcd.status() {
            info["etcd"] = etcd.server_info();
        }
        info
    }

    /// Number of sessions (all kinds).
    pub fn session_count(&self) -> usize {
        self.lock().sessions.map.len()
    }

    /// Number of other processes this one currently hears from.
    pub fn known_processes(&self) -> usize {
        self.lock().cluster.processes.len()
    }

    /// Client sessions of a backend on other processes, as last announced.
    pub fn remote_sessions(&self, backend: &str) -> u64 {
        self.lock().cluster.remote_session_count(backend)
    }

    /// [`Hub::update_gauges`], unless it ran less than a second ago.
    pub fn update_gauges_throttled(&self) {
        let now = Instant::now();
        let mut last = self.gauges_at.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
            return;
        }
        *last = Some(now);
        self.set_gauges();
    }

    /// Counts for `/api/v1/stats` (like the Go server's): constant time,
    /// no walk over sessions or rooms.
    pub fn stats(&self) -> serde_json::Value {
        let st = self.lock();
        let sessions = st.sessions.map.len();
        let disconnected = st.sessions.disconnected.len();
        // The Go server's keys at the top, this server's own under `hub`.
        let mut v = serde_json::json!({
            "sessions": sessions,
            "rooms": st.rooms.len(),
            "hub": {
                "sessions": sessions,
                "disconnected": disconnected,
                "rooms": st.rooms.len(),
                "processes": st.cluster.processes.len() + 1,
                "draining": self.draining(),
            }
        });
        drop(st);
        if let Some(m) = self.mcu.get() {
            v["mcu"] = m.stats();
        }
        v
    }

    /// Sets the gauges that describe the current state (at scrape time):
    /// the Go server's names and labels, so its dashboards keep working.
    pub fn update_gauges(&self) {
        let _one_at_a_time = self.gauges_at.lock().unwrap_or_else(|p| p.into_inner());
        self.set_gauges();
    }

    /// Session and room counts are kept as they change; only the per-room
    /// gauges need a look at each room, a few rooms per lock so that a
    /// scrape never holds up message delivery for long.
    fn set_gauges(&self) {
        const ROOMS_PER_LOCK: usize = 128;
        let (per_label, per_backend, keys) = {
            let st = self.lock();
            (
                st.sessions.per_label.clone(),
                st.rooms.per_backend().clone(),
                st.rooms.keys().cloned().collect::<Vec<_>>(),
            )
        };
        // (room, clienttype) -> (sessions, in the call)
        let mut per_room: Vec<(RoomKey, &'static str, i64, i64)> = Vec::new();
        for chunk in keys.chunks(ROOMS_PER_LOCK) {
            let st = self.lock();
            for key in chunk {
                let Some(room) = st.rooms.get(key) else {
                    continue;
                };
                let mut counts: Vec<(&'static str, i64, i64)> = Vec::new();
                for s in room.members.iter().filter_map(|m| st.sessions.map.get(m)) {
                    if s.room.as_ref() != Some(key) {
                        continue;
                    }
                    let kind = s.kind.label(s.federated.is_some());
                    let call = i64::from(st.in_call(s));
                    match counts.iter_mut().find(|c| c.0 == kind) {
                        Some(c) => {
                            c.1 += 1;
                            c.2 += call;
                        }
                        None => counts.push((kind, 1, call)),
                    }
                }
                per_room.extend(counts.into_iter().map(|(k, n, c)| (key.clone(), k, n, c)));
            }
        }
        if let Some(mcu) = self.mcu.get() {
            mcu.refresh_stream_gauges();
        }
        let m = &self.metrics;
        m.backend_current.set(self.registry().len() as i64);
        m.hub_sessions.reset();
        m.hub_rooms.reset();
        m.room_sessions.reset();
        m.go.session_limit.reset();
        m.go.call_sessions.reset();
        for b in self.registry().backends() {
            if b.session_limit > 0 {
                m.go.session_limit
                    .with_label_values(&[&*b.id])
                    .set(b.session_limit as i64);
            }
        }
        for ((backend, kind), n) in &per_label {
            m.hub_sessions
                .with_label_values(&[&**backend, kind])
                .set(*n);
        }
        for (backend, n) in &per_backend {
            m.hub_rooms.with_label_values(&[&**backend]).set(*n);
        }
        for (key, kind, n, calls) in &per_room {
            m.room_sessions
                .with_label_values(&[&*key.backend, kind, &*key.room])
                .set(*n);
            if *calls > 0 {
                m.go.call_sessions
                    .with_label_values(&[&*key.backend, &*key.room, kind])
                    .set(*calls);
            }
        }
    }

    /// Sessions waiting for a resume (their connection is gone).
    pub fn disconnected_sessions(&self) -> usize {
        self.lock().sessions.disconnected.len()
    }

    /// Transient values waiting for their TTL (all rooms).
    pub fn transient_timer_count(&self) -> usize {
        self.lock().rooms.timers.len()
    }

    /// Number of rooms.
    pub fn room_count(&self) -> usize {
        self.lock().rooms.len()
    }

    /// True if the session exists and is in a room.
    pub fn in_room(&self, sid: &str) -> bool {
        self.lock()
            .sessions
            .map
            .get(sid)
            .is_some_and(|s| s.room.is_some() || s.fed_link.as_ref().is_some_and(|l| l.joined()))
    }
}

/// True for an `inCall` value with the in-call bit (a number) or `true`.
pub(crate) fn in_call_flag(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::Number(n) => n
            .as_u64()
            .is_some_and(|f| f & u64::from(session::flags::IN_CALL) != 0),
        _ => false,
    }
}

/// Transient data key holding a session's own data (`transient-sessiondata`).
pub(crate) fn session_data_key(sid: &str) -> String {
    format!("sd:{sid}")
}

/// Waits until every outbox drained to half, for each only while its
/// connection makes progress ([`outbox::stall_wait`] of `wait`) and at
/// most `wait` in all; gives up on those that did not (counted in
/// `given_up`: nobody waits for them again until they drained).
pub(crate) async fn recipients_drained(
    outboxes: Vec<Arc<Outbox>>,
    wait: std::time::Duration,
    given_up: prometheus::IntCounter,
) {
    let deadline = tokio::time::Instant::now() + wait;
    let stall = outbox::stall_wait(wait);
    let drained = futures_util::future::join_all(
        outboxes
            .iter()
            .map(|o| o.drained_while_progressing(stall, deadline)),
    );
    let stalled = drained.await.into_iter().filter(|d| !d).count();
    if stalled > 0 {
        given_up.inc_by(stalled as u64);
        tracing::debug!(
            stalled,
            "recipients still congested, reading the sender again"
        );
    }
}

/// An `invalid_format` error.
pub fn invalid_format(msg: impl Into<String>) -> ProtocolError {
    ProtocolError::new(error::INVALID_FORMAT, msg)
}
