//! spreed-signaling: a standalone signaling server for Nextcloud Talk.
//!
//! Layout: `config` (server.conf), `api` (wire types), `backend` (talking to
//! Nextcloud), `hub` (state and routing), `bus` (other processes), `mcu`
//! (Janus), `geoip` (client countries), `http` (axum routes and the WebSocket connection),
//! `proxy` (our MCU proxy, `spreed-signaling proxy`),
//! `conn_counts` (open connections per address), `budget` (what a peer
//! may send before it is read more slowly), `metrics`, `server`
//! (start-up and shutdown). See ARCHITECTURE.md.

#[macro_use]
pub mod api;
pub mod backend;
pub mod budget;
pub mod bus;
pub mod check;
pub mod config;
pub mod conn_counts;
pub mod geoip;
pub mod http;
// The hub's timers run on tokio's clock (clippy.toml bans std's Instant).
#[deny(clippy::disallowed_types)]
pub mod hub;
pub mod logsafe;
pub mod mcu;
pub mod metrics;
pub mod proxy;
pub mod sdnotify;
pub mod server;
