//! Federation over real sockets: two servers of ours, each with its own fake
//! Nextcloud. A user of NC-A ("alice") joins a conversation hosted by NC-B
//! through server A, which dials server B on her behalf.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support::*;
use serde_json::{json, Value};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub(crate) fn data(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A token NC-B would mint for alice of NC-A.
pub(crate) fn token(nc_b: &FakeNextcloud, nc_a: &FakeNextcloud, key: &str) -> String {
    let pem = data(key);
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let cloud = format!("alice@{}", nc_a.url.trim_start_matches("http://"));
    let claims = json!({"iss": format!("{}/", nc_b.url), "iat": now(), "exp": now() + 60, "sub": cloud,
        "userdata": {"displayname": "Alice", "actorType": "federated_users", "actorId": cloud}});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .unwrap()
}

struct Setup {
    a: TestServer,
    b: TestServer,
}

/// Server A on NC-A and server B on NC-B (which supports federation).
async fn setup(extra_a: &str) -> Setup {
    let nc_a = FakeNextcloud::start().await;
    let nc_b = FakeNextcloud::start().await;
    {
        let mut st = nc_b.state.lock().unwrap();
        st.token_key = Some(data("ec.pub"));
        st.extra_features = vec!["federation-v2".into()];
    }
    // B is on loopback over plain ws://, refused by default.
    let extra_a = format!("{extra_a}[federation]\nallowips = 127.0.0.1\nallowhttp = true\n");
    let a = TestServer::start_on(nc_a, &extra_a).await;
    let b = TestServer::start_on(nc_b, "").await;
    Setup { a, b }
}

impl Setup {
    fn federation(&self, signaling: &str, token: &str) -> Value {
        json!({"signaling": signaling, "url": self.b.nc.backend_url(), "roomid": "remotetoken", "token": token})
    }

    fn token(&self) -> String {
        token(&self.b.nc, &self.a.nc, "ec.key")
    }

    /// Alice on A joins `remotetoken` on B through `signaling`.
    async fn alice(&self, signaling: &str, features: &[&str]) -> Client {
        let mut c = self.a.connect().await;
        c.expect_type("welcome").await;
        c.send(json!({"id": "h", "type": "hello", "hello": {"version": "1.0", "features": features, "auth": {"url": self.a.nc.backend_url(), "params": {"userid": "alice"}}}})).await;
        let h = c.expect_type("hello").await;
        c.session_id = h["hello"]["sessionid"].as_str().unwrap().to_string();
        c.resume_id = h["hello"]["resumeid"].as_str().unwrap().to_string();
        c.send(json!({"id": "7", "type": "room", "room": {"roomid": "localtoken", "sessionid": "nc-alice", "federation": self.federation(signaling, &self.token())}})).await;
        let r = c
            .wait_for(|m| m["type"] == "room" || m["type"] == "error")
            .await;
        assert_eq!(
            r,
            json!({"id": "7", "type": "room", "room": {"roomid": "localtoken", "properties": {"name": "Room remotetoken", "type": 2}}})
        );
        c
    }

    fn signaling(&self) -> String {
        format!("{}/", self.b.url)
    }
}

/// The session id B gave A's proxy session for alice: from bob's join event.
async fn remote_id_of_alice(bob: &mut Client) -> String {
    let j = bob
        .wait_for(|m| {
            m["event"]["type"] == "join"
                && m["event"]["join"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|e| e["federated"] == true))
        })
        .await;
    let e = j["event"]["join"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["federated"] == true)
        .unwrap()
        .clone();
    assert!(e["userid"]
        .as_str()
        .unwrap()
        .starts_with("alice@127.0.0.1:"));
    e["sessionid"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_federated_user_and_local_users_share_a_call() {
    let s = setup("").await;
    let mut bob = s.b.joined_client("bob", "remotetoken").await;
    let mut alice = s.alice(&s.signaling(), &["chat-relay"]).await;
    let r = remote_id_of_alice(&mut bob).await;
    assert_ne!(r, alice.session_id);
    // Alice sees bob, and herself under her own session id.
    alice.wait_join_of(&bob.session_id).await;
    alice.wait_join_of(&alice.session_id.clone()).await;
    // NC-B was asked with the actor of the token; NC-A never was.
    let join =
        s.b.nc
            .wait_for("room", |r| r["room"]["sessionid"] == "nc-alice")
            .await;
    assert_eq!(join.body["room"]["actortype"], "federated_users");
    assert!(s.a.nc.requests("room").is_empty());

    // Messages both ways, with the ids each side knows.
    alice
        .message_to(
            json!({"type": "session", "sessionid": bob.session_id}),
            json!({"type": "offer", "roomType": "video", "payload": {"sdp": "x"}, "from": "f", "to": "t"}),
        )
        .await;
    let m = bob.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["sender"]["sessionid"], r.as_str());
    bob.send(json!({"type": "message", "message": {"recipient": {"type": "session", "sessionid": r}, "data": {"type": "answer", "roomType": "video", "payload": {"sdp": "y"}, "from": bob.session_id, "to": r, "nick": "x"}}})).await;
    let m = alice.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["sender"]["sessionid"], bob.session_id.as_str());
    assert_eq!(m["message"]["data"]["to"], alice.session_id.as_str());
    assert!(m["message"]["data"].get("nick").is_none(), "{m}");
    // Control both ways.
    bob.send(json!({"type": "control", "control": {"recipient": {"type": "session", "sessionid": r}, "data": {"action": "forceMute", "peerId": r}}})).await;
    let m = alice.wait_for(|m| m["type"] == "control").await;
    assert_eq!(m["control"]["data"]["peerId"], alice.session_id.as_str());
    alice
        .send(json!({"type": "control", "control": {"recipient": {"type": "session", "sessionid": bob.session_id}, "data": {"x": 1}}}))
        .await;
    let m = bob.wait_for(|m| m["type"] == "control").await;
    assert_eq!(m["control"]["sender"]["sessionid"], r.as_str());

    // Room events of NC-B reach alice under the local room id; chat is
    // relayed with actors seen from her side.
    ts_request(&s.b, json!({"type": "message", "message": {"data": {"type": "chat", "chat": {"refresh": true, "comment": {"actorType": "users", "actorId": "bob", "token": "remotetoken", "message": "hi"}}}}})).await;
    let m = alice.wait_for(|m| m["event"]["type"] == "message").await;
    assert_eq!(m["event"]["message"]["roomid"], "localtoken");
    let c = &m["event"]["message"]["data"]["chat"]["comment"];
    assert_eq!(c["actorType"], "federated_users");
    assert!(c["actorId"].as_str().unwrap().starts_with("bob@127.0.0.1:"));
    assert_eq!(c["token"], "localtoken");
    ts_request(&s.b, json!({"type": "incall", "incall": {"incall": 7, "changed": [{"sessionId": "nc-alice", "inCall": 7}], "users": [{"sessionId": "nc-alice", "inCall": 7}, {"sessionId": "nc-bob", "inCall": 0}]}})).await;
    let m = alice
        .wait_for(|m| m["event"]["target"] == "participants")
        .await;
    assert_eq!(m["event"]["update"]["roomid"], "localtoken");
    assert_eq!(
        m["event"]["update"]["changed"][0]["sessionId"],
        alice.session_id.as_str()
    );

    // Transient session data: sd:L for alice, sd:R on B.
    alice.send(json!({"type": "transient", "transient": {"type": "set", "key": format!("sd:{}", alice.session_id), "value": 1}})).await;
    let m = bob.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(m["transient"]["key"], format!("sd:{r}"));
    let m = alice.wait_for(|m| m["type"] == "transient").await;
    assert_eq!(m["transient"]["key"], format!("sd:{}", alice.session_id));

    // Leaving: the reply comes from B, bob sees her go, NC-B hears it.
    alice
        .send(json!({"id": "l", "type": "room", "room": {"roomid": ""}}))
        .await;
    let m = alice.wait_for(|m| m["type"] == "room").await;
    assert_eq!(
        m,
        json!({"id": "l", "type": "room", "room": {"roomid": ""}})
    );
    let l = bob.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([r]));
    let leave =
        s.b.nc
            .wait_for("room", |r| {
                r["room"]["action"] == "leave" && r["room"]["sessionid"] == "nc-alice"
            })
            .await;
    // With the actor of the token, like the join (as the Go server).
    assert_eq!(leave.body["room"]["actortype"], "federated_users");
    assert_eq!(
        leave.body["room"]["actorid"], join.body["room"]["actorid"],
        "{}",
        leave.body
    );
    assert!(leave.body["room"]["actorid"].is_string(), "{}", leave.body);
    s.a.stop().await;
    s.b.stop().await;
}

