//! GeoIP (`[geoip]`, `[geoip-overrides]`, `[continent-overrides]`): a
//! client's country, from its address behind a trusted proxy, puts its
//! publisher on a proxy in that country, else on its continent, else by
//! load; the database is a file or a download (reloaded, a failed reload
//! keeps the old one); bad values stop start-up and fail `check`. The
//! databases are the test's own (`support/mmdb.rs`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use spreed_signaling::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::mcu_proxy::{offer, proxy_section, setup, Behave, FakeProxy};
use crate::support::mmdb::Mmdb;
use crate::support::*;

/// A database file in `dir`.
fn db_file(dir: &Path, db: &Mmdb) -> PathBuf {
    let path = dir.join("country.mmdb");
    std::fs::write(&path, db.build()).unwrap();
    path
}

/// A client whose connection comes from 127.0.0.1 (a trusted proxy by
/// default) for `ip` (`X-Forwarded-For`), said hello as `user` and in
/// `room`.
async fn client_from(ts: &TestServer, ip: &str, user: &str, room: &str) -> Client {
    let mut req = ts.ws_url().into_client_request().unwrap();
    req.headers_mut()
        .insert("x-forwarded-for", ip.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut c = Client {
        ws,
        session_id: String::new(),
        resume_id: String::new(),
        user_id: None,
    };
    c.expect_type("welcome").await;
    c.hello_v1(&ts.nc.backend_url(), json!({"userid": user}))
        .await;
    c.join(room, &format!("nc-{user}")).await;
    c
}

/// A fake proxy in `country` with `load`.
async fn proxy_in(country: &'static str, load: u64) -> FakeProxy {
    FakeProxy::start(Behave {
        country: Some(country),
        after_hello: vec![json!({"type": "update-load", "load": load})],
        ..Default::default()
    })
    .await
}

/// Waits until the server knows the proxies' countries and loads (its
/// `/api/v1/serverinfo`).
async fn wait_ready(ts: &TestServer, proxies: &[(&FakeProxy, &str, u64)]) {
    let ready = |info: &Value| {
        proxies.iter().all(|(p, country, load)| {
            info["sfu"]["proxies"].as_array().is_some_and(|l| {
                l.iter().any(|x| {
                    x["url"] == p.url()
                        && x["connected"] == true
                        && x["country"] == *country
                        && x["load"] == *load
                })
            })
        })
    };
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let info: Value = reqwest::get(format!("{}/api/v1/serverinfo", ts.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready(&info) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes from `c` and returns which of `proxies` got the publisher.
async fn published_on(c: &mut Client, sid: &str, proxies: &[(&str, &FakeProxy)]) -> String {
    let before: Vec<usize> = proxies
        .iter()
        .map(|(_, p)| p.commands("create-publisher").len())
        .collect();
    let m = offer(c, &format!("o-{sid}"), sid).await;
    assert_eq!(m["message"]["data"]["type"], "answer", "{m}");
    let got: Vec<&str> = proxies
        .iter()
        .zip(before)
        .filter(|((_, p), n)| p.commands("create-publisher").len() > *n)
        .map(|((name, _), _)| *name)
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    got[0].to_string()
}

fn countries_total(metrics: &str, country: &str) -> u64 {
    let key = format!("signaling_client_countries_total{{country=\"{country}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_publisher_goes_to_a_proxy_in_its_country_even_when_that_one_is_busier() {
    let s = setup();
    let dir = fresh_dir("geoip-country");
    let db = db_file(
        &dir,
        &Mmdb::default()
            .insert("81.2.69.0/24", "DE")
            .insert("198.51.100.0/24", "US"),
    );
    let us = proxy_in("US", 0).await;
    let de = proxy_in("DE", 5).await;
    let extra = format!(
        "{}[geoip]\nurl = file://{}\n[geoip-overrides]\n198.51.100.7 = de\n",
        proxy_section(&[&us, &de], &s.key),
        db.display()
    );
    let ts = TestServer::start_with(&extra).await;
    wait_ready(&ts, &[(&us, "US", 0), (&de, "DE", 5)]).await;
    let both = [("US", &us), ("DE", &de)];
    // The database says DE: the busier proxy in DE.
    let mut alice = client_from(&ts, "81.2.69.10", "alice", "room1").await;
    assert_eq!(published_on(&mut alice, "1", &both).await, "DE");
    // The override wins over the database (which says US).
    let mut bob = client_from(&ts, "198.51.100.7", "bob", "room1").await;
    assert_eq!(published_on(&mut bob, "2", &both).await, "DE");
    let mut carol = client_from(&ts, "198.51.100.8", "carol", "room1").await;
    assert_eq!(published_on(&mut carol, "3", &both).await, "US");
    // Not in the database: by load.
    let mut dave = client_from(&ts, "203.0.113.1", "dave", "room1").await;
    assert_eq!(published_on(&mut dave, "4", &both).await, "US");
    // Loopback (no X-Forwarded-For): by load, and counted nowhere.
    let mut erin = ts.client_in_room("erin", "room1").await;
    assert_eq!(published_on(&mut erin, "5", &both).await, "US");
    let m = ts.metrics_text().await;
    assert_eq!(countries_total(&m, "DE"), 2, "{m}");
    assert_eq!(countries_total(&m, "US"), 1, "{m}");
    assert!(!m.contains("country=\"loopback\""), "{m}");
}

#[tokio::test]
async fn without_a_proxy_in_its_country_the_continent_wins_and_continent_overrides_widen_it() {
    let s = setup();
    let jp = proxy_in("JP", 0).await;
    let fr = proxy_in("FR", 5).await;
    // No database: the overrides alone.
    let extra = format!(
        "{}[geoip-overrides]\n203.0.113.1 = DE\n203.0.113.2 = ZA\n203.0.113.3 = BR\n\
         [continent-overrides]\nAF = EU\n",
        proxy_section(&[&jp, &fr], &s.key),
    );
    let ts = TestServer::start_with(&extra).await;
    wait_ready(&ts, &[(&jp, "JP", 0), (&fr, "FR", 5)]).await;
    let both = [("JP", &jp), ("FR", &fr)];
    // Germany: no proxy there, FR is in Europe.
    let mut alice = client_from(&ts, "203.0.113.1", "alice", "room1").await;
    assert_eq!(published_on(&mut alice, "1", &both).await, "FR");
    // South Africa: Africa is mapped to Europe.
    let mut bob = client_from(&ts, "203.0.113.2", "bob", "room1").await;
    assert_eq!(published_on(&mut bob, "2", &both).await, "FR");
    // Brazil: nothing near, by load.
    let mut carol = client_from(&ts, "203.0.113.3", "carol", "room1").await;
    assert_eq!(published_on(&mut carol, "3", &both).await, "JP");
}

/// A web server of the test's own that serves what `serve` returns for
/// each request (given its `If-Modified-Since`), counting requests.
struct Files {
    url: String,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    serve: Arc<Mutex<Reply>>,
}

#[derive(Clone)]
enum Reply {
    /// 200 with this body and `Last-Modified`; 304 when asked with it.
    File(Vec<u8>, &'static str),
}

impl Files {
    async fn start(first: Reply) -> Files {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/GeoLite2-Country.tar.gz", l.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let serve = Arc::new(Mutex::new(first));
        let (s2, r2) = (seen.clone(), serve.clone());
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = l.accept().await {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.ends_with(b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req).to_string();
                let since = text.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("if-modified-since")
                        .then(|| v.trim().to_string())
                });
                let Reply::File(body, stamp) = r2.lock().unwrap().clone();
                let resp = if since.as_deref() == Some(stamp) {
                    b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n".to_vec()
                } else {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nLast-Modified: {stamp}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend(body);
                    r
                };
                let _ = tcp.write_all(&resp).await;
                let _ = tcp.shutdown().await;
                // Counted once answered: the server has the answer.
                s2.lock().unwrap().push(since);
            }
        });
        Files { url, seen, serve }
    }

    fn set(&self, r: Reply) {
        *self.serve.lock().unwrap() = r;
    }

    /// Waits until `n` requests in all were answered.
    async fn wait_requests(&self, n: usize) -> Vec<Option<String>> {
        let seen = self.seen.clone();
        eventually("requests for the database", TIMEOUT, || {
            seen.lock().unwrap().len() >= n
        })
        .await;
        self.seen.lock().unwrap().clone()
    }
}

/// `.tar.gz` with `db` inside, as MaxMind serves it.
fn tar_gz(db: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(db.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(
        &mut h,
        "GeoLite2-Country_20260101/GeoLite2-Country.mmdb",
        db,
    )
    .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// The country the server gives a new client from `ip` (by the metric).
async fn country_of(ts: &TestServer, ip: &str, user: &str, countries: &[&str]) -> String {
    let before = ts.metrics_text().await;
    let _c = client_from(ts, ip, user, "room1").await;
    let after = ts.metrics_text().await;
    let up: Vec<&str> = countries
        .iter()
        .copied()
        .filter(|c| countries_total(&after, c) > countries_total(&before, c))
        .collect();
    up.join(",")
}

#[tokio::test]
async fn the_database_is_downloaded_and_reloaded_and_a_bad_download_keeps_the_old_one() {
    const V1: &str = "Wed, 01 Jan 2026 00:00:00 GMT";
    const V2: &str = "Thu, 02 Jan 2026 00:00:00 GMT";
    let v1 = Mmdb::default().insert("81.2.69.0/24", "DE").build();
    let files = Files::start(Reply::File(tar_gz(&v1), V1)).await;
    let nc = FakeNextcloud::start().await;
    let mut cfg = Config::parse(&config_text(
        &nc,
        &format!("[geoip]\nurl = {}\n", files.url),
    ))
    .unwrap();
    cfg.geoip.refresh = Duration::from_millis(100);
    let ts = TestServer::start_config(nc, cfg).await;
    let cc = ["DE", "FR"];
    // The second request asks with the first's Last-Modified (answered
    // 304): the first download is in use by then.
    let seen = files.wait_requests(2).await;
    assert_eq!(seen[0], None);
    assert_eq!(seen[1].as_deref(), Some(V1));
    assert_eq!(country_of(&ts, "81.2.69.10", "a", &cc).await, "DE");
    // A corrupt download: logged, retried, the old database stays.
    files.set(Reply::File(b"not a database".to_vec(), V2));
    let n = files.wait_requests(0).await.len();
    files.wait_requests(n + 2).await;
    assert_eq!(country_of(&ts, "81.2.69.11", "b", &cc).await, "DE");
    // A new one (a plain .mmdb this time) replaces it.
    let v2 = Mmdb::default().insert("81.2.69.0/24", "FR").build();
    files.set(Reply::File(v2, V2));
    let v2_used = files.seen.clone();
    eventually("the new database asked for with its date", TIMEOUT, || {
        v2_used
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.as_deref() == Some(V2))
    })
    .await;
    assert_eq!(country_of(&ts, "81.2.69.12", "c", &cc).await, "FR");
}

#[tokio::test]
async fn sighup_reloads_the_overrides() {
    let nc = FakeNextcloud::start().await;
    let text = |cc: &str| config_text(&nc, &format!("[geoip-overrides]\n203.0.113.0/24 = {cc}\n"));
    let cfg = Config::parse(&text("DE")).unwrap();
    let new = Config::parse(&text("FR")).unwrap();
    let ts = TestServer::start_config(nc, cfg).await;
    let cc = ["DE", "FR"];
    assert_eq!(country_of(&ts, "203.0.113.1", "a", &cc).await, "DE");
    ts.server.as_ref().unwrap().reload(&new);
    assert_eq!(country_of(&ts, "203.0.113.2", "b", &cc).await, "FR");
}

#[tokio::test]
async fn bad_geoip_values_stop_start_up_and_fail_check_naming_the_key() {
    let nc = FakeNextcloud::start().await;
    for (extra, key) in [
        (
            "[geoip-overrides]\n1.2.3.x = DE\n",
            "[geoip-overrides] 1.2.3.x",
        ),
        (
            "[geoip-overrides]\n1.2.3.4 = Germany\n",
            "[geoip-overrides] 1.2.3.4",
        ),
        (
            "[continent-overrides]\nAF = Europe\n",
            "[continent-overrides] af",
        ),
        ("[geoip]\nurl = geo.mmdb\n", "[geoip] url"),
    ] {
        let text = config_text(&nc, extra);
        let e = Config::parse(&text).unwrap_err().to_string();
        assert!(e.starts_with(key), "{extra}: {e}");
        let (ok, out) = check_output(text).await;
        assert!(!ok && out.contains(key), "{extra}: {out}");
    }
    // A database file that does not load stops start-up.
    let dir = fresh_dir("geoip-bad");
    let bad = dir.join("bad.mmdb");
    std::fs::write(&bad, b"not a database").unwrap();
    let cfg = Config::parse(&config_text(
        &nc,
        &format!("[geoip]\nurl = file://{}\n", bad.display()),
    ))
    .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = spreed_signaling::server::Server::start(cfg, Some(l))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().starts_with("[geoip] url:"), "{e}");
    // check loads it too; a good one is named OK.
    let (ok, out) = check_output(config_text(
        &nc,
        &format!("[geoip]\nurl = {}\n", bad.display()),
    ))
    .await;
    assert!(!ok && out.contains("FAIL [geoip] url:"), "{out}");
    let good = db_file(&dir, &Mmdb::default().insert("81.2.69.0/24", "DE"));
    let (ok, out) = check_output(config_text(
        &nc,
        &format!("[geoip]\nurl = file://{}\n", good.display()),
    ))
    .await;
    assert!(
        ok && out.contains("OK   [geoip] url:") && out.contains("Test-Country"),
        "{out}"
    );
}

/// `spreed-signaling check`: success and stdout with stderr.
async fn check_output(config: String) -> (bool, String) {
    let dir = fresh_dir("geoip-check");
    let path = dir.join("server.conf");
    std::fs::write(&path, config).unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_spreed-signaling"))
            .arg("--config")
            .arg(&path)
            .arg("check")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
