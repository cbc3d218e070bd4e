//! A short run of the fuzz properties (`fuzz/src/checks.rs`) on stable with
//! proptest: every parser of outside input is fed generated and mutated
//! input and must not panic (nor break its invariants). The long runs use
//! cargo-fuzz, see `fuzz/README.md`. Crashes found by fuzzing are kept
//! below as regression tests.

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use checks::{BackendApiInput, ChecksumMode};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// Field names and values of the protocol, so generated JSON reaches past
/// the first `missing field` error.
const KEYS: &[&str] = &[
    "id",
    "type",
    "hello",
    "version",
    "features",
    "auth",
    "url",
    "params",
    "token",
    "random",
    "backend",
    "resumeid",
    "room",
    "roomid",
    "sessionid",
    "message",
    "control",
    "recipient",
    "userid",
    "data",
    "transient",
    "key",
    "value",
    "ttl",
    "internal",
    "addsession",
    "updatesession",
    "removesession",
    "incall",
    "dialout",
    "status",
    "callid",
    "error",
    "flags",
    "user",
    "options",
    "actorId",
    "actorType",
    "roomType",
    "invite",
    "disinvite",
    "update",
    "delete",
    "participants",
    "changed",
    "users",
    "all",
    "alluserids",
    "userids",
    "sessionids",
    "properties",
    "permissions",
    "switchto",
    "sessions",
    "number",
    "ocs",
    "meta",
    "statuscode",
    "code",
    "details",
    "capabilities",
    "spreed",
    "config",
    "signaling",
    "hello-v2-token-key",
    "session-ping-limit",
    "iat",
    "exp",
    "sub",
    "userdata",
];

const WORDS: &[&str] = &[
    "hello",
    "bye",
    "room",
    "message",
    "control",
    "transient",
    "internal",
    "session",
    "user",
    "set",
    "remove",
    "addsession",
    "updatesession",
    "removesession",
    "incall",
    "dialout",
    "offer",
    "screen",
    "client",
    "1.0",
    "2.0",
    "invite",
    "disinvite",
    "update",
    "delete",
    "participants",
    "switchto",
    "auth",
    "error",
    "ok",
    "http://127.0.0.1:9",
    "http://127.0.0.1:9/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
    "room-1",
    "",
    "\u{0}",
    "\u{1F600}",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(WORDS).prop_map(|s| json!(s)),
        ".{0,12}".prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                let mut m = Map::new();
                for (k, v) in kv {
                    m.insert(k.to_string(), v);
                }
                Value::Object(m)
            }),
        ]
    })
}

/// A message with a known `type` and a body under the matching key.
fn client_json() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(&WORDS[..16]),
        json_value(),
        json_value(),
        any::<Option<u16>>(),
    )
        .prop_map(|(kind, body, inner, id)| {
            let mut body = body;
            if let Value::Object(m) = &mut body {
                m.insert("type".into(), inner);
            }
            let mut m = Map::new();
            m.insert("type".into(), json!(kind));
            m.insert(kind.to_string(), body);
            if let Some(id) = id {
                m.insert("id".into(), json!(id.to_string()));
            }
            Value::Object(m)
        })
}

/// A few byte edits of one of `seeds`.
fn mutated(seeds: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..6),
    )
        .prop_map(|(seed, edits)| {
            let mut b = seed.as_bytes().to_vec();
            for (pos, byte, op) in edits {
                let i = if b.is_empty() { 0 } else { pos % b.len() };
                match op {
                    0 if !b.is_empty() => b[i] = byte,
                    1 => b.insert(i, byte),
                    _ if !b.is_empty() => {
                        b.remove(i);
                    }
                    _ => {}
                }
            }
            b
        })
}