async fn ts_request(ts: &TestServer, body: Value) {
    let (status, _) = ts.backend_request("remotetoken", &body).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_federated_session_is_pinged_to_its_own_nextcloud() {
    let s = setup("[backend]\npinginterval = 1\n").await;
    let _alice = s.alice(&s.signaling(), &[]).await;
    let ping =
        s.a.nc
            .wait_for("ping", |p| p["ping"]["roomid"] == "localtoken")
            .await;
    assert_eq!(ping.body["ping"]["entries"][0]["sessionid"], "nc-alice");
    assert_eq!(ping.body["ping"]["entries"][0]["userid"], "alice");
    s.a.stop().await;
    s.b.stop().await;
}

/// Every error of a federated join carries the id of the room request.
#[tokio::test]
async fn federated_join_errors_carry_the_request_id() {
    let s = setup("").await;
    let join = |fed: Value| json!({"id": "j", "type": "room", "room": {"roomid": "localtoken", "sessionid": "nc-alice", "federation": fed}});
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        format!("http://127.0.0.1:{port}/")
    };
    let other_key = token(&s.b.nc, &s.a.nc, "ec2.key");
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"signaling": s.signaling(), "url": s.b.nc.backend_url(), "roomid": "remotetoken"}),
            "invalid_format",
        ),
        (
            json!({"signaling": "not a url", "url": s.b.nc.backend_url(), "token": "x"}),
            "invalid_format",
        ),
        (s.federation(&closed, &s.token()), "federation_error"),
        (s.federation(&s.signaling(), &other_key), "invalid_token"),
        (s.federation(&s.signaling(), "a.b.c"), "invalid_token"),
        (
            json!({"signaling": s.signaling(), "url": s.b.nc.backend_url(), "roomid": "forbidden-room", "token": s.token()}),
            "no_such_room",
        ),
    ];
    for (fed, code) in cases {
        let mut c = s.a.client(Some("alice")).await;
        c.send(join(fed.clone())).await;
        let e = c.wait_for(|m| m["type"] == "error").await;
        assert_eq!(e["id"], "j", "{fed}: {e}");
        assert_eq!(e["error"]["code"], code, "{fed}: {e}");
        if code == "federation_error" {
            assert_eq!(e["error"]["details"]["code"], "network_error");
        }
    }
    s.a.stop().await;
    s.b.stop().await;
    // NC-B without federation: federation_unsupported.
    let s = setup("").await;
    s.b.nc.state.lock().unwrap().extra_features.clear();
    let mut c = s.a.client(Some("alice")).await;
    c.send(join(s.federation(&s.signaling(), &s.token()))).await;
    let e = c.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["id"], "j");
    assert_eq!(e["error"]["code"], "federation_unsupported", "{e}");
    s.a.stop().await;
    s.b.stop().await;
}

