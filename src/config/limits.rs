//! Limits of client connections and sessions (`[clients]`, `[sessions]`
//! timers and queues), of transient data (`[transient]`) and of failed
//! hellos.

use std::time::Duration;

use super::goconf::IniFile;
use super::{secs, ConfigError};

/// Limits of transient data, per room.
#[derive(Debug, Clone, PartialEq)]
pub struct TransientLimits {
    /// Keys per room.
    pub max_keys: usize,
    /// Bytes of one key.
    pub max_key_length: usize,
    /// Bytes of one value (as JSON).
    pub max_value_size: usize,
    /// Bytes of all keys and values of a room (what a joiner's `initial` holds).
    pub max_room_bytes: usize,
    /// Longest TTL.
    pub max_ttl: Duration,
}

/// Throttling of failed hellos and resumes per client address.
#[derive(Debug, Clone, PartialEq)]
pub struct BruteForceLimits {
    /// Failures per address within `window` before `too_many_requests`
    /// (0 = no throttling).
    pub max_failures: u32,
    /// How long failures are remembered.
    pub window: Duration,
}

/// Timers and limits of client connections.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientLimits {
    /// A client must complete `hello` within this time after connecting.
    pub hello_timeout: Duration,
    /// An anonymous (guest) session must join a room within this time.
    pub room_timeout: Duration,
    /// A session whose connection dropped lives this long for resume.
    pub resume_timeout: Duration,
    /// Interval of WebSocket pings sent by the server.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) this long is closed.
    pub read_timeout: Duration,
    /// Largest accepted WebSocket message, in bytes.
    pub max_message_size: usize,
    /// Bytes queued for one connection before it is closed with 1013.
    pub outbox_bytes: usize,
    /// Messages kept for a disconnected session before it is ended.
    pub resume_queue_messages: usize,
    /// Bytes kept for a disconnected session before it is ended.
    pub resume_queue_bytes: usize,
    /// Interval of `ping` requests telling Nextcloud which sessions are alive.
    pub backend_ping_interval: Duration,
    /// Client messages read per second per connection, on average; a
    /// connection over its budget is not read until it refilled.
    pub messages_per_second: u32,
    /// Messages a connection may send at once before the rate applies.
    pub message_burst: u32,
    /// Client bytes read per second per connection, on average.
    pub bytes_per_second: u64,
    /// Bytes a connection may send at once before the rate applies.
    pub byte_burst: u64,
    /// Client messages the MCU handles (each a Janus request) per second
    /// per session, on average, apart from the message budget; a session
    /// over it is not read until it refilled.
    pub mcu_requests_per_second: u32,
    /// MCU messages a session may send at once before that rate applies.
    pub mcu_request_burst: u32,
    /// How long a sender is not read while a recipient its message left
    /// more than half full drains its send queue.
    pub slow_receiver_wait: Duration,
}

/// A count that must fit 32 bits: larger is refused naming the key (it
/// would otherwise wrap, 4294967297 running as 1).
fn get_u32(ini: &IniFile, section: &str, key: &str, default: u32) -> Result<u32, ConfigError> {
    let n = ini.get_u64(section, key, u64::from(default))?;
    u32::try_from(n)
        .map_err(|_| ConfigError(format!("[{section}] {key}: {n} is more than {}", u32::MAX)))
}

/// The timers and limits of client connections, checked against each other.
pub(super) fn parse_client_limits(ini: &IniFile) -> Result<ClientLimits, ConfigError> {
    let limits = ClientLimits {
        hello_timeout: secs(ini, "clients", "hellotimeout", 2)?,
        room_timeout: secs(ini, "clients", "roomtimeout", 10)?,
        resume_timeout: secs(ini, "sessions", "resumetimeout", 30)?,
        ping_interval: secs(ini, "clients", "pinginterval", 54)?,
        read_timeout: secs(ini, "clients", "readtimeout", 60)?,
        max_message_size: ini.get_u64("clients", "maxmessagesize", 65536)? as usize,
        outbox_bytes: ini.get_u64("clients", "outboxbytes", 1 << 20)? as usize,
        resume_queue_messages: ini.get_u64("sessions", "resumequeuemessages", 1000)? as usize,
        resume_queue_bytes: ini.get_u64("sessions", "resumequeuebytes", 1 << 20)? as usize,
        backend_ping_interval: secs(ini, "backend", "pinginterval", 10)?,
        messages_per_second: get_u32(ini, "clients", "messagespersecond", 500)?,
        message_burst: get_u32(ini, "clients", "messageburst", 5000)?,
        bytes_per_second: ini.get_u64("clients", "bytespersecond", 1 << 20)?,
        byte_burst: ini.get_u64("clients", "byteburst", 8 << 20)?,
        mcu_requests_per_second: get_u32(ini, "clients", "mcurequestspersecond", 100)?,
        mcu_request_burst: get_u32(ini, "clients", "mcurequestburst", 2000)?,
        slow_receiver_wait: secs(ini, "clients", "slowreceiverwait", 5)?,
    };
    check_client_limits(&limits)?;
    Ok(limits)
}

