//! What a valid configuration holds that an admin must hear about: keys
//! this server does not know or does not honour, `$(VAR)` references to
//! unset variables, sample secrets and risky values. Each finding names
//! its section and key. Start-up stops on a [`Severity::Refuse`] and logs
//! the others as warnings; `check` prints them all.

use super::goconf::{split_list, IniFile, DEFAULT_SECTION};
use super::known::{self, Use};
use super::Config;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// A warning at start-up and in `check`.
    Warn,
    /// A warning at start-up, a failure in `check`: must be fixed before
    /// production (a sample secret, no backend), but the sample file still
    /// runs on loopback.
    Unsafe,
    /// Start-up stops (exit code 2); a failure in `check`.
    Refuse,
}

/// One finding; `text` starts with `[section] key:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// How serious it is.
    pub severity: Severity,
    /// What it is and what to do.
    pub text: String,
}

/// Secrets of the sample files (the Go server's `server.conf.in`; ours
/// start with `change-me`).
const SAMPLE_SECRETS: &[&str] = &[
    "the-secret-for-session-checksums",
    "-encryption-key-",
    "the-shared-secret-for-internal-clients",
    "the-shared-secret-for-allowall",
    "the-shared-secret",
    "the-api-key-for-the-rest-service",
    "6d1c17a7-c736-4e22-b02c-e2955b7ecc64",
];

fn is_sample_secret(v: &str) -> bool {
    v.starts_with("change-me") || SAMPLE_SECRETS.contains(&v)
}

/// A value that asks for something: not empty, not off, not zero.
fn is_set(v: &str) -> bool {
    let v = v.trim().to_ascii_lowercase();
    !v.is_empty() && !["false", "f", "no", "n", "off", "0"].contains(&v.as_str())
}

struct Out(Vec<Finding>);

impl Out {
    fn push(&mut self, severity: Severity, text: String) {
        self.0.push(Finding { severity, text });
    }
}

/// Everything about `ini` (already parsed into `config`) to report.
pub(super) fn collect(ini: &IniFile, config: &Config) -> Vec<Finding> {
    let mut out = Out(Vec::new());
    unset_variables(ini, &mut out);
    refused_features(ini, &mut out);
    keys(ini, config, &mut out);
    secrets(config, &mut out);
    risky(ini, config, &mut out);
    // Refusals first, then what must be fixed, then warnings.
    out.0.sort_by_key(|f| match f.severity {
        Severity::Refuse => 0,
        Severity::Unsafe => 1,
        Severity::Warn => 2,
    });
    out.0
}

/// `$(NAME)` of a variable that is not set: the Go server silently puts
/// `NAME` in its place (a secret would be the variable's name).
fn unset_variables(ini: &IniFile, out: &mut Out) {
    for section in sorted(ini.sections()) {
        for (key, value) in ini.options(section) {
            for name in variables(value) {
                if std::env::var_os(name).is_none() {
                    out.push(
                        Severity::Refuse,
                        format!(
                            "[{section}] {key}: $({name}) is not set in the environment (the value would contain `{name}` instead; `check` sees the environment of the shell it runs in)"
                        ),
                    );
                }
            }
        }
    }
}

/// The names of the `$(NAME)` references in `value` (Go's pattern:
/// a letter, then letters, digits and `_`).
fn variables(value: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("$(") {
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        let name = &after[..end];
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if valid {
            names.push(name);
        }
        rest = &after[end + 1..];
    }
    names
}

/// Features of the Go server that this server does not have and whose
/// absence would change what the admin gets: start-up stops.
fn refused_features(ini: &IniFile, out: &mut Out) {
    etcd_findings(ini, out);
}

/// `backendtype = etcd`: the static backends are not used; TLS towards
/// etcd needs all three files (else the Go client, and this server, use
/// plain HTTP).
fn etcd_findings(ini: &IniFile, out: &mut Out) {
    let etcd_backends = ini
        .get_nonempty("backend", "backendtype")
        .is_some_and(|t| t.eq_ignore_ascii_case("etcd"));
    for key in ["backends", "allowed", "allowall"] {
        let set = ini
            .get_nonempty("backend", key)
            .is_some_and(|v| !v.eq_ignore_ascii_case("false"));
        if etcd_backends && set {
            out.push(
                Severity::Warn,
                format!("[backend] {key}: not used with backendtype = etcd (the backends are the values under [backend] backendprefix in etcd)"),
            );
        }
    }
    let tls = ["clientkey", "clientcert", "cacert"].map(|k| {
        ini.get_nonempty("etcd", k)
            .or_else(|| ini.get_nonempty("mcu", k))
    });
    if tls.iter().any(Option::is_some) && !tls.iter().all(Option::is_some) {
        out.push(
            Severity::Warn,
            "[etcd] clientkey, clientcert, cacert: TLS towards etcd needs all three; with only some set, etcd is spoken to over plain HTTP (as the Go server does)".into(),
        );
    }
}