/// A signaling server without `federation` in its upgrade header (e.g. an
/// old one) is refused with `federation_unsupported`.
#[tokio::test]
async fn servers_without_federation_are_refused() {
    let s = setup("").await;
    // A WebSocket server that upgrades without the header.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                    use futures_util::SinkExt;
                    let _ = ws
                        .send(tokio_tungstenite::tungstenite::Message::Text(
                            json!({"type": "welcome", "welcome": {"features": []}})
                                .to_string()
                                .into(),
                        ))
                        .await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            });
        }
    });
    let mut c = s.a.client(Some("alice")).await;
    c.send(json!({"id": "j", "type": "room", "room": {"roomid": "localtoken", "sessionid": "nc-alice", "federation": s.federation(&format!("http://127.0.0.1:{port}/"), &s.token())}})).await;
    let e = c.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["id"], "j");
    assert_eq!(e["error"]["code"], "federation_unsupported");
    s.a.stop().await;
    s.b.stop().await;
}

/// A TCP relay between A and B whose connections the test can cut.
struct Relay {
    url: String,
    cut: tokio::sync::broadcast::Sender<()>,
    target: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Relay {
    /// Cuts the relayed connections; returns the `federation_interrupted`
    /// event `alice` sees.
    async fn cut(&self, alice: &mut Client) -> Value {
        self.cut.send(()).unwrap();
        alice
            .wait_for(|m| m["event"]["type"] == "federation_interrupted")
            .await
    }

    /// Points the relay at a closed port and cuts it (`alice` saw the
    /// interruption); returns where it pointed before.
    async fn take_down(&self, alice: &mut Client) -> String {
        let before = self.target.lock().unwrap().clone();
        *self.target.lock().unwrap() = "127.0.0.1:9".to_string();
        self.cut(alice).await;
        before
    }
}

async fn relay(target: &str) -> Relay {
    let target = std::sync::Arc::new(std::sync::Mutex::new(
        target.trim_start_matches("http://").to_string(),
    ));
    let target2 = target.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (cut, _) = tokio::sync::broadcast::channel::<()>(4);
    let cut2 = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let target = target2.lock().unwrap().clone();
            let mut stop = cut2.subscribe();
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = stop.recv() => {}
                }
            });
        }
    });
    Relay { url, cut, target }
}

