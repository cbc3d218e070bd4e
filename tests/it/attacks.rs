//! Attacks by a client with a Nextcloud account, over real sockets: each
//! test performs the attack and shows that it fails.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::*;
use serde_json::{json, Value};
use spreed_signaling::backend::checksum;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn data(name: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A token for `sub` signed with the attacker's own EC key (ec2).
fn attacker_token(sub: &str) -> String {
    let pem = data("ec2.key");
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap();
    let claims = json!({"iss": "x", "sub": sub, "iat": now(), "exp": now() + 60});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256),
        &claims,
        &key,
    )
    .unwrap()
}

async fn hello_v2_at(ts: &TestServer, url: &str, token: &str) -> Value {
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    c.send(json!({"id": "h2", "type": "hello", "hello": {"version": "2.0", "auth": {"url": url, "params": {"token": token}}}})).await;
    c.recv().await
}

/// The attack of issue 9: the attacker uploads capabilities holding their
/// own key into their files and points `auth.url` (with their credentials)
/// at it, then signs a token for `admin`. The key must come from the
/// configured Nextcloud URL only.
#[tokio::test]
async fn hello_v2_key_never_comes_from_a_client_chosen_url() {
    let ts = TestServer::start().await;
    {
        let mut st = ts.nc.state.lock().unwrap();
        st.token_key = Some(data("ec.pub"));
        st.dav_key = Some(data("ec2.pub"));
    }
    let host = ts.nc.url.trim_start_matches("http://");
    for url in [
        format!("http://me:secret@{host}/remote.php/dav/files/me/ocs/v2.php/apps/spreed/api/v3/signaling/backend"),
        format!("http://me:secret@{host}/remote.php/dav/files/me/ocs/v2.php/cloud/capabilities"),
        format!("http://{host}/remote.php/dav/files/me/"),
    ] {
        let r = hello_v2_at(&ts, &url, &attacker_token("admin")).await;
        assert_eq!(r["type"], "error", "attacker became admin via {url}: {r}");
        assert_eq!(r["error"]["code"], "invalid_token", "{r}");
    }
    {
        let st = ts.nc.state.lock().unwrap();
        assert_eq!(st.dav_fetches, 0, "the server fetched a client-chosen URL");
        assert!(
            st.capability_auth.is_empty(),
            "client credentials were sent: {:?}",
            st.capability_auth
        );
    }
    ts.stop().await;
}

/// A redirect of the capabilities endpoint (e.g. by a misconfigured proxy
/// or an app) is not followed to a document the attacker controls.
#[tokio::test]
async fn capabilities_redirects_are_not_followed() {
    let ts = TestServer::start().await;
    {
        let mut st = ts.nc.state.lock().unwrap();
        st.dav_key = Some(data("ec2.pub"));
        st.capabilities_redirect = Some("/remote.php/dav/files/me/caps".into());
    }
    let r = hello_v2_at(&ts, &ts.nc.backend_url(), &attacker_token("admin")).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(ts.nc.state.lock().unwrap().dav_fetches, 0);
    ts.stop().await;
}

/// Failed capability fetches are cached briefly: a burst of hellos makes
/// one request to Nextcloud, not one each.
#[tokio::test]
async fn failed_capability_fetches_are_cached() {
    let ts = TestServer::start().await;
    ts.nc.state.lock().unwrap().capabilities_redirect = Some("/nowhere".into());
    for _ in 0..5 {
        let r = hello_v2_at(&ts, &ts.nc.backend_url(), &attacker_token("admin")).await;
        assert_eq!(r["type"], "error", "{r}");
    }
    assert_eq!(ts.nc.state.lock().unwrap().capability_fetches, 1);
    ts.stop().await;
}

/// hello 1.0: the auth request goes to the configured Nextcloud's signaling
/// endpoint, not to the path (or with the credentials) the client named.
#[tokio::test]
async fn hello_v1_auth_goes_to_the_configured_endpoint() {
    let ts = TestServer::start().await;
    let host = ts.nc.url.trim_start_matches("http://");
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    let url = format!("http://me:pw@{host}/remote.php/dav/files/me/x?y=1");
    let m = c.hello_v1(&url, json!({"userid": "alice"})).await;
    assert_eq!(m["hello"]["userid"], "alice");
    let auth = ts.nc.wait_for("auth", |_| true).await;
    assert!(!auth.headers.contains_key("authorization"));
    assert_eq!(ts.nc.state.lock().unwrap().dav_fetches, 0);
    ts.stop().await;
}

