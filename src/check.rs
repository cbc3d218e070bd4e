//! `spreed-signaling check`: beyond parsing the file, try every backend as
//! the server would use it (capabilities, hello v2 key, shared secret), the
//! NATS server and Janus, and say which config key to fix when something
//! fails.

use std::time::Duration;

use crate::api::backend::PingRequest;
use crate::backend::capabilities::Capabilities;
use crate::backend::client::{BackendCallError, BackendClient};
use crate::backend::registry::{capabilities_url, signaling_url};
use crate::config::{Config, Finding, Severity};

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckLine {
    /// False for a failure (the exit code is then non-zero).
    pub ok: bool,
    /// True for a problem that does not stop the server.
    pub warning: bool,
    /// What was checked and what came out, naming the key to fix.
    pub text: String,
}

impl std::fmt::Display for CheckLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match (self.ok, self.warning) {
            (false, _) => "FAIL",
            (true, true) => "WARN",
            (true, false) => "OK  ",
        };
        write!(f, "{tag} {}", self.text)
    }
}

impl CheckLine {
    /// A line of its parts.
    pub fn from_text(ok: bool, warning: bool, text: String) -> CheckLine {
        CheckLine { ok, warning, text }
    }

    /// A finding of the configuration: refusals and what must be fixed
    /// before production fail, the rest warns.
    pub fn from_finding(f: &Finding) -> CheckLine {
        match f.severity {
            Severity::Warn => warn(f.text.clone()),
            Severity::Unsafe | Severity::Refuse => fail(f.text.clone()),
        }
    }
}

fn ok(text: String) -> CheckLine {
    CheckLine {
        ok: true,
        warning: false,
        text,
    }
}

fn warn(text: String) -> CheckLine {
    CheckLine {
        ok: true,
        warning: true,
        text,
    }
}

fn fail(text: String) -> CheckLine {
    CheckLine {
        ok: false,
        warning: false,
        text,
    }
}

/// True when Nextcloud's answer to a signed request says the checksum was
/// wrong (Talk: `invalid_request` "The request could not be authenticated").
fn refused_checksum(r: &Result<crate::api::backend::BackendResponse, BackendCallError>) -> bool {
    match r {
        Err(BackendCallError::Status(403)) => true,
        Ok(resp) => resp
            .error
            .as_ref()
            .is_some_and(|e| e.code == "invalid_request" || e.message.contains("authenticated")),
        Err(_) => false,
    }
}

/// Probes everything the configuration points at.
pub async fn probe(config: &Config) -> Vec<CheckLine> {
    let mut lines: Vec<CheckLine> = Vec::new();
    let client = match BackendClient::new(
        config.backend.timeout,
        1,
        config.backend.skip_verify,
        crate::hub::header_features(false),
    ) {
        Ok(c) => c,
        Err(e) => {
            lines.push(fail(format!("HTTP client: {e}")));
            return lines;
        }
    };
    let mut backends = config.backend.backends.clone();
    if let (Some(prefix), Some(etcd)) = (&config.backend.etcd_prefix, &config.etcd) {
        backends.extend(probe_etcd(etcd, prefix, &mut lines).await);
    }
    for b in &backends {
        if b.legacy {
            lines.extend(probe_legacy(&client, b).await);
            continue;
        }
        let who = format!("[{}]", b.id);
        for base in &b.urls {
            probe_backend(&client, &who, base, b.secret.as_bytes(), &mut lines).await;
        }
    }
    if !config.nats_urls.is_empty() {
        lines.push(probe_nats(&config.nats_urls).await);
    }
    if let Some(mcu) = &config.mcu {
        match &mcu.proxy {
            Some(p) => lines.extend(probe_proxies(p).await),
            None => lines.push(probe_janus(&mcu.url).await),
        }
    }
    if let Some(source) = &config.geoip.source {
        lines.push(match crate::geoip::probe(source).await {
            Ok(text) => ok(format!("[geoip] url: {text}")),
            Err(e) => fail(format!("[geoip] url: {e}")),
        });
    }
    if let Some(https) = &config.https {
        lines.push(
            match crate::http::tls::load(&https.certificate, &https.key) {
                Ok(_) => ok(format!(
                    "[https] certificate: {} and its key loaded",
                    https.certificate.display()
                )),
                Err(e) => fail(e.to_string()),
            },
        );
    }
    lines
}

