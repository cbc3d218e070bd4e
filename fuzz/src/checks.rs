//! Properties of every parser that takes outside input, shared by the
//! cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and the short proptest run
//! of the normal test command (`tests/it/fuzz_parsers.rs`, which includes this
//! file with `#[path]`). Each function must never panic for any input; where
//! a parser has invariants, they are asserted here.

#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use spreed_signaling::api::backend::BackendRoomRequest;
use spreed_signaling::api::client::{
    AuthKind, ClientKind, ClientMessage, HelloClientMessage, HelloV2Params, IdOnly,
    InternalAuthParams,
};
use spreed_signaling::backend::capabilities::Capabilities;
use spreed_signaling::backend::checksum;
use spreed_signaling::backend::client::{parse_response, unwrap_ocs};
use spreed_signaling::backend::token;
use spreed_signaling::config::goconf::{expand_env, split_list, IniFile};
use spreed_signaling::config::Config;
use spreed_signaling::hub::{FederationRewrite, Hub};

/// Secret of the fuzzed hub's backend.
pub const BACKEND_SECRET: &str = "fuzz-backend-secret";
/// Internal secret of the fuzzed hub.
pub const INTERNAL_SECRET: &str = "fuzz-internal-secret";
/// The fuzzed hub's only backend; nothing listens there, so the requests the
/// hub makes to Nextcloud fail at once.
pub const BACKEND_URL: &str = "http://127.0.0.1:9";

// ---------------------------------------------------------------------------
// Client messages (a WebSocket text frame, as `http::ws::on_text` parses it)

/// Parses one text frame the way the connection reader does, then the
/// nested `params` the hello handler parses later.
pub fn client_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(msg) => {
            if let Some(hello) = &msg.hello {
                hello_params(hello);
            }
        }
        Err(_) => {
            let _ = serde_json::from_str::<IdOnly>(text);
        }
    }
}

fn hello_params(hello: &HelloClientMessage) {
    if let Some(params) = hello.auth.as_ref().and_then(|a| a.params.as_ref()) {
        let _ = serde_json::from_str::<HelloV2Params>(params.get());
        let _ = serde_json::from_str::<InternalAuthParams>(params.get());
    }
}

struct FuzzHub {
    rt: tokio::runtime::Runtime,
    hub: Arc<Hub>,
}

fn hub_config() -> Config {
    Config::parse(&format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\n\
         [clients]\ninternalsecret = {INTERNAL_SECRET}\n[backend]\nbackends = nc1\ntimeout = 1\n\
         [nc1]\nurl = {BACKEND_URL}\nsecret = {BACKEND_SECRET}\n"
    ))
    .expect("fuzz config is valid")
}

fn fuzz_hub() -> &'static FuzzHub {
    static HUB: OnceLock<FuzzHub> = OnceLock::new();
    HUB.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let hub = rt.block_on(async {
            Hub::new(
                Arc::new(hub_config()),
                spreed_signaling::metrics::Metrics::new(),
                Arc::new(spreed_signaling::bus::LocalBus::new()),
            )
            .expect("hub")
        });
        FuzzHub { rt, hub }
    })
}

fn internal_hello() -> HelloClientMessage {
    let random = "0123456789abcdef0123456789abcdef0123456789abcdef";
    let token = checksum::calculate(INTERNAL_SECRET.as_bytes(), random.as_bytes(), b"");
    let text = format!(
        r#"{{"version":"1.0","auth":{{"type":"internal","params":{{"random":"{random}","token":"{token}"}}}}}}"#
    );
    serde_json::from_str(&text).expect("internal hello parses")
}