#[tokio::test]
async fn a_cut_link_is_resumed_and_nothing_is_lost() {
    let s = setup("").await;
    let relay = relay(&s.b.url).await;
    let mut bob = s.b.joined_client("bob", "remotetoken").await;
    let mut alice = s.alice(&relay.url, &[]).await;
    let r = remote_id_of_alice(&mut bob).await;
    let m = relay.cut(&mut alice).await;
    assert_eq!(m["event"]["target"], "room");
    // Sent while the link is down: delivered once it is back.
    alice
        .message_to(
            json!({"type": "session", "sessionid": bob.session_id}),
            json!({"during": "gap"}),
        )
        .await;
    let m = alice
        .wait_for(|m| m["event"]["type"] == "federation_resumed")
        .await;
    assert_eq!(m["event"]["resumed"], true);
    let m = bob.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["during"], "gap");
    assert_eq!(m["message"]["sender"]["sessionid"], r.as_str());
    // Still the same session on B: bob saw no leave.
    bob.message_to(
        json!({"type": "session", "sessionid": r}),
        json!({"after": "resume"}),
    )
    .await;
    let m = alice.wait_for(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"]["after"], "resume");
    s.a.stop().await;
    s.b.stop().await;
}

/// Alice's bye on A ends her session on B at once.
#[tokio::test]
async fn bye_closes_the_federated_session() {
    let s = setup("").await;
    let mut bob = s.b.joined_client("bob", "remotetoken").await;
    let mut alice = s.alice(&s.signaling(), &[]).await;
    let r = remote_id_of_alice(&mut bob).await;
    alice
        .send(json!({"id": "b", "type": "bye", "bye": {}}))
        .await;
    let l = bob.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([r]));
    s.a.stop().await;
    s.b.stop().await;
}

/// B restarted (its sessions are gone): A says hello again with the cached
/// token, joins again and tells the client the session is new.
#[tokio::test]
async fn a_restarted_remote_gets_a_new_session() {
    let s = setup("").await;
    let relay = relay(&s.b.url).await;
    let mut alice = s.alice(&relay.url, &[]).await;
    alice.wait_join_of(&alice.session_id.clone()).await;
    // "B after a restart": another server on the same Nextcloud.
    let b2 = TestServer::start_on(s.b.nc.clone(), "").await;
    let mut bob = b2.joined_client("bob", "remotetoken").await;
    *relay.target.lock().unwrap() = b2.url.trim_start_matches("http://").to_string();
    relay.cut(&mut alice).await;
    let m = alice
        .wait_for(|m| m["event"]["type"] == "federation_resumed")
        .await;
    assert_eq!(m["event"]["resumed"], false);
    // Joined again (no request id), with fresh join events.
    let r = alice.wait_for(|m| m["type"] == "room").await;
    assert_eq!(
        r,
        json!({"type": "room", "room": {"roomid": "localtoken", "properties": {"name": "Room remotetoken", "type": 2}}})
    );
    alice.wait_join_of(&bob.session_id).await;
    remote_id_of_alice(&mut bob).await;
    s.a.stop().await;
    s.b.stop().await;
    b2.stop().await;
}

/// Another federated room on the same remote server reuses the connection
/// (and the session there): the old room sees the session leave.
#[tokio::test]
async fn another_room_on_the_same_server_reuses_the_link() {
    let s = setup("").await;
    let mut bob = s.b.joined_client("bob", "remotetoken").await;
    let mut carol = s.b.joined_client("carol", "remote2").await;
    let mut alice = s.alice(&s.signaling(), &[]).await;
    let r = remote_id_of_alice(&mut bob).await;
    let fed = json!({"signaling": s.signaling(), "url": s.b.nc.backend_url(), "roomid": "remote2", "token": s.token()});
    alice.send(json!({"id": "8", "type": "room", "room": {"roomid": "local2", "sessionid": "nc-alice", "federation": fed}})).await;
    let m = alice
        .wait_for(|m| m["type"] == "room" && m["id"] == "8")
        .await;
    assert_eq!(m["room"]["roomid"], "local2");
    // Same session on B: it left the first room and joined the second.
    let l = bob.wait_for(|m| m["event"]["type"] == "leave").await;
    assert_eq!(l["event"]["leave"], json!([r]));
    carol.wait_join_of(&r).await;
    alice.wait_join_of(&carol.session_id).await;
    s.a.stop().await;
    s.b.stop().await;
}

