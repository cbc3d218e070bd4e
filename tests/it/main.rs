//! The integration tests: one binary (one link, one build of the shared
//! support), one module per area. Every test talks to the server over real
//! sockets: in-process servers (`support::TestServer`) or the server binary
//! as a child process (`support::ServerProcess`), with a fake Nextcloud,
//! and a `nats-server` or Janus of the test's own where needed.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

mod attacks;
mod backend_api;
mod backend_parity;
mod check;
mod cluster;
mod drain;
mod etcd_backends;
mod features;
mod federation;
mod federation_handback;
mod federation_limits;
mod federation_restart;
mod forwarded;
mod frames;
mod fuzz_parsers;
mod geoip;
mod go_parity;
mod hello;
mod hide_names;
mod janus_events;
mod logs;
mod mcu;
mod mcu_media;
mod mcu_proxy;
mod mcu_proxy_go;
mod mcu_reload;
mod mcu_restart;
mod mcu_rolling;
mod mcu_sdp;
mod metrics;
mod package;
mod parity_protocol;
mod proxy;
mod proxy_events;
mod proxy_limits;
mod proxy_takeover;
mod reload;
mod restart;
mod robustness;
mod rooms;
mod security;
mod startup;
mod systemd;
mod talk_client;
mod throttle;
mod tls;
mod turn;
