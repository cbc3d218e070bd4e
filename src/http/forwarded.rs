//! The client address behind a request. Only a trusted proxy (`[app]
//! trustedproxies`, loopback by default) is believed: when it sends
//! `X-Forwarded-For`, the client is the right-most entry that is not itself
//! a trusted proxy, and an entry that is not an address is that client (the
//! walk never skips past it: what lies left of it was written by whoever
//! wrote it); `X-Real-IP` counts only when a trusted proxy sent no
//! `X-Forwarded-For`. From anyone else both headers are ignored.
//!
//! The Go server reads `X-Real-IP` first and trusts private networks by
//! default: a LAN host, or a client behind a proxy that passes `X-Real-IP`
//! through, could claim 127.0.0.1 and read `/metrics`, stats and
//! serverinfo, and escape the hello throttle and the per-address cap.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;

use crate::config::IpList;

/// Who sent a request, as far as can be believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIp {
    /// The client's address.
    Known(IpAddr),
    /// A trusted proxy (this address) named as the client something that
    /// is not an address: the client is unknown. It is refused what needs
    /// an address (`[stats] allowed_ips`); the throttle and the
    /// per-address cap count it under the proxy that named it.
    Unknown(IpAddr),
}

impl ClientIp {
    /// The address to count the client under: its own, or that of the
    /// proxy that named it.
    pub fn counted(self) -> IpAddr {
        match self {
            ClientIp::Known(ip) | ClientIp::Unknown(ip) => ip,
        }
    }

    /// The client's own address, when it is known.
    pub fn known(self) -> Option<IpAddr> {
        match self {
            ClientIp::Known(ip) => Some(ip),
            ClientIp::Unknown(_) => None,
        }
    }
}

/// The client behind a connection from `peer` that sent `headers`
/// (see the module documentation); None without a peer address.
pub fn client_ip(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted: &IpList,
) -> Option<ClientIp> {
    let ip = peer?.ip();
    if !trusted.contains(ip) {
        return Some(ClientIp::Known(ip));
    }
    let lines: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
    if lines.is_empty() {
        return Some(match headers.get("x-real-ip") {
            None => ClientIp::Known(ip),
            Some(v) => match v.to_str().ok().and_then(parse_hop) {
                Some(real) => ClientIp::Known(real),
                None => ClientIp::Unknown(ip),
            },
        });
    }
    // Right to left: the last line is the one the nearest proxy added.
    // `hop` is the trusted proxy that named the entry being looked at.
    let mut hop = ip;
    for line in lines.iter().rev() {
        let Ok(line) = line.to_str() else {
            return Some(ClientIp::Unknown(hop));
        };
        for entry in line.rsplit(',') {
            match parse_hop(entry) {
                None => return Some(ClientIp::Unknown(hop)),
                Some(a) if trusted.contains(a) => hop = a,
                Some(a) => return Some(ClientIp::Known(a)),
            }
        }
    }
    // Every entry is a trusted proxy: the left-most is the client.
    Some(ClientIp::Known(hop))
}

/// The client address of a request: the peer from the accept loop, or
/// what a trusted proxy in front of it says.
pub fn request_client_ip(req: &axum::extract::Request, trusted: &IpList) -> Option<ClientIp> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    client_ip(peer, req.headers(), trusted)
}

/// An address from a forwarding header, with or without a port
/// (`1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:5678`).
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    s.parse::<SocketAddr>().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(peer: &str, headers: &[(&'static str, &str)]) -> String {
        let trusted = IpList::parse("127.0.0.1, 10.0.0.0/8").unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(*k, v.parse().unwrap());
        }
        let peer: SocketAddr = format!("{peer}:1000").parse().unwrap();
        match client_ip(Some(peer), &h, &trusted).unwrap() {
            ClientIp::Known(ip) => ip.to_string(),
            ClientIp::Unknown(hop) => format!("unknown via {hop}"),
        }
    }

    #[test]
    fn headers_count_only_from_trusted_proxies() {
        let xri = [("x-real-ip", "203.0.113.1")];
        assert_eq!(ip("127.0.0.1", &xri), "203.0.113.1");
        assert_eq!(ip("192.0.2.7", &xri), "192.0.2.7");
        let xff = [("x-forwarded-for", "203.0.113.1")];
        assert_eq!(ip("192.0.2.7", &xff), "192.0.2.7");
        assert_eq!(ip("127.0.0.1", &[]), "127.0.0.1");
    }

    #[test]
    fn x_forwarded_for_wins_over_x_real_ip() {
        let both = [
            ("x-real-ip", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
        ];
        assert_eq!(ip("127.0.0.1", &both), "198.51.100.2");
        let bad = [("x-real-ip", "nonsense")];
        assert_eq!(ip("127.0.0.1", &bad), "unknown via 127.0.0.1");
    }

    #[test]
    fn the_right_most_untrusted_entry_is_the_client() {
        // Ports removed; trusted proxies skipped.
        let chain = [("x-forwarded-for", "6.6.6.6, 198.51.100.2:4000, 10.1.1.1")];
        assert_eq!(ip("127.0.0.1", &chain), "198.51.100.2");
        let v6 = [("x-forwarded-for", "[2001:db8::1]:80, 10.1.1.1")];
        assert_eq!(ip("127.0.0.1", &v6), "2001:db8::1");
        // Several header lines: the last is the nearest.
        let split = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "10.1.1.1"),
        ];
        assert_eq!(ip("127.0.0.1", &split), "6.6.6.6");
        // All trusted: the left-most.
        let all = [("x-forwarded-for", "10.2.2.2, 10.1.1.1")];
        assert_eq!(ip("127.0.0.1", &all), "10.2.2.2");
    }

    #[test]
    fn an_entry_that_is_not_an_address_is_the_client() {
        let junk = [("x-forwarded-for", "198.51.100.2, nonsense, 10.1.1.1")];
        assert_eq!(ip("127.0.0.1", &junk), "unknown via 10.1.1.1");
        let empty = [("x-forwarded-for", "198.51.100.2,")];
        assert_eq!(ip("127.0.0.1", &empty), "unknown via 127.0.0.1");
        let lines = [
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-for", "localhost"),
        ];
        assert_eq!(ip("127.0.0.1", &lines), "unknown via 127.0.0.1");
    }
}
