//! A small writer of MaxMind DB files (format 2.0, the public "MaxMind DB
//! File Format Specification"), for tests that need a GeoIP database of
//! their own: an IPv6 tree (IPv4 networks under `::/96`) with 32-bit
//! records, each network mapped to `{"country": {"iso_code": CC}}`.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// One record of a search-tree node.
#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(u32),
    /// Offset into the data section.
    Data(u32),
}

/// A database under construction.
pub struct Mmdb {
    nodes: Vec<[Rec; 2]>,
    data: Vec<u8>,
    /// Data offset of each country's record.
    countries: BTreeMap<String, u32>,
}

impl Default for Mmdb {
    fn default() -> Self {
        Mmdb {
            nodes: vec![[Rec::Empty, Rec::Empty]],
            data: Vec::new(),
            countries: BTreeMap::new(),
        }
    }
}

impl Mmdb {
    /// `network` (`1.2.3.0/24`, `2001:db8::/32`) is in `country`.
    pub fn insert(mut self, network: &str, country: &str) -> Self {
        let (addr, prefix) = network.split_once('/').unwrap_or((network, ""));
        let addr: IpAddr = addr.parse().expect("address");
        let (bits, len) = match addr {
            IpAddr::V4(v4) => {
                let p: u32 = prefix.parse().unwrap_or(32);
                (u128::from(u32::from(v4)), 96 + p)
            }
            IpAddr::V6(v6) => (u128::from(v6), prefix.parse().unwrap_or(128)),
        };
        let off = self.country(country);
        let mut node = 0usize;
        for i in 0..len {
            let bit = ((bits >> (127 - i)) & 1) as usize;
            if i + 1 == len {
                self.nodes[node][bit] = Rec::Data(off);
                break;
            }
            node = match self.nodes[node][bit] {
                Rec::Node(n) => n as usize,
                other => {
                    // A new node; a wider network's data goes on below it.
                    self.nodes.push([other, other]);
                    let n = self.nodes.len() - 1;
                    self.nodes[node][bit] = Rec::Node(n as u32);
                    n
                }
            };
        }
        self
    }

    fn country(&mut self, code: &str) -> u32 {
        if let Some(off) = self.countries.get(code) {
            return *off;
        }
        let off = self.data.len() as u32;
        let mut v = Vec::new();
        map(&mut v, 1);
        string(&mut v, "country");
        map(&mut v, 1);
        string(&mut v, "iso_code");
        string(&mut v, code);
        self.data.extend(v);
        self.countries.insert(code.to_string(), off);
        off
    }

    /// The file's bytes.
    pub fn build(&self) -> Vec<u8> {
        let count = self.nodes.len() as u32;
        let value = |r: Rec| match r {
            Rec::Empty => count,
            Rec::Node(n) => n,
            Rec::Data(off) => count + 16 + off,
        };
        let mut out = Vec::new();
        for [l, r] in &self.nodes {
            out.extend(value(*l).to_be_bytes());
            out.extend(value(*r).to_be_bytes());
        }
        out.extend([0u8; 16]);
        out.extend(&self.data);
        out.extend(b"\xAB\xCD\xEFMaxMind.com");
        map(&mut out, 9);
        string(&mut out, "binary_format_major_version");
        uint(&mut out, 5, 2);
        string(&mut out, "binary_format_minor_version");
        uint(&mut out, 5, 0);
        string(&mut out, "build_epoch");
        uint(&mut out, 9, 1_700_000_000);
        string(&mut out, "database_type");
        string(&mut out, "Test-Country");
        string(&mut out, "description");
        map(&mut out, 1);
        string(&mut out, "en");
        string(&mut out, "a test database");
        string(&mut out, "ip_version");
        uint(&mut out, 5, 6);
        string(&mut out, "languages");
        control(&mut out, 11, 1);
        string(&mut out, "en");
        string(&mut out, "node_count");
        uint(&mut out, 6, u64::from(count));
        string(&mut out, "record_size");
        uint(&mut out, 5, 32);
        out
    }
}

/// A field's control byte(s): type (extended types 8.. in a second byte)
/// and size (sizes from 29 in extra bytes).
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (first, ext) = if kind <= 7 {
        (kind << 5, None)
    } else {
        (0, Some(kind - 7))
    };
    let (bits, extra): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, vec![]),
        29..=284 => (29, vec![(size - 29) as u8]),
        _ => {
            let s = size - 285;
            (30, vec![(s >> 8) as u8, s as u8])
        }
    };
    out.push(first | bits);
    out.extend(ext);
    out.extend(extra);
}

fn string(out: &mut Vec<u8>, s: &str) {
    control(out, 2, s.len());
    out.extend(s.as_bytes());
}

fn map(out: &mut Vec<u8>, entries: usize) {
    control(out, 7, entries);
}

/// An unsigned integer of type `kind` (5 uint16, 6 uint32, 9 uint64), in
/// as few bytes as it needs.
fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, 8 - skip);
    out.extend(&bytes[skip..]);
}

#[test]
fn the_reader_of_the_server_reads_it() {
    let db = Mmdb::default()
        .insert("81.2.69.0/24", "GB")
        .insert("81.2.69.128/25", "DE")
        .insert("2001:db8::/32", "FR")
        .build();
    let r = maxminddb::Reader::from_source(db).unwrap();
    r.verify().unwrap();
    let at = |ip: &str| -> Option<String> {
        r.lookup(ip.parse().unwrap())
            .unwrap()
            .decode_path(&[
                maxminddb::PathElement::Key("country"),
                maxminddb::PathElement::Key("iso_code"),
            ])
            .unwrap()
    };
    assert_eq!(at("81.2.69.1").as_deref(), Some("GB"));
    assert_eq!(at("81.2.69.200").as_deref(), Some("DE"));
    assert_eq!(at("2001:db8::1").as_deref(), Some("FR"));
    assert_eq!(at("81.2.70.1"), None);
    assert_eq!(r.metadata().database_type, "Test-Country");
}