/// A WebSocket conversation with the hub: an internal client (the only kind
/// that needs no Nextcloud to log in) sends each line of `data` as a text
/// frame. Lines are handled as the connection reader handles them; a `hello`
/// line goes to the hello handler on a fresh connection. Afterwards the
/// session says `bye`, so the hub is empty again for the next input.
pub fn hub_messages(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let fh = fuzz_hub();
    let hub = &fh.hub;
    fh.rt.block_on(async {
        let outbox = hub.new_outbox();
        let ok = hub
            .hello(&outbox, Some("h"), internal_hello())
            .await
            .expect("internal hello succeeds");
        let sid = ok.sid.clone();
        for line in text.lines().take(64) {
            let msg = match serde_json::from_str::<ClientMessage>(line) {
                Ok(m) => m,
                Err(_) => continue,
            };
            if msg.kind == ClientKind::Hello {
                if let Some(hello) = msg.hello {
                    // Only hellos that need no Nextcloud: internal and
                    // resumes; client hellos would wait for the timeout.
                    let local = hello.resumeid.is_some()
                        || hello
                            .auth
                            .as_ref()
                            .is_some_and(|a| a.kind == AuthKind::Internal);
                    if local {
                        let conn = hub.new_outbox();
                        if let Ok(other) = hub.hello(&conn, msg.id.as_deref(), *hello).await {
                            hub.close_session(&other.sid, "fuzz");
                        }
                    }
                }
                continue;
            }
            // A room join waits for Nextcloud; its future is dropped, as
            // when the connection closes while it is pending.
            let _ = hub.handle(&sid, msg, line);
        }
        let bye_text = r#"{"type":"bye"}"#;
        let bye: ClientMessage = serde_json::from_str(bye_text).expect("bye parses");
        let _ = hub.handle(&sid, bye, bye_text);
        hub.close_session(&sid, "fuzz");
        // Let the hub's spawned requests to the (absent) backend finish.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    });
}

// ---------------------------------------------------------------------------
// Backend API (`POST /api/v1/room/{id}`): headers, checksum, body

/// How the fuzzed backend request signs its body.
#[derive(Debug, Clone)]
pub enum ChecksumMode {
    /// The correct checksum over random + body.
    Valid,
    /// The correct checksum with one hex digit changed.
    Mutated(usize),
    /// An arbitrary header value.
    Raw(String),
    /// No checksum header.
    Missing,
}

/// One fuzzed backend API request.
#[derive(Debug, Clone)]
pub struct BackendApiInput {
    /// Path segment after `/api/v1/room/`.
    pub room: String,
    /// `Content-Length`: `None` = the body's length, `Some(v)` = `v` verbatim.
    pub content_length: Option<String>,
    /// `Content-Type`.
    pub content_type: String,
    /// `Spreed-Signaling-Random`.
    pub random: String,
    /// `Spreed-Signaling-Checksum`.
    pub checksum: ChecksumMode,
    /// `Spreed-Signaling-Backend`.
    pub backend: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// Sends one request through the real router (header checks, checksum,
/// body parsing, hub) and checks the status: a request whose checksum does
/// not verify is refused with 403 and never reaches the hub.
pub fn backend_api(input: &BackendApiInput) {
    use axum::http::{Request, StatusCode};

    use tower::ServiceExt;

    let fh = fuzz_hub();
    let app = spreed_signaling::http::router(spreed_signaling::http::AppState {
        hub: fh.hub.clone(),
        tracker: tokio_util::task::TaskTracker::new(),
        shutdown: tokio_util::sync::CancellationToken::new(),
    });
    let room: String = input
        .room
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut req = Request::post(format!("/api/v1/room/{room}"));
    let length = input
        .content_length
        .clone()
        .unwrap_or_else(|| input.body.len().to_string());
    req = req.header("Content-Length", length.clone());
    req = req.header("Content-Type", input.content_type.clone());
    req = req.header(checksum::HEADER_RANDOM, input.random.clone());
    let valid = checksum::calculate(
        BACKEND_SECRET.as_bytes(),
        input.random.as_bytes(),
        &input.body,
    );
    let sum = match &input.checksum {
        ChecksumMode::Valid => Some(valid.clone()),
        ChecksumMode::Mutated(i) => {
            let mut b = valid.clone().into_bytes();
            let i = i % b.len();
            b[i] = if b[i] == b'0' { b'1' } else { b'0' };
            Some(String::from_utf8(b).expect("hex is ASCII"))
        }
        ChecksumMode::Raw(s) => Some(s.clone()),
        ChecksumMode::Missing => None,
    };
    if let Some(s) = &sum {
        req = req.header(checksum::HEADER_CHECKSUM, s.clone());
    }
    if let Some(b) = &input.backend {
        req = req.header(checksum::HEADER_BACKEND, b.clone());
    }
    // Header values the http crate refuses cannot arrive over the wire.
    let Ok(req) = req.body(axum::body::Body::from(input.body.clone())) else {
        return;
    };
    let status = fh.rt.block_on(async {
        let resp = app.oneshot(req).await.expect("router is infallible");
        let status = resp.status();
        let _ = axum::body::to_bytes(resp.into_body(), usize::MAX).await;
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        status
    });
    let verifies = sum.as_deref().is_some_and(|s| {
        checksum::verify(
            BACKEND_SECRET.as_bytes(),
            input.random.as_bytes(),
            &input.body,
            s,
        )
    });
    if !verifies {
        assert!(
            status.is_client_error(),
            "request without a valid checksum got {status}"
        );
    }
    if matches!(input.checksum, ChecksumMode::Mutated(_)) {
        assert_ne!(status, StatusCode::OK, "mutated checksum accepted");
    }
}

/// The backend API body alone.
pub fn backend_body(data: &[u8]) {
    let _ = serde_json::from_slice::<BackendRoomRequest>(data);
}

// ---------------------------------------------------------------------------
// Checksums

/// A checksum verifies for what it was computed over (if the random string
/// is long enough), and not after any change of the secret, the random
/// string, the body or the checksum bytes.
pub fn checksum_roundtrip(secret: &[u8], random: &[u8], body: &[u8], flip: usize, what: u8) {
    let sum = checksum::calculate(secret, random, body);
    assert_eq!(sum.len(), 64);
    if random.len() < checksum::MIN_RANDOM_LEN {
        assert!(!checksum::verify(secret, random, body, &sum));
        return;
    }
    assert!(checksum::verify(secret, random, body, &sum));
    // Lower-case hex only, as the Go server compares it (backend_parity).
    assert!(!checksum::verify(
        secret,
        random,
        body,
        &sum.to_ascii_uppercase()
    ));
    let mutate = |v: &[u8]| -> Vec<u8> {
        let mut v = v.to_vec();
        if v.is_empty() {
            v.push(0);
        } else {
            let i = flip % v.len();
            v[i] ^= 1 << (flip % 8);
        }
        v
    };
    match what % 4 {
        0 => {
            // HMAC pads short keys with zeros: "" and "\0" are the same
            // key, so only flip bits of non-empty keys.
            if !secret.is_empty() {
                let m = mutate(secret);
                assert!(!checksum::verify(&m, random, body, &sum));
            }
        }
        1 => {
            let m = mutate(random);
            // The MAC is over random || body: only a changed concatenation
            // must fail (moving a byte between the two cannot be detected).
            assert!(!checksum::verify(secret, &m, body, &sum));
        }
        2 => {
            let m = mutate(body);
            assert!(!checksum::verify(secret, random, &m, &sum));
        }
        _ => {
            let mut b = sum.clone().into_bytes();
            let i = flip % b.len();
            b[i] = if b[i] == b'0' { b'f' } else { b'0' };
            let m = String::from_utf8(b).expect("hex is ASCII");
            assert!(!checksum::verify(secret, random, body, &m));
        }
    }
}

/// Verifying an arbitrary checksum string never panics.
pub fn checksum_verify_any(random: &[u8], body: &[u8], sum: &str) {
    let _ = checksum::verify(BACKEND_SECRET.as_bytes(), random, body, sum);
}

// ---------------------------------------------------------------------------
// Nextcloud answers

/// An answer to `auth` / `room` / `ping` / `session`, and the capabilities
/// document, as the backend client reads them.
pub fn nextcloud_response(data: &[u8]) {
    let _ = parse_response(data);
    if let Ok(raw) = unwrap_ocs(data) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(raw.get()) {
            let caps = Capabilities::from_data(&v);
            if let Some(limit) = caps.session_ping_limit {
                assert!(limit > 0);
            }
        }
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = Capabilities::from_data(&v);
    }
}

// ---------------------------------------------------------------------------
// Backend URLs named by clients (hello `auth.url`) and Nextcloud
// (`Spreed-Signaling-Backend`)

/// Configured base URLs of the registry the URL target checks against.
pub const REGISTRY_BASES: &[&str] = &["https://cloud.example/nc", "http://127.0.0.1:9"];

fn registry(allow_all: bool) -> &'static spreed_signaling::backend::registry::BackendRegistry {
    use spreed_signaling::backend::registry::BackendRegistry;
    static REG: OnceLock<[BackendRegistry; 2]> = OnceLock::new();
    let regs = REG.get_or_init(|| {
        let mk = |allow_all: bool| {
            let mut cfg = hub_config();
            cfg.backend.allow_all = allow_all;
            cfg.backend.common_secret = "common".into();
            cfg.backend.backends[0].urls = REGISTRY_BASES.iter().map(|s| s.to_string()).collect();
            BackendRegistry::new(&cfg.backend)
        };
        [mk(false), mk(true)]
    });
    &regs[usize::from(allow_all)]
}

/// True for `[/index.php]/ocs/v{1,2}.php/apps/spreed/api/v<1-2 digits>/signaling/backend`.
fn is_talk_signaling_path(p: &str) -> bool {
    let p = p.strip_prefix("/index.php").unwrap_or(p);
    let Some(rest) = p
        .strip_prefix("/ocs/v2.php/apps/spreed/api/v")
        .or_else(|| p.strip_prefix("/ocs/v1.php/apps/spreed/api/v"))
    else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    (1..=2).contains(&digits) && &rest[digits..] == "/signaling/backend"
}

/// A client-chosen URL only selects a configured backend: the backend found
/// is one whose base URL the URL lies under, and the URL the server then
/// asks is that base plus Talk's signaling path, never anything else the
/// client wrote (user info, query, fragment, other paths).
pub fn backend_url(data: &[u8]) {
    use spreed_signaling::backend::registry::{capabilities_url, signaling_url, url_matches};
    let Ok(url) = std::str::from_utf8(data) else {
        return;
    };
    for base in REGISTRY_BASES {
        let out = signaling_url(base, url);
        let suffix = out
            .strip_prefix(base)
            .unwrap_or_else(|| panic!("{out:?} is not under {base:?}"));
        assert!(
            is_talk_signaling_path(suffix),
            "{url:?} made the server ask {out:?}"
        );
        assert!(capabilities_url(base).starts_with(base));
    }
    if let Some((backend, base)) = registry(false).for_url(url) {
        assert!(REGISTRY_BASES.contains(&base.as_str()), "{base:?}");
        assert_eq!(&*backend.id, "nc1");
        let parsed = reqwest::Url::parse(url).expect("a matched URL parses");
        let base_url = reqwest::Url::parse(&base).expect("bases parse");
        assert!(url_matches(&base_url, &parsed));
    }
    if let Some((backend, origin)) = registry(true).for_url(url) {
        if &*backend.id != "nc1" {
            // allowall: the backend is the URL's origin, nothing more.
            let parsed = reqwest::Url::parse(url).expect("a matched URL parses");
            assert_eq!(origin, parsed.origin().ascii_serialization());
            assert!(!origin.contains('@') && !origin.contains('?'));
        }
    }
}

// ---------------------------------------------------------------------------
// JWTs (hello v2)

const ED_PUB: &str = include_str!("../../tests/data/ed.pub");
const ED_RAW: &str = include_str!("../../tests/data/ed.raw");
const ED_KEY: &str = include_str!("../../tests/data/ed.key");
const EC_PUB: &str = include_str!("../../tests/data/ec.pub");
const EC_KEY: &str = include_str!("../../tests/data/ec.key");
const RSA_PUB: &str = include_str!("../../tests/data/rsa.pub");
const RSA_PKCS1_PUB: &str = include_str!("../../tests/data/rsa_pkcs1.pub");
const RSA_KEY: &str = include_str!("../../tests/data/rsa.key");

/// An arbitrary token checked with the test keys of every supported kind,
/// and with an arbitrary key; `now` is arbitrary too.
pub fn jwt_verify(token_text: &str, key: &str, now: i64) {
    for k in [ED_PUB, ED_RAW, EC_PUB, RSA_PUB, RSA_PKCS1_PUB, key] {
        if let Ok(c) = token::verify(token_text, k, now) {
            check_claims(&c, now);
        }
    }
}

fn check_claims(c: &token::HelloV2Claims, now: i64) {
    let leeway = token::LEEWAY_SECS as i64;
    assert!(c.iat <= now.saturating_add(leeway), "accepted before iat");
    assert!(c.exp.saturating_add(leeway) >= now, "accepted after exp");
}

/// Arbitrary claims, correctly signed with a test key of the kind `alg`
/// picks, verified at an arbitrary time: a correctly signed token with any
/// claims must never panic the verifier, and it is only accepted within
/// its lifetime.
pub fn jwt_claims(claims: &[u8], alg: u8, now: i64) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(claims) else {
        return;
    };
    let (alg, key, public) = match alg % 4 {
        0 => (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ED_KEY.as_bytes()),
            ED_PUB,
        ),
        1 => (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(ED_KEY.as_bytes()),
            ED_RAW,
        ),
        2 => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(EC_KEY.as_bytes()),
            EC_PUB,
        ),
        _ => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()),
            RSA_PUB,
        ),
    };
    let key = key.expect("test key loads");
    let Ok(t) = jsonwebtoken::encode(&Header::new(alg), &claims, &key) else {
        return;
    };
    let r = token::verify(&t, public, now);
    if let Ok(c) = &r {
        check_claims(c, now);
    }
    let has_times = claims.get("iat").is_some_and(|v| v.is_i64() || v.is_u64())
        && claims.get("exp").is_some_and(|v| v.is_i64() || v.is_u64());
    if !has_times {
        assert!(r.is_err(), "token without iat/exp accepted");
    }
    // A token signed with one key never verifies with another.
    let other = if public == EC_PUB { ED_PUB } else { EC_PUB };
    assert!(token::verify(&t, other, now).is_err());
}