fn sorted<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<&str> = it.collect();
    v.sort_unstable();
    v
}

/// Unknown sections and keys, and keys of the Go server with a value that
/// this server does not honour.
fn keys(ini: &IniFile, config: &Config, out: &mut Out) {
    let referenced = references(ini);
    let backend_ids: Vec<String> = ini
        .get_nonempty("backend", "backends")
        .map(|ids| {
            split_list(&ids)
                .iter()
                .map(|i| i.to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    for section in sorted(ini.sections()) {
        // `[default]` holds values for interpolation and fallbacks.
        if section == DEFAULT_SECTION {
            continue;
        }
        let table = if backend_ids.iter().any(|id| id == section) {
            Some(known::BACKEND_ID)
        } else {
            known::section(section)
        };
        let options = sorted_options(ini, section);
        let Some(table) = table else {
            if known::FREE_FORM.contains(&section) {
                // Read and checked by their parser.
            } else if !options.is_empty() {
                out.push(
                    Severity::Warn,
                    format!("[{section}]: unknown section, not read (a backend's section must be listed in [backend] backends)"),
                );
            }
            continue;
        };
        for (key, value) in options {
            if referenced.iter().any(|r| r == key) {
                continue;
            }
            match known::key(table, key).map(|k| k.use_) {
                None => out.push(Severity::Warn, unknown_key(section, key, table)),
                Some(Use::Read | Use::Moot(_)) => {}
                Some(Use::Warn(why)) if is_set(value) => out.push(
                    Severity::Warn,
                    format!("[{section}] {key}: not honoured: {why}"),
                ),
                Some(Use::Refuse(why)) if is_set(value) => {
                    refuse_key(section, key, why, config, out)
                }
                Some(_) => {}
            }
        }
    }
}

fn sorted_options<'a>(ini: &'a IniFile, section: &str) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = ini.options(section).collect();
    v.sort_unstable();
    v
}

/// A key of the Go server that this server does not honour, with a value.
fn refuse_key(section: &str, key: &str, why: &str, config: &Config, out: &mut Out) {
    match section {
        // The Go server reads these only for `allowall`'s backends.
        "backend" if !config.backend.allow_all => {}
        // Clustered over NATS, the processes need no gRPC.
        "grpc" if !config.nats_urls.is_empty() => out.push(
            Severity::Warn,
            format!("[{section}] {key}: not read: this server's processes cluster over NATS ([nats] url) alone; a cluster cannot mix them with Go servers"),
        ),
        _ => out.push(
            Severity::Refuse,
            format!("[{section}] {key}: {why}; remove the key"),
        ),
    }
}

/// The names used in `%(name)s` references: keys that hold values for
/// other keys are not unknown.
fn references(ini: &IniFile) -> Vec<String> {
    let mut names = Vec::new();
    for section in ini.sections() {
        for (_, value) in ini.options(section) {
            let mut rest = value;
            while let Some(start) = rest.find("%(") {
                let after = &rest[start + 2..];
                let Some(end) = after.find(")s") else { break };
                names.push(after[..end].to_ascii_lowercase());
                rest = &after[end + 2..];
            }
        }
    }
    names
}

fn unknown_key(section: &str, key: &str, table: &[known::Key]) -> String {
    let near = table
        .iter()
        .map(|k| k.name)
        .filter(|k| edit_distance(k, key) <= 2)
        .min_by_key(|k| edit_distance(k, key));
    match near {
        Some(k) => format!("[{section}] {key}: unknown key, not read (did you mean `{k}`?)"),
        None => format!("[{section}] {key}: unknown key, not read"),
    }
}

/// Levenshtein distance of two short ASCII names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Empty and sample secrets.
fn secrets(config: &Config, out: &mut Out) {
    let b = &config.backend;
    if b.backends.is_empty() && !b.allow_all && b.etcd_prefix.is_none() {
        out.push(
            Severity::Unsafe,
            "[backend] backends: no backend configured: no Nextcloud can use this server (list ids in backends, a section [id] each with url and secret)".into(),
        );
    }
    if is_sample_secret(&b.common_secret) {
        out.push(Severity::Unsafe, sample("[backend] secret"));
    }
    for backend in &b.backends {
        if backend.legacy {
            continue;
        }
        if is_sample_secret(&backend.secret) && backend.secret != b.common_secret {
            out.push(
                Severity::Unsafe,
                sample(&format!("[{}] secret", backend.id)),
            );
        }
    }
    if config.internal_secret.is_empty() {
        out.push(
            Severity::Warn,
            "[clients] internalsecret: empty: internal clients (SIP bridge, recording server) cannot connect".into(),
        );
    } else if is_sample_secret(&config.internal_secret) {
        out.push(Severity::Unsafe, sample("[clients] internalsecret"));
    }
    if !config.turn.servers.is_empty() {
        for (key, value) in [
            ("apikey", &config.turn.api_key),
            ("secret", &config.turn.secret),
        ] {
            if is_sample_secret(value) {
                out.push(Severity::Unsafe, sample(&format!("[turn] {key}")));
            }
        }
    }
    for (key, value) in [
        ("hashkey", &config.hash_key),
        ("blockkey", &config.block_key),
    ] {
        if is_sample_secret(value) {
            out.push(
                Severity::Warn,
                format!("[sessions] {key}: the sample's value (not used by this server, but the Go server protects its session ids with it): set a random string"),
            );
        }
    }
}

fn sample(key: &str) -> String {
    format!("{key}: the sample's value: anyone who read the sample knows it; set a random string (e.g. openssl rand -hex 32)")
}

/// Values that weaken the server; each is a warning.
fn risky(ini: &IniFile, config: &Config, out: &mut Out) {
    let mut warn = |text: &str| out.push(Severity::Warn, text.to_string());
    if config.backend.allow_all {
        warn("[backend] allowall: any Nextcloud that knows the common secret may use this server (meant for tests)");
    }
    if config.backend.skip_verify {
        warn("[backend] skipverify: TLS certificates of Nextcloud are not checked (development only)");
    }
    if config.federation.skip_verify {
        warn("[federation] skipverify: TLS certificates of remote signaling servers are not checked (development only)");
    }
    if config.allow_subscribe_any {
        warn("[app] allowsubscribeany: any session may subscribe to any publisher, not only to those in its call (insecure, for tests)");
    }
    for url in &config.nats_urls {
        if let Ok(u) = reqwest::Url::parse(url) {
            let loopback = matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
            if !loopback && u.username().is_empty() && u.password().is_none() {
                warn(&format!("[nats] url: {} has no credentials: every process that can reach it is trusted with all sessions (see the README, Clustering)", crate::logsafe::Url(url)));
            }
        }
    }
    if ini.get("http", "proxyips").is_some() {
        warn("[http] proxyips: no longer read; list your reverse proxies in [app] trustedproxies (the Go server's key)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\n\
        [clients]\ninternalsecret = a-real-internal-secret\n\
        [backend]\nbackends = nc1\n[nc1]\nurl = https://cloud.example\nsecret = a-real-secret\n";

    fn findings(extra: &str) -> Vec<Finding> {
        Config::parse(&format!("{BASE}{extra}")).unwrap().findings
    }

    fn texts(extra: &str, severity: Severity) -> Vec<String> {
        findings(extra)
            .into_iter()
            .filter(|f| f.severity == severity)
            .map(|f| f.text)
            .collect()
    }

    #[test]
    fn a_clean_file_and_empty_sections_say_nothing() {
        let empty = "[http]\n[https]\n[app]\ndebug = false\n[nats]\n[mcu]\n[turn]\n[geoip]\n\
            [geoip-overrides]\n[continent-overrides]\n[stats]\n[etcd]\n[grpc]\n[federation]\n";
        assert_eq!(findings(empty), vec![]);
    }

    #[test]
    fn features_this_server_lacks_are_refused() {
        // type = proxy runs; what it lacks stops parsing, naming the key.
        let e = Config::parse(&format!(
            "{BASE}[mcu]\ntype = proxy\nurl = ws://p:1\ntoken_id = s1\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("[mcu] token_key"), "{e}");
        // etcd is read: nothing refused; the static backends are unused.
        let etcd = "[etcd]\nendpoints = 127.0.0.1:2379\ncacert = /ca\n";
        assert_eq!(texts(etcd, Severity::Refuse), Vec::<String>::new());
        let w = texts(
            &format!("{etcd}[backend]\nbackendtype = etcd\nbackendprefix = /b\n"),
            Severity::Warn,
        );
        assert!(
            w.iter()
                .any(|w| w.starts_with("[backend] backends: not used")),
            "{w:?}"
        );
        assert!(
            w.iter()
                .any(|w| w.starts_with("[etcd] clientkey, clientcert, cacert")),
            "{w:?}"
        );
        // gRPC: refused without NATS, a warning with it.
        let r = texts("[grpc]\ntargets = 10.0.0.1:9090\n", Severity::Refuse);
        assert!(r[0].starts_with("[grpc] targets:"), "{r:?}");
        let w = texts(
            "[grpc]\ntargets = 10.0.0.1:9090\n[nats]\nurl = nats://u:p@10.0.0.5:4222\n",
            Severity::Warn,
        );
        assert!(
            w.iter().any(|t| t.starts_with("[grpc] targets: not read")),
            "{w:?}"
        );
        // allowall's backend keys count only with allowall.
        assert!(texts("[backend]\nsessionlimit = 5\n", Severity::Refuse).is_empty());
        let r = texts(
            "[backend]\nallowall = true\nsecret = s3cr3t-x\nsessionlimit = 5\n",
            Severity::Refuse,
        );
        assert!(r[0].starts_with("[backend] sessionlimit:"), "{r:?}");
    }

    #[test]
    fn unknown_keys_and_unset_variables_are_named() {
        let w = texts(
            "[http]\nlisen = 0.0.0.0:80\n[nc2]\nurl = x\n",
            Severity::Warn,
        );
        assert!(
            w.contains(&"[http] lisen: unknown key, not read (did you mean `listen`?)".to_string()),
            "{w:?}"
        );
        assert!(
            w.iter().any(|t| t.starts_with("[nc2]: unknown section")),
            "{w:?}"
        );
        // A key that only holds a value for %(name)s is not unknown.
        assert!(texts(
            "[nc1]\nhost = cloud.example\nurls = https://%(host)s\n",
            Severity::Warn
        )
        .is_empty());
        let r = texts(
            "[nc1]\nsecret = $(SPREED_TEST_SURELY_UNSET)\n",
            Severity::Refuse,
        );
        assert!(
            r[0].starts_with("[nc1] secret: $(SPREED_TEST_SURELY_UNSET) is not set"),
            "{r:?}"
        );
    }

    #[test]
    fn sample_secrets_and_risky_values_are_named() {
        let u = texts("[clients]\ninternalsecret = change-me-internal-secret\n[nc1]\nsecret = the-shared-secret\n", Severity::Unsafe);
        assert_eq!(u.len(), 2, "{u:?}");
        let w = texts("[backend]\nskipverify = true\n[app]\nallowsubscribeany = true\n[clients]\ninternalsecret =\n", Severity::Warn);
        assert_eq!(w.len(), 3, "{w:?}");
        let u = texts("[backend]\nbackends =\n", Severity::Unsafe);
        assert!(
            u[0].starts_with("[backend] backends: no backend configured"),
            "{u:?}"
        );
    }

    /// The sample file has no key this server does not know, and what it
    /// says about it is the sample secrets (uncommented: the [turn] ones
    /// too), nothing else.
    #[test]
    fn the_sample_file_is_known() {
        let sample = include_str!("../../server.conf.sample");
        let uncommented = sample
            .replace("\n#[turn]", "\n[turn]")
            .replace("\n#apikey", "\napikey")
            .replace("\n#secret = change-me-turn", "\nsecret = change-me-turn")
            .replace("\n#servers", "\nservers");
        for text in [sample, &uncommented] {
            let c = Config::parse(text).unwrap();
            for f in &c.findings {
                assert!(f.text.contains("the sample's value"), "{f:?}");
            }
        }
        let c = Config::parse(&uncommented).unwrap();
        assert!(
            c.findings
                .iter()
                .any(|f| f.text.starts_with("[turn] apikey")),
            "{:?} {:?}",
            c.turn,
            c.findings
        );
    }

    #[test]
    fn variables_follow_go_s_pattern() {
        assert_eq!(
            variables("a$(X_1)b$(y)$(1no)$(no-dash)$(open"),
            vec!["X_1", "y"]
        );
    }

    #[test]
    fn near_misses_are_suggested() {
        assert_eq!(edit_distance("listen", "lisen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert!(unknown_key("http", "lisen", known::HTTP).contains("did you mean `listen`"));
        assert!(!unknown_key("http", "zzzzzz", known::HTTP).contains("did you mean"));
    }

    #[test]
    fn off_values_are_not_set() {
        for v in ["", "false", "0", "Off", " no "] {
            assert!(!is_set(v), "{v}");
        }
        assert!(is_set("true") && is_set("10"));
    }
}