/// Reads the backends under `[backend] backendprefix` from etcd: they are
/// probed as configured ones are.
async fn probe_etcd(
    etcd: &crate::config::etcd::EtcdConfig,
    prefix: &str,
    lines: &mut Vec<CheckLine>,
) -> Vec<crate::config::BackendConfig> {
    match crate::backend::etcd::read_once(etcd, prefix).await {
        Ok(snap) => {
            let text = format!(
                "[etcd] endpoints: {} answered: {} backends under {prefix}",
                snap.endpoint,
                snap.backends.len()
            );
            lines.push(if snap.backends.is_empty() {
                warn(format!(
                    "{text}; no Nextcloud can connect until one is added"
                ))
            } else {
                ok(text)
            });
            for (key, e) in snap.invalid {
                lines.push(warn(format!("[etcd] {key}: not a backend ({e}); ignored")));
            }
            snap.backends
        }
        Err(e) => {
            lines.push(fail(format!(
                "[etcd] endpoints: cannot read the backends under {prefix}: {e}"
            )));
            Vec::new()
        }
    }
}

/// Logs in to each signaling proxy as the MCU does (hello with a token).
async fn probe_proxies(p: &crate::config::mcu::ProxyConfig) -> Vec<CheckLine> {
    use crate::mcu::proxy::conn::{probe, TokenMaker};
    let token = TokenMaker::new(p);
    let mut lines = Vec::new();
    for (url, dial) in &p.urls {
        let shown = crate::logsafe::Url(url).to_string();
        lines.push(match probe(dial, p.proxy_timeout, &token).await {
            Ok(version) => ok(format!(
                "[mcu] url: proxy {shown} (version {version}) accepted token_id `{}`",
                p.token_id
            )),
            Err(e) => fail(format!("[mcu] url: proxy {shown}: {e}")),
        });
    }
    lines
}

/// Speaks to Janus as the MCU does: a WebSocket with the `janus-protocol`
/// subprotocol, `info` answered with `server_info` that lists the
/// videoroom plugin.
pub async fn probe_janus(url: &str) -> CheckLine {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Message;
    const TIMEOUT: Duration = Duration::from_secs(5);
    let shown = crate::logsafe::Url(url).to_string();
    let mut req = match url.into_client_request() {
        Ok(r) => r,
        Err(e) => return fail(format!("[mcu] url: `{shown}` is not a WebSocket URL: {e}")),
    };
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("janus-protocol"),
    );
    let tls = match crate::hub::federation::tls_config(false) {
        Ok(t) => t,
        Err(e) => return fail(format!("[mcu] url: TLS setup: {e}")),
    };
    let dial = tokio_tungstenite::connect_async_tls_with_config(
        req,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(tls)),
    );
    let mut ws = match tokio::time::timeout(TIMEOUT, dial).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => {
            return fail(format!(
                "[mcu] url: cannot connect to Janus at {shown}: {e} (is its WebSocket transport enabled on that address?)"
            ))
        }
        Err(_) => return fail(format!("[mcu] url: no answer from {shown} (timeout)")),
    };
    let info = serde_json::json!({"janus": "info", "transaction": "spreed-signaling-check"});
    if let Err(e) = ws.send(Message::Text(info.to_string().into())).await {
        return fail(format!("[mcu] url: {shown}: {e}"));
    }
    let answer = async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(Message::Text(t)) => return serde_json::from_str::<serde_json::Value>(&t).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        None
    };
    let reply = tokio::time::timeout(TIMEOUT, answer).await.ok().flatten();
    let _ = ws.close(None).await;
    match reply {
        Some(v) if v["janus"] == "server_info" => {
            let version = v["version_string"].as_str().unwrap_or("?");
            if v["plugins"].get("janus.plugin.videoroom").is_none() {
                fail(format!(
                    "[mcu] url: Janus {version} at {shown} has no videoroom plugin (enable janus.plugin.videoroom)"
                ))
            } else {
                ok(format!(
                    "[mcu] url: Janus {version} at {shown} with the videoroom plugin"
                ))
            }
        }
        Some(v) => fail(format!(
            "[mcu] url: {shown} answered `info` with {} instead of server_info: not Janus?",
            v["janus"]
        )),
        None => fail(format!(
            "[mcu] url: {shown} did not answer `info` like Janus does"
        )),
    }
}

