//! `[mcu] type = proxy` set-up shared by the proxy tests: the section,
//! our server logged in to its proxies, and waiting on a proxy's entry in
//! the server's `/api/v1/stats`.

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