const CLIENT_SEEDS: &[&str] = &[
    r#"{"id":"1","type":"hello","hello":{"version":"1.0","features":["audio"],"auth":{"url":"http://127.0.0.1:9","params":{"userid":"a","ticket":"t"}}}}"#,
    r#"{"id":"2","type":"hello","hello":{"version":"2.0","auth":{"type":"client","url":"http://127.0.0.1:9","params":{"token":"a.b.c"}}}}"#,
    r#"{"type":"hello","hello":{"version":"1.0","auth":{"type":"internal","params":{"random":"0123456789abcdef0123456789abcdef","token":"00"}}}}"#,
    r#"{"type":"hello","hello":{"version":"1.0","resumeid":"r"}}"#,
    r#"{"id":"6","type":"room","room":{"roomid":"room-1","sessionid":"nc"}}"#,
    r#"{"id":"8","type":"message","message":{"recipient":{"type":"session","sessionid":"s"},"data":{"type":"offer","roomType":"screen"}}}"#,
    r#"{"id":"9","type":"message","message":{"recipient":{"type":"user","userid":"bob"},"data":{}}}"#,
    r#"{"type":"control","control":{"recipient":{"type":"room"},"data":1}}"#,
    r#"{"type":"transient","transient":{"type":"set","key":"k","value":{"a":1},"ttl":"2000"}}"#,
    r#"{"type":"internal","internal":{"type":"addsession","addsession":{"sessionid":"v1","roomid":"room-1","userid":"p","flags":2,"incall":1}}}"#,
    r#"{"type":"internal","internal":{"type":"addsession","addsession":{"sessionid":"v2","roomid":"room-1","options":{"actorId":"a","actorType":"phones"}}}}"#,
    r#"{"type":"internal","internal":{"type":"updatesession","updatesession":{"sessionid":"v1","roomid":"room-1","flags":3}}}"#,
    r#"{"type":"internal","internal":{"type":"removesession","removesession":{"sessionid":"v1","roomid":"room-1"}}}"#,
    r#"{"type":"internal","internal":{"type":"incall","incall":{"incall":7}}}"#,
    r#"{"type":"internal","internal":{"type":"dialout","dialout":{"type":"status","roomid":"room-1","status":{"callid":"c","status":"ringing"}}}}"#,
    r#"{"type":"message","message":{"recipient":{"type":"room"},"data":{"type":"offer"}}}"#,
];

const BACKEND_SEEDS: &[&str] = &[
    r#"{"type":"invite","invite":{"userids":["a"],"alluserids":["a","b"],"properties":{"name":"R"}}}"#,
    r#"{"type":"disinvite","disinvite":{"userids":["b"],"sessionids":["nc1"]}}"#,
    r#"{"type":"update","update":{"userids":["a"],"properties":{"name":"N"}}}"#,
    r#"{"type":"delete","delete":{"userids":["a"]}}"#,
    r#"{"type":"participants","participants":{"changed":[{"sessionId":"nc1","permissions":["publish-media"]}],"users":[]}}"#,
    r#"{"type":"incall","incall":{"incall":7,"changed":[{"sessionId":"nc1","inCall":7}]}}"#,
    r#"{"type":"incall","incall":{"incall":0,"all":true}}"#,
    r#"{"type":"message","message":{"data":{"chat":{"refresh":true}}}}"#,
    r#"{"type":"switchto","switchto":{"roomid":"r2","sessions":{"nc1":{"a":1},"nc2":null}}}"#,
    r#"{"type":"switchto","switchto":{"roomid":"r2","sessions":["nc1"]}}"#,
    r#"{"type":"dialout","dialout":{"number":"+4912345678","options":{"x":1}}}"#,
];

const NC_SEEDS: &[&str] = &[
    r#"{"type":"auth","auth":{"version":"1.0","userid":"u","user":{"displayname":"U"}}}"#,
    r#"{"ocs":{"meta":{"status":"ok","statuscode":200},"data":{"type":"room","room":{"roomid":"r","properties":{},"permissions":["control"]}}}}"#,
    r#"{"ocs":{"meta":{"status":"ok","statuscode":200},"data":{"type":"error","error":{"code":"no_such_room","message":"x","details":{}}}}}"#,
    r#"{"ocs":{"meta":{"status":"failure","statuscode":429},"data":{}}}"#,
    r#"{"ocs":{"data":{"capabilities":{"spreed":{"features":["a"],"config":{"signaling":{"hello-v2-token-key":"K","session-ping-limit":200}}}}}}}"#,
    "https://cloud.example/nc/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
];

