//! `[backend] backendtype = etcd` against a real etcd: backends added,
//! changed and removed while the server runs; etcd away at start and
//! restarting.

use std::time::Duration;

use serde_json::{json, Value};
use spreed_signaling::backend::checksum;
use spreed_signaling::config::Config;

use crate::support::*;

const PREFIX: &str = "/signaling/backend";

fn etcd_config(etcd: &EtcdServer, extra: &str) -> String {
    format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\n\
         [clients]\ninternalsecret = {INTERNAL_SECRET}\n\
         [backend]\nbackendtype = etcd\nbackendprefix = {PREFIX}\ntimeout = 1\n\
         [etcd]\nendpoints = {}\n{extra}",
        etcd.endpoint()
    )
}

fn backend_value(nc: &FakeNextcloud, secret: &str) -> Value {
    json!({"urls": [nc.url], "secret": secret})
}

/// A hello against `nc`: Ok(session id) or Err(the error frame).
async fn try_hello(
    ws_url: &str,
    nc: &FakeNextcloud,
    user: &str,
) -> Result<(Client, String), Value> {
    let mut c = Client::connect(ws_url).await;
    c.expect_type("welcome").await;
    c.send(json!({"id": "h", "type": "hello", "hello": {"version": "1.0", "auth": {"url": nc.backend_url(), "params": {"userid": user}}}}))
        .await;
    let m = c
        .wait_for(|m| m["type"] == "hello" || m["type"] == "error")
        .await;
    match m["type"].as_str() {
        Some("hello") => {
            let sid = m["hello"]["sessionid"].as_str().unwrap().to_string();
            Ok((c, sid))
        }
        _ => Err(m),
    }
}