/// A join to another room on the same remote server asked while the link
/// is down is sent once the session there is resumed, and answered with
/// the request's id.
#[tokio::test]
async fn a_join_while_the_link_is_down_is_sent_after_the_resume() {
    let s = setup("").await;
    let relay = relay(&s.b.url).await;
    let mut carol = s.b.joined_client("carol", "remote2").await;
    let mut alice = s.alice(&relay.url, &[]).await;
    // B is unreachable until the relay points at it again.
    let b_addr = relay.take_down(&mut alice).await;
    let fed = json!({"signaling": relay.url, "url": s.b.nc.backend_url(), "roomid": "remote2", "token": s.token()});
    alice.send(json!({"id": "9", "type": "room", "room": {"roomid": "local2", "sessionid": "nc-alice", "federation": fed}})).await;
    *relay.target.lock().unwrap() = b_addr;
    let m = alice
        .wait_for(|m| m["event"]["type"] == "federation_resumed")
        .await;
    assert_eq!(m["event"]["resumed"], true);
    let m = alice
        .wait_for(|m| m["type"] == "room" || m["type"] == "error")
        .await;
    assert_eq!(m["id"], "9", "{m}");
    assert_eq!(m["room"]["roomid"], "local2", "{m}");
    let r = remote_id_of_alice(&mut carol).await;
    assert!(!r.is_empty());
    s.a.stop().await;
    s.b.stop().await;
}

/// What the remote server sends a federated session is read within the
/// link's budget: B floods, A reads it more slowly, and nothing is lost.
#[tokio::test]
async fn a_remote_flood_is_read_within_the_budget_and_nothing_is_lost() {
    let s = setup("[clients]\nmessagespersecond = 200\nmessageburst = 10\n").await;
    let mut bob = s.b.joined_client("bob", "remotetoken").await;
    let mut alice = s.alice(&s.signaling(), &[]).await;
    let r = remote_id_of_alice(&mut bob).await;
    alice.wait_join_of(&bob.session_id).await;
    assert_eq!(crate::frames::read_pauses(&s.a).await, 0);
    for i in 0..100 {
        bob.send(json!({"type": "message", "message": {"recipient": {"type": "session", "sessionid": r}, "data": {"i": i}}})).await;
    }
    for i in 0..100 {
        let m = alice.wait_for(|m| m["type"] == "message").await;
        assert_eq!(m["message"]["data"]["i"], i, "lost or reordered: {m}");
    }
    assert!(
        crate::frames::read_pauses(&s.a).await > 0,
        "the remote's frames were read at any rate"
    );
    s.a.stop().await;
    s.b.stop().await;
}

/// Two joins asked while the link is down: the first is answered at once
/// (an error with its id: the second replaced it), the second after the
/// resume; a leave asked while a join waits answers both.
#[tokio::test]
async fn every_join_asked_while_the_link_is_down_gets_an_answer() {
    let s = setup("").await;
    let relay = relay(&s.b.url).await;
    let mut carol = s.b.joined_client("carol", "remote3").await;
    let mut alice = s.alice(&relay.url, &[]).await;
    let b_addr = relay.take_down(&mut alice).await;
    let join = |id: &str, local: &str, remote: &str| {
        let fed = json!({"signaling": relay.url, "url": s.b.nc.backend_url(), "roomid": remote, "token": s.token()});
        json!({"id": id, "type": "room", "room": {"roomid": local, "sessionid": "nc-alice", "federation": fed}})
    };
    alice.send(join("j2", "local2", "remote2")).await;
    alice.send(join("j3", "local3", "remote3")).await;
    let e = alice.wait_for(|m| m["id"] == "j2" || m["id"] == "j3").await;
    assert_eq!(e["id"], "j2", "{e}");
    assert_eq!(e["error"]["code"], "federation_error", "{e}");
    *relay.target.lock().unwrap() = b_addr;
    let m = alice
        .wait_for(|m| m["type"] == "room" || m["type"] == "error")
        .await;
    assert_eq!(m["id"], "j3", "{m}");
    assert_eq!(m["room"]["roomid"], "local3", "{m}");
    remote_id_of_alice(&mut carol).await;

    // Down again: a join, then a leave before B is back.
    relay.take_down(&mut alice).await;
    alice.send(join("j4", "local2", "remote2")).await;
    alice
        .send(json!({"id": "l5", "type": "room", "room": {"roomid": ""}}))
        .await;
    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 2 {
        let m = alice.wait_for(|m| m["id"] == "j4" || m["id"] == "l5").await;
        seen.insert(m["id"].as_str().unwrap().to_string(), m);
    }
    assert_eq!(seen["j4"]["error"]["code"], "federation_error", "{seen:?}");
    assert_eq!(seen["l5"]["room"]["roomid"], "", "{seen:?}");
    s.a.stop().await;
    s.b.stop().await;
}
