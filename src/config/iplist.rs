//! Lists of IP addresses and CIDR networks (`127.0.0.1, ::1, 10.0.0.0/8`),
//! as the Go server reads `[stats] allowed_ips`.

use std::net::IpAddr;

/// One address or network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `1.2.3.4`, `1.2.3.0/24`, `::1` or `fd00::/8`.
    pub fn parse(s: &str) -> Option<IpNet> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    /// The prefix length (32 or 128 for a single address).
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when `ip` lies in this network (IPv4-mapped IPv6 addresses
    /// count as their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::fmt::Display for IpList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

/// A list of networks; empty matches nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpList(pub Vec<IpNet>);

impl IpList {
    /// Parses a comma- or space-separated list; the error names the bad entry.
    pub fn parse(s: &str) -> Result<IpList, String> {
        let mut v = Vec::new();
        for part in s.split([',', ' ', '\t']).filter(|p| !p.trim().is_empty()) {
            v.push(
                IpNet::parse(part)
                    .ok_or_else(|| format!("`{part}` is not an IP address or CIDR network"))?,
            );
        }
        Ok(IpList(v))
    }

    /// The loopback networks (`127.0.0.0/8`, `::1`).
    pub fn loopback() -> IpList {
        IpList::parse("127.0.0.0/8, ::1").unwrap_or_default()
    }

    /// True when some entry contains `ip`.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_networks() {
        let l = IpList::parse("127.0.0.1, 10.0.0.0/8 fd00::/8").unwrap();
        assert!(l.contains("127.0.0.1".parse().unwrap()));
        assert!(!l.contains("127.0.0.2".parse().unwrap()));
        assert!(l.contains("10.9.8.7".parse().unwrap()));
        assert!(l.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(l.contains("fd12::1".parse().unwrap()));
        assert!(!l.contains("fe80::1".parse().unwrap()));
        assert!(IpList::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpList::parse("1.2.3.4/33").is_err());
        assert!(IpList::parse("example.com").is_err());
        assert!(IpList::loopback().contains("::1".parse().unwrap()));
    }
}
