//! Talking to Nextcloud: checksums, the HTTP client, the allowed backends,
//! capabilities and hello v2 tokens.

pub mod capabilities;
pub mod checksum;
pub mod client;
pub mod etcd;
pub mod host_slots;
pub mod registry;
pub mod token;