const URL_SEEDS: &[&str] = &[
    "https://cloud.example/nc/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
    "https://cloud.example/nc/index.php/ocs/v1.php/apps/spreed/api/v1/signaling/backend/",
    "https://user:pw@cloud.example/nc/remote.php/dav/files/me/ocs/v2.php/cloud/capabilities?x=1#f",
    "https://CLOUD.example:443/nc/../nc2/ocs/v2.php/apps/spreed/api/v99/signaling/backend",
    "http://127.0.0.1:9/ocs/v2.php/apps/spreed/api/v4/signaling/backend",
    "http://127.0.0.1:09/%2e%2e/x",
    "https://evil.example/",
];

const SPEC_TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJodHRwczovL25leHRjbG91ZC1tYXN0ZXIubG9jYWwvIiwiaWF0IjoxNjU0ODQyMDgwLCJleHAiOjE2NTQ4NDIzODAsInN1YiI6ImFkbWluIiwidXNlcmRhdGEiOnsiZGlzcGxheW5hbWUiOiJBZG1pbmlzdHJhdG9yIn19.5rV0jh89_0fG2L-BUPtciu1q49PoYkLboj33EOdD0qQeYcvE7_di2r5WXM1WmKUCOGeX3hzn6qldDMrJBNuxvQ";
const TOKEN_SEEDS: &[&str] = &[
    SPEC_TOKEN,
    "eyJhbGciOiJFZERTQSJ9.e30.AA",
    "eyJhbGciOiJSUzI1NiJ9.eyJpYXQiOjEsImV4cCI6Mn0.AA",
    "eyJhbGciOiJIUzI1NiJ9.e30.AA",
    "eyJhbGciOiJub25lIn0.e30.",
];

const CONF_SEEDS: &[&str] = &[
    "top = level\nrem c\n; c\n# c\n[Backend]\n  Secret = abc#def\ninline = value # c\ninline2 = value\t; c\ncolon: yes\nmulti = first\n  second\nref = %(top)s-x\n[other]\nremote = kept\n",
    "[http]\nlisten = 127.0.0.1:9090\n[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\nblockkey = 0123456789abcdef\n[clients]\ninternalsecret = i\n[backend]\nbackends = one, two\ntimeout = 5\n[one]\nurl = https://a.example/\nsecret = s1\n[two]\nurls = https://b.example, https://c.example/nc\nsecret = $(S)\n[nats]\nurl = nats://loopback\n",
    "a = %(b)s%(b)s\nb = %(a)s%(a)s\n",
];

/// Lines of a goconf file built from its syntax elements.
fn conf_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("[backend]".to_string()),
        "\\[[a-z%()]{0,6}\\]?",
        "[ \t]*[a-zA-Z%()]{0,6}[ \t]*[=:][ \t]*[a-z#; \t%()$]{0,12}",
        "[ \t]*(rem|REM|#|;)[ \t].{0,8}",
        "[ \t]*[a-z#; \t%()]{0,10}",
        "[a-z]{1,3} = (%\\([a-z]{1,3}\\)s){1,4}",
    ];
    prop::collection::vec(line, 0..16).prop_map(|l| l.join("\n"))
}