// ---------------------------------------------------------------------------
// server.conf

/// Parses a goconf file and reads back every key it mentions: never panics,
/// never hangs on `%(name)s` references, and values follow goconf's rules
/// (trimmed, no inline comment: no `#` or `;` after a space or tab, no line
/// break except between continuation lines).
pub fn goconf(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(ini) = IniFile::parse(text) else {
        return;
    };
    let sections: Vec<String> = ini.sections().map(str::to_string).collect();
    let mut keys = Vec::new();
    for line in text.lines() {
        if let Some(pos) = line.find(['=', ':']) {
            keys.push(line[..pos].trim().to_ascii_lowercase());
        }
    }
    keys.sort();
    keys.dedup();
    for s in &sections {
        for k in &keys {
            if let Some(raw) = ini.get_raw(s, k) {
                for part in raw.split('\n') {
                    assert_eq!(part, part.trim(), "untrimmed value {raw:?}");
                    let b = part.as_bytes();
                    for i in 1..b.len() {
                        assert!(
                            !((b[i] == b'#' || b[i] == b';')
                                && (b[i - 1] == b' ' || b[i - 1] == b'\t')),
                            "inline comment left in {raw:?}"
                        );
                    }
                }
            }
            if let Some(v) = ini.get(s, k) {
                let _ = expand_env(&v);
                let _ = split_list(&v);
            }
            let _ = ini.get_bool(s, k, false);
            let _ = ini.get_u64(s, k, 0);
        }
    }
    let _ = Config::parse(text);
}