/// Refuses client limits that would make no sense together.
fn check_client_limits(limits: &ClientLimits) -> Result<(), ConfigError> {
    if limits.hello_timeout.is_zero() {
        return Err(ConfigError("[clients] hellotimeout: must be > 0".into()));
    }
    if limits.ping_interval.is_zero() || limits.read_timeout <= limits.ping_interval {
        return Err(ConfigError(
            "[clients] readtimeout: must be greater than pinginterval (> 0)".into(),
        ));
    }
    if limits.max_message_size < 1024 {
        return Err(ConfigError(
            "[clients] maxmessagesize: must be at least 1024".into(),
        ));
    }
    if limits.backend_ping_interval.is_zero() {
        return Err(ConfigError("[backend] pinginterval: must be > 0".into()));
    }
    if limits.messages_per_second == 0 {
        return Err(ConfigError(
            "[clients] messagespersecond: must be > 0".into(),
        ));
    }
    if limits.bytes_per_second == 0 {
        return Err(ConfigError("[clients] bytespersecond: must be > 0".into()));
    }
    if limits.mcu_requests_per_second == 0 {
        return Err(ConfigError(
            "[clients] mcurequestspersecond: must be > 0".into(),
        ));
    }
    if limits.mcu_request_burst == 0 {
        return Err(ConfigError("[clients] mcurequestburst: must be > 0".into()));
    }
    if limits.message_burst == 0 {
        return Err(ConfigError("[clients] messageburst: must be > 0".into()));
    }
    if limits.byte_burst < limits.max_message_size as u64 {
        return Err(ConfigError(
            "[clients] byteburst: must be at least maxmessagesize".into(),
        ));
    }
    Ok(())
}

/// `[transient]`: limits of a room's transient data, which must fit in a
/// joiner's send queue (`limits.outbox_bytes`).
pub(super) fn parse_transient(
    ini: &IniFile,
    limits: &ClientLimits,
) -> Result<TransientLimits, ConfigError> {
    let transient = TransientLimits {
        max_keys: ini.get_u64("transient", "maxkeys", 100)? as usize,
        max_key_length: ini.get_u64("transient", "maxkeylength", 256)? as usize,
        max_value_size: ini.get_u64("transient", "maxvaluesize", 16384)? as usize,
        max_room_bytes: ini.get_u64(
            "transient",
            "maxroombytes",
            (limits.outbox_bytes as u64 / 2).min(262144),
        )? as usize,
        max_ttl: secs(ini, "transient", "maxttl", 86400)?,
    };
    // A joiner receives all of a room's transient data at once: it must
    // fit in its send queue next to the room reply and join events.
    if transient.max_room_bytes > limits.outbox_bytes / 2 {
        return Err(ConfigError(format!(
            "[transient] maxroombytes: must be at most half of [clients] outboxbytes ({})",
            limits.outbox_bytes / 2
        )));
    }
    Ok(transient)
}

/// `[clients] maxfailedhellos` / `failedhellowindow`.
pub(super) fn parse_brute_force(ini: &IniFile) -> Result<BruteForceLimits, ConfigError> {
    Ok(BruteForceLimits {
        max_failures: ini.get_u64("clients", "maxfailedhellos", 10)? as u32,
        window: secs(ini, "clients", "failedhellowindow", 30)?,
    })
}