/// Retries a hello until it succeeds (the watch applies a change soon
/// after etcd took it; `limit` bounds the wait).
async fn hello_eventually(ws_url: &str, nc: &FakeNextcloud, limit: Duration) -> (Client, String) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match try_hello(ws_url, nc, "alice").await {
            Ok(c) => return c,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "hello still refused: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Retries a hello until it is refused with `code`.
async fn refused_eventually(ws_url: &str, nc: &FakeNextcloud, code: &str) -> Value {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if let Err(e) = try_hello(ws_url, nc, "bob").await {
            if e["error"]["code"] == code {
                return e;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "hello not refused with {code}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A backend-API request naming `nc`, signed with `secret`.
async fn backend_api(server_url: &str, nc_url: &str, secret: &str) -> u16 {
    let body =
        serde_json::to_vec(&json!({"type": "update", "update": {"userids": [], "properties": {}}}))
            .unwrap();
    let random = checksum::new_random();
    let sum = checksum::calculate(secret.as_bytes(), random.as_bytes(), &body);
    reqwest::Client::new()
        .post(format!("{server_url}/api/v1/room/r1"))
        .header("Content-Type", "application/json")
        .header("Spreed-Signaling-Random", random)
        .header("Spreed-Signaling-Checksum", sum)
        .header("Spreed-Signaling-Backend", nc_url)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn backends_in_etcd_are_added_changed_and_removed_while_the_server_runs() {
    let etcd = EtcdServer::start().await;
    let nc = FakeNextcloud::start().await;
    let other = FakeNextcloud::start().await;
    etcd.put(&format!("{PREFIX}/other"), &backend_value(&other, SECRET))
        .await;
    let cfg = Config::parse(&etcd_config(&etcd, "")).unwrap();
    let s = TestServer::start_config(nc.clone(), cfg).await;
    let ws = s.ws_url();

    // Read at start: the backend that was there; nc is not known yet.
    try_hello(&ws, &other, "carol").await.unwrap();
    let e = try_hello(&ws, &nc, "alice").await.err().unwrap();
    assert_eq!(e["error"]["code"], "invalid_backend", "{e}");

    // Added while running: its hellos are accepted.
    let key = format!("{PREFIX}/nc");
    etcd.put(&key, &backend_value(&nc, SECRET)).await;
    let (mut alice, alice_sid) = hello_eventually(&ws, &nc, TIMEOUT).await;
    assert_eq!(backend_api(&s.url, &nc.url, SECRET).await, 200);

    // A changed secret applies: requests signed with the new one are
    // accepted, with the old one refused; Nextcloud (which still has the
    // old secret) refuses the server's new requests.
    etcd.put(&key, &backend_value(&nc, "a-new-secret")).await;
    eventually_status(&s.url, &nc.url, "a-new-secret", 200).await;
    assert_eq!(backend_api(&s.url, &nc.url, SECRET).await, 403);
    assert!(try_hello(&ws, &nc, "dave").await.is_err());
    etcd.put(&key, &backend_value(&nc, SECRET)).await;
    eventually_status(&s.url, &nc.url, SECRET, 200).await;

    // A value that is no backend leaves the key's backend as it was.
    let (mut bob, bob_sid) = hello_eventually(&ws, &nc, TIMEOUT).await;
    etcd.put(&key, &json!({"urls": [nc.url]})).await;
    let marker = "http://127.0.0.1:9/marker";
    etcd.put(
        &format!("{PREFIX}/marker"),
        &json!({"urls": [marker], "secret": "x"}),
    )
    .await;
    eventually_status(&s.url, marker, "x", 200).await;
    try_hello(&ws, &nc, "erin").await.unwrap();

    // Removed: new hellos refused, its backend-API requests too; the
    // sessions it had stay (as in the Go server).
    etcd.delete(&key).await;
    refused_eventually(&ws, &nc, "invalid_backend").await;
    assert_eq!(backend_api(&s.url, &nc.url, SECRET).await, 403);
    alice
        .send(json!({"id": "m", "type": "message", "message": {"recipient": {"type": "session", "sessionid": bob_sid}, "data": "still here"}}))
        .await;
    let m = bob.expect_type("message").await;
    assert_eq!(m["message"]["data"], "still here");
    assert_eq!(m["message"]["sender"]["sessionid"], alice_sid.as_str());
    // The other backend is untouched.
    try_hello(&ws, &other, "frank").await.unwrap();

    let info: Value = reqwest::get(format!("{}/api/v1/serverinfo", s.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["etcd"]["connected"], true, "{info}");
    assert_eq!(
        info["etcd"]["endpoints"][0],
        format!("http://{}", etcd.endpoint())
    );
    s.stop().await;
}

async fn eventually_status(server_url: &str, nc_url: &str, secret: &str, status: u16) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while backend_api(server_url, nc_url, secret).await != status {
        assert!(
            tokio::time::Instant::now() < deadline,
            "backend API never answered {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn etcd_away_at_start_and_restarting_is_survived_and_logged() {
    let mut etcd = EtcdServer::unstarted();
    let nc = FakeNextcloud::start().await;
    let nc2 = FakeNextcloud::start().await;
    let port = free_port();
    let dir = fresh_dir("etcd-conf");
    let path = dir.join("server.conf");
    let text = etcd_config(&etcd, "").replace(
        "listen = 127.0.0.1:0",
        &format!("listen = 127.0.0.1:{port}"),
    );
    std::fs::write(&path, text).unwrap();
    let p = LoggedProcess::spawn(&["--config", path.to_str().unwrap()]);
    let ws = format!("ws://127.0.0.1:{port}/spreed");

    // etcd away: the server starts without backends and says why.
    p.wait_line(0, |l| l.contains("etcd: cannot read or watch the backends"))
        .await;
    p.wait_line(0, |l| l.contains("serving without backends"))
        .await;
    wait_listening(port).await;
    let e = try_hello(&ws, &nc, "alice").await.err().unwrap();
    assert_eq!(e["error"]["code"], "invalid_backend", "{e}");

    // etcd comes: the backends are read (within the 8 s backoff).
    etcd.spawn().await;
    etcd.put(&format!("{PREFIX}/nc"), &backend_value(&nc, SECRET))
        .await;
    hello_eventually(&ws, &nc, Duration::from_secs(15)).await;
    let seen = p.lines().len();
    p.wait_line(0, |l| l.contains("etcd: backends read, watching"))
        .await;

    // etcd goes: logged; the backends known so far keep working.
    etcd.stop();
    p.wait_line(seen, |l| {
        l.contains("etcd: cannot read or watch the backends")
    })
    .await;
    try_hello(&ws, &nc, "bob").await.unwrap();

    // etcd is back: changes of the meantime and later ones apply.
    etcd.spawn().await;
    etcd.put(&format!("{PREFIX}/nc2"), &backend_value(&nc2, SECRET))
        .await;
    etcd.delete(&format!("{PREFIX}/nc")).await;
    hello_eventually(&ws, &nc2, Duration::from_secs(15)).await;
    refused_eventually(&ws, &nc, "invalid_backend").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reads_the_backends_from_etcd_and_probes_them() {
    let mut etcd = EtcdServer::start().await;
    let nc = FakeNextcloud::start().await;
    etcd.put(&format!("{PREFIX}/nc"), &backend_value(&nc, SECRET))
        .await;
    etcd.put(&format!("{PREFIX}/broken"), &json!({"urls": [nc.url]}))
        .await;
    let text = etcd_config(&etcd, "");
    let (ok, out) = crate::check::check(text.clone()).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "OK   [etcd] endpoints: http://{} answered: 1 backends under {PREFIX}",
            etcd.endpoint()
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "WARN [etcd] {PREFIX}/broken: not a backend (secret missing)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("OK   [{PREFIX}/nc] secret accepted")),
        "{out}"
    );
    etcd.stop();
    let (ok, out) = crate::check::check(text).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "FAIL [etcd] endpoints: cannot read the backends under {PREFIX}"
        )),
        "{out}"
    );
}

/// `[etcd] clientkey`, `clientcert`, `cacert`: the backends are read from
/// an etcd that serves its clients over TLS only and wants a client
/// certificate; without the keys nothing is read from it.
#[tokio::test]
async fn backends_are_read_from_an_etcd_that_wants_tls_and_a_client_certificate() {
    let nc = FakeNextcloud::start().await;
    let mut etcd = EtcdServer::start().await;
    etcd.put(&format!("{PREFIX}/one"), &backend_value(&nc, SECRET))
        .await;
    etcd.stop();
    let certs = fresh_dir("etcd-certs");
    crate::tls::make_cert(&certs, "etcd");
    etcd.spawn_tls(&certs).await;
    let endpoint = format!("https://{}", etcd.endpoint());
    let base = |extra: &str| {
        etcd_config(&etcd, extra).replace(
            &format!("endpoints = {}", etcd.endpoint()),
            &format!("endpoints = {endpoint}"),
        )
    };
    let tls = format!(
        "clientkey = {}\nclientcert = {}\ncacert = {}\n",
        certs.join("etcd.key").display(),
        certs.join("etcd.pem").display(),
        certs.join("etcd-ca.pem").display()
    );
    let config = Config::parse(&base(&tls)).unwrap();
    let server = TestServer::start_config(nc.clone(), config).await;
    hello_eventually(&server.ws_url(), &nc, Duration::from_secs(10)).await;
    server.stop().await;

    // Without a client certificate etcd refuses the connection: no
    // backend, every hello refused.
    let config = Config::parse(&base("")).unwrap();
    let server = TestServer::start_config(nc.clone(), config).await;
    let e = try_hello(&server.ws_url(), &nc, "alice")
        .await
        .err()
        .unwrap();
    assert_eq!(e["error"]["code"], "invalid_backend", "{e}");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&certs);
}
