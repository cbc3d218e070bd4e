//! Where a federation link may connect, and how often a client may make
//! this server dial. The host comes from the client, so by default this
//! server refuses to be its port scanner: plain `ws://` targets, and
//! addresses in loopback, private, shared (CGNAT), link-local,
//! unique-local, unspecified, multicast and broadcast ranges, or on this
//! host itself, are refused unless `[federation] allowhttp` /
//! `allowips` open them. The name is resolved once and the TCP connection
//! goes to the very address that was checked (no second lookup that DNS
//! could answer differently).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{FederationConfig, IpList};

/// Dials a client may make this server start per minute: per session and
/// per client address. More are refused with `too_many_requests`.
pub(crate) const DIALS_PER_SESSION: u32 = 10;
pub(crate) const DIALS_PER_ADDRESS: u32 = 30;
const DIAL_WINDOW: Duration = Duration::from_secs(60);

/// Ranges no federation link dials by default (IPv4-mapped IPv6 addresses
/// count as their IPv4 address).
fn refused_ranges() -> &'static IpList {
    static RANGES: OnceLock<IpList> = OnceLock::new();
    RANGES.get_or_init(|| {
        IpList::parse(
            "0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16, \
             172.16.0.0/12, 192.168.0.0/16, 224.0.0.0/4, 240.0.0.0/4, \
             ::/128, ::1/128, fc00::/7, fe80::/10, ff00::/8",
        )
        .unwrap_or_default()
    })
}

/// True when `ip` may be dialled under `config`. An address of the NAT64
/// well-known prefix (`64:ff9b::/96`, RFC 6052) is the IPv4 address it
/// embeds: a host behind NAT64 reaches `64:ff9b::a00:1` as 10.0.0.1. The
/// local-use prefix `64:ff9b:1::/48` (RFC 8215) embeds as its translator
/// says, so it is refused unless allowed.
pub(crate) fn allowed(config: &FederationConfig, ip: IpAddr) -> bool {
    if config.allow_ips.contains(ip) {
        return true;
    }
    if let IpAddr::V6(v6) = ip {
        let s = v6.segments();
        if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
            let [.., a, b, c, d] = v6.octets();
            return allowed(config, IpAddr::from([a, b, c, d]));
        }
        if s[..3] == [0x64, 0xff9b, 1] {
            return false;
        }
    }
    !refused_ranges().contains(ip)
}

/// Why a dial did not happen (logged, never shown to the client).
pub(super) type Refusal = String;

/// Resolves the URL's host (within `timeout`) and connects to the first address
/// that may be dialled, returning the stream and that address.
pub(super) async fn open(
    config: &FederationConfig,
    resolver: Option<&TokioResolver>,
    url: &reqwest::Url,
) -> Result<(TcpStream, SocketAddr), (Option<SocketAddr>, Refusal)> {
    if url.scheme() != "wss" && !config.allow_http {
        return Err((None, "plain ws:// target ([federation] allowhttp)".into()));
    }
    let port = url
        .port_or_known_default()
        .ok_or((None, "no port".to_string()))?;
    let deadline = Instant::now() + config.timeout;
    let host = url.host_str().ok_or((None, "no host".to_string()))?;
    // URLs of ws/wss write IP addresses in their normal form ([v6]).
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let ips = match literal.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => resolve(resolver, host, deadline)
            .await
            .map_err(|e| (None, e))?,
    };
    let allowed_ips: Vec<IpAddr> = ips
        .iter()
        .copied()
        .filter(|ip| allowed(config, *ip))
        .collect();
    if allowed_ips.is_empty() {
        let first = ips.first().map(|ip| SocketAddr::new(*ip, port));
        return Err((
            first,
            "address in a range refused by default ([federation] allowips)".into(),
        ));
    }
    // The checked addresses in order, until one accepts.
    let mut failed = (None, String::new());
    let mut connected = None;
    for ip in allowed_ips {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                connected = Some((s, addr));
                break;
            }
            Ok(Err(e)) => failed = (Some(addr), e.to_string()),
            Err(_) => {
                failed = (Some(addr), "connect timeout".into());
                break;
            }
        }
    }
    let Some((stream, addr)) = connected else {
        return Err(failed);
    };
    let ip = addr.ip();
    // A public name of this very host: as loopback.
    let local = stream.local_addr().map(|a| a.ip()).ok();
    if local == Some(ip) && !config.allow_ips.contains(ip) {
        return Err((
            Some(addr),
            "this server's own host ([federation] allowips)".into(),
        ));
    }
    Ok((stream, addr))
}

