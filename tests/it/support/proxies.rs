//! `[mcu] type = proxy` set-up shared by the proxy tests: the section,
//! our server logged in to its proxies, waiting on a proxy's entry in the
//! server's `/api/v1/stats`, and on our proxy's own `/stats` and
//! `/metrics`.

use std::time::Duration;

use serde_json::Value;

use super::TestServer;

/// `[mcu]` of a server on the proxies `urls` with the key file `key` as
/// `server1` (`timeout` 10 s, `proxytimeout` 2 s).
pub fn mcu_section(urls: &[String], key: &str) -> String {
    format!(
        "[mcu]\ntype = proxy\nurl = {}\ntoken_id = server1\ntoken_key = {key}\ntimeout = 10\nproxytimeout = 2\n",
        urls.join(" ")
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
pub async fn server_on_proxies(urls: &[String], key: &str) -> TestServer {
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