// ---------------------------------------------------------------------------
// SDP of client offers and answers, and trickled candidates (`mcu::sdp`)

/// An SDP as a client sends it in an offer or answer. `parse` never panics
/// and agrees with a reading of the lines as Janus reads them (media types
/// in any case, fields split on any whitespace): every `m=` line's type is
/// one of the registered ones, `audio`/`video` ones are reported; when all
/// addresses are blocked, `filter` leaves no candidate line in any case and
/// only ever removes lines; every line parsed as a candidate never panics,
/// and a candidate with an IP address is filtered when all are blocked.
pub fn sdp(data: &[u8]) {
    use spreed_signaling::config::IpList;
    use spreed_signaling::mcu::sdp;
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.lines().collect();
    let media_of = |l: &str| {
        l.strip_prefix("m=").map(|m| {
            m.split_ascii_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase()
        })
    };
    if let Ok(media) = sdp::parse(&text) {
        let kinds: Vec<String> = lines.iter().filter_map(|l| media_of(l)).collect();
        for k in &kinds {
            assert!(
                ["audio", "video", "text", "application", "message"].contains(&k.as_str()),
                "accepted media type {k:?}"
            );
        }
        assert_eq!(media.audio, kinds.iter().any(|k| k == "audio"));
        assert_eq!(media.video, kinds.iter().any(|k| k == "video"));
    }
    let none = IpList::default();
    let all = IpList::parse("0.0.0.0/0, ::/0").expect("valid list");
    for blocked in [&none, &all] {
        let out = sdp::filter(&text, &none, blocked);
        assert!(out.len() <= text.len());
        let mut rest = lines.iter();
        for l in out.lines() {
            assert!(rest.any(|x| *x == l), "filter added or reordered {l:?}");
        }
        if std::ptr::eq(blocked, &all) {
            // (`A=` is no attribute: `parse` refuses such an SDP.)
            for l in out.lines() {
                let name = l.strip_prefix("a=").and_then(|a| a.get(..10));
                assert!(
                    !name.is_some_and(|n| n.eq_ignore_ascii_case("candidate:")),
                    "candidate kept with everything blocked: {l:?}"
                );
            }
        }
    }
    for l in &lines {
        let c = l.strip_prefix("a=").unwrap_or(l);
        if let Ok(c) = sdp::parse_candidate(c) {
            if c.address.parse::<std::net::IpAddr>().is_ok() {
                assert!(sdp::is_filtered(&c, &none, &all));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The federation rewrite of frames (`hub::federation::rewrite`)

/// The names of one link the fuzzed frames are translated between: distinct
/// ones, ones before B's `hello` answer (no remote session id), and ones that
/// all collide (empty clouds included).
const FEDERATION_NAMES: [FederationRewrite<'static>; 3] = [
    FederationRewrite {
        local_sid: "L",
        remote_sid: Some("R"),
        local_room: "lroom",
        remote_room: "rroom",
        local_cloud: "@a.example",
        remote_cloud: "@b.example",
        local_base: "https://a.example",
        remote_base: "https://b.example",
    },
    FederationRewrite {
        local_sid: "L",
        remote_sid: None,
        local_room: "lroom",
        remote_room: "rroom",
        local_cloud: "@a.example",
        remote_cloud: "@b.example",
        local_base: "https://a.example",
        remote_base: "https://b.example",
    },
    FederationRewrite {
        local_sid: "x",
        remote_sid: Some("x"),
        local_room: "x",
        remote_room: "x",
        local_cloud: "",
        remote_cloud: "",
        local_base: "x",
        remote_base: "x",
    },
];

/// Every string value and every object key in `v`, and its node count.
fn json_parts<'a>(
    v: &'a Value,
    strings: &mut HashSet<&'a str>,
    keys: &mut HashSet<&'a str>,
) -> usize {
    match v {
        Value::String(s) => {
            strings.insert(s);
            1
        }
        Value::Array(a) => {
            1 + a
                .iter()
                .map(|x| json_parts(x, strings, keys))
                .sum::<usize>()
        }
        Value::Object(o) => {
            1 + o
                .iter()
                .map(|(k, x)| {
                    keys.insert(k);
                    json_parts(x, strings, keys)
                })
                .sum::<usize>()
        }
        _ => 1,
    }
}

/// A frame from the remote server B (after a first byte choosing the names
/// and whether a join waits for its answer) goes through the rewrite a link
/// applies. It never panics; B's `welcome`/`hello` are dropped and nothing
/// else; the type stays; only a `room` or `error` answer without an id or
/// with the waiting request's takes that id, no other id changes; the result holds no string that is not in the frame or one
/// of our names (or an actor id moved between the two clouds), no key but
/// the frame's and those the rewrite adds (`id`, a mention's `mention-id`
/// and `server`), at most three times the frame's nodes; a message from
/// B's id of our client names the client's id here; an offer or answer
/// keeps only the fields a client needs. The frame sent the other way
/// changes nothing but strings, into B's id of the client.
pub fn federation_rewrite(data: &[u8]) {
    let Some((&first, text)) = data.split_first() else {
        return;
    };
    let names = FEDERATION_NAMES[usize::from(first % 3)];
    let Ok(v) = serde_json::from_slice::<Value>(text) else {
        return;
    };
    let mut pending = (first & 4 != 0).then(|| "join-1".to_string());
    let had_pending = pending.clone();
    let kind = v["type"].as_str().map(str::to_string);
    let out = names.from_remote(v.clone(), &mut pending);
    let Some(out) = out else {
        assert!(
            matches!(kind.as_deref(), Some("welcome" | "hello")),
            "dropped a frame of type {kind:?}"
        );
        assert_eq!(pending, had_pending, "a dropped frame took the request id");
        return;
    };
    assert!(!matches!(kind.as_deref(), Some("welcome" | "hello")));
    assert_eq!(out["type"], v["type"], "the type changed");
    if !v.is_object() {
        assert_eq!(out, v, "a frame that is no object changed");
    }
    let answer = v.is_object()
        && matches!(kind.as_deref(), Some("room" | "error"))
        && (v.get("id").is_none() || v["id"] == "join-1");
    if answer && had_pending.is_some() {
        assert_eq!(out["id"], "join-1", "the answer lost the request id");
        assert!(pending.is_none(), "the request id was not taken");
    } else {
        assert_eq!(pending, had_pending, "the request id was taken by {kind:?}");
        assert_eq!(out["id"], v["id"], "the id changed");
    }

    let (mut in_strings, mut in_keys) = (HashSet::new(), HashSet::new());
    let in_nodes = json_parts(&v, &mut in_strings, &mut in_keys);
    let (mut out_strings, mut out_keys) = (HashSet::new(), HashSet::new());
    let out_nodes = json_parts(&out, &mut out_strings, &mut out_keys);
    assert!(
        out_nodes <= 3 * in_nodes + 1,
        "{in_nodes} nodes became {out_nodes}"
    );
    for k in &out_keys {
        assert!(
            in_keys.contains(k) || ["id", "mention-id", "server"].contains(k),
            "key {k:?} added"
        );
    }
    let sd_me = format!("sd:{}", names.local_sid);
    for s in &out_strings {
        let ok = in_strings.contains(s)
            || [
                names.local_sid,
                names.local_room,
                names.remote_base,
                sd_me.as_str(),
                "join-1",
                "users",
                "federated_users",
            ]
            .contains(s)
            || s.strip_suffix(names.remote_cloud)
                .is_some_and(|id| in_strings.contains(id))
            || in_strings.contains(format!("{s}{}", names.local_cloud).as_str());
        assert!(
            ok,
            "string {s:?} is neither in the frame nor one of our names"
        );
    }

    let remote = names.remote_sid.unwrap_or_default();
    if matches!(kind.as_deref(), Some("message" | "control")) {
        let body = kind.as_deref().unwrap_or_default();
        if v[body]["sender"]["sessionid"] == remote && v[body]["sender"].is_object() {
            assert_eq!(
                out[body]["sender"]["sessionid"], names.local_sid,
                "B's id of the client reached the client"
            );
        }
        let data = &out[body]["data"];
        if body == "message" && matches!(data["type"].as_str(), Some("offer" | "answer")) {
            if let Some(o) = data.as_object() {
                for k in o.keys() {
                    assert!(
                        ["to", "from", "type", "roomType", "payload", "sid"].contains(&k.as_str()),
                        "an offer kept {k:?}"
                    );
                }
            }
        }
    }

    // The other way: a client's frame for B.
    let sent = names.to_remote(v.clone());
    let (mut s_strings, mut s_keys) = (HashSet::new(), HashSet::new());
    assert_eq!(json_parts(&sent, &mut s_strings, &mut s_keys), in_nodes);
    assert_eq!(s_keys, in_keys, "keys changed on the way to B");
    match names.remote_sid {
        None => assert_eq!(sent, v, "changed without B's id of the client"),
        Some(r) => {
            let sd_remote = format!("sd:{r}");
            for s in &s_strings {
                assert!(
                    in_strings.contains(s) || *s == r || *s == sd_remote,
                    "string {s:?} added on the way to B"
                );
            }
        }
    }
}