/// A participant without `control` permission leaves the room and then
/// tries to send `control` (hang up, mute, DTMF) to a session it saw.
#[tokio::test]
async fn leaving_a_room_grants_no_permissions() {
    let ts = TestServer::start().await;
    {
        let mut st = ts.nc.state.lock().unwrap();
        st.permissions
            .insert("nc-guest".into(), vec!["publish-audio".into()]);
        st.permissions
            .insert("nc-mod".into(), vec!["control".into()]);
    }
    let mut m = ts.client(Some("mod")).await;
    m.join("room1", "nc-mod").await;
    let mut g = ts.client(Some("guest")).await;
    g.join("room1", "nc-guest").await;
    m.wait_join_of(&g.session_id).await;
    g.send(json!({"id": "leave", "type": "room", "room": {"roomid": ""}}))
        .await;
    g.wait_for(|x| x["type"] == "room" && x["room"]["roomid"] == "")
        .await;
    g.send(json!({"id": "c1", "type": "control", "control": {"recipient": {"type": "session", "sessionid": m.session_id}, "data": {"type": "mute", "audio": 1}}})).await;
    let e = g.expect_error("not_allowed").await;
    assert_eq!(e["id"], "c1");
    // The moderator got nothing: a later message proves the order.
    g.message_to(
        json!({"type": "session", "sessionid": m.session_id}),
        json!({"marker": 1}),
    )
    .await;
    let next = m.wait_for(|x| x["type"] != "event").await;
    assert_eq!(next["type"], "message", "control got through: {next}");
    assert_eq!(next["message"]["data"]["marker"], 1);
    ts.stop().await;
}

/// A session of one Nextcloud cannot message a session of another one,
/// even knowing its id.
#[tokio::test]
async fn sessions_of_other_backends_are_unreachable() {
    let nc2 = FakeNextcloud::start().await;
    let nc = FakeNextcloud::start().await;
    let extra = format!("[nc2]\nurl = {}\nsecret = {SECRET}\n", nc2.url);
    let text = config_text(&nc, &extra).replace("backends = nc1", "backends = nc1, nc2");
    let cfg = spreed_signaling::config::Config::parse(&text).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = spreed_signaling::server::Server::start(cfg, Some(listener))
        .await
        .unwrap();
    let ts = TestServer {
        url: format!("http://{}", server.addr),
        server: Some(server),
        nc,
    };
    let mut a = ts.connect().await;
    a.expect_type("welcome").await;
    a.hello_v1(&ts.nc.backend_url(), json!({"userid": "alice"}))
        .await;
    let mut b = ts.connect().await;
    b.expect_type("welcome").await;
    b.hello_v1(&nc2.backend_url(), json!({"userid": "bob"}))
        .await;
    b.send(json!({"id": "m1", "type": "message", "message": {"recipient": {"type": "session", "sessionid": a.session_id}, "data": {"x": 1}}})).await;
    // Answered as a session that does not exist: not at all (the next
    // reply b gets is its probe's).
    b.send(json!({"id": "probe", "type": "room", "room": {"roomid": ""}}))
        .await;
    assert_eq!(b.recv().await["id"], "probe");
    // Same backend still works, and alice got nothing before it.
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    c.hello_v1(&ts.nc.backend_url(), json!({"userid": "carol"}))
        .await;
    c.message_to(
        json!({"type": "session", "sessionid": a.session_id}),
        json!({"from": "carol"}),
    )
    .await;
    let m = a.wait_for(|x| x["type"] == "message").await;
    assert_eq!(m["message"]["data"]["from"], "carol", "{m}");
    ts.stop().await;
}

/// Backend API requests with a short `Spreed-Signaling-Random` are refused
/// even with a correct checksum.
#[tokio::test]
async fn backend_api_refuses_short_randoms() {
    let ts = TestServer::start().await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let post = |random: String, x: u32| {
        let body =
            serde_json::to_vec(&json!({"type": "message", "message": {"data": {"x": x}}})).unwrap();
        let sum = checksum::calculate(SECRET.as_bytes(), random.as_bytes(), &body);
        reqwest::Client::new()
            .post(format!("{}/api/v1/room/room1", ts.url))
            .header("Content-Type", "application/json")
            .header("Spreed-Signaling-Random", random)
            .header("Spreed-Signaling-Checksum", sum)
            .header("Spreed-Signaling-Backend", ts.nc.url.as_str())
            .body(body)
            .send()
    };
    let r = post("a".repeat(31), 1).await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = post("b".repeat(32), 2).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Only the second one reached the room.
    let m = a
        .wait_for(|x| x["type"] == "event" && x["event"]["type"] == "message")
        .await;
    assert_eq!(m["event"]["message"]["data"]["x"], 2, "{m}");
    ts.stop().await;
}
