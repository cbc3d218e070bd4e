//! Wire types only (serde), no logic.

pub mod backend;
pub mod client;
pub mod error;
pub mod server;
