//! `[mcu] type = proxy` set-up shared by the proxy tests: the section,
//! our server logged in to its proxies, waiting on a proxy's entry in the
//! server's `/api/v1/stats`, and on our proxy's own `/stats` and
//! `/metrics`; the two-proxies call that our proxy and the Go proxy go
//! through alike.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::proxy_procs::{GoProxy, OurProxy};
use super::TestServer;
use crate::mcu_media::{all_in_call, publish, subscribe_any, Peer};

/// `[mcu]` of a server on the proxies `urls` with the key file `key` as
/// `server1` (`timeout` 10 s, `proxytimeout` 2 s).
pub fn mcu_section(urls: &[String], key: &Path) -> String {
    format!(
        "[mcu]\ntype = proxy\nurl = {}\ntoken_id = server1\ntoken_key = {}\ntimeout = 10\nproxytimeout = 2\n",
        urls.join(" "),
        key.display()
    )
}

/// The `mcu` of the server's `/api/v1/stats`.
pub async fn mcu_stats(url: &str) -> Value {
    let v: Value = reqwest::get(format!("{url}/api/v1/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["mcu"].clone()
}

/// Waits until the statistics of proxy `url` satisfy `pred`.
pub async fn wait_proxy(server: &str, url: &str, limit: Duration, pred: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = mcu_stats(server).await;
        if pred(&s["details"][url]) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "proxy {url} never got there: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Our server with [`mcu_section`], once it is logged in to each proxy.
pub async fn server_on_proxies(urls: &[String], key: &Path) -> TestServer {
    let ts = TestServer::start_with(&mcu_section(urls, key)).await;
    for u in urls {
        wait_proxy(&ts.url, u, Duration::from_secs(10), |d| {
            d["connected"] == true
        })
        .await;
    }
    ts
}

/// How long [`wait_stats`] and [`wait_metrics`] wait (media may take a
/// while on a busy 2-core machine).
const PROXY_WAIT: Duration = Duration::from_secs(40);

/// `/stats` of the proxy on `port`.
pub async fn proxy_stats(port: u16) -> Value {
    reqwest::get(format!("http://127.0.0.1:{port}/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until `/stats` of the proxy on `port` satisfies `cond`.
pub async fn wait_stats(port: u16, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + PROXY_WAIT;
    loop {
        let s = proxy_stats(port).await;
        if cond(&s) {
            return s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/metrics` of the proxy on `port`.
pub async fn proxy_metrics(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the sample `name` (with its labels, as written) in
/// `/metrics` of the proxy on `port`; 0 when it is not there.
pub async fn proxy_metric(port: u16, name: &str) -> f64 {
    let text = proxy_metrics(port).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// Waits until `/metrics` of the proxy on `port` has the line `line`.
pub async fn wait_metrics(port: u16, line: &str) {
    let deadline = tokio::time::Instant::now() + PROXY_WAIT;
    loop {
        let text = proxy_metrics(port).await;
        if text.lines().any(|l| l == line) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {line} in the proxy's /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A proxy process a server's `[mcu] url` can list.
pub trait ProxyProcess {
    /// Its base URL.
    fn base(&self) -> String;
}

impl ProxyProcess for OurProxy {
    fn base(&self) -> String {
        OurProxy::base(self)
    }
}

impl ProxyProcess for GoProxy {
    fn base(&self) -> String {
        GoProxy::base(self)
    }
}

/// Our server on the proxies `p1` and `p2` (with the token key `key`),
/// media in a network namespace: publishers spread by load (ties: the
/// first), Carol receives each from its own proxy; `p1` is stopped
/// (dropped), Alice publishes again and lands on `p2` within `[mcu]
/// timeout`, Carol receives her there.
pub async fn spread_then_take_over<P: ProxyProcess>(p1: P, p2: &P, key: &Path) {
    let ts = server_on_proxies(&[p1.base(), p2.base()], key).await;
    let mut a = ts.client_in_room("alice", "room1").await;
    let mut b = ts.client_in_room("bob", "room1").await;
    let mut c = ts.client_in_room("carol", "room1").await;
    all_in_call(&ts, &["nc-alice", "nc-bob", "nc-carol"]).await;
    let (alice, bob) = (a.session_id.clone(), b.session_id.clone());
    // Loads tie: the first proxy; once it reported its load, the second.
    let mut pa = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a, &mut pa, "video", "1").await;
    wait_proxy(&ts.url, &p1.base(), Duration::from_secs(5), |d| {
        d["publishers"] == 1 && d["load"] == 1
    })
    .await;
    let mut pb = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut b, &mut pb, "video", "2").await;
    wait_proxy(&ts.url, &p2.base(), Duration::from_secs(5), |d| {
        d["publishers"] == 1
    })
    .await;
    // Carol receives both, each from its own proxy.
    let mut ca = Peer::start(&["subscribe"]).await;
    let mut cb = Peer::start(&["subscribe"]).await;
    subscribe_any(&mut c, &mut ca, &alice, "video", "").await;
    subscribe_any(&mut c, &mut cb, &bob, "video", "").await;
    ca.wait_frames((0, 0), 20, 20).await;
    cb.wait_frames((0, 0), 20, 20).await;
    ca.close().await;
    cb.close().await;
    // Carol's subscribers are gone (else the server would offer her
    // Alice's moved stream on its own: `proxy_takeover`).
    for base in [p1.base(), p2.base()] {
        wait_proxy(&ts.url, &base, Duration::from_secs(10), |d| {
            d["clients"] == 1
        })
        .await;
    }
    // The first proxy stops: Alice publishes again and lands on the
    // second within [mcu] timeout.
    let p1_base = p1.base();
    drop(p1);
    wait_proxy(&ts.url, &p1_base, Duration::from_secs(5), |d| {
        d["connected"] == false
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut pa2 = Peer::start(&["publish", "audio,video"]).await;
    publish(&mut a, &mut pa2, "video", "3").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    wait_proxy(&ts.url, &p2.base(), Duration::from_secs(5), |d| {
        d["publishers"] == 2
    })
    .await;
    let mut ca2 = Peer::start(&["subscribe"]).await;
    subscribe_any(&mut c, &mut ca2, &alice, "video", "").await;
    ca2.wait_frames((0, 0), 20, 20).await;
    ca2.close().await;
    drop((pa, pb, pa2));
}
