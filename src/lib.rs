//! spreed-signaling: a standalone signaling server for Nextcloud Talk.
//!
//! Layout: `config` (server.conf), `api` (wire types), `backend` (talking to
//! Nextcloud), `hub` (state and routing), `http` (axum routes and the
//! WebSocket connection), `metrics`.

#![forbid(unsafe_code)]

pub mod api;
pub mod backend;
pub mod bus;
pub mod check;
pub mod config;
pub mod http;
pub mod hub;
pub mod logsafe;
pub mod mcu;
pub mod metrics;
pub mod sdnotify;
pub mod server;