/// A host of the legacy `[backend] allowed` list: Nextcloud is reached
/// over https or http, so one of the two passing is enough.
async fn probe_legacy(client: &BackendClient, b: &crate::config::BackendConfig) -> Vec<CheckLine> {
    let who = "[backend] allowed";
    let mut tried = Vec::new();
    for base in b.urls.iter().rev() {
        let mut lines = Vec::new();
        probe_backend(client, who, base, b.secret.as_bytes(), &mut lines).await;
        if lines.iter().all(|l| l.ok) {
            return lines;
        }
        tried.push(lines);
    }
    tried.into_iter().flatten().collect()
}

async fn probe_backend(
    client: &BackendClient,
    who: &str,
    base: &str,
    secret: &[u8],
    lines: &mut Vec<CheckLine>,
) {
    let caps_url = capabilities_url(base);
    match client.get_json(&caps_url).await {
        Err(e) => lines.push(fail(format!(
            "{who} url: {base}: capabilities not reachable ({e}); check the URL (and [backend] skipverify for self-signed certificates)"
        ))),
        Ok(data) => {
            let caps = Capabilities::from_data(&data);
            if caps.features.is_empty() {
                lines.push(fail(format!(
                    "{who} url: {base}: answers, but lists no Talk capabilities (is Talk installed and the URL the Nextcloud root?)"
                )));
            } else {
                lines.push(ok(format!("{who} url: {base}: Talk capabilities reachable")));
                match &caps.token_key {
                    Some(_) => lines.push(ok(format!("{who} hello v2 key present"))),
                    None => lines.push(warn(format!(
                        "{who} url: {base}: no hello-v2-token-key in the capabilities: clients fall back to hello 1.0 (update Talk)"
                    ))),
                }
                if caps.features.iter().any(|f| f == "federation-v2") {
                    lines.push(ok(format!("{who} federation-v2 supported")));
                }
            }
        }
    }
    // The shared secret: a signed ping that Nextcloud must accept, and the
    // same ping with a wrong secret that it must refuse (else the answer
    // says nothing about the secret).
    let url = signaling_url(base, "");
    let req = PingRequest {
        version: "1.0",
        roomid: "",
        entries: &[],
    };
    let right = client.post(&url, base, secret, "ping", &req).await;
    let wrong = client
        .post(
            &url,
            base,
            b"spreed-signaling-check-wrong-secret",
            "ping",
            &req,
        )
        .await;
    match (&right, refused_checksum(&right), refused_checksum(&wrong)) {
        (_, false, true) => lines.push(ok(format!("{who} secret accepted by Nextcloud"))),
        (_, true, _) => lines.push(fail(format!(
            "{who} secret: Nextcloud refused the checksum: the secret differs from Talk's \"Shared secret\" (Administration settings > Talk > High-performance backend)"
        ))),
        (Err(e), false, false) => lines.push(fail(format!(
            "{who} url: {url}: signaling endpoint not usable ({e})"
        ))),
        (Ok(_), false, false) => lines.push(warn(format!(
            "{who} secret: Nextcloud answered a wrong secret like the right one; could not verify the secret"
        ))),
    }
}

async fn probe_nats(urls: &[String]) -> CheckLine {
    let shown: Vec<String> = urls
        .iter()
        .map(|u| match reqwest::Url::parse(u) {
            Ok(p) => format!("{}://{}", p.scheme(), p.host_str().unwrap_or("")),
            Err(_) => "(invalid)".into(),
        })
        .collect();
    // With the credentials of the URLs, as the server connects.
    let (addrs, options) = match crate::bus::nats::connect_options(urls) {
        Ok(x) => x,
        Err(e) => return fail(e.to_string()),
    };
    let connect = options
        .connection_timeout(Duration::from_secs(5))
        .connect(addrs);
    match tokio::time::timeout(Duration::from_secs(6), connect).await {
        Ok(Ok(_client)) => ok(format!("[nats] url: connected ({})", shown.join(", "))),
        Ok(Err(e)) => fail(format!(
            "[nats] url: cannot connect to {}: {e}",
            shown.join(", ")
        )),
        Err(_) => fail(format!(
            "[nats] url: cannot connect to {}: timeout",
            shown.join(", ")
        )),
    }
}