fn backend_api_input() -> impl Strategy<Value = BackendApiInput> {
    let checksum = prop_oneof![
        4 => Just(ChecksumMode::Valid),
        1 => any::<usize>().prop_map(ChecksumMode::Mutated),
        1 => ".{0,70}".prop_map(ChecksumMode::Raw),
        1 => Just(ChecksumMode::Missing),
    ];
    let body = prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        mutated(BACKEND_SEEDS),
        prop::collection::vec(any::<u8>(), 0..64),
    ];
    (
        prop_oneof!["room-1", ".{0,8}"],
        prop_oneof![
            4 => Just(None),
            1 => "[0-9 a-z-]{0,8}".prop_map(Some),
        ],
        prop_oneof![
            4 => Just("application/json".to_string()),
            1 => ".{0,20}",
        ],
        prop_oneof!["[0-9a-f]{32,64}", ".{0,40}"],
        checksum,
        prop_oneof![
            2 => Just(None),
            2 => Just(Some("http://127.0.0.1:9".to_string())),
            1 => ".{0,20}".prop_map(Some),
        ],
        body,
    )
        .prop_map(
            |(room, content_length, content_type, random, checksum, backend, body)| {
                BackendApiInput {
                    room,
                    content_length,
                    content_type,
                    random,
                    checksum,
                    backend,
                    body,
                }
            },
        )
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn client_message_any_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        checks::client_message(&data);
    }

    #[test]
    fn client_message_json(v in client_json()) {
        checks::client_message(v.to_string().as_bytes());
    }

    #[test]
    fn client_message_mutated(data in mutated(CLIENT_SEEDS)) {
        checks::client_message(&data);
    }

    #[test]
    fn backend_body(data in prop_oneof![
        mutated(BACKEND_SEEDS),
        json_value().prop_map(|v| v.to_string().into_bytes()),
    ]) {
        checks::backend_body(&data);
    }

    #[test]
    fn nextcloud_response(data in prop_oneof![
        mutated(NC_SEEDS),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        json_value().prop_map(|v| json!({"ocs": {"meta": {"statuscode": 200}, "data": v}}).to_string().into_bytes()),
    ]) {
        checks::nextcloud_response(&data);
    }

    #[test]
    fn backend_url(url in prop_oneof![
        mutated(URL_SEEDS),
        "(https?://)?[a-z0-9.:@/%?#]{0,40}".prop_map(String::into_bytes),
        (prop::sample::select(URL_SEEDS), "[a-z0-9./%?#@:]{0,20}").prop_map(|(a, b)| format!("{a}{b}").into_bytes()),
    ]) {
        checks::backend_url(&url);
    }

    #[test]
    fn checksum(
        secret in prop::collection::vec(any::<u8>(), 0..80),
        random in prop::collection::vec(any::<u8>(), 0..80),
        body in prop::collection::vec(any::<u8>(), 0..128),
        flip in any::<usize>(),
        what in any::<u8>(),
        sum in ".{0,70}",
    ) {
        checks::checksum_roundtrip(&secret, &random, &body, flip, what);
        checks::checksum_verify_any(&random, &body, &sum);
    }

    #[test]
    fn goconf(text in prop_oneof![conf_text(), mutated(CONF_SEEDS).prop_map(|b| String::from_utf8_lossy(&b).into_owned())]) {
        checks::goconf(text.as_bytes());
    }
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn jwt_verify(token in prop_oneof![
        mutated(TOKEN_SEEDS).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[A-Za-z0-9_.-]{0,80}",
    ], key in ".{0,40}", now in any::<u32>()) {
        checks::jwt_verify(&token, &key, i64::from(now));
    }

    #[test]
    fn jwt_claims(
        claims in prop_oneof![
            json_value(),
            (any::<i64>(), any::<i64>(), json_value()).prop_map(|(iat, exp, sub)| json!({"iat": iat, "exp": exp, "sub": sub})),
            (any::<i64>(), any::<i64>()).prop_map(|(iat, exp)| json!({"iat": iat, "exp": exp})),
        ],
        alg in any::<u8>(),
        now in any::<u32>(),
    ) {
        checks::jwt_claims(claims.to_string().as_bytes(), alg, i64::from(now));
    }

    #[test]
    fn hub_messages(lines in prop::collection::vec(prop_oneof![
        client_json().prop_map(|v| v.to_string().into_bytes()),
        mutated(CLIENT_SEEDS),
    ], 1..8)) {
        let text: Vec<u8> = lines.join(&b'\n');
        checks::hub_messages(&text);
    }

    #[test]
    fn backend_api(input in backend_api_input()) {
        checks::backend_api(&input);
    }
}