/// The resolver of remote signaling servers' names: hickory's, on the
/// runtime's I/O (not tokio's blocking pool, where a `getaddrinfo` that
/// never returns would hold a thread that reqwest needs to resolve
/// Nextcloud). It reads `/etc/resolv.conf` and `/etc/hosts` once, at
/// start, and caches answers for their TTL. None (logged) when the system
/// configuration cannot be read: names then fail to resolve.
pub(crate) fn resolver(config: &FederationConfig) -> Option<TokioResolver> {
    let builder = if config.nameservers.is_empty() {
        match TokioResolver::builder_tokio() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "federation: cannot read the system's DNS configuration; remote signaling servers can only be named by address");
                return None;
            }
        }
    } else {
        let servers = config
            .nameservers
            .iter()
            .map(|a| {
                let mut ns = NameServerConfig::udp(a.ip());
                for c in &mut ns.connections {
                    c.port = a.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let mut builder = builder;
    builder.options_mut().timeout = config.timeout;
    builder.options_mut().attempts = 1;
    match builder.build() {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "federation: no DNS resolver");
            None
        }
    }
}

/// The addresses of `name`, within the deadline.
async fn resolve(
    resolver: Option<&TokioResolver>,
    name: &str,
    deadline: Instant,
) -> Result<Vec<IpAddr>, Refusal> {
    let resolver = resolver.ok_or("no DNS resolver")?;
    match tokio::time::timeout_at(deadline, resolver.lookup_ip(name)).await {
        Ok(Ok(ips)) => Ok(ips.iter().collect()),
        Ok(Err(e)) => Err(format!("lookup failed: {e}")),
        Err(_) => Err("lookup timeout".into()),
    }
}

/// Dials started by clients, per session and per client address, in
/// windows of a minute.
#[derive(Default)]
pub(crate) struct DialLimits {
    windows: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    map: HashMap<DialKey, (Instant, u32)>,
    /// Size at which expired windows are dropped next.
    prune_at: usize,
}

#[derive(Hash, PartialEq, Eq, Clone)]
enum DialKey {
    Session(std::sync::Arc<str>),
    Address(IpAddr),
}

impl DialLimits {
    /// Counts a dial of session `sid` from `ip`; false (nothing counted)
    /// when either is over its limit.
    pub(crate) fn admit(&self, sid: &std::sync::Arc<str>, ip: Option<IpAddr>) -> bool {
        let now = Instant::now();
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if w.map.len() >= w.prune_at {
            w.map
                .retain(|_, (start, _)| now.duration_since(*start) < DIAL_WINDOW);
            w.prune_at = (w.map.len() * 2).max(1024);
        }
        let mut keys = vec![(DialKey::Session(sid.clone()), DIALS_PER_SESSION)];
        if let Some(ip) = ip {
            keys.push((DialKey::Address(ip), DIALS_PER_ADDRESS));
        }
        let current = |w: &Windows, k: &DialKey| match w.map.get(k) {
            Some((start, n)) if now.duration_since(*start) < DIAL_WINDOW => *n,
            _ => 0,
        };
        if keys.iter().any(|(k, limit)| current(&w, k) >= *limit) {
            return false;
        }
        for (k, _) in keys {
            let n = current(&w, &k);
            let start = if n == 0 { now } else { w.map[&k].0 };
            w.map.insert(k, (start, n + 1));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_by_default() {
        let config = crate::config::Config::parse(
            "[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\n[backend]\nallowall = true\nsecret = s\n",
        )
        .unwrap()
        .federation;
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            // NAT64 (RFC 6052, 8215): 10.0.0.1 and 127.0.0.1 through the
            // translator, and the local-use prefix.
            "64:ff9b::a00:1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::808:808",
        ] {
            assert!(!allowed(&config, ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "100.128.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(allowed(&config, ip.parse().unwrap()), "{ip}");
        }
        let mut open = config.clone();
        open.allow_ips = IpList::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        assert!(allowed(&open, "127.0.0.1".parse().unwrap()));
        assert!(allowed(&open, "10.9.9.9".parse().unwrap()));
        assert!(!allowed(&open, "127.0.0.2".parse().unwrap()));
    }

    #[test]
    fn dials_are_limited_per_session_and_address() {
        let limits = DialLimits::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let s1: std::sync::Arc<str> = "s1".into();
        for _ in 0..DIALS_PER_SESSION {
            assert!(limits.admit(&s1, Some(ip)));
        }
        assert!(!limits.admit(&s1, Some(ip)));
        let mut admitted = DIALS_PER_SESSION;
        for i in 0.. {
            let s: std::sync::Arc<str> = format!("other{i}").into();
            if !limits.admit(&s, Some(ip)) {
                break;
            }
            admitted += 1;
        }
        assert_eq!(admitted, DIALS_PER_ADDRESS);
    }
}
