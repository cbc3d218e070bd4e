//! Every key of `server.conf` this server knows, one table per section:
//! the keys it reads, and the Go server's keys it does not honour with
//! what setting them means here. A key in no table is unknown (a typo, or
//! a key of a newer Go server): start-up and `check` warn about it
//! (`findings.rs`).
//!
//! Adding a key to the server: add a row to its section's table (and read
//! it where the section is parsed).

/// What this server does with a key.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Use {
    /// Read and honoured.
    Read,
    /// A key of the Go server that only counts together with another
    /// setting this server refuses or does not have (e.g. `[mcu] token_id`
    /// with `type = proxy`), or that the Go server reads for something
    /// this server does differently: quiet, the text says why.
    Moot(&'static str),
    /// The Go server honours it, this server does not and the loss is
    /// small: a value that is set (not empty, `false` or `0`) is warned
    /// about at start-up and by `check`, with this text.
    Warn(&'static str),
    /// The Go server honours it and this server does not: a value that is
    /// set stops start-up (and fails `check`) with this text.
    Refuse(&'static str),
}

/// One key of a section.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Lower-case name, as in the file.
    pub name: &'static str,
    /// What this server does with it.
    pub use_: Use,
}

const fn read(name: &'static str) -> Key {
    Key {
        name,
        use_: Use::Read,
    }
}

const fn moot(name: &'static str, why: &'static str) -> Key {
    Key {
        name,
        use_: Use::Moot(why),
    }
}

const fn warn(name: &'static str, why: &'static str) -> Key {
    Key {
        name,
        use_: Use::Warn(why),
    }
}

const fn refuse(name: &'static str, why: &'static str) -> Key {
    Key {
        name,
        use_: Use::Refuse(why),
    }
}

const PROXY_ETCD_ONLY: &str = "only used with type = proxy and urltype = etcd (refused)";
const GRPC: &str = "the Go server's gRPC clustering is not supported (this server's processes cluster over NATS alone: [nats] url)";

/// `[http]`.
pub const HTTP: &[Key] = &[
    read("listen"),
    read("readtimeout"),
    read("writetimeout"),
    read("maxconnections"),
    read("maxconnectionsperip"),
    read("threads"),
    // Earlier versions of this server; named by `obsolete_keys`.
    moot("proxyips", "no longer read"),
];

/// `[https]`.
pub const HTTPS: &[Key] = &[
    read("listen"),
    read("readtimeout"),
    read("writetimeout"),
    read("certificate"),
    read("key"),
];

/// `[app]`.
pub const APP: &[Key] = &[
    warn(
        "debug",
        "the Go server's pprof debug handlers do not exist in this server",
    ),
    read("allowsubscribeany"),
    read("trustedproxies"),
];

/// `[sessions]`.
pub const SESSIONS: &[Key] = &[
    read("hashkey"),
    read("blockkey"),
    read("resumetimeout"),
    read("resumequeuemessages"),
    read("resumequeuebytes"),
    read("statefile"),
];

/// `[clients]`.
pub const CLIENTS: &[Key] = &[
    read("internalsecret"),
    read("hellotimeout"),
    read("roomtimeout"),
    read("pinginterval"),
    read("readtimeout"),
    read("maxmessagesize"),
    read("outboxbytes"),
    read("slowreceiverwait"),
    read("messagespersecond"),
    read("messageburst"),
    read("bytespersecond"),
    read("byteburst"),
    read("mcurequestspersecond"),
    read("mcurequestburst"),
    read("maxfailedhellos"),
    read("failedhellowindow"),
];

/// `[federation]`.
pub const FEDERATION: &[Key] = &[
    read("skipverify"),
    read("timeout"),
    read("allowips"),
    read("allowhttp"),
];

/// `[backend]`.
pub const BACKEND: &[Key] = &[
    read("backendtype"),
    read("backends"),
    read("allowed"),
    read("allowall"),
    read("secret"),
    read("timeout"),
    read("connectionsperhost"),
    read("skipverify"),
    read("maxconcurrentrequests"),
    read("maxresponsesize"),
    read("pinginterval"),
    read("backendprefix"),
    // The Go server applies these to the backends that `allowall`
    // accepts; `findings` refuses them only then.
    refuse(
        "sessionlimit",
        "the Go server applies it to the backends allowall accepts; this server does not",
    ),
    refuse(
        "maxstreambitrate",
        "the Go server applies it to the backends allowall accepts; this server does not",
    ),
    refuse(
        "maxscreenbitrate",
        "the Go server applies it to the backends allowall accepts; this server does not",
    ),
    refuse(
        "allowhttp",
        "the Go server applies it to the backends allowall accepts; this server does not",
    ),
];

/// The section of each backend listed in `[backend] backends`.
pub const BACKEND_ID: &[Key] = &[
    read("url"),
    read("urls"),
    read("secret"),
    read("sessionlimit"),
    read("maxstreambitrate"),
    read("maxscreenbitrate"),
];

/// `[nats]`.
pub const NATS: &[Key] = &[read("url"), read("publishqueue")];

/// `[mcu]`.
pub const MCU: &[Key] = &[
    read("type"),
    read("url"),
    read("maxstreambitrate"),
    read("maxscreenbitrate"),
    read("allowedcandidates"),
    read("blockedcandidates"),
    read("timeout"),
    // type = proxy (config/mcu_proxy.rs; urltype = etcd, dnsdiscovery and
    // skipverify = true are refused there, naming the key).
    read("proxytimeout"),
    read("urltype"),
    read("skipverify"),
    read("token_id"),
    read("token_key"),
    read("dnsdiscovery"),
    // The Go server 0.4.1 read etcd's settings of the proxy MCU here, only
    // with urltype = etcd (refused).
    moot("keyprefix", PROXY_ETCD_ONLY),
    moot("endpoints", PROXY_ETCD_ONLY),
    moot("discoverysrv", PROXY_ETCD_ONLY),
    moot("discoveryservice", PROXY_ETCD_ONLY),
    moot("clientkey", PROXY_ETCD_ONLY),
    moot("clientcert", PROXY_ETCD_ONLY),
    moot("cacert", PROXY_ETCD_ONLY),
];

/// `[turn]`.
pub const TURN: &[Key] = &[read("apikey"), read("secret"), read("servers")];

/// `[geoip]`.
pub const GEOIP_KEYS: &[Key] = &[read("license"), read("url")];

/// `[stats]`.
pub const STATS: &[Key] = &[read("allowed_ips")];

/// `[etcd]`.
pub const ETCD_KEYS: &[Key] = &[
    read("endpoints"),
    read("discoverysrv"),
    read("discoveryservice"),
    read("clientkey"),
    read("clientcert"),
    read("cacert"),
    read("loglevel"),
];

/// `[grpc]`: refused without `[nats] url`, warned with it (`findings`).
pub const GRPC_KEYS: &[Key] = &[
    refuse("listen", GRPC),
    refuse("servercertificate", GRPC),
    refuse("serverkey", GRPC),
    refuse("serverca", GRPC),
    refuse("clientcertificate", GRPC),
    refuse("clientkey", GRPC),
    refuse("clientca", GRPC),
    refuse("targettype", GRPC),
    refuse("targets", GRPC),
    refuse("dnsdiscovery", GRPC),
    refuse("targetprefix", GRPC),
];

/// `[transient]`.
pub const TRANSIENT: &[Key] = &[
    read("maxkeys"),
    read("maxkeylength"),
    read("maxvaluesize"),
    read("maxroombytes"),
    read("maxttl"),
];

/// `[logging]`.
pub const LOGGING: &[Key] = &[read("level"), read("format")];

/// The sections with fixed keys, by name.
pub const SECTIONS: &[(&str, &[Key])] = &[
    ("http", HTTP),
    ("https", HTTPS),
    ("app", APP),
    ("sessions", SESSIONS),
    ("clients", CLIENTS),
    ("federation", FEDERATION),
    ("backend", BACKEND),
    ("nats", NATS),
    ("mcu", MCU),
    ("turn", TURN),
    ("geoip", GEOIP_KEYS),
    ("stats", STATS),
    ("etcd", ETCD_KEYS),
    ("grpc", GRPC_KEYS),
    ("transient", TRANSIENT),
    ("logging", LOGGING),
];

/// Sections whose keys are data (addresses, continent codes), read and
/// checked by their parsers (`config/geoip.rs`).
pub const FREE_FORM: &[&str] = &["geoip-overrides", "continent-overrides"];

/// The table of `section` (not a backend's section).
pub fn section(name: &str) -> Option<&'static [Key]> {
    SECTIONS
        .iter()
        .find(|(s, _)| *s == name)
        .map(|(_, keys)| *keys)
}

/// The row of `key` in `keys`.
pub fn key(keys: &[Key], name: &str) -> Option<Key> {
    keys.iter().find(|k| k.name == name).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_no_duplicates() {
        let mut names: Vec<&str> = SECTIONS.iter().map(|(s, _)| *s).collect();
        names.extend(FREE_FORM.iter().copied());
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        for (s, keys) in SECTIONS.iter().chain([("backend-id", BACKEND_ID)].iter()) {
            let mut k: Vec<&str> = keys.iter().map(|k| k.name).collect();
            k.sort_unstable();
            k.dedup();
            assert_eq!(k.len(), keys.len(), "[{s}]");
            assert!(keys.iter().all(|k| k.name == k.name.to_ascii_lowercase()));
        }
    }
}