// ---------------------------------------------------------------------------
// Regression tests: inputs that broke a property once.

/// `exp` (or `iat`) near i64::MAX overflowed `exp + leeway` in
/// `token::verify`: a panic with overflow checks (debug builds, fuzzing),
/// a wrapped "expired" in release.
#[test]
fn jwt_exp_near_i64_max_does_not_overflow() {
    for claims in [
        json!({"iat": 1_654_842_080i64, "exp": i64::MAX}),
        json!({"iat": 1_654_842_080i64, "exp": i64::MAX - 59}),
        json!({"iat": i64::MIN, "exp": i64::MAX}),
    ] {
        for alg in 0..4 {
            checks::jwt_claims(claims.to_string().as_bytes(), alg, 1_654_842_100);
        }
    }
}

/// Claims that are a JSON array were read as the struct's fields in
/// order (serde accepts a sequence for a derived struct): a correctly
/// signed `["", iat, exp, "admin"]` was accepted as a token for admin.
/// Found by the hour-long `jwt_claims` fuzz run.
#[test]
fn jwt_claims_that_are_an_array_are_refused() {
    let now = 1_654_842_100i64;
    let claims = json!(["", now - 10, now + 300, "admin"]);
    for alg in 0..4 {
        checks::jwt_claims(claims.to_string().as_bytes(), alg, now);
    }
    checks::jwt_claims(br#"["",5,55,"5",555555555555555555]"#, 0, 20);
}

/// References that multiply (`a = %(a)s%(a)s%(a)s%(a)s`) made
/// `IniFile::get` expand 4^17 copies: minutes of CPU and gigabytes of
/// memory for a five-line `server.conf`.
#[test]
fn goconf_multiplying_references_are_bounded() {
    use spreed_signaling::config::goconf::{IniFile, MAX_INTERPOLATION_WORK};
    let start = std::time::Instant::now();
    for text in [
        "a = %(a)s%(a)s%(a)s%(a)s\n",
        "a = %(b)s%(b)s%(b)s%(b)s\nb = %(a)s%(a)s%(a)s%(a)s\n",
        "a = %(b)s%(b)s%(b)s%(b)s%(b)s%(b)s%(b)s%(b)s\nb = %(c)s%(c)s%(c)s%(c)s%(c)s%(c)s%(c)s%(c)s\nc = %(a)s\n",
        "[s]\nx = %(x)s%(x)s%(x)s%(x)s%(x)s%(x)s%(x)s%(x)s%(x)s%(x)s%(x)s%(x)s%(x)s%(x)s%(x)s%(x)s\n",
    ] {
        let ini = IniFile::parse(text).unwrap();
        for (s, k) in [("default", "a"), ("default", "b"), ("s", "x")] {
            if let Some(v) = ini.get(s, k) {
                assert!(v.len() <= 2 * MAX_INTERPOLATION_WORK, "{} bytes", v.len());
            }
        }
        checks::goconf(text.as_bytes());
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
}

const SDP_SEEDS: &[&str] = &[
    "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=candidate:1 1 udp 2122260223 10.0.0.5 50000 typ host\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n",
    "v=0\nm=VIDEO\t9 UDP 96\na=CANDIDATE:2 1 UDP 1 4b5c.local 5 typ host\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\n",
];

/// SDP lines in the spellings Janus accepts and some it does not.
fn sdp_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        ".{0,40}",
        "[aA]=[cC][aA][nN][dD][iI][dD][aA][tT][eE]:[0-9a-z]{0,4}[ \t][0-9]{0,3}[ \t](udp|TCP|x)[ \t][0-9]{0,11} [0-9a-f.:]{0,20}(\\.local)? [0-9]{0,6}[ \t]typ (host|srflx|x)( raddr [0-9.]{0,15})?",
        "m=[ \t]?(audio|VIDEO|Video|application|text|message|x|vide0)[ \t]{1,2}9 UDP/TLS/RTP/SAVPF 111",
        "v=0",
    ];
    (prop::collection::vec(line, 0..12), any::<bool>())
        .prop_map(|(lines, crlf)| lines.join(if crlf { "\r\n" } else { "\n" }))
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn sdp(data in prop_oneof![
        sdp_text().prop_map(String::into_bytes),
        mutated(SDP_SEEDS),
    ]) {
        checks::sdp(&data);
    }
}

