//! A Janus gateway of the test's own (Debian's `janus`), started from a
//! copy of `/etc/janus` with only the videoroom plugin and the WebSocket
//! transport on 127.0.0.1 and a free port, and a small observer that lists
//! the videoroom rooms.

use std::path::PathBuf;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const PLUGINS_OFF: &str = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,\
libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,\
libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so";
const EVH_OFF: &str = "libjanus_sampleevh.so,libjanus_gelfevh.so,libjanus_mqttevh.so,\
libjanus_nanomsgevh.so,libjanus_rabbitmqevh.so";
const TRANSPORTS_OFF: &str =
    "libjanus_http.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so";

/// Janus's `reclaim_session_timeout` in tests (seconds): a session whose
/// server restarted is kept that long for it to claim (as the README
/// tells admins to set).
pub const RECLAIM: u64 = 30;

/// True when Debian's `janus` is installed.
pub fn available() -> bool {
    std::path::Path::new("/usr/bin/janus").exists() && std::path::Path::new("/etc/janus").exists()
}

/// A running Janus (killed on drop).
pub struct Janus {
    child: Option<std::process::Child>,
    pub port: u16,
    pub dir: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Janus {
    /// Starts Janus and waits until its WebSocket port accepts connections.
    pub async fn start() -> Janus {
        Self::start_with(None).await
    }

    /// The same with Janus's `session_timeout` (seconds) set.
    pub async fn start_with(session_timeout: Option<u64>) -> Janus {
        Self::start_configured(session_timeout, false).await
    }

    /// The same with `full_trickle` (Janus trickles its own candidates
    /// instead of putting them into its SDPs).
    pub async fn start_configured(session_timeout: Option<u64>, full_trickle: bool) -> Janus {
        Self::start_on(free_port(), session_timeout, full_trickle, None, RECLAIM).await
    }

    /// Janus keeping a session whose WebSocket went away for `reclaim`
    /// seconds (`reclaim_session_timeout`; the others get
    /// [`RECLAIM`]); 0 destroys it at once (Janus's default).
    pub async fn start_reclaiming(reclaim: u64) -> Janus {
        Self::start_on(free_port(), None, false, None, reclaim).await
    }

    /// Janus on `port` whose WebSocket event handler sends every event to
    /// `events` (subprotocol `janus-events`), with media statistics every
    /// second.
    pub async fn start_with_events(port: u16, events: &str) -> Janus {
        Self::start_on(port, None, false, Some(events), RECLAIM).await
    }

    async fn start_on(
        port: u16,
        session_timeout: Option<u64>,
        full_trickle: bool,
        events: Option<&str>,
        reclaim: u64,
    ) -> Janus {
        let dir = super::fresh_dir("janus");
        for entry in std::fs::read_dir("/etc/janus").unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        let edit = |file: &str, pairs: &[(&str, String)]| {
            let path = dir.join(file);
            let mut text = std::fs::read_to_string(&path).unwrap();
            for (from, to) in pairs {
                assert!(text.contains(from), "{file}: `{from}` not found");
                text = text.replace(from, to);
            }
            std::fs::write(path, text).unwrap();
        };
        edit(
            "janus.jcfg",
            &[
                (
                    "#disable = \"libjanus_voicemail.so,libjanus_recordplay.so\"",
                    format!("disable = \"{PLUGINS_OFF}\""),
                ),
                (
                    "#disable = \"libjanus_rabbitmq.so\"",
                    format!("disable = \"{TRANSPORTS_OFF}\""),
                ),
                (
                    "#disable = \"libjanus_jsonlog.so\"",
                    "disable = \"libjanus_jsonlog.so\"".to_string(),
                ),
                (
                    "#session_timeout = 60",
                    format!("session_timeout = {}", session_timeout.unwrap_or(60)),
                ),
                (
                    "#full_trickle = true",
                    format!("full_trickle = {full_trickle}"),
                ),
                (
                    "#reclaim_session_timeout = 0",
                    format!("reclaim_session_timeout = {reclaim}"),
                ),
            ],
        );
        if let Some(url) = events {
            edit(
                "janus.jcfg",
                &[
                    ("#broadcast = true", "broadcast = true".to_string()),
                    (
                        "#disable = \"libjanus_sampleevh.so\"",
                        format!("disable = \"{EVH_OFF}\""),
                    ),
                    ("#stats_period = 5", "stats_period = 1".to_string()),
                ],
            );
            edit(
                "janus.eventhandler.wsevh.jcfg",
                &[
                    ("enabled = false", "enabled = true".to_string()),
                    (
                        "backend = \"ws://your.websocket.here\"",
                        format!("backend = \"{url}\"\n\tsubprotocol = \"janus-events\""),
                    ),
                ],
            );
        }
        edit(
            "janus.transport.websockets.jcfg",
            &[
                ("ws_port = 8188", format!("ws_port = {port}")),
                (
                    "#ws_ip = \"192.168.0.1\"",
                    "ws_ip = \"127.0.0.1\"".to_string(),
                ),
            ],
        );
        let mut j = Janus {
            child: None,
            port,
            dir,
        };
        j.spawn().await;
        j
    }

    async fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.join("janus.log")).unwrap();
        let child = std::process::Command::new("janus")
            .arg("-F")
            .arg(&self.dir)
            .arg("-o")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("janus must be installed (scripts/test installs it)");
        self.child = Some(child);
        super::eventually("janus listens", Duration::from_secs(20), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// The `[mcu]` section for this Janus.
    pub fn mcu_section(&self, extra: &str) -> String {
        format!(
            "[mcu]\ntype = janus\nurl = {}\ntimeout = 3\n{extra}",
            self.url()
        )
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills and starts again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The test's own Janus session with one videoroom handle, to look at the
/// rooms the server made.
pub struct Observer {
    ws: Ws,
    session: u64,
    handle: u64,
    next: u64,
}

impl Observer {
    pub async fn connect(url: &str) -> Observer {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("janus-protocol"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut o = Observer {
            ws,
            session: 0,
            handle: 0,
            next: 0,
        };
        let r = o.request(json!({"janus": "create"})).await;
        o.session = r["data"]["id"].as_u64().unwrap();
        let r = o
            .request(json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}))
            .await;
        o.handle = r["data"]["id"].as_u64().unwrap();
        o
    }

    async fn request(&mut self, mut msg: Value) -> Value {
        self.next += 1;
        let t = format!("obs{}", self.next);
        msg["transaction"] = json!(t);
        if self.session != 0 {
            msg["session_id"] = json!(self.session);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let m = tokio::time::timeout(super::TIMEOUT, self.ws.next())
                .await
                .expect("Janus answers")
                .expect("Janus connection open")
                .unwrap();
            if let Message::Text(t2) = m {
                let v: Value = serde_json::from_str(&t2).unwrap();
                if v["transaction"] == t && v["janus"] != "ack" {
                    return v;
                }
            }
        }
    }

    /// The videoroom rooms (`list`).
    pub async fn rooms(&mut self) -> Vec<Value> {
        let body = json!({"request": "list"});
        let r = self
            .request(json!({"janus": "message", "handle_id": self.handle, "body": body}))
            .await;
        r["plugindata"]["data"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Destroys a videoroom room (its participants hear `destroyed`).
    pub async fn destroy(&mut self, room: &Value) {
        let body = json!({"request": "destroy", "room": room});
        let r = self
            .request(json!({"janus": "message", "handle_id": self.handle, "body": body}))
            .await;
        assert_eq!(r["plugindata"]["data"]["videoroom"], "destroyed", "{r}");
    }

    /// The room whose description is `<session>|<stream>`.
    pub async fn room_of(&mut self, session: &str, stream: &str) -> Option<Value> {
        let d = format!("{session}|{stream}");
        self.rooms()
            .await
            .into_iter()
            .find(|r| r["description"] == d.as_str())
    }

    /// Waits until the room of `<session>|<stream>` exists (or not).
    pub async fn wait_room(&mut self, session: &str, stream: &str, exists: bool) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + super::TIMEOUT;
        loop {
            let r = self.room_of(session, stream).await;
            if r.is_some() == exists {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "room {session}|{stream} exists={} for too long",
                !exists
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A hand-made offer with one audio m-line Janus 1.1.2 accepts (no media
/// flows): enough for publishing, permission and answer-shape tests.
pub fn audio_offer() -> String {
    let fp: Vec<String> = (0..32).map(|i| format!("{:02X}", i * 7 % 256)).collect();
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=ice-options:trickle",
        &format!("a=fingerprint:sha-256 {}", fp.join(":")),
        "a=setup:actpass",
        "a=mid:0",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=ssrc:1234 cname:test",
        "",
    ]
    .join("\r\n")
}

/// The same offer with a video m-line added.
pub fn audio_video_offer() -> String {
    let base = audio_offer().replace("a=group:BUNDLE 0", "a=group:BUNDLE 0 1");
    let fp_line = base
        .lines()
        .find(|l| l.starts_with("a=fingerprint"))
        .unwrap()
        .to_string();
    let video = [
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=ice-options:trickle",
        &fp_line,
        "a=setup:actpass",
        "a=mid:1",
        "a=sendonly",
        "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000",
        "a=ssrc:5678 cname:test",
        "",
    ]
    .join("\r\n");
    format!("{base}{video}")
}

/// `/api/v1/serverinfo`'s Janus block (`sfu.janus`) of a server.
pub async fn janus_info(ts: &crate::support::TestServer) -> Value {
    let v: Value = reqwest::get(format!("{}/api/v1/serverinfo", ts.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["sfu"]["mode"], "janus", "{v}");
    v["sfu"]["janus"].clone()
}

/// Waits until the server reports its Janus (`/api/v1/serverinfo`,
/// `sfu.janus.connected`) as connected or not.
pub async fn wait_janus(ts: &crate::support::TestServer, connected: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let j = janus_info(ts).await;
        if j["connected"] == connected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "Janus never became connected={connected}: {j}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
