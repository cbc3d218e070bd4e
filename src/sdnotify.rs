//! systemd's notify protocol (`Type=notify`): one datagram per state change
//! to the socket named by `NOTIFY_SOCKET`. Without that variable (not run by
//! systemd) every call does nothing. Small enough not to need a crate.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`) to systemd; errors are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().to_string();
    // An abstract socket is named with a leading '@'.
    let result = UnixDatagram::unbound().and_then(|sock| {
        if let Some(name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)
        } else {
            sock.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(e) = result {
        tracing::warn!("could not notify systemd ({state}): {e}");
    }
}

/// `RELOADING=1` (with `Type=notify`; `READY=1` follows when done).
pub fn reloading() {
    notify("RELOADING=1");
}

/// The watchdog interval systemd asks for (`WATCHDOG_USEC`), halved as
/// systemd recommends; None without a watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