/// Keys and strings of the frames a remote signaling server sends a
/// federated link, and the names of the links `checks::federation_rewrite`
/// uses, so generated frames hit every rewrite.
const FED_KEYS: &[&str] = &[
    "id",
    "type",
    "sender",
    "recipient",
    "sessionid",
    "sessionId",
    "data",
    "from",
    "to",
    "payload",
    "roomType",
    "sid",
    "extra",
    "action",
    "peerId",
    "key",
    "target",
    "join",
    "leave",
    "message",
    "roomid",
    "chat",
    "comment",
    "comments",
    "actorType",
    "actorId",
    "lastEditActorType",
    "lastEditActorId",
    "token",
    "messageParameters",
    "mention-user1",
    "mention-call",
    "server",
    "mention-id",
    "parent",
    "update",
    "changed",
    "users",
    "flags",
    "disinvite",
    "room",
    "details",
    "error",
    "transient",
];
const FED_WORDS: &[&str] = &[
    "R",
    "L",
    "x",
    "",
    "rroom",
    "lroom",
    "sd:R",
    "sd:L",
    "sd:",
    "alice@a.example",
    "carol",
    "carol@b.example",
    "users",
    "federated_users",
    "offer",
    "answer",
    "forceMute",
    "user",
    "call",
    "session",
    "room",
    "participants",
    "roomlist",
    "chat",
    "update",
    "flags",
    "https://a.example",
    "https://b.example",
];
const FED_TYPES: &[&str] = &[
    "welcome",
    "hello",
    "room",
    "error",
    "message",
    "control",
    "transient",
    "event",
    "bye",
    "x",
];
const FED_SEEDS: &[&str] = &[
    r#"{"type":"message","message":{"sender":{"type":"session","sessionid":"R"},"recipient":{"type":"session","sessionid":"R"},"data":{"type":"offer","from":"R","to":"S2","payload":{"sdp":"v=0"},"extra":1}}}"#,
    r#"{"type":"event","event":{"target":"room","type":"message","message":{"roomid":"rroom","data":{"chat":{"comment":{"actorType":"users","actorId":"carol","token":"rroom","messageParameters":{"mention-user1":{"type":"user","id":"dave"},"mention-call":{"type":"call","id":"rroom"}},"parent":{"actorType":"federated_users","actorId":"alice@a.example"}}}}}}}"#,
    r#"{"type":"event","event":{"target":"participants","type":"update","update":{"roomid":"rroom","changed":[{"sessionId":"R","actorType":"federated_users","actorId":"alice@a.example"}],"users":[{"sessionid":"R"}]}}}"#,
    r#"{"type":"error","error":{"code":"x","details":{"room":{"roomid":"rroom"}}}}"#,
];

fn fed_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        prop::sample::select(FED_WORDS).prop_map(|s| json!(s)),
        leaf(),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FED_KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// A frame from the remote server with a known `type` and its body.
fn fed_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(FED_TYPES),
        fed_value(),
        any::<Option<u16>>(),
    )
        .prop_map(|(kind, body, id)| {
            let mut m = Map::new();
            m.insert("type".into(), json!(kind));
            m.insert(kind.to_string(), body);
            if let Some(id) = id {
                m.insert("id".into(), json!(id.to_string()));
            }
            serde_json::to_vec(&Value::Object(m)).unwrap()
        })
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn federation_rewrite(names in any::<u8>(), frame in prop_oneof![fed_frame(), mutated(FED_SEEDS)]) {
        let mut data = vec![names];
        data.extend(frame);
        checks::federation_rewrite(&data);
    }
}
